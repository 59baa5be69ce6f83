"""End to end: /queue/ destinations shared by real `twistd -n stomp-chat --redis ...`
processes through Redis streams, with stomp.py clients over WebSocket.

Each test has a Redis namespace of its own (deleted afterwards) and the servers share one
PostgreSQL schema, as a deployment would. Redis faults go through a TCP proxy the test
controls, never the shared Redis itself.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.chatclient import ChatClient
from tests.serverproc import STOPPED_BY_SIGTERM, RunningServer, assert_clean_stop
from tests.tcpproxy import TcpProxy
from tests.test_e2e_cluster import REDIS_HOST, REDIS_PORT, redis_command, redis_url, start_node

pytest_plugins = ["tests.conftest_db"]

__all__ = ["redis_url", "start_node"]  # fixtures this module uses

#: The lease the servers run with: a dead server's messages come back within 4/3 of it.
LEASE = 2.0
#: What a redelivery may take beyond that: the sweep's round trips, a loaded machine.
MARGIN = 2.0
TIMEOUT = 10.0


@pytest.fixture
def shared_database(postgresql_database: Any) -> str:
    """One PostgreSQL schema every server of the test shares."""
    from tests.conftest_db import POSTGRES_URL

    query = urlencode({"options": postgresql_database.config.options["options"]})
    return f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}{query}"


def queue_length(redis_url: str, name: str) -> int:
    namespace = redis_url.rpartition("namespace=")[2]
    return int(redis_command("XLEN", f"{namespace}:queue:{name}"))


class QueueClient(ChatClient):
    """A client that subscribes to a queue and ACKs what it chooses to."""

    def consume(self, destination: str, ack: str, sub_id: str = "q") -> None:
        self.conn.subscribe(destination, id=sub_id, ack=ack, headers={"receipt": "qsub"})
        self.wait_for(lambda: "qsub" in self.receipts, "the queue subscription")

    def ack_message(self, message: Any, receipt: str) -> None:
        self.conn.ack(message.headers["ack"], receipt=receipt)
        self.wait_for(lambda: receipt in self.receipts, f"the receipt of {receipt}")

    def bodies(self, destination: str) -> list[str]:
        return [m.body for m in self.at(destination)]


def ready(server: RunningServer) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{server.http_url}/ready", timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_until(condition: Any, what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_queue_messages_go_once_across_servers_and_a_killed_servers_come_back(
    redis_url: str, shared_database: str, start_node
) -> None:
    """Three servers: every message sent on C reaches one consumer, on A or B; A is killed
    holding unacknowledged messages, and B's consumer gets exactly those, marked
    redelivered, within the lease and a margin; what A's consumer ACKed never comes back."""
    queue, count = "/queue/jobs", 40
    options = ("--redis", redis_url, "--database", shared_database, "--prefetch", "3",
               "--cluster-queue-lease", str(LEASE))
    server_a = start_node("a", *options)
    server_b = start_node("b", *options)
    server_c = start_node("c", *options)
    on_a, on_b = QueueClient(server_a.http_port), QueueClient(server_b.http_port)
    producer = QueueClient(server_c.http_port)
    try:
        on_a.consume(queue, "client-individual")
        # A's consumer takes its prefetch of 3 and ACKs the first message only.
        for i in range(4):
            producer.conn.send(queue, f"m{i}", headers={"receipt": f"s{i}"})
        producer.wait_for(lambda: {f"s{i}" for i in range(4)} <= set(producer.receipts),
                          "the first receipts")
        [first, *_] = on_a.wait_at(queue, 3)
        on_a.ack_message(first, "ack-first")
        held = on_a.wait_at(queue, 4)[1:]
        assert len(held) == 3

        on_b.consume(queue, "client-individual")
        for i in range(4, count):
            producer.conn.send(queue, f"m{i}", headers={"receipt": f"s{i}"})
        acked_on_b: list[str] = []
        deadline = time.monotonic() + TIMEOUT
        while len(acked_on_b) < count - 4:
            assert time.monotonic() < deadline, f"B got {acked_on_b}"
            for message in on_b.at(queue)[len(acked_on_b):]:
                on_b.conn.ack(message.headers["ack"])
                acked_on_b.append(message.body)
            time.sleep(0.01)
        assert all(f"s{i}" in producer.receipts for i in range(count))
        assert len(on_a.at(queue)) == 4, "A's consumer, at its prefetch, got no more"
        assert sorted(acked_on_b) == sorted(f"m{i}" for i in range(4, count))

        server_a.signal(signal.SIGKILL)
        server_a.wait()
        killed_at = time.monotonic()
        came_back = on_b.wait_for(
            lambda: on_b.at(queue)[count - 4:] if len(on_b.at(queue)) >= count - 1 else None,
            "A's unacknowledged messages on B", LEASE * 4 / 3 + MARGIN,
        )
        assert time.monotonic() - killed_at < LEASE * 4 / 3 + MARGIN
        assert sorted(m.body for m in came_back) == sorted(m.body for m in held)
        for message in came_back:
            assert message.headers["redelivered"] == "true"
            assert message.headers["x-delivery-count"] == "1"
            on_b.ack_message(message, f"ack-{message.body}")
        time.sleep(LEASE)
        assert len(on_b.at(queue)) == count - 1, "nothing else came back, A's ACKed one not"
        assert first.body not in on_b.bodies(queue)
        wait_until(lambda: queue_length(redis_url, queue) == 0, "an empty stream")
        assert on_b.errors == [] and producer.errors == []
    finally:
        for client in (on_a, on_b, producer):
            client.close()
    assert_clean_stop(server_b)
    assert_clean_stop(server_c)


def test_redis_cut_refuses_queue_sends_keeps_topics_and_recovers_without_duplicates(
    tmp_path: Any, redis_url: str, start_node
) -> None:
    """With its Redis link cut, a server refuses a queue SEND with a clear ERROR, reports
    the link down on /ready and still delivers topics locally; once the link is back it
    reads again, and every queue message arrives exactly once."""
    queue = "/queue/outage"
    with TcpProxy(REDIS_HOST, REDIS_PORT) as proxy:
        proxied = redis_url.replace(f":{REDIS_PORT}/", f":{proxy.port}/")
        server_a = start_node("a", "--redis", proxied, "--database",
                              f"sqlite:///{tmp_path}/a.db", "--cluster-queue-lease", str(LEASE))
        server_b = start_node("b", "--redis", redis_url, "--database",
                              f"sqlite:///{tmp_path}/b.db", "--cluster-queue-lease", str(LEASE))
        consumer = QueueClient(server_a.http_port)
        listener = QueueClient(server_a.http_port)
        talker = QueueClient(server_a.http_port)
        producer = QueueClient(server_b.http_port)
        opened = [consumer, listener, talker, producer]
        try:
            consumer.consume(queue, "auto")
            listener.subscribe("/topic/local")
            producer.conn.send(queue, "before", headers={"receipt": "s-before"})
            consumer.wait_at(queue, 1)

            proxy.block()
            wait_until(lambda: ready(server_a)[0] == 503, "A's /ready to report Redis down")
            status, body = ready(server_a)
            assert body["checks"]["redis"]["ok"] is False, body

            talker.conn.send("/topic/local", "still here")
            listener.wait_at("/topic/local", 1)
            talker.conn.send(queue, "refused", headers={"receipt": "s-refused"})
            talker.wait_for(lambda: talker.errors, "the ERROR")
            error = talker.errors[0]
            assert error.headers["message"].startswith("queue unavailable: cluster link down")
            assert error.headers.get("receipt-id") == "s-refused"
            assert "s-refused" not in talker.receipts

            for i in range(5):  # B still has Redis: these wait in the stream
                producer.conn.send(queue, f"during {i}", headers={"receipt": f"s{i}"})
            producer.wait_for(lambda: "s4" in producer.receipts, "B's receipts")

            proxy.unblock()
            wait_until(lambda: ready(server_a)[0] == 200, "A's /ready to recover", 15)
            consumer.wait_at(queue, 6, 15)
            again = QueueClient(server_a.http_port)
            opened.append(again)
            again.conn.send(queue, "after", headers={"receipt": "s-after"})
            again.wait_for(lambda: "s-after" in again.receipts, "the receipt after recovery")
            consumer.wait_at(queue, 7)
            time.sleep(LEASE)
            assert consumer.bodies(queue) == ["before", *(f"during {i}" for i in range(5)),
                                              "after"]
            wait_until(lambda: queue_length(redis_url, queue) == 0, "an empty stream")
        finally:
            for client in opened:
                client.close()
        # A logged the outage as an error: its stop is clean otherwise.
        assert server_a.stop() == STOPPED_BY_SIGTERM
        for problem in ("Traceback", "Unhandled", "#critical"):
            assert problem not in server_a.log(), server_a.log()
        assert_clean_stop(server_b)


def test_commit_refused_by_a_full_cluster_queue_gets_an_error_naming_the_commit(
    tmp_path: Any, redis_url: str, start_node
) -> None:
    """A COMMIT whose queue SEND Redis refuses (the queue is full) gets the ERROR, naming the
    COMMIT's receipt as for any refused frame (not the SEND's, already answered when the
    SEND was queued), and no RECEIPT; the transaction's SENDs stored before it stay stored."""
    queue = "/queue/tx"
    server = start_node("a", "--redis", redis_url, "--database", f"sqlite:///{tmp_path}/a.db",
                        "--max-queue-messages", "1")
    client = QueueClient(server.http_port)
    try:
        client.conn.begin("tx1")
        client.conn.send(queue, "one", transaction="tx1", headers={"receipt": "send-1"})
        client.conn.send(queue, "two", transaction="tx1", headers={"receipt": "send-2"})
        client.wait_for(lambda: "send-2" in client.receipts, "the SENDs' receipts")
        client.conn.commit("tx1", headers={"receipt": "commit"})
        client.wait_for(lambda: client.errors, "the ERROR")
        error = client.errors[0]
        assert error.headers["message"].startswith("queue full: /queue/tx"), error.headers
        assert error.headers.get("receipt-id") == "commit", error.headers
        assert "commit" not in client.receipts
        assert queue_length(redis_url, queue) == 1
        client.wait_for(lambda: client.disconnected, "the close after the ERROR")
    finally:
        client.close()
