"""One timer for the heart-beats and deadlines of every connection.

A ``callLater`` per connection costs a timer object and a heap operation per
frame written; with thousands of idle connections one periodic sweep is far
cheaper, and its error (one tick) is absorbed by the margins STOMP clients
already allow.
"""

from __future__ import annotations

from typing import Protocol

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall


class Monitored(Protocol):
    def check_liveness(self, now: float, tick: float) -> None: ...

    def fail(self, message: str, detail: str = "") -> None: ...


class HeartbeatMonitor(Service):
    """Sweeps every registered session once per ``tick`` seconds."""

    def __init__(self, clock: IReactorTime, tick: float = 1.0) -> None:
        self.clock = clock
        self.tick = tick
        self._sessions: set[Monitored] = set()
        self._loop = LoopingCall(self.sweep)
        self._loop.clock = clock

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, session: Monitored) -> None:
        self._sessions.add(session)

    def discard(self, session: Monitored) -> None:
        self._sessions.discard(session)

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.tick, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def sessions(self) -> list[Monitored]:
        """The sessions open now (a copy: closing one changes the set)."""
        return list(self._sessions)

    def close_all(self, reason: str) -> None:
        """Tell every client why it is being disconnected, and disconnect it."""
        for session in list(self._sessions):
            session.fail(reason)

    def sweep(self) -> None:
        """Let every session send its heart-beat or notice a silent peer."""
        now = self.clock.seconds()
        for session in list(self._sessions):
            session.check_liveness(now, self.tick)


def tick_for(heartbeat: tuple[int, int]) -> float:
    """A sweep period fine enough for the server's own heart-beat settings.

    The negotiated intervals are never shorter than the server's (the larger
    side wins), so a quarter of the shortest non-zero one, capped at a second,
    keeps every deadline within a few percent.
    """
    intervals = [ms for ms in heartbeat if ms > 0]
    if not intervals:
        return 1.0
    return max(0.05, min(1.0, min(intervals) / 4000.0))
