"""The HTTP site's own resources: health, JSON 404s, and where the WebSocket lives."""

from __future__ import annotations

import json
import socket
import time

import pytest_twisted
from autobahn.twisted.resource import WebSocketResource
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from stomp_chat.web.site import build_site


class _Api(Resource):
    isLeaf = True

    def render_GET(self, request: DummyRequest) -> bytes:
        return b"api"


def _render(site, path: bytes) -> tuple[int, dict[str, str], bytes]:
    request = DummyRequest(path.strip(b"/").split(b"/"))
    request.uri = path
    resource = site.getResourceFor(request)
    body = resource.render(request)
    if isinstance(body, bytes):
        request.write(body)
    headers = {
        name.decode().lower(): values[0].decode()
        for name, values in request.responseHeaders.getAllRawHeaders()
    }
    return request.responseCode or 200, headers, b"".join(request.written)


def test_health_reports_ok_and_the_servers_figures() -> None:
    """GET /healthz answers JSON with status ok plus what the server reports."""
    site = build_site(object(), health=lambda: {"connections": 3, "unsaved": 0})
    status, headers, body = _render(site, b"/healthz")
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"status": "ok", "connections": 3, "unsaved": 0}


def test_unknown_paths_get_a_json_404() -> None:
    """A path the server does not serve is a JSON 404, not an HTML page."""
    site = build_site(object())
    status, headers, body = _render(site, b"/no/such/thing")
    assert status == 404
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"] == "not-found"


def test_the_websocket_endpoint_is_ws_chat() -> None:
    """/ws/chat is served by Autobahn's WebSocket resource, on the same site."""
    site = build_site(object())
    request = DummyRequest([b"ws", b"chat"])
    assert isinstance(site.getResourceFor(request), WebSocketResource)


def test_the_api_is_mounted_under_api() -> None:
    """The REST API given to the site answers under /api."""
    site = build_site(object(), api=_Api())
    status, _, body = _render(site, b"/api/rooms")
    assert (status, body) == (200, b"api")


def test_tracebacks_are_never_shown() -> None:
    """The site never puts a Python traceback into an HTTP answer."""
    assert build_site(object()).displayTracebacks is False


# -- the request-header deadline and idle timeout --------------------------------


def _channel(header_timeout: float = 10.0, idle_timeout: float = 60.0):
    clock = Clock()
    site = build_site(object(), header_timeout=header_timeout, idle_timeout=idle_timeout,
                      reactor=clock)
    channel = site.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1234))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 1234))
    channel.makeConnection(transport)
    return clock, channel, transport


def test_headers_trickled_past_the_deadline_get_408_and_close() -> None:
    """A request line and headers sent a byte at a time are cut at the deadline with 408."""
    clock, channel, transport = _channel(header_timeout=10.0)
    for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 60:
        channel.dataReceived(bytes([byte]))
        clock.advance(0.3)  # each byte resets twisted.web's own idle timeout
        if transport.disconnecting:
            break
    assert transport.disconnecting
    assert 9.9 < clock.seconds() < 10.3
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body)["error"] == "request-timeout"


def test_a_silent_connection_is_closed_at_the_header_deadline() -> None:
    """A connection that sends nothing is closed when the header deadline passes."""
    clock, _, transport = _channel(header_timeout=2.0)
    clock.advance(1.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting


def test_headers_in_time_are_served_and_the_deadline_restarts_per_request() -> None:
    """A prompt request is answered; on keep-alive the next deadline starts at its first byte."""
    clock, channel, transport = _channel(header_timeout=2.0, idle_timeout=60.0)
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    clock.advance(30)  # idle between requests: only the idle timeout applies
    assert not transport.disconnecting
    channel.dataReceived(b"GET /hea")
    clock.advance(2.1)
    assert transport.disconnecting
    assert b"HTTP/1.1 408 " in transport.value()


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() -> None:
    """Between requests a connection may idle for idle_timeout, not twisted.web's 12 hours."""
    clock, channel, transport = _channel(header_timeout=2.0, idle_timeout=60.0)
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    clock.advance(59)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting


def test_the_site_logs_as_site() -> None:
    """The listening line stays 'Site starting on PORT', which tooling reads."""
    assert build_site(object()).logPrefix() == "Site"


def test_slow_headers_over_a_real_socket_are_cut(start_server) -> None:
    """Against a real server with --http-header-timeout=1, a client trickling one header
    byte every 0.2 s gets 408 and is closed within about a second, not after minutes."""
    server = start_server("--http-header-timeout=1")
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=5)
    started = time.monotonic()
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"z" * 100
    received = b""
    try:
        for byte in request:
            sock.sendall(bytes([byte]))
            time.sleep(0.2)
            if time.monotonic() - started > 4:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.settimeout(2)
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    elapsed = time.monotonic() - started
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert elapsed < 5
    sock.close()


@pytest_twisted.ensureDeferred
async def test_no_delay_is_set_on_an_accepted_http_socket() -> None:
    """An accepted HTTP (and so WebSocket) socket has TCP_NODELAY set, read with getsockopt."""
    from twisted.internet import reactor

    site = build_site(object(), reactor=reactor)
    channels = []
    build = site.buildProtocol

    def record(addr):
        channel = build(addr)
        channels.append(channel)
        return channel

    site.buildProtocol = record  # type: ignore[method-assign]
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    sock = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        for _ in range(200):
            if channels and channels[0].transport is not None:
                break
            await deferLater(reactor, 0.01)
        handle = channels[0].transport.getHandle()
        assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sock.close()
        await port.stopListening()
        for channel in channels:
            if channel.transport is not None:
                channel.transport.abortConnection()
        await deferLater(reactor, 0.01)


def test_the_chat_page_is_at_the_root_and_its_files_under_static() -> None:
    """/ is the chat page and /static/ serves its files, beside the API and the WebSocket."""
    from stomp_chat.web.page import ChatPage, StaticFiles

    site = build_site(object())
    assert isinstance(site.getResourceFor(DummyRequest([b""])), ChatPage)
    assert isinstance(site.getResourceFor(DummyRequest([b"static", b"app.js"])), StaticFiles)


# -- the client behind trusted proxies, the Host check, the access log -------------------


class _Who(Resource):
    """Answers the client address the request reports."""

    isLeaf = True

    def render_GET(self, request) -> bytes:
        return request.getClientAddress().host.encode()


def _exchange(site, raw: bytes, peer: str = "127.0.0.1") -> tuple[bytes, bytes]:
    """One request over a real HTTP channel of ``site``; answers (status line, body)."""
    channel = site.buildProtocol(IPv4Address("TCP", peer, 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000),
                                hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
    channel.makeConnection(transport)
    channel.dataReceived(raw)
    head, _, body = transport.value().partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], body


def _who(site, peer: str, *headers: bytes) -> bytes:
    raw = b"GET /who HTTP/1.1\r\nHost: localhost\r\n" + b"".join(h + b"\r\n" for h in headers)
    status, body = _exchange(site, raw + b"\r\n", peer)
    assert status.startswith(b"HTTP/1.1 200"), status
    return body


def _who_site(proxies: str):
    from stomp_chat.proxies import TrustedProxies

    return build_site(object(), resources={b"who": _Who()},
                      trusted_proxies=TrustedProxies.parse(proxies))


def test_a_trusted_proxys_request_is_from_the_client_it_forwarded_for() -> None:
    """Behind a trusted proxy the request's client address is the one X-Forwarded-For names;
    from anyone else, or without trusted proxies, the header changes nothing."""
    site = _who_site("127.0.0.1")
    assert b"203.0.113.9" in _who(site, "127.0.0.1", b"X-Forwarded-For: 6.6.6.6, 203.0.113.9")
    assert b"198.51.100.7" in _who(site, "198.51.100.7", b"X-Forwarded-For: 203.0.113.9")
    assert b"127.0.0.1" in _who(site, "127.0.0.1", b"X-Forwarded-For: garbage")
    assert b"127.0.0.1" in _who(_who_site(""), "127.0.0.1", b"X-Forwarded-For: 203.0.113.9")


def test_with_the_host_check_a_foreign_host_is_refused_everywhere_but_health() -> None:
    """With the Host check on (--auth none), a request naming another host gets a JSON 403,
    the WebSocket handshake included; loopback names, allowed hosts and /health pass."""
    site = build_site(object(), api=_Api(), host_patterns=["https://chat.example.com"])
    for path in (b"/api/rooms", b"/", b"/ws/chat", b"/metrics"):
        status, body = _exchange(
            site, b"GET " + path + b" HTTP/1.1\r\nHost: rebound.example:8080\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 403"), (path, status)
        assert b'"forbidden-host"' in body
    for host in (b"localhost:8080", b"127.0.0.1:8080", b"chat.example.com"):
        status, body = _exchange(site, b"GET /api/rooms HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 200") and body.endswith(b"api"), host
    status, _ = _exchange(site, b"GET /health HTTP/1.1\r\nHost: lb.internal\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 404")  # not refused: no /health on this bare site
    status, _ = _exchange(site, b"GET /healthz HTTP/1.1\r\nHost: lb.internal\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200")


def test_without_the_host_check_any_host_is_served() -> None:
    """With authentication (no host patterns given) the Host header is not checked."""
    site = build_site(object(), api=_Api())
    status, _ = _exchange(site, b"GET /api/rooms HTTP/1.1\r\nHost: rebound.example\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200")


def test_the_access_log_shows_the_forwarded_client_and_no_token() -> None:
    """The site's access log line names the forwarded client and hides a URL's token."""
    import io

    site = _who_site("127.0.0.1")
    site.logFile = io.StringIO()
    _exchange(site, b"GET /who?access_token=eyJ.secret.sig HTTP/1.1\r\nHost: localhost\r\n"
                    b"X-Forwarded-For: 203.0.113.9\r\n\r\n")
    line = site.logFile.getvalue()
    assert line.startswith('"203.0.113.9"')
    assert "GET /who?access_token=REDACTED HTTP/1.1" in line and "secret" not in line
