"""The in-process broker: routes published messages to subscriptions.

``/topic/...`` fans out to every subscriber; ``/queue/...`` gives each message
to one subscriber (round-robin) and keeps it until a subscriber exists;
``/user/...`` reaches the sessions of one user. The broker is pure: it knows
subscribers only through ``Subscriber.deliver``, and keeps no timers.
"""

from __future__ import annotations

import itertools
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Protocol

from stomp_chat.broker.message import Message

TOPIC_PREFIX = "/topic/"
QUEUE_PREFIX = "/queue/"
USER_PREFIX = "/user/"
APP_PREFIX = "/app/"

ACK_AUTO = "auto"
ACK_CLIENT = "client"
ACK_CLIENT_INDIVIDUAL = "client-individual"
ACK_MODES = frozenset({ACK_AUTO, ACK_CLIENT, ACK_CLIENT_INDIVIDUAL})

#: Headers a client may not set on a MESSAGE through SEND.
RESERVED_HEADERS = frozenset(
    {
        "destination",
        "message-id",
        "subscription",
        "ack",
        "content-length",
        "receipt",
        "transaction",
        "receipt-id",
    }
)


class BrokerError(Exception):
    """A request the broker refuses; the session reports it to the client."""


class Subscriber(Protocol):
    """What the broker needs of a session."""

    def deliver(self, subscription: Subscription, message: Message) -> None: ...


class Subscription:
    """One SUBSCRIBE of one session, with the messages it has not acked yet."""

    __slots__ = ("ack_mode", "destination", "id", "key", "pending", "serial", "subscriber", "wire")

    def __init__(
        self,
        subscriber: Subscriber,
        subscription_id: str,
        destination: str,
        ack_mode: str = ACK_AUTO,
        serial: int = 0,
    ) -> None:
        self.subscriber = subscriber
        self.id = subscription_id
        #: What the client subscribed to, as it wrote it.
        self.destination = destination
        #: Where the broker routes it (differs for ``/user/`` destinations).
        self.key = destination
        self.ack_mode = ack_mode
        self.serial = serial
        #: Unacked messages by message-id, oldest first (client ack modes only).
        self.pending: OrderedDict[str, Message] = OrderedDict()
        #: The encoded ``subscription:`` header line, set by the session.
        self.wire = b""


class _Queue:
    """A point-to-point destination: competing consumers and a backlog."""

    __slots__ = ("backlog", "next_index", "subscriptions")

    def __init__(self) -> None:
        self.subscriptions: list[Subscription] = []
        self.backlog: deque[Message] = deque()
        self.next_index = 0

    def next_subscription(self) -> Subscription:
        subs = self.subscriptions
        if self.next_index >= len(subs):
            self.next_index = 0
        sub = subs[self.next_index]
        self.next_index += 1
        return sub


class Broker:
    """Destinations and their subscriptions; one per server process."""

    def __init__(self, *, max_queue_backlog: int = 10_000, node_id: str | None = None) -> None:
        self.max_queue_backlog = max_queue_backlog
        self.node_id = node_id or secrets.token_hex(4)
        self._ids = itertools.count(1)
        self._topics: dict[str, list[Subscription]] = {}
        self._queues: dict[str, _Queue] = {}
        #: Called with every message published locally, e.g. to relay it to
        #: other server processes.
        self.published_listeners: list[Callable[[str, Message], object]] = []
        #: Messages published here (a counter for metrics).
        self.published_count = 0

    # -- subscriptions ---------------------------------------------------

    def subscribe(self, subscription: Subscription, principal: str) -> None:
        """Start routing a destination's messages to ``subscription``."""
        destination = subscription.destination
        if destination.startswith(USER_PREFIX):
            subscription.key = user_destination_key(principal, destination)
        elif not destination.startswith((TOPIC_PREFIX, QUEUE_PREFIX)):
            raise BrokerError(
                f"cannot subscribe to {destination!r}: destinations start with "
                "/topic/, /queue/ or /user/"
            )
        if destination.startswith(QUEUE_PREFIX):
            queue = self._queues.get(destination)
            if queue is None:
                queue = self._queues[destination] = _Queue()
            queue.subscriptions.append(subscription)
            self._drain(queue)
        else:
            self._topics.setdefault(subscription.key, []).append(subscription)

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop routing to ``subscription``; its unacked queue messages go back."""
        key = subscription.key
        if key.startswith(QUEUE_PREFIX):
            queue = self._queues.get(key)
            if queue is not None and subscription in queue.subscriptions:
                queue.subscriptions.remove(subscription)
                self.requeue(key, list(subscription.pending.values()))
                if not queue.subscriptions and not queue.backlog:
                    del self._queues[key]
        else:
            subs = self._topics.get(key)
            if subs is not None and subscription in subs:
                if len(subs) == 1:
                    del self._topics[key]
                else:
                    # Copy on write: a fan-out in progress keeps its list.
                    self._topics[key] = [s for s in subs if s is not subscription]
        subscription.pending.clear()

    # -- publishing ------------------------------------------------------

    def new_message_id(self) -> str:
        return f"{self.node_id}-{next(self._ids)}"

    def check_destination(self, destination: str) -> None:
        """Raise BrokerError unless messages can be sent to ``destination``."""
        if destination.startswith(TOPIC_PREFIX):
            return
        if destination.startswith(QUEUE_PREFIX):
            queue = self._queues.get(destination)
            if queue is not None and len(queue.backlog) >= self.max_queue_backlog:
                raise BrokerError(
                    f"queue {destination} is full ({self.max_queue_backlog} messages waiting)"
                )
            return
        if destination.startswith(USER_PREFIX):
            name, _, rest = destination[len(USER_PREFIX) :].partition("/")
            if name and rest.startswith(("queue/", "topic/")):
                return
            raise BrokerError(
                f"cannot send to {destination!r}: user destinations look like "
                "/user/{name}/queue/..."
            )
        raise BrokerError(
            f"cannot send to {destination!r}: destinations start with "
            "/topic/, /queue/, /user/ or /app/"
        )

    def publish(
        self,
        destination: str,
        body: bytes,
        headers: dict[str, str] | None = None,
    ) -> Message:
        """Route a message to its destination's subscribers now."""
        self.check_destination(destination)
        shown = destination
        if destination.startswith(USER_PREFIX):
            # A message for /user/{name}/queue/x shows as /user/queue/x.
            shown = USER_PREFIX + destination[len(USER_PREFIX) :].partition("/")[2]
        message = Message(shown, self.new_message_id(), body, headers)
        self.published_count += 1
        self.route(destination, message)
        for listener in self.published_listeners:
            listener(destination, message)
        return message

    def route(self, key: str, message: Message) -> None:
        """Deliver a message to the local subscribers of routing ``key``."""
        if key.startswith(QUEUE_PREFIX):
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue()
            queue.backlog.append(message)
            self._drain(queue)
            return
        subs = self._topics.get(key)
        if subs:
            for sub in subs:
                sub.subscriber.deliver(sub, message)

    def send_to_user(
        self, principal: str, destination: str, body: bytes, headers: dict[str, str] | None = None
    ) -> Message:
        """Publish to ``/user/queue/...`` of every session of ``principal``."""
        return self.publish(user_destination_key(principal, destination), body, headers)

    def requeue(self, destination: str, messages: Iterable[Message]) -> None:
        """Put unacked queue messages back at the head of their queue, in order."""
        if not destination.startswith(QUEUE_PREFIX):
            return
        messages = list(messages)
        if not messages:
            return
        queue = self._queues.get(destination)
        if queue is None:
            queue = self._queues[destination] = _Queue()
        queue.backlog.extendleft(reversed(messages))
        self._drain(queue)

    def _drain(self, queue: _Queue) -> None:
        backlog = queue.backlog
        while backlog and queue.subscriptions:
            sub = queue.next_subscription()
            sub.subscriber.deliver(sub, backlog.popleft())

    # -- introspection ---------------------------------------------------

    def subscriber_count(self, destination: str) -> int:
        if destination.startswith(QUEUE_PREFIX):
            queue = self._queues.get(destination)
            return len(queue.subscriptions) if queue else 0
        return len(self._topics.get(destination, ()))

    def queue_depth(self, destination: str) -> int:
        queue = self._queues.get(destination)
        return len(queue.backlog) if queue else 0


def user_destination_key(principal: str, destination: str) -> str:
    """``/user/queue/x`` for user ``alice`` routes as ``/user/alice/queue/x``."""
    if not destination.startswith(USER_PREFIX):
        raise BrokerError(f"{destination!r} is not a /user/ destination")
    rest = destination[len(USER_PREFIX) :]
    if not rest.startswith(("queue/", "topic/")):
        raise BrokerError(
            f"cannot subscribe to {destination!r}: user destinations look like /user/queue/..."
        )
    return f"{USER_PREFIX}{principal}/{rest}"
