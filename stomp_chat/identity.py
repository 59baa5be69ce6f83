"""Who is on the other end of a connection, and how it reached the server.

Pure value types that every layer may import: the session carries them, the
authenticators produce a ``Principal``, the transports build the
``ConnectionInfo``, and interceptors, the broker's rules and the chat read
them. Nothing here imports the rest of the project.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _extra() -> Any:
    """An empty, read-only mapping that takes no part in equality or hashing."""
    return field(default_factory=lambda: _EMPTY, compare=False, hash=False)

#: How a principal proved who it is.
AUTH_NONE = "none"
AUTH_PASSWORD = "password"
AUTH_JWT = "jwt"

ROLE_ADMIN = "admin"

TRANSPORT_TCP = "tcp"
TRANSPORT_WEBSOCKET = "ws"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated (or, with ``--auth none``, self-declared) user."""

    #: The stable id: ``/user/{user_id}/queue/...`` addresses this user (a JWT's ``sub``).
    user_id: str
    #: What other people see (a JWT name claim, the login name).
    name: str
    roles: frozenset[str] = frozenset()
    #: ``none``, ``password`` or ``jwt``.
    method: str = AUTH_NONE
    #: When the credential stops being valid, in epoch seconds (a JWT's ``exp``).
    expires_at: float | None = None
    claims: Mapping[str, Any] = _extra()

    def has_role(self, role: str) -> bool:
        return role in self.roles

    @property
    def is_admin(self) -> bool:
        return ROLE_ADMIN in self.roles


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What the server knows of a connection before any STOMP frame."""

    #: ``host:port`` of the peer, for logs.
    peer: str = ""
    #: The peer's IP address (per-address limits key on it).
    peer_host: str = ""
    #: ``tcp`` (raw STOMP) or ``ws`` (STOMP over WebSocket).
    transport: str = TRANSPORT_TCP
    #: TLS under the connection (``ssl:`` endpoints, wss://).
    secure: bool = False
    #: The WebSocket handshake's Origin header, if any.
    origin: str | None = None
    #: The WebSocket handshake's headers, lower-case names (empty on raw TCP).
    headers: Mapping[str, str] = _extra()
    cookies: Mapping[str, str] = _extra()
    #: The handshake URL's query parameters, each with every value given.
    query: Mapping[str, tuple[str, ...]] = _extra()
