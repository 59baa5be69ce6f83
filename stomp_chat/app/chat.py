"""The chat controller: ``SEND /app/message``, rooms, sequence numbers, history.

The seed's ``MessageController`` + ``MessageService``, done so that no
accepted message is lost: every message gets its room's next ``seq``, is
broadcast at once on ``/topic/chat/room/{roomId}``, and is written behind in
batches; a client that asked for a receipt gets it only once its message is
stored under its own seq. The last messages of every active room stay in
memory, so opening a room costs no database round trip.

Seqs have no gaps while the server runs. A seq is handed out only below a
high-water mark already written to the database, so a server killed
mid-stream restarts past every seq it may have broadcast: the messages lost
in the crash leave a gap, and no seq is ever reused.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from typing import Any, Protocol

from twisted.internet.defer import Deferred, TimeoutError, fail, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from stomp_chat.app.rooms import (
    DEFAULT_MAX_ACTIVE_ROOMS,
    DEFAULT_ROOM_IDLE_SECONDS,
    MIN_SEQ_BLOCK,
    ActiveRooms,
    RoomState,
)
from stomp_chat.app.rooms import (
    ROOM_TOPIC as ROOM_TOPIC,  # re-exported: other modules name rooms' topics from here
)
from stomp_chat.app.routes import AppContext, ApplicationError, AppRouter
from stomp_chat.broker import Broker
from stomp_chat.outage import OutageLog
from stomp_chat.persistence import (
    BufferFull,
    ChatMessage,
    ChatStore,
    MessagesRejected,
    SeqCollision,
    WriteBehindWriter,
    utc_isoformat,
)
from stomp_chat.stomp.frame import Frame

log = Logger()

DEFAULT_ENTER_TEMPLATE = "{senderId}님이 입장하였습니다."
DEFAULT_HISTORY_SIZE = 30
MAX_TEXT_LENGTH = 10_000
ROOM_TOPIC_PREFIX = "/topic/chat/room/"
_JSON_HEADERS = {"content-type": "application/json;charset=utf-8"}
#: How long deleting a message waits for the write-behind to store it first, in seconds.
DELETE_FLUSH_TIMEOUT = 10.0
#: The longest wait between two attempts to write a room's seq reservation, in seconds.
RESERVATION_RETRY_MAX = 5.0
_EPOCH = datetime.fromtimestamp(0, UTC)
_json_string = json.encoder.encode_basestring  # type: ignore[attr-defined]


#: Stands for ``seq`` in a message template; JSON escapes every control
#: character, so a NUL cannot occur in the encoded text itself.
SEQ_PLACEHOLDER = b"\x00"


def encode_template(
    room_id: int,
    kind: str,
    sender_id: int,
    text: str,
    created_iso: str,
    sender_name: str | None = None,
) -> bytes:
    """The broadcast JSON of a message, with ``seq`` still to be filled in.

    The same bytes as ``json.dumps(message.to_json_dict())``, written out by
    hand because it runs once per chat message on the hot path. In cluster
    mode the chat hands Redis the template and SEQ_PLACEHOLDER to fill in.
    """
    name = "" if sender_name is None else f'"senderName": {_json_string(sender_name)}, '
    return (
        f'{{"type": {_json_string(kind)}, "roomId": {room_id}, '
        f'"detailMessage": {_json_string(text)}, "senderId": {sender_id}, {name}'
        f'"messageId": "{room_id}-\x00", "seq": \x00, "createdAt": "{created_iso}"}}'
    ).encode()


def fill_seq(template: bytes, seq: int) -> bytes:
    return template.replace(SEQ_PLACEHOLDER, str(seq).encode())


def encode_message(message: ChatMessage, created_iso: str) -> bytes:
    """The broadcast JSON, the same as ``json.dumps(message.to_json_dict())``."""
    template = encode_template(
        message.room_id, message.type, message.sender_id, message.text, created_iso,
        message.sender_name,
    )
    return fill_seq(template, message.seq)


class RoomSequencer(Protocol):
    """Numbers and broadcasts chat messages for several server processes."""

    node_id: str

    def sequence_and_publish(
        self,
        room_id: int,
        key: str,
        headers: dict[str, str],
        template: bytes,
        placeholder: bytes,
        floor: int,
        durable_floor: Callable[[int], Deferred[int]] | None = None,
    ) -> Deferred[int]:
        """Number and broadcast, the seq written where `template` holds `placeholder`;
        `floor` is the highest seq this server has seen, and `durable_floor` reads the
        database's, for a counter that Redis lost."""
        ...

    def follows(self, room_id: int) -> bool:
        """Whether every message of the room reaches this server now, so that its cache
        can answer for the room."""
        ...

    def recent(self, room_id: int) -> Deferred[list[bytes]]:
        """The room's last messages as broadcast (JSON bodies), from the cluster."""
        ...

    def forget(self, room_id: int, seq: int) -> Deferred[None]:
        """Drop a deleted message from the cluster's recent messages of its room."""
        ...


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated ``/app/message`` body."""

    type: str
    room_id: int
    #: 0 when the body named nobody (allowed only where a ChatGate fills it in).
    sender_id: int
    text: str
    #: Set by a ChatGate: the authenticated speaker's name.
    sender_name: str | None = None


class RequestGate(Protocol):
    """Checks each request before it is numbered: who speaks, and may they.

    Returns the request to handle (e.g. with the speaker filled in), or a
    Deferred of it, or raises ApplicationError; requests of one session come
    out in the order they went in.
    """

    def admit(self, request: ChatRequest, context: AppContext) -> Any: ...


#: How a message type turns a request into the stored text. Adding a type
#: (LEAVE, an edit) is one entry here.
TextRule = Callable[[ChatRequest, "ChatService"], str]


def _enter_text(request: ChatRequest, service: ChatService) -> str:
    return service.enter_template.format(senderId=request.sender_id, roomId=request.room_id)


def _talk_text(request: ChatRequest, service: ChatService) -> str:
    if not request.text:
        raise ApplicationError("detailMessage must not be empty", code="invalid-message")
    return request.text


MESSAGE_TYPES: dict[str, TextRule] = {"ENTER": _enter_text, "TALK": _talk_text}

#: A message from the server's administrators (``post_system``): numbered, stored and
#: broadcast like any other, with ``senderId`` 0. Clients cannot send this type.
SYSTEM_TYPE = "SYSTEM"
#: The event on a room's topic saying a message was removed (``delete_message``).
DELETE_EVENT = "DELETE"


def parse_chat_request(
    body: bytes, types: dict[str, TextRule] = MESSAGE_TYPES, *, sender_required: bool = True
) -> ChatRequest:
    """Validate a chat message body; every problem is an ApplicationError."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ApplicationError("the body is not valid JSON", code="invalid-json") from None
    if not isinstance(data, dict):
        raise ApplicationError("the body must be a JSON object", code="invalid-message")
    kind = data.get("type")
    if kind not in types:
        raise ApplicationError(
            f"type must be one of {', '.join(sorted(types))}", code="invalid-message"
        )
    room_id = _integer(data, "roomId")
    if sender_required or data.get("senderId") is not None:
        sender_id = _integer(data, "senderId")
    else:
        sender_id = 0
    text = data.get("detailMessage", "")
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise ApplicationError("detailMessage must be a string", code="invalid-message")
    if len(text) > MAX_TEXT_LENGTH:
        raise ApplicationError(
            f"detailMessage is longer than {MAX_TEXT_LENGTH} characters", code="invalid-message"
        )
    if not text.isascii() or "\x00" in text:  # the common case skips the call
        check_storable_text(text, "detailMessage")
    return ChatRequest(kind, room_id, sender_id, text)


def check_storable_text(text: str, name: str) -> None:
    """Refuse text that some database cannot store, before anything is numbered.

    JSON can carry a lone UTF-16 surrogate (``"\\ud800"``), which has no UTF-8
    form, and NUL, which PostgreSQL text cannot hold: either would be broadcast
    under a seq and then never stored.
    """
    if "\x00" in text:
        raise ApplicationError(f"{name} must not contain NUL characters", code="bad-request")
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApplicationError(
            f"{name} must be valid Unicode text (it holds a lone surrogate)", code="bad-request"
        ) from None


def _integer(data: dict[str, Any], name: str) -> int:
    """Ids arrive as JSON numbers or, from some clients, as digit strings."""
    value = data.get(name)
    if isinstance(value, bool):
        value = None
    if isinstance(value, str) and value.isdigit() and value.isascii() and len(value) <= 19:
        value = int(value)
    if not isinstance(value, int) or value <= 0 or value > 2**63 - 1:
        raise ApplicationError(f"{name} must be a positive integer", code="invalid-message")
    return value


#: Requests waiting for their room: (request, durable, the Deferred to fire).
_Waiting = tuple[ChatRequest, bool, "Deferred[Any]"]


class ChatService:
    """Accepts, numbers, broadcasts and stores chat messages."""

    def __init__(
        self,
        store: ChatStore,
        writer: WriteBehindWriter,
        broker: Broker,
        clock: IReactorTime,
        *,
        auto_create_rooms: bool = True,
        enter_template: str = DEFAULT_ENTER_TEMPLATE,
        history_size: int = DEFAULT_HISTORY_SIZE,
        types: dict[str, TextRule] | None = None,
        sequencer: RoomSequencer | None = None,
        outage: OutageLog | None = None,
        gate: RequestGate | None = None,
        room_idle_seconds: float = DEFAULT_ROOM_IDLE_SECONDS,
        max_active_rooms: int = DEFAULT_MAX_ACTIVE_ROOMS,
    ) -> None:
        self.store = store
        #: With one, rooms that cannot be loaded (the database is down) are
        #: logged once per outage rather than once per room.
        self.outage = outage
        self.writer = writer
        self.broker = broker
        self.clock = clock
        self.auto_create_rooms = auto_create_rooms
        self.enter_template = enter_template
        self.history_size = history_size
        self.types = dict(MESSAGE_TYPES if types is None else types)
        self.sequencer = sequencer
        #: Outside ``--auth none``: who speaks is the principal (see stomp_chat.authz).
        self.gate = gate
        #: Cluster mode: messages sent to Redis for a seq, not yet buffered.
        self._sequencing = 0
        self._rooms = ActiveRooms(
            room_idle_seconds,
            max_active_rooms,
            evictable=self._evictable,
            on_evict=self._evicted,
        )
        self._last_timestamp: tuple[int, datetime, str] = (-1, _EPOCH, "")
        #: Requests for rooms being loaded or out of reserved seqs, kept in arrival order.
        self._waiting: dict[int, deque[_Waiting]] = {}
        #: Rooms being loaded.
        self._loading: set[int] = set()
        #: Cluster mode: other servers' messages for rooms being loaded.
        self._relayed_early: dict[int, list[ChatMessage]] = {}
        self.writer.collision_listeners.append(self._collided)

    def register(self, router: AppRouter) -> None:
        """Mount the seed-compatible ``/app/message`` handler."""
        router.add("/message", self.handle_message)

    # -- the STOMP side ------------------------------------------------

    def handle_message(
        self, frame: Frame, context: AppContext, variables: dict[str, str]
    ) -> Deferred[Any] | None:
        """``SEND /app/message``: None when done, a Deferred when a receipt must wait."""
        request = parse_chat_request(frame.body, self.types, sender_required=self.gate is None)
        durable = "receipt" in frame.headers
        if self.gate is not None:
            admitted = self.gate.admit(request, context)
            if isinstance(admitted, Deferred):
                return admitted.addCallback(self._handle_admitted, durable)
            request = admitted
        return self._handle_admitted(request, durable)

    def _handle_admitted(self, request: ChatRequest, durable: bool) -> Deferred[Any] | None:
        state = self._rooms.use(request.room_id, self.clock.seconds())
        if state is not None and (
            (state.last_seq < state.reserved_through or self.sequencer is not None)
            and not (self._waiting and state.room_id in self._waiting)
        ):
            return self._accept(state, request, durable)[1]
        return self._wait_for_room(request, durable)

    def post(self, request: ChatRequest, durable: bool = False) -> Deferred[ChatMessage]:
        """Accept a message from any caller (REST, tests); fires once it is broadcast, or
        once it is stored too if ``durable``."""
        state = self._rooms.use(request.room_id, self.clock.seconds())
        try:
            if state is None or not self._ready(state):
                return self._wait_for_room(request, durable=durable)
            message, pending = self._accept(state, request, durable=durable)
        except ApplicationError:
            return fail()
        if message is None:
            return pending  # type: ignore[return-value]
        if pending is None:
            return succeed(message)
        return pending.addCallback(_replace_result, message)

    def post_system(self, room_id: int, text: str) -> Deferred[ChatMessage]:
        """A ``SYSTEM`` message to a room, from the administrators; fires once stored."""
        check_storable_text(text, "text")
        return self.post(ChatRequest(SYSTEM_TYPE, room_id, 0, text), durable=True)

    def delete_message(self, room_id: int, seq: int) -> Deferred[ChatMessage | None]:
        """Remove a message from the database and the room's cache, and tell the room's
        subscribers with a ``DELETE`` event; fires with the message removed (None if there
        was none). A message still waiting for the write-behind is written first, so the
        delete cannot run ahead of its insert."""
        unsaved = self.writer.unsaved_messages(room_id)
        waited: Deferred[Any] = succeed(None)
        if any(m.seq == seq for m in unsaved):
            waited = self.writer.flush()
            waited.addTimeout(DELETE_FLUSH_TIMEOUT, self.clock)
            waited.addErrback(_not_written_yet, room_id, seq)
        state = self._rooms.peek(room_id)
        cached = next((m for m in state.recent if m.seq == seq), None) if state else None

        def delete(_: object) -> Deferred[bool]:
            return self.store.delete_message(room_id, seq)

        def deleted(found: bool) -> ChatMessage | None:
            self._forget_message(room_id, seq)
            if self.sequencer is not None:
                self.sequencer.forget(room_id, seq).addErrback(_not_forgotten, room_id, seq)
            if not found:
                return None
            topic = ROOM_TOPIC.format(room_id=room_id)
            event = {"type": DELETE_EVENT, "roomId": room_id, "messageId": f"{room_id}-{seq}",
                     "deletedSeq": seq}
            self.broker.publish(topic, json.dumps(event).encode(), _JSON_HEADERS)
            return cached or ChatMessage(room_id, seq, f"{room_id}-{seq}", "", 0, "", _EPOCH)

        return waited.addCallback(delete).addCallback(deleted)

    def _forget_message(self, room_id: int, seq: int) -> None:
        state = self._rooms.peek(room_id)
        if state is not None:
            for message in list(state.recent):
                if message.seq == seq:
                    state.recent.remove(message)

    def _ready(self, state: RoomState) -> bool:
        """Whether a message to this room can be numbered now, behind nothing."""
        if self._waiting and state.room_id in self._waiting:
            return False
        return state.last_seq < state.reserved_through or self.sequencer is not None

    def _accept(
        self, state: RoomState, request: ChatRequest, durable: bool
    ) -> tuple[ChatMessage | None, Deferred[Any] | None]:
        """Number, buffer for storage, cache and broadcast one message.

        Returns the message, when it is already numbered, and a Deferred
        when the caller must wait: for the commit of a durable message, or
        in cluster mode for Redis to number it.
        """
        kind = request.type
        text = request.text if kind == SYSTEM_TYPE else self.types[kind](request, self)
        created_at, created_iso = self._timestamp()
        template = encode_template(
            state.room_id, request.type, request.sender_id, text, created_iso,
            request.sender_name,
        )
        if self.sequencer is not None:
            return None, self._accept_clustered(state, request, text, created_at, template,
                                                durable)
        seq = state.last_seq + 1
        message = ChatMessage(
            state.room_id, seq, f"{state.room_id}-{seq}", request.type, request.sender_id,
            text, created_at, request.sender_name,
        )
        stored = self._store(message, durable)
        state.remember(message)
        self.broker.publish(state.topic, fill_seq(template, seq), _JSON_HEADERS)
        if state.reserved_through - seq <= state.block >> 1 and not state.reserving:
            self._reserve(state)  # ahead of need: the next block is written in the background
        return message, stored

    def _store(self, message: ChatMessage, durable: bool) -> Deferred[None] | None:
        try:
            if durable:
                return self.writer.append_durable(message).addErrback(_not_stored, message)
            self.writer.append(message)
            return None
        except BufferFull as error:
            raise ApplicationError(str(error), code="busy") from None

    def _accept_clustered(
        self,
        state: RoomState,
        request: ChatRequest,
        text: str,
        created_at: datetime,
        template: bytes,
        durable: bool,
    ) -> Deferred[Any]:
        """Have Redis number and broadcast the message, then store it here."""
        assert self.sequencer is not None
        if not self.writer.has_room_for(self._sequencing + 1):
            raise ApplicationError(
                "too many chat messages are waiting to be saved; try again later", code="busy"
            )
        self._sequencing += 1
        room_id = state.room_id

        def sequenced(seq: int) -> Any:
            self._sequencing -= 1
            message = ChatMessage(room_id, seq, f"{room_id}-{seq}", request.type,
                                  request.sender_id, text, created_at, request.sender_name)
            stored = self._store(message, durable)  # room was reserved: cannot be full
            self._seen_clustered(state, message)
            if stored is None:
                return message
            return stored.addCallback(_replace_result, message)

        def unavailable(failure: Failure) -> Failure:
            self._sequencing -= 1
            log.warn("chat message for room {room} not sent: {error}", room=room_id,
                     error=failure.getErrorMessage())
            return Failure(ApplicationError(
                "the message could not be sent: the cluster is unavailable", code="unavailable"
            ))

        d = self.sequencer.sequence_and_publish(
            room_id, state.topic, _JSON_HEADERS, template, SEQ_PLACEHOLDER, state.last_seq,
            durable_floor=self._durable_floor,
        )
        return d.addCallbacks(sequenced, unavailable)

    def _durable_floor(self, room_id: int) -> Deferred[int]:
        """Cluster mode: the highest seq the database holds or reserves for a room, for a
        Redis counter that was lost."""
        return self.store.seq_floor(room_id)

    def _seen_clustered(self, state: RoomState, message: ChatMessage) -> None:
        """Cluster mode: cache a numbered message and keep the durable reservation ahead of
        the highest seq seen, so a lost Redis counter restarts past it."""
        state.remember(message)
        if state.wants_reservation():
            self._reserve(state)

    def _collided(self, message: ChatMessage) -> None:
        """The store found another message under this one's seq: drop it from the cache."""
        state = self._rooms.peek(message.room_id)
        if state is not None and message in state.recent:
            state.recent.remove(message)

    def relayed(self, key: str, origin: str, body: bytes) -> None:
        """A chat message another server numbered: keep it in this server's cache."""
        if self.sequencer is None or origin == self.sequencer.node_id:
            return
        if not key.startswith(ROOM_TOPIC_PREFIX):
            return
        suffix = key[len(ROOM_TOPIC_PREFIX) :]
        if not (suffix.isdigit() and suffix.isascii() and len(suffix) < 20):
            return
        room_id = int(suffix)
        try:
            data = json.loads(body)
            if isinstance(data, dict) and data.get("type") == DELETE_EVENT:
                self._forget_message(room_id, int(data["deletedSeq"]))
                return
            message = message_of(data)
        except (ValueError, KeyError, TypeError):
            log.warn("ignoring an unreadable relayed chat message on {key}", key=key)
            return
        state = self._rooms.use(room_id, self.clock.seconds())
        if state is not None:
            self._seen_clustered(state, message)
            return
        # A room active elsewhere becomes active here too, so that this
        # server's cache and history see every message from now on.
        self._relayed_early.setdefault(room_id, []).append(message)
        self._start_loading(room_id)

    # -- rooms ---------------------------------------------------------

    def _wait_for_room(self, request: ChatRequest, durable: bool) -> Deferred[Any]:
        """Queue a request until its room is loaded or has seqs reserved, keeping arrival
        order; the queue counts against the writer's buffer, so it stays bounded and pushes
        back on publishers as the buffer does."""
        if not self.writer.has_room_for(self._sequencing + 1):
            raise ApplicationError(
                "too many chat messages are waiting to be saved; try again later", code="busy"
            )
        result: Deferred[Any] = Deferred()
        room_id = request.room_id
        self._waiting.setdefault(room_id, deque()).append((request, durable, result))
        self.writer.expect(1)
        state = self._rooms.peek(room_id)
        if state is None:
            self._start_loading(room_id)
        elif not state.reserving:
            self._reserve(state)
        return result

    def _start_loading(self, room_id: int) -> None:
        if room_id in self._loading:
            return
        self._loading.add(room_id)
        self._load(room_id).addBoth(self._loaded, room_id)

    def _load(self, room_id: int) -> Deferred[RoomState | None]:
        store = self.store
        d = store.ensure_room(room_id) if self.auto_create_rooms else store.get_room(room_id)
        numbering: list[tuple[int, int]] = []

        def found(room: Any) -> Any:
            if room is None:
                return None
            if self.sequencer is not None:
                # Redis numbers, from the highest seq stored; the durable mark is kept
                # ahead of the seqs seen, for a counter Redis loses.
                return store.last_seq(room_id).addCallback(
                    lambda stored: store.seq_floor(room_id).addCallback(
                        lambda floor: numbering.append((stored, floor))
                    )
                ).addCallback(recent_of)
            # Alone, this server starts past every seq a previous run may have handed out.
            return store.reserve_seqs(room_id, MIN_SEQ_BLOCK).addCallback(
                lambda reserved: numbering.append(
                    (max(reserved[0], reserved[1]), reserved[2])
                )
            ).addCallback(recent_of)

        def recent_of(_: object) -> Deferred[RoomState]:
            return store.load_messages(room_id, self.history_size).addCallback(build)

        def build(stored: list[ChatMessage]) -> RoomState:
            last_seq, reserved_through = numbering[0]
            state = RoomState(room_id, last_seq, list(stored), self.history_size,
                              reserved_through)
            for message in self.writer.unsaved_messages(room_id):
                state.remember(message)  # still buffered from before an eviction
            return state

        return d.addCallback(found)

    def _loaded(self, outcome: RoomState | None | Failure, room_id: int) -> None:
        """Serve the requests that waited for a room; each fails or succeeds on its own."""
        self._loading.discard(room_id)
        relayed = self._relayed_early.pop(room_id, [])
        if self.outage is not None and not isinstance(outcome, Failure):
            self.outage.succeeded()
        if isinstance(outcome, RoomState):
            self._rooms.add(outcome, self.clock.seconds())
            for early in relayed:
                outcome.remember(early)
            self._drain(outcome)
            return
        if isinstance(outcome, Failure):
            if self.outage is not None:  # one line per outage, not one per room
                self.outage.failed(outcome, f"loading room {room_id}")
            else:
                log.failure("cannot load chat room {room}", outcome, room=room_id)
            error = ApplicationError(
                f"room {room_id} cannot be opened now; try again", code="unavailable"
            )
        else:
            error = ApplicationError(f"room {room_id} does not exist", code="unknown-room")
        self._fail_waiting(room_id, error)

    def _fail_waiting(self, room_id: int, error: ApplicationError) -> None:
        waiting = self._waiting.pop(room_id, deque())
        self.writer.expect(-len(waiting))
        for _, _, result in waiting:
            result.errback(Failure(error))

    def _drain(self, state: RoomState) -> None:
        """Accept a room's waiting requests, in order, while it has seqs to hand out."""
        room_id = state.room_id
        waiting = self._waiting.get(room_id)
        while waiting and (self.sequencer is not None or state.has_seq):
            request, durable, result = waiting.popleft()
            try:
                message, stored = self._accept(state, request, durable)
            except ApplicationError as error:
                result.errback(Failure(error))
                continue
            except Exception:
                log.failure("cannot accept a chat message for room {room}", room=room_id)
                result.errback(Failure(ApplicationError("internal error", code="internal")))
                continue
            finally:
                self.writer.expect(-1)
            if stored is None:
                result.callback(message)
            elif message is not None:
                stored.addCallback(_replace_result, message).chainDeferred(result)
            else:
                stored.chainDeferred(result)
        if not waiting:
            self._waiting.pop(room_id, None)
        elif not state.reserving:
            self._reserve(state)

    def _reserve(self, state: RoomState) -> None:
        """Write the room's next seq reservation; waiting requests go on once it is durable."""
        state.reserving = True
        through = state.next_reservation(self.clock.seconds())
        d = self.store.extend_seq_reservation(state.room_id, through)
        d.addBoth(self._reserved, state)

    def _reserved(self, outcome: int | Failure, state: RoomState) -> None:
        if isinstance(outcome, Failure):
            # Messages beyond the reservation wait (bounded by the writer's buffer, then
            # refused as busy) until the database takes the reservation: retry with backoff.
            state.reservation_failures += 1
            delay = min(RESERVATION_RETRY_MAX, 0.1 * 2 ** min(state.reservation_failures, 16))
            if state.reservation_failures == 1:
                log.warn("cannot reserve seqs for chat room {room}: {error}; retrying",
                         room=state.room_id, error=outcome.getErrorMessage())
            self.clock.callLater(delay, self._retry_reservation, state)
            return
        state.reserving = False
        if state.reservation_failures:
            log.info("reserved seqs for chat room {room} again", room=state.room_id)
            state.reservation_failures = 0
        state.reserved_through = max(state.reserved_through, outcome)
        self._drain(state)

    def _retry_reservation(self, state: RoomState) -> None:
        through = max(state.reserved_through, state.last_seq) + state.block
        d = self.store.extend_seq_reservation(state.room_id, through)
        d.addBoth(self._reserved, state)

    def _evictable(self, state: RoomState) -> bool:
        return not state.reserving and state.room_id not in self._waiting

    def _evicted(self, state: RoomState) -> None:
        """A room left memory: give back the seqs reserved beyond its last one, so its next
        message continues without a gap (alone only: in cluster mode others number too)."""
        if self.sequencer is None and state.reserved_through > state.last_seq:
            d = self.store.release_seq_reservation(
                state.room_id, state.reserved_through, state.last_seq
            )
            d.addErrback(_release_failed, state.room_id)

    def release_reservations(self) -> Deferred[None]:
        """Give back every active room's unused seqs, for a clean stop, so a restart goes
        on without a gap. Safe at any time: a room numbers nothing more until it reserves
        again. A crash skips this; the rooms then continue past their reservations,
        leaving a gap but reusing no seq."""
        if self.sequencer is not None:
            return succeed(None)
        releases = []
        for state in self._rooms:
            if state.reserving or state.reserved_through <= state.last_seq:
                continue
            reserved, state.reserved_through = state.reserved_through, state.last_seq
            releases.append(self.store.release_seq_reservation(
                state.room_id, reserved, state.last_seq
            ).addErrback(_release_failed, state.room_id))
        return gatherResults(releases).addCallback(lambda _: None)

    def _timestamp(self) -> tuple[datetime, str]:
        """Now, as a datetime and as ``createdAt``; formatted once per millisecond."""
        millis = int(self.clock.seconds() * 1000)
        cached = self._last_timestamp
        if cached[0] != millis:
            moment = datetime.fromtimestamp(millis / 1000, UTC)
            cached = self._last_timestamp = (millis, moment, utc_isoformat(moment))
        return cached[1], cached[2]

    @property
    def active_room_count(self) -> int:
        return len(self._rooms)

    def active_room(self, room_id: int) -> RoomState | None:
        return self._rooms.peek(room_id)

    def forget_room(self, room_id: int) -> None:
        """Drop a room's cache (e.g. after it was deleted)."""
        self._rooms.remove(room_id)

    # -- history -------------------------------------------------------

    def history(
        self, room_id: int, limit: int, before: int | None = None, after: int | None = None
    ) -> Deferred[list[ChatMessage]]:
        """A page of a room's messages, ascending by seq; from the cache when it can.

        Messages still waiting for the write-behind are only in the cache, so
        a page read from the database is completed from it.
        """
        state = self._rooms.peek(room_id)
        sequencer = self.sequencer
        if state is not None and (sequencer is None or sequencer.follows(room_id)):
            cached = state.page(limit, before, after)
            if cached is not None:
                return succeed(cached)
        d = self.store.load_messages(room_id, limit, before_seq=before, after_seq=after)
        # Cluster mode: the other servers' latest messages may not be written yet; the
        # cluster keeps the room's last ones.
        recent: Deferred[list[ChatMessage]] = (
            sequencer.recent(room_id).addCallbacks(_decode_recent, _no_recent, errbackArgs=(
                room_id,))
            if sequencer is not None else succeed([])
        )

        def merge(results: list[Any]) -> list[ChatMessage]:
            stored, shared = results
            by_seq = {m.seq: m for m in stored}
            unsaved = self.writer.unsaved_messages(room_id)
            for m in chain(state.recent if state is not None else (), unsaved, shared):
                if (before is None or m.seq < before) and (after is None or m.seq > after):
                    by_seq.setdefault(m.seq, m)
            ordered = sorted(by_seq.values(), key=lambda m: m.seq)
            return ordered[:limit] if after is not None else ordered[-limit:]

        return gatherResults([d, recent], consumeErrors=True).addCallbacks(
            merge, _first_error
        )


def message_of(data: Any) -> ChatMessage:
    """A broadcast chat message's JSON back into a ChatMessage (KeyError, TypeError or
    ValueError if it is not one)."""
    return ChatMessage(
        data["roomId"], data["seq"], data["messageId"], data["type"], data["senderId"],
        data["detailMessage"], datetime.fromisoformat(data["createdAt"]),
        data.get("senderName"),
    )


def decode_broadcast(body: bytes) -> ChatMessage:
    """A broadcast chat message back into a ChatMessage; ValueError if it is not one."""
    try:
        return message_of(json.loads(body))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"not a chat message: {error}") from None


def _decode_recent(bodies: list[bytes]) -> list[ChatMessage]:
    messages = []
    for body in bodies:
        try:
            messages.append(decode_broadcast(body))
        except ValueError:
            continue
    return messages


def _no_recent(failure: Failure, room_id: int) -> list[ChatMessage]:
    """History goes on from the database when the cluster cannot answer."""
    log.warn("cannot read the recent messages of chat room {room} from the cluster: {error}",
             room=room_id, error=failure.getErrorMessage())
    return []


def _not_forgotten(failure: Failure, room_id: int, seq: int) -> None:
    log.warn("message {seq} of chat room {room} is deleted but stays in the cluster's recent "
             "messages until newer ones push it out: {error}", seq=seq, room=room_id,
             error=failure.getErrorMessage())


def _first_error(failure: Failure) -> Failure:
    """gatherResults wraps the failure; the caller wants the database's own."""
    error = getattr(failure.value, "subFailure", None)
    return error if isinstance(error, Failure) else failure


def _not_written_yet(failure: Failure, room_id: int, seq: int) -> Failure:
    """The message to delete is still waiting for the database (an outage)."""
    failure.trap(TimeoutError)
    return Failure(ApplicationError(
        f"message {room_id}-{seq} is not stored yet; try again later", code="unavailable"
    ))


def _replace_result(_: object, value: Any) -> Any:
    return value


def _not_stored(failure: Failure, message: ChatMessage) -> Failure:
    """A durable message the database refused, or whose seq another message holds: its
    sender is told, never sent a receipt."""
    if failure.check(SeqCollision):
        return Failure(ApplicationError(
            f"message {message.message_id} was not stored: another message holds its seq",
            code="not-stored",
        ))
    if failure.check(MessagesRejected):
        return Failure(ApplicationError(
            f"message {message.message_id} was not stored: the database refused it",
            code="not-stored",
        ))
    return failure


def _release_failed(failure: Failure, room_id: int) -> None:
    log.warn("cannot give back the unused seqs of chat room {room}: {error}",
             room=room_id, error=failure.getErrorMessage())
