"""
The mesh: the application's interface to the peers, and the registry of
their connections.

L{Mesh} keeps one live connection per peer id (L{relaymesh.registry}),
deduplicates what each peer sends and hands it to the application's
subscribers (L{relaymesh.dispatch}), sends heartbeats with this node's
session list (L{relaymesh.heartbeats}), and reports peer events
(L{relaymesh.events}) to its observers and to the log.

Routing (L{relaymesh.routing.router}) and reliable delivery
(L{relaymesh.reliable.outbox}) are extensions the service plugs in with
L{Mesh.enable_routing} and L{Mesh.enable_reliable}; the mesh knows them only
through the narrow interfaces below and imports neither.

The errors and records an application sees are importable from here too,
as they always were.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from relaymesh.connection import RelayProtocol
from relaymesh.dispatch import (
    DEDUP_WINDOW,
    Dispatcher,
    MessageCallback,
    RecentIds,
    Subscription,
    sendable,
)
from relaymesh.errors import (
    DeliveryTimeout,
    MeshError,
    PeerNotConnected,
    ReliableUnsupported,
    UnknownPeer,
    UnsupportedMessageType,
)
from relaymesh.events import PeerEvent, PeerSessions, PeerStatus
from relaymesh.handshake.base import IssuedNonces
from relaymesh.handshake.proofs import DEFAULT_CAPABILITIES
from relaymesh.heartbeats import DEAD_AFTER_INTERVALS, DEFAULT_HEARTBEAT_INTERVAL, Heartbeats
from relaymesh.interfaces import ILinkOwner, IRelayMesh
from relaymesh.outbound import WriteBatch
from relaymesh.registry import Registry, routed_status
from relaymesh.wire import MessageIds, RelayMessage, encode

__all__ = [
    "DEAD_AFTER_INTERVALS",
    "DEDUP_WINDOW",
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_MAX_PEERS",
    "DeliveryTimeout",
    "Mesh",
    "MeshError",
    "PeerEvent",
    "PeerNotConnected",
    "PeerSessions",
    "PeerStatus",
    "RecentIds",
    "ReliableUnsupported",
    "Subscription",
    "UnknownPeer",
    "UnsupportedMessageType",
]

#: Connected peers at most; more are refused.
DEFAULT_MAX_PEERS = 8  # claudectl 0.49: 8

_HEARTBEAT = "heartbeat"


class RoutingExtension(Protocol):
    """
    What the mesh uses of its router (L{relaymesh.routing.router.Router}).
    """

    capability: str

    @property
    def rejected(self) -> Mapping[str, int]: ...

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def neighbour_up(self, peer_id: str) -> None: ...
    def neighbour_down(self, peer_id: str) -> None: ...
    def take(self, protocol: RelayProtocol, message: RelayMessage, fields: dict[str, Any]) -> bool: ...
    def heartbeat_fields(self, peer_id: str) -> dict[str, Any] | None: ...
    def heartbeat_sent(self) -> None: ...
    def next_hop(self, destination: str) -> tuple[str, int] | None: ...
    def next_hops(self) -> dict[str, tuple[str, int]]: ...
    def send(self, to: str, message: RelayMessage) -> str: ...
    def send_with_fields(
        self, to: str, message: RelayMessage, origin_id: str, extra: dict[str, Any]
    ) -> bool: ...
    def broadcast_routed(self, message: RelayMessage, connected: frozenset[str]) -> list[str]: ...


class ReliableExtension(Protocol):
    """
    What the mesh uses of its reliable delivery
    (L{relaymesh.reliable.outbox.ReliableDelivery}).
    """

    capability: str

    def send(self, peer_id: str, msg_type: str, payload: Any) -> Any: ...
    def stop(self) -> None: ...
    def peer_up(self, peer_id: str) -> None: ...
    def take(self, peer_id: str, message: RelayMessage, fields: dict[str, Any]) -> bool: ...
    def retry_unsent(self) -> None: ...


@implementer(IRelayMesh, ILinkOwner)
class Mesh:
    """
    The registry of peers and the application's interface to them.

    @ivar identity: This node's peer id.
    @ivar clock: The C{IReactorTime} every timer uses.
    @ivar heartbeat_interval: Seconds between heartbeats.
    @ivar idle_timeout: Seconds of silence after which a peer is dropped.
    @ivar max_peers: How many connected peers an acceptor admits.
    @ivar writes: The L{WriteBatch} its connections share (see L{batch}).
    @ivar reliable: The reliable delivery once the node has an outbox (see
        L{enable_reliable}), else C{None}.
    @ivar router: The router once the node routes (see L{enable_routing}),
        else C{None}.
    @ivar registry: The L{Registry} of peers and connections, to which the
        factories report dialling and failed handshakes.
    @ivar issued_nonces: The challenge nonces this node's acceptors issued,
        which its connectors refuse to answer (reflection).
    @ivar fleet: The L{relaymesh.fleet.Fleet} of this node's sessions and its peers'.
    """

    def __init__(
        self,
        identity: str,
        clock: IReactorTime,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        max_peers: int = DEFAULT_MAX_PEERS,
        ids: MessageIds | None = None,
    ) -> None:
        self.identity = identity
        self.clock = clock
        self.heartbeat_interval = heartbeat_interval
        self.idle_timeout = heartbeat_interval * DEAD_AFTER_INTERVALS
        self.max_peers = max_peers
        self._ids = ids or MessageIds()
        self.issued_nonces = IssuedNonces()
        self.registry = Registry(identity, clock, max_peers, heartbeat_interval)
        self._peers = self.registry.records
        self._dispatch = Dispatcher()
        self.writes = WriteBatch()
        self._heartbeats = Heartbeats(
            clock, heartbeat_interval, identity, self.message, self.registry, self.writes
        )
        self.fleet = self._heartbeats.fleet
        self.reliable: ReliableExtension | None = None
        self.router: RoutingExtension | None = None
        # the capabilities whose peers send top-level fields this node reads
        self._field_capabilities: frozenset[str] = frozenset()

    # -- capabilities and extensions -----------------------------------------

    @property
    def capabilities(self) -> tuple[str, ...]:
        """
        What this node announces in its handshakes.
        """
        return DEFAULT_CAPABILITIES + tuple(sorted(self._field_capabilities))

    def enable_reliable(self, reliable: ReliableExtension) -> None:
        """
        Send and acknowledge reliable messages from now on, and announce
        C{ack/1} in the handshakes that start from now on.
        """
        self.reliable = reliable
        self._field_capabilities |= {reliable.capability}

    def enable_routing(self, router: RoutingExtension) -> None:
        """
        Route through, and advertise routes to, peers that announce
        C{route/2}, in the handshakes that start from now on.
        """
        self.router = router
        self._heartbeats.extensions.append(router)
        self._field_capabilities |= {router.capability}

    def reads_fields(self, capabilities: frozenset[str]) -> bool:
        """
        Whether messages from a peer that announced C{capabilities} may carry
        top-level fields this node reads (see L{fields_received}).
        """
        return not self._field_capabilities.isdisjoint(capabilities)

    def announced(self, peer_id: str, capability: str) -> bool:
        """
        Whether the peer's latest authenticated connection announced
        C{capability} (and this node announces it too).
        """
        peer = self._peers.get(peer_id)
        return (
            peer is not None
            and capability in peer.capabilities
            and capability in self._field_capabilities
        )

    def message(self, msg_type: str, payload: Any, from_peer: str | None = None) -> RelayMessage:
        """
        A new message from this node, with a fresh id and the current time.
        """
        now_ms = int(self.clock.seconds() * 1000)
        return RelayMessage(
            self._ids.next(now_ms),
            str(msg_type),
            self.identity if from_peer is None else from_peer,
            now_ms,
            payload,
        )

    # -- heartbeats ----------------------------------------------------------

    def start(self) -> None:
        """
        Start sending heartbeats every L{heartbeat_interval} seconds (and
        early route advertisements, on a node that routes).
        """
        if self.router is not None:
            self.router.start()
        self._heartbeats.start()

    def stop(self) -> None:
        """
        Stop sending heartbeats (and early route advertisements).
        """
        self._heartbeats.stop()
        if self.router is not None:
            self.router.stop()

    def advertise(self) -> None:
        """
        Send every routing neighbour a heartbeat with this node's routes now
        (the routing table changed).
        """
        self._heartbeats.send_extended()

    def routes_changed(self) -> None:
        """
        The routing table changed: reliable messages that have not gone out
        yet may now have a way to their destination.
        """
        if self.reliable is not None:
            self.reliable.retry_unsent()

    def set_sessions(self, sessions: Iterable[Any] | None, worker_id: Any = None) -> None:
        """
        Set the session list that this node's heartbeats carry (peers hear
        of a session's start, end or new status within a second).

        @param sessions: JSON-serializable session objects, or C{None} to send
            bare heartbeats.
        @param worker_id: The C{worker_id} the heartbeats name; this node's
            identity by default.
        @raise relaymesh.wire.WireError: if the list is not JSON-serializable.
        """
        self.fleet.set_local(sessions, worker_id)

    def sessions(self) -> dict[str, PeerSessions]:
        """
        Every peer's latest session list that has not yet expired.
        """
        return self.fleet.sessions()

    # -- called by the connections (ILinkOwner) ------------------------------

    def admission_error(self, peer_id: str) -> str | None:
        """
        Why an inbound peer that just proved its key must still be refused,
        or C{None} to admit it.
        """
        return self.registry.admission_error(peer_id)

    def peer_authenticated(self, protocol: RelayProtocol) -> bool:
        """
        Register a connection whose handshake succeeded (L{Registry.add}),
        and tell the extensions the peer is up.

        @return: whether the connection was kept.
        """
        if not self.registry.add(protocol):
            return False
        peer_id = protocol.peer_id
        assert peer_id is not None
        router = self.router
        if router is not None:
            if self.announced(peer_id, router.capability):
                router.neighbour_up(peer_id)
            else:
                router.neighbour_down(peer_id)
        reliable = self.reliable
        if reliable is not None and self.announced(peer_id, reliable.capability):
            reliable.peer_up(peer_id)
        self._heartbeats.greet(self._peers[peer_id])
        return True

    def connection_lost(self, protocol: RelayProtocol, reason: str) -> None:
        """
        Note that an authenticated connection closed.
        """
        if self.registry.remove(protocol, reason) and self.router is not None:
            assert protocol.peer_id is not None
            self.router.neighbour_down(protocol.peer_id)

    def messages_received(self, protocol: RelayProtocol, messages: Sequence[RelayMessage]) -> None:
        """
        Deliver messages from an authenticated peer, each unless it is a
        duplicate of one of the last L{DEDUP_WINDOW} from that peer
        (heartbeats are not deduplicated), until a subscriber closes the
        connection: see L{relaymesh.dispatch.Dispatcher.deliver_new}.
        """
        peer = self._peers[protocol.peer_id]  # type: ignore[index]
        self._dispatch.deliver_new(peer, messages, self.fleet.received, protocol)

    def fields_received(
        self, protocol: RelayProtocol, message: RelayMessage, fields: dict[str, Any]
    ) -> None:
        """
        Take a message from a peer whose messages may carry top-level fields
        this node reads (L{reads_fields}): C{fields} holds those besides
        the five.

        The router takes a routing neighbour's routed message (and reads
        the routes its heartbeats carry); the reliable delivery takes a
        reliable message and an ack of its outbox; everything else goes on
        as L{messages_received} says.
        """
        if self.router is not None and self.router.take(protocol, message, fields):
            return
        reliable = self.reliable
        if reliable is not None:
            peer_id = protocol.peer_id
            assert peer_id is not None  # only an authenticated connection gets here
            if reliable.take(peer_id, message, fields):
                return
        self.messages_received(protocol, (message,))

    # -- called by the extensions (ExtensionHost) ----------------------------

    def deliver(self, peer_id: str, message: RelayMessage) -> None:
        """
        Hand a new message to the subscribers of its type.
        """
        self._dispatch.deliver(peer_id, message)

    def receive_routed(self, origin: str, message: RelayMessage, fields: dict[str, Any]) -> bool:
        """
        A routed message for this node, as its origin sent it: whether the
        reliable delivery took it.
        """
        return self.reliable is not None and self.reliable.take(origin, message, fields)

    def routable(self, peer_id: str) -> bool:
        """
        Whether a route leads to C{peer_id}.
        """
        return self.router is not None and self.router.next_hop(peer_id) is not None

    def send_routed(
        self, to: str, message: RelayMessage, origin_id: str, fields: dict[str, Any]
    ) -> bool:
        """
        Send C{message} with the extra top-level C{fields} through a route,
        under C{origin_id}.

        @return: whether a route led there.
        """
        return self.router is not None and self.router.send_with_fields(to, message, origin_id, fields)

    def send_line(self, peer_id: str, line: bytes, msg_type: str) -> RelayProtocol | None:
        """
        Write an encoded message (without its C{\\n}) of type C{msg_type} to a
        connected peer.

        @return: the peer's connection (its C{writable} says whether its send
            buffer has room: a relay follows it), or C{None} if not connected.
        """
        protocol = self.registry.connection(peer_id)
        if protocol is not None:
            protocol.sendEncoded(line, msg_type)
        return protocol

    def knows(self, peer_id: str) -> bool:
        """
        Whether the peer authenticated since the mesh started (connected
        now or not), so that its capabilities are known; a peer that is
        only being dialled is not known yet.
        """
        peer = self._peers.get(peer_id)
        return peer is not None and peer.since is not None

    #: C{msg_type} as a string, if an application may send it
    #: (L{relaymesh.dispatch.sendable}).
    sendable = staticmethod(sendable)

    def batch(self) -> WriteBatch:
        """
        Coalesce sends: inside C{with mesh.batch():}, what is sent to each
        peer is written to its connection in one piece when the block ends
        (or whenever 64 KiB are waiting for it), rather than message by
        message. Incoming data is always handled inside a batch.
        """
        return self.writes

    # -- events --------------------------------------------------------------

    def watch_peers(
        self, callback: Callable[[PeerEvent], None]
    ) -> Subscription[Callable[[PeerEvent], None]]:
        """
        Call C{callback(event)} with every L{PeerEvent} from now on.
        """
        return self.registry.watch(callback)

    # -- the application interface (IRelayMesh) ------------------------------

    def subscribe(
        self, callback: MessageCallback, msg_type: str | None = None
    ) -> Subscription[MessageCallback]:
        """
        Call C{callback(peer_id, message)} for every new message of
        C{msg_type} (of every type if C{None}) from any peer.

        A subscription made or cancelled while a message is being delivered
        applies from the next message on.
        """
        return self._dispatch.subscribe(callback, msg_type)

    def send(self, peer_id: str, msg_type: str, payload: Any) -> str:
        """
        Send one message to a connected peer, or, on a node that routes, to
        a node reachable through a routing neighbour (see
        L{relaymesh.routing.router}).

        @return: the message id.
        @raise UnknownPeer: no peer has that id.
        @raise PeerNotConnected: the peer is not connected now.
        @raise UnsupportedMessageType: C{msg_type} is not one the peer accepts.
        @raise relaymesh.wire.WireError: the payload is not JSON or too long.
        """
        peer = self._peers.get(peer_id)
        if peer is None or peer.protocol is None:
            if self.router is not None and self.routable(peer_id):
                return self.router.send(peer_id, self.message(self.sendable(msg_type), payload))
            if peer is None:
                raise UnknownPeer(f"unknown peer {peer_id!r}")
            raise PeerNotConnected(f"peer {peer_id} is not connected")
        message = self.message(self.sendable(msg_type), payload)
        peer.protocol.sendMessage(message)
        return message.id

    def send_reliable(self, peer_id: str, msg_type: str, payload: Any) -> Any:
        """
        Send one message so that it reaches the peer's application exactly
        once, across lost connections and restarts of either node, through
        the reliable delivery (see L{IRelayMesh.send_reliable} and
        L{relaymesh.reliable.outbox}).

        @return: a L{relaymesh.reliable.outbox.Delivery}.
        @raise ReliableUnsupported: this node has no outbox, the peer did not
            announce C{ack/1}, or C{msg_type} is C{heartbeat} or C{ack}.
        """
        if self.reliable is None:
            raise ReliableUnsupported("this node has no outbox for reliable messages")
        return self.reliable.send(peer_id, msg_type, payload)

    def broadcast(self, msg_type: str, payload: Any) -> dict[str, str]:
        """
        Send one message to every connected peer.

        On a node that routes, every other node a route leads to and with
        which this node shares a key gets it too, sealed for it (see
        L{relaymesh.routing.router.Router.broadcast_routed}).

        @return: a mapping of each peer id it went to to the message id.
        @raise UnsupportedMessageType: C{msg_type} is not one peers accept.
        @raise relaymesh.wire.WireError: the payload is not JSON or too long.
        """
        message = self.message(self.sendable(msg_type), payload)
        line = encode(message)
        sent = {}
        for protocol in self.registry.live():
            peer_id = protocol.peer_id
            assert peer_id is not None
            protocol.sendEncoded(line, message.msg_type)
            sent[peer_id] = message.id
        if self.router is not None:
            for peer_id in self.router.broadcast_routed(message, frozenset(sent)):
                sent[peer_id] = message.id
        return sent

    def routed_rejected(self) -> dict[str, int]:
        """Routed messages for this node refused (origin not authenticated), by reason."""
        return dict(self.router.rejected) if self.router is not None else {}

    def is_connected(self, peer_id: str) -> bool:
        """
        Whether the peer has a live authenticated connection.
        """
        return self.registry.connection(peer_id) is not None

    def connected_count(self) -> int:
        """
        How many peers are connected.
        """
        return self.registry.connected_count()

    def connections(self) -> list[RelayProtocol]:
        """
        The live authenticated connections.
        """
        return list(self.registry.live())

    def peer(self, peer_id: str) -> PeerStatus:
        """
        A snapshot of one peer.

        @raise UnknownPeer: no peer has that id.
        """
        peer = self._peers.get(peer_id)
        hop = self.router.next_hop(peer_id) if self.router is not None else None
        if peer is None:
            if hop is None:
                raise UnknownPeer(f"unknown peer {peer_id!r}")
            return routed_status(peer_id, *hop)
        return peer.status(*(hop or (None, None)))

    def peers(self) -> list[PeerStatus]:
        """
        Snapshots of every peer the mesh knows, and of every node reachable
        through routing (state L{PeerState.ROUTED}), sorted by id.
        """
        return self.registry.statuses(self.router.next_hops() if self.router is not None else {})

    def disconnect(self, peer_id: str, reason: str = "disconnected by request") -> bool:
        """
        Close the peer's connection, if it has one.

        @return: whether there was a connection to close.
        """
        protocol = self.registry.connection(peer_id)
        if protocol is None:
            return False
        protocol.close(reason)
        return True
