"""Unit tests for stomp_chat.tap: twistd options and the service tree makeService builds."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, IServiceCollection, MultiService
from twisted.python import usage
from twisted.web.server import Site

from stomp_chat.auth.authenticators import NoneAuthenticator
from stomp_chat.authz.interceptor import AuthorizationInterceptor
from stomp_chat.heartbeat import HeartbeatMonitor, tick_for
from stomp_chat.session import AuthenticationInterceptor, SendRateInterceptor
from stomp_chat.stomp.parser import DEFAULT_MAX_FRAME_SIZE
from stomp_chat.tap import Options, makeService
from stomp_chat.transport.stomp import DEFAULT_SLOW_CONSUMER_BYTES, StompFactory
from tests.serverproc import run_to_exit

#: A listener on a free loopback port (``--auth none`` listens nowhere else unless told).
LOOPBACK = "tcp:0:interface=127.0.0.1"


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


# -- parsing -------------------------------------------------------------


def test_defaults():
    """With no arguments the documented defaults apply, coerced to their types: no
    authentication, so both listeners on loopback only."""
    options = parse()
    assert options["auth"] == "none"
    assert options["stomp"] == "tcp:61613:interface=127.0.0.1:backlog=1024"
    assert options["http"] == "tcp:8080:interface=127.0.0.1:backlog=1024"
    assert options["allowed-origins"] == []
    assert options["max-frame-size"] == DEFAULT_MAX_FRAME_SIZE
    assert options["heartbeat"] == (10_000, 10_000)
    assert options["slow-consumer-bytes"] == DEFAULT_SLOW_CONSUMER_BYTES


def test_every_option_is_parsed():
    """Each option given on the command line lands in the options, coerced."""
    options = parse(
        "--auth", "none",
        "--stomp", "tcp:12345:interface=127.0.0.1",
        "--http", "tcp:0",
        "--allowed-origins", " https://*.example.com, chat.example.org:8443 ,,",
        "--max-frame-size", "65536",
        "--heartbeat", "500,0",
        "--slow-consumer-bytes", "1024",
    )
    assert options["stomp"] == "tcp:12345:interface=127.0.0.1:backlog=1024"
    assert options["http"] == "tcp:0:backlog=1024"
    assert options["allowed-origins"] == ["https://*.example.com", "chat.example.org:8443"]
    assert options["max-frame-size"] == 65536
    assert options["heartbeat"] == (500, 0)
    assert options["slow-consumer-bytes"] == 1024


def test_equals_form_is_accepted():
    """--name=value works like --name value."""
    options = parse("--heartbeat=0,0", "--max-frame-size=100")
    assert options["heartbeat"] == (0, 0)
    assert options["max-frame-size"] == 100


@pytest.mark.parametrize("name", ["stomp", "http"])
@pytest.mark.parametrize("value", ["none", "NONE", " None "])
def test_endpoint_none_disables_a_listener(name, value):
    """'none' turns a listener off."""
    assert parse(f"--{name}", value)[name] is None


def test_unix_endpoint_is_accepted():
    """Any endpoint string Twisted understands is accepted, not just tcp."""
    assert parse("--stomp", "unix:/tmp/stomp-chat-test.sock")["stomp"] == (
        "unix:/tmp/stomp-chat-test.sock"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--heartbeat", "abc"],
        ["--heartbeat", "1000"],
        ["--heartbeat", "1,2,3"],
        ["--heartbeat", "-1,0"],
        ["--heartbeat", "0,-1000"],
        ["--heartbeat", "1.5,2"],
        ["--max-frame-size", "0"],
        ["--max-frame-size", "-5"],
        ["--max-frame-size", "big"],
        ["--slow-consumer-bytes", "0"],
        ["--slow-consumer-bytes", "-1"],
        ["--stomp", "bogus:1234"],
        ["--stomp", "tcp:notaport"],
        ["--stomp", ""],
        ["--http", "tcp:"],
        ["--http", "tcp:80:nosuchparam=1"],
        ["--no-such-option"],
    ],
    ids=lambda a: " ".join(a),
)
def test_bad_values_are_usage_errors(args):
    """Invalid option values raise usage.UsageError rather than failing later."""
    with pytest.raises(usage.UsageError):
        parse(*args)


def test_tls_endpoint_with_missing_certificate_is_a_usage_error(tmp_path: Path):
    """An ssl endpoint naming a key file that does not exist is a usage error, not a traceback."""
    missing = tmp_path / "missing.pem"
    with pytest.raises(usage.UsageError):
        parse("--stomp", f"ssl:8443:privateKey={missing}:certKey={missing}")


def _positive_int_options() -> list[str]:
    return [
        entry[0]
        for entry in Options.optParameters
        if len(entry) > 4 and getattr(entry[4], "coerceDoc", "") == "A positive whole number."
    ]


@pytest.mark.parametrize("name", _positive_int_options())
@pytest.mark.parametrize("value", ["0", "-3", "x"])
def test_every_positive_int_option_rejects_bad_numbers(name, value):
    """Every option documented as a positive whole number refuses zero, negatives and words."""
    with pytest.raises(usage.UsageError):
        parse(f"--{name}", value)


# -- help and version ------------------------------------------------------


def _all_option_names() -> list[str]:
    names = [entry[0] for entry in getattr(Options, "optParameters", [])]
    names += [entry[0] for entry in getattr(Options, "optFlags", [])]
    return names


def test_help_mentions_every_option(capsys):
    """--help lists every option with its description and exits."""
    with pytest.raises(SystemExit) as excinfo:
        parse("--help")
    assert excinfo.value.code in (0, None)
    text = capsys.readouterr().out
    for name in _all_option_names() + ["version", "help"]:
        assert f"--{name}" in text, name
    for name in ("stomp", "http", "allowed-origins", "max-frame-size", "heartbeat",
                 "slow-consumer-bytes"):
        assert f"--{name}" in text, name


def test_version_prints_and_exits(capsys):
    """--version prints the stomp-chat version and exits successfully."""
    from stomp_chat import __version__

    with pytest.raises(SystemExit) as excinfo:
        parse("--version")
    assert excinfo.value.code == 0
    assert __version__ in capsys.readouterr().out


# -- makeService -----------------------------------------------------------


def _reachable(service: IService) -> list[IService]:
    """Every service in the tree: children, and services the root keeps as attributes."""
    found: list[IService] = []
    pending = [service]
    while pending:
        current = pending.pop()
        if any(current is s for s in found):
            continue
        found.append(current)
        if IServiceCollection.providedBy(current):
            pending.extend(current)
        for value in vars(current).values():
            if IService.providedBy(value) and value is not current.parent:
                pending.append(value)
    return found


def _listeners(service: IService) -> list[StreamServerEndpointService]:
    return [s for s in _reachable(service) if isinstance(s, StreamServerEndpointService)]


@pytest.fixture
def build(tmp_path: Path):
    """makeService on parsed options, never started; its database pool is closed afterwards."""
    built: list[IService] = []

    def make(*args: str) -> IService:
        db = ["--database", f"sqlite:///{tmp_path / 'chat.db'}"] if _has_option("database") else []
        service = makeService(parse(*db, *args))
        built.append(service)
        return service

    yield make
    for service in built:
        assert not service.running
        pool = getattr(service, "pool", None)
        if pool is not None:
            pool.close()


def _has_option(name: str) -> bool:
    return name in _all_option_names()


def test_make_service_builds_a_multiservice_with_both_listeners(build):
    """The root is a MultiService holding the heart-beat monitor and TCP and HTTP listeners."""
    root = build("--stomp", LOOPBACK, "--http", LOOPBACK)
    assert isinstance(root, MultiService)
    listeners = _listeners(root)
    assert len(listeners) == 2
    factories = [listener.factory for listener in listeners]
    assert any(isinstance(f, StompFactory) for f in factories)
    assert any(isinstance(f, Site) for f in factories)
    assert [s for s in _reachable(root) if isinstance(s, HeartbeatMonitor)]
    assert not root.running


def test_make_service_wires_options_into_the_stomp_factory(build):
    """Heart-beat, frame size and slow-consumer options reach the sessions' settings."""
    root = build("--stomp", LOOPBACK, "--http", "none", "--heartbeat", "2000,0",
                 "--max-frame-size", "4096", "--slow-consumer-bytes", "777")
    (listener,) = _listeners(root)
    factory = listener.factory
    assert isinstance(factory, StompFactory)
    assert factory.slow_consumer_bytes == 777
    settings = factory.context.settings
    assert settings.heartbeat == (2000, 0)
    assert settings.max_frame_size == 4096
    monitor = factory.context.heartbeats
    assert monitor.tick == tick_for((2000, 0))
    assert any(s is monitor for s in _reachable(root))


def test_relayed_messages_share_the_connections_write_batch(build):
    """In cluster mode the relay brackets each read of relayed messages with the same
    OutputBatch the STOMP connections use, so relayed deliveries are batched too."""
    from stomp_chat.cluster import RedisRelay

    root = build("--stomp", LOOPBACK, "--http", "none", "--auth", "none", "--redis",
                 f"redis://127.0.0.1:6379/0?namespace=tap-{os.getpid()}")
    (listener,) = _listeners(root)
    (relay,) = [s for s in _reachable(root) if isinstance(s, RedisRelay)]
    assert relay.read_batch is listener.factory.output


def test_transport_limits_have_sane_defaults():
    """The per-connection limits default to 256 per address, 64 KiB and 10 s before
    CONNECT, and 10 s for HTTP headers."""
    options = parse()
    assert options["max-connections-per-address"] == 256
    assert options["max-connect-bytes"] == 64 * 1024
    assert options["connect-timeout"] == 10.0
    assert options["http-header-timeout"] == 10.0
    assert options["http-idle-timeout"] == 60.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-connections-per-address", "-1"], "cannot be negative"),
        (["--max-connections-per-address", "many"], "whole number"),
        (["--connect-timeout", "0"], "must be positive"),
        (["--http-header-timeout", "soon"], "must be a number"),
        (["--http-idle-timeout", "inf"], "must be positive"),
        (["--max-connect-bytes", "0"], "positive"),
        (["--cluster-queue-lease", "0.01"], "1 to 86400 seconds"),
        (["--cluster-queue-lease", "1e9"], "1 to 86400 seconds"),
        (["--cluster-queue-lease", "soon"], "number of seconds"),
    ],
)
def test_transport_limit_options_refuse_bad_values(args, message):
    """Bad limit values are usage errors that say what is expected."""
    with pytest.raises(usage.UsageError, match=message):
        parse(*args)


def test_make_service_wires_the_transport_limits(build):
    """The connection cap, CONNECT limits and HTTP deadlines reach the factory and site."""
    root = build("--stomp", LOOPBACK, "--http", LOOPBACK, "--max-connections-per-address", "0",
                 "--max-connect-bytes", "2048", "--connect-timeout", "2.5",
                 "--http-header-timeout", "3", "--http-idle-timeout", "40")
    factories = [listener.factory for listener in _listeners(root)]
    (stomp,) = [f for f in factories if isinstance(f, StompFactory)]
    (site,) = [f for f in factories if isinstance(f, Site)]
    assert stomp.connections.max_per_address == 0
    assert stomp.max_connect_bytes == 2048
    assert stomp.context.settings.connect_timeout == 2.5
    assert (site.header_timeout, site.timeOut) == (3.0, 40.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trusted-proxies", "10.0.0.0/33"], "--trusted-proxies: '10.0.0.0/33' is not an IP"),
        (["--trusted-proxies", "127.0.0.1,nginx"], "'nginx' is not an IP address or network"),
    ],
)
def test_trusted_proxies_refuse_what_is_not_an_address_or_network(args, message):
    """A bad --trusted-proxies entry is a usage error naming it."""
    with pytest.raises(usage.UsageError, match=message):
        parse(*args)


def test_trusted_proxies_and_the_host_check_reach_the_site(build):
    """--trusted-proxies reaches the site and the WebSocket factory; --auth none turns on
    the Host check with the allowed origins, other modes do not."""
    from stomp_chat.web.site import Root

    root = build("--stomp", "none", "--http", LOOPBACK, "--trusted-proxies", "127.0.0.1, ::1",
                 "--allowed-origins", "https://chat.example.com")
    (listener,) = _listeners(root)
    site = listener.factory
    assert site.trusted_proxies.trusts("::1") and not site.trusted_proxies.trusts("10.0.0.1")
    assert isinstance(site.resource, Root)
    assert site.resource.host_patterns == ["https://chat.example.com"]
    websocket = site.resource.children[b"ws"].children[b"chat"]._factory
    assert websocket.trusted_proxies is site.trusted_proxies
    root = build("--stomp", "none", "--http", LOOPBACK)
    assert not _listeners(root)[0].factory.trusted_proxies


def test_make_service_without_stomp_listener(build):
    """--stomp none leaves only the HTTP listener."""
    root = build("--stomp", "none", "--http", LOOPBACK)
    (listener,) = _listeners(root)
    assert isinstance(listener.factory, Site)


def test_make_service_without_http_listener(build):
    """--http none leaves only the raw STOMP listener."""
    root = build("--stomp", LOOPBACK, "--http", "none")
    (listener,) = _listeners(root)
    assert isinstance(listener.factory, StompFactory)


def test_make_service_with_no_listeners(build):
    """Both listeners can be disabled; the tree still builds."""
    root = build("--stomp", "none", "--http", "none")
    assert _listeners(root) == []


def test_plugin_points_at_this_module():
    """The twistd plugin names stomp-chat and this tap module, importing nothing heavy."""
    import importlib
    import sys

    sys.modules.pop("twisted.plugins.stomp_chat_plugin", None)
    plugin = importlib.import_module("twisted.plugins.stomp_chat_plugin")
    assert plugin.stompChat.tapname == "stomp-chat"
    assert plugin.stompChat.module == "stomp_chat.tap"


def test_an_endpoint_keeps_its_own_backlog() -> None:
    """An endpoint string that sets backlog= keeps it; others get the larger default."""
    options = Options()
    options.parseOptions(["--stomp", "tcp:0:interface=127.0.0.1:backlog=7",
                          "--http", "unix:/tmp/stomp-chat.sock"])
    assert options["stomp"] == "tcp:0:interface=127.0.0.1:backlog=7"
    assert options["http"] == "unix:/tmp/stomp-chat.sock"


# -- queue limits ------------------------------------------------------------


def test_queue_limit_options_default_to_the_brokers_defaults():
    """Without queue options the broker's documented queue limits apply."""
    from stomp_chat.broker import BrokerLimits

    options = parse()
    defaults = BrokerLimits()
    assert options["max-queued-bytes"] == defaults.max_queued_bytes == 64 * 1024 * 1024
    assert options["max-queue-messages"] == defaults.max_queue_messages
    assert options["max-queues"] == defaults.max_queues
    assert options["max-redeliveries"] == defaults.max_redeliveries
    assert options["dead-letter-queue"] == defaults.dead_letter_queue == "/queue/dead-letter"
    assert options["prefetch"] == defaults.prefetch == 1000
    assert options["max-unacked"] == defaults.max_unacked == 10_000


@pytest.mark.parametrize("value", ["/topic/dlq", "dead-letter", "/queue/", ""])
def test_dead_letter_queue_must_be_a_queue(value):
    """--dead-letter-queue outside /queue/ is a usage error."""
    with pytest.raises(usage.UsageError, match="--dead-letter-queue"):
        parse("--dead-letter-queue", value)


def test_make_service_wires_queue_limits_into_the_broker(build):
    """The queue limit and prefetch options reach the broker every session shares."""
    root = build("--stomp", LOOPBACK, "--http", "none", "--max-queued-bytes", "1000",
                 "--max-queue-messages", "7", "--max-queues", "3", "--max-redeliveries", "2",
                 "--dead-letter-queue", "/queue/dlq", "--prefetch", "9", "--max-unacked", "90")
    (listener,) = _listeners(root)
    limits = listener.factory.context.broker.limits
    assert (limits.max_queued_bytes, limits.max_queue_messages, limits.max_queues,
            limits.max_redeliveries, limits.dead_letter_queue, limits.prefetch,
            limits.max_unacked) == (1000, 7, 3, 2, "/queue/dlq", 9, 90)


# -- per-session limits ----------------------------------------------------


def test_session_limit_defaults():
    """Transactions, frame deadline and send rate have their documented defaults."""
    options = parse()
    assert options["max-transactions"] == 16
    assert options["max-transaction-bytes"] == 16 * 1024 * 1024
    assert options["frame-timeout"] == 60.0
    assert options["send-rate"] == 0.0
    assert options["send-burst"] == 200
    assert options["max-pending-receipts"] == 10_000


@pytest.mark.parametrize(
    "args",
    [
        ["--frame-timeout", "0"],
        ["--frame-timeout", "-1"],
        ["--frame-timeout", "nan"],
        ["--frame-timeout", "soon"],
        ["--send-rate", "-5"],
        ["--send-rate", "inf"],
        ["--max-transactions", "9" * 5000],
    ],
    ids=lambda a: " ".join(x[:12] for x in a),
)
def test_bad_session_limits_are_usage_errors(args):
    """Limits that are not sane numbers are refused at start-up with a usage error."""
    with pytest.raises(usage.UsageError):
        parse(*args)


def test_session_limits_reach_the_sessions(build):
    """The limit options land in SessionSettings; no send rate means a chain of authentication
    (with --auth none, naming clients after their login) and authorization only."""
    root = build("--stomp", LOOPBACK, "--http", "none", "--max-transactions", "3",
                 "--max-transaction-bytes", "5000", "--frame-timeout", "7.5",
                 "--max-pending-receipts", "12", "--max-subscriptions", "4")
    (listener,) = _listeners(root)
    context = listener.factory.context
    settings = context.settings
    assert (settings.max_transactions, settings.max_transaction_bytes) == (3, 5000)
    assert settings.frame_timeout == 7.5
    assert settings.max_pending_receipts == 12
    assert settings.max_subscriptions == 4
    authentication, authorization = context.interceptors
    assert isinstance(authentication, AuthenticationInterceptor)
    assert isinstance(authentication.authenticator, NoneAuthenticator)
    assert isinstance(authorization, AuthorizationInterceptor)


def test_send_rate_adds_the_rate_interceptor(build):
    """--send-rate puts a SendRateInterceptor with the given rate and burst in the chain,
    after authentication."""
    root = build("--stomp", LOOPBACK, "--http", "none", "--send-rate", "50", "--send-burst", "7")
    (listener,) = _listeners(root)
    authentication, interceptor, authorization = listener.factory.context.interceptors
    assert isinstance(authentication, AuthenticationInterceptor)
    assert isinstance(interceptor, SendRateInterceptor)
    assert isinstance(authorization, AuthorizationInterceptor)
    assert (interceptor.rate, interceptor.burst) == (50.0, 7)


def test_interceptors_option_loads_them_in_order(build):
    """--interceptors builds each named interceptor, in order, after authentication and the send
    rate and before authorization, which decides on the frame as they leave it."""
    root = build("--stomp", LOOPBACK, "--http", "none", "--send-rate", "9",
                 "--interceptors",
                 "tests.test_session_loading:Tagging, tests.test_session_loading:NoProfanity")
    (listener,) = _listeners(root)
    names = [type(i).__name__ for i in listener.factory.context.interceptors]
    assert names == ["AuthenticationInterceptor", "SendRateInterceptor", "Tagging", "NoProfanity",
                     "AuthorizationInterceptor"]


def test_interceptors_from_a_config_file_list(tmp_path: Path):
    """A config file may list interceptors as a TOML array; floats are accepted too."""
    config = tmp_path / "c.toml"
    config.write_text('interceptors = ["tests.test_session_loading:Tagging"]\n'
                      "frame_timeout = 2.5\n")
    options = parse("--config", str(config))
    assert [type(i).__name__ for i in options["interceptors"]] == ["Tagging"]
    assert options["frame-timeout"] == 2.5


@pytest.mark.parametrize("value", ["nomodule", "tests.no_such_module:X",
                                   "tests.test_session_loading:no_inbound"])
def test_bad_interceptors_are_usage_errors(value):
    """An interceptor that cannot be loaded stops start-up with a usage error naming it."""
    with pytest.raises(usage.UsageError, match="--interceptors"):
        parse("--interceptors", value)


def test_none_beyond_loopback_warns_at_start_up(build):
    """An explicit --auth none on a public interface builds, with a warning in the log."""
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        build("--auth", "none", "--stomp", "tcp:0", "--http", "none")
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
    assert any("--auth none: anyone who reaches tcp:0" in text for text in warnings), warnings


# -- start-up failures on the real twistd ------------------------------------------------


def _busy_port() -> tuple[socket.socket, int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    return holder, holder.getsockname()[1]


STARTUP_FAILURES = {
    "port clash": (["--http=tcp:{busy}:interface=127.0.0.1"], "Address already in use"),
    "port out of range": (["--http=tcp:70000:interface=127.0.0.1"], "port must be 0-65535"),
    "bad interface": (
        ["--auth=none", "--http=tcp:0:interface=192.0.2.1"], "Cannot assign requested address"
    ),
    "none beyond loopback": (["--http=tcp:0:interface=192.0.2.1"],
                             "listens beyond loopback while nobody is authenticated"),
    "unusable database": (["--database=postgresql://nobody@127.0.0.1:1/none"], "not usable"),
    "unreachable redis": (["--redis=redis://127.0.0.1:1/0"], "--redis"),
    "bad config": (["--config=bad.toml"], "unknown option 'bogus'"),
    "bad trusted proxy": (["--trusted-proxies=127.0.0.1,10.0.0.0/33"],
                          "--trusted-proxies: '10.0.0.0/33' is not an IP address or network"),
}


@pytest.mark.parametrize("daemon", [False, True], ids=["nodaemon", "daemon"])
@pytest.mark.parametrize("case", list(STARTUP_FAILURES))
def test_every_startup_failure_exits_non_zero_with_one_line(tmp_path: Path, case, daemon):
    """Each start-up failure exits non-zero, names its cause in one line, and logs no traceback."""
    args, cause = STARTUP_FAILURES[case]
    (tmp_path / "bad.toml").write_text('http = "tcp:0"\nbogus = 1\n')
    holder, busy = _busy_port()
    with holder:
        code, output, log = run_to_exit(
            tmp_path,
            "--stomp=tcp:0:interface=127.0.0.1",
            "--http=tcp:0:interface=127.0.0.1",
            f"--database=sqlite:///{tmp_path / 'chat.db'}",
            *(arg.format(busy=busy) for arg in args),
            daemon=daemon,
        )
    assert code != 0, output + log
    assert "Traceback" not in output + log
    if daemon and "cannot listen" in log:
        # The daemon's parent shows the first 100 bytes of the reason; the log has it all.
        assert "cannot listen" in output
        [line] = [line for line in log.splitlines() if "cannot start" in line]
        assert cause in line
    else:
        [line] = [line for line in output.splitlines() if cause in line]
        assert "cannot start" in line or "--" in line
    assert "Site starting on" not in log, "nothing may serve HTTP"


def test_destination_rules_come_from_the_config_file(tmp_path: Path) -> None:
    """The config file's [[rules]] become the authorization rules; options still parse."""
    config = tmp_path / "stomp-chat.toml"
    config.write_text(
        'history-size = 12\n\n[[rules]]\ndestination = "/topic/ops.**"\n'
        'subscribe = ["role:ops"]\nsend = ["user:alice"]\n'
    )
    options = parse("--config", str(config))
    assert options["history-size"] == 12
    assert len(options["rules"]) == 1
    assert options["rules"].rules[0].pattern.text == "/topic/ops.**"
    assert len(parse()["rules"]) == 0


def test_a_bad_rule_in_the_config_file_is_a_usage_error(tmp_path: Path) -> None:
    """A malformed rule stops start-up with a usage error naming the rule."""
    config = tmp_path / "stomp-chat.toml"
    config.write_text('[[rules]]\ndestination = "/topic/x"\nsend = ["group:ops"]\n')
    with pytest.raises(usage.UsageError, match="rule 1"):
        parse("--config", str(config))


def test_rules_come_from_a_config_file_named_by_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STOMP_CHAT_CONFIG names the file whose [[rules]] are read, as --config does."""
    config = tmp_path / "env.toml"
    config.write_text('[[rules]]\ndestination = "/queue/jobs"\nsend = ["authenticated"]\n')
    monkeypatch.setenv("STOMP_CHAT_CONFIG", str(config))
    assert [r.pattern.text for r in parse()["rules"].rules] == ["/queue/jobs"]


# -- durability options ----------------------------------------------------------------------


def test_durability_options_have_defaults_and_are_parsed():
    """--db-timeout reaches the database config; the room eviction options are coerced."""
    defaults = parse()
    assert defaults["database"].timeout == 10.0
    assert (defaults["room-idle-seconds"], defaults["max-active-rooms"]) == (600.0, 10_000)
    options = parse("--db-timeout", "2.5", "--room-idle-seconds", "30", "--max-active-rooms", "7")
    assert options["database"].timeout == 2.5
    assert options["room-idle-seconds"] == 30.0
    assert options["max-active-rooms"] == 7


@pytest.mark.parametrize("name", ["db-timeout", "room-idle-seconds"])
@pytest.mark.parametrize("value", ["0", "-1", "x", "inf", "nan"])
def test_positive_number_options_refuse_bad_values(name, value):
    """Timeouts and idle times must be positive, finite numbers."""
    with pytest.raises(usage.UsageError):
        parse(f"--{name}", value)


def test_every_store_on_the_pool_is_bounded_by_the_db_timeout(build):
    """Logins, room authorization and read positions run under --db-timeout on the
    server's clock, as the chat's store does."""
    root = build("--stomp", LOOPBACK, "--http", "none", "--db-timeout", "4",
                 "--auth", "password")
    (listener,) = _listeners(root)
    context = listener.factory.context
    chat = context.router.resolve("/app/message")[0].__self__
    reads = context.router.resolve("/app/read")[0].__self__
    (authentication,) = [i for i in context.interceptors
                         if isinstance(i, AuthenticationInterceptor)]
    (authorization,) = [i for i in context.interceptors
                        if isinstance(i, AuthorizationInterceptor)]
    runners = [
        chat.store._run,
        reads.store._run,
        authentication.authenticator.inner.users._run,
        authorization.policy.rooms.access_store._run,
    ]
    assert [(run.pool, run.timeout, run.clock) for run in runners] == \
        [(chat.store.pool, 4, chat.clock)] * 4


def test_make_service_wires_the_durability_options(build):
    """The database timeout bounds the store and the writer's stop; the writer gates every
    connection's reading; the chat evicts rooms by the options."""
    root = build("--stomp", LOOPBACK, "--http", "none", "--db-timeout", "3",
                 "--room-idle-seconds", "45", "--max-active-rooms", "9")
    (listener,) = _listeners(root)
    factory = listener.factory
    writer = root.writer  # type: ignore[attr-defined]
    assert factory.input_gate is writer
    assert writer._stop_timeout == 9
    handler, _ = factory.context.router.resolve("/app/message")
    chat = handler.__self__
    assert chat.store._run.timeout == 3
    assert (chat._rooms.idle_seconds, chat._rooms.max_rooms) == (45, 9)
