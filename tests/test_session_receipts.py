"""Unit tests for stomp_chat.session.receipts: RECEIPTs leave in the order of their frames."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from stomp_chat.session.receipts import NOT_RECEIPTED, REFUSED, OrderedReceipts


def receipts() -> tuple[OrderedReceipts, list[str], list[str]]:
    sent: list[str] = []
    drained: list[str] = []
    return OrderedReceipts(sent.append, lambda: drained.append("drained")), sent, drained


def test_receipt_is_sent_at_once_when_nothing_waits():
    """With no slower frame ahead, a receipt is sent immediately."""
    ordered, sent, _ = receipts()
    ordered.add("r1")
    assert sent == ["r1"]
    assert len(ordered) == 0


def test_frame_without_receipt_sends_nothing():
    """A frame that asked for no receipt produces none."""
    ordered, sent, _ = receipts()
    ordered.add(None)
    assert sent == []


def test_later_receipt_waits_for_a_slower_frame():
    """A receipt behind a waiting Deferred goes out only after it, in frame order."""
    ordered, sent, drained = receipts()
    slow: Deferred[object] = Deferred()
    ordered.add("slow", slow)
    ordered.add("fast")
    assert sent == []
    slow.callback(None)
    assert sent == ["slow", "fast"]
    assert drained == ["drained"]


def test_unreceipted_slow_frame_still_holds_later_receipts():
    """A slow frame with no receipt of its own still holds back later receipts."""
    ordered, sent, _ = receipts()
    slow: Deferred[object] = Deferred()
    ordered.add(None, slow)
    ordered.add("after")
    assert sent == []
    slow.callback(None)
    assert sent == ["after"]


def test_not_receipted_result_skips_the_receipt():
    """A frame whose Deferred fires NOT_RECEIPTED gets no RECEIPT; later ones still do."""
    ordered, sent, _ = receipts()
    slow: Deferred[object] = Deferred()
    ordered.add("refused", slow)
    ordered.add("later")
    slow.callback(NOT_RECEIPTED)
    assert sent == ["later"]


def test_not_receipted_now_sends_nothing():
    """A frame refused at once with NOT_RECEIPTED sends no receipt."""
    ordered, sent, _ = receipts()
    ordered.add("refused", NOT_RECEIPTED)
    assert sent == []


def test_out_of_order_completion_keeps_frame_order():
    """When a later slow frame finishes first, receipts still leave in frame order."""
    ordered, sent, _ = receipts()
    first: Deferred[object] = Deferred()
    second: Deferred[object] = Deferred()
    ordered.add("a", first)
    ordered.add("b", second)
    second.callback(None)
    assert sent == []
    first.callback(None)
    assert sent == ["a", "b"]


def test_failed_wait_still_releases_later_receipts():
    """A waiting frame that fails releases the queue (its own receipt is still due)."""
    ordered, sent, _ = receipts()
    slow: Deferred[object] = Deferred()
    ordered.add("slow", slow)
    ordered.add("next")
    slow.errback(RuntimeError("x"))
    assert sent == ["slow", "next"]


def test_backlog_is_reported_full_at_the_limit_and_free_at_half():
    """At ``limit`` waiting entries the caller is told to stop reading; at half, to go on."""
    states: list[bool] = []
    sent: list[str] = []
    ordered = OrderedReceipts(sent.append, lambda: None, limit=4, backlog=states.append)
    slow: list[Deferred[object]] = [Deferred() for _ in range(4)]
    for i, d in enumerate(slow):
        ordered.add(f"r{i}", d)
    assert states == [True] and ordered.full
    slow[0].callback(None)
    assert states == [True], "three still wait: more than half"
    slow[1].callback(None)
    assert states == [True, False] and not ordered.full
    assert sent == ["r0", "r1"]


def test_ready_receipts_behind_a_slow_one_count_toward_the_limit():
    """Receipts queued behind a slow frame fill the backlog too, not only slow frames."""
    states: list[bool] = []
    ordered = OrderedReceipts(lambda r: None, lambda: None, limit=3, backlog=states.append)
    ordered.add("slow", Deferred())
    ordered.add("a")
    assert states == []
    ordered.add("b")
    assert states == [True]


def test_refused_frame_sends_earlier_receipts_and_none_after_it():
    """A frame refused after later frames were read: the receipts before it go out, its own
    and every later one are dropped, and the caller is told nothing more waits."""
    ordered, sent, drained = receipts()
    earlier: Deferred[object] = Deferred()
    refused: Deferred[object] = Deferred()
    ordered.add("earlier", earlier)
    ordered.add("refused", refused)
    ordered.add("later")
    refused.callback(REFUSED)
    assert sent == [] and drained == []
    earlier.callback(None)
    assert sent == ["earlier"]
    assert drained == ["drained"]
    assert len(ordered) == 0
