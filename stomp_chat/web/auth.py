"""Authentication and cross-site protection for the REST API under ``/api``.

``ApiGate`` stands in front of the API: it refuses state-changing requests
from browser origins that are not allowed (403), answers unauthenticated
requests with 401 outside ``--auth none``, serves ``POST /api/login``, and
leaves the principal on the request for the handlers (``principal_of``).
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from stomp_chat.auth.authenticators import (
    FAILED,
    AuthenticationUnavailable,
    FailureGate,
    JwtAuthenticator,
    PasswordAuthenticator,
    bearer_token,
    refused,
)
from stomp_chat.auth.origins import origin_allowed
from stomp_chat.auth.tokens import JwtVerifier, LoginTokens, TokenRejected
from stomp_chat.errors import AuthError
from stomp_chat.identity import AUTH_JWT, AUTH_NONE, AUTH_PASSWORD, ConnectionInfo, Principal
from stomp_chat.persistence import utc_isoformat
from stomp_chat.web.json import error_body, write_json

log = Logger()

#: Methods that change state: refused from browser origins that are not allowed.
STATE_CHANGING = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})
#: The largest ``POST /api/login`` body read.
MAX_LOGIN_BYTES = 4096
_REALM = 'realm="stomp-chat"'
_PRINCIPAL = "stomp_chat_principal"


def principal_of(request: Request) -> Principal | None:
    """Who made this request (``None`` with ``--auth none``)."""
    principal: Principal | None = getattr(request, _PRINCIPAL, None)
    return principal


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    if value is None:
        return None
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _connection_of(request: Request) -> ConnectionInfo:
    """The request's client: behind a trusted proxy, the one it forwarded for (whose
    port is not known, so none is shown)."""
    peer = request.getClientAddress()
    host = getattr(peer, "host", "") or ""
    port = getattr(peer, "port", "")
    return ConnectionInfo(peer=f"{host}:{port}" if port else host, peer_host=host,
                          transport="http")


class RestAuthenticator:
    """Who a REST request comes from: a Bearer token, or Basic in ``password`` mode."""

    def __init__(
        self,
        mode: str,
        *,
        gate: FailureGate | None = None,
        jwt: JwtAuthenticator | None = None,
        passwords: PasswordAuthenticator | None = None,
        login_tokens: LoginTokens | None = None,
    ) -> None:
        if mode == AUTH_JWT and jwt is None:
            raise ValueError("jwt mode needs a JwtAuthenticator")
        if mode == AUTH_PASSWORD and (passwords is None or login_tokens is None):
            raise ValueError("password mode needs a PasswordAuthenticator and LoginTokens")
        self.mode = mode
        self.gate = gate
        self.jwt = jwt
        self.passwords = passwords
        self.login_tokens = login_tokens

    @property
    def challenge(self) -> bytes:
        schemes = [f"Bearer {_REALM}"]
        if self.mode == AUTH_PASSWORD:
            schemes.append(f'Basic {_REALM}, charset="UTF-8"')
        return ", ".join(schemes).encode("ascii")

    def _attempt(self, connection: ConnectionInfo, check: Any, *args: Any) -> Deferred[Principal]:
        if self.gate is None:
            return maybeDeferred(check, *args)
        return self.gate.attempt(connection, check, *args)

    def authenticate(self, request: Request) -> Deferred[Principal | None]:
        """Fires with the principal (``None`` in ``none`` mode) or fails with ``AuthError``."""
        if self.mode == AUTH_NONE:
            return succeed(None)
        connection = _connection_of(request)
        header = (_header(request, b"authorization") or "").strip()
        token = bearer_token(header)
        if token is not None:
            checked = self._attempt(connection, self._token, token, connection)
            if self.mode == AUTH_PASSWORD and self.passwords is not None:
                checked.addCallback(self.passwords.token_user, connection)
            return checked.addCallback(_optional)
        scheme, _, credentials = header.partition(" ")
        if self.mode == AUTH_PASSWORD and scheme.lower() == "basic":
            login, password = _basic(credentials)
            assert self.passwords is not None
            return self._attempt(
                connection, self.passwords.check, login, password, connection
            ).addCallback(_optional)
        return fail(MissingCredentials("authentication required"))

    def _token(self, token: str, connection: ConnectionInfo) -> Principal:
        verifier: JwtVerifier | LoginTokens | None = (
            self.jwt.verifier if self.mode == AUTH_JWT and self.jwt else self.login_tokens
        )
        if verifier is None:
            raise refused("no token accepted in this mode", connection, None)
        try:
            return verifier.verify(token)
        except TokenRejected as error:
            raise refused(str(error), connection, None) from None

    def login(self, login: str, password: str, request: Request) -> Deferred[dict[str, Any]]:
        """``POST /api/login``: a password for a token (password mode only)."""
        assert self.passwords is not None and self.login_tokens is not None
        connection = _connection_of(request)
        tokens = self.login_tokens

        def issue(principal: Principal) -> dict[str, Any]:
            token, expires = tokens.issue(principal)
            return {
                "token": token,
                "expiresAt": utc_isoformat(datetime.fromtimestamp(expires, UTC)),
                "user": {"id": principal.user_id, "name": principal.name,
                         "roles": sorted(principal.roles)},
            }

        checked = self._attempt(connection, self.passwords.check, login, password, connection)
        return checked.addCallback(issue)


def _optional(principal: Principal) -> Principal | None:
    return principal


class MissingCredentials(AuthError):
    """The request carried no credentials this server takes."""


def _basic(credentials: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    login, _, password = decoded.partition(":")
    return login, password


class ApiGate(Resource):
    """``/api``: origin check, authentication and ``/api/login`` before the API itself."""

    isLeaf = True

    def __init__(
        self, api: Resource, authenticator: RestAuthenticator, allowed_origins: list[str]
    ) -> None:
        super().__init__()
        self.api = api
        self.authenticator = authenticator
        self.allowed_origins = list(allowed_origins)

    def render(self, request: Request) -> bytes | int:
        request.setHeader(b"x-content-type-options", b"nosniff")
        if request.method in STATE_CHANGING and not self._origin_ok(request):
            return error_body(request, 403, "forbidden-origin",
                              "this origin may not change anything here")
        if request.postpath in ([b"login"], [b"login", b""]):
            return self._render_login(request)
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = self.authenticator.authenticate(request)
        d.addCallbacks(self._authenticated, self._unauthenticated,
                       callbackArgs=(request, gone), errbackArgs=(request, gone))
        return NOT_DONE_YET

    def _origin_ok(self, request: Request) -> bool:
        origin = _header(request, b"origin")
        if origin is None and _header(request, b"sec-fetch-site") == "cross-site":
            origin = "null"  # a browser that hid the origin: treat it as foreign
        host = request.getHost()
        return origin_allowed(
            origin, self.allowed_origins, getattr(host, "host", ""), getattr(host, "port", 0)
        )

    def _authenticated(
        self, principal: Principal | None, request: Request, gone: list[bool]
    ) -> None:
        if gone:
            return
        setattr(request, _PRINCIPAL, principal)
        result = self.api.render(request)
        if result is not NOT_DONE_YET:
            assert isinstance(result, bytes)
            _finish(request, result, gone)

    def _unauthenticated(self, failure: Failure, request: Request, gone: list[bool]) -> None:
        if failure.check(MissingCredentials):
            body = error_body(request, 401, "unauthenticated", "authentication required")
        elif failure.check(AuthError):
            body = error_body(request, 401, "invalid-credentials", FAILED)
        else:
            if not failure.check(AuthenticationUnavailable):
                log.failure("REST authentication failed unexpectedly", failure)
            body = error_body(request, 503, "unavailable", "the server could not check "
                                                           "credentials; try again")
        if request.code == 401:
            request.setHeader(b"www-authenticate", self.authenticator.challenge)
        _finish(request, body, gone)

    def _render_login(self, request: Request) -> bytes | int:
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST")
            return error_body(request, 405, "method-not-allowed", "use POST to log in")
        if self.authenticator.mode != AUTH_PASSWORD:
            return error_body(request, 404, "login-unavailable",
                              "this server does not log in with passwords")
        raw = request.content.read(MAX_LOGIN_BYTES + 1) if request.content else b""
        try:
            body = json.loads(raw) if len(raw) <= MAX_LOGIN_BYTES else None
        except (ValueError, UnicodeDecodeError):
            body = None
        login = body.get("login") if isinstance(body, dict) else None
        password = body.get("password") if isinstance(body, dict) else None
        if not isinstance(login, str) or not isinstance(password, str):
            return error_body(request, 400, "invalid-login",
                              'send {"login": ..., "password": ...} as JSON')
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = self.authenticator.login(login, password, request)
        d.addCallbacks(lambda answer: _finish(request, write_json(request, 200, answer), gone),
                       self._unauthenticated, errbackArgs=(request, gone))
        return NOT_DONE_YET


def _finish(request: Request, body: bytes, gone: list[bool]) -> None:
    if gone:  # the client went away while the answer was being prepared
        return
    request.write(body)
    request.finish()
