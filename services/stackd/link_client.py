"""The stack's side of the linkd stream: fetch the device configuration,
then move frames both ways in batches, reconnecting when linkd restarts.

Established TCP connections survive a linkd restart: the interface stays
attached while the stream is down, outgoing frames are dropped and
counted meanwhile, and TCP retransmits them once frames flow again.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc

from sandnet.v1 import link_pb2, link_pb2_grpc
from sandnet_common.endpoint import Endpoint
from sandnet_common.server import insecure_channel
from sandnet_stackd.interface import Address, Interface
from sandnet_stackd.offload import DeviceOffloads, FrameOffload
from sandnet_stackd.route import Route
from sandnet_stackd.stack import Stack

log = logging.getLogger("sandnet.stackd.link")

NIC_INDEX = 2
# Frames waiting for the stream beyond either bound are dropped (TCP
# retransmits). The byte bound matters with GSO, where one frame is up to 64 KiB.
MAX_PENDING_FRAMES = 8192
MAX_PENDING_BYTES = 16 * 1024 * 1024
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
STABLE_STREAM_SECONDS = 5.0
# virtio-net header flags that mean the device checked or will fill the checksum.
CHECKSUM_TRUSTED = 0x1 | 0x2
ETHERNET_HEADER_SIZE = 14
MAX_IP_PACKET_SIZE = 0xFFFF

PendingFrame = tuple[bytes, FrameOffload | None]


class LinkUnavailableError(RuntimeError):
    """linkd did not answer at start."""


class LinkBusyError(RuntimeError):
    """linkd already streams frames to another stackd."""


def config_to_interface(config: link_pb2.LinkConfig) -> tuple[Interface, list[Route]]:
    """Translate linkd's LinkConfig into the stack's interface and routes."""
    device = config.interface
    addresses = [Address(bytes(a.ip), a.prefix_len, bytes(a.broadcast), a.scope or "global")
                 for a in device.addresses]
    iface = Interface(index=NIC_INDEX, name=device.name, mtu=device.mtu or 1500, mac=bytes(device.mac),
                      addresses=addresses)
    routes = []
    for r in config.routes:
        family = r.family or (6 if len(r.dst) == 16 or len(r.gateway) == 16 else 4)
        dst = bytes(r.dst) or bytes(4 if family == 4 else 16)
        routes.append(Route(family=family, dst=dst, dst_len=r.dst_len, device=device.name,
                            gateway=bytes(r.gateway), prefsrc=bytes(r.prefsrc), metric=r.metric,
                            scope=r.scope or "global", protocol=r.protocol or "static"))
    return iface, routes


def config_to_offloads(config: link_pb2.LinkConfig) -> DeviceOffloads:
    """Translate linkd's Offloads into what the stack may leave to the device path.

    TCP output uses one GSO limit for both families, so GSO needs TSO for
    IPv4 and IPv6 both.
    """
    offloads = config.offloads
    gso_max_size = 0
    if offloads.tso4 and offloads.tso6 and offloads.tx_checksum:
        gso_max_size = min(offloads.max_frame_size - ETHERNET_HEADER_SIZE, MAX_IP_PACKET_SIZE)
    return DeviceOffloads(checksum=offloads.tx_checksum, gso_max_size=max(gso_max_size, 0))


def _frame_proto(frame: bytes, offload: FrameOffload | None) -> link_pb2.Frame:
    if offload is None:
        return link_pb2.Frame(data=frame)
    return link_pb2.Frame(data=frame, gso=link_pb2.GsoInfo(
        flags=offload.flags, gso_type=offload.gso_type, hdr_len=offload.hdr_len, gso_size=offload.gso_size,
        csum_start=offload.csum_start, csum_offset=offload.csum_offset))


class LinkClient:
    """Keeps one Frames stream to linkd open for the stack's Ethernet interface."""

    def __init__(self, stack: Stack, endpoint: Endpoint, on_serving: Callable[[bool], Awaitable[None]]):
        self.stack = stack
        self.endpoint = endpoint
        self._on_serving = on_serving
        self._pending: list[PendingFrame] = []
        self._pending_bytes = 0
        self._pending_ready = asyncio.Event()
        self._connected = False
        self.iface: Interface | None = None
        self._offloads = DeviceOffloads()
        self._malformed_logged = 0

    def transmit(self, frame: bytes, offload: FrameOffload | None = None) -> None:
        """Queue one frame, with its checksum and GSO metadata if any, for linkd; drop and count it if the queue is full."""
        if (not self._connected or len(self._pending) >= MAX_PENDING_FRAMES
                or self._pending_bytes + len(frame) > MAX_PENDING_BYTES):
            self.stack.counters.link.OutDiscards += 1
            return
        self._pending.append((frame, offload))
        self._pending_bytes += len(frame)
        self._pending_ready.set()

    async def start(self, timeout: float) -> None:
        """Fetch the configuration and attach the interface; raise LinkUnavailableError on timeout."""
        channel = insecure_channel(self.endpoint)
        try:
            stub = link_pb2_grpc.LinkStub(channel)
            config = await stub.GetConfig(link_pb2.GetConfigRequest(), timeout=timeout, wait_for_ready=True)
        except grpc.aio.AioRpcError as error:
            raise LinkUnavailableError(
                f"cannot reach linkd at {self.endpoint} ({error.code().name}: {error.details()}); "
                "start sandnet-linkd first or fix --link") from None
        finally:
            await channel.close()
        self.iface, routes = config_to_interface(config)
        self.iface.transmit = self.transmit
        self.stack.attach(self.iface, routes)
        self._offloads = config_to_offloads(config)
        self.stack.network.set_offloads(self.iface.name, self._offloads)
        log.info("device offloads from linkd: checksum %s, largest GSO packet %d bytes",
                 "on" if self._offloads.checksum else "off", self._offloads.gso_max_size)

    async def run(self) -> None:
        """Stream frames until cancelled, reconnecting with backoff.

        Raises LinkBusyError when linkd serves another stack at the first
        attempt, so that a second stackd fails at start instead of retrying.
        """
        delay = BACKOFF_FIRST
        first = True
        while True:
            channel = insecure_channel(self.endpoint)
            started = asyncio.get_running_loop().time()
            try:
                await self._stream(channel)
                log.warning("linkd closed the frame stream; reconnecting")
            except grpc.aio.AioRpcError as error:
                if first and error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    raise LinkBusyError(f"linkd at {self.endpoint} already serves another stackd "
                                        f"({error.details()}); stop that stackd or use another linkd") from None
                log.warning("frame stream to linkd at %s failed: %s %s; retrying in %.1f s",
                            self.endpoint, error.code().name, error.details(), delay)
            finally:
                self._connected = False
                self._pending.clear()
                self._pending_bytes = 0
                await self._on_serving(False)
                await channel.close()
            first = False
            # Only a stream that carried frames for a while resets the backoff,
            # so that a stream linkd rejects at once is retried ever more slowly.
            if asyncio.get_running_loop().time() - started >= STABLE_STREAM_SECONDS:
                delay = BACKOFF_FIRST
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _stream(self, channel: grpc.aio.Channel) -> None:
        stub = link_pb2_grpc.LinkStub(channel)
        await channel.channel_ready()
        await self._check_offloads(stub)
        call = stub.Frames()
        self._connected = True
        log.info("frame stream to linkd at %s attached", self.endpoint)
        self.stack.network.announce(self.iface)
        await self._on_serving(True)
        writer = asyncio.ensure_future(self._write_loop(call))
        try:
            while True:
                batch = await call.read()
                if batch is grpc.aio.EOF:
                    return
                self._receive(batch)
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def _check_offloads(self, stub: link_pb2_grpc.LinkStub) -> None:
        """Apply the offloads of a restarted linkd to new connections, warning when they changed.

        Connections opened earlier keep the offloads they started with. If
        linkd no longer takes their checksum or GSO frames, it drops those
        frames, so such connections stall until they time out.
        """
        config = await stub.GetConfig(link_pb2.GetConfigRequest(), timeout=10)
        offloads = config_to_offloads(config)
        if offloads == self._offloads:
            return
        log.warning("linkd at %s changed its offloads (checksum %s, largest GSO packet %d bytes); "
                    "connections opened before keep the old ones, so restart stackd if they stall",
                    self.endpoint, "on" if offloads.checksum else "off", offloads.gso_max_size)
        self._offloads = offloads
        self.stack.network.set_offloads(self.iface.name, offloads)

    async def _write_loop(self, call) -> None:
        while True:
            await self._pending_ready.wait()
            self._pending_ready.clear()
            frames, self._pending = self._pending, []
            self._pending_bytes = 0
            if frames:
                await call.write(link_pb2.FrameBatch(frames=[_frame_proto(frame, offload) for frame, offload in frames]))

    def _receive(self, batch: link_pb2.FrameBatch) -> None:
        network = self.stack.network
        iface = self.iface
        for frame in batch.frames:
            trusted = frame.HasField("gso") and bool(frame.gso.flags & CHECKSUM_TRUSTED)
            try:
                network.receive_frame(iface, frame.data, trusted)
            except Exception:
                # A frame must never stop the stack; count it and keep the first few tracebacks.
                self.stack.counters.link.InTruncated += 1
                if self._malformed_logged < 10:
                    self._malformed_logged += 1
                    log.exception("dropped a frame that raised while being processed (%d bytes)", len(frame.data))
