"""UDP over IPv4 and IPv6, cross-checked against dpkt."""

import struct

import dpkt
import pytest

from sandnet_stackd.header import ipv4, ipv6, udp
from sandnet_stackd.header.errors import MalformedError, Reason

SRC4 = bytes([10, 0, 0, 1])
DST4 = bytes([10, 0, 0, 2])
SRC6 = bytes.fromhex("fd000000000000000000000000000001")
DST6 = bytes.fromhex("fd000000000000000000000000000002")
FAMILIES = [pytest.param(SRC4, DST4, id="ipv4"), pytest.param(SRC6, DST6, id="ipv6")]


def dpkt_checksum(datagram, src, dst):
    """Return the checksum that dpkt computes for ``datagram`` carried from ``src`` to ``dst``."""
    theirs = dpkt.udp.UDP(datagram)
    theirs.sum = 0
    if len(src) == 4:
        packet = dpkt.ip.IP(src=src, dst=dst, p=ipv4.PROTO_UDP, data=theirs)
    else:
        packet = dpkt.ip6.IP6(src=src, dst=dst, nxt=ipv6.NEXT_HEADER_UDP, hlim=64, plen=len(datagram))
        packet.data = theirs
    bytes(packet)
    return theirs.sum


def malformed_reason(datagram, src, dst, **kwargs):
    with pytest.raises(MalformedError) as error:
        udp.parse(datagram, src, dst, **kwargs)
    return error.value.reason


@pytest.mark.parametrize("src, dst", FAMILIES)
def test_build_parse_round_trip(src, dst):
    datagram = udp.build(src, dst, 5353, 53, b"query")

    repr, payload = udp.parse(datagram, src, dst)

    assert repr.src_port == 5353
    assert repr.dst_port == 53
    assert repr.length == 13
    assert repr.checksum == int.from_bytes(datagram[6:8], "big")
    assert isinstance(payload, memoryview)
    assert bytes(payload) == b"query"


@pytest.mark.parametrize("src, dst", FAMILIES)
@pytest.mark.parametrize("payload", [b"", b"x", b"even", b"\xab" * 1473])
def test_checksum_matches_dpkt(src, dst, payload):
    datagram = udp.build(src, dst, 1, 65535, payload)

    assert int.from_bytes(datagram[6:8], "big") == dpkt_checksum(datagram, src, dst)


@pytest.mark.parametrize("src, dst", FAMILIES)
def test_build_parsed_by_dpkt(src, dst):
    theirs = dpkt.udp.UDP(udp.build(src, dst, 40000, 7, b"echo"))

    assert theirs.sport == 40000
    assert theirs.dport == 7
    assert theirs.ulen == 12
    assert theirs.data == b"echo"


@pytest.mark.parametrize("src, dst", FAMILIES)
def test_parse_dpkt_datagram(src, dst):
    theirs = dpkt.udp.UDP(sport=123, dport=456, data=b"dpkt")
    theirs.ulen = len(theirs)
    if len(src) == 4:
        packet = bytes(dpkt.ip.IP(src=src, dst=dst, p=ipv4.PROTO_UDP, data=theirs))
        _, segment = ipv4.parse(packet)
    else:
        packet = dpkt.ip6.IP6(src=src, dst=dst, nxt=ipv6.NEXT_HEADER_UDP, hlim=64, plen=len(theirs))
        packet.data = theirs
        _, segment = ipv6.parse(bytes(packet))

    repr, payload = udp.parse(segment, src, dst)

    assert repr.src_port == 123
    assert repr.dst_port == 456
    assert bytes(payload) == b"dpkt"


def test_computed_zero_checksum_sent_as_ffff():
    # With source port 0 the checksum is the complement C of the sum S of the
    # other words. Source port C makes the sum S + C = 0xFFFF, a checksum of 0.
    partial = udp.build(SRC4, DST4, 0, 0, b"")
    missing = int.from_bytes(partial[6:8], "big")
    datagram = udp.build(SRC4, DST4, missing, 0, b"")

    repr, _ = udp.parse(datagram, SRC4, DST4)

    assert repr.checksum == 0xFFFF
    assert dpkt_checksum(datagram, SRC4, DST4) == 0xFFFF


def test_parse_trims_to_length_field():
    datagram = udp.build(SRC4, DST4, 1, 2, b"abc")

    repr, payload = udp.parse(bytearray(datagram + b"\x00\x00"), SRC4, DST4)

    assert repr.length == 11
    assert bytes(payload) == b"abc"


@pytest.mark.parametrize("src, dst", FAMILIES)
@pytest.mark.parametrize("length", [0, 1, 7])
def test_parse_truncated(src, dst, length):
    assert malformed_reason(udp.build(src, dst, 1, 2, b"")[:length], src, dst) is Reason.TRUNCATED


@pytest.mark.parametrize("src, dst", FAMILIES)
@pytest.mark.parametrize("length_field", [0, 7, 12, 0xFFFF])
def test_parse_bad_length(src, dst, length_field):
    datagram = bytearray(udp.build(src, dst, 1, 2, b"abc"))
    struct.pack_into("!H", datagram, 4, length_field)

    assert malformed_reason(datagram, src, dst, verify_checksum=False) is Reason.BAD_TOTAL_LENGTH


@pytest.mark.parametrize("src, dst", FAMILIES)
def test_parse_bad_checksum(src, dst):
    datagram = bytearray(udp.build(src, dst, 1, 2, b"abc"))
    datagram[-1] ^= 0x01

    assert malformed_reason(datagram, src, dst) is Reason.BAD_CHECKSUM
    repr, _ = udp.parse(datagram, src, dst, verify_checksum=False)
    assert repr.dst_port == 2


def test_zero_checksum_accepted_over_ipv4():
    datagram = bytearray(udp.build(SRC4, DST4, 1, 2, b"abc"))
    datagram[6:8] = b"\x00\x00"

    repr, payload = udp.parse(datagram, SRC4, DST4)

    assert repr.checksum == 0
    assert bytes(payload) == b"abc"


@pytest.mark.parametrize("verify_checksum", [True, False])
def test_zero_checksum_rejected_over_ipv6(verify_checksum):
    datagram = bytearray(udp.build(SRC6, DST6, 1, 2, b"abc"))
    datagram[6:8] = b"\x00\x00"

    assert malformed_reason(datagram, SRC6, DST6, verify_checksum=verify_checksum) is Reason.BAD_CHECKSUM


@pytest.mark.parametrize("src, dst", [(SRC4, DST6), (bytes(5), bytes(5))])
def test_invalid_address_pair(src, dst):
    with pytest.raises(ValueError, match="invalid UDP address pair"):
        udp.build(src, dst, 1, 2, b"")
    with pytest.raises(ValueError, match="invalid UDP address pair"):
        udp.parse(bytes(8), src, dst)


def test_build_rejects_oversized_payload():
    with pytest.raises(ValueError, match="exceeds 65535"):
        udp.build(SRC6, DST6, 1, 2, bytes(0xFFFF - 7))
