"""STOMP frames and their wire encoding, per protocol version.

Pure data and functions: nothing here knows about sockets, sessions or the
broker, so every other layer can build and test frames freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field

V1_0 = "1.0"
V1_1 = "1.1"
V1_2 = "1.2"
SUPPORTED_VERSIONS = (V1_0, V1_1, V1_2)

#: Commands whose headers are never escaped, whatever the version.
UNESCAPED_COMMANDS = frozenset({"CONNECT", "STOMP", "CONNECTED"})
#: The only frames allowed to carry a body.
BODY_COMMANDS = frozenset({"SEND", "MESSAGE", "ERROR"})

CLIENT_COMMANDS = frozenset(
    {
        "CONNECT",
        "STOMP",
        "SEND",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "ACK",
        "NACK",
        "BEGIN",
        "COMMIT",
        "ABORT",
        "DISCONNECT",
    }
)


class FrameError(Exception):
    """Bytes that are not a valid STOMP frame: the connection cannot go on.

    ``frame`` is the frame whose body broke a rule, when its headers were
    already read, so the ERROR can still name its ``receipt``.
    """

    def __init__(self, message: str, frame: Frame | None = None) -> None:
        super().__init__(message)
        self.frame = frame


@dataclass(slots=True)
class Frame:
    """One STOMP frame. Repeated headers were already resolved: the first wins."""

    command: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


_ESCAPE_1_1 = str.maketrans({"\\": "\\\\", "\n": "\\n", ":": "\\c"})
_ESCAPE_1_2 = str.maketrans({"\\": "\\\\", "\n": "\\n", ":": "\\c", "\r": "\\r"})
_UNESCAPES = {
    V1_1: {"n": "\n", "c": ":", "\\": "\\"},
    V1_2: {"n": "\n", "c": ":", "\\": "\\", "r": "\r"},
}


def escape_header(value: str, version: str) -> str:
    """Escape a header name or value for the wire (a no-op in STOMP 1.0)."""
    if version == V1_2:
        return value.translate(_ESCAPE_1_2)
    if version == V1_1:
        return value.translate(_ESCAPE_1_1)
    return value


def unescape_header(value: str, version: str) -> str:
    """Undo header escaping; an undefined escape sequence is a FrameError."""
    if version == V1_0 or "\\" not in value:
        return value
    table = _UNESCAPES[version]
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        if i + 1 >= n:
            raise FrameError("header ends with an incomplete escape sequence")
        replacement = table.get(value[i + 1])
        if replacement is None:
            raise FrameError(f"undefined escape sequence \\{value[i + 1]} in header")
        out.append(replacement)
        i += 2
    return "".join(out)


def encode_headers(command: str, headers: dict[str, str], version: str) -> bytes:
    """The command line and header lines, without the blank line that ends them."""
    if command in UNESCAPED_COMMANDS:
        version = V1_0
    lines = [command]
    for name, value in headers.items():
        lines.append(f"{escape_header(name, version)}:{escape_header(value, version)}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def encode_frame(frame: Frame, version: str = V1_2) -> bytes:
    """Serialize a frame; bodies get an exact ``content-length``."""
    headers = frame.headers
    if frame.body or frame.command in BODY_COMMANDS:
        headers = dict(headers)
        headers["content-length"] = str(len(frame.body))
    return encode_headers(frame.command, headers, version) + b"\n" + frame.body + b"\x00"


def negotiate_version(accept_version: str | None) -> str | None:
    """The highest version both sides speak; ``None`` when there is none.

    A client that sends no ``accept-version`` speaks 1.0.
    """
    if accept_version is None:
        return V1_0
    offered = {v.strip() for v in accept_version.split(",")}
    for version in reversed(SUPPORTED_VERSIONS):
        if version in offered:
            return version
    return None


#: The longest heart-beat interval a peer may ask for (about 24 days): larger
#: numbers are no interval anyone means, and overflow a float past 308 digits.
MAX_HEARTBEAT_MS = 2**31 - 1


def parse_heartbeat(value: str | None) -> tuple[int, int]:
    """Parse a ``heart-beat`` header ``cx,cy`` (milliseconds); absent means 0,0."""
    if value is None:
        return (0, 0)
    parts = value.split(",")
    if len(parts) != 2:
        raise FrameError(
            f"invalid heart-beat header {value[:40]!r}: expected two integers cx,cy"
        )
    try:
        cx, cy = int(parts[0]), int(parts[1])
    except ValueError:
        raise FrameError(
            f"invalid heart-beat header {value[:40]!r}: expected two integers cx,cy"
        ) from None
    if cx < 0 or cy < 0:
        raise FrameError(f"invalid heart-beat header {value[:40]!r}: negative interval")
    if cx > MAX_HEARTBEAT_MS or cy > MAX_HEARTBEAT_MS:
        raise FrameError(
            f"invalid heart-beat header {value[:40]!r}: intervals are at most "
            f"{MAX_HEARTBEAT_MS} ms"
        )
    return (cx, cy)


def negotiate_heartbeat(client: tuple[int, int], server: tuple[int, int]) -> tuple[int, int]:
    """Return (client->server, server->client) intervals in ms, 0 meaning none.

    The spec's rule: each direction uses the larger of what the sender can do
    and what the receiver wants, and is off if either side says 0.
    """
    cx, cy = client
    sx, sy = server
    incoming = 0 if cx == 0 or sy == 0 else max(cx, sy)
    outgoing = 0 if sx == 0 or cy == 0 else max(sx, cy)
    return incoming, outgoing
