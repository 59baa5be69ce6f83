"""What every session of one server shares, and what a session writes to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet.interfaces import IReactorTime

from stomp_chat import __version__
from stomp_chat.app.routes import AppRouter
from stomp_chat.app.subscriptions import SubscriptionListener
from stomp_chat.broker import Broker
from stomp_chat.heartbeat import HeartbeatMonitor
from stomp_chat.interceptors import Interceptor, handles
from stomp_chat.stats import ServerStats
from stomp_chat.stomp.parser import (
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_HEADER_LENGTH,
    DEFAULT_MAX_HEADERS,
)

#: Far more than the commands STOMP has.
_MAX_CACHED_CHAINS = 64


class FrameTransport(Protocol):
    """Where a session writes: one call, one whole frame."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None:
        """Flush what was written, then close."""

    def pause_reading(self) -> None:
        """Stop delivering input until ``resume_reading`` (an interceptor is waiting)."""

    def resume_reading(self) -> None: ...

    @property
    def reading_held(self) -> bool:
        """Whether the server is not reading this client now (the session waits, storage is
        behind): what the client sends meanwhile stays unread."""


@dataclass(slots=True)
class SessionSettings:
    """Per-server settings every session reads."""

    server_name: str = f"stomp-chat/{__version__}"
    #: What the server can send and wants to receive, in ms (sx, sy).
    heartbeat: tuple[int, int] = (10_000, 10_000)
    connect_timeout: float = 10.0
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    max_headers: int = DEFAULT_MAX_HEADERS
    max_header_length: int = DEFAULT_MAX_HEADER_LENGTH
    max_subscriptions: int = 1_000
    #: Transactions one connection may have open at once.
    max_transactions: int = 16
    #: Bytes one connection may hold in its open transactions, all together.
    max_transaction_bytes: int = 16 * 1024 * 1024
    #: Seconds a frame may take from its first byte to its last.
    frame_timeout: float = 60.0
    #: Frames that may wait for an earlier, slower one (a durable SEND) before
    #: the connection stops reading until half of them are answered.
    max_pending_receipts: int = 10_000


@dataclass(slots=True)
class ServerContext:
    """What every session of one server shares (the factory's state)."""

    broker: Broker
    router: AppRouter
    settings: SessionSettings
    heartbeats: HeartbeatMonitor
    clock: IReactorTime
    #: The inbound chain, in order; authentication comes first. Empty: every
    #: CONNECT is accepted anonymously and frames go straight to the handlers.
    interceptors: list[Interceptor] = field(default_factory=list)
    #: Counters read by /metrics.
    stats: ServerStats = field(default_factory=ServerStats)
    #: Told of every subscription made and ended (recovery, presence, unread counts).
    subscription_listeners: list[SubscriptionListener] = field(default_factory=list)
    #: command -> the interceptors that handle it, built from ``_chained``.
    _chains: dict[str, tuple[Interceptor, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _chained: list[Interceptor] = field(
        default_factory=list, init=False, repr=False, compare=False
    )

    def chain_for(self, command: str) -> tuple[Interceptor, ...]:
        """The interceptors a ``command`` frame passes, in order.

        Per frame, so cached per command; ``interceptors`` may still be
        changed in place (a test swaps the authenticator), hence the cheap
        comparison with the list the cache was built from.
        """
        if self._chained != self.interceptors:
            self._chained = list(self.interceptors)
            self._chains.clear()
        chain = self._chains.get(command)
        if chain is None:
            if len(self._chains) >= _MAX_CACHED_CHAINS:  # unknown commands are refused
                self._chains.clear()  # later, but do not let them grow the cache
            chain = self._chains[command] = tuple(
                i for i in self._chained if handles(i, command)
            )
        return chain
