"""The chat controller: ``SEND /app/message``, rooms, sequence numbers, history.

The seed's ``MessageController`` + ``MessageService``, done so that no
accepted message is lost: every message gets its room's next ``seq`` (no
gaps), is broadcast at once on ``/topic/chat/room/{roomId}``, and is written
behind in batches; a client that asked for a receipt gets it only once its
message is stored. The last messages of every active room stay in memory, so
opening a room costs no database round trip.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from stomp_chat.app.routes import AppContext, ApplicationError, AppRouter
from stomp_chat.broker import Broker
from stomp_chat.persistence import (
    BufferFull,
    ChatMessage,
    ChatStore,
    WriteBehindWriter,
    utc_isoformat,
)
from stomp_chat.stomp.frame import Frame

log = Logger()

DEFAULT_ENTER_TEMPLATE = "{senderId}님이 입장하였습니다."
DEFAULT_HISTORY_SIZE = 30
MAX_TEXT_LENGTH = 10_000
ROOM_TOPIC = "/topic/chat/room/{room_id}"
ROOM_TOPIC_PREFIX = "/topic/chat/room/"
_JSON_HEADERS = {"content-type": "application/json;charset=utf-8"}
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
    mode Redis fills in the seq (see stomp_chat.cluster).
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
        self, room_id: int, key: str, headers: dict[str, str], template: bytes, floor: int
    ) -> Deferred[int]: ...


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
    return ChatRequest(kind, room_id, sender_id, text)


def _integer(data: dict[str, Any], name: str) -> int:
    """Ids arrive as JSON numbers or, from some clients, as digit strings."""
    value = data.get(name)
    if isinstance(value, bool):
        value = None
    if isinstance(value, str) and value.isdigit() and value.isascii():
        value = int(value)
    if not isinstance(value, int) or value <= 0 or value > 2**63 - 1:
        raise ApplicationError(f"{name} must be a positive integer", code="invalid-message")
    return value


class RoomState:
    """An active room: its last sequence number and its recent messages."""

    __slots__ = ("last_seq", "recent", "room_id", "topic")

    def __init__(self, room_id: int, last_seq: int, recent: list[ChatMessage], size: int) -> None:
        self.room_id = room_id
        self.last_seq = last_seq
        self.recent: deque[ChatMessage] = deque(recent, maxlen=size)
        self.topic = ROOM_TOPIC.format(room_id=room_id)

    def page(self, limit: int, before: int | None, after: int | None) -> list[ChatMessage] | None:
        """The requested history page if the cache holds all of it, else None.

        Sequence numbers have no gaps, so the cache covers a range of seqs
        exactly when its oldest message is at or below the range's start.
        """
        recent = self.recent
        if recent and (
            recent[-1].seq != self.last_seq or recent[-1].seq - recent[0].seq + 1 != len(recent)
        ):
            return None  # a hole (cluster mode can miss a relayed message): ask the database
        oldest = recent[0].seq if recent else self.last_seq + 1
        complete = oldest <= 1
        if after is not None:
            wanted_from = after + 1
            upto = min(self.last_seq, after + limit)
        else:
            upto = self.last_seq if before is None else min(self.last_seq, before - 1)
            wanted_from = max(1, upto - limit + 1)
        if upto < wanted_from:
            return []
        if not complete and wanted_from < oldest:
            return None
        return [m for m in recent if wanted_from <= m.seq <= upto]


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
        gate: RequestGate | None = None,
    ) -> None:
        self.store = store
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
        self._rooms: dict[int, RoomState] = {}
        self._last_timestamp: tuple[int, datetime, str] = (-1, _EPOCH, "")
        #: Requests for rooms being loaded, kept in arrival order.
        self._waiting: dict[int, list[tuple[ChatRequest, bool, Deferred[Any]]]] = {}
        #: Cluster mode: other servers' messages for rooms being loaded.
        self._relayed_early: dict[int, list[ChatMessage]] = {}

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
        state = self._rooms.get(request.room_id)
        if state is not None:
            return self._accept(state, request, durable)[1]
        return self._when_loaded(request, durable)

    def post(self, request: ChatRequest) -> Deferred[ChatMessage]:
        """Accept a message from any caller (REST, tests); fires once it is broadcast."""
        state = self._rooms.get(request.room_id)
        if state is None:
            return self._when_loaded(request, durable=False)
        try:
            message, sequenced = self._accept(state, request, durable=False)
        except ApplicationError:
            return fail()
        return succeed(message) if message is not None else sequenced  # type: ignore[return-value]

    def _accept(
        self, state: RoomState, request: ChatRequest, durable: bool
    ) -> tuple[ChatMessage | None, Deferred[Any] | None]:
        """Number, buffer for storage, cache and broadcast one message.

        Returns the message, when it is already numbered, and a Deferred
        when the caller must wait: for the commit of a durable message, or
        in cluster mode for Redis to number it.
        """
        text = self.types[request.type](request, self)
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
        self._remember(state, message)
        self.broker.publish(state.topic, fill_seq(template, seq), _JSON_HEADERS)
        return message, stored

    def _store(self, message: ChatMessage, durable: bool) -> Deferred[None] | None:
        try:
            if durable:
                return self.writer.append_durable(message)
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
            self._remember(state, message)
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
            room_id, state.topic, _JSON_HEADERS, template, state.last_seq
        )
        return d.addCallbacks(sequenced, unavailable)

    def _remember(self, state: RoomState, message: ChatMessage) -> None:
        """Keep a message in its room's cache, in seq order."""
        recent = state.recent
        if not recent or message.seq > recent[-1].seq:
            recent.append(message)
        elif all(m.seq != message.seq for m in recent):
            ordered = sorted([*recent, message], key=lambda m: m.seq)
            recent.clear()
            recent.extend(ordered[-(recent.maxlen or len(ordered)) :])
        if message.seq > state.last_seq:
            state.last_seq = message.seq

    def relayed(self, key: str, origin: str, body: bytes) -> None:
        """A chat message another server numbered: keep it in this server's cache."""
        if self.sequencer is None or origin == self.sequencer.node_id:
            return
        if not key.startswith(ROOM_TOPIC_PREFIX):
            return
        suffix = key[len(ROOM_TOPIC_PREFIX) :]
        if not suffix.isdigit():
            return
        room_id = int(suffix)
        try:
            data = json.loads(body)
            message = ChatMessage(
                data["roomId"], data["seq"], data["messageId"], data["type"], data["senderId"],
                data["detailMessage"], datetime.fromisoformat(data["createdAt"]),
                data.get("senderName"),
            )
        except (ValueError, KeyError, TypeError):
            log.warn("ignoring an unreadable relayed chat message on {key}", key=key)
            return
        state = self._rooms.get(room_id)
        if state is not None:
            self._remember(state, message)
            return
        # A room active elsewhere becomes active here too, so that this
        # server's cache and history see every message from now on.
        self._load_with(room_id, relayed=message)

    # -- rooms ---------------------------------------------------------

    def _when_loaded(self, request: ChatRequest, durable: bool) -> Deferred[Any]:
        """Queue a request behind its room's loading, keeping arrival order."""
        result: Deferred[Any] = Deferred()
        self._load_with(request.room_id, request=(request, durable, result))
        return result

    def _load_with(
        self,
        room_id: int,
        request: tuple[ChatRequest, bool, Deferred[Any]] | None = None,
        relayed: ChatMessage | None = None,
    ) -> None:
        """Queue a request or a relayed message behind a room's loading.

        Queued before loading starts: a store that answers at once finishes
        loading right here.
        """
        waiting = self._waiting.get(room_id)
        fresh = waiting is None
        if waiting is None:
            waiting = self._waiting[room_id] = []
            self._relayed_early[room_id] = []
        if request is not None:
            waiting.append(request)
        if relayed is not None:
            self._relayed_early[room_id].append(relayed)
        if fresh:
            self._load(room_id).addBoth(self._loaded, room_id)

    def _load(self, room_id: int) -> Deferred[RoomState | None]:
        store = self.store
        d = store.ensure_room(room_id) if self.auto_create_rooms else store.get_room(room_id)

        def found(room: Any) -> Any:
            if room is None:
                return None
            return store.last_seq(room_id).addCallback(recent_of)

        def recent_of(last_seq: int) -> Deferred[RoomState]:
            return store.load_messages(room_id, self.history_size).addCallback(
                lambda recent: RoomState(room_id, last_seq, list(recent), self.history_size)
            )

        return d.addCallback(found)

    def _loaded(self, outcome: RoomState | None | Failure, room_id: int) -> None:
        waiting = self._waiting.pop(room_id, [])
        relayed = self._relayed_early.pop(room_id, [])
        if isinstance(outcome, RoomState):
            self._rooms[room_id] = outcome
            for early in relayed:
                self._remember(outcome, early)
        for request, durable, result in waiting:
            if isinstance(outcome, Failure):
                result.errback(outcome)
            elif outcome is None:
                result.errback(
                    ApplicationError(f"room {room_id} does not exist", code="unknown-room")
                )
            else:
                try:
                    message, stored = self._accept(outcome, request, durable)
                except ApplicationError as error:
                    result.errback(error)
                    continue
                if stored is None:
                    result.callback(message)
                elif message is not None:
                    stored.addCallback(_replace_result, message).chainDeferred(result)
                else:
                    stored.chainDeferred(result)

    def _timestamp(self) -> tuple[datetime, str]:
        """Now, as a datetime and as ``createdAt``; formatted once per millisecond."""
        millis = int(self.clock.seconds() * 1000)
        cached = self._last_timestamp
        if cached[0] != millis:
            moment = datetime.fromtimestamp(millis / 1000, UTC)
            cached = self._last_timestamp = (millis, moment, utc_isoformat(moment))
        return cached[1], cached[2]

    def active_room(self, room_id: int) -> RoomState | None:
        return self._rooms.get(room_id)

    def forget_room(self, room_id: int) -> None:
        """Drop a room's cache (e.g. after it was deleted)."""
        self._rooms.pop(room_id, None)

    # -- history -------------------------------------------------------

    def history(
        self, room_id: int, limit: int, before: int | None = None, after: int | None = None
    ) -> Deferred[list[ChatMessage]]:
        """A page of a room's messages, ascending by seq; from the cache when it can.

        Messages still waiting for the write-behind are only in the cache, so
        a page read from the database is completed from it.
        """
        state = self._rooms.get(room_id)
        if state is not None:
            cached = state.page(limit, before, after)
            if cached is not None:
                return succeed(cached)
        d = self.store.load_messages(room_id, limit, before_seq=before, after_seq=after)

        def merge(stored: list[ChatMessage]) -> list[ChatMessage]:
            by_seq = {m.seq: m for m in stored}
            unsaved = self.writer.unsaved_messages(room_id)
            for m in chain(state.recent if state is not None else (), unsaved):
                if (before is None or m.seq < before) and (after is None or m.seq > after):
                    by_seq.setdefault(m.seq, m)
            ordered = sorted(by_seq.values(), key=lambda m: m.seq)
            return ordered[:limit] if after is not None else ordered[-limit:]

        return d.addCallback(merge)


def _replace_result(_: object, value: Any) -> Any:
    return value
