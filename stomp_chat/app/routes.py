"""Application destinations: a route table for ``/app/...``.

In the spirit of Spring's ``@MessageMapping``: a handler is registered for a
path with ``{variables}``, receives the SEND frame and a context, and may
publish to the broker. Frames sent to ``/app/...`` never reach subscribers
directly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from stomp_chat.broker import APP_PREFIX, Broker, Message
from stomp_chat.errors import ApplicationError
from stomp_chat.identity import Principal
from stomp_chat.stomp.frame import Frame

__all__ = ["AppContext", "AppRouter", "ApplicationError", "Handler", "NoHandler"]


class NoHandler(Exception):
    """No application handler is registered for a destination."""


@dataclass(slots=True)
class AppContext:
    """What a handler may know and do on behalf of the sending session."""

    session_id: str
    #: Who is speaking, or ``None`` for an anonymous client.
    principal: Principal | None
    broker: Broker

    @property
    def user_key(self) -> str:
        """The name ``/user/`` destinations of this session route by."""
        return self.principal.user_id if self.principal is not None else self.session_id

    def publish(
        self, destination: str, body: bytes, headers: dict[str, str] | None = None
    ) -> Message:
        return self.broker.publish(destination, body, headers)

    def reply_to_user(
        self, destination: str, body: bytes, headers: dict[str, str] | None = None
    ) -> Message:
        """Send to ``/user/queue/...`` of the sending user (``@SendToUser``)."""
        return self.broker.send_to_user(self.user_key, destination, body, headers)


#: A handler returns ``None`` when done, or a Deferred that fires once the
#: message is durable (the session sends the RECEIPT then).
Handler = Callable[[Frame, AppContext, dict[str, str]], "Deferred[Any] | None"]

_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class AppRouter:
    """Maps ``/app/...`` destinations to handlers."""

    def __init__(self) -> None:
        self._exact: dict[str, Handler] = {}
        self._patterns: list[tuple[re.Pattern[str], Handler]] = []
        #: Per registered destination (exact, or the regex text of a pattern).
        self._requirements: dict[str, tuple[str, ...]] = {}

    def add(self, path: str, handler: Handler, requires: Iterable[str] | None = None) -> None:
        """Register ``handler`` for ``/app`` + ``path``, e.g. ``/rooms/{roomId}/send``.

        ``requires`` names who may send there, as the authorization rules
        write it (``["role:ops"]``, ``["user:alice"]``); by default anyone
        authenticated. It is not enforced with ``--auth none``.
        """
        if not path.startswith("/"):
            raise ValueError(f"application paths start with '/': {path!r}")
        destination = APP_PREFIX.rstrip("/") + path
        if "{" not in path:
            self._exact[destination] = handler
            if requires is not None:
                self._requirements[destination] = tuple(requires)
            return
        parts = _VARIABLE.split(destination)  # literal, name, literal, ...
        regex = "".join(
            re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)"
            for i, part in enumerate(parts)
        )
        self._patterns.append((re.compile(regex + r"\Z"), handler))
        if requires is not None:
            self._requirements[regex + r"\Z"] = tuple(requires)

    def route(self, path: str) -> Callable[[Handler], Handler]:
        """Decorator form of ``add``."""

        def register(handler: Handler) -> Handler:
            self.add(path, handler)
            return handler

        return register

    def resolve(self, destination: str) -> tuple[Handler, dict[str, str]]:
        handler = self._exact.get(destination)
        if handler is not None:
            return handler, {}
        for regex, candidate in self._patterns:
            match = regex.match(destination)
            if match:
                return candidate, match.groupdict()
        raise NoHandler(f"no application handler for {destination}")

    def requirement(self, destination: str) -> tuple[str, ...] | None:
        """What the route of ``destination`` requires of a sender (None: no declaration).

        Raises NoHandler when no route matches.
        """
        if destination in self._exact:
            return self._requirements.get(destination)
        for regex, _ in self._patterns:
            if regex.match(destination):
                return self._requirements.get(regex.pattern)
        raise NoHandler(f"no application handler for {destination}")

    def dispatch(self, frame: Frame, context: AppContext) -> Deferred[Any] | None:
        """Run the handler of the frame's destination."""
        handler, variables = self.resolve(frame.headers["destination"])
        return handler(frame, context, variables)
