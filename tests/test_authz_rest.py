"""The REST API's room rules over real HTTP, on SQLite and PostgreSQL.

Who made a request comes from an ``x-test-user`` header through the ``principal_of`` hook that
the authentication layer fills in production.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, FileBodyProducer
from twisted.web.http_headers import Headers
from twisted.web.server import Request, Site

from stomp_chat.app.chat import ChatService
from stomp_chat.authz.rest import RoomRestPolicy
from stomp_chat.authz.rooms import RoomAccess
from stomp_chat.authz.store import AdbapiRoomAccessStore
from stomp_chat.broker import Broker
from stomp_chat.identity import Principal
from stomp_chat.persistence import AdbapiChatStore, WriteBehindWriter, migrate
from stomp_chat.web.api import ChatApi
from stomp_chat.web.site import Root
from tests.test_web_api import _BodyReader

if TYPE_CHECKING:
    from tests.conftest_db import TestDatabase

pytest_plugins = ["tests.conftest_db"]

USERS = {
    "alice": Principal("alice", "Alice"),
    "bob": Principal("bob", "Bob"),
    "carol": Principal("carol", "Carol"),
    "root": Principal("root", "Root", frozenset({"admin"})),
}


def principal_from_header(request: Request) -> Principal | None:
    raw = request.getHeader("x-test-user")
    return USERS.get(raw) if raw else None


@dataclass
class Reply:
    status: int
    body: Any


class Client:
    def __init__(self, reactor: Any, port: int, rooms: RoomAccess) -> None:
        self.agent = Agent(reactor)
        self.base = f"http://127.0.0.1:{port}/api"
        self.rooms = rooms

    async def call(self, method: str, path: str, user: str | None, body: Any = None) -> Reply:
        headers = Headers({b"accept": [b"application/json"]})
        if user is not None:
            headers.addRawHeader(b"x-test-user", user.encode())
        producer = None
        if body is not None:
            headers.addRawHeader(b"content-type", b"application/json")
            producer = FileBodyProducer(BytesIO(json.dumps(body).encode()))
        response = await self.agent.request(
            method.encode(), (self.base + path).encode(), headers, producer
        )
        done: Deferred[bytes] = Deferred()
        response.deliverBody(_BodyReader(done))
        return Reply(response.code, json.loads(await done))

    async def member_id(self, user: str) -> int:
        value = self.rooms.member_id(USERS[user])
        return int(await value) if isinstance(value, Deferred) else value


async def _serve(database: TestDatabase, enforce: bool) -> AsyncIterator[Client]:
    from twisted.internet import reactor

    pool = database.open_pool()
    await migrate(pool)
    store = AdbapiChatStore(pool)
    writer = WriteBehindWriter(store, reactor, flush_interval=0.01)
    writer.startService()
    chat = ChatService(store, writer, Broker(), reactor)
    rooms = RoomAccess(store, AdbapiRoomAccessStore(pool), reactor)
    access = RoomRestPolicy(rooms, enforce=enforce, principal_of=principal_from_header)
    root = Root()
    root.putChild(b"api", ChatApi(chat, store, access=access))
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    try:
        yield Client(reactor, port.getHost().port, rooms)
    finally:
        await port.stopListening()
        await writer.stopService()


@pytest_twisted.async_yield_fixture
async def api(database: TestDatabase) -> AsyncIterator[Client]:
    """The API with room rules enforced, as outside --auth none."""
    async for client in _serve(database, enforce=True):
        yield client


@pytest_twisted.async_yield_fixture
async def open_api(sqlite_database: TestDatabase) -> AsyncIterator[Client]:
    """The API with --auth none: rooms open to everyone."""
    async for client in _serve(sqlite_database, enforce=False):
        yield client


@pytest_twisted.ensureDeferred
async def test_unauthenticated_requests_are_401(api: Client) -> None:
    """Without a principal every room request is a JSON 401."""
    for method, path, body in [
        ("GET", "/rooms", None),
        ("POST", "/rooms", {"name": "x"}),
        ("GET", "/rooms/1", None),
        ("POST", "/rooms/1/members", {}),
    ]:
        reply = await api.call(method, path, None, body)
        assert reply.status == 401, (method, path, reply.body)
        assert reply.body["error"] == "unauthenticated"


@pytest_twisted.ensureDeferred
async def test_a_private_room_is_created_with_its_creator_as_member(api: Client) -> None:
    """POST /api/rooms with private true makes a private room whose only member is the caller;
    without it the room is public, its creator a member too."""
    created = await api.call("POST", "/rooms", "alice", {"name": "team", "private": True})
    assert created.status == 201 and created.body["private"] is True
    public = await api.call("POST", "/rooms", "bob", {"name": "lobby"})
    assert public.body["private"] is False
    team, lobby = created.body["id"], public.body["id"]
    members = await api.call("GET", f"/rooms/{team}/members", "alice")
    assert [m["name"] for m in members.body["members"]] == ["alice"]
    members = await api.call("GET", f"/rooms/{lobby}/members", "carol")
    assert [m["name"] for m in members.body["members"]] == ["bob"]
    bad = await api.call("POST", "/rooms", "alice", {"name": "x", "private": "yes"})
    assert bad.status == 400


@pytest_twisted.ensureDeferred
async def test_a_private_room_is_hidden_and_closed_to_non_members(api: Client) -> None:
    """A non-member does not see a private room in the list and gets 403 for its details,
    members and history; a member and an admin get them."""
    team = (await api.call("POST", "/rooms", "alice", {"name": "team", "private": True})).body
    lobby = (await api.call("POST", "/rooms", "alice", {"name": "lobby"})).body
    listed = await api.call("GET", "/rooms", "bob")
    assert [r["id"] for r in listed.body["rooms"]] == [lobby["id"]]
    listed = await api.call("GET", "/rooms", "alice")
    assert [r["id"] for r in listed.body["rooms"]] == [team["id"], lobby["id"]]
    listed = await api.call("GET", "/rooms", "root")
    assert len(listed.body["rooms"]) == 2
    for suffix in ("", "/members", "/messages"):
        refused = await api.call("GET", f"/rooms/{team['id']}{suffix}", "bob")
        assert refused.status == 403 and refused.body["error"] == "forbidden", suffix
        assert (await api.call("GET", f"/rooms/{team['id']}{suffix}", "alice")).status == 200
        assert (await api.call("GET", f"/rooms/{team['id']}{suffix}", "root")).status == 200
        assert (await api.call("GET", f"/rooms/{lobby['id']}{suffix}", "bob")).status == 200


@pytest_twisted.ensureDeferred
async def test_joining_public_and_private_rooms(api: Client) -> None:
    """Anyone joins a public room; a private one only by a member adding them; a non-member
    cannot add anyone; an admin can."""
    team = (await api.call("POST", "/rooms", "alice", {"name": "team", "private": True})).body
    lobby = (await api.call("POST", "/rooms", "alice", {"name": "lobby"})).body
    joined = await api.call("POST", f"/rooms/{lobby['id']}/members", "bob", {})
    assert joined.status == 201 and joined.body["member"]["name"] == "bob"
    again = await api.call("POST", f"/rooms/{lobby['id']}/members", "bob", {})
    assert again.status == 200
    refused = await api.call("POST", f"/rooms/{team['id']}/members", "bob", {})
    assert refused.status == 403
    refused = await api.call("POST", f"/rooms/{team['id']}/members", "bob",
                             {"userId": "carol"})
    assert refused.status == 403
    added = await api.call("POST", f"/rooms/{team['id']}/members", "alice", {"userId": "bob"})
    assert added.status == 201 and added.body["member"]["name"] == "bob"
    carol = await api.member_id("carol")
    added = await api.call("POST", f"/rooms/{team['id']}/members", "bob", {"memberId": carol})
    assert added.status == 201
    dave = await api.call("POST", f"/rooms/{team['id']}/members", "root", {"userId": "dave"})
    assert dave.status == 201
    names = await api.call("GET", f"/rooms/{team['id']}/members", "carol")
    assert [m["name"] for m in names.body["members"]] == ["alice", "bob", "carol", "dave"]
    unknown = await api.call("POST", f"/rooms/{team['id']}/members", "alice",
                             {"memberId": 987654})
    assert unknown.status == 404


@pytest_twisted.ensureDeferred
async def test_members_leave_by_themselves_and_admins_remove_anyone(api: Client) -> None:
    """A member may remove only itself; an admin may remove anybody; leaving closes the room."""
    team = (await api.call("POST", "/rooms", "alice", {"name": "team", "private": True})).body
    await api.call("POST", f"/rooms/{team['id']}/members", "alice", {"userId": "bob"})
    alice, bob = await api.member_id("alice"), await api.member_id("bob")
    refused = await api.call("DELETE", f"/rooms/{team['id']}/members/{alice}", "bob")
    assert refused.status == 403
    left = await api.call("DELETE", f"/rooms/{team['id']}/members/{bob}", "bob")
    assert left.status == 200 and left.body["left"] is True
    assert (await api.call("GET", f"/rooms/{team['id']}/members", "bob")).status == 403
    removed = await api.call("DELETE", f"/rooms/{team['id']}/members/{alice}", "root")
    assert removed.status == 200


@pytest_twisted.ensureDeferred
async def test_with_auth_none_the_api_stays_open(open_api: Client) -> None:
    """With --auth none the seed's API is unchanged: no principal needed, memberId required,
    private rooms still listed (nothing is enforced), and the room says whether it is private."""
    team = await open_api.call("POST", "/rooms", None, {"name": "team", "private": True})
    assert team.status == 201 and team.body["private"] is True
    assert (await open_api.call("GET", f"/rooms/{team.body['id']}", None)).body["private"]
    joined = await open_api.call("POST", f"/rooms/{team.body['id']}/members", None,
                                 {"memberId": 5})
    assert joined.status == 201
    missing = await open_api.call("POST", f"/rooms/{team.body['id']}/members", None, {})
    assert missing.status == 400
    by_user = await open_api.call("POST", f"/rooms/{team.body['id']}/members", None,
                                  {"userId": "erin"})
    assert by_user.status == 201 and by_user.body["member"]["name"] == "erin"
    assert len((await open_api.call("GET", "/rooms", None)).body["rooms"]) == 1
    bad_user = await open_api.call("POST", f"/rooms/{team.body['id']}/members", None,
                                   {"userId": 5})
    assert bad_user.status == 400
    left = await open_api.call("DELETE", f"/rooms/{team.body['id']}/members/5", None)
    assert left.status == 200


def test_principal_hook_default_is_nobody() -> None:
    """Without an authentication layer wired in, the REST policy knows no principal."""
    from twisted.web.test.requesthelper import DummyRequest

    from stomp_chat.authz.rest import no_principal

    assert no_principal(DummyRequest([b"rooms"])) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("user_id", ["er\x00in", "\ud800"], ids=["nul", "lone-surrogate"])
@pytest_twisted.ensureDeferred
async def test_a_user_id_no_database_can_store_is_a_400(open_api: Client, user_id: str) -> None:
    """Joining someone by a userId holding NUL or a lone surrogate is a 400, never a 503."""
    room = await open_api.call("POST", "/rooms", None, {"name": "team"})
    joined = await open_api.call("POST", f"/rooms/{room.body['id']}/members", None,
                                 {"userId": user_id})
    assert joined.status == 400 and joined.body["error"] == "invalid-id"
    members = await open_api.call("GET", f"/rooms/{room.body['id']}/members", None)
    assert members.body["members"] == []
