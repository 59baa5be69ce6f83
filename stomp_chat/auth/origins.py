"""Which browser origins may open a WebSocket or change state through the REST API.

An origin is compared with the configured public origins (``--allowed-origins``)
or, with none configured, with the address the connection actually reached
(the listening socket's own address, plus ``localhost`` when it is a loopback
one). It is never compared with the request's ``Host`` header: after DNS
rebinding a foreign page sends ``Origin`` and ``Host`` that both name the
attacker's host, and the two agree.
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
