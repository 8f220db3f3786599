"""A work-alike of the standard library's socket.socket whose calls go to sockd.

Supported: IPv4 and IPv6 stream and datagram sockets, including ICMP
datagram sockets; other families fail with EAFNOSUPPORT. socketpair() is
the kernel's, because it is local IPC and not network.

A sandnet socket has no OS descriptor. Its fileno() is a number of its own,
at FILENO_BASE or above, so that it can share a selector with OS descriptors
without colliding. The kernel's select.select() rejects it as out of range. Wait on
sandnet sockets with poll() from this module or with
sandnet.selector.SandnetSelector, which selectors.DefaultSelector becomes
under sandnet.patch().

Host names resolve through sandnet.resolver: /etc/hosts, then DNS queries
sent over sandnet UDP sockets.

Reads on stream sockets ask sockd for at least RECV_CHUNK bytes (less
once SO_RCVBUF is set smaller) and keep the surplus in a client-side
buffer, so bulk transfers do not cost one call per small read.

Sends on a connected, blocking stream socket go through a client-side
send buffer (sandnet.sendbuffer) whose window follows SO_SNDBUF: send()
returns once the data is queued, small sends coalesce, and a failed send
surfaces on a later send(), as with a kernel socket's send buffer.
"""

import collections
import errno
import io
import itertools
import math
import os
import socket as _socket
import struct
import threading
import time
import weakref

from sandnet.client import Client
from sandnet.resolver import ResolveError, reverse_lookup_hosts_file
from sandnet.sendbuffer import DEFAULT_WINDOW, SendBuffer
from sandnet.v1 import sockets_pb2, types_pb2

from socket import (  # noqa: F401  re-exported for callers that replace the stdlib module
    AF_INET, AF_INET6, AF_UNIX, AF_UNSPEC, AI_CANONNAME, AI_NUMERICHOST, AI_NUMERICSERV, AI_PASSIVE,
    EAI_AGAIN, EAI_NONAME, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_IP, IPPROTO_IPV6, IPPROTO_TCP, IPPROTO_UDP,
    MSG_DONTWAIT, MSG_PEEK, MSG_TRUNC, MSG_WAITALL, NI_NUMERICHOST, NI_NUMERICSERV, SHUT_RD, SHUT_RDWR,
    SHUT_WR, SO_ERROR, SO_KEEPALIVE, SO_LINGER, SO_RCVBUF, SO_REUSEADDR, SO_SNDBUF, SOCK_CLOEXEC, SOCK_DGRAM,
    SOCK_NONBLOCK, SOCK_RAW, SOCK_STREAM, SOL_SOCKET, SOMAXCONN, TCP_NODELAY, AddressFamily, SocketKind,
    gaierror, getdefaulttimeout, gethostname, getservbyname, herror, inet_aton, inet_ntoa, inet_ntop,
    inet_pton, setdefaulttimeout,
)
from select import POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT, POLLPRI  # noqa: F401

error = OSError
timeout = TimeoutError

# The stdlib's own socket class and socketpair(), saved before sandnet.patch()
# can replace the module attributes.
_KernelSocket = _socket.socket
_kernel_socketpair = _socket.socketpair
socketpair = _kernel_socketpair

# The first fileno() of a sandnet socket. Linux's default fs.nr_open is 2**20,
# so OS descriptors stay far below it unless that limit is raised past 2**30.
FILENO_BASE = 1 << 30

# The minimum bytes one Recv requests, and the maximum bytes one Send carries.
RECV_CHUNK = 256 * 1024
SEND_CHUNK = 1024 * 1024

# The maximum number of connections one Accept call takes from stackd's accept queue. The
# ones that accept() did not ask for yet wait in the listener's local queue,
# so a busy listener pays one round trip per batch instead of per connection.
ACCEPT_BATCH = 16

_IP_LENGTHS = {AF_INET: 4, AF_INET6: 16}
_TYPE_FLAGS = SOCK_NONBLOCK | SOCK_CLOEXEC
_GLOBAL_DEFAULT_TIMEOUT = _socket._GLOBAL_DEFAULT_TIMEOUT


def _raise_errno(code: int) -> None:
    """Raise the OSError subclass that Python picks for ``code`` (ConnectionRefusedError, ...)."""
    raise OSError(code, os.strerror(code))


def _timeout_ms(seconds: float | None) -> int:
    """Convert a socket timeout to the contract's timeout_ms: -1 blocks, 0 never waits."""
    if seconds is None:
        return -1
    if seconds <= 0:
        return 0
    return max(1, math.ceil(seconds * 1000))


class _FileTable:
    """The fileno() numbers of this process's open sandnet sockets.

    Selectors and asyncio identify a socket by its fileno() alone, so the
    numbers are unique in the process across every Client, as OS descriptors
    are, and SandnetSelector maps them back to sockets here.
    """

    def __init__(self) -> None:
        self._next = itertools.count(FILENO_BASE)
        self._sockets: weakref.WeakValueDictionary[int, "socket"] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def add(self, sock: "socket") -> int:
        with self._lock:
            fileno = next(self._next)
            self._sockets[fileno] = sock
        return fileno

    def remove(self, fileno: int) -> None:
        with self._lock:
            self._sockets.pop(fileno, None)

    def get(self, fileno: int) -> "socket | None":
        """Return the open sandnet socket with this fileno(), or None."""
        return self._sockets.get(fileno)


_files = _FileTable()


def lookup_fileno(fileno: int) -> "socket | None":
    """Return the open sandnet socket whose fileno() is ``fileno``, or None."""
    return _files.get(fileno)


def is_sandnet_fileno(fileno: int) -> bool:
    """Return True if ``fileno`` is in the range of sandnet sockets rather than OS descriptors."""
    return fileno >= FILENO_BASE


def _numeric_address(family: int, host: str) -> bytes | None:
    """Return the packed address of a numeric host, "localhost" or "" (the wildcard); None for a name."""
    if host == "":
        return b""
    if host == "<broadcast>" and family == AF_INET:
        return b"\xff\xff\xff\xff"
    if host.lower() == "localhost":
        host = "127.0.0.1" if family == AF_INET else "::1"
    try:
        return _socket.inet_pton(family, host.partition("%")[0])
    except OSError:
        return None


def if_nameindex(*, client: Client | None = None) -> list[tuple[int, str]]:
    """Return (index, name) for each interface of the sandbox, as socket.if_nameindex does."""
    interfaces = (client or Client.default()).info("ListInterfaces").interfaces
    return [(iface.index, iface.name) for iface in interfaces]


def if_nametoindex(name: str, *, client: Client | None = None) -> int:
    """Return the index of the sandbox interface ``name``; OSError as in the stdlib when unknown."""
    for index, each in if_nameindex(client=client):
        if each == name:
            return index
    raise OSError(errno.ENXIO, "no interface with this name")


def if_indextoname(index: int, *, client: Client | None = None) -> str:
    """Return the name of the sandbox interface with ``index``; OSError as in the stdlib when unknown."""
    for each, name in if_nameindex(client=client):
        if each == index:
            return name
    raise OSError(errno.ENXIO, "no interface with this index")


def _scope_id(host: str, client: Client | None) -> int:
    """Return the zone of "fe80::1%eth0" or "fe80::1%2" as an interface index; 0 without one.

    A name is looked up among the sandbox's interfaces, not the host's;
    an unknown one raises gaierror(EAI_NONAME) as glibc's getaddrinfo does.
    """
    _, percent, zone = host.partition("%")
    if not percent:
        return 0
    if zone.isdigit():
        return int(zone)
    try:
        return if_nametoindex(zone, client=client)
    except OSError:
        raise gaierror(_socket.EAI_NONAME, f"unknown interface {zone!r} in {host!r}") from None


def resolve_host(family: int, host: str, client: Client | None = None) -> bytes:
    """Return the packed address of ``host`` in ``family``: numeric, "localhost", "" or a name.

    Names resolve through sandnet.resolver; a failure raises socket.gaierror.
    """
    packed = _numeric_address(family, host)
    if packed is not None:
        return packed
    other_family = AF_INET6 if family == AF_INET else AF_INET
    if _numeric_address(other_family, host) is not None:
        raise gaierror(_socket.EAI_ADDRFAMILY, f"{host!r} is an address of the other IP family")
    try:
        return (client or Client.default()).resolver().resolve(host, family)[0]
    except ResolveError as failure:
        raise gaierror(failure.code, str(failure)) from None


def to_sockaddr(family: int, address, client: Client | None = None) -> types_pb2.SockAddr:
    """Convert a Python address tuple to a SockAddr, checking it as the stdlib does; names are resolved."""
    if family not in _IP_LENGTHS:
        _raise_errno(errno.EAFNOSUPPORT)
    name = "AF_INET" if family == AF_INET else "AF_INET6"
    sizes = (2,) if family == AF_INET else (2, 3, 4)
    if not isinstance(address, tuple) or len(address) not in sizes:
        raise TypeError(f"{name} address must be a tuple of {' or '.join(map(str, sizes))} items, "
                        f"not {address!r}")
    host, port, *rest = address
    if not isinstance(host, str) or not isinstance(port, int):
        raise TypeError(f"{name} address must be (str host, int port, ...), not {address!r}")
    if not 0 <= port <= 0xFFFF:
        raise OverflowError(f"port must be 0-65535, not {port}")
    addr = types_pb2.SockAddr(ip=resolve_host(family, host, client), port=port)
    if rest:
        addr.flowinfo = rest[0]
    if len(rest) > 1:
        addr.scope_id = rest[1]
    elif family == AF_INET6 and "%" in host:
        addr.scope_id = _scope_id(host, client)
    return addr


def from_sockaddr(family: int, addr: types_pb2.SockAddr) -> tuple:
    """Convert a SockAddr to the address tuple that the stdlib returns for ``family``."""
    if family == AF_INET6:
        host = _socket.inet_ntop(AF_INET6, addr.ip) if len(addr.ip) == 16 else "::"
        return (host, addr.port, addr.flowinfo, addr.scope_id)
    host = _socket.inet_ntop(AF_INET, addr.ip) if len(addr.ip) == 4 else "0.0.0.0"
    return (host, addr.port)


class socket:
    """A socket served by sockd, with the interface of the stdlib's socket.socket.

    ``client`` defaults to Client.default(), the process-wide session.
    """

    def __init__(self, family: int = AF_INET, type: int = SOCK_STREAM, proto: int = 0,
                 fileno: int | None = None, *, client: Client | None = None):
        """Open a socket on sockd, or wrap ``fileno``, a descriptor that sockd already gave this client."""
        if family == -1 or type == -1:
            raise ValueError("sandnet sockets cannot detect the family or type of a descriptor; pass both")
        self._client = client or Client.default()
        self._family = family
        self._type = type & ~_TYPE_FLAGS
        self._proto = proto
        if fileno is None:
            reply = self._client.call("Socket", sockets_pb2.SocketRequest(family=family, type=self._type,
                                                                         protocol=proto))
            if reply.errno:
                _raise_errno(reply.errno)
            fileno = reply.fd
        self._fd = fileno
        self._fileno = _files.add(self)
        self._timeout = 0.0 if type & SOCK_NONBLOCK else getdefaulttimeout()
        self._rbuf = bytearray()
        # Connections a listener took from stackd that accept() has not returned yet.
        self._accepted: collections.deque[sockets_pb2.AcceptReply] = collections.deque()
        self._accept_cond = threading.Condition()
        self._accept_in_flight = False
        self._backlog = 0
        # Set once the socket is connected; sockets without one send synchronously.
        self._sendbuf: SendBuffer | None = None
        # The effective SO_SNDBUF once the application set it, which then
        # bounds the send buffer's window; None leaves the default window.
        self._send_window: int | None = None
        # The minimum a stream read requests from stackd: the effective
        # SO_RCVBUF once the application set it, so the local buffer stays within it.
        self._recv_chunk = RECV_CHUNK
        self._io_refs = 0
        self._closed = False

    def __repr__(self) -> str:
        return (f"<sandnet.socket fd={self.fileno()}, sockd_fd={self._fd}, family={self.family!r}, "
                f"type={self.type!r}, proto={self._proto}>")

    def __enter__(self) -> "socket":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def family(self) -> _socket.AddressFamily:
        return _socket.AddressFamily(self._family)

    @property
    def type(self) -> _socket.SocketKind:
        return _socket.SocketKind(self._type)

    @property
    def proto(self) -> int:
        return self._proto

    def fileno(self) -> int:
        """Return this socket's process-unique number, -1 once closed. It is not an OS descriptor."""
        return self._fileno if self._fd >= 0 else -1

    @property
    def sockd_fd(self) -> int:
        """The descriptor number that sockd gave this socket, -1 once closed."""
        return self._fd

    @property
    def client(self) -> Client:
        """The sockd session that owns this socket."""
        return self._client

    # Calls and errors.

    def _call(self, method: str, request, timeout_ms: int | None = None):
        if self._fd < 0:
            _raise_errno(errno.EBADF)
        return self._client.call(method, request, timeout_ms)

    def _check(self, code: int) -> None:
        """Raise for a nonzero errno; EAGAIN on a socket with a timeout is TimeoutError, as in the stdlib."""
        if not code:
            return
        if code == errno.EAGAIN and self._timeout:
            raise TimeoutError("timed out")
        _raise_errno(code)

    # Timeouts.

    def settimeout(self, value: float | None) -> None:
        if value is not None:
            value = float(value)
            if value < 0:
                raise ValueError("Timeout value out of range")
        self._timeout = value

    def gettimeout(self) -> float | None:
        return self._timeout

    @property
    def timeout(self) -> float | None:
        """The timeout in seconds, as the stdlib's socket.timeout attribute: None blocks, 0.0 never waits."""
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def detach(self) -> int:
        """Not supported: a sandnet socket has no OS descriptor to hand over."""
        raise OSError(errno.EOPNOTSUPP, "a sandnet socket has no OS descriptor to detach")

    def dup(self) -> "socket":
        """Not supported: sockd has no call that duplicates a descriptor."""
        raise OSError(errno.EOPNOTSUPP, "sandnet sockets cannot be duplicated")

    def getblocking(self) -> bool:
        return self._timeout != 0.0

    # Addresses and connections.

    def bind(self, address) -> None:
        addr = to_sockaddr(self._family, address, self._client)
        self._check(self._call("Bind", sockets_pb2.BindRequest(fd=self._fd, addr=addr)).errno)

    def listen(self, backlog: int = min(SOMAXCONN, 128)) -> None:
        self._check(self._call("Listen", sockets_pb2.ListenRequest(fd=self._fd, backlog=max(backlog, 0))).errno)
        self._backlog = max(backlog, 0)

    def accept(self) -> tuple["socket", tuple]:
        """Accept a connection and return the new socket and the peer's address.

        One Accept call takes up to ACCEPT_BATCH connections, no more than
        the backlog, that stackd has established. The others wait here for
        the next accept() calls.

        One thread at a time waits in an Accept call, and other threads wait
        here for its connections. So no thread waits in stackd while
        connections wait in the local queue.
        """
        reply = self._take_accepted()
        conn = socket(self._family, self._type, self._proto, fileno=reply.fd, client=self._client)
        # As on Linux, an accepted socket inherits the listener's SO_SNDBUF.
        conn._send_window = self._send_window
        conn._recv_chunk = self._recv_chunk
        conn._start_send_buffer()
        return conn, from_sockaddr(self._family, reply.peer)

    def _take_accepted(self) -> sockets_pb2.AcceptReply:
        """Return the next connection, from the local queue or from an Accept call, within the timeout."""
        timeout = self._timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._accept_cond:
            while True:
                if self._fd < 0:
                    _raise_errno(errno.EBADF)
                if self._accepted:
                    return self._accepted.popleft()
                if not self._accept_in_flight:
                    self._accept_in_flight = True
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    if timeout == 0:
                        _raise_errno(errno.EAGAIN)
                    raise TimeoutError("timed out")
                self._accept_cond.wait(remaining)

        reply = None
        try:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            timeout_ms = 0 if timeout == 0 else _timeout_ms(remaining)
            request = sockets_pb2.AcceptRequest(fd=self._fd, timeout_ms=timeout_ms,
                                                max_count=max(1, min(ACCEPT_BATCH, self._backlog)))
            reply = self._call("Accept", request, timeout_ms)
            self._check(reply.errno)
            return reply
        finally:
            with self._accept_cond:
                self._accept_in_flight = False
                if reply is not None and not reply.errno:
                    self._accepted.extend(reply.more)
                self._accept_cond.notify_all()

    def connect_ex(self, address) -> int:
        """Connect and return 0 or the errno; a timeout returns EAGAIN, as the stdlib does."""
        addr = to_sockaddr(self._family, address, self._client)
        timeout_ms = _timeout_ms(self._timeout)
        reply = self._call("Connect", sockets_pb2.ConnectRequest(fd=self._fd, addr=addr, timeout_ms=timeout_ms),
                           timeout_ms)
        if reply.errno == errno.EINPROGRESS and self._timeout:
            return errno.EAGAIN
        if reply.errno == 0:
            self._start_send_buffer()
        return reply.errno

    def connect(self, address) -> None:
        code = self.connect_ex(address)
        if code == errno.EAGAIN and self._timeout:
            raise TimeoutError("timed out")
        if code:
            _raise_errno(code)

    def getsockname(self) -> tuple:
        reply = self._call("GetSockName", sockets_pb2.FdRequest(fd=self._fd))
        self._check(reply.errno)
        return from_sockaddr(self._family, reply.addr)

    def getpeername(self) -> tuple:
        reply = self._call("GetPeerName", sockets_pb2.FdRequest(fd=self._fd))
        self._check(reply.errno)
        return from_sockaddr(self._family, reply.addr)

    def shutdown(self, how: int) -> None:
        if how in (SHUT_RD, SHUT_RDWR) and self._accepted:
            # A listener stops listening: as on Linux, the connections it had
            # not returned from accept() are reset, and accept() gets EINVAL.
            self._reset_unaccepted()
        if how in (SHUT_WR, SHUT_RDWR) and self._sendbuf is not None:
            # Buffered data goes before the FIN. Later sends are synchronous
            # again, so they get EPIPE at once, as on Linux.
            # NOTE: sockd runs the Shutdown after the Sends in flight, so this
            # call waits while a Send waits for room in a full TCP send buffer.
            self._sendbuf.flush()
            self._sendbuf = None
        self._check(self._call("Shutdown", sockets_pb2.ShutdownRequest(fd=self._fd, how=how)).errno)

    # Sending.

    def _start_send_buffer(self) -> None:
        if self._type == SOCK_STREAM and self._sendbuf is None:
            self._sendbuf = SendBuffer(self._client.calls, self._fd, self._send_window or DEFAULT_WINDOW)
            self._client.calls.send_buffers.add(self._sendbuf)

    def _send(self, data, flags: int, addr: types_pb2.SockAddr | None, timeout_ms: int) -> int:
        if self._fd < 0:
            _raise_errno(errno.EBADF)
        buffer = self._sendbuf
        if buffer is not None and addr is None and not flags and timeout_ms != 0 and len(data):
            return buffer.write(data, None if timeout_ms < 0 else timeout_ms / 1000)
        request = sockets_pb2.SendRequest(fd=self._fd, data=bytes(data), flags=flags, timeout_ms=timeout_ms)
        if addr is not None:
            request.addr.CopyFrom(addr)
        reply = self._call("Send", request, timeout_ms)
        self._check(reply.errno)
        return reply.sent

    def send(self, data, flags: int = 0) -> int:
        """Send up to SEND_CHUNK bytes of ``data`` and return how many were queued."""
        view = memoryview(data).cast("B")
        if self._type == SOCK_STREAM:
            view = view[:SEND_CHUNK]
        return self._send(view, flags, None, _timeout_ms(self._timeout))

    def sendall(self, data, flags: int = 0) -> None:
        """Send all of ``data`` in chunks of SEND_CHUNK; the timeout covers the whole call."""
        view = memoryview(data).cast("B")
        deadline = None if not self._timeout else time.monotonic() + self._timeout
        sent = 0
        while sent < len(view) or not view:
            timeout_ms = _timeout_ms(self._timeout)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("timed out")
                timeout_ms = _timeout_ms(remaining)
            sent += self._send(view[sent:sent + SEND_CHUNK], flags, None, timeout_ms)
            if not view:
                return

    def sendto(self, data, flags_or_address, address=None) -> int:
        """sendto(data, address) or sendto(data, flags, address), as in the stdlib."""
        if address is None:
            flags, address = 0, flags_or_address
        else:
            flags = flags_or_address
        addr = to_sockaddr(self._family, address, self._client)
        return self._send(memoryview(data).cast("B"), flags, addr, _timeout_ms(self._timeout))

    # Receiving.

    def _recv_remote(self, max_bytes: int, flags: int, timeout_ms: int) -> sockets_pb2.RecvReply:
        request = sockets_pb2.RecvRequest(fd=self._fd, max_bytes=max_bytes, flags=flags, timeout_ms=timeout_ms)
        reply = self._call("Recv", request, timeout_ms)
        self._check(reply.errno)
        return reply

    def _fill(self, want: int, flags: int, timeout_ms: int) -> bool:
        """Ask for up to max(want, the read chunk) bytes into the local buffer; return False at end of file."""
        flags &= ~(MSG_PEEK | MSG_WAITALL)
        reply = self._recv_remote(max(want, self._recv_chunk), flags, timeout_ms)
        self._rbuf += reply.data
        return bool(reply.data)

    def _recv_stream(self, bufsize: int, flags: int) -> bytes:
        """Serve a stream read from the local buffer, refilling it from sockd when empty.

        MSG_PEEK reads without consuming the local buffer; MSG_WAITALL refills
        until ``bufsize`` bytes, end of file, or the timeout (which returns
        what has arrived, or raises if nothing has).
        """
        if bufsize == 0:
            return b""
        timeout_ms = 0 if flags & MSG_DONTWAIT else _timeout_ms(self._timeout)
        if not self._rbuf:
            self._fill(bufsize, flags, timeout_ms)

        if flags & MSG_WAITALL:
            deadline = None if timeout_ms <= 0 else time.monotonic() + timeout_ms / 1000
            while self._rbuf and len(self._rbuf) < bufsize:
                remaining_ms = timeout_ms if deadline is None else _timeout_ms(deadline - time.monotonic())
                try:
                    if not self._fill(bufsize - len(self._rbuf), flags, remaining_ms):
                        break
                except (TimeoutError, BlockingIOError):
                    break

        data = bytes(self._rbuf[:bufsize])
        if not flags & MSG_PEEK:
            del self._rbuf[:bufsize]
        return data

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        if self._type == SOCK_STREAM:
            return self._recv_stream(bufsize, flags)
        timeout_ms = 0 if flags & MSG_DONTWAIT else _timeout_ms(self._timeout)
        return self._recv_remote(bufsize, flags, timeout_ms).data

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, tuple | None]:
        """Receive data and the sender's address; the address is None on a stream socket."""
        if bufsize < 0:
            raise ValueError("negative buffersize in recvfrom")
        if self._type == SOCK_STREAM:
            return self._recv_stream(bufsize, flags), None
        timeout_ms = 0 if flags & MSG_DONTWAIT else _timeout_ms(self._timeout)
        reply = self._recv_remote(bufsize, flags, timeout_ms)
        return reply.data, from_sockaddr(self._family, reply.addr)

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        nbytes, _ = self.recvfrom_into(buffer, nbytes, flags)
        return nbytes

    def recvfrom_into(self, buffer, nbytes: int = 0, flags: int = 0) -> tuple[int, tuple | None]:
        view = memoryview(buffer).cast("B")
        if nbytes < 0:
            raise ValueError("negative buffersize in recvfrom_into")
        if nbytes > len(view):
            raise ValueError("nbytes is greater than the length of the buffer")
        data, address = self.recvfrom(nbytes or len(view), flags)
        view[:len(data)] = data
        return len(data), address

    def pending(self) -> int:
        """Return the bytes in the local receive buffer, or for a listener the connections queued locally."""
        return len(self._rbuf) or len(self._accepted)

    # Options.

    def setsockopt(self, level: int, optname: int, value, optlen: int | None = None) -> None:
        """Set an option from an int (packed as a C int) or a bytes-like value."""
        if value is None:
            payload = b"\0" * (optlen or 0)
        elif isinstance(value, int):
            payload = struct.pack("i", value)
        else:
            payload = bytes(value)
        request = sockets_pb2.SetSockOptRequest(fd=self._fd, level=level, name=optname, value=payload)
        self._check(self._call("SetSockOpt", request).errno)
        if level == SOL_SOCKET and optname == SO_SNDBUF and self._type == SOCK_STREAM:
            # The client's send buffer takes the place of the socket's, so its
            # window is the size the stack applied (doubled and clamped as
            # Linux does).
            self._send_window = self.getsockopt(SOL_SOCKET, SO_SNDBUF)
            if self._sendbuf is not None:
                self._sendbuf.set_window(self._send_window)
        elif level == SOL_SOCKET and optname == SO_RCVBUF and self._type == SOCK_STREAM:
            self._recv_chunk = min(RECV_CHUNK, self.getsockopt(SOL_SOCKET, SO_RCVBUF))

    def getsockopt(self, level: int, optname: int, buflen: int | None = None):
        """Return an int option, or the raw bytes when ``buflen`` is given."""
        request = sockets_pb2.GetSockOptRequest(fd=self._fd, level=level, name=optname, buflen=buflen or 4)
        reply = self._call("GetSockOpt", request)
        self._check(reply.errno)
        if buflen is not None:
            return reply.value
        return struct.unpack("i", reply.value[:4].ljust(4, b"\0"))[0]

    # Files and closing.

    def makefile(self, mode: str = "r", buffering: int | None = None, *, encoding=None, errors=None,
                 newline=None):
        """Return a file object on the socket, as the stdlib's socket.makefile does."""
        if not set(mode) <= {"r", "w", "b"}:
            raise ValueError(f"invalid mode {mode!r} (only r, w, b allowed)")
        writing = "w" in mode
        reading = "r" in mode or not writing
        raw_mode = ""
        if reading:
            raw_mode += "r"
        if writing:
            raw_mode += "w"
        raw = SocketIO(self, raw_mode)
        self._io_refs += 1
        if buffering is None:
            buffering = -1
        if buffering < 0:
            buffering = io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            if "b" not in mode:
                raise ValueError("unbuffered streams must be binary")
            return raw
        if reading and writing:
            buffer = io.BufferedRWPair(raw, raw, buffering)
        elif reading:
            buffer = io.BufferedReader(raw, buffering)
        else:
            buffer = io.BufferedWriter(raw, buffering)
        if "b" in mode:
            return buffer
        text = io.TextIOWrapper(buffer, encoding, errors, newline)
        text.mode = mode
        return text

    def _reset_unaccepted(self) -> None:
        """Reset the connections queued here that accept() never returned, as Linux resets a closed listener's queue."""
        linger_zero = struct.pack("ii", 1, 0)
        while self._accepted:
            fd = self._accepted.popleft().fd
            self._client.calls.submit("SetSockOpt", sockets_pb2.SetSockOptRequest(
                fd=fd, level=SOL_SOCKET, name=SO_LINGER, value=linger_zero), defer_reply=True)
            self._client.calls.submit("Close", sockets_pb2.FdRequest(fd=fd), defer_reply=True)

    def _decref_socketios(self) -> None:
        if self._io_refs > 0:
            self._io_refs -= 1
        if self._closed:
            self.close()

    def close(self) -> None:
        """Close the socket once no file from makefile() still uses it."""
        self._closed = True
        if self._io_refs > 0 or self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        _files.remove(self._fileno)
        self._rbuf.clear()
        buffer, self._sendbuf = self._sendbuf, None
        with self._accept_cond:
            # Threads waiting for another thread's Accept call get EBADF.
            self._accept_cond.notify_all()
        try:
            self._reset_unaccepted()
            if buffer is not None:
                buffer.flush()
            # close() does not wait for the reply: its only error, EBADF, is
            # settled here, and sockd closes after the Sends in flight, which
            # may wait for the peer, while close() on Linux does not wait.
            # The reply is deferred, so the Close rides with the next call.
            self._client.calls.submit("Close", sockets_pb2.FdRequest(fd=fd), defer_reply=True)
        except ConnectionError:
            # The session is gone, and sockd closed the socket with it.
            pass


class SocketIO(io.RawIOBase):
    """Raw I/O on a sandnet socket, for makefile(), like the stdlib's socket.SocketIO."""

    def __init__(self, sock: socket, mode: str):
        super().__init__()
        self._sock = sock
        self._mode = mode
        self._reading = "r" in mode
        self._writing = "w" in mode
        self._timeout_occurred = False

    def readinto(self, buffer) -> int | None:
        self._checkClosed()
        if self._timeout_occurred:
            raise OSError("cannot read from timed out object")
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            self._timeout_occurred = True
            raise
        except BlockingIOError:
            return None

    def write(self, data) -> int | None:
        self._checkClosed()
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return None

    def readable(self) -> bool:
        return self._reading and not self.closed

    def writable(self) -> bool:
        return self._writing and not self.closed

    def seekable(self) -> bool:
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a sandnet socket has no OS file descriptor")

    @property
    def mode(self) -> str:
        return self._mode

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        self._sock._decref_socketios()


def poll(entries, timeout: float | None = None) -> list[tuple[socket, int]]:
    """Wait until any socket is ready; return (socket, revents) for each ready one.

    ``entries`` is a list of (socket, events) with POLLIN, POLLOUT and friends;
    ``timeout`` is in seconds, None blocks. Data in a socket's local receive
    buffer counts as POLLIN. All sockets must share one Client.
    """
    entries = list(entries)
    if not entries:
        if timeout:
            time.sleep(timeout)
        return []
    clients = {sock._client for sock, _ in entries}
    if len(clients) != 1:
        raise ValueError("poll() needs sockets of one sandnet Client")

    local = {id(sock): POLLIN for sock, events in entries if events & POLLIN and sock.pending()}
    timeout_ms = 0 if local else _timeout_ms(timeout)
    request = sockets_pb2.PollRequest(fds=[sockets_pb2.PollFd(fd=sock._fd, events=events) for sock, events in entries],
                                      timeout_ms=timeout_ms)
    reply = clients.pop().call("Poll", request, timeout_ms)
    if reply.errno:
        _raise_errno(reply.errno)

    remote = {}
    for entry in reply.ready:
        remote[entry.fd] = remote.get(entry.fd, 0) | entry.events
    ready = []
    for sock, _ in entries:
        revents = local.get(id(sock), 0) | remote.get(sock._fd, 0)
        if revents:
            ready.append((sock, revents))
    return ready


def _port_number(port, flags: int) -> int:
    """Convert getaddrinfo's port (None, int, or a numeric or service name string) to a number."""
    if port is None:
        return 0
    if isinstance(port, int):
        return port
    if isinstance(port, bytes):
        port = port.decode("ascii")
    if not isinstance(port, str):
        raise TypeError(f"getaddrinfo() argument 2 must be int, str, bytes or None, not {type(port).__name__}")
    if port.isdigit():
        return int(port)
    if flags & AI_NUMERICSERV:
        raise gaierror(_socket.EAI_NONAME, f"invalid port {port!r}: AI_NUMERICSERV needs a number")
    try:
        # /etc/services is a local file, so this sends nothing on any network.
        return getservbyname(port)
    except OSError:
        raise gaierror(_socket.EAI_SERVICE, f"unknown service {port!r}: use a port number") from None


_LOOPBACK = {AF_INET: "127.0.0.1", AF_INET6: "::1"}

# (type, protocol) pairs that getaddrinfo returns for a type of 0, as glibc does.
_DEFAULT_SOCKET_KINDS = ((SOCK_STREAM, IPPROTO_TCP), (SOCK_DGRAM, IPPROTO_UDP), (SOCK_RAW, 0))


def getaddrinfo(host, port, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0, *,
                client: Client | None = None) -> list[tuple]:
    """Resolve (host, port) like socket.getaddrinfo, with names looked up through sandnet.

    IPv4 results come before IPv6 ones. A name resolves through /etc/hosts,
    then DNS over sandnet UDP (sandnet.resolver); failures raise socket.gaierror.
    """
    if family not in (AF_UNSPEC, AF_INET, AF_INET6):
        raise gaierror(_socket.EAI_FAMILY, f"address family {family} is not supported")
    number = _port_number(port, flags)
    if isinstance(host, bytes):
        host = host.decode("idna")
    families = [family] if family else [AF_INET, AF_INET6]

    results: list[tuple[int, bytes]] = []
    names: list[str] = []
    if host is None:
        for each in families:
            results.append((each, b"" if flags & AI_PASSIVE else _socket.inet_pton(each, _LOOPBACK[each])))
    else:
        for each in families:
            packed = _numeric_address(each, host)
            if packed is not None:
                results.append((each, packed))
        if not results and flags & AI_NUMERICHOST:
            raise gaierror(_socket.EAI_NONAME, f"{host!r} is not a numeric address (AI_NUMERICHOST)")
        if not results and not any(_numeric_address(other, host) is not None for other in (AF_INET, AF_INET6)):
            names.append(host)

    failure = None
    for name in names:
        resolver = (client or Client.default()).resolver()
        for each in families:
            try:
                results.extend((each, packed) for packed in resolver.resolve(name, each))
            except ResolveError as error:
                failure = failure or error
    if not results:
        if failure is not None:
            raise gaierror(failure.code, str(failure))
        raise gaierror(_socket.EAI_ADDRFAMILY, f"{host!r} has no address in family {family}")

    kinds = [(type, proto)] if type else list(_DEFAULT_SOCKET_KINDS)
    infos = []
    for index, (each, packed) in enumerate(results):
        scope = _scope_id(host, client) if each == AF_INET6 and host and "%" in host else 0
        sockaddr = from_sockaddr(each, types_pb2.SockAddr(ip=packed, port=number, scope_id=scope))
        for kind, protocol in kinds:
            canonical = host if flags & AI_CANONNAME and index == 0 and host else ""
            infos.append((AddressFamily(each), SocketKind(kind), protocol or _default_protocol(kind, proto),
                          canonical, sockaddr))
    return infos


def _default_protocol(kind: int, proto: int) -> int:
    if proto:
        return proto
    return {SOCK_STREAM: IPPROTO_TCP, SOCK_DGRAM: IPPROTO_UDP}.get(kind, 0)


def gethostbyname(hostname: str, *, client: Client | None = None) -> str:
    """Return the first IPv4 address of ``hostname`` as a string."""
    return inet_ntop(AF_INET, resolve_host(AF_INET, hostname, client))


def gethostbyname_ex(hostname: str, *, client: Client | None = None) -> tuple[str, list[str], list[str]]:
    """Return (hostname, aliases, IPv4 addresses) like socket.gethostbyname_ex; aliases are always empty."""
    infos = getaddrinfo(hostname, None, AF_INET, SOCK_STREAM, client=client)
    return hostname, [], [info[4][0] for info in infos]


def gethostbyaddr(ip_address: str) -> tuple[str, list[str], list[str]]:
    """Return (name, aliases, [address]) from /etc/hosts; raise socket.herror when it has no entry.

    Reverse lookups over DNS (PTR records) are not implemented.
    """
    found = reverse_lookup_hosts_file(ip_address)
    if found is None:
        raise herror(1, f"{ip_address!r}: unknown host (sandnet looks up addresses in /etc/hosts only)")
    name, aliases = found
    return name, aliases, [ip_address]


def getfqdn(name: str = "") -> str:
    """Return a fully qualified name for ``name``, as socket.getfqdn does, using /etc/hosts only."""
    name = name.strip()
    if not name or name in ("0.0.0.0", "::"):
        name = gethostname()
    try:
        hostname, aliases, _ = gethostbyaddr(name)
    except OSError:
        return name
    for candidate in [hostname, *aliases]:
        if "." in candidate:
            return candidate
    return hostname


def getnameinfo(sockaddr: tuple, flags: int) -> tuple[str, str]:
    """Return (host, port) as numeric strings; names are never looked up."""
    return _socket.getnameinfo(sockaddr, flags | NI_NUMERICHOST | NI_NUMERICSERV)


def has_dualstack_ipv6() -> bool:
    """Return True: AF_INET6 sockets accept IPv4 peers unless IPV6_V6ONLY is set, as on Linux."""
    return True


def create_connection(address, timeout=_GLOBAL_DEFAULT_TIMEOUT, source_address=None, *,
                      all_errors: bool = False, client: Client | None = None) -> socket:
    """Connect a TCP socket to (host, port), like the stdlib's socket.create_connection.

    Each address of the host is tried in getaddrinfo's order; the last error
    is raised, or an ExceptionGroup of all of them with ``all_errors``.
    """
    host, port = address
    errors = []
    for family, kind, protocol, _, sockaddr in getaddrinfo(host, port, 0, SOCK_STREAM, client=client):
        sock = None
        try:
            sock = socket(family, kind, protocol, client=client)
            if timeout is not _GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as failure:
            errors.append(failure)
            if sock is not None:
                sock.close()
    if all_errors:
        raise ExceptionGroup("create_connection failed", errors)
    raise errors[-1] if errors else OSError(f"getaddrinfo returned no address for {host!r}")


def create_server(address, *, family: int = AF_INET, backlog: int | None = None, reuse_port: bool = False,
                  dualstack_ipv6: bool = False, client: Client | None = None) -> socket:
    """Bind a listening TCP socket to ``address``, like the stdlib's socket.create_server."""
    if dualstack_ipv6 and family != AF_INET6:
        raise ValueError("dualstack_ipv6 requires AF_INET6 family")
    if reuse_port:
        raise ValueError("SO_REUSEPORT is not supported by sandnet sockets")
    sock = socket(family, SOCK_STREAM, client=client)
    try:
        sock.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)
        if family == AF_INET6:
            # As the stdlib does: IPv6 only, unless a dual-stack server was requested.
            sock.setsockopt(IPPROTO_IPV6, _socket.IPV6_V6ONLY, 0 if dualstack_ipv6 else 1)
        sock.bind(address)
        if backlog is None:
            sock.listen()
        else:
            sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock
