"""The browser chat page: ``/`` and its files under ``/static/``, from package data.

Nothing is built at run time and nothing comes from another site: the page,
its script modules and its style sheet are files of the installed package.
The Content-Security-Policy says so to the browser too, so an injected
script or a foreign resource would not run even if markup got through.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.static import File

from stomp_chat.web.json import JSONNotFound

STATIC_DIR = Path(str(resources.files("stomp_chat.web") / "static"))

#: Same-origin scripts, styles, images, fetches and WebSockets only.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def _page_headers(request: Request) -> None:
    request.setHeader(b"content-security-policy", CONTENT_SECURITY_POLICY.encode("ascii"))
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"referrer-policy", b"same-origin")
    # Revalidate on every load, so the page and its modules change together on upgrade.
    request.setHeader(b"cache-control", b"no-cache")


class ChatPage(Resource):
    """``GET /``: the chat page itself."""

    isLeaf = True

    def __init__(self, static_dir: Path = STATIC_DIR) -> None:
        super().__init__()
        self._index = static_dir / "index.html"

    def render_GET(self, request: Request) -> bytes:
        _page_headers(request)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return self._index.read_bytes()


class StaticFiles(File):
    """``/static/...``: the page's files; no directory listings, JSON 404s."""

    childNotFound = JSONNotFound()  # type: ignore[assignment]
    contentTypes = {
        **File.contentTypes,
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".html": "text/html; charset=utf-8",
    }

    def __init__(self, path: Path | str = STATIC_DIR, *args: Any) -> None:
        super().__init__(str(path), *args)  # File re-creates itself for each child

    def directoryListing(self) -> Resource:  # type: ignore[override]
        return JSONNotFound()

    def render(self, request: Request) -> bytes | int:
        _page_headers(request)
        return super().render(request)
