"""A per-connection SEND rate limit, as an inbound interceptor.

Each connection has a token bucket: ``burst`` SENDs at once, refilled at
``rate`` per second on the server's clock. A SEND that finds the bucket empty
ends the connection with ERROR "rate limit exceeded": a client that floods
is misbehaving, and dropping its frames silently would only hide that from
it (an application error per dropped frame would cost as much as the flood).
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

from twisted.internet.interfaces import IReactorTime

from stomp_chat.errors import ProtocolError
from stomp_chat.interceptors import SessionView
from stomp_chat.stomp.frame import Frame


class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` per second, taken one at a time."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
            self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class SendRateInterceptor:
    """Refuses SENDs beyond ``rate`` per second (bursts of ``burst``) on one connection."""

    #: The session's chain hands it these frames only.
    commands = frozenset({"SEND"})

    def __init__(self, rate: float, burst: int, clock: IReactorTime) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a send rate needs a positive rate and a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        #: One bucket per live session; a closed session's bucket goes with it.
        self._buckets: WeakKeyDictionary[SessionView, TokenBucket] = WeakKeyDictionary()

    def inbound(self, frame: Frame, session: SessionView) -> Frame:
        if frame.command != "SEND":
            return frame
        now = self.clock.seconds()
        bucket = self._buckets.get(session)
        if bucket is None:
            bucket = self._buckets[session] = TokenBucket(self.rate, self.burst, now)
        if not bucket.take(now):
            raise ProtocolError(
                "rate limit exceeded",
                f"at most {self.rate:g} SENDs per second (bursts of {self.burst}) "
                "are accepted on one connection",
            )
        return frame
