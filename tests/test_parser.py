"""Unit tests for stomp_chat.stomp.parser.FrameParser, fed byte by byte."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stomp_chat.stomp.frame import V1_0, V1_1, V1_2, Frame, FrameError, encode_frame
from stomp_chat.stomp.parser import FrameParser


def make_parser(version: str = V1_2, **limits: int) -> tuple[FrameParser, list[Frame]]:
    frames: list[Frame] = []
    parser = FrameParser(frames.append, **limits)
    parser.version = version
    return parser, frames


def parse(data: bytes, version: str = V1_2, **limits: int) -> list[Frame]:
    parser, frames = make_parser(version, **limits)
    parser.feed(data)
    return frames


def parse_chunks(chunks: list[bytes], version: str = V1_2, **limits: int) -> list[Frame]:
    parser, frames = make_parser(version, **limits)
    for chunk in chunks:
        parser.feed(chunk)
    return frames


def as_tuples(frames: list[Frame]) -> list[tuple[str, dict[str, str], bytes]]:
    return [(f.command, dict(f.headers), f.body) for f in frames]


def split_everywhere(data: bytes, version: str = V1_2, **limits: int):
    """Yield (offset, frames) for the input fed in two pieces, at every offset."""
    for offset in range(len(data) + 1):
        yield offset, parse_chunks([data[:offset], data[offset:]], version, **limits)


# -- splitting -----------------------------------------------------------

VALID_STREAMS = [
    pytest.param(b"CONNECT\naccept-version:1.2\nhost:x\n\n\x00", id="connect"),
    pytest.param(b"CONNECT\r\naccept-version:1.2\r\nhost:x\r\n\r\n\x00", id="connect-crlf"),
    pytest.param(b"SEND\ndestination:/q\n\nhello\x00", id="send-to-nul"),
    pytest.param(
        b"SEND\ndestination:/q\ncontent-length:7\n\na\x00b\x00\nc\n\x00", id="content-length-nuls"
    ),
    pytest.param(
        b"\n\r\n\nSEND\ndestination:/a\n\n1\x00\n\n\r\nSEND\ndestination:/b\n\n2\x00\n",
        id="heartbeats-between",
    ),
    pytest.param(b"\x00\nSEND\ndestination:/q\n\nx\x00", id="stray-nul"),
    pytest.param(
        b"SEND\r\ndestination:/q\r\ncontent-length:2\r\n\r\n\r\n\x00"
        b"SUBSCRIBE\ndestination:/q\nid:0\n\n\x00",
        id="crlf-then-lf",
    ),
    pytest.param(
        "SEND\ndestination:/방\n이름:김\n\n안녕하세요\x00".encode(), id="korean"
    ),
    pytest.param(b"SEND\nk:a\\nb\\cc\\\\d\\re\n\n\x00", id="escapes"),
]


@pytest.mark.parametrize("data", VALID_STREAMS)
def test_every_split_offset_gives_the_same_frames(data):
    """Feeding a valid stream in two pieces, split at any byte, yields the same frames."""
    expected = as_tuples(parse(data))
    assert expected
    for offset, frames in split_everywhere(data):
        assert as_tuples(frames) == expected, f"split at {offset}"


@pytest.mark.parametrize("data", VALID_STREAMS)
def test_byte_at_a_time_gives_the_same_frames(data):
    """Feeding a valid stream one byte per call yields the same frames."""
    expected = as_tuples(parse(data))
    frames = parse_chunks([data[i : i + 1] for i in range(len(data))])
    assert as_tuples(frames) == expected


def test_many_frames_in_one_feed_arrive_in_order():
    """One read holding many frames delivers all of them, in order, without recursion."""
    data = b"".join(
        encode_frame(Frame("SEND", {"destination": "/q", "n": str(i)})) for i in range(5000)
    )
    frames = parse(data)
    assert [f.headers["n"] for f in frames] == [str(i) for i in range(5000)]


# -- property tests ------------------------------------------------------

_ESCAPED_COMMANDS = ["SEND", "MESSAGE", "ERROR", "SUBSCRIBE", "UNSUBSCRIBE", "ACK", "NACK",
                     "BEGIN", "COMMIT", "ABORT", "RECEIPT", "DISCONNECT"]
_header_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20
)
_header_name = _header_text.filter(lambda s: s != "" and s != "content-length")


@st.composite
def escaped_frames(draw):
    """Frames of escaping commands: any header text, binary bodies (NULs included)."""
    command = draw(st.sampled_from(_ESCAPED_COMMANDS))
    headers = draw(st.dictionaries(_header_name, _header_text, max_size=6))
    body = draw(st.binary(max_size=64)) if command in ("SEND", "MESSAGE", "ERROR") else b""
    return Frame(command, headers, body)


_plain = st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\r\n")
_plain_name = st.text(alphabet=_plain.filter(lambda c: c != ":"), min_size=1, max_size=12).filter(
    lambda s: s != "content-length"
)


@st.composite
def unescaped_frames(draw):
    """Frames that are never escaped (CONNECT, STOMP, CONNECTED) or any 1.0 frame."""
    command = draw(st.sampled_from(["CONNECT", "STOMP", "CONNECTED", "SEND", "MESSAGE"]))
    headers = draw(
        st.dictionaries(_plain_name, st.text(alphabet=_plain, max_size=12), max_size=6)
    )
    body = draw(st.binary(max_size=64)) if command in ("SEND", "MESSAGE") else b""
    return Frame(command, headers, body)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    offsets = sorted({p % (len(data) + 1) for p in points})
    chunks, start = [], 0
    for offset in offsets:
        chunks.append(data[start:offset])
        start = offset
    chunks.append(data[start:])
    return chunks


def without_length(frame: Frame) -> tuple[str, dict[str, str], bytes]:
    headers = {k: v for k, v in frame.headers.items() if k != "content-length"}
    return (frame.command, headers, frame.body)


_eols = st.sampled_from([b"", b"\n", b"\r\n", b"\n\n\r\n"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=st.lists(escaped_frames(), min_size=1, max_size=4),
    version=st.sampled_from([V1_1, V1_2]),
    separators=st.lists(_eols, min_size=4, max_size=4),
    points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
)
def test_encoded_frames_reparse_identically_in_any_chunking(frames, version, separators, points):
    """encode_frame output, with heart-beats between frames and cut anywhere, parses back."""
    if version == V1_1:
        # STOMP 1.1 has no \r escape, so a CR can't travel in its headers.
        frames = [
            Frame(f.command, {k.replace("\r", ""): v.replace("\r", "") for k, v in
                              f.headers.items()
                              if k.replace("\r", "") not in ("", "content-length")}, f.body)
            for f in frames
        ]
    pairs = zip(frames, separators, strict=False)
    data = b"".join(sep + encode_frame(f, version) for f, sep in pairs)
    parsed = parse_chunks(cut(data, points), version)
    assert [without_length(f) for f in parsed] == [without_length(f) for f in frames]
    for f in parsed:
        if f.command in ("SEND", "MESSAGE", "ERROR"):
            assert f.headers["content-length"] == str(len(f.body))


@settings(max_examples=100, deadline=None)
@given(
    frames=st.lists(unescaped_frames(), min_size=1, max_size=4),
    version=st.sampled_from([V1_0, V1_2]),
    points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
)
def test_unescaped_frames_reparse_identically_in_any_chunking(frames, version, points):
    """CONNECT-family frames (any version) and 1.0 frames round-trip without escaping."""
    if version == V1_2:
        frames = [f for f in frames if f.command in ("CONNECT", "STOMP", "CONNECTED")] or [
            Frame("CONNECT", {"a": "b\\c"})
        ]
    data = b"".join(encode_frame(f, version) for f in frames)
    parsed = parse_chunks(cut(data, points), version)
    assert [without_length(f) for f in parsed] == [without_length(f) for f in frames]


# -- framing rules -------------------------------------------------------


def test_crlf_line_endings_are_accepted():
    """CRLF ends the command, header and blank lines, and the CRs are not kept."""
    (frame,) = parse(b"SEND\r\ndestination:/q\r\nk:v\r\n\r\nbody\x00")
    assert frame.command == "SEND"
    assert frame.headers == {"destination": "/q", "k": "v"}
    assert frame.body == b"body"


def test_crlf_connect_before_version_is_known():
    """A CONNECT with CRLF line endings parses while the parser is still at 1.0."""
    (frame,) = parse(b"CONNECT\r\naccept-version:1.2\r\n\r\n\x00", V1_0)
    assert frame.headers == {"accept-version": "1.2"}


def test_lone_cr_between_frames_is_an_error():
    """A CR not followed by LF between frames is a FrameError."""
    with pytest.raises(FrameError):
        parse(b"\rSEND\ndestination:/q\n\n\x00")


def test_cr_inside_header_line_is_an_error():
    """A CR in the middle of a header line (not before LF) is a FrameError."""
    with pytest.raises(FrameError):
        parse(b"SEND\ndestination:/q\rx\n\n\x00")


def test_heartbeat_eols_between_frames_are_skipped():
    """LF and CRLF heart-beats between frames produce no frames of their own."""
    frames = parse(b"\n\n\r\nSEND\ndestination:/a\n\n\x00\n\r\n\nSEND\ndestination:/b\n\n\x00\n")
    assert [f.headers["destination"] for f in frames] == ["/a", "/b"]


def test_only_heartbeats_produce_nothing():
    """A stream of EOLs alone is just heart-beats."""
    assert parse(b"\n" * 10 + b"\r\n" * 10) == []


def test_stray_nul_before_command_is_tolerated():
    """A NUL before a command is skipped rather than treated as an error."""
    (frame,) = parse(b"\x00\x00SEND\ndestination:/q\n\nx\x00")
    assert frame.command == "SEND" and frame.body == b"x"


def test_send_with_leading_newline():
    """A SEND preceded by a newline parses as a normal SEND."""
    (frame,) = parse(b"\nSEND\ndestination:/q\n\nhi\x00")
    assert (frame.command, frame.body) == ("SEND", b"hi")


def test_body_starting_with_newline_is_kept():
    """A body whose first byte is LF keeps that LF (the blank line is not eaten twice)."""
    (frame,) = parse(b"SEND\ndestination:/q\n\n\nhi\x00")
    assert frame.body == b"\nhi"


def test_repeated_header_first_wins():
    """When a header repeats, the first occurrence is the one kept."""
    (frame,) = parse(b"MESSAGE\nfoo:World\nfoo:Hello\n\n\x00")
    assert frame.headers["foo"] == "World"


def test_header_padding_is_kept():
    """Spaces around header names and values are part of them (no trimming)."""
    (frame,) = parse(b"SEND\ndestination:/q\n foo : bar \n\n\x00")
    assert frame.headers[" foo "] == " bar "


def test_header_value_may_be_empty():
    """An empty header value is allowed."""
    (frame,) = parse(b"SEND\ndestination:/q\nempty:\n\n\x00")
    assert frame.headers["empty"] == ""


def test_header_value_keeps_later_colons_in_1_0():
    """In 1.0 the first colon separates name and value; later ones belong to the value."""
    (frame,) = parse(b"SEND\ndestination:/q\nurl:http://x:80/\n\n\x00", V1_0)
    assert frame.headers["url"] == "http://x:80/"


def test_header_line_without_colon_is_an_error():
    """A header line with no colon is malformed."""
    with pytest.raises(FrameError):
        parse(b"SEND\ndestination:/q\nnocolon\n\n\x00")


def test_header_with_empty_name_is_an_error():
    """A header line starting with a colon has no name."""
    with pytest.raises(FrameError):
        parse(b"SEND\n:value\n\n\x00")


# -- escaping ------------------------------------------------------------


def test_1_2_unescapes_all_four_sequences():
    """STOMP 1.2 decodes \\n, \\c, \\\\ and \\r in names and values."""
    (frame,) = parse(b"SEND\na\\cb:1\\n2\\c3\\\\4\\r5\n\n\x00", V1_2)
    assert frame.headers == {"a:b": "1\n2:3\\4\r5"}


def test_1_1_unescapes_three_sequences():
    """STOMP 1.1 decodes \\n, \\c and \\\\."""
    (frame,) = parse(b"SEND\nk:1\\n2\\c3\\\\4\n\n\x00", V1_1)
    assert frame.headers == {"k": "1\n2:3\\4"}


def test_1_1_rejects_cr_escape():
    """\\r is undefined in 1.1 and so is a FrameError."""
    with pytest.raises(FrameError):
        parse(b"SEND\nk:a\\rb\n\n\x00", V1_1)


@pytest.mark.parametrize("version", [V1_1, V1_2])
def test_undefined_escape_is_an_error(version):
    """\\t is not a STOMP escape: the frame is rejected."""
    with pytest.raises(FrameError):
        parse(b"SEND\ndestination:/q\nk:a\\tb\n\n\x00", version)


def test_1_0_takes_backslashes_literally():
    """STOMP 1.0 headers are not unescaped, so \\t stays as two characters."""
    (frame,) = parse(b"SEND\nk:a\\tb\\n\n\n\x00", V1_0)
    assert frame.headers["k"] == "a\\tb\\n"


@pytest.mark.parametrize("command", [b"CONNECT", b"STOMP", b"CONNECTED"])
def test_connect_headers_are_not_unescaped(command):
    """CONNECT, STOMP and CONNECTED headers are taken literally even at 1.2."""
    (frame,) = parse(command + b"\nlogin:a\\cb\npasscode:x\\ty\n\n\x00", V1_2)
    assert frame.headers == {"login": "a\\cb", "passcode": "x\\ty"}


# -- content-length ------------------------------------------------------


def test_content_length_body_may_contain_nuls():
    """With content-length the body is read by count, NULs included."""
    (frame,) = parse(b"SEND\ndestination:/q\ncontent-length:5\n\n\x00a\x00b\x00\x00")
    assert frame.body == b"\x00a\x00b\x00"


def test_content_length_zero():
    """content-length:0 gives an empty body followed by the NUL."""
    (frame,) = parse(b"SEND\ndestination:/q\ncontent-length:0\n\n\x00")
    assert frame.body == b""


def test_content_length_then_next_frame():
    """The byte after a content-length body's NUL starts the next frame."""
    frames = parse(b"SEND\ncontent-length:1\n\n\x00\x00SEND\ncontent-length:1\n\nz\x00")
    assert [f.body for f in frames] == [b"\x00", b"z"]


def test_missing_nul_after_content_length_is_an_error():
    """The octet after content-length bytes must be NUL."""
    with pytest.raises(FrameError):
        parse(b"SEND\ndestination:/q\ncontent-length:3\n\nabcd\x00")


def test_body_error_names_the_frame_it_belongs_to():
    """A FrameError raised after the headers were read carries that frame, receipt included."""
    with pytest.raises(FrameError) as excinfo:
        parse(b"SEND\ndestination:/q\nreceipt:r7\ncontent-length:3\n\nabcd\x00")
    frame = excinfo.value.frame
    assert frame is not None and frame.headers["receipt"] == "r7"


def test_header_error_has_no_frame():
    """A FrameError in the header block has no frame to name."""
    with pytest.raises(FrameError) as excinfo:
        parse(b"SEND\nnocolon\n\n\x00")
    assert excinfo.value.frame is None


@pytest.mark.parametrize("value", [b"abc", b"-1", b"1.5", b"", b"0x10", b" 3", "٣".encode()])
def test_invalid_content_length_is_an_error(value):
    """A content-length that is not a plain decimal number is a FrameError."""
    with pytest.raises(FrameError):
        parse(b"SEND\ndestination:/q\ncontent-length:" + value + b"\n\nabc\x00")


def test_first_content_length_wins():
    """A repeated content-length follows the first-wins rule too."""
    (frame,) = parse(b"SEND\ncontent-length:2\ncontent-length:9\n\nab\x00")
    assert frame.body == b"ab"


# -- encodings -----------------------------------------------------------


def test_invalid_utf8_in_headers_is_an_error():
    """Header bytes that are not UTF-8 are a FrameError."""
    with pytest.raises(FrameError):
        parse(b"SEND\ndestination:/q\nk:\xff\xfe\n\n\x00")


def test_binary_body_is_not_decoded():
    """Body bytes are delivered as they are, even when not UTF-8."""
    (frame,) = parse(b"SEND\ndestination:/q\ncontent-length:2\n\n\xff\xfe\x00")
    assert frame.body == b"\xff\xfe"


def test_korean_headers_and_body():
    """Unicode header names, values and bodies survive parsing."""
    data = encode_frame(Frame("SEND", {"destination": "/topic/방", "이름": "김철수"},
                              "안녕하세요".encode()))
    (frame,) = parse(data)
    assert frame.headers["이름"] == "김철수"
    assert frame.headers["destination"] == "/topic/방"
    assert frame.body.decode() == "안녕하세요"


# -- limits --------------------------------------------------------------


def test_frame_over_max_size_is_an_error():
    """A body pushing the frame past max_frame_size is a FrameError."""
    with pytest.raises(FrameError):
        parse(b"SEND\ndestination:/q\n\n" + b"x" * 2000 + b"\x00", max_frame_size=1000)


def test_content_length_over_max_size_fails_before_the_body_arrives():
    """A content-length above the limit is refused as soon as the headers are read."""
    parser, _ = make_parser(max_frame_size=1000)
    with pytest.raises(FrameError):
        parser.feed(b"SEND\ndestination:/q\ncontent-length:5000\n\n")


def test_too_many_headers_is_an_error():
    """More headers than max_headers is a FrameError."""
    headers = b"".join(b"h%d:v\n" % i for i in range(11))
    with pytest.raises(FrameError):
        parse(b"SEND\n" + headers + b"\n\x00", max_headers=10)


def test_exactly_max_headers_is_fine():
    """max_headers headers are accepted, in one piece or split anywhere."""
    data = b"SEND\n" + b"".join(b"h%d:v\n" % i for i in range(10)) + b"\n\x00"
    for offset, frames in split_everywhere(data, max_headers=10):
        assert len(frames) == 1 and len(frames[0].headers) == 10, offset


def test_header_line_over_max_length_is_an_error():
    """A header line longer than max_header_length is a FrameError."""
    with pytest.raises(FrameError):
        parse(b"SEND\nk:" + b"v" * 200 + b"\n\n\x00", max_header_length=100)


def test_header_line_of_exactly_max_length_with_crlf_parses_at_every_split():
    """A header line at the limit, ended by CRLF, is accepted however it is chunked."""
    line = b"k:" + b"v" * 98  # 100 bytes, the limit
    data = b"SEND\r\n" + line + b"\r\n\r\n\x00"
    for offset, frames in split_everywhere(data, max_header_length=100):
        assert len(frames) == 1, f"split at {offset}"


def test_multibyte_header_line_limit_counts_bytes():
    """The header line limit is in bytes, so multi-byte characters count fully."""
    line = ("k:" + "가" * 40).encode()  # 42 characters, 122 bytes
    assert len(line) > 100
    with pytest.raises(FrameError):
        parse(b"SEND\n" + line + b"\n\n\x00", max_header_length=100)


def test_multibyte_header_line_gives_the_same_result_at_every_split():
    """Whether a multi-byte header line passes the limit does not depend on chunking."""
    data = ("SEND\nk:" + "가" * 40 + "\n\n\x00").encode()
    outcomes = set()
    for offset in range(len(data) + 1):
        try:
            parse_chunks([data[:offset], data[offset:]], max_header_length=100)
        except FrameError:
            outcomes.add("error")
        else:
            outcomes.add("ok")
    assert len(outcomes) == 1, outcomes


def _feed_until_error(parser: FrameParser, head: bytes, filler: bytes, step: int,
                      budget: int) -> int:
    """Feed ``head`` then ``filler`` in ``step``-byte pieces; return bytes fed at the error."""
    fed = 0
    with pytest.raises(FrameError):
        parser.feed(head)
        fed += len(head)
        while fed < budget:
            parser.feed(filler[:step])
            fed += step
    return fed


def test_oversized_body_in_small_pieces_fails_without_unbounded_buffering():
    """A body without NUL arriving 7 bytes at a time fails once it passes the frame limit."""
    parser, _ = make_parser(max_frame_size=1000)
    fed = _feed_until_error(parser, b"SEND\ndestination:/q\n\n", b"x" * 7, 7, 100_000)
    assert fed <= 1000 + 7


def test_oversized_counted_body_in_small_pieces_fails_without_unbounded_buffering():
    """A counted body whose NUL never comes cannot grow the buffer past the limit."""
    parser, _ = make_parser(max_frame_size=1000)
    fed = _feed_until_error(
        parser, b"SEND\ncontent-length:900\n\n", b"y" * 11, 11, 100_000
    )
    assert fed <= 1000 + 11


def test_endless_header_line_in_small_pieces_fails_early():
    """A header line that never ends fails once it passes max_header_length."""
    parser, _ = make_parser(max_header_length=100)
    fed = _feed_until_error(parser, b"SEND\nk:", b"v" * 3, 3, 100_000)
    assert fed <= 100 + len(b"SEND\n") + 3


def test_endless_header_block_in_small_pieces_fails_early():
    """Short headers that never end the block fail once they exceed max_headers."""
    parser, _ = make_parser(max_headers=10)
    fed = _feed_until_error(parser, b"SEND\n", b"h:v\n", 4, 100_000)
    assert fed <= len(b"SEND\n") + 12 * 4


def test_endless_command_line_fails_early():
    """Bytes without any newline cannot be buffered past the line limit."""
    parser, _ = make_parser(max_header_length=100, max_frame_size=10_000)
    fed = _feed_until_error(parser, b"", b"A" * 5, 5, 100_000)
    assert fed <= 100 + 5


def test_sixteen_megabyte_body_within_the_limit():
    """A 16 MB body parses under the default limit, whole and in 64 KB pieces."""
    body = bytes(range(256)) * (16 * 1024 * 1024 // 256)
    data = encode_frame(Frame("SEND", {"destination": "/q"}, body))
    (frame,) = parse(data)
    assert frame.body == body
    step = 64 * 1024
    (frame,) = parse_chunks([data[i : i + step] for i in range(0, len(data), step)])
    assert len(frame.body) == len(body) and frame.body == body


def test_sixteen_megabyte_body_without_content_length():
    """A 16 MB NUL-terminated body parses under the default limit."""
    body = b"z" * (16 * 1024 * 1024)
    (frame,) = parse(b"SEND\ndestination:/q\n\n" + body + b"\x00")
    assert len(frame.body) == len(body)


def test_frames_before_the_error_are_delivered():
    """Frames completed before an invalid byte reach the callback before the FrameError."""
    parser, frames = make_parser()
    with pytest.raises(FrameError):
        parser.feed(b"SEND\ndestination:/q\n\nok\x00SEND\nk:\\t\n\n\x00")
    assert [f.body for f in frames] == [b"ok"]


# -- stop ----------------------------------------------------------------


def test_no_frames_after_stop():
    """After stop() every further byte is ignored."""
    parser, frames = make_parser()
    parser.feed(b"SEND\ndestination:/q\n\n1\x00")
    parser.stop()
    parser.feed(b"SEND\ndestination:/q\n\n2\x00")
    assert [f.body for f in frames] == [b"1"]


def test_stop_inside_callback_drops_the_rest_of_the_read():
    """stop() called from frame_received ignores the frames that followed in the same read."""
    frames: list[Frame] = []

    def on_frame(frame: Frame) -> None:
        frames.append(frame)
        if frame.command == "DISCONNECT":
            parser.stop()

    parser = FrameParser(on_frame)
    parser.feed(b"DISCONNECT\n\n\x00SEND\ndestination:/q\n\nlate\x00")
    parser.feed(b"SEND\ndestination:/q\n\nlater\x00")
    assert [f.command for f in frames] == ["DISCONNECT"]


def test_stopped_parser_ignores_garbage():
    """A stopped parser raises nothing, even for bytes that would be invalid."""
    parser, frames = make_parser()
    parser.stop()
    parser.feed(b"\r\r\r\xff")
    assert frames == []


def test_huge_content_length_is_a_frame_error():
    """A content-length of 5,000 digits is a FrameError about the size, not a ValueError."""
    parser, _ = make_parser()
    with pytest.raises(FrameError, match="maximum size"):
        parser.feed(b"SEND\ncontent-length:" + b"9" * 5000 + b"\n\n")


def test_partial_says_whether_a_frame_is_unfinished():
    """partial is true from a frame's first byte until its NUL, and false after stop()."""
    parser, frames = make_parser()
    assert not parser.partial
    parser.feed(b"\n\n")
    assert not parser.partial, "heart-beats between frames are no frame"
    parser.feed(b"SEN")
    assert parser.partial
    parser.feed(b"D\ndestination:/q\n\nbody")
    assert parser.partial
    parser.feed(b"\x00")
    assert not parser.partial
    assert len(frames) == 1
    parser.feed(b"SEND\n\nxx")
    parser.stop()
    assert not parser.partial
