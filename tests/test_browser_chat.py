"""The chat page in a real browser: Debian's chromium driven by playwright-core.

Two pages (a desktop and a phone-sized one) sign in, meet in one room, talk in
Korean and emoji, send markup that must stay text, move each other's unread
counts, and live through a server restart: both reconnect by themselves and
show every message sent while they were away exactly once. Screenshots go to
the test's temporary folder (printed on failure).

Needs ``chromium`` (``apt-get install chromium``; ``STOMP_CHAT_CHROMIUM`` may
name another binary) and ``npm install --prefix tests/js``. Under CI a missing
browser fails the test instead of skipping it.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import RunningServer
from tests.test_interop_stompjs import JS_DIR, _node

BROWSER_SCENARIO = JS_DIR / "browser.mjs"
SCENARIO_TIMEOUT = 100.0


def _chromium() -> str:
    """The browser binary; skip when absent, except under CI, where that is a failure."""
    found = os.environ.get("STOMP_CHAT_CHROMIUM") or shutil.which("chromium") \
        or shutil.which("chromium-browser")
    if found:
        return found
    reason = "chromium is not installed (apt-get install -y chromium)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so the browser test must run")
    pytest.skip(reason)


def _lines(stream: Any, into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))
    into.put(None)


def test_two_browser_pages_chat_through_a_restart(tmp_path: Path) -> None:
    """Two pages chat, see each other, keep markup as text, count unread, and recover a restart."""
    chromium = _chromium()
    node = _node()
    if not (JS_DIR / "node_modules" / "playwright-core" / "package.json").is_file():
        pytest.fail("playwright-core is not installed: run `npm install --prefix tests/js`")
    screenshots = tmp_path / "screenshots"
    screenshots.mkdir()
    server = RunningServer(tmp_path, []).start()
    port = server.http_port
    process = subprocess.Popen(
        [node, str(BROWSER_SCENARIO), server.http_url, str(screenshots), chromium],
        cwd=JS_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, encoding="utf-8",
    )
    assert process.stdin is not None and process.stdout is not None
    output: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, output), daemon=True).start()
    result: dict[str, Any] | None = None
    deadline = time.monotonic() + SCENARIO_TIMEOUT
    try:
        while result is None:
            try:
                line = output.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"the browser scenario hung; screenshots in {screenshots}")
            if line is None:
                break
            if line == "RESTART":
                server.stop()
                process.stdin.write("DOWN\n")
                process.stdin.flush()
            elif line == "START":
                server.args = [f"--http=tcp:{port}:interface=127.0.0.1"]
                server.start()
                process.stdin.write("UP\n")
                process.stdin.flush()
            elif line.startswith("{"):
                result = json.loads(line)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        server.stop()
    stderr = process.stderr.read() if process.stderr else ""
    assert result is not None, f"no result (exit {process.returncode}):\n{stderr}\n{server.log()}"

    assert result["pageErrors"] == []
    assert len(result["presence"]["alice"]) == len(result["presence"]["bob"]) == 2
    assert result["injected"] == {"owned": None, "elements": 0}
    assert result["phoneFits"] is True
    assert all(iso.endswith("Z") and text for iso, text in result["times"])
    for shown, clock, own_language in result["localTimes"].values():  # each browser's own
        assert clock in shown and own_language, (shown, clock)  # zone, in its own language
    assert result["localTimes"]["alice"][0] != result["localTimes"]["bob"][0]
    assert result["unreadWhileAway"] == "2"
    assert result["unreadAfterReading"] == 0
    assert result["pagesStillAway"] == ["reconnecting", "reconnecting"]
    for page in ("alice", "bob"):
        restart = result["restart"][page]
        assert restart["keptBefore"] is True, restart
        assert restart["missedOnce"] == [1, 1, 1, 1, 1], restart
        assert restart["duplicates"] == 0, restart
    assert result["seqsInOrder"] is True
    assert result["notesHiddenAfterRestart"] == [True, True]  # no stale "shutting down"
    assert result["presence"]["alice"] == result["presence"]["bob"] == ["alice", "bob"]
    for name in ("alice-desktop.png", "bob-phone.png", "bob-unread.png",
                 "alice-after-restart.png", "bob-after-restart.png"):
        assert (screenshots / name).stat().st_size > 10_000, name


def test_the_page_signs_in_with_a_password(tmp_path: Path) -> None:
    """With --auth password the page asks for the password once the name alone is refused,
    says so on a wrong one, then chats as the signed-in user (the server names the sender)."""
    import io

    from stomp_chat.admin.cli import main as admin

    chromium = _chromium()
    node = _node()
    database = f"sqlite:///{tmp_path / 'chat.db'}"
    out = io.StringIO()
    code = admin([f"--database={database}", "user", "add", "mina", "--password-stdin"],
                 io.StringIO("a long enough password\n"), out, out)
    assert code == 0, out.getvalue()
    server = RunningServer(tmp_path, ["--auth", "password", f"--database={database}",
                                      "--auth-failure-burst=100"]).start()
    try:
        proc = subprocess.run(
            [node, str(JS_DIR / "browser-signin.mjs"), server.http_url, str(tmp_path), chromium,
             "mina", "a long enough password"],
            cwd=JS_DIR, capture_output=True, text=True, timeout=60,
        )
    finally:
        server.stop()
    assert proc.returncode == 0, f"{proc.stderr}\n{server.log()}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["pageErrors"] == []
    assert result["secretShownAtFirst"] is False
    assert result["refusal"] == "authentication failed"
    assert result["wrongPassword"] and result["stillSigningIn"] is True
    assert result["presence"] == ["mina"]
    assert result["messages"][-1] == {"mine": True, "sender": "mina",
                                      "text": "signed in with a password"}
    assert result["note"] == ""
    assert (tmp_path / "password-signin.png").stat().st_size > 5_000


def test_the_page_shows_system_messages_and_drops_deleted_ones(tmp_path: Path) -> None:
    """An administrator's system message appears, marked as such, and a message deleted
    through the admin API leaves the open page at once and the history after a reload."""
    chromium = _chromium()
    node = _node()
    server = RunningServer(tmp_path, ["--admin-on-loopback=on"]).start()
    try:
        proc = subprocess.run(
            [node, str(JS_DIR / "browser-admin.mjs"), server.http_url, str(tmp_path), chromium],
            cwd=JS_DIR, capture_output=True, text=True, timeout=60,
        )
    finally:
        server.stop()
    assert proc.returncode == 0, f"{proc.stderr}\n{server.log()}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["pageErrors"] == []
    assert result["posted"]["status"] == 201 and result["posted"]["body"]["type"] == "SYSTEM"
    assert result["deleted"]["status"] == 200
    chat = [m for m in result["messages"] if m["text"] in ("first", "second", "third",
                                                            "maintenance at noon")]
    assert chat == [
        {"system": False, "sender": "ana", "text": "first"},
        {"system": False, "sender": "ana", "text": "third"},
        {"system": True, "sender": "system", "text": "maintenance at noon"},
    ]
    reloaded = [text for text in result["afterReload"] if "입장" not in text]  # not ENTERs
    assert reloaded == ["first", "third", "maintenance at noon"]
    assert (tmp_path / "admin-actions.png").stat().st_size > 5_000
