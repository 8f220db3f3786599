"""IPv4 headers (RFC 791) with the receive checks of RFC 1122 section 3.2.1."""

import dataclasses
import struct

from .checksum import checksum, ones_complement_sum
from .errors import MalformedError, Reason

HEADER_LEN = 20
MAX_HEADER_LEN = 60
MAX_TOTAL_LENGTH = 0xFFFF
ADDRESS_LEN = 4

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

_HEADER = struct.Struct("!BBHHHBBH4s4s")
_CHECKSUM_OFFSET = 10

_FLAG_DONT_FRAGMENT = 0x4000
_FLAG_MORE_FRAGMENTS = 0x2000
_FRAGMENT_OFFSET_MASK = 0x1FFF


@dataclasses.dataclass(slots=True)
class Ipv4Repr:
    """The parsed IPv4 header, with ``fragment_offset`` in bytes rather than 8-byte units."""

    src: bytes
    dst: bytes
    protocol: int
    ttl: int
    total_length: int
    header_length: int
    ident: int
    tos: int
    dont_fragment: bool
    more_fragments: bool
    fragment_offset: int
    options: bytes


def parse(packet: bytes | bytearray | memoryview, verify_checksum: bool = True) -> tuple[Ipv4Repr, memoryview]:
    """Parse an IPv4 header and return it with a view of the payload.

    Checks, in order, with the reason raised (RFC 791, RFC 1122 section 3.2.1):

    - at least 20 bytes, else TRUNCATED
    - version 4, else BAD_VERSION
    - IHL of at least 5 words and within the buffer, else BAD_HEADER_LENGTH
    - header length <= total length <= buffer length, else BAD_TOTAL_LENGTH
    - the header checksum while ``verify_checksum`` is true, else BAD_CHECKSUM

    The payload ends at the total length, which drops Ethernet padding.
    Options are returned raw, not validated.
    """
    if len(packet) < HEADER_LEN:
        raise MalformedError(Reason.TRUNCATED, f"IPv4 packet of {len(packet)} bytes, need {HEADER_LEN}")
    view = memoryview(packet)
    version_ihl, tos, total_length, ident, flags_fragment, ttl, protocol, _, src, dst = _HEADER.unpack_from(view)

    version = version_ihl >> 4
    if version != 4:
        raise MalformedError(Reason.BAD_VERSION, f"IP version {version} in an IPv4 packet")

    header_length = (version_ihl & 0x0F) * 4
    if header_length < HEADER_LEN or header_length > len(view):
        raise MalformedError(
            Reason.BAD_HEADER_LENGTH, f"IPv4 header length {header_length} with {len(view)} bytes received"
        )
    if not header_length <= total_length <= len(view):
        raise MalformedError(
            Reason.BAD_TOTAL_LENGTH,
            f"IPv4 total length {total_length} with header length {header_length} and {len(view)} bytes received",
        )

    if verify_checksum and ones_complement_sum(view[:header_length]) != 0xFFFF:
        raise MalformedError(Reason.BAD_CHECKSUM, f"IPv4 header checksum mismatch, ident {ident}")

    repr = Ipv4Repr(
        src=src,
        dst=dst,
        protocol=protocol,
        ttl=ttl,
        total_length=total_length,
        header_length=header_length,
        ident=ident,
        tos=tos,
        dont_fragment=bool(flags_fragment & _FLAG_DONT_FRAGMENT),
        more_fragments=bool(flags_fragment & _FLAG_MORE_FRAGMENTS),
        fragment_offset=(flags_fragment & _FRAGMENT_OFFSET_MASK) * 8,
        options=bytes(view[HEADER_LEN:header_length]),
    )
    return repr, view[header_length:total_length]


def build_header(
    src: bytes,
    dst: bytes,
    protocol: int,
    payload_length: int,
    *,
    ttl: int = 64,
    ident: int = 0,
    tos: int = 0,
    dont_fragment: bool = True,
    more_fragments: bool = False,
    fragment_offset: int = 0,
    options: bytes = b"",
) -> bytes:
    """Build an IPv4 header for a payload of ``payload_length`` bytes, checksum filled.

    Raises ValueError for an address that is not 4 bytes, options that are
    not a multiple of 4 bytes or exceed 40, a fragment offset that is not a
    multiple of 8 below 65536, or a total length above 65535.
    """
    if len(src) != ADDRESS_LEN or len(dst) != ADDRESS_LEN:
        raise ValueError(f"invalid IPv4 address length: src {src.hex()!r}, dst {dst.hex()!r} (need 4 bytes each)")
    if len(options) % 4 or len(options) > MAX_HEADER_LEN - HEADER_LEN:
        raise ValueError(f"invalid IPv4 options length {len(options)}: pad to a multiple of 4, at most 40")
    if fragment_offset % 8 or not 0 <= fragment_offset <= _FRAGMENT_OFFSET_MASK * 8:
        raise ValueError(f"invalid IPv4 fragment offset {fragment_offset}: need a multiple of 8 from 0 to 65528")
    header_length = HEADER_LEN + len(options)
    total_length = header_length + payload_length
    if total_length > MAX_TOTAL_LENGTH:
        raise ValueError(f"IPv4 total length {total_length} exceeds {MAX_TOTAL_LENGTH}: fragment the payload")

    flags_fragment = fragment_offset // 8
    if dont_fragment:
        flags_fragment |= _FLAG_DONT_FRAGMENT
    if more_fragments:
        flags_fragment |= _FLAG_MORE_FRAGMENTS
    version_ihl = 0x40 | (header_length // 4)

    header = bytearray(_HEADER.pack(version_ihl, tos, total_length, ident, flags_fragment, ttl, protocol, 0, src, dst))
    header += options
    struct.pack_into("!H", header, _CHECKSUM_OFFSET, checksum(header))
    return bytes(header)


def build(
    src: bytes,
    dst: bytes,
    protocol: int,
    payload: bytes | bytearray | memoryview,
    *,
    ttl: int = 64,
    ident: int = 0,
    tos: int = 0,
    dont_fragment: bool = True,
    more_fragments: bool = False,
    fragment_offset: int = 0,
    options: bytes = b"",
) -> bytes:
    """Build an IPv4 packet around ``payload``, raising ValueError as build_header does."""
    header = build_header(
        src,
        dst,
        protocol,
        len(payload),
        ttl=ttl,
        ident=ident,
        tos=tos,
        dont_fragment=dont_fragment,
        more_fragments=more_fragments,
        fragment_offset=fragment_offset,
        options=options,
    )
    return b"".join((header, payload))


def is_fragment(repr: Ipv4Repr) -> bool:
    """Tell whether the packet is a fragment: more fragments follow or the offset is not 0."""
    return repr.more_fragments or repr.fragment_offset != 0


def prefix_mask(prefix_len: int) -> int:
    """Return the 32-bit network mask for a prefix length from 0 to 32."""
    if not 0 <= prefix_len <= 32:
        raise ValueError(f"invalid IPv4 prefix length {prefix_len}: need 0 to 32")
    return (0xFFFFFFFF << (32 - prefix_len)) & 0xFFFFFFFF


def in_prefix(ip: bytes, net: bytes, prefix_len: int) -> bool:
    """Tell whether ``ip`` lies in the network ``net``/``prefix_len``."""
    mask = prefix_mask(prefix_len)
    return int.from_bytes(ip, "big") & mask == int.from_bytes(net, "big") & mask


def is_multicast(ip: bytes) -> bool:
    """Tell whether ``ip`` is in 224.0.0.0/4 (RFC 5771)."""
    return ip[0] & 0xF0 == 0xE0


def is_loopback(ip: bytes) -> bool:
    """Tell whether ``ip`` is in 127.0.0.0/8 (RFC 1122 section 3.2.1.3)."""
    return ip[0] == 127


def is_limited_broadcast(ip: bytes) -> bool:
    """Tell whether ``ip`` is 255.255.255.255 (RFC 919)."""
    return ip == b"\xff\xff\xff\xff"


def is_unspecified(ip: bytes) -> bool:
    """Tell whether ``ip`` is 0.0.0.0, the "this host" source of RFC 1122 section 3.2.1.3."""
    return ip == b"\x00\x00\x00\x00"
