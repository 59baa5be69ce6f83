"""Unit tests for stomp_chat.app.routes: the /app route table and handler context."""

from __future__ import annotations

import pytest
from twisted.internet.defer import succeed

from stomp_chat.app.routes import AppContext, ApplicationError, AppRouter, NoHandler
from stomp_chat.broker import Broker, Subscription
from stomp_chat.identity import Principal
from stomp_chat.stomp.frame import Frame


def handler_named(name: str):
    def handler(frame, context, variables):
        return (name, variables)

    return handler


def frame_to(destination: str, body: bytes = b"") -> Frame:
    return Frame("SEND", {"destination": destination}, body)


def context(principal: Principal | None = None) -> AppContext:
    return AppContext("session-1", principal, Broker())


def test_exact_path_resolves():
    """A path without variables resolves to its handler with no variables."""
    router = AppRouter()
    handler = handler_named("ping")
    router.add("/ping", handler)
    assert router.resolve("/app/ping") == (handler, {})


def test_variable_path_resolves_with_its_values():
    """{variables} in a path capture one segment each."""
    router = AppRouter()
    handler = handler_named("send")
    router.add("/rooms/{roomId}/messages/{kind}", handler)
    found, variables = router.resolve("/app/rooms/lobby/messages/text")
    assert found is handler
    assert variables == {"roomId": "lobby", "kind": "text"}


def test_variable_matches_unicode_segment():
    """A variable captures non-ASCII segments such as Korean room names."""
    router = AppRouter()
    router.add("/rooms/{room}", handler_named("r"))
    assert router.resolve("/app/rooms/대화방")[1] == {"room": "대화방"}


@pytest.mark.parametrize(
    "destination",
    [
        "/app/rooms/a/b",  # a variable never spans a slash
        "/app/rooms/",  # nor matches an empty segment
        "/app/rooms",
        "/app/rooms/a/extra/x",
        "/app/other",
        "/topic/rooms/a",
        "/app/rooms/a/",
    ],
)
def test_non_matching_destinations_raise_no_handler(destination):
    """A destination no route matches raises NoHandler."""
    router = AppRouter()
    router.add("/rooms/{room}", handler_named("r"))
    with pytest.raises(NoHandler):
        router.resolve(destination)


def test_empty_router_has_no_handler():
    """With nothing registered every destination raises NoHandler."""
    with pytest.raises(NoHandler):
        AppRouter().resolve("/app/anything")


def test_exact_route_wins_over_pattern():
    """An exact path takes precedence over a pattern that also matches."""
    router = AppRouter()
    pattern, exact = handler_named("pattern"), handler_named("exact")
    router.add("/rooms/{room}", pattern)
    router.add("/rooms/special", exact)
    assert router.resolve("/app/rooms/special")[0] is exact
    assert router.resolve("/app/rooms/other")[0] is pattern


def test_first_registered_pattern_wins():
    """Among overlapping patterns the first registered is used."""
    router = AppRouter()
    first, second = handler_named("1"), handler_named("2")
    router.add("/x/{a}", first)
    router.add("/x/{b}", second)
    assert router.resolve("/app/x/y") == (first, {"a": "y"})


def test_regex_characters_in_paths_are_literal():
    """Characters special to regular expressions match only themselves."""
    router = AppRouter()
    router.add("/a.b/{id}", handler_named("dot"))
    router.resolve("/app/a.b/1")
    with pytest.raises(NoHandler):
        router.resolve("/app/aXb/1")


def test_path_must_start_with_slash():
    """Registering a path without a leading slash is a ValueError."""
    with pytest.raises(ValueError):
        AppRouter().add("rooms", handler_named("x"))


def test_route_decorator_registers_and_returns_the_handler():
    """@router.route(path) registers the function and leaves it usable."""
    router = AppRouter()

    @router.route("/echo/{word}")
    def echo(frame, ctx, variables):
        return variables["word"]

    assert echo(None, None, {"word": "hi"}) == "hi"
    assert router.resolve("/app/echo/x") == (echo, {"word": "x"})


def test_dispatch_calls_handler_with_frame_context_and_variables():
    """dispatch runs the handler with the SEND frame, the context and path variables."""
    router = AppRouter()
    calls = []

    def handler(frame, ctx, variables):
        calls.append((frame, ctx, variables))
        return succeed("done")

    router.add("/rooms/{room}/send", handler)
    frame, ctx = frame_to("/app/rooms/lobby/send", b"hi"), context()
    d = router.dispatch(frame, ctx)
    assert calls == [(frame, ctx, {"room": "lobby"})]
    assert d is not None and d.called and d.result == "done"


def test_dispatch_without_handler_raises_no_handler():
    """dispatch of an unrouted destination raises NoHandler."""
    with pytest.raises(NoHandler):
        AppRouter().dispatch(frame_to("/app/none"), context())


def test_dispatch_propagates_application_error():
    """An ApplicationError from a handler reaches the caller with its message and code."""
    router = AppRouter()

    def refuse(frame, ctx, variables):
        raise ApplicationError("bad json", code="invalid")

    router.add("/x", refuse)
    with pytest.raises(ApplicationError) as excinfo:
        router.dispatch(frame_to("/app/x"), context())
    assert (excinfo.value.message, excinfo.value.code) == ("bad json", "invalid")


def test_application_error_default_code():
    """ApplicationError's code defaults to bad-request."""
    assert ApplicationError("x").code == "bad-request"


def test_context_user_key_prefers_principal():
    """The /user/ routing key is the principal's user id, or the session id when anonymous."""
    assert context(Principal("u-alice", "Alice")).user_key == "u-alice"
    assert context(None).user_key == "session-1"


class Recorder:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def deliver(self, subscription, message) -> None:
        self.bodies.append(message.body)


def test_context_publish_and_reply_to_user():
    """A handler's context publishes to the broker and replies to its own user only."""
    ctx = context(Principal("alice", "Alice"))
    topic, mine, theirs = Recorder(), Recorder(), Recorder()
    ctx.broker.subscribe(Subscription(topic, "0", "/topic/t"), "x")
    ctx.broker.subscribe(Subscription(mine, "0", "/user/queue/replies"), "alice")
    ctx.broker.subscribe(Subscription(theirs, "0", "/user/queue/replies"), "bob")
    ctx.publish("/topic/t", b"all")
    ctx.reply_to_user("/user/queue/replies", b"you")
    assert topic.bodies == [b"all"]
    assert mine.bodies == [b"you"]
    assert theirs.bodies == []


def test_routes_declare_what_they_require() -> None:
    """A route's requires= is kept per route (exact or with variables); undeclared is None;
    an unknown destination is NoHandler."""

    def handler(frame: Frame, context: AppContext, variables: dict[str, str]) -> None:
        return None

    router = AppRouter()
    router.add("/message", handler)
    router.add("/ops/restart", handler, requires=["role:ops"])
    router.add("/rooms/{roomId}/kick", handler, requires=("role:admin", "user:alice"))
    assert router.requirement("/app/message") is None
    assert router.requirement("/app/ops/restart") == ("role:ops",)
    assert router.requirement("/app/rooms/7/kick") == ("role:admin", "user:alice")
    with pytest.raises(NoHandler):
        router.requirement("/app/nowhere")
