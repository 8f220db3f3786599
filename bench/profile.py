"""Profile the services during one bench workload: CPU seconds per process
and the top cProfile entries of each service.

    .venv/bin/python bench/profile.py [--workload bulk_to|bulk_from|tcp_rr|accept] [--gso true|false|software]

Run as root from the repository root. The services run under cProfile, so
they are slower than in `make bench`; the profile shows where time goes,
not the speed. docs/performance.md records what it showed.
"""

import argparse
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

import netlab  # noqa: E402

DRIVER = os.path.join(REPO, "bench", "driver.py")
PEER = os.path.join(REPO, "bench", "peer.py")
BASE_PORT = 7000
ACCEPT_PORT = 7100
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def profiled(name: str, argv: list[str], listen_path: str, out_dir: str, ns=None,
             enabled: bool = True) -> netlab.ServiceProcess:
    """Start service ``name``, under cProfile writing OUT_DIR/NAME.prof if ``enabled``."""
    program = os.path.join(netlab.BIN_DIR, f"sandnet-{name}")
    command = [program, *argv]
    if enabled:
        command = [sys.executable, "-m", "cProfile", "-o", os.path.join(out_dir, f"{name}.prof"), *command]
    return netlab.ServiceProcess(command, listen_path, ns)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="bulk_to", choices=("bulk_to", "bulk_from", "tcp_rr", "accept"))
    parser.add_argument("--gso", default="true", choices=("true", "false", "software"))
    parser.add_argument("--seconds", type=float, default=8.0, help="workload duration in seconds")
    parser.add_argument("--top", type=int, default=25, help="profile entries to print per service")
    parser.add_argument("--cpu-only", action="store_true", help="run without cProfile and report CPU seconds only")
    args = parser.parse_args()
    netlab.require_root()

    with netlab.topology() as topo, tempfile.TemporaryDirectory(prefix="sandnet-prof-") as tmp:
        link, stack, sockd = (os.path.join(tmp, n) for n in ("linkd.sock", "stackd.sock", "sockd.sock"))
        peer = topo.peer.popen(sys.executable, PEER, "serve", BASE_PORT, stdout=subprocess.PIPE, text=True)
        services = {}
        try:
            assert peer.stdout.readline().strip() == "ready"
            services["linkd"] = profiled("linkd", ["--device", f"veth:{topo.sandbox_if}", "--listen", f"unix:{link}",
                                                   f"--gso={args.gso}"], link, tmp, topo.sandbox, not args.cpu_only)
            services["stackd"] = profiled("stackd", ["--link", f"unix:{link}", "--listen", f"unix:{stack}"], stack, tmp,
                                          enabled=not args.cpu_only)
            services["sockd"] = profiled("sockd", ["--stack", f"unix:{stack}", "--listen", f"unix:{sockd}",
                                                   "--network", "sandbox"], sockd, tmp, enabled=not args.cpu_only)
            port = {"bulk_to": BASE_PORT, "bulk_from": BASE_PORT + 1, "tcp_rr": BASE_PORT + 2,
                    "accept": ACCEPT_PORT}[args.workload]
            before = {name: cpu_seconds(service.pid) for name, service in services.items()}
            start = time.monotonic()
            driver = subprocess.Popen(
                [sys.executable, DRIVER, "--impl", "sandnet", args.workload, "--host", topo.peer_ip, "--port",
                 str(port), "--seconds", str(args.seconds)],
                env={**os.environ, "SANDNET_SOCKD": f"unix:{sockd}"}, stdout=subprocess.PIPE, text=True,
                stdin=subprocess.PIPE if args.workload == "accept" else None)
            connector = None
            if args.workload == "accept":
                # As bench/run.py does: 16 peer tasks connect to the sandbox listener.
                assert driver.stdout.readline().strip() == "ready"
                connector = topo.peer.popen(sys.executable, PEER, "connect", topo.sandbox_ip, ACCEPT_PORT,
                                            args.seconds + 3, 16, stdout=subprocess.DEVNULL)
                time.sleep(0.5)
                driver.stdin.write("go\n")
                driver.stdin.flush()
            out, _ = driver.communicate(timeout=args.seconds + 120)
            if connector is not None:
                connector.wait(timeout=60)
            wall = time.monotonic() - start
            driver_cpu = os.times().children_user + os.times().children_system
            after = {name: cpu_seconds(service.pid) for name, service in services.items()}
            print(f"workload {args.workload} --gso={args.gso}: {out.strip()}")
            print(f"wall {wall:.1f} s; CPU seconds: " + ", ".join(
                f"{name} {after[name] - before[name]:.1f}" for name in services) + f", driver {driver_cpu:.1f}")
        finally:
            for service in reversed(list(services.values())):
                service.stop()
            peer.kill()

        for name in services:
            path = os.path.join(tmp, f"{name}.prof")
            if args.cpu_only:
                break
            if not os.path.exists(path):
                print(f"--- {name}: no profile written")
                continue
            text = io.StringIO()
            pstats.Stats(path, stream=text).sort_stats("tottime").print_stats(args.top)
            print(f"--- {name} (sorted by own time)")
            print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[:6000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
