"""Unit tests for stomp_chat.session.authentication: authentication as the first interceptor."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred

from stomp_chat.errors import AuthError
from stomp_chat.identity import ConnectionInfo, Principal
from stomp_chat.session import AnonymousAuthenticator, AuthenticationInterceptor
from stomp_chat.stomp.frame import Frame


class View:
    """A SessionView that records what it is told."""

    session_id = "s1"
    version = "1.0"
    principal = None

    def __init__(self) -> None:
        self.connection = ConnectionInfo(peer="192.0.2.1:1", peer_host="192.0.2.1")
        self.told: list[Principal] = []

    def authenticated(self, principal: Principal) -> None:
        self.told.append(principal)


class Fixed:
    def __init__(self, result) -> None:
        self.result = result
        self.calls: list[tuple[Frame, ConnectionInfo]] = []

    def authenticate(self, frame, connection):
        self.calls.append((frame, connection))
        return self.result


@pytest.mark.parametrize("command", ["CONNECT", "STOMP"])
def test_connect_is_authenticated_with_the_connection(command):
    """CONNECT and STOMP go to the authenticator with the ConnectionInfo; the principal is set."""
    principal = Principal("u1", "Una")
    authenticator = Fixed(principal)
    view = View()
    frame = Frame(command, {"login": "una"})
    assert AuthenticationInterceptor(authenticator).inbound(frame, view) is frame
    assert authenticator.calls == [(frame, view.connection)]
    assert view.told == [principal]


def test_other_frames_pass_untouched():
    """Frames other than CONNECT/STOMP never reach the authenticator."""
    authenticator = Fixed(Principal("u1", "Una"))
    frame = Frame("SEND", {"destination": "/topic/t"})
    assert AuthenticationInterceptor(authenticator).inbound(frame, View()) is frame
    assert authenticator.calls == []


def test_deferred_principal_is_set_when_it_fires():
    """A Deferred authentication gives a Deferred frame and sets the principal when it fires."""
    pending: Deferred = Deferred()
    view = View()
    frame = Frame("CONNECT", {})
    result = AuthenticationInterceptor(Fixed(pending)).inbound(frame, view)
    assert isinstance(result, Deferred)
    assert view.told == []
    passed = []
    result.addCallback(passed.append)
    pending.callback(Principal("u2", "Dee"))
    assert passed == [frame]
    assert view.told == [Principal("u2", "Dee")]


def test_refusal_propagates():
    """An AuthError raised by the authenticator leaves the interceptor unchanged."""

    class Refusing:
        def authenticate(self, frame, connection):
            raise AuthError("bad credentials")

    with pytest.raises(AuthError):
        AuthenticationInterceptor(Refusing()).inbound(Frame("CONNECT", {}), View())


def test_anonymous_authenticator_names_nobody():
    """The default authenticator accepts everyone without a principal."""
    view = View()
    AuthenticationInterceptor(AnonymousAuthenticator()).inbound(Frame("CONNECT", {}), view)
    assert view.told == []
