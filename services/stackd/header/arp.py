"""ARP packets for IPv4 over Ethernet (RFC 826)."""

import dataclasses
import struct

from .errors import MalformedError, Reason

OP_REQUEST = 1
OP_REPLY = 2
PACKET_LEN = 28

HTYPE_ETHERNET = 1
PTYPE_IPV4 = 0x0800

_PACKET = struct.Struct("!HHBBH6s4s6s4s")


@dataclasses.dataclass(slots=True)
class ArpRepr:
    """The parsed ARP packet, with 6-byte MAC addresses and 4-byte IP addresses."""

    op: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes


def parse(buf: bytes | bytearray | memoryview) -> ArpRepr:
    """Parse an ARP packet for IPv4 over Ethernet.

    Raises MalformedError(TRUNCATED) below 28 bytes, and UNSUPPORTED unless
    the hardware type is 1 (Ethernet), the protocol type 0x0800 (IPv4), and
    the address lengths 6 and 4. Bytes after the 28 are Ethernet padding and
    are ignored. The operation is returned as is, so the caller decides what
    to do with codes other than request and reply.
    """
    if len(buf) < PACKET_LEN:
        raise MalformedError(Reason.TRUNCATED, f"ARP packet of {len(buf)} bytes, need {PACKET_LEN}")
    htype, ptype, hlen, plen, op, sender_mac, sender_ip, target_mac, target_ip = _PACKET.unpack_from(buf)
    if (htype, ptype, hlen, plen) != (HTYPE_ETHERNET, PTYPE_IPV4, 6, 4):
        raise MalformedError(
            Reason.UNSUPPORTED,
            f"ARP htype {htype} ptype 0x{ptype:04x} hlen {hlen} plen {plen}, only Ethernet/IPv4 (1, 0x0800, 6, 4)",
        )
    return ArpRepr(op, sender_mac, sender_ip, target_mac, target_ip)


def build(repr: ArpRepr) -> bytes:
    """Build the 28-byte ARP packet for IPv4 over Ethernet.

    Raises ValueError unless the MAC addresses have 6 bytes and the IP addresses 4.
    """
    lengths = (len(repr.sender_mac), len(repr.sender_ip), len(repr.target_mac), len(repr.target_ip))
    if lengths != (6, 4, 6, 4):
        raise ValueError(f"invalid ARP address lengths {lengths}: need MAC 6 bytes and IPv4 4 bytes")
    return _PACKET.pack(
        HTYPE_ETHERNET, PTYPE_IPV4, 6, 4, repr.op, repr.sender_mac, repr.sender_ip, repr.target_mac, repr.target_ip
    )
