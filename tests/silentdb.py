"""A database that stops answering (a host dropping packets): a pool that never answers, for
unit tests of the deadlines on database calls, and helpers for the real thing, PostgreSQL
behind the blackholing proxy of ``tests.conftest_db``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest
from twisted.internet.defer import Deferred

from stomp_chat.persistence import ChatConnectionPool, DatabaseTimeout, migrate

if TYPE_CHECKING:
    from tests.conftest_db import CuttableProxy, TestDatabase


class SilentPool:
    """Stands in for an adbapi pool whose every call is stuck on a database that dropped
    its packets: `runInteraction` returns a Deferred that never fires and, as adbapi's,
    has no canceller (cancelling it only fails it with CancelledError)."""

    def __init__(self, dialect: str = "sqlite") -> None:
        self.dialect = dialect
        #: The interactions asked for, in order.
        self.calls: list[Any] = []

    def runInteraction(self, interaction: Any, *args: Any, **kw: Any) -> Deferred[Any]:
        self.calls.append(interaction)
        return Deferred()


async def routed_and_migrated(database: TestDatabase, proxy: CuttableProxy) -> ChatConnectionPool:
    """A migrated pool of one connection to `database` through `proxy`: blackholing the proxy
    then leaves that connection stuck, as a database host that drops packets would."""
    pool = database.open_pool(replace(proxy.route(database.config), pool_max=1))
    await migrate(pool)
    return pool


async def assert_times_out(call: Callable[[], Deferred[Any]], timeout: float) -> None:
    """`call()` fails with DatabaseTimeout about `timeout` seconds later: not at once, and not
    after the driver's own TCP timeouts (10 s)."""
    from twisted.internet import reactor

    started = reactor.seconds()
    with pytest.raises(DatabaseTimeout):
        await call()
    elapsed = reactor.seconds() - started
    assert 0.8 * timeout < elapsed < timeout + 1.5, f"failed after {elapsed:.2f}s"
