"""gRPC services of stackd: the socket API (sandnet.v1.Sockets) and the
read-only views (sandnet.v1.Netinfo), both on top of ``Stack``."""

import errno
import logging

import grpc

from sandnet import calls
from sandnet.v1 import sockets_pb2, sockets_pb2_grpc, types_pb2
from sandnet_stackd.header import ipv6
from sandnet_stackd.sockets import AF_INET, AF_INET6, ANY4, ANY6, SockAddr, Socket, SocketError, check_address
from sandnet_stackd.stack import Stack
from sandnet_stackd.socket_tcp import TcpSocket
from sandnet_stackd.tcp import State

log = logging.getLogger("sandnet.stackd.service")

SESSION_METADATA = "sandnet-session"


def _session(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == SESSION_METADATA:
            return value
    return ""


def _addr(sock: Socket, message: types_pb2.SockAddr, bind: bool = False) -> SockAddr:
    return check_address(sock.family, bytes(message.ip), message.port, message.scope_id, sock.v6only, bind)


def _to_proto(addr: SockAddr | None, family: int = AF_INET, link_scope: int = 0) -> types_pb2.SockAddr:
    """Convert an address for a socket of ``family``: an AF_INET6 socket shows IPv4
    peers as v4-mapped addresses, and link-local addresses carry a scope id
    (``link_scope`` when the address has none)."""
    if addr is None:
        return types_pb2.SockAddr()
    ip = addr.ip
    if family == AF_INET6 and len(ip) == 4:
        ip = ipv6.map_v4(ip) if ip != ANY4 else ANY6
    scope_id = addr.scope_id
    if len(ip) == 16 and ipv6.is_link_local(ip) and not scope_id:
        scope_id = link_scope
    return types_pb2.SockAddr(ip=ip, port=addr.port, scope_id=scope_id)


class SocketsService(sockets_pb2_grpc.SocketsServicer):
    """Socket calls; each failure is the reply's errno, never a gRPC error."""

    def __init__(self, stack: Stack):
        self.stack = stack

    def _proto(self, addr: SockAddr | None, family: int) -> types_pb2.SockAddr:
        return _to_proto(addr, family, self.stack.link_scope_id())

    async def Session(self, request, context):
        session = self.stack.open_session()
        log.info("session %s opened by %r", session, request.client or context.peer())
        try:
            yield sockets_pb2.SessionEvent(session=session)
            await self.stack.stopping.wait()
        finally:
            self.stack.close_session(session)
            log.info("session %s closed", session)

    async def Socket(self, request, context):
        try:
            fd = self.stack.socket(request.family, request.type, request.protocol, _session(context))
        except SocketError as error:
            return sockets_pb2.SocketReply(errno=error.errno)
        return sockets_pb2.SocketReply(fd=fd)

    async def Bind(self, request, context):
        try:
            sock = self.stack.lookup(request.fd, _session(context))
            self.stack.bind(sock, _addr(sock, request.addr, bind=True))
        except SocketError as error:
            return sockets_pb2.Status(errno=error.errno)
        return sockets_pb2.Status()

    async def Listen(self, request, context):
        try:
            self.stack.listen(self.stack.lookup(request.fd, _session(context)), request.backlog)
        except SocketError as error:
            return sockets_pb2.Status(errno=error.errno)
        return sockets_pb2.Status()

    async def Accept(self, request, context):
        try:
            listener = self.stack.lookup(request.fd, _session(context))
            child = await self.stack.accept(listener, request.timeout_ms)
        except SocketError as error:
            return sockets_pb2.AcceptReply(errno=error.errno)
        reply = sockets_pb2.AcceptReply(fd=child.fd, peer=self._proto(child.remote, child.family))

        # Connections already established ride along, up to max_count in all.
        for _ in range(1, request.max_count):
            try:
                child = await self.stack.accept(listener, 0)
            except SocketError:
                break
            reply.more.add(fd=child.fd, peer=self._proto(child.remote, child.family))
        return reply

    async def Connect(self, request, context):
        try:
            sock = self.stack.lookup(request.fd, _session(context))
            await self.stack.connect(sock, _addr(sock, request.addr), request.timeout_ms)
        except SocketError as error:
            return sockets_pb2.Status(errno=error.errno)
        return sockets_pb2.Status()

    async def Send(self, request, context):
        try:
            sock = self.stack.lookup(request.fd, _session(context))
            addr = _addr(sock, request.addr) if request.HasField("addr") else None
            timeout = 0 if request.flags & 0x40 else request.timeout_ms
            sent = await self.stack.send(sock, request.data, addr, timeout)
        except SocketError as error:
            return sockets_pb2.SendReply(errno=error.errno)
        return sockets_pb2.SendReply(sent=sent)

    async def Recv(self, request, context):
        try:
            sock = self.stack.lookup(request.fd, _session(context))
            timeout = 0 if request.flags & 0x40 else request.timeout_ms
            data, sender, flags = await self.stack.recv(sock, request.max_bytes, request.flags, timeout)
        except SocketError as error:
            return sockets_pb2.RecvReply(errno=error.errno)
        reply = sockets_pb2.RecvReply(data=data, flags=flags)
        if sender is not None:
            reply.addr.CopyFrom(self._proto(sender, sock.family))
        return reply

    async def Shutdown(self, request, context):
        try:
            self.stack.shutdown(self.stack.lookup(request.fd, _session(context)), request.how)
        except SocketError as error:
            return sockets_pb2.Status(errno=error.errno)
        return sockets_pb2.Status()

    async def Close(self, request, context):
        try:
            self.stack.close_socket(request.fd, _session(context))
        except SocketError as error:
            return sockets_pb2.Status(errno=error.errno)
        return sockets_pb2.Status()

    async def GetSockName(self, request, context):
        try:
            sock = self.stack.lookup(request.fd, _session(context))
        except SocketError as error:
            return sockets_pb2.AddrReply(errno=error.errno)
        local = sock.local
        if isinstance(sock, TcpSocket) and sock.endpoint is not None:
            local = SockAddr(sock.endpoint.key[0], sock.endpoint.key[1])
        wildcard = SockAddr(ANY6 if sock.family == AF_INET6 else ANY4, 0)
        return sockets_pb2.AddrReply(addr=self._proto(local or wildcard, sock.family))

    async def GetPeerName(self, request, context):
        try:
            sock = self.stack.lookup(request.fd, _session(context))
        except SocketError as error:
            return sockets_pb2.AddrReply(errno=error.errno)
        connected = sock.remote is not None
        if isinstance(sock, TcpSocket):
            # As inet_getname() in Linux: no peer name while SYN_SENT or CLOSED.
            connected = sock.endpoint is not None and sock.conn.state not in (State.SYN_SENT, State.CLOSED)
        if not connected:
            return sockets_pb2.AddrReply(errno=errno.ENOTCONN)
        return sockets_pb2.AddrReply(addr=self._proto(sock.remote, sock.family))

    async def SetSockOpt(self, request, context):
        try:
            self.stack.lookup(request.fd, _session(context)).set_option(request.level, request.name, request.value)
        except SocketError as error:
            return sockets_pb2.Status(errno=error.errno)
        return sockets_pb2.Status()

    async def GetSockOpt(self, request, context):
        try:
            value = self.stack.get_option(self.stack.lookup(request.fd, _session(context)), request.level, request.name)
        except SocketError as error:
            return sockets_pb2.GetSockOptReply(errno=error.errno)
        if request.buflen:
            value = value[:request.buflen]
        return sockets_pb2.GetSockOptReply(value=value)

    async def Poll(self, request, context):
        ready = await self.stack.poll([(p.fd, p.events) for p in request.fds], request.timeout_ms, _session(context))
        return sockets_pb2.PollReply(ready=[sockets_pb2.PollFd(fd=fd, events=ev) for fd, ev in ready])

    async def Calls(self, request_iterator, context):
        """Serve the session's socket calls multiplexed on one stream, with the unary handlers above."""
        async for batch in calls.serve_calls(self, request_iterator, context, log):
            yield batch


class NetinfoService(sockets_pb2_grpc.NetinfoServicer):
    """Interfaces, routes, sockets and counters of the stack."""

    def __init__(self, stack: Stack):
        self.stack = stack

    async def ListInterfaces(self, request, context):
        reply = sockets_pb2.InterfaceList()
        for iface in self.stack.interfaces():
            reply.interfaces.append(types_pb2.Interface(
                index=iface.index, name=iface.name, mac=iface.mac, mtu=iface.mtu, up=iface.up,
                loopback=iface.loopback,
                addresses=[types_pb2.InterfaceAddress(ip=a.ip, prefix_len=a.prefix_len, broadcast=a.broadcast,
                                                      scope=a.scope)
                           # NOTE: the reply has no flags field, so tentative addresses are left out.
                           for a in iface.addresses if not a.tentative]))
        return reply

    async def ListRoutes(self, request, context):
        reply = sockets_pb2.RouteList()
        for route in self.stack.routes():
            reply.routes.append(types_pb2.Route(
                family=route.family, dst=route.dst if route.dst_len else b"", dst_len=route.dst_len,
                gateway=route.gateway, device=route.device, metric=route.metric, prefsrc=route.prefsrc,
                scope=route.scope, protocol=route.protocol))
        return reply

    async def ListSockets(self, request, context):
        reply = sockets_pb2.SocketList()
        for sock in self.stack.sockets():
            recv_q, send_q = sock.queues()
            local = sock.local
            if isinstance(sock, TcpSocket) and sock.endpoint is not None:
                local = SockAddr(sock.endpoint.key[0], sock.endpoint.key[1])
            reply.sockets.append(sockets_pb2.SocketInfo(
                fd=sock.fd, family=sock.family, type=sock.type, protocol=sock.protocol,
                state=sock.state_name(), local=_to_proto(local, sock.family),
                remote=_to_proto(sock.remote, sock.family),
                recv_queue=recv_q, send_queue=send_q))
        for endpoint in self.stack.tcp.connections():
            if endpoint.socket is not None:
                continue
            conn = endpoint.conn
            reply.sockets.append(sockets_pb2.SocketInfo(
                fd=-1, family=AF_INET6 if len(endpoint.key[0]) == 16 else AF_INET, type=1, protocol=6,
                state=conn.state.ss_name,
                local=_to_proto(SockAddr(endpoint.key[0], endpoint.key[1])),
                remote=_to_proto(SockAddr(endpoint.key[2], endpoint.key[3])),
                recv_queue=conn.readable_bytes, send_queue=conn.send_queue_bytes))
        return reply

    async def GetCounters(self, request, context):
        return sockets_pb2.CounterList(counters=[sockets_pb2.Counter(name=n, value=v)
                                                 for n, v in self.stack.counters.snapshot()])
