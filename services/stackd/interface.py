"""Network interfaces of the stack: the loopback device and the Ethernet NIC."""

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(slots=True)
class Address:
    """An address assigned to an interface."""

    ip: bytes
    prefix_len: int
    broadcast: bytes = b""
    scope: str = "global"
    # An IPv6 address under duplicate address detection (RFC 4862 section 5.4):
    # it takes no traffic and is no source address until DAD succeeds.
    tentative: bool = False

    def contains(self, ip: bytes) -> bool:
        """Check whether ``ip`` is on this address's subnet."""
        if len(ip) != len(self.ip):
            return False
        shift = len(ip) * 8 - self.prefix_len
        return int.from_bytes(ip, "big") >> shift == int.from_bytes(self.ip, "big") >> shift


@dataclasses.dataclass
class Interface:
    """A device of the stack.

    ``transmit`` takes one Ethernet frame (or, for loopback, one IP packet)
    and queues it on the device; it never blocks.
    """

    index: int
    name: str
    mtu: int
    mac: bytes = b""
    loopback: bool = False
    up: bool = True
    addresses: list[Address] = dataclasses.field(default_factory=list)
    transmit: Callable[[bytes], None] | None = None
    # The IPv6 MTU a router advertisement set (RFC 4861 section 6.3.4); 0 means ``mtu``.
    ipv6_mtu: int = 0

    def ipv4_addresses(self) -> list[Address]:
        return [a for a in self.addresses if len(a.ip) == 4]

    def ipv6_addresses(self) -> list[Address]:
        """Return the usable IPv6 addresses, without tentative ones."""
        return [a for a in self.addresses if len(a.ip) == 16 and not a.tentative]

    def owns(self, ip: bytes) -> bool:
        """Check whether ``ip`` is one of this interface's usable (not tentative) addresses."""
        return any(a.ip == ip and not a.tentative for a in self.addresses)

    def tentative(self, ip: bytes) -> Address | None:
        """Return the tentative address ``ip``, if DAD is running for it."""
        return next((a for a in self.addresses if a.ip == ip and a.tentative), None)

    def is_broadcast(self, ip: bytes) -> bool:
        """Check whether ``ip`` is a broadcast address of one of this interface's IPv4 subnets."""
        return any(a.broadcast == ip for a in self.addresses if a.broadcast)
