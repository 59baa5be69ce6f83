"""Unit tests for stomp_chat.transport.sockets: the socket's backlog and TCP_NODELAY."""

from __future__ import annotations

from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.testing import StringTransport

from stomp_chat.transport.sockets import queued_bytes, set_no_delay


def test_queued_bytes_reads_a_real_socket_transport():
    """queued_bytes reads a Twisted TCP transport's buffer; other transports give None."""
    assert queued_bytes(StringTransport()) is None
    connection = tcp.Connection.__new__(tcp.Connection)
    FileDescriptor.__init__(connection)
    assert queued_bytes(connection) == 0
    connection._tempDataBuffer.append(b"x" * 10)
    connection._tempDataLen += 10
    connection.dataBuffer, connection.offset = b"y" * 100, 30
    assert queued_bytes(connection) == 80


def test_queued_bytes_looks_through_an_adapter_to_its_socket():
    """A transport naming its socket_transport (the WebSocket adapter) reports that socket's."""
    socket_transport = FileDescriptor()
    socket_transport.dataBuffer = b"z" * 42
    adapter = StringTransport()
    adapter.socket_transport = socket_transport  # type: ignore[attr-defined]
    assert queued_bytes(adapter) == 42


class _NoDelayRecorder(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.no_delay: list[bool] = []

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay.append(enabled)


def test_set_no_delay_asks_tcp_transports_and_skips_others():
    """TCP transports are asked for TCP_NODELAY; a transport without the option is left alone."""
    tcp_like = _NoDelayRecorder()
    set_no_delay(tcp_like)
    assert tcp_like.no_delay == [True]
    set_no_delay(StringTransport())  # a UNIX socket has no such option: nothing raises


def test_queued_bytes_looks_through_tls_to_the_tcp_socket():
    """Under TLS the ciphertext waits in the TCP transport below, which is what is measured."""
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    socket_transport = FileDescriptor()
    socket_transport.dataBuffer = b"c" * 1000
    tls = TLSMemoryBIOProtocol.__new__(TLSMemoryBIOProtocol)
    tls.transport = socket_transport
    assert queued_bytes(tls) == 1000
