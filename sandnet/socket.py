"""A work-alike of the standard library's socket.socket whose calls go to sockd.

Supported: IPv4 and IPv6 stream and datagram sockets, including ICMP
datagram sockets. Descriptor numbers are sockd's, not the process's, so a
sandnet socket cannot be passed to select() or os functions; use poll()
from this module instead. Host names other than "localhost" are not
resolved yet and raise socket.gaierror.

Reads on stream sockets ask sockd for at least RECV_CHUNK bytes and keep
the surplus in a client-side buffer, so bulk transfers do not cost one RPC
per small read.
"""

import errno
import io
import math
import os
import socket as _socket
import struct
import time

from sandnet.client import Client
from sandnet.v1 import sockets_pb2, types_pb2

from socket import (  # noqa: F401  re-exported for callers that replace the stdlib module
    AF_INET, AF_INET6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_IP, IPPROTO_IPV6, IPPROTO_TCP, IPPROTO_UDP,
    MSG_DONTWAIT, MSG_PEEK, MSG_TRUNC, MSG_WAITALL, SHUT_RD, SHUT_RDWR, SHUT_WR, SO_KEEPALIVE, SO_RCVBUF,
    SO_REUSEADDR, SO_SNDBUF, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK, SOCK_STREAM, SOL_SOCKET, SOMAXCONN,
    TCP_NODELAY, gaierror, getdefaulttimeout,
)
from select import POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT, POLLPRI  # noqa: F401

error = OSError
timeout = TimeoutError

# The minimum bytes one Recv requests, and the maximum bytes one Send carries.
RECV_CHUNK = 256 * 1024
SEND_CHUNK = 256 * 1024

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


def resolve_host(family: int, host: str) -> bytes:
    """Return the packed address of a numeric host, "localhost" or "" (the wildcard).

    Raise socket.gaierror for any other name, because sandnet has no DNS yet.
    """
    if host == "":
        return b""
    if host == "<broadcast>" and family == AF_INET:
        return b"\xff\xff\xff\xff"
    if host == "localhost":
        host = "127.0.0.1" if family == AF_INET else "::1"
    try:
        return _socket.inet_pton(family, host.partition("%")[0])
    except OSError:
        kind = "IPv4" if family == AF_INET else "IPv6"
        raise gaierror(_socket.EAI_NONAME,
                       f"{host!r} is not a numeric {kind} address: sandnet does not resolve host names yet, "
                       "so use a numeric address or localhost") from None


def to_sockaddr(family: int, address) -> types_pb2.SockAddr:
    """Convert a Python address tuple to a SockAddr, checking it as the stdlib does."""
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
    addr = types_pb2.SockAddr(ip=resolve_host(family, host), port=port)
    if rest:
        addr.flowinfo = rest[0]
    if len(rest) > 1:
        addr.scope_id = rest[1]
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
        self._timeout = 0.0 if type & SOCK_NONBLOCK else getdefaulttimeout()
        self._rbuf = bytearray()
        self._io_refs = 0
        self._closed = False

    def __repr__(self) -> str:
        return (f"<sandnet.socket fd={self._fd}, family={self.family!r}, type={self.type!r}, "
                f"proto={self._proto}>")

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
        """Return sockd's descriptor number, -1 once closed. It is not an OS descriptor."""
        return self._fd

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

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        return self._timeout != 0.0

    # Addresses and connections.

    def bind(self, address) -> None:
        addr = to_sockaddr(self._family, address)
        self._check(self._call("Bind", sockets_pb2.BindRequest(fd=self._fd, addr=addr)).errno)

    def listen(self, backlog: int = min(SOMAXCONN, 128)) -> None:
        self._check(self._call("Listen", sockets_pb2.ListenRequest(fd=self._fd, backlog=max(backlog, 0))).errno)

    def accept(self) -> tuple["socket", tuple]:
        """Accept a connection; return the new socket and the peer's address."""
        timeout_ms = _timeout_ms(self._timeout)
        reply = self._call("Accept", sockets_pb2.AcceptRequest(fd=self._fd, timeout_ms=timeout_ms), timeout_ms)
        self._check(reply.errno)
        conn = socket(self._family, self._type, self._proto, fileno=reply.fd, client=self._client)
        return conn, from_sockaddr(self._family, reply.peer)

    def connect_ex(self, address) -> int:
        """Connect and return 0 or the errno; a timeout returns EAGAIN, as the stdlib does."""
        addr = to_sockaddr(self._family, address)
        timeout_ms = _timeout_ms(self._timeout)
        reply = self._call("Connect", sockets_pb2.ConnectRequest(fd=self._fd, addr=addr, timeout_ms=timeout_ms),
                           timeout_ms)
        if reply.errno == errno.EINPROGRESS and self._timeout:
            return errno.EAGAIN
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
        self._check(self._call("Shutdown", sockets_pb2.ShutdownRequest(fd=self._fd, how=how)).errno)

    # Sending.

    def _send(self, data, flags: int, addr: types_pb2.SockAddr | None, timeout_ms: int) -> int:
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
        addr = to_sockaddr(self._family, address)
        return self._send(memoryview(data).cast("B"), flags, addr, _timeout_ms(self._timeout))

    # Receiving.

    def _recv_remote(self, max_bytes: int, flags: int, timeout_ms: int) -> sockets_pb2.RecvReply:
        request = sockets_pb2.RecvRequest(fd=self._fd, max_bytes=max_bytes, flags=flags, timeout_ms=timeout_ms)
        reply = self._call("Recv", request, timeout_ms)
        self._check(reply.errno)
        return reply

    def _fill(self, want: int, flags: int, timeout_ms: int) -> bool:
        """Read at least RECV_CHUNK bytes' worth into the local buffer; return False at end of file."""
        flags &= ~(MSG_PEEK | MSG_WAITALL)
        reply = self._recv_remote(max(want, RECV_CHUNK), flags, timeout_ms)
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
        """Return the number of bytes in the local receive buffer."""
        return len(self._rbuf)

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
        self._rbuf.clear()
        try:
            self._client.call("Close", sockets_pb2.FdRequest(fd=fd))
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

    local = {id(sock): POLLIN for sock, events in entries if events & POLLIN and sock._rbuf}
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


def create_connection(address, timeout=_GLOBAL_DEFAULT_TIMEOUT, source_address=None, *,
                      client: Client | None = None) -> socket:
    """Connect a TCP socket to (host, port), like the stdlib's socket.create_connection."""
    host, port = address
    family = AF_INET6 if ":" in host else AF_INET
    sock = socket(family, SOCK_STREAM, client=client)
    try:
        if timeout is not _GLOBAL_DEFAULT_TIMEOUT:
            sock.settimeout(timeout)
        if source_address:
            sock.bind(source_address)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock
