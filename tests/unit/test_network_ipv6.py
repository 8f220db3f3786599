"""The network layer's IPv6 and fragment handling, fed frames directly with a fake clock."""

import struct

import pytest

from sandnet_stackd.counters import Counters
from sandnet_stackd.header import ethernet, icmp, icmpv6, ipv4, ipv6
from sandnet_stackd.interface import Address, Interface
from sandnet_stackd.network import IcmpError, Network
from sandnet_stackd.route import Route

OUR_MAC = bytes.fromhex("020000000002")
PEER_MAC = bytes.fromhex("020000000001")
OUR_IP6 = bytes.fromhex("fd000000000000000000000000000002")
PEER_IP6 = bytes.fromhex("fd000000000000000000000000000001")
OUR_IP4 = bytes([10, 0, 0, 2])
PEER_IP4 = bytes([10, 0, 0, 1])


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Harness:
    """A Network with one Ethernet interface whose frames land in ``sent``."""

    def __init__(self):
        self.clock = Clock()
        self.counters = Counters()
        self.network = Network(self.clock, self.counters, lambda fn: fn())
        self.sent: list[bytes] = []
        self.errors: list[IcmpError] = []
        self.iface = Interface(index=2, name="eth0", mtu=1500, mac=OUR_MAC,
                               addresses=[Address(OUR_IP4, 24), Address(OUR_IP6, 64)])
        self.iface.transmit = self.sent.append
        self.network.add_interface(self.iface, [])
        self.network.icmp_error_handler = self.errors.append
        # The peer is a known neighbor in both families.
        self.network.neighbors6("eth0").on_solicitation(PEER_IP6, PEER_MAC)
        self.network.neighbors("eth0").update(PEER_IP4, PEER_MAC, create=True)

    def receive6(self, next_header: int, payload: bytes, src: bytes = PEER_IP6, hop_limit: int = 64) -> None:
        packet = ipv6.build(src, OUR_IP6, next_header, payload, hop_limit=hop_limit)
        self.network.receive_frame(self.iface, ethernet.build(OUR_MAC, PEER_MAC, ethernet.ETHERTYPE_IPV6, packet), False)

    def receive4(self, packet: bytes) -> None:
        self.network.receive_frame(self.iface, ethernet.build(OUR_MAC, PEER_MAC, ethernet.ETHERTYPE_IPV4, packet), False)

    def icmpv6_sent(self) -> list[icmpv6.Icmpv6Repr]:
        messages = []
        for frame in self.sent:
            eth, payload = ethernet.parse(frame)
            if eth.ethertype != ethernet.ETHERTYPE_IPV6:
                continue
            header, body = ipv6.parse(payload)
            if header.next_header == ipv6.NEXT_HEADER_ICMPV6:
                messages.append(icmpv6.parse(body, header.src, header.dst))
        return messages

    def icmp_sent(self) -> list[icmp.IcmpRepr]:
        messages = []
        for frame in self.sent:
            eth, payload = ethernet.parse(frame)
            if eth.ethertype == ethernet.ETHERTYPE_IPV4:
                header, body = ipv4.parse(payload)
                if header.protocol == ipv4.PROTO_ICMP:
                    messages.append(icmp.parse(body))
        return messages


@pytest.fixture
def harness():
    return Harness()


def echo(seq: int = 1, data: bytes = b"data") -> bytes:
    return icmpv6.build_echo(PEER_IP6, OUR_IP6, icmpv6.TYPE_ECHO_REQUEST, 7, seq, data)


def test_echo_request_gets_reply(harness):
    harness.receive6(ipv6.NEXT_HEADER_ICMPV6, echo())

    replies = [m for m in harness.icmpv6_sent() if m.type == icmpv6.TYPE_ECHO_REPLY]
    assert len(replies) == 1
    assert bytes(replies[0].payload) == b"data"


def test_reassembly_timeout_sends_time_exceeded(harness):
    first = ipv6.build_fragment(ipv6.NEXT_HEADER_ICMPV6, 0, True, 99) + echo(data=bytes(24))[:16]
    harness.receive6(ipv6.NEXT_HEADER_FRAGMENT, first)

    harness.clock.now += 61
    harness.network.on_timer()

    exceeded = [m for m in harness.icmpv6_sent() if m.type == icmpv6.TYPE_TIME_EXCEEDED]
    assert [m.code for m in exceeded] == [icmpv6.CODE_REASSEMBLY_TIME_EXCEEDED]
    assert harness.counters.ip6.ReasmTimeout == 1


def test_ipv4_reassembly_timeout_sends_time_exceeded(harness):
    udp = struct.pack("!HHHH", 5000, 9, 24, 0) + bytes(16)
    harness.receive4(ipv4.build(PEER_IP4, OUR_IP4, ipv4.PROTO_UDP, udp[:16], ident=7, dont_fragment=False,
                                more_fragments=True))

    harness.clock.now += 31
    harness.network.on_timer()

    exceeded = [m for m in harness.icmp_sent() if m.type == icmp.TYPE_TIME_EXCEEDED]
    assert [m.code for m in exceeded] == [1]
    assert harness.counters.ip.ReasmTimeout == 1


def test_ipv4_fragments_are_reassembled(harness):
    message = icmp.build_echo(icmp.TYPE_ECHO_REQUEST, 1, 1, bytes(range(200)) * 10)
    for offset in (1600, 0, 800):
        piece = message[offset:offset + 800]
        harness.receive4(ipv4.build(PEER_IP4, OUR_IP4, ipv4.PROTO_ICMP, piece, ident=9, dont_fragment=False,
                                    more_fragments=offset + 800 < len(message), fragment_offset=offset))

    assert harness.counters.ip.ReasmOKs == 1
    assert harness.counters.icmp.InEchos == 1


def test_error_quoting_a_packet_never_sent_is_dropped(harness):
    # The quoted packet's source is not ours.
    quoted = ipv6.build(PEER_IP6, bytes.fromhex("fd00000000000000000000000000abcd"), ipv6.NEXT_HEADER_UDP,
                        struct.pack("!HHHH", 1, 2, 8, 0))
    message = icmpv6.build(PEER_IP6, OUR_IP6, icmpv6.TYPE_PACKET_TOO_BIG, 0, 1280, quoted)

    harness.receive6(ipv6.NEXT_HEADER_ICMPV6, message)

    assert harness.counters.icmp6.InErrors == 1
    assert harness.errors == []


def test_packet_too_big_lowers_path_mtu(harness):
    far = bytes.fromhex("fd00000000000000000000000000beef")
    harness.network.routes.add(Route(family=6, dst=bytes(16), dst_len=0, device="eth0", gateway=PEER_IP6))
    quoted = ipv6.build(OUR_IP6, far, ipv6.NEXT_HEADER_TCP, struct.pack("!HHII", 40000, 80, 1, 0) + bytes(1400))
    message = icmpv6.build_error(PEER_IP6, OUR_IP6, icmpv6.TYPE_PACKET_TOO_BIG, 0, quoted, rest=1300)

    harness.receive6(ipv6.NEXT_HEADER_ICMPV6, message)

    assert harness.network.path_mtu(far) == 1300
    assert harness.network.mss_for(far) == 1240
    assert [(e.protocol, e.local_port, e.remote_port, e.mtu) for e in harness.errors] == [(6, 40000, 80, 1300)]


def test_packet_too_big_never_goes_below_1280(harness):
    quoted = ipv6.build(OUR_IP6, PEER_IP6, ipv6.NEXT_HEADER_UDP, struct.pack("!HHHH", 1, 2, 8, 0))
    message = icmpv6.build_error(PEER_IP6, OUR_IP6, icmpv6.TYPE_PACKET_TOO_BIG, 0, quoted, rest=600)

    harness.receive6(ipv6.NEXT_HEADER_ICMPV6, message)

    assert harness.network.path_mtu(PEER_IP6) == 1280


def test_large_datagram_is_fragmented_at_path_mtu(harness):
    harness.network.output(OUR_IP6, PEER_IP6, ipv6.NEXT_HEADER_UDP, bytes(4000), dont_fragment=False)

    sizes = [len(frame) - ethernet.HEADER_LEN for frame in harness.sent]
    assert len(sizes) == 3
    assert max(sizes) <= 1500
    assert harness.counters.ip6.FragCreates == 3


def test_port_unreachable_is_rate_limited_per_destination(harness):
    # A UDP layer with no socket: every datagram draws port unreachable.
    harness.network.register(ipv6.NEXT_HEADER_UDP,
                             lambda iface, header, payload, valid: harness.network.send_port_unreachable(header, payload))
    datagram = struct.pack("!HHHH", 5000, 9, 8, 0)
    for _ in range(10):
        harness.receive6(ipv6.NEXT_HEADER_UDP, datagram)

    unreachable = [m for m in harness.icmpv6_sent() if m.type == icmpv6.TYPE_DEST_UNREACHABLE]
    assert len(unreachable) == 6
    assert harness.counters.icmp6.OutRateLimited == 4


def test_unknown_next_header_gets_parameter_problem(harness):
    harness.receive6(253, bytes(8))

    problems = [m for m in harness.icmpv6_sent() if m.type == icmpv6.TYPE_PARAMETER_PROBLEM]
    assert [(m.code, m.pointer) for m in problems] == [(icmpv6.CODE_UNRECOGNIZED_NEXT_HEADER, 6)]


def test_extension_header_loop_is_dropped(harness):
    chain = echo()
    next_header = ipv6.NEXT_HEADER_ICMPV6
    for _ in range(20):
        chain = bytes((next_header, 0, 1, 4, 0, 0, 0, 0)) + chain
        next_header = ipv6.NEXT_HEADER_DEST_OPTS

    harness.receive6(ipv6.NEXT_HEADER_DEST_OPTS, chain)

    assert harness.icmpv6_sent() == []
    assert harness.counters.ip6.InHdrErrors == 1


def test_truncated_extension_header_is_counted(harness):
    harness.receive6(ipv6.NEXT_HEADER_DEST_OPTS, bytes((58, 3, 1, 4)))

    assert harness.counters.ip6.InTruncatedPkts == 1
    assert harness.icmpv6_sent() == []


def test_fragment_flood_stays_within_memory_bound(harness):
    for ident in range(4000):
        piece = ipv6.build_fragment(ipv6.NEXT_HEADER_UDP, 8, True, ident) + bytes(1224)
        harness.receive6(ipv6.NEXT_HEADER_FRAGMENT, piece)

    assert harness.network.ipv6.reassembly_memory <= 4 * 1024 * 1024
    assert harness.counters.ip6.ReasmFails > 0

    harness.clock.now += 61
    harness.network.on_timer()
    assert harness.network.ipv6.reassembly_memory == 0
    # Only datagrams whose first fragment arrived get time exceeded.
    assert [m for m in harness.icmpv6_sent() if m.type == icmpv6.TYPE_TIME_EXCEEDED] == []


def test_neighbor_advertisement_for_unknown_address_is_ignored(harness):
    stranger = bytes.fromhex("fd000000000000000000000000000077")
    message = icmpv6.build_neighbor_advertisement(stranger, OUR_IP6, stranger, PEER_MAC, icmpv6.NA_FLAG_OVERRIDE)

    harness.receive6(ipv6.NEXT_HEADER_ICMPV6, message, src=stranger, hop_limit=255)

    assert harness.network.neighbors6("eth0").state(stranger) is None
    assert harness.counters.ndp6.InUnsolicitedIgnored == 1


def test_router_advertisement_sets_default_route_and_mtu(harness):
    router = bytes.fromhex("fe800000000000000000000000000001")
    body = bytes(8) + bytes((5, 1, 0, 0)) + (1400).to_bytes(4, "big")
    message = icmpv6.build(router, OUR_IP6, icmpv6.TYPE_ROUTER_ADVERTISEMENT, 0, (64 << 24) | 600, body)

    harness.receive6(ipv6.NEXT_HEADER_ICMPV6, message, src=router, hop_limit=255)

    defaults = [r for r in harness.network.routes.routes() if r.family == 6 and r.dst_len == 0]
    assert [(r.gateway, r.protocol) for r in defaults] == [(router, "ra")]
    assert harness.iface.ipv6_mtu == 1400
    assert harness.network.path_mtu(bytes.fromhex("2001db80000000000000000000000001")) == 1400


def dad_probes(harness) -> list[icmpv6.Icmpv6Repr]:
    probes = []
    for frame in harness.sent:
        eth, payload = ethernet.parse(frame)
        if eth.ethertype != ethernet.ETHERTYPE_IPV6:
            continue
        header, body = ipv6.parse(payload)
        if header.next_header == ipv6.NEXT_HEADER_ICMPV6 and ipv6.is_unspecified(header.src):
            message = icmpv6.parse(body, header.src, header.dst)
            if message.type == icmpv6.TYPE_NEIGHBOR_SOLICITATION:
                probes.append(message)
    return probes


LINK_LOCAL = bytes.fromhex("fe80000000000000" + "000000fffe000002")  # from OUR_MAC by modified EUI-64


def test_link_local_from_mac_passes_dad(harness):
    harness.network.announce(harness.iface)

    probes = dad_probes(harness)
    assert len(probes) == 1
    assert icmpv6.parse_ndp(probes[0]).target == LINK_LOCAL
    assert not harness.iface.owns(LINK_LOCAL)

    harness.clock.now += 1.1
    harness.network.on_timer()

    assert harness.iface.owns(LINK_LOCAL)
    assert any(r.dst_len == 64 and r.dst[:2] == b"\xfe\x80" for r in harness.network.routes.routes())


def test_advertisement_for_tentative_address_fails_dad(harness):
    harness.network.announce(harness.iface)
    all_nodes = bytes.fromhex("ff020000000000000000000000000001")
    advertisement = icmpv6.build_neighbor_advertisement(PEER_IP6, all_nodes, LINK_LOCAL, PEER_MAC,
                                                        icmpv6.NA_FLAG_OVERRIDE)
    packet = ipv6.build(PEER_IP6, all_nodes, ipv6.NEXT_HEADER_ICMPV6, advertisement, hop_limit=255)
    harness.network.receive_frame(harness.iface, ethernet.build(b"\x33\x33\x00\x00\x00\x01", PEER_MAC,
                                                                ethernet.ETHERTYPE_IPV6, packet), False)

    harness.clock.now += 1.1
    harness.network.on_timer()

    assert not harness.iface.owns(LINK_LOCAL)
    assert harness.iface.tentative(LINK_LOCAL) is None
    assert harness.counters.ndp6.DadFailures == 1


def test_handed_over_link_local_skips_dad(harness):
    harness.iface.addresses.append(Address(LINK_LOCAL, 64, scope="link"))
    harness.network.announce(harness.iface)

    assert dad_probes(harness) == []
