"""TCP sockets: demultiplexing, listeners with SYN and accept queues, and the
socket calls on top of the TcpConnection state machine."""

import asyncio
import dataclasses
import errno
import logging
import os
import struct

from sandnet_stackd.header import ipv4
from sandnet_stackd.header import tcp as tcp_header
from sandnet_stackd.header.checksum import pseudo_header_sum
from sandnet_stackd.header.errors import MalformedError, Reason
from sandnet_stackd.interface import Interface
from sandnet_stackd.network import Network, NetworkError
from sandnet_stackd.offload import TCP_CHECKSUM_OFFSET, TransportOffload
from sandnet_stackd.sockets import (
    AF_INET6, ANY4, ANY6, IPPROTO_TCP, MSG_PEEK, MSG_WAITALL, POLLERR, POLLHUP, POLLIN, POLLOUT, POLLRDHUP,
    RMEM_MAX, SO_ACCEPTCONN, SO_ERROR, SO_KEEPALIVE, SO_RCVBUF, SO_SNDBUF, SOCK_MIN_RCVBUF, SOCK_MIN_SNDBUF,
    SO_LINGER, SO_OOBINLINE, SOL_SOCKET, SOMAXCONN, TCP_CA_NAME_MAX, TCP_CONGESTION, TCP_CORK, TCP_INFO,
    TCP_KEEPCNT, TCP_LINGER2, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_MAXSEG, TCP_NODELAY, TCP_USER_TIMEOUT,
    WMEM_MAX, PortSpace, SockAddr, Socket, SocketError, addresses_overlap, clamp_buffer, is_wildcard,
    pack_int, unpack_int, wait_any)
from sandnet_stackd.tcp import (IsnGenerator, State, SynCookies, TcpConfig, TcpConnection, pack_tcp_info,
                                reset_for_unexpected)
from sandnet_stackd.tcp.congestion import ALGORITHMS

log = logging.getLogger("sandnet.stackd.tcp")

Key = tuple[bytes, int, bytes, int]  # (local ip, local port, remote ip, remote port)

# The SYN queue of a listener contains at most this many half-open connections
# beyond its backlog (Linux bounds it by tcp_max_syn_backlog).
MAX_SYN_BACKLOG = 1024
# A TCP header with the most options, 15 words (RFC 9293 section 3.1).
TCP_MAX_HEADER_LEN = 60


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
        # SO_LINGER as (l_onoff, l_linger in seconds). NOTE: only linger 0 changes
        # close(), to an abort with RST; a positive linger time does not make
        # close() wait for the data to be acknowledged.
        self.linger = (0, 0)
        self.oob_inline = False

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
        if level == SOL_SOCKET and name == SO_LINGER:
            if len(value) < 8:
                raise SocketError(errno.EINVAL, f"SO_LINGER needs struct linger (8 bytes), got {len(value)}")
            onoff, seconds = struct.unpack_from("ii", value)
            self.linger = (int(bool(onoff)), max(seconds, 0))
            return
        if level == SOL_SOCKET and name == SO_OOBINLINE:
            # Urgent data is always delivered inline, so only the flag is kept.
            self.oob_inline = bool(unpack_int(value))
            return
        if level == SOL_SOCKET and name in (SO_KEEPALIVE, SO_RCVBUF, SO_SNDBUF):
            number = unpack_int(value)
            if name == SO_KEEPALIVE:
                self._apply("keepalive", bool(number))
            elif name == SO_RCVBUF:
                # As Linux's SOCK_RCVBUF_LOCK: a size the application set stops auto-tuning.
                self._apply("rcvbuf_auto", False)
                self._apply("rcvbuf", clamp_buffer(number, SOCK_MIN_RCVBUF, RMEM_MAX))
            else:
                # As Linux's SOCK_SNDBUF_LOCK: a size the application set stops auto-tuning.
                self._apply("sndbuf_auto", False)
                self._apply("sndbuf", clamp_buffer(number, SOCK_MIN_SNDBUF, WMEM_MAX))
            return
        if level == IPPROTO_TCP and name == TCP_CONGESTION:
            algorithm = bytes(value).split(b"\0", 1)[0].decode("ascii", "replace")
            if algorithm not in ALGORITHMS:
                raise SocketError(errno.ENOENT, f"TCP congestion control {algorithm!r} is not available; "
                                                f"use one of {', '.join(ALGORITHMS)}")
            self._apply("congestion", algorithm)
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
            elif name == TCP_CORK:
                self._apply("cork", bool(number))
            elif name == TCP_LINGER2:
                # Seconds in FIN-WAIT-2 after close(); 0 restores the default, as tcp_fin_timeout.
                # NOTE: Linux's negative value (reset at once) is taken as the default here.
                self._apply("fin_timeout", float(number) if number > 0 else TcpConfig.fin_timeout)
            elif name == TCP_USER_TIMEOUT:
                if number < 0:
                    raise SocketError(errno.EINVAL, f"TCP_USER_TIMEOUT {number} is negative; pass milliseconds >= 0")
                self._apply("user_timeout", number / 1000)
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
                # A connection reports its auto-tuned size, as Linux's sk_sndbuf.
                return pack_int(self.conn.sndbuf if self.conn is not None else config.sndbuf)
            if name == SO_ACCEPTCONN:
                return pack_int(int(self.listening))
            if name == SO_LINGER:
                return struct.pack("ii", *self.linger)
            if name == SO_OOBINLINE:
                return pack_int(int(self.oob_inline))
            if name == SO_ERROR and self.conn is not None and self.conn.error and not self.pending_error:
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
                return pack_int(self.conn.mss if self.conn is not None else 536)
            if name == TCP_CORK:
                return pack_int(int(config.cork))
            if name == TCP_LINGER2:
                return pack_int(int(config.fin_timeout))
            if name == TCP_USER_TIMEOUT:
                return pack_int(round(config.user_timeout * 1000))
            if name == TCP_CONGESTION:
                return config.congestion.encode().ljust(TCP_CA_NAME_MAX, b"\0")
            if name == TCP_INFO:
                return pack_tcp_info(self.conn.info() if self.conn is not None else None, self.listening)
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
        self.cookies = SynCookies(os.urandom(32), loop.time)
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
            if error.reason is Reason.BAD_CHECKSUM:
                self.counters.InCsumErrors += 1
            log.debug("dropped TCP segment from %s: %s", header.src.hex(), error)
            return
        multicast = header.dst[0] == 0xFF if len(header.dst) == 16 else header.dst[0] >= 224
        if multicast or header.dst == b"\xff\xff\xff\xff" or iface.is_broadcast(header.dst):
            self.counters.InErrs += 1
            return

        key = (header.dst, seg.dst_port, header.src, seg.src_port)
        endpoint = self.endpoints.get(key)
        listener = self._find_listener(header.dst, seg.dst_port)
        if endpoint is not None and listener is not None and endpoint.conn.accepts_new_syn(seg):
            # A new incarnation of a connection in TIME-WAIT (RFC 6191), as Linux allows.
            self.counters.TCPTimeWaitReuse += 1
            self._call(endpoint, endpoint.conn.abort)
            endpoint = None
        if endpoint is not None:
            endpoint.conn.on_segment(seg)
            self._after(endpoint)
            return

        if listener is not None:
            self._receive_on_listener(listener, header, seg)
            return

        # RFC 9293 section 3.10.7.1: no connection exists, so send a reset.
        self.counters.InSegs += 1
        self._send_reset(header.dst, header.src, seg)

    def _find_listener(self, dst: bytes, port: int) -> "TcpSocket | None":
        """Return the listener for a SYN to ``dst``: a specific address beats the wildcard,
        and an IPv6 wildcard listener takes IPv4 too unless IPV6_V6ONLY is set."""
        for ip in (dst, ANY4, ANY6):
            listener = self.listeners.get((ip, port))
            if listener is not None and (ip == dst or len(ip) == len(dst) or listener.accepts_family(dst)):
                return listener
        return None

    def _receive_on_listener(self, listener: TcpSocket, header: ipv4.Ipv4Repr, seg: tcp_header.TcpRepr) -> None:
        """RFC 9293 section 3.10.7.2: ignore RST, reset an ACK, open a connection on SYN."""
        self.counters.InSegs += 1
        if seg.flags & tcp_header.RST:
            return
        key = (header.dst, seg.dst_port, header.src, seg.src_port)
        if seg.flags & tcp_header.ACK:
            if not seg.flags & tcp_header.SYN and self._accept_cookie(listener, key, seg):
                return
            self._send_reset(header.dst, header.src, seg)
            return
        if not seg.flags & tcp_header.SYN or seg.flags & tcp_header.FIN:
            # Linux's tcp_rcv_state_process drops SYN+FIN in LISTEN without a reply.
            return

        if len(listener.accept_queue) > listener.backlog:
            # The accept queue takes backlog + 1 connections, as sk_acceptq_is_full in Linux,
            # and a SYN beyond that is dropped so that the peer retries.
            self.counters.ListenOverflows += 1
            self.counters.ListenDrops += 1
            return
        try:
            mss = self.network.mss_for(header.src)
        except NetworkError:
            return
        if len(listener.syn_queue) >= min(max(listener.backlog, 1), MAX_SYN_BACKLOG):
            # The SYN queue is full, so reply with a SYN cookie and keep no state (RFC 4987).
            self._send_cookie(listener, key, seg, mss)
            return

        endpoint = self._new_endpoint(key, mss, _copy_config(listener.config))
        endpoint.listener = listener
        listener.syn_queue.add(endpoint)
        endpoint.conn.accept_syn(seg)
        self._after(endpoint)

    def _send_cookie(self, listener: TcpSocket, key: Key, syn: tcp_header.TcpRepr, mss: int) -> None:
        """Reply to ``syn`` with a SYN-ACK whose ISS is a SYN cookie."""
        local_ip, local_port, remote_ip, remote_port = key
        cookie, _ = self.cookies.make(_tuple_bytes(key), syn.seq, syn.mss or 536)
        synack = tcp_header.TcpRepr(src_port=local_port, dst_port=remote_port, seq=cookie,
                                    ack=(syn.seq + 1) & 0xFFFFFFFF, flags=tcp_header.SYN | tcp_header.ACK,
                                    window=min(listener.config.rcvbuf, 0xFFFF), mss=mss)
        self.counters.SyncookiesSent += 1
        self.counters.OutSegs += 1
        try:
            self.network.output(local_ip, remote_ip, ipv4.PROTO_TCP, tcp_header.build(synack, local_ip, remote_ip))
        except NetworkError as error:
            log.debug("SYN cookie to %s failed: %s", _describe(key), error)

    def _accept_cookie(self, listener: TcpSocket, key: Key, ack: tcp_header.TcpRepr) -> bool:
        """Open a connection from an ACK that returns a valid SYN cookie; return whether it did."""
        if self.counters.SyncookiesSent == 0:
            return False
        cookie = (ack.ack - 1) & 0xFFFFFFFF
        peer_mss = self.cookies.check(_tuple_bytes(key), (ack.seq - 1) & 0xFFFFFFFF, cookie)
        if peer_mss is None:
            self.counters.SyncookiesFailed += 1
            return False
        if len(listener.accept_queue) > listener.backlog:
            self.counters.ListenOverflows += 1
            self.counters.ListenDrops += 1
            return True
        try:
            mss = self.network.mss_for(key[2])
        except NetworkError:
            return False
        self.counters.SyncookiesRecv += 1
        endpoint = self._new_endpoint(key, mss, _copy_config(listener.config), iss=cookie)
        endpoint.listener = listener
        listener.syn_queue.add(endpoint)
        self._call(endpoint, endpoint.conn.accept_cookie, ack, peer_mss)
        return True

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

    def _new_endpoint(self, key: Key, mss: int, config: TcpConfig, iss: int | None = None) -> Endpoint:
        local_ip, local_port, remote_ip, remote_port = key
        endpoint = Endpoint(key=key, conn=None)  # type: ignore[arg-type]

        offloads = self.network.offloads_for(remote_ip)

        def output(seg: tcp_header.TcpRepr) -> None:
            try:
                if offloads.checksum:
                    segment, offload = _build_partial(seg, local_ip, remote_ip, endpoint.conn.snd_mss)
                    self.network.output(local_ip, remote_ip, ipv4.PROTO_TCP, segment, offload=offload)
                else:
                    self.network.output(local_ip, remote_ip, ipv4.PROTO_TCP, tcp_header.build(seg, local_ip, remote_ip))
            except NetworkError as error:
                log.debug("TCP output %s:%d -> %s:%d failed: %s", local_ip.hex(), local_port,
                          remote_ip.hex(), remote_port, error)

        endpoint.conn = TcpConnection(
            local_ip=local_ip, local_port=local_port, remote_ip=remote_ip, remote_port=remote_port,
            iss=self.isn.next(local_ip, local_port, remote_ip, remote_port) if iss is None else iss,
            mss=mss, config=config,
            counters=self.counters, clock=self.loop.time, output=output,
            notify=lambda: self._notify(endpoint))
        if offloads.gso_max_size:
            # Room for the largest IP and TCP headers inside one GSO packet. IPv4's
            # 60-byte maximum also covers the 40-byte IPv6 header.
            endpoint.conn.gso_max_size = offloads.gso_max_size - ipv4.MAX_HEADER_LEN - TCP_MAX_HEADER_LEN
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
            if other is sock or other.local is None or not addresses_overlap(
                    other.local.ip, ip, other.v6only, sock is not None and sock.v6only):
                continue
            if sock is not None and sock.reuseaddr and other.reuseaddr and not other.listening:
                continue
            return True
        for key, endpoint in self.endpoints.items():
            if key[1] == port and addresses_overlap(key[0], ip) and endpoint.socket is None and endpoint.listener is None:
                # An orphaned connection (TIME_WAIT, FIN_WAIT_2...) keeps its port unless SO_REUSEADDR.
                if sock is None or not sock.reuseaddr:
                    return True
        return False

    def bind(self, sock: TcpSocket, addr: SockAddr) -> None:
        if sock.local is not None:
            raise SocketError(errno.EINVAL, "socket is already bound")
        if not is_wildcard(addr.ip) and not self.network.is_local(addr.ip):
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
            self.bind(sock, SockAddr(ANY6 if sock.family == AF_INET6 else ANY4, 0))
        key = (sock.local.ip, sock.local.port)
        existing = self.listeners.get(key)
        if existing is not None and existing is not sock:
            raise SocketError(errno.EADDRINUSE, f"port {sock.local.port} already has a listener")
        for other in self.ports.users(sock.local.port):
            if other is not sock and other.listening and addresses_overlap(
                    other.local.ip, sock.local.ip, other.v6only, sock.v6only):
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
        elif addr.ip == ANY6:
            addr = SockAddr(bytes(15) + b"\x01", addr.port)
        if addr.port == 0:
            raise SocketError(errno.ECONNREFUSED, "port 0")
        try:
            mss = self.network.mss_for(addr.ip)
            source = sock.local.ip if sock.local is not None and not is_wildcard(sock.local.ip) \
                else self.network.source_for(addr.ip)
        except NetworkError as error:
            raise SocketError(error.errno, str(error)) from None

        if sock.local is None:
            port = self.ports.ephemeral(lambda p: self._port_in_use(source, p, None)
                                        or (source, p, addr.ip, addr.port) in self.endpoints)
            sock.local = SockAddr(ANY6 if sock.family == AF_INET6 else ANY4, port)
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
            if not sock.listening:
                raise SocketError(errno.EINVAL, "socket stopped listening")
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
        """Queue ``data``, waiting for buffer space, as tcp_sendmsg() does.

        A socket that never connected gets EPIPE; one still connecting waits
        for the handshake (EAGAIN when non-blocking).
        """
        if sock.endpoint is None:
            raise SocketError(errno.EPIPE, "socket is not connected")
        conn = sock.conn
        while conn.state in (State.SYN_SENT, State.SYN_RECEIVED) and not conn.error:
            if not await wait_any([sock], deadline):
                raise SocketError(errno.EAGAIN, "connection is in progress")
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
            # As Linux's tcp_disconnect on a listener: it stops listening and
            # resets its queue, but keeps its descriptor and its port.
            self._stop_listening(sock)
            sock.wake()
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

    def _stop_listening(self, sock: TcpSocket) -> None:
        """Stop listening and reset the connections not yet accepted."""
        self.listeners.pop((sock.local.ip, sock.local.port), None)
        sock.listening = False
        for endpoint in list(sock.syn_queue) + sock.accept_queue:
            endpoint.listener = None
            self._call(endpoint, endpoint.conn.abort)
        sock.syn_queue.clear()
        sock.accept_queue.clear()

    def close(self, sock: TcpSocket) -> None:
        """Close the socket: its connection finishes in the background (FIN, TIME_WAIT)."""
        if sock.listening:
            self._stop_listening(sock)
        if sock.endpoint is not None:
            endpoint = sock.endpoint
            endpoint.socket = None
            if sock.linger == (1, 0) and endpoint.conn.state.is_synchronized:
                # SO_LINGER with a zero time aborts: RST instead of FIN, as Linux's
                # tcp_close, which counts it in TCPAbortOnData.
                self.counters.TCPAbortOnData += 1
                self._call(endpoint, endpoint.conn.abort)
            else:
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

    def path_mtu_changed(self, local: bytes, local_port: int, remote: bytes, remote_port: int, mtu: int) -> None:
        """Shrink the segments of a connection to a path MTU learned from ICMP (RFC 1191, RFC 8201)."""
        endpoint = self.endpoints.get((local, local_port, remote, remote_port))
        if endpoint is None:
            return
        self._call(endpoint, endpoint.conn.set_path_mtu, mtu)

    def connections(self) -> list[Endpoint]:
        return list(self.endpoints.values())


def _copy_config(config: TcpConfig) -> TcpConfig:
    return dataclasses.replace(config)


def _tuple_bytes(key: Key) -> bytes:
    local_ip, local_port, remote_ip, remote_port = key
    return local_ip + local_port.to_bytes(2, "big") + remote_ip + remote_port.to_bytes(2, "big")


def _describe(key: Key) -> str:
    return f"{'.'.join(map(str, key[0]))}:{key[1]} -> {'.'.join(map(str, key[2]))}:{key[3]}"


def _build_partial(seg: tcp_header.TcpRepr, src: bytes, dst: bytes, mss: int) -> tuple[bytearray, TransportOffload]:
    """Build a segment whose checksum the device completes (CHECKSUM_PARTIAL in Linux).

    The header is built without the payload, so no Python code sums the
    payload. The checksum field then gets the pseudo-header sum of the whole
    segment. A payload over ``mss`` asks the device to cut it into ``mss``-byte packets.
    """
    segment = tcp_header.build_header(seg)
    header_len = len(segment)
    segment += seg.payload
    checksum = pseudo_header_sum(src, dst, ipv4.PROTO_TCP, len(segment))
    segment[TCP_CHECKSUM_OFFSET:TCP_CHECKSUM_OFFSET + 2] = checksum.to_bytes(2, "big")
    gso_size = mss if len(seg.payload) > mss else 0
    return segment, TransportOffload(header_len=header_len, gso_size=gso_size)
