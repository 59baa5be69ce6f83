"""Tests for stomp_chat.logs: text or JSON lines, reopening on SIGHUP, outages logged once."""

from __future__ import annotations

import io
import json
import signal
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
from twisted.logger import Logger, LogLevel
from twisted.python import usage
from twisted.python.logfile import LogFile

from stomp_chat.logs import ServerLog, json_line, make_observer, parse_log_format, server_log
from tests.serverproc import STOPPED_BY_SIGTERM
from tests.stompload import Publisher, chat_texts, subscriber
from tests.tcpproxy import TcpProxy

pytest_plugins = ["tests.conftest_db"]


def _event(**fields):
    return {"log_level": LogLevel.warn, "log_namespace": "test", "log_time": 1.0,
            "log_format": "{count} chat messages wait", "count": 3, **fields}


def test_json_lines_carry_the_rendered_text_and_the_level() -> None:
    """A JSON line is one object with the message rendered, its level and Twisted's fields."""
    line = json_line(_event())
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert record["text"] == "3 chat messages wait"
    assert record["level"] == "warn"
    assert record["log_namespace"] == "test"
    assert record["count"] == 3


def test_json_lines_include_a_failure_traceback() -> None:
    """A logged failure's traceback is part of the JSON line's text, still one line."""
    from twisted.python.failure import Failure

    try:
        raise ValueError("boom")
    except ValueError:
        failure = Failure()
    record = json.loads(json_line(_event(log_failure=failure)))
    assert "ValueError: boom" in record["text"]


def test_text_is_the_default_format() -> None:
    """--log-format is text unless json is asked for; anything else is refused."""
    assert parse_log_format(" JSON ") == "json"
    with pytest.raises(ValueError):
        parse_log_format("xml")
    output = io.StringIO()
    make_observer(output, "text")(_event())
    assert "3 chat messages wait" in output.getvalue()
    assert not output.getvalue().startswith("{")


def test_the_log_follows_twistds_logfile_option(tmp_path: Path) -> None:
    """The server's log goes where twistd's --logfile says; syslog and --logger are left alone."""
    path = tmp_path / "twistd.log"
    log = server_log({"logfile": str(path), "nodaemon": True}, "json", None)
    assert isinstance(log, ServerLog) and isinstance(log.output, LogFile)
    log.output.close()
    assert server_log({"syslog": True}, "text", None) is None
    assert server_log({"logger": "x.y"}, "text", None) is None
    assert server_log(None, "text", None) is None
    assert server_log({"logfile": "-", "nodaemon": True}, "text", None) is not None
    with pytest.raises(usage.UsageError):
        server_log({"logfile": "-", "nodaemon": False}, "text", None)


def test_reopen_follows_a_renamed_file(tmp_path: Path) -> None:
    """After the file is renamed away, reopen writes to a new file of the old name."""
    path = tmp_path / "server.log"
    log = ServerLog(LogFile.fromFullPath(str(path)), "text", None)
    Logger(observer=log.observer).info("before")
    path.rename(tmp_path / "server.log.1")
    log.reopen()
    Logger(observer=log.observer).info("after")
    log.output.close()
    assert "before" in (tmp_path / "server.log.1").read_text()
    assert "after" in path.read_text() and "before" not in path.read_text()


def test_json_log_of_the_real_server(start_server) -> None:
    """With --log-format json every line of the real server's log is a JSON object."""
    server = start_server("--log-format", "json")
    server.signal(signal.SIGTERM)
    assert server.wait() == STOPPED_BY_SIGTERM
    lines = server.log().splitlines()
    assert len(lines) > 5
    records = [json.loads(line) for line in lines]
    assert any(record["text"] == "Server Shut Down." for record in records)


def _status(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_a_database_outage_is_logged_once_with_a_recovery_line(
    postgresql_database, start_server
) -> None:
    """A PostgreSQL outage under chat and REST traffic logs one line when it starts and one
    when it ends (for the writer and for REST), not one per message or request, and every
    message is stored after it."""
    config = postgresql_database.config
    with TcpProxy(config.host or "127.0.0.1", config.port or 5432) as proxy:
        query = urlencode({"options": config.options["options"]})
        user = f"{config.user}@" if config.user else ""
        url = f"postgresql://{user}127.0.0.1:{proxy.port}/{config.database}?{query}"
        server = start_server("--database", url)
        reader = subscriber(server.stomp_port, 4)
        publisher = Publisher(server.stomp_port, 9, 4, window=50).start()
        deadline = time.monotonic() + 20
        while len(publisher.client.receipts) < 20:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proxy.block()
        time.sleep(1)  # messages keep being accepted and broadcast, unsaved
        statuses = [_status(f"{server.http_url}/api/rooms") for _ in range(5)]
        assert statuses == [503] * 5
        newcomer = subscriber(server.stomp_port, 99)
        newcomer.send("SUBSCRIBE", {"id": "errors", "destination": "/user/queue/errors"})
        for number in range(3):
            body = json.dumps({"type": "TALK", "roomId": 90 + number, "senderId": 5,
                               "detailMessage": "into a room not loaded yet"})
            newcomer.send("SEND", {"destination": "/app/message", "receipt": f"new{number}"},
                          body.encode())
        while len(newcomer.of("MESSAGE")) < 3:
            assert time.monotonic() < deadline + 20, newcomer.frames
            time.sleep(0.05)
        for error in newcomer.of("MESSAGE"):
            assert json.loads(error.body)["error"] == "unavailable"
        assert not newcomer.of("ERROR"), "the connection stays"
        proxy.unblock()
        while "Saving chat messages again" not in server.log() or (
            _status(f"{server.http_url}/api/rooms") != 200
        ):
            assert time.monotonic() < deadline + 20, server.log()
            time.sleep(0.1)
        publisher.stop()
        server.signal(signal.SIGTERM)
        assert server.wait() == STOPPED_BY_SIGTERM
    log = server.log()
    assert log.count("Saving a batch of") == 1, log
    assert log.count("Saving chat messages again") == 1
    assert log.count("REST requests failing") == 1
    assert log.count("chat rooms loading failing") == 1
    assert log.count("REST requests working again") == 1
    failures = [line for line in log.splitlines() if "#critical" in line or "#error" in line]
    assert log.count("Traceback") <= 3, "\n".join(failures)
    stored = {text for (text,) in postgresql_database.query("SELECT text FROM messages")}
    assert set(chat_texts(reader)) <= stored
