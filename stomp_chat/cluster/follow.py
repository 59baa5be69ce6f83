"""Following a chat room's channel: every numbered message once, in seq order.

A server listens to a room's channel only while it has local subscribers
for it. When it starts following, it reads the room's counter (the
*baseline*) before it subscribes; messages numbered after the baseline but
published before Redis confirmed the subscription are filled from the
room's recent list in Redis, together with those that arrived meanwhile,
in seq order and each once. A subscription lost with its connection is
filled the same way once it is back, and a seq that skips ahead on the
channel triggers a fill too. Only what the recent list no longer holds
(more than its size missed) stays a gap; history and ``since-seq``
recovery read such messages from the database.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from stomp_chat.cluster.envelope import Record, decode_envelope

log = Logger()

#: The most records held per room while a fill is under way; beyond it the
#: oldest are delivered at once, the fill notwithstanding.
MAX_HELD = 10_000


def bodies_of(records: list[bytes]) -> list[bytes]:
    """The bodies of a recent list's records, oldest first; malformed ones are skipped."""
    bodies = []
    for raw in records:
        try:
            bodies.append(decode_envelope(raw)[4])
        except ValueError:
            continue
    return bodies


class RecentUnavailable(Exception):
    """The recent list cannot be read now (the commands link is down): fill later."""


class FollowedRoom:
    """One followed room channel: holds, fills and orders its numbered records."""

    def __init__(
        self,
        key: str,
        room_id: int,
        deliver: Callable[[str, Record], object],
        fetch_recent: Callable[[int], Deferred[list[bytes]]],
    ) -> None:
        self.key = key
        self.room_id = room_id
        self._deliver = deliver
        self._fetch_recent = fetch_recent
        #: The highest seq delivered here (or the baseline), None until it is read.
        self.delivered_through: int | None = None
        #: Whether Redis has confirmed the subscription (and the fill is done).
        self.live = False
        self._confirmed = False
        self._filling = False
        #: A fill that waits for the commands link (see resume).
        self._fill_pending = False
        self._held: dict[int, Record] = {}
        #: Records dropped because they were delivered already.
        self.duplicates = 0
        #: Records delivered from the recent list rather than the channel.
        self.filled = 0

    def start(self, baseline: int) -> None:
        """The room's counter as read before subscribing: deliver what comes after it."""
        if self.delivered_through is None:
            self.delivered_through = baseline

    def confirmed(self) -> None:
        """Redis confirmed the subscription: fill what was missed, then go live."""
        self._confirmed = True
        self._fill()

    def lost(self) -> None:
        """The subscription went with its connection: hold until it is confirmed again."""
        self._confirmed = False
        self.live = False

    def resume(self) -> None:
        """The commands link is back: run the fill that waited for it."""
        if self._fill_pending:
            self._fill_pending = False
            self._fill()

    def offer(self, record: Record) -> None:
        """A numbered record arrived on the channel."""
        seq = record[3]
        through = self.delivered_through
        if seq is None or through is None:
            return
        if seq <= through:
            self.duplicates += 1
            return
        if not self.live:
            self._hold(seq, record)
            return
        if seq == through + 1:
            self.delivered_through = seq
            self._deliver(self.key, record)
            return
        self._hold(seq, record)  # seqs skipped: they may be in the recent list
        self._fill()

    def _hold(self, seq: int, record: Record) -> None:
        self._held[seq] = record
        if len(self._held) > MAX_HELD:
            oldest = min(self._held)
            log.warn("room {room}: too many messages held during a fill; delivering "
                     "seq {seq} at once", room=self.room_id, seq=oldest)
            self.delivered_through = oldest
            self._deliver(self.key, self._held.pop(oldest))

    def _fill(self) -> None:
        if self._filling or self.delivered_through is None:
            return
        self._filling = True
        self._fetch_recent(self.room_id).addBoth(self._fetched)

    def _fetched(self, result: list[bytes] | Failure) -> None:
        self._filling = False
        if isinstance(result, Failure) and result.check(RecentUnavailable):
            self._fill_pending = True  # keep holding; resume() fills
            return
        through = self.delivered_through
        assert through is not None
        if isinstance(result, Failure):
            covered = True  # said once, here
            log.warn("room {room}: cannot read its recent messages from Redis: {error}; "
                     "delivering what arrived", room=self.room_id,
                     error=result.getErrorMessage())
        #: Whether the recent list reaches back to what was delivered: a jump in seq
        #: then is the room's own (a counter restarted past the database's floor).
        covered = False
        if not isinstance(result, Failure):
            for raw in result:
                try:
                    record = decode_envelope(raw)
                except ValueError:
                    continue
                seq = record[3]
                if seq is not None and seq <= through + 1:
                    covered = True
                if seq is not None and seq > through and seq not in self._held:
                    self._held[seq] = record
                    self.filled += 1
        held, self._held = self._held, {}
        for seq in sorted(held):
            if seq <= (self.delivered_through or 0):
                self.duplicates += 1
                continue
            if not covered and seq > (self.delivered_through or 0) + 1:
                log.warn("room {room}: seqs {first} to {last} are no longer in Redis's recent "
                         "list; history has them", room=self.room_id,
                         first=(self.delivered_through or 0) + 1, last=seq - 1)
            self.delivered_through = seq
            self._deliver(self.key, held[seq])
        self.live = self._confirmed
