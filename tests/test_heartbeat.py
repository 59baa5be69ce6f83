"""Unit tests for stomp_chat.heartbeat: the one LoopingCall that sweeps every session."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from stomp_chat.heartbeat import HeartbeatMonitor, tick_for


class Probe:
    """A monitored session that records each liveness check."""

    def __init__(self, monitor: HeartbeatMonitor | None = None, leave: bool = False) -> None:
        self.calls: list[tuple[float, float]] = []
        self.failures: list[str] = []
        self.monitor = monitor
        self.leave = leave

    def check_liveness(self, now: float, tick: float) -> None:
        self.calls.append((now, tick))
        if self.leave and self.monitor is not None:
            self.monitor.discard(self)

    def fail(self, message: str, *args: object) -> None:
        self.failures.append(message)
        if self.monitor is not None:
            self.monitor.discard(self)


@pytest.mark.parametrize(
    ("heartbeat", "expected"),
    [
        ((0, 0), 1.0),
        ((10_000, 10_000), 1.0),
        ((4000, 0), 1.0),
        ((1000, 0), 0.25),
        ((0, 2000), 0.5),
        ((1000, 3000), 0.25),
        ((100, 100), 0.05),
        ((1, 1), 0.05),
    ],
)
def test_tick_for(heartbeat, expected):
    """The sweep period is a quarter of the shortest non-zero interval, within [0.05, 1] s."""
    assert tick_for(heartbeat) == pytest.approx(expected)


def test_sweep_calls_every_session_with_now_and_tick():
    """sweep() checks every registered session with the clock's time and the tick."""
    clock = Clock()
    clock.advance(12.5)
    monitor = HeartbeatMonitor(clock, tick=0.5)
    probes = [Probe() for _ in range(3)]
    for probe in probes:
        monitor.add(probe)
    monitor.sweep()
    assert [p.calls for p in probes] == [[(12.5, 0.5)]] * 3


def test_discarded_sessions_are_not_swept():
    """A session removed with discard() is no longer checked."""
    monitor = HeartbeatMonitor(Clock())
    kept, gone = Probe(), Probe()
    monitor.add(kept)
    monitor.add(gone)
    monitor.discard(gone)
    monitor.discard(gone)  # twice is harmless
    monitor.sweep()
    assert len(kept.calls) == 1 and gone.calls == []
    assert len(monitor) == 1


def test_session_may_leave_during_a_sweep():
    """A session discarding itself while being checked does not disturb the sweep."""
    monitor = HeartbeatMonitor(Clock())
    probes = [Probe(monitor, leave=True) for _ in range(5)]
    for probe in probes:
        monitor.add(probe)
    monitor.sweep()
    assert all(len(p.calls) == 1 for p in probes)
    assert len(monitor) == 0


def test_start_service_sweeps_every_tick():
    """Once started, the monitor sweeps once per tick on the injected clock."""
    clock = Clock()
    monitor = HeartbeatMonitor(clock, tick=0.25)
    probe = Probe()
    monitor.add(probe)
    monitor.startService()
    assert probe.calls == [], "the first sweep waits one tick"
    for _ in range(8):
        clock.advance(0.25)
    assert [now for now, _ in probe.calls] == pytest.approx([0.25 * i for i in range(1, 9)])
    assert monitor.running
    monitor.stopService()


def test_stop_service_stops_the_loop():
    """After stopService no more sweeps happen and no call stays scheduled."""
    clock = Clock()
    monitor = HeartbeatMonitor(clock, tick=1.0)
    probe = Probe()
    monitor.add(probe)
    monitor.startService()
    clock.advance(1.0)
    monitor.stopService()
    clock.advance(10.0)
    assert len(probe.calls) == 1
    assert clock.getDelayedCalls() == []
    assert not monitor.running


def test_stop_service_without_start_is_harmless():
    """Stopping a monitor that never started raises nothing."""
    monitor = HeartbeatMonitor(Clock())
    monitor.stopService()
    assert not monitor.running


def test_len_counts_sessions():
    """len(monitor) is the number of registered sessions."""
    monitor = HeartbeatMonitor(Clock())
    probes = [Probe() for _ in range(4)]
    for probe in probes:
        monitor.add(probe)
    monitor.add(probes[0])
    assert len(monitor) == 4


def test_close_all_fails_every_session_with_the_reason():
    """close_all tells every session why it is closed, even as they leave the monitor."""
    monitor = HeartbeatMonitor(Clock())
    probes = [Probe(monitor) for _ in range(3)]
    for probe in probes:
        monitor.add(probe)
    monitor.close_all("server shutting down")
    assert [p.failures for p in probes] == [["server shutting down"]] * 3
    assert len(monitor) == 0


class Exploding(Probe):
    """A monitored session whose liveness check raises, as a dead transport would."""

    def __init__(self, monitor: HeartbeatMonitor, fail_too: bool = False) -> None:
        super().__init__(monitor)
        self.fail_too = fail_too

    def check_liveness(self, now: float, tick: float) -> None:
        self.calls.append((now, tick))
        raise RuntimeError("transport refused the write")

    def fail(self, message: str, *args: object) -> None:
        self.failures.append(message)
        if self.fail_too:
            raise RuntimeError("still refusing")
        if self.monitor is not None:
            self.monitor.discard(self)


def test_one_failing_session_is_closed_and_the_sweep_goes_on():
    """A session raising in check_liveness is closed; the others are still swept every tick."""
    clock = Clock()
    monitor = HeartbeatMonitor(clock, tick=1.0)
    before, broken, after = Probe(), Exploding(monitor), Probe()
    for probe in (before, broken, after):
        monitor.add(probe)
    monitor.startService()
    for _ in range(3):
        clock.advance(1.0)
    assert broken.failures == ["internal server error"]
    assert len(broken.calls) == 1
    assert len(before.calls) == len(after.calls) == 3
    assert monitor._loop.running
    monitor.stopService()


def test_session_that_cannot_even_be_closed_is_dropped():
    """A session whose fail() raises too is removed from the monitor, and sweeps continue."""
    clock = Clock()
    monitor = HeartbeatMonitor(clock, tick=1.0)
    broken, healthy = Exploding(monitor, fail_too=True), Probe()
    monitor.add(broken)
    monitor.add(healthy)
    monitor.startService()
    clock.advance(1.0)
    clock.advance(1.0)
    assert len(broken.calls) == 1
    assert len(healthy.calls) == 2
    assert len(monitor) == 1
    monitor.stopService()


def test_loop_restarts_after_an_unexpected_error():
    """If the sweep itself fails, the error is logged and the timer starts again."""
    clock = Clock()
    monitor = HeartbeatMonitor(clock, tick=1.0)
    probe = Probe()
    monitor.add(probe)
    failures = [True]

    original = monitor.sweep

    def sweep_once_broken() -> None:
        if failures:
            failures.pop()
            raise RuntimeError("bug in the sweep")
        original()

    monitor._loop.f = sweep_once_broken
    monitor.startService()
    clock.advance(1.0)
    assert monitor._loop.running
    clock.advance(1.0)
    assert len(probe.calls) == 1
    monitor.stopService()


def test_close_all_goes_on_past_a_failing_session():
    """close_all closes every session even when one of them raises."""
    monitor = HeartbeatMonitor(Clock())
    broken, healthy = Exploding(monitor, fail_too=True), Probe(monitor)
    monitor.add(broken)
    monitor.add(healthy)
    monitor.close_all("bye")
    assert healthy.failures == ["bye"]
    assert len(monitor) == 0
