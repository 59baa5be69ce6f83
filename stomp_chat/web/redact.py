"""Secrets kept out of the logs: tokens and passwords in URLs.

A browser may carry its token in the WebSocket URL (``/ws/chat?access_token=``),
so the access log, which writes every request line, and any log line naming a
URL show such values as ``REDACTED``. The parameter's name is compared
decoded, so ``access%5Ftoken`` is redacted as well.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

from twisted.web.http import combinedLogFormatter

#: Query parameters whose values never reach a log (compared lower case, decoded).
SECRET_PARAMETERS = frozenset({"access_token", "token", "passcode", "password", "jwt"})
REDACTED = b"REDACTED"


def _secret(name: bytes) -> bool:
    return unquote_plus(name.decode("latin-1")).strip().lower() in SECRET_PARAMETERS


def redact_uri(uri: bytes) -> bytes:
    """``uri`` with the value of every secret query parameter replaced by ``REDACTED``."""
    path, question, rest = uri.partition(b"?")
    if not question:
        return uri
    query, hash_mark, fragment = rest.partition(b"#")
    pairs = []
    for piece in query.split(b"&"):
        parts = []
        for pair in piece.split(b";"):
            name, equals, _ = pair.partition(b"=")
            parts.append(name + b"=" + REDACTED if equals and _secret(name) else pair)
        pairs.append(b";".join(parts))
    redacted = path + b"?" + b"&".join(pairs)
    return redacted + hash_mark + fragment


def redact_text(uri: bytes | str) -> str:
    """``redact_uri`` for a log line: text in, text out."""
    raw = uri.encode("latin-1", "replace") if isinstance(uri, str) else uri
    return redact_uri(raw).decode("latin-1")


class _RedactedRequest:
    """What the combined log format reads of a request, with secrets redacted."""

    def __init__(self, request: Any) -> None:
        self._request = request
        self.method = request.method
        self.uri = redact_uri(request.uri)
        self.clientproto = request.clientproto
        self.code = request.code
        self.sentLength = request.sentLength

    def getClientAddress(self) -> Any:
        return self._request.getClientAddress()

    def getHeader(self, name: bytes) -> bytes | None:
        value: bytes | None = self._request.getHeader(name)
        if value is not None and name.lower() == b"referer":
            return redact_uri(value)
        return value


def access_log_line(timestamp: str, request: Any) -> str:
    """The combined log format's line, without the secrets a URL or its referrer carry."""
    line: str = combinedLogFormatter(timestamp, _RedactedRequest(request))
    return line
