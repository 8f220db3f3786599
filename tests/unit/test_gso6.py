"""IPv6 TCP output with checksum offload and GSO: the virtio-net metadata the
stack attaches (GSO_TCPV6), linkd's software GSO of TCPv6 frames checked with
dpkt, and GRO'd TCPv6 frames on receive."""

import errno

import dpkt
import pytest

from sandnet_linkd import gso, vnet
from sandnet_stackd.counters import Counters
from sandnet_stackd.header import ethernet, ipv6
from sandnet_stackd.header import tcp as tcp_header
from sandnet_stackd.header.checksum import pseudo_header_sum, transport_checksum_ok
from sandnet_stackd.interface import Address, Interface
from sandnet_stackd.network import Network
from sandnet_stackd.network_error import NetworkError
from sandnet_stackd.offload import (
    GSO_NONE, GSO_TCPV4, GSO_TCPV6, NEEDS_CSUM, NO_OFFLOADS, DeviceOffloads, FrameOffload, TransportOffload,
    frame_offload)

OUR_MAC = bytes.fromhex("020000000002")
PEER_MAC = bytes.fromhex("020000000001")
OUR_IP6 = bytes.fromhex("fd000000000000000000000000000002")
PEER_IP6 = bytes.fromhex("fd000000000000000000000000000001")
MTU = 1500
PROTO_TCP = 6
# What linkd reports with a virtio-net header or software GSO.
GSO_DEVICE = DeviceOffloads(checksum=True, gso_max_size=65535)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Harness:
    """A Network with one Ethernet interface whose frames land in ``sent`` with their offloads."""

    def __init__(self, offloads: DeviceOffloads = GSO_DEVICE):
        self.clock = Clock()
        self.counters = Counters()
        self.network = Network(self.clock, self.counters, lambda fn: fn())
        self.sent: list[tuple[bytes, FrameOffload | None]] = []
        self.iface = Interface(index=2, name="eth0", mtu=MTU, mac=OUR_MAC, addresses=[Address(OUR_IP6, 64)])
        self.iface.transmit = lambda frame, offload=None: self.sent.append((frame, offload))
        self.network.add_interface(self.iface, [])
        self.network.set_offloads("eth0", offloads)
        self.network.neighbors6("eth0").on_solicitation(PEER_IP6, PEER_MAC)


def partial_segment(payload: bytes, flags: int = tcp_header.ACK, seq: int = 1000,
                    src: bytes = OUR_IP6, dst: bytes = PEER_IP6) -> bytes:
    """Build a TCP segment whose checksum field contains the IPv6 pseudo-header sum (CHECKSUM_PARTIAL)."""
    repr_ = tcp_header.TcpRepr(src_port=40000, dst_port=80, seq=seq, ack=5, flags=flags, window=512)
    segment = bytearray(tcp_header.build(repr_, src, dst))
    segment += payload
    segment[16:18] = pseudo_header_sum(src, dst, PROTO_TCP, len(segment)).to_bytes(2, "big")
    return bytes(segment)


def tcp6_frame(segment: bytes, extension_headers: bytes = b"", next_header: int = PROTO_TCP) -> bytes:
    """Wrap a TCP segment in IPv6 and Ethernet, after ``extension_headers`` whose chain starts with ``next_header``."""
    packet = ipv6.build(OUR_IP6, PEER_IP6, next_header, extension_headers + segment, hop_limit=64)
    return ethernet.build(PEER_MAC, OUR_MAC, ethernet.ETHERTYPE_IPV6, packet)


def gso_header(gso_size: int, ip_size: int = 40) -> vnet.VnetHeader:
    return vnet.VnetHeader(flags=vnet.FLAG_NEEDS_CSUM, gso_type=vnet.GSO_TCPV6, hdr_len=14 + ip_size + 20,
                           gso_size=gso_size, csum_start=14 + ip_size, csum_offset=16)


def destination_options(next_header: int) -> bytes:
    """An 8-byte Destination Options (or Hop-by-Hop) header with a PadN option."""
    return bytes((next_header, 0, 1, 4, 0, 0, 0, 0))


# The pure helper that maps a transport offload to virtio-net metadata.

def test_frame_offload_small_packet_needs_csum_only():
    result = frame_offload(GSO_DEVICE, TransportOffload(header_len=32), ip_header_len=40, packet_len=1000,
                           mtu=MTU, gso_type=GSO_TCPV6)
    assert result == FrameOffload(flags=NEEDS_CSUM, gso_type=GSO_NONE, hdr_len=14 + 40 + 32, gso_size=0,
                                  csum_start=54, csum_offset=16)


def test_frame_offload_oversized_packet_is_tcpv6_gso():
    result = frame_offload(GSO_DEVICE, TransportOffload(header_len=32, gso_size=1428), ip_header_len=40,
                           packet_len=40 + 32 + 10 * 1428, mtu=MTU, gso_type=GSO_TCPV6)
    assert result == FrameOffload(flags=NEEDS_CSUM, gso_type=GSO_TCPV6, hdr_len=86, gso_size=1428,
                                  csum_start=54, csum_offset=16)


def test_frame_offload_gso_size_fits_lower_mtu():
    # An MSS learned before the path MTU dropped to 1280 still yields packets of at most 1280 bytes.
    result = frame_offload(GSO_DEVICE, TransportOffload(header_len=32, gso_size=1428), ip_header_len=40,
                           packet_len=40 + 32 + 10 * 1428, mtu=1280, gso_type=GSO_TCPV6)
    assert result is not None
    assert result.gso_size == 1280 - 40 - 32


def test_frame_offload_ipv4_header_offsets():
    result = frame_offload(GSO_DEVICE, TransportOffload(header_len=20, gso_size=1460), ip_header_len=20,
                           packet_len=20000, mtu=MTU, gso_type=GSO_TCPV4)
    assert result is not None
    assert (result.gso_type, result.csum_start, result.hdr_len, result.gso_size) == (GSO_TCPV4, 34, 54, 1460)


@pytest.mark.parametrize("case, offloads, gso_size, packet_len", [
    ("no checksum offload", DeviceOffloads(checksum=False, gso_max_size=65535), 1428, 1000),
    ("no device GSO", DeviceOffloads(checksum=True, gso_max_size=0), 1428, 20000),
    ("no gso_size", GSO_DEVICE, 0, 20000),
    ("larger than the device takes", DeviceOffloads(checksum=True, gso_max_size=16000), 1428, 20000),
])
def test_frame_offload_rejects(case, offloads, gso_size, packet_len):
    assert frame_offload(offloads, TransportOffload(header_len=32, gso_size=gso_size), ip_header_len=40,
                         packet_len=packet_len, mtu=MTU, gso_type=GSO_TCPV6) is None


# IPv6 output through the network layer.

def test_offloads_for_ipv6_reports_device():
    harness = Harness()
    assert harness.network.offloads_for(PEER_IP6) == GSO_DEVICE
    assert harness.network.offloads_for(OUR_IP6) == NO_OFFLOADS  # a local address routes to loopback
    assert harness.network.offloads_for(bytes(15) + b"\x01") == NO_OFFLOADS


def test_ipv6_output_sends_one_gso_frame():
    harness = Harness()
    payload = bytes(range(256)) * 100
    segment = partial_segment(payload)
    header_len = len(segment) - len(payload)
    harness.network.output(OUR_IP6, PEER_IP6, PROTO_TCP, segment,
                           offload=TransportOffload(header_len=header_len, gso_size=1440))

    assert len(harness.sent) == 1
    frame, offload = harness.sent[0]
    assert offload == FrameOffload(flags=NEEDS_CSUM, gso_type=GSO_TCPV6, hdr_len=14 + 40 + header_len,
                                   gso_size=1440, csum_start=54, csum_offset=16)
    eth, packet = ethernet.parse(frame)
    header, body = ipv6.parse(packet)
    assert eth.ethertype == ethernet.ETHERTYPE_IPV6
    assert header.payload_length == len(segment)
    assert bytes(body) == segment


def test_ipv6_output_small_segment_needs_csum():
    harness = Harness()
    segment = partial_segment(b"hello")
    harness.network.output(OUR_IP6, PEER_IP6, PROTO_TCP, segment, offload=TransportOffload(header_len=20))

    frame, offload = harness.sent[0]
    assert offload is not None
    assert offload.gso_type == GSO_NONE
    assert offload.flags == NEEDS_CSUM
    done = gso.complete_checksum(frame, vnet.VnetHeader(flags=offload.flags, csum_start=offload.csum_start,
                                                        csum_offset=offload.csum_offset))
    assert transport_checksum_ok(OUR_IP6, PEER_IP6, PROTO_TCP, done[54:])


def test_ipv6_output_gso_size_follows_path_mtu():
    harness = Harness()
    assert harness.network.update_path_mtu(PEER_IP6, 1280)
    segment = partial_segment(bytes(20000))
    harness.network.output(OUR_IP6, PEER_IP6, PROTO_TCP, segment,
                           offload=TransportOffload(header_len=20, gso_size=1440))

    offload = harness.sent[0][1]
    assert offload.gso_type == GSO_TCPV6
    assert offload.gso_size == 1280 - 40 - 20


def test_ipv6_output_without_device_gso_rejects_oversized():
    harness = Harness(DeviceOffloads(checksum=True, gso_max_size=0))
    with pytest.raises(NetworkError) as raised:
        harness.network.output(OUR_IP6, PEER_IP6, PROTO_TCP, partial_segment(bytes(5000)),
                               offload=TransportOffload(header_len=20, gso_size=1440))
    assert raised.value.errno == errno.EMSGSIZE
    assert harness.sent == []


def test_ipv6_output_without_offload_is_plain():
    harness = Harness()
    harness.network.output(OUR_IP6, PEER_IP6, PROTO_TCP, bytes(100))
    assert [offload for _, offload in harness.sent] == [None]


# Software GSO of TCPv6 frames in linkd.

def parse_segments(frames: list[bytes]) -> list[tuple[dpkt.ip6.IP6, dpkt.tcp.TCP]]:
    parsed = []
    for data in frames:
        ip = dpkt.ethernet.Ethernet(data).data
        assert isinstance(ip, dpkt.ip6.IP6)
        parsed.append((ip, ip.data))
    return parsed


def test_segment_tcpv6_headers_and_flags():
    payload = bytes(range(256)) * 40
    flags = tcp_header.ACK | tcp_header.PSH | tcp_header.FIN | tcp_header.CWR
    frames = gso.segment(tcp6_frame(partial_segment(payload, flags)), gso_header(1440))

    assert len(frames) == 8
    joined = b""
    for index, (ip, tcp) in enumerate(parse_segments(frames)):
        data = frames[index]
        assert len(data) <= MTU + 14
        assert ip.plen == len(data) - 14 - 40
        assert ip.hlim == 64
        assert transport_checksum_ok(OUR_IP6, PEER_IP6, PROTO_TCP, data[54:])
        assert tcp.seq == 1000 + index * 1440
        last = index == len(frames) - 1
        assert bool(tcp.flags & dpkt.tcp.TH_FIN) == last
        assert bool(tcp.flags & dpkt.tcp.TH_PUSH) == last
        assert bool(tcp.flags & dpkt.tcp.TH_CWR) == (index == 0)
        assert tcp.flags & dpkt.tcp.TH_ACK
        joined += tcp.data
    assert joined == payload


def test_segment_tcpv6_sequence_wraps():
    frames = gso.segment(tcp6_frame(partial_segment(bytes(3000), seq=0xFFFFFF00)), gso_header(1440))
    assert [tcp.seq for _, tcp in parse_segments(frames)] == [
        0xFFFFFF00, (0xFFFFFF00 + 1440) & 0xFFFFFFFF, (0xFFFFFF00 + 2880) & 0xFFFFFFFF]


@pytest.mark.parametrize("case, first, extensions", [
    ("hop-by-hop and destination options", ipv6.NEXT_HEADER_HOP_BY_HOP,
     destination_options(ipv6.NEXT_HEADER_DEST_OPTS) + destination_options(PROTO_TCP)),
    ("routing without segments left", ipv6.NEXT_HEADER_ROUTING,
     bytes((ipv6.NEXT_HEADER_DEST_OPTS, 0, 4, 0, 0, 0, 0, 0)) + destination_options(PROTO_TCP)),
])
def test_segment_tcpv6_with_extension_headers(case, first, extensions):
    payload = bytes(range(200)) * 20
    frame = tcp6_frame(partial_segment(payload), extensions, next_header=first)
    frames = gso.segment(frame, gso_header(1000, ip_size=56))

    assert len(frames) == 4
    joined = b""
    for data in frames:
        assert int.from_bytes(data[18:20], "big") == len(data) - 54
        assert data[54:70] == extensions
        assert transport_checksum_ok(OUR_IP6, PEER_IP6, PROTO_TCP, data[70:])
        joined += data[90:]
    assert joined == payload


@pytest.mark.parametrize("case, extensions, next_header, reason", [
    ("fragment header", bytes((PROTO_TCP, 0, 0, 0, 0, 0, 0, 1)), ipv6.NEXT_HEADER_FRAGMENT, "next header 44"),
    ("routing with segments left", bytes((PROTO_TCP, 0, 0, 1, 0, 0, 0, 0)), ipv6.NEXT_HEADER_ROUTING,
     "segments left"),
    ("hop-by-hop not first", destination_options(ipv6.NEXT_HEADER_HOP_BY_HOP) + destination_options(PROTO_TCP),
     ipv6.NEXT_HEADER_DEST_OPTS, "Hop-by-Hop"),
    ("udp", b"", 17, "next header 17"),
])
def test_segment_tcpv6_rejects(case, extensions, next_header, reason):
    frame = tcp6_frame(partial_segment(bytes(3000)), extensions, next_header=next_header)
    with pytest.raises(gso.GsoError, match=reason):
        gso.segment(frame, gso_header(1000, ip_size=40 + len(extensions)))


def test_segment_tcpv6_rejects_ipv4_frame():
    frame = bytearray(tcp6_frame(partial_segment(bytes(3000))))
    frame[12:14] = b"\x08\x00"
    with pytest.raises(gso.GsoError, match="ethertype 0x0800"):
        gso.segment(bytes(frame), gso_header(1000))


# Receive: a GRO'd TCPv6 frame from the kernel.

@pytest.mark.parametrize("flags", [vnet.FLAG_DATA_VALID, vnet.FLAG_NEEDS_CSUM])
def test_gro_tcpv6_frame_accepted(flags):
    harness = Harness()
    delivered = []
    harness.network.register(PROTO_TCP, lambda iface, info, upper, valid: delivered.append((info, bytes(upper), valid)))
    payload = bytes(range(256)) * 200
    segment = partial_segment(payload, src=PEER_IP6, dst=OUR_IP6)
    packet = ipv6.build(PEER_IP6, OUR_IP6, PROTO_TCP, segment)
    frame = ethernet.build(OUR_MAC, PEER_MAC, ethernet.ETHERTYPE_IPV6, packet)
    header = vnet.VnetHeader(flags=flags, gso_type=vnet.GSO_TCPV6, hdr_len=74, gso_size=1440, csum_start=54,
                             csum_offset=16)
    assert vnet.check_received(len(frame), header) is None

    # The stack's link client trusts the checksum of a frame with DATA_VALID or NEEDS_CSUM.
    harness.network.receive_frame(harness.iface, frame, True)

    assert len(delivered) == 1
    info, upper, valid = delivered[0]
    assert valid
    seg = tcp_header.parse(upper, info.src, info.dst, verify_checksum=not valid)
    assert bytes(seg.payload) == payload
    assert harness.counters.ip6.InDelivers == 1
