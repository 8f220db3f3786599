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


def test_ipv6_socket_is_eafnosupport(client):
    with pytest.raises(OSError) as raised:
        ssock.socket(ssock.AF_INET6, ssock.SOCK_STREAM, client=client)
    assert raised.value.errno == errno.EAFNOSUPPORT
