"""Helpers for integration tests on real network namespaces.

Everything here creates uniquely named namespaces and devices (prefix "sn")
and removes them on exit, also when a test fails. The helpers need root and
iproute2, and have no pytest dependency; tests import them as ``import netlab``
(pytest puts tests/ on sys.path through tests/conftest.py).

A typical test::

    with netlab.topology() as topo, tempfile.TemporaryDirectory() as tmp:
        with netlab.start_linkd(topo.sandbox, f"veth:{topo.sandbox_if}", f"{tmp}/linkd.sock") as linkd:
            topo.peer.run("ping", "-c1", "-W1", topo.sandbox_ip, check=False)
"""

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The console scripts (sandnet-linkd, ...) sit next to the interpreter in the venv.
BIN_DIR = os.path.dirname(sys.executable)


class NetlabError(RuntimeError):
    """A test environment step failed; the message includes the command's output."""


def require_root() -> None:
    """Raise NetlabError unless the process is root and iproute2 is installed."""
    if os.geteuid() != 0:
        raise NetlabError("network namespace tests need root; run them with sudo or as root")
    if shutil.which("ip") is None:
        raise NetlabError("the ip command (iproute2) is missing; run make setup")


def unique_name(prefix: str = "sn") -> str:
    """Return a name of at most 12 characters that no other test run uses, such as sn3fa09c1d."""
    return prefix + secrets.token_hex(4)


def _run(argv: Sequence[str], check: bool = True, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    result = subprocess.run(list(argv), timeout=timeout, check=False, **kwargs)
    if check and result.returncode != 0:
        raise NetlabError(
            f"command {' '.join(map(str, argv))} failed with exit status {result.returncode}:\n"
            f"{result.stdout or ''}{result.stderr or ''}"
        )
    return result


class Netns:
    """A network namespace that exists inside the ``with`` block.

    On exit every process still running in it is killed and the namespace
    is deleted, which also deletes the devices inside it.
    """

    def __init__(self, name: str | None = None):
        self.name = name or unique_name()
        self._created = False

    def __enter__(self) -> "Netns":
        _run(["ip", "netns", "add", self.name])
        self._created = True
        self.run("ip", "link", "set", "lo", "up")
        return self

    def __exit__(self, *exc_info) -> None:
        self.delete()

    def delete(self) -> None:
        """Kill the processes left in the namespace, then delete it; safe to call twice."""
        if not self._created:
            return
        pids = _run(["ip", "netns", "pids", self.name], check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _run(["ip", "netns", "delete", self.name], check=False)
        self._created = False

    def command(self, *argv: str) -> list[str]:
        """Return ``argv`` prefixed to run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *map(str, argv)]

    def run(self, *argv, check: bool = True, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
        """Run a command in the namespace and capture its output as text; raise NetlabError on failure if ``check``."""
        return _run(self.command(*argv), check=check, timeout=timeout, **kwargs)

    def popen(self, *argv, **kwargs) -> subprocess.Popen:
        """Start a command in the namespace; the caller waits for it or kills it."""
        return subprocess.Popen(self.command(*argv), **kwargs)

    def python(self, code: str, timeout: float = 30) -> str:
        """Run ``python3 -c code`` (this interpreter) in the namespace and return its stdout."""
        return self.run(sys.executable, "-c", code, timeout=timeout).stdout


def veth_pair(ns_a: Netns, if_a: str, ns_b: Netns, if_b: str, mtu: int = 1500) -> None:
    """Create a veth pair with one end in each namespace, both up, with the given MTU in bytes."""
    ns_a.run("ip", "link", "add", if_a, "mtu", str(mtu), "type", "veth",
             "peer", "name", if_b, "netns", ns_b.name, "mtu", str(mtu))
    ns_a.run("ip", "link", "set", if_a, "up")
    ns_b.run("ip", "link", "set", if_b, "up")


class Topology:
    """A sandbox and a peer namespace joined by a veth pair, with IPv4 and IPv6 addresses.

    The sandbox has a default route via the peer for each family. IPv6
    addresses are added with nodad, so they are usable at once.
    """

    def __init__(self, sandbox: Netns, peer: Netns, sandbox_if: str, peer_if: str, subnet: int):
        self.sandbox = sandbox
        self.peer = peer
        self.sandbox_if = sandbox_if
        self.peer_if = peer_if
        self.prefix_len = 24
        self.peer_ip = f"10.{subnet >> 8}.{subnet & 0xFF}.1"
        self.sandbox_ip = f"10.{subnet >> 8}.{subnet & 0xFF}.2"
        self.prefix_len6 = 64
        self.peer_ip6 = f"fd00:5a:{subnet:x}::1"
        self.sandbox_ip6 = f"fd00:5a:{subnet:x}::2"


@contextlib.contextmanager
def topology(mtu: int = 1500) -> Iterator[Topology]:
    """Build a Topology and remove it on exit."""
    require_root()
    subnet = secrets.randbelow(0xFFFF)
    with Netns() as sandbox, Netns() as peer:
        topo = Topology(sandbox, peer, unique_name("sns"), unique_name("snp"), subnet)
        veth_pair(sandbox, topo.sandbox_if, peer, topo.peer_if, mtu)

        sandbox.run("ip", "addr", "add", f"{topo.sandbox_ip}/24", "dev", topo.sandbox_if)
        peer.run("ip", "addr", "add", f"{topo.peer_ip}/24", "dev", topo.peer_if)
        sandbox.run("ip", "-6", "addr", "add", f"{topo.sandbox_ip6}/64", "dev", topo.sandbox_if, "nodad")
        peer.run("ip", "-6", "addr", "add", f"{topo.peer_ip6}/64", "dev", topo.peer_if, "nodad")
        sandbox.run("ip", "route", "add", "default", "via", topo.peer_ip, "dev", topo.sandbox_if)
        sandbox.run("ip", "-6", "route", "add", "default", "via", topo.peer_ip6, "dev", topo.sandbox_if)
        yield topo


def health_status(socket_path: str, timeout: float = 1.0) -> int | None:
    """Return the gRPC health status of the server on a unix socket, or None if it does not respond."""
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return None
    return response.status


class ServiceProcess:
    """A sandnet service process, with stdout and stderr captured in a log file.

    Starting waits until the gRPC health check on ``listen_path`` returns
    SERVING, and raises NetlabError with the log if the process exits first
    or the wait times out. ``stop()`` sends SIGTERM and kills the process if
    it does not exit within the timeout.
    """

    def __init__(self, argv: Sequence[str], listen_path: str, ns: Netns | None = None,
                 start_timeout: float = 30, env: dict[str, str] | None = None):
        self.argv = [str(arg) for arg in argv]
        self.listen_path = listen_path
        self.ns = ns
        self.returncode: int | None = None
        self._saved_log: str | None = None
        self._log_dir = tempfile.mkdtemp(prefix="sn-log-")
        self.log_path = os.path.join(self._log_dir, os.path.basename(self.argv[0]) + ".log")
        self._log_file = open(self.log_path, "w")
        command = ns.command(*self.argv) if ns else self.argv
        self.process = subprocess.Popen(command, stdout=self._log_file, stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})})
        try:
            self._wait_serving(start_timeout)
        except BaseException:
            self.kill()
            raise

    def _wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NetlabError(
                    f"{' '.join(self.argv)} exited with status {self.process.returncode} before serving:\n{self.log_text()}"
                )
            if os.path.exists(self.listen_path) and health_status(self.listen_path) == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.1)
        raise NetlabError(f"{' '.join(self.argv)} did not report SERVING within {timeout} s:\n{self.log_text()}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        """Return everything the process has written so far, also after it stopped."""
        if self._saved_log is not None:
            return self._saved_log
        if not self._log_file.closed:
            self._log_file.flush()
        with open(self.log_path, errors="replace") as log:
            return log.read()

    def stop(self, timeout: float = 15) -> int:
        """Send SIGTERM, wait up to ``timeout`` seconds, kill on timeout; return the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self._finish()

    def kill(self) -> int:
        """Kill the process at once and return its exit status."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        return self._finish()

    def _finish(self) -> int:
        self.returncode = self.process.returncode
        if self._saved_log is None:
            self._log_file.close()
            self._saved_log = self.log_text()
            shutil.rmtree(self._log_dir, ignore_errors=True)
        return self.returncode

    def __enter__(self) -> "ServiceProcess":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_linkd(ns: Netns | None, device: str, listen_path: str, gso: bool = True,
                extra: Sequence[str] = ()) -> ServiceProcess:
    """Start ``sandnet-linkd --device DEVICE --listen unix:PATH`` in ``ns`` and wait until it serves."""
    argv = [os.path.join(BIN_DIR, "sandnet-linkd"), "--device", device, "--listen", f"unix:{listen_path}",
            f"--gso={'true' if gso else 'false'}", *extra]
    return ServiceProcess(argv, listen_path, ns)


def start_stackd(link_path: str, listen_path: str, extra: Sequence[str] = (), ns: Netns | None = None) -> ServiceProcess:
    """Start ``sandnet-stackd --link unix:LINK --listen unix:PATH`` and wait until it serves."""
    argv = [os.path.join(BIN_DIR, "sandnet-stackd"), "--link", f"unix:{link_path}", "--listen", f"unix:{listen_path}", *extra]
    return ServiceProcess(argv, listen_path, ns)


def start_sockd(stack_path: str, listen_path: str, network: str = "sandbox", extra: Sequence[str] = (),
                ns: Netns | None = None) -> ServiceProcess:
    """Start ``sandnet-sockd --stack unix:STACK --listen unix:PATH --network NETWORK`` and wait until it serves."""
    argv = [os.path.join(BIN_DIR, "sandnet-sockd"), "--stack", f"unix:{stack_path}", "--listen", f"unix:{listen_path}",
            "--network", network, *extra]
    return ServiceProcess(argv, listen_path, ns)


class RouterTopology:
    """A sandbox and a peer namespace on two subnets joined by a router namespace.

    sandbox (``sandbox_if``) <-> (``router_in``) router (``router_out``) <-> (``peer_if``) peer

    Both links have an MTU of 1500 bytes, but the router's routes towards the
    peer's subnet carry a locked MTU of ``path_mtu``. So the router forwards
    nothing larger in that direction. It sends ICMP fragmentation needed (for
    IPv4 with DF set) or Packet Too Big (IPv6), and fragments IPv4 datagrams
    without DF, while both ends have a 1500-byte link.
    """

    def __init__(self, sandbox: Netns, router: Netns, peer: Netns, subnet: int, path_mtu: int):
        self.sandbox = sandbox
        self.router = router
        self.peer = peer
        self.path_mtu = path_mtu
        self.sandbox_if = unique_name("sns")
        self.router_in = unique_name("snr")
        self.router_out = unique_name("snr")
        self.peer_if = unique_name("snp")
        high, low = subnet >> 8, subnet & 0xFF
        self.router_ip = f"10.{high}.{low}.1"
        self.sandbox_ip = f"10.{high}.{low}.2"
        self.router_far_ip = f"10.{high ^ 0x80}.{low}.1"
        self.peer_ip = f"10.{high ^ 0x80}.{low}.2"
        self.peer_subnet = f"10.{high ^ 0x80}.{low}.0/24"
        self.router_ip6 = f"fd00:5b:{subnet:x}::1"
        self.sandbox_ip6 = f"fd00:5b:{subnet:x}::2"
        self.router_far_ip6 = f"fd00:5c:{subnet:x}::1"
        self.peer_ip6 = f"fd00:5c:{subnet:x}::2"
        self.peer_subnet6 = f"fd00:5c:{subnet:x}::/64"


@contextlib.contextmanager
def router_topology(path_mtu: int = 1280) -> Iterator[RouterTopology]:
    """Build a RouterTopology whose router limits the path towards the peer to
    ``path_mtu`` bytes, and remove it on exit."""
    require_root()
    subnet = secrets.randbelow(0x7FFF)
    with Netns() as sandbox, Netns() as router, Netns() as peer:
        topo = RouterTopology(sandbox, router, peer, subnet, path_mtu)
        veth_pair(sandbox, topo.sandbox_if, router, topo.router_in)
        veth_pair(router, topo.router_out, peer, topo.peer_if)
        router.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")

        sandbox.run("ip", "addr", "add", f"{topo.sandbox_ip}/24", "dev", topo.sandbox_if)
        router.run("ip", "addr", "add", f"{topo.router_ip}/24", "dev", topo.router_in)
        router.run("ip", "addr", "add", f"{topo.router_far_ip}/24", "dev", topo.router_out)
        peer.run("ip", "addr", "add", f"{topo.peer_ip}/24", "dev", topo.peer_if)
        for ns, address, device in ((sandbox, topo.sandbox_ip6, topo.sandbox_if), (router, topo.router_ip6, topo.router_in),
                                    (router, topo.router_far_ip6, topo.router_out), (peer, topo.peer_ip6, topo.peer_if)):
            ns.run("ip", "-6", "addr", "add", f"{address}/64", "dev", device, "nodad")

        sandbox.run("ip", "route", "add", "default", "via", topo.router_ip, "dev", topo.sandbox_if)
        sandbox.run("ip", "-6", "route", "add", "default", "via", topo.router_ip6, "dev", topo.sandbox_if)
        peer.run("ip", "route", "add", "default", "via", topo.router_far_ip, "dev", topo.peer_if)
        peer.run("ip", "-6", "route", "add", "default", "via", topo.router_far_ip6, "dev", topo.peer_if)
        router.run("ip", "route", "replace", topo.peer_subnet, "dev", topo.router_out, "mtu", "lock", str(path_mtu))
        # Metric 256 is the kernel's own route for the subnet, which this replaces.
        router.run("ip", "-6", "route", "replace", topo.peer_subnet6, "dev", topo.router_out, "metric", "256",
                   "mtu", "lock", str(path_mtu))
        yield topo
