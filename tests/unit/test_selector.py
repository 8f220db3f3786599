"""SandnetSelector and patch() on OS descriptors alone, where no sockd is involved."""

import os
import selectors
import socket
import socketserver

import pytest

import sandnet
from sandnet import selector as sandnet_selector
from sandnet import socket as sandnet_socket


def test_selector_reports_pipe_readiness():
    read_end, write_end = os.pipe()
    try:
        with sandnet_selector.SandnetSelector() as chooser:
            chooser.register(read_end, selectors.EVENT_READ, "pipe")
            chooser.register(write_end, selectors.EVENT_WRITE)
            assert [(key.fd, events) for key, events in chooser.select(0)] == [(write_end, selectors.EVENT_WRITE)]
            os.write(write_end, b"x")
            ready = {key.fd: (events, key.data) for key, events in chooser.select(1)}
            assert ready[read_end] == (selectors.EVENT_READ, "pipe")
            chooser.unregister(write_end)
            assert chooser.get_map().get(write_end) is None
    finally:
        os.close(read_end)
        os.close(write_end)


def test_selector_times_out_empty():
    read_end, write_end = os.pipe()
    try:
        with sandnet_selector.SandnetSelector() as chooser:
            chooser.register(read_end, selectors.EVENT_READ)
            assert chooser.select(0.01) == []
    finally:
        os.close(read_end)
        os.close(write_end)


def test_select_select_passes_os_descriptors_through():
    left, right = socket.socketpair()
    with left, right:
        right.send(b"x")
        assert sandnet_selector.select_select([left], [], [], 1) == ([left], [], [])


def test_sandnet_fileno_range_is_above_os_descriptors():
    assert sandnet_socket.is_sandnet_fileno(sandnet_socket.FILENO_BASE)
    descriptor = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    os.close(descriptor)
    assert not sandnet_socket.is_sandnet_fileno(descriptor)
    assert sandnet_socket.lookup_fileno(sandnet_socket.FILENO_BASE - 1) is None


@pytest.fixture
def patched():
    sandnet.patch()
    yield
    sandnet.unpatch()


def test_patch_replaces_and_unpatch_restores(patched):
    assert issubclass(socket.socket, sandnet_socket.socket)
    assert selectors.DefaultSelector is sandnet_selector.SandnetSelector
    assert socketserver._ServerSelector is sandnet_selector.SandnetSelector
    assert socket.getaddrinfo is sandnet_socket.getaddrinfo
    sandnet.unpatch()
    assert not sandnet.is_patched()
    assert socket.socket is sandnet_socket._KernelSocket
    assert selectors.DefaultSelector is not sandnet_selector.SandnetSelector


def test_patched_unix_sockets_stay_kernel(patched):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as local:
        assert type(local) is sandnet_socket._KernelSocket
    left, right = socket.socketpair()
    with left, right:
        assert type(left) is sandnet_socket._KernelSocket


@pytest.mark.parametrize("host, port, family, flags, expected", [
    ("127.0.0.1", 80, 0, 0, [(socket.AF_INET, ("127.0.0.1", 80))]),
    ("::1", "8080", 0, 0, [(socket.AF_INET6, ("::1", 8080, 0, 0))]),
    (None, 0, 0, socket.AI_PASSIVE, [(socket.AF_INET, ("0.0.0.0", 0)), (socket.AF_INET6, ("::", 0, 0, 0))]),
    (None, 5, socket.AF_INET, 0, [(socket.AF_INET, ("127.0.0.1", 5))]),
    ("localhost", "http", socket.AF_INET, 0, [(socket.AF_INET, ("127.0.0.1", 80))]),
])
def test_getaddrinfo_numeric(host, port, family, flags, expected):
    infos = sandnet_socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, flags)
    assert [(info[0], info[4]) for info in infos] == expected
    assert all(info[1] == socket.SOCK_STREAM and info[2] == socket.IPPROTO_TCP for info in infos)


def test_getaddrinfo_type_zero_lists_three_kinds():
    kinds = [info[1] for info in sandnet_socket.getaddrinfo("10.0.0.1", 53, socket.AF_INET)]
    assert kinds == [socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW]


@pytest.mark.parametrize("host, port, flags, code", [
    ("web.example", 80, socket.AI_NUMERICHOST, socket.EAI_NONAME),
    ("10.0.0.1", "no-such-service", 0, socket.EAI_SERVICE),
    ("10.0.0.1", "http", socket.AI_NUMERICSERV, socket.EAI_NONAME),
])
def test_getaddrinfo_errors(host, port, flags, code):
    with pytest.raises(socket.gaierror) as raised:
        sandnet_socket.getaddrinfo(host, port, 0, 0, 0, flags)
    assert raised.value.errno == code


def test_getaddrinfo_rejects_other_families():
    with pytest.raises(socket.gaierror) as raised:
        sandnet_socket.getaddrinfo("10.0.0.1", 80, socket.AF_UNIX)
    assert raised.value.errno == socket.EAI_FAMILY
