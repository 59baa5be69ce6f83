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
from stomp_chat.broker.message import (
    DELIVERY_COUNT_HEADER,
    ORIGINAL_DESTINATION_HEADER,
    REDELIVERED_HEADER,
    Message,
)
from stomp_chat.broker.queues import (
    DEFAULT_DEAD_LETTER_QUEUE,
    DEFAULT_MAX_QUEUE_MESSAGES,
    DEFAULT_MAX_QUEUED_BYTES,
    DEFAULT_MAX_QUEUES,
    DEFAULT_MAX_REDELIVERIES,
    QueueLimits,
)

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
    "DEFAULT_DEAD_LETTER_QUEUE",
    "DEFAULT_MAX_QUEUED_BYTES",
    "DEFAULT_MAX_QUEUES",
    "DEFAULT_MAX_QUEUE_MESSAGES",
    "DEFAULT_MAX_REDELIVERIES",
    "DELIVERY_COUNT_HEADER",
    "Message",
    "ORIGINAL_DESTINATION_HEADER",
    "QueueLimits",
    "REDELIVERED_HEADER",
    "Subscriber",
    "Subscription",
    "user_destination_key",
]
