"""Formatting of Netinfo replies as ip addr, ip route and ss print them."""

import ipaddress
import socket

from sandnet import netfmt
from sandnet.v1 import sockets_pb2, types_pb2


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def sample_interfaces() -> sockets_pb2.InterfaceList:
    loopback = types_pb2.Interface(index=1, name="lo", mtu=65536, up=True, loopback=True, addresses=[
        types_pb2.InterfaceAddress(ip=packed("127.0.0.1"), prefix_len=8, scope="host"),
        types_pb2.InterfaceAddress(ip=packed("::1"), prefix_len=128, scope="host"),
    ])
    ethernet = types_pb2.Interface(index=2, name="eth0", mac=bytes.fromhex("02005e0000a1"), mtu=1500, up=True,
                                   addresses=[
        types_pb2.InterfaceAddress(ip=packed("10.0.0.2"), prefix_len=24, broadcast=packed("10.0.0.255"),
                                   scope="global"),
        types_pb2.InterfaceAddress(ip=packed("fe80::1"), prefix_len=64, scope="link"),
    ])
    down = types_pb2.Interface(index=3, name="eth1", mac=bytes.fromhex("02005e0000a2"), mtu=9000, up=False)
    return sockets_pb2.InterfaceList(interfaces=[loopback, ethernet, down])


def test_ip_addr_layout():
    assert netfmt.format_ip_addr(sample_interfaces()).splitlines() == [
        "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 state UNKNOWN",
        "    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00",
        "    inet 127.0.0.1/8 scope host lo",
        "    inet6 ::1/128 scope host",
        "2: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 state UP",
        "    link/ether 02:00:5e:00:00:a1 brd ff:ff:ff:ff:ff:ff",
        "    inet 10.0.0.2/24 brd 10.0.0.255 scope global eth0",
        "    inet6 fe80::1/64 scope link",
        "3: eth1: <BROADCAST,MULTICAST> mtu 9000 state DOWN",
        "    link/ether 02:00:5e:00:00:a2 brd ff:ff:ff:ff:ff:ff",
    ]


def test_ip_addr_empty_list():
    assert netfmt.format_ip_addr(sockets_pb2.InterfaceList()) == ""


def sample_routes() -> sockets_pb2.RouteList:
    return sockets_pb2.RouteList(routes=[
        types_pb2.Route(family=4, gateway=packed("10.0.0.1"), device="eth0", protocol="boot"),
        types_pb2.Route(family=4, dst=packed("10.0.0.0"), dst_len=24, device="eth0", prefsrc=packed("10.0.0.2"),
                        scope="link", protocol="kernel"),
        types_pb2.Route(family=4, dst=packed("192.0.2.9"), dst_len=32, gateway=packed("10.0.0.1"), device="eth0",
                        protocol="static", metric=100),
        types_pb2.Route(family=6, dst=packed("fd00::"), dst_len=64, device="eth0", protocol="kernel", metric=256),
    ])


def test_ip_route_ipv4():
    assert netfmt.format_ip_route(sample_routes(), 4).splitlines() == [
        "default via 10.0.0.1 dev eth0",
        "10.0.0.0/24 dev eth0 proto kernel scope link src 10.0.0.2",
        "192.0.2.9 via 10.0.0.1 dev eth0 proto static metric 100",
    ]


def test_ip_route_ipv6():
    assert netfmt.format_ip_route(sample_routes(), 6) == "fd00::/64 dev eth0 proto kernel metric 256\n"


def test_ss_table():
    listener = sockets_pb2.SocketInfo(fd=3, family=socket.AF_INET, type=socket.SOCK_STREAM, state="LISTEN",
                                      local=types_pb2.SockAddr(ip=packed("127.0.0.1"), port=8080))
    connected = sockets_pb2.SocketInfo(fd=4, family=socket.AF_INET6, type=socket.SOCK_STREAM, state="ESTAB",
                                       local=types_pb2.SockAddr(ip=packed("::1"), port=40000),
                                       remote=types_pb2.SockAddr(ip=packed("::1"), port=8080),
                                       recv_queue=5, send_queue=17)
    datagram = sockets_pb2.SocketInfo(fd=5, family=socket.AF_INET, type=socket.SOCK_DGRAM, state="UNCONN",
                                      local=types_pb2.SockAddr(port=53))
    ping = sockets_pb2.SocketInfo(fd=6, family=socket.AF_INET, type=socket.SOCK_DGRAM,
                                  protocol=socket.IPPROTO_ICMP, state="UNCONN")
    lines = netfmt.format_ss(sockets_pb2.SocketList(sockets=[datagram, connected, listener, ping])).splitlines()

    assert lines[0].split() == ["Netid", "State", "Recv-Q", "Send-Q", "Local", "Address:Port", "Peer",
                                "Address:Port"]
    # Rows are sorted by protocol, then by descriptor.
    rows = [line.split() for line in lines[1:]]
    assert rows == [
        ["icmp", "UNCONN", "0", "0", "0.0.0.0:0", "0.0.0.0:*"],
        ["tcp", "LISTEN", "0", "0", "127.0.0.1:8080", "0.0.0.0:*"],
        ["tcp", "ESTAB", "5", "17", "[::1]:40000", "[::1]:8080"],
        ["udp", "UNCONN", "0", "0", "0.0.0.0:53", "0.0.0.0:*"],
    ]


def test_ss_columns_align():
    info = sockets_pb2.SocketInfo(fd=3, family=socket.AF_INET, type=socket.SOCK_STREAM, state="LISTEN",
                                  local=types_pb2.SockAddr(ip=packed("127.0.0.1"), port=8080))
    header, row = netfmt.format_ss(sockets_pb2.SocketList(sockets=[info])).splitlines()
    # Local addresses are right-aligned under their header, as in ss.
    assert header.index("Local Address:Port") + len("Local Address:Port") == row.index("127.0.0.1:8080") + len(
        "127.0.0.1:8080")
