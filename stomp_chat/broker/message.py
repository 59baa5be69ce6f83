"""A published message, encoded once and shared by every delivery."""

from __future__ import annotations

from stomp_chat.stomp.frame import V1_0, escape_header

#: Set on the MESSAGE frames of a message delivered before and given back.
REDELIVERED_HEADER = "redelivered"
#: How many earlier deliveries of the message came back unacknowledged.
DELIVERY_COUNT_HEADER = "x-delivery-count"
#: On a dead letter: the queue it was sent to.
ORIGINAL_DESTINATION_HEADER = "x-original-destination"
#: A message's cost in memory beyond the bytes of its body and headers
#: (the objects themselves, measured with tracemalloc on CPython 3.11):
#: what makes many tiny messages count.
MESSAGE_OVERHEAD = 400
#: The same for each header (its strings and dictionary slot).
HEADER_OVERHEAD = 100


def _representable_in_1_0(name: str, value: str) -> bool:
    return not any(c in name for c in "\r\n:") and "\n" not in value and "\r" not in value


class Message:
    """One message on its way to subscribers.

    The MESSAGE frame differs between deliveries only by ``subscription`` and
    ``ack``, so the rest is encoded once per protocol version and reused:
    fan-out to N subscribers costs one join per subscriber, not N encodings.
    """

    __slots__ = ("body", "destination", "headers", "heads", "message_id", "redeliveries", "tail")

    def __init__(
        self,
        destination: str,
        message_id: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        redeliveries: int = 0,
    ) -> None:
        self.destination = destination
        self.message_id = message_id
        self.body = body
        self.headers = headers or {}
        #: How many times this message came back unacknowledged (NACK,
        #: disconnect, a failed write) and was delivered again.
        self.redeliveries = redeliveries
        self.tail = b"\n" + body + b"\x00"
        #: The encoded heads by STOMP version, as ``head`` fills them in (read
        #: directly on the delivery path, where a call costs more than the lookup).
        self.heads: dict[str, bytes] = {}

    @property
    def size(self) -> int:
        """What holding this message costs, in bytes, as the queue limits count it."""
        headers = sum(
            len(name) + len(value) + HEADER_OVERHEAD for name, value in self.headers.items()
        )
        # The body is held twice: as ``body`` and inside the encoded ``tail``.
        return (
            len(self.body)
            + len(self.tail)
            + len(self.destination)
            + len(self.message_id)
            + headers
            + MESSAGE_OVERHEAD
        )

    def redelivered(self) -> Message:
        """The same message, marked for its next delivery after coming back.

        A new object, since the encoded head is cached: MESSAGE frames of a
        redelivered message carry ``redelivered:true`` and
        ``x-delivery-count`` (how many earlier deliveries came back).
        """
        count = self.redeliveries + 1
        headers = dict(self.headers)
        headers[REDELIVERED_HEADER] = "true"
        headers[DELIVERY_COUNT_HEADER] = str(count)
        return Message(self.destination, self.message_id, self.body, headers, count)

    def dead_lettered(self, destination: str, original: str) -> Message:
        """The same message, moved to the dead-letter queue ``destination``."""
        headers = dict(self.headers)
        headers[ORIGINAL_DESTINATION_HEADER] = original
        headers[DELIVERY_COUNT_HEADER] = str(self.redeliveries + 1)
        headers.pop(REDELIVERED_HEADER, None)
        return Message(destination, self.message_id, self.body, headers)

    def head(self, version: str) -> bytes:
        """``MESSAGE``, its shared headers, each line ending in LF (no blank line)."""
        cached = self.heads.get(version)
        if cached is None:
            cached = self.heads[version] = self._encode_head(version)
        return cached

    def _encode_head(self, version: str) -> bytes:
        lines = [
            "MESSAGE",
            f"destination:{escape_header(self.destination, version)}",
            f"message-id:{escape_header(self.message_id, version)}",
            f"content-length:{len(self.body)}",
        ]
        for name, value in self.headers.items():
            if version == V1_0 and not _representable_in_1_0(name, value):
                continue  # 1.0 cannot escape: such a header would break its framing
            lines.append(f"{escape_header(name, version)}:{escape_header(value, version)}")
        lines.append("")
        return "\n".join(lines).encode("utf-8")
