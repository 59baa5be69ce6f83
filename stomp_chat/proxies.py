"""Who the client is behind a reverse proxy: ``--trusted-proxies`` and ``X-Forwarded-For``.

Behind nginx every HTTP request and WebSocket handshake comes from the
proxy's address, so per-address limits (failed logins, connections) and logs
would lump every user together. When, and only when, the TCP peer is a
trusted proxy, the client is read from ``X-Forwarded-For``: walking from the
right (the hop nearest this server), trusted proxies are skipped, and the
first address that is not one is the client. Anything else in the header
than IP addresses means it cannot be read, and the peer is kept: a client
cannot pick its own address by sending the header, because only what a
trusted proxy appended is believed, and a broken header never fails a
request.

Raw STOMP over TCP carries no headers: its peer is always the TCP peer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The header a proxy appends the address it was reached from to.
FORWARDED_FOR = "x-forwarded-for"


def _address(text: str) -> IPAddress | None:
    """An IP address written alone, or ``None``; IPv4-mapped IPv6 becomes IPv4."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """The networks whose connections may say, in ``X-Forwarded-For``, who the client is."""

    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, value: str | Iterable[str]) -> TrustedProxies:
        """``10.0.0.1, 192.168.0.0/16, ::1`` (or a list of such); ``ValueError`` names the
        first entry that is neither an address nor a network."""
        entries = value.split(",") if isinstance(value, str) else list(value)
        networks = []
        for entry in entries:
            entry = entry.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                raise ValueError(
                    f"--trusted-proxies: {entry[:60]!r} is not an IP address or network "
                    "(e.g. 127.0.0.1, 10.0.0.0/8, ::1)"
                ) from None
        return cls(tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, host: str) -> bool:
        """Whether ``host`` (an address as a socket reports it) is a trusted proxy."""
        if not self.networks:
            return False
        address = _address(host)
        return address is not None and self._trusts(address)

    def _trusts(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    def client(self, peer_host: str, forwarded_for: Iterable[str]) -> str:
        """The client's address: ``peer_host`` unless it is a trusted proxy whose
        ``X-Forwarded-For`` values (every header line, in order) name someone else."""
        if not self.trusts(peer_host):
            return peer_host
        hops = [hop for value in forwarded_for for hop in value.split(",")]
        if not hops:
            return peer_host
        addresses = [_address(hop) for hop in hops]
        if any(address is None for address in addresses):
            return peer_host
        for address in reversed(addresses):
            assert address is not None
            if not self._trusts(address):
                return str(address)
        # Every hop is a proxy we trust: the first of them is where the request began.
        return str(addresses[0])


#: No proxy is trusted: every client is its TCP peer (the default).
NO_PROXIES = TrustedProxies()


def parse_trusted_proxies(value: str) -> TrustedProxies:
    """The ``--trusted-proxies`` option's coercion."""
    return TrustedProxies.parse(value)


parse_trusted_proxies.coerceDoc = (  # type: ignore[attr-defined]
    "Comma-separated IP addresses or networks (CIDR), IPv4 or IPv6."
)
