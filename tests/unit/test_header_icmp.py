"""ICMPv4 messages, cross-checked against dpkt."""

import dpkt
import pytest

from sandnet_stackd.header import icmp, ipv4
from sandnet_stackd.header.errors import MalformedError, Reason

SRC = bytes([10, 0, 0, 1])
DST = bytes([10, 0, 0, 2])


def test_echo_round_trip():
    message = icmp.build_echo(icmp.TYPE_ECHO_REQUEST, 0x1234, 0xABCD, b"ping data")

    repr = icmp.parse(message)

    assert repr.type == icmp.TYPE_ECHO_REQUEST
    assert repr.code == 0
    assert repr.echo_id == 0x1234
    assert repr.echo_seq == 0xABCD
    assert isinstance(repr.payload, memoryview)
    assert bytes(repr.payload) == b"ping data"


def test_echo_parsed_by_dpkt():
    message = icmp.build_echo(icmp.TYPE_ECHO_REPLY, 7, 9, b"odd")

    theirs = dpkt.icmp.ICMP(message)

    assert theirs.type == dpkt.icmp.ICMP_ECHOREPLY
    assert theirs.data.id == 7
    assert theirs.data.seq == 9
    assert theirs.data.data == b"odd"


@pytest.mark.parametrize("data", [b"", b"x", b"even", b"\xff" * 1001])
def test_checksum_matches_dpkt(data):
    message = icmp.build_echo(icmp.TYPE_ECHO_REQUEST, 0xFFFF, 1, data)
    theirs = dpkt.icmp.ICMP(message)
    received = theirs.sum

    theirs.sum = 0
    bytes(theirs)

    assert received == theirs.sum


def test_parse_dpkt_echo():
    echo = dpkt.icmp.ICMP.Echo(id=42, seq=3, data=b"hello")
    theirs = dpkt.icmp.ICMP(type=dpkt.icmp.ICMP_ECHO, code=0, data=echo)

    repr = icmp.parse(bytearray(bytes(theirs)))

    assert repr.type == icmp.TYPE_ECHO_REQUEST
    assert repr.echo_id == 42
    assert repr.echo_seq == 3
    assert bytes(repr.payload) == b"hello"


def test_parse_dpkt_fragmentation_needed():
    quote = ipv4.build(SRC, DST, ipv4.PROTO_UDP, b"u" * 8)
    needfrag = dpkt.icmp.ICMP.Unreach(mtu=1400, data=quote)
    theirs = dpkt.icmp.ICMP(type=dpkt.icmp.ICMP_UNREACH, code=dpkt.icmp.ICMP_UNREACH_NEEDFRAG, data=needfrag)

    repr = icmp.parse(bytes(theirs))

    assert repr.type == icmp.TYPE_DEST_UNREACHABLE
    assert repr.code == icmp.CODE_FRAGMENTATION_NEEDED
    assert repr.next_hop_mtu == 1400
    assert bytes(repr.payload) == quote


@pytest.mark.parametrize("length", [0, 1, 7])
def test_parse_truncated(length):
    message = icmp.build_echo(icmp.TYPE_ECHO_REQUEST, 1, 1)[:length]

    with pytest.raises(MalformedError) as error:
        icmp.parse(message)
    assert error.value.reason is Reason.TRUNCATED


def test_parse_bad_checksum():
    message = bytearray(icmp.build_echo(icmp.TYPE_ECHO_REQUEST, 1, 1, b"data"))
    message[-1] ^= 0x40

    with pytest.raises(MalformedError) as error:
        icmp.parse(message)
    assert error.value.reason is Reason.BAD_CHECKSUM
    assert icmp.parse(message, verify_checksum=False).echo_id == 1


def test_build_error_quotes_small_packet_whole():
    original = ipv4.build(SRC, DST, ipv4.PROTO_UDP, b"x" * 100)

    message = icmp.build_error(icmp.TYPE_DEST_UNREACHABLE, icmp.CODE_PORT_UNREACHABLE, original)
    repr = icmp.parse(message)

    assert repr.type == icmp.TYPE_DEST_UNREACHABLE
    assert repr.code == icmp.CODE_PORT_UNREACHABLE
    assert repr.rest == 0
    assert bytes(repr.payload) == original


def test_build_error_fits_576_byte_datagram():
    original = ipv4.build(SRC, DST, ipv4.PROTO_UDP, b"x" * 1400)

    message = icmp.build_error(icmp.TYPE_DEST_UNREACHABLE, icmp.CODE_FRAGMENTATION_NEEDED, original, rest=1280)
    datagram = ipv4.build(DST, SRC, ipv4.PROTO_ICMP, message)
    repr = icmp.parse(message)

    assert len(datagram) == 576
    assert bytes(repr.payload) == original[:548]
    assert repr.next_hop_mtu == 1280


def test_build_error_parsed_by_dpkt():
    original = ipv4.build(SRC, DST, ipv4.PROTO_UDP, b"x" * 10)

    message = icmp.build_error(icmp.TYPE_TIME_EXCEEDED, 0, original)
    theirs = dpkt.icmp.ICMP(message)

    assert theirs.type == dpkt.icmp.ICMP_TIMEXCEED
    assert bytes(theirs.data.data) == original


def test_is_error():
    assert icmp.is_error(icmp.TYPE_DEST_UNREACHABLE)
    assert icmp.is_error(icmp.TYPE_TIME_EXCEEDED)
    assert icmp.is_error(icmp.TYPE_PARAMETER_PROBLEM)
    assert not icmp.is_error(icmp.TYPE_ECHO_REQUEST)
    assert not icmp.is_error(icmp.TYPE_ECHO_REPLY)
