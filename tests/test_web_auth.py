"""The REST API's authentication and cross-site protection (stomp_chat.web.auth), over real
HTTP: a twisted.web Site on a loopback port, the real chat API behind the gate."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from stomp_chat.app.chat import ChatService
from stomp_chat.auth.authenticators import FailureGate, JwtAuthenticator, PasswordAuthenticator
from stomp_chat.auth.passwords import PasswordVerifier, hash_password
from stomp_chat.auth.throttle import FailureThrottle
from stomp_chat.auth.tokens import JwtVerifier, LoginTokens, VerificationKey
from stomp_chat.auth.users import UserStore, add_user, set_password
from stomp_chat.broker import Broker
from stomp_chat.persistence import AdbapiChatStore, DatabaseTimeout, WriteBehindWriter, migrate
from stomp_chat.persistence._dialect import dialect_named
from stomp_chat.web.api import ChatApi
from stomp_chat.web.auth import ApiGate, RestAuthenticator, principal_of
from stomp_chat.web.site import Root
from tests.authkeys import SECRET, claims, hs256

if TYPE_CHECKING:
    from tests.conftest_db import TestDatabase

pytest_plugins = ["tests.conftest_db"]


@dataclass
class Response:
    status: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    @property
    def json(self) -> Any:
        assert (self.header("content-type") or "").startswith("application/json")
        return json.loads(self.body)


class _BodyReader(Protocol):
    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


class Echo(Resource):
    """Answers with the principal the gate left on the request."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        principal = principal_of(request)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(None if principal is None else
                          {"id": principal.user_id, "roles": sorted(principal.roles)}).encode()


class Http:
    def __init__(self, reactor: Any, port: int, store: AdbapiChatStore) -> None:
        self.agent = Agent(reactor)
        self.port = port
        self.origin = f"http://127.0.0.1:{port}"
        self.store = store

    async def request(self, method: str, path: str, body: Any = None, *,
                      raw: bytes | None = None, content_type: str = "application/json",
                      **headers: str) -> Response:
        if body is not None:
            raw = json.dumps(body).encode()
        sent = Headers()
        for name, value in headers.items():
            sent.addRawHeader(name.replace("_", "-").encode(), value.encode())
        producer = None
        if raw is not None:
            sent.addRawHeader(b"content-type", content_type.encode())
            producer = FileBodyProducer(BytesIO(raw))
        response = await self.agent.request(method.encode(), f"{self.origin}{path}".encode(),
                                            sent, producer)
        done: Deferred[bytes] = Deferred()
        response.deliverBody(_BodyReader(done))
        return Response(response.code, response.headers, await done)


def basic(login: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()


def assert_json_error(response: Response, status: int, code: str) -> None:
    assert response.status == status, response.body
    assert response.json["error"] == code
    assert response.header("x-content-type-options") == "nosniff"


async def serve(database: TestDatabase, mode: str, origins: list[str]) -> AsyncIterator[Http]:
    from twisted.internet import reactor

    pool = database.open_pool()
    await migrate(pool)
    await pool.runInteraction(add_user, dialect_named("sqlite"), "alice",
                              hash_password("alice's password"), frozenset({"admin"}))
    store = AdbapiChatStore(pool)
    writer = WriteBehindWriter(store, reactor, flush_interval=0.01)
    writer.startService()
    verifier = PasswordVerifier(reactor)
    verifier.startService()
    clock_key = VerificationKey(SECRET, ("HS256",))
    rest = RestAuthenticator(
        mode,
        gate=FailureGate(FailureThrottle(reactor, burst=100), reactor),
        jwt=JwtAuthenticator(JwtVerifier(clock_key, reactor)),
        passwords=PasswordAuthenticator(UserStore(pool), verifier),
        login_tokens=LoginTokens(reactor, lifetime=300),
    )
    chat = ChatService(store, writer, Broker(), reactor)
    root = Root()
    root.putChild(b"api", ApiGate(ChatApi(chat, store), rest, origins))
    root.putChild(b"echo", ApiGate(Echo(), rest, origins))
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    try:
        yield Http(reactor, port.getHost().port, store)
    finally:
        await port.stopListening()
        await writer.stopService()
        verifier.stopService()


@pytest_twisted.async_yield_fixture
async def password_api(sqlite_database: TestDatabase) -> AsyncIterator[Http]:
    async for http in serve(sqlite_database, "password", []):
        yield http


@pytest_twisted.async_yield_fixture
async def jwt_api(sqlite_database: TestDatabase) -> AsyncIterator[Http]:
    async for http in serve(sqlite_database, "jwt", []):
        yield http


@pytest_twisted.async_yield_fixture
async def open_api(sqlite_database: TestDatabase) -> AsyncIterator[Http]:
    async for http in serve(sqlite_database, "none", ["https://chat.example.com"]):
        yield http


@pytest_twisted.ensureDeferred
async def test_unauthenticated_requests_get_401_with_a_challenge(password_api: Http) -> None:
    """Without credentials, or with wrong ones, the API answers 401 JSON and says how to
    authenticate; nothing is created."""
    response = await password_api.request("GET", "/api/rooms")
    assert_json_error(response, 401, "unauthenticated")
    challenge = response.header("www-authenticate") or ""
    assert challenge.startswith("Bearer ") and "Basic " in challenge
    assert_json_error(await password_api.request(
        "POST", "/api/rooms", {"name": "x"}, authorization=basic("alice", "wrong")),
        401, "invalid-credentials")
    assert_json_error(await password_api.request(
        "GET", "/api/rooms", authorization="Bearer not.a.token"), 401, "invalid-credentials")
    assert await password_api.store.list_rooms() == []


@pytest_twisted.ensureDeferred
async def test_login_gives_a_token_that_authenticates(password_api: Http) -> None:
    """POST /api/login with the right password returns a token and its expiry; the token as a
    Bearer credential creates a room."""
    response = await password_api.request(
        "POST", "/api/login", {"login": "alice", "password": "alice's password"})
    assert response.status == 200, response.body
    answer = response.json
    assert set(answer) == {"token", "expiresAt", "user"}
    assert answer["expiresAt"].endswith("Z")
    assert answer["user"] == {"id": "alice", "name": "alice", "roles": ["admin"]}
    bearer = f"Bearer {answer['token']}"
    created = await password_api.request("POST", "/api/rooms", {"name": "lobby"},
                                         authorization=bearer)
    assert created.status == 201 and created.json["name"] == "lobby"
    assert created.header("x-content-type-options") == "nosniff"
    echoed = await password_api.request("GET", "/echo", authorization=bearer)
    assert echoed.json == {"id": "alice", "roles": ["admin"]}


@pytest_twisted.ensureDeferred
async def test_a_login_token_is_refused_after_a_password_reset(password_api: Http) -> None:
    """A REST Bearer token from POST /api/login stops working once the user's password is set
    again (a stolen token must not outlive the reset); a fresh login works."""
    login = {"login": "alice", "password": "alice's password"}
    token = (await password_api.request("POST", "/api/login", login)).json["token"]
    assert (await password_api.request("GET", "/echo", authorization=f"Bearer {token}")).status \
        == 200
    await password_api.store._pool.runInteraction(
        set_password, dialect_named("sqlite"), "alice", hash_password("a new password"))
    assert_json_error(await password_api.request("GET", "/echo", authorization=f"Bearer {token}"),
                      401, "invalid-credentials")
    login["password"] = "a new password"
    token = (await password_api.request("POST", "/api/login", login)).json["token"]
    assert (await password_api.request("GET", "/echo", authorization=f"Bearer {token}")).json \
        == {"id": "alice", "roles": ["admin"]}


@pytest_twisted.ensureDeferred
async def test_basic_authentication_in_password_mode(password_api: Http) -> None:
    """Basic credentials are checked against the users table and reach the handlers."""
    echoed = await password_api.request("GET", "/echo",
                                        authorization=basic("alice", "alice's password"))
    assert echoed.status == 200 and echoed.json["id"] == "alice"


@pytest_twisted.ensureDeferred
async def test_bad_logins_are_refused(password_api: Http) -> None:
    """A wrong password is 401, a malformed body 400, a GET 405, all JSON."""
    assert_json_error(await password_api.request(
        "POST", "/api/login", {"login": "alice", "password": "nope"}), 401, "invalid-credentials")
    assert_json_error(await password_api.request("POST", "/api/login", raw=b"{"), 400,
                      "invalid-login")
    assert_json_error(await password_api.request("POST", "/api/login", {"login": 1}), 400,
                      "invalid-login")
    assert_json_error(await password_api.request("GET", "/api/login"), 405, "method-not-allowed")


@pytest_twisted.ensureDeferred
async def test_jwt_mode_takes_bearer_tokens(jwt_api: Http) -> None:
    """In jwt mode a valid token authenticates; an expired one and Basic are refused, and
    there is no password login."""
    ok = await jwt_api.request("GET", "/echo", authorization=f"Bearer {hs256(claims('u-9'))}")
    assert ok.json == {"id": "u-9", "roles": []}
    expired = hs256(claims("u-9", lifetime=-3600))
    assert_json_error(await jwt_api.request("GET", "/api/rooms", authorization=f"Bearer {expired}"),
                      401, "invalid-credentials")
    refused = await jwt_api.request("GET", "/api/rooms",
                                    authorization=basic("alice", "alice's password"))
    assert_json_error(refused, 401, "unauthenticated")
    assert "Basic" not in (refused.header("www-authenticate") or "")
    assert_json_error(await jwt_api.request("POST", "/api/login", {"login": "a", "password": "b"}),
                      404, "login-unavailable")


@pytest_twisted.ensureDeferred
async def test_cross_origin_state_changes_are_refused(open_api: Http) -> None:
    """A foreign page's text/plain POST (or one whose Origin the browser hid) gets 403 and
    creates no room; reads and non-browser clients are unaffected."""
    foreign = await open_api.request("POST", "/api/rooms", raw=b'{"name": "pwned"}',
                                     content_type="text/plain", origin="http://evil.example")
    assert_json_error(foreign, 403, "forbidden-origin")
    hidden = await open_api.request("POST", "/api/rooms", {"name": "pwned"},
                                    sec_fetch_site="cross-site")
    assert_json_error(hidden, 403, "forbidden-origin")
    deleted = await open_api.request("DELETE", "/api/rooms/1/members/1",
                                     origin="http://evil.example")
    assert_json_error(deleted, 403, "forbidden-origin")
    assert await open_api.store.list_rooms() == []
    read = await open_api.request("GET", "/api/rooms", origin="http://evil.example")
    assert read.status == 200
    assert (await open_api.request("GET", "/echo")).json is None, "no principal with none"


@pytest_twisted.ensureDeferred
async def test_allowed_origins_may_change_state(open_api: Http) -> None:
    """A configured origin, and a client without Origin, may create rooms."""
    allowed = await open_api.request("POST", "/api/rooms", {"name": "a"},
                                     origin="https://chat.example.com")
    assert allowed.status == 201
    assert (await open_api.request("POST", "/api/rooms", {"name": "b"})).status == 201


@pytest_twisted.ensureDeferred
async def test_same_origin_is_the_reached_address(password_api: Http) -> None:
    """Without configured origins the page served from this address may post; a rebound
    name in Origin and Host may not."""
    login = {"login": "alice", "password": "alice's password"}
    same = await password_api.request("POST", "/api/login", login, origin=password_api.origin)
    assert same.status == 200
    rebound = f"http://attacker.example:{password_api.port}"
    refused = await password_api.request("POST", "/api/login", login, origin=rebound,
                                         host=f"attacker.example:{password_api.port}")
    assert_json_error(refused, 403, "forbidden-origin")


@pytest_twisted.ensureDeferred
async def test_a_silent_database_is_503_unavailable_and_a_warning_not_a_traceback(
    password_api: Http, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the users table cannot be read in time, the client gets 503 JSON and the log
    says so in one warning, with no critical traceback."""
    def silent(*_: Any) -> Deferred[Any]:
        return fail(DatabaseTimeout("the database did not answer within 1s"))

    monkeypatch.setattr(UserStore, "find", silent)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        response = await password_api.request(
            "GET", "/echo", authorization=basic("alice", "alice's password"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert_json_error(response, 503, "unavailable")
    levels = [event.get("log_level") for event in events
              if event.get("log_level", LogLevel.debug) >= LogLevel.warn]
    assert levels == [LogLevel.warn]
