"""Socket agent of the packet bench: runs socket calls for the test in its own process.

Usage: ``python agent.py linux`` (inside the device under test's network
namespace, with the stdlib's socket module) or ``python agent.py sandnet``
(with sandnet.socket, whose session goes to the sockd named by
$SANDNET_SOCKD). The same scenarios then drive both stacks through the same
calls.

The protocol is one JSON object per line. A request is
``{"id": N, "handle": H, "method": NAME, "args": [...]}``; handle 0 with method
"socket" creates a socket. Every request runs in its own thread, so a blocking
accept() or connect() does not hold up the others. The reply is
``{"id": N, "value": V}`` or ``{"id": N, "errno": E, "message": TEXT}``. Bytes
travel as ``{"bytes": BASE64}``, and a socket in a result as ``{"socket": H}``.
"""

import base64
import errno
import itertools
import json
import sys
import threading

_METHODS = frozenset({"bind", "listen", "accept", "connect", "connect_ex", "send", "sendall", "recv",
                      "shutdown", "close", "setsockopt", "getsockopt", "settimeout", "setblocking",
                      "getsockname", "getpeername"})


def _decode(value):
    if isinstance(value, dict) and "bytes" in value:
        return base64.b64decode(value["bytes"])
    if isinstance(value, list):
        return tuple(_decode(item) for item in value)
    return value


class Agent:
    """The sockets of one test process, keyed by integer handles."""

    def __init__(self, socket_module):
        self._module = socket_module
        self._sockets = {}
        self._handles = itertools.count(1)
        self._lock = threading.Lock()

    def _encode(self, value):
        if isinstance(value, (bytes, bytearray)):
            return {"bytes": base64.b64encode(value).decode()}
        if isinstance(value, (tuple, list)):
            return [self._encode(item) for item in value]
        if hasattr(value, "getsockopt"):
            return {"socket": self._register(value)}
        return value

    def _register(self, sock) -> int:
        handle = next(self._handles)
        self._sockets[handle] = sock
        return handle

    def handle(self, request: dict) -> dict:
        """Run one request and return its reply."""
        args = [_decode(arg) for arg in request.get("args", [])]
        method = request["method"]
        try:
            if method == "socket":
                sock = self._module.socket(*args)
                return {"id": request["id"], "value": {"socket": self._register(sock)}}
            if method not in _METHODS:
                raise OSError(errno.EINVAL, f"method {method!r} is not allowed")
            sock = self._sockets[request["handle"]]
            value = getattr(sock, method)(*args)
            return {"id": request["id"], "value": self._encode(value)}
        except OSError as error:
            if error.errno is None:
                # socket.timeout: the call's own timeout expired, as EAGAIN would report it.
                return {"id": request["id"], "errno": errno.EAGAIN, "message": f"timed out: {error}"}
            return {"id": request["id"], "errno": error.errno, "message": str(error)}

    def serve(self, reader, writer) -> None:
        """Read requests until EOF and run each in a thread of its own."""
        def run(request):
            reply = json.dumps(self.handle(request))
            with self._lock:
                writer.write(reply + "\n")
                writer.flush()

        for line in reader:
            if line.strip():
                threading.Thread(target=run, args=(json.loads(line),), daemon=True).start()


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in ("linux", "sandnet"):
        sys.exit("usage: agent.py linux|sandnet")
    if sys.argv[1] == "linux":
        import socket as socket_module
    else:
        from sandnet import socket as socket_module
    Agent(socket_module).serve(sys.stdin, sys.stdout)


if __name__ == "__main__":
    main()
