"""Tests for stomp_chat.probes: timing a dependency and bounding its answer."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import pytest_twisted
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from stomp_chat.probes import Probe, ProbeService, select_one_probe
from tests.silentdb import SilentPool

if TYPE_CHECKING:
    from tests.conftest_db import CuttableProxy, TestDatabase

pytest_plugins = ["tests.conftest_db"]


def test_a_probe_times_a_good_answer() -> None:
    """An answer counts as up, with its round trip, and is remembered as the last result."""
    clock = Clock()
    answer: Deferred[object] = Deferred()
    probe = Probe(clock, lambda: answer, timeout=2.0)
    results = []
    probe.check().addCallback(results.append)
    clock.advance(0.25)
    answer.callback("pong")
    [result] = results
    assert result.up and result.seconds == 0.25
    assert probe.last is result
    assert result.as_check() == {"state": "up", "ok": True, "rtt_ms": 250.0}


def test_a_probe_that_gets_no_answer_is_down_after_its_timeout() -> None:
    """A dependency that never answers counts as down once the timeout passes."""
    clock = Clock()
    probe = Probe(clock, Deferred, timeout=2.0)
    results = []
    probe.check().addCallback(results.append)
    clock.advance(1.9)
    assert not results
    clock.advance(0.2)
    [result] = results
    assert not result.up
    assert result.as_check() == {"state": "down", "ok": False, "error": "no answer within 2s"}


def test_a_probe_reports_the_error() -> None:
    """A failed call is down, with the error's message."""
    probe = Probe(Clock(), lambda: fail(ConnectionRefusedError("refused")), timeout=2.0)
    results = []
    probe.check().addCallback(results.append)
    assert results[0].as_check()["error"] == "refused"


def test_the_probe_service_refreshes_periodically() -> None:
    """The service checks every probe at start and then every interval."""
    clock = Clock()
    calls = []
    probe = Probe(clock, lambda: calls.append(1), timeout=1.0)
    service = ProbeService(clock, [probe], interval=10.0)
    service.startService()
    clock.pump([10, 10, 5])
    assert len(calls) == 3
    service.stopService()
    clock.advance(25)
    assert len(calls) == 3


def test_the_database_probe_is_down_when_the_database_never_answers() -> None:
    """The database probe's SELECT 1 is bounded by the probe's timeout, on its clock."""
    clock = Clock()
    pool = SilentPool()
    probe = select_one_probe(pool, clock, timeout=2.0)  # type: ignore[arg-type]
    results = []
    probe.check().addCallback(results.append)
    assert len(pool.calls) == 1
    clock.advance(2.0)
    [result] = results
    assert not result.up and "2s" in result.error


@pytest_twisted.ensureDeferred
async def test_the_database_probe_severs_its_connection_to_a_silent_postgres(
    postgresql_database: TestDatabase, postgres_proxy: CuttableProxy
) -> None:
    """With PostgreSQL silent the probe is down after its timeout and its connection is
    severed then, not after the driver's 10 s TCP timeouts: the pool's only thread is free
    again (it has dropped the dead connection) while the server is still silent, and the
    probe is up at once when the server answers again."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    routed = replace(postgres_proxy.route(postgresql_database.config), pool_max=1)
    pool = postgresql_database.open_pool(routed)
    probe = select_one_probe(pool, reactor, timeout=0.5)
    assert (await probe.check()).up
    assert len(pool.connections) == 1
    postgres_proxy.blackhole()
    started = reactor.seconds()
    down = await probe.check()
    assert not down.up and 0.4 < reactor.seconds() - started < 2
    for _ in range(40):
        if not pool.connections:
            break
        await deferLater(reactor, 0.05)
    assert not pool.connections, "the probe's connection is still stuck on the silent server"
    postgres_proxy.restore()
    assert (await probe.check()).up
