"""
A node's Prometheus metrics, and the round-trip times they report.

Each node has its own C{CollectorRegistry} (never the library's global one),
so several nodes in one process, and tests, do not clash. Most numbers are
read when Prometheus scrapes, from counters the mesh keeps anyway
(L{IRelayMesh.peers}); only what the mesh does not count is fed
from its events: handshakes by result, reconnection attempts, delivered
messages by type, and round-trip times.

Round-trip times are measured honestly or not at all. Each heartbeat
interval a node sends every peer that announced C{ping/1} a C{ping}, timed
from the moment it went to the transport, and only when it went at once
(nothing queued ahead of it, send buffer not full); the peer answers with a
C{pong} at once (see L{relaymesh.connection.RelayProtocol.ping}). The
registry records each round trip, and L{RoundTrips} reads them from there.
A claudectl peer is never pinged and has no round-trip time (C{None}), and
neither an C{ack} nor a queued message's wait is ever timed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.internet.interfaces import IReactorTime

from relaymesh._version import __version__
from relaymesh.events import EventKind, PeerEvent, PeerState, PeerStatus
from relaymesh.interfaces import IRelayMesh
from relaymesh.sessions.status import Status
from relaymesh.wire import RelayMessage

#: Buckets of the round-trip time histogram, in seconds.
RTT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: The statuses a session is counted under; any other counts as Unknown.
SESSION_STATUSES = frozenset(status.value for status in Status)

class RoundTrips:
    """
    The round-trip times the node's registry records (C{ping} to C{pong}).

    @ivar last: The latest round-trip time per peer id, in seconds.
    """

    def __init__(self, mesh: IRelayMesh, clock: IReactorTime) -> None:
        """
        @param mesh: The node's mesh; round trips are read from its
            registry.
        @param clock: The node's clock.
        """
        self._mesh = mesh
        self._clock = clock
        self._observers: list[Callable[[str, float], None]] = []
        self.last: dict[str, float] = {}
        self._subscription = mesh.registry.watch_round_trips(self._measured)

    def observe(self, callback: Callable[[str, float], None]) -> None:
        """
        Call C{callback(peer_id, seconds)} with every round-trip time measured.
        """
        self._observers.append(callback)

    def rtt_ms(self, peer_id: str) -> float | None:
        """
        The peer's latest round-trip time in milliseconds, or C{None} if none
        was measured (a claudectl peer, or a relaymesh peer not yet pinged).
        """
        seconds = self.last.get(peer_id)
        return None if seconds is None else round(seconds * 1000, 3)

    def _measured(self, peer_id: str, seconds: float) -> None:
        self.last[peer_id] = seconds
        for callback in tuple(self._observers):
            callback(peer_id, seconds)

    def stop(self) -> None:
        """
        Stop reading round trips.
        """
        self._subscription.cancel()


class _Snapshot:
    """
    What a scrape reports that is read from the mesh, taken in the reactor
    thread so that the exposition may run in another.
    """

    __slots__ = ("peers", "connected", "uptime", "delivered", "routed_rejected", "sessions", "costs")

    def __init__(
        self,
        peers: list[PeerStatus],
        connected: int,
        uptime: float,
        delivered: dict[tuple[str, str], int],
        routed_rejected: dict[str, int] | None = None,
        sessions: dict[tuple[str, str], int] | None = None,
        costs: dict[str, float] | None = None,
    ) -> None:
        self.peers = peers
        self.connected = connected
        self.uptime = uptime
        self.delivered = delivered
        self.routed_rejected = routed_rejected or {}
        self.sessions = sessions or {}
        self.costs = costs or {}


def _session_counts(mesh: IRelayMesh) -> tuple[dict[tuple[str, str], int], dict[str, float]]:
    """
    Sessions per machine and status, and their cost per machine: the node's
    own under its identity, each peer's under its authenticated id. A status
    outside claudectl's counts as C{Unknown}, so a peer cannot mint labels.
    """
    counts: dict[tuple[str, str], int] = {}
    costs: dict[str, float] = {}
    for held in mesh.fleet.lists():
        costs[held.peer_id] = 0.0
        for session in held.sessions:
            if not isinstance(session, dict):
                continue
            status = session.get("status")
            label = status if status in SESSION_STATUSES else "Unknown"
            key = (held.peer_id, label)
            counts[key] = counts.get(key, 0) + 1
            cost = session.get("cost_usd")
            if isinstance(cost, (int, float)) and not isinstance(cost, bool) and math.isfinite(cost):
                costs[held.peer_id] += cost
    return counts, costs


class _MeshCollector:
    """
    The metrics read from the mesh's own counters at scrape time.
    """

    def __init__(self, metrics: NodeMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # the families depend on the peers; describe none up front

    def collect(self) -> Iterator[Metric]:
        snapshot = self._metrics.snapshot
        identity = self._metrics.identity
        info = GaugeMetricFamily(
            "relaymesh_node_info", "This node's identity and version.", labels=["identity", "version"]
        )
        info.add_metric([identity, __version__], 1)
        yield info
        yield GaugeMetricFamily(
            "relaymesh_uptime_seconds", "Seconds since the node started.", value=snapshot.uptime
        )
        yield GaugeMetricFamily(
            "relaymesh_peers_connected", "Peers connected now.", value=snapshot.connected
        )
        up = GaugeMetricFamily(
            "relaymesh_peer_up", "Whether the peer is connected (1) or not (0).", labels=["peer"]
        )
        attempt = GaugeMetricFamily(
            "relaymesh_peer_reconnect_attempt",
            "The peer's current reconnection attempt (0 once connected).",
            labels=["peer"],
        )
        messages = CounterMetricFamily(
            "relaymesh_messages",
            "Relay messages (handshake included) received (in) and sent (out), per peer.",
            labels=["peer", "direction"],
        )
        octets = CounterMetricFamily(
            "relaymesh_bytes",
            "Relay protocol bytes received (in) and sent (out), per peer.",
            labels=["peer", "direction"],
        )
        for peer in snapshot.peers:
            name = peer.peer_id
            up.add_metric([name], 1 if peer.state == PeerState.CONNECTED else 0)
            attempt.add_metric([name], peer.reconnect_attempt)
            messages.add_metric([name, "in"], peer.msgs_in)
            messages.add_metric([name, "out"], peer.msgs_out)
            octets.add_metric([name, "in"], peer.bytes_in)
            octets.add_metric([name, "out"], peer.bytes_out)
        by_type = CounterMetricFamily(
            "relaymesh_messages_received_by_type",
            "Messages delivered to the application (duplicates dropped), per peer and type.",
            labels=["peer", "msg_type"],
        )
        for (peer_id, msg_type), count in sorted(snapshot.delivered.items()):
            by_type.add_metric([peer_id, msg_type], count)
        messages_by_type = CounterMetricFamily(
            "relaymesh_messages_by_type",
            "Relay messages received (in) and sent (out), per peer and type.",
            labels=["peer", "msg_type", "direction"],
        )
        bytes_by_type = CounterMetricFamily(
            "relaymesh_bytes_by_type",
            "Relay protocol bytes received (in) and sent (out), per peer and type.",
            labels=["peer", "msg_type", "direction"],
        )
        for peer in snapshot.peers:
            for msg_type, counts in peer.by_type.items():
                labels = [peer.peer_id, msg_type]
                messages_by_type.add_metric(labels + ["in"], counts["msgs_in"])
                messages_by_type.add_metric(labels + ["out"], counts["msgs_out"])
                bytes_by_type.add_metric(labels + ["in"], counts["bytes_in"])
                bytes_by_type.add_metric(labels + ["out"], counts["bytes_out"])
        rejected = CounterMetricFamily(
            "relaymesh_routed_rejected",
            "Routed messages for this node dropped because their origin could not be "
            "authenticated, by reason (unpaired, forged, malformed).",
            labels=["reason"],
        )
        for reason, count in sorted(snapshot.routed_rejected.items()):
            rejected.add_metric([reason], count)
        sessions = GaugeMetricFamily(
            "relaymesh_sessions",
            "Claude Code sessions per machine (this node's identity, or the peer's) and status.",
            labels=["machine", "status"],
        )
        for (machine, status), count in sorted(snapshot.sessions.items()):
            sessions.add_metric([machine, status], count)
        costs = GaugeMetricFamily(
            "relaymesh_sessions_cost_usd",
            "The estimated cost of the Claude Code sessions listed per machine, in dollars.",
            labels=["machine"],
        )
        for machine, cost in sorted(snapshot.costs.items()):
            costs.add_metric([machine], cost)
        yield from (up, attempt, messages, octets, by_type, messages_by_type, bytes_by_type, rejected)
        yield from (sessions, costs)


class NodeMetrics:
    """
    One node's metrics, in a registry of its own.

    Call L{refresh} in the reactor thread before each exposition: it reads
    the mesh once, and the exposition reports that reading.

    @ivar registry: The node's C{CollectorRegistry}.
    @ivar snapshot: The latest reading of the mesh.
    """

    def __init__(
        self,
        mesh: IRelayMesh,
        clock: IReactorTime,
        round_trips: RoundTrips | None = None,
        started_at: float | None = None,
    ) -> None:
        """
        @param mesh: The node's mesh.
        @param clock: Its clock.
        @param round_trips: Where round-trip times come from; one is made
            for the mesh if C{None}.
        @param started_at: When the node started (clock seconds); now if
            C{None}.
        """
        self._mesh = mesh
        self._clock = clock
        self.identity = mesh.identity
        self.started_at = clock.seconds() if started_at is None else started_at
        self.registry = CollectorRegistry(auto_describe=False)
        self.handshakes = Counter(
            "relaymesh_handshakes",
            "Relay handshakes by result (ok, denied) and direction.",
            ["result", "direction"],
            registry=self.registry,
        )
        self.reconnects = Counter(
            "relaymesh_reconnect_attempts",
            "Reconnection attempts scheduled, per peer.",
            ["peer"],
            registry=self.registry,
        )
        self.rtt = Histogram(
            "relaymesh_rtt_seconds",
            "Round trip from a ping of this node to the peer's pong answering it.",
            ["peer"],
            buckets=RTT_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_MeshCollector(self))
        # (peer, msg_type) -> messages delivered: one dict update per message
        # on the hot path, exposed at scrape time
        self.delivered: dict[tuple[str, str], int] = {}
        self.round_trips = round_trips or RoundTrips(mesh, clock)
        self.round_trips.observe(self._round_trip)
        self._cancels: list[Callable[[], None]] = [
            mesh.watch_peers(self._peer_event).cancel,
            mesh.subscribe(self._message).cancel,
        ]
        self.snapshot = _Snapshot([], 0, 0.0, {})

    def refresh(self) -> None:
        """
        Read the mesh's peers for the next exposition (in the reactor thread).
        """
        mesh = self._mesh
        # a mesh that routes counts the routed messages it refused
        routed_rejected = getattr(mesh, "routed_rejected", None)
        self.snapshot = _Snapshot(
            mesh.peers(),
            mesh.connected_count(),
            self._clock.seconds() - self.started_at,
            dict(self.delivered),
            routed_rejected() if routed_rejected is not None else {},
            *_session_counts(mesh),
        )

    def stop(self) -> None:
        """
        Stop listening to the mesh.
        """
        for cancel in self._cancels:
            cancel()

    def _peer_event(self, event: PeerEvent) -> None:
        if event.kind == EventKind.CONNECTED:
            self.handshakes.labels("ok", event.direction or "").inc()
        elif event.kind == EventKind.DENIED:
            # Not labelled by peer: a denied peer id is whatever was claimed.
            self.handshakes.labels("denied", event.direction or "").inc()
        elif event.kind == EventKind.RECONNECT_SCHEDULED:
            self.reconnects.labels(event.peer_id or event.address or "").inc()

    def _message(self, peer_id: str, message: RelayMessage) -> None:
        key = (peer_id, message.msg_type)
        delivered = self.delivered
        delivered[key] = delivered.get(key, 0) + 1

    def _round_trip(self, peer_id: str, seconds: float) -> None:
        self.rtt.labels(peer_id).observe(seconds)
