"""sandnet: a user-space TCP/IP stack for sandboxed workloads.

``sandnet.Client`` is a session with sockd, and ``sandnet.socket`` is the
socket module work-alike (``sandnet.socket.socket``, ``poll``,
``create_connection``). Both load gRPC on first use, so ``import sandnet``
stays cheap.
"""

__all__ = ["Client", "socket"]


def __getattr__(name: str):
    if name == "Client":
        from sandnet.client import Client
        return Client
    if name == "socket":
        import importlib
        return importlib.import_module("sandnet.socket")
    raise AttributeError(f"module 'sandnet' has no attribute {name!r}")
