"""The authorization interceptor: SUBSCRIBE and SEND checked on the way in.

A refused SUBSCRIBE is an ERROR (``access denied``) and the connection
closes, as a client must not believe it is subscribed; a refused SEND is an
application error with code ``forbidden`` on ``/user/queue/errors`` and the
connection stays.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from stomp_chat.authz.policy import DestinationPolicy
from stomp_chat.errors import ApplicationError, AuthError
from stomp_chat.interceptors import SessionView
from stomp_chat.stomp.frame import Frame

log = Logger()

FORBIDDEN = "forbidden"
ACCESS_DENIED = "access denied"


class AuthorizationInterceptor:
    """Runs ``DestinationPolicy`` on every SEND and SUBSCRIBE."""

    #: The session's chain hands it these frames only.
    commands = frozenset({"SEND", "SUBSCRIBE"})

    def __init__(self, policy: DestinationPolicy) -> None:
        self.policy = policy

    def inbound(self, frame: Frame, session: SessionView) -> Frame | Deferred[Frame]:
        command = frame.command
        if command == "SEND":
            destination = frame.headers.get("destination")
            if destination is not None:
                reason = self.policy.may_send(destination, session.principal)
                if reason is not None:
                    self._refused(session, command, destination, reason)
                    raise ApplicationError(reason, code=FORBIDDEN)
            return frame
        if command == "SUBSCRIBE":
            destination = frame.headers.get("destination")
            if destination is None:
                return frame  # the session refuses it as malformed
            decided = self.policy.may_subscribe(destination, session.principal)
            if isinstance(decided, Deferred):
                return decided.addCallback(self._subscribe_decided, frame, session, destination)
            return self._subscribe_decided(decided, frame, session, destination)
        return frame

    def _subscribe_decided(
        self, reason: str | None, frame: Frame, session: SessionView, destination: str
    ) -> Frame:
        if reason is None:
            return frame
        self._refused(session, "SUBSCRIBE", destination, reason)
        # Why stays in the log: the client is not told whether a room exists.
        raise AuthError(ACCESS_DENIED, f"you may not subscribe to {destination}")

    @staticmethod
    def _refused(session: SessionView, command: str, destination: str, reason: str) -> None:
        principal: Any = session.principal
        log.info(
            "refused {command} {destination} from {user} (session {session}): {reason}",
            command=command,
            destination=destination,
            user=principal.user_id if principal is not None else "-",
            session=session.session_id,
            reason=reason,
        )
