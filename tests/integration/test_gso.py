"""GSO and checksum offload through the whole stack, on AF_PACKET (veth) and TAP.

Each test runs linkd, stackd and sockd, moves data both ways between the
sandbox and the Linux kernel in a peer namespace over IPv4 or IPv6, and
checks linkd's GSO counters and the frame sizes that a packet socket on the
peer's veth receives. The kernel passes GSO frames across veth and bridges
without cutting them, so a frame over the MTU there is one that the stack
emitted as a GSO frame.
"""

import contextlib
import hashlib
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time

import grpc
import pytest

import netlab
from sandbox_fixture import start_peer_tool
from sandnet import socket as ssock
from sandnet.client import Client
from sandnet.v1 import link_pb2, link_pb2_grpc

pytestmark = pytest.mark.netns

TRANSFER_BYTES = 4 * 1024 * 1024
MTU = 1500
ETHERNET_HEADER_SIZE = 14

# Runs in the peer namespace: count the TCP frames from SRC (IPv4 or IPv6) on
# IFNAME and report the largest frame size, from the IPv4 total length + 14 or
# the IPv6 payload length + 54, until stdin closes. The stack puts no IPv6
# extension headers before TCP, so the next header field names TCP.
SNIFFER = r"""
import json, select, socket, sys
ifname, text = sys.argv[1], sys.argv[2]
family = socket.AF_INET6 if ":" in text else socket.AF_INET
src = socket.inet_pton(family, text)
sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
sniffer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
sniffer.bind((ifname, 0))
print("ready", flush=True)
frames, largest = 0, 0
while True:
    ready, _, _ = select.select([sniffer, sys.stdin], [], [])
    if sniffer in ready:
        data = sniffer.recv(128)
        if family == socket.AF_INET and data[12:14] == b"\x08\x00" and data[23] == 6 and data[26:30] == src:
            frames += 1
            largest = max(largest, int.from_bytes(data[16:18], "big") + 14)
        elif family == socket.AF_INET6 and data[12:14] == b"\x86\xdd" and data[20] == 6 and data[22:38] == src:
            frames += 1
            largest = max(largest, int.from_bytes(data[18:20], "big") + 54)
    elif sys.stdin in ready:
        break
print(json.dumps({"frames": frames, "largest": largest}), flush=True)
"""

# Runs in the peer namespace: a TCP server on [::]:PORT that either reads to
# EOF and prints "LENGTH SHA256" (sink), or sends NBYTES of data seeded with
# SEED and prints its sha256 (source). It prints "ready" once it listens.
PEER6_TOOL = r"""
import hashlib, random, socket, sys
mode, port = sys.argv[1], int(sys.argv[2])
server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("::", port))
server.listen(1)
server.settimeout(120)
print("ready", flush=True)
conn, _ = server.accept()
conn.settimeout(120)
if mode == "sink":
    digest, length = hashlib.sha256(), 0
    while chunk := conn.recv(1 << 20):
        digest.update(chunk)
        length += len(chunk)
    conn.close()
    print(length, digest.hexdigest(), flush=True)
else:
    data = random.Random(int(sys.argv[4])).randbytes(int(sys.argv[3]))
    conn.sendall(data)
    conn.close()
    print(hashlib.sha256(data).hexdigest(), flush=True)
"""


class Sniffer:
    """Largest TCP frame from ``src`` seen on the peer's interface, by the IP header's length field."""

    def __init__(self, ns: netlab.Netns, ifname: str, src: str):
        self.proc = ns.popen(sys.executable, "-c", SNIFFER, ifname, src, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready", self.proc.stderr.read()

    def result(self) -> dict:
        out, err = self.proc.communicate(input="", timeout=30)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])


@contextlib.contextmanager
def veth_lab():
    """Yield (sandbox ns, device spec, peer ns, peer interface, peer ip, sandbox ip)."""
    with netlab.topology(mtu=MTU) as topo:
        yield topo.sandbox, f"veth:{topo.sandbox_if}", topo.peer, topo.peer_if, topo.peer_ip, topo.sandbox_ip


@contextlib.contextmanager
def tap_lab():
    """A TAP with the stack's address on a bridge in the sandbox, and a peer on a veth to that bridge."""
    subnet = f"10.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
    tap = netlab.unique_name("snt")
    with netlab.Netns() as sandbox, netlab.Netns() as peer:
        netlab.veth_pair(sandbox, "snveth0", peer, "snveth1", MTU)
        peer.run("ip", "addr", "add", f"{subnet}.1/24", "dev", "snveth1")
        sandbox.run("ip", "link", "add", "snbridge0", "type", "bridge")
        sandbox.run("ip", "link", "set", "snveth0", "master", "snbridge0")
        sandbox.run("ip", "link", "set", "snbridge0", "up")
        sandbox.run("ip", "tuntap", "add", "dev", tap, "mode", "tap")
        sandbox.run("ip", "addr", "add", f"{subnet}.2/24", "dev", tap)
        sandbox.run("ip", "link", "set", tap, "master", "snbridge0", "up")
        yield sandbox, f"tap:{tap}", peer, "snveth1", f"{subnet}.1", f"{subnet}.2"


@contextlib.contextmanager
def veth_lab6():
    """The veth lab with the IPv6 addresses of both ends in place of the IPv4 ones."""
    with netlab.topology(mtu=MTU) as topo:
        yield topo.sandbox, f"veth:{topo.sandbox_if}", topo.peer, topo.peer_if, topo.peer_ip6, topo.sandbox_ip6


@contextlib.contextmanager
def tap_lab6():
    """The TAP lab with IPv6 addresses (no DAD, so usable at once) on the peer and the TAP."""
    subnet = f"fd00:5d:{secrets.randbelow(0xFFFF):x}"
    with tap_lab() as env:
        sandbox, device, peer, peer_if = env[:4]
        peer.run("ip", "-6", "addr", "add", f"{subnet}::1/64", "dev", peer_if, "nodad")
        sandbox.run("ip", "-6", "addr", "add", f"{subnet}::2/64", "dev", device.removeprefix("tap:"), "nodad")
        yield sandbox, device, peer, peer_if, f"{subnet}::1", f"{subnet}::2"


LABS = {"veth": veth_lab, "tap": tap_lab, "veth6": veth_lab6, "tap6": tap_lab6}


@contextlib.contextmanager
def sandbox_services(lab: str, gso: str):
    """Start linkd with ``--gso=GSO``, stackd and sockd on a lab; yield (lab tuple, client, linkd stub, linkd process)."""
    with LABS[lab]() as env, tempfile.TemporaryDirectory(prefix="sn") as tmp:
        sandbox, device = env[0], env[1]
        paths = [os.path.join(tmp, name) for name in ("linkd.sock", "stackd.sock", "sockd.sock")]
        with netlab.start_linkd(sandbox, device, paths[0], extra=[f"--gso={gso}"]) as linkd, \
                netlab.start_stackd(paths[0], paths[1]), netlab.start_sockd(paths[1], paths[2]), \
                grpc.insecure_channel(f"unix:{paths[0]}") as channel:
            client = Client(f"unix:{paths[2]}")
            try:
                yield env, client, link_pb2_grpc.LinkStub(channel), linkd
            finally:
                client.close()


def start_peer6(peer: netlab.Netns, *args) -> subprocess.Popen:
    """Start PEER6_TOOL in ``peer`` with ``args`` and wait for its "ready" line."""
    proc = peer.popen(sys.executable, "-c", PEER6_TOOL, *map(str, args),
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise AssertionError(f"IPv6 peer tool {args} did not start: {line!r} {proc.stderr.read()}")
    return proc


def start_peer(lab: str, peer: netlab.Netns, *args) -> subprocess.Popen:
    """Start the sink or source for the lab's family: peer_tools.py for IPv4, PEER6_TOOL for IPv6."""
    return start_peer6(peer, *args) if lab.endswith("6") else start_peer_tool(peer, *args)


def lab_socket(lab: str, client: Client) -> ssock.socket:
    family = ssock.AF_INET6 if lab.endswith("6") else ssock.AF_INET
    conn = ssock.socket(family, ssock.SOCK_STREAM, client=client)
    conn.settimeout(60)
    return conn


def send_to_peer(lab: str, client: Client, peer: netlab.Netns, peer_ip: str, port: int) -> None:
    data = random.Random(port).randbytes(TRANSFER_BYTES)
    proc = start_peer(lab, peer, "sink", port)
    conn = lab_socket(lab, client)
    conn.connect((peer_ip, port))
    conn.sendall(data)
    conn.close()
    length, digest = proc.communicate(timeout=60)[0].split()
    assert int(length) == TRANSFER_BYTES
    assert digest == hashlib.sha256(data).hexdigest()


def receive_from_peer(lab: str, client: Client, peer: netlab.Netns, peer_ip: str, port: int) -> None:
    proc = start_peer(lab, peer, "source", port, TRANSFER_BYTES, 5)
    conn = lab_socket(lab, client)
    conn.connect((peer_ip, port))
    digest, length = hashlib.sha256(), 0
    while chunk := conn.recv(1 << 20):
        digest.update(chunk)
        length += len(chunk)
    conn.close()
    assert length == TRANSFER_BYTES
    assert digest.hexdigest() == proc.communicate(timeout=60)[0].strip()


def link_stats(stub: link_pb2_grpc.LinkStub) -> link_pb2.LinkStats:
    return stub.GetStats(link_pb2.GetStatsRequest(), timeout=10)


ALL_LABS = ["veth", "tap", "veth6", "tap6"]


@pytest.mark.parametrize("lab", ALL_LABS)
def test_gso_frames_emitted_and_accepted(lab):
    with sandbox_services(lab, "true") as (env, client, stub, linkd):
        _, _, peer, peer_if, peer_ip, sandbox_ip = env
        config = stub.GetConfig(link_pb2.GetConfigRequest(), timeout=10)
        assert config.offloads.vnet_header
        assert config.offloads.tso4
        assert config.offloads.tso6

        sniffer = Sniffer(peer, peer_if, sandbox_ip)
        send_to_peer(lab, client, peer, peer_ip, 9301)
        seen = sniffer.result()
        receive_from_peer(lab, client, peer, peer_ip, 9302)

        # Only the lab's family moved bulk data, so the GSO frames both ways are of that family.
        stats = link_stats(stub)
        assert stats.tx_gso_frames > 0
        assert stats.rx_gso_frames > 0
        assert stats.tx_dropped == 0
        assert stats.rx_invalid == 0
        assert seen["largest"] > MTU + ETHERNET_HEADER_SIZE
    assert "GSO frames out" in linkd.log_text()


@pytest.mark.parametrize("lab", ALL_LABS)
def test_gso_false_frames_within_mtu(lab):
    with sandbox_services(lab, "false") as (env, client, stub, linkd):
        _, _, peer, peer_if, peer_ip, sandbox_ip = env
        config = stub.GetConfig(link_pb2.GetConfigRequest(), timeout=10)
        assert not config.offloads.vnet_header
        assert not config.offloads.tx_checksum
        assert config.offloads.max_frame_size == MTU + ETHERNET_HEADER_SIZE

        sniffer = Sniffer(peer, peer_if, sandbox_ip)
        send_to_peer(lab, client, peer, peer_ip, 9303)
        seen = sniffer.result()

        stats = link_stats(stub)
        assert stats.tx_gso_frames == 0
        assert stats.tx_dropped == 0
        assert seen["frames"] > TRANSFER_BYTES // MTU
        assert seen["largest"] <= MTU + ETHERNET_HEADER_SIZE


@pytest.mark.parametrize("lab", ALL_LABS)
def test_software_gso_cuts_frames(lab):
    with sandbox_services(lab, "software") as (env, client, stub, linkd):
        _, _, peer, peer_if, peer_ip, sandbox_ip = env
        config = stub.GetConfig(link_pb2.GetConfigRequest(), timeout=10)
        assert not config.offloads.vnet_header
        assert config.offloads.software_gso
        assert config.offloads.tso6

        sniffer = Sniffer(peer, peer_if, sandbox_ip)
        send_to_peer(lab, client, peer, peer_ip, 9304)
        seen = sniffer.result()
        receive_from_peer(lab, client, peer, peer_ip, 9305)

        stats = link_stats(stub)
        assert stats.tx_gso_frames > 0
        assert stats.tx_gso_segments > stats.tx_gso_frames
        assert stats.tx_dropped == 0
        assert seen["largest"] <= MTU + ETHERNET_HEADER_SIZE
    assert "software GSO in linkd" in linkd.log_text()


@pytest.mark.parametrize("gso", ["true", "software"])
def test_bad_gso_frames_counted_and_dropped(gso):
    from test_linkd import arp_request, frame_stream, is_arp_reply

    with netlab.topology() as topo, tempfile.TemporaryDirectory(prefix="sn") as tmp:
        with netlab.start_linkd(topo.sandbox, f"veth:{topo.sandbox_if}", f"{tmp}/linkd.sock",
                                extra=[f"--gso={gso}"]) as linkd, \
                grpc.insecure_channel(f"unix:{tmp}/linkd.sock") as channel:
            stub = link_pb2_grpc.LinkStub(channel)
            mac = stub.GetConfig(link_pb2.GetConfigRequest(), timeout=10).interface.mac
            valid = arp_request(mac, topo.sandbox_ip, topo.peer_ip)
            tcp_gso = link_pb2.GsoInfo(flags=1, gso_type=1, hdr_len=54, gso_size=1448, csum_start=34, csum_offset=16)

            with frame_stream(stub) as stream:
                stream.send(
                    # A GSO frame with gso_size 0.
                    link_pb2.Frame(data=valid + bytes(3000), gso=link_pb2.GsoInfo(
                        flags=1, gso_type=1, hdr_len=54, gso_size=0, csum_start=34, csum_offset=16)),
                    # An unknown GSO type.
                    link_pb2.Frame(data=valid + bytes(3000), gso=link_pb2.GsoInfo(
                        flags=1, gso_type=7, gso_size=1448, csum_start=34, csum_offset=16)),
                    # Checksum offsets past the end of the frame.
                    link_pb2.Frame(data=valid, gso=link_pb2.GsoInfo(flags=1, csum_start=40, csum_offset=60000)),
                    # A frame larger than the largest GSO frame.
                    link_pb2.Frame(data=valid + bytes(70000), gso=tcp_gso),
                    # A plain frame over the MTU.
                    link_pb2.Frame(data=valid + bytes(MTU)),
                    # GSO without NEEDS_CSUM.
                    link_pb2.Frame(data=valid + bytes(3000), gso=link_pb2.GsoInfo(gso_type=1, gso_size=1448)),
                )
                stream.send(link_pb2.Frame(data=valid))
                stream.wait_for(lambda frame: is_arp_reply(frame, topo.peer_ip, mac))

            stats = link_stats(stub)
            assert stats.tx_dropped == 6
            assert stats.tx_frames == 1
            assert linkd.process.poll() is None
        assert "dropped a frame" in linkd.log_text()


def test_software_gso_drops_frame_it_cannot_cut():
    from test_linkd import arp_request, frame_stream, is_arp_reply

    with netlab.topology() as topo, tempfile.TemporaryDirectory(prefix="sn") as tmp:
        with netlab.start_linkd(topo.sandbox, f"veth:{topo.sandbox_if}", f"{tmp}/linkd.sock",
                                extra=["--gso=software"]) as linkd, \
                grpc.insecure_channel(f"unix:{tmp}/linkd.sock") as channel:
            stub = link_pb2_grpc.LinkStub(channel)
            mac = stub.GetConfig(link_pb2.GetConfigRequest(), timeout=10).interface.mac
            valid = arp_request(mac, topo.sandbox_ip, topo.peer_ip)
            with frame_stream(stub) as stream:
                # An ARP frame that claims to be a TCPv4 GSO frame.
                stream.send(link_pb2.Frame(data=valid + bytes(3000), gso=link_pb2.GsoInfo(
                    flags=1, gso_type=1, hdr_len=54, gso_size=1448, csum_start=34, csum_offset=16)))
                stream.send(link_pb2.Frame(data=valid))
                stream.wait_for(lambda frame: is_arp_reply(frame, topo.peer_ip, mac))
            stats = link_stats(stub)
            assert stats.tx_dropped == 1
            assert stats.tx_gso_segments == 0
        assert "ethertype 0x0806" in linkd.log_text()


def test_gso_flag_rejects_unknown_value():
    result = subprocess.run([f"{netlab.BIN_DIR}/sandnet-linkd", "--device", "veth:sn0", "--listen", "unix:/tmp/sn.sock",
                             "--gso", "maybe"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "'maybe'" in result.stderr
    assert "true, software, false" in result.stderr


def test_linkd_restart_with_other_offloads_warns():
    with netlab.topology() as topo, tempfile.TemporaryDirectory(prefix="sn") as tmp:
        link_path, stack_path = f"{tmp}/linkd.sock", f"{tmp}/stackd.sock"
        with netlab.start_linkd(topo.sandbox, f"veth:{topo.sandbox_if}", link_path, gso=True) as first:
            stackd = netlab.start_stackd(link_path, stack_path)
            with stackd:
                first.stop()
                with netlab.start_linkd(topo.sandbox, f"veth:{topo.sandbox_if}", link_path, gso=False):
                    deadline = time.monotonic() + 30
                    while "changed its offloads" not in stackd.log_text() and time.monotonic() < deadline:
                        time.sleep(0.2)
                    log = stackd.log_text()
        assert "largest GSO packet 65535 bytes" in log
        assert "changed its offloads (checksum off, largest GSO packet 0 bytes)" in log


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def test_slow_reader_applies_back_pressure():
    """A reader that stalls closes the TCP window: the GRO path queues no more than the receive buffer."""
    size = 64 * 1024 * 1024
    with veth_lab() as env, tempfile.TemporaryDirectory(prefix="sn") as tmp:
        sandbox, device, peer, _, peer_ip, _ = env
        paths = [os.path.join(tmp, name) for name in ("linkd.sock", "stackd.sock", "sockd.sock")]
        with netlab.start_linkd(sandbox, device, paths[0]), netlab.start_stackd(paths[0], paths[1]) as stackd, \
                netlab.start_sockd(paths[1], paths[2]), grpc.insecure_channel(f"unix:{paths[0]}") as channel:
            stub = link_pb2_grpc.LinkStub(channel)
            client = Client(f"unix:{paths[2]}")
            try:
                proc = start_peer_tool(peer, "source", 9306, size, 9)
                conn = ssock.socket(client=client)
                conn.settimeout(60)
                conn.connect((peer_ip, 9306))
                # Frames that arrived before stackd attached were dropped, so count from here.
                dropped_before = link_stats(stub).rx_dropped
                rss_before = rss_bytes(stackd.pid)
                time.sleep(3)
                rss_stalled = rss_bytes(stackd.pid)

                digest, length = hashlib.sha256(), 0
                while chunk := conn.recv(1 << 20):
                    digest.update(chunk)
                    length += len(chunk)
                conn.close()
            finally:
                client.close()
            dropped_after = link_stats(stub).rx_dropped

        assert length == size
        assert digest.hexdigest() == proc.communicate(timeout=60)[0].strip()
        assert rss_stalled - rss_before < 16 * 1024 * 1024
        assert dropped_after == dropped_before
