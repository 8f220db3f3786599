"""Checksum and segmentation offload between the stack and its Ethernet device.

When linkd reports that the device path fills checksums and accepts GSO
frames, TCP output leaves the checksum to the device (the field holds only
the pseudo-header sum, as with Linux's CHECKSUM_PARTIAL) and sends segments
of up to 64 KiB that the kernel, or linkd in software, cuts into MSS-sized
packets. The fields of FrameOffload are those of struct virtio_net_hdr
(linux/virtio_net.h).
"""

import dataclasses

NEEDS_CSUM = 1
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
TCP_CHECKSUM_OFFSET = 16


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceOffloads:
    """What an interface's device path does for outgoing frames.

    ``gso_max_size`` is the largest IP packet, in bytes, that one GSO frame
    may carry; 0 means no GSO.
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
