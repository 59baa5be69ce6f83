"""In-memory fakes for the unit tests: a recording FrameTransport and a STOMP client.

Nothing here opens a socket or touches the global reactor: time is a
``twisted.internet.task.Clock`` and the server's output is parsed back with the
project's own ``FrameParser``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from stomp_chat.app.routes import AppRouter
from stomp_chat.broker import Broker
from stomp_chat.heartbeat import HeartbeatMonitor
from stomp_chat.identity import ConnectionInfo
from stomp_chat.interceptors import Interceptor
from stomp_chat.session import (
    AnonymousAuthenticator,
    AuthenticationInterceptor,
    Authenticator,
    ServerContext,
    SessionSettings,
    StompSession,
)
from stomp_chat.stomp.frame import V1_0, Frame, encode_frame
from stomp_chat.stomp.parser import FrameParser


class RecordingTransport:
    """A FrameTransport that keeps every write and remembers being closed."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        #: Whether the session asked to stop reading, and how often.
        self.reading_paused = False
        self.pauses = 0
        #: Writes that happened after ``close()`` was called.
        self.writes_after_close: list[bytes] = []

    def write(self, data: bytes) -> None:
        if self.closed:
            self.writes_after_close.append(data)
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading_paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading_paused = False

    @property
    def reading_held(self) -> bool:
        return self.reading_paused

    def value(self) -> bytes:
        return b"".join(self.writes)


def make_context(
    *,
    clock: Clock | None = None,
    broker: Broker | None = None,
    router: AppRouter | None = None,
    authenticator: Authenticator | None = None,
    interceptors: list[Interceptor] | None = None,
    tick: float = 1.0,
    **settings: Any,
) -> ServerContext:
    """A ServerContext on a fake clock, with settings overridable by keyword.

    Authentication comes first in the chain, then ``interceptors``.
    """
    clock = clock if clock is not None else Clock()
    chain: list[Interceptor] = [
        AuthenticationInterceptor(
            authenticator if authenticator is not None else AnonymousAuthenticator()
        )
    ]
    chain.extend(interceptors or ())
    return ServerContext(
        broker if broker is not None else Broker(),
        router if router is not None else AppRouter(),
        SessionSettings(**settings),
        HeartbeatMonitor(clock, tick),
        clock,
        chain,
    )


class OutputReader:
    """Parses what a server wrote, switching to the version CONNECTED names."""

    def __init__(self, version: str = V1_0) -> None:
        self.frames: list[Frame] = []
        self.parser = FrameParser(self._on_frame, max_frame_size=64 * 1024 * 1024)
        self.parser.version = version

    def _on_frame(self, frame: Frame) -> None:
        if frame.command == "CONNECTED":
            self.parser.version = frame.headers.get("version", V1_0)
        self.frames.append(frame)

    def feed(self, data: bytes) -> None:
        self.parser.feed(data)


class Client:
    """Drives one StompSession the way a client on the wire would."""

    def __init__(self, context: ServerContext, peer: str = "test") -> None:
        self.context = context
        self.transport = RecordingTransport()
        self.session = StompSession(
            context, self.transport, ConnectionInfo(peer=peer, peer_host=peer.split(":")[0])
        )
        self._reader = OutputReader()
        self._read_upto = 0
        self._frames: list[Frame] = []
        #: The version to escape outgoing frames with (set by ``connect``).
        self.version = V1_0

    # -- sending ---------------------------------------------------------

    def send_bytes(self, data: bytes) -> None:
        self.session.data_received(data)

    def send(self, command: str, headers: dict[str, str] | None = None, body: bytes = b"",
             *, version: str | None = None) -> None:
        """Encode a frame for the session's version and feed it."""
        frame = Frame(command, dict(headers or {}), body)
        self.send_bytes(encode_frame(frame, version or self.version))

    def connect(self, version: str | None = "1.2", heartbeat: str | None = "0,0",
                command: str = "CONNECT", **headers: str) -> Frame:
        """CONNECT (``version=None`` sends no accept-version) and return CONNECTED."""
        hdrs: dict[str, str] = {}
        if version is not None:
            hdrs["accept-version"] = version
        hdrs["host"] = "localhost"
        if heartbeat is not None:
            hdrs["heart-beat"] = heartbeat
        hdrs.update(headers)
        self.send(command, hdrs)
        connected = self.next_frame()
        assert connected.command == "CONNECTED", connected
        self.version = connected.headers.get("version", "1.0")
        return connected

    # -- reading ---------------------------------------------------------

    def _pump(self) -> None:
        writes = self.transport.writes
        while self._read_upto < len(writes):
            self._reader.feed(writes[self._read_upto])
            self._read_upto += 1
        self._frames.extend(self._reader.frames)
        self._reader.frames.clear()

    def frames(self) -> list[Frame]:
        """Every frame written since the last call (heart-beats skipped)."""
        self._pump()
        frames, self._frames = self._frames, []
        return frames

    def next_frame(self) -> Frame:
        self._pump()
        assert self._frames, "the server wrote no frame"
        return self._frames.pop(0)

    def heartbeats(self) -> int:
        """How many lone-EOL writes (heart-beats) the server made so far."""
        return sum(1 for w in self.transport.writes if w in (b"\n", b"\r\n"))

    @property
    def closed(self) -> bool:
        return self.transport.closed
