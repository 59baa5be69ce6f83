"""Authorization end to end: real stomp.py clients over TCP and WebSocket, a server on
loopback sockets, a SQLite store.

The server is built in-process as tap builds it, with a test authenticator that takes the
CONNECT login as the user (roles from a table), so these tests depend on no particular
authentication mode; ``--auth none`` runs with the anonymous authenticator.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
import pytest_twisted
import stomp
from twisted.internet.threads import deferToThread

from stomp_chat.app.chat import ChatService
from stomp_chat.app.routes import AppRouter
from stomp_chat.authz.rules import RuleSet
from stomp_chat.authz.setup import Authorization, build_authorization
from stomp_chat.broker import Broker
from stomp_chat.heartbeat import HeartbeatMonitor
from stomp_chat.identity import AUTH_JWT, ConnectionInfo, Principal
from stomp_chat.persistence import AdbapiChatStore, WriteBehindWriter, migrate
from stomp_chat.session import (
    AnonymousAuthenticator,
    AuthenticationInterceptor,
    Authenticator,
    ServerContext,
    SessionSettings,
)
from stomp_chat.stomp.frame import Frame
from stomp_chat.transport.stomp import StompFactory
from stomp_chat.transport.websocket import StompWebSocketFactory
from stomp_chat.web.api import ChatApi
from stomp_chat.web.site import build_site
from tests.chatclient import ChatClient

if TYPE_CHECKING:
    from tests.conftest_db import TestDatabase

pytest_plugins = ["tests.conftest_db"]

TIMEOUT = 10.0
#: How long a client waits to be sure something does NOT arrive.
QUIET = 0.5
ROLES = {"olga": frozenset({"ops"}), "root": frozenset({"admin"})}
RULES = [{"destination": "/topic/ops.**", "subscribe": ["role:ops"], "send": ["role:ops"]}]


class LoginAuthenticator:
    """Takes the CONNECT login as the user id, as a token's ``sub`` would be."""

    def authenticate(self, frame: Frame, connection: ConnectionInfo) -> Principal:
        login = frame.headers.get("login", "")
        return Principal(login, login.title(), ROLES.get(login, frozenset()), method=AUTH_JWT)


class Client(ChatClient):
    """A blocking stomp.py client over TCP or WebSocket whose bodies are JSON; the tests call
    it from threads (deferToThread)."""

    def __init__(self, transport: str, server: Server, login: str | None) -> None:
        if transport == "ws":
            connection: Any = stomp.WSStompConnection(
                [("127.0.0.1", server.http_port)], ws_path="/ws/chat", heartbeats=(0, 0)
            )
        else:
            connection = stomp.Connection([("127.0.0.1", server.stomp_port)], heartbeats=(0, 0))
        super().__init__(
            server.http_port, login or "", passcode="secret", connection=connection
        )

    def subscribe(self, destination: str) -> None:
        """Subscribe and wait for the receipt, so the subscription surely exists."""
        self._subscriptions += 1
        receipt = f"sub-{self._subscriptions}"
        self.conn.subscribe(destination, id=str(self._subscriptions), headers={"receipt": receipt})
        self.wait_for(lambda: receipt in self.receipts or self.errors, f"receipt {receipt}")

    def send(self, destination: str, body: Any, receipt: str | None = None) -> None:
        text = body if isinstance(body, str) else json.dumps(body)
        headers = {"receipt": receipt} if receipt else {}
        self.conn.send(destination, text, content_type="application/json", headers=headers)

    def at(self, destination: str) -> list[Any]:
        with self._lock:
            return [json.loads(m.body) for m in self.messages
                    if m.headers.get("destination") == destination]

    def app_errors(self, count: int = 1) -> list[Any]:
        return self.wait_at("/user/queue/errors", count)


@dataclass
class Server:
    stomp_port: int
    http_port: int
    authorization: Authorization

    async def connect(self, login: str | None, transport: str = "tcp") -> Client:
        client: Client = await deferToThread(Client, transport, self, login)
        self.clients.append(client)
        return client

    def __post_init__(self) -> None:
        self.clients: list[Client] = []
        self.mode = "jwt"


async def run(function: Callable[..., Any], *args: Any) -> Any:
    """Call a blocking client method in a thread, so the reactor keeps serving."""
    return await deferToThread(function, *args)


async def _serve(database: TestDatabase, mode: str) -> AsyncIterator[Server]:
    from twisted.internet import reactor

    pool = database.open_pool()
    await migrate(pool)
    store = AdbapiChatStore(pool)
    writer = WriteBehindWriter(store, reactor, flush_interval=0.01)
    writer.startService()
    broker, router = Broker(), AppRouter()
    authorization = build_authorization(
        auth_mode=mode, chat_store=store, pool=pool, clock=reactor, router=router,
        broker=broker, rules=RuleSet.from_config(RULES),
    )
    chat = ChatService(store, writer, broker, reactor, gate=authorization.gate)
    chat.register(router)
    authenticator: Authenticator = (
        AnonymousAuthenticator() if mode == "none" else LoginAuthenticator()
    )
    monitor = HeartbeatMonitor(reactor, 1.0)
    context = ServerContext(
        broker, router, SessionSettings(heartbeat=(0, 0)), monitor, reactor,
        interceptors=[AuthenticationInterceptor(authenticator), authorization.interceptor],
    )
    stomp_factory = StompFactory(context)
    ws_factory = StompWebSocketFactory(stomp_factory, reactor=reactor)
    site = build_site(ws_factory, api=ChatApi(chat, store, access=authorization.rest_policy()))
    tcp = reactor.listenTCP(0, stomp_factory, interface="127.0.0.1")
    http = reactor.listenTCP(0, site, interface="127.0.0.1")
    server = Server(tcp.getHost().port, http.getHost().port, authorization)
    try:
        yield server
    finally:
        for client in server.clients:
            await run(client.close)
        await tcp.stopListening()
        await http.stopListening()
        await writer.stopService()


@pytest_twisted.async_yield_fixture
async def server(sqlite_database: TestDatabase) -> AsyncIterator[Server]:
    """A server that authenticates (every CONNECT login is a user) and authorizes."""
    async for running in _serve(sqlite_database, "jwt"):
        yield running


@pytest_twisted.async_yield_fixture(params=["none", "jwt"])
async def any_server(
    request: pytest.FixtureRequest, sqlite_database: TestDatabase
) -> AsyncIterator[Server]:
    """A server with --auth none, then one that authenticates."""
    async for running in _serve(sqlite_database, request.param):
        running.mode = request.param
        yield running


async def _member_id(server: Server, user: str) -> int:
    value = server.authorization.rooms.member_id(Principal(user, user))
    return int(await value) if not isinstance(value, int) else value


async def _private_room(server: Server, owner: str) -> int:
    room = await server.authorization.rooms.create_room("team", None, True, Principal(owner, owner))
    return room.id


ROOM = "/topic/chat/room/{}"


@pytest.mark.parametrize("transport", ["tcp", "ws"])
@pytest_twisted.ensureDeferred
async def test_a_client_cannot_speak_as_another_user(server: Server, transport: str) -> None:
    """A chat message with another user's senderId is refused (forbidden) and reaches no one;
    what the client says as itself carries its own id and name."""
    bob = await server.connect("bob", transport)
    alice = await server.connect("alice", transport)
    await run(bob.subscribe, ROOM.format(1))
    await run(alice.subscribe, "/user/queue/errors")
    await run(alice.send, "/app/message", {"type": "ENTER", "roomId": 1})
    bob_id = await _member_id(server, "bob")
    await run(alice.send, "/app/message",
              {"type": "TALK", "roomId": 1, "senderId": bob_id, "detailMessage": "I am Bob"})
    await run(alice.send, "/app/message", {"type": "TALK", "roomId": 1, "detailMessage": "me"})
    errors = await run(alice.app_errors)
    assert errors[0]["error"] == "forbidden"
    seen = await run(bob.wait_at, ROOM.format(1), 2)
    alice_id = await _member_id(server, "alice")
    assert [(m["type"], m["senderId"], m["senderName"]) for m in seen] == [
        ("ENTER", alice_id, "Alice"), ("TALK", alice_id, "Alice"),
    ]
    assert [m["seq"] for m in seen] == [1, 2]


@pytest.mark.parametrize("transport", ["tcp", "ws"])
@pytest_twisted.ensureDeferred
async def test_a_non_member_cannot_read_or_write_a_private_room(
    server: Server, transport: str
) -> None:
    """A non-member's SUBSCRIBE to a private room is an ERROR; its chat messages and its
    direct SENDs are refused; a member subscribes and talks."""
    room = await _private_room(server, "alice")
    alice = await server.connect("alice", transport)
    await run(alice.subscribe, ROOM.format(room))
    peeker = await server.connect("bob", transport)
    await run(peeker.subscribe, ROOM.format(room))
    await run(peeker.wait_for, lambda: peeker.errors, "ERROR")
    assert peeker.errors[0].headers["message"] == "access denied"
    await run(peeker.wait_for, lambda: peeker.disconnected, "the connection to close")

    bob = await server.connect("bob", transport)
    await run(bob.subscribe, "/user/queue/errors")
    for kind in ("ENTER", "TALK"):
        await run(bob.send, "/app/message", {"type": kind, "roomId": room, "detailMessage": "x"})
    await run(bob.send, ROOM.format(room), {"type": "TALK", "roomId": room, "seq": 5})
    errors = await run(bob.app_errors, 3)
    assert {e["error"] for e in errors} == {"forbidden"}
    await run(alice.send, "/app/message", {"type": "TALK", "roomId": room, "detailMessage": "hi"})
    seen = await run(alice.wait_at, ROOM.format(room), 1)
    await run(time.sleep, QUIET)
    assert [m["detailMessage"] for m in alice.at(ROOM.format(room))] == ["hi"]
    assert seen[0]["seq"] == 1


@pytest_twisted.ensureDeferred
async def test_a_public_room_is_joined_by_entering(server: Server) -> None:
    """TALK before ENTER is refused; ENTER joins the public room; then TALK is broadcast."""
    carol = await server.connect("carol")
    await run(carol.subscribe, ROOM.format(3))
    await run(carol.subscribe, "/user/queue/errors")
    await run(carol.send, "/app/message", {"type": "TALK", "roomId": 3, "detailMessage": "early"})
    assert (await run(carol.app_errors))[0]["error"] == "forbidden"
    await run(carol.send, "/app/message", {"type": "ENTER", "roomId": 3})
    await run(carol.send, "/app/message", {"type": "TALK", "roomId": 3, "detailMessage": "now"})
    seen = await run(carol.wait_at, ROOM.format(3), 2)
    assert [m["type"] for m in seen] == ["ENTER", "TALK"]


@pytest_twisted.ensureDeferred
async def test_a_forged_room_message_reaches_no_one(any_server: Server) -> None:
    """A chat JSON sent straight to a room's topic (seq 99999) is refused in every auth mode:
    subscribers see only what /app/message numbered and stored."""
    server = any_server
    login = None if server.mode == "none" else "mallory"
    watcher = await server.connect(None if server.mode == "none" else "walter", "ws")
    await run(watcher.subscribe, ROOM.format(1))
    forger = await server.connect(login)
    await run(forger.subscribe, "/user/queue/errors")
    forged = {"type": "TALK", "roomId": 1, "senderId": 1, "detailMessage": "forged",
              "messageId": "1-99999", "seq": 99999, "createdAt": "2026-01-01T00:00:00.000Z"}
    await run(forger.send, ROOM.format(1), forged)
    assert (await run(forger.app_errors))[0]["error"] == "forbidden"
    await run(forger.send, "/app/message",
              {"type": "ENTER", "roomId": 1, "senderId": 1})
    seen = await run(watcher.wait_at, ROOM.format(1), 1)
    await run(time.sleep, QUIET)
    assert [m["type"] for m in watcher.at(ROOM.format(1))] == ["ENTER"]
    assert seen[0]["seq"] == 1


@pytest_twisted.ensureDeferred
async def test_user_queues_reach_every_session_of_the_user_and_no_one_else(
    server: Server,
) -> None:
    """A direct message to /user/alice/queue/inbox reaches both of alice's connections (TCP
    and WebSocket) and not bob's /user/queue/inbox."""
    alice_tcp = await server.connect("alice", "tcp")
    alice_ws = await server.connect("alice", "ws")
    bob = await server.connect("bob")
    for client in (alice_tcp, alice_ws, bob):
        await run(client.subscribe, "/user/queue/inbox")
    carol = await server.connect("carol", "ws")
    await run(carol.send, "/user/alice/queue/inbox", {"text": "for alice"})
    for client in (alice_tcp, alice_ws):
        assert await run(client.wait_at, "/user/queue/inbox", 1) == [{"text": "for alice"}]
    await run(time.sleep, QUIET)
    assert bob.at("/user/queue/inbox") == []
    assert bob.messages == []


@pytest_twisted.ensureDeferred
async def test_subscribing_to_another_users_queue_is_refused(server: Server) -> None:
    """SUBSCRIBE /user/alice/queue/inbox by bob is an ERROR, and alice's messages stay hers."""
    bob = await server.connect("bob")
    await run(bob.subscribe, "/user/alice/queue/inbox")
    await run(bob.wait_for, lambda: bob.errors, "ERROR")
    assert bob.errors[0].headers["message"] == "access denied"
    await run(bob.wait_for, lambda: bob.disconnected, "the connection to close")


@pytest_twisted.ensureDeferred
async def test_configured_rules_are_enforced(server: Server) -> None:
    """The ops rule lets role ops subscribe and send to /topic/ops.**; others are refused, and
    a topic no rule names is denied."""
    olga = await server.connect("olga", "ws")
    await run(olga.subscribe, "/topic/ops.alerts")
    await run(olga.send, "/topic/ops.alerts", {"alert": 1})
    assert await run(olga.wait_at, "/topic/ops.alerts", 1) == [{"alert": 1}]
    bob = await server.connect("bob")
    await run(bob.subscribe, "/user/queue/errors")
    await run(bob.send, "/topic/ops.alerts", {"alert": "fake"})
    await run(bob.send, "/topic/unlisted", {"x": 1})
    assert [e["error"] for e in await run(bob.app_errors, 2)] == ["forbidden", "forbidden"]
    await run(time.sleep, QUIET)
    assert olga.at("/topic/ops.alerts") == [{"alert": 1}]
    snoop = await server.connect("bob", "ws")
    await run(snoop.subscribe, "/topic/ops.alerts")
    await run(snoop.wait_for, lambda: snoop.errors, "ERROR")


@pytest.mark.parametrize("transport", ["tcp", "ws"])
@pytest_twisted.ensureDeferred
async def test_leaving_a_private_room_ends_the_subscription(
    server: Server, transport: str
) -> None:
    """A member removed from a private room gets ERROR "access revoked" on every connection
    subscribed to it, cannot subscribe again, and the remaining members go on."""
    room = await _private_room(server, "alice")
    rooms = server.authorization.rooms
    bob_id = await _member_id(server, "bob")
    await rooms.join(room, bob_id)
    alice = await server.connect("alice", transport)
    bob = await server.connect("bob", transport)
    await run(alice.subscribe, ROOM.format(room))
    await run(bob.subscribe, ROOM.format(room))
    await rooms.leave(room, bob_id)
    await run(bob.wait_for, lambda: bob.errors, "ERROR")
    assert bob.errors[0].headers["message"] == "access revoked"
    await run(bob.wait_for, lambda: bob.disconnected, "the connection to close")
    again = await server.connect("bob", transport)
    await run(again.subscribe, ROOM.format(room))
    await run(again.wait_for, lambda: again.errors, "ERROR")
    await run(alice.send, "/app/message", {"type": "TALK", "roomId": room, "detailMessage": "x"})
    assert len(await run(alice.wait_at, ROOM.format(room), 1)) == 1
    assert alice.errors == []


def test_twistd_refuses_forged_room_messages_by_default(start_server: Any, clients: Any) -> None:
    """The real `twistd -n stomp-chat` (its defaults: --auth none) refuses a chat JSON sent
    straight to a room's topic with an application error; the room sees only /app/message's."""
    served = start_server()
    watcher = clients(served)
    watcher.subscribe(ROOM.format(1))
    forger = clients(served)
    forger.subscribe("/user/queue/errors")
    forged = {"type": "TALK", "roomId": 1, "senderId": 1, "detailMessage": "forged",
              "messageId": "1-99999", "seq": 99999, "createdAt": "2026-01-01T00:00:00.000Z"}
    forger.conn.send(ROOM.format(1), json.dumps(forged), content_type="application/json")
    [error] = forger.wait_at("/user/queue/errors", 1)
    assert json.loads(error.body)["error"] == "forbidden"
    forger.send_chat({"type": "ENTER", "roomId": 1, "senderId": 1})
    watcher.wait_chat(1, 1)
    time.sleep(QUIET)
    assert [(m["type"], m["seq"]) for m in watcher.chat(1)] == [("ENTER", 1)]


def _http(method: str, url: str, token: str, body: Any = None) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json",
    })
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_twistd_with_jwt_keeps_private_rooms_private(start_server: Any, tmp_path: Any) -> None:
    """The real `twistd -n stomp-chat --auth jwt`: a private room made over REST with a token is
    listed, read and spoken in by its creator only; another user's REST reads are 403, its
    SUBSCRIBE is an ERROR, and the creator's messages carry the token's sub and name."""
    from tests.authkeys import claims, hs256, write_secret

    served = start_server("--auth", "jwt", f"--jwt-secret-file={write_secret(tmp_path)}",
                          f"--database=sqlite:///{tmp_path}/chat.db")
    alice = hs256(claims("alice", name="Alice A."))
    bob = hs256(claims("bob", name="Bob"))
    base = served.http_url + "/api"
    status, room = _http("POST", f"{base}/rooms", alice, {"name": "team", "private": True})
    assert status == 201 and room["private"] is True
    assert _http("GET", f"{base}/rooms/{room['id']}/messages", bob, None)[0] == 403
    assert _http("GET", f"{base}/rooms", bob, None)[1]["rooms"] == []

    def client(token: str) -> Any:
        recorder = _Recorder()
        conn = stomp.WSStompConnection([("127.0.0.1", served.http_port)], ws_path="/ws/chat",
                                       heartbeats=(0, 0))
        conn.set_listener("r", recorder)
        conn.connect("ignored", token, wait=True)
        recorder.conn = conn
        return recorder

    writer, peeker = client(alice), client(bob)
    try:
        topic = ROOM.format(room["id"])
        writer.conn.subscribe(topic, id="1", headers={"receipt": "s"})
        assert writer.receipt.wait(TIMEOUT)
        peeker.conn.subscribe(topic, id="1")
        assert peeker.error.wait(TIMEOUT)
        assert peeker.errors[0].headers["message"] == "access denied"
        writer.conn.send("/app/message", json.dumps(
            {"type": "TALK", "roomId": room["id"], "detailMessage": "hi team"}))
        assert writer.message.wait(TIMEOUT)
        said = json.loads(writer.messages[0].body)
        assert (said["senderName"], said["detailMessage"]) == ("Alice A.", "hi team")
    finally:
        for recorder in (writer, peeker):
            if recorder.conn.is_connected():
                recorder.conn.disconnect()


class _Recorder(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.conn: Any = None
        self.messages: list[Any] = []
        self.errors: list[Any] = []
        self.message, self.error, self.receipt = (threading.Event() for _ in range(3))

    def on_message(self, frame: Any) -> None:
        self.messages.append(frame)
        self.message.set()

    def on_error(self, frame: Any) -> None:
        self.errors.append(frame)
        self.error.set()

    def on_receipt(self, frame: Any) -> None:
        self.receipt.set()
