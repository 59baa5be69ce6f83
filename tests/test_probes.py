"""Tests for stomp_chat.probes: timing a dependency and bounding its answer."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from stomp_chat.probes import Probe, ProbeService


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
