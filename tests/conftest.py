"""Shared fixtures: a real server process for end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chatclient import ChatClient
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


@pytest.fixture
def clients() -> Iterator:
    """A factory: ``clients(server_or_http_port)`` opens a recording stomp.py WebSocket client,
    closed when the test ends."""
    opened: list[ChatClient] = []

    def connect(target: int | RunningServer) -> ChatClient:
        port = target if isinstance(target, int) else target.http_port
        client = ChatClient(port)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        try:
            client.close()
        except Exception:  # the server may have gone already
            pass
