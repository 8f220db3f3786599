"""End to end: a workload's sockets through sockd, stackd and linkd, with the
Linux kernel in the peer namespace on the other side of the veth."""

import errno
import hashlib
import os
import random
import subprocess
import sys
import threading

import pytest

from sandbox_fixture import running_sandbox, start_peer_tool
from sandnet import socket as ssock

pytestmark = pytest.mark.netns

CLI = os.path.join(os.path.dirname(sys.executable), "sandnet")


@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox() as box:
        yield box
        print(box.logs())


def cli(box, *args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "--sockd", box.sockd_endpoint, *args], capture_output=True, text=True, timeout=timeout)


def sock(box, type_=ssock.SOCK_STREAM, proto=0) -> ssock.socket:
    return ssock.socket(ssock.AF_INET, type_, proto, client=box.client)


def test_ip_addr_shows_veth_and_loopback(sandbox):
    result = cli(sandbox, "ip", "addr")
    assert result.returncode == 0, result.stderr
    assert f"inet {sandbox.topo.sandbox_ip}/24" in result.stdout
    assert "inet 127.0.0.1/8 scope host lo" in result.stdout
    assert sandbox.topo.sandbox_if in result.stdout


def test_ip_route_shows_default_via_peer(sandbox):
    result = cli(sandbox, "ip", "route")
    assert result.returncode == 0, result.stderr
    assert f"default via {sandbox.topo.peer_ip}" in result.stdout


def test_kernel_no_longer_owns_address(sandbox):
    shown = sandbox.topo.sandbox.run("ip", "-4", "addr", "show", "dev", sandbox.topo.sandbox_if).stdout
    assert sandbox.topo.sandbox_ip not in shown


def test_peer_ping_gets_replies(sandbox):
    result = sandbox.topo.peer.run("ping", "-c", "3", "-i", "0.2", "-W", "2", sandbox.topo.sandbox_ip, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 received" in result.stdout


def test_sandnet_ping_reaches_peer(sandbox):
    result = cli(sandbox, "ping", "-c", "2", sandbox.topo.peer_ip)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 received" in result.stdout or "2 packets received" in result.stdout


def test_get_fetches_from_peer_http_server(sandbox, tmp_path):
    (tmp_path / "hello.txt").write_text("hello from the peer\n")
    server = sandbox.topo.peer.popen(sys.executable, "-m", "http.server", "8000", "--bind", sandbox.topo.peer_ip,
                                     "--directory", str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            result = cli(sandbox, "get", f"http://{sandbox.topo.peer_ip}:8000/hello.txt")
            if result.returncode == 0:
                break
        assert result.returncode == 0, result.stderr
        assert result.stdout == "hello from the peer\n"
    finally:
        server.terminate()
        server.wait()


def test_peer_curl_reaches_sandbox_listener(sandbox):
    listener = sock(sandbox)
    listener.setsockopt(ssock.SOL_SOCKET, ssock.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", 8080))
    listener.listen(4)
    body = b"served from inside the sandbox\n"

    def serve():
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        result = sandbox.topo.peer.run("curl", "-sS", "--max-time", "20", f"http://{sandbox.topo.sandbox_ip}:8080/", check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout == body.decode()
    finally:
        thread.join(10)
        listener.close()


def test_bulk_from_peer_matches_sha256(sandbox):
    size = 20 * 1024 * 1024
    proc = start_peer_tool(sandbox.topo.peer, "source", 9101, size, 7)
    conn = sock(sandbox)
    conn.settimeout(120)
    conn.connect((sandbox.topo.peer_ip, 9101))
    digest, length = hashlib.sha256(), 0
    while chunk := conn.recv(1 << 20):
        digest.update(chunk)
        length += len(chunk)
    conn.close()
    expected = proc.communicate(timeout=60)[0].strip()
    assert length == size
    assert digest.hexdigest() == expected


def test_bulk_to_peer_matches_sha256(sandbox):
    size = 20 * 1024 * 1024
    data = random.Random(11).randbytes(size)
    proc = start_peer_tool(sandbox.topo.peer, "sink", 9102)
    conn = sock(sandbox)
    conn.settimeout(120)
    conn.connect((sandbox.topo.peer_ip, 9102))
    conn.sendall(data)
    conn.close()
    length, digest = proc.communicate(timeout=120)[0].split()
    assert int(length) == size
    assert digest == hashlib.sha256(data).hexdigest()


def test_udp_round_trip(sandbox):
    proc = start_peer_tool(sandbox.topo.peer, "udp-echo", 9103)
    try:
        udp = sock(sandbox, ssock.SOCK_DGRAM)
        udp.settimeout(2)
        reply = None
        for attempt in range(5):
            udp.sendto(b"ping %d" % attempt, (sandbox.topo.peer_ip, 9103))
            try:
                reply, sender = udp.recvfrom(2048)
                break
            except TimeoutError:
                continue
        assert reply is not None and reply.startswith(b"ping ")
        assert sender == (sandbox.topo.peer_ip, 9103)
        udp.close()
    finally:
        proc.kill()
        proc.wait()


def test_connect_to_closed_port_is_refused(sandbox):
    conn = sock(sandbox)
    conn.settimeout(10)
    with pytest.raises(ConnectionRefusedError):
        conn.connect((sandbox.topo.peer_ip, 9)) 
    conn.close()


def test_half_close_lets_peer_answer(sandbox):
    proc = start_peer_tool(sandbox.topo.peer, "half-close", 9104)
    conn = sock(sandbox)
    conn.settimeout(20)
    conn.connect((sandbox.topo.peer_ip, 9104))
    conn.sendall(b"x" * 5000)
    conn.shutdown(ssock.SHUT_WR)
    answer = b""
    while chunk := conn.recv(100):
        answer += chunk
    conn.close()
    proc.wait(10)
    assert answer == b"got 5000"


def test_listen_backlog_bounds_completed_handshakes(sandbox):
    listener = sock(sandbox)
    listener.bind(("0.0.0.0", 8090))
    listener.listen(2)
    code = f"""
import socket
ok = 0
socks = []
for i in range(6):
    s = socket.socket()
    s.settimeout(1.5)
    try:
        s.connect(("{sandbox.topo.sandbox_ip}", 8090))
        ok += 1
        socks.append(s)
    except OSError:
        pass
print(ok)
"""
    completed = int(sandbox.topo.peer.python(code, timeout=60).strip())
    # Linux completes backlog + 1 handshakes and then drops SYNs until accept() makes room.
    assert completed == 3
    accepted = []
    listener.settimeout(2)
    for _ in range(3):
        accepted.append(listener.accept()[0])
    for c in accepted:
        c.close()
    listener.close()


def test_loopback_reaches_only_sandbox_listeners(sandbox):
    listener = sock(sandbox)
    listener.bind(("127.0.0.1", 9200))
    listener.listen(1)
    conn = sock(sandbox)
    conn.settimeout(5)
    conn.connect(("127.0.0.1", 9200))
    server_side, peer = listener.accept()
    conn.sendall(b"inside")
    assert server_side.recv(100) == b"inside"
    assert peer[0] == "127.0.0.1"
    for s in (conn, server_side, listener):
        s.close()

    # A kernel listener on the host's loopback, in the sandbox namespace and here, stays unreachable.
    host = sandbox.topo.sandbox.popen(sys.executable, "-c",
                                      "import socket,time;s=socket.socket();s.bind(('127.0.0.1',9201));s.listen();print('ready',flush=True);time.sleep(60)",
                                      stdout=subprocess.PIPE, text=True)
    try:
        assert host.stdout.readline().strip() == "ready"
        probe = sock(sandbox)
        probe.settimeout(5)
        assert probe.connect_ex(("127.0.0.1", 9201)) == errno.ECONNREFUSED
        probe.close()
    finally:
        host.kill()
        host.wait()


def test_ss_lists_listener(sandbox):
    listener = sock(sandbox)
    listener.bind(("0.0.0.0", 9300))
    listener.listen(1)
    result = cli(sandbox, "ss")
    listener.close()
    assert result.returncode == 0, result.stderr
    assert "LISTEN" in result.stdout
    assert ":9300" in result.stdout


def test_bad_descriptor_is_ebadf(sandbox):
    reply = sandbox.client.call("Close", __import__("sandnet.v1.sockets_pb2", fromlist=["x"]).FdRequest(fd=999999))
    assert reply.errno == errno.EBADF


def test_connect_to_silent_neighbor_is_ehostunreach(sandbox):
    # No host uses .77 on the veth's subnet, so ARP gives up after three requests
    # and connect() fails with EHOSTUNREACH, as Linux's does.
    silent = sandbox.topo.sandbox_ip.rsplit(".", 1)[0] + ".77"
    conn = sock(sandbox)
    conn.settimeout(30)
    assert conn.connect_ex((silent, 80)) == errno.EHOSTUNREACH
    conn.close()


def test_second_stackd_on_same_linkd_fails_at_start(sandbox, tmp_path):
    link_path = os.path.join(sandbox.workdir, "linkd.sock")
    argv = [os.path.join(os.path.dirname(sys.executable), "sandnet-stackd"), "--link", f"unix:{link_path}",
            "--listen", f"unix:{tmp_path}/second.sock"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "already serves another stackd" in result.stderr
    # The first stack keeps serving.
    ping = sandbox.topo.peer.run("ping", "-c", "1", "-W", "2", sandbox.topo.sandbox_ip, check=False)
    assert ping.returncode == 0
