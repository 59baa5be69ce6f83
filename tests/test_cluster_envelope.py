"""The envelope codec's short cut: records whose metadata prefix was read before skip JSON,
and give exactly what reading them in full gives, refusals included."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stomp_chat.cluster import envelope
from stomp_chat.cluster.envelope import (
    KNOWN_PREFIXES,
    decode_envelope,
    decode_envelopes,
    encode_envelope,
    meta_prefix,
)


def read_in_full(payload: bytes) -> list[Any]:
    """The records as JSON reads them, with no prefix remembered (the reference)."""
    records = []
    pos = 0
    while pos < len(payload):
        newline = payload.index(b"\n", pos)
        record, pos = envelope._decode_json(payload, pos, newline, len(payload))
        records.append(record)
    envelope._known_prefixes.clear()
    return records


def outcome(payload: bytes) -> Any:
    try:
        return list(decode_envelopes(payload))
    except ValueError as error:
        return ("refused", str(error))


_headers = st.dictionaries(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=8),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
    max_size=3,
)


@settings(max_examples=200, deadline=None)
@given(
    origin=st.text(st.characters(blacklist_categories=("Cs",)), max_size=10),
    headers=_headers,
    seqs=st.lists(st.integers(1, 10**12), min_size=1, max_size=5),
    bodies=st.lists(st.binary(max_size=30), min_size=5, max_size=5),
)
def test_known_prefixes_decode_as_json_does(
    origin: str, headers: dict[str, str], seqs: list[int], bodies: list[bytes]
) -> None:
    """Numbered records from one origin, with headers holding commas, brackets or digits:
    the second reading (prefix known) equals the first (JSON)."""
    envelope._known_prefixes.clear()
    payload = b"".join(
        encode_envelope(origin, True, headers, body, seq)
        for seq, body in zip(seqs, bodies, strict=False)
    )
    first = list(decode_envelopes(payload))
    assert envelope._known_prefixes, "a numbered record's prefix is remembered"
    assert list(decode_envelopes(payload)) == first == read_in_full(payload)


@pytest.mark.parametrize(
    "tail",
    [
        b"0,4]\nbody",  # seq 0
        b"007,4]\nbody",  # JSON has no leading zeros
        b"-7,4]\nbody",  # negative
        b"7,40]\nbody",  # longer than what follows
        b"7,04]\nbody",
        b"7, 4]\nbody",  # spaces: read as JSON (and accepted there)
        b"7,4}\nbody",  # not an array
        b"true,4]\nbody",
        b"7,4]body",  # no metadata line
    ],
)
def test_a_known_prefix_with_a_bad_tail_is_refused_as_json_refuses_it(tail: bytes) -> None:
    """Whatever follows a known prefix, the outcome is the one JSON reading gives."""
    envelope._known_prefixes.clear()
    prefix = meta_prefix("node-a", True, {"content-type": "application/json"})
    list(decode_envelopes(prefix + b"1,2]\nhi"))  # remembers the prefix
    assert envelope._known_prefixes
    fast = outcome(prefix + tail)
    envelope._known_prefixes.clear()
    assert fast == outcome(prefix + tail)


def test_records_without_a_seq_are_read_in_full_and_not_confused_with_numbered_ones() -> None:
    """A plain topic's record ([origin, local, headers, length]) next to numbered ones."""
    envelope._known_prefixes.clear()
    numbered = encode_envelope("n1", True, {"k": "v"}, b"abc", 5)
    plain = encode_envelope("n1", False, {"k": "v"}, b"12,3")
    payload = numbered + plain + numbered
    assert list(decode_envelopes(payload)) == [
        ("n1", True, {"k": "v"}, 5, b"abc"),
        ("n1", False, {"k": "v"}, None, b"12,3"),
        ("n1", True, {"k": "v"}, 5, b"abc"),
    ]
    assert decode_envelope(plain) == ("n1", False, {"k": "v"}, None, b"12,3")


def test_the_memory_of_prefixes_is_bounded() -> None:
    """Many origins do not grow the memory past its size: it starts over."""
    envelope._known_prefixes.clear()
    for i in range(KNOWN_PREFIXES + 10):
        list(decode_envelopes(encode_envelope(f"node-{i}", True, {}, b"x", 1)))
    assert 0 < len(envelope._known_prefixes) <= KNOWN_PREFIXES
    assert decode_envelope(encode_envelope("node-0", True, {}, b"y", 2)) == (
        "node-0", True, {}, 2, b"y",
    )


def test_meta_prefix_is_the_json_of_a_record_up_to_its_seq() -> None:
    """The cached metadata the relay sends is what JSON writes for the record's head."""
    prefix = meta_prefix("n", True, {"a": "b,c"})
    assert json.loads(prefix + b"3,0]") == ["n", True, {"a": "b,c"}, 3, 0]
