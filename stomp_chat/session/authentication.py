"""Authentication as the first link of the inbound chain.

An ``Authenticator`` turns a CONNECT frame and what is known of the
connection into a ``Principal``; ``AuthenticationInterceptor`` runs it on
CONNECT/STOMP and tells the session who is speaking. While a slow check
(a password hash, a database) runs, the session stops reading.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred

from stomp_chat.identity import ConnectionInfo, Principal
from stomp_chat.interceptors import SessionView
from stomp_chat.stomp.frame import Frame

CONNECT_COMMANDS = frozenset({"CONNECT", "STOMP"})


class Authenticator(Protocol):
    """Turns CONNECT credentials into a principal, or refuses with ``AuthError``."""

    def authenticate(
        self, frame: Frame, connection: ConnectionInfo
    ) -> Principal | None | Deferred[Principal | None]:
        """Return who the client is (``None``: an anonymous client), or raise ``AuthError``."""


class AnonymousAuthenticator:
    """Everyone may connect; nobody has a name (``/user/`` routes by session id)."""

    def authenticate(self, frame: Frame, connection: ConnectionInfo) -> None:
        return None


class AuthenticationInterceptor:
    """Authenticates CONNECT and STOMP frames; every other frame passes untouched."""

    #: The session's chain hands it these frames only.
    commands = CONNECT_COMMANDS

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    def inbound(self, frame: Frame, session: SessionView) -> Frame | Deferred[Frame]:
        if frame.command not in CONNECT_COMMANDS:
            return frame
        result = self.authenticator.authenticate(frame, session.connection)
        if isinstance(result, Deferred):
            return result.addCallback(self._authenticated, frame, session)
        return self._authenticated(result, frame, session)

    @staticmethod
    def _authenticated(principal: Principal | None, frame: Frame, session: SessionView) -> Frame:
        if principal is not None:
            session.authenticated(principal)
        return frame


__all__ = [
    "AnonymousAuthenticator",
    "AuthenticationInterceptor",
    "Authenticator",
]
