"""Unit tests for stomp_chat.auth.authenticators: the CONNECT authenticators of each mode."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from stomp_chat.auth.authenticators import (
    FAILED,
    FailureGate,
    JwtAuthenticator,
    NoneAuthenticator,
    PasswordAuthenticator,
    ThrottledAuthenticator,
    connect_token,
)
from stomp_chat.auth.passwords import PasswordVerifier, hash_password
from stomp_chat.auth.throttle import FailureThrottle
from stomp_chat.auth.tokens import JwtVerifier, LoginTokens, VerificationKey
from stomp_chat.auth.users import UserStore, add_user, remove_user, set_password
from stomp_chat.errors import AuthError
from stomp_chat.identity import AUTH_JWT, AUTH_NONE, AUTH_PASSWORD, ConnectionInfo, Principal
from stomp_chat.persistence import migrate
from stomp_chat.persistence._dialect import dialect_named
from stomp_chat.stomp.frame import Frame
from tests.authkeys import SECRET, claims, hs256
from tests.silentdb import SilentPool
from tests.stompfakes import Client, make_context

if TYPE_CHECKING:
    from tests.conftest_db import TestDatabase

pytest_plugins = ["tests.conftest_db"]

PEER = ConnectionInfo(peer="198.51.100.7:50000", peer_host="198.51.100.7")


def connect(**headers: str) -> Frame:
    return Frame("CONNECT", {"accept-version": "1.2", "host": "chat", **headers})


def jwt_authenticator() -> JwtAuthenticator:
    clock = Clock()
    clock.advance(claims()["iat"])
    return JwtAuthenticator(JwtVerifier(VerificationKey(SECRET, ("HS256",)), clock))


def refusal(call: Any) -> AuthError:
    with pytest.raises(AuthError) as raised:
        call()
    return raised.value


# -- none -----------------------------------------------------------------------------------


def test_none_takes_the_login_or_makes_a_guest():
    """--auth none: the principal is the login given, or a fresh guest-<hex> name."""
    principal = NoneAuthenticator().authenticate(connect(login="zoe"), PEER)
    assert principal == Principal("zoe", "zoe", method=AUTH_NONE)
    first = NoneAuthenticator().authenticate(connect(), PEER)
    second = NoneAuthenticator().authenticate(connect(login="  "), PEER)
    assert first.user_id.startswith("guest-") and len(first.user_id) == len("guest-") + 8
    assert first.user_id != second.user_id


# -- jwt ------------------------------------------------------------------------------------


def test_jwt_in_passcode_with_any_login():
    """The token in passcode is taken whatever the login says; the user comes from sub."""
    token = hs256(claims("u-1", name="Ann"))
    principal = jwt_authenticator().authenticate(connect(login="ignored", passcode=token), PEER)
    assert (principal.user_id, principal.name, principal.method) == ("u-1", "Ann", AUTH_JWT)


def test_token_sources_in_order():
    """CONNECT Authorization, passcode, then the handshake's header, query and cookie."""
    token = hs256(claims())
    handshake = ConnectionInfo(
        headers={"authorization": "Bearer from-header"},
        query={"access_token": ("from-query",)},
        cookies={"access_token": "from-cookie"},
    )
    frame = connect(Authorization=f"Bearer {token}", passcode="from-passcode")
    assert connect_token(frame, handshake) == token
    assert connect_token(connect(passcode="p"), handshake) == "p"
    assert connect_token(connect(), handshake) == "from-header"
    assert connect_token(connect(), ConnectionInfo(query=handshake.query,
                                                   cookies=handshake.cookies)) == "from-query"
    assert connect_token(connect(), ConnectionInfo(cookies=handshake.cookies)) == "from-cookie"
    assert connect_token(connect(), ConnectionInfo()) is None
    assert connect_token(connect(authorization="Basic abc"), ConnectionInfo()) is None


def test_jwt_on_the_websocket_handshake():
    """A browser's token in ?access_token= or the access_token cookie authenticates CONNECT."""
    token = hs256(claims("web"))
    by_query = ConnectionInfo(transport="ws", query={"access_token": (token,)})
    by_cookie = ConnectionInfo(transport="ws", cookies={"access_token": token})
    for connection in (by_query, by_cookie):
        assert jwt_authenticator().authenticate(connect(), connection).user_id == "web"


def test_jwt_refusals_all_read_the_same():
    """No token, a bad token or an expired one: the client reads only 'authentication failed'."""
    authenticator = jwt_authenticator()
    expired = hs256(claims(lifetime=-3600))
    for frame in (connect(), connect(passcode="junk"), connect(passcode=expired),
                  connect(passcode=hs256(claims(), secret=b"y" * 40))):
        error = refusal(lambda frame=frame: authenticator.authenticate(frame, PEER))
        assert (error.message, error.detail) == (FAILED, "the credentials were not accepted")


# -- password -------------------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def passwords(sqlite_database: TestDatabase) -> AsyncIterator[PasswordAuthenticator]:
    """A password authenticator over a migrated SQLite users table holding alice."""
    from twisted.internet import reactor

    pool = sqlite_database.open_pool()
    await migrate(pool)
    await pool.runInteraction(add_user, dialect_named("sqlite"), "alice",
                              hash_password("alice's password"), frozenset({"admin"}))
    verifier = PasswordVerifier(reactor)
    verifier.startService()
    try:
        yield PasswordAuthenticator(UserStore(pool), verifier, LoginTokens(reactor))
    finally:
        verifier.stopService()


async def outcome(d: Deferred[Principal]) -> Principal | AuthError:
    try:
        return await d
    except AuthError as error:
        return error


@pytest_twisted.ensureDeferred
async def test_password_right_and_wrong(passwords: PasswordAuthenticator) -> None:
    """The right passcode gives the user with their roles; wrong, unknown or empty ones fail."""
    principal = await passwords.authenticate(
        connect(login="alice", passcode="alice's password"), PEER)
    assert principal.user_id == principal.name == "alice"
    assert principal.roles == {"admin"} and principal.method == AUTH_PASSWORD
    for headers in ({"login": "alice", "passcode": "wrong"},
                    {"login": "mallory", "passcode": "alice's password"},
                    {"login": "alice"}, {}):
        result = await outcome(passwords.authenticate(connect(**headers), PEER))
        assert isinstance(result, AuthError) and result.message == FAILED, headers


@pytest_twisted.ensureDeferred
async def test_login_token_as_passcode(passwords: PasswordAuthenticator) -> None:
    """A token from POST /api/login works as the passcode, for its own user only."""
    assert passwords.tokens is not None
    token, _ = passwords.tokens.issue(Principal("alice", "alice", frozenset({"admin"})))
    assert (await passwords.authenticate(connect(passcode=token), PEER)).user_id == "alice"
    assert (await passwords.authenticate(connect(login="alice", passcode=token), PEER)).roles \
        == {"admin"}
    result = await outcome(passwords.authenticate(connect(login="bob", passcode=token), PEER))
    assert isinstance(result, AuthError)


@pytest_twisted.ensureDeferred
async def test_a_login_token_ends_with_its_user_and_its_password(
    passwords: PasswordAuthenticator, sqlite_database: TestDatabase
) -> None:
    """A token from POST /api/login stops working once its password is reset or its user is
    removed, and carries the user's roles as they are now, not as they were when issued."""
    assert passwords.tokens is not None
    pool = passwords.users.pool
    dialect = dialect_named("sqlite")
    signed_in = await passwords.check("alice", "alice's password", PEER)
    token, _ = passwords.tokens.issue(signed_in)
    assert (await passwords.authenticate(connect(passcode=token), PEER)).roles == {"admin"}
    await pool.runInteraction(remove_user, dialect, "alice")
    await pool.runInteraction(add_user, dialect, "alice", hash_password("alice's password"),
                              frozenset())
    result = await outcome(passwords.authenticate(connect(passcode=token), PEER))
    assert isinstance(result, AuthError), "a token outlived its user and password"
    token, _ = passwords.tokens.issue(await passwords.check("alice", "alice's password", PEER))
    assert (await passwords.authenticate(connect(passcode=token), PEER)).roles == frozenset()
    await pool.runInteraction(set_password, dialect, "alice", hash_password("a new password"))
    result = await outcome(passwords.authenticate(connect(passcode=token), PEER))
    assert isinstance(result, AuthError), "a token survived a password reset"
    token, _ = passwords.tokens.issue(await passwords.check("alice", "a new password", PEER))
    await pool.runInteraction(remove_user, dialect, "alice")
    result = await outcome(passwords.authenticate(connect(passcode=token), PEER))
    assert isinstance(result, AuthError), "a token outlived its user"


# -- throttling -----------------------------------------------------------------------------


class Counting:
    """An authenticator that refuses every attempt and counts them."""

    def __init__(self) -> None:
        self.attempts = 0

    def authenticate(self, frame: Frame, connection: ConnectionInfo) -> Principal:
        self.attempts += 1
        raise AuthError(FAILED)


def test_repeated_failures_from_one_address_are_slowed():
    """After the burst, an address's next attempt waits for a refill on the clock; other
    addresses are not slowed."""
    clock = Clock()
    inner = Counting()
    gate = FailureGate(FailureThrottle(clock, burst=2, refill_seconds=10), clock)
    throttled = ThrottledAuthenticator(inner, gate)
    results: list[Any] = []
    for _ in range(2):
        throttled.authenticate(connect(), PEER).addBoth(results.append)
    assert inner.attempts == 2 and all(isinstance(r, Failure) for r in results)
    throttled.authenticate(connect(), PEER).addBoth(results.append)
    assert inner.attempts == 2, "the third attempt waits"
    other = ConnectionInfo(peer_host="203.0.113.9")
    throttled.authenticate(connect(), other).addBoth(results.append)
    assert inner.attempts == 3, "another address is not slowed"
    clock.advance(9.9)
    assert inner.attempts == 3
    clock.advance(0.1)
    assert inner.attempts == 4
    assert len(results) == 4 and all(r.check(AuthError) for r in results)


def test_successes_do_not_count():
    """Successful logins take no tokens."""
    clock = Clock()
    throttle = FailureThrottle(clock, burst=1, refill_seconds=10)
    throttled = ThrottledAuthenticator(NoneAuthenticator(), FailureGate(throttle, clock))
    for _ in range(5):
        assert isinstance(throttled.authenticate(connect(login="x"), PEER).result, Principal)
    assert throttle.delay(PEER.peer_host) == 0


def test_a_login_the_users_table_does_not_answer_in_time_gets_a_clear_error() -> None:
    """With the users table's database silent, a password CONNECT ends after the database
    timeout with ERROR "authentication unavailable" and a close, long before the connect
    timeout, and is not counted as a failed login (an outage slows nobody down later)."""
    clock = Clock()
    users = UserStore(SilentPool(), timeout=3, clock=clock)  # type: ignore[arg-type]
    gate = FailureGate(FailureThrottle(clock, burst=1), clock)
    passwords = PasswordAuthenticator(users, PasswordVerifier(clock))
    context = make_context(clock=clock, authenticator=ThrottledAuthenticator(passwords, gate),
                           connect_timeout=30.0)
    for _ in range(2):
        client = Client(context, peer="198.51.100.7:50000")
        client.send("CONNECT", {"accept-version": "1.2", "host": "chat", "login": "alice",
                                "passcode": "alice's password"})
        clock.advance(2.9)
        assert client.frames() == [] and not client.closed
        clock.advance(0.1)
        [error] = client.frames()
        assert error.command == "ERROR"
        assert error.headers["message"] == "authentication unavailable"
        assert client.closed
    assert gate.throttle.delay("198.51.100.7") == 0
