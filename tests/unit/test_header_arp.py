"""ARP packets for IPv4 over Ethernet, cross-checked against dpkt."""

import struct

import dpkt
import pytest

from sandnet_stackd.header import arp
from sandnet_stackd.header.errors import MalformedError, Reason

SENDER_MAC = bytes.fromhex("020000112233")
TARGET_MAC = bytes.fromhex("020000aabbcc")
SENDER_IP = bytes([10, 0, 0, 1])
TARGET_IP = bytes([10, 0, 0, 2])

REQUEST = arp.ArpRepr(arp.OP_REQUEST, SENDER_MAC, SENDER_IP, b"\x00" * 6, TARGET_IP)


def test_build_parse_round_trip():
    packet = arp.build(REQUEST)

    assert len(packet) == arp.PACKET_LEN
    assert arp.parse(packet) == REQUEST


def test_build_parsed_by_dpkt():
    reply = arp.ArpRepr(arp.OP_REPLY, TARGET_MAC, TARGET_IP, SENDER_MAC, SENDER_IP)

    theirs = dpkt.arp.ARP(arp.build(reply))

    assert theirs.hrd == dpkt.arp.ARP_HRD_ETH
    assert theirs.pro == dpkt.arp.ARP_PRO_IP
    assert theirs.op == dpkt.arp.ARP_OP_REPLY
    assert theirs.sha == TARGET_MAC
    assert theirs.spa == TARGET_IP
    assert theirs.tha == SENDER_MAC
    assert theirs.tpa == SENDER_IP


def test_parse_dpkt_packet_with_padding():
    theirs = dpkt.arp.ARP(op=dpkt.arp.ARP_OP_REQUEST, sha=SENDER_MAC, spa=SENDER_IP, tha=b"\x00" * 6, tpa=TARGET_IP)
    padded = bytes(theirs) + b"\x00" * 18

    assert arp.parse(padded) == REQUEST
    assert arp.parse(memoryview(padded)) == REQUEST


@pytest.mark.parametrize("length", [0, 8, 27])
def test_parse_truncated(length):
    with pytest.raises(MalformedError) as error:
        arp.parse(arp.build(REQUEST)[:length])
    assert error.value.reason is Reason.TRUNCATED


@pytest.mark.parametrize(
    "fields",
    [
        (6, 0x0800, 6, 4),  # IEEE 802 hardware type
        (1, 0x86DD, 6, 16),  # IPv6 protocol type
        (1, 0x0800, 8, 4),  # wrong hardware address length
        (1, 0x0800, 6, 6),  # wrong protocol address length
    ],
)
def test_parse_unsupported(fields):
    packet = bytearray(arp.build(REQUEST))
    struct.pack_into("!HHBB", packet, 0, *fields)

    with pytest.raises(MalformedError) as error:
        arp.parse(packet)
    assert error.value.reason is Reason.UNSUPPORTED


def test_build_rejects_bad_address_length():
    bad = arp.ArpRepr(arp.OP_REQUEST, SENDER_MAC, bytes(16), b"\x00" * 6, TARGET_IP)

    with pytest.raises(ValueError, match="address lengths"):
        arp.build(bad)
