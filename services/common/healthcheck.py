"""Probe a sandnet service's gRPC health service; the container HEALTHCHECK runs this.

    python -m sandnet_common.healthcheck [ENDPOINT]

ENDPOINT (unix:PATH or tcp:HOST:PORT) defaults to $SANDNET_HEALTH_TARGET.
Exits 0 when the server reports SERVING, 1 otherwise with one line on
stderr, and 0 when no endpoint is configured (a container with no service).
"""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sandnet_common.endpoint import EndpointError, parse_endpoint

TARGET_ENV = "SANDNET_HEALTH_TARGET"
TIMEOUT_SECONDS = 2.0


def check(endpoint_text: str, timeout: float = TIMEOUT_SECONDS) -> str | None:
    """Return None if the server at ``endpoint_text`` is SERVING, else a one-line reason."""
    try:
        endpoint = parse_endpoint(endpoint_text)
    except EndpointError as error:
        return str(error)
    with grpc.insecure_channel(endpoint.grpc_target()) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as error:
            return f"health check of {endpoint} failed: {error.code().name}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{endpoint} reports {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = args[0] if args else os.environ.get(TARGET_ENV, "")
    if not target:
        return 0
    reason = check(target)
    if reason:
        print(f"sandnet healthcheck: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
