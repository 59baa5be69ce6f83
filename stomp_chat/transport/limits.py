"""Open connections per peer address, shared by the TCP and WebSocket listeners.

One address may hold at most ``max_per_address`` STOMP connections, raw and
WebSocket together. Over the cap, a raw TCP client gets ERROR "too many
connections" and is closed; a WebSocket handshake gets HTTP 429 before it is
upgraded. Loopback is counted like any other address.
"""

from __future__ import annotations

from twisted.logger import Logger

log = Logger()

DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 256

#: What a refused client is told.
TOO_MANY_CONNECTIONS = "too many connections"


class ConnectionCounter:
    """Counts open connections by peer host; ``max_per_address=0`` is unlimited."""

    def __init__(self, max_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS) -> None:
        if max_per_address < 0:
            raise ValueError("max_per_address cannot be negative")
        self.max_per_address = max_per_address
        self._open: dict[str, int] = {}
        #: Addresses refused since they last dropped below the cap: logged once.
        self._refused: set[str] = set()

    def count(self, host: str) -> int:
        return self._open.get(host, 0)

    def admits(self, host: str) -> bool:
        """Whether one more connection from ``host`` is allowed; logs the first refusal."""
        cap = self.max_per_address
        if not cap or not host or self._open.get(host, 0) < cap:
            return True
        if host not in self._refused:
            self._refused.add(host)
            log.warn(
                "refusing connections from {host}: it holds {count} (--max-connections-per-"
                "address); further refusals are not logged until it drops below",
                host=host,
                count=self._open.get(host, 0),
            )
        return False

    def opened(self, host: str) -> None:
        if host:
            self._open[host] = self._open.get(host, 0) + 1

    def closed(self, host: str) -> None:
        if not host:
            return
        remaining = self._open.get(host, 0) - 1
        if remaining > 0:
            self._open[host] = remaining
        else:
            self._open.pop(host, None)
        if remaining < self.max_per_address:
            self._refused.discard(host)

    def __len__(self) -> int:
        """How many addresses hold a connection."""
        return len(self._open)
