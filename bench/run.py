"""`make bench`: every workload against sandnet and against the Linux kernel
in the same namespace layout; prints a table and writes bench/out/latest.json.

Run as root from the repository root: ``.venv/bin/python bench/run.py``.
The layout is tests/netlab.py's topology: a sandbox and a peer namespace
joined by a veth. The kernel baseline runs the workload in the sandbox
namespace on its own veth. The sandnet runs start linkd on that veth
(which takes over its addresses), stackd and sockd, and run the same
workload code through sandnet.socket. Each workload is bounded in time, so
a slow stack reports a lower figure instead of running for long.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

import netlab  # noqa: E402

DRIVER = os.path.join(REPO, "bench", "driver.py")
PEER = os.path.join(REPO, "bench", "peer.py")
OUT_DIR = os.path.join(REPO, "bench", "out")
BASE_PORT = 7000            # sink, source, echo (TCP and UDP), hold
ACCEPT_PORT = 7100
BULK_BYTES = 200_000_000
BULK_SECONDS = 30.0
SHORT_SECONDS = 5.0
PARALLEL_LEVELS = (1, 4, 16, 64)
CONCURRENT_LEVELS = (1000, 5000, 10000)
CONCURRENT_SECONDS = 120.0
PING_COUNT = 50
# Higher is better for these units; for the rest (latency, memory) lower is better.
HIGHER_IS_BETTER = {"MB/s", "transactions/s", "connections/s"}


class Bench:
    """Runs workloads on one topology and collects rows."""

    def __init__(self, topo: netlab.Topology, quick: bool):
        self.topo = topo
        self.quick = quick
        self.rows: dict[tuple[str, str], dict] = {}
        self.sockd_endpoint: str | None = None

    def driver(self, impl: str, *argv, stdin=None) -> subprocess.Popen:
        env = dict(os.environ)
        if impl == "sandnet":
            env["SANDNET_SOCKD"] = self.sockd_endpoint
        return self.topo.sandbox.popen(sys.executable, DRIVER, "--impl", impl, *map(str, argv),
                                       stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, env=env)

    def run_driver(self, impl: str, *argv, timeout: float) -> dict:
        proc = self.driver(impl, *argv)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            return {"value": None, "error": f"timed out after {timeout:.0f} s"}
        lines = out.strip().splitlines()
        if proc.returncode != 0 or not lines:
            return {"value": None, "error": (err.strip().splitlines() or ["no output"])[-1]}
        return json.loads(lines[-1])

    def record(self, impl: str, name: str, unit: str, params: dict, result: dict) -> None:
        key = (name, json.dumps(params, sort_keys=True))
        row = self.rows.setdefault(key, {"name": name, "unit": unit, "sandnet": None, "kernel": None,
                                         "ratio": None, "params": params, "detail": {}})
        row[impl] = None if result.get("value") is None else round(result["value"], 3)
        row["detail"][impl] = {k: v for k, v in result.items() if k != "value"}
        print(f"  {impl:8} {name:22} {json.dumps(params, sort_keys=True):40} {row[impl]} {unit}"
              f"{'  ' + result['error'] if result.get('error') else ''}", flush=True)

    # Workloads.

    def bulk(self, impl: str, gso: bool) -> None:
        peer_ip = self.topo.peer_ip
        seconds = 5.0 if self.quick else BULK_SECONDS
        for name, workload, port in (("tcp_bulk_to_peer", "bulk_to", BASE_PORT),
                                     ("tcp_bulk_from_peer", "bulk_from", BASE_PORT + 1)):
            params = {"bytes": BULK_BYTES, "time_limit_s": seconds, "gso": gso}
            result = self.run_driver(impl, workload, "--host", peer_ip, "--port", port, "--bytes", BULK_BYTES,
                                     "--seconds", seconds, timeout=seconds + 90)
            self.record(impl, name, "MB/s", params, result)

    def parallel(self, impl: str) -> None:
        for connections in PARALLEL_LEVELS:
            params = {"connections": connections, "time_limit_s": SHORT_SECONDS}
            result = self.run_driver(impl, "parallel", "--host", self.topo.peer_ip, "--port", BASE_PORT,
                                     "--connections", connections, "--seconds", SHORT_SECONDS,
                                     timeout=SHORT_SECONDS + 120)
            self.record(impl, "tcp_bulk_parallel", "MB/s", params, result)

    def request_response(self, impl: str) -> None:
        for name, workload in (("tcp_rr", "tcp_rr"), ("udp_rr", "udp_rr")):
            params = {"request_bytes": 1 if workload == "tcp_rr" else 64, "time_limit_s": SHORT_SECONDS}
            result = self.run_driver(impl, workload, "--host", self.topo.peer_ip, "--port", BASE_PORT + 2,
                                     "--seconds", SHORT_SECONDS, timeout=SHORT_SECONDS + 60)
            self.record(impl, name, "transactions/s", params, result)

    def ping(self, impl: str) -> None:
        result = self.run_driver(impl, "ping", "--host", self.topo.peer_ip, "--count", PING_COUNT, timeout=120)
        self.record(impl, "ping_rtt", "ms (median)", {"count": PING_COUNT}, result)

    def accept(self, impl: str) -> None:
        """The sandbox listens; the peer's kernel opens and closes connections as fast as it can."""
        params = {"time_limit_s": SHORT_SECONDS, "peer_tasks": 16}
        listen_ip = self.topo.sandbox_ip
        proc = self.driver(impl, "accept", "--port", ACCEPT_PORT, "--seconds", SHORT_SECONDS, stdin=subprocess.PIPE)
        connector = None
        try:
            line = proc.stdout.readline().strip()
            if line != "ready":
                self.record(impl, "tcp_accept", "connections/s", params,
                            {"value": None, "error": f"listener did not start: {proc.stderr.read()[-300:]}"})
                return
            connector = self.topo.peer.popen(sys.executable, PEER, "connect", listen_ip, ACCEPT_PORT,
                                             SHORT_SECONDS + 3, 16, stdout=subprocess.PIPE, text=True)
            time.sleep(0.5)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            out, err = proc.communicate(timeout=SHORT_SECONDS + 60)
            result = json.loads(out.strip().splitlines()[-1]) if proc.returncode == 0 else \
                {"value": None, "error": err.strip()[-300:]}
        finally:
            proc.kill()
            if connector is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    connector.communicate(timeout=SHORT_SECONDS + 30)
                connector.kill()
        self.record(impl, "tcp_accept", "connections/s", params, result)

    def concurrent(self, impl: str, services: dict[str, netlab.ServiceProcess]) -> None:
        """Open idle connections to the peer level by level; at each level read the services' RSS."""
        levels = CONCURRENT_LEVELS[:1] if self.quick else CONCURRENT_LEVELS
        proc = self.driver(impl, "concurrent", "--host", self.topo.peer_ip, "--port", BASE_PORT + 3,
                           "--levels", ",".join(map(str, levels)), "--seconds", CONCURRENT_SECONDS,
                           stdin=subprocess.PIPE)
        try:
            for level in levels:
                line = proc.stdout.readline().split()
                if len(line) != 3 or line[0] != "level":
                    self.record(impl, "tcp_concurrent", "MiB RSS", {"connections": level},
                                {"value": None, "error": f"driver stopped: {proc.stderr.read()[-300:]}"})
                    return
                reached = int(line[2])
                result = {"value": None, "reached": reached}
                if services:
                    rss = {name: rss_mib(service.pid) for name, service in services.items()}
                    result.update(value=sum(rss.values()), rss_mib=rss)
                else:
                    result["error"] = "the kernel keeps no per-process figure to compare"
                if reached < level:
                    result["error"] = f"reached {reached} of {level} connections within {CONCURRENT_SECONDS:.0f} s"
                self.record(impl, "tcp_concurrent", "MiB RSS", {"connections": level}, result)
                proc.stdin.write("next\n")
                proc.stdin.flush()
                if reached < level:
                    break
            proc.communicate(timeout=120)
        finally:
            proc.kill()

    def table(self) -> list[dict]:
        rows = []
        for row in self.rows.values():
            if row["sandnet"] is not None and row["kernel"]:
                row["ratio"] = round(row["sandnet"] / row["kernel"], 3)
            rows.append(row)
        return rows


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def set_offloads(ns: netlab.Netns, device: str, enabled: bool) -> None:
    """Turn TSO and GSO of a device on or off through ethtool's ioctl (pyroute2).

    GRO is left alone: it is off on a new veth, so received frames are the
    sender's frames.
    """
    state = "True" if enabled else "False"
    ns.python(
        "from pyroute2.ethtool import Ethtool\n"
        "e = Ethtool()\n"
        f"f = e.get_features({device!r})\n"
        "for name in ('tx-tcp-segmentation', 'tx-tcp6-segmentation', 'tx-generic-segmentation'):\n"
        f"    f.features[name].enable = {state}\n"
        f"e.set_features({device!r}, f)\n"
    )


@contextlib.contextmanager
def sandnet_services(topo: netlab.Topology, workdir: str, gso: bool):
    link_path, stack_path, sockd_path = (os.path.join(workdir, name) for name in ("linkd.sock", "stackd.sock", "sockd.sock"))
    with netlab.start_linkd(topo.sandbox, f"veth:{topo.sandbox_if}", link_path, gso=gso) as linkd, \
            netlab.start_stackd(link_path, stack_path) as stackd, \
            netlab.start_sockd(stack_path, sockd_path) as sockd:
        yield {"stackd": stackd, "sockd": sockd, "linkd": linkd}, f"unix:{sockd_path}"


def machine() -> dict:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        match = re.search(r"model name\s*:\s*(.*)", cpuinfo.read())
        cpu = match.group(1) if match else ""
    return {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}


def print_table(rows: list[dict]) -> None:
    print()
    header = f"{'workload':22} {'params':44} {'unit':16} {'sandnet':>10} {'kernel':>10} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        params = ",".join(f"{k}={v}" for k, v in row["params"].items())
        cells = ["-" if row[key] is None else f"{row[key]:g}" for key in ("sandnet", "kernel", "ratio")]
        print(f"{row['name']:22} {params:44} {row['unit']:16} {cells[0]:>10} {cells[1]:>10} {cells[2]:>7}")


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark sandnet against the Linux kernel.")
    parser.add_argument("--quick", action="store_true", help="5 s bulk runs and 1,000 concurrent connections only")
    parser.add_argument("--only", default=None, help="comma-separated workload groups to run: bulk, gso_off, "
                        "parallel, rr, ping, accept, concurrent (default: all)")
    args = parser.parse_args()
    all_groups = ("bulk", "gso_off", "parallel", "rr", "ping", "accept", "concurrent")
    groups = set(args.only.split(",")) if args.only is not None else set(all_groups)
    unknown = sorted(groups - set(all_groups))
    if unknown == [""]:
        parser.error(f"--only: no workload group given; choose from {', '.join(all_groups)}")
    if unknown:
        parser.error(f"--only: unknown workload group {', '.join(unknown)}; choose from {', '.join(all_groups)}")
    netlab.require_root()
    started = time.monotonic()

    with netlab.topology() as topo, tempfile.TemporaryDirectory(prefix="sandnet-bench-") as workdir:
        bench = Bench(topo, args.quick)
        topo.sandbox.run("sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
        peer = topo.peer.popen(sys.executable, PEER, "serve", BASE_PORT, stdout=subprocess.PIPE, text=True)
        try:
            if peer.stdout.readline().strip() != "ready":
                raise SystemExit("bench: the peer's servers did not start")

            print("kernel, offloads on:", flush=True)
            run_groups(bench, "kernel", groups, gso=True, services={})
            if "gso_off" in groups:
                # GSO off means MTU-sized frames on the veth both ways, so the
                # peer's segmentation offloads go off too: veth passes a peer's
                # 64 KiB TSO frame across whole otherwise.
                print("kernel, offloads off on both veth ends:", flush=True)
                set_offloads(topo.sandbox, topo.sandbox_if, False)
                set_offloads(topo.peer, topo.peer_if, False)
                bench.bulk("kernel", gso=False)
                set_offloads(topo.sandbox, topo.sandbox_if, True)
                set_offloads(topo.peer, topo.peer_if, True)

            print("sandnet, --gso=true:", flush=True)
            with sandnet_services(topo, workdir, gso=True) as (services, endpoint):
                bench.sockd_endpoint = endpoint
                run_groups(bench, "sandnet", groups, gso=True, services=services)
            if "gso_off" in groups:
                print("sandnet, --gso=false, peer offloads off:", flush=True)
                set_offloads(topo.peer, topo.peer_if, False)
                with sandnet_services(topo, workdir, gso=False) as (services, endpoint):
                    bench.sockd_endpoint = endpoint
                    bench.bulk("sandnet", gso=False)
        finally:
            peer.kill()
            peer.wait()

    rows = bench.table()
    print_table(rows)
    os.makedirs(OUT_DIR, exist_ok=True)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "command": " ".join(sys.argv), "seconds": round(time.monotonic() - started),
              "results": rows}
    with open(os.path.join(OUT_DIR, "latest.json"), "w") as out:
        json.dump(report, out, indent=2)
    print(f"\nwrote {os.path.relpath(os.path.join(OUT_DIR, 'latest.json'), REPO)} after {report['seconds']} s")
    return 0


def run_groups(bench: Bench, impl: str, groups: set[str], gso: bool, services: dict) -> None:
    if "bulk" in groups:
        bench.bulk(impl, gso)
    if "parallel" in groups:
        bench.parallel(impl)
    if "rr" in groups:
        bench.request_response(impl)
    if "ping" in groups:
        bench.ping(impl)
    if "accept" in groups:
        bench.accept(impl)
    if "concurrent" in groups:
        bench.concurrent(impl, {name: services[name] for name in ("stackd", "sockd")} if services else {})


if __name__ == "__main__":
    sys.exit(main())
