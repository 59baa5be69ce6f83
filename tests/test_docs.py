"""Tests for the deployment files in docs/ and the README's set-up: each snippet is exercised
where it can be (the example config starts a server, the unit passes systemd-analyze)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest

from stomp_chat.tap import Options

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _option_names() -> list[str]:
    return [entry[0] for entry in Options.optParameters if entry[0] != "config"]


def test_the_example_config_covers_every_option() -> None:
    """docs/stomp-chat.toml sets (or, for redis, shows commented) every option."""
    text = (DOCS / "stomp-chat.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    for name in _option_names():
        assert name in data or re.search(rf"^# {re.escape(name)} = ", text, re.M), name
    assert set(data) <= set(_option_names())


def test_the_example_config_holds_the_defaults() -> None:
    """Each value in the example config is the option's default, so the comments stay true."""
    from_file = Options()
    from_file.parseOptions(["--config", str(DOCS / "stomp-chat.toml")])
    defaults = Options()
    defaults.parseOptions([])
    for name in _option_names():
        assert from_file[name] == defaults[name], name


def test_a_server_starts_with_the_example_config(start_server, tmp_path: Path) -> None:
    """The real server starts from docs/stomp-chat.toml (listeners and database overridden on
    the command line, which wins) and is ready."""
    server = start_server("--config", str(DOCS / "stomp-chat.toml"),
                          f"--database=sqlite:///{tmp_path / 'chat.db'}")
    with urllib.request.urlopen(f"{server.http_url}/ready", timeout=10) as response:
        assert response.status == 200
        assert json.loads(response.read())["status"] == "ready"


def _unit() -> str:
    return (DOCS / "stomp-chat.service").read_text(encoding="utf-8")


def test_the_systemd_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit (its twistd path pointed at this venv)."""
    if shutil.which("systemd-analyze") is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: CI must verify the unit")
        pytest.skip("systemd-analyze is not installed; the structure test still runs")
    unit = tmp_path / "stomp-chat.service"
    twistd = Path(sys.executable).parent / "twistd"
    unit.write_text(_unit().replace("/opt/stomp-chat/bin/twistd", str(twistd)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_systemd_unit_has_what_operations_need() -> None:
    """Restart policy, descriptor limit, dedicated user, low ports, a stop longer than the
    server's own shutdown timeout, and SIGHUP as reload."""
    settings = dict(
        line.split("=", 1) for line in _unit().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert settings["Restart"] == "on-failure"
    assert int(settings["LimitNOFILE"]) >= 65536
    assert settings["User"] == "stomp-chat"
    assert "CAP_NET_BIND_SERVICE" in settings["AmbientCapabilities"]
    shutdown_timeout = Options()
    shutdown_timeout.parseOptions([])
    assert int(settings["TimeoutStopSec"]) > shutdown_timeout["shutdown-timeout"]
    assert settings["KillSignal"] == "SIGTERM"
    assert "-HUP" in settings["ExecReload"]
    assert "--nodaemon" in settings["ExecStart"] and "stomp-chat" in settings["ExecStart"]


def _code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_the_nginx_example_proxies_websockets_with_long_enough_timeouts() -> None:
    """The nginx example upgrades WebSockets and waits longer than the server's heart-beat."""
    [nginx] = _code_blocks((DOCS / "deployment.md").read_text(encoding="utf-8"), "nginx")
    assert "proxy_set_header Upgrade $http_upgrade;" in nginx
    assert "proxy_http_version 1.1;" in nginx
    assert "ssl_certificate " in nginx
    options = Options()
    options.parseOptions([])
    heartbeat_s = max(options["heartbeat"]) / 1000
    timeouts = [int(t) for t in re.findall(r"proxy_read_timeout (\d+)s;", nginx)]
    assert timeouts and min(timeouts) > heartbeat_s * 2
    assert nginx.count("{") == nginx.count("}")


def test_the_deployment_guide_snippets_parse() -> None:
    """The TOML snippets in the deployment guide are valid option files."""
    guide = (DOCS / "deployment.md").read_text(encoding="utf-8")
    known = set(_option_names())
    blocks = _code_blocks(guide, "toml")
    assert blocks, "the deployment guide shows its configuration in ```toml blocks"
    for block in blocks:
        assert set(tomllib.loads(block)) <= known


def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_readme_gives_two_setup_commands_and_ci_runs_the_second() -> None:
    """The README's set-up is one command to run the server and one to run every test, both in
    a venv; .ci/run runs exactly the test command."""
    setup = _readme().split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = _code_blocks(setup, "sh")
    assert len(commands) == 2
    run, test = (command.strip() for command in commands)
    assert run.startswith("python3 -m venv .venv") and "twistd -n stomp-chat" in run
    assert test.startswith("python3 -m venv .venv") and test.endswith("tox")
    assert "Redis" in setup and "PostgreSQL" in setup
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.strip().splitlines()[-1] == test


def test_the_readme_documents_every_option_and_signal() -> None:
    """Every option is in the README's table and every handled signal's meaning is given."""
    readme = _readme()
    for name in _option_names():
        assert f"`--{name}`" in readme, name
    for signal_name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1"):
        assert f"`{signal_name}`" in readme, signal_name
    assert "STOMP_CHAT_" in readme
