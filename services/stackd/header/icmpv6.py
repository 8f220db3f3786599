"""ICMPv6 messages (RFC 4443), without the Neighbor Discovery options."""

import dataclasses
import struct

from .checksum import checksum, ones_complement_sum, pseudo_header_sum, transport_checksum_ok
from .errors import MalformedError, Reason

HEADER_LEN = 8
NEXT_HEADER_ICMPV6 = 58

TYPE_DEST_UNREACHABLE = 1
TYPE_PACKET_TOO_BIG = 2
TYPE_TIME_EXCEEDED = 3
TYPE_PARAMETER_PROBLEM = 4
TYPE_ECHO_REQUEST = 128
TYPE_ECHO_REPLY = 129

CODE_NO_ROUTE = 0
CODE_ADMIN_PROHIBITED = 1
CODE_ADDRESS_UNREACHABLE = 3
CODE_PORT_UNREACHABLE = 4

# RFC 4443 section 2.4 (c): the error packet stays within the minimum IPv6
# MTU of 1280 bytes. We send a 40-byte header without extension headers.
_MIN_MTU = 1280
_MAX_QUOTE = _MIN_MTU - 40 - HEADER_LEN

_HEADER = struct.Struct("!BBHI")


@dataclasses.dataclass(slots=True)
class Icmpv6Repr:
    """The parsed ICMPv6 message, where ``rest`` is the 32-bit word after the checksum."""

    type: int
    code: int
    rest: int
    payload: memoryview

    @property
    def echo_id(self) -> int:
        """The identifier of an echo request or reply."""
        return self.rest >> 16

    @property
    def echo_seq(self) -> int:
        """The sequence number of an echo request or reply."""
        return self.rest & 0xFFFF

    @property
    def mtu(self) -> int:
        """The MTU of a Packet Too Big message (RFC 4443 section 3.2)."""
        return self.rest

    @property
    def pointer(self) -> int:
        """The offset of the fault in a Parameter Problem message (RFC 4443 section 3.4)."""
        return self.rest


def _check_addresses(src_ip: bytes, dst_ip: bytes) -> None:
    if len(src_ip) != 16 or len(dst_ip) != 16:
        raise ValueError(f"invalid IPv6 address length: src {src_ip.hex()!r}, dst {dst_ip.hex()!r} (need 16 bytes each)")


def parse(
    message: bytes | bytearray | memoryview, src_ip: bytes, dst_ip: bytes, verify_checksum: bool = True
) -> Icmpv6Repr:
    """Parse an ICMPv6 message, the whole upper-layer payload of its IPv6 packet.

    Raises MalformedError with TRUNCATED below 8 bytes, and BAD_CHECKSUM if
    the checksum over the IPv6 pseudo-header and the message fails (RFC 4443
    section 2.3) while ``verify_checksum`` is true. Raises ValueError for
    addresses that are not 16 bytes. Unknown types are returned as is,
    because RFC 4443 section 2.4 has the caller pass unknown errors to the
    upper layer and silently drop unknown informational messages.
    """
    _check_addresses(src_ip, dst_ip)
    if len(message) < HEADER_LEN:
        raise MalformedError(Reason.TRUNCATED, f"ICMPv6 message of {len(message)} bytes, need {HEADER_LEN}")
    view = memoryview(message)
    type, code, _, rest = _HEADER.unpack_from(view)
    if verify_checksum and not transport_checksum_ok(src_ip, dst_ip, NEXT_HEADER_ICMPV6, view):
        raise MalformedError(Reason.BAD_CHECKSUM, f"ICMPv6 checksum mismatch, type {type} code {code}")
    return Icmpv6Repr(type, code, rest, view[HEADER_LEN:])


def build(
    src_ip: bytes, dst_ip: bytes, type: int, code: int, rest: int, payload: bytes | bytearray | memoryview = b""
) -> bytes:
    """Build an ICMPv6 message with its checksum filled over the IPv6 pseudo-header."""
    _check_addresses(src_ip, dst_ip)
    initial = pseudo_header_sum(src_ip, dst_ip, NEXT_HEADER_ICMPV6, HEADER_LEN + len(payload))
    initial += ones_complement_sum(_HEADER.pack(type, code, 0, rest))
    value = checksum(payload, initial)
    return b"".join((_HEADER.pack(type, code, value, rest), payload))


def build_echo(
    src_ip: bytes, dst_ip: bytes, type: int, ident: int, seq: int, data: bytes | bytearray | memoryview = b""
) -> bytes:
    """Build an echo request or reply, which copies the request's id, seq and data (RFC 4443 section 4.2)."""
    return build(src_ip, dst_ip, type, 0, (ident << 16) | seq, data)


def build_error(
    src_ip: bytes,
    dst_ip: bytes,
    type: int,
    code: int,
    original_packet: bytes | bytearray | memoryview,
    rest: int = 0,
) -> bytes:
    """Build an ICMPv6 error that quotes ``original_packet`` from its IPv6 header on.

    The quote is as much of the packet as keeps the error packet within the
    minimum MTU of 1280 bytes (RFC 4443 section 2.4 (c)), which is 1232 bytes
    behind our 40-byte IPv6 header. The caller applies the rules of section
    2.4 (e) on when not to send an error.
    """
    return build(src_ip, dst_ip, type, code, rest, memoryview(original_packet)[:_MAX_QUOTE])


def is_error(type: int) -> bool:
    """Tell whether ``type`` is an ICMPv6 error message: types 0 to 127 (RFC 4443 section 2.1)."""
    return type < 128
