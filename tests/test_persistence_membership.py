"""Room membership (persistence/membership.py): joining, listing and leaving; on SQLite,
PostgreSQL and the in-memory twin."""

from __future__ import annotations

import pytest
import pytest_twisted

from stomp_chat.persistence import ChatStore, MemberNotFound, RoomNotFound

pytest_plugins = ["tests.conftest_db"]


@pytest_twisted.ensureDeferred
async def test_join_list_and_leave(store: ChatStore) -> None:
    """Joining is idempotent, members are listed in joining order, and leaving removes."""
    room = await store.create_room("lobby")
    alice = await store.create_member("alice")
    bob = await store.create_member("bob")
    assert await store.join_room(room.id, bob.id) is True
    assert await store.join_room(room.id, alice.id) is True
    assert await store.join_room(room.id, bob.id) is False
    assert await store.list_members(room.id) == [bob, alice]
    assert await store.leave_room(room.id, bob.id) is True
    assert await store.leave_room(room.id, bob.id) is False
    assert await store.list_members(room.id) == [alice]


@pytest_twisted.ensureDeferred
async def test_joining_needs_a_real_room_and_member(store: ChatStore) -> None:
    """Joining an unknown room or as an unknown member fails with a typed error."""
    room = await store.create_room("lobby")
    alice = await store.create_member("alice")
    with pytest.raises(RoomNotFound):
        await store.join_room(room.id + 50, alice.id)
    with pytest.raises(MemberNotFound):
        await store.join_room(room.id, alice.id + 50)
    assert await store.list_members(room.id) == []
