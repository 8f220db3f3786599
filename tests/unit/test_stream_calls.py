"""The Calls stream's server side (sandnet.calls.serve_calls) and the client's send buffer
(sandnet.sendbuffer.SendBuffer), each against a small in-process counterpart."""

import asyncio
import concurrent.futures
import errno
import logging

import pytest

from sandnet import calls
from sandnet.sendbuffer import DEFER_MAX_BYTES, SendBuffer
from sandnet.v1 import sockets_pb2

log = logging.getLogger("test_stream_calls")


class RecordingServicer:
    """Unary handlers that record the order they run in; a Recv on fd 1 blocks until released."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.release_recv = asyncio.Event()
        self.release_first_send = asyncio.Event()

    async def Send(self, request, context):
        if request.data == b"first":
            await self.release_first_send.wait()
        self.order.append(f"send {request.data.decode()}")
        return sockets_pb2.SendReply(sent=len(request.data))

    async def Recv(self, request, context):
        await self.release_recv.wait()
        self.order.append("recv")
        return sockets_pb2.RecvReply(data=b"r")

    async def Close(self, request, context):
        self.order.append(f"close {request.fd}")
        return sockets_pb2.Status()

    async def GetSockName(self, request, context):
        raise RuntimeError("handler bug")


def send_call(call_id: int, data: bytes, fd: int = 1, defer: bool = False) -> sockets_pb2.Call:
    return calls.make_call(call_id, "Send", sockets_pb2.SendRequest(fd=fd, data=data), defer)


async def serve(servicer, batches: list[list[sockets_pb2.Call]], before_end=None):
    """Serve ``batches`` and return the reply batches; ``before_end`` runs before the caller ends its side."""
    requests: asyncio.Queue = asyncio.Queue()
    for batch in batches:
        requests.put_nowait(sockets_pb2.CallBatch(calls=batch))

    async def request_iterator():
        while True:
            batch = await requests.get()
            if batch is None:
                return
            yield batch

    async def end_later():
        if before_end is not None:
            await before_end()
        requests.put_nowait(None)

    ender = asyncio.ensure_future(end_later())
    received = [batch async for batch in calls.serve_calls(servicer, request_iterator(), None, log)]
    await ender
    return received


def reply_ids(batches) -> list[list[int]]:
    return [[reply.id for reply in batch.replies] for batch in batches]


def test_make_call_round_trip():
    call = calls.make_call(7, "Close", sockets_pb2.FdRequest(fd=3))
    assert call.WhichOneof("request") == "close"
    assert call.close.fd == 3
    reply = sockets_pb2.CallReply(id=7, close=sockets_pb2.Status(errno=errno.EBADF))
    assert calls.unwrap_reply(reply).errno == errno.EBADF


def test_unwrap_empty_reply_raises():
    with pytest.raises(ValueError, match="no result"):
        calls.unwrap_reply(sockets_pb2.CallReply(id=1))


def test_every_unary_method_has_a_field():
    stream_fields = {field.name for field in sockets_pb2.Call.DESCRIPTOR.oneofs_by_name["request"].fields}
    reply_fields = {field.name for field in sockets_pb2.CallReply.DESCRIPTOR.oneofs_by_name["reply"].fields}
    unary = {method.name for method in sockets_pb2.DESCRIPTOR.services_by_name["Sockets"].methods} - {"Session", "Calls"}
    assert set(calls.METHODS) == stream_fields
    assert set(calls.METHODS) == reply_fields
    assert set(calls.FIELDS) == unary


def test_blocked_recv_does_not_block_send():
    servicer = RecordingServicer()

    async def release_after_send():
        while "send a" not in servicer.order:
            await asyncio.sleep(0.001)
        servicer.release_recv.set()

    async def main():
        recv = calls.make_call(1, "Recv", sockets_pb2.RecvRequest(fd=1, max_bytes=1))
        return await serve(servicer, [[recv, send_call(2, b"a")]], release_after_send)

    batches = asyncio.run(main())
    assert servicer.order == ["send a", "recv"]
    assert [reply.id for batch in batches for reply in batch.replies] == [2, 1]


def test_sends_of_one_fd_keep_order():
    servicer = RecordingServicer()

    async def release_first():
        await asyncio.sleep(0.01)
        servicer.release_first_send.set()

    async def main():
        close = calls.make_call(3, "Close", sockets_pb2.FdRequest(fd=1))
        return await serve(servicer, [[send_call(1, b"first"), send_call(2, b"second")], [close]], release_first)

    asyncio.run(main())
    assert servicer.order == ["send first", "send second", "close 1"]


def test_lane_order_can_be_left_to_backend():
    servicer = RecordingServicer()

    async def release_first():
        while "send second" not in servicer.order:
            await asyncio.sleep(0.001)
        servicer.release_first_send.set()

    async def main():
        requests = asyncio.Queue()
        requests.put_nowait(sockets_pb2.CallBatch(calls=[send_call(1, b"first"), send_call(2, b"second")]))

        async def request_iterator():
            yield await requests.get()

        ender = asyncio.ensure_future(release_first())
        batches = [batch async for batch in calls.serve_calls(servicer, request_iterator(), None, log,
                                                               keep_lane_order=False)]
        await ender
        return batches

    asyncio.run(main())
    assert servicer.order == ["send second", "send first"]


def test_sends_of_other_fds_run_concurrently():
    servicer = RecordingServicer()

    async def release_first():
        while "send other" not in servicer.order:
            await asyncio.sleep(0.001)
        servicer.release_first_send.set()

    async def main():
        return await serve(servicer, [[send_call(1, b"first", fd=1), send_call(2, b"other", fd=2)]],
                           release_first)

    asyncio.run(main())
    assert servicer.order == ["send other", "send first"]


def test_deferred_reply_rides_with_next_reply():
    servicer = RecordingServicer()

    async def release_recv():
        await asyncio.sleep(0.005)
        servicer.release_recv.set()

    async def main():
        recv = calls.make_call(2, "Recv", sockets_pb2.RecvRequest(fd=1, max_bytes=1))
        return await serve(servicer, [[send_call(1, b"a", defer=True), recv]], release_recv)

    batches = asyncio.run(main())
    assert reply_ids(batches) == [[2, 1]]


def test_deferred_reply_leaves_after_hold_time():
    servicer = RecordingServicer()

    async def wait_past_hold():
        await asyncio.sleep(calls.HOLD_SECONDS * 3)

    async def main():
        return await serve(servicer, [[send_call(1, b"a", defer=True)]], wait_past_hold)

    batches = asyncio.run(main())
    assert reply_ids(batches) == [[1]]


def test_handler_exception_becomes_eio():
    servicer = RecordingServicer()

    async def main():
        return await serve(servicer, [[calls.make_call(5, "GetSockName", sockets_pb2.FdRequest(fd=1))]])

    batches = asyncio.run(main())
    assert reply_ids(batches) == [[5]]
    assert calls.unwrap_reply(batches[0].replies[0]).errno == errno.EIO


class ManualCalls:
    """A stand-in for the client's CallStream whose Send replies the test completes by hand."""

    def __init__(self) -> None:
        self.submitted: list[tuple[sockets_pb2.SendRequest, bool, concurrent.futures.Future]] = []

    def submit(self, method: str, request, defer_reply: bool = False) -> concurrent.futures.Future:
        assert method == "Send"
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.submitted.append((request, defer_reply, future))
        return future

    def acknowledge(self, index: int, code: int = 0) -> None:
        request, _, future = self.submitted[index]
        reply = sockets_pb2.SendReply(errno=code, sent=0 if code else len(request.data))
        future.set_result(sockets_pb2.CallReply(id=index, send=reply))


def test_small_send_is_deferred():
    stream = ManualCalls()
    buffer = SendBuffer(stream, fd=4)
    assert buffer.write(memoryview(b"x"), None) == 1
    assert [(r.data, defer) for r, defer, _ in stream.submitted] == [(b"x", True)]


def test_large_send_is_not_deferred():
    stream = ManualCalls()
    buffer = SendBuffer(stream, fd=4)
    data = bytes(DEFER_MAX_BYTES + 1)
    assert buffer.write(memoryview(data), None) == len(data)
    assert [defer for _, defer, _ in stream.submitted] == [False]


def test_send_queues_behind_prompt_send():
    stream = ManualCalls()
    buffer = SendBuffer(stream, fd=4)
    buffer.write(memoryview(b"a"), None)
    buffer.write(memoryview(b"b"), None)

    # "a" leaves deferred and "b" at once. Once "a" is acknowledged, "c"
    # waits behind "b" and leaves when "b" is acknowledged.
    assert [(r.data, defer) for r, defer, _ in stream.submitted] == [(b"a", True), (b"b", False)]
    stream.acknowledge(0)
    assert buffer.write(memoryview(b"c"), None) == 1
    assert len(stream.submitted) == 2
    stream.acknowledge(1)
    assert [r.data for r, _, _ in stream.submitted[2:]] == [b"c"]
    assert all(request.fd == 4 and request.timeout_ms == -1 for request, _, _ in stream.submitted)


def test_third_send_waits_for_acknowledgement():
    stream = ManualCalls()
    buffer = SendBuffer(stream, fd=4)
    buffer.write(memoryview(b"a"), None)
    buffer.write(memoryview(b"b"), None)
    with pytest.raises(TimeoutError):
        buffer.write(memoryview(b"c"), 0.01)
    stream.acknowledge(0)
    stream.acknowledge(1)
    assert buffer.write(memoryview(b"c"), 0.01) == 1


def test_error_surfaces_within_two_sends():
    stream = ManualCalls()
    buffer = SendBuffer(stream, fd=4)
    buffer.write(memoryview(b"a"), None)
    buffer.write(memoryview(b"b"), None)
    stream.acknowledge(0, errno.EPIPE)
    with pytest.raises(BrokenPipeError):
        buffer.write(memoryview(b"c"), 0.01)


def test_send_error_surfaces_on_next_write():
    stream = ManualCalls()
    buffer = SendBuffer(stream, fd=4)
    buffer.write(memoryview(b"a"), None)
    stream.acknowledge(0, errno.ECONNRESET)
    with pytest.raises(ConnectionResetError):
        buffer.write(memoryview(b"b"), None)
    assert buffer.write(memoryview(b"c"), None) == 1


def test_full_window_times_out():
    stream = ManualCalls()
    buffer = SendBuffer(stream, fd=4, window=4)
    assert buffer.write(memoryview(b"abcdef"), None) == 4
    with pytest.raises(TimeoutError):
        buffer.write(memoryview(b"g"), 0.01)
    stream.acknowledge(0)
    assert buffer.write(memoryview(b"g"), 0.01) == 1


def test_flush_submits_behind_prompt_send():
    stream = ManualCalls()
    buffer = SendBuffer(stream, fd=4)
    buffer.write(memoryview(b"a"), None)
    buffer.write(memoryview(b"b"), None)
    stream.acknowledge(0)
    buffer.write(memoryview(b"c"), None)
    assert len(stream.submitted) == 2
    buffer.flush()
    assert [r.data for r, _, _ in stream.submitted] == [b"a", b"b", b"c"]
    assert buffer.sends_in_flight == 2


def test_proven_run_coalesces_small_sends():
    stream = ManualCalls()
    buffer = SendBuffer(stream, fd=4)
    buffer.write(memoryview(b"a"), None)
    buffer.write(memoryview(b"b"), None)
    stream.acknowledge(0)

    # The acknowledgement proves the connection alive, so one thread's run of
    # small sends queues behind the prompt Send in flight without a count limit.
    for _ in range(50):
        assert buffer.write(memoryview(b"c"), 0.01) == 1
    assert len(stream.submitted) == 2
    stream.acknowledge(1)
    assert [r.data for r, _, _ in stream.submitted[2:]] == [b"c" * 50]


def test_idle_socket_starts_an_unproven_run():
    stream = ManualCalls()
    buffer = SendBuffer(stream, fd=4)
    buffer.write(memoryview(b"a"), None)
    stream.acknowledge(0)
    buffer.write(memoryview(b"b"), None)
    buffer.write(memoryview(b"c"), None)
    with pytest.raises(TimeoutError):
        buffer.write(memoryview(b"d"), 0.01)


def test_error_after_proven_run_surfaces_on_next_write():
    stream = ManualCalls()
    buffer = SendBuffer(stream, fd=4)
    buffer.write(memoryview(b"a"), None)
    buffer.write(memoryview(b"b"), None)
    stream.acknowledge(0)
    buffer.write(memoryview(b"c"), None)
    stream.acknowledge(1, errno.ECONNRESET)
    with pytest.raises(ConnectionResetError):
        buffer.write(memoryview(b"d"), 0.01)
    # The queued "c" is lost with the connection, as a reset empties Linux's send buffer.
    assert [r.data for r, _, _ in stream.submitted] == [b"a", b"b"]


def test_set_window_bounds_later_writes():
    stream = ManualCalls()
    buffer = SendBuffer(stream, fd=4)
    buffer.set_window(8)
    assert buffer.window == 8
    assert buffer.write(memoryview(b"0123456789"), None) == 8
    with pytest.raises(TimeoutError):
        buffer.write(memoryview(b"x"), 0.01)


# Batches stay under MAX_BATCH_BYTES, far below gRPC's 64 MiB message limit.

BIG = 3 * 1024 * 1024


class BigRecvServicer:
    async def Recv(self, request, context):
        return sockets_pb2.RecvReply(data=bytes(BIG))


def test_replies_ready_together_split_by_size():
    async def main():
        recvs = [calls.make_call(index, "Recv", sockets_pb2.RecvRequest(fd=index, max_bytes=BIG))
                 for index in range(1, 7)]
        return await serve(BigRecvServicer(), [recvs])

    batches = asyncio.run(main())
    assert [reply.id for batch in batches for reply in batch.replies] == [1, 2, 3, 4, 5, 6]
    assert len(batches) >= 3
    assert all(batch.ByteSize() <= calls.MAX_BATCH_BYTES for batch in batches)


def test_client_batches_split_by_size():
    import queue

    from sandnet.client import CallStream

    stream = CallStream.__new__(CallStream)
    stream._queue = queue.SimpleQueue()
    stream.batches_sent = 0
    for index in range(1, 8):
        stream._queue.put(send_call(index, bytes(BIG)))
    stream._queue.put(None)
    batches = list(stream._batches())
    assert [call.id for batch in batches for call in batch.calls] == list(range(1, 8))
    assert len(batches) >= 3
    assert all(batch.ByteSize() <= calls.MAX_BATCH_BYTES for batch in batches)


def test_sockd_splits_forwarded_batches_by_size():
    from sandnet_sockd.forward import _split_batches

    queued = [send_call(index, bytes(BIG)) for index in range(1, 8)] + [send_call(8, b"x")]
    batches = _split_batches(queued)
    assert [call.id for batch in batches for call in batch.calls] == list(range(1, 9))
    assert all(batch.ByteSize() <= calls.MAX_BATCH_BYTES for batch in batches)
    assert _split_batches([]) == []


def test_batch_size_bounds_encoded_size():
    send = send_call(1, bytes(BIG))
    recv_reply = sockets_pb2.CallReply(id=2, recv=sockets_pb2.RecvReply(data=bytes(BIG)))
    small = calls.make_call(3, "Recv", sockets_pb2.RecvRequest(fd=1, max_bytes=10))
    for message in (send, recv_reply, small):
        assert message.ByteSize() <= calls.batch_size(message) <= message.ByteSize() + 256
