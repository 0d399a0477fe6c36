"""
The mesh: the registry of peers, and the interface applications use.

L{Mesh} keeps one live connection per peer id, deduplicates what each peer
sends, dispatches messages to the application's subscribers, sends the
heartbeats, keeps every peer's latest session list, and reports peer events
(connecting, connected, disconnected, denied, reconnect scheduled) to its
observers and to the log, one line per event.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Iterable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from relaymesh.handshake.roles import DEFAULT_CAPABILITIES
from relaymesh.interfaces import IRelayMesh
from relaymesh.connection import INBOUND, OUTBOUND, RelayProtocol, WriteBatch
from relaymesh.routing.table import ROUTE_FIELD
from relaymesh.wire import (
    HANDSHAKE_TYPES,
    MESSAGE_TYPES,
    MessageIds,
    MessageType,
    RelayMessage,
    dumps,
    encode,
)

if TYPE_CHECKING:
    from relaymesh.reliable.outbox import Delivery, ReliableDelivery
    from relaymesh.routing.router import Router
    from relaymesh.routing.table import Route

#: The top-level field that marks a message as reliable (L{relaymesh.reliable.outbox}).
RELIABLE_FIELD = "reliable"

#: The top-level heartbeat field that carries a route advertisement to a
#: routing neighbour (L{relaymesh.routing.router}).
ADVERTISEMENT_FIELD = "routes"

#: Seconds between heartbeats.
DEFAULT_HEARTBEAT_INTERVAL = 30.0  # claudectl 0.49: 30 s

#: Heartbeat intervals of silence after which a peer is dropped, and after
#: which a peer's session list expires.
DEAD_AFTER_INTERVALS = 3  # claudectl 0.49: 3

#: Connected peers at most; more are refused.
DEFAULT_MAX_PEERS = 8  # claudectl 0.49: 8

#: Message ids remembered per sender for deduplication.
DEDUP_WINDOW = 1000  # claudectl 0.49: 1000 (but shared by all peers)

_HEARTBEAT = MessageType.HEARTBEAT.value

CONNECTING = "connecting"
CONNECTED = "connected"
DISCONNECTED = "disconnected"
#: The state of a node that is no peer of this one but reachable through one.
ROUTED = "routed"


class MeshError(Exception):
    """
    A request the mesh cannot carry out; the message says why.
    """


class UnknownPeer(MeshError):
    """
    No peer with that id is known.
    """


class PeerNotConnected(MeshError):
    """
    The peer is known but not connected now.
    """


class UnsupportedMessageType(MeshError, ValueError):
    """
    An application tried to send a message type the peer does not accept.
    """


class ReliableUnsupported(UnsupportedMessageType):
    """
    A reliable message for a peer that did not announce C{ack/1}, for a node
    without an outbox, or of a type that is never sent reliably.
    """


class DeliveryTimeout(MeshError):
    """
    A reliable message was not acknowledged before its deadline.
    """


class RecentIds:
    """
    The last C{size} message ids seen, with O(1) membership and insertion.

    Memory is bounded by C{size} ids: a full window of claudectl-style ids
    takes about 120 KB, which is why a peer gets one only once it sends
    something other than heartbeats (see L{Mesh.message_received}).
    """

    __slots__ = ("_order", "_members", "_size")

    def __init__(self, size: int = DEDUP_WINDOW) -> None:
        self._order: collections.deque[str] = collections.deque()
        self._members: set[str] = set()
        self._size = size

    def seen(self, message_id: str) -> bool:
        """
        Record C{message_id}; return whether it was already among the recent ids.
        """
        members = self._members
        if message_id in members:
            return True
        members.add(message_id)
        order = self._order
        order.append(message_id)
        if len(order) > self._size:
            members.discard(order.popleft())
        return False

    def __len__(self) -> int:
        return len(self._order)


@dataclasses.dataclass(frozen=True)
class PeerEvent:
    """
    Something that happened to a peer.

    @ivar kind: C{"connecting"}, C{"connected"}, C{"disconnected"},
        C{"denied"} or C{"reconnect_scheduled"}.
    @ivar peer_id: The peer's id, or L{None} when it is not known (a denied
        connection that claimed no valid id, a dial to a bare address).
    @ivar address: The remote C{host:port}.
    @ivar direction: C{"inbound"} or C{"outbound"}, where it applies.
    @ivar reason: Why (disconnected, denied).
    @ivar delay: Seconds until the next attempt (reconnect_scheduled).
    """

    kind: str
    peer_id: str | None
    address: str | None = None
    direction: str | None = None
    reason: str | None = None
    delay: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """
        The event as a JSON object, without the fields that do not apply.
        """
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class PeerStatus:
    """
    A snapshot of one peer's state.

    Times are clock seconds (epoch seconds with the real reactor).

    @ivar via: The neighbour messages for it go through: itself when it is
        connected, the next hop when it is reachable only through routing
        (state L{ROUTED}), L{None} when it is unreachable.
    @ivar hops: Links to it: 1 when connected, L{None} when unreachable.
    @ivar by_type: Traffic per message type: C{{msg_type: {"msgs_in",
        "bytes_in", "msgs_out", "bytes_out"}}}.
    """

    peer_id: str
    state: str
    address: str | None
    direction: str | None
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

    def to_dict(self) -> dict[str, Any]:
        """
        The snapshot as a JSON object.
        """
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PeerSessions:
    """
    A peer's latest session list, from its heartbeats.

    @ivar age: Seconds since the heartbeat that carried it.
    """

    peer_id: str
    worker_id: Any
    sessions: list
    age: float


class _Peer:
    """
    The mesh's mutable record of one peer.
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
        "traffic_by_type",
        "sessions",
        "worker_id",
        "sessions_at",
        "reconnect_attempt",
        "next_retry_at",
        "capabilities",
    )

    def __init__(self, peer_id: str) -> None:
        self.peer_id = peer_id
        self.state = DISCONNECTED
        self.address: str | None = None
        self.direction: str | None = None
        self.since: float | None = None
        self.last_seen: float | None = None
        self.protocol: RelayProtocol | None = None
        # made on the first message that is not a heartbeat: most of an idle
        # peer's memory would otherwise be this window
        self.recent: RecentIds | None = None
        # messages in, messages out, bytes in, bytes out of closed connections
        self.traffic = [0, 0, 0, 0]
        # msg_type -> [msgs_in, bytes_in, msgs_out, bytes_out] of closed connections
        self.traffic_by_type: dict[str, list[int]] = {}
        self.sessions: list | None = None
        self.worker_id: Any = None
        self.sessions_at = 0.0
        self.reconnect_attempt = 0
        self.next_retry_at: float | None = None
        # what its latest authenticated connection announced
        self.capabilities: frozenset[str] = frozenset()

    def fold(self, protocol: RelayProtocol) -> None:
        """
        Add a closed connection's traffic to the totals.
        """
        t = self.traffic
        t[0] += protocol.msgs_in
        t[1] += protocol.msgs_out
        t[2] += protocol.bytes_in
        t[3] += protocol.bytes_out
        _add_by_type(self.traffic_by_type, protocol.by_type)


class Subscription:
    """
    A registered callback; L{cancel} removes it.
    """

    def __init__(
        self, registry: list, callback: Callable, changed: Callable[[], None] | None = None
    ) -> None:
        self._registry = registry
        self._changed = changed
        self.callback = callback
        registry.append(callback)
        if changed is not None:
            changed()

    def cancel(self) -> None:
        """
        Stop calling the callback. Cancelling twice does nothing.
        """
        try:
            self._registry.remove(self.callback)
        except ValueError:
            return
        if self._changed is not None:
            self._changed()


@implementer(IRelayMesh)
class Mesh:
    """
    The registry of peers and the application's interface to them.

    @ivar identity: This node's peer id.
    @ivar clock: The L{IReactorTime} every timer uses.
    @ivar heartbeat_interval: Seconds between heartbeats.
    @ivar idle_timeout: Seconds of silence after which a peer is dropped.
    @ivar max_peers: How many connected peers an acceptor admits.
    @ivar writes: The L{WriteBatch} this mesh's connections share (see
        L{batch}).
    @ivar reliable: The L{relaymesh.reliable.outbox.ReliableDelivery} once the node
        has an outbox (see L{enable_reliable}), else L{None}.
    @ivar router: The L{relaymesh.routing.router.Router} once the node routes (see
        L{enable_routing}), else L{None}.
    """

    log = Logger()

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
        self._peers: dict[str, _Peer] = {}
        self._subscribers: dict[str | None, list[Callable]] = {}
        # msg_type -> the callbacks for it, specific ones first, as a tuple;
        # built on first use, dropped whenever a subscription changes
        self._callbacks: dict[str, tuple[Callable, ...]] = {}
        self.writes = WriteBatch()
        self._observers: list[Callable[[PeerEvent], None]] = []
        self._sessions: list | None = None
        self._worker_id: Any = None
        self._heartbeat = LoopingCall(self._tick)
        self._heartbeat.clock = clock
        self.reliable: ReliableDelivery | None = None
        self.router: Router | None = None
        # the capabilities whose peers send top-level fields this node reads
        self._field_capabilities: frozenset[str] = frozenset()

    # -- capabilities --------------------------------------------------------

    @property
    def capabilities(self) -> tuple[str, ...]:
        """
        What this node announces in its handshakes.
        """
        return DEFAULT_CAPABILITIES + tuple(sorted(self._field_capabilities))

    def enable_reliable(self, reliable: ReliableDelivery) -> None:
        """
        Send and acknowledge reliable messages from now on, and announce
        C{ack/1} in the handshakes that start from now on.
        """
        self.reliable = reliable
        self._field_capabilities |= {reliable.capability}

    def enable_routing(self, router: Router) -> None:
        """
        Route through, and advertise routes to, peers that announce
        C{route/1}, in the handshakes that start from now on.
        """
        self.router = router
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

    # -- messages ------------------------------------------------------------

    def message(
        self, msg_type: str, payload: Any, from_peer: str | None = None
    ) -> RelayMessage:
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
        if not self._heartbeat.running:
            d = self._heartbeat.start(self.heartbeat_interval, now=False)
            d.addErrback(lambda f: self.log.failure("heartbeat loop stopped", f))

    def stop(self) -> None:
        """
        Stop sending heartbeats (and early route advertisements).
        """
        if self._heartbeat.running:
            self._heartbeat.stop()
        if self.router is not None:
            self.router.stop()

    def _heartbeat_payload(self, now: float) -> dict:
        if self._sessions is None:
            return {}
        return {
            "worker_id": self._worker_id if self._worker_id is not None else self.identity,
            "timestamp": int(now * 1000),
            "sessions": self._sessions,
        }

    def _tick(self) -> None:
        now = self.clock.seconds()
        heartbeat = self.message(MessageType.HEARTBEAT, self._heartbeat_payload(now))
        line = encode(heartbeat)
        router = self.router
        if router is not None:
            router.advertised_now()
        expiry = self.idle_timeout
        for peer in self._peers.values():
            if peer.protocol is not None:
                try:
                    if router is not None and router.is_neighbour(peer.peer_id):
                        peer.protocol.sendEncoded(router.heartbeat_line(peer.peer_id, heartbeat), _HEARTBEAT)
                    else:
                        peer.protocol.sendEncoded(line, _HEARTBEAT)
                except Exception:
                    self.log.failure("heartbeat to {peer_id} failed", peer_id=peer.peer_id)
            if peer.sessions is not None and now - peer.sessions_at >= expiry:
                peer.sessions = None
                peer.worker_id = None

    def advertise(self) -> None:
        """
        Send every routing neighbour a heartbeat with this node's routes now
        (the routing table changed).
        """
        router = self.router
        if router is None:
            return
        heartbeat = self.message(
            MessageType.HEARTBEAT, self._heartbeat_payload(self.clock.seconds())
        )
        with self.writes:
            for peer in self._peers.values():
                if peer.protocol is not None and router.is_neighbour(peer.peer_id):
                    peer.protocol.sendEncoded(router.heartbeat_line(peer.peer_id, heartbeat), _HEARTBEAT)

    def routes_changed(self) -> None:
        """
        The routing table changed: reliable messages that have not gone out
        yet may now have a way to their destination.
        """
        if self.reliable is not None:
            self.reliable.retry_unsent()

    def set_sessions(self, sessions: Iterable[Any] | None, worker_id: Any = None) -> None:
        """
        Set the session list that this node's heartbeats carry.

        @param sessions: JSON-serializable session objects, or L{None} to send
            bare heartbeats.
        @param worker_id: The C{worker_id} the heartbeats name; this node's
            identity by default.
        @raise relaymesh.wire.WireError: if the list is not JSON-serializable.
        """
        if sessions is None:
            self._sessions = self._worker_id = None
            return
        sessions = list(sessions)
        dumps({"worker_id": worker_id, "sessions": sessions})
        self._sessions = sessions
        self._worker_id = worker_id

    def sessions(self) -> dict[str, PeerSessions]:
        """
        Every peer's latest session list that has not yet expired.
        """
        now = self.clock.seconds()
        return {
            p.peer_id: PeerSessions(p.peer_id, p.worker_id, p.sessions, now - p.sessions_at)
            for p in self._peers.values()
            if p.sessions is not None and now - p.sessions_at < self.idle_timeout
        }

    # -- called by the protocol ----------------------------------------------

    def admission_error(self, peer_id: str) -> str | None:
        """
        Why an inbound peer that just proved its key must still be refused,
        or L{None} to admit it.
        """
        if peer_id == self.identity:
            return f"peer claims this node's own id {peer_id}"
        peer = self._peers.get(peer_id)
        if peer is not None and peer.protocol is not None:
            return None  # a reconnection replaces the old connection
        if self.connected_count() >= self.max_peers:
            return f"peer limit of {self.max_peers} reached"
        return None

    def peer_authenticated(self, protocol: RelayProtocol) -> bool:
        """
        Register a connection whose handshake succeeded.

        A new connection replaces an older one of the same peer, except when
        the two were dialled in opposite directions at about the same time
        (both nodes list each other): then both nodes keep the connection
        initiated by the lower peer id and close the other.

        @return: whether the connection was kept.
        """
        peer_id = protocol.peer_id
        peer = self._peer(peer_id)
        old = peer.protocol
        if old is not None and old is not protocol:
            if self._keeps_existing(old, protocol):
                protocol.close("duplicate connection; keeping the one initiated by the lower peer id")
                return False
            old.close("replaced by a newer connection")
        peer.protocol = protocol
        peer.state = CONNECTED
        peer.address = protocol.address
        peer.direction = protocol.direction
        peer.since = protocol.connected_at
        peer.reconnect_attempt = 0
        peer.next_retry_at = None
        peer.capabilities = protocol.handshake.peer_capabilities
        self._emit(PeerEvent(CONNECTED, peer_id, protocol.address, protocol.direction))
        router = self.router
        if router is not None:
            if self.announced(peer_id, router.capability):
                router.neighbour_up(peer_id)
            else:
                router.neighbour_down(peer_id)
        reliable = self.reliable
        if reliable is not None and self.announced(peer_id, reliable.capability):
            reliable.peer_up(peer_id)
        return True

    def _keeps_existing(self, old: RelayProtocol, new: RelayProtocol) -> bool:
        if old.direction == new.direction:
            return False
        if self.clock.seconds() - old.connected_at >= self.heartbeat_interval:
            return False  # the old one is likely stale: the peer dialled again
        kept = OUTBOUND if self.identity < new.peer_id else INBOUND
        return old.direction == kept

    def connection_lost(self, protocol: RelayProtocol, reason: str) -> None:
        """
        Note that an authenticated connection closed.
        """
        peer = self._peers.get(protocol.peer_id)
        if peer is None:
            return
        peer.fold(protocol)
        if peer.protocol is not protocol:
            return
        peer.protocol = None
        peer.state = DISCONNECTED
        peer.since = self.clock.seconds()
        peer.last_seen = protocol.last_received
        self._emit(PeerEvent(DISCONNECTED, peer.peer_id, protocol.address, reason=reason))
        if self.router is not None:
            self.router.neighbour_down(peer.peer_id)

    def message_received(self, protocol: RelayProtocol, message: RelayMessage) -> None:
        """
        Deliver a message from an authenticated peer, unless it is a duplicate.

        Heartbeats are not deduplicated: delivering one twice only refreshes
        the same session list and liveness again, which is harmless, while
        remembering their ids would cost every idle peer a full window
        (about 120 KB) within 1000 heartbeats. Every other message is
        checked against the last L{DEDUP_WINDOW} ids from the same peer.
        """
        # Runs for every message: no allocation beyond the dedup window's
        # entry, no logging, the subscribers looked up once per type.
        peer = self._peers[protocol.peer_id]
        msg_type = message.msg_type
        if msg_type == "heartbeat":
            payload = message.payload
            if isinstance(payload, dict) and isinstance(payload.get("sessions"), list):
                peer.sessions = payload["sessions"]
                peer.worker_id = payload.get("worker_id")
                peer.sessions_at = self.clock.seconds()
        else:
            recent = peer.recent
            if recent is None:
                recent = peer.recent = RecentIds()
            if recent.seen(message.id):
                return
        self.deliver(peer.peer_id, message)

    def fields_received(
        self, protocol: RelayProtocol, message: RelayMessage, fields: dict[str, Any]
    ) -> None:
        """
        Take a message from a peer whose messages may carry top-level fields
        this node reads (L{reads_fields}): C{fields} is the whole JSON object.

        From a routing neighbour, a message with a C{route} field goes to
        L{router}, and the C{routes} of a heartbeat update its table. A
        reliable message goes to L{reliable}, which delivers and
        acknowledges it; an C{ack} of a message in the outbox is taken by
        it; everything else goes on as L{message_received} says.
        """
        router = self.router
        if router is not None and router.is_neighbour(protocol.peer_id):
            if fields.get(ROUTE_FIELD) is not None:
                router.routed(protocol, message, fields)
                return
            if message.msg_type == "heartbeat" and ADVERTISEMENT_FIELD in fields:
                router.advertised(protocol.peer_id, fields[ADVERTISEMENT_FIELD])
        reliable = self.reliable
        if reliable is not None:
            msg_type = message.msg_type
            if msg_type == "ack":
                if reliable.acknowledged(protocol.peer_id, message.payload):
                    return
            elif fields.get(RELIABLE_FIELD) is True and msg_type != "heartbeat":
                reliable.received(protocol.peer_id, message)
                return
        self.message_received(protocol, message)

    def deliver(self, peer_id: str, message: RelayMessage) -> None:
        """
        Hand a new message to the subscribers of its type.
        """
        msg_type = message.msg_type
        callbacks = self._callbacks.get(msg_type)
        if callbacks is None:
            callbacks = self._callbacks[msg_type] = tuple(
                self._subscribers.get(msg_type, ())
            ) + tuple(self._subscribers.get(None, ()))
        for callback in callbacks:
            try:
                callback(peer_id, message)
            except Exception:
                self.log.failure(
                    "subscriber {callback!r} failed on a {msg_type} from {peer_id}",
                    callback=callback,
                    msg_type=msg_type,
                    peer_id=peer_id,
                )

    # -- called by the factories ---------------------------------------------

    def peer_connecting(self, peer_id: str | None, address: str) -> None:
        """
        Note that this node is dialling C{address} (the peer C{peer_id}).
        """
        if peer_id is not None:
            peer = self._peer(peer_id)
            if peer.protocol is not None:
                return
            peer.state = CONNECTING
            peer.address = address
            peer.direction = OUTBOUND
        self._emit(PeerEvent(CONNECTING, peer_id, address, OUTBOUND))

    def handshake_denied(
        self, peer_id: str | None, address: str, direction: str, reason: str
    ) -> None:
        """
        Note that a handshake with C{address} failed.
        """
        self._emit(PeerEvent("denied", peer_id, address, direction, reason=reason))

    def reconnect_scheduled(
        self, peer_id: str | None, address: str, attempt: int, delay: float
    ) -> None:
        """
        Note that the next attempt to reach C{address} is C{delay} seconds away.
        """
        if peer_id is not None:
            peer = self._peer(peer_id)
            if peer.protocol is None:
                peer.state = DISCONNECTED
                peer.reconnect_attempt = attempt
                peer.next_retry_at = self.clock.seconds() + delay
        self._emit(PeerEvent("reconnect_scheduled", peer_id, address, OUTBOUND, delay=delay))

    def forget(self, peer_id: str) -> None:
        """
        Drop a disconnected peer from the registry (a connected one stays).
        """
        peer = self._peers.get(peer_id)
        if peer is not None and peer.protocol is None:
            del self._peers[peer_id]

    # -- events --------------------------------------------------------------

    def watch_peers(self, callback: Callable[[PeerEvent], None]) -> Subscription:
        """
        Call C{callback(event)} with every L{PeerEvent} from now on.
        """
        return Subscription(self._observers, callback)

    def _emit(self, event: PeerEvent) -> None:
        _log_event(self.log, event)
        for callback in tuple(self._observers):
            try:
                callback(event)
            except Exception:
                self.log.failure("peer observer {callback!r} failed", callback=callback)

    # -- the application interface -------------------------------------------

    def subscribe(
        self, callback: Callable[[str, RelayMessage], None], msg_type: str | None = None
    ) -> Subscription:
        """
        Call C{callback(peer_id, message)} for every new message of
        C{msg_type} (of every type if L{None}) from any peer.

        A subscription made or cancelled while a message is being delivered
        applies from the next message on.
        """
        if msg_type is not None:
            msg_type = str(msg_type)
            if msg_type not in MESSAGE_TYPES:
                raise UnsupportedMessageType(f"unknown message type {msg_type!r}")
        return Subscription(
            self._subscribers.setdefault(msg_type, []), callback, self._callbacks.clear
        )

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
            router = self.router
            if router is not None and router.route(peer_id) is not None:
                return router.send(peer_id, self.message(_sendable(msg_type), payload))
            if peer is None:
                raise UnknownPeer(f"unknown peer {peer_id!r}")
            raise PeerNotConnected(f"peer {peer_id} is not connected")
        message = self.message(_sendable(msg_type), payload)
        peer.protocol.sendMessage(message)
        return message.id

    def send_reliable(self, peer_id: str, msg_type: str, payload: Any) -> Delivery:
        """
        Send one message so that it reaches the peer's application exactly
        once, across lost connections and restarts of either node (see
        L{relaymesh.reliable.outbox}).

        The message is written once it is in the durable outbox; if the
        peer is not connected now, when it reconnects. On a node that
        routes, a node that is not a peer but reachable gets it through its
        route, acknowledged end to end.

        @return: a L{relaymesh.reliable.outbox.Delivery}: its C{accepted()} fires
            with the message id once the message is durable, its
            C{delivered()} once the peer acknowledged it, or fails with
            L{DeliveryTimeout} at the deadline.
        @raise UnknownPeer: no peer has that id, and no route leads to it.
        @raise ReliableUnsupported: this node has no outbox, the peer's
            latest connection did not announce C{ack/1}, or C{msg_type} is
            C{heartbeat} or C{ack}.
        @raise UnsupportedMessageType: C{msg_type} is not one peers accept.
        @raise relaymesh.wire.WireError: the payload is not JSON or too long.
        """
        if self.reliable is None:
            raise ReliableUnsupported("this node has no outbox for reliable messages")
        return self.reliable.send(peer_id, msg_type, payload)

    def send_line(self, peer_id: str, line: bytes, msg_type: str) -> bool:
        """
        Write an encoded message (without its C{\\n}) of type C{msg_type} to a
        connected peer.

        @return: whether the peer was connected.
        """
        peer = self._peers.get(peer_id)
        if peer is None or peer.protocol is None:
            return False
        peer.protocol.sendEncoded(line, msg_type)
        return True

    def knows(self, peer_id: str) -> bool:
        """
        Whether the mesh has a record of the peer (connected or not).
        """
        return peer_id in self._peers

    @staticmethod
    def sendable(msg_type: Any) -> str:
        """
        C{msg_type} as a string, if an application may send it.

        @raise UnsupportedMessageType: if it is unknown or belongs to the
            handshake.
        """
        return _sendable(msg_type)

    def batch(self) -> WriteBatch:
        """
        Coalesce sends: inside C{with mesh.batch():}, what is sent to each
        peer is written to its connection in one piece when the block ends
        (or whenever 64 KiB are waiting for it), rather than message by
        message. Incoming data is always handled inside a batch.
        """
        return self.writes

    def broadcast(self, msg_type: str, payload: Any) -> dict[str, str]:
        """
        Send one message to every connected peer.

        On a node that routes, the routing neighbours get it in a routed
        envelope that floods the mesh, so every routing node delivers it
        exactly once; the other peers get it plain.

        @return: a mapping of each peer id it went to to the message id.
        @raise UnsupportedMessageType: C{msg_type} is not one peers accept.
        @raise relaymesh.wire.WireError: the payload is not JSON or too long.
        """
        message = self.message(_sendable(msg_type), payload)
        line = encode(message)
        routed_line, neighbours = None, frozenset()
        if self.router is not None:
            routed_line, neighbours = self.router.flood_line(message)
        sent = {}
        for peer in self._peers.values():
            if peer.protocol is not None:
                if peer.peer_id in neighbours:
                    peer.protocol.sendEncoded(routed_line, message.msg_type)
                else:
                    peer.protocol.sendEncoded(line, message.msg_type)
                sent[peer.peer_id] = message.id
        return sent

    def is_connected(self, peer_id: str) -> bool:
        """
        Whether the peer has a live authenticated connection.
        """
        peer = self._peers.get(peer_id)
        return peer is not None and peer.protocol is not None

    def connected_count(self) -> int:
        """
        How many peers are connected.
        """
        return sum(1 for p in self._peers.values() if p.protocol is not None)

    def connections(self) -> list[RelayProtocol]:
        """
        The live authenticated connections.
        """
        return [p.protocol for p in self._peers.values() if p.protocol is not None]

    def connected_peers(self) -> list[str]:
        """
        The ids of the connected peers, sorted.
        """
        return sorted(p.peer_id for p in self._peers.values() if p.protocol is not None)

    def peer(self, peer_id: str) -> PeerStatus:
        """
        A snapshot of one peer.

        @raise UnknownPeer: no peer has that id.
        """
        peer = self._peers.get(peer_id)
        route = self.router.route(peer_id) if self.router is not None else None
        if peer is None:
            if route is None:
                raise UnknownPeer(f"unknown peer {peer_id!r}")
            return _routed_status(route)
        return _status(peer, route)

    def peers(self) -> list[PeerStatus]:
        """
        Snapshots of every peer the mesh knows, and of every node reachable
        through routing (state L{ROUTED}), sorted by id.
        """
        statuses = [_status(self._peers[k], None) for k in self._peers]
        if self.router is not None:
            routes = {r.destination: r for r in self.router.table.routes()}
            statuses = [
                dataclasses.replace(s, via=routes[s.peer_id].via, hops=routes[s.peer_id].hops)
                if s.state != CONNECTED and s.peer_id in routes
                else s
                for s in statuses
            ]
            statuses += [_routed_status(r) for d, r in routes.items() if d not in self._peers]
        return sorted(statuses, key=lambda s: s.peer_id)

    def disconnect(self, peer_id: str, reason: str = "disconnected by request") -> bool:
        """
        Close the peer's connection, if it has one.

        @return: whether there was a connection to close.
        """
        peer = self._peers.get(peer_id)
        if peer is None or peer.protocol is None:
            return False
        peer.protocol.close(reason)
        return True

    def _peer(self, peer_id: str) -> _Peer:
        peer = self._peers.get(peer_id)
        if peer is None:
            peer = self._peers[peer_id] = _Peer(peer_id)
        return peer


def _sendable(msg_type: Any) -> str:
    msg_type = str(msg_type)
    if msg_type not in MESSAGE_TYPES:
        raise UnsupportedMessageType(f"unknown message type {msg_type!r}")
    if msg_type in HANDSHAKE_TYPES:
        raise UnsupportedMessageType(f"{msg_type} belongs to the handshake")
    return msg_type


_BY_TYPE_FIELDS = ("msgs_in", "bytes_in", "msgs_out", "bytes_out")


def _add_by_type(totals: dict[str, list[int]], counts: dict[str, list[int]]) -> None:
    for msg_type, values in counts.items():
        total = totals.setdefault(msg_type, [0, 0, 0, 0])
        for i, value in enumerate(values):
            total[i] += value


def _status(peer: _Peer, route: Route | None) -> PeerStatus:
    msgs_in, msgs_out, bytes_in, bytes_out = peer.traffic
    last_seen = peer.last_seen
    live = peer.protocol
    via, hops = (None, None) if route is None else (route.via, route.hops)
    by_type = {t: list(v) for t, v in peer.traffic_by_type.items()}
    if live is not None:
        msgs_in += live.msgs_in
        msgs_out += live.msgs_out
        bytes_in += live.bytes_in
        bytes_out += live.bytes_out
        last_seen = live.last_received
        via, hops = peer.peer_id, 1
        _add_by_type(by_type, live.by_type)
    return PeerStatus(
        peer_id=peer.peer_id,
        state=peer.state,
        address=peer.address,
        direction=peer.direction,
        since=peer.since,
        last_seen=last_seen,
        msgs_in=msgs_in,
        msgs_out=msgs_out,
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        reconnect_attempt=peer.reconnect_attempt,
        next_retry_at=peer.next_retry_at,
        via=via,
        hops=hops,
        by_type={t: dict(zip(_BY_TYPE_FIELDS, v)) for t, v in sorted(by_type.items())},
    )


def _routed_status(route: Route) -> PeerStatus:
    """
    The snapshot of a node known only through routing.
    """
    return PeerStatus(
        peer_id=route.destination,
        state=ROUTED,
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
        via=route.via,
        hops=route.hops,
    )


_EVENT_FORMATS = {
    CONNECTING: "connecting to {peer} at {event.address}",
    CONNECTED: "peer {peer} connected from {event.address} ({event.direction})",
    DISCONNECTED: "peer {peer} disconnected: {event.reason}",
    "denied": "handshake denied with {event.address} ({event.direction}): {event.reason}",
    "reconnect_scheduled": "reconnecting to {peer} at {event.address} in {event.delay:g} s",
}


def _log_event(log: Logger, event: PeerEvent) -> None:
    emit = log.debug if event.kind == CONNECTING else log.info
    emit(
        _EVENT_FORMATS[event.kind],
        event=event,
        peer=event.peer_id or "(unknown peer)",
        peer_id=event.peer_id,
    )
