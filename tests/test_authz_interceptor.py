"""The authorization interceptor and its destination policy, against the interceptor contract.

Sessions are SessionView stand-ins carrying a Principal; the rooms, rules and router are real.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from stomp_chat.app.routes import AppRouter
from stomp_chat.authz.interceptor import AuthorizationInterceptor
from stomp_chat.authz.policy import DestinationPolicy
from stomp_chat.authz.rooms import RoomAccess
from stomp_chat.authz.rules import RuleSet
from stomp_chat.authz.store import AdbapiRoomAccessStore, MemoryRoomAccessStore
from stomp_chat.errors import ApplicationError, AuthError, ProtocolError
from stomp_chat.identity import ConnectionInfo, Principal
from stomp_chat.interceptors import Interceptor
from stomp_chat.persistence import MemoryChatStore
from stomp_chat.stomp.frame import Frame
from tests.silentdb import SilentPool
from tests.stompfakes import Client, make_context

ALICE = Principal("alice", "Alice")
BOB = Principal("bob", "Bob")
OPS = Principal("olga", "Olga", frozenset({"ops"}))
ADMIN = Principal("root", "Root", frozenset({"admin"}))

RULES = [
    {"destination": "/topic/ops.**", "subscribe": ["role:ops"], "send": ["user:alice"]},
    {"destination": "/user/*/queue/pager", "send": ["role:ops"]},
    {"destination": "/queue/jobs", "subscribe": ["authenticated"], "send": ["authenticated"]},
]


@dataclass
class Session:
    """What an interceptor sees of a session."""

    principal: Principal | None
    session_id: str = "s1"
    version: str = "1.2"
    connection: ConnectionInfo = field(default_factory=ConnectionInfo)

    def authenticated(self, principal: Principal) -> None:
        self.principal = principal


def _noop(*args: Any) -> None:
    return None


class Setup:
    def __init__(self, enforce: bool = True) -> None:
        self.chat_store = MemoryChatStore()
        self.rooms = RoomAccess(self.chat_store, MemoryRoomAccessStore(self.chat_store), Clock())
        self.router = AppRouter()
        self.router.add("/message", _noop)
        self.router.add("/ops/{action}", _noop, requires=["role:ops"])
        self.policy = DestinationPolicy(
            enforce=enforce,
            rules=RuleSet.from_config(RULES),
            rooms=self.rooms,
            router=self.router,
        )
        self.interceptor: Interceptor = AuthorizationInterceptor(self.policy)

    def run(self, command: str, destination: str, principal: Principal | None) -> Frame:
        """Pass one frame; return it if allowed, raise as the interceptor refuses."""
        headers = {"destination": destination, "id": "sub-1"}
        frame = Frame(command, headers, b"{}" if command == "SEND" else b"")
        result = self.interceptor.inbound(frame, Session(principal))
        if isinstance(result, Deferred):
            box: list[Any] = []
            result.addBoth(box.append)
            assert box, "the decision is still waiting"
            if isinstance(box[0], Exception):
                raise box[0]
            if hasattr(box[0], "raiseException"):
                box[0].raiseException()
            return box[0]
        return result


def test_forged_room_messages_are_refused_in_every_mode() -> None:
    """A client SEND straight to a room topic (or a user's error queue) is refused, even with
    --auth none: only the application publishes there."""
    for enforce in (False, True):
        setup = Setup(enforce)
        for destination in ("/topic/chat/room/1", "/topic/chat/room/1/x",
                            "/user/bob/queue/errors"):
            with pytest.raises(ApplicationError) as refused:
                setup.run("SEND", destination, ALICE)
            assert refused.value.code == "forbidden"


def test_forged_unread_counts_are_refused_in_every_mode() -> None:
    """A client SEND to another user's (or its own) /user/.../queue/unread is refused, even
    with --auth none: only the server pushes unread counts there."""
    for enforce in (False, True):
        setup = Setup(enforce)
        for destination in ("/user/bob/queue/unread", "/user/alice/queue/unread"):
            with pytest.raises(ApplicationError) as refused:
                setup.run("SEND", destination, ALICE)
            assert refused.value.code == "forbidden"
        assert setup.run("SEND", "/user/bob/queue/unread-notes", ALICE).command == "SEND"


def test_with_auth_none_everything_else_passes() -> None:
    """--auth none keeps the seed's openness: any SUBSCRIBE, any other SEND, no principal."""
    setup = Setup(enforce=False)
    for destination in ("/topic/anything", "/user/bob/queue/x", "/topic/chat/room/3"):
        assert setup.run("SUBSCRIBE", destination, None).headers["destination"] == destination
    assert setup.run("SEND", "/topic/anything", None).command == "SEND"
    assert setup.run("SEND", "/app/ops/restart", None).command == "SEND"


def test_the_chain_hands_it_subscribe_frames_only_when_rules_are_enforced() -> None:
    """Without enforced rules no SUBSCRIBE is refused, so the session's chain skips it there."""
    assert Setup(enforce=False).interceptor.commands == {"SEND"}  # type: ignore[attr-defined]
    assert Setup(enforce=True).interceptor.commands == {  # type: ignore[attr-defined]
        "SEND", "SUBSCRIBE"}


def test_with_auth_none_app_sends_pass_and_owned_topics_stay_refused_in_one_chain() -> None:
    """Through a session's chain with --auth none: /app/ SENDs reach the handler, a SEND to a
    room topic is still reported as forbidden."""
    setup = Setup(enforce=False)
    handled: list[str] = []
    setup.router.add("/ping", lambda frame, context, variables: handled.append("ping"))
    context = make_context(router=setup.router, interceptors=[setup.interceptor])
    client = Client(context)
    client.connect("1.2")
    client.send("SUBSCRIBE", {"destination": "/user/queue/errors", "id": "e"})
    client.send("SEND", {"destination": "/app/ping"}, b"{}")
    client.send("SEND", {"destination": "/topic/chat/room/1"}, b"{}")
    assert handled == ["ping"]
    (error,) = [f for f in client.frames() if f.command == "MESSAGE"]
    assert json.loads(error.body)["error"] == "forbidden"


def test_other_frames_pass_untouched() -> None:
    """ACK, BEGIN, DISCONNECT... are not the authorizer's business."""
    setup = Setup()
    frame = Frame("BEGIN", {"transaction": "t"})
    assert setup.interceptor.inbound(frame, Session(None)) is frame


def test_room_topics_follow_the_room_rules() -> None:
    """Anyone signed in subscribes to a public room; a private one takes members and admins."""
    setup = Setup()
    private = setup.rooms.create_room("team", None, True, ALICE)
    room_id = private.result.id  # type: ignore[attr-defined]
    setup.run("SUBSCRIBE", "/topic/chat/room/50", BOB)  # missing: created public
    setup.run("SUBSCRIBE", f"/topic/chat/room/{room_id}", ALICE)
    setup.run("SUBSCRIBE", f"/topic/chat/room/{room_id}", ADMIN)
    with pytest.raises(AuthError) as refused:
        setup.run("SUBSCRIBE", f"/topic/chat/room/{room_id}", BOB)
    assert refused.value.message == "access denied"
    assert "private" not in refused.value.detail  # the client is not told why
    for odd in ("/topic/chat/room/abc", "/topic/chat/room/0", "/topic/chat/room/1/x",
                "/topic/chat/room/presence", f"/topic/chat/room/{room_id}/presence/x"):
        with pytest.raises(AuthError):
            setup.run("SUBSCRIBE", odd, ALICE)


def test_a_rooms_presence_topic_is_read_like_the_room() -> None:
    """Who is in a room may be watched by whoever may read the room, and by nobody else."""
    setup = Setup()
    private = setup.rooms.create_room("team", None, True, ALICE)
    room_id = private.result.id  # type: ignore[attr-defined]
    setup.run("SUBSCRIBE", "/topic/chat/room/50/presence", BOB)
    setup.run("SUBSCRIBE", f"/topic/chat/room/{room_id}/presence", ALICE)
    with pytest.raises(AuthError):
        setup.run("SUBSCRIBE", f"/topic/chat/room/{room_id}/presence", BOB)


def test_user_destinations() -> None:
    """Own /user/queue/... may be subscribed, another user's never; DMs pass unless a rule
    decides them."""
    setup = Setup()
    setup.run("SUBSCRIBE", "/user/queue/inbox", BOB)
    setup.run("SUBSCRIBE", "/user/queue/errors", BOB)
    for other in ("/user/alice/queue/inbox", "/user/bob/queue/inbox"):
        with pytest.raises(AuthError):
            setup.run("SUBSCRIBE", other, ADMIN)
    setup.run("SEND", "/user/alice/queue/inbox", BOB)
    with pytest.raises(ApplicationError):
        setup.run("SEND", "/user/alice/queue/pager", BOB)
    setup.run("SEND", "/user/alice/queue/pager", OPS)


def test_a_user_id_with_a_slash_gets_no_user_destinations() -> None:
    """User "bob/queue" subscribing to /user/queue/x would route as bob's /user/queue/queue/x:
    refused."""
    setup = Setup()
    with pytest.raises(AuthError):
        setup.run("SUBSCRIBE", "/user/queue/x", Principal("bob/queue", "Mallory"))


def test_configured_rules_decide_and_the_rest_is_denied() -> None:
    """Rules allow by user and role; a destination no rule allows is refused."""
    setup = Setup()
    setup.run("SUBSCRIBE", "/topic/ops.alerts", OPS)
    setup.run("SEND", "/topic/ops.alerts", ALICE)
    setup.run("SUBSCRIBE", "/queue/jobs", BOB)
    with pytest.raises(AuthError):
        setup.run("SUBSCRIBE", "/topic/ops.alerts", ALICE)
    with pytest.raises(ApplicationError):
        setup.run("SEND", "/topic/ops.alerts", OPS)
    with pytest.raises(AuthError):
        setup.run("SUBSCRIBE", "/topic/unlisted", ADMIN)
    with pytest.raises(ApplicationError):
        setup.run("SEND", "/queue/unlisted", ADMIN)


def test_app_routes_require_what_they_declare() -> None:
    """An /app route with requires= takes only those principals; others take anyone signed in;
    nobody signed in sends nowhere."""
    setup = Setup()
    setup.run("SEND", "/app/message", BOB)
    setup.run("SEND", "/app/ops/restart", OPS)
    with pytest.raises(ApplicationError):
        setup.run("SEND", "/app/ops/restart", BOB)
    setup.run("SEND", "/app/unknown", BOB)  # the session answers unknown routes itself
    with pytest.raises(ApplicationError, match="not authenticated"):
        setup.run("SEND", "/app/message", None)
    with pytest.raises(AuthError):
        setup.run("SUBSCRIBE", "/user/queue/x", None)


def test_enforcing_needs_the_rooms() -> None:
    """A policy that enforces without room access is a programming error caught at build."""
    with pytest.raises(ValueError):
        DestinationPolicy(enforce=True)


def test_a_subscribe_the_database_does_not_decide_in_time_is_an_error_to_retry() -> None:
    """When the room look-up outlives the database timeout, the SUBSCRIBE is refused with a
    clear ERROR ("authorization unavailable", try again), not left waiting or reported as an
    internal error; the client is not told it is denied."""
    clock = Clock()
    chat_store = MemoryChatStore()
    silent = AdbapiRoomAccessStore(SilentPool(), timeout=3, clock=clock)  # type: ignore[arg-type]
    rooms = RoomAccess(chat_store, silent, clock)
    policy = DestinationPolicy(enforce=True, rules=RuleSet.from_config([]), rooms=rooms)
    interceptor = AuthorizationInterceptor(policy)
    frame = Frame("SUBSCRIBE", {"destination": "/topic/chat/room/5", "id": "1"})
    decided = interceptor.inbound(frame, Session(BOB))
    assert isinstance(decided, Deferred)
    outcome: list[Any] = []
    decided.addBoth(outcome.append)
    clock.advance(2.9)
    assert outcome == []
    clock.advance(0.1)
    [failure] = outcome
    assert failure.check(ProtocolError) and not failure.check(AuthError)
    assert failure.value.message == "authorization unavailable"
    assert "try again" in failure.value.detail
