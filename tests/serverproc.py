"""Run the real server, ``twistd -n stomp-chat``, as a child process for tests.

The server listens on port 0 and the test reads the ports it got from its
log, so parallel runs never race for a port.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import stomp_chat

#: twistd stops cleanly on SIGTERM, then re-raises the signal so its exit status shows it.
STOPPED_BY_SIGTERM = -signal.SIGTERM

_PORT_LINE = re.compile(r"\b(StompFactory|Site)(?: \(TLS\))? starting on (\d+)")


def _import_root() -> str:
    """Where this test process imports stomp_chat from: the child does too."""
    return str(Path(stomp_chat.__file__).resolve().parent.parent)


@dataclass
class RunningServer:
    """A server child process and the ports it listens on."""

    workdir: Path
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    stomp_port: int = 0
    http_port: int = 0
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "server.log"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/ws/chat"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 20.0) -> RunningServer:
        if self.log_path.exists():
            self.log_path.unlink()
        env = server_environment(self.env)
        command = [
            str(Path(sys.executable).parent / "twistd"),
            "--nodaemon",
            "--pidfile=",
            f"--logfile={self.log_path}",
            "stomp-chat",
            "--stomp=tcp:0:interface=127.0.0.1",
            "--http=tcp:0:interface=127.0.0.1",
            *self.args,
        ]
        self.process = subprocess.Popen(
            command, cwd=self.workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ports = dict(_PORT_LINE.findall(self.log()))
            if "StompFactory" in ports and "Site" in ports:
                self.stomp_port = int(ports["StompFactory"])
                self.http_port = int(ports["Site"])
                return self
            if self.process.poll() is not None:
                stdout = self.process.stdout
                output = stdout.read().decode(errors="replace") if stdout else ""
                raise RuntimeError(f"server exited early:\n{output}\n{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not start within {timeout}s:\n{self.log()}")

    def signal(self, number: int) -> None:
        """Send the server a signal."""
        assert self.process is not None
        self.process.send_signal(number)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the server to exit by itself; returns the exit code."""
        process = self.process
        assert process is not None
        self.process = None
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"the server did not exit within {timeout}s") from None
        finally:
            if process.stdout:
                process.stdout.close()
        return process.returncode

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, as an init system would; returns the exit code."""
        process = self.process
        if process is None:
            return None
        self.process = None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout:
            process.stdout.close()
        return process.returncode


def server_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a server child: this checkout first on its import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_import_root(), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra or {})
    return env


def run_to_exit(
    workdir: Path,
    *args: str,
    daemon: bool = False,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, str, str]:
    """Run ``twistd stomp-chat`` expecting it to exit; returns (code, terminal output, log)."""
    log_path = workdir / "server.log"
    mode = ["--pidfile", str(workdir / "twistd.pid")] if daemon else ["--nodaemon", "--pidfile="]
    command = [
        str(Path(sys.executable).parent / "twistd"),
        *mode,
        f"--logfile={log_path}",
        "stomp-chat",
        *args,
    ]
    process = subprocess.Popen(
        command,
        cwd=workdir,
        env=server_environment(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"twistd stomp-chat {' '.join(args)} did not exit") from None
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    return process.returncode, output.decode(errors="replace"), log


def assert_clean_stop(server: RunningServer) -> None:
    """SIGTERM the server; it must shut down in order, without errors."""
    code = server.stop()
    log = server.log()
    assert code == STOPPED_BY_SIGTERM, log
    assert "Server Shut Down." in log
    for problem in ("Traceback", "Unhandled", "#critical", "#error"):
        assert problem not in log, log
