"""sandnet-sockd: the socket API for workloads.

Modes: ``sandbox`` forwards every call to stackd, ``none`` does the same but
allows only loopback destinations, and ``host`` serves the calls from the
host kernel's sockets without stackd.
"""

import argparse
import asyncio
import logging
import sys

from sandnet.v1 import sockets_pb2_grpc
from sandnet_common.flags import ServiceArgumentParser, add_listen_options, add_option, endpoint_arg
from sandnet_common.logs import setup_logging
from sandnet_common.server import ListenError, Service
from sandnet_sockd.forward import ForwardNetinfo, ForwardSockets, StackLink, StackUnavailableError
from sandnet_sockd.host import HostSockets
from sandnet_sockd.hostinfo import HostNetinfo

MODES = ("sandbox", "host", "none")
DEFAULT_LISTEN = "unix:/run/sandnet/sockd.sock"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# How long sockd waits at start for stackd's health check to pass, by default.
STACK_PROBE_SECONDS = 5.0


def network_mode_arg(text: str) -> str:
    """argparse type for --network that names the invalid value and the choices."""
    if text not in MODES:
        raise argparse.ArgumentTypeError(f"invalid network mode {text!r}: choose one of {', '.join(MODES)}")
    return text


def positive_seconds_arg(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"invalid time {text!r}: use a positive number of seconds")
    return seconds


def log_level_arg(text: str) -> str:
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"invalid log level {text!r}: choose one of {', '.join(LOG_LEVELS)}")
    return text.upper()


def build_parser() -> argparse.ArgumentParser:
    parser = ServiceArgumentParser(
        prog="sandnet-sockd",
        description="Serve the sandnet socket API (Sockets and Netinfo) to workloads. "
                    "Each flag can also be set with the environment variable named in its help; "
                    "a flag given on the command line wins.",
    )
    add_option(parser, "sockd", "--stack", type=endpoint_arg, metavar="ENDPOINT",
               help="stackd's endpoint, unix:PATH or tcp:HOST:PORT; required in sandbox and none modes")
    add_option(parser, "sockd", "--listen", type=endpoint_arg, default=DEFAULT_LISTEN, metavar="ENDPOINT",
               help="endpoint to serve workloads on, unix:PATH or tcp:HOST:PORT")
    add_listen_options(parser, "sockd")
    add_option(parser, "sockd", "--network", type=network_mode_arg, default="sandbox", metavar="MODE",
               help="sandbox: forward to stackd; host: use the host kernel's sockets (faster, less isolated); "
                    "none: forward to stackd, loopback destinations only")
    add_option(parser, "sockd", "--stack-timeout", type=positive_seconds_arg, default=str(STACK_PROBE_SECONDS),
               metavar="SECONDS", help="seconds to wait at start for stackd to report SERVING")
    add_option(parser, "sockd", "--log-level", type=log_level_arg, default="INFO", metavar="LEVEL",
               help=f"log level, one of {', '.join(LOG_LEVELS)}")
    return parser


async def serve_host(args: argparse.Namespace, log: logging.Logger) -> None:
    log.warning("host mode: workloads use the host kernel's sockets through sockd, "
                "which is less isolated than sandbox mode")
    service = Service("sockd", log)
    sockets = HostSockets(log)
    service.add(sockets_pb2_grpc.add_SocketsServicer_to_server, sockets, "sandnet.v1.Sockets")
    service.add(sockets_pb2_grpc.add_NetinfoServicer_to_server, HostNetinfo(sockets), "sandnet.v1.Netinfo")

    async def mark_serving() -> None:
        await service.set_serving(True)
        await asyncio.Event().wait()

    try:
        await service.run(args.listen, mark_serving, args.listen_owner, args.listen_mode)
    finally:
        sockets.close_all()


async def serve_forward(args: argparse.Namespace, log: logging.Logger) -> None:
    service = Service("sockd", log)
    sockets: ForwardSockets | None = None

    async def on_change(up: bool) -> None:
        await service.set_serving(up)

    def on_lost() -> None:
        sockets.forget_all_fds()

    link = StackLink(args.stack, log, on_change, on_lost)
    try:
        await link.probe(args.stack_timeout)
        sockets = ForwardSockets(link, log, loopback_only=args.network == "none")
        service.add(sockets_pb2_grpc.add_SocketsServicer_to_server, sockets, "sandnet.v1.Sockets")
        service.add(sockets_pb2_grpc.add_NetinfoServicer_to_server, ForwardNetinfo(link), "sandnet.v1.Netinfo")
        await service.set_serving(False)
        log.info("mode %s, stackd at %s", args.network, args.stack)
        await service.run(args.listen, link.run, args.listen_owner, args.listen_mode)
    finally:
        await link.close()


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.network != "host" and args.stack is None:
        parser.error(f"--stack is required in {args.network} mode: pass --stack unix:PATH "
                     "or set SANDNET_SOCKD_STACK (or use --network host)")

    log = setup_logging("sockd", args.log_level)
    log.info("sockd starting: mode %s, listen %s", args.network, args.listen)
    serve = serve_host if args.network == "host" else serve_forward
    try:
        asyncio.run(serve(args, log))
    except (ListenError, StackUnavailableError) as error:
        print(f"sandnet-sockd: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
