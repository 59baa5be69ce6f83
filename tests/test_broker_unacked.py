"""Unit tests for stomp_chat.broker.unacked: per-subscription unacked messages and their total."""

from __future__ import annotations

from stomp_chat.broker import Message
from stomp_chat.broker.unacked import PendingMessages, UnackedTotal


def message(n: int) -> Message:
    return Message("/queue/q", f"m{n}", b"x")


def filled(count: int, total: UnackedTotal | None = None) -> PendingMessages:
    pending = PendingMessages()
    if total is not None:
        pending.share(total)
    for n in range(count):
        pending[f"m{n}"] = message(n)
    return pending


def test_every_change_moves_the_total():
    """Setting, popping, deleting, popitem and clear each keep the count equal to the entries."""
    pending = filled(6)
    assert pending.total.count == 6
    pending["m0"] = message(0)  # replacing an entry adds nothing
    assert pending.total.count == 6
    pending.pop("m1")
    pending.pop("absent", None)
    del pending["m2"]
    pending.popitem(last=False)
    pending.setdefault("m9", message(9))
    pending.update({"m10": message(10)})
    assert pending.total.count == len(pending) == 5
    pending.clear()
    assert pending.total.count == 0


def test_subscriptions_of_one_session_share_one_total():
    """Two subscriptions sharing a total count together; sharing carries existing entries over."""
    total = UnackedTotal()
    first = filled(3, total)
    second = filled(2)
    second.share(total)
    assert total.count == 5 and second.total is total
    first.clear()
    second.popitem()
    assert total.count == 1


def test_order_is_kept_oldest_first():
    """popitem(last=False) returns the oldest unacked message, as cumulative ACK needs."""
    pending = filled(3)
    assert pending.popitem(last=False)[0] == "m0"
    assert list(pending) == ["m1", "m2"]
