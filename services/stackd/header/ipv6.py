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
