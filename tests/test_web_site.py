"""The HTTP site's own resources: health, JSON 404s, and where the WebSocket lives."""

from __future__ import annotations

import json

from autobahn.twisted.resource import WebSocketResource
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
