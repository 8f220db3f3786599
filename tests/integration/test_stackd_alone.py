"""stackd on its own: the test stands where linkd stands, serving the Link
contract over a unix socket, injecting hand-built frames and reading what
stackd sends back. No namespaces are needed: no frame leaves the test."""

import os
import queue
import sys
import tempfile
import time
from concurrent import futures

import dpkt
import grpc
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import netlab  # noqa: E402

from sandnet.v1 import link_pb2, link_pb2_grpc, sockets_pb2, sockets_pb2_grpc, types_pb2  # noqa: E402

STACK_MAC = bytes.fromhex("020000000002")
PEER_MAC = bytes.fromhex("020000000001")
STACK_IP = bytes([10, 9, 0, 2])
PEER_IP = bytes([10, 9, 0, 1])


class FakeLink(link_pb2_grpc.LinkServicer):
    """A Link server whose frames come from and go to the test."""

    def __init__(self):
        self.to_stack: queue.Queue = queue.Queue()
        self.from_stack: queue.Queue = queue.Queue()

    def GetConfig(self, request, context):
        return link_pb2.LinkConfig(
            interface=types_pb2.Interface(index=2, name="eth0", mac=STACK_MAC, mtu=1500, up=True,
                                          addresses=[types_pb2.InterfaceAddress(ip=STACK_IP, prefix_len=24,
                                                                               broadcast=bytes([10, 9, 0, 255]))]),
            routes=[types_pb2.Route(family=4, dst=b"", dst_len=0, gateway=PEER_IP, device="eth0")])

    def Frames(self, request_iterator, context):
        def reader():
            for batch in request_iterator:
                for frame in batch.frames:
                    self.from_stack.put(bytes(frame.data))

        futures.ThreadPoolExecutor(1).submit(reader)
        while context.is_active():
            try:
                frames = [self.to_stack.get(timeout=0.1)]
            except queue.Empty:
                continue
            yield link_pb2.FrameBatch(frames=[link_pb2.Frame(data=f) for f in frames])


@pytest.fixture(scope="module")
def bench():
    workdir = tempfile.mkdtemp(prefix="sandnet-alone-")
    link_path, stack_path = os.path.join(workdir, "link.sock"), os.path.join(workdir, "stack.sock")
    fake = FakeLink()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    link_pb2_grpc.add_LinkServicer_to_server(fake, server)
    server.add_insecure_port(f"unix:{link_path}")
    server.start()
    with netlab.start_stackd(link_path, stack_path) as stackd:
        channel = grpc.insecure_channel(f"unix:{stack_path}")
        yield fake, sockets_pb2_grpc.NetinfoStub(channel), stackd
        channel.close()
    server.stop(0)


def expect(fake: FakeLink, predicate, timeout: float = 5.0):
    """Return the first frame from stackd that satisfies predicate(ethernet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            raw = fake.from_stack.get(timeout=0.1)
        except queue.Empty:
            continue
        eth = dpkt.ethernet.Ethernet(raw)
        if predicate(eth):
            return eth
    raise AssertionError("stackd sent no matching frame")


def arp_request() -> bytes:
    arp = dpkt.arp.ARP(op=dpkt.arp.ARP_OP_REQUEST, sha=PEER_MAC, spa=PEER_IP, tha=b"\x00" * 6, tpa=STACK_IP)
    return bytes(dpkt.ethernet.Ethernet(dst=b"\xff" * 6, src=PEER_MAC, type=dpkt.ethernet.ETH_TYPE_ARP, data=arp))


def ip_frame(payload, proto: int, **fields) -> bytes:
    ip = dpkt.ip.IP(src=PEER_IP, dst=STACK_IP, p=proto, ttl=64, data=payload, **fields)
    ip.len = len(ip)
    return bytes(dpkt.ethernet.Ethernet(dst=STACK_MAC, src=PEER_MAC, type=dpkt.ethernet.ETH_TYPE_IP, data=ip))


def echo_request(ident: int, seq: int) -> bytes:
    icmp = dpkt.icmp.ICMP(type=8, code=0, data=dpkt.icmp.ICMP.Echo(id=ident, seq=seq, data=b"sandnet"))
    return ip_frame(icmp, dpkt.ip.IP_PROTO_ICMP)


def counters(netinfo) -> dict[str, int]:
    return {c.name: c.value for c in netinfo.GetCounters(sockets_pb2.ListRequest()).counters}


def is_echo_reply(ident: int):
    def match(eth):
        return (isinstance(eth.data, dpkt.ip.IP) and isinstance(eth.data.data, dpkt.icmp.ICMP)
                and eth.data.data.type == 0 and eth.data.data.data.id == ident)
    return match


def test_announces_address_at_start(bench):
    fake, _, _ = bench
    eth = expect(fake, lambda e: isinstance(e.data, dpkt.arp.ARP) and e.data.spa == STACK_IP == e.data.tpa)
    assert eth.dst == b"\xff" * 6


def test_answers_arp_request(bench):
    fake, _, _ = bench
    fake.to_stack.put(arp_request())
    eth = expect(fake, lambda e: isinstance(e.data, dpkt.arp.ARP) and e.data.op == dpkt.arp.ARP_OP_REPLY)
    assert eth.dst == PEER_MAC
    assert eth.data.sha == STACK_MAC
    assert eth.data.spa == STACK_IP


def test_answers_echo_request(bench):
    fake, _, _ = bench
    fake.to_stack.put(arp_request())
    fake.to_stack.put(echo_request(0x4242, 1))
    eth = expect(fake, is_echo_reply(0x4242))
    assert eth.data.dst == PEER_IP
    assert eth.data.data.data.data == b"sandnet"


def test_syn_to_closed_port_gets_rst(bench):
    fake, _, _ = bench
    fake.to_stack.put(arp_request())
    syn = dpkt.tcp.TCP(sport=40000, dport=4444, seq=1000, flags=dpkt.tcp.TH_SYN, win=65535)
    fake.to_stack.put(ip_frame(syn, dpkt.ip.IP_PROTO_TCP))
    eth = expect(fake, lambda e: isinstance(e.data, dpkt.ip.IP) and isinstance(e.data.data, dpkt.tcp.TCP)
                 and e.data.data.dport == 40000)
    seg = eth.data.data
    assert seg.flags & dpkt.tcp.TH_RST
    assert seg.flags & dpkt.tcp.TH_ACK
    assert seg.ack == 1001


def test_udp_to_closed_port_gets_port_unreachable(bench):
    fake, _, _ = bench
    fake.to_stack.put(arp_request())
    datagram = dpkt.udp.UDP(sport=5000, dport=5999, data=b"anyone?")
    datagram.ulen = len(datagram)
    fake.to_stack.put(ip_frame(datagram, dpkt.ip.IP_PROTO_UDP))
    eth = expect(fake, lambda e: isinstance(e.data, dpkt.ip.IP) and isinstance(e.data.data, dpkt.icmp.ICMP)
                 and e.data.data.type == 3)
    assert eth.data.data.code == 3


@pytest.mark.parametrize("name, frame, counter", [
    ("truncated frame", b"\x02\x00\x00", "Link.InTruncated"),
    ("unknown ethertype", STACK_MAC + PEER_MAC + b"\x88\xb5" + b"\x00" * 46, "Link.InUnknownEtherType"),
    ("bad IPv4 checksum", None, "Ip.InHdrErrors"),
    ("truncated IPv4 header", STACK_MAC + PEER_MAC + b"\x08\x00" + b"\x45\x00\x00", "Ip.InHdrErrors"),
    ("bad TCP checksum", None, "Tcp.InErrs"),
    ("bad UDP checksum", None, "Udp.InCsumErrors"),
])
def test_malformed_frame_is_counted_and_dropped(bench, name, frame, counter):
    fake, netinfo, stackd = bench
    if name == "bad IPv4 checksum":
        frame = bytearray(echo_request(1, 1))
        frame[14 + 10] ^= 0xFF
    elif name == "bad TCP checksum":
        frame = bytearray(ip_frame(dpkt.tcp.TCP(sport=1, dport=2, flags=dpkt.tcp.TH_SYN), dpkt.ip.IP_PROTO_TCP))
        frame[14 + 20 + 16] ^= 0xFF
    elif name == "bad UDP checksum":
        datagram = dpkt.udp.UDP(sport=1, dport=2, data=b"x")
        datagram.ulen = len(datagram)
        frame = bytearray(ip_frame(datagram, dpkt.ip.IP_PROTO_UDP))
        frame[14 + 20 + 6] ^= 0xFF
    before = counters(netinfo).get(counter, 0)
    fake.to_stack.put(bytes(frame))

    # The stack goes on serving: a ping after the bad frame is answered.
    ident = 0x1000 + len(name)
    fake.to_stack.put(arp_request())
    fake.to_stack.put(echo_request(ident, 2))
    expect(fake, is_echo_reply(ident))
    assert counters(netinfo)[counter] == before + 1
    assert stackd.process.poll() is None
