"""Plain counters the server keeps as it works, read by the metrics collector at scrape time.

Each event costs an integer increment or a dict update, nothing more: the
Prometheus objects are built only when ``/metrics`` is read.
"""

from __future__ import annotations

from collections import Counter

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

    def connection_opened(self, transport: str) -> None:
        self.connections_opened[transport] += 1
        self.connections_open[transport] += 1

    def connection_closed(self, transport: str) -> None:
        self.connections_open[transport] -= 1

    @property
    def open_connections(self) -> int:
        return sum(self.connections_open.values())

    def frame_received(self, command: str) -> None:
        self.frames_received[command if command in CLIENT_COMMANDS else "other"] += 1

    def error_sent(self, reason: str) -> None:
        """An ERROR frame went out; ``reason`` is its message header, kept short."""
        reason = reason.split(":", 1)[0].strip()[:60] or "unknown"
        if reason not in self.errors and len(self.errors) >= MAX_ERROR_REASONS:
            reason = "other"
        self.errors[reason] += 1
