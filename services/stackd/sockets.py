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
IPPROTO_IPV6 = 41
IPPROTO_ICMPV6 = 58
IP_TOS = 1
IP_TTL = 2
IP_MTU_DISCOVER = 10
IP_MTU = 14
IPV6_UNICAST_HOPS = 16
IPV6_MTU_DISCOVER = 23
IPV6_MTU = 24
IPV6_V6ONLY = 26
# IP_PMTUDISC_DONT, WANT, DO, PROBE, INTERFACE and OMIT: the values Linux
# accepts for IP_MTU_DISCOVER and IPV6_MTU_DISCOVER.
PMTUDISC_DONT = 0
PMTUDISC_WANT = 1
PMTUDISC_DO = 2
PMTUDISC_PROBE = 3
PMTUDISC_OMIT = 5
TCP_NODELAY = 1
TCP_MAXSEG = 2
TCP_KEEPIDLE = 4
TCP_KEEPINTVL = 5
TCP_KEEPCNT = 6
TCP_CORK = 3
TCP_LINGER2 = 8
TCP_INFO = 11
TCP_CONGESTION = 13
TCP_USER_TIMEOUT = 18
SO_OOBINLINE = 10
TCP_CA_NAME_MAX = 16    # bytes of a congestion control name, NUL included

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
ANY6 = bytes(16)


class SocketError(Exception):
    """A socket call failed with ``errno``."""

    def __init__(self, code: int, detail: str = ""):
        super().__init__(f"{errno.errorcode.get(code, code)}: {detail}" if detail else errno.errorcode.get(code, str(code)))
        self.errno = code


@dataclasses.dataclass(frozen=True, slots=True)
class SockAddr:
    """A socket address; ``ip`` is 4 bytes for IPv4 and 16 for IPv6, all zero for the wildcard.

    An AF_INET6 socket talking to an IPv4 peer stores the 4-byte address
    here; the gRPC service shows it as a v4-mapped address. ``scope_id`` is
    the interface index of a link-local IPv6 address, else 0.
    """

    ip: bytes
    port: int
    scope_id: int = 0


def check_address(family: int, ip: bytes, port: int, scope_id: int = 0, v6only: bool = False,
                  bind: bool = False) -> SockAddr:
    """Validate an address for ``family`` as bind/connect/sendto do (EINVAL, EAFNOSUPPORT).

    For AF_INET6, a v4-mapped address becomes its 4-byte IPv4 address,
    unless ``v6only`` forbids IPv4 on the socket: then bind fails with
    EINVAL and connect or sendto with ENETUNREACH, as in Linux.
    """
    if port < 0 or port > 0xFFFF:
        raise SocketError(errno.EINVAL, f"port {port} is outside 0..65535")
    if family == AF_INET:
        if ip == b"":
            ip = ANY4
        if len(ip) != 4:
            raise SocketError(errno.EINVAL, f"an AF_INET address has 4 bytes, not {len(ip)}")
        return SockAddr(ip, port)
    if family == AF_INET6:
        if ip == b"":
            ip = ANY6
        if len(ip) != 16:
            raise SocketError(errno.EINVAL, f"an AF_INET6 address has 16 bytes, not {len(ip)}")
        if ip[:12] == b"\x00" * 10 + b"\xff\xff":
            if v6only:
                raise SocketError(errno.EINVAL if bind else errno.ENETUNREACH,
                                  "a v4-mapped address on an IPV6_V6ONLY socket")
            return SockAddr(ip[12:], port)
        link_local = ip[0] == 0xFE and ip[1] & 0xC0 == 0x80
        return SockAddr(ip, port, scope_id if link_local else 0)
    raise SocketError(errno.EAFNOSUPPORT, f"address family {family} is not supported")


def is_wildcard(ip: bytes) -> bool:
    """Tell whether ``ip`` is 0.0.0.0 or ::."""
    return ip == ANY4 or ip == ANY6


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
        # Linux's defaults: dual-stack (IPV6_V6ONLY off), hop limit 64, and
        # IP_MTU_DISCOVER and IPV6_MTU_DISCOVER at WANT.
        self.v6only = False
        self.hop_limit = 64
        self.pmtudisc = PMTUDISC_WANT

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
            if name == IP_MTU_DISCOVER:
                self.pmtudisc = _check_pmtudisc(unpack_int(value), "IP_MTU_DISCOVER")
                return
        if level == IPPROTO_IPV6 and self.family == AF_INET6:
            if name == IPV6_V6ONLY:
                if self.local is not None:
                    raise SocketError(errno.EINVAL, "IPV6_V6ONLY cannot change after bind or connect")
                self.v6only = bool(unpack_int(value))
                return
            if name == IPV6_UNICAST_HOPS:
                hops = unpack_int(value)
                if not -1 <= hops <= 255:
                    raise SocketError(errno.EINVAL, f"IPV6_UNICAST_HOPS {hops} is outside -1..255")
                self.hop_limit = 64 if hops == -1 else hops
                return
            if name == IPV6_MTU_DISCOVER:
                self.pmtudisc = _check_pmtudisc(unpack_int(value), "IPV6_MTU_DISCOVER")
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
            if name == IP_MTU_DISCOVER:
                return pack_int(self.pmtudisc)
        if level == IPPROTO_IPV6 and self.family == AF_INET6:
            if name == IPV6_V6ONLY:
                return pack_int(int(self.v6only))
            if name == IPV6_UNICAST_HOPS:
                return pack_int(self.hop_limit)
            if name == IPV6_MTU_DISCOVER:
                return pack_int(self.pmtudisc)
        raise SocketError(errno.ENOPROTOOPT, f"option level {level} name {name} is not supported")

    def hops_for(self, dst: bytes) -> int:
        """Return the TTL or hop limit for a datagram to ``dst`` (IP_TTL or IPV6_UNICAST_HOPS)."""
        return self.hop_limit if len(dst) == 16 else self.ttl

    def accepts_family(self, ip: bytes) -> bool:
        """Tell whether this socket may talk to ``ip``: IPv4 sockets only to IPv4, IPv6
        sockets to both unless IPV6_V6ONLY is set."""
        if self.family == AF_INET:
            return len(ip) == 4
        return len(ip) == 16 or not self.v6only


def _check_pmtudisc(value: int, name: str) -> int:
    if not PMTUDISC_DONT <= value <= PMTUDISC_OMIT:
        raise SocketError(errno.EINVAL, f"{name} {value} is outside 0..5 (IP_PMTUDISC_DONT..IP_PMTUDISC_OMIT)")
    return value


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


def addresses_overlap(a: bytes, b: bytes, a_v6only: bool = False, b_v6only: bool = False) -> bool:
    """Tell whether two bound addresses conflict on one port.

    0.0.0.0 covers every IPv4 address. :: covers every IPv6 address, and
    every IPv4 address too unless its socket has IPV6_V6ONLY set.
    """
    if a == b:
        return True
    if a == ANY6:
        return len(b) == 16 or not a_v6only
    if b == ANY6:
        return len(a) == 16 or not b_v6only
    return len(a) == len(b) == 4 and (a == ANY4 or b == ANY4)


def clamp_buffer(value: int, minimum: int, maximum: int) -> int:
    """Apply setsockopt's SO_RCVBUF/SO_SNDBUF rule: double, then clamp.

    Linux reads the value as unsigned, so a negative one is a huge size.
    """
    value &= 0xFFFFFFFF
    value = min(value, maximum)
    return max(value * 2, minimum)
