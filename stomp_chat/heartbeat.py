"""One timer for the heart-beats and deadlines of every connection.

A ``callLater`` per connection costs a timer object and a heap operation per
frame written; with thousands of idle connections one periodic sweep is far
cheaper, and its error (one tick) is absorbed by the margins STOMP clients
already allow. One session's failure during the sweep closes that session
only: the sweep goes on, and the timer keeps running for everyone else.
"""

from __future__ import annotations

from typing import Protocol

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


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
        self._start_loop(now=False)

    def _start_loop(self, now: bool) -> None:
        self._loop.start(self.tick, now=now).addErrback(self._loop_failed)

    def _loop_failed(self, failure: Failure) -> None:
        """The timer stopped on an error: log it and start it again."""
        log.failure("the heart-beat sweep failed; restarting it", failure)
        if self.running and not self._loop.running:
            self._start_loop(now=False)

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
            self._close(session, reason)

    def sweep(self) -> None:
        """Let every session send its heart-beat or notice a silent peer."""
        now = self.clock.seconds()
        tick = self.tick
        for session in list(self._sessions):
            try:
                session.check_liveness(now, tick)
            except Exception:
                log.failure("heart-beat check failed for {session}; closing it", session=session)
                self._close(session, "internal server error")

    def _close(self, session: Monitored, reason: str) -> None:
        """Close one session, and stop watching it even if closing fails."""
        try:
            session.fail(reason)
        except Exception:
            log.failure("could not close {session}", session=session)
        finally:
            self.discard(session)


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
