"""Unit tests of the chat controller (`ChatService`) and its history cache (`RoomState`).

Everything is synchronous: time is a `task.Clock`, storage the in-memory store, the broker a
real one with a recording subscriber, and frames are built by hand.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from stomp_chat.app.chat import (
    DEFAULT_ENTER_TEMPLATE,
    MAX_TEXT_LENGTH,
    ChatRequest,
    ChatService,
    RoomState,
)
from stomp_chat.app.routes import AppContext, ApplicationError, AppRouter
from stomp_chat.broker import Broker, Message, Subscription
from stomp_chat.persistence import ChatMessage, MemoryChatStore, WriteBehindWriter
from stomp_chat.stomp.frame import Frame

if TYPE_CHECKING:
    from tests.conftest_db import TestDatabase

pytest_plugins = ["tests.conftest_db"]

#: 2023-11-14T22:13:20.250Z
START = 1_700_000_000.25
FLUSH = 1.0


class Recorder:
    """A broker subscriber that keeps every delivery."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, Message]] = []

    def deliver(self, subscription: Subscription, message: Message) -> None:
        self.deliveries.append((subscription.destination, message))


class GatedStore(MemoryChatStore):
    """The in-memory store, except that room look-ups answer only on `release()`, as a real
    database answers later; it also counts history reads."""

    def __init__(self) -> None:
        super().__init__()
        self._held: list[tuple[Deferred[Any], Callable[[], Deferred[Any]]]] = []
        self.load_calls = 0

    def _hold(self, answer: Callable[[], Deferred[Any]]) -> Deferred[Any]:
        held: Deferred[Any] = Deferred()
        self._held.append((held, answer))
        return held

    def ensure_room(self, room_id: int) -> Deferred[Any]:
        return self._hold(lambda: MemoryChatStore.ensure_room(self, room_id))

    def get_room(self, room_id: int) -> Deferred[Any]:
        return self._hold(lambda: MemoryChatStore.get_room(self, room_id))

    @property
    def held(self) -> int:
        return len(self._held)

    def release(self, error: Exception | None = None) -> None:
        """Answer every held look-up (with `error`, if given)."""
        while self._held:
            held, answer = self._held.pop(0)
            (fail(error) if error is not None else answer()).chainDeferred(held)

    def load_messages(self, *args: Any, **kwargs: Any) -> Deferred[list[ChatMessage]]:
        self.load_calls += 1
        return super().load_messages(*args, **kwargs)


class Harness:
    """A ChatService wired to a store, a started writer on a fake clock and a real broker."""

    def __init__(
        self,
        store: MemoryChatStore | None = None,
        *,
        clock: Clock | None = None,
        max_pending: int = 100_000,
        **service_options: Any,
    ) -> None:
        self.clock = clock if clock is not None else Clock()
        if clock is None:
            self.clock.advance(START)
        self.store = store if store is not None else GatedStore()
        self.writer = WriteBehindWriter(
            self.store, self.clock, flush_interval=FLUSH, max_pending=max_pending
        )
        self.writer.startService()
        self.broker = Broker()
        self.recorder = Recorder()
        self._watched: set[int] = set()
        self.chat = ChatService(self.store, self.writer, self.broker, self.clock, **service_options)
        self.context = AppContext("session-1", None, self.broker)

    def watch(self, *room_ids: int) -> None:
        for room_id in room_ids:
            if room_id not in self._watched:
                self._watched.add(room_id)
                topic = f"/topic/chat/room/{room_id}"
                self.broker.subscribe(Subscription(self.recorder, topic, topic), "watcher")

    def send(
        self, body: dict[str, Any] | bytes, *, receipt: str | None = None, release: bool = True
    ) -> Deferred[Any] | None:
        """SEND /app/message as a session would; answer the room look-up unless told not to."""
        if isinstance(body, dict):
            if isinstance(body.get("roomId"), int):
                self.watch(body["roomId"])
            raw = json.dumps(body).encode("utf-8")
        else:
            raw = body
        headers = {"destination": "/app/message", "content-type": "application/json"}
        if receipt is not None:
            headers["receipt"] = receipt
        result = self.chat.handle_message(Frame("SEND", headers, raw), self.context, {})
        if release and isinstance(self.store, GatedStore):
            self.store.release()
        return result

    def talk(self, room_id: int, text: str, sender_id: int = 42, **kwargs: Any) -> Any:
        body = {"type": "TALK", "roomId": room_id, "senderId": sender_id, "detailMessage": text}
        return self.send(body, **kwargs)

    def broadcasts(self, room_id: int | None = None) -> list[dict[str, Any]]:
        """Bodies broadcast so far (to one room's topic, or to any)."""
        return [
            json.loads(message.body)
            for destination, message in self.recorder.deliveries
            if room_id is None or destination == f"/topic/chat/room/{room_id}"
        ]

    def flush(self) -> None:
        self.clock.advance(FLUSH)

    def stored(self, room_id: int) -> list[ChatMessage]:
        return _result(self.store.load_messages(room_id, 10_000))


def _result(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def _refusal(call: Callable[[], Deferred[Any] | None]) -> ApplicationError:
    """The ApplicationError a handler refused with, raised at once or through its Deferred."""
    try:
        outcome = call()
    except ApplicationError as error:
        return error
    assert isinstance(outcome, Deferred), f"the message was accepted: {outcome!r}"
    failures: list[Failure] = []
    outcome.addErrback(failures.append)
    assert failures, "the handler neither refused the message nor failed its Deferred"
    failures[0].trap(ApplicationError)
    error = failures[0].value
    assert isinstance(error, ApplicationError)
    return error


def _seqs(messages: list[ChatMessage] | None) -> list[int] | None:
    return None if messages is None else [m.seq for m in messages]


# -- message texts -------------------------------------------------------------------------


def test_enter_text_comes_from_the_default_template() -> None:
    """An ENTER message's text is "{senderId}님이 입장하였습니다.", whatever the client sent."""
    h = Harness()
    h.send({"type": "ENTER", "roomId": 7, "senderId": 42, "detailMessage": "ignored"})
    h.send({"type": "ENTER", "roomId": 7, "senderId": 43})
    assert DEFAULT_ENTER_TEMPLATE == "{senderId}님이 입장하였습니다."
    assert [(b["type"], b["detailMessage"]) for b in h.broadcasts(7)] == [
        ("ENTER", "42님이 입장하였습니다."),
        ("ENTER", "43님이 입장하였습니다."),
    ]
    h.flush()
    assert [m.text for m in h.stored(7)] == ["42님이 입장하였습니다.", "43님이 입장하였습니다."]


def test_enter_text_comes_from_a_custom_template() -> None:
    """A configured ENTER template may use {senderId} and {roomId}."""
    h = Harness(enter_template="[{roomId}] {senderId} joined")
    h.send({"type": "ENTER", "roomId": 7, "senderId": 42, "detailMessage": "{roomId}"})
    [broadcast] = h.broadcasts(7)
    assert broadcast["detailMessage"] == "[7] 42 joined"
    assert broadcast["type"] == "ENTER"


def test_talk_text_is_saved_and_broadcast_as_is() -> None:
    """A TALK message's text is broadcast and stored byte for byte, braces and all."""
    text = '  안녕하세요 👋\n{senderId} <b>&amp;</b> \\ "quoted"  '
    h = Harness()
    h.talk(3, text)
    assert h.broadcasts(3)[0]["detailMessage"] == text
    assert h.broadcasts(3)[0]["type"] == "TALK"
    h.flush()
    [stored] = h.stored(3)
    assert (stored.type, stored.text, stored.sender_id) == ("TALK", text, 42)


def test_broadcast_is_the_message_json_on_the_room_topic() -> None:
    """Every accepted message is published once on /topic/chat/room/{roomId} as JSON."""
    h = Harness()
    h.watch(1, 2)
    h.talk(1, "hello", sender_id=5)
    [(destination, message)] = h.recorder.deliveries
    assert destination == "/topic/chat/room/1"
    assert message.destination == "/topic/chat/room/1"
    assert message.headers.get("content-type", "").startswith("application/json")
    assert json.loads(message.body.decode("utf-8")) == {
        "type": "TALK",
        "roomId": 1,
        "detailMessage": "hello",
        "senderId": 5,
        "messageId": "1-1",
        "seq": 1,
        "createdAt": "2023-11-14T22:13:20.250Z",
    }
    assert h.broadcasts(2) == []


def test_broadcast_keeps_non_ascii_text_readable() -> None:
    """Korean text and emoji go out as UTF-8, not as \\u escapes."""
    h = Harness()
    h.talk(1, "반가워요 🎉")
    [(_, message)] = h.recorder.deliveries
    assert "반가워요 🎉".encode() in message.body


def test_seq_has_no_gaps_and_is_counted_per_room() -> None:
    """Each room numbers its messages 1, 2, 3, ... on its own, whatever the interleaving."""
    h = Harness()
    for room_id, text in [(1, "a"), (2, "b"), (1, "c"), (1, "d"), (2, "e"), (3, "f")]:
        h.talk(room_id, text)
    assert [(b["seq"], b["detailMessage"]) for b in h.broadcasts(1)] == [
        (1, "a"),
        (2, "c"),
        (3, "d"),
    ]
    assert [(b["seq"], b["detailMessage"]) for b in h.broadcasts(2)] == [(1, "b"), (2, "e")]
    assert [b["seq"] for b in h.broadcasts(3)] == [1]
    ids = [b["messageId"] for b in h.broadcasts()]
    assert len(set(ids)) == len(ids)
    h.flush()
    assert _seqs(h.stored(1)) == [1, 2, 3]
    assert _seqs(h.stored(2)) == [1, 2]


def test_created_at_is_utc_iso_8601_from_the_clock() -> None:
    """createdAt is the clock's time, in UTC, ISO-8601 with milliseconds and a Z."""
    h = Harness()
    h.talk(1, "first")
    h.clock.advance(0.5)
    h.talk(1, "second")
    h.clock.advance(86_400)
    h.talk(1, "a day later")
    assert [b["createdAt"] for b in h.broadcasts(1)] == [
        "2023-11-14T22:13:20.250Z",
        "2023-11-14T22:13:20.750Z",
        "2023-11-15T22:13:20.750Z",
    ]
    h.clock.advance(FLUSH)
    stored = h.stored(1)
    start = datetime(2023, 11, 14, 22, 13, 20, 250_000, tzinfo=UTC)
    assert [m.created_at for m in stored] == [
        start,
        start + timedelta(seconds=0.5),
        start + timedelta(days=1, seconds=0.5),
    ]


def test_digit_string_ids_are_accepted_as_numbers() -> None:
    """Ids sent as digit strings (some clients do) are numbers in the broadcast."""
    h = Harness()
    h.watch(12)
    h.send({"type": "TALK", "roomId": "12", "senderId": "34", "detailMessage": "x"})
    [broadcast] = h.broadcasts(12)
    assert (broadcast["roomId"], broadcast["senderId"]) == (12, 34)


def test_text_of_the_maximum_length_is_accepted() -> None:
    """A TALK text of exactly MAX_TEXT_LENGTH characters is accepted."""
    h = Harness()
    h.talk(1, "가" * MAX_TEXT_LENGTH)
    assert len(h.broadcasts(1)[0]["detailMessage"]) == MAX_TEXT_LENGTH


# -- refused messages ------------------------------------------------------------------------

_TALK = {"type": "TALK", "roomId": 1, "senderId": 42, "detailMessage": "hi"}

INVALID_BODIES: list[tuple[str, bytes, str]] = [
    ("not json", b"{type: TALK", "invalid-json"),
    ("not utf-8", b'{"type": "TALK", "detailMessage": "\xff\xfe"}', "invalid-json"),
    ("empty body", b"", "invalid-json"),
    ("a list", json.dumps([_TALK]).encode(), "invalid-message"),
    ("a string", b'"TALK"', "invalid-message"),
    ("null", b"null", "invalid-message"),
    ("unknown type", json.dumps({**_TALK, "type": "LEAVE"}).encode(), "invalid-message"),
    ("lower-case type", json.dumps({**_TALK, "type": "talk"}).encode(), "invalid-message"),
    (
        "no type",
        json.dumps({k: v for k, v in _TALK.items() if k != "type"}).encode(),
        "invalid-message",
    ),
    (
        "no roomId",
        json.dumps({k: v for k, v in _TALK.items() if k != "roomId"}).encode(),
        "invalid-message",
    ),
    ("null roomId", json.dumps({**_TALK, "roomId": None}).encode(), "invalid-message"),
    ("text roomId", json.dumps({**_TALK, "roomId": "abc"}).encode(), "invalid-message"),
    ("fractional roomId", json.dumps({**_TALK, "roomId": 1.5}).encode(), "invalid-message"),
    ("zero roomId", json.dumps({**_TALK, "roomId": 0}).encode(), "invalid-message"),
    ("negative roomId", json.dumps({**_TALK, "roomId": -1}).encode(), "invalid-message"),
    ("boolean roomId", json.dumps({**_TALK, "roomId": True}).encode(), "invalid-message"),
    ("roomId beyond 64 bits", json.dumps({**_TALK, "roomId": 2**63}).encode(), "invalid-message"),
    (
        "no senderId",
        json.dumps({k: v for k, v in _TALK.items() if k != "senderId"}).encode(),
        "invalid-message",
    ),
    ("text senderId", json.dumps({**_TALK, "senderId": "bob"}).encode(), "invalid-message"),
    ("list senderId", json.dumps({**_TALK, "senderId": [42]}).encode(), "invalid-message"),
    ("empty TALK text", json.dumps({**_TALK, "detailMessage": ""}).encode(), "invalid-message"),
    (
        "missing TALK text",
        json.dumps({k: v for k, v in _TALK.items() if k != "detailMessage"}).encode(),
        "invalid-message",
    ),
    ("null TALK text", json.dumps({**_TALK, "detailMessage": None}).encode(), "invalid-message"),
    ("numeric text", json.dumps({**_TALK, "detailMessage": 5}).encode(), "invalid-message"),
    (
        "text too long",
        json.dumps({**_TALK, "detailMessage": "x" * (MAX_TEXT_LENGTH + 1)}).encode(),
        "invalid-message",
    ),
    (
        "roomId of 5,000 digits",
        json.dumps({**_TALK, "roomId": "9" * 5000}).encode(),
        "invalid-message",
    ),
    (
        "lone surrogate",
        b'{"type": "TALK", "roomId": 1, "senderId": 42, "detailMessage": "a\\ud800b"}',
        "bad-request",
    ),
    (
        "NUL in the text",
        json.dumps({**_TALK, "detailMessage": "a\u0000b"}).encode(),
        "bad-request",
    ),
    (
        "ENTER text too long",
        json.dumps(
            {**_TALK, "type": "ENTER", "detailMessage": "x" * (MAX_TEXT_LENGTH + 1)}
        ).encode(),
        "invalid-message",
    ),
]


@pytest.mark.parametrize(
    ("body", "code"),
    [(body, code) for _, body, code in INVALID_BODIES],
    ids=[name for name, _, _ in INVALID_BODIES],
)
def test_invalid_message_is_refused_with_a_code(body: bytes, code: str) -> None:
    """A malformed message is an ApplicationError with a code; nothing is sent or numbered."""
    h = Harness()
    h.watch(1)
    error = _refusal(lambda: h.send(body))
    assert error.code == code
    assert error.message
    assert h.broadcasts() == []
    h.talk(1, "valid")
    assert [b["seq"] for b in h.broadcasts(1)] == [1]


def test_refused_message_in_an_active_room_consumes_no_seq() -> None:
    """A refusal between two accepted messages leaves no gap in the room's seq."""
    h = Harness()
    h.talk(1, "one")
    assert _refusal(lambda: h.talk(1, "")).code == "invalid-message"
    assert _refusal(lambda: h.send(b"[")).code == "invalid-json"
    h.talk(1, "two")
    assert [(b["seq"], b["detailMessage"]) for b in h.broadcasts(1)] == [(1, "one"), (2, "two")]
    h.flush()
    assert _seqs(h.stored(1)) == [1, 2]


# -- rooms -----------------------------------------------------------------------------------


def test_unknown_room_is_created_when_auto_create_is_on() -> None:
    """With auto_create_rooms, the first message to a new room creates it."""
    h = Harness(auto_create_rooms=True)
    assert h.store.held == 0
    h.talk(5, "first", release=False)
    assert h.broadcasts(5) == [], "the message waits for its room to load"
    h.store.release()
    assert [b["seq"] for b in h.broadcasts(5)] == [1]
    room = _result(MemoryChatStore.get_room(h.store, 5))
    assert room is not None and room.id == 5


def test_unknown_room_is_refused_when_auto_create_is_off() -> None:
    """Without auto_create_rooms, a message to a missing room fails with unknown-room."""
    h = Harness(auto_create_rooms=False)
    _result(h.store.create_room("existing", 1))
    error = _refusal(lambda: h.talk(9, "hello?"))
    assert error.code == "unknown-room"
    assert "9" in error.message
    assert h.broadcasts() == []
    assert _result(MemoryChatStore.get_room(h.store, 9)) is None
    h.talk(1, "hello")
    assert [b["seq"] for b in h.broadcasts(1)] == [1]
    h.flush()
    assert _seqs(h.stored(9)) == []


def test_unknown_room_is_refused_with_a_store_that_answers_at_once() -> None:
    """The refusal also arrives when the store's Deferreds have already fired."""
    h = Harness(MemoryChatStore(), auto_create_rooms=False)
    error = _refusal(lambda: h.talk(9, "hello?"))
    assert error.code == "unknown-room"


def test_first_message_is_accepted_with_a_store_that_answers_at_once() -> None:
    """A store returning already-fired Deferreds (the in-memory one) loses no message."""
    h = Harness(MemoryChatStore())
    first = h.talk(1, "first")
    h.talk(1, "second")
    assert [(b["seq"], b["detailMessage"]) for b in h.broadcasts(1)] == [
        (1, "first"),
        (2, "second"),
    ]
    assert isinstance(first, Deferred) and first.called


def test_messages_sent_while_the_room_loads_keep_their_order() -> None:
    """Messages that arrive before their room is loaded are numbered in arrival order."""
    h = Harness()
    pending = [h.talk(1, f"m{i}", release=False) for i in range(5)]
    other = h.talk(2, "other room", release=False)
    assert h.broadcasts() == []
    assert all(isinstance(d, Deferred) and not d.called for d in [*pending, other])
    h.store.release()
    assert [(b["seq"], b["detailMessage"]) for b in h.broadcasts(1)] == [
        (i + 1, f"m{i}") for i in range(5)
    ]
    assert [b["seq"] for b in h.broadcasts(2)] == [1]
    fired = [_result(d) for d in pending]
    assert [m.seq for m in fired] == [1, 2, 3, 4, 5]
    h.talk(1, "after loading")
    assert h.broadcasts(1)[-1]["seq"] == 6
    h.flush()
    assert [m.text for m in h.stored(1)] == [f"m{i}" for i in range(5)] + ["after loading"]


def test_a_room_that_fails_to_load_refuses_its_waiting_messages_then_retries() -> None:
    """If loading a room fails, its waiting messages fail as unavailable and the next message
    loads it anew."""
    h = Harness()
    waiting = [h.talk(1, "a", release=False), h.talk(1, "b", release=False)]
    h.store.release(RuntimeError("database down"))
    for d in waiting:
        assert _refusal(lambda d=d: d).code == "unavailable"
    assert h.broadcasts() == []
    h.talk(1, "c")
    assert [(b["seq"], b["detailMessage"]) for b in h.broadcasts(1)] == [(1, "c")]


def test_router_sends_app_message_to_the_chat_handler() -> None:
    """register() mounts the handler on /app/message."""
    h = Harness()
    h.watch(4)
    router = AppRouter()
    h.chat.register(router)
    body = json.dumps({"type": "TALK", "roomId": 4, "senderId": 1, "detailMessage": "x"})
    router.dispatch(Frame("SEND", {"destination": "/app/message"}, body.encode()), h.context)
    h.store.release()
    assert [b["detailMessage"] for b in h.broadcasts(4)] == ["x"]


# -- durable receipts and back-pressure ------------------------------------------------------


def test_durable_receipt_fires_only_after_the_writer_committed() -> None:
    """A SEND with a receipt gets a Deferred that fires once its message is stored."""
    h = Harness()
    first = h.talk(1, "loading path", receipt="r1")
    second = h.talk(1, "active path", receipt="r2")
    plain = h.talk(1, "no receipt")
    assert plain is None
    assert isinstance(first, Deferred) and isinstance(second, Deferred)
    assert len(h.broadcasts(1)) == 3, "broadcast does not wait for storage"
    assert not first.called and not second.called
    assert h.stored(1) == []
    h.clock.advance(FLUSH - 0.01)
    assert not first.called and not second.called
    h.clock.advance(0.01)
    assert first.called and second.called
    assert _seqs(h.stored(1)) == [1, 2, 3]
    assert _result(first).seq == 1


def test_durable_receipt_waits_while_the_database_fails() -> None:
    """While saving fails the receipt waits; it fires once a retry commits the message."""

    class FlakyStore(GatedStore):
        failures_left = 2

        def save_messages(self, messages: Any) -> Deferred[None]:
            if self.failures_left:
                self.failures_left -= 1
                return fail(ConnectionError("database down"))
            return super().save_messages(messages)

    h = Harness(FlakyStore())
    h.talk(1, "warm up")
    durable = h.talk(1, "keep me", receipt="r")
    assert isinstance(durable, Deferred)
    h.flush()
    assert not durable.called and h.stored(1) == []
    h.clock.pump([0.05] * 200)
    assert durable.called
    assert [m.text for m in h.stored(1)] == ["warm up", "keep me"]


def test_buffer_full_is_refused_as_busy_without_broadcast_or_seq() -> None:
    """When the write-behind buffer is full, a message is refused as "busy" and not numbered."""
    h = Harness(max_pending=2)
    h.watch(1, 2)
    h.talk(1, "one")
    h.talk(1, "two")
    assert _refusal(lambda: h.talk(1, "three")).code == "busy"
    assert _refusal(lambda: h.talk(1, "durable", receipt="r")).code == "busy"
    assert _refusal(lambda: h.talk(2, "new room")).code == "busy"
    assert [b["seq"] for b in h.broadcasts(1)] == [1, 2]
    assert h.broadcasts(2) == []
    state = h.chat.active_room(1)
    assert state is not None and state.last_seq == 2
    assert [m.seq for m in state.recent] == [1, 2]
    h.flush()
    h.talk(1, "three again")
    h.talk(2, "new room again")
    assert [(b["seq"], b["detailMessage"]) for b in h.broadcasts(1)][-1] == (3, "three again")
    assert [b["seq"] for b in h.broadcasts(2)] == [1]
    h.flush()
    assert _seqs(h.stored(1)) == [1, 2, 3]


def test_post_fires_with_the_broadcast_message() -> None:
    """post() accepts a request from any caller and fires with the numbered message."""
    h = Harness()
    h.watch(8)
    d = h.chat.post(ChatRequest("TALK", 8, 1, "via post"))
    h.store.release()
    assert _result(d).seq == 1
    message = _result(h.chat.post(ChatRequest("ENTER", 8, 2, "")))
    assert (message.seq, message.text) == (2, "2님이 입장하였습니다.")
    assert [b["seq"] for b in h.broadcasts(8)] == [1, 2]


# -- the history cache -----------------------------------------------------------------------


def _message(room_id: int, seq: int) -> ChatMessage:
    return ChatMessage(
        room_id=room_id,
        seq=seq,
        message_id=f"{room_id}-{seq}",
        type="TALK",
        sender_id=1,
        text=f"m{seq}",
        created_at=datetime(2024, 1, 1, tzinfo=UTC),
    )


def _state(last_seq: int, cached: range, size: int) -> RoomState:
    return RoomState(1, last_seq, [_message(1, seq) for seq in cached], size)


# Room 1 has 10 messages; the cache holds the newest 5 (6..10).
PARTIAL = (10, range(6, 11), 5)
# Room 1 has 3 messages, all cached.
COMPLETE = (3, range(1, 4), 5)
EMPTY = (0, range(0), 5)

PAGE_CASES = [
    ("latest within cache", PARTIAL, 3, None, None, [8, 9, 10]),
    ("latest exactly the cache", PARTIAL, 5, None, None, [6, 7, 8, 9, 10]),
    ("latest beyond cache", PARTIAL, 6, None, None, None),
    ("before within cache", PARTIAL, 2, 8, None, [6, 7]),
    ("before reaching below cache", PARTIAL, 3, 8, None, None),
    ("before the oldest cached", PARTIAL, 1, 6, None, None),
    ("before one above oldest", PARTIAL, 1, 7, None, [6]),
    ("before far beyond last", PARTIAL, 2, 100, None, [9, 10]),
    ("before the first seq", PARTIAL, 5, 1, None, []),
    ("after within cache", PARTIAL, 3, None, 5, [6, 7, 8]),
    ("after reaching below cache", PARTIAL, 3, None, 4, None),
    ("after running past the end", PARTIAL, 5, None, 8, [9, 10]),
    ("after the last seq", PARTIAL, 5, None, 10, []),
    ("after beyond the last seq", PARTIAL, 5, None, 50, []),
    ("complete: latest larger than room", COMPLETE, 10, None, None, [1, 2, 3]),
    ("complete: before", COMPLETE, 10, 2, None, [1]),
    ("complete: after zero", COMPLETE, 2, None, 0, [1, 2]),
    ("complete: after", COMPLETE, 10, None, 1, [2, 3]),
    ("empty room: latest", EMPTY, 10, None, None, []),
    ("empty room: before", EMPTY, 10, 5, None, []),
    ("empty room: after", EMPTY, 10, None, 0, []),
]


@pytest.mark.parametrize(
    ("state", "limit", "before", "after", "expected"),
    [case[1:] for case in PAGE_CASES],
    ids=[case[0] for case in PAGE_CASES],
)
def test_room_state_page_answers_only_what_the_cache_covers(
    state: tuple[int, range, int],
    limit: int,
    before: int | None,
    after: int | None,
    expected: list[int] | None,
) -> None:
    """RoomState.page returns the page when the cache covers it, else None."""
    assert _seqs(_state(*state).page(limit, before, after)) == expected


def test_room_state_keeps_only_the_newest_messages() -> None:
    """The cache is bounded by its size and drops the oldest messages first."""
    state = _state(3, range(1, 4), 3)
    for seq in (4, 5):
        state.recent.append(_message(1, seq))
        state.last_seq = seq
    assert [m.seq for m in state.recent] == [3, 4, 5]
    assert _seqs(state.page(3, None, None)) == [3, 4, 5]
    assert state.page(4, None, None) is None
    assert state.topic == "/topic/chat/room/1"


def test_history_of_an_active_room_comes_from_the_cache() -> None:
    """A page the cache covers is answered without reading the store, unsaved messages too."""
    h = Harness()
    for i in range(5):
        h.talk(1, f"m{i}")
    reads = h.store.load_calls
    assert _seqs(_result(h.chat.history(1, 3))) == [3, 4, 5]
    assert _seqs(_result(h.chat.history(1, 10, before=3))) == [1, 2]
    assert _seqs(_result(h.chat.history(1, 2, after=1))) == [2, 3]
    assert h.store.load_calls == reads
    assert h.stored(1) == [], "nothing was written yet: the cache answered"


def test_history_merges_stored_and_unsaved_messages() -> None:
    """A page beyond the cache is read from the store and completed with unsaved messages."""
    h = Harness(history_size=3)
    for i in range(5):
        h.talk(1, f"m{i + 1}")
    h.flush()
    h.talk(1, "m6")
    h.talk(1, "m7")
    assert _seqs(h.stored(1)) == [1, 2, 3, 4, 5]
    reads = h.store.load_calls
    page = _result(h.chat.history(1, 10))
    assert _seqs(page) == [1, 2, 3, 4, 5, 6, 7]
    assert [m.text for m in page] == [f"m{i}" for i in range(1, 8)]
    assert _seqs(_result(h.chat.history(1, 4))) == [4, 5, 6, 7]
    assert _seqs(_result(h.chat.history(1, 10, before=7))) == [1, 2, 3, 4, 5, 6]
    assert _seqs(_result(h.chat.history(1, 10, after=3))) == [4, 5, 6, 7]
    assert _seqs(_result(h.chat.history(1, 2, after=3))) == [4, 5]
    assert _seqs(_result(h.chat.history(1, 2, before=5))) == [3, 4]
    assert h.store.load_calls > reads, "these pages needed the store"


def test_history_includes_unsaved_messages_beyond_the_cache_size() -> None:
    """History has no gaps even when more messages wait to be saved than the cache holds."""
    h = Harness(history_size=3)
    h.talk(1, "m1")
    h.talk(1, "m2")
    h.flush()
    for i in range(3, 9):
        h.talk(1, f"m{i}")
    assert _seqs(h.stored(1)) == [1, 2]
    page = _result(h.chat.history(1, 20))
    assert _seqs(page) == list(range(1, 9))


def test_history_of_a_room_not_yet_active_reads_the_store() -> None:
    """A room this service never loaded is paged straight from the store."""
    store = GatedStore()
    _result(store.save_messages([_message(6, seq) for seq in range(1, 8)]))
    h = Harness(store)
    assert h.chat.active_room(6) is None
    assert _seqs(_result(h.chat.history(6, 3))) == [5, 6, 7]
    assert _seqs(_result(h.chat.history(6, 3, before=5))) == [2, 3, 4]
    assert _seqs(_result(h.chat.history(6, 3, after=5))) == [6, 7]
    assert _result(h.chat.history(99, 3)) == []


# -- restart ---------------------------------------------------------------------------------


def test_a_restarted_service_continues_each_room_from_its_stored_last_seq() -> None:
    """After a clean stop (reservations given back), a new ChatService over the same store
    numbers on from the stored seqs without a gap."""
    first = Harness(history_size=2)
    for room_id, text in [(1, "a"), (1, "b"), (2, "c"), (1, "d")]:
        first.talk(room_id, text)
    first.flush()
    first.writer.stopService()
    _result(first.chat.release_reservations())

    second = Harness(first.store, clock=first.clock, history_size=2)
    second.talk(1, "e")
    second.talk(2, "f")
    second.talk(3, "g")
    assert [(b["seq"], b["detailMessage"]) for b in second.broadcasts(1)] == [(4, "e")]
    assert [(b["seq"], b["detailMessage"]) for b in second.broadcasts(2)] == [(2, "f")]
    assert [b["seq"] for b in second.broadcasts(3)] == [1]
    assert [b["messageId"] for b in second.broadcasts()] == ["1-4", "2-2", "3-1"]
    state = second.chat.active_room(1)
    assert state is not None and [m.text for m in state.recent] == ["d", "e"]
    page = _result(second.chat.history(1, 10))
    assert [(m.seq, m.text) for m in page] == [(1, "a"), (2, "b"), (3, "d"), (4, "e")]
    second.flush()
    assert [m.text for m in second.stored(1)] == ["a", "b", "d", "e"]


@pytest.mark.parametrize(
    "text",
    ["안녕하세요 😀", 'quote " backslash \\ newline \n tab \t control \x01 separator \u2028', ""],
)
def test_broadcast_encoding_is_the_json_of_the_message(text: str) -> None:
    """The hand-written broadcast JSON equals json.dumps of the message's JSON dict."""
    from stomp_chat.app.chat import encode_message
    from stomp_chat.persistence import utc_isoformat

    message = ChatMessage(3, 9, "3-9", "TALK", 7, text, datetime.fromtimestamp(1764000000.123, UTC))
    encoded = encode_message(message, utc_isoformat(message.created_at))
    assert encoded == json.dumps(message.to_json_dict(), ensure_ascii=False).encode("utf-8")
    assert json.loads(encoded)["detailMessage"] == text


class _OtherNodeSequencer:
    """Stands for the cluster relay; only its node id matters to ``relayed``."""

    node_id = "this-node"

    def sequence_and_publish(self, *args: Any) -> Deferred[int]:
        raise AssertionError("not used in these tests")

    def follows(self, room_id: int) -> bool:
        return True

    def recent(self, room_id: int) -> Deferred[list[bytes]]:
        return succeed([])

    def forget(self, room_id: int, seq: int) -> Deferred[None]:
        return succeed(None)


def _relayed_body(room_id: int, seq: int, text: str) -> bytes:
    message = ChatMessage(
        room_id, seq, f"{room_id}-{seq}", "TALK", 9, text, datetime.fromtimestamp(1764000000, UTC)
    )
    return json.dumps(message.to_json_dict(), ensure_ascii=False).encode("utf-8")


def test_a_relayed_message_activates_its_room_and_lands_in_the_cache() -> None:
    """Another server's message for a room not active here loads the room and is cached."""
    clock = Clock()
    store = MemoryChatStore()
    writer = WriteBehindWriter(store, clock)
    writer.startService()
    chat = ChatService(store, writer, Broker(), clock, sequencer=_OtherNodeSequencer())
    chat.relayed("/topic/chat/room/5", "other-node", _relayed_body(5, 1, "첫 메시지"))
    chat.relayed("/topic/chat/room/5", "other-node", _relayed_body(5, 2, "second"))
    state = chat.active_room(5)
    assert state is not None and state.last_seq == 2
    page = chat.history(5, 10)
    assert [(m.seq, m.text) for m in page.result] == [(1, "첫 메시지"), (2, "second")]


def test_own_relayed_messages_are_not_cached_twice() -> None:
    """A message this server numbered itself is ignored when Redis relays it back."""
    clock = Clock()
    store = MemoryChatStore()
    writer = WriteBehindWriter(store, clock)
    writer.startService()
    chat = ChatService(store, writer, Broker(), clock, sequencer=_OtherNodeSequencer())
    chat.relayed("/topic/chat/room/5", "this-node", _relayed_body(5, 1, "mine"))
    assert chat.active_room(5) is None


def test_a_speakers_name_is_part_of_the_broadcast_json() -> None:
    """With a sender name the broadcast adds senderName after senderId, still byte-equal to
    json.dumps of the message; without one the seed's fields are unchanged."""
    from stomp_chat.app.chat import encode_message
    from stomp_chat.persistence import utc_isoformat

    moment = datetime.fromtimestamp(1764000000.5, UTC)
    named = ChatMessage(3, 9, "3-9", "TALK", 7, "hi", moment, 'Zoë "Z" \u2028')
    encoded = encode_message(named, utc_isoformat(moment))
    assert encoded == json.dumps(named.to_json_dict(), ensure_ascii=False).encode("utf-8")
    assert list(json.loads(encoded))[3:5] == ["senderId", "senderName"]
    plain = ChatMessage(3, 9, "3-9", "TALK", 7, "hi", moment)
    assert "senderName" not in json.loads(encode_message(plain, utc_isoformat(moment)))


def test_a_gated_request_may_leave_the_sender_out() -> None:
    """senderId is required unless a gate fills it in; when given it is still validated."""
    from stomp_chat.app.chat import parse_chat_request

    body = json.dumps({"type": "TALK", "roomId": 1, "detailMessage": "x"}).encode()
    with pytest.raises(ApplicationError, match="senderId"):
        parse_chat_request(body)
    assert parse_chat_request(body, sender_required=False).sender_id == 0
    bad = json.dumps({"type": "TALK", "roomId": 1, "senderId": "me"}).encode()
    with pytest.raises(ApplicationError, match="senderId"):
        parse_chat_request(bad, sender_required=False)


def test_a_relayed_message_keeps_its_senders_name() -> None:
    """A message another server numbered keeps its senderName in this server's cache."""
    clock = Clock()
    store = MemoryChatStore()
    writer = WriteBehindWriter(store, clock)
    writer.startService()
    chat = ChatService(store, writer, Broker(), clock, sequencer=_OtherNodeSequencer())
    message = ChatMessage(5, 1, "5-1", "TALK", 9, "hi", datetime.fromtimestamp(1764000000, UTC),
                          "Nina")
    body = json.dumps(message.to_json_dict(), ensure_ascii=False).encode("utf-8")
    chat.relayed("/topic/chat/room/5", "other-node", body)
    state = chat.active_room(5)
    assert state is not None and state.recent[-1].sender_name == "Nina"


# -- storable text and room loading ----------------------------------------------------------

_UNSTORABLE = [
    b'{"type": "TALK", "roomId": 1, "senderId": 42, "detailMessage": "\\ud800"}',
    b'{"type": "TALK", "roomId": 1, "senderId": 42, "detailMessage": "x\\u0000y"}',
]


@pytest.mark.parametrize("body", _UNSTORABLE, ids=["lone surrogate", "NUL"])
def test_unstorable_text_to_a_loading_room_fails_alone(body: bytes) -> None:
    """Unstorable text sent while its room loads is refused as bad-request, and a valid
    message sent to the same room at the same moment is numbered, stored and receipted."""
    h = Harness()
    h.watch(1)
    before = h.talk(1, "before", receipt="r1", release=False)
    assert _refusal(lambda: h.send(body, receipt="bad", release=False)).code == "bad-request"
    after = h.talk(1, "after", receipt="r2", release=False)
    h.store.release()
    h.flush()
    assert [(b["seq"], b["detailMessage"]) for b in h.broadcasts(1)] == [
        (1, "before"), (2, "after")
    ]
    assert [_result(d).seq for d in (before, after)] == [1, 2]
    assert [(m.seq, m.text) for m in h.stored(1)] == [(1, "before"), (2, "after")]


@pytest.mark.parametrize("body", _UNSTORABLE, ids=["lone surrogate", "NUL"])
def test_unstorable_text_to_a_loaded_room_consumes_no_seq(body: bytes) -> None:
    """In an active room unstorable text is refused as bad-request, not an internal error,
    and the next message takes the next seq."""
    h = Harness()
    h.talk(1, "one")
    assert _refusal(lambda: h.send(body)).code == "bad-request"
    h.talk(1, "two")
    h.flush()
    assert _seqs(h.stored(1)) == [1, 2]


def test_an_unexpected_error_while_a_room_loads_fails_only_its_own_request() -> None:
    """A request that breaks unexpectedly while its room loads gets an internal error; the
    requests queued with it are still numbered and stored, in order."""

    def explode(request: ChatRequest, service: ChatService) -> str:
        raise RuntimeError("a bug in one message type")

    from stomp_chat.app.chat import MESSAGE_TYPES

    h = Harness(types={**MESSAGE_TYPES, "BOOM": explode})
    h.watch(1)
    first = h.talk(1, "first", release=False)
    broken = h.send({"type": "BOOM", "roomId": 1, "senderId": 1}, release=False)
    last = h.talk(1, "last", release=False)
    h.store.release()
    assert isinstance(broken, Deferred)
    assert _refusal(lambda: broken).code == "internal"
    assert [_result(d).seq for d in (first, last)] == [1, 2]
    h.flush()
    assert [m.text for m in h.stored(1)] == ["first", "last"]


# -- seq reservations ------------------------------------------------------------------------


class ReservationLog(MemoryChatStore):
    """The in-memory store, counting reservation writes, and holding them on request."""

    def __init__(self) -> None:
        super().__init__()
        self.reservations: list[int] = []
        self.hold = False
        self._held: list[tuple[Deferred[int], int, int]] = []

    def extend_seq_reservation(self, room_id: int, through: int) -> Deferred[int]:
        self.reservations.append(through)
        if not self.hold:
            return super().extend_seq_reservation(room_id, through)
        held: Deferred[int] = Deferred()
        self._held.append((held, room_id, through))
        return held

    def release_held(self) -> None:
        self.hold = False
        while self._held:
            held, room_id, through = self._held.pop(0)
            super().extend_seq_reservation(room_id, through).chainDeferred(held)


def test_seqs_are_reserved_in_blocks_ahead_of_need() -> None:
    """A busy room writes its reservation once per block, ahead of need, and blocks grow
    while the room stays busy; no message waits for the database."""
    store = ReservationLog()
    h = Harness(store)
    h.talk(1, "opens the room")
    for i in range(999):
        assert h.talk(1, f"m{i}") is None, "a message waited for the database"
    assert [b["seq"] for b in h.broadcasts(1)] == list(range(1, 1001))
    assert len(store.reservations) < 10, store.reservations
    state = h.chat.active_room(1)
    assert state is not None and state.reserved_through > state.last_seq == 1000
    assert _result(store.seq_floor(1)) == state.reserved_through


def test_messages_beyond_the_reservation_wait_for_it_in_order() -> None:
    """When the reserved seqs run out before the next reservation is written, messages wait
    for it, keep their order, and are numbered once it is durable."""
    store = ReservationLog()
    h = Harness(store)
    h.talk(1, "opens the room")
    state = h.chat.active_room(1)
    assert state is not None
    store.hold = True
    sent = [h.talk(1, f"m{i}") for i in range(state.reserved_through)]
    waiting = [d for d in sent if isinstance(d, Deferred)]
    assert waiting and not any(d.called for d in waiting)
    assert h.broadcasts(1)[-1]["seq"] == state.reserved_through
    store.release_held()
    seqs = [b["seq"] for b in h.broadcasts(1)]
    assert seqs == list(range(1, len(sent) + 2))
    assert all(d.called for d in waiting)


def test_a_crashed_service_never_reuses_a_seq_it_may_have_broadcast() -> None:
    """A ChatService that dies without storing its last messages (nor giving back its
    reservation): the next one over the same database starts past every seq handed out."""
    first = Harness(MemoryChatStore())
    for i in range(5):
        first.talk(1, f"stored {i}")
    first.flush()
    for i in range(3):
        first.talk(1, f"lost {i}")  # broadcast, never stored: the process dies here
    broadcast_before = {b["seq"]: b["detailMessage"] for b in first.broadcasts(1)}

    second = Harness(first.store, clock=first.clock)
    second.talk(1, "after the crash")
    [after] = second.broadcasts(1)
    assert after["seq"] > max(broadcast_before)
    second.flush()
    stored = {m.seq: m.text for m in second.stored(1)}
    for seq, text in stored.items():
        assert broadcast_before.get(seq, text) == text, f"seq {seq} was reused"


# -- room eviction ---------------------------------------------------------------------------


def test_an_idle_room_leaves_memory_and_comes_back_with_its_seq() -> None:
    """A room idle longer than room_idle_seconds is evicted; its next message reloads it and
    takes the next seq without a gap."""
    h = Harness(MemoryChatStore(), room_idle_seconds=600)
    h.talk(1, "one")
    h.talk(1, "two")
    h.clock.advance(599)
    h.talk(2, "keeps room 1 warm? no: room 1 was used 599 s ago")
    assert h.chat.active_room(1) is not None
    h.clock.advance(2)
    h.talk(2, "sweeps")
    assert h.chat.active_room(1) is None
    assert h.chat.active_room(2) is not None
    h.talk(1, "three")
    assert [b["seq"] for b in h.broadcasts(1)] == [1, 2, 3]
    h.flush()
    assert _seqs(h.stored(1)) == [1, 2, 3]


def test_rooms_beyond_max_active_rooms_are_evicted_least_recently_used_first() -> None:
    """With max_active_rooms=2 a third room evicts the least recently used one (by the
    second), whose next message continues its seq (its unsaved messages included)."""
    h = Harness(MemoryChatStore(), max_active_rooms=2)
    h.talk(1, "a1")
    h.talk(2, "b1")
    h.clock.advance(1)
    h.talk(1, "a2")
    h.talk(3, "c1")  # room 2 is the least recently used
    assert h.chat.active_room(2) is None
    assert h.chat.active_room(1) is not None and h.chat.active_room(3) is not None
    assert h.chat.active_room_count == 2
    h.talk(2, "b2")  # nothing stored yet: seq 1 is only in the writer's buffer
    assert [(b["seq"], b["detailMessage"]) for b in h.broadcasts(2)] == [(1, "b1"), (2, "b2")]
    page = _result(h.chat.history(2, 10))
    assert [(m.seq, m.text) for m in page] == [(1, "b1"), (2, "b2")]
    h.flush()
    assert _seqs(h.stored(2)) == [1, 2]


def test_a_room_with_waiting_messages_is_never_evicted() -> None:
    """A room whose messages wait for a reservation stays in memory past the room cap."""
    store = ReservationLog()
    h = Harness(store, max_active_rooms=1)
    h.talk(1, "opens room 1")
    state = h.chat.active_room(1)
    assert state is not None
    store.hold = True
    reserved = state.reserved_through
    waiting = [h.talk(1, f"m{i}") for i in range(reserved)][-1]
    assert isinstance(waiting, Deferred) and not waiting.called
    h.talk(2, "another room")
    assert h.chat.active_room(1) is state
    store.release_held()
    assert waiting.called
    assert [b["seq"] for b in h.broadcasts(1)] == list(range(1, reserved + 2))


@pytest.mark.parametrize("body", _UNSTORABLE, ids=["lone surrogate", "NUL"])
@pytest_twisted.ensureDeferred
async def test_unstorable_text_leaves_no_gap_in_a_real_database(
    database: TestDatabase, body: bytes
) -> None:
    """On SQLite and PostgreSQL, unstorable text is refused before numbering, to a room not
    yet loaded and to a loaded one, and the stored seqs have no gap."""
    from twisted.internet import reactor

    from stomp_chat.persistence import AdbapiChatStore, migrate

    pool = database.open_pool()
    await migrate(pool)
    store = AdbapiChatStore(pool)
    writer = WriteBehindWriter(store, reactor, flush_interval=0.01)
    writer.startService()
    chat = ChatService(store, writer, Broker(), reactor)
    context = AppContext("session-1", None, chat.broker)

    def send(raw: bytes) -> Deferred[Any] | None:
        frame = Frame("SEND", {"destination": "/app/message", "receipt": "r"}, raw)
        return chat.handle_message(frame, context, {})

    valid = json.dumps({**_TALK, "detailMessage": "valid"}).encode()
    with pytest.raises(ApplicationError) as refused:
        send(body)
    assert refused.value.code == "bad-request"
    first = send(valid)
    assert first is not None
    await first
    with pytest.raises(ApplicationError):
        send(body)
    second = send(valid)
    assert second is not None
    await second
    await writer.stopService()
    assert database.query("SELECT seq, text FROM messages ORDER BY seq") == [
        (1, "valid"), (2, "valid")
    ]


def test_a_reservation_the_database_refuses_is_retried_and_nothing_is_refused() -> None:
    """While the database refuses a room's next reservation, messages beyond the reserved
    seqs wait (none refused, none numbered); the reservation is retried with backoff, and
    once it is written they are numbered in order."""

    class DownStore(MemoryChatStore):
        down = False
        attempts = 0

        def extend_seq_reservation(self, room_id: int, through: int) -> Deferred[int]:
            self.attempts += 1
            if self.down:
                return fail(ConnectionError("database down"))
            return super().extend_seq_reservation(room_id, through)

    store = DownStore()
    h = Harness(store)
    h.talk(1, "opens the room")
    state = h.chat.active_room(1)
    assert state is not None
    store.down = True
    sent = [h.talk(1, f"m{i}", receipt=f"r{i}") for i in range(200)]
    numbered = len(h.broadcasts(1))
    assert numbered == state.reserved_through < 201
    h.clock.pump([0.1] * 30)
    assert store.attempts > 2, "the reservation is retried"
    assert len(h.broadcasts(1)) == numbered
    store.down = False
    h.clock.pump([0.1] * 50)
    assert [b["seq"] for b in h.broadcasts(1)] == list(range(1, 202))
    h.flush()
    for d in sent:
        assert isinstance(d, Deferred)
        _result(d)  # fired, and not with a refusal
    assert _seqs(h.stored(1)) == list(range(1, 202))


class _FixedSequencer:
    """Stands for Redis handing out a seq another message already holds."""

    node_id = "this-node"

    def __init__(self, seq: int) -> None:
        self.seq = seq

    def sequence_and_publish(self, *args: Any, **kwargs: Any) -> Deferred[int]:
        return succeed(self.seq)

    def follows(self, room_id: int) -> bool:
        return True

    def recent(self, room_id: int) -> Deferred[list[bytes]]:
        return succeed([])

    def forget(self, room_id: int, seq: int) -> Deferred[None]:
        return succeed(None)


def test_a_seq_collision_is_an_error_to_its_sender_never_a_receipt() -> None:
    """A durable message numbered with a seq the database already holds for another message
    is not stored; its sender gets a not-stored error instead of a receipt, and the other
    message stays."""
    clock = Clock()
    store = MemoryChatStore()
    writer = WriteBehindWriter(store, clock, flush_interval=FLUSH)
    writer.startService()
    original = ChatMessage(1, 7, "1-7", "TALK", 5, "first", datetime.fromtimestamp(1, UTC))
    store.save_messages([original])
    chat = ChatService(store, writer, Broker(), clock, sequencer=_FixedSequencer(7))
    body = json.dumps({**_TALK, "detailMessage": "second"}).encode()
    frame = Frame("SEND", {"destination": "/app/message", "receipt": "r"}, body)
    d = chat.handle_message(frame, AppContext("s", None, chat.broker), {})
    assert isinstance(d, Deferred) and not d.called
    clock.advance(FLUSH)
    assert _refusal(lambda: d).code == "not-stored"
    assert _result(store.load_messages(1, 10)) == [original]
    state = chat.active_room(1)
    assert state is not None and all(m.text != "second" for m in state.recent)


def test_a_room_that_cannot_be_loaded_is_an_application_error_logged_once() -> None:
    """With an OutageLog, a database failure while loading a room answers the sender with an
    'unavailable' application error and counts toward one outage; a later load ends it."""
    from stomp_chat.outage import OutageLog

    clock = Clock()
    store = MemoryChatStore()
    working = store.ensure_room
    store.ensure_room = (  # type: ignore[method-assign]
        lambda room_id: fail(ConnectionError("database down"))
    )
    outage = OutageLog("chat rooms loading", clock)
    chat = ChatService(store, WriteBehindWriter(store, clock), Broker(), clock, outage=outage)
    errors = []
    for room_id in (1, 2):
        request = ChatRequest("TALK", room_id, 7, "hi")
        chat.post(request).addErrback(lambda f: errors.append(f.value))
    assert [type(e) for e in errors] == [ApplicationError, ApplicationError]
    assert all(e.code == "unavailable" for e in errors)
    assert outage.in_outage and outage.failures == 2
    store.ensure_room = working  # type: ignore[method-assign]
    posted = []
    chat.post(ChatRequest("TALK", 3, 7, "back")).addCallback(posted.append)
    assert posted and not outage.in_outage


# -- administration ------------------------------------------------------------------------


def test_a_system_message_fires_once_stored_and_is_broadcast_like_chat() -> None:
    """post_system numbers a SYSTEM message (senderId 0) in the room's sequence, broadcasts
    it, and fires only once the write-behind stored it."""
    h = Harness(MemoryChatStore())
    h.talk(1, "before")
    posted = h.chat.post_system(1, "maintenance at noon")
    assert not posted.called, "fires only once stored"
    h.flush()
    message = _result(posted)
    assert (message.type, message.seq, message.sender_id) == ("SYSTEM", 2, 0)
    assert [(m.type, m.seq) for m in h.stored(1)] == [("TALK", 1), ("SYSTEM", 2)]
    assert h.broadcasts(1)[-1] == message.to_json_dict()


def test_clients_cannot_send_the_system_type() -> None:
    """A SEND with type SYSTEM is refused like any unknown type."""
    h = Harness(MemoryChatStore())
    error = _refusal(lambda: h.send({"type": "SYSTEM", "roomId": 1, "senderId": 1,
                                     "detailMessage": "fake"}))
    assert error.code == "invalid-message"
    assert h.broadcasts() == []


def test_deleting_an_unsaved_message_writes_it_first_then_removes_it() -> None:
    """A message still in the write-behind is stored before the delete runs, so the delete
    cannot be overtaken by its insert; the cache, history and subscribers follow."""
    h = Harness(MemoryChatStore())
    h.talk(1, "keep")
    h.talk(1, "remove me")
    deleting = h.chat.delete_message(1, 2)
    assert not deleting.called, "waits for the write-behind"
    h.flush()
    removed = _result(deleting)
    assert removed is not None and removed.text == "remove me"
    assert _seqs(h.stored(1)) == [1]
    assert _seqs(_result(h.chat.history(1, 10))) == [1]
    assert h.broadcasts(1)[-1] == {"type": "DELETE", "roomId": 1, "messageId": "1-2",
                                   "deletedSeq": 2}
    assert _result(h.chat.delete_message(1, 2)) is None
    assert len(h.broadcasts(1)) == 3, "nothing is announced for a message that is not there"


def test_a_delete_waiting_on_a_silent_database_gives_up_with_an_error() -> None:
    """If the message cannot be stored first (the database does not answer), the delete
    fails after DELETE_FLUSH_TIMEOUT with an 'unavailable' error instead of hanging."""
    from stomp_chat.app.chat import DELETE_FLUSH_TIMEOUT

    class SilentStore(MemoryChatStore):
        def save_messages(self, messages: Any) -> Deferred[Any]:
            return Deferred()

    h = Harness(SilentStore())
    h.talk(1, "stuck")
    deleting = h.chat.delete_message(1, 1)
    h.flush()
    h.clock.advance(DELETE_FLUSH_TIMEOUT)
    error = _refusal(lambda: deleting)
    assert error.code == "unavailable"


def test_a_relayed_delete_drops_the_message_from_this_servers_cache() -> None:
    """Cluster mode: another server's DELETE event removes the message from this cache."""
    clock = Clock()
    store = MemoryChatStore()
    writer = WriteBehindWriter(store, clock)
    writer.startService()
    chat = ChatService(store, writer, Broker(), clock, sequencer=_OtherNodeSequencer())
    chat.relayed("/topic/chat/room/5", "other-node", _relayed_body(5, 1, "one"))
    chat.relayed("/topic/chat/room/5", "other-node", _relayed_body(5, 2, "two"))
    event = {"type": "DELETE", "roomId": 5, "messageId": "5-2", "deletedSeq": 2}
    chat.relayed("/topic/chat/room/5", "other-node", json.dumps(event).encode())
    state = chat.active_room(5)
    assert state is not None and [m.seq for m in state.recent] == [1]
