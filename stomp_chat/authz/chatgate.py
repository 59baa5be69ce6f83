"""The chat's door: who speaks is the principal, and only in rooms they are in.

Outside ``--auth none`` the chat asks this gate about every ``/app/message``
request before numbering it. The gate puts the speaker's own member id and
name on the request (a ``senderId`` naming anybody else is refused), and
lets a message into a room only from a member: an ``ENTER`` into a public
room joins it, anything else from a non-member is refused. Every refusal is
an application error with code ``forbidden``; the connection stays.

A session's requests leave the gate in the order they came in, even when
one of them waits for the database (the first message of a new member), so
an ``ENTER`` is always admitted before the ``TALK`` that follows it. A look-up the
database does not answer (within ``--db-timeout``) refuses the message ``unavailable``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from stomp_chat.app.chat import ChatRequest
from stomp_chat.app.routes import AppContext
from stomp_chat.authz.rooms import MaybeDeferred, RoomAccess, then
from stomp_chat.errors import ApplicationError
from stomp_chat.identity import Principal
from stomp_chat.persistence import database_unavailable

log = Logger()

FORBIDDEN = "forbidden"
UNAVAILABLE = "unavailable"
#: How many chat messages of one session may wait behind a database look-up.
DEFAULT_MAX_WAITING = 256

_ENTER = "ENTER"


class ChatGate:
    """Decides, per chat request, who is speaking and whether they may."""

    def __init__(self, rooms: RoomAccess, *, max_waiting: int = DEFAULT_MAX_WAITING) -> None:
        self.rooms = rooms
        self.max_waiting = max_waiting
        #: Sessions with a request waiting for the database: the requests queued behind it.
        self._waiting: dict[str, deque[tuple[ChatRequest, Principal | None, Deferred[Any]]]] = {}

    def admit(self, request: ChatRequest, context: AppContext) -> MaybeDeferred[ChatRequest]:
        """The request as the chat must handle it, or an ApplicationError."""
        principal = _principal_of(context)
        waiting = self._waiting.get(context.session_id)
        if waiting is not None:
            if len(waiting) >= self.max_waiting:
                raise ApplicationError(
                    "too many chat messages are waiting to be checked; slow down", code="busy"
                )
            queued: Deferred[ChatRequest] = Deferred()
            waiting.append((request, principal, queued))
            return queued
        if principal is not None:
            # The common case, from the caches alone: a known member speaking as itself.
            rooms = self.rooms
            member_id = rooms.cached_member_id(principal)
            if (
                member_id is not None
                and (request.sender_id == 0 or request.sender_id == member_id)
                and rooms.cached_is_member(request.room_id, member_id)
            ):
                return ChatRequest(
                    request.type, request.room_id, member_id, request.text, principal.name
                )
        result = self._check(request, principal)
        if not isinstance(result, Deferred):
            return result
        self._waiting[context.session_id] = deque()
        outer: Deferred[ChatRequest] = Deferred()
        result.addBoth(self._settled, outer, context.session_id)
        return outer

    def _settled(self, outcome: Any, outer: Deferred[Any], session_id: str) -> None:
        """Hand one waited-for answer on, then check what queued behind it, in order."""
        _fire(outer, outcome)
        waiting = self._waiting[session_id]
        while waiting:
            request, principal, queued = waiting.popleft()
            try:
                result = self._check(request, principal)
            except Exception:
                queued.errback(Failure())
                continue
            if isinstance(result, Deferred):
                result.addBoth(self._settled, queued, session_id)
                return
            queued.callback(result)
        del self._waiting[session_id]

    def _check(self, request: ChatRequest, principal: Principal | None) -> Any:
        if principal is None:
            raise ApplicationError("sign in to chat", code=FORBIDDEN)
        rooms = self.rooms

        def as_member(member_id: int) -> Any:
            if request.sender_id and request.sender_id != member_id:
                raise ApplicationError(
                    f"senderId must be your own ({member_id}) or left out", code=FORBIDDEN
                )
            admitted = ChatRequest(
                request.type, request.room_id, member_id, request.text, principal.name
            )
            return then(
                rooms.is_member(request.room_id, member_id),
                lambda member: admitted if member else self._not_member(admitted, member_id),
            )

        checked = then(rooms.member_id(principal), as_member)
        if isinstance(checked, Deferred):
            checked.addErrback(_unavailable, request.room_id)
        return checked

    def _not_member(self, request: ChatRequest, member_id: int) -> Any:
        room_id = request.room_id

        def by_privacy(private: bool) -> Any:
            if private:
                raise ApplicationError(f"room {room_id} is private", code=FORBIDDEN)
            if request.type != _ENTER:
                raise ApplicationError(
                    f"enter room {room_id} (type ENTER) before talking in it", code=FORBIDDEN
                )
            return self.rooms.join(room_id, member_id).addCallback(lambda _: request)

        return then(self.rooms.is_private(room_id), by_privacy)


def _unavailable(failure: Failure, room_id: int) -> Failure:
    """The database did not answer (in time): refused ``unavailable``, so the client may send
    again; the connection stays."""
    if not database_unavailable(failure.value):
        return failure
    log.warn("cannot check a chat message to room {room}: {error}", room=room_id,
             error=failure.getErrorMessage())
    raise ApplicationError(f"room {room_id} cannot be checked now; try again", code=UNAVAILABLE)


def _principal_of(context: AppContext) -> Principal | None:
    principal = context.principal
    return principal if isinstance(principal, Principal) else None


def _fire(deferred: Deferred[Any], outcome: Any) -> None:
    if isinstance(outcome, Failure):
        deferred.errback(outcome)
    else:
        deferred.callback(outcome)
