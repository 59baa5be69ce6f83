"""Unit tests for the pure broker: routing, fan-out, queues and user destinations."""

from __future__ import annotations

import pytest

from stomp_chat.broker import (
    ACK_CLIENT,
    Broker,
    BrokerError,
    Message,
    Subscription,
    user_destination_key,
)
from stomp_chat.stomp.frame import V1_0, V1_1, V1_2
from stomp_chat.stomp.parser import FrameParser


class Recorder:
    """A Subscriber that records what the broker delivers to it."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.received: list[tuple[Subscription, Message]] = []
        self.on_deliver = None

    def deliver(self, subscription: Subscription, message: Message) -> None:
        self.received.append((subscription, message))
        if self.on_deliver is not None:
            self.on_deliver(subscription, message)

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
    assert r.received[-1][1] is message


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
    broker = Broker(max_queue_backlog=2)
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
    broker = Broker(max_queue_backlog=1)
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
