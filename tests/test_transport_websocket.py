"""Unit tests for stomp_chat.transport.websocket: origins, subprotocols, message framing."""

from __future__ import annotations

import base64
import os
import re
import struct
import time
from collections import deque

import pytest
import txaio
from autobahn.exception import Disconnected
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from stomp_chat.stomp.frame import Frame, encode_frame
from stomp_chat.transport.limits import ConnectionCounter
from stomp_chat.transport.stomp import StompFactory
from stomp_chat.transport.websocket import (
    STOMP_SUBPROTOCOLS,
    StompWebSocketFactory,
    WebSocketFrameTransport,
    origin_matches,
)
from tests.rawclients import (
    SMALL_RCVBUF,
    read_until_closed,
    send_frame,
    stomp_connect,
    subscribe_frame,
    ws_close_frame,
    ws_frame,
    ws_stomp_connect,
)
from tests.stompfakes import OutputReader, make_context

# -- origin_matches ------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        ("http://chat.example.com", "chat.example.com", True),
        ("http://chat.example.com:8080", "chat.example.com:8080", True),
        ("http://chat.example.com", "chat.example.com:80", True),
        ("http://chat.example.com:80", "chat.example.com", True),
        ("https://chat.example.com", "chat.example.com:443", True),
        ("https://chat.example.com:443", "chat.example.com", True),
        ("HTTP://Chat.Example.COM", "chat.example.com", True),
        ("http://evil.example", "chat.example.com", False),
        ("http://chat.example.com:8080", "chat.example.com", False),
        ("http://chat.example.com", "chat.example.com:8080", False),
        ("https://chat.example.com", "chat.example.com:80", False),
        ("http://chat.example.com.evil.example", "chat.example.com", False),
        ("null", "chat.example.com", False),
    ],
)
def test_without_patterns_only_the_same_origin_is_allowed(origin, host, allowed):
    """With no patterns only the server's own origin (default ports normalised) may connect."""
    assert origin_matches(origin, host, []) is allowed


def test_star_allows_every_origin():
    """The pattern '*' allows any origin."""
    assert origin_matches("https://anything.example", "chat.example.com", ["*"])
    assert origin_matches("null", "chat.example.com", ["*"])


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("https://a.b.example.com", True),
        ("http://app.example.com", False),
        ("https://example.com", False),
        ("https://app.example.com.evil.net", False),
        ("https://evilexample.com", False),
    ],
)
def test_scheme_patterns_match_the_whole_origin(origin, allowed):
    """A pattern with a scheme must match scheme and host of the origin."""
    assert origin_matches(origin, "server.local", ["https://*.example.com"]) is allowed


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://chat.example.com:8443", True),
        ("http://chat.example.com:8443", True),
        ("https://chat.example.com", False),
        ("https://chat.example.com:9443", False),
    ],
)
def test_host_patterns_match_host_and_port(origin, allowed):
    """A pattern without a scheme matches the origin's host and port, any scheme."""
    assert origin_matches(origin, "server.local", ["chat.example.com:8443"]) is allowed


def test_host_wildcard_pattern():
    """A host pattern may use a wildcard for subdomains."""
    assert origin_matches("https://a.example.org", "x", ["*.example.org"])
    assert not origin_matches("https://example.org.evil", "x", ["*.example.org"])


def test_any_of_several_patterns_allows():
    """An origin allowed by any one of the patterns is allowed."""
    patterns = ["https://one.example", "two.example:8080"]
    assert origin_matches("https://one.example", "x", patterns)
    assert origin_matches("http://two.example:8080", "x", patterns)
    assert not origin_matches("https://three.example", "x", patterns)


def test_patterns_replace_the_same_origin_rule():
    """Once patterns are configured, the server's own origin is allowed only if one matches it."""
    assert not origin_matches("http://chat.example.com", "chat.example.com", ["other.example"])


# -- the factory and handshake -----------------------------------------------


def make_factory(**kwargs) -> StompWebSocketFactory:
    return StompWebSocketFactory(StompFactory(make_context()), reactor=Clock(), **kwargs)


def request(protocols=(), origin=None, host="chat.example.com") -> ConnectionRequest:
    headers = {"host": host}
    if origin is not None:
        headers["origin"] = origin
    return ConnectionRequest(
        None, headers, host.split(":")[0], "/ws/chat", {}, 13, origin, list(protocols), []
    )


def handshake(factory: StompWebSocketFactory, req: ConnectionRequest):
    protocol = factory.buildProtocol(None)
    protocol.transport = StringTransport(peerAddress=IPv4Address("TCP", "203.0.113.9", 4000))
    return protocol.onConnect(req)


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["v10.stomp", "v11.stomp", "v12.stomp"], "v12.stomp"),
        (["v12.stomp", "v10.stomp"], "v12.stomp"),
        (["v11.stomp", "v10.stomp"], "v11.stomp"),
        (["v10.stomp"], "v10.stomp"),
        (["mqtt", "v11.stomp"], "v11.stomp"),
    ],
)
def test_onconnect_picks_the_best_offered_subprotocol(offered, chosen):
    """The highest STOMP subprotocol the client offers is chosen, whatever the offer order."""
    assert handshake(make_factory(), request(offered)) == chosen


def test_onconnect_without_subprotocols_accepts_without_one():
    """A client offering no subprotocol (stomp.py) is accepted without one."""
    assert handshake(make_factory(), request([])) is None


def test_onconnect_with_only_foreign_subprotocols_accepts_without_one():
    """Offering only non-STOMP subprotocols yields no subprotocol rather than a refusal."""
    assert handshake(make_factory(), request(["mqtt"])) is None


def test_factory_advertises_stomp_subprotocols():
    """The factory offers v12.stomp, v11.stomp and v10.stomp, best first."""
    factory = make_factory()
    assert list(STOMP_SUBPROTOCOLS) == ["v12.stomp", "v11.stomp", "v10.stomp"]
    assert factory.protocols == list(STOMP_SUBPROTOCOLS)


def test_request_without_origin_is_allowed():
    """Non-browser clients send no Origin and are always allowed."""
    assert handshake(make_factory(), request(["v12.stomp"])) == "v12.stomp"


def test_same_origin_request_is_allowed():
    """A browser on the address the connection reached (not the Host header) may connect."""
    factory = make_factory()
    protocol = factory.buildProtocol(None)
    protocol.transport = StringTransport(hostAddress=IPv4Address("TCP", "192.0.2.7", 8080))
    req = request(["v12.stomp"], origin="http://192.0.2.7:8080", host="192.0.2.7:8080")
    assert protocol.onConnect(req) == "v12.stomp"
    rebound = request(["v12.stomp"], origin="http://chat.example.com:8080",
                      host="chat.example.com:8080")
    with pytest.raises(ConnectionDeny):
        protocol.onConnect(rebound)


def test_foreign_origin_is_denied():
    """A browser from another origin is refused with 403."""
    factory = make_factory()
    with pytest.raises(ConnectionDeny) as excinfo:
        handshake(factory, request(["v12.stomp"], origin="https://evil.example"))
    assert excinfo.value.code == ConnectionDeny.FORBIDDEN


def test_allowed_origins_are_trimmed_and_used():
    """Configured origin patterns (blank ones dropped) decide which browsers may connect."""
    factory = make_factory(allowed_origins=[" https://*.example.com ", "", "  "])
    assert factory.allowed_origins == ["https://*.example.com"]
    req = request(["v11.stomp"], origin="https://app.example.com")
    assert handshake(factory, req) == "v11.stomp"


# -- WebSocket wire helpers ----------------------------------------------------


def server_frames(data: bytes) -> list[tuple[int, bool, bytes]]:
    """Decode unmasked server WebSocket frames into (opcode, fin, payload)."""
    frames, i = [], 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        i += 2
        assert not b1 & 0x80, "server frames must not be masked"
        size = b1 & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", data[i : i + 2])
            i += 2
        elif size == 127:
            (size,) = struct.unpack("!Q", data[i : i + 8])
            i += 8
        frames.append((b0 & 0x0F, bool(b0 & 0x80), data[i : i + size]))
        i += size
    return frames


def server_messages(data: bytes) -> list[tuple[bytes, bool]]:
    """Reassemble data messages as (payload, is_binary); control frames are skipped."""
    messages: list[tuple[bytes, bool]] = []
    parts: list[bytes] = []
    binary = False
    for opcode, fin, payload in server_frames(data):
        if opcode >= 0x8:
            continue
        if opcode in (0x1, 0x2):
            binary, parts = opcode == 0x2, []
        parts.append(payload)
        if fin:
            messages.append((b"".join(parts), binary))
    return messages


def close_codes(data: bytes) -> list[int]:
    return [struct.unpack("!H", p[:2])[0] for op, _, p in server_frames(data) if op == 0x8 and p]


def client_frame(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
    """One masked client WebSocket frame."""
    key = os.urandom(4)
    size = len(payload)
    first = (0x80 if fin else 0) | opcode
    if size < 126:
        header = bytes((first, 0x80 | size))
    elif size < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, size)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


# -- WebSocketFrameTransport -------------------------------------------------


class FakeWebSocket:
    """Stands in for an Autobahn protocol: records sendMessage and raw TCP writes.

    Like Autobahn, it refuses ``sendMessage`` unless the WebSocket is open.
    """

    def __init__(self, state: int = WebSocketProtocol.STATE_OPEN) -> None:
        self.sent: list[tuple[bytes, bool]] = []
        self.closes: list[int] = []
        self.pongs: list[bytes] = []
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.1", 5555))
        self.state = state
        self.send_queue: deque = deque()
        self._perMessageCompress = None

    def sendMessage(self, payload: bytes, isBinary: bool = False) -> None:
        if self.state != WebSocketProtocol.STATE_OPEN:
            raise Disconnected("Attempt to send on a closed protocol")
        self.sent.append((payload, isBinary))

    def send_held_pong(self) -> None:
        self.pongs.append(b"held")

    def sendClose(self, code: int | None = None) -> None:
        self.closes.append(code)

    def messages(self) -> list[tuple[bytes, bool]]:
        """Every message sent, through Autobahn or written as raw frames."""
        return self.sent + server_messages(self.transport.value())


@pytest.fixture(params=[False, True], ids=["direct", "behind-queued-data"])
def fake_ws(request) -> FakeWebSocket:
    """An open WebSocket; with queued data, frames go through Autobahn's sendMessage."""
    ws = FakeWebSocket()
    if request.param:
        ws.send_queue.append(b"")
    return ws


def test_write_sends_utf8_as_text(fake_ws):
    """A frame that is valid UTF-8 (Korean included) leaves as one text message."""
    data = encode_frame(Frame("MESSAGE", {"destination": "/topic/방"}, "안녕".encode()))
    WebSocketFrameTransport(fake_ws).write(data)
    assert fake_ws.messages() == [(data, False)]


def test_write_sends_non_utf8_as_binary(fake_ws):
    """A frame whose bytes are not UTF-8 leaves as one binary message."""
    data = encode_frame(Frame("MESSAGE", {"destination": "/topic/t"}, b"\xff\x00\xfe"))
    WebSocketFrameTransport(fake_ws).write(data)
    assert fake_ws.messages() == [(data, True)]


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_write_frames_every_size_as_one_message(fake_ws, size):
    """Frames of every WebSocket length class arrive whole, as one message each."""
    data = encode_frame(Frame("MESSAGE", {"destination": "/topic/t"}, b"a" * size))
    WebSocketFrameTransport(fake_ws).write(data)
    assert fake_ws.messages() == [(data, False)]


def test_write_keeps_order_behind_queued_data():
    """While Autobahn still has data queued, frames go through it so order is kept."""
    ws = FakeWebSocket()
    ws.send_queue.append(b"earlier")
    WebSocketFrameTransport(ws).write(b"\n")
    assert ws.sent == [(b"\n", False)]
    assert ws.transport.value() == b""


def test_write_sequence_sends_one_message_each(fake_ws):
    """writeSequence sends each piece as its own message."""
    WebSocketFrameTransport(fake_ws).writeSequence([b"\n", b"\xff"])
    assert fake_ws.messages() == [(b"\n", False), (b"\xff", True)]


def test_write_sequence_hands_its_messages_to_tcp_in_one_write():
    """The frames of one writeSequence, each its own message, reach TCP in one write."""
    ws = FakeWebSocket()
    writes = []
    ws.transport.write = writes.append  # type: ignore[method-assign]
    frames = [encode_frame(Frame("MESSAGE", {"destination": "/topic/t"}, b"a" * size))
              for size in (10, 200, 70_000)]
    WebSocketFrameTransport(ws).writeSequence(frames)
    assert len(writes) == 1
    assert server_messages(writes[0]) == [(frame, False) for frame in frames]


def test_lose_connection_closes_once_with_1000():
    """loseConnection starts one normal (1000) close handshake, however often called."""
    ws = FakeWebSocket()
    transport = WebSocketFrameTransport(ws)
    transport.loseConnection()
    transport.loseConnection()
    assert ws.closes == [1000]
    assert transport.disconnecting


def test_abort_connection_aborts_the_tcp_transport():
    """abortConnection cuts the underlying TCP connection."""
    ws = FakeWebSocket()
    WebSocketFrameTransport(ws).abortConnection()
    assert ws.transport.disconnected


@pytest.mark.parametrize(
    "state", [WebSocketProtocol.STATE_CLOSING, WebSocketProtocol.STATE_CLOSED]
)
@pytest.mark.parametrize("queued", [False, True])
def test_write_to_a_closing_websocket_is_dropped(state, queued):
    """Once a Close was sent or received, writes are dropped: nothing is sent, nothing raises."""
    ws = FakeWebSocket(state)
    if queued:
        ws.send_queue.append(b"earlier")
    transport = WebSocketFrameTransport(ws)
    transport.write(encode_frame(Frame("MESSAGE", {"destination": "/topic/t"}, b"late")))
    transport.writeSequence([b"\n"])
    assert ws.sent == []
    assert ws.transport.value() == b""


class RecordingProducer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


def test_register_producer_replaces_a_previous_one_and_relays_to_it():
    """registerProducer takes over from the HTTP channel's producer and relays every call."""
    ws = FakeWebSocket()
    ws.transport.registerProducer(object(), True)
    producer = RecordingProducer()
    WebSocketFrameTransport(ws).registerProducer(producer, True)
    registered = ws.transport.producer
    registered.pauseProducing()
    registered.resumeProducing()
    registered.stopProducing()
    assert producer.calls == ["pause", "resume", "stop"]
    assert ws.pongs == [b"held"], "a held pong goes out when the socket drains"


def test_peer_and_host_come_from_tcp():
    """getPeer and getHost report the underlying TCP addresses."""
    ws = FakeWebSocket()
    transport = WebSocketFrameTransport(ws)
    assert transport.getPeer() == IPv4Address("TCP", "198.51.100.1", 5555)
    assert transport.getHost() == ws.transport.getHost()


# -- the protocol wrapping STOMP, over an in-memory handshake ------------------


@pytest.fixture
def clock():
    """A fake clock that Autobahn's timers (scheduled through txaio) also use."""
    txaio.use_twisted()
    clock = Clock()
    previous = txaio.config.loop
    txaio.config.loop = clock
    yield clock
    txaio.config.loop = previous


def run_due_calls(clock: Clock) -> None:
    """Run the calls scheduled for now (e.g. input handled over several reactor turns)."""
    for _ in range(100_000):
        if not any(c.getTime() <= clock.seconds() for c in clock.getDelayedCalls()):
            return
        clock.advance(0)
    raise AssertionError("calls keep rescheduling themselves for now")


class WSConnection:
    """One server-side StompWebSocketProtocol on a StringTransport, after its handshake."""

    def __init__(self, clock: Clock, protocols=("v12.stomp",), origin: str | None = None,
                 host: str = "chat.example.com", context=None, stomp_factory=None,
                 **factory_kwargs) -> None:
        self.clock = clock
        self.context = context or make_context(clock=clock)
        self.factory = StompWebSocketFactory(stomp_factory or StompFactory(self.context),
                                             reactor=clock, **factory_kwargs)
        peer = IPv4Address("TCP", "203.0.113.5", 40000)
        self.protocol = self.factory.buildProtocol(peer)
        self.transport = StringTransport(peerAddress=peer)
        self.protocol.makeConnection(self.transport)
        lines = [
            "GET /ws/chat HTTP/1.1",
            f"Host: {host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
            "Sec-WebSocket-Version: 13",
        ]
        if protocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
        if origin is not None:
            lines.append(f"Origin: {origin}")
        self.protocol.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode())
        head, _, rest = self.transport.value().partition(b"\r\n\r\n")
        status, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status.split()[1])
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines)
        }
        self._offset = len(head) + 4

    def send(self, payload: bytes, binary: bool = False) -> None:
        self.receive(client_frame(payload, 0x2 if binary else 0x1))

    def receive(self, data: bytes) -> None:
        """Bytes from the client's TCP side, then whatever is due now on the clock."""
        self.protocol.dataReceived(data)
        run_due_calls(self.clock)

    def wire(self) -> bytes:
        return self.transport.value()[self._offset :]

    def messages(self) -> list[tuple[bytes, bool]]:
        return server_messages(self.wire())

    def stomp_frames(self) -> list[Frame]:
        reader = OutputReader("1.2")
        for payload, _ in self.messages():
            reader.feed(payload)
        return reader.frames


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (("v10.stomp", "v11.stomp", "v12.stomp"), "v12.stomp"),
        (("v11.stomp", "v10.stomp"), "v11.stomp"),
        (("v10.stomp",), "v10.stomp"),
    ],
)
def test_handshake_answers_with_the_chosen_subprotocol(clock, offered, chosen):
    """The 101 response names the best STOMP subprotocol the client offered."""
    conn = WSConnection(clock, protocols=offered)
    assert conn.status == 101
    assert conn.headers["sec-websocket-protocol"] == chosen


def test_handshake_without_subprotocol_succeeds_without_one(clock):
    """A client offering no subprotocol is upgraded, and no subprotocol is named."""
    conn = WSConnection(clock, protocols=())
    assert conn.status == 101
    assert "sec-websocket-protocol" not in conn.headers


def test_handshake_from_foreign_origin_is_refused(clock):
    """A browser from another origin gets 403 and no STOMP session."""
    conn = WSConnection(clock, origin="https://evil.example")
    assert conn.status == 403
    assert len(conn.context.heartbeats) == 0


def test_handshake_from_allowed_origin_succeeds(clock):
    """An origin matching a configured pattern is upgraded."""
    conn = WSConnection(clock, origin="https://app.example.com",
                        allowed_origins=["https://*.example.com"])
    assert conn.status == 101


def test_open_starts_a_stomp_session_named_after_the_peer(clock):
    """After the handshake a STOMP session exists, labelled with the TCP peer."""
    conn = WSConnection(clock)
    assert conn.protocol.stomp is not None
    assert "203.0.113.5" in conn.protocol.stomp.session.peer
    assert len(conn.context.heartbeats) == 1


def test_frames_split_across_messages_and_many_in_one(clock):
    """Messages form one byte stream: a frame may span messages and a message may hold several."""
    conn = WSConnection(clock)
    data = (
        encode_frame(Frame("CONNECT", {"accept-version": "1.2", "host": "x"}))
        + encode_frame(Frame("SUBSCRIBE", {"destination": "/topic/t", "id": "0"}))
        + b"\n"
        + encode_frame(Frame("SEND", {"destination": "/topic/t", "receipt": "r"}, b"z" * 50))
    )
    for i in range(0, len(data), 7):
        conn.send(data[i : i + 7])
    frames = conn.stomp_frames()
    assert [f.command for f in frames] == ["CONNECTED", "MESSAGE", "RECEIPT"]
    assert frames[1].body == b"z" * 50


def test_each_frame_is_one_message(clock):
    """Every frame the session writes is sent as exactly one WebSocket message."""
    conn = WSConnection(clock)
    conn.send(
        encode_frame(Frame("CONNECT", {"accept-version": "1.2"}))
        + encode_frame(Frame("SUBSCRIBE", {"destination": "/topic/t", "id": "0", "receipt": "1"}))
    )
    messages = conn.messages()
    assert len(messages) == 2
    for payload, _ in messages:
        reader = OutputReader("1.2")
        reader.feed(payload)
        assert len(reader.frames) == 1


def test_binary_body_goes_out_as_binary_message(clock):
    """A MESSAGE with a non-UTF-8 body is a binary WebSocket message; text frames stay text."""
    conn = WSConnection(clock)
    conn.send(encode_frame(Frame("CONNECT", {"accept-version": "1.2"})), binary=True)
    conn.send(encode_frame(Frame("SUBSCRIBE", {"destination": "/topic/t", "id": "0"})))
    conn.send(encode_frame(Frame("SEND", {"destination": "/topic/t"}, b"\x80\x81")), binary=True)
    conn.send(encode_frame(Frame("SEND", {"destination": "/topic/t"}, "한".encode())))
    messages = conn.messages()
    assert [binary for _, binary in messages] == [False, True, False]
    assert messages[1][0].endswith(b"\x80\x81\x00")


def test_large_frame_over_websocket(clock):
    """A frame larger than 64 KB travels in and out intact."""
    conn = WSConnection(clock)
    body = b"q" * 300_000
    conn.send(encode_frame(Frame("CONNECT", {"accept-version": "1.2"})))
    conn.send(encode_frame(Frame("SUBSCRIBE", {"destination": "/topic/t", "id": "0"})))
    conn.send(encode_frame(Frame("SEND", {"destination": "/topic/t"}, body)))
    assert conn.stomp_frames()[-1].body == body


def test_disconnect_sends_receipt_then_close(clock):
    """DISCONNECT over WebSocket sends RECEIPT, then a normal (1000) close frame."""
    conn = WSConnection(clock)
    conn.send(encode_frame(Frame("CONNECT", {"accept-version": "1.2"})))
    conn.send(encode_frame(Frame("DISCONNECT", {"receipt": "bye"})))
    assert conn.stomp_frames()[-1].headers["receipt-id"] == "bye"
    assert close_codes(conn.wire()) == [1000]


def test_error_is_sent_before_close(clock):
    """A protocol error sends ERROR as a message, then closes the WebSocket."""
    conn = WSConnection(clock)
    conn.send(b"BOGUS\n\n\x00")
    assert conn.stomp_frames()[-1].command == "ERROR"
    assert close_codes(conn.wire()) == [1000]


def test_connection_lost_ends_the_session(clock):
    """When the TCP connection goes, the STOMP session releases its subscriptions."""
    conn = WSConnection(clock)
    conn.send(encode_frame(Frame("CONNECT", {"accept-version": "1.2"})))
    conn.send(encode_frame(Frame("SUBSCRIBE", {"destination": "/topic/t", "id": "0"})))
    assert conn.context.broker.subscriber_count("/topic/t") == 1
    conn.protocol.connectionLost(Failure(ConnectionError("reset")))
    assert conn.context.broker.subscriber_count("/topic/t") == 0
    assert len(conn.context.heartbeats) == 0
    assert conn.protocol.stomp is None


def test_fragmented_websocket_message_is_one_stream(clock):
    """A STOMP frame sent as one fragmented WebSocket message (continuation frames) parses."""
    conn = WSConnection(clock)
    conn.send(encode_frame(Frame("CONNECT", {"accept-version": "1.2"})))
    data = encode_frame(Frame("SUBSCRIBE", {"destination": "/topic/t", "id": "0", "receipt": "r"}))
    pieces = [data[:5], data[5:20], data[20:]]
    conn.receive(client_frame(pieces[0], 0x1, fin=False))
    conn.receive(client_frame(pieces[1], 0x0, fin=False))
    conn.receive(client_frame(pieces[2], 0x0, fin=True))
    assert conn.stomp_frames()[-1].headers["receipt-id"] == "r"


def test_oversized_frame_over_websocket_gets_stomp_error(clock):
    """A STOMP frame over the size limit gets a STOMP ERROR before the WebSocket closes."""
    context = make_context(clock=clock, max_frame_size=1024)
    conn = WSConnection(clock, context=context)
    conn.send(encode_frame(Frame("CONNECT", {"accept-version": "1.2"})))
    conn.send(encode_frame(Frame("SEND", {"destination": "/topic/t", "receipt": "big"},
                                 b"x" * 5000)))
    error = conn.stomp_frames()[-1]
    assert error.command == "ERROR"
    assert close_codes(conn.wire()) == [1000]


# -- ConnectionInfo from a real Autobahn handshake ------------------------------


def test_the_stomp_connection_carries_the_handshake_as_connection_info(clock):
    """Headers (lower-cased), cookies, query, Origin and peer reach the STOMP protocol."""
    conn = WSConnection(clock, origin="https://app.example.com",
                        allowed_origins=["https://*.example.com"])
    info = conn.protocol.stomp.connection
    assert info.transport == "ws"
    assert (info.peer, info.peer_host, info.secure) == ("203.0.113.5:40000", "203.0.113.5", False)
    assert info.origin == "https://app.example.com"
    assert info.headers["sec-websocket-protocol"] == "v12.stomp"
    assert info.headers["host"] == "chat.example.com"


def test_handshake_over_the_per_address_cap_gets_429(clock):
    """A handshake from an address at its cap is refused with 429, before any session."""
    context = make_context(clock=clock)
    stomp_factory = StompFactory(context, connections=ConnectionCounter(1))
    first = WSConnection(clock, context=context, stomp_factory=stomp_factory)
    assert first.status == 101
    second = WSConnection(clock, context=context, stomp_factory=stomp_factory)
    assert second.status == 429
    assert len(context.heartbeats) == 1


# -- against a real server, over real sockets -----------------------------------

MiB = 1024 * 1024


def test_non_reading_websocket_subscriber_is_cut_with_a_bounded_backlog(start_server):
    """A WebSocket subscriber that stops reading is cut with ERROR 'slow consumer' while the
    server buffers a bounded amount for it and keeps serving the publisher."""
    server = start_server()
    slow, slow_reader = ws_stomp_connect(server.http_port, rcvbuf=SMALL_RCVBUF)
    slow.sendall(ws_frame(subscribe_frame("/topic/flood")))
    slow_reader.until("RECEIPT")
    publisher, publisher_reader = stomp_connect(server.stomp_port)
    body = b"p" * MiB
    for i in range(40):
        publisher.sendall(send_frame("/topic/flood", body, receipt=str(i) if i == 39 else None))
    assert publisher_reader.until("RECEIPT").headers["receipt-id"] == "39"
    received = read_until_closed(slow)
    slow_reader.feed(received)
    frames = slow_reader.stomp.frames
    assert frames[-1].command == "ERROR"
    assert frames[-1].headers["message"] == "slow consumer"
    assert len(received) < 12 * MiB, f"{len(received)} bytes were buffered for a non-reader"
    assert re.search(r"connection \w+ closed: 127\.0\.0\.1:\d+ over ws, .*: slow consumer",
                     server.log())


def test_closing_websocket_subscriber_never_disconnects_the_publisher(start_server):
    """A subscriber whose WebSocket sent Close but whose TCP connection lingers (it reads
    nothing) is skipped: the publisher keeps its connection and later subscribers receive."""
    server = start_server("--slow-consumer-bytes=67108864")
    closing, closing_reader = ws_stomp_connect(server.http_port, rcvbuf=SMALL_RCVBUF)
    closing.sendall(ws_frame(subscribe_frame("/topic/room")))
    closing_reader.until("RECEIPT")
    later, later_reader = ws_stomp_connect(server.http_port)
    later.sendall(ws_frame(subscribe_frame("/topic/room")))
    later_reader.until("RECEIPT")
    publisher, publisher_reader = stomp_connect(server.stomp_port)

    # Fill what the server holds for the first subscriber beyond the kernel's buffers, so
    # that its TCP connection cannot close once its WebSocket is closing.
    body = b"f" * (256 * 1024)
    count = 48
    for i in range(count):
        publisher.sendall(send_frame("/topic/room", body, receipt="filled" if i == count - 1
                                     else None))
    assert publisher_reader.until("RECEIPT").headers["receipt-id"] == "filled"
    for _ in range(count):
        later_reader.until("MESSAGE")
    closing.sendall(ws_close_frame(1001))
    time.sleep(0.3)  # the server reads the Close and starts its closing handshake

    publisher.sendall(send_frame("/topic/room", b"after the close", receipt="after"))
    assert publisher_reader.until("RECEIPT").headers["receipt-id"] == "after"
    assert later_reader.until("MESSAGE").body == b"after the close"
    publisher.sendall(send_frame("/topic/room", b"and again", receipt="again"))
    assert publisher_reader.until("RECEIPT").headers["receipt-id"] == "again"
    assert later_reader.until("MESSAGE").body == b"and again"
    # The closing subscriber's session ended with its Close; its TCP connection, which it
    # never let close, is cut after the close linger (5 s).
    deadline = time.monotonic() + 10
    pattern = r"connection \w+ closed: 127\.0\.0\.1:\d+ over ws, .*: websocket closed by the " \
              r"client \(1001\); cut after 5.0 s unread"
    while not re.search(pattern, server.log()) and time.monotonic() < deadline:
        time.sleep(0.2)
    log = server.log()
    assert re.search(pattern, log), log
    assert "internal server error" not in log and "Traceback" not in log, log
    for sock in (closing, later, publisher):
        sock.close()


def test_ping_flood_from_a_client_that_never_reads_is_bounded(start_server):
    """Pings from a client that never reads its pongs are answered only while the socket
    drains: the server holds a bounded number of pongs, and the connection still works."""
    server = start_server()
    sock, reader = ws_stomp_connect(server.http_port, rcvbuf=SMALL_RCVBUF)
    ping = ws_frame(b"x" * 125, 0x9)
    pings = 200_000  # 25 MiB of pings; unbounded, the pongs would take as much again
    batch = ping * 1000
    for _ in range(pings // 1000):
        sock.sendall(batch)
    sock.sendall(ws_frame(encode_frame(Frame("SUBSCRIBE", {"destination": "/topic/t", "id": "0",
                                                           "receipt": "still-served"}))))
    reader.until("RECEIPT", timeout=30)
    # Everything before the RECEIPT has been read: the pongs the server held and sent. The
    # kernel's buffers (a send buffer of up to 4 MiB) hold most of them.
    pong_bytes = reader.pongs * (2 + 125)
    assert 0 < pong_bytes < 6 * MiB, f"{reader.pongs} pongs for {pings} pings"
    sock.close()


def test_session_connection_info_says_websocket(clock):
    """A session opened over WebSocket carries a ws ConnectionInfo with the TCP peer's host."""
    conn = WSConnection(clock)
    connection = conn.protocol.stomp.session.connection
    assert connection.transport == "ws"
    assert connection.peer_host == "203.0.113.5"
    assert connection.secure is False


def test_the_frames_one_read_makes_leave_in_one_tcp_write(clock):
    """Several SENDs in one TCP read: their MESSAGEs and RECEIPTs, one WebSocket message
    each, reach TCP in one write, in order."""
    conn = WSConnection(clock)
    conn.send(encode_frame(Frame("CONNECT", {"accept-version": "1.2"})))
    conn.send(encode_frame(Frame("SUBSCRIBE", {"destination": "/topic/t", "id": "0"})))
    writes = []
    write = conn.transport.write

    def recording(data: bytes) -> None:
        writes.append(data)
        write(data)

    conn.transport.write = recording  # type: ignore[method-assign]
    conn.receive(b"".join(
        client_frame(encode_frame(Frame("SEND", {"destination": "/topic/t", "receipt": str(n)},
                                        b"m%d" % n)))
        for n in range(3)
    ))
    assert len(writes) == 1
    frames = conn.stomp_frames()[1:]
    assert [(f.command, f.body or f.headers.get("receipt-id")) for f in frames] == [
        ("MESSAGE", b"m0"), ("RECEIPT", "0"), ("MESSAGE", b"m1"), ("RECEIPT", "1"),
        ("MESSAGE", b"m2"), ("RECEIPT", "2"),
    ]


def test_a_close_in_the_same_read_follows_the_receipt_of_the_send_before_it(clock):
    """A client that sends SEND with a receipt and then Close, in one TCP read, gets its
    RECEIPT before the server's Close."""
    conn = WSConnection(clock)
    conn.send(encode_frame(Frame("CONNECT", {"accept-version": "1.2"})))
    conn.receive(
        client_frame(encode_frame(Frame("SEND", {"destination": "/topic/t", "receipt": "r"})))
        + client_frame(struct.pack("!H", 1000), 0x8)
    )
    assert conn.stomp_frames()[-1].headers["receipt-id"] == "r"
    assert close_codes(conn.wire()) == [1000]


def test_close_from_the_client_ends_the_session_at_once(clock):
    """A client's Close releases its subscriptions now; a peer that never lets TCP close is cut
    after the close linger."""
    conn = WSConnection(clock)
    conn.send(encode_frame(Frame("CONNECT", {"accept-version": "1.2"})))
    conn.send(encode_frame(Frame("SUBSCRIBE", {"destination": "/topic/t", "id": "0"})))
    assert conn.context.broker.subscriber_count("/topic/t") == 1
    conn.receive(client_frame(struct.pack("!H", 1001), 0x8))
    assert conn.context.broker.subscriber_count("/topic/t") == 0
    assert close_codes(conn.wire()) == [1000]  # Autobahn answers with a normal close
    conn.context.broker.publish("/topic/t", b"nobody listens")  # nothing raises
    assert not conn.transport.disconnected
    clock.advance(5.0)
    assert conn.transport.disconnected


class _RefusingSocket(StringTransport):
    """A socket whose every write raises, its Close frame's included."""

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "203.0.113.5", 40000))
        self.aborted = False

    def write(self, data: bytes) -> None:
        raise RuntimeError("the socket refuses")

    def abortConnection(self) -> None:
        self.aborted = True


def test_a_websocket_refusing_its_batched_frames_and_its_close_fails_only_itself(clock):
    """A WebSocket whose socket raises on the frames of a read, and again on the Close its
    failed session sends, is cut after the close linger; the publisher's read goes on and
    the connections after it in the batch get that read's frames and later ones."""
    context = make_context(clock=clock)
    factory = StompFactory(context)
    broken, other = (WSConnection(clock, context=context, stomp_factory=factory)
                     for _ in range(2))
    for conn in (broken, other):
        conn.send(encode_frame(Frame("CONNECT", {"accept-version": "1.2"})))
        conn.send(encode_frame(Frame("SUBSCRIBE", {"destination": "/topic/t", "id": "0"})))
    publisher = WSConnection(clock, context=context, stomp_factory=factory)
    publisher.send(encode_frame(Frame("CONNECT", {"accept-version": "1.2"})))
    socket = _RefusingSocket()
    socket.protocol = broken.protocol
    broken.protocol.transport = socket

    publisher.receive(b"".join(
        client_frame(encode_frame(Frame("SEND", {"destination": "/topic/t"}, body)))
        for body in (b"one", b"two")))
    context.broker.publish("/topic/t", b"three")

    assert [f.body for f in other.stomp_frames()[1:]] == [b"one", b"two", b"three"]
    assert publisher.protocol.state == WebSocketProtocol.STATE_OPEN
    assert not socket.aborted
    clock.advance(5.0)
    assert socket.aborted
