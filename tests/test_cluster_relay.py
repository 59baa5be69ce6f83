"""Cluster relay tests: several Broker + RedisRelay pairs ("nodes") in this process, talking
through a real Redis on the real reactor.

Every test gets a namespace of its own, so it never sees another test's (or a running
server's) channels and keys. When Redis is unreachable the Redis tests are skipped, except
under CI, where they fail.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest
import pytest_twisted
import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError, gatherResults
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from stomp_chat.app.chat import ChatRequest, ChatService
from stomp_chat.app.routes import AppContext, ApplicationError
from stomp_chat.app.subscriptions import room_of_topic
from stomp_chat.broker import Broker, Message, Subscription
from stomp_chat.cluster import RedisAddress, RedisRelay, parse_redis_url
from stomp_chat.cluster.address import DEFAULT_NAMESPACE
from stomp_chat.cluster.envelope import decode_envelope, encode_envelope
from stomp_chat.persistence import ChatMessage, MemoryChatStore, WriteBehindWriter
from stomp_chat.stomp.frame import Frame
from stomp_chat.transport.stomp import OutputBatch

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
#: The longest any test waits for something to arrive through Redis.
WAIT = 3.0
PROBE_TOPIC = "/topic/__probe__"


# -- Redis availability --------------------------------------------------------------------


def _redis_unavailable_reason() -> str | None:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=2) as connection:
            connection.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = connection.recv(64)
    except OSError as error:
        return f"Redis at {REDIS_HOST}:{REDIS_PORT} is unreachable: {error}"
    if not reply.startswith(b"+PONG"):
        return f"Redis at {REDIS_HOST}:{REDIS_PORT} answered PING with {reply!r}"
    return None


def require_redis() -> None:
    """Skip the test when Redis is down, or fail it when CI is set."""
    reason = _redis_unavailable_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so the cluster tests must not be skipped)")
        pytest.skip(f"{reason}; start Redis there to run the cluster tests")


# -- helpers ---------------------------------------------------------------------------------


class Recorder:
    """A broker subscriber that keeps every delivery."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def deliver(self, subscription: Subscription, message: Message) -> None:
        self.messages.append(message)

    @property
    def bodies(self) -> list[bytes]:
        return [m.body for m in self.messages]


def subscribe(broker: Broker, destination: str, principal: str = "anon") -> Recorder:
    recorder = Recorder()
    broker.subscribe(Subscription(recorder, uuid.uuid4().hex, destination), principal)
    return recorder


async def eventually(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll ``condition`` on the reactor until it is true, for at most ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while True:
        result = condition()
        if result:
            return result
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)


async def outcome(d: Deferred[Any], what: str, timeout: float = WAIT) -> Any:
    """The result or Failure of ``d``, which must fire within ``timeout`` seconds."""
    results: list[Any] = []
    d.addBoth(results.append)
    await eventually(lambda: results, what, timeout)
    return results[0]


def passing_through(result: Any, note: Callable[[str], object], event: str) -> Any:
    """A Deferred callback that notes ``event`` and leaves the result alone."""
    note(event)
    return result


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind((REDIS_HOST, 0))
        return int(probe.getsockname()[1])


@implementer(ILogObserver)
class FailureLog:
    """Collects logged failures (unhandled errors) while installed."""

    def __init__(self) -> None:
        self.failures: list[Any] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            self.failures.append(event.get("log_failure", event))


class Node:
    """One server process's cluster parts: a broker, its relay and, optionally, a chat."""

    def __init__(
        self, url: str, with_chat: bool, store: MemoryChatStore | None = None,
        read_batch: OutputBatch | None = None,
    ) -> None:
        self.broker = Broker()
        self.relay = RedisRelay(self.broker, parse_redis_url(url), reactor, room_of=room_of_topic,
                                read_batch=read_batch)
        self.probe = subscribe(self.broker, PROBE_TOPIC)
        self.store = store if store is not None else MemoryChatStore()
        self.writer = WriteBehindWriter(self.store, reactor, flush_interval=0.01)
        self.chat: ChatService | None = None
        if with_chat:
            self.chat = ChatService(
                self.store, self.writer, self.broker, reactor, sequencer=self.relay
            )
            self.relay.listeners.append(self.chat.relayed)

    def start(self) -> None:
        self.writer.startService()
        self.relay.startService()

    async def stop(self) -> None:
        relay = self.relay
        if relay.running:
            try:
                await relay.stopService().addTimeout(WAIT, reactor)
            except TimeoutError:
                relay.disconnect_now()  # leave no connections behind
        if self.writer.running:
            await self.writer.stopService()

    def talk(self, room_id: int, text: str, sender_id: int = 1) -> Deferred[ChatMessage]:
        assert self.chat is not None
        return self.chat.post(ChatRequest("TALK", room_id, sender_id, text))

    async def stored(self, room_id: int) -> list[ChatMessage]:
        await self.writer.flush()
        return list(await self.store.load_messages(room_id, 1000))


class Cluster:
    """Nodes sharing one namespace, and a plain Redis connection to poke at it."""

    def __init__(self, namespace: str, redis: Any) -> None:
        self.namespace = namespace
        self.url = f"redis://{REDIS_HOST}:{REDIS_PORT}/0?namespace={namespace}"
        self.redis = redis
        self.nodes: list[Node] = []

    async def node(
        self, with_chat: bool = False, url: str | None = None,
        store: MemoryChatStore | None = None, read_batch: OutputBatch | None = None,
    ) -> Node:
        node = Node(url or self.url, with_chat, store, read_batch)
        self.nodes.append(node)
        node.start()
        if url is None:
            await self.sync(node)
        return node

    async def sync(self, *nodes: Node) -> None:
        """Wait until a message published now has reached ``nodes`` (all, by default).

        Pub/sub keeps the order of each connection's messages, so everything published
        before (and already seen by Redis) has been delivered too; until a node's pattern
        subscription is active the marker is published again.
        """
        nodes = nodes or tuple(self.nodes)
        token = uuid.uuid4().hex.encode()
        envelope = encode_envelope("test-probe", False, {}, token)
        deadline = reactor.seconds() + WAIT
        while True:
            await self.redis.publish(f"{self.namespace}:{PROBE_TOPIC}", envelope)
            try:
                await eventually(
                    lambda: all(token in n.probe.bodies for n in nodes), "a probe", 0.1
                )
                return
            except AssertionError:
                if reactor.seconds() > deadline:
                    raise AssertionError(f"the relays did not hear Redis within {WAIT}s") from None

    def channel(self, key: str) -> str:
        return f"{self.namespace}:{key}"

    def seq_key(self, room_id: int) -> str:
        return f"{self.namespace}:seq:{room_id}"


@pytest_twisted.async_yield_fixture
async def cluster() -> AsyncIterator[Cluster]:
    """A fresh namespace on the real Redis; its nodes and keys are removed afterwards."""
    require_redis()
    namespace = f"test-{uuid.uuid4().hex}"
    redis = await txredisapi.Connection(REDIS_HOST, REDIS_PORT, charset=None, reconnect=False)
    the_cluster = Cluster(namespace, redis)
    try:
        yield the_cluster
    finally:
        for node in the_cluster.nodes:
            await node.stop()
        keys = await redis.keys(f"{namespace}:*")
        if keys:
            await redis.delete(*keys)
        await redis.disconnect()


def chat_bodies(recorder: Recorder) -> list[dict[str, Any]]:
    return [json.loads(body) for body in recorder.bodies]


# -- the relay's own commands (no Redis needed) --------------------------------------------


def test_the_relays_commands_fail_at_once_without_a_ready_connection() -> None:
    """Numbering and publishing go straight to the commands link's connection: with none,
    or one that has just dropped (txredisapi refuses to write on it), each call fails at
    once instead of waiting for a reconnection."""
    from stomp_chat.cluster.links import CommandProtocol
    from stomp_chat.cluster.relay import RedisUnavailable

    relay = RedisRelay(Broker(), parse_redis_url("redis://127.0.0.1:1/0"), reactor)
    outcomes: list[Any] = []
    relay._eval("return 1", []).addErrback(outcomes.append)
    relay._publish("channel", b"payload").addErrback(outcomes.append)
    assert [f.check(RedisUnavailable) for f in outcomes] == [RedisUnavailable] * 2

    relay.commands_link.protocol = CommandProtocol(charset=None)  # connected == 0
    outcomes.clear()
    relay._eval("return 1", []).addErrback(outcomes.append)
    relay._publish("channel", b"payload").addErrback(outcomes.append)
    assert [f.check(txredisapi.ConnectionError) for f in outcomes] == [
        txredisapi.ConnectionError] * 2


@pytest_twisted.ensureDeferred
async def test_the_relays_commands_wait_for_a_transaction_on_the_commands_link(
    cluster: Cluster,
) -> None:
    """While another user of commands() holds the connection in a MULTI, the relay's own
    commands wait for it (through txredisapi's handler) instead of landing inside it."""
    node = await cluster.node()
    transaction = await node.relay.commands().multi()
    published = node.relay._publish(cluster.channel("/topic/x"), b"after the transaction")
    await transaction.set(f"{cluster.namespace}:in-transaction", "1")
    assert not published.called, "PUBLISH waits for the transaction"
    assert await transaction.commit() == ["OK"]
    assert await outcome(published, "the PUBLISH") == 0
    assert await cluster.redis.get(f"{cluster.namespace}:in-transaction") == 1


# -- parse_redis_url and the envelope (no Redis needed) ------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis://127.0.0.1:6379/0?namespace=test-1",
            RedisAddress("127.0.0.1", 6379, 0, None, "test-1"),
        ),
        ("redis://localhost", RedisAddress("localhost", 6379, None, None, DEFAULT_NAMESPACE)),
        ("redis://", RedisAddress("127.0.0.1", 6379, None, None, DEFAULT_NAMESPACE)),
        ("redis://cache.internal:6380/", RedisAddress("cache.internal", 6380, None, None)),
        ("redis://:s3cret@cache:7000/12", RedisAddress("cache", 7000, 12, "s3cret")),
        (
            "redis://h/3?namespace=Chat_prod.eu-1",
            RedisAddress("h", 6379, 3, None, "Chat_prod.eu-1"),
        ),
    ],
)
def test_parse_redis_url_accepts_valid_urls(url: str, expected: RedisAddress) -> None:
    """A well-formed redis:// URL yields its host, port (default 6379), db, password and
    namespace (default stomp-chat)."""
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://127.0.0.1:6379/0", "redis://host:port/db"),
        ("rediss://127.0.0.1:6379/0", "redis://host:port/db"),
        ("127.0.0.1:6379", "redis://host:port/db"),
        ("redis://127.0.0.1:port/0", "invalid port"),
        ("redis://127.0.0.1:70000/0", "invalid port"),
        ("redis://127.0.0.1:6379/zero", "database"),
        ("redis://127.0.0.1:6379/-1", "database"),
        ("redis://127.0.0.1:6379/0/1", "database"),
        ("redis://127.0.0.1/0?namespace=", "namespace"),
        ("redis://127.0.0.1/0?namespace=a:b", "namespace"),
        ("redis://127.0.0.1/0?namespace=a*", "namespace"),
        ("redis://127.0.0.1/0?namespace=a%20b", "namespace"),
        ("redis://127.0.0.1/0?db=1", "unknown Redis URL option(s): db"),
        ("redis://127.0.0.1/0?namespace=a&timeout=3", "timeout"),
    ],
)
def test_parse_redis_url_rejects_invalid_urls(url: str, complaint: str) -> None:
    """A bad scheme, port, database, namespace or an unknown option is a ValueError that
    says what is wrong."""
    with pytest.raises(ValueError) as raised:
        parse_redis_url(url)
    assert complaint in str(raised.value)


def test_redacted_url_hides_the_password_and_parses_back() -> None:
    """redacted() shows host, port, db and namespace but never the password."""
    address = parse_redis_url("redis://:s3cret@cache:7000/12?namespace=blue")
    assert address.redacted() == "redis://cache:7000/12?namespace=blue"
    assert parse_redis_url(address.redacted()) == replace(address, password=None)
    no_db = parse_redis_url("redis://user:hunter2@cache")
    assert no_db.redacted() == "redis://cache:6379?namespace=stomp-chat"
    assert "hunter2" not in no_db.redacted()


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"plain text",
        b"\x00\x01\n\r\n\xff\xfe binary \x00 with NULs and newlines\n",
        bytes(range(256)),
        "한국어 😀".encode(),
    ],
)
def test_envelope_round_trip(body: bytes) -> None:
    """encode_envelope/decode_envelope give back origin, local flag, unicode headers and
    arbitrary body bytes unchanged."""
    headers = {
        "content-type": "text/plain;charset=utf-8",
        "x-ünïcødé": "값 😀",
        "x-newline": "line1\nline2",
        "x-colon": "a:b\\c",
    }
    for local in (False, True):
        payload = encode_envelope("node-é1", local, headers, body)
        assert decode_envelope(payload) == ("node-é1", local, headers, None, body)
        numbered = encode_envelope("node-é1", local, headers, body, seq=42)
        assert decode_envelope(numbered) == ("node-é1", local, headers, 42, body)


# -- relaying broker publishes ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_topic_publish_reaches_every_node_exactly_once(cluster: Cluster) -> None:
    """A /topic publish on one node reaches every node's subscribers once, its own included
    (no echo from Redis), with body and headers intact."""
    a, b, c = await cluster.node(), await cluster.node(), await cluster.node()
    on_a, on_b, on_c = (subscribe(n.broker, "/topic/news") for n in (a, b, c))
    headers = {"content-type": "application/octet-stream", "x-note": "안녕 😀 ü"}
    bodies = [b"first", b"\x00\xffbinary\n", "세 번째".encode()]
    for body in bodies:
        a.broker.publish("/topic/news", body, headers)
    await eventually(lambda: len(on_b.messages) >= 3 and len(on_c.messages) >= 3, "3 on B, C")
    await cluster.sync()  # whatever Redis echoes back to A has arrived by now

    assert on_a.bodies == bodies
    for recorder, node in ((on_b, b), (on_c, c)):
        assert recorder.bodies == bodies
        assert [m.destination for m in recorder.messages] == ["/topic/news"] * 3
        assert all(m.headers == headers for m in recorder.messages)
        assert all(m.message_id.startswith(node.broker.node_id) for m in recorder.messages)
    assert len({m.message_id for m in on_b.messages}) == 3

    # And the other way round: B's publish reaches A, also exactly once.
    b.broker.publish("/topic/news", b"from B")
    await eventually(lambda: b"from B" in on_a.bodies, "B's message on A")
    await cluster.sync()
    assert on_a.bodies == [*bodies, b"from B"]
    assert on_b.bodies == [*bodies, b"from B"]


@pytest_twisted.ensureDeferred
async def test_relayed_messages_are_delivered_inside_the_servers_write_batch(
    cluster: Cluster,
) -> None:
    """A relay given the server's OutputBatch delivers each read of relayed messages inside
    it, so what the read brings leaves each connection in one write."""
    batch = OutputBatch()
    a, b = await cluster.node(read_batch=batch), await cluster.node()
    depths: list[int] = []
    on_a = subscribe(a.broker, "/topic/batched")
    on_a.deliver = lambda subscription, message: depths.append(batch.depth)  # type: ignore[method-assign]
    await cluster.sync()
    for body in (b"one", b"two"):
        b.broker.publish("/topic/batched", body)
    await eventually(lambda: len(depths) >= 2, "both messages on A")
    assert depths == [1, 1]
    assert batch.depth == 0


@pytest_twisted.ensureDeferred
async def test_user_destination_reaches_that_users_subscription_on_another_node(
    cluster: Cluster,
) -> None:
    """/user/{name}/queue/x published on one node reaches that user's /user/queue/x
    subscription on another node, shown as /user/queue/x, and nobody else's."""
    a, b = await cluster.node(), await cluster.node()
    alice_on_b = subscribe(b.broker, "/user/queue/x", principal="alice")
    bob_on_b = subscribe(b.broker, "/user/queue/x", principal="bob")
    alice_on_a = subscribe(a.broker, "/user/queue/x", principal="alice")

    a.broker.publish("/user/alice/queue/x", b"for alice", {"x-k": "v"})
    await eventually(lambda: alice_on_b.messages, "alice's message on B")
    await cluster.sync()

    [message] = alice_on_b.messages
    assert (message.destination, message.body, message.headers) == (
        "/user/queue/x",
        b"for alice",
        {"x-k": "v"},
    )
    assert bob_on_b.messages == []
    assert [m.body for m in alice_on_a.messages] == [b"for alice"], "once on the origin too"
    assert alice_on_a.messages[0].destination == "/user/queue/x"


@pytest_twisted.ensureDeferred
async def test_queue_destinations_are_not_relayed(cluster: Cluster) -> None:
    """/queue/ messages stay on the node they were sent on (competing consumers need one
    owner)."""
    a, b = await cluster.node(), await cluster.node()
    on_b = subscribe(b.broker, "/queue/jobs")
    after_on_b = subscribe(b.broker, "/topic/after")

    a.broker.publish("/queue/jobs", b"job 1")
    a.broker.publish("/topic/after", b"sent after the job")  # same connection: same order
    await eventually(lambda: after_on_b.messages, "the later /topic message on B")
    await cluster.sync()

    assert on_b.messages == []
    assert a.broker.queue_depth("/queue/jobs") == 1, "the job waits on its own node"
    assert b.broker.queue_depth("/queue/jobs") == 0


@pytest.mark.parametrize(
    "garbage",
    [
        b"no newline at all",
        b"not json\nbody",
        b"\xff\xfe\x00\nbody",
        b"[]\nbody",
        b'["origin", false]\nbody',
        b"null\nbody",
        b"42\nbody",
        b'"abc"\nbody',
        b'{"a": 1, "b": 2, "c": 3}\nbody',
        b'["origin", false, 5]\nbody',
        b'["origin", false, {"x-n": 1}]\nbody',
        b'["origin", true, {}, 0, 4]\nbody',
        b'["origin", true, {}, "1", 4]\nbody',
        b'["origin", true, {}, true, 4]\nbody',
    ],
)
@pytest_twisted.ensureDeferred
async def test_malformed_payload_is_ignored_and_the_relay_keeps_working(
    cluster: Cluster, garbage: bytes
) -> None:
    """A payload on the channel that is not a relay envelope reaches no subscriber, raises no
    unhandled error, and relaying goes on."""
    a, b = await cluster.node(), await cluster.node()
    on_b = subscribe(b.broker, "/topic/t")
    errors = FailureLog()
    globalLogPublisher.addObserver(errors)
    try:
        # Right behind the garbage, on the same connection: it must not be lost with it.
        await gatherResults(
            [
                cluster.redis.publish(cluster.channel("/topic/t"), garbage),
                cluster.redis.publish(
                    cluster.channel("/topic/t"), encode_envelope("other", False, {}, b"next")
                ),
            ]
        )
        a.broker.publish("/topic/t", b"valid")
        await eventually(lambda: b"valid" in on_b.bodies, "a message relayed by a node")
        await cluster.sync()
    finally:
        globalLogPublisher.removeObserver(errors)
    assert on_b.bodies == [b"next", b"valid"], "only the malformed payload is dropped"
    assert errors.failures == []


# -- chat messages: one order and gap-free seq across nodes ----------------------------------


@pytest_twisted.ensureDeferred
async def test_chat_messages_on_two_nodes_share_one_gap_free_order(cluster: Cluster) -> None:
    """Messages posted alternately on two nodes get seq 1..N without gaps, every subscriber
    sees them in seq order, each is stored once by its origin, and each node's history
    includes the other node's messages."""
    room, count = 7, 12
    a, b = await cluster.node(with_chat=True), await cluster.node(with_chat=True)
    watchers = [subscribe(n.broker, f"/topic/chat/room/{room}") for n in (a, b, a)]
    # Concurrent and interleaved: Redis alone decides the order.
    posts = [
        ((a, b)[i % 2], (a, b)[i % 2].talk(room, f"message {i} 💬", sender_id=1 + i % 2))
        for i in range(count)
    ]
    results = [await outcome(d, f"post {i}") for i, (_, d) in enumerate(posts)]
    assert all(isinstance(r, ChatMessage) for r in results), results
    assert sorted(r.seq for r in results) == list(range(1, count + 1))
    for node in (a, b):  # one node's messages are numbered in the order it sent them
        own = [r.seq for (n, _), r in zip(posts, results, strict=True) if n is node]
        assert own == sorted(own)

    await eventually(
        lambda: all(len(w.messages) >= count for w in watchers), f"{count} broadcasts everywhere"
    )
    await cluster.sync()
    broadcast = chat_bodies(watchers[0])
    assert [m["seq"] for m in broadcast] == list(range(1, count + 1))
    assert chat_bodies(watchers[1]) == broadcast
    assert chat_bodies(watchers[2]) == broadcast, "exactly once on the sender's node too"
    by_seq = {r.seq: r for r in results}
    for body in broadcast:
        assert body == by_seq[body["seq"]].to_json_dict()

    # Stored once, by the node that accepted it.
    stored_a, stored_b = await a.stored(room), await b.stored(room)
    posted_on = {r.seq: n for (n, _), r in zip(posts, results, strict=True)}
    assert [m.seq for m in stored_a] == [s for s in sorted(posted_on) if posted_on[s] is a]
    assert [m.seq for m in stored_b] == [s for s in sorted(posted_on) if posted_on[s] is b]

    # Each node's history (its cache) has every message, the other node's included.
    for node in (a, b):
        assert node.chat is not None
        page = await node.chat.history(room, 100)
        assert [m.to_json_dict() for m in page] == broadcast
        state = node.chat.active_room(room)
        assert state is not None and state.last_seq == count


@pytest_twisted.ensureDeferred
async def test_a_lost_redis_counter_never_reuses_a_seq(cluster: Cluster) -> None:
    """When the Redis seq counter is lower than what a node knows, the next message still
    gets last_seq + 1; when Redis lost the counter, the next message starts past the
    database's high-water mark, never at one node's memory."""
    room = 3
    a, b = await cluster.node(with_chat=True), await cluster.node(with_chat=True)
    watcher = subscribe(b.broker, f"/topic/chat/room/{room}")
    first = await outcome(b.talk(room, "B opens the room"), "B's first post")
    assert first.seq == 1
    for i in range(3):
        message = await outcome(a.talk(room, f"a{i}"), f"A's post {i}")
        assert message.seq == 2 + i
    await eventually(lambda: len(watcher.messages) == 4, "4 messages on B")

    await cluster.redis.set(cluster.seq_key(room), 1)
    after_reset = await outcome(a.talk(room, "after the counter went back"), "post on A")
    assert after_reset.seq == 5
    assert int(await cluster.redis.get(cluster.seq_key(room))) == 5

    await cluster.redis.delete(cluster.seq_key(room))
    floor = await b.store.seq_floor(room)
    assert floor >= 5, "B's database reserves past every seq B has seen"
    on_b = await outcome(b.talk(room, "after the counter vanished"), "post on B")
    assert on_b.seq == floor + 1, "a lost counter restarts past the durable floor"
    await eventually(lambda: len(watcher.messages) == 6, "6 messages on B")
    assert [m["seq"] for m in chat_bodies(watcher)] == [1, 2, 3, 4, 5, floor + 1]


@pytest_twisted.ensureDeferred
async def test_chat_send_fails_as_unavailable_when_redis_is_unreachable(
    cluster: Cluster,
) -> None:
    """With Redis unreachable a chat SEND fails promptly with ApplicationError 'unavailable',
    and nothing is broadcast, stored or numbered."""
    room = 4
    node = await cluster.node(
        with_chat=True, url=f"redis://{REDIS_HOST}:{free_port()}/0?namespace={cluster.namespace}"
    )
    assert node.chat is not None
    watcher = subscribe(node.broker, f"/topic/chat/room/{room}")
    body = json.dumps({"type": "TALK", "roomId": room, "senderId": 1, "detailMessage": "hi"})
    frame = Frame("SEND", {"destination": "/app/message"}, body.encode())
    context = AppContext("session-1", None, node.broker)

    try:
        sent = node.chat.handle_message(frame, context, {})
    except ApplicationError as error:  # refusing at once is fine too
        result: Any = Failure(error)
    else:
        assert isinstance(sent, Deferred), f"the SEND was accepted: {sent!r}"
        result = await outcome(sent, "the SEND to fail while Redis is unreachable", 5.0)
    assert isinstance(result, Failure), f"the SEND succeeded: {result!r}"
    refusal = result.value
    assert isinstance(refusal, ApplicationError), result
    assert refusal.code == "unavailable"

    assert watcher.messages == []
    assert node.writer.pending_count == 0
    assert await node.stored(room) == []
    state = node.chat.active_room(room)
    assert state is None or state.last_seq == 0, "no seq was consumed"
    assert await node.chat.history(room, 10) == []


@pytest_twisted.ensureDeferred
async def test_relay_stop_waits_for_messages_being_sequenced(cluster: Cluster) -> None:
    """stopService lets a chat message that Redis is numbering come back (and be buffered
    for storage) before it disconnects."""
    room = 5
    a, b = await cluster.node(with_chat=True), await cluster.node()
    on_b = subscribe(b.broker, f"/topic/chat/room/{room}")
    await outcome(a.talk(room, "warm up"), "a first post")  # connections are up

    events: list[str] = []
    posted = a.talk(room, "in flight while stopping")
    posted.addBoth(passing_through, events.append, "sequenced")
    assert events == [], "Redis cannot have answered yet"
    stopping = a.relay.stopService()
    stopping.addBoth(passing_through, events.append, "stopped")
    assert events == [], "the relay stopped with a message still being numbered"

    await outcome(stopping, "the relay to stop")
    message = await outcome(posted, "the in-flight message")
    assert events == ["sequenced", "stopped"]
    assert isinstance(message, ChatMessage) and message.seq == 2
    assert [m.seq for m in await a.stored(room)] == [1, 2]
    await eventually(lambda: len(on_b.messages) == 2, "both messages on the other node")
    assert a.broker.published_listeners == [], "a stopped relay relays nothing"


@pytest_twisted.ensureDeferred
async def test_a_node_that_missed_messages_never_reuses_a_stored_seq_after_redis_loses_the_counter(
    cluster: Cluster,
) -> None:
    """Two nodes on one database; B misses A's relayed messages, then Redis loses the room's
    counter: B's next message is numbered past the database's high-water mark, stored under
    its own seq, and only then receipted; A's stored messages are untouched."""
    room = 9
    shared = MemoryChatStore()
    a = await cluster.node(with_chat=True, store=shared)
    b = await cluster.node(with_chat=True, store=shared)
    assert a.chat is not None and b.chat is not None
    assert (await outcome(b.talk(room, "B opens the room"), "B's first post")).seq == 1
    b.relay.listeners.remove(b.chat.relayed)  # B hears no more of A's messages
    for i in range(3):
        assert (await outcome(a.talk(room, f"a{i}"), f"A's post {i}")).seq == 2 + i
    await a.writer.flush()
    state = b.chat.active_room(room)
    assert state is not None and state.last_seq == 1, "B missed seqs 2-4"

    await cluster.redis.delete(cluster.seq_key(room))
    body = json.dumps({"type": "TALK", "roomId": room, "senderId": 2, "detailMessage": "B again"})
    frame = Frame("SEND", {"destination": "/app/message", "receipt": "r"}, body.encode())
    receipted = b.chat.handle_message(frame, AppContext("session-b", None, b.broker), {})
    assert isinstance(receipted, Deferred)
    message = await outcome(receipted, "B's durable post")
    assert isinstance(message, ChatMessage), message
    assert message.seq > 4
    stored = await b.stored(room)
    assert [(m.seq, m.text) for m in stored] == [
        (1, "B opens the room"), (2, "a0"), (3, "a1"), (4, "a2"), (message.seq, "B again")
    ]
    assert a.writer.collided_count == b.writer.collided_count == 0


# -- room-scoped relaying --------------------------------------------------------------------


async def subscriber_count(cluster: Cluster, key: str) -> int:
    """How many connections Redis has subscribed to ``key``'s channel (PUBSUB NUMSUB)."""
    reply = await cluster.redis.execute_command("PUBSUB", "NUMSUB", cluster.channel(key))
    return int(reply[1])


@pytest_twisted.ensureDeferred
async def test_a_node_subscribes_to_a_channel_only_while_it_has_local_subscribers(
    cluster: Cluster,
) -> None:
    """A node SUBSCRIBEs to a topic's channel when its first local subscriber arrives and
    UNSUBSCRIBEs when the last leaves; a node without subscribers receives none of it."""
    a, b = await cluster.node(), await cluster.node()
    assert await subscriber_count(cluster, "/topic/news") == 0
    recorder = Recorder()
    subscriptions = [Subscription(recorder, f"s{i}", "/topic/news") for i in range(2)]
    for subscription in subscriptions:
        b.broker.subscribe(subscription, "anon")
    await eventually(lambda: "/topic/news" in b.relay.subscribed, "B's subscription")
    assert await subscriber_count(cluster, "/topic/news") == 1, "one SUBSCRIBE for two"

    await cluster.sync()
    received_on_a = a.relay.ingestion.routed_count
    b.broker.publish("/topic/news", b"from B")
    await eventually(lambda: len(recorder.messages) == 2, "B's own subscribers")
    await cluster.sync()
    assert a.relay.ingestion.routed_count == received_on_a + 1, "A received only the probe"

    b.broker.unsubscribe(subscriptions[0])
    assert "/topic/news" in b.relay.wanted
    b.broker.unsubscribe(subscriptions[1])
    assert "/topic/news" not in b.relay.wanted

    async def unsubscribed() -> None:
        while await subscriber_count(cluster, "/topic/news") != 0:
            await deferLater(reactor, 0.01, lambda: None)

    await outcome(Deferred.fromCoroutine(unsubscribed()), "B's UNSUBSCRIBE")


@pytest_twisted.ensureDeferred
async def test_chat_messages_numbered_while_a_room_subscription_is_confirmed_are_filled(
    cluster: Cluster,
) -> None:
    """Messages numbered after a node read the room's counter but before Redis confirmed its
    SUBSCRIBE reach its subscribers from Redis's recent list, once each and in order, and
    live ones follow."""
    room = 21
    a, b = await cluster.node(with_chat=True), await cluster.node(with_chat=True)
    assert (await outcome(a.talk(room, "before"), "the first post")).seq == 1
    subscribe_now = b.relay._subscribe

    def slow_subscribe(key: str) -> None:  # widen the window to a fixed 0.3 s
        reactor.callLater(0.3, subscribe_now, key)

    b.relay._subscribe = slow_subscribe  # type: ignore[method-assign]
    key = f"/topic/chat/room/{room}"
    watcher = subscribe(b.broker, key)
    followed = b.relay.ingestion.followed[key]
    await eventually(lambda: followed.delivered_through is not None, "B's baseline")
    assert followed.delivered_through == 1
    for i in range(4):
        await outcome(a.talk(room, f"in the window {i}"), f"post {i}")
    assert watcher.messages == [], "the SUBSCRIBE is not confirmed yet"
    await eventually(lambda: len(watcher.messages) == 4, "the window's messages on B")
    assert followed.filled == 4
    for i in range(2):
        await outcome(a.talk(room, f"live {i}"), f"live post {i}")
    await eventually(lambda: len(watcher.messages) == 6, "the live messages on B")
    await cluster.sync()
    assert [m["seq"] for m in chat_bodies(watcher)] == [2, 3, 4, 5, 6, 7]
    assert followed.duplicates == 0


# -- Redis faults ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_node_cut_off_from_redis_keeps_local_delivery_and_recovers_without_gaps(
    cluster: Cluster,
) -> None:
    """Behind a proxy that cuts its connections and then closes every new one at once, a
    node delivers locally, refuses chat as unavailable and reports which links are down;
    once the proxy forwards again it reconnects and re-subscribes by itself, and its
    subscribers see the room's seqs without a gap or a duplicate."""
    from tests.tcpproxy import TcpProxy

    room = 41
    key = f"/topic/chat/room/{room}"
    with TcpProxy(REDIS_HOST, REDIS_PORT) as proxy:
        a = await cluster.node(with_chat=True)
        b = Node(f"redis://{REDIS_HOST}:{proxy.port}/0?namespace={cluster.namespace}", True)
        b.relay.max_retry = 0.2
        cluster.nodes.append(b)
        b.start()
        await cluster.sync()
        on_a, on_b = subscribe(a.broker, key), subscribe(b.broker, key)
        local_b = subscribe(b.broker, "/topic/local")
        await eventually(lambda: key in b.relay.subscribed, "B's room subscription")
        for i in range(2):
            await outcome(a.talk(room, f"before {i}"), f"post {i}")
        await eventually(lambda: len(on_b.messages) == 2, "2 messages on B")

        proxy.block()
        await eventually(lambda: b.relay.degraded == "commands and subscriber link down",
                         "B to notice")
        b.broker.publish("/topic/local", b"still delivered here")
        assert [m.body for m in local_b.messages] == [b"still delivered here"]
        refused = await outcome(b.talk(room, "while cut off"), "B's refused post")
        assert isinstance(refused, Failure) and refused.value.code == "unavailable"
        for i in range(3):
            await outcome(a.talk(room, f"during {i}"), f"A's post {i} during the cut")
        await deferLater(reactor, 0.5, lambda: None)  # several refused reconnections
        assert b.relay.degraded is not None

        proxy.unblock()
        await eventually(lambda: b.relay.degraded is None, "B to reconnect", 5.0)
        await eventually(lambda: len(on_b.messages) == 5, "the missed messages on B", 5.0)
        after = await outcome(b.talk(room, "back"), "B's post after the cut")
        assert isinstance(after, ChatMessage) and after.seq == 6
        await eventually(lambda: len(on_b.messages) == 6 and len(on_a.messages) == 6,
                         "the last message on both")
        await cluster.sync()
        assert [m["seq"] for m in chat_bodies(on_b)] == [1, 2, 3, 4, 5, 6]
        assert chat_bodies(on_b) == chat_bodies(on_a)
        assert b.relay.commands_link.ups >= 2 and b.relay.subscriber_link.ups >= 2
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_a_rooms_recent_list_keeps_its_configured_number_of_last_messages(
    cluster: Cluster,
) -> None:
    """Redis keeps a room's last --cluster-recent records, numbered, oldest dropped, with
    an expiry; recent() gives their bodies in seq order."""
    room = 71
    node = await cluster.node(with_chat=True)
    node.relay.batch.recent_size = 3
    for i in range(5):
        await outcome(node.talk(room, f"m{i}"), f"post {i}")
    recent_key = f"{cluster.namespace}:recent:{room}"
    assert await cluster.redis.llen(recent_key) == 3
    assert 0 < await cluster.redis.ttl(recent_key) <= 86400
    bodies = await outcome(node.relay.recent(room), "the recent bodies")
    assert [json.loads(b)["seq"] for b in bodies] == [3, 4, 5]


@pytest_twisted.ensureDeferred
async def test_one_script_call_numbers_several_rooms_and_caps_each_recent_list(
    cluster: Cluster,
) -> None:
    """Messages to several rooms sent in one turn are numbered by one script call: each room
    gets its own gapless seqs in sending order, every node sees them in that order, and each
    room's recent list is capped to its last records, with an expiry."""
    rooms = (81, 82, 83)
    node = await cluster.node(with_chat=True)
    other = await cluster.node()
    watchers = {room: subscribe(other.broker, f"/topic/chat/room/{room}") for room in rooms}
    for room in rooms:  # the first message of a room reads its floor from the database
        await outcome(node.talk(room, "first"), f"room {room}'s first post")
    node.relay.batch.recent_size = 4
    calls: list[int] = []
    run_script = node.relay.batch._run_script

    def counting(script: str, args: list[Any]) -> Any:
        calls.append(int(args[0]))
        return run_script(script, args)

    node.relay.batch._run_script = counting
    posts = [node.talk(room, f"{room}-{i}") for i in range(9) for room in rooms]
    results = [await outcome(post, "a post") for post in posts]
    assert calls == [27], "one script call for the turn"
    for room in rooms:
        seqs = [m.seq for m in results if m.room_id == room]
        assert seqs == list(range(2, 11))
        await eventually(lambda room=room: len(watchers[room].messages) == 10,
                         f"room {room} on the other node")
        delivered = chat_bodies(watchers[room])
        assert [b["seq"] for b in delivered] == list(range(1, 11))
        assert [b["detailMessage"] for b in delivered[1:]] == [f"{room}-{i}" for i in range(9)]
        recent_key = f"{cluster.namespace}:recent:{room}"
        assert await cluster.redis.llen(recent_key) == 4
        assert 0 < await cluster.redis.ttl(recent_key) <= 86400
        bodies = await outcome(node.relay.recent(room), "the recent bodies")
        assert [json.loads(b)["seq"] for b in bodies] == [7, 8, 9, 10]


@pytest_twisted.ensureDeferred
async def test_a_deleted_message_leaves_the_rooms_recent_list(cluster: Cluster) -> None:
    """Deleting a message in cluster mode removes it from Redis's recent list too, so no
    server's history brings it back."""
    room = 72
    node = await cluster.node(with_chat=True)
    assert node.chat is not None
    for i in range(3):
        await outcome(node.talk(room, f"m{i}"), f"post {i}")
    await node.writer.flush()
    removed = await outcome(node.chat.delete_message(room, 2), "the delete")
    assert isinstance(removed, ChatMessage) and removed.seq == 2
    recent_key = f"{cluster.namespace}:recent:{room}"
    deadline = reactor.seconds() + WAIT
    while await cluster.redis.llen(recent_key) != 2:  # the delete's LREM follows it
        assert reactor.seconds() < deadline, "the deleted record stayed in the recent list"
        await deferLater(reactor, 0.01, lambda: None)
    bodies = await outcome(node.relay.recent(room), "the recent bodies")
    assert [json.loads(b)["seq"] for b in bodies] == [1, 3]
