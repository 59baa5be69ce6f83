"""Destination patterns of the authorization rules: `*` within a segment, `**` across them."""

from __future__ import annotations

import pytest

from stomp_chat.authz.patterns import DestinationPattern


@pytest.mark.parametrize(
    ("pattern", "destination", "expected"),
    [
        ("/topic/ops", "/topic/ops", True),
        ("/topic/ops", "/topic/ops2", False),
        ("/topic/ops.*", "/topic/ops.alerts", True),
        ("/topic/ops.*", "/topic/ops.alerts/x", False),
        ("/topic/ops.**", "/topic/ops.alerts/x/y", True),
        ("/topic/*/news", "/topic/sport/news", True),
        ("/topic/*/news", "/topic/a/b/news", False),
        ("/topic/**", "/topic/", True),
        ("/user/*/queue/errors", "/user/bob/queue/errors", True),
        ("/user/*/queue/errors", "/user/queue/errors", False),
        ("/topic/a+b(c)", "/topic/a+b(c)", True),
        ("/topic/a+b(c)", "/topic/aab(c)", False),
    ],
)
def test_matching(pattern: str, destination: str, expected: bool) -> None:
    """A pattern matches exactly the destinations its wildcards allow, the rest literally."""
    assert DestinationPattern(pattern).matches(destination) is expected


@pytest.mark.parametrize("pattern", ["topic/x", "", "/topic/***"])
def test_invalid_patterns_are_refused(pattern: str) -> None:
    """A pattern that is not absolute or uses `***` is a ValueError naming it."""
    with pytest.raises(ValueError, match="pattern|\\*\\*"):
        DestinationPattern(pattern)
