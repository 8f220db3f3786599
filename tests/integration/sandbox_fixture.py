"""A running sandbox for integration tests: a sandbox and a peer namespace
joined by a veth, with linkd, stackd and sockd on the sandbox's side and a
client session to sockd."""

import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import netlab  # noqa: E402

from sandnet.client import Client  # noqa: E402

PEER_TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_tools.py")


def start_peer_tool(peer: netlab.Netns, *args) -> subprocess.Popen:
    """Start a peer_tools.py server in ``peer`` and wait for its "ready" line."""
    proc = peer.popen(sys.executable, PEER_TOOLS, *map(str, args),
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise AssertionError(f"peer tool {args} did not start: {line!r} {proc.stderr.read()}")
    return proc


@dataclasses.dataclass
class Sandbox:
    topo: netlab.Topology
    workdir: str
    linkd: netlab.ServiceProcess
    stackd: netlab.ServiceProcess
    sockd: netlab.ServiceProcess
    client: Client

    @property
    def sockd_endpoint(self) -> str:
        return f"unix:{self.workdir}/sockd.sock"

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{proc.log_text()}" for name, proc in
                         (("linkd", self.linkd), ("stackd", self.stackd), ("sockd", self.sockd)))


@contextlib.contextmanager
def running_sandbox(gso: bool = True, linkd_extra: tuple[str, ...] = ()) -> Iterator[Sandbox]:
    """Start the three services on a fresh topology; stop and remove everything on exit."""
    with netlab.topology() as topo, tempfile.TemporaryDirectory(prefix="sandnet-") as workdir:
        link_path, stack_path, sockd_path = (os.path.join(workdir, n) for n in ("linkd.sock", "stackd.sock", "sockd.sock"))
        extra = [arg.replace("{workdir}", workdir) for arg in linkd_extra]
        with netlab.start_linkd(topo.sandbox, f"veth:{topo.sandbox_if}", link_path, gso=gso, extra=extra) as linkd, \
                netlab.start_stackd(link_path, stack_path) as stackd, \
                netlab.start_sockd(stack_path, sockd_path) as sockd:
            client = Client(f"unix:{sockd_path}")
            try:
                yield Sandbox(topo, workdir, linkd, stackd, sockd, client)
            finally:
                client.close()
