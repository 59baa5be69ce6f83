"""The REST API under /api, over real HTTP: a twisted.web Site on a loopback port, backed by
the chat service and the SQLite store."""

from __future__ import annotations

import json
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.server import Site

from stomp_chat.app.chat import ChatRequest, ChatService
from stomp_chat.broker import Broker
from stomp_chat.persistence import (
    AdbapiChatStore,
    ChatMessage,
    MemoryChatStore,
    WriteBehindWriter,
    migrate,
)
from stomp_chat.web.api import MAX_BODY_BYTES, ChatApi
from stomp_chat.web.site import Root

if TYPE_CHECKING:
    from tests.conftest_db import TestDatabase

pytest_plugins = ["tests.conftest_db"]

MAX_PAGE = 50


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
        content_type = self.header("content-type") or ""
        assert content_type.startswith("application/json"), content_type
        return json.loads(self.body.decode("utf-8"))


class _BodyReader(Protocol):
    """Collects a response body."""

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


class ApiClient:
    """Talks HTTP to the API under test, and reaches its chat service and store directly."""

    def __init__(self, reactor: Any, port: int, chat: ChatService, store: AdbapiChatStore):
        self.agent = Agent(reactor)
        self.base = f"http://127.0.0.1:{port}"
        self.chat = chat
        self.store = store

    async def request(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None
    ) -> Response:
        if body is not None:
            raw = json.dumps(body).encode("utf-8")
        headers = Headers({b"accept": [b"application/json"]})
        producer = None
        if raw is not None:
            headers.addRawHeader(b"content-type", b"application/json")
            producer = FileBodyProducer(BytesIO(raw))
        response = await self.agent.request(
            method.encode("ascii"), (self.base + path).encode("ascii"), headers, producer
        )
        done: Deferred[bytes] = Deferred()
        response.deliverBody(_BodyReader(done))
        content = await done
        return Response(response.code, response.headers, content)

    async def get(self, path: str) -> Response:
        return await self.request("GET", path)

    async def post(self, path: str, body: Any = None, *, raw: bytes | None = None) -> Response:
        return await self.request("POST", path, body, raw=raw)

    async def say(self, room_id: int, text: str, sender_id: int = 1) -> ChatMessage:
        message: ChatMessage = await self.chat.post(ChatRequest("TALK", room_id, sender_id, text))
        return message


def assert_error(response: Response, status: int, code: str) -> dict[str, Any]:
    """The response is `status` with a JSON body {"error": code, "message": ...}."""
    assert response.status == status, response.body
    assert (response.header("content-type") or "").startswith("application/json")
    body = response.json
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body


@pytest_twisted.async_yield_fixture
async def api(sqlite_database: TestDatabase) -> Any:
    """The API on a listening loopback port, over a migrated SQLite store."""
    async for client in _serve_api(sqlite_database):
        yield client


@pytest_twisted.async_yield_fixture(params=["sqlite", "postgresql"])
async def api_on_each_database(request: pytest.FixtureRequest) -> Any:
    """The API over a migrated store on SQLite, then on PostgreSQL."""
    database: TestDatabase = request.getfixturevalue(f"{request.param}_database")
    async for client in _serve_api(database):
        yield client


async def _serve_api(database: TestDatabase) -> Any:
    from twisted.internet import reactor

    pool = database.open_pool()
    await migrate(pool)
    store = AdbapiChatStore(pool)
    writer = WriteBehindWriter(store, reactor, flush_interval=0.01)
    writer.startService()
    chat = ChatService(store, writer, Broker(), reactor)
    root = Root()
    root.putChild(b"api", ChatApi(chat, store, max_page=MAX_PAGE))
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    try:
        yield ApiClient(reactor, port.getHost().port, chat, store)
    finally:
        await port.stopListening()
        await writer.stopService()


# -- rooms -------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_create_room_answers_201_with_the_room(api: ApiClient) -> None:
    """POST /api/rooms creates a room and answers 201 with its id, trimmed name and time."""
    response = await api.post("/api/rooms", {"name": "  lobby  "})
    assert response.status == 201
    room = response.json
    assert set(room) == {"id", "name", "createdAt"}
    assert room["name"] == "lobby"
    assert isinstance(room["id"], int) and room["id"] > 0
    assert room["createdAt"].endswith("Z")
    stored = await api.store.get_room(room["id"])
    assert stored is not None and stored.name == "lobby"
    second = (await api.post("/api/rooms", {"name": "games"})).json
    assert second["id"] != room["id"]


@pytest_twisted.ensureDeferred
async def test_create_room_with_an_explicit_id_then_a_duplicate_is_409(api: ApiClient) -> None:
    """A room may be created with an id of the client's choice, but only once."""
    response = await api.post("/api/rooms", {"name": "seeded", "id": 42})
    assert response.status == 201
    assert response.json["id"] == 42
    assert_error(await api.post("/api/rooms", {"name": "again", "id": 42}), 409, "room-exists")
    assert (await api.get("/api/rooms/42")).json["name"] == "seeded"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "invalid-room"),
        ({"name": ""}, "invalid-room"),
        ({"name": "   "}, "invalid-room"),
        ({"name": 5}, "invalid-room"),
        ({"name": None}, "invalid-room"),
        ({"name": "x" * 201}, "invalid-room"),
        ({"name": "ok", "id": "abc"}, "invalid-id"),
        ({"name": "ok", "id": 0}, "invalid-id"),
        ({"name": "ok", "id": -3}, "invalid-id"),
        ({"name": "ok", "id": True}, "invalid-id"),
        ({"name": "ok", "id": 1.5}, "invalid-id"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_create_room_with_an_invalid_body_is_400(
    api: ApiClient, body: dict[str, Any], code: str
) -> None:
    """A room needs a non-empty name of at most 200 characters and, if given, a positive id."""
    assert_error(await api.post("/api/rooms", body), 400, code)
    assert (await api.get("/api/rooms")).json == {"rooms": []}


@pytest_twisted.ensureDeferred
async def test_list_rooms_returns_every_room_by_id(api: ApiClient) -> None:
    """GET /api/rooms lists all rooms, ordered by id, including rooms chat created."""
    assert (await api.get("/api/rooms")).json == {"rooms": []}
    await api.post("/api/rooms", {"name": "b", "id": 9})
    await api.post("/api/rooms", {"name": "a", "id": 3})
    await api.say(5, "creates room 5")
    response = await api.get("/api/rooms")
    assert response.status == 200
    rooms = response.json["rooms"]
    assert [(r["id"], r["name"]) for r in rooms] == [(3, "a"), (5, "room 5"), (9, "b")]
    assert (await api.get("/api/rooms/")).json == response.json, "a trailing slash is fine"


@pytest_twisted.ensureDeferred
async def test_get_room(api: ApiClient) -> None:
    """GET /api/rooms/{id} is the room, 404 when unknown, 400 when the id is not a number."""
    created = (await api.post("/api/rooms", {"name": "한국어 방", "id": 7})).json
    response = await api.get("/api/rooms/7")
    assert response.status == 200
    assert response.json == created
    assert created["name"] == "한국어 방"
    assert_error(await api.get("/api/rooms/8"), 404, "unknown-room")
    assert_error(await api.get("/api/rooms/abc"), 400, "invalid-id")
    assert_error(await api.get("/api/rooms/0"), 400, "invalid-id")
    assert_error(await api.get("/api/rooms/-7"), 400, "invalid-id")
    assert_error(await api.get("/api/rooms/99999999999999999999"), 400, "invalid-id")


# -- membership ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_join_room_is_201_then_200_for_a_member(api: ApiClient) -> None:
    """Joining creates the membership (201); joining again changes nothing (200)."""
    await api.post("/api/rooms", {"name": "r", "id": 1})
    first = await api.post("/api/rooms/1/members", {"memberId": 7})
    assert first.status == 201
    body = first.json
    assert body["roomId"] == 1
    assert body["member"]["id"] == 7
    assert set(body["member"]) == {"id", "name", "createdAt"}
    again = await api.post("/api/rooms/1/members", {"memberId": 7})
    assert again.status == 200
    assert again.json == body
    members = (await api.get("/api/rooms/1/members")).json["members"]
    assert [m["id"] for m in members] == [7]


@pytest_twisted.ensureDeferred
async def test_join_errors(api: ApiClient) -> None:
    """Joining needs an existing room and a positive memberId."""
    await api.post("/api/rooms", {"name": "r", "id": 1})
    assert_error(await api.post("/api/rooms/2/members", {"memberId": 7}), 404, "unknown-room")
    assert_error(await api.post("/api/rooms/1/members", {}), 400, "invalid-id")
    assert_error(await api.post("/api/rooms/1/members", {"memberId": "x"}), 400, "invalid-id")
    assert_error(await api.post("/api/rooms/1/members", {"memberId": 0}), 400, "invalid-id")
    assert_error(await api.post("/api/rooms/x/members", {"memberId": 1}), 400, "invalid-id")
    assert_error(await api.post("/api/rooms/1/members", raw=b"{memberId: 7"), 400, "invalid-json")
    assert (await api.get("/api/rooms/1/members")).json == {"members": []}


@pytest_twisted.ensureDeferred
async def test_list_members_in_join_order(api: ApiClient) -> None:
    """GET /api/rooms/{id}/members lists a room's members in the order they joined."""
    await api.post("/api/rooms", {"name": "r", "id": 1})
    await api.post("/api/rooms", {"name": "other", "id": 2})
    for member_id in (30, 10, 20):
        assert (await api.post("/api/rooms/1/members", {"memberId": member_id})).status == 201
    await api.post("/api/rooms/2/members", {"memberId": 99})
    response = await api.get("/api/rooms/1/members")
    assert response.status == 200
    assert [m["id"] for m in response.json["members"]] == [30, 10, 20]
    assert_error(await api.get("/api/rooms/3/members"), 404, "unknown-room")


@pytest_twisted.ensureDeferred
async def test_leave_room(api: ApiClient) -> None:
    """DELETE /api/rooms/{id}/members/{member} is 200, then 404 once no longer a member."""
    await api.post("/api/rooms", {"name": "r", "id": 1})
    await api.post("/api/rooms/1/members", {"memberId": 7})
    await api.post("/api/rooms/1/members", {"memberId": 8})
    response = await api.request("DELETE", "/api/rooms/1/members/7")
    assert response.status == 200
    assert response.json == {"roomId": 1, "memberId": 7, "left": True}
    assert [m["id"] for m in (await api.get("/api/rooms/1/members")).json["members"]] == [8]
    assert_error(await api.request("DELETE", "/api/rooms/1/members/7"), 404, "not-a-member")
    assert_error(await api.request("DELETE", "/api/rooms/1/members/123"), 404, "not-a-member")
    assert_error(await api.request("DELETE", "/api/rooms/5/members/8"), 404, "unknown-room")
    assert_error(await api.request("DELETE", "/api/rooms/1/members/x"), 400, "invalid-id")
    assert (await api.post("/api/rooms/1/members", {"memberId": 7})).status == 201


# -- history ---------------------------------------------------------------------------------


def _page(response: Response) -> tuple[list[int], dict[str, Any]]:
    assert response.status == 200, response.body
    body = response.json
    return [m["seq"] for m in body["messages"]], body


@pytest_twisted.ensureDeferred
async def test_history_pages_with_limit_before_and_after(api: ApiClient) -> None:
    """GET .../messages pages a room's history by limit, before and after, ascending by seq."""
    sent = [await api.say(4, f"메시지 {i} ✨", sender_id=i) for i in range(1, 8)]
    seqs, body = _page(await api.get("/api/rooms/4/messages"))
    assert body == {
        "roomId": 4,
        "messages": [m.to_json_dict() for m in sent],
        "oldestSeq": 1,
        "newestSeq": 7,
        "hasMoreBefore": False,
    }
    seqs, body = _page(await api.get("/api/rooms/4/messages?limit=3"))
    assert seqs == [5, 6, 7]
    assert (body["oldestSeq"], body["newestSeq"], body["hasMoreBefore"]) == (5, 7, True)
    assert _page(await api.get("/api/rooms/4/messages?limit=2&before=5"))[0] == [3, 4]
    assert _page(await api.get("/api/rooms/4/messages?before=3"))[0] == [1, 2]
    assert _page(await api.get("/api/rooms/4/messages?after=5"))[0] == [6, 7]
    assert _page(await api.get("/api/rooms/4/messages?after=2&limit=2"))[0] == [3, 4]
    assert _page(await api.get(f"/api/rooms/4/messages?limit={MAX_PAGE}"))[0] == list(range(1, 8))
    seqs, body = _page(await api.get("/api/rooms/4/messages?after=7"))
    assert seqs == []
    assert (body["oldestSeq"], body["newestSeq"], body["hasMoreBefore"]) == (None, None, False)


@pytest_twisted.ensureDeferred
async def test_history_of_stored_messages_of_an_inactive_room(api: ApiClient) -> None:
    """A room the chat has not loaded is paged from the database."""
    await api.post("/api/rooms", {"name": "archive", "id": 11})
    assert _page(await api.get("/api/rooms/11/messages"))[0] == []
    sent = [await api.say(12, f"m{i}") for i in range(1, 5)]
    await api.chat.writer.flush()
    api.chat.forget_room(12)
    assert api.chat.active_room(12) is None
    seqs, body = _page(await api.get("/api/rooms/12/messages?limit=3"))
    assert seqs == [2, 3, 4]
    assert body["messages"] == [m.to_json_dict() for m in sent[1:]]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("before=5&after=2", "invalid-query"),
        (f"limit={MAX_PAGE + 1}", "invalid-limit"),
        ("limit=abc", "invalid-limit"),
        ("limit=0", "invalid-limit"),
        ("limit=-1", "invalid-limit"),
        ("limit=2.5", "invalid-limit"),
        ("before=x", "invalid-before"),
        ("after=", "invalid-after"),
        ("after=-1", "invalid-after"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_history_with_an_invalid_query_is_400(api: ApiClient, query: str, code: str) -> None:
    """Bad history parameters are a 400 naming the parameter."""
    await api.say(4, "hello")
    assert_error(await api.get(f"/api/rooms/4/messages?{query}"), 400, code)


_HUGE = "9" * 5000

HUGE_NUMBER_REQUESTS = [
    ("GET", f"/api/rooms/{_HUGE}", None, "invalid-id"),
    ("GET", f"/api/rooms/{'0' * 5000}1", None, None),
    ("GET", f"/api/rooms/{_HUGE}/members", None, "invalid-id"),
    ("POST", f"/api/rooms/{_HUGE}/members", {"memberId": 1}, "invalid-id"),
    ("POST", "/api/rooms/1/members", {"memberId": _HUGE}, "invalid-id"),
    ("POST", "/api/rooms", {"name": "x", "id": _HUGE}, "invalid-id"),
    ("DELETE", f"/api/rooms/1/members/{_HUGE}", None, "invalid-id"),
    ("GET", f"/api/rooms/{_HUGE}/messages", None, "invalid-id"),
    ("GET", f"/api/rooms/1/messages?limit={_HUGE}", None, "invalid-limit"),
    ("GET", f"/api/rooms/1/messages?before={_HUGE}", None, "invalid-before"),
    ("GET", f"/api/rooms/1/messages?after={_HUGE}", None, "invalid-after"),
    ("GET", f"/api/rooms/{2**63}", None, "invalid-id"),
    ("GET", f"/api/rooms/1/messages?before={2**63}", None, "invalid-before"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "code"),
    HUGE_NUMBER_REQUESTS,
    ids=[f"{m} {p[:40]} {b}" for m, p, b, _ in HUGE_NUMBER_REQUESTS],
)
@pytest_twisted.ensureDeferred
async def test_thousands_of_digits_in_an_id_are_a_400(
    api: ApiClient, method: str, path: str, body: Any, code: str | None
) -> None:
    """A 5,000-digit (or beyond 64-bit) id in a path, query or body is a JSON 400 naming
    it, never a traceback or a 503; zeros before a small id are only zeros."""
    await api.say(1, "hello")
    response = await api.request(method, path, body)
    if code is None:
        assert response.status == 200 and response.json["id"] == 1
    else:
        assert_error(response, 400, code)


@pytest_twisted.ensureDeferred
async def test_ids_at_the_edge_of_the_database_integer_range(
    api_on_each_database: ApiClient,
) -> None:
    """The largest 64-bit id is a 404 (or a working room) on both databases, one more is a
    400: no id reaches the database out of its BIGINT range."""
    api = api_on_each_database
    largest = 2**63 - 1
    await api.say(1, "hello")
    assert_error(await api.get(f"/api/rooms/{largest}"), 404, "unknown-room")
    assert_error(await api.get(f"/api/rooms/{largest}/messages"), 404, "unknown-room")
    assert_error(await api.get(f"/api/rooms/{2**63}/messages"), 400, "invalid-id")
    page = await api.get(f"/api/rooms/1/messages?before={largest}")
    assert page.status == 200 and [m["seq"] for m in page.json["messages"]] == [1]
    page = await api.get(f"/api/rooms/1/messages?after={largest}")
    assert page.status == 200 and page.json["messages"] == []
    created = await api.post("/api/rooms", {"name": "edge", "id": largest})
    assert created.status == 201 and created.json["id"] == largest
    left = await api.request("DELETE", f"/api/rooms/{largest}/members/{largest}")
    assert_error(left, 404, "not-a-member")


@pytest_twisted.ensureDeferred
async def test_history_of_an_unknown_or_invalid_room(api: ApiClient) -> None:
    """History of a missing room is 404; of a non-numeric room id, 400."""
    assert_error(await api.get("/api/rooms/404/messages"), 404, "unknown-room")
    assert_error(await api.get("/api/rooms/abc/messages"), 400, "invalid-id")


# -- HTTP-level errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/api/rooms", "GET, POST"),
        ("PUT", "/api/rooms/1", "GET"),
        ("POST", "/api/rooms/1", "GET"),
        ("DELETE", "/api/rooms/1/members", "GET, POST"),
        ("GET", "/api/rooms/1/members/2", "DELETE"),
        ("POST", "/api/rooms/1/messages", "GET"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_wrong_method_is_405_with_allow(
    api: ApiClient, method: str, path: str, allow: str
) -> None:
    """A known path with a method it does not support is 405 naming the allowed methods."""
    response = await api.request(method, path, raw=b"{}" if method in ("POST", "PUT") else None)
    assert_error(response, 405, "method-not-allowed")
    assert response.header("allow") == allow


@pytest.mark.parametrize(
    "path",
    [
        "/api",
        "/api/",
        "/api/nothing",
        "/api/rooms/1/unknown",
        "/api/rooms/1/members/2/x",
        "/nothing-here",
    ],
)
@pytest_twisted.ensureDeferred
async def test_unknown_paths_are_a_json_404(api: ApiClient, path: str) -> None:
    """Paths the API does not know are 404 with a JSON body, not an HTML page."""
    assert_error(await api.get(path), 404, "not-found")


@pytest_twisted.ensureDeferred
async def test_a_body_over_64_kib_is_413(api: ApiClient) -> None:
    """Request bodies above 64 KiB are refused with 413; exactly 64 KiB is read."""
    prefix, suffix = b'{"name": "', b'"}'
    at_limit = prefix + b"x" * (MAX_BODY_BYTES - len(prefix) - len(suffix)) + suffix
    assert MAX_BODY_BYTES == 64 * 1024 and len(at_limit) == MAX_BODY_BYTES
    # Exactly at the limit the body is parsed (and refused only for its over-long name).
    assert_error(await api.post("/api/rooms", raw=at_limit), 400, "invalid-room")
    over = prefix + b"x" * (MAX_BODY_BYTES - len(prefix) - len(suffix) + 1) + suffix
    assert_error(await api.post("/api/rooms", raw=over), 413, "too-large")
    assert_error(await api.post("/api/rooms", raw=b" " * (1024 * 1024)), 413, "too-large")
    await api.post("/api/rooms", {"name": "r", "id": 1})
    assert_error(await api.post("/api/rooms/1/members", raw=over), 413, "too-large")


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b'{"name": "x"', b"\xff\xfe{}", b"[1, 2]", b'"lobby"', b"null", b"42"],
)
@pytest_twisted.ensureDeferred
async def test_a_body_that_is_not_a_json_object_is_400(api: ApiClient, raw: bytes) -> None:
    """A body that is not valid JSON, or not a JSON object, is 400 invalid-json."""
    assert_error(await api.post("/api/rooms", raw=raw), 400, "invalid-json")


@pytest_twisted.ensureDeferred
async def test_a_failing_store_is_a_json_503(api: ApiClient, monkeypatch: Any) -> None:
    """An unexpected store failure is answered 503 in JSON, without details."""
    monkeypatch.setattr(api.store, "list_rooms", lambda: fail(RuntimeError("disk on fire")))
    body = assert_error(await api.get("/api/rooms"), 503, "unavailable")
    assert "disk on fire" not in body["message"]


class _SlowRoomsStore(MemoryChatStore):
    """A store whose room list is answered only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: Deferred[Any] = Deferred()

    def list_rooms(self) -> Deferred[Any]:
        return self.pending


def test_an_answer_for_a_client_that_went_away_is_dropped_quietly() -> None:
    """A request whose client disconnected before the answer was ready gets no write."""
    from twisted.internet.error import ConnectionLost
    from twisted.internet.task import Clock
    from twisted.web.server import NOT_DONE_YET
    from twisted.web.test.requesthelper import DummyRequest

    store = _SlowRoomsStore()
    clock = Clock()
    api = ChatApi(ChatService(store, WriteBehindWriter(store, clock), Broker(), clock), store)
    request = DummyRequest([b"rooms"])
    request.method = b"GET"
    assert api.render(request) == NOT_DONE_YET
    request.processingFailed(Failure(ConnectionLost()))
    store.pending.callback([])
    assert request.written == []
    assert request.finished == 0


@pytest_twisted.ensureDeferred
async def test_store_failures_are_logged_once_per_outage(
    sqlite_database: TestDatabase, monkeypatch: Any
) -> None:
    """With an OutageLog, failing requests are each a 503 but one outage; a success ends it."""
    from twisted.internet import reactor

    from stomp_chat.outage import OutageLog

    pool = sqlite_database.open_pool()
    await migrate(pool)
    store = AdbapiChatStore(pool)
    writer = WriteBehindWriter(store, reactor, flush_interval=0.01)
    outage = OutageLog("REST requests", reactor)
    root = Root()
    chat = ChatService(store, writer, Broker(), reactor)
    root.putChild(b"api", ChatApi(chat, store, outage=outage))
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    client = ApiClient(reactor, port.getHost().port, chat, store)
    try:
        working = store.list_rooms
        monkeypatch.setattr(store, "list_rooms", lambda: fail(RuntimeError("database down")))
        for _ in range(3):
            assert_error(await client.get("/api/rooms"), 503, "unavailable")
        assert outage.in_outage and outage.failures == 3
        monkeypatch.setattr(store, "list_rooms", working)
        assert (await client.get("/api/rooms")).status == 200
        assert not outage.in_outage
    finally:
        await port.stopListening()


@pytest.mark.parametrize("name", ["team\x00", "team\ud800"], ids=["nul", "lone-surrogate"])
@pytest_twisted.ensureDeferred
async def test_a_room_name_no_database_can_store_is_a_400(
    api_on_each_database: ApiClient, name: str
) -> None:
    """A room name holding NUL or a lone surrogate is a JSON 400, never a 503 or a stored name."""
    api = api_on_each_database
    assert_error(await api.post("/api/rooms", {"name": name}), 400, "invalid-room")
    assert (await api.get("/api/rooms")).json == {"rooms": []}
