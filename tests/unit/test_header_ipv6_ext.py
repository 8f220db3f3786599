"""IPv6 extension headers, NDP messages and address helpers, cross-checked against dpkt."""

import dpkt
import pytest

from sandnet_stackd.header import icmpv6, ipv6
from sandnet_stackd.header.errors import MalformedError, Reason

SRC = bytes.fromhex("fe800000000000000000000000000001")
DST = bytes.fromhex("fd000000000000000000000000000002")
MAC = bytes.fromhex("020000000001")


def test_fragment_header_round_trip_matches_dpkt():
    header = ipv6.build_fragment(ipv6.NEXT_HEADER_UDP, 1448, True, 0xDEADBEEF)

    ours = ipv6.parse_fragment(header)
    theirs = dpkt.ip6.IP6FragmentHeader(header)

    assert ours == ipv6.FragmentRepr(ipv6.NEXT_HEADER_UDP, 1448, True, 0xDEADBEEF)
    assert theirs.nxt == ipv6.NEXT_HEADER_UDP
    assert theirs.frag_off == 1448 // 8
    assert theirs.m_flag == 1
    assert theirs.id == 0xDEADBEEF


@pytest.mark.parametrize("offset", [3, -8, 65536])
def test_fragment_offset_outside_range_raises(offset):
    with pytest.raises(ValueError):
        ipv6.build_fragment(ipv6.NEXT_HEADER_UDP, offset, False, 1)


def test_truncated_fragment_header_raises():
    with pytest.raises(MalformedError) as error:
        ipv6.parse_fragment(b"\x11\x00\x00")
    assert error.value.reason is Reason.TRUNCATED


@pytest.mark.parametrize("next_header, data, length", [
    (ipv6.NEXT_HEADER_DEST_OPTS, bytes((6, 0)) + bytes(6), 8),
    (ipv6.NEXT_HEADER_HOP_BY_HOP, bytes((6, 1)) + bytes(14), 16),
    (ipv6.NEXT_HEADER_ROUTING, bytes((6, 2)) + bytes(22), 24),
    (ipv6.NEXT_HEADER_FRAGMENT, bytes(8), 8),
    (51, bytes((6, 4)) + bytes(22), 24),  # Authentication Header counts 4-byte words minus 2
])
def test_extension_header_length(next_header, data, length):
    assert ipv6.extension_header_length(next_header, data) == length


@pytest.mark.parametrize("data", [b"", b"\x06", bytes((6, 1)) + bytes(6)])
def test_extension_header_past_buffer_raises(data):
    with pytest.raises(MalformedError) as error:
        ipv6.extension_header_length(ipv6.NEXT_HEADER_DEST_OPTS, data)
    assert error.value.reason is Reason.TRUNCATED


def test_parse_options_skips_padding():
    header = bytes((6, 0, 0, 0x1E, 1, 0xAB, 1, 0))  # Pad1, option 0x1E of 1 byte, PadN of 2

    options = ipv6.parse_options(header)

    assert [(o.type, o.offset, bytes(o.data)) for o in options] == [(0x1E, 3, b"\xab")]
    assert options[0].action == ipv6.ACTION_SKIP


@pytest.mark.parametrize("option_type, action", [(0x1E, 0), (0x5E, 1), (0x9E, 2), (0xDE, 3)])
def test_option_action_bits(option_type, action):
    option = ipv6.parse_options(bytes((6, 0, option_type, 4, 0, 0, 0, 0)))[0]
    assert option.action == action


@pytest.mark.parametrize("header", [bytes((6, 0, 0x1E, 9, 0, 0, 0, 0)), bytes((6, 0, 0, 0, 0, 0, 0, 0x1E))])
def test_option_past_header_raises(header):
    with pytest.raises(MalformedError) as error:
        ipv6.parse_options(header)
    assert error.value.reason is Reason.BAD_OPTION


def test_router_alert_header_matches_dpkt():
    header = ipv6.build_hop_by_hop_router_alert(ipv6.NEXT_HEADER_ICMPV6)

    theirs = dpkt.ip6.IP6HopOptsHeader(header)

    assert len(header) == 8
    assert theirs.nxt == ipv6.NEXT_HEADER_ICMPV6
    assert [opt["type"] for opt in theirs.options if opt["type"] not in (0, 1)] == [ipv6.OPTION_ROUTER_ALERT]


def test_solicited_node_address():
    ip = bytes.fromhex("fd00000000000000000000000012abcd")
    assert ipv6.solicited_node(ip) == bytes.fromhex("ff0200000000000000000001ff12abcd")


def test_v4_mapped_round_trip():
    mapped = ipv6.map_v4(bytes([10, 0, 0, 1]))
    assert mapped == bytes.fromhex("00000000000000000000ffff0a000001")
    assert ipv6.is_v4_mapped(mapped)
    assert not ipv6.is_v4_mapped(DST)


def test_neighbor_solicitation_round_trip():
    message = icmpv6.build_neighbor_solicitation(SRC, ipv6.solicited_node(DST), DST, MAC)

    ndp = icmpv6.parse_ndp(icmpv6.parse(message, SRC, ipv6.solicited_node(DST)))

    assert ndp.type == icmpv6.TYPE_NEIGHBOR_SOLICITATION
    assert ndp.target == DST
    assert ndp.link_address == MAC


def test_dad_solicitation_has_no_link_address_option():
    unspecified = bytes(16)
    message = icmpv6.build_neighbor_solicitation(unspecified, ipv6.solicited_node(DST), DST, MAC)

    assert len(message) == 24


def test_neighbor_advertisement_round_trip():
    flags = icmpv6.NA_FLAG_SOLICITED | icmpv6.NA_FLAG_OVERRIDE
    message = icmpv6.build_neighbor_advertisement(DST, SRC, DST, MAC, flags)

    ndp = icmpv6.parse_ndp(icmpv6.parse(message, DST, SRC))

    assert ndp.flags == flags
    assert ndp.target == DST
    assert ndp.link_address == MAC


def test_router_advertisement_options():
    body = bytes(8) + bytes((1, 1)) + MAC + bytes((5, 1, 0, 0)) + (1400).to_bytes(4, "big")
    message = icmpv6.build(SRC, DST, icmpv6.TYPE_ROUTER_ADVERTISEMENT, 0, (64 << 24) | 1800, body)

    ndp = icmpv6.parse_ndp(icmpv6.parse(message, SRC, DST))

    assert ndp.router_lifetime == 1800
    assert ndp.hop_limit == 64
    assert ndp.mtu == 1400
    assert ndp.link_address == MAC


@pytest.mark.parametrize("options", [bytes((1, 0)) + bytes(6), bytes((1, 2)) + bytes(6)])
def test_ndp_option_of_bad_length_raises(options):
    message = icmpv6.build(SRC, DST, icmpv6.TYPE_NEIGHBOR_ADVERTISEMENT, 0, 0, DST + options)
    with pytest.raises(MalformedError) as error:
        icmpv6.parse_ndp(icmpv6.parse(message, SRC, DST))
    assert error.value.reason is Reason.BAD_OPTION


def test_short_neighbor_message_raises():
    message = icmpv6.build(SRC, DST, icmpv6.TYPE_NEIGHBOR_SOLICITATION, 0, 0, bytes(8))
    with pytest.raises(MalformedError) as error:
        icmpv6.parse_ndp(icmpv6.parse(message, SRC, DST))
    assert error.value.reason is Reason.TRUNCATED


def test_mld_report_matches_dpkt_checksum():
    groups = [ipv6.solicited_node(DST)]
    report = icmpv6.build_mld_report(SRC, groups)

    theirs = dpkt.icmp6.ICMP6(report)
    theirs.sum = 0
    packet = dpkt.ip6.IP6(src=SRC, dst=icmpv6.MLD_V2_ROUTERS, nxt=58, hlim=1, plen=len(report))
    packet.data = theirs
    bytes(packet)

    assert report[0] == icmpv6.TYPE_MLD_V2_REPORT
    assert int.from_bytes(report[6:8], "big") == 1
    assert report[12:28] == groups[0]
    assert int.from_bytes(report[2:4], "big") == theirs.sum
