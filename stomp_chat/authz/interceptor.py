"""The authorization interceptor: SUBSCRIBE and SEND checked on the way in.

A refused SUBSCRIBE is an ERROR (``access denied``) and the connection
closes, as a client must not believe it is subscribed; a refused SEND is an
application error with code ``forbidden`` on ``/user/queue/errors`` and the
connection stays. A SUBSCRIBE the database did not decide on (within ``--db-timeout``) is
an ERROR too (``authorization unavailable``: try again), never a hang.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from stomp_chat.authz.policy import DestinationPolicy
from stomp_chat.broker import APP_PREFIX
from stomp_chat.errors import ApplicationError, AuthError, ProtocolError
from stomp_chat.interceptors import SessionView
from stomp_chat.persistence import database_unavailable
from stomp_chat.stomp.frame import Frame

log = Logger()

FORBIDDEN = "forbidden"
ACCESS_DENIED = "access denied"
#: A SUBSCRIBE the database could not decide on in time (the client may try again).
UNAVAILABLE = "authorization unavailable"

_SEND = frozenset({"SEND"})
_SEND_AND_SUBSCRIBE = frozenset({"SEND", "SUBSCRIBE"})


class AuthorizationInterceptor:
    """Runs ``DestinationPolicy`` on every SEND and SUBSCRIBE."""

    def __init__(self, policy: DestinationPolicy) -> None:
        self.policy = policy
        #: The frames the session's chain hands it: without enforced rules no
        #: SUBSCRIBE is refused.
        self.commands = _SEND_AND_SUBSCRIBE if policy.enforce else _SEND
        #: Without enforced rules a SEND to /app/ needs no check.
        self._checks_app_sends = policy.enforce

    def inbound(self, frame: Frame, session: SessionView) -> Frame | Deferred[Frame]:
        command = frame.command
        if command == "SEND":
            destination = frame.headers.get("destination")
            if destination is None:
                return frame
            if not self._checks_app_sends and destination.startswith(APP_PREFIX):
                return frame  # every chat message passes here: a branch, not the policy
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
                checked = decided.addCallback(self._subscribe_decided, frame, session, destination)
                return checked.addErrback(self._subscribe_unchecked, session, destination)
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
    def _subscribe_unchecked(failure: Failure, session: SessionView, destination: str) -> Failure:
        """The database did not answer (in time): the client is told to try again."""
        if not database_unavailable(failure.value):
            return failure
        log.warn(
            "cannot check SUBSCRIBE {destination} (session {session}): {error}",
            destination=destination,
            session=session.session_id,
            error=failure.getErrorMessage(),
        )
        raise ProtocolError(
            UNAVAILABLE, f"the server could not check access to {destination}; try again"
        )

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
