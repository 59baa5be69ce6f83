"""Tests for the broker: routing, fan-out isolation, queue limits, redelivery and dead letters."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from twisted.logger import globalLogPublisher

from stomp_chat.broker import (
    ACK_CLIENT,
    Broker,
    BrokerError,
    BrokerLimits,
    Message,
    Subscription,
    user_destination_key,
)
from stomp_chat.broker.acks import AckTracker
from stomp_chat.session import State
from stomp_chat.stomp.frame import V1_0, V1_1, V1_2
from stomp_chat.stomp.parser import FrameParser
from tests.stompfakes import Client, RecordingTransport, make_context


class Recorder:
    """A Subscriber that records what the broker delivers to it and why it was failed."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.received: list[tuple[Subscription, Message]] = []
        self.on_deliver = None
        self.failures: list[tuple[str, str]] = []

    def deliver(self, subscription: Subscription, message: Message) -> None:
        self.received.append((subscription, message))
        if self.on_deliver is not None:
            self.on_deliver(subscription, message)

    def fail(self, message: str, detail: str = "") -> None:
        self.failures.append((message, detail))

    @property
    def bodies(self) -> list[bytes]:
        return [m.body for _, m in self.received]


def subscribe(broker: Broker, destination: str, principal: str = "anon",
              ack_mode: str = "auto", sub_id: str = "0") -> tuple[Recorder, Subscription]:
    recorder = Recorder()
    sub = Subscription(recorder, sub_id, destination, ack_mode)
    broker.subscribe(sub, principal)
    return recorder, sub


# -- topics --------------------------------------------------------------


def test_topic_fans_out_to_every_subscriber():
    """A topic message reaches every subscriber of that topic."""
    broker = Broker()
    recorders = [subscribe(broker, "/topic/chat")[0] for _ in range(3)]
    broker.publish("/topic/chat", b"hi")
    assert [r.bodies for r in recorders] == [[b"hi"]] * 3


def test_topic_messages_are_shared_not_copied():
    """Every subscriber of one publish sees the same Message with the same id."""
    broker = Broker()
    a, _ = subscribe(broker, "/topic/t")
    b, _ = subscribe(broker, "/topic/t")
    message = broker.publish("/topic/t", b"x")
    assert a.received[0][1] is message and b.received[0][1] is message


def test_topic_without_subscribers_drops_the_message():
    """A topic keeps no backlog: a later subscriber does not see earlier messages."""
    broker = Broker()
    broker.publish("/topic/t", b"early")
    late, _ = subscribe(broker, "/topic/t")
    assert late.received == []


def test_topics_are_isolated():
    """A message on one topic does not reach subscribers of another."""
    broker = Broker()
    a, _ = subscribe(broker, "/topic/a")
    b, _ = subscribe(broker, "/topic/b")
    broker.publish("/topic/a", b"1")
    assert a.bodies == [b"1"] and b.bodies == []


def test_topic_preserves_order():
    """Messages reach a topic subscriber in publish order."""
    broker = Broker()
    r, _ = subscribe(broker, "/topic/t")
    for i in range(50):
        broker.publish("/topic/t", str(i).encode())
    assert r.bodies == [str(i).encode() for i in range(50)]


def test_unsubscribe_stops_topic_delivery():
    """After unsubscribe a subscriber receives nothing more."""
    broker = Broker()
    r, sub = subscribe(broker, "/topic/t")
    broker.unsubscribe(sub)
    broker.publish("/topic/t", b"x")
    assert r.received == [] and broker.subscriber_count("/topic/t") == 0


def test_unsubscribe_during_fan_out_does_not_skip_others():
    """A subscriber unsubscribing itself mid-fan-out leaves the others' delivery intact."""
    broker = Broker()
    a, sub_a = subscribe(broker, "/topic/t")
    b, _ = subscribe(broker, "/topic/t")
    c, _ = subscribe(broker, "/topic/t")
    a.on_deliver = lambda s, m: broker.unsubscribe(sub_a)
    broker.publish("/topic/t", b"1")
    assert (a.bodies, b.bodies, c.bodies) == ([b"1"], [b"1"], [b"1"])
    broker.publish("/topic/t", b"2")
    assert (a.bodies, b.bodies, c.bodies) == ([b"1"], [b"1", b"2"], [b"1", b"2"])


def test_unsubscribing_another_during_fan_out_is_safe():
    """Removing a later subscriber during fan-out raises nothing and takes effect next time."""
    broker = Broker()
    a, _ = subscribe(broker, "/topic/t")
    b, sub_b = subscribe(broker, "/topic/t")
    a.on_deliver = lambda s, m: broker.unsubscribe(sub_b)
    broker.publish("/topic/t", b"1")
    broker.publish("/topic/t", b"2")
    assert a.bodies == [b"1", b"2"]
    assert b"2" not in b.bodies


def test_unsubscribe_twice_is_harmless():
    """Unsubscribing an already removed subscription does nothing."""
    broker = Broker()
    _, sub = subscribe(broker, "/topic/t")
    broker.unsubscribe(sub)
    broker.unsubscribe(sub)
    assert broker.subscriber_count("/topic/t") == 0


# -- queues --------------------------------------------------------------


def test_queue_round_robins_between_subscribers():
    """A queue gives each message to one subscriber, taking turns."""
    broker = Broker()
    a, _ = subscribe(broker, "/queue/work")
    b, _ = subscribe(broker, "/queue/work")
    for i in range(4):
        broker.publish("/queue/work", str(i).encode())
    assert a.bodies == [b"0", b"2"]
    assert b.bodies == [b"1", b"3"]


def test_queue_holds_backlog_until_a_subscriber_arrives():
    """Messages to a queue without subscribers wait, then arrive in order."""
    broker = Broker()
    for i in range(3):
        broker.publish("/queue/q", str(i).encode())
    assert broker.queue_depth("/queue/q") == 3
    r, _ = subscribe(broker, "/queue/q")
    assert r.bodies == [b"0", b"1", b"2"]
    assert broker.queue_depth("/queue/q") == 0


def test_requeue_puts_messages_back_at_the_head_in_order():
    """Requeued messages come before the backlog, in their original order."""
    broker = Broker()
    m1 = broker.publish("/queue/q", b"1")
    m2 = broker.publish("/queue/q", b"2")
    broker.publish("/queue/q", b"3")
    broker.requeue("/queue/q", [m1, m2])
    r, _ = subscribe(broker, "/queue/q")
    assert r.bodies == [b"1", b"2", b"1", b"2", b"3"]


def test_requeue_delivers_to_present_subscribers():
    """Requeueing onto a queue with a subscriber delivers right away, keeping message ids."""
    broker = Broker()
    r, _ = subscribe(broker, "/queue/q")
    message = Message("/queue/q", "m-1", b"again")
    broker.requeue("/queue/q", [message])
    again = r.received[-1][1]
    assert (again.message_id, again.body) == ("m-1", b"again")


def test_requeue_on_a_topic_is_ignored():
    """Topic messages are never redelivered."""
    broker = Broker()
    r, _ = subscribe(broker, "/topic/t")
    broker.requeue("/topic/t", [Message("/topic/t", "m", b"x")])
    assert r.received == []


def test_unsubscribe_requeues_unacked_queue_messages():
    """A queue subscription leaving with unacked messages gives them to the next consumer."""
    broker = Broker()
    first, sub = subscribe(broker, "/queue/q", ack_mode=ACK_CLIENT)
    for i in range(2):
        message = broker.publish("/queue/q", str(i).encode())
        sub.pending[message.message_id] = message
    second, _ = subscribe(broker, "/queue/q", sub_id="1")
    broker.unsubscribe(sub)
    assert second.bodies == [b"0", b"1"]
    assert sub.pending == {}


def test_queue_backlog_is_bounded():
    """Publishing to a queue whose backlog is full raises BrokerError."""
    broker = Broker(limits=BrokerLimits(max_queue_messages=2))
    broker.publish("/queue/q", b"1")
    broker.publish("/queue/q", b"2")
    with pytest.raises(BrokerError):
        broker.publish("/queue/q", b"3")
    r, _ = subscribe(broker, "/queue/q")
    assert r.bodies == [b"1", b"2"]
    broker.publish("/queue/q", b"4")
    assert r.bodies[-1] == b"4"


def test_queue_with_subscriber_is_not_limited_by_backlog_bound():
    """Messages drained straight to a subscriber never count against the backlog bound."""
    broker = Broker(limits=BrokerLimits(max_queue_messages=1))
    r, _ = subscribe(broker, "/queue/q")
    for i in range(5):
        broker.publish("/queue/q", str(i).encode())
    assert len(r.bodies) == 5


def test_subscriber_count_and_depth():
    """Introspection reports subscribers per destination and waiting queue messages."""
    broker = Broker()
    subscribe(broker, "/queue/q")
    subscribe(broker, "/topic/t")
    subscribe(broker, "/topic/t")
    assert broker.subscriber_count("/queue/q") == 1
    assert broker.subscriber_count("/topic/t") == 2
    assert broker.subscriber_count("/topic/none") == 0
    assert broker.queue_depth("/queue/none") == 0


# -- invalid destinations --------------------------------------------------


@pytest.mark.parametrize("destination", ["/foo", "queue/x", "", "/app/x", "/topicx"])
def test_publish_to_invalid_destination_is_refused(destination):
    """Publishing outside /topic/, /queue/ and /user/ raises BrokerError."""
    with pytest.raises(BrokerError):
        Broker().publish(destination, b"x")


@pytest.mark.parametrize("destination", ["/foo", "/app/x", "", "/user/x", "/user/alice"])
def test_subscribe_to_invalid_destination_is_refused(destination):
    """Subscribing outside /topic/, /queue/ and /user/queue|topic/ raises BrokerError."""
    broker = Broker()
    with pytest.raises(BrokerError):
        broker.subscribe(Subscription(Recorder(), "0", destination), "anon")


# -- user destinations ---------------------------------------------------


def test_user_destination_key():
    """/user/queue/x for alice routes as /user/alice/queue/x."""
    assert user_destination_key("alice", "/user/queue/x") == "/user/alice/queue/x"
    with pytest.raises(BrokerError):
        user_destination_key("alice", "/topic/x")


def test_user_destination_routes_by_principal():
    """send_to_user reaches only that user's subscriptions, shown as /user/queue/..."""
    broker = Broker()
    alice, _ = subscribe(broker, "/user/queue/errors", principal="alice")
    alice2, _ = subscribe(broker, "/user/queue/errors", principal="alice", sub_id="1")
    bob, _ = subscribe(broker, "/user/queue/errors", principal="bob")
    broker.send_to_user("alice", "/user/queue/errors", b"oops")
    assert alice.bodies == [b"oops"] and alice2.bodies == [b"oops"]
    assert bob.received == []
    assert alice.received[0][1].destination == "/user/queue/errors"


def test_user_subscription_unsubscribes_by_its_key():
    """Unsubscribing a /user/ subscription stops its delivery."""
    broker = Broker()
    alice, sub = subscribe(broker, "/user/queue/x", principal="alice")
    broker.unsubscribe(sub)
    broker.send_to_user("alice", "/user/queue/x", b"x")
    assert alice.received == []


# -- messages ------------------------------------------------------------


def test_message_ids_are_unique():
    """Each published message gets a fresh message-id."""
    broker = Broker()
    ids = {broker.publish("/topic/t", b"").message_id for _ in range(100)}
    assert len(ids) == 100


def test_published_listeners_see_every_publish():
    """published_listeners are called with the routing key and the message."""
    broker = Broker()
    seen = []
    broker.published_listeners.append(lambda key, m: seen.append((key, m.body)))
    broker.publish("/topic/t", b"1")
    broker.send_to_user("bob", "/user/queue/q", b"2")
    assert seen == [("/topic/t", b"1"), ("/user/bob/queue/q", b"2")]


def test_a_failing_published_listener_neither_fails_the_publish_nor_silences_the_others():
    """A published listener that raises (the relay, read state) is logged; the listeners
    after it still hear of the message and the publisher gets it back."""
    broker = Broker()
    seen = []

    def broken(key, message):
        raise RuntimeError("listener bug")

    broker.published_listeners.append(broken)
    broker.published_listeners.append(lambda key, m: seen.append((key, m.body)))
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        message = broker.publish("/topic/t", b"1")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert message.body == b"1"
    assert seen == [("/topic/t", b"1")]
    assert [e["log_failure"].type for e in events if "log_failure" in e] == [RuntimeError]


@pytest.mark.parametrize("version", [V1_0, V1_1, V1_2])
def test_message_head_encodes_a_parseable_frame(version):
    """A Message's shared head plus subscription line and tail parses to the right MESSAGE."""
    message = Message("/topic/t", "id-1", b"b\x00dy", {"x": "1"})
    data = message.head(version) + b"subscription:s\n" + message.tail
    frames = []
    parser = FrameParser(frames.append)
    parser.version = version
    parser.feed(data)
    (frame,) = frames
    assert frame.command == "MESSAGE"
    assert frame.headers["destination"] == "/topic/t"
    assert frame.headers["message-id"] == "id-1"
    assert frame.headers["subscription"] == "s"
    assert frame.headers["x"] == "1"
    assert frame.body == b"b\x00dy"


def test_message_head_escapes_per_version():
    """Message headers are escaped for 1.1/1.2 and the head is cached per version."""
    message = Message("/topic/t", "id-1", b"", {"k": "a:b\nc"})
    assert b"k:a\\cb\\nc\n" in message.head(V1_2)
    assert message.head(V1_2) is message.head(V1_2)


# -- fan-out isolation -----------------------------------------------------


class TransportGone(Exception):
    """What a write to a transport that is already going away raises."""


class BrokenRecorder(Recorder):
    """A Subscriber whose every delivery raises, as a closing transport's write may."""

    def deliver(self, subscription: Subscription, message: Message) -> None:
        if subscription.ack_mode != "auto":
            subscription.pending[message.message_id] = message  # as the session does first
        raise TransportGone("write on a closing connection")


def subscribe_with(broker: Broker, recorder: Recorder, destination: str, principal: str = "anon",
                   ack_mode: str = "auto", sub_id: str = "0") -> Subscription:
    sub = Subscription(recorder, sub_id, destination, ack_mode)
    broker.subscribe(sub, principal)
    return sub


def test_topic_fan_out_goes_on_past_a_subscriber_whose_delivery_raises():
    """A raising subscriber is failed and dropped; the publish succeeds and later ones receive."""
    broker = Broker()
    first, _ = subscribe(broker, "/topic/t")
    broken = BrokenRecorder()
    subscribe_with(broker, broken, "/topic/t", sub_id="b")
    last, _ = subscribe(broker, "/topic/t")
    broker.publish("/topic/t", b"1")
    broker.publish("/topic/t", b"2")
    assert first.bodies == [b"1", b"2"] and last.bodies == [b"1", b"2"]
    assert broken.failures == [
        ("delivery failed", "the server could not deliver a message to this connection")
    ]
    assert broker.subscriber_count("/topic/t") == 2
    assert broker.failed_deliveries == 1


def test_user_destination_delivery_failure_is_isolated():
    """A /user/ delivery that raises fails only that session; the user's other sessions receive."""
    broker = Broker()
    broken = BrokenRecorder()
    subscribe_with(broker, broken, "/user/queue/q", principal="alice", sub_id="a")
    healthy, _ = subscribe(broker, "/user/queue/q", principal="alice", sub_id="b")
    broker.send_to_user("alice", "/user/queue/q", b"hello")
    assert healthy.bodies == [b"hello"] and len(broken.failures) == 1


def test_queue_message_whose_delivery_raised_goes_to_the_next_consumer():
    """A queue message that could not be written reaches another consumer, marked redelivered."""
    broker = Broker()
    broken = BrokenRecorder()
    subscribe_with(broker, broken, "/queue/q", ack_mode="client-individual", sub_id="b")
    healthy, _ = subscribe(broker, "/queue/q")
    broker.publish("/queue/q", b"1")
    broker.publish("/queue/q", b"2")
    assert healthy.bodies == [b"1", b"2"]
    assert healthy.received[0][1].headers["redelivered"] == "true"
    assert broker.subscriber_count("/queue/q") == 1 and len(broken.failures) == 1


def test_failed_consumer_gives_back_its_unacked_messages_in_order():
    """A consumer failing mid-drain returns its unacked messages ahead of the one it failed on."""
    broker = Broker()
    flaky = Recorder()
    sub = subscribe_with(broker, flaky, "/queue/q", ack_mode="client")

    def store_then_break(subscription: Subscription, message: Message) -> None:
        subscription.pending[message.message_id] = message
        if message.body == b"3":
            raise TransportGone("gone")

    flaky.on_deliver = store_then_break
    for body in (b"1", b"2", b"3", b"4"):
        broker.publish("/queue/q", body)
    assert flaky.bodies == [b"1", b"2", b"3"] and sub.pending == {}
    later, _ = subscribe(broker, "/queue/q")
    assert later.bodies == [b"1", b"2", b"3", b"4"]


def test_requeue_delivery_failure_is_isolated():
    """Redelivery to a consumer that raises fails that consumer and reaches the next one."""
    broker = Broker()
    broken = BrokenRecorder()
    subscribe_with(broker, broken, "/queue/q", sub_id="b")
    healthy, _ = subscribe(broker, "/queue/q", sub_id="c")
    broker.requeue("/queue/q", [Message("/queue/q", "m-1", b"x")])
    assert len(broken.failures) == 1
    assert healthy.bodies == [b"x"] and healthy.received[0][1].headers["x-delivery-count"] == "2"


def test_subscriber_whose_fail_raises_too_is_still_unsubscribed():
    """If failing the broken session raises as well, its subscription is removed all the same."""

    class Hopeless(BrokenRecorder):
        def fail(self, message: str, detail: str = "") -> None:
            raise TransportGone("cannot even write ERROR")

    broker = Broker()
    subscribe_with(broker, Hopeless(), "/topic/t", sub_id="h")
    healthy, _ = subscribe(broker, "/topic/t")
    broker.publish("/topic/t", b"1")
    broker.publish("/topic/t", b"2")
    assert healthy.bodies == [b"1", b"2"] and broker.subscriber_count("/topic/t") == 1


# -- queue limits ------------------------------------------------------------


def test_queue_bytes_limit_refuses_a_message_that_would_wait():
    """A queue message that would exceed the total queued bytes is refused with BrokerError."""
    body = b"x" * 1000
    size = Message("/queue/a", "n-1", body).size
    broker = Broker(limits=BrokerLimits(max_queued_bytes=2 * size + 10), node_id="n")
    broker.publish("/queue/a", body)
    broker.publish("/queue/b", body)
    with pytest.raises(BrokerError, match="queues are full"):
        broker.publish("/queue/c", body)
    assert broker.queued_bytes == 2 * size
    assert broker.queue_depth("/queue/c") == 0 and broker.queue_count == 2


def test_queue_bytes_limit_does_not_refuse_a_message_a_consumer_takes_now():
    """With the queues full, a queue with a ready consumer still gets its messages through."""
    body = b"x" * 1000
    size = Message("/queue/full", "n-1", body).size
    broker = Broker(limits=BrokerLimits(max_queued_bytes=size + 10), node_id="n")
    broker.publish("/queue/full", body)
    with pytest.raises(BrokerError):
        broker.publish("/queue/idle", body)
    r, _ = subscribe(broker, "/queue/busy")
    broker.publish("/queue/busy", body)
    assert r.bodies == [body]


@pytest.mark.parametrize("body_size", [10, 1000, 100_000])
def test_queued_bytes_track_the_memory_waiting_messages_hold(body_size):
    """The bytes the queue limit counts stay within 25% of what waiting messages really take."""
    broker = Broker(limits=BrokerLimits(max_queue_messages=10**6, max_queued_bytes=10**10))
    count = 2_000_000 // (body_size + 500)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(count):
            broker.publish("/queue/q", bytes(body_size), {"content-type": "text/plain"})
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.75 * held <= broker.queued_bytes <= 1.25 * held


def test_queued_bytes_fall_back_to_zero_when_consumed():
    """Bytes counted for waiting messages are released when consumers take them."""
    broker = Broker()
    for i in range(10):
        broker.publish(f"/queue/q{i % 3}", b"y" * 100)
    assert broker.queued_bytes > 10 * 100
    for i in range(3):
        subscribe(broker, f"/queue/q{i}")
    assert broker.queued_bytes == 0


def test_queue_count_limit_refuses_new_queues():
    """Past max_queues, sending to or subscribing to a new queue is refused; known ones work."""
    broker = Broker(limits=BrokerLimits(max_queues=2))
    broker.publish("/queue/a", b"1")
    subscribe(broker, "/queue/b")
    with pytest.raises(BrokerError, match="too many queues"):
        broker.publish("/queue/c", b"1")
    with pytest.raises(BrokerError, match="too many queues"):
        subscribe(broker, "/queue/c")
    broker.publish("/queue/a", b"2")
    assert broker.queue_depth("/queue/a") == 2


def test_idle_queues_are_forgotten():
    """A queue with no waiting message and no subscriber is dropped, so names do not pile up."""
    broker = Broker(limits=BrokerLimits(max_queues=10))
    for i in range(1000):
        broker.publish(f"/queue/n{i}", b"m")
        _, sub = subscribe(broker, f"/queue/n{i}")
        broker.unsubscribe(sub)
    assert broker.queue_count == 0 and broker.queued_bytes == 0


def test_returned_messages_are_never_refused_by_the_limits():
    """Messages given back after delivery are kept even when the queues are over their limits."""
    broker = Broker(limits=BrokerLimits(max_queue_messages=1, max_queues=1, max_queued_bytes=1))
    messages = [Message("/queue/q", f"m{i}", b"z" * 100) for i in range(3)]
    broker.requeue("/queue/q", messages)
    assert broker.queue_depth("/queue/q") == 3
    with pytest.raises(BrokerError):
        broker.publish("/queue/q", b"new")


def test_check_destination_counts_the_size_given():
    """check_destination refuses in advance a message too big for the queues' byte limit."""
    broker = Broker(limits=BrokerLimits(max_queued_bytes=1000))
    broker.check_destination("/queue/q", 500)
    with pytest.raises(BrokerError, match="queues are full"):
        broker.check_destination("/queue/q", 1001)


# -- redelivery and dead letters ---------------------------------------------


def return_until_dead(broker: Broker, destination: str, body: bytes = b"poison") -> Recorder:
    """Subscribe in client mode and give every delivery back until nothing comes."""
    r, sub = subscribe(broker, destination, ack_mode="client", sub_id="c")
    broker.publish(destination, body)
    seen = 0
    while len(r.received) > seen:
        seen = len(r.received)
        message = r.received[-1][1]
        broker.requeue(destination, [message])
    return r


def test_redelivered_messages_carry_redelivered_and_delivery_count():
    """Each redelivery is marked redelivered:true with x-delivery-count counting earlier returns."""
    broker = Broker(limits=BrokerLimits(max_redeliveries=3))
    r = return_until_dead(broker, "/queue/q")
    headers = [m.headers for _, m in r.received]
    assert "redelivered" not in headers[0] and "x-delivery-count" not in headers[0]
    assert [h.get("x-delivery-count") for h in headers[1:]] == ["1", "2", "3"]
    assert all(h["redelivered"] == "true" for h in headers[1:])
    assert b"redelivered:true\n" in r.received[1][1].head(V1_2)


def test_message_returned_too_often_goes_to_the_dead_letter_queue():
    """After max_redeliveries returns the next one moves the message to the dead-letter queue."""
    broker = Broker(limits=BrokerLimits(max_redeliveries=5))
    r = return_until_dead(broker, "/queue/jobs")
    assert len(r.received) == 6
    assert broker.queue_depth("/queue/jobs") == 0
    assert broker.queue_depth("/queue/dead-letter") == 1
    reader, _ = subscribe(broker, "/queue/dead-letter", sub_id="d")
    (letter,) = [m for _, m in reader.received]
    assert letter.body == b"poison" and letter.destination == "/queue/dead-letter"
    assert letter.headers["x-original-destination"] == "/queue/jobs"
    assert letter.headers["x-delivery-count"] == "6"
    assert letter.message_id == r.received[0][1].message_id


def test_zero_redeliveries_dead_letters_on_first_return():
    """With max_redeliveries 0 a message given back once goes straight to the dead-letter queue."""
    broker = Broker(limits=BrokerLimits(max_redeliveries=0, dead_letter_queue="/queue/dlq"))
    r = return_until_dead(broker, "/queue/q")
    assert len(r.received) == 1 and broker.queue_depth("/queue/dlq") == 1


def test_dead_letter_queue_messages_circulate_only_within_it():
    """A dead letter given back keeps coming back to the dead-letter queue, not elsewhere."""
    broker = Broker(limits=BrokerLimits(max_redeliveries=0))
    return_until_dead(broker, "/queue/q")
    reader, sub = subscribe(broker, "/queue/dead-letter", ack_mode="client", sub_id="d")
    for _ in range(3):
        message = reader.received[-1][1]
        sub.pending.clear()
        broker.requeue("/queue/dead-letter", [message])
    assert len(reader.received) == 4
    assert reader.received[-1][1].headers["redelivered"] == "true"


def test_dead_letter_queue_drops_its_oldest_when_full_by_count():
    """A full dead-letter queue drops its oldest letter (logged, counted) to take a new one."""
    broker = Broker(limits=BrokerLimits(max_redeliveries=0, max_queue_messages=2))
    for body in (b"1", b"2", b"3"):
        message = Message("/queue/q", body.decode(), body)
        broker.requeue("/queue/q", [message.redelivered()])
    assert broker.queue_depth("/queue/dead-letter") == 2
    assert broker.dead_letters_dropped == 1
    reader, _ = subscribe(broker, "/queue/dead-letter")
    assert reader.bodies == [b"2", b"3"]


def test_dead_letter_queue_is_bounded_by_the_queued_bytes():
    """Dead letters never take the queues past max_queued_bytes: the oldest go first."""
    body = b"d" * 1000
    size = Message("/queue/dead-letter", "m", body, {
        "x-original-destination": "/queue/q", "x-delivery-count": "1"}).size
    broker = Broker(limits=BrokerLimits(max_redeliveries=0, max_queued_bytes=2 * size))
    for _ in range(5):
        broker.requeue("/queue/q", [Message("/queue/q", "m", body)])
    assert broker.queue_depth("/queue/dead-letter") == 2
    assert broker.queued_bytes <= 2 * size
    assert broker.dead_letters_dropped == 3


def test_dead_letter_too_big_for_any_room_is_dropped():
    """A dead letter bigger than the whole byte limit is dropped and counted, not kept."""
    broker = Broker(limits=BrokerLimits(max_redeliveries=0, max_queued_bytes=100))
    broker.requeue("/queue/q", [Message("/queue/q", "m", b"b" * 1000)])
    assert broker.queue_count == 0 and broker.dead_letters_dropped == 1


def test_churn_without_acks_stays_bounded():
    """Consumers leaving without acking, over and over, never hold more than the limits."""
    limits = BrokerLimits(max_redeliveries=2, max_queue_messages=50)
    broker = Broker(limits=limits)
    for round_ in range(200):
        r, sub = subscribe(broker, "/queue/work", ack_mode="client-individual", sub_id="w")
        r.on_deliver = lambda s, m: s.pending.__setitem__(m.message_id, m)
        try:
            broker.publish("/queue/work", b"job %d" % round_)
        except BrokerError:
            pass
        broker.unsubscribe(sub)
        assert broker.queue_depth("/queue/work") <= limits.max_queue_messages
        assert broker.queue_depth("/queue/dead-letter") <= limits.max_queue_messages
    assert broker.queue_count <= 2


# -- with real sessions --------------------------------------------------------


class WriteFailsTransport(RecordingTransport):
    """A FrameTransport whose MESSAGE writes raise, as a connection torn down mid-write may."""

    def write(self, data: bytes) -> None:
        if data.startswith(b"MESSAGE"):
            raise TransportGone("connection reset while writing")
        super().write(data)


def stomp_client(context, transport: RecordingTransport | None = None) -> Client:
    client = Client(context)
    if transport is not None:
        client.transport = transport
        client.session.transport = transport
    client.connect("1.2")
    return client


def test_publisher_never_sees_another_sessions_broken_transport():
    """The publisher gets its RECEIPT, the others their MESSAGE, the broken session an ERROR."""
    context = make_context()
    before = stomp_client(context)
    broken = stomp_client(context, WriteFailsTransport())
    after = stomp_client(context)
    for client in (before, broken, after):
        client.send("SUBSCRIBE", {"destination": "/topic/room", "id": "s"})
    publisher = stomp_client(context)
    publisher.send("SEND", {"destination": "/topic/room", "receipt": "r1"}, b"hi")
    assert [f.command for f in publisher.frames()] == ["RECEIPT"] and not publisher.closed
    assert [f.body for f in before.frames()] == [b"hi"]
    assert [f.body for f in after.frames()] == [b"hi"]
    (error,) = broken.frames()
    assert error.command == "ERROR" and error.headers["message"] == "delivery failed"
    assert broken.closed and broken.session.state is State.CLOSED
    assert context.broker.subscriber_count("/topic/room") == 2


def test_send_to_full_queues_gets_an_error_naming_the_limit():
    """A SEND the queues cannot hold is answered with ERROR (with its receipt-id), not dropped."""
    context = make_context(broker=Broker(limits=BrokerLimits(max_queue_messages=1)))
    sender = stomp_client(context)
    sender.send("SEND", {"destination": "/queue/q", "receipt": "1"}, b"kept")
    sender.send("SEND", {"destination": "/queue/q", "receipt": "2"}, b"refused")
    receipt, error = sender.frames()
    assert receipt.headers["receipt-id"] == "1"
    assert error.command == "ERROR" and error.headers["receipt-id"] == "2"
    assert "queue /queue/q is full" in error.headers["message"]
    assert context.broker.queue_depth("/queue/q") == 1


def test_clients_cannot_forge_redelivery_headers():
    """redelivered, x-delivery-count and x-original-destination on a SEND never reach a MESSAGE."""
    context = make_context()
    consumer = stomp_client(context)
    consumer.send("SUBSCRIBE", {"destination": "/queue/q", "id": "s"})
    sender = stomp_client(context)
    sender.send("SEND", {"destination": "/queue/q", "redelivered": "true",
                         "x-delivery-count": "9", "x-original-destination": "/queue/x"}, b"m")
    (message,) = consumer.frames()
    assert not {"redelivered", "x-delivery-count", "x-original-destination"} & set(message.headers)


def test_nacked_message_is_dead_lettered_after_the_redelivery_limit():
    """A message NACKed again and again arrives max_redeliveries+1 times, then is dead-lettered."""
    context = make_context(broker=Broker(limits=BrokerLimits(max_redeliveries=2)))
    consumer = stomp_client(context)
    consumer.send("SUBSCRIBE", {"destination": "/queue/q", "id": "s", "ack": "client-individual"})
    stomp_client(context).send("SEND", {"destination": "/queue/q"}, b"poison")
    seen = []
    while frames := consumer.frames():
        (message,) = frames
        seen.append(message.headers.get("x-delivery-count"))
        consumer.send("NACK", {"id": message.headers["ack"]})
    assert seen == [None, "1", "2"]
    reader = stomp_client(context)
    reader.send("SUBSCRIBE", {"destination": "/queue/dead-letter", "id": "d"})
    (letter,) = reader.frames()
    assert letter.body == b"poison" and letter.headers["x-original-destination"] == "/queue/q"


def test_churning_client_ack_consumers_hold_bounded_state():
    """Sessions that take a queue message and vanish unacked leave at most the limits behind."""
    limits = BrokerLimits(max_redeliveries=3, max_queue_messages=20)
    context = make_context(broker=Broker(limits=limits))
    broker = context.broker
    sender = stomp_client(context)
    for i in range(300):
        sender.send("SEND", {"destination": "/queue/jobs"}, b"job %d" % i)
        sender.frames()
        consumer = stomp_client(context)
        consumer.send("SUBSCRIBE", {"destination": "/queue/jobs", "id": "s",
                                    "ack": "client-individual"})
        consumer.session.connection_lost()
    assert not sender.closed
    # Each message is delivered four times (once, then three redeliveries) and
    # then dead-lettered; the bounded dead-letter queue keeps the newest 20.
    assert broker.queue_depth("/queue/jobs") == limits.max_redeliveries
    assert broker.queue_depth("/queue/dead-letter") == limits.max_queue_messages
    assert broker.dead_letters_dropped == 300 - 3 - 20
    assert broker.queue_count == 2


# -- prefetch --------------------------------------------------------------------


def pending_recorder(broker: Broker, destination: str, ack_mode: str = "client-individual",
                     sub_id: str = "0") -> tuple[Recorder, Subscription]:
    """A subscriber that keeps what it receives unacknowledged, as a session does."""
    recorder = Recorder()
    recorder.on_deliver = lambda s, m: s.pending.__setitem__(m.message_id, m)
    return recorder, subscribe_with(broker, recorder, destination, ack_mode=ack_mode,
                                    sub_id=sub_id)


def test_queue_gives_a_subscription_at_its_prefetch_nothing_more_until_it_acks():
    """At the prefetch, queue messages wait; settling one lets exactly one more through."""
    broker = Broker(limits=BrokerLimits(prefetch=3))
    r, sub = pending_recorder(broker, "/queue/q")
    for i in range(10):
        broker.publish("/queue/q", b"%d" % i)
    assert r.bodies == [b"0", b"1", b"2"] and broker.queue_depth("/queue/q") == 7
    sub.pending.pop(next(iter(sub.pending)))
    broker.settled(sub)
    assert r.bodies == [b"0", b"1", b"2", b"3"] and len(sub.pending) == 3


def test_queue_skips_consumers_at_their_prefetch():
    """A consumer at its prefetch is passed over for one with room, not waited for."""
    broker = Broker(limits=BrokerLimits(prefetch=1))
    slow, _ = pending_recorder(broker, "/queue/q", sub_id="slow")
    fast, _ = subscribe(broker, "/queue/q", sub_id="fast")
    for i in range(5):
        broker.publish("/queue/q", b"%d" % i)
    assert slow.bodies == [b"0"] and fast.bodies == [b"1", b"2", b"3", b"4"]


def test_messages_waiting_behind_the_prefetch_count_against_the_queue_limits():
    """With every consumer at its prefetch, messages wait and the queue limits refuse more."""
    broker = Broker(limits=BrokerLimits(prefetch=1, max_queue_messages=2))
    pending_recorder(broker, "/queue/q")
    for i in range(3):
        broker.publish("/queue/q", b"%d" % i)
    with pytest.raises(BrokerError, match="is full"):
        broker.publish("/queue/q", b"3")


def test_topic_subscription_past_its_prefetch_is_closed():
    """A client-mode topic subscription that stops acking fails at its prefetch; others go on."""
    broker = Broker(limits=BrokerLimits(prefetch=2))
    hoarder, _ = pending_recorder(broker, "/topic/t", ack_mode="client")
    reader, _ = subscribe(broker, "/topic/t", sub_id="r")
    for i in range(4):
        broker.publish("/topic/t", b"%d" % i)
    assert hoarder.bodies == [b"0", b"1"]
    assert hoarder.failures[0][0] == "too many unacknowledged messages"
    assert reader.bodies == [b"0", b"1", b"2", b"3"]
    assert broker.subscriber_count("/topic/t") == 1


def test_session_acking_receives_the_rest_of_the_queue():
    """A client-individual consumer at its prefetch gets the next message as soon as it ACKs."""
    context = make_context(broker=Broker(limits=BrokerLimits(prefetch=2)))
    consumer = stomp_client(context)
    consumer.send("SUBSCRIBE", {"destination": "/queue/q", "id": "s", "ack": "client-individual"})
    sender = stomp_client(context)
    for i in range(5):
        sender.send("SEND", {"destination": "/queue/q"}, b"m%d" % i)
    received = consumer.frames()
    assert [f.body for f in received] == [b"m0", b"m1"]
    while received:
        consumer.send("ACK", {"id": received[0].headers["ack"]})
        received = received[1:] + consumer.frames()
        if received:
            assert len(received) <= 2
    assert context.broker.queue_depth("/queue/q") == 0


def test_session_never_holds_more_unacked_than_the_prefetch():
    """A consumer that never acks holds at most the prefetch; a topic one is closed with ERROR."""
    context = make_context(broker=Broker(limits=BrokerLimits(prefetch=100)))
    queue_consumer = stomp_client(context)
    queue_consumer.send("SUBSCRIBE", {"destination": "/queue/q", "id": "q",
                                      "ack": "client-individual"})
    topic_consumer = stomp_client(context)
    topic_consumer.send("SUBSCRIBE", {"destination": "/topic/t", "id": "t",
                                      "ack": "client-individual"})
    sender = stomp_client(context)
    for _ in range(5_000):
        sender.send("SEND", {"destination": "/queue/q"}, b"q")
        sender.send("SEND", {"destination": "/topic/t"}, b"t")
    assert not sender.closed and sender.frames() == []
    (queue_sub,) = queue_consumer.session.subscriptions.values()
    assert len(queue_sub.pending) == 100 and context.broker.queue_depth("/queue/q") == 4_900
    frames = topic_consumer.frames()
    assert len(frames) == 101 and frames[-1].command == "ERROR"
    assert frames[-1].headers["message"] == "too many unacknowledged messages"
    assert topic_consumer.closed


def test_one_session_holds_at_most_max_unacked_across_its_subscriptions():
    """Queue subscriptions of one session stop receiving once the session's total is reached."""
    broker = Broker(limits=BrokerLimits(prefetch=10, max_unacked=15))
    session = Recorder()
    session.on_deliver = lambda s, m: s.pending.__setitem__(m.message_id, m)
    subs = [subscribe_with(broker, session, f"/queue/q{i}", ack_mode="client-individual",
                           sub_id=str(i)) for i in range(3)]
    for i in range(3):
        for n in range(10):
            broker.publish(f"/queue/q{i}", b"%d-%d" % (i, n))
    assert sum(len(s.pending) for s in subs) == 15
    assert [len(s.pending) for s in subs] == [10, 5, 0]
    assert broker.queue_depth("/queue/q2") == 10


def test_acking_below_max_unacked_wakes_the_queues_the_session_was_passed_over_in():
    """After an ACK brings a session under its total, its starved queues deliver again."""
    broker = Broker(limits=BrokerLimits(prefetch=10, max_unacked=2))
    session = Recorder()
    session.on_deliver = lambda s, m: s.pending.__setitem__(m.message_id, m)
    first = subscribe_with(broker, session, "/queue/a", ack_mode="client-individual", sub_id="a")
    second = subscribe_with(broker, session, "/queue/b", ack_mode="client-individual", sub_id="b")
    broker.publish("/queue/a", b"a1")
    broker.publish("/queue/a", b"a2")
    broker.publish("/queue/b", b"b1")
    assert session.bodies == [b"a1", b"a2"] and broker.queue_depth("/queue/b") == 1
    first.pending.pop(next(iter(first.pending)))
    broker.settled(first)
    assert session.bodies == [b"a1", b"a2", b"b1"] and len(second.pending) == 1


def test_topic_subscription_of_a_session_at_max_unacked_is_closed():
    """A client-mode topic subscription whose session holds max_unacked messages is failed."""
    broker = Broker(limits=BrokerLimits(prefetch=10, max_unacked=3))
    session = Recorder()
    session.on_deliver = lambda s, m: s.pending.__setitem__(m.message_id, m)
    subscribe_with(broker, session, "/queue/q", ack_mode="client", sub_id="q")
    subscribe_with(broker, session, "/topic/t", ack_mode="client", sub_id="t")
    for n in range(3):
        broker.publish("/queue/q", b"%d" % n)
    broker.publish("/topic/t", b"t")
    assert session.failures and session.failures[0][0] == "too many unacknowledged messages"
    assert "3 per connection" in session.failures[0][1]


def test_one_connection_with_many_subscriptions_never_holds_more_than_max_unacked():
    """200 client-individual subscriptions on one connection hold max_unacked, the rest waits."""
    context = make_context(broker=Broker(limits=BrokerLimits(prefetch=50, max_unacked=500)))
    hoarder = stomp_client(context)
    for i in range(200):
        hoarder.send("SUBSCRIBE", {"destination": "/queue/q", "id": str(i),
                                   "ack": "client-individual"})
    sender = stomp_client(context)
    for _ in range(3_000):
        sender.send("SEND", {"destination": "/queue/q"}, b"m")
    assert not sender.closed
    assert len(hoarder.frames()) == 500
    assert sum(len(s.pending) for s in hoarder.session.subscriptions.values()) == 500
    assert context.broker.queue_depth("/queue/q") == 2_500


def test_closing_session_is_not_handed_messages_while_it_goes():
    """Messages that waited behind a closing session's prefetch go to others, not redelivered."""
    context = make_context(broker=Broker(limits=BrokerLimits(prefetch=1)))
    leaving = stomp_client(context)
    for name in ("a", "b"):
        leaving.send("SUBSCRIBE", {"destination": "/queue/q", "id": name,
                                   "ack": "client-individual"})
    sender = stomp_client(context)
    for n in range(5):
        sender.send("SEND", {"destination": "/queue/q"}, b"m%d" % n)
    assert len(leaving.frames()) == 2
    staying = stomp_client(context)
    staying.send("SUBSCRIBE", {"destination": "/queue/elsewhere", "id": "x"})
    leaving.session.connection_lost()
    staying.send("SUBSCRIBE", {"destination": "/queue/q", "id": "s"})
    got = {f.body: f.headers.get("x-delivery-count") for f in staying.frames()}
    assert got == {b"m0": "1", b"m1": "1", b"m2": None, b"m3": None, b"m4": None}


# -- random operations -----------------------------------------------------------


class MachineConsumer:
    """A Subscriber for the state machine: acks later, breaks when told to, closes as a session."""

    def __init__(self, machine: BrokerMachine) -> None:
        self.machine = machine
        self.tracker = AckTracker(machine.broker)
        self.broken = False
        self.failed = False

    def deliver(self, subscription: Subscription, message: Message) -> None:
        if subscription.ack_mode != "auto":
            subscription.pending[message.message_id] = message
        if self.broken:
            raise TransportGone("broken")
        if subscription.ack_mode == "auto" and subscription.key.startswith("/queue/"):
            self.machine.consumed.append(message.message_id)

    def fail(self, message: str, detail: str = "") -> None:
        self.failed = True
        self.tracker.release()


QUEUES = ["/queue/a", "/queue/b", "/queue/c", "/queue/d"]
DESTINATIONS = [*QUEUES, "/topic/t", "/user/queue/u"]


class BrokerMachine(RuleBasedStateMachine):
    """Random subscribes, sends, acks, nacks, leaves and broken transports against one broker."""

    def __init__(self) -> None:
        super().__init__()
        self.limits = BrokerLimits(max_queued_bytes=20_000, max_queue_messages=6, max_queues=3,
                                   max_redeliveries=2, prefetch=3, max_unacked=5)
        self.broker = Broker(limits=self.limits)
        #: A few sessions, each with any number of subscriptions.
        self.consumers = [MachineConsumer(self) for _ in range(3)]
        self.subscriptions: list[Subscription] = []
        self.published: set[str] = set()
        self.consumed: list[str] = []
        self.serial = 0

    @rule(destination=st.sampled_from(DESTINATIONS),
          ack_mode=st.sampled_from(["auto", "client", "client-individual"]),
          consumer=st.integers(0, 2))
    def subscribe(self, destination: str, ack_mode: str, consumer: int) -> None:
        self.serial += 1
        session = self.consumers[consumer]
        if session.failed or session.broken:
            session = self.consumers[consumer] = MachineConsumer(self)
        sub = Subscription(session, str(self.serial), destination, ack_mode,
                           session.tracker.next_serial())
        try:
            self.broker.subscribe(sub, "alice")
        except BrokerError:
            assert destination in QUEUES and self.broker.queue_count >= self.limits.max_queues
            return
        session.tracker.add(sub)
        self.subscriptions.append(sub)

    @rule(destination=st.sampled_from(DESTINATIONS), size=st.integers(0, 4000))
    def publish(self, destination: str, size: int) -> None:
        if destination.startswith("/user/"):
            destination = user_destination_key("alice", destination)
        try:
            message = self.broker.publish(destination, bytes(size))
        except BrokerError:
            assert destination in QUEUES
            return
        if destination in QUEUES:
            self.published.add(message.message_id)

    @rule(data=st.data(), requeue=st.booleans())
    def settle(self, data: st.DataObject, requeue: bool) -> None:
        live = [s for s in self.subscriptions if s.pending]
        if not live:
            return
        sub = data.draw(st.sampled_from(live))
        message_id = data.draw(st.sampled_from(list(sub.pending)))
        message = sub.pending.pop(message_id)
        if requeue:
            self.broker.requeue(sub.key, [message])
        elif sub.key.startswith("/queue/"):
            self.consumed.append(message_id)
        self.broker.settled(sub)

    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        if self.subscriptions:
            sub = data.draw(st.sampled_from(self.subscriptions))
            self.subscriptions.remove(sub)
            sub.subscriber.tracker.remove(sub.id)
            self.broker.unsubscribe(sub)

    @rule(data=st.data())
    def break_transport(self, data: st.DataObject) -> None:
        if self.subscriptions:
            data.draw(st.sampled_from(self.subscriptions)).subscriber.broken = True

    @invariant()
    def failed_subscribers_are_gone(self) -> None:
        self.subscriptions = [s for s in self.subscriptions if not s.subscriber.failed]
        for key in {s.key for s in self.subscriptions}:
            assert self.broker.subscriber_count(key) == sum(
                1 for s in self.subscriptions if s.key == key
            )

    @invariant()
    def no_subscription_holds_more_than_its_prefetch(self) -> None:
        for sub in self.subscriptions:
            assert len(sub.pending) <= self.limits.prefetch

    @invariant()
    def no_session_holds_more_than_max_unacked(self) -> None:
        for consumer in self.consumers:
            held = sum(len(s.pending) for s in self.subscriptions if s.subscriber is consumer)
            assert held <= self.limits.max_unacked
            mine = [s for s in self.subscriptions if s.subscriber is consumer]
            if mine:
                assert mine[0].pending.total.count == held

    @invariant()
    def no_consumer_with_room_leaves_messages_waiting(self) -> None:
        def has_room(sub: Subscription) -> bool:
            return sub.ack_mode == "auto" or (
                len(sub.pending) < self.limits.prefetch
                and sub.pending.total.count < self.limits.max_unacked
            )

        for queue in self.broker.queues:
            if queue.backlog:
                assert not [s for s in queue.subscriptions if has_room(s)]

    @invariant()
    def queue_accounting_holds(self) -> None:
        queues = list(self.broker.queues)
        assert all(q.subscriptions or q.backlog for q in queues), "idle queues are forgotten"
        assert self.broker.queued_bytes == sum(m.size for q in queues for m in q.backlog)
        assert self.broker.queued_bytes == sum(q.queued_bytes for q in queues)
        dead = [q for q in queues if q.name == self.limits.dead_letter_queue]
        for queue in dead:
            assert len(queue.backlog) <= self.limits.max_queue_messages

    @invariant()
    def every_queue_message_is_somewhere_exactly_once(self) -> None:
        waiting = [m.message_id for q in self.broker.queues for m in q.backlog]
        unacked = [mid for s in self.subscriptions if s.key.startswith("/queue/")
                   for mid in s.pending]
        held = waiting + unacked + self.consumed
        assert len(held) == len(set(held)), "no message is in two places"
        assert set(held) <= self.published
        assert len(self.published) - len(held) == self.broker.dead_letters_dropped


TestBrokerMachine = BrokerMachine.TestCase
TestBrokerMachine.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)


def test_dead_lettering_logs_sparsely_and_counts_exactly():
    """Dead-lettering 2,000 messages logs a handful of lines while the counters stay exact."""
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        broker = Broker(limits=BrokerLimits(max_redeliveries=0, max_queue_messages=100))
        for i in range(2_000):
            broker.requeue("/queue/q", [Message("/queue/q", f"m{i}", b"x")])
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert broker.dead_lettered == 2_000 and broker.dead_letters_dropped == 1_900
    totals = sorted(e["total"] for e in events if "total" in e)
    assert totals == [1, 1, 10, 10, 100, 100, 1000, 1000]


def test_closing_session_at_max_unacked_takes_nothing_from_its_starved_queues():
    """While a session at its total closes, its starved queues are not drained into it."""
    context = make_context(broker=Broker(limits=BrokerLimits(prefetch=5, max_unacked=2)))
    leaving = stomp_client(context)
    for name in ("a", "b"):
        leaving.send("SUBSCRIBE", {"destination": f"/queue/{name}", "id": name,
                                   "ack": "client-individual"})
    sender = stomp_client(context)
    for name, count in (("a", 2), ("b", 3)):
        for n in range(count):
            sender.send("SEND", {"destination": f"/queue/{name}"}, b"%s%d" % (name.encode(), n))
    assert [f.body for f in leaving.frames()] == [b"a0", b"a1"]
    leaving.session.connection_lost()
    staying = stomp_client(context)
    staying.send("SUBSCRIBE", {"destination": "/queue/b", "id": "b"})
    got = [(f.body, f.headers.get("x-delivery-count")) for f in staying.frames()]
    assert got == [(b"b0", None), (b"b1", None), (b"b2", None)]
    assert context.broker.dead_lettered == 0


def test_interest_listeners_hear_of_the_first_and_the_last_subscriber_of_a_key() -> None:
    """A topic or user key is reported wanted at its first subscriber and unwanted when its
    last leaves; later subscribers, queues and a failing listener change nothing else."""
    broker = Broker()
    heard: list[tuple[str, bool]] = []

    def failing(key: str, wanted: bool) -> None:
        raise RuntimeError("a listener that fails")

    broker.interest_listeners.extend([failing, lambda key, wanted: heard.append((key, wanted))])
    first = Subscription(Recorder(), "1", "/topic/a")
    second = Subscription(Recorder(), "2", "/topic/a")
    mine = Subscription(Recorder(), "3", "/user/queue/x")
    job = Subscription(Recorder(), "4", "/queue/jobs")
    for subscription in (first, second, mine, job):
        broker.subscribe(subscription, "alice")
    assert heard == [("/topic/a", True), ("/user/alice/queue/x", True)]
    assert sorted(broker.wanted_keys()) == ["/topic/a", "/user/alice/queue/x"]
    broker.unsubscribe(first)
    assert heard[-1] == ("/user/alice/queue/x", True)
    broker.unsubscribe(second)
    broker.unsubscribe(job)
    assert heard[-1] == ("/topic/a", False)
    assert broker.wanted_keys() == ["/user/alice/queue/x"]
