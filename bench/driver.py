"""One `make bench` workload on the sandbox side, with the kernel's sockets or sandnet's.

    driver.py --impl kernel|sandnet WORKLOAD [ARGS...]

With ``--impl sandnet`` the workload uses ``sandnet.socket`` through the
sockd endpoint in SANDNET_SOCKD; with ``--impl kernel`` it uses Python's
socket module in the sandbox namespace. The code path is otherwise the
same, so the two results differ only by the stack underneath. The result
is one JSON object on the last line of stdout. bench/peer.py describes the
peer's protocols.
"""

import argparse
import json
import resource
import socket as kernel_socket
import statistics
import struct
import sys
import threading
import time

from sandnet.cli import icmp_checksum

CHUNK = 1 << 20
PAYLOAD = bytes(CHUNK)


def emit(result: dict) -> None:
    print(json.dumps(result), flush=True)


def bulk_to(sock_mod, host: str, port: int, nbytes: int, seconds: float) -> dict:
    """Send up to ``nbytes`` (stopping at ``seconds``) and wait for the peer's byte count."""
    conn = sock_mod.create_connection((host, port), timeout=seconds + 60)
    start = time.monotonic()
    deadline = start + seconds
    view = memoryview(PAYLOAD)
    sent = 0
    while sent < nbytes and time.monotonic() < deadline:
        size = min(CHUNK, nbytes - sent)
        conn.sendall(view[:size])
        sent += size
    conn.shutdown(sock_mod.SHUT_WR)
    reply = b""
    while chunk := conn.recv(64):
        reply += chunk
    elapsed = time.monotonic() - start
    conn.close()
    return {"bytes": int(reply or 0), "sent": sent, "seconds": elapsed}


def bulk_from(sock_mod, host: str, port: int, nbytes: int, seconds: float) -> dict:
    """Ask the peer for ``nbytes`` and read them, stopping at ``seconds``."""
    conn = sock_mod.create_connection((host, port), timeout=seconds + 60)
    start = time.monotonic()
    deadline = start + seconds
    conn.sendall(b"%d\n" % nbytes)
    received = 0
    while received < nbytes and time.monotonic() < deadline:
        chunk = conn.recv(CHUNK)
        if not chunk:
            break
        received += len(chunk)
    elapsed = time.monotonic() - start
    conn.close()
    return {"bytes": received, "seconds": elapsed}


def run_bulk(sock_mod, args) -> dict:
    if args.workload == "bulk_to":
        result = bulk_to(sock_mod, args.host, args.port, args.bytes, args.seconds)
    else:
        result = bulk_from(sock_mod, args.host, args.port, args.bytes, args.seconds)
    result["value"] = result["bytes"] / result["seconds"] / 1e6
    return result


def run_parallel(sock_mod, args) -> dict:
    """Run ``--connections`` bulk_to transfers at once for ``--seconds``; report the aggregate MB/s."""
    results: list[dict] = []
    errors: list[str] = []

    def one() -> None:
        try:
            results.append(bulk_to(sock_mod, args.host, args.port, 1 << 40, args.seconds))
        except OSError as error:
            errors.append(repr(error))

    threads = [threading.Thread(target=one) for _ in range(args.connections)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    total = sum(result["bytes"] for result in results)
    return {"value": total / elapsed / 1e6, "bytes": total, "seconds": elapsed,
            "completed": len(results), "errors": errors[:3]}


def run_tcp_rr(sock_mod, args) -> dict:
    conn = sock_mod.create_connection((args.host, args.port), timeout=10)
    conn.setsockopt(sock_mod.IPPROTO_TCP, sock_mod.TCP_NODELAY, 1)
    count = 0
    start = time.monotonic()
    deadline = start + args.seconds
    while time.monotonic() < deadline:
        conn.sendall(b"x")
        if not conn.recv(1):
            break
        count += 1
    elapsed = time.monotonic() - start
    conn.close()
    return {"value": count / elapsed, "transactions": count, "seconds": elapsed}


def run_udp_rr(sock_mod, args) -> dict:
    sock = sock_mod.socket(sock_mod.AF_INET, sock_mod.SOCK_DGRAM)
    sock.settimeout(1.0)
    count = lost = 0
    start = time.monotonic()
    deadline = start + args.seconds
    while time.monotonic() < deadline:
        sock.sendto(b"x" * 64, (args.host, args.port))
        try:
            sock.recvfrom(2048)
            count += 1
        except TimeoutError:
            lost += 1
    elapsed = time.monotonic() - start
    sock.close()
    return {"value": count / elapsed, "transactions": count, "lost": lost, "seconds": elapsed}


def run_ping(sock_mod, args) -> dict:
    """Send ``--count`` echo requests on an ICMP datagram socket, one at a time; report the median RTT in ms."""
    sock = sock_mod.socket(sock_mod.AF_INET, sock_mod.SOCK_DGRAM, sock_mod.IPPROTO_ICMP)
    sock.settimeout(1.0)
    rtts = []
    lost = 0
    for seq in range(args.count):
        body = struct.pack("!BBHHH", 8, 0, 0, 0, seq) + bytes(56)
        packet = body[:2] + struct.pack("!H", icmp_checksum(body)) + body[4:]
        start = time.monotonic()
        sock.sendto(packet, (args.host, 0))
        try:
            sock.recvfrom(2048)
            rtts.append((time.monotonic() - start) * 1000)
        except TimeoutError:
            lost += 1
    sock.close()
    return {"value": statistics.median(rtts) if rtts else None, "min": min(rtts, default=None),
            "max": max(rtts, default=None), "lost": lost}


def run_accept(sock_mod, args) -> dict:
    """Listen, print "ready", wait for a stdin line, then accept and close connections for ``--seconds``."""
    listener = sock_mod.socket(sock_mod.AF_INET, sock_mod.SOCK_STREAM)
    listener.setsockopt(sock_mod.SOL_SOCKET, sock_mod.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", args.port))
    listener.listen(1024)
    print("ready", flush=True)
    sys.stdin.readline()

    count = 0
    start = time.monotonic()
    deadline = start + args.seconds
    while (remaining := deadline - time.monotonic()) > 0:
        listener.settimeout(remaining)
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            break
        conn.close()
        count += 1
    elapsed = time.monotonic() - start
    listener.close()
    return {"value": count / elapsed, "accepted": count, "seconds": elapsed}


def run_concurrent(sock_mod, args) -> dict:
    """Open connections up to each level in ``--levels``; at each, print "level N" and wait for a stdin line.

    Stops opening at ``--seconds`` in total and reports how many it reached.
    """
    levels = [int(level) for level in args.levels.split(",")]
    conns = []
    reached = {}
    deadline = time.monotonic() + args.seconds
    errors = []
    for level in levels:
        while len(conns) < level and time.monotonic() < deadline:
            try:
                conns.append(sock_mod.create_connection((args.host, args.port), timeout=10))
            except OSError as error:
                errors.append(repr(error))
                if len(errors) > 20:
                    break
        reached[level] = len(conns)
        print(f"level {level} {len(conns)}", flush=True)
        sys.stdin.readline()
        if len(conns) < level:
            break
    for conn in conns:
        conn.close()
    return {"reached": reached, "errors": errors[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=("kernel", "sandnet"), required=True)
    parser.add_argument("workload", choices=("bulk_to", "bulk_from", "parallel", "tcp_rr", "udp_rr", "ping",
                                             "accept", "concurrent"))
    parser.add_argument("--host", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--bytes", type=int, default=200_000_000, help="bytes to transfer")
    parser.add_argument("--seconds", type=float, default=5.0, help="time limit of the workload in seconds")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--count", type=int, default=50, help="echo requests for ping")
    parser.add_argument("--levels", default="1000,5000,10000", help="connection counts for concurrent")
    args = parser.parse_args()

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.impl == "sandnet":
        from sandnet import socket as sock_mod
    else:
        sock_mod = kernel_socket

    runners = {"bulk_to": run_bulk, "bulk_from": run_bulk, "parallel": run_parallel, "tcp_rr": run_tcp_rr,
               "udp_rr": run_udp_rr, "ping": run_ping, "accept": run_accept, "concurrent": run_concurrent}
    emit(runners[args.workload](sock_mod, args))


if __name__ == "__main__":
    main()
