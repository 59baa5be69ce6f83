"""The CONNECT authenticators of ``--auth none|password|jwt``.

Each turns a CONNECT frame and what the transport knew of the connection
into a ``Principal``, or raises ``AuthError``. Every refusal reads the same to
the client ("authentication failed"); the reason goes to the server's log,
never the secret.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Generator
from dataclasses import replace
from typing import Any, Protocol, cast

from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from stomp_chat.auth.passwords import PasswordVerifier
from stomp_chat.auth.throttle import FailureThrottle
from stomp_chat.auth.tokens import JwtVerifier, LoginTokens, TokenRejected, looks_like_jwt
from stomp_chat.auth.users import User, UserStore
from stomp_chat.errors import AuthError, ProtocolError
from stomp_chat.identity import AUTH_NONE, AUTH_PASSWORD, ConnectionInfo, Principal
from stomp_chat.persistence import database_unavailable
from stomp_chat.stomp.frame import Frame

log = Logger()

#: What every refused client reads, whatever the reason.
FAILED = "authentication failed"
FAILED_DETAIL = "the credentials were not accepted"

#: What a client reads when the users table does not answer (within ``--db-timeout``).
UNAVAILABLE = "authentication unavailable"


class AuthenticationUnavailable(ProtocolError):
    """Credentials could not be checked (the users table did not answer in time): the
    client should try again; already logged where it was found out."""

#: The cookie and query parameter a browser may carry a token in on the WebSocket handshake.
TOKEN_PARAMETER = "access_token"


def refused(reason: str, connection: ConnectionInfo, login: str | None) -> AuthError:
    """Log why (never the secret) and build the error the client sees."""
    log.info(
        "authentication refused for {login} from {peer}: {reason}",
        login=repr(login) if login else "a client without a login",
        peer=connection.peer or connection.peer_host,
        reason=reason,
    )
    return AuthError(FAILED, FAILED_DETAIL)


class CredentialCheck(Protocol):
    """What the mode's authenticators here share: a principal, or ``AuthError``."""

    def authenticate(
        self, frame: Frame, connection: ConnectionInfo
    ) -> Principal | Deferred[Principal]: ...


class NoneAuthenticator:
    """``--auth none``: anyone connects as the ``login`` they give, or as a guest."""

    def authenticate(self, frame: Frame, connection: ConnectionInfo) -> Principal:
        login = frame.headers.get("login", "").strip()
        if not login:
            login = f"guest-{secrets.token_hex(4)}"
        return Principal(user_id=login, name=login, method=AUTH_NONE)


def bearer_token(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def connect_token(frame: Frame, connection: ConnectionInfo) -> str | None:
    """Where a client may put its token, in order: the CONNECT frame's
    ``Authorization`` header or ``passcode``, then the WebSocket handshake's
    ``Authorization`` header, ``?access_token=`` or ``access_token`` cookie."""
    headers = frame.headers
    token = bearer_token(headers.get("Authorization") or headers.get("authorization"))
    if token:
        return token
    passcode = headers.get("passcode")
    if passcode:
        return passcode
    token = bearer_token(connection.headers.get("authorization"))
    if token:
        return token
    values = connection.query.get(TOKEN_PARAMETER)
    if values and values[0]:
        return values[0]
    return connection.cookies.get(TOKEN_PARAMETER) or None


class JwtAuthenticator:
    """``--auth jwt``: a token signed by the configured key, from any ``login``."""

    def __init__(self, verifier: JwtVerifier) -> None:
        self.verifier = verifier

    def authenticate(self, frame: Frame, connection: ConnectionInfo) -> Principal:
        token = connect_token(frame, connection)
        login = frame.headers.get("login")
        if token is None:
            raise refused("no token", connection, login)
        try:
            return self.verifier.verify(token)
        except TokenRejected as error:
            raise refused(str(error), connection, login) from None


def user_principal(user: User) -> Principal:
    """A password user: the name is the user id (``/user/{name}/queue/...``)."""
    return Principal(
        user_id=user.name,
        name=user.name,
        roles=user.roles,
        method=AUTH_PASSWORD,
        claims={"uid": user.id, PASSWORD_CLAIM: password_fingerprint(user.password_hash)},
    )


#: The login-token claim naming the password it was issued for (a fingerprint of its hash).
PASSWORD_CLAIM = "pwd"


def password_fingerprint(password_hash: str) -> str:
    """Changes whenever the password is set again (the hash has a fresh salt), so a login
    token issued before a reset, or for a user removed and added again, is refused."""
    return hashlib.sha256(password_hash.encode("utf-8")).hexdigest()[:16]


class PasswordAuthenticator:
    """``--auth password``: ``login``/``passcode`` checked against the users table.

    A ``passcode`` that is a token from ``POST /api/login`` is taken as well, so
    a web page that logged in once connects without keeping the password.
    """

    def __init__(
        self, users: UserStore, verifier: PasswordVerifier, tokens: LoginTokens | None = None
    ) -> None:
        self.users = users
        self.verifier = verifier
        self.tokens = tokens

    def authenticate(self, frame: Frame, connection: ConnectionInfo) -> Deferred[Principal]:
        login = frame.headers.get("login", "")
        passcode = frame.headers.get("passcode", "")
        return self.check(login, passcode, connection)

    @inlineCallbacks
    def check(
        self, login: str, passcode: str, connection: ConnectionInfo
    ) -> Generator[Deferred[Any], Any, Principal]:
        if self.tokens is not None and looks_like_jwt(passcode):
            try:
                principal = self.tokens.verify(passcode)
            except TokenRejected:
                pass  # perhaps a password that looks like a token
            else:
                if not login or login == principal.user_id:
                    current = yield self.token_user(principal, connection)
                    return current
        if not login or not passcode:
            raise refused("login or passcode missing", connection, login)
        user = yield self._find(login)
        matches = yield self.verifier.verify(user.password_hash if user else None, passcode)
        if user is None:
            raise refused("no such user", connection, login)
        if not matches:
            raise refused("wrong password", connection, login)
        return user_principal(user)

    def _find(self, name: str) -> Deferred[User | None]:
        return self.users.find(name).addErrback(_users_unavailable, name)

    @inlineCallbacks
    def token_user(
        self, principal: Principal, connection: ConnectionInfo
    ) -> Generator[Deferred[Any], Any, Principal]:
        """A login token's principal as its user is now: refused once the user is removed or
        its password set again; roles are the user's current ones."""
        user = yield self._find(principal.user_id)
        if user is None:
            raise refused("token of a removed user", connection, principal.user_id)
        issued_for = principal.claims.get(PASSWORD_CLAIM)
        if issued_for is not None and issued_for != password_fingerprint(user.password_hash):
            raise refused("token issued before a password change", connection, principal.user_id)
        return replace(principal, roles=user.roles)


def _users_unavailable(failure: Failure, login: str) -> Failure:
    """The users table did not answer (in time): the client is told to try again, not that
    its credentials failed, and the failure throttle ignores it."""
    if not database_unavailable(failure.value):
        return failure
    log.warn("cannot check the credentials of {login}: {error}", login=repr(login),
             error=failure.getErrorMessage())
    raise AuthenticationUnavailable(UNAVAILABLE,
                                    "the server could not check credentials; try again")


class FailureGate:
    """Runs authentication attempts, slowing addresses that failed repeatedly
    (see ``FailureThrottle``); shared by STOMP CONNECT and the REST API."""

    def __init__(self, throttle: FailureThrottle, clock: Any) -> None:
        self.throttle = throttle
        self.clock = clock

    def attempt(self, connection: ConnectionInfo, check: Any, *args: Any) -> Deferred[Principal]:
        """Run ``check(*args)`` once the address may try again; count its failure."""
        address = connection.peer_host or connection.peer
        wait = self.throttle.delay(address)
        d: Deferred[Principal]
        if wait > 0:
            log.info("slowing authentication from {address}: {wait:.1f}s after repeated "
                     "failures", address=address, wait=wait)
            d = deferLater(self.clock, wait, check, *args)
        else:
            d = maybeDeferred(check, *args)

        def failed(failure: Any) -> Any:
            if failure.check(AuthError):
                self.throttle.failed(address)
            return failure

        return d.addErrback(failed)


class ThrottledAuthenticator:
    """An authenticator whose attempts pass a ``FailureGate``."""

    def __init__(self, inner: CredentialCheck, gate: FailureGate) -> None:
        self.inner = inner
        self.gate = gate

    def authenticate(
        self, frame: Frame, connection: ConnectionInfo
    ) -> Deferred[Principal | None]:
        attempt = self.gate.attempt(connection, self.inner.authenticate, frame, connection)
        return cast("Deferred[Principal | None]", attempt)
