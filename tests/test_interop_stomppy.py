"""Interoperability with stomp.py 9 (TCP and WebSocket) and with browser-style handshakes.

stomp.py is driven through its public API (Connection10/11/12 and
WSStompConnection) against a real server process; the origin and subprotocol
checks use ``websocket-client`` directly, as a browser would shake hands.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import stomp
import websocket
from stomp.utils import Frame

from tests.serverproc import RunningServer

HOST = "127.0.0.1"
WAIT = 5.0

CONNECTIONS = {
    "1.0": stomp.Connection10,
    "1.1": stomp.Connection11,
    "1.2": stomp.Connection12,
}
VERSIONS = list(CONNECTIONS)


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


class Recorder(stomp.ConnectionListener):
    """Records every frame a stomp.py connection receives, for waiting on."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.frames: list[tuple[str, Frame]] = []
        self.disconnected = False

    def _add(self, kind: str, frame: Frame) -> None:
        with self.cond:
            self.frames.append((kind, frame))
            self.cond.notify_all()

    def on_connected(self, frame: Frame) -> None:
        self._add("CONNECTED", frame)

    def on_message(self, frame: Frame) -> None:
        self._add("MESSAGE", frame)

    def on_receipt(self, frame: Frame) -> None:
        self._add("RECEIPT", frame)

    def on_error(self, frame: Frame) -> None:
        self._add("ERROR", frame)

    def on_disconnected(self) -> None:
        with self.cond:
            self.disconnected = True
            self.cond.notify_all()

    def of(self, kind: str) -> list[Frame]:
        with self.cond:
            return [frame for k, frame in self.frames if k == kind]

    def bodies(self) -> list[str]:
        return [frame.body for frame in self.of("MESSAGE")]

    def receipt_ids(self) -> list[str]:
        return [frame.headers["receipt-id"] for frame in self.of("RECEIPT")]

    def summary(self) -> str:
        with self.cond:
            seen = [(k, f.headers, f.body[:200] if f.body else f.body) for k, f in self.frames]
        return f"disconnected={self.disconnected} frames={seen}"

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> None:
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}; {self.summary()}"
                )

    def wait_messages(self, count: int, timeout: float = WAIT) -> list[Frame]:
        self.wait(lambda: len(self.of("MESSAGE")) >= count, f"{count} MESSAGE frames", timeout)
        return self.of("MESSAGE")

    def wait_receipt(self, receipt_id: str, timeout: float = WAIT) -> None:
        self.wait(lambda: receipt_id in self.receipt_ids(), f"RECEIPT {receipt_id}", timeout)

    def wait_error(self, timeout: float = WAIT) -> Frame:
        self.wait(lambda: self.of("ERROR"), "an ERROR frame", timeout)
        return self.of("ERROR")[0]

    def wait_disconnected(self, timeout: float = WAIT) -> None:
        self.wait(lambda: self.disconnected, "the server to close the connection", timeout)


class Client:
    """A stomp.py connection plus its recorder."""

    def __init__(self, conn: Any, version: str) -> None:
        self.conn = conn
        self.version = version
        self.rec = Recorder()
        conn.set_listener("recorder", self.rec)
        self._receipts = 0

    def connect(self) -> Frame:
        self.conn.connect()
        rec = self.rec
        rec.wait(lambda: rec.of("CONNECTED") or rec.of("ERROR") or rec.disconnected, "CONNECTED")
        assert rec.of("CONNECTED"), f"CONNECT was refused: {rec.summary()}"
        return rec.of("CONNECTED")[0]

    def receipt(self, prefix: str = "r") -> str:
        self._receipts += 1
        return f"{prefix}-{self._receipts}"

    def subscribe(self, destination: str, sub_id: str | None = "s1", ack: str = "auto") -> None:
        """SUBSCRIBE and wait for its RECEIPT."""
        receipt = self.receipt("sub")
        if self.version == "1.0":
            self.conn.subscribe(destination, id=sub_id, ack=ack, receipt=receipt)
        else:
            self.conn.subscribe(destination, sub_id, ack=ack, receipt=receipt)
        self.rec.wait_receipt(receipt)

    def send(self, destination: str, body: str, wait: bool = True, **headers: str) -> None:
        """SEND, by default waiting for its RECEIPT."""
        if wait:
            headers["receipt"] = self.receipt("send")
        self.conn.send(destination, body, **headers)
        if wait:
            self.rec.wait_receipt(headers["receipt"])

    def ack(self, message: Frame, **kwargs: Any) -> None:
        """ACK ``message`` the way this version's stomp.py API wants it."""
        headers = message.headers
        if self.version == "1.2":
            self.conn.ack(headers["ack"], **kwargs)
        elif self.version == "1.1":
            self.conn.ack(headers["message-id"], headers["subscription"], **kwargs)
        else:
            self.conn.ack(headers["message-id"], **kwargs)

    def nack(self, message: Frame, **kwargs: Any) -> None:
        headers = message.headers
        if self.version == "1.2":
            self.conn.nack(headers["ack"], **kwargs)
        else:
            self.conn.nack(headers["message-id"], headers["subscription"], **kwargs)

    def raw(self, command: str, headers: dict[str, str], body: str = "") -> None:
        """Write a frame exactly as given: no escaping, no added headers."""
        self.conn.transport.transmit(Frame(command, dict(headers), body))

    def disconnect(self) -> None:
        """DISCONNECT with a receipt; wait for the RECEIPT and for the server to close."""
        if self.conn.is_connected():
            receipt = self.receipt("bye")
            # A plain frame, so that stomp.py does not close the socket itself:
            # the server must close it after the RECEIPT.
            self.conn.send_frame("DISCONNECT", {"receipt": receipt})
            self.rec.wait_receipt(receipt)
            self.rec.wait_disconnected()

    def close(self) -> None:
        try:
            if self.conn.is_connected() and not self.rec.of("ERROR"):
                self.disconnect()
        except AssertionError:
            pass
        finally:
            if self.conn.transport.socket is not None:
                self.conn.transport.disconnect_socket()


# -- servers and clients -----------------------------------------------------


def _module_server(tmp_path_factory: pytest.TempPathFactory, *options: str) -> Iterator:
    server = RunningServer(tmp_path_factory.mktemp("stomppy"), list(options)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stomp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server on its defaults; every test uses its own destinations."""
    yield from _module_server(tmp_path_factory)


@pytest.fixture(scope="module")
def any_origin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from _module_server(tmp_path_factory, "--allowed-origins", "*")


@pytest.fixture(scope="module")
def pattern_origin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from _module_server(
        tmp_path_factory, "--allowed-origins", "https://*.example.com,chat.test:8443"
    )


@pytest.fixture
def tcp(stomp_server) -> Iterator[Callable[..., Client]]:
    """``tcp(version, connect=True)``: a stomp.py TCP client, closed after the test."""
    clients: list[Client] = []

    def make(version: str = "1.2", connect: bool = True) -> Client:
        conn = CONNECTIONS[version]([(HOST, stomp_server.stomp_port)], reconnect_attempts_max=1)
        client = Client(conn, version)
        clients.append(client)
        if connect:
            client.connect()
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def ws(stomp_server) -> Iterator[Callable[..., Client]]:
    """``ws()``: a connected stomp.py WebSocket client (STOMP 1.2), closed after the test."""
    clients: list[Client] = []

    def make() -> Client:
        conn = stomp.WSStompConnection(
            [(HOST, stomp_server.http_port)], ws_path="/ws/chat", reconnect_attempts_max=1
        )
        client = Client(conn, "1.2")
        clients.append(client)
        client.connect()
        return client

    yield make
    for client in clients:
        client.close()


# -- STOMP over TCP, every version ------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_connected_frame_per_version(tcp, version):
    """stomp.py's STOMP frame for each version gets CONNECTED with that version and its headers."""
    connected = tcp(version).rec.of("CONNECTED")[0]
    headers = connected.headers
    assert headers["version"] == version
    assert headers["server"].startswith("stomp-chat/")
    assert len(headers["session"]) >= 8
    if version == "1.0":
        assert "heart-beat" not in headers
    else:
        assert headers["heart-beat"] == "10000,10000"


@pytest.mark.parametrize("version", VERSIONS)
def test_topic_round_trip_unicode(tcp, version):
    """A Korean body and header sent to a /topic come back unchanged, content-length in bytes."""
    client = tcp(version)
    destination = unique("/topic/stomppy.unicode")
    client.subscribe(destination, sub_id="room-1")
    body = "안녕하세요 👋 채팅방에 오신 것을 환영합니다"
    headers = {"x-greeting": "반가워요"}
    if version != "1.0":
        headers["x-note"] = "a:b\nc"  # stomp.py escapes it in 1.1 and 1.2
    client.send(destination, body, **headers)
    [message] = client.rec.wait_messages(1)
    assert message.body == body
    assert message.headers["x-greeting"] == "반가워요"
    if version != "1.0":
        assert message.headers["x-note"] == "a:b\nc"
    assert message.headers["destination"] == destination
    assert message.headers["subscription"] == "room-1"
    assert message.headers["message-id"]
    assert message.headers["content-length"] == str(len(body.encode("utf-8")))
    assert "receipt" not in message.headers


def test_stomp10_subscription_without_id(tcp):
    """A 1.0 SUBSCRIBE without id receives messages and is unsubscribed by destination."""
    client = tcp("1.0")
    destination = unique("/topic/stomppy.noid")
    client.subscribe(destination, sub_id=None)
    client.send(destination, "first")
    [message] = client.rec.wait_messages(1)
    assert message.body == "first"
    assert message.headers["destination"] == destination
    receipt = client.receipt("unsub")
    client.conn.unsubscribe(destination=destination, receipt=receipt)
    client.rec.wait_receipt(receipt)
    client.send(destination, "second")
    assert client.rec.bodies() == ["first"]


@pytest.mark.parametrize("version", VERSIONS)
def test_receipts_for_every_frame_in_order(tcp, version):
    """SUBSCRIBE, SEND, BEGIN, COMMIT, ABORT, UNSUBSCRIBE with receipts get RECEIPTs in order."""
    client = tcp(version)
    conn = client.conn
    destination = unique("/queue/stomppy.receipts")
    if version == "1.0":
        conn.subscribe(destination, id="s1", receipt="r-sub")
    else:
        conn.subscribe(destination, "s1", receipt="r-sub")
    conn.send(destination, "hello", receipt="r-send")
    conn.begin("tx-a", receipt="r-begin")
    conn.send(destination, "in tx", transaction="tx-a", receipt="r-send-tx")
    conn.commit("tx-a", receipt="r-commit")
    conn.begin("tx-b", receipt="r-begin-b")
    conn.abort("tx-b", receipt="r-abort")
    if version == "1.0":
        conn.unsubscribe(destination=destination, id="s1", receipt="r-unsub")
    else:
        conn.unsubscribe("s1", receipt="r-unsub")
    expected = [
        "r-sub", "r-send", "r-begin", "r-send-tx", "r-commit", "r-begin-b", "r-abort", "r-unsub",
    ]
    client.rec.wait(lambda: len(client.rec.receipt_ids()) >= len(expected), "eight RECEIPTs")
    assert client.rec.receipt_ids() == expected
    assert client.rec.bodies() == ["hello", "in tx"]
    assert client.rec.of("ERROR") == []


@pytest.mark.parametrize("version", VERSIONS)
def test_client_ack_and_redelivery_after_disconnect(tcp, version):
    """client ack: an acked message is gone; an unacked one goes to the next consumer."""
    destination = unique("/queue/stomppy.ack")
    first = tcp(version)
    first.subscribe(destination, ack="client")
    first.send(destination, "acked")
    [acked] = first.rec.wait_messages(1)
    receipt = first.receipt("ack")
    first.ack(acked, receipt=receipt)
    first.rec.wait_receipt(receipt)
    first.send(destination, "left unacked")
    messages = first.rec.wait_messages(2)
    if version != "1.0":
        assert all(m.headers["subscription"] == "s1" for m in messages)
    if version == "1.2":
        assert messages[0].headers["ack"] != messages[1].headers["ack"]
    first.disconnect()

    second = tcp(version)
    second.subscribe(destination, ack="client-individual" if version != "1.0" else "client")
    [redelivered] = second.rec.wait_messages(1)
    assert redelivered.body == "left unacked"
    second.ack(redelivered)
    second.send(destination, "marker")
    second.rec.wait_messages(2)
    assert second.rec.bodies() == ["left unacked", "marker"]


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_nack_redelivers(tcp, version):
    """NACK in client-individual mode makes the server deliver the message again."""
    client = tcp(version)
    destination = unique("/queue/stomppy.nack")
    client.subscribe(destination, ack="client-individual")
    client.send(destination, "try again")
    [message] = client.rec.wait_messages(1)
    client.nack(message)
    redelivered = client.rec.wait_messages(2)[1]
    assert redelivered.body == "try again"
    receipt = client.receipt("ack")
    client.ack(redelivered, receipt=receipt)
    client.rec.wait_receipt(receipt)
    assert client.rec.bodies() == ["try again", "try again"]
    assert client.rec.of("ERROR") == []


@pytest.mark.parametrize("version", VERSIONS)
def test_transactions_commit_and_abort(tcp, version):
    """begin/commit/abort via stomp.py: SENDs in a transaction wait for COMMIT; ABORT drops them."""
    client = tcp(version)
    destination = unique("/topic/stomppy.tx")
    client.subscribe(destination)
    tx = client.conn.begin()
    client.send(destination, "tx one", transaction=tx)
    client.send(destination, "tx two", transaction=tx)
    client.send(destination, "outside")
    client.rec.wait_messages(1)
    assert client.rec.bodies() == ["outside"]
    receipt = client.receipt("commit")
    client.conn.commit(tx, receipt=receipt)
    client.rec.wait_receipt(receipt)
    client.rec.wait_messages(3)

    aborted = client.conn.begin()
    client.send(destination, "never", transaction=aborted)
    client.conn.abort(aborted)
    client.send(destination, "after abort")
    client.rec.wait_messages(4)
    assert client.rec.bodies() == ["outside", "tx one", "tx two", "after abort"]
    assert client.rec.of("ERROR") == []


def test_ack_in_aborted_transaction_is_undone(tcp):
    """An ACK inside an aborted transaction does not count: the message is redelivered later."""
    destination = unique("/queue/stomppy.txack")
    first = tcp("1.2")
    first.subscribe(destination, ack="client-individual")
    first.send(destination, "kept")
    [message] = first.rec.wait_messages(1)
    tx = first.conn.begin()
    first.ack(message, transaction=tx)
    receipt = first.receipt("abort")
    first.conn.abort(tx, receipt=receipt)
    first.rec.wait_receipt(receipt)
    first.disconnect()

    second = tcp("1.2")
    second.subscribe(destination, ack="client-individual")
    [redelivered] = second.rec.wait_messages(1)
    assert redelivered.body == "kept"


def test_disconnect_receipt_then_close(tcp):
    """DISCONNECT with a receipt gets that RECEIPT, after which the server closes the socket."""
    client = tcp("1.2")
    destination = unique("/queue/stomppy.disc")
    client.send(destination, "before DISCONNECT", wait=False)
    # stomp.py's disconnect(receipt=...) blocks until the socket is gone; bound it.
    closing = threading.Thread(target=client.conn.disconnect, kwargs={"receipt": "bye-1"})
    closing.daemon = True
    closing.start()
    closing.join(WAIT)
    assert not closing.is_alive(), f"disconnect() did not return: {client.rec.summary()}"
    client.rec.wait_receipt("bye-1")
    client.rec.wait_disconnected()
    assert client.rec.receipt_ids() == ["bye-1"]
    assert client.rec.of("ERROR") == []

    other = tcp("1.2")
    other.subscribe(destination)
    assert other.rec.wait_messages(1)[0].body == "before DISCONNECT"


def test_sixteen_megabyte_body_over_tcp(tcp):
    """A 16 MiB body (within the default frame limit) round-trips intact through stomp.py."""
    client = tcp("1.2")
    destination = unique("/topic/stomppy.big")
    client.subscribe(destination)
    body = "".join(f"{i:07d}:가나다\n" for i in range(16 * 1024 * 1024 // 18))
    body += "x" * (16 * 1024 * 1024 - len(body.encode()))
    assert len(body.encode()) == 16 * 1024 * 1024
    client.send(destination, body, wait=False)
    [message] = client.rec.wait_messages(1, timeout=20)
    assert message.headers["content-length"] == str(16 * 1024 * 1024)
    assert message.body == body


# -- ERROR on bad frames -----------------------------------------------------

BAD_FRAMES: dict[str, tuple[str, list[tuple[str, dict[str, str], str]]]] = {
    "unknown command": ("1.2", [("BOGUS", {"receipt": "bad"}, "")]),
    "SEND without destination": ("1.2", [("SEND", {"receipt": "bad"}, "orphan")]),
    "SUBSCRIBE without id": (
        "1.2", [("SUBSCRIBE", {"destination": "/topic/x", "receipt": "bad"}, "")]
    ),
    "SUBSCRIBE without id in 1.1": (
        "1.1", [("SUBSCRIBE", {"destination": "/topic/x", "receipt": "bad"}, "")]
    ),
    "duplicate subscription id": (
        "1.2",
        [
            ("SUBSCRIBE", {"destination": "/topic/x", "id": "dup"}, ""),
            ("SUBSCRIBE", {"destination": "/topic/y", "id": "dup", "receipt": "bad"}, ""),
        ],
    ),
    "ACK without id": ("1.2", [("ACK", {"receipt": "bad"}, "")]),
    "ACK of an unknown id": ("1.2", [("ACK", {"id": "no-such-message", "receipt": "bad"}, "")]),
    "NACK in 1.0": ("1.0", [("NACK", {"message-id": "m-1", "receipt": "bad"}, "")]),
    "COMMIT of an unknown transaction": (
        "1.2", [("COMMIT", {"transaction": "nope", "receipt": "bad"}, "")]
    ),
    "transaction begun twice": (
        "1.2",
        [
            ("BEGIN", {"transaction": "t1"}, ""),
            ("BEGIN", {"transaction": "t1", "receipt": "bad"}, ""),
        ],
    ),
    "second CONNECT": (
        "1.2", [("STOMP", {"accept-version": "1.2", "host": "x", "receipt": "bad"}, "")]
    ),
    "SEND to /app without handler": (
        "1.2", [("SEND", {"destination": "/app/nohandler", "receipt": "bad"}, "{}")]
    ),
    "invalid ack mode": (
        "1.2",
        [("SUBSCRIBE", {"destination": "/queue/x", "id": "s", "ack": "no", "receipt": "bad"}, "")],
    ),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_bad_frame_gets_error_with_receipt_id_then_close(tcp, case):
    """A bad frame with a receipt gets ERROR (message, receipt-id, body), no RECEIPT, then close."""
    version, frames = BAD_FRAMES[case]
    client = tcp(version)
    for command, headers, body in frames:
        client.raw(command, headers, body)
    error = client.rec.wait_error()
    assert error.headers["message"]
    assert error.headers.get("receipt-id") == "bad"
    assert error.headers["content-type"].startswith("text/plain")
    assert error.body
    assert "bad" not in client.rec.receipt_ids()
    client.rec.wait_disconnected()
    assert len(client.rec.of("ERROR")) == 1


def test_frames_after_disconnect_are_ignored(tcp):
    """Frames written after DISCONNECT are not processed: a SEND that follows it is never routed."""
    destination = unique("/queue/stomppy.afterdisc")
    client = tcp("1.2")
    # One write holding both frames: the server may close the socket as soon
    # as it has read the DISCONNECT, so a second write could find it closed.
    client.conn.transport.send(
        b"DISCONNECT\nreceipt:bye\n\n\x00"
        + f"SEND\ndestination:{destination}\n\nwritten after DISCONNECT\x00".encode()
    )
    client.rec.wait_receipt("bye")
    client.rec.wait_disconnected()

    other = tcp("1.2")
    other.subscribe(destination)
    other.send(destination, "marker")
    other.rec.wait_messages(1)
    assert other.rec.bodies() == ["marker"]


def test_undefined_escape_is_fatal(tcp):
    """A header with the undefined escape \\t gets ERROR and the connection is closed."""
    client = tcp("1.2")
    client.raw("SEND", {"destination": "/topic/x", "x-bad": "tab\\there"}, "body")
    error = client.rec.wait_error()
    assert error.headers["message"]
    client.rec.wait_disconnected()


def test_nack_with_wrong_subscription_stomp11(tcp):
    """A 1.1 NACK naming a subscription that does not exist gets ERROR and a close."""
    client = tcp("1.1")
    destination = unique("/queue/stomppy.badnack")
    client.subscribe(destination, sub_id="real", ack="client")
    client.send(destination, "m")
    [message] = client.rec.wait_messages(1)
    client.conn.nack(message.headers["message-id"], "not-a-subscription", receipt="bad")
    error = client.rec.wait_error()
    assert error.headers["message"]
    assert error.headers.get("receipt-id") == "bad"
    client.rec.wait_disconnected()


def test_unsupported_version_error_lists_versions(tcp):
    """CONNECT accepting only 3.0 gets ERROR with version:1.0,1.1,1.2 and a close."""
    client = tcp("1.2", connect=False)
    client.conn.transport.start()
    client.raw("CONNECT", {"accept-version": "3.0", "host": HOST})
    error = client.rec.wait_error()
    assert error.headers["version"] == "1.0,1.1,1.2"
    assert error.headers["message"]
    assert client.rec.of("CONNECTED") == []
    client.rec.wait_disconnected()


# -- stomp.py over WebSocket -------------------------------------------------


def test_websocket_connect_speaks_stomp12(ws):
    """WSStompConnection (no subprotocol offered) connects and negotiates STOMP 1.2."""
    client = ws()
    headers = client.rec.of("CONNECTED")[0].headers
    assert headers["version"] == "1.2"
    assert headers["server"].startswith("stomp-chat/")
    assert headers["heart-beat"] == "10000,10000"
    assert client.conn.transport.socket.getsubprotocol() is None


def test_websocket_round_trip_unicode_and_receipts(ws):
    """Over WebSocket a Korean body and an escaped header round-trip, with RECEIPTs."""
    client = ws()
    destination = unique("/topic/stomppy.ws")
    client.subscribe(destination, sub_id="ws-sub")
    body = "웹소켓으로 보낸 메시지 ✉️"
    client.send(destination, body, **{"x-note": "x:y\nz", "x-이름": "값"})
    [message] = client.rec.wait_messages(1)
    assert message.body == body
    assert message.headers["x-note"] == "x:y\nz"
    assert message.headers["x-이름"] == "값"
    assert message.headers["subscription"] == "ws-sub"
    assert message.headers["content-length"] == str(len(body.encode()))
    assert client.rec.receipt_ids() == ["sub-1", "send-2"]
    client.disconnect()
    assert client.rec.receipt_ids()[-1] == "bye-3"


def test_websocket_one_megabyte_body(ws):
    """A 1 MiB Korean text body sent by stomp.py over WebSocket comes back intact."""
    client = ws()
    destination = unique("/topic/stomppy.wsbig")
    client.subscribe(destination)
    body = "한국어 본문 " * (1024 * 1024 // 17)
    client.send(destination, body)
    [message] = client.rec.wait_messages(1, timeout=20)
    assert message.headers["content-length"] == str(len(body.encode()))
    assert message.body == body


def test_websocket_and_tcp_clients_share_destinations(ws, tcp):
    """A WebSocket publisher reaches a TCP 1.1 subscriber and vice versa."""
    destination = unique("/topic/stomppy.bridge")
    web, raw = ws(), tcp("1.1")
    web.subscribe(destination, sub_id="web")
    raw.subscribe(destination, sub_id="tcp")
    web.send(destination, "from the browser side 🌐")
    raw.send(destination, "from TCP 한국어")
    web.rec.wait_messages(2)
    raw.rec.wait_messages(2)
    assert web.rec.bodies() == ["from the browser side 🌐", "from TCP 한국어"]
    assert raw.rec.bodies() == web.rec.bodies()
    assert {m.headers["subscription"] for m in raw.rec.of("MESSAGE")} == {"tcp"}


def test_websocket_client_individual_ack(ws):
    """Over WebSocket, only the unacked message of two is redelivered to the next consumer."""
    destination = unique("/queue/stomppy.wsack")
    first = ws()
    first.subscribe(destination, ack="client-individual")
    first.send(destination, "one")
    first.send(destination, "two")
    one, two = first.rec.wait_messages(2)
    receipt = first.receipt("ack")
    first.ack(two, receipt=receipt)
    first.rec.wait_receipt(receipt)
    first.disconnect()

    second = ws()
    second.subscribe(destination, ack="client-individual")
    [redelivered] = second.rec.wait_messages(1)
    assert redelivered.body == "one"


# -- browser handshakes: Origin and subprotocols -----------------------------


def _handshake(server: RunningServer, **options: Any) -> websocket.WebSocket:
    return websocket.create_connection(server.ws_url, timeout=WAIT, **options)


def _refused_status(server: RunningServer, origin: str) -> int:
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        _handshake(server, origin=origin, subprotocols=["v12.stomp"]).close()
    return refused.value.status_code


def _stomp_connect(sock: websocket.WebSocket) -> str:
    sock.send("CONNECT\naccept-version:1.2\nhost:chat\n\n\x00")
    reply = sock.recv()
    sock.close()
    return reply


def test_foreign_origin_refused_by_default(stomp_server):
    """By default a browser Origin other than the server's own gets HTTP 403."""
    assert _refused_status(stomp_server, "http://evil.example") == 403
    assert _refused_status(stomp_server, "https://127.0.0.1.evil.example") == 403


def test_same_origin_accepted_by_default(stomp_server):
    """The server's own origin may open a STOMP WebSocket and CONNECT."""
    own_origin = f"http://127.0.0.1:{stomp_server.http_port}"
    sock = _handshake(stomp_server, origin=own_origin, subprotocols=["v12.stomp"])
    assert sock.getstatus() == 101
    assert sock.getsubprotocol() == "v12.stomp"
    assert _stomp_connect(sock).startswith("CONNECTED\n")


def test_no_origin_header_accepted(stomp_server):
    """A non-browser handshake without an Origin header is accepted."""
    sock = _handshake(stomp_server, suppress_origin=True, subprotocols=["v12.stomp"])
    assert sock.getstatus() == 101
    assert _stomp_connect(sock).startswith("CONNECTED\n")


def test_any_origin_with_star(any_origin_server):
    """With --allowed-origins '*' a foreign origin is accepted."""
    sock = _handshake(any_origin_server, origin="http://evil.example", subprotocols=["v12.stomp"])
    assert sock.getstatus() == 101
    assert sock.getsubprotocol() == "v12.stomp"
    assert _stomp_connect(sock).startswith("CONNECTED\n")


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://chat.example.com", True),
        ("https://eu.chat.example.com", True),
        ("https://chat.test:8443", True),
        ("http://chat.example.com", False),
        ("https://example.com.evil.org", False),
        ("https://chat.test:9443", False),
        ("http://evil.example", False),
    ],
)
def test_origin_patterns(pattern_origin_server, origin, allowed):
    """--allowed-origins patterns accept matching origins and refuse others with 403."""
    if allowed:
        sock = _handshake(pattern_origin_server, origin=origin, subprotocols=["v12.stomp"])
        assert sock.getstatus() == 101
        assert _stomp_connect(sock).startswith("CONNECTED\n")
    else:
        assert _refused_status(pattern_origin_server, origin) == 403


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["v10.stomp", "v11.stomp", "v12.stomp"], "v12.stomp"),
        (["v12.stomp", "v11.stomp", "v10.stomp"], "v12.stomp"),
        (["v11.stomp"], "v11.stomp"),
        (["v10.stomp", "v11.stomp"], "v11.stomp"),
        (["v10.stomp"], "v10.stomp"),
        (None, None),
    ],
)
def test_subprotocol_negotiation(stomp_server, offered, chosen):
    """The server picks the highest STOMP subprotocol offered, and none when none is offered."""
    sock = _handshake(stomp_server, subprotocols=offered)
    assert sock.getsubprotocol() == chosen
    assert sock.getheaders().get("sec-websocket-protocol") == chosen
    assert _stomp_connect(sock).startswith("CONNECTED\n")
