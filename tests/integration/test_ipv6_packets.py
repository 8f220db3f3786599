"""Packet-level scenarios: IPv6 extension headers, fragments of both
families and Neighbor Discovery, each run against sandnet and against the
Linux kernel.

A tester process in a namespace of its own writes hand-built Ethernet frames
to the device under test (DUT) through an AF_PACKET socket and reports the
ICMP and ICMPv6 messages that come back. It replies to the DUT's neighbor
solicitations and ARP requests for its own addresses, so the DUT can reach it. Each scenario uses a source
address of its own, so per-destination ICMPv6 rate limits never interfere.
"""

import contextlib
import ipaddress
import json
import os
import struct
import sys
import tempfile
import time

import pytest

import netlab
from sandnet.client import Client

pytestmark = pytest.mark.netns

TESTER_MAC = bytes.fromhex("020000007777")
DUT_IP4 = bytes([10, 94, 0, 2])
ECHO_REQUEST, ECHO_REPLY = 128, 129
PARAMETER_PROBLEM, PACKET_TOO_BIG = 4, 2
NEIGHBOR_SOLICITATION, NEIGHBOR_ADVERTISEMENT = 135, 136
DEST_OPTS, ROUTING, FRAGMENT, HOP_BY_HOP, ICMPV6 = 60, 43, 44, 0, 58

# Runs in the tester's namespace: send the frames, then collect ICMPv6
# messages for ``wait`` seconds and print them as JSON.
TESTER = r"""
import json, socket, struct, sys, time
ifname, dut_mac, wait = sys.argv[1], bytes.fromhex(sys.argv[2]), float(sys.argv[3])
mine = [bytes.fromhex(ip) for ip in sys.argv[4].split(",")]
frames = [bytes.fromhex(frame) for frame in sys.argv[5:]]
TESTER_MAC = bytes.fromhex("020000007777")

def checksum(src, dst, message):
    data = src + dst + struct.pack("!I3xB", len(message), 58) + message
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

def advertise(target, dst):
    body = struct.pack("!BBHI", 136, 0, 0, 0x60000000) + target + bytes((2, 1)) + TESTER_MAC
    body = body[:2] + struct.pack("!H", checksum(target, dst, body)) + body[4:]
    header = struct.pack("!IHBB", 0x60000000, len(body), 58, 255) + target + dst
    return dut_mac + TESTER_MAC + b"\x86\xdd" + header + body

def arp_reply(request):
    sender_mac, sender_ip, target_ip = request[8:14], request[14:18], request[24:28]
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + TESTER_MAC + target_ip + sender_mac + sender_ip
    return sender_mac + TESTER_MAC + b"\x08\x06" + body

sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
sock.bind((ifname, 0))
sock.settimeout(0.05)
for frame in frames:
    sock.send(frame)
seen = []
deadline = time.monotonic() + wait
while time.monotonic() < deadline:
    try:
        frame, address = sock.recvfrom(65535)
    except socket.timeout:
        continue
    if address[2] == socket.PACKET_OUTGOING or frame[6:12] != dut_mac:
        continue
    ethertype, packet = frame[12:14], frame[14:]
    if ethertype == b"\x08\x06" and packet[6:8] == b"\x00\x01" and packet[24:28] in mine:
        sock.send(arp_reply(packet))
        continue
    if ethertype == b"\x08\x00" and packet[9] == 1:
        header_length = (packet[0] & 0x0F) * 4
        kind, code, _, rest = struct.unpack_from("!BBHI", packet, header_length)
        seen.append({"family": 4, "type": kind, "code": code, "rest": rest, "src": packet[12:16].hex(),
                     "length": len(packet) - header_length})
        continue
    if ethertype != b"\x86\xdd":
        continue
    next_header, offset = packet[6], 40
    while next_header in (0, 43, 60):
        next_header, offset = packet[offset], offset + (packet[offset + 1] + 1) * 8
    if next_header != 58:
        continue
    kind, code, _, rest = struct.unpack_from("!BBHI", packet, offset)
    src, dst = packet[8:24], packet[24:40]
    target = packet[offset + 8:offset + 24].hex() if kind in (135, 136) else ""
    if kind == 135 and bytes.fromhex(target) in mine:
        sock.send(advertise(bytes.fromhex(target), src))
    seen.append({"family": 6, "type": kind, "code": code, "rest": rest, "src": src.hex(), "dst": dst.hex(), "target": target,
                 "flags": rest >> 29 if kind == 136 else 0, "length": len(packet) - offset})
print(json.dumps(seen))
"""


class Dut:
    """A device under test on a veth whose other end sits in ``tester``'s namespace."""

    def __init__(self, name: str, tester: netlab.Netns, tester_if: str, mac: bytes, ip6: bytes, prefix: bytes,
                 client: Client | None = None, ns: netlab.Netns | None = None):
        self.name = name
        self.ns = ns
        self.tester = tester
        self.tester_if = tester_if
        self.mac = mac
        self.ip6 = ip6
        self.prefix = prefix
        self.client = client
        self._sources = iter(range(0x100, 0x10000))
        self._sources4 = iter(range(10, 250))

    def new_source(self) -> bytes:
        """Return a tester address that no earlier scenario used."""
        return self.prefix[:8] + bytes(6) + next(self._sources).to_bytes(2, "big")

    def new_source4(self) -> bytes:
        """Return a tester IPv4 address that no earlier scenario used."""
        return DUT_IP4[:3] + bytes((next(self._sources4),))

    def exchange(self, frames: list[bytes], sources: list[bytes], wait: float = 1.5) -> list[dict]:
        """Send ``frames``; return the ICMPv6 messages the DUT sent in ``wait`` seconds."""
        output = self.tester.run(sys.executable, "-c", TESTER, self.tester_if, self.mac.hex(), str(wait),
                                 ",".join(ip.hex() for ip in sources), *(frame.hex() for frame in frames),
                                 timeout=30).stdout
        return json.loads(output)

    def default_gateways6(self) -> list[str]:
        """Return the gateways of the DUT's IPv6 default routes, as text."""
        if self.client is None:
            shown = self.ns.run("ip", "-6", "route", "show", "default").stdout.split()
            return [shown[i + 1] for i, word in enumerate(shown) if word == "via"]
        return [str(ipaddress.ip_address(r.gateway)) for r in self.client.info("ListRoutes").routes
                if r.dst_len == 0 and len(r.gateway) == 16]

    def counter(self, name: str) -> int | None:
        """Return a sandnet counter, or None on Linux."""
        if self.client is None:
            return None
        return next((c.value for c in self.client.info("GetCounters").counters if c.name == name), 0)


@contextlib.contextmanager
def linux_dut():
    netlab.require_root()
    with netlab.Netns() as dut_ns, netlab.Netns() as tester:
        dut_if, tester_if = netlab.unique_name("snd"), netlab.unique_name("snt")
        netlab.veth_pair(dut_ns, dut_if, tester, tester_if)
        tester.run("sysctl", "-qw", f"net.ipv6.conf.{tester_if}.disable_ipv6=1")
        dut_ns.run("ip", "-6", "addr", "add", "fd00:5e::2/64", "dev", dut_if, "nodad")
        dut_ns.run("ip", "addr", "add", "10.94.0.2/24", "dev", dut_if)
        mac = bytes.fromhex(dut_ns.run("cat", f"/sys/class/net/{dut_if}/address").stdout.strip().replace(":", ""))
        yield Dut("linux", tester, tester_if, mac, bytes.fromhex("fd00005e" + "00" * 11 + "02"),
                  bytes.fromhex("fd00005e" + "00" * 12), ns=dut_ns)


@contextlib.contextmanager
def sandnet_dut():
    with netlab.Netns() as sandbox, netlab.Netns() as tester, \
            tempfile.TemporaryDirectory(prefix="sandnet-") as workdir:
        sandbox_if, tester_if = netlab.unique_name("sns"), netlab.unique_name("snt")
        netlab.veth_pair(sandbox, sandbox_if, tester, tester_if)
        tester.run("sysctl", "-qw", f"net.ipv6.conf.{tester_if}.disable_ipv6=1")
        sandbox.run("ip", "-6", "addr", "add", "fd00:5e::2/64", "dev", sandbox_if, "nodad")
        sandbox.run("ip", "addr", "add", "10.94.0.2/24", "dev", sandbox_if)
        mac = bytes.fromhex(sandbox.run("cat", f"/sys/class/net/{sandbox_if}/address").stdout.strip().replace(":", ""))
        link_path, stack_path, sockd_path = (os.path.join(workdir, n) for n in ("linkd.sock", "stackd.sock", "sockd.sock"))
        with netlab.start_linkd(sandbox, f"veth:{sandbox_if}", link_path) as linkd, \
                netlab.start_stackd(link_path, stack_path) as stackd, \
                netlab.start_sockd(stack_path, sockd_path):
            client = Client(f"unix:{sockd_path}")
            try:
                yield Dut("sandnet", tester, tester_if, mac, bytes.fromhex("fd00005e" + "00" * 11 + "02"),
                          bytes.fromhex("fd00005e" + "00" * 12), client)
            finally:
                client.close()
                print(linkd.log_text(), stackd.log_text())


@pytest.fixture(scope="module", params=["linux", "sandnet"])
def dut(request):
    with (linux_dut() if request.param == "linux" else sandnet_dut()) as made:
        yield made


# Frame building, by hand and independent of stackd's header code.

def icmpv6_checksum(src: bytes, dst: bytes, message: bytes) -> int:
    data = src + dst + struct.pack("!I3xB", len(message), ICMPV6) + message
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmpv6(src: bytes, dst: bytes, kind: int, rest: int, body: bytes) -> bytes:
    message = struct.pack("!BBHI", kind, 0, 0, rest) + body
    return message[:2] + struct.pack("!H", icmpv6_checksum(src, dst, message)) + message[4:]


def echo_request(src: bytes, dst: bytes, seq: int = 1, data: bytes = b"sandnet-probe") -> bytes:
    return icmpv6(src, dst, ECHO_REQUEST, 0x5A5A0000 | seq, data)


def ipv6_packet(src: bytes, dst: bytes, next_header: int, payload: bytes, hop_limit: int = 64,
                payload_length: int | None = None) -> bytes:
    length = len(payload) if payload_length is None else payload_length
    return struct.pack("!IHBB", 0x60000000, length, next_header, hop_limit) + src + dst + payload


def frame(dut: Dut, packet: bytes) -> bytes:
    return dut.mac + TESTER_MAC + b"\x86\xdd" + packet


def options_header(next_header: int, options: bytes) -> bytes:
    """Build a Hop-by-Hop or Destination Options header, padded to 8 bytes with PadN."""
    body = bytes((next_header, 0)) + options
    pad = -len(body) % 8
    if pad == 1:
        body += b"\x00"
    elif pad:
        body += bytes((1, pad - 2)) + bytes(pad - 2)
    return bytes((body[0], len(body) // 8 - 1)) + body[2:]


def fragments(src: bytes, dst: bytes, next_header: int, payload: bytes, size: int, ident: int):
    """Split ``payload`` into Fragment-header packets carrying ``size`` bytes each."""
    packets = []
    for offset in range(0, len(payload), size):
        more = offset + size < len(payload)
        header = struct.pack("!BxHI", next_header, offset | more, ident)
        packets.append(ipv6_packet(src, dst, FRAGMENT, header + payload[offset:offset + size]))
    return packets


def only(messages: list[dict], kind: int, family: int = 6) -> list[dict]:
    return [m for m in messages if m["type"] == kind and m["family"] == family]


def ipv4_checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data + b"\0" * (len(data) % 2)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp_echo4(seq: int = 1, size: int = 1200) -> bytes:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    message = struct.pack("!BBHI", 8, 0, 0, 0x5A5A0000 | seq) + data
    return message[:2] + struct.pack("!H", ipv4_checksum(message)) + message[4:]


def ipv4_fragment(dut: Dut, src: bytes, ident: int, offset: int, more: bool, data: bytes) -> bytes:
    """Build an Ethernet frame with one IPv4 fragment of an ICMP datagram."""
    flags = (offset // 8) | (0x2000 if more else 0)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(data), ident, flags, 64, 1, 0, src, DUT_IP4)
    header = header[:10] + struct.pack("!H", ipv4_checksum(header)) + header[12:]
    return dut.mac + TESTER_MAC + b"\x08\x00" + header + data


def ipv4_fragments(dut: Dut, src: bytes, ident: int, message: bytes, size: int) -> list[bytes]:
    return [ipv4_fragment(dut, src, ident, offset, offset + size < len(message), message[offset:offset + size])
            for offset in range(0, len(message), size)]


# Scenarios.

def test_echo_request_gets_reply(dut):
    src = dut.new_source()
    replies = only(dut.exchange([frame(dut, ipv6_packet(src, dut.ip6, ICMPV6, echo_request(src, dut.ip6)))], [src]),
                   ECHO_REPLY)
    assert len(replies) == 1


def test_neighbor_solicitation_gets_solicited_advertisement(dut):
    # RFC 4861 section 7.2.4: an NS for the DUT's address gets an NA with S and O set and the DUT's MAC.
    src = dut.new_source()
    group = bytes.fromhex("ff0200000000000000000001ff") + dut.ip6[13:]
    ns = icmpv6(src, group, NEIGHBOR_SOLICITATION, 0, dut.ip6 + bytes((1, 1)) + TESTER_MAC)
    packet = ipv6_packet(src, group, ICMPV6, ns, hop_limit=255)
    multicast_mac = b"\x33\x33" + group[12:]
    messages = dut.exchange([multicast_mac + TESTER_MAC + b"\x86\xdd" + packet], [src])
    adverts = [m for m in only(messages, NEIGHBOR_ADVERTISEMENT) if m["target"] == dut.ip6.hex()]
    assert len(adverts) == 1
    assert adverts[0]["flags"] & 0b011 == 0b011  # Solicited and Override


def test_neighbor_solicitation_with_low_hop_limit_is_ignored(dut):
    # RFC 4861 section 7.1.1: an NS whose hop limit is not 255 did not come from the link.
    src = dut.new_source()
    ns = icmpv6(src, dut.ip6, NEIGHBOR_SOLICITATION, 0, dut.ip6 + bytes((1, 1)) + TESTER_MAC)
    messages = dut.exchange([frame(dut, ipv6_packet(src, dut.ip6, ICMPV6, ns, hop_limit=64))], [src], wait=1.0)
    assert only(messages, NEIGHBOR_ADVERTISEMENT) == []


def test_unsolicited_advertisement_creates_no_neighbor(dut):
    # RFC 4861 section 7.2.5: an NA for an address without an entry is dropped,
    # so the DUT must still solicit that address before it can reply to it.
    src = dut.new_source()
    na = icmpv6(src, dut.ip6, NEIGHBOR_ADVERTISEMENT, 0x20000000, src + bytes((2, 1)) + TESTER_MAC)
    before = dut.counter("Ndp6.InUnsolicitedIgnored")
    dut.exchange([frame(dut, ipv6_packet(src, dut.ip6, ICMPV6, na, hop_limit=255))], [], wait=0.3)
    messages = dut.exchange([frame(dut, ipv6_packet(src, dut.ip6, ICMPV6, echo_request(src, dut.ip6)))], [src])
    solicits = [m for m in only(messages, NEIGHBOR_SOLICITATION) if m["target"] == src.hex()]
    assert solicits, messages
    assert len(only(messages, ECHO_REPLY)) == 1
    if before is not None:
        assert dut.counter("Ndp6.InUnsolicitedIgnored") == before + 1


@pytest.mark.parametrize("option_type, answered", [(0x1E, "reply"), (0x5E, "nothing"), (0x9E, "problem"),
                                                   (0xDE, "problem")])
def test_unknown_destination_option_follows_action_bits(dut, option_type, answered):
    # RFC 8200 section 4.2: the two high bits select skip, discard, or discard
    # and send Parameter Problem code 2 pointing at the option.
    src = dut.new_source()
    header = options_header(ICMPV6, bytes((option_type, 2, 0, 0)))
    packet = ipv6_packet(src, dut.ip6, DEST_OPTS, header + echo_request(src, dut.ip6))
    messages = dut.exchange([frame(dut, packet)], [src])
    replies, problems = only(messages, ECHO_REPLY), only(messages, PARAMETER_PROBLEM)
    if answered == "reply":
        assert len(replies) == 1
        assert problems == []
    elif answered == "nothing":
        assert replies == []
        assert problems == []
    else:
        assert replies == []
        assert [(p["code"], p["rest"]) for p in problems] == [(2, 42)]


def test_unknown_next_header_gets_parameter_problem(dut):
    src = dut.new_source()
    packet = ipv6_packet(src, dut.ip6, 253, bytes(16))  # 253 is reserved for experiments (RFC 3692)
    problems = only(dut.exchange([frame(dut, packet)], [src]), PARAMETER_PROBLEM)
    assert [(p["code"], p["rest"]) for p in problems] == [(1, 6)]


def test_routing_header_with_segments_left_gets_parameter_problem(dut):
    # RFC 8200 section 4.4 with RFC 5095: type 0 is unrecognized, so segments
    # left > 0 draws code 0 pointing at the routing type field.
    src = dut.new_source()
    routing = bytes((ICMPV6, 2, 0, 1, 0, 0, 0, 0)) + bytes(16)
    packet = ipv6_packet(src, dut.ip6, ROUTING, routing + echo_request(src, dut.ip6))
    problems = only(dut.exchange([frame(dut, packet)], [src]), PARAMETER_PROBLEM)
    assert [(p["code"], p["rest"]) for p in problems] == [(0, 42)]


def test_routing_header_without_segments_left_is_skipped(dut):
    src = dut.new_source()
    routing = bytes((ICMPV6, 0, 253, 0, 0, 0, 0, 0))
    packet = ipv6_packet(src, dut.ip6, ROUTING, routing + echo_request(src, dut.ip6))
    assert len(only(dut.exchange([frame(dut, packet)], [src]), ECHO_REPLY)) == 1


def test_truncated_extension_header_is_dropped(dut):
    # The Destination Options header claims 16 bytes but the packet ends after 8.
    src = dut.new_source()
    packet = ipv6_packet(src, dut.ip6, DEST_OPTS, bytes((ICMPV6, 1, 1, 4, 0, 0, 0, 0)))
    before = dut.counter("Ip6.InTruncatedPkts")
    messages = dut.exchange([frame(dut, packet)], [src], wait=0.8)
    assert only(messages, PARAMETER_PROBLEM) == []
    assert only(messages, ECHO_REPLY) == []
    if before is not None:
        assert dut.counter("Ip6.InTruncatedPkts") == before + 1
    test_echo_request_gets_reply(dut)


def echo_payload(src: bytes, dut: Dut, size: int = 1200) -> bytes:
    return echo_request(src, dut.ip6, data=bytes(range(256)) * (size // 256) + bytes(size % 256))


def test_fragments_out_of_order_are_reassembled(dut):
    src = dut.new_source()
    pieces = fragments(src, dut.ip6, ICMPV6, echo_payload(src, dut), 400, 0x1001)
    messages = dut.exchange([frame(dut, p) for p in reversed(pieces)], [src])
    replies = only(messages, ECHO_REPLY)
    assert len(replies) == 1
    assert replies[0]["length"] == 8 + 1200


def test_duplicate_fragment_is_ignored(dut):
    src = dut.new_source()
    pieces = fragments(src, dut.ip6, ICMPV6, echo_payload(src, dut), 400, 0x1002)
    sent = [pieces[0], pieces[1], pieces[1], pieces[2], pieces[3]]
    assert len(only(dut.exchange([frame(dut, p) for p in sent], [src]), ECHO_REPLY)) == 1


def test_overlapping_fragments_drop_the_datagram(dut):
    # RFC 5722: a datagram with overlapping fragments is discarded entirely.
    src = dut.new_source()
    payload = echo_payload(src, dut)
    pieces = fragments(src, dut.ip6, ICMPV6, payload, 400, 0x1003)
    overlap = ipv6_packet(src, dut.ip6, FRAGMENT, struct.pack("!BxHI", ICMPV6, 200 | 1, 0x1003) + payload[200:600])
    sent = [pieces[0], overlap] + pieces[1:]
    before = dut.counter("Ip6.ReasmOverlaps")
    messages = dut.exchange([frame(dut, p) for p in sent], [src], wait=1.0)
    assert only(messages, ECHO_REPLY) == []
    if before is not None:
        assert dut.counter("Ip6.ReasmOverlaps") == before + 1


def test_fragment_past_65535_bytes_gets_parameter_problem(dut):
    # RFC 8200 section 4.5: the pointer names the Fragment Offset field.
    src = dut.new_source()
    header = struct.pack("!BxHI", ICMPV6, 65528, 0x1004)
    packet = ipv6_packet(src, dut.ip6, FRAGMENT, header + bytes(16))
    problems = only(dut.exchange([frame(dut, packet)], [src]), PARAMETER_PROBLEM)
    assert [(p["code"], p["rest"]) for p in problems] == [(0, 42)]


def test_fragment_not_multiple_of_eight_gets_parameter_problem(dut):
    # RFC 8200 section 4.5: the pointer names the Payload Length field.
    src = dut.new_source()
    header = struct.pack("!BxHI", ICMPV6, 0 | 1, 0x1005)
    packet = ipv6_packet(src, dut.ip6, FRAGMENT, header + echo_payload(src, dut)[:13])
    problems = only(dut.exchange([frame(dut, packet)], [src]), PARAMETER_PROBLEM)
    assert [(p["code"], p["rest"]) for p in problems] == [(0, 4)]


def test_extension_header_chain_longer_than_eight_is_dropped(dut):
    # sandnet drops chains of more than eight extension headers. Linux has no
    # such limit and replies; the scenario records that difference.
    src = dut.new_source()
    chain = echo_request(src, dut.ip6)
    next_header = ICMPV6
    for _ in range(9):
        chain = options_header(next_header, b"") + chain
        next_header = DEST_OPTS
    messages = dut.exchange([frame(dut, ipv6_packet(src, dut.ip6, DEST_OPTS, chain))], [src], wait=1.0)
    expected = 1 if dut.name == "linux" else 0
    assert len(only(messages, ECHO_REPLY)) == expected


def test_router_advertisement_sets_default_route(dut):
    # RFC 4861 section 6.3.4: a router lifetime above 0 makes the sender a default router.
    router = bytes.fromhex("fe80000000000000" + "0000000000007777")
    all_nodes = bytes.fromhex("ff020000000000000000000000000001")
    lifetime = 1800
    body = struct.pack("!IIII", 0, 0, 0, 0)[:8]  # reachable time and retransmit timer left unspecified
    options = bytes((1, 1)) + TESTER_MAC + struct.pack("!BBHI", 5, 1, 0, 1400)
    ra = icmpv6(router, all_nodes, 134, (64 << 24) | lifetime, body + options)
    packet = ipv6_packet(router, all_nodes, ICMPV6, ra, hop_limit=255)
    dut.exchange([b"\x33\x33\x00\x00\x00\x01" + TESTER_MAC + b"\x86\xdd" + packet], [], wait=0.5)
    assert "fe80::7777" in dut.default_gateways6()


def test_mld_query_gets_report(dut):
    # RFC 3810 section 6.2: a general query draws a report of the groups
    # joined, among them the solicited-node group of each address.
    router = bytes.fromhex("fe80000000000000" + "0000000000007778")
    all_nodes = bytes.fromhex("ff020000000000000000000000000001")
    query = icmpv6(router, all_nodes, 130, 1 << 16, bytes(16) + bytes((2, 125, 0, 0)))  # max response 1 ms
    hop_by_hop = bytes((ICMPV6, 0, 5, 2, 0, 0, 1, 0))  # Router Alert, then PadN
    packet = ipv6_packet(router, all_nodes, HOP_BY_HOP, hop_by_hop + query, hop_limit=1)
    messages = dut.exchange([b"\x33\x33\x00\x00\x00\x01" + TESTER_MAC + b"\x86\xdd" + packet], [], wait=1.5)
    reports = only(messages, 143)
    assert reports, messages
    assert reports[0]["rest"] & 0xFFFF >= 1


def test_ipv4_fragments_out_of_order_are_reassembled(dut):
    src = dut.new_source4()
    sent = ipv4_fragments(dut, src, 0x2001, icmp_echo4(), 400)[::-1]
    replies = only(dut.exchange(sent, [src]), 0, family=4)
    assert len(replies) == 1
    assert replies[0]["length"] == 8 + 1200


def test_ipv4_duplicate_fragment_is_ignored(dut):
    src = dut.new_source4()
    pieces = ipv4_fragments(dut, src, 0x2002, icmp_echo4(), 400)
    sent = [pieces[0], pieces[1], pieces[1], pieces[2], pieces[3]]
    assert len(only(dut.exchange(sent, [src]), 0, family=4)) == 1


def test_ipv4_overlapping_fragments_drop_the_datagram(dut):
    # Linux (since 4.19) and sandnet both discard an IPv4 datagram whose fragments overlap.
    src = dut.new_source4()
    message = icmp_echo4()
    pieces = ipv4_fragments(dut, src, 0x2003, message, 400)
    overlap = ipv4_fragment(dut, src, 0x2003, 200, True, message[200:600])
    sent = [pieces[0], overlap] + pieces[1:]
    messages = dut.exchange(sent, [src], wait=1.0)
    assert only(messages, 0, family=4) == []


def test_ipv4_fragment_past_65535_bytes_is_dropped(dut):
    src = dut.new_source4()
    sent = [ipv4_fragment(dut, src, 0x2004, 0, True, icmp_echo4(size=392)),
            ipv4_fragment(dut, src, 0x2004, 65512, False, bytes(40))]
    messages = dut.exchange(sent, [src], wait=1.0)
    assert only(messages, 0, family=4) == []


SANDBOX_MAC = bytes.fromhex("0200005e0002")


def eui64_link_local(mac: bytes) -> str:
    """Return the link-local address with the modified EUI-64 identifier of ``mac`` (RFC 4291 appendix A)."""
    identifier = bytes((mac[0] ^ 0x02,)) + mac[1:3] + b"\xff\xfe" + mac[3:6]
    return str(ipaddress.ip_address(bytes.fromhex("fe80000000000000") + identifier))


@contextlib.contextmanager
def sandbox_without_link_local(peer_link_local: str | None = None):
    """Run sandnet on a veth with MAC SANDBOX_MAC that the kernel gave no
    link-local address, so the stack configures one itself. The peer gets
    ``peer_link_local`` first, when given."""
    with netlab.Netns() as sandbox, netlab.Netns() as peer, \
            tempfile.TemporaryDirectory(prefix="sandnet-") as workdir:
        sandbox.run("sysctl", "-qw", "net.ipv6.conf.default.addr_gen_mode=1")  # 1: no link-local address
        sandbox_if, peer_if = netlab.unique_name("sns"), netlab.unique_name("snp")
        netlab.veth_pair(sandbox, sandbox_if, peer, peer_if)
        sandbox.run("ip", "link", "set", "dev", sandbox_if, "address", SANDBOX_MAC.hex(":"))
        sandbox.run("ip", "-6", "addr", "add", "fd00:5e::2/64", "dev", sandbox_if, "nodad")
        if peer_link_local:
            peer.run("ip", "-6", "addr", "add", f"{peer_link_local}/64", "dev", peer_if, "nodad")
        link_path, stack_path, sockd_path = (os.path.join(workdir, n) for n in ("linkd.sock", "stackd.sock", "sockd.sock"))
        with netlab.start_linkd(sandbox, f"veth:{sandbox_if}", link_path), \
                netlab.start_stackd(link_path, stack_path) as stackd, \
                netlab.start_sockd(stack_path, sockd_path):
            client = Client(f"unix:{sockd_path}")
            try:
                yield client, peer, peer_if
            finally:
                client.close()
                print(stackd.log_text())


def link_local_addresses(client: Client) -> list[str]:
    nic = client.info("ListInterfaces").interfaces[1]
    return [str(ipaddress.ip_address(a.ip)) for a in nic.addresses if a.ip[:2] == b"\xfe\x80"]


def counter_value(client: Client, name: str) -> int:
    return next((c.value for c in client.info("GetCounters").counters if c.name == name), 0)


def wait_not_tentative(ns, ifname: str, timeout: float = 10.0) -> None:
    """Wait until no IPv6 address of ``ifname`` in ``ns`` is still tentative."""
    deadline = time.monotonic() + timeout
    while ns.run("ip", "-6", "addr", "show", "dev", ifname, "tentative").stdout.strip():
        if time.monotonic() > deadline:
            raise AssertionError(f"IPv6 addresses of {ifname} are still tentative after {timeout} s")
        time.sleep(0.1)


def test_self_configured_link_local_passes_dad():
    # RFC 4862 section 5.4: the address takes traffic once its probe went unanswered for 1 s.
    expected = eui64_link_local(SANDBOX_MAC)
    with sandbox_without_link_local() as (client, peer, peer_if):
        deadline = time.monotonic() + 5
        while expected not in link_local_addresses(client) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert expected in link_local_addresses(client)
        # The peer's kernel runs DAD on its own link-local address too, and
        # ping has no source address until that finishes.
        wait_not_tentative(peer, peer_if)
        result = peer.run("ping", "-6", "-c", "2", "-i", "0.5", "-W", "3", f"{expected}%{peer_if}", check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert counter_value(client, "Ndp6.DadFailures") == 0


def test_self_configured_link_local_fails_dad_when_taken():
    # The peer's kernel already uses the address, so it replies to the DAD probe
    # with an advertisement, and the stack gives the address up.
    taken = eui64_link_local(SANDBOX_MAC)
    with sandbox_without_link_local(peer_link_local=taken) as (client, _, _):
        deadline = time.monotonic() + 5
        while counter_value(client, "Ndp6.DadFailures") == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert counter_value(client, "Ndp6.DadFailures") == 1
        assert taken not in link_local_addresses(client)
