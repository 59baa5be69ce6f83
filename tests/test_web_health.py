"""Tests for stomp_chat.web.health: /health, /ready, and /ready following real outages.

The outage tests put a TCP proxy the test controls between a real server and
the shared PostgreSQL or Redis, and cut it; the shared services never stop.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from typing import Any
from urllib.parse import urlencode

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.web.test.requesthelper import DummyRequest

from stomp_chat.web.health import Health, Ready
from tests.tcpproxy import TcpProxy

pytest_plugins = ["tests.conftest_db"]


def _render(resource: Any) -> tuple[int, dict[str, Any]]:
    request = DummyRequest([b""])
    result = resource.render(request)
    if isinstance(result, bytes):
        request.write(result)
        request.finish()
    assert request.finished
    return request.responseCode or 200, json.loads(b"".join(request.written))


def test_health_answers_ok_with_the_report() -> None:
    """GET /health is 200 with status ok and what the server reports of itself."""
    status, body = _render(Health(lambda: {"connections": 2}))
    assert (status, body) == (200, {"status": "ok", "connections": 2})


def test_ready_is_200_when_every_check_passes() -> None:
    """GET /ready is 200 and names each check's state when all pass."""
    ready = Ready({"database": lambda: succeed({"ok": True, "state": "up"}),
                  "draining": lambda: {"ok": True, "state": "serving"}})
    status, body = _render(ready)
    assert status == 200
    assert body == {"status": "ready", "checks": {"database": {"ok": True, "state": "up"},
                                                  "draining": {"ok": True, "state": "serving"}}}


def test_ready_is_503_when_one_check_fails() -> None:
    """One failing check makes /ready 503 and its state says why."""
    ready = Ready({"database": lambda: {"ok": False, "state": "down", "error": "refused"},
                   "listeners": lambda: {"ok": True, "state": "up"}})
    status, body = _render(ready)
    assert status == 503
    assert body["status"] == "not ready"
    assert body["checks"]["database"] == {"ok": False, "state": "down", "error": "refused"}


def test_a_check_that_raises_counts_as_failed() -> None:
    """A check that raises is reported as an error, not a traceback or a hang."""

    def broken() -> dict[str, Any]:
        raise RuntimeError("probe bug")

    status, body = _render(Ready({"redis": broken}))
    assert status == 503
    assert body["checks"]["redis"]["state"] == "error"


def test_ready_waits_for_a_slow_check() -> None:
    """/ready answers once a slow (asynchronous) check has answered."""
    slow: Deferred[dict[str, Any]] = Deferred()
    request = DummyRequest([b""])
    Ready({"database": lambda: slow}).render(request)
    assert not request.finished
    slow.callback({"ok": True, "state": "up"})
    assert request.finished and request.responseCode == 200


# -- real outages --------------------------------------------------------------------------


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _wait_ready(url: str, status: int, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        code, body = _get(url)
        if code == status:
            return body
        assert time.monotonic() < deadline, f"/ready stayed {code}: {body}"
        time.sleep(0.2)


def test_ready_follows_a_postgresql_outage_and_recovers_by_itself(
    postgresql_database, start_server
) -> None:
    """/ready turns 503 (database down) when PostgreSQL is cut off, and 200 after, unaided."""
    config = postgresql_database.config
    with TcpProxy(config.host or "127.0.0.1", config.port or 5432) as proxy:
        query = urlencode({"options": config.options["options"]})
        user = f"{config.user}@" if config.user else ""
        url = f"postgresql://{user}127.0.0.1:{proxy.port}/{config.database}?{query}"
        server = start_server("--database", url)
        ready = f"{server.http_url}/ready"
        body = _wait_ready(ready, 200)
        assert body["checks"]["database"]["state"] == "up"
        proxy.block()
        body = _wait_ready(ready, 503)
        assert body["checks"]["database"]["state"] == "down"
        assert body["checks"]["listeners"]["state"] == "up"
        assert _get(f"{server.http_url}/health")[0] == 200, "the process still serves"
        proxy.unblock()
        body = _wait_ready(ready, 200)
        assert body["checks"]["database"]["state"] == "up"


def _redis_or_skip() -> None:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=3):
            pass
    except OSError as error:
        if os.environ.get("CI"):
            pytest.fail(f"Redis at 127.0.0.1:6379 is unreachable under CI: {error}")
        pytest.skip(f"Redis at 127.0.0.1:6379 is unreachable: {error}")


def test_ready_follows_a_redis_outage_in_cluster_mode(start_server, tmp_path) -> None:
    """In cluster mode /ready turns 503 (redis down) when Redis is cut off, and 200 after."""
    _redis_or_skip()
    with TcpProxy("127.0.0.1", 6379) as proxy:
        namespace = f"test-{uuid.uuid4().hex}"
        server = start_server(f"--database=sqlite:///{tmp_path / 'chat.db'}",
                              f"--redis=redis://127.0.0.1:{proxy.port}/0?namespace={namespace}")
        ready = f"{server.http_url}/ready"
        body = _wait_ready(ready, 200)
        assert body["checks"]["redis"]["state"] == "up"
        proxy.block()
        body = _wait_ready(ready, 503)
        assert body["checks"]["redis"]["state"] == "down"
        assert body["checks"]["redis"]["error"].endswith("link down")
        proxy.unblock()
        body = _wait_ready(ready, 200, timeout=60)
        assert body["checks"]["redis"]["state"] == "up"


def test_ready_is_never_200_once_a_stop_begins(start_server, tmp_path) -> None:
    """After SIGTERM, /ready answers 503 'draining' or no longer accepts connections."""
    import signal

    from tests.stompload import RawStompClient

    server = start_server(f"--database=sqlite:///{tmp_path / 'chat.db'}", "--drain-window=2")
    clients = [RawStompClient(server.stomp_port) for _ in range(60)]
    _wait_ready(f"{server.http_url}/ready", 200)
    server.signal(signal.SIGTERM)
    answers = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            code, body = _get(f"{server.http_url}/ready")
        except OSError:
            break  # not listening any more: a load balancer's check fails too
        answers.append((code, body["checks"]["draining"]["state"]))
    assert all(answer == (503, "draining") for answer in answers), answers
    assert server.wait() != 0
    for client in clients:
        client.close()
