"""Unit tests for stomp_chat.transport.stomp: the TCP protocol and its flow control."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from stomp_chat.session import State
from stomp_chat.stomp.frame import Frame, encode_frame
from stomp_chat.transport.stomp import StompFactory, StompProtocol
from tests.stompfakes import OutputReader, make_context


class AbortRecordingTransport(StringTransport):
    """A StringTransport that counts abortConnection calls."""

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        self.aborts = 0

    def abortConnection(self) -> None:
        self.aborts += 1
        super().abortConnection()


def connect(slow_consumer_bytes: int = 1000, close_linger: float = 5.0):
    clock = Clock()
    context = make_context(clock=clock)
    factory = StompFactory(context, slow_consumer_bytes, close_linger)
    protocol = factory.buildProtocol(None)
    transport = AbortRecordingTransport()
    protocol.makeConnection(transport)
    return clock, context, protocol, transport


def frames_of(data: bytes) -> list[Frame]:
    reader = OutputReader("1.2")
    reader.feed(data)
    return reader.frames


def login(protocol: StompProtocol, transport: StringTransport) -> None:
    protocol.dataReceived(encode_frame(Frame("CONNECT", {"accept-version": "1.2"})))
    protocol.dataReceived(
        encode_frame(Frame("SUBSCRIBE", {"destination": "/topic/t", "id": "0"}))
    )
    assert frames_of(transport.value())[0].command == "CONNECTED"
    transport.clear()


def publish(context, size: int, count: int = 1) -> None:
    for _ in range(count):
        context.broker.publish("/topic/t", b"x" * size)


def test_factory_builds_protocols_sharing_the_context():
    """The factory hands its context and limits to every protocol it builds."""
    context = make_context()
    factory = StompFactory(context, 123, 4.5)
    a, b = factory.buildProtocol(None), factory.buildProtocol(None)
    assert a is not b
    assert a.context is context and b.context is context
    assert (a.slow_consumer_bytes, a.close_linger) == (123, 4.5)


def test_connection_registers_streaming_producer_and_session():
    """connectionMade registers the protocol as a push producer and starts a session."""
    _, context, protocol, transport = connect()
    assert transport.producer is protocol
    assert transport.streaming is True
    assert protocol.session.peer == "192.0.2.7:40000"
    assert len(context.heartbeats) == 1


def test_bytes_in_frames_out():
    """Bytes received reach the session and its frames are written to the transport."""
    _, _, protocol, transport = connect()
    protocol.dataReceived(b"CONNECT\naccept-version:1.2\n\n\x00")
    (frame,) = frames_of(transport.value())
    assert frame.command == "CONNECTED"


def test_writes_pass_through_when_not_paused():
    """Without back-pressure every frame is written, however much is sent."""
    _, context, protocol, transport = connect(slow_consumer_bytes=1000)
    login(protocol, transport)
    publish(context, 500, count=10)
    frames = frames_of(transport.value())
    assert [f.command for f in frames] == ["MESSAGE"] * 10
    assert not transport.disconnecting


def test_writes_pass_through_while_paused_within_the_bound():
    """While paused, writes up to slow_consumer_bytes still go out and nothing closes."""
    _, context, protocol, transport = connect(slow_consumer_bytes=1000)
    login(protocol, transport)
    protocol.pauseProducing()
    publish(context, 100, count=3)
    assert len(frames_of(transport.value())) == 3
    assert not transport.disconnecting


def test_slow_consumer_gets_error_and_is_closed():
    """A paused peer falling beyond the bound gets ERROR 'slow consumer' and is closed."""
    _, context, protocol, transport = connect(slow_consumer_bytes=1000)
    login(protocol, transport)
    protocol.pauseProducing()
    publish(context, 400, count=5)
    frames = frames_of(transport.value())
    assert frames[-1].command == "ERROR"
    assert frames[-1].headers["message"] == "slow consumer"
    assert len(frames) < 5 + 1, "messages beyond the bound were still written"
    assert transport.disconnecting
    assert protocol.session.state is State.CLOSED
    assert context.broker.subscriber_count("/topic/t") == 0


def test_slow_consumer_is_aborted_after_the_linger():
    """If the slow peer never lets the connection close, it is aborted after close_linger."""
    clock, context, protocol, transport = connect(slow_consumer_bytes=1000, close_linger=5.0)
    login(protocol, transport)
    protocol.pauseProducing()
    publish(context, 600, count=3)
    assert transport.aborts == 0
    clock.advance(4.9)
    assert transport.aborts == 0
    clock.advance(0.2)
    assert transport.aborts == 1


def test_no_abort_when_connection_closes_in_time():
    """A connection lost before the linger ends is not aborted, and no timer is left."""
    clock, context, protocol, transport = connect(slow_consumer_bytes=1000, close_linger=5.0)
    login(protocol, transport)
    protocol.pauseProducing()
    publish(context, 600, count=3)
    protocol.connectionLost(Failure(ConnectionError("gone")))
    clock.advance(10)
    assert transport.aborts == 0
    assert clock.getDelayedCalls() == []


def test_resume_resets_the_backlog():
    """resumeProducing forgets what was written while paused."""
    _, context, protocol, transport = connect(slow_consumer_bytes=1000)
    login(protocol, transport)
    for _ in range(5):
        protocol.pauseProducing()
        publish(context, 300, count=2)  # about 800 bytes: within the bound each time
        protocol.resumeProducing()
    frames = frames_of(transport.value())
    assert [f.command for f in frames] == ["MESSAGE"] * 10
    assert not transport.disconnecting


def test_stop_producing_counts_as_paused():
    """After stopProducing, writes count against the slow-consumer bound."""
    _, context, protocol, transport = connect(slow_consumer_bytes=1000)
    login(protocol, transport)
    protocol.stopProducing()
    publish(context, 600, count=3)
    assert frames_of(transport.value())[-1].command == "ERROR"


def test_disconnect_closes_and_schedules_abort():
    """DISCONNECT loses the connection and an abort is scheduled in case it never closes."""
    clock, _, protocol, transport = connect(close_linger=2.0)
    protocol.dataReceived(b"CONNECT\naccept-version:1.2\n\n\x00DISCONNECT\nreceipt:1\n\n\x00")
    frames = frames_of(transport.value())
    assert [f.command for f in frames] == ["CONNECTED", "RECEIPT"]
    assert transport.disconnecting
    clock.advance(2.0)
    assert transport.aborts == 1


def test_connection_lost_releases_the_session():
    """connectionLost closes the session and removes it from the heart-beat monitor."""
    _, context, protocol, transport = connect()
    login(protocol, transport)
    protocol.connectionLost(Failure(ConnectionError("reset")))
    assert protocol.session.state is State.CLOSED
    assert len(context.heartbeats) == 0
    assert context.broker.subscriber_count("/topic/t") == 0


def test_error_is_written_before_closing():
    """A protocol violation writes ERROR, then loses the connection."""
    _, _, protocol, transport = connect()
    protocol.dataReceived(b"BOGUS\n\n\x00")
    (frame,) = frames_of(transport.value())
    assert frame.command == "ERROR"
    assert transport.disconnecting


def _sends(count: int, size: int) -> bytes:
    return b"".join(
        encode_frame(Frame("SEND", {"destination": "/topic/t"}, b"%06d" % i + b"." * size))
        for i in range(count)
    )


def _run_due_calls(clock: Clock) -> None:
    for _ in range(100_000):
        if not any(c.getTime() <= clock.seconds() for c in clock.getDelayedCalls()):
            return
        clock.advance(0)
    raise AssertionError("input handling never finished")


def test_large_read_is_handled_over_several_turns_in_order():
    """A read bigger than one input slice pauses reading, yields to the reactor, keeps order."""
    clock, _, protocol, transport = connect(slow_consumer_bytes=10**9)
    login(protocol, transport)
    data = _sends(200, 200)
    assert len(data) > 4 * protocol.input_slice
    protocol.dataReceived(data)
    first_turn = frames_of(transport.value())
    assert 0 < len(first_turn) < 200, "the whole read was handled in one turn"
    assert transport.producerState == "paused"
    _run_due_calls(clock)
    frames = frames_of(transport.value())
    assert [f.body[:6] for f in frames] == [b"%06d" % i for i in range(200)]
    assert transport.producerState == "producing"


def test_reads_arriving_while_slicing_wait_their_turn():
    """Bytes received while a large read is still being handled come after it."""
    clock, _, protocol, transport = connect(slow_consumer_bytes=10**9)
    login(protocol, transport)
    protocol.dataReceived(_sends(100, 200))
    protocol.dataReceived(
        encode_frame(Frame("SEND", {"destination": "/topic/t"}, b"last"))
    )
    _run_due_calls(clock)
    frames = frames_of(transport.value())
    assert len(frames) == 101
    assert frames[-1].body == b"last"


def test_connection_lost_while_slicing_stops_handling_input():
    """Once the connection is lost, the rest of a large read is dropped quietly."""
    clock, context, protocol, transport = connect(slow_consumer_bytes=10**9)
    login(protocol, transport)
    watcher = []
    context.broker.published_listeners.append(lambda key, message: watcher.append(message))
    protocol.dataReceived(_sends(200, 200))
    handled = len(watcher)
    protocol.connectionLost(Failure(ConnectionError("reset")))
    _run_due_calls(clock)
    assert len(watcher) == handled < 200


# -- back-pressure from storage ----------------------------------------------------------


def chat_message(seq: int):
    from datetime import UTC, datetime

    from stomp_chat.persistence import ChatMessage

    return ChatMessage(1, seq, f"1-{seq}", "TALK", 1, "hi", datetime(2024, 1, 1, tzinfo=UTC))


def _gated_connection(high_water: int = 3, low_water: int = 1):
    """A connection registered with a real write-behind writer as its input gate."""
    from stomp_chat.persistence import MemoryChatStore, WriteBehindWriter

    clock = Clock()
    context = make_context(clock=clock)
    writer = WriteBehindWriter(
        MemoryChatStore(), clock, flush_interval=1.0, max_pending=10,
        high_water=high_water, low_water=low_water,
    )
    writer.startService()
    factory = StompFactory(context, 1000, 5.0, input_gate=writer)
    protocol = factory.buildProtocol(None)
    transport = AbortRecordingTransport()
    protocol.makeConnection(transport)
    return clock, writer, protocol, transport


def test_connections_stop_being_read_above_the_writers_high_water_mark():
    """Above the writer's high-water mark every registered connection is paused, and it is
    read again once the backlog drains to the low-water mark."""
    clock, writer, protocol, transport = _gated_connection()
    assert transport.producerState == "producing"
    for seq in range(1, 4):
        writer.append(chat_message(seq))
    assert transport.producerState == "paused"
    clock.advance(1.0)
    assert writer.pending_count == 0
    assert transport.producerState == "producing"


def test_a_gate_pause_survives_the_end_of_a_sliced_read():
    """A large read handled in slices resumes reading only if the gate does not hold it."""
    clock, writer, protocol, transport = _gated_connection()
    protocol.input_slice = 10
    protocol.dataReceived(b"\n" * 25)  # heart-beats, read over three turns
    assert transport.producerState == "paused"
    for seq in range(1, 4):
        writer.append(chat_message(seq))
    clock.advance(0)
    clock.advance(0)
    assert transport.producerState == "paused", "the slicing must not resume a gated read"
    clock.advance(1.0)
    assert transport.producerState == "producing"


def test_a_closed_connection_leaves_the_gate():
    """A connection that closes is no longer paused or resumed by the writer."""
    clock, writer, protocol, transport = _gated_connection()
    protocol.connectionLost(Failure(ConnectionError("gone")))
    for seq in range(1, 4):
        writer.append(chat_message(seq))
    assert transport.producerState == "producing"


def test_input_read_before_the_gate_closed_waits_until_it_opens():
    """Frames that arrive while the gate is closed (already read from the socket) reach the
    session only once it opens again, in order."""
    clock, writer, protocol, transport = _gated_connection()
    for seq in range(1, 4):
        writer.append(chat_message(seq))
    assert transport.producerState == "paused"
    protocol.dataReceived(encode_frame(Frame("CONNECT", {"accept-version": "1.2"})))
    clock.advance(0)
    assert transport.value() == b"", "the session has not seen the CONNECT yet"
    clock.advance(1.0)  # the writer saves the backlog and opens the gate
    clock.advance(0)
    assert frames_of(transport.value())[0].command == "CONNECTED"
    assert transport.producerState == "producing"
