"""Unit tests for stomp_chat.app.errors: the /user/queue/errors channel."""

from __future__ import annotations

import json

from stomp_chat.app.errors import ERRORS_DESTINATION, error_json, report_application_error
from stomp_chat.broker import Broker, Subscription
from stomp_chat.errors import ApplicationError
from stomp_chat.stomp.frame import Frame


class Recorder:
    def __init__(self) -> None:
        self.messages: list = []

    def deliver(self, subscription, message) -> None:
        self.messages.append(message)


def test_report_reaches_only_that_users_errors_queue():
    """An application error goes to the sender's /user/queue/errors and to no one else."""
    broker = Broker()
    mine, theirs = Recorder(), Recorder()
    broker.subscribe(Subscription(mine, "0", ERRORS_DESTINATION), "alice")
    broker.subscribe(Subscription(theirs, "0", ERRORS_DESTINATION), "bob")
    frame = Frame("SEND", {"destination": "/app/message", "receipt": "r7"}, b"{}")
    report_application_error(broker, "alice", frame, ApplicationError("bad json", code="json"))
    (message,) = mine.messages
    assert theirs.messages == []
    assert message.headers["message"] == "bad json"
    assert message.headers["code"] == "json"
    assert message.headers["receipt-id"] == "r7"
    assert json.loads(message.body) == {
        "error": "json", "message": "bad json", "destination": "/app/message", "receipt": "r7"
    }


def test_error_json_without_receipt_has_no_receipt_field():
    """The JSON body names the receipt only when the frame asked for one."""
    body = json.loads(error_json(ApplicationError("no"), "/app/x", None))
    assert body == {"error": "bad-request", "message": "no", "destination": "/app/x"}


def test_error_json_keeps_non_ascii_text():
    """Messages are UTF-8 JSON, not escaped ASCII."""
    assert "é".encode() in error_json(ApplicationError("café"), "/app/x", None)
