"""End to end in cluster mode: two real `twistd -n stomp-chat --redis ...` processes sharing
rooms through a real Redis, stomp.py clients over WebSocket, REST over urllib, and the
databases read directly.

Every test uses a Redis namespace of its own. When Redis is unreachable the tests are
skipped, except under CI, where they fail.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.chatclient import ROOM_TOPIC
from tests.serverproc import (
    RunningServer,
    _import_root,
    assert_clean_stop,
)

pytest_plugins = ["tests.conftest_db"]

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
TIMEOUT = 10.0

ERRORS = "/user/queue/errors"


# -- Redis -----------------------------------------------------------------------------------


def redis_command(*args: str) -> Any:
    """Run one Redis command over a plain socket; returns the decoded reply."""
    request = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        request += b"$%d\r\n%s\r\n" % (len(data), data)
    with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=3) as connection:
        connection.sendall(request)
        reader = connection.makefile("rb")
        return _read_reply(reader)


def _read_reply(reader: Any) -> Any:
    line = reader.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else reader.read(size + 2)[:-2]
    if kind == b"*":
        return [_read_reply(reader) for _ in range(int(rest))]
    raise RuntimeError(f"unexpected Redis reply {line!r}")


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis URL with a namespace of its own; the namespace's keys are deleted afterwards."""
    try:
        pong = redis_command("PING")
    except OSError as error:
        reason = f"Redis at {REDIS_HOST}:{REDIS_PORT} is unreachable: {error}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so the cluster tests must not be skipped)")
        pytest.skip(f"{reason}; start Redis there to run the cluster tests")
    assert pong == "PONG"
    namespace = f"test-{uuid.uuid4().hex}"
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/0?namespace={namespace}"
    keys = redis_command("KEYS", f"{namespace}:*")
    if keys:
        redis_command("DEL", *(key.decode() for key in keys))


# -- servers and clients ---------------------------------------------------------------------


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """``start_node(name, *options)``: a server process with a working directory (and log) of
    its own; every one still running is stopped when the test ends."""
    servers: list[RunningServer] = []

    def start(name: str, *options: str) -> RunningServer:
        workdir = tmp_path / name
        workdir.mkdir()
        server = RunningServer(workdir, list(options))
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


def history(server: RunningServer, room_id: int) -> list[dict[str, Any]]:
    url = f"{server.http_url}/api/rooms/{room_id}/messages?limit=100"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            status, body = response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    assert status == 200, body
    return list(body["messages"])


# -- databases -------------------------------------------------------------------------------


Row = tuple[int, str, str, int]


@dataclass
class Databases:
    """The database URL of each of the two servers and a way to read each one directly."""

    shared: bool
    urls: tuple[str, str]
    readers: tuple[Callable[[str], list[tuple[Any, ...]]], ...]

    def rows(self, index: int, room_id: int) -> list[Row]:
        query = (
            "SELECT seq, type, text, sender_id FROM messages "
            f"WHERE room_id = {int(room_id)} ORDER BY seq"
        )
        return [(int(s), t, x, int(u)) for s, t, x, u in self.readers[index](query)]


def _sqlite_reader(path: Path) -> Callable[[str], list[tuple[Any, ...]]]:
    def read(query: str) -> list[tuple[Any, ...]]:
        connection = sqlite3.connect(path)
        try:
            return list(connection.execute(query).fetchall())
        finally:
            connection.close()

    return read


@pytest.fixture(params=["separate-sqlite", "shared-postgresql"])
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Databases:
    """Two SQLite files (one per server), or one PostgreSQL schema both servers share.

    Set up before the servers, so the servers are stopped before the schema is dropped.
    """
    if request.param == "separate-sqlite":
        paths = (tmp_path / "a.db", tmp_path / "b.db")
        return Databases(
            False,
            (f"sqlite:///{paths[0]}", f"sqlite:///{paths[1]}"),
            (_sqlite_reader(paths[0]), _sqlite_reader(paths[1])),
        )
    from tests.conftest_db import POSTGRES_URL  # loaded by pytest as a plugin

    database = request.getfixturevalue("postgresql_database")
    query = urlencode({"options": database.config.options["options"]})
    url = f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}{query}"
    return Databases(True, (url, url), (database.query, database.query))


# -- tests -----------------------------------------------------------------------------------


def test_two_servers_share_rooms_and_topics_through_redis(
    databases: Databases, redis_url: str, start_node, clients
) -> None:
    """Clients of two servers see each other's /topic messages and one chat order with seq
    1..N; REST history on each server shows all of it; each server stores the messages of
    its own clients."""
    room, count = 11, 8
    server_a = start_node("a", "--redis", redis_url, "--database", databases.urls[0])
    server_b = start_node("b", "--redis", redis_url, "--database", databases.urls[1])
    on_a, on_b = clients(server_a), clients(server_b)
    for client, name in ((on_a, "a"), (on_b, "b")):
        client.subscribe(ROOM_TOPIC.format(room))
        client.subscribe(f"/topic/raw/{name}")
        client.subscribe(ERRORS)

    # Plain /topic messages cross both ways, headers and all, once Redis has confirmed each
    # server's channels (what is published before that is not delivered: see README).
    for server in (server_a, server_b):
        wait_until(lambda server=server: metric(server, "stomp_chat_relay_channels") >= 3,
                   f"{server.workdir.name}'s three channels subscribed in Redis")
    on_b.conn.send("/topic/raw/a", "from B ü", headers={"x-note": "B 😀"})
    on_a.conn.send("/topic/raw/b", "from A 한글", headers={"x-note": "A ✓"})
    [to_a] = on_a.wait_at("/topic/raw/a", 1)
    [to_b] = on_b.wait_at("/topic/raw/b", 1)
    assert (to_a.body, to_a.headers["x-note"]) == ("from B ü", "B 😀")
    assert (to_b.body, to_b.headers["x-note"]) == ("from A 한글", "A ✓")

    # Chat messages from both servers, interleaved without waiting; A's client is sender 1,
    # B's client sender 2.
    for i in range(count):
        sender = (on_a, on_b)[i % 2]
        body = {"type": "TALK", "roomId": room, "senderId": 1 + i % 2, "detailMessage": f"#{i}"}
        sender.send_chat(body, receipt=f"r-{i}")
    for client, first in ((on_a, 0), (on_b, 1)):
        mine = [f"r-{i}" for i in range(first, count, 2)]
        client.wait_for(lambda c=client, m=mine: set(m) <= set(c.receipts), f"receipts {mine}")

    seen_on_b = on_b.wait_chat(room, count)
    seen_on_a = on_a.wait_chat(room, count)
    assert [m["seq"] for m in seen_on_b] == list(range(1, count + 1))
    assert seen_on_a == seen_on_b, "both servers' subscribers see one order"
    assert {m["senderId"] for m in seen_on_a} == {1, 2}
    assert sorted(m["detailMessage"] for m in seen_on_a) == sorted(f"#{i}" for i in range(count))
    for client in (on_a, on_b):
        assert client.errors == [] and client.at(ERRORS) == []

    # REST history on each server shows every message, in seq order.
    assert history(server_a, room) == seen_on_a
    assert history(server_b, room) == seen_on_a

    on_a.close()
    on_b.close()
    assert_clean_stop(server_a)
    assert_clean_stop(server_b)
    every = [(m["seq"], "TALK", m["detailMessage"], m["senderId"]) for m in seen_on_a]
    if databases.shared:
        assert databases.rows(0, room) == every, "each message stored exactly once"
    else:
        assert databases.rows(0, room) == [row for row in every if row[3] == 1]
        assert databases.rows(1, room) == [row for row in every if row[3] == 2]


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://127.0.0.1:6379/0", "Redis URLs look like redis://host:port/db"),
        ("redis://127.0.0.1:6379/0?namespace=a:b", "namespace"),
        ("redis://127.0.0.1:6379/0?timeout=1", "unknown Redis URL option"),
    ],
)
def test_a_bad_redis_url_is_a_usage_error(tmp_path: Path, url: str, complaint: str) -> None:
    """--redis with a bad URL makes twistd exit non-zero with a message, not a traceback."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_import_root(), *filter(None, [env.get("PYTHONPATH")])])
    command = [
        str(Path(sys.executable).parent / "twistd"),
        "--nodaemon",
        "--pidfile=",
        f"--logfile={tmp_path / 'server.log'}",
        "stomp-chat",
        "--stomp=tcp:0:interface=127.0.0.1",
        "--http=tcp:0:interface=127.0.0.1",
        f"--database=sqlite:///{tmp_path / 'chat.db'}",
        "--redis",
        url,
    ]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "--redis: " in output and complaint in output, output
    assert "Traceback" not in output, output
    assert not (tmp_path / "chat.db").exists(), "nothing may start on a usage error"


def test_a_lost_redis_counter_restarts_past_the_shared_database(
    postgresql_database, redis_url: str, start_node, clients
) -> None:
    """Two servers on one PostgreSQL: when Redis loses a room's counter (as a Redis restart
    does), the next message is numbered past every seq the database holds or reserves, so
    each stored message keeps its own seq and every receipt means stored."""
    from tests.conftest_db import POSTGRES_URL

    query = urlencode({"options": postgresql_database.config.options["options"]})
    url = f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}{query}"
    room = 12
    server_a = start_node("a", "--redis", redis_url, "--database", url)
    server_b = start_node("b", "--redis", redis_url, "--database", url)
    on_a, on_b = clients(server_a), clients(server_b)
    for client in (on_a, on_b):
        client.subscribe(ROOM_TOPIC.format(room))
        client.subscribe(ERRORS)
    for i in range(6):
        sender = (on_a, on_b)[i % 2]
        sender.send_chat(
            {"type": "TALK", "roomId": room, "senderId": 1, "detailMessage": f"before {i}"},
            receipt=f"r-{i}",
        )
    before = on_a.wait_chat(room, 6)
    assert [m["seq"] for m in before] == list(range(1, 7))

    namespace = redis_url.rpartition("namespace=")[2]
    assert redis_command("DEL", f"{namespace}:seq:{room}") == 1
    on_b.send_chat(
        {"type": "TALK", "roomId": room, "senderId": 2, "detailMessage": "after"},
        receipt="r-after",
    )
    on_b.wait_for(lambda: "r-after" in on_b.receipts, "the receipt after the counter was lost")
    after = on_a.wait_chat(room, 7)[-1]
    assert after["detailMessage"] == "after" and after["seq"] > 6
    for client in (on_a, on_b):
        assert client.at(ERRORS) == []
    on_a.close()
    on_b.close()
    assert_clean_stop(server_a)
    assert_clean_stop(server_b)
    rows = postgresql_database.query(
        f"SELECT seq, text FROM messages WHERE room_id = {room} ORDER BY seq"
    )
    assert rows == [(m["seq"], m["detailMessage"]) for m in [*before, after]]


def metric(server: RunningServer, name: str) -> float:
    """One unlabelled value from the server's /metrics."""
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=TIMEOUT) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def relayed_count(server: RunningServer) -> float:
    """The server's stomp_chat_relayed_messages_received_total, from /metrics."""
    return metric(server, "stomp_chat_relayed_messages_received_total")


def wait_until(condition: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def channel_subscribers(redis_url: str, key: str) -> int:
    namespace = redis_url.rpartition("namespace=")[2]
    reply = redis_command("PUBSUB", "NUMSUB", f"{namespace}:{key}")
    return int(reply[1])


def test_a_server_receives_no_traffic_for_rooms_it_has_no_subscribers_for(
    tmp_path: Path, redis_url: str, start_node, clients
) -> None:
    """Rooms partitioned over two servers, publishers anywhere: each server's Redis channels
    are its own rooms', it receives only their messages (its /metrics counts them), and a
    room's channel is dropped when its last subscriber leaves."""
    server_a = start_node("a", "--redis", redis_url, "--database", f"sqlite:///{tmp_path}/a.db")
    server_b = start_node("b", "--redis", redis_url, "--database", f"sqlite:///{tmp_path}/b.db")
    on_a, on_b = clients(server_a), clients(server_b)
    on_a.subscribe(ROOM_TOPIC.format(31))
    on_b.subscribe(ROOM_TOPIC.format(32))
    for client in (on_a, on_b):
        client.subscribe(ERRORS)
    before_a, before_b = relayed_count(server_a), relayed_count(server_b)

    for i in range(5):  # B's client talks in A's room, and A's client in B's
        on_b.send_chat({"type": "TALK", "roomId": 31, "senderId": 2, "detailMessage": f"b{i}"})
        on_a.send_chat({"type": "TALK", "roomId": 32, "senderId": 1, "detailMessage": f"a{i}"})
    assert [m["seq"] for m in on_a.wait_chat(31, 5)] == [1, 2, 3, 4, 5]
    assert [m["seq"] for m in on_b.wait_chat(32, 5)] == [1, 2, 3, 4, 5]
    assert on_a.chat(32) == [] and on_b.chat(31) == []
    assert relayed_count(server_a) - before_a == 5, "A received only its own room's messages"
    assert relayed_count(server_b) - before_b == 5, "B received only its own room's messages"
    assert channel_subscribers(redis_url, ROOM_TOPIC.format(31)) == 1
    assert channel_subscribers(redis_url, ROOM_TOPIC.format(32)) == 1
    assert on_a.errors == [] and on_a.at(ERRORS) == [] and on_b.at(ERRORS) == []

    on_b.conn.unsubscribe(id="1")  # B's last subscriber of room 32 leaves
    deadline = time.monotonic() + TIMEOUT
    while channel_subscribers(redis_url, ROOM_TOPIC.format(32)) != 0:
        assert time.monotonic() < deadline, "B kept its subscription to room 32"
        time.sleep(0.02)


def test_a_direct_message_reaches_every_session_of_its_user_on_every_server(
    tmp_path: Path, redis_url: str, start_node
) -> None:
    """SEND /user/bob/queue/dm on one server reaches each of bob's /user/queue/dm sessions
    on both servers once, and nobody else's."""
    from tests.chatclient import ChatClient

    server_a = start_node("a", "--redis", redis_url, "--database", f"sqlite:///{tmp_path}/a.db")
    server_b = start_node("b", "--redis", redis_url, "--database", f"sqlite:///{tmp_path}/b.db")
    opened: list[ChatClient] = []
    try:
        bob_a, bob_b1, bob_b2, dave_b, carol_a = (
            ChatClient(server.http_port, login)
            for server, login in (
                (server_a, "bob"), (server_b, "bob"), (server_b, "bob"), (server_b, "dave"),
                (server_a, "carol"),
            )
        )
        opened += [bob_a, bob_b1, bob_b2, dave_b, carol_a]
        for client in (bob_a, bob_b1, bob_b2, dave_b):
            client.subscribe("/user/queue/dm")
        for server, channels in ((server_a, 1), (server_b, 2)):  # bob's; bob's and dave's
            wait_until(lambda s=server, n=channels: metric(s, "stomp_chat_relay_channels") >= n,
                       "the user channels subscribed in Redis")
        carol_a.conn.send("/user/bob/queue/dm", "hi bob 👋", headers={"x-from": "carol"})
        for client in (bob_a, bob_b1, bob_b2):
            [message] = client.wait_at("/user/queue/dm", 1)
            assert (message.body, message.headers["x-from"]) == ("hi bob 👋", "carol")
        carol_a.conn.send("/user/dave/queue/dm", "and dave")
        dave_b.wait_at("/user/queue/dm", 1)
        for client in (bob_a, bob_b1, bob_b2):
            assert len(client.at("/user/queue/dm")) == 1, "once each, and not dave's"
        assert [m.body for m in dave_b.at("/user/queue/dm")] == ["and dave"]
    finally:
        for client in opened:
            client.close()


def test_recovery_after_reconnecting_to_another_server_is_gap_and_duplicate_free(
    tmp_path: Path, redis_url: str, start_node, clients
) -> None:
    """A client that saw seqs 1-3 on A, while B's client talks, comes back to A with
    since-seq 3 after B numbered 4-6 and has not written them yet (a long write
    interval): A replays 4-6 from Redis, once each, then the live ones follow."""
    room = 51
    server_a = start_node("a", "--redis", redis_url, "--database", f"sqlite:///{tmp_path}/a.db")
    server_b = start_node("b", "--redis", redis_url, "--database", f"sqlite:///{tmp_path}/b.db",
                          "--write-interval", "60000")
    first = clients(server_a)
    first.subscribe(ROOM_TOPIC.format(room))
    talker = clients(server_b)
    talker.subscribe(ROOM_TOPIC.format(room))
    talker.subscribe(ERRORS)
    for i in range(3):
        talker.send_chat({"type": "TALK", "roomId": room, "senderId": 2, "detailMessage": f"{i}"})
    assert [m["seq"] for m in first.wait_chat(room, 3)] == [1, 2, 3]
    first.close()  # A follows the room no more
    for i in range(3, 6):
        talker.send_chat({"type": "TALK", "roomId": room, "senderId": 2, "detailMessage": f"{i}"})
    assert [m["seq"] for m in talker.wait_chat(room, 6)] == [1, 2, 3, 4, 5, 6]

    again = clients(server_a)
    again.conn.subscribe(ROOM_TOPIC.format(room), id="1", ack="auto",
                         headers={"since-seq": "3", "receipt": "resub"})
    replayed = again.wait_at(ROOM_TOPIC.format(room), 3)
    assert [json.loads(m.body)["seq"] for m in replayed] == [4, 5, 6]
    assert replayed[0].headers.get("recovery") == "complete"
    talker.send_chat({"type": "TALK", "roomId": room, "senderId": 2, "detailMessage": "live"})
    assert [m["seq"] for m in again.wait_chat(room, 4)] == [4, 5, 6, 7]
    time.sleep(0.2)
    assert [m["seq"] for m in again.chat(room)] == [4, 5, 6, 7], "nothing twice"
    assert talker.at(ERRORS) == [] and again.errors == []


def test_presence_is_the_clusters_on_every_server(
    tmp_path: Path, redis_url: str, start_node
) -> None:
    """Alice in a room on A and again on B is one user with two sessions in either
    server's REST presence; a watcher on B sees one join, and one leave once both go."""
    from tests.chatclient import ChatClient

    room = 61
    server_a = start_node("a", "--redis", redis_url, "--database", f"sqlite:///{tmp_path}/a.db")
    server_b = start_node("b", "--redis", redis_url, "--database", f"sqlite:///{tmp_path}/b.db")
    opened: list[ChatClient] = []

    def presence(server: RunningServer) -> list[tuple[str, int]]:
        url = f"{server.http_url}/api/rooms/{room}/presence"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            body = json.loads(response.read())
        return [(u["id"], u["sessions"]) for u in body["users"]]

    try:
        watcher = ChatClient(server_b.http_port, "watcher")
        opened.append(watcher)
        watcher.subscribe(ROOM_TOPIC.format(room) + "/presence")
        alice_a = ChatClient(server_a.http_port, "alice")
        alice_b = ChatClient(server_b.http_port, "alice")
        opened += [alice_a, alice_b]
        alice_a.subscribe(ROOM_TOPIC.format(room))
        alice_b.subscribe(ROOM_TOPIC.format(room))
        for client in (alice_a, alice_b):  # the room exists in each server's database
            client.send_chat({"type": "TALK", "roomId": room, "senderId": 1,
                              "detailMessage": "hi"})
        alice_a.wait_chat(room, 2)
        [joined] = watcher.wait_at(ROOM_TOPIC.format(room) + "/presence", 1)
        assert json.loads(joined.body)["type"] == "join"
        deadline = time.monotonic() + TIMEOUT
        while presence(server_a) != [("alice", 2)]:
            assert time.monotonic() < deadline, presence(server_a)
            time.sleep(0.05)
        assert presence(server_b) == [("alice", 2)]
        alice_a.close()
        alice_b.close()
        events = watcher.wait_at(ROOM_TOPIC.format(room) + "/presence", 2)
        assert [json.loads(e.body)["type"] for e in events] == ["join", "leave"]
        assert presence(server_a) == presence(server_b) == []
    finally:
        for client in opened:
            client.close()
