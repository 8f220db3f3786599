"""Socket calls on the Calls stream: the client's multiplexing, its send buffer and
sockd's forwarding to stackd, against the Linux kernel in the peer namespace and
the sandbox's own loopback."""

import errno
import hashlib
import os
import subprocess
import sys
import threading
import time

import grpc
import pytest

from sandbox_fixture import running_sandbox, start_peer_tool
from sandnet import calls
from sandnet import socket as ssock
from sandnet.client import CHANNEL_OPTIONS, SESSION_METADATA, Client, grpc_target
from sandnet.sendbuffer import DEFAULT_WINDOW
from sandnet.v1 import sockets_pb2, sockets_pb2_grpc

pytestmark = pytest.mark.netns



@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox() as box:
        yield box
        print(box.logs())


def stream_sock(box) -> ssock.socket:
    return ssock.socket(ssock.AF_INET, ssock.SOCK_STREAM, client=box.client)


def loopback_pair(box, port: int) -> tuple[ssock.socket, ssock.socket, ssock.socket]:
    """Return (listener, connected, accepted) sockets on the sandbox's 127.0.0.1."""
    listener = stream_sock(box)
    listener.bind(("127.0.0.1", port))
    listener.listen(4)
    client = stream_sock(box)
    client.settimeout(10)
    client.connect(("127.0.0.1", port))
    listener.settimeout(10)
    accepted, _ = listener.accept()
    accepted.settimeout(10)
    return listener, client, accepted


def raw_stub(box):
    channel = grpc.insecure_channel(grpc_target(box.sockd_endpoint), options=CHANNEL_OPTIONS)
    return channel, sockets_pb2_grpc.SocketsStub(channel)


def test_small_sends_reach_peer_in_order(sandbox):
    pieces = [b"%05d;" % index for index in range(3000)]
    expected = b"".join(pieces)
    proc = start_peer_tool(sandbox.topo.peer, "sink", 9201)
    conn = stream_sock(sandbox)
    conn.settimeout(30)
    conn.connect((sandbox.topo.peer_ip, 9201))
    for piece in pieces:
        assert conn.send(piece) == len(piece)
    conn.close()
    length, digest = proc.communicate(timeout=60)[0].split()
    assert int(length) == len(expected)
    assert digest == hashlib.sha256(expected).hexdigest()


def test_buffered_sends_precede_fin(sandbox):
    proc = start_peer_tool(sandbox.topo.peer, "half-close", 9202)
    conn = stream_sock(sandbox)
    conn.settimeout(20)
    conn.connect((sandbox.topo.peer_ip, 9202))
    for _ in range(500):
        conn.sendall(b"y" * 10)
    conn.shutdown(ssock.SHUT_WR)
    answer = b""
    while chunk := conn.recv(100):
        answer += chunk
    conn.close()
    proc.wait(10)
    assert answer == b"got 5000"


def test_send_after_shutdown_is_epipe(sandbox):
    listener, client, accepted = loopback_pair(sandbox, 9203)
    try:
        client.sendall(b"before")
        client.shutdown(ssock.SHUT_WR)
        with pytest.raises(BrokenPipeError):
            client.send(b"after")
        assert accepted.recv(100) == b"before"
    finally:
        for each in (listener, client, accepted):
            each.close()


def test_blocked_recv_lets_same_socket_send(sandbox):
    listener, client, accepted = loopback_pair(sandbox, 9204)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(client.recv(100)))
    try:
        reader.start()
        time.sleep(0.2)
        client.sendall(b"ping")
        assert accepted.recv(100) == b"ping"
        accepted.sendall(b"pong")
        reader.join(10)
        assert received == [b"pong"]
    finally:
        reader.join(10)
        for each in (listener, client, accepted):
            each.close()


def test_request_response_exchange(sandbox):
    listener, client, accepted = loopback_pair(sandbox, 9205)
    try:
        for index in range(200):
            client.sendall(b"q%d" % index)
            assert accepted.recv(100) == b"q%d" % index
            accepted.sendall(b"a%d" % index)
            assert client.recv(100) == b"a%d" % index
    finally:
        for each in (listener, client, accepted):
            each.close()


def test_send_to_reset_connection_fails_later(sandbox):
    listener, client, accepted = loopback_pair(sandbox, 9206)
    accepted.close()
    listener.close()
    failure = None
    try:
        # The first sends succeed locally. The reset that the closed side
        # sends back surfaces on a later call, as on Linux.
        for _ in range(100):
            try:
                client.send(b"z" * 100)
            except OSError as error:
                failure = error
                break
            time.sleep(0.02)
    finally:
        client.close()
    assert failure is not None
    assert failure.errno in (errno.EPIPE, errno.ECONNRESET)


def test_raw_calls_match_reply_ids(sandbox):
    channel, stub = raw_stub(sandbox)
    metadata = ((SESSION_METADATA, sandbox.client.session),)
    try:
        first = sockets_pb2.CallBatch(calls=[
            calls.make_call(10, "Socket", sockets_pb2.SocketRequest(family=ssock.AF_INET, type=ssock.SOCK_DGRAM)),
            calls.make_call(11, "Close", sockets_pb2.FdRequest(fd=987654)),
        ])
        replies = {}
        stream = stub.Calls(iter([first]), metadata=metadata, timeout=30)
        for batch in stream:
            for reply in batch.replies:
                replies[reply.id] = reply
        assert set(replies) == {10, 11}
        assert replies[10].WhichOneof("reply") == "socket"
        assert replies[10].socket.errno == 0
        assert replies[11].close.errno == errno.EBADF
    finally:
        channel.close()


def test_calls_without_session_are_rejected(sandbox):
    channel, stub = raw_stub(sandbox)
    batch = sockets_pb2.CallBatch(calls=[calls.make_call(1, "Close", sockets_pb2.FdRequest(fd=3))])
    try:
        with pytest.raises(grpc.RpcError) as failure:
            list(stub.Calls(iter([batch]), timeout=30))
        assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        channel.close()


def test_unary_calls_still_served(sandbox):
    reply = sandbox.client.call_unary("Socket", sockets_pb2.SocketRequest(family=ssock.AF_INET, type=ssock.SOCK_STREAM))
    assert reply.errno == 0
    assert sandbox.client.call_unary("Close", sockets_pb2.FdRequest(fd=reply.fd)).errno == 0


def test_small_sends_coalesce(sandbox):
    # 3,000 small sends from one thread cost one Send per round trip to
    # stackd once the first acknowledgement proves the connection alive.
    pieces = [b"%05d;" % index for index in range(3000)]
    proc = start_peer_tool(sandbox.topo.peer, "sink", 9211)
    client = sandbox.client
    conn = stream_sock(sandbox)
    conn.settimeout(30)
    conn.connect((sandbox.topo.peer_ip, 9211))
    before = client.calls.submitted["Send"]
    for piece in pieces:
        assert conn.send(piece) == len(piece)
    sends = client.calls.submitted["Send"] - before
    conn.close()
    length, digest = proc.communicate(timeout=60)[0].split()
    assert int(length) == len(b"".join(pieces))
    assert digest == hashlib.sha256(b"".join(pieces)).hexdigest()
    assert sends < len(pieces) // 4, f"{sends} Send calls for {len(pieces)} sends"


def test_send_window_follows_sndbuf(sandbox):
    listener, client, accepted = loopback_pair(sandbox, 9212)
    try:
        assert client._sendbuf.window == DEFAULT_WINDOW
        client.setsockopt(ssock.SOL_SOCKET, ssock.SO_SNDBUF, 4096)
        # Linux doubles the value; the client's window is what the stack applied.
        applied = client.getsockopt(ssock.SOL_SOCKET, ssock.SO_SNDBUF)
        assert applied == 8192
        assert client._sendbuf.window == applied
        client.setsockopt(ssock.SOL_SOCKET, ssock.SO_RCVBUF, 4096)
        # A read requests no more than the receive buffer's size from stackd.
        assert client._recv_chunk == client.getsockopt(ssock.SOL_SOCKET, ssock.SO_RCVBUF) == 8192

        # The accepting side does not read, so the sender stops once its window,
        # stackd's buffers and the receiver's window are full, and a timeout ends send().
        client.settimeout(0.5)
        total = 0
        with pytest.raises(TimeoutError):
            for _ in range(2000):
                total += client.send(b"w" * 4096)
        assert total < 4 * 1024 * 1024
        received = 0
        while received < total:
            received += len(accepted.recv(1 << 20))
        assert received == total
    finally:
        for each in (listener, client, accepted):
            each.close()


def test_listener_inherits_sndbuf_window(sandbox):
    listener = stream_sock(sandbox)
    listener.setsockopt(ssock.SOL_SOCKET, ssock.SO_SNDBUF, 16384)
    listener.bind(("127.0.0.1", 9213))
    listener.listen(4)
    client = stream_sock(sandbox)
    try:
        client.settimeout(10)
        client.connect(("127.0.0.1", 9213))
        listener.settimeout(10)
        accepted, _ = listener.accept()
        assert accepted._sendbuf.window == 32768
        accepted.close()
    finally:
        listener.close()
        client.close()


def test_accept_batch_close_resets_rest(sandbox):
    listener = stream_sock(sandbox)
    listener.bind(("127.0.0.1", 9214))
    listener.listen(16)
    clients = []
    try:
        for _ in range(6):
            conn = stream_sock(sandbox)
            conn.settimeout(10)
            conn.connect(("127.0.0.1", 9214))
            clients.append(conn)
        listener.settimeout(10)
        first, _ = listener.accept()
        # The other five came with the first Accept and wait in the listener.
        assert listener.pending() == 5
        assert ssock.poll([(listener, ssock.POLLIN)], 0) == [(listener, ssock.POLLIN)]
        second, peer = listener.accept()
        assert peer == clients[1].getsockname()
        clients[1].sendall(b"hello")
        assert second.recv(10) == b"hello"

        # Closing the listener resets the connections accept() never returned, as Linux does.
        listener.close()
        for conn in clients[2:]:
            with pytest.raises(ConnectionResetError):
                conn.recv(10)
        first.close()
        second.close()
    finally:
        listener.close()
        for conn in clients:
            conn.close()


def test_small_reads_share_recv_calls(sandbox):
    # Reads of 1,000 bytes come from the client's receive buffer, which each
    # Recv call refills with up to 256 KiB, so most reads cost no call.
    proc = start_peer_tool(sandbox.topo.peer, "source", 9215, "2000000", "7")
    client = sandbox.client
    conn = stream_sock(sandbox)
    conn.settimeout(30)
    conn.connect((sandbox.topo.peer_ip, 9215))
    before = client.calls.submitted["Recv"]
    digest = hashlib.sha256()
    reads = 0
    while chunk := conn.recv(1000):
        digest.update(chunk)
        reads += 1
    recv_calls = client.calls.submitted["Recv"] - before
    conn.close()
    expected = proc.communicate(timeout=30)[0].split()[-1]
    assert digest.hexdigest() == expected
    assert reads >= 2000
    assert recv_calls < reads // 20, f"{recv_calls} Recv calls for {reads} reads"


EXIT_AFTER_SENDS = """
import sys
from sandnet import socket as ssock
conn = ssock.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
for _ in range(int(sys.argv[3])):
    conn.sendall(b"e" * 1000)
if sys.argv[4] == "close":
    conn.close()
"""


@pytest.mark.parametrize("count,ending", [(1, "close"), (100, "close"), (3000, "close"), (5000, "exit")])
def test_data_sent_before_exit_arrives(sandbox, count, ending):
    # Linux delivers a socket's data after the process ends, closed or not;
    # the client hands sockd its last data and calls before the process exits.
    proc = start_peer_tool(sandbox.topo.peer, "sink", 9216)
    env = {**os.environ, "SANDNET_SOCKD": sandbox.sockd_endpoint}
    subprocess.run([sys.executable, "-c", EXIT_AFTER_SENDS, sandbox.topo.peer_ip, "9216", str(count), ending],
                   env=env, check=True, timeout=60)
    length, digest = proc.communicate(timeout=60)[0].split()
    assert int(length) == 1000 * count
    assert digest == hashlib.sha256(b"e" * 1000 * count).hexdigest()


def test_client_close_flushes_closed_socket(sandbox):
    proc = start_peer_tool(sandbox.topo.peer, "sink", 9217)
    client = Client(sandbox.sockd_endpoint)
    conn = ssock.socket(ssock.AF_INET, ssock.SOCK_STREAM, client=client)
    conn.settimeout(30)
    conn.connect((sandbox.topo.peer_ip, 9217))
    conn.sendall(b"k" * 5000)
    conn.close()
    client.close()
    length, _ = proc.communicate(timeout=60)[0].split()
    assert int(length) == 5000


def test_client_close_flushes_open_socket(sandbox):
    proc = start_peer_tool(sandbox.topo.peer, "sink", 9220)
    client = Client(sandbox.sockd_endpoint)
    conn = ssock.socket(ssock.AF_INET, ssock.SOCK_STREAM, client=client)
    conn.settimeout(30)
    conn.connect((sandbox.topo.peer_ip, 9220))
    conn.sendall(b"o" * 5_000_000)
    client.close()
    length, _ = proc.communicate(timeout=60)[0].split()
    assert int(length) == 5_000_000


FORK_CHILD_EXITS = """
import os, sys
from sandnet import socket as ssock
conn = ssock.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
conn.sendall(b"f" * 1000)
pid = os.fork()
if pid == 0:
    sys.exit(0)
os.waitpid(pid, 0)
conn.close()
"""


def test_forked_child_exit_skips_flush(sandbox):
    # The child shares the parent's channel, so its exit must not flush (and
    # wait for) the parent's session. Only the parent's exit does.
    proc = start_peer_tool(sandbox.topo.peer, "sink", 9221)
    env = {**os.environ, "SANDNET_SOCKD": sandbox.sockd_endpoint}
    run = subprocess.run([sys.executable, "-c", FORK_CHILD_EXITS, sandbox.topo.peer_ip, "9221"],
                         env=env, timeout=60, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "did not confirm" not in run.stderr
    length, _ = proc.communicate(timeout=60)[0].split()
    assert int(length) == 1000


PEER_CONNECT_MANY = """
import socket, sys, time
conns = []
for _ in range(int(sys.argv[3])):
    conn = socket.socket()
    conn.setblocking(False)
    conn.connect_ex((sys.argv[1], int(sys.argv[2])))
    conns.append(conn)
time.sleep(float(sys.argv[4]))
"""


def test_threaded_accept_each_gets_one(sandbox):
    # Four threads wait in accept() before the peer opens four connections
    # at once. Each thread gets one, as on Linux, although one Accept call
    # may bring several connections into the listener's local queue.
    listener = stream_sock(sandbox)
    listener.bind(("0.0.0.0", 9218))
    listener.listen(16)
    listener.settimeout(8)
    accepted, failures = [], []

    def worker() -> None:
        try:
            accepted.append(listener.accept()[0])
        except OSError as error:
            failures.append(error)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    peer = sandbox.topo.peer.popen(sys.executable, "-c", PEER_CONNECT_MANY, sandbox.topo.sandbox_ip, "9218", "4",
                                   "10")
    try:
        for thread in threads:
            thread.join(30)
        assert failures == []
        assert len(accepted) == 4
        assert listener.pending() == 0
    finally:
        peer.kill()
        peer.wait()
        for conn in accepted:
            conn.close()
        listener.close()


def test_nonblocking_accept_raises_eagain(sandbox):
    listener = stream_sock(sandbox)
    listener.bind(("127.0.0.1", 9219))
    listener.listen(4)
    listener.setblocking(False)
    try:
        with pytest.raises(BlockingIOError):
            listener.accept()
        listener.settimeout(0.05)
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()


def test_listener_shutdown_accept_einval(sandbox):
    listener = stream_sock(sandbox)
    listener.bind(("127.0.0.1", 9222))
    listener.listen(4)
    listener.settimeout(10)
    failures = []

    def waiter() -> None:
        try:
            listener.accept()
        except OSError as error:
            failures.append(error)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.3)
    try:
        # Linux: shutdown(SHUT_RD) stops a listener, and a blocked accept() gets EINVAL.
        listener.shutdown(ssock.SHUT_RD)
        thread.join(10)
        assert len(failures) == 1
        assert failures[0].errno == errno.EINVAL
        # The descriptor stays open and can listen again.
        listener.listen(4)
    finally:
        listener.close()


def test_listener_shutdown_resets_queued(sandbox):
    listener = stream_sock(sandbox)
    listener.bind(("127.0.0.1", 9223))
    listener.listen(16)
    listener.settimeout(10)
    clients = []
    try:
        for _ in range(5):
            conn = stream_sock(sandbox)
            conn.settimeout(10)
            conn.connect(("127.0.0.1", 9223))
            clients.append(conn)
        first, _ = listener.accept()
        assert listener.pending() == 4
        listener.shutdown(ssock.SHUT_RD)
        # As on Linux: accept() now fails with EINVAL, and the connections
        # that accept() never returned are reset.
        with pytest.raises(OSError) as raised:
            listener.accept()
        assert raised.value.errno == errno.EINVAL
        for conn in clients[1:]:
            with pytest.raises(ConnectionResetError):
                conn.recv(10)
        first.close()
    finally:
        listener.close()
        for conn in clients:
            conn.close()


def test_send_after_client_close_fails(sandbox):
    proc = start_peer_tool(sandbox.topo.peer, "sink", 9224)
    client = Client(sandbox.sockd_endpoint)
    conn = ssock.socket(ssock.AF_INET, ssock.SOCK_STREAM, client=client)
    conn.settimeout(30)
    conn.connect((sandbox.topo.peer_ip, 9224))
    conn.sendall(b"a" * 1000)
    client.close()
    # The session is gone: a send must fail, not report data queued.
    with pytest.raises(OSError):
        conn.send(b"x" * 5000)
    length, _ = proc.communicate(timeout=60)[0].split()
    assert int(length) == 1000
