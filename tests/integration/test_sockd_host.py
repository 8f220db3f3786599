"""sockd driven through the sandnet client, socket class and CLI.

Host mode runs on 127.0.0.1 and ::1 against sockets of this process and of
a local http.server. Sandbox and none modes forward to a second, host-mode
sockd in place of stackd. Only the ping test needs a network namespace.
"""

import errno
import hashlib
import http.server
import os
import select
import socket as stdsocket
import subprocess
import tempfile
import threading
import time

import pytest

import netlab
from sandnet import socket as snsocket
from sandnet.client import Client
from grpc_health.v1 import health_pb2

from sandnet.v1 import sockets_pb2, types_pb2

SANDNET_CLI = os.path.join(netlab.BIN_DIR, "sandnet")
SOCKD = os.path.join(netlab.BIN_DIR, "sandnet-sockd")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def sockd_path():
    with tempfile.TemporaryDirectory(prefix="sn-sockd-") as tmp:
        path = os.path.join(tmp, "sockd.sock")
        argv = [SOCKD, "--network", "host", "--listen", f"unix:{path}", "--log-level", "DEBUG"]
        with netlab.ServiceProcess(argv, path) as sockd:
            yield path
            assert sockd.process.poll() is None, sockd.log_text()
        log = sockd.log_text()
        assert "less isolated" in log
        assert "Traceback" not in log, log


@pytest.fixture
def client(sockd_path):
    with Client(f"unix:{sockd_path}") as session:
        yield session


@pytest.fixture
def tcp_server():
    """A stdlib listener on 127.0.0.1 with an ephemeral port."""
    server = stdsocket.create_server(("127.0.0.1", 0))
    server.settimeout(30)
    yield server
    server.close()


def echo_once(server: stdsocket.socket) -> threading.Thread:
    """Accept one connection and echo it until the peer shuts down writing."""
    def serve():
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def run_cli(sockd_path: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SANDNET_SOCKD": f"unix:{sockd_path}"}
    return subprocess.run([SANDNET_CLI, *args], capture_output=True, env=env, timeout=60, check=False)


# TCP and UDP data.

def test_tcp_echo_small(client, tcp_server):
    thread = echo_once(tcp_server)
    with snsocket.socket(client=client) as sock:
        sock.settimeout(30)
        sock.connect(tcp_server.getsockname())
        assert sock.getpeername() == tcp_server.getsockname()
        assert sock.getsockname()[0] == "127.0.0.1"
        sock.sendall(b"hello sandnet")
        assert sock.recv(13, snsocket.MSG_WAITALL) == b"hello sandnet"
        sock.shutdown(snsocket.SHUT_WR)
        assert sock.recv(100) == b""
    thread.join(30)


def test_tcp_echo_one_megabyte(client, tcp_server):
    payload = os.urandom(1024 * 1024)
    thread = echo_once(tcp_server)
    with snsocket.create_connection(tcp_server.getsockname(), timeout=30, client=client) as sock:
        writer = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(snsocket.SHUT_WR)))
        writer.start()
        received = bytearray()
        while chunk := sock.recv(4096):
            received += chunk
        writer.join(30)
    thread.join(30)
    assert len(received) == len(payload)
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(payload).hexdigest()


def test_listener_accepts_stdlib_client(client):
    with snsocket.socket(client=client) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        host, port = listener.getsockname()
        assert port != 0
        peer = stdsocket.create_connection((host, port), timeout=30)
        listener.settimeout(30)
        conn, address = listener.accept()
        with conn, peer:
            assert address == peer.getsockname()
            assert conn.getpeername() == peer.getsockname()
            peer.sendall(b"ping")
            assert conn.recv(4) == b"ping"
            conn.sendall(b"pong")
            assert peer.recv(4) == b"pong"


def test_ipv6_accept_returns_four_tuple(client):
    with snsocket.socket(snsocket.AF_INET6, snsocket.SOCK_STREAM, client=client) as listener:
        listener.bind(("::1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        peer = stdsocket.create_connection(("::1", port), timeout=30)
        listener.settimeout(30)
        conn, address = listener.accept()
        with conn, peer:
            assert len(address) == 4
            assert address[:2] == peer.getsockname()[:2]


def test_udp_sendto_recvfrom(client):
    peer = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(30)
    with peer, snsocket.socket(snsocket.AF_INET, snsocket.SOCK_DGRAM, client=client) as sock:
        sock.settimeout(30)
        sock.bind(("127.0.0.1", 0))
        assert sock.sendto(b"question", peer.getsockname()) == 8
        data, address = peer.recvfrom(100)
        assert data == b"question"
        assert address == sock.getsockname()

        peer.sendto(b"answer", address)
        data, sender = sock.recvfrom(100)
        assert data == b"answer"
        assert sender == peer.getsockname()

        peer.sendto(b"truncated datagram", address)
        buffer = bytearray(9)
        nbytes, sender = sock.recvfrom_into(buffer)
        assert (nbytes, bytes(buffer)) == (9, b"truncated")


def test_makefile_lines(client, tcp_server):
    thread = echo_once(tcp_server)
    with snsocket.create_connection(tcp_server.getsockname(), timeout=30, client=client) as sock:
        writer = sock.makefile("wb")
        reader = sock.makefile("rb")
        writer.write(b"first line\nsecond line\n")
        writer.flush()
        assert reader.readline() == b"first line\n"
        assert reader.readline() == b"second line\n"
        writer.close()
        reader.close()
        sock.shutdown(snsocket.SHUT_WR)
    thread.join(30)


def test_peek_keeps_data(client, tcp_server):
    with snsocket.create_connection(tcp_server.getsockname(), timeout=30, client=client) as sock:
        conn, _ = tcp_server.accept()
        with conn:
            conn.sendall(b"abcdef")
            assert sock.recv(3, snsocket.MSG_PEEK) == b"abc"
            assert sock.recv(3, snsocket.MSG_WAITALL) == b"abc"
            assert sock.recv(3, snsocket.MSG_WAITALL) == b"def"


# Errors.

def test_connection_refused(client):
    reserved = stdsocket.socket()
    reserved.bind(("127.0.0.1", 0))
    with reserved, snsocket.socket(client=client) as sock:
        with pytest.raises(ConnectionRefusedError) as raised:
            sock.connect(reserved.getsockname())
        assert raised.value.errno == errno.ECONNREFUSED


def test_connect_ex_returns_errno(client):
    reserved = stdsocket.socket()
    reserved.bind(("127.0.0.1", 0))
    with reserved, snsocket.socket(client=client) as sock:
        assert sock.connect_ex(reserved.getsockname()) == errno.ECONNREFUSED


def test_bind_address_in_use(client, tcp_server):
    with snsocket.socket(client=client) as sock:
        with pytest.raises(OSError) as raised:
            sock.bind(tcp_server.getsockname())
        assert raised.value.errno == errno.EADDRINUSE


def test_unknown_fd_is_ebadf(client):
    reply = client.call("Recv", sockets_pb2.RecvRequest(fd=987654, max_bytes=10, timeout_ms=0))
    assert reply.errno == errno.EBADF
    reply = client.call("Close", sockets_pb2.FdRequest(fd=987654))
    assert reply.errno == errno.EBADF


def test_other_session_fd_is_ebadf(client, sockd_path):
    with snsocket.socket(client=client) as sock, Client(f"unix:{sockd_path}") as other:
        reply = other.call("GetSockName", sockets_pb2.FdRequest(fd=sock.sockd_fd))
        assert reply.errno == errno.EBADF
        reply = other.call("Poll", sockets_pb2.PollRequest(fds=[sockets_pb2.PollFd(fd=sock.sockd_fd,
                                                                                     events=select.POLLIN)]))
        assert [(entry.fd, entry.events) for entry in reply.ready] == [(sock.sockd_fd, select.POLLNVAL)]


def test_closed_socket_raises_ebadf(client):
    sock = snsocket.socket(client=client)
    sock.close()
    assert sock.fileno() == -1
    with pytest.raises(OSError) as raised:
        sock.getsockname()
    assert raised.value.errno == errno.EBADF


@pytest.mark.parametrize("addr", [
    types_pb2.SockAddr(ip=b"\x7f\x00\x01", port=80),
    types_pb2.SockAddr(ip=bytes(16), port=80),
    types_pb2.SockAddr(ip=b"\x7f\x00\x00\x01", port=70000),
])
def test_bad_address_is_einval(client, addr):
    with snsocket.socket(client=client) as sock:
        reply = client.call("Bind", sockets_pb2.BindRequest(fd=sock.sockd_fd, addr=addr))
        assert reply.errno == errno.EINVAL
        reply = client.call("Connect", sockets_pb2.ConnectRequest(fd=sock.sockd_fd, addr=addr, timeout_ms=0))
        assert reply.errno == errno.EINVAL


@pytest.mark.parametrize("family, kind, protocol, expected", [
    (stdsocket.AF_UNIX, stdsocket.SOCK_STREAM, 0, errno.EAFNOSUPPORT),
    (stdsocket.AF_INET, stdsocket.SOCK_SEQPACKET, 0, errno.ESOCKTNOSUPPORT),
    (stdsocket.AF_INET, stdsocket.SOCK_STREAM, stdsocket.IPPROTO_UDP, errno.EPROTONOSUPPORT),
])
def test_unsupported_socket_errno(client, family, kind, protocol, expected):
    reply = client.call("Socket", sockets_pb2.SocketRequest(family=family, type=kind, protocol=protocol))
    assert reply.errno == expected
    with pytest.raises(OSError) as raised:
        snsocket.socket(family, kind, protocol, client=client)
    assert raised.value.errno == expected


def test_unknown_option_is_enoprotoopt(client):
    with snsocket.socket(client=client) as sock:
        with pytest.raises(OSError) as raised:
            sock.getsockopt(snsocket.SOL_SOCKET, 9999)
        assert raised.value.errno == errno.ENOPROTOOPT


def test_hostname_raises_gaierror(client):
    # Nothing listens on port 53 of 127.0.0.9, so the lookup fails without
    # sending a query off this machine.
    client.resolver().nameservers = ["127.0.0.9"]
    with snsocket.socket(client=client) as sock:
        with pytest.raises(stdsocket.gaierror, match="cannot resolve"):
            sock.connect(("example.invalid", 80))


# Blocking, timeouts and readiness.

def test_nonblocking_recv_raises_blocking_io_error(client, tcp_server):
    with snsocket.socket(snsocket.AF_INET, snsocket.SOCK_STREAM | snsocket.SOCK_NONBLOCK, client=client) as sock:
        assert sock.getblocking() is False
        with pytest.raises(BlockingIOError):
            sock.connect(tcp_server.getsockname())
        conn, _ = tcp_server.accept()
        with conn:
            ready = snsocket.poll([(sock, snsocket.POLLOUT)], timeout=30)
            assert ready == [(sock, snsocket.POLLOUT)]
            with pytest.raises(BlockingIOError) as raised:
                sock.recv(10)
            assert raised.value.errno == errno.EAGAIN


def test_recv_timeout_raises_timeout_error(client, tcp_server):
    with snsocket.create_connection(tcp_server.getsockname(), timeout=30, client=client) as sock:
        conn, _ = tcp_server.accept()
        with conn:
            sock.settimeout(0.2)
            assert sock.gettimeout() == 0.2
            with pytest.raises(TimeoutError):
                sock.recv(10)
            with pytest.raises(stdsocket.timeout):
                sock.recv(10)


def test_poll_readiness(client, tcp_server):
    with snsocket.create_connection(tcp_server.getsockname(), timeout=30, client=client) as sock:
        conn, _ = tcp_server.accept()
        with conn:
            assert snsocket.poll([(sock, snsocket.POLLIN)], timeout=0) == []
            assert snsocket.poll([(sock, snsocket.POLLOUT)], timeout=0) == [(sock, snsocket.POLLOUT)]

            conn.sendall(b"xyz")
            assert snsocket.poll([(sock, snsocket.POLLIN)], timeout=30) == [(sock, snsocket.POLLIN)]

            # After a partial read the rest sits in the client-side buffer,
            # and poll must still report the socket readable.
            assert sock.recv(1) == b"x"
            assert sock.pending() == 2
            assert snsocket.poll([(sock, snsocket.POLLIN)], timeout=0) == [(sock, snsocket.POLLIN)]
            assert sock.recv(10) == b"yz"

            conn.close()
            ready = snsocket.poll([(sock, snsocket.POLLIN)], timeout=30)
            assert ready and ready[0][1] & snsocket.POLLIN


def test_blocking_accept_does_not_block_other_calls(client, sockd_path):
    with snsocket.socket(client=client) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(30)
        accepted = []
        thread = threading.Thread(target=lambda: accepted.append(listener.accept()))
        thread.start()

        # While Accept blocks in sockd, another session's UDP round trip completes.
        with Client(f"unix:{sockd_path}") as other:
            with snsocket.socket(snsocket.AF_INET, snsocket.SOCK_DGRAM, client=other) as udp:
                udp.settimeout(30)
                udp.bind(("127.0.0.1", 0))
                udp.sendto(b"loop", udp.getsockname())
                assert udp.recvfrom(10)[0] == b"loop"
        assert thread.is_alive()

        peer = stdsocket.create_connection(listener.getsockname(), timeout=30)
        thread.join(30)
        peer.close()
        assert len(accepted) == 1
        accepted[0][0].close()


def test_half_close_keeps_reading(client, tcp_server):
    with snsocket.create_connection(tcp_server.getsockname(), timeout=30, client=client) as sock:
        conn, _ = tcp_server.accept()
        with conn:
            conn.settimeout(30)
            sock.sendall(b"request")
            sock.shutdown(snsocket.SHUT_WR)
            received = b""
            while chunk := conn.recv(100):
                received += chunk
            assert received == b"request"

            conn.sendall(b"response after half-close")
            conn.close()
            received = b""
            while chunk := sock.recv(100):
                received += chunk
            assert received == b"response after half-close"


def test_session_end_closes_its_sockets(sockd_path):
    owner = Client(f"unix:{sockd_path}")
    listener = snsocket.socket(client=owner)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    address = listener.getsockname()
    owner.close()

    # sockd closes the listener once it reads the end of the stream; wait for that
    # with a bounded number of attempts rather than a fixed delay.
    for _ in range(100):
        probe = stdsocket.socket()
        code = probe.connect_ex(address)
        probe.close()
        if code == errno.ECONNREFUSED:
            break
        time.sleep(0.1)
    assert code == errno.ECONNREFUSED


@pytest.mark.parametrize("level, name, value", [
    (stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1),
    (stdsocket.SOL_SOCKET, stdsocket.SO_KEEPALIVE, 1),
    (stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, 1),
])
def test_boolean_socket_options(client, level, name, value):
    with snsocket.socket(client=client) as sock:
        assert sock.getsockopt(level, name) == 0
        sock.setsockopt(level, name, value)
        assert sock.getsockopt(level, name) != 0
        raw = sock.getsockopt(level, name, 4)
        assert isinstance(raw, bytes) and len(raw) == 4


@pytest.mark.parametrize("name", [stdsocket.SO_RCVBUF, stdsocket.SO_SNDBUF])
def test_buffer_size_options(client, name):
    with snsocket.socket(client=client) as sock:
        sock.setsockopt(snsocket.SOL_SOCKET, name, 65536)
        # Linux doubles the requested size to leave room for its bookkeeping.
        assert sock.getsockopt(snsocket.SOL_SOCKET, name) == 2 * 65536


# Netinfo and the CLI.

def test_cli_ip_addr_shows_loopback(sockd_path):
    result = run_cli(sockd_path, "ip", "addr")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert any(line.endswith(": lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 state UNKNOWN") for line in lines)
    assert "    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00" in lines
    assert "    inet 127.0.0.1/8 scope host lo" in lines


def test_cli_ss_lists_listener(client, sockd_path):
    with snsocket.socket(client=client) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = run_cli(sockd_path, "ss")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0].split() == ["Netid", "State", "Recv-Q", "Send-Q", "Local", "Address:Port", "Peer", "Address:Port"]
    rows = [line.split() for line in lines[1:]]
    assert ["tcp", "LISTEN", "0", "0", f"127.0.0.1:{port}", "0.0.0.0:*"] in rows


def test_counters_from_proc(client):
    names = {counter.name for counter in client.info("GetCounters").counters}
    assert "Tcp.ActiveOpens" in names
    assert "Udp.InDatagrams" in names


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_root():
    with tempfile.TemporaryDirectory(prefix="sn-http-") as root:
        handler = lambda *args, **kwargs: QuietHandler(*args, directory=root, **kwargs)  # noqa: E731
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield root, server.server_address[1]
        server.shutdown()
        server.server_close()


def test_cli_get_prints_body(sockd_path, http_root):
    root, port = http_root
    body = os.urandom(300 * 1024)
    with open(os.path.join(root, "blob.bin"), "wb") as blob:
        blob.write(body)
    result = run_cli(sockd_path, "get", f"http://127.0.0.1:{port}/blob.bin")
    assert result.returncode == 0, result.stderr
    assert result.stdout == body


def test_cli_get_missing_page_exits_1(sockd_path, http_root):
    _, port = http_root
    result = run_cli(sockd_path, "get", f"http://localhost:{port}/missing")
    assert result.returncode == 1
    assert b"404" in result.stderr


def test_cli_without_sockd_names_endpoint():
    with tempfile.TemporaryDirectory(prefix="sn-none-") as tmp:
        path = os.path.join(tmp, "absent.sock")
        result = run_cli(path, "ss")
    assert result.returncode == 1
    message = result.stderr.decode()
    assert f"unix:{path}" in message
    assert "sandnet-sockd" in message
    assert len(message.strip().splitlines()) == 1


# Command line of sockd itself.

def test_sockd_rejects_unknown_mode():
    result = subprocess.run([SOCKD, "--network", "bogus"], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "'bogus'" in result.stderr
    assert "sandbox, host, none" in result.stderr


def test_sockd_without_stackd_exits_with_one_line():
    with tempfile.TemporaryDirectory(prefix="sn-sockd-") as tmp:
        argv = [SOCKD, "--stack", f"unix:{tmp}/absent.sock", "--listen", f"unix:{tmp}/sockd.sock",
                "--log-level", "WARNING"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"unix:{tmp}/absent.sock" in result.stderr
    assert "Traceback" not in result.stderr


# Sandbox and none modes, forwarding to a host-mode sockd that replaces
# stackd: both serve the same Sockets and Netinfo contract.

def start_forwarding_sockd(stack_path: str, listen_path: str, network: str) -> netlab.ServiceProcess:
    argv = [SOCKD, "--stack", f"unix:{stack_path}", "--listen", f"unix:{listen_path}", "--network", network]
    return netlab.ServiceProcess(argv, listen_path)


@pytest.fixture
def backend_dir():
    with tempfile.TemporaryDirectory(prefix="sn-fwd-") as tmp:
        yield tmp


def start_backend(tmp: str) -> netlab.ServiceProcess:
    path = os.path.join(tmp, "stack.sock")
    return netlab.ServiceProcess([SOCKD, "--network", "host", "--listen", f"unix:{path}"], path)


def test_sandbox_mode_forwards_tcp(backend_dir, tcp_server):
    with start_backend(backend_dir), \
            start_forwarding_sockd(f"{backend_dir}/stack.sock", f"{backend_dir}/sockd.sock", "sandbox"), \
            Client(f"unix:{backend_dir}/sockd.sock") as session:
        thread = echo_once(tcp_server)
        with snsocket.create_connection(tcp_server.getsockname(), timeout=30, client=session) as sock:
            sock.sendall(b"forwarded")
            assert sock.recv(9, snsocket.MSG_WAITALL) == b"forwarded"
            sock.shutdown(snsocket.SHUT_WR)
            assert sock.recv(10) == b""
        thread.join(30)

        with snsocket.socket(client=session) as listener, Client(f"unix:{backend_dir}/sockd.sock") as other:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            reply = other.call("Listen", sockets_pb2.ListenRequest(fd=listener.sockd_fd, backlog=1))
            assert reply.errno == errno.EBADF
            rows = [line.split() for line in run_cli(f"{backend_dir}/sockd.sock", "ss").stdout.decode().splitlines()]
            assert ["tcp", "LISTEN", "0", "0", f"127.0.0.1:{listener.getsockname()[1]}", "0.0.0.0:*"] in rows


def test_none_mode_allows_only_loopback(backend_dir, tcp_server):
    with start_backend(backend_dir), \
            start_forwarding_sockd(f"{backend_dir}/stack.sock", f"{backend_dir}/sockd.sock", "none"), \
            Client(f"unix:{backend_dir}/sockd.sock") as session:
        with snsocket.socket(client=session) as sock:
            with pytest.raises(OSError) as raised:
                sock.connect(("192.0.2.1", 80))
            assert raised.value.errno == errno.ENETUNREACH

        with snsocket.socket(snsocket.AF_INET, snsocket.SOCK_DGRAM, client=session) as udp:
            with pytest.raises(OSError) as raised:
                udp.sendto(b"x", ("198.51.100.7", 53))
            assert raised.value.errno == errno.ENETUNREACH

        with snsocket.socket(client=session) as sock:
            bad = types_pb2.SockAddr(ip=b"\x7f\x00\x01", port=80)
            reply = session.call("Connect", sockets_pb2.ConnectRequest(fd=sock.sockd_fd, addr=bad, timeout_ms=0))
            assert reply.errno == errno.EINVAL

        with snsocket.create_connection(tcp_server.getsockname(), timeout=30, client=session) as sock:
            conn, _ = tcp_server.accept()
            conn.close()


def test_lost_stackd_gives_enetdown_then_reconnects(backend_dir):
    sockd_path = f"{backend_dir}/sockd.sock"
    backend = start_backend(backend_dir)
    try:
        with start_forwarding_sockd(f"{backend_dir}/stack.sock", sockd_path, "sandbox") as sockd, \
                Client(f"unix:{sockd_path}") as session:
            sock = snsocket.socket(client=session)
            backend.stop()

            # Bounded wait for sockd to notice: health turns NOT_SERVING.
            for _ in range(100):
                if netlab.health_status(sockd_path) != SERVING:
                    break
                time.sleep(0.1)
            assert netlab.health_status(sockd_path) == NOT_SERVING
            with pytest.raises(OSError) as raised:
                snsocket.socket(client=session)
            assert raised.value.errno == errno.ENETDOWN

            backend = start_backend(backend_dir)
            for _ in range(200):
                if netlab.health_status(sockd_path) == SERVING:
                    break
                time.sleep(0.1)
            assert netlab.health_status(sockd_path) == SERVING

            # The old descriptor died with the old stackd session.
            with pytest.raises(OSError) as raised:
                sock.getsockname()
            assert raised.value.errno == errno.EBADF
            with snsocket.socket(client=session) as fresh:
                fresh.bind(("127.0.0.1", 0))
            log = sockd.log_text()
        assert "retrying the stackd session" in log
    finally:
        backend.stop()


@pytest.mark.netns
def test_cli_ping_in_namespace():
    # ICMP datagram sockets need net.ipv4.ping_group_range to include the
    # caller's group. The range is per network namespace, so the test sets
    # it in a namespace of its own and leaves the host's setting alone.
    with netlab.Netns() as ns, tempfile.TemporaryDirectory(prefix="sn-ping-") as tmp:
        ns.run("sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 0")
        path = os.path.join(tmp, "sockd.sock")
        argv = [SOCKD, "--network", "host", "--listen", f"unix:{path}"]
        with netlab.ServiceProcess(argv, path, ns=ns):
            result = run_cli(path, "ping", "-c", "2", "-W", "5", "127.0.0.1")
            unreachable = run_cli(path, "ping", "-c", "1", "-W", "1", "192.0.2.1")
    output = result.stdout.decode()
    assert result.returncode == 0, result.stderr
    assert "icmp_seq=1" in output
    assert "icmp_seq=2" in output
    assert "2 packets transmitted, 2 received, 0% packet loss" in output
    assert "rtt min/avg/max/mdev" in output

    # The namespace has no route to 192.0.2.1, so the first send fails.
    assert unreachable.returncode == 1
    assert "Network is unreachable" in unreachable.stderr.decode()
