"""
The registry of peers: one L{PeerRecord} per peer the mesh knows, one live
connection per peer (with the tie-break of a simultaneous connect), the
snapshots made from the records (L{relaymesh.PeerStatus}), and the
peer events, told to observers and logged one line each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from relaymesh.connection import RelayProtocol
from relaymesh.counters import Traffic
from relaymesh.dispatch import RecentIds, Subscription
from relaymesh.events import Direction, EventKind, PeerEvent, PeerState, PeerStatus


class PeerRecord:
    """
    The mesh's mutable record of one peer.

    @ivar protocol: Its live authenticated connection, or C{None}.
    @ivar recent: The ids it sent recently; made on the first message that
        is not a heartbeat (most of an idle peer's memory would otherwise be
        this window).
    @ivar traffic: The traffic of its closed connections.
    @ivar capabilities: What its latest authenticated connection announced.
    @ivar rtt: Its latest round-trip time in seconds (a C{ping} answered by
        a C{pong}), or C{None} if none was measured.
    @ivar last_error: Why the latest attempt to reach it failed, one line,
        or C{None} (cleared when it connects).
    @ivar last_error_at: When that failure happened (clock seconds).
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
        "rtt",
        "last_error",
        "last_error_at",
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
        self.rtt: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None

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
        encrypted = mutual = None
        if live is not None:
            traffic.add(live.traffic)
            last_seen = live.last_received
            via, hops = self.peer_id, 1
            if live.outcome is not None:
                encrypted, mutual = live.outcome.encrypted, live.outcome.mutual
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
            encrypted=encrypted,
            mutual=mutual,
            last_error=self.last_error,
            last_error_at=self.last_error_at,
        )


def routed_status(destination: str, via: str, hops: int) -> PeerStatus:
    """
    The snapshot of a node known only through routing.
    """
    return PeerStatus.without_traffic(destination, PeerState.ROUTED, via=via, hops=hops)


_EVENT_FORMATS = {
    EventKind.CONNECTING: "connecting to {peer} at {event.address}",
    EventKind.CONNECTED: "peer {peer} connected from {event.address} ({event.direction})",
    EventKind.DISCONNECTED: "peer {peer} disconnected: {event.reason}",
    EventKind.DENIED: "handshake denied with {event.address} ({event.direction}): {event.reason}",
    EventKind.RECONNECT_SCHEDULED: "reconnecting to {peer} at {event.address} in {event.delay:g} s",
}


def log_event(log: Logger, event: PeerEvent, quiet: bool = False) -> None:
    """
    Log one line for a peer event (C{connecting}, and a C{quiet} one, at
    debug level).
    """
    emit = log.debug if quiet or event.kind is EventKind.CONNECTING else log.info
    emit(
        _EVENT_FORMATS[event.kind],
        event=event,
        peer=event.peer_id or ("a node not named yet" if event.address else "(unknown peer)"),
        peer_id=event.peer_id,
    )


PeerObserver = Callable[[PeerEvent], None]

RoundTripObserver = Callable[[str, float], None]


class Registry:
    """
    The peers a node knows and their live connections.

    @ivar identity: This node's peer id.
    @ivar clock: The clock of the snapshots' times.
    @ivar max_peers: How many connected peers an acceptor admits.
    @ivar fresh_for: Seconds during which a connection counts as just made,
        for the tie-break of a simultaneous connect (a heartbeat interval).
    """

    log = Logger()

    def __init__(self, identity: str, clock: IReactorTime, max_peers: int, fresh_for: float) -> None:
        self.identity = identity
        self.clock = clock
        self.max_peers = max_peers
        self.fresh_for = fresh_for
        self.records: dict[str, PeerRecord] = {}
        # how many records hold a live connection, kept as they change, so
        # that admitting a connection does not walk every peer
        self._live = 0
        self._observers: list[PeerObserver] = []
        self._round_trip_observers: list[RoundTripObserver] = []

    # -- the records ---------------------------------------------------------

    def record(self, peer_id: str) -> PeerRecord:
        """
        The record of C{peer_id}, made if there is none.
        """
        peer = self.records.get(peer_id)
        if peer is None:
            peer = self.records[peer_id] = PeerRecord(peer_id)
        return peer

    def live(self) -> Iterator[RelayProtocol]:
        """
        The live authenticated connections.
        """
        for peer in self.records.values():
            if peer.protocol is not None:
                yield peer.protocol

    def connection(self, peer_id: str) -> RelayProtocol | None:
        """
        The peer's live authenticated connection, or C{None}.
        """
        peer = self.records.get(peer_id)
        return None if peer is None else peer.protocol

    def connected_count(self) -> int:
        """
        How many peers are connected.
        """
        return self._live

    # -- connections ---------------------------------------------------------

    def admission_error(self, peer_id: str) -> str | None:
        """
        Why an inbound peer that just proved its key must still be refused,
        or C{None} to admit it.
        """
        if peer_id == self.identity:
            return f"peer claims this node's own id {peer_id}"
        if self.connection(peer_id) is not None:
            return None  # a reconnection replaces the old connection
        if self.connected_count() >= self.max_peers:
            return f"peer limit of {self.max_peers} reached"
        return None

    def add(self, protocol: RelayProtocol) -> bool:
        """
        Make an authenticated connection its peer's live one.

        A new connection replaces an older one of the same peer, except when
        the two were dialled in opposite directions at about the same time
        (both nodes list each other): then both nodes keep the connection
        initiated by the lower peer id and close the other.

        @return: whether the connection was kept.
        """
        peer_id = protocol.peer_id
        outcome = protocol.outcome
        assert peer_id is not None and outcome is not None
        peer = self.record(peer_id)
        old = peer.protocol
        if old is not None and old is not protocol:
            if self._keeps_existing(old, protocol):
                protocol.close("duplicate connection; keeping the one initiated by the lower peer id")
                return False
            old.close("replaced by a newer connection")
        if peer.protocol is None:
            self._live += 1
        peer.protocol = protocol
        peer.state = PeerState.CONNECTED
        peer.address = protocol.address
        peer.direction = protocol.direction
        peer.since = protocol.connected_at
        peer.reconnect_attempt = 0
        peer.next_retry_at = None
        peer.capabilities = outcome.capabilities
        peer.last_error = peer.last_error_at = None
        self.emit(PeerEvent(EventKind.CONNECTED, peer_id, protocol.address, protocol.direction))
        return True

    def _keeps_existing(self, old: RelayProtocol, new: RelayProtocol) -> bool:
        if old.direction == new.direction or old.connected_at is None:
            return False
        if self.clock.seconds() - old.connected_at >= self.fresh_for:
            return False  # the old one is likely stale: the peer dialled again
        assert new.peer_id is not None
        kept = Direction.OUTBOUND if self.identity < new.peer_id else Direction.INBOUND
        return old.direction == kept

    def remove(self, protocol: RelayProtocol, reason: str) -> bool:
        """
        Note that an authenticated connection closed.

        @return: whether it was its peer's live connection (the peer is now
            disconnected).
        """
        peer = self.records.get(protocol.peer_id or "")
        if peer is None:
            return False
        peer.traffic.add(protocol.traffic)
        if peer.protocol is not protocol:
            return False
        peer.protocol = None
        self._live -= 1
        peer.state = PeerState.DISCONNECTED
        peer.since = self.clock.seconds()
        peer.last_seen = protocol.last_received
        self.emit(PeerEvent(EventKind.DISCONNECTED, peer.peer_id, protocol.address, reason=reason))
        return True

    # -- what the factories report -------------------------------------------

    def peer_connecting(self, peer_id: str | None, address: str) -> None:
        """
        Note that this node is dialling C{address} (the peer C{peer_id}).
        """
        if peer_id is not None:
            peer = self.record(peer_id)
            if peer.protocol is not None:
                return
            peer.state = PeerState.CONNECTING
            peer.address = address
            peer.direction = Direction.OUTBOUND
            peer.next_retry_at = None  # the retry is this dial
        self.emit(PeerEvent(EventKind.CONNECTING, peer_id, address, Direction.OUTBOUND))

    def handshake_denied(
        self,
        peer_id: str | None,
        address: str,
        direction: Direction,
        reason: str,
        quiet: bool = False,
    ) -> None:
        """
        Note that a handshake with C{address} failed; C{quiet} when it failed
        for the same reason as the previous attempt (logged at debug level).
        """
        self.emit(PeerEvent(EventKind.DENIED, peer_id, address, direction, reason=reason), quiet)

    def reconnect_scheduled(
        self, peer_id: str | None, address: str, attempt: int, delay: float, quiet: bool = False
    ) -> None:
        """
        Note that the next attempt to reach C{address} is C{delay} seconds
        away; C{quiet} when the last attempt failed for the same reason as
        the one before (logged at debug level).
        """
        if peer_id is not None:
            peer = self.record(peer_id)
            if peer.protocol is None:
                peer.state = PeerState.DISCONNECTED
                peer.reconnect_attempt = attempt
                peer.next_retry_at = self.clock.seconds() + delay
        self.emit(
            PeerEvent(
                EventKind.RECONNECT_SCHEDULED, peer_id, address, Direction.OUTBOUND, delay=delay
            ),
            quiet,
        )

    def failed(self, peer_id: str, reason: str) -> None:
        """
        Note why the latest attempt to reach C{peer_id} failed (its
        L{PeerStatus.last_error}).
        """
        peer = self.record(peer_id)
        if peer.protocol is None:
            peer.last_error = reason
            peer.last_error_at = self.clock.seconds()

    # -- round trips -----------------------------------------------------------

    def round_trip(self, peer_id: str, seconds: float) -> None:
        """
        Record a round-trip time measured on the peer's connection, and tell
        every round-trip observer.
        """
        peer = self.records.get(peer_id)
        if peer is not None:
            peer.rtt = seconds
        for callback in tuple(self._round_trip_observers):
            try:
                callback(peer_id, seconds)
            except Exception:
                self.log.failure("round-trip observer {callback!r} failed", callback=callback)

    def watch_round_trips(self, callback: RoundTripObserver) -> Subscription[RoundTripObserver]:
        """
        Call C{callback(peer_id, seconds)} with every round-trip time
        measured from now on.
        """
        return Subscription(self._round_trip_observers, callback)

    # -- events --------------------------------------------------------------

    def watch(self, callback: PeerObserver) -> Subscription[PeerObserver]:
        """
        Call C{callback(event)} with every L{PeerEvent} from now on.
        """
        return Subscription(self._observers, callback)

    def emit(self, event: PeerEvent, quiet: bool = False) -> None:
        """
        Log an event (at debug level if C{quiet}) and tell every observer;
        an observer that raises is logged, and the others are still told.
        """
        log_event(self.log, event, quiet)
        for callback in tuple(self._observers):
            try:
                callback(event)
            except Exception:
                self.log.failure("peer observer {callback!r} failed", callback=callback)

    # -- snapshots -----------------------------------------------------------

    def statuses(self, hops: dict[str, tuple[str, int]]) -> list[PeerStatus]:
        """
        Snapshots of every peer known, and of every node C{hops} reaches
        (destination -> (next hop, hops)) that is not one, sorted by id.
        """
        statuses = [
            peer.status(*hops.get(peer_id, (None, None))) for peer_id, peer in self.records.items()
        ]
        statuses += [routed_status(d, *hop) for d, hop in hops.items() if d not in self.records]
        return sorted(statuses, key=lambda s: s.peer_id)
