"""RECEIPTs in the order of their frames.

A RECEIPT promises that every earlier frame was handled, so a receipt behind
a slower frame (a durable SEND to ``/app``) waits for it. A frame without a
receipt of its own still holds back the receipts of later frames.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

#: What a waiting frame's Deferred fires with when no RECEIPT is due (its
#: failure was reported on /user/queue/errors instead).
NOT_RECEIPTED = object()

#: What a waiting frame's Deferred fires with when the frame was refused after
#: later frames were handled: no RECEIPT is sent for it nor for any frame after
#: it (the session closes with an ERROR instead).
REFUSED = object()

_PENDING = "pending"
_READY = "ready"
_SKIPPED = "skipped"
_REFUSED = "refused"


class OrderedReceipts:
    """Sends receipts through ``send`` in frame order; calls ``drained`` when none wait.

    What waits grows with what the client sends behind a slow frame, so it is
    bounded: at ``limit`` entries ``backlog(True)`` asks the caller to stop
    reading, and once half of them are gone ``backlog(False)`` lets it go on.
    """

    __slots__ = ("_entries", "_send", "backlog", "drained", "full", "limit")

    def __init__(
        self,
        send: Callable[[str], None],
        drained: Callable[[], None],
        *,
        limit: int = 10_000,
        backlog: Callable[[bool], None] = lambda full: None,
    ) -> None:
        self._send = send
        self.drained = drained
        self.limit = limit
        self.backlog = backlog
        #: Whether the caller was told to stop reading.
        self.full = False
        #: Receipts waiting for an earlier, slower frame: [receipt-id, status].
        self._entries: deque[list[Any]] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, receipt_id: str | None, waiting: Deferred[Any] | object | None = None) -> None:
        """Answer a frame: now, or once ``waiting`` (a Deferred) fires.

        ``waiting`` may also be ``NOT_RECEIPTED``: the frame was refused
        without closing the connection, and its receipt is not sent.
        """
        # Deferred is an ABC: isinstance costs ~0.1 µs, and most frames wait for nothing.
        if waiting is not None and isinstance(waiting, Deferred):
            entry: list[Any] = [receipt_id, _PENDING]
            self._entries.append(entry)
            self._check_full()
            waiting.addBoth(self._ready, entry)
            return
        if receipt_id is None:
            return
        status = _SKIPPED if waiting is NOT_RECEIPTED else _READY
        if self._entries:
            self._entries.append([receipt_id, status])
            self._check_full()
        elif status is _READY:
            self._send(receipt_id)

    def _check_full(self) -> None:
        if not self.full and len(self._entries) >= self.limit:
            self.full = True
            self.backlog(True)

    def clear(self) -> None:
        self._entries.clear()
        self.full = False

    def _ready(self, result: object, entry: list[Any]) -> None:
        if result is REFUSED:
            entry[1] = _REFUSED
        else:
            entry[1] = _SKIPPED if result is NOT_RECEIPTED else _READY
        entries = self._entries
        while entries and entries[0][1] is not _PENDING:
            receipt_id, status = entries.popleft()
            if status is _REFUSED:
                entries.clear()  # what came after it gets no RECEIPT either
                break
            if receipt_id is not None and status is _READY:
                self._send(receipt_id)
        if self.full and len(entries) <= self.limit // 2:
            self.full = False
            self.backlog(False)
        if not entries:
            self.drained()
