"""A stateful property test of sessions on a real Broker: random frame sequences, fixed promises.

Hypothesis drives several clients through CONNECT variants, subscriptions,
SENDs to topics, queues and ``/app`` handlers (quick, slow and refusing),
ACK/NACK (real and forged ids), transactions, DISCONNECT, garbage and frames
split across reads, with the clock moving on. After every step: no exception
escaped, nothing the server holds for a client outgrew its configured limit,
nothing was written after close and no frame ended in "internal server error".
At the end, every receipt a client asked for was answered (by RECEIPT, or by
an error report naming it), or the connection was closed with ERROR.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from stomp_chat.app.routes import AppRouter
from stomp_chat.broker import Broker, BrokerLimits
from stomp_chat.errors import ApplicationError
from stomp_chat.session import SendRateInterceptor, State
from stomp_chat.stomp.frame import Frame, encode_frame
from tests.stompfakes import Client, RecordingTransport, make_context

LIMITS: dict[str, Any] = {
    "max_transactions": 2,
    "max_transaction_bytes": 2_500,
    "max_subscriptions": 4,
    "max_frame_size": 4_096,
    "max_headers": 16,
    "max_header_length": 512,
    "frame_timeout": 20.0,
    "max_pending_receipts": 4,
    "heartbeat": (0, 0),
}
MAX_QUEUE_BACKLOG = 20
#: Few connections, so that each lives long enough to reach its limits.
MAX_CLIENTS = 3
#: The most frames one read of the driver can hold (see ``pipelined``).
MAX_FRAMES_PER_READ = 3

# What well-behaved frames use; the ``hostile`` rule sends the refused kinds.
SUBSCRIBE_TO = ["/topic/a", "/topic/b", "/queue/q", "/user/queue/x"]
SEND_TO = ["/topic/a", "/topic/b", "/queue/q", "/app/echo", "/app/slow", "/app/refuse"]
ACK_MODES = ["auto", "client", "client-individual"]
SUB_IDS = ["s0", "s1", "s2", "s3", "s4", "s5"]
TX_NAMES = ["t0", "t1", "t2", "t3", "t4", "t5"]


class DriverTransport(RecordingTransport):
    """A RecordingTransport that, like StompProtocol, stops feeding while paused."""

    def __init__(self) -> None:
        super().__init__()
        self.client: StatefulClient | None = None
        self.backlog: list[bytes] = []

    def resume_reading(self) -> None:
        super().resume_reading()
        backlog, self.backlog = self.backlog, []
        for data in backlog:
            assert self.client is not None
            self.client.send_bytes(data)


class StatefulClient(Client):
    """A Client that remembers the receipts it asked for, and respects pauses."""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        transport = DriverTransport()
        transport.client = self
        self.transport = transport
        self.session.transport = transport
        self.receipts_asked: list[str] = []
        self.seen: list[Frame] = []
        self.disconnected = False

    def send_bytes(self, data: bytes) -> None:
        transport = self.transport
        assert isinstance(transport, DriverTransport)
        if transport.reading_paused:
            transport.backlog.append(data)
            return
        self.session.data_received(data)

    def read(self) -> list[Frame]:
        self.seen.extend(self.frames())
        return self.seen


class Waiter:
    """An interceptor that holds frames carrying ``x-wait`` until the test releases them."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Frame]] = []

    def inbound(self, frame: Frame, session: Any) -> Frame | Deferred[Frame]:
        if "x-wait" not in frame.headers:
            return frame
        d: Deferred[Frame] = Deferred()
        self.pending.append(d)
        return d.addCallback(lambda _: frame)


#: Mostly small bodies, some large enough to fill a transaction's bound quickly.
BODIES = st.one_of(st.binary(max_size=64), st.integers(500, 3000).map(lambda n: b"b" * n))

#: Which client a rule acts on: an index into the live ones (see ``choose``).
CLIENT = st.integers(0, 7)


class SessionMachine(RuleBasedStateMachine):

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.broker = Broker(limits=BrokerLimits(max_queue_messages=MAX_QUEUE_BACKLOG))
        self.slow: list[Deferred[Any]] = []
        router = AppRouter()
        router.add("/echo", self._echo)
        router.add("/slow", self._slow)
        router.add("/refuse", self._refuse)
        self.waiter = Waiter()
        self.context = make_context(
            clock=self.clock,
            broker=self.broker,
            router=router,
            interceptors=[self.waiter, SendRateInterceptor(200, 40, self.clock)],
            **LIMITS,
        )
        self.all_clients: list[StatefulClient] = []
        self.failures: list[dict[str, Any]] = []
        self._receipt_counter = 0
        globalLogPublisher.addObserver(self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        if "log_failure" in event:
            self.failures.append(event)

    # -- /app handlers -------------------------------------------------

    def _echo(self, frame: Frame, context: Any, variables: dict[str, str]) -> None:
        context.publish("/topic/a", frame.body)

    def _slow(self, frame: Frame, context: Any, variables: dict[str, str]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.slow.append(d)
        return d

    def _refuse(self, frame: Frame, context: Any, variables: dict[str, str]) -> None:
        raise ApplicationError("refused", code="nope")

    # -- helpers ------------------------------------------------------

    def live(self) -> list[StatefulClient]:
        return [c for c in self.all_clients if not c.closed]

    def choose(self, index: int) -> StatefulClient:
        """A live client when there is one (steps on closed ones teach nothing)."""
        candidates = self.live() or self.all_clients
        return candidates[index % len(candidates)]

    def _receipt(self, client: StatefulClient, wanted: bool) -> dict[str, str]:
        if not wanted:
            return {}
        self._receipt_counter += 1
        receipt = f"r{self._receipt_counter}"
        if not client.closed and not client.disconnected:
            client.receipts_asked.append(receipt)
        return {"receipt": receipt}

    def _send(self, client: StatefulClient, frame: Frame) -> None:
        if frame.command == "DISCONNECT" and not client.closed:
            client.disconnected = True
        client.send_bytes(encode_frame(frame, client.version))

    # -- rules --------------------------------------------------------

    @initialize(version=st.sampled_from(["1.0", "1.1", "1.2"]))
    def first_client(self, version) -> None:
        self.new_client_now(version)

    @precondition(lambda self: len(self.live()) < MAX_CLIENTS)
    @rule(version=st.sampled_from(["1.0", "1.1", "1.2", "1.2", None]))
    def new_client(self, version) -> None:
        """A new connection, mostly CONNECTed at once (None: left for ``connect``)."""
        self.new_client_now(version)

    def new_client_now(self, version: str | None) -> StatefulClient:
        client = StatefulClient(self.context)
        self.all_clients.append(client)
        if version is not None:
            self._send(client, Frame("CONNECT", {"accept-version": version, "host": "h",
                                                 "heart-beat": "0,0"}))
            self.read_version(client)
        return client

    @precondition(lambda self: any(
        c.session.state is State.AWAITING_CONNECT for c in self.live()
    ))
    @rule(
        client=CLIENT,
        command=st.sampled_from(["CONNECT", "STOMP"]),
        version=st.sampled_from(["1.0", "1.1", "1.2", "1.0,1.1,1.2", "2.0", None]),
        heartbeat=st.sampled_from(["0,0", "0,1000", "1000,0", "x", None, "1," + "9" * 500]),
    )
    def connect(self, client, command, version, heartbeat):
        """CONNECT variants, on a connection still waiting for one."""
        waiting = [c for c in self.live() if c.session.state is State.AWAITING_CONNECT]
        client = waiting[client % len(waiting)]
        headers = {"host": "h"}
        if version is not None:
            headers["accept-version"] = version
        if heartbeat is not None:
            headers["heart-beat"] = heartbeat
        self._send(client, Frame(command, headers))
        self.read_version(client)

    def read_version(self, client: StatefulClient) -> None:
        for frame in client.read():
            if frame.command == "CONNECTED":
                client.version = frame.headers.get("version", "1.0")
                if "errors" not in client.session.subscriptions:
                    self._send(client, Frame("SUBSCRIBE", {"destination": "/user/queue/errors",
                                                           "id": "errors"}))

    @rule(client=CLIENT, destination=st.sampled_from(SUBSCRIBE_TO), pick=st.integers(0, 10),
          ack=st.sampled_from(ACK_MODES), receipt=st.booleans())
    def subscribe(self, client, destination, pick, ack, receipt):
        """SUBSCRIBE with an id not in use (1.0 may leave the id out)."""
        client = self.choose(client)
        headers = {"destination": destination, "ack": ack, **self._receipt(client, receipt)}
        free = [i for i in SUB_IDS if i not in client.session.subscriptions]
        if free and not (pick == 0 and client.version == "1.0"):
            headers["id"] = free[pick % len(free)]
        self._send(client, Frame("SUBSCRIBE", headers))

    @rule(client=CLIENT, pick=st.integers(0, 10), receipt=st.booleans())
    def unsubscribe(self, client, pick, receipt):
        client = self.choose(client)
        own = [i for i in client.session.subscriptions if i != "errors"]
        if own:
            headers = {"id": own[pick % len(own)], **self._receipt(client, receipt)}
            self._send(client, Frame("UNSUBSCRIBE", headers))

    def _in_transaction(self, client: StatefulClient, headers: dict[str, str], pick: int) -> None:
        open_names = list(client.session._transactions)
        if open_names and pick % 3:
            headers["transaction"] = open_names[pick % len(open_names)]

    @rule(client=CLIENT, destination=st.sampled_from(SEND_TO), body=BODIES,
          pick=st.integers(0, 10), wait=st.booleans(), receipt=st.booleans())
    def send(self, client, destination, body, pick, wait, receipt):
        client = self.choose(client)
        headers = {"destination": destination, **self._receipt(client, receipt)}
        self._in_transaction(client, headers, pick)
        if wait:
            headers["x-wait"] = "1"
        self._send(client, Frame("SEND", headers, body))

    @rule(client=CLIENT, command=st.sampled_from(["ACK", "NACK"]), pick=st.integers(0, 50),
          receipt=st.booleans())
    def ack(self, client, command, pick, receipt):
        """ACK or NACK a message the client holds unacknowledged, as its version names it."""
        client = self.choose(client)
        subscriptions = client.session.subscriptions
        held = [
            f for f in client.read()
            if f.command == "MESSAGE" and "ack" in f.headers
            and f.headers.get("subscription") in subscriptions
            and f.headers["message-id"] in subscriptions[f.headers["subscription"]].pending
        ]
        if not held or (command == "NACK" and client.version == "1.0"):
            return
        message = held[pick % len(held)]
        headers = {
            "id": message.headers["ack"],
            "message-id": message.headers["message-id"],
            "subscription": message.headers["subscription"],
            **self._receipt(client, receipt),
        }
        self._in_transaction(client, headers, pick)
        self._send(client, Frame(command, headers))

    @rule(client=CLIENT, command=st.sampled_from(["BEGIN", "BEGIN", "BEGIN", "COMMIT", "ABORT"]),
          pick=st.integers(0, 10), receipt=st.booleans())
    def transaction(self, client, command, pick, receipt):
        """BEGIN a new name (past the limit too), or COMMIT/ABORT an open one."""
        client = self.choose(client)
        open_names = list(client.session._transactions)
        unused = [n for n in TX_NAMES if n not in open_names]
        if command == "BEGIN" and unused:
            name = unused[pick % len(unused)]
        elif command != "BEGIN" and open_names:
            name = open_names[pick % len(open_names)]
        else:
            return
        self._send(client, Frame(command, {"transaction": name, **self._receipt(client, receipt)}))

    @rule(client=CLIENT, receipt=st.booleans())
    def disconnect(self, client, receipt):
        client = self.choose(client)
        self._send(client, Frame("DISCONNECT", self._receipt(client, receipt)))

    @rule(client=CLIENT, kind=st.sampled_from(["bytes", "ack", "frame"]), data=st.one_of(
        st.sampled_from([b"\n", b"\r\n", b"\x00", b"SEND\n"]), st.binary(min_size=1, max_size=200)
    ), forged=st.sampled_from(["m@1", "9" * 5000, "m@" + "9" * 400, "x@-1", ""]),
          frame=st.sampled_from([
              Frame("CONNECT", {"accept-version": "1.2"}),
              Frame("SUBSCRIBE", {"destination": "/nowhere", "id": "zz"}),
              Frame("SUBSCRIBE", {"destination": "/topic/a", "ack": "bogus", "id": "zz"}),
              Frame("SUBSCRIBE", {"destination": "/topic/a"}),
              Frame("UNSUBSCRIBE", {"id": "never"}),
              Frame("SEND", {"destination": "/user/queue/x"}, b"x"),
              Frame("SEND", {"destination": "/app/missing"}, b"x"),
              Frame("SEND", {"destination": "/topic/a", "transaction": "never"}, b"x"),
              Frame("COMMIT", {"transaction": "never"}),
              Frame("NACK", {}),
              Frame("FROB", {}),
          ]), receipt=st.booleans())
    def hostile(self, client, kind, data, forged, frame, receipt):
        """What a broken or hostile client sends: garbage, forged ids, refused frames."""
        client = self.choose(client)
        if kind == "bytes":
            client.send_bytes(data)
            return
        if kind == "ack":
            frame = Frame("ACK", {"id": forged, "message-id": forged, "subscription": "s0"})
        # STOMP answers no receipt on CONNECT: CONNECTED (or ERROR) is the answer.
        wants_receipt = receipt and frame.command != "CONNECT"
        headers = {**frame.headers, **self._receipt(client, wants_receipt)}
        self._send(client, Frame(frame.command, headers, frame.body))

    @rule(client=CLIENT, destination=st.sampled_from(SEND_TO),
          body=st.binary(max_size=200), cut=st.integers(0, 400), receipt=st.booleans())
    def split(self, client, destination, body, cut, receipt):
        client = self.choose(client)
        headers = {"destination": destination, **self._receipt(client, receipt)}
        data = encode_frame(Frame("SEND", headers, body), client.version)
        cut = min(cut, len(data))
        client.send_bytes(data[:cut])
        client.send_bytes(data[cut:])

    @rule(client=CLIENT, count=st.integers(2, MAX_FRAMES_PER_READ), wait=st.booleans())
    def pipelined(self, client, count, wait):
        """Several frames in one read, the first possibly held by an interceptor."""
        client = self.choose(client)
        data = b""
        for i in range(count):
            headers = {"destination": "/topic/b", **self._receipt(client, True)}
            if wait and i == 0:
                headers["x-wait"] = "1"
            data += encode_frame(Frame("SEND", headers, b"p"), client.version)
        client.send_bytes(data)

    @rule(seconds=st.sampled_from([0.1, 1.0, 5.0, 25.0]))
    def time_passes(self, seconds):
        self.clock.advance(seconds)
        self.context.heartbeats.sweep()

    @rule(fail=st.booleans())
    def slow_handlers_finish(self, fail):
        slow, self.slow = self.slow, []
        for d in slow:
            if fail:
                d.errback(ApplicationError("late refusal"))
            else:
                d.callback(None)

    @rule()
    def interceptors_release(self):
        pending, self.waiter.pending = self.waiter.pending, []
        for d in pending:
            d.callback(None)

    # -- invariants ----------------------------------------------------

    @invariant()
    def structures_stay_within_limits(self):
        for client in self.all_clients:
            session = client.session
            assert len(session._transactions) <= LIMITS["max_transactions"]
            assert session._transactions.held_bytes <= LIMITS["max_transaction_bytes"]
            assert len(session.subscriptions) <= LIMITS["max_subscriptions"]
            assert len(session._held) <= MAX_FRAMES_PER_READ
            assert len(session.parser._buffer) <= LIMITS["max_frame_size"] + 4_096
            # Past the bound the connection stops reading; what one read held still counts.
            assert len(session._receipts) <= LIMITS["max_pending_receipts"] + MAX_FRAMES_PER_READ
            if session.state is State.CLOSED:
                assert not session.subscriptions and not len(session._transactions)
        for destination in ("/queue/q",):
            assert self.broker.queue_depth(destination) <= MAX_QUEUE_BACKLOG

    @invariant()
    def nothing_escaped(self):
        assert self.failures == [], self.failures
        for client in self.all_clients:
            assert client.transport.writes_after_close == []
            for frame in client.read():
                if frame.command == "ERROR":
                    assert frame.headers["message"] != "internal server error", frame

    def teardown(self):
        globalLogPublisher.removeObserver(self._observe)
        # Let everything that waits finish, then check every receipt.
        for _ in range(1000):  # each release may let a held frame wait in turn
            if not (self.waiter.pending or self.slow):
                break
            self.interceptors_release()
            self.slow_handlers_finish(False)
        for client in self.all_clients:
            frames = client.read()
            answered = {f.headers.get("receipt-id") for f in frames
                        if f.command in ("RECEIPT", "ERROR", "MESSAGE")}
            closed_with_error = any(f.command == "ERROR" for f in frames)
            if closed_with_error:
                assert client.closed
                continue
            missing = [r for r in client.receipts_asked if r not in answered]
            assert not missing, (missing, [(f.command, dict(f.headers)) for f in frames])


SessionMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_session_state_machine = SessionMachine.TestCase
