"""The life of one connection to Redis, as an explicit state machine.

A link is *connecting* until its first connection is ready, *up* while a
connection is ready, *down* between a lost connection and the next ready
one (the connection library reconnects with back-off), and *stopped* for
good once the relay stops. Entering *up* and *down* is announced once per
change, so a connection that opens and closes at once (a proxy in front of
a dead Redis) flips the link down instead of leaving it silently dead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from automat import MethodicalMachine


class Link:
    """One of the relay's two Redis connections: commands or subscriber."""

    _machine = MethodicalMachine()

    def __init__(
        self,
        name: str,
        on_up: Callable[[Any], object],
        on_down: Callable[[], object],
    ) -> None:
        self.name = name
        self._on_up = on_up
        self._on_down = on_down
        #: The ready connection while the link is up, else None.
        self.protocol: Any = None
        #: How many times the link came up (a reconnection is a second time).
        self.ups = 0

    @property
    def is_up(self) -> bool:
        return self.protocol is not None

    # -- states --------------------------------------------------------

    @_machine.state(initial=True)
    def connecting(self) -> None:
        """No connection has been ready yet."""

    @_machine.state()
    def up(self) -> None:
        """A connection is ready."""

    @_machine.state()
    def down(self) -> None:
        """The connection was lost; the library is reconnecting."""

    @_machine.state()
    def stopped(self) -> None:
        """The relay stopped: nothing is announced any more."""

    # -- inputs --------------------------------------------------------

    @_machine.input()
    def connected(self, protocol: Any) -> None:
        """A connection became ready for commands."""

    @_machine.input()
    def lost(self) -> None:
        """A connection closed (it may never have been ready)."""

    @_machine.input()
    def stop(self) -> None:
        """The relay is stopping."""

    # -- outputs -------------------------------------------------------

    @_machine.output()
    def _keep(self, protocol: Any) -> None:
        self.protocol = protocol
        self.ups += 1

    @_machine.output()
    def _announce_up(self, protocol: Any) -> None:
        self._on_up(protocol)

    @_machine.output()
    def _forget(self) -> None:
        self.protocol = None

    @_machine.output()
    def _announce_down(self) -> None:
        self._on_down()

    connecting.upon(connected, enter=up, outputs=[_keep, _announce_up])
    connecting.upon(lost, enter=down, outputs=[_announce_down])
    connecting.upon(stop, enter=stopped, outputs=[])
    up.upon(connected, enter=up, outputs=[_keep])  # a second ready connection: the newest serves
    up.upon(lost, enter=down, outputs=[_forget, _announce_down])
    up.upon(stop, enter=stopped, outputs=[_forget])
    down.upon(connected, enter=up, outputs=[_keep, _announce_up])
    down.upon(lost, enter=down, outputs=[])
    down.upon(stop, enter=stopped, outputs=[])
    stopped.upon(connected, enter=stopped, outputs=[])
    stopped.upon(lost, enter=stopped, outputs=[])
    stopped.upon(stop, enter=stopped, outputs=[])
