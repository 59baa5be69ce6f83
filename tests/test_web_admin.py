"""The admin API under /api/admin, over real HTTP on a real ``twistd stomp-chat`` process,
with real STOMP clients and the server's SQLite database read directly."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import stomp

from tests.authkeys import claims, hs256, write_secret
from tests.serverproc import RunningServer
from tests.test_admin_cli import database_url

if TYPE_CHECKING:
    from tests.conftest_db import TestDatabase

pytest_plugins = ["tests.conftest_db"]

WAIT = 10.0


def token(sub: str, *roles: str) -> str:
    return hs256(claims(sub, name=f"name of {sub}", roles=list(roles)))


ADMIN = token("root", "admin")


def call(server: RunningServer, method: str, path: str, bearer: str | None = None,
         body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    sent = {"content-type": "application/json", **(headers or {})}
    if bearer is not None:
        sent["authorization"] = f"Bearer {bearer}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.http_url + path, data=data, headers=sent,
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


class Recorder(stomp.ConnectionListener):
    """What one STOMP client received: messages, ERRORs, and whether it was closed."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.bodies: list[dict[str, Any]] = []
        self.errors: list[dict[str, str]] = []
        self.closed = False

    def on_message(self, frame: Any) -> None:
        with self.lock:
            self.bodies.append(json.loads(frame.body))
            self.lock.notify_all()

    def on_error(self, frame: Any) -> None:
        with self.lock:
            self.errors.append(dict(frame.headers))
            self.lock.notify_all()

    def on_disconnected(self) -> None:
        with self.lock:
            self.closed = True
            self.lock.notify_all()

    def wait(self, condition: Any, what: str) -> None:
        deadline = time.monotonic() + WAIT
        with self.lock:
            while not condition():
                left = deadline - time.monotonic()
                assert left > 0, f"timed out waiting for {what}: {self.bodies} {self.errors}"
                self.lock.wait(left)


def connect(server: RunningServer, bearer: str, room: int | None = None) -> tuple[Any, Recorder]:
    connection = stomp.Connection12([("127.0.0.1", server.stomp_port)], heartbeats=(0, 0))
    recorder = Recorder()
    connection.set_listener("recorder", recorder)
    connection.connect(None, bearer, wait=True)
    if room is not None:
        receipt = threading.Event()

        class Receipts(stomp.ConnectionListener):
            def on_receipt(self, frame: Any) -> None:
                receipt.set()

        connection.set_listener("receipts", Receipts())
        connection.subscribe(f"/topic/chat/room/{room}", id="1",
                             headers={"receipt": "subscribed"})
        assert receipt.wait(WAIT), "no receipt for the subscription"
    return connection, recorder


@pytest.fixture(scope="module")
def jwt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with --auth jwt and its own SQLite database."""
    tmp = tmp_path_factory.mktemp("admin")
    server = RunningServer(tmp, [
        "--auth", "jwt", f"--jwt-secret-file={write_secret(tmp)}",
        f"--database=sqlite:///{tmp}/chat.db", "--max-connections-per-address=0",
    ]).start()
    yield server
    server.stop()


def database_of(server: RunningServer) -> Path:
    return server.workdir / "chat.db"


def new_room(server: RunningServer, name: str) -> int:
    status, room = call(server, "POST", "/api/rooms", ADMIN, {"name": name})
    assert status == 201, room
    room_id: int = room["id"]
    return room_id


def stored_seqs(server: RunningServer, room: int) -> list[tuple[int, str, int]]:
    with sqlite3.connect(database_of(server)) as connection:
        rows = connection.execute(
            "SELECT seq, type, sender_id FROM messages WHERE room_id = ? ORDER BY seq", (room,)
        ).fetchall()
    return [(int(seq), kind, int(sender)) for seq, kind, sender in rows]


def enter(connection: Any, room: int) -> None:
    """Join a public room the way clients do: an ENTER message (seq 1 in a new room)."""
    connection.send("/app/message", json.dumps({"type": "ENTER", "roomId": room}))


def test_only_admins_get_in(jwt_server: RunningServer) -> None:
    """Every admin route is 401 without credentials and 403 without the admin role."""
    routes = [("GET", "/api/admin/sessions", None),
              ("POST", "/api/admin/users/bob/disconnect", {}),
              ("POST", "/api/admin/rooms/1/messages", {"text": "hi"}),
              ("DELETE", "/api/admin/rooms/1/messages/1", None)]
    for method, path, body in routes:
        status, answer = call(jwt_server, method, path, None, body)
        assert (status, answer["error"]) == (401, "unauthenticated"), path
        status, answer = call(jwt_server, method, path, token("bob", "member"), body)
        assert (status, answer["error"]) == (403, "forbidden"), path
    assert call(jwt_server, "GET", "/api/admin/sessions", ADMIN)[0] == 200


def test_sessions_are_listed_with_user_peer_transport_and_subscriptions(
    jwt_server: RunningServer,
) -> None:
    """A connected client appears with its user, peer, transport, start and subscriptions."""
    room = new_room(jwt_server, "listed")
    before = time.time()
    connection, _ = connect(jwt_server, token("carol"), room)
    try:
        status, body = call(jwt_server, "GET", "/api/admin/sessions", ADMIN)
        assert status == 200
        mine = [s for s in body["sessions"] if s["user"] == "carol"]
        assert len(mine) == 1 and body["count"] == len(body["sessions"])
        session = mine[0]
        assert session["name"] == "name of carol"
        assert session["transport"] == "tcp" and session["peer"].startswith("127.0.0.1:")
        assert session["subscriptions"] == 1 and session["state"] == "connected"
        since = datetime.fromisoformat(session["connectedSince"].replace("Z", "+00:00"))
        assert abs(since.timestamp() - before) < 5
    finally:
        connection.disconnect()


def test_disconnecting_a_user_closes_all_their_sessions_only(jwt_server: RunningServer) -> None:
    """Each of the user's sessions gets ERROR 'disconnected by an administrator' and is
    closed; another user's session stays."""
    first, first_seen = connect(jwt_server, token("dave"))
    second, second_seen = connect(jwt_server, token("dave"))
    other, other_seen = connect(jwt_server, token("erin"))
    try:
        status, body = call(jwt_server, "POST", "/api/admin/users/dave/disconnect", ADMIN)
        assert (status, body) == (200, {"user": "dave", "disconnected": 2})
        for seen in (first_seen, second_seen):
            seen.wait(lambda s=seen: s.closed, "the close")
            assert [e["message"] for e in seen.errors] == ["disconnected by an administrator"]
        assert other.is_connected() and not other_seen.errors
        users = [s["user"] for s in call(jwt_server, "GET", "/api/admin/sessions", ADMIN)[1][
            "sessions"]]
        assert "dave" not in users and "erin" in users
        assert call(jwt_server, "POST", "/api/admin/users/nobody/disconnect", ADMIN)[1] == {
            "user": "nobody", "disconnected": 0}
    finally:
        other.disconnect()


def test_a_system_message_is_numbered_stored_and_broadcast(jwt_server: RunningServer) -> None:
    """A posted system message gets the room's next seq, type SYSTEM and senderId 0, reaches
    subscribers, is in the database when the answer comes, and in the history."""
    room = new_room(jwt_server, "announcements")
    listener, seen = connect(jwt_server, token("frank"), room)
    try:
        enter(listener, room)
        seen.wait(lambda: len(seen.bodies) == 1, "the ENTER message")
        status, message = call(jwt_server, "POST", f"/api/admin/rooms/{room}/messages", ADMIN,
                               {"text": "maintenance at noon"})
        assert status == 201, message
        assert message["type"] == "SYSTEM" and message["seq"] == 2
        assert message["senderId"] == 0 and message["detailMessage"] == "maintenance at noon"
        assert stored_seqs(jwt_server, room)[-1] == (2, "SYSTEM", 0)
        seen.wait(lambda: len(seen.bodies) == 2, "the system message")
        assert seen.bodies[1] == message
        history = call(jwt_server, "GET", f"/api/rooms/{room}/messages", ADMIN)[1]
        assert [m["type"] for m in history["messages"]] == ["ENTER", "SYSTEM"]
    finally:
        listener.disconnect()


def test_clients_cannot_send_system_messages(jwt_server: RunningServer) -> None:
    """SYSTEM is not a type a client may send: the SEND is refused, nothing is numbered."""
    room = new_room(jwt_server, "no-forgery")
    connection, seen = connect(jwt_server, token("gina"), room)
    try:
        enter(connection, room)
        connection.send("/app/message", json.dumps({"type": "SYSTEM", "roomId": room,
                                                    "detailMessage": "fake"}))
        connection.send("/app/message", json.dumps({"type": "TALK", "roomId": room,
                                                    "detailMessage": "real"}))
        seen.wait(lambda: any(b.get("type") == "TALK" for b in seen.bodies), "the TALK")
        chat = [b for b in seen.bodies if "seq" in b]
        assert [(b["type"], b["seq"]) for b in chat] == [("ENTER", 1), ("TALK", 2)]
    finally:
        connection.disconnect()


def test_bad_system_messages_are_json_errors(jwt_server: RunningServer) -> None:
    """No text, too long, a bad or unknown room: JSON 4xx, nothing posted."""
    room = new_room(jwt_server, "strict")
    path = f"/api/admin/rooms/{room}/messages"
    for body in ({}, {"text": ""}, {"text": 5}, {"text": "x" * 10_001}):
        status, answer = call(jwt_server, "POST", path, ADMIN, body)
        assert (status, answer["error"]) == (400, "invalid-message"), body
    assert call(jwt_server, "POST", "/api/admin/rooms/abc/messages", ADMIN,
                {"text": "hi"})[1]["error"] == "invalid-id"
    status, answer = call(jwt_server, "POST", "/api/admin/rooms/987654/messages", ADMIN,
                          {"text": "hi"})
    assert (status, answer["error"]) == (404, "unknown-room")
    assert stored_seqs(jwt_server, room) == []


def test_deleting_a_message_removes_it_everywhere_and_tells_subscribers(
    jwt_server: RunningServer,
) -> None:
    """The row goes, the history and cache no longer show it, subscribers get a DELETE event;
    deleting it again is 404, and the room's next message does not reuse its seq."""
    room = new_room(jwt_server, "moderated")
    connection, seen = connect(jwt_server, token("hank"), room)
    try:
        enter(connection, room)
        for text in ("one", "two"):
            connection.send("/app/message", json.dumps(
                {"type": "TALK", "roomId": room, "detailMessage": text}))
        seen.wait(lambda: len(seen.bodies) == 3, "three messages (ENTER, one, two)")
        status, body = call(jwt_server, "DELETE", f"/api/admin/rooms/{room}/messages/3", ADMIN)
        assert (status, body) == (200, {"roomId": room, "seq": 3, "messageId": f"{room}-3",
                                        "deleted": True})
        seen.wait(lambda: len(seen.bodies) == 4, "the DELETE event")
        assert seen.bodies[3] == {"type": "DELETE", "roomId": room, "messageId": f"{room}-3",
                                  "deletedSeq": 3}
        assert [seq for seq, _, _ in stored_seqs(jwt_server, room)] == [1, 2]
        history = call(jwt_server, "GET", f"/api/rooms/{room}/messages", ADMIN)[1]
        assert [m["seq"] for m in history["messages"]] == [1, 2]
        assert history["messages"][1]["detailMessage"] == "one"
        status, body = call(jwt_server, "DELETE", f"/api/admin/rooms/{room}/messages/3", ADMIN)
        assert (status, body["error"]) == (404, "unknown-message")
        connection.send("/app/message", json.dumps(
            {"type": "TALK", "roomId": room, "detailMessage": "four"}))
        seen.wait(lambda: len(seen.bodies) == 5, "the next message")
        assert seen.bodies[4]["seq"] == 4
        status, body = call(jwt_server, "DELETE", f"/api/admin/rooms/{room}/messages/x", ADMIN)
        assert (status, body["error"]) == (400, "invalid-id")
    finally:
        connection.disconnect()


def test_with_auth_none_the_admin_api_is_off_unless_opened_on_loopback(tmp_path: Path) -> None:
    """--auth none: 404 by default; with --admin-on-loopback on, loopback requests get in
    but one carrying a proxy header does not."""
    closed = RunningServer(tmp_path, [f"--database=sqlite:///{tmp_path}/closed.db"]).start()
    try:
        status, body = call(closed, "GET", "/api/admin/sessions")
        assert (status, body["error"]) == (404, "not-found")
    finally:
        closed.stop()
    opened_dir = tmp_path / "opened"
    opened_dir.mkdir()
    opened = RunningServer(opened_dir, [f"--database=sqlite:///{opened_dir}/open.db",
                                        "--admin-on-loopback=on"]).start()
    try:
        status, body = call(opened, "GET", "/api/admin/sessions")
        assert (status, body) == (200, {"sessions": [], "count": 0})
        status, body = call(opened, "GET", "/api/admin/sessions",
                            headers={"X-Forwarded-For": "203.0.113.9"})
        assert status == 404
        assert "local administrator" not in opened.log()
        call(opened, "POST", "/api/admin/users/x/disconnect")
        assert "local administrator disconnected user x" in opened.log()
    finally:
        opened.stop()


def test_the_loopback_admin_api_refuses_a_foreign_host_name(tmp_path: Path) -> None:
    """With --admin-on-loopback on, a request naming a foreign host (what a browser sends
    after DNS rebinding points that name at 127.0.0.1) is refused, reads included; a request
    to localhost or a loopback address gets in."""
    server = RunningServer(tmp_path, [f"--database=sqlite:///{tmp_path}/open.db",
                                      "--admin-on-loopback=on"]).start()
    try:
        port = server.http_port
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
            status, body = call(server, "GET", "/api/admin/sessions", headers={"Host": host})
            # --auth none: the server-wide Host check refuses it before the admin API's own.
            assert (status, body["error"]) == (403, "forbidden-host"), host
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
            status, body = call(server, "GET", "/api/admin/sessions", headers={"Host": host})
            assert (status, body["count"]) == (200, 0), host
    finally:
        server.stop()


def test_system_messages_and_deletes_reach_the_database(
    database: TestDatabase, tmp_path: Path
) -> None:
    """On SQLite and PostgreSQL: a system message's row exists when the 201 comes, and a
    deleted message's row is gone when the 200 comes."""
    server = RunningServer(tmp_path, [f"--database={database_url(database)}",
                                      "--admin-on-loopback=on"]).start()
    try:
        status, room = call(server, "POST", "/api/rooms", None, {"name": "stored"})
        assert status == 201
        path = f"/api/admin/rooms/{room['id']}/messages"
        for text in ("first", "second"):
            assert call(server, "POST", path, None, {"text": text})[0] == 201
        query = f"SELECT seq, type, sender_id, text FROM messages WHERE room_id = {room['id']} "
        rows = database.query(query + "ORDER BY seq")
        assert [tuple(row) for row in rows] == [(1, "SYSTEM", 0, "first"),
                                                (2, "SYSTEM", 0, "second")]
        assert call(server, "DELETE", f"{path}/1")[0] == 200
        assert [int(row[0]) for row in database.query(query)] == [2]
    finally:
        server.stop()
