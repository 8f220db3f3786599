"""The network layer: Ethernet and ARP input, IPv4 input and output with
routing, and ICMP echo and errors.

The stack runs on one asyncio event loop. Everything here is synchronous:
input functions are called per frame from the link stream, and output
queues frames on an interface. Transport protocols register a handler per
IP protocol number and call ``output`` to send.
"""

import errno
import logging
import time
from collections.abc import Callable

from sandnet_stackd.arp import NeighborCache
from sandnet_stackd.counters import Counters
from sandnet_stackd.header import arp as arp_header
from sandnet_stackd.header import ethernet, icmp, ipv4
from sandnet_stackd.header.errors import MalformedError, Reason
from sandnet_stackd.interface import Address, Interface
from sandnet_stackd.route import Route, RouteTable

log = logging.getLogger("sandnet.stackd.network")

LOOPBACK_NAME = "lo"
LOOPBACK_MTU = 65536
LIMITED_BROADCAST = b"\xff\xff\xff\xff"
DEFAULT_TTL = 64

# ICMP errors are limited like Linux's icmp_ratelimit: one per this many
# seconds on average, with a small burst.
ICMP_ERROR_INTERVAL = 0.001
ICMP_ERROR_BURST = 50

# A transport handler: (interface, IP header, payload, checksum already verified).
TransportHandler = Callable[[Interface, ipv4.Ipv4Repr, memoryview, bool], None]


class NetworkError(Exception):
    """A send that cannot proceed; ``errno`` is what the socket call returns."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.errno = code


class _TokenBucket:
    """Rate limiter for ICMP errors."""

    def __init__(self, clock: Callable[[], float], interval: float, burst: int):
        self._clock = clock
        self._interval = interval
        self._burst = burst
        self._tokens = float(burst)
        self._last = clock()

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) / self._interval)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class Network:
    """Interfaces, routes, ARP and IPv4 of one stack."""

    def __init__(self, clock: Callable[[], float], counters: Counters, schedule: Callable[[Callable[[], None]], None]):
        """``schedule(fn)`` runs ``fn`` soon on the event loop; loopback
        delivery uses it so that a send never re-enters the receive path."""
        self.clock = clock
        self.counters = counters
        self.routes = RouteTable()
        self.interfaces: dict[str, Interface] = {}
        self._schedule = schedule
        self._neighbors: dict[str, NeighborCache] = {}
        self._handlers: dict[int, TransportHandler] = {}
        self._icmp_errors = _TokenBucket(clock, ICMP_ERROR_INTERVAL, ICMP_ERROR_BURST)
        self._ident = int(time.monotonic_ns()) & 0xFFFF
        self.echo_reply_handler: Callable[[Interface, ipv4.Ipv4Repr, icmp.IcmpRepr], None] | None = None
        self.icmp_error_handler: Callable[[ipv4.Ipv4Repr, icmp.IcmpRepr], None] | None = None
        self._add_loopback()

    # Configuration.

    def _add_loopback(self) -> None:
        lo = Interface(index=1, name=LOOPBACK_NAME, mtu=LOOPBACK_MTU, loopback=True,
                       addresses=[Address(bytes([127, 0, 0, 1]), 8, scope="host"),
                                  Address(b"\x00" * 15 + b"\x01", 128, scope="host")])
        lo.transmit = lambda packet: self._schedule(lambda: self.receive_ip(lo, packet, True))
        self.interfaces[lo.name] = lo
        self.routes.add(Route(family=4, dst=bytes([127, 0, 0, 0]), dst_len=8, device=lo.name,
                              prefsrc=bytes([127, 0, 0, 1]), scope="host", protocol="kernel"))

    def add_interface(self, iface: Interface, routes: list[Route]) -> None:
        """Attach an Ethernet interface with its addresses and routes.

        Each address also gets its connected-subnet route, as the kernel adds
        one, unless the routes handed over already contain it.
        """
        self.interfaces[iface.name] = iface
        self._neighbors[iface.name] = NeighborCache(
            self.clock, lambda ip, iface=iface: self._send_arp_request(iface, ip), self.counters.arp)
        for route in routes:
            self.routes.add(route)
        for address in iface.ipv4_addresses():
            shift = 32 - address.prefix_len
            network = ((int.from_bytes(address.ip, "big") >> shift) << shift if shift < 32 else 0).to_bytes(4, "big")
            if not any(r.dst == network and r.dst_len == address.prefix_len and not r.gateway for r in routes):
                self.routes.add(Route(family=4, dst=network, dst_len=address.prefix_len, device=iface.name,
                                      prefsrc=address.ip, scope="link", protocol="kernel"))

    def remove_interface(self, name: str) -> None:
        """Detach an Ethernet interface and its routes."""
        self.interfaces.pop(name, None)
        self._neighbors.pop(name, None)
        self.routes.remove_device(name)

    def announce(self, iface: Interface) -> None:
        """Send a gratuitous ARP for each IPv4 address (RFC 5227 section 3)."""
        for address in iface.ipv4_addresses():
            packet = arp_header.build(arp_header.ArpRepr(
                op=arp_header.OP_REQUEST, sender_mac=iface.mac, sender_ip=address.ip,
                target_mac=b"\x00" * 6, target_ip=address.ip))
            self._transmit_frame(iface, ethernet.BROADCAST, ethernet.ETHERTYPE_ARP, packet)
            self.counters.arp.OutRequests += 1
            log.info("announced %s on %s", _fmt(address.ip), iface.name)

    def register(self, protocol: int, handler: TransportHandler) -> None:
        """Deliver IPv4 packets of ``protocol`` to ``handler``."""
        self._handlers[protocol] = handler

    # Addresses and routing.

    def is_local(self, ip: bytes) -> bool:
        """Check whether ``ip`` is assigned to any interface (127/8 counts as local)."""
        if len(ip) == 4 and ip[0] == 127:
            return True
        return any(iface.owns(ip) for iface in self.interfaces.values())

    def route(self, dst: bytes) -> tuple[Route, Interface]:
        """Return the route and interface for ``dst``; a local address routes to loopback.

        Raises NetworkError(ENETUNREACH) when no route matches.
        """
        if self.is_local(dst):
            return self.routes.lookup(bytes([127, 0, 0, 1])), self.interfaces[LOOPBACK_NAME]
        route = self.routes.lookup(dst)
        if route is None or route.device not in self.interfaces:
            self.counters.ip.OutNoRoutes += 1
            raise NetworkError(errno.ENETUNREACH, f"no route to {_fmt(dst)}")
        return route, self.interfaces[route.device]

    def source_for(self, dst: bytes) -> bytes:
        """Pick the source address for traffic to ``dst`` (RFC 1122 section 3.3.4.3)."""
        route, iface = self.route(dst)
        if iface.loopback:
            return dst if self.is_local(dst) and dst[0] != 127 else bytes([127, 0, 0, 1])
        if route.prefsrc:
            return route.prefsrc
        for address in iface.ipv4_addresses():
            if address.contains(dst) or not route.gateway or address.contains(route.gateway):
                return address.ip
        addresses = iface.ipv4_addresses()
        if not addresses:
            raise NetworkError(errno.EADDRNOTAVAIL, f"no IPv4 address on {iface.name}")
        return addresses[0].ip

    def path_mtu(self, dst: bytes) -> int:
        """Return the MTU of the interface that reaches ``dst``, capped at the
        largest IPv4 datagram (loopback's 65536 would not fit the length field)."""
        return min(self.route(dst)[1].mtu, ipv4.MAX_TOTAL_LENGTH)

    # Input.

    def receive_frame(self, iface: Interface, frame: bytes | memoryview, checksum_valid: bool) -> None:
        """Handle one Ethernet frame from ``iface``; malformed frames are counted and dropped.

        ``checksum_valid`` is true when the device vouched for the transport
        checksum (virtio-net DATA_VALID or NEEDS_CSUM).
        """
        link = self.counters.link
        link.InFrames += 1
        link.InBytes += len(frame)
        try:
            eth, payload = ethernet.parse(frame)
        except MalformedError:
            link.InTruncated += 1
            return

        if eth.dst != iface.mac and eth.dst != ethernet.BROADCAST and not eth.dst[0] & 1:
            link.InOtherHost += 1
            return
        if eth.ethertype == ethernet.ETHERTYPE_IPV4:
            self.receive_ip(iface, payload, checksum_valid)
        elif eth.ethertype == ethernet.ETHERTYPE_ARP:
            self._receive_arp(iface, payload)
        else:
            link.InUnknownEtherType += 1

    def _receive_arp(self, iface: Interface, payload: memoryview) -> None:
        counters = self.counters.arp
        try:
            packet = arp_header.parse(payload)
        except MalformedError:
            counters.InErrors += 1
            return
        if packet.sender_mac[0] & 1 or packet.sender_ip == b"\x00\x00\x00\x00" and packet.op == arp_header.OP_REPLY:
            counters.InErrors += 1
            return

        neighbors = self._neighbors.get(iface.name)
        for_us = iface.owns(packet.target_ip)
        if neighbors is not None and packet.sender_ip != b"\x00\x00\x00\x00":
            neighbors.update(packet.sender_ip, packet.sender_mac, create=for_us)

        if packet.op == arp_header.OP_REQUEST:
            counters.InRequests += 1
            if for_us and packet.sender_ip != packet.target_ip:
                reply = arp_header.build(arp_header.ArpRepr(
                    op=arp_header.OP_REPLY, sender_mac=iface.mac, sender_ip=packet.target_ip,
                    target_mac=packet.sender_mac, target_ip=packet.sender_ip))
                self._transmit_frame(iface, packet.sender_mac, ethernet.ETHERTYPE_ARP, reply)
                counters.OutReplies += 1
        elif packet.op == arp_header.OP_REPLY:
            counters.InReplies += 1
        else:
            counters.InErrors += 1

    def receive_ip(self, iface: Interface, packet: bytes | memoryview, checksum_valid: bool) -> None:
        """Handle one IPv4 packet: check it, then deliver it to its protocol."""
        counters = self.counters.ip
        counters.InReceives += 1
        try:
            header, payload = ipv4.parse(packet, verify_checksum=not iface.loopback)
        except MalformedError as error:
            if error.reason is Reason.BAD_CHECKSUM:
                counters.InCsumErrors += 1
            counters.InHdrErrors += 1
            return

        if not self._accepts(iface, header.dst):
            counters.InAddrErrors += 1
            return
        if ipv4.is_fragment(header):
            # NOTE: reassembly is not implemented yet; fragments are counted and dropped.
            counters.ReasmFails += 1
            return

        if header.protocol == ipv4.PROTO_ICMP:
            counters.InDelivers += 1
            self._receive_icmp(iface, header, payload, packet)
            return
        handler = self._handlers.get(header.protocol)
        if handler is None:
            counters.InUnknownProtos += 1
            self.send_icmp_error(header, packet, icmp.TYPE_DEST_UNREACHABLE, icmp.CODE_PROTOCOL_UNREACHABLE)
            return
        counters.InDelivers += 1
        handler(iface, header, payload, checksum_valid or iface.loopback)

    def _accepts(self, iface: Interface, dst: bytes) -> bool:
        if iface.loopback:
            return self.is_local(dst)
        if dst == LIMITED_BROADCAST or iface.is_broadcast(dst) or 224 <= dst[0] <= 239:
            return True
        return iface.owns(dst)

    def _receive_icmp(self, iface: Interface, header: ipv4.Ipv4Repr, payload: memoryview, packet) -> None:
        counters = self.counters.icmp
        counters.InMsgs += 1
        try:
            message = icmp.parse(payload, verify_checksum=not iface.loopback)
        except MalformedError as error:
            counters.InErrors += 1
            if error.reason is Reason.BAD_CHECKSUM:
                counters.InCsumErrors += 1
            return

        if message.type == icmp.TYPE_ECHO_REQUEST:
            counters.InEchos += 1
            if header.dst == LIMITED_BROADCAST or iface.is_broadcast(header.dst) or 224 <= header.dst[0] <= 239:
                return  # icmp_echo_ignore_broadcasts, Linux's default
            reply = icmp.build(icmp.TYPE_ECHO_REPLY, 0, message.rest, message.payload)
            try:
                self.output(header.dst, header.src, ipv4.PROTO_ICMP, reply, tos=header.tos)
                counters.OutMsgs += 1
                counters.OutEchoReps += 1
            except NetworkError:
                counters.OutErrors += 1
        elif message.type == icmp.TYPE_ECHO_REPLY:
            counters.InEchoReps += 1
            if self.echo_reply_handler:
                self.echo_reply_handler(iface, header, message)
        elif message.type in (icmp.TYPE_DEST_UNREACHABLE, icmp.TYPE_TIME_EXCEEDED, icmp.TYPE_PARAMETER_PROBLEM):
            if message.type == icmp.TYPE_DEST_UNREACHABLE:
                counters.InDestUnreachs += 1
            elif message.type == icmp.TYPE_TIME_EXCEEDED:
                counters.InTimeExcds += 1
            if self.icmp_error_handler:
                self.icmp_error_handler(header, message)

    # Output.

    def output(self, src: bytes, dst: bytes, protocol: int, payload: bytes | memoryview, *,
               ttl: int = DEFAULT_TTL, tos: int = 0, dont_fragment: bool = True) -> None:
        """Send one IPv4 datagram, fragmenting it when it exceeds the MTU and DF is clear.

        Raises NetworkError(ENETUNREACH) without a route and
        NetworkError(EMSGSIZE) for an oversized datagram with DF set.
        """
        counters = self.counters.ip
        counters.OutRequests += 1
        route, iface = self.route(dst)
        total = ipv4.HEADER_LEN + len(payload)
        mtu = min(iface.mtu, ipv4.MAX_TOTAL_LENGTH)

        if total <= mtu:
            self._ident = (self._ident + 1) & 0xFFFF
            packet = ipv4.build(src, dst, protocol, payload, ttl=ttl, ident=self._ident, tos=tos,
                                dont_fragment=dont_fragment and total > 68)
            self._send_packet(route, iface, dst, packet)
            return

        if dont_fragment:
            counters.FragFails += 1
            raise NetworkError(errno.EMSGSIZE, f"datagram of {total} bytes exceeds MTU {mtu} of {iface.name}")
        self._send_fragments(route, iface, mtu, src, dst, protocol, payload, ttl, tos)

    def _send_fragments(self, route, iface, mtu, src, dst, protocol, payload, ttl, tos) -> None:
        """Split a datagram into fragments of at most ``mtu`` bytes (RFC 791 section 3.2)."""
        counters = self.counters.ip
        chunk = (mtu - ipv4.HEADER_LEN) // 8 * 8
        self._ident = (self._ident + 1) & 0xFFFF
        view = memoryview(payload)
        for offset in range(0, len(view), chunk):
            piece = view[offset:offset + chunk]
            more = offset + chunk < len(view)
            packet = ipv4.build(src, dst, protocol, piece, ttl=ttl, ident=self._ident, tos=tos,
                                dont_fragment=False, more_fragments=more, fragment_offset=offset)
            self._send_packet(route, iface, dst, packet)
            counters.FragCreates += 1
        counters.FragOKs += 1

    def _send_packet(self, route: Route, iface: Interface, dst: bytes, packet: bytes) -> None:
        if iface.loopback:
            iface.transmit(packet)
            return
        if dst == LIMITED_BROADCAST or iface.is_broadcast(dst):
            self._transmit_frame(iface, ethernet.BROADCAST, ethernet.ETHERTYPE_IPV4, packet)
            return
        if 224 <= dst[0] <= 239:
            self._transmit_frame(iface, ethernet.ipv4_multicast_mac(dst), ethernet.ETHERTYPE_IPV4, packet)
            return
        next_hop = route.gateway or dst
        neighbors = self._neighbors[iface.name]
        mac = neighbors.lookup(next_hop)
        if mac is not None:
            self._transmit_frame(iface, mac, ethernet.ETHERTYPE_IPV4, packet)
            return
        neighbors.resolve(next_hop, lambda mac: self._transmit_frame(iface, mac, ethernet.ETHERTYPE_IPV4, packet))

    def _transmit_frame(self, iface: Interface, dst_mac: bytes, ethertype: int, payload: bytes) -> None:
        frame = ethernet.build(dst_mac, iface.mac, ethertype, payload)
        self.counters.link.OutFrames += 1
        self.counters.link.OutBytes += len(frame)
        iface.transmit(frame)

    def _send_arp_request(self, iface: Interface, ip: bytes) -> None:
        addresses = iface.ipv4_addresses()
        sender = next((a.ip for a in addresses if a.contains(ip)), addresses[0].ip if addresses else b"\x00" * 4)
        request = arp_header.build(arp_header.ArpRepr(
            op=arp_header.OP_REQUEST, sender_mac=iface.mac, sender_ip=sender,
            target_mac=b"\x00" * 6, target_ip=ip))
        self._transmit_frame(iface, ethernet.BROADCAST, ethernet.ETHERTYPE_ARP, request)

    def send_icmp_error(self, header: ipv4.Ipv4Repr, packet: bytes | memoryview, type_: int, code: int) -> None:
        """Answer a received datagram with an ICMP error, within the rate limit.

        RFC 1122 section 3.2.2: never about an ICMP error, a broadcast or
        multicast datagram, or a non-initial fragment.
        """
        if header.dst == LIMITED_BROADCAST or 224 <= header.dst[0] <= 239 or header.fragment_offset:
            return
        if header.protocol == ipv4.PROTO_ICMP:
            return
        if any(iface.is_broadcast(header.dst) for iface in self.interfaces.values()):
            return
        counters = self.counters.icmp
        if not self._icmp_errors.allow():
            counters.OutRateLimited += 1
            return
        message = icmp.build_error(type_, code, bytes(packet[:header.total_length]))
        try:
            self.output(header.dst, header.src, ipv4.PROTO_ICMP, message)
        except NetworkError:
            counters.OutErrors += 1
            return
        counters.OutMsgs += 1
        if type_ == icmp.TYPE_DEST_UNREACHABLE:
            counters.OutDestUnreachs += 1

    def on_timer(self) -> None:
        """Run neighbor retries; the stack calls this about every 100 ms."""
        for neighbors in self._neighbors.values():
            neighbors.on_timer()

    def neighbors(self, name: str) -> NeighborCache | None:
        return self._neighbors.get(name)


def _fmt(ip: bytes) -> str:
    if len(ip) == 4:
        return ".".join(str(b) for b in ip)
    return ip.hex()
