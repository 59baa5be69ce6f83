"""Who may SUBSCRIBE to and SEND to which destination.

Decided once per SUBSCRIBE or SEND, never per delivery:

- **Application-owned destinations** (the chat rooms' topics
  ``/topic/chat/room/**`` and every user's ``/user/*/queue/errors`` and
  ``/user/*/queue/unread``) take no
  SEND from clients, in every auth mode: only the application publishes
  there, so every message a subscriber sees was validated and stored.
- With ``--auth none`` nothing else is checked (the development mode).
- Otherwise: a room's topic is read as its room allows (``RoomAccess``);
  ``/user/queue/...`` is the subscriber's own; subscribing to another
  user's ``/user/{id}/...`` is refused; ``/app/...`` routes require what they
  declared (default: anyone signed in); everything else is what the
  configured rules say, where a direct message (SEND ``/user/{id}/queue/...``)
  is allowed to anyone signed in unless a rule decides it, and what no rule
  allows is denied.
"""

from __future__ import annotations

from collections.abc import Sequence

from stomp_chat.app.chat import ROOM_TOPIC_PREFIX
from stomp_chat.app.presence import PRESENCE_SUFFIX
from stomp_chat.app.routes import AppRouter, NoHandler
from stomp_chat.authz.patterns import DestinationPattern
from stomp_chat.authz.rooms import MaybeDeferred, RoomAccess
from stomp_chat.authz.rules import SEND, SUBSCRIBE, Grant, RuleSet, admitted
from stomp_chat.broker import APP_PREFIX, USER_PREFIX
from stomp_chat.identity import Principal

#: Destinations only the application publishes to.
APPLICATION_OWNED = (
    DestinationPattern(ROOM_TOPIC_PREFIX + "**"),
    DestinationPattern(USER_PREFIX + "*/queue/errors"),
    DestinationPattern(USER_PREFIX + "*/queue/unread"),
)

_OWN_USER_DESTINATION = (USER_PREFIX + "queue/", USER_PREFIX + "topic/")


class DestinationPolicy:
    """The authorization of SUBSCRIBE and SEND by destination."""

    def __init__(
        self,
        *,
        enforce: bool,
        rules: RuleSet | None = None,
        rooms: RoomAccess | None = None,
        router: AppRouter | None = None,
        owned: Sequence[DestinationPattern] = APPLICATION_OWNED,
    ) -> None:
        if enforce and rooms is None:
            raise ValueError("enforcing authorization needs the rooms' access")
        self.enforce = enforce
        self.rules = rules if rules is not None else RuleSet()
        self.rooms = rooms
        self.router = router
        self.owned = tuple(owned)
        #: Route requirements, parsed once (one entry per declared route).
        self._grants: dict[tuple[str, ...], tuple[Grant, ...]] = {}

    def application_owned(self, destination: str) -> bool:
        if destination.startswith(ROOM_TOPIC_PREFIX):
            return True
        return any(pattern.matches(destination) for pattern in self.owned)

    def may_send(self, destination: str, principal: Principal | None) -> str | None:
        """None if allowed, else the reason it is not."""
        if destination.startswith(APP_PREFIX):  # the chat's path: checked first, and no
            if not self.enforce:  # /app destination is application-owned
                return None
            if principal is None:
                return "not authenticated"
            return self._may_use_route(destination, principal)
        if self.application_owned(destination):
            return f"{destination} is published by the server only"
        if not self.enforce:
            return None
        if principal is None:
            return "not authenticated"
        decided = self.rules.decide(SEND, destination, principal)
        if decided is None and destination.startswith(USER_PREFIX):
            decided = True  # direct messages between signed-in users
        return None if decided else f"no rule lets you send to {destination}"

    def _may_use_route(self, destination: str, principal: Principal) -> str | None:
        if self.router is None:
            return None
        try:
            required = self.router.requirement(destination)
        except NoHandler:
            return None  # the session answers an unknown /app destination itself
        if required is None:
            return None
        grants = self._grants.get(required)
        if grants is None:
            grants = self._grants[required] = tuple(Grant.parse(g) for g in required)
        if admitted(grants, principal):
            return None
        return f"you may not send to {destination}"

    def may_subscribe(
        self, destination: str, principal: Principal | None
    ) -> MaybeDeferred[str | None]:
        """None if allowed, else the reason it is not (or a Deferred of either)."""
        if not self.enforce:
            return None
        if principal is None:
            return "not authenticated"
        if destination.startswith(USER_PREFIX):
            if "/" in principal.user_id:
                # /user/{id}/queue/x routes by the text before the next "/": such an id
                # would share another user's queues.
                return "user ids containing '/' have no user destinations"
            if destination.startswith(_OWN_USER_DESTINATION):
                return None
            return "a client may subscribe to its own /user/queue/... only"
        if destination.startswith(ROOM_TOPIC_PREFIX):
            return self._may_read_room(destination, principal)
        decided = self.rules.decide(SUBSCRIBE, destination, principal)
        return None if decided else f"no rule lets you subscribe to {destination}"

    def _may_read_room(self, destination: str, principal: Principal) -> MaybeDeferred[str | None]:
        assert self.rooms is not None
        suffix = destination[len(ROOM_TOPIC_PREFIX) :]
        suffix = suffix.removesuffix(PRESENCE_SUFFIX)  # who is in a room: read like the room
        if not (suffix.isascii() and suffix.isdigit()) or not 0 < int(suffix) < 2**63:
            return f"{destination} is not a room"
        room_id = int(suffix)
        refused = f"room {room_id} is private"
        allowed = self.rooms.may_read(principal, room_id)
        if isinstance(allowed, bool):
            return None if allowed else refused
        return allowed.addCallback(lambda ok: None if ok else refused)
