"""Room privacy and membership storage, on SQLite and PostgreSQL (real servers) and in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
import pytest_twisted

from stomp_chat.authz.store import (
    AdbapiRoomAccessStore,
    MemoryRoomAccessStore,
    RoomAccessStore,
)
from stomp_chat.persistence import (
    AdbapiChatStore,
    ChatStore,
    MemoryChatStore,
    RoomAlreadyExists,
    migrate,
)
from tests.silentdb import assert_times_out, routed_and_migrated

if TYPE_CHECKING:
    from tests.conftest_db import CuttableProxy, TestDatabase

pytest_plugins = ["tests.conftest_db"]


@dataclass
class Stores:
    chat: ChatStore
    access: RoomAccessStore
    database: Any = None


@pytest_twisted.async_yield_fixture(params=["sqlite", "postgresql", "memory"])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[Stores]:
    if request.param == "memory":
        chat = MemoryChatStore()
        yield Stores(chat, MemoryRoomAccessStore(chat))
        return
    database: TestDatabase = request.getfixturevalue(f"{request.param}_database")
    pool = database.open_pool()
    await migrate(pool)
    yield Stores(AdbapiChatStore(pool), AdbapiRoomAccessStore(pool), database)


@pytest_twisted.ensureDeferred
async def test_rooms_are_public_unless_created_private(stores: Stores) -> None:
    """A room made by the chat's store is public; one made private stays private; none: None."""
    public = await stores.chat.create_room("lobby")
    private = await stores.access.create_room("secret", None, True, None)
    assert await stores.access.room_privacy(public.id) is False
    assert await stores.access.room_privacy(private.id) is True
    assert await stores.access.room_privacy(9999) is None
    assert private.name == "secret" and private.id != public.id


@pytest_twisted.ensureDeferred
async def test_the_creator_is_the_first_member(stores: Stores) -> None:
    """Creating a room with a creator makes that member a member in the same step."""
    alice = await stores.chat.create_member("alice")
    bob = await stores.chat.create_member("bob")
    room = await stores.access.create_room("team", None, True, alice.id)
    assert await stores.access.is_member(room.id, alice.id) is True
    assert await stores.access.is_member(room.id, bob.id) is False
    assert [m.name for m in await stores.chat.list_members(room.id)] == ["alice"]


@pytest_twisted.ensureDeferred
async def test_an_explicit_id_that_is_taken_is_refused(stores: Stores) -> None:
    """With an explicit id in use, creation fails with RoomAlreadyExists and changes nothing."""
    await stores.chat.create_room("first", 7)
    with pytest.raises(RoomAlreadyExists):
        await stores.access.create_room("second", 7, True, None)
    assert await stores.access.room_privacy(7) is False
    created = await stores.access.create_room("eight", 8, True, None)
    assert created.id == 8
    after = await stores.chat.create_room("next")
    assert after.id not in (7, 8)


@pytest_twisted.ensureDeferred
async def test_rooms_overview_says_private_and_member_per_room(stores: Stores) -> None:
    """The overview lists every room with its privacy and the member's membership."""
    alice = await stores.chat.create_member("alice")
    public = await stores.chat.create_room("lobby")
    mine = await stores.access.create_room("mine", None, True, alice.id)
    other = await stores.access.create_room("other", None, True, None)
    assert await stores.access.rooms_overview(alice.id) == {
        public.id: (False, False),
        mine.id: (True, True),
        other.id: (True, False),
    }
    assert (await stores.access.rooms_overview(None))[mine.id] == (True, False)


@pytest_twisted.ensureDeferred
async def test_a_failed_creation_leaves_no_private_room_behind(stores: Stores) -> None:
    """A creator that does not exist fails the creation as a whole: no room without members."""
    before = await stores.chat.list_rooms()
    with pytest.raises(Exception):  # noqa: B017 - the driver's IntegrityError or ValueError
        await stores.access.create_room("orphan", None, True, 424242)
    assert await stores.chat.list_rooms() == before


@pytest_twisted.ensureDeferred
async def test_every_look_up_fails_within_the_timeout_when_postgres_is_silent(
    postgresql_database: TestDatabase, postgres_proxy: CuttableProxy
) -> None:
    """With PostgreSQL answering nothing (packets dropped), privacy, membership, room
    creation and the rooms overview each fail with DatabaseTimeout at the store's timeout
    instead of waiting forever; once it answers again, so does the store."""
    from twisted.internet import reactor

    pool = await routed_and_migrated(postgresql_database, postgres_proxy)
    access = AdbapiRoomAccessStore(pool, timeout=0.5, clock=reactor)
    room = await access.create_room("before", None, True, None)
    postgres_proxy.blackhole()
    await assert_times_out(lambda: access.room_privacy(room.id), 0.5)
    await assert_times_out(lambda: access.is_member(room.id, 1), 0.5)
    await assert_times_out(lambda: access.create_room("during", None, True, None), 0.5)
    await assert_times_out(lambda: access.rooms_overview(None), 0.5)
    postgres_proxy.restore()
    assert await access.room_privacy(room.id) is True
