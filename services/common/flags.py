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


class ServiceArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line: the program, the problem and where help is."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def env_name(service: str, flag: str) -> str:
    """Return the environment variable behind ``--flag`` of ``service``: --log-level of sockd is SANDNET_SOCKD_LOG_LEVEL."""
    return f"SANDNET_{service.upper()}_{flag.lstrip('-').upper().replace('-', '_')}"


def add_option(parser: argparse.ArgumentParser, service: str, flag: str, help: str,
               default: str | None = None, default_text: str | None = None, **kwargs) -> None:
    """Add ``flag`` with its environment variable as the default source, both named in the help text.

    The flag wins over the variable, and the variable over ``default``;
    ``default_text`` describes the default in the help when it is not a value.
    argparse checks a value from the variable with the flag's ``type``, so
    a bad value in either place gets the same error.
    """
    variable = env_name(service, flag)
    shown_default = default_text or ("none" if default is None else default)
    parser.add_argument(flag, default=env_default(variable, default),
                        help=f"{help} (env {variable}; default {shown_default})", **kwargs)


def env_default(name: str, default: str | None = None) -> str | None:
    """Return the environment variable that backs a flag, or the default.

    Each flag ``--foo-bar`` of service ``linkd`` reads ``SANDNET_LINKD_FOO_BAR``.
    """
    return os.environ.get(name, default)


def owner_arg(text: str) -> tuple[int, int]:
    """argparse type for ``UID:GID``, the numeric owner of a unix socket."""
    uid, sep, gid = text.partition(":")
    if not sep or not uid.isdigit() or not gid.isdigit():
        raise argparse.ArgumentTypeError(f"invalid owner {text!r}: use numeric UID:GID, as in 10001:10001")
    return int(uid), int(gid)


def mode_arg(text: str) -> int:
    """argparse type for an octal file mode such as 0660."""
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"invalid mode {text!r}: use octal permission bits, as in 0660")
    return mode


def add_listen_options(parser: argparse.ArgumentParser, service: str) -> None:
    """Add --listen-owner and --listen-mode, which set the owner and permissions of a unix listen socket.

    Connecting to a unix socket needs write permission on it, so a client
    that runs as another user than the server (stackd as a non-root user,
    linkd as root) needs one of them.
    """
    add_option(parser, service, "--listen-owner", type=owner_arg, metavar="UID:GID",
               help="numeric owner to give a unix listen socket", default_text="the user running the service")
    add_option(parser, service, "--listen-mode", type=mode_arg, metavar="MODE",
               help="octal permissions to give a unix listen socket, as in 0660", default_text="from the umask")
