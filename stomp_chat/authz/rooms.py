"""Who may read and speak in which room, with the answers cached in memory.

A public room is read by anyone signed in and joined by ``ENTER`` or REST; a
private room is read and written by its members only, and members add
members. Principals map to the chat's members by name: the member whose name
is the principal's user id (created on first use) is who the user is in
rooms and whose id is the ``senderId`` of what the user says.

Answers come from small expiring caches, filled on first use and updated by
every join and leave made through this class, so a SUBSCRIBE or a chat
message usually costs a dictionary look-up and never a query per delivery.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeAlias, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from stomp_chat.authz.cache import ExpiringCache
from stomp_chat.authz.store import RoomAccessStore
from stomp_chat.identity import Principal
from stomp_chat.persistence import ChatStore, MemberNameTaken, Room

T = TypeVar("T")

#: How many answers (user -> member, room -> private, room x member -> member?) stay cached.
DEFAULT_CACHE_SIZE = 100_000
#: How long a cached answer is trusted, in seconds: what bounds how long a join or
#: leave made on another server of a cluster goes unseen here.
DEFAULT_CACHE_TTL = 30.0


class AccessDenied(Exception):
    """The principal may not do this; ``code`` is what the client is told."""

    def __init__(self, message: str, code: str = "forbidden") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class NotAuthenticated(AccessDenied):
    """No principal where authentication is on."""

    def __init__(self, message: str = "authentication required") -> None:
        super().__init__(message, "unauthenticated")


#: A value known now, or a Deferred of it (a cache hit costs no Deferred).
MaybeDeferred: TypeAlias = "T | Deferred[T]"


def then(value: Any, callback: Callable[[Any], Any]) -> Any:
    """Apply ``callback`` now if ``value`` is known, else when its Deferred fires."""
    if isinstance(value, Deferred):
        return value.addCallback(callback)
    return callback(value)


class _Loader:
    """One cache plus the look-ups under way, so that concurrent misses share a query."""

    def __init__(self, cache: ExpiringCache[Any]) -> None:
        self.cache = cache
        self._loading: dict[Hashable, list[Deferred[Any]]] = {}

    def get(self, key: Hashable, load: Callable[[], Deferred[Any]]) -> Any:
        value = self.cache.get(key)
        if value is not None:
            return value
        waiting = self._loading.get(key)
        result: Deferred[Any] = Deferred()
        if waiting is not None:
            waiting.append(result)
            return result
        self._loading[key] = [result]
        load().addBoth(self._loaded, key)
        return result

    def _loaded(self, outcome: Any, key: Hashable) -> None:
        waiting = self._loading.pop(key)
        if not isinstance(outcome, Failure) and outcome is not None:
            self.cache.put(key, outcome)
        for result in waiting:
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)

    def put(self, key: Hashable, value: Any) -> None:
        self.cache.put(key, value)


class RoomAccess:
    """Room privacy, membership and the user -> member mapping, cached."""

    def __init__(
        self,
        chat_store: ChatStore,
        access_store: RoomAccessStore,
        clock: IReactorTime,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        cache_ttl: float = DEFAULT_CACHE_TTL,
    ) -> None:
        self.chat_store = chat_store
        self.access_store = access_store
        self.clock = clock
        self._members = _Loader(ExpiringCache(clock, cache_size, cache_ttl))
        self._privacy = _Loader(ExpiringCache(clock, cache_size, cache_ttl))
        self._membership = _Loader(ExpiringCache(clock, cache_size, cache_ttl))
        #: Called with (room id, member id) when a member leaves a private room.
        self.left_private_room: list[Callable[[int, int], object]] = []

    # -- look-ups (a value when cached, else a Deferred) ----------------------

    def member_id(self, principal: Principal) -> MaybeDeferred[int]:
        """The id of the principal's member, created on first use."""
        return self._members.get(principal.user_id, lambda: self._find_member(principal.user_id))

    def _find_member(self, name: str) -> Deferred[int]:
        store = self.chat_store

        def found(member: Any) -> Any:
            if member is not None:
                return member.id
            return store.create_member(name).addCallbacks(
                lambda created: created.id, taken
            )

        def taken(failure: Failure) -> Any:
            failure.trap(MemberNameTaken)  # created meanwhile by another connection
            return store.get_member_by_name(name).addCallback(_id_of)

        return store.get_member_by_name(name).addCallback(found)

    def cached_member_id(self, principal: Principal) -> int | None:
        """The principal's member id if it is cached (no look-up started)."""
        member_id: int | None = self._members.cache.get(principal.user_id)
        return member_id

    def cached_is_member(self, room_id: int, member_id: int) -> bool:
        """True only if membership is cached as true (no look-up started)."""
        return self._membership.cache.get((room_id, member_id)) is True

    def is_private(self, room_id: int) -> MaybeDeferred[bool]:
        """Whether a room is private; a missing room is created, public.

        Creating it here means no one can later create a private room under an
        id that somebody already subscribed to while it did not exist.
        """
        return self._privacy.get(room_id, lambda: self._load_privacy(room_id))

    def _load_privacy(self, room_id: int) -> Deferred[bool]:
        def found(private: bool | None) -> Any:
            if private is not None:
                return private
            return self.chat_store.ensure_room(room_id).addCallback(
                lambda _: self.access_store.room_privacy(room_id)
            ).addCallback(bool)

        return self.access_store.room_privacy(room_id).addCallback(found)

    def is_member(self, room_id: int, member_id: int) -> MaybeDeferred[bool]:
        return self._membership.get(
            (room_id, member_id), lambda: self.access_store.is_member(room_id, member_id)
        )

    # -- decisions ---------------------------------------------------------

    def may_read(self, principal: Principal, room_id: int) -> MaybeDeferred[bool]:
        """Subscribe to the room's topic, read its history and member list."""
        if principal.is_admin:
            return True

        def by_privacy(private: bool) -> Any:
            if not private:
                return True
            return then(self.member_id(principal), lambda member: self.is_member(room_id, member))

        return then(self.is_private(room_id), by_privacy)

    def may_manage(self, principal: Principal, room_id: int) -> MaybeDeferred[bool]:
        """Add other members to the room: its members, and admins."""
        if principal.is_admin:
            return True
        return then(self.member_id(principal), lambda member: self.is_member(room_id, member))

    # -- changes -------------------------------------------------------------

    def create_room(
        self, name: str, room_id: int | None, private: bool, creator: Principal | None
    ) -> Deferred[Room]:
        """Create a room; its creator, if any, is its first member."""

        def create(member_id: int | None) -> Deferred[Room]:
            d = self.access_store.create_room(name, room_id, private, member_id)

            def created(room: Room) -> Room:
                self._privacy.put(room.id, private)
                if member_id is not None:
                    self._membership.put((room.id, member_id), True)
                return room

            return d.addCallback(created)

        if creator is None:
            return create(None)
        return _deferred(self.member_id(creator)).addCallback(create)

    def join(self, room_id: int, member_id: int) -> Deferred[bool]:
        """Make a member join a room; True if it was not a member yet."""

        def joined(new: bool) -> bool:
            self._membership.put((room_id, member_id), True)
            return new

        return self.chat_store.join_room(room_id, member_id).addCallback(joined)

    def leave(self, room_id: int, member_id: int) -> Deferred[bool]:
        """Make a member leave a room; True if it was a member.

        Authorization is decided when a client subscribes, never per delivery:
        leaving a private room tells ``left_private_room`` (which ends the
        subscriptions already made, see ``SubscriptionRevoker``).
        """

        def left(was_member: bool) -> Any:
            self._membership.put((room_id, member_id), False)
            if not was_member or not self.left_private_room:
                return was_member
            return _deferred(self.is_private(room_id)).addCallback(tell, was_member)

        def tell(private: bool, was_member: bool) -> bool:
            if private:
                for listener in self.left_private_room:
                    listener(room_id, member_id)
            return was_member

        return self.chat_store.leave_room(room_id, member_id).addCallback(left)

    def rooms_overview(self, principal: Principal | None) -> Deferred[dict[int, tuple[bool, bool]]]:
        """Every room's id -> (private, whether the principal is a member)."""
        if principal is None:
            return self.access_store.rooms_overview(None)
        return _deferred(self.member_id(principal)).addCallback(
            self.access_store.rooms_overview
        )


def _id_of(member: Any) -> int:
    return int(member.id)


def _deferred(value: MaybeDeferred[T]) -> Deferred[T]:
    return value if isinstance(value, Deferred) else succeed(value)
