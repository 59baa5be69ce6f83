"""A followed room channel: numbered records once each, in seq order, gaps filled."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed

from stomp_chat.cluster.envelope import Record, decode_envelope, encode_envelope
from stomp_chat.cluster.follow import FollowedRoom


def record(seq: int) -> bytes:
    return encode_envelope("node-a", True, {}, b"m%d" % seq, seq=seq)


class Room:
    """A FollowedRoom with a recent list the test controls and the deliveries recorded."""

    def __init__(self, recent: list[int]) -> None:
        self.recent = recent
        self.delivered: list[int] = []
        self.fetches = 0
        self.failing = False
        self.room = FollowedRoom("/topic/chat/room/1", 1, self.deliver, self.fetch)

    def deliver(self, key: str, rec: Record) -> None:
        assert rec[4] == b"m%d" % rec[3]
        self.delivered.append(rec[3] or 0)

    def fetch(self, room_id: int) -> Deferred[list[bytes]]:
        self.fetches += 1
        if self.failing:
            return fail(ConnectionError("down"))
        return succeed([record(seq) for seq in self.recent])

    def offer(self, *seqs: int) -> None:
        for seq in seqs:
            self.room.offer(decode_envelope(record(seq)))


def test_messages_published_before_the_subscription_is_confirmed_are_filled_in_order() -> None:
    """After the baseline, what the channel missed comes from the recent list and what it
    delivered meanwhile is held, so the subscriber sees every seq once, in order."""
    r = Room(recent=[1, 2, 3, 4, 5, 6])
    r.room.start(2)
    r.offer(6)  # arrived between SUBSCRIBE and its confirmation
    assert r.delivered == []
    r.room.confirmed()
    assert r.delivered == [3, 4, 5, 6]
    r.offer(6, 7)
    assert r.delivered == [3, 4, 5, 6, 7]
    assert r.room.duplicates == 1 and r.room.filled == 3


def test_a_skip_in_seq_on_a_live_channel_is_filled_from_the_recent_list() -> None:
    """A record whose seq skips ahead (its predecessors lost with a connection) makes the
    room read the recent list and deliver the missing ones first."""
    r = Room(recent=[1, 2, 3, 4])
    r.room.start(0)
    r.room.confirmed()
    r.offer(1)
    r.recent = [1, 2, 3, 4]
    r.offer(4)
    assert r.delivered == [1, 2, 3, 4]


def test_a_lost_subscription_holds_until_it_is_confirmed_again() -> None:
    """Between losing and regaining the subscription nothing is delivered; afterwards the
    missed range comes once, in order."""
    r = Room(recent=[1, 2])
    r.room.start(0)
    r.room.confirmed()
    r.offer(1, 2)
    r.room.lost()
    r.recent = [1, 2, 3, 4, 5]
    r.offer(5)
    assert r.delivered == [1, 2]
    r.room.confirmed()
    assert r.delivered == [1, 2, 3, 4, 5]


def test_an_unreadable_recent_list_delivers_what_arrived_in_order() -> None:
    """When Redis cannot answer the fill, the held records still go out, in seq order."""
    r = Room(recent=[])
    r.room.start(0)
    r.failing = True
    r.offer(3, 2)
    r.room.confirmed()
    assert r.delivered == [2, 3]


def test_records_before_the_baseline_are_not_delivered() -> None:
    """A subscription starts at the counter read on subscribing: older records are dropped."""
    r = Room(recent=[1, 2, 3])
    r.room.start(3)
    r.room.confirmed()
    r.offer(2, 3, 4)
    assert r.delivered == [4]


def test_a_fill_that_waits_for_the_commands_link_runs_when_it_is_back() -> None:
    """While the recent list is unreachable the room keeps holding; resume() fills it."""
    from stomp_chat.cluster.follow import RecentUnavailable

    r = Room(recent=[1, 2, 3])
    r.room.start(0)
    r.fetch = lambda room_id: fail(RecentUnavailable("down"))  # type: ignore[method-assign]
    r.room._fetch_recent = r.fetch
    r.offer(3)
    r.room.confirmed()
    assert r.delivered == [] and not r.room.live
    r.room._fetch_recent = lambda room_id: succeed([record(s) for s in (1, 2, 3)])
    r.room.resume()
    assert r.delivered == [1, 2, 3] and r.room.live
