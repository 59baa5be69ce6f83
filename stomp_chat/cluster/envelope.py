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


def decode_envelopes(payload: bytes) -> Iterator[Record]:
    """The records of a payload; ValueError at the first that is not what we send."""
    pos, end = 0, len(payload)
    while pos < end:
        newline = payload.find(b"\n", pos)
        if newline < 0:
            raise ValueError("no metadata line")
        meta = json.loads(payload[pos:newline])
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
        pos = newline + 1 + length
        yield origin, local, headers, seq, payload[newline + 1 : pos]


def decode_envelope(payload: bytes) -> Record:
    """The single record of a payload."""
    records = list(decode_envelopes(payload))
    if len(records) != 1:
        raise ValueError(f"expected one record, found {len(records)}")
    return records[0]
