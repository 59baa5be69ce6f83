"""Cluster-wide queues: Broker + ClusterQueues pairs ("nodes") in this process, sharing
queues through Redis streams on the real Redis and the real reactor.

Every test gets a namespace of its own; under CI a Redis that is down fails the tests.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from stomp_chat.broker import (
    ACK_AUTO,
    ACK_CLIENT,
    ACK_CLIENT_INDIVIDUAL,
    Broker,
    BrokerError,
    BrokerLimits,
    Message,
    Subscription,
)
from stomp_chat.broker.acks import AckTracker
from stomp_chat.cluster import parse_redis_url
from stomp_chat.cluster.streams import (
    ClusterQueues,
    StreamMessage,
    entry_of,
    message_of,
)
from tests.tcpproxy import TcpProxy
from tests.test_cluster_relay import (
    REDIS_HOST,
    REDIS_PORT,
    eventually,
    free_port,
    outcome,
    require_redis,
)

#: A short lease, so that a dead node's messages come back quickly.
LEASE = 1.0


class Consumer:
    """A session as the broker sees it: records deliveries, keeps client-mode ones pending."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.acks = AckTracker(broker)
        self.messages: list[Message] = []
        self.failed: list[str] = []

    def deliver(self, subscription: Subscription, message: Message) -> None:
        if subscription.ack_mode != ACK_AUTO:
            subscription.pending[message.message_id] = message
        self.messages.append(message)

    def fail(self, message: str, detail: str = "") -> None:
        self.failed.append(message)

    def subscribe(self, destination: str, ack_mode: str = ACK_AUTO) -> Subscription:
        sub = Subscription(self, uuid.uuid4().hex, destination, ack_mode,
                           self.acks.next_serial())
        self.broker.subscribe(sub, "anon")
        self.acks.add(sub)
        return sub

    def ack(self, message: Message, *, requeue: bool = False) -> None:
        for sub in self.acks:
            if message.message_id in sub.pending:
                self.acks.settle(sub, message.message_id, requeue=requeue)
                return
        raise AssertionError(f"{message.message_id} is not pending")

    def close(self) -> None:
        self.acks.release()

    @property
    def bodies(self) -> list[bytes]:
        return [m.body for m in self.messages]


class QueueNode:
    """One server's broker and its cluster queues."""

    def __init__(self, url: str, limits: BrokerLimits, lease: float) -> None:
        self.broker = Broker(limits=limits)
        self.queues = ClusterQueues(self.broker, parse_redis_url(url), reactor, lease=lease,
                                    reply_timeout=2.0, max_retry=0.2)

    async def send(self, destination: str, body: bytes, **headers: str) -> Any:
        stored = self.broker.accept(destination, body, headers)
        assert isinstance(stored, Deferred)
        return await outcome(stored, f"storing {body!r}")

    async def stop(self) -> None:
        if self.queues.running:
            try:
                await self.queues.stopService().addTimeout(3, reactor)
            except TimeoutError:
                self.queues.disconnect_now()

    def kill(self) -> None:
        """Vanish as a killed process does: no release, no acknowledgement, no renewal."""
        self.queues._renewal.stop()
        self.queues.running = False
        self.queues.disconnect_now()


class Streams:
    def __init__(self, namespace: str, redis: Any) -> None:
        self.namespace = namespace
        self.url = f"redis://{REDIS_HOST}:{REDIS_PORT}/0?namespace={namespace}"
        self.redis = redis
        self.nodes: list[QueueNode] = []

    async def node(self, url: str | None = None, lease: float = LEASE,
                   **limits: Any) -> QueueNode:
        node = QueueNode(url or self.url, BrokerLimits(**limits), lease)
        self.nodes.append(node)
        node.queues.startService()
        if url is None:
            await eventually(lambda: node.queues.degraded is None and
                             node.queues._reader_id is not None, "the node's links")
        return node

    def key(self, name: str) -> str:
        return f"{self.namespace}:queue:{name}"

    async def length(self, name: str) -> int:
        return int(await self.redis.execute_command("XLEN", self.key(name)))


@pytest_twisted.async_yield_fixture
async def streams() -> AsyncIterator[Streams]:
    """A fresh namespace on the real Redis; its nodes and keys are removed afterwards."""
    require_redis()
    namespace = f"test-{uuid.uuid4().hex}"
    redis = await txredisapi.Connection(REDIS_HOST, REDIS_PORT, charset=None, reconnect=False)
    the_streams = Streams(namespace, redis)
    try:
        yield the_streams
    finally:
        for node in the_streams.nodes:
            await node.stop()
        keys = await redis.keys(f"{namespace}:*")
        if keys:
            await redis.delete(keys)
        await redis.disconnect()


# -- the entry codec (no Redis needed) -----------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"42", b"\x00\n\xff binary\n", "😀".encode()])
def test_entry_round_trip(body: bytes) -> None:
    """An entry gives back message-id, redelivery count, headers and body bytes unchanged."""
    message = Message("/queue/a", "n1-7", body, {"x-ü": "v\nw", "content-type": "a/b"}, 2)
    decoded = message_of("/queue/a", b"1-1", entry_of(message))
    assert (decoded.message_id, decoded.redeliveries, decoded.headers, decoded.body) == (
        "n1-7", 2, message.headers, body)
    assert decoded.entry_id == b"1-1"
    assert entry_of(message).startswith(b"[")


@pytest.mark.parametrize("raw", [b"", b"no newline", b"[1,2]\nx", b'["a",-1,{}]\n',
                                 b'["a",0,{"k":1}]\n', b'["a",true,{}]\n', b"{}\n"])
def test_entry_that_is_not_ours_is_refused(raw: bytes) -> None:
    """message_of raises ValueError for an entry with no metadata line or the wrong shapes."""
    with pytest.raises(ValueError):
        message_of("/queue/a", b"1-1", raw)


def test_redelivered_stream_message_keeps_its_entry() -> None:
    """Marking a read message redelivered or dead-lettered keeps the entry it came from."""
    message = StreamMessage("/queue/a", "m", b"x", {}, 0, b"5-0")
    again = message.redelivered()
    assert isinstance(again, StreamMessage) and again.entry_id == b"5-0"
    assert again.headers["redelivered"] == "true"
    letter = message.dead_lettered("/queue/dead", "/queue/a")
    assert isinstance(letter, StreamMessage) and letter.entry_id == b"5-0"


def test_local_queues_refuse_use_queues_once_in_use() -> None:
    """A broker's queues are replaced only before anyone subscribes to a queue."""
    broker = Broker()
    Consumer(broker).subscribe("/queue/a")
    with pytest.raises(RuntimeError):
        broker.use_queues(lambda *_: broker.queues)


# -- on the real Redis ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_each_message_reaches_one_consumer_across_nodes(streams: Streams) -> None:
    """Messages sent on either node reach exactly one of the consumers on two nodes, and the
    stream is empty once they were written to ack:auto consumers."""
    a, b = await streams.node(), await streams.node()
    on_a, on_b = Consumer(a.broker), Consumer(b.broker)
    on_a.subscribe("/queue/work")
    on_b.subscribe("/queue/work")
    sent = [b"m%d" % i for i in range(60)]
    for i, body in enumerate(sent):
        result = await (a if i % 2 else b).send("/queue/work", body)
        assert isinstance(result, bytes), result  # the entry id: Redis has it
    await eventually(lambda: len(on_a.bodies) + len(on_b.bodies) >= len(sent), "deliveries")
    assert sorted(on_a.bodies + on_b.bodies) == sorted(sent)
    await eventually(lambda: not a.queues.held and not b.queues.held, "acknowledgements")
    assert await streams.length("/queue/work") == 0


@pytest_twisted.ensureDeferred
async def test_message_sent_before_any_consumer_waits_in_the_stream(streams: Streams) -> None:
    """A message sent while nobody subscribes waits in Redis and goes to the first consumer,
    promptly (the reader's long block is cut short)."""
    a, b = await streams.node(), await streams.node()
    other = Consumer(b.broker)
    other.subscribe("/queue/other")  # b's reader now blocks on another queue
    await a.send("/queue/later", b"hello")
    assert await streams.length("/queue/later") == 1
    consumer = Consumer(b.broker)
    consumer.subscribe("/queue/later")
    await eventually(lambda: consumer.bodies == [b"hello"], "the waiting message", 1.0)


@pytest_twisted.ensureDeferred
async def test_full_queue_refuses_with_a_clear_error_and_trims_nothing(
    streams: Streams,
) -> None:
    """Past --max-queue-messages unacknowledged entries a SEND fails with 'queue full', and
    the messages already stored stay."""
    a = await streams.node(max_queue_messages=3)
    for i in range(3):
        await a.send("/queue/full", b"%d" % i)
    refused = await a.send("/queue/full", b"one too many")
    assert refused.check(BrokerError)
    assert "queue full" in refused.getErrorMessage()
    assert await streams.length("/queue/full") == 3
    consumer = Consumer(a.broker)
    consumer.subscribe("/queue/full")
    await eventually(lambda: consumer.bodies == [b"0", b"1", b"2"], "the stored messages")


@pytest_twisted.ensureDeferred
async def test_queued_bytes_are_bounded_across_the_cluster(streams: Streams) -> None:
    """--max-queued-bytes bounds the bytes every queue stream holds together, whichever node
    stored them; acknowledged messages free their bytes, and the total leaves Redis once
    every queue is empty."""
    a = await streams.node(max_queued_bytes=300)
    b = await streams.node(max_queued_bytes=300)
    assert isinstance(await a.send("/queue/x", b"a" * 100), bytes)
    assert isinstance(await b.send("/queue/y", b"b" * 100), bytes)
    refused = await a.send("/queue/z", b"c" * 100)
    assert "the cluster's queues are full" in refused.getErrorMessage()
    consumer = Consumer(b.broker)
    consumer.subscribe("/queue/x")
    await eventually(lambda: consumer.bodies == [b"a" * 100], "the first message")
    await eventually(lambda: not b.queues.held, "its acknowledgement")
    assert isinstance(await a.send("/queue/z", b"c" * 100), bytes)
    consumer.subscribe("/queue/y")
    consumer.subscribe("/queue/z")
    await eventually(lambda: len(consumer.bodies) == 3, "the others")
    await eventually(lambda: not b.queues.held, "their acknowledgements")
    assert await streams.redis.exists(f"{streams.namespace}:queued-bytes") == 0
    assert await streams.redis.execute_command("SCARD", f"{streams.namespace}:queues") == 0


@pytest_twisted.ensureDeferred
async def test_too_many_queues_across_the_cluster_are_refused(streams: Streams) -> None:
    """--max-queues bounds the queue streams holding messages, across nodes."""
    a, b = await streams.node(max_queues=2), await streams.node(max_queues=2)
    await a.send("/queue/one", b"1")
    await b.send("/queue/two", b"2")
    refused = await a.send("/queue/three", b"3")
    assert "too many queues" in refused.getErrorMessage()
    assert isinstance(await b.send("/queue/one", b"again"), bytes)


@pytest_twisted.ensureDeferred
async def test_client_ack_bounds_what_a_node_reads_and_acks_remove_entries(
    streams: Streams,
) -> None:
    """A client-ack consumer with prefetch 2 holds two messages; each ACK lets the next one
    come at once, and acknowledged entries leave the stream."""
    a = await streams.node(prefetch=2)
    for i in range(5):
        await a.send("/queue/slow", b"%d" % i)
    consumer = Consumer(a.broker)
    consumer.subscribe("/queue/slow", ACK_CLIENT_INDIVIDUAL)
    await eventually(lambda: len(consumer.messages) == 2, "the first two")
    assert a.queues.held_count() == 2  # the rest stays in Redis for any node
    started = reactor.seconds()
    for expected in range(5):
        await eventually(lambda n=expected: len(consumer.messages) > n, "the next message", 1.0)
        consumer.ack(consumer.messages[expected])
    assert reactor.seconds() - started < 1.5
    assert consumer.bodies == [b"%d" % i for i in range(5)]
    await eventually(lambda: a.queues.held_count() == 0, "acknowledgements")
    assert await streams.length("/queue/slow") == 0


@pytest_twisted.ensureDeferred
async def test_nack_goes_to_another_node_when_no_local_consumer_is_left(
    streams: Streams,
) -> None:
    """A NACKed message goes to the tail of the stream when its node has no other consumer,
    and another node's consumer gets it marked redelivered."""
    a, b = await streams.node(), await streams.node()
    on_a = Consumer(a.broker)
    on_a.subscribe("/queue/n", ACK_CLIENT)
    await a.send("/queue/n", b"x")
    await eventually(lambda: on_a.bodies == [b"x"], "the first delivery")
    on_b = Consumer(b.broker)
    on_b.subscribe("/queue/n", ACK_CLIENT)
    on_a.close()  # leaves with the message unacknowledged
    await eventually(lambda: on_b.bodies == [b"x"], "the redelivery")
    again = on_b.messages[0]
    assert again.headers["redelivered"] == "true"
    assert again.headers["x-delivery-count"] == "1"
    assert again.message_id == on_a.messages[0].message_id
    on_b.ack(again)
    await eventually(lambda: not b.queues.held, "the acknowledgement")
    assert await streams.length("/queue/n") == 0


@pytest_twisted.ensureDeferred
async def test_dead_nodes_unacked_messages_are_redelivered_after_the_lease(
    streams: Streams,
) -> None:
    """A node that vanishes with messages unacknowledged: another node redelivers them
    (marked redelivered) once the lease ran out, and not the ones that were acknowledged."""
    a, b = await streams.node(), await streams.node()
    on_a = Consumer(a.broker)
    on_a.subscribe("/queue/job", ACK_CLIENT_INDIVIDUAL)
    for i in range(4):
        await a.send("/queue/job", b"%d" % i)
    await eventually(lambda: len(on_a.messages) == 4, "deliveries on a")
    on_a.ack(on_a.messages[0])
    on_a.ack(on_a.messages[2])
    await eventually(lambda: a.queues.held_count() == 2, "two acknowledgements")
    a.kill()
    on_b = Consumer(b.broker)
    on_b.subscribe("/queue/job", ACK_CLIENT_INDIVIDUAL)
    await Deferred.fromCoroutine(eventually(lambda: len(on_b.messages) == 2, "redeliveries",
                                            LEASE * 4))
    assert sorted(on_b.bodies) == [b"1", b"3"]
    assert all(m.headers.get("redelivered") == "true" for m in on_b.messages)
    assert b.queues.reclaimed == 2
    for message in list(on_b.messages):
        on_b.ack(message)
    await eventually(lambda: not b.queues.held, "acknowledgements on b")
    assert await streams.length("/queue/job") == 0


@pytest_twisted.ensureDeferred
async def test_live_node_keeps_its_messages_past_the_lease(streams: Streams) -> None:
    """A live node renews its lease: its unacknowledged messages are not redelivered
    elsewhere however long its consumer holds them."""
    a, b = await streams.node(), await streams.node()
    on_a, on_b = Consumer(a.broker), Consumer(b.broker)
    on_a.subscribe("/queue/keep", ACK_CLIENT_INDIVIDUAL)
    await a.send("/queue/keep", b"mine")
    await eventually(lambda: on_a.bodies == [b"mine"], "the delivery")
    on_b.subscribe("/queue/keep", ACK_CLIENT_INDIVIDUAL)
    with pytest.raises(AssertionError):
        await eventually(lambda: on_b.messages, "a redelivery", LEASE * 3)
    on_a.ack(on_a.messages[0])
    await eventually(lambda: not a.queues.held, "the acknowledgement")


@pytest_twisted.ensureDeferred
async def test_message_that_keeps_coming_back_is_dead_lettered(streams: Streams) -> None:
    """Past --max-redeliveries a NACKed message moves to the dead-letter queue's stream,
    where a consumer on another node gets it with its original destination."""
    a, b = await streams.node(max_redeliveries=1), await streams.node(max_redeliveries=1)
    on_a = Consumer(a.broker)
    on_a.subscribe("/queue/poison", ACK_CLIENT_INDIVIDUAL)
    letters = Consumer(b.broker)
    letters.subscribe("/queue/dead-letter")
    await a.send("/queue/poison", b"bad")
    for delivery in range(2):
        await eventually(lambda n=delivery: len(on_a.messages) > n, "a delivery")
        on_a.ack(on_a.messages[delivery], requeue=True)
    await eventually(lambda: letters.bodies == [b"bad"], "the dead letter")
    assert letters.messages[0].headers["x-original-destination"] == "/queue/poison"
    assert len(on_a.messages) == 2
    await eventually(lambda: not a.queues.held and not b.queues.held, "nothing held")


@pytest_twisted.ensureDeferred
async def test_queue_send_is_refused_while_redis_is_unreachable(streams: Streams) -> None:
    """With no connection to Redis a SEND to a queue is refused at once with 'queue
    unavailable: cluster link down'; topics still work locally."""
    lost = await streams.node(url=f"redis://{REDIS_HOST}:{free_port()}/0?namespace=x")
    with pytest.raises(BrokerError, match="queue unavailable: cluster link down"):
        lost.broker.accept("/queue/a", b"x", {})
    topic = Consumer(lost.broker)
    topic.subscribe("/topic/t")
    assert lost.broker.accept("/topic/t", b"still", {}) is None
    assert topic.bodies == [b"still"]
    assert lost.queues.degraded is not None


@pytest_twisted.ensureDeferred
async def test_stopping_node_gives_everything_back_at_once(streams: Streams) -> None:
    """A node that stops in order (its sessions closed first, as on SIGTERM) gives back its
    consumers' unacknowledged messages and a read under way: another node gets them long
    before the lease would run out."""
    a = await streams.node(lease=30.0)
    b = await streams.node(lease=30.0)
    on_a = Consumer(a.broker)
    on_a.subscribe("/queue/handover", ACK_CLIENT_INDIVIDUAL)
    other = Consumer(a.broker)
    other.subscribe("/queue/idle")  # a's reader blocks on this one when the stop begins
    for i in range(3):
        await a.send("/queue/handover", b"%d" % i)
    await eventually(lambda: len(on_a.messages) == 3, "deliveries on a")
    on_b = Consumer(b.broker)
    on_b.subscribe("/queue/handover", ACK_CLIENT_INDIVIDUAL)
    on_a.close()
    other.close()
    await a.stop()
    await eventually(lambda: len(on_b.messages) == 3, "the handover", 2.0)
    assert sorted(on_b.bodies) == [b"0", b"1", b"2"]
    assert all(m.headers["redelivered"] == "true" for m in on_b.messages)


@pytest_twisted.ensureDeferred
async def test_full_dead_letter_queue_drops_its_oldest(streams: Streams) -> None:
    """A dead-letter stream at --max-queue-messages drops its oldest letter to take a new
    one, and the drop is counted."""
    a = await streams.node(max_redeliveries=0, max_queue_messages=2)
    on_a = Consumer(a.broker)
    on_a.subscribe("/queue/poison", ACK_CLIENT_INDIVIDUAL)
    for i in range(3):
        await a.send("/queue/poison", b"%d" % i)
        await eventually(lambda n=i: len(on_a.messages) > n, "a delivery")
        on_a.ack(on_a.messages[i], requeue=True)
        await eventually(lambda: not a.queues.held, "the dead letter")
    await eventually(lambda: a.queues.queues.dead_letters_dropped == 1, "the drop counted")
    assert await streams.length("/queue/dead-letter") == 2
    letters = Consumer(a.broker)
    letters.subscribe("/queue/dead-letter")
    await eventually(lambda: letters.bodies == [b"1", b"2"], "the newest letters")


@pytest_twisted.ensureDeferred
async def test_queues_work_again_after_redis_restarts_empty(streams: Streams, tmp_path) -> None:
    """A throwaway Redis restarted without its data: the node reconnects by itself, makes the
    stream's group again and delivers what is sent after, once; a SEND in between is
    refused with a clear error."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed")
    port = free_port()

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    redis = start()
    try:
        await eventually(lambda: _answers(port), "the throwaway Redis")
        node = await streams.node(url=f"redis://{REDIS_HOST}:{port}/0?namespace=restart")
        await eventually(lambda: node.queues.degraded is None and
                         node.queues._reader_id is not None, "the node's links")
        consumer = Consumer(node.broker)
        consumer.subscribe("/queue/r")
        assert isinstance(await node.send("/queue/r", b"before"), bytes)
        await eventually(lambda: consumer.bodies == [b"before"], "the first message")
        redis.terminate()
        redis.wait()
        await eventually(lambda: node.queues.degraded is not None, "the outage")
        with pytest.raises(BrokerError, match="cluster link down"):
            node.broker.accept("/queue/r", b"refused", {})
        redis = start()
        await eventually(lambda: node.queues.degraded is None, "the reconnection", 5.0)
        assert isinstance(await node.send("/queue/r", b"after"), bytes)
        await eventually(lambda: consumer.bodies == [b"before", b"after"], "the next message")
    finally:
        redis.terminate()
        redis.wait()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((REDIS_HOST, port), timeout=0.2) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


# -- attacks --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_queue_with_only_subscribers_still_counts_against_max_queues(
    streams: Streams,
) -> None:
    """A queue some node reads (its stream made empty by the read) but that holds nothing is
    no excuse to pass --max-queues: the first message stored in it is refused."""
    a, b = await streams.node(max_queues=1), await streams.node(max_queues=1)
    await a.send("/queue/one", b"1")
    Consumer(b.broker).subscribe("/queue/two", ACK_CLIENT)
    await eventually(lambda: "/queue/two" in b.queues._grouped, "b's read of /queue/two")
    refused = await a.send("/queue/two", b"2")
    assert "too many queues" in refused.getErrorMessage()
    assert await streams.redis.execute_command("SCARD", f"{streams.namespace}:queues") == 1


@pytest_twisted.ensureDeferred
async def test_queues_subscribed_to_and_left_leave_nothing_in_redis(streams: Streams) -> None:
    """A client subscribing to many queue names and leaving them does not leave an empty
    stream per name in Redis: Redis memory stays bounded by what queues hold."""
    a = await streams.node()
    consumer = Consumer(a.broker)
    for i in range(20):
        consumer.subscribe(f"/queue/name-{i}")
    await eventually(lambda: len(a.queues._grouped) == 20, "the reads")
    consumer.close()

    async def keys() -> list[Any]:
        return list(await streams.redis.keys(f"{streams.namespace}:queue:*"))

    for _ in range(50):
        if not await keys():
            break
        await deferLater(reactor, 0.05, lambda: None)
    assert await keys() == []


@pytest_twisted.ensureDeferred
async def test_node_still_reading_a_queue_another_left_gets_its_messages_at_once(
    streams: Streams,
) -> None:
    """When one node's last consumer of a queue leaves and its empty stream is removed,
    another node reading that queue makes it again and gets what is sent next at once."""
    a, b = await streams.node(), await streams.node()
    leaving, staying = Consumer(a.broker), Consumer(b.broker)
    leaving.subscribe("/queue/shared")
    staying.subscribe("/queue/shared")
    await eventually(lambda: "/queue/shared" in a.queues._grouped
                     and "/queue/shared" in b.queues._grouped, "both reads")
    leaving.close()
    for i in range(3):
        await deferLater(reactor, 0.1, lambda: None)
        started = reactor.seconds()
        assert isinstance(await a.send("/queue/shared", b"%d" % i), bytes)
        await eventually(lambda n=i: len(staying.messages) > n, "the delivery on b", 1.0)
        assert reactor.seconds() - started < 1.0
    assert staying.bodies == [b"0", b"1", b"2"]
    assert leaving.messages == []


@pytest_twisted.ensureDeferred
async def test_dead_nodes_message_behind_many_live_pending_ones_is_still_claimed(
    streams: Streams,
) -> None:
    """The sweep finds a dead node's message however many older messages live nodes hold
    (a sweep that looked only at the first entries of the pending list never would)."""
    live = await streams.node(prefetch=30)
    holder = Consumer(live.broker)
    holder.subscribe("/queue/deep", ACK_CLIENT_INDIVIDUAL)
    for i in range(30):
        await live.send("/queue/deep", b"live-%d" % i)
    await eventually(lambda: len(holder.messages) == 30, "the live node's 30")
    dying = await streams.node()
    on_dying = Consumer(dying.broker)
    on_dying.subscribe("/queue/deep", ACK_CLIENT_INDIVIDUAL)
    await live.send("/queue/deep", b"orphan")
    await eventually(lambda: on_dying.bodies == [b"orphan"], "the dying node's delivery")
    dying.kill()
    sweeper = await streams.node(prefetch=1)
    on_sweeper = Consumer(sweeper.broker)
    on_sweeper.subscribe("/queue/deep", ACK_CLIENT_INDIVIDUAL)
    await Deferred.fromCoroutine(eventually(lambda: on_sweeper.bodies == [b"orphan"],
                                            "the orphan's redelivery", LEASE * 4))
    assert len(holder.messages) == 30  # nothing taken from the live node


@pytest_twisted.ensureDeferred
async def test_live_nodes_messages_are_not_taken_after_a_redis_outage_longer_than_the_lease(
    streams: Streams,
) -> None:
    """Redis unreachable for longer than the lease, then back to one node a little before
    the other (reconnections are never simultaneous): the first back does not take the
    messages the other, alive all along, still holds, so nothing is delivered twice."""
    with TcpProxy(REDIS_HOST, REDIS_PORT) as to_a, TcpProxy(REDIS_HOST, REDIS_PORT) as to_b:
        a = await streams.node(url=f"redis://{REDIS_HOST}:{to_a.port}/0?namespace="
                               f"{streams.namespace}")
        b = await streams.node(url=f"redis://{REDIS_HOST}:{to_b.port}/0?namespace="
                               f"{streams.namespace}")
        for node in (a, b):
            await eventually(lambda n=node: n.queues.degraded is None and
                             n.queues._reader_id is not None, "the node's links")
        on_a = Consumer(a.broker)
        on_a.subscribe("/queue/outage", ACK_CLIENT_INDIVIDUAL)
        await a.send("/queue/outage", b"held by a")
        await eventually(lambda: on_a.bodies == [b"held by a"], "the delivery on a")
        on_b = Consumer(b.broker)
        on_b.subscribe("/queue/outage", ACK_CLIENT_INDIVIDUAL)
        to_a.block()
        to_b.block()
        await eventually(lambda: a.queues.degraded and b.queues.degraded, "the outage")
        await deferLater(reactor, LEASE * 1.5, lambda: None)
        to_b.unblock()
        await eventually(lambda: b.queues.degraded is None, "b's reconnection", 5.0)
        await deferLater(reactor, LEASE / 2, lambda: None)
        to_a.unblock()
        await eventually(lambda: a.queues.degraded is None, "a's reconnection", 5.0)
        with pytest.raises(AssertionError):
            await eventually(lambda: on_b.messages, "a second delivery", LEASE * 2)
        on_a.ack(on_a.messages[0])
        await eventually(lambda: not a.queues.held, "the acknowledgement")
        assert await streams.length("/queue/outage") == 0


@pytest_twisted.ensureDeferred
async def test_lease_lost_by_a_stalled_node_the_first_ack_removes_the_message(
    streams: Streams,
) -> None:
    """A live node that does not renew for the lease loses its message to another node,
    which delivers it again (the documented duplicate); the stalled node's late ACK removes
    it, the other delivery's ACK does nothing, and no byte stays counted."""
    a, b = await streams.node(), await streams.node()
    on_a = Consumer(a.broker)
    on_a.subscribe("/queue/stall", ACK_CLIENT_INDIVIDUAL)
    await a.send("/queue/stall", b"slow")
    await eventually(lambda: on_a.bodies == [b"slow"], "the delivery on a")
    a.queues._renewal.stop()  # a stalls: no renewal
    on_b = Consumer(b.broker)
    on_b.subscribe("/queue/stall", ACK_CLIENT_INDIVIDUAL)
    await Deferred.fromCoroutine(eventually(lambda: on_b.bodies == [b"slow"],
                                            "b's claim", LEASE * 4))
    assert on_b.messages[0].message_id == on_a.messages[0].message_id
    assert on_b.messages[0].headers["redelivered"] == "true"
    await a.queues._renew_and_sweep()  # a wakes up: it learns the message is b's now
    assert not a.queues.held
    on_a.ack(on_a.messages[0])
    await eventually(lambda: not a.queues.unconfirmed, "a's acknowledgement")
    assert await streams.length("/queue/stall") == 0
    on_b.ack(on_b.messages[0])
    await eventually(lambda: not b.queues.held, "b's acknowledgement")
    assert await streams.redis.exists(f"{streams.namespace}:queued-bytes") == 0
    a.queues._renewal.start(LEASE / 3, now=False)


@pytest_twisted.ensureDeferred
async def test_nack_of_a_message_another_node_claimed_does_not_deliver_it_again_here(
    streams: Streams,
) -> None:
    """A NACK that comes after another node claimed the message (the NACKing node had lost
    its lease) does not hand it to a second local consumer: the other node has it now."""
    a, b = await streams.node(), await streams.node()
    on_a, also_on_a = Consumer(a.broker), Consumer(a.broker)
    on_a.subscribe("/queue/lost", ACK_CLIENT_INDIVIDUAL)
    await a.send("/queue/lost", b"once more")
    await eventually(lambda: on_a.bodies == [b"once more"], "the delivery on a")
    also_on_a.subscribe("/queue/lost", ACK_CLIENT_INDIVIDUAL)
    a.queues._renewal.stop()
    on_b = Consumer(b.broker)
    on_b.subscribe("/queue/lost", ACK_CLIENT_INDIVIDUAL)
    await Deferred.fromCoroutine(eventually(lambda: on_b.bodies == [b"once more"],
                                            "b's claim", LEASE * 4))
    await a.queues._renew_and_sweep()
    on_a.ack(on_a.messages[0], requeue=True)
    with pytest.raises(AssertionError):
        await eventually(lambda: also_on_a.messages, "a third delivery", LEASE)
    on_b.ack(on_b.messages[0])
    await eventually(lambda: not b.queues.held, "b's acknowledgement")
    assert await streams.length("/queue/lost") == 0
    a.queues._renewal.start(LEASE / 3, now=False)


@pytest_twisted.ensureDeferred
async def test_consumer_with_little_room_does_not_slow_other_queues_reads(
    streams: Streams,
) -> None:
    """One client-ack consumer at its prefetch (room for one message) does not make the node
    read every other queue one message per round trip: an ack:auto consumer's 500 waiting
    messages come in batches."""
    a = await streams.node(prefetch=2)
    holder = Consumer(a.broker)
    holder.subscribe("/queue/slow", ACK_CLIENT_INDIVIDUAL)
    await a.send("/queue/slow", b"held")
    await eventually(lambda: holder.messages, "the held message")
    for stored in [a.broker.accept("/queue/fast", b"m", {}) for _ in range(500)]:
        assert isinstance(stored, Deferred)
        await stored
    reader = a.queues.reader_link.protocol
    reads = []
    execute = reader.execute_command

    def counting(*args: Any) -> Any:
        if args[0] == "XREADGROUP":
            reads.append(args)
        return execute(*args)

    reader.execute_command = counting
    fast = Consumer(a.broker)
    fast.subscribe("/queue/fast")
    await eventually(lambda: len(fast.messages) == 500, "the 500 messages", 10.0)
    assert len(reads) <= 20
    assert len(holder.messages) == 1  # and the full consumer got no more than its room


@pytest_twisted.ensureDeferred
async def test_a_queue_emptied_makes_readers_create_that_groups_only(streams: Streams) -> None:
    """A stream removed once emptied makes the nodes reading it create its group again, and
    only its: a node reading 50 queues does not create all 50 groups each time one empties."""
    a, b = await streams.node(), await streams.node()
    reader_of_all = Consumer(b.broker)
    for i in range(50):
        reader_of_all.subscribe(f"/queue/many-{i}")
    await eventually(lambda: len(b.queues._grouped) == 50, "b's groups")
    reader = b.queues.reader_link.protocol
    creates = []
    execute = reader.execute_command

    def counting(*args: Any) -> Any:
        if args[:2] == ("XGROUP", "CREATE"):
            creates.append(args)
        return execute(*args)

    reader.execute_command = counting
    for i in range(5):
        assert isinstance(await a.send("/queue/many-0", b"%d" % i), bytes)
        await eventually(lambda n=i: len(reader_of_all.messages) > n, "the delivery on b")
        await eventually(lambda: not b.queues.held, "the acknowledgement")
    await deferLater(reactor, 0.2, lambda: None)
    assert len(creates) <= 10
    assert reader_of_all.bodies == [b"%d" % i for i in range(5)]


@pytest_twisted.ensureDeferred
async def test_node_whose_consumers_left_stops_reading_the_queue_at_once(
    streams: Streams,
) -> None:
    """A node whose last consumer of a queue leaves ends its blocked read of it at once, so
    it takes no message for nobody (to give back at the tail, out of order)."""
    a, b = await streams.node(), await streams.node()
    on_b = Consumer(b.broker)
    on_b.subscribe("/queue/order", ACK_CLIENT_INDIVIDUAL)
    await a.send("/queue/order", b"0")  # pending on b: the stream is not empty
    await eventually(lambda: on_b.bodies == [b"0"], "the first message on b")
    for round_ in range(5):
        leaving = Consumer(a.broker)
        leaving.subscribe("/queue/order")
        await eventually(lambda: a.queues._in_flight is not None
                         and "/queue/order" in a.queues._in_flight, "a's read of the queue")
        await deferLater(reactor, 0.05, lambda: None)  # a's read is blocked now
        leaving.close()
        sent = [a.broker.accept("/queue/order", b"%d-%d" % (round_, i), {}) for i in (1, 2, 3)]
        for stored in sent:
            assert isinstance(stored, Deferred)
            await stored
        await eventually(lambda n=round_: len(on_b.messages) == 4 + 3 * n, "b's deliveries")
        assert leaving.messages == []
    assert on_b.bodies == [b"0", *(b"%d-%d" % (r, i) for r in range(5) for i in (1, 2, 3))]


@pytest_twisted.ensureDeferred
async def test_send_whose_reply_never_came_says_it_may_have_been_stored(
    streams: Streams,
) -> None:
    """A SEND Redis stored but whose answer was lost is refused with 'queue unavailable'
    saying it may have been stored, never that it was not: the client dedupes if it resends."""
    with TcpProxy(REDIS_HOST, REDIS_PORT) as proxy:
        node = await streams.node(url=f"redis://{REDIS_HOST}:{proxy.port}/0?namespace="
                                  f"{streams.namespace}")
        await eventually(lambda: node.queues.degraded is None and
                         node.queues._reader_id is not None, "the node's links")
        proxy.drop_replies.set()
        refused = await node.send("/queue/unanswered", b"stored after all")
        message = refused.getErrorMessage()
        assert message.startswith("queue unavailable: "), message
        assert "may have been stored" in message, message
        assert await streams.length("/queue/unanswered") == 1


@pytest_twisted.ensureDeferred
async def test_ack_redis_refused_is_sent_again_without_another_ack(
    streams: Streams, tmp_path
) -> None:
    """An ACK Redis refuses while the link stays up (NOREPLICAS: a replica lagging) is sent
    again by the node's next renewal, not only when some later ACK comes: the message
    leaves the stream once Redis takes writes again."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed")
    port = free_port()
    redis = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await eventually(lambda: _answers(port), "the throwaway Redis")
        admin = await txredisapi.Connection(REDIS_HOST, port, charset=None, reconnect=False)
        node = await streams.node(url=f"redis://{REDIS_HOST}:{port}/0?namespace=acks")
        await eventually(lambda: node.queues.degraded is None and
                         node.queues._reader_id is not None, "the node's links")
        consumer = Consumer(node.broker)
        consumer.subscribe("/queue/acked", ACK_CLIENT_INDIVIDUAL)
        assert isinstance(await node.send("/queue/acked", b"done"), bytes)
        await eventually(lambda: consumer.messages, "the delivery")
        await admin.execute_command("CONFIG", "SET", "min-replicas-to-write", "1")
        consumer.ack(consumer.messages[0])
        await deferLater(reactor, 0.3, lambda: None)
        assert node.queues.unconfirmed  # refused: NOREPLICAS
        await admin.execute_command("CONFIG", "SET", "min-replicas-to-write", "0")
        await Deferred.fromCoroutine(eventually(lambda: not node.queues.unconfirmed,
                                                "the ACK sent again", LEASE * 2))
        assert int(await admin.execute_command("XLEN", "acks:queue:/queue/acked")) == 0
        await node.stop()
        await admin.disconnect()
    finally:
        redis.terminate()
        redis.wait()


@pytest_twisted.ensureDeferred
async def test_reads_by_room_keep_what_one_read_when_another_fails(streams: Streams) -> None:
    """Reads by room size go out together: when one fails (its stream removed meanwhile:
    NOGROUP), the entries another read are still handed back, not left pending to the node
    until the lease runs out."""
    a = await streams.node()
    for i in range(3):
        await a.send("/queue/kept", b"%d" % i)
    await a.send("/queue/removed", b"x")
    await streams.redis.delete(streams.key("/queue/removed"))
    reply = await a.queues._read_by_room(a.queues.reader_link.protocol,
                                         {1: ["/queue/removed"], 100: ["/queue/kept"]})
    assert not isinstance(reply, Failure), reply
    [(stream, entries)] = reply
    assert stream == streams.key("/queue/kept").encode()
    assert [fields[1].rpartition(b"\n")[2] for _, fields in entries] == [b"0", b"1", b"2"]


def test_the_lease_renewal_restarts_after_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error in one renewal is logged and the timer starts again: a server whose
    renewal stopped would let the other servers take the messages its clients hold."""
    from twisted.internet.task import Clock
    from twisted.logger import globalLogPublisher

    from stomp_chat.broker import Broker
    from stomp_chat.cluster.streams import ClusterQueues

    calls: list[float] = []
    clock = Clock()

    def flaky(self: ClusterQueues) -> None:
        calls.append(clock.seconds())
        if len(calls) == 1:
            raise RuntimeError("renewal bug")

    monkeypatch.setattr(ClusterQueues, "_renew_and_sweep", flaky)
    queues = ClusterQueues(Broker(), parse_redis_url("redis://127.0.0.1:6379/0"), clock,
                           lease=3.0)
    queues.running = True  # started, without connecting: only the timer is under test
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        queues._start_renewal()
        for _ in range(3):
            clock.advance(1.0)
    finally:
        globalLogPublisher.removeObserver(events.append)
        queues.running = False
        if queues._renewal.running:
            queues._renewal.stop()
    assert calls == [1.0, 2.0, 3.0]
    assert [e["log_failure"].type for e in events if "log_failure" in e] == [RuntimeError]
