"""Database URLs (spelled as SQLAlchemy spells them) and the adbapi pool they describe."""

from __future__ import annotations

import math
import os
import socket
import sqlite3
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from twisted.enterprise import adbapi
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

DialectName = Literal["sqlite", "postgresql"]

SQLITE_MEMORY = ":memory:"

_SQLITE_SCHEMES = frozenset({"sqlite", "sqlite+pysqlite"})
_POSTGRES_SCHEMES = frozenset({"postgresql", "postgresql+psycopg2", "postgres"})

#: The longest any database call may take, in seconds (``--db-timeout``): the statement
#: timeout, the connect timeout, the TCP timeouts, and the deadline of every pool call.
DEFAULT_DB_TIMEOUT = 10.0


class DatabaseTimeout(Exception):
    """The database did not answer in time; the call was abandoned (its outcome unknown)."""


def database_unavailable(error: object) -> bool:
    """Whether `error` says the database did not answer or could not be reached: a
    DatabaseTimeout, or the driver's OperationalError or InterfaceError (its own connect,
    statement and TCP timeouts race the deadline), rather than a refused request or a bug."""
    if isinstance(error, (DatabaseTimeout, sqlite3.OperationalError, sqlite3.InterfaceError)):
        return True
    psycopg2 = sys.modules.get("psycopg2")  # never imported: none of its errors can exist
    return psycopg2 is not None and isinstance(
        error, (psycopg2.OperationalError, psycopg2.InterfaceError)
    )


def as_database_timeout(outcome: object, seconds: float) -> object:
    """``Deferred.addTimeout``'s onTimeoutCancel for a database call: the cancellation
    becomes a DatabaseTimeout that says how long the database had."""
    if isinstance(outcome, Failure) and outcome.check(CancelledError):
        return Failure(DatabaseTimeout(f"the database did not answer within {seconds:g}s"))
    return outcome


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """Everything needed to open a connection pool; built by `parse_database_url`."""

    dialect: DialectName
    #: SQLite: the file path (or ":memory:"); PostgreSQL: the database name.
    database: str
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    #: Extra keyword arguments for the driver's connect() (libpq keywords from the query string).
    options: Mapping[str, str] = field(default_factory=dict)
    #: Upper bound on PostgreSQL connections (SQLite always uses exactly one).
    pool_max: int = 4
    #: Seconds any one database call may take (see DEFAULT_DB_TIMEOUT).
    timeout: float = DEFAULT_DB_TIMEOUT

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the DB-API module's connect()."""
        if self.dialect == "sqlite":
            # One connection shared by the pool's single thread; adbapi may create it on a
            # thread other than the one that later closes it.
            return {"database": self.database, "check_same_thread": False, **self.options}
        kwargs: dict[str, Any] = {"dbname": self.database}
        for key, value in (
            ("host", self.host),
            ("port", self.port),
            ("user", self.user),
            ("password", self.password),
        ):
            if value is not None:
                kwargs[key] = value
        kwargs.update(self.postgres_timeouts())
        kwargs.update(self.options)
        timeouts = f"-c statement_timeout={int(self.timeout * 1000)}"
        kwargs["options"] = f"{timeouts} {kwargs['options']}" if "options" in kwargs else timeouts
        return kwargs

    def postgres_timeouts(self) -> dict[str, int]:
        """libpq settings that bound every wait on a server that stopped answering: the
        connect timeout, TCP keepalives, and a TCP user timeout for unacknowledged data
        (a host that drops packets); the URL's own settings win."""
        seconds = max(1, math.ceil(self.timeout))
        return {
            "connect_timeout": seconds,
            "keepalives": 1,
            "keepalives_idle": max(1, seconds // 2),
            "keepalives_interval": max(1, seconds // 6),
            "keepalives_count": 3,
            "tcp_user_timeout": int(self.timeout * 1000),
        }

    def with_options(self, **options: str) -> DatabaseConfig:
        """A copy with extra driver options (e.g. ``options="-csearch_path=x"``)."""
        return replace(self, options={**self.options, **options})

    def redacted(self) -> str:
        """The URL without its password, fit for logs."""
        if self.dialect == "sqlite":
            return f"sqlite:///{self.database}"
        user = f"{self.user}@" if self.user else ""
        host = self.host or ""
        if host and ":" in host:
            host = f"[{host}]"
        port = f":{self.port}" if self.port is not None else ""
        return f"postgresql://{user}{host}{port}/{self.database}"


def parse_database_url(url: str) -> DatabaseConfig:
    """Parse ``sqlite:///path`` or ``postgresql://user:pass@host:port/db``.

    Raises ValueError naming what is wrong, so a command line can report it as a usage error.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("database URL is empty")
    scheme, separator, _ = url.partition("://")
    if not separator:
        raise ValueError(
            f"database URL {url!r} has no scheme; expected sqlite:///path.db "
            "or postgresql://user@host/db"
        )
    scheme = scheme.lower()
    if scheme in _SQLITE_SCHEMES:
        return _parse_sqlite(url)
    if scheme in _POSTGRES_SCHEMES:
        return _parse_postgres(url)
    dialect, plus, driver = scheme.partition("+")
    if plus and dialect in ("sqlite", "postgresql", "postgres"):
        raise ValueError(
            f"database driver {driver!r} is not supported; use {dialect}:// (sqlite3 or psycopg2)"
        )
    raise ValueError(
        f"unsupported database URL scheme {scheme!r}; expected sqlite:// or postgresql://"
    )


def _parse_sqlite(url: str) -> DatabaseConfig:
    parts = urlsplit(url)
    if parts.netloc:
        raise ValueError(
            f"SQLite URL {url!r} names a host ({parts.netloc!r}); write sqlite:///relative.db "
            "or sqlite:////absolute/path.db"
        )
    if parts.fragment:
        raise ValueError(f"SQLite URL {url!r} has a fragment; remove the '#...' part")
    if parts.query:
        raise ValueError(f"SQLite URL {url!r} has a query string; no options are supported")
    # "sqlite:///a.db" splits into path "/a.db": the first slash only ends the empty host.
    path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    return DatabaseConfig(dialect="sqlite", database=path or SQLITE_MEMORY)


def _parse_postgres(url: str) -> DatabaseConfig:
    parts = urlsplit(url)
    if parts.fragment:
        raise ValueError(f"PostgreSQL URL has a fragment; remove the '#...' part of {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(
            f"PostgreSQL URL has an invalid port {parts.netloc.rpartition(':')[2]!r}; "
            "expected a number between 0 and 65535"
        ) from None
    raw_database = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not raw_database:
        raise ValueError(
            "PostgreSQL URL names no database; expected postgresql://user@host:port/dbname"
        )
    if "/" in raw_database:
        raise ValueError(f"PostgreSQL URL path {parts.path!r} must be just the database name")
    database = unquote(raw_database)
    options: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key in options:
            raise ValueError(f"PostgreSQL URL repeats the query option {key!r}")
        if key in ("dbname", "user", "password"):
            raise ValueError(
                f"PostgreSQL URL query option {key!r} duplicates a part of the URL; "
                "write it in the URL itself"
            )
        options[key] = value
    return DatabaseConfig(
        dialect="postgresql",
        database=database,
        host=parts.hostname or None,
        port=port,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        options=options,
    )


_log = Logger()


class _ReconnectingConnection(adbapi.Connection):
    """A pooled connection that drops itself quietly when it is found dead.

    adbapi's own version logs "Rollback failed" twice per attempt during a database outage;
    the write-behind writer already reports the outage once, so the pool stays quiet and
    re-raises the original error for the caller to retry.
    """

    _log = Logger()

    def rollback(self) -> None:
        pool = self._pool
        connection: Any = self._connection
        try:
            connection.rollback()
            if pool.reconnect:
                cursor = connection.cursor()
                cursor.execute(pool.good_sql)
                cursor.close()
                connection.commit()
            return
        except Exception as error:
            if not pool.reconnect:
                raise
            self._log.debug("Dropping dead database connection: {error!r}", error=error)
        pool.disconnect(connection)


class _Call:
    """One pool call: the pool thread running it, while it runs, and whether its caller
    gave up on it (a call still queued for a thread then never starts)."""

    __slots__ = ("abandoned", "thread")

    def __init__(self) -> None:
        self.thread: int | None = None
        self.abandoned = False


#: The keyword that carries a `_Call` through runInteraction to the pool thread.
_CALL = "_stomp_chat_call"


class ChatConnectionPool(adbapi.ConnectionPool):
    """An adbapi pool that remembers its dialect, reconnects quietly, and can give up on a
    call: `run_within` abandons a call past its deadline and severs its connection's
    socket, so the pool thread stuck reading from a silent server gets an error at once
    and its slot comes back (adbapi itself cannot interrupt a thread). With every thread
    stuck (cp_max of them), later calls wait in the threadpool's queue; those abandoned
    meanwhile never run, so retries cannot pile up behind a silent server."""

    connectionFactory = _ReconnectingConnection

    def __init__(self, config: DatabaseConfig, reactor: IReactorCore | None = None) -> None:
        self.config = config
        self._calls: set[_Call] = set()
        self.dialect: DialectName = config.dialect
        pool_kwargs: dict[str, Any] = {"cp_reactor": reactor, "cp_noisy": False}
        if config.dialect == "sqlite":
            # SQLite allows one writer; a single connection on a single thread also keeps a
            # ":memory:" database alive for the pool's lifetime.
            pool_kwargs.update(cp_min=1, cp_max=1, cp_openfun=_configure_sqlite_connection)
            super().__init__("sqlite3", **config.connect_kwargs(), **pool_kwargs)
        else:
            pool_kwargs.update(cp_min=1, cp_max=config.pool_max, cp_reconnect=True)
            super().__init__("psycopg2", **config.connect_kwargs(), **pool_kwargs)

    def run_within(
        self, timeout: float, clock: IReactorTime, interaction: Any, *args: Any
    ) -> Deferred[Any]:
        """runInteraction with a deadline: past it the Deferred fails with DatabaseTimeout,
        the late outcome is ignored, and the connection is severed (then replaced). A caller
        that cancels the Deferred sooner (a probe with a shorter deadline) abandons the call
        the same way, its Deferred failing with CancelledError."""
        call = _Call()
        self._calls.add(call)
        result: Deferred[Any] = self.runInteraction(interaction, *args, **{_CALL: call})

        def abandon(failure: Failure) -> Failure:
            if failure.check(CancelledError):
                call.abandoned = True
                self._sever(call)
            return failure

        def done(outcome: object) -> object:
            self._calls.discard(call)
            return outcome

        result.addErrback(abandon)
        result.addTimeout(timeout, clock, onTimeoutCancel=as_database_timeout)
        return result.addBoth(done)

    def _runInteraction(self, interaction: Any, *args: Any, **kw: Any) -> Any:
        call: _Call | None = kw.pop(_CALL, None)
        if call is not None:
            if call.abandoned:  # it waited for a thread longer than its deadline
                raise DatabaseTimeout("abandoned before it started")
            call.thread = self.threadID()
        try:
            return super()._runInteraction(interaction, *args, **kw)
        finally:
            if call is not None:
                call.thread = None

    def _sever(self, call: _Call) -> None:
        """Shut down the socket of the connection a call is using (from the reactor thread:
        shutdown() on a duplicate descriptor is safe while another thread reads)."""
        thread = call.thread
        connection = self.connections.get(thread) if thread is not None else None
        fileno = getattr(connection, "fileno", None)
        if fileno is None:
            return  # SQLite: no socket; its busy timeout bounds the wait
        try:
            with socket.socket(fileno=os.dup(fileno())) as duplicate:
                duplicate.shutdown(socket.SHUT_RDWR)
        except (OSError, ValueError) as error:
            _log.debug("cannot sever a database connection: {error!r}", error=error)

    def close(self) -> None:
        """Close the pool; calls still stuck on a silent server are severed first, so that
        joining the pool's threads cannot hang the reactor."""
        for call in list(self._calls):
            self._sever(call)
        super().close()


_SQLITE_BUSY_TIMEOUT_SECONDS = 5.0


def open_connection(config: DatabaseConfig) -> Any:
    """One plain DB-API connection, configured as the pool's are."""
    if config.dialect == "sqlite":
        connection = sqlite3.connect(**config.connect_kwargs())
        _configure_sqlite_connection(connection)
        return connection
    import psycopg2

    return psycopg2.connect(**config.connect_kwargs())


def _configure_sqlite_connection(connection: sqlite3.Connection) -> None:
    """Runs in the pool thread right after connecting (so it may block briefly)."""
    connection.execute(f"PRAGMA busy_timeout={int(_SQLITE_BUSY_TIMEOUT_SECONDS * 1000)}")
    # WAL lets readers proceed during a write; NORMAL is durable across application crashes
    # in WAL mode (only an OS crash can lose the last commits); foreign keys are off by default.
    _enable_wal(connection)
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA foreign_keys=ON")


def _enable_wal(connection: sqlite3.Connection) -> None:
    # Switching a new file to WAL while another connection is using it reports "database is
    # locked" at once, without consulting the busy timeout: wait for the other one ourselves.
    deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT_SECONDS
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def make_pool(config: DatabaseConfig, reactor: IReactorCore | None = None) -> ChatConnectionPool:
    """Build the connection pool for `config`; `reactor` defaults to the global one, lazily."""
    return ChatConnectionPool(config, reactor)
