"""Blocking raw-socket clients for tests against a real server: STOMP over TCP and WebSocket.

They do only what a test needs to misbehave on purpose: stop reading, send a
Close frame and keep the TCP connection, flood pings, trickle bytes. A small
receive buffer (``rcvbuf``) keeps the kernel from absorbing what the server
must hold itself.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import time

from stomp_chat.stomp.frame import Frame, encode_frame
from stomp_chat.stomp.parser import FrameParser

SMALL_RCVBUF = 64 * 1024


def open_socket(port: int, rcvbuf: int | None = None, timeout: float = 10.0) -> socket.socket:
    """A TCP connection to 127.0.0.1:port; ``rcvbuf`` is set before connecting."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 15.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    deadline = time.monotonic() + timeout
    sock.settimeout(1.0)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    else:
        raise AssertionError("the server did not close the connection")
    return b"".join(chunks)


def stomp_frames(data: bytes) -> list[Frame]:
    frames: list[Frame] = []
    parser = FrameParser(frames.append, max_frame_size=1 << 30)
    parser.version = "1.2"
    parser.feed(data)
    return frames


class StompReader:
    """Reads STOMP frames from a socket, one recv at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames: list[Frame] = []
        self.parser = FrameParser(self.frames.append, max_frame_size=1 << 30)
        self.parser.version = "1.2"
        self.received = 0

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        self.parser.feed(data)

    def until(self, command: str, timeout: float = 15.0, chunk: int = 1 << 16,
              pause: float = 0.0) -> Frame:
        """Read until a frame with ``command`` arrives; ``pause`` after each recv."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        while time.monotonic() < deadline:
            for index, frame in enumerate(self.frames):
                if frame.command == command:
                    del self.frames[: index + 1]
                    return frame
                if frame.command == "ERROR":
                    raise AssertionError(f"ERROR instead of {command}: {frame.headers}")
            data = self.sock.recv(chunk)
            if not data:
                raise AssertionError(f"closed before {command}; got {self.frames}")
            self.feed(data)
            if pause:
                time.sleep(pause)
        raise AssertionError(f"no {command} within {timeout} s")


def stomp_connect(port: int, rcvbuf: int | None = None) -> tuple[socket.socket, StompReader]:
    """A raw TCP STOMP 1.2 connection, CONNECTED."""
    sock = open_socket(port, rcvbuf)
    sock.sendall(encode_frame(Frame("CONNECT", {"accept-version": "1.2", "host": "x",
                                                "heart-beat": "0,0"})))
    reader = StompReader(sock)
    reader.until("CONNECTED")
    return sock, reader


def subscribe_frame(destination: str, sub_id: str = "0", receipt: str = "sub") -> bytes:
    return encode_frame(Frame("SUBSCRIBE", {"destination": destination, "id": sub_id,
                                            "receipt": receipt}), "1.2")


def send_frame(destination: str, body: bytes, receipt: str | None = None) -> bytes:
    headers = {"destination": destination}
    if receipt is not None:
        headers["receipt"] = receipt
    return encode_frame(Frame("SEND", headers, body), "1.2")


# -- WebSocket ----------------------------------------------------------------


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked client WebSocket frame."""
    key = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    mask = (key * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(size, "big")
    return header + key + masked


def ws_close_frame(code: int = 1000) -> bytes:
    return ws_frame(struct.pack("!H", code), 0x8)


def ws_handshake(port: int, rcvbuf: int | None = None, path: str = "/ws/chat",
                 extra_headers: str = "") -> tuple[socket.socket, int, bytes]:
    """Open a WebSocket; returns the socket, the HTTP status and bytes read past the head."""
    sock = open_socket(port, rcvbuf)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: v12.stomp\r\n{extra_headers}\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    status_line, _, rest = head.partition(b"\r\n")
    status = int(status_line.split()[1])
    return sock, status, head.partition(b"\r\n\r\n")[2]


class WebSocketReader:
    """Decodes unmasked server frames: STOMP from data messages, pongs and closes counted."""

    def __init__(self, sock: socket.socket, initial: bytes = b"") -> None:
        self.sock = sock
        self.buffer = bytearray(initial)
        self.stomp = StompReader(sock)
        self.pongs = 0
        self.closes: list[int] = []

    def feed(self, data: bytes) -> None:
        self.buffer += data
        buf = self.buffer
        while len(buf) >= 2:
            size = buf[1] & 0x7F
            offset = 2
            if size == 126:
                if len(buf) < 4:
                    return
                (size,) = struct.unpack("!H", buf[2:4])
                offset = 4
            elif size == 127:
                if len(buf) < 10:
                    return
                (size,) = struct.unpack("!Q", buf[2:10])
                offset = 10
            if len(buf) < offset + size:
                return
            opcode = buf[0] & 0x0F
            payload = bytes(buf[offset : offset + size])
            del buf[: offset + size]
            if opcode in (0x0, 0x1, 0x2):
                self.stomp.feed(payload)
            elif opcode == 0xA:
                self.pongs += 1
            elif opcode == 0x8:
                self.closes.append(struct.unpack("!H", payload[:2])[0] if payload else 0)

    def until(self, command: str, timeout: float = 15.0) -> Frame:
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        self.feed(b"")
        while time.monotonic() < deadline:
            for index, frame in enumerate(self.stomp.frames):
                if frame.command == command:
                    del self.stomp.frames[: index + 1]
                    return frame
            data = self.sock.recv(1 << 16)
            if not data:
                raise AssertionError(f"closed before {command}; got {self.stomp.frames}")
            self.feed(data)
        raise AssertionError(f"no {command} within {timeout} s")


def ws_stomp_connect(port: int, rcvbuf: int | None = None) -> tuple[socket.socket, WebSocketReader]:
    """A raw STOMP-over-WebSocket connection, CONNECTED."""
    sock, status, rest = ws_handshake(port, rcvbuf)
    assert status == 101, status
    reader = WebSocketReader(sock, rest)
    sock.sendall(ws_frame(encode_frame(Frame("CONNECT", {"accept-version": "1.2", "host": "x",
                                                         "heart-beat": "0,0"}))))
    reader.until("CONNECTED")
    return sock, reader
