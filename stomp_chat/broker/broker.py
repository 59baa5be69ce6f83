"""The in-process broker: routes published messages to subscriptions.

``/topic/...`` fans out to every subscriber; ``/queue/...`` gives each message
to one subscriber (round-robin) and keeps it until a subscriber exists;
``/user/...`` reaches the sessions of one user. The broker is pure: it knows
subscribers only through ``Subscriber.deliver`` and ``Subscriber.fail``, and
keeps no timers.

Every loop over subscribers is isolated: a subscriber whose delivery raises
(say, a transport that is already closing) is failed and unsubscribed, and
the loop goes on, so the publisher and the other subscribers never see it.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar
from weakref import WeakKeyDictionary

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from stomp_chat.broker.message import (
    DELIVERY_COUNT_HEADER,
    ORIGINAL_DESTINATION_HEADER,
    REDELIVERED_HEADER,
    Message,
)
from stomp_chat.broker.queues import BrokerLimits, QueueFull, QueueSet
from stomp_chat.broker.unacked import PendingMessages, UnackedTotal

log = Logger()

QueueSetT = TypeVar("QueueSetT", bound=QueueSet)

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
        REDELIVERED_HEADER,
        DELIVERY_COUNT_HEADER,
        ORIGINAL_DESTINATION_HEADER,
    }
)


class BrokerError(Exception):
    """A request the broker refuses; the session reports it to the client."""


class Subscriber(Protocol):
    """What the broker needs of a session."""

    def deliver(self, subscription: Subscription, message: Message) -> None: ...

    def fail(self, message: str, detail: str = "") -> None:
        """Tell the client what went wrong, if it can still hear, and close."""


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
        self.pending = PendingMessages()
        #: The encoded ``subscription:`` header line, set by the session.
        self.wire = b""


class Broker:
    """Destinations and their subscriptions; one per server process."""

    def __init__(
        self,
        *,
        limits: BrokerLimits | None = None,
        node_id: str | None = None,
    ) -> None:
        self.limits = limits if limits is not None else BrokerLimits()
        self.node_id = node_id or secrets.token_hex(4)
        self._ids = itertools.count(1)
        self._topics: dict[str, list[Subscription]] = {}
        #: Every queue destination (read it, do not change it).
        self.queues = QueueSet(self.limits, self._deliver, self._has_room)
        #: Each session's unacked total, shared by its subscriptions.
        self._unacked: WeakKeyDictionary[Any, UnackedTotal] = WeakKeyDictionary()
        #: Subscribers failed because a delivery to them raised.
        self.failed_deliveries = 0
        #: Called with every message published locally, e.g. to relay it to
        #: other server processes.
        self.published_listeners: list[Callable[[str, Message], object]] = []
        #: Messages published here (a counter for metrics).
        self.published_count = 0
        #: Told ``(key, True)`` when a topic or user routing key gets its first
        #: subscriber and ``(key, False)`` when its last one leaves, e.g. so that
        #: a cluster relay listens to other processes only for what is wanted here.
        self.interest_listeners: list[Callable[[str, bool], object]] = []

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
        self._share_total(subscription)
        if destination.startswith(QUEUE_PREFIX):
            try:
                self.queues.add_subscription(destination, subscription)
            except QueueFull as error:
                raise BrokerError(str(error)) from None
        else:
            subs = self._topics.get(subscription.key)
            if subs is None:
                self._topics[subscription.key] = [subscription]
                self._interest(subscription.key, True)
            else:
                subs.append(subscription)

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop routing to ``subscription``; its unacked queue messages go back."""
        key = subscription.key
        if key.startswith(QUEUE_PREFIX):
            pending = list(subscription.pending.values())
            if self.queues.remove_subscription(key, subscription, pending):
                subscription.pending.clear()
        else:
            subs = self._topics.get(key)
            if subs is not None and subscription in subs:
                if len(subs) == 1:
                    del self._topics[key]
                    self._interest(key, False)
                else:
                    # Copy on write: a fan-out in progress keeps its list.
                    self._topics[key] = [s for s in subs if s is not subscription]
        subscription.pending.clear()
        total = subscription.pending.total
        total.starved.pop(subscription, None)
        self._wake(total)

    def _interest(self, key: str, wanted: bool) -> None:
        for listener in self.interest_listeners:
            try:
                listener(key, wanted)
            except Exception:
                log.failure("an interest listener failed for {key}", key=key)

    def wanted_keys(self) -> list[str]:
        """The topic and user routing keys that have subscribers here now."""
        return list(self._topics)

    def topic_subscriptions(self, key: str) -> tuple[Subscription, ...]:
        """The subscriptions a topic's messages go to now (e.g. to end some of them)."""
        return tuple(self._topics.get(key, ()))

    # -- publishing ------------------------------------------------------

    def new_message_id(self) -> str:
        return f"{self.node_id}-{next(self._ids)}"

    def check_destination(self, destination: str, size: int = 0) -> None:
        """Raise BrokerError unless a message of ``size`` bytes can go to ``destination``."""
        if destination.startswith(TOPIC_PREFIX):
            return
        if destination.startswith(QUEUE_PREFIX):
            try:
                self.queues.check(destination, size)
            except QueueFull as error:
                raise BrokerError(str(error)) from None
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
        """Route a message to its destination's subscribers now.

        A queue that cannot hold the message raises BrokerError: a SEND is
        refused, never silently dropped.
        """
        self.check_destination(destination)
        shown = destination
        if destination.startswith(USER_PREFIX):
            # A message for /user/{name}/queue/x shows as /user/queue/x.
            shown = USER_PREFIX + destination[len(USER_PREFIX) :].partition("/")[2]
        message = Message(shown, self.new_message_id(), body, headers)
        self.published_count += 1
        self.route(destination, message)
        for listener in self.published_listeners:
            try:
                listener(destination, message)
            except Exception:
                # Delivered here already: one listener (the relay, read state) failing
                # must not keep the others from hearing of it nor fail the publisher.
                log.failure("a listener of {destination} failed", destination=destination)
        return message

    def accept(
        self, destination: str, body: bytes, headers: dict[str, str] | None = None
    ) -> Deferred[Any] | None:
        """Publish a client's SEND: None once routed, or a Deferred that fires once
        queues that live outside this process (cluster mode) have stored it."""
        if self.queues.remote and destination.startswith(QUEUE_PREFIX):
            self.check_destination(destination)
            message = Message(destination, self.new_message_id(), body, headers)
            self.published_count += 1
            return self.queues.submit(destination, message)
        self.publish(destination, body, headers)
        return None

    def route(self, key: str, message: Message) -> None:
        """Deliver a message to the local subscribers of routing ``key``."""
        if key.startswith(QUEUE_PREFIX):
            try:
                self.queues.put(key, message)
            except QueueFull as error:
                raise BrokerError(str(error)) from None
            return
        subs = self._topics.get(key)
        if subs:
            for sub in subs:
                # Inlined _deliver: this loop is the chat path's hottest.
                if sub.ack_mode != ACK_AUTO and not self._has_room(sub):
                    self._overflowed(sub)
                    continue
                try:
                    sub.subscriber.deliver(sub, message)
                except Exception:
                    self._delivery_failed(sub, message)

    def send_to_user(
        self, principal: str, destination: str, body: bytes, headers: dict[str, str] | None = None
    ) -> Message:
        """Publish to ``/user/queue/...`` of every session of ``principal``."""
        return self.publish(user_destination_key(principal, destination), body, headers)

    def requeue(self, destination: str, messages: Iterable[Message]) -> None:
        """Give unacked queue messages back to the head of their queue, in order.

        Each is delivered again marked ``redelivered``; one that has come back
        more than ``max_redeliveries`` times goes to the dead-letter queue.
        """
        if not destination.startswith(QUEUE_PREFIX):
            return
        messages = list(messages)
        if messages:
            self.queues.give_back(destination, messages)

    def acknowledged(self, subscription: Subscription, messages: list[Message]) -> None:
        """A client acknowledged ``messages``: queues kept elsewhere forget them there."""
        if subscription.key.startswith(QUEUE_PREFIX):
            self.queues.acknowledged(subscription.key, messages)

    def use_queues(
        self,
        factory: Callable[
            [BrokerLimits, Callable[[Subscription, Message], bool],
             Callable[[Subscription], bool]],
            QueueSetT,
        ],
    ) -> QueueSetT:
        """Replace the local queues (before any subscription) by ones ``factory`` makes,
        e.g. queues that live in Redis in cluster mode."""
        if len(self.queues):
            raise RuntimeError("the queues are in use already")
        queues = factory(self.limits, self._deliver, self._has_room)
        self.queues = queues
        return queues

    def settled(self, subscription: Subscription) -> None:
        """``subscription`` acknowledged messages: its queue may give it more now."""
        self._drain_for(subscription)
        self._wake(subscription.pending.total)

    def _drain_for(self, subscription: Subscription) -> None:
        if subscription.key.startswith(QUEUE_PREFIX):
            queue = self.queues.get(subscription.key)
            if queue is not None and queue.backlog:
                self.queues.drain(queue)

    def _share_total(self, subscription: Subscription) -> None:
        """Count ``subscription``'s unacked messages in its session's total."""
        subscriber = subscription.subscriber
        try:
            total = self._unacked.get(subscriber)
            if total is None:
                total = self._unacked[subscriber] = UnackedTotal()
        except TypeError:  # a subscriber that cannot be weakly referenced keeps its own
            return
        subscription.pending.share(total)

    def _has_room(self, sub: Subscription) -> bool:
        """Whether ``sub`` may take one more message under the prefetch and the session total."""
        pending = sub.pending
        total = pending.total
        if total.closed:
            return False
        if sub.ack_mode == ACK_AUTO:
            return True
        if len(pending) >= self.limits.prefetch:
            return False
        if total.count >= self.limits.max_unacked:
            if sub.key.startswith(QUEUE_PREFIX):
                total.starved[sub] = None
            return False
        return True

    def _wake(self, total: UnackedTotal) -> None:
        """Drain again the queues a session was passed over in, once its total falls."""
        if total.starved and total.count < self.limits.max_unacked and not total.closed:
            starved = list(total.starved)
            total.starved.clear()
            for sub in starved:
                self._drain_for(sub)

    def _overflowed(self, sub: Subscription) -> None:
        """A topic subscription that stopped acknowledging: topics do not buffer, so close it."""
        self.unsubscribe(sub)
        limits = self.limits
        try:
            sub.subscriber.fail(
                "too many unacknowledged messages",
                f"subscription {sub.id} on {sub.destination} reached its limit of unacknowledged "
                f"messages ({limits.prefetch} per subscription, {limits.max_unacked} per "
                "connection); acknowledge messages as they arrive",
            )
        except Exception:
            log.failure("failing the session of subscription {subscription} failed",
                        subscription=sub.id)

    # -- isolation -------------------------------------------------------

    def _deliver(self, sub: Subscription, message: Message) -> bool:
        """Hand ``message`` to one subscriber; a failure stays that subscriber's."""
        try:
            sub.subscriber.deliver(sub, message)
        except Exception:
            self._delivery_failed(sub, message)
            return False
        return True

    def _delivery_failed(self, sub: Subscription, message: Message) -> None:
        """Fail the subscriber whose delivery raised, give the message back, go on."""
        self.failed_deliveries += 1
        log.failure(
            "delivery of {message_id} to subscription {subscription} on {destination} "
            "failed: closing that session",
            message_id=message.message_id,
            subscription=sub.id,
            destination=sub.key,
        )
        # The message did not (surely) arrive: a queue gives it to someone
        # else, ahead of the subscriber's other unacked messages.
        sub.pending.pop(message.message_id, None)
        self.requeue(sub.key, (message,))
        try:
            sub.subscriber.fail(
                "delivery failed", "the server could not deliver a message to this connection"
            )
        except Exception:
            log.failure("failing the session of subscription {subscription} failed too",
                        subscription=sub.id)
        # Whatever the session managed, this subscription gets nothing more.
        self.unsubscribe(sub)

    # -- introspection ---------------------------------------------------

    def subscriber_count(self, destination: str) -> int:
        if destination.startswith(QUEUE_PREFIX):
            return self.queues.subscriber_count(destination)
        return len(self._topics.get(destination, ()))

    def queue_depth(self, destination: str) -> int:
        return self.queues.depth(destination)

    @property
    def queue_count(self) -> int:
        """How many queue destinations exist now."""
        return len(self.queues)

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in every queue, as the limits count them."""
        return self.queues.queued_bytes

    @property
    def dead_lettered(self) -> int:
        """Messages moved to the dead-letter queue."""
        return self.queues.dead_lettered

    @property
    def dead_letters_dropped(self) -> int:
        """Dead letters dropped because the dead-letter queue was full."""
        return self.queues.dead_letters_dropped


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
