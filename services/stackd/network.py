"""The network layer: Ethernet and ARP input, IPv4 and IPv6 input and output
with routing, ICMP echo and errors, fragmentation and reassembly, and the
path MTU cache.

The stack runs on one asyncio event loop. Everything here is synchronous:
input functions are called per frame from the link stream, and output
queues frames on an interface. Transport protocols register a handler per
IP protocol number and call ``output`` to send; the family follows from the
4- or 16-byte destination. IPv6 specifics live in ``ipv6.Ipv6Layer``.
"""

import dataclasses
import errno
import ipaddress
import logging
import time
from collections.abc import Callable

from sandnet_stackd.arp import NeighborCache
from sandnet_stackd.counters import Counters
from sandnet_stackd.header import arp as arp_header
from sandnet_stackd.header import ethernet, icmp, icmpv6, ipv4, ipv6
from sandnet_stackd.header.errors import MalformedError, Reason
from sandnet_stackd.icmp_limit import IcmpRateLimiter
from sandnet_stackd.interface import Address, Interface
from sandnet_stackd.ipv6 import Ipv6Layer, Ipv6Packet, quoted_transport
from sandnet_stackd.ndp import NeighborCache6
from sandnet_stackd.network_error import NetworkError
from sandnet_stackd.offload import (
    GSO_NONE, GSO_TCPV4, NO_OFFLOADS, DeviceOffloads, FrameOffload, TransportOffload, frame_offload)
from sandnet_stackd.reassembly import IPV4_TIMEOUT_SECONDS, Reassembler, Verdict
from sandnet_stackd.route import Route, RouteTable

log = logging.getLogger("sandnet.stackd.network")

LOOPBACK_NAME = "lo"
LOOPBACK_MTU = 65536
LIMITED_BROADCAST = b"\xff\xff\xff\xff"
DEFAULT_TTL = 64
IPV6_LOOPBACK = bytes(15) + b"\x01"

# Path MTU entries learned from ICMP expire after Linux's ip_rt_mtu_expires
# (10 minutes). An IPv4 path MTU never goes below ip_rt_min_pmtu (552 bytes),
# an IPv6 one never below the minimum link MTU of 1280 (RFC 8200 section 5).
PMTU_EXPIRES_SECONDS = 600.0
MIN_PMTU_IPV4 = 552
MIN_PMTU_IPV6 = 1280
# RFC 1191 section 7: plateaus to guess from when a router sends no next-hop MTU.
_MTU_PLATEAUS = (32000, 17914, 8166, 4352, 2002, 1492, 1006, 508, 296, 68)

# A transport handler: (interface, IP header, payload, checksum already verified).
# The header is an ipv4.Ipv4Repr or an ipv6.Ipv6Packet; both have src, dst and protocol.
TransportHandler = Callable[[Interface, "ipv4.Ipv4Repr | Ipv6Packet", memoryview, bool], None]


@dataclasses.dataclass(slots=True)
class IcmpError:
    """An ICMP or ICMPv6 error about a datagram this stack sent.

    ``errno`` is what Linux reports to the socket. ``hard`` is true for the
    errors that Linux treats as fatal for a connection: port or protocol
    unreachable, and administratively prohibited. ``mtu`` is the new path
    MTU after a fragmentation-needed or Packet Too Big message, else 0.
    """

    protocol: int
    local: bytes
    local_port: int
    remote: bytes
    remote_port: int
    errno: int
    hard: bool
    mtu: int = 0


# ICMP destination-unreachable codes and the errno Linux reports for each
# (icmp_err_convert in net/ipv4/icmp.c).
_UNREACH_ERRNO = {
    icmp.CODE_NET_UNREACHABLE: errno.ENETUNREACH,
    icmp.CODE_HOST_UNREACHABLE: errno.EHOSTUNREACH,
    icmp.CODE_PROTOCOL_UNREACHABLE: errno.ENOPROTOOPT,
    icmp.CODE_PORT_UNREACHABLE: errno.ECONNREFUSED,
    icmp.CODE_FRAGMENTATION_NEEDED: errno.EMSGSIZE,
}


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
        self._offloads: dict[str, DeviceOffloads] = {}
        self._neighbors6: dict[str, NeighborCache6] = {}
        self._icmp_limiter = IcmpRateLimiter(clock)
        self._reassembler = Reassembler(clock, IPV4_TIMEOUT_SECONDS)
        # Path MTU learned from ICMP: destination -> (MTU, expiry time).
        self._pmtu: dict[bytes, tuple[int, float]] = {}
        self._ident = int(time.monotonic_ns()) & 0xFFFF
        self.echo_reply_handler: Callable[[Interface, ipv4.Ipv4Repr, icmp.IcmpRepr], None] | None = None
        self.icmp_error_handler: Callable[[IcmpError], None] | None = None
        self.ipv6 = Ipv6Layer(self)
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
        self.routes.add(Route(family=6, dst=IPV6_LOOPBACK, dst_len=128, device=lo.name, metric=256,
                              protocol="kernel"))

    def add_interface(self, iface: Interface, routes: list[Route]) -> None:
        """Attach an Ethernet interface with its addresses and routes.

        Each address also gets its connected-subnet route, as the kernel adds
        one, unless the routes handed over already contain it.
        """
        self.interfaces[iface.name] = iface
        self._neighbors[iface.name] = NeighborCache(
            self.clock, lambda ip, iface=iface: self._send_arp_request(iface, ip), self.counters.arp)
        self._neighbors6[iface.name] = NeighborCache6(
            self.clock, lambda ip, mac, iface=iface: self.ipv6.solicit(iface, ip, mac), self.counters.ndp6)
        for route in routes:
            self.routes.add(route)
        for address in iface.addresses:
            self.add_connected_route(iface, address)

    def add_connected_route(self, iface: Interface, address: Address) -> None:
        """Add the route to ``address``'s subnet, as the kernel does, unless one exists."""
        bits = len(address.ip) * 8
        if address.prefix_len >= bits:
            return
        shift = bits - address.prefix_len
        network = ((int.from_bytes(address.ip, "big") >> shift) << shift).to_bytes(len(address.ip), "big")
        if any(r.dst == network and r.dst_len == address.prefix_len and not r.gateway and r.device == iface.name
               for r in self.routes.routes()):
            return
        if len(address.ip) == 4:
            self.routes.add(Route(family=4, dst=network, dst_len=address.prefix_len, device=iface.name,
                                  prefsrc=address.ip, scope="link", protocol="kernel"))
        else:
            self.routes.add(Route(family=6, dst=network, dst_len=address.prefix_len, device=iface.name,
                                  metric=256, protocol="kernel"))

    def set_offloads(self, name: str, offloads: DeviceOffloads) -> None:
        """Record what the device path of interface ``name`` does for outgoing frames."""
        self._offloads[name] = offloads

    def offloads_for(self, dst: bytes) -> DeviceOffloads:
        """Return the offloads of the interface that reaches ``dst``; none for loopback or without a route."""
        try:
            _, iface = self.route(dst)
        except NetworkError:
            return NO_OFFLOADS
        return self.device_offloads(iface)

    def device_offloads(self, iface: Interface) -> DeviceOffloads:
        """Return the offloads of ``iface``'s device path; none for loopback."""
        return self._offloads.get(iface.name, NO_OFFLOADS)

    def remove_interface(self, name: str) -> None:
        """Detach an Ethernet interface and its routes."""
        self._offloads.pop(name, None)
        self.interfaces.pop(name, None)
        self._neighbors.pop(name, None)
        self._neighbors6.pop(name, None)
        self.routes.remove_device(name)

    def announce(self, iface: Interface) -> None:
        """Send a gratuitous ARP for each IPv4 address (RFC 5227 section 3), then
        join the IPv6 solicited-node groups and solicit routers."""
        for address in iface.ipv4_addresses():
            packet = arp_header.build(arp_header.ArpRepr(
                op=arp_header.OP_REQUEST, sender_mac=iface.mac, sender_ip=address.ip,
                target_mac=b"\x00" * 6, target_ip=address.ip))
            self._transmit_frame(iface, ethernet.BROADCAST, ethernet.ETHERTYPE_ARP, packet)
            self.counters.arp.OutRequests += 1
            log.info("announced %s on %s", _fmt(address.ip), iface.name)
        self.ipv6.announce(iface)

    def register(self, protocol: int, handler: TransportHandler) -> None:
        """Deliver IPv4 and IPv6 packets of ``protocol`` to ``handler``."""
        self._handlers[protocol] = handler

    def handler(self, protocol: int) -> TransportHandler | None:
        """Return the transport handler registered for ``protocol``, if any."""
        return self._handlers.get(protocol)

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
            loopback = bytes([127, 0, 0, 1]) if len(dst) == 4 else IPV6_LOOPBACK
            return self.routes.lookup(loopback), self.interfaces[LOOPBACK_NAME]
        route = self.routes.lookup(dst)
        if route is None or route.device not in self.interfaces:
            self.counters.ip.OutNoRoutes += 1
            raise NetworkError(errno.ENETUNREACH, f"no route to {_fmt(dst)}")
        return route, self.interfaces[route.device]

    def source_for(self, dst: bytes) -> bytes:
        """Pick the source address for traffic to ``dst`` (RFC 1122 section 3.3.4.3, RFC 6724 section 5)."""
        route, iface = self.route(dst)
        if len(dst) == 16:
            return self._source_for_ipv6(dst, route, iface)
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

    def _source_for_ipv6(self, dst: bytes, route: Route, iface: Interface) -> bytes:
        """Apply the rules of RFC 6724 that matter with one link: same address,
        matching scope, then the longest matching prefix."""
        if iface.loopback:
            return dst if self.is_local(dst) else IPV6_LOOPBACK
        if len(route.prefsrc) == 16:
            return route.prefsrc
        addresses = [a.ip for a in iface.ipv6_addresses()]
        if not addresses:
            raise NetworkError(errno.EADDRNOTAVAIL, f"no IPv6 address on {iface.name}")
        link_scope = ipv6.is_link_local(dst) or ipv6.is_multicast(dst) and dst[1] & 0x0F == 2
        same_scope = [ip for ip in addresses if ipv6.is_link_local(ip) == link_scope] or addresses
        target = int.from_bytes(dst, "big")
        return max(same_scope, key=lambda ip: 128 - (int.from_bytes(ip, "big") ^ target).bit_length())

    def path_mtu(self, dst: bytes, iface: Interface | None = None) -> int:
        """Return the path MTU to ``dst``: the interface's MTU (for IPv6 the one a
        router advertised), lowered by ICMP, and capped at 65535 bytes so that
        loopback's 65536 fits the length fields. ``iface`` is the interface
        that routes to ``dst``, when the caller has routed already."""
        if iface is None:
            iface = self.route(dst)[1]
        mtu = (iface.ipv6_mtu or iface.mtu) if len(dst) == 16 else iface.mtu
        entry = self._pmtu.get(dst)
        if entry is not None:
            if entry[1] <= self.clock():
                del self._pmtu[dst]
            else:
                mtu = min(mtu, entry[0])
        return min(mtu, ipv4.MAX_TOTAL_LENGTH)

    def mss_for(self, dst: bytes) -> int:
        """Return the TCP MSS that fits the path MTU to ``dst`` without IP or TCP options."""
        return self.path_mtu(dst) - (60 if len(dst) == 16 else 40)

    def update_path_mtu(self, dst: bytes, mtu: int) -> bool:
        """Record a smaller path MTU to ``dst`` learned from ICMP (RFC 1191, RFC 8201);
        return False when it is not smaller than the current one."""
        floor = MIN_PMTU_IPV6 if len(dst) == 16 else MIN_PMTU_IPV4
        mtu = max(mtu, floor)
        try:
            current = self.path_mtu(dst)
        except NetworkError:
            return False
        if mtu >= current:
            return False
        self._pmtu[dst] = (mtu, self.clock() + PMTU_EXPIRES_SECONDS)
        log.info("path MTU to %s lowered from %d to %d", _fmt(dst), current, mtu)
        return True

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
        elif eth.ethertype == ethernet.ETHERTYPE_IPV6:
            self.ipv6.receive(iface, payload, checksum_valid, link_multicast=bool(eth.dst[0] & 1))
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
        """Handle one IP packet of either family (loopback delivers both here): check it,
        reassemble it, then deliver it to its protocol."""
        if len(packet) and packet[0] >> 4 == 6:
            self.ipv6.receive(iface, packet, checksum_valid)
            return
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
            reassembled = self._reassemble(header, payload, packet)
            if reassembled is None:
                return
            header, payload = reassembled
            checksum_valid = False

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

    def _reassemble(self, header: ipv4.Ipv4Repr, payload: memoryview, packet
                    ) -> tuple[ipv4.Ipv4Repr, memoryview] | None:
        """Queue an IPv4 fragment; return the whole datagram once its last piece arrived."""
        counters = self.counters.ip
        counters.ReasmReqds += 1
        if header.more_fragments and len(payload) % 8 or \
                header.header_length + header.fragment_offset + len(payload) > ipv4.MAX_TOTAL_LENGTH:
            counters.ReasmFails += 1
            return None
        first = (header, bytes(packet[:header.total_length])) if header.fragment_offset == 0 else None
        key = (header.src, header.dst, header.ident, header.protocol)
        verdict, data, first = self._reassembler.add(key, header.fragment_offset, header.more_fragments,
                                                     bytes(payload), first)
        if verdict is Verdict.QUEUED or verdict is Verdict.DUPLICATE:
            return None
        if verdict is not Verdict.COMPLETE:
            counters.ReasmFails += 1
            if verdict is Verdict.OVERLAP:
                counters.ReasmOverlaps += 1
            return None
        counters.ReasmOKs += 1
        first_header = first[0]
        whole = dataclasses.replace(first_header, more_fragments=False, fragment_offset=0,
                                    total_length=first_header.header_length + len(data))
        return whole, memoryview(data)

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
                # Linux's ICMP socket uses IP_PMTUDISC_DONT, so a large reply is fragmented.
                self.output(header.dst, header.src, ipv4.PROTO_ICMP, reply, tos=header.tos, dont_fragment=False)
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
            self._receive_icmp_error(message)

    def _receive_icmp_error(self, message: icmp.IcmpRepr) -> None:
        """Pass an ICMP error about a datagram this stack sent to the socket layer.

        An error that quotes too little, or a datagram whose source is not
        ours, is counted in Icmp.InErrors and dropped.
        """
        quoted = bytes(message.payload)
        if len(quoted) < ipv4.HEADER_LEN + 8 or quoted[0] >> 4 != 4:
            self.counters.icmp.InErrors += 1
            return
        header_len = (quoted[0] & 0x0F) * 4
        if header_len < ipv4.HEADER_LEN or len(quoted) < header_len + 8:
            self.counters.icmp.InErrors += 1
            return
        protocol, src, dst = quoted[9], quoted[12:16], quoted[16:20]
        if not self.is_local(src):
            self.counters.icmp.InErrors += 1
            return
        sport = int.from_bytes(quoted[header_len:header_len + 2], "big")
        dport = int.from_bytes(quoted[header_len + 2:header_len + 4], "big")

        mtu = 0
        if message.type == icmp.TYPE_DEST_UNREACHABLE and message.code == icmp.CODE_FRAGMENTATION_NEEDED:
            mtu = message.next_hop_mtu or _plateau_below(int.from_bytes(quoted[2:4], "big"))
            self.update_path_mtu(dst, mtu)
            try:
                mtu = self.path_mtu(dst)
            except NetworkError:
                return  # The route went away; nothing is sent there any more.
        if message.type == icmp.TYPE_DEST_UNREACHABLE:
            code = _UNREACH_ERRNO.get(message.code, errno.EHOSTUNREACH)
        else:
            code = errno.EHOSTUNREACH
        # icmp_err_convert marks these fatal: protocol and port unreachable, and
        # the administratively prohibited codes 9, 10 and 13.
        hard = message.type == icmp.TYPE_DEST_UNREACHABLE and message.code in (
            icmp.CODE_PROTOCOL_UNREACHABLE, icmp.CODE_PORT_UNREACHABLE, 9, 10, 13)
        self.report_icmp_error(protocol, src, sport, dst, dport, code, hard=hard, mtu=mtu)

    def report_icmp_error(self, protocol: int, local: bytes, local_port: int, remote: bytes, remote_port: int,
                          code: int, *, hard: bool, mtu: int = 0) -> None:
        """Hand an ICMP or ICMPv6 error to the socket layer's ``icmp_error_handler``."""
        if self.icmp_error_handler is not None:
            self.icmp_error_handler(IcmpError(protocol, local, local_port, remote, remote_port, code, hard, mtu))

    # Output.

    def output(self, src: bytes, dst: bytes, protocol: int, payload: bytes | memoryview, *,
               ttl: int = DEFAULT_TTL, tos: int = 0, dont_fragment: bool = True,
               offload: TransportOffload | None = None) -> None:
        """Send one IPv4 datagram, fragmenting it when it exceeds the MTU and DF is clear.

        With ``offload`` the transport checksum is left to the device (its
        field contains the pseudo-header sum), and a datagram over the MTU with a
        gso_size goes out as one GSO frame if the device takes its size. The
        caller must check ``offloads_for(dst)`` first. Raises
        NetworkError(ENETUNREACH) without a route and NetworkError(EMSGSIZE)
        for an oversized datagram with DF set.
        """
        if len(dst) == 16:
            # For IPv6, ttl is the hop limit, tos the traffic class, and DF forbids
            # fragmentation at the source.
            self.ipv6.output(src, dst, protocol, payload, hop_limit=ttl, traffic_class=tos,
                             fragment=not dont_fragment, offload=offload)
            return
        counters = self.counters.ip
        counters.OutRequests += 1
        route, iface = self.route(dst)
        total = ipv4.HEADER_LEN + len(payload)
        mtu = self.path_mtu(dst, iface)

        device_offload = None
        if offload is not None:
            device_offload = frame_offload(self.device_offloads(iface), offload,
                                           ip_header_len=ipv4.HEADER_LEN, packet_len=total, mtu=mtu,
                                           gso_type=GSO_TCPV4)
        if total <= mtu or device_offload is not None and device_offload.gso_type != GSO_NONE:
            self._ident = (self._ident + 1) & 0xFFFF
            packet = ipv4.build(src, dst, protocol, payload, ttl=ttl, ident=self._ident, tos=tos,
                                dont_fragment=dont_fragment and total > 68)
            self._send_packet(route, iface, dst, packet, device_offload)
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

    def _send_packet(self, route: Route, iface: Interface, dst: bytes, packet: bytes,
                     offload: FrameOffload | None = None) -> None:
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
            self._transmit_frame(iface, mac, ethernet.ETHERTYPE_IPV4, packet, offload)
            return
        neighbors.resolve(next_hop,
                          lambda mac: self._transmit_frame(iface, mac, ethernet.ETHERTYPE_IPV4, packet, offload),
                          lambda: self._neighbor_unreachable(packet))

    def _neighbor_unreachable(self, packet: bytes) -> None:
        """Report EHOSTUNREACH for a packet whose next hop never replied to ARP.

        Linux replies to such a packet with a local ICMP host unreachable, which
        ends a TCP connection still in SYN_SENT.
        """
        header_len = (packet[0] & 0x0F) * 4
        protocol = packet[9]
        if protocol not in (ipv4.PROTO_TCP, ipv4.PROTO_UDP) or len(packet) < header_len + 4:
            return
        ports = packet[header_len:header_len + 4]
        self.report_icmp_error(protocol, packet[12:16], int.from_bytes(ports[:2], "big"), packet[16:20],
                               int.from_bytes(ports[2:], "big"), errno.EHOSTUNREACH, hard=False)

    def send_ipv6_packet(self, route: Route, iface: Interface, dst: bytes, packet: bytes,
                         offload: FrameOffload | None = None) -> None:
        """Put one IPv6 packet on ``iface`` towards ``dst``, resolving the next hop with NDP first.

        ``offload`` is the packet's checksum and GSO metadata for the device.
        Loopback and multicast packets go out without it.
        """
        if iface.loopback:
            iface.transmit(packet)
            return
        if ipv6.is_multicast(dst):
            self.transmit_ipv6(iface, None, packet)
            return
        next_hop = route.gateway or dst
        self._neighbors6[iface.name].resolve(
            next_hop, lambda mac: self._transmit_frame(iface, mac, ethernet.ETHERTYPE_IPV6, packet, offload),
            lambda: self._neighbor_unreachable6(packet))

    def _neighbor_unreachable6(self, packet: bytes) -> None:
        """Report EHOSTUNREACH for a packet whose next hop never answered a neighbor
        solicitation, as Linux's local ICMPv6 address unreachable does."""
        quoted = quoted_transport(packet)
        if quoted is None or quoted[0] not in (ipv4.PROTO_TCP, ipv4.PROTO_UDP):
            return
        protocol, src, dst, sport, dport = quoted
        self.report_icmp_error(protocol, src, sport, dst, dport, errno.EHOSTUNREACH, hard=False)

    def transmit_ipv6(self, iface: Interface, mac: bytes | None, packet: bytes) -> None:
        """Send an IPv6 packet to ``mac``, or to the multicast MAC of its destination when ``mac`` is None."""
        if mac is None:
            mac = ethernet.ipv6_multicast_mac(packet[24:40])
        self._transmit_frame(iface, mac, ethernet.ETHERTYPE_IPV6, packet)

    def _transmit_frame(self, iface: Interface, dst_mac: bytes, ethertype: int, payload: bytes,
                        offload: FrameOffload | None = None) -> None:
        frame = ethernet.build(dst_mac, iface.mac, ethertype, payload)
        self.counters.link.OutFrames += 1
        self.counters.link.OutBytes += len(frame)
        if offload is None:
            iface.transmit(frame)
        else:
            iface.transmit(frame, offload)

    def _send_arp_request(self, iface: Interface, ip: bytes) -> None:
        addresses = iface.ipv4_addresses()
        sender = next((a.ip for a in addresses if a.contains(ip)), addresses[0].ip if addresses else b"\x00" * 4)
        request = arp_header.build(arp_header.ArpRepr(
            op=arp_header.OP_REQUEST, sender_mac=iface.mac, sender_ip=sender,
            target_mac=b"\x00" * 6, target_ip=ip))
        self._transmit_frame(iface, ethernet.BROADCAST, ethernet.ETHERTYPE_ARP, request)

    def send_port_unreachable(self, header: "ipv4.Ipv4Repr | Ipv6Packet", payload: memoryview) -> None:
        """Send ICMP or ICMPv6 port unreachable about a datagram for a closed port."""
        if isinstance(header, Ipv6Packet):
            self.ipv6.send_error(header, header.packet, icmpv6.TYPE_DEST_UNREACHABLE, icmpv6.CODE_PORT_UNREACHABLE,
                                 0, False)
            return
        original = ipv4.build_header(header.src, header.dst, header.protocol, len(payload), ttl=header.ttl,
                                     ident=header.ident, tos=header.tos, dont_fragment=header.dont_fragment,
                                     options=header.options) + bytes(payload)
        self.send_icmp_error(header, original, icmp.TYPE_DEST_UNREACHABLE, icmp.CODE_PORT_UNREACHABLE)

    def send_icmp_error(self, header: ipv4.Ipv4Repr, packet: bytes | memoryview, type_: int, code: int) -> None:
        """Send an ICMP error about a received datagram, within the rate limit.

        RFC 1122 section 3.2.2: never about an ICMP error, a broadcast or
        multicast datagram, or a non-initial fragment. Errors are rate
        limited per destination, except to the stack's own addresses, as
        Linux exempts the loopback device.
        """
        if header.dst == LIMITED_BROADCAST or 224 <= header.dst[0] <= 239 or header.fragment_offset:
            return
        if header.protocol == ipv4.PROTO_ICMP and _quotes_icmp_error(packet, header.header_length):
            return
        if any(iface.is_broadcast(header.dst) for iface in self.interfaces.values()):
            return
        counters = self.counters.icmp
        if not self.is_local(header.src) and not self._icmp_limiter.allow(header.src):
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
        """Run neighbor retries and reassembly timeouts; the stack calls this about every 100 ms."""
        for neighbors in self._neighbors.values():
            neighbors.on_timer()
        for neighbors6 in list(self._neighbors6.values()):
            neighbors6.on_timer()
        for header, packet in self._reassembler.expire():
            # RFC 792: time exceeded, code 1, once the first fragment has arrived.
            self.counters.ip.ReasmTimeout += 1
            self.counters.ip.ReasmFails += 1
            self.send_icmp_error(header, packet, icmp.TYPE_TIME_EXCEEDED, 1)
        self.ipv6.on_timer()

    @property
    def reassembly_memory(self) -> int:
        """Bytes held by incomplete IPv4 datagrams, overhead included."""
        return self._reassembler.memory

    def neighbors(self, name: str) -> NeighborCache | None:
        return self._neighbors.get(name)

    def neighbors6(self, name: str) -> NeighborCache6 | None:
        return self._neighbors6.get(name)


def _plateau_below(total_length: int) -> int:
    """Guess a path MTU below ``total_length`` from the RFC 1191 plateau table."""
    return next((plateau for plateau in _MTU_PLATEAUS if plateau < total_length), _MTU_PLATEAUS[-1])


def _quotes_icmp_error(packet: bytes | memoryview, header_length: int) -> bool:
    """Tell whether an ICMP datagram carries an error message, about which no error is sent."""
    return len(packet) > header_length and icmp.is_error(packet[header_length])


def _fmt(ip: bytes) -> str:
    return str(ipaddress.ip_address(ip))
