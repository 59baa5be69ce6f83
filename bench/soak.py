"""Churn soak: clients that connect, subscribe, take queue messages and leave unacked.

    python bench/soak.py                 # 10 minutes, 40 clients
    python bench/soak.py --minutes 3     # a shorter run

Starts a real ``twistd -n stomp-chat`` on 127.0.0.1 (fresh SQLite database in
a temporary directory) and runs ``--clients`` client threads against it for
``--minutes``. Each client, again and again, opens a session alternately over
WebSocket and raw TCP, subscribes to a chat room and, in ``client-individual``
mode, to one of a few shared ``/queue/`` destinations, sends two messages to
that queue and one chat message, waits for the chat message's RECEIPT and
leaves without acknowledging anything (half with DISCONNECT, half by
dropping the socket). Unacked queue messages are redelivered to the next
client of that queue, so without a redelivery limit they circulate forever.

Every minute it prints the server's RSS (from /proc) and the sessions
completed per second; at the end, one JSON line with every minute's figures.
The test suite never runs it; it only talks to 127.0.0.1 and stops after
``--minutes``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_PORT_LINE = re.compile(r"\b(StompFactory|Site) starting on (\d+)")
#: Longest any one read or connect may take before the session counts as failed.
SOCKET_TIMEOUT = 10.0


def start_server(workdir: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], int, int]:
    """A stomp-chat process on free loopback ports: the process, its STOMP and HTTP ports."""
    log = workdir / "server.log"
    command = [
        str(Path(sys.executable).parent / "twistd"), "--nodaemon", "--pidfile=",
        f"--logfile={log}", "stomp-chat",
        "--stomp=tcp:0:interface=127.0.0.1", "--http=tcp:0:interface=127.0.0.1",
        f"--database=sqlite:///{workdir}/soak.db", *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(command, env=env, cwd=workdir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ports = dict(_PORT_LINE.findall(log.read_text() if log.exists() else ""))
        if "StompFactory" in ports and "Site" in ports:
            return process, int(ports["StompFactory"]), int(ports["Site"])
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.terminate()
    raise RuntimeError(f"the server did not start:\n{log.read_text() if log.exists() else ''}")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# -- a minimal blocking STOMP client over TCP or WebSocket ----------------------


def frame(command: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [command, *(f"{name}:{value}" for name, value in headers.items()), "", ""]
    return "\n".join(lines).encode() + body + b"\x00"


class Connection:
    """One STOMP connection: write whole frames, read frames up to a RECEIPT."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data

    def frames(self) -> list[bytes]:
        """Read at least once; return the whole frames now buffered (heart-beats dropped)."""
        self.buffer += self.recv()
        *whole, self.buffer = self.buffer.split(b"\x00")
        return [f.lstrip(b"\r\n") for f in whole if f.strip(b"\r\n")]

    def wait_for(self, command: bytes, receipt: str | None = None) -> int:
        """Read until ``command`` (with ``receipt-id``) arrives; count the MESSAGEs seen."""
        messages = 0
        while True:
            for data in self.frames():
                if data.startswith(b"ERROR"):
                    raise ConnectionError(data[:200].decode(errors="replace"))
                if data.startswith(b"MESSAGE"):
                    messages += 1
                if data.startswith(command) and (
                    receipt is None or f"\nreceipt-id:{receipt}\n".encode() in data + b"\n"
                ):
                    return messages

    def close(self) -> None:
        self.sock.close()


class WebSocketConnection(Connection):
    """The same over WebSocket: each STOMP frame one masked text message."""

    def __init__(self, sock: socket.socket, port: int) -> None:
        super().__init__(sock)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v12.stomp\r\n\r\n"
            ).encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += Connection.recv(self)
        head, _, rest = response.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head[:200].decode(errors="replace"))
        self.raw = rest
        self.sock = sock

    def send(self, data: bytes) -> None:
        mask = os.urandom(4)
        length = len(data)
        if length < 126:
            header = struct.pack("!BB", 0x81, 0x80 | length)
        elif length < 65536:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(header + mask + masked)

    def recv(self) -> bytes:
        """The payload of the next data message (server messages are unmasked)."""
        while True:
            while len(self.raw) < 2:
                self.raw += Connection.recv(self)
            opcode, length = self.raw[0] & 0x0F, self.raw[1] & 0x7F
            offset = 2
            if length == 126:
                offset = 4
            elif length == 127:
                offset = 10
            while len(self.raw) < offset:
                self.raw += Connection.recv(self)
            if length == 126:
                length = struct.unpack("!H", self.raw[2:4])[0]
            elif length == 127:
                length = struct.unpack("!Q", self.raw[2:10])[0]
            while len(self.raw) < offset + length:
                self.raw += Connection.recv(self)
            payload = self.raw[offset : offset + length]
            self.raw = self.raw[offset + length :]
            if opcode == 0x8:
                raise ConnectionError("the server closed the WebSocket")
            if opcode in (0x1, 0x2, 0x0):
                return payload


# -- the churn ---------------------------------------------------------------------


@dataclass
class Counters:
    """What the client threads did, read by the reporter every minute."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sessions: int = 0
    errors: int = 0
    messages: int = 0
    last_error: str = ""

    def add(self, sessions: int = 0, errors: int = 0, messages: int = 0, error: str = "") -> None:
        with self.lock:
            self.sessions += sessions
            self.errors += errors
            self.messages += messages
            if error:
                self.last_error = error


def one_session(index: int, turn: int, stomp_port: int, http_port: int, args: argparse.Namespace,
                counters: Counters) -> None:
    over_websocket = (index + turn) % 2 == 0
    port = http_port if over_websocket else stomp_port
    sock = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
    conn: Connection = WebSocketConnection(sock, port) if over_websocket else Connection(sock)
    try:
        room = index % args.rooms + 1
        queue = f"/queue/soak-{index % args.queues}"
        conn.send(frame("CONNECT", {"accept-version": "1.2", "host": "127.0.0.1",
                                    "heart-beat": "0,0"}))
        conn.wait_for(b"CONNECTED")
        conn.send(frame("SUBSCRIBE", {"id": "room", "destination": f"/topic/chat/room/{room}"}))
        conn.send(frame("SUBSCRIBE", {"id": "work", "destination": queue,
                                      "ack": "client-individual"}))
        for n in range(2):
            conn.send(frame("SEND", {"destination": queue}, f"job {index}/{turn}/{n}".encode()))
        talk = {"type": "TALK", "roomId": room, "senderId": index + 1,
                "detailMessage": f"soak {turn}"}
        conn.send(frame("SEND", {"destination": "/app/message", "receipt": "talk",
                                 "content-type": "application/json"},
                        json.dumps(talk).encode()))
        messages = conn.wait_for(b"RECEIPT", "talk")
        if turn % 2 == 0:
            conn.send(frame("DISCONNECT", {"receipt": "bye"}))
            messages += conn.wait_for(b"RECEIPT", "bye")
        counters.add(sessions=1, messages=messages)
    finally:
        conn.close()


def client(index: int, stop_at: float, stomp_port: int, http_port: int,
           args: argparse.Namespace, counters: Counters) -> None:
    turn = 0
    while time.monotonic() < stop_at:
        try:
            one_session(index, turn, stomp_port, http_port, args, counters)
        except (OSError, ConnectionError) as error:
            counters.add(errors=1, error=f"{type(error).__name__}: {error}")
            time.sleep(0.1)
        turn += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--queues", type=int, default=10)
    parser.add_argument("--interval", type=float, default=60.0,
                        help="seconds between report lines")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="an extra server option, e.g. --server-arg=--max-redeliveries=3")
    args = parser.parse_args()
    if not 1 <= args.clients <= 200:
        sys.exit("--clients must be between 1 and 200")
    if not 0 < args.minutes <= 60:
        sys.exit("--minutes must be more than 0 and at most 60")
    workdir = Path(tempfile.mkdtemp(prefix="stomp-chat-soak-"))
    server, stomp_port, http_port = start_server(workdir, args.server_arg)
    counters = Counters()
    rows = []
    try:
        started = time.monotonic()
        stop_at = started + args.minutes * 60
        threads = [
            threading.Thread(target=client, args=(i, stop_at, stomp_port, http_port, args,
                                                  counters), daemon=True)
            for i in range(args.clients)
        ]
        rss_start = rss_bytes(server.pid)
        print(f"server pid {server.pid}, RSS at start {rss_start / 2**20:.1f} MiB; "
              f"{args.clients} clients for {args.minutes} min", flush=True)
        for thread in threads:
            thread.start()
        last_sessions, last_time = 0, started
        while (now := time.monotonic()) < stop_at:
            time.sleep(min(args.interval, stop_at - now))
            now = time.monotonic()
            with counters.lock:
                sessions, errors = counters.sessions, counters.errors
            row = {
                "minute": round((now - started) / 60, 2),
                "rss_mib": round(rss_bytes(server.pid) / 2**20, 1),
                "sessions_per_s": round((sessions - last_sessions) / (now - last_time), 1),
                "sessions": sessions,
                "errors": errors,
            }
            rows.append(row)
            last_sessions, last_time = sessions, now
            print(
                f"{row['minute']:6.2f} min  RSS {row['rss_mib']:7.1f} MiB  "
                f"{row['sessions_per_s']:7.1f} sessions/s  total {sessions}  errors {errors}",
                flush=True,
            )
        for thread in threads:
            thread.join(SOCKET_TIMEOUT * 3)
        print(json.dumps({
            "rss_start_mib": round(rss_start / 2**20, 1),
            "rows": rows,
            "messages_received": counters.messages,
            "last_error": counters.last_error,
        }))
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
