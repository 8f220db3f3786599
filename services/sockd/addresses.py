"""Convert between the contract's SockAddr and the address tuples of Python's socket module.

Checks follow Linux: an address of the wrong length for the socket's family
or a port above 65535 is EINVAL; a family other than IPv4 or IPv6 is
EAFNOSUPPORT. Failures raise OSError with that errno, so callers map every
socket-level failure the same way.
"""

import errno
import ipaddress
import os
import socket

from sandnet.v1 import types_pb2

IP_LENGTHS = {socket.AF_INET: 4, socket.AF_INET6: 16}


def invalid(code: int, detail: str) -> OSError:
    """Build the OSError that a failed socket call raises, with a detail for logs."""
    return OSError(code, f"{os.strerror(code)}: {detail}")


def to_host(family: int, addr: types_pb2.SockAddr) -> tuple:
    """Convert a SockAddr to the tuple that socket.bind/connect/sendto take for ``family``."""
    if family not in IP_LENGTHS:
        raise invalid(errno.EAFNOSUPPORT, f"address family {family}")
    if len(addr.ip) not in (0, IP_LENGTHS[family]):
        raise invalid(errno.EINVAL, f"{len(addr.ip)}-byte address for address family {family}")
    if addr.port > 0xFFFF:
        raise invalid(errno.EINVAL, f"port {addr.port} is above 65535")

    if family == socket.AF_INET:
        host = socket.inet_ntop(family, addr.ip) if addr.ip else "0.0.0.0"
        return (host, addr.port)
    host = socket.inet_ntop(family, addr.ip) if addr.ip else "::"
    return (host, addr.port, addr.flowinfo, addr.scope_id)


def from_host(address: object) -> types_pb2.SockAddr:
    """Convert an address tuple from the socket module to a SockAddr; other values give an empty one."""
    if not isinstance(address, tuple) or len(address) < 2:
        return types_pb2.SockAddr()
    host = address[0].partition("%")[0]
    ip = ipaddress.ip_address(host).packed
    if len(address) == 4:
        return types_pb2.SockAddr(ip=ip, port=address[1], flowinfo=address[2], scope_id=address[3])
    return types_pb2.SockAddr(ip=ip, port=address[1])


def is_loopback(family: int, addr: types_pb2.SockAddr) -> bool:
    """Tell whether ``addr`` reaches only this host: 127.0.0.0/8, ::1, or a v4-mapped 127.x.

    An empty or all-zero address counts as loopback because Linux connects a
    wildcard destination to the local host.
    """
    if not addr.ip:
        return True
    try:
        ip = ipaddress.ip_address(addr.ip)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # 0.0.0.0 and :: as a destination mean the local host, as the empty address does.
    return ip.is_loopback or ip.is_unspecified
