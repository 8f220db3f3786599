"""Run a sandnet service: an asyncio gRPC server with the standard health
and reflection services, stopped cleanly by SIGTERM or SIGINT."""

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sandnet_common.endpoint import Endpoint

# Messages up to this size cross every sandnet stream (a batch of frames or
# a large socket read); gRPC's default of 4 MiB would reject big batches.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


class ListenError(RuntimeError):
    """The listen endpoint is unusable (in use, or its directory is missing)."""


def check_unix_path_free(path: str) -> None:
    """Raise ListenError if a live server already listens on the unix socket.

    gRPC unlinks an existing socket file before it binds, so without this
    check a second instance would silently take over the first one's path.
    """
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise ListenError(f"cannot listen on unix:{path}: directory {directory} does not exist")
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise ListenError(f"cannot listen on unix:{path}: another server is listening there; stop it or choose another path")


def insecure_channel(endpoint: Endpoint) -> grpc.aio.Channel:
    """Open an asyncio channel to another sandnet service."""
    return grpc.aio.insecure_channel(endpoint.grpc_target(), options=CHANNEL_OPTIONS)


class Service:
    """A gRPC server plus the health status of each service it hosts."""

    def __init__(self, name: str, log: logging.Logger):
        self.name = name
        self.log = log
        self.server = grpc.aio.server(options=CHANNEL_OPTIONS)
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names: list[str] = [health.SERVICE_NAME]
        self._stop_hooks: list[Callable[[], None]] = []

    def add(self, register: Callable[[object, grpc.aio.Server], None], servicer: object, full_name: str) -> None:
        """Register a servicer; ``full_name`` is its proto name, as sandnet.v1.Link."""
        register(servicer, self.server)
        self._service_names.append(full_name)

    def _set_socket_access(self, path: str, owner: tuple[int, int] | None, mode: int | None) -> None:
        """Apply --listen-owner and --listen-mode; raise ListenError naming the path when that fails."""
        try:
            if owner is not None:
                os.chown(path, *owner)
            if mode is not None:
                os.chmod(path, mode)
        except OSError as error:
            raise ListenError(f"cannot set owner or mode of unix:{path}: {error.strerror}") from None
        if owner is not None or mode is not None:
            status = os.stat(path)
            self.log.info("unix:%s owned by %d:%d with mode %04o", path, status.st_uid, status.st_gid,
                          status.st_mode & 0o777)

    def add_stop_hook(self, hook: Callable[[], None]) -> None:
        """Run ``hook()`` at shutdown before the server stops, so that it can
        end blocked calls with a reply instead of a cancellation."""
        self._stop_hooks.append(hook)

    async def set_serving(self, serving: bool, names: Iterable[str] | None = None) -> None:
        """Report SERVING or NOT_SERVING for the given services and the server as a whole."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in list(names or self._service_names[1:]) + [""]:
            result = self.health.set(name, status)
            if asyncio.iscoroutine(result):
                await result

    async def run(self, listen: Endpoint, main: Callable[[], Awaitable[None]] | None = None,
                  owner: tuple[int, int] | None = None, mode: int | None = None) -> None:
        """Serve on ``listen`` until SIGTERM or SIGINT, running ``main`` beside the server.

        ``owner`` (uid, gid) and ``mode`` apply to a unix socket once it
        exists. If ``main`` returns or raises, the server stops too; its
        exception propagates to the caller.
        """
        reflection.enable_server_reflection(self._service_names + [reflection.SERVICE_NAME], self.server)
        if listen.kind == "unix":
            check_unix_path_free(listen.path)
        bound = self.server.add_insecure_port(listen.grpc_target())
        if listen.kind == "tcp" and bound == 0:
            raise ListenError(f"cannot listen on {listen}: the address is in use or not local")
        await self.server.start()
        if listen.kind == "unix":
            try:
                self._set_socket_access(listen.path, owner, mode)
            except ListenError:
                await self.server.stop(None)
                raise
        self.log.info("%s listening on %s", self.name, listen)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)

        waiters = [asyncio.ensure_future(stop.wait())]
        main_task = asyncio.ensure_future(main()) if main else None
        if main_task:
            waiters.append(main_task)
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.log.info("%s stopping", self.name)
            for task in waiters:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
            for hook in self._stop_hooks:
                hook()
            await self.server.stop(grace=1.0)
            if listen.kind == "unix" and os.path.exists(listen.path):
                os.unlink(listen.path)
            self.log.info("%s stopped", self.name)
        if main_task and main_task.done() and not main_task.cancelled() and main_task.exception():
            raise main_task.exception()
