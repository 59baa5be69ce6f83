"""A stomp.py chat client for end-to-end tests, recording what it receives."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import stomp

TIMEOUT = 15.0
ROOM_TOPIC = "/topic/chat/room/{}"


class ChatClient(stomp.ConnectionListener):
    """A stomp.py client (WebSocket unless given another connection) that records what the
    server sends it."""

    def __init__(
        self, port: int, login: str | None = None, *, passcode: str = "", connection: Any = None
    ) -> None:
        """Connect over WebSocket to ``port``, or over ``connection`` (e.g. a TCP one)."""
        self._lock = threading.Condition()
        self.messages: list[stomp.utils.Frame] = []
        self.receipts: list[str] = []
        self.errors: list[stomp.utils.Frame] = []
        self.disconnected = False
        self.conn = connection or stomp.WSStompConnection(
            [("127.0.0.1", port)], ws_path="/ws/chat", heartbeats=(0, 0)
        )
        self.conn.set_listener("recorder", self)
        if login is None:
            self.conn.connect(wait=True)
        else:
            self.conn.connect(login, passcode, wait=True)
        self._subscriptions = 0

    # listener callbacks run on stomp.py's receiver thread
    def on_message(self, frame: Any) -> None:
        with self._lock:
            self.messages.append(frame)
            self._lock.notify_all()

    def on_receipt(self, frame: Any) -> None:
        with self._lock:
            self.receipts.append(frame.headers["receipt-id"])
            self._lock.notify_all()

    def on_error(self, frame: Any) -> None:
        with self._lock:
            self.errors.append(frame)
            self._lock.notify_all()

    def on_disconnected(self) -> None:
        with self._lock:
            self.disconnected = True
            self._lock.notify_all()

    def wait_for(self, condition: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                result = condition()
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"timed out waiting for {what}; messages={len(self.messages)} "
                        f"receipts={self.receipts} errors={[e.headers for e in self.errors]}"
                    )
                self._lock.wait(remaining)

    def subscribe(self, destination: str) -> None:
        """Subscribe, and wait for the receipt so the subscription surely exists."""
        self._subscriptions += 1
        receipt = f"sub-{self._subscriptions}"
        self.conn.subscribe(
            destination, id=str(self._subscriptions), ack="auto", headers={"receipt": receipt}
        )
        self.wait_for(lambda: receipt in self.receipts, f"receipt {receipt}")

    def send_chat(self, body: dict[str, Any] | str, receipt: str | None = None) -> None:
        text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
        headers = {"receipt": receipt} if receipt is not None else {}
        self.conn.send("/app/message", text, content_type="application/json", headers=headers)

    def at(self, destination: str) -> list[Any]:
        with self._lock:
            return [m for m in self.messages if m.headers.get("destination") == destination]

    def wait_at(self, destination: str, count: int, timeout: float = TIMEOUT) -> list[Any]:
        self.wait_for(
            lambda: len(self.at(destination)) >= count, f"{count} on {destination}", timeout
        )
        return self.at(destination)

    def chat(self, room_id: int) -> list[dict[str, Any]]:
        """Bodies broadcast to a room so far."""
        return [json.loads(m.body) for m in self.at(ROOM_TOPIC.format(room_id))]

    def wait_chat(self, room_id: int, count: int, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        self.wait_at(ROOM_TOPIC.format(room_id), count, timeout)
        return self.chat(room_id)

    def close(self) -> None:
        if self.conn.is_connected():
            self.conn.disconnect()
