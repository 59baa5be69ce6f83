"""The STOMP protocol on a byte stream (raw TCP, or a WebSocket's messages).

A thin Twisted protocol: bytes go to the session, whose frames come back
through ``write``. It owns the one thing the session must not know about,
the socket's back-pressure: it registers itself as the transport's push
producer, so Twisted says when the peer stops reading, and it closes a peer
that falls further behind than ``slow_consumer_bytes``.
"""

from __future__ import annotations

from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from stomp_chat.session import ServerContext, StompSession

DEFAULT_SLOW_CONSUMER_BYTES = 4 * 1024 * 1024
#: The most input handled in one go before the reactor gets a turn.
DEFAULT_INPUT_SLICE = 8 * 1024
#: How long a closing connection may take to flush before it is cut.
DEFAULT_CLOSE_LINGER = 5.0


class InputGate(TypingProtocol):
    """Tells registered connections to stop and resume reading (the write-behind writer
    does, while too many chat messages wait to be saved)."""

    def register_producer(self, producer: Any) -> None: ...

    def unregister_producer(self, producer: Any) -> None: ...


class _GateHold:
    """What an InputGate pauses: this connection's reading, one reason among others."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: StompProtocol) -> None:
        self._protocol = protocol

    def pauseProducing(self) -> None:
        self._protocol.hold_input("gate")

    def resumeProducing(self) -> None:
        self._protocol.release_input("gate")


@implementer(IPushProducer)
class StompProtocol(Protocol):
    """One STOMP connection: a session plus its socket's flow control."""

    session: StompSession
    transport: Any  # a TCP transport, or the WebSocket adapter

    def __init__(
        self,
        context: ServerContext,
        slow_consumer_bytes: int = DEFAULT_SLOW_CONSUMER_BYTES,
        close_linger: float = DEFAULT_CLOSE_LINGER,
        input_gate: InputGate | None = None,
    ) -> None:
        self.context = context
        self.slow_consumer_bytes = slow_consumer_bytes
        self.close_linger = close_linger
        self.input_gate = input_gate
        self._gate_hold: _GateHold | None = None
        #: Why reading from the peer is paused; it resumes when no reason is left.
        self._input_holds: set[str] = set()
        self._paused = False
        #: Bytes written since the transport said its buffer was full.
        self._backlog = 0
        self._overflowed = False
        self._abort_call: IDelayedCall | None = None
        self.input_slice = DEFAULT_INPUT_SLICE
        #: Input received but not handled yet, while the reactor takes a turn.
        self._unread: list[bytes] = []

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        peer = self.transport.getPeer()
        host = getattr(peer, "host", None)
        label = f"{host}:{getattr(peer, 'port', '')}" if host is not None else str(peer)
        self.session = StompSession(self.context, self, label)
        if self.input_gate is not None:
            self._gate_hold = _GateHold(self)
            self.input_gate.register_producer(self._gate_hold)

    def hold_input(self, reason: str) -> None:
        """Stop reading from the peer until every reason given is released."""
        if not self._input_holds and self.connected:
            self.transport.pauseProducing()
        self._input_holds.add(reason)

    def release_input(self, reason: str) -> None:
        if reason not in self._input_holds:
            return
        self._input_holds.discard(reason)
        if reason == "gate" and self._unread and self.connected:
            clock: Any = self.context.clock
            clock.callLater(0, self._read_slice)  # what was read before the gate closed
        if not self._input_holds and self.connected:
            self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        """Handle input in slices, letting the reactor flush writes in between.

        One read can hold hundreds of SENDs, each fanning out to many
        subscribers; handled in one go, the first deliveries would wait in
        the write buffers until the last SEND was routed. Past a slice, the
        rest waits for the next reactor turn and the socket stops reading.
        """
        if self._unread or "gate" in self._input_holds:
            # Input already read when the gate closed (a WebSocket delivers every frame of
            # one read) waits with the rest: at most one read per connection.
            self._unread.append(data)
            return
        if len(data) <= self.input_slice:
            self.session.data_received(data)
            return
        self._unread.append(data)
        self.hold_input("slice")
        self._read_slice()

    def _read_slice(self) -> None:
        if "gate" in self._input_holds:
            return  # resumed by release_input
        data = b"".join(self._unread)
        self._unread.clear()
        if not self.connected:
            return
        limit = self.input_slice
        self.session.data_received(data[:limit])
        if len(data) > limit and self.connected:
            self._unread.append(data[limit:])
            clock: Any = self.context.clock
            clock.callLater(0, self._read_slice)
        elif self.connected:
            self.release_input("slice")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        self._unread.clear()
        if self.input_gate is not None and self._gate_hold is not None:
            self.input_gate.unregister_producer(self._gate_hold)
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        self.session.connection_lost()

    # -- what the session writes to -----------------------------------

    def write(self, data: bytes) -> None:
        if self._paused:
            self._backlog += len(data)
            if self._backlog > self.slow_consumer_bytes and not self._overflowed:
                self._overflowed = True
                self.session.fail(
                    "slow consumer",
                    f"the client fell more than {self.slow_consumer_bytes} bytes behind",
                )
                return
        self.transport.write(data)

    def close(self) -> None:
        """Flush and close; cut the connection if the peer will not read."""
        self.transport.loseConnection()
        if self._abort_call is None:
            clock: Any = self.context.clock
            self._abort_call = clock.callLater(self.close_linger, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()

    # -- IPushProducer: the transport's verdict on our output ----------

    def pauseProducing(self) -> None:
        self._paused = True
        self._backlog = 0

    def resumeProducing(self) -> None:
        self._paused = False
        self._backlog = 0

    def stopProducing(self) -> None:
        self._paused = True


class StompFactory(Factory):
    """Builds STOMP connections that share one server context."""

    def __init__(
        self,
        context: ServerContext,
        slow_consumer_bytes: int = DEFAULT_SLOW_CONSUMER_BYTES,
        close_linger: float = DEFAULT_CLOSE_LINGER,
        input_gate: InputGate | None = None,
    ) -> None:
        self.context = context
        self.slow_consumer_bytes = slow_consumer_bytes
        self.close_linger = close_linger
        #: Pauses every connection's reading while the server cannot keep up with storage.
        self.input_gate = input_gate

    def buildProtocol(self, addr: Any) -> StompProtocol:
        return StompProtocol(
            self.context, self.slow_consumer_bytes, self.close_linger, self.input_gate
        )
