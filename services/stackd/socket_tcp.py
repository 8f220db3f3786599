"""TCP sockets: demultiplexing, listeners with SYN and accept queues, and the
socket calls on top of the TcpConnection state machine."""

import asyncio
import dataclasses
import errno
import logging

from sandnet_stackd.header import ipv4
from sandnet_stackd.header import tcp as tcp_header
from sandnet_stackd.header.errors import MalformedError
from sandnet_stackd.interface import Interface
from sandnet_stackd.network import Network, NetworkError
from sandnet_stackd.sockets import (
    ANY4, IPPROTO_TCP, MSG_PEEK, MSG_WAITALL, POLLERR, POLLHUP, POLLIN, POLLOUT, POLLRDHUP,
    RMEM_MAX, SO_ACCEPTCONN, SO_KEEPALIVE, SO_RCVBUF, SO_SNDBUF, SOCK_MIN_RCVBUF, SOCK_MIN_SNDBUF,
    SOL_SOCKET, SOMAXCONN, TCP_KEEPCNT, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_MAXSEG, TCP_NODELAY,
    WMEM_MAX, PortSpace, SockAddr, Socket, SocketError, addresses_overlap, clamp_buffer, pack_int,
    unpack_int, wait_any)
from sandnet_stackd.tcp import IsnGenerator, State, TcpConfig, TcpConnection, reset_for_unexpected

log = logging.getLogger("sandnet.stackd.tcp")

Key = tuple[bytes, int, bytes, int]  # (local ip, local port, remote ip, remote port)

# The SYN queue of a listener holds at most this many half-open connections
# beyond its backlog (Linux bounds it by tcp_max_syn_backlog).
MAX_SYN_BACKLOG = 1024


@dataclasses.dataclass(eq=False)
class Endpoint:
    """A TcpConnection with its place in the stack: its timer and owner."""

    key: Key
    conn: TcpConnection
    socket: "TcpSocket | None" = None
    listener: "TcpSocket | None" = None
    timer: asyncio.TimerHandle | None = None
    deadline: float | None = None


class TcpSocket(Socket):
    """A SOCK_STREAM socket: unbound, bound, listening, connecting or connected."""

    def __init__(self, fd: int, family: int, type_: int, protocol: int, session: str, config: TcpConfig):
        super().__init__(fd, family, type_, protocol, session)
        self.config = config
        self.endpoint: Endpoint | None = None
        self.listening = False
        self.backlog = 0
        self.syn_queue: set[Endpoint] = set()
        self.accept_queue: list[Endpoint] = []
        self.connecting = False
        self.read_shut = False
        self.bound_explicitly = False

    @property
    def conn(self) -> TcpConnection | None:
        return self.endpoint.conn if self.endpoint else None

    def state_name(self) -> str:
        if self.listening:
            return "LISTEN"
        if self.endpoint:
            return self.endpoint.conn.state.ss_name
        return "CLOSE"

    def queues(self) -> tuple[int, int]:
        if self.listening:
            return len(self.accept_queue), self.backlog
        if self.endpoint:
            return self.endpoint.conn.readable_bytes, self.endpoint.conn.send_queue_bytes
        return 0, 0

    def poll(self) -> int:
        """Return the poll events that are ready, following tcp_poll() in Linux."""
        if self.listening:
            return POLLIN if self.accept_queue else 0
        conn = self.conn
        if conn is None:
            return POLLOUT | POLLHUP
        events = 0
        if conn.error or self.pending_error:
            events |= POLLERR
        if conn.state is State.CLOSED:
            events |= POLLHUP | POLLIN | POLLRDHUP
            if conn.error or self.pending_error:
                events |= POLLOUT
            return events
        if conn.readable_bytes or conn.fin_received or self.read_shut:
            events |= POLLIN
        if conn.fin_received:
            events |= POLLRDHUP
        if conn.state in (State.SYN_SENT, State.SYN_RECEIVED):
            return events
        if conn.can_send and conn.send_space > 0:
            events |= POLLOUT
        elif not conn.can_send:
            events |= POLLOUT  # a send will fail at once with EPIPE, so it does not block
        return events

    def set_option(self, level: int, name: int, value: bytes) -> None:
        if level == SOL_SOCKET and name in (SO_KEEPALIVE, SO_RCVBUF, SO_SNDBUF):
            number = unpack_int(value)
            if name == SO_KEEPALIVE:
                self._apply("keepalive", bool(number))
            elif name == SO_RCVBUF:
                self._apply("rcvbuf", clamp_buffer(number, SOCK_MIN_RCVBUF, RMEM_MAX))
            else:
                self._apply("sndbuf", clamp_buffer(number, SOCK_MIN_SNDBUF, WMEM_MAX))
            return
        if level == IPPROTO_TCP:
            number = unpack_int(value)
            if name == TCP_NODELAY:
                self._apply("nodelay", bool(number))
            elif name in (TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT):
                limit = 127 if name == TCP_KEEPCNT else 32767
                if not 1 <= number <= limit:
                    raise SocketError(errno.EINVAL, f"TCP keepalive value {number} is outside 1..{limit}")
                field = {TCP_KEEPIDLE: "keepidle", TCP_KEEPINTVL: "keepintvl", TCP_KEEPCNT: "keepcnt"}[name]
                self._apply(field, number)
            elif name == TCP_MAXSEG:
                if not 88 <= number <= 32767 and number != 0:
                    raise SocketError(errno.EINVAL, f"TCP_MAXSEG {number} is outside 88..32767")
            else:
                raise SocketError(errno.ENOPROTOOPT, f"IPPROTO_TCP option {name} is not supported")
            return
        super().set_option(level, name, value)

    def get_option(self, level: int, name: int) -> bytes:
        config = self.config
        if level == SOL_SOCKET:
            if name == SO_KEEPALIVE:
                return pack_int(int(config.keepalive))
            if name == SO_RCVBUF:
                return pack_int(config.rcvbuf)
            if name == SO_SNDBUF:
                return pack_int(config.sndbuf)
            if name == SO_ACCEPTCONN:
                return pack_int(int(self.listening))
            if name == 4 and self.conn is not None and self.conn.error and not self.pending_error:
                self.pending_error = self.conn.error
                self.conn.error = 0
        if level == IPPROTO_TCP:
            if name == TCP_NODELAY:
                return pack_int(int(config.nodelay))
            if name == TCP_KEEPIDLE:
                return pack_int(int(config.keepidle))
            if name == TCP_KEEPINTVL:
                return pack_int(int(config.keepintvl))
            if name == TCP_KEEPCNT:
                return pack_int(config.keepcnt)
            if name == TCP_MAXSEG:
                return pack_int(self.conn.mss if self.conn is not None and hasattr(self.conn, "mss") else 536)
            raise SocketError(errno.ENOPROTOOPT, f"IPPROTO_TCP option {name} is not supported")
        return super().get_option(level, name)

    def _apply(self, field: str, value) -> None:
        setattr(self.config, field, value)
        if self.conn is not None:
            self.conn.set_option(field, value)


class TcpLayer:
    """Every TCP socket and connection of one stack."""

    def __init__(self, network: Network, loop: asyncio.AbstractEventLoop, isn: IsnGenerator, ports: PortSpace):
        self.network = network
        self.loop = loop
        self.counters = network.counters.tcp
        self.isn = isn
        self.ports = ports
        self.endpoints: dict[Key, Endpoint] = {}
        self.listeners: dict[tuple[bytes, int], TcpSocket] = {}
        network.register(ipv4.PROTO_TCP, self.receive)

    # Input.

    def receive(self, iface: Interface, header: ipv4.Ipv4Repr, payload: memoryview, checksum_valid: bool) -> None:
        """Handle one TCP segment addressed to this stack."""
        try:
            seg = tcp_header.parse(payload, header.src, header.dst, verify_checksum=not checksum_valid)
        except MalformedError as error:
            self.counters.InErrs += 1
            log.debug("dropped TCP segment from %s: %s", header.src.hex(), error)
            return
        if header.dst[0] >= 224 or header.dst == b"\xff\xff\xff\xff" or iface.is_broadcast(header.dst):
            self.counters.InErrs += 1
            return

        key = (header.dst, seg.dst_port, header.src, seg.src_port)
        endpoint = self.endpoints.get(key)
        if endpoint is not None:
            endpoint.conn.on_segment(seg)
            self._after(endpoint)
            return

        listener = self.listeners.get((header.dst, seg.dst_port)) or self.listeners.get((ANY4, seg.dst_port))
        if listener is not None:
            self._receive_on_listener(listener, header, seg)
            return

        # RFC 9293 section 3.10.7.1: no connection, so answer with a reset.
        self.counters.InSegs += 1
        self._send_reset(header.dst, header.src, seg)

    def _receive_on_listener(self, listener: TcpSocket, header: ipv4.Ipv4Repr, seg: tcp_header.TcpRepr) -> None:
        """RFC 9293 section 3.10.7.2: ignore RST, reset an ACK, open a connection on SYN."""
        self.counters.InSegs += 1
        if seg.flags & tcp_header.RST:
            return
        if seg.flags & tcp_header.ACK:
            self._send_reset(header.dst, header.src, seg)
            return
        if not seg.flags & tcp_header.SYN:
            return

        if len(listener.accept_queue) + len(listener.syn_queue) > listener.backlog \
                or len(listener.syn_queue) >= MAX_SYN_BACKLOG:
            # The accept queue is full: drop the SYN so that the peer retries, as Linux does.
            self.counters.ListenDrops = getattr(self.counters, "ListenDrops", 0) + 1
            return
        try:
            mss = self.network.path_mtu(header.src) - 40
        except NetworkError:
            return

        key = (header.dst, seg.dst_port, header.src, seg.src_port)
        endpoint = self._new_endpoint(key, mss, _copy_config(listener.config))
        endpoint.listener = listener
        listener.syn_queue.add(endpoint)
        endpoint.conn.accept_syn(seg)
        self._after(endpoint)

    def _send_reset(self, src: bytes, dst: bytes, seg: tcp_header.TcpRepr) -> None:
        reset = reset_for_unexpected(seg)
        if reset is None:
            return
        self.counters.OutRsts += 1
        self.counters.OutSegs += 1
        try:
            self.network.output(src, dst, ipv4.PROTO_TCP, tcp_header.build(reset, src, dst))
        except NetworkError:
            pass

    # Connection plumbing.

    def _new_endpoint(self, key: Key, mss: int, config: TcpConfig) -> Endpoint:
        local_ip, local_port, remote_ip, remote_port = key
        endpoint = Endpoint(key=key, conn=None)  # type: ignore[arg-type]

        def output(seg: tcp_header.TcpRepr) -> None:
            try:
                self.network.output(local_ip, remote_ip, ipv4.PROTO_TCP, tcp_header.build(seg, local_ip, remote_ip))
            except NetworkError as error:
                log.debug("TCP output %s:%d -> %s:%d failed: %s", local_ip.hex(), local_port,
                          remote_ip.hex(), remote_port, error)

        endpoint.conn = TcpConnection(
            local_ip=local_ip, local_port=local_port, remote_ip=remote_ip, remote_port=remote_port,
            iss=self.isn.next(local_ip, local_port, remote_ip, remote_port), mss=mss, config=config,
            counters=self.counters, clock=self.loop.time, output=output,
            notify=lambda: self._notify(endpoint))
        self.endpoints[key] = endpoint
        return endpoint

    def _notify(self, endpoint: Endpoint) -> None:
        if endpoint.socket is not None:
            endpoint.socket.wake()
        listener = endpoint.listener
        if listener is not None and endpoint in listener.syn_queue:
            conn = endpoint.conn
            if conn.established_once:
                listener.syn_queue.discard(endpoint)
                listener.accept_queue.append(endpoint)
                listener.wake()
            elif conn.state is State.CLOSED:
                listener.syn_queue.discard(endpoint)

    def _after(self, endpoint: Endpoint) -> None:
        """Re-arm the endpoint's timer and forget it once it is finished."""
        conn = endpoint.conn
        if conn.is_finished:
            if endpoint.timer is not None:
                endpoint.timer.cancel()
                endpoint.timer = None
            if self.endpoints.get(endpoint.key) is endpoint:
                del self.endpoints[endpoint.key]
            if endpoint.listener is not None:
                endpoint.listener.syn_queue.discard(endpoint)
            return
        deadline = conn.next_deadline()
        if deadline == endpoint.deadline and endpoint.timer is not None:
            return
        if endpoint.timer is not None:
            endpoint.timer.cancel()
        endpoint.deadline = deadline
        endpoint.timer = self.loop.call_at(deadline, self._fire, endpoint) if deadline is not None else None

    def _fire(self, endpoint: Endpoint) -> None:
        endpoint.timer = None
        endpoint.deadline = None
        try:
            endpoint.conn.on_timer()
        except Exception:
            log.exception("TCP timer failed for %s", _describe(endpoint.key))
            endpoint.conn.abort()
        self._after(endpoint)

    def _call(self, endpoint: Endpoint, method, *args):
        """Run one TcpConnection method, then re-arm its timer."""
        try:
            return method(*args)
        finally:
            self._after(endpoint)

    # Binding.

    def _port_in_use(self, ip: bytes, port: int, sock: TcpSocket | None) -> bool:
        for other in self.ports.users(port):
            if other is sock or other.local is None or not addresses_overlap(other.local.ip, ip):
                continue
            if sock is not None and sock.reuseaddr and other.reuseaddr and not other.listening:
                continue
            return True
        for key, endpoint in self.endpoints.items():
            if key[1] == port and addresses_overlap(key[0], ip) and endpoint.socket is None and endpoint.listener is None:
                # An orphaned connection (TIME_WAIT, FIN_WAIT_2...) holds its port unless SO_REUSEADDR.
                if sock is None or not sock.reuseaddr:
                    return True
        return False

    def bind(self, sock: TcpSocket, addr: SockAddr) -> None:
        if sock.local is not None:
            raise SocketError(errno.EINVAL, "socket is already bound")
        if addr.ip != ANY4 and not self.network.is_local(addr.ip):
            raise SocketError(errno.EADDRNOTAVAIL, "address is not local")
        port = addr.port
        if port == 0:
            port = self.ports.ephemeral(lambda p: self._port_in_use(addr.ip, p, sock))
        elif self._port_in_use(addr.ip, port, sock):
            raise SocketError(errno.EADDRINUSE, f"port {port} is in use")
        sock.local = SockAddr(addr.ip, port)
        sock.bound_explicitly = True
        self.ports.add(port, sock)

    def listen(self, sock: TcpSocket, backlog: int) -> None:
        if sock.endpoint is not None:
            raise SocketError(errno.EINVAL, "socket is connected")
        if sock.local is None:
            self.bind(sock, SockAddr(ANY4, 0))
        key = (sock.local.ip, sock.local.port)
        existing = self.listeners.get(key)
        if existing is not None and existing is not sock:
            raise SocketError(errno.EADDRINUSE, f"port {sock.local.port} already has a listener")
        for other in self.ports.users(sock.local.port):
            if other is not sock and other.listening and addresses_overlap(other.local.ip, sock.local.ip):
                raise SocketError(errno.EADDRINUSE, f"port {sock.local.port} already has a listener")
        sock.backlog = max(0, min(backlog, SOMAXCONN)) if backlog >= 0 else SOMAXCONN
        sock.listening = True
        self.listeners[key] = sock

    # Connecting and accepting.

    async def connect(self, sock: TcpSocket, addr: SockAddr, deadline: float | None, nonblocking: bool) -> None:
        if sock.listening:
            raise SocketError(errno.EISCONN, "socket is listening")
        if sock.endpoint is not None:
            conn = sock.conn
            if sock.connecting:
                if conn.state is State.SYN_SENT or conn.state is State.SYN_RECEIVED:
                    if nonblocking:
                        raise SocketError(errno.EALREADY, "connection is in progress")
                else:
                    sock.connecting = False
                    if conn.error:
                        code, conn.error = conn.error, 0
                        self._release(sock)
                        raise SocketError(code, "connection failed")
                    return
                await self._wait_connected(sock, deadline)
                return
            raise SocketError(errno.EISCONN, "socket is already connected")
        if addr.ip == ANY4:
            addr = SockAddr(bytes([127, 0, 0, 1]), addr.port)
        if addr.port == 0:
            raise SocketError(errno.ECONNREFUSED, "port 0")
        try:
            mss = self.network.path_mtu(addr.ip) - 40
            source = sock.local.ip if sock.local is not None and sock.local.ip != ANY4 else self.network.source_for(addr.ip)
        except NetworkError as error:
            raise SocketError(error.errno, str(error)) from None

        if sock.local is None:
            port = self.ports.ephemeral(lambda p: self._port_in_use(source, p, None)
                                        or (source, p, addr.ip, addr.port) in self.endpoints)
            sock.local = SockAddr(ANY4, port)
            self.ports.add(port, sock)
        key = (source, sock.local.port, addr.ip, addr.port)
        if key in self.endpoints:
            raise SocketError(errno.EADDRNOTAVAIL, "the four-tuple is in use")

        endpoint = self._new_endpoint(key, mss, sock.config)
        endpoint.socket = sock
        sock.endpoint = endpoint
        sock.remote = addr
        sock.connecting = True
        self._call(endpoint, endpoint.conn.connect)
        if nonblocking:
            raise SocketError(errno.EINPROGRESS, "connection is in progress")
        await self._wait_connected(sock, deadline)

    async def _wait_connected(self, sock: TcpSocket, deadline: float | None) -> None:
        while True:
            conn = sock.conn
            if conn.state not in (State.SYN_SENT, State.SYN_RECEIVED):
                sock.connecting = False
                if conn.state is State.CLOSED or conn.error:
                    code = conn.error or errno.ECONNREFUSED
                    conn.error = 0
                    self._release(sock)
                    raise SocketError(code, "connection failed")
                return
            if not await wait_any([sock], deadline):
                # As Linux does when SO_SNDTIMEO ends a blocking connect.
                raise SocketError(errno.EINPROGRESS, "connection timed out in progress")

    def _release(self, sock: TcpSocket) -> None:
        """Forget a failed connection so that the socket can connect again."""
        sock.endpoint = None
        sock.remote = None
        if not sock.bound_explicitly and sock.local is not None:
            self.ports.remove(sock.local.port, sock)
            sock.local = None

    async def accept(self, sock: TcpSocket, deadline: float | None, make_socket) -> TcpSocket:
        """Wait for an established connection; ``make_socket()`` creates the new socket."""
        if not sock.listening:
            raise SocketError(errno.EINVAL, "socket is not listening")
        while not sock.accept_queue:
            if sock.closed:
                raise SocketError(errno.EBADF, "socket closed")
            if not await wait_any([sock], deadline):
                raise SocketError(errno.EAGAIN, "no connection to accept")
        endpoint = sock.accept_queue.pop(0)
        endpoint.listener = None
        child = make_socket(_copy_config(sock.config))
        child.endpoint = endpoint
        child.local = SockAddr(endpoint.key[0], endpoint.key[1])
        child.remote = SockAddr(endpoint.key[2], endpoint.key[3])
        endpoint.socket = child
        return child

    # Data.

    async def send(self, sock: TcpSocket, data: bytes, deadline: float | None) -> int:
        conn = self._connected(sock)
        view = memoryview(data)
        sent = 0
        while True:
            if conn.error:
                code, conn.error = conn.error, 0
                if sent:
                    sock.pending_error = code
                    return sent
                raise SocketError(code, "connection failed")
            if not conn.can_send:
                if sent:
                    return sent
                raise SocketError(errno.EPIPE, "cannot send after shutdown or close")
            if sent < len(view):
                sent += self._call(sock.endpoint, conn.send, view[sent:])
            if sent >= len(view):
                return sent
            if not await wait_any([sock], deadline):
                if sent:
                    return sent
                raise SocketError(errno.EAGAIN, "send buffer is full")

    async def recv(self, sock: TcpSocket, max_bytes: int, flags: int, deadline: float | None) -> bytes:
        if sock.endpoint is None:
            raise SocketError(errno.ENOTCONN, "socket is not connected")
        conn = sock.conn
        if conn.state is State.SYN_SENT or conn.state is State.SYN_RECEIVED:
            if deadline is not None and deadline <= self.loop.time():
                raise SocketError(errno.EAGAIN, "connection is in progress")
        want = max_bytes if flags & MSG_WAITALL and not flags & MSG_PEEK else 1
        while True:
            available = conn.readable_bytes
            if available >= min(want, max_bytes) and available:
                return self._call(sock.endpoint, conn.recv, max_bytes, bool(flags & MSG_PEEK))
            if conn.fin_received or sock.read_shut:
                if available:
                    return self._call(sock.endpoint, conn.recv, max_bytes, bool(flags & MSG_PEEK))
                return b""
            if conn.error:
                code, conn.error = conn.error, 0
                raise SocketError(code, "connection failed")
            if conn.state is State.CLOSED:
                if available:
                    return self._call(sock.endpoint, conn.recv, max_bytes, bool(flags & MSG_PEEK))
                return b""
            if not await wait_any([sock], deadline):
                if available:
                    return self._call(sock.endpoint, conn.recv, max_bytes, bool(flags & MSG_PEEK))
                raise SocketError(errno.EAGAIN, "no data to receive")

    def shutdown(self, sock: TcpSocket, how: int) -> None:
        if sock.listening and how in (0, 2):
            self.close(sock)
            return
        conn = self._connected(sock, allow_closed=True)
        if how in (0, 2):
            sock.read_shut = True
        if how in (1, 2):
            self._call(sock.endpoint, conn.shutdown_write)
        sock.wake()

    def _connected(self, sock: TcpSocket, allow_closed: bool = False) -> TcpConnection:
        if sock.endpoint is None or sock.connecting and sock.conn.state in (State.SYN_SENT, State.SYN_RECEIVED):
            raise SocketError(errno.ENOTCONN, "socket is not connected")
        return sock.conn

    def close(self, sock: TcpSocket) -> None:
        """Close the socket: its connection finishes in the background (FIN, TIME_WAIT)."""
        if sock.listening:
            self.listeners.pop((sock.local.ip, sock.local.port), None)
            sock.listening = False
            for endpoint in list(sock.syn_queue) + sock.accept_queue:
                endpoint.listener = None
                self._call(endpoint, endpoint.conn.abort)
            sock.syn_queue.clear()
            sock.accept_queue.clear()
        if sock.endpoint is not None:
            endpoint = sock.endpoint
            endpoint.socket = None
            self._call(endpoint, endpoint.conn.close)
        if sock.local is not None:
            self.ports.remove(sock.local.port, sock)
        sock.closed = True
        sock.wake()

    def icmp_error(self, local: bytes, local_port: int, remote: bytes, remote_port: int, code: int) -> None:
        """Apply a hard ICMP error (RFC 1122 section 4.2.3.9) to a connection still opening."""
        endpoint = self.endpoints.get((local, local_port, remote, remote_port))
        if endpoint is None or endpoint.conn.state is not State.SYN_SENT:
            return
        self._call(endpoint, endpoint.conn.abort)
        endpoint.conn.error = code
        if endpoint.socket is not None:
            endpoint.socket.wake()

    def connections(self) -> list[Endpoint]:
        return list(self.endpoints.values())


def _copy_config(config: TcpConfig) -> TcpConfig:
    return dataclasses.replace(config)


def _describe(key: Key) -> str:
    return f"{'.'.join(map(str, key[0]))}:{key[1]} -> {'.'.join(map(str, key[2]))}:{key[3]}"
