"""Database fixtures for the persistence tests: SQLite files, isolated PostgreSQL schemas,
and a TCP proxy that can cut PostgreSQL off to simulate an outage.

Load with ``pytest_plugins = ["tests.conftest_db"]`` in a test module.

PostgreSQL comes from STOMP_CHAT_TEST_POSTGRES (default: trust auth on 127.0.0.1). When it is
unreachable the PostgreSQL variants are skipped, except under CI, where they fail.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorCore

from stomp_chat.persistence import (
    AdbapiChatStore,
    ChatConnectionPool,
    ChatStore,
    DatabaseConfig,
    MemoryChatStore,
    make_pool,
    migrate,
    parse_database_url,
)

POSTGRES_URL = os.environ.get(
    "STOMP_CHAT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
DIALECTS = ["sqlite", "postgresql"]


@cache
def _postgres_unavailable_reason() -> str | None:
    """Probe once per run, so an unreachable server costs one timeout, not one per test."""
    config = parse_database_url(POSTGRES_URL)
    try:
        connection = psycopg2.connect(**{**config.connect_kwargs(), "connect_timeout": 3})
    except psycopg2.Error as error:
        return f"PostgreSQL at {config.redacted()} is unreachable: {str(error).strip()}"
    connection.close()
    return None


def require_postgres() -> DatabaseConfig:
    """The PostgreSQL test config; skips the test if the server is down (fails under CI)."""
    reason = _postgres_unavailable_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so PostgreSQL tests must not be skipped)")
        pytest.skip(f"{reason}; set STOMP_CHAT_TEST_POSTGRES to run these tests")
    return parse_database_url(POSTGRES_URL)


def run_postgres_admin(config: DatabaseConfig, statement: str) -> None:
    """Run one statement outside any schema (autocommit), e.g. to create or drop a schema."""
    connection = psycopg2.connect(**config.connect_kwargs())
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


class TestDatabase:
    """One empty database for one test: a SQLite file, or a fresh PostgreSQL schema."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, config: DatabaseConfig) -> None:
        self.config = config
        self.dialect = config.dialect
        self._pools: list[ChatConnectionPool] = []

    def open_pool(self, config: DatabaseConfig | None = None) -> ChatConnectionPool:
        """A pool on this database, closed automatically when the test ends."""
        pool = make_pool(config if config is not None else self.config)
        self._pools.append(pool)
        return pool

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        """Read with a connection of its own, bypassing the pools under test, to check what
        really reached the database."""
        connection: Any
        if self.dialect == "postgresql":
            connection = psycopg2.connect(**self.config.connect_kwargs())
        else:
            connection = sqlite3.connect(self.config.database)
        try:
            cursor = connection.cursor()
            cursor.execute(statement)
            return list(cursor.fetchall())
        finally:
            connection.close()

    def close_pools(self) -> None:
        for pool in self._pools:
            if pool.running:
                pool.close()
        self._pools.clear()


@pytest.fixture
def postgresql_database() -> Iterator[TestDatabase]:
    """A PostgreSQL schema of its own, dropped afterwards, so tests never see each other."""
    base = require_postgres()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    run_postgres_admin(base, f"CREATE SCHEMA {schema}")
    database = TestDatabase(base.with_options(options=f"-csearch_path={schema}"))
    try:
        yield database
    finally:
        database.close_pools()
        run_postgres_admin(base, f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Iterator[TestDatabase]:
    database = TestDatabase(parse_database_url(f"sqlite:///{tmp_path / 'chat.db'}"))
    try:
        yield database
    finally:
        database.close_pools()


@pytest.fixture(params=DIALECTS)
def database(request: pytest.FixtureRequest) -> TestDatabase:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    fixture_name = f"{request.param}_database"
    test_database: TestDatabase = request.getfixturevalue(fixture_name)
    return test_database


@pytest_twisted.async_yield_fixture(params=[*DIALECTS, "memory"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ChatStore]:
    """A migrated, empty store: on SQLite, on PostgreSQL, and the in-memory twin (which must
    honour the same contract)."""
    if request.param == "memory":
        yield MemoryChatStore()
        return
    test_database: TestDatabase = request.getfixturevalue(f"{request.param}_database")
    pool = test_database.open_pool()
    await migrate(pool)
    yield AdbapiChatStore(pool)


# -- a TCP proxy that can be cut -----------------------------------------------------------


class _ToBackend(protocol.Protocol):
    """The proxy's connection to PostgreSQL."""

    def __init__(self, client_side: _FromClient) -> None:
        self.client_side = client_side

    def connectionMade(self) -> None:
        self.client_side.backend_connected(self)

    def dataReceived(self, data: bytes) -> None:
        if self.client_side.blackholed:
            return  # the server's answer is lost on the way
        self.client_side.transport.write(data)

    def connectionLost(self, reason: object = None) -> None:
        self.client_side.transport.loseConnection()


class _FromClient(protocol.Protocol):
    """A connection from the pool; paused until the matching backend connection is up."""

    def __init__(self, proxy: CuttableProxy) -> None:
        self.proxy = proxy
        self.backend: _ToBackend | None = None
        #: Everything sent either way is read and dropped, never answered.
        self.blackholed = False

    def connectionMade(self) -> None:
        if self.proxy.is_down:
            self.transport.abortConnection()
            return
        self.proxy.connections.add(self)
        if self.proxy.is_blackholed:
            self.blackholed = True  # accepted, then silence: no backend at all
            return
        self.transport.pauseProducing()
        factory = protocol.Factory.forProtocol(lambda: _ToBackend(self))
        connecting = self.proxy.backend_endpoint.connect(factory)
        connecting.addErrback(lambda _: self.transport.abortConnection())

    def backend_connected(self, backend: _ToBackend) -> None:
        self.backend = backend
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.blackholed:
            self.proxy.blackholed_bytes += len(data)
            return
        assert self.backend is not None, "reading is paused until the backend is connected"
        self.backend.transport.write(data)

    def connectionLost(self, reason: object = None) -> None:
        self.proxy.connections.discard(self)
        if self.backend is not None:
            self.backend.transport.loseConnection()

    def cut(self) -> None:
        self.transport.abortConnection()
        if self.backend is not None:
            self.backend.transport.abortConnection()


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to a backend; `cut()` aborts every connection and refuses new
    ones (accepted and reset at once) until `restore()`; `blackhole()` keeps every connection
    open but answers nothing, ever (a server that stops answering, packets dropped), until
    `restore()` resets the connections it silenced."""

    def __init__(self, reactor: IReactorCore, backend_host: str, backend_port: int) -> None:
        self._reactor = reactor
        self.backend_endpoint = TCP4ClientEndpoint(reactor, backend_host, backend_port)
        self.connections: set[_FromClient] = set()
        self.is_down = False
        self.is_blackholed = False
        #: Bytes clients sent into the blackhole.
        self.blackholed_bytes = 0
        self._listening: IListeningPort | None = None

    async def start(self) -> int:
        factory = protocol.Factory.forProtocol(lambda: _FromClient(self))
        endpoint = TCP4ServerEndpoint(self._reactor, 0, interface="127.0.0.1")
        self._listening = await endpoint.listen(factory)
        port: int = self._listening.getHost().port
        return port

    def cut(self) -> None:
        self.is_down = True
        for connection in list(self.connections):
            connection.cut()

    def blackhole(self) -> None:
        self.is_blackholed = True
        for connection in self.connections:
            connection.blackholed = True

    def restore(self) -> None:
        self.is_down = False
        if self.is_blackholed:
            self.is_blackholed = False
            for connection in list(self.connections):
                if connection.blackholed:
                    connection.cut()

    async def stop(self) -> None:
        self.cut()
        if self._listening is not None:
            await self._listening.stopListening()

    def route(self, config: DatabaseConfig) -> DatabaseConfig:
        """`config`, connecting through this proxy instead."""
        assert self._listening is not None, "start the proxy first"
        return replace(config, host="127.0.0.1", port=self._listening.getHost().port)


@pytest_twisted.async_yield_fixture
async def postgres_proxy(postgresql_database: TestDatabase) -> AsyncIterator[CuttableProxy]:
    """A started proxy in front of the test PostgreSQL server."""
    from twisted.internet import reactor

    config = postgresql_database.config
    proxy = CuttableProxy(reactor, config.host or "127.0.0.1", config.port or 5432)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
