"""The IPv6 fixed header, cross-checked against dpkt."""

import struct

import dpkt
import pytest

from sandnet_stackd.header import ipv6
from sandnet_stackd.header.errors import MalformedError, Reason

SRC = bytes.fromhex("fd000000000000000000000000000001")
DST = bytes.fromhex("fd000000000000000000000000000002")


def malformed_reason(packet):
    with pytest.raises(MalformedError) as error:
        ipv6.parse(packet)
    return error.value.reason


def test_build_parse_round_trip():
    packet = ipv6.build(
        SRC, DST, ipv6.NEXT_HEADER_UDP, b"payload", hop_limit=3, traffic_class=0xB8, flow_label=0xABCDE
    )

    repr, payload = ipv6.parse(packet)

    assert repr == ipv6.Ipv6Repr(
        src=SRC,
        dst=DST,
        next_header=ipv6.NEXT_HEADER_UDP,
        hop_limit=3,
        payload_length=7,
        traffic_class=0xB8,
        flow_label=0xABCDE,
    )
    assert isinstance(payload, memoryview)
    assert bytes(payload) == b"payload"


def test_build_parsed_by_dpkt():
    packet = ipv6.build(SRC, DST, ipv6.NEXT_HEADER_NONE, b"abc", hop_limit=255, traffic_class=7, flow_label=1)

    theirs = dpkt.ip6.IP6(packet)

    assert theirs.v == 6
    assert theirs.fc == 7
    assert theirs.flow == 1
    assert theirs.plen == 3
    assert theirs.nxt == ipv6.NEXT_HEADER_NONE
    assert theirs.hlim == 255
    assert theirs.src == SRC
    assert theirs.dst == DST


def test_parse_dpkt_packet():
    theirs = dpkt.ip6.IP6(src=SRC, dst=DST, nxt=ipv6.NEXT_HEADER_ICMPV6, hlim=1, fc=0x20, flow=0x12345, plen=4)
    theirs.data = b"data"

    repr, payload = ipv6.parse(bytes(theirs))

    assert repr.src == SRC
    assert repr.dst == DST
    assert repr.next_header == ipv6.NEXT_HEADER_ICMPV6
    assert repr.hop_limit == 1
    assert repr.traffic_class == 0x20
    assert repr.flow_label == 0x12345
    assert bytes(payload) == b"data"


def test_parse_trims_ethernet_padding():
    packet = ipv6.build(SRC, DST, ipv6.NEXT_HEADER_UDP, b"ab")

    repr, payload = ipv6.parse(memoryview(packet + b"\x00" * 6))

    assert repr.payload_length == 2
    assert bytes(payload) == b"ab"


@pytest.mark.parametrize("length", [0, 1, 39])
def test_parse_truncated(length):
    assert malformed_reason(ipv6.build(SRC, DST, 59, b"")[:length]) is Reason.TRUNCATED


@pytest.mark.parametrize("version", [0, 4, 15])
def test_parse_bad_version(version):
    packet = bytearray(ipv6.build(SRC, DST, 59, b""))
    packet[0] = (version << 4) | (packet[0] & 0x0F)

    assert malformed_reason(packet) is Reason.BAD_VERSION


@pytest.mark.parametrize("payload_length", [5, 0xFFFF])
def test_parse_bad_payload_length(payload_length):
    packet = bytearray(ipv6.build(SRC, DST, 59, b"abcd"))
    struct.pack_into("!H", packet, 4, payload_length)

    assert malformed_reason(packet) is Reason.BAD_TOTAL_LENGTH


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"traffic_class": 256}, "traffic class"),
        ({"flow_label": 0x100000}, "flow label"),
        ({"flow_label": -1}, "flow label"),
    ],
)
def test_build_rejects_invalid_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ipv6.build(SRC, DST, 59, b"", **kwargs)


def test_build_rejects_oversized_payload():
    with pytest.raises(ValueError, match="exceeds 65535"):
        ipv6.build(SRC, DST, 59, bytes(0x10000))


def test_build_rejects_bad_address_length():
    with pytest.raises(ValueError, match="need 16 bytes"):
        ipv6.build(SRC, bytes(4), 59, b"")


def test_extension_headers():
    for next_header in (0, 43, 44, 60):
        assert ipv6.is_extension_header(next_header)
    for next_header in (6, 17, 58, 59):
        assert not ipv6.is_extension_header(next_header)


def test_address_classes():
    assert ipv6.is_multicast(bytes.fromhex("ff020000000000000000000000000001"))
    assert not ipv6.is_multicast(SRC)
    assert ipv6.is_loopback(bytes(15) + b"\x01")
    assert ipv6.is_unspecified(bytes(16))
    assert ipv6.is_link_local(bytes.fromhex("fe800000000000000000000000000001"))
    assert ipv6.is_link_local(bytes.fromhex("febf0000000000000000000000000001"))
    assert not ipv6.is_link_local(bytes.fromhex("fec00000000000000000000000000001"))
