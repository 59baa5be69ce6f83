"""Plain counters the server keeps as it works, read by the metrics collector at scrape time.

Each event costs an integer increment or a dict update, nothing more: the
Prometheus objects are built only when ``/metrics`` is read.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

#: Client commands counted by name; anything else is "other".
CLIENT_COMMANDS = frozenset(
    ("CONNECT", "STOMP", "SEND", "SUBSCRIBE", "UNSUBSCRIBE", "ACK", "NACK", "BEGIN", "COMMIT",
     "ABORT", "DISCONNECT")
)

#: Distinct ERROR reasons kept apart; any further ones are counted as "other".
MAX_ERROR_REASONS = 50


class ServerStats:
    """Counters shared by every session and transport of one server."""

    __slots__ = (
        "connects",
        "connections_open",
        "connections_opened",
        "delivered",
        "errors",
        "frames_received",
        "frames_sent",
    )

    def __init__(self) -> None:
        self.connections_opened: Counter[str] = Counter()
        self.connections_open: Counter[str] = Counter()
        self.frames_received: Counter[str] = Counter()
        #: Frames other than MESSAGE, by command; MESSAGE frames are `delivered`.
        self.frames_sent: Counter[str] = Counter()
        self.delivered = 0
        self.errors: Counter[str] = Counter()
        #: CONNECT outcomes by (transport, outcome): the authentication method that
        #: accepted it ("none" for anonymous), or "refused".
        self.connects: Counter[tuple[str, str]] = Counter()

    def connection_opened(self, transport: str) -> None:
        self.connections_opened[transport] += 1
        self.connections_open[transport] += 1

    def connection_closed(self, transport: str) -> None:
        self.connections_open[transport] -= 1

    @property
    def open_connections(self) -> int:
        return sum(self.connections_open.values())

    def connect_accepted(self, transport: str, method: str) -> None:
        self.connects[transport, method] += 1

    def connect_refused(self, transport: str) -> None:
        self.connects[transport, "refused"] += 1

    def frame_received(self, command: str) -> None:
        self.frames_received[command if command in CLIENT_COMMANDS else "other"] += 1

    def error_sent(self, reason: str) -> None:
        """An ERROR frame went out; ``reason`` is its message header, kept short."""
        reason = reason.split(":", 1)[0].strip()[:60] or "unknown"
        if reason not in self.errors and len(self.errors) >= MAX_ERROR_REASONS:
            reason = "other"
        self.errors[reason] += 1


class BucketCounts:
    """A histogram's counts: cumulative per upper bound, plus the sum and the count."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[index] += 1


#: Batch sizes (messages) and write times (seconds) of the write-behind writer.
BATCH_SIZE_BOUNDS = (1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0)
FLUSH_SECONDS_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class TimedStore:
    """Wraps a chat store: notes each batch's size and how long its write took.

    The writer calls ``save_messages`` once per batch, so this costs nothing
    per message; every other call goes straight through.
    """

    def __init__(self, store: Any, clock: Any) -> None:
        self._store = store
        self._clock = clock
        self.batch_sizes = BucketCounts(BATCH_SIZE_BOUNDS)
        self.flush_seconds = BucketCounts(FLUSH_SECONDS_BOUNDS)

    def save_messages(self, messages: Any) -> Any:
        started = self._clock.seconds()
        self.batch_sizes.observe(len(messages))
        saving = self._store.save_messages(messages)

        def written(result: object) -> object:
            self.flush_seconds.observe(self._clock.seconds() - started)
            return result

        return saving.addBoth(written)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)
