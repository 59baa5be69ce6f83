"""Building the authorization parts from options, for the composition root."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.enterprise import adbapi
from twisted.internet.interfaces import IReactorTime

from stomp_chat.app.routes import AppRouter
from stomp_chat.authz.chatgate import DEFAULT_MAX_WAITING, ChatGate
from stomp_chat.authz.interceptor import AuthorizationInterceptor
from stomp_chat.authz.policy import DestinationPolicy
from stomp_chat.authz.rest import PrincipalOf, RoomRestPolicy, no_principal
from stomp_chat.authz.revoke import SubscriptionRevoker
from stomp_chat.authz.rooms import DEFAULT_CACHE_SIZE, DEFAULT_CACHE_TTL, RoomAccess
from stomp_chat.authz.rules import RuleSet
from stomp_chat.authz.store import AdbapiRoomAccessStore
from stomp_chat.broker import Broker
from stomp_chat.identity import AUTH_NONE
from stomp_chat.persistence import ChatStore


@dataclass(frozen=True, slots=True)
class Authorization:
    """Everything that decides what principals may do, built once per server."""

    #: False with ``--auth none``: only application-owned destinations are guarded.
    enforce: bool
    rooms: RoomAccess
    policy: DestinationPolicy
    #: The inbound interceptor for the session pipeline.
    interceptor: AuthorizationInterceptor
    #: The chat's request gate; None with ``--auth none`` (the body's senderId is used).
    gate: ChatGate | None

    def rest_policy(self, principal_of: PrincipalOf = no_principal) -> RoomRestPolicy:
        """The REST API's room rules; ``principal_of`` says who made a request."""
        return RoomRestPolicy(self.rooms, enforce=self.enforce, principal_of=principal_of)


def build_authorization(
    *,
    auth_mode: str,
    chat_store: ChatStore,
    pool: adbapi.ConnectionPool,
    clock: IReactorTime,
    router: AppRouter,
    db_timeout: float | None = None,
    broker: Broker | None = None,
    rules: RuleSet | None = None,
    cache_size: int = DEFAULT_CACHE_SIZE,
    cache_ttl: float = DEFAULT_CACHE_TTL,
    max_waiting: int = DEFAULT_MAX_WAITING,
) -> Authorization:
    """`db_timeout` bounds every room privacy and membership look-up (``--db-timeout``)."""
    enforce = auth_mode != AUTH_NONE
    access_store = AdbapiRoomAccessStore(pool, timeout=db_timeout, clock=clock)
    rooms = RoomAccess(chat_store, access_store, clock, cache_size=cache_size, cache_ttl=cache_ttl)
    if broker is not None:
        rooms.left_private_room.append(SubscriptionRevoker(broker, chat_store).member_left)
    policy = DestinationPolicy(enforce=enforce, rules=rules, rooms=rooms, router=router)
    gate = ChatGate(rooms, max_waiting=max_waiting) if enforce else None
    return Authorization(enforce, rooms, policy, AuthorizationInterceptor(policy), gate)
