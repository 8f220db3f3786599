"""The network mode matrix: the same client code against sockd in sandbox, host and none mode.

Every mode runs on a fresh topology (a sandbox and a peer namespace joined by
a veth). The peer and the sandbox namespace's own kernel each run an HTTP
server, the latter on 127.0.0.1 only. The expected differences:

| check                              | sandbox      | host         | none         |
|------------------------------------|--------------|--------------|--------------|
| TCP connect to the peer            | 0            | 0            | ENETUNREACH  |
| connect to the kernel's 127.0.0.1  | ECONNREFUSED | 0            | ECONNREFUSED |
| loopback echo inside the mode      | works        | works        | works        |
| `sandnet ip addr` lists the veth   | yes          | yes          | no           |
"""

import contextlib
import errno
import os
import subprocess
import sys
import tempfile
import time

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import netlab  # noqa: E402

from sandnet import socket as snsocket  # noqa: E402
from sandnet.client import Client  # noqa: E402

pytestmark = pytest.mark.netns

SANDNET = os.path.join(netlab.BIN_DIR, "sandnet")
SOCKD = os.path.join(netlab.BIN_DIR, "sandnet-sockd")
STACKD = os.path.join(netlab.BIN_DIR, "sandnet-stackd")
PEER_PORT = 8080
KERNEL_LOOPBACK_PORT = 8081
MODES = ("sandbox", "host", "none")

EXPECTED = {
    "sandbox": {"peer": 0, "kernel_loopback": errno.ECONNREFUSED, "veth_listed": True},
    "host": {"peer": 0, "kernel_loopback": 0, "veth_listed": True},
    "none": {"peer": errno.ENETUNREACH, "kernel_loopback": errno.ECONNREFUSED, "veth_listed": False},
}


@contextlib.contextmanager
def http_server(ns: netlab.Netns, address: str, port: int, root: str):
    """Run the kernel-side `python3 -m http.server` in ``ns`` until the block ends."""
    process = ns.popen(sys.executable, "-m", "http.server", str(port), "--bind", address, "--directory", root,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while ns.run("curl", "-s", "-m", "2", "-o", "/dev/null", f"http://{address}:{port}/",
                     check=False).returncode:
            if time.monotonic() > deadline or process.poll() is not None:
                raise netlab.NetlabError(f"http.server on {address}:{port} did not start")
            time.sleep(0.2)
        yield
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def sockd_in_mode(mode: str, topo: netlab.Topology, workdir: str):
    """Yield the sockd endpoint of ``mode`` on ``topo``; stop its services on exit."""
    sockd_path = os.path.join(workdir, "sockd.sock")
    if mode == "sandbox":
        with running_sandbox_on(topo, workdir):
            yield f"unix:{sockd_path}"
        return
    if mode == "host":
        # Host mode passes calls to the kernel of the namespace sockd runs in.
        argv = [SOCKD, "--network", "host", "--listen", f"unix:{sockd_path}"]
        with netlab.ServiceProcess(argv, sockd_path, ns=topo.sandbox):
            yield f"unix:{sockd_path}"
        return
    stack_path = os.path.join(workdir, "stackd.sock")
    with netlab.ServiceProcess([STACKD, "--network", "none", "--listen", f"unix:{stack_path}"], stack_path), \
            netlab.start_sockd(stack_path, sockd_path, network="none"):
        yield f"unix:{sockd_path}"


@contextlib.contextmanager
def running_sandbox_on(topo: netlab.Topology, workdir: str):
    link_path, stack_path, sockd_path = (os.path.join(workdir, name)
                                         for name in ("linkd.sock", "stackd.sock", "sockd.sock"))
    with netlab.start_linkd(topo.sandbox, f"veth:{topo.sandbox_if}", link_path), \
            netlab.start_stackd(link_path, stack_path), \
            netlab.start_sockd(stack_path, sockd_path):
        yield


@pytest.fixture(scope="module", params=MODES)
def mode(request):
    """(mode name, topology, sockd endpoint, client session) for each mode in turn."""
    with netlab.topology() as topo, tempfile.TemporaryDirectory(prefix="sandnet-modes-") as workdir:
        root = os.path.join(workdir, "www")
        os.makedirs(root)
        with http_server(topo.peer, topo.peer_ip, PEER_PORT, root), \
                http_server(topo.sandbox, "127.0.0.1", KERNEL_LOOPBACK_PORT, root), \
                sockd_in_mode(request.param, topo, workdir) as endpoint, \
                Client(endpoint) as client:
            yield request.param, topo, endpoint, client


# The client code below is the same for every mode.

def connect_errno(client: Client, host: str, port: int) -> int:
    with snsocket.socket(snsocket.AF_INET, snsocket.SOCK_STREAM, client=client) as sock:
        sock.settimeout(10)
        return sock.connect_ex((host, port))


def loopback_echo(client: Client, payload: bytes) -> bytes:
    with snsocket.create_server(("127.0.0.1", 0), client=client) as listener:
        port = listener.getsockname()[1]
        with snsocket.create_connection(("127.0.0.1", port), timeout=10, client=client) as conn:
            accepted, _ = listener.accept()
            with accepted:
                conn.sendall(payload)
                conn.shutdown(snsocket.SHUT_WR)
                accepted.settimeout(10)
                received = b""
                while chunk := accepted.recv(65536):
                    received += chunk
    return received


def test_reach_peer(mode):
    name, topo, _, client = mode
    assert connect_errno(client, topo.peer_ip, PEER_PORT) == EXPECTED[name]["peer"]


def test_kernel_loopback_isolation(mode):
    name, _, _, client = mode
    assert connect_errno(client, "127.0.0.1", KERNEL_LOOPBACK_PORT) == EXPECTED[name]["kernel_loopback"]


def test_loopback_echo(mode):
    _, _, _, client = mode
    payload = os.urandom(100_000)
    assert loopback_echo(client, payload) == payload


def test_ip_addr_lists_interfaces(mode):
    name, topo, endpoint, _ = mode
    result = subprocess.run([SANDNET, "--sockd", endpoint, "ip", "addr"], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert "127.0.0.1/8" in result.stdout
    assert (topo.sandbox_if in result.stdout) is EXPECTED[name]["veth_listed"]
    assert (f"{topo.sandbox_ip}/24" in result.stdout) is EXPECTED[name]["veth_listed"]


def test_reflection_lists_services(mode):
    _, _, endpoint, _ = mode
    with grpc.insecure_channel(endpoint) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {service.name for service in reply.list_services_response.service}
    assert {"sandnet.v1.Sockets", "sandnet.v1.Netinfo", "grpc.health.v1.Health"} <= names


def test_second_connect_is_eisconn(mode):
    _, _, _, client = mode
    with snsocket.create_server(("127.0.0.1", 0), client=client) as listener:
        with snsocket.socket(snsocket.AF_INET, snsocket.SOCK_STREAM, client=client) as sock:
            sock.settimeout(None)
            sock.connect(listener.getsockname())
            # Linux gives EISCONN to a blocking socket that is already connected.
            assert sock.connect_ex(listener.getsockname()) == errno.EISCONN


def test_wildcard_destination_means_loopback(mode):
    _, _, _, client = mode
    with snsocket.create_server(("127.0.0.1", 0), client=client) as listener:
        # Linux connects 0.0.0.0 to the local host.
        assert connect_errno(client, "0.0.0.0", listener.getsockname()[1]) == 0
