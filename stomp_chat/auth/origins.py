"""Which browser origins may open a WebSocket or change state through the REST API.

An origin is compared with the configured public origins (``--allowed-origins``)
or, with none configured, with the address the connection actually reached
(the listening socket's own address, plus ``localhost`` when it is a loopback
one). It is never compared with the request's ``Host`` header: after DNS
rebinding a foreign page sends ``Origin`` and ``Host`` that both name the
attacker's host, and the two agree.

With ``--auth none`` the ``Host`` header is checked as well (``host_allowed``):
a rebinding page's own reads (history, a WebSocket) are same-origin for the
browser, so no Origin check sees them, but they name the attacker's host. Such
a server answers only requests naming an address it was reached at, a loopback
name, or a host of ``--allowed-origins``.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_LOOPBACK_NAMES = ("localhost",)


def _split_origin(origin: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` of an origin, the port made explicit."""
    parts = urlsplit(origin.strip())
    try:
        port = parts.port
    except ValueError:
        return "", "", None
    host = (parts.hostname or "").lower()
    scheme = parts.scheme.lower()
    return scheme, host, port if port is not None else _DEFAULT_PORTS.get(scheme)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def matches_local_address(origin: str, local_host: str, local_port: int) -> bool:
    """Whether ``origin`` names the address this connection reached (its IP and port)."""
    scheme, host, port = _split_origin(origin)
    if not host or port != local_port:
        return False
    local = local_host.lower()
    if local.startswith("::ffff:"):  # an IPv4 client on a dual-stack socket
        local = local[len("::ffff:"):]
    if host.strip("[]") == local:
        return True
    return _is_loopback(local) and (host in _LOOPBACK_NAMES or _is_loopback(host.strip("[]")))


def matches_patterns(origin: str, patterns: Sequence[str]) -> bool:
    """``*`` allows all; a pattern with a scheme matches the whole origin
    (``https://*.example.com``), one without matches its host and port
    (``chat.example.com:8443``)."""
    origin = origin.strip().lower()
    parts = urlsplit(origin)
    netloc = parts.netloc or origin
    for pattern in patterns:
        pattern = pattern.strip().lower()
        if not pattern:
            continue
        if pattern == "*" or fnmatch.fnmatchcase(origin, pattern):
            return True
        if "://" not in pattern and fnmatch.fnmatchcase(netloc, pattern):
            return True
    return False


def origin_allowed(
    origin: str | None,
    patterns: Sequence[str],
    local_host: str,
    local_port: int,
) -> bool:
    """Whether a browser from ``origin`` may connect to the socket at ``local_host:local_port``.

    No ``Origin`` (stomp.py, Node, curl) is allowed: browsers always send one.
    """
    if not origin:
        return True
    if patterns:
        return matches_patterns(origin, patterns)
    return matches_local_address(origin, local_host, local_port)


def _host_name(host: str) -> str | None:
    """The name in a ``Host`` header (no port, no brackets, lower case); ``None`` if it
    is not one."""
    host = host.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return name if _is_ip(name) else None
    name, colon, port = host.partition(":")
    if colon and not port.isdigit():
        return None
    if not name or any(char in name for char in "/@\\ "):
        return None
    return name


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _pattern_host(pattern: str) -> str:
    """The host part of an ``--allowed-origins`` pattern (``*`` and wildcards kept)."""
    pattern = pattern.strip().lower()
    if "://" in pattern:
        pattern = pattern.split("://", 1)[1]
    pattern = pattern.split("/", 1)[0]
    if pattern.startswith("["):
        return pattern[1:].partition("]")[0]
    return pattern.rsplit(":", 1)[0] if pattern.count(":") == 1 else pattern


def host_allowed(host: str | None, patterns: Sequence[str], local_host: str) -> bool:
    """Whether a request's ``Host`` names this server: the address the connection
    reached (``local_host``), a loopback name or address, or the host of an
    ``--allowed-origins`` pattern (``*`` allows every host). No ``Host`` at all
    (HTTP/1.0 tools) is allowed: browsers always send one."""
    if host is None:
        return True
    name = _host_name(host)
    if name is None:
        return False
    if name in _LOOPBACK_NAMES or _is_loopback(name):
        return True
    local = local_host.lower()
    if local.startswith("::ffff:"):
        local = local[len("::ffff:"):]
    if name == local:
        return True
    for pattern in patterns:
        wanted = _pattern_host(pattern)
        if wanted and (wanted == "*" or fnmatch.fnmatchcase(name, wanted)):
            return True
    return False
