"""IPv6 and dual-stack sockets end to end, with the Linux kernel as the peer:
HTTP both ways, ping both ways, a [::] listener reached by both families,
::1 isolation, link-local peers with scope ids, and port unreachable errors."""

import errno
import os
import subprocess
import sys
import threading

import pytest

from sandbox_fixture import running_sandbox
from sandnet import socket as ssock

pytestmark = pytest.mark.netns

IPV6_V6ONLY = 26  # from <netinet/in.h>; sandnet.socket does not export it
IPV6_MTU_DISCOVER = 23
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2
CLI = os.path.join(os.path.dirname(sys.executable), "sandnet")
HTTP_REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"

# A peer-side TCP listener on [::] that sends each client the address it
# saw, then closes the connection. It prints "ready" once it listens.
PEER_LISTENER = """
import socket, sys
server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("::", int(sys.argv[1])))
server.listen(4)
server.settimeout(60)
print("ready", flush=True)
while True:
    conn, peer = server.accept()
    conn.sendall(repr(peer[:2]).encode())
    conn.close()
"""


@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox() as box:
        yield box
        print(box.logs())


def cli(box, *args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "--sockd", box.sockd_endpoint, *args], capture_output=True, text=True, timeout=timeout)


def sock6(box, type_=ssock.SOCK_STREAM, proto=0) -> ssock.socket:
    return ssock.socket(ssock.AF_INET6, type_, proto, client=box.client)


def serve_once(listener, body: bytes) -> threading.Thread:
    """Serve one HTTP request on ``listener`` in a thread; return the thread."""

    def serve():
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            conn.sendall(HTTP_REPLY % (len(body), body))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def start_peer(box, code: str, *args) -> subprocess.Popen:
    proc = box.topo.peer.popen(sys.executable, "-c", code, *map(str, args), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line == "ready", f"peer program did not start: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
    return proc


def test_ip_addr_shows_ipv6_scopes(sandbox):
    result = cli(sandbox, "ip", "addr")
    assert result.returncode == 0, result.stderr
    assert f"inet6 {sandbox.topo.sandbox_ip6}/64 scope global" in result.stdout
    assert "inet6 ::1/128 scope host" in result.stdout
    assert "inet6 fe80::" in result.stdout
    assert "scope link" in result.stdout


def test_ip_route_shows_ipv6_routes(sandbox):
    result = cli(sandbox, "ip", "-6", "route")
    assert result.returncode == 0, result.stderr
    assert f"default via {sandbox.topo.peer_ip6}" in result.stdout
    assert "fe80::/64" in result.stdout


def test_peer_ping6_gets_replies(sandbox):
    result = sandbox.topo.peer.run("ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", sandbox.topo.sandbox_ip6,
                                   check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 received" in result.stdout


def test_peer_ping6_with_large_payload_is_reassembled(sandbox):
    # 3000 bytes do not fit a 1500-byte link: the kernel fragments the request,
    # the stack reassembles it and fragments its reply.
    result = sandbox.topo.peer.run("ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", "-s", "3000",
                                   sandbox.topo.sandbox_ip6, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 received" in result.stdout


def test_peer_ping_with_large_payload_is_reassembled(sandbox):
    result = sandbox.topo.peer.run("ping", "-c", "2", "-i", "0.2", "-W", "2", "-s", "4000",
                                   sandbox.topo.sandbox_ip, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 received" in result.stdout


def test_sandnet_ping6_reaches_peer(sandbox):
    result = cli(sandbox, "ping", "-c", "2", "-W", "2", sandbox.topo.peer_ip6)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 received" in result.stdout


def test_sandnet_ping4_reaches_peer(sandbox):
    result = cli(sandbox, "ping", "-c", "2", "-W", "2", sandbox.topo.peer_ip)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 received" in result.stdout


def test_get_over_ipv6_from_peer_http_server(sandbox, tmp_path):
    (tmp_path / "hello.txt").write_text("hello over IPv6\n")
    server = sandbox.topo.peer.popen(sys.executable, "-m", "http.server", "8000", "--bind", sandbox.topo.peer_ip6,
                                     "--directory", str(tmp_path), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            result = cli(sandbox, "get", f"http://[{sandbox.topo.peer_ip6}]:8000/hello.txt")
            if result.returncode == 0:
                break
        assert result.returncode == 0, result.stderr
        assert result.stdout == "hello over IPv6\n"
    finally:
        server.terminate()
        server.wait()


def test_peer_curl_over_ipv6_reaches_sandbox_listener(sandbox):
    listener = sock6(sandbox)
    listener.bind(("::", 8080))
    listener.listen(4)
    body = b"served over IPv6 from inside the sandbox\n"
    thread = serve_once(listener, body)
    try:
        result = sandbox.topo.peer.run("curl", "-sS", "--max-time", "20", f"http://[{sandbox.topo.sandbox_ip6}]:8080/",
                                       check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout == body.decode()
    finally:
        thread.join(10)
        listener.close()


def test_dual_stack_listener_accepts_both_families(sandbox):
    listener = sock6(sandbox)
    assert listener.getsockopt(ssock.IPPROTO_IPV6, IPV6_V6ONLY) == 0
    listener.bind(("::", 8081))
    listener.listen(4)
    listener.settimeout(20)
    peers = []
    for target in (sandbox.topo.sandbox_ip, f"[{sandbox.topo.sandbox_ip6}]"):
        curl = sandbox.topo.peer.popen("curl", "-sS", "--max-time", "20", f"http://{target}:8081/",
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        conn, peer = listener.accept()
        peers.append(peer)
        with conn:
            assert conn.getsockname()[0] in (f"::ffff:{sandbox.topo.sandbox_ip}", sandbox.topo.sandbox_ip6)
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            conn.sendall(HTTP_REPLY % (3, b"ok\n"))
        out, err = curl.communicate(timeout=30)
        assert out == "ok\n", err
    listener.close()
    assert peers[0][0] == f"::ffff:{sandbox.topo.peer_ip}"
    assert peers[1][0] == sandbox.topo.peer_ip6


def test_v6only_listener_refuses_ipv4(sandbox):
    listener = sock6(sandbox)
    listener.setsockopt(ssock.IPPROTO_IPV6, IPV6_V6ONLY, 1)
    listener.bind(("::", 8082))
    listener.listen(4)
    try:
        result = sandbox.topo.peer.run("curl", "-sS", "--max-time", "10", f"http://{sandbox.topo.sandbox_ip}:8082/",
                                       check=False)
        assert result.returncode == 7, result.stderr  # curl: failed to connect (RST from the stack)
    finally:
        listener.close()


def test_v6only_cannot_change_after_bind(sandbox):
    sock = sock6(sandbox)
    sock.bind(("::", 0))
    with pytest.raises(OSError) as raised:
        sock.setsockopt(ssock.IPPROTO_IPV6, IPV6_V6ONLY, 1)
    assert raised.value.errno == errno.EINVAL
    sock.close()


def test_connect_from_dual_stack_socket_to_ipv4_peer(sandbox):
    peer = start_peer(sandbox, PEER_LISTENER, 9100)
    try:
        conn = sock6(sandbox)
        conn.settimeout(10)
        conn.connect((f"::ffff:{sandbox.topo.peer_ip}", 9100))
        assert conn.getpeername()[0] == f"::ffff:{sandbox.topo.peer_ip}"
        seen = conn.recv(200).decode()
        conn.close()
        assert sandbox.topo.sandbox_ip in seen
    finally:
        peer.kill()
        peer.wait()


def test_link_local_peer_needs_scope_id(sandbox):
    peer_link_local = sandbox.topo.peer.run("ip", "-6", "-o", "addr", "show", "dev", sandbox.topo.peer_if,
                                            "scope", "link").stdout.split()[3].split("/")[0]
    peer = start_peer(sandbox, PEER_LISTENER, 9101)
    try:
        unscoped = sock6(sandbox)
        assert unscoped.connect_ex((peer_link_local, 9101)) == errno.EINVAL
        unscoped.close()

        scope = sandbox.client.info("ListInterfaces").interfaces[1].index
        conn = sock6(sandbox)
        conn.settimeout(10)
        conn.connect((peer_link_local, 9101, 0, scope))
        assert conn.getpeername()[3] == scope
        seen = conn.recv(200).decode()
        conn.close()
        assert "fe80::" in seen
    finally:
        peer.kill()
        peer.wait()


def test_ipv6_loopback_reaches_only_sandbox_listeners(sandbox):
    listener = sock6(sandbox)
    listener.bind(("::1", 9200))
    listener.listen(1)
    conn = sock6(sandbox)
    conn.settimeout(5)
    conn.connect(("::1", 9200))
    server_side, peer = listener.accept()
    conn.sendall(b"inside")
    assert server_side.recv(100) == b"inside"
    assert peer[0] == "::1"
    for s in (conn, server_side, listener):
        s.close()

    # A kernel listener on the host's ::1, in the sandbox namespace, stays unreachable.
    host = sandbox.topo.sandbox.popen(
        sys.executable, "-c",
        "import socket,time;s=socket.socket(socket.AF_INET6);s.bind(('::1',9201));s.listen();"
        "print('ready',flush=True);time.sleep(60)",
        stdout=subprocess.PIPE, text=True)
    try:
        assert host.stdout.readline().strip() == "ready"
        probe = sock6(sandbox)
        probe.settimeout(5)
        assert probe.connect_ex(("::1", 9201)) == errno.ECONNREFUSED
        probe.close()
    finally:
        host.kill()
        host.wait()


def test_udp6_loopback_round_trip(sandbox):
    server = sock6(sandbox, ssock.SOCK_DGRAM)
    server.bind(("::1", 0))
    client = sock6(sandbox, ssock.SOCK_DGRAM)
    client.settimeout(5)
    server.settimeout(5)
    client.sendto(b"ping", server.getsockname()[:2])
    data, sender = server.recvfrom(100)
    assert data == b"ping"
    assert sender[0] == "::1"
    server.close()
    client.close()


@pytest.mark.parametrize("family", [ssock.AF_INET, ssock.AF_INET6])
def test_udp_to_closed_port_gives_econnrefused(sandbox, family):
    target = sandbox.topo.peer_ip if family == ssock.AF_INET else sandbox.topo.peer_ip6
    udp = ssock.socket(family, ssock.SOCK_DGRAM, client=sandbox.client)
    udp.settimeout(5)
    udp.connect((target, 9))  # discard: nothing listens there on the peer
    udp.send(b"anyone?")
    with pytest.raises(OSError) as raised:
        udp.recv(100)
    assert raised.value.errno == errno.ECONNREFUSED
    udp.close()


def test_peer_udp6_to_closed_port_gets_port_unreachable(sandbox):
    code = f"""
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(5)
s.connect(("{sandbox.topo.sandbox_ip6}", 9))
s.send(b"x")
try:
    s.recv(10)
    print("no error")
except ConnectionRefusedError:
    print("refused")
"""
    assert sandbox.topo.peer.python(code).strip() == "refused"


def test_ping6_socket_rejects_non_echo(sandbox):
    ping = sock6(sandbox, ssock.SOCK_DGRAM, ssock.IPPROTO_ICMPV6)
    with pytest.raises(OSError) as raised:
        ping.sendto(bytes([135, 0, 0, 0, 0, 0, 0, 0]), (sandbox.topo.peer_ip6, 0))
    assert raised.value.errno == errno.EINVAL
    ping.close()


def test_mtu_discover_options_take_linux_values(sandbox):
    udp6 = sock6(sandbox, ssock.SOCK_DGRAM)
    for value in range(6):
        udp6.setsockopt(ssock.IPPROTO_IPV6, IPV6_MTU_DISCOVER, value)
        assert udp6.getsockopt(ssock.IPPROTO_IPV6, IPV6_MTU_DISCOVER) == value
    with pytest.raises(OSError) as raised:
        udp6.setsockopt(ssock.IPPROTO_IPV6, IPV6_MTU_DISCOVER, 6)
    assert raised.value.errno == errno.EINVAL
    udp6.close()

    udp4 = ssock.socket(ssock.AF_INET, ssock.SOCK_DGRAM, client=sandbox.client)
    udp4.setsockopt(ssock.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
    assert udp4.getsockopt(ssock.IPPROTO_IP, IP_MTU_DISCOVER) == IP_PMTUDISC_DO
    with pytest.raises(OSError) as raised:
        udp4.sendto(b"x" * 3000, (sandbox.topo.peer_ip, 9))
    assert raised.value.errno == errno.EMSGSIZE
    udp4.close()


def test_connect_to_missing_neighbor_is_ehostunreach(sandbox):
    # No node replies to the neighbor solicitations for this address on the
    # sandbox's link, so after three tries (about 3 s) connect fails as on Linux.
    missing = sandbox.topo.peer_ip6.rsplit(":", 1)[0] + ":99"
    conn = sock6(sandbox)
    conn.settimeout(20)
    assert conn.connect_ex((missing, 80)) == errno.EHOSTUNREACH
    conn.close()


def test_v6only_wildcard_coexists_with_ipv4_wildcard(sandbox):
    # As on Linux, [::] with IPV6_V6ONLY and 0.0.0.0 share a port; without
    # IPV6_V6ONLY the two conflict.
    ipv4_listener = ssock.socket(ssock.AF_INET, ssock.SOCK_STREAM, client=sandbox.client)
    ipv4_listener.bind(("0.0.0.0", 8083))
    ipv4_listener.listen(1)

    dual = sock6(sandbox)
    with pytest.raises(OSError) as raised:
        dual.bind(("::", 8083))
    assert raised.value.errno == errno.EADDRINUSE
    dual.close()

    only6 = sock6(sandbox)
    only6.setsockopt(ssock.IPPROTO_IPV6, IPV6_V6ONLY, 1)
    only6.bind(("::", 8083))
    only6.listen(1)
    for s in (only6, ipv4_listener):
        s.close()


def test_create_server_dualstack_accepts_ipv4(sandbox):
    assert ssock.has_dualstack_ipv6()
    server = ssock.create_server(("::", 8084), family=ssock.AF_INET6, dualstack_ipv6=True, client=sandbox.client)
    server.settimeout(20)
    curl = sandbox.topo.peer.popen("curl", "-sS", "--max-time", "20", f"http://{sandbox.topo.sandbox_ip}:8084/",
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    conn, peer = server.accept()
    with conn:
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        conn.sendall(HTTP_REPLY % (3, b"ok\n"))
    out, err = curl.communicate(timeout=30)
    server.close()
    assert out == "ok\n", err
    assert peer[0] == f"::ffff:{sandbox.topo.peer_ip}"


def test_ss_lists_ipv6_listener(sandbox):
    listener = sock6(sandbox)
    listener.bind(("::", 8085))
    listener.listen(1)
    result = cli(sandbox, "ss")
    listener.close()
    assert result.returncode == 0, result.stderr
    assert "[::]:8085" in result.stdout


def test_scoped_address_text_resolves_to_index(sandbox):
    nic = sandbox.client.info("ListInterfaces").interfaces[1]
    infos = ssock.getaddrinfo(f"fe80::1%{nic.name}", 80, ssock.AF_INET6, ssock.SOCK_STREAM,
                                 client=sandbox.client)
    assert infos[0][4][3] == nic.index
    infos = ssock.getaddrinfo(f"fe80::1%{nic.index}", 80, ssock.AF_INET6, ssock.SOCK_STREAM,
                                 client=sandbox.client)
    assert infos[0][4][3] == nic.index
    assert ssock.if_nametoindex(nic.name, client=sandbox.client) == nic.index
    assert (nic.index, nic.name) in ssock.if_nameindex(client=sandbox.client)
    with pytest.raises(ssock.gaierror):
        ssock.getaddrinfo("fe80::1%nosuchif", 80, ssock.AF_INET6, client=sandbox.client)
