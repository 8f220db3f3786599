"""IPv4 headers, cross-checked against dpkt."""

import struct

import dpkt
import pytest

from sandnet_stackd.header import ipv4
from sandnet_stackd.header.errors import MalformedError, Reason

SRC = bytes([10, 0, 0, 1])
DST = bytes([10, 0, 0, 2])
OPTIONS = b"\x94\x04\x00\x00"  # Router Alert (RFC 2113)


def malformed_reason(packet, **kwargs):
    with pytest.raises(MalformedError) as error:
        ipv4.parse(packet, **kwargs)
    return error.value.reason


def test_build_parse_round_trip():
    packet = ipv4.build(
        SRC,
        DST,
        ipv4.PROTO_UDP,
        b"payload",
        ttl=7,
        ident=0x1234,
        tos=0xB8,
        dont_fragment=False,
        more_fragments=True,
        fragment_offset=1480,
        options=OPTIONS,
    )

    repr, payload = ipv4.parse(packet)

    assert repr == ipv4.Ipv4Repr(
        src=SRC,
        dst=DST,
        protocol=ipv4.PROTO_UDP,
        ttl=7,
        total_length=24 + 7,
        header_length=24,
        ident=0x1234,
        tos=0xB8,
        dont_fragment=False,
        more_fragments=True,
        fragment_offset=1480,
        options=OPTIONS,
    )
    assert isinstance(payload, memoryview)
    assert bytes(payload) == b"payload"


def test_build_defaults():
    repr, _ = ipv4.parse(ipv4.build(SRC, DST, ipv4.PROTO_ICMP, b""))

    assert repr.ttl == 64
    assert repr.dont_fragment
    assert not ipv4.is_fragment(repr)
    assert repr.options == b""


def test_build_parsed_by_dpkt():
    packet = ipv4.build(SRC, DST, ipv4.PROTO_TCP, b"x" * 33, ttl=9, ident=77, options=OPTIONS)

    theirs = dpkt.ip.IP(packet)

    assert theirs.v == 4
    assert theirs.hl == 6
    assert theirs.len == len(packet)
    assert theirs.id == 77
    assert theirs.ttl == 9
    assert theirs.p == ipv4.PROTO_TCP
    assert theirs.df == 1
    assert theirs.src == SRC
    assert theirs.dst == DST
    assert bytes(theirs.opts) == OPTIONS


def test_build_checksum_matches_dpkt():
    packet = ipv4.build(SRC, DST, 200, b"abc", ttl=1, ident=0xFFFF, tos=3, options=OPTIONS)
    theirs = dpkt.ip.IP(packet)
    received = theirs.sum

    theirs.sum = 0
    bytes(theirs)

    assert received == theirs.sum


def test_parse_dpkt_packet():
    theirs = dpkt.ip.IP(src=SRC, dst=DST, p=ipv4.PROTO_UDP, ttl=3, id=5, data=b"data", mf=1, offset=10)

    repr, payload = ipv4.parse(bytes(theirs))

    assert repr.src == SRC
    assert repr.dst == DST
    assert repr.ttl == 3
    assert repr.ident == 5
    assert repr.more_fragments
    assert not repr.dont_fragment
    assert repr.fragment_offset == 80
    assert ipv4.is_fragment(repr)
    assert bytes(payload) == b"data"


def test_parse_trims_ethernet_padding():
    packet = ipv4.build(SRC, DST, ipv4.PROTO_UDP, b"short")

    repr, payload = ipv4.parse(bytearray(packet + b"\x00" * 21))

    assert repr.total_length == len(packet)
    assert bytes(payload) == b"short"


def test_parse_without_checksum_check():
    packet = bytearray(ipv4.build(SRC, DST, ipv4.PROTO_UDP, b""))
    packet[10:12] = b"\x00\x00"

    repr, _ = ipv4.parse(packet, verify_checksum=False)

    assert repr.src == SRC
    assert malformed_reason(packet) is Reason.BAD_CHECKSUM


@pytest.mark.parametrize("length", [0, 1, 19])
def test_parse_truncated(length):
    assert malformed_reason(ipv4.build(SRC, DST, 1, b"")[:length]) is Reason.TRUNCATED


@pytest.mark.parametrize("version", [0, 6, 15])
def test_parse_bad_version(version):
    packet = bytearray(ipv4.build(SRC, DST, 1, b""))
    packet[0] = (version << 4) | 5

    assert malformed_reason(packet) is Reason.BAD_VERSION


@pytest.mark.parametrize("ihl", [0, 4, 6, 15])
def test_parse_bad_header_length(ihl):
    # A 20-byte packet: IHL below 5 is invalid, above 5 runs past the buffer.
    packet = bytearray(ipv4.build(SRC, DST, 1, b""))
    packet[0] = 0x40 | ihl

    assert malformed_reason(packet, verify_checksum=False) is Reason.BAD_HEADER_LENGTH


@pytest.mark.parametrize("total_length", [0, 19, 23, 29, 0xFFFF])
def test_parse_bad_total_length(total_length):
    # 24-byte header and 4 bytes of payload: valid total lengths are 24 to 28.
    packet = bytearray(ipv4.build(SRC, DST, 1, b"abcd", options=OPTIONS))
    struct.pack_into("!H", packet, 2, total_length)

    assert malformed_reason(packet, verify_checksum=False) is Reason.BAD_TOTAL_LENGTH


def test_parse_bad_checksum_in_options():
    packet = bytearray(ipv4.build(SRC, DST, 1, b"", options=OPTIONS))
    packet[21] ^= 0x01

    assert malformed_reason(packet) is Reason.BAD_CHECKSUM


def test_build_header_matches_build():
    payload = b"p" * 10

    header = ipv4.build_header(SRC, DST, ipv4.PROTO_UDP, len(payload), ident=9, ttl=2)

    assert header + payload == ipv4.build(SRC, DST, ipv4.PROTO_UDP, payload, ident=9, ttl=2)
    assert len(header) == ipv4.HEADER_LEN


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"options": b"\x01\x01\x01"}, "options length"),
        ({"options": b"\x01" * 44}, "options length"),
        ({"fragment_offset": 7}, "fragment offset"),
        ({"fragment_offset": 65536}, "fragment offset"),
        ({"fragment_offset": -8}, "fragment offset"),
    ],
)
def test_build_rejects_invalid_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ipv4.build(SRC, DST, 1, b"", **kwargs)


def test_build_rejects_oversized_payload():
    with pytest.raises(ValueError, match="exceeds 65535"):
        ipv4.build_header(SRC, DST, 1, 0xFFFF - 19)


def test_build_accepts_maximum_payload():
    header = ipv4.build_header(SRC, DST, 1, 0xFFFF - 20)

    assert struct.unpack_from("!H", header, 2)[0] == 0xFFFF


def test_build_rejects_bad_address_length():
    with pytest.raises(ValueError, match="need 4 bytes"):
        ipv4.build(bytes(16), DST, 1, b"")


def test_prefix_mask():
    assert ipv4.prefix_mask(0) == 0
    assert ipv4.prefix_mask(8) == 0xFF000000
    assert ipv4.prefix_mask(24) == 0xFFFFFF00
    assert ipv4.prefix_mask(32) == 0xFFFFFFFF
    with pytest.raises(ValueError, match="prefix length 33"):
        ipv4.prefix_mask(33)


def test_in_prefix():
    net = bytes([10, 1, 0, 0])

    assert ipv4.in_prefix(bytes([10, 1, 255, 9]), net, 16)
    assert not ipv4.in_prefix(bytes([10, 2, 0, 1]), net, 16)
    assert ipv4.in_prefix(bytes([192, 0, 2, 1]), net, 0)
    assert ipv4.in_prefix(net, net, 32)


def test_address_classes():
    assert ipv4.is_multicast(bytes([224, 0, 0, 1]))
    assert ipv4.is_multicast(bytes([239, 255, 255, 255]))
    assert not ipv4.is_multicast(bytes([240, 0, 0, 1]))
    assert ipv4.is_loopback(bytes([127, 0, 0, 1]))
    assert not ipv4.is_loopback(SRC)
    assert ipv4.is_limited_broadcast(b"\xff" * 4)
    assert ipv4.is_unspecified(b"\x00" * 4)
