"""The HTTP side: one twisted.web site for the WebSocket endpoint and JSON.

The WebSocket endpoint, the REST API and health checks share one port, so
one proxy rule and one TLS certificate serve them all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from stomp_chat.web.health import Health
from stomp_chat.web.json import JSONNotFound


class Root(Resource):
    """Unknown paths get a JSON 404 rather than twisted.web's HTML page."""

    def getChild(self, path: bytes, request: Request) -> Resource:
        return JSONNotFound()


def build_site(
    websocket_factory: Any,
    *,
    health: Callable[[], dict[str, Any]] | None = None,
    api: Resource | None = None,
    resources: Mapping[bytes, Resource] | None = None,
) -> Site:
    """The root: ``/ws/chat`` (WebSocket), ``/healthz``, ``/api/...``, and ``resources``."""
    root = Root()
    ws = Resource()
    ws.putChild(b"chat", WebSocketResource(websocket_factory))
    root.putChild(b"ws", ws)
    root.putChild(b"healthz", Health(health or dict))
    if api is not None:
        root.putChild(b"api", api)
    for path, resource in (resources or {}).items():
        root.putChild(path, resource)
    site = Site(root)
    site.displayTracebacks = False
    return site
