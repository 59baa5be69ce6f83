"""Unit tests for stomp_chat.session.loading: interceptors named in the configuration."""

from __future__ import annotations

import pytest

from stomp_chat.errors import ProtocolError
from stomp_chat.session.loading import (
    InterceptorLoadError,
    load_interceptor,
    parse_interceptor_names,
)
from stomp_chat.stomp.frame import Frame
from tests.stompfakes import Client, make_context


class NoProfanity:
    """An example deployment interceptor: refuses SENDs whose body says 'darn'."""

    def inbound(self, frame, session):
        if frame.command == "SEND" and b"darn" in frame.body:
            raise ProtocolError("language", "this server keeps it clean")
        return frame


class Tagging:
    """Adds an x-seen-by header naming itself, to show the order interceptors ran in."""

    name = "tagging"

    def inbound(self, frame, session):
        if frame.command != "SEND":
            return frame
        seen = frame.headers.get("x-seen-by", "")
        return Frame(frame.command, {**frame.headers, "x-seen-by": seen + self.name + ";"},
                     frame.body)


class Second(Tagging):
    name = "second"


def broken_factory():
    raise RuntimeError("no config")


NOT_CALLABLE = 42


def no_inbound():
    return object()


def test_names_are_split_and_trimmed():
    """A comma-separated list becomes names, blanks dropped."""
    assert parse_interceptor_names(" a.b:C , ,d.e:F.g ") == ["a.b:C", "d.e:F.g"]
    assert parse_interceptor_names("") == []


@pytest.mark.parametrize("value", ["a.b", ":C", "a.b:"])
def test_names_without_module_and_factory_are_refused(value):
    """A name that is not 'package.module:factory' is refused, naming it."""
    with pytest.raises(InterceptorLoadError, match="package.module:factory"):
        parse_interceptor_names(value)


def test_load_builds_the_interceptor():
    """The factory is imported and called with no arguments."""
    assert isinstance(load_interceptor("tests.test_session_loading:NoProfanity"), NoProfanity)


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("tests.no_such_module:X", "cannot import"),
        ("tests.test_session_loading:Missing", "has no 'Missing'"),
        ("tests.test_session_loading:NOT_CALLABLE", "not callable"),
        ("tests.test_session_loading:broken_factory", "failed to start: no config"),
        ("tests.test_session_loading:no_inbound", "no inbound"),
    ],
)
def test_load_failures_say_what_went_wrong(name, says):
    """Every way a configured name can be wrong gives an InterceptorLoadError saying which."""
    with pytest.raises(InterceptorLoadError, match=says):
        load_interceptor(name)


def test_loaded_interceptors_run_in_order_and_can_reject():
    """Loaded interceptors see frames in the configured order, and one may refuse a frame."""
    chain = [load_interceptor(f"tests.test_session_loading:{name}")
             for name in ("Tagging", "Second", "NoProfanity")]
    context = make_context(interceptors=chain)
    watcher = Client(make_context(broker=context.broker))
    watcher.connect()
    watcher.send("SUBSCRIBE", {"destination": "/topic/t", "id": "1"})
    client = Client(context)
    client.connect()
    client.send("SEND", {"destination": "/topic/t"}, b"hello")
    (message,) = watcher.frames()
    assert message.headers["x-seen-by"] == "tagging;second;"
    client.send("SEND", {"destination": "/topic/t"}, b"oh darn")
    error = client.frames()[-1]
    assert (error.command, error.headers["message"]) == ("ERROR", "language")
    assert client.closed
    assert watcher.frames() == []
