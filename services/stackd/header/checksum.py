"""The Internet checksum (RFC 1071) and the TCP/UDP pseudo-headers.

The one's complement sum of 16-bit words is computed as one big integer
modulo 0xFFFF: since 2**16 is 1 modulo 0xFFFF, the whole buffer read as a
big-endian integer has the same residue as the sum of its words. This keeps
the per-byte work inside CPython's integer code instead of a Python loop.
"""

import struct

_PSEUDO_V4 = struct.Struct("!4s4sxBH")
_PSEUDO_V6 = struct.Struct("!16s16sI3xB")


def ones_complement_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Return the folded 16-bit one's complement sum of ``data`` plus ``initial``.

    An odd-length buffer is padded with a zero byte, as RFC 1071 specifies.
    """
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    total = int.from_bytes(data, "big") + initial
    if total == 0:
        return 0
    folded = total % 0xFFFF
    return folded or 0xFFFF


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Return the Internet checksum of ``data``: the complement of its sum."""
    return ~ones_complement_sum(data, initial) & 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, protocol: int, length: int) -> int:
    """Return the sum of the IPv4 (RFC 793) or IPv6 (RFC 8200 section 8.1)
    pseudo-header; the family follows from the 4- or 16-byte addresses."""
    if len(src) == 4:
        return ones_complement_sum(_PSEUDO_V4.pack(src, dst, protocol, length))
    return ones_complement_sum(_PSEUDO_V6.pack(src, dst, length, protocol))


def transport_checksum(src: bytes, dst: bytes, protocol: int, segment: bytes | bytearray | memoryview) -> int:
    """Return the TCP or UDP checksum of ``segment`` whose checksum field is zero."""
    return checksum(segment, pseudo_header_sum(src, dst, protocol, len(segment)))


def transport_checksum_ok(src: bytes, dst: bytes, protocol: int, segment: bytes | bytearray | memoryview) -> bool:
    """Check a received TCP or UDP segment, checksum field included."""
    return ones_complement_sum(segment, pseudo_header_sum(src, dst, protocol, len(segment))) == 0xFFFF
