"""Unacknowledged messages: per subscription, and one running total per session.

A subscription's unacked messages live in ``PendingMessages``, an ordered
dict the session fills on delivery and the ack tracker empties on ACK, NACK
and close. Every change also moves the ``UnackedTotal`` the subscription
shares with the other subscriptions of its session, so the broker checks a
session's total in constant time, whoever changed the dict.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stomp_chat.broker.broker import Subscription
    from stomp_chat.broker.message import Message


class UnackedTotal:
    """How many messages one session holds unacknowledged, across its subscriptions."""

    __slots__ = ("closed", "count", "starved")

    def __init__(self) -> None:
        self.count = 0
        #: Set once the session is closing: its subscriptions take nothing more.
        self.closed = False
        #: Queue subscriptions passed over because this total was at its
        #: limit: their queues are drained again once it falls.
        self.starved: dict[Subscription, None] = {}


class PendingMessages(OrderedDict[str, "Message"]):
    """One subscription's unacked messages by message-id, oldest first."""

    # One per subscription, thousands at once: no per-instance dict.
    __slots__ = ("total",)

    def __init__(self) -> None:
        super().__init__()
        #: Private until the broker shares its session's total with it.
        self.total = UnackedTotal()

    def share(self, total: UnackedTotal) -> None:
        """Count this subscription's messages in ``total`` from now on."""
        if total is self.total:
            return
        self.total.count -= len(self)
        total.count += len(self)
        self.total = total

    # Every way the session and the ack tracker change the dict, kept in step.

    def __setitem__(self, key: str, value: Message) -> None:
        if key not in self:
            self.total.count += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self.total.count -= 1

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            self.total.count -= 1
        return super().pop(key, *default)

    def popitem(self, last: bool = True) -> tuple[str, Message]:
        item = super().popitem(last)
        self.total.count -= 1
        return item

    def clear(self) -> None:
        self.total.count -= len(self)
        super().clear()

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value
