"""The application error channel: refusals a client hears on ``/user/queue/errors``.

An ``ApplicationError`` (bad JSON, unknown room...) leaves the connection
open; the client learns of it on its own user queue, with the failed frame's
receipt id so it can match the two.
"""

from __future__ import annotations

import json
from typing import Any

from stomp_chat.broker import Broker
from stomp_chat.errors import ApplicationError
from stomp_chat.stomp.frame import Frame

ERRORS_DESTINATION = "/user/queue/errors"


def report_application_error(
    broker: Broker, user_key: str, frame: Frame, error: ApplicationError
) -> None:
    """Tell every session of ``user_key`` why ``frame`` was refused."""
    headers = {"message": error.message, "code": error.code}
    receipt = frame.headers.get("receipt")
    if receipt is not None:
        headers["receipt-id"] = receipt
    body = error_json(error, frame.headers.get("destination", ""), receipt)
    broker.send_to_user(user_key, ERRORS_DESTINATION, body, headers)


def error_json(error: ApplicationError, destination: str, receipt: str | None) -> bytes:
    """The body of an error report: what failed, where, and which receipt it answers."""
    payload: dict[str, Any] = {
        "error": error.code,
        "message": error.message,
        "destination": destination,
    }
    if receipt is not None:
        payload["receipt"] = receipt
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")
