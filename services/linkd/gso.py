"""Software GSO: cut a large TCP frame from stackd into MSS-sized frames.

linkd uses this when the device path has no virtio-net header, so that
stackd can still hand over one frame per 64 KiB of TCP data and the gRPC
stream carries few messages. The rules follow the kernel's tcp_gso_segment()
(net/ipv4/tcp_offload.c): every segment gets the same headers with its own
sequence number, IP length, IPv4 identification and checksums; FIN and PSH
stay on the last segment only and CWR on the first only. A TCPv6 frame may
carry Hop-by-Hop, Routing (with no segments left) and Destination Options
headers before TCP; each segment repeats them.
"""

import struct

from sandnet_linkd import vnet

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
PROTO_TCP = 6
IPV6_HEADER_SIZE = 40
# IPv6 extension headers that may precede TCP in a GSO frame. A Fragment
# header may not, because a fragment cannot be segmented.
IPV6_HOP_BY_HOP = 0
IPV6_ROUTING = 43
IPV6_DEST_OPTS = 60
# RFC 8200 section 4.1 allows each header once, Destination Options twice.
MAX_IPV6_EXTENSION_HEADERS = 4
TCP_FIN = 0x01
TCP_PSH = 0x08
TCP_CWR = 0x80
_TCP_CHECKSUM_OFFSET = 16

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class GsoError(ValueError):
    """Raised when a frame cannot be segmented; the message gives the reason."""


def _ones_complement_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Return the folded one's complement sum of ``data`` (RFC 1071).

    The buffer read as one big-endian integer has the same residue modulo
    0xFFFF as the sum of its 16-bit words, because 2**16 is 1 modulo 0xFFFF.
    """
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    total = int.from_bytes(data, "big") + initial
    if total == 0:
        return 0
    return total % 0xFFFF or 0xFFFF


def _checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    return ~_ones_complement_sum(data, initial) & 0xFFFF


def complete_checksum(frame: bytes, header: vnet.VnetHeader) -> bytes:
    """Fill the checksum of a NEEDS_CSUM frame as the device would.

    The field at csum_start + csum_offset contains the pseudo-header sum, and
    the result is the complement of the sum from csum_start to the end.
    """
    start = header.csum_start
    field = start + header.csum_offset
    if field + 2 > len(frame):
        raise GsoError(f"checksum field at {field} lies outside the frame of {len(frame)} bytes")
    out = bytearray(frame)
    _U16.pack_into(out, field, _checksum(memoryview(out)[start:]))
    return bytes(out)


def segment(frame: bytes, header: vnet.VnetHeader) -> list[bytes]:
    """Cut a TCPv4 or TCPv6 GSO frame into frames of at most gso_size payload bytes.

    Raise GsoError for a frame that is not Ethernet + IPv4/IPv6 + TCP (VLAN
    tags, IPv6 Fragment headers and Routing headers with segments left are
    not handled), for gso_size 0, and for lengths that do not add up.
    """
    gso_type = header.gso_type & ~vnet.GSO_ECN
    if gso_type not in (vnet.GSO_TCPV4, vnet.GSO_TCPV6):
        raise GsoError(f"software GSO handles TCPv4 and TCPv6 only, not GSO type {header.gso_type}")
    if header.gso_size == 0:
        raise GsoError("GSO frame with gso_size 0")

    view = memoryview(frame)
    eth = vnet.ETHERNET_HEADER_SIZE
    ip_size, src, dst = _ip_header(frame, gso_type)

    tcp = eth + ip_size
    if len(frame) < tcp + 20:
        raise GsoError(f"GSO frame of {len(frame)} bytes is too short for its TCP header")
    tcp_size = (frame[tcp + 12] >> 4) * 4
    payload_start = tcp + tcp_size
    if tcp_size < 20:
        raise GsoError(f"TCP header length {tcp_size} at byte {tcp} is under the minimum of 20 bytes")
    if payload_start > len(frame):
        raise GsoError(f"TCP header of {tcp_size} bytes at byte {tcp} ends past the frame of {len(frame)} bytes")

    headers = bytes(view[:payload_start])
    payload = view[payload_start:]
    seq = _U32.unpack_from(frame, tcp + 4)[0]
    flags = frame[tcp + 13]
    ident = _U16.unpack_from(frame, eth + 4)[0] if gso_type == vnet.GSO_TCPV4 else 0
    protocol_sum = PROTO_TCP

    frames = []
    size = header.gso_size
    count = max(1, -(-len(payload) // size))
    for index in range(count):
        chunk = payload[index * size:(index + 1) * size]
        out = bytearray(headers)
        out += chunk
        segment_flags = flags
        if index < count - 1:
            segment_flags &= ~(TCP_FIN | TCP_PSH)
        if index > 0:
            segment_flags &= ~TCP_CWR
        out[tcp + 13] = segment_flags
        _U32.pack_into(out, tcp + 4, (seq + index * size) & 0xFFFFFFFF)

        tcp_length = tcp_size + len(chunk)
        if gso_type == vnet.GSO_TCPV4:
            _U16.pack_into(out, eth + 2, ip_size + tcp_length)
            _U16.pack_into(out, eth + 4, (ident + index) & 0xFFFF)
            _U16.pack_into(out, eth + 10, 0)
            _U16.pack_into(out, eth + 10, _checksum(memoryview(out)[eth:tcp]))
            pseudo = _ones_complement_sum(src + dst + _U16.pack(protocol_sum) + _U16.pack(tcp_length))
        else:
            _U16.pack_into(out, eth + 4, ip_size - IPV6_HEADER_SIZE + tcp_length)
            pseudo = _ones_complement_sum(src + dst + _U32.pack(tcp_length) + _U32.pack(protocol_sum))

        _U16.pack_into(out, tcp + _TCP_CHECKSUM_OFFSET, 0)
        _U16.pack_into(out, tcp + _TCP_CHECKSUM_OFFSET, _checksum(memoryview(out)[tcp:], pseudo))
        frames.append(bytes(out))
    return frames


def _ip_header(frame: bytes, gso_type: int) -> tuple[int, bytes, bytes]:
    """Return the IP header length (IPv6 extension headers included) and the
    source and destination addresses. Raise GsoError if they are unusable."""
    eth = vnet.ETHERNET_HEADER_SIZE
    if len(frame) < eth + 20:
        raise GsoError(f"GSO frame of {len(frame)} bytes is too short for its headers")
    ethertype = _U16.unpack_from(frame, 12)[0]

    if gso_type == vnet.GSO_TCPV4:
        if ethertype != ETHERTYPE_IPV4:
            raise GsoError(f"TCPv4 GSO frame with ethertype {ethertype:#06x}")
        ip_size = (frame[eth] & 0x0F) * 4
        if ip_size < 20 or frame[eth + 9] != PROTO_TCP:
            raise GsoError("TCPv4 GSO frame whose IPv4 header is invalid or does not carry TCP")
        return ip_size, bytes(frame[eth + 12:eth + 16]), bytes(frame[eth + 16:eth + 20])

    if ethertype != ETHERTYPE_IPV6:
        raise GsoError(f"TCPv6 GSO frame with ethertype {ethertype:#06x}")
    if len(frame) < eth + IPV6_HEADER_SIZE or frame[eth] >> 4 != 6:
        raise GsoError("TCPv6 GSO frame without a valid IPv6 header")
    return _ipv6_header_size(frame), bytes(frame[eth + 8:eth + 24]), bytes(frame[eth + 24:eth + 40])


def _ipv6_header_size(frame: bytes) -> int:
    """Return the length of the IPv6 header and the extension headers before TCP, or raise GsoError."""
    eth = vnet.ETHERNET_HEADER_SIZE
    next_header = frame[eth + 6]
    offset = eth + IPV6_HEADER_SIZE
    for _ in range(MAX_IPV6_EXTENSION_HEADERS):
        if next_header == PROTO_TCP:
            return offset - eth
        if next_header not in (IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_DEST_OPTS):
            raise GsoError(f"TCPv6 GSO frame with next header {next_header} before TCP")
        if next_header == IPV6_HOP_BY_HOP and offset != eth + IPV6_HEADER_SIZE:
            raise GsoError("TCPv6 GSO frame with a Hop-by-Hop header after another extension header")
        if offset + 8 > len(frame):
            raise GsoError(f"IPv6 extension header at {offset} lies outside the frame of {len(frame)} bytes")
        if next_header == IPV6_ROUTING and frame[offset + 3]:
            # The pseudo-header would need the final destination from the Routing header.
            raise GsoError("TCPv6 GSO frame with a Routing header that has segments left")
        next_header = frame[offset]
        offset += (frame[offset + 1] + 1) * 8
    if next_header != PROTO_TCP:
        raise GsoError(f"TCPv6 GSO frame with more than {MAX_IPV6_EXTENSION_HEADERS} extension headers")
    return offset - eth
