"""Small helpers for JSON resources: every answer, errors included, is JSON."""

from __future__ import annotations

import json
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request


def write_json(request: Request, status: int, payload: Any) -> bytes:
    """Set the status and content type; return the encoded body."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def error_body(request: Request, status: int, code: str, message: str) -> bytes:
    return write_json(request, status, {"error": code, "message": message})


class JSONNotFound(Resource):
    """A 404 that says so in JSON rather than in HTML."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        return error_body(request, 404, "not-found", "no such resource")
