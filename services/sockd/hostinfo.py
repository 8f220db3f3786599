"""Host mode's Netinfo: the host's interfaces and routes through rtnetlink
(pyroute2), the sockets that sockd has open, and the counters of /proc/net/snmp."""

import asyncio
import fcntl
import socket
import struct
import termios

from pyroute2 import IPRoute

from sandnet.v1 import sockets_pb2, sockets_pb2_grpc, types_pb2
from sandnet_sockd import addresses
from sandnet_sockd.host import HostSocket, HostSockets

# Names that iproute2 prints for the rtm_scope and rtm_protocol values.
SCOPE_NAMES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
PROTOCOL_NAMES = {0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 16: "dhcp", 186: "bgp", 188: "ospf"}

# Linux's TCP states (tcpi_state of struct tcp_info, TCP_ESTABLISHED = 1 ...) as ss(8) names them.
TCP_STATES = {
    1: "ESTAB", 2: "SYN-SENT", 3: "SYN-RECV", 4: "FIN-WAIT-1", 5: "FIN-WAIT-2", 6: "TIME-WAIT",
    7: "UNCONN", 8: "CLOSE-WAIT", 9: "LAST-ACK", 10: "LISTEN", 11: "CLOSING",
}

SIOCINQ = termios.FIONREAD
SIOCOUTQ = termios.TIOCOUTQ
IFF_LOOPBACK = 0x8
IFF_UP = 0x1
MAIN_TABLE = 254


def read_interfaces() -> list[types_pb2.Interface]:
    """Read the host's links and their addresses through rtnetlink."""
    with IPRoute() as ipr:
        links = ipr.get_links()
        addrs = ipr.get_addr()

    interfaces = {}
    for link in links:
        mac = link.get_attr("IFLA_ADDRESS") or ""
        flags = link["flags"]
        loopback = bool(flags & IFF_LOOPBACK)
        interfaces[link["index"]] = types_pb2.Interface(
            index=link["index"],
            name=link.get_attr("IFLA_IFNAME") or "",
            mac=b"" if loopback or len(mac) != 17 else bytes.fromhex(mac.replace(":", "")),
            mtu=link.get_attr("IFLA_MTU") or 0,
            up=bool(flags & IFF_UP),
            loopback=loopback,
        )
    for addr in addrs:
        interface = interfaces.get(addr["index"])
        if interface is None:
            continue
        ip = addr.get_attr("IFA_ADDRESS")
        broadcast = addr.get_attr("IFA_BROADCAST")
        interface.addresses.append(types_pb2.InterfaceAddress(
            ip=socket.inet_pton(addr["family"], ip),
            prefix_len=addr["prefixlen"],
            broadcast=socket.inet_pton(socket.AF_INET, broadcast) if broadcast else b"",
            scope=SCOPE_NAMES.get(addr["scope"], str(addr["scope"])),
        ))
    return [interfaces[index] for index in sorted(interfaces)]


def read_routes() -> list[types_pb2.Route]:
    """Read the main routing table, IPv4 then IPv6, through rtnetlink."""
    routes = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family, table=MAIN_TABLE):
                if route.get_attr("RTA_TABLE", route["table"]) != MAIN_TABLE:
                    continue
                dst = route.get_attr("RTA_DST")
                gateway = route.get_attr("RTA_GATEWAY")
                prefsrc = route.get_attr("RTA_PREFSRC")
                routes.append(types_pb2.Route(
                    dst=socket.inet_pton(family, dst) if dst else b"",
                    dst_len=route["dst_len"],
                    gateway=socket.inet_pton(family, gateway) if gateway else b"",
                    device=names.get(route.get_attr("RTA_OIF"), ""),
                    metric=route.get_attr("RTA_PRIORITY") or 0,
                    prefsrc=socket.inet_pton(family, prefsrc) if prefsrc else b"",
                    scope=SCOPE_NAMES.get(route["scope"], str(route["scope"])),
                    protocol=PROTOCOL_NAMES.get(route["proto"], str(route["proto"])),
                    family=4 if family == socket.AF_INET else 6,
                ))
    return routes


def read_counters(path: str = "/proc/net/snmp") -> list[sockets_pb2.Counter]:
    """Parse /proc/net/snmp, whose sections are a header line of names and a line of values."""
    with open(path, encoding="ascii") as snmp:
        lines = snmp.read().splitlines()
    counters = []
    for header, values in zip(lines[0::2], lines[1::2]):
        section, _, names = header.partition(":")
        for name, value in zip(names.split(), values.partition(":")[2].split()):
            # A few counters, such as Tcp.MaxConn, are -1 for "no limit".
            counters.append(sockets_pb2.Counter(name=f"{section}.{name}", value=max(int(value), 0)))
    return counters


def describe_socket(host_socket: HostSocket) -> sockets_pb2.SocketInfo:
    """Describe one open socket as ss(8) would: state, addresses and queue sizes."""
    sock = host_socket.sock
    info = sockets_pb2.SocketInfo(fd=host_socket.fd, family=host_socket.family, type=host_socket.type,
                                  protocol=host_socket.protocol)
    try:
        info.local.CopyFrom(addresses.from_host(sock.getsockname()))
    except OSError:
        pass
    try:
        info.remote.CopyFrom(addresses.from_host(sock.getpeername()))
        connected = True
    except OSError:
        connected = False

    if host_socket.type == socket.SOCK_STREAM:
        tcp_info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        info.state = TCP_STATES.get(tcp_info[0], "UNKNOWN")
    else:
        info.state = "ESTAB" if connected else "UNCONN"

    if info.state != "LISTEN":
        info.recv_queue = ioctl_int(sock, SIOCINQ)
        info.send_queue = ioctl_int(sock, SIOCOUTQ)
    return info


def ioctl_int(sock: socket.socket, request: int) -> int:
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0]
    except OSError:
        return 0


class HostNetinfo(sockets_pb2_grpc.NetinfoServicer):
    """The Netinfo service from the host kernel's view."""

    def __init__(self, sockets: HostSockets):
        self.sockets = sockets

    async def ListInterfaces(self, request, context):
        interfaces = await asyncio.to_thread(read_interfaces)
        return sockets_pb2.InterfaceList(interfaces=interfaces)

    async def ListRoutes(self, request, context):
        routes = await asyncio.to_thread(read_routes)
        return sockets_pb2.RouteList(routes=routes)

    async def ListSockets(self, request, context):
        open_sockets = [describe_socket(host_socket) for host_socket in self.sockets.sockets.values()]
        return sockets_pb2.SocketList(sockets=open_sockets)

    async def GetCounters(self, request, context):
        return sockets_pb2.CounterList(counters=read_counters())
