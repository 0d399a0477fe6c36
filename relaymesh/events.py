"""
The vocabulary of peers and connections: where a peer stands
(L{PeerState}), what happened to it (L{EventKind}), which side dialled
(L{Direction}), and the records built from them (L{PeerEvent},
L{PeerStatus}, L{PeerSessions}).

Every member is also its string value (C{PeerState.CONNECTED ==
"connected"}), which is what the API, the metrics and the logs show, so an
application that compares with strings keeps working.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


class _Name(str, enum.Enum):
    """
    A string enumeration whose C{str()} and C{format()} are its value.
    """

    __str__ = str.__str__

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)


class PeerState(_Name):
    """
    Where a peer stands, as L{PeerStatus.state} says.
    """

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    #: A node that is no peer of this one but reachable through one.
    ROUTED = "routed"


class EventKind(_Name):
    """
    What happened to a peer, as L{PeerEvent.kind} says.
    """

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    DENIED = "denied"
    RECONNECT_SCHEDULED = "reconnect_scheduled"


class Direction(_Name):
    """
    Which side opened a connection.
    """

    #: The peer dialled this node (this node is the acceptor).
    INBOUND = "inbound"
    #: This node dialled the peer (this node is the connector).
    OUTBOUND = "outbound"


@dataclasses.dataclass(frozen=True)
class PeerEvent:
    """
    Something that happened to a peer.

    @ivar kind: An L{EventKind}.
    @ivar peer_id: The peer's id, or C{None} when it is not known (a denied
        connection that claimed no valid id, a dial to a bare address).
    @ivar address: The remote C{host:port}.
    @ivar direction: A L{Direction}, where it applies.
    @ivar reason: Why (disconnected, denied).
    @ivar delay: Seconds until the next attempt (reconnect_scheduled).
    """

    kind: EventKind
    peer_id: str | None
    address: str | None = None
    direction: Direction | None = None
    reason: str | None = None
    delay: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """
        The event as a JSON object, without the fields that do not apply.
        """
        return {
            field.name: _plain(getattr(self, field.name))
            for field in dataclasses.fields(self)
            if getattr(self, field.name) is not None
        }


@dataclasses.dataclass(frozen=True)
class PeerStatus:
    """
    A snapshot of one peer's state.

    Times are clock seconds (epoch seconds with the real reactor).

    @ivar state: A L{PeerState}.
    @ivar via: The neighbour messages for it go through: itself when it is
        connected, the next hop when it is reachable only through routing
        (state L{PeerState.ROUTED}), C{None} when it is unreachable.
    @ivar hops: Links to it: 1 when connected, C{None} when unreachable.
    @ivar by_type: Traffic per message type: C{{msg_type: {"msgs_in",
        "bytes_in", "msgs_out", "bytes_out"}}}.
    @ivar encrypted: Whether its live connection runs over TLS (the
        default between relaymesh nodes); C{None} when not connected.
    @ivar mutual: Whether its live connection's handshake proved the key
        both ways; false for a claudectl peer (one-way, in clear); C{None}
        when not connected.
    @ivar last_error: Why the latest attempt to reach it failed (connection
        refused, timed out, host unknown, a TLS mismatch, a denied
        handshake), one line; C{None} once it connects.
    @ivar last_error_at: When that failure happened (clock seconds).
    """

    peer_id: str
    state: PeerState
    address: str | None
    direction: Direction | None
    since: float | None
    last_seen: float | None
    msgs_in: int
    msgs_out: int
    bytes_in: int
    bytes_out: int
    reconnect_attempt: int
    next_retry_at: float | None
    via: str | None = None
    hops: int | None = None
    by_type: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    encrypted: bool | None = None
    mutual: bool | None = None
    last_error: str | None = None
    last_error_at: float | None = None

    @classmethod
    def without_traffic(
        cls,
        peer_id: str,
        state: PeerState,
        address: str | None = None,
        direction: Direction | None = None,
        last_seen: float | None = None,
        via: str | None = None,
        hops: int | None = None,
    ) -> PeerStatus:
        """
        The snapshot of a peer no connection of this node has carried
        traffic for: one known only through routing, or only from the key
        store.
        """
        return cls(
            peer_id=peer_id,
            state=state,
            address=address,
            direction=direction,
            since=None,
            last_seen=last_seen,
            msgs_in=0,
            msgs_out=0,
            bytes_in=0,
            bytes_out=0,
            reconnect_attempt=0,
            next_retry_at=None,
            via=via,
            hops=hops,
        )

    def to_dict(self) -> dict[str, Any]:
        """
        The snapshot as a JSON object.
        """
        return {k: _plain(v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class PeerSessions:
    """
    A peer's latest session list, from its heartbeats; or this node's own.

    @ivar peer_id: The peer it came from (this node's id for its own).
    @ivar worker_id: The C{worker_id} its heartbeats name (the peer's claim;
        C{peer_id} is the authenticated one).
    @ivar age: Seconds since the heartbeat that carried it (since it was set,
        for this node's own).
    @ivar local: Whether it is this node's own list.
    """

    peer_id: str
    worker_id: Any
    sessions: list[Any]
    age: float
    local: bool = False


def _plain(value: Any) -> Any:
    """
    An enumeration member as its plain string value; anything else as is.
    """
    return value.value if isinstance(value, _Name) else value
