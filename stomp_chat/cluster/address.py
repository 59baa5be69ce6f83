"""Where the cluster's Redis is, and under which namespace its channels and keys live."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

DEFAULT_NAMESPACE = "stomp-chat"


@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str
    port: int
    db: int | None
    password: str | None
    #: Prefix of every channel and key: one Redis can serve several clusters
    #: (pub/sub channels are shared by all Redis databases).
    namespace: str = DEFAULT_NAMESPACE

    def redacted(self) -> str:
        db = f"/{self.db}" if self.db is not None else ""
        return f"redis://{self.host}:{self.port}{db}?namespace={self.namespace}"


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[:password@]host[:port][/db][?namespace=name]``.

    Raises ValueError saying what is wrong.
    """
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(f"Redis URLs look like redis://host:port/db, not {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid port in Redis URL {url!r}") from None
    if port is None:
        port = 6379
    elif port == 0:
        raise ValueError(f"invalid port 0 in Redis URL {url!r}")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the database in a Redis URL is a number, not {path!r}")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"namespace"}
    if unknown:
        raise ValueError(f"unknown Redis URL option(s): {', '.join(sorted(unknown))}")
    namespace = query.get("namespace", [DEFAULT_NAMESPACE])[-1]
    if not namespace or not all(c.isalnum() or c in "-_." for c in namespace):
        raise ValueError("the Redis namespace is letters, digits, '-', '_' and '.'")
    return RedisAddress(parts.hostname or "127.0.0.1", port, int(path) if path else None,
                        parts.password, namespace)
