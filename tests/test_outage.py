"""Tests for stomp_chat.outage: failures logged once per outage, with a recovery line."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from stomp_chat.outage import OutageLog


def _failure() -> Failure:
    try:
        raise ConnectionRefusedError("database down")
    except ConnectionRefusedError:
        return Failure()


def test_an_outage_is_logged_once_and_its_end_once() -> None:
    """The first failure is logged with its traceback, the rest quietly, the recovery once."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock = Clock()
        outage = OutageLog("REST requests", clock)
        outage.succeeded()
        for _ in range(5):
            outage.failed(_failure(), "GET /api/rooms")
            clock.advance(1)
        outage.succeeded()
        outage.succeeded()
    finally:
        globalLogPublisher.removeObserver(events.append)
    mine = [e for e in events if e.get("log_namespace", "").endswith("OutageLog")]
    loud = [e for e in mine if e["log_level"] >= LogLevel.info]
    assert len(loud) == 2
    assert loud[0]["log_level"] == LogLevel.critical and "log_failure" in loud[0]
    assert loud[0]["detail"] == " (GET /api/rooms)"
    assert loud[1]["log_level"] == LogLevel.info
    assert (loud[1]["seconds"], loud[1]["count"]) == (5, 5)
    assert not outage.in_outage


def test_a_new_outage_is_logged_again() -> None:
    """After a recovery, the next failure starts (and logs) a new outage."""
    outage = OutageLog("REST requests", Clock())
    outage.failed(_failure())
    outage.succeeded()
    assert not outage.in_outage and outage.failures == 0
    outage.failed(_failure())
    assert outage.in_outage and outage.failures == 1
