"""Ethernet II frames and MAC addresses, cross-checked against dpkt."""

import dpkt
import pytest

from sandnet_stackd.header import ethernet
from sandnet_stackd.header.errors import MalformedError, Reason

DST = bytes.fromhex("020000aabbcc")
SRC = bytes.fromhex("020000112233")


def test_build_parse_round_trip():
    frame = ethernet.build(DST, SRC, ethernet.ETHERTYPE_IPV4, b"payload")

    repr, payload = ethernet.parse(frame)

    assert repr == ethernet.EthernetRepr(DST, SRC, ethernet.ETHERTYPE_IPV4)
    assert isinstance(payload, memoryview)
    assert bytes(payload) == b"payload"


def test_build_parsed_by_dpkt():
    frame = ethernet.build(DST, SRC, ethernet.ETHERTYPE_ARP, b"\x00" * 28)

    theirs = dpkt.ethernet.Ethernet(frame)

    assert theirs.dst == DST
    assert theirs.src == SRC
    assert theirs.type == ethernet.ETHERTYPE_ARP


def test_parse_dpkt_frame():
    theirs = dpkt.ethernet.Ethernet(dst=DST, src=SRC, type=ethernet.ETHERTYPE_IPV6, data=b"abc")

    repr, payload = ethernet.parse(bytes(theirs))

    assert repr.dst == DST
    assert repr.src == SRC
    assert repr.ethertype == ethernet.ETHERTYPE_IPV6
    assert bytes(payload) == b"abc"


def test_parse_accepts_bytearray_and_memoryview():
    frame = ethernet.build(DST, SRC, ethernet.ETHERTYPE_IPV4, b"x")

    for buffer in (bytearray(frame), memoryview(frame)):
        repr, payload = ethernet.parse(buffer)
        assert repr.ethertype == ethernet.ETHERTYPE_IPV4
        assert bytes(payload) == b"x"


def test_parse_header_only_frame():
    repr, payload = ethernet.parse(ethernet.build(DST, SRC, ethernet.ETHERTYPE_VLAN))

    assert repr.ethertype == ethernet.ETHERTYPE_VLAN
    assert len(payload) == 0


@pytest.mark.parametrize("length", [0, 1, 13])
def test_parse_truncated(length):
    with pytest.raises(MalformedError) as error:
        ethernet.parse(b"\x00" * length)
    assert error.value.reason is Reason.TRUNCATED


def test_build_rejects_short_mac():
    with pytest.raises(ValueError, match="need 6 bytes"):
        ethernet.build(DST[:5], SRC, ethernet.ETHERTYPE_IPV4)


def test_format_and_parse_mac():
    assert ethernet.format_mac(DST) == "02:00:00:aa:bb:cc"
    assert ethernet.parse_mac("02:00:00:aa:bb:cc") == DST
    assert ethernet.parse_mac("02:00:00:AA:BB:CC") == DST
    assert ethernet.format_mac(ethernet.BROADCAST) == "ff:ff:ff:ff:ff:ff"


@pytest.mark.parametrize(
    "text", ["", "02:00:00:aa:bb", "02:00:00:aa:bb:cc:dd", "02-00-00-aa-bb-cc", "02:00:00:aa:bb:cg", " 2:00:00:aa:bb:cc"]
)
def test_parse_mac_invalid(text):
    with pytest.raises(ValueError) as error:
        ethernet.parse_mac(text)
    assert repr(text) in str(error.value)


def test_ipv4_multicast_mac():
    # 239.129.2.3 keeps only its low 23 bits: 01:00:5e:01:02:03.
    assert ethernet.ipv4_multicast_mac(bytes([239, 129, 2, 3])) == bytes.fromhex("01005e010203")
    assert ethernet.ipv4_multicast_mac(bytes([224, 0, 0, 1])) == bytes.fromhex("01005e000001")


def test_ipv6_multicast_mac():
    all_nodes = bytes.fromhex("ff020000000000000000000000000001")
    solicited = bytes.fromhex("ff0200000000000000000001ff123456")

    assert ethernet.ipv6_multicast_mac(all_nodes) == bytes.fromhex("333300000001")
    assert ethernet.ipv6_multicast_mac(solicited) == bytes.fromhex("3333ff123456")
