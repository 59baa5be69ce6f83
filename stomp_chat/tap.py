"""The composition root: ``twistd stomp-chat`` options and service tree.

Everything is built and wired here and nowhere else: the clock, the broker,
the listening ports, and the order in which they stop.
"""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.python import usage

from stomp_chat import __version__
from stomp_chat.app.routes import AppRouter
from stomp_chat.broker import Broker
from stomp_chat.heartbeat import HeartbeatMonitor, tick_for
from stomp_chat.session import AnonymousAuthenticator, ServerContext, SessionSettings
from stomp_chat.stomp.parser import DEFAULT_MAX_FRAME_SIZE
from stomp_chat.transport.stomp import DEFAULT_SLOW_CONSUMER_BYTES, StompFactory
from stomp_chat.transport.websocket import StompWebSocketFactory
from stomp_chat.web.site import build_site


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


class Options(usage.Options):
    """Command-line options of ``twistd stomp-chat``."""

    synopsis = "[options]"
    longdesc = (
        "Runs the stomp-chat server: STOMP 1.0-1.2 over raw TCP and over WebSocket "
        "(ws://HOST:PORT/ws/chat). Endpoints are Twisted endpoint strings, so "
        "'ssl:8443:privateKey=key.pem:certKey=cert.pem' serves TLS."
    )

    optParameters = [
        ["stomp", None, "tcp:61613", "Endpoint for raw STOMP over TCP ('none' to disable)."],
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
    ]

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"stomp-chat {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        if isinstance(self["heartbeat"], str):  # the default is not coerced
            self["heartbeat"] = parse_heartbeat_option(self["heartbeat"])
        for name in ("stomp", "http"):
            self[name] = _check_endpoint(name, self[name])
        self["allowed-origins"] = [
            origin.strip() for origin in self["allowed-origins"].split(",") if origin.strip()
        ]


def _check_endpoint(name: str, description: str) -> str | None:
    """Fail at start-up, as a usage error, on an endpoint string Twisted rejects."""
    if description.strip().lower() == "none":
        return None
    from twisted.internet import endpoints, reactor

    try:
        endpoints.serverFromString(reactor, description)
    except (ValueError, KeyError, TypeError) as error:
        raise usage.UsageError(f"--{name}: invalid endpoint {description!r}: {error}") from None
    return description


def makeService(options: Options) -> IService:
    """Build the whole server from parsed options."""
    from twisted.internet import reactor

    top = MultiService()
    heartbeat = options["heartbeat"]
    monitor = HeartbeatMonitor(reactor, tick_for(heartbeat))
    monitor.setServiceParent(top)

    settings = SessionSettings(heartbeat=heartbeat, max_frame_size=options["max-frame-size"])
    broker = Broker()
    router = AppRouter()
    context = ServerContext(broker, router, settings, monitor, AnonymousAuthenticator())
    stomp_factory = StompFactory(context, options["slow-consumer-bytes"])

    if options["stomp"]:
        strports.service(options["stomp"], stomp_factory).setServiceParent(top)
    if options["http"]:
        ws_factory = StompWebSocketFactory(
            stomp_factory,
            allowed_origins=options["allowed-origins"],
            max_message_size=options["max-frame-size"],
            reactor=reactor,
        )
        site = build_site(ws_factory, health=lambda: {"connections": len(monitor)})
        strports.service(options["http"], site).setServiceParent(top)
    return top
