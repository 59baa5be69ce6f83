"""The broker: destinations, subscriptions, acknowledgements and fan-out."""

from stomp_chat.broker.broker import (
    ACK_AUTO,
    ACK_CLIENT,
    ACK_CLIENT_INDIVIDUAL,
    ACK_MODES,
    APP_PREFIX,
    QUEUE_PREFIX,
    RESERVED_HEADERS,
    TOPIC_PREFIX,
    USER_PREFIX,
    Broker,
    BrokerError,
    Subscriber,
    Subscription,
    user_destination_key,
)
from stomp_chat.broker.message import Message

__all__ = [
    "ACK_AUTO",
    "ACK_CLIENT",
    "ACK_CLIENT_INDIVIDUAL",
    "ACK_MODES",
    "APP_PREFIX",
    "QUEUE_PREFIX",
    "RESERVED_HEADERS",
    "TOPIC_PREFIX",
    "USER_PREFIX",
    "Broker",
    "BrokerError",
    "Message",
    "Subscriber",
    "Subscription",
    "user_destination_key",
]
