"""Database URL parsing and the connection pools built from it."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
import pytest_twisted
from hypothesis import example, given
from hypothesis import strategies as st

from stomp_chat.persistence import (
    ChatConnectionPool,
    DatabaseConfig,
    DatabaseTimeout,
    database_unavailable,
    make_pool,
    parse_database_url,
)
from stomp_chat.persistence.url import DEFAULT_DB_TIMEOUT

if TYPE_CHECKING:
    from tests.conftest_db import CuttableProxy, TestDatabase

pytest_plugins = ["tests.conftest_db"]


def test_sqlite_relative_path() -> None:
    """Three slashes give a path relative to the working directory."""
    config = parse_database_url("sqlite:///data/chat.db")
    assert config == DatabaseConfig(dialect="sqlite", database="data/chat.db")


def test_sqlite_absolute_path() -> None:
    """Four slashes give an absolute path."""
    assert parse_database_url("sqlite:////var/lib/chat.db").database == "/var/lib/chat.db"


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://", "sqlite+pysqlite:///:memory:"])
def test_sqlite_memory(url: str) -> None:
    """The in-memory spellings SQLAlchemy accepts all name SQLite's :memory: database."""
    config = parse_database_url(url)
    assert (config.dialect, config.database) == ("sqlite", ":memory:")


def test_sqlite_connect_kwargs_allow_other_threads() -> None:
    """SQLite connections may be used from the pool thread that did not create them."""
    kwargs = parse_database_url("sqlite:///chat.db").connect_kwargs()
    assert kwargs == {"database": "chat.db", "check_same_thread": False}


def test_postgres_url_parts() -> None:
    """User, percent-encoded password, host, port and database are all taken from the URL."""
    config = parse_database_url("postgresql://chat:s%40cret%2F1@db.example:6543/chatdb")
    assert config.dialect == "postgresql"
    assert (config.user, config.password) == ("chat", "s@cret/1")
    assert (config.host, config.port, config.database) == ("db.example", 6543, "chatdb")


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg2", "postgres", "PostgreSQL"])
def test_postgres_scheme_aliases(scheme: str) -> None:
    """Every spelling of the psycopg2 dialect parses to the same config."""
    config = parse_database_url(f"{scheme}://u@h/db")
    assert config == DatabaseConfig(dialect="postgresql", database="db", host="h", user="u")


def test_postgres_ipv6_host_and_query_options() -> None:
    """Bracketed IPv6 hosts work and query options reach the driver unchanged."""
    config = parse_database_url("postgresql://[::1]:5432/db?sslmode=require&application_name=c")
    assert config.host == "::1"
    kwargs = config.connect_kwargs()
    assert kwargs["sslmode"] == "require"
    assert kwargs["application_name"] == "c"
    assert kwargs["host"] == "::1" and kwargs["port"] == 5432


def test_postgres_connect_timeout_default_and_override() -> None:
    """A connect timeout is always set, and the URL can change it."""
    default = parse_database_url("postgresql://h/db").connect_kwargs()
    assert default["connect_timeout"] == DEFAULT_DB_TIMEOUT
    custom = parse_database_url("postgresql://h/db?connect_timeout=2").connect_kwargs()
    assert custom["connect_timeout"] == "2"


def test_postgres_calls_are_bounded_by_the_database_timeout() -> None:
    """The database timeout sets the statement timeout, the connect timeout, TCP keepalives
    and the TCP user timeout, keeping any libpq options the URL gives."""
    config = replace(
        parse_database_url("postgresql://h/db?options=-csearch_path%3Dx&keepalives_count=9"),
        timeout=4.5,
    )
    kwargs = config.connect_kwargs()
    assert kwargs["options"] == "-c statement_timeout=4500 -csearch_path=x"
    assert kwargs["connect_timeout"] == 5
    assert kwargs["tcp_user_timeout"] == 4500
    assert kwargs["keepalives"] == 1 and kwargs["keepalives_idle"] == 2
    assert kwargs["keepalives_count"] == "9", "the URL's own setting wins"


def test_the_timeouts_are_accepted_by_the_real_postgres() -> None:
    """libpq and the server accept every timeout setting: a real connection reports them."""
    import psycopg2

    from tests.conftest_db import require_postgres

    config = replace(require_postgres(), timeout=3)
    connection = psycopg2.connect(**config.connect_kwargs())
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW statement_timeout")
            assert cursor.fetchone() == ("3s",)
            cursor.execute("SHOW tcp_keepalives_idle")
            assert cursor.fetchone() is not None
    finally:
        connection.close()


def test_postgres_without_host_uses_the_local_socket() -> None:
    """No host leaves libpq's default (the Unix socket) in charge."""
    kwargs = parse_database_url("postgresql:///chat").connect_kwargs()
    assert "host" not in kwargs and kwargs["dbname"] == "chat"


def test_redacted_url_hides_the_password() -> None:
    """The loggable form keeps where the database is but never the password."""
    config = parse_database_url("postgresql://chat:hunter2@[::1]:5432/db")
    assert config.redacted() == "postgresql://chat@[::1]:5432/db"
    assert "hunter2" not in repr(config)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("", "empty"),
        ("chat.db", "no scheme"),
        ("mysql://u@h/db", "unsupported database URL scheme 'mysql'"),
        ("postgresql+asyncpg://u@h/db", "driver 'asyncpg' is not supported"),
        ("sqlite://localhost/chat.db", "names a host"),
        ("sqlite:///chat.db?mode=ro", "query string"),
        ("postgresql://u@h:port/db", "invalid port"),
        ("postgresql://u@h:99999/db", "invalid port"),
        ("postgresql://u@h", "names no database"),
        ("postgresql://u@h/a/b", "must be just the database name"),
        ("postgresql://u@h/db?sslmode=a&sslmode=b", "repeats the query option 'sslmode'"),
        ("postgresql://u@h/db?password=x", "duplicates a part of the URL"),
    ],
)
def test_bad_urls_explain_themselves(url: str, complaint: str) -> None:
    """Each malformed URL raises ValueError naming what is wrong."""
    with pytest.raises(ValueError, match=complaint.replace("+", r"\+")):
        parse_database_url(url)


_url_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1)


@given(
    user=_url_text,
    password=_url_text,
    host=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    port=st.integers(min_value=1, max_value=65535),
    database=_url_text,
)
@example(user="@", password=":/", host="h", port=5432, database="a/b?c#d")
def test_postgres_round_trip_of_quoted_parts(
    user: str, password: str, host: str, port: int, database: str
) -> None:
    """Any percent-encoded user, password and database name come back exactly."""
    url = (
        f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}"
        f"@{host}:{port}/{quote(database, safe='')}"
    )
    config = parse_database_url(url)
    assert (config.user, config.password, config.host, config.port, config.database) == (
        user,
        password,
        host,
        port,
        database,
    )


def test_importing_persistence_leaves_the_reactor_alone() -> None:
    """Importing the package must not install the global reactor (twistd picks it later)."""
    probe = (
        "import sys, stomp_chat.persistence; sys.exit('twisted.internet.reactor' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).parent.parent)
    assert result.returncode == 0


def test_sqlite_pool_has_exactly_one_connection() -> None:
    """SQLite allows one writer, so its pool has one thread and one connection."""
    pool = make_pool(parse_database_url("sqlite:///:memory:"), reactor=_NeverRunningReactor())
    assert (pool.min, pool.max, pool.reconnect) == (1, 1, False)
    assert pool.dialect == "sqlite"


def test_postgres_pool_reconnects_with_a_modest_size() -> None:
    """PostgreSQL pools reconnect after an outage and stay small by default."""
    config = parse_database_url("postgresql://u@127.0.0.1:1/db")
    pool = make_pool(config, reactor=_NeverRunningReactor())
    assert pool.reconnect is True
    assert (pool.min, pool.max) == (1, 4)
    assert pool.dbapiName == "psycopg2"


class _NeverRunningReactor:
    """Enough of a reactor to build a pool without starting its threads."""

    def callWhenRunning(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest_twisted.ensureDeferred
async def test_sqlite_connections_are_tuned(sqlite_database: TestDatabase) -> None:
    """Every SQLite connection runs in WAL mode, synchronous=NORMAL, with foreign keys on."""
    pool = sqlite_database.open_pool()

    def read_pragmas(transaction: Any) -> tuple[Any, ...]:
        values = []
        for pragma in ("journal_mode", "synchronous", "foreign_keys"):
            transaction.execute(f"PRAGMA {pragma}")
            values.append(transaction.fetchone()[0])
        return tuple(values)

    assert await pool.runInteraction(read_pragmas) == ("wal", 1, 1)


@pytest_twisted.ensureDeferred
async def test_sqlite_memory_database_lives_as_long_as_the_pool() -> None:
    """A :memory: database keeps its tables between interactions (one shared connection)."""
    pool = make_pool(parse_database_url("sqlite:///:memory:"))
    try:
        await pool.runOperation("CREATE TABLE t (x INTEGER)")
        await pool.runOperation("INSERT INTO t VALUES (1)")
        assert await pool.runQuery("SELECT x FROM t") == [(1,)]
    finally:
        pool.close()


@pytest_twisted.ensureDeferred
async def test_calls_queued_behind_a_silent_server_are_abandoned_not_run_later(
    postgresql_database: TestDatabase, postgres_proxy: CuttableProxy
) -> None:
    """With the pool's only connection stuck on a silent server, calls queued behind it time
    out too and never run once a thread is free; the stuck call's connection is severed, so
    the pool answers again as soon as the server does."""
    from twisted.internet import reactor

    routed = replace(postgres_proxy.route(postgresql_database.config), pool_max=1)
    pool = postgresql_database.open_pool(routed)
    assert isinstance(pool, ChatConnectionPool)
    ran: list[int] = []

    def interaction(transaction: Any, number: int) -> int:
        ran.append(number)
        transaction.execute("SELECT 1")
        return number

    assert await pool.run_within(1, reactor, interaction, 0) == 0
    postgres_proxy.blackhole()
    stuck = pool.run_within(0.5, reactor, interaction, 1)
    calls = [stuck, *(pool.run_within(0.2, reactor, interaction, n) for n in (2, 3))]
    for call in calls:
        with pytest.raises(DatabaseTimeout):
            await call
    postgres_proxy.restore()
    assert await pool.run_within(2, reactor, interaction, 4) == 4
    assert ran == [0, 1, 4], "the calls abandoned while queued never ran"


async def _until(condition: Any, seconds: float) -> bool:
    """Whether `condition()` came true within `seconds` of the reactor's time."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + seconds
    while not condition():
        if reactor.seconds() > deadline:
            return False
        await deferLater(reactor, 0.05)
    return True


@pytest_twisted.ensureDeferred
async def test_a_caller_giving_up_early_severs_the_stuck_connection(
    postgresql_database: TestDatabase, postgres_proxy: CuttableProxy
) -> None:
    """A caller that cancels a call before its deadline (a probe with a shorter one) gets
    CancelledError, and the connection the call is stuck on is severed at once: the pool's
    thread comes back while the server is still silent, instead of after the TCP timeouts."""
    from twisted.internet import reactor
    from twisted.internet.defer import CancelledError
    from twisted.internet.task import deferLater

    routed = replace(postgres_proxy.route(postgresql_database.config), pool_max=1)
    assert routed.timeout == DEFAULT_DB_TIMEOUT  # the driver's own timeouts: 10 s
    pool = postgresql_database.open_pool(routed)
    assert isinstance(pool, ChatConnectionPool)
    ended: list[str] = []

    def interaction(transaction: Any) -> None:
        try:
            transaction.execute("SELECT 1")
        except Exception as error:
            ended.append(type(error).__name__)
            raise
        ended.append("answered")

    await pool.run_within(5, reactor, interaction)
    postgres_proxy.blackhole()
    stuck = pool.run_within(30, reactor, interaction)
    await deferLater(reactor, 0.3)
    stuck.cancel()
    with pytest.raises(CancelledError):
        await stuck
    assert await _until(lambda: len(ended) == 2, 3), "the pool's thread is still stuck"
    assert ended[0] == "answered" and ended[1] != "answered"


def test_database_unavailable_tells_an_outage_from_a_refused_request_or_a_bug() -> None:
    """A deadline passed, a connect or statement timeout and a dead connection (the drivers'
    OperationalError and InterfaceError) say the database is unavailable; a constraint
    violation, bad SQL or any other exception do not."""
    import sqlite3

    import psycopg2

    for outage in (DatabaseTimeout("late"), sqlite3.OperationalError("database is locked"),
                   psycopg2.OperationalError("timeout expired"),
                   psycopg2.InterfaceError("connection already closed")):
        assert database_unavailable(outage), outage
    for other in (psycopg2.IntegrityError("duplicate key"), sqlite3.IntegrityError("unique"),
                  psycopg2.ProgrammingError("syntax error"), ValueError("bug"), None):
        assert not database_unavailable(other), other
