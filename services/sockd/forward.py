"""Sandbox and none modes: forward the Sockets and Netinfo calls to stackd.

sockd keeps one session with stackd and sends its id with every forwarded
call. It keeps its own client sessions in front of it: it records which
descriptors each client created and answers EBADF for any other. When
stackd goes away, calls get ENETDOWN and the health status is NOT_SERVING
while sockd reconnects with backoff.
"""

import asyncio
import errno
import itertools
import logging
import select
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sandnet import calls
from sandnet.v1 import sockets_pb2, sockets_pb2_grpc
from sandnet_common.endpoint import Endpoint
from sandnet_common.server import insecure_channel
from sandnet_sockd import addresses
from sandnet_sockd.sessions import SESSION_METADATA, SessionTable

BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 5.0


class StackUnavailableError(RuntimeError):
    """stackd did not report SERVING to its health check in time."""


def _split_batches(queued: list[sockets_pb2.Call]) -> list[sockets_pb2.CallBatch]:
    """Cut queued calls into batches of up to calls.MAX_BATCH_BYTES, in order."""
    batches = []
    batch = sockets_pb2.CallBatch()
    size = 0
    for call in queued:
        call_size = calls.batch_size(call)
        if batch.calls and size + call_size > calls.MAX_BATCH_BYTES:
            batches.append(batch)
            batch = sockets_pb2.CallBatch()
            size = 0
        batch.calls.append(call)
        size += call_size
    if batch.calls:
        batches.append(batch)
    return batches


class StackCallStream:
    """One Calls stream to stackd that carries the forwarded calls of every client session.

    Calls queued while a batch is being written leave together in the next
    batch. When the stream fails, every call waiting on it and every later
    call raises ConnectionError.
    """

    def __init__(self, sockets: sockets_pb2_grpc.SocketsStub, metadata, log: logging.Logger):
        self.log = log
        self._stream = sockets.Calls(metadata=metadata)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        # Calls relayed as they are: stackd's call id -> (future, the client's call id, request field).
        self._relayed: dict[int, tuple[asyncio.Future, int, str]] = {}
        self._queued: list[sockets_pb2.Call] = []
        self._wakeup = asyncio.Event()
        self._failure: str | None = None
        self._tasks = [asyncio.ensure_future(self._write_batches()), asyncio.ensure_future(self._read_batches())]

    async def call(self, method: str, request):
        """Send one call to stackd and return its unary reply; raise ConnectionError if the stream failed."""
        if self._failure is not None:
            raise ConnectionError(self._failure)
        call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        # A client call that may get its reply late may get stackd's late too.
        self._queued.append(calls.make_call(call_id, method, request, calls.REPLY_DEFERRABLE.get()))
        self._wakeup.set()
        try:
            return calls.unwrap_reply(await future)
        finally:
            self._pending.pop(call_id, None)

    def relay(self, call: sockets_pb2.Call, field: str) -> asyncio.Future:
        """Send a client's Call to stackd unchanged but for its id; return a future of stackd's CallReply.

        The reply carries the client's call id again. If the stream fails,
        the reply is ENETDOWN. Raises ConnectionError if it failed already.
        """
        if self._failure is not None:
            raise ConnectionError(self._failure)
        call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._relayed[call_id] = (future, call.id, field)
        call.id = call_id
        self._queued.append(call)
        self._wakeup.set()
        return future

    async def _write_batches(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                queued, self._queued = self._queued, []
                for batch in _split_batches(queued):
                    await self._stream.write(batch)
        except asyncio.CancelledError:
            raise
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as error:
            self._fail(f"writing to the stackd Calls stream failed: {error!r}")

    async def _read_batches(self) -> None:
        try:
            async for batch in self._stream:
                for reply in batch.replies:
                    relayed = self._relayed.pop(reply.id, None)
                    if relayed is not None:
                        future, reply.id, _ = relayed
                        if not future.done():
                            future.set_result(reply)
                        continue
                    future = self._pending.get(reply.id)
                    if future is not None and not future.done():
                        future.set_result(reply)
            self._fail("stackd ended the Calls stream")
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as error:
            self._fail(f"the stackd Calls stream failed: {error.code().name}: {error.details()}")

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason
            self.log.warning("%s; %d call(s) in flight get ENETDOWN", reason, len(self._pending) + len(self._relayed))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError(reason))
        relayed, self._relayed = self._relayed, {}
        for future, client_id, field in relayed.values():
            if not future.done():
                reply = sockets_pb2.CallReply(id=client_id)
                getattr(reply, field).CopyFrom(calls.METHODS[field][1](errno=errno.ENETDOWN))
                future.set_result(reply)

    def close(self) -> None:
        """Cancel the stream; calls still waiting raise ConnectionError."""
        for task in self._tasks:
            task.cancel()
        self._stream.cancel()
        self._fail("the stackd session ended")


class StackLink:
    """sockd's connection and session with stackd, kept up with reconnects."""

    def __init__(self, endpoint: Endpoint, log: logging.Logger,
                 on_change: Callable[[bool], Awaitable[None]], on_lost: Callable[[], None]):
        self.endpoint = endpoint
        self.log = log
        self.on_change = on_change
        self.on_lost = on_lost
        self.channel = insecure_channel(endpoint)
        self.sockets = sockets_pb2_grpc.SocketsStub(self.channel)
        self.netinfo = sockets_pb2_grpc.NetinfoStub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = ()
        self.calls: StackCallStream | None = None
        self.up = False

    async def probe(self, wait_seconds: float) -> None:
        """Wait up to ``wait_seconds`` for stackd to report SERVING; raise StackUnavailableError if not."""
        health = health_pb2_grpc.HealthStub(self.channel)
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=wait_seconds,
                                       wait_for_ready=True)
        except grpc.aio.AioRpcError as error:
            raise StackUnavailableError(
                f"stackd is not reachable at {self.endpoint} ({error.code().name} after {wait_seconds:g} s): "
                "start sandnet-stackd there or pass its address with --stack"
            ) from None
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise StackUnavailableError(
                f"stackd at {self.endpoint} reports {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}: "
                "wait until it serves, then start sockd again"
            )

    async def run(self) -> None:
        """Hold a session with stackd; when it ends, mark the link down and reconnect with backoff."""
        backoff = BACKOFF_FIRST_SECONDS
        attempt = 0
        while True:
            attempt += 1
            call = self.sockets.Session(sockets_pb2.SessionRequest(client="sandnet-sockd"))
            try:
                event = await call.read()
                if event is grpc.aio.EOF:
                    raise ConnectionError("stackd ended the session stream before sending a session id")
                self.metadata = ((SESSION_METADATA, event.session),)
                self.calls = StackCallStream(self.sockets, self.metadata, self.log)
                await self._set_up(True)
                self.log.info("stackd session %s open at %s", event.session, self.endpoint)
                backoff = BACKOFF_FIRST_SECONDS
                attempt = 0
                while await call.read() is not grpc.aio.EOF:
                    pass
                self.log.warning("stackd at %s ended the session stream", self.endpoint)
            except grpc.aio.AioRpcError as error:
                self.log.warning("stackd session at %s failed: %s: %s", self.endpoint, error.code().name,
                                 error.details())
            except ConnectionError as error:
                self.log.warning("stackd session at %s failed: %s", self.endpoint, error)
            finally:
                call.cancel()
                if self.calls is not None:
                    self.calls.close()
                    self.calls = None

            if self.up:
                await self._set_up(False)
                self.on_lost()
            self.log.info("retrying the stackd session at %s in %.1f s (attempt %d)", self.endpoint, backoff,
                          attempt + 1)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)

    async def _set_up(self, up: bool) -> None:
        self.up = up
        await self.on_change(up)

    async def close(self) -> None:
        await self.channel.close()


# Calls that need nothing of sockd but the ownership check, so the Calls
# stream relays them to stackd as they are, without a task per call.
_RELAYED_FIELDS = frozenset({"send", "recv", "shutdown", "listen", "get_sock_name", "get_peer_name",
                             "set_sock_opt", "get_sock_opt"})


class ForwardSockets(sockets_pb2_grpc.SocketsServicer):
    """The Sockets service forwarded to stackd, with per-session ownership.

    In none mode (``loopback_only``), Connect and Send to an address outside
    127.0.0.0/8 and ::1 get ENETUNREACH without asking stackd.
    """

    def __init__(self, link: StackLink, log: logging.Logger, loopback_only: bool):
        self.link = link
        self.log = log
        self.loopback_only = loopback_only
        self.sessions = SessionTable()
        # Family of each socket, for the loopback check of none mode.
        self.families: dict[int, int] = {}
        self._cleanups: set[asyncio.Task] = set()

    def forget_all_fds(self) -> None:
        """Drop every recorded descriptor, because stackd lost them with its session."""
        self.sessions.forget_all_fds()
        self.families.clear()

    async def Session(self, request, context) -> AsyncIterator[sockets_pb2.SessionEvent]:
        session = self.sessions.open(request.client)
        self.log.info("session %s opened by client %r", session.id, request.client)
        try:
            yield sockets_pb2.SessionEvent(session=session.id)
            await asyncio.Event().wait()
        finally:
            fds = self.sessions.close(session.id)
            # The close calls must finish even though this task is being
            # cancelled, so they run in a task of their own.
            cleanup = asyncio.ensure_future(self._close_on_stack(session.id, fds))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)

    async def _close_on_stack(self, session_id: str, fds: set[int]) -> None:
        for fd in fds:
            self.families.pop(fd, None)
            reply = await self._forward("Close", sockets_pb2.FdRequest(fd=fd), sockets_pb2.Status)
            if reply.errno:
                self.log.warning("closing fd %d of ended session %s failed: errno %d", fd, session_id, reply.errno)
        self.log.info("session %s closed, %d socket(s) closed with it", session_id, len(fds))

    async def _forward(self, method: str, request, reply_type: type):
        """Send one call to stackd; a lost stackd becomes ENETDOWN in the reply.

        Calls go on the shared Calls stream, except Poll: a caller may cancel
        a Poll (SandnetSelector does), and only a unary call carries that
        cancellation on to stackd.
        """
        stream = self.link.calls
        if not self.link.up or stream is None:
            return reply_type(errno=errno.ENETDOWN)
        try:
            if method == "Poll":
                return await self.link.sockets.Poll(request, metadata=self.link.metadata)
            return await stream.call(method, request)
        except grpc.aio.AioRpcError as error:
            self.log.warning("%s on stackd failed: %s: %s", method, error.code().name, error.details())
            return reply_type(errno=errno.ENETDOWN)
        except ConnectionError as error:
            self.log.warning("%s on stackd failed: %s", method, error)
            return reply_type(errno=errno.ENETDOWN)

    async def _owned(self, method: str, request, context, reply_type: type):
        """Forward a call on ``request.fd`` if the caller's session owns it, else return EBADF."""
        session = await self.sessions.require(context)
        if request.fd not in session.fds:
            return reply_type(errno=errno.EBADF)
        return await self._forward(method, request, reply_type)

    def _check_destination(self, fd: int, addr, destination: bool) -> int:
        """Return the errno for an invalid address (EINVAL), or for a destination none mode forbids (ENETUNREACH)."""
        family = self.families.get(fd)
        if family is None:
            return 0
        try:
            addresses.to_host(family, addr)
        except OSError as error:
            return error.errno
        if destination and self.loopback_only and not addresses.is_loopback(family, addr):
            return errno.ENETUNREACH
        return 0

    async def Socket(self, request, context):
        session = await self.sessions.require(context)
        reply = await self._forward("Socket", request, sockets_pb2.SocketReply)
        if reply.errno == 0:
            session.fds.add(reply.fd)
            self.families[reply.fd] = request.family
        return reply

    async def Accept(self, request, context):
        session = await self.sessions.require(context)
        if request.fd not in session.fds:
            return sockets_pb2.AcceptReply(errno=errno.EBADF)
        reply = await self._forward("Accept", request, sockets_pb2.AcceptReply)
        if reply.errno == 0:
            for accepted in (reply, *reply.more):
                session.fds.add(accepted.fd)
                self.families[accepted.fd] = self.families.get(request.fd, 0)
        return reply

    async def Close(self, request, context):
        session = await self.sessions.require(context)
        if request.fd not in session.fds:
            return sockets_pb2.Status(errno=errno.EBADF)
        reply = await self._forward("Close", request, sockets_pb2.Status)
        if reply.errno in (0, errno.EBADF):
            session.fds.discard(request.fd)
            self.families.pop(request.fd, None)
        return reply

    async def Connect(self, request, context):
        session = await self.sessions.require(context)
        if request.fd not in session.fds:
            return sockets_pb2.Status(errno=errno.EBADF)
        code = self._check_destination(request.fd, request.addr, destination=True)
        if code:
            return sockets_pb2.Status(errno=code)
        return await self._forward("Connect", request, sockets_pb2.Status)

    async def Send(self, request, context):
        session = await self.sessions.require(context)
        if request.fd not in session.fds:
            return sockets_pb2.SendReply(errno=errno.EBADF)
        code = self._check_destination(request.fd, request.addr, destination=True) if request.HasField("addr") else 0
        if code:
            return sockets_pb2.SendReply(errno=code)
        return await self._forward("Send", request, sockets_pb2.SendReply)

    async def Bind(self, request, context):
        session = await self.sessions.require(context)
        if request.fd not in session.fds:
            return sockets_pb2.Status(errno=errno.EBADF)
        code = self._check_destination(request.fd, request.addr, destination=False)
        if code:
            return sockets_pb2.Status(errno=code)
        return await self._forward("Bind", request, sockets_pb2.Status)

    async def Listen(self, request, context):
        return await self._owned("Listen", request, context, sockets_pb2.Status)

    async def Recv(self, request, context):
        return await self._owned("Recv", request, context, sockets_pb2.RecvReply)

    async def Shutdown(self, request, context):
        return await self._owned("Shutdown", request, context, sockets_pb2.Status)

    async def GetSockName(self, request, context):
        return await self._owned("GetSockName", request, context, sockets_pb2.AddrReply)

    async def GetPeerName(self, request, context):
        return await self._owned("GetPeerName", request, context, sockets_pb2.AddrReply)

    async def SetSockOpt(self, request, context):
        return await self._owned("SetSockOpt", request, context, sockets_pb2.Status)

    async def GetSockOpt(self, request, context):
        return await self._owned("GetSockOpt", request, context, sockets_pb2.GetSockOptReply)

    async def Calls(self, request_iterator, context):
        """Serve the session's socket calls multiplexed on one stream.

        Data and option calls on the caller's own descriptors are relayed to
        stackd's stream as they arrive; the others run the unary handlers of
        this class, which put each call on stackd's stream before their first
        suspension. stackd keeps the order of each descriptor's calls, so
        sockd does not wait for it too.
        """
        session_id = self.sessions.session_id(context)

        def relay(call: sockets_pb2.Call, field: str) -> asyncio.Future | None:
            # Calls that may need more than a relay (an unknown session or
            # descriptor, a lost stackd, a destination to check) take the
            # unary handlers, which return the errno for each case.
            if field not in _RELAYED_FIELDS:
                return None
            request = getattr(call, field)
            if field == "send" and request.HasField("addr"):
                return None
            session = self.sessions.get(session_id)
            stream = self.link.calls
            if session is None or request.fd not in session.fds or not self.link.up or stream is None:
                return None
            try:
                return stream.relay(call, field)
            except ConnectionError:
                return None

        async for batch in calls.serve_calls(self, request_iterator, context, self.log, keep_lane_order=False,
                                             fast_path=relay):
            yield batch

    async def Poll(self, request, context):
        """Forward the caller's own fds; report POLLNVAL for the others, as Linux does for closed fds."""
        session = await self.sessions.require(context)
        invalid = [sockets_pb2.PollFd(fd=entry.fd, events=select.POLLNVAL)
                   for entry in request.fds if entry.fd not in session.fds]
        owned = [entry for entry in request.fds if entry.fd in session.fds]
        if not owned:
            return sockets_pb2.PollReply(ready=invalid)

        # Linux's poll returns at once when any descriptor is invalid.
        timeout_ms = 0 if invalid else request.timeout_ms
        reply = await self._forward("Poll", sockets_pb2.PollRequest(fds=owned, timeout_ms=timeout_ms),
                                    sockets_pb2.PollReply)
        reply.ready.extend(invalid)
        return reply


class ForwardNetinfo(sockets_pb2_grpc.NetinfoServicer):
    """The Netinfo service forwarded to stackd; a lost stackd is a gRPC UNAVAILABLE."""

    def __init__(self, link: StackLink):
        self.link = link

    async def _forward(self, method: str, request, context):
        if not self.link.up:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"stackd at {self.link.endpoint} is not reachable")
        try:
            return await getattr(self.link.netinfo, method)(request, metadata=self.link.metadata)
        except grpc.aio.AioRpcError as error:
            await context.abort(error.code(), f"stackd at {self.link.endpoint}: {error.details()}")

    async def ListInterfaces(self, request, context):
        return await self._forward("ListInterfaces", request, context)

    async def ListRoutes(self, request, context):
        return await self._forward("ListRoutes", request, context)

    async def ListSockets(self, request, context):
        return await self._forward("ListSockets", request, context)

    async def GetCounters(self, request, context):
        return await self._forward("GetCounters", request, context)
