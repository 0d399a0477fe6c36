"""
The registry's records: one L{PeerRecord} per peer the mesh knows, the
snapshots made from them (L{relaymesh.events.PeerStatus}), and the log line
of each peer event.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from relaymesh.connection import RelayProtocol
from relaymesh.counters import Traffic
from relaymesh.dispatch import RecentIds
from relaymesh.events import Direction, EventKind, PeerEvent, PeerState, PeerStatus


class PeerRecord:
    """
    The mesh's mutable record of one peer.

    @ivar protocol: Its live authenticated connection, or L{None}.
    @ivar recent: The ids it sent recently; made on the first message that
        is not a heartbeat (most of an idle peer's memory would otherwise be
        this window).
    @ivar traffic: The traffic of its closed connections.
    @ivar capabilities: What its latest authenticated connection announced.
    """

    __slots__ = (
        "peer_id",
        "state",
        "address",
        "direction",
        "since",
        "last_seen",
        "protocol",
        "recent",
        "traffic",
        "sessions",
        "worker_id",
        "sessions_at",
        "reconnect_attempt",
        "next_retry_at",
        "capabilities",
    )

    def __init__(self, peer_id: str) -> None:
        self.peer_id = peer_id
        self.state = PeerState.DISCONNECTED
        self.address: str | None = None
        self.direction: Direction | None = None
        self.since: float | None = None
        self.last_seen: float | None = None
        self.protocol: RelayProtocol | None = None
        self.recent: RecentIds | None = None
        self.traffic = Traffic()
        self.sessions: list[Any] | None = None
        self.worker_id: Any = None
        self.sessions_at = 0.0
        self.reconnect_attempt = 0
        self.next_retry_at: float | None = None
        self.capabilities: frozenset[str] = frozenset()

    def status(self, via: str | None = None, hops: int | None = None) -> PeerStatus:
        """
        A snapshot: the closed connections' traffic plus the live one's.

        @param via: The next hop of a route to it, when it is not connected.
        @param hops: The length of that route.
        """
        traffic = Traffic()
        traffic.add(self.traffic)
        last_seen = self.last_seen
        live = self.protocol
        if live is not None:
            traffic.add(live.traffic)
            last_seen = live.last_received
            via, hops = self.peer_id, 1
        return PeerStatus(
            peer_id=self.peer_id,
            state=self.state,
            address=self.address,
            direction=self.direction,
            since=self.since,
            last_seen=last_seen,
            msgs_in=traffic.msgs_in,
            msgs_out=traffic.msgs_out,
            bytes_in=traffic.bytes_in,
            bytes_out=traffic.bytes_out,
            reconnect_attempt=self.reconnect_attempt,
            next_retry_at=self.next_retry_at,
            via=via,
            hops=hops,
            by_type=traffic.by_type_dict(),
        )


def routed_status(destination: str, via: str, hops: int) -> PeerStatus:
    """
    The snapshot of a node known only through routing.
    """
    return PeerStatus(
        peer_id=destination,
        state=PeerState.ROUTED,
        address=None,
        direction=None,
        since=None,
        last_seen=None,
        msgs_in=0,
        msgs_out=0,
        bytes_in=0,
        bytes_out=0,
        reconnect_attempt=0,
        next_retry_at=None,
        via=via,
        hops=hops,
    )


_EVENT_FORMATS = {
    EventKind.CONNECTING: "connecting to {peer} at {event.address}",
    EventKind.CONNECTED: "peer {peer} connected from {event.address} ({event.direction})",
    EventKind.DISCONNECTED: "peer {peer} disconnected: {event.reason}",
    EventKind.DENIED: "handshake denied with {event.address} ({event.direction}): {event.reason}",
    EventKind.RECONNECT_SCHEDULED: "reconnecting to {peer} at {event.address} in {event.delay:g} s",
}


def log_event(log: Logger, event: PeerEvent) -> None:
    """
    Log one line for a peer event (C{connecting} at debug level).
    """
    emit = log.debug if event.kind is EventKind.CONNECTING else log.info
    emit(
        _EVENT_FORMATS[event.kind],
        event=event,
        peer=event.peer_id or "(unknown peer)",
        peer_id=event.peer_id,
    )
