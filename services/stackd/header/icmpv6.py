"""ICMPv6 messages (RFC 4443), Neighbor Discovery messages and options (RFC 4861)
and MLDv2 reports (RFC 3810)."""

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
TYPE_MLD_QUERY = 130
TYPE_MLD_V1_REPORT = 131
TYPE_ROUTER_SOLICITATION = 133
TYPE_ROUTER_ADVERTISEMENT = 134
TYPE_NEIGHBOR_SOLICITATION = 135
TYPE_NEIGHBOR_ADVERTISEMENT = 136
TYPE_REDIRECT = 137
TYPE_MLD_V2_REPORT = 143

CODE_NO_ROUTE = 0
CODE_ADMIN_PROHIBITED = 1
CODE_ADDRESS_UNREACHABLE = 3
CODE_PORT_UNREACHABLE = 4
CODE_HOP_LIMIT_EXCEEDED = 0
CODE_REASSEMBLY_TIME_EXCEEDED = 1
CODE_ERRONEOUS_HEADER = 0
CODE_UNRECOGNIZED_NEXT_HEADER = 1
CODE_UNRECOGNIZED_OPTION = 2

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


# Neighbor Discovery (RFC 4861 section 4).

OPTION_SOURCE_LINK_ADDRESS = 1
OPTION_TARGET_LINK_ADDRESS = 2
OPTION_PREFIX_INFORMATION = 3
OPTION_MTU = 5

NA_FLAG_ROUTER = 0x80000000
NA_FLAG_SOLICITED = 0x40000000
NA_FLAG_OVERRIDE = 0x20000000

# MLDv2 multicast address record type CHANGE_TO_EXCLUDE_MODE with no
# sources, which reports a join (RFC 3810 section 5.2.12).
MLD_CHANGE_TO_EXCLUDE = 4
MLD_V2_ROUTERS = bytes.fromhex("ff020000000000000000000000000016")


@dataclasses.dataclass(slots=True)
class NdpRepr:
    """A parsed NS, NA or RA message with the options this stack reads.

    ``target`` is empty for an RA. ``link_address`` is the source or target
    link-layer address option, empty when absent. ``mtu`` is 0 without an MTU
    option. ``router_lifetime`` is in seconds and only set for an RA.
    """

    type: int
    flags: int
    target: bytes
    link_address: bytes
    mtu: int = 0
    router_lifetime: int = 0
    hop_limit: int = 0


def parse_ndp(message: Icmpv6Repr) -> NdpRepr:
    """Parse the body and options of an NS, NA or RA message (RFC 4861 sections 4.2 to 4.4).

    Raises MalformedError(TRUNCATED) for a body shorter than the message type
    needs and MalformedError(BAD_OPTION) for an option of length 0 or one
    that runs past the message (section 4.6).
    """
    body = message.payload
    if message.type == TYPE_ROUTER_ADVERTISEMENT:
        if len(body) < 8:
            raise MalformedError(Reason.TRUNCATED, f"router advertisement body of {len(body)} bytes, need 8")
        target, options_start = b"", 8
        hop_limit = message.rest >> 24
        flags = (message.rest >> 16) & 0xFF
        lifetime = message.rest & 0xFFFF
    else:
        if len(body) < 16:
            raise MalformedError(Reason.TRUNCATED, f"neighbor discovery body of {len(body)} bytes, need 16")
        target, options_start = bytes(body[:16]), 16
        hop_limit, flags, lifetime = 0, message.rest, 0

    repr = NdpRepr(message.type, flags, target, b"", router_lifetime=lifetime, hop_limit=hop_limit)
    offset = options_start
    while offset < len(body):
        if offset + 2 > len(body) or body[offset + 1] == 0:
            raise MalformedError(Reason.BAD_OPTION, f"neighbor discovery option at offset {offset} has length 0")
        kind, end = body[offset], offset + body[offset + 1] * 8
        if end > len(body):
            raise MalformedError(Reason.BAD_OPTION, f"neighbor discovery option {kind} ends at {end}, past {len(body)}")
        if kind in (OPTION_SOURCE_LINK_ADDRESS, OPTION_TARGET_LINK_ADDRESS) and end - offset >= 8:
            repr.link_address = bytes(body[offset + 2:offset + 8])
        elif kind == OPTION_MTU and end - offset == 8:
            repr.mtu = int.from_bytes(body[offset + 4:offset + 8], "big")
        offset = end
    return repr


def _link_option(kind: int, mac: bytes) -> bytes:
    return bytes((kind, 1)) + mac


def build_neighbor_solicitation(src_ip: bytes, dst_ip: bytes, target: bytes, mac: bytes) -> bytes:
    """Build an NS for ``target``; the source link-layer option is left out for a DAD probe from ::."""
    options = b"" if src_ip == b"\x00" * 16 else _link_option(OPTION_SOURCE_LINK_ADDRESS, mac)
    return build(src_ip, dst_ip, TYPE_NEIGHBOR_SOLICITATION, 0, 0, target + options)


def build_neighbor_advertisement(src_ip: bytes, dst_ip: bytes, target: bytes, mac: bytes, flags: int) -> bytes:
    """Build an NA for ``target`` with the target link-layer address option."""
    return build(src_ip, dst_ip, TYPE_NEIGHBOR_ADVERTISEMENT, 0, flags,
                 target + _link_option(OPTION_TARGET_LINK_ADDRESS, mac))


def build_mld_report(src_ip: bytes, groups: list[bytes]) -> bytes:
    """Build an MLDv2 report that joins ``groups`` (RFC 3810 section 5.2), addressed to ff02::16."""
    records = b"".join(bytes((MLD_CHANGE_TO_EXCLUDE, 0, 0, 0)) + group for group in groups)
    return build(src_ip, MLD_V2_ROUTERS, TYPE_MLD_V2_REPORT, 0, len(groups), records)
