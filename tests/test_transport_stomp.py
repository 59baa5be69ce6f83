"""Unit tests for stomp_chat.transport.stomp: the TCP protocol and its flow control."""

from __future__ import annotations

import re
import socket
import time
import tracemalloc

import pytest_twisted
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from stomp_chat.identity import Principal
from stomp_chat.session import State
from stomp_chat.stomp.frame import Frame, encode_frame
from stomp_chat.transport.limits import ConnectionCounter
from stomp_chat.transport.stomp import StompFactory, StompProtocol
from tests.rawclients import (
    SMALL_RCVBUF,
    open_socket,
    read_until_closed,
    send_frame,
    stomp_connect,
    stomp_frames,
    subscribe_frame,
    ws_handshake,
)
from tests.stompfakes import OutputReader, make_context


class AbortRecordingTransport(StringTransport):
    """A StringTransport that counts abortConnection calls."""

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        self.aborts = 0

    def abortConnection(self) -> None:
        self.aborts += 1
        super().abortConnection()


def connect(slow_consumer_bytes: int = 1000, close_linger: float = 5.0, **factory_kwargs):
    clock = Clock()
    context = make_context(clock=clock)
    factory = StompFactory(context, slow_consumer_bytes, close_linger, **factory_kwargs)
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
    publish(context, 600, count=5)
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


def test_repeated_pause_does_not_reset_the_backlog():
    """Twisted pauses again on every write while its buffer is full: the count goes on."""
    _, context, protocol, transport = connect(slow_consumer_bytes=1000)
    login(protocol, transport)
    protocol.pauseProducing()
    for _ in range(20):
        publish(context, 100)
        protocol.pauseProducing()
    frames = frames_of(transport.value())
    assert frames[-1].command == "ERROR"
    assert frames[-1].headers["message"] == "slow consumer"
    assert transport.disconnecting


def test_a_frame_larger_than_the_bound_in_flight_is_not_falling_behind():
    """Two frames each larger than the bound, back to back, reach a client that is reading."""
    _, context, protocol, transport = connect(slow_consumer_bytes=1000)
    login(protocol, transport)
    publish(context, 5000)
    protocol.pauseProducing()  # the first frame filled the buffer
    publish(context, 5000)
    protocol.pauseProducing()  # and again, on the second write
    frames = frames_of(transport.value())
    assert [f.command for f in frames] == ["MESSAGE", "MESSAGE"]
    assert not transport.disconnecting
    protocol.resumeProducing()  # the client read both
    publish(context, 5000)
    assert not transport.disconnecting


def test_falling_behind_beyond_the_largest_frame_is_cut():
    """Once what waits beyond the largest frame in flight passes the bound, the client is cut."""
    _, context, protocol, transport = connect(slow_consumer_bytes=1000)
    login(protocol, transport)
    protocol.pauseProducing()
    publish(context, 5000)
    publish(context, 500)
    publish(context, 600)  # about 1,200 bytes wait beyond the 5,000-byte frame...
    assert not transport.disconnecting
    publish(context, 100)  # ...so the next write finds the client behind
    assert frames_of(transport.value())[-1].headers["message"] == "slow consumer"
    assert transport.disconnecting


def _socket_buffer(held: int) -> FileDescriptor:
    """A Twisted FileDescriptor whose write buffer holds ``held`` bytes."""
    socket_transport = FileDescriptor()
    socket_transport.dataBuffer = b"x" * held
    return socket_transport


def test_a_reader_keeping_up_is_never_cut_however_long_its_buffer_stays_full():
    """With the socket's buffer measured, a client that reads what it is sent is not cut,
    even when far more than the bound passes through while Twisted never resumes."""
    _, context, protocol, transport = connect(slow_consumer_bytes=1000)
    login(protocol, transport)
    protocol.pauseProducing()
    for _ in range(200):  # 200 x 300 bytes: 60 times the bound, never resumed
        transport.socket_transport = _socket_buffer(200)  # the reader took all but a little
        publish(context, 250)
    assert not transport.disconnecting
    transport.socket_transport = _socket_buffer(5000)  # now it has stopped reading
    publish(context, 250)
    assert frames_of(transport.value())[-1].headers["message"] == "slow consumer"
    assert transport.disconnecting


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
    publish(context, 600, count=5)
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


# -- bytes before CONNECT ------------------------------------------------------


def test_garbage_before_connect_is_cut_at_the_limit():
    """More than max_connect_bytes without a complete CONNECT gets ERROR, then close."""
    _, context, protocol, transport = connect(max_connect_bytes=1024)
    protocol.dataReceived(b"CONNECT\naccept-version:1.2\nx:" + b"y" * 900)
    assert not transport.disconnecting
    protocol.dataReceived(b"y" * 200)
    (frame,) = frames_of(transport.value())
    assert frame.command == "ERROR"
    assert frame.headers["message"] == "connect frame too large"
    assert transport.disconnecting
    assert protocol.session.state is State.CLOSED


def test_frames_after_connect_do_not_count_against_the_connect_limit():
    """A CONNECT within the limit, then a large SEND in the same read, is served."""
    _, _, protocol, transport = connect(max_connect_bytes=256, slow_consumer_bytes=10**9)
    protocol.dataReceived(
        encode_frame(Frame("CONNECT", {"accept-version": "1.2"}))
        + encode_frame(Frame("SEND", {"destination": "/topic/t", "receipt": "r"}, b"z" * 4000))
    )
    frames = frames_of(transport.value())
    assert [f.command for f in frames] == ["CONNECTED", "RECEIPT"]
    protocol.dataReceived(encode_frame(Frame("SEND", {"destination": "/topic/t"}, b"z" * 4000)))
    assert not transport.disconnecting


def test_a_connect_frame_exactly_at_the_limit_is_accepted():
    """A CONNECT frame whose size equals max_connect_bytes is accepted."""
    connect_frame = encode_frame(Frame("CONNECT", {"accept-version": "1.2"}))
    _, _, protocol, transport = connect(max_connect_bytes=len(connect_frame))
    for i in range(len(connect_frame)):
        protocol.dataReceived(connect_frame[i : i + 1])
    assert frames_of(transport.value())[0].command == "CONNECTED"


# -- the per-address connection cap ---------------------------------------------


def _tcp_peer(host: str = "192.0.2.7", port: int = 40000) -> IPv4Address:
    return IPv4Address("TCP", host, port)


def test_connections_over_the_cap_get_an_error_and_are_closed():
    """Over the per-address cap a TCP client gets ERROR 'too many connections', then close."""
    context = make_context()
    factory = StompFactory(context, connections=ConnectionCounter(2))
    open_ = []
    for port in range(2):
        protocol = factory.buildProtocol(_tcp_peer(port=port))
        protocol.makeConnection(StringTransport(peerAddress=_tcp_peer(port=port)))
        open_.append(protocol)
    refused = factory.buildProtocol(_tcp_peer(port=99))
    transport = StringTransport(peerAddress=_tcp_peer(port=99))
    refused.makeConnection(transport)
    (frame,) = frames_of(transport.value())
    assert frame.command == "ERROR"
    assert frame.headers["message"] == "too many connections"
    assert transport.disconnecting
    assert len(context.heartbeats) == 2, "the refused connection started no session"
    other = factory.buildProtocol(_tcp_peer("192.0.2.8"))
    assert isinstance(other, StompProtocol), "another address is not limited"
    open_[0].connectionLost(Failure(ConnectionError("gone")))
    assert isinstance(factory.buildProtocol(_tcp_peer(port=100)), StompProtocol)


def test_connections_are_counted_until_lost():
    """The factory's counter holds each open connection's address until it is lost."""
    context = make_context()
    factory = StompFactory(context, connections=ConnectionCounter(10))
    protocol = factory.buildProtocol(_tcp_peer())
    protocol.makeConnection(StringTransport(peerAddress=_tcp_peer()))
    assert factory.connections.count("192.0.2.7") == 1
    protocol.connectionLost(Failure(ConnectionError("gone")))
    assert factory.connections.count("192.0.2.7") == 0


# -- connection info and log lines ----------------------------------------------


def test_raw_tcp_connection_info_is_built_from_the_socket():
    """A raw TCP connection carries a ConnectionInfo naming its peer and transport."""
    _, _, protocol, _ = connect()
    info = protocol.connection
    assert (info.peer, info.peer_host, info.transport, info.secure) == (
        "192.0.2.7:40000", "192.0.2.7", "tcp", False,
    )


def _events(observer_events: list[dict]) -> list[str]:
    return [formatEvent(event) for event in observer_events]


def test_open_and_close_are_logged_with_reason_and_figures():
    """One line when a connection opens and one when it closes: id, peer, user, bytes, why."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock, _, protocol, transport = connect()
        protocol.dataReceived(b"CONNECT\naccept-version:1.2\npasscode:secret\n\n\x00")
        clock.advance(2.5)
        protocol.dataReceived(b"BOGUS\n\n\x00")
        protocol.connectionLost(Failure(ConnectionError("gone")))
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [line for line in _events(events) if line.startswith("connection ")]
    session_id = protocol.session.session_id
    assert lines[0] == f"connection {session_id} opened: 192.0.2.7:40000 over tcp"
    closed = lines[-1]
    assert closed.startswith(f"connection {session_id} closed: 192.0.2.7:40000 over tcp, user -")
    assert "2.5 s" in closed
    assert f"{len(transport.value())} bytes out" in closed
    assert closed.endswith(": unknown command")
    assert "secret" not in "\n".join(_events(events))


def test_close_after_disconnect_and_after_peer_loss_are_told_apart():
    """The close line says whether the client said DISCONNECT or just went away."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        _, _, polite, _ = connect()
        polite.dataReceived(b"CONNECT\naccept-version:1.2\n\n\x00DISCONNECT\n\n\x00")
        polite.connectionLost(Failure(ConnectionDone("bye")))
        _, _, rude, _ = connect()
        rude.connectionLost(Failure(ConnectionLost("reset by peer")))
    finally:
        globalLogPublisher.removeObserver(events.append)
    closed = [line for line in _events(events) if " closed: " in line]
    assert closed[0].endswith("closed by the server after DISCONNECT")
    assert "connection lost (" in closed[1] and closed[1].endswith("reset by peer.)")


# -- against a real server, over real sockets -----------------------------------

MiB = 1024 * 1024


def test_non_reading_subscriber_is_cut_and_the_server_holds_a_bounded_backlog(start_server):
    """A TCP subscriber that stops reading is cut with ERROR 'slow consumer'; what the server
    buffered for it stays near the bound while 40 MiB are published, and the publisher is
    served throughout."""
    server = start_server()
    slow, slow_reader = stomp_connect(server.stomp_port, rcvbuf=SMALL_RCVBUF)
    slow.sendall(subscribe_frame("/topic/flood"))
    slow_reader.until("RECEIPT")
    publisher, publisher_reader = stomp_connect(server.stomp_port)
    body = b"p" * MiB
    for i in range(40):
        publisher.sendall(send_frame("/topic/flood", body, receipt=str(i) if i == 39 else None))
    assert publisher_reader.until("RECEIPT").headers["receipt-id"] == "39"
    received = read_until_closed(slow)
    frames = stomp_frames(received)
    assert frames[-1].command == "ERROR"
    assert frames[-1].headers["message"] == "slow consumer"
    # Bound (4 MiB) + the largest frame in flight + the frame written past the check, plus
    # what the kernels hold (send buffer up to 4 MiB, the small receive buffer).
    assert len(received) < 12 * MiB, f"{len(received)} bytes were buffered for a non-reader"
    assert sum(f.command == "MESSAGE" for f in frames) < 12
    publisher.sendall(send_frame("/topic/flood", b"still here", receipt="after"))
    assert publisher_reader.until("RECEIPT").headers["receipt-id"] == "after"
    log = server.log()
    assert re.search(r"connection \w+ closed: 127\.0\.0\.1:\d+ over tcp, user \S+, [\d.]+ s, "
                     r"\d+ bytes in, \d+ bytes out: slow consumer", log), log


def test_reader_at_a_realistic_pace_gets_two_8_mib_messages_back_to_back(start_server):
    """Under default options a subscriber that keeps reading (64 KiB per read, parsing each,
    a millisecond between reads) receives two 8 MiB messages sent back to back."""
    server = start_server()
    reader_sock, reader = stomp_connect(server.stomp_port, rcvbuf=SMALL_RCVBUF)
    reader_sock.sendall(subscribe_frame("/topic/big"))
    reader.until("RECEIPT")
    publisher, publisher_reader = stomp_connect(server.stomp_port)
    bodies = [bytes([65 + i]) * (8 * MiB) for i in range(2)]
    publisher.sendall(b"".join(send_frame("/topic/big", body) for body in bodies))
    first = reader.until("MESSAGE", chunk=1 << 16, pause=0.001)
    second = reader.until("MESSAGE", chunk=1 << 16, pause=0.001)
    assert (first.body, second.body) == (bodies[0], bodies[1])
    reader_sock.sendall(send_frame("/topic/big", b"", receipt="alive"))
    assert reader.until("RECEIPT").headers["receipt-id"] == "alive"
    publisher.close()
    reader_sock.close()


def test_garbage_before_connect_is_cut_at_the_byte_limit(start_server):
    """Bytes that never make a CONNECT frame get ERROR and close as soon as the limit is
    passed, not after the CONNECT timeout."""
    server = start_server("--max-connect-bytes=4096", "--connect-timeout=30")
    sock = open_socket(server.stomp_port)
    started = time.monotonic()
    sock.sendall(b"CONNECT\naccept-version:1.2\nx:" + b"y" * 8192)
    frames = stomp_frames(read_until_closed(sock))
    assert time.monotonic() - started < 5
    assert [f.headers.get("message") for f in frames] == ["connect frame too large"]


def test_silent_connection_is_cut_after_the_connect_timeout_option(start_server):
    """--connect-timeout sets how long a connection may go without CONNECT."""
    server = start_server("--connect-timeout=1")
    sock = open_socket(server.stomp_port)
    started = time.monotonic()
    frames = stomp_frames(read_until_closed(sock))
    assert [f.headers.get("message") for f in frames] == ["connect timeout"]
    assert 0.9 < time.monotonic() - started < 5


def test_per_address_cap_counts_tcp_and_websocket_together(start_server):
    """With --max-connections-per-address=3, a 4th connection from 127.0.0.1 is refused:
    over TCP with ERROR 'too many connections', over WebSocket with HTTP 429."""
    server = start_server("--max-connections-per-address=3")
    tcp = [stomp_connect(server.stomp_port)[0] for _ in range(2)]
    ws, status, _ = ws_handshake(server.http_port)
    assert status == 101
    refused = open_socket(server.stomp_port)
    frames = stomp_frames(read_until_closed(refused))
    assert [f.headers.get("message") for f in frames] == ["too many connections"]
    refused_ws, status, _ = ws_handshake(server.http_port)
    assert status == 429
    tcp[0].close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        again, status, _ = ws_handshake(server.http_port)
        if status == 101:
            break
        time.sleep(0.05)
    assert status == 101, "a closed connection frees its place"
    for sock in (*tcp, ws, refused_ws, again):
        sock.close()
    log = server.log()
    assert log.count("refusing connections from 127.0.0.1") == 1, log


@pytest_twisted.ensureDeferred
async def test_no_delay_is_set_on_an_accepted_stomp_socket():
    """An accepted raw STOMP socket has TCP_NODELAY set (read back with getsockopt)."""
    from twisted.internet import reactor

    factory = StompFactory(make_context(clock=reactor))
    built: list[StompProtocol] = []
    build = factory.buildProtocol

    def record(addr):
        protocol = build(addr)
        built.append(protocol)
        return protocol

    factory.buildProtocol = record  # type: ignore[method-assign]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    sock = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        for _ in range(200):
            if built and built[0].connected:
                break
            await deferLater(reactor, 0.01)
        handle = built[0].transport.getHandle()
        assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sock.close()
        await port.stopListening()
        for protocol in built:
            protocol.transport.abortConnection()
        await deferLater(reactor, 0.01)


def test_session_gets_tcp_connection_info():
    """The session's ConnectionInfo names the TCP peer, its host and the tcp transport."""
    _, _, protocol, _ = connect()
    connection = protocol.session.connection
    assert (connection.peer, connection.peer_host, connection.transport, connection.secure) == (
        "192.0.2.7:40000", "192.0.2.7", "tcp", False
    )


def test_pause_reading_holds_input_until_resumed():
    """While the session has paused reading, input waits and the socket is paused."""
    _, _, protocol, transport = connect()
    login(protocol, transport)
    protocol.pause_reading()
    assert transport.producerState == "paused"
    protocol.dataReceived(encode_frame(Frame("SEND", {"destination": "/topic/t"}, b"held")))
    assert transport.value() == b""
    protocol.resume_reading()
    assert transport.producerState == "producing"
    (message,) = frames_of(transport.value())
    assert message.body == b"held"


def test_pause_during_slicing_stops_the_slices():
    """A pause requested while a large read is handled in slices stops further slices."""
    clock, _, protocol, transport = connect()
    login(protocol, transport)
    protocol.input_slice = 64
    frame = encode_frame(Frame("SEND", {"destination": "/topic/t"}, b"x" * 10))
    protocol.dataReceived(frame * 20)
    protocol.pause_reading()
    clock.advance(0)
    clock.advance(0)
    delivered = len(frames_of(transport.value()))
    assert 0 < delivered < 20
    protocol.resume_reading()
    for _ in range(40):
        clock.advance(0)
    assert len(frames_of(transport.value())) == 20
    assert transport.producerState == "producing"


class _SlowAuthenticator:
    """Answers CONNECT later, as a database or a token check would."""

    def __init__(self) -> None:
        self.pending: list[Deferred] = []

    def authenticate(self, frame, connection):
        d: Deferred = Deferred()
        self.pending.append(d)
        return d


def test_input_behind_connect_waits_for_a_slow_authenticator_within_the_connect_limit():
    """Frames pipelined behind CONNECT past the byte limit wait for authentication, in order."""
    authenticator = _SlowAuthenticator()
    context = make_context(clock=Clock(), authenticator=authenticator)
    protocol = StompFactory(context, 10**9, max_connect_bytes=200).buildProtocol(None)
    transport = AbortRecordingTransport()
    protocol.makeConnection(transport)
    connect_frame = encode_frame(Frame("CONNECT", {"accept-version": "1.2"}))
    subscribe = encode_frame(Frame("SUBSCRIBE", {"destination": "/topic/t", "id": "0",
                                                 "receipt": "s"}))
    protocol.dataReceived(connect_frame + subscribe + b"\n" * 300)
    assert not transport.disconnecting
    authenticator.pending[0].callback(Principal("u1", "alice"))
    frames = frames_of(transport.value())
    assert [f.command for f in frames] == ["CONNECTED", "RECEIPT"]
    assert not transport.disconnecting


def test_the_close_line_names_the_authenticated_user():
    """Once the session has a principal, the close line names the user, not '-'."""
    authenticator = _SlowAuthenticator()
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        context = make_context(clock=Clock(), authenticator=authenticator)
        protocol = StompFactory(context).buildProtocol(None)
        protocol.makeConnection(AbortRecordingTransport())
        protocol.dataReceived(encode_frame(Frame("CONNECT", {"accept-version": "1.2",
                                                             "passcode": "hunter2"})))
        authenticator.pending[0].callback(Principal("u1", "alice"))
        protocol.connectionLost(Failure(ConnectionDone("bye")))
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = _events(events)
    (closed,) = [line for line in lines if " closed: " in line]
    assert ", user alice, " in closed
    assert not any("hunter2" in line for line in lines)


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


def test_a_closed_gate_holds_reading_so_silence_is_not_counted():
    """While storage is behind the connection reports its reading held (its heart-beats stay
    unread), and no longer once the gate opens."""
    clock, writer, protocol, transport = _gated_connection()
    assert not protocol.reading_held
    for seq in range(1, 4):
        writer.append(chat_message(seq))
    assert protocol.reading_held
    clock.advance(1.0)
    assert not protocol.reading_held


# -- one write per connection for what one read makes it write ---------------------------


class WriteRecordingTransport(AbortRecordingTransport):
    """Records every call that hands bytes to the transport, and when it was asked to close."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, data: bytes) -> None:
        self.calls.append("write")
        super().write(data)

    def writeSequence(self, data) -> None:
        self.calls.append(f"writeSequence({len(data)})")
        super().write(b"".join(data))

    def loseConnection(self) -> None:
        self.calls.append("loseConnection")
        super().loseConnection()


def connect_pair(slow_consumer_bytes: int = 10**6):
    """A subscriber to /topic/t and a connected publisher of one server."""
    context = make_context(clock=Clock())
    factory = StompFactory(context, slow_consumer_bytes)
    ends = []
    for _ in range(2):
        protocol = factory.buildProtocol(None)
        transport = WriteRecordingTransport()
        protocol.makeConnection(transport)
        ends.append((protocol, transport))
    (subscriber, sub_transport), (publisher, pub_transport) = ends
    login(subscriber, sub_transport)
    publisher.dataReceived(encode_frame(Frame("CONNECT", {"accept-version": "1.2"})))
    for transport in (sub_transport, pub_transport):
        transport.clear()
        transport.calls.clear()
    return context, subscriber, sub_transport, publisher, pub_transport


def sends(*bodies: bytes, receipt: bool = False) -> bytes:
    """SEND frames to /topic/t, back to back, each with a receipt if asked."""
    frames = []
    for number, body in enumerate(bodies):
        headers = {"destination": "/topic/t"}
        if receipt:
            headers["receipt"] = f"r{number}"
        frames.append(encode_frame(Frame("SEND", headers, body)))
    return b"".join(frames)


def test_the_frames_one_read_makes_a_connection_write_leave_in_one_transport_write():
    """Three SENDs in one read reach a subscriber (a byte stream) as one write of three
    MESSAGEs, in order."""
    _, _, sub_transport, publisher, _ = connect_pair()
    publisher.dataReceived(sends(b"one", b"two", b"three"))
    assert sub_transport.calls == ["write"]
    frames = frames_of(sub_transport.value())
    assert [(f.command, f.body) for f in frames] == [
        ("MESSAGE", b"one"), ("MESSAGE", b"two"), ("MESSAGE", b"three")]


def test_the_bytes_out_count_every_frame_of_a_coalesced_write():
    """A connection's bytes out add up the frames written together."""
    _, subscriber, sub_transport, publisher, _ = connect_pair()
    before = subscriber.bytes_out
    publisher.dataReceived(sends(b"one", b"two"))
    assert subscriber.bytes_out - before == len(sub_transport.value())


def test_a_frame_written_outside_any_read_goes_out_at_once():
    """A publish from a timer or a database callback is written to the transport right away."""
    context, _, sub_transport, _, _ = connect_pair()
    context.broker.publish("/topic/t", b"now")
    assert sub_transport.calls == ["write"]
    assert frames_of(sub_transport.value())[0].body == b"now"


def test_an_error_a_read_provokes_follows_the_frames_before_it_and_precedes_the_close():
    """A refused frame's ERROR goes out after the RECEIPT of the SEND before it in the same
    read, and before the connection is asked to close."""
    _, _, _, publisher, pub_transport = connect_pair()
    publisher.dataReceived(sends(b"first", receipt=True) + b"BOGUS\n\n\x00")
    assert [f.command for f in frames_of(pub_transport.value())] == ["RECEIPT", "ERROR"]
    assert pub_transport.calls == ["write", "loseConnection"]


def test_a_connection_behind_checks_each_frame_of_a_read_and_nothing_follows_its_error():
    """A subscriber already behind when a read's frames are written out gets them one by one
    through the slow-consumer check: it is cut, and the ERROR is the last frame it gets."""
    _, subscriber, sub_transport, publisher, _ = connect_pair(slow_consumer_bytes=1000)
    subscriber.pauseProducing()
    publisher.dataReceived(sends(*[b"x" * 600] * 5))
    frames = frames_of(sub_transport.value())
    assert frames[-1].headers["message"] == "slow consumer"
    assert [f.command for f in frames[:-1]] == ["MESSAGE"] * (len(frames) - 1)
    assert 0 < len(frames) - 1 < 5
    assert sub_transport.disconnecting


def test_a_connection_lost_while_holding_frames_writes_nothing_more():
    """Frames held for a connection whose TCP connection is lost meanwhile are dropped."""
    context, subscriber, sub_transport, _, _ = connect_pair()
    output = subscriber.output
    output.begin()
    context.broker.publish("/topic/t", b"held")
    subscriber.connectionLost(Failure(ConnectionLost()))
    output.end()
    assert sub_transport.calls == []


def test_a_transport_refusing_a_coalesced_write_fails_only_its_connection():
    """A connection whose transport raises when a read's frames are written out is closed;
    the other connections get their frames."""
    context, subscriber, sub_transport, publisher, pub_transport = connect_pair()
    other = subscriber.factory.buildProtocol(None)
    other_transport = WriteRecordingTransport()
    other.makeConnection(other_transport)
    login(other, other_transport)

    def refuse(data) -> None:
        raise RuntimeError("the transport refuses")

    sub_transport.write = refuse  # type: ignore[method-assign]
    publisher.dataReceived(sends(b"one", b"two"))
    assert [f.body for f in frames_of(other_transport.value())] == [b"one", b"two"]
    assert subscriber.session.state is State.CLOSED
    assert sub_transport.disconnecting


class _DiscardingTransport(AbortRecordingTransport):
    """A socket that takes every write at once: it keeps none of the bytes."""

    def write(self, data: bytes) -> None:
        pass


def test_idle_connections_keep_no_more_than_one_frame_of_the_read_they_were_written():
    """After a read of twenty SENDs is written out to 200 subscribers, the server holds
    about one MESSAGE per subscriber (what close() and flow control look at), not the
    whole read's frames until each connection's next write."""
    context = make_context(clock=Clock())
    factory = StompFactory(context)
    subscribers = []
    for _ in range(200):
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(_DiscardingTransport())
        protocol.dataReceived(encode_frame(Frame("CONNECT", {"accept-version": "1.2"})))
        protocol.dataReceived(
            encode_frame(Frame("SUBSCRIBE", {"destination": "/topic/t", "id": "0"})))
        subscribers.append(protocol)
    publisher = factory.buildProtocol(None)
    publisher.makeConnection(_DiscardingTransport())
    publisher.dataReceived(encode_frame(Frame("CONNECT", {"accept-version": "1.2"})))
    read = sends(*[b"x" * 300] * 20)
    assert len(read) < publisher.input_slice  # one read, one batch
    tracemalloc.start()
    try:
        publisher.dataReceived(read)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(protocol.bytes_out > 20 * 300 for protocol in subscribers)
    assert held < 200 * 20 * 300 / 4
