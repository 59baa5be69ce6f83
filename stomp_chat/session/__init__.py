"""The STOMP session: protocol state, the inbound chain, receipts and authentication."""

from stomp_chat.errors import AuthError, ProtocolError
from stomp_chat.session.authentication import (
    AnonymousAuthenticator,
    AuthenticationInterceptor,
    Authenticator,
)
from stomp_chat.session.context import FrameTransport, ServerContext, SessionSettings
from stomp_chat.session.core import State, StompSession
from stomp_chat.session.ratelimit import SendRateInterceptor

__all__ = [
    "AnonymousAuthenticator",
    "AuthError",
    "AuthenticationInterceptor",
    "Authenticator",
    "FrameTransport",
    "ProtocolError",
    "SendRateInterceptor",
    "ServerContext",
    "SessionSettings",
    "State",
    "StompSession",
]
