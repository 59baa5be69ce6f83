"""Recovery benchmark: how long a re-subscribing client waits for what it missed.

Against a real ``twistd`` server on SQLite, a client subscribes to a room with
``since-seq:0`` after N messages were sent, and the time from SUBSCRIBE to the
last replayed MESSAGE is measured (stomp.py over WebSocket, on loopback):

- ``cache``: the room is active and its cache (``--history-size``) holds all N;
- ``database``: the server was restarted, so every message comes from SQLite.

Usage: ``python bench/recovery.py [--messages 100,1000] [--repeats 3]``.
Every figure is the median of the repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chatclient import ChatClient  # noqa: E402
from tests.serverproc import RunningServer  # noqa: E402


def _fill(server: RunningServer, room: int, count: int) -> None:
    sender = ChatClient(server.http_port)
    for i in range(1, count + 1):
        receipt = f"r{i}" if i == count else None
        sender.send_chat(
            {"type": "TALK", "roomId": room, "senderId": 7, "detailMessage": f"message {i}"},
            receipt=receipt,
        )
    sender.wait_for(lambda: f"r{count}" in sender.receipts, "the last message stored", 60)
    sender.close()


def _recover(server: RunningServer, room: int, count: int) -> float:
    client = ChatClient(server.http_port)
    started = time.perf_counter()
    client.conn.subscribe(f"/topic/chat/room/{room}", id="room", ack="auto",
                          headers={"since-seq": "0"})
    client.wait_chat(room, count, timeout=60)
    elapsed = time.perf_counter() - started
    seqs = [m["seq"] for m in client.chat(room)]
    client.close()
    assert seqs == list(range(1, count + 1)), "recovery lost, repeated or reordered a message"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", default="100,1000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = []
    for count in (int(n) for n in args.messages.split(",")):
        timings: dict[str, list[float]] = {"cache": [], "database": []}
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory() as workdir:
                server = RunningServer(
                    Path(workdir), ["--history-size", str(count), "--max-recovery", str(count)]
                ).start()
                try:
                    room = repeat + 1
                    _fill(server, room, count)
                    timings["cache"].append(_recover(server, room, count))
                    server.stop()
                    server.start()
                    timings["database"].append(_recover(server, room, count))
                finally:
                    server.stop()
        for source, values in timings.items():
            median = statistics.median(values)
            results.append({"messages": count, "from": source, "median_ms": round(median * 1000, 1),
                            "per_message_us": round(median / count * 1e6, 1)})
    for row in results:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
