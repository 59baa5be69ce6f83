"""``GET /api/rooms/{id}/presence`` on a real server, with real STOMP clients in the room."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from stomp_chat.app.presence import PRESENCE_WINDOW
from tests.serverproc import RunningServer


def _get(server: RunningServer, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(server.http_url + path, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _create_room(server: RunningServer, name: str) -> int:
    request = urllib.request.Request(
        server.http_url + "/api/rooms", data=json.dumps({"name": name}).encode(),
        headers={"content-type": "application/json"}, method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        room_id: int = json.loads(response.read())["id"]
        return room_id


def test_presence_lists_who_subscribes_to_a_room(server: RunningServer, clients) -> None:
    """Clients subscribed to a room are listed; one that leaves is not; others see events."""
    room = _create_room(server, "lobby")
    assert _get(server, f"/api/rooms/{room}/presence") == (200, {"roomId": room, "users": []})
    watcher, first, second = clients(server), clients(server), clients(server)
    watcher.subscribe(f"/topic/chat/room/{room}/presence")
    # A room's changes within PRESENCE_WINDOW are coalesced: one window apart, each has its
    # own event.
    first.subscribe(f"/topic/chat/room/{room}")
    time.sleep(2 * PRESENCE_WINDOW)
    second.subscribe(f"/topic/chat/room/{room}")
    status, body = _get(server, f"/api/rooms/{room}/presence")
    assert status == 200 and len(body["users"]) == 2
    assert all(user["sessions"] == 1 for user in body["users"])
    time.sleep(2 * PRESENCE_WINDOW)
    first.close()
    events = watcher.wait_at(f"/topic/chat/room/{room}/presence", 3)
    kinds = [json.loads(frame.body)["type"] for frame in events]
    assert kinds == ["join", "join", "leave"]
    assert json.loads(events[-1].body)["users"] == _get(server, f"/api/rooms/{room}/presence")[1][
        "users"
    ]


def test_presence_of_an_unknown_or_invalid_room_is_an_error(server: RunningServer) -> None:
    """An unknown room is a JSON 404, an id that is not a positive integer a JSON 400."""
    assert _get(server, "/api/rooms/424242/presence")[0] == 404
    for bad in ("abc", "0", "-1", "99999999999999999999"):
        status, body = _get(server, f"/api/rooms/{bad}/presence")
        assert status == 400 and body["error"] == "invalid-id", bad


def test_presence_follows_the_room_rules_outside_auth_none(tmp_path) -> None:
    """With --auth jwt: no token is 401, a private room's presence is for its members (403)."""
    from tests.authkeys import claims, hs256, write_secret

    server = RunningServer(tmp_path, [
        "--auth", "jwt", f"--jwt-secret-file={write_secret(tmp_path)}",
        f"--database=sqlite:///{tmp_path}/chat.db",
    ]).start()
    try:
        def call(method: str, path: str, who: str | None, body: Any = None) -> tuple[int, Any]:
            headers = {"content-type": "application/json"}
            if who is not None:
                headers["authorization"] = f"Bearer {hs256(claims(who, name=who))}"
            data = None if body is None else json.dumps(body).encode()
            request = urllib.request.Request(server.http_url + path, data=data,
                                             headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read())

        status, room = call("POST", "/api/rooms", "alice", {"name": "team", "private": True})
        assert status == 201
        path = f"/api/rooms/{room['id']}/presence"
        assert call("GET", path, None)[0] == 401
        assert call("GET", path, "bob")[0] == 403
        assert call("GET", path, "alice") == (200, {"roomId": room["id"], "users": []})
    finally:
        server.stop()
