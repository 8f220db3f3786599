"""stackd with --network none: loopback only, no link, and no route anywhere else."""

import errno
import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import netlab  # noqa: E402

from sandnet import socket as ssock  # noqa: E402
from sandnet.client import Client  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with tempfile.TemporaryDirectory(prefix="sandnet-none-") as workdir:
        stack_path, sockd_path = os.path.join(workdir, "stackd.sock"), os.path.join(workdir, "sockd.sock")
        # sockd forwards in sandbox mode so that stackd itself must answer ENETUNREACH.
        with netlab.start_stackd(os.path.join(workdir, "unused"), stack_path, extra=["--network", "none"]), \
                netlab.start_sockd(stack_path, sockd_path, network="sandbox"):
            box = Client(f"unix:{sockd_path}")
            yield box
            box.close()


def test_connect_off_loopback_is_enetunreach(client):
    conn = ssock.socket(ssock.AF_INET, ssock.SOCK_STREAM, client=client)
    assert conn.connect_ex(("10.1.2.3", 80)) == errno.ENETUNREACH
    conn.close()


def test_sendto_off_loopback_is_enetunreach(client):
    udp = ssock.socket(ssock.AF_INET, ssock.SOCK_DGRAM, client=client)
    with pytest.raises(OSError) as raised:
        udp.sendto(b"x", ("192.0.2.1", 53))
    assert raised.value.errno == errno.ENETUNREACH
    udp.close()


def test_loopback_tcp_echo_works(client):
    listener = ssock.socket(ssock.AF_INET, ssock.SOCK_STREAM, client=client)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    conn = ssock.socket(ssock.AF_INET, ssock.SOCK_STREAM, client=client)
    conn.settimeout(5)
    conn.connect(("127.0.0.1", port))
    server_side, _ = listener.accept()
    payload = os.urandom(300_000)
    conn.sendall(payload)
    conn.shutdown(ssock.SHUT_WR)
    received = b""
    server_side.settimeout(10)
    while chunk := server_side.recv(65536):
        received += chunk
    assert received == payload
    for s in (conn, server_side, listener):
        s.close()


def test_udp_loopback_round_trip(client):
    a = ssock.socket(ssock.AF_INET, ssock.SOCK_DGRAM, client=client)
    b = ssock.socket(ssock.AF_INET, ssock.SOCK_DGRAM, client=client)
    a.bind(("127.0.0.1", 0))
    b.settimeout(5)
    b.sendto(b"hello", a.getsockname())
    a.settimeout(5)
    data, sender = a.recvfrom(100)
    assert data == b"hello"
    # b was bound implicitly to the wildcard, so only its port is known in advance.
    assert sender == ("127.0.0.1", b.getsockname()[1])
    a.close()
    b.close()


def test_bind_in_use_is_eaddrinuse(client):
    first = ssock.socket(ssock.AF_INET, ssock.SOCK_STREAM, client=client)
    first.bind(("127.0.0.1", 0))
    first.listen(1)
    second = ssock.socket(ssock.AF_INET, ssock.SOCK_STREAM, client=client)
    with pytest.raises(OSError) as raised:
        second.bind(first.getsockname())
    assert raised.value.errno == errno.EADDRINUSE
    first.close()
    second.close()


def test_bind_foreign_address_is_eaddrnotavail(client):
    s = ssock.socket(ssock.AF_INET, ssock.SOCK_STREAM, client=client)
    with pytest.raises(OSError) as raised:
        s.bind(("10.9.9.9", 0))
    assert raised.value.errno == errno.EADDRNOTAVAIL
    s.close()


def test_nonblocking_recv_is_eagain(client):
    listener = ssock.socket(ssock.AF_INET, ssock.SOCK_STREAM, client=client)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    conn = ssock.socket(ssock.AF_INET, ssock.SOCK_STREAM, client=client)
    conn.connect(listener.getsockname())
    conn.setblocking(False)
    with pytest.raises(BlockingIOError):
        conn.recv(10)
    for s in (conn, listener):
        s.close()


def test_unsupported_family_is_eafnosupport(client):
    from sandnet.v1 import sockets_pb2
    reply = client.call("Socket", sockets_pb2.SocketRequest(family=17, type=3))  # AF_PACKET, SOCK_RAW
    assert reply.errno == errno.EAFNOSUPPORT


def connected_pair(client):
    listener = ssock.socket(ssock.AF_INET, ssock.SOCK_STREAM, client=client)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    conn = ssock.socket(ssock.AF_INET, ssock.SOCK_STREAM, client=client)
    conn.settimeout(5)
    conn.connect(listener.getsockname())
    server_side, _ = listener.accept()
    listener.close()
    return conn, server_side


def test_bad_address_length_is_einval(client):
    from sandnet.v1 import sockets_pb2, types_pb2
    fd = client.call("Socket", sockets_pb2.SocketRequest(family=2, type=1)).fd
    reply = client.call("Bind", sockets_pb2.BindRequest(fd=fd, addr=types_pb2.SockAddr(ip=b"\x7f\x00\x00", port=80)))
    assert reply.errno == errno.EINVAL
    client.call("Close", sockets_pb2.FdRequest(fd=fd))


def test_unknown_descriptor_is_ebadf(client):
    from sandnet.v1 import sockets_pb2
    assert client.call("Close", sockets_pb2.FdRequest(fd=987654)).errno == errno.EBADF
    assert client.call("Listen", sockets_pb2.ListenRequest(fd=987654, backlog=1)).errno == errno.EBADF


def test_socket_options_follow_linux(client):
    s = ssock.socket(ssock.AF_INET, ssock.SOCK_STREAM, client=client)
    s.setsockopt(ssock.SOL_SOCKET, ssock.SO_REUSEADDR, 1)
    assert s.getsockopt(ssock.SOL_SOCKET, ssock.SO_REUSEADDR) == 1
    s.setsockopt(ssock.SOL_SOCKET, ssock.SO_KEEPALIVE, 1)
    assert s.getsockopt(ssock.SOL_SOCKET, ssock.SO_KEEPALIVE) == 1
    s.setsockopt(ssock.IPPROTO_TCP, ssock.TCP_NODELAY, 1)
    assert s.getsockopt(ssock.IPPROTO_TCP, ssock.TCP_NODELAY) == 1
    # Linux doubles SO_RCVBUF and SO_SNDBUF and clamps them to rmem_max/wmem_max.
    s.setsockopt(ssock.SOL_SOCKET, ssock.SO_RCVBUF, 65536)
    assert s.getsockopt(ssock.SOL_SOCKET, ssock.SO_RCVBUF) == 131072
    s.setsockopt(ssock.SOL_SOCKET, ssock.SO_SNDBUF, 1)
    assert s.getsockopt(ssock.SOL_SOCKET, ssock.SO_SNDBUF) == 4608
    # Linux reads the value as unsigned: -1 is the maximum, doubled.
    s.setsockopt(ssock.SOL_SOCKET, ssock.SO_RCVBUF, -1)
    assert s.getsockopt(ssock.SOL_SOCKET, ssock.SO_RCVBUF) == 2 * 212992
    assert s.getsockopt(ssock.SOL_SOCKET, __import__("socket").SO_TYPE) == ssock.SOCK_STREAM
    with pytest.raises(OSError) as raised:
        s.setsockopt(ssock.IPPROTO_TCP, 9999, 1)
    assert raised.value.errno == errno.ENOPROTOOPT
    s.close()


def test_recv_timeout_raises_timeouterror(client):
    conn, server_side = connected_pair(client)
    conn.settimeout(0.2)
    with pytest.raises(TimeoutError):
        conn.recv(10)
    conn.close()
    server_side.close()


def test_poll_reports_readable_and_writable(client):
    conn, server_side = connected_pair(client)
    ready = dict(ssock.poll([(server_side, ssock.POLLIN)], 0))
    assert server_side not in ready
    conn.sendall(b"x")
    ready = dict(ssock.poll([(server_side, ssock.POLLIN | ssock.POLLOUT)], 5))
    assert ready[server_side] & ssock.POLLIN
    assert ready[server_side] & ssock.POLLOUT
    conn.close()
    server_side.close()


def test_peer_close_gives_eof_and_pollhup(client):
    conn, server_side = connected_pair(client)
    conn.close()
    server_side.settimeout(5)
    assert server_side.recv(10) == b""
    server_side.close()


def test_nonblocking_connect_completes_via_poll(client):
    listener = ssock.socket(ssock.AF_INET, ssock.SOCK_STREAM, client=client)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    conn = ssock.socket(ssock.AF_INET, ssock.SOCK_STREAM, client=client)
    conn.setblocking(False)
    code = conn.connect_ex(listener.getsockname())
    assert code in (0, errno.EINPROGRESS)
    ready = dict(ssock.poll([(conn, ssock.POLLOUT)], 5))
    assert ready[conn] & ssock.POLLOUT
    assert conn.getsockopt(ssock.SOL_SOCKET, __import__("socket").SO_ERROR) == 0
    assert conn.getpeername() == listener.getsockname()
    conn.close()
    listener.close()


def test_full_udp_receive_buffer_drops_and_counts(client):
    receiver = ssock.socket(ssock.AF_INET, ssock.SOCK_DGRAM, client=client)
    receiver.setsockopt(ssock.SOL_SOCKET, ssock.SO_RCVBUF, 4096)
    receiver.bind(("127.0.0.1", 0))
    sender = ssock.socket(ssock.AF_INET, ssock.SOCK_DGRAM, client=client)
    counters = {c.name: c.value for c in client.info("GetCounters").counters}
    for _ in range(40):
        sender.sendto(b"x" * 1000, receiver.getsockname())
    received = 0
    receiver.settimeout(0.5)
    try:
        while True:
            receiver.recv(2000)
            received += 1
    except TimeoutError:
        pass
    after = {c.name: c.value for c in client.info("GetCounters").counters}
    assert 0 < received < 40
    assert after["Udp.RcvbufErrors"] - counters["Udp.RcvbufErrors"] == 40 - received
    receiver.close()
    sender.close()


def test_sendto_without_address_is_edestaddrreq(client):
    udp = ssock.socket(ssock.AF_INET, ssock.SOCK_DGRAM, client=client)
    with pytest.raises(OSError) as raised:
        udp.send(b"x")
    assert raised.value.errno == errno.EDESTADDRREQ
    udp.close()


def test_udp_to_closed_loopback_port_is_econnrefused(client):
    udp = ssock.socket(ssock.AF_INET, ssock.SOCK_DGRAM, client=client)
    udp.connect(("127.0.0.1", 9))
    udp.send(b"anyone?")
    udp.settimeout(2)
    with pytest.raises(ConnectionRefusedError):
        udp.recv(10)
    udp.close()


def test_connect_to_closed_loopback_port_is_refused(client):
    conn = ssock.socket(ssock.AF_INET, ssock.SOCK_STREAM, client=client)
    conn.settimeout(5)
    assert conn.connect_ex(("127.0.0.1", 1)) == errno.ECONNREFUSED
    conn.close()


def test_sigterm_with_blocked_accept_exits_cleanly(tmp_path):
    import threading
    stack_path, sockd_path = str(tmp_path / "stackd.sock"), str(tmp_path / "sockd.sock")
    with netlab.start_stackd(str(tmp_path / "unused"), stack_path, extra=["--network", "none"]) as stackd, \
            netlab.start_sockd(stack_path, sockd_path, network="sandbox"):
        box = Client(f"unix:{sockd_path}")
        listener = ssock.socket(ssock.AF_INET, ssock.SOCK_STREAM, client=box)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        blocked = threading.Thread(target=lambda: pytest.raises(OSError, listener.accept), daemon=True)
        blocked.start()
        blocked.join(0.5)
        assert stackd.stop() == 0
        blocked.join(10)
        box.close()
        log = stackd.log_text()
    assert "Traceback" not in log
    assert "ERROR" not in log
    assert "stackd stopped" in log


def test_connected_udp_reports_chosen_source(client):
    udp = ssock.socket(ssock.AF_INET, ssock.SOCK_DGRAM, client=client)
    udp.connect(("127.0.0.1", 9))
    # Linux binds a connected datagram socket to the source address its route picks.
    assert udp.getsockname()[0] == "127.0.0.1"
    udp.close()


def test_ipv6_udp_carries_largest_payload(client):
    receiver = ssock.socket(ssock.AF_INET6, ssock.SOCK_DGRAM, client=client)
    receiver.bind(("::1", 0))
    sender = ssock.socket(ssock.AF_INET6, ssock.SOCK_DGRAM, client=client)
    payload = os.urandom(65527)  # 65535 minus the 8-byte UDP header: IPv6 does not count its own header
    assert sender.sendto(payload, receiver.getsockname()[:2]) == len(payload)
    with pytest.raises(OSError) as raised:
        sender.sendto(payload + b"x", receiver.getsockname()[:2])
    assert raised.value.errno == errno.EMSGSIZE
    receiver.settimeout(5)
    assert receiver.recv(70000) == payload
    receiver.close()
    sender.close()
