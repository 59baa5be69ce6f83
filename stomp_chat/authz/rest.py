"""The REST API's room rules: the same as STOMP's, for HTTP requests.

Outside ``--auth none`` a request without a principal is refused (401); a
public room's details, members and history are open to anyone signed in, a
private room's to its members and admins (403 otherwise). Anyone may join a
public room; members add members to any room, admins to every room; a member
leaves by themself, and admins remove anybody. The room list shows public
rooms and the private rooms the caller is in (admins: all).

Which principal made a request is the authentication layer's to say: it is
passed in as ``principal_of``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.web.server import Request

from stomp_chat.authz.rooms import (
    AccessDenied,
    MaybeDeferred,
    NotAuthenticated,
    RoomAccess,
    then,
)
from stomp_chat.identity import Principal
from stomp_chat.persistence import Member, MemberNotFound, Room

PrincipalOf = Callable[[Request], Principal | None]


def no_principal(request: Request) -> Principal | None:
    """Nobody is signed in: what a server without REST authentication knows."""
    return None


class RoomRestPolicy:
    """Room decisions for ``ChatApi``; each method fails with AccessDenied or NotAuthenticated."""

    def __init__(
        self, rooms: RoomAccess, *, enforce: bool, principal_of: PrincipalOf = no_principal
    ) -> None:
        self.rooms = rooms
        self.enforce = enforce
        self.principal_of = principal_of

    def caller(self, request: Request) -> Principal | None:
        principal = self.principal_of(request)
        if principal is None and self.enforce:
            raise NotAuthenticated()
        return principal

    # -- rooms -------------------------------------------------------------

    def create_room(
        self, request: Request, name: str, room_id: int | None, private: bool
    ) -> Deferred[Room]:
        """A new room, with the caller (if signed in) as its first member."""
        return self.rooms.create_room(name, room_id, private, self.caller(request))

    def listing(self, request: Request) -> Deferred[list[tuple[int, bool]]]:
        """The (room id, private) of every room the caller may see, by id."""
        principal = self.caller(request)

        def visible(overview: dict[int, tuple[bool, bool]]) -> list[tuple[int, bool]]:
            shown = []
            for room_id in sorted(overview):
                private, member = overview[room_id]
                if (
                    not private
                    or not self.enforce
                    or member
                    or (principal is not None and principal.is_admin)
                ):
                    shown.append((room_id, private))
            return shown

        return self.rooms.rooms_overview(principal).addCallback(visible)

    def check_read(self, request: Request, room_id: int) -> Deferred[bool]:
        """The room's privacy, once the caller may read it (details, members, history)."""
        principal = self.caller(request)

        def decided(private: bool) -> Any:
            if principal is None or not self.enforce:
                return private
            return then(self.rooms.may_read(principal, room_id), lambda ok: _allowed(ok, private))

        return _deferred(then(self.rooms.is_private(room_id), decided))

    # -- membership ----------------------------------------------------------

    def join(
        self, request: Request, room_id: int, member_id: int | None, user_id: str | None
    ) -> Deferred[tuple[Member, bool]]:
        """Add a member (the caller when none is named); the member and whether it is new."""
        principal = self.caller(request)
        rooms = self.rooms
        store = rooms.chat_store

        def member_named() -> Deferred[Member]:
            if user_id is not None:
                target = Principal(user_id=user_id, name=user_id)
                return _deferred(rooms.member_id(target)).addCallback(_existing, store)
            if member_id is None:
                if principal is None:
                    raise AccessDenied("name the member to add (memberId)", "invalid-id")
                return _deferred(rooms.member_id(principal)).addCallback(_existing, store)
            if self.enforce:
                return store.get_member(member_id).addCallback(_found, member_id)
            return store.ensure_member(member_id)

        def authorize(member: Member) -> Any:
            if principal is None or not self.enforce:
                return member
            return then(rooms.member_id(principal), lambda own: by_whom(member, own))

        def by_whom(member: Member, own: int) -> Any:
            assert principal is not None
            if member.id == own:
                # Joining oneself: open in a public room, a no-op for a member.
                return then(
                    rooms.is_private(room_id),
                    lambda private: member if not private else then(
                        rooms.may_manage(principal, room_id),
                        lambda ok: _allowed(ok, member),
                    ),
                )
            return then(rooms.may_manage(principal, room_id), lambda ok: _allowed(ok, member))

        def add(member: Member) -> Deferred[tuple[Member, bool]]:
            return rooms.join(room_id, member.id).addCallback(lambda new: (member, new))

        d = member_named().addCallback(authorize)
        return d.addCallback(add)

    def leave(self, request: Request, room_id: int, member_id: int) -> Deferred[bool]:
        """Remove a member: the caller itself, or anyone by an admin."""
        principal = self.caller(request)
        rooms = self.rooms
        if principal is None or not self.enforce or principal.is_admin:
            return rooms.leave(room_id, member_id)

        def by_whom(own: int) -> Deferred[bool]:
            if own != member_id:
                raise AccessDenied("only admins remove other members")
            return rooms.leave(room_id, member_id)

        return _deferred(rooms.member_id(principal)).addCallback(by_whom)


def _allowed(ok: bool, value: Any) -> Any:
    if not ok:
        raise AccessDenied("you may not do this in this room")
    return value


def _existing(member_id: int, store: Any) -> Deferred[Member]:
    return store.get_member(member_id).addCallback(_found, member_id)


def _found(member: Member | None, member_id: int) -> Member:
    if member is None:
        raise MemberNotFound(member_id)
    return member


def _deferred(value: MaybeDeferred[Any]) -> Deferred[Any]:
    return value if isinstance(value, Deferred) else succeed(value)
