"""Restarts of a dependency: health goes NOT_SERVING, the client reconnects, and TCP survives a linkd restart."""

import errno
import hashlib
import os
import random
import subprocess
import sys
import tempfile
import time

import pytest
from grpc_health.v1 import health_pb2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import netlab  # noqa: E402
from sandbox_fixture import running_sandbox  # noqa: E402

from sandnet import socket as snsocket  # noqa: E402
from sandnet.client import Client  # noqa: E402

pytestmark = pytest.mark.netns

PEER_TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_tools.py")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SINK_PORT = 9100
TRANSFER_BYTES = 4 * 1024 * 1024
CHUNK_BYTES = 64 * 1024


def wait_for_health(socket_path: str, status: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while netlab.health_status(socket_path) != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"{socket_path} did not report {health_pb2.HealthCheckResponse.ServingStatus.Name(status)} "
                                 f"within {timeout} s (now {netlab.health_status(socket_path)})")
        time.sleep(0.1)


@pytest.mark.parametrize("stop", ["sigkill", "sigterm-keep"])
def test_transfer_survives_linkd_restart(stop):
    # With --on-exit keep, a clean stop leaves the addresses off the kernel's
    # interface, and the next linkd reads them from the state file.
    keep = ("--on-exit", "keep", "--state-dir", "{workdir}/state")
    with running_sandbox(linkd_extra=keep if stop == "sigterm-keep" else ()) as box:
        topo = box.topo
        link_path = os.path.join(box.workdir, "linkd.sock")
        stack_path = os.path.join(box.workdir, "stackd.sock")
        sink = topo.peer.popen(sys.executable, PEER_TOOLS, "sink", str(SINK_PORT), stdout=subprocess.PIPE, text=True)
        replacement = None
        try:
            assert sink.stdout.readline().strip() == "ready"
            data = random.Random(6).randbytes(TRANSFER_BYTES)
            conn = snsocket.create_connection((topo.peer_ip, SINK_PORT), timeout=60, client=box.client)
            with conn:
                conn.sendall(data[:TRANSFER_BYTES // 4])

                # Either way the addresses stay off the kernel's interface, so the
                # kernel cannot reset the connection while linkd is away.
                if stop == "sigkill":
                    box.linkd.kill()
                    extra = []
                else:
                    assert box.linkd.stop() == 0
                    extra = [arg.replace("{workdir}", box.workdir) for arg in keep]
                kernel_view = topo.sandbox.run("ip", "-4", "addr", "show", "dev", topo.sandbox_if).stdout
                assert topo.sandbox_ip not in kernel_view
                wait_for_health(stack_path, NOT_SERVING)
                replacement = netlab.start_linkd(topo.sandbox, f"veth:{topo.sandbox_if}", link_path, extra=extra)
                wait_for_health(stack_path, SERVING)

                for offset in range(TRANSFER_BYTES // 4, TRANSFER_BYTES, CHUNK_BYTES):
                    conn.sendall(data[offset:offset + CHUNK_BYTES])
                conn.shutdown(snsocket.SHUT_WR)
            length, digest = sink.communicate(timeout=120)[0].split()
        finally:
            if sink.poll() is None:
                sink.kill()
                sink.wait()
            if replacement is not None:
                replacement.stop()
        assert int(length) == TRANSFER_BYTES, box.logs()
        assert digest == hashlib.sha256(data).hexdigest()
        assert "frame stream to linkd" in box.stackd.log_text()
        if stop == "sigterm-keep":
            assert "from the previous linkd" in replacement.log_text()


def test_sockd_health_follows_stackd():
    with tempfile.TemporaryDirectory(prefix="sandnet-restart-") as workdir:
        stack_path = os.path.join(workdir, "stackd.sock")
        sockd_path = os.path.join(workdir, "sockd.sock")
        stackd_argv = [os.path.join(netlab.BIN_DIR, "sandnet-stackd"), "--network", "none",
                       "--listen", f"unix:{stack_path}"]
        stackd = netlab.ServiceProcess(stackd_argv, stack_path)
        with netlab.start_sockd(stack_path, sockd_path, network="none") as sockd:
            try:
                stackd.stop()
                wait_for_health(sockd_path, NOT_SERVING)
                with Client(f"unix:{sockd_path}") as client:
                    with pytest.raises(OSError) as raised:
                        snsocket.socket(client=client)
                    assert raised.value.errno == errno.ENETDOWN

                stackd = netlab.ServiceProcess(stackd_argv, stack_path)
                wait_for_health(sockd_path, SERVING)
                with Client(f"unix:{sockd_path}") as client, snsocket.socket(client=client) as sock:
                    sock.bind(("127.0.0.1", 0))
            finally:
                stackd.stop()
        assert "retrying the stackd session" in sockd.log_text()
