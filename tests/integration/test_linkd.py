"""Integration tests of sandnet-linkd on real veth and TAP devices in network namespaces.

The peer is the Linux kernel in another namespace; frames go through the
Frames stream as stackd would send them.
"""

import contextlib
import json
import queue
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time

import dpkt
import grpc
import pytest

import netlab
from sandnet.v1 import link_pb2, link_pb2_grpc

pytestmark = pytest.mark.netns

BROADCAST_MAC = b"\xff" * 6
STREAM_WAIT_SECONDS = 20


class FrameStream:
    """A Frames call driven from the test: ``send()`` queues batches, ``wait_for()`` reads received frames."""

    def __init__(self, stub: link_pb2_grpc.LinkStub):
        self._outgoing: queue.Queue[link_pb2.FrameBatch | None] = queue.Queue()
        self.received: queue.Queue[link_pb2.Frame] = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.call = stub.Frames(self._requests())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _requests(self):
        while True:
            batch = self._outgoing.get()
            if batch is None:
                return
            yield batch

    def _read(self) -> None:
        try:
            for batch in self.call:
                for frame in batch.frames:
                    self.received.put(frame)
        except grpc.RpcError as error:
            self.error = error

    def send(self, *frames: link_pb2.Frame) -> None:
        self._outgoing.put(link_pb2.FrameBatch(frames=frames))

    def wait_for(self, predicate, timeout: float = STREAM_WAIT_SECONDS) -> link_pb2.Frame:
        """Return the first received frame that matches ``predicate``; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                frame = self.received.get(timeout=0.2)
            except queue.Empty:
                assert self.error is None, f"Frames stream failed: {self.error}"
                continue
            if predicate(frame):
                return frame
        raise AssertionError(f"no matching frame arrived on the Frames stream within {timeout} s")

    def close(self) -> None:
        self.call.cancel()
        self._outgoing.put(None)
        self._reader.join(timeout=10)


@contextlib.contextmanager
def link_client(socket_path: str):
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        yield link_pb2_grpc.LinkStub(channel)


@contextlib.contextmanager
def frame_stream(stub: link_pb2_grpc.LinkStub):
    stream = FrameStream(stub)
    try:
        yield stream
    finally:
        stream.close()


def arp_request(src_mac: bytes, src_ip: str, target_ip: str) -> bytes:
    arp = dpkt.arp.ARP(
        op=dpkt.arp.ARP_OP_REQUEST,
        sha=src_mac,
        spa=socket.inet_aton(src_ip),
        tha=b"\x00" * 6,
        tpa=socket.inet_aton(target_ip),
    )
    return bytes(dpkt.ethernet.Ethernet(dst=BROADCAST_MAC, src=src_mac, type=dpkt.ethernet.ETH_TYPE_ARP, data=arp))


def is_arp_reply(frame: link_pb2.Frame, from_ip: str, to_mac: bytes) -> bool:
    ethernet = dpkt.ethernet.Ethernet(frame.data)
    if ethernet.type != dpkt.ethernet.ETH_TYPE_ARP:
        return False
    arp = ethernet.data
    return arp.op == dpkt.arp.ARP_OP_REPLY and arp.spa == socket.inet_aton(from_ip) and arp.tha == to_mac


def ipv4_packet(frame: link_pb2.Frame):
    ethernet = dpkt.ethernet.Ethernet(frame.data)
    if ethernet.type != dpkt.ethernet.ETH_TYPE_IP:
        return None
    return ethernet.data


def kernel_addresses(ns: netlab.Netns, device: str) -> set[tuple[str, int]]:
    links = json.loads(ns.run("ip", "-j", "addr", "show", "dev", device).stdout)
    return {(info["local"], info["prefixlen"]) for link in links for info in link.get("addr_info", [])}


def kernel_routes(ns: netlab.Netns, device: str) -> set[tuple[str, str, str]]:
    routes = set()
    for family in ("-4", "-6"):
        for route in json.loads(ns.run("ip", "-j", family, "route", "show", "dev", device).stdout):
            routes.add((family, route["dst"], route.get("gateway", "")))
    return routes


def test_address_takeover_and_restore():
    with netlab.topology() as topo, tempfile.TemporaryDirectory(prefix="sn") as tmp:
        addresses_before = kernel_addresses(topo.sandbox, topo.sandbox_if)
        routes_before = kernel_routes(topo.sandbox, topo.sandbox_if)
        assert (topo.sandbox_ip, 24) in addresses_before
        assert ("-4", "default", topo.peer_ip) in routes_before
        assert ("-6", "default", topo.peer_ip6) in routes_before

        linkd = netlab.start_linkd(topo.sandbox, f"veth:{topo.sandbox_if}", f"{tmp}/linkd.sock")
        with linkd, link_client(f"{tmp}/linkd.sock") as stub:
            config = stub.GetConfig(link_pb2.GetConfigRequest(), timeout=10)

            assert config.interface.name == topo.sandbox_if
            assert config.interface.mtu == 1500
            assert len(config.interface.mac) == 6
            config_addresses = {(socket.inet_ntop(socket.AF_INET if len(a.ip) == 4 else socket.AF_INET6, a.ip), a.prefix_len)
                     for a in config.interface.addresses}
            assert config_addresses == addresses_before
            scopes = {a.scope for a in config.interface.addresses}
            assert scopes == {"global", "link"}

            routes = {(r.family, r.dst_len, r.gateway, r.protocol) for r in config.routes}
            assert (4, 0, socket.inet_aton(topo.peer_ip), "boot") in routes
            assert (6, 0, socket.inet_pton(socket.AF_INET6, topo.peer_ip6), "boot") in routes
            assert (4, 24, b"", "kernel") in routes
            assert all(r.device == topo.sandbox_if for r in config.routes)

            assert config.offloads.vnet_header
            assert config.offloads.max_frame_size >= 1514

            assert kernel_addresses(topo.sandbox, topo.sandbox_if) == set()
            ping = topo.peer.run("ping", "-c", "2", "-i", "0.2", "-W", "1", topo.sandbox_ip, check=False)
            assert ping.returncode != 0, ping.stdout

            assert linkd.stop() == 0
            log = linkd.log_text()

        assert "restored address" in log
        assert kernel_addresses(topo.sandbox, topo.sandbox_if) == addresses_before
        assert kernel_routes(topo.sandbox, topo.sandbox_if) == routes_before
        ping = topo.peer.run("ping", "-c", "1", "-W", "2", topo.sandbox_ip, check=False)
        assert ping.returncode == 0, ping.stdout


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "no-gso"])
def test_veth_frames_reach_peer(gso):
    with netlab.topology() as topo, tempfile.TemporaryDirectory(prefix="sn") as tmp:
        with netlab.start_linkd(topo.sandbox, f"veth:{topo.sandbox_if}", f"{tmp}/linkd.sock", gso=gso), \
                link_client(f"{tmp}/linkd.sock") as stub, frame_stream(stub) as stream:
            config = stub.GetConfig(link_pb2.GetConfigRequest(), timeout=10)
            mac = config.interface.mac
            assert config.offloads.vnet_header == gso

            stream.send(link_pb2.Frame(data=arp_request(mac, topo.sandbox_ip, topo.peer_ip)))
            stream.wait_for(lambda frame: is_arp_reply(frame, topo.peer_ip, mac))

            # The peer learned the sandbox's MAC from the ARP request, so its ping goes straight out.
            ping = topo.peer.popen("ping", "-c", "3", "-i", "0.2", "-W", "1", topo.sandbox_ip,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                def is_echo_request(frame):
                    packet = ipv4_packet(frame)
                    return (packet is not None and packet.p == dpkt.ip.IP_PROTO_ICMP
                            and packet.src == socket.inet_aton(topo.peer_ip)
                            and packet.data.type == dpkt.icmp.ICMP_ECHO)
                stream.wait_for(is_echo_request)
            finally:
                ping.wait(timeout=30)

            # A UDP datagram from the peer kernel leaves its checksum to the
            # veth's offload, and linkd must flag it so stackd skips verification.
            topo.peer.python(
                "import socket\n"
                "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                f"s.sendto(b'hello sandbox', ('{topo.sandbox_ip}', 9999))\n"
            )

            def is_udp_datagram(frame):
                packet = ipv4_packet(frame)
                return packet is not None and packet.p == dpkt.ip.IP_PROTO_UDP and packet.data.dport == 9999
            datagram = stream.wait_for(is_udp_datagram)
            assert datagram.HasField("gso")
            assert datagram.gso.flags != 0

            stats = stub.GetStats(link_pb2.GetStatsRequest(), timeout=10)
            assert stats.tx_frames >= 1
            assert stats.rx_frames >= 3


def test_bad_frames_counted_and_dropped():
    with netlab.topology() as topo, tempfile.TemporaryDirectory(prefix="sn") as tmp:
        with netlab.start_linkd(topo.sandbox, f"veth:{topo.sandbox_if}", f"{tmp}/linkd.sock") as linkd, \
                link_client(f"{tmp}/linkd.sock") as stub, frame_stream(stub) as stream:
            mac = stub.GetConfig(link_pb2.GetConfigRequest(), timeout=10).interface.mac
            valid = arp_request(mac, topo.sandbox_ip, topo.peer_ip)

            stream.send(
                link_pb2.Frame(data=b"\x01" * 10),
                link_pb2.Frame(data=valid + b"\x00" * 1600),
                link_pb2.Frame(data=valid, gso=link_pb2.GsoInfo(flags=1, csum_start=60, csum_offset=16)),
                link_pb2.Frame(data=valid, gso=link_pb2.GsoInfo(gso_type=9)),
            )
            stream.send(link_pb2.Frame(data=valid))
            stream.wait_for(lambda frame: is_arp_reply(frame, topo.peer_ip, mac))

            stats = stub.GetStats(link_pb2.GetStatsRequest(), timeout=10)
            assert stats.tx_dropped == 4
            assert stats.tx_frames == 1
            assert linkd.process.poll() is None
        assert "dropped a frame" in linkd.log_text()


def test_second_frames_stream_rejected():
    with netlab.topology() as topo, tempfile.TemporaryDirectory(prefix="sn") as tmp:
        linkd = netlab.start_linkd(topo.sandbox, f"veth:{topo.sandbox_if}", f"{tmp}/linkd.sock")
        with linkd, link_client(f"{tmp}/linkd.sock") as stub:
            mac = stub.GetConfig(link_pb2.GetConfigRequest(), timeout=10).interface.mac
            request = link_pb2.Frame(data=arp_request(mac, topo.sandbox_ip, topo.peer_ip))

            with frame_stream(stub) as first:
                first.send(request)
                first.wait_for(lambda frame: is_arp_reply(frame, topo.peer_ip, mac))

                with pytest.raises(grpc.RpcError) as raised:
                    for _ in stub.Frames(iter([]), timeout=10):
                        pass
                assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert "one stream at a time" in raised.value.details()

            # Once the first stream is gone, a new one is accepted.
            with frame_stream(stub) as second:
                second.send(request)
                second.wait_for(lambda frame: is_arp_reply(frame, topo.peer_ip, mac))

                # SIGTERM with a stream attached still exits cleanly.
                assert linkd.stop() == 0

        assert "Frames stream 2 attached" in linkd.log_text()
        assert kernel_addresses(topo.sandbox, topo.sandbox_if) != set()


def test_frames_without_stream_dropped():
    with netlab.topology() as topo, tempfile.TemporaryDirectory(prefix="sn") as tmp:
        with netlab.start_linkd(topo.sandbox, f"veth:{topo.sandbox_if}", f"{tmp}/linkd.sock"), \
                link_client(f"{tmp}/linkd.sock") as stub:
            topo.peer.run("ping", "-c", "2", "-i", "0.2", "-W", "1", topo.sandbox_ip, check=False)

            stats = stub.GetStats(link_pb2.GetStatsRequest(), timeout=10)
            assert stats.rx_frames >= 1
            assert stats.rx_dropped == stats.rx_frames


def test_options_read_environment():
    with netlab.topology() as topo, tempfile.TemporaryDirectory(prefix="sn") as tmp:
        argv = [f"{netlab.BIN_DIR}/sandnet-linkd"]
        env = {"SANDNET_LINKD_DEVICE": f"veth:{topo.sandbox_if}", "SANDNET_LINKD_LISTEN": f"unix:{tmp}/linkd.sock",
               "SANDNET_LINKD_GSO": "false"}
        with netlab.ServiceProcess(argv, f"{tmp}/linkd.sock", topo.sandbox, env=env), \
                link_client(f"{tmp}/linkd.sock") as stub:
            config = stub.GetConfig(link_pb2.GetConfigRequest(), timeout=10)
            assert config.interface.name == topo.sandbox_if
            assert not config.offloads.vnet_header
            assert config.offloads.max_frame_size == 1514


def test_missing_device_fails_at_start():
    with netlab.Netns() as ns, tempfile.TemporaryDirectory(prefix="sn") as tmp:
        result = ns.run(f"{netlab.BIN_DIR}/sandnet-linkd", "--device", "veth:snmissing0",
                        "--listen", f"unix:{tmp}/linkd.sock", check=False)
        assert result.returncode != 0
        assert "device snmissing0 not found" in result.stderr


def test_invalid_device_value_names_form():
    result = subprocess.run([f"{netlab.BIN_DIR}/sandnet-linkd", "--device", "eth0", "--listen", "unix:/tmp/x.sock"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "'eth0'" in result.stderr
    assert "veth:IFNAME or tap:IFNAME" in result.stderr


def test_second_linkd_on_device_fails():
    with netlab.topology() as topo, tempfile.TemporaryDirectory(prefix="sn") as tmp:
        with netlab.start_linkd(topo.sandbox, f"veth:{topo.sandbox_if}", f"{tmp}/first.sock"):
            result = topo.sandbox.run(f"{netlab.BIN_DIR}/sandnet-linkd", "--device", f"veth:{topo.sandbox_if}",
                                      "--listen", f"unix:{tmp}/second.sock", check=False)
            assert result.returncode != 0
            assert f"device {topo.sandbox_if} is already served" in result.stderr
            # The first instance still owns the addresses.
            assert kernel_addresses(topo.sandbox, topo.sandbox_if) == set()


@contextlib.contextmanager
def bridged_tap_lab(tap: str):
    """Yield (sandbox, peer, peer_ip, stack_ip): a peer namespace reaches the sandbox's bridge over a veth.

    The test enslaves ``tap`` to the bridge once the TAP exists.
    """
    subnet = f"10.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
    with netlab.Netns() as sandbox, netlab.Netns() as peer:
        netlab.veth_pair(sandbox, "snveth0", peer, "snveth1")
        peer.run("ip", "addr", "add", f"{subnet}.1/24", "dev", "snveth1")
        sandbox.run("ip", "link", "add", "snbridge0", "type", "bridge")
        sandbox.run("ip", "link", "set", "snveth0", "master", "snbridge0")
        sandbox.run("ip", "link", "set", "snbridge0", "up")
        yield sandbox, peer, f"{subnet}.1", f"{subnet}.2"


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "no-gso"])
def test_tap_frames_reach_peer(gso):
    tap = netlab.unique_name("snt")
    with bridged_tap_lab(tap) as (sandbox, peer, peer_ip, stack_ip), tempfile.TemporaryDirectory(prefix="sn") as tmp:
        linkd = netlab.start_linkd(sandbox, f"tap:{tap}", f"{tmp}/linkd.sock", gso=gso)
        with linkd, link_client(f"{tmp}/linkd.sock") as stub:
            sandbox.run("ip", "link", "set", tap, "master", "snbridge0")
            config = stub.GetConfig(link_pb2.GetConfigRequest(), timeout=10)
            mac = config.interface.mac
            tap_link = json.loads(sandbox.run("ip", "-j", "link", "show", tap).stdout)[0]
            assert bytes.fromhex(tap_link["address"].replace(":", "")) != mac
            assert mac[0] & 0x03 == 0x02
            assert "UP" in tap_link["flags"]
            assert config.offloads.vnet_header == gso

            with frame_stream(stub) as stream:
                stream.send(link_pb2.Frame(data=arp_request(mac, stack_ip, peer_ip)))
                stream.wait_for(lambda frame: is_arp_reply(frame, peer_ip, mac))

            assert kernel_addresses(sandbox, tap) == set()
            assert linkd.stop() == 0

        assert "created TAP device" in linkd.log_text()
        assert sandbox.run("ip", "link", "show", tap, check=False).returncode != 0


def test_existing_tap_attached_and_kept():
    tap = netlab.unique_name("snt")
    with bridged_tap_lab(tap) as (sandbox, peer, peer_ip, stack_ip), tempfile.TemporaryDirectory(prefix="sn") as tmp:
        sandbox.run("ip", "tuntap", "add", "dev", tap, "mode", "tap")
        sandbox.run("ip", "addr", "add", f"{stack_ip}/24", "dev", tap)
        sandbox.run("ip", "link", "set", tap, "master", "snbridge0", "up")

        linkd = netlab.start_linkd(sandbox, f"tap:{tap}", f"{tmp}/linkd.sock", extra=["--mac", "02:00:5e:00:00:07"])
        with linkd, link_client(f"{tmp}/linkd.sock") as stub:
            config = stub.GetConfig(link_pb2.GetConfigRequest(), timeout=10)
            assert config.interface.mac == bytes.fromhex("02005e000007")
            assert [(a.ip, a.prefix_len) for a in config.interface.addresses] == [(socket.inet_aton(stack_ip), 24)]

            with frame_stream(stub) as stream:
                stream.send(link_pb2.Frame(data=arp_request(config.interface.mac, stack_ip, peer_ip)))
                stream.wait_for(lambda frame: is_arp_reply(frame, peer_ip, config.interface.mac))

            # The carrier came up when linkd attached; the kernel must not have added a link-local address.
            assert kernel_addresses(sandbox, tap) == set()
            assert linkd.stop() == 0

        # Restoring addr_gen_mode lets the kernel add its link-local address again, so compare IPv4 only.
        restored = {address for address in kernel_addresses(sandbox, tap) if ":" not in address[0]}
        assert restored == {(stack_ip, 24)}


def test_listen_failure_restores_addresses():
    with netlab.topology() as topo, tempfile.TemporaryDirectory(prefix="sn") as tmp:
        addresses_before = kernel_addresses(topo.sandbox, topo.sandbox_if)
        busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with busy:
            busy.bind(f"{tmp}/busy.sock")
            busy.listen()
            result = topo.sandbox.run(f"{netlab.BIN_DIR}/sandnet-linkd", "--device", f"veth:{topo.sandbox_if}",
                                      "--listen", f"unix:{tmp}/busy.sock", check=False)

        assert result.returncode == 1
        assert "another server is listening there" in result.stderr
        assert kernel_addresses(topo.sandbox, topo.sandbox_if) == addresses_before


def udp_frame(src_mac: bytes, dst_mac: bytes, src_ip: str, dst_ip: str, port: int, payload: bytes,
              partial_checksum: bool) -> link_pb2.Frame:
    """Build a UDP frame; with ``partial_checksum`` leave the checksum to the device, as a NEEDS_CSUM frame does."""
    udp = dpkt.udp.UDP(sport=40000, dport=port, data=payload)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=socket.inet_aton(src_ip), dst=socket.inet_aton(dst_ip), p=dpkt.ip.IP_PROTO_UDP, ttl=64, data=udp)
    ip.len = len(ip)
    if partial_checksum:
        # The checksum field contains the pseudo-header sum (RFC 768), not inverted.
        pseudo = sum(int.from_bytes(ip.src[i:i + 2], "big") + int.from_bytes(ip.dst[i:i + 2], "big") for i in (0, 2))
        pseudo += dpkt.ip.IP_PROTO_UDP + udp.ulen
        while pseudo > 0xFFFF:
            pseudo = (pseudo & 0xFFFF) + (pseudo >> 16)
        udp.sum = pseudo
    data = bytes(dpkt.ethernet.Ethernet(dst=dst_mac, src=src_mac, type=dpkt.ethernet.ETH_TYPE_IP, data=ip))
    if not partial_checksum:
        return link_pb2.Frame(data=data)
    return link_pb2.Frame(data=data, gso=link_pb2.GsoInfo(flags=1, csum_start=14 + 20, csum_offset=6))


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "no-gso"])
def test_udp_frame_delivered_to_peer(gso):
    with netlab.topology() as topo, tempfile.TemporaryDirectory(prefix="sn") as tmp:
        with netlab.start_linkd(topo.sandbox, f"veth:{topo.sandbox_if}", f"{tmp}/linkd.sock", gso=gso), \
                link_client(f"{tmp}/linkd.sock") as stub, frame_stream(stub) as stream:
            mac = stub.GetConfig(link_pb2.GetConfigRequest(), timeout=10).interface.mac
            stream.send(link_pb2.Frame(data=arp_request(mac, topo.sandbox_ip, topo.peer_ip)))
            reply = stream.wait_for(lambda frame: is_arp_reply(frame, topo.peer_ip, mac))
            peer_mac = dpkt.ethernet.Ethernet(reply.data).src

            listener = topo.peer.popen(
                sys.executable, "-c",
                "import socket\n"
                "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                f"s.bind(('{topo.peer_ip}', 9998))\n"
                "print('ready', flush=True)\n"
                "s.settimeout(20)\n"
                "print(s.recvfrom(100)[0].decode(), flush=True)\n",
                stdout=subprocess.PIPE, text=True,
            )
            try:
                assert listener.stdout.readline().strip() == "ready"
                stream.send(udp_frame(mac, peer_mac, topo.sandbox_ip, topo.peer_ip, 9998, b"from the stack",
                                      partial_checksum=gso))
                output, _ = listener.communicate(timeout=30)
            finally:
                if listener.poll() is None:
                    listener.kill()
                    listener.wait()

            assert output.strip() == "from the stack"
