"""Authentication's cost: the chat path and connection set-up with ``--auth none``,
``--auth jwt`` and ``--auth password`` side by side in one run.

For each mode a fresh stomp-chat process (SQLite in a temporary directory) is
measured twice with bench/run.py's generator and scenarios:

- ``fanout`` on the chat path (``SEND /app/message``, persistence on): 10 rooms
  x 10 subscribers, 10 publishers, closed loop; server CPU per delivery, whose
  ratio to ``none`` is the guard (target: within 1.1x);
- ``idle``: N WebSocket connections opened, each CONNECT authenticated (a JWT
  in ``passcode``; a password checked with Argon2id), then held; server CPU per
  connection set up.

Modes are interleaved within each repeat, so a noisy neighbour hits them all.

Usage: ``python bench/auth.py [--repeats 3] [--quick]``; the generator is built
as bench/run.py builds it. The servers run with ``--max-connections-per-address=0``,
since every generator connection comes from 127.0.0.1.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jwt  # noqa: E402
import run  # noqa: E402  (bench/run.py: targets, generator, scenarios)

MODES = ["none", "jwt", "password"]
BENCH_USER = "bench"
BENCH_PASSWORD = secrets.token_urlsafe(16)
#: The chat path's rooms (bench/run.py's fanout: 10 rooms from id 1).
BENCH_ROOMS = 10


def add_user(server: run.Server) -> None:
    """Create the benchmark's user with stomp-chat-admin, in the server's database."""
    assert server.workdir is not None
    env = dict(os.environ, PYTHONPATH=str(run.REPO))
    subprocess.run(
        [sys.executable, "-m", "stomp_chat.admin.cli",
         f"--database=sqlite:///{server.workdir}/bench.db",
         "user", "add", BENCH_USER, "--password-stdin"],
        input=BENCH_PASSWORD + "\n", text=True, env=env, check=True, capture_output=True,
    )


def start(targets: run.Targets, mode: str, secret_file: Path, secret: bytes) -> run.Server | None:
    # every generator connection comes from 127.0.0.1: lift the per-address cap
    base = ["--max-connections-per-address=0", *targets.opts.extra]
    if mode == "jwt":
        targets.opts.stomp_chat_arg = [*base, "--auth", "jwt",
                                       f"--jwt-secret-file={secret_file}"]
    else:
        targets.opts.stomp_chat_arg = [*base, "--auth", mode]
    server = targets.start("stomp-chat-app")
    if server is None:
        return None
    if mode == "jwt":
        now = int(time.time())
        server.login = BENCH_USER
        server.passcode = jwt.encode({"sub": BENCH_USER, "iat": now, "exp": now + 3600},
                                     secret, algorithm="HS256")
    elif mode == "password":
        add_user(server)
        server.login, server.passcode = BENCH_USER, BENCH_PASSWORD
    if mode != "none":
        # Outside --auth none the sender is the signed-in user and only members speak:
        # the bench user creates the rooms (so is a member of each) and names no senderId.
        credentials = (f"Bearer {server.passcode}" if mode == "jwt" else "Basic " +
                       base64.b64encode(f"{BENCH_USER}:{BENCH_PASSWORD}".encode()).decode())
        join_rooms(server, credentials)
        server.gen_extra = ["--sender-id", "none"]
    return server


def join_rooms(server: run.Server, credentials: str, rooms: int = BENCH_ROOMS) -> None:
    """Create the rooms the chat path uses, each with the bench user as its member."""
    for room in range(1, rooms + 1):
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.ws_port}/api/rooms",
            data=json.dumps({"name": f"bench {room}", "id": room}).encode(),
            headers={"Authorization": credentials, "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 201, response.status


def summary(results: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    lines = ["| metric | " + " | ".join(f"--auth {m}" for m in MODES) + " |",
             "|---|" + "---|" * len(MODES)]
    fanout = {m: [run.derive(r) for r in results["fanout"].get(m, []) if "failed" not in r]
              for m in MODES}
    idle = {m: [run.derive(r) for r in results["idle"].get(m, []) if "failed" not in r]
            for m in MODES}
    rows = [
        ("chat path: deliveries/s", fanout, "deliveries_per_s", 0),
        ("chat path: server CPU µs per delivery", fanout, "server_cpu_us_per_delivery", 1),
        ("chat path: latency p99 (ms)", fanout, "lat_ms.p99", 1),
        ("connections set up", idle, "connected", 0),
        ("set-up: server CPU µs per connection", idle, "server_setup_cpu_us_per_conn", 0),
        ("set-up: wall time (s)", idle, "setup_s", 1),
        ("server memory per connection (KiB)", idle, "server_kb_per_conn", 1),
        ("other processes' cores busy (chat path)", fanout, "other_cores", 2),
    ]
    for label, source, key, digits in rows:
        values = {m: run.med(source[m], key) for m in MODES}
        lines.append(f"| {label} | " + " | ".join(run.fmt(values[m], digits) for m in MODES)
                     + " |")
    cpu = {m: run.med(fanout[m], "server_cpu_us_per_delivery") for m in MODES}
    lines.append("| chat path CPU per delivery / none | "
                 + " | ".join(run.ratio(cpu[m], cpu["none"]) for m in MODES) + " |")
    setup = {m: run.med(idle[m], "server_setup_cpu_us_per_conn") for m in MODES}
    lines.append("| set-up CPU per connection / none | "
                 + " | ".join(run.ratio(setup[m], setup["none"]) for m in MODES) + " |")
    for source, name in ((fanout, "fanout"), (idle, "idle")):
        for m in MODES:
            lost = sum(r.get("lost", 0) + r.get("errors", 0) for r in source[m])
            failed = len(results[name].get(m, [])) - len(source[m])
            if lost or failed:
                lines.append(f"- {name} --auth {m}: {failed} failed runs, {lost} lost/ERROR")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--inflight", type=int, default=200)
    ap.add_argument("--idle-conns", type=int, default=1000,
                    help="connections set up in none and jwt modes")
    ap.add_argument("--password-conns", type=int, default=200,
                    help="connections set up in password mode (each costs an Argon2 check)")
    ap.add_argument("--idle-hold", type=float, default=3.0)
    ap.add_argument("--quiet-threshold", type=float, default=0.3,
                    help="cores busy by other processes tolerated before a run")
    ap.add_argument("--quiet-wait", type=float, default=20.0,
                    help="longest wait for the machine to quieten before each run (s)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--extra", action="append", default=[],
                    help="extra stomp-chat option for every mode (repeatable)")
    opts = ap.parse_args(argv)
    opts.idle_conns_all = opts.idle_conns
    if opts.repeats is None:
        opts.repeats = 1 if opts.quick else 3
    if opts.quick:
        opts.warmup, opts.duration = 1.5, 3.0
    opts.rate, opts.stomp_chat_arg = 2000.0, []
    run.raise_nofile()
    run.build_generator(opts.no_build)
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as keys:
        secret = secrets.token_hex(32).encode()
        secret_file = Path(keys) / "jwt.secret"
        secret_file.write_bytes(secret)
        results: dict[str, dict[str, list[dict[str, Any]]]] = {"fanout": {}, "idle": {}}
        for repeat in range(opts.repeats):
            for scenario in ("fanout", "idle"):
                for mode in MODES:
                    for port in ("stomp_chat_http_port", "stomp_chat_stomp_port",
                                 "floor_ws_port", "floor_tcp_port"):
                        setattr(opts, port, run.free_port())
                    targets = run.Targets(opts)
                    load = run.wait_quiet(opts.quiet_threshold, opts.quiet_wait)
                    opts.idle_conns = opts.password_conns if mode == "password" \
                        else opts.idle_conns_all
                    server = start(targets, mode, secret_file, secret)
                    if server is None:
                        results[scenario].setdefault(mode, []).append({"failed": "no start"})
                        continue
                    try:
                        time.sleep(0.5)
                        run.log(f"repeat {repeat + 1}/{opts.repeats} {scenario} --auth {mode}")
                        result = run.run_one(scenario, server, opts)
                    finally:
                        server.cleanup()
                    result["load_before"] = load
                    results[scenario].setdefault(mode, []).append(result)
                    if "failed" in result:
                        run.log(f"  failed: {result['failed']} {result.get('stderr', '')[:300]}")
    table = summary(results)
    print(table)
    run.RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (run.RESULTS / f"auth-{stamp}.json").write_text(json.dumps(results, indent=1, default=str))
    (run.RESULTS / f"auth-{stamp}.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
