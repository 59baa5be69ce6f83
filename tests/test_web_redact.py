"""Unit tests for stomp_chat.web.redact: no token or password from a URL reaches a log."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.web.test.requesthelper import DummyRequest

from stomp_chat.web.redact import access_log_line, redact_text, redact_uri


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (b"/ws/chat?access_token=eyJ.secret.sig", b"/ws/chat?access_token=REDACTED"),
        (b"/api/rooms?limit=5&access_token=abc&after=2",
         b"/api/rooms?limit=5&access_token=REDACTED&after=2"),
        (b"/x?ACCESS_TOKEN=abc", b"/x?ACCESS_TOKEN=REDACTED"),
        (b"/x?access%5Ftoken=abc", b"/x?access%5Ftoken=REDACTED"),
        (b"/x?token=a;passcode=b&password=c&jwt=d",
         b"/x?token=REDACTED;passcode=REDACTED&password=REDACTED&jwt=REDACTED"),
        (b"/x?access_token=a#frag", b"/x?access_token=REDACTED#frag"),
        (b"/x?limit=5", b"/x?limit=5"),
        (b"/x", b"/x"),
        (b"/x?access_token", b"/x?access_token"),  # no value to hide
    ],
)
def test_secret_query_values_are_redacted(uri: bytes, shown: bytes) -> None:
    """The values of token and password parameters become REDACTED; the rest is kept."""
    assert redact_uri(uri) == shown


def test_redact_text_takes_any_bytes() -> None:
    """A URL that is not UTF-8 is still shown, never raising."""
    assert redact_text(b"/x/\xff?token=\xfe") == "/x/\xff?token=REDACTED"


def test_the_access_log_line_hides_tokens_in_the_url_and_referrer() -> None:
    """The combined log line shows the request, without the URL's or the referrer's token."""
    request = DummyRequest([b"ws", b"chat"])
    request.uri = b"/ws/chat?access_token=eyJhbGciOi.payload.signature"
    request.method = b"GET"
    request.clientproto = b"HTTP/1.1"
    request.code = 101
    request.sentLength = 0
    request.client = IPv4Address("TCP", "203.0.113.9", 4711)
    request.requestHeaders.addRawHeader(b"referer", b"http://chat.example/?token=abc")
    request.requestHeaders.addRawHeader(b"user-agent", b"tests")
    line = access_log_line("[29/Nov/2026:04:00:00 +0000]", request)
    assert "eyJhbGciOi" not in line and "abc" not in line
    assert '"GET /ws/chat?access_token=REDACTED HTTP/1.1" 101' in line
    assert '"http://chat.example/?token=REDACTED"' in line
    assert line.startswith('"203.0.113.9"')
