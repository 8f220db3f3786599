"""Format Netinfo replies the way iproute2's ``ip`` and ``ss`` print them."""

import ipaddress
import socket

# Link flags that ``ip addr`` shows first between angle brackets.
LOOPBACK_FLAGS = "LOOPBACK"
ETHER_FLAGS = "BROADCAST,MULTICAST"


def format_mac(mac: bytes) -> str:
    return ":".join(f"{octet:02x}" for octet in mac)


def format_ip(ip: bytes) -> str:
    return str(ipaddress.ip_address(ip))


def format_ip_addr(interfaces) -> str:
    """Format an InterfaceList as ``ip addr`` does, one block per interface."""
    lines = []
    for interface in interfaces.interfaces:
        flags = [LOOPBACK_FLAGS if interface.loopback else ETHER_FLAGS]
        if interface.up:
            flags += ["UP", "LOWER_UP"]
        # iproute2 prints UNKNOWN for loopback, whose driver reports no carrier state.
        if interface.loopback:
            state = "UNKNOWN" if interface.up else "DOWN"
        else:
            state = "UP" if interface.up else "DOWN"
        lines.append(f"{interface.index}: {interface.name}: <{','.join(flags)}> mtu {interface.mtu} state {state}")

        if interface.loopback:
            lines.append("    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00")
        else:
            lines.append(f"    link/ether {format_mac(interface.mac)} brd ff:ff:ff:ff:ff:ff")

        for address in interface.addresses:
            kind = "inet" if len(address.ip) == 4 else "inet6"
            line = f"    {kind} {format_ip(address.ip)}/{address.prefix_len}"
            if address.broadcast:
                line += f" brd {format_ip(address.broadcast)}"
            line += f" scope {address.scope or 'global'}"
            # iproute2 ends IPv4 lines, not IPv6 ones, with the interface name.
            if kind == "inet":
                line += f" {interface.name}"
            lines.append(line)
    return "\n".join(lines) + ("\n" if lines else "")


def format_ip_route(routes, family: int = 4) -> str:
    """Format the routes of one family (4 or 6) as ``ip route`` / ``ip -6 route`` do."""
    lines = []
    for route in routes.routes:
        route_family = route.family or (6 if len(route.dst) == 16 or len(route.gateway) == 16 else 4)
        if route_family != family:
            continue
        if route.dst_len == 0:
            parts = ["default"]
        elif (family == 4 and route.dst_len == 32) or (family == 6 and route.dst_len == 128):
            parts = [format_ip(route.dst)]
        else:
            parts = [f"{format_ip(route.dst)}/{route.dst_len}"]
        if route.gateway:
            parts += ["via", format_ip(route.gateway)]
        if route.device:
            parts += ["dev", route.device]
        # iproute2 leaves out "proto boot" and "scope global", its defaults.
        if route.protocol and route.protocol != "boot":
            parts += ["proto", route.protocol]
        if route.scope and route.scope != "global":
            parts += ["scope", route.scope]
        if route.prefsrc:
            parts += ["src", format_ip(route.prefsrc)]
        if route.metric:
            parts += ["metric", str(route.metric)]
        lines.append(" ".join(parts))
    return "\n".join(lines) + ("\n" if lines else "")


def netid(info) -> str:
    """Name the protocol as ss does: tcp, udp, or icmp/icmp6 for ping sockets."""
    if info.type == socket.SOCK_STREAM:
        return "tcp"
    if info.protocol in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6):
        return "icmp6" if info.family == socket.AF_INET6 else "icmp"
    return "udp"


def format_endpoint(family: int, addr, peer: bool) -> str:
    """Format ``ip:port`` as ss does: IPv6 in brackets, the wildcard address, "*" for a peer's unset port."""
    if addr.ip:
        host = format_ip(addr.ip)
    else:
        host = "::" if family == socket.AF_INET6 else "0.0.0.0"
    if family == socket.AF_INET6:
        host = f"[{host}]"
    port = "*" if peer and addr.port == 0 else str(addr.port)
    return f"{host}:{port}"


def format_ss(sockets) -> str:
    """Format a SocketList as ``ss -tuan`` does."""
    rows = [("Netid", "State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port")]
    for info in sorted(sockets.sockets, key=lambda info: (netid(info), info.fd)):
        rows.append((
            netid(info),
            info.state or "UNCONN",
            str(info.recv_queue),
            str(info.send_queue),
            format_endpoint(info.family, info.local, peer=False),
            format_endpoint(info.family, info.remote, peer=True),
        ))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2]),
                 row[3].rjust(widths[3]), row[4].rjust(widths[4]), row[5].ljust(widths[5])]
        lines.append(" ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def format_stats(counters) -> str:
    """Format a CounterList like ``netstat -s``: one block per protocol, then "Name: value" lines.

    Counter names are "Protocol.Name" as in /proc/net/snmp; the protocols keep
    the order of their first counter.
    """
    groups: dict[str, list[tuple[str, int]]] = {}
    for counter in counters.counters:
        protocol, sep, name = counter.name.partition(".")
        if not sep:
            protocol, name = "Other", counter.name
        groups.setdefault(protocol, []).append((name, counter.value))
    lines = []
    for protocol, entries in groups.items():
        lines.append(f"{protocol}:")
        lines.extend(f"    {name}: {value}" for name, value in entries)
    return "\n".join(lines) + "\n" if lines else ""
