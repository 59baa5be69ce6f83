"""Removing old chat messages: ``--retention-days N`` keeps N days of history.

A periodic job deletes messages older than the cut-off in batches, one
transaction per batch and a reactor turn between batches, so neither the
database nor the chat path waits on one long delete. A room's newest message
is kept whatever its age, since the room's next ``seq`` counts from it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from datetime import UTC, datetime, timedelta
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

log = Logger()

#: How often the job runs, and how many messages one batch deletes.
DEFAULT_RETENTION_INTERVAL = 3600.0
DEFAULT_RETENTION_BATCH = 1000


class RetentionService(Service):
    """Deletes messages older than ``days`` every ``interval`` seconds, in batches."""

    def __init__(
        self,
        store: Any,
        clock: Any,
        days: float,
        interval: float = DEFAULT_RETENTION_INTERVAL,
        batch: int = DEFAULT_RETENTION_BATCH,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.days = days
        self.batch = batch
        self.interval = interval
        self._now = now or (lambda: datetime.fromtimestamp(clock.seconds(), UTC))
        self._loop = LoopingCall(self.run_once)
        self._loop.clock = clock
        self._running: Deferred[int] | None = None
        self._stopping = False

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._loop.start(self.interval, now=True)

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        self._stopping = True
        if self._loop.running:
            self._loop.stop()
        return self._running  # a batch under way finishes before the pool closes

    def run_once(self) -> Deferred[int] | None:
        """One pass: delete batches until one comes back short (errors are logged)."""
        if self._running is not None:
            return None  # the previous pass is still going
        running = self._pass()
        self._running = running
        running.addErrback(self._failed)
        running.addBoth(self._done)
        return running

    @inlineCallbacks
    def _pass(self) -> Generator[Deferred[Any], Any, int]:
        cutoff = self._now() - timedelta(days=self.days)
        total = 0
        while not self._stopping:
            deleted = yield self.store.delete_messages_before(cutoff, self.batch)
            total += deleted
            if deleted < self.batch:
                break
            yield deferLater(self.clock, 0, lambda: None)
        if total:
            log.info(
                "retention: removed {count} message(s) older than {days:g} days",
                count=total,
                days=self.days,
            )
        return total

    def _failed(self, failure: Any) -> int:
        log.warn("retention: removing old messages failed, trying again next time: {error}",
                 error=failure.getErrorMessage())
        return 0

    def _done(self, result: Any) -> Any:
        self._running = None
        return result
