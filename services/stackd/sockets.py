"""Socket objects of the stack and the table that owns them.

A socket is identified by a descriptor number that is unique within one
stackd. Every socket call returns a Linux errno on failure by raising
SocketError; the gRPC service turns that into the reply's errno field.
Blocking calls wait on the socket's waiters, which the protocol code wakes
after any change that may let a call proceed.
"""

import asyncio
import dataclasses
import errno
import random
import socket as _socket
import struct
from collections.abc import Iterable

AF_INET = _socket.AF_INET
AF_INET6 = _socket.AF_INET6
SOCK_STREAM = _socket.SOCK_STREAM
SOCK_DGRAM = _socket.SOCK_DGRAM

SOL_SOCKET = 1
SO_TYPE = 3
SO_ERROR = 4
SO_REUSEADDR = 2
SO_BROADCAST = 6
SO_SNDBUF = 7
SO_RCVBUF = 8
SO_KEEPALIVE = 9
SO_LINGER = 13
SO_REUSEPORT = 15
SO_ACCEPTCONN = 30
SO_PROTOCOL = 38
SO_DOMAIN = 39
IPPROTO_IP = 0
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IP_TOS = 1
IP_TTL = 2
TCP_NODELAY = 1
TCP_MAXSEG = 2
TCP_KEEPIDLE = 4
TCP_KEEPINTVL = 5
TCP_KEEPCNT = 6

MSG_PEEK = 0x2
MSG_DONTWAIT = 0x40
MSG_WAITALL = 0x100
MSG_TRUNC = 0x20

POLLIN = 0x1
POLLOUT = 0x4
POLLERR = 0x8
POLLHUP = 0x10
POLLNVAL = 0x20
POLLRDHUP = 0x2000

# Linux's net.core.{r,w}mem_max and the floors of sock_setsockopt: the value
# set is doubled to account for bookkeeping overhead, then clamped.
RMEM_MAX = 212992
WMEM_MAX = 212992
SOCK_MIN_RCVBUF = 2304
SOCK_MIN_SNDBUF = 4608

# net.ipv4.ip_local_port_range
EPHEMERAL_LOW = 32768
EPHEMERAL_HIGH = 60999

# net.core.somaxconn
SOMAXCONN = 4096

ANY4 = b"\x00\x00\x00\x00"


class SocketError(Exception):
    """A socket call failed with ``errno``."""

    def __init__(self, code: int, detail: str = ""):
        super().__init__(f"{errno.errorcode.get(code, code)}: {detail}" if detail else errno.errorcode.get(code, str(code)))
        self.errno = code


@dataclasses.dataclass(frozen=True, slots=True)
class SockAddr:
    """An IPv4 socket address; ``ip`` is 4 bytes, all zero for the wildcard."""

    ip: bytes
    port: int


def check_address(family: int, ip: bytes, port: int) -> SockAddr:
    """Validate an address for ``family`` as bind/connect/sendto do (EINVAL, EAFNOSUPPORT)."""
    if port < 0 or port > 0xFFFF:
        raise SocketError(errno.EINVAL, f"port {port} is outside 0..65535")
    if family == AF_INET:
        if ip == b"":
            ip = ANY4
        if len(ip) != 4:
            raise SocketError(errno.EINVAL, f"an AF_INET address has 4 bytes, not {len(ip)}")
        return SockAddr(ip, port)
    raise SocketError(errno.EAFNOSUPPORT, f"address family {family} is not supported")


class Waiters:
    """Futures of the calls blocked on one socket."""

    __slots__ = ("_futures",)

    def __init__(self) -> None:
        self._futures: list[asyncio.Future] = []

    def add(self, future: asyncio.Future) -> None:
        self._futures.append(future)

    def discard(self, future: asyncio.Future) -> None:
        try:
            self._futures.remove(future)
        except ValueError:
            pass

    def wake(self) -> None:
        """Resolve every waiting future; each waiter then re-checks its condition."""
        futures, self._futures = self._futures, []
        for future in futures:
            if not future.done():
                future.set_result(None)


def deadline_for(timeout_ms: int) -> float | None:
    """Return the loop time at which a call with ``timeout_ms`` gives up (None: never)."""
    if timeout_ms < 0:
        return None
    return asyncio.get_running_loop().time() + timeout_ms / 1000.0


async def wait_any(sockets: Iterable["Socket"], deadline: float | None) -> bool:
    """Wait until one of ``sockets`` changes or ``deadline`` passes; return False on timeout."""
    loop = asyncio.get_running_loop()
    if deadline is not None and loop.time() >= deadline:
        return False
    future = loop.create_future()
    sockets = list(sockets)
    for sock in sockets:
        sock.waiters.add(future)
    try:
        if deadline is None:
            await future
            return True
        done, _ = await asyncio.wait([future], timeout=max(0.0, deadline - loop.time()))
        return bool(done)
    finally:
        for sock in sockets:
            sock.waiters.discard(future)


def pack_int(value: int) -> bytes:
    return struct.pack("=i", value)


def unpack_int(value: bytes) -> int:
    """Read an int option value; setsockopt(2) rejects one shorter than an int with EINVAL."""
    if len(value) < 4:
        raise SocketError(errno.EINVAL, f"option value has {len(value)} bytes, an int needs 4")
    return struct.unpack_from("=i", value)[0]


class Socket:
    """State common to every socket kind."""

    def __init__(self, fd: int, family: int, type_: int, protocol: int, session: str):
        self.fd = fd
        self.family = family
        self.type = type_
        self.protocol = protocol
        self.session = session
        self.waiters = Waiters()
        self.local: SockAddr | None = None
        self.remote: SockAddr | None = None
        self.reuseaddr = False
        self.broadcast = False
        self.pending_error = 0
        self.ttl = 64
        self.tos = 0
        self.closed = False

    def take_error(self) -> int:
        """Return and clear the pending error, as SO_ERROR does."""
        code, self.pending_error = self.pending_error, 0
        return code

    def wake(self) -> None:
        self.waiters.wake()

    def state_name(self) -> str:
        return "UNCONN"

    def queues(self) -> tuple[int, int]:
        """Return (receive queue, send queue) byte counts for ss."""
        return 0, 0

    def poll(self) -> int:
        raise NotImplementedError

    # Options common to every socket; subclasses extend both methods.

    def set_option(self, level: int, name: int, value: bytes) -> None:
        if level == SOL_SOCKET:
            if name == SO_REUSEADDR:
                self.reuseaddr = bool(unpack_int(value))
                return
            if name == SO_BROADCAST:
                self.broadcast = bool(unpack_int(value))
                return
            if name in (SO_TYPE, SO_ERROR, SO_PROTOCOL, SO_DOMAIN, SO_ACCEPTCONN):
                raise SocketError(errno.ENOPROTOOPT, f"SOL_SOCKET option {name} is read-only")
        if level == IPPROTO_IP:
            if name == IP_TTL:
                ttl = unpack_int(value)
                if ttl == -1:
                    ttl = 64
                if not 1 <= ttl <= 255:
                    raise SocketError(errno.EINVAL, f"IP_TTL {ttl} is outside 1..255")
                self.ttl = ttl
                return
            if name == IP_TOS:
                self.tos = unpack_int(value) & 0xFF
                return
        raise SocketError(errno.ENOPROTOOPT, f"option level {level} name {name} is not supported")

    def get_option(self, level: int, name: int) -> bytes:
        if level == SOL_SOCKET:
            values = {SO_TYPE: self.type, SO_PROTOCOL: self.protocol, SO_DOMAIN: self.family,
                      SO_REUSEADDR: int(self.reuseaddr), SO_BROADCAST: int(self.broadcast)}
            if name == SO_ERROR:
                return pack_int(self.take_error())
            if name in values:
                return pack_int(values[name])
        if level == IPPROTO_IP:
            if name == IP_TTL:
                return pack_int(self.ttl)
            if name == IP_TOS:
                return pack_int(self.tos)
        raise SocketError(errno.ENOPROTOOPT, f"option level {level} name {name} is not supported")


class PortSpace:
    """Port numbers bound by the sockets of one protocol."""

    def __init__(self, rng: random.Random):
        self._rng = rng
        self._bound: dict[int, list[Socket]] = {}

    def users(self, port: int) -> list[Socket]:
        return self._bound.get(port, [])

    def add(self, port: int, sock: Socket) -> None:
        self._bound.setdefault(port, []).append(sock)

    def remove(self, port: int, sock: Socket) -> None:
        users = self._bound.get(port)
        if users and sock in users:
            users.remove(sock)
            if not users:
                del self._bound[port]

    def ephemeral(self, in_use) -> int:
        """Return a free port from the ephemeral range; ``in_use(port)`` checks one.

        Raises SocketError(EADDRNOTAVAIL) when the range is exhausted, as
        Linux's connect does.
        """
        span = EPHEMERAL_HIGH - EPHEMERAL_LOW + 1
        start = self._rng.randrange(span)
        for offset in range(span):
            port = EPHEMERAL_LOW + (start + offset) % span
            if not in_use(port):
                return port
        raise SocketError(errno.EADDRNOTAVAIL, "no free ephemeral port")


def addresses_overlap(a: bytes, b: bytes) -> bool:
    return a == b or a == ANY4 or b == ANY4


def clamp_buffer(value: int, minimum: int, maximum: int) -> int:
    """Apply setsockopt's SO_RCVBUF/SO_SNDBUF rule: double, then clamp."""
    value = max(0, min(value, maximum))
    return max(value * 2, minimum)
