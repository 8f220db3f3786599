"""Make the standard library's socket machinery use sandnet: sandnet.patch().

patch() replaces attributes of the stdlib modules in place, so every module
that did ``import socket`` (http.client, urllib.request, socketserver,
asyncio, ...) gets sandnet sockets from then on:

- socket: create_connection, create_server, getaddrinfo, gethostbyname,
  gethostbyname_ex, gethostbyaddr, getfqdn, getnameinfo and
  has_dualstack_ipv6 come from sandnet.socket, and socket.socket becomes a
  subclass of sandnet.socket.socket that keeps AF_UNIX sockets the kernel's;
- selectors: DefaultSelector, SelectSelector, PollSelector and EpollSelector
  become sandnet.selector.SandnetSelector, and socketserver's selector too;
- select: select() also accepts sandnet sockets.

Names bound earlier with ``from socket import socket`` keep the stdlib's
objects, so patch as early as possible; ``sandnet run`` patches before the
program's first line. AF_UNIX sockets and socketpair() stay the kernel's.
TLS does not work on patched sockets, because ssl.SSLSocket needs an OS
descriptor.
"""

import select
import selectors
import socket
import sys
import threading

SOCKET_ATTRIBUTES = (
    "create_connection", "create_server", "getaddrinfo", "gethostbyname", "gethostbyname_ex",
    "gethostbyaddr", "getfqdn", "getnameinfo", "has_dualstack_ipv6",
    "if_nameindex", "if_nametoindex", "if_indextoname",
)
SELECTOR_ATTRIBUTES = ("DefaultSelector", "SelectSelector", "PollSelector", "EpollSelector")


class _Patch:
    """The stdlib attributes that patch() replaced, to put back with unpatch()."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.saved: list[tuple[object, str, object]] = []

    def replace(self, module, name: str, value) -> None:
        if hasattr(module, name):
            self.saved.append((module, name, getattr(module, name)))
        setattr(module, name, value)


_state = _Patch()


def _patched_socket_class():
    """Return the class that replaces socket.socket: sandnet's, except that AF_UNIX stays the kernel's."""
    from sandnet import socket as sandnet_socket

    class socket(sandnet_socket.socket):
        __doc__ = sandnet_socket.socket.__doc__

        def __new__(cls, family=sandnet_socket.AF_INET, type=sandnet_socket.SOCK_STREAM, proto=0, fileno=None,
                    **kwargs):
            # AF_UNIX is local IPC, which the sandbox's network isolation does
            # not cover (logging, multiprocessing and others use it).
            if family == sandnet_socket.AF_UNIX:
                return sandnet_socket._KernelSocket(family, type, proto, fileno)
            return super().__new__(cls)

    return socket


def patch() -> None:
    """Back the stdlib's socket, selectors and select modules with sandnet; calling it again does nothing.

    The sockd session opens on the first socket call, at $SANDNET_SOCKD
    (default unix:/run/sandnet/sockd.sock).
    """
    from sandnet import selector as sandnet_selector
    from sandnet import socket as sandnet_socket

    with _state.lock:
        if _state.saved:
            return
        for name in SOCKET_ATTRIBUTES:
            _state.replace(socket, name, getattr(sandnet_socket, name))
        _state.replace(socket, "socket", _patched_socket_class())
        for name in SELECTOR_ATTRIBUTES:
            _state.replace(selectors, name, sandnet_selector.SandnetSelector)
        _state.replace(select, "select", sandnet_selector.select_select)
        socketserver = sys.modules.get("socketserver")
        if socketserver is not None:
            _state.replace(socketserver, "_ServerSelector", sandnet_selector.SandnetSelector)


def unpatch() -> None:
    """Put back every attribute that patch() replaced."""
    with _state.lock:
        for module, name, value in reversed(_state.saved):
            setattr(module, name, value)
        _state.saved.clear()


def is_patched() -> bool:
    """Return True between patch() and unpatch()."""
    return bool(_state.saved)
