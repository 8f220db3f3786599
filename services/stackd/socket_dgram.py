"""Datagram sockets: UDP (RFC 768) and ICMP echo sockets, the unprivileged
"ping" sockets of Linux (SOCK_DGRAM with IPPROTO_ICMP or IPPROTO_ICMPV6),
for IPv4 and IPv6."""

import collections
import errno
import logging

from sandnet_stackd.header import icmp, icmpv6, ipv4, ipv6, udp
from sandnet_stackd.header.errors import MalformedError, Reason
from sandnet_stackd.interface import Interface
from sandnet_stackd.network import Network, NetworkError
from sandnet_stackd.sockets import (
    AF_INET6, ANY4, ANY6, IPPROTO_ICMPV6, MSG_PEEK, MSG_TRUNC, PMTUDISC_DO, PMTUDISC_PROBE, POLLERR, POLLIN, POLLOUT,
    RMEM_MAX, SO_RCVBUF, SO_SNDBUF, SOCK_MIN_RCVBUF, SOCK_MIN_SNDBUF, SOL_SOCKET, WMEM_MAX, PortSpace,
    SockAddr, Socket, SocketError, addresses_overlap, clamp_buffer, is_wildcard, pack_int, unpack_int,
    wait_any)

log = logging.getLogger("sandnet.stackd.udp")

# Linux's default net.core.rmem_default and wmem_default.
DEFAULT_RCVBUF = 212992
DEFAULT_SNDBUF = 212992
# Bookkeeping charged per queued datagram, like skb->truesize overhead.
DATAGRAM_OVERHEAD = 768
MAX_UDP_PAYLOAD = 65507


class DatagramSocket(Socket):
    """A UDP or ICMP echo socket with a bounded receive queue."""

    def __init__(self, fd: int, family: int, type_: int, protocol: int, session: str):
        super().__init__(fd, family, type_, protocol, session)
        self.rcvbuf = DEFAULT_RCVBUF
        self.sndbuf = DEFAULT_SNDBUF
        self.queue: collections.deque[tuple[bytes, SockAddr]] = collections.deque()
        self.queued_bytes = 0
        self.read_shut = False

    def enqueue(self, data: bytes, sender: SockAddr) -> bool:
        """Queue a received datagram; return False when the receive buffer is full."""
        charge = len(data) + DATAGRAM_OVERHEAD
        if self.queued_bytes + charge > self.rcvbuf:
            return False
        self.queue.append((data, sender))
        self.queued_bytes += charge
        self.wake()
        return True

    def state_name(self) -> str:
        return "ESTAB" if self.remote is not None else "UNCONN"

    def queues(self) -> tuple[int, int]:
        return sum(len(d) for d, _ in self.queue), 0

    def poll(self) -> int:
        events = POLLOUT
        if self.queue or self.read_shut:
            events |= POLLIN
        if self.pending_error:
            events |= POLLERR
        return events

    def set_option(self, level: int, name: int, value: bytes) -> None:
        if level == SOL_SOCKET and name == SO_RCVBUF:
            self.rcvbuf = clamp_buffer(unpack_int(value), SOCK_MIN_RCVBUF, RMEM_MAX)
            return
        if level == SOL_SOCKET and name == SO_SNDBUF:
            self.sndbuf = clamp_buffer(unpack_int(value), SOCK_MIN_SNDBUF, WMEM_MAX)
            return
        super().set_option(level, name, value)

    def get_option(self, level: int, name: int) -> bytes:
        if level == SOL_SOCKET and name == SO_RCVBUF:
            return pack_int(self.rcvbuf)
        if level == SOL_SOCKET and name == SO_SNDBUF:
            return pack_int(self.sndbuf)
        return super().get_option(level, name)


class DatagramLayer:
    """UDP or ICMP echo sockets of one stack; ``protocol`` is IPPROTO_UDP,
    IPPROTO_ICMP or IPPROTO_ICMPV6."""

    def __init__(self, network: Network, ports: PortSpace, protocol: int):
        self.network = network
        self.ports = ports
        self.protocol = protocol

    def _port_in_use(self, ip: bytes, port: int, sock: DatagramSocket | None) -> bool:
        for other in self.ports.users(port):
            if other is sock or other.local is None or not addresses_overlap(
                    other.local.ip, ip, other.v6only, sock is not None and sock.v6only):
                continue
            if sock is not None and sock.reuseaddr and other.reuseaddr:
                continue
            return True
        return False

    def bind(self, sock: DatagramSocket, addr: SockAddr) -> None:
        if sock.local is not None:
            raise SocketError(errno.EINVAL, "socket is already bound")
        multicast = ipv4.is_multicast(addr.ip) if len(addr.ip) == 4 else ipv6.is_multicast(addr.ip)
        if not is_wildcard(addr.ip) and not self.network.is_local(addr.ip) and not multicast:
            raise SocketError(errno.EADDRNOTAVAIL, "address is not local")
        port = addr.port
        if port == 0:
            port = self.ports.ephemeral(lambda p: self._port_in_use(addr.ip, p, sock))
        elif self._port_in_use(addr.ip, port, sock):
            raise SocketError(errno.EADDRINUSE, f"port {port} is in use")
        sock.local = SockAddr(addr.ip, port)
        self.ports.add(port, sock)

    def _autobind(self, sock: DatagramSocket) -> None:
        if sock.local is None:
            self.bind(sock, SockAddr(ANY6 if sock.family == AF_INET6 else ANY4, 0))

    def connect(self, sock: DatagramSocket, addr: SockAddr) -> None:
        """Set the default destination and filter received datagrams to it."""
        addr = _loopback_for_wildcard(addr)
        try:
            self.network.route(addr.ip)
        except NetworkError as error:
            raise SocketError(error.errno, str(error)) from None
        self._autobind(sock)
        if is_wildcard(sock.local.ip):
            # As ip4_datagram_connect() does: the source address the route
            # picks becomes the socket's own, so getsockname() shows it.
            try:
                source = self.network.source_for(addr.ip)
            except NetworkError as error:
                raise SocketError(error.errno, str(error)) from None
            sock.local = SockAddr(source, sock.local.port)
        sock.remote = addr

    def send(self, sock: DatagramSocket, data: bytes, addr: SockAddr | None) -> int:
        if addr is None:
            if sock.remote is None:
                raise SocketError(errno.EDESTADDRREQ, "socket is not connected and no address was given")
            addr = sock.remote
        if sock.pending_error:
            raise SocketError(sock.take_error(), "pending ICMP error")
        addr = _loopback_for_wildcard(addr)
        # The largest payload whose datagram fits the 16-bit length field: the
        # IPv4 total length counts its 20-byte header, the IPv6 payload length does not.
        limit = MAX_UDP_PAYLOAD if len(addr.ip) == 4 else MAX_UDP_PAYLOAD + 20
        if self.protocol != ipv4.PROTO_UDP:
            limit += 8
        if len(data) > limit:
            raise SocketError(errno.EMSGSIZE, f"datagram of {len(data)} bytes exceeds {limit}")
        broadcast = addr.ip == b"\xff\xff\xff\xff" or any(
            iface.is_broadcast(addr.ip) for iface in self.network.interfaces.values())
        if broadcast and not sock.broadcast:
            raise SocketError(errno.EACCES, "sending to a broadcast address needs SO_BROADCAST")
        self._autobind(sock)
        try:
            source = sock.local.ip if not is_wildcard(sock.local.ip) else self.network.source_for(addr.ip)
        except NetworkError as error:
            raise SocketError(error.errno, str(error)) from None

        if self.protocol == ipv4.PROTO_UDP:
            if addr.port == 0:
                raise SocketError(errno.EINVAL, "destination port 0")
            message = udp.build(source, addr.ip, sock.local.port, addr.port, data)
            self.network.counters.udp.OutDatagrams += 1
        elif self.protocol == IPPROTO_ICMPV6:
            message = self._echo_request6(sock, source, addr.ip, data)
            self.network.counters.icmp6.OutMsgs += 1
            self.network.counters.icmp6.OutEchos += 1
        else:
            message = self._echo_request(sock, data)
            self.network.counters.icmp.OutMsgs += 1
            self.network.counters.icmp.OutEchos += 1
        try:
            # Datagrams leave with DF clear so that large ones are fragmented,
            # unless IP_MTU_DISCOVER or IPV6_MTU_DISCOVER is set to DO or PROBE.
            self.network.output(source, addr.ip, self.protocol, message, ttl=sock.hops_for(addr.ip), tos=sock.tos,
                                dont_fragment=sock.pmtudisc in (PMTUDISC_DO, PMTUDISC_PROBE))
        except NetworkError as error:
            raise SocketError(error.errno, str(error)) from None
        return len(data)

    def _echo_request(self, sock: DatagramSocket, data: bytes) -> bytes:
        """Check and rewrite an echo request as Linux's ping sockets do: the
        identifier becomes the socket's port and the checksum is recomputed."""
        if len(data) < 8:
            raise SocketError(errno.EINVAL, f"an ICMP message needs 8 bytes, got {len(data)}")
        if data[0] != icmp.TYPE_ECHO_REQUEST or data[1] != 0:
            raise SocketError(errno.EINVAL, f"ping sockets send only echo requests, not type {data[0]}")
        seq = int.from_bytes(data[6:8], "big")
        return icmp.build_echo(icmp.TYPE_ECHO_REQUEST, sock.local.port, seq, data[8:])

    def _echo_request6(self, sock: DatagramSocket, source: bytes, dst: bytes, data: bytes) -> bytes:
        """Check and rewrite an ICMPv6 echo request as Linux's ping sockets do."""
        if len(dst) != 16:
            raise SocketError(errno.EINVAL, "an ICMPv6 ping socket sends only to IPv6 addresses")
        if len(data) < 8:
            raise SocketError(errno.EINVAL, f"an ICMPv6 message needs 8 bytes, got {len(data)}")
        if data[0] != icmpv6.TYPE_ECHO_REQUEST or data[1] != 0:
            raise SocketError(errno.EINVAL, f"ping sockets send only echo requests, not type {data[0]}")
        seq = int.from_bytes(data[6:8], "big")
        return icmpv6.build_echo(source, dst, icmpv6.TYPE_ECHO_REQUEST, sock.local.port, seq, data[8:])

    async def recv(self, sock: DatagramSocket, max_bytes: int, flags: int, deadline: float | None) -> tuple[bytes, SockAddr, int]:
        while not sock.queue:
            if sock.pending_error:
                raise SocketError(sock.take_error(), "pending ICMP error")
            if sock.read_shut or sock.closed:
                return b"", SockAddr(ANY4, 0), 0
            if not await wait_any([sock], deadline):
                raise SocketError(errno.EAGAIN, "no datagram to receive")
        data, sender = sock.queue[0]
        if not flags & MSG_PEEK:
            sock.queue.popleft()
            sock.queued_bytes -= len(data) + DATAGRAM_OVERHEAD
        out_flags = MSG_TRUNC if len(data) > max_bytes else 0
        # NOTE: with MSG_TRUNC in flags Linux returns the datagram's full length;
        # RecvReply has no field for it, so the caller sees only the MSG_TRUNC flag.
        return data[:max_bytes], sender, out_flags

    def close(self, sock: DatagramSocket) -> None:
        if sock.local is not None:
            self.ports.remove(sock.local.port, sock)
        sock.closed = True
        sock.wake()

    # Input.

    def _find(self, dst: bytes, port: int, src: bytes, src_port: int | None) -> DatagramSocket | None:
        """Return the best socket for a datagram: connected and specific beats wildcard."""
        best, best_score = None, -1
        for sock in self.ports.users(port):
            if not sock.accepts_family(dst):
                continue
            if not is_wildcard(sock.local.ip) and sock.local.ip != dst:
                continue
            score = 0
            if not is_wildcard(sock.local.ip):
                score += 2
            if sock.remote is not None:
                if sock.remote.ip != src or (src_port is not None and sock.remote.port != src_port):
                    continue
                score += 4
            if score > best_score:
                best, best_score = sock, score
        return best

    def receive_udp(self, iface: Interface, header, payload: memoryview, checksum_valid: bool) -> None:
        """Deliver one UDP datagram; ``header`` is an ipv4.Ipv4Repr or an ipv6.Ipv6Packet."""
        counters = self.network.counters.udp
        try:
            datagram, data = udp.parse(payload, header.src, header.dst, verify_checksum=not checksum_valid)
        except MalformedError as error:
            counters.InErrors += 1
            if error.reason is Reason.BAD_CHECKSUM:
                counters.InCsumErrors += 1
            return
        sock = self._find(header.dst, datagram.dst_port, header.src, datagram.src_port)
        if sock is None:
            counters.NoPorts += 1
            self.network.send_port_unreachable(header, payload)
            return
        scope_id = iface.index if len(header.src) == 16 and ipv6.is_link_local(header.src) else 0
        if not sock.enqueue(bytes(data), SockAddr(header.src, datagram.src_port, scope_id)):
            counters.RcvbufErrors += 1
            counters.InErrors += 1
            return
        counters.InDatagrams += 1

    def receive_echo_reply(self, iface: Interface, header: ipv4.Ipv4Repr, message: icmp.IcmpRepr) -> None:
        sock = self._find(header.dst, message.echo_id, header.src, None)
        if sock is None:
            return
        raw = icmp.build(message.type, message.code, message.rest, message.payload)
        sock.enqueue(raw, SockAddr(header.src, 0))

    def receive_echo_reply6(self, iface: Interface, header, message: memoryview) -> None:
        """Queue an ICMPv6 echo reply, as received, on the ping socket whose port is its identifier."""
        ident = int.from_bytes(message[4:6], "big")
        sock = self._find(header.dst, ident, header.src, None)
        if sock is None:
            return
        scope_id = iface.index if ipv6.is_link_local(header.src) else 0
        sock.enqueue(bytes(message), SockAddr(header.src, 0, scope_id))

    def icmp_error(self, local: bytes, local_port: int, remote: bytes, remote_port: int, code: int) -> None:
        """Report an ICMP error to the connected socket it concerns (Linux reports
        errors to unconnected UDP sockets only with IP_RECVERR)."""
        for sock in self.ports.users(local_port):
            if sock.remote is not None and sock.remote.ip == remote and sock.remote.port == remote_port:
                sock.pending_error = code
                sock.wake()


def _loopback_for_wildcard(addr: SockAddr) -> SockAddr:
    """Send to the loopback address in place of the wildcard, as Linux does."""
    if addr.ip == ANY4:
        return SockAddr(bytes([127, 0, 0, 1]), addr.port)
    if addr.ip == ANY6:
        return SockAddr(bytes(15) + b"\x01", addr.port)
    return addr
