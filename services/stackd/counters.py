"""Protocol counters, named as in Linux's /proc/net/snmp and /proc/net/netstat.

Each protocol's counters are a plain dataclass of ints that the protocol
code increments directly; ``Counters.snapshot`` flattens them into
("Ip.InReceives", value) pairs for the Netinfo service.
"""

import dataclasses

from sandnet_stackd.tcp import TcpCounters


@dataclasses.dataclass(slots=True)
class LinkCounters:
    """Frames between linkd and the stack, before any protocol accepts them."""

    InFrames: int = 0
    InBytes: int = 0
    InTruncated: int = 0
    InUnknownEtherType: int = 0
    InOtherHost: int = 0
    OutFrames: int = 0
    OutBytes: int = 0
    OutDiscards: int = 0


@dataclasses.dataclass(slots=True)
class ArpCounters:
    InRequests: int = 0
    InReplies: int = 0
    InErrors: int = 0
    OutRequests: int = 0
    OutReplies: int = 0
    ResolutionFailures: int = 0
    UnresolvedDiscards: int = 0


@dataclasses.dataclass(slots=True)
class IpCounters:
    InReceives: int = 0
    InHdrErrors: int = 0
    InAddrErrors: int = 0
    InUnknownProtos: int = 0
    InDiscards: int = 0
    InDelivers: int = 0
    OutRequests: int = 0
    OutDiscards: int = 0
    OutNoRoutes: int = 0
    ReasmTimeout: int = 0
    ReasmReqds: int = 0
    ReasmOKs: int = 0
    ReasmFails: int = 0
    ReasmOverlaps: int = 0
    FragOKs: int = 0
    FragFails: int = 0
    FragCreates: int = 0
    InCsumErrors: int = 0


@dataclasses.dataclass(slots=True)
class IcmpCounters:
    InMsgs: int = 0
    InErrors: int = 0
    InCsumErrors: int = 0
    InDestUnreachs: int = 0
    InTimeExcds: int = 0
    InEchos: int = 0
    InEchoReps: int = 0
    OutMsgs: int = 0
    OutErrors: int = 0
    OutDestUnreachs: int = 0
    OutEchos: int = 0
    OutEchoReps: int = 0
    OutRateLimited: int = 0


@dataclasses.dataclass(slots=True)
class Ip6Counters:
    """IPv6 counters, named as in Linux's /proc/net/snmp6 without the Ip6 prefix."""

    InReceives: int = 0
    InHdrErrors: int = 0
    InAddrErrors: int = 0
    InUnknownProtos: int = 0
    InTruncatedPkts: int = 0
    InDiscards: int = 0
    InDelivers: int = 0
    InHopLimitZero: int = 0
    OutRequests: int = 0
    OutNoRoutes: int = 0
    ReasmTimeout: int = 0
    ReasmReqds: int = 0
    ReasmOKs: int = 0
    ReasmFails: int = 0
    ReasmOverlaps: int = 0
    FragOKs: int = 0
    FragFails: int = 0
    FragCreates: int = 0


@dataclasses.dataclass(slots=True)
class Icmp6Counters:
    """ICMPv6 counters, named as in Linux's /proc/net/snmp6 without the Icmp6 prefix."""

    InMsgs: int = 0
    InErrors: int = 0
    InCsumErrors: int = 0
    InDestUnreachs: int = 0
    InPktTooBigs: int = 0
    InTimeExcds: int = 0
    InParmProblems: int = 0
    InEchos: int = 0
    InEchoReplies: int = 0
    InRouterAdvertisements: int = 0
    InNeighborSolicits: int = 0
    InNeighborAdvertisements: int = 0
    InMLDQueries: int = 0
    OutMsgs: int = 0
    OutErrors: int = 0
    OutDestUnreachs: int = 0
    OutPktTooBigs: int = 0
    OutTimeExcds: int = 0
    OutParmProblems: int = 0
    OutEchos: int = 0
    OutEchoReplies: int = 0
    OutNeighborSolicits: int = 0
    OutNeighborAdvertisements: int = 0
    OutMLDv2Reports: int = 0
    OutRateLimited: int = 0


@dataclasses.dataclass(slots=True)
class Ndp6Counters:
    """Neighbor cache events of IPv6, like Linux's ndisc statistics in ``ip -s ntable``."""

    OutSolicits: int = 0
    ResolutionFailures: int = 0
    UnresolvedDiscards: int = 0
    InUnsolicitedIgnored: int = 0
    InInvalid: int = 0
    DadFailures: int = 0


@dataclasses.dataclass(slots=True)
class UdpCounters:
    InDatagrams: int = 0
    NoPorts: int = 0
    InErrors: int = 0
    OutDatagrams: int = 0
    RcvbufErrors: int = 0
    SndbufErrors: int = 0
    InCsumErrors: int = 0


@dataclasses.dataclass
class Counters:
    """Every counter of one stack."""

    link: LinkCounters = dataclasses.field(default_factory=LinkCounters)
    arp: ArpCounters = dataclasses.field(default_factory=ArpCounters)
    ip: IpCounters = dataclasses.field(default_factory=IpCounters)
    icmp: IcmpCounters = dataclasses.field(default_factory=IcmpCounters)
    udp: UdpCounters = dataclasses.field(default_factory=UdpCounters)
    ip6: Ip6Counters = dataclasses.field(default_factory=Ip6Counters)
    icmp6: Icmp6Counters = dataclasses.field(default_factory=Icmp6Counters)
    ndp6: Ndp6Counters = dataclasses.field(default_factory=Ndp6Counters)
    tcp: TcpCounters = dataclasses.field(default_factory=TcpCounters)

    def snapshot(self) -> list[tuple[str, int]]:
        """Return ("Group.Name", value) pairs in a stable order."""
        groups = (("Link", self.link), ("Arp", self.arp), ("Ip", self.ip), ("Icmp", self.icmp),
                  ("Udp", self.udp), ("Tcp", self.tcp),
                  ("Ip6", self.ip6), ("Icmp6", self.icmp6), ("Ndp6", self.ndp6))
        pairs = []
        for prefix, group in groups:
            for field in dataclasses.fields(group):
                value = getattr(group, field.name)
                if isinstance(value, int):
                    pairs.append((f"{prefix}.{field.name}", value))
        return pairs
