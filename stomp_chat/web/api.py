"""The REST API under ``/api``: rooms, membership and history, JSON in and out.

Every answer is JSON, errors included (``{"error": code, "message": ...}``
with a 4xx status), so browser code never has to parse an HTML error page.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from stomp_chat.app.chat import ChatService
from stomp_chat.outage import OutageLog
from stomp_chat.persistence import (
    ChatMessage,
    ChatStore,
    Member,
    MemberNotFound,
    Room,
    RoomAlreadyExists,
    RoomNotFound,
    utc_isoformat,
)
from stomp_chat.web.json import error_body, write_json

log = Logger()

MAX_BODY_BYTES = 64 * 1024


class ApiError(Exception):
    """An HTTP error with a JSON body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


Handler = Callable[..., Any]


def room_json(room: Room) -> dict[str, Any]:
    return {"id": room.id, "name": room.name, "createdAt": utc_isoformat(room.created_at)}


def member_json(member: Member) -> dict[str, Any]:
    return {"id": member.id, "name": member.name, "createdAt": utc_isoformat(member.created_at)}


class ChatApi(Resource):
    """``/api/...``: a small method + path route table over the chat service."""

    isLeaf = True

    def __init__(
        self,
        chat: ChatService,
        store: ChatStore,
        *,
        max_page: int = 100,
        outage: OutageLog | None = None,
    ) -> None:
        super().__init__()
        self.chat = chat
        self.store = store
        self.max_page = max_page
        #: Unexpected failures (a database outage) are logged once per outage.
        self.outage = outage
        self._routes: list[tuple[re.Pattern[str], dict[bytes, Handler]]] = []
        self._add(r"/rooms", GET=self.list_rooms, POST=self.create_room)
        self._add(r"/rooms/(?P<room_id>[^/]+)", GET=self.get_room)
        self._add(r"/rooms/(?P<room_id>[^/]+)/members", GET=self.list_members,
                  POST=self.join_room)
        self._add(r"/rooms/(?P<room_id>[^/]+)/members/(?P<member_id>[^/]+)",
                  DELETE=self.leave_room)
        self._add(r"/rooms/(?P<room_id>[^/]+)/messages", GET=self.list_messages)

    def _add(self, pattern: str, **methods: Handler) -> None:
        routes = {name.encode("ascii"): handler for name, handler in methods.items()}
        self._routes.append((re.compile(pattern + r"/?\Z"), routes))

    # -- dispatch --------------------------------------------------------

    def render(self, request: Request) -> bytes | int:
        postpath = request.postpath or []
        path = "/" + "/".join(segment.decode("utf-8", "replace") for segment in postpath)
        for pattern, methods in self._routes:
            match = pattern.match(path)
            if match is None:
                continue
            handler = methods.get(request.method)
            if handler is None:
                allowed = b", ".join(sorted(methods))
                request.setHeader(b"allow", allowed)
                return error_body(request, 405, "method-not-allowed",
                                  f"use {allowed.decode()} on this resource")
            gone: list[bool] = []
            request.notifyFinish().addErrback(_client_gone, gone)
            d = maybeDeferred(handler, request, **match.groupdict())
            d.addCallbacks(self._respond, self._fail, callbackArgs=(request, gone),
                           errbackArgs=(request, gone))
            return NOT_DONE_YET
        return error_body(request, 404, "not-found", f"no such resource: {path}")

    def _respond(self, result: tuple[int, Any], request: Request, gone: list[bool]) -> None:
        status, payload = result
        if self.outage is not None:
            self.outage.succeeded()
        self._finish(request, write_json(request, status, payload), gone)

    def _fail(self, failure: Failure, request: Request, gone: list[bool]) -> None:
        error = failure.value
        if isinstance(error, ApiError):
            body = error_body(request, error.status, error.code, error.message)
        elif isinstance(error, RoomNotFound):
            body = error_body(request, 404, "unknown-room", str(error))
        elif isinstance(error, MemberNotFound):
            body = error_body(request, 404, "unknown-member", str(error))
        elif isinstance(error, RoomAlreadyExists):
            body = error_body(request, 409, "room-exists", str(error))
        else:
            if self.outage is not None:
                self.outage.failed(failure, f"{request.method.decode()} {request.uri.decode()}")
            else:
                log.failure("REST request {method} {uri} failed", failure,
                            method=request.method, uri=request.uri)
            body = error_body(request, 503, "unavailable",
                              "the server could not complete the request; try again")
        self._finish(request, body, gone)

    @staticmethod
    def _finish(request: Request, body: bytes, gone: list[bool]) -> None:
        if gone:  # the client went away while the answer was being prepared
            return
        request.write(body)
        request.finish()

    # -- rooms ------------------------------------------------------------

    def list_rooms(self, request: Request) -> Deferred[tuple[int, Any]]:
        return self.store.list_rooms().addCallback(
            lambda rooms: (200, {"rooms": [room_json(r) for r in rooms]})
        )

    def create_room(self, request: Request) -> Deferred[tuple[int, Any]]:
        body = _json_body(request)
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ApiError(400, "invalid-room", "name must be a non-empty string of at most 200 "
                                                "characters")
        room_id = body.get("id")
        if room_id is not None:
            room_id = _positive(room_id, "id")
        return self.store.create_room(name.strip(), room_id).addCallback(
            lambda room: (201, room_json(room))
        )

    def get_room(self, request: Request, room_id: str) -> Deferred[tuple[int, Any]]:
        return self._room(room_id).addCallback(lambda room: (200, room_json(room)))

    def _room(self, raw_id: str) -> Deferred[Room]:
        room_id = _positive(raw_id, "room id")

        def found(room: Room | None) -> Room:
            if room is None:
                raise ApiError(404, "unknown-room", f"room {room_id} does not exist")
            return room

        return self.store.get_room(room_id).addCallback(found)

    # -- membership ---------------------------------------------------------

    def list_members(self, request: Request, room_id: str) -> Deferred[tuple[int, Any]]:
        return self._room(room_id).addCallback(
            lambda room: self.store.list_members(room.id)
        ).addCallback(lambda members: (200, {"members": [member_json(m) for m in members]}))

    def join_room(self, request: Request, room_id: str) -> Deferred[tuple[int, Any]]:
        body = _json_body(request)
        member_id = _positive(body.get("memberId"), "memberId")

        def join(room: Room) -> Deferred[tuple[int, Any]]:
            return self.store.ensure_member(member_id).addCallback(
                lambda member: self.store.join_room(room.id, member.id).addCallback(
                    lambda joined: (201 if joined else 200,
                                    {"roomId": room.id, "member": member_json(member)})
                )
            )

        return self._room(room_id).addCallback(join)

    def leave_room(
        self, request: Request, room_id: str, member_id: str
    ) -> Deferred[tuple[int, Any]]:
        member = _positive(member_id, "member id")

        def leave(room: Room) -> Deferred[tuple[int, Any]]:
            def left(was_member: bool) -> tuple[int, Any]:
                if not was_member:
                    raise ApiError(404, "not-a-member",
                                   f"member {member} is not in room {room.id}")
                return (200, {"roomId": room.id, "memberId": member, "left": True})

            return self.store.leave_room(room.id, member).addCallback(left)

        return self._room(room_id).addCallback(leave)

    # -- history --------------------------------------------------------------

    def list_messages(self, request: Request, room_id: str) -> Deferred[tuple[int, Any]]:
        limit = _query_int(request, "limit", self.max_page)
        if limit > self.max_page:
            raise ApiError(400, "invalid-limit", f"limit must be at most {self.max_page}")
        before = _query_int(request, "before", None)
        after = _query_int(request, "after", None, minimum=0)  # after=0: from the start
        if before is not None and after is not None:
            raise ApiError(400, "invalid-query", "use either before or after, not both")

        def page(room: int) -> Deferred[tuple[int, Any]]:
            return self.chat.history(room, limit, before, after).addCallback(
                lambda messages: (200, _page_json(room, messages))
            )

        active = _positive(room_id, "room id")
        if self.chat.active_room(active) is not None:
            return page(active)  # an active room exists: no need to ask the database
        return self._room(room_id).addCallback(lambda room: page(room.id))


def _client_gone(failure: Failure, gone: list[bool]) -> None:
    gone.append(True)


def _page_json(room_id: int, messages: list[ChatMessage]) -> dict[str, Any]:
    return {
        "roomId": room_id,
        "messages": [m.to_json_dict() for m in messages],
        "oldestSeq": messages[0].seq if messages else None,
        "newestSeq": messages[-1].seq if messages else None,
        "hasMoreBefore": bool(messages) and messages[0].seq > 1,
    }


def _json_body(request: Request) -> dict[str, Any]:
    raw = request.content.read(MAX_BODY_BYTES + 1) if request.content else b""
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "too-large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid-json", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid-json", "the request body must be a JSON object")
    return body


def _positive(value: Any, name: str) -> int:
    if isinstance(value, str) and value.isdigit() and value.isascii():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise ApiError(400, "invalid-id", f"{name} must be a positive integer")
    return value


def _query_int(
    request: Request, name: str, default: int | None, *, minimum: int = 1
) -> Any:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return default
    raw = values[0].decode("ascii", "replace")
    if not raw.isdigit() or not raw.isascii() or not minimum <= int(raw) < 2**63:
        raise ApiError(400, f"invalid-{name}", f"{name} must be an integer of at least {minimum}")
    return int(raw)

