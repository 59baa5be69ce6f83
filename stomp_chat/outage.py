"""Failures of a dependency, logged once per outage rather than once per request.

While the database is down every request that needs it fails; the first
failure is logged with its traceback, the rest quietly (debug level), and the
first success afterwards logs one line saying how long it lasted and how many
requests failed meanwhile.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure


class OutageLog:
    """Logs the start and the end of a run of failures of ``what``."""

    log = Logger()

    def __init__(self, what: str, clock: Any) -> None:
        self.what = what
        self.clock = clock
        self.failures = 0
        self._started: float | None = None

    @property
    def in_outage(self) -> bool:
        return self._started is not None

    def failed(self, failure: Failure, detail: str = "") -> None:
        """One failed call: logged in full if it starts an outage, else counted."""
        self.failures += 1
        if self._started is None:
            self._started = self.clock.seconds()
            self.log.failure(
                "{what} failing{detail}; further failures are counted until one succeeds",
                failure,
                what=self.what,
                detail=f" ({detail})" if detail else "",
            )
        else:
            self.log.debug("{what} failed again: {error}", what=self.what,
                           error=failure.getErrorMessage())

    def succeeded(self) -> None:
        """One call went through: ends an outage, if one was under way."""
        if self._started is None:
            return
        self.log.info(
            "{what} working again after {seconds:.1f}s; {count} failed meanwhile",
            what=self.what,
            seconds=self.clock.seconds() - self._started,
            count=self.failures,
        )
        self._started = None
        self.failures = 0
