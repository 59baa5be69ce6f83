"""Redis's wire protocol (RESP2) for the relay's links, without a reactor turn per reply.

txredisapi's own reader handles every bulk string that has more data behind
it by pausing the connection and going on in the next reactor turn: a
pub/sub message (three bulk strings) costs three reactor turns and six
epoll changes, which under load was most of what cluster mode added per
chat message. This reader parses everything that has arrived in one pass
and hands back complete replies, with the values txredisapi's reader gives
(the links plug it in, see stomp_chat.cluster.links). Commands are encoded
here too, as txredisapi encodes them, with less work per argument.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: The longest line (a reply's type and length) accepted before the connection
#: is found broken; bulk strings are not lines and have no such limit.
MAX_LINE = 16384


class ProtocolBroken(Exception):
    """What arrived is not RESP2: the connection cannot be read on."""


class _Incomplete(Exception):
    """The reply being parsed has not fully arrived; ``need`` bytes would hold it."""

    def __init__(self, need: int) -> None:
        self.need = need


class RespReader:
    """Turns the bytes of a connection into complete replies, in order.

    ``convert`` turns a bulk string into its value (txredisapi's number and
    charset conversions), ``error`` makes the value of an error reply and
    ``invalid`` that of a reply whose number cannot be read.
    """

    def __init__(
        self,
        convert: Callable[[bytes], Any],
        error: Callable[[str], Any],
        invalid: Callable[[str], Any],
    ) -> None:
        self._convert = convert
        self._error = error
        self._invalid = invalid
        self._chunks: list[bytes] = []
        self._buffered = 0
        #: How many buffered bytes the reply at the front needs before parsing again.
        self._need = 0

    def feed(self, data: bytes) -> list[Any]:
        """Take what arrived; return the replies it completes (maybe none)."""
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
        if self._buffered < self._need or not self._chunks:
            return []
        buffer = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        replies: list[Any] = []
        pos, end = 0, len(buffer)
        while pos < end:
            try:
                reply, pos = self._parse(buffer, pos)
            except _Incomplete as incomplete:
                self._need = incomplete.need - pos
                break
            replies.append(reply)
        else:
            self._need = 0
        rest = buffer[pos:] if pos else buffer
        self._chunks = [rest] if rest else []
        self._buffered = len(rest)
        return replies

    def _parse(self, buffer: bytes, pos: int) -> tuple[Any, int]:
        """One reply starting at ``pos``, and the position after it."""
        eol = buffer.find(b"\r\n", pos)
        if eol < 0:
            if len(buffer) - pos > MAX_LINE:
                raise ProtocolBroken(f"a reply line longer than {MAX_LINE} bytes")
            raise _Incomplete(len(buffer) + 1)
        kind = buffer[pos]
        try:
            number = int(buffer[pos + 1 : eol]) if kind in _COUNTED else 0
        except ValueError:
            return self._invalid(
                f"Cannot convert data '{buffer[pos + 1 : eol].decode()}' to integer"
            ), eol + 2
        if kind == 36:  # $ bulk string
            if number < 0:
                return None, eol + 2
            stop = eol + 2 + number
            if stop + 2 > len(buffer):
                raise _Incomplete(stop + 2)
            return self._convert(buffer[eol + 2 : stop]), stop + 2
        if kind == 42:  # * array
            if number < 0:
                return None, eol + 2
            return self._items(buffer, eol + 2, number)
        if kind == 58:  # : integer
            return number, eol + 2
        if kind == 43:  # + status
            return buffer[pos + 1 : eol].decode(), eol + 2
        if kind == 45:  # - error
            text = buffer[pos + 1 : eol].decode()
            return self._error(text[4:] if text[:4] == "ERR" else text), eol + 2
        raise ProtocolBroken(f"a reply of unknown type {chr(kind)!r}")

    def _items(self, buffer: bytes, pos: int, count: int) -> tuple[list[Any], int]:
        """An array's ``count`` items from ``pos``; bulk strings (a pub/sub message is
        three) are read here without a call each."""
        convert, end = self._convert, len(buffer)
        items: list[Any] = []
        for _ in range(count):
            if pos < end and buffer[pos] == 36:
                eol = buffer.find(b"\r\n", pos)
                if eol > 0:
                    try:
                        length = int(buffer[pos + 1 : eol])
                    except ValueError:
                        length = -1  # the general path below says what is wrong
                    if length >= 0:
                        stop = eol + 2 + length
                        if stop + 2 > end:
                            raise _Incomplete(stop + 2)
                        items.append(convert(buffer[eol + 2 : stop]))
                        pos = stop + 2
                        continue
            item, pos = self._parse(buffer, pos)
            items.append(item)
        return items, pos


#: Reply types whose line is a number: bulk string, array and integer.
_COUNTED = frozenset(b"$*:")


#: Encoded text arguments that recur (key names, channels), ready to be joined into a
#: command; and the short ones only, so that unique text does not crowd them out.
_encoded_text: dict[str, bytes] = {}
ENCODED_KEPT = 4096
ENCODED_LONGEST = 256


def encode_command(args: tuple[Any, ...], encode_other: Callable[[Any], bytes]) -> bytes:
    """A command as RESP2 bytes: the same bytes txredisapi writes for ``args``.

    Bytes, text and integers are encoded here (short text once, then kept);
    anything else (floats, booleans) by ``encode_other``, txredisapi's own
    encoder, so that nothing changes.
    """
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    kept = _encoded_text
    for arg in args:
        kind = type(arg)
        if kind is bytes:
            append(b"$%d\r\n%s\r\n" % (len(arg), arg))
        elif kind is int:
            value = b"%d" % arg
            append(b"$%d\r\n%s\r\n" % (len(value), value))
        elif kind is str:
            encoded = kept.get(arg)
            if encoded is None:
                value = arg.encode()
                encoded = b"$%d\r\n%s\r\n" % (len(value), value)
                if len(arg) <= ENCODED_LONGEST:
                    if len(kept) >= ENCODED_KEPT:
                        kept.clear()
                    kept[arg] = encoded
            append(encoded)
        else:
            value = encode_other(arg)
            append(b"$%d\r\n%s\r\n" % (len(value), value))
    return b"".join(parts)
