"""IPv6 input and output (RFC 8200), ICMPv6 (RFC 4443) and Neighbor Discovery (RFC 4861).

``Ipv6Layer`` is the IPv6 half of ``Network``. It walks extension-header
chains, reassembles fragments, replies to echo requests and neighbor
solicitations, reads router advertisements, sends ICMPv6 errors within the
rate limit, and fragments datagrams larger than the path MTU. Routing,
interfaces and the frame output stay in ``Network``.
"""

import dataclasses
import errno
import ipaddress
import logging
import os
from typing import TYPE_CHECKING

from sandnet_stackd.header import icmpv6, ipv6
from sandnet_stackd.header.errors import MalformedError, Reason
from sandnet_stackd.icmp_limit import IcmpRateLimiter
from sandnet_stackd.interface import Address, Interface
from sandnet_stackd.network_error import NetworkError
from sandnet_stackd.offload import GSO_NONE, GSO_TCPV6, TransportOffload, frame_offload
from sandnet_stackd.reassembly import IPV6_TIMEOUT_SECONDS, Reassembler, Verdict
from sandnet_stackd.route import Route

if TYPE_CHECKING:
    from sandnet_stackd.network import Network

log = logging.getLogger("sandnet.stackd.ipv6")

DEFAULT_HOP_LIMIT = 64
MIN_MTU = 1280
NDP_HOP_LIMIT = 255
# A chain longer than this is dropped: RFC 8200 section 4.1 allows each
# header once (Destination Options twice), so real chains are far shorter.
MAX_EXTENSION_HEADERS = 8
# The metric Linux gives a default route learned from a router advertisement.
RA_ROUTE_METRIC = 1024
# RFC 4862 section 5.1 defaults, also Linux's: one DAD probe, then one
# RetransTimer (1 s) of waiting for a reply.
DAD_TRANSMITS = 1
DAD_WAIT_SECONDS = 1.0

ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")
ALL_ROUTERS = bytes.fromhex("ff020000000000000000000000000002")
INTERFACE_LOCAL_ALL_NODES = bytes.fromhex("ff010000000000000000000000000001")
UNSPECIFIED = bytes(16)
LOOPBACK = bytes(15) + b"\x01"

# Offsets inside the fixed header that a Parameter Problem pointer may name.
_PAYLOAD_LENGTH_OFFSET = 4
_NEXT_HEADER_OFFSET = 6


@dataclasses.dataclass(slots=True)
class Ipv6Packet:
    """A received IPv6 packet as transport handlers see it.

    ``protocol`` is the upper-layer protocol found at the end of the
    extension-header chain. ``packet`` is the whole packet (reassembled if
    it came in fragments), which ICMPv6 errors quote.
    """

    src: bytes
    dst: bytes
    protocol: int
    hop_limit: int
    traffic_class: int
    packet: bytes
    fragment_offset: int = 0


@dataclasses.dataclass(slots=True)
class _FirstFragment:
    """The parts of a datagram's first fragment that reassembly keeps."""

    iface: Interface
    unfragmentable: bytes  # fixed header and the extension headers before the Fragment header
    next_header_offset: int  # where the Next Header field that names the Fragment header sits
    next_header: int  # the Next Header value inside the Fragment header
    packet: bytes  # the whole first fragment, for ICMPv6 time exceeded


class Ipv6Layer:
    """IPv6 of one stack."""

    def __init__(self, network: "Network"):
        self.network = network
        self.counters = network.counters.ip6
        self.icmp_counters = network.counters.icmp6
        self._reassembler = Reassembler(network.clock, IPV6_TIMEOUT_SECONDS)
        self._limiter = IcmpRateLimiter(network.clock)
        self._ident = int.from_bytes(os.urandom(4), "big")
        self.echo_reply_handler = None
        # Addresses under DAD: (interface, address) -> time the probe ends.
        self._dad: dict[tuple[str, bytes], float] = {}

    # Input.

    def receive(self, iface: Interface, packet: bytes | memoryview, checksum_valid: bool,
                link_multicast: bool = False) -> None:
        """Handle one IPv6 packet: check it, walk its extension headers, deliver it."""
        counters = self.counters
        counters.InReceives += 1
        try:
            header, payload = ipv6.parse(packet)
        except MalformedError as error:
            if error.reason in (Reason.TRUNCATED, Reason.BAD_TOTAL_LENGTH):
                counters.InTruncatedPkts += 1
            counters.InHdrErrors += 1
            return

        # RFC 4291 section 2.5.3: ::1 never arrives from outside, nor does a multicast source.
        if ipv6.is_multicast(header.src) or not iface.loopback and (
                ipv6.is_loopback(header.src) or ipv6.is_loopback(header.dst)):
            counters.InAddrErrors += 1
            return
        if not self._accepts(iface, header.dst):
            # Groups this stack did not join are no error: links carry other nodes' multicast.
            if not ipv6.is_multicast(header.dst):
                counters.InAddrErrors += 1
            return

        packet = bytes(packet[:ipv6.HEADER_LEN + header.payload_length])
        self._walk(iface, header, packet, checksum_valid or iface.loopback, link_multicast, reassembled=False)

    def _accepts(self, iface: Interface, dst: bytes) -> bool:
        if iface.loopback:
            return self.network.is_local(dst)
        if ipv6.is_multicast(dst):
            # Tentative addresses count, so that another node's DAD probe arrives.
            return dst in (ALL_NODES, INTERFACE_LOCAL_ALL_NODES) or any(
                dst == ipv6.solicited_node(address.ip) for address in iface.addresses if len(address.ip) == 16)
        return iface.owns(dst)

    def _walk(self, iface: Interface, header: ipv6.Ipv6Repr, packet: bytes, checksum_valid: bool,
              link_multicast: bool, reassembled: bool) -> None:
        """Follow the extension-header chain (RFC 8200 section 4.1) to the upper layer."""
        counters = self.counters
        view = memoryview(packet)
        next_header = header.next_header
        next_header_offset = _NEXT_HEADER_OFFSET
        offset = ipv6.HEADER_LEN
        seen = 0

        while ipv6.is_extension_header(next_header):
            seen += 1
            if seen > MAX_EXTENSION_HEADERS:
                counters.InHdrErrors += 1
                return
            if next_header == ipv6.NEXT_HEADER_HOP_BY_HOP and offset != ipv6.HEADER_LEN:
                # Hop-by-Hop is only allowed right after the fixed header.
                counters.InUnknownProtos += 1
                self.send_error(header, packet, icmpv6.TYPE_PARAMETER_PROBLEM,
                                icmpv6.CODE_UNRECOGNIZED_NEXT_HEADER, next_header_offset, link_multicast)
                return
            try:
                length = ipv6.extension_header_length(next_header, view[offset:])
            except MalformedError:
                counters.InTruncatedPkts += 1
                counters.InHdrErrors += 1
                return

            if next_header in (ipv6.NEXT_HEADER_HOP_BY_HOP, ipv6.NEXT_HEADER_DEST_OPTS):
                if not self._check_options(header, packet, offset, length, link_multicast):
                    return
            elif next_header == ipv6.NEXT_HEADER_ROUTING:
                if view[offset + 3] != 0:
                    # No routing type is supported (type 0 is deprecated by RFC 5095),
                    # so segments left > 0 is an error (RFC 8200 section 4.4).
                    counters.InHdrErrors += 1
                    self.send_error(header, packet, icmpv6.TYPE_PARAMETER_PROBLEM, icmpv6.CODE_ERRONEOUS_HEADER,
                                    offset + 2, link_multicast)
                    return
            elif next_header == ipv6.NEXT_HEADER_FRAGMENT:
                fragment = ipv6.parse_fragment(view[offset:])
                if fragment.offset or fragment.more:
                    if reassembled:
                        counters.InHdrErrors += 1
                        return
                    self._receive_fragment(iface, header, packet, offset, next_header_offset, fragment,
                                           link_multicast)
                    return
                # An atomic fragment (RFC 6946) is processed as an unfragmented packet.
            else:
                # Authentication, Mobility, HIP and Shim6 headers are not supported.
                counters.InUnknownProtos += 1
                self.send_error(header, packet, icmpv6.TYPE_PARAMETER_PROBLEM,
                                icmpv6.CODE_UNRECOGNIZED_NEXT_HEADER, next_header_offset, link_multicast)
                return
            next_header = view[offset]
            next_header_offset = offset
            offset += length

        if next_header == ipv6.NEXT_HEADER_NONE:
            return
        upper = view[offset:]
        info = Ipv6Packet(header.src, header.dst, next_header, header.hop_limit, header.traffic_class, packet)
        if next_header == ipv6.NEXT_HEADER_ICMPV6:
            counters.InDelivers += 1
            self._receive_icmp(iface, info, upper, checksum_valid, link_multicast)
            return
        handler = self.network.handler(next_header)
        if handler is None:
            counters.InUnknownProtos += 1
            self.send_error(header, packet, icmpv6.TYPE_PARAMETER_PROBLEM, icmpv6.CODE_UNRECOGNIZED_NEXT_HEADER,
                            next_header_offset, link_multicast)
            return
        counters.InDelivers += 1
        handler(iface, info, upper, checksum_valid)

    def _check_options(self, header: ipv6.Ipv6Repr, packet: bytes, offset: int, length: int,
                       link_multicast: bool) -> bool:
        """Apply the action bits of unknown options (RFC 8200 section 4.2); return False to drop."""
        try:
            options = ipv6.parse_options(memoryview(packet)[offset:offset + length])
        except MalformedError:
            self.counters.InHdrErrors += 1
            return False
        for option in options:
            if option.type == ipv6.OPTION_ROUTER_ALERT:
                continue
            action = option.action
            if action == ipv6.ACTION_SKIP:
                continue
            self.counters.InHdrErrors += 1
            if action == ipv6.ACTION_DISCARD_ICMP or (
                    action == ipv6.ACTION_DISCARD_ICMP_UNLESS_MULTICAST and not ipv6.is_multicast(header.dst)):
                self.send_error(header, packet, icmpv6.TYPE_PARAMETER_PROBLEM, icmpv6.CODE_UNRECOGNIZED_OPTION,
                                offset + option.offset, link_multicast, about_option=True)
            return False
        return True

    # Fragments.

    def _receive_fragment(self, iface: Interface, header: ipv6.Ipv6Repr, packet: bytes, offset: int,
                          next_header_offset: int, fragment: ipv6.FragmentRepr, link_multicast: bool) -> None:
        """Queue one fragment and deliver the datagram once it is complete (RFC 8200 section 4.5)."""
        counters = self.counters
        counters.ReasmReqds += 1
        data = packet[offset + ipv6.FRAGMENT_HEADER_LEN:]
        if fragment.more and len(data) % 8:
            counters.ReasmFails += 1
            self.send_error(header, packet, icmpv6.TYPE_PARAMETER_PROBLEM, icmpv6.CODE_ERRONEOUS_HEADER,
                            _PAYLOAD_LENGTH_OFFSET, link_multicast)
            return
        if fragment.offset + len(data) > ipv6.MAX_PAYLOAD_LENGTH:
            counters.ReasmFails += 1
            self.send_error(header, packet, icmpv6.TYPE_PARAMETER_PROBLEM, icmpv6.CODE_ERRONEOUS_HEADER,
                            offset + 2, link_multicast)
            return

        first = None
        if fragment.offset == 0:
            first = _FirstFragment(iface, packet[:offset], next_header_offset, fragment.next_header, packet)
        key = (header.src, header.dst, fragment.ident)
        verdict, payload, first = self._reassembler.add(key, fragment.offset, fragment.more, data, first)
        if verdict is Verdict.QUEUED or verdict is Verdict.DUPLICATE:
            return
        if verdict is not Verdict.COMPLETE:
            counters.ReasmFails += 1
            if verdict is Verdict.OVERLAP:
                counters.ReasmOverlaps += 1
            return

        # Rebuild the datagram without the Fragment header and parse it again.
        unfragmentable = bytearray(first.unfragmentable)
        unfragmentable[first.next_header_offset] = first.next_header
        total = len(unfragmentable) - ipv6.HEADER_LEN + len(payload)
        if total > ipv6.MAX_PAYLOAD_LENGTH:
            counters.ReasmFails += 1
            return
        unfragmentable[4:6] = total.to_bytes(2, "big")
        whole = bytes(unfragmentable) + payload
        counters.ReasmOKs += 1
        rebuilt, _ = ipv6.parse(whole)
        self._walk(first.iface, rebuilt, whole, False, link_multicast, reassembled=True)

    def on_timer(self) -> None:
        """Finish duplicate address detection and expire reassembly queues. Each expired
        datagram whose first fragment arrived gets ICMPv6 time exceeded (RFC 8200 section 4.5)."""
        self._finish_dad()
        for first in self._reassembler.expire():
            self.counters.ReasmTimeout += 1
            self.counters.ReasmFails += 1
            header, _ = ipv6.parse(first.packet)
            self.send_error(header, first.packet, icmpv6.TYPE_TIME_EXCEEDED,
                            icmpv6.CODE_REASSEMBLY_TIME_EXCEEDED, 0, False)

    @property
    def reassembly_memory(self) -> int:
        """Bytes held by incomplete datagrams, overhead included."""
        return self._reassembler.memory

    # ICMPv6.

    def _receive_icmp(self, iface: Interface, info: Ipv6Packet, upper: memoryview, checksum_valid: bool,
                      link_multicast: bool) -> None:
        counters = self.icmp_counters
        counters.InMsgs += 1
        try:
            message = icmpv6.parse(upper, info.src, info.dst, verify_checksum=not checksum_valid)
        except MalformedError as error:
            counters.InErrors += 1
            if error.reason is Reason.BAD_CHECKSUM:
                counters.InCsumErrors += 1
            return

        kind = message.type
        if kind == icmpv6.TYPE_ECHO_REQUEST:
            counters.InEchos += 1
            self._answer_echo(info, message)
        elif kind == icmpv6.TYPE_ECHO_REPLY:
            counters.InEchoReplies += 1
            if self.echo_reply_handler is not None:
                self.echo_reply_handler(iface, info, upper)
        elif icmpv6.is_error(kind):
            self._receive_error(info, message)
        elif kind in (icmpv6.TYPE_NEIGHBOR_SOLICITATION, icmpv6.TYPE_NEIGHBOR_ADVERTISEMENT,
                      icmpv6.TYPE_ROUTER_ADVERTISEMENT):
            self._receive_ndp(iface, info, message)
        elif kind == icmpv6.TYPE_MLD_QUERY:
            counters.InMLDQueries += 1
            self.send_mld_report(iface)
        # Other informational messages (router solicitations, redirects, MLD
        # reports of other nodes) are dropped as RFC 4443 section 2.4 (b) allows.

    def _answer_echo(self, info: Ipv6Packet, message: icmpv6.Icmpv6Repr) -> None:
        source = info.dst
        if ipv6.is_multicast(source):
            try:
                source = self.network.source_for(info.src)
            except NetworkError:
                return
        reply = icmpv6.build_echo(source, info.src, icmpv6.TYPE_ECHO_REPLY, message.echo_id, message.echo_seq,
                                  message.payload)
        if self._send(source, info.src, reply, traffic_class=info.traffic_class):
            self.icmp_counters.OutMsgs += 1
            self.icmp_counters.OutEchoReplies += 1

    def _receive_error(self, info: Ipv6Packet, message: icmpv6.Icmpv6Repr) -> None:
        """Pass an ICMPv6 error about a packet this stack sent to the socket layer."""
        counters = self.icmp_counters
        counter = {icmpv6.TYPE_DEST_UNREACHABLE: "InDestUnreachs", icmpv6.TYPE_PACKET_TOO_BIG: "InPktTooBigs",
                   icmpv6.TYPE_TIME_EXCEEDED: "InTimeExcds", icmpv6.TYPE_PARAMETER_PROBLEM: "InParmProblems"}
        if message.type in counter:
            setattr(counters, counter[message.type], getattr(counters, counter[message.type]) + 1)
        quoted = quoted_transport(message.payload)
        if quoted is None or not self.network.is_local(quoted[1]):
            counters.InErrors += 1
            return
        protocol, src, dst, sport, dport = quoted

        mtu = 0
        if message.type == icmpv6.TYPE_PACKET_TOO_BIG:
            # RFC 8201 section 4: never below the IPv6 minimum MTU.
            mtu = max(message.mtu, MIN_MTU)
            self.network.update_path_mtu(dst, mtu)
        code = icmpv6_errno(message.type, message.code)
        self.network.report_icmp_error(protocol, src, sport, dst, dport, code, hard=_is_hard(message), mtu=mtu)

    # Neighbor Discovery.

    def _receive_ndp(self, iface: Interface, info: Ipv6Packet, message: icmpv6.Icmpv6Repr) -> None:
        """Validate an NS, NA or RA (RFC 4861 sections 6.1.2, 7.1.1, 7.1.2) and apply it."""
        ndp_counters = self.network.counters.ndp6
        neighbors = self.network.neighbors6(iface.name)
        if iface.loopback or neighbors is None or info.hop_limit != NDP_HOP_LIMIT or message.code != 0:
            ndp_counters.InInvalid += 1
            return
        try:
            ndp = icmpv6.parse_ndp(message)
        except MalformedError:
            ndp_counters.InInvalid += 1
            return
        if ndp.target and ipv6.is_multicast(ndp.target):
            ndp_counters.InInvalid += 1
            return

        if ndp.type == icmpv6.TYPE_NEIGHBOR_SOLICITATION:
            self.icmp_counters.InNeighborSolicits += 1
            self._receive_solicitation(iface, info, ndp)
        elif ndp.type == icmpv6.TYPE_NEIGHBOR_ADVERTISEMENT:
            self.icmp_counters.InNeighborAdvertisements += 1
            solicited = bool(ndp.flags & icmpv6.NA_FLAG_SOLICITED)
            if solicited and ipv6.is_multicast(info.dst):
                ndp_counters.InInvalid += 1
                return
            if iface.tentative(ndp.target):
                self._dad_failed(iface, ndp.target, f"neighbor advertisement from {_fmt(info.src)}")
                return
            if iface.owns(ndp.target):
                log.warning("neighbor advertisement from %s claims our address %s on %s", _fmt(info.src),
                            _fmt(ndp.target), iface.name)
                return
            neighbors.on_advertisement(ndp.target, ndp.link_address, solicited,
                                       bool(ndp.flags & icmpv6.NA_FLAG_OVERRIDE))
        else:
            self.icmp_counters.InRouterAdvertisements += 1
            self._receive_router_advertisement(iface, info, ndp)

    def _receive_solicitation(self, iface: Interface, info: Ipv6Packet, ndp: icmpv6.NdpRepr) -> None:
        neighbors = self.network.neighbors6(iface.name)
        from_unspecified = ipv6.is_unspecified(info.src)
        if from_unspecified and (ndp.link_address or info.dst != ipv6.solicited_node(ndp.target)):
            self.network.counters.ndp6.InInvalid += 1
            return
        if from_unspecified and iface.tentative(ndp.target):
            # Another node probes the same tentative address (RFC 4862 section 5.4.3).
            self._dad_failed(iface, ndp.target, "a duplicate address detection probe from another node")
            return
        if not iface.owns(ndp.target):
            return
        if from_unspecified:
            # Another node runs duplicate address detection on our address (RFC 4862 section 5.4.3).
            self._send_advertisement(iface, ndp.target, ALL_NODES, icmpv6.NA_FLAG_OVERRIDE)
            return
        if ndp.link_address:
            neighbors.on_solicitation(info.src, ndp.link_address)
        elif ipv6.is_multicast(info.dst):
            self.network.counters.ndp6.InInvalid += 1
            return
        self._send_advertisement(iface, ndp.target, info.src, icmpv6.NA_FLAG_SOLICITED | icmpv6.NA_FLAG_OVERRIDE)

    def _send_advertisement(self, iface: Interface, target: bytes, dst: bytes, flags: int) -> None:
        message = icmpv6.build_neighbor_advertisement(target, dst, target, iface.mac, flags)
        self.icmp_counters.OutMsgs += 1
        self.icmp_counters.OutNeighborAdvertisements += 1
        if ipv6.is_multicast(dst):
            self.send_link(iface, target, dst, message)
        else:
            self._send(target, dst, message, hop_limit=NDP_HOP_LIMIT)

    def _receive_router_advertisement(self, iface: Interface, info: Ipv6Packet, ndp: icmpv6.NdpRepr) -> None:
        """Take the default route and MTU from an RA (RFC 4861 section 6.3.4)."""
        if not ipv6.is_link_local(info.src):
            self.network.counters.ndp6.InInvalid += 1
            return
        if ndp.link_address:
            self.network.neighbors6(iface.name).on_solicitation(info.src, ndp.link_address)

        routes = self.network.routes
        existing = [r for r in routes.routes() if r.family == 6 and r.dst_len == 0 and r.gateway == info.src
                    and r.device == iface.name and r.protocol == "ra"]
        if ndp.router_lifetime and not existing:
            routes.add(Route(family=6, dst=UNSPECIFIED, dst_len=0, device=iface.name, gateway=info.src,
                             metric=RA_ROUTE_METRIC, protocol="ra"))
            log.info("router advertisement from %s on %s: default route added", _fmt(info.src), iface.name)
        elif not ndp.router_lifetime and existing:
            routes.remove(existing[0])
            log.info("router advertisement from %s on %s: default route removed", _fmt(info.src), iface.name)

        if ndp.mtu:
            if MIN_MTU <= ndp.mtu <= iface.mtu:
                if iface.ipv6_mtu != ndp.mtu:
                    log.info("router advertisement from %s sets the IPv6 MTU of %s to %d", _fmt(info.src),
                             iface.name, ndp.mtu)
                iface.ipv6_mtu = ndp.mtu
            else:
                log.warning("ignored MTU %d from the router advertisement of %s: outside %d..%d",
                            ndp.mtu, _fmt(info.src), MIN_MTU, iface.mtu)

    def solicit(self, iface: Interface, target: bytes, mac: bytes) -> None:
        """Send a Neighbor Solicitation for ``target``, multicast when ``mac`` is empty (RFC 4861 section 7.2.2)."""
        source = self._link_source(iface, target)
        self.icmp_counters.OutMsgs += 1
        self.icmp_counters.OutNeighborSolicits += 1
        if mac:
            message = icmpv6.build_neighbor_solicitation(source, target, target, iface.mac)
            packet = ipv6.build(source, target, ipv6.NEXT_HEADER_ICMPV6, message, hop_limit=NDP_HOP_LIMIT)
            self.network.transmit_ipv6(iface, mac, packet)
            return
        group = ipv6.solicited_node(target)
        self.send_link(iface, source, group, icmpv6.build_neighbor_solicitation(source, group, target, iface.mac))

    def _link_source(self, iface: Interface, target: bytes) -> bytes:
        addresses = iface.ipv6_addresses()
        for address in addresses:
            if address.contains(target):
                return address.ip
        link_local = [a.ip for a in addresses if ipv6.is_link_local(a.ip)]
        if link_local:
            return link_local[0]
        return addresses[0].ip if addresses else UNSPECIFIED

    def announce(self, iface: Interface) -> None:
        """Join the solicited-node groups with an MLD report and solicit routers, as Linux does on link up.

        An interface without a link-local address gets one from its MAC
        (RFC 4291 appendix A), under duplicate address detection.
        """
        if not iface.loopback and iface.mac and not any(
                ipv6.is_link_local(a.ip) for a in iface.addresses if len(a.ip) == 16):
            self._start_dad(iface, _link_local_from_mac(iface.mac))
        self.send_mld_report(iface)
        source = self._link_source(iface, ALL_ROUTERS)
        solicitation = icmpv6.build(source, ALL_ROUTERS, icmpv6.TYPE_ROUTER_SOLICITATION, 0, 0,
                                    bytes((icmpv6.OPTION_SOURCE_LINK_ADDRESS, 1)) + iface.mac
                                    if not ipv6.is_unspecified(source) else b"")
        self.icmp_counters.OutMsgs += 1
        self.send_link(iface, source, ALL_ROUTERS, solicitation)

    # Duplicate address detection (RFC 4862 section 5.4).

    def _start_dad(self, iface: Interface, ip: bytes) -> None:
        """Add ``ip`` as a tentative address and send the DAD probe: an NS from ::."""
        iface.addresses.append(Address(ip, 64, scope="link", tentative=True))
        self._dad[(iface.name, ip)] = self.network.clock() + DAD_TRANSMITS * DAD_WAIT_SECONDS
        group = ipv6.solicited_node(ip)
        self.icmp_counters.OutMsgs += 1
        self.icmp_counters.OutNeighborSolicits += 1
        self.send_link(iface, UNSPECIFIED, group, icmpv6.build_neighbor_solicitation(UNSPECIFIED, group, ip, iface.mac))
        log.info("duplicate address detection started for %s on %s", _fmt(ip), iface.name)

    def _dad_failed(self, iface: Interface, ip: bytes, reason: str) -> None:
        """Drop a tentative address that another node uses, as Linux marks it dadfailed."""
        self._dad.pop((iface.name, ip), None)
        iface.addresses = [a for a in iface.addresses if not (a.ip == ip and a.tentative)]
        self.network.counters.ndp6.DadFailures += 1
        log.warning("duplicate address detection failed for %s on %s: %s; the address is not used",
                    _fmt(ip), iface.name, reason)

    def _finish_dad(self) -> None:
        """Make every tentative address whose probe went unanswered usable, with its link-local route."""
        now = self.network.clock()
        for (name, ip), deadline in list(self._dad.items()):
            if now < deadline:
                continue
            del self._dad[(name, ip)]
            iface = self.network.interfaces.get(name)
            address = iface.tentative(ip) if iface is not None else None
            if address is None:
                continue
            address.tentative = False
            self.network.add_connected_route(iface, address)
            log.info("duplicate address detection passed for %s on %s", _fmt(ip), name)

    def send_mld_report(self, iface: Interface) -> None:
        """Report the groups this interface joined: the solicited-node group of each address (RFC 3810).

        Tentative addresses count, because DAD needs their group joined first
        (RFC 4862 section 5.4.2).
        """
        addresses = [a for a in iface.addresses if len(a.ip) == 16]
        if iface.loopback or not addresses:
            return
        groups = sorted({ipv6.solicited_node(a.ip) for a in addresses})
        link_local = [a.ip for a in addresses if ipv6.is_link_local(a.ip) and not a.tentative]
        source = link_local[0] if link_local else UNSPECIFIED
        report = icmpv6.build_mld_report(source, groups)
        payload = ipv6.build_hop_by_hop_router_alert(ipv6.NEXT_HEADER_ICMPV6) + report
        packet = ipv6.build(source, icmpv6.MLD_V2_ROUTERS, ipv6.NEXT_HEADER_HOP_BY_HOP, payload, hop_limit=1)
        self.icmp_counters.OutMsgs += 1
        self.icmp_counters.OutMLDv2Reports += 1
        self.network.transmit_ipv6(iface, None, packet)

    def send_link(self, iface: Interface, src: bytes, dst: bytes, message: bytes) -> None:
        """Send an ICMPv6 message to a link-scope multicast group with hop limit 255."""
        packet = ipv6.build(src, dst, ipv6.NEXT_HEADER_ICMPV6, message, hop_limit=NDP_HOP_LIMIT)
        self.network.transmit_ipv6(iface, None, packet)

    # Output.

    def output(self, src: bytes, dst: bytes, protocol: int, payload: bytes | memoryview, *,
               hop_limit: int = DEFAULT_HOP_LIMIT, traffic_class: int = 0, fragment: bool = True,
               offload: TransportOffload | None = None) -> None:
        """Send one datagram, fragmenting it when it exceeds the path MTU and ``fragment`` is true.

        With ``offload`` the TCP checksum is left to the device (its field
        contains the IPv6 pseudo-header sum), and a datagram over the path MTU
        with a gso_size goes out as one GSO_TCPV6 frame if the device takes its
        size. The caller must check ``Network.offloads_for(dst)`` first.
        Raises NetworkError(ENETUNREACH) without a route and
        NetworkError(EMSGSIZE) for an oversized datagram that may not be fragmented.
        """
        counters = self.counters
        counters.OutRequests += 1
        route, iface = self.network.route(dst)
        mtu = self.network.path_mtu(dst, iface)
        size = ipv6.HEADER_LEN + len(payload)

        device_offload = None
        if offload is not None:
            # The stack puts no extension headers before TCP, so TCP starts right after the fixed header.
            device_offload = frame_offload(self.network.device_offloads(iface), offload, ip_header_len=ipv6.HEADER_LEN,
                                           packet_len=size, mtu=mtu, gso_type=GSO_TCPV6)
        if size <= mtu or device_offload is not None and device_offload.gso_type != GSO_NONE:
            packet = ipv6.build(src, dst, protocol, payload, hop_limit=hop_limit, traffic_class=traffic_class)
            self.network.send_ipv6_packet(route, iface, dst, packet, device_offload)
            return
        if not fragment:
            counters.FragFails += 1
            raise NetworkError(errno.EMSGSIZE, f"datagram of {ipv6.HEADER_LEN + len(payload)} bytes exceeds "
                                               f"path MTU {mtu} to {_fmt(dst)}")

        # RFC 8200 section 4.5: every fragment but the last carries a multiple of 8 bytes.
        chunk = (mtu - ipv6.HEADER_LEN - ipv6.FRAGMENT_HEADER_LEN) // 8 * 8
        self._ident = (self._ident + 1) & 0xFFFFFFFF
        view = memoryview(payload)
        for offset in range(0, len(view), chunk):
            piece = view[offset:offset + chunk]
            more = offset + chunk < len(view)
            body = ipv6.build_fragment(protocol, offset, more, self._ident) + bytes(piece)
            packet = ipv6.build(src, dst, ipv6.NEXT_HEADER_FRAGMENT, body, hop_limit=hop_limit,
                                traffic_class=traffic_class)
            self.network.send_ipv6_packet(route, iface, dst, packet)
            counters.FragCreates += 1
        counters.FragOKs += 1

    def _send(self, src: bytes, dst: bytes, message: bytes, *, hop_limit: int = DEFAULT_HOP_LIMIT,
              traffic_class: int = 0) -> bool:
        """Send an ICMPv6 message; return False (counted as OutErrors) when it cannot leave."""
        try:
            self.output(src, dst, ipv6.NEXT_HEADER_ICMPV6, message, hop_limit=hop_limit, traffic_class=traffic_class)
        except NetworkError as error:
            self.icmp_counters.OutErrors += 1
            log.debug("ICMPv6 to %s not sent: %s", _fmt(dst), error)
            return False
        return True

    def send_error(self, header: ipv6.Ipv6Repr, packet: bytes, type_: int, code: int, rest: int,
                   link_multicast: bool, about_option: bool = False) -> None:
        """Send an ICMPv6 error about a received packet, following RFC 4443 section 2.4 (e) and (f).

        No error goes to an unspecified or multicast source, or about a packet
        sent to a multicast group (Packet Too Big and unknown options aside),
        or about an ICMPv6 error. Errors are rate limited per destination,
        except to the loopback device, as Linux does.
        """
        if ipv6.is_unspecified(header.src) or ipv6.is_multicast(header.src):
            return
        exempt = type_ == icmpv6.TYPE_PACKET_TOO_BIG or about_option
        if (ipv6.is_multicast(header.dst) or link_multicast) and not exempt:
            return
        if _quotes_icmp_error(packet):
            return
        counters = self.icmp_counters
        local = self.network.is_local(header.src)
        if type_ != icmpv6.TYPE_PACKET_TOO_BIG and not local and not self._limiter.allow(header.src):
            counters.OutRateLimited += 1
            return

        try:
            source = header.dst if not ipv6.is_multicast(header.dst) and self.network.is_local(header.dst) \
                else self.network.source_for(header.src)
        except NetworkError:
            counters.OutErrors += 1
            return
        message = icmpv6.build_error(source, header.src, type_, code, packet, rest)
        if not self._send(source, header.src, message):
            return
        counters.OutMsgs += 1
        counter = {icmpv6.TYPE_DEST_UNREACHABLE: "OutDestUnreachs", icmpv6.TYPE_PACKET_TOO_BIG: "OutPktTooBigs",
                   icmpv6.TYPE_TIME_EXCEEDED: "OutTimeExcds", icmpv6.TYPE_PARAMETER_PROBLEM: "OutParmProblems"}[type_]
        setattr(counters, counter, getattr(counters, counter) + 1)


def quoted_transport(quote: bytes | memoryview) -> tuple[int, bytes, bytes, int, int] | None:
    """Find (protocol, src, dst, src port, dst port) in the IPv6 packet an ICMPv6 error quotes.

    Returns None when the quote is too short to hold the fixed header, the
    extension headers and the first four bytes of the upper-layer header.
    """
    view = memoryview(quote)
    if len(view) < ipv6.HEADER_LEN + 4 or view[0] >> 4 != 6:
        return None
    upper = _upper_layer(view)
    if upper is None or len(view) < upper[1] + 4:
        return None
    next_header, offset = upper
    ports = view[offset:offset + 4]
    return (next_header, bytes(view[8:24]), bytes(view[24:40]), int.from_bytes(ports[:2], "big"),
            int.from_bytes(ports[2:], "big"))


def _upper_layer(view: memoryview) -> tuple[int, int] | None:
    """Return the upper-layer protocol of an IPv6 packet and its header's offset, past the extension headers.

    Returns None for a malformed chain, a chain longer than
    MAX_EXTENSION_HEADERS, or a fragment other than the first, because only
    the first fragment contains the upper-layer header.
    """
    next_header, offset = view[6], ipv6.HEADER_LEN
    for _ in range(MAX_EXTENSION_HEADERS):
        if not ipv6.is_extension_header(next_header):
            return next_header, offset
        try:
            length = ipv6.extension_header_length(next_header, view[offset:])
        except MalformedError:
            return None
        if next_header == ipv6.NEXT_HEADER_FRAGMENT and ipv6.parse_fragment(view[offset:]).offset:
            return None
        next_header = view[offset]
        offset += length
    return None


def icmpv6_errno(type_: int, code: int) -> int:
    """Return the errno Linux gives a socket for an ICMPv6 error (icmpv6_err_convert in net/ipv6/icmp.c)."""
    if type_ == icmpv6.TYPE_DEST_UNREACHABLE:
        return {0: errno.ENETUNREACH, 1: errno.EACCES, 2: errno.EHOSTUNREACH, 3: errno.EHOSTUNREACH,
                4: errno.ECONNREFUSED, 5: errno.EACCES, 6: errno.EACCES}.get(code, errno.EHOSTUNREACH)
    if type_ == icmpv6.TYPE_PACKET_TOO_BIG:
        return errno.EMSGSIZE
    if type_ == icmpv6.TYPE_PARAMETER_PROBLEM:
        return errno.EPROTO
    return errno.EHOSTUNREACH


def _is_hard(message: icmpv6.Icmpv6Repr) -> bool:
    """Tell whether Linux treats the error as fatal for a connection (the ``fatal`` column of icmpv6_err_convert)."""
    if message.type == icmpv6.TYPE_DEST_UNREACHABLE:
        return message.code in (1, 4, 5, 6)
    return message.type == icmpv6.TYPE_PARAMETER_PROBLEM


def _quotes_icmp_error(packet: bytes) -> bool:
    """Tell whether ``packet`` carries an ICMPv6 error or a redirect, about which no error is sent."""
    view = memoryview(packet)
    upper = _upper_layer(view)
    if upper is None:
        return False
    next_header, offset = upper
    if next_header != ipv6.NEXT_HEADER_ICMPV6 or len(view) <= offset:
        return False
    return icmpv6.is_error(view[offset]) or view[offset] == icmpv6.TYPE_REDIRECT


def _link_local_from_mac(mac: bytes) -> bytes:
    """Return fe80:: with the modified EUI-64 interface identifier of ``mac`` (RFC 4291 appendix A)."""
    identifier = bytes((mac[0] ^ 0x02,)) + mac[1:3] + b"\xff\xfe" + mac[3:6]
    return bytes.fromhex("fe80000000000000") + identifier


def _fmt(ip: bytes) -> str:
    return str(ipaddress.ip_address(ip))
