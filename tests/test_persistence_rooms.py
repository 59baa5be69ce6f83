"""Rooms (persistence/rooms.py): created by name or id, looked up, listed and ensured, with
generated and explicit ids never colliding; on SQLite, PostgreSQL and the in-memory twin."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults

from stomp_chat.persistence import ChatStore, RoomAlreadyExists

pytest_plugins = ["tests.conftest_db"]


@pytest_twisted.ensureDeferred
async def test_created_rooms_get_increasing_ids(store: ChatStore) -> None:
    """Rooms created without an id get distinct increasing ids and can be read back."""
    lobby = await store.create_room("lobby")
    games = await store.create_room("games")
    assert games.id > lobby.id
    assert await store.get_room(lobby.id) == lobby
    assert await store.list_rooms() == [lobby, games]
    assert lobby.created_at.tzinfo is not None


@pytest_twisted.ensureDeferred
async def test_unknown_room_is_none(store: ChatStore) -> None:
    """Looking up a room that does not exist gives None, not an error."""
    assert await store.get_room(404) is None


@pytest_twisted.ensureDeferred
async def test_explicit_room_id_is_not_reused_by_generated_ids(store: ChatStore) -> None:
    """After a room is created with an explicit id, generated ids never collide with it."""
    explicit = await store.create_room("seeded", room_id=5)
    assert explicit.id == 5
    generated = [await store.create_room(f"auto {n}") for n in range(3)]
    ids = [room.id for room in generated]
    assert 5 not in ids and len(set(ids)) == 3
    assert [room.id for room in await store.list_rooms()] == sorted([5, *ids])


@pytest_twisted.ensureDeferred
async def test_explicit_room_id_taken(store: ChatStore) -> None:
    """Creating a room with an id already in use fails with RoomAlreadyExists."""
    await store.create_room("first", room_id=3)
    with pytest.raises(RoomAlreadyExists):
        await store.create_room("second", room_id=3)
    room = await store.get_room(3)
    assert room is not None and room.name == "first"


@pytest_twisted.ensureDeferred
async def test_ensure_room_creates_once(store: ChatStore) -> None:
    """ensure_room creates a missing room and afterwards returns that same room."""
    created = await store.ensure_room(42)
    again = await store.ensure_room(42)
    assert created.id == 42
    assert again == created
    assert await store.list_rooms() == [created]


@pytest_twisted.ensureDeferred
async def test_concurrent_ensure_room_agrees(store: ChatStore) -> None:
    """Many concurrent ensure_room calls for one id all get the same single room."""
    rooms = await gatherResults([store.ensure_room(9) for _ in range(12)])
    assert len(set(rooms)) == 1
    assert len(await store.list_rooms()) == 1


@pytest_twisted.ensureDeferred
async def test_concurrent_generated_and_explicit_ids_never_collide(store: ChatStore) -> None:
    """Creating rooms with generated ids while others are created with explicit ids (the
    ids the generator would pick next) succeeds for all, each with a distinct id."""
    creations = []
    for n in range(1, 16):
        creations.append(store.create_room(f"auto {n}"))
        creations.append(store.ensure_room(n + 1))
    rooms = await gatherResults(creations)
    listed = await store.list_rooms()
    assert len({room.id for room in listed}) == len(listed)
    auto_ids = [room.id for room in rooms[0::2]]
    assert len(set(auto_ids)) == 15
    assert {room.id for room in listed} >= set(auto_ids) | set(range(2, 17))
