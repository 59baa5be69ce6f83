"""Slowing down repeated authentication failures from one address.

A token bucket per peer address: each failure takes a token, tokens come back
at a steady rate, and an attempt from an address whose bucket is empty waits
until a token is back. A legitimate user who mistypes a few times never
notices; a password-guessing client gets one try per refill interval.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

#: Failures an address may make in a row before it is slowed.
DEFAULT_BURST = 5
#: Seconds for one token to come back once an address is slowed.
DEFAULT_REFILL_SECONDS = 10.0
#: Addresses remembered at once; the least recently failing are forgotten first.
DEFAULT_MAX_ADDRESSES = 10_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class FailureThrottle:
    """Per-address token bucket of authentication failures, on an injected clock."""

    def __init__(
        self,
        clock: Any,
        *,
        burst: int = DEFAULT_BURST,
        refill_seconds: float = DEFAULT_REFILL_SECONDS,
        max_addresses: int = DEFAULT_MAX_ADDRESSES,
    ) -> None:
        if burst < 1 or refill_seconds <= 0 or max_addresses < 1:
            raise ValueError("burst, refill_seconds and max_addresses must be positive")
        self._clock = clock
        self.burst = burst
        self.refill_seconds = refill_seconds
        self.max_addresses = max_addresses
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _refreshed(self, address: str) -> _Bucket | None:
        bucket = self._buckets.get(address)
        if bucket is None:
            return None
        now = self._clock.seconds()
        bucket.tokens = min(
            float(self.burst), bucket.tokens + (now - bucket.updated) / self.refill_seconds
        )
        bucket.updated = now
        if bucket.tokens >= self.burst:
            del self._buckets[address]  # back to a clean slate: forget it
            return None
        return bucket

    def delay(self, address: str) -> float:
        """Seconds an attempt from ``address`` must wait before it is checked (0: at once)."""
        bucket = self._refreshed(address)
        if bucket is None or bucket.tokens >= 1:
            return 0.0
        return (1 - bucket.tokens) * self.refill_seconds

    def failed(self, address: str) -> None:
        """Take a token for a failure; the debt is capped so a user is never locked out
        for longer than ``burst`` refill intervals."""
        bucket = self._refreshed(address)
        if bucket is None:
            bucket = _Bucket(float(self.burst), self._clock.seconds())
            self._buckets[address] = bucket
            while len(self._buckets) > self.max_addresses:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(address)
        bucket.tokens = max(bucket.tokens - 1, 1.0 - self.burst)
