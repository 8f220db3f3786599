"""Checksum and segmentation offload between the stack and its Ethernet device.

When linkd reports that the device path fills checksums and accepts GSO
frames, TCP output leaves the checksum to the device (the field holds only
the pseudo-header sum, as with Linux's CHECKSUM_PARTIAL) and sends segments
of up to 64 KiB that the kernel, or linkd in software, cuts into MSS-sized
packets. Both IPv4 (GSO_TCPV4) and IPv6 (GSO_TCPV6) output use it. The
fields of FrameOffload are those of struct virtio_net_hdr
(linux/virtio_net.h).
"""

import dataclasses

NEEDS_CSUM = 1
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
TCP_CHECKSUM_OFFSET = 16
ETHERNET_HEADER_LEN = 14


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceOffloads:
    """What an interface's device path does for outgoing frames.

    ``gso_max_size`` is the largest IP packet, in bytes, that one GSO frame
    may carry; 0 means no GSO. It applies to TCP over IPv4 and over IPv6.
    """

    checksum: bool = False
    gso_max_size: int = 0


NO_OFFLOADS = DeviceOffloads()


@dataclasses.dataclass(frozen=True, slots=True)
class TransportOffload:
    """A transport segment whose checksum the device completes.

    ``header_len`` is the transport header length in bytes, ``csum_offset``
    the checksum field's offset in it, and ``gso_size`` the payload bytes per
    packet after segmentation (0 for a segment that is sent as it is).
    """

    header_len: int
    csum_offset: int = TCP_CHECKSUM_OFFSET
    gso_size: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class FrameOffload:
    """Virtio-net metadata of one outgoing Ethernet frame."""

    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int


def frame_offload(offloads: DeviceOffloads, transport: TransportOffload, *, ip_header_len: int,
                  packet_len: int, mtu: int, gso_type: int) -> FrameOffload | None:
    """Build the virtio-net metadata of one IP packet whose transport checksum the device completes.

    ``ip_header_len`` is the length of the IP header and any extension
    headers before the transport header, and ``packet_len`` the whole IP
    packet. A packet over ``mtu`` becomes a GSO frame of ``gso_type``. Its
    gso_size is the transport's, lowered where needed so that each cut packet
    fits ``mtu``, because the MSS of a connection can exceed a path MTU that
    dropped later. Returns None when the device path cannot take the packet:
    no checksum offload, or an oversized packet without gso_size, without
    device GSO, or larger than ``offloads.gso_max_size``.
    """
    if not offloads.checksum:
        return None
    csum_start = ETHERNET_HEADER_LEN + ip_header_len
    hdr_len = csum_start + transport.header_len
    if packet_len <= mtu:
        return FrameOffload(flags=NEEDS_CSUM, gso_type=GSO_NONE, hdr_len=hdr_len, gso_size=0,
                            csum_start=csum_start, csum_offset=transport.csum_offset)

    max_payload = mtu - ip_header_len - transport.header_len
    if transport.gso_size <= 0 or max_payload <= 0 or packet_len > offloads.gso_max_size:
        return None
    return FrameOffload(flags=NEEDS_CSUM, gso_type=gso_type, hdr_len=hdr_len,
                        gso_size=min(transport.gso_size, max_payload), csum_start=csum_start,
                        csum_offset=transport.csum_offset)
