"""Persistence benchmark: write-behind batching versus one INSERT per message.

Measures, on SQLite and PostgreSQL, in one run and side by side:

- ``insert-each``: every message saved by its own ``save_messages([m])``
  transaction, one at a time (what a naive chat server does per message);
- ``write-behind``: the same messages appended to ``WriteBehindWriter``
  (the chat path), timed until all are committed;
- ``durable``: the chat path with a durable receipt per message
  (``append_durable``), timed until every receipt Deferred has fired;
- the chat controller end to end (``ChatService.handle_message``, no
  sockets), with and without receipts, to show what receipts cost a client.

Usage: ``python bench/persistence.py [--messages N] [--repeats R] [--postgres URL]``.
Every figure is a median of the repeats; each repeat uses a fresh schema.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stomp_chat.app.chat import ChatRequest, ChatService  # noqa: E402
from stomp_chat.app.routes import AppContext  # noqa: E402
from stomp_chat.broker import Broker  # noqa: E402
from stomp_chat.persistence import (  # noqa: E402
    AdbapiChatStore,
    ChatMessage,
    WriteBehindWriter,
    make_pool,
    migrate,
    parse_database_url,
)
from stomp_chat.stomp.frame import Frame  # noqa: E402


def messages(count: int, rooms: int = 10) -> list[ChatMessage]:
    now = datetime.now(UTC)
    seqs = [0] * rooms
    out = []
    for i in range(count):
        room = i % rooms
        seqs[room] += 1
        out.append(
            ChatMessage(room + 1, seqs[room], f"{room + 1}-{seqs[room]}", "TALK", 7,
                        f"message {i} 안녕하세요", now)
        )
    return out


class Database:
    """A fresh, migrated database for one measurement."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.schema: str | None = None
        self.config = parse_database_url(url)
        if self.config.dialect == "postgresql":
            import psycopg2

            self.schema = "bench_" + uuid.uuid4().hex[:12]
            admin = psycopg2.connect(**self.config.connect_kwargs())
            admin.autocommit = True
            admin.cursor().execute(f"CREATE SCHEMA {self.schema}")
            admin.close()
            self.config = self.config.with_options(options=f"-csearch_path={self.schema}")
        self.pool = make_pool(self.config, reactor)
        self.store = AdbapiChatStore(self.pool)

    @defer.inlineCallbacks
    def open(self) -> Any:
        yield migrate(self.pool)
        for room in range(1, 11):
            yield self.store.ensure_room(room)

    def close(self) -> None:
        self.pool.close()
        if self.schema:
            import psycopg2

            admin = psycopg2.connect(**parse_database_url(self.url).connect_kwargs())
            admin.autocommit = True
            admin.cursor().execute(f"DROP SCHEMA {self.schema} CASCADE")
            admin.close()


@defer.inlineCallbacks
def insert_each(db: Database, batch: list[ChatMessage]) -> Any:
    start = time.perf_counter()
    for message in batch:
        yield db.store.save_messages([message])
    return time.perf_counter() - start


@defer.inlineCallbacks
def write_behind(db: Database, batch: list[ChatMessage], durable: bool, max_batch: int) -> Any:
    writer = WriteBehindWriter(db.store, reactor, flush_interval=0.05, max_batch=max_batch,
                               max_pending=len(batch) + 1)
    writer.startService()
    start = time.perf_counter()
    if durable:
        receipts = [writer.append_durable(m) for m in batch]
        yield defer.gatherResults(receipts)
    else:
        for message in batch:
            writer.append(message)
        yield writer.flush()
    elapsed = time.perf_counter() - start
    yield writer.stopService()
    return elapsed


@defer.inlineCallbacks
def chat_path(db: Database, count: int, receipts: bool, max_batch: int) -> Any:
    """Messages through the chat controller (parse, number, broadcast, store)."""
    writer = WriteBehindWriter(db.store, reactor, flush_interval=0.05, max_batch=max_batch,
                               max_pending=count + 100)
    writer.startService()
    broker = Broker()
    chat = ChatService(db.store, writer, broker, reactor)
    context = AppContext("bench", None, broker)
    frames = []
    for i in range(count):
        body = json.dumps({"type": "TALK", "roomId": i % 10 + 1, "senderId": 7,
                           "detailMessage": f"message {i}"}).encode()
        headers = {"destination": "/app/message"}
        if receipts:
            headers["receipt"] = str(i)
        frames.append(Frame("SEND", headers, body))
    # Load the rooms first, as a running server has them.
    for room in range(1, 11):
        yield chat.post(ChatRequest("TALK", room, 1, "warm-up"))
    start = time.perf_counter()
    pending = []
    for frame in frames:
        result = chat.handle_message(frame, context, {})
        if result is not None:
            pending.append(result)
    if pending:
        yield defer.gatherResults(pending)
    else:
        yield writer.flush()
    elapsed = time.perf_counter() - start
    yield writer.stopService()
    return elapsed


@defer.inlineCallbacks
def measure(url: str, what: str, count: int, max_batch: int) -> Any:
    db = Database(url)
    try:
        yield db.open()
        batch = messages(count)
        if what == "insert-each":
            elapsed = yield insert_each(db, batch)
        elif what == "write-behind":
            elapsed = yield write_behind(db, batch, durable=False, max_batch=max_batch)
        elif what == "durable":
            elapsed = yield write_behind(db, batch, durable=True, max_batch=max_batch)
        elif what == "chat":
            elapsed = yield chat_path(db, count, receipts=False, max_batch=max_batch)
        else:
            elapsed = yield chat_path(db, count, receipts=True, max_batch=max_batch)
        return count / elapsed
    finally:
        db.close()


@defer.inlineCallbacks
def main(argv: list[str]) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--insert-each-messages", type=int, default=2_000,
                        help="fewer for the slow one-INSERT-per-message mode")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=1000,
                        help="the writer's largest batch (the server's --write-batch)")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="stomp-chat-bench-")
    targets = {"sqlite": None, "postgresql": args.postgres}
    modes = ["insert-each", "write-behind", "durable", "chat", "chat+receipts"]
    results: dict[str, dict[str, list[float]]] = {t: {m: [] for m in modes} for t in targets}
    for repeat in range(args.repeats):
        for target, url in targets.items():
            for mode in modes:  # interleaved: every mode once per repeat
                if url is None:
                    url_here = f"sqlite:///{tmp}/bench-{repeat}-{mode}.db"
                else:
                    url_here = url
                count = args.insert_each_messages if mode == "insert-each" else args.messages
                rate = yield measure(url_here, mode, count, args.max_batch)
                results[target][mode].append(rate)
                print(f"repeat {repeat + 1} {target:10} {mode:14} {rate:12,.0f} msg/s",
                      flush=True)
    table = render(results)
    print()
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return table


def render(results: dict[str, dict[str, list[float]]]) -> str:
    lines = [
        "| database | one INSERT per message | write-behind | write-behind / INSERT each "
        "| durable receipts | durable / write-behind | chat path | chat path + receipts "
        "| receipts cost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for target, modes in results.items():
        med: dict[str, float] = {m: statistics.median(v) for m, v in modes.items()}
        lines.append(
            f"| {target} | {med['insert-each']:,.0f}/s | {med['write-behind']:,.0f}/s "
            f"| {med['write-behind'] / med['insert-each']:.1f}x | {med['durable']:,.0f}/s "
            f"| {med['durable'] / med['write-behind']:.2f}x | {med['chat']:,.0f}/s "
            f"| {med['chat+receipts']:,.0f}/s "
            f"| {med['chat'] / med['chat+receipts']:.2f}x slower |"
        )
    return "\n".join(lines)


def run(main_function: Callable[[list[str]], Any]) -> None:
    task.react(lambda _reactor: main_function(sys.argv[1:]))


if __name__ == "__main__":
    run(main)
