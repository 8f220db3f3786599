"""A per-device lock, so that only one linkd serves a device in a namespace."""

import socket


class DeviceBusyError(RuntimeError):
    """Another linkd already serves the device in this network namespace."""


def lock_device(device_name: str) -> socket.socket:
    """Take the lock for ``device_name`` and return the socket that holds it.

    The lock is an abstract unix socket named after the device. Abstract
    names belong to the network namespace, so linkd instances in different
    namespaces never collide, and the kernel frees the name when the process
    exits, even after SIGKILL. Keep the returned socket open while serving.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(f"\0sandnet-linkd/{device_name}")
    except OSError as error:
        sock.close()
        raise DeviceBusyError(
            f"device {device_name} is already served by another sandnet-linkd in this network namespace"
            f" ({error.strerror}); stop that one first"
        ) from None
    return sock
