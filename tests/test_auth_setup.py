"""Unit tests for stomp_chat.auth.setup: each --auth mode builds its authenticators."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock

from stomp_chat.auth.authenticators import (
    JwtAuthenticator,
    NoneAuthenticator,
    PasswordAuthenticator,
    ThrottledAuthenticator,
)
from stomp_chat.auth.passwords import PasswordVerifier
from stomp_chat.auth.setup import build_authentication
from stomp_chat.persistence import make_pool, parse_database_url
from stomp_chat.tap import Options
from tests.authkeys import write_secret


def options(*args: str) -> Options:
    parsed = Options()
    parsed.parseOptions(list(args))
    return parsed


def test_none_needs_nothing():
    """--auth none: the login-naming authenticator, no services, nothing for REST."""
    built = build_authentication(options(), Clock(), None)
    assert isinstance(built.authenticator, NoneAuthenticator)
    assert built.services == [] and built.gate is None


def test_jwt_builds_a_throttled_verifier(tmp_path: Path):
    """--auth jwt: a throttled JWT authenticator using the configured claims and leeway."""
    built = build_authentication(
        options("--auth", "jwt", f"--jwt-secret-file={write_secret(tmp_path)}",
                "--jwt-audience=chat", "--jwt-name-claim=nick", "--jwt-leeway=5",
                "--auth-failure-burst=3"),
        Clock(), None)
    assert isinstance(built.authenticator, ThrottledAuthenticator)
    assert isinstance(built.jwt, JwtAuthenticator)
    verifier = built.jwt.verifier
    assert (verifier.audience, verifier.name_claim, verifier.leeway) == ("chat", "nick", 5.0)
    assert built.gate is not None and built.gate.throttle.burst == 3
    assert built.services == []


def test_password_builds_a_verifier_service(tmp_path: Path):
    """--auth password: users through the pool, a verifier pool started with the server, and
    login tokens with the configured lifetime."""
    pool = make_pool(parse_database_url(f"sqlite:///{tmp_path}/chat.db"))
    try:
        built = build_authentication(options("--auth", "password",
                                             "--login-token-lifetime=60"), Clock(), pool)
    finally:
        pool.close()
    assert isinstance(built.passwords, PasswordAuthenticator)
    assert [type(service) for service in built.services] == [PasswordVerifier]
    assert built.login_tokens is not None and built.login_tokens.lifetime == 60
