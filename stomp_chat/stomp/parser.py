"""The STOMP frame parser: a LineReceiver-style state machine.

Line mode reads the command and the header lines, raw mode reads the body
(exactly ``content-length`` octets, or up to the first NUL), then it is back to
line mode. It differs from ``twisted.protocols.basic.LineReceiver`` in two
ways a STOMP server needs: it loops instead of recursing when one read holds
many frames (``LineReceiver.setLineMode(rest)`` recurses once per frame), and a
limit that is exceeded raises ``FrameError`` so the session can send ERROR
before closing, where ``lineLengthExceeded`` just drops the connection.

It decides nothing about sockets: bytes go in through ``feed``, frames come out
through the ``frame_received`` callback, in order, and are tested byte by byte.
"""

from __future__ import annotations

from collections.abc import Callable

from stomp_chat.stomp.frame import (
    UNESCAPED_COMMANDS,
    V1_0,
    Frame,
    FrameError,
    unescape_header,
)

DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024 + 64 * 1024
DEFAULT_MAX_HEADERS = 64
DEFAULT_MAX_HEADER_LENGTH = 8 * 1024

#: More digits than any frame size this parser can accept.
_MAX_LENGTH_DIGITS = 18

_LINE_MODE = 0
_BODY_MODE = 1


class FrameParser:
    """Turns a byte stream into STOMP frames.

    ``version`` selects header unescaping; the session sets it once CONNECT
    has been negotiated (CONNECT itself is never escaped).
    """

    __slots__ = (
        "_buffer",
        "_content_length",
        "_frame",
        "_frame_start",
        "_mode",
        "_stopped",
        "frame_received",
        "max_frame_size",
        "max_header_length",
        "max_headers",
        "version",
    )

    def __init__(
        self,
        frame_received: Callable[[Frame], object],
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_headers: int = DEFAULT_MAX_HEADERS,
        max_header_length: int = DEFAULT_MAX_HEADER_LENGTH,
    ) -> None:
        self.frame_received = frame_received
        self.max_frame_size = max_frame_size
        self.max_headers = max_headers
        self.max_header_length = max_header_length
        self.version = V1_0
        self._buffer = bytearray()
        self._mode = _LINE_MODE
        self._frame: Frame | None = None
        self._content_length: int | None = None
        self._frame_start = 0
        self._stopped = False

    @property
    def partial(self) -> bool:
        """Whether part of a frame has arrived and the rest has not."""
        return self._mode == _BODY_MODE or bool(self._buffer)

    def stop(self) -> None:
        """Ignore every further byte (after ERROR or DISCONNECT)."""
        self._stopped = True
        self._buffer.clear()
        self._mode = _LINE_MODE
        self._frame = None

    def feed(self, data: bytes) -> None:
        """Consume bytes, calling ``frame_received`` for every complete frame.

        Raises ``FrameError`` at the first invalid byte; frames completed
        before it have already been delivered.
        """
        if self._stopped:
            return
        buf = self._buffer
        buf += data
        pos = 0
        try:
            while not self._stopped:
                if self._mode == _LINE_MODE:
                    pos = self._skip_heartbeats(buf, pos)
                    if pos == len(buf):
                        break
                    new_pos = self._read_headers(buf, pos)
                else:
                    new_pos = self._read_body(buf, pos)
                if new_pos < 0:
                    break
                pos = new_pos
        finally:
            if self._stopped:
                buf.clear()
            elif pos:
                del buf[:pos]
                self._frame_start -= pos

    @staticmethod
    def _skip_heartbeats(buf: bytearray, pos: int) -> int:
        """Skip the EOLs (heart-beats) and stray NULs between frames."""
        end = len(buf)
        while pos < end:
            byte = buf[pos]
            if byte == 10 or byte == 0:
                pos += 1
            elif byte == 13:
                if pos + 1 == end:
                    break
                if buf[pos + 1] != 10:
                    raise FrameError("carriage return not followed by line feed")
                pos += 2
            else:
                break
        return pos

    def _read_headers(self, buf: bytearray, pos: int) -> int:
        """Read a command and its header block; -1 when more bytes are needed."""
        end = len(buf)
        self._frame_start = pos
        block_end = buf.find(b"\n\n", pos)
        crlf_end = buf.find(b"\n\r\n", pos, block_end if block_end >= 0 else end)
        if crlf_end >= 0:
            block_end, skip = crlf_end, 3
        else:
            skip = 2
        if block_end < 0:
            self._check_partial_headers(buf, pos)
            return -1
        if block_end + skip - pos > self.max_frame_size:
            raise FrameError(f"frame exceeds the maximum size of {self.max_frame_size} bytes")
        try:
            block = buf[pos:block_end].decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError("frame headers are not valid UTF-8") from None
        frame = self._parse_block(block)
        self._content_length = self._body_length(frame)
        self._frame = frame
        self._mode = _BODY_MODE
        return block_end + skip

    def _check_partial_headers(self, buf: bytearray, pos: int) -> None:
        """Fail early on a header block that can only grow past a limit."""
        pending = len(buf) - pos
        if pending > self.max_frame_size:
            raise FrameError(f"frame exceeds the maximum size of {self.max_frame_size} bytes")
        last_line_start = buf.rfind(b"\n", pos) + 1 or pos
        line_length = len(buf) - last_line_start
        if buf[-1] == 13:  # the CR of a CRLF whose LF has not arrived yet
            line_length -= 1
        if line_length > self.max_header_length:
            raise FrameError(
                f"header line exceeds the maximum length of {self.max_header_length} bytes"
            )
        if buf.count(b"\n", pos) > self.max_headers + 1:
            raise FrameError(f"frame has more than {self.max_headers} headers")

    def _parse_block(self, block: str) -> Frame:
        lines = block.split("\n")
        if len(lines) - 1 > self.max_headers:
            raise FrameError(f"frame has more than {self.max_headers} headers")
        command = _strip_cr(lines[0])
        if not command or "\r" in command:
            raise FrameError("invalid command line")
        escaped = command not in UNESCAPED_COMMANDS and self.version != V1_0
        headers: dict[str, str] = {}
        max_length = self.max_header_length
        for raw in lines[1:]:
            line = _strip_cr(raw)
            # The limit is in bytes; a character is 1 to 4 of them.
            if len(line) > max_length or (
                len(line) * 4 > max_length and len(line.encode("utf-8")) > max_length
            ):
                raise FrameError(
                    f"header line exceeds the maximum length of {max_length} bytes"
                )
            name, sep, value = line.partition(":")
            if not sep or not name:
                raise FrameError(f"malformed header line {line[:80]!r}")
            if "\r" in line:
                raise FrameError("carriage return not followed by line feed")
            if escaped:
                name = unescape_header(name, self.version)
                value = unescape_header(value, self.version)
            if name not in headers:
                headers[name] = value
        return Frame(command, headers)

    def _body_length(self, frame: Frame) -> int | None:
        raw = frame.headers.get("content-length")
        if raw is None:
            return None
        if not raw.isdigit() or not raw.isascii():
            raise FrameError(f"invalid content-length {raw[:40]!r}", frame)
        if len(raw) > _MAX_LENGTH_DIGITS:  # int() refuses past 4,300 digits anyway
            raise FrameError(
                f"frame exceeds the maximum size of {self.max_frame_size} bytes", frame
            )
        length = int(raw)
        if length > self.max_frame_size:
            raise FrameError(
                f"frame exceeds the maximum size of {self.max_frame_size} bytes", frame
            )
        return length

    def _read_body(self, buf: bytearray, pos: int) -> int:
        """Read the body and its NUL; -1 when more bytes are needed."""
        length = self._content_length
        if length is not None:
            nul = pos + length
            if nul >= len(buf):
                self._check_body_size(len(buf))
                return -1
            if buf[nul] != 0:
                raise FrameError(
                    "frame body is not terminated by NUL after content-length bytes", self._frame
                )
        else:
            nul = buf.find(b"\x00", pos)
            if nul < 0:
                self._check_body_size(len(buf))
                return -1
        self._check_body_size(nul)
        frame = self._frame
        assert frame is not None
        frame.body = bytes(buf[pos:nul])
        self._frame = None
        self._mode = _LINE_MODE
        self.frame_received(frame)
        return nul + 1

    def _check_body_size(self, upto: int) -> None:
        if upto - self._frame_start > self.max_frame_size:
            raise FrameError(
                f"frame exceeds the maximum size of {self.max_frame_size} bytes", self._frame
            )


def _strip_cr(line: str) -> str:
    return line[:-1] if line.endswith("\r") else line
