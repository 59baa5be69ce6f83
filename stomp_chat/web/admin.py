"""``/api/admin/...``: what an operator does to a running server, over HTTP and JSON.

Only principals with the ``admin`` role get in (401 without credentials, 403
without the role). With ``--auth none`` nobody can prove a role, so the admin
API answers 404 unless ``--admin-on-loopback`` opens it to requests from a
loopback address that carry no proxy header.

Sessions are this server's: in cluster mode, ask each server.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from stomp_chat.app.chat import MAX_TEXT_LENGTH, ChatService
from stomp_chat.errors import ApplicationError
from stomp_chat.identity import Principal
from stomp_chat.persistence import ChatMessage, utc_isoformat
from stomp_chat.web.api import ApiError, ChatApi, json_body, positive_id

log = Logger()

#: The ERROR message a session gets when an administrator disconnects its user.
DISCONNECTED = "disconnected by an administrator"
#: Headers a reverse proxy adds: a request carrying one did not start on this host.
_PROXY_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-real-ip")
#: Host names that mean this machine (besides loopback addresses).
_LOOPBACK_NAMES = ("localhost",)
#: Chat errors and the HTTP status each becomes.
_CHAT_ERROR_STATUS = {"busy": 503, "unavailable": 503, "unknown-room": 404}


class AdminApi:
    """The admin routes, mounted on the REST API (``ChatApi.add_route``)."""

    def __init__(
        self,
        api: ChatApi,
        chat: ChatService,
        sessions: Callable[[], list[Any]],
        principal_of: Callable[[Request], Principal | None],
        *,
        authenticated: bool,
        loopback_without_auth: bool = False,
    ) -> None:
        self.api = api
        self.chat = chat
        self.sessions = sessions
        self.principal_of = principal_of
        #: False with ``--auth none``: no request carries a role.
        self.authenticated = authenticated
        self.loopback_without_auth = loopback_without_auth

    def register(self) -> None:
        add = self.api.add_route
        add(r"/admin/sessions", GET=self._guarded(self.list_sessions))
        add(r"/admin/users/(?P<user>[^/]+)/disconnect", POST=self._guarded(self.disconnect_user))
        add(r"/admin/rooms/(?P<room_id>[^/]+)/messages", POST=self._guarded(self.post_system))
        add(r"/admin/rooms/(?P<room_id>[^/]+)/messages/(?P<seq>[^/]+)",
            DELETE=self._guarded(self.delete_message))

    # -- who may ---------------------------------------------------------------------

    def _guarded(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(request: Request, **arguments: str) -> Any:
            return handler(request, self._admin_name(request), **arguments)

        return guarded

    def _admin_name(self, request: Request) -> str:
        """Who the administrator is, for the log; raises 404, 401 or 403 otherwise."""
        if not self.authenticated:
            if self.loopback_without_auth and _from_this_host(request):
                return "local administrator"
            raise ApiError(404, "not-found", "the admin API is off without authentication")
        principal = self.principal_of(request)
        if principal is None:
            raise ApiError(401, "unauthenticated", "authentication required")
        if not principal.is_admin:
            raise ApiError(403, "forbidden", "the admin role is required")
        return principal.name

    # -- sessions --------------------------------------------------------------------

    def list_sessions(self, request: Request, admin: str) -> tuple[int, Any]:
        shown = sorted((_session_json(s) for s in self.sessions()),
                       key=lambda s: (s["connectedSince"], s["id"]))
        return 200, {"sessions": shown, "count": len(shown)}

    def disconnect_user(self, request: Request, admin: str, user: str) -> tuple[int, Any]:
        closed = 0
        for session in self.sessions():
            principal = getattr(session, "principal", None)
            if principal is None or principal.user_id != user:
                continue
            try:
                session.fail(DISCONNECTED)
            except Exception:  # one session's failure must not spare the others
                log.failure("could not disconnect a session of {user}", user=user)
                continue
            closed += 1
        log.info("{admin} disconnected user {user}: {count} session(s) closed",
                 admin=admin, user=user, count=closed)
        return 200, {"user": user, "disconnected": closed}

    # -- messages --------------------------------------------------------------------

    def post_system(self, request: Request, admin: str, room_id: str) -> Deferred[Any]:
        body = json_body(request)
        text = body.get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT_LENGTH:
            raise ApiError(400, "invalid-message",
                           f"text must be a non-empty string of at most {MAX_TEXT_LENGTH} "
                           "characters")
        room = positive_id(room_id, "room id")

        def post(found: Any) -> Deferred[ChatMessage]:
            if found is None:
                raise ApiError(404, "unknown-room", f"room {room} does not exist")
            return self.chat.post_system(room, text)

        def posted(message: ChatMessage) -> tuple[int, Any]:
            log.info("{admin} posted a system message to room {room} (seq {seq})",
                     admin=admin, room=room, seq=message.seq)
            return 201, message.to_json_dict()

        d = self.chat.store.get_room(room).addCallback(post)
        return d.addCallbacks(posted, _chat_error)

    def delete_message(
        self, request: Request, admin: str, room_id: str, seq: str
    ) -> Deferred[Any]:
        room = positive_id(room_id, "room id")
        number = positive_id(seq, "seq")

        def deleted(message: ChatMessage | None) -> tuple[int, Any]:
            if message is None:
                raise ApiError(404, "unknown-message",
                               f"room {room} has no stored message {number}")
            log.info("{admin} deleted message {room}-{seq}", admin=admin, room=room,
                     seq=number)
            return 200, {"roomId": room, "seq": number, "messageId": f"{room}-{number}",
                         "deleted": True}

        return self.chat.delete_message(room, number).addCallbacks(deleted, _chat_error)


def _chat_error(failure: Failure) -> Failure:
    """A chat refusal (busy, unavailable) as an HTTP error; anything else goes on."""
    error = failure.value
    if isinstance(error, ApplicationError):
        status = _CHAT_ERROR_STATUS.get(error.code, 400)
        return Failure(ApiError(status, error.code, str(error)))
    return failure


def _session_json(session: Any) -> dict[str, Any]:
    principal = session.principal
    connection = session.connection
    opened = datetime.fromtimestamp(session.opened_at, UTC)
    return {
        "id": session.session_id,
        "user": principal.user_id if principal is not None else None,
        "name": principal.name if principal is not None else None,
        "peer": connection.peer,
        "transport": connection.transport,
        "state": session.state.name.lower(),
        "connectedSince": utc_isoformat(opened),
        "subscriptions": len(session.subscriptions),
    }


def _from_this_host(request: Request) -> bool:
    """A request from a loopback address that no proxy forwarded, naming a loopback host.

    The name matters: after DNS rebinding a foreign page's requests come from
    loopback too, but name the attacker's host, and its reads are its own.
    """
    if any(request.getHeader(name) is not None for name in _PROXY_HEADERS):
        return False
    if not _is_loopback(getattr(request.getClientAddress(), "host", "")):
        return False
    name = request.getRequestHostname().decode("ascii", "replace").strip("[]").lower()
    return name in _LOOPBACK_NAMES or _is_loopback(name)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
