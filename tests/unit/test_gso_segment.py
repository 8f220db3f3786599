"""Software GSO in linkd: cutting TCP frames and filling partial checksums,
checked against dpkt's parsing and the stack's checksum code."""

import socket

import dpkt
import pytest

from sandnet_linkd import gso, vnet
from sandnet_stackd.header.checksum import ones_complement_sum, pseudo_header_sum, transport_checksum_ok

SRC4, DST4 = socket.inet_aton("10.0.0.2"), socket.inet_aton("10.0.0.1")
SRC6, DST6 = socket.inet_pton(socket.AF_INET6, "fd00::2"), socket.inet_pton(socket.AF_INET6, "fd00::1")
MAC_A, MAC_B = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"


def partial_tcp(src: bytes, dst: bytes, payload: bytes, flags: int, seq: int = 1000) -> dpkt.tcp.TCP:
    """Build a TCP segment whose checksum field contains the pseudo-header sum, as in a NEEDS_CSUM frame."""
    tcp = dpkt.tcp.TCP(sport=40000, dport=80, seq=seq, ack=5, flags=flags, win=512, data=payload)
    tcp.sum = pseudo_header_sum(src, dst, 6, len(tcp))
    return tcp


def tcp4_frame(payload: bytes, flags: int, seq: int = 1000) -> bytes:
    ip = dpkt.ip.IP(src=SRC4, dst=DST4, p=6, ttl=64, id=100, df=1,
                    data=partial_tcp(SRC4, DST4, payload, flags, seq))
    ip.len = len(ip)
    return bytes(dpkt.ethernet.Ethernet(dst=MAC_B, src=MAC_A, type=dpkt.ethernet.ETH_TYPE_IP, data=ip))


def tcp6_frame(payload: bytes, flags: int) -> bytes:
    tcp = partial_tcp(SRC6, DST6, payload, flags)
    ip = dpkt.ip6.IP6(src=SRC6, dst=DST6, nxt=6, hlim=64, plen=len(tcp), data=tcp)
    ip.extension_hdrs = {}
    frame = dpkt.ethernet.Ethernet(dst=MAC_B, src=MAC_A, type=dpkt.ethernet.ETH_TYPE_IP6)
    return bytes(frame) + bytes(ip.pack_hdr()) + bytes(tcp)


def gso_header(gso_type: int, gso_size: int, ip_size: int) -> vnet.VnetHeader:
    return vnet.VnetHeader(flags=vnet.FLAG_NEEDS_CSUM, gso_type=gso_type, hdr_len=14 + ip_size + 20,
                           gso_size=gso_size, csum_start=14 + ip_size, csum_offset=16)


def test_tcpv4_segments_cover_payload():
    payload = bytes(range(256)) * 40
    frame = tcp4_frame(payload, dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH | dpkt.tcp.TH_FIN | dpkt.tcp.TH_CWR)
    frames = gso.segment(frame, gso_header(vnet.GSO_TCPV4, 1448, 20))

    assert len(frames) == 8
    joined = b""
    for index, data in enumerate(frames):
        ip = dpkt.ethernet.Ethernet(data).data
        tcp = ip.data
        assert ip.len == len(data) - 14
        assert len(data) <= 1514
        assert ip.id == 100 + index
        assert ones_complement_sum(bytes(data[14:34])) == 0xFFFF
        assert transport_checksum_ok(SRC4, DST4, 6, data[34:])
        assert tcp.seq == 1000 + index * 1448
        last = index == len(frames) - 1
        assert bool(tcp.flags & dpkt.tcp.TH_FIN) == last
        assert bool(tcp.flags & dpkt.tcp.TH_PUSH) == last
        assert bool(tcp.flags & dpkt.tcp.TH_CWR) == (index == 0)
        joined += tcp.data
    assert joined == payload


def test_tcpv4_sequence_wraps():
    frames = gso.segment(tcp4_frame(bytes(3000), dpkt.tcp.TH_ACK, seq=0xFFFFFF00),
                         gso_header(vnet.GSO_TCPV4, 1448, 20))
    assert [dpkt.ethernet.Ethernet(f).data.data.seq for f in frames] == [0xFFFFFF00, (0xFFFFFF00 + 1448) & 0xFFFFFFFF,
                                                                        (0xFFFFFF00 + 2896) & 0xFFFFFFFF]


def test_tcpv6_segments_cover_payload():
    payload = bytes(range(256)) * 20
    frames = gso.segment(tcp6_frame(payload, dpkt.tcp.TH_ACK), gso_header(vnet.GSO_TCPV6, 1000, 40))

    assert len(frames) == 6
    joined = b""
    for data in frames:
        assert int.from_bytes(data[18:20], "big") == len(data) - 54
        assert transport_checksum_ok(SRC6, DST6, 6, data[54:])
        joined += data[74:]
    assert joined == payload


def test_complete_checksum_fills_field():
    frame = tcp4_frame(b"hello", dpkt.tcp.TH_ACK)
    header = vnet.VnetHeader(flags=vnet.FLAG_NEEDS_CSUM, csum_start=34, csum_offset=16)
    done = gso.complete_checksum(frame, header)
    assert transport_checksum_ok(SRC4, DST4, 6, done[34:])
    assert done[:50] == frame[:50]


@pytest.mark.parametrize("case, frame, header", [
    ("gso_size zero", tcp4_frame(bytes(3000), 0x10), vnet.VnetHeader(flags=1, gso_type=vnet.GSO_TCPV4, gso_size=0)),
    ("udp type", tcp4_frame(bytes(3000), 0x10), vnet.VnetHeader(flags=1, gso_type=vnet.GSO_UDP, gso_size=1000)),
    ("v6 type on v4", tcp4_frame(bytes(3000), 0x10), vnet.VnetHeader(flags=1, gso_type=vnet.GSO_TCPV6, gso_size=1000)),
    ("truncated", tcp4_frame(b"", 0x10)[:30], vnet.VnetHeader(flags=1, gso_type=vnet.GSO_TCPV4, gso_size=1000)),
])
def test_segment_rejects_bad_frame(case, frame, header):
    with pytest.raises(gso.GsoError):
        gso.segment(frame, header)


@pytest.mark.parametrize("header, reason", [
    (vnet.VnetHeader(gso_type=9, gso_size=1448), "unknown GSO type"),
    (vnet.VnetHeader(flags=1, gso_type=vnet.GSO_TCPV4, gso_size=0, csum_start=34, csum_offset=16), "gso_size 0"),
    (vnet.VnetHeader(flags=1, csum_start=1000, csum_offset=16), "outside the frame"),
    (vnet.VnetHeader(flags=0x40), "unknown virtio-net flags"),
])
def test_check_received_rejects_bad_header(header, reason):
    assert reason in vnet.check_received(200, header)


def test_check_received_rejects_oversized_frame():
    assert "exceeds" in vnet.check_received(vnet.MAX_GSO_FRAME_SIZE + 1, vnet.VnetHeader(flags=2))


def test_check_received_accepts_gro_frame():
    header = vnet.VnetHeader(flags=1, gso_type=vnet.GSO_TCPV4, hdr_len=66, gso_size=1448, csum_start=34, csum_offset=16)
    assert vnet.check_received(60000, header) is None
