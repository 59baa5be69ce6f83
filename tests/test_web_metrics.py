"""Tests for stomp_chat.web.metrics: /metrics on a real server moves as traffic flows."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.stompload import RawStompClient, subscriber


def scrape(server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by name and labels."""
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10) as response:
        assert response.headers["content-type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_as_traffic_flows(start_server, tmp_path: Path) -> None:
    """Scrape, act, scrape: connections, frames, messages, saves and batches all move."""
    server = start_server(f"--database=sqlite:///{tmp_path / 'chat.db'}", "--write-interval=10")
    before = scrape(server)
    assert all(name.startswith("stomp_chat_") for name, _ in before)
    deadline = time.monotonic() + 10
    while value(before, "stomp_chat_database_up") != 1:  # the first probe is under way
        assert time.monotonic() < deadline
        time.sleep(0.05)
        before = scrape(server)
    assert value(before, "stomp_chat_process_resident_memory_bytes") > 0

    reader = subscriber(server.stomp_port, 5)
    writer = RawStompClient(server.stomp_port)
    body = json.dumps({"type": "TALK", "roomId": 5, "senderId": 1, "detailMessage": "hi"})
    for number in range(3):
        writer.send("SEND", {"destination": "/app/message", "receipt": f"r{number}"},
                    body.encode())
    deadline = time.monotonic() + 10
    while len(writer.receipts) < 3 or len(reader.of("MESSAGE")) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    writer.send("BOGUS", {})
    assert writer.closed.wait(5)
    # The client can see the close a moment before the server has let go of the connection.
    during = scrape(server)
    while value(during, "stomp_chat_connections", transport="tcp") != 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
        during = scrape(server)

    assert value(during, "stomp_chat_connections_opened_total", transport="tcp") == 2
    assert value(during, "stomp_chat_connections", transport="tcp") == 1
    assert value(during, "stomp_chat_connects_total", transport="tcp", outcome="none") == 2
    assert value(during, "stomp_chat_frames_received_total", command="SEND") == 3
    assert value(during, "stomp_chat_frames_received_total", command="CONNECT") == 2
    assert value(during, "stomp_chat_frames_received_total", command="other") == 1
    assert value(during, "stomp_chat_frames_sent_total", command="RECEIPT") == 4
    assert value(during, "stomp_chat_frames_sent_total", command="MESSAGE") == 3
    # Three chat messages, and the presence event of the reader entering room 5.
    assert value(during, "stomp_chat_messages_published_total") == 4
    assert value(during, "stomp_chat_messages_delivered_total") == 3
    assert value(during, "stomp_chat_messages_saved_total") == 3
    assert value(during, "stomp_chat_errors_sent_total", reason="unknown command") == 1
    assert value(during, "stomp_chat_subscriptions") == 1
    assert value(during, "stomp_chat_write_behind_pending_messages") == 0
    assert value(during, "stomp_chat_write_behind_batch_size_count") >= 1
    assert value(during, "stomp_chat_write_behind_batch_size_sum") == 3
    assert value(during, "stomp_chat_write_behind_flush_seconds_count") >= 1
    assert value(during, "stomp_chat_process_cpu_seconds_total") >= value(
        before, "stomp_chat_process_cpu_seconds_total")

    reader.close()
    deadline = time.monotonic() + 10
    while value(scrape(server), "stomp_chat_connections", transport="tcp") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    after = scrape(server)
    assert value(after, "stomp_chat_subscriptions") == 0


def test_websocket_connections_are_counted_apart(start_server, clients) -> None:
    """A stomp.py WebSocket client counts under transport="ws"."""
    server = start_server()
    clients(server)
    samples = scrape(server)
    assert value(samples, "stomp_chat_connections_opened_total", transport="ws") == 1
    assert value(samples, "stomp_chat_connections", transport="ws") == 1


def test_metrics_off_serves_no_endpoint(start_server) -> None:
    """--metrics off leaves /metrics unserved (404)."""
    server = start_server("--metrics", "off")
    try:
        urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10)
    except urllib.error.HTTPError as error:
        assert error.code == 404
    else:
        raise AssertionError("/metrics answered with --metrics off")


def test_queue_metrics_follow_waiting_and_dead_lettered_messages(start_server,
                                                                 tmp_path: Path) -> None:
    """Queued bytes and queues rise while a message waits; NACKed past the limit, it is counted
    as dead-lettered and arrives on the dead-letter queue with its headers."""
    server = start_server(f"--database=sqlite:///{tmp_path / 'chat.db'}",
                          "--max-redeliveries=1")
    sender = RawStompClient(server.stomp_port)
    sender.send("SEND", {"destination": "/queue/jobs", "receipt": "s"}, b"job")
    deadline = time.monotonic() + 10
    while "s" not in sender.receipts:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    waiting = scrape(server)
    assert value(waiting, "stomp_chat_queues") == 1
    assert value(waiting, "stomp_chat_queued_bytes") > len(b"job")

    worker = RawStompClient(server.stomp_port)
    worker.send("SUBSCRIBE", {"destination": "/queue/jobs", "id": "w",
                              "ack": "client-individual"})
    for delivery in (1, 2):
        while len(worker.of("MESSAGE")) < delivery:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        worker.send("NACK", {"id": worker.of("MESSAGE")[-1].headers["ack"]})
    first, again = worker.of("MESSAGE")
    assert "redelivered" not in first.headers
    assert (again.headers["redelivered"], again.headers["x-delivery-count"]) == ("true", "1")

    reader = RawStompClient(server.stomp_port)
    reader.send("SUBSCRIBE", {"destination": "/queue/dead-letter", "id": "d"})
    while not reader.of("MESSAGE"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    (letter,) = reader.of("MESSAGE")
    assert letter.body == b"job"
    assert letter.headers["x-original-destination"] == "/queue/jobs"
    assert letter.headers["x-delivery-count"] == "2"
    after = scrape(server)
    assert value(after, "stomp_chat_messages_dead_lettered_total") == 1
    assert value(after, "stomp_chat_dead_letters_dropped_total") == 0
    assert value(after, "stomp_chat_delivery_failures_total") == 0
    assert value(after, "stomp_chat_queued_bytes") == 0
    for client in (sender, worker, reader):
        client.close()


def test_disconnect_reasons_and_dependency_probes_are_exported() -> None:
    """Slow-consumer and heart-beat disconnects get counters; Redis state and round trip too."""
    from types import SimpleNamespace

    from prometheus_client.exposition import generate_latest
    from twisted.internet.task import Clock

    from stomp_chat.broker import Broker
    from stomp_chat.probes import Probe, ProbeResult
    from stomp_chat.stats import ServerStats
    from stomp_chat.web.metrics import MetricSources, build_registry

    stats = ServerStats()
    stats.error_sent("slow consumer")
    stats.error_sent("heart-beat timeout")
    stats.error_sent("heart-beat timeout")
    redis = Probe(Clock(), lambda: None, 1.0)
    redis.last = ProbeResult(up=True, seconds=0.002, checked=True)
    session = SimpleNamespace(subscriptions={"a": 1, "b": 2}, pending_receipts=4)
    sources = MetricSources(
        stats=stats,
        broker=Broker(),
        writer=SimpleNamespace(pending_count=7, saved_count=0, rejected_count=1),
        sessions=lambda: [session],
        redis=redis,
    )
    text = generate_latest(build_registry(sources)).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert value(samples, "stomp_chat_slow_consumer_disconnects_total") == 1
    assert value(samples, "stomp_chat_heartbeat_timeouts_total") == 2
    assert value(samples, "stomp_chat_errors_sent_total", reason="heart-beat timeout") == 2
    assert value(samples, "stomp_chat_redis_up") == 1
    assert value(samples, "stomp_chat_redis_rtt_seconds") == 0.002
    assert value(samples, "stomp_chat_subscriptions") == 2
    assert value(samples, "stomp_chat_receipts_pending") == 4
    assert value(samples, "stomp_chat_write_behind_pending_messages") == 7
    assert value(samples, "stomp_chat_messages_rejected_total") == 1
    assert value(samples, "stomp_chat_queues") == 0
    assert "stomp_chat_database_up" not in text, "no database probe, no database metrics"
