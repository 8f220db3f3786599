"""ICMP for IPv4 (RFC 792), with the error rules of RFC 1122 and RFC 1812."""

import dataclasses
import struct

from .checksum import checksum, ones_complement_sum
from .errors import MalformedError, Reason

HEADER_LEN = 8

TYPE_ECHO_REPLY = 0
TYPE_DEST_UNREACHABLE = 3
TYPE_ECHO_REQUEST = 8
TYPE_TIME_EXCEEDED = 11
TYPE_PARAMETER_PROBLEM = 12

CODE_NET_UNREACHABLE = 0
CODE_HOST_UNREACHABLE = 1
CODE_PROTOCOL_UNREACHABLE = 2
CODE_PORT_UNREACHABLE = 3
CODE_FRAGMENTATION_NEEDED = 4

# Source quench (4) and redirect (5) are errors too, although we never send them.
_ERROR_TYPES = frozenset((TYPE_DEST_UNREACHABLE, 4, 5, TYPE_TIME_EXCEEDED, TYPE_PARAMETER_PROBLEM))

# RFC 1812 section 4.3.2.3: the error datagram, IPv4 header included, stays
# within 576 bytes. We send a 20-byte header without options.
_MAX_ERROR_DATAGRAM = 576
_MAX_QUOTE = _MAX_ERROR_DATAGRAM - 20 - HEADER_LEN

_HEADER = struct.Struct("!BBHI")


@dataclasses.dataclass(slots=True)
class IcmpRepr:
    """The parsed ICMP message, where ``rest`` is the 32-bit word after the checksum."""

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
    def next_hop_mtu(self) -> int:
        """The next-hop MTU of a fragmentation-needed message (RFC 1191 section 4)."""
        return self.rest & 0xFFFF


def parse(message: bytes | bytearray | memoryview, verify_checksum: bool = True) -> IcmpRepr:
    """Parse an ICMP message, the whole IPv4 payload.

    Raises MalformedError with TRUNCATED below 8 bytes, and BAD_CHECKSUM if
    the checksum over the whole message fails (RFC 792) while
    ``verify_checksum`` is true. Unknown types and codes are returned as is,
    so the caller can silently drop them as RFC 1122 section 3.2.2 requires.
    """
    if len(message) < HEADER_LEN:
        raise MalformedError(Reason.TRUNCATED, f"ICMP message of {len(message)} bytes, need {HEADER_LEN}")
    view = memoryview(message)
    type, code, _, rest = _HEADER.unpack_from(view)
    if verify_checksum and ones_complement_sum(view) != 0xFFFF:
        raise MalformedError(Reason.BAD_CHECKSUM, f"ICMP checksum mismatch, type {type} code {code}")
    return IcmpRepr(type, code, rest, view[HEADER_LEN:])


def build(type: int, code: int, rest: int, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """Build an ICMP message with its checksum filled."""
    header_sum = ones_complement_sum(_HEADER.pack(type, code, 0, rest))
    value = checksum(payload, header_sum)
    return b"".join((_HEADER.pack(type, code, value, rest), payload))


def build_echo(type: int, ident: int, seq: int, data: bytes | bytearray | memoryview = b"") -> bytes:
    """Build an echo request or reply, which must copy the request's id, seq and data (RFC 792)."""
    return build(type, 0, (ident << 16) | seq, data)


def build_error(type: int, code: int, original_packet: bytes | bytearray | memoryview, rest: int = 0) -> bytes:
    """Build an ICMP error that quotes ``original_packet`` from its IPv4 header on.

    The quote is as much of the packet as keeps the error datagram within 576
    bytes (RFC 1812 section 4.3.2.3), which is 548 bytes behind our 20-byte
    IPv4 header. The caller decides whether to send an error at all: RFC 1122
    section 3.2.2 forbids errors about ICMP errors, broadcasts, multicasts and
    non-first fragments.
    """
    return build(type, code, rest, memoryview(original_packet)[:_MAX_QUOTE])


def is_error(type: int) -> bool:
    """Tell whether ``type`` is an ICMP error message, about which no error may be sent."""
    return type in _ERROR_TYPES
