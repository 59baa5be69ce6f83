"""Read positions and unread counts, pushed to each user's sessions.

A client says how far it has read with ``SEND /app/read``
``{"roomId": 1, "seq": 42}``; the position is stored per user and room and
only moves forward. A user is online while one of their sessions subscribes
to ``/user/queue/unread``: it then receives ``{"roomId", "unread",
"lastReadSeq", "lastSeq"}`` for every room it has a position in, and again
for a room whenever its count changes: a message arrives, or another tab of
the same user reads. Changes are gathered over one reactor turn, so a burst
of messages costs one update per user and room, not one per message.

Sending every count costs one frame per room the user has a position in
(thousands, for some users), so it is rationed: a session that already
holds an unread subscription gets nothing more for another one (it has
every count and keeps receiving changes), and a user's full set goes out at
most once per ``FULL_PUSH_WINDOW``: a tab that comes online sooner after
another gets its counts in one trailing push at the window's end.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from stomp_chat.app.routes import AppContext, AppRouter
from stomp_chat.app.subscriptions import room_of_topic, user_of
from stomp_chat.broker import Broker, Message, Subscription
from stomp_chat.errors import ApplicationError
from stomp_chat.identity import Principal
from stomp_chat.persistence import ChatStore, database_unavailable
from stomp_chat.persistence.readpositions import ReadPositionStore
from stomp_chat.stomp.frame import Frame

log = Logger()

UNREAD_QUEUE = "/user/queue/unread"
READ_ROUTE = "/read"
_JSON_HEADERS = {"content-type": "application/json;charset=utf-8"}
#: Seconds between two sends of a user's every count: a new tab waits at most this long
#: for its counts, and SUBSCRIBEs repeated faster cost no more than one full set each time.
FULL_PUSH_WINDOW = 1.0


#: Whether a principal may read a room (``RoomAccess.may_read``).
MayRead = Callable[[Principal, int], "bool | Deferred[bool]"]


class ActiveRooms(Protocol):
    """The chat's view of its rooms (``ChatService``): the last seq of an active room."""

    store: ChatStore

    def active_room(self, room_id: int) -> Any: ...


@dataclass(slots=True)
class _Reader:
    """An online user: their sessions' unread subscriptions and their positions."""

    subscriptions: set[Subscription] = field(default_factory=set)
    #: Who the user signed in as: counts go only to rooms they may read now.
    principal: Principal | None = None
    #: room -> last read seq; None while loading from the store.
    positions: dict[int, int] | None = None
    #: room -> the unread count last pushed.
    pushed: dict[int, int] = field(default_factory=dict)


class ReadState:
    """Stores read positions and keeps online users' unread counts current."""

    def __init__(
        self,
        store: ReadPositionStore,
        chat: ActiveRooms,
        broker: Broker,
        clock: IReactorTime,
        *,
        may_read: MayRead | None = None,
    ) -> None:
        self.store = store
        self.chat = chat
        self.broker = broker
        self.clock = clock
        #: The room rules, when they are enforced: a read report names a room the user
        #: may read, or counts would tell them how busy a private room is.
        self.may_read = may_read
        self._online: dict[str, _Reader] = {}
        #: room -> keys of online users with a position in it.
        self._readers: dict[int, set[str]] = {}
        self._changed_rooms: set[int] = set()
        self._flush_call: IDelayedCall | None = None
        #: user key -> when their every count was last sent, oldest first (only the last
        #: ``FULL_PUSH_WINDOW`` seconds are kept).
        self._full_pushes: dict[str, float] = {}
        #: user key -> the trailing full push waiting for the window's end.
        self._trailing: dict[str, IDelayedCall] = {}

    def register(self, router: AppRouter) -> None:
        """Mount ``/app/read`` and watch the rooms' messages."""
        router.add(READ_ROUTE, self.handle_read)
        self.broker.published_listeners.append(self._published)

    # -- SEND /app/read ------------------------------------------------------

    def handle_read(
        self, frame: Frame, context: AppContext, variables: dict[str, str]
    ) -> Deferred[Any]:
        """Store a position (its RECEIPT waits for that), then push the new count."""
        room_id, seq = _parse_read(frame.body)
        user_key = context.user_key
        principal = context.principal
        if self.may_read is not None and principal is not None:
            allowed: Deferred[Any] = maybeDeferred(self.may_read, principal, room_id)

            def checked(ok: Any) -> Deferred[Any]:
                if not ok:
                    raise ApplicationError(f"you may not read room {room_id}", code="forbidden")
                return self._read(user_key, room_id, seq)

            read = allowed.addCallback(checked)
        else:
            read = self._read(user_key, room_id, seq)
        return read.addErrback(_unavailable, room_id)

    def _read(self, user_key: str, room_id: int, seq: int) -> Deferred[Any]:

        def store(last_seq: int | None) -> Deferred[int | None]:
            if last_seq is None:
                return succeed(None)
            return self.store.advance(user_key, room_id, min(seq, last_seq))

        def stored(position: int | None) -> None:
            if position is None:
                raise ApplicationError(f"room {room_id} does not exist", code="unknown-room")
            reader = self._online.get(user_key)
            if reader is None or reader.positions is None:
                return
            reader.positions[room_id] = max(reader.positions.get(room_id, 0), position)
            self._readers.setdefault(room_id, set()).add(user_key)
            self._push_count(user_key, reader, room_id)  # the read was just allowed

        return self._last_seq(room_id).addCallback(store).addCallback(stored)

    # -- SubscriptionListener --------------------------------------------------

    def subscribed(
        self, session: Any, subscription: Subscription, headers: Mapping[str, str]
    ) -> None:
        if subscription.destination != UNREAD_QUEUE:
            return
        key = user_of(session).key
        reader = self._online.get(key)
        if reader is None:
            reader = self._online[key] = _Reader(principal=session.principal)
            reader.subscriptions.add(subscription)
            self.store.positions(key).addCallbacks(
                self._positions_loaded, self._positions_failed, (key, reader),
                errbackArgs=(key,),
            )
            return
        holds_one = any(s.subscriber is subscription.subscriber for s in reader.subscriptions)
        reader.subscriptions.add(subscription)
        if reader.positions is not None and not holds_one:
            self._push_all(key, reader)  # the new tab needs every count

    def unsubscribed(self, session: Any, subscription: Subscription) -> None:
        if subscription.destination != UNREAD_QUEUE:
            return
        key = user_of(session).key
        reader = self._online.get(key)
        if reader is None:
            return
        reader.subscriptions.discard(subscription)
        if reader.subscriptions:
            return
        del self._online[key]
        for room_id in reader.positions or ():
            readers = self._readers.get(room_id)
            if readers is not None:
                readers.discard(key)
                if not readers:
                    del self._readers[room_id]

    def _positions_loaded(self, positions: dict[int, int], key: str, reader: _Reader) -> None:
        if self._online.get(key) is not reader:
            return  # gone offline meanwhile
        reader.positions = positions
        for room_id in positions:
            self._readers.setdefault(room_id, set()).add(key)
        self._push_all(key, reader)

    def _positions_failed(self, failure: Failure, key: str) -> None:
        log.warn("cannot load read positions of {user}: {error}", user=key,
                 error=failure.getErrorMessage())
        reader = self._online.get(key)
        if reader is not None and reader.positions is None:
            reader.positions = {}  # counts start with the next read report

    # -- pushing counts ----------------------------------------------------------

    def _published(self, destination: str, message: Message) -> None:
        if self._readers:  # every message passes here; usually nobody online has a position
            self._room_changed(destination)

    def relayed(self, key: str, origin: str, body: bytes) -> None:
        """A message from another server of the cluster: counts move here too."""
        self._room_changed(key)

    def _room_changed(self, destination: str) -> None:
        room_id = room_of_topic(destination)
        if room_id is None or room_id not in self._readers:
            return
        self._changed_rooms.add(room_id)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        rooms, self._changed_rooms = self._changed_rooms, set()
        for room_id in rooms:
            for key in list(self._readers.get(room_id, ())):
                reader = self._online.get(key)
                if reader is not None:
                    try:
                        self._push(key, reader, room_id)
                    except Exception:
                        # One reader's push failing must not cost the others theirs.
                        log.failure("pushing the unread count of room {room} to {user} "
                                    "failed", room=room_id, user=key)

    def _push_all(self, key: str, reader: _Reader) -> None:
        """Send every count now, or, within a window of the last full send, once at its end."""
        now = self.clock.seconds()
        pushes = self._full_pushes
        while pushes:  # forget what is older than the window: the oldest come first
            oldest = next(iter(pushes))
            if now - pushes[oldest] < FULL_PUSH_WINDOW:
                break
            del pushes[oldest]
        last = pushes.get(key)
        if last is not None:
            if key not in self._trailing:
                self._trailing[key] = self.clock.callLater(
                    FULL_PUSH_WINDOW - (now - last), self._trailing_push, key
                )
            return
        pushes[key] = now
        self._send_all(key, reader)

    def _trailing_push(self, key: str) -> None:
        del self._trailing[key]
        reader = self._online.get(key)
        if reader is not None and reader.positions is not None:
            self._push_all(key, reader)

    def _send_all(self, key: str, reader: _Reader) -> None:
        rooms = sorted(reader.positions or ())
        reader.pushed.clear()
        d = gatherResults([self._last_seq(room) for room in rooms], consumeErrors=True)

        def push(last_seqs: list[int | None]) -> None:
            if self._online.get(key) is not reader:
                return
            for room_id, last_seq in zip(rooms, last_seqs, strict=True):
                if last_seq is not None:
                    self._when_readable(key, reader, room_id, partial(
                        self._send, key, reader, room_id, last_seq))

        d.addCallbacks(push, lambda failure: log.warn(
            "cannot compute unread counts of {user}: {error}", user=key,
            error=failure.getErrorMessage()))

    def _when_readable(
        self, key: str, reader: _Reader, room_id: int, send: Callable[[], None]
    ) -> None:
        """Run ``send`` if the user may read the room now (a membership can end while its
        position stays) and the same reader is still online."""
        if self.may_read is None or reader.principal is None:
            send()
            return

        def decided(ok: Any) -> None:
            if ok and self._online.get(key) is reader:
                send()

        maybeDeferred(self.may_read, reader.principal, room_id).addCallback(decided).addErrback(
            lambda failure: log.warn("cannot check room {room} for unread counts: {error}",
                                     room=room_id, error=failure.getErrorMessage()))

    def _push(self, key: str, reader: _Reader, room_id: int) -> None:
        self._when_readable(key, reader, room_id, lambda: self._push_count(key, reader, room_id))

    def _push_count(self, key: str, reader: _Reader, room_id: int) -> None:
        state = self.chat.active_room(room_id)
        if state is not None:
            self._send(key, reader, room_id, state.last_seq, only_changes=True)
            return

        def send(last_seq: int | None) -> None:
            if last_seq is not None:
                self._send(key, reader, room_id, last_seq, only_changes=True)

        self._last_seq(room_id).addCallback(send).addErrback(
            lambda failure: log.warn("cannot count unread messages in room {room}: {error}",
                                     room=room_id, error=failure.getErrorMessage()))

    def _send(
        self, key: str, reader: _Reader, room_id: int, last_seq: int, only_changes: bool = False
    ) -> None:
        read = (reader.positions or {}).get(room_id, 0)
        unread = max(0, last_seq - read)
        if only_changes and reader.pushed.get(room_id) == unread:
            return
        reader.pushed[room_id] = unread
        body = {"roomId": room_id, "unread": unread, "lastReadSeq": read, "lastSeq": last_seq}
        self.broker.send_to_user(key, UNREAD_QUEUE, json.dumps(body).encode(), _JSON_HEADERS)

    def _last_seq(self, room_id: int) -> Deferred[int | None]:
        """A room's last seq (None if there is no such room): from memory when active."""
        state = self.chat.active_room(room_id)
        if state is not None:
            return succeed(state.last_seq)
        store = self.chat.store

        def known(room: Any) -> Any:
            return None if room is None else store.last_seq(room_id)

        result: Deferred[int | None] = store.get_room(room_id).addCallback(known)
        return result

    def unread(self, user_key: str) -> dict[int, int]:
        """The counts last pushed to an online user (for tests and diagnostics)."""
        reader = self._online.get(user_key)
        return dict(reader.pushed) if reader is not None else {}


def _unavailable(failure: Failure, room_id: int) -> Failure:
    """The database did not answer (in time): refused ``unavailable`` (send it again later),
    the connection stays."""
    if not database_unavailable(failure.value):
        return failure
    log.warn("cannot store a read position in room {room}: {error}", room=room_id,
             error=failure.getErrorMessage())
    raise ApplicationError(
        f"the read position in room {room_id} cannot be stored now; try again",
        code="unavailable",
    )


def _parse_read(body: bytes) -> tuple[int, int]:
    """``{"roomId": 1, "seq": 42}``; every problem is an ApplicationError."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ApplicationError("the body is not valid JSON", code="invalid-json") from None
    if not isinstance(data, dict):
        raise ApplicationError("the body must be a JSON object", code="invalid-read")
    room_id, seq = data.get("roomId"), data.get("seq")
    if isinstance(room_id, bool) or not isinstance(room_id, int) or not 0 < room_id < 2**63:
        raise ApplicationError("roomId must be a positive integer", code="invalid-read")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**63:
        raise ApplicationError("seq must be an integer >= 0", code="invalid-read")
    return room_id, seq
