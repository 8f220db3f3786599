"""The virtio-net header (struct virtio_net_hdr, linux/virtio_net.h).

With PACKET_VNET_HDR on an AF_PACKET socket, or IFF_VNET_HDR on a TAP,
every frame read or written is preceded by this 10-byte header. It carries
the checksum and segmentation state of the frame, in host byte order
(the legacy virtio layout that both interfaces use on little-endian hosts).
"""

import dataclasses
import struct

from sandnet.v1 import link_pb2

# flags u8, gso_type u8, hdr_len u16, gso_size u16, csum_start u16, csum_offset u16.
_HEADER = struct.Struct("=BBHHHH")
HEADER_SIZE = _HEADER.size

FLAG_NEEDS_CSUM = 1
FLAG_DATA_VALID = 2
KNOWN_FLAGS = FLAG_NEEDS_CSUM | FLAG_DATA_VALID

GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80
KNOWN_GSO_TYPES = frozenset({GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4})

ETHERNET_HEADER_SIZE = 14
# An IP packet is at most 65535 bytes (the IPv4 total length field and the
# IPv6 payload length field without jumbograms), so a GSO frame is too.
MAX_GSO_FRAME_SIZE = 65535 + ETHERNET_HEADER_SIZE


@dataclasses.dataclass(frozen=True)
class VnetHeader:
    """A decoded virtio_net_hdr."""

    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> "VnetHeader":
        """Decode the header at the start of ``data`` (at least HEADER_SIZE bytes)."""
        return cls(*_HEADER.unpack_from(data))

    def pack(self) -> bytes:
        """Encode the header; raise struct.error if a field does not fit its C type."""
        return _HEADER.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start, self.csum_offset)

    def is_zero(self) -> bool:
        return self == _ZERO

    @classmethod
    def from_proto(cls, gso: link_pb2.GsoInfo) -> "VnetHeader":
        return cls(gso.flags, gso.gso_type, gso.hdr_len, gso.gso_size, gso.csum_start, gso.csum_offset)

    def to_proto(self) -> link_pb2.GsoInfo:
        return link_pb2.GsoInfo(
            flags=self.flags,
            gso_type=self.gso_type,
            hdr_len=self.hdr_len,
            gso_size=self.gso_size,
            csum_start=self.csum_start,
            csum_offset=self.csum_offset,
        )


_ZERO = VnetHeader()


def check_frame(frame_size: int, header: VnetHeader, mtu: int) -> str | None:
    """Check a frame from stackd before it goes to the device.

    Return None if the kernel can take it, else the reason to drop it. A
    plain frame (GSO_NONE) is at most MTU + 14 bytes, the size the kernel
    accepts on an AF_PACKET socket. A GSO frame is at most MAX_GSO_FRAME_SIZE.
    The checksum fields must point inside the frame, as the kernel's
    virtio_net_hdr_to_skb() requires.
    """
    if frame_size < ETHERNET_HEADER_SIZE:
        return f"frame of {frame_size} bytes is shorter than an Ethernet header"

    for name in ("hdr_len", "gso_size", "csum_start", "csum_offset"):
        if getattr(header, name) > 0xFFFF:
            return f"{name} {getattr(header, name)} does not fit in 16 bits"

    if header.flags & ~KNOWN_FLAGS:
        return f"unknown virtio-net flags {header.flags:#x}"

    gso_type = header.gso_type & ~GSO_ECN
    if gso_type not in KNOWN_GSO_TYPES:
        return f"unknown GSO type {header.gso_type}"

    if gso_type == GSO_NONE:
        if frame_size > mtu + ETHERNET_HEADER_SIZE:
            return f"frame of {frame_size} bytes exceeds MTU {mtu} + 14 and carries no GSO type"
    else:
        if frame_size > MAX_GSO_FRAME_SIZE:
            return f"GSO frame of {frame_size} bytes exceeds {MAX_GSO_FRAME_SIZE}"
        if header.gso_size == 0:
            return "GSO frame with gso_size 0"
        if not header.flags & FLAG_NEEDS_CSUM:
            return "GSO frame without NEEDS_CSUM"

    if header.hdr_len > frame_size:
        return f"hdr_len {header.hdr_len} exceeds the frame size {frame_size}"

    if header.flags & FLAG_NEEDS_CSUM and header.csum_start + header.csum_offset + 2 > frame_size:
        return (f"checksum field at csum_start {header.csum_start} + csum_offset {header.csum_offset}"
                f" lies outside the frame of {frame_size} bytes")

    return None


def check_received(frame_size: int, header: VnetHeader) -> str | None:
    """Check a frame and its header as read from the device.

    Return None if stackd can take it, else the reason to drop it. The
    kernel hands over GRO-merged frames up to MAX_GSO_FRAME_SIZE, so a larger
    frame, an unknown GSO type, a GSO frame with gso_size 0 or checksum
    offsets outside the frame mean the header cannot be trusted.
    """
    if frame_size > MAX_GSO_FRAME_SIZE:
        return f"frame of {frame_size} bytes exceeds {MAX_GSO_FRAME_SIZE}"
    if header.flags & ~KNOWN_FLAGS:
        return f"unknown virtio-net flags {header.flags:#x}"

    gso_type = header.gso_type & ~GSO_ECN
    if gso_type not in KNOWN_GSO_TYPES:
        return f"unknown GSO type {header.gso_type}"
    if gso_type != GSO_NONE and header.gso_size == 0:
        return "GSO frame with gso_size 0"

    if header.flags & FLAG_NEEDS_CSUM and header.csum_start + header.csum_offset + 2 > frame_size:
        return (f"checksum field at csum_start {header.csum_start} + csum_offset {header.csum_offset}"
                f" lies outside the frame of {frame_size} bytes")
    return None
