"""Unit tests for stomp_chat.auth.throttle: the per-address failure token bucket."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from stomp_chat.auth.throttle import FailureThrottle


def test_a_few_failures_cost_nothing():
    """Up to the burst, failures leave no delay; the next one slows the address."""
    throttle = FailureThrottle(Clock(), burst=3, refill_seconds=10)
    for _ in range(2):
        throttle.failed("10.0.0.1")
        assert throttle.delay("10.0.0.1") == 0
    throttle.failed("10.0.0.1")
    assert throttle.delay("10.0.0.1") == pytest.approx(10)


def test_delay_shrinks_as_tokens_come_back():
    """An emptied bucket refills over time: the delay falls to zero after one interval."""
    clock = Clock()
    throttle = FailureThrottle(clock, burst=1, refill_seconds=10)
    throttle.failed("a")
    assert throttle.delay("a") == pytest.approx(10)
    clock.advance(4)
    assert throttle.delay("a") == pytest.approx(6)
    clock.advance(6)
    assert throttle.delay("a") == 0


def test_debt_is_capped():
    """However many failures, an address waits at most burst intervals."""
    clock = Clock()
    throttle = FailureThrottle(clock, burst=2, refill_seconds=5)
    for _ in range(100):
        throttle.failed("a")
    assert throttle.delay("a") == pytest.approx(10)


def test_addresses_are_independent():
    """One address's failures do not slow another."""
    throttle = FailureThrottle(Clock(), burst=1, refill_seconds=10)
    throttle.failed("a")
    assert throttle.delay("a") > 0
    assert throttle.delay("b") == 0


def test_memory_is_bounded_and_clean_addresses_forgotten():
    """At most max_addresses are remembered (oldest dropped); a refilled one is forgotten."""
    clock = Clock()
    throttle = FailureThrottle(clock, burst=1, refill_seconds=1, max_addresses=3)
    for address in "abcd":
        throttle.failed(address)
    assert len(throttle) == 3
    assert throttle.delay("a") == 0  # the oldest was dropped
    assert throttle.delay("d") > 0
    clock.advance(5)
    for address in "bcd":
        assert throttle.delay(address) == 0
    assert len(throttle) == 0


def test_bad_settings_are_refused():
    """Non-positive limits are a programming error."""
    with pytest.raises(ValueError):
        FailureThrottle(Clock(), burst=0)


@settings(max_examples=200, deadline=None)
@given(
    burst=st.integers(1, 8),
    refill=st.floats(0.5, 30),
    limit=st.integers(1, 5),
    steps=st.lists(
        st.tuples(st.sampled_from("abcdefg"), st.floats(0, 60), st.booleans()), max_size=60
    ),
)
def test_throttle_bounds_hold_for_any_history(burst, refill, limit, steps):
    """Whatever the failures and pauses, no address waits longer than burst refill intervals,
    an address with a token to spare waits not at all, and memory stays within the limit."""
    clock = Clock()
    throttle = FailureThrottle(clock, burst=burst, refill_seconds=refill, max_addresses=limit)
    failures: dict[str, int] = {}
    for address, pause, fails in steps:
        clock.advance(pause)
        delay = throttle.delay(address)
        assert 0 <= delay <= burst * refill + 1e-6
        if fails:
            throttle.failed(address)
            failures[address] = failures.get(address, 0) + 1
        assert len(throttle) <= limit
    for address in "abcdefg":
        if address not in failures:
            assert throttle.delay(address) == 0
