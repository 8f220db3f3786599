"""Argument parsing helpers shared by the service command lines."""

import argparse
import os

from sandnet_common.endpoint import Endpoint, EndpointError, parse_endpoint


def endpoint_arg(text: str) -> Endpoint:
    """argparse type for ``unix:PATH`` or ``tcp:HOST:PORT``."""
    try:
        return parse_endpoint(text)
    except EndpointError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def bool_arg(text: str) -> bool:
    """argparse type for true/false flags such as ``--gso=false``."""
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r}: use true or false")


def env_default(name: str, default: str | None = None) -> str | None:
    """Return the environment variable that backs a flag, or the default.

    Each flag ``--foo-bar`` of service ``linkd`` reads ``SANDNET_LINKD_FOO_BAR``.
    """
    return os.environ.get(name, default)
