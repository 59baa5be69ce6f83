"""The relay's wire format: what one server tells the others about one message.

A payload on a channel is one or more records back to back (messages
published in one reactor turn cross Redis together); a record is
``[origin,local,headers,length]``, LF, then ``length`` bytes of body, or
``[origin,local,headers,seq,length]`` for a chat message Redis numbered.
``local`` marks a record the origin delivers to itself from the channel
too (chat messages, whose order Redis decides).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

#: One decoded record: origin node, local flag, headers, seq (None unless numbered), body.
Record = tuple[str, bool, dict[str, str], int | None, bytes]


def meta_prefix(origin: str, local: bool, headers: dict[str, str]) -> bytes:
    """A record's metadata up to its body length: ``[origin,local,headers,``."""
    meta = json.dumps([origin, local, headers], separators=(",", ":"), ensure_ascii=False)
    return meta[:-1].encode("utf-8") + b","


def encode_envelope(
    origin: str, local: bool, headers: dict[str, str], body: bytes, seq: int | None = None
) -> bytes:
    """One record: ``[origin,local,headers,(seq,)length]``, LF, then the body."""
    numbered = b"" if seq is None else b"%d," % seq
    return meta_prefix(origin, local, headers) + numbered + b"%d]\n" % len(body) + body


#: Metadata prefixes already read (``[origin,local,headers,``), with what they say: a
#: server's records repeat a handful of them, so most records skip JSON.
_known_prefixes: dict[bytes, tuple[str, bool, dict[str, str]]] = {}
#: How many prefixes are remembered before the memory starts over.
KNOWN_PREFIXES = 1024


def decode_envelopes(payload: bytes) -> Iterator[Record]:
    """The records of a payload; ValueError at the first that is not what we send."""
    pos, end = 0, len(payload)
    known = _known_prefixes
    while pos < end:
        newline = payload.find(b"\n", pos)
        if newline < 0:
            raise ValueError("no metadata line")
        # The common case: a known prefix, then ``seq,length]`` in plain digits.
        last = payload.rfind(b",", pos, newline)
        before = payload.rfind(b",", pos, last) if last > pos else -1
        seen = known.get(payload[pos : before + 1]) if before > pos else None
        if seen is not None and payload[newline - 1] == 93:  # ]
            seq_text = payload[before + 1 : last]
            length_text = payload[last + 1 : newline - 1]
            if _plain(seq_text) and _plain(length_text) and seq_text[0] != 48:  # no 0
                length = int(length_text)
                body_start = newline + 1
                pos = body_start + length
                if pos > end:
                    raise ValueError("metadata has the wrong types")
                yield seen[0], seen[1], seen[2], int(seq_text), payload[body_start:pos]
                continue
        record, pos = _decode_json(payload, pos, newline, end)
        yield record


def _plain(digits: bytes) -> bool:
    """Digits as JSON writes an integer: no sign, no leading zero."""
    return digits.isdigit() and (digits[0] != 48 or len(digits) == 1)


def _decode_json(payload: bytes, pos: int, newline: int, end: int) -> tuple[Record, int]:
    """One record read in full; its prefix is remembered when its numbers are plain."""
    line = payload[pos:newline]
    meta = json.loads(line)
    if not (isinstance(meta, list) and len(meta) in (4, 5)):
        raise ValueError("metadata is not [origin, local, headers, (seq,) length]")
    if len(meta) == 5:
        origin, local, headers, seq, length = meta
        if not (isinstance(seq, int) and not isinstance(seq, bool) and seq > 0):
            raise ValueError("a seq is a positive integer")
    else:
        origin, local, headers, length = meta
        seq = None
    if not (
        isinstance(origin, str)
        and isinstance(local, bool)
        and isinstance(headers, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        and isinstance(length, int)
        and not isinstance(length, bool)
        and 0 <= length <= end - newline - 1
    ):
        raise ValueError("metadata has the wrong types")
    if seq is not None and line.endswith(b"]"):
        last = line.rfind(b",")
        before = line.rfind(b",", 0, last)
        if _plain(line[before + 1 : last]) and _plain(line[last + 1 : -1]):
            if len(_known_prefixes) >= KNOWN_PREFIXES:
                _known_prefixes.clear()
            _known_prefixes[line[: before + 1]] = (origin, local, headers)
    stop = newline + 1 + length
    return (origin, local, headers, seq, payload[newline + 1 : stop]), stop


def decode_envelope(payload: bytes) -> Record:
    """The single record of a payload."""
    records = list(decode_envelopes(payload))
    if len(records) != 1:
        raise ValueError(f"expected one record, found {len(records)}")
    return records[0]
