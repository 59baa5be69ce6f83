"""Ingestion: relayed records become deliveries to this server's subscribers."""

from __future__ import annotations

from typing import Any

from twisted.logger import globalLogPublisher

from stomp_chat.broker import Broker
from stomp_chat.cluster.ingest import Ingestion
from tests.test_broker import subscribe


def test_a_failing_listener_loses_no_record_and_silences_no_other_listener() -> None:
    """A relay listener that raises (chat, read state) is logged; the record is still
    delivered, the listeners after it still hear of it, and the next records follow."""
    broker = Broker()
    recorder, _ = subscribe(broker, "/topic/t")
    ingestion = Ingestion(broker, "ns:")
    heard: list[bytes] = []

    def broken(key: str, origin: str, body: bytes) -> None:
        raise RuntimeError("listener bug")

    ingestion.listeners.extend([broken, lambda key, origin, body: heard.append(body)])
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for body in (b"one", b"two"):
            ingestion.deliver("/topic/t", ("other-node", False, {}, None, body))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert recorder.bodies == heard == [b"one", b"two"]
    assert [e["log_failure"].type for e in events if "log_failure" in e] == [RuntimeError] * 2
