"""A selectors.BaseSelector that waits on sandnet sockets and OS descriptors together.

A sandnet socket has no OS descriptor, so the kernel's poll() cannot watch
it. SandnetSelector queries sockd's Poll call for the sandnet sockets and the
kernel's poll() for everything else (asyncio's self-pipe, subprocess
pipes, files), in one wait:

- only OS descriptors registered: the kernel's poll() alone, no gRPC call;
- only sandnet sockets: one blocking Poll call with the timeout;
- both: Poll is started as a gRPC future whose completion writes to a wake-up
  pipe, the kernel's poll() waits on the OS descriptors plus that pipe, and
  whichever side returns first ends the wait; a Poll still running is
  cancelled. Readiness is level-triggered, so a cancelled Poll loses nothing:
  the next select() asks again.

Bytes already in a socket's client-side receive buffer count as readable
without asking sockd. sandnet.patch() installs this class as
selectors.DefaultSelector, so asyncio and socketserver use it unchanged.
"""

import math
import os
import select
import selectors
import threading

import grpc

from sandnet import socket as sandnet_socket
from sandnet.v1 import sockets_pb2

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE


def _poll_mask(events: int) -> int:
    mask = 0
    if events & EVENT_READ:
        mask |= select.POLLIN
    if events & EVENT_WRITE:
        mask |= select.POLLOUT
    return mask


def _selector_events(revents: int) -> int:
    """Map poll revents to selector events as selectors.PollSelector does (errors wake both)."""
    events = 0
    if revents & ~select.POLLIN:
        events |= EVENT_WRITE
    if revents & ~select.POLLOUT:
        events |= EVENT_READ
    return events


def _timeout_ms(timeout: float | None) -> int:
    """Convert a select() timeout in seconds to poll's milliseconds: -1 blocks."""
    if timeout is None:
        return -1
    if timeout <= 0:
        return 0
    return math.ceil(timeout * 1000)


class SandnetSelector(selectors._BaseSelectorImpl):
    """A selector for sandnet sockets (fileno() at FILENO_BASE or above) and OS descriptors.

    All registered sandnet sockets must belong to one sandnet Client;
    select() raises ValueError otherwise.
    """

    def __init__(self) -> None:
        super().__init__()
        self._kernel = select.poll()
        self._sandnet_keys: dict[int, selectors.SelectorKey] = {}
        self._wake_lock = threading.Lock()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._kernel.register(self._wake_read, select.POLLIN)

    def register(self, fileobj, events, data=None) -> selectors.SelectorKey:
        key = super().register(fileobj, events, data)
        if sandnet_socket.is_sandnet_fileno(key.fd):
            self._sandnet_keys[key.fd] = key
            return key
        try:
            self._kernel.register(key.fd, _poll_mask(events))
        except BaseException:
            super().unregister(fileobj)
            raise
        return key

    def unregister(self, fileobj) -> selectors.SelectorKey:
        key = super().unregister(fileobj)
        if self._sandnet_keys.pop(key.fd, None) is None:
            try:
                self._kernel.unregister(key.fd)
            except (KeyError, OSError):
                # The descriptor was closed before it was unregistered, as
                # selectors.PollSelector allows.
                pass
        return key

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        timeout_ms = _timeout_ms(timeout)
        self._drain_wake_pipe()
        if not self._sandnet_keys:
            return self._kernel_ready(self._kernel.poll(timeout_ms))

        ready: dict[int, int] = {}
        by_sockd_fd: dict[int, selectors.SelectorKey] = {}
        clients = set()
        request = sockets_pb2.PollRequest()
        for key in self._sandnet_keys.values():
            sock = sandnet_socket.lookup_fileno(key.fd)
            if sock is None or sock.sockd_fd < 0:
                # Closed while registered: report it ready so that the caller
                # notices, as poll() reports POLLNVAL.
                ready[key.fd] = key.events
                continue
            if key.events & EVENT_READ and sock.pending():
                ready[key.fd] = EVENT_READ
            clients.add(sock.client)
            by_sockd_fd[sock.sockd_fd] = key
            request.fds.append(sockets_pb2.PollFd(fd=sock.sockd_fd, events=_poll_mask(key.events)))
        if len(clients) > 1:
            raise ValueError("SandnetSelector needs all sandnet sockets to belong to one sandnet Client")
        if ready:
            timeout_ms = 0

        kernel_events: list[tuple[int, int]] = []
        reply = None
        if clients:
            client = clients.pop()
            kernel_registered = len(self._fd_to_key) > len(self._sandnet_keys)
            request.timeout_ms = timeout_ms
            if not kernel_registered:
                reply = client.call("Poll", request, timeout_ms)
            elif timeout_ms == 0:
                reply = client.call("Poll", request, 0)
                kernel_events = self._kernel.poll(0)
            else:
                reply, kernel_events = self._wait_both(client, request, timeout_ms)
        else:
            kernel_events = self._kernel.poll(0)

        if reply is not None:
            if reply.errno:
                raise OSError(reply.errno, os.strerror(reply.errno))
            for entry in reply.ready:
                key = by_sockd_fd.get(entry.fd)
                if key is not None:
                    ready[key.fd] = ready.get(key.fd, 0) | _selector_events(entry.events)

        result = self._kernel_ready(kernel_events)
        for fd, events in ready.items():
            key = self._fd_to_key[fd]
            if events & key.events:
                result.append((key, events & key.events))
        return result

    def _wait_both(self, client, request: sockets_pb2.PollRequest, timeout_ms: int):
        """Wait on sockd's Poll and the kernel's poll() at once; return (Poll reply or None, kernel events)."""
        future = client.call_future("Poll", request, timeout_ms)
        future.add_done_callback(self._wake)
        kernel_events = self._kernel.poll(timeout_ms)
        if future.cancel():
            return None, kernel_events
        try:
            return future.result(), kernel_events
        except grpc.RpcError as error:
            raise ConnectionError(f"sockd at {client.endpoint}: Poll failed: {error.code().name}: "
                                  f"{error.details()}") from None

    def _kernel_ready(self, events: list[tuple[int, int]]) -> list[tuple[selectors.SelectorKey, int]]:
        ready = []
        for fd, revents in events:
            if fd == self._wake_read:
                continue
            key = self._fd_to_key.get(fd)
            if key is not None and _selector_events(revents) & key.events:
                ready.append((key, _selector_events(revents) & key.events))
        return ready

    def _wake(self, _future) -> None:
        """Write to the wake-up pipe; runs on a gRPC thread when a Poll future completes."""
        with self._wake_lock:
            if self._wake_write < 0:
                return
            try:
                os.write(self._wake_write, b"\0")
            except BlockingIOError:
                pass  # The pipe is full, so select() wakes anyway.

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        with self._wake_lock:
            if self._wake_write >= 0:
                os.close(self._wake_write)
                os.close(self._wake_read)
                self._wake_write = self._wake_read = -1
        self._sandnet_keys.clear()
        super().close()


def select_select(rlist, wlist, xlist, timeout: float | None = None):
    """select.select() that also accepts sandnet sockets; exceptional conditions of sandnet sockets are never reported.

    With OS descriptors only, it calls the kernel's select() unchanged.
    """
    everything = [*rlist, *wlist, *xlist]
    if not any(sandnet_socket.is_sandnet_fileno(_fileno(obj)) for obj in everything):
        return _kernel_select(rlist, wlist, xlist, timeout)
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be non-negative")

    with SandnetSelector() as selector:
        for obj in rlist:
            selector.register(obj, EVENT_READ)
        for obj in wlist:
            try:
                selector.modify(obj, selector.get_key(obj).events | EVENT_WRITE)
            except KeyError:
                selector.register(obj, EVENT_WRITE)
        ready = selector.select(timeout)
    readable = [key.fileobj for key, events in ready if events & EVENT_READ]
    writable = [key.fileobj for key, events in ready if events & EVENT_WRITE]
    return readable, writable, []


def _fileno(obj) -> int:
    return obj if isinstance(obj, int) else obj.fileno()


_kernel_select = select.select
