"""Address conversion in the client (sandnet.socket) and in sockd (sandnet_sockd.addresses)."""

import errno
import io
import socket

import pytest

from sandnet import resolver
from sandnet import socket as snsocket
from sandnet.cli import CommandError, echo_request, icmp_checksum, parse_url, read_head, write_body
from sandnet.client import grpc_target
from sandnet.v1 import types_pb2
from sandnet_sockd import addresses


def test_ipv4_tuple_round_trip():
    addr = snsocket.to_sockaddr(socket.AF_INET, ("10.1.2.3", 8080))
    assert (addr.ip, addr.port) == (bytes([10, 1, 2, 3]), 8080)
    assert snsocket.from_sockaddr(socket.AF_INET, addr) == ("10.1.2.3", 8080)


def test_ipv6_tuple_round_trip():
    addr = snsocket.to_sockaddr(socket.AF_INET6, ("fe80::1%7", 443, 5, 7))
    assert (addr.port, addr.flowinfo, addr.scope_id) == (443, 5, 7)
    assert snsocket.from_sockaddr(socket.AF_INET6, addr) == ("fe80::1", 443, 5, 7)


def test_wildcard_and_localhost():
    assert snsocket.to_sockaddr(socket.AF_INET, ("", 0)).ip == b""
    assert snsocket.from_sockaddr(socket.AF_INET, types_pb2.SockAddr()) == ("0.0.0.0", 0)
    assert snsocket.from_sockaddr(socket.AF_INET6, types_pb2.SockAddr()) == ("::", 0, 0, 0)
    assert snsocket.resolve_host(socket.AF_INET, "localhost") == bytes([127, 0, 0, 1])
    assert snsocket.resolve_host(socket.AF_INET6, "localhost") == bytes(15) + b"\x01"


class NoNameserverClient:
    """A stand-in for Client whose resolver has no nameserver, so no query leaves the process."""

    def resolver(self):
        return resolver.Resolver(open_udp=None, nameservers=[])


def test_hostname_without_nameserver_raises_gaierror():
    with pytest.raises(socket.gaierror, match="no nameserver configured"):
        snsocket.resolve_host(socket.AF_INET, "sn-absent.invalid", NoNameserverClient())


def test_address_of_other_family_raises_gaierror():
    with pytest.raises(socket.gaierror) as raised:
        snsocket.resolve_host(socket.AF_INET6, "127.0.0.1")
    assert raised.value.errno == socket.EAI_ADDRFAMILY


def test_bad_tuples_raise_like_stdlib():
    with pytest.raises(TypeError):
        snsocket.to_sockaddr(socket.AF_INET, "127.0.0.1:80")
    with pytest.raises(TypeError):
        snsocket.to_sockaddr(socket.AF_INET, ("127.0.0.1", "80"))
    with pytest.raises(OverflowError):
        snsocket.to_sockaddr(socket.AF_INET, ("127.0.0.1", 65536))


@pytest.mark.parametrize("family, addr, expected", [
    (socket.AF_INET, types_pb2.SockAddr(ip=b"\x01\x02\x03", port=1), errno.EINVAL),
    (socket.AF_INET6, types_pb2.SockAddr(ip=b"\x01\x02\x03\x04", port=1), errno.EINVAL),
    (socket.AF_INET, types_pb2.SockAddr(port=65536), errno.EINVAL),
    (socket.AF_UNIX, types_pb2.SockAddr(), errno.EAFNOSUPPORT),
])
def test_sockd_rejects_bad_address(family, addr, expected):
    with pytest.raises(OSError) as raised:
        addresses.to_host(family, addr)
    assert raised.value.errno == expected


def test_sockd_address_conversion():
    addr = types_pb2.SockAddr(ip=socket.inet_pton(socket.AF_INET6, "::1"), port=22, scope_id=0)
    assert addresses.to_host(socket.AF_INET6, addr) == ("::1", 22, 0, 0)
    assert addresses.from_host(("127.0.0.1", 9)) == types_pb2.SockAddr(ip=b"\x7f\x00\x00\x01", port=9)
    assert addresses.from_host(None) == types_pb2.SockAddr()


@pytest.mark.parametrize("text, loopback", [
    ("127.0.0.1", True), ("127.255.0.9", True), ("::1", True), ("::ffff:127.0.0.2", True),
    ("10.0.0.1", False), ("::ffff:10.0.0.1", False), ("fe80::1", False),
])
def test_loopback_check(text, loopback):
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    addr = types_pb2.SockAddr(ip=socket.inet_pton(family, text))
    assert addresses.is_loopback(family, addr) is loopback


def test_endpoint_targets():
    assert grpc_target("unix:/run/x.sock") == "unix:/run/x.sock"
    assert grpc_target("tcp:127.0.0.1:7000") == "127.0.0.1:7000"
    with pytest.raises(ValueError, match="unix:PATH or tcp:HOST:PORT"):
        grpc_target("/run/x.sock")


def test_echo_request_checksum_verifies():
    packet = echo_request(3)
    assert packet[0] == 8
    assert icmp_checksum(packet) == 0


def test_parse_url():
    assert parse_url("http://127.0.0.1:8080/a?b=1") == ("127.0.0.1", 8080, "/a?b=1", "127.0.0.1:8080")
    assert parse_url("http://localhost") == ("localhost", 80, "/", "localhost")
    with pytest.raises(CommandError, match="only http://"):
        parse_url("https://127.0.0.1/")


def read_response(raw: bytes) -> tuple[str, bytes]:
    response = io.BufferedReader(io.BytesIO(raw))
    out = io.BytesIO()
    status_line, headers = read_head(response, "http://test/")
    write_body(response, headers, out, "http://test/")
    return status_line, out.getvalue()


def test_http_body_chunked():
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\n")
    assert read_response(raw) == ("HTTP/1.1 200 OK", b"hello, world")


def test_http_body_content_length():
    raw = b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\ngoneEXTRA"
    assert read_response(raw) == ("HTTP/1.1 404 Not Found", b"gone")


def test_http_body_read_to_close():
    raw = b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\n\x00binary\xff"
    assert read_response(raw) == ("HTTP/1.0 200 OK", b"\x00binary\xff")


def test_http_body_short_content_length():
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"
    with pytest.raises(CommandError, match="5 bytes before its declared length"):
        read_response(raw)
