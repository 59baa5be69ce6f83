"""Shared fixtures: a real server process for end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverproc import RunningServer


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator:
    """A factory: ``start_server(*options)`` runs ``twistd -n stomp-chat`` until the test ends."""
    servers: list[RunningServer] = []

    def start(*args: str) -> RunningServer:
        server = RunningServer(tmp_path, list(args)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server) -> RunningServer:
    """One server on its embedded defaults, on free loopback ports."""
    return start_server()
