"""Take a device's addresses and routes from the kernel, and give them back.

linkd reads the device's configuration with rtnetlink, then removes the
addresses so the kernel stops replying to ARP, neighbor solicitations and
packets for them. stackd replies instead.
Routes are read before any address is removed, because removing an address
makes the kernel delete the routes that depend on it. On exit, linkd adds
the addresses back, then every route that is still missing.
"""

import dataclasses
import errno
import json
import logging
import os
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from sandnet.v1 import types_pb2

MAIN_TABLE = 254

# The names iproute2 prints, from its /etc/iproute2/rt_scopes and rt_protos files.
SCOPE_NAMES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
PROTOCOL_NAMES = {
    0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated", 9: "ra", 10: "mrt",
    11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp", 15: "ntk", 16: "dhcp", 17: "mrouted",
    18: "keepalived", 42: "babel", 99: "openr", 186: "bgp", 187: "isis", 188: "ospf", 189: "rip", 192: "eigrp",
}

# Address flags a caller may set with RTM_NEWADDR (linux/if_addr.h). The
# others (tentative, deprecated, ...) are state that the kernel owns.
IFA_F_NODAD = 0x02
IFA_F_HOMEADDRESS = 0x10
IFA_F_MANAGETEMPADDR = 0x100
IFA_F_NOPREFIXROUTE = 0x200
IFA_F_MCAUTOJOIN = 0x400
SETTABLE_ADDRESS_FLAGS = IFA_F_NODAD | IFA_F_HOMEADDRESS | IFA_F_MANAGETEMPADDR | IFA_F_NOPREFIXROUTE | IFA_F_MCAUTOJOIN

ADDR_GEN_MODE_NONE = "1"


@dataclasses.dataclass(frozen=True)
class Address:
    """An interface address as RTM_GETADDR reports it."""

    family: int
    ip: str
    prefix_len: int
    broadcast: str | None
    scope: int
    flags: int


@dataclasses.dataclass(frozen=True)
class RouteEntry:
    """A main-table route through the device, as RTM_GETROUTE reports it."""

    family: int
    dst: str | None
    dst_len: int
    gateway: str | None
    metric: int | None
    prefsrc: str | None
    scope: int
    protocol: int
    type: int


@dataclasses.dataclass
class Snapshot:
    """The device's configuration before linkd changed it."""

    index: int
    name: str
    mac: bytes
    mtu: int
    up: bool
    loopback: bool
    addresses: list[Address]
    routes: list[RouteEntry]
    # The interface's IPv6 addr_gen_mode sysctl, or None when IPv6 is off.
    addr_gen_mode: str | None


def _sysctl_path(name: str) -> str:
    return f"/proc/sys/net/ipv6/conf/{name}/addr_gen_mode"


def read_snapshot(index: int) -> Snapshot:
    """Read the device's MAC, MTU, addresses, main-table routes and addr_gen_mode."""
    with IPRoute() as ipr:
        link = ipr.get_links(index)[0]
        addresses = [_address_from(message) for message in ipr.get_addr(index=index)]
        routes = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for message in ipr.get_routes(family=family, table=MAIN_TABLE):
                # NOTE: multipath routes (RTA_MULTIPATH) have no RTA_OIF and are not taken over.
                if message.get("RTA_OIF") == index and message.get("RTA_TABLE", message["table"]) == MAIN_TABLE:
                    routes.append(_route_from(message))

    name = link.get("IFLA_IFNAME")
    mac_text = link.get("IFLA_ADDRESS") or ""
    addr_gen_mode = None
    if os.path.exists(_sysctl_path(name)):
        with open(_sysctl_path(name)) as sysctl:
            addr_gen_mode = sysctl.read().strip()

    return Snapshot(
        index=index,
        name=name,
        mac=bytes.fromhex(mac_text.replace(":", "")),
        mtu=link.get("IFLA_MTU"),
        up=bool(link["flags"] & 0x1),
        loopback=bool(link["flags"] & 0x8),
        addresses=addresses,
        routes=routes,
        addr_gen_mode=addr_gen_mode,
    )


def _address_from(message) -> Address:
    # For IPv4, IFA_LOCAL is the interface's own address and IFA_ADDRESS the
    # peer's on point-to-point links; IPv6 reports only IFA_ADDRESS.
    ip = message.get("IFA_LOCAL") or message.get("IFA_ADDRESS")
    return Address(
        family=message["family"],
        ip=ip,
        prefix_len=message["prefixlen"],
        broadcast=message.get("IFA_BROADCAST"),
        scope=message["scope"],
        flags=message.get("IFA_FLAGS", message["flags"]),
    )


def _route_from(message) -> RouteEntry:
    return RouteEntry(
        family=message["family"],
        dst=message.get("RTA_DST"),
        dst_len=message["dst_len"],
        gateway=message.get("RTA_GATEWAY"),
        metric=message.get("RTA_PRIORITY"),
        prefsrc=message.get("RTA_PREFSRC"),
        scope=message["scope"],
        protocol=message["proto"],
        type=message["type"],
    )


def take_over(snapshot: Snapshot, log: logging.Logger) -> None:
    """Remove the device's addresses from the kernel and stop IPv6 address autoconfiguration.

    addr_gen_mode "none" keeps the kernel from adding a new IPv6 link-local
    address, for example when the link goes down and up again.
    """
    if snapshot.addr_gen_mode is not None and snapshot.addr_gen_mode != ADDR_GEN_MODE_NONE:
        with open(_sysctl_path(snapshot.name), "w") as sysctl:
            sysctl.write(ADDR_GEN_MODE_NONE)

    with IPRoute() as ipr:
        # Secondary IPv4 addresses come after their primary, and removing the
        # primary first could remove them too, so go backwards.
        for address in reversed(snapshot.addresses):
            try:
                ipr.addr("del", index=snapshot.index, address=address.ip, prefixlen=address.prefix_len)
            except NetlinkError as error:
                if error.code != errno.EADDRNOTAVAIL:
                    raise
            log.info("took address %s/%d from %s", address.ip, address.prefix_len, snapshot.name)


def restore(snapshot: Snapshot, log: logging.Logger) -> None:
    """Put back the addresses, the routes that are missing, and addr_gen_mode.

    Errors are logged and the remaining steps still run, so one bad entry
    does not leave the rest of the configuration missing.
    """
    with IPRoute() as ipr:
        if not ipr.link_lookup(index=snapshot.index):
            log.error("cannot restore the configuration of %s: the device no longer exists", snapshot.name)
            return

        for address in snapshot.addresses:
            _restore_address(ipr, snapshot, address, log)

        # Routes through a gateway need the directly connected routes first.
        for route in sorted(snapshot.routes, key=lambda route: route.gateway is not None):
            _restore_route(ipr, snapshot, route, log)

    if snapshot.addr_gen_mode is not None and snapshot.addr_gen_mode != ADDR_GEN_MODE_NONE:
        try:
            with open(_sysctl_path(snapshot.name), "w") as sysctl:
                sysctl.write(snapshot.addr_gen_mode)
            log.info("restored addr_gen_mode %s on %s", snapshot.addr_gen_mode, snapshot.name)
        except OSError as error:
            log.error("cannot restore addr_gen_mode %s on %s: %s", snapshot.addr_gen_mode, snapshot.name, error)


def _restore_address(ipr: IPRoute, snapshot: Snapshot, address: Address, log: logging.Logger) -> None:
    request = {
        "index": snapshot.index,
        "address": address.ip,
        "prefixlen": address.prefix_len,
        "scope": address.scope,
        "IFA_FLAGS": address.flags & SETTABLE_ADDRESS_FLAGS,
    }
    if address.broadcast:
        request["broadcast"] = address.broadcast
    try:
        ipr.addr("add", **request)
    except NetlinkError as error:
        if error.code == errno.EEXIST:
            return
        log.error("cannot restore address %s/%d on %s: %s", address.ip, address.prefix_len, snapshot.name, error)
        return
    log.info("restored address %s/%d on %s", address.ip, address.prefix_len, snapshot.name)


def _restore_route(ipr: IPRoute, snapshot: Snapshot, route: RouteEntry, log: logging.Logger) -> None:
    request = {
        "family": route.family,
        "dst_len": route.dst_len,
        "oif": snapshot.index,
        "table": MAIN_TABLE,
        "scope": route.scope,
        "proto": route.protocol,
        "type": route.type,
    }
    if route.dst:
        request["dst"] = route.dst
    if route.gateway:
        request["gateway"] = route.gateway
    if route.metric is not None:
        request["priority"] = route.metric
    if route.prefsrc:
        request["prefsrc"] = route.prefsrc

    text = describe_route(route, snapshot.name)
    try:
        ipr.route("add", **request)
    except NetlinkError as error:
        if error.code == errno.EEXIST:
            return
        log.error("cannot restore route %s: %s", text, error)
        return
    log.info("restored route %s", text)


def describe_route(route: RouteEntry, device: str) -> str:
    """Format a route the way `ip route` prints it, for logs."""
    parts = [f"{route.dst}/{route.dst_len}" if route.dst else "default"]
    if route.gateway:
        parts.append(f"via {route.gateway}")
    parts.append(f"dev {device}")
    if route.metric is not None:
        parts.append(f"metric {route.metric}")
    return " ".join(parts)


def _ip_bytes(family: int, text: str | None) -> bytes:
    return socket.inet_pton(family, text) if text else b""


def interface_proto(snapshot: Snapshot, mac: bytes) -> types_pb2.Interface:
    """Build the Interface message; ``mac`` is the stack's MAC, which differs from the device's on a TAP."""
    return types_pb2.Interface(
        index=snapshot.index,
        name=snapshot.name,
        mac=mac,
        mtu=snapshot.mtu,
        up=snapshot.up,
        loopback=snapshot.loopback,
        addresses=[
            types_pb2.InterfaceAddress(
                ip=_ip_bytes(address.family, address.ip),
                prefix_len=address.prefix_len,
                broadcast=_ip_bytes(address.family, address.broadcast),
                scope=SCOPE_NAMES.get(address.scope, str(address.scope)),
            )
            for address in snapshot.addresses
        ],
    )


def routes_proto(snapshot: Snapshot) -> list[types_pb2.Route]:
    return [
        types_pb2.Route(
            family=4 if route.family == socket.AF_INET else 6,
            dst=_ip_bytes(route.family, route.dst),
            dst_len=route.dst_len,
            gateway=_ip_bytes(route.family, route.gateway),
            device=snapshot.name,
            metric=route.metric or 0,
            prefsrc=_ip_bytes(route.family, route.prefsrc),
            scope=SCOPE_NAMES.get(route.scope, str(route.scope)),
            protocol=PROTOCOL_NAMES.get(route.protocol, str(route.protocol)),
        )
        for route in snapshot.routes
    ]


# The state file keeps a snapshot for a later linkd on the same device: one
# started after a linkd that exited with --on-exit keep, or that was killed,
# finds the device without its addresses and must hand over the ones taken.

def state_path(state_dir: str, name: str) -> str:
    """Return the state file of device ``name`` in this network namespace."""
    netns = os.stat("/proc/self/ns/net").st_ino
    return os.path.join(state_dir, f"{netns}-{name}.json")


def save_state(snapshot: Snapshot, path: str) -> None:
    """Write ``snapshot`` to ``path`` atomically (a rename over the old file)."""
    record = dataclasses.asdict(snapshot)
    record["mac"] = snapshot.mac.hex()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as handle:
        json.dump(record, handle)
    os.replace(temporary, path)


def load_state(path: str, current: Snapshot, log: logging.Logger) -> Snapshot:
    """Return the snapshot saved at ``path`` if it still describes the device, else ``current``.

    A saved snapshot applies when it names the same device and MAC and the
    device has none of its addresses, which is the state a previous linkd
    left it in. Otherwise the kernel owns the addresses again and the file
    is stale.
    """
    try:
        with open(path) as handle:
            record = json.load(handle)
        saved = Snapshot(**{**record, "mac": bytes.fromhex(record["mac"]),
                            "addresses": [Address(**a) for a in record["addresses"]],
                            "routes": [RouteEntry(**r) for r in record["routes"]]})
    except FileNotFoundError:
        return current
    except (OSError, ValueError, TypeError, KeyError) as error:
        log.warning("ignoring unreadable state file %s: %s", path, error)
        return current

    current_ips = {a.ip for a in current.addresses}
    if saved.name != current.name or saved.mac != current.mac or current_ips & {a.ip for a in saved.addresses}:
        log.info("state file %s is stale: %s has its addresses again", path, current.name)
        return current
    saved.index = current.index
    log.info("took over %d addresses and %d routes of %s from the previous linkd (%s)",
             len(saved.addresses), len(saved.routes), saved.name, path)
    return saved
