"""sandnet: a user-space TCP/IP stack for sandboxed workloads.

``sandnet.Client`` is a session with sockd, and ``sandnet.socket`` is the
socket module work-alike (``sandnet.socket.socket``, ``poll``,
``create_connection``, ``getaddrinfo``). ``sandnet.patch()`` makes the
standard library's socket, selectors and select modules use sandnet. All of
them load gRPC on first use, so ``import sandnet`` stays cheap.
"""

__all__ = ["Client", "is_patched", "patch", "socket", "unpatch"]


def __getattr__(name: str):
    if name == "Client":
        from sandnet.client import Client
        return Client
    if name in ("patch", "unpatch", "is_patched"):
        from sandnet import patching
        return getattr(patching, name)
    if name == "socket":
        import importlib
        return importlib.import_module("sandnet.socket")
    raise AttributeError(f"module 'sandnet' has no attribute {name!r}")
