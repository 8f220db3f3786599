"""The client-side send buffer of a connected, blocking stream socket.

A kernel socket's send() returns as soon as the data is in the socket's
send buffer, and an error found later (a reset, a closed peer) surfaces on
a later call. SendBuffer gives a sandnet socket the same behaviour over
the session's Calls stream: send() copies the data into a local buffer and
returns while the socket's window has room.

A send() on an idle socket leaves at once. If it is small, its Call sets
defer_reply, so sockd and stackd may keep its acknowledgement back until
their next reply. In a request and response exchange, the acknowledgement
then rides with the response instead of costing a message on every hop.
Data sent while a deferred Send is in flight leaves at once in a Send that
is not deferred, which also makes sockd release the acknowledgements it
keeps back. Data sent while such a prompt Send is in flight waits and
leaves in one message when that Send is acknowledged. So a run of small
sends, from one thread or from several, costs one Send per round trip to
stackd, as Linux's TCP autocorking coalesces small writes while earlier
data is still queued.

A run of sends starts when send() finds nothing queued or in flight; the
socket may be dead already (reset while idle). Until the first
acknowledgement of a run arrives, at most MAX_UNPROVEN_WRITES send() calls
are accepted, so a send on a connection that is already reset fails no
later than the third send(), close to Linux, which fails the first. Once
the run is proven, an error surfaces on the first send() after the
acknowledgement that carries it arrives, at most one round trip late, and
the data accepted meanwhile is lost as Linux loses a send buffer to a reset.

The window is the socket's SO_SNDBUF once the application sets it, and
DEFAULT_WINDOW while the stack tunes the buffer itself. Client.close() and
the end of the process hand sockd what is still queued (CallStream.flush).
"""

import errno
import os
import threading
import time

from sandnet.calls import unwrap_reply
from sandnet.v1 import sockets_pb2

# Bytes that send() may accept before sockd has acknowledged them, while the
# application has not set SO_SNDBUF: queued here plus carried by the Sends
# in flight. It bounds memory and sets how far a sender runs ahead of the stack.
DEFAULT_WINDOW = 2048 * 1024

# The largest Send whose acknowledgement may be deferred.
DEFER_MAX_BYTES = 64 * 1024

# send() calls accepted before the first acknowledgement of a run of sends.
MAX_UNPROVEN_WRITES = 2


class SendBuffer:
    """Data of one socket that send() accepted and stackd (or the host kernel) has not yet acknowledged.

    Thread-safe. Order is kept because sockd runs the Send, Shutdown and
    Close calls of one descriptor in the order they were sent.
    """

    def __init__(self, calls, fd: int, window: int = DEFAULT_WINDOW):
        self._calls = calls
        self._fd = fd
        self._window = window
        self._cond = threading.Condition()
        # Data accepted by send() and not yet submitted, one bytes object per
        # write, so that one large write is copied once here and not again.
        self._queued: list[bytes] = []
        self._queued_bytes = 0
        self._in_flight = 0
        self._sends_in_flight = 0
        self._prompt_sends_in_flight = 0
        # send() calls accepted in this run before its first acknowledgement;
        # None once an acknowledgement has proven the connection alive.
        self._unproven_writes: int | None = 0
        self._error: OSError | None = None

    @property
    def sends_in_flight(self) -> int:
        """Send calls submitted and not yet acknowledged."""
        return self._sends_in_flight

    @property
    def window(self) -> int:
        """The maximum number of bytes queued and in flight together."""
        return self._window

    def set_window(self, window: int) -> None:
        """Change the window, as when the application sets SO_SNDBUF; data already accepted stays."""
        with self._cond:
            self._window = max(window, 1)
            self._cond.notify_all()

    def write(self, data: memoryview, timeout: float | None) -> int:
        """Queue as much of ``data`` as the window has room for and return the count, which is at least 1.

        Waits up to ``timeout`` seconds (None: no limit) for room. Raises the
        error that an earlier Send of this socket failed with (once, as
        Linux reports a pending socket error), or TimeoutError without room.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if not self._sends_in_flight and not self._queued:
                # An idle socket may have been reset meanwhile: a new run starts unproven.
                self._unproven_writes = 0
            while True:
                self._raise_pending_error()
                room = self._window - self._in_flight - self._queued_bytes
                unproven = self._unproven_writes
                if room > 0 and (unproven is None or unproven < MAX_UNPROVEN_WRITES):
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("timed out")
                self._cond.wait(remaining)

            count = min(room, len(data))
            self._queued.append(bytes(data[:count]))
            self._queued_bytes += count
            if unproven is not None:
                self._unproven_writes = unproven + 1
            self._submit_if_due()
            if isinstance(self._error, ConnectionError):
                # The session is gone, so nothing takes the data: fail this
                # send instead of reporting it queued.
                self._raise_pending_error()
            return count

    def flush(self) -> None:
        """Submit the queued data now, even while a Send is in flight, ahead of a Shutdown or Close."""
        with self._cond:
            if self._queued:
                self._submit()

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _submit_if_due(self) -> None:
        """Submit the queued data unless a Send that is not deferred is in flight; the caller holds the lock."""
        if not self._queued or self._prompt_sends_in_flight:
            return
        defer = not self._sends_in_flight and self._queued_bytes <= DEFER_MAX_BYTES
        self._submit(defer)

    def _submit(self, defer: bool = False) -> None:
        """Send the queued data as one Send call; the caller holds the lock."""
        data = b"".join(self._queued)
        self._queued.clear()
        self._queued_bytes = 0
        request = sockets_pb2.SendRequest(fd=self._fd, data=data, timeout_ms=-1)
        try:
            future = self._calls.submit("Send", request, defer_reply=defer)
        except ConnectionError as error:
            self._error = error
            return
        self._in_flight += len(data)
        self._sends_in_flight += 1
        if not defer:
            self._prompt_sends_in_flight += 1
        future.add_done_callback(lambda done: self._acknowledge(done, len(data), defer))

    def _acknowledge(self, future, size: int, deferred: bool) -> None:
        """Release the window of one Send and submit what queued meanwhile, or record the Send's error."""
        with self._cond:
            self._in_flight -= size
            self._sends_in_flight -= 1
            if not deferred:
                self._prompt_sends_in_flight -= 1
            try:
                reply = unwrap_reply(future.result())
            except ConnectionError as error:
                self._error = error
                reply = None
            if reply is not None and reply.errno:
                self._error = OSError(reply.errno, os.strerror(reply.errno))
            elif reply is not None and reply.sent < size:
                # A Send with timeout_ms -1 queues everything unless it fails,
                # so a short count means the server broke that contract.
                self._error = OSError(errno.EIO, f"sockd queued {reply.sent} of {size} bytes of a send")

            if self._error is not None:
                # As on Linux, data not yet handed to the stack is lost with the connection.
                self._queued.clear()
                self._queued_bytes = 0
                self._unproven_writes = 0
            else:
                self._unproven_writes = None
                self._submit_if_due()
            self._cond.notify_all()
