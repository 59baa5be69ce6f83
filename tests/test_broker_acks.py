"""Unit tests for stomp_chat.broker.acks: what ACK/NACK name, and settling them."""

from __future__ import annotations

import pytest

from stomp_chat.broker import ACK_CLIENT, ACK_CLIENT_INDIVIDUAL, Broker, Subscription
from stomp_chat.broker.acks import AckTracker
from stomp_chat.errors import ProtocolError
from stomp_chat.stomp.frame import Frame


class Holder:
    """A subscriber that keeps every delivery pending, as a client-ack session does."""

    def __init__(self) -> None:
        self.delivered: list = []

    def deliver(self, subscription, message) -> None:
        subscription.pending[message.message_id] = message
        self.delivered.append(message)


def setup(destination: str = "/queue/q", ack_mode: str = ACK_CLIENT_INDIVIDUAL):
    broker = Broker()
    tracker = AckTracker(broker)
    holder = Holder()
    sub = Subscription(holder, "s1", destination, ack_mode, tracker.next_serial())
    broker.subscribe(sub, "anon")
    tracker.add(sub)
    return broker, tracker, holder, sub


def ack(**headers: str) -> Frame:
    return Frame("ACK", dict(headers))


def test_serials_count_up():
    """Every subscription gets a new serial."""
    tracker = AckTracker(Broker())
    assert [tracker.next_serial() for _ in range(3)] == [1, 2, 3]


def test_target_1_2_by_ack_id():
    """A 1.2 ack id names the message and the subscription's serial."""
    broker, tracker, holder, sub = setup()
    message = broker.publish("/queue/q", b"x")
    assert tracker.target(ack(id=f"{message.message_id}@{sub.serial}"), "1.2") == (
        sub, message.message_id
    )


def test_target_1_1_by_message_id_and_subscription():
    """1.1 names the message-id and the subscription id."""
    broker, tracker, _, sub = setup()
    message = broker.publish("/queue/q", b"x")
    frame = ack(**{"message-id": message.message_id, "subscription": "s1"})
    assert tracker.target(frame, "1.1") == (sub, message.message_id)


def test_target_1_0_searches_every_subscription():
    """1.0 names only the message-id."""
    broker, tracker, _, sub = setup()
    message = broker.publish("/queue/q", b"x")
    assert tracker.target(ack(**{"message-id": message.message_id}), "1.0") == (
        sub, message.message_id
    )


@pytest.mark.parametrize("ack_id", ["nope", "m@x", "m@", "@1", "m@99", "m@" + "9" * 5000])
def test_unknown_or_malformed_ack_id_is_a_protocol_error(ack_id):
    """An ack id that names no pending message, however long its serial, is a ProtocolError."""
    _, tracker, _, _ = setup()
    with pytest.raises(ProtocolError) as caught:
        tracker.target(ack(id=ack_id), "1.2")
    assert caught.value.message == "unknown ack id"
    assert len(caught.value.detail) < 300


def test_missing_header_is_a_protocol_error():
    """An ACK without the header its version needs is a ProtocolError naming it."""
    _, tracker, _, _ = setup()
    with pytest.raises(ProtocolError, match="missing header 'id'"):
        tracker.target(ack(), "1.2")


def test_unknown_subscription_is_a_protocol_error():
    """A 1.1 ACK naming no subscription of the session is refused."""
    _, tracker, _, _ = setup()
    with pytest.raises(ProtocolError, match="no such subscription"):
        tracker.target(ack(**{"message-id": "m", "subscription": "zz"}), "1.1")


def test_settle_client_mode_is_cumulative():
    """In client mode an ACK settles the named message and every earlier one."""
    broker, tracker, _, sub = setup(ack_mode=ACK_CLIENT)
    first, second, third = (broker.publish("/queue/q", b"x") for _ in range(3))
    tracker.settle(sub, second.message_id, requeue=False)
    assert list(sub.pending) == [third.message_id]


def test_settle_individual_mode_is_one_message():
    """In client-individual mode only the named message is settled."""
    broker, tracker, _, sub = setup()
    first, second = (broker.publish("/queue/q", b"x") for _ in range(2))
    tracker.settle(sub, second.message_id, requeue=False)
    assert list(sub.pending) == [first.message_id]


def test_nack_requeues_to_the_queue():
    """A NACK gives the message back to its queue, which redelivers it."""
    broker, tracker, holder, sub = setup()
    message = broker.publish("/queue/q", b"x")
    tracker.settle(sub, message.message_id, requeue=True)
    assert [m.message_id for m in holder.delivered] == [message.message_id] * 2


def test_settling_twice_is_harmless():
    """A message settled already (by a cumulative ACK) is skipped."""
    broker, tracker, _, sub = setup()
    message = broker.publish("/queue/q", b"x")
    tracker.settle(sub, message.message_id, requeue=False)
    tracker.settle(sub, message.message_id, requeue=True)
    assert not sub.pending


def test_remove_forgets_the_subscription():
    """A removed subscription is no longer found by id or serial."""
    broker, tracker, _, sub = setup()
    message = broker.publish("/queue/q", b"x")
    assert tracker.remove("s1") is sub
    assert tracker.remove("s1") is None
    assert "s1" not in tracker
    with pytest.raises(ProtocolError):
        tracker.target(ack(id=f"{message.message_id}@{sub.serial}"), "1.2")


def test_release_gives_unacked_messages_to_another_subscriber():
    """Released subscriptions are unsubscribed and their unacked messages go elsewhere."""
    broker, tracker, holder, sub = setup()
    message = broker.publish("/queue/q", b"x")
    other = Holder()
    broker.subscribe(Subscription(other, "o", "/queue/q", ACK_CLIENT_INDIVIDUAL), "anon")
    tracker.release()
    assert len(tracker) == 0
    assert [m.message_id for m in other.delivered] == [message.message_id]
    assert len(holder.delivered) == 1


def test_ack_at_the_prefetch_lets_the_queue_send_the_next_message():
    """Settling a message of a subscription at its prefetch hands it the next waiting one."""
    from stomp_chat.broker import BrokerLimits

    broker = Broker(limits=BrokerLimits(prefetch=1))
    tracker = AckTracker(broker)
    holder = Holder()
    sub = Subscription(holder, "s1", "/queue/q", ACK_CLIENT_INDIVIDUAL, tracker.next_serial())
    broker.subscribe(sub, "anon")
    tracker.add(sub)
    first = broker.publish("/queue/q", b"1")
    broker.publish("/queue/q", b"2")
    assert [m.body for m in holder.delivered] == [b"1"]
    tracker.settle(sub, first.message_id, requeue=False)
    assert [m.body for m in holder.delivered] == [b"1", b"2"]


def test_queues_are_told_which_messages_were_acknowledged_and_not_of_nacks():
    """ACK tells the queues the messages it settles (a cumulative ACK, all of them); NACK
    gives them back instead, so the queues hear nothing of it as acknowledged."""
    broker, tracker, holder, sub = setup(ack_mode=ACK_CLIENT)
    told: list[list[str]] = []
    broker.queues.acknowledged = lambda name, messages: told.append(  # type: ignore[method-assign]
        [m.body.decode() for m in messages])
    for body in (b"a", b"b", b"c"):
        broker.publish("/queue/q", body)
    tracker.settle(sub, holder.delivered[1].message_id, requeue=False)
    assert told == [["a", "b"]]
    tracker.settle(sub, holder.delivered[2].message_id, requeue=True)
    assert told == [["a", "b"]]
