"""Fragmentation, reassembly, path MTU discovery and ICMP errors through a
router namespace whose path towards the peer carries at most 1280 bytes.

The router is the Linux kernel. It fragments IPv4 datagrams without DF,
sends fragmentation needed for IPv4 datagrams with DF and Packet Too Big
for every oversized IPv6 packet, and sends destination unreachable for
addresses it cannot reach.
"""

import errno
import hashlib
import os
import random
import subprocess
import sys
import tempfile
import time

import pytest

import netlab
from sandnet import socket as ssock
from sandnet.client import Client

pytestmark = pytest.mark.netns

PATH_MTU = 1280
IP_MTU = 14  # from <linux/in.h> and <linux/in6.h>
IPV6_MTU = 24
TRANSFER_BYTES = 20 * 1024 * 1024

# Peer programs, each on [::] so that both families reach them; they print "ready".
PEER_UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(65535)
    s.sendto(data, addr)
"""
PEER_SINK = """
import hashlib, socket, sys
server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("::", int(sys.argv[1])))
server.listen(1)
server.settimeout(120)
print("ready", flush=True)
conn, _ = server.accept()
conn.settimeout(120)
digest, length = hashlib.sha256(), 0
while chunk := conn.recv(1 << 20):
    digest.update(chunk)
    length += len(chunk)
print(length, digest.hexdigest(), flush=True)
"""


class RoutedSandbox:
    def __init__(self, topo: netlab.RouterTopology, client: Client, services):
        self.topo = topo
        self.client = client
        self.services = services

    def counter(self, name: str) -> int:
        return next((c.value for c in self.client.info("GetCounters").counters if c.name == name), 0)

    def logs(self) -> str:
        return "\n".join(f"--- {proc.argv[0]} ---\n{proc.log_text()}" for proc in self.services)


@pytest.fixture(scope="module")
def routed():
    with netlab.router_topology(PATH_MTU) as topo, tempfile.TemporaryDirectory(prefix="sandnet-") as workdir:
        link_path, stack_path, sockd_path = (os.path.join(workdir, n) for n in ("linkd.sock", "stackd.sock", "sockd.sock"))
        with netlab.start_linkd(topo.sandbox, f"veth:{topo.sandbox_if}", link_path) as linkd, \
                netlab.start_stackd(link_path, stack_path) as stackd, \
                netlab.start_sockd(stack_path, sockd_path) as sockd:
            client = Client(f"unix:{sockd_path}")
            box = RoutedSandbox(topo, client, (linkd, stackd, sockd))
            try:
                yield box
            finally:
                client.close()
                print(box.logs())


def start_peer(routed, code: str, *args) -> subprocess.Popen:
    proc = routed.topo.peer.popen(sys.executable, "-c", code, *map(str, args), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line == "ready", f"peer program did not start: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
    return proc


def echo_with_retries(udp, payload: bytes, target: tuple, attempts: int = 5) -> bytes | None:
    """Send ``payload`` until its echo comes back; the first attempts may die at the router."""
    udp.settimeout(2)
    for _ in range(attempts):
        udp.sendto(payload, target)
        try:
            return udp.recvfrom(65535)[0]
        except TimeoutError:
            continue
    return None


def test_router_ping_both_families(routed):
    for target in (routed.topo.peer_ip, routed.topo.peer_ip6):
        result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "sandnet"), "--sockd",
                                 routed.client.endpoint, "ping", "-c", "1", "-W", "3", target],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr


def test_large_udp4_datagram_is_fragmented_and_reassembled(routed):
    peer = start_peer(routed, PEER_UDP_ECHO, 7001)
    try:
        udp = ssock.socket(ssock.AF_INET, ssock.SOCK_DGRAM, client=routed.client)
        payload = random.Random(4).randbytes(6000)
        # The stack fragments at 1500 bytes, the router again at 1280, the
        # peer reassembles, and the stack reassembles the echo.
        assert echo_with_retries(udp, payload, (routed.topo.peer_ip, 7001)) == payload
        udp.close()
        assert routed.counter("Ip.FragCreates") >= 5
        assert routed.counter("Ip.ReasmOKs") >= 1
    finally:
        peer.kill()
        peer.wait()


def test_large_udp6_datagram_follows_packet_too_big(routed):
    peer = start_peer(routed, PEER_UDP_ECHO, 7002)
    try:
        udp = ssock.socket(ssock.AF_INET6, ssock.SOCK_DGRAM, client=routed.client)
        payload = random.Random(6).randbytes(6000)
        # IPv6 routers never fragment: the first datagram's 1500-byte fragments
        # draw Packet Too Big, and the next one is fragmented at 1280 bytes.
        assert echo_with_retries(udp, payload, (routed.topo.peer_ip6, 7002)) == payload
        udp.close()
        assert routed.counter("Icmp6.InPktTooBigs") >= 1
        assert routed.counter("Ip6.FragCreates") >= 5
        assert routed.counter("Ip6.ReasmOKs") >= 1
    finally:
        peer.kill()
        peer.wait()


@pytest.mark.parametrize("family", [ssock.AF_INET, ssock.AF_INET6])
def test_tcp_discovers_path_mtu_and_finishes_transfer(routed, family):
    port = 7100 + family
    peer = start_peer(routed, PEER_SINK, port)
    try:
        target = routed.topo.peer_ip if family == ssock.AF_INET else routed.topo.peer_ip6
        data = random.Random(family).randbytes(TRANSFER_BYTES)
        conn = ssock.socket(family, ssock.SOCK_STREAM, client=routed.client)
        conn.settimeout(60)
        conn.connect((target, port))
        started = time.monotonic()
        view = memoryview(data)
        for offset in range(0, len(view), 1 << 20):
            conn.sendall(view[offset:offset + (1 << 20)])
        conn.shutdown(ssock.SHUT_WR)
        out, err = peer.communicate(timeout=180)
        elapsed = time.monotonic() - started
        level, option = (ssock.IPPROTO_IP, IP_MTU) if family == ssock.AF_INET else (ssock.IPPROTO_IPV6, IPV6_MTU)
        path_mtu = conn.getsockopt(level, option)
        conn.close()
        assert out.split() == [str(TRANSFER_BYTES), hashlib.sha256(data).hexdigest()], err
        assert path_mtu == PATH_MTU
        header = 40 if family == ssock.AF_INET else 60
        print(f"{TRANSFER_BYTES} bytes over a {PATH_MTU}-byte path MTU in {elapsed:.1f} s "
              f"(MSS {PATH_MTU - header})")
        if family == ssock.AF_INET:
            assert routed.counter("Icmp.InDestUnreachs") >= 1
        else:
            assert routed.counter("Icmp6.InPktTooBigs") >= 1
    finally:
        peer.kill()
        peer.wait()


@pytest.mark.parametrize("target", ["10.255.{low}.9", "fd00:5d:{low:x}::9"])
def test_connect_without_route_at_router_is_enetunreach(routed, target):
    # The router has no route to this made-up subnet, so it sends destination
    # unreachable (no route), and nothing leaves the namespaces.
    low = int(routed.topo.sandbox_ip.split(".")[2])
    address = target.format(low=low)
    family = ssock.AF_INET6 if ":" in address else ssock.AF_INET
    conn = ssock.socket(family, ssock.SOCK_STREAM, client=routed.client)
    conn.settimeout(20)
    assert conn.connect_ex((address, 80)) == errno.ENETUNREACH
    conn.close()


@pytest.mark.parametrize("family", [ssock.AF_INET, ssock.AF_INET6])
def test_connect_to_missing_host_behind_router_is_ehostunreach(routed, family):
    # The router's neighbor resolution for this address on the peer's link
    # fails after about 3 s, and it sends host (address) unreachable.
    address = routed.topo.peer_ip.rsplit(".", 1)[0] + ".99" if family == ssock.AF_INET \
        else routed.topo.peer_ip6.rsplit(":", 1)[0] + ":99"
    conn = ssock.socket(family, ssock.SOCK_STREAM, client=routed.client)
    conn.settimeout(30)
    assert conn.connect_ex((address, 80)) == errno.EHOSTUNREACH
    conn.close()
