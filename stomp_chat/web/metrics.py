"""``GET /metrics``: Prometheus text, built from the server's own counters at scrape time.

The chat path only bumps plain integers (``stomp_chat.stats``); this
collector turns them, and what the writer, the probes and the sessions
already know, into metric families when Prometheus asks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from twisted.web.resource import Resource
from twisted.web.server import Request

from stomp_chat.probes import Probe
from stomp_chat.stats import BucketCounts, ServerStats, TimedStore

PREFIX = "stomp_chat"

#: ERROR reasons that have a counter of their own.
SLOW_CONSUMER = "slow consumer"
HEARTBEAT_TIMEOUT = "heart-beat timeout"


@dataclass
class MetricSources:
    """Everything the collector reads; the parts a server lacks are None."""

    stats: ServerStats
    broker: Any
    writer: Any
    sessions: Callable[[], Iterable[Any]]
    timed_store: TimedStore | None = None
    database: Probe | None = None
    redis: Probe | None = None
    draining: Callable[[], bool] = lambda: False
    #: Cluster mode: the relay (its ingestion counts what other servers sent here).
    relay: Any = None


class ChatCollector(Collector):
    """A custom collector: reads counters when scraped, keeps nothing itself."""

    def __init__(self, sources: MetricSources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        src = self.sources
        stats = src.stats
        yield _labelled(CounterMetricFamily, "connections_opened",
                        "STOMP connections accepted, by transport.", "transport",
                        stats.connections_opened)
        yield _labelled(GaugeMetricFamily, "connections",
                        "STOMP connections open now, by transport.", "transport",
                        stats.connections_open)
        connects = CounterMetricFamily(
            f"{PREFIX}_connects",
            "CONNECT frames by transport and outcome: the authentication method that "
            "accepted the client ('none' for anonymous), or 'refused'.",
            labels=["transport", "outcome"],
        )
        for (transport, outcome), count in sorted(stats.connects.items()):
            connects.add_metric([transport, outcome], count)
        yield connects
        yield _labelled(CounterMetricFamily, "frames_received",
                        "STOMP frames received from clients, by command.", "command",
                        stats.frames_received)
        sent = dict(stats.frames_sent)
        sent["MESSAGE"] = stats.delivered
        yield _labelled(CounterMetricFamily, "frames_sent",
                        "STOMP frames sent to clients, by command.", "command", sent)
        yield CounterMetricFamily(f"{PREFIX}_messages_published",
                                  "Messages published to the broker (topics, queues, chat).",
                                  value=src.broker.published_count)
        yield CounterMetricFamily(f"{PREFIX}_messages_delivered",
                                  "MESSAGE frames written to subscribers.", value=stats.delivered)
        broker = src.broker
        yield GaugeMetricFamily(f"{PREFIX}_queued_bytes",
                                "Bytes waiting in /queue/ destinations (--max-queued-bytes).",
                                value=broker.queued_bytes)
        yield GaugeMetricFamily(f"{PREFIX}_queues", "/queue/ destinations that exist now.",
                                value=broker.queue_count)
        yield CounterMetricFamily(f"{PREFIX}_messages_dead_lettered",
                                  "Queue messages moved to the dead-letter queue.",
                                  value=broker.dead_lettered)
        yield CounterMetricFamily(f"{PREFIX}_dead_letters_dropped",
                                  "Dead letters dropped because the dead-letter queue was full.",
                                  value=broker.dead_letters_dropped)
        yield CounterMetricFamily(f"{PREFIX}_delivery_failures",
                                  "Deliveries that raised; each closed its subscriber's session.",
                                  value=broker.failed_deliveries)
        yield _labelled(CounterMetricFamily, "errors_sent",
                        "ERROR frames sent (each closes its connection), by reason.", "reason",
                        stats.errors)
        yield CounterMetricFamily(f"{PREFIX}_slow_consumer_disconnects",
                                  "Clients disconnected for falling too far behind.",
                                  value=stats.errors.get(SLOW_CONSUMER, 0))
        yield CounterMetricFamily(f"{PREFIX}_heartbeat_timeouts",
                                  "Clients disconnected for missing heart-beats.",
                                  value=stats.errors.get(HEARTBEAT_TIMEOUT, 0))
        subscriptions = receipts = 0
        for session in src.sessions():
            subscriptions += len(session.subscriptions)
            receipts += session.pending_receipts
        yield GaugeMetricFamily(f"{PREFIX}_subscriptions", "Subscriptions open now.",
                                value=subscriptions)
        yield GaugeMetricFamily(f"{PREFIX}_receipts_pending",
                                "RECEIPTs owed to clients (mostly SENDs waiting to be stored).",
                                value=receipts)
        writer = src.writer
        yield GaugeMetricFamily(f"{PREFIX}_write_behind_pending_messages",
                                "Chat messages accepted and not saved yet.",
                                value=writer.pending_count)
        yield CounterMetricFamily(f"{PREFIX}_messages_saved",
                                  "Chat messages saved to the database.", value=writer.saved_count)
        yield CounterMetricFamily(f"{PREFIX}_messages_rejected",
                                  "Chat messages the database refused (dropped).",
                                  value=writer.rejected_count)
        if src.timed_store is not None:
            yield _histogram("write_behind_batch_size",
                             "Messages per write-behind batch.", src.timed_store.batch_sizes)
            yield _histogram("write_behind_flush_seconds",
                             "Time to write one batch, retries excluded.",
                             src.timed_store.flush_seconds)
        for name, probe in (("database", src.database), ("redis", src.redis)):
            if probe is None:
                continue
            yield GaugeMetricFamily(f"{PREFIX}_{name}_up",
                                    f"1 if the {name} answered its last probe.",
                                    value=1 if probe.last.up else 0)
            yield GaugeMetricFamily(f"{PREFIX}_{name}_rtt_seconds",
                                    f"Round trip of the last {name} probe.",
                                    value=probe.last.seconds)
        if src.relay is not None:
            yield CounterMetricFamily(f"{PREFIX}_relayed_messages_received",
                                      "Messages received from the cluster through Redis.",
                                      value=src.relay.ingestion.routed_count)
            yield GaugeMetricFamily(f"{PREFIX}_relay_channels",
                                    "Redis channels subscribed: destinations with local "
                                    "subscribers.", value=len(src.relay.subscribed))
        yield GaugeMetricFamily(f"{PREFIX}_draining", "1 while the server shuts down.",
                                value=1 if src.draining() else 0)


def _labelled(kind: Any, name: str, documentation: str, label: str,
              values: dict[str, int]) -> Metric:
    family = kind(f"{PREFIX}_{name}", documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family  # type: ignore[no-any-return]


def _histogram(name: str, documentation: str, counts: BucketCounts) -> Metric:
    buckets = [(_bound(bound), count) for bound, count in zip(counts.bounds, counts.counts,
                                                              strict=True)]
    buckets.append(("+Inf", counts.count))
    return HistogramMetricFamily(f"{PREFIX}_{name}", documentation, buckets=buckets,
                                 sum_value=counts.total)


def _bound(value: float) -> str:
    return repr(float(value))


def build_registry(sources: MetricSources) -> CollectorRegistry:
    """A registry of this server's metrics and its process's (CPU, memory, open files)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ChatCollector(sources))
    ProcessCollector(namespace=PREFIX, registry=registry)
    return registry


class Metrics(Resource):
    """``GET /metrics`` in the Prometheus text format."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self.registry)
