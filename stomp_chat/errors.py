"""The errors a client's frame can end in, and what the client sees of each.

Typed here, below every layer that raises them, so that an interceptor, the
broker's rules or an ``/app`` handler can refuse a frame without importing
the session; the session turns them into frames in one place.
"""

from __future__ import annotations

from stomp_chat.stomp.frame import Frame


class ProtocolError(Exception):
    """A frame the server cannot accept: STOMP ERROR, then the connection closes."""

    def __init__(self, message: str, detail: str = "", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail or message
        self.headers = headers or {}


class AuthError(ProtocolError):
    """Credentials the server refuses, or a frame the principal may not send.

    The message must help no attacker: it says what failed, never why.
    """


class ApplicationError(Exception):
    """A request the application refuses (bad JSON, unknown room, not a member...).

    The client is told on ``/user/queue/errors`` and keeps its connection.
    """

    def __init__(self, message: str, *, code: str = "bad-request") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def required_header(frame: Frame, name: str) -> str:
    """The value of a header the frame's command cannot do without."""
    value = frame.headers.get(name)
    if value is None:
        raise ProtocolError(
            f"missing header '{name}'", f"{frame.command} requires a '{name}' header"
        )
    return value
