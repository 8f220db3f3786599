"""The stack: network layer, transport layers and the descriptor table.

``Stack`` is the object the gRPC services call. It owns every socket of
the sandbox, keyed by a descriptor number unique within this stackd, and
the sessions that created them, so that a client that goes away leaves no
socket behind.
"""

import asyncio
import errno
import ipaddress
import itertools
import logging
import os
import random

from sandnet_stackd.counters import Counters
from sandnet_stackd.header import ipv4, ipv6
from sandnet_stackd.interface import Address, Interface
from sandnet_stackd.network import IcmpError, Network, NetworkError
from sandnet_stackd.route import Route
from sandnet_stackd.socket_dgram import DatagramLayer, DatagramSocket
from sandnet_stackd.socket_tcp import TcpLayer, TcpSocket
from sandnet_stackd.sockets import (
    AF_INET, AF_INET6, IP_MTU, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_IP, IPPROTO_IPV6, IPPROTO_TCP, IPPROTO_UDP,
    IPV6_MTU, POLLNVAL, SOCK_DGRAM, SOCK_STREAM, PortSpace, SockAddr, Socket, SocketError, deadline_for, pack_int,
    wait_any)
from sandnet_stackd.tcp import IsnGenerator, TcpConfig

log = logging.getLogger("sandnet.stackd")

NEIGHBOR_TICK_SECONDS = 0.1


class Stack:
    """One sandbox's network stack on one asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, seed: int | None = None):
        self.loop = loop
        self.counters = Counters()
        self.network = Network(loop.time, self.counters, loop.call_soon)
        rng = random.Random(seed if seed is not None else int.from_bytes(os.urandom(8), "big"))
        self._tcp_ports = PortSpace(rng)
        self._udp_ports = PortSpace(rng)
        self._ping_ids = PortSpace(rng)
        self._ping6_ids = PortSpace(rng)
        self.tcp = TcpLayer(self.network, loop, IsnGenerator(os.urandom(16), loop.time), self._tcp_ports)
        self.udp = DatagramLayer(self.network, self._udp_ports, ipv4.PROTO_UDP)
        self.ping = DatagramLayer(self.network, self._ping_ids, ipv4.PROTO_ICMP)
        self.ping6 = DatagramLayer(self.network, self._ping6_ids, IPPROTO_ICMPV6)
        self.network.register(ipv4.PROTO_UDP, self.udp.receive_udp)
        self.network.echo_reply_handler = self.ping.receive_echo_reply
        self.network.ipv6.echo_reply_handler = self.ping6.receive_echo_reply6
        self.network.icmp_error_handler = self._icmp_error
        self._sockets: dict[int, Socket] = {}
        self._next_fd = itertools.count(3)
        self._sessions: dict[str, set[int]] = {}
        self.stopping = asyncio.Event()
        self._tick = loop.call_later(NEIGHBOR_TICK_SECONDS, self._on_tick)

    def stop(self) -> None:
        """Close every socket and end every session, so that blocked calls
        return their errno before the server stops."""
        self.stopping.set()
        for fd in list(self._sockets):
            self.close_socket(fd)

    def close(self) -> None:
        """Stop timers and abort every socket."""
        self._tick.cancel()
        for fd in list(self._sockets):
            self.close_socket(fd)

    def _on_tick(self) -> None:
        try:
            self.network.on_timer()
        finally:
            self._tick = self.loop.call_later(NEIGHBOR_TICK_SECONDS, self._on_tick)

    # Link configuration.

    def attach(self, iface: Interface, routes: list[Route]) -> None:
        """Attach the Ethernet interface that linkd serves."""
        self.network.add_interface(iface, routes)
        log.info("attached %s mac %s mtu %d addresses %s", iface.name, iface.mac.hex(":"), iface.mtu,
                 ", ".join(f"{_ip(a.ip)}/{a.prefix_len}" for a in iface.addresses) or "none")

    def detach(self, name: str) -> None:
        self.network.remove_interface(name)

    # Sessions and descriptors.

    def open_session(self) -> str:
        session = os.urandom(8).hex()
        self._sessions[session] = set()
        return session

    def close_session(self, session: str) -> None:
        fds = self._sessions.pop(session, set())
        for fd in list(fds):
            self.close_socket(fd)
        if fds:
            log.info("session %s ended; closed %d sockets", session, len(fds))

    def _register(self, sock: Socket) -> Socket:
        self._sockets[sock.fd] = sock
        if sock.session in self._sessions:
            self._sessions[sock.session].add(sock.fd)
        return sock

    def lookup(self, fd: int, session: str = "") -> Socket:
        """Return the socket for ``fd``; EBADF when unknown or owned by another session."""
        sock = self._sockets.get(fd)
        if sock is None or (session and sock.session and sock.session != session):
            raise SocketError(errno.EBADF, f"descriptor {fd} is not open")
        return sock

    def sockets(self) -> list[Socket]:
        return list(self._sockets.values())

    # Socket calls.

    def socket(self, family: int, type_: int, protocol: int, session: str) -> int:
        if family not in (AF_INET, AF_INET6):
            raise SocketError(errno.EAFNOSUPPORT, f"address family {family} is not supported")
        fd = next(self._next_fd)
        if type_ == SOCK_STREAM:
            if protocol not in (0, IPPROTO_TCP):
                raise SocketError(errno.EPROTONOSUPPORT, f"protocol {protocol} is not a stream protocol")
            self._register(TcpSocket(fd, family, type_, IPPROTO_TCP, session, TcpConfig()))
        elif type_ == SOCK_DGRAM:
            ping = IPPROTO_ICMPV6 if family == AF_INET6 else IPPROTO_ICMP
            if protocol not in (0, IPPROTO_UDP, ping):
                raise SocketError(errno.EPROTONOSUPPORT, f"protocol {protocol} is not a datagram protocol")
            self._register(DatagramSocket(fd, family, type_, protocol or IPPROTO_UDP, session))
        else:
            raise SocketError(errno.ESOCKTNOSUPPORT if type_ in (3, 4, 5, 10) else errno.EINVAL,
                              f"socket type {type_} is not supported")
        return fd

    def _layer(self, sock: Socket):
        if isinstance(sock, TcpSocket):
            return self.tcp
        if sock.protocol == IPPROTO_ICMPV6:
            return self.ping6
        return self.ping if sock.protocol == IPPROTO_ICMP else self.udp

    def check_scope(self, addr: SockAddr) -> None:
        """Check the scope id of a link-local IPv6 address as Linux does: it is
        required (EINVAL) and must name an interface (ENODEV)."""
        if len(addr.ip) != 16 or not ipv6.is_link_local(addr.ip):
            return
        if addr.scope_id == 0:
            raise SocketError(errno.EINVAL, "a link-local address needs a scope id (an interface index)")
        if not any(iface.index == addr.scope_id for iface in self.network.interfaces.values()):
            raise SocketError(errno.ENODEV, f"no interface has index {addr.scope_id}")

    def bind(self, sock: Socket, addr: SockAddr) -> None:
        self.check_scope(addr)
        self._layer(sock).bind(sock, addr)

    def listen(self, sock: Socket, backlog: int) -> None:
        if not isinstance(sock, TcpSocket):
            raise SocketError(errno.EOPNOTSUPP, "listen needs a stream socket")
        self.tcp.listen(sock, backlog)

    async def accept(self, sock: Socket, timeout_ms: int) -> TcpSocket:
        if not isinstance(sock, TcpSocket):
            raise SocketError(errno.EOPNOTSUPP, "accept needs a stream socket")

        def make_socket(config: TcpConfig) -> TcpSocket:
            child = TcpSocket(next(self._next_fd), sock.family, sock.type, sock.protocol, sock.session, config)
            return self._register(child)

        return await self.tcp.accept(sock, deadline_for(timeout_ms), make_socket)

    async def connect(self, sock: Socket, addr: SockAddr, timeout_ms: int) -> None:
        self.check_scope(addr)
        if isinstance(sock, TcpSocket):
            await self.tcp.connect(sock, addr, deadline_for(timeout_ms), nonblocking=timeout_ms == 0)
        else:
            self._layer(sock).connect(sock, addr)

    async def send(self, sock: Socket, data: bytes, addr: SockAddr | None, timeout_ms: int) -> int:
        if isinstance(sock, TcpSocket):
            return await self.tcp.send(sock, data, deadline_for(timeout_ms))
        if addr is not None:
            self.check_scope(addr)
        return self._layer(sock).send(sock, data, addr)

    async def recv(self, sock: Socket, max_bytes: int, flags: int, timeout_ms: int) -> tuple[bytes, SockAddr | None, int]:
        if isinstance(sock, TcpSocket):
            data = await self.tcp.recv(sock, max_bytes, flags, deadline_for(timeout_ms))
            return data, None, 0
        return await self._layer(sock).recv(sock, max_bytes, flags, deadline_for(timeout_ms))

    def get_option(self, sock: Socket, level: int, name: int) -> bytes:
        """Read a socket option; IP_MTU and IPV6_MTU return the path MTU to a connected peer, as on Linux."""
        if (level, name) in ((IPPROTO_IP, IP_MTU), (IPPROTO_IPV6, IPV6_MTU)):
            if level == IPPROTO_IPV6 and sock.family != AF_INET6:
                raise SocketError(errno.ENOPROTOOPT, "IPV6_MTU needs an AF_INET6 socket")
            if sock.remote is None:
                raise SocketError(errno.ENOTCONN, "IP_MTU and IPV6_MTU need a connected socket")
            try:
                return pack_int(self.network.path_mtu(sock.remote.ip))
            except NetworkError as error:
                raise SocketError(error.errno, str(error)) from None
        return sock.get_option(level, name)

    def shutdown(self, sock: Socket, how: int) -> None:
        if how not in (0, 1, 2):
            raise SocketError(errno.EINVAL, f"shutdown how {how} is not SHUT_RD, SHUT_WR or SHUT_RDWR")
        if isinstance(sock, TcpSocket):
            self.tcp.shutdown(sock, how)
            return
        if sock.remote is None:
            raise SocketError(errno.ENOTCONN, "socket is not connected")
        if how in (0, 2):
            sock.read_shut = True
        sock.wake()

    def close_socket(self, fd: int, session: str = "") -> None:
        sock = self.lookup(fd, session)
        del self._sockets[fd]
        if sock.session in self._sessions:
            self._sessions[sock.session].discard(fd)
        self._layer(sock).close(sock)

    async def poll(self, requests: list[tuple[int, int]], timeout_ms: int, session: str) -> list[tuple[int, int]]:
        """Wait until one descriptor has a requested event, as poll(2) does."""
        deadline = deadline_for(timeout_ms)
        always = 0x8 | 0x10  # POLLERR | POLLHUP are reported unasked
        while True:
            ready, watched = [], []
            for fd, events in requests:
                try:
                    sock = self.lookup(fd, session)
                except SocketError:
                    ready.append((fd, POLLNVAL))
                    continue
                revents = sock.poll() & (events | always)
                if revents:
                    ready.append((fd, revents))
                watched.append(sock)
            if ready or not watched:
                return ready
            if not await wait_any(watched, deadline):
                return []

    # ICMP errors for sockets.

    def _icmp_error(self, error: IcmpError) -> None:
        """Route an ICMP or ICMPv6 error to the socket whose datagram it quotes.

        UDP sockets get the hard errors only, as Linux reports the others
        only with IP_RECVERR. TCP applies a new path MTU to the connection,
        and any other error aborts a connection still in SYN_SENT, as
        Linux's tcp_v4_err and tcp_v6_err do.
        """
        if error.protocol == ipv4.PROTO_UDP:
            if error.hard and not error.mtu:
                self.udp.icmp_error(error.local, error.local_port, error.remote, error.remote_port, error.errno)
        elif error.protocol == ipv4.PROTO_TCP:
            # NOTE: unlike Linux, the quoted sequence number is not checked
            # against the send window, so a forged error with the right ports counts.
            if error.mtu:
                self.tcp.path_mtu_changed(error.local, error.local_port, error.remote, error.remote_port, error.mtu)
            else:
                self.tcp.icmp_error(error.local, error.local_port, error.remote, error.remote_port, error.errno)

    # Views for Netinfo.

    def interfaces(self) -> list[Interface]:
        return sorted(self.network.interfaces.values(), key=lambda iface: iface.index)

    def routes(self) -> list[Route]:
        return self.network.routes.routes()

    def link_scope_id(self) -> int:
        """Return the index of the Ethernet interface, the scope of link-local peers; 0 without one."""
        return next((iface.index for iface in self.network.interfaces.values() if not iface.loopback), 0)


def _ip(ip: bytes) -> str:
    return str(ipaddress.ip_address(ip))


__all__ = ["Stack", "SocketError", "SockAddr", "Address", "Interface", "Route", "wait_any"]
