"""Interceptors a real server loads with --interceptors in the end-to-end tests."""

from __future__ import annotations

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred

from stomp_chat.errors import ProtocolError
from stomp_chat.stomp.frame import Frame

#: How long SlowSends holds a SEND marked ``x-slow``.
SLOW_SECONDS = 0.5


class SlowSends:
    """Holds each SEND carrying an ``x-slow`` header for a while, as a remote check would."""

    def inbound(self, frame: Frame, session: object) -> Frame | Deferred[Frame]:
        if frame.command == "SEND" and "x-slow" in frame.headers:
            return task.deferLater(reactor, SLOW_SECONDS, lambda: frame)  # type: ignore[arg-type]
        return frame


class RefuseForbidden:
    """Refuses a SEND whose body is exactly b"forbidden"."""

    def inbound(self, frame: Frame, session: object) -> Frame:
        if frame.command == "SEND" and frame.body == b"forbidden":
            raise ProtocolError("forbidden word", "this server does not carry that word")
        return frame
