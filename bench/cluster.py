"""Cluster scaling: two stomp-chat processes over Redis against one process.

The same load both ways: 10 rooms x 10 subscribers and 10 publishers on the
chat path (``SEND /app/message``, persistence on), closed loop with at most
200 messages in flight, run by two generator processes that each drive half
of the rooms. With one server both generators connect to it; in cluster mode
each generator connects to its own server, and both servers relay every
message through a throwaway ``redis-server`` of the run's own (so each also
receives and routes the other's traffic). Interleaved, repeated; prints
medians and the ratio.

``--partitioned`` measures what scale-out depends on instead, side by side
in one run: one server alone; then two servers in cluster mode where every
client of the load is on server A (A's rooms) and server B has no subscriber
for any of them. It reports the CPU each server and Redis spent (read from
/proc over the generator's run), CPU per delivery for one process vs the
cluster and the latency the Redis hop adds (p50/p99), each taken from the
two setups of one repeat side by side (median and range over the repeats),
Redis's CPU per chat message, and what Redis does alone under
``redis-benchmark`` on a throwaway ``redis-server``: PUBLISH, and the relay's
own numbering script in calls of 40 messages (per second, and per Redis
CPU-second, which the machine's other load does not skew).
``--rate N`` sends N chat messages a second (both generators together) instead
of the closed loop: both setups then do the same work at the same pace, and
CPU per delivery and the hop's latency are not skewed by how far each
saturates. ``--source DIR`` runs the servers from another checkout (to compare);
``--profile DIR`` has server A write cProfile statistics there.

Usage: ``python bench/cluster.py [--repeats 3] [--duration 4] [--partitioned]``;
needs ``redis-server`` and ``redis-benchmark`` on the PATH (each cluster run
starts its own Redis on a free port) and the generator built (``bench/run.py``
builds it, or ``cargo build --release --offline`` in ``bench/gen``).
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
#: Subscribers per room in the load: deliveries per chat message.
FAN_OUT = 10
GENERATOR = ROOT / "bench" / "gen" / "target" / "release" / "stompgen"
_PORT_LINE = re.compile(r"\b(StompFactory|Site) starting on (\d+)")


#: Where the servers' code comes from (``--source``).
SOURCE = ROOT
#: Where server A writes its cProfile statistics (``--profile``), or None.
PROFILE_DIR: Path | None = None


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
    if PROFILE_DIR is not None and name == "a":
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        out = PROFILE_DIR / f"{'cluster' if redis else 'single'}-{uuid.uuid4().hex[:6]}.prof"
        command[3:3] = [f"--profile={out}", "--profiler=cprofile", "--savestats"]
    env = dict(os.environ, PYTHONPATH=str(SOURCE))
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
            "--body", "chat", "--body-size", "64",
            *(["--rate", str(args.rate / 2)] if args.rate else ["--inflight", "100"]),
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


class PrivateRedis:
    """A throwaway ``redis-server`` on a free loopback port: nothing else loads it, so
    its CPU over a run is the cluster's, and nothing is left behind."""

    def __init__(self) -> None:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True,
                             text=True).stdout.strip() != "PONG":
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the throwaway redis-server did not start")
            time.sleep(0.05)
        self.url = f"redis://127.0.0.1:{self.port}/0?namespace=bench"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def run_once(cluster: bool, args: argparse.Namespace) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="stomp-chat-cluster-"))
    redis = PrivateRedis() if cluster else None
    servers = [start_server(workdir, "a", redis.url if redis else None)]
    if redis:
        servers.append(start_server(workdir, "b", redis.url))
    try:
        (a, port_a), (b, port_b) = servers[0], servers[-1]
        gens = [generator(port_a, 1, a.pid, args), generator(port_b, 6, b.pid, args)]
        results = [result_of(g) for g in gens]
    finally:
        for process, _ in servers:
            process.terminate()
        for process, _ in servers:
            process.wait(30)
        if redis:
            redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    delivered = sum(r["deliveries_per_s"] for r in results)
    problems = sum(r["lost"] + r["duplicated"] + r["reordered"] + r["errors"] for r in results)
    return {
        "deliveries_per_s": delivered,
        "p99_ms": max(r["lat_ms"]["p99"] for r in results),
        "problems": problems,
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def partitioned_once(cluster: bool, args: argparse.Namespace) -> dict[str, float]:
    """The load on server A only (rooms 1-10); in cluster mode B follows none of them."""
    workdir = Path(tempfile.mkdtemp(prefix="stomp-chat-partitioned-"))
    redis = PrivateRedis() if cluster else None
    servers = [start_server(workdir, "a", redis.url if redis else None)]
    if redis:
        servers.append(start_server(workdir, "b", redis.url))
    watched = [process.pid for process, _ in servers]
    if redis:
        watched.append(redis.process.pid)
    try:
        time.sleep(1.0)  # start-up CPU out of the window
        before = [cpu_seconds(pid) for pid in watched]
        (a, port_a) = servers[0]
        gens = [generator(port_a, 1, a.pid, args), generator(port_a, 6, a.pid, args)]
        results = [result_of(g) for g in gens]
        after = [cpu_seconds(pid) for pid in watched]
    finally:
        for process, _ in servers:
            process.terminate()
        for process, _ in servers:
            process.wait(30)
        if redis:
            redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    spent = [b - a for a, b in zip(before, after, strict=True)]
    deliveries = sum(r["delivered"] for r in results)
    servers_cpu = sum(spent[:2]) if cluster else spent[0]
    return {
        "deliveries_per_s": sum(r["deliveries_per_s"] for r in results),
        "deliveries": deliveries,
        "cpu_a_s": spent[0],
        "cpu_b_s": spent[1] if cluster else 0.0,
        "cpu_redis_s": spent[2] if cluster else 0.0,
        "cpu_us_per_delivery": servers_cpu * 1e6 / max(deliveries, 1),
        "redis_us_per_message": (spent[2] if cluster else 0.0) * 1e6
        / max(deliveries / FAN_OUT, 1),
        "p50_ms": statistics.median(r["lat_ms"]["p50"] for r in results),
        "p99_ms": max(r["lat_ms"]["p99"] for r in results),
        "problems": sum(r["lost"] + r["duplicated"] + r["reordered"] + r["errors"]
                        for r in results),
    }


#: Chat messages per numbering-script call in the redis-benchmark run.
SCRIPT_CALL = 40


def redis_throughput() -> dict[str, float]:
    """On a throwaway redis-server: PUBLISH per second, and chat messages per second the
    relay's own numbering script numbers, in calls of 40 messages, 4 to each of 10 rooms
    (about what one call carries under the partitioned load; each room has a counter)."""
    from stomp_chat.cluster.batching import RECENT_TTL, SEQUENCE_AND_PUBLISH

    redis = PrivateRedis()
    try:
        cli = ["redis-cli", "-p", str(redis.port)]
        sha = subprocess.run([*cli, "SCRIPT", "LOAD", SEQUENCE_AND_PUBLISH], capture_output=True,
                             text=True, check=True).stdout.strip()
        script_args = [str(SCRIPT_CALL), "1000", str(RECENT_TTL), "#SEQ#"]
        meta = '["bench-node",true,{"content-type":"application/json;charset=utf-8"},'
        for room in range(1, 11):
            subprocess.run([*cli, "SET", f"bench:seq:{room}", "1"], capture_output=True,
                           check=True)
            template = (f'{{"type": "TALK", "roomId": {room}, "detailMessage": "{"x" * 64}", '
                        f'"senderId": 1, "messageId": "{room}-#SEQ#", "seq": #SEQ#, '
                        f'"createdAt": "2026-11-29T00:00:00.000Z"}}')
            script_args += [f"bench:seq:{room}", f"bench:recent:{room}",
                            f"bench:/topic/chat/room/{room}", "0", "-1", meta,
                            template] * (SCRIPT_CALL // 10)
        results = {}
        for label, command, per_call in (
            ("publish", ["PUBLISH", "bench", "x" * 200], 1),
            ("numbered", ["EVALSHA", sha, "0", *script_args], SCRIPT_CALL),
        ):
            calls = 20000
            before = cpu_seconds(redis.process.pid)
            out = subprocess.run(
                ["redis-benchmark", "-p", str(redis.port), "-n", str(calls), "-c", "20", "-q",
                 "--csv", *command], capture_output=True, text=True, timeout=120,
            ).stdout
            spent = cpu_seconds(redis.process.pid) - before
            # the test's name (the command) is quoted unescaped: read from the right
            rps = out.strip().splitlines()[-1].rsplit(",", 7)[1]
            results[label] = float(rps.strip('"')) * per_call
            results[f"{label}_per_cpu_s"] = calls * per_call / max(spent, 1e-3)
        return results
    finally:
        redis.stop()


def spread(values: list[float]) -> str:
    """Median and range: ``1.23x (1.10-1.30)``."""
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def partitioned(args: argparse.Namespace) -> None:
    one, many = "one process", "cluster, load on A"
    runs: dict[str, list[dict[str, float]]] = {one: [], many: []}
    for repeat in range(args.repeats):
        for label, cluster in ((one, False), (many, True)):
            outcome = partitioned_once(cluster, args)
            runs[label].append(outcome)
            print(f"repeat {repeat + 1} {label:20} {outcome['deliveries_per_s']:9,.0f} del/s "
                  f"A {outcome['cpu_a_s']:.2f} s B {outcome['cpu_b_s']:.3f} s "
                  f"Redis {outcome['cpu_redis_s']:.2f} s "
                  f"{outcome['cpu_us_per_delivery']:.1f} us/delivery "
                  f"p50 {outcome['p50_ms']:.1f} p99 {outcome['p99_ms']:.1f} ms "
                  f"problems {outcome['problems']:.0f}", flush=True)

    def med(label: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[label])

    print()
    print("| setup | deliveries/s | CPU A (s) | CPU B (s) | CPU Redis (s) | CPU us/delivery "
          "(A+B) | p50 ms | p99 ms | lost+dup+reordered+errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, outcomes in runs.items():
        print(f"| {label} | {med(label, 'deliveries_per_s'):,.0f} | {med(label, 'cpu_a_s'):.2f} "
              f"| {med(label, 'cpu_b_s'):.3f} | {med(label, 'cpu_redis_s'):.2f} "
              f"| {med(label, 'cpu_us_per_delivery'):.1f} "
              f"| {med(label, 'p50_ms'):.1f} | {med(label, 'p99_ms'):.1f} "
              f"| {sum(r['problems'] for r in outcomes):.0f} |")
    pairs = list(zip(runs[one], runs[many], strict=True))
    idle = [c["cpu_b_s"] / c["cpu_a_s"] for _, c in pairs]
    print(f"\nB (no subscribers) / A (its rooms) CPU: {statistics.median(idle):.1%} "
          f"({min(idle):.1%}-{max(idle):.1%})")
    per = [c["cpu_us_per_delivery"] / s["cpu_us_per_delivery"] for s, c in pairs]
    print(f"CPU per delivery, cluster / one process, each repeat side by side: {spread(per)}")
    hop50 = [c["p50_ms"] - s["p50_ms"] for s, c in pairs]
    hop99 = [c["p99_ms"] - s["p99_ms"] for s, c in pairs]
    print(f"latency added by the Redis hop: p50 {statistics.median(hop50):+.1f} ms "
          f"({min(hop50):+.1f} to {max(hop50):+.1f}), p99 {statistics.median(hop99):+.1f} ms "
          f"({min(hop99):+.1f} to {max(hop99):+.1f})")
    redis_us = med(many, "redis_us_per_message")
    print(f"Redis CPU per chat message: {redis_us:.1f} us "
          f"(one Redis core: about {1e6 / redis_us:,.0f} messages/s)")
    throughput = redis_throughput()
    print(f"redis-benchmark: PUBLISH {throughput['publish']:,.0f}/s "
          f"({throughput['publish_per_cpu_s']:,.0f} per Redis CPU-second); the numbering "
          f"script, {SCRIPT_CALL} messages a call: {throughput['numbered']:,.0f} messages/s "
          f"({throughput['numbered_per_cpu_s']:,.0f} per Redis CPU-second)")


def main() -> None:
    global SOURCE, PROFILE_DIR
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--duration", type=float, default=4)
    parser.add_argument("--partitioned", action="store_true")
    parser.add_argument("--rate", type=float, default=0,
                        help="chat messages per second in, both generators together, instead "
                             "of the closed loop (the same load both ways)")
    parser.add_argument("--source", type=Path, default=ROOT)
    parser.add_argument("--profile", type=Path, default=None,
                        help="server A writes cProfile statistics here (slows it down)")
    args = parser.parse_args()
    SOURCE = args.source.resolve()
    PROFILE_DIR = args.profile.resolve() if args.profile else None
    if not GENERATOR.exists():
        gen_dir = GENERATOR.parents[2]
        sys.exit(f"build the generator first: cargo build --release --offline in {gen_dir}")
    if args.partitioned:
        partitioned(args)
        return
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
