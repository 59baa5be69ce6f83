"""The chat page and its files, served by the real server from package data."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from stomp_chat.web.page import STATIC_DIR
from tests.serverproc import RunningServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A real server on its defaults."""
    running = RunningServer(tmp_path_factory.mktemp("page"), []).start()
    try:
        yield running
    finally:
        running.stop()


def _get(server: RunningServer, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(server.http_url + path, timeout=5) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, \
                response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def test_the_page_is_served_at_the_root(server: RunningServer) -> None:
    """GET / answers the chat page as UTF-8 HTML under a same-origin-only security policy."""
    status, headers, body = _get(server, "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    policy = headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert headers["x-content-type-options"] == "nosniff"
    assert body == (STATIC_DIR / "index.html").read_bytes()


def test_the_page_loads_nothing_from_other_sites() -> None:
    """No file of the page names another host: everything comes from the server itself."""
    for path in STATIC_DIR.iterdir():
        if path.suffix in (".html", ".js", ".css"):
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"(src|href)=\"(https?:)?//", text), path.name
            assert not re.search(r"\bimport\b[^;]*from\s+'(https?:)?//", text), path.name
            assert "@import" not in text, path.name


def test_script_modules_are_served_as_javascript(server: RunningServer) -> None:
    """Browsers run an ES module only with a JavaScript content type: /static/*.js has one."""
    for name in ("stomp.js", "app.js"):
        status, headers, body = _get(server, f"/static/{name}")
        assert status == 200
        assert headers["content-type"] == "text/javascript; charset=utf-8"
        assert body == (STATIC_DIR / name).read_bytes()
    status, headers, _ = _get(server, "/static/style.css")
    assert (status, headers["content-type"]) == (200, "text/css; charset=utf-8")


def test_unknown_static_files_are_a_json_404(server: RunningServer) -> None:
    """A file the page does not have is a JSON 404, and no path escapes the static folder."""
    for path in ("/static/nope.js", "/static/../tap.py", "/static/%2e%2e/tap.py"):
        status, headers, body = _get(server, path)
        assert status == 404, path
        assert headers["content-type"].startswith("application/json")
        assert json.loads(body)["error"] == "not-found"


def test_message_text_is_never_parsed_as_html() -> None:
    """The page sets text with textContent only: no innerHTML, outerHTML or insertAdjacentHTML."""
    for name in ("app.js", "stomp.js"):
        source = (STATIC_DIR / name).read_text(encoding="utf-8")
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
            assert sink not in source, f"{name} uses {sink}"


def test_every_page_file_is_package_data() -> None:
    """pyproject ships every file of the page, so `pip install .` alone serves it."""
    import fnmatch
    import tomllib

    root = STATIC_DIR.parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["stomp_chat.web"]
    files = [p.relative_to(STATIC_DIR.parent).as_posix() for p in STATIC_DIR.rglob("*")
             if p.is_file()]
    assert {"static/index.html", "static/app.js", "static/stomp.js", "static/style.css"} <= set(
        files
    )
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
