"""Authorization: who may subscribe, send, speak in a room and manage it.

Authentication (``stomp_chat.auth``) says who a client is, as a
``Principal``; this package decides what that principal may do, once per
SUBSCRIBE or SEND and never per delivery, from the rooms' membership (cached
in memory), the ``/app`` routes' declared requirements and the rules of the
config file.
"""

from stomp_chat.authz.chatgate import ChatGate
from stomp_chat.authz.interceptor import AuthorizationInterceptor
from stomp_chat.authz.patterns import DestinationPattern
from stomp_chat.authz.policy import APPLICATION_OWNED, DestinationPolicy
from stomp_chat.authz.rest import RoomRestPolicy
from stomp_chat.authz.revoke import SubscriptionRevoker
from stomp_chat.authz.rooms import AccessDenied, NotAuthenticated, RoomAccess
from stomp_chat.authz.rules import Grant, Rule, RuleError, RuleSet, load_rules
from stomp_chat.authz.setup import Authorization, build_authorization
from stomp_chat.authz.store import (
    AdbapiRoomAccessStore,
    MemoryRoomAccessStore,
    RoomAccessStore,
)

__all__ = [
    "APPLICATION_OWNED",
    "AccessDenied",
    "AdbapiRoomAccessStore",
    "Authorization",
    "AuthorizationInterceptor",
    "ChatGate",
    "DestinationPattern",
    "DestinationPolicy",
    "Grant",
    "MemoryRoomAccessStore",
    "NotAuthenticated",
    "RoomAccess",
    "RoomAccessStore",
    "RoomRestPolicy",
    "Rule",
    "RuleError",
    "RuleSet",
    "SubscriptionRevoker",
    "build_authorization",
    "load_rules",
]
