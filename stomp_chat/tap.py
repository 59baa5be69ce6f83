"""The composition root: ``twistd stomp-chat`` options and service tree.

Everything is built and wired here and nowhere else: the clock, the broker,
the listening ports, and the order in which they stop.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from stomp_chat import __version__, option_values
from stomp_chat.app.chat import DEFAULT_ENTER_TEMPLATE, DEFAULT_HISTORY_SIZE, ChatService
from stomp_chat.app.presence import PresenceTracker
from stomp_chat.app.readstate import ReadState
from stomp_chat.app.recovery import DEFAULT_MAX_RECOVERY, RoomRecovery
from stomp_chat.app.rooms import DEFAULT_MAX_ACTIVE_ROOMS, DEFAULT_ROOM_IDLE_SECONDS
from stomp_chat.app.routes import AppRouter
from stomp_chat.app.subscriptions import room_of_topic
from stomp_chat.auth.options import (
    AUTH_PARAMETERS,
    resolve_auth_options,
    unauthenticated_warning,
)
from stomp_chat.auth.setup import build_authentication
from stomp_chat.authz.chatgate import DEFAULT_MAX_WAITING
from stomp_chat.authz.rooms import DEFAULT_CACHE_SIZE, DEFAULT_CACHE_TTL
from stomp_chat.authz.rules import RuleError, RuleSet, load_rules
from stomp_chat.authz.setup import build_authorization
from stomp_chat.broker import (
    DEFAULT_DEAD_LETTER_QUEUE,
    DEFAULT_MAX_QUEUE_MESSAGES,
    DEFAULT_MAX_QUEUED_BYTES,
    DEFAULT_MAX_QUEUES,
    DEFAULT_MAX_REDELIVERIES,
    DEFAULT_MAX_UNACKED,
    DEFAULT_PREFETCH,
    QUEUE_PREFIX,
    Broker,
    BrokerLimits,
)
from stomp_chat.cluster import RedisRelay, parse_redis_url
from stomp_chat.cluster.batching import DEFAULT_RECENT_SIZE
from stomp_chat.cluster.presence import DEFAULT_PRESENCE_TTL, ClusterPresence
from stomp_chat.cluster.streams import DEFAULT_LEASE, MAX_LEASE, MIN_LEASE, ClusterQueues
from stomp_chat.config import coercions, config_path, environment_arguments, file_arguments
from stomp_chat.heartbeat import HeartbeatMonitor, tick_for
from stomp_chat.identity import AUTH_NONE
from stomp_chat.interceptors import Interceptor
from stomp_chat.lifecycle import ChatServer, Listener
from stomp_chat.logs import parse_log_format, server_log
from stomp_chat.outage import OutageLog
from stomp_chat.persistence import (
    DEFAULT_DB_TIMEOUT,
    AdbapiChatStore,
    WriteBehindWriter,
    make_pool,
    migrate,
    parse_database_url,
)
from stomp_chat.persistence.readpositions import AdbapiReadPositionStore
from stomp_chat.probes import (
    DEFAULT_PROBE_INTERVAL,
    DEFAULT_PROBE_TIMEOUT,
    Probe,
    ProbeService,
    select_one_probe,
)
from stomp_chat.proxies import TrustedProxies, parse_trusted_proxies
from stomp_chat.retention import RetentionService
from stomp_chat.session import (
    AuthenticationInterceptor,
    SendRateInterceptor,
    ServerContext,
    SessionSettings,
)
from stomp_chat.session.loading import (
    InterceptorLoadError,
    load_interceptor,
    parse_interceptor_names,
)
from stomp_chat.startup import migrate_before_start, redis_before_start
from stomp_chat.stats import TimedStore
from stomp_chat.stomp.parser import DEFAULT_MAX_FRAME_SIZE
from stomp_chat.transport.limits import DEFAULT_MAX_CONNECTIONS_PER_ADDRESS, ConnectionCounter
from stomp_chat.transport.stomp import (
    DEFAULT_MAX_CONNECT_BYTES,
    DEFAULT_SLOW_CONSUMER_BYTES,
    OutputBatch,
    StompFactory,
)
from stomp_chat.transport.websocket import StompWebSocketFactory
from stomp_chat.web.admin import AdminApi
from stomp_chat.web.api import ChatApi
from stomp_chat.web.auth import ApiGate, RestAuthenticator, principal_of
from stomp_chat.web.health import Health, Ready
from stomp_chat.web.metrics import Metrics, MetricSources, build_registry
from stomp_chat.web.presence import PresenceApi
from stomp_chat.web.site import DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, build_site

log = Logger()


_positive_int = option_values.positive_int
_non_negative_int = option_values.non_negative_int
parse_switch = option_values.switch


def _number(name: str, *, allow_zero: bool) -> Any:
    return option_values.number(name, allow_zero=allow_zero)


def _non_negative_seconds(name: str) -> Any:
    return option_values.seconds(name, allow_zero=True)


def _positive_seconds(name: str) -> Any:
    return option_values.seconds(name, allow_zero=False)


def parse_queue_lease(value: str) -> float:
    """--cluster-queue-lease: a lease shorter than a second would let servers take the
    messages of live ones between two renewals (every third of it) on any hiccup."""
    lease = float(_positive_seconds("--cluster-queue-lease")(value))
    if not MIN_LEASE <= lease <= MAX_LEASE:
        raise ValueError(f"--cluster-queue-lease must be {MIN_LEASE:g} to {MAX_LEASE:g} "
                         f"seconds, not {value}")
    return lease


parse_queue_lease.coerceDoc = (  # type: ignore[attr-defined]
    f"Seconds, {MIN_LEASE:g} to {MAX_LEASE:g}.")


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

    optParameters: list[list[Any]] = [
        [
            "stomp",
            None,
            None,
            "Endpoint for raw STOMP over TCP ('none' to disable). TCP and TLS endpoints "
            f"listen with backlog={DEFAULT_BACKLOG} unless they say otherwise. Default: "
            "tcp:61613, on 127.0.0.1 only with --auth none.",
        ],
        [
            "http",
            None,
            None,
            "Endpoint for HTTP: WebSocket at /ws/chat, REST under /api. Default: tcp:8080, "
            "on 127.0.0.1 only with --auth none.",
        ],
        [
            "allowed-origins",
            None,
            "",
            "Comma-separated browser origin patterns allowed to open WebSockets "
            "('*' for all). Default: only the server's own origin. Clients that send "
            "no Origin header (Node's ws) are always allowed; stomp.py sends the origin of "
            "the URL it connects to (http://HOST:PORT), so list that too when you set "
            "patterns.",
        ],
        [
            "trusted-proxies",
            None,
            "",
            "Comma-separated addresses or networks (CIDR, IPv4 or IPv6) of reverse proxies "
            "whose X-Forwarded-For header names the client, for HTTP requests and WebSocket "
            "handshakes (login throttling, --max-connections-per-address, logs). Default: "
            "none; raw STOMP over TCP always sees its TCP peer.",
            parse_trusted_proxies,
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
            "max-queued-bytes",
            None,
            DEFAULT_MAX_QUEUED_BYTES,
            "Bytes of messages that may wait in all /queue/ destinations together; a SEND "
            "that would wait beyond it is refused with ERROR.",
            _positive_int("--max-queued-bytes"),
        ],
        [
            "max-queue-messages",
            None,
            DEFAULT_MAX_QUEUE_MESSAGES,
            "Messages that may wait in one /queue/ destination; a SEND beyond it is refused "
            "with ERROR.",
            _positive_int("--max-queue-messages"),
        ],
        [
            "max-queues",
            None,
            DEFAULT_MAX_QUEUES,
            "How many /queue/ destinations may exist at once (a queue exists while it has a "
            "subscriber or a waiting message).",
            _positive_int("--max-queues"),
        ],
        [
            "max-redeliveries",
            None,
            DEFAULT_MAX_REDELIVERIES,
            "How many times a queue message given back (NACK, disconnect without ACK) is "
            "delivered again before it moves to the dead-letter queue.",
            _positive_int("--max-redeliveries"),
        ],
        [
            "prefetch",
            None,
            DEFAULT_PREFETCH,
            "Unacknowledged messages one client/client-individual subscription may hold: a "
            "queue sends it no more until it acks; a topic subscription past it gets ERROR.",
            _positive_int("--prefetch"),
        ],
        [
            "max-unacked",
            None,
            DEFAULT_MAX_UNACKED,
            "Unacknowledged messages one connection may hold across all its subscriptions: "
            "queues send it no more until it acks; a client-ack topic subscription gets ERROR.",
            _positive_int("--max-unacked"),
        ],
        [
            "dead-letter-queue",
            None,
            DEFAULT_DEAD_LETTER_QUEUE,
            "The /queue/ destination where messages that came back too often go.",
        ],
        [
            "max-connections-per-address",
            None,
            DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            "Most STOMP connections (raw TCP and WebSocket together) one IP address may hold; "
            "over it a TCP client gets ERROR 'too many connections', a WebSocket handshake "
            "HTTP 429. 0: no limit.",
            _non_negative_int("--max-connections-per-address"),
        ],
        [
            "max-connect-bytes",
            None,
            DEFAULT_MAX_CONNECT_BYTES,
            "Most bytes a client may send before its CONNECT frame is complete; more gets "
            "ERROR 'connect frame too large' and the connection is closed.",
            _positive_int("--max-connect-bytes"),
        ],
        [
            "connect-timeout",
            None,
            SessionSettings().connect_timeout,
            "Seconds a client has to send its CONNECT frame; later gets ERROR 'connect timeout'.",
            _number("--connect-timeout", allow_zero=False),
        ],
        [
            "http-header-timeout",
            None,
            DEFAULT_HEADER_TIMEOUT,
            "Seconds an HTTP client has to send its request line and headers, however it "
            "trickles them; later gets HTTP 408 and the connection is closed.",
            _number("--http-header-timeout", allow_zero=False),
        ],
        [
            "http-idle-timeout",
            None,
            DEFAULT_IDLE_TIMEOUT,
            "Seconds an HTTP connection may stay idle between requests before it is closed.",
            _number("--http-idle-timeout", allow_zero=False),
        ],
        [
            "max-transactions",
            None,
            16,
            "How many transactions one connection may have open at once; one more is an "
            "ERROR that closes it.",
            _positive_int("--max-transactions"),
        ],
        [
            "max-transaction-bytes",
            None,
            16 * 1024 * 1024,
            "How many bytes one connection's open transactions may hold together (each "
            "frame counts its headers, body and 256 bytes); beyond, ERROR and close.",
            _positive_int("--max-transaction-bytes"),
        ],
        [
            "frame-timeout",
            None,
            60.0,
            "Seconds a frame may take from its first byte to its last; a client that "
            "leaves one unfinished longer gets ERROR 'frame timeout' and is closed.",
            _number("--frame-timeout", allow_zero=False),
        ],
        [
            "max-subscriptions",
            None,
            1_000,
            "How many subscriptions one connection may hold at once; one more gets ERROR "
            "'too many subscriptions' and the connection closes.",
            _positive_int("--max-subscriptions"),
        ],
        [
            "max-pending-receipts",
            None,
            10_000,
            "How many frames of one connection may wait behind an earlier, slower one (a "
            "durable SEND) before the server stops reading it until half are answered.",
            _positive_int("--max-pending-receipts"),
        ],
        [
            "send-rate",
            None,
            0.0,
            "SENDs per second one connection may make on average (0: no limit); beyond "
            "it, ERROR 'rate limit exceeded' and close.",
            _number("--send-rate", allow_zero=True),
        ],
        [
            "send-burst",
            None,
            200,
            "With --send-rate: how many SENDs a connection may make at once.",
            _positive_int("--send-burst"),
        ],
        [
            "interceptors",
            None,
            "",
            "Comma-separated 'package.module:factory' names of inbound interceptors to "
            "add, in order, after the built-in ones; each factory is called with no "
            "arguments (a config file may give a list).",
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
            "retried on a fresh connection. The write-behind gives up on unsaved messages "
            "3x this long after a stop begins.",
            _positive_seconds("--db-timeout"),
        ],
        [
            "room-idle-seconds",
            None,
            DEFAULT_ROOM_IDLE_SECONDS,
            "A chat room idle this long leaves memory; its next message loads it again.",
            _positive_seconds("--room-idle-seconds"),
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
            "max-recovery",
            None,
            DEFAULT_MAX_RECOVERY,
            "The most missed messages a re-subscribing client (SUBSCRIBE with since-seq) is "
            "sent; beyond that it gets the newest ones, marked recovery:too-old.",
            _positive_int("--max-recovery"),
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
            "cluster-recent",
            None,
            DEFAULT_RECENT_SIZE,
            "Cluster mode: how many of each room's last messages Redis keeps, for servers "
            "to fill what they missed and for recovery on another server (Redis memory: "
            "up to this many messages per active room).",
            _positive_int("--cluster-recent"),
        ],
        [
            "presence-ttl",
            None,
            int(DEFAULT_PRESENCE_TTL),
            "Cluster mode: seconds after which a server that stopped answering is gone from "
            "every room's presence (it refreshes its key every third of this; a dead server's "
            "users leave within 4/3 of it).",
            _positive_int("--presence-ttl"),
        ],
        [
            "cluster-queue-lease",
            None,
            int(DEFAULT_LEASE),
            "Cluster mode: seconds after which the unacknowledged /queue/ messages of a "
            "server that stopped answering are redelivered by another (a live server renews "
            "its lease every third of this).",
            parse_queue_lease,
        ],
        [
            "retention-days",
            None,
            0.0,
            "Remove chat messages older than this many days, hourly, in batches "
            "(0: keep every message). A room's newest message is always kept.",
            _number("--retention-days", allow_zero=True),
        ],
        [
            "drain-window",
            None,
            5.0,
            "On SIGTERM/SIGINT, the seconds over which connected clients are told to leave, "
            "in batches, so they do not all reconnect elsewhere at once (0: all at once; "
            "at most half of --shutdown-timeout).",
            _non_negative_seconds("--drain-window"),
        ],
        [
            "shutdown-timeout",
            None,
            30.0,
            "The longest a stop may take, in seconds: drain, flush unsaved messages, close. "
            "Past it the server stops anyway and logs what was left.",
            _positive_seconds("--shutdown-timeout"),
        ],
        [
            "log-format",
            None,
            "text",
            "The log's format: 'text' (readable) or 'json' (one JSON object per line). "
            "The log goes where twistd's --logfile says.",
            parse_log_format,
        ],
        [
            "metrics",
            None,
            "on",
            "Serve Prometheus metrics at GET /metrics ('on' or 'off').",
            parse_switch("--metrics"),
        ],
        [
            "admin-on-loopback",
            None,
            "off",
            "With --auth none, serve the admin API (/api/admin) to requests from loopback "
            "addresses that carry no proxy header ('on' or 'off'); other modes need the admin "
            "role.",
            parse_switch("--admin-on-loopback"),
        ],
        [
            "room-cache-size",
            None,
            DEFAULT_CACHE_SIZE,
            "Authorization: how many answers (room privacy, membership, user to member) "
            "are cached in memory.",
            _positive_int("--room-cache-size"),
        ],
        [
            "room-cache-ttl",
            None,
            int(DEFAULT_CACHE_TTL),
            "Authorization: how long a cached membership answer is trusted, in seconds "
            "(how long a join or leave made on another server of a cluster goes unseen).",
            _positive_int("--room-cache-ttl"),
        ],
        [
            "max-unchecked-messages",
            None,
            DEFAULT_MAX_WAITING,
            "Authorization: how many chat messages of one connection may wait while the "
            "server checks that the sender may speak; more are refused as busy.",
            _positive_int("--max-unchecked-messages"),
        ],
        [
            "config",
            "c",
            None,
            "A TOML file of options (option names as keys, e.g. http = \"tcp:8080\"). "
            "Environment variables STOMP_CHAT_<OPTION> (e.g. STOMP_CHAT_DATABASE) override "
            "it, and the command line overrides both.",
        ],
        *AUTH_PARAMETERS,
    ]

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"stomp-chat {__version__}")
        raise SystemExit(0)

    def parseOptions(self, options: Any = None) -> None:
        """Merge the sources: command line > environment > ``--config`` file > defaults."""
        import os
        import sys

        argv = list(sys.argv[1:] if options is None else options)
        known = coercions(self.optParameters, exclude={"config"})
        path = config_path(argv, os.environ)
        from_file = file_arguments(path, known) if path is not None else []
        from_env = environment_arguments(os.environ, known)
        try:  # the file's destination [[rules]], which are not options
            self["rules"] = load_rules(path) if path is not None else RuleSet()
        except RuleError as error:
            raise usage.UsageError(f"--config: {error}") from None
        super().parseOptions(from_file + from_env + argv)

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
        if isinstance(self["metrics"], str):
            self["metrics"] = parse_switch("--metrics")(self["metrics"])
        if isinstance(self["admin-on-loopback"], str):
            self["admin-on-loopback"] = parse_switch("--admin-on-loopback")(
                self["admin-on-loopback"]
            )
        # The drain must leave time to flush within the stop's bound.
        self["drain-window"] = min(self["drain-window"], self["shutdown-timeout"] / 2)
        self.endpoints: dict[str, Any] = {}
        # An endpoint Twisted rejects is reported as such before any rule about where it
        # listens; the ones left unsaid get their defaults from the authentication mode.
        given = [name for name in ("stomp", "http") if self[name] is not None]
        parsed_given = {name: _parse_endpoint(name, self[name]) for name in given}
        self["unauthenticated-listeners"] = resolve_auth_options(self)
        for name in ("stomp", "http"):
            parsed = parsed_given[name] if name in parsed_given else _parse_endpoint(
                name, self[name]
            )
            if parsed is None:
                self[name] = None
            else:
                self[name], self.endpoints[name] = parsed
        dead_letter_queue = self["dead-letter-queue"]
        if not dead_letter_queue.startswith(QUEUE_PREFIX) or dead_letter_queue == QUEUE_PREFIX:
            raise usage.UsageError(
                f"--dead-letter-queue must be a /queue/ destination, not {dead_letter_queue!r}"
            )
        self["allowed-origins"] = [
            origin.strip() for origin in self["allowed-origins"].split(",") if origin.strip()
        ]
        if not isinstance(self["trusted-proxies"], TrustedProxies):  # the default is text
            try:
                self["trusted-proxies"] = parse_trusted_proxies(self["trusted-proxies"])
            except ValueError as error:
                raise usage.UsageError(str(error)) from None
        try:
            names = parse_interceptor_names(self["interceptors"])
            self["interceptors"] = [load_interceptor(name) for name in names]
        except InterceptorLoadError as error:
            raise usage.UsageError(f"--interceptors: {error}") from None


def _parse_endpoint(name: str, description: str) -> tuple[str, Any] | None:
    """The endpoint for a listener option, parsed once; a usage error if Twisted rejects it."""
    if description.strip().lower() == "none":
        return None
    from twisted.internet import endpoints, reactor

    description = with_default_backlog(description)

    try:
        endpoint = endpoints.serverFromString(reactor, description)
    except Exception as error:  # parsing may fail anywhere: a TLS key file, a plugin
        raise usage.UsageError(f"--{name}: invalid endpoint {description!r}: {error}") from None
    return description, endpoint


def makeService(options: Options) -> IService:
    """Build the whole server from parsed options: the one place parts are wired."""
    from twisted.internet import reactor

    database = options["database"]
    in_memory = database.database == ":memory:"  # it lives in the pool's one connection
    if not in_memory:
        migrate_before_start(database)
    if options["redis"]:
        redis_before_start(options["redis"])

    heartbeat = options["heartbeat"]
    monitor = HeartbeatMonitor(reactor, tick_for(heartbeat))
    pool = make_pool(database, reactor)
    store = AdbapiChatStore(pool, timeout=database.timeout, clock=reactor)
    timed_store = TimedStore(store, reactor) if options["metrics"] else None
    writer = WriteBehindWriter(
        timed_store or store,
        reactor,
        flush_interval=options["write-interval"] / 1000.0,
        max_batch=options["write-batch"],
        max_pending=options["write-buffer"],
        stop_timeout=3 * database.timeout,
    )
    broker = Broker(
        limits=BrokerLimits(
            max_queued_bytes=options["max-queued-bytes"],
            max_queue_messages=options["max-queue-messages"],
            max_queues=options["max-queues"],
            max_redeliveries=options["max-redeliveries"],
            dead_letter_queue=options["dead-letter-queue"],
            prefetch=options["prefetch"],
            max_unacked=options["max-unacked"],
        )
    )
    router = AppRouter()
    authorization = build_authorization(
        auth_mode=options["auth"],
        chat_store=store,
        pool=pool,
        clock=reactor,
        db_timeout=database.timeout,
        router=router,
        broker=broker,
        rules=options["rules"],
        cache_size=options["room-cache-size"],
        cache_ttl=options["room-cache-ttl"],
        max_waiting=options["max-unchecked-messages"],
    )
    # What one read (a client's, or relayed messages from Redis) makes each connection
    # write goes out in one write once the read is handled.
    output = OutputBatch()
    relay = (
        RedisRelay(broker, options["redis"], reactor, room_of=room_of_topic,
                   recent_size=options["cluster-recent"], read_batch=output)
        if options["redis"] else None
    )
    # /queue/ destinations shared by every server, on Redis streams.
    cluster_queues = (
        ClusterQueues(broker, options["redis"], reactor, lease=options["cluster-queue-lease"])
        if options["redis"] else None
    )
    chat = ChatService(
        store,
        writer,
        broker,
        reactor,
        auto_create_rooms=True,
        enter_template=options["enter-template"],
        history_size=options["history-size"],
        sequencer=relay,
        outage=OutageLog("chat rooms loading", reactor),
        gate=authorization.gate,
        room_idle_seconds=float(options["room-idle-seconds"]),
        max_active_rooms=options["max-active-rooms"],
    )
    chat.register(router)
    if relay is not None:
        relay.listeners.append(chat.relayed)

    # The browser chat's features: recovery on re-subscribe, presence, unread counts.
    shared_presence = (
        ClusterPresence(relay, reactor, ttl=float(options["presence-ttl"]))
        if relay is not None else None
    )
    presence = PresenceTracker(broker, shared_presence, clock=reactor)
    reads = ReadState(
        AdbapiReadPositionStore(pool, timeout=database.timeout, clock=reactor), chat, broker,
        reactor,
        may_read=authorization.rooms.may_read if authorization.enforce else None,
    )
    reads.register(router)
    recovery = RoomRecovery(chat, broker, max_recovery=options["max-recovery"])
    if relay is not None:
        relay.listeners.append(reads.relayed)

    authentication = build_authentication(options, reactor, pool)
    warning = unauthenticated_warning(options["unauthenticated-listeners"], options)
    if warning:
        log.warn("{warning}", warning=warning)
    settings = SessionSettings(
        heartbeat=heartbeat,
        max_frame_size=options["max-frame-size"],
        connect_timeout=options["connect-timeout"],
        max_transactions=options["max-transactions"],
        max_transaction_bytes=options["max-transaction-bytes"],
        frame_timeout=options["frame-timeout"],
        max_pending_receipts=options["max-pending-receipts"],
        max_subscriptions=options["max-subscriptions"],
    )
    # Authentication is the chain's first link, in every mode: with --auth
    # none it names the client after its login (or a guest name).
    interceptors: list[Interceptor] = [
        AuthenticationInterceptor(authentication.authenticator)
    ]
    if options["send-rate"] > 0:
        interceptors.append(
            SendRateInterceptor(options["send-rate"], options["send-burst"], reactor)
        )
    # A deployment's own interceptors come before authorization, which then decides on
    # the frame as they leave it: none of them can route around the rules.
    interceptors.extend(options["interceptors"])
    # Authorization in every mode: even with --auth none, no client may publish
    # to a destination the application owns (the rooms' topics).
    interceptors.append(authorization.interceptor)
    context = ServerContext(broker, router, settings, monitor, reactor, interceptors,
                            subscription_listeners=[recovery, presence, reads])
    stomp_factory = StompFactory(
        context,
        options["slow-consumer-bytes"],
        max_connect_bytes=options["max-connect-bytes"],
        connections=ConnectionCounter(options["max-connections-per-address"]),
        # Above the writer's high-water mark every connection stops being read until the
        # backlog drains to its low-water mark.
        input_gate=writer,
        output=output,
    )

    database_probe = select_one_probe(pool, reactor)
    probes = [database_probe]
    redis_probe = None
    if relay is not None:
        redis_probe = Probe(reactor, relay.ping, DEFAULT_PROBE_TIMEOUT)
        probes.append(redis_probe)

    listeners: list[Listener] = []
    on_drain = []
    server_ref: list[ChatServer] = []
    if options["stomp"]:
        listeners.append(
            Listener("stomp", options["stomp"], options.endpoints["stomp"], stomp_factory)
        )
    if options["http"]:
        ws_factory = StompWebSocketFactory(
            stomp_factory,
            allowed_origins=options["allowed-origins"],
            trusted_proxies=options["trusted-proxies"],
            reactor=reactor,
        )
        on_drain.append(lambda: setattr(ws_factory, "close_code", GOING_AWAY))
        chat_api = ChatApi(
            chat, store, max_page=options["max-history-page"],
            access=authorization.rest_policy(principal_of),
            outage=OutageLog("REST requests", reactor),
        )
        PresenceApi(presence, chat_api).register()
        AdminApi(
            chat_api, chat, monitor.sessions, principal_of,
            authenticated=authentication.mode != AUTH_NONE,
            loopback_without_auth=options["admin-on-loopback"],
        ).register()
        api = ApiGate(
            chat_api,
            RestAuthenticator(
                authentication.mode,
                gate=authentication.gate,
                jwt=authentication.jwt,
                passwords=authentication.passwords,
                login_tokens=authentication.login_tokens,
            ),
            options["allowed-origins"],
        )
        checks = readiness_checks(server_ref, database_probe, relay, redis_probe, writer,
                                  cluster_queues)
        resources: dict[bytes, Any] = {
            b"health": Health(lambda: {"connections": len(monitor)}),
            b"ready": Ready(checks),
        }
        if options["metrics"]:
            sources = MetricSources(
                stats=context.stats,
                broker=broker,
                writer=writer,
                sessions=monitor.sessions,
                timed_store=timed_store,
                database=database_probe,
                redis=redis_probe,
                relay=relay,
                draining=lambda: bool(server_ref) and server_ref[0].draining,
            )
            resources[b"metrics"] = Metrics(build_registry(sources))
        site = build_site(
            ws_factory,
            health=lambda: {"connections": len(monitor), "unsaved": writer.pending_count},
            api=api,
            header_timeout=float(options["http-header-timeout"]),
            idle_timeout=float(options["http-idle-timeout"]),
            reactor=reactor,
            resources=resources,
            trusted_proxies=options["trusted-proxies"],
            # Nobody authenticated: a request must name this server (DNS rebinding).
            host_patterns=(
                options["allowed-origins"] if authentication.mode == AUTH_NONE else None
            ),
        )
        listeners.append(Listener("http", options["http"], options.endpoints["http"], site))

    logs = server_log(getattr(options, "parent", None), options["log-format"], reactor)
    retention = (
        [RetentionService(store, reactor, options["retention-days"])]
        if options["retention-days"] > 0
        else []
    )
    server = ChatServer(
        reactor,
        pool,
        writer,
        monitor,
        listeners,
        relay,
        migrate_on_start=(lambda: migrate(pool)) if in_memory else None,
        drain_window=options["drain-window"],
        shutdown_timeout=options["shutdown-timeout"],
        on_drain=on_drain,
        # Unused reserved seqs back once everything is saved: the next run goes on without
        # a gap.
        on_flushed=[chat.release_reservations],
        # Started before the ports, stopped after them.
        support=[
            *authentication.services,
            *([shared_presence] if shared_presence is not None else []),
            *([cluster_queues] if cluster_queues is not None else []),
            ProbeService(reactor, probes, DEFAULT_PROBE_INTERVAL),
            *retention,
        ],
        server_log=logs,
        open_connections=lambda: context.stats.open_connections,
    )
    server_ref.append(server)
    return server


#: The WebSocket close code for "the server is going away".
GOING_AWAY = 1001


def readiness_checks(
    server_ref: list[ChatServer],
    database: Probe,
    relay: RedisRelay | None,
    redis: Probe | None,
    writer: WriteBehindWriter,
    cluster_queues: ClusterQueues | None = None,
) -> dict[str, Any]:
    """What ``/ready`` asks: listening, the database, Redis, the write-behind, draining."""

    def listeners() -> dict[str, Any]:
        up = bool(server_ref) and server_ref[0].listening
        return {"ok": up, "state": "up" if up else "down"}

    def draining() -> dict[str, Any]:
        now = bool(server_ref) and server_ref[0].draining
        return {"ok": not now, "state": "draining" if now else "serving"}

    def write_behind() -> dict[str, Any]:
        backlogged = writer.is_paused or writer.is_full
        return {
            "ok": not backlogged,
            "state": "backlogged" if backlogged else "ok",
            "pending": writer.pending_count,
        }

    def database_check() -> Any:
        return database.check().addCallback(lambda result: result.as_check())

    checks: dict[str, Any] = {
        "listeners": listeners,
        "database": database_check,
        "write_behind": write_behind,
        "draining": draining,
    }
    if relay is not None and redis is not None:
        probe = redis

        def redis_check() -> Any:
            degraded = relay.degraded or (
                cluster_queues.degraded if cluster_queues is not None else None
            )
            if degraded is not None:
                return {"ok": False, "state": "down", "error": degraded}
            return probe.check().addCallback(lambda result: result.as_check())

        checks["redis"] = redis_check
    return checks
