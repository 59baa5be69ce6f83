"""Unit tests for stomp_chat.session.transactions: open transactions and their bounds."""

from __future__ import annotations

import pytest

from stomp_chat.errors import ProtocolError
from stomp_chat.session.transactions import FRAME_OVERHEAD, Transactions, frame_size
from stomp_chat.stomp.frame import Frame


def send(name: str | None, body: bytes = b"x") -> Frame:
    headers = {"destination": "/topic/t"}
    if name is not None:
        headers["transaction"] = name
    return Frame("SEND", headers, body)


def test_frames_are_held_until_taken_in_order():
    """A transaction hands back the frames it held, in the order they came."""
    transactions = Transactions(4, 10_000)
    transactions.begin("t")
    first, second = send("t", b"1"), send("t", b"2")
    assert transactions.hold(first) and transactions.hold(second)
    assert transactions.take("t") == [first, second]
    assert len(transactions) == 0
    assert transactions.held_bytes == 0


def test_frame_without_transaction_is_not_held():
    """A frame naming no transaction is left to the caller."""
    assert Transactions(4, 10_000).hold(send(None)) is False


@pytest.mark.parametrize("action", ["hold", "take"])
def test_unknown_transaction_is_a_protocol_error(action):
    """Holding in or ending a transaction that was never begun is refused."""
    transactions = Transactions(4, 10_000)
    with pytest.raises(ProtocolError, match="unknown transaction"):
        if action == "hold":
            transactions.hold(send("never"))
        else:
            transactions.take("never")


def test_beginning_twice_is_a_protocol_error():
    """A name already open cannot be begun again."""
    transactions = Transactions(4, 10_000)
    transactions.begin("t")
    with pytest.raises(ProtocolError, match="already begun"):
        transactions.begin("t")


def test_open_transactions_are_bounded():
    """One transaction more than max_open is refused; ending one frees its place."""
    transactions = Transactions(2, 10_000)
    transactions.begin("a")
    transactions.begin("b")
    with pytest.raises(ProtocolError, match="too many transactions"):
        transactions.begin("c")
    transactions.take("a")
    transactions.begin("c")
    assert sorted(transactions) == ["b", "c"]


def test_held_bytes_are_bounded_across_transactions():
    """Bytes held by all open transactions together stay within max_bytes."""
    frame = send("a", b"x" * 1000)
    transactions = Transactions(4, 2 * frame_size(frame))
    transactions.begin("a")
    transactions.begin("b")
    transactions.hold(frame)
    transactions.hold(send("b", b"x" * 1000))
    with pytest.raises(ProtocolError, match="transaction too large"):
        transactions.hold(send("a", b""))
    assert transactions.held_bytes <= transactions.max_bytes
    transactions.take("b")
    transactions.hold(send("a", b""))


def test_frame_size_counts_headers_body_and_overhead():
    """A frame counts its command, headers, body and a fixed overhead."""
    frame = Frame("ACK", {"id": "42"}, b"")
    assert frame_size(frame) == FRAME_OVERHEAD + len("ACK") + len("id") + len("42")


def test_clear_forgets_everything():
    """clear() drops every open transaction and what it held."""
    transactions = Transactions(4, 10_000)
    transactions.begin("a")
    transactions.hold(send("a"))
    transactions.clear()
    assert len(transactions) == 0 and transactions.held_bytes == 0
