"""The routing table: longest-prefix match over IPv4 and IPv6 routes."""

import dataclasses
import ipaddress


@dataclasses.dataclass(slots=True)
class Route:
    """One route. ``dst`` and ``gateway`` are 4- or 16-byte addresses."""

    family: int  # 4 or 6
    dst: bytes
    dst_len: int
    device: str
    gateway: bytes = b""
    prefsrc: bytes = b""
    metric: int = 0
    scope: str = "global"
    protocol: str = "static"

    def matches(self, ip: bytes) -> bool:
        """Check whether ``ip`` falls inside this route's destination prefix."""
        if len(ip) != len(self.dst):
            return False
        if self.dst_len == 0:
            return True
        shift = len(ip) * 8 - self.dst_len
        return int.from_bytes(ip, "big") >> shift == int.from_bytes(self.dst, "big") >> shift

    def describe(self) -> str:
        """Format the route like iproute2 does, for logs."""
        if self.dst_len == 0:
            text = "default"
        else:
            text = f"{ipaddress.ip_address(self.dst)}/{self.dst_len}"
        if self.gateway:
            text += f" via {ipaddress.ip_address(self.gateway)}"
        return f"{text} dev {self.device}"


MAX_CACHED_DESTINATIONS = 4096


class RouteTable:
    """Routes of both families; lookup picks the longest prefix, then the lowest metric."""

    def __init__(self) -> None:
        self._routes: list[Route] = []
        # Lookups by destination since the table last changed: every packet
        # sent does a lookup, and a scan of the table costs a big-integer
        # shift per route.
        self._cache: dict[bytes, Route | None] = {}

    def add(self, route: Route) -> None:
        """Insert a route, replacing one with the same destination, gateway and device."""
        self._routes = [r for r in self._routes
                        if not (r.dst == route.dst and r.dst_len == route.dst_len
                                and r.gateway == route.gateway and r.device == route.device)]
        self._routes.append(route)
        self._routes.sort(key=lambda r: (-r.dst_len, r.metric))
        self._cache.clear()

    def remove(self, route: Route) -> None:
        """Drop one route, if present."""
        self._routes = [r for r in self._routes if r is not route]
        self._cache.clear()

    def remove_device(self, device: str) -> None:
        """Drop every route through ``device``."""
        self._routes = [r for r in self._routes if r.device != device]
        self._cache.clear()

    def lookup(self, dst: bytes) -> Route | None:
        """Return the best route to ``dst``, or None when it is unreachable."""
        try:
            return self._cache[dst]
        except KeyError:
            pass
        best = next((route for route in self._routes if route.matches(dst)), None)
        if len(self._cache) >= MAX_CACHED_DESTINATIONS:
            self._cache.clear()
        self._cache[dst] = best
        return best

    def routes(self) -> list[Route]:
        """Return every route, most specific first."""
        return list(self._routes)
