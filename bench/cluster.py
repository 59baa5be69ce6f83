"""Cluster scaling: two stomp-chat processes over Redis against one process.

The same load both ways: 10 rooms x 10 subscribers and 10 publishers on the
chat path (``SEND /app/message``, persistence on), closed loop with at most
200 messages in flight, run by two generator processes that each drive half
of the rooms. With one server both generators connect to it; in cluster mode
each generator connects to its own server, and both servers relay every
message through Redis (so each also receives and routes the other's
traffic). Interleaved, repeated; prints medians and the ratio.

Usage: ``python bench/cluster.py [--repeats 3] [--duration 4]``; needs Redis
on 127.0.0.1:6379 and the generator built (``bench/run.py`` builds it, or
``cargo build --release --offline`` in ``bench/gen``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "bench" / "gen" / "target" / "release" / "stompgen"
_PORT_LINE = re.compile(r"\b(StompFactory|Site) starting on (\d+)")


def start_server(workdir: Path, name: str, redis: str | None) -> tuple[subprocess.Popen, int]:
    """A stomp-chat process on free loopback ports; returns it and its HTTP port."""
    log = workdir / f"{name}.log"
    command = [
        str(Path(sys.executable).parent / "twistd"), "--nodaemon", "--pidfile=",
        f"--logfile={log}", "stomp-chat",
        "--stomp=tcp:0:interface=127.0.0.1", "--http=tcp:0:interface=127.0.0.1",
        f"--database=sqlite:///{workdir}/{name}.db",
    ]
    if redis:
        command.append(f"--redis={redis}")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(command, env=env, cwd=workdir)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        ports = dict(_PORT_LINE.findall(text))
        if "Site" in ports:
            return process, int(ports["Site"])
        time.sleep(0.05)
    process.terminate()
    raise RuntimeError(f"{name} did not start:\n{log.read_text() if log.exists() else ''}")


def generator(port: int, room_base: int, pid: int, args: argparse.Namespace) -> subprocess.Popen:
    return subprocess.Popen(
        [
            str(GENERATOR), "--mode", "load", "--transport", "ws", "--host", "127.0.0.1",
            "--port", str(port), "--path", "/ws/chat", "--login", "",
            "--rooms", "5", "--room-base", str(room_base), "--subs", "10", "--pubs", "5",
            "--dest", "/topic/chat/room/{room}", "--send-dest", "/app/message",
            "--body", "chat", "--body-size", "64", "--inflight", "100",
            "--warmup", str(args.warmup), "--duration", str(args.duration),
            "--server-pid", str(pid),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def result_of(process: subprocess.Popen) -> dict:
    out, _ = process.communicate(timeout=120)
    for line in reversed(out.splitlines()):
        if '"event":"result"' in line:
            return json.loads(line)
    raise RuntimeError(f"no result from the generator:\n{out[-2000:]}")


def run_once(cluster: bool, args: argparse.Namespace) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="stomp-chat-cluster-"))
    redis = f"redis://127.0.0.1:6379/0?namespace=bench-{uuid.uuid4().hex[:8]}" if cluster else None
    servers = [start_server(workdir, "a", redis)]
    if cluster:
        servers.append(start_server(workdir, "b", redis))
    try:
        (a, port_a), (b, port_b) = servers[0], servers[-1]
        gens = [generator(port_a, 1, a.pid, args), generator(port_b, 6, b.pid, args)]
        results = [result_of(g) for g in gens]
    finally:
        for process, _ in servers:
            process.terminate()
        for process, _ in servers:
            process.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    delivered = sum(r["deliveries_per_s"] for r in results)
    problems = sum(r["lost"] + r["duplicated"] + r["reordered"] + r["errors"] for r in results)
    return {
        "deliveries_per_s": delivered,
        "p99_ms": max(r["lat_ms"]["p99"] for r in results),
        "problems": problems,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--duration", type=float, default=4)
    args = parser.parse_args()
    if not GENERATOR.exists():
        gen_dir = GENERATOR.parents[2]
        sys.exit(f"build the generator first: cargo build --release --offline in {gen_dir}")
    runs: dict[str, list[dict[str, float]]] = {"one process": [], "two processes (Redis)": []}
    for repeat in range(args.repeats):
        for label, cluster in (("one process", False), ("two processes (Redis)", True)):
            outcome = run_once(cluster, args)
            runs[label].append(outcome)
            print(f"repeat {repeat + 1} {label:24} {outcome['deliveries_per_s']:10,.0f} "
                  f"deliveries/s  p99 {outcome['p99_ms']:.1f} ms  "
                  f"lost+dup+reordered+errors {outcome['problems']:.0f}", flush=True)
    one = statistics.median(r["deliveries_per_s"] for r in runs["one process"])
    two = statistics.median(r["deliveries_per_s"] for r in runs["two processes (Redis)"])
    print()
    print("| setup | deliveries/s (median) | p99 ms (median) | lost+dup+reordered+errors |")
    print("|---|---|---|---|")
    for label, outcomes in runs.items():
        print(f"| {label} | {statistics.median(r['deliveries_per_s'] for r in outcomes):,.0f} "
              f"| {statistics.median(r['p99_ms'] for r in outcomes):.1f} "
              f"| {sum(r['problems'] for r in outcomes):.0f} |")
    print(f"\ntwo processes / one process: {two / one:.2f}x")


if __name__ == "__main__":
    main()
