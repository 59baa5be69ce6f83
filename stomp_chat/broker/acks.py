"""Which delivered messages a session's subscriptions still wait to be acknowledged.

A pure piece of the broker the session calls: it finds what an ACK or NACK
names (each STOMP version names it differently), settles it, and gives back
what a closing session leaves unacknowledged. It writes nothing and keeps no
timers.
"""

from __future__ import annotations

from collections.abc import Iterator

from stomp_chat.broker.broker import ACK_CLIENT, Broker, Subscription
from stomp_chat.errors import ProtocolError, required_header
from stomp_chat.stomp.frame import V1_0, V1_2, Frame

#: A 1.2 ack id ends in ``@serial``; serials are small counters, so anything
#: longer is not one of ours (and ``int()`` refuses past 4,300 digits).
MAX_SERIAL_DIGITS = 18


class AckTracker:
    """The subscriptions of one session, by id and by serial, and their unacked messages."""

    __slots__ = ("_broker", "_by_serial", "_next_serial", "subscriptions")

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        #: Subscriptions by the client's id.
        self.subscriptions: dict[str, Subscription] = {}
        #: The same subscriptions by serial, which 1.2 ack ids name.
        self._by_serial: dict[int, Subscription] = {}
        self._next_serial = 0

    def __len__(self) -> int:
        return len(self.subscriptions)

    def __contains__(self, subscription_id: object) -> bool:
        return subscription_id in self.subscriptions

    def __iter__(self) -> Iterator[Subscription]:
        return iter(self.subscriptions.values())

    def next_serial(self) -> int:
        self._next_serial += 1
        return self._next_serial

    def add(self, subscription: Subscription) -> None:
        self.subscriptions[subscription.id] = subscription
        self._by_serial[subscription.serial] = subscription

    def remove(self, subscription_id: str) -> Subscription | None:
        """Forget a subscription; its unacked messages stay on it for the caller."""
        subscription = self.subscriptions.pop(subscription_id, None)
        if subscription is not None:
            del self._by_serial[subscription.serial]
        return subscription

    def target(self, frame: Frame, version: str) -> tuple[Subscription, str]:
        """Find which subscription and message an ACK or NACK names."""
        if version == V1_2:
            ack_id = required_header(frame, "id")
            message_id, _, serial = ack_id.rpartition("@")
            valid = len(serial) <= MAX_SERIAL_DIGITS and serial.isascii() and serial.isdigit()
            sub = self._by_serial.get(int(serial)) if valid else None
            if sub is None or message_id not in sub.pending:
                raise ProtocolError(
                    "unknown ack id", f"no unacknowledged message with id {ack_id[:200]!r}"
                )
            return sub, message_id
        message_id = required_header(frame, "message-id")
        if version == V1_0:
            candidates = list(self.subscriptions.values())
        else:
            sub_id = required_header(frame, "subscription")
            found = self.subscriptions.get(sub_id)
            if found is None:
                raise ProtocolError(
                    "no such subscription", f"no subscription with id {sub_id[:200]!r}"
                )
            candidates = [found]
        for sub in candidates:
            if message_id in sub.pending:
                return sub, message_id
        raise ProtocolError(
            "unknown message-id",
            f"no unacknowledged message with message-id {message_id[:200]!r}",
        )

    def settle(self, sub: Subscription, message_id: str, *, requeue: bool) -> None:
        """ACK or NACK one message, or every earlier one too in ``client`` mode."""
        pending = sub.pending
        if message_id not in pending:
            return  # settled meanwhile, e.g. by an earlier cumulative ACK
        if sub.ack_mode == ACK_CLIENT:
            settled = []
            while pending:
                mid, message = pending.popitem(last=False)
                settled.append(message)
                if mid == message_id:
                    break
        else:
            settled = [pending.pop(message_id)]
        if requeue:
            self._broker.requeue(sub.key, settled)
        else:
            self._broker.acknowledged(sub, settled)
        # Room under the prefetch again: the queue may send the next message.
        self._broker.settled(sub)

    def release(self) -> None:
        """Unsubscribe everything and give every unacked message back to the broker.

        Everything is unsubscribed first: a message given back must not land
        on another subscription of this same closing session.
        """
        subscriptions = list(self.subscriptions.values())
        self.subscriptions.clear()
        self._by_serial.clear()
        for sub in subscriptions:
            # No queue picks this session for a message while it goes.
            sub.pending.total.closed = True
        unacked = [(sub.key, list(sub.pending.values())) for sub in subscriptions]
        for sub in subscriptions:
            sub.pending.clear()
            self._broker.unsubscribe(sub)
        for key, messages in unacked:
            if messages:
                self._broker.requeue(key, messages)
