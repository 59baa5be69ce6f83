"""Behind a reverse proxy, and without authentication, against real ``twistd`` servers:
``--trusted-proxies`` (the client of HTTP requests and WebSocket handshakes is the one
``X-Forwarded-For`` names), the ``Host`` check of ``--auth none`` (DNS rebinding) and
tokens in URLs kept out of the log."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
import websocket

from tests.authkeys import claims, hs256, write_secret
from tests.serverproc import RunningServer
from tests.test_e2e_auth import PASSWORD, add_user, assert_refused, http, ws_connect

WAIT = 10.0
ATTACKER = "203.0.113.66"
NEIGHBOUR = "203.0.113.7"


def start(tmp: Path, *options: str) -> RunningServer:
    return RunningServer(tmp, [f"--database=sqlite:///{tmp}/chat.db", *options]).start()


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"alice:{password}".encode()).decode()


def timed_rooms(server: RunningServer, password: str, client: str) -> tuple[int, float]:
    """``GET /api/rooms`` with Basic credentials, as the proxy forwards it for ``client``."""
    began = time.monotonic()
    status, _, _ = http("GET", f"{server.http_url}/api/rooms", headers={
        "Authorization": basic(password), "X-Forwarded-For": client})
    return status, time.monotonic() - began


def test_failed_logins_behind_a_trusted_proxy_slow_only_the_client_that_failed(tmp_path):
    """Through a trusted proxy (all clients arrive from 127.0.0.1) one client's failed logins,
    over REST and WebSocket, slow that client only; untrusted, the header is ignored and
    everyone behind the proxy is slowed together (the limit this option removes)."""
    add_user(f"sqlite:///{tmp_path}/chat.db", "alice", PASSWORD)
    throttle = ("--auth=password", "--auth-failure-burst=2", "--auth-failure-refill=3")
    server = start(tmp_path, *throttle, "--trusted-proxies=127.0.0.1,::1")
    try:
        for _ in range(2):
            assert timed_rooms(server, "guess", ATTACKER)[0] == 401
        began = time.monotonic()
        assert_refused(ws_connect(server.ws_url, "login:alice\npasscode:guess\n",
                                  header=[f"X-Forwarded-For: {ATTACKER}"]))
        assert time.monotonic() - began >= 2.0, "the attacker's third try was not slowed"
        status, took = timed_rooms(server, PASSWORD, NEIGHBOUR)
        assert status == 200 and took < 1.5, "a neighbour behind the proxy was slowed"
        log = server.log()
        assert f"slowing authentication from {ATTACKER}" in log
        assert f"authentication refused for 'alice' from {ATTACKER} via 127.0.0.1:" in log
    finally:
        server.stop()
    (tmp_path / "other").mkdir()
    add_user(f"sqlite:///{tmp_path}/other/chat.db", "alice", PASSWORD)
    untrusted = start(tmp_path / "other", *throttle, "--trusted-proxies=10.0.0.1")
    try:
        for _ in range(2):
            assert timed_rooms(untrusted, "guess", ATTACKER)[0] == 401
        status, took = timed_rooms(untrusted, PASSWORD, NEIGHBOUR)
        assert status == 200 and took >= 2.0
        assert "slowing authentication from 127.0.0.1" in untrusted.log()
    finally:
        untrusted.stop()


def test_the_per_address_cap_counts_each_forwarded_client(tmp_path):
    """With the proxy trusted, --max-connections-per-address counts the forwarded clients:
    one client over the cap gets 429 while another behind the same proxy connects."""
    server = start(tmp_path, "--max-connections-per-address=2", "--trusted-proxies=127.0.0.1")
    held = []
    try:
        for _ in range(2):
            sock = websocket.create_connection(server.ws_url, subprotocols=["v12.stomp"],
                                               timeout=WAIT,
                                               header=[f"X-Forwarded-For: {ATTACKER}"])
            held.append(sock)
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            ws_connect(server.ws_url, header=[f"X-Forwarded-For: {ATTACKER}"])
        assert refused.value.status_code == 429
        assert ws_connect(server.ws_url, header=[f"X-Forwarded-For: {NEIGHBOUR}"]).startswith(
            "CONNECTED")
        assert f"refusing connections from {ATTACKER}" in server.log()
    finally:
        for sock in held:
            sock.close()
        server.stop()


def test_rebinding_reads_and_handshakes_are_refused_without_authentication(tmp_path):
    """With --auth none a REST read or a WebSocket handshake naming a foreign Host (a DNS
    rebinding page, same-origin to itself) gets 403 forbidden-host; the loopback names, a
    host of --allowed-origins and the health checks are served."""
    server = start(tmp_path, "--allowed-origins=http://chat.test:8000")
    try:
        port = server.http_port
        url = f"{server.http_url}/api/rooms"
        status, body, _ = http("GET", url, headers={"Host": f"rebound.example:{port}"})
        assert (status, body["error"]) == (403, "forbidden-host")
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            # No Origin to refuse: the Host alone tells.
            ws_connect(server.ws_url, host=f"rebound.example:{port}", suppress_origin=True)
        assert refused.value.status_code == 403
        assert b"forbidden-host" in refused.value.resp_body
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "chat.test:8000"):
            assert http("GET", url, headers={"Host": host})[0] == 200, host
        assert ws_connect(server.ws_url, host="chat.test:8000",
                          origin="http://chat.test:8000").startswith("CONNECTED")
        assert ws_connect(server.ws_url, host=f"localhost:{port}",
                          suppress_origin=True).startswith("CONNECTED")
        assert http("GET", f"{server.http_url}/ready",
                    headers={"Host": "lb.internal"})[0] == 200
    finally:
        server.stop()


def test_tokens_in_urls_never_reach_the_log(tmp_path):
    """A token in the WebSocket URL (?access_token=) logs the user in, and neither it nor a
    token put in a REST query appears in the server's log."""
    secret = write_secret(tmp_path)
    server = start(tmp_path, "--auth=jwt", f"--jwt-secret-file={secret}")
    token = hs256(claims("u-9", name="nine"))
    rest_token = hs256(claims("u-10", name="ten"))
    try:
        assert ws_connect(f"{server.ws_url}?access_token={token}").startswith("CONNECTED")
        status, _, _ = http("GET", f"{server.http_url}/api/rooms?limit=1&access_token="
                                   f"{rest_token}")
        assert status == 401
    finally:
        server.stop()
    log = server.log()
    assert "GET /api/rooms?limit=1&access_token=REDACTED HTTP/1.1" in log
    signature_of = [t.rsplit(".", 1)[1] for t in (token, rest_token)]
    assert not any(part in log for part in signature_of), log
