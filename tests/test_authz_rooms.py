"""RoomAccess: who may read a room and manage it, answered from an expiring cache."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from stomp_chat.authz.cache import ExpiringCache
from stomp_chat.authz.rooms import RoomAccess
from stomp_chat.authz.store import MemoryRoomAccessStore
from stomp_chat.identity import Principal
from stomp_chat.persistence import MemoryChatStore

ALICE = Principal("alice", "Alice")
BOB = Principal("bob", "Bob")
ADMIN = Principal("root", "Root", frozenset({"admin"}))


class CountingAccessStore(MemoryRoomAccessStore):
    """Counts the look-ups that reach storage; can hold them until release()."""

    def __init__(self, chat_store: MemoryChatStore) -> None:
        super().__init__(chat_store)
        self.queries = 0
        self.hold = False
        self._held: list[tuple[Deferred[Any], Deferred[Any]]] = []

    def _count(self, answer: Deferred[Any]) -> Deferred[Any]:
        self.queries += 1
        if not self.hold:
            return answer
        held: Deferred[Any] = Deferred()
        self._held.append((held, answer))
        return held

    def release(self) -> None:
        while self._held:
            held, answer = self._held.pop(0)
            answer.chainDeferred(held)

    def is_member(self, room_id: int, member_id: int) -> Deferred[bool]:
        return self._count(super().is_member(room_id, member_id))

    def room_privacy(self, room_id: int) -> Deferred[bool | None]:
        return self._count(super().room_privacy(room_id))


def value(result: Any) -> Any:
    """The value of a result that is known now, or of an already fired Deferred."""
    if isinstance(result, Deferred):
        box: list[Any] = []
        result.addBoth(box.append)
        assert box, "the Deferred has not fired"
        return box[0]
    return result


@pytest.fixture
def setup() -> tuple[RoomAccess, CountingAccessStore, MemoryChatStore, Clock]:
    clock = Clock()
    chat = MemoryChatStore()
    store = CountingAccessStore(chat)
    return RoomAccess(chat, store, clock, cache_size=100, cache_ttl=30.0), store, chat, clock


def test_a_principal_maps_to_one_member_created_on_first_use(setup: Any) -> None:
    """The member named after the user id is the principal's; it is created once."""
    rooms, _, chat, _ = setup
    first = value(rooms.member_id(ALICE))
    again = value(rooms.member_id(Principal("alice", "Another display name")))
    assert first == again
    assert value(chat.get_member_by_name("alice")).id == first
    assert value(rooms.member_id(BOB)) != first


def test_public_rooms_are_readable_private_rooms_by_members_and_admins(setup: Any) -> None:
    """Anyone reads a public room; a private one only its members and admins."""
    rooms, _, chat, _ = setup
    public = value(chat.create_room("lobby"))
    private = value(rooms.create_room("team", None, True, ALICE))
    assert value(rooms.may_read(BOB, public.id)) is True
    assert value(rooms.may_read(ALICE, private.id)) is True
    assert value(rooms.may_read(BOB, private.id)) is False
    assert value(rooms.may_read(ADMIN, private.id)) is True
    assert value(rooms.may_manage(ALICE, private.id)) is True
    assert value(rooms.may_manage(BOB, private.id)) is False
    assert value(rooms.may_manage(ADMIN, private.id)) is True


def test_answers_are_cached_and_updated_by_joins_and_leaves(setup: Any) -> None:
    """A repeated decision costs no storage query; join and leave change it at once."""
    rooms, store, _, _ = setup
    room = value(rooms.create_room("team", None, True, ALICE))
    bob = value(rooms.member_id(BOB))
    assert value(rooms.may_read(BOB, room.id)) is False
    queries = store.queries
    for _ in range(5):
        assert rooms.may_read(BOB, room.id) is False  # a plain bool: from the cache
    assert store.queries == queries
    value(rooms.join(room.id, bob))
    assert rooms.may_read(BOB, room.id) is True
    value(rooms.leave(room.id, bob))
    assert rooms.may_read(BOB, room.id) is False
    assert store.queries == queries


def test_cached_answers_expire(setup: Any) -> None:
    """After the cache lifetime a decision is looked up again (changes made elsewhere)."""
    rooms, store, chat, clock = setup
    room = value(rooms.create_room("team", None, True, ALICE))
    bob = value(rooms.member_id(BOB))
    assert value(rooms.may_read(BOB, room.id)) is False
    value(chat.join_room(room.id, bob))  # behind this RoomAccess's back (another server)
    assert rooms.may_read(BOB, room.id) is False
    clock.advance(31)
    assert value(rooms.may_read(BOB, room.id)) is True


def test_concurrent_misses_share_one_query(setup: Any) -> None:
    """Several decisions waiting for the same answer cause one storage query."""
    rooms, store, chat, _ = setup
    room = value(rooms.create_room("team", None, True, ALICE))
    rooms_fresh = RoomAccess(chat, store, Clock())
    value(rooms_fresh.member_id(BOB))
    store.hold = True
    before = store.queries
    pending = [rooms_fresh.may_read(BOB, room.id) for _ in range(3)]
    assert all(isinstance(p, Deferred) for p in pending)
    store.release()
    store.release()
    assert [value(p) for p in pending] == [False] * 3
    assert store.queries - before == 2  # one privacy, one membership query


def test_a_missing_room_is_created_public(setup: Any) -> None:
    """Reading a room that does not exist creates it, public, so no one can later create a
    private room under an id somebody already watches."""
    rooms, _, chat, _ = setup
    assert value(rooms.may_read(BOB, 77)) is True
    assert value(chat.get_room(77)) is not None
    failures: list[Any] = []
    rooms.create_room("late", 77, True, ALICE).addErrback(failures.append)
    assert failures and "already exists" in str(failures[0].value)


def test_the_cache_is_bounded() -> None:
    """The cache keeps at most max_entries values, forgetting the least recently used."""
    clock = Clock()
    cache: ExpiringCache[int] = ExpiringCache(clock, 2, 10.0)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    assert len(cache) == 2
    with pytest.raises(ValueError):
        ExpiringCache(clock, 0, 1.0)
