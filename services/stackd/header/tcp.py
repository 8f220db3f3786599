"""TCP header: parse and build (RFC 9293 section 3.1).

Options follow RFC 9293 section 3.2 (EOL, NOP, MSS), RFC 7323 (window scale,
timestamps) and RFC 2018 (SACK-permitted, SACK). Parsing checks every length
before it reads and skips unknown options, as RFC 9293 section 3.1 requires.
"""

import dataclasses
import struct

from .checksum import transport_checksum, transport_checksum_ok
from .errors import MalformedError, Reason

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

HEADER_LEN = 20
MAX_OPTIONS_LEN = 40
PROTOCOL = 6

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WINDOW_SCALE = 3
OPT_SACK_PERMITTED = 4
OPT_SACK = 5
OPT_TIMESTAMP = 8

# Source port, destination port, sequence number, acknowledgment number, data
# offset (high 4 bits; the low 4 bits are reserved), flags, window, checksum,
# urgent pointer.
_HEADER = struct.Struct("!HHIIBBHHH")
_CHECKSUM_OFFSET = 16
_U16 = struct.Struct("!H")
_U32_PAIR = struct.Struct("!II")

# The fixed total length of each known option, kind and length bytes included.
# SACK is variable and checked on its own.
_OPTION_LENGTHS = {OPT_MSS: 4, OPT_WINDOW_SCALE: 3, OPT_SACK_PERMITTED: 2, OPT_TIMESTAMP: 10}


@dataclasses.dataclass(slots=True)
class TcpRepr:
    """A parsed TCP segment: header fields, known options and payload.

    ``window`` is the raw 16-bit field; the connection applies the window scale.
    Sequence and acknowledgment numbers are the raw 32-bit values.
    """

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    urgent: int = 0
    mss: int | None = None
    window_scale: int | None = None
    sack_permitted: bool = False
    timestamp: tuple[int, int] | None = None
    sack_blocks: tuple[tuple[int, int], ...] = ()
    payload: bytes | memoryview = b""

    @property
    def seg_len(self) -> int:
        """Sequence space the segment occupies: payload bytes plus one each for SYN and FIN."""
        length = len(self.payload)
        if self.flags & SYN:
            length += 1
        if self.flags & FIN:
            length += 1
        return length

    def has(self, flag: int) -> bool:
        """Return whether every bit of ``flag`` is set."""
        return self.flags & flag == flag


def parse(segment: bytes | bytearray | memoryview, src_ip: bytes, dst_ip: bytes,
          verify_checksum: bool = True) -> TcpRepr:
    """Parse a TCP segment received from ``src_ip`` for ``dst_ip``.

    The addresses (4 or 16 bytes) select the IPv4 or IPv6 pseudo-header for the
    checksum. The payload is a memoryview into ``segment``, so the caller must
    keep ``segment`` unchanged while it uses the result.

    Raises MalformedError with TRUNCATED (shorter than 20 bytes), BAD_HEADER_LENGTH
    (data offset below 5 or past the segment) or BAD_CHECKSUM. Malformed options
    do not raise: like Linux, parsing skips or stops at them and keeps the segment.
    """
    if len(segment) < HEADER_LEN:
        raise MalformedError(Reason.TRUNCATED, f"TCP segment of {len(segment)} bytes, minimum {HEADER_LEN}")

    src_port, dst_port, seq, ack, offset_byte, flags, window, _, urgent = _HEADER.unpack_from(segment)
    header_len = (offset_byte >> 4) * 4
    if header_len < HEADER_LEN or header_len > len(segment):
        raise MalformedError(Reason.BAD_HEADER_LENGTH,
                             f"TCP data offset {header_len} bytes in a segment of {len(segment)} bytes")

    if verify_checksum and not transport_checksum_ok(src_ip, dst_ip, PROTOCOL, segment):
        raise MalformedError(Reason.BAD_CHECKSUM, f"TCP segment from port {src_port} to port {dst_port}")

    result = TcpRepr(src_port=src_port, dst_port=dst_port, seq=seq, ack=ack, flags=flags,
                     window=window, urgent=urgent)
    if header_len > HEADER_LEN:
        _parse_options(segment, header_len, result)
    if header_len < len(segment):
        result.payload = memoryview(segment)[header_len:]
    return result


def _parse_options(segment, header_len: int, result: TcpRepr) -> None:
    """Fill the known options of ``result`` from the option bytes of ``segment``.

    Bad options are handled as Linux's tcp_parse_options handles them, which
    keeps the segment: an option with a length below 2 or running past the
    header ends parsing, and a known option with the wrong length is skipped.
    """
    position = HEADER_LEN
    while position < header_len:
        kind = segment[position]
        if kind == OPT_EOL:
            return
        if kind == OPT_NOP:
            position += 1
            continue

        if position + 1 >= header_len:
            return
        length = segment[position + 1]
        if length < 2 or position + length > header_len:
            return
        expected = _OPTION_LENGTHS.get(kind)
        if expected is not None and length != expected:
            position += length
            continue

        body = position + 2
        if kind == OPT_MSS:
            result.mss = _U16.unpack_from(segment, body)[0]
        elif kind == OPT_WINDOW_SCALE:
            result.window_scale = segment[body]
        elif kind == OPT_SACK_PERMITTED:
            result.sack_permitted = True
        elif kind == OPT_TIMESTAMP:
            result.timestamp = _U32_PAIR.unpack_from(segment, body)
        elif kind == OPT_SACK and length > 2 and (length - 2) % 8 == 0:
            result.sack_blocks = tuple(_U32_PAIR.unpack_from(segment, offset)
                                       for offset in range(body, position + length, 8))
        position += length


def build_header(repr: TcpRepr) -> bytearray:
    """Build the header and options of ``repr`` without its payload; the checksum field is zero.

    For a segment whose checksum the device completes. Raises ValueError
    when the options exceed 40 bytes.
    """
    options = _build_options(repr)
    header_len = HEADER_LEN + len(options)
    header = bytearray(_HEADER.pack(repr.src_port, repr.dst_port, repr.seq & 0xFFFFFFFF, repr.ack & 0xFFFFFFFF,
                                    (header_len // 4) << 4, repr.flags & 0xFF, repr.window, 0, repr.urgent))
    header += options
    return header


def build(repr: TcpRepr, src_ip: bytes, dst_ip: bytes) -> bytes:
    """Build the segment for ``repr`` sent from ``src_ip`` to ``dst_ip``, checksum filled.

    Options are written with NOP padding so that each starts on a 4-byte
    boundary. Raises ValueError when the options exceed 40 bytes.
    """
    options = _build_options(repr)
    header_len = HEADER_LEN + len(options)
    header = _HEADER.pack(repr.src_port, repr.dst_port, repr.seq & 0xFFFFFFFF, repr.ack & 0xFFFFFFFF,
                          (header_len // 4) << 4, repr.flags & 0xFF, repr.window, 0, repr.urgent)

    segment = bytearray(header)
    segment += options
    segment += repr.payload
    _U16.pack_into(segment, _CHECKSUM_OFFSET, transport_checksum(src_ip, dst_ip, PROTOCOL, segment))
    return bytes(segment)


def _build_options(repr: TcpRepr) -> bytes:
    """Return the option bytes of ``repr``, a multiple of 4 bytes long."""
    parts = []
    if repr.mss is not None:
        parts.append(struct.pack("!BBH", OPT_MSS, 4, repr.mss))
    if repr.window_scale is not None:
        parts.append(struct.pack("!BBBB", OPT_NOP, OPT_WINDOW_SCALE, 3, repr.window_scale))
    if repr.sack_permitted:
        parts.append(struct.pack("!BBBB", OPT_NOP, OPT_NOP, OPT_SACK_PERMITTED, 2))
    if repr.timestamp is not None:
        parts.append(struct.pack("!BBBBII", OPT_NOP, OPT_NOP, OPT_TIMESTAMP, 10, *repr.timestamp))
    if repr.sack_blocks:
        blocks = repr.sack_blocks
        parts.append(struct.pack("!BBBB", OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(blocks)))
        parts.extend(_U32_PAIR.pack(left & 0xFFFFFFFF, right & 0xFFFFFFFF) for left, right in blocks)

    options = b"".join(parts)
    if len(options) > MAX_OPTIONS_LEN:
        raise ValueError(f"TCP options need {len(options)} bytes, maximum {MAX_OPTIONS_LEN}; send fewer SACK blocks")
    return options
