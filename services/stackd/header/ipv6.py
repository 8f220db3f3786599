"""The IPv6 fixed header (RFC 8200 section 3).

Extension headers are not parsed here: ``next_header`` is returned as found,
and is_extension_header() reports whether a chain continues.
"""

import dataclasses
import struct

from .errors import MalformedError, Reason

HEADER_LEN = 40
ADDRESS_LEN = 16
MAX_PAYLOAD_LENGTH = 0xFFFF

NEXT_HEADER_HOP_BY_HOP = 0
NEXT_HEADER_TCP = 6
NEXT_HEADER_UDP = 17
NEXT_HEADER_ROUTING = 43
NEXT_HEADER_FRAGMENT = 44
NEXT_HEADER_ICMPV6 = 58
NEXT_HEADER_NONE = 59
NEXT_HEADER_DEST_OPTS = 60

# Extension headers of RFC 8200 section 4 and the IANA list it refers to.
# ESP (50) is left out because what follows it is encrypted.
_EXTENSION_HEADERS = frozenset(
    (NEXT_HEADER_HOP_BY_HOP, NEXT_HEADER_ROUTING, NEXT_HEADER_FRAGMENT, NEXT_HEADER_DEST_OPTS, 51, 135, 139, 140)
)

_HEADER = struct.Struct("!IHBB16s16s")


@dataclasses.dataclass(slots=True)
class Ipv6Repr:
    """The parsed IPv6 fixed header, whose ``payload_length`` excludes the 40 header bytes."""

    src: bytes
    dst: bytes
    next_header: int
    hop_limit: int
    payload_length: int
    traffic_class: int
    flow_label: int


def parse(packet: bytes | bytearray | memoryview) -> tuple[Ipv6Repr, memoryview]:
    """Parse the IPv6 fixed header and return it with a view of the payload.

    Raises MalformedError with TRUNCATED below 40 bytes, BAD_VERSION unless
    the version is 6, and BAD_TOTAL_LENGTH if the payload length runs past
    the buffer. The payload ends at the payload length, which drops Ethernet
    padding.
    """
    if len(packet) < HEADER_LEN:
        raise MalformedError(Reason.TRUNCATED, f"IPv6 packet of {len(packet)} bytes, need {HEADER_LEN}")
    view = memoryview(packet)
    first_word, payload_length, next_header, hop_limit, src, dst = _HEADER.unpack_from(view)

    version = first_word >> 28
    if version != 6:
        raise MalformedError(Reason.BAD_VERSION, f"IP version {version} in an IPv6 packet")

    # NOTE: a payload length of 0 with a Jumbo Payload option (RFC 2675) is
    # read as an empty payload because jumbograms are not supported.
    end = HEADER_LEN + payload_length
    if end > len(view):
        raise MalformedError(
            Reason.BAD_TOTAL_LENGTH, f"IPv6 payload length {payload_length} with {len(view)} bytes received"
        )

    repr = Ipv6Repr(
        src=src,
        dst=dst,
        next_header=next_header,
        hop_limit=hop_limit,
        payload_length=payload_length,
        traffic_class=(first_word >> 20) & 0xFF,
        flow_label=first_word & 0xFFFFF,
    )
    return repr, view[HEADER_LEN:end]


def build(
    src: bytes,
    dst: bytes,
    next_header: int,
    payload: bytes | bytearray | memoryview,
    *,
    hop_limit: int = 64,
    traffic_class: int = 0,
    flow_label: int = 0,
) -> bytes:
    """Build an IPv6 packet around ``payload``, which may start with extension headers.

    Raises ValueError for an address that is not 16 bytes, a payload above
    65535 bytes, a traffic class above 8 bits, or a flow label above 20 bits.
    """
    if len(src) != ADDRESS_LEN or len(dst) != ADDRESS_LEN:
        raise ValueError(f"invalid IPv6 address length: src {src.hex()!r}, dst {dst.hex()!r} (need 16 bytes each)")
    if len(payload) > MAX_PAYLOAD_LENGTH:
        raise ValueError(f"IPv6 payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_LENGTH}: fragment it")
    if not 0 <= traffic_class <= 0xFF:
        raise ValueError(f"invalid IPv6 traffic class {traffic_class}: need 0 to 255")
    if not 0 <= flow_label <= 0xFFFFF:
        raise ValueError(f"invalid IPv6 flow label {flow_label}: need 0 to 0xFFFFF")

    first_word = (6 << 28) | (traffic_class << 20) | flow_label
    header = _HEADER.pack(first_word, len(payload), next_header, hop_limit, src, dst)
    return b"".join((header, payload))


def is_extension_header(next_header: int) -> bool:
    """Tell whether ``next_header`` names an extension header that a chain walk must skip."""
    return next_header in _EXTENSION_HEADERS


def is_multicast(ip: bytes) -> bool:
    """Tell whether ``ip`` is in ff00::/8 (RFC 4291 section 2.7)."""
    return ip[0] == 0xFF


def is_loopback(ip: bytes) -> bool:
    """Tell whether ``ip`` is ::1."""
    return ip == b"\x00" * 15 + b"\x01"


def is_unspecified(ip: bytes) -> bool:
    """Tell whether ``ip`` is ::."""
    return ip == b"\x00" * 16


def is_link_local(ip: bytes) -> bool:
    """Tell whether ``ip`` is in fe80::/10 (RFC 4291 section 2.5.6)."""
    return ip[0] == 0xFE and ip[1] & 0xC0 == 0x80


# Extension headers (RFC 8200 section 4).

FRAGMENT_HEADER_LEN = 8
_FRAGMENT = struct.Struct("!BxHI")
_MORE_FRAGMENTS = 0x1
_AUTHENTICATION_HEADER = 51
_SOLICITED_NODE_PREFIX = bytes.fromhex("ff0200000000000000000001ff")

OPTION_PAD1 = 0
OPTION_PADN = 1
OPTION_ROUTER_ALERT = 5

# The two high bits of an option type select the action for an unrecognized
# type (RFC 8200 section 4.2).
ACTION_SKIP = 0
ACTION_DISCARD = 1
ACTION_DISCARD_ICMP = 2
ACTION_DISCARD_ICMP_UNLESS_MULTICAST = 3


@dataclasses.dataclass(slots=True)
class FragmentRepr:
    """The Fragment header, with ``offset`` in bytes rather than 8-byte units."""

    next_header: int
    offset: int
    more: bool
    ident: int


@dataclasses.dataclass(slots=True)
class OptionRepr:
    """One option of a Hop-by-Hop or Destination Options header; ``offset`` is from the header start."""

    type: int
    offset: int
    data: memoryview

    @property
    def action(self) -> int:
        """The action for an unrecognized option (one of the ACTION_* values)."""
        return self.type >> 6


def extension_header_length(next_header: int, data: bytes | bytearray | memoryview) -> int:
    """Return the length in bytes of the extension header at the start of ``data``.

    Raises MalformedError(TRUNCATED) when ``data`` is shorter than the
    header's first two bytes or than the length they give.
    """
    if len(data) < 2:
        raise MalformedError(Reason.TRUNCATED, f"extension header {next_header} in {len(data)} bytes, need 2")
    if next_header == NEXT_HEADER_FRAGMENT:
        length = FRAGMENT_HEADER_LEN
    elif next_header == _AUTHENTICATION_HEADER:
        length = (data[1] + 2) * 4  # RFC 4302 section 2.2: in 4-byte units minus 2
    else:
        length = (data[1] + 1) * 8
    if length > len(data):
        raise MalformedError(
            Reason.TRUNCATED, f"extension header {next_header} of {length} bytes with {len(data)} bytes left"
        )
    return length


def parse_fragment(data: bytes | bytearray | memoryview) -> FragmentRepr:
    """Parse a Fragment header (RFC 8200 section 4.5); raises MalformedError(TRUNCATED) below 8 bytes."""
    if len(data) < FRAGMENT_HEADER_LEN:
        raise MalformedError(Reason.TRUNCATED, f"fragment header of {len(data)} bytes, need {FRAGMENT_HEADER_LEN}")
    next_header, offset_flags, ident = _FRAGMENT.unpack_from(data)
    return FragmentRepr(next_header, offset_flags & ~0x7, bool(offset_flags & _MORE_FRAGMENTS), ident)


def build_fragment(next_header: int, offset: int, more: bool, ident: int) -> bytes:
    """Build a Fragment header; raises ValueError for an offset that is not a multiple of 8 below 65536."""
    if offset % 8 or not 0 <= offset <= 0xFFF8:
        raise ValueError(f"invalid IPv6 fragment offset {offset}: need a multiple of 8 from 0 to 65528")
    return _FRAGMENT.pack(next_header, offset | (_MORE_FRAGMENTS if more else 0), ident & 0xFFFFFFFF)


def parse_options(header: bytes | bytearray | memoryview) -> list[OptionRepr]:
    """Parse the options of a Hop-by-Hop or Destination Options header (RFC 8200 section 4.2).

    ``header`` is the whole extension header, its first two bytes included.
    Padding options are left out. Raises MalformedError(BAD_OPTION) when an
    option's length runs past the header.
    """
    view = memoryview(header)
    options = []
    offset = 2
    while offset < len(view):
        option_type = view[offset]
        if option_type == OPTION_PAD1:
            offset += 1
            continue
        if offset + 2 > len(view):
            raise MalformedError(Reason.BAD_OPTION, f"option {option_type} at offset {offset} has no length byte")
        end = offset + 2 + view[offset + 1]
        if end > len(view):
            raise MalformedError(
                Reason.BAD_OPTION, f"option {option_type} at offset {offset} ends at {end}, past {len(view)}"
            )
        if option_type != OPTION_PADN:
            options.append(OptionRepr(option_type, offset, view[offset + 2:end]))
        offset = end
    return options


def build_hop_by_hop_router_alert(next_header: int) -> bytes:
    """Build an 8-byte Hop-by-Hop header with the Router Alert option for MLD (RFC 2711, RFC 3810 section 5)."""
    return bytes((next_header, 0, OPTION_ROUTER_ALERT, 2, 0, 0, OPTION_PADN, 0))


def solicited_node(ip: bytes) -> bytes:
    """Return the solicited-node multicast address ff02::1:ffXX:XXXX of ``ip`` (RFC 4291 section 2.7.1)."""
    return _SOLICITED_NODE_PREFIX + ip[13:16]


def is_v4_mapped(ip: bytes) -> bool:
    """Tell whether ``ip`` is an IPv4-mapped address ::ffff:a.b.c.d (RFC 4291 section 2.5.5.2)."""
    return len(ip) == ADDRESS_LEN and ip[:12] == b"\x00" * 10 + b"\xff\xff"


def map_v4(ip: bytes) -> bytes:
    """Return the IPv4-mapped IPv6 address of a 4-byte IPv4 address."""
    return b"\x00" * 10 + b"\xff\xff" + ip
