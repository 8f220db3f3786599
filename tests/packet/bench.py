"""The packet bench: the test sits on the wire next to a TCP stack under test.

A device under test (DUT) is either sandnet's stackd, fed through a fake Link
server that takes linkd's place, or the Linux kernel, behind a TAP
device in a network namespace that the bench creates. In both cases the bench
injects hand-built Ethernet frames from a peer host (PEER_IP, PEER_MAC) and
reads every frame the DUT sends, while an agent process drives the DUT's
sockets (tests/packet/agent.py): Python's socket module for Linux and
sandnet.socket (through sockd) for sandnet.

Segments are built here with struct and parsed with dpkt, independent of
stackd's own header code.
"""

import base64
import contextlib
import ctypes
import dataclasses
import fcntl
import itertools
import json
import os
import queue
import random
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

import dpkt
import grpc

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)
import netlab  # noqa: E402

from sandnet.v1 import link_pb2, link_pb2_grpc, sockets_pb2, sockets_pb2_grpc, types_pb2  # noqa: E402

DUT_MAC = bytes.fromhex("020000000a02")
PEER_MAC = bytes.fromhex("020000000a01")
DUT_IP = bytes([10, 77, 0, 2])
PEER_IP = bytes([10, 77, 0, 1])
DUT_ADDR = "10.77.0.2"
PEER_ADDR = "10.77.0.1"
MTU = 1500

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "agent.py")

# Seconds a scenario waits for a segment it expects; long enough for a
# loaded 2-core machine, and only spent when a scenario fails.
EXPECT_TIMEOUT = 5.0


# Building segments.

def checksum(data: bytes) -> int:
    """Return the Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def option_mss(value: int) -> bytes:
    return struct.pack("!BBH", 2, 4, value)


def option_wscale(shift: int) -> bytes:
    return struct.pack("!BBBB", 1, 3, 3, shift)


def option_sack_permitted() -> bytes:
    return struct.pack("!BBBB", 1, 1, 4, 2)


def option_timestamp(value: int, echo: int) -> bytes:
    return struct.pack("!BBBBII", 1, 1, 8, 10, value & 0xFFFFFFFF, echo & 0xFFFFFFFF)


def option_sack(blocks) -> bytes:
    body = b"".join(struct.pack("!II", left & 0xFFFFFFFF, right & 0xFFFFFFFF) for left, right in blocks)
    return struct.pack("!BBBB", 1, 1, 5, 2 + len(body)) + body


def tcp_segment(sport: int, dport: int, seq: int, ack: int, flags: int, window: int = 65535,
                options: bytes = b"", payload: bytes = b"", data_offset: int | None = None,
                bad_checksum: bool = False, src: bytes = PEER_IP, dst: bytes = DUT_IP) -> bytes:
    """Build a TCP segment; ``options`` is padded with EOL to a multiple of 4 bytes.

    ``data_offset`` (in 32-bit words) overrides the computed header length, to
    build malformed segments.
    """
    options = options + b"\0" * (-len(options) % 4)
    offset = data_offset if data_offset is not None else (20 + len(options)) // 4
    header = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                         offset << 4, flags, window, 0, 0)
    segment = bytearray(header + options + payload)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(segment))
    value = checksum(pseudo + bytes(segment))
    if bad_checksum:
        value ^= 0x5A5A
    struct.pack_into("!H", segment, 16, value)
    return bytes(segment)


def ipv4_frame(payload: bytes, proto: int = 6, src: bytes = PEER_IP, dst: bytes = DUT_IP) -> bytes:
    """Wrap ``payload`` in IPv4 (DF set, TTL 64) and Ethernet from the peer to the DUT."""
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), random.getrandbits(16),
                                   0x4000, 64, proto, 0, src, dst))
    struct.pack_into("!H", header, 10, checksum(bytes(header)))
    return DUT_MAC + PEER_MAC + b"\x08\x00" + bytes(header) + payload


@dataclasses.dataclass
class Segment:
    """A TCP segment the DUT sent, with its options decoded."""

    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    timestamp: tuple[int, int] | None = None
    sack: tuple[tuple[int, int], ...] = ()
    time: float = 0.0

    def has(self, flags: int) -> bool:
        return self.flags & flags == flags

    @property
    def flag_names(self) -> str:
        names = [name for bit, name in ((SYN, "SYN"), (ACK, "ACK"), (FIN, "FIN"), (RST, "RST"), (PSH, "PSH"))
                 if self.flags & bit]
        return "|".join(names) or "none"

    def __str__(self) -> str:
        return (f"{self.sport}->{self.dport} {self.flag_names} seq={self.seq} ack={self.ack} "
                f"win={self.window} len={len(self.payload)}")


def parse_segment(tcp: dpkt.tcp.TCP, received: float) -> Segment:
    segment = Segment(sport=tcp.sport, dport=tcp.dport, seq=tcp.seq, ack=tcp.ack, flags=tcp.flags,
                      window=tcp.win, payload=bytes(tcp.data), time=received)
    for kind, body in dpkt.tcp.parse_opts(tcp.opts):
        if kind == 2 and len(body) == 2:
            segment.mss = struct.unpack("!H", body)[0]
        elif kind == 3 and len(body) == 1:
            segment.wscale = body[0]
        elif kind == 4:
            segment.sack_permitted = True
        elif kind == 8 and len(body) == 8:
            segment.timestamp = struct.unpack("!II", body)
        elif kind == 5 and len(body) % 8 == 0:
            segment.sack = tuple(struct.unpack_from("!II", body, offset) for offset in range(0, len(body), 8))
    return segment


# Driving the DUT's sockets.

class AgentProcess:
    """The agent subprocess and the futures of its pending calls."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None):
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        self._ids = itertools.count(1)
        self._pending: dict[int, futures.Future] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_replies, daemon=True)
        self._reader.start()

    def _read_replies(self) -> None:
        for line in self.process.stdout:
            reply = json.loads(line)
            with self._lock:
                future = self._pending.pop(reply["id"])
            future.set_result(reply)
        with self._lock:
            for future in self._pending.values():
                future.set_exception(RuntimeError("the socket agent exited: " + self.process.stderr.read()))
            self._pending.clear()

    def start(self, handle: int, method: str, *args) -> futures.Future:
        """Send one call and return a Future of its raw reply."""
        request_id = next(self._ids)
        future: futures.Future = futures.Future()
        with self._lock:
            self._pending[request_id] = future
        line = json.dumps({"id": request_id, "handle": handle, "method": method,
                           "args": [_encode_arg(arg) for arg in args]})
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return future

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _encode_arg(value):
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": base64.b64encode(value).decode()}
    if isinstance(value, tuple):
        return [_encode_arg(item) for item in value]
    return value


class Call:
    """A socket call running in the agent; ``result()`` waits for it."""

    def __init__(self, agent: AgentProcess, future: futures.Future):
        self._agent = agent
        self._future = future

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float = EXPECT_TIMEOUT):
        """Return the call's value, or raise OSError with the errno the DUT returned."""
        reply = self._future.result(timeout)
        if "errno" in reply:
            raise OSError(reply["errno"], reply["message"])
        return _decode_result(self._agent, reply["value"])


def _decode_result(agent: AgentProcess, value):
    if isinstance(value, dict) and "bytes" in value:
        return base64.b64decode(value["bytes"])
    if isinstance(value, dict) and "socket" in value:
        return RemoteSocket(agent, value["socket"])
    if isinstance(value, list):
        return tuple(_decode_result(agent, item) for item in value)
    return value


class RemoteSocket:
    """A socket in the agent; every socket.socket method named in agent.py is callable.

    ``sock.recv(10)`` waits for the result, ``sock.start("accept")`` returns a
    Call at once.
    """

    def __init__(self, agent: AgentProcess, handle: int):
        self._agent = agent
        self.handle = handle

    def start(self, method: str, *args) -> Call:
        return Call(self._agent, self._agent.start(self.handle, method, *args))

    def __getattr__(self, method: str):
        def call(*args, timeout: float = EXPECT_TIMEOUT):
            return self.start(method, *args).result(timeout)
        return call


# Devices under test.

class Dut:
    """What the scenarios see of a stack under test: frames in and out, sockets, counters."""

    name = ""

    def __init__(self):
        self._flows: dict[int, queue.Queue] = {}
        self._flows_lock = threading.Lock()
        self.agent: AgentProcess | None = None
        self.ports = itertools.count(random.randrange(20000, 30000))

    def send_frame(self, frame: bytes) -> None:
        raise NotImplementedError

    def counters(self) -> dict[str, int]:
        """Return the TCP counters as (Tcp or TcpExt name) -> value, without the group prefix."""
        raise NotImplementedError

    def socket(self, family: int = 2, type_: int = 1) -> RemoteSocket:
        """Create a socket (AF_INET, SOCK_STREAM by default) in the DUT."""
        value = Call(self.agent, self.agent.start(0, "socket", family, type_)).result()
        return value

    def flow(self, peer_port: int) -> queue.Queue:
        """Return the queue of segments the DUT sends to ``peer_port`` on the peer."""
        with self._flows_lock:
            return self._flows.setdefault(peer_port, queue.Queue())

    def next_port(self) -> int:
        """Return a port that no earlier scenario of this run used."""
        return next(self.ports)

    def receive_frame(self, frame: bytes) -> None:
        """Sort one frame from the DUT: reply to ARP requests for the peer, queue TCP by peer port."""
        received = time.monotonic()
        try:
            eth = dpkt.ethernet.Ethernet(frame)
        except dpkt.UnpackError:
            return
        if isinstance(eth.data, dpkt.arp.ARP):
            arp = eth.data
            if arp.op == dpkt.arp.ARP_OP_REQUEST and arp.tpa == PEER_IP:
                reply = dpkt.arp.ARP(op=dpkt.arp.ARP_OP_REPLY, sha=PEER_MAC, spa=PEER_IP, tha=arp.sha, tpa=arp.spa)
                self.send_frame(bytes(dpkt.ethernet.Ethernet(dst=arp.sha, src=PEER_MAC,
                                                             type=dpkt.ethernet.ETH_TYPE_ARP, data=reply)))
            return
        ip = eth.data
        if not isinstance(ip, dpkt.ip.IP) or ip.dst != PEER_IP or not isinstance(ip.data, dpkt.tcp.TCP):
            return
        segment = parse_segment(ip.data, received)
        self.flow(segment.dport).put(segment)

    def close(self) -> None:
        if self.agent is not None:
            self.agent.close()


class FakeLink(link_pb2_grpc.LinkServicer):
    """A Link server whose frames come from and go to the bench."""

    def __init__(self, dut: "SandnetDut"):
        self.dut = dut
        self.to_stack: queue.Queue = queue.Queue()

    def GetConfig(self, request, context):
        address = types_pb2.InterfaceAddress(ip=DUT_IP, prefix_len=24, broadcast=bytes([10, 77, 0, 255]))
        return link_pb2.LinkConfig(
            interface=types_pb2.Interface(index=2, name="eth0", mac=DUT_MAC, mtu=MTU, up=True, addresses=[address]),
            routes=[types_pb2.Route(family=4, dst=b"", dst_len=0, gateway=PEER_IP, device="eth0")])

    def Frames(self, request_iterator, context):
        def read_frames():
            try:
                for batch in request_iterator:
                    for frame in batch.frames:
                        self.dut.receive_frame(bytes(frame.data))
            except grpc.RpcError:
                pass        # stackd closed the stream: it stopped or reconnects

        threading.Thread(target=read_frames, daemon=True).start()
        while context.is_active():
            try:
                frames = [self.to_stack.get(timeout=0.1)]
            except queue.Empty:
                continue
            while len(frames) < 64:
                try:
                    frames.append(self.to_stack.get_nowait())
                except queue.Empty:
                    break
            yield link_pb2.FrameBatch(frames=[link_pb2.Frame(data=frame) for frame in frames])


class SandnetDut(Dut):
    """stackd and sockd, with the bench serving the Link contract in stackd's place."""

    name = "sandnet"

    def __init__(self, stack: contextlib.ExitStack):
        super().__init__()
        workdir = tempfile.mkdtemp(prefix="sn-bench-")
        stack.callback(lambda: subprocess.run(["rm", "-rf", workdir], check=False))
        link_path, stack_path, sockd_path = (os.path.join(workdir, name)
                                             for name in ("link.sock", "stack.sock", "sockd.sock"))
        self.link = FakeLink(self)
        server = grpc.server(futures.ThreadPoolExecutor(4))
        link_pb2_grpc.add_LinkServicer_to_server(self.link, server)
        server.add_insecure_port(f"unix:{link_path}")
        server.start()
        stack.callback(server.stop, 0)
        self.stackd = stack.enter_context(netlab.start_stackd(link_path, stack_path))
        self.sockd = stack.enter_context(netlab.start_sockd(stack_path, sockd_path))
        self.channel = grpc.insecure_channel(f"unix:{stack_path}")
        stack.callback(self.channel.close)
        self.netinfo = sockets_pb2_grpc.NetinfoStub(self.channel)
        self.agent = AgentProcess([sys.executable, AGENT, "sandnet"], env={"SANDNET_SOCKD": f"unix:{sockd_path}"})
        stack.callback(self.close)

    def send_frame(self, frame: bytes) -> None:
        self.link.to_stack.put(frame)

    def counters(self) -> dict[str, int]:
        reply = self.netinfo.GetCounters(sockets_pb2.ListRequest(), timeout=10)
        return {c.name.split(".", 1)[1]: c.value for c in reply.counters if c.name.startswith("Tcp.")}

    @property
    def alive(self) -> bool:
        return self.stackd.process.poll() is None

    def default_congestion_control(self) -> str:
        return "cubic"


_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_CLONE_NEWNET = 0x40000000


def open_tap_in(ns: netlab.Netns, name: str) -> int:
    """Create TAP device ``name`` inside ``ns`` and return its file descriptor.

    A helper thread enters the namespace with setns(2), which changes only
    that thread, so the device is born inside the namespace.
    """
    result: dict = {}

    def create():
        libc = ctypes.CDLL(None, use_errno=True)
        ns_fd = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
        try:
            if libc.setns(ns_fd, _CLONE_NEWNET) != 0:
                result["error"] = OSError(ctypes.get_errno(), f"setns into {ns.name} failed")
                return
            fd = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TAP | _IFF_NO_PI))
            result["fd"] = fd
        except OSError as error:
            result["error"] = error
        finally:
            os.close(ns_fd)

    thread = threading.Thread(target=create)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["fd"]


class LinuxDut(Dut):
    """The Linux kernel in a namespace of its own, behind a TAP device the bench reads and writes."""

    name = "linux"

    def __init__(self, stack: contextlib.ExitStack):
        super().__init__()
        netlab.require_root()
        self.ns = stack.enter_context(netlab.Netns())
        for key in ("all", "default"):
            self.ns.run("sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
        self.tap_name = netlab.unique_name("snt")
        self.tap = open_tap_in(self.ns, self.tap_name)
        stack.callback(os.close, self.tap)
        self.ns.run("ip", "link", "set", self.tap_name, "address", DUT_MAC.hex(":"), "mtu", str(MTU), "up")
        self.ns.run("ip", "addr", "add", f"{DUT_ADDR}/24", "dev", self.tap_name)
        self.ns.run("ip", "neigh", "replace", PEER_ADDR, "lladdr", PEER_MAC.hex(":"), "dev", self.tap_name,
                    "nud", "permanent")

        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read_frames, daemon=True)
        self._reader.start()
        stack.callback(self._stop.set)
        self.agent = AgentProcess(self.ns.command(sys.executable, AGENT, "linux"))
        stack.callback(self.close)

    def _read_frames(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.tap], [], [], 0.1)
            if not ready:
                continue
            try:
                frame = os.read(self.tap, 65536)
            except OSError:
                return
            self.receive_frame(frame)

    def send_frame(self, frame: bytes) -> None:
        os.write(self.tap, frame)

    def sysctl(self, name: str, value) -> None:
        """Set a per-namespace sysctl such as net.ipv4.tcp_syncookies."""
        self.ns.run("sysctl", "-qw", f"{name}={value}")

    def default_congestion_control(self) -> str:
        """Return the namespace's tcp_congestion_control, which a new namespace copies from the host."""
        return self.ns.run("cat", "/proc/sys/net/ipv4/tcp_congestion_control").stdout.strip()

    def counters(self) -> dict[str, int]:
        text = self.ns.run("cat", "/proc/net/snmp", "/proc/net/netstat").stdout.splitlines()
        values: dict[str, int] = {}
        for header, numbers in zip(text[::2], text[1::2]):
            group, names = header.split(":", 1)
            if group not in ("Tcp", "TcpExt"):
                continue
            for name, number in zip(names.split(), numbers.split(":", 1)[1].split()):
                values[name] = int(number)
        return values

    @property
    def alive(self) -> bool:
        return True


# The peer's side of one connection.

class TcpPeer:
    """The peer host's end of one TCP connection with the DUT, built segment by segment.

    ``snd_nxt`` is the next sequence number the peer sends and ``rcv_nxt``
    the next one it expects from the DUT; ``send`` and ``expect`` do not move
    them, the helpers named after handshake steps do.
    """

    def __init__(self, dut: Dut, dut_port: int | None = None, port: int | None = None, iss: int | None = None):
        self.dut = dut
        self.port = port or dut.next_port()
        self.dut_port = dut_port
        self.iss = random.getrandbits(32) if iss is None else iss
        self.snd_nxt = self.iss
        self.rcv_nxt = 0
        self.dut_iss = 0
        self.window = 65535
        self.flow = dut.flow(self.port)

    # Output.

    def send(self, flags: int, seq: int | None = None, ack: int | None = None, payload: bytes = b"",
             window: int | None = None, options: bytes = b"", **build) -> None:
        """Send one segment; seq and ack default to snd_nxt and rcv_nxt."""
        segment = tcp_segment(self.port, self.dut_port, self.snd_nxt if seq is None else seq,
                              self.rcv_nxt if ack is None else ack, flags,
                              self.window if window is None else window, options, payload, **build)
        self.dut.send_frame(ipv4_frame(segment))

    def send_data(self, payload: bytes, flags: int = ACK | PSH, **fields) -> None:
        """Send ``payload`` at snd_nxt and advance snd_nxt past it."""
        self.send(flags, payload=payload, **fields)
        self.snd_nxt = (self.snd_nxt + len(payload) + bool(flags & FIN)) & 0xFFFFFFFF

    # Input.

    def expect(self, predicate=None, timeout: float = EXPECT_TIMEOUT, description: str = "a segment") -> Segment:
        """Return the next segment the DUT sends on this flow that satisfies ``predicate``.

        Segments that do not satisfy it are skipped. Raises AssertionError
        naming ``description`` and the skipped segments on timeout.
        """
        deadline = time.monotonic() + timeout
        skipped = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.dut.name} sent no {description} within {timeout} s; skipped: "
                                     + (", ".join(map(str, skipped)) or "nothing"))
            try:
                segment = self.flow.get(timeout=remaining)
            except queue.Empty:
                continue
            if predicate is None or predicate(segment):
                return segment
            skipped.append(segment)

    def expect_flags(self, flags: int, timeout: float = EXPECT_TIMEOUT) -> Segment:
        """Return the next segment carrying at least ``flags``."""
        names = Segment(0, 0, 0, 0, flags, 0, b"").flag_names
        return self.expect(lambda s: s.has(flags), timeout, description=f"{names} segment")

    def expect_none(self, timeout: float = 1.0, predicate=None) -> None:
        """Assert that the DUT sends nothing on this flow (matching ``predicate``) for ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                segment = self.flow.get(timeout=remaining)
            except queue.Empty:
                return
            if predicate is None or predicate(segment):
                raise AssertionError(f"{self.dut.name} sent {segment}, expected nothing")

    def drain(self) -> list[Segment]:
        """Return and forget every segment queued on this flow."""
        segments = []
        while True:
            try:
                segments.append(self.flow.get_nowait())
            except queue.Empty:
                return segments

    # Handshakes.

    def syn(self, options: bytes | None = None, window: int = 65535) -> Segment:
        """Send a SYN (MSS 1460 and window scale 7 unless ``options``) and return the SYN-ACK."""
        if options is None:
            options = option_mss(1460) + option_wscale(7)
        self.send(SYN, seq=self.iss, ack=0, window=window, options=options)
        synack = self.expect_flags(SYN | ACK)
        self.snd_nxt = (self.iss + 1) & 0xFFFFFFFF
        self.dut_iss = synack.seq
        self.rcv_nxt = (synack.seq + 1) & 0xFFFFFFFF
        return synack

    def connect_to(self, listener_port: int, options: bytes | None = None, window: int = 65535) -> Segment:
        """Open a connection to a DUT listener (SYN, SYN-ACK, ACK) and return the SYN-ACK."""
        self.dut_port = listener_port
        synack = self.syn(options, window)
        self.send(ACK, window=window >> 7 if options is None else window)
        return synack

    def accept_from(self, syn: Segment, options: bytes | None = None, window: int = 65535) -> None:
        """Reply to the DUT's SYN with a SYN-ACK; the caller expects the final ACK."""
        self.dut_port = syn.sport
        self.dut_iss = syn.seq
        self.rcv_nxt = (syn.seq + 1) & 0xFFFFFFFF
        if options is None:
            options = option_mss(1460)
        self.send(SYN | ACK, seq=self.iss, window=window, options=options)
        self.snd_nxt = (self.iss + 1) & 0xFFFFFFFF


class Bench:
    """One DUT plus the helpers the scenarios share."""

    def __init__(self, dut: Dut):
        self.dut = dut

    @property
    def name(self) -> str:
        return self.dut.name

    def peer(self, **fields) -> TcpPeer:
        return TcpPeer(self.dut, **fields)

    def listener(self, backlog: int = 16, options: list[tuple[int, int, int]] = ()) -> tuple[RemoteSocket, int]:
        """Return a DUT socket listening on a fresh port of DUT_ADDR, and that port."""
        sock = self.dut.socket()
        for level, name, value in options:
            sock.setsockopt(level, name, value)
        port = self.dut.next_port()
        sock.bind((DUT_ADDR, port))
        sock.listen(backlog)
        return sock, port

    def established(self, options: bytes | None = None, window: int = 65535,
                    socket_options: list[tuple[int, int, int]] = ()) -> tuple[TcpPeer, RemoteSocket]:
        """Open a connection from the peer to a fresh DUT listener and return it with the accepted socket.

        With ``options`` None the peer offers MSS 1460 and window scale 7, so
        its window field counts 128-byte units after the handshake.
        """
        listener, port = self.listener(options=socket_options)
        peer = self.peer()
        peer.connect_to(port, options=options, window=window)
        conn, _ = listener.accept()
        listener.close()
        conn.settimeout(EXPECT_TIMEOUT)
        return peer, conn

    def connecting(self, socket_options: list[tuple[int, int, int]] = ()) -> tuple[TcpPeer, RemoteSocket, Call, Segment]:
        """Start a DUT connect() to the peer and return (peer, socket, pending connect, SYN)."""
        peer = self.peer()
        sock = self.dut.socket()
        for level, name, value in socket_options:
            sock.setsockopt(level, name, value)
        sock.settimeout(EXPECT_TIMEOUT * 2)
        call = sock.start("connect", (PEER_ADDR, peer.port))
        syn = peer.expect_flags(SYN)
        return peer, sock, call, syn

    def counter(self, name: str) -> int:
        return self.dut.counters().get(name, 0)


@contextlib.contextmanager
def make_bench(kind: str):
    """Start a DUT of ``kind`` ("linux" or "sandnet") and yield its Bench; stop everything on exit."""
    with contextlib.ExitStack() as stack:
        dut = LinuxDut(stack) if kind == "linux" else SandnetDut(stack)
        yield Bench(dut)
