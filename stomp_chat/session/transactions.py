"""A connection's open STOMP transactions, and the bounds on what they hold.

Frames sent inside a transaction wait here until COMMIT (which applies them)
or ABORT (which forgets them). Both how many transactions may be open and how
many bytes they may hold together are bounded, since each grows with what
one client sends.
"""

from __future__ import annotations

from collections.abc import Iterator

from stomp_chat.errors import ProtocolError
from stomp_chat.stomp.frame import Frame

#: What each held frame counts for beyond its own bytes (the objects that
#: hold it), so that many tiny frames cannot hide under the byte bound.
FRAME_OVERHEAD = 256


class Transactions:
    """The open transactions of one connection, by name."""

    __slots__ = ("_open", "held_bytes", "max_bytes", "max_open")

    def __init__(self, max_open: int, max_bytes: int) -> None:
        self.max_open = max_open
        self.max_bytes = max_bytes
        self._open: dict[str, list[Frame]] = {}
        #: What the open transactions hold, as ``frame_size`` counts it.
        self.held_bytes = 0

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[str]:
        return iter(self._open)

    def __contains__(self, name: object) -> bool:
        return name in self._open

    def begin(self, name: str) -> None:
        if name in self._open:
            raise ProtocolError("transaction already begun", f"transaction {name!r} is active")
        if len(self._open) >= self.max_open:
            raise ProtocolError(
                "too many transactions",
                f"at most {self.max_open} transactions may be open at once on one connection",
            )
        self._open[name] = []

    def hold(self, frame: Frame) -> bool:
        """Keep ``frame`` in the transaction it names; False when it names none."""
        name = frame.headers.get("transaction")
        if name is None:
            return False
        frames = self._open.get(name)
        if frames is None:
            raise ProtocolError("unknown transaction", f"transaction {name!r} was not begun")
        size = frame_size(frame)
        if self.held_bytes + size > self.max_bytes:
            raise ProtocolError(
                "transaction too large",
                f"open transactions may hold at most {self.max_bytes} bytes on one connection",
            )
        self.held_bytes += size
        frames.append(frame)
        return True

    def take(self, name: str) -> list[Frame]:
        """End a transaction (COMMIT or ABORT) and hand back what it held."""
        frames = self._open.pop(name, None)
        if frames is None:
            raise ProtocolError("unknown transaction", f"transaction {name!r} was not begun")
        self.held_bytes -= sum(frame_size(frame) for frame in frames)
        return frames

    def clear(self) -> None:
        self._open.clear()
        self.held_bytes = 0


def frame_size(frame: Frame) -> int:
    """What a held frame counts against the byte bound: headers, body and overhead."""
    size = FRAME_OVERHEAD + len(frame.command) + len(frame.body)
    for name, value in frame.headers.items():
        size += len(name) + len(value)
    return size
