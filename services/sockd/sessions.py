"""Client sessions of sockd: which descriptors each client created.

A client opens a session with the Session stream and sends its id as
"sandnet-session" metadata on every other call. sockd returns EBADF for a
descriptor that the caller's session did not create, and closes a session's
descriptors when its stream ends.
"""

import dataclasses
import uuid

import grpc

SESSION_METADATA = "sandnet-session"


@dataclasses.dataclass
class Session:
    """One client's session: its id, the client name for logs, and its descriptors."""

    id: str
    client: str
    fds: set[int] = dataclasses.field(default_factory=set)


class SessionTable:
    """The open sessions of one sockd, by id."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def open(self, client: str) -> Session:
        """Create a session with a fresh random id."""
        session = Session(id=uuid.uuid4().hex, client=client)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> Session | None:
        """Return the open session with ``session_id``, or None."""
        return self._sessions.get(session_id)

    @staticmethod
    def session_id(context: grpc.aio.ServicerContext) -> str:
        """Return the session id that a call's metadata carries, or ""."""
        return dict(context.invocation_metadata() or ()).get(SESSION_METADATA, "")

    def close(self, session_id: str) -> set[int]:
        """Remove a session and return the descriptors it still owned."""
        session = self._sessions.pop(session_id, None)
        return session.fds if session else set()

    def forget_all_fds(self) -> None:
        """Drop every descriptor of every session, after the backend lost them all."""
        for session in self._sessions.values():
            session.fds.clear()

    async def require(self, context: grpc.aio.ServicerContext) -> Session:
        """Return the caller's session, or abort the call with FAILED_PRECONDITION.

        A missing or unknown session is a protocol error of the caller, not a
        socket failure, so it gets a gRPC status instead of an errno.
        """
        session_id = self.session_id(context)
        session = self._sessions.get(session_id)
        if session is None:
            detail = "unknown" if session_id else "missing"
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{detail} {SESSION_METADATA} metadata {session_id!r}: call Session first and send its id with every call",
            )
        return session
