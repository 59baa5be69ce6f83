"""One client's STOMP session: the protocol's brain, without any socket.

Bytes come in through ``data_received``; each parsed frame passes the
server's inbound interceptors (authentication first), then its handler;
frames go out through a ``FrameTransport`` (a TCP connection or a WebSocket,
the session cannot tell). Every protocol violation raises a typed error that
``_refuse`` turns into ERROR-then-close in one place.
"""

from __future__ import annotations

import enum
import secrets
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from stomp_chat.app.errors import report_application_error
from stomp_chat.app.routes import AppContext, NoHandler
from stomp_chat.app.subscriptions import notify_subscribed, notify_unsubscribed
from stomp_chat.broker import (
    ACK_AUTO,
    ACK_MODES,
    APP_PREFIX,
    RESERVED_HEADERS,
    BrokerError,
    Message,
    Subscription,
)
from stomp_chat.broker.acks import AckTracker
from stomp_chat.errors import ApplicationError, ProtocolError, required_header
from stomp_chat.identity import AUTH_NONE, ConnectionInfo, Principal
from stomp_chat.interceptors import Interceptor
from stomp_chat.session.context import FrameTransport, ServerContext
from stomp_chat.session.receipts import NOT_RECEIPTED, REFUSED, OrderedReceipts
from stomp_chat.session.transactions import Transactions
from stomp_chat.stomp.frame import (
    SUPPORTED_VERSIONS,
    V1_0,
    V1_2,
    Frame,
    FrameError,
    encode_frame,
    escape_header,
    negotiate_heartbeat,
    negotiate_version,
    parse_heartbeat,
)
from stomp_chat.stomp.parser import FrameParser

log = Logger()

HEARTBEAT_EOL = b"\n"
#: How far past the negotiated interval a silent client is still tolerated.
HEARTBEAT_GRACE = 1.5


class State(enum.Enum):
    AWAITING_CONNECT = "awaiting CONNECT"
    AUTHENTICATING = "authenticating"
    CONNECTED = "connected"
    CLOSED = "closed"


# An enum member looked up on its class costs ~50 ns on CPython 3.11: the per-frame
# and per-delivery checks compare with these module constants instead.
_AWAITING_CONNECT = State.AWAITING_CONNECT
_CLOSED = State.CLOSED


class StompSession:
    """The protocol state of one connection."""

    # Thousands of these live at once, mostly idle: no per-instance dict.
    __slots__ = (
        "__weakref__",
        "_acks",
        "_close_after_receipts",
        "_shutdown_message",
        "_held",
        "_incoming",
        "_last_read",
        "_last_write",
        "_negotiated",
        "_opened_at",
        "_outgoing",
        "_partial_since",
        "_pending_failure",
        "_receipts",
        "_received",
        "_sent",
        "_transactions",
        "_waiting",
        "broker",
        "connection",
        "context",
        "parser",
        "principal",
        "session_id",
        "state",
        "transport",
        "version",
    )

    def __init__(
        self,
        context: ServerContext,
        transport: FrameTransport,
        connection: ConnectionInfo | None = None,
    ) -> None:
        settings = context.settings
        self.context = context
        self.broker = context.broker
        self.transport = transport
        self.connection = connection if connection is not None else ConnectionInfo()
        self.session_id = secrets.token_hex(8)
        self.state = State.AWAITING_CONNECT
        #: The negotiated version once CONNECTED (``1.0`` before).
        self.version = V1_0
        self._negotiated = V1_0
        self.principal: Principal | None = None
        self.parser = FrameParser(
            self.frame_received,
            max_frame_size=settings.max_frame_size,
            max_headers=settings.max_headers,
            max_header_length=settings.max_header_length,
        )
        self._acks = AckTracker(context.broker)
        self._transactions = Transactions(
            settings.max_transactions, settings.max_transaction_bytes
        )
        self._receipts = OrderedReceipts(
            self._write_receipt,
            self._receipts_drained,
            limit=settings.max_pending_receipts,
            backlog=self._receipt_backlog,
        )
        self._close_after_receipts = False
        self._shutdown_message: str | None = None
        #: The ERROR of a refused frame, sent once earlier frames' RECEIPTs are out.
        self._pending_failure: tuple[str, str, Frame | None, dict[str, str] | None] | None = None
        #: An interceptor's Deferred is pending: input is paused.
        self._waiting = False
        #: Frames parsed behind a waiting one (at most what one read held).
        self._held: deque[Frame] = deque()
        # Liveness, sampled by the heart-beat monitor.
        now = context.clock.seconds()
        self._opened_at = now
        self._last_read = now
        self._last_write = now
        self._received = False
        self._sent = False
        self._incoming = 0.0
        self._outgoing = 0.0
        #: When the unfinished frame in the parser began to arrive.
        self._partial_since: float | None = None
        context.heartbeats.add(self)

    @property
    def peer(self) -> str:
        """The peer's address, for logs."""
        return self.connection.peer

    @property
    def opened_at(self) -> float:
        """When the connection opened, in the clock's seconds."""
        return self._opened_at

    @property
    def subscriptions(self) -> dict[str, Subscription]:
        return self._acks.subscriptions

    @property
    def user_key(self) -> str:
        """The name ``/user/`` destinations of this session route by."""
        principal = self.principal
        return principal.user_id if principal is not None else self.session_id

    def authenticated(self, principal: Principal) -> None:
        """Record who the client is; only while its CONNECT passes the chain."""
        if self.state is not State.AUTHENTICATING:
            raise ProtocolError("not authenticating", "the client is already connected")
        self.principal = principal

    # -- input -----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Feed bytes from the client; any byte proves it is alive."""
        self._received = True
        parser = self.parser
        try:
            parser.feed(data)
        except FrameError as error:
            self._fail_in_order(str(error), "", error.frame)
            return
        if self._partial_since is None and parser.partial:
            self._partial_since = self.context.clock.seconds()

    def frame_received(self, frame: Frame) -> None:
        """Pass one frame through the interceptors, then to its handler."""
        self.context.stats.frame_received(frame.command)
        self._partial_since = None  # whatever follows is a new frame
        state = self.state
        if state is _CLOSED or self._pending_failure is not None:
            return
        if self._waiting:
            self._held.append(frame)
            return
        try:
            if state is _AWAITING_CONNECT:
                self._begin_connect(frame)
            elif frame.command in ("CONNECT", "STOMP"):
                raise ProtocolError("already connected", "a second CONNECT is not allowed")
            chain = self.context.chain_for(frame.command)
            if chain:
                self._intercept(frame, frame, chain, 0)
            else:
                self._dispatch(frame)
        except Exception as error:
            self._refuse(error, frame)

    def _intercept(
        self, frame: Frame, original: Frame, chain: tuple[Interceptor, ...], index: int
    ) -> None:
        """Run the chain from ``index``; a Deferred pauses input until it fires."""
        while index < len(chain):
            result = chain[index].inbound(frame, self)
            index += 1
            # Deferred is an ABC: isinstance costs ~0.1 µs, paid only when the frame changed.
            if result is not frame and isinstance(result, Deferred):
                self._waiting = True
                result.addCallback(self._resume_chain, original, chain, index)
                result.addErrback(self._chain_failed, original)
                if self._waiting:  # not fired already
                    self.transport.pause_reading()
                return
            frame = result
        self._dispatch(frame)

    def _resume_chain(
        self, frame: Frame, original: Frame, chain: tuple[Interceptor, ...], index: int
    ) -> None:
        self._waiting = False
        if self.state is State.CLOSED:
            return
        self._intercept(frame, original, chain, index)
        self._release_held()

    def _chain_failed(self, failure: Failure, original: Frame) -> None:
        self._waiting = False
        if self.state is State.CLOSED:
            return
        error = failure.value
        assert error is not None  # a Failure always wraps an exception
        self._refuse(error, original, failure)
        self._release_held()

    def _release_held(self) -> None:
        """Handle frames parsed while the chain waited, then read again."""
        held = self._held
        # These frames were parsed long ago: they say nothing of the one that
        # may be arriving now, whose deadline stands.
        partial_since = self._partial_since
        while held and not self._waiting and self.state is not State.CLOSED:
            self.frame_received(held.popleft())
        self._partial_since = partial_since
        if not self._waiting and not self._receipts.full and self.state is not State.CLOSED:
            self.transport.resume_reading()

    def _dispatch(self, frame: Frame) -> None:
        command = frame.command
        if command in ("CONNECT", "STOMP"):
            self._connected()
            return
        handler = self._handlers.get(command)
        if handler is None:
            raise ProtocolError("unknown command", f"unknown command {command[:80]!r}")
        if frame.body and command != "SEND":
            raise ProtocolError(f"{command} frames carry no body")
        handler(self, frame)

    def _refuse(self, error: BaseException, frame: Frame, failure: Failure | None = None) -> None:
        """The one place a refused frame becomes an ERROR or an application error."""
        if isinstance(error, ApplicationError):
            if self.state is State.CONNECTED:
                self._report_app_error(frame, error)
                self._receipts.add(frame.headers.get("receipt"), NOT_RECEIPTED)
            else:  # nobody to report to before CONNECTED
                self.fail(error.message, error.message, frame)
        elif isinstance(error, ProtocolError):
            self._fail_in_order(error.message, error.detail, frame, error.headers)
        elif isinstance(error, (BrokerError, FrameError)):
            self._fail_in_order(str(error), str(error), frame)
        elif failure is None:  # unexpected: log it with its traceback
            self._refuse(error, frame, Failure(error, type(error), error.__traceback__))
        elif self.state is State.AUTHENTICATING:
            log.failure("authentication failed unexpectedly", failure)
            self.fail(
                "authentication unavailable", "the server could not check credentials", frame
            )
        else:
            log.failure(
                "error handling {command} from {peer}",
                failure,
                command=frame.command,
                peer=self.peer,
            )
            self.fail("internal server error", "the server failed to handle this frame", frame)

    # -- CONNECT -----------------------------------------------------------

    def _begin_connect(self, frame: Frame) -> None:
        """Check what CONNECT asks for before anyone looks at its credentials."""
        if frame.command not in ("CONNECT", "STOMP"):
            raise ProtocolError(
                "expected CONNECT", f"the first frame must be CONNECT, not {frame.command}"
            )
        version = negotiate_version(frame.headers.get("accept-version"))
        if version is None:
            raise ProtocolError(
                "unsupported STOMP version",
                "supported versions are " + ",".join(SUPPORTED_VERSIONS),
                {"version": ",".join(SUPPORTED_VERSIONS)},
            )
        if version != V1_0:
            client_heartbeat = parse_heartbeat(frame.headers.get("heart-beat"))
            incoming, outgoing = negotiate_heartbeat(
                client_heartbeat, self.context.settings.heartbeat
            )
            self._incoming = incoming / 1000.0
            self._outgoing = outgoing / 1000.0
        self._negotiated = version
        self.state = State.AUTHENTICATING
        # Frames pipelined behind CONNECT are parsed while authentication
        # runs: they must already be unescaped as the negotiated version says.
        self.parser.version = version

    def _connected(self) -> None:
        version = self._negotiated
        self.version = version
        self.state = State.CONNECTED
        headers = {"version": version, "session": self.session_id}
        if version != V1_0:
            sx, sy = self.context.settings.heartbeat
            headers["heart-beat"] = f"{sx},{sy}"
        headers["server"] = self.context.settings.server_name
        if self.principal is not None:
            headers["user-name"] = self.principal.name
        self._write(encode_frame(Frame("CONNECTED", headers), version))
        stats = self.context.stats
        stats.frames_sent["CONNECTED"] += 1
        method = self.principal.method if self.principal is not None else AUTH_NONE
        stats.connect_accepted(self.connection.transport, method)

    # -- SEND ------------------------------------------------------------

    def _on_send(self, frame: Frame) -> None:
        destination = required_header(frame, "destination")
        if "transaction" in frame.headers:
            self._check_destination(destination)  # now, not at COMMIT: all or nothing
            self._transactions.hold(frame)
            self._receipts.add(frame.headers.get("receipt"))
            return
        self._receipts.add(frame.headers.get("receipt"), self._apply_send(frame, destination))

    def _check_destination(self, destination: str) -> None:
        """Refuse a SEND at once, even inside a transaction that commits later."""
        if destination.startswith(APP_PREFIX):
            try:
                self.context.router.resolve(destination)
            except NoHandler as error:
                raise ProtocolError("no such destination", str(error)) from None
        else:
            self.broker.check_destination(destination)

    def _apply_send(
        self, frame: Frame, destination: str, refused_as: Frame | None = None
    ) -> Deferred[Any] | object | None:
        """Route a SEND now; a Deferred means its receipt must wait. A refusal names
        ``refused_as`` (the COMMIT that applied the SEND) if given."""
        if destination.startswith(APP_PREFIX):
            return self._dispatch_to_app(frame)
        headers = {k: v for k, v in frame.headers.items() if k not in RESERVED_HEADERS}
        stored = self.broker.accept(destination, frame.body, headers)
        if stored is None:
            return None
        return stored.addErrback(self._send_refused, refused_as or frame)

    def _send_refused(self, failure: Failure, frame: Frame) -> object:
        """A SEND that a queue kept elsewhere refused after later frames were read:
        ERROR once the earlier frames' RECEIPTs are out, and no RECEIPT after it."""
        error = failure.value
        if isinstance(error, BrokerError):
            message = str(error)
        else:
            log.failure("storing a message for {destination} failed", failure,
                        destination=frame.headers.get("destination"))
            message = "internal server error"
        if self.state is not State.CONNECTED:
            return NOT_RECEIPTED
        self.parser.stop()
        if self._pending_failure is None:
            self._pending_failure = (message, message, frame, None)
        self._close_after_receipts = True
        return REFUSED

    def _dispatch_to_app(self, frame: Frame) -> Deferred[Any] | object | None:
        context = AppContext(self.session_id, self.principal, self.broker)
        try:
            result = self.context.router.dispatch(frame, context)
        except NoHandler as error:
            raise ProtocolError("no such destination", str(error)) from None
        except ApplicationError as error:
            self._report_app_error(frame, error)
            return NOT_RECEIPTED
        except (ProtocolError, BrokerError):
            raise
        except Exception:
            return self._app_failed(Failure(), frame)
        if result is None:
            return None
        return result.addErrback(self._app_failed, frame)

    def _app_failed(self, failure: Failure, frame: Frame) -> object:
        if isinstance(failure.value, ApplicationError):
            self._report_app_error(frame, failure.value)
        else:
            log.failure("application handler failed for {destination}", failure,
                        destination=frame.headers.get("destination"))
            self._report_app_error(frame, ApplicationError("internal error", code="internal"))
        return NOT_RECEIPTED

    def _report_app_error(self, frame: Frame, error: ApplicationError) -> None:
        report_application_error(self.broker, self.user_key, frame, error)

    # -- SUBSCRIBE / UNSUBSCRIBE -----------------------------------------

    def _on_subscribe(self, frame: Frame) -> None:
        destination = required_header(frame, "destination")
        sub_id = frame.headers.get("id")
        if sub_id is None:
            if self.version != V1_0:
                raise ProtocolError("missing header 'id'", "SUBSCRIBE requires an 'id' header")
            sub_id = destination
        acks = self._acks
        if sub_id in acks:
            raise ProtocolError("duplicate subscription", f"subscription id {sub_id!r} is in use")
        if len(acks) >= self.context.settings.max_subscriptions:
            raise ProtocolError(
                "too many subscriptions",
                f"a connection may hold {self.context.settings.max_subscriptions} subscriptions",
            )
        ack_mode = frame.headers.get("ack", ACK_AUTO)
        if ack_mode not in ACK_MODES:
            raise ProtocolError("invalid ack mode", f"ack must be one of {sorted(ACK_MODES)}")
        sub = Subscription(self, sub_id, destination, ack_mode, acks.next_serial())
        sub.wire = f"subscription:{escape_header(sub_id, self.version)}\n".encode()
        self.broker.subscribe(sub, self.user_key)
        acks.add(sub)
        notify_subscribed(self.context.subscription_listeners, self, sub, frame.headers)
        self._receipts.add(frame.headers.get("receipt"))

    def _on_unsubscribe(self, frame: Frame) -> None:
        sub_id = frame.headers.get("id")
        if sub_id is None and self.version == V1_0:
            sub_id = frame.headers.get("destination")
        if sub_id is None:
            raise ProtocolError("missing header 'id'", "UNSUBSCRIBE requires an 'id' header")
        sub = self._acks.remove(sub_id)
        if sub is None:
            raise ProtocolError("no such subscription", f"no subscription with id {sub_id!r}")
        self.broker.unsubscribe(sub)
        notify_unsubscribed(self.context.subscription_listeners, self, sub)
        self._receipts.add(frame.headers.get("receipt"))

    # -- delivery ----------------------------------------------------------

    def deliver(self, subscription: Subscription, message: Message) -> None:
        """Write a MESSAGE for ``subscription`` (called by the broker)."""
        if self.state is _CLOSED:
            # Only a fan-out already under way can still reach a closed
            # session; a queue message must then go to someone else.
            self.broker.requeue(subscription.key, (message,))
            return
        if subscription.ack_mode == ACK_AUTO:
            # Once per delivered MESSAGE: the cached head without a call, when there is one.
            head = message.heads.get(self.version) or message.head(self.version)
            data = head + subscription.wire + message.tail
        else:
            subscription.pending[message.message_id] = message
            if self.version == V1_2:
                ack = f"ack:{message.message_id}@{subscription.serial}\n".encode()
                data = message.head(self.version) + subscription.wire + ack + message.tail
            else:
                data = message.head(self.version) + subscription.wire + message.tail
        self._sent = True
        self.transport.write(data)
        self.context.stats.delivered += 1

    # -- ACK / NACK --------------------------------------------------------

    def _on_ack(self, frame: Frame) -> None:
        sub, message_id = self._acks.target(frame, self.version)
        if not self._transactions.hold(frame):
            self._acks.settle(sub, message_id, requeue=False)
        self._receipts.add(frame.headers.get("receipt"))

    def _on_nack(self, frame: Frame) -> None:
        if self.version == V1_0:
            raise ProtocolError("unknown command", "NACK is not part of STOMP 1.0")
        sub, message_id = self._acks.target(frame, self.version)
        if not self._transactions.hold(frame):
            self._acks.settle(sub, message_id, requeue=True)
        self._receipts.add(frame.headers.get("receipt"))

    # -- transactions ------------------------------------------------------

    def _on_begin(self, frame: Frame) -> None:
        self._transactions.begin(required_header(frame, "transaction"))
        self._receipts.add(frame.headers.get("receipt"))

    def _on_commit(self, frame: Frame) -> None:
        frames = self._transactions.take(required_header(frame, "transaction"))
        waits: list[Deferred[Any]] = []
        acks = self._acks
        for queued in frames:
            if queued.command == "SEND":
                result = self._apply_send(queued, queued.headers["destination"], frame)
                if isinstance(result, Deferred):
                    waits.append(result)
            else:
                sub, message_id = acks.target(queued, self.version)
                acks.settle(sub, message_id, requeue=queued.command == "NACK")
        self._receipts.add(frame.headers.get("receipt"),
                           DeferredList(waits).addCallback(_refused_if_any) if waits else None)

    def _on_abort(self, frame: Frame) -> None:
        self._transactions.take(required_header(frame, "transaction"))
        self._receipts.add(frame.headers.get("receipt"))

    # -- DISCONNECT and receipts -----------------------------------------

    def _on_disconnect(self, frame: Frame) -> None:
        self.parser.stop()
        self._close_after_receipts = True
        self._receipts.add(frame.headers.get("receipt"))
        if not self._receipts:
            self.close()

    def _write_receipt(self, receipt_id: str) -> None:
        if self.state is State.CONNECTED:
            self._write(encode_frame(Frame("RECEIPT", {"receipt-id": receipt_id}), self.version))
            self.context.stats.frames_sent["RECEIPT"] += 1

    def _receipt_backlog(self, full: bool) -> None:
        """Too many frames wait behind a slow one: read nothing more until half are done."""
        if self.state is State.CLOSED:
            return
        if full:
            self.transport.pause_reading()
        elif not self._waiting:
            self.transport.resume_reading()

    def _fail_in_order(
        self,
        message: str,
        detail: str,
        frame: Frame | None,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        """ERROR for a refused frame, after the RECEIPTs earlier frames are owed: a client
        told nothing of a stored message would send it again."""
        if self.state is not State.CONNECTED or not self._receipts:
            self.fail(message, detail, frame, extra_headers)
            return
        self.parser.stop()
        self._pending_failure = (message, detail, frame, extra_headers)
        self._close_after_receipts = True

    def _receipts_drained(self) -> None:
        if self._pending_failure is not None:
            self.fail(*self._pending_failure)
        elif self._close_after_receipts:
            if self._shutdown_message is not None:
                self.fail(self._shutdown_message)
            else:
                self.close()

    @property
    def pending_receipts(self) -> int:
        """RECEIPTs owed to the client and not sent yet."""
        return len(self._receipts)

    def shut_down(self, message: str) -> None:
        """Stop reading; once every RECEIPT due has gone out, send ERROR and close."""
        self.parser.stop()
        self._shutdown_message = message
        self._close_after_receipts = True
        if not self._receipts:
            self.fail(message)

    # -- errors and closing ----------------------------------------------

    def fail(
        self,
        message: str,
        detail: str = "",
        frame: Frame | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        """Send ERROR (naming the failed frame's receipt), then close."""
        if self.state is State.CLOSED:
            return
        if self.state is State.AUTHENTICATING:
            self.context.stats.connect_refused(self.connection.transport)
        headers = {"message": message}
        if extra_headers:
            headers.update(extra_headers)
        if frame is not None and "receipt" in frame.headers:
            headers["receipt-id"] = frame.headers["receipt"]
        headers["content-type"] = "text/plain;charset=utf-8"
        body = (detail or message).encode("utf-8")
        log.info(
            "closing session {session} from {peer}: {message}",
            session=self.session_id,
            peer=self.peer,
            message=message,
        )
        try:
            self._write(encode_frame(Frame("ERROR", headers, body), self.version))
            self.context.stats.frames_sent["ERROR"] += 1
            self.context.stats.error_sent(message)
        except Exception:
            # A transport that refuses writes must not keep the session open.
            log.failure("could not send ERROR to {peer}", peer=self.peer)
        self.close()

    def close(self) -> None:
        """Stop the session and let the transport flush and close."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self.parser.stop()
        self._release()
        self.transport.close()

    def connection_lost(self) -> None:
        """The transport is gone: give back everything the session held."""
        self.state = State.CLOSED
        self.parser.stop()
        self._release()

    def _release(self) -> None:
        self.context.heartbeats.discard(self)
        ended = list(self.subscriptions.values())
        self._acks.release()
        for sub in ended:
            notify_unsubscribed(self.context.subscription_listeners, self, sub)
        self._transactions.clear()
        self._held.clear()
        self._partial_since = None

    # -- heart-beats -------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self._sent = True
        self.transport.write(data)

    def check_liveness(self, now: float, tick: float) -> None:
        """Called every ``tick`` s: send a heart-beat, or drop a silent or stale peer."""
        settings = self.context.settings
        state = self.state
        if state is State.AWAITING_CONNECT or state is State.AUTHENTICATING:
            # Authentication that never answers must not hold a paused
            # connection forever either.
            if now - self._opened_at >= settings.connect_timeout:
                self.fail("connect timeout", "the connection was not established in time")
                return
        held = self.transport.reading_held
        partial_since = self._partial_since
        if partial_since is not None and held:
            self._partial_since = now  # the rest of the frame waits unread, by the server
        elif partial_since is not None and now - partial_since >= settings.frame_timeout:
            self.fail(
                "frame timeout",
                f"a frame was not complete {settings.frame_timeout:g} s after its first byte",
            )
            return
        principal = self.principal
        if principal is not None and principal.expires_at is not None:
            if now >= principal.expires_at:
                self.fail("token expired", "the credentials of this session have expired")
                return
        if self._received or held:
            # Heart-beats the server does not read prove nothing either way.
            self._received = False
            self._last_read = now
        elif self._incoming and now - self._last_read > self._incoming * HEARTBEAT_GRACE + tick:
            self.fail("heart-beat timeout", "nothing was received within the heart-beat interval")
            return
        if self._sent:
            self._sent = False
            self._last_write = now
        elif self._outgoing and now - self._last_write >= self._outgoing - 2 * tick:
            self._last_write = now
            self.transport.write(HEARTBEAT_EOL)

    _handlers: dict[str, Callable[[StompSession, Frame], None]] = {
        "SEND": _on_send,
        "SUBSCRIBE": _on_subscribe,
        "UNSUBSCRIBE": _on_unsubscribe,
        "ACK": _on_ack,
        "NACK": _on_nack,
        "BEGIN": _on_begin,
        "COMMIT": _on_commit,
        "ABORT": _on_abort,
        "DISCONNECT": _on_disconnect,
    }


def _refused_if_any(results: list[tuple[bool, Any]]) -> object:
    """A COMMIT whose SENDs include a refused one is refused too."""
    return REFUSED if any(result is REFUSED for _, result in results) else None
