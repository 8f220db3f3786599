"""sandnet's main job on real devices, step by step (run as root: `make demo`).

Builds a sandbox namespace and a peer namespace joined by a veth, starts the
peer's HTTP and UDP echo servers, starts linkd, stackd and sockd on the
sandbox's veth, then runs a workload in a third namespace that has only its
own loopback, so every packet it sends must go through sockd. Prints what
each step showed, removes everything it made, and exits 1 if a step failed.
"""

import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
import netlab  # noqa: E402

PYTHON = sys.executable
CLI = os.path.join(os.path.dirname(PYTHON), "sandnet")
WORKLOAD = os.path.join(HERE, "demo_workload.py")
PEER_TOOLS = os.path.join(os.path.dirname(HERE), "tests", "integration", "peer_tools.py")
HOST_LOOPBACK_PORT = 9201


class Demo:
    def __init__(self, topo: netlab.Topology, workload: netlab.Netns, sockd: str):
        self.topo = topo
        self.workload = workload
        self.env = dict(os.environ, SANDNET_SOCKD=f"unix:{sockd}")
        self.results: list[tuple[str, bool]] = []

    def step(self, title: str, check) -> None:
        print(f"\n== {title}", flush=True)
        try:
            ok = bool(check())
        except Exception as error:  # a demo step reports every failure and goes on
            print(f"   error: {error}")
            ok = False
        print(f"-- {'ok' if ok else 'FAILED'}: {title}", flush=True)
        self.results.append((title, ok))

    def in_workload(self, *argv, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(self.workload.command(*argv), capture_output=True, text=True,
                                timeout=timeout, env=self.env)
        shown = (result.stdout + result.stderr).rstrip()
        print("   " + shown.replace("\n", "\n   ") if shown else "   (no output)")
        return result


def wait_ready(proc: subprocess.Popen, word: str) -> None:
    line = proc.stdout.readline()
    if word not in line:
        raise RuntimeError(f"process did not report {word!r}: {line!r}")


def run() -> bool:
    netlab.require_root()
    demo = None
    ok = False
    with netlab.topology() as topo, netlab.Netns() as workload, \
            tempfile.TemporaryDirectory(prefix="sandnet-demo-") as workdir:
        print(f"sandbox namespace {topo.sandbox.name}: {topo.sandbox_if} {topo.sandbox_ip}/24")
        print(f"peer namespace {topo.peer.name}: {topo.peer_if} {topo.peer_ip}/24")
        print(f"workload namespace {workload.name}: loopback only")
        workload.run("ip", "link", "set", "lo", "up")

        site = os.path.join(workdir, "site")
        os.mkdir(site)
        with open(os.path.join(site, "hello.txt"), "w") as page:
            page.write("hello from the Linux peer\n")
        peer_http = topo.peer.popen(PYTHON, "-m", "http.server", "8000", "--bind", topo.peer_ip,
                                    "--directory", site, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peer_udp = topo.peer.popen(PYTHON, PEER_TOOLS, "udp-echo", "7000", stdout=subprocess.PIPE, text=True)
        host_listener = topo.sandbox.popen(
            PYTHON, "-c", "import socket,time;s=socket.socket();s.bind(('127.0.0.1',%d));s.listen();"
                          "print('ready',flush=True);time.sleep(600)" % HOST_LOOPBACK_PORT,
            stdout=subprocess.PIPE, text=True)
        paths = {name: os.path.join(workdir, f"{name}.sock") for name in ("linkd", "stackd", "sockd")}
        try:
            wait_ready(peer_udp, "ready")
            wait_ready(host_listener, "ready")
            with netlab.start_linkd(topo.sandbox, f"veth:{topo.sandbox_if}", paths["linkd"]) as linkd, \
                    netlab.start_stackd(paths["linkd"], paths["stackd"]) as stackd, \
                    netlab.start_sockd(paths["stackd"], paths["sockd"]) as sockd:
                print("linkd, stackd and sockd are serving")
                demo = Demo(topo, workload, paths["sockd"])
                steps(demo)
                ok = all(passed for _, passed in demo.results)
                if not ok:
                    for name, proc in (("linkd", linkd), ("stackd", stackd), ("sockd", sockd)):
                        print(f"\n--- {name} log ---\n{proc.log_text()}")
        finally:
            for proc in (peer_http, peer_udp, host_listener):
                proc.kill()
                proc.wait()

    print("\nSummary:")
    for title, passed in demo.results if demo else []:
        print(f"  {'ok    ' if passed else 'FAILED'}  {title}")
    print("everything made by the demo has been removed")
    return ok


def steps(demo: Demo) -> None:
    topo = demo.topo

    def ip_addr():
        result = demo.in_workload(CLI, "ip", "addr")
        return result.returncode == 0 and f"inet {topo.sandbox_ip}/24" in result.stdout \
            and "inet 127.0.0.1/8" in result.stdout
    demo.step("sandnet ip addr shows the veth's address and loopback inside the stack", ip_addr)

    def get():
        for _ in range(20):
            result = demo.in_workload(CLI, "get", f"http://{topo.peer_ip}:8000/hello.txt")
            if result.returncode == 0:
                return result.stdout == "hello from the Linux peer\n"
            time.sleep(0.25)
        return False
    demo.step("sandnet get fetches a file from the peer's HTTP server", get)

    def curl():
        server = subprocess.Popen(demo.workload.command(PYTHON, WORKLOAD, "serve-http", "8080"),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=demo.env)
        try:
            wait_ready(server, "listening")
            result = topo.peer.run("curl", "-sS", "--max-time", "20", f"http://{topo.sandbox_ip}:8080/", check=False)
            print("   peer curl: " + (result.stdout + result.stderr).strip())
            print("   workload: " + server.communicate(timeout=20)[0].strip())
            return result.returncode == 0 and "served from inside the sandbox" in result.stdout
        finally:
            server.kill()
            server.wait()
    demo.step("the peer's curl fetches a page from an HTTP server inside the sandbox", curl)

    def ping():
        result = topo.peer.run("ping", "-c", "3", "-i", "0.2", "-W", "2", topo.sandbox_ip, check=False)
        print("   " + result.stdout.strip().replace("\n", "\n   "))
        return result.returncode == 0
    demo.step("the peer's ping gets answers from the stack", ping)

    def sandnet_ping():
        return demo.in_workload(CLI, "ping", "-c", "2", topo.peer_ip).returncode == 0
    demo.step("sandnet ping reaches the peer", sandnet_ping)

    def udp():
        return demo.in_workload(PYTHON, WORKLOAD, "udp-round-trip", topo.peer_ip, "7000").returncode == 0
    demo.step("a UDP round trip to the peer's echo server", udp)

    def loopback():
        return demo.in_workload(PYTHON, WORKLOAD, "loopback", "9200", str(HOST_LOOPBACK_PORT)).returncode == 0
    demo.step("127.0.0.1 reaches a sandbox listener; a host-loopback listener stays unreachable", loopback)


if __name__ == "__main__":
    try:
        sys.exit(0 if run() else 1)
    except netlab.NetlabError as error:
        sys.exit(f"demo: {error}")
