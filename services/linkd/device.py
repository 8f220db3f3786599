"""The network device linkd owns: an AF_PACKET socket on an existing
interface, or a TAP device.

Both classes share one interface: ``fileno()`` for the event loop,
``read_batch()`` to drain ready frames and ``write_batch()`` to send frames.
Without a virtio-net header on the device, ``write_batch()`` cuts GSO frames
from stackd in software (gso.py) when software GSO is on.
"""

import dataclasses
import errno
import fcntl
import hashlib
import logging
import os
import socket
import struct

from pyroute2 import IPRoute

from sandnet_linkd import gso, vnet
from sandnet_linkd.ratelimit import RateLimitedLog

# linux/if_ether.h and linux/if_packet.h; Python 3.11's socket module lacks most of these.
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
TP_STATUS_CSUMNOTREADY = 1 << 3
TP_STATUS_CSUM_VALID = 1 << 7
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

# struct tpacket_auxdata: tp_status, tp_len, tp_snaplen, tp_mac, tp_net, tp_vlan_tci, tp_vlan_tpid.
_AUXDATA = struct.Struct("=IIIHHHH")

# linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08

SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
# Large enough for a GSO frame and its virtio-net header, so reads never truncate.
RX_BUFFER_BYTES = vnet.HEADER_SIZE + vnet.MAX_GSO_FRAME_SIZE + 64
IFNAMSIZ = 16


# --gso values: "true" exchanges a virtio-net header with the device (on
# AF_PACKET, falling back to "software" if the kernel rejects
# PACKET_VNET_HDR), "software" cuts GSO frames in linkd, and "false" passes
# plain MTU-sized frames only.
GSO_MODES = ("true", "software", "false")


class DeviceError(RuntimeError):
    """The device cannot be opened; the message names the device and the fix."""


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    """The parsed --device value: ``kind`` is "veth" or "tap"."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


def parse_device(text: str) -> DeviceSpec:
    """Parse ``veth:IFNAME`` or ``tap:IFNAME``; raise ValueError naming the value and the form."""
    kind, sep, name = text.partition(":")
    if not sep or kind not in ("veth", "tap"):
        raise ValueError(f"invalid device {text!r}: expected veth:IFNAME or tap:IFNAME")
    if not name or len(name) >= IFNAMSIZ or "/" in name or any(c.isspace() for c in name) or name in (".", ".."):
        raise ValueError(
            f"invalid device {text!r}: the interface name must be 1 to {IFNAMSIZ - 1} characters"
            " without '/' or whitespace"
        )
    return DeviceSpec(kind, name)


def parse_mac(text: str) -> bytes:
    """Parse ``aa:bb:cc:dd:ee:ff`` into 6 bytes; raise ValueError unless it is a unicast MAC."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(part) == 2 for part in parts):
        raise ValueError(f"invalid MAC address {text!r}: expected six hex bytes, as in 02:00:00:00:00:01")
    try:
        mac = bytes(int(part, 16) for part in parts)
    except ValueError:
        raise ValueError(f"invalid MAC address {text!r}: expected six hex bytes, as in 02:00:00:00:00:01") from None
    if mac[0] & 0x01:
        raise ValueError(f"invalid MAC address {text!r}: it is a multicast address; clear the lowest bit of the first byte")
    if mac == bytes(6):
        raise ValueError(f"invalid MAC address {text!r}: the all-zero address is not usable")
    return mac


def format_mac(mac: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in mac)


def stack_mac_for(device_name: str) -> bytes:
    """Derive a stable, locally administered unicast MAC from a device name.

    The stack behind a TAP needs a MAC of its own, because the TAP's MAC is
    the kernel's side of the link.
    """
    digest = bytearray(hashlib.sha256(f"sandnet-linkd/{device_name}".encode()).digest()[:6])
    digest[0] = (digest[0] & 0xFC) | 0x02
    return bytes(digest)


@dataclasses.dataclass
class Counters:
    """Frame, byte, drop and error counters of the device path (LinkStats)."""

    rx_frames: int = 0
    rx_bytes: int = 0
    rx_dropped: int = 0
    rx_errors: int = 0
    tx_frames: int = 0
    tx_bytes: int = 0
    tx_dropped: int = 0
    tx_errors: int = 0
    # Frames whose virtio-net header carried a GSO type, each counted once.
    rx_gso_frames: int = 0
    tx_gso_frames: int = 0
    # Frames that software GSO produced from tx_gso_frames.
    tx_gso_segments: int = 0
    # Received frames dropped because their virtio-net header was invalid.
    rx_invalid: int = 0


RxFrame = tuple[bytes, vnet.VnetHeader | None]
TxFrame = tuple[bytes, vnet.VnetHeader]


class Device:
    """Common frame path of both device kinds.

    ``vnet_header`` is true when frames carry a virtio-net header on the
    device. ``read_batch()`` returns the header (None when all zero), and
    ``write_batch()`` writes the given header, all zero for a plain frame.
    With ``software_gso`` and no virtio-net header, ``write_batch()`` cuts
    GSO frames and fills NEEDS_CSUM checksums itself. ``offload_path``
    describes the path taken, for the log. Counters are updated here, except
    rx_dropped, which the caller counts.
    """

    kind = ""

    def __init__(self, name: str, index: int, mtu: int, vnet_header: bool, counters: Counters, log: logging.Logger):
        self.name = name
        self.index = index
        self.mtu = mtu
        self.vnet_header = vnet_header
        self.software_gso = False
        self.offload_path = ""
        self.counters = counters
        self.log = log
        self.limited_log = RateLimitedLog(log)

    def fileno(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _receive(self) -> tuple[bytes, vnet.VnetHeader | None] | None:
        """Read one frame, or return None for a frame to skip; raise BlockingIOError when none is ready."""
        raise NotImplementedError

    def _send(self, packet: bytes) -> None:
        raise NotImplementedError

    def _send_parts(self, parts: tuple[bytes, bytes]) -> None:
        """Write the parts as one packet without joining them (a gathering write)."""
        raise NotImplementedError

    def read_batch(self, max_frames: int) -> list[RxFrame]:
        """Read up to ``max_frames`` frames that are ready, without blocking."""
        frames: list[RxFrame] = []
        while len(frames) < max_frames:
            try:
                received = self._receive()
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as error:
                self.counters.rx_errors += 1
                self.limited_log.warning("rx-error", "read from %s %s failed: %s", self.kind, self.name, error)
                break
            if received is None:
                continue

            data, header = received
            if header is not None:
                reason = vnet.check_received(len(data), header)
                if reason is not None:
                    self.counters.rx_invalid += 1
                    self.limited_log.warning("rx-invalid", "dropped a frame from %s %s: %s", self.kind, self.name, reason)
                    continue
                if header.gso_type != vnet.GSO_NONE:
                    self.counters.rx_gso_frames += 1
            self.counters.rx_frames += 1
            self.counters.rx_bytes += len(data)
            frames.append((data, header))
        return frames

    def write_batch(self, frames: list[TxFrame]) -> None:
        """Check and write frames without blocking; count and drop the ones that fail."""
        for data, header in frames:
            reason = vnet.check_frame(len(data), header, self.mtu)
            if reason is None and not self.vnet_header and not self.software_gso and not header.is_zero():
                reason = "frame carries GSO or checksum offload metadata but linkd runs with --gso=false"
            if reason is not None:
                self.counters.tx_dropped += 1
                self.limited_log.warning("tx-invalid", "dropped a frame for %s %s: %s", self.kind, self.name, reason)
                continue

            if header.gso_type != vnet.GSO_NONE:
                self.counters.tx_gso_frames += 1
            if self.vnet_header:
                self._write((header.pack(), data), len(data))
            elif header.is_zero():
                self._write(data, len(data))
            else:
                self._write_in_software(data, header)

    def _write_in_software(self, data: bytes, header: vnet.VnetHeader) -> None:
        """Segment a GSO frame or fill a NEEDS_CSUM checksum, then write the plain frames."""
        try:
            if header.gso_type != vnet.GSO_NONE:
                packets = gso.segment(data, header)
                self.counters.tx_gso_segments += len(packets)
            elif header.flags & vnet.FLAG_NEEDS_CSUM:
                packets = [gso.complete_checksum(data, header)]
            else:
                packets = [data]
        except gso.GsoError as error:
            self.counters.tx_dropped += 1
            self.limited_log.warning("tx-invalid", "dropped a frame for %s %s: %s", self.kind, self.name, error)
            return
        for packet in packets:
            self._write(packet, len(packet))

    def _write(self, packet: bytes | tuple[bytes, bytes], frame_size: int) -> None:
        """Write one packet, or a virtio-net header and its frame, to the device; count it, or count and log the failure."""
        try:
            if isinstance(packet, tuple):
                self._send_parts(packet)
            else:
                self._send(packet)
        except (BlockingIOError, InterruptedError):
            self.counters.tx_dropped += 1
            self.limited_log.warning("tx-full", "dropped a frame for %s %s: the device queue is full", self.kind, self.name)
            return
        except OSError as error:
            if error.errno == errno.ENOBUFS:
                self.counters.tx_dropped += 1
                self.limited_log.warning("tx-full", "dropped a frame for %s %s: no buffer space", self.kind, self.name)
            else:
                self.counters.tx_errors += 1
                self.limited_log.warning("tx-error", "write to %s %s failed: %s", self.kind, self.name, error)
            return

        self.counters.tx_frames += 1
        self.counters.tx_bytes += frame_size


def link_index(name: str) -> int | None:
    """Return the interface index of ``name`` in this network namespace, or None if there is none."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _link_mtu(index: int) -> int:
    with IPRoute() as ipr:
        return ipr.get_links(index)[0].get("mtu")


class PacketDevice(Device):
    """An AF_PACKET socket bound to an existing interface, such as one end of a veth pair.

    With ``vnet_header`` (PACKET_VNET_HDR) each frame carries the kernel's
    checksum and GSO state. Without it, PACKET_AUXDATA reports frames whose
    checksum the sender left unfilled (TP_STATUS_CSUMNOTREADY). Those are
    common on veth, because veth offers tx checksum offload. Such frames get
    DATA_VALID, so that stackd does not verify them.
    """

    kind = "veth"

    def __init__(self, name: str, gso_mode: str, counters: Counters, log: logging.Logger):
        index = link_index(name)
        if index is None:
            raise DeviceError(f"device {name} not found in this network namespace; create it or fix --device")
        super().__init__(name, index, _link_mtu(index), gso_mode == "true", counters, log)
        self.software_gso = gso_mode == "software"

        # Protocol 0 receives nothing until bind(), so no frame of another interface slips in.
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, 0)
        try:
            self._configure()
            self.sock.bind((name, ETH_P_ALL))
        except OSError as error:
            self.sock.close()
            raise DeviceError(f"cannot open an AF_PACKET socket on device {name}: {error.strerror}") from None

    def _configure(self) -> None:
        self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_BUFFER_BYTES)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SOCKET_BUFFER_BYTES)
        if self.vnet_header:
            try:
                self.sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            except OSError as error:
                # NOTE: never exercised by the tests, because the kernels here accept PACKET_VNET_HDR.
                self.log.warning("PACKET_VNET_HDR is not available on %s (%s); falling back to software GSO",
                                 self.name, error.strerror)
                self.vnet_header = False
                self.software_gso = True
        if not self.vnet_header:
            self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)

        # The kernel cuts GSO frames written here in software when the device
        # lacks TSO, so the features only change where the cutting happens.
        features = device_features(self.name, self.log)
        tso = features.get("tx-tcp-segmentation")
        if self.vnet_header:
            self.offload_path = ("PACKET_VNET_HDR: GRO-merged frames in, GSO frames out"
                                 f" (device TSO {'on' if tso else 'off or unknown, so the kernel segments in software'})")
        elif self.software_gso:
            self.offload_path = "software GSO in linkd, PACKET_AUXDATA for checksum status"
        else:
            self.offload_path = "PACKET_AUXDATA (checksum status only), MTU-sized frames out"

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def _receive(self) -> RxFrame | None:
        ancillary_size = 0 if self.vnet_header else socket.CMSG_SPACE(_AUXDATA.size)
        packet, ancillary, flags, address = self.sock.recvmsg(RX_BUFFER_BYTES, ancillary_size)

        if address[2] == PACKET_OUTGOING:
            return None
        if flags & socket.MSG_TRUNC:
            self.counters.rx_errors += 1
            self.limited_log.warning("rx-trunc", "dropped a truncated frame from %s %s", self.kind, self.name)
            return None

        if self.vnet_header:
            if len(packet) < vnet.HEADER_SIZE:
                self.counters.rx_errors += 1
                return None
            header = vnet.VnetHeader.unpack(packet)
            return packet[vnet.HEADER_SIZE:], None if header.is_zero() else header

        for level, kind, value in ancillary:
            if level == SOL_PACKET and kind == PACKET_AUXDATA and len(value) >= _AUXDATA.size:
                status = _AUXDATA.unpack_from(value)[0]
                if status & (TP_STATUS_CSUMNOTREADY | TP_STATUS_CSUM_VALID):
                    return packet, vnet.VnetHeader(flags=vnet.FLAG_DATA_VALID)
        return packet, None

    def _send(self, packet: bytes) -> None:
        self.sock.send(packet)

    def _send_parts(self, parts: tuple[bytes, bytes]) -> None:
        self.sock.sendmsg(parts)


class TapDevice(Device):
    """A TAP device: frames the kernel sends to the TAP are read here, and
    frames written here enter the kernel as if received on the TAP.

    A TAP that does not exist is created (and disappears when linkd closes
    it); an existing persistent TAP is attached. With ``vnet_header`` the
    TAP carries a 10-byte virtio_net_hdr and the kernel may hand over frames
    with a partial checksum (TUN_F_CSUM), flagged NEEDS_CSUM.
    """

    kind = "tap"

    def __init__(self, name: str, gso_mode: str, counters: Counters, log: logging.Logger):
        existing_index = link_index(name)
        self.created = existing_index is None
        vnet_header = gso_mode == "true"

        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_header else 0)
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
            if vnet_header:
                fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, struct.pack("i", vnet.HEADER_SIZE))
            offloads = self._set_offloads() if vnet_header else 0
        except OSError as error:
            os.close(self.fd)
            raise DeviceError(self._explain(name, error)) from None

        index = link_index(name)
        if index is None:
            os.close(self.fd)
            raise DeviceError(f"TAP device {name} vanished right after it was opened")
        super().__init__(name, index, _link_mtu(index), vnet_header, counters, log)
        self.software_gso = gso_mode == "software"
        self.tso = bool(offloads & TUN_F_TSO4)
        if vnet_header:
            self.offload_path = ("virtio-net header: checksum offload"
                                 + (", TSO4/TSO6 frames in, GSO frames out" if self.tso else
                                    " only, so the kernel segments TCP before the TAP; GSO frames out"))
        elif self.software_gso:
            self.offload_path = "software GSO in linkd, plain frames on the TAP"
        else:
            self.offload_path = "none (plain MTU-sized frames, checksums filled by the stack)"

        if self.created:
            self._bring_up_new()

    def _set_offloads(self) -> int:
        """Offer the kernel checksum offload and TSO, dropping what it refuses; return the flags set.

        With TSO4/TSO6 the kernel hands the TAP TCP frames of up to 64 KiB
        instead of cutting them to the MTU first.
        """
        for flags in (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
                      TUN_F_CSUM):
            try:
                fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)
                return flags
            except OSError as error:
                if error.errno != errno.EINVAL:
                    raise
        fcntl.ioctl(self.fd, TUNSETOFFLOAD, 0)
        return 0

    def _explain(self, name: str, error: OSError) -> str:
        if error.errno == errno.EBUSY:
            return f"TAP device {name} is already attached to another process; stop it or choose another name"
        if error.errno == errno.EINVAL and not self.created:
            return f"device {name} exists but is not a TAP device; use veth:{name} or another name"
        if error.errno == errno.EPERM:
            return f"cannot open TAP device {name}: permission denied; run as root or with CAP_NET_ADMIN"
        return f"cannot open TAP device {name}: {error.strerror}"

    def _bring_up_new(self) -> None:
        # The kernel side of the TAP needs no IPv6 link-local address, so
        # stop it from making one before the link goes up.
        path = f"/proc/sys/net/ipv6/conf/{self.name}/addr_gen_mode"
        if os.path.exists(path):
            with open(path, "w") as sysctl:
                sysctl.write("1")
        with IPRoute() as ipr:
            ipr.link("set", index=self.index, state="up")

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        os.close(self.fd)

    def _receive(self) -> RxFrame | None:
        packet = os.read(self.fd, RX_BUFFER_BYTES)
        if not self.vnet_header:
            return packet, None
        if len(packet) < vnet.HEADER_SIZE:
            self.counters.rx_errors += 1
            return None
        header = vnet.VnetHeader.unpack(packet)
        return packet[vnet.HEADER_SIZE:], None if header.is_zero() else header

    def _send(self, packet: bytes) -> None:
        os.write(self.fd, packet)

    def _send_parts(self, parts: tuple[bytes, bytes]) -> None:
        os.writev(self.fd, parts)


def device_features(name: str, log: logging.Logger) -> dict[str, bool]:
    """Return the device's checksum and segmentation features as ethtool names them, or {} if unreadable."""
    try:
        from pyroute2.ethtool import Ethtool

        ethtool = Ethtool()
        try:
            features = ethtool.get_features(name).features
        finally:
            ethtool.close()
    except Exception as error:  # pyroute2 raises several types for a missing ethtool ioctl
        log.warning("cannot read the offload features of %s: %r", name, error)
        return {}
    wanted = ("tx-checksum-ip-generic", "tx-tcp-segmentation", "tx-tcp6-segmentation", "rx-gro")
    return {key: bool(features[key].enable) for key in wanted if key in features}


def open_device(spec: DeviceSpec, gso_mode: str, counters: Counters, log: logging.Logger) -> Device:
    """Open the device that ``spec`` names with a --gso mode from GSO_MODES; raise DeviceError with a one-line reason."""
    if spec.kind == "tap":
        return TapDevice(spec.name, gso_mode, counters, log)
    return PacketDevice(spec.name, gso_mode, counters, log)
