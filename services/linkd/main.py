"""sandnet-linkd: own a network device and move its Ethernet frames to and from stackd.

Run it inside the network namespace that contains the device, as root:

    sandnet-linkd --device veth:eth0 --listen unix:/run/sandnet/linkd.sock
"""

import argparse
import asyncio
import os
import signal
import sys

from sandnet.v1 import link_pb2, link_pb2_grpc
from sandnet_common.flags import ServiceArgumentParser, add_listen_options, bool_arg, endpoint_arg, env_default
from sandnet_common.logs import setup_logging
from sandnet_common.server import ListenError, Service
from sandnet_linkd import netconfig, vnet
from sandnet_linkd.device import (
    GSO_MODES, Counters, Device, DeviceError, DeviceSpec, format_mac, link_index, open_device, parse_device,
    parse_mac, stack_mac_for,
)
from sandnet_linkd.lock import DeviceBusyError, lock_device
from sandnet_linkd.servicer import LinkServicer

ENV_PREFIX = "SANDNET_LINKD_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
ON_EXIT_CHOICES = ("restore", "keep")


def _device_arg(text: str) -> DeviceSpec:
    try:
        return parse_device(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _mac_arg(text: str) -> bytes:
    try:
        return parse_mac(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive_int_arg(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: use a whole number of at least 1")
    return int(text)


def _gso_arg(text: str) -> str:
    lowered = text.strip().lower()
    if lowered == "software":
        return lowered
    try:
        return "true" if bool_arg(lowered) else "false"
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"invalid --gso value {text!r}: use one of {', '.join(GSO_MODES)}") from None


def _log_level_arg(text: str) -> str:
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"invalid log level {text!r}: use one of {', '.join(LOG_LEVELS)}")
    return text.upper()


def build_parser() -> argparse.ArgumentParser:
    parser = ServiceArgumentParser(
        prog="sandnet-linkd",
        description="Own a network device and serve its Ethernet frames over gRPC (sandnet.v1.Link). "
        "Every option also reads the environment variable SANDNET_LINKD_<OPTION>, as in SANDNET_LINKD_DEVICE.",
    )
    parser.add_argument(
        "--device", type=_device_arg, default=env_default(ENV_PREFIX + "DEVICE"),
        help="device to own: veth:IFNAME for an existing interface (read with AF_PACKET), or tap:IFNAME for a "
        "TAP device, created if missing (required)",
    )
    parser.add_argument(
        "--listen", type=endpoint_arg, default=env_default(ENV_PREFIX + "LISTEN"),
        help="gRPC endpoint to serve on: unix:PATH or tcp:HOST:PORT (required)",
    )
    add_listen_options(parser, "linkd")
    parser.add_argument(
        "--gso", type=_gso_arg, default=env_default(ENV_PREFIX + "GSO", "true"),
        help="segmentation and checksum offload: true exchanges a virtio-net header with the device, so TCP "
        "frames of up to 64 KiB pass both ways (software when the kernel refuses the header); software cuts "
        "stackd's large frames in linkd; false passes MTU-sized frames only (default: true)",
    )
    parser.add_argument(
        "--mac", type=_mac_arg, default=env_default(ENV_PREFIX + "MAC"),
        help="MAC address of the stack behind a TAP, as in 02:00:00:00:00:01 (default: a locally administered "
        "address derived from the device name; tap: only)",
    )
    parser.add_argument(
        "--max-batch", type=_positive_int_arg, default=env_default(ENV_PREFIX + "MAX_BATCH", "256"),
        help="maximum number of received frames per FrameBatch (frames; default: 256)",
    )
    parser.add_argument(
        "--on-exit", choices=ON_EXIT_CHOICES, default=env_default(ENV_PREFIX + "ON_EXIT", "restore"),
        help="what a clean exit does with the addresses taken from the kernel: restore gives them back; keep "
        "leaves them with the stack, so that established connections survive a linkd restart (the next linkd "
        "reads them from --state-dir) (default: restore)",
    )
    parser.add_argument(
        "--state-dir", default=env_default(ENV_PREFIX + "STATE_DIR", "/run/sandnet/linkd-state"),
        help="directory for the file that records the addresses and routes taken over, for the next linkd "
        "on the device (default: /run/sandnet/linkd-state)",
    )
    parser.add_argument(
        "--log-level", type=_log_level_arg, default=env_default(ENV_PREFIX + "LOG_LEVEL", "INFO"),
        help="minimum level of log records: DEBUG, INFO, WARNING or ERROR (default: INFO)",
    )
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device is None:
        parser.error("--device is missing: pass --device veth:IFNAME or tap:IFNAME, or set SANDNET_LINKD_DEVICE")
    if args.listen is None:
        parser.error("--listen is missing: pass --listen unix:PATH or tcp:HOST:PORT, or set SANDNET_LINKD_LISTEN")
    if args.mac is not None and args.device.kind != "tap":
        parser.error(f"--mac applies only to tap: devices; the stack on {args.device} uses the device's own MAC")
    return args


def build_config(device: Device, snapshot: netconfig.Snapshot, stack_mac: bytes) -> link_pb2.LinkConfig:
    """Describe the device, its taken-over addresses and routes, and the offloads in use."""
    gso = device.vnet_header or device.software_gso
    offloads = link_pb2.Offloads(
        vnet_header=device.vnet_header,
        tso4=gso,
        tso6=gso,
        tx_checksum=gso,
        max_frame_size=vnet.MAX_GSO_FRAME_SIZE if gso else device.mtu + vnet.ETHERNET_HEADER_SIZE,
        software_gso=device.software_gso,
    )
    return link_pb2.LinkConfig(
        interface=netconfig.interface_proto(snapshot, stack_mac),
        routes=netconfig.routes_proto(snapshot),
        offloads=offloads,
    )


async def serve(args: argparse.Namespace, device: Device, config: link_pb2.LinkConfig, counters: Counters, log) -> None:
    service = Service("linkd", log)
    servicer = LinkServicer(device, config, counters, log, args.max_batch)
    service.add(link_pb2_grpc.add_LinkServicer_to_server, servicer, "sandnet.v1.Link")

    async def main() -> None:
        servicer.start()
        await service.set_serving(True)
        # Service.run has installed its handlers, so a stop signal that came
        # during setup is delivered now and stops the server cleanly.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        await asyncio.Event().wait()

    try:
        await service.run(args.listen, main, args.listen_owner, args.listen_mode)
    finally:
        servicer.stop()


def _remove_state(path: str | None, log) -> None:
    if path is None:
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        log.warning("cannot remove state file %s: %s", path, error)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = setup_logging("linkd", args.log_level)

    # Hold back SIGTERM and SIGINT until serving starts, so that a stop
    # request during setup cannot kill linkd between taking the addresses
    # and restoring them. Threads started meanwhile inherit the mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    spec: DeviceSpec = args.device

    counters = Counters()
    try:
        lock = lock_device(spec.name)
    except DeviceBusyError as error:
        log.error("%s", error)
        return 1

    # Take over an existing device before opening it: attaching to a TAP
    # raises its carrier, and the kernel would then add an IPv6 link-local
    # address unless addr_gen_mode is already "none".
    snapshot = None
    state_file = None
    index = link_index(spec.name)
    if index is not None:
        state_file = netconfig.state_path(args.state_dir, spec.name)
        snapshot = netconfig.load_state(state_file, netconfig.read_snapshot(index), log)
        netconfig.take_over(snapshot, log)
        try:
            netconfig.save_state(snapshot, state_file)
        except OSError as error:
            log.warning("cannot write state file %s: %s; a later linkd cannot take over the addresses", state_file,
                        error)
    try:
        device = open_device(spec, args.gso, counters, log)
    except DeviceError as error:
        log.error("%s", error)
        if snapshot is not None:
            netconfig.restore(snapshot, log)
        lock.close()
        return 1
    if snapshot is None:
        snapshot = netconfig.read_snapshot(device.index)
        log.info("created TAP device %s", spec.name)

    stack_mac = snapshot.mac
    if spec.kind == "tap":
        stack_mac = args.mac or stack_mac_for(spec.name)

    status = 0
    try:
        config = build_config(device, snapshot, stack_mac)
        log.info(
            "linkd starting on %s: index %d, MAC %s, MTU %d, %d addresses and %d routes taken over, offload path %s",
            spec, device.index, format_mac(stack_mac), device.mtu, len(snapshot.addresses), len(snapshot.routes),
            device.offload_path,
        )
        asyncio.run(serve(args, device, config, counters, log))
    except ListenError as error:
        log.error("%s", error)
        status = 1
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        if args.on_exit == "keep" and state_file is not None:
            log.info("left the addresses of %s with the stack (--on-exit keep); the next linkd reads them from %s",
                     spec.name, state_file)
        else:
            netconfig.restore(snapshot, log)
            _remove_state(state_file, log)
        device.close()
        lock.close()
        if spec.kind == "tap" and device.created:
            log.info("removed TAP device %s, which linkd created", spec.name)
        log.info("closed device %s", spec)
    return status


if __name__ == "__main__":
    sys.exit(main())
