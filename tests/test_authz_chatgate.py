"""The chat gate: the sender is the principal, and only members speak in a room.

A real ChatService, broker and in-memory stores on a task.Clock; the gate and its
RoomAccess are the real ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from stomp_chat.app.chat import ChatService, encode_message
from stomp_chat.app.routes import AppContext
from stomp_chat.authz.chatgate import ChatGate
from stomp_chat.authz.rooms import RoomAccess
from stomp_chat.authz.store import AdbapiRoomAccessStore, MemoryRoomAccessStore
from stomp_chat.broker import Broker, Message, Subscription
from stomp_chat.errors import ApplicationError
from stomp_chat.identity import AUTH_JWT, Principal
from stomp_chat.persistence import MemoryChatStore, WriteBehindWriter, utc_isoformat
from stomp_chat.stomp.frame import Frame
from tests.silentdb import SilentPool

ALICE = Principal("alice", "Alice A.", method=AUTH_JWT)
BOB = Principal("bob", "Bob", method=AUTH_JWT)


class Recorder:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def deliver(self, subscription: Subscription, message: Message) -> None:
        self.messages.append(message)


class HeldAccessStore(MemoryRoomAccessStore):
    """Answers membership look-ups only on release(), as a database answers later."""

    def __init__(self, chat_store: MemoryChatStore) -> None:
        super().__init__(chat_store)
        self.held: list[tuple[Deferred[Any], Callable[[], Deferred[Any]]]] = []

    def is_member(self, room_id: int, member_id: int) -> Deferred[bool]:
        held: Deferred[bool] = Deferred()
        self.held.append((held, lambda: MemoryRoomAccessStore.is_member(self, room_id, member_id)))
        return held

    def release(self) -> None:
        while self.held:
            held, answer = self.held.pop(0)
            answer().chainDeferred(held)


class Harness:
    def __init__(self, held: bool = False, silent: bool = False) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = MemoryChatStore()
        self.access_store: Any = (
            HeldAccessStore(self.store) if held else MemoryRoomAccessStore(self.store)
        )
        if silent:  # a database that never answers, each look-up bounded by 3 s
            self.access_store = AdbapiRoomAccessStore(SilentPool(), timeout=3, clock=self.clock)
        self.rooms = RoomAccess(self.store, self.access_store, self.clock)
        self.gate = ChatGate(self.rooms, max_waiting=3)
        self.broker = Broker()
        self.writer = WriteBehindWriter(self.store, self.clock, flush_interval=1.0)
        self.writer.startService()
        self.chat = ChatService(self.store, self.writer, self.broker, self.clock, gate=self.gate)
        self.recorder = Recorder()

    def watch(self, room_id: int) -> None:
        topic = f"/topic/chat/room/{room_id}"
        self.broker.subscribe(Subscription(self.recorder, topic, topic), "watcher")

    def send(
        self, principal: Principal | None, body: dict[str, Any], session: str = "s1"
    ) -> Any:
        frame = Frame("SEND", {"destination": "/app/message"}, json.dumps(body).encode())
        context = AppContext(session, principal, self.broker)  # type: ignore[arg-type]
        return self.chat.handle_message(frame, context, {})

    def broadcasts(self) -> list[dict[str, Any]]:
        return [json.loads(m.body) for m in self.recorder.messages]

    def member_id(self, principal: Principal) -> int:
        value = self.rooms.member_id(principal)
        assert isinstance(value, int)
        return value


def _failure_of(result: Any) -> ApplicationError:
    assert isinstance(result, Deferred)
    failures: list[Failure] = []
    result.addErrback(failures.append)
    assert failures, "expected the request to be refused"
    error = failures[0].value
    assert isinstance(error, ApplicationError)
    return error


def refused(send: Callable[[], Any]) -> ApplicationError:
    """The refusal of a request, raised at once (cached answers) or through its Deferred."""
    try:
        result = send()
    except ApplicationError as error:
        return error
    return _failure_of(result)


def test_the_broadcast_names_the_principal_not_the_body() -> None:
    """Without senderId in the body, the broadcast carries the principal's member id and name,
    in the same bytes as json.dumps of the stored message."""
    h = Harness()
    h.watch(1)
    h.send(ALICE, {"type": "ENTER", "roomId": 1})
    h.send(ALICE, {"type": "TALK", "roomId": 1, "detailMessage": "hi \u00e9\""})
    alice = h.member_id(ALICE)
    assert [(b["type"], b["senderId"], b["senderName"]) for b in h.broadcasts()] == [
        ("ENTER", alice, "Alice A."), ("TALK", alice, "Alice A."),
    ]
    state = h.chat.active_room(1)
    assert state is not None
    stored = state.recent[-1]
    assert stored.sender_name == "Alice A."
    body = h.recorder.messages[-1].body
    assert body == json.dumps(stored.to_json_dict(), ensure_ascii=False).encode()
    assert body == encode_message(stored, utc_isoformat(stored.created_at))
    assert list(json.loads(body)) == [
        "type", "roomId", "detailMessage", "senderId", "senderName", "messageId", "seq",
        "createdAt",
    ]


def test_a_sender_id_of_someone_else_is_refused() -> None:
    """A body whose senderId is not the principal's own is an application error `forbidden`
    and reaches no one; the principal's own id is accepted."""
    h = Harness()
    h.watch(1)
    h.send(BOB, {"type": "ENTER", "roomId": 1})
    bob = h.member_id(BOB)
    h.send(ALICE, {"type": "ENTER", "roomId": 1})
    before = len(h.recorder.messages)
    error = refused(lambda: h.send(
        ALICE, {"type": "TALK", "roomId": 1, "senderId": bob, "detailMessage": "I am Bob"}
    ))
    assert error.code == "forbidden"
    assert len(h.recorder.messages) == before
    alice = h.member_id(ALICE)
    h.send(ALICE, {"type": "TALK", "roomId": 1, "senderId": alice, "detailMessage": "me"})
    assert h.broadcasts()[-1]["senderId"] == alice


def test_talking_in_a_public_room_needs_an_enter_first() -> None:
    """A non-member's TALK is refused; ENTER into a public room joins it, and TALK then works."""
    h = Harness()
    h.watch(5)
    error = refused(lambda: h.send(ALICE, {"type": "TALK", "roomId": 5, "detailMessage": "x"}))
    assert error.code == "forbidden" and "enter room 5" in error.message
    h.send(ALICE, {"type": "ENTER", "roomId": 5})
    h.send(ALICE, {"type": "TALK", "roomId": 5, "detailMessage": "now"})
    assert [b["type"] for b in h.broadcasts()] == ["ENTER", "TALK"]
    members = h.store.list_members(5)
    assert [m.name for m in members.result] == ["alice"]  # type: ignore[attr-defined]


def test_a_private_room_takes_messages_from_members_only() -> None:
    """A non-member can neither ENTER nor TALK in a private room; its creator can."""
    h = Harness()
    room = h.rooms.create_room("secret", None, True, ALICE).result  # type: ignore[attr-defined]
    h.watch(room.id)
    for kind in ("ENTER", "TALK"):
        error = refused(lambda kind=kind: h.send(
            BOB, {"type": kind, "roomId": room.id, "detailMessage": "let me in"}
        ))
        assert error.code == "forbidden" and "private" in error.message
    h.send(ALICE, {"type": "TALK", "roomId": room.id, "detailMessage": "members only"})
    assert [b["detailMessage"] for b in h.broadcasts()] == ["members only"]


def test_nobody_signed_in_is_refused() -> None:
    """Without a principal the gate refuses to let anyone speak."""
    h = Harness()
    error = refused(lambda: h.send(None, {"type": "ENTER", "roomId": 1, "senderId": 3}))
    assert error.code == "forbidden" and "sign in" in error.message


def test_a_sessions_messages_keep_their_order_while_the_database_answers() -> None:
    """ENTER then TALK, both waiting for a membership look-up, come out in order."""
    h = Harness(held=True)
    h.watch(1)
    first = h.send(ALICE, {"type": "ENTER", "roomId": 1})
    second = h.send(ALICE, {"type": "TALK", "roomId": 1, "detailMessage": "after enter"})
    assert isinstance(first, Deferred) and isinstance(second, Deferred)
    assert h.broadcasts() == []
    while h.access_store.held:
        h.access_store.release()
    assert [b["type"] for b in h.broadcasts()] == ["ENTER", "TALK"]
    assert [b["seq"] for b in h.broadcasts()] == [1, 2]


def test_the_queue_behind_a_look_up_is_bounded() -> None:
    """A session cannot queue more than max_waiting messages behind a database look-up."""
    h = Harness(held=True)
    pending = [h.send(ALICE, {"type": "ENTER", "roomId": 1}) for _ in range(4)]
    assert all(isinstance(p, Deferred) for p in pending)
    with pytest.raises(ApplicationError) as busy:
        h.send(ALICE, {"type": "ENTER", "roomId": 1})
    assert busy.value.code == "busy"
    # another session is not held back by this one's queue
    other = h.send(BOB, {"type": "ENTER", "roomId": 1}, session="s2")
    assert isinstance(other, Deferred)
    while h.access_store.held:
        h.access_store.release()


def test_a_refused_request_does_not_hold_back_the_next() -> None:
    """A refusal while others wait is reported and the requests behind it still pass."""
    h = Harness(held=True)
    h.watch(1)
    enter = h.send(ALICE, {"type": "ENTER", "roomId": 1})
    forged = h.send(ALICE, {"type": "TALK", "roomId": 1, "senderId": 999, "detailMessage": "x"})
    talk = h.send(ALICE, {"type": "TALK", "roomId": 1, "detailMessage": "fine"})
    while h.access_store.held:
        h.access_store.release()
    assert _failure_of(forged).code == "forbidden"
    assert isinstance(enter, Deferred) and isinstance(talk, Deferred)
    assert [b["detailMessage"] for b in h.broadcasts()][1:] == ["fine"]


def test_messages_the_database_cannot_check_in_time_are_refused_unavailable() -> None:
    """When the membership look-up outlives the database timeout, the message is refused
    ``unavailable`` (send it again), in order with what waited behind it, and nothing is
    broadcast: no hang, no internal error."""
    h = Harness(silent=True)
    h.watch(1)
    first = h.send(ALICE, {"type": "ENTER", "roomId": 1})
    second = h.send(ALICE, {"type": "TALK", "roomId": 1, "detailMessage": "hello"})
    outcomes: list[Any] = []
    first.addBoth(outcomes.append)
    second.addBoth(outcomes.append)
    h.clock.advance(2.9)
    assert outcomes == []
    h.clock.advance(0.1)
    assert len(outcomes) == 1
    h.clock.advance(3)
    assert [failure.value.code for failure in outcomes] == ["unavailable", "unavailable"]
    assert "room 1 cannot be checked now; try again" == outcomes[0].value.message
    assert h.broadcasts() == []
