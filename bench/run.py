"""Runs the STOMP fan-out benchmark against stomp-chat, RabbitMQ Web-STOMP and a bare floor.

    python bench/run.py            # all scenarios, 3 repeats, interleaved (9-13 minutes)
    python bench/run.py --quick    # 1 repeat, shorter windows, 2,000 idle connections

The load comes from ``bench/gen`` (stompgen, a single-threaded epoll client in
Rust with no dependencies), built here with ``cargo build --release --offline``.
It reads the server's CPU time and RSS from /proc at the edges of each
measured window and its own CPU time, and prints one JSON result per run.

Targets (all on 127.0.0.1):
  rabbitmq        RabbitMQ Web-STOMP, ws://127.0.0.1:15674/ws, /topic/chat.room.N, guest/guest;
                  the beam.smp process is found in /proc.  Raw TCP STOMP on whichever of
                  61613/61623 beam.smp listens on.
  floor           bench/bare_floor.py: bare Twisted + Autobahn fan-out (Autobahn sendMessage).
  floor-direct    the same, writing WebSocket frames straight to the transport.
  stomp-chat      ``python -m twisted stomp-chat`` started here (fresh process and SQLite
                  database per run), raw path: SEND/SUBSCRIBE /topic/chat/room/N.
  stomp-chat-app  the same server, the chat path: SEND /app/message with a JSON TALK body,
                  SUBSCRIBE /topic/chat/room/N (persisted, broadcast as JSON).
  stomp-chat-app-nometrics
                  the chat path with ``--metrics off``: not run by default; with
                  ``--targets stomp-chat-app,stomp-chat-app-nometrics --metrics-scrape 1``
                  the two runs side by side give what metrics cost per delivery
                  (the metrics-on server is scraped every second while measured).
  stomp-chat-app-baseline
                  the chat path served by the code in ``--baseline-repo`` (e.g. a
                  ``git worktree`` of an earlier commit): not run by default; beside
                  stomp-chat-app it shows a change's cost on the chat path in one run.

Scenarios:
  fanout      10 rooms x 10 subscribers, 10 publishers, closed loop, <= 200 messages in
              flight, 64-byte bodies, over WebSocket.  Max throughput and its latency.
  latency     the same connections, fixed 2,000 messages/s in (20,000 deliveries/s).
  fanout-tcp  fanout over raw STOMP/TCP.
  idle        N (10,000) idle WebSocket connections with heart-beat 10000,10000: server
              memory per connection, setup CPU per connection, CPU while idle.

Results: a markdown table (stdout and bench/results/<stamp>.md) and every run's raw
figures in bench/results/<stamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
GEN_DIR = BENCH / "gen"
GEN_BIN = GEN_DIR / "target" / "release" / "stompgen"
RESULTS = BENCH / "results"

ALL_TARGETS = ["rabbitmq", "floor", "floor-direct", "stomp-chat", "stomp-chat-app"]
#: Targets only run when named in --targets.
EXTRA_TARGETS = ["stomp-chat-app-nometrics", "stomp-chat-app-baseline"]
ALL_SCENARIOS = ["fanout", "latency", "fanout-tcp", "idle"]
# Which targets take part in which scenario.
SCENARIO_TARGETS = {
    "fanout": ["rabbitmq", "floor", "floor-direct", "stomp-chat", "stomp-chat-app",
               "stomp-chat-app-nometrics", "stomp-chat-app-baseline"],
    "latency": ["rabbitmq", "floor-direct", "stomp-chat", "stomp-chat-app"],
    "fanout-tcp": ["rabbitmq", "floor", "stomp-chat", "stomp-chat-app",
                   "stomp-chat-app-nometrics", "stomp-chat-app-baseline"],
    "idle": ["rabbitmq", "floor-direct", "stomp-chat"],
}
LABELS = {
    "rabbitmq": "RabbitMQ Web-STOMP",
    "floor": "floor (Autobahn sendMessage)",
    "floor-direct": "floor (direct frames)",
    "stomp-chat": "stomp-chat raw topic",
    "stomp-chat-app": "stomp-chat /app/message",
    "stomp-chat-app-nometrics": "stomp-chat /app/message, --metrics off",
    "stomp-chat-app-baseline": "stomp-chat /app/message, --baseline-repo code",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ machine


def cpu_busy_s() -> float:
    with open("/proc/stat") as f:
        v = [float(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def machine_load(seconds: float = 1.0) -> float:
    """Busy cores of the whole machine over `seconds`."""
    a = cpu_busy_s()
    time.sleep(seconds)
    return (cpu_busy_s() - a) / seconds


def wait_quiet(threshold: float, max_wait: float) -> float:
    """Waits (bounded) until the machine is nearly idle; returns the last load seen."""
    deadline = time.monotonic() + max_wait
    load = machine_load(0.7)
    warned = False
    while load > threshold and time.monotonic() < deadline:
        if not warned:
            log(f"  machine busy ({load:.2f} cores in use), waiting up to {max_wait:.0f}s")
            warned = True
        load = machine_load(1.0)
    return load


def open_files_limit(pid: int | str) -> int:
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return int(line.split()[3])
    except (OSError, ValueError):
        pass
    return 0


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def find_pid(comm: str) -> int | None:
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == comm:
                    return int(d.name)
            except OSError:
                continue
    return None


def listening_ports(pid: int) -> set[int]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[3] == "0A" and parts[9] in inodes:
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cmd_out(cmd: list[str], timeout: float = 20) -> str:
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_facts() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    versions: dict[str, str] = {"python": platform.python_version()}
    for mod in ("twisted", "autobahn", "txaio"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - best effort
            versions[mod] = "?"
    rmq = cmd_out(["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"])
    erl = cmd_out(["dpkg-query", "-W", "-f=${Version}", "erlang-base"])
    versions["rabbitmq-server"] = rmq or "?"
    versions["erlang-base"] = erl or "?"
    versions["rustc"] = cmd_out(["rustc", "--version"])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "versions": versions,
    }


# ------------------------------------------------------------------ generator


def build_generator(skip: bool) -> None:
    if skip and GEN_BIN.exists():
        return
    if shutil.which("cargo") is None:
        if GEN_BIN.exists():
            log("cargo not found; using the existing stompgen binary")
            return
        sys.exit("cargo is needed to build bench/gen (Rust, no dependencies)")
    log("building bench/gen (cargo build --release --offline)")
    subprocess.run(
        ["cargo", "build", "--release", "--offline", "--quiet"],
        cwd=GEN_DIR,
        check=True,
        timeout=300,
    )


def run_generator(args: list[str], timeout: float) -> dict[str, Any]:
    """Runs stompgen; returns its result line (plus the events it printed)."""
    proc = subprocess.Popen(
        [str(GEN_BIN), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return {"failed": f"generator timed out after {timeout:.0f}s", "stderr": err[-2000:]}
    result: dict[str, Any] = {}
    events = []
    for line in out.splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if d.get("event") == "result":
            result = d
        else:
            events.append(d)
    if not result:
        return {"failed": f"no result (exit {proc.returncode})", "stderr": err[-2000:]}
    if err.strip():
        result["stderr"] = err.strip()[-2000:]
    result["events"] = events
    return result


# ------------------------------------------------------------------ targets


@dataclass
class Server:
    """A server under test: where to connect and which pid to watch."""

    name: str
    pid: int
    ws_port: int
    ws_path: str
    tcp_port: int | None
    dest: str
    send_dest: str = ""
    body: str = "raw"
    vhost: str = "/"
    login: str = ""
    passcode: str = ""
    proc: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None
    notes: list[str] = field(default_factory=list)
    #: Extra generator options for this server (e.g. ``--sender-id none``).
    gen_extra: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def wait_ports(proc: subprocess.Popen[bytes], ports: list[int], timeout: float, log_file: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_file.read_text(errors="replace")[-3000:] if log_file.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{tail}")
        if all(port_open(p) for p in ports):
            return
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not listen on {ports} within {timeout}s")


class MetricsScraper:
    """Reads /metrics every ``interval`` seconds in a thread, as Prometheus would."""

    def __init__(self, url: str, interval: float) -> None:
        import threading

        self.url = url
        self.interval = interval
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @classmethod
    def start(cls, server: Server, interval: float) -> MetricsScraper | None:
        if interval <= 0 or not server.name.startswith("stomp-chat"):
            return None
        if server.name.endswith("-nometrics"):
            return None
        scraper = cls(f"http://127.0.0.1:{server.ws_port}/metrics", interval)
        scraper._thread.start()
        return scraper

    def _run(self) -> None:
        import urllib.request

        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError), urllib.request.urlopen(self.url, timeout=5) as r:
                r.read()
                self.scrapes += 1

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        return self.scrapes


class Targets:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.sc_ports = self._pick_ports(opts.stomp_chat_http_port, opts.stomp_chat_stomp_port)
        self.floor_ports = self._pick_ports(opts.floor_ws_port, opts.floor_tcp_port)
        self.rabbit_checked = False
        self.rabbit: Server | None = None
        self.rabbit_problem = ""

    @staticmethod
    def _pick_ports(a: int, b: int) -> tuple[int, int]:
        if port_open(a):
            log(f"port {a} is taken; using a free one")
            a = free_port()
        if port_open(b):
            log(f"port {b} is taken; using a free one")
            b = free_port()
        return a, b

    def rabbitmq(self) -> Server | None:
        if self.rabbit_checked:
            return self.rabbit
        self.rabbit_checked = True
        pid = find_pid("beam.smp")
        if pid is None:
            self.rabbit_problem = "no beam.smp process: is RabbitMQ running?"
            log("RabbitMQ: " + self.rabbit_problem)
            return None
        ports = listening_ports(pid)
        ws = self.opts.rabbit_ws_port
        if ws not in ports:
            self.rabbit_problem = (
                f"beam.smp does not listen on {ws}: "
                "run `rabbitmq-plugins enable rabbitmq_web_stomp`"
            )
            log("RabbitMQ: " + self.rabbit_problem)
            return None
        tcp = next((p for p in (61613, 61623) if p in ports), None)
        self.rabbit = Server(
            name="rabbitmq",
            pid=pid,
            ws_port=ws,
            ws_path="/ws",
            tcp_port=tcp,
            dest="/topic/chat.room.{room}",
            vhost="/",
            login="guest",
            passcode="guest",
        )
        return self.rabbit

    def start(self, name: str) -> Server | None:
        if name == "rabbitmq":
            return self.rabbitmq()
        workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        log_file = workdir / "server.log"
        if name.startswith("floor"):
            ws, tcp = self.floor_ports
            cmd = [
                sys.executable,
                str(BENCH / "bare_floor.py"),
                "--ws-port",
                str(ws),
                "--tcp-port",
                str(tcp),
            ]
            if name == "floor-direct":
                cmd.append("--direct")
            server = Server(name, 0, ws, "/", tcp, "/topic/chat/room/{room}")
        else:
            ws, tcp = self.sc_ports
            cmd = [
                sys.executable,
                "-m",
                "twisted",
                "stomp-chat",
                "--stomp",
                f"tcp:{tcp}:interface=127.0.0.1",
                "--http",
                f"tcp:{ws}:interface=127.0.0.1",
                "--database",
                f"sqlite:///{workdir}/bench.db",
                *self.opts.stomp_chat_arg,
            ]
            if name.endswith("-nometrics"):
                cmd += ["--metrics", "off"]
            server = Server(name, 0, ws, "/ws/chat", tcp, "/topic/chat/room/{room}")
            server.vhost = "127.0.0.1"
            if name.startswith("stomp-chat-app"):
                server.send_dest = "/app/message"
                server.body = "chat"
        env = dict(os.environ)
        code = REPO
        if name.endswith("-baseline"):
            if not self.opts.baseline_repo:
                log(f"{name}: needs --baseline-repo")
                return None
            code = Path(self.opts.baseline_repo).resolve()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH", "")]))
        with open(log_file, "wb") as lf:
            proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=lf, stderr=subprocess.STDOUT)
        server.proc = proc
        server.pid = proc.pid
        server.workdir = workdir
        try:
            wait_ports(proc, [ws, tcp], 30, log_file)
        except RuntimeError as e:
            log(f"{name}: could not start: {e}")
            server.cleanup()
            return None
        return server


# ------------------------------------------------------------------ scenarios


def gen_args(server: Server, transport: str) -> list[str]:
    a = ["--transport", transport, "--host", "127.0.0.1", "--server-pid", str(server.pid)]
    if transport == "ws":
        a += ["--port", str(server.ws_port), "--path", server.ws_path]
    else:
        a += ["--port", str(server.tcp_port)]
    a += ["--vhost", server.vhost, "--login", server.login, "--passcode", server.passcode]
    return a + server.gen_extra


def run_one(scenario: str, server: Server, opts: argparse.Namespace) -> dict[str, Any]:
    if scenario == "idle":
        n = opts.idle_conns
        limit = open_files_limit(server.pid)
        note = ""
        if limit and limit < n + 200:
            n2 = max(100, limit - 200)
            note = (
                f"server open-files limit is {limit}: ran {n2} connections instead of {n} "
                "(raise it: for RabbitMQ `ulimit -n 20000` in /etc/default/rabbitmq-server, "
                "then restart it)"
            )
            log("  " + note)
            n = n2
        mine = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if mine < n + 200:
            n = max(100, mine - 200)
            note += f" generator open-files limit is {mine}: ran {n} connections"
        args = gen_args(server, "ws") + [
            "--mode",
            "idle",
            "--idle-conns",
            str(n),
            "--heartbeat",
            "10000,10000",
            "--hold",
            str(opts.idle_hold),
            "--setup-timeout",
            "150",
            "--hard-limit",
            str(150 + opts.idle_hold + 30),
        ]
        r = run_generator(args, timeout=150 + opts.idle_hold + 60)
        if note:
            r["note"] = note.strip()
        return r
    transport = "tcp" if scenario == "fanout-tcp" else "ws"
    if transport == "tcp" and not server.tcp_port:
        return {"failed": "no TCP STOMP port"}
    args = gen_args(server, transport) + [
        "--mode",
        "load",
        "--rooms",
        "10",
        "--subs",
        "10",
        "--pubs",
        "10",
        "--body-size",
        "64",
        "--dest",
        server.dest,
        "--body",
        server.body,
        "--warmup",
        str(opts.warmup),
        "--duration",
        str(opts.duration),
        "--drain",
        "15",
        "--hard-limit",
        str(opts.warmup + opts.duration + 80),
    ]
    if server.send_dest:
        args += ["--send-dest", server.send_dest]
    if scenario == "latency":
        args += ["--rate", str(opts.rate), "--inflight", "0"]
    else:
        args += ["--inflight", str(opts.inflight)]
    return run_generator(args, timeout=opts.warmup + opts.duration + 100)


STAMP = re.compile(r"#P\d+:S\d+:T\d+#")
CHAT_FIELDS = ("type", "roomId", "detailMessage", "senderId", "messageId", "seq", "createdAt")


def check_stomp_chat(server: Server, r: dict[str, Any]) -> None:
    """After the server stopped: rows persisted, and the shape of a broadcast message."""
    db = (server.workdir or Path("/nonexistent")) / "bench.db"
    if db.exists():
        import sqlite3

        try:
            with contextlib.closing(sqlite3.connect(db)) as con:
                rows = con.execute("select room_id, sender_id, type, text from messages").fetchall()
        except sqlite3.Error as e:
            r["persisted_error"] = str(e)
            rows = []
        else:
            r["persisted"] = len(rows)
            stamps = [m.group(0) for m in (STAMP.search(row[3]) for row in rows) if m]
            r["persisted_stamped_distinct"] = len(set(stamps))
            dups = len(stamps) - len(set(stamps))
            foreign = [row for row in rows if not STAMP.search(row[3])]
            if dups:
                r["persist_problem_dups"] = f"{dups} stamped messages were saved more than once"
            if foreign:
                r["persisted_foreign"] = len(foreign)
                r["persisted_foreign_sample"] = [list(x[:3]) + [x[3][:80]] for x in foreign[:5]]
    sample = r.get("sample_message", "")
    if server.body == "chat" and sample:
        body = sample.split("\n\n", 1)[-1].rstrip("\0")
        try:
            msg = json.loads(body)
        except ValueError:
            r["broadcast_problem"] = f"broadcast body is not JSON: {body[:200]!r}"
            return
        missing = [f for f in CHAT_FIELDS if f not in msg]
        if missing:
            r["broadcast_problem"] = f"broadcast lacks {missing}: {body[:300]}"
    if server.body == "chat" and "persisted" in r and r["persisted"] != r.get("sent"):
        r["persist_problem"] = (
            f"sent {r.get('sent')} chat messages, {r['persisted']} rows saved "
            f"({r['persisted_stamped_distinct']} distinct stamped, "
            f"{r.get('persisted_foreign', 0)} not from the generator: "
            f"{r.get('persisted_foreign_sample', [])})"
        )


# ------------------------------------------------------------------ report


def med(runs: list[dict[str, Any]], key: str) -> float | None:
    vals = []
    for r in runs:
        v: Any = r
        for part in key.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        if isinstance(v, int | float) and v >= 0:
            vals.append(float(v))
    return statistics.median(vals) if vals else None


def total(runs: list[dict[str, Any]], key: str) -> int | None:
    vals = [r.get(key) for r in runs if isinstance(r.get(key), int | float)]
    return int(sum(vals)) if vals else None


def fmt(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "–"
    if abs(v) >= 10000:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}×"


LOAD_ROWS = [
    ("deliveries/s", "deliveries_per_s", 0, 1),
    ("messages in/s", "msgs_in_per_s", 0, 1),
    ("latency p50 (ms)", "lat_ms.p50", 2, 1),
    ("latency p90 (ms)", "lat_ms.p90", 2, 1),
    ("latency p99 (ms)", "lat_ms.p99", 2, 1),
    ("latency max (ms)", "lat_ms.max", 2, 1),
    ("server CPU-s per 1,000 deliveries", "server_cpu_s_per_1k", 4, 1),
    ("server CPU µs per delivery", "server_cpu_us_per_delivery", 1, 1),
    ("server cores busy", "server_cores", 2, 1),
    ("server RSS at end (MiB)", "server_rss_mib", 1, 1),
    ("server RSS growth in run (MiB)", "server_rss_growth_mib", 1, 1),
    ("generator CPU µs per delivery", "gen_cpu_us_per_delivery", 2, 1),
    ("other processes' cores busy", "other_cores", 2, 1),
]
LOAD_TOTALS = [
    ("lost: undelivered after a 15 s drain (sum)", "lost"),
    ("duplicated (sum)", "duplicated"),
    ("reordered (sum)", "reordered"),
    ("ERROR frames", "errors"),
    ("disconnects", "disconnects"),
    ("messages persisted (stomp-chat, sum)", "persisted"),
    ("messages sent (sum)", "sent"),
]
IDLE_ROWS = [
    ("connections", "connected", 0),
    ("setup wall time (s)", "setup_s", 1),
    ("server memory per connection (KiB)", "server_kb_per_conn", 1),
    ("server setup CPU per connection (µs)", "server_setup_cpu_us_per_conn", 0),
    ("server cores busy while idle", "server_hold_cores", 3),
    ("server RSS before (MiB)", "server_rss_mib_before", 1),
    ("server RSS with connections (MiB)", "server_rss_mib_hold_end", 1),
    ("generator setup CPU per connection (µs)", "gen_setup_cpu_us_per_conn", 0),
    ("other processes' cores busy (hold)", "other_cores_hold", 2),
]
IDLE_TOTALS = [
    ("connections without a server heart-beat", "no_server_hb"),
    ("server heart-beats late (> 2x interval)", "server_hb_late"),
    ("disconnects while idle", "disconnects_during_hold"),
    ("connect failures", "connect_failures"),
]


def derive(r: dict[str, Any]) -> dict[str, Any]:
    if "server_cpu_us_per_delivery" in r:
        r["server_cpu_s_per_1k"] = r["server_cpu_us_per_delivery"] / 1000.0
        r["server_rss_mib"] = r["server_rss_kb"] / 1024.0
        r["server_rss_growth_mib"] = (r["server_rss_kb"] - r["server_rss_kb_before"]) / 1024.0
    if r.get("mode") == "idle":
        r["server_rss_mib_before"] = r["server_rss_kb_before"] / 1024.0
        r["server_rss_mib_hold_end"] = r["server_rss_kb_hold_end"] / 1024.0
        n = max(1, r["connected"])
        r["gen_setup_cpu_us_per_conn"] = r["gen_setup_cpu_s"] * 1e6 / n
        r["no_server_hb"] = r["connected_at_end"] - r["conns_with_server_hb"]
    return r


SCENARIO_TITLES = {
    "fanout": "Fan-out throughput over WebSocket: 10 rooms x 10 subscribers, 10 publishers, "
    "closed loop (<= {inflight} in flight), 64-byte bodies",
    "latency": "Latency at a fixed {rate:,} messages/s in ({deliv:,} deliveries/s) over WebSocket",
    "fanout-tcp": "Fan-out throughput over raw STOMP/TCP (same shape as fan-out)",
    "idle": "{idle:,} idle WebSocket connections, heart-beat 10000,10000, held {hold:.0f}s",
}


def report(results: dict[str, dict[str, list[dict[str, Any]]]], meta: dict[str, Any]) -> str:
    o = meta["options"]
    lines = [
        f"# stomp-chat benchmark, {meta['started']}",
        "",
        f"Machine: {meta['machine']['nproc']} cores, {meta['machine']['cpu_model']}, "
        f"{meta['machine']['mem_gib']} GiB; "
        + ", ".join(f"{k} {v}" for k, v in meta["machine"]["versions"].items()),
        "",
        f"Repeats: {o['repeats']} (medians shown; loss/dup/reorder are sums over repeats); "
        f"window {o['warmup']}s warm-up + {o['duration']}s measured.",
        "",
    ]
    for scen, per_target in results.items():
        title = SCENARIO_TITLES[scen].format(
            inflight=o["inflight"],
            rate=int(o["rate"]),
            deliv=int(o["rate"] * 10),
            idle=o["idle_conns"],
            hold=o["idle_hold"],
        )
        lines += [f"## {scen}: {title}", ""]
        names = [t for t in SCENARIO_TARGETS[scen] if t in per_target]
        ok = {t: [derive(r) for r in per_target[t] if "failed" not in r] for t in names}
        ratio_cols = []
        if "rabbitmq" in ok:
            ratio_cols += [(t, "rabbitmq") for t in ("stomp-chat", "stomp-chat-app") if t in ok]
        floor = "floor-direct" if "floor-direct" in ok else ("floor" if "floor" in ok else None)
        if floor and "stomp-chat" in ok:
            ratio_cols.append(("stomp-chat", floor))
        header = ["metric"] + [LABELS[t] for t in names]
        header += [f"{a} / {'RabbitMQ' if b == 'rabbitmq' else b}" for a, b in ratio_cols]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        if scen == "idle":
            rows = [(label, key, d, 1) for label, key, d in IDLE_ROWS]
            totals = IDLE_TOTALS
        else:
            rows = LOAD_ROWS
            totals = LOAD_TOTALS
        for label, key, digits, _ in rows:
            vals = {t: med(ok[t], key) for t in names}
            cells = [fmt(vals[t], digits) for t in names]
            cells += [ratio(vals[a], vals[b]) for a, b in ratio_cols]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        for label, key in totals:
            cells = [fmt(total(ok[t], key), 0) for t in names] + [""] * len(ratio_cols)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        runs = [f"{len(ok[t])}/{len(per_target[t])}" for t in names]
        lines.append("| runs ok | " + " | ".join(runs) + " |" + " |" * len(ratio_cols))
        lines.append("")
        for t in names:
            for r in per_target[t]:
                if "failed" in r:
                    err = r.get("stderr", "")[:300]
                    lines.append(f"- {LABELS[t]}: run failed: {r['failed']} {err}")
                if r.get("note"):
                    lines.append(f"- {LABELS[t]}: {r['note']}")
                for k in (
                    "broadcast_problem",
                    "persist_problem",
                    "persist_problem_dups",
                    "persisted_error",
                ):
                    if r.get(k):
                        lines.append(f"- {LABELS[t]}: {r[k]}")
                if r.get("first_error"):
                    lines.append(f"- {LABELS[t]}: first ERROR frame: {r['first_error'][:300]}")
                if r.get("first_connect_failure"):
                    lines.append(
                        f"- {LABELS[t]}: connect failure: {r['first_connect_failure'][:200]}"
                    )
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="stomp-chat vs RabbitMQ Web-STOMP benchmark")
    ap.add_argument("--quick", action="store_true", help="1 repeat, short windows, 2,000 idle")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--targets", default=",".join(ALL_TARGETS))
    ap.add_argument("--scenarios", default=",".join(ALL_SCENARIOS))
    ap.add_argument("--warmup", type=float, default=None)
    ap.add_argument("--duration", type=float, default=None)
    ap.add_argument("--inflight", type=int, default=200)
    ap.add_argument("--rate", type=float, default=2000.0, help="latency scenario, messages/s in")
    ap.add_argument("--idle-conns", type=int, default=None)
    ap.add_argument("--idle-hold", type=float, default=11.0)
    ap.add_argument("--rabbit-ws-port", type=int, default=15674)
    ap.add_argument("--stomp-chat-http-port", type=int, default=8080)
    ap.add_argument("--stomp-chat-stomp-port", type=int, default=61613)
    ap.add_argument(
        "--stomp-chat-arg",
        action="append",
        default=[],
        help="extra option for the stomp-chat command line (repeatable)",
    )
    ap.add_argument("--floor-ws-port", type=int, default=8090)
    ap.add_argument("--floor-tcp-port", type=int, default=61690)
    ap.add_argument("--quiet-threshold", type=float, default=0.3, help="cores busy by others")
    ap.add_argument("--quiet-wait", type=float, default=3.0, help="max seconds to wait per run")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument(
        "--metrics-scrape",
        type=float,
        default=0.0,
        help="scrape a stomp-chat server's /metrics every N seconds during each run (0: never)",
    )
    ap.add_argument(
        "--baseline-repo",
        default=None,
        help="a checkout whose stomp_chat serves the stomp-chat-app-baseline target",
    )
    ap.add_argument("--out", default=None, help="results file stem (default: a timestamp)")
    opts = ap.parse_args(argv)
    if opts.repeats is None:
        opts.repeats = 1 if opts.quick else 3
    if opts.warmup is None:
        opts.warmup = 1.5 if opts.quick else 2.0
    if opts.duration is None:
        opts.duration = 3.0 if opts.quick else 4.0
    if opts.idle_conns is None:
        opts.idle_conns = 2000 if opts.quick else 10000
    targets = [t for t in opts.targets.split(",") if t]
    scenarios = [s for s in opts.scenarios.split(",") if s]
    for t in targets:
        if t not in ALL_TARGETS + EXTRA_TARGETS:
            ap.error(f"unknown target {t}")
    for s in scenarios:
        if s not in ALL_SCENARIOS:
            ap.error(f"unknown scenario {s}")

    nofile = raise_nofile()
    if nofile < opts.idle_conns + 200 and "idle" in scenarios:
        log(
            f"this process may open only {nofile} files; the idle scenario needs "
            f"{opts.idle_conns + 200}: raise the hard limit (ulimit -Hn)"
        )
    build_generator(opts.no_build)
    started = dt.datetime.now()
    stamp = opts.out or started.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    meta = {
        "started": started.strftime("%Y-%m-%d %H:%M"),
        "machine": machine_facts(),
        "options": vars(opts),
    }
    tg = Targets(opts)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {s: {} for s in scenarios}
    t_start = time.monotonic()
    for rep in range(opts.repeats):
        for scen in scenarios:
            for name in SCENARIO_TARGETS[scen]:
                if name not in targets:
                    continue
                load = wait_quiet(opts.quiet_threshold, opts.quiet_wait)
                server = tg.start(name)
                if server is None:
                    problem = tg.rabbit_problem if name == "rabbitmq" else "server did not start"
                    results[scen].setdefault(name, []).append({"failed": problem})
                    continue
                try:
                    if server.proc is not None:
                        time.sleep(0.5)  # let a fresh server finish starting up
                    log(f"repeat {rep + 1}/{opts.repeats} {scen:<10} {name}")
                    scraper = MetricsScraper.start(server, opts.metrics_scrape)
                    try:
                        r = run_one(scen, server, opts)
                    finally:
                        if scraper is not None:
                            r_scrapes = scraper.stop()
                    if scraper is not None:
                        r["metrics_scrapes"] = r_scrapes
                    server.stop()
                    if name.startswith("stomp-chat") and "failed" not in r:
                        check_stomp_chat(server, r)
                finally:
                    server.cleanup()
                r["repeat"] = rep
                r["load_before"] = load
                results[scen].setdefault(name, []).append(r)
                if "failed" in r:
                    log(f"  failed: {r['failed']} {r.get('stderr', '')[:500]}")
                elif scen == "idle":
                    log(
                        f"  {r['connected']} conns, {r['server_kb_per_conn']:.1f} KiB/conn, "
                        f"setup {r['server_setup_cpu_us_per_conn']:.0f} µs/conn"
                    )
                else:
                    log(
                        f"  {r['deliveries_per_s']:,.0f} deliveries/s, p99 "
                        f"{r['lat_ms']['p99']:.1f} ms, server {r['server_cpu_us_per_delivery']:.1f}"
                        f" µs/delivery, gen {r['gen_cpu_us_per_delivery']:.2f} µs/delivery, "
                        f"lost {r['lost']} dup {r['duplicated']} reord {r['reordered']}"
                    )
    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    md = report(results, meta)
    md += f"\nTotal time: {meta['elapsed_s']:.0f}s.\n"
    (RESULTS / f"{stamp}.md").write_text(md)
    (RESULTS / f"{stamp}.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=1, default=str)
    )
    print(md)
    log(f"wrote {RESULTS / (stamp + '.md')} and {RESULTS / (stamp + '.json')}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
