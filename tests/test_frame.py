"""Unit tests for stomp_chat.stomp.frame: escaping, encoding and negotiation."""

from __future__ import annotations

import pytest

from stomp_chat.stomp.frame import (
    V1_0,
    V1_1,
    V1_2,
    Frame,
    FrameError,
    encode_frame,
    encode_headers,
    escape_header,
    negotiate_heartbeat,
    negotiate_version,
    parse_heartbeat,
    unescape_header,
)

# -- escaping ------------------------------------------------------------


def test_escape_1_2_covers_backslash_newline_colon_and_cr():
    """STOMP 1.2 escapes backslash, LF, colon and CR."""
    assert escape_header("a\\b\nc:d\re", V1_2) == "a\\\\b\\nc\\cd\\re"


def test_escape_1_1_leaves_cr_alone():
    """STOMP 1.1 escapes backslash, LF and colon, but has no CR escape."""
    assert escape_header("a\\b\nc:d\re", V1_1) == "a\\\\b\\nc\\cd\re"


def test_escape_1_0_is_a_noop():
    """STOMP 1.0 has no header escaping at all."""
    assert escape_header("a\\b:c", V1_0) == "a\\b:c"


@pytest.mark.parametrize("version", [V1_1, V1_2])
def test_unescape_round_trips_escape(version):
    """Unescaping what escape_header produced gives back the original text."""
    text = "x:y\\z\nw 한국어 "
    assert unescape_header(escape_header(text, version), version) == text


def test_unescape_1_2_decodes_cr():
    """STOMP 1.2 defines the \\r escape."""
    assert unescape_header("a\\rb", V1_2) == "a\rb"


def test_unescape_1_1_rejects_cr_escape():
    """\\r is not an escape sequence in STOMP 1.1, so it is an error there."""
    with pytest.raises(FrameError):
        unescape_header("a\\rb", V1_1)


@pytest.mark.parametrize("version", [V1_1, V1_2])
def test_unescape_rejects_undefined_escape(version):
    """An undefined escape like \\t is a FrameError."""
    with pytest.raises(FrameError):
        unescape_header("a\\tb", version)


@pytest.mark.parametrize("version", [V1_1, V1_2])
def test_unescape_rejects_trailing_backslash(version):
    """A value ending in a lone backslash is an incomplete escape."""
    with pytest.raises(FrameError):
        unescape_header("abc\\", version)


def test_unescape_1_0_keeps_backslashes():
    """STOMP 1.0 values are taken literally, backslashes included."""
    assert unescape_header("a\\tb\\", V1_0) == "a\\tb\\"


# -- encoding ------------------------------------------------------------


def test_encode_headers_escapes_per_version():
    """Header names and values are escaped with the frame's version."""
    data = encode_headers("MESSAGE", {"k:1": "v\n2"}, V1_2)
    assert data == b"MESSAGE\nk\\c1:v\\n2\n"


def test_encode_headers_never_escapes_connected():
    """CONNECTED (like CONNECT) is written without escaping."""
    data = encode_headers("CONNECTED", {"server": "a\\b"}, V1_2)
    assert data == b"CONNECTED\nserver:a\\b\n"


def test_encode_frame_adds_exact_content_length_to_bodies():
    """A frame with a body gets content-length counting octets, then the NUL."""
    body = "안녕".encode()
    data = encode_frame(Frame("SEND", {"destination": "/q"}, body), V1_2)
    assert data == b"SEND\ndestination:/q\ncontent-length:6\n\n" + body + b"\x00"


def test_encode_frame_body_commands_get_content_length_even_when_empty():
    """MESSAGE and ERROR frames always carry content-length, even for an empty body."""
    assert b"content-length:0\n" in encode_frame(Frame("ERROR", {"message": "x"}))
    assert b"content-length:0\n" in encode_frame(Frame("MESSAGE", {}))


def test_encode_frame_without_body_has_no_content_length():
    """A body-less frame like RECEIPT carries no content-length."""
    assert encode_frame(Frame("RECEIPT", {"receipt-id": "1"})) == b"RECEIPT\nreceipt-id:1\n\n\x00"


def test_encode_frame_does_not_mutate_headers():
    """Encoding adds content-length to a copy, not to the frame's own headers."""
    frame = Frame("SEND", {"destination": "/q"}, b"x")
    encode_frame(frame)
    assert frame.headers == {"destination": "/q"}


# -- negotiation ---------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        (None, V1_0),
        ("1.0", V1_0),
        ("1.1", V1_1),
        ("1.0,1.1", V1_1),
        ("1.2,1.1,1.0", V1_2),
        ("1.1, 1.2", V1_2),
        ("1.3,1.1", V1_1),
        ("2.0", None),
        ("", None),
    ],
)
def test_negotiate_version_picks_highest_common(offered, expected):
    """The highest version both sides speak wins; no accept-version means 1.0."""
    assert negotiate_version(offered) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, (0, 0)), ("0,0", (0, 0)), ("10000,5000", (10000, 5000))],
)
def test_parse_heartbeat_valid(value, expected):
    """A heart-beat header is two non-negative integers; absent means 0,0."""
    assert parse_heartbeat(value) == expected


@pytest.mark.parametrize("value", ["", "1", "1,2,3", "a,b", "-1,0", "0,-5", "1.5,2"])
def test_parse_heartbeat_invalid(value):
    """A malformed or negative heart-beat header is a FrameError."""
    with pytest.raises(FrameError):
        parse_heartbeat(value)


@pytest.mark.parametrize(
    ("client", "server", "expected"),
    [
        ((0, 0), (10000, 10000), (0, 0)),
        ((5000, 2000), (1000, 3000), (5000, 2000)),
        ((1000, 1000), (4000, 4000), (4000, 4000)),
        ((1000, 0), (1000, 1000), (1000, 0)),
        ((0, 1000), (1000, 1000), (0, 1000)),
        ((1000, 1000), (0, 0), (0, 0)),
        ((1000, 1000), (0, 2000), (2000, 0)),
    ],
)
def test_negotiate_heartbeat_follows_the_spec(client, server, expected):
    """Each direction is off if either side says 0, else the larger of the two values."""
    assert negotiate_heartbeat(client, server) == expected


@pytest.mark.parametrize(
    "value", ["2147483648,0", "0," + "9" * 400, "9" * 5000 + ",1"], ids=["2^31", "400", "5000"]
)
def test_parse_heartbeat_refuses_absurd_intervals(value):
    """Intervals past 2^31-1 ms, however many digits, are a short FrameError."""
    with pytest.raises(FrameError) as caught:
        parse_heartbeat(value)
    assert len(str(caught.value)) < 200


def test_parse_heartbeat_accepts_the_largest_interval():
    """2^31-1 ms is still a valid interval."""
    assert parse_heartbeat("2147483647,0") == (2147483647, 0)
