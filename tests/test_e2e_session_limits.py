"""End to end: the per-connection limits of a real `twistd -n stomp-chat` over raw sockets,
interceptors it loads from its options, and the chain pausing a real reactor's TCP transport."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, reactor
from twisted.internet.protocol import Protocol

from stomp_chat.identity import Principal
from stomp_chat.session import AuthenticationInterceptor
from stomp_chat.stomp.frame import Frame, encode_frame
from stomp_chat.transport.stomp import StompFactory
from tests.e2e_interceptors import SLOW_SECONDS
from tests.rawclients import send_frame, subscribe_frame, ws_frame, ws_stomp_connect
from tests.serverproc import RunningServer, assert_clean_stop
from tests.stompfakes import OutputReader, make_context

TIMEOUT = 10.0


class RawClient:
    """A blocking STOMP client on a plain socket, reading frames with the project's parser."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.reader = OutputReader("1.2")
        self.eof = False

    def send(self, command: str, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.sock.sendall(encode_frame(Frame(command, dict(headers or {}), body), "1.2"))

    def connect(self) -> Frame:
        self.send("CONNECT", {"accept-version": "1.2", "host": "x", "heart-beat": "0,0"})
        frame = self.next_frame()
        assert frame.command == "CONNECTED", frame
        return frame

    def next_frame(self, timeout: float = TIMEOUT) -> Frame:
        deadline = time.monotonic() + timeout
        while not self.reader.frames:
            remaining = deadline - time.monotonic()
            assert remaining > 0 and not self.eof, "no frame arrived"
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            if not data:
                self.eof = True
            self.reader.feed(data)
        return self.reader.frames.pop(0)

    def closed_by_server(self, timeout: float = TIMEOUT) -> bool:
        """Whether the server closes the socket within ``timeout`` (after any frames)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.reader.feed(data)
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_clients() -> Iterator:
    opened: list[RawClient] = []

    def connect(server: RunningServer) -> RawClient:
        client = RawClient(server.stomp_port)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()


def limited_server(start_server, *args: str) -> RunningServer:
    return start_server("--stomp", "tcp:0:interface=127.0.0.1",
                        "--http", "tcp:0:interface=127.0.0.1", *args)


def test_unfinished_frame_is_cut_at_the_frame_timeout(start_server, raw_clients) -> None:
    """A real server closes a connection whose frame stays unfinished past --frame-timeout."""
    server = limited_server(start_server, "--frame-timeout", "1", "--heartbeat", "0,0")
    stalled, healthy = raw_clients(server), raw_clients(server)
    stalled.connect()
    healthy.connect()
    stalled.sock.sendall(b"SEND\ndestination:/topic/t\n\n" + b"x" * 100_000)
    started = time.monotonic()
    error = stalled.next_frame()
    assert error.command == "ERROR"
    assert error.headers["message"] == "frame timeout"
    assert 0.9 <= time.monotonic() - started < 5
    assert stalled.closed_by_server()
    healthy.send("SUBSCRIBE", {"destination": "/topic/t", "id": "1", "receipt": "r"})
    assert healthy.next_frame().command == "RECEIPT"
    assert "Traceback" not in server.log()
    assert_clean_stop(server)


def test_send_rate_limit_closes_a_flooding_connection(start_server, raw_clients) -> None:
    """With --send-rate, a connection exceeding its burst gets ERROR 'rate limit exceeded'."""
    server = limited_server(start_server, "--send-rate", "1", "--send-burst", "3")
    client = raw_clients(server)
    client.connect()
    for i in range(4):
        client.send("SEND", {"destination": "/topic/t", "receipt": f"r{i}"}, b"x")
    frames = [client.next_frame() for _ in range(4)]
    assert [f.command for f in frames] == ["RECEIPT", "RECEIPT", "RECEIPT", "ERROR"]
    assert frames[-1].headers["message"] == "rate limit exceeded"
    assert frames[-1].headers["receipt-id"] == "r3"
    assert client.closed_by_server()


def test_transaction_limit_and_huge_ack_ids_get_clear_errors(start_server, raw_clients) -> None:
    """Past --max-transactions, and on a 5,000-digit ack id: ERROR, no traceback in the log."""
    server = limited_server(start_server, "--max-transactions", "2")
    tx_client, ack_client = raw_clients(server), raw_clients(server)
    tx_client.connect()
    for name in ("a", "b", "c"):
        tx_client.send("BEGIN", {"transaction": name})
    error = tx_client.next_frame()
    assert (error.command, error.headers["message"]) == ("ERROR", "too many transactions")
    ack_client.connect()
    ack_client.send("ACK", {"id": "m@" + "9" * 5000})
    error = ack_client.next_frame()
    assert (error.command, error.headers["message"]) == ("ERROR", "unknown ack id")
    assert tx_client.closed_by_server() and ack_client.closed_by_server()
    assert "Traceback" not in server.log()
    assert "internal server error" not in server.log()


class _Collect(Protocol):
    """A raw client on the real reactor that keeps what the server writes."""

    def __init__(self) -> None:
        self.received = b""
        self.reader = OutputReader("1.2")
        self.frames_arrived: defer.Deferred[None] | None = None

    def dataReceived(self, data: bytes) -> None:
        self.reader.feed(data)
        if self.frames_arrived is not None and len(self.reader.frames) >= 2:
            waiting, self.frames_arrived = self.frames_arrived, None
            waiting.callback(None)


@pytest_twisted.inlineCallbacks
def test_slow_authentication_pauses_a_real_tcp_connection():
    """While CONNECT is authenticated, the real TCP transport stops reading; frames resume after."""
    pending: defer.Deferred[Principal] = defer.Deferred()

    class Slow:
        def authenticate(self, frame, connection):
            return pending

    context = make_context(clock=reactor)
    context.interceptors[0] = AuthenticationInterceptor(Slow())
    watcher_context = make_context(clock=reactor, broker=context.broker)
    factory = StompFactory(context)
    port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    watcher_port = yield endpoints.TCP4ServerEndpoint(
        reactor, 0, interface="127.0.0.1"
    ).listen(StompFactory(watcher_context))
    try:
        client_endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        watcher = yield endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", watcher_port.getHost().port),
            _Collect(),
        )
        watcher.frames_arrived = defer.Deferred()
        watcher.transport.write(
            encode_frame(Frame("CONNECT", {"accept-version": "1.2"}))
            + encode_frame(Frame("SUBSCRIBE", {"destination": "/topic/t", "id": "0",
                                               "receipt": "w"}), "1.2")
        )
        yield watcher.frames_arrived
        client = yield endpoints.connectProtocol(client_endpoint, _Collect())
        client.transport.write(
            encode_frame(Frame("CONNECT", {"accept-version": "1.2"}))
            + encode_frame(Frame("SEND", {"destination": "/topic/t"}, b"after auth"), "1.2")
        )
        yield _wait_until(lambda: len(factory_sessions(context)) == 1
                          and factory_sessions(context)[0].transport._reading_paused)
        (protocol,) = [s.transport for s in factory_sessions(context)]
        assert protocol.transport not in reactor.getReaders(), "the socket is still read"
        assert client.reader.frames == []
        watcher.frames_arrived = defer.Deferred()
        pending.callback(Principal("u1", "Una"))
        yield watcher.frames_arrived
        assert [f.body for f in watcher.reader.frames if f.command == "MESSAGE"] == [b"after auth"]
        assert protocol.transport in reactor.getReaders()
        yield _wait_until(lambda: client.reader.frames)
        assert client.reader.frames[0].headers["user-name"] == "Una"
        client.transport.loseConnection()
        watcher.transport.loseConnection()
    finally:
        yield port.stopListening()
        yield watcher_port.stopListening()


def factory_sessions(context) -> list:
    return list(context.heartbeats._sessions)


def _wait_until(condition, timeout: float = TIMEOUT) -> defer.Deferred[None]:
    """Poll ``condition`` on the real reactor until it holds."""
    deadline = time.monotonic() + timeout

    def check(result: defer.Deferred[None]) -> None:
        if condition():
            result.callback(None)
        elif time.monotonic() > deadline:
            result.errback(AssertionError("condition never held"))
        else:
            reactor.callLater(0.01, check, result)

    result: defer.Deferred[None] = defer.Deferred()
    check(result)
    return result




def test_configured_interceptors_wait_and_refuse_over_a_real_websocket(start_server) -> None:
    """Interceptors from --interceptors run in a real server: a waiting one holds the frames
    behind it in order over a real WebSocket, and one can refuse a frame with ERROR."""
    server = limited_server(
        start_server, "--interceptors",
        "tests.e2e_interceptors:SlowSends,tests.e2e_interceptors:RefuseForbidden",
    )
    sock, reader = ws_stomp_connect(server.http_port)
    try:
        sock.sendall(ws_frame(subscribe_frame("/topic/t")))
        reader.until("RECEIPT")
        slow = encode_frame(Frame("SEND", {"destination": "/topic/t", "x-slow": "1",
                                           "receipt": "r1"}, b"first"), "1.2")
        started = time.monotonic()
        sock.sendall(ws_frame(slow + send_frame("/topic/t", b"second", "r2")
                              + send_frame("/topic/t", b"third", "r3")))
        receipts, bodies = [], []
        while len(receipts) < 3:
            frame = _next(reader)
            if frame.command == "RECEIPT":
                receipts.append(frame.headers["receipt-id"])
            elif frame.command == "MESSAGE":
                bodies.append(frame.body)
        assert time.monotonic() - started >= SLOW_SECONDS
        assert receipts == ["r1", "r2", "r3"]
        assert bodies == [b"first", b"second", b"third"]
        sock.sendall(ws_frame(send_frame("/topic/t", b"forbidden", "r4")))
        error = reader.until("ERROR")
        assert error.headers["message"] == "forbidden word"
        assert error.headers["receipt-id"] == "r4"
    finally:
        sock.close()
    assert "Traceback" not in server.log()


def _next(reader) -> Frame:
    """The next STOMP frame a WebSocketReader decodes, whatever its command."""
    deadline = time.monotonic() + TIMEOUT
    while not reader.stomp.frames:
        assert time.monotonic() < deadline, "no frame arrived"
        data = reader.sock.recv(1 << 16)
        assert data, "the server closed the connection"
        reader.feed(data)
    return reader.stomp.frames.pop(0)
