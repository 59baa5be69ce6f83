"""Authentication end to end: real server processes in ``--auth password`` and ``--auth jwt``,
logged into by stomp.py (TCP, WebSocket, TLS), @stomp/stompjs and plain HTTP clients."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stomp
import websocket

from stomp_chat.admin.cli import main as admin
from tests.authkeys import claims, hs256, rs256, rsa_private_key, write_public_key, write_secret
from tests.serverproc import RunningServer
from tests.test_e2e_tls import certificate  # noqa: F401  (the TLS fixture)

JS_DIR = Path(__file__).resolve().parent / "js"
WAIT = 10.0
PASSWORD = "alice's long password"
AUDIENCE = "chat"
#: Every test client comes from 127.0.0.1: do not slow it down for the refusals tested here.
LENIENT = ("--auth-failure-burst=1000",)

pytest_plugins = ["tests.conftest_db"]


def add_user(database: str, name: str, password: str, *roles: str) -> None:
    args = [f"--database={database}", "user", "add", name, "--password-stdin"]
    for role in roles:
        args += ["--role", role]
    err = io.StringIO()
    assert admin(args, io.StringIO(password + "\n"), io.StringIO(), err) == 0, err.getvalue()


#: Outside --auth none what no rule allows is denied: the round trips use topics of their own.
RULES = """
[[rules]]
destination = "/topic/auth.**"
subscribe = ["authenticated"]
send = ["authenticated"]

[[rules]]
destination = "/topic/interop.auth.**"
subscribe = ["authenticated"]
send = ["authenticated"]
"""


def start(tmp: Path, *options: str) -> RunningServer:
    config = tmp / "rules.toml"
    config.write_text(RULES)
    return RunningServer(tmp, [f"--config={config}", *options]).start()


@pytest.fixture(scope="module")
def password_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with --auth password whose users table holds alice (admin)."""
    tmp = tmp_path_factory.mktemp("password")
    database = f"sqlite:///{tmp}/chat.db"
    add_user(database, "alice", PASSWORD, "admin")
    server = start(tmp, "--auth", "password", f"--database={database}", *LENIENT)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def jwt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with --auth jwt (HS256) requiring the audience 'chat'."""
    tmp = tmp_path_factory.mktemp("jwt")
    server = start(tmp, "--auth", "jwt", f"--jwt-secret-file={write_secret(tmp)}",
                   f"--jwt-audience={AUDIENCE}", f"--database=sqlite:///{tmp}/chat.db", *LENIENT)
    yield server
    server.stop()


def token(sub: str = "u-7", **extra: Any) -> str:
    return hs256(claims(sub, aud=AUDIENCE, name=f"name of {sub}", **extra))


class Inbox(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.bodies: list[str] = []
        self.connected: dict[str, str] = {}
        self.arrived = threading.Event()

    def on_connected(self, frame: Any) -> None:
        self.connected = dict(frame.headers)

    def on_message(self, frame: Any) -> None:
        self.bodies.append(frame.body)
        self.arrived.set()


def round_trip(connection: Any, login: str | None, passcode: str | None,
               headers: dict[str, str] | None = None) -> Inbox:
    """CONNECT with the credentials, then a message through a topic and back."""
    inbox = Inbox()
    connection.set_listener("inbox", inbox)
    connection.connect(login, passcode, wait=True, headers=headers or {})
    try:
        destination = f"/topic/auth.{uuid.uuid4().hex[:8]}"
        connection.subscribe(destination, id="1")
        connection.send(destination, "as myself", headers={"receipt": "r"})
        assert inbox.arrived.wait(WAIT), "the message did not come back"
        assert inbox.bodies == ["as myself"]
    finally:
        connection.disconnect()
    return inbox


def tcp(server: RunningServer) -> Any:
    return stomp.Connection12([("127.0.0.1", server.stomp_port)], heartbeats=(0, 0))


def ws(server: RunningServer, path: str = "/ws/chat") -> Any:
    return stomp.WSStompConnection([("127.0.0.1", server.http_port)], ws_path=path,
                                   heartbeats=(0, 0))


def raw_tcp_connect(server: RunningServer, headers: dict[str, str]) -> str:
    """CONNECT over a plain socket; everything the server sent until it closed."""
    frame = "CONNECT\naccept-version:1.2\nhost:chat\n" + "".join(
        f"{name}:{value}\n" for name, value in headers.items()) + "\n\x00"
    with socket.create_connection(("127.0.0.1", server.stomp_port), timeout=WAIT) as sock:
        sock.sendall(frame.encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def ws_connect(url: str, frame_headers: str = "", **options: Any) -> str:
    """A browser-style handshake, then CONNECT; the first frame the server answers with."""
    sock = websocket.create_connection(url, subprotocols=["v12.stomp"], timeout=WAIT, **options)
    try:
        sock.send(f"CONNECT\naccept-version:1.2\nhost:chat\n{frame_headers}\n\x00")
        return str(sock.recv())
    finally:
        sock.close()


def assert_refused(reply: str) -> None:
    head = reply.split("\n\n", 1)[0].split("\n")
    assert head[0] == "ERROR", reply
    assert "message:authentication failed" in head, reply


# -- password -------------------------------------------------------------------------------


def test_stomppy_logs_in_with_a_password_over_tcp_and_websocket(password_server):
    """stomp.py with the right login/passcode is connected as that user over TCP and WebSocket."""
    for connection in (tcp(password_server), ws(password_server)):
        inbox = round_trip(connection, "alice", PASSWORD)
        assert inbox.connected.get("user-name") == "alice"


def test_wrong_password_gets_error_then_close(password_server):
    """A wrong passcode, an unknown user or no credentials: ERROR 'authentication failed', closed,
    and the log names no password."""
    for headers in ({"login": "alice", "passcode": "guess"},
                    {"login": "mallory", "passcode": PASSWORD}, {}):
        assert_refused(raw_tcp_connect(password_server, headers))
    assert_refused(ws_connect(password_server.ws_url, "login:alice\npasscode:guess\n"))
    log = password_server.log()
    assert "authentication refused for 'alice'" in log
    assert "guess" not in log and PASSWORD not in log


def test_stompjs_logs_in_with_a_password(password_server):
    """@stomp/stompjs connects with login/passcode and round-trips a message; a wrong passcode
    gets the ERROR and the close."""
    good = run_js(password_server.ws_url, "alice", PASSWORD)
    assert good == {"connected": True, "userName": "alice", "received": ["hello as me"]}
    bad = run_js(password_server.ws_url, "alice", "nope")
    assert bad == {"connected": False, "error": "authentication failed", "closed": True}


def test_rest_api_with_a_password(password_server):
    """The REST API refuses anonymous requests, logs in with a password, and the token works
    for REST and as a STOMP passcode."""
    base = password_server.http_url
    status, body, headers = http("GET", f"{base}/api/rooms")
    assert status == 401 and body["error"] == "unauthenticated"
    assert headers["x-content-type-options"] == "nosniff"
    assert "Bearer" in headers["www-authenticate"]
    status, login, _ = http("POST", f"{base}/api/login", {"login": "alice", "password": PASSWORD})
    assert status == 200 and login["token"]
    bearer = {"Authorization": f"Bearer {login['token']}"}
    status, room, _ = http("POST", f"{base}/api/rooms", {"name": "ops"}, bearer)
    assert status == 201 and room["name"] == "ops"
    status, _, _ = http("POST", f"{base}/api/rooms", {"name": "x"},
                        {**bearer, "Origin": "http://evil.example", "Content-Type": "text/plain"})
    assert status == 403
    assert round_trip(tcp(password_server), None, login["token"]).connected["user-name"] == \
        "alice"


# -- jwt ------------------------------------------------------------------------------------


def test_stomppy_logs_in_with_a_jwt(jwt_server):
    """A token in passcode (any login) or in a CONNECT Authorization header works over TCP and
    WebSocket; the user name comes from the token."""
    assert round_trip(tcp(jwt_server), "anything", token("u-1")).connected["user-name"] \
        == "name of u-1"
    round_trip(ws(jwt_server), None, token("u-2"))
    round_trip(tcp(jwt_server), None, None, {"Authorization": f"Bearer {token('u-3')}"})


def test_bad_tokens_are_refused(jwt_server):
    """Expired, not yet valid, wrongly signed, wrong-audience and unsigned tokens are refused."""
    import jwt as pyjwt

    bad = [
        token(lifetime=-3600),
        hs256(claims("u", aud=AUDIENCE, nbf=claims()["iat"] + 3600)),
        hs256(claims("u", aud=AUDIENCE), secret=b"z" * 40),
        hs256(claims("u", aud="other")),
        pyjwt.encode(claims("u", aud=AUDIENCE), None, algorithm="none"),
    ]
    for passcode in bad:
        assert_refused(raw_tcp_connect(jwt_server, {"login": "u", "passcode": passcode}))
    log = jwt_server.log()
    assert all(passcode not in log for passcode in bad)


def test_token_on_the_websocket_handshake(jwt_server):
    """A browser's token in ?access_token= or in the access_token cookie authenticates a CONNECT
    that carries no credentials, and the token never reaches the server's log."""
    in_query, in_cookie = token("web-1"), token("web-2")
    reply = ws_connect(f"{jwt_server.ws_url}?access_token={in_query}")
    assert reply.startswith("CONNECTED\n"), reply
    reply = ws_connect(jwt_server.ws_url, cookie=f"access_token={in_cookie}")
    assert reply.startswith("CONNECTED\n"), reply
    assert_refused(ws_connect(jwt_server.ws_url))
    log = jwt_server.log()
    assert in_query not in log and in_cookie not in log


def test_rs256_server_refuses_algorithm_confusion(tmp_path):
    """With an RSA public key, an RS256 token logs in while an HS256 token "signed" with that
    public key (which anyone may know) is refused."""
    public = write_public_key(tmp_path, rsa_private_key())
    server = start(tmp_path, "--auth", "jwt", f"--jwt-public-key-file={public}",
                   f"--database=sqlite:///{tmp_path}/chat.db")
    try:
        signed = rs256(claims("rsa-user"))
        assert raw_tcp_connect_then_disconnect(server, signed).startswith("CONNECTED\n")
        confused = hmac_token(public.read_bytes(), claims("mallory"))
        assert_refused(raw_tcp_connect(server, {"passcode": confused}))
    finally:
        server.stop()


def raw_tcp_connect_then_disconnect(server: RunningServer, passcode: str) -> str:
    """CONNECT with a passcode; the first frame the server answers with."""
    with socket.create_connection(("127.0.0.1", server.stomp_port), timeout=WAIT) as sock:
        sock.sendall(f"CONNECT\naccept-version:1.2\nhost:chat\nheart-beat:0,0\n"
                     f"passcode:{passcode}\n\n\x00".encode())
        reply = b""
        while b"\x00" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        sock.sendall(b"DISCONNECT\n\n\x00")
    return reply.decode()


def hmac_token(key: bytes, payload: dict[str, Any]) -> str:
    """An HS256 token made by hand with any key, as an attacker would (PyJWT refuses to)."""
    def part(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = part(b'{"alg":"HS256","typ":"JWT"}') + b"." + part(json.dumps(payload).encode())
    signature = part(hmac.new(key, signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()


def test_stompjs_logs_in_with_a_jwt(jwt_server):
    """@stomp/stompjs connects with a token as its passcode; an expired one is refused."""
    good = run_js(jwt_server.ws_url, "", token("js-1"))
    assert good == {"connected": True, "userName": "name of js-1", "received": ["hello as me"]}
    bad = run_js(jwt_server.ws_url, "", token("js-1", lifetime=-3600))
    assert bad["connected"] is False and bad["error"] == "authentication failed"


def test_a_session_ends_when_its_token_expires(tmp_path):
    """A session connected with a token that expires in two seconds is closed with ERROR
    'token expired' once it does."""
    server = start(tmp_path, "--auth", "jwt", f"--jwt-secret-file={write_secret(tmp_path)}",
                   "--jwt-leeway=0", "--heartbeat=500,500",
                   f"--database=sqlite:///{tmp_path}/chat.db")
    try:
        short = hs256(claims("brief", lifetime=2))
        sock = websocket.create_connection(server.ws_url, subprotocols=["v12.stomp"],
                                           timeout=WAIT)
        try:
            sock.send(f"CONNECT\naccept-version:1.2\nheart-beat:0,0\npasscode:{short}\n\n\x00")
            assert str(sock.recv()).startswith("CONNECTED\n")
            began = time.monotonic()
            reply = str(sock.recv())
            while not reply.startswith("ERROR"):  # heart-beats
                reply = str(sock.recv())
        finally:
            sock.close()
        assert "message:token expired" in reply.split("\n\n")[0].split("\n")
        assert time.monotonic() - began < WAIT
    finally:
        server.stop()


def test_rest_api_with_a_jwt(jwt_server):
    """REST takes the same Bearer tokens; without one it answers 401."""
    base = jwt_server.http_url
    assert http("GET", f"{base}/api/rooms")[0] == 401
    status, _, _ = http("GET", f"{base}/api/rooms", headers={"Authorization": f"Bearer {token()}"})
    assert status == 200


def test_repeated_failures_are_slowed(tmp_path):
    """After --auth-failure-burst refusals from one address, its next attempt is answered only
    after a refill interval, and the log says so without the secret."""
    server = start(tmp_path, "--auth", "jwt", f"--jwt-secret-file={write_secret(tmp_path)}",
                   "--auth-failure-burst=2", "--auth-failure-refill=2",
                   f"--database=sqlite:///{tmp_path}/chat.db")
    try:
        for _ in range(2):
            assert_refused(raw_tcp_connect(server, {"passcode": "wrong-token"}))
        began = time.monotonic()
        assert_refused(raw_tcp_connect(server, {"passcode": "wrong-token"}))
        assert time.monotonic() - began >= 1.5
        assert "slowing authentication from 127.0.0.1" in server.log()
        assert "wrong-token" not in server.log()
    finally:
        server.stop()


def test_every_response_says_nosniff(jwt_server):
    """Health, metrics, unknown paths and the API all carry X-Content-Type-Options: nosniff."""
    for path in ("/health", "/healthz", "/metrics", "/no/such/thing", "/api/rooms"):
        request = urllib.request.Request(f"{jwt_server.http_url}{path}")
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as response:
                headers = response.headers
        except urllib.error.HTTPError as error:
            headers = error.headers
        assert headers.get("X-Content-Type-Options") == "nosniff", path


# -- origins --------------------------------------------------------------------------------


def test_dns_rebinding_handshake_is_refused(tmp_path):
    """A handshake whose Origin and Host both name a foreign host (as after DNS rebinding) is
    refused; the address the server was reached at is accepted."""
    server = start(tmp_path, f"--database=sqlite:///{tmp_path}/chat.db")
    try:
        port = server.http_port
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            ws_connect(server.ws_url, origin=f"http://rebound.example:{port}",
                       host=f"rebound.example:{port}")
        assert refused.value.status_code == 403
        assert ws_connect(server.ws_url, origin=f"http://127.0.0.1:{port}").startswith(
            "CONNECTED")
        status, body, _ = http("POST", f"{server.http_url}/api/rooms", {"name": "x"},
                               {"Origin": f"http://rebound.example:{port}",
                                "Host": f"rebound.example:{port}"})
        # With --auth none the Host check refuses it before the origin check would.
        assert status == 403 and body["error"] == "forbidden-host"
    finally:
        server.stop()


# -- TLS ------------------------------------------------------------------------------------


def test_password_logins_over_tls(tmp_path, certificate):  # noqa: F811
    """Over TLS, STOMP and wss:// clients log in with a password; a wrong one is refused."""
    key, cert = certificate
    tls = f"interface=127.0.0.1:privateKey={key}:certKey={cert}"
    database = f"sqlite:///{tmp_path}/tls.db"
    add_user(database, "alice", PASSWORD)
    server = start(tmp_path, "--auth", "password", f"--stomp=ssl:0:{tls}", f"--http=ssl:0:{tls}",
                   f"--database={database}")
    try:
        connection = tcp(server)
        connection.set_ssl(for_hosts=[("127.0.0.1", server.stomp_port)], ca_certs=str(cert))
        assert round_trip(connection, "alice", PASSWORD).connected["user-name"] == "alice"
        sslopt = {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": str(cert)}
        url = f"wss://127.0.0.1:{server.http_port}/ws/chat"
        assert ws_connect(url, f"login:alice\npasscode:{PASSWORD}\n", sslopt=sslopt) \
            .startswith("CONNECTED\n")
        assert_refused(ws_connect(url, "login:alice\npasscode:nope\n", sslopt=sslopt))
    finally:
        server.stop()


# -- helpers --------------------------------------------------------------------------------


def http(method: str, url: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            status, raw, got = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, raw, got = error.code, error.read(), error.headers
    return status, json.loads(raw), {k.lower(): v for k, v in got.items()}


def run_js(url: str, login: str, passcode: str) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules" / "@stomp" / "stompjs").is_dir():
        pytest.fail("node and tests/js/node_modules are needed: npm install --prefix tests/js")
    proc = subprocess.run([node, str(JS_DIR / "auth.mjs"), url, login, passcode],
                          capture_output=True, text=True, timeout=30, cwd=JS_DIR)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# -- a database that stops answering ----------------------------------------------------------


class RawStomp:
    """A STOMP 1.2 client on a plain socket, reading whole frames."""

    def __init__(self, server: RunningServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.stomp_port), timeout=WAIT)
        self.pending = b""

    def send(self, command: str, **headers: str) -> None:
        lines = "".join(f"{name}:{value}\n" for name, value in headers.items())
        self.sock.sendall(f"{command}\n{lines}\n\x00".encode())

    def frame(self) -> tuple[str, dict[str, str]]:
        """The next frame's command and headers ("" once the server closed)."""
        while b"\x00" not in self.pending:
            chunk = self.sock.recv(65536)
            if not chunk:
                return "", {}
            self.pending += chunk
        raw, self.pending = self.pending.split(b"\x00", 1)
        head = raw.decode().lstrip("\r\n").split("\n\n", 1)[0].split("\n")
        return head[0], dict(line.split(":", 1) for line in head[1:] if ":" in line)

    def close(self) -> None:
        self.sock.close()


def test_a_silent_database_gets_clear_errors_within_the_db_timeout(
    postgresql_database, tmp_path
) -> None:
    """PostgreSQL stops answering (packets dropped): within --db-timeout a password login gets
    ERROR "authentication unavailable" over STOMP and a 503 JSON over REST, a signed-in
    client's SUBSCRIBE to a room gets ERROR "authorization unavailable", /ready says the
    database is down; none of them hangs, and logins work again once it answers."""
    from tests.blackholeproxy import ThreadedProxy
    from tests.conftest_db import parse_database_url
    from tests.test_e2e_chat import _postgres_server_url, _server_url_through

    base = parse_database_url(_postgres_server_url(postgresql_database))
    proxy = ThreadedProxy(base.host or "127.0.0.1", base.port or 5432).start()
    server = None
    try:
        url = _server_url_through(proxy.port, postgresql_database)
        add_user(url, "alice", PASSWORD)
        server = start(tmp_path, "--auth", "password", f"--database={url}", "--db-timeout=1",
                       *LENIENT)
        signed_in = RawStomp(server)
        signed_in.send("CONNECT", **{"accept-version": "1.2", "host": "chat",
                                     "login": "alice", "passcode": PASSWORD})
        assert signed_in.frame()[0] == "CONNECTED"
        signed_in.send("SUBSCRIBE", id="1", destination="/topic/chat/room/3", receipt="r1")
        assert signed_in.frame() == ("RECEIPT", {"receipt-id": "r1"})
        proxy.blackhole()

        began = time.monotonic()
        reply = raw_tcp_connect(server, {"login": "alice", "passcode": PASSWORD})
        assert "message:authentication unavailable" in reply.split("\n\n", 1)[0], reply
        assert time.monotonic() - began < 4
        began = time.monotonic()
        status, body, _ = http("POST", f"{server.http_url}/api/login",
                               {"login": "alice", "password": PASSWORD})
        assert (status, body["error"]) == (503, "unavailable")
        assert time.monotonic() - began < 4
        began = time.monotonic()
        signed_in.send("SUBSCRIBE", id="2", destination="/topic/chat/room/7")
        command, headers = signed_in.frame()
        assert (command, headers.get("message")) == ("ERROR", "authorization unavailable")
        assert time.monotonic() - began < 4
        signed_in.close()
        status, ready, _ = http("GET", f"{server.http_url}/ready")
        assert status == 503 and ready["checks"]["database"]["state"] == "down", ready

        log = server.log()
        assert "cannot check the credentials of 'alice'" in log
        assert "session.core#critical" not in log, "a silent database is no internal error"

        proxy.restore()
        deadline = time.monotonic() + 15
        while True:
            again = RawStomp(server)
            again.send("CONNECT", **{"accept-version": "1.2", "host": "chat",
                                     "login": "alice", "passcode": PASSWORD})
            command, _ = again.frame()
            again.close()
            if command == "CONNECTED" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert command == "CONNECTED"
    finally:
        if server is not None:
            server.stop()
        proxy.stop()
