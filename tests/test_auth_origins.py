"""Unit tests for stomp_chat.auth.origins: browser origins against configured ones or the
address a connection reached, never the Host header."""

from __future__ import annotations

import pytest

from stomp_chat.auth.origins import (
    host_allowed,
    matches_local_address,
    matches_patterns,
    origin_allowed,
)


def test_no_origin_is_not_a_browser_and_is_allowed():
    """Clients that send no Origin (stomp.py, curl) are allowed."""
    assert origin_allowed(None, [], "127.0.0.1", 8080)
    assert origin_allowed("", ["https://chat.example"], "10.0.0.1", 443)


@pytest.mark.parametrize(
    ("origin", "local", "allowed"),
    [
        ("http://127.0.0.1:8080", ("127.0.0.1", 8080), True),
        ("http://localhost:8080", ("127.0.0.1", 8080), True),
        ("http://[::1]:8080", ("::1", 8080), True),
        ("http://127.0.0.1:9999", ("127.0.0.1", 8080), False),
        ("https://192.0.2.5", ("192.0.2.5", 443), True),
        ("http://192.0.2.5", ("::ffff:192.0.2.5", 80), True),
        ("http://localhost:8080", ("192.0.2.5", 8080), False),
        # DNS rebinding: the attacker's name now points at this server
        ("http://evil.example:8080", ("127.0.0.1", 8080), False),
        ("http://127.0.0.1.evil.example:8080", ("127.0.0.1", 8080), False),
        ("null", ("127.0.0.1", 8080), False),
    ],
)
def test_without_patterns_the_reached_address_decides(origin, local, allowed):
    """With no configured origins only the address the connection reached (and localhost on
    loopback) is the server's own origin."""
    assert matches_local_address(origin, *local) is allowed
    assert origin_allowed(origin, [], *local) is allowed


def test_patterns_decide_when_configured():
    """Configured patterns replace the reached-address rule: whole origins or host:port."""
    patterns = ["https://*.example.com", "chat.example.org:8443"]
    assert matches_patterns("https://app.example.com", patterns)
    assert matches_patterns("http://chat.example.org:8443", patterns)
    assert not matches_patterns("http://app.example.com", patterns)
    assert not matches_patterns("https://example.com.evil", patterns)
    assert not origin_allowed("http://127.0.0.1:8080", patterns, "127.0.0.1", 8080)
    assert origin_allowed("https://anything", ["*"], "127.0.0.1", 8080)


def test_malformed_origins_are_refused():
    """An origin with a bad port or no host matches nothing."""
    assert not matches_local_address("http://127.0.0.1:notaport", "127.0.0.1", 8080)
    assert not matches_local_address("garbage", "127.0.0.1", 8080)


# -- the Host header, checked with --auth none -----------------------------------------


@pytest.mark.parametrize(
    ("host", "patterns", "local", "allowed"),
    [
        (None, [], "127.0.0.1", True),  # HTTP/1.0 tools send none; browsers always do
        ("127.0.0.1:8080", [], "127.0.0.1", True),
        ("localhost:8080", [], "127.0.0.1", True),
        ("LOCALHOST", [], "127.0.0.1", True),
        ("[::1]:8080", [], "::1", True),
        ("127.0.0.2", [], "127.0.0.1", True),  # any loopback address is this machine
        ("192.0.2.5:8080", [], "192.0.2.5", True),  # the address the connection reached
        ("192.0.2.5", [], "::ffff:192.0.2.5", True),
        # DNS rebinding: the attacker's name now resolves to this server
        ("rebound.example:8080", [], "127.0.0.1", False),
        ("127.0.0.1.rebound.example", [], "127.0.0.1", False),
        ("192.0.2.6", [], "192.0.2.5", False),
        # hosts of --allowed-origins patterns, with or without scheme and port
        ("chat.example.com", ["https://chat.example.com"], "127.0.0.1", True),
        ("chat.example.com:8443", ["chat.example.com:8443"], "127.0.0.1", True),
        ("eu.chat.example.com", ["https://*.chat.example.com"], "127.0.0.1", True),
        ("chat.example.com.evil", ["https://chat.example.com"], "127.0.0.1", False),
        ("anything.example", ["*"], "127.0.0.1", True),
        ("[2001:db8::1]", ["http://[2001:db8::1]:8080"], "127.0.0.1", True),
        # not a host at all
        ("", [], "127.0.0.1", False),
        ("localhost:http", [], "127.0.0.1", False),
        ("user@localhost", [], "127.0.0.1", False),
        ("[::1", [], "::1", False),
        ("[localhost]", [], "127.0.0.1", False),
    ],
)
def test_host_allowed(host, patterns, local, allowed):
    """A Host must name the reached address, loopback, or an allowed origin's host."""
    assert host_allowed(host, patterns, local) is allowed
