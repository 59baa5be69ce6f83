"""Unit tests for stomp_chat.session.StompSession, driven through bytes in and frames out."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from stomp_chat.app.routes import ApplicationError, AppRouter
from stomp_chat.broker import Broker, BrokerError
from stomp_chat.broker.queues import QueueSet
from stomp_chat.errors import ProtocolError
from stomp_chat.identity import Principal
from stomp_chat.session import AuthenticationInterceptor, AuthError, SendRateInterceptor, State
from stomp_chat.stomp.frame import Frame, encode_frame
from tests.stompfakes import Client, make_context


def use_authenticator(context, authenticator) -> None:
    """Put ``authenticator`` first in the context's inbound chain."""
    context.interceptors[0] = AuthenticationInterceptor(authenticator)


def connected(context, version: str | None = "1.2", **kwargs) -> Client:
    client = Client(context)
    client.connect(version, **kwargs)
    return client


def only(frames: list[Frame], command: str) -> list[Frame]:
    return [f for f in frames if f.command == command]


def assert_error_then_closed(client: Client, **headers: str) -> Frame:
    frames = client.frames()
    assert frames, "no frame was written"
    error = frames[-1]
    assert error.command == "ERROR", frames
    assert "message" in error.headers
    assert error.body, "ERROR frames explain themselves in the body"
    for name, value in headers.items():
        assert error.headers.get(name) == value, error.headers
    assert client.closed
    assert client.transport.writes_after_close == []
    return error


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def context(clock):
    return make_context(clock=clock)


# -- connecting ----------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "expected"),
    [("1.0", "1.0"), ("1.1", "1.1"), ("1.2", "1.2"), ("1.0,1.1,1.2", "1.2"), ("1.1,1.0", "1.1")],
)
def test_connect_negotiates_highest_common_version(context, offered, expected):
    """CONNECTED names the highest version offered in accept-version."""
    client = Client(context)
    connected_frame = client.connect(offered)
    assert connected_frame.headers["version"] == expected
    assert client.session.state is State.CONNECTED


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_connected_carries_required_headers(context, version):
    """CONNECTED carries version, heart-beat, session and server."""
    frame = Client(context).connect(version)
    for name in ("version", "heart-beat", "session", "server"):
        assert frame.headers.get(name), name


def test_stomp_command_is_handled_like_connect(context):
    """A STOMP frame connects exactly like CONNECT."""
    client = Client(context)
    frame = client.connect("1.2", command="STOMP")
    assert frame.headers["version"] == "1.2"
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "0", "receipt": "r"})
    assert client.next_frame().headers["receipt-id"] == "r"


def test_no_accept_version_means_1_0(context):
    """A CONNECT without accept-version speaks 1.0, with no heart-beating."""
    client = Client(context)
    frame = client.connect(None)
    assert frame.headers["version"] == "1.0"
    assert "heart-beat" not in frame.headers
    assert frame.headers.get("session")


@pytest.mark.parametrize("host", [None, "", "unknown.example", "127.0.0.1:61613"])
def test_missing_or_unknown_host_does_not_fail(context, host):
    """CONNECT succeeds whatever the host header says, or without one."""
    client = Client(context)
    headers = {"accept-version": "1.2"}
    if host is not None:
        headers["host"] = host
    client.send("CONNECT", headers)
    assert client.next_frame().command == "CONNECTED"


def test_connect_with_crlf_line_endings(context):
    """A CONNECT frame with CRLF line endings is accepted."""
    client = Client(context)
    client.send_bytes(b"CONNECT\r\naccept-version:1.2\r\nhost:x\r\n\r\n\x00")
    assert client.next_frame().command == "CONNECTED"


def test_connect_headers_are_not_unescaped(context):
    """The authenticator sees CONNECT headers literally, backslashes included."""
    seen = []

    class Recording:
        def authenticate(self, frame, connection):
            seen.append(frame.headers["passcode"])
            return None

    use_authenticator(context, Recording())
    client = Client(context)
    client.send_bytes(b"CONNECT\naccept-version:1.2\npasscode:a\\cb\\t\n\n\x00")
    assert client.next_frame().command == "CONNECTED"
    assert seen == ["a\\cb\\t"]


@pytest.mark.parametrize("offered", ["2.0", "1.3,3.0", ""])
def test_version_negotiation_failure(context, offered):
    """No common version: ERROR with version:1.0,1.1,1.2, then close."""
    client = Client(context)
    client.send("CONNECT", {"accept-version": offered, "host": "x"})
    error = assert_error_then_closed(client)
    assert error.headers["version"] == "1.0,1.1,1.2"


@pytest.mark.parametrize("command", ["SEND", "SUBSCRIBE", "DISCONNECT", "CONNECTED", "FOO"])
def test_frame_before_connect_is_refused(context, command):
    """Any frame other than CONNECT/STOMP first gets ERROR and close."""
    client = Client(context)
    client.send(command, {"destination": "/topic/t", "id": "0"})
    assert_error_then_closed(client)


def test_second_connect_is_refused(context):
    """A second CONNECT on a connected session gets ERROR and close."""
    client = connected(context)
    client.send("CONNECT", {"accept-version": "1.2", "host": "x"})
    assert_error_then_closed(client)


def test_invalid_heartbeat_header_is_refused(context):
    """A malformed heart-beat header on CONNECT gets ERROR and close."""
    client = Client(context)
    client.send("CONNECT", {"accept-version": "1.2", "heart-beat": "soon"})
    assert_error_then_closed(client)


def test_bad_credentials_are_refused(context):
    """An authenticator raising AuthError gives ERROR and close, not CONNECTED."""

    class Refusing:
        def authenticate(self, frame, connection):
            raise AuthError("bad credentials", "login or passcode is wrong")

    use_authenticator(context, Refusing())
    client = Client(context)
    client.send("CONNECT", {"accept-version": "1.2", "login": "x", "passcode": "y"})
    error = assert_error_then_closed(client)
    assert error.headers["message"] == "bad credentials"


def test_authenticator_failure_is_reported_not_raised(context):
    """An authenticator that fails unexpectedly still yields ERROR then close."""

    class Broken:
        def authenticate(self, frame, connection):
            return fail(RuntimeError("database down"))

    use_authenticator(context, Broken())
    client = Client(context)
    client.send("CONNECT", {"accept-version": "1.2"})
    assert_error_then_closed(client)


def test_authenticated_principal_is_reported(context):
    """An authenticated user name appears as user-name on CONNECTED."""

    class Named:
        def authenticate(self, frame, connection):
            return succeed(Principal("u-" + frame.headers["login"], frame.headers["login"]))

    use_authenticator(context, Named())
    frame = Client(context).connect("1.2", login="alice", passcode="pw")
    assert frame.headers["user-name"] == "alice"


def test_frames_pipelined_during_authentication_are_handled_after_connected(context):
    """Frames sent right behind CONNECT wait for authentication, then run with 1.2 unescaping."""
    pending: Deferred = Deferred()

    class Slow:
        def authenticate(self, frame, connection):
            return pending

    use_authenticator(context, Slow())
    watcher = connected(make_context(broker=context.broker))
    watcher.send("SUBSCRIBE", {"destination": "/topic/t", "id": "w"})
    client = Client(context)
    client.send_bytes(
        encode_frame(Frame("CONNECT", {"accept-version": "1.2", "host": "x"}))
        + encode_frame(Frame("SEND", {"destination": "/topic/t", "k": "a:b"}, b"x"), "1.2")
    )
    assert client.frames() == []
    assert client.transport.reading_paused
    pending.callback(None)
    assert not client.transport.reading_paused
    assert client.next_frame().command == "CONNECTED"
    (message,) = watcher.frames()
    assert message.headers["k"] == "a:b"


# -- heart-beating ---------------------------------------------------------


def heartbeat_context(clock, server=(1000, 1000), tick=0.25, **settings):
    context = make_context(clock=clock, tick=tick, heartbeat=server, **settings)
    context.heartbeats.startService()
    return context


def advance(clock: Clock, seconds: float, step: float = 0.25) -> None:
    for _ in range(round(seconds / step)):
        clock.advance(step)


def heartbeat_times(client: Client, clock: Clock, seconds: float, step: float = 0.05):
    times, seen = [], client.heartbeats()
    for _ in range(round(seconds / step)):
        clock.advance(step)
        now = client.heartbeats()
        if now > seen:
            times.append(clock.seconds())
            seen = now
    return times


def test_connected_advertises_the_server_heartbeat(clock):
    """CONNECTED's heart-beat header is the server's own sx,sy."""
    context = heartbeat_context(clock, server=(2000, 3000))
    frame = Client(context).connect("1.2", heartbeat="1000,1000")
    assert frame.headers["heart-beat"] == "2000,3000"


def test_server_sends_heartbeats_when_idle(clock):
    """With client cy>0 the server writes a lone EOL at least every max(sx, cy)."""
    context = heartbeat_context(clock, server=(1000, 1000))
    client = connected(context, heartbeat="0,1000")
    times = heartbeat_times(client, clock, 10.0)
    assert len(times) >= 8
    gaps = [b - a for a, b in pairwise([0.0, *times])]
    assert max(gaps) <= 1.0 + 1e-9
    assert not client.closed


def test_server_heartbeat_interval_uses_the_larger_value(clock):
    """Client cy larger than server sx sets the outgoing period: beats come about every cy."""
    context = heartbeat_context(clock, server=(1000, 1000))
    client = connected(context, heartbeat="0,3000")
    times = heartbeat_times(client, clock, 30.0)
    gaps = [b - a for a, b in pairwise([0.0, *times])]
    assert max(gaps) <= 3.0 + 1e-9
    assert len(times) <= 20, "heart-beats far more often than negotiated"


def test_no_server_heartbeats_when_client_wants_none(clock):
    """A client cy of 0 turns server heart-beats off."""
    context = heartbeat_context(clock, server=(1000, 1000))
    client = connected(context, heartbeat="1000,0")
    client.send_bytes(b"\n")
    advance(clock, 0.5)
    assert client.heartbeats() == 0


def test_no_server_heartbeats_when_server_sx_is_zero(clock):
    """A server sx of 0 means it never sends heart-beats."""
    context = heartbeat_context(clock, server=(0, 0))
    client = connected(context, heartbeat="1000,1000")
    advance(clock, 10)
    assert client.heartbeats() == 0
    assert not client.closed


def test_no_heartbeats_while_frames_flow(clock):
    """A server that is writing frames anyway sends no extra heart-beats."""
    context = heartbeat_context(clock, server=(1000, 1000))
    client = connected(context, heartbeat="0,1000")
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "0"})
    for i in range(40):
        client.send("SEND", {"destination": "/topic/t"}, str(i).encode())
        clock.advance(0.25)
    assert client.heartbeats() == 0
    assert len(only(client.frames(), "MESSAGE")) == 40


def test_silent_client_is_dropped_after_interval_plus_margin(clock):
    """A client that promised heart-beats and goes silent gets ERROR and is closed."""
    context = heartbeat_context(clock, server=(1000, 1000))
    client = connected(context, heartbeat="1000,0")
    advance(clock, 1.0)
    assert not client.closed, "dropped before the interval passed"
    advance(clock, 2.0)
    error = assert_error_then_closed(client)
    assert "heart-beat" in error.headers["message"]
    assert len(context.heartbeats) == 0


def test_incoming_interval_uses_the_larger_value(clock):
    """With client cx=3000 and server sy=1000 the client may be silent for 3 s."""
    context = heartbeat_context(clock, server=(1000, 1000))
    client = connected(context, heartbeat="3000,0")
    advance(clock, 3.0)
    assert not client.closed
    advance(clock, 3.0)
    assert_error_then_closed(client)


def test_client_sending_heartbeats_stays_connected(clock):
    """A client that sends an EOL every interval is never dropped."""
    context = heartbeat_context(clock, server=(1000, 1000))
    client = connected(context, heartbeat="1000,0")
    for _ in range(20):
        advance(clock, 1.0)
        client.send_bytes(b"\n")
    assert not client.closed
    assert client.frames() == []


def test_any_byte_counts_as_liveness(clock):
    """Partial frame bytes keep a client alive as well as EOLs do."""
    context = heartbeat_context(clock, server=(1000, 1000))
    client = connected(context, heartbeat="1000,0")
    data = encode_frame(Frame("SEND", {"destination": "/topic/t"}, b"x" * 20))
    for i in range(len(data)):
        advance(clock, 0.75)
        client.send_bytes(data[i : i + 1])
    assert not client.closed


def test_a_client_the_server_does_not_read_is_not_dropped_for_silence(clock):
    """While the server holds a client's input (an interceptor waits, storage is behind), the
    heart-beats it sends stay unread: that silence is the server's, not the client's."""
    waiting = Waiting()
    context = make_context(clock=clock, tick=0.25, heartbeat=(1000, 1000),
                           interceptors=[waiting])
    context.heartbeats.startService()
    client = connected(context, heartbeat="1000,0")
    client.send("SEND", {"destination": "/topic/t"}, b"x")
    assert client.transport.reading_paused
    advance(clock, 10.0)
    assert not client.closed
    assert only(client.frames(), "ERROR") == []
    waiting.pending[0].callback(None)
    advance(clock, 1.0)
    assert not client.closed, "the silence allowed starts again once reading resumes"
    advance(clock, 2.0)
    assert "heart-beat" in assert_error_then_closed(client).headers["message"]


def test_client_without_heartbeats_is_never_dropped(clock):
    """Client cx of 0 means the server expects nothing and never times it out."""
    context = heartbeat_context(clock, server=(1000, 1000))
    client = connected(context, heartbeat="0,0")
    advance(clock, 120)
    assert not client.closed


def test_1_0_client_is_not_heartbeated(clock):
    """A 1.0 session neither sends heart-beats nor times out for silence."""
    context = heartbeat_context(clock, server=(1000, 1000))
    client = connected(context, None, heartbeat="1000,1000")
    advance(clock, 60)
    assert client.heartbeats() == 0 and not client.closed


def test_connect_timeout(clock):
    """A connection that never sends CONNECT is closed with ERROR after connect_timeout."""
    context = heartbeat_context(clock, connect_timeout=5.0)
    client = Client(context)
    advance(clock, 4.0)
    assert not client.closed
    advance(clock, 2.0)
    assert_error_then_closed(client)


def test_connect_timeout_counts_from_open_despite_partial_bytes(clock):
    """Trickling bytes without completing CONNECT does not extend connect_timeout."""
    context = heartbeat_context(clock, connect_timeout=5.0)
    client = Client(context)
    for byte in b"CONNECT\naccept-version:1.2\n":
        client.send_bytes(bytes([byte]))
        clock.advance(0.25)
    assert_error_then_closed(client)


def test_connect_timeout_does_not_apply_once_connected(clock):
    """A connected session outlives connect_timeout."""
    context = heartbeat_context(clock, connect_timeout=5.0)
    client = connected(context, heartbeat="0,0")
    advance(clock, 30)
    assert not client.closed


# -- SEND / SUBSCRIBE / UNSUBSCRIBE ----------------------------------------


def test_send_reaches_topic_subscriber(context):
    """A SEND to a topic yields a MESSAGE with destination, message-id, subscription, body."""
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/topic/chat", "id": "sub-1"})
    client.send("SEND", {"destination": "/topic/chat", "content-type": "text/plain"}, b"hello")
    (message,) = client.frames()
    assert message.command == "MESSAGE"
    assert message.headers["destination"] == "/topic/chat"
    assert message.headers["subscription"] == "sub-1"
    assert message.headers["message-id"]
    assert message.headers["content-length"] == "5"
    assert message.headers["content-type"] == "text/plain"
    assert message.body == b"hello"


def test_send_reaches_other_sessions(context):
    """Every session subscribed to a topic gets the message."""
    a, b = connected(context), connected(context)
    for c in (a, b):
        c.send("SUBSCRIBE", {"destination": "/topic/t", "id": "0"})
    a.send("SEND", {"destination": "/topic/t"}, b"x")
    assert [f.body for f in a.frames()] == [b"x"]
    assert [f.body for f in b.frames()] == [b"x"]


def test_user_headers_pass_through_and_reserved_ones_do_not(context):
    """Custom headers reach the MESSAGE unchanged; receipt, transaction and the like do not."""
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "0"})
    client.send("BEGIN", {"transaction": "tx"})
    client.send("SEND", {
        "destination": "/topic/t", "x-custom": " padded ", "priority": "9",
        "receipt": "r1", "transaction": "tx", "message-id": "forged",
        "subscription": "forged", "ack": "forged", "receipt-id": "forged",
    }, b"body")
    client.send("COMMIT", {"transaction": "tx"})
    frames = client.frames()
    (message,) = only(frames, "MESSAGE")
    assert message.headers["x-custom"] == " padded "
    assert message.headers["priority"] == "9"
    assert message.headers["message-id"] != "forged"
    assert message.headers["subscription"] == "0"
    for name in ("receipt", "transaction", "receipt-id", "ack"):
        assert name not in message.headers, name


def test_message_ids_are_unique(context):
    """Each MESSAGE carries a distinct message-id."""
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "0"})
    for _ in range(20):
        client.send("SEND", {"destination": "/topic/t"}, b"x")
    ids = [f.headers["message-id"] for f in client.frames()]
    assert len(set(ids)) == 20


def test_messages_arrive_in_order(context):
    """Messages reach a subscriber in the order they were sent."""
    sender, receiver = connected(context), connected(context)
    receiver.send("SUBSCRIBE", {"destination": "/queue/q", "id": "0"})
    data = b"".join(
        encode_frame(Frame("SEND", {"destination": "/queue/q"}, str(i).encode()))
        for i in range(200)
    )
    for i in range(0, len(data), 37):
        sender.send_bytes(data[i : i + 37])
    assert [f.body for f in receiver.frames()] == [str(i).encode() for i in range(200)]


def test_unsubscribe_stops_delivery(context):
    """After UNSUBSCRIBE no more MESSAGEs arrive for that subscription."""
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "0"})
    client.send("UNSUBSCRIBE", {"id": "0"})
    client.send("SEND", {"destination": "/topic/t"}, b"x")
    assert client.frames() == []
    assert context.broker.subscriber_count("/topic/t") == 0


def test_unsubscribe_unknown_id_is_an_error(context):
    """UNSUBSCRIBE of an id that is not subscribed gets ERROR."""
    client = connected(context)
    client.send("UNSUBSCRIBE", {"id": "nope"})
    assert_error_then_closed(client)


def test_send_without_destination_is_an_error(context):
    """SEND requires a destination."""
    client = connected(context)
    client.send("SEND", {}, b"x")
    assert_error_then_closed(client)


def test_send_to_invalid_destination_is_an_error(context):
    """A SEND to a destination the broker refuses gets ERROR."""
    client = connected(context)
    client.send("SEND", {"destination": "/nowhere", "receipt": "r"}, b"x")
    assert_error_then_closed(client, **{"receipt-id": "r"})


def test_subscribe_without_id_is_an_error_in_1_2(context):
    """1.1+ SUBSCRIBE requires an id."""
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/topic/t"})
    assert_error_then_closed(client)


def test_subscribe_without_id_is_allowed_in_1_0(context):
    """A 1.0 SUBSCRIBE without id uses the destination as the subscription."""
    client = connected(context, None)
    client.send("SUBSCRIBE", {"destination": "/topic/t"})
    client.send("SEND", {"destination": "/topic/t"}, b"x")
    (message,) = client.frames()
    assert message.body == b"x"
    client.send("UNSUBSCRIBE", {"destination": "/topic/t", "receipt": "u"})
    assert client.next_frame().headers["receipt-id"] == "u"


def test_duplicate_subscription_id_is_an_error(context):
    """A subscription id can only be used once per connection."""
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "0"})
    client.send("SUBSCRIBE", {"destination": "/topic/u", "id": "0"})
    assert_error_then_closed(client)


def test_invalid_ack_mode_is_an_error(context):
    """SUBSCRIBE with an unknown ack mode gets ERROR."""
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "0", "ack": "sometimes"})
    assert_error_then_closed(client)


def test_too_many_subscriptions_is_an_error(clock):
    """More SUBSCRIBEs than max_subscriptions get ERROR."""
    context = make_context(clock=clock, max_subscriptions=2)
    client = connected(context)
    for i in range(3):
        client.send("SUBSCRIBE", {"destination": "/topic/t", "id": str(i)})
    assert_error_then_closed(client)


@pytest.mark.parametrize("command", ["SUBSCRIBE", "BEGIN", "DISCONNECT"])
def test_body_on_a_bodiless_frame_is_an_error(context, command):
    """Only SEND may carry a body from a client."""
    client = connected(context)
    client.send(command, {"destination": "/topic/t", "id": "0", "transaction": "t"}, b"junk")
    assert_error_then_closed(client)


def test_queue_messages_round_robin_between_sessions(context):
    """A /queue/ message goes to exactly one of its subscribers, in turn."""
    a, b, sender = connected(context), connected(context), connected(context)
    a.send("SUBSCRIBE", {"destination": "/queue/q", "id": "0"})
    b.send("SUBSCRIBE", {"destination": "/queue/q", "id": "0"})
    for i in range(4):
        sender.send("SEND", {"destination": "/queue/q"}, str(i).encode())
    assert [f.body for f in a.frames()] == [b"0", b"2"]
    assert [f.body for f in b.frames()] == [b"1", b"3"]


def test_sixteen_megabyte_message(context):
    """A 16 MB body within the default limit is delivered intact."""
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/topic/big", "id": "0"})
    body = b"\x00\x01abc" * (16 * 1024 * 1024 // 5)
    client.send("SEND", {"destination": "/topic/big", "receipt": "r"}, body)
    message, receipt = client.frames()
    assert message.body == body
    assert receipt.headers["receipt-id"] == "r"


# -- receipts and errors ---------------------------------------------------


RECEIPTED_FRAMES = [
    ("SUBSCRIBE", {"destination": "/topic/t", "id": "s2"}),
    ("UNSUBSCRIBE", {"id": "s1"}),
    ("SEND", {"destination": "/topic/t"}),
    ("BEGIN", {"transaction": "t2"}),
    ("COMMIT", {"transaction": "t1"}),
    ("ABORT", {"transaction": "t1"}),
    ("DISCONNECT", {}),
]


@pytest.mark.parametrize(("command", "headers"), RECEIPTED_FRAMES,
                         ids=[command for command, _ in RECEIPTED_FRAMES])
def test_receipt_on_every_frame(context, command, headers):
    """Any client frame with a receipt header is answered with a matching RECEIPT."""
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/topic/other", "id": "s1"})
    client.send("BEGIN", {"transaction": "t1"})
    client.send(command, {**headers, "receipt": "rcpt-77"})
    receipts = only(client.frames(), "RECEIPT")
    assert [r.headers["receipt-id"] for r in receipts] == ["rcpt-77"]


@pytest.mark.parametrize("command", ["ACK", "NACK"])
def test_receipt_on_ack_and_nack(context, command):
    """ACK and NACK with a receipt get a RECEIPT too."""
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/queue/q", "id": "0", "ack": "client-individual"})
    client.send("SEND", {"destination": "/queue/q"}, b"x")
    (message,) = client.frames()
    client.send(command, {"id": message.headers["ack"], "receipt": "r-ack"})
    receipts = only(client.frames(), "RECEIPT")
    assert [r.headers["receipt-id"] for r in receipts] == ["r-ack"]


def test_error_carries_receipt_id(context):
    """An ERROR caused by a frame with a receipt names it in receipt-id."""
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/topic/t", "receipt": "77"})
    assert_error_then_closed(client, **{"receipt-id": "77"})


def test_error_has_text_body_and_content_headers(context):
    """ERROR frames carry message, content-type, content-length and an explanatory body."""
    client = connected(context)
    client.send("SEND", {})
    error = assert_error_then_closed(client)
    assert error.headers["content-type"].startswith("text/plain")
    assert error.headers["content-length"] == str(len(error.body))


@pytest.mark.parametrize("command", ["FOO", "send", "Connect", "MESSAGE"])
def test_unknown_command_is_an_error(context, command):
    """A command the server does not know (commands are case-sensitive) gets ERROR and close."""
    client = connected(context)
    client.send(command, {"receipt": "r"})
    assert_error_then_closed(client, **{"receipt-id": "r"})


def test_frames_after_error_are_ignored(context):
    """Once ERROR is sent, later bytes produce nothing."""
    client = connected(context)
    client.send("FOO", {})
    client.frames()
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "0", "receipt": "r"})
    assert client.frames() == []


def test_undefined_escape_is_an_error(context):
    """An undefined escape sequence in a 1.2 header gets ERROR and close."""
    client = connected(context)
    client.send_bytes(b"SEND\ndestination:/topic/t\nk:a\\tb\n\n\x00")
    assert_error_then_closed(client)


def test_oversized_frame_gets_error_not_silent_drop(clock):
    """A frame over max_frame_size gets ERROR naming its receipt, then close."""
    context = make_context(clock=clock, max_frame_size=1024)
    client = connected(context)
    client.send("SEND", {"destination": "/topic/t", "receipt": "big"}, b"x" * 2048)
    assert_error_then_closed(client, **{"receipt-id": "big"})


def test_oversized_body_without_content_length_gets_error(clock):
    """A NUL-terminated body growing past max_frame_size gets ERROR naming its receipt."""
    context = make_context(clock=clock, max_frame_size=1024)
    client = connected(context)
    client.send_bytes(b"SEND\ndestination:/topic/t\nreceipt:big\n\n")
    for _ in range(100):
        if client.closed:
            break
        client.send_bytes(b"x" * 100)
    assert_error_then_closed(client, **{"receipt-id": "big"})


def test_missing_nul_after_content_length_gets_error(context):
    """A body not followed by NUL after content-length bytes gets ERROR naming its receipt."""
    client = connected(context)
    client.send_bytes(b"SEND\ndestination:/topic/t\nreceipt:r\ncontent-length:2\n\nabc\x00")
    assert_error_then_closed(client, **{"receipt-id": "r"})


def test_too_many_headers_gets_error(clock):
    """A frame with more than max_headers headers gets ERROR then close."""
    context = make_context(clock=clock, max_headers=5)
    client = connected(context)
    client.send("SEND", {"destination": "/topic/t", **{f"h{i}": "v" for i in range(10)}})
    assert_error_then_closed(client)


def test_oversized_header_line_in_pieces_gets_error(clock):
    """A header line growing past max_header_length in small pieces gets ERROR then close."""
    context = make_context(clock=clock, max_header_length=256)
    client = connected(context)
    client.send_bytes(b"SEND\nk:")
    for _ in range(200):
        if client.closed:
            break
        client.send_bytes(b"v" * 8)
    assert_error_then_closed(client)


# -- ACK / NACK ------------------------------------------------------------


def queue_setup(context, ack: str, count: int = 3, version: str = "1.2"):
    """A consumer subscribed to /queue/q in ``ack`` mode holding ``count`` messages."""
    consumer, sender = connected(context, version), connected(context)
    consumer.send("SUBSCRIBE", {"destination": "/queue/q", "id": "sub", "ack": ack})
    for i in range(count):
        sender.send("SEND", {"destination": "/queue/q"}, f"m{i}".encode())
    messages = consumer.frames()
    assert [m.body for m in messages] == [f"m{i}".encode() for i in range(count)]
    return consumer, sender, messages


def second_consumer(context) -> Client:
    other = connected(context)
    other.send("SUBSCRIBE", {"destination": "/queue/q", "id": "other"})
    return other


def test_ack_header_is_present_and_distinct_per_subscription(context):
    """In client modes a 1.2 MESSAGE has an ack header, distinct per subscription."""
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "a", "ack": "client"})
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "b", "ack": "client-individual"})
    client.send("SEND", {"destination": "/topic/t"}, b"x")
    first, second = client.frames()
    assert first.headers["ack"] and second.headers["ack"]
    assert first.headers["ack"] != second.headers["ack"]


def test_auto_mode_message_has_no_ack_header(context):
    """An auto-ack subscription's MESSAGE needs no ack header."""
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "a"})
    client.send("SEND", {"destination": "/topic/t"}, b"x")
    (message,) = client.frames()
    assert "ack" not in message.headers


def test_ack_without_id_is_an_error(context):
    """A 1.2 ACK without an id header gets ERROR."""
    consumer, _, _ = queue_setup(context, "client")
    consumer.send("ACK", {"receipt": "r"})
    assert_error_then_closed(consumer, **{"receipt-id": "r"})


def test_ack_with_unknown_id_is_an_error(context):
    """A 1.2 ACK naming no pending message gets ERROR."""
    consumer, _, _ = queue_setup(context, "client")
    consumer.send("ACK", {"id": "nonsense"})
    assert_error_then_closed(consumer)


@pytest.mark.parametrize("ack_id", ["m@\u00b2", "m@", "@1", "nope", "m@99", "m@-1"])
def test_malformed_ack_id_is_an_error(context, ack_id):
    """An ACK whose id is malformed or names nothing gets ERROR and close, never an exception."""
    consumer, _, _ = queue_setup(context, "client")
    consumer.send("ACK", {"id": ack_id, "receipt": "r"})
    assert_error_then_closed(consumer, **{"receipt-id": "r"})


def test_nack_with_wrong_subscription_is_an_error(context):
    """A 1.1 NACK naming a subscription that does not hold the message gets ERROR."""
    consumer, _, messages = queue_setup(context, "client", version="1.1")
    consumer.send("SUBSCRIBE", {"destination": "/topic/t", "id": "other", "ack": "client"})
    consumer.send("NACK", {"message-id": messages[0].headers["message-id"],
                           "subscription": "other"})
    assert_error_then_closed(consumer)


def test_nack_with_unknown_subscription_is_an_error(context):
    """A 1.1 NACK naming a subscription that does not exist gets ERROR."""
    consumer, _, messages = queue_setup(context, "client", version="1.1")
    consumer.send("NACK", {"message-id": messages[0].headers["message-id"],
                           "subscription": "nope"})
    assert_error_then_closed(consumer)


def test_nack_is_not_part_of_1_0(context):
    """NACK in a 1.0 session is an unknown command."""
    consumer, _, messages = queue_setup(context, "client", version="1.0")
    consumer.send("NACK", {"message-id": messages[0].headers["message-id"]})
    assert_error_then_closed(consumer)


def test_cumulative_client_ack(context):
    """In client mode an ACK settles that message and all earlier ones of the subscription."""
    consumer, _, messages = queue_setup(context, "client")
    consumer.send("ACK", {"id": messages[1].headers["ack"], "receipt": "r"})
    assert consumer.next_frame().command == "RECEIPT"
    other = second_consumer(context)
    consumer.send("DISCONNECT", {})
    assert [f.body for f in other.frames()] == [b"m2"]


def test_client_individual_ack(context):
    """In client-individual mode an ACK settles only the message it names."""
    consumer, _, messages = queue_setup(context, "client-individual")
    consumer.send("ACK", {"id": messages[1].headers["ack"]})
    other = second_consumer(context)
    consumer.send("DISCONNECT", {})
    assert [f.body for f in other.frames()] == [b"m0", b"m2"]


def test_ack_1_1_by_message_id_and_subscription(context):
    """A 1.1 ACK names message-id and subscription."""
    consumer, _, messages = queue_setup(context, "client-individual", version="1.1")
    for m in messages:
        consumer.send("ACK", {"message-id": m.headers["message-id"], "subscription": "sub"})
    other = second_consumer(context)
    consumer.send("DISCONNECT", {})
    assert other.frames() == []
    assert not only(consumer.frames(), "ERROR")


def test_ack_1_0_by_message_id(context):
    """A 1.0 ACK names only the message-id."""
    consumer, _, messages = queue_setup(context, "client", version="1.0")
    consumer.send("ACK", {"message-id": messages[2].headers["message-id"], "receipt": "r"})
    assert consumer.next_frame().headers["receipt-id"] == "r"
    other = second_consumer(context)
    consumer.send("DISCONNECT", {})
    assert other.frames() == []


def test_nack_redelivers_queue_message(context):
    """A NACKed queue message is delivered again, with the same message-id."""
    consumer, _, messages = queue_setup(context, "client-individual", count=1)
    consumer.send("NACK", {"id": messages[0].headers["ack"]})
    (again,) = consumer.frames()
    assert again.body == b"m0"
    assert again.headers["message-id"] == messages[0].headers["message-id"]


def test_nack_in_client_mode_covers_earlier_messages(context):
    """A client-mode NACK returns that message and every earlier unacked one, in order."""
    consumer, _, messages = queue_setup(context, "client", count=3)
    other = second_consumer(context)
    consumer.send("NACK", {"id": messages[1].headers["ack"]})
    redelivered = consumer.frames() + other.frames()
    assert sorted(f.body for f in redelivered) == [b"m0", b"m1"]


def test_redelivery_after_disconnect_with_client_ack(context):
    """Unacked client-mode queue messages go to another consumer after DISCONNECT, in order."""
    consumer, _, _ = queue_setup(context, "client")
    other = second_consumer(context)
    consumer.send("DISCONNECT", {})
    assert [f.body for f in other.frames()] == [b"m0", b"m1", b"m2"]


def test_unsubscribe_returns_unacked_queue_messages(context):
    """UNSUBSCRIBE of a client-ack queue subscription hands its unacked messages to others."""
    consumer, _, _ = queue_setup(context, "client-individual", count=2)
    other = second_consumer(context)
    consumer.send("UNSUBSCRIBE", {"id": "sub", "receipt": "u"})
    assert consumer.next_frame().headers["receipt-id"] == "u"
    assert [f.body for f in other.frames()] == [b"m0", b"m1"]


def test_redelivery_after_connection_lost(context):
    """Unacked queue messages are redelivered when the connection drops without DISCONNECT."""
    consumer, _, _ = queue_setup(context, "client-individual", count=2)
    consumer.session.connection_lost()
    other = second_consumer(context)
    assert [f.body for f in other.frames()] == [b"m0", b"m1"]


def test_redelivery_after_disconnect_with_two_subscriptions_on_one_queue(context):
    """A closing session's unacked messages reach other consumers, not its dead subscriptions."""
    consumer, sender = connected(context), connected(context)
    consumer.send("SUBSCRIBE", {"destination": "/queue/q", "id": "a", "ack": "client"})
    consumer.send("SUBSCRIBE", {"destination": "/queue/q", "id": "b", "ack": "client"})
    sender.send("SEND", {"destination": "/queue/q"}, b"m0")
    sender.send("SEND", {"destination": "/queue/q"}, b"m1")
    assert len(consumer.frames()) == 2
    other = second_consumer(context)
    consumer.send("DISCONNECT", {})
    assert sorted(f.body for f in other.frames()) == [b"m0", b"m1"]


# -- transactions ----------------------------------------------------------


def test_ack_in_aborted_transaction_has_no_effect(context):
    """An ACK inside a transaction that is aborted leaves the message unacked."""
    consumer, _, messages = queue_setup(context, "client-individual", count=1)
    consumer.send("BEGIN", {"transaction": "tx"})
    consumer.send("ACK", {"id": messages[0].headers["ack"], "transaction": "tx"})
    consumer.send("ABORT", {"transaction": "tx"})
    other = second_consumer(context)
    consumer.send("DISCONNECT", {})
    assert [f.body for f in other.frames()] == [b"m0"]


def test_ack_in_committed_transaction_takes_effect(context):
    """An ACK inside a committed transaction settles the message at COMMIT."""
    consumer, _, messages = queue_setup(context, "client-individual", count=1)
    consumer.send("BEGIN", {"transaction": "tx"})
    consumer.send("ACK", {"id": messages[0].headers["ack"], "transaction": "tx"})
    consumer.send("COMMIT", {"transaction": "tx"})
    other = second_consumer(context)
    consumer.send("DISCONNECT", {})
    assert other.frames() == []


def test_same_transaction_begun_twice_is_an_error(context):
    """BEGIN with a transaction id already active gets ERROR."""
    client = connected(context)
    client.send("BEGIN", {"transaction": "tx"})
    client.send("BEGIN", {"transaction": "tx", "receipt": "r"})
    assert_error_then_closed(client, **{"receipt-id": "r"})


def test_transaction_id_can_be_reused_after_commit(context):
    """Once committed, a transaction id may be begun again."""
    client = connected(context)
    client.send("BEGIN", {"transaction": "tx"})
    client.send("COMMIT", {"transaction": "tx"})
    client.send("BEGIN", {"transaction": "tx", "receipt": "r"})
    assert client.next_frame().headers["receipt-id"] == "r"


def test_commit_applies_sends_in_order(context):
    """SENDs in a transaction are delivered only at COMMIT, in the order sent."""
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "0"})
    client.send("BEGIN", {"transaction": "tx"})
    for i in range(5):
        client.send("SEND", {"destination": "/topic/t", "transaction": "tx"}, str(i).encode())
    assert client.frames() == []
    client.send("COMMIT", {"transaction": "tx", "receipt": "c"})
    frames = client.frames()
    assert [f.body for f in only(frames, "MESSAGE")] == [b"0", b"1", b"2", b"3", b"4"]
    assert frames[-1].command == "RECEIPT"


def test_abort_discards_sends(context):
    """ABORT throws away the transaction's SENDs."""
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "0"})
    client.send("BEGIN", {"transaction": "tx"})
    client.send("SEND", {"destination": "/topic/t", "transaction": "tx"}, b"x")
    client.send("ABORT", {"transaction": "tx"})
    client.send("SEND", {"destination": "/topic/t"}, b"after")
    assert [f.body for f in client.frames()] == [b"after"]


def test_disconnect_aborts_open_transactions(context):
    """A transaction still open at disconnect is aborted."""
    watcher = connected(context)
    watcher.send("SUBSCRIBE", {"destination": "/topic/t", "id": "0"})
    client = connected(context)
    client.send("BEGIN", {"transaction": "tx"})
    client.send("SEND", {"destination": "/topic/t", "transaction": "tx"}, b"x")
    client.send("DISCONNECT", {})
    client.session.connection_lost()
    assert watcher.frames() == []


def test_transaction_with_an_invalid_send_delivers_none_of_it(context):
    """A transaction is applied atomically: one refused SEND means none of its SENDs arrive."""
    watcher = connected(context)
    watcher.send("SUBSCRIBE", {"destination": "/topic/t", "id": "0"})
    client = connected(context)
    client.send("BEGIN", {"transaction": "tx"})
    client.send("SEND", {"destination": "/topic/t", "transaction": "tx"}, b"first")
    client.send("SEND", {"destination": "/nowhere", "transaction": "tx"}, b"bad")
    client.send("SEND", {"destination": "/topic/t", "transaction": "tx"}, b"third")
    client.send("COMMIT", {"transaction": "tx"})
    assert only(client.frames(), "ERROR"), "the refused SEND was not reported"
    assert watcher.frames() == [], "part of a failed transaction was delivered"


@pytest.mark.parametrize("command", ["COMMIT", "ABORT"])
def test_unknown_transaction_is_an_error(context, command):
    """COMMIT or ABORT of a transaction never begun gets ERROR."""
    client = connected(context)
    client.send(command, {"transaction": "ghost"})
    assert_error_then_closed(client)


def test_send_in_unknown_transaction_is_an_error(context):
    """A SEND naming a transaction that was not begun gets ERROR."""
    client = connected(context)
    client.send("SEND", {"destination": "/topic/t", "transaction": "ghost"}, b"x")
    assert_error_then_closed(client)


# -- DISCONNECT ------------------------------------------------------------


def test_disconnect_receipt_comes_before_close(context):
    """DISCONNECT's RECEIPT is written, then the transport is closed."""
    client = connected(context)
    client.send("DISCONNECT", {"receipt": "bye"})
    (receipt,) = client.frames()
    assert receipt.headers["receipt-id"] == "bye"
    assert client.closed
    assert client.transport.writes_after_close == []


def test_frames_after_disconnect_are_ignored(context):
    """Frames after DISCONNECT, in the same read or later, have no effect."""
    watcher = connected(context)
    watcher.send("SUBSCRIBE", {"destination": "/topic/t", "id": "0"})
    client = connected(context)
    client.send_bytes(
        encode_frame(Frame("DISCONNECT", {"receipt": "bye"}))
        + encode_frame(Frame("SEND", {"destination": "/topic/t"}, b"late"))
    )
    client.send("SEND", {"destination": "/topic/t", "receipt": "r2"}, b"later")
    assert [f.headers.get("receipt-id") for f in client.frames()] == ["bye"]
    assert watcher.frames() == []


def test_disconnect_processes_earlier_frames(context):
    """Frames before DISCONNECT in the same read are handled first."""
    watcher = connected(context)
    watcher.send("SUBSCRIBE", {"destination": "/topic/t", "id": "0"})
    client = connected(context)
    client.send_bytes(
        encode_frame(Frame("SEND", {"destination": "/topic/t"}, b"first"))
        + encode_frame(Frame("DISCONNECT", {"receipt": "bye"}))
    )
    assert [f.body for f in watcher.frames()] == [b"first"]
    assert client.next_frame().headers["receipt-id"] == "bye"


def test_connection_lost_releases_everything(context):
    """A lost connection drops its subscriptions and leaves the heart-beat monitor."""
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "0"})
    assert len(context.heartbeats) == 1
    client.session.connection_lost()
    assert context.broker.subscriber_count("/topic/t") == 0
    assert len(context.heartbeats) == 0


# -- unicode and escaping --------------------------------------------------


def test_korean_headers_and_bodies(context):
    """Korean header names, values, destinations and bodies arrive unchanged."""
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/topic/대화방", "id": "구독"})
    body = "안녕하세요, 세계!".encode()
    client.send("SEND", {"destination": "/topic/대화방", "보낸이": "김철수"}, body)
    (message,) = client.frames()
    assert message.headers["destination"] == "/topic/대화방"
    assert message.headers["subscription"] == "구독"
    assert message.headers["보낸이"] == "김철수"
    assert message.headers["content-length"] == str(len(body))
    assert message.body == body


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_outgoing_headers_are_escaped_per_version(context, version):
    """Header values with colon, newline and backslash reach 1.1/1.2 subscribers intact."""
    value = "a:b\nc\\d"
    receiver = connected(context, version)
    receiver.send("SUBSCRIBE", {"destination": "/topic/t", "id": "s:1"})
    sender = connected(context, "1.2")
    sender.send("SEND", {"destination": "/topic/t", "k": value}, b"x")
    raw = b"".join(receiver.transport.writes[1:])
    assert b"k:a\\cb\\nc\\\\d\n" in raw
    assert b"subscription:s\\c1\n" in raw
    (message,) = receiver.frames()
    assert message.headers["k"] == value
    assert message.headers["subscription"] == "s:1"


def test_cr_is_escaped_for_1_2(context):
    """A CR in a header value is sent as \\r to a 1.2 subscriber."""
    receiver = connected(context, "1.2")
    receiver.send("SUBSCRIBE", {"destination": "/topic/t", "id": "0"})
    receiver.send("SEND", {"destination": "/topic/t", "k": "a\rb"}, b"x")
    assert b"k:a\\rb\n" in receiver.transport.writes[-1]
    (message,) = receiver.frames()
    assert message.headers["k"] == "a\rb"


def test_1_0_headers_pass_literally(context):
    """Between 1.0 clients backslashes and colons in values travel as they are."""
    receiver = connected(context, None)
    receiver.send("SUBSCRIBE", {"destination": "/topic/t"})
    sender = connected(context, None)
    sender.send("SEND", {"destination": "/topic/t", "k": "a\\cb:c"}, b"x")
    assert b"k:a\\cb:c\n" in receiver.transport.writes[-1]


def test_newline_in_header_cannot_break_1_0_framing(context):
    """A 1.2 header value holding newlines never injects headers or breaks a 1.0 MESSAGE."""
    receiver = connected(context, None)
    receiver.send("SUBSCRIBE", {"destination": "/topic/t", "id": "0"})
    sender = connected(context, "1.2")
    sender.send("SEND", {"destination": "/topic/t", "k": "x\nevil:1\n\nbody"}, b"real")
    messages = only(receiver.frames(), "MESSAGE")  # parsing must not fail either
    assert len(messages) == 1
    for message in messages:
        assert "evil" not in message.headers
        assert message.body == b"real"
        assert message.headers["subscription"] == "0"


def test_error_headers_are_escaped(context):
    """An ERROR's receipt-id is escaped for the session's version."""
    client = connected(context, "1.2")
    client.send("SUBSCRIBE", {"destination": "/topic/t", "receipt": "r:1\n2"})
    error = assert_error_then_closed(client)
    assert error.headers["receipt-id"] == "r:1\n2"


# -- /app destinations and /user/queue/errors --------------------------------


def app_context(clock, router: AppRouter):
    return make_context(clock=clock, router=router, broker=Broker())


def test_application_error_goes_to_user_errors_queue(clock):
    """An ApplicationError is told on /user/queue/errors with receipt-id; the connection stays."""
    router = AppRouter()

    def refuse(frame, ctx, variables):
        raise ApplicationError("room is closed", code="closed")

    router.add("/rooms/{room}/send", refuse)
    context = app_context(clock, router)
    client = connected(context)
    other = connected(context)
    other.send("SUBSCRIBE", {"destination": "/user/queue/errors", "id": "e"})
    client.send("SUBSCRIBE", {"destination": "/user/queue/errors", "id": "errors"})
    client.send("SEND", {"destination": "/app/rooms/lobby/send", "receipt": "r9"}, b"{}")
    frames = client.frames()
    (message,) = only(frames, "MESSAGE")
    assert message.headers["destination"] == "/user/queue/errors"
    assert message.headers["subscription"] == "errors"
    assert message.headers["receipt-id"] == "r9"
    assert message.headers["message"] == "room is closed"
    payload = json.loads(message.body)
    assert payload["error"] == "closed"
    assert payload["destination"] == "/app/rooms/lobby/send"
    assert not only(frames, "ERROR")
    assert not client.closed
    assert other.frames() == [], "another session saw this session's error"
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "t", "receipt": "still-here"})
    assert client.next_frame().headers["receipt-id"] == "still-here"


def test_failed_deferred_application_error_goes_to_user_errors_queue(clock):
    """A handler Deferred failing with ApplicationError is reported on /user/queue/errors."""
    router = AppRouter()
    pending: Deferred = Deferred()
    router.add("/slow", lambda frame, ctx, v: pending)
    context = app_context(clock, router)
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/user/queue/errors", "id": "errors"})
    client.send("SEND", {"destination": "/app/slow", "receipt": "r1"}, b"x")
    pending.errback(ApplicationError("nope"))
    (message,) = client.frames()
    assert message.headers["receipt-id"] == "r1"
    assert not client.closed


def test_app_destination_without_handler_is_an_error(clock):
    """A SEND to an /app destination nobody handles gets ERROR and close."""
    context = app_context(clock, AppRouter())
    client = connected(context)
    client.send("SEND", {"destination": "/app/unknown", "receipt": "r"}, b"x")
    assert_error_then_closed(client, **{"receipt-id": "r"})


def test_app_handler_gets_variables_and_can_publish(clock):
    """A handler receives path variables and its publications reach subscribers."""
    router = AppRouter()
    seen = []

    def handler(frame, ctx, variables):
        seen.append(variables)
        ctx.publish(f"/topic/rooms.{variables['room']}", frame.body.upper())

    router.add("/rooms/{room}/send", handler)
    context = app_context(clock, router)
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/topic/rooms.lobby", "id": "0"})
    client.send("SEND", {"destination": "/app/rooms/lobby/send", "receipt": "r"}, b"hi")
    message, receipt = client.frames()
    assert seen == [{"room": "lobby"}]
    assert message.body == b"HI"
    assert receipt.headers["receipt-id"] == "r"


def test_deferred_handler_delays_receipt_and_keeps_order(clock):
    """A handler's Deferred holds its RECEIPT and every later one until it fires."""
    router = AppRouter()
    pending: Deferred = Deferred()
    router.add("/slow", lambda frame, ctx, v: pending)
    context = app_context(clock, router)
    client = connected(context)
    client.send("SEND", {"destination": "/app/slow", "receipt": "r1"}, b"x")
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "0", "receipt": "r2"})
    client.send("SEND", {"destination": "/topic/t", "receipt": "r3"}, b"y")
    frames = client.frames()
    assert only(frames, "RECEIPT") == []
    assert [f.body for f in only(frames, "MESSAGE")] == [b"y"]
    pending.callback(None)
    receipts = [f.headers["receipt-id"] for f in client.frames()]
    assert receipts == ["r1", "r2", "r3"]


def test_disconnect_waits_for_slow_receipted_send(clock):
    """DISCONNECT behind a durable SEND sends both receipts in order, then closes."""
    router = AppRouter()
    pending: Deferred = Deferred()
    router.add("/slow", lambda frame, ctx, v: pending)
    context = app_context(clock, router)
    client = connected(context)
    client.send("SEND", {"destination": "/app/slow", "receipt": "r1"}, b"x")
    client.send("DISCONNECT", {"receipt": "bye"})
    assert client.frames() == [] and not client.closed
    pending.callback(None)
    assert [f.headers["receipt-id"] for f in client.frames()] == ["r1", "bye"]
    assert client.closed


def test_unreceipted_slow_send_still_holds_later_receipts(clock):
    """A RECEIPT acknowledges every earlier frame, so it waits for an unreceipted durable SEND."""
    router = AppRouter()
    pending: Deferred = Deferred()
    router.add("/slow", lambda frame, ctx, v: pending)
    context = app_context(clock, router)
    client = connected(context)
    client.send("SEND", {"destination": "/app/slow"}, b"x")
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "0", "receipt": "r2"})
    assert only(client.frames(), "RECEIPT") == [], "RECEIPT sent before an earlier SEND finished"
    pending.callback(None)
    assert [f.headers["receipt-id"] for f in client.frames()] == ["r2"]


def test_disconnect_waits_for_unreceipted_slow_send(clock):
    """DISCONNECT's receipt and close wait for an earlier durable SEND even without its receipt."""
    router = AppRouter()
    pending: Deferred = Deferred()
    router.add("/slow", lambda frame, ctx, v: pending)
    context = app_context(clock, router)
    client = connected(context)
    client.send("SEND", {"destination": "/app/slow"}, b"x")
    client.send("DISCONNECT", {"receipt": "bye"})
    assert client.frames() == [] and not client.closed
    pending.callback(None)
    assert [f.headers["receipt-id"] for f in client.frames()] == ["bye"]
    assert client.closed


def test_unexpected_handler_exception_is_reported_not_raised(clock):
    """A handler raising an unexpected exception is reported to the client, not raised."""
    router = AppRouter()

    def broken(frame, ctx, variables):
        raise RuntimeError("bug in handler")

    router.add("/broken", broken)
    context = app_context(clock, router)
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/user/queue/errors", "id": "errors"})
    client.send("SEND", {"destination": "/app/broken", "receipt": "r"}, b"x")
    frames = client.frames()
    told = [f for f in frames if f.command == "ERROR"
            or f.headers.get("destination") == "/user/queue/errors"]
    assert told, frames


def test_app_sends_in_transaction_run_at_commit(clock):
    """An /app SEND inside a transaction reaches its handler only at COMMIT."""
    router = AppRouter()
    calls = []
    router.add("/echo", lambda frame, ctx, v: calls.append(frame.body))
    context = app_context(clock, router)
    client = connected(context)
    client.send("BEGIN", {"transaction": "tx"})
    client.send("SEND", {"destination": "/app/echo", "transaction": "tx"}, b"1")
    assert calls == []
    client.send("COMMIT", {"transaction": "tx", "receipt": "c"})
    assert calls == [b"1"]
    assert client.next_frame().headers["receipt-id"] == "c"


# -- the inbound interceptor chain -------------------------------------------


class Recording:
    """An interceptor that records what it sees and passes it on."""

    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        self.name = name
        self.log = log

    def inbound(self, frame, session):
        self.log.append((self.name, frame.command))
        return frame


class Rejecting:
    """An interceptor that raises ``error`` for SENDs and passes everything else."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def inbound(self, frame, session):
        if frame.command == "SEND":
            raise self.error
        return frame


class Waiting:
    """An interceptor that holds every SEND until its Deferred is fired by the test."""

    def __init__(self) -> None:
        self.pending: list[Deferred] = []

    def inbound(self, frame, session):
        if frame.command != "SEND":
            return frame
        d: Deferred = Deferred()
        self.pending.append(d)
        return d.addCallback(lambda _: frame)


def subscribed_watcher(context, destination: str = "/topic/t") -> Client:
    watcher = connected(make_context(broker=context.broker))
    watcher.send("SUBSCRIBE", {"destination": destination, "id": "w"})
    return watcher


def test_interceptors_see_every_frame_in_order(clock):
    """Every frame, CONNECT included, passes each interceptor in the configured order."""
    seen: list[tuple[str, str]] = []
    context = make_context(clock=clock, interceptors=[Recording("a", seen), Recording("b", seen)])
    client = connected(context)
    client.send("SEND", {"destination": "/topic/t"}, b"x")
    assert seen == [("a", "CONNECT"), ("b", "CONNECT"), ("a", "SEND"), ("b", "SEND")]


class SendOnly(Recording):
    """A ``Recording`` that declares it handles SEND frames only."""

    commands = frozenset({"SEND"})


def test_interceptor_declaring_commands_sees_only_those(clock):
    """An interceptor with ``commands`` is skipped for other frames; one without sees all."""
    seen: list[tuple[str, str]] = []
    context = make_context(clock=clock, interceptors=[SendOnly("s", seen), Recording("a", seen)])
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "1"})
    client.send("SEND", {"destination": "/topic/t"}, b"x")
    assert seen == [("a", "CONNECT"), ("a", "SUBSCRIBE"), ("s", "SEND"), ("a", "SEND")]


def test_chain_follows_interceptors_changed_in_place(clock):
    """Interceptors added to the context's list after frames flowed still see the next frame."""
    seen: list[tuple[str, str]] = []
    context = make_context(clock=clock)
    client = connected(context)
    client.send("SEND", {"destination": "/topic/t"}, b"x")
    context.interceptors.append(Recording("late", seen))
    client.send("SEND", {"destination": "/topic/t"}, b"y")
    assert seen == [("late", "SEND")]


def test_unknown_commands_do_not_grow_the_chain_cache(clock):
    """Frames with ever new unknown commands leave the per-command chain cache bounded."""
    context = make_context(clock=clock)
    for n in range(500):
        client = connected(context)
        client.send(f"BOGUS{n}", {})
        assert_error_then_closed(client, message="unknown command")
    assert len(context._chains) <= 64


def test_interceptor_may_change_the_frame(clock):
    """A frame an interceptor returns changed is what the broker receives."""

    class Stamping:
        def inbound(self, frame, session):
            if frame.command != "SEND":
                return frame
            return Frame(frame.command, {**frame.headers, "stamped": session.session_id},
                         frame.body)

    context = make_context(clock=clock, interceptors=[Stamping()])
    watcher = subscribed_watcher(context)
    client = connected(context)
    client.send("SEND", {"destination": "/topic/t"}, b"x")
    (message,) = watcher.frames()
    assert message.headers["stamped"] == client.session.session_id


def test_interceptor_protocol_error_is_error_then_close_with_receipt(clock):
    """A ProtocolError from an interceptor ends in ERROR naming the receipt, then close."""
    context = make_context(clock=clock, interceptors=[Rejecting(ProtocolError("forbidden"))])
    watcher = subscribed_watcher(context)
    client = connected(context)
    client.send("SEND", {"destination": "/topic/t", "receipt": "r1"}, b"x")
    error = assert_error_then_closed(client, **{"receipt-id": "r1"})
    assert error.headers["message"] == "forbidden"
    assert watcher.frames() == []


def test_interceptor_auth_error_is_error_then_close(clock):
    """An AuthError from an interceptor ends the connection with its message."""
    context = make_context(clock=clock, interceptors=[Rejecting(AuthError("not allowed"))])
    client = connected(context)
    client.send("SEND", {"destination": "/topic/t"}, b"x")
    assert assert_error_then_closed(client).headers["message"] == "not allowed"


def test_interceptor_application_error_is_reported_and_connection_stays(clock):
    """An ApplicationError drops the frame, is reported on /user/queue/errors, no RECEIPT."""
    error = ApplicationError("too chatty", code="slow-down")
    context = make_context(clock=clock, interceptors=[Rejecting(error)])
    watcher = subscribed_watcher(context)
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/user/queue/errors", "id": "e"})
    client.send("SEND", {"destination": "/topic/t", "receipt": "r1"}, b"x")
    client.send("SUBSCRIBE", {"destination": "/topic/u", "id": "1", "receipt": "r2"})
    frames = client.frames()
    assert [f.command for f in frames] == ["MESSAGE", "RECEIPT"]
    assert frames[0].headers["receipt-id"] == "r1"
    assert json.loads(frames[0].body)["error"] == "slow-down"
    assert frames[1].headers["receipt-id"] == "r2"
    assert not client.closed
    assert watcher.frames() == []


def test_interceptor_unexpected_exception_is_internal_error(clock):
    """An interceptor failing unexpectedly gives ERROR 'internal server error', not a traceback."""
    context = make_context(clock=clock, interceptors=[Rejecting(KeyError("oops"))])
    client = connected(context)
    client.send("SEND", {"destination": "/topic/t"}, b"x")
    assert assert_error_then_closed(client).headers["message"] == "internal server error"


def test_waiting_interceptor_pauses_reading_and_keeps_frame_order(clock):
    """While an interceptor's Deferred waits, input pauses and later frames wait behind it."""
    waiting = Waiting()
    context = make_context(clock=clock, interceptors=[waiting])
    watcher = subscribed_watcher(context)
    client = connected(context)
    client.send_bytes(
        encode_frame(Frame("SEND", {"destination": "/topic/t"}, b"1"), "1.2")
        + encode_frame(Frame("SUBSCRIBE", {"destination": "/topic/x", "id": "s",
                                           "receipt": "r"}), "1.2")
        + encode_frame(Frame("SEND", {"destination": "/topic/t"}, b"2"), "1.2")
    )
    assert client.transport.reading_paused
    assert len(waiting.pending) == 1
    assert len(client.session._held) == 2
    assert client.frames() == []
    waiting.pending[0].callback(None)
    # The SUBSCRIBE ran (its receipt is out) and the second SEND now waits in turn.
    assert [f.headers.get("receipt-id") for f in client.frames()] == ["r"]
    assert client.transport.reading_paused
    waiting.pending[1].callback(None)
    assert not client.transport.reading_paused
    assert [m.body for m in watcher.frames()] == [b"1", b"2"]


def test_waiting_interceptor_failure_closes_with_error(clock):
    """A waiting interceptor's Deferred failing with ProtocolError gives ERROR then close."""
    waiting = Waiting()
    context = make_context(clock=clock, interceptors=[waiting])
    client = connected(context)
    client.send("SEND", {"destination": "/topic/t", "receipt": "r9"}, b"x")
    client.send("SEND", {"destination": "/topic/t"}, b"y")
    waiting.pending[0].errback(ProtocolError("refused later"))
    error = assert_error_then_closed(client, **{"receipt-id": "r9"})
    assert error.headers["message"] == "refused later"
    assert len(waiting.pending) == 1


def test_already_fired_deferred_does_not_pause(clock):
    """An interceptor returning a fired Deferred passes the frame without pausing input."""

    class Immediate:
        def inbound(self, frame, session):
            return succeed(frame)

    context = make_context(clock=clock, interceptors=[Immediate()])
    watcher = subscribed_watcher(context)
    client = connected(context)
    client.send("SEND", {"destination": "/topic/t"}, b"x")
    assert client.transport.pauses == 0
    assert [m.body for m in watcher.frames()] == [b"x"]


def test_session_is_the_interceptors_view(clock):
    """Interceptors see the session id, version, connection and principal of the session."""
    views = []

    class Looking:
        def inbound(self, frame, session):
            views.append((frame.command, session.version, session.connection.peer,
                          session.principal))
            return frame

    class Named:
        def authenticate(self, frame, connection):
            return Principal("u1", "Una")

    context = make_context(clock=clock, authenticator=Named(), interceptors=[Looking()])
    client = Client(context, peer="198.51.100.4:5000")
    client.connect("1.2")
    client.send("SEND", {"destination": "/topic/t"}, b"x")
    principal = Principal("u1", "Una")
    assert views == [("CONNECT", "1.0", "198.51.100.4:5000", principal),
                     ("SEND", "1.2", "198.51.100.4:5000", principal)]


def test_authenticated_is_refused_after_connect(clock):
    """Calling authenticated() outside CONNECT is a protocol error that closes the session."""

    class Rebinding:
        def inbound(self, frame, session):
            if frame.command == "SEND":
                session.authenticated(Principal("root", "root"))
            return frame

    context = make_context(clock=clock, interceptors=[Rebinding()])
    client = connected(context)
    client.send("SEND", {"destination": "/topic/t"}, b"x")
    assert_error_then_closed(client)
    assert client.session.principal is None


def test_principal_routes_user_destinations_by_user_id(clock):
    """An authenticated session's /user/queue/... is keyed by its principal's user id."""

    class Named:
        def authenticate(self, frame, connection):
            return Principal("u-" + frame.headers["login"], frame.headers["login"])

    context = make_context(clock=clock, authenticator=Named())
    alice = connected(context, login="alice")
    alice.send("SUBSCRIBE", {"destination": "/user/queue/x", "id": "1"})
    context.broker.send_to_user("u-alice", "/user/queue/x", b"hi")
    (message,) = alice.frames()
    assert message.body == b"hi"


def test_no_interceptors_still_connects_anonymously(clock):
    """With an empty chain CONNECT is accepted, without a principal."""
    context = make_context(clock=clock)
    context.interceptors.clear()
    client = Client(context)
    assert "user-name" not in client.connect("1.2").headers
    assert client.session.principal is None


def test_clock_comes_from_the_context():
    """The session reads time from the context's clock, not from the heart-beat monitor."""
    clock = Clock()
    clock.advance(100)
    context = make_context(clock=clock)
    elsewhere = Clock()
    elsewhere.advance(1000)
    context.heartbeats.clock = elsewhere  # a clock the session must not read
    client = Client(context)
    clock.advance(context.settings.connect_timeout)
    client.session.check_liveness(clock.seconds(), 1.0)
    assert assert_error_then_closed(client).headers["message"] == "connect timeout"


# -- per-connection limits -------------------------------------------------


def test_too_many_open_transactions_is_error_then_close(clock):
    """Opening one transaction more than max_transactions gives ERROR then close."""
    context = make_context(clock=clock, max_transactions=3)
    client = connected(context)
    for name in ("a", "b", "c"):
        client.send("BEGIN", {"transaction": name})
    assert not client.closed
    client.send("BEGIN", {"transaction": "d", "receipt": "r"})
    error = assert_error_then_closed(client, **{"receipt-id": "r"})
    assert error.headers["message"] == "too many transactions"


def test_closed_transactions_free_their_slot(clock):
    """Committed and aborted transactions no longer count against max_transactions."""
    context = make_context(clock=clock, max_transactions=2)
    client = connected(context)
    for i in range(50):
        client.send("BEGIN", {"transaction": f"t{i}"})
        client.send("COMMIT" if i % 2 else "ABORT", {"transaction": f"t{i}"})
    assert not client.closed


def test_transaction_bytes_bound_is_error_then_close(clock):
    """SENDs held in open transactions beyond max_transaction_bytes give ERROR then close."""
    context = make_context(clock=clock, max_transaction_bytes=10_000)
    watcher = subscribed_watcher(context)
    client = connected(context)
    client.send("BEGIN", {"transaction": "a"})
    client.send("BEGIN", {"transaction": "b"})
    for _ in range(4):
        client.send("SEND", {"destination": "/topic/t", "transaction": "a"}, b"x" * 1000)
    assert not client.closed
    for _ in range(4):
        client.send("SEND", {"destination": "/topic/t", "transaction": "b"}, b"x" * 1000)
    error = assert_error_then_closed(client)
    assert error.headers["message"] == "transaction too large"
    assert len(client.session._transactions) == 0
    assert watcher.frames() == []


def test_many_small_frames_count_against_the_transaction_bound(clock):
    """Tiny frames in a transaction count their bookkeeping, so a flood of them is bounded."""
    context = make_context(clock=clock, max_transaction_bytes=100_000)
    client = connected(context)
    client.send("BEGIN", {"transaction": "a"})
    for _ in range(1000):
        if client.closed:
            break
        client.send("SEND", {"destination": "/topic/t", "transaction": "a"})
    assert client.closed
    assert len(client.session._transactions) == 0


def test_committed_bytes_are_given_back(clock):
    """After COMMIT, the bytes a transaction held no longer count against the bound."""
    context = make_context(clock=clock, max_transaction_bytes=5_000)
    client = connected(context)
    for i in range(20):
        client.send("BEGIN", {"transaction": f"t{i}"})
        client.send("SEND", {"destination": "/topic/t", "transaction": f"t{i}"}, b"x" * 3000)
        client.send("COMMIT", {"transaction": f"t{i}"})
    assert not client.closed
    assert client.session._transactions.held_bytes == 0


def test_unfinished_frames_time_out_with_heartbeats_off(clock):
    """Ten connections each holding an unfinished 1 MiB frame are closed at the frame timeout."""
    context = make_context(clock=clock, heartbeat=(0, 0), frame_timeout=60.0)
    clients = [connected(context, heartbeat="0,0") for _ in range(10)]
    for client in clients:
        client.send_bytes(b"SEND\ndestination:/topic/t\n\n" + b"x" * (1024 * 1024))
    clock.advance(59)
    context.heartbeats.sweep()
    assert not any(c.closed for c in clients)
    clock.advance(1)
    context.heartbeats.sweep()
    for client in clients:
        error = assert_error_then_closed(client)
        assert error.headers["message"] == "frame timeout"
        assert not client.session.parser.partial
    assert len(context.heartbeats) == 0


def test_frame_timeout_also_applies_with_heartbeats_flowing(clock):
    """Bytes trickling in (EOLs a client sends as heart-beats) do not extend a frame's deadline."""
    context = make_context(clock=clock, heartbeat=(1000, 1000), tick=0.25, frame_timeout=5.0)
    client = connected(context, heartbeat="1000,1000")
    client.send_bytes(b"SEND\ndestination:/topic/t\n\npartial")
    for _ in range(4 * 6):
        client.send_bytes(b"\n")
        clock.advance(0.25)
        context.heartbeats.sweep()
    assert assert_error_then_closed(client).headers["message"] == "frame timeout"


def test_a_frame_the_server_does_not_read_on_is_not_timed_out(clock):
    """While the server holds a client's input (storage behind), the rest of an unfinished
    frame waits unread: its deadline starts again once reading resumes."""
    context = make_context(clock=clock, heartbeat=(0, 0), frame_timeout=5.0)
    client = connected(context, heartbeat="0,0")
    client.send_bytes(b"SEND\ndestination:/topic/t\n\npartial")
    client.transport.pause_reading()  # as the storage gate does
    for _ in range(30):
        clock.advance(1)
        context.heartbeats.sweep()
    assert not client.closed
    client.transport.resume_reading()
    clock.advance(4)
    context.heartbeats.sweep()
    assert not client.closed
    clock.advance(1)
    context.heartbeats.sweep()
    assert assert_error_then_closed(client).headers["message"] == "frame timeout"


def test_frames_completed_in_time_reset_the_deadline(clock):
    """A client whose frames each complete in time is never cut, however long it stays."""
    context = make_context(clock=clock, heartbeat=(0, 0), frame_timeout=5.0)
    client = connected(context, heartbeat="0,0")
    frame = encode_frame(Frame("SEND", {"destination": "/topic/t"}, b"y" * 100), "1.2")
    for _ in range(30):
        client.send_bytes(frame[:50])
        clock.advance(2)
        context.heartbeats.sweep()
        client.send_bytes(frame[50:] + frame[:10])
        clock.advance(2)
        context.heartbeats.sweep()
        client.send_bytes(frame[10:])
    assert not client.closed


def test_session_with_expired_principal_is_closed_at_expiry(clock):
    """A principal whose expires_at passes is closed with ERROR 'token expired' by the sweep."""

    class Expiring:
        def authenticate(self, frame, connection):
            return Principal("u1", "Una", expires_at=clock.seconds() + 30)

    context = make_context(clock=clock, heartbeat=(0, 0), authenticator=Expiring())
    client = connected(context, heartbeat="0,0")
    anonymous = connected(make_context(clock=clock, broker=context.broker))
    clock.advance(29.5)
    context.heartbeats.sweep()
    assert not client.closed
    clock.advance(0.5)
    context.heartbeats.sweep()
    assert assert_error_then_closed(client).headers["message"] == "token expired"
    assert not anonymous.closed


class RaisingTransport:
    """A transport that refuses writes, as a closing WebSocket does."""

    def __init__(self) -> None:
        self.closed = False

    def write(self, data: bytes) -> None:
        raise RuntimeError("Disconnected")

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    reading_held = False


def test_heartbeat_sweep_survives_a_session_whose_transport_raises(clock):
    """A transport raising in the sweep closes that session only; others keep their heart-beats."""
    context = make_context(clock=clock, heartbeat=(1000, 1000), tick=0.25)
    healthy = connected(context, heartbeat="0,1000")
    broken = connected(context, heartbeat="0,1000")
    raising = RaisingTransport()
    broken.session.transport = raising
    context.heartbeats.startService()
    before = healthy.heartbeats()
    for _ in range(5 * 4):
        clock.advance(0.25)
    assert raising.closed
    assert broken.session.state is State.CLOSED
    assert healthy.heartbeats() >= before + 4
    assert not healthy.closed
    assert len(context.heartbeats) == 1
    context.heartbeats.stopService()


def test_fail_closes_even_when_the_error_cannot_be_written(clock):
    """A session whose transport refuses the ERROR frame is still closed and released."""
    context = make_context(clock=clock)
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "1"})
    raising = RaisingTransport()
    client.session.transport = raising
    client.session.fail("going away")
    assert raising.closed
    assert context.broker.subscriber_count("/topic/t") == 0


@pytest.mark.parametrize(
    "frame",
    [
        Frame("ACK", {"id": "m@" + "9" * 5000}),
        Frame("NACK", {"id": "9" * 3000 + "@" + "9" * 5000}),
    ],
    ids=["ack", "nack"],
)
def test_huge_numbers_in_ack_ids_are_a_clear_error(context, frame):
    """A 5,000-digit serial in an ACK/NACK id ends in ERROR 'unknown ack id', not a traceback."""
    client = connected(context)
    client.send(frame.command, frame.headers)
    error = assert_error_then_closed(client)
    assert error.headers["message"] == "unknown ack id"
    assert len(error.body) < 1000


def test_huge_content_length_is_a_clear_error(context):
    """A 5,000-digit content-length ends in an ERROR about the frame size."""
    client = connected(context)
    client.send_bytes(b"SEND\ndestination:/topic/t\ncontent-length:" + b"9" * 5000 + b"\n\n")
    error = assert_error_then_closed(client)
    assert "maximum size" in error.headers["message"]


@pytest.mark.parametrize("value", ["9" * 5000 + ",0", "0," + "9" * 400, "1," + "9" * 20])
def test_huge_heartbeat_numbers_are_a_clear_error(context, value):
    """Heart-beat intervals with absurd numbers of digits end in ERROR, never a traceback."""
    client = Client(context)
    client.send("CONNECT", {"accept-version": "1.2", "heart-beat": value})
    error = assert_error_then_closed(client)
    assert "heart-beat" in error.headers["message"]
    assert len(error.headers["message"]) < 200


def test_send_rate_over_the_limit_is_error_then_close(clock):
    """Past its burst, a connection sending too fast gets ERROR "rate limit exceeded"."""
    context = make_context(clock=clock, interceptors=[SendRateInterceptor(10, 5, clock)])
    watcher = subscribed_watcher(context)
    client = connected(context)
    other = connected(context)
    for _ in range(5):
        client.send("SEND", {"destination": "/topic/t"}, b"x")
    assert not client.closed
    client.send("SEND", {"destination": "/topic/t"}, b"x")
    assert assert_error_then_closed(client).headers["message"] == "rate limit exceeded"
    assert len(watcher.frames()) == 5
    other.send("SEND", {"destination": "/topic/t"}, b"y")
    assert not other.closed


def test_send_rate_refills_with_time(clock):
    """A connection sending at the configured rate is never cut."""
    context = make_context(clock=clock, interceptors=[SendRateInterceptor(10, 2, clock)])
    client = connected(context)
    for _ in range(100):
        client.send("SEND", {"destination": "/topic/t"}, b"x")
        clock.advance(0.1)
    assert not client.closed


def test_authentication_that_never_answers_hits_the_connect_timeout(clock):
    """A CONNECT whose authentication never completes is closed at the connect timeout."""

    class Hanging:
        def authenticate(self, frame, connection):
            return Deferred()

    context = make_context(clock=clock, authenticator=Hanging(), connect_timeout=10.0)
    client = Client(context)
    client.send("CONNECT", {"accept-version": "1.2"})
    assert client.transport.reading_paused
    clock.advance(9.5)
    client.session.check_liveness(clock.seconds(), 1.0)
    assert not client.closed
    clock.advance(0.5)
    client.session.check_liveness(clock.seconds(), 1.0)
    assert assert_error_then_closed(client).headers["message"] == "connect timeout"


def test_shut_down_sends_due_receipts_before_the_error(clock):
    """shut_down stops reading, sends every RECEIPT still due, then ERROR, then closes."""
    router = AppRouter()
    pending: Deferred = Deferred()
    router.add("/slow", lambda frame, ctx, v: pending)
    context = app_context(clock, router)
    client = connected(context)
    client.send("SEND", {"destination": "/app/slow", "receipt": "stored"}, b"x")
    client.session.shut_down("server shutting down")
    client.send("SEND", {"destination": "/app/slow", "receipt": "too-late"}, b"y")
    assert client.frames() == [] and not client.closed
    pending.callback(None)
    receipt, error = client.frames()
    assert receipt.headers["receipt-id"] == "stored"
    assert error.command == "ERROR" and error.headers["message"] == "server shutting down"
    assert client.closed


def test_a_protocol_error_waits_for_the_receipts_of_earlier_frames(clock):
    """A frame refused with ERROR behind a durable SEND first lets that SEND's RECEIPT out, so
    a client never resends a message the server stored; frames after it are not handled."""
    router = AppRouter()
    pending: Deferred = Deferred()
    router.add("/slow", lambda frame, ctx, v: pending)
    context = app_context(clock, router)
    client = connected(context)
    client.send("SEND", {"destination": "/app/slow", "receipt": "stored"}, b"x")
    client.send("SEND", {"destination": "/app/nowhere", "receipt": "bad"}, b"y")
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "0", "receipt": "after"})
    assert client.frames() == [] and not client.closed
    pending.callback(None)
    receipt, error = client.frames()
    assert receipt.headers["receipt-id"] == "stored"
    assert error.command == "ERROR" and error.headers["receipt-id"] == "bad"
    assert client.closed


def test_a_malformed_frame_waits_for_the_receipts_of_earlier_frames(clock):
    """A frame the parser cannot read, behind a durable SEND, gets its ERROR only after that
    SEND's RECEIPT: what was stored is acknowledged even when the stream breaks."""
    router = AppRouter()
    pending: Deferred = Deferred()
    router.add("/slow", lambda frame, ctx, v: pending)
    context = app_context(clock, router)
    client = connected(context)
    client.send("SEND", {"destination": "/app/slow", "receipt": "stored"}, b"x")
    client.send_bytes(b"SEND\nno colon here\n\n\x00")
    assert client.frames() == [] and not client.closed
    pending.callback(None)
    receipt, error = client.frames()
    assert receipt.headers["receipt-id"] == "stored"
    assert error.command == "ERROR" and "malformed" in error.headers["message"]
    assert client.closed


def test_shut_down_with_nothing_due_errors_at_once(context):
    """With no RECEIPT due, shut_down sends ERROR and closes at once."""
    client = connected(context)
    client.session.shut_down("server shutting down")
    assert_error_then_closed(client, message="server shutting down")


def test_too_many_frames_behind_a_slow_one_pause_reading(clock):
    """Past max_pending_receipts frames waiting behind a slow SEND, the session stops reading
    until half of them are answered; every receipt still arrives, in order."""
    router = AppRouter()
    pending: Deferred = Deferred()
    router.add("/slow", lambda frame, ctx, v: pending)
    context = make_context(clock=clock, router=router, max_pending_receipts=4)
    client = connected(context)
    client.send("SEND", {"destination": "/app/slow", "receipt": "slow"}, b"x")
    for i in range(2):
        client.send("SUBSCRIBE", {"destination": "/topic/t", "id": str(i), "receipt": f"s{i}"})
    assert not client.transport.reading_paused
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "2", "receipt": "s2"})
    assert client.transport.reading_paused
    pending.callback(None)
    assert not client.transport.reading_paused
    assert [f.headers["receipt-id"] for f in client.frames()] == ["slow", "s0", "s1", "s2"]


def test_connect_outcomes_are_counted_by_transport_and_method(context):
    """Each CONNECT counts once: by the method that accepted it, or as refused."""

    class ByLogin:
        def authenticate(self, frame, connection):
            if frame.headers.get("login") != "ann":
                raise AuthError("bad credentials", "login or passcode is wrong")
            return Principal("ann", "ann", method="password")

    use_authenticator(context, ByLogin())
    Client(context).connect("1.2", login="ann")
    Client(context).send("CONNECT", {"accept-version": "1.2", "login": "eve"})
    assert context.stats.connects == {("tcp", "password"): 1, ("tcp", "refused"): 1}


def test_anonymous_connects_count_as_method_none(context):
    """An anonymous CONNECT is counted under the method 'none'."""
    connected(context)
    assert context.stats.connects == {("tcp", "none"): 1}


# -- queues kept outside the process (cluster mode) ------------------------


class RemoteQueues(QueueSet):
    """Queues that answer a SEND later, as cluster mode's do once Redis has it."""

    remote = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stored: list[tuple[str, Deferred]] = []

    def submit(self, name, message):
        d: Deferred = Deferred()
        self.stored.append((message.body.decode(), d))
        return d


@pytest.fixture
def remote(clock):
    broker = Broker()
    queues = broker.use_queues(RemoteQueues)
    return make_context(clock=clock, broker=broker), queues


def test_queue_send_is_receipted_once_the_remote_queue_has_it(remote):
    """A SEND to a queue kept elsewhere gets its RECEIPT only once that queue stored it,
    and later frames' receipts wait behind it."""
    context, queues = remote
    client = connected(context)
    client.send("SEND", {"destination": "/queue/q", "receipt": "r1"}, b"one")
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "1", "receipt": "r2"})
    assert only(client.frames(), "RECEIPT") == []
    [(body, stored)] = queues.stored
    assert body == "one"
    stored.callback(b"1-0")
    assert [f.headers["receipt-id"] for f in client.frames()] == ["r1", "r2"]


def test_queue_send_refused_later_is_an_error_and_later_frames_get_no_receipt(remote):
    """A SEND the remote queue refuses (full): ERROR naming it and its receipt, after the
    RECEIPTs of earlier frames, none for the frames read after it, then the close."""
    context, queues = remote
    client = connected(context)
    client.send("SUBSCRIBE", {"destination": "/topic/t", "id": "1", "receipt": "before"})
    client.send("SEND", {"destination": "/queue/q", "receipt": "r1"}, b"one")
    client.send("SEND", {"destination": "/queue/q", "receipt": "r2"}, b"two")
    [(_, first), (_, second)] = queues.stored
    second.callback(b"2-0")
    first.errback(BrokerError("queue full: /queue/q holds 3 messages"))
    frames = client.frames()
    assert [f.headers.get("receipt-id") for f in only(frames, "RECEIPT")] == ["before"]
    error = frames[-1]
    assert error.command == "ERROR"
    assert error.headers["message"].startswith("queue full")
    assert error.headers["receipt-id"] == "r1"
    assert client.closed


def test_refused_send_inside_a_commit_refuses_the_commit(remote):
    """A transaction whose SEND the remote queue refuses gets no RECEIPT for its COMMIT."""
    context, queues = remote
    client = connected(context)
    client.send("BEGIN", {"transaction": "t"})
    client.send("SEND", {"destination": "/queue/q", "transaction": "t"}, b"one")
    client.send("COMMIT", {"transaction": "t", "receipt": "c"})
    [(_, stored)] = queues.stored
    stored.errback(BrokerError("queue full: /queue/q holds 3 messages"))
    frames = client.frames()
    assert only(frames, "RECEIPT") == []
    assert frames[-1].command == "ERROR" and client.closed
