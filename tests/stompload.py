"""Raw-socket STOMP clients that keep publishing or reading, for tests under load.

Plain sockets and threads, so a test sees exactly which RECEIPT, MESSAGE and
ERROR frames reached the client before the server went away.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Frame:
    command: str
    headers: dict[str, str]
    body: bytes


def _parse(raw: bytes) -> Frame:
    head, _, body = raw.partition(b"\n\n")
    lines = head.decode("utf-8").split("\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name, value)
    return Frame(lines[0], headers, body)


def encode(command: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [command, *(f"{name}:{value}" for name, value in headers.items())]
    return ("\n".join(lines) + "\n\n").encode() + body + b"\x00"


class RawStompClient:
    """One STOMP 1.2 connection over TCP; a thread records every frame it receives."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.frames: list[Frame] = []
        self.closed = threading.Event()
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.send("CONNECT", {"accept-version": "1.2", "host": "/", "heart-beat": "0,0"})
        if not self._connected.wait(10):
            raise AssertionError("no CONNECTED")

    def send(self, command: str, headers: dict[str, str], body: bytes = b"") -> bool:
        """Send a frame; False once the server has closed the connection."""
        try:
            self.sock.sendall(encode(command, headers, body))
            return True
        except OSError:
            return False

    def _read(self) -> None:
        buffer = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                buffer += data
                while b"\x00" in buffer:
                    raw, buffer = buffer.split(b"\x00", 1)
                    raw = raw.lstrip(b"\r\n")
                    if not raw:
                        continue
                    frame = _parse(raw)
                    with self._lock:
                        self.frames.append(frame)
                    if frame.command == "CONNECTED":
                        self._connected.set()
        except OSError:
            pass
        finally:
            self.closed.set()

    def of(self, command: str) -> list[Frame]:
        with self._lock:
            return [frame for frame in self.frames if frame.command == command]

    @property
    def receipts(self) -> set[str]:
        return {frame.headers["receipt-id"] for frame in self.of("RECEIPT")}

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass
class Publisher:
    """Sends TALK messages to a room as fast as receipts allow, each with a receipt."""

    port: int
    sender_id: int
    room_id: int
    window: int = 20
    sent: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = RawStompClient(self.port)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop = threading.Event()

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def _run(self) -> None:
        number = 0
        while not self._stop.is_set() and not self.client.closed.is_set():
            if len(self.sent) - len(self.client.receipts) >= self.window:
                time.sleep(0.001)
                continue
            text = f"from {self.sender_id} #{number}"
            body = json.dumps({"type": "TALK", "roomId": self.room_id,
                               "senderId": self.sender_id, "detailMessage": text}).encode()
            if not self.client.send("SEND", {"destination": "/app/message", "receipt": text,
                                             "content-type": "application/json"}, body):
                break
            self.sent.append(text)
            number += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def subscriber(port: int, room_id: int) -> RawStompClient:
    """A connection subscribed to a chat room's topic."""
    client = RawStompClient(port)
    client.send("SUBSCRIBE", {"id": "room", "destination": f"/topic/chat/room/{room_id}",
                              "receipt": "subscribed"})
    deadline = time.monotonic() + 10
    while "subscribed" not in client.receipts:
        if time.monotonic() > deadline:
            raise AssertionError("no receipt for SUBSCRIBE")
        time.sleep(0.01)
    return client


def chat_texts(client: RawStompClient) -> list[str]:
    """The detailMessage of every chat MESSAGE a client received, in order."""
    texts = []
    for frame in client.of("MESSAGE"):
        payload: Any = json.loads(frame.body)
        texts.append(payload["detailMessage"])
    return texts
