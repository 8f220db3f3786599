"""UDP headers (RFC 768), with the IPv6 checksum rule of RFC 8200 section 8.1."""

import dataclasses
import struct

from .checksum import checksum, ones_complement_sum, pseudo_header_sum, transport_checksum_ok
from .errors import MalformedError, Reason

HEADER_LEN = 8
PROTO_UDP = 17
MAX_LENGTH = 0xFFFF

_HEADER = struct.Struct("!HHHH")


@dataclasses.dataclass(slots=True)
class UdpRepr:
    """The parsed UDP header, whose ``length`` counts the 8 header bytes."""

    src_port: int
    dst_port: int
    length: int
    checksum: int


def _check_addresses(src_ip: bytes, dst_ip: bytes) -> None:
    if len(src_ip) not in (4, 16) or len(dst_ip) != len(src_ip):
        raise ValueError(
            f"invalid UDP address pair: src {src_ip.hex()!r}, dst {dst_ip.hex()!r} (need two 4-byte or two 16-byte addresses)"
        )


def parse(
    datagram: bytes | bytearray | memoryview, src_ip: bytes, dst_ip: bytes, verify_checksum: bool = True
) -> tuple[UdpRepr, memoryview]:
    """Parse a UDP header and return it with a view of the payload.

    Raises MalformedError with TRUNCATED below 8 bytes, and BAD_TOTAL_LENGTH
    if the length field is below 8 or runs past the buffer. The payload ends
    at the length field. A zero checksum means "not computed" over IPv4
    (RFC 768) but is BAD_CHECKSUM over IPv6 (RFC 8200 section 8.1), even when
    ``verify_checksum`` is false. Any other checksum must verify over the
    pseudo-header while ``verify_checksum`` is true. The family follows from
    the 4- or 16-byte addresses, and other lengths raise ValueError.
    """
    _check_addresses(src_ip, dst_ip)
    if len(datagram) < HEADER_LEN:
        raise MalformedError(Reason.TRUNCATED, f"UDP datagram of {len(datagram)} bytes, need {HEADER_LEN}")
    view = memoryview(datagram)
    src_port, dst_port, length, received = _HEADER.unpack_from(view)

    if length < HEADER_LEN or length > len(view):
        raise MalformedError(
            Reason.BAD_TOTAL_LENGTH, f"UDP length {length} with {len(view)} bytes received, port {src_port}->{dst_port}"
        )

    if received == 0:
        if len(src_ip) == 16:
            raise MalformedError(Reason.BAD_CHECKSUM, f"zero UDP checksum over IPv6, port {src_port}->{dst_port}")
    elif verify_checksum and not transport_checksum_ok(src_ip, dst_ip, PROTO_UDP, view[:length]):
        raise MalformedError(Reason.BAD_CHECKSUM, f"UDP checksum mismatch, port {src_port}->{dst_port}")

    return UdpRepr(src_port, dst_port, length, received), view[HEADER_LEN:length]


def build(
    src_ip: bytes, dst_ip: bytes, src_port: int, dst_port: int, payload: bytes | bytearray | memoryview
) -> bytes:
    """Build a UDP datagram with its checksum filled over the pseudo-header.

    A computed checksum of 0 is sent as 0xFFFF, since 0 means "none" (RFC 768).
    Raises ValueError for a datagram above 65535 bytes or an invalid address pair.
    """
    _check_addresses(src_ip, dst_ip)
    length = HEADER_LEN + len(payload)
    if length > MAX_LENGTH:
        raise ValueError(f"UDP datagram of {length} bytes exceeds {MAX_LENGTH}: send at most 65527 bytes of payload")

    initial = pseudo_header_sum(src_ip, dst_ip, PROTO_UDP, length)
    initial += ones_complement_sum(_HEADER.pack(src_port, dst_port, length, 0))
    value = checksum(payload, initial) or 0xFFFF
    return b"".join((_HEADER.pack(src_port, dst_port, length, value), payload))
