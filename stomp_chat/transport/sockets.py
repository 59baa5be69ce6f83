"""What the STOMP protocols ask of the socket under them: no Nagle delay, and its backlog."""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.protocols.tls import TLSMemoryBIOProtocol


def queued_bytes(transport: Any) -> int | None:
    """Bytes a Twisted socket transport holds that the kernel has not taken yet.

    Read from ``FileDescriptor``'s write buffer (``dataBuffer`` past ``offset``,
    plus writes not yet joined into it), looking through TLS and the WebSocket
    adapter to the socket; ``None`` for a transport without such a buffer.
    """
    for _ in range(4):
        lower = getattr(transport, "socket_transport", None)
        if lower is None and isinstance(transport, TLSMemoryBIOProtocol):
            lower = transport.transport
        if lower is None:
            break
        transport = lower
    if not isinstance(transport, FileDescriptor):
        return None
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def set_no_delay(transport: Any) -> None:
    """Send small frames at once: Nagle's algorithm meeting delayed ACKs costs 40 ms."""
    set_option = getattr(transport, "setTcpNoDelay", None)
    if set_option is not None:
        set_option(True)
