"""The STOMP protocol on a byte stream (raw TCP, or a WebSocket's messages).

A thin Twisted protocol: bytes go to the session, whose frames come back
through ``write``. It owns what the session must not know about sockets:

* back-pressure: it is the transport's push producer, so Twisted says when
  the peer stops reading, and it closes a peer that falls further behind than
  ``slow_consumer_bytes`` beyond the largest frame in flight (what the socket
  transport still holds is measured, so a client that keeps reading is never
  cut however long its buffer stays non-empty);
* the bytes a client may send before its CONNECT frame is complete;
* the per-address connection count, and one log line when a connection
  opens and one when it closes;
* one transport write per connection for everything handling one read wrote
  to it (see ``OutputBatch``).
"""

from __future__ import annotations

from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from stomp_chat.identity import ConnectionInfo
from stomp_chat.session import ServerContext, State, StompSession
from stomp_chat.stomp.frame import V1_0, Frame, FrameError, encode_frame, unescape_header
from stomp_chat.transport.connection import connection_info_from_transport
from stomp_chat.transport.limits import TOO_MANY_CONNECTIONS, ConnectionCounter
from stomp_chat.transport.sockets import queued_bytes, set_no_delay

log = Logger()

DEFAULT_SLOW_CONSUMER_BYTES = 4 * 1024 * 1024
#: A CONNECT frame with a JWT is a few KiB; a client sending more before its
#: CONNECT is complete is not speaking STOMP.
DEFAULT_MAX_CONNECT_BYTES = 64 * 1024
#: The most input handled in one go before the reactor gets a turn.
DEFAULT_INPUT_SLICE = 8 * 1024
#: How long a closing connection may take to flush before it is cut.
DEFAULT_CLOSE_LINGER = 5.0

_ERROR_PREFIX = b"ERROR"


class OutputBatch:
    """Holds what connections are written while one read is handled, one write each after.

    One read from a publisher holds many SENDs (about 20 at full load), each
    fanned out to the same subscribers; Twisted's ``transport.write`` costs
    more than building the MESSAGE itself, so each connection gets the frames
    of the whole read in one write once the read is handled
    (docs/benchmarks.md, "Chat path after the hardening", has the figures).
    Nothing leaves sooner this way: Twisted sends only once the reactor has
    its turn. Writes made outside a read (timers, database callbacks) go out
    at once. One per server, shared by its connections; reactor thread only.
    """

    __slots__ = ("_held", "depth")

    def __init__(self) -> None:
        #: Reads being handled (nested: a WebSocket read holds STOMP reads).
        self.depth = 0
        #: Connections holding frames, in the order of their first frame.
        self._held: list[StompProtocol] = []

    def hold(self, protocol: StompProtocol) -> None:
        """``protocol`` holds frames now: write them when the outermost read is done."""
        self._held.append(protocol)

    def begin(self) -> None:
        self.depth += 1

    def end(self) -> None:
        """Close one read; the outermost writes out every connection's held frames."""
        self.depth -= 1
        if self.depth:
            return
        while self._held:
            held, self._held = self._held, []
            for protocol in held:
                try:
                    protocol.flush()
                except Exception:
                    # As a delivery that raises: that connection fails, the others go on.
                    log.failure("writing to connection {session} failed",
                                session=protocol.session.session_id)
                    try:
                        protocol.session.fail(
                            "delivery failed",
                            "the server could not deliver a message to this connection",
                        )
                    except Exception:
                        # Its Close may raise too (a WebSocket's goes through the same
                        # socket): the connections after it still get their frames.
                        log.failure("failing connection {session} failed too",
                                    session=protocol.session.session_id)


class InputGate(TypingProtocol):
    """Tells registered connections to stop and resume reading (the write-behind writer
    does, while too many chat messages wait to be saved)."""

    def register_producer(self, producer: Any) -> None: ...

    def unregister_producer(self, producer: Any) -> None: ...


class _GateHold:
    """What an InputGate pauses: this connection's reading."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: StompProtocol) -> None:
        self._protocol = protocol

    def pauseProducing(self) -> None:
        self._protocol.close_gate()

    def resumeProducing(self) -> None:
        self._protocol.open_gate()


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
        *,
        max_connect_bytes: int = DEFAULT_MAX_CONNECT_BYTES,
        connections: ConnectionCounter | None = None,
        input_gate: InputGate | None = None,
        output: OutputBatch | None = None,
    ) -> None:
        self.context = context
        self.slow_consumer_bytes = slow_consumer_bytes
        self.close_linger = close_linger
        self.max_connect_bytes = max_connect_bytes
        self.connections = connections
        self.input_gate = input_gate
        #: Shared by the server's connections: see OutputBatch.
        self.output = output if output is not None else OutputBatch()
        #: Frames written while a read is handled, not handed to the transport yet.
        self._held: list[bytes] | None = None
        self._frames_are_messages = False
        self._gate_hold: _GateHold | None = None
        #: The input gate is closed: the server cannot keep up with storage.
        self._gate_closed = False
        #: Set by the WebSocket adapter before the connection is made; built
        #: from the socket otherwise.
        self.connection: ConnectionInfo | None = None
        self._paused = False
        #: The latest write (a frame, or the frames of one read): when it fills the
        #: buffer, what is in flight; when the session closes, the ERROR it may have
        #: just sent.
        self._last_write: bytes | list[bytes] = b""
        #: Bytes written since the transport said its buffer was full, and the
        #: largest single frame in flight since then.
        self._backlog = 0
        self._largest = 0
        self._largest_at_pause = 0
        self._overflowed = False
        self._abort_call: IDelayedCall | None = None
        self.input_slice = DEFAULT_INPUT_SLICE
        #: Input received but not handled yet, while the reactor takes a turn.
        self._unread: list[bytes] = []
        #: The session asked for no input (an interceptor is waiting).
        self._reading_paused = False
        #: Bytes received while no CONNECT frame was complete yet; None after.
        self._connect_bytes: int | None = 0
        self._opened_at = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        #: Why the connection ended, for its log line.
        self.close_reason: str | None = None

    @property
    def writes_paused(self) -> bool:
        """Whether the transport's write buffer is full (the peer is not keeping up)."""
        return self._paused

    def connectionMade(self) -> None:
        if self.connection is None:
            self.connection = connection_info_from_transport(self.transport)
            set_no_delay(self.transport)
        connection = self.connection
        self.kind = connection.transport
        self.context.stats.connection_opened(self.kind)
        self.transport.registerProducer(self, True)
        #: A WebSocket sends each write as one message: the frames of a read go to it
        #: apart (writeSequence); a byte stream takes them joined.
        self._frames_are_messages = getattr(self.transport, "frames_are_messages", False)
        if self.connections is not None:
            self.connections.opened(connection.peer_host)
        self._opened_at = self.context.clock.seconds()
        self.session = StompSession(self.context, self, connection)
        if self.input_gate is not None:
            self._gate_hold = _GateHold(self)
            self.input_gate.register_producer(self._gate_hold)
        log.info(
            "connection {session} opened: {peer} over {transport}",
            session=self.session.session_id,
            peer=connection.peer,
            transport=connection.transport,
        )

    def dataReceived(self, data: bytes) -> None:
        """Handle input in slices, letting the reactor flush writes in between.

        One read can hold hundreds of SENDs, each fanning out to many
        subscribers; handled in one go, the first deliveries would wait in
        the write buffers until the last SEND was routed. Past a slice, the
        rest waits for the next reactor turn and the socket stops reading.
        """
        self.bytes_in += len(data)
        if self._unread or self._reading_paused or self._gate_closed:
            # Input read before the gate closed (a WebSocket hands over every frame of one
            # read) waits with the rest: at most one read per connection.
            self._unread.append(data)
            return
        if len(data) <= self.input_slice:
            self._feed(data)
            return
        self._unread.append(data)
        self.transport.pauseProducing()
        self._read_slice()

    def _read_slice(self) -> None:
        if not self.connected or self._reading_paused or self._gate_closed or not self._unread:
            return
        data = b"".join(self._unread)
        self._unread.clear()
        limit = self.input_slice
        self._feed(data[:limit])
        if len(data) > limit and self.connected:
            self._unread.insert(0, data[limit:])
            if self._reading_paused or self._gate_closed:
                return
            clock: Any = self.context.clock
            clock.callLater(0, self._read_slice)
        elif self.connected and not self._reading_paused and not self._gate_closed:
            self.transport.resumeProducing()

    def _feed(self, data: bytes) -> None:
        output = self.output
        output.begin()
        try:
            if self._connect_bytes is None:
                self.session.data_received(data)
            else:
                self._feed_before_connect(data)
        finally:
            output.end()

    def _feed_before_connect(self, data: bytes) -> None:
        """Give the session at most ``max_connect_bytes`` before a CONNECT frame."""
        session = self.session
        allowance = self.max_connect_bytes - (self._connect_bytes or 0)
        head, rest = data[:allowance], data[allowance:]
        self._connect_bytes = (self._connect_bytes or 0) + len(head)
        if head:
            session.data_received(head)
        if session.state is not State.AWAITING_CONNECT:
            self._connect_bytes = None
            if rest and self._reading_paused:
                self._unread.insert(0, rest)  # the session waits: resume_reading feeds it
            elif rest:
                session.data_received(rest)
        elif rest:
            self.close_reason = "connect frame too large"
            session.fail(
                "connect frame too large",
                f"no complete CONNECT frame within the first {self.max_connect_bytes} bytes",
            )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.connected:
            self.context.stats.connection_closed(self.kind)
        self.connected = False
        self._unread.clear()
        self._held = None
        if self.input_gate is not None and self._gate_hold is not None:
            self.input_gate.unregister_producer(self._gate_hold)
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        if self.close_reason is None:
            self.close_reason = _lost_reason(reason)
        self.session.connection_lost()
        connection = self.connection
        assert connection is not None
        if self.connections is not None:
            self.connections.closed(connection.peer_host)
        principal = self.session.principal
        log.info(
            "connection {session} closed: {peer} over {transport}, user {user}, "
            "{duration} s, {bytes_in} bytes in, {bytes_out} bytes out: {reason}",
            session=self.session.session_id,
            peer=connection.peer,
            transport=connection.transport,
            user=getattr(principal, "name", principal) or "-",
            duration=round(self.context.clock.seconds() - self._opened_at, 3),
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            reason=self.close_reason,
        )

    # -- what the session writes to -----------------------------------

    def write(self, data: bytes) -> None:
        # Once per MESSAGE of every fan-out: while a read is handled, held for one write
        # per connection (OutputBatch).
        held = self._held
        if held is not None:
            held.append(data)
        elif self.output.depth:
            self._held = [data]
            self.output.hold(self)
        else:
            self._write_now(data)

    def _write_now(self, data: bytes) -> None:
        # Only what the log line and flow control need (the ERROR a closing session sent
        # is looked for in close(), not here).
        if self._paused and not self._count_behind(data):
            return
        self.bytes_out += len(data)
        self._last_write = data
        self.transport.write(data)

    def flush(self) -> None:
        """Hand the frames held during a read to the transport, in one write if it can."""
        frames = self._held
        if frames is None:
            return
        self._held = None
        if len(frames) == 1 or self._paused:
            # One frame, or a peer behind: each frame passes the slow-consumer check,
            # and none follows the ERROR of one that fails it.
            for data in frames:
                self._write_now(data)
                if self._overflowed:
                    break
            return
        self._last_write = frames
        if self._frames_are_messages:
            self.bytes_out += sum(map(len, frames))
            self.transport.writeSequence(frames)
        else:
            # Twisted's writeSequence checks and counts each piece in Python: one join is
            # cheaper, and Twisted joins its buffer before sending anyway.
            data = b"".join(frames)
            self.bytes_out += len(data)
            self.transport.write(data)
        # Twisted has paused us, if it does, from inside that write: from now on only the
        # last frame counts (an ERROR for close()), and an idle connection keeps no more.
        self._last_write = frames[-1]

    def _count_behind(self, data: bytes) -> bool:
        """While the peer is not keeping up: whether ``data`` may still be written."""
        size = len(data)
        if size > self._largest:
            self._largest = size
        if self._queued() - self._largest > self.slow_consumer_bytes and not self._overflowed:
            self._overflowed = True
            self.session.fail(
                "slow consumer",
                f"the client fell more than {self.slow_consumer_bytes} bytes behind",
            )
            return False
        self._backlog += size
        return True

    def _queued(self) -> int:
        """Bytes written and not yet taken by the kernel: measured, or else counted.

        Counting what was written since the buffer filled overstates it for
        a client that reads as fast as it is sent to, whose buffer may never
        drain quite to empty (only then does Twisted resume).
        """
        measured = queued_bytes(self.transport)
        if measured is not None:
            return measured
        return self._largest_at_pause + self._backlog

    @property
    def reading_held(self) -> bool:
        return self._reading_paused or self._gate_closed

    def pause_reading(self) -> None:
        """Read nothing more until ``resume_reading`` (the session is waiting)."""
        self._reading_paused = True
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        """Handle what arrived meanwhile, then read from the socket again."""
        if not self._reading_paused:
            return
        self._reading_paused = False
        if self._unread:
            self._read_slice()
        elif self.connected and not self._gate_closed:
            self.transport.resumeProducing()

    def close_gate(self) -> None:
        """Read nothing more until ``open_gate`` (storage is behind)."""
        self._gate_closed = True
        if self.connected:
            self.transport.pauseProducing()

    def open_gate(self) -> None:
        """Handle what was read meanwhile, then read again (unless the session waits)."""
        if not self._gate_closed:
            return
        self._gate_closed = False
        if not self.connected or self._reading_paused:
            return
        if self._unread:
            clock: Any = self.context.clock
            clock.callLater(0, self._read_slice)
        else:
            self.transport.resumeProducing()

    def close(self) -> None:
        """Flush and close; cut the connection if the peer will not read."""
        self.flush()
        if self.close_reason is None:
            # A session that fails writes its ERROR, then closes at once.
            last = self._last_write
            if isinstance(last, list):
                last = last[-1]
            if last.startswith(_ERROR_PREFIX):
                self.close_reason = _error_message(last, self.session.version)
            else:
                self.close_reason = "closed by the server after DISCONNECT"
        if self._abort_call is None:
            # Armed first: a transport whose close raises is still cut.
            clock: Any = self.context.clock
            self._abort_call = clock.callLater(self.close_linger, self._abort)
        self.transport.loseConnection()

    def _abort(self) -> None:
        self._abort_call = None
        self.close_reason = f"{self.close_reason}; cut after {self.close_linger} s unread"
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()

    # -- IPushProducer: the transport's verdict on our output ----------

    def pauseProducing(self) -> None:
        # Twisted calls this again on every write while its buffer is full:
        # only the first call starts counting.
        if not self._paused:
            self._paused = True
            self._backlog = 0
            # Twisted pauses from inside the write that filled its buffer.
            last = self._last_write
            size = len(last) if isinstance(last, bytes) else max(map(len, last))
            self._largest = self._largest_at_pause = size

    def resumeProducing(self) -> None:
        self._paused = False
        self._backlog = 0
        self._largest = 0

    def stopProducing(self) -> None:
        self.pauseProducing()


def _lost_reason(reason: Failure) -> str:
    message = reason.getErrorMessage() if reason is not None else ""
    return f"connection lost ({message})" if message else "connection lost"


def _error_message(data: bytes, version: str) -> str:
    """The ``message`` header of an encoded ERROR frame, for the log."""
    head = data.split(b"\n\n", 1)[0]
    for line in head.split(b"\n")[1:]:
        if line.startswith(b"message:"):
            value = line[len(b"message:") :].rstrip(b"\r").decode("utf-8", "replace")
            try:
                return unescape_header(value, version)
            except FrameError:
                return value
    return "ERROR"


class RefusedConnection(Protocol):
    """Tells a client over the per-address cap so in a STOMP ERROR, then closes."""

    transport: Any

    def connectionMade(self) -> None:
        body = b"this address holds the most connections the server allows"
        frame = Frame(
            "ERROR", {"message": TOO_MANY_CONNECTIONS, "content-type": "text/plain"}, body
        )
        self.transport.write(encode_frame(frame, V1_0))
        self.transport.loseConnection()


class StompFactory(Factory):
    """Builds STOMP connections that share one server context and connection count."""

    def __init__(
        self,
        context: ServerContext,
        slow_consumer_bytes: int = DEFAULT_SLOW_CONSUMER_BYTES,
        close_linger: float = DEFAULT_CLOSE_LINGER,
        *,
        max_connect_bytes: int = DEFAULT_MAX_CONNECT_BYTES,
        connections: ConnectionCounter | None = None,
        input_gate: InputGate | None = None,
        output: OutputBatch | None = None,
    ) -> None:
        self.context = context
        self.slow_consumer_bytes = slow_consumer_bytes
        self.close_linger = close_linger
        self.max_connect_bytes = max_connect_bytes
        self.connections = connections if connections is not None else ConnectionCounter()
        #: Pauses every connection's reading while the server cannot keep up with storage.
        self.input_gate = input_gate
        #: Coalesces what one read writes to each connection (see OutputBatch); the
        #: server shares it with every other source of reads that deliver (the relay).
        self.output = output if output is not None else OutputBatch()

    def admits(self, host: str) -> bool:
        """Whether the per-address cap lets one more connection from ``host`` in."""
        return self.connections.admits(host)

    def buildProtocol(self, addr: Any) -> Protocol:
        host = getattr(addr, "host", None)
        if host is not None and not self.admits(host):
            refused = RefusedConnection()
            refused.factory = self
            return refused
        return self.build_stomp()

    def build_stomp(self) -> StompProtocol:
        """A STOMP protocol for a connection already admitted (a WebSocket after its handshake)."""
        protocol = StompProtocol(
            self.context,
            self.slow_consumer_bytes,
            self.close_linger,
            max_connect_bytes=self.max_connect_bytes,
            connections=self.connections,
            input_gate=self.input_gate,
            output=self.output,
        )
        protocol.factory = self
        return protocol


__all__ = [
    "DEFAULT_CLOSE_LINGER",
    "DEFAULT_MAX_CONNECT_BYTES",
    "DEFAULT_SLOW_CONSUMER_BYTES",
    "OutputBatch",
    "RefusedConnection",
    "StompFactory",
    "StompProtocol",
]
