"""The composition root: ``twistd stomp-chat`` options and service tree.

Everything is built and wired here and nowhere else: the clock, the broker,
the listening ports, and the order in which they stop.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import replace
from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger, LogLevel
from twisted.python import usage
from twisted.python.failure import Failure

from stomp_chat import __version__
from stomp_chat.app.chat import DEFAULT_ENTER_TEMPLATE, DEFAULT_HISTORY_SIZE, ChatService
from stomp_chat.app.rooms import DEFAULT_MAX_ACTIVE_ROOMS, DEFAULT_ROOM_IDLE_SECONDS
from stomp_chat.app.routes import AppRouter
from stomp_chat.broker import Broker
from stomp_chat.cluster import RedisRelay, parse_redis_url
from stomp_chat.heartbeat import HeartbeatMonitor, tick_for
from stomp_chat.persistence import (
    DEFAULT_DB_TIMEOUT,
    AdbapiChatStore,
    ChatConnectionPool,
    WriteBehindWriter,
    make_pool,
    migrate,
    migrate_blocking,
    parse_database_url,
)
from stomp_chat.session import AnonymousAuthenticator, ServerContext, SessionSettings
from stomp_chat.stomp.parser import DEFAULT_MAX_FRAME_SIZE
from stomp_chat.transport.stomp import DEFAULT_SLOW_CONSUMER_BYTES, StompFactory
from stomp_chat.transport.websocket import StompWebSocketFactory
from stomp_chat.web.api import ChatApi
from stomp_chat.web.site import build_site

log = Logger()


def _positive_int(name: str) -> Any:
    def coerce(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{name} must be a whole number, not {value!r}") from None
        if number <= 0:
            raise ValueError(f"{name} must be positive, not {number}")
        return number

    coerce.coerceDoc = "A positive whole number."  # type: ignore[attr-defined]
    return coerce


def _positive_number(name: str) -> Any:
    def coerce(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{name} must be a number, not {value!r}") from None
        if not 0 < number < float("inf"):
            raise ValueError(f"{name} must be positive, not {value}")
        return number

    coerce.coerceDoc = "A positive number."  # type: ignore[attr-defined]
    return coerce


def parse_heartbeat_option(value: str) -> tuple[int, int]:
    """``cx,cy`` in milliseconds, as STOMP writes it; 0 disables a direction."""
    parts = value.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        sx, sy = int(parts[0]), int(parts[1])
    except ValueError:
        raise ValueError(f"--heartbeat takes two whole numbers of ms, 'cx,cy', not {value!r}") \
            from None
    if sx < 0 or sy < 0:
        raise ValueError(f"--heartbeat intervals cannot be negative: {value!r}")
    return sx, sy


parse_heartbeat_option.coerceDoc = "Two whole numbers of milliseconds, cx,cy."  # type: ignore[attr-defined]


#: Twisted listens with a backlog of 50: after a restart, when every client
#: reconnects at once, the kernel's accept queue overflows and handshakes
#: wait for SYN retries (seconds). Applied unless the endpoint sets its own.
DEFAULT_BACKLOG = 1024


def with_default_backlog(description: str) -> str:
    """Add ``backlog=`` to a TCP or TLS endpoint string that has none."""
    kind = description.split(":", 1)[0].strip().lower()
    if kind in ("tcp", "tcp6", "ssl") and "backlog=" not in description:
        return f"{description}:backlog={DEFAULT_BACKLOG}"
    return description



class Options(usage.Options):
    """Command-line options of ``twistd stomp-chat``."""

    synopsis = "[options]"
    longdesc = (
        "Runs the stomp-chat server: STOMP 1.0-1.2 over raw TCP and over WebSocket "
        "(ws://HOST:PORT/ws/chat). Endpoints are Twisted endpoint strings, so "
        "'ssl:8443:privateKey=key.pem:certKey=cert.pem' serves TLS."
    )

    optParameters = [
        [
            "stomp",
            None,
            "tcp:61613",
            "Endpoint for raw STOMP over TCP ('none' to disable). TCP and TLS endpoints "
            f"listen with backlog={DEFAULT_BACKLOG} unless they say otherwise.",
        ],
        ["http", None, "tcp:8080", "Endpoint for HTTP: WebSocket at /ws/chat, REST under /api."],
        [
            "allowed-origins",
            None,
            "",
            "Comma-separated browser origin patterns allowed to open WebSockets "
            "('*' for all). Default: only the server's own origin. Clients that send "
            "no Origin header (stomp.py, Node) are always allowed.",
        ],
        [
            "max-frame-size",
            None,
            DEFAULT_MAX_FRAME_SIZE,
            "Largest STOMP frame accepted, in bytes (headers and body).",
            _positive_int("--max-frame-size"),
        ],
        [
            "heartbeat",
            None,
            "10000,10000",
            "Server heart-beat as STOMP writes it, 'cx,cy' in ms: how often the server "
            "can send, how often it wants to hear from clients (0 disables).",
            parse_heartbeat_option,
        ],
        [
            "slow-consumer-bytes",
            None,
            DEFAULT_SLOW_CONSUMER_BYTES,
            "How many bytes a client may fall behind before it is disconnected as a "
            "slow consumer.",
            _positive_int("--slow-consumer-bytes"),
        ],
        [
            "database",
            None,
            "sqlite:///stomp_chat.db",
            "Database URL: sqlite:///relative.db, sqlite:////absolute/path.db or "
            "postgresql://user:password@host:port/dbname.",
        ],
        [
            "write-interval",
            None,
            50,
            "Write-behind: the longest a chat message waits before its batch is written, in ms.",
            _positive_int("--write-interval"),
        ],
        [
            "write-batch",
            None,
            1000,
            "Write-behind: the most messages written in one transaction.",
            _positive_int("--write-batch"),
        ],
        [
            "write-buffer",
            None,
            100_000,
            "Write-behind: how many unsaved messages may wait (e.g. while the database is "
            "down) before new chat messages are refused.",
            _positive_int("--write-buffer"),
        ],
        [
            "db-timeout",
            None,
            DEFAULT_DB_TIMEOUT,
            "The longest any database call may take, in seconds: PostgreSQL's statement, "
            "connect and TCP timeouts, and the deadline after which a batch is abandoned and "
            "retried on a fresh connection. Stopping waits at most 3x this for unsaved "
            "messages.",
            _positive_number("--db-timeout"),
        ],
        [
            "room-idle-seconds",
            None,
            DEFAULT_ROOM_IDLE_SECONDS,
            "A chat room idle this long leaves memory; its next message loads it again.",
            _positive_number("--room-idle-seconds"),
        ],
        [
            "max-active-rooms",
            None,
            DEFAULT_MAX_ACTIVE_ROOMS,
            "The most chat rooms kept in memory; beyond it the least recently used leaves.",
            _positive_int("--max-active-rooms"),
        ],
        [
            "history-size",
            None,
            DEFAULT_HISTORY_SIZE,
            "How many recent messages of each active room are kept in memory.",
            _positive_int("--history-size"),
        ],
        [
            "max-history-page",
            None,
            100,
            "The most messages one history request returns.",
            _positive_int("--max-history-page"),
        ],
        [
            "enter-template",
            None,
            DEFAULT_ENTER_TEMPLATE,
            "The text of an ENTER message; {senderId} and {roomId} are replaced.",
        ],
        [
            "redis",
            None,
            None,
            "Cluster mode: share rooms with the other stomp-chat processes using this Redis, "
            "e.g. redis://127.0.0.1:6379/0. Off by default (one process).",
        ],
        [
            "config",
            "c",
            None,
            "A TOML file of options (option names as keys, e.g. http = \"tcp:8080\"); "
            "options given on the command line win.",
        ],
    ]

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"stomp-chat {__version__}")
        raise SystemExit(0)

    def parseOptions(self, options: Any = None) -> None:
        """Read ``--config FILE`` first; the command line then overrides it."""
        import sys

        argv = list(sys.argv[1:] if options is None else options)
        path = _config_path(argv)
        if path is not None:
            known = {name for name, *_ in self.optParameters} - {"config"}
            argv = config_arguments(path, known) + argv
        super().parseOptions(argv)

    def postOptions(self) -> None:
        try:
            self["database"] = parse_database_url(self["database"])
        except ValueError as error:
            raise usage.UsageError(f"--database: {error}") from None
        self["database"] = replace(self["database"], timeout=float(self["db-timeout"]))
        if self["redis"]:
            try:
                self["redis"] = parse_redis_url(self["redis"])
            except ValueError as error:
                raise usage.UsageError(f"--redis: {error}") from None
        try:
            self["enter-template"].format(senderId=1, roomId=1)
        except (KeyError, IndexError, ValueError) as error:
            raise usage.UsageError(
                f"--enter-template: only {{senderId}} and {{roomId}} may be used ({error})"
            ) from None
        if isinstance(self["heartbeat"], str):  # the default is not coerced
            self["heartbeat"] = parse_heartbeat_option(self["heartbeat"])
        for name in ("stomp", "http"):
            self[name] = _check_endpoint(name, self[name])
        self["allowed-origins"] = [
            origin.strip() for origin in self["allowed-origins"].split(",") if origin.strip()
        ]


def _config_path(argv: list[str]) -> str | None:
    for index, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg in ("--config", "-c") and index + 1 < len(argv):
            return argv[index + 1]
    return None


def config_arguments(path: str, known: set[str]) -> list[str]:
    """Turn a TOML config file into ``--name=value`` arguments."""
    import tomllib

    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise usage.UsageError(f"--config: cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise usage.UsageError(f"--config: {path} is not valid TOML: {error}") from None
    arguments = []
    for key, value in data.items():
        name = key.replace("_", "-")
        if name not in known:
            raise usage.UsageError(
                f"--config: unknown option {key!r} in {path}; known: {', '.join(sorted(known))}"
            )
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, bool) or not isinstance(value, str | int):
            raise usage.UsageError(f"--config: {key} in {path} must be a string or a number")
        arguments.append(f"--{name}={value}")
    return arguments


def _check_endpoint(name: str, description: str) -> str | None:
    """Fail at start-up, as a usage error, on an endpoint string Twisted rejects."""
    if description.strip().lower() == "none":
        return None
    from twisted.internet import endpoints, reactor

    description = with_default_backlog(description)

    try:
        endpoints.serverFromString(reactor, description)
    except Exception as error:  # parsing may fail anywhere: a TLS key file, a plugin
        raise usage.UsageError(f"--{name}: invalid endpoint {description!r}: {error}") from None
    return description


def makeService(options: Options) -> IService:
    """Build the whole server from parsed options."""
    from twisted.internet import reactor

    database = options["database"]
    if database.database != ":memory:":  # a memory database lives in the pool's connection
        try:
            version = migrate_blocking(database)
        except Exception as error:  # any driver error: the message is what matters here
            raise SystemExit(
                f"stomp-chat: cannot start: the database {database.redacted()} is not usable: "
                f"{error}".strip()
            ) from None
        log.info("database schema at version {version}", version=version)
    heartbeat = options["heartbeat"]
    monitor = HeartbeatMonitor(reactor, tick_for(heartbeat))
    pool = make_pool(database, reactor)
    store = AdbapiChatStore(pool, timeout=database.timeout, clock=reactor)
    writer = WriteBehindWriter(
        store,
        reactor,
        flush_interval=options["write-interval"] / 1000.0,
        max_batch=options["write-batch"],
        max_pending=options["write-buffer"],
        stop_timeout=3 * database.timeout,
    )
    broker = Broker()
    router = AppRouter()
    relay = RedisRelay(broker, options["redis"], reactor) if options["redis"] else None
    chat = ChatService(
        store,
        writer,
        broker,
        reactor,
        auto_create_rooms=True,
        enter_template=options["enter-template"],
        history_size=options["history-size"],
        sequencer=relay,
        room_idle_seconds=float(options["room-idle-seconds"]),
        max_active_rooms=options["max-active-rooms"],
    )
    chat.register(router)
    if relay is not None:
        relay.listeners.append(chat.relayed)

    settings = SessionSettings(heartbeat=heartbeat, max_frame_size=options["max-frame-size"])
    context = ServerContext(broker, router, settings, monitor, AnonymousAuthenticator())
    # Above the writer's high-water mark every connection stops being read until the
    # backlog drains to its low-water mark.
    stomp_factory = StompFactory(context, options["slow-consumer-bytes"], input_gate=writer)

    listeners = MultiService()
    if options["stomp"]:
        strports.service(options["stomp"], stomp_factory).setServiceParent(listeners)
    if options["http"]:
        ws_factory = StompWebSocketFactory(
            stomp_factory,
            allowed_origins=options["allowed-origins"],
            reactor=reactor,
        )
        api = ChatApi(chat, store, max_page=options["max-history-page"])
        site = build_site(
            ws_factory,
            health=lambda: {"connections": len(monitor), "unsaved": writer.pending_count},
            api=api,
        )
        strports.service(options["http"], site).setServiceParent(listeners)
    return ChatServer(reactor, pool, writer, monitor, listeners, relay, chat)


#: How long start-up waits for the Redis relay before listening anyway.
RELAY_READY_TIMEOUT = 5.0


class ChatServer(MultiService):
    """Starts and stops the server's parts in the order data safety needs.

    Start: migrate the schema, then the writer and heart-beats, then listen.
    Stop: stop listening, close client sessions, flush the write-behind
    buffer, and only then close the database pool. ``MultiService`` would
    stop them all at once.
    """

    def __init__(
        self,
        reactor: Any,
        pool: ChatConnectionPool,
        writer: WriteBehindWriter,
        monitor: HeartbeatMonitor,
        listeners: MultiService,
        relay: RedisRelay | None = None,
        chat: ChatService | None = None,
    ) -> None:
        super().__init__()
        self.relay = relay
        self.chat = chat
        self.reactor = reactor
        self.pool = pool
        self.writer = writer
        self.monitor = monitor
        self.listeners = listeners
        self._ready: Deferred[None] | None = None

    def startService(self) -> None:
        Service.startService(self)
        self._ready = migrate(self.pool).addCallback(self._migrated)
        self._ready.addErrback(self._cannot_start)

    @inlineCallbacks
    def _migrated(self, version: int) -> Generator[Deferred[Any], Any, None]:
        self.writer.startService()
        if self.relay is not None:
            self.relay.startService()
            # Listen once relayed messages arrive, so that the first chat
            # messages reach this server's own subscribers; a Redis that is
            # down must not keep the server from serving its own clients.
            ready = self.relay.ready()
            ready.addTimeout(RELAY_READY_TIMEOUT, self.reactor)
            try:
                yield ready
            except Exception:
                log.warn("starting without the cluster relay: Redis is not answering yet")
        self.monitor.startService()
        self.listeners.startService()

    def _cannot_start(self, failure: Failure) -> None:
        log.failure("cannot start", failure, log_level=LogLevel.critical)
        self.reactor.stop()

    @inlineCallbacks
    def stopService(self) -> Generator[Deferred[Any], Any, None]:
        Service.stopService(self)
        if self._ready is not None:
            yield self._ready
        if self.listeners.running:
            yield self.listeners.stopService()
        self.monitor.close_all("server shutting down")
        if self.monitor.running:
            self.monitor.stopService()
        if self.relay is not None and self.relay.running:
            yield self.relay.stopService()
        if self.writer.running:
            yield self.writer.stopService()
        if self.chat is not None:
            # Unused reserved seqs back, so the next run numbers on without a gap.
            yield self.chat.release_reservations()
        self.pool.close()
