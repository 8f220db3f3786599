"""Parse the service addresses that every sandnet command line takes.

An endpoint is ``unix:PATH`` (a unix domain socket) or ``tcp:HOST:PORT``.
IPv6 hosts may be bracketed: ``tcp:[::1]:7000``.
"""

import dataclasses


class EndpointError(ValueError):
    """An endpoint string that is not ``unix:PATH`` or ``tcp:HOST:PORT``."""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint: ``kind`` is "unix" or "tcp"."""

    kind: str
    path: str = ""
    host: str = ""
    port: int = 0

    def grpc_target(self) -> str:
        """Return the address in gRPC's naming syntax, for a channel or a server."""
        if self.kind == "unix":
            return f"unix:{self.path}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"tcp:{self.host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """Parse ``unix:PATH`` or ``tcp:HOST:PORT``; raise EndpointError naming the fix."""
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path:
            raise EndpointError(f"invalid endpoint {text!r}: unix: needs a path, as in unix:/run/sandnet/sockd.sock")
        return Endpoint(kind="unix", path=path)

    if text.startswith("tcp:"):
        rest = text[len("tcp:"):]
        host, sep, port_text = rest.rpartition(":")
        if not sep or not host:
            raise EndpointError(f"invalid endpoint {text!r}: expected tcp:HOST:PORT, as in tcp:127.0.0.1:7000")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise EndpointError(f"invalid endpoint {text!r}: port {port_text!r} is not a number from 1 to 65535")
        return Endpoint(kind="tcp", host=host, port=int(port_text))

    raise EndpointError(f"invalid endpoint {text!r}: expected unix:PATH or tcp:HOST:PORT")
