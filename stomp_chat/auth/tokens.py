"""JSON Web Tokens: verifying the ones an identity provider issues (``--auth jwt``)
and issuing the short-lived ones ``POST /api/login`` hands out (``--auth password``).

PyJWT does the cryptography. The algorithms a key may verify are derived from
the key itself and passed explicitly, so ``alg: none`` and algorithm confusion
(an HS256 token "signed" with the server's RSA public key) never verify.
Expiry and not-before are checked against the injected clock, the one that
also closes a session when its token expires.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from stomp_chat.identity import AUTH_JWT, AUTH_PASSWORD, Principal

#: HS256 secrets shorter than this are refused (RFC 7518 section 3.2: at least the hash size).
MIN_SECRET_BYTES = 32
DEFAULT_NAME_CLAIM = "name"
DEFAULT_ROLES_CLAIM = "roles"
#: Seconds of clock difference tolerated between the token's issuer and this server.
DEFAULT_LEEWAY = 30.0

_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


class TokenRejected(Exception):
    """The token is not acceptable; the reason is for the server's log, never the client."""


class KeyFileError(ValueError):
    """A key file the server cannot use (a start-up usage error)."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A key and the only algorithms it may verify."""

    key: Any
    algorithms: tuple[str, ...]


def load_secret_file(path: str) -> VerificationKey:
    """An HS256 shared secret: the file's bytes, without a trailing newline."""
    try:
        with open(path, "rb") as file:
            secret = file.read().rstrip(b"\r\n")
    except OSError as error:
        raise KeyFileError(f"cannot read {path}: {error.strerror}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise KeyFileError(f"{path} holds {len(secret)} bytes; an HS256 secret needs at least "
                        f"{MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32 > {path}`)")
    return VerificationKey(secret, ("HS256",))


def load_public_key_file(path: str) -> VerificationKey:
    """A PEM public key: RSA verifies RS256, EC its curve's ES algorithm, Ed25519 EdDSA."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise KeyFileError(f"cannot read {path}: {error.strerror}") from None
    try:
        key = load_pem_public_key(data)
    except ValueError:
        raise KeyFileError(f"{path} is not a PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise KeyFileError(f"{path}: an RSA key of {key.key_size} bits is too short (2048+)")
        return VerificationKey(key, ("RS256",))
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = _EC_ALGORITHMS.get(key.curve.name)
        if algorithm is None:
            raise KeyFileError(f"{path}: the curve {key.curve.name} is not supported")
        return VerificationKey(key, (algorithm,))
    if isinstance(key, ed25519.Ed25519PublicKey):
        return VerificationKey(key, ("EdDSA",))
    raise KeyFileError(f"{path}: unsupported key type {type(key).__name__}")


@dataclass(frozen=True)
class JwtVerifier:
    """Turns a token into a ``Principal``, or raises ``TokenRejected``."""

    key: VerificationKey
    clock: Any
    audience: str | None = None
    issuer: str | None = None
    name_claim: str = DEFAULT_NAME_CLAIM
    roles_claim: str = DEFAULT_ROLES_CLAIM
    leeway: float = DEFAULT_LEEWAY
    method: str = AUTH_JWT
    required: Sequence[str] = field(default=("sub", "exp"))

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self.key.key,
                algorithms=list(self.key.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                options={
                    # checked below against the server's clock
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": self.audience is not None,
                    "verify_iss": self.issuer is not None,
                    "require": list(self.required),
                },
            )
        except jwt.InvalidTokenError as error:
            raise TokenRejected(f"{type(error).__name__}: {error}") from None
        now = self.clock.seconds()
        expires = _number(claims, "exp")
        if expires is not None and now >= expires + self.leeway:
            raise TokenRejected("token expired")
        not_before = _number(claims, "nbf")
        if not_before is not None and now + self.leeway < not_before:
            raise TokenRejected("token not yet valid")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise TokenRejected("sub is not a non-empty string")
        # The user id and name go into the CONNECTED frame's user-name header (which
        # STOMP does not escape) and into the database: no NUL, line break or lone surrogate.
        if not subject.isprintable():
            raise TokenRejected("sub is not printable text")
        name = claims.get(self.name_claim)
        if not isinstance(name, str) or not name or not name.isprintable():
            name = subject
        return Principal(
            user_id=subject,
            name=name,
            roles=_roles(claims.get(self.roles_claim)),
            method=self.method,
            # the session ends when this server would refuse the token at CONNECT
            expires_at=None if expires is None else expires + self.leeway,
            claims=claims,
        )


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRejected(f"{name} is not a number")
    return float(value)


def _roles(value: Any) -> frozenset[str]:
    """A list of strings, or one space-separated string (as OAuth's ``scope``)."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list | tuple):
        return frozenset(role for role in value if isinstance(role, str) and role)
    return frozenset()


#: What login tokens name as their issuer and audience, so that a token made for
#: something else with the same secret is not taken for one.
LOGIN_ISSUER = "stomp-chat"
LOGIN_AUDIENCE = "stomp-chat"
DEFAULT_LOGIN_TOKEN_LIFETIME = 3600


class LoginTokens:
    """Short-lived HS256 tokens for users who logged in with a password.

    Signed with the configured secret (so every server of a cluster accepts
    them), or a random one made at start-up: tokens then end with the process.
    """

    def __init__(
        self,
        clock: Any,
        secret: bytes | None = None,
        lifetime: int = DEFAULT_LOGIN_TOKEN_LIFETIME,
    ) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._clock = clock
        self.lifetime = lifetime
        self._verifier = JwtVerifier(
            VerificationKey(self._secret, ("HS256",)),
            clock,
            audience=LOGIN_AUDIENCE,
            issuer=LOGIN_ISSUER,
            leeway=0,
            method=AUTH_PASSWORD,
        )

    @classmethod
    def from_options(cls, clock: Any, secret_file: str | None, lifetime: int) -> LoginTokens:
        secret = load_secret_file(secret_file).key if secret_file else None
        return cls(clock, secret, lifetime)

    def issue(self, principal: Principal) -> tuple[str, float]:
        """A token for ``principal`` and when it expires (epoch seconds)."""
        now = int(self._clock.seconds())
        expires = now + self.lifetime
        claims = {
            "sub": principal.user_id,
            "name": principal.name,
            "roles": sorted(principal.roles),
            "iat": now,
            "exp": expires,
            "iss": LOGIN_ISSUER,
            "aud": LOGIN_AUDIENCE,
            "jti": os.urandom(8).hex(),
        }
        if "pwd" in principal.claims:  # which password the token stands for
            claims["pwd"] = principal.claims["pwd"]
        return jwt.encode(claims, self._secret, algorithm="HS256"), float(expires)

    def verify(self, token: str) -> Principal:
        return self._verifier.verify(token)


def looks_like_jwt(value: str) -> bool:
    """Three dot-separated parts: worth trying as a token before anything slower."""
    return value.count(".") == 2 and " " not in value
