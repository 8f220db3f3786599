"""Host mode: serve the Sockets contract with the host kernel's sockets.

Every socket is non-blocking. A call that would block waits for readiness on
the asyncio loop, so one blocking call never holds up another. Descriptor
numbers handed to clients are sockd's own, not host descriptor numbers.
"""

import asyncio
import errno
import itertools
import logging
import select
import socket
import time
from collections.abc import AsyncIterator, Callable

from sandnet import calls
from sandnet.v1 import sockets_pb2, sockets_pb2_grpc
from sandnet_sockd import addresses
from sandnet_sockd.sessions import SessionTable

# The largest read one Recv returns, so that one reply stays well inside the
# 64 MiB gRPC message limit.
MAX_RECV_BYTES = 16 * 1024 * 1024

SUPPORTED_TYPES = (socket.SOCK_STREAM, socket.SOCK_DGRAM)


class HostSocket:
    """A host socket plus the tasks waiting for it to become readable or writable."""

    def __init__(self, fd: int, sock: socket.socket, loop: asyncio.AbstractEventLoop):
        self.fd = fd
        self.sock = sock
        self.family = sock.family
        self.type = sock.type
        self.protocol = sock.proto
        self._loop = loop
        self._waiters: dict[bool, set[asyncio.Future]] = {False: set(), True: set()}

    def watch(self, writable: bool, future: asyncio.Future) -> None:
        """Resolve ``future`` when the socket becomes readable (or writable)."""
        waiters = self._waiters[writable]
        if not waiters:
            add = self._loop.add_writer if writable else self._loop.add_reader
            add(self.sock.fileno(), self._wake, writable)
        waiters.add(future)

    def unwatch(self, writable: bool, future: asyncio.Future) -> None:
        waiters = self._waiters[writable]
        if future not in waiters:
            return
        waiters.discard(future)
        if not waiters:
            self._stop_watching(writable)

    async def wait(self, writable: bool, timeout: float | None) -> None:
        """Wait until the socket is readable (or writable), or ``timeout`` seconds pass."""
        future = self._loop.create_future()
        self.watch(writable, future)
        try:
            await asyncio.wait([future], timeout=timeout)
        finally:
            self.unwatch(writable, future)

    def close(self) -> None:
        """Wake every waiter and close the host socket; woken calls then fail with EBADF."""
        for writable in (False, True):
            if self._waiters[writable]:
                self._wake(writable)
        self.sock.close()

    def _wake(self, writable: bool) -> None:
        waiters = self._waiters[writable]
        for future in waiters:
            if not future.done():
                future.set_result(None)
        waiters.clear()
        self._stop_watching(writable)

    def _stop_watching(self, writable: bool) -> None:
        if self.sock.fileno() < 0:
            return
        remove = self._loop.remove_writer if writable else self._loop.remove_reader
        remove(self.sock.fileno())


def timeout_seconds(timeout_ms: int) -> float | None:
    """Convert the contract's timeout_ms to seconds: None blocks, 0 never waits."""
    if timeout_ms < 0:
        return None
    return timeout_ms / 1000


def fail(code: int, detail: str) -> OSError:
    return addresses.invalid(code, detail)


class HostSockets(sockets_pb2_grpc.SocketsServicer):
    """The Sockets service on host kernel sockets, with per-session ownership."""

    def __init__(self, log: logging.Logger):
        self.log = log
        self.sessions = SessionTable()
        self.sockets: dict[int, HostSocket] = {}
        self._next_fd = itertools.count(3)

    # Sessions.

    async def Session(self, request, context) -> AsyncIterator[sockets_pb2.SessionEvent]:
        session = self.sessions.open(request.client)
        self.log.info("session %s opened by client %r", session.id, request.client)
        try:
            yield sockets_pb2.SessionEvent(session=session.id)
            await asyncio.Event().wait()
        finally:
            fds = self.sessions.close(session.id)
            for fd in fds:
                self._close_fd(fd)
            self.log.info("session %s closed, %d socket(s) closed with it", session.id, len(fds))

    def close_all(self) -> None:
        """Close every socket sockd holds, at shutdown."""
        for fd in list(self.sockets):
            self._close_fd(fd)

    def _close_fd(self, fd: int) -> None:
        host_socket = self.sockets.pop(fd, None)
        if host_socket is not None:
            host_socket.close()

    async def _lookup(self, context, fd: int) -> tuple[object, HostSocket]:
        """Return the caller's session and its socket ``fd``; raise EBADF for any other fd."""
        session = await self.sessions.require(context)
        host_socket = self.sockets.get(fd)
        if fd not in session.fds or host_socket is None:
            raise fail(errno.EBADF, f"fd {fd} is not open in session {session.id}")
        return session, host_socket

    async def _call(self, reply_type: type, context, operation: Callable, request) -> object:
        """Run one socket operation and turn OSError into the reply's errno."""
        try:
            return await operation(request, context)
        except OSError as error:
            code = error.errno or errno.EIO
            self.log.debug("%s on fd %s failed: %s", type(request).__name__, getattr(request, "fd", "-"), error)
            return reply_type(errno=code)

    async def _retry(self, host_socket: HostSocket, writable: bool, timeout_ms: int, attempt: Callable):
        """Run ``attempt`` until it stops raising BlockingIOError or the timeout ends.

        After the timeout the last BlockingIOError (EAGAIN) propagates, as
        Linux reports a blocking call that SO_RCVTIMEO or SO_SNDTIMEO ends.
        """
        timeout = timeout_seconds(timeout_ms)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return attempt()
            except (BlockingIOError, InterruptedError):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise
            await host_socket.wait(writable, remaining)

    # Socket creation.

    async def Socket(self, request, context):
        return await self._call(sockets_pb2.SocketReply, context, self._socket, request)

    async def _socket(self, request, context):
        session = await self.sessions.require(context)
        if request.family not in addresses.IP_LENGTHS:
            raise fail(errno.EAFNOSUPPORT, f"address family {request.family}")
        if request.type == socket.SOCK_RAW:
            raise fail(errno.EPERM, "raw sockets are not available to workloads")
        if request.type not in SUPPORTED_TYPES:
            raise fail(errno.ESOCKTNOSUPPORT, f"socket type {request.type}")

        sock = socket.socket(request.family, request.type, request.protocol)
        sock.setblocking(False)
        fd = next(self._next_fd)
        self.sockets[fd] = HostSocket(fd, sock, asyncio.get_running_loop())
        session.fds.add(fd)
        return sockets_pb2.SocketReply(fd=fd)

    async def Close(self, request, context):
        return await self._call(sockets_pb2.Status, context, self._close, request)

    async def _close(self, request, context):
        session, _ = await self._lookup(context, request.fd)
        session.fds.discard(request.fd)
        self._close_fd(request.fd)
        return sockets_pb2.Status()

    # Addresses and connections.

    async def Bind(self, request, context):
        return await self._call(sockets_pb2.Status, context, self._bind, request)

    async def _bind(self, request, context):
        _, host_socket = await self._lookup(context, request.fd)
        host_socket.sock.bind(addresses.to_host(host_socket.family, request.addr))
        return sockets_pb2.Status()

    async def Listen(self, request, context):
        return await self._call(sockets_pb2.Status, context, self._listen, request)

    async def _listen(self, request, context):
        _, host_socket = await self._lookup(context, request.fd)
        host_socket.sock.listen(request.backlog)
        return sockets_pb2.Status()

    async def Accept(self, request, context):
        return await self._call(sockets_pb2.AcceptReply, context, self._accept, request)

    async def _accept(self, request, context):
        session, host_socket = await self._lookup(context, request.fd)
        sock, peer = await self._retry(host_socket, False, request.timeout_ms, host_socket.sock.accept)
        sock.setblocking(False)
        fd = next(self._next_fd)
        self.sockets[fd] = HostSocket(fd, sock, asyncio.get_running_loop())
        session.fds.add(fd)
        return sockets_pb2.AcceptReply(fd=fd, peer=addresses.from_host(peer))

    async def Connect(self, request, context):
        return await self._call(sockets_pb2.Status, context, self._connect, request)

    async def _connect(self, request, context):
        _, host_socket = await self._lookup(context, request.fd)
        address = addresses.to_host(host_socket.family, request.addr)
        code = host_socket.sock.connect_ex(address)
        if code != errno.EINPROGRESS or request.timeout_ms == 0:
            return sockets_pb2.Status(errno=code)

        # A blocking connect waits for the handshake; when the timeout ends
        # first, Linux returns EINPROGRESS and the handshake goes on.
        await host_socket.wait(True, timeout_seconds(request.timeout_ms))
        writable = select.select([], [host_socket.sock], [], 0)[1]
        if not writable:
            return sockets_pb2.Status(errno=errno.EINPROGRESS)
        code = host_socket.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code == 0:
            # A second connect() moves the kernel socket from connecting to
            # connected, so that a later connect() gets EISCONN as a blocking
            # socket does on Linux.
            host_socket.sock.connect_ex(address)
        return sockets_pb2.Status(errno=code)

    async def Shutdown(self, request, context):
        return await self._call(sockets_pb2.Status, context, self._shutdown, request)

    async def _shutdown(self, request, context):
        _, host_socket = await self._lookup(context, request.fd)
        host_socket.sock.shutdown(request.how)
        return sockets_pb2.Status()

    async def GetSockName(self, request, context):
        return await self._call(sockets_pb2.AddrReply, context, self._getsockname, request)

    async def _getsockname(self, request, context):
        _, host_socket = await self._lookup(context, request.fd)
        return sockets_pb2.AddrReply(addr=addresses.from_host(host_socket.sock.getsockname()))

    async def GetPeerName(self, request, context):
        return await self._call(sockets_pb2.AddrReply, context, self._getpeername, request)

    async def _getpeername(self, request, context):
        _, host_socket = await self._lookup(context, request.fd)
        return sockets_pb2.AddrReply(addr=addresses.from_host(host_socket.sock.getpeername()))

    # Data.

    async def Send(self, request, context):
        return await self._call(sockets_pb2.SendReply, context, self._send, request)

    async def _send(self, request, context):
        _, host_socket = await self._lookup(context, request.fd)
        sock = host_socket.sock
        timeout_ms = 0 if request.flags & socket.MSG_DONTWAIT else request.timeout_ms
        flags = request.flags | socket.MSG_NOSIGNAL
        data = memoryview(request.data)
        if request.HasField("addr"):
            address = addresses.to_host(host_socket.family, request.addr)
            send = lambda chunk: sock.sendto(chunk, flags, address)  # noqa: E731
        else:
            send = lambda chunk: sock.send(chunk, flags)  # noqa: E731

        if host_socket.type != socket.SOCK_STREAM:
            sent = await self._retry(host_socket, True, timeout_ms, lambda: send(data))
            return sockets_pb2.SendReply(sent=sent)

        # A stream send queues everything unless the timeout ends first; then
        # it reports the bytes queued so far, or EAGAIN if there are none.
        sent = 0
        timeout = timeout_seconds(timeout_ms)
        deadline = None if timeout is None else time.monotonic() + timeout
        while sent < len(data) or not data:
            remaining_ms = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            try:
                sent += await self._retry(host_socket, True, remaining_ms, lambda: send(data[sent:]))
            except BlockingIOError:
                if sent:
                    break
                raise
            if not data:
                break
        return sockets_pb2.SendReply(sent=sent)

    async def Recv(self, request, context):
        return await self._call(sockets_pb2.RecvReply, context, self._recv, request)

    async def _recv(self, request, context):
        _, host_socket = await self._lookup(context, request.fd)
        sock = host_socket.sock
        max_bytes = min(request.max_bytes, MAX_RECV_BYTES)
        timeout_ms = 0 if request.flags & socket.MSG_DONTWAIT else request.timeout_ms
        # MSG_TRUNC as an input flag requests the datagram's full length,
        # which a reply cannot express; the reply's flags report truncation.
        flags = request.flags & ~(socket.MSG_WAITALL | socket.MSG_DONTWAIT | socket.MSG_TRUNC)
        wait_all = bool(request.flags & socket.MSG_WAITALL) and host_socket.type == socket.SOCK_STREAM

        def receive(size: int):
            return sock.recvmsg(size, 0, flags)

        if not wait_all:
            data, _, msg_flags, address = await self._retry(host_socket, False, timeout_ms, lambda: receive(max_bytes))
            reply = sockets_pb2.RecvReply(data=data, flags=msg_flags & socket.MSG_TRUNC)
            if host_socket.type != socket.SOCK_STREAM:
                reply.addr.CopyFrom(addresses.from_host(address))
            return reply

        # MSG_WAITALL: gather until max_bytes, end of file, or the timeout;
        # data already received is returned even if the timeout ends first.
        chunks = bytearray()
        timeout = timeout_seconds(timeout_ms)
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(chunks) < max_bytes:
            remaining_ms = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            try:
                data, *_ = await self._retry(host_socket, False, remaining_ms, lambda: receive(max_bytes - len(chunks)))
            except OSError:
                if chunks:
                    break
                raise
            if not data:
                break
            chunks += data
        return sockets_pb2.RecvReply(data=bytes(chunks))

    async def Calls(self, request_iterator, context):
        """Serve the session's socket calls multiplexed on one stream, with the unary handlers of this class."""
        async for batch in calls.serve_calls(self, request_iterator, context, self.log):
            yield batch

    # Options and readiness.

    async def SetSockOpt(self, request, context):
        return await self._call(sockets_pb2.Status, context, self._setsockopt, request)

    async def _setsockopt(self, request, context):
        _, host_socket = await self._lookup(context, request.fd)
        # NOTE: sockd usually runs as root, so privileged options (such as
        # SO_BINDTODEVICE) succeed here that an unprivileged workload could not set.
        host_socket.sock.setsockopt(request.level, request.name, request.value)
        return sockets_pb2.Status()

    async def GetSockOpt(self, request, context):
        return await self._call(sockets_pb2.GetSockOptReply, context, self._getsockopt, request)

    async def _getsockopt(self, request, context):
        _, host_socket = await self._lookup(context, request.fd)
        buflen = min(request.buflen or 4, 65536)
        value = host_socket.sock.getsockopt(request.level, request.name, buflen)
        return sockets_pb2.GetSockOptReply(value=value)

    async def Poll(self, request, context):
        return await self._call(sockets_pb2.PollReply, context, self._poll, request)

    async def _poll(self, request, context):
        session = await self.sessions.require(context)
        timeout = timeout_seconds(request.timeout_ms)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ready = self._poll_once(session, request.fds)
            remaining = None if deadline is None else deadline - time.monotonic()
            if ready or (remaining is not None and remaining <= 0):
                return sockets_pb2.PollReply(ready=ready)
            await self._wait_any(session, request.fds, remaining)

    def _poll_once(self, session, fds) -> list[sockets_pb2.PollFd]:
        """Poll the host sockets once without waiting; unknown fds get POLLNVAL as on Linux."""
        poller = select.poll()
        by_host_fd: dict[int, int] = {}
        ready = []
        for entry in fds:
            host_socket = self.sockets.get(entry.fd)
            if entry.fd not in session.fds or host_socket is None:
                ready.append(sockets_pb2.PollFd(fd=entry.fd, events=select.POLLNVAL))
                continue
            poller.register(host_socket.sock.fileno(), entry.events)
            by_host_fd[host_socket.sock.fileno()] = entry.fd
        for host_fd, revents in poller.poll(0):
            ready.append(sockets_pb2.PollFd(fd=by_host_fd[host_fd], events=revents))
        return ready

    async def _wait_any(self, session, fds, timeout: float | None) -> None:
        """Wait until any polled socket becomes ready for a requested event."""
        future = asyncio.get_running_loop().create_future()
        watched = []
        for entry in fds:
            host_socket = self.sockets.get(entry.fd)
            if host_socket is None or entry.fd not in session.fds:
                continue
            # Error and hang-up wake a reader too, so a poll for nothing but
            # POLLERR or POLLHUP still waits on the read side.
            if entry.events & (select.POLLIN | select.POLLPRI) or not entry.events & select.POLLOUT:
                host_socket.watch(False, future)
                watched.append((host_socket, False))
            if entry.events & select.POLLOUT:
                host_socket.watch(True, future)
                watched.append((host_socket, True))
        try:
            await asyncio.wait([future], timeout=timeout)
        finally:
            for host_socket, writable in watched:
                host_socket.unwatch(writable, future)

