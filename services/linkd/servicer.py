"""The sandnet.v1.Link service: configuration, statistics and the frame stream."""

import asyncio
import itertools
import logging

import grpc

from sandnet.v1 import link_pb2, link_pb2_grpc
from sandnet_linkd import vnet
from sandnet_linkd.device import Counters, Device
from sandnet_linkd.ratelimit import RateLimitedLog

# Received batches waiting for a slow stream; beyond either bound, batches
# are dropped. The byte bound matters with GRO, where one frame is up to 64 KiB.
RX_QUEUE_BATCHES = 256
RX_QUEUE_BYTES = 32 * 1024 * 1024

# Queued in place of a batch when the client's side of the stream ends.
_WRITER_DONE = None


class LinkServicer(link_pb2_grpc.LinkServicer):
    """Serve one device to one Frames stream at a time.

    Frames the device receives while no stream is attached, or while the
    stream's queue is full, are dropped and counted as rx_dropped.
    """

    def __init__(self, device: Device, config: link_pb2.LinkConfig, counters: Counters,
                 log: logging.Logger, max_batch_frames: int):
        self._device = device
        self._config = config
        self._counters = counters
        self._log = log
        self._limited_log = RateLimitedLog(log)
        self._max_batch_frames = max_batch_frames
        self._rx_queue: asyncio.Queue[tuple[link_pb2.FrameBatch, int] | None] | None = None
        self._rx_queued_bytes = 0
        self._stream_ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start reading the device on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._device.fileno(), self._on_readable)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._device.fileno())
            self._loop = None

    def _on_readable(self) -> None:
        frames = self._device.read_batch(self._max_batch_frames)
        if not frames:
            return

        queue = self._rx_queue
        if queue is None:
            self._counters.rx_dropped += len(frames)
            return
        if queue.qsize() >= RX_QUEUE_BATCHES or self._rx_queued_bytes >= RX_QUEUE_BYTES:
            self._counters.rx_dropped += len(frames)
            self._limited_log.warning("rx-queue-full", "dropped %d received frames: the Frames stream is not keeping up", len(frames))
            return

        batch = link_pb2.FrameBatch()
        size = 0
        for data, header in frames:
            frame = batch.frames.add(data=data)
            size += len(data)
            if header is not None:
                frame.gso.CopyFrom(header.to_proto())
        queue.put_nowait((batch, size))
        self._rx_queued_bytes += size

    async def GetConfig(self, request, context):
        return self._config

    async def GetStats(self, request, context):
        counters = self._counters
        return link_pb2.LinkStats(
            rx_frames=counters.rx_frames,
            rx_bytes=counters.rx_bytes,
            rx_dropped=counters.rx_dropped,
            rx_errors=counters.rx_errors,
            tx_frames=counters.tx_frames,
            tx_bytes=counters.tx_bytes,
            tx_dropped=counters.tx_dropped,
            tx_errors=counters.tx_errors,
            rx_gso_frames=counters.rx_gso_frames,
            tx_gso_frames=counters.tx_gso_frames,
            tx_gso_segments=counters.tx_gso_segments,
            rx_invalid=counters.rx_invalid,
        )

    async def Frames(self, request_iterator, context):
        """Send received frames to the client and write the client's frames to the device.

        The stream lasts until the client cancels it or the server stops; a
        client that half-closes its side still receives frames.
        """
        if self._rx_queue is not None:
            self._log.warning("rejected a second Frames stream from %s", context.peer())
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"another Frames stream is already attached to {self._device.name}; linkd serves one stream at a time",
            )

        stream_id = next(self._stream_ids)
        # Unbounded as a Queue, because _on_readable enforces the bounds and
        # the writer's end marker must always fit.
        queue: asyncio.Queue[tuple[link_pb2.FrameBatch, int] | None] = asyncio.Queue()
        self._rx_queue = queue
        self._rx_queued_bytes = 0
        self._log.info("Frames stream %d attached from %s", stream_id, context.peer())

        writer = asyncio.ensure_future(self._write_from(request_iterator))
        writer.add_done_callback(lambda _: queue.put_nowait(_WRITER_DONE))
        try:
            while (item := await queue.get()) is not _WRITER_DONE:
                batch, size = item
                self._rx_queued_bytes -= size
                yield batch

            if not writer.cancelled() and writer.exception() is not None:
                self._log.error("Frames stream %d failed while writing to %s: %r", stream_id, self._device.name, writer.exception())
                await context.abort(grpc.StatusCode.INTERNAL, f"linkd failed to write frames: {writer.exception()!r}")
            self._log.info("Frames stream %d: the client closed its sending side", stream_id)

            while True:
                item = await queue.get()
                if item is not _WRITER_DONE:
                    batch, size = item
                    self._rx_queued_bytes -= size
                    yield batch
        finally:
            self._rx_queue = None
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            self._log.info("Frames stream %d detached", stream_id)

    async def _write_from(self, request_iterator) -> None:
        async for batch in request_iterator:
            frames = []
            for frame in batch.frames:
                header = vnet.VnetHeader.from_proto(frame.gso) if frame.HasField("gso") else vnet.VnetHeader()
                frames.append((frame.data, header))
            self._device.write_batch(frames)
