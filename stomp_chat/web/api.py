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

from stomp_chat.app.chat import ChatService, check_storable_text
from stomp_chat.authz.rest import RoomRestPolicy
from stomp_chat.authz.rooms import AccessDenied, NotAuthenticated
from stomp_chat.errors import ApplicationError
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
from stomp_chat.web.redact import redact_text

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


def room_json(room: Room, private: bool | None = None) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "id": room.id, "name": room.name, "createdAt": utc_isoformat(room.created_at)
    }
    if private is not None:
        shown["private"] = private
    return shown


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
        access: RoomRestPolicy | None = None,
    ) -> None:
        super().__init__()
        self.chat = chat
        self.store = store
        self.max_page = max_page
        #: Unexpected failures (a database outage) are logged once per outage.
        self.outage = outage
        #: Who may see and change which room (see stomp_chat.authz.rest); None: everyone.
        self.access = access
        self._routes: list[tuple[re.Pattern[str], dict[bytes, Handler]]] = []
        self._add(r"/rooms", GET=self.list_rooms, POST=self.create_room)
        self._add(r"/rooms/(?P<room_id>[^/]+)", GET=self.get_room)
        self._add(r"/rooms/(?P<room_id>[^/]+)/members", GET=self.list_members,
                  POST=self.join_room)
        self._add(r"/rooms/(?P<room_id>[^/]+)/members/(?P<member_id>[^/]+)",
                  DELETE=self.leave_room)
        self._add(r"/rooms/(?P<room_id>[^/]+)/messages", GET=self.list_messages)

    def add_route(self, pattern: str, **methods: Handler) -> None:
        """Serve one more path under ``/api``; a handler returns ``(status, payload)``."""
        self._add(pattern, **methods)

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
        elif isinstance(error, AccessDenied):
            status = 401 if isinstance(error, NotAuthenticated) else 403
            body = error_body(request, status, error.code, error.message)
        elif isinstance(error, RoomNotFound):
            body = error_body(request, 404, "unknown-room", str(error))
        elif isinstance(error, MemberNotFound):
            body = error_body(request, 404, "unknown-member", str(error))
        elif isinstance(error, RoomAlreadyExists):
            body = error_body(request, 409, "room-exists", str(error))
        else:
            if self.outage is not None:
                self.outage.failed(
                    failure, f"{request.method.decode('latin-1')} {redact_text(request.uri)}"
                )
            else:
                log.failure("REST request {method} {uri} failed", failure,
                            method=request.method, uri=redact_text(request.uri))
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
        access = self.access
        if access is not None:
            return access.listing(request).addCallback(
                lambda visible: self.store.list_rooms().addCallback(
                    lambda rooms: (200, {"rooms": _visible_rooms(rooms, dict(visible))})
                )
            )
        return self.store.list_rooms().addCallback(
            lambda rooms: (200, {"rooms": [room_json(r) for r in rooms]})
        )

    def create_room(self, request: Request) -> Deferred[tuple[int, Any]]:
        body = _json_body(request)
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ApiError(400, "invalid-room", "name must be a non-empty string of at most 200 "
                                                "characters")
        _storable(name, "name", "invalid-room")
        room_id = body.get("id")
        if room_id is not None:
            room_id = _positive(room_id, "id")
        private = body.get("private", False)
        if not isinstance(private, bool):
            raise ApiError(400, "invalid-room", "private must be true or false")
        if self.access is not None:
            return self.access.create_room(request, name.strip(), room_id, private).addCallback(
                lambda room: (201, room_json(room, private))
            )
        return self.store.create_room(name.strip(), room_id).addCallback(
            lambda room: (201, room_json(room))
        )

    def get_room(self, request: Request, room_id: str) -> Deferred[tuple[int, Any]]:
        if self.access is not None:
            return self._readable_room(request, room_id).addCallback(
                lambda shown: (200, room_json(*shown))
            )
        return self._room(room_id).addCallback(lambda room: (200, room_json(room)))

    def _room(self, raw_id: str) -> Deferred[Room]:
        room_id = _positive(raw_id, "room id")

        def found(room: Room | None) -> Room:
            if room is None:
                raise ApiError(404, "unknown-room", f"room {room_id} does not exist")
            return room

        return self.store.get_room(room_id).addCallback(found)

    def readable_room(self, request: Request, raw_id: str) -> Deferred[tuple[Room, bool]]:
        """For routes added with ``add_route``: the room once the caller may read it (400 for
        a bad id, 404 unknown, 401/403 under the room rules)."""
        return self._readable_room(request, raw_id)

    def _readable_room(self, request: Request, raw_id: str) -> Deferred[tuple[Room, bool]]:
        """The room and its privacy, once the caller may read it (or no access rules)."""
        access = self.access
        if access is None:
            return self._room(raw_id).addCallback(lambda room: (room, False))
        access.caller(request)  # 401 before saying whether the room exists
        return self._room(raw_id).addCallback(
            lambda room: access.check_read(request, room.id).addCallback(
                lambda private: (room, private)
            )
        )

    # -- membership ---------------------------------------------------------

    def list_members(self, request: Request, room_id: str) -> Deferred[tuple[int, Any]]:
        return self._readable_room(request, room_id).addCallback(
            lambda shown: self.store.list_members(shown[0].id)
        ).addCallback(lambda members: (200, {"members": [member_json(m) for m in members]}))

    def join_room(self, request: Request, room_id: str) -> Deferred[tuple[int, Any]]:
        body = _json_body(request)
        if self.access is not None:
            return self._join_with_access(request, room_id, body, self.access)
        member_id = _positive(body.get("memberId"), "memberId")

        def join(room: Room) -> Deferred[tuple[int, Any]]:
            return self.store.ensure_member(member_id).addCallback(
                lambda member: self.store.join_room(room.id, member.id).addCallback(
                    lambda joined: (201 if joined else 200,
                                    {"roomId": room.id, "member": member_json(member)})
                )
            )

        return self._room(room_id).addCallback(join)

    def _join_with_access(
        self, request: Request, room_id: str, body: dict[str, Any], access: RoomRestPolicy
    ) -> Deferred[tuple[int, Any]]:
        """Join as the room rules say: oneself, or (by members) someone else."""
        raw_member, user_id = body.get("memberId"), body.get("userId")
        member_id = None if raw_member is None else _positive(raw_member, "memberId")
        if user_id is not None and (not isinstance(user_id, str) or not user_id):
            raise ApiError(400, "invalid-id", "userId must be a non-empty string")
        if user_id is not None:
            _storable(user_id, "userId", "invalid-id")
        if not access.enforce and member_id is None and user_id is None:
            member_id = _positive(None, "memberId")
        access.caller(request)

        def join(room: Room) -> Deferred[tuple[int, Any]]:
            return access.join(request, room.id, member_id, user_id).addCallback(
                lambda joined: (201 if joined[1] else 200,
                                {"roomId": room.id, "member": member_json(joined[0])})
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

            if self.access is not None:
                return self.access.leave(request, room.id, member).addCallback(left)
            return self.store.leave_room(room.id, member).addCallback(left)

        if self.access is not None:
            self.access.caller(request)
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
        if self.access is not None:
            return self._readable_room(request, room_id).addCallback(
                lambda shown: page(shown[0].id)
            )
        if self.chat.active_room(active) is not None:
            return page(active)  # an active room exists: no need to ask the database
        return self._room(room_id).addCallback(lambda room: page(room.id))


def _visible_rooms(rooms: list[Room], visible: dict[int, bool]) -> list[dict[str, Any]]:
    return [room_json(room, visible[room.id]) for room in rooms if room.id in visible]


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


def _storable(text: str, name: str, code: str) -> None:
    """Text every database can store (no NUL, no lone surrogate), or a 400 naming it."""
    try:
        check_storable_text(text, name)
    except ApplicationError as error:
        raise ApiError(400, code, error.message) from None


#: Ids and seqs are 64-bit signed integers in both databases (BIGINT).
MAX_ID = 2**63 - 1
_MAX_ID_DIGITS = len(str(MAX_ID))


def _small_digits(raw: str) -> int | None:
    """A decimal string as an int, or None if it is not one or has more digits than any id
    (int() of thousands of digits is slow, and refused past Python's limit)."""
    if not (raw.isdigit() and raw.isascii()) or len(raw.lstrip("0")) > _MAX_ID_DIGITS:
        return None
    return int(raw.lstrip("0") or "0")


def _positive(value: Any, name: str) -> int:
    if isinstance(value, str):
        value = _small_digits(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise ApiError(400, "invalid-id", f"{name} must be a positive integer of at most {MAX_ID}")
    return value


def _query_int(
    request: Request, name: str, default: int | None, *, minimum: int = 1
) -> Any:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return default
    number = _small_digits(values[0].decode("ascii", "replace"))
    if number is None or not minimum <= number <= MAX_ID:
        raise ApiError(
            400, f"invalid-{name}", f"{name} must be an integer from {minimum} to {MAX_ID}"
        )
    return number



#: For routes added with ``ChatApi.add_route``: the same body and id rules as the API's own.
json_body = _json_body
positive_id = _positive
