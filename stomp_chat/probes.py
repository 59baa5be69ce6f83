"""Is each dependency answering, and how fast: the database and, in cluster mode, Redis.

``/ready`` asks afresh on each request; a periodic probe keeps the last
answer for ``/metrics``, which must not wait on anything at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import LoopingCall

from stomp_chat.persistence.transactions import run_interaction

#: The longest a dependency may take to answer before it counts as down.
DEFAULT_PROBE_TIMEOUT = 2.0
#: How often the last-known state is refreshed for metrics.
DEFAULT_PROBE_INTERVAL = 10.0


@dataclass(slots=True)
class ProbeResult:
    """One dependency's last answer: up or not, round trip in seconds, why not."""

    up: bool = False
    seconds: float = 0.0
    error: str = ""
    checked: bool = False

    def as_check(self) -> dict[str, Any]:
        if self.up:
            return {"state": "up", "ok": True, "rtt_ms": round(self.seconds * 1000, 3)}
        return {"state": "down", "ok": False, "error": self.error or "not checked yet"}


class Probe:
    """Times one call to a dependency, bounded by ``timeout``."""

    def __init__(self, clock: Any, call: Callable[[], Any], timeout: float) -> None:
        self.clock = clock
        self.call = call
        self.timeout = timeout
        self.last = ProbeResult()

    def check(self) -> Deferred[ProbeResult]:
        started = self.clock.seconds()
        answer: Deferred[Any] = maybeDeferred(self.call)
        answer.addTimeout(self.timeout, self.clock)

        def answered(_: object) -> ProbeResult:
            return ProbeResult(True, self.clock.seconds() - started, checked=True)

        def failed(failure: Any) -> ProbeResult:
            from twisted.internet.defer import TimeoutError

            if failure.check(TimeoutError):
                error = f"no answer within {self.timeout:g}s"
            else:
                error = failure.getErrorMessage() or failure.type.__name__
            return ProbeResult(False, self.clock.seconds() - started, error, checked=True)

        def remember(result: ProbeResult) -> ProbeResult:
            self.last = result
            return result

        return answer.addCallbacks(answered, failed).addCallback(remember)


def select_one_probe(
    pool: adbapi.ConnectionPool, clock: Any, timeout: float = DEFAULT_PROBE_TIMEOUT
) -> Probe:
    """``SELECT 1`` on the pool under the probe's deadline, bounded as every database call
    is: giving up on a silent database abandons the call and severs its connection (merely
    cancelling adbapi's Deferred would leave a pool thread stuck on it)."""
    return Probe(clock, lambda: run_interaction(pool, timeout, clock, _select_one), timeout)


def _select_one(transaction: Any) -> None:
    transaction.execute("SELECT 1")
    transaction.fetchall()


class ProbeService(Service):
    """Refreshes every probe's last answer periodically."""

    def __init__(self, clock: Any, probes: list[Probe], interval: float) -> None:
        self.probes = probes
        self._loop = LoopingCall(self._refresh)
        self._loop.clock = clock
        self.interval = interval

    def _refresh(self) -> None:
        for probe in self.probes:
            probe.check()

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
