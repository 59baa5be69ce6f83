"""One client's STOMP session: the protocol's brain, without any socket.

Bytes come in through ``data_received``; frames go out through a
``FrameTransport`` (a TCP connection or a WebSocket, the session cannot tell).
Every protocol violation raises a typed error that ``frame_received`` turns
into ERROR-then-close in one place.
"""

from __future__ import annotations

import enum
import json
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from stomp_chat import __version__
from stomp_chat.app.routes import AppContext, AppRouter, NoHandler
from stomp_chat.broker import (
    ACK_AUTO,
    ACK_CLIENT,
    ACK_MODES,
    APP_PREFIX,
    RESERVED_HEADERS,
    Broker,
    BrokerError,
    Message,
    Subscription,
)
from stomp_chat.errors import ApplicationError, AuthError, ProtocolError
from stomp_chat.heartbeat import HeartbeatMonitor
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
from stomp_chat.stomp.parser import (
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_HEADER_LENGTH,
    DEFAULT_MAX_HEADERS,
    FrameParser,
)

log = Logger()

HEARTBEAT_EOL = b"\n"
#: How far past the negotiated interval a silent client is still tolerated.
HEARTBEAT_GRACE = 1.5


class FrameTransport(Protocol):
    """Where a session writes: one call, one whole frame."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None:
        """Flush what was written, then close."""


class Authenticator(Protocol):
    """Turns CONNECT credentials into a principal (user name), or refuses."""

    def authenticate(self, frame: Frame) -> Deferred[str | None] | str | None:
        """Return the principal, ``None`` for anonymous, or raise ``AuthError``."""


class AnonymousAuthenticator:
    """Everyone may connect; nobody has a name."""

    def authenticate(self, frame: Frame) -> str | None:
        return None


@dataclass(slots=True)
class SessionSettings:
    """Per-server settings every session reads."""

    server_name: str = f"stomp-chat/{__version__}"
    #: What the server can send and wants to receive, in ms (sx, sy).
    heartbeat: tuple[int, int] = (10_000, 10_000)
    connect_timeout: float = 30.0
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    max_headers: int = DEFAULT_MAX_HEADERS
    max_header_length: int = DEFAULT_MAX_HEADER_LENGTH
    max_subscriptions: int = 1_000


class State(enum.Enum):
    AWAITING_CONNECT = "awaiting CONNECT"
    AUTHENTICATING = "authenticating"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(slots=True)
class ServerContext:
    """What every session of one server shares (the factory's state)."""

    broker: Broker
    router: AppRouter
    settings: SessionSettings
    heartbeats: HeartbeatMonitor
    authenticator: Authenticator

    @property
    def clock(self) -> Any:
        return self.heartbeats.clock


class StompSession:
    """The protocol state of one connection."""

    # Thousands of these live at once, mostly idle: no per-instance dict.
    __slots__ = (
        "__weakref__",
        "_close_after_receipts",
        "_held",
        "_incoming",
        "_last_read",
        "_last_write",
        "_next_serial",
        "_opened_at",
        "_outgoing",
        "_receipts",
        "_received",
        "_sent",
        "_subscriptions_by_serial",
        "_transactions",
        "broker",
        "context",
        "parser",
        "peer",
        "principal",
        "session_id",
        "state",
        "subscriptions",
        "transport",
        "version",
    )

    def __init__(self, context: ServerContext, transport: FrameTransport, peer: str = "") -> None:
        settings = context.settings
        self.context = context
        self.broker = context.broker
        self.transport = transport
        self.peer = peer
        self.session_id = secrets.token_hex(8)
        self.state = State.AWAITING_CONNECT
        self.version = V1_0
        self.principal: str | None = None
        self.parser = FrameParser(
            self.frame_received,
            max_frame_size=settings.max_frame_size,
            max_headers=settings.max_headers,
            max_header_length=settings.max_header_length,
        )
        self.subscriptions: dict[str, Subscription] = {}
        self._subscriptions_by_serial: dict[int, Subscription] = {}
        self._next_serial = 0
        self._transactions: dict[str, list[Frame]] = {}
        #: Receipts waiting for an earlier, slower one: [receipt-id, ready].
        self._receipts: deque[list[Any]] = deque()
        self._close_after_receipts = False
        #: Frames that arrived while CONNECT was being authenticated.
        self._held: list[Frame] = []
        # Liveness, sampled by the heart-beat monitor.
        now = context.clock.seconds()
        self._opened_at = now
        self._last_read = now
        self._last_write = now
        self._received = False
        self._sent = False
        self._incoming = 0.0
        self._outgoing = 0.0
        context.heartbeats.add(self)

    # -- input -----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Feed bytes from the client; any byte proves it is alive."""
        self._received = True
        try:
            self.parser.feed(data)
        except FrameError as error:
            self.fail(str(error), frame=error.frame)

    def frame_received(self, frame: Frame) -> None:
        """Dispatch one frame; the one place errors become ERROR frames."""
        state = self.state
        if state is State.CLOSED:
            return
        if state is State.AUTHENTICATING:
            self._held.append(frame)
            return
        try:
            if state is State.AWAITING_CONNECT:
                if frame.command not in ("CONNECT", "STOMP"):
                    raise ProtocolError(
                        "expected CONNECT", f"the first frame must be CONNECT, not {frame.command}"
                    )
                self._on_connect(frame)
                return
            handler = self._handlers.get(frame.command)
            if handler is None:
                if frame.command in ("CONNECT", "STOMP"):
                    raise ProtocolError("already connected", "a second CONNECT is not allowed")
                raise ProtocolError("unknown command", f"unknown command {frame.command[:80]!r}")
            if frame.body and frame.command != "SEND":
                raise ProtocolError(f"{frame.command} frames carry no body")
            handler(self, frame)
        except ProtocolError as error:
            self.fail(error.message, error.detail, frame, error.headers)
        except (BrokerError, FrameError) as error:
            self.fail(str(error), str(error), frame)
        except Exception:
            log.failure("error handling {command} from {peer}", command=frame.command,
                        peer=self.peer)
            self.fail("internal server error", "the server failed to handle this frame", frame)

    # -- CONNECT -----------------------------------------------------------

    def _on_connect(self, frame: Frame) -> None:
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
        self.state = State.AUTHENTICATING
        # Frames pipelined behind CONNECT are parsed while authentication
        # runs: they must already be unescaped as the negotiated version says.
        self.parser.version = version
        d = maybeDeferred(self.context.authenticator.authenticate, frame)
        d.addCallbacks(
            self._connected, self._refused, callbackArgs=(version,), errbackArgs=(frame,)
        )

    def _connected(self, principal: str | None, version: str) -> None:
        if self.state is State.CLOSED:
            return
        self.principal = principal
        self.version = version
        self.parser.version = version
        self.state = State.CONNECTED
        headers = {"version": version, "session": self.session_id}
        if version != V1_0:
            sx, sy = self.context.settings.heartbeat
            headers["heart-beat"] = f"{sx},{sy}"
        headers["server"] = self.context.settings.server_name
        if principal is not None:
            headers["user-name"] = principal
        self._write(encode_frame(Frame("CONNECTED", headers), version))
        held, self._held = self._held, []
        for frame in held:
            self.frame_received(frame)

    def _refused(self, failure: Failure, frame: Frame) -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.AWAITING_CONNECT
        error = failure.value
        if isinstance(error, AuthError):
            self.fail(error.message, error.detail, frame)
        else:
            log.failure("authentication failed unexpectedly", failure)
            self.fail(
                "authentication unavailable", "the server could not check credentials", frame
            )

    # -- SEND ------------------------------------------------------------

    def _on_send(self, frame: Frame) -> None:
        destination = _required(frame, "destination")
        if "transaction" in frame.headers:
            self._check_destination(destination)  # now, not at COMMIT: all or nothing
            self._buffered_in_transaction(frame)
            self._receipt(frame)
            return
        self._receipt(frame, self._apply_send(frame, destination))

    def _check_destination(self, destination: str) -> None:
        """Refuse a SEND at once, even inside a transaction that commits later."""
        if destination.startswith(APP_PREFIX):
            try:
                self.context.router.resolve(destination)
            except NoHandler as error:
                raise ProtocolError("no such destination", str(error)) from None
        else:
            self.broker.check_destination(destination)

    def _apply_send(self, frame: Frame, destination: str) -> Deferred[Any] | object | None:
        """Route a SEND now; a Deferred means its receipt must wait."""
        if destination.startswith(APP_PREFIX):
            return self._dispatch_to_app(frame)
        headers = {k: v for k, v in frame.headers.items() if k not in RESERVED_HEADERS}
        self.broker.publish(destination, frame.body, headers)
        return None

    def _dispatch_to_app(self, frame: Frame) -> Deferred[Any] | object | None:
        context = AppContext(self.session_id, self.principal, self.broker)
        try:
            result = self.context.router.dispatch(frame, context)
        except NoHandler as error:
            raise ProtocolError("no such destination", str(error)) from None
        except ApplicationError as error:
            self._report_app_error(frame, error)
            return _NOT_RECEIPTED
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
        return _NOT_RECEIPTED

    def _report_app_error(self, frame: Frame, error: ApplicationError) -> None:
        """Tell the client on /user/queue/errors; its connection stays open."""
        headers = {"message": error.message, "code": error.code}
        receipt = frame.headers.get("receipt")
        if receipt is not None:
            headers["receipt-id"] = receipt
        body = _error_json(error, frame.headers.get("destination", ""), receipt)
        self.broker.send_to_user(self._user_key, "/user/queue/errors", body, headers)

    @property
    def _user_key(self) -> str:
        return self.principal if self.principal is not None else self.session_id

    # -- SUBSCRIBE / UNSUBSCRIBE -----------------------------------------

    def _on_subscribe(self, frame: Frame) -> None:
        destination = _required(frame, "destination")
        sub_id = frame.headers.get("id")
        if sub_id is None:
            if self.version != V1_0:
                raise ProtocolError("missing header 'id'", "SUBSCRIBE requires an 'id' header")
            sub_id = destination
        if sub_id in self.subscriptions:
            raise ProtocolError("duplicate subscription", f"subscription id {sub_id!r} is in use")
        if len(self.subscriptions) >= self.context.settings.max_subscriptions:
            raise ProtocolError("too many subscriptions")
        ack_mode = frame.headers.get("ack", ACK_AUTO)
        if ack_mode not in ACK_MODES:
            raise ProtocolError("invalid ack mode", f"ack must be one of {sorted(ACK_MODES)}")
        self._next_serial += 1
        sub = Subscription(self, sub_id, destination, ack_mode, self._next_serial)
        sub.wire = f"subscription:{escape_header(sub_id, self.version)}\n".encode()
        self.broker.subscribe(sub, self._user_key)
        self.subscriptions[sub_id] = sub
        self._subscriptions_by_serial[sub.serial] = sub
        self._receipt(frame)

    def _on_unsubscribe(self, frame: Frame) -> None:
        sub_id = frame.headers.get("id")
        if sub_id is None and self.version == V1_0:
            sub_id = frame.headers.get("destination")
        if sub_id is None:
            raise ProtocolError("missing header 'id'", "UNSUBSCRIBE requires an 'id' header")
        sub = self.subscriptions.pop(sub_id, None)
        if sub is None:
            raise ProtocolError("no such subscription", f"no subscription with id {sub_id!r}")
        del self._subscriptions_by_serial[sub.serial]
        self.broker.unsubscribe(sub)
        self._receipt(frame)

    # -- delivery ----------------------------------------------------------

    def deliver(self, subscription: Subscription, message: Message) -> None:
        """Write a MESSAGE for ``subscription`` (called by the broker)."""
        if self.state is State.CLOSED:
            # Only a fan-out already under way can still reach a closed
            # session; a queue message must then go to someone else.
            self.broker.requeue(subscription.key, (message,))
            return
        if subscription.ack_mode == ACK_AUTO:
            data = message.head(self.version) + subscription.wire + message.tail
        else:
            subscription.pending[message.message_id] = message
            if self.version == V1_2:
                ack = f"ack:{message.message_id}@{subscription.serial}\n".encode()
                data = message.head(self.version) + subscription.wire + ack + message.tail
            else:
                data = message.head(self.version) + subscription.wire + message.tail
        self._sent = True
        self.transport.write(data)

    # -- ACK / NACK --------------------------------------------------------

    def _on_ack(self, frame: Frame) -> None:
        target = self._ack_target(frame)
        if not self._buffered_in_transaction(frame):
            self._settle(*target, requeue=False)
        self._receipt(frame)

    def _on_nack(self, frame: Frame) -> None:
        if self.version == V1_0:
            raise ProtocolError("unknown command", "NACK is not part of STOMP 1.0")
        target = self._ack_target(frame)
        if not self._buffered_in_transaction(frame):
            self._settle(*target, requeue=True)
        self._receipt(frame)

    def _ack_target(self, frame: Frame) -> tuple[Subscription, str]:
        """Find which subscription and message an ACK or NACK names."""
        if self.version == V1_2:
            ack_id = _required(frame, "id")
            message_id, _, serial = ack_id.rpartition("@")
            valid = serial.isascii() and serial.isdigit()
            sub = self._subscriptions_by_serial.get(int(serial)) if valid else None
            if sub is None or message_id not in sub.pending:
                raise ProtocolError(
                    "unknown ack id", f"no unacknowledged message with id {ack_id!r}"
                )
            return sub, message_id
        message_id = _required(frame, "message-id")
        if self.version == V1_0:
            candidates = list(self.subscriptions.values())
        else:
            sub_id = _required(frame, "subscription")
            sub = self.subscriptions.get(sub_id)
            if sub is None:
                raise ProtocolError("no such subscription", f"no subscription with id {sub_id!r}")
            candidates = [sub]
        for sub in candidates:
            if message_id in sub.pending:
                return sub, message_id
        raise ProtocolError(
            "unknown message-id", f"no unacknowledged message with message-id {message_id!r}"
        )

    def _settle(self, sub: Subscription, message_id: str, *, requeue: bool) -> None:
        """ACK or NACK one message, or every earlier one too in ``client`` mode."""
        pending = sub.pending
        if message_id not in pending:
            return  # settled meanwhile, e.g. by an earlier cumulative ACK
        if sub.ack_mode == ACK_CLIENT:
            settled = []
            while pending:
                mid, message = pending.popitem(last=False)
                settled.append(message)
                if mid == message_id:
                    break
        else:
            settled = [pending.pop(message_id)]
        if requeue:
            self.broker.requeue(sub.key, settled)
        self.broker.settled(sub)

    # -- transactions ------------------------------------------------------

    def _buffered_in_transaction(self, frame: Frame) -> bool:
        name = frame.headers.get("transaction")
        if name is None:
            return False
        frames = self._transactions.get(name)
        if frames is None:
            raise ProtocolError("unknown transaction", f"transaction {name!r} was not begun")
        frames.append(frame)
        return True

    def _on_begin(self, frame: Frame) -> None:
        name = _required(frame, "transaction")
        if name in self._transactions:
            raise ProtocolError("transaction already begun", f"transaction {name!r} is active")
        self._transactions[name] = []
        self._receipt(frame)

    def _on_commit(self, frame: Frame) -> None:
        frames = self._take_transaction(frame)
        waits: list[Deferred[Any]] = []
        for queued in frames:
            if queued.command == "SEND":
                result = self._apply_send(queued, queued.headers["destination"])
                if isinstance(result, Deferred):
                    waits.append(result)
            else:
                self._settle(*self._ack_target(queued), requeue=queued.command == "NACK")
        self._receipt(frame, DeferredList(waits) if waits else None)

    def _on_abort(self, frame: Frame) -> None:
        self._take_transaction(frame)
        self._receipt(frame)

    def _take_transaction(self, frame: Frame) -> list[Frame]:
        name = _required(frame, "transaction")
        frames = self._transactions.pop(name, None)
        if frames is None:
            raise ProtocolError("unknown transaction", f"transaction {name!r} was not begun")
        return frames

    # -- DISCONNECT and receipts -----------------------------------------

    def _on_disconnect(self, frame: Frame) -> None:
        self.parser.stop()
        self._close_after_receipts = True
        self._receipt(frame)
        if not self._receipts:
            self.close()

    def _receipt(self, frame: Frame, waiting: Deferred[Any] | object | None = None) -> None:
        """Acknowledge ``frame``; receipts leave in the order of their frames.

        A receipt behind a slower one (a durable SEND) waits for it, since a
        RECEIPT promises that every earlier frame was handled.
        """
        receipt_id = frame.headers.get("receipt")
        if isinstance(waiting, Deferred):
            # Even without a receipt of its own, a slow frame holds back
            # the receipts of later frames (entry with no id: nothing sent).
            entry: list[Any] = [receipt_id, _RECEIPT_PENDING]
            self._receipts.append(entry)
            waiting.addBoth(self._receipt_ready, entry)
            return
        if receipt_id is None:
            return
        status = _RECEIPT_SKIPPED if waiting is _NOT_RECEIPTED else _RECEIPT_READY
        if self._receipts:
            self._receipts.append([receipt_id, status])
        elif status is _RECEIPT_READY:
            self._write_receipt(receipt_id)

    def _receipt_ready(self, result: object, entry: list[Any]) -> None:
        entry[1] = _RECEIPT_SKIPPED if result is _NOT_RECEIPTED else _RECEIPT_READY
        receipts = self._receipts
        while receipts and receipts[0][1] is not _RECEIPT_PENDING:
            receipt_id, status = receipts.popleft()
            if receipt_id is None:
                continue
            if status is _RECEIPT_READY and self.state is State.CONNECTED:
                self._write_receipt(receipt_id)
        if not receipts and self._close_after_receipts:
            self.close()

    def _write_receipt(self, receipt_id: str) -> None:
        self._write(encode_frame(Frame("RECEIPT", {"receipt-id": receipt_id}), self.version))

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
        self._write(encode_frame(Frame("ERROR", headers, body), self.version))
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
        subscriptions, self.subscriptions = self.subscriptions, {}
        self._subscriptions_by_serial.clear()
        # Unsubscribe everything first: a message given back must not land
        # on another subscription of this same closing session.
        unacked = [(sub.key, list(sub.pending.values())) for sub in subscriptions.values()]
        for sub in subscriptions.values():
            sub.pending.clear()
            self.broker.unsubscribe(sub)
        for key, messages in unacked:
            self.broker.requeue(key, messages)
        self._transactions.clear()
        self._held.clear()

    # -- heart-beats -------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self._sent = True
        self.transport.write(data)

    def check_liveness(self, now: float, tick: float) -> None:
        """Called every ``tick`` s: send a heart-beat, or drop a silent peer."""
        if self.state is State.AWAITING_CONNECT:
            if now - self._opened_at >= self.context.settings.connect_timeout:
                self.fail("connect timeout", "no CONNECT frame was received in time")
                return
        if self._received:
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


#: What an application Deferred resolves to when its SEND failed and was
#: reported on /user/queue/errors: no RECEIPT is due.
_NOT_RECEIPTED = object()
_RECEIPT_PENDING = "pending"
_RECEIPT_READY = "ready"
_RECEIPT_SKIPPED = "skipped"


def _required(frame: Frame, name: str) -> str:
    value = frame.headers.get(name)
    if value is None:
        raise ProtocolError(
            f"missing header '{name}'", f"{frame.command} requires a '{name}' header"
        )
    return value


def _error_json(error: ApplicationError, destination: str, receipt: str | None) -> bytes:
    payload: dict[str, Any] = {
        "error": error.code,
        "message": error.message,
        "destination": destination,
    }
    if receipt is not None:
        payload["receipt"] = receipt
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")
