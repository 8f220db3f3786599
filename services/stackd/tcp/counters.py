"""TCP counters named as Linux names them in /proc/net/snmp and /proc/net/netstat."""

import dataclasses


@dataclasses.dataclass
class TcpCounters:
    """Counters of the ``Tcp:`` line of /proc/net/snmp plus some of ``TcpExt:``.

    The stack owns one instance shared by all connections. Connections count
    segments they process and send; the stack counts what it handles without
    a connection (InErrs for malformed segments, OutRsts for resets it sends).
    """

    ActiveOpens: int = 0
    PassiveOpens: int = 0
    AttemptFails: int = 0
    EstabResets: int = 0
    CurrEstab: int = 0
    InSegs: int = 0
    OutSegs: int = 0
    RetransSegs: int = 0
    InErrs: int = 0
    OutRsts: int = 0
    InCsumErrors: int = 0

    # TcpExt
    TCPTimeouts: int = 0
    TCPSynRetrans: int = 0
    TCPFastRetrans: int = 0
    DelayedACKs: int = 0
    TCPAbortOnData: int = 0
    TCPAbortOnClose: int = 0
    TCPAbortOnTimeout: int = 0
    TCPChallengeACK: int = 0
    TCPACKSkippedChallenge: int = 0
    TCPOFOQueue: int = 0
    TCPWinProbe: int = 0
    TCPKeepAlive: int = 0
    PAWSEstab: int = 0
    TCPSackRecovery: int = 0
    TCPFullUndo: int = 0
    TCPLossProbes: int = 0
    TCPDSACKUndo: int = 0
    TCPRenoRecovery: int = 0
    ListenOverflows: int = 0
    ListenDrops: int = 0
    SyncookiesSent: int = 0
    SyncookiesRecv: int = 0
    SyncookiesFailed: int = 0
    TCPTimeWaitReuse: int = 0
