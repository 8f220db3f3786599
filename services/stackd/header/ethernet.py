"""Ethernet II frames (IEEE 802.3 with an EtherType, RFC 894) and MAC addresses.

The frame check sequence is not part of the buffers seen here: AF_PACKET and
TAP devices strip it on receive and add it on send.
"""

import dataclasses
import re
import struct

from .errors import MalformedError, Reason

HEADER_LEN = 14

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = 0x8100

BROADCAST = b"\xff" * 6

MAC_LEN = 6

_HEADER = struct.Struct("!6s6sH")
_MAC_TEXT = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")


@dataclasses.dataclass(slots=True)
class EthernetRepr:
    """The parsed Ethernet II header."""

    dst: bytes
    src: bytes
    ethertype: int


def parse(frame: bytes | bytearray | memoryview) -> tuple[EthernetRepr, memoryview]:
    """Parse an Ethernet II header and return it with a view of the payload.

    Raises MalformedError(TRUNCATED) for a frame shorter than 14 bytes. A
    VLAN tag (0x8100) is returned as the EtherType, not stripped. The payload
    may end with padding up to the 60-byte minimum frame, so the network layer
    trims it to its own length field.
    """
    if len(frame) < HEADER_LEN:
        raise MalformedError(Reason.TRUNCATED, f"Ethernet frame of {len(frame)} bytes, need {HEADER_LEN}")
    view = memoryview(frame)
    dst, src, ethertype = _HEADER.unpack_from(view)
    return EthernetRepr(dst, src, ethertype), view[HEADER_LEN:]


def build(dst: bytes, src: bytes, ethertype: int, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """Build an Ethernet II frame, leaving the padding to the minimum size to the device.

    Raises ValueError unless both addresses have 6 bytes.
    """
    if len(dst) != MAC_LEN or len(src) != MAC_LEN:
        raise ValueError(f"invalid MAC address length: dst {dst.hex()!r}, src {src.hex()!r} (need 6 bytes each)")
    return b"".join((_HEADER.pack(dst, src, ethertype), payload))


def format_mac(mac: bytes) -> str:
    """Format a 6-byte MAC address as lowercase hex pairs: "02:00:00:aa:bb:cc"."""
    return mac.hex(":")


def parse_mac(text: str) -> bytes:
    """Parse a MAC address written as six colon-separated hex pairs.

    Raises ValueError naming the text if it is not of that form.
    """
    if _MAC_TEXT.fullmatch(text) is None:
        raise ValueError(f"invalid MAC address {text!r}: expected six hex pairs like 02:00:00:aa:bb:cc")
    return bytes.fromhex(text.replace(":", ""))


def ipv4_multicast_mac(ip: bytes) -> bytes:
    """Map an IPv4 multicast address to its MAC address (RFC 1112 section 6.4).

    The low 23 bits of the group address go into 01:00:5e:00:00:00.
    """
    return b"\x01\x00\x5e" + bytes((ip[1] & 0x7F, ip[2], ip[3]))


def ipv6_multicast_mac(ip: bytes) -> bytes:
    """Map an IPv6 multicast address to its MAC address (RFC 2464 section 7).

    The last 32 bits of the address follow the prefix 33:33.
    """
    return b"\x33\x33" + bytes(ip[12:16])
