"""The server's service tree: what starts in which order, and how it stops without loss.

Listeners are children of the tree, so ``privilegedStartService`` binds them
before ``twistd --uid`` drops root. Stopping is sequenced by hand, because
``MultiService`` stops its children all at once and a data-safe stop must
drain clients before it flushes and flush before it closes the pool.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Generator, Iterable
from typing import Any, Protocol

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    TimeoutError,
    inlineCallbacks,
    maybeDeferred,
)
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from stomp_chat.logs import ServerLog

log = Logger()

#: What every client is told when the server goes away.
SHUTDOWN_MESSAGE = "server shutting down"

#: How often a batch of clients is told during the drain window.
DRAIN_BATCH_INTERVAL = 0.1
#: Clients told together at least: this many reconnecting at once is no stampede.
MIN_DRAIN_BATCH = 50


class StartupError(SystemExit, Exception):
    """A reason the server cannot start, shown as one line and a non-zero exit.

    It is a ``SystemExit`` so that ``twistd -n`` prints only the message, and an
    ``Exception`` so that a daemonising ``twistd`` reports it to the parent
    process, which exits non-zero with it. Once ``twistd`` has taken over
    standard error for its log, the message is written by ``report`` instead
    and the exit status carries no text.
    """

    def __init__(self, message: str, *, reported: bool = False) -> None:
        super().__init__(1 if reported else f"stomp-chat: cannot start: {message}")
        self.message = message

    def __str__(self) -> str:
        return self.message

    @classmethod
    def report(cls, message: str) -> StartupError:
        """Log the reason, show it on the terminal ``twistd`` started from, and return it."""
        log.critical("stomp-chat: cannot start: {reason}", reason=message)
        terminal = sys.__stderr__
        if terminal is not None and terminal is not sys.stderr:
            try:
                terminal.write(f"stomp-chat: cannot start: {message}\n")
                terminal.flush()
            except (OSError, ValueError):
                pass  # a daemon's standard error is closed
        return cls(message, reported=True)


class Drainable(Protocol):
    """A client session as the drain sees it."""

    def shut_down(self, message: str) -> None: ...


class Listener(StreamServerEndpointService):
    """A listening endpoint that names itself in start-up errors.

    ``twisted.application.strports.service`` builds the same service but
    parses the endpoint string again; this one takes the endpoint parsed
    while the options were checked.
    """

    def __init__(self, label: str, description: str, endpoint: Any, factory: Any) -> None:
        super().__init__(endpoint, factory)
        self.label = label
        self.description = description
        self.setName(label)
        self._raiseSynchronously = True
        self.port: Any = None

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as error:
            raise StartupError.report(self._cannot_listen(error.socketError)) from None
        except Exception as error:  # port out of range, bad interface...: one line each
            raise StartupError.report(self._cannot_listen(error)) from None
        if self._waitingForPort is not None:
            self._waitingForPort.addCallback(self._listening)

    def _cannot_listen(self, error: object) -> str:
        shown = self.description.removesuffix(":backlog=1024")
        return f"--{self.label}: cannot listen on {shown}: {error}"

    def _listening(self, port: Any) -> Any:
        self.port = port
        return port

    @property
    def listening(self) -> bool:
        return bool(self.running) and self.port is not None


class ChatServer(MultiService):
    """The root of the service tree.

    Children, in start order: the write-behind writer, the Redis relay
    (cluster mode), the heart-beat monitor, then the listeners. Stop runs in
    reverse, in steps: report not-ready, stop listening, tell clients in
    batches over ``drain_window`` (each client first gets every RECEIPT it is
    owed), flush the writer, then close the pool; bounded by
    ``shutdown_timeout``.
    """

    def __init__(
        self,
        reactor: Any,
        pool: Any,
        writer: Service,
        monitor: Any,
        listeners: Iterable[Listener],
        relay: Service | None = None,
        *,
        migrate_on_start: Callable[[], Deferred[int]] | None = None,
        drain_window: float = 0.0,
        shutdown_timeout: float = 30.0,
        on_drain: Iterable[Callable[[], None]] = (),
        on_flushed: Iterable[Callable[[], Deferred[None] | None]] = (),
        support: Iterable[IService] = (),
        server_log: ServerLog | None = None,
        open_connections: Callable[[], int] = lambda: 0,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.pool = pool
        self.writer = writer
        self.relay = relay
        self.monitor = monitor
        self.listeners = list(listeners)
        self.drain_window = drain_window
        self.shutdown_timeout = shutdown_timeout
        self.draining = False
        self.started = False
        self._on_drain = list(on_drain)
        self._on_flushed = list(on_flushed)
        self._migrate_on_start = migrate_on_start
        self.server_log = server_log
        self._open_connections = open_connections
        self._ordered: list[IService] = []
        if server_log is not None:
            self._ordered.append(server_log)
        self._ordered.append(writer)
        if relay is not None:
            self._ordered.append(relay)
        self._ordered.append(monitor)
        self._ordered.extend(support)
        self._ordered.extend(self.listeners)
        for child in self._ordered:
            child.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> Any:
        """Under ``twistd``, also hand it the server's log observer."""
        if self.server_log is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.server_log.observer)
        return super().setServiceParent(parent)

    # -- start -----------------------------------------------------------------------------

    def startService(self) -> None:
        Service.startService(self)
        if self._migrate_on_start is None:
            self._start_children()
            return
        # An in-memory database lives in the pool's one connection: migrate it there.
        migrating = self._migrate_on_start()
        migrating.addCallback(lambda _: self._start_children())
        migrating.addErrback(self._cannot_start)

    def _start_children(self) -> None:
        for child in self._ordered:
            child.startService()
        self.started = True

    def _cannot_start(self, failure: Any) -> None:
        log.critical("stomp-chat: cannot start: {error}", error=failure.getErrorMessage())
        self.reactor.stop()

    @property
    def listening(self) -> bool:
        """Every listener is bound and accepting."""
        return self.started and not self.draining and all(
            listener.listening for listener in self.listeners
        )

    # -- stop ------------------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        """Drain and flush, giving up after ``shutdown_timeout`` seconds."""
        Service.stopService(self)
        stopping = self._stop_in_order()
        stopping.addTimeout(self.shutdown_timeout, self.reactor, self._timed_out)
        stopping.addErrback(self._stop_failed)
        stopping.addBoth(lambda _: self._close_pool())
        return stopping

    @inlineCallbacks
    def _stop_in_order(self) -> Generator[Deferred[Any], Any, None]:
        self.draining = True
        for hook in self._on_drain:
            hook()
        log.info(
            "draining: {count} client(s) to be told over {window}s",
            count=len(self.monitor),
            window=self.drain_window,
        )
        listening = [listener for listener in self.listeners if listener.running]
        yield DeferredList([maybeDeferred(s.stopService) for s in reversed(listening)])
        yield self._tell_clients()
        if self.monitor.running:
            self.monitor.stopService()
        for service in reversed(self._ordered):
            if service.running and service not in (self.writer, self.relay, self.server_log):
                yield maybeDeferred(service.stopService)
        if self.relay is not None and self.relay.running:
            yield self.relay.stopService()
        if self.writer.running:
            yield self.writer.stopService()
        for after_flush in self._on_flushed:
            yield maybeDeferred(after_flush)
        log.info("drained: every accepted message is saved")
        if self.server_log is not None and self.server_log.running:
            self.server_log.stopService()

    @inlineCallbacks
    def _tell_clients(self) -> Generator[Deferred[Any], Any, None]:
        """Tell clients in batches spread over the drain window, then wait for them to go."""
        sessions: list[Drainable] = list(self.monitor.sessions())
        told = set(map(id, sessions))
        batches = max(1, min(
            math.ceil(len(sessions) / MIN_DRAIN_BATCH),
            math.floor(self.drain_window / DRAIN_BATCH_INTERVAL),
        ))
        size = math.ceil(len(sessions) / batches) if sessions else 0
        interval = self.drain_window / batches
        for number in range(batches):
            if number:
                yield deferLater(self.reactor, interval, lambda: None)
            for session in sessions[number * size:(number + 1) * size]:
                self._tell(session)
            flush = getattr(self.writer, "flush", None)
            if flush is not None:
                flush()
        # Sessions leave once their receipts are out; then their sockets flush and close
        # (or are cut after the transports' close linger). A WebSocket handshake that was
        # under way when listening stopped opens its session late: tell it too.
        while len(self.monitor) or self._open_connections():
            for session in self.monitor.sessions():
                if id(session) not in told:
                    told.add(id(session))
                    self._tell(session)
            yield deferLater(self.reactor, 0.01, lambda: None)

    def _tell(self, session: Drainable) -> None:
        try:
            session.shut_down(SHUTDOWN_MESSAGE)
        except Exception:
            log.failure("telling a client to leave failed; going on with the others")

    def _timed_out(self, result: Any, timeout: float) -> Any:
        pending = getattr(self.writer, "pending_count", 0)
        log.error(
            "shutdown took longer than {timeout}s: stopping with {pending} message(s) unsaved "
            "and {clients} client(s) connected",
            timeout=timeout,
            pending=pending,
            clients=len(self.monitor),
        )
        return result

    def _stop_failed(self, failure: Any) -> None:
        if not failure.check(CancelledError, TimeoutError):
            log.failure("shutdown failed", failure)

    def _close_pool(self) -> None:
        if self.pool is not None:
            self.pool.close()

