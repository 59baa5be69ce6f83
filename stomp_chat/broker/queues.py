"""Point-to-point destinations: competing consumers, a bounded backlog, dead letters.

A ``QueueSet`` owns every ``/queue/...`` destination of one broker and the
limits on what they hold: how many queues exist, how many messages wait in
one queue and how many bytes wait across all of them. Messages delivered and
not yet acknowledged are the subscribers' (bounded by the prefetch); a
message that comes back too often goes to the dead-letter queue instead of
circulating.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from stomp_chat.broker.message import ORIGINAL_DESTINATION_HEADER, Message

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from stomp_chat.broker.broker import Subscription

log = Logger()

DEFAULT_MAX_QUEUED_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_QUEUE_MESSAGES = 10_000
DEFAULT_MAX_QUEUES = 10_000
DEFAULT_MAX_REDELIVERIES = 5
DEFAULT_DEAD_LETTER_QUEUE = "/queue/dead-letter"
DEFAULT_PREFETCH = 1_000
DEFAULT_MAX_UNACKED = 10_000


class QueueFull(Exception):
    """A message the queues cannot hold; the text says which limit was hit."""


@dataclass(frozen=True, slots=True)
class BrokerLimits:
    """What the queues and subscriptions of one broker may hold."""

    #: Bytes waiting across every queue (``Message.size``), dead letters included.
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES
    #: Messages waiting in one queue.
    max_queue_messages: int = DEFAULT_MAX_QUEUE_MESSAGES
    #: Queue destinations that exist at once (a queue exists while it has a
    #: subscriber or a waiting message).
    max_queues: int = DEFAULT_MAX_QUEUES
    #: How many times a message may come back and be delivered again before
    #: it is dead-lettered.
    max_redeliveries: int = DEFAULT_MAX_REDELIVERIES
    #: Where messages that came back too often go.
    dead_letter_queue: str = DEFAULT_DEAD_LETTER_QUEUE
    #: Messages delivered to one ``client``/``client-individual`` subscription
    #: and not yet acknowledged: a queue gives such a subscription no more
    #: until it acks; a topic subscription past it is closed.
    prefetch: int = DEFAULT_PREFETCH
    #: The same across every subscription of one session: a queue passes
    #: such a session over until it acks; a topic subscription is closed.
    max_unacked: int = DEFAULT_MAX_UNACKED


class Queue:
    """One queue destination: its consumers, in turn, and its waiting messages."""

    __slots__ = ("backlog", "draining", "name", "next_index", "queued_bytes", "subscriptions")

    def __init__(self, name: str) -> None:
        self.name = name
        self.subscriptions: list[Subscription] = []
        self.backlog: deque[Message] = deque()
        self.queued_bytes = 0
        self.next_index = 0
        #: Set while messages are being handed out, so that a message given
        #: back meanwhile (a consumer failing) is picked up by the same loop.
        self.draining = False

    def next_ready(self, has_room: Callable[[Subscription], bool]) -> Subscription | None:
        """The next consumer in turn that may take a message, if any may."""
        subs = self.subscriptions
        for _ in range(len(subs)):
            if self.next_index >= len(subs):
                self.next_index = 0
            sub = subs[self.next_index]
            self.next_index += 1
            if has_room(sub):
                return sub
        return None

    @property
    def idle(self) -> bool:
        """Nothing waits and nobody listens: the queue can be forgotten."""
        return not self.subscriptions and not self.backlog


class QueueSet:
    """Every queue of one broker and the byte, count and redelivery limits on them."""

    #: Whether the queues live outside this process (cluster mode): a SEND is
    #: then stored by ``submit``, which answers later.
    remote = False

    def __init__(
        self,
        limits: BrokerLimits,
        deliver: Callable[[Subscription, Message], bool],
        has_room: Callable[[Subscription], bool],
    ) -> None:
        self.limits = limits
        #: Hands one message to one subscription; False if that failed (the
        #: caller has already given the message back).
        self._deliver = deliver
        #: Whether a subscription may take one more message (its prefetch).
        self._has_room = has_room
        self._queues: dict[str, Queue] = {}
        #: Bytes waiting across every queue.
        self.queued_bytes = 0
        #: Messages moved to the dead-letter queue.
        self.dead_lettered = 0
        #: Dead letters dropped because the dead-letter queue was full.
        self.dead_letters_dropped = 0

    def __len__(self) -> int:
        return len(self._queues)

    def get(self, name: str) -> Queue | None:
        return self._queues.get(name)

    def _create(self, name: str) -> Queue:
        """A queue for ``name``, refusing a new one past ``max_queues``."""
        queue = self._queues.get(name)
        if queue is None:
            if len(self._queues) >= self.limits.max_queues:
                raise QueueFull(
                    f"too many queues: {name} would exceed the limit of "
                    f"{self.limits.max_queues} queue destinations"
                )
            queue = self._queues[name] = Queue(name)
        return queue

    def _ensure(self, name: str) -> Queue:
        """A queue for ``name`` whatever the limits: for messages already accepted."""
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = Queue(name)
        return queue

    def _forget_if_idle(self, queue: Queue) -> None:
        if queue.idle and not queue.draining and self._queues.get(queue.name) is queue:
            del self._queues[queue.name]

    # -- consumers ---------------------------------------------------------

    def add_subscription(self, name: str, subscription: Subscription) -> None:
        queue = self._create(name)
        queue.subscriptions.append(subscription)
        self.drain(queue)

    def remove_subscription(
        self, name: str, subscription: Subscription, unacked: Iterable[Message] = ()
    ) -> bool:
        """Stop giving messages to ``subscription`` and take back its ``unacked`` ones.

        False if it was not subscribed here.
        """
        queue = self._queues.get(name)
        if queue is None or subscription not in queue.subscriptions:
            return False
        queue.subscriptions.remove(subscription)
        self.give_back(name, unacked)
        self._forget_if_idle(queue)
        return True

    def __iter__(self) -> Iterator[Queue]:
        return iter(list(self._queues.values()))

    # -- messages ----------------------------------------------------------

    def check(self, name: str, size: int = 0) -> None:
        """Raise QueueFull unless a new message of ``size`` bytes could be accepted."""
        queue = self._queues.get(name)
        if queue is None:
            if len(self._queues) >= self.limits.max_queues:
                raise QueueFull(
                    f"too many queues: {name} would exceed the limit of "
                    f"{self.limits.max_queues} queue destinations"
                )
            waits = True
        else:
            waits = bool(queue.backlog) or not any(map(self._has_room, queue.subscriptions))
            if waits and len(queue.backlog) >= self.limits.max_queue_messages:
                raise QueueFull(
                    f"queue {name} is full ({self.limits.max_queue_messages} messages waiting)"
                )
        if waits and self.queued_bytes + size > self.limits.max_queued_bytes:
            raise QueueFull(
                f"the server's queues are full ({self.queued_bytes} bytes waiting, "
                f"limit {self.limits.max_queued_bytes}): {name} cannot take "
                f"{size} more bytes"
            )

    def put(self, name: str, message: Message) -> None:
        """Accept a new message for ``name``, or raise QueueFull."""
        self.check(name, message.size)
        queue = self._create(name)
        self._push(queue, message)
        self.drain(queue)

    def give_back(self, name: str, messages: Iterable[Message]) -> None:
        """Put delivered, unacknowledged messages back at the head of their queue.

        They were accepted once, so no limit refuses them (they were counted
        by the subscriber's prefetch meanwhile); each is marked redelivered,
        and one that came back too often is dead-lettered instead.
        """
        returned = self._returned(name, messages)
        if not returned:
            return
        queue = self._ensure(name)
        for message in reversed(returned):
            self._push(queue, message, at_head=True)
        self.drain(queue)

    def _returned(self, name: str, messages: Iterable[Message]) -> list[Message]:
        """Messages given back, marked redelivered; those that came back too often are
        dead-lettered instead (and not in the list)."""
        returned = []
        for message in messages:
            if message.redeliveries >= self.limits.max_redeliveries and (
                name != self.limits.dead_letter_queue
            ):
                self._dead_letter(name, message)
            else:
                returned.append(message.redelivered())
        return returned

    def _dead_letter(self, origin: str, message: Message) -> None:
        """Move a message that keeps coming back to the bounded dead-letter queue."""
        name = self.limits.dead_letter_queue
        letter = message.dead_lettered(name, origin)
        size = letter.size
        queue = self._ensure(name)
        limits = self.limits
        # The oldest dead letters make room, as a bounded dead-letter queue
        # that drops from its head would.
        while queue.backlog and (
            len(queue.backlog) >= limits.max_queue_messages
            or self.queued_bytes + size > limits.max_queued_bytes
        ):
            dropped = self._pop(queue)
            self._dropped(dropped, "the dead-letter queue is full")
        if self.queued_bytes + size > limits.max_queued_bytes:
            self._dropped(letter, "the queues are full")
            self._forget_if_idle(queue)
            return
        self.dead_lettered += 1
        if _worth_logging(self.dead_lettered):
            log.info(
                "message {message_id} from {origin} came back {count} times: moved to "
                "{dead_letter_queue} ({total} messages dead-lettered so far)",
                message_id=message.message_id,
                origin=origin,
                count=message.redeliveries + 1,
                dead_letter_queue=name,
                total=self.dead_lettered,
            )
        self._push(queue, letter)
        self.drain(queue)

    def _dropped(self, message: Message, reason: str) -> None:
        self.dead_letters_dropped += 1
        if _worth_logging(self.dead_letters_dropped):
            log.warn(
                "dead letter {message_id} ({original}) dropped: {reason} "
                "({total} dead letters dropped so far)",
                message_id=message.message_id,
                original=message.headers.get(ORIGINAL_DESTINATION_HEADER, message.destination),
                reason=reason,
                total=self.dead_letters_dropped,
            )

    def _push(self, queue: Queue, message: Message, *, at_head: bool = False) -> None:
        size = message.size
        queue.queued_bytes += size
        self.queued_bytes += size
        if at_head:
            queue.backlog.appendleft(message)
        else:
            queue.backlog.append(message)

    def _pop(self, queue: Queue) -> Message:
        message = queue.backlog.popleft()
        size = message.size
        queue.queued_bytes -= size
        self.queued_bytes -= size
        return message

    def drain(self, queue: Queue) -> None:
        """Hand waiting messages to the queue's consumers, in turn."""
        if queue.draining:
            return  # the loop already running picks up what was added
        queue.draining = True
        try:
            while queue.backlog:
                sub = queue.next_ready(self._has_room)
                if sub is None:
                    break  # every consumer is at its prefetch: the rest waits
                self._deliver(sub, self._pop(queue))
        finally:
            queue.draining = False
        self._forget_if_idle(queue)

    def submit(self, name: str, message: Message) -> Deferred[Any]:
        """Store a new message where the queues live (only when ``remote``)."""
        raise NotImplementedError("local queues take messages through put()")

    def acknowledged(self, name: str, messages: Iterable[Message]) -> None:
        """Delivered messages a client acknowledged: local queues have nothing more to do."""

    # -- introspection -----------------------------------------------------

    def depth(self, name: str) -> int:
        queue = self._queues.get(name)
        return len(queue.backlog) if queue else 0

    def subscriber_count(self, name: str) -> int:
        queue = self._queues.get(name)
        return len(queue.subscriptions) if queue else 0


def _worth_logging(count: int) -> bool:
    """Log the 1st, 10th, 100th, 1000th... and then every 10,000th event.

    Under churn a line per message would flood the log; the counters keep
    the exact figures.
    """
    if count % 10_000 == 0:
        return True
    while count % 10 == 0:
        count //= 10
    return count == 1
