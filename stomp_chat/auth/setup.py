"""Building the authentication of one server from its parsed options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service

from stomp_chat.auth.authenticators import (
    FailureGate,
    JwtAuthenticator,
    NoneAuthenticator,
    PasswordAuthenticator,
    ThrottledAuthenticator,
)
from stomp_chat.auth.passwords import PasswordVerifier
from stomp_chat.auth.throttle import FailureThrottle
from stomp_chat.auth.tokens import JwtVerifier, LoginTokens
from stomp_chat.auth.users import UserStore
from stomp_chat.identity import AUTH_JWT, AUTH_PASSWORD
from stomp_chat.session.authentication import Authenticator


@dataclass
class Authentication:
    """What the composition root wires in: the CONNECT authenticator, the REST
    side's credentials, and the services to start before listening."""

    mode: str
    authenticator: Authenticator
    gate: FailureGate | None = None
    jwt: JwtAuthenticator | None = None
    passwords: PasswordAuthenticator | None = None
    login_tokens: LoginTokens | None = None
    services: list[Service] = field(default_factory=list)


def build_authentication(options: Any, clock: Any, pool: Any) -> Authentication:
    """From options checked by ``resolve_auth_options``."""
    mode = options["auth"]
    gate = FailureGate(
        FailureThrottle(
            clock,
            burst=options["auth-failure-burst"],
            refill_seconds=float(options["auth-failure-refill"]),
            max_addresses=options["auth-failure-addresses"],
        ),
        clock,
    )
    if mode == AUTH_JWT:
        verifier = JwtVerifier(
            options["jwt-key"],
            clock,
            audience=options["jwt-audience"],
            issuer=options["jwt-issuer"],
            name_claim=options["jwt-name-claim"],
            roles_claim=options["jwt-roles-claim"],
            leeway=float(options["jwt-leeway"]),
        )
        jwt = JwtAuthenticator(verifier)
        return Authentication(mode, ThrottledAuthenticator(jwt, gate), gate, jwt=jwt)
    if mode == AUTH_PASSWORD:
        password_verifier = PasswordVerifier(clock)
        tokens = LoginTokens.from_options(
            clock, options["jwt-secret-file"], int(options["login-token-lifetime"])
        )
        users = UserStore(pool, timeout=options["database"].timeout, clock=clock)
        passwords = PasswordAuthenticator(users, password_verifier, tokens)
        return Authentication(
            mode, ThrottledAuthenticator(passwords, gate), gate, passwords=passwords,
            login_tokens=tokens, services=[password_verifier],
        )
    return Authentication(mode, NoneAuthenticator())
