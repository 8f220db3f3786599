"""sandnet-stackd: the user-space TCP/IP stack service."""

import argparse
import asyncio
import logging
import os
import sys

from sandnet.v1 import sockets_pb2_grpc
from sandnet_common.flags import ServiceArgumentParser, add_listen_options, endpoint_arg
from sandnet_common.logs import setup_logging
from sandnet_common.server import ListenError, Service
from sandnet_stackd.link_client import LinkBusyError, LinkClient, LinkUnavailableError
from sandnet_stackd.service import NetinfoService, SocketsService
from sandnet_stackd.stack import Stack

NETWORK_MODES = ("sandbox", "none")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = ServiceArgumentParser(
        prog="sandnet-stackd",
        description="Run sandnet's user-space TCP/IP stack and serve the socket API to sockd. "
                    "Each option can also be set by the environment variable named in its help.")
    parser.add_argument("--link", type=endpoint_arg, default=env("SANDNET_STACKD_LINK"),
                        help="linkd endpoint, unix:PATH or tcp:HOST:PORT (SANDNET_STACKD_LINK); "
                             "required unless --network none")
    parser.add_argument("--listen", type=endpoint_arg, default=env("SANDNET_STACKD_LISTEN"),
                        help="endpoint to serve on, unix:PATH or tcp:HOST:PORT (SANDNET_STACKD_LISTEN); required")
    add_listen_options(parser, "stackd")
    parser.add_argument("--network", default=env("SANDNET_STACKD_NETWORK", "sandbox"),
                        help="sandbox: attach to linkd; none: loopback only, no link "
                             "(SANDNET_STACKD_NETWORK, default sandbox)")
    parser.add_argument("--link-timeout", type=float, default=float(env("SANDNET_STACKD_LINK_TIMEOUT", "10")),
                        help="seconds to wait for linkd at start (SANDNET_STACKD_LINK_TIMEOUT, default 10)")
    parser.add_argument("--log-level", default=env("SANDNET_STACKD_LOG_LEVEL", "INFO"),
                        help="logging level: DEBUG, INFO, WARNING or ERROR (SANDNET_STACKD_LOG_LEVEL, default INFO)")
    args = parser.parse_args(argv)

    if not args.link_timeout > 0:
        parser.error(f"invalid --link-timeout {args.link_timeout}: give a number of seconds above 0, such as 10")
    if args.network not in NETWORK_MODES:
        parser.error(f"invalid --network {args.network!r}: choose sandbox or none")
    if args.listen is None:
        parser.error("missing --listen: give the endpoint to serve on, as in --listen unix:/run/sandnet/stackd.sock")
    if args.network == "sandbox" and args.link is None:
        parser.error("missing --link: give linkd's endpoint, as in --link unix:/run/sandnet/linkd.sock, "
                     "or run with --network none")
    return args


async def serve(args: argparse.Namespace, log: logging.Logger) -> None:
    loop = asyncio.get_running_loop()
    stack = Stack(loop)
    service = Service("stackd", log)
    service.add(sockets_pb2_grpc.add_SocketsServicer_to_server, SocketsService(stack), "sandnet.v1.Sockets")
    service.add(sockets_pb2_grpc.add_NetinfoServicer_to_server, NetinfoService(stack), "sandnet.v1.Netinfo")

    service.add_stop_hook(stack.stop)
    link = None
    if args.network == "sandbox":
        link = LinkClient(stack, args.link, service.set_serving)
        await link.start(args.link_timeout)
    else:
        log.info("network none: loopback only, no link")
    await service.set_serving(args.network == "none")
    try:
        await service.run(args.listen, link.run if link else None, args.listen_owner, args.listen_mode)
    finally:
        stack.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = setup_logging("stackd", args.log_level)
    try:
        asyncio.run(serve(args, log))
    except (LinkUnavailableError, LinkBusyError, ListenError) as error:
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
