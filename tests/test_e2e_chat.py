"""End to end: real `twistd -n stomp-chat` processes, stomp.py over WebSocket, HTTP over
urllib, and the database read directly — on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import pytest

from tests.chatclient import ROOM_TOPIC
from tests.serverproc import (
    STOPPED_BY_SIGTERM,
    RunningServer,
    _import_root,
    assert_clean_stop,
)

if TYPE_CHECKING:
    from tests.conftest_db import TestDatabase

pytest_plugins = ["tests.conftest_db"]

TIMEOUT = 15.0

ERRORS = "/user/queue/errors"


# -- clients ---------------------------------------------------------------------------------


def http_get(base: str, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(base + path, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read().decode("utf-8"))


def history(server: RunningServer, room_id: int, query: str = "") -> list[dict[str, Any]]:
    status, body = http_get(server.http_url, f"/api/rooms/{room_id}/messages{query}")
    assert status == 200, body
    return list(body["messages"])


# -- databases -------------------------------------------------------------------------------


@dataclass
class ChatDatabase:
    """A database for a server process: its URL and a way to read it directly."""

    url: str
    database: TestDatabase
    start_server: Callable[..., RunningServer]

    def rows(self, room_id: int) -> list[tuple[int, str, str, int]]:
        return [
            (int(seq), kind, text, int(sender))
            for seq, kind, text, sender in self.database.query(
                "SELECT seq, type, text, sender_id FROM messages "
                f"WHERE room_id = {int(room_id)} ORDER BY seq"
            )
        ]

    def start(self, *options: str) -> RunningServer:
        return self.start_server("--database", self.url, *options)


def _postgres_server_url(database: TestDatabase) -> str:
    """The test server's URL with the fixture's search_path, as the server parses URLs."""
    from tests.conftest_db import POSTGRES_URL  # imported late: pytest loads it as a plugin

    query = urlencode({"options": database.config.options["options"]})
    separator = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{separator}{query}"


@pytest.fixture(params=["sqlite", "postgresql"])
def chat_db(request: pytest.FixtureRequest) -> ChatDatabase:
    """A fresh database (a SQLite file, or a PostgreSQL schema) and a server starter.

    The database fixture is set up first, so servers are stopped before it is dropped.
    """
    database: TestDatabase = request.getfixturevalue(f"{request.param}_database")
    if request.param == "sqlite":
        url = f"sqlite:///{database.config.database}"
        assert url.startswith("sqlite:////"), "the path must be absolute"
    else:
        url = _postgres_server_url(database)
    return ChatDatabase(url, database, request.getfixturevalue("start_server"))


# -- the whole flow --------------------------------------------------------------------------


def test_chat_flow_over_websocket_survives_a_restart(chat_db: ChatDatabase, clients) -> None:
    """ENTER, TALK, errors, receipts and REST history work end to end and survive a restart."""
    server = chat_db.start()
    alice = clients(server.http_port)
    alice.subscribe(ROOM_TOPIC.format(7))
    alice.subscribe(ERRORS)
    carol = clients(server.http_port)  # a second subscriber of the room
    carol.subscribe(ROOM_TOPIC.format(7))
    carol.subscribe(ERRORS)

    alice.send_chat({"type": "ENTER", "roomId": 7, "senderId": 42})
    [enter] = alice.wait_chat(7, 1)
    assert enter["type"] == "ENTER"
    assert enter["detailMessage"] == "42님이 입장하였습니다."
    assert (enter["roomId"], enter["senderId"], enter["seq"]) == (7, 42, 1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", enter["createdAt"])

    text = "안녕하세요! 반가워요 😀🎉 — ünïcødé"
    alice.send_chat({"type": "TALK", "roomId": 7, "senderId": 42, "detailMessage": text})
    talk = alice.wait_chat(7, 2)[1]
    assert (talk["type"], talk["detailMessage"], talk["seq"]) == ("TALK", text, 2)

    # A bad message is reported on /user/queue/errors; the connection stays usable.
    alice.send_chat("{this is not json", receipt="bad-1")
    [error] = alice.wait_for(lambda: alice.at(ERRORS), "an error on /user/queue/errors")
    assert json.loads(error.body)["error"] == "invalid-json"
    assert error.headers.get("receipt-id") == "bad-1"
    assert error.headers.get("code") == "invalid-json"
    alice.send_chat({"type": "TALK", "roomId": 7, "senderId": 42, "detailMessage": ""})
    alice.wait_for(lambda: len(alice.at(ERRORS)) == 2, "a second error")
    assert json.loads(alice.at(ERRORS)[1].body)["error"] == "invalid-message"

    # A SEND with a receipt gets its RECEIPT, and only once the message is stored.
    alice.send_chat(
        {"type": "TALK", "roomId": 7, "senderId": 43, "detailMessage": "durable"}, receipt="r-1"
    )
    alice.wait_for(lambda: "r-1" in alice.receipts, "RECEIPT r-1")
    assert (3, "TALK", "durable", 43) in chat_db.rows(7)
    assert "bad-1" not in alice.receipts, "a refused SEND gets no RECEIPT"
    assert alice.errors == [], "no ERROR frame: the connection was not closed"
    broadcast = alice.wait_chat(7, 3)
    assert [m["seq"] for m in broadcast] == [1, 2, 3]

    # REST history matches what was broadcast.
    assert history(server, 7) == broadcast
    assert history(server, 7, "?limit=2") == broadcast[1:]
    status, room = http_get(server.http_url, "/api/rooms/7")
    assert status == 200 and room["id"] == 7

    # Every subscriber got the same broadcast; errors went only to their sender.
    assert carol.wait_chat(7, 3) == broadcast
    carol.subscribe("/topic/after-the-errors")  # a round trip: anything routed has arrived
    assert carol.at(ERRORS) == []

    alice.close()
    carol.close()
    assert_clean_stop(server)
    assert chat_db.rows(7) == [
        (1, "ENTER", "42님이 입장하였습니다.", 42),
        (2, "TALK", text, 42),
        (3, "TALK", "durable", 43),
    ]

    # A new server on the same database: history intact, seq continues.
    restarted = chat_db.start()
    assert history(restarted, 7) == broadcast
    bob = clients(restarted.http_port)
    bob.subscribe(ROOM_TOPIC.format(7))
    bob.send_chat(
        {"type": "TALK", "roomId": 7, "senderId": 44, "detailMessage": "다시 왔어요"}, receipt="r-2"
    )
    [again] = bob.wait_chat(7, 1)
    assert (again["seq"], again["messageId"], again["detailMessage"]) == (4, "7-4", "다시 왔어요")
    bob.wait_for(lambda: "r-2" in bob.receipts, "RECEIPT r-2")
    assert history(restarted, 7) == [*broadcast, again]
    assert [row[0] for row in chat_db.rows(7)] == [1, 2, 3, 4]


def test_shutdown_flushes_every_buffered_message(chat_db: ChatDatabase, clients) -> None:
    """SIGTERM saves every accepted, still-buffered message, in seq order."""
    count = 500
    server = chat_db.start("--write-interval", "20000")
    client = clients(server.http_port)
    client.subscribe(ROOM_TOPIC.format(3))
    for i in range(count):
        client.send_chat(
            {
                "type": "TALK",
                "roomId": 3,
                "senderId": 1 + i % 5,
                "detailMessage": f"burst {i:03d} 🚀",
            }
        )
    # Accepted means broadcast: wait for the last one, not for any storage.
    received = client.wait_chat(3, count, timeout=30)
    assert [m["seq"] for m in received] == list(range(1, count + 1))
    status, health = http_get(server.http_url, "/healthz")
    assert status == 200 and health["unsaved"] == count, health
    assert chat_db.rows(3) == [], "the messages must still be buffered at SIGTERM"

    assert_clean_stop(server)
    rows = chat_db.rows(3)
    assert len(rows) == count
    assert rows == [(i + 1, "TALK", f"burst {i:03d} 🚀", 1 + i % 5) for i in range(count)]


# -- options ---------------------------------------------------------------------------------


def _twistd(workdir: Path, *args: str, log_name: str = "server.log") -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_import_root(), *filter(None, [env.get("PYTHONPATH")])])
    command = [
        str(Path(sys.executable).parent / "twistd"),
        "--nodaemon",
        "--pidfile=",
        f"--logfile={workdir / log_name}",
        "stomp-chat",
        *args,
    ]
    return subprocess.Popen(
        command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def _run_to_exit(workdir: Path, *args: str) -> tuple[int, str]:
    process = _twistd(workdir, *args)
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"twistd stomp-chat {' '.join(args)} did not exit") from None
    log_path = workdir / "server.log"
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    return process.returncode, output.decode(errors="replace") + log


def test_a_config_file_sets_options_and_the_command_line_wins(tmp_path: Path, clients) -> None:
    """--config TOML sets endpoints, database and limits; command-line options override it."""
    database = tmp_path / "from-config.db"
    config = tmp_path / "chat.toml"
    config.write_text(
        'http = "tcp:0:interface=127.0.0.1"\n'
        'stomp = "none"\n'
        f'database = "sqlite:///{database}"\n'
        "history_size = 3\n"
        "max-history-page = 5\n"
        "heartbeat = [0, 0]\n"
        'enter_template = "from the config file"\n',
        encoding="utf-8",
    )
    process = _twistd(
        tmp_path, "--config", str(config), "--enter-template", "{senderId} joined room {roomId}"
    )
    log_path = tmp_path / "server.log"
    try:
        deadline = time.monotonic() + TIMEOUT
        port = None
        while port is None:
            log = log_path.read_text(errors="replace") if log_path.exists() else ""
            found = re.search(r"\bSite starting on (\d+)", log)
            if found:
                port = int(found.group(1))
            elif process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start:\n{log}")
            else:
                time.sleep(0.05)
        assert "StompFactory starting" not in log_path.read_text(), "stomp = none"

        client = clients(port)
        client.subscribe(ROOM_TOPIC.format(9))
        client.send_chat({"type": "ENTER", "roomId": 9, "senderId": 42}, receipt="r")
        [enter] = client.wait_chat(9, 1)
        assert enter["detailMessage"] == "42 joined room 9"
        client.wait_for(lambda: "r" in client.receipts, "RECEIPT r")
        base = f"http://127.0.0.1:{port}"
        assert http_get(base, "/api/rooms/9/messages?limit=5")[0] == 200
        status, body = http_get(base, "/api/rooms/9/messages?limit=6")
        assert (status, body["error"]) == (400, "invalid-limit")
        assert database.exists()
        client.close()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()
    assert process.returncode == STOPPED_BY_SIGTERM
    assert "Traceback" not in log_path.read_text(errors="replace")


BAD_OPTIONS = [
    (["--database", "mysql://x"], "--database"),
    (["--database", "sqlite://host/x.db"], "--database"),
    (["--heartbeat", "abc"], "--heartbeat"),
    (["--heartbeat", "10,-5"], "--heartbeat"),
    (["--write-interval", "0"], "--write-interval"),
    (["--history-size", "many"], "--history-size"),
    (["--http", "bogus:endpoint"], "--http"),
    (["--enter-template", "{nobody} entered"], "--enter-template"),
    (["--config", "missing.toml"], "--config"),
    (["--config", "unknown-key.toml"], "unknown option"),
    (["--config", "not-toml.toml"], "not valid TOML"),
]


@pytest.mark.parametrize(
    ("args", "mentions"), BAD_OPTIONS, ids=[" ".join(args) for args, _ in BAD_OPTIONS]
)
def test_bad_options_are_usage_errors(tmp_path: Path, args: list[str], mentions: str) -> None:
    """An invalid option stops the server at once with a message and no traceback."""
    (tmp_path / "unknown-key.toml").write_text('http = "tcp:0"\nbogus = 1\n')
    (tmp_path / "not-toml.toml").write_text("http = \n")
    code, output = _run_to_exit(
        tmp_path, "--stomp=tcp:0:interface=127.0.0.1", "--http=tcp:0:interface=127.0.0.1", *args
    )
    assert code != 0
    assert mentions in output
    assert "Traceback" not in output
    assert "starting on" not in output, "nothing may listen"


def test_an_unusable_database_makes_the_server_exit_with_an_error(tmp_path: Path) -> None:
    """If the database cannot be opened at start-up, the process exits with a non-zero code."""
    code, output = _run_to_exit(
        tmp_path,
        "--stomp=tcp:0:interface=127.0.0.1",
        "--http=tcp:0:interface=127.0.0.1",
        f"--database=sqlite:///{tmp_path}/no/such/dir/chat.db",
    )
    assert "cannot start" in output
    assert "starting on" not in output, "nothing may listen"
    assert code != 0, "a supervisor must see that the server failed to start"


# -- crashes and a database that stops answering ---------------------------------------------


def _kill(server: RunningServer) -> None:
    """SIGKILL: no shutdown code runs, whatever was buffered is lost."""
    process = server.process
    assert process is not None
    server.process = None
    process.kill()
    process.wait(10)
    if process.stdout:
        process.stdout.close()


def _wait_until(condition: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_server_killed_with_sigkill_never_reuses_a_seq(chat_db: ChatDatabase, clients) -> None:
    """After SIGKILL with broadcast messages not yet stored, a server restarted on the same
    database never gives a seq seen before the kill to a different message."""
    room = 5
    # Batches of 10 are written at once; a smaller rest waits a minute, so it dies unsaved.
    server = chat_db.start("--write-batch", "10", "--write-interval", "60000")
    client = clients(server.http_port)
    client.subscribe(ROOM_TOPIC.format(room))
    for i in range(107):
        if i == 100:
            _wait_until(lambda: len(chat_db.rows(room)) == 100, "the full batches to be stored")
        client.send_chat({"type": "TALK", "roomId": room, "senderId": 1, "detailMessage": f"b{i}"})
    seen = {m["seq"]: m["detailMessage"] for m in client.wait_chat(room, 107)}
    assert sorted(seen) == list(range(1, 108))
    client.close()
    _kill(server)
    assert [row[0] for row in chat_db.rows(room)] == list(range(1, 101)), "7 died unsaved"

    restarted = chat_db.start()
    again = clients(restarted.http_port)
    again.subscribe(ROOM_TOPIC.format(room))
    for i in range(5):
        again.send_chat(
            {"type": "TALK", "roomId": room, "senderId": 2, "detailMessage": f"a{i}"},
            receipt=f"r{i}",
        )
    after = again.wait_chat(room, 5)
    again.wait_for(lambda: "r4" in again.receipts, "the last receipt")
    for message in after:
        assert seen.get(message["seq"], message["detailMessage"]) == message["detailMessage"], (
            f"seq {message['seq']} was {seen.get(message['seq'])!r} before the kill"
        )
    assert [m["seq"] for m in after] == sorted(m["seq"] for m in after)
    for seq, _, text, _ in chat_db.rows(room):
        assert seen.get(seq, text) == text, f"seq {seq} names two messages"
    assert_clean_stop(restarted)


def _server_url_through(proxy_port: int, database: TestDatabase) -> str:
    config = database.config
    query = urlencode({"options": config.options["options"]})
    return f"postgresql://{config.user}@127.0.0.1:{proxy_port}/{config.database}?{query}"


def test_a_silent_database_loses_nothing_and_sigterm_stays_bounded(
    postgresql_database: TestDatabase, start_server, clients
) -> None:
    """PostgreSQL stops answering mid-stream (packets dropped): the write-behind abandons the
    stuck batch and retries it, every accepted message is stored exactly once and in order
    once the database answers again, every receipt arrives, and a SIGTERM during a second
    silence ends the server within its stop bound."""
    from tests.blackholeproxy import ThreadedProxy
    from tests.conftest_db import parse_database_url

    base = parse_database_url(_postgres_server_url(postgresql_database))
    proxy = ThreadedProxy(base.host or "127.0.0.1", base.port or 5432).start()
    try:
        url = _server_url_through(proxy.port, postgresql_database)
        server = start_server(
            "--database", url, "--db-timeout", "1", "--write-interval", "20",
            "--shutdown-timeout", "4", "--drain-window", "1",
        )
        client = clients(server.http_port)
        client.subscribe(ROOM_TOPIC.format(1))
        sent = 0

        def send(count: int) -> None:
            nonlocal sent
            for _ in range(count):
                sent += 1
                client.send_chat(
                    {"type": "TALK", "roomId": 1, "senderId": 1, "detailMessage": f"m{sent}"},
                    receipt=f"r{sent}",
                )

        send(50)
        client.wait_for(lambda: "r50" in client.receipts, "the first receipts")
        proxy.blackhole()
        for _ in range(10):
            send(20)
            time.sleep(0.2)  # about 2 s of silence, twice the database timeout
        status, health = http_get(server.http_url, "/healthz")
        assert status == 200 and health["unsaved"] > 0, health
        assert proxy.dropped_bytes > 0, "the server's writes went into the blackhole"
        proxy.restore()
        send(50)
        client.wait_for(lambda: f"r{sent}" in client.receipts, "every receipt", timeout=30)
        broadcast = client.wait_chat(1, sent)
        assert [m["seq"] for m in broadcast] == list(range(1, sent + 1))
        assert {f"r{n}" for n in range(1, sent + 1)} <= set(client.receipts)
        rows = postgresql_database.query(
            "SELECT seq, text FROM messages WHERE room_id = 1 ORDER BY seq"
        )
        assert rows == [(n, f"m{n}") for n in range(1, sent + 1)], "exactly once, in order"

        proxy.blackhole()
        send(20)
        client.wait_chat(1, sent)
        process = server.process
        assert process is not None
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        elapsed = time.monotonic() - started
        server.process = None
        if process.stdout:
            process.stdout.close()
        assert elapsed < 12, f"SIGTERM took {elapsed:.1f}s with the database silent"
        assert "stopping with 20 message(s) unsaved" in server.log()
    finally:
        proxy.stop()


def test_publishers_are_pushed_back_while_the_database_is_silent(
    postgresql_database: TestDatabase, start_server, clients
) -> None:
    """With PostgreSQL silent and the write buffer past its high-water mark, the server
    stops reading its connections instead of refusing: the publisher's messages wait in
    the socket, none is refused, and all are stored once the database answers."""
    from tests.blackholeproxy import ThreadedProxy
    from tests.conftest_db import parse_database_url

    base = parse_database_url(_postgres_server_url(postgresql_database))
    proxy = ThreadedProxy(base.host or "127.0.0.1", base.port or 5432).start()
    try:
        url = _server_url_through(proxy.port, postgresql_database)
        server = start_server(
            "--database", url, "--db-timeout", "1", "--write-interval", "20",
            "--write-buffer", "200",
        )
        publisher = clients(server.http_port)
        publisher.subscribe(ERRORS)
        watcher = clients(server.http_port)
        watcher.subscribe(ROOM_TOPIC.format(2))
        publisher.send_chat(
            {"type": "TALK", "roomId": 2, "senderId": 1, "detailMessage": "m0"}, receipt="open"
        )
        publisher.wait_for(lambda: "open" in publisher.receipts, "the room to be open")
        proxy.blackhole()
        for n in range(1, 301):
            publisher.send_chat(
                {"type": "TALK", "roomId": 2, "senderId": 1, "detailMessage": f"m{n}"}
            )
        time.sleep(2)
        held = len(watcher.chat(2)) - 1
        assert held < 300, f"{held} broadcast: reading should stop at the high-water mark"
        _, health = http_get(server.http_url, "/healthz")
        assert 0 < health["unsaved"] < 200, health
        proxy.restore()
        broadcast = watcher.wait_chat(2, 301, timeout=30)
        assert [m["detailMessage"] for m in broadcast] == [f"m{n}" for n in range(301)]
        assert publisher.at(ERRORS) == [], "nothing was refused"
        _wait_until(
            lambda: postgresql_database.query(
                "SELECT COUNT(*) FROM messages WHERE room_id = 2"
            ) == [(301,)],
            "all 301 stored",
            timeout=30,
        )
        assert "Pausing 2 publishers" in server.log()
        assert server.stop() == STOPPED_BY_SIGTERM
    finally:
        proxy.stop()
