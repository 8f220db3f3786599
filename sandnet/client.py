"""A synchronous connection to sockd: one gRPC channel and one session.

The session stream stays open for the client's lifetime, read by a daemon
thread; when it ends, sockd closes every socket the client created. Socket
calls travel on one Calls stream per session (sandnet.calls), which costs
far less than a unary RPC per call.
"""

import atexit
import collections
import concurrent.futures
import itertools
import logging
import os
import queue
import threading
import weakref

import grpc

from sandnet import calls
from sandnet.v1 import sockets_pb2, sockets_pb2_grpc

DEFAULT_ENDPOINT = "unix:/run/sandnet/sockd.sock"
ENDPOINT_ENV = "SANDNET_SOCKD"
SESSION_METADATA = "sandnet-session"

# How long the constructor waits for sockd to accept the channel.
CONNECT_TIMEOUT_SECONDS = 5.0

# How long Client.close(), and the end of the process, wait for sockd to take
# the calls already submitted, and again for their sends to complete.
FLUSH_SECONDS = 5.0

# Calls whose data or effect must not be lost when the process ends right
# after submitting them without waiting: buffered sends and close().
_FLUSHED_METHODS = frozenset({"Send", "Shutdown", "Close", "SetSockOpt"})

log = logging.getLogger("sandnet.client")

# Messages up to 64 MiB, as the sandnet services accept.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


def grpc_target(endpoint: str) -> str:
    """Convert ``unix:PATH`` or ``tcp:HOST:PORT`` to a gRPC target; raise ValueError naming the fix."""
    if endpoint.startswith("unix:") and len(endpoint) > len("unix:"):
        return endpoint
    if endpoint.startswith("tcp:"):
        host, sep, port = endpoint[len("tcp:"):].rpartition(":")
        if sep and host and port.isdigit():
            return f"{host}:{port}"
    raise ValueError(f"invalid sockd endpoint {endpoint!r}: expected unix:PATH or tcp:HOST:PORT")


# How long the sending side waits for another call to batch with a batch
# of nothing but deferred-reply calls. A small send() is nearly always
# followed at once by the recv() of its response, and the two then cost one
# message on every hop instead of two, as Linux's TCP autocorking keeps a
# small segment back while more data is likely to follow.
CORK_SECONDS = 0.0005


class CallStream:
    """The session's Calls stream: socket calls from any thread, each completed by its own future.

    A caller's call goes into a queue. gRPC's sending thread takes every
    call queued at that moment as one batch, and a reader thread completes
    the futures as the replies arrive. When the stream fails, every waiting
    and later call raises ConnectionError.
    """

    def __init__(self, sockets: sockets_pb2_grpc.SocketsStub, metadata, endpoint: str, session: str):
        self.endpoint = endpoint
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._ids = itertools.count(1)
        # Call id -> (the future of its reply, its method).
        self._pending: dict[int, tuple[concurrent.futures.Future, str]] = {}
        self._lock = threading.Lock()
        self._failure: str | None = None
        # Calls submitted per method, and batches handed to gRPC: for tests and tuning.
        self.submitted: collections.Counter[str] = collections.Counter()
        self.batches_sent = 0
        # The send buffers of this session's sockets, which flush() empties.
        self.send_buffers: weakref.WeakSet = weakref.WeakSet()
        self._replies = sockets.Calls(self._batches(), metadata=metadata)
        self._reader = threading.Thread(target=self._read_replies, name=f"sandnet-calls-{session[:8]}", daemon=True)
        self._reader.start()

    def submit(self, method: str, request, defer_reply: bool = False) -> concurrent.futures.Future:
        """Queue one call and return a future of its CallReply; raise ConnectionError if the stream failed.

        With ``defer_reply``, sockd may hold the reply until it sends another
        one (see Call.defer_reply), so use it only for a reply that no caller waits for.
        """
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._failure is not None:
                raise ConnectionError(self._failure)
            call_id = next(self._ids)
            self._pending[call_id] = (future, method)
            self.submitted[method] += 1
        self._queue.put(calls.make_call(call_id, method, request, defer_reply))
        return future

    def call(self, method: str, request, timeout: float | None):
        """Run one call and return its unary reply; raise ConnectionError on failure or after ``timeout`` seconds."""
        future = self.submit(method, request)
        try:
            return calls.unwrap_reply(future.result(timeout))
        except concurrent.futures.TimeoutError:
            raise ConnectionError(f"sockd at {self.endpoint}: {method} got no reply within {timeout:g} s") from None

    def _batches(self):
        """Yield the queued calls as batches of up to MAX_BATCH_BYTES; each takes every call queued when it is taken."""
        carry = None
        while True:
            call, carry = (carry, None) if carry is not None else (self._queue.get(), None)
            if call is None:
                return
            batch = sockets_pb2.CallBatch(calls=[call])
            size = calls.batch_size(call)
            corked = call.defer_reply
            while True:
                try:
                    call = self._queue.get(timeout=CORK_SECONDS) if corked else self._queue.get_nowait()
                except queue.Empty:
                    break
                if call is None:
                    self.batches_sent += 1
                    yield batch
                    return
                call_size = calls.batch_size(call)
                if size + call_size > calls.MAX_BATCH_BYTES:
                    carry = call
                    break
                batch.calls.append(call)
                size += call_size
                corked = corked and call.defer_reply
            self.batches_sent += 1
            yield batch

    def _read_replies(self) -> None:
        reason = f"sockd at {self.endpoint} ended the Calls stream"
        try:
            for batch in self._replies:
                for reply in batch.replies:
                    with self._lock:
                        future, _ = self._pending.pop(reply.id, (None, ""))
                    if future is not None and not future.cancelled():
                        future.set_result(reply)
        except grpc.RpcError as error:
            reason = f"sockd at {self.endpoint}: the Calls stream failed: {error.code().name}: {error.details()}"
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = reason
            pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(ConnectionError(reason))

    def flush(self, timeout: float = FLUSH_SECONDS) -> tuple[bool, int]:
        """Hand sockd every byte that send() accepted and every call submitted so far.

        A socket's close() and buffered send() return before sockd has their
        data, so a process that ends right after them would lose it, while
        Linux keeps sending a socket's data after the process ends. This
        submits the data still queued in every send buffer, then a Poll of
        no descriptors, whose reply sockd sends only after reading every
        earlier call. Then it waits up to ``timeout`` seconds more for the
        earlier Send, Shutdown, Close and SetSockOpt calls to complete, which
        matters in host mode: there sockd drops unfinished sends when the
        session ends. Returns (whether sockd confirmed every call within
        ``timeout`` seconds, the number of those calls still running). A
        failed stream counts as confirmed, since sockd then closed the
        session's sockets.
        """
        for buffer in list(self.send_buffers):
            buffer.flush()
        with self._lock:
            waited = [future for future, method in self._pending.values() if method in _FLUSHED_METHODS]
        try:
            self.submit("Poll", sockets_pb2.PollRequest(timeout_ms=0)).result(timeout)
        except ConnectionError:
            return True, 0
        except concurrent.futures.TimeoutError:
            return False, len(waited)
        _, not_done = concurrent.futures.wait(waited, timeout)
        return True, len(not_done)

    def close(self) -> None:
        """End the stream; waiting calls raise ConnectionError."""
        self._queue.put(None)
        self._replies.cancel()
        self._fail(f"the session with sockd at {self.endpoint} is closed")


class Client:
    """A session with sockd; every call carries the session id. Thread-safe.

    ``endpoint`` defaults to $SANDNET_SOCKD, else unix:/run/sandnet/sockd.sock.
    Raises ConnectionError naming the endpoint when sockd does not respond.
    """

    _default: "Client | None" = None
    _default_lock = threading.Lock()

    def __init__(self, endpoint: str | None = None, name: str = "sandnet-client"):
        self.endpoint = endpoint or os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
        target = grpc_target(self.endpoint)
        if target.startswith("unix:") and not os.path.exists(target[len("unix:"):]):
            raise ConnectionError(f"sockd is not reachable at {self.endpoint} (no such socket file): "
                                  f"start sandnet-sockd there or set {ENDPOINT_ENV} to its endpoint")
        self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        try:
            grpc.channel_ready_future(self._channel).result(timeout=CONNECT_TIMEOUT_SECONDS)
            self._session_call = sockets_pb2_grpc.SocketsStub(self._channel).Session(
                sockets_pb2.SessionRequest(client=name))
            first = next(self._session_call)
        except grpc.FutureTimeoutError:
            self._channel.close()
            raise ConnectionError(
                f"sockd is not reachable at {self.endpoint} (no response within {CONNECT_TIMEOUT_SECONDS:g} s): "
                f"start sandnet-sockd there or set {ENDPOINT_ENV} to its endpoint"
            ) from None
        except (grpc.RpcError, StopIteration) as error:
            self._channel.close()
            raise ConnectionError(
                f"sockd at {self.endpoint} did not open a session ({error}): "
                f"start sandnet-sockd there or set {ENDPOINT_ENV} to its endpoint"
            ) from None

        self.session = first.session
        self.metadata = ((SESSION_METADATA, self.session),)
        self.sockets = sockets_pb2_grpc.SocketsStub(self._channel)
        self.netinfo = sockets_pb2_grpc.NetinfoStub(self._channel)
        self._closed = threading.Event()
        self.calls = CallStream(self.sockets, self.metadata, self.endpoint, self.session)
        self._resolver = None
        self._resolver_lock = threading.Lock()
        self._keeper = threading.Thread(target=self._hold_session, name=f"sandnet-session-{self.session[:8]}",
                                        daemon=True)
        self._keeper.start()
        # A child made by fork() shares this session's channel but must not flush it.
        self._pid = os.getpid()
        atexit.register(_flush_at_exit, weakref.ref(self))

    @classmethod
    def default(cls) -> "Client":
        """Return the process-wide client that sandnet.socket uses, creating it on first use."""
        with cls._default_lock:
            if cls._default is None or cls._default.closed:
                cls._default = cls()
            return cls._default

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _hold_session(self) -> None:
        """Read the session stream until sockd or close() ends it."""
        try:
            for _ in self._session_call:
                pass
        except grpc.RpcError:
            pass
        self._closed.set()

    def call(self, method: str, request, timeout_ms: int | None = None):
        """Call a Sockets method on the session's Calls stream and return its reply.

        A transport failure raises ConnectionError naming the endpoint, so a
        socket-level caller sees an OSError either way.
        """
        deadline = None if timeout_ms is None or timeout_ms < 0 else timeout_ms / 1000 + 30
        return self.calls.call(method, request, deadline)

    def call_unary(self, method: str, request, timeout_ms: int | None = None):
        """Call a Sockets method as a unary RPC with the session metadata and return its reply.

        Raises ConnectionError naming the endpoint on a transport failure.
        """
        deadline = None if timeout_ms is None or timeout_ms < 0 else timeout_ms / 1000 + 30
        try:
            return getattr(self.sockets, method)(request, metadata=self.metadata, timeout=deadline)
        except grpc.RpcError as error:
            raise ConnectionError(f"sockd at {self.endpoint}: {method} failed: {error.code().name}: "
                                  f"{error.details()}") from None

    def call_future(self, method: str, request, timeout_ms: int | None = None) -> grpc.Future:
        """Start a Sockets call and return its grpc.Future; result() raises grpc.RpcError on failure."""
        deadline = None if timeout_ms is None or timeout_ms < 0 else timeout_ms / 1000 + 30
        return getattr(self.sockets, method).future(request, metadata=self.metadata, timeout=deadline)

    def resolver(self):
        """Return this client's sandnet.resolver.Resolver, created on first use from the environment."""
        with self._resolver_lock:
            if self._resolver is None:
                from sandnet import resolver, socket

                self._resolver = resolver.Resolver(
                    lambda family: socket.socket(family, socket.SOCK_DGRAM, client=self))
            return self._resolver

    def info(self, method: str):
        """Call a Netinfo method (ListInterfaces, ListRoutes, ListSockets, GetCounters)."""
        try:
            return getattr(self.netinfo, method)(sockets_pb2.ListRequest(), metadata=self.metadata, timeout=30)
        except grpc.RpcError as error:
            raise ConnectionError(f"sockd at {self.endpoint}: {method} failed: {error.code().name}: "
                                  f"{error.details()}") from None

    def flush(self, when: str) -> None:
        """Run CallStream.flush and log what it could not confirm; ``when`` names the occasion for the log."""
        confirmed, running = self.calls.flush()
        if not confirmed:
            log.warning("sockd at %s did not confirm the last calls of session %s within %g s at %s; "
                        "data sent before it may be lost", self.endpoint, self.session, FLUSH_SECONDS, when)
        elif running:
            log.warning("%d send or close call(s) of session %s still wait for room after %g s at %s; "
                        "in host mode their data is lost when the session ends", running, self.session,
                        FLUSH_SECONDS, when)

    def close(self) -> None:
        """Hand sockd the data and calls already accepted, then end the session, so sockd closes its sockets."""
        if not self.closed and os.getpid() == self._pid:
            self.flush("close()")
        self.calls.close()
        self._session_call.cancel()
        self._channel.close()
        self._closed.set()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _flush_at_exit(client_ref: "weakref.ref[Client]") -> None:
    """Hand sockd a live client's last data and calls before the process ends (see CallStream.flush)."""
    client = client_ref()
    if client is not None and not client.closed and os.getpid() == client._pid:
        client.flush("exit")
