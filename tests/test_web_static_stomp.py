"""The chat page's own STOMP module (``stomp_chat/web/static/stomp.js``) against the real server.

Node imports the ES module the browser loads, unchanged, and drives it with the
``ws`` package as its WebSocket (``tests/js/client-scenarios.mjs``); each test
checks the JSON line of observations one scenario prints.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.serverproc import RunningServer
from tests.test_interop_stompjs import JS_DIR, _node

CLIENT_SCENARIOS = JS_DIR / "client-scenarios.mjs"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server on its defaults for every scenario (each uses its own destinations)."""
    running = RunningServer(tmp_path_factory.mktemp("stompmodule"), []).start()
    try:
        yield running
    finally:
        running.stop()


def run_client_scenario(url: str, name: str) -> dict[str, Any]:
    """Run one scenario of client-scenarios.mjs; return the JSON it printed."""
    proc = subprocess.run(
        [_node(), str(CLIENT_SCENARIOS), url, name],
        capture_output=True, text=True, timeout=30, cwd=JS_DIR,
    )
    if proc.returncode != 0:
        pytest.fail(f"scenario {name} exited {proc.returncode}:\n{proc.stderr}\n{proc.stdout}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result.pop("scenario") == name
    return result


def test_frames_are_read_the_same_wherever_the_stream_is_cut() -> None:
    """The frame reader gives the same frames for a stream split at every byte offset."""
    result = run_client_scenario("", "reader")
    assert result["same"] is True
    assert result["count"] > 100
    first = result["first"]
    assert [frame[0] for frame in first] == ["MESSAGE", "RECEIPT", "MESSAGE"]
    assert first[0][1] == "/topic/a:b" and first[0][2] == "one\ntwo"
    assert bytes(first[0][3]).decode() == "안녕하세요 👋"
    assert first[2][3] == [1, 0, 2]  # content-length lets a body hold NUL
    assert result["oversized"] == "a frame is larger than 16 bytes"


def test_reconnect_delays_double_up_to_their_cap() -> None:
    """Back-off delays double from the initial one and stop at the maximum."""
    assert run_client_scenario("", "reader")["delays"] == [500, 1000, 2000, 4000, 15000, 15000]


def test_connect_send_receipt_and_unicode_round_trip(server: RunningServer) -> None:
    """CONNECT gets 1.2 and heart-beats; Korean, emoji, 200 KB and JSON bodies arrive intact."""
    result = run_client_scenario(server.ws_url, "roundtrip")
    assert result["version"] == "1.2"
    assert result["serverHeartbeat"] == "10000,10000"
    assert result["receiptId"].startswith("r-")
    assert result["first"] == "안녕하세요 👋"
    assert result["odd"] == "a:b\nc\\d"
    assert result["longOk"] is True and result["longBytes"] == 70000 * 3 + 4
    assert result["json"] == {"hello": "세계"}
    assert result["jsonType"] == "application/json;charset=utf-8"
    assert result["states"] == ["connecting", "connected", "closed"]


def test_ack_and_nack_on_a_client_individual_queue(server: RunningServer) -> None:
    """A NACKed message is delivered again; the ACK uses the 1.2 ack header."""
    result = run_client_scenario(server.ws_url, "acks")
    assert result == {"bodies": ["one", "one"], "ackHeader": True}


def test_a_dropped_connection_reconnects_and_resubscribes(server: RunningServer) -> None:
    """After a socket dies the client reconnects and re-sends SUBSCRIBE with fresh headers."""
    result = run_client_scenario(server.ws_url, "reconnect")
    assert result["sockets"] == 2
    assert result["states"] == ["connecting", "connected", "reconnecting", "connected", "closed"]
    assert result["calls"] == 2
    assert result["got"] == ["after"]
    assert result["whileDown"] == "not connected"


def test_a_silent_server_is_given_up_and_reconnected() -> None:
    """No heart-beat from the server for twice the interval: the client drops it and reconnects."""
    result = run_client_scenario("", "silent")
    assert result["connects"] >= 2
    assert result["sawReconnecting"] is True
    assert result["took"] < 3000


def test_an_error_frame_fails_its_receipt(server: RunningServer) -> None:
    """An ERROR names the failed frame's receipt: its promise rejects with the server's message."""
    result = run_client_scenario(server.ws_url, "error")
    assert "destinations start with" in result["outcome"]
    assert result["errors"] == [result["outcome"]]


def test_reconnect_now_skips_the_back_off(server: RunningServer) -> None:
    """reconnectNow() connects again at once instead of waiting out a one-minute back-off."""
    result = run_client_scenario(server.ws_url, "reconnectNow")
    assert result["sockets"] == 2
    assert result["took"] < 3000
