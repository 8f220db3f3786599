"""The Calls stream of sandnet.v1.Sockets: every socket call of a session on one stream.

A unary RPC costs far more CPU in grpcio than a message on an open stream.
So the client sends its socket calls as ``Call`` messages in batches on one
bidirectional stream, and sockd forwards them to stackd the same way.
This module contains the table that maps a Call's oneof field to the unary
method and its reply type. It also contains ``serve_calls``, which runs a
stream's calls on a servicer's unary handlers. So stackd and both sockd
modes serve the stream with the code that serves the unary RPCs.
"""

import asyncio
import contextvars
import errno
import functools
import logging
from collections.abc import AsyncIterator, Callable

import grpc

from sandnet.v1 import sockets_pb2

# Call's oneof field -> (unary method, reply type). CallReply uses the same
# field names, so a reply goes into the field its request came in.
METHODS: dict[str, tuple[str, type]] = {
    "socket": ("Socket", sockets_pb2.SocketReply),
    "bind": ("Bind", sockets_pb2.Status),
    "listen": ("Listen", sockets_pb2.Status),
    "accept": ("Accept", sockets_pb2.AcceptReply),
    "connect": ("Connect", sockets_pb2.Status),
    "send": ("Send", sockets_pb2.SendReply),
    "recv": ("Recv", sockets_pb2.RecvReply),
    "shutdown": ("Shutdown", sockets_pb2.Status),
    "close": ("Close", sockets_pb2.Status),
    "get_sock_name": ("GetSockName", sockets_pb2.AddrReply),
    "get_peer_name": ("GetPeerName", sockets_pb2.AddrReply),
    "set_sock_opt": ("SetSockOpt", sockets_pb2.Status),
    "get_sock_opt": ("GetSockOpt", sockets_pb2.GetSockOptReply),
    "poll": ("Poll", sockets_pb2.PollReply),
}

# Unary method name -> Call's oneof field.
FIELDS: dict[str, str] = {method: field for field, (method, _) in METHODS.items()}

# Calls of one descriptor that must run in the order they were sent: data
# and the calls that end it on the send side, and reads on the receive side.
# Calls in different lanes run concurrently, so a blocked recv() never holds
# up a send() of another thread on the same socket.
_LANES = {"send": "send", "shutdown": "send", "close": "send", "recv": "recv", "accept": "recv"}


# The maximum bytes of calls or replies that one batch message carries. A batch
# takes what is ready up to this size, so that many large Send calls or Recv
# replies ready at once stay far below gRPC's 64 MiB message limit. One call
# larger than it travels alone.
MAX_BATCH_BYTES = 8 * 1024 * 1024

# Bytes counted for everything of a Send call or a Recv reply but its data:
# more than the ids, lengths and small fields that protobuf adds.
_FIELDS_BYTES = 256


def batch_size(message) -> int:
    """Return a Call's or CallReply's size in a batch, from its data length for a Send or a Recv reply.

    protobuf's ByteSize() encodes the whole message to count it (about
    0.28 ms for a 1 MiB Send under cProfile in sockd), so the data of the
    large kinds is counted by its length instead. Other kinds are small.
    """
    if isinstance(message, sockets_pb2.Call):
        if message.WhichOneof("request") == "send":
            return len(message.send.data) + _FIELDS_BYTES
    elif message.WhichOneof("reply") == "recv":
        return len(message.recv.data) + _FIELDS_BYTES
    return message.ByteSize()


# The maximum time in seconds that serve_calls keeps back a reply whose call set defer_reply.
HOLD_SECONDS = 0.02

# True while a handler runs a call that set defer_reply, so that sockd can
# set it on the call it forwards to stackd.
REPLY_DEFERRABLE: contextvars.ContextVar[bool] = contextvars.ContextVar("sandnet_reply_deferrable", default=False)

# Queue marker: send the deferred replies now.
_FLUSH_HELD = object()


async def _resume(coro, awaited):
    """Drive a coroutine that was started by hand and suspended on ``awaited``; return its result.

    ``awaited`` is what the coroutine yielded: the Future it waits for, or
    None for a bare yield (asyncio.sleep(0)). The coroutine then gets that
    Future's result or exception, and a cancellation of this task, as if
    it ran in the task itself.
    """
    while True:
        try:
            if awaited is None:
                await asyncio.sleep(0)
            else:
                awaited._asyncio_future_blocking = False
                await awaited
        except BaseException as error:
            try:
                awaited = coro.throw(error)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            awaited = coro.send(None)
        except StopIteration as stop:
            return stop.value


def make_call(call_id: int, method: str, request, defer_reply: bool = False) -> sockets_pb2.Call:
    """Wrap a unary ``method``'s request in a Call; raise KeyError for a method the stream does not carry."""
    call = sockets_pb2.Call(id=call_id, defer_reply=defer_reply)
    getattr(call, FIELDS[method]).CopyFrom(request)
    return call


def unwrap_reply(reply: sockets_pb2.CallReply):
    """Return the unary reply inside a CallReply."""
    field = reply.WhichOneof("reply")
    if field is None:
        raise ValueError(f"call {reply.id}: the reply carries no result")
    return getattr(reply, field)


# A servicer's shortcut for some calls: it returns a future of the call's
# CallReply, or None to have the call served by its unary handler.
FastPath = Callable[[sockets_pb2.Call, str], "asyncio.Future | None"]


async def serve_calls(servicer, request_iterator, context: grpc.aio.ServicerContext, log: logging.Logger,
                      keep_lane_order: bool = True,
                      fast_path: FastPath | None = None) -> AsyncIterator[sockets_pb2.CallReplyBatch]:
    """Run the calls of one Calls stream on ``servicer``'s unary handlers and yield their replies.

    Each call runs as its own task with the stream's ``context``, so the
    handlers see the stream's session metadata. Replies that are ready
    together leave in one batch. The reply of a call with defer_reply waits
    until another reply leaves or HOLD_SECONDS pass, unless it carries an
    errno. The stream ends after the caller ends its side and every call has
    replied. A handler that aborts the context ends the stream with that
    status. Any other exception of a handler is logged
    and becomes EIO in that call's reply.

    With ``keep_lane_order`` False, a call does not wait for the earlier
    calls of its lane. That is for a servicer that only forwards calls, in
    the order they start, to a server that keeps the order itself. Waiting
    there would also hold a call behind an earlier call's deferred reply.

    ``fast_path(call, field)`` is offered every call first, in the order the
    calls arrive. It serves the call without a task when it returns a
    future: the future's CallReply leaves as it is, its errors are logged
    and become EIO, and defer_reply is left to the server behind it.
    """
    loop = asyncio.get_running_loop()
    replies: asyncio.Queue = asyncio.Queue()
    deferred_replies: list[sockets_pb2.CallReply] = []
    hold_timer: asyncio.TimerHandle | None = None
    tasks: set[asyncio.Future] = set()
    lanes: dict[tuple[int, str], asyncio.Task] = {}
    reading_done = asyncio.Event()

    async def run(call: sockets_pb2.Call, field: str, previous: asyncio.Task | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        method, reply_type = METHODS[field]
        REPLY_DEFERRABLE.set(call.defer_reply)
        try:
            reply = await getattr(servicer, method)(getattr(call, field), context)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("%s call %d on the Calls stream failed", method, call.id)
            reply = reply_type(errno=errno.EIO)
        message = sockets_pb2.CallReply(id=call.id)
        getattr(message, field).CopyFrom(reply)
        # A failed call's reply leaves at once, so that its error surfaces soon.
        if not call.defer_reply or getattr(reply, "errno", 0):
            replies.put_nowait(message)
            return
        nonlocal hold_timer
        deferred_replies.append(message)
        if hold_timer is None:
            hold_timer = loop.call_later(HOLD_SECONDS, replies.put_nowait, _FLUSH_HELD)

    def finished(key: tuple[int, str] | None, task: asyncio.Task) -> None:
        tasks.discard(task)
        if key is not None and lanes.get(key) is task:
            del lanes[key]
        if not task.cancelled() and task.exception() is not None:
            replies.put_nowait(task.exception())
        elif reading_done.is_set() and not tasks:
            replies.put_nowait(None)

    def fast_finished(call_id: int, field: str, future: asyncio.Future) -> None:
        tasks.discard(future)
        if future.cancelled():
            return
        if future.exception() is None:
            replies.put_nowait(future.result())
        else:
            log.error("%s call %d on the Calls stream failed: %r", METHODS[field][0], call_id, future.exception())
            message = sockets_pb2.CallReply(id=call_id)
            getattr(message, field).CopyFrom(METHODS[field][1](errno=errno.EIO))
            replies.put_nowait(message)
        if reading_done.is_set() and not tasks:
            replies.put_nowait(None)

    def start(call: sockets_pb2.Call) -> None:
        field = call.WhichOneof("request")
        if field is None:
            log.warning("call %d on the Calls stream has no request; ignored", call.id)
            return
        if fast_path is not None:
            call_id = call.id
            future = fast_path(call, field)
            if future is not None:
                tasks.add(future)
                future.add_done_callback(lambda done: fast_finished(call_id, field, done))
                return
        lane = _LANES.get(field) if keep_lane_order else None
        previous = None
        key = None
        if lane is not None:
            key = (getattr(call, field).fd, lane)
            previous = lanes.get(key)
        # The call runs at once, and becomes a task only if it has to wait,
        # as asyncio's eager tasks do from Python 3.12 on: most calls finish
        # without waiting, and a task costs event loop turns.
        coro = run(call, field, previous)
        try:
            awaited = coro.send(None)
        except StopIteration:
            return
        except Exception as error:
            replies.put_nowait(error)
            return
        task = asyncio.ensure_future(_resume(coro, awaited))
        tasks.add(task)
        if key is not None:
            lanes[key] = task
        task.add_done_callback(functools.partial(finished, key))

    async def read_calls() -> None:
        try:
            async for batch in request_iterator:
                for call in batch.calls:
                    start(call)
        finally:
            reading_done.set()
            if not tasks:
                replies.put_nowait(None)

    def take_deferred() -> list[sockets_pb2.CallReply]:
        nonlocal hold_timer
        if hold_timer is not None:
            hold_timer.cancel()
            hold_timer = None
        deferred_now = deferred_replies[:]
        deferred_replies.clear()
        return deferred_now

    reader = asyncio.ensure_future(read_calls())
    carry = None
    try:
        while True:
            first, carry = (carry, None) if carry is not None else (await replies.get(), None)
            if first is None:
                if deferred_replies:
                    yield sockets_pb2.CallReplyBatch(replies=take_deferred())
                break
            if isinstance(first, BaseException):
                raise first
            batch = sockets_pb2.CallReplyBatch()
            size = 0
            if first is not _FLUSH_HELD:
                batch.replies.append(first)
                size = batch_size(first)
            while not replies.empty():
                more = replies.get_nowait()
                if more is None or isinstance(more, BaseException):
                    replies.put_nowait(more)
                    break
                if more is _FLUSH_HELD:
                    continue
                more_size = batch_size(more)
                if size + more_size > MAX_BATCH_BYTES:
                    carry = more
                    break
                batch.replies.append(more)
                size += more_size
            batch.replies.extend(take_deferred())
            if batch.replies:
                yield batch
    finally:
        if hold_timer is not None:
            hold_timer.cancel()
        reader.cancel()
        for task in list(tasks):
            task.cancel()
