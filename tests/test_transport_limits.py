"""Unit tests for stomp_chat.transport.limits: open connections per address."""

from __future__ import annotations

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from stomp_chat.transport.limits import ConnectionCounter


def test_admits_up_to_the_cap_per_address():
    """Each address may hold up to the cap; other addresses are counted apart."""
    counter = ConnectionCounter(2)
    for _ in range(2):
        assert counter.admits("10.0.0.1")
        counter.opened("10.0.0.1")
    assert not counter.admits("10.0.0.1")
    assert counter.admits("10.0.0.2")
    counter.closed("10.0.0.1")
    assert counter.admits("10.0.0.1")
    assert counter.count("10.0.0.1") == 1


def test_zero_means_unlimited():
    """A cap of 0 admits every connection."""
    counter = ConnectionCounter(0)
    for _ in range(1000):
        counter.opened("127.0.0.1")
    assert counter.admits("127.0.0.1")


def test_loopback_is_not_exempt():
    """127.0.0.1 is counted like any other address."""
    counter = ConnectionCounter(1)
    counter.opened("127.0.0.1")
    assert not counter.admits("127.0.0.1")


def test_addresses_leave_no_trace_once_closed():
    """An address whose connections all closed is forgotten (memory does not grow)."""
    counter = ConnectionCounter(5)
    for i in range(100):
        counter.opened(f"10.0.{i}.1")
        counter.closed(f"10.0.{i}.1")
    assert len(counter) == 0


def test_connections_without_an_address_are_not_counted():
    """A UNIX-socket peer has no host and is never limited."""
    counter = ConnectionCounter(1)
    counter.opened("")
    counter.opened("")
    assert counter.admits("")
    assert len(counter) == 0


def test_a_refused_address_is_logged_once_until_it_drops_below_the_cap():
    """The first refusal of an address is logged; repeats are not, until it has room again."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        counter = ConnectionCounter(1)
        counter.opened("10.0.0.9")
        for _ in range(50):
            counter.admits("10.0.0.9")
        counter.closed("10.0.0.9")
        counter.opened("10.0.0.9")
        counter.admits("10.0.0.9")
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if "refusing" in formatEvent(e)]
    assert len(lines) == 2
    assert "10.0.0.9" in lines[0]


def test_negative_cap_is_refused():
    """A negative cap is a programming error."""
    with pytest.raises(ValueError):
        ConnectionCounter(-1)
