"""Interoperability with @stomp/stompjs 7, the STOMP client of web front ends.

Each test runs one scenario of ``tests/js/scenarios.mjs`` in Node against a
real server process and checks the JSON line of observations it prints. The
Node packages come from ``tests/js/package-lock.json``; install them with
``npm install --prefix tests/js`` (tox does this before pytest).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import RunningServer

JS_DIR = Path(__file__).resolve().parent / "js"
SCENARIOS = JS_DIR / "scenarios.mjs"
NODE_TIMEOUT = 30.0


def _node() -> str:
    """The node executable, with the test packages installed; fail (never skip) otherwise."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: Node.js 20+ is needed for the stompjs interop tests")
    for package in ("@stomp/stompjs", "ws"):
        if not (JS_DIR / "node_modules" / package / "package.json").is_file():
            pytest.fail(
                f"{package} is not installed in tests/js/node_modules: "
                "run `npm install --prefix tests/js` first"
            )
    return node


def run_scenario(server: RunningServer, name: str) -> dict[str, Any]:
    """Run one Node scenario against ``server``; return the JSON it printed."""
    command = [_node(), str(SCENARIOS), server.ws_url, name]
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=NODE_TIMEOUT, cwd=JS_DIR
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"scenario {name} hung for {NODE_TIMEOUT}s: {error.stderr!r}\n{server.log()}")
    if proc.returncode != 0:
        pytest.fail(
            f"scenario {name} exited {proc.returncode}\nstderr:\n{proc.stderr}\n"
            f"stdout:\n{proc.stdout}\nserver log (tail):\n{server.log()[-4000:]}"
        )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"scenario {name} must print one JSON line, got: {proc.stdout!r}"
    result = json.loads(lines[0])
    assert result["scenario"] == name
    return result


def _module_server(tmp_path_factory: pytest.TempPathFactory, *options: str) -> Iterator:
    server = RunningServer(tmp_path_factory.mktemp("stompjs"), list(options)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def js_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server on its defaults for every scenario that uses its own destinations."""
    yield from _module_server(tmp_path_factory)


@pytest.fixture(scope="module")
def tuned_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with 1 s heart-beats and a 64 KiB frame limit."""
    yield from _module_server(
        tmp_path_factory, "--heartbeat", "1000,1000", "--max-frame-size", "65536"
    )


@pytest.fixture(scope="module")
def scenario() -> Callable[[RunningServer, str], dict[str, Any]]:
    """``scenario(server, name)``: run a scenario once per module, however many tests read it."""
    results: dict[tuple[int, str], dict[str, Any]] = {}

    def get(server: RunningServer, name: str) -> dict[str, Any]:
        key = (server.http_port, name)
        if key not in results:
            results[key] = run_scenario(server, name)
        return results[key]

    return get


# -- connecting --------------------------------------------------------------


def test_connect_with_stompjs_defaults(js_server, scenario):
    """stompjs's default CONNECT (no host, three versions, 10 s heart-beats) gets 1.2 CONNECTED."""
    result = scenario(js_server, "connect")
    assert result["connectSent"] == (
        "CONNECT\naccept-version:1.2,1.1,1.0\nheart-beat:10000,10000\n\n\x00"
    )
    connected = result["connected"]
    assert connected["command"] == "CONNECTED"
    headers = connected["headers"]
    assert headers["version"] == "1.2"
    assert headers["heart-beat"] == "10000,10000"
    assert headers["server"].startswith("stomp-chat/")
    assert len(headers["session"]) >= 8
    assert connected["body"] == ""
    assert result["connectedVersion"] == "1.2"


def test_websocket_subprotocol_is_v12_stomp(js_server, scenario):
    """Offered v12.stomp, v11.stomp and v10.stomp, the server picks v12.stomp."""
    result = scenario(js_server, "connect")
    assert result["offeredProtocols"] == ["v12.stomp", "v11.stomp", "v10.stomp"]
    assert result["protocol"] == "v12.stomp"


def test_subprotocol_and_version_follow_what_stompjs_offers(js_server, scenario):
    """Each stompVersions setting yields the matching subprotocol and STOMP version."""
    results = scenario(js_server, "subprotocols")["results"]
    got = [(r["offered"], r["protocol"], r["version"], r["heartBeat"]) for r in results]
    assert got == [
        (["v12.stomp", "v11.stomp", "v10.stomp"], "v12.stomp", "1.2", "10000,10000"),
        (["v11.stomp", "v10.stomp"], "v11.stomp", "1.1", "10000,10000"),
        (["v11.stomp"], "v11.stomp", "1.1", "10000,10000"),
        (["v10.stomp"], "v10.stomp", "1.0", None),
    ]


# -- messaging ---------------------------------------------------------------


def test_topic_round_trip_unicode_and_escaped_headers(js_server, scenario):
    """A Korean/emoji body and headers with ':', newline, backslash round-trip, escaped on wire."""
    result = scenario(js_server, "topic-unicode")
    assert len(result["messages"]) == 1
    message = result["messages"][0]
    assert message["command"] == "MESSAGE"
    assert message["body"] == result["sentBody"] == "안녕하세요, 세계! 👋🎉 STOMP 채팅"
    headers = message["headers"]
    assert headers["x-note"] == "a:b\nc\\d"
    assert headers["x-room"] == "방:1"
    assert headers["content-type"] == "text/plain;charset=utf-8"
    assert headers["content-length"] == str(result["sentBodyBytes"]) == "46"
    assert headers["destination"] == result["destination"]
    assert headers["subscription"] == result["subscriptionId"]
    assert headers["message-id"]
    assert "receipt" not in headers
    # stompjs escaped the SEND; the MESSAGE on the wire is escaped the same way.
    assert "\nx-note:a\\cb\\nc\\\\d\n" in result["rawSend"]
    assert "\nx-note:a\\cb\\nc\\\\d\n" in result["rawMessage"]
    assert "\nx-room:방\\c1\n" in result["rawMessage"]
    assert result["rawMessage"].endswith("\n\n" + result["sentBody"] + "\x00")
    assert result["rawMessageBinary"] is False
    # One whole frame per WebSocket message: CONNECTED, RECEIPT (SUBSCRIBE), MESSAGE, RECEIPT.
    frames = [m for m in result["wsMessages"] if m["command"]]
    assert [m["command"] for m in frames] == ["CONNECTED", "RECEIPT", "MESSAGE", "RECEIPT"]
    assert all(m["nuls"] == 1 and m["endsWithNul"] for m in frames)


def test_topic_fans_out_to_two_clients(js_server, scenario):
    """Two stompjs clients subscribed to one /topic each receive every message, in order."""
    result = scenario(js_server, "fanout")
    assert result["alice"] == result["sent"] == ["one", "two", "three", "넷"]
    assert result["bob"] == result["sent"]
    assert result["aliceSubscription"] == [result["subscriptionIds"][0]] * 4
    assert result["bobSubscription"] == [result["subscriptionIds"][1]] * 4
    assert len(set(result["aliceMessageIds"])) == 4


def test_queue_round_robin_between_two_subscribers(js_server, scenario):
    """Six /queue messages alternate between two consumers, three each, none twice."""
    result = scenario(js_server, "queue-round-robin")
    first, second = result["first"], result["second"]
    assert sorted(first + second) == sorted(result["sent"])
    assert len(first) == len(second) == 3
    assert {tuple(first), tuple(second)} == {("m1", "m3", "m5"), ("m2", "m4", "m6")}
    assert len(set(result["messageIds"])) == 6


def test_client_individual_ack_and_nack_redelivery(js_server, scenario):
    """client-individual: NACKed is redelivered, acked is not, unacked goes to the next consumer."""
    result = scenario(js_server, "client-individual")
    assert result["alice"] == ["m1", "m2", "m3", "m2", "m4"]
    ack_ids = result["firstRoundAckHeaders"]
    assert all(ack_ids) and len(set(ack_ids)) == 3
    redelivered = result["redelivered"]
    assert redelivered["body"] == "m2"
    assert redelivered["headers"]["ack"]
    assert redelivered["headers"]["destination"].startswith("/queue/interop.ci.")
    assert result["bob"] == ["m4"]
    assert result["aliceErrors"] == 0


def test_client_ack_is_cumulative(js_server, scenario):
    """In client mode, acking the third message also acks the first two: none is redelivered."""
    result = scenario(js_server, "client-ack")
    assert result["alice"] == ["c1", "c2", "c3"]
    assert result["bob"] == ["c4"]


def test_binary_body_round_trip(js_server, scenario):
    """binaryBody bytes 0..255, and UTF-8 text with NULs, come back byte-exact."""
    result = scenario(js_server, "binary")
    assert result["sendChunksBinary"] == 2
    all_bytes, nul_text = result["messages"]
    assert all_bytes["bodyHex"] == result["sentHex"][0] == bytes(range(256)).hex()
    assert all_bytes["headers"]["content-length"] == "256"
    assert all_bytes["headers"]["content-type"] == "application/octet-stream"
    assert nul_text["bodyHex"] == result["sentHex"][1]
    assert bytes.fromhex(nul_text["bodyHex"]) == "a\0b\0한글\0".encode()
    assert nul_text["headers"]["content-length"] == str(len("a\0b\0한글\0".encode()))
    # Invalid UTF-8 must travel in a binary WebSocket message, valid UTF-8 in a text one.
    assert result["messageFramesBinary"] == [True, False]


def test_large_body_sent_in_split_websocket_chunks(js_server, scenario):
    """A 200 KB body sent with splitLargeFrames in 8 KB chunks is received intact."""
    result = scenario(js_server, "large-split")
    assert result["sentBytes"] >= 200 * 1024
    assert result["sendChunkCount"] >= 15
    assert result["maxChunkChars"] <= 8 * 1024
    assert result["received"] == 1
    assert result["receivedBytes"] == result["sentBytes"]
    assert result["receivedSha256"] == result["sentSha256"]
    assert result["contentLength"] == str(result["sentBytes"])


def test_transaction_commit_and_abort(js_server, scenario):
    """stompjs begin/commit/abort: transactional SENDs arrive only at COMMIT, aborted ones never."""
    result = scenario(js_server, "transaction")
    assert result["beforeCommit"] == ["outside"]
    assert result["all"] == ["outside", "tx-1", "tx-2", "after"]


# -- ending a session --------------------------------------------------------


def test_disconnect_waits_for_receipt(js_server, scenario):
    """deactivate() sends DISCONNECT with a receipt, gets the RECEIPT, then a clean close."""
    result = scenario(js_server, "disconnect-receipt")
    assert result["disconnectSent"] == "DISCONNECT\nreceipt:close-0\n\n\x00"
    assert result["receipt"]["command"] == "RECEIPT"
    assert result["receipt"]["headers"]["receipt-id"] == "close-0"
    assert result["timeline"] == ["RECEIPT", "close"]
    assert result["closeCode"] == 1000
    assert result["closeWasClean"] is True
    assert result["errors"] == 0
    # The SEND written just before DISCONNECT was processed.
    assert result["bob"] == ["sent right before DISCONNECT"]


def test_app_destination_without_handler_gives_error(js_server, scenario):
    """SEND to /app/nohandler gives onStompError an ERROR (message, receipt-id), then a close."""
    result = scenario(js_server, "app-nohandler")
    error = result["error"]
    assert error["command"] == "ERROR"
    assert error["headers"]["message"]
    assert error["headers"]["receipt-id"] == "app-1"
    assert "/app/nohandler" in error["body"]
    assert error["headers"]["content-length"] == str(len(error["body"].encode()))
    assert error["headers"]["content-type"].startswith("text/plain")
    assert result["errors"] == 1
    assert result["unhandledReceipts"] == []
    assert result["closeCode"] == 1000
    assert 0 <= result["closeAfterErrorMs"] < 2500
    assert result["connectedAfter"] is False


# -- heart-beats and limits (tuned server) -----------------------------------


def test_heartbeats_keep_idle_connection_open(tuned_server, scenario):
    """With 1000 ms heart-beats both ways, a connection idle for 3 s stays up and usable."""
    result = scenario(tuned_server, "heartbeat-idle")
    assert "\nheart-beat:1000,1000\n" in result["connectSent"]
    assert result["connectedHeartBeat"] == "1000,1000"
    assert result["closedDuringIdle"] is None
    assert result["idleMs"] >= 2900
    assert result["heartbeatsDuringIdle"] >= 2
    assert result["pingsSent"] >= 2
    assert result["errors"] == []
    assert result["afterIdle"] == ["still here"]


def test_silent_client_is_dropped_with_error(tuned_server, scenario):
    """A client that negotiated 1000 ms heart-beats and sends none gets ERROR and is closed."""
    result = scenario(tuned_server, "heartbeat-silent-client")
    assert result["connectedHeartBeat"] == "1000,1000"
    assert len(result["errors"]) == 1
    error = result["errors"][0]
    assert error["command"] == "ERROR"
    assert "heart-beat" in error["headers"]["message"]
    # Not before the negotiated interval, and within the interval plus a margin.
    assert 1000 <= result["errorAfterMs"] <= 4000
    assert result["closedAfterMs"] >= result["errorAfterMs"]


def test_oversized_split_frame_gets_error_then_close(tuned_server, scenario):
    """A 200 KB SEND over a 64 KiB --max-frame-size, sent in 8 KB chunks, gets ERROR then close."""
    result = scenario(tuned_server, "too-large-split")
    assert result["sendChunks"] >= 20
    assert len(result["errors"]) == 1
    assert result["errors"][0]["headers"]["message"]
    assert "65536" in result["errors"][0]["body"]
    assert result["closeAfterErrorMs"] is not None and result["closeAfterErrorMs"] >= 0
    assert result["receipts"] == []


def test_oversized_frame_error_names_its_receipt(tuned_server, scenario):
    """The ERROR for an oversized SEND whose headers were read carries its receipt as receipt-id."""
    result = scenario(tuned_server, "too-large-split")
    assert len(result["errors"]) == 1
    assert result["errors"][0]["headers"].get("receipt-id") == "big-1"


def test_oversized_single_message_frame_gets_error_then_close(tuned_server, scenario):
    """A 200 KB SEND in one WebSocket message (stompjs's default) gets ERROR, not a silent drop."""
    result = scenario(tuned_server, "too-large-unsplit")
    assert result["sendChunks"] == 1
    assert len(result["errors"]) == 1, (
        f"no ERROR frame; the WebSocket closed with code {result['closeCode']} "
        f"(clean: {result['closeWasClean']}) {result['closeAfterSendMs']} ms after the SEND"
    )
    assert result["errors"][0]["headers"]["message"]
    assert result["receipts"] == []
