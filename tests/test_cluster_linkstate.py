"""The Redis link state machine: up and down are announced once per change."""

from __future__ import annotations

from typing import Any

from stomp_chat.cluster.linkstate import Link


def recording_link() -> tuple[Link, list[Any]]:
    events: list[Any] = []
    link = Link("test", lambda protocol: events.append(("up", protocol)),
                lambda: events.append("down"))
    return link, events


def test_a_link_announces_up_then_down_then_up_again() -> None:
    """A ready connection brings the link up, losing it brings it down, a new one up."""
    link, events = recording_link()
    link.connected("p1")
    assert link.is_up and link.protocol == "p1"
    link.lost()
    assert not link.is_up
    link.connected("p2")
    assert events == [("up", "p1"), "down", ("up", "p2")]
    assert link.ups == 2


def test_connections_that_close_at_once_keep_the_link_down_with_one_announcement() -> None:
    """A proxy that accepts and closes: the first loss is announced, repeats are not."""
    link, events = recording_link()
    link.lost()
    link.lost()
    link.lost()
    assert events == ["down"]
    assert not link.is_up


def test_a_stopped_link_announces_nothing() -> None:
    """After stop, connections coming and going change nothing."""
    link, events = recording_link()
    link.connected("p1")
    link.stop()
    link.lost()
    link.connected("p2")
    assert events == [("up", "p1")]
    assert not link.is_up
