"""Tests for stomp_chat.lifecycle: the service tree's start order, drain and data-safe stop.

Unit tests drive ChatServer with task.Clock; the signal tests run the real
``twistd`` under load and read the database it wrote.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor

from stomp_chat.heartbeat import HeartbeatMonitor
from stomp_chat.lifecycle import SHUTDOWN_MESSAGE, ChatServer, Listener, StartupError
from tests.serverproc import STOPPED_BY_SIGTERM, RunningServer
from tests.stompload import Publisher, RawStompClient, chat_texts, subscriber

pytest_plugins = ["tests.conftest_db"]

# -- unit: ChatServer with a clock -------------------------------------------------------


class RecordingSession:
    """A session that notes when it was told to leave, then leaves its monitor."""

    def __init__(self, monitor: HeartbeatMonitor, clock: Clock) -> None:
        self.monitor = monitor
        self.clock = clock
        self.told_at: float | None = None
        monitor.add(self)

    def shut_down(self, message: str) -> None:
        assert message == SHUTDOWN_MESSAGE
        self.told_at = self.clock.seconds()
        self.monitor.discard(self)

    def check_liveness(self, now: float, tick: float) -> None:
        pass

    def fail(self, message: str, detail: str = "") -> None:
        pass


class RecordingWriter(Service):
    """A writer whose stop finishes when the test says so; records flushes."""

    def __init__(self) -> None:
        self.flushes = 0
        self.stopped: Deferred[None] = Deferred()
        self.pending_count = 0

    def flush(self) -> None:
        self.flushes += 1

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.stopped


class RecordingPool:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _server(clock: Clock, **kwargs: Any) -> tuple[ChatServer, HeartbeatMonitor, Any, Any]:
    monitor = HeartbeatMonitor(clock, 1.0)
    writer = RecordingWriter()
    pool = RecordingPool()
    server = ChatServer(clock, pool, writer, monitor, [], **kwargs)
    return server, monitor, writer, pool


def test_clients_are_told_in_batches_spread_over_the_drain_window() -> None:
    """With many clients, stopping tells them in batches spread evenly over --drain-window."""
    clock = Clock()
    server, monitor, writer, pool = _server(clock, drain_window=2.0)
    server.startService()
    sessions = [RecordingSession(monitor, clock) for _ in range(1000)]
    stopped = server.stopService()
    assert server.draining
    clock.advance(0)
    told_now = [s for s in sessions if s.told_at == 0]
    assert 0 < len(told_now) < 1000
    clock.pump([0.05] * 60)
    times = sorted({s.told_at for s in sessions if s.told_at is not None})
    assert len([s for s in sessions if s.told_at is not None]) == 1000
    assert len(times) > 5, "spread over several batches"
    assert max(times) <= 2.0
    assert writer.flushes == len(times), "each batch asks the writer to flush"
    assert not pool.closed, "the pool stays open until the writer has flushed"
    writer.stopped.callback(None)
    assert pool.closed
    assert stopped.called


def test_a_few_clients_are_told_at_once() -> None:
    """Up to one batch of clients is told at once, without waiting out the window."""
    clock = Clock()
    server, monitor, writer, pool = _server(clock, drain_window=5.0)
    server.startService()
    sessions = [RecordingSession(monitor, clock) for _ in range(3)]
    server.stopService()
    assert [s.told_at for s in sessions] == [0, 0, 0]


def test_one_failing_client_does_not_stop_the_drain() -> None:
    """A client whose shut_down raises is skipped; the others are still told."""
    clock = Clock()
    server, monitor, writer, pool = _server(clock)
    server.startService()

    class Broken(RecordingSession):
        def shut_down(self, message: str) -> None:
            self.monitor.discard(self)
            raise RuntimeError("broken transport")

    Broken(monitor, clock)
    healthy = RecordingSession(monitor, clock)
    server.stopService()
    assert healthy.told_at == 0


def test_the_shutdown_timeout_bounds_the_stop() -> None:
    """A writer that never finishes flushing cannot hold the stop past --shutdown-timeout."""
    clock = Clock()
    server, monitor, writer, pool = _server(clock, shutdown_timeout=3.0)
    server.startService()
    stopped = server.stopService()
    clock.advance(2.9)
    assert not stopped.called
    clock.advance(0.2)
    assert stopped.called
    assert pool.closed


def test_listeners_bind_in_privileged_start_before_anything_else_starts() -> None:
    """privilegedStartService binds every listener (as root, before --uid) and starts nothing."""
    reactor = MemoryReactor()
    clock = Clock()
    monitor = HeartbeatMonitor(clock, 1.0)
    writer = RecordingWriter()
    listener = Listener("stomp", "tcp:443", TCP4ServerEndpoint(reactor, 443), Factory())
    server = ChatServer(clock, RecordingPool(), writer, monitor, [listener])
    server.privilegedStartService()
    assert [port[0] for port in reactor.tcpServers] == [443]
    assert not writer.running and not monitor.running
    server.startService()
    assert writer.running and monitor.running
    assert server.listening
    assert [port[0] for port in reactor.tcpServers] == [443], "bound once"


def test_a_listener_that_cannot_bind_is_a_startup_error() -> None:
    """A port that cannot be bound raises StartupError naming the option and the cause."""
    import socket

    from twisted.internet import reactor

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        endpoint = TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
        listener = Listener("http", f"tcp:{port}", endpoint, Factory())
        with pytest.raises(StartupError) as raised:
            listener.privilegedStartService()
    assert str(raised.value) == (
        f"--http: cannot listen on tcp:{port}: [Errno 98] Address already in use"
    )
    assert raised.value.code == 1
    assert isinstance(raised.value, Exception), "a daemonising twistd reports Exceptions"


def test_listening_is_false_while_draining() -> None:
    """The server stops counting as listening the moment it starts to drain."""
    reactor = MemoryReactor()
    clock = Clock()
    listener = Listener("stomp", "tcp:1", TCP4ServerEndpoint(reactor, 1), Factory())
    monitor = HeartbeatMonitor(clock)
    server = ChatServer(clock, RecordingPool(), RecordingWriter(), monitor, [listener])
    server.startService()
    assert server.listening
    server.stopService()
    assert not server.listening


# -- the real process under load ---------------------------------------------------------


def _stored(database: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(database) as connection:
        return [(int(sender), text) for sender, text in
                connection.execute("SELECT sender_id, text FROM messages")]


def _assert_nothing_lost(database: Path, publishers: list[Publisher],
                         readers: list[RawStompClient]) -> int:
    stored = _stored(database)
    texts = {text for _, text in stored}
    assert len(texts) == len(stored), "no duplicates"
    for reader in readers:
        missing = set(chat_texts(reader)) - texts
        assert not missing, f"{len(missing)} delivered messages were never stored"
    for publisher in publishers:
        mine = {text for sender, text in stored if sender == publisher.sender_id}
        receipts = publisher.client.receipts
        assert receipts <= mine, "every RECEIPT means stored"
        assert mine <= receipts, f"{len(mine - receipts)} stored messages got no RECEIPT"
    return len(stored)


def _load(
    server: RunningServer, room_id: int, count: int
) -> tuple[list[Publisher], RawStompClient]:
    reader = subscriber(server.stomp_port, room_id)
    publishers = [Publisher(server.stomp_port, 100 + n, room_id).start() for n in range(count)]
    return publishers, reader


def _wait_for_traffic(publishers: list[Publisher], receipts: int) -> None:
    deadline = time.monotonic() + 20
    while sum(len(p.client.receipts) for p in publishers) < receipts:
        assert time.monotonic() < deadline, "the load did not get going"
        time.sleep(0.02)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_under_load_tells_every_client_and_loses_nothing(
    start_server, tmp_path: Path, signum: int
) -> None:
    """SIGTERM/SIGINT under load: clients get ERROR 'server shutting down', every accepted
    message is stored, and every stored message's RECEIPT reached its sender."""
    database = tmp_path / "chat.db"
    server = start_server(f"--database=sqlite:///{database}", "--write-interval=200",
                          "--drain-window=0.5")
    publishers, reader = _load(server, 1, 4)
    _wait_for_traffic(publishers, 400)
    server.signal(signum)
    code = server.wait()
    assert code == -signum, server.log()
    for client in [reader, *(p.client for p in publishers)]:
        assert client.closed.wait(5)
        [error] = client.of("ERROR")
        assert error.headers["message"] == SHUTDOWN_MESSAGE
    for publisher in publishers:
        publisher.stop()
    stored = _assert_nothing_lost(database, publishers, [reader])
    assert stored >= 400
    log = server.log()
    assert "drained: every accepted message is saved" in log
    assert "Traceback" not in log


def test_sigterm_closes_websockets_with_going_away(start_server) -> None:
    """A WebSocket client is told ERROR 'server shutting down', then closed with 1001."""
    import websocket

    server = start_server()
    ws = websocket.create_connection(server.ws_url, subprotocols=["v12.stomp"], timeout=10)
    ws.send("CONNECT\naccept-version:1.2\nhost:/\nheart-beat:0,0\n\n\x00")
    assert ws.recv().startswith("CONNECTED")
    server.signal(signal.SIGTERM)
    error = ws.recv()
    assert error.startswith("ERROR") and f"message:{SHUTDOWN_MESSAGE}" in error
    opcode, frame = ws.recv_data_frame(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(frame.data[:2], "big") == 1001
    ws.close()
    assert server.wait() == STOPPED_BY_SIGTERM


def test_sighup_under_load_loses_nothing_and_reopens_the_renamed_log(
    start_server, tmp_path: Path
) -> None:
    """SIGHUP after logrotate's rename reopens the log; the server keeps serving, losing nothing."""
    database = tmp_path / "chat.db"
    server = start_server(f"--database=sqlite:///{database}")
    publishers, reader = _load(server, 2, 3)
    _wait_for_traffic(publishers, 200)
    rotated = tmp_path / "server.log.1"
    server.log_path.rename(rotated)
    server.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "log file reopened" not in server.log():
        assert time.monotonic() < deadline, "the log was not reopened"
        time.sleep(0.05)
    before = sum(len(p.client.receipts) for p in publishers)
    _wait_for_traffic(publishers, before + 200)
    assert server.process is not None and server.process.poll() is None, "still serving"
    assert all(not p.client.of("ERROR") for p in publishers)
    for publisher in publishers:
        publisher.stop()
    server.signal(signal.SIGTERM)
    assert server.wait() == STOPPED_BY_SIGTERM
    _assert_nothing_lost(database, publishers, [reader])
    assert "Server Shut Down." in server.log()
    assert "Server Shut Down." not in rotated.read_text()


def _free_privileged_port() -> int:
    import socket

    for port in range(900, 1000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below 1024")


def test_twistd_uid_serves_a_privileged_port_after_dropping_root(
    postgresql_database, tmp_path: Path
) -> None:
    """Run as root with --uid: the listener binds a port below 1024, then the server runs as
    the other user and serves on it."""
    import os
    import subprocess
    import sys

    from tests.serverproc import server_environment
    from tests.test_e2e_chat import _postgres_server_url

    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root: binding a privileged port must be tested there")
        pytest.skip("binding a port below 1024 and dropping to another user needs root")
    port = _free_privileged_port()
    tmp_path.chmod(0o777)
    log_path = tmp_path / "server.log"
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "twistd"), "--nodaemon", "--pidfile=",
         f"--logfile={log_path}",
         "--uid=65534", "--gid=65534", "stomp-chat",
         f"--stomp=tcp:{port}:interface=127.0.0.1", "--http=tcp:0:interface=127.0.0.1",
         "--database", _postgres_server_url(postgresql_database)],
        cwd=tmp_path, env=server_environment(), stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while f"StompFactory starting on {port}" not in (
            log_path.read_text() if log_path.exists() else ""
        ):
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        client = RawStompClient(port)
        assert client.of("CONNECTED")
        client.close()
        status = Path(f"/proc/{process.pid}/status").read_text()
        [uid_line] = [line for line in status.splitlines() if line.startswith("Uid:")]
        assert uid_line.split()[1:] == ["65534"] * 4
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    assert process.returncode == STOPPED_BY_SIGTERM, log_path.read_text()


def test_a_session_that_opens_during_the_drain_is_told_too() -> None:
    """A client whose session opens after the drain began (a handshake under way) is told."""
    clock = Clock()
    server, monitor, writer, pool = _server(clock)
    server.startService()
    first = RecordingSession(monitor, clock)
    slow = RecordingSession(monitor, clock)
    slow.shut_down = lambda message: None  # type: ignore[method-assign]  # stays a while
    server.stopService()
    late = RecordingSession(monitor, clock)
    clock.advance(0.01)
    assert first.told_at == 0 and late.told_at == 0.01
    monitor.discard(slow)
    clock.advance(0.01)
    writer.stopped.callback(None)
    assert pool.closed
