"""The relay's RESP2 reader and command encoder: the values and bytes txredisapi's own give,
all that has arrived parsed in one pass."""

from __future__ import annotations

from typing import Any

import pytest
import txredisapi
from hypothesis import given, settings
from hypothesis import strategies as st

from stomp_chat.cluster import resp
from stomp_chat.cluster.links import CommandProtocol, SubscriberProtocol
from stomp_chat.cluster.resp import MAX_LINE, ProtocolBroken, RespReader, encode_command

# -- RESP values, as Redis writes them ---------------------------------------------------


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def array(*items: bytes) -> bytes:
    return b"*%d\r\n" % len(items) + b"".join(items)


_leaf = st.one_of(
    st.binary(max_size=40).map(bulk),
    st.sampled_from([b"12", b"-3", b"1.5", b"QUEUED", b"\r\n", b""]).map(bulk),
    st.just(b"$-1\r\n"),
    st.integers(-(2**63), 2**63 - 1).map(lambda n: b":%d\r\n" % n),
    st.sampled_from([b"+OK\r\n", b"+PONG\r\n", b"+\r\n"]),
    st.sampled_from([b"-ERR unknown command\r\n", b"-NOSCRIPT No matching script\r\n"]),
)
_reply = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5).map(lambda items: array(*items)),
        st.just(b"*-1\r\n"),
    ),
    max_leaves=20,
)


class _Transport:
    """What txredisapi's reader touches of a transport while it pauses itself."""

    disconnecting = False

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


def txredisapi_replies(stream: bytes, chunks: list[int], convert_numbers: bool) -> list[Any]:
    """The replies txredisapi's pure-Python reader makes of ``stream`` fed in pieces.

    It goes on after a bulk string in a later reactor turn; here that turn
    comes at once."""
    protocol = txredisapi.BaseRedisProtocol(charset=None, convertNumbers=convert_numbers)
    protocol.transport = _Transport()
    protocol.callLater = lambda _delay, call, *args: call(*args)
    replies: list[Any] = []
    protocol.replyReceived = replies.append
    for piece in split(stream, chunks):
        protocol.dataReceived(piece)
    return replies


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(stream)) for cut in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in zip(points, points[1:], strict=False)]


def comparable(value: Any) -> Any:
    """Errors compare by type and text."""
    if isinstance(value, list):
        return [comparable(item) for item in value]
    if isinstance(value, Exception):
        return (type(value), value.args)
    return value


def reader_for(convert_numbers: bool) -> RespReader:
    protocol = txredisapi.BaseRedisProtocol(charset=None, convertNumbers=convert_numbers)
    return RespReader(protocol.tryConvertData, txredisapi.ResponseError,
                      txredisapi.InvalidResponse)


# -- the reader ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    replies=st.lists(_reply, min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 2000), max_size=8),
    convert_numbers=st.booleans(),
)
def test_the_reader_gives_what_txredisapi_gives_however_the_bytes_are_split(
    replies: list[bytes], cuts: list[int], convert_numbers: bool
) -> None:
    """Any sequence of replies, cut anywhere: the same values, in the same order."""
    stream = b"".join(replies)
    reader = reader_for(convert_numbers)
    ours: list[Any] = []
    for piece in split(stream, cuts):
        ours += reader.feed(piece)
    assert comparable(ours) == comparable(txredisapi_replies(stream, cuts, convert_numbers))
    assert len(ours) == len(replies)


def test_a_reply_in_pieces_comes_out_once_it_is_whole() -> None:
    """Nothing is handed back until a reply is complete; the rest waits for its bytes."""
    reader = reader_for(convert_numbers=False)
    message = array(bulk(b"message"), bulk(b"ns:/topic/a"), bulk(b"x" * 100_000))
    pieces = [message[i : i + 1000] for i in range(0, len(message), 1000)]
    for piece in pieces[:-1]:
        assert reader.feed(piece) == []
    assert reader.feed(pieces[-1] + b":7\r\n") == [
        [b"message", b"ns:/topic/a", b"x" * 100_000], 7,
    ]
    assert reader.feed(b"") == []


def test_a_long_bulk_string_is_not_parsed_again_for_every_piece() -> None:
    """While a bulk string's announced length has not arrived, pieces are only kept."""
    reader = reader_for(convert_numbers=False)
    parses = 0
    parse = reader._parse

    def counting(buffer: bytes, pos: int) -> Any:
        nonlocal parses
        parses += 1
        return parse(buffer, pos)

    reader._parse = counting  # type: ignore[method-assign]
    body = b"y" * 1_000_000
    head = b"$%d\r\n" % len(body)
    reader.feed(head)
    for start in range(0, len(body), 4096):
        reader.feed(body[start : start + 4096])
    assert reader.feed(b"\r\n") == [body]
    assert parses <= 3


def test_what_is_not_resp_breaks_the_reader() -> None:
    """An unknown reply type, or a line that never ends, is a broken connection."""
    with pytest.raises(ProtocolBroken, match="unknown type"):
        reader_for(False).feed(b"?what\r\n")
    with pytest.raises(ProtocolBroken, match="longer than"):
        reader_for(False).feed(b"+" + b"a" * (MAX_LINE + 10))


# -- the command encoder ---------------------------------------------------------------------


@given(st.lists(st.one_of(
    st.binary(max_size=30), st.text(max_size=30), st.integers(), st.floats(allow_nan=False),
    st.booleans(),
), min_size=1, max_size=10))
def test_commands_are_the_bytes_txredisapi_writes(args: list[Any]) -> None:
    """Bytes, text, integers, floats and booleans: byte for byte what txredisapi sends."""
    protocol = txredisapi.BaseRedisProtocol(charset=None)
    assert encode_command(tuple(args), protocol._encode_value) == protocol._build_command(*args)


def test_recurring_text_is_encoded_once_and_the_memory_of_it_is_bounded() -> None:
    """Key names and channels come back in every call: the second encoding reuses the
    first; many distinct texts (or long ones) never grow the memory past its size."""
    protocol = txredisapi.BaseRedisProtocol(charset=None)
    args = ("EVALSHA", "ns:seq:1", "ns:recent:1", 7, -1, b"\x00")
    first = encode_command(args, protocol._encode_value)
    assert resp._encoded_text["ns:seq:1"] == b"$8\r\nns:seq:1\r\n"
    assert encode_command(args, protocol._encode_value) == first == protocol._build_command(*args)
    for i in range(resp.ENCODED_KEPT + 5):
        encode_command((f"key-{i}", "x" * (resp.ENCODED_LONGEST + 1)), protocol._encode_value)
    assert len(resp._encoded_text) <= resp.ENCODED_KEPT
    assert all(len(text) <= resp.ENCODED_LONGEST for text in resp._encoded_text)


# -- the link protocols ----------------------------------------------------------------------


class _Batch:
    """Records how deep in a read's batch each message was handled."""

    def __init__(self) -> None:
        self.depth = 0
        self.ended = 0

    def begin(self) -> None:
        self.depth += 1

    def end(self) -> None:
        self.depth -= 1
        self.ended += 1


class _Sink:
    """The subscriber factory's side, as links.connect_subscriber sets it up."""

    def __init__(self, read_batch: _Batch | None = None) -> None:
        self.received: list[tuple[Any, Any]] = []
        self.read_batch = read_batch
        self.depths: list[int] = []

    def on_message(self, channel: Any, message: Any) -> None:
        self.received.append((channel, message))
        if self.read_batch is not None:
            self.depths.append(self.read_batch.depth)


def test_a_subscriber_link_hands_over_every_message_that_arrived_in_one_go() -> None:
    """Several pub/sub messages in one read are all delivered before the call returns
    (txredisapi's reader would take a reactor turn per bulk string)."""
    protocol = SubscriberProtocol(charset=None, convertNumbers=False)
    protocol.factory = _Sink()
    protocol.transport = _Transport()
    data = b"".join(
        array(bulk(b"message"), bulk(b"ns:/topic/%d" % i), bulk(b"payload %d" % i))
        for i in range(5)
    )
    protocol.dataReceived(data)
    assert protocol.factory.received == [
        (b"ns:/topic/%d" % i, b"payload %d" % i) for i in range(5)
    ]


def test_the_messages_of_one_read_are_delivered_inside_one_read_batch() -> None:
    """With a read batch (the server's OutputBatch), every message of one read is handled
    inside one begin/end, so its deliveries leave each connection in one write."""
    batch = _Batch()
    protocol = SubscriberProtocol(charset=None, convertNumbers=False)
    protocol.factory = _Sink(batch)
    protocol.transport = _Transport()
    data = b"".join(
        array(bulk(b"message"), bulk(b"ns:/topic/1"), bulk(b"payload %d" % i))
        for i in range(3)
    )
    protocol.dataReceived(data)
    assert protocol.factory.depths == [1, 1, 1]
    assert (batch.depth, batch.ended) == (0, 1)


def test_a_commands_link_answers_each_waiting_command_in_order() -> None:
    """Replies go to the commands that wait for them, in order; an error reply fails its
    command only."""
    protocol = CommandProtocol(charset=None)
    protocol.transport = _Transport()
    waiting = [protocol.replyQueue.get() for _ in range(3)]
    results: list[Any] = []
    for d in waiting:
        d.addCallback(protocol.handle_reply).addBoth(results.append)
    protocol.dataReceived(b":5\r\n-ERR wrong\r\n*2\r\n$1\r\na\r\n$-1\r\n")
    assert results[0] == 5
    assert results[1].check(txredisapi.ResponseError)
    assert results[2] == [b"a", None]
