"""Impairment relay: a seeded faulty wire between two veth devices.

Run inside a middle network namespace, the relay bridges two interfaces with
AF_PACKET sockets. To every frame in either direction it applies loss,
duplication, bit flips, reordering and delay with jitter. All draws come from
one seeded random generator, so that a run can be repeated.

    python tests/impair.py --left mA --right mB --loss 0.05 --reorder 0.25 \\
        --duplicate 0.01 --corrupt 0.001 --delay-ms 1 --jitter-ms 1 --seed 7

It runs until SIGTERM or SIGINT and then prints its counters as one JSON
line on stdout. Reordering holds a frame back by ``--reorder-ms`` so that
the frames behind it overtake it. A bit flip inverts one random bit after
the Ethernet header, so IP, TCP or payload bytes change and the receiver's
checksums must catch it.

``impaired_path()`` builds the whole topology for a test: a sandbox and a
peer namespace on the same subnet, joined through a middle namespace that
runs the relay, with offloads off so that every frame on the wire carries a
complete checksum.
"""

import argparse
import contextlib
import dataclasses
import heapq
import json
import os
import random
import secrets
import select
import signal
import socket
import subprocess
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
ETHERNET_HEADER_LEN = 14
_SOCKET_BUFFER = 4 << 20


@dataclasses.dataclass
class Impairment:
    """Fault probabilities per frame (0 to 1) and delays in milliseconds."""

    loss: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    corrupt: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    reorder_ms: float = 3.0
    seed: int = 1

    def arguments(self) -> list[str]:
        """Return the command-line flags that select this impairment."""
        return ["--loss", str(self.loss), "--reorder", str(self.reorder), "--duplicate", str(self.duplicate),
                "--corrupt", str(self.corrupt), "--delay-ms", str(self.delay_ms), "--jitter-ms",
                str(self.jitter_ms), "--reorder-ms", str(self.reorder_ms), "--seed", str(self.seed)]


class Relay:
    """A forwarder of frames between two AF_PACKET sockets, through a schedule of release times."""

    def __init__(self, left: str, right: str, impairment: Impairment):
        self.impairment = impairment
        self.random = random.Random(impairment.seed)
        self.sockets = {}
        for name in (left, right):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            sock.bind((name, 0))
            sock.setblocking(False)
            self.sockets[name] = sock
        self.peer_of = {self.sockets[left]: self.sockets[right], self.sockets[right]: self.sockets[left]}
        self.schedule: list[tuple[float, int, socket.socket, bytes]] = []
        self.sequence = 0
        self.counters = {"frames": 0, "lost": 0, "duplicated": 0, "corrupted": 0, "reordered": 0,
                         "sent": 0, "send_errors": 0}
        self.stopping = False

    def _enqueue(self, frame: bytes, out: socket.socket, now: float) -> None:
        impairment = self.impairment
        rng = self.random
        copies = 2 if rng.random() < impairment.duplicate else 1
        if copies == 2:
            self.counters["duplicated"] += 1
        for _ in range(copies):
            data = frame
            if rng.random() < impairment.corrupt and len(frame) > ETHERNET_HEADER_LEN:
                bit = rng.randrange((len(frame) - ETHERNET_HEADER_LEN) * 8)
                mutable = bytearray(frame)
                mutable[ETHERNET_HEADER_LEN + bit // 8] ^= 1 << (bit % 8)
                data = bytes(mutable)
                self.counters["corrupted"] += 1
            delay = impairment.delay_ms + rng.uniform(0, impairment.jitter_ms)
            if rng.random() < impairment.reorder:
                delay += impairment.reorder_ms
                self.counters["reordered"] += 1
            self.sequence += 1
            heapq.heappush(self.schedule, (now + delay / 1000, self.sequence, out, data))

    def _receive(self, sock: socket.socket, now: float) -> None:
        for _ in range(256):
            try:
                frame, address = sock.recvfrom(65536)
            except BlockingIOError:
                return
            if address[2] == PACKET_OUTGOING:
                continue        # our own transmission, seen by the packet socket
            self.counters["frames"] += 1
            if self.random.random() < self.impairment.loss:
                self.counters["lost"] += 1
                continue
            self._enqueue(frame, self.peer_of[sock], now)

    def _release(self, now: float) -> None:
        while self.schedule and self.schedule[0][0] <= now:
            _, _, out, data = heapq.heappop(self.schedule)
            try:
                out.send(data)
                self.counters["sent"] += 1
            except OSError:
                self.counters["send_errors"] += 1

    def run(self) -> None:
        """Relay until ``stopping`` is set by a signal."""
        sockets = list(self.sockets.values())
        while not self.stopping:
            now = time.monotonic()
            timeout = 0.05
            if self.schedule:
                timeout = max(min(self.schedule[0][0] - now, timeout), 0)
            try:
                ready, _, _ = select.select(sockets, [], [], timeout)
            except InterruptedError:
                continue
            now = time.monotonic()
            for sock in ready:
                self._receive(sock, now)
            self._release(time.monotonic())


def main() -> None:
    parser = argparse.ArgumentParser(description="Bridge two interfaces with seeded faults.")
    parser.add_argument("--left", required=True, help="first interface name")
    parser.add_argument("--right", required=True, help="second interface name")
    for name in ("loss", "reorder", "duplicate", "corrupt"):
        parser.add_argument(f"--{name}", type=float, default=0.0, help=f"probability of {name} per frame, 0 to 1")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="fixed one-way delay in milliseconds")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="extra uniform random delay in milliseconds")
    parser.add_argument("--reorder-ms", type=float, default=3.0, help="hold-back of a reordered frame in milliseconds")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random generator")
    args = parser.parse_args()
    for name in ("loss", "reorder", "duplicate", "corrupt"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name} {getattr(args, name)} is outside 0..1; pass a probability")

    impairment = Impairment(args.loss, args.reorder, args.duplicate, args.corrupt, args.delay_ms,
                            args.jitter_ms, args.reorder_ms, args.seed)
    relay = Relay(args.left, args.right, impairment)

    def stop(signum, frame):
        relay.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    relay.run()
    print(json.dumps(relay.counters), flush=True)


# Test topology.

@dataclasses.dataclass
class ImpairedPath:
    """Sandbox and peer namespaces on one subnet, with the relay in a middle namespace between them."""

    sandbox: "object"
    peer: "object"
    middle: "object"
    sandbox_if: str
    peer_if: str
    sandbox_ip: str
    peer_ip: str
    relay: subprocess.Popen

    def stop_relay(self) -> dict:
        """Stop the relay and return its counters."""
        if self.relay.poll() is None:
            self.relay.send_signal(signal.SIGTERM)
        output, _ = self.relay.communicate(timeout=10)
        lines = [line for line in output.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}


def _offloads_off(ns, device: str) -> None:
    ns.run("ethtool", "-K", device, "tx", "off", "tso", "off", "gso", "off", "gro", "off", check=False)


@contextlib.contextmanager
def impaired_path(impairment: Impairment, mtu: int = 1500):
    """Build sandbox <-> relay <-> peer and yield an ImpairedPath; remove everything on exit."""
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    import netlab

    netlab.require_root()
    subnet = secrets.randbelow(0xFF)
    sandbox_ip, peer_ip = f"10.201.{subnet}.2", f"10.201.{subnet}.1"
    with netlab.Netns() as sandbox, netlab.Netns() as middle, netlab.Netns() as peer:
        sandbox_if, left = netlab.unique_name("sns"), netlab.unique_name("snl")
        right, peer_if = netlab.unique_name("snr"), netlab.unique_name("snp")
        netlab.veth_pair(sandbox, sandbox_if, middle, left, mtu)
        netlab.veth_pair(middle, right, peer, peer_if, mtu)
        for ns, device in ((sandbox, sandbox_if), (middle, left), (middle, right), (peer, peer_if)):
            _offloads_off(ns, device)
        sandbox.run("ip", "addr", "add", f"{sandbox_ip}/24", "dev", sandbox_if)
        peer.run("ip", "addr", "add", f"{peer_ip}/24", "dev", peer_if)

        relay = middle.popen(sys.executable, os.path.abspath(__file__), "--left", left, "--right", right,
                             *impairment.arguments(), stdout=subprocess.PIPE, text=True)
        try:
            if relay.stdout.readline().strip() != "ready":
                raise netlab.NetlabError("the impairment relay did not start")
            yield ImpairedPath(sandbox, peer, middle, sandbox_if, peer_if, sandbox_ip, peer_ip, relay)
        finally:
            if relay.poll() is None:
                relay.kill()
                relay.wait()


# Transfers through the path.

PEER_TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "integration", "peer_tools.py")

_KERNEL_CLIENT = """
import hashlib, random, socket, sys, time
mode, host, port, size, seed, algorithm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
sock = socket.socket()
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, algorithm.encode())
sock.settimeout(600)
start = time.monotonic()
sock.connect((host, port))
digest, length = hashlib.sha256(), 0
if mode == "download":
    while chunk := sock.recv(1 << 20):
        digest.update(chunk)
        length += len(chunk)
else:
    data = random.Random(seed).randbytes(size)
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)
    length = size
    digest.update(data)
print(length, digest.hexdigest(), time.monotonic() - start, flush=True)
"""


@dataclasses.dataclass
class TransferResult:
    """What one transfer moved: bytes and sha256 on each end, and the time taken in seconds."""

    sent_bytes: int
    sent_sha256: str
    received_bytes: int
    received_sha256: str
    seconds: float

    @property
    def goodput_mbit(self) -> float:
        return self.received_bytes * 8 / self.seconds / 1e6 if self.seconds else 0.0


def _peer_tool(path: ImpairedPath, *args) -> subprocess.Popen:
    proc = path.peer.popen(sys.executable, PEER_TOOLS, *map(str, args), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if line != "ready":
        raise RuntimeError(f"peer tool {args} did not start: {line!r} {proc.stderr.read()}")
    return proc


def kernel_transfer(path: ImpairedPath, direction: str, size: int, algorithm: str, seed: int = 1,
                    port: int = 5201) -> TransferResult:
    """Move ``size`` bytes between the Linux kernels of both namespaces, for a baseline.

    ``direction`` is "download" (peer to sandbox) or "upload" (sandbox to peer).
    """
    tool = _peer_tool(path, "source", port, size, seed) if direction == "download" else _peer_tool(path, "sink", port)
    result = path.sandbox.run(sys.executable, "-c", _KERNEL_CLIENT, direction, path.peer_ip, port, size, seed,
                              algorithm, timeout=900)
    length, digest, seconds = result.stdout.split()
    peer_output, _ = tool.communicate(timeout=60)
    return _result(direction, int(length), digest, float(seconds), peer_output)


def sandnet_transfer(path: ImpairedPath, client, direction: str, size: int, algorithm: str, seed: int = 1,
                     port: int = 5202) -> TransferResult:
    """Move ``size`` bytes between a sandnet socket (through ``client``) and the peer's kernel."""
    import hashlib

    from sandnet import socket as ssock

    tool = _peer_tool(path, "source", port, size, seed) if direction == "download" else _peer_tool(path, "sink", port)
    sock = ssock.socket(ssock.AF_INET, ssock.SOCK_STREAM, client=client)
    try:
        sock.setsockopt(ssock.IPPROTO_TCP, 13, algorithm.encode())     # TCP_CONGESTION
        sock.settimeout(600)
        start = time.monotonic()
        sock.connect((path.peer_ip, port))
        digest, length = hashlib.sha256(), 0
        if direction == "download":
            while chunk := sock.recv(1 << 20):
                digest.update(chunk)
                length += len(chunk)
        else:
            data = random.Random(seed).randbytes(size)
            sock.sendall(data)
            sock.shutdown(ssock.SHUT_WR)
            sock.recv(1)
            length = size
            digest.update(data)
        seconds = time.monotonic() - start
    finally:
        sock.close()
    peer_output, _ = tool.communicate(timeout=60)
    return _result(direction, length, digest.hexdigest(), seconds, peer_output)


def _result(direction: str, length: int, digest: str, seconds: float, peer_output: str) -> TransferResult:
    fields = peer_output.split()
    if direction == "download":
        return TransferResult(length, fields[-1], length, digest, seconds) if fields else \
            TransferResult(0, "", length, digest, seconds)
    return TransferResult(length, digest, int(fields[0]), fields[1], seconds)


@contextlib.contextmanager
def sandnet_on(path: ImpairedPath):
    """Run linkd (without GSO), stackd and sockd on the path's sandbox side and yield a Client."""
    import tempfile

    import netlab
    from sandnet.client import Client

    with tempfile.TemporaryDirectory(prefix="sn-impair-") as workdir:
        link_path, stack_path, sockd_path = (os.path.join(workdir, name)
                                             for name in ("linkd.sock", "stackd.sock", "sockd.sock"))
        with netlab.start_linkd(path.sandbox, f"veth:{path.sandbox_if}", link_path, gso=False), \
                netlab.start_stackd(link_path, stack_path), netlab.start_sockd(stack_path, sockd_path):
            client = Client(f"unix:{sockd_path}")
            try:
                yield client
            finally:
                client.close()


if __name__ == "__main__":
    main()
