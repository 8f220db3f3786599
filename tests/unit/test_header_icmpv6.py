"""ICMPv6 messages, cross-checked against dpkt."""

import dpkt
import pytest

from sandnet_stackd.header import icmpv6, ipv6
from sandnet_stackd.header.errors import MalformedError, Reason

SRC = bytes.fromhex("fd000000000000000000000000000001")
DST = bytes.fromhex("fd000000000000000000000000000002")


def dpkt_checksum(message, src=SRC, dst=DST):
    """Return the checksum that dpkt computes for ``message`` carried from ``src`` to ``dst``."""
    theirs = dpkt.icmp6.ICMP6(message)
    theirs.sum = 0
    packet = dpkt.ip6.IP6(src=src, dst=dst, nxt=ipv6.NEXT_HEADER_ICMPV6, hlim=64, plen=len(message))
    packet.data = theirs
    bytes(packet)
    return theirs.sum


def test_echo_round_trip():
    message = icmpv6.build_echo(SRC, DST, icmpv6.TYPE_ECHO_REQUEST, 0x1234, 0xABCD, b"ping data")

    repr = icmpv6.parse(message, SRC, DST)

    assert repr.type == icmpv6.TYPE_ECHO_REQUEST
    assert repr.code == 0
    assert repr.echo_id == 0x1234
    assert repr.echo_seq == 0xABCD
    assert isinstance(repr.payload, memoryview)
    assert bytes(repr.payload) == b"ping data"


@pytest.mark.parametrize("data", [b"", b"x", b"even", b"\xff" * 999])
def test_checksum_matches_dpkt(data):
    message = icmpv6.build_echo(SRC, DST, icmpv6.TYPE_ECHO_REPLY, 1, 2, data)

    assert int.from_bytes(message[2:4], "big") == dpkt_checksum(message)


def test_echo_parsed_by_dpkt():
    message = icmpv6.build_echo(SRC, DST, icmpv6.TYPE_ECHO_REPLY, 7, 9, b"odd")

    theirs = dpkt.icmp6.ICMP6(message)

    assert theirs.type == dpkt.icmp6.ICMP6_ECHO_REPLY
    assert theirs.data.id == 7
    assert theirs.data.seq == 9
    assert theirs.data.data == b"odd"


def test_parse_dpkt_echo():
    echo = dpkt.icmp6.ICMP6.Echo(id=42, seq=3, data=b"hello")
    theirs = dpkt.icmp6.ICMP6(type=dpkt.icmp6.ICMP6_ECHO_REQUEST, code=0, data=echo)
    packet = dpkt.ip6.IP6(src=SRC, dst=DST, nxt=ipv6.NEXT_HEADER_ICMPV6, hlim=64, plen=len(theirs))
    packet.data = theirs

    _, payload = ipv6.parse(bytes(packet))
    repr = icmpv6.parse(payload, SRC, DST)

    assert repr.type == icmpv6.TYPE_ECHO_REQUEST
    assert repr.echo_id == 42
    assert repr.echo_seq == 3
    assert bytes(repr.payload) == b"hello"


@pytest.mark.parametrize("length", [0, 1, 7])
def test_parse_truncated(length):
    message = icmpv6.build_echo(SRC, DST, icmpv6.TYPE_ECHO_REQUEST, 1, 1)[:length]

    with pytest.raises(MalformedError) as error:
        icmpv6.parse(message, SRC, DST)
    assert error.value.reason is Reason.TRUNCATED


def test_parse_bad_checksum():
    message = icmpv6.build_echo(SRC, DST, icmpv6.TYPE_ECHO_REQUEST, 1, 1, b"data")

    with pytest.raises(MalformedError) as error:
        icmpv6.parse(message, SRC, bytes.fromhex("fd000000000000000000000000000003"))
    assert error.value.reason is Reason.BAD_CHECKSUM
    assert icmpv6.parse(message, DST, DST, verify_checksum=False).echo_seq == 1


def test_parse_rejects_bad_address_length():
    message = icmpv6.build_echo(SRC, DST, icmpv6.TYPE_ECHO_REQUEST, 1, 1)

    with pytest.raises(ValueError, match="need 16 bytes"):
        icmpv6.parse(message, bytes(4), bytes(4))


def test_packet_too_big():
    quote = ipv6.build(DST, SRC, ipv6.NEXT_HEADER_NONE, b"")
    message = icmpv6.build(SRC, DST, icmpv6.TYPE_PACKET_TOO_BIG, 0, 1280, quote)

    repr = icmpv6.parse(message, SRC, DST)

    assert repr.mtu == 1280
    assert dpkt.icmp6.ICMP6(message).data.mtu == 1280


def test_build_error_fits_minimum_mtu():
    original = ipv6.build(SRC, DST, ipv6.NEXT_HEADER_UDP, b"x" * 1400)

    message = icmpv6.build_error(DST, SRC, icmpv6.TYPE_DEST_UNREACHABLE, icmpv6.CODE_PORT_UNREACHABLE, original)
    packet = ipv6.build(DST, SRC, ipv6.NEXT_HEADER_ICMPV6, message)
    repr = icmpv6.parse(message, DST, SRC)

    assert len(packet) == 1280
    assert bytes(repr.payload) == original[:1232]
    assert int.from_bytes(message[2:4], "big") == dpkt_checksum(message, DST, SRC)


def test_build_error_quotes_small_packet_whole():
    original = ipv6.build(SRC, DST, ipv6.NEXT_HEADER_UDP, b"x" * 10)

    message = icmpv6.build_error(DST, SRC, icmpv6.TYPE_PARAMETER_PROBLEM, 0, original, rest=6)
    repr = icmpv6.parse(message, DST, SRC)

    assert repr.pointer == 6
    assert bytes(repr.payload) == original


def test_is_error():
    assert icmpv6.is_error(icmpv6.TYPE_DEST_UNREACHABLE)
    assert icmpv6.is_error(icmpv6.TYPE_PACKET_TOO_BIG)
    assert not icmpv6.is_error(icmpv6.TYPE_ECHO_REQUEST)
    assert not icmpv6.is_error(icmpv6.TYPE_ECHO_REPLY)
