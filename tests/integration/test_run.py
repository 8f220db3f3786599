"""`sandnet run`: unmodified Python programs on sandnet, with names resolved by DNS.

The sandbox runs linkd, stackd and sockd; the peer namespace runs the Linux
kernel's network stack, dnsmasq as the DNS server for the sandnet.test zone
and a stock `python3 -m http.server`. Workloads run in a third namespace
that has nothing but its own loopback, so a program that bypassed sandnet
could reach nothing. `ip netns exec` bind-mounts /etc/netns/NAME/resolv.conf
over /etc/resolv.conf, which is how the peer's curl and the workload find
the DNS server.
"""

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import netlab  # noqa: E402
from sandbox_fixture import running_sandbox  # noqa: E402

pytestmark = pytest.mark.netns

SANDNET = os.path.join(netlab.BIN_DIR, "sandnet")
PEER_NAME = "web.sandnet.test"
SANDBOX_NAME = "box.sandnet.test"
PEER_HTTP_PORT = 8080
PAGE = "hello from the peer\n"

URLLIB_FETCH = """
import sys
import urllib.request

with urllib.request.urlopen(sys.argv[1], timeout=20) as response:
    sys.stdout.write(response.read().decode())
"""

ASYNCIO_ECHO = """
import asyncio
import sys


async def echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def main():
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    payload = bytes(range(256)) * 4096
    reader, writer = await asyncio.open_connection("localhost", port)
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    received = await reader.read(-1)
    writer.close()
    await writer.wait_closed()
    print("echo", len(received), received == payload)

    reader, writer = await asyncio.open_connection(sys.argv[1], int(sys.argv[2]))
    writer.write(f"GET /page.txt HTTP/1.0\\r\\nHost: {sys.argv[1]}\\r\\n\\r\\n".encode())
    response = await asyncio.wait_for(reader.read(-1), 20)
    writer.close()
    print("peer", response.split(b"\\r\\n\\r\\n", 1)[1].decode().strip())
    server.close()
    await server.wait_closed()


asyncio.run(main())
"""

SELECTORS_FETCH = """
import select
import selectors
import socket
import sys

host, port = sys.argv[1], int(sys.argv[2])
family, kind, proto, _, address = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0]
sock = socket.socket(family, kind, proto)
sock.setblocking(False)
try:
    sock.connect(address)
except BlockingIOError:
    pass
_, writable, _ = select.select([], [sock], [], 20)
assert writable == [sock], "connect did not complete"
assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
sock.send(f"GET /page.txt HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n".encode())

response = b""
with selectors.DefaultSelector() as selector:
    selector.register(sock, selectors.EVENT_READ)
    while True:
        if not selector.select(20):
            sys.exit("timed out waiting for the response")
        chunk = sock.recv(3)
        if not chunk:
            break
        response += chunk
sock.close()
print(type(selector).__name__, response.split(b"\\r\\n\\r\\n", 1)[1].decode().strip())
"""

UNSUPPORTED_FEATURES = """
import errno
import socket

for family, kind in ((socket.AF_PACKET, socket.SOCK_RAW), (socket.AF_NETLINK, socket.SOCK_DGRAM)):
    try:
        socket.socket(family, kind)
    except OSError as error:
        print(family.name, errno.errorcode[error.errno])

with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
    except OSError as error:
        print("SO_BINDTODEVICE", errno.errorcode[error.errno])

try:
    socket.getaddrinfo("missing.sandnet.test", 80)
except socket.gaierror as error:
    print("missing", error.errno == socket.EAI_NONAME)
"""


@contextlib.contextmanager
def netns_resolv_conf(ns: netlab.Netns, nameserver: str):
    """Give ``ns`` its own resolv.conf, which `ip netns exec` mounts over /etc/resolv.conf."""
    directory = f"/etc/netns/{ns.name}"
    os.makedirs(directory)
    try:
        with open(f"{directory}/resolv.conf", "w") as conf:
            conf.write(f"nameserver {nameserver}\n")
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir("/etc/netns")  # only when no other namespace has files there


@contextlib.contextmanager
def peer_services(topo: netlab.Topology, webroot: str):
    """Run dnsmasq and a kernel-side `python3 -m http.server` in the peer namespace."""
    dnsmasq = topo.peer.popen(
        "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
        "--bind-interfaces", f"--listen-address={topo.peer_ip}", "--local=/sandnet.test/",
        f"--address=/{PEER_NAME}/{topo.peer_ip}", f"--address=/{SANDBOX_NAME}/{topo.sandbox_ip}",
        "--pid-file=", "--log-facility=-", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    web = topo.peer.popen(sys.executable, "-m", "http.server", str(PEER_HTTP_PORT), "--bind", topo.peer_ip,
                          "--directory", webroot, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while topo.peer.run("curl", "-s", "-m", "2", "-o", "/dev/null",
                            f"http://{topo.peer_ip}:{PEER_HTTP_PORT}/page.txt", check=False).returncode:
            if time.monotonic() > deadline or dnsmasq.poll() is not None:
                raise netlab.NetlabError(f"peer services did not start; dnsmasq: {dnsmasq.poll()}")
            time.sleep(0.2)
        yield
    finally:
        for process in (web, dnsmasq):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def world():
    """A running sandbox, the peer's DNS and HTTP servers, and an empty workload namespace."""
    with running_sandbox() as box, tempfile.TemporaryDirectory(prefix="sandnet-run-") as workdir:
        webroot = os.path.join(workdir, "www")
        os.makedirs(webroot)
        with open(os.path.join(webroot, "page.txt"), "w") as page:
            page.write(PAGE)
        for name, source in (("fetch.py", URLLIB_FETCH), ("echo.py", ASYNCIO_ECHO),
                             ("selectors_fetch.py", SELECTORS_FETCH), ("unsupported.py", UNSUPPORTED_FEATURES)):
            with open(os.path.join(workdir, name), "w") as script:
                script.write(textwrap.dedent(source))
        with netlab.Netns() as workload, peer_services(box.topo, webroot), \
                netns_resolv_conf(box.topo.peer, box.topo.peer_ip), \
                netns_resolv_conf(workload, box.topo.peer_ip):
            yield box, workload, workdir


def run_env(box) -> dict[str, str]:
    return {**os.environ, "SANDNET_SOCKD": box.sockd_endpoint}


def sandnet_run(world, *argv, timeout: float = 60) -> subprocess.CompletedProcess:
    box, workload, _ = world
    return workload.run(SANDNET, "run", "--", *argv, check=False, timeout=timeout, env=run_env(box))


def test_urllib_fetches_peer_by_name(world):
    box, _, workdir = world
    result = sandnet_run(world, "python3", f"{workdir}/fetch.py", f"http://{PEER_NAME}:{PEER_HTTP_PORT}/page.txt")
    assert result.returncode == 0, result.stderr + box.logs()
    assert result.stdout == PAGE


def test_http_server_serves_peer_curl_by_name(world):
    box, workload, workdir = world
    root = os.path.join(workdir, "www")
    server = workload.popen(SANDNET, "run", "--", "python3", "-m", "http.server", "8000", "--bind", "0.0.0.0",
                            "--directory", root, env=run_env(box), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            fetched = box.topo.peer.run("curl", "-sS", "-m", "5", f"http://{SANDBOX_NAME}:8000/page.txt",
                                        check=False)
            if fetched.returncode == 0 or time.monotonic() > deadline or server.poll() is not None:
                break
            time.sleep(0.5)
    finally:
        server.terminate()
        output = server.communicate(timeout=15)[0]
    assert fetched.returncode == 0, fetched.stderr + output + box.logs()
    assert fetched.stdout == PAGE
    assert '"GET /page.txt HTTP/1.1" 200' in output


def test_asyncio_echo_and_peer_fetch(world):
    box, _, workdir = world
    result = sandnet_run(world, "python3", f"{workdir}/echo.py", PEER_NAME, str(PEER_HTTP_PORT))
    assert result.returncode == 0, result.stderr + box.logs()
    lines = result.stdout.splitlines()
    assert lines[0] == f"echo {256 * 4096} True"
    assert lines[1] == f"peer {PAGE.strip()}"


def test_select_and_selectors_fetch(world):
    box, _, workdir = world
    result = sandnet_run(world, "python3", f"{workdir}/selectors_fetch.py", PEER_NAME, str(PEER_HTTP_PORT))
    assert result.returncode == 0, result.stderr + box.logs()
    assert result.stdout.strip() == f"SandnetSelector {PAGE.strip()}"


def test_nameserver_flag_overrides_resolv_conf(world):
    box, workload, workdir = world
    # 127.0.0.9 is the sandbox's own loopback, where no DNS server listens.
    result = workload.run(SANDNET, "run", "--nameserver", "127.0.0.9", "--", "python3", f"{workdir}/fetch.py",
                          f"http://{PEER_NAME}:{PEER_HTTP_PORT}/page.txt", check=False, timeout=60,
                          env=run_env(box))
    assert result.returncode != 0
    assert "cannot resolve 'web.sandnet.test'" in result.stderr


def test_unsupported_features_get_linux_errnos(world):
    box, _, workdir = world
    result = sandnet_run(world, "python3", f"{workdir}/unsupported.py")
    assert result.returncode == 0, result.stderr + box.logs()
    lines = result.stdout.splitlines()
    assert "AF_PACKET EAFNOSUPPORT" in lines
    assert "AF_NETLINK EAFNOSUPPORT" in lines
    assert "SO_BINDTODEVICE ENOPROTOOPT" in lines
    assert "missing True" in lines


def test_run_without_sockd_fails_in_one_line(world):
    _, workload, workdir = world
    result = workload.run(SANDNET, "--sockd", f"unix:{workdir}/absent.sock", "run", "--", "python3", "-c", "1",
                          check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "sockd is not reachable" in result.stderr


def test_run_unknown_command_exits_127(world):
    box, workload, _ = world
    result = workload.run(SANDNET, "run", "--", "sn-no-such-program", check=False, env=run_env(box))
    assert result.returncode == 127
    assert "command not found: sn-no-such-program" in result.stderr


def test_stats_prints_counters(world):
    box, workload, _ = world
    result = workload.run(SANDNET, "stats", check=False, env=run_env(box))
    assert result.returncode == 0, result.stderr
    assert "Tcp:" in result.stdout.splitlines()
    assert any(line.strip().startswith("ActiveOpens:") for line in result.stdout.splitlines())



def test_same_program_without_run_cannot_reach_peer(world):
    _, workload, workdir = world
    result = workload.run("python3", f"{workdir}/fetch.py", f"http://{PEER_NAME}:{PEER_HTTP_PORT}/page.txt",
                          check=False, timeout=60)
    assert result.returncode != 0
    assert PAGE not in result.stdout
