"""The inbound pipeline's contract: what an interceptor sees and may do.

Every frame a client sends passes through an ordered chain of interceptors
before the broker or an ``/app`` handler sees it, as Spring's
``ChannelInterceptor`` on the client inbound channel. Authentication,
authorization, rate limiting and audit logging are interceptors; a deployment
adds its own from configuration (``interceptors = ["pkg.module:factory"]``).
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred

from stomp_chat.identity import ConnectionInfo, Principal
from stomp_chat.stomp.frame import Frame


class SessionView(Protocol):
    """What an interceptor may know of the session a frame came from."""

    @property
    def session_id(self) -> str: ...

    @property
    def version(self) -> str:
        """The negotiated STOMP version (``1.0`` until CONNECTED)."""

    @property
    def connection(self) -> ConnectionInfo: ...

    @property
    def principal(self) -> Principal | None:
        """Who is speaking; ``None`` until CONNECT is authenticated."""

    def authenticated(self, principal: Principal) -> None:
        """Say who the client is; only while its CONNECT passes the chain."""


class Interceptor(Protocol):
    """One link of the inbound chain.

    Return the frame to pass it on (or a changed copy of it), or a Deferred
    firing with one: the connection stops reading until it fires. Raise
    ``ProtocolError``/``AuthError`` to answer with ERROR and close, or
    ``ApplicationError`` to report on ``/user/queue/errors`` and drop the frame
    while the connection stays open.

    An interceptor may say which commands it acts on in a ``commands``
    attribute (a set of command names); it then never sees other frames, so
    one that only cares about CONNECT costs nothing on the chat's SENDs.
    Without the attribute it sees every frame. The chain a frame passes is
    chosen by the command it arrives with.
    """

    def inbound(self, frame: Frame, session: SessionView) -> Frame | Deferred[Frame]: ...


def handles(interceptor: Interceptor, command: str) -> bool:
    """Whether ``interceptor`` wants to see ``command`` frames."""
    commands = getattr(interceptor, "commands", None)
    return commands is None or command in commands
