"""Cluster mode: several stomp-chat processes sharing rooms through Redis."""

from stomp_chat.cluster.relay import RedisAddress, RedisRelay, parse_redis_url

__all__ = ["RedisAddress", "RedisRelay", "parse_redis_url"]
