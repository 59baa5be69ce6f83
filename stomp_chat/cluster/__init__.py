"""Cluster mode: several stomp-chat processes sharing rooms through Redis."""

from stomp_chat.cluster.address import DEFAULT_NAMESPACE, RedisAddress, parse_redis_url
from stomp_chat.cluster.memory import MemoryHub, MemoryRelay
from stomp_chat.cluster.relay import RedisRelay, RedisUnavailable

__all__ = [
    "DEFAULT_NAMESPACE",
    "MemoryHub",
    "MemoryRelay",
    "RedisAddress",
    "RedisRelay",
    "RedisUnavailable",
    "parse_redis_url",
]
