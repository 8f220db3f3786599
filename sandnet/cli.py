"""sandnet: inspect and use the sandbox network through sockd.

    sandnet [--sockd ENDPOINT] ip [-4|-6] addr|route
    sandnet [--sockd ENDPOINT] ping [-c COUNT] [-W TIMEOUT] HOST
    sandnet [--sockd ENDPOINT] get URL
    sandnet [--sockd ENDPOINT] ss
    sandnet [--sockd ENDPOINT] stats
    sandnet [--sockd ENDPOINT] run [--nameserver ADDRESS] -- COMMAND [ARGS...]
"""

import argparse
import os
import shutil
import struct
import sys
import time
import urllib.parse

from sandnet import netfmt

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129
# ping(8)'s default payload: an 8-byte timestamp and 48 pattern bytes.
PING_PAYLOAD_BYTES = 56
PING_INTERVAL_SECONDS = 1.0


class CommandError(Exception):
    """A failure that the CLI reports as one line on stderr."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sandnet", description="Inspect and use the sandbox network through sockd.")
    parser.add_argument("--sockd", default=os.environ.get("SANDNET_SOCKD"),
                        help="sockd's endpoint, unix:PATH or tcp:HOST:PORT "
                             "(default $SANDNET_SOCKD, else unix:/run/sandnet/sockd.sock)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ip = commands.add_parser("ip", help="show interfaces (ip addr) or routes (ip route)")
    ip.add_argument("-4", dest="family", action="store_const", const=4, default=None, help="IPv4 only")
    ip.add_argument("-6", dest="family", action="store_const", const=6, help="IPv6 only")
    ip.add_argument("object", choices=["addr", "address", "a", "route", "r"], help="addr or route")

    ping = commands.add_parser("ping", help="send ICMP echo requests")
    ping.add_argument("-c", dest="count", type=int, default=4, help="echo requests to send (default 4)")
    ping.add_argument("-W", dest="wait", type=float, default=1.0,
                      help="seconds to wait for each reply (default 1)")
    ping.add_argument("host", help="IPv4 or IPv6 address, or host name")

    get = commands.add_parser("get", help="fetch an http:// URL and print the body")
    get.add_argument("url", help="http://HOST[:PORT]/PATH")

    commands.add_parser("ss", help="list sockets like ss -tuan")
    commands.add_parser("stats", help="show protocol counters like netstat -s")

    run = commands.add_parser(
        "run", help="run a Python program with its socket module backed by sandnet",
        description="Run COMMAND with sandnet.patch() applied to every Python interpreter it starts: "
                    "the sandnet directory goes first on PYTHONPATH, and the directory of this "
                    "interpreter first on PATH, so that python3 is one that can import sandnet. "
                    "Programs in other languages run unchanged and are not redirected.")
    run.add_argument("--nameserver", default=os.environ.get("SANDNET_NAMESERVER"),
                     help="DNS server address(es) for name lookups over sandnet, comma-separated "
                          "(default $SANDNET_NAMESERVER, else the nameserver lines of /etc/resolv.conf)")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]",
                     help="the program and its arguments")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = run(args)
    except CommandError as error:
        print(f"sandnet: {error}", file=sys.stderr)
        code = 1
    except ConnectionError as error:
        print(f"sandnet: {error}", file=sys.stderr)
        code = 1
    except OSError as error:
        print(f"sandnet {args.command}: {error.strerror or error}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def run(args: argparse.Namespace) -> int:
    from sandnet.client import Client

    try:
        client = Client(args.sockd)
    except ValueError as error:
        raise CommandError(str(error)) from None
    if args.command == "run":
        # The check above proved that sockd responds; the program opens its own session.
        client.close()
        return command_run(args)
    with client:
        if args.command == "ip":
            return command_ip(client, args)
        if args.command == "ss":
            sys.stdout.write(netfmt.format_ss(client.info("ListSockets")))
            return 0
        if args.command == "stats":
            sys.stdout.write(netfmt.format_stats(client.info("GetCounters")))
            return 0
        if args.command == "ping":
            return command_ping(client, args)
        return command_get(client, args)


def command_run(args: argparse.Namespace) -> int:
    """Replace this process with the program, its environment set up for sandnet.patch()."""
    from sandnet import autopatch

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise CommandError("run needs a command, as in: sandnet run -- python3 app.py")

    env = dict(os.environ)
    if args.sockd:
        env["SANDNET_SOCKD"] = args.sockd
    if args.nameserver:
        env["SANDNET_NAMESERVER"] = args.nameserver
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(autopatch.__file__), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join(filter(None, [os.path.dirname(sys.executable), env.get("PATH")]))

    program = shutil.which(argv[0], path=env["PATH"])
    if program is None:
        print(f"sandnet run: command not found: {argv[0]}", file=sys.stderr)
        return 127
    sys.stdout.flush()
    os.execve(program, argv, env)
    return 0  # not reached: execve replaces the process or raises OSError


def command_ip(client, args: argparse.Namespace) -> int:
    if args.object.startswith("a"):
        interfaces = client.info("ListInterfaces")
        if args.family:
            length = 4 if args.family == 4 else 16
            for interface in interfaces.interfaces:
                kept = [address for address in interface.addresses if len(address.ip) == length]
                del interface.addresses[:]
                interface.addresses.extend(kept)
        sys.stdout.write(netfmt.format_ip_addr(interfaces))
    else:
        sys.stdout.write(netfmt.format_ip_route(client.info("ListRoutes"), args.family or 4))
    return 0


def icmp_checksum(data: bytes) -> int:
    """Compute the Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(sequence: int, kind: int = ICMP_ECHO_REQUEST) -> bytes:
    """Build an ICMP or ICMPv6 echo request; the identifier is 0 because the ping socket sets it.

    The ICMPv6 checksum covers a pseudo-header with the source address that
    the stack picks, so the ping socket fills it. The ICMP checksum is filled here.
    """
    payload = struct.pack("!d", time.time()) + bytes(range(PING_PAYLOAD_BYTES - 8))
    header = struct.pack("!BBHHH", kind, 0, 0, 0, sequence)
    checksum = icmp_checksum(header + payload) if kind == ICMP_ECHO_REQUEST else 0
    return struct.pack("!BBHHH", kind, 0, checksum, 0, sequence) + payload


def command_ping(client, args: argparse.Namespace) -> int:
    """Ping as ping(8) prints it; exit 0 if any reply came back."""
    from sandnet import socket as snsocket

    if args.count < 1:
        raise CommandError(f"invalid count {args.count}: use -c 1 or more")
    if args.wait <= 0:
        raise CommandError(f"invalid timeout {args.wait}: use -W with a positive number of seconds")
    ipv6 = ":" in args.host
    family, protocol = (snsocket.AF_INET6, snsocket.IPPROTO_ICMPV6) if ipv6 else (snsocket.AF_INET, snsocket.IPPROTO_ICMP)
    request_kind, reply_kind = (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY) if ipv6 else (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
    address = snsocket.resolve_host(family, args.host, client)
    host = netfmt.format_ip(address)

    rtts = []
    started = time.monotonic()
    try:
        sock = snsocket.socket(family, snsocket.SOCK_DGRAM, protocol, client=client)
    except PermissionError:
        raise CommandError("cannot open an ICMP datagram socket: permission denied; in host mode, "
                           "sysctl net.ipv4.ping_group_range must include sockd's group") from None
    with sock:
        print(f"PING {args.host} ({host}) {PING_PAYLOAD_BYTES}({PING_PAYLOAD_BYTES + 28}) bytes of data.")
        for sequence in range(1, args.count + 1):
            sent_at = time.monotonic()
            sock.sendto(echo_request(sequence, request_kind), (host, 0))
            rtt = wait_for_reply(sock, sequence, sent_at, args.wait, reply_kind)
            if rtt is not None:
                rtts.append(rtt)
                print(f"{PING_PAYLOAD_BYTES + 8} bytes from {host}: icmp_seq={sequence} time={rtt:.3f} ms")
            if sequence < args.count:
                time.sleep(max(0.0, sent_at + PING_INTERVAL_SECONDS - time.monotonic()))

    elapsed_ms = (time.monotonic() - started) * 1000
    loss = 100 * (args.count - len(rtts)) // args.count
    print(f"\n--- {args.host} ping statistics ---")
    print(f"{args.count} packets transmitted, {len(rtts)} received, {loss}% packet loss, time {elapsed_ms:.0f}ms")
    if rtts:
        average = sum(rtts) / len(rtts)
        deviation = (sum((rtt - average) ** 2 for rtt in rtts) / len(rtts)) ** 0.5
        print(f"rtt min/avg/max/mdev = {min(rtts):.3f}/{average:.3f}/{max(rtts):.3f}/{deviation:.3f} ms")
    return 0 if rtts else 1


def wait_for_reply(sock, sequence: int, sent_at: float, wait: float, reply_kind: int = ICMP_ECHO_REPLY
                   ) -> float | None:
    """Read until the echo reply for ``sequence`` arrives; return its rtt in ms, or None after ``wait`` seconds."""
    deadline = sent_at + wait
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        try:
            packet, _ = sock.recvfrom(65535)
        except TimeoutError:
            return None
        if len(packet) < 8:
            continue
        kind, _, _, _, reply_sequence = struct.unpack("!BBHHH", packet[:8])
        if kind == reply_kind and reply_sequence == sequence:
            return (time.monotonic() - sent_at) * 1000


def parse_url(url: str) -> tuple[str, int, str, str]:
    """Split an http:// URL into (host, port, request target, Host header)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http":
        raise CommandError(f"unsupported URL {url!r}: only http:// URLs are supported")
    if not parts.hostname:
        raise CommandError(f"invalid URL {url!r}: it has no host")
    try:
        port = parts.port or 80
    except ValueError:
        raise CommandError(f"invalid URL {url!r}: the port is not a number from 0 to 65535") from None
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return parts.hostname, port, target, parts.netloc.rpartition("@")[2]


def command_get(client, args: argparse.Namespace) -> int:
    """Fetch the URL with HTTP/1.1 and write the body to stdout; a non-2xx status exits 1."""
    from sandnet import socket as snsocket

    host, port, target, host_header = parse_url(args.url)
    sock = snsocket.create_connection((host, port), timeout=30, client=client)
    with sock:
        request = (f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: sandnet\r\n"
                   "Accept: */*\r\nConnection: close\r\n\r\n")
        sock.sendall(request.encode("ascii"))
        with sock.makefile("rb") as response:
            status_line, headers = read_head(response, args.url)
            write_body(response, headers, sys.stdout.buffer, args.url)
    sys.stdout.flush()

    status = status_line.split(" ", 2)
    if not status[1].startswith("2"):
        print(f"sandnet get: {args.url}: server returned {status_line}", file=sys.stderr)
        return 1
    return 0


def read_head(response, url: str) -> tuple[str, dict[str, str]]:
    """Read the status line and headers; header names are lower-cased."""
    status_line = response.readline(65536).decode("latin-1").rstrip("\r\n")
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
        raise CommandError(f"invalid HTTP response from {url}: status line {status_line!r}")
    headers = {}
    while True:
        line = response.readline(65536).decode("latin-1").rstrip("\r\n")
        if not line:
            return status_line, headers
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()


def write_body(response, headers: dict[str, str], out, url: str) -> None:
    """Copy the body to ``out``, framed by chunked encoding, else by Content-Length, else by connection close."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = response.readline(65536).decode("latin-1").split(";")[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise CommandError(f"invalid chunk size {size_line!r} in the response from {url}") from None
            if size == 0:
                break
            copy_exact(response, size, out, url)
            response.readline(65536)
        while response.readline(65536).strip():
            pass  # trailer fields
        return

    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise CommandError(f"invalid Content-Length {headers['content-length']!r} from {url}") from None
        copy_exact(response, length, out, url)
        return

    while chunk := response.read1(65536):
        out.write(chunk)


def copy_exact(response, length: int, out, url: str) -> None:
    while length > 0:
        chunk = response.read1(min(length, 65536))
        if not chunk:
            raise CommandError(f"the response from {url} ended {length} bytes before its declared length")
        out.write(chunk)
        length -= len(chunk)


if __name__ == "__main__":
    main()
