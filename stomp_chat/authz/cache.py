"""A small LRU cache whose entries expire, on an injected clock."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

from twisted.internet.interfaces import IReactorTime

V = TypeVar("V")

_MISSING: Any = object()


class ExpiringCache(Generic[V]):
    """At most ``max_entries`` values, each forgotten ``ttl`` seconds after it was put.

    The expiry bounds how long a change made elsewhere (another server of a
    cluster) goes unseen; the size bounds memory whatever the clients do.
    """

    def __init__(self, clock: IReactorTime, max_entries: int, ttl: float) -> None:
        if max_entries <= 0 or ttl <= 0:
            raise ValueError("a cache needs a positive size and lifetime")
        self.clock = clock
        self.max_entries = max_entries
        self.ttl = ttl
        self._entries: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, default: Any = None) -> Any:
        entry = self._entries.get(key, _MISSING)
        if entry is _MISSING:
            return default
        expires, value = entry
        if expires <= self.clock.seconds():
            del self._entries[key]
            return default
        self._entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: V) -> None:
        entries = self._entries
        entries[key] = (self.clock.seconds() + self.ttl, value)
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    def discard(self, key: Hashable) -> None:
        self._entries.pop(key, None)
