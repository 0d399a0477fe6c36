"""
Multi-hop routing in a running node: L{relaymesh.routing.table}'s table, duplicate
memory and forwarding rules, wired to the mesh, for peers that announce the
C{route/1} capability.

  - A peer that announced C{route/1} is a routing neighbour while it is
    connected.
  - This node tells each neighbour its routes in a top-level C{routes} field
    of the heartbeats it sends that neighbour (claudectl peers keep getting
    the shared, unchanged heartbeat line), and sooner, in an extra heartbeat,
    when its table changes (at most once per L{ADVERTISE_MIN_INTERVAL}).
  - A message for a node that is not connected but reachable goes to the
    next hop in a routed envelope (the C{route} field); a broadcast floods to
    the neighbours in the envelope and goes plain to the other peers.
  - A routed message that arrives is delivered once (to the application as
    coming from its origin, with its origin id) and forwarded as
    L{relaymesh.routing.table.decide} says: never back, never twice, never
    beyond the hop limit.
  - A reliable message (L{relaymesh.reliable.outbox}) for a node reached through a
    route keeps its C{reliable} field on the way; its destination hands it
    to the reliable delivery, which delivers it once and acknowledges every
    copy, and the ack comes back to the origin as any message does.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from relaymesh.connection import RelayProtocol
from relaymesh.errors import PeerNotConnected
from relaymesh.interfaces import ExtensionHost
from relaymesh.reliable.fields import RELIABLE_FIELD
from relaymesh.routing.table import (
    MAX_HOPS,
    ROUTE_FIELD,
    ROUTING_CAPABILITY,
    EnvelopeError,
    Route,
    RouteHeader,
    RoutingError,
    RoutingTable,
    SeenMessages,
    decide,
    encode_routed,
    header_from_object,
    originate,
)
from relaymesh.wire import MessageType, RelayMessage, dumps

#: The top-level heartbeat field that carries a route advertisement to a
#: routing neighbour.
ADVERTISEMENT_FIELD = "routes"

#: Seconds at least between two advertisements sent because the table
#: changed (the heartbeats carry one every interval besides).
ADVERTISE_MIN_INTERVAL = 1.0


class Router:
    """
    One node's routing: its L{RoutingTable}, its L{SeenMessages}, and the
    rate-limited advertisements.

    @ivar mesh: The node's L{ExtensionHost} (its mesh).
    @ivar table: The L{RoutingTable}.
    @ivar seen: The routed messages seen, by origin and origin id.
    @ivar advertise_interval: Seconds at least between two early
        advertisements.
    """

    log = Logger()

    #: The capability this router gives the node.
    capability = ROUTING_CAPABILITY

    def __init__(
        self,
        mesh: ExtensionHost,
        max_hops: int = MAX_HOPS,
        advertise_interval: float = ADVERTISE_MIN_INTERVAL,
    ) -> None:
        self.mesh = mesh
        self.clock = mesh.clock
        self.table = RoutingTable(mesh.identity, max_hops)
        self.seen = SeenMessages()
        self.advertise_interval = advertise_interval
        self._last_advertised = float("-inf")
        self._advertise_call: IDelayedCall | None = None
        self._neighbours: set[str] = set()
        self._stopped = False

    def start(self) -> None:
        """
        Send early advertisements again (after L{stop}).
        """
        self._stopped = False

    def stop(self) -> None:
        """
        Cancel a pending advertisement, and send no early ones until
        L{start}: a stopping node's table empties as its connections close.
        """
        self._stopped = True
        if self._advertise_call is not None and self._advertise_call.active():
            self._advertise_call.cancel()
        self._advertise_call = None

    # -- neighbours and advertisements ---------------------------------------

    def neighbour_up(self, peer_id: str) -> None:
        """
        A peer that announced C{route/1} authenticated.
        """
        self._neighbours.add(peer_id)
        if self.table.neighbour_up(peer_id):
            self._changed()

    def neighbour_down(self, peer_id: str) -> None:
        """
        A neighbour's connection ended: withdraw the routes through it.
        """
        self._neighbours.discard(peer_id)
        if self.table.neighbour_down(peer_id):
            self._changed()

    def advertised(self, peer_id: str, advertisement: Any) -> None:
        """
        Take the advertisement a neighbour's heartbeat carried; a malformed
        one is logged and ignored.
        """
        try:
            changed = self.table.receive_advertisement(peer_id, advertisement)
        except RoutingError as e:
            self.log.warn(
                "ignoring a malformed route advertisement from {peer_id}: {error}",
                peer_id=peer_id,
                error=e,
            )
            return
        if changed:
            self._changed()

    def heartbeat_fields(self, peer_id: str) -> dict[str, Any] | None:
        """
        The top-level fields of a heartbeat to C{peer_id}: this node's
        advertisement for it if it is a neighbour, else L{None}.
        """
        if peer_id not in self._neighbours:
            return None
        return {ADVERTISEMENT_FIELD: self.table.advertisement_for(peer_id)}

    def take(self, protocol: RelayProtocol, message: RelayMessage, fields: dict[str, Any]) -> bool:
        """
        Look at a message from a peer whose top-level fields this node reads:
        a neighbour's routed message is taken (L{routed}); the advertisement
        a neighbour's heartbeat carries updates the table.

        @return: whether the message was taken (it goes no further).
        """
        peer_id = protocol.peer_id
        if peer_id is None or peer_id not in self._neighbours:
            return False
        if fields.get(ROUTE_FIELD) is not None:
            self.routed(protocol, message, fields)
            return True
        if message.msg_type == MessageType.HEARTBEAT.value and ADVERTISEMENT_FIELD in fields:
            self.advertised(peer_id, fields[ADVERTISEMENT_FIELD])
        return False

    def _changed(self) -> None:
        """
        The table changed: tell the mesh, and advertise soon, at most once
        per interval.
        """
        if self._stopped:
            return
        self.mesh.routes_changed()
        if self._advertise_call is not None:
            return
        delay = max(0.0, self._last_advertised + self.advertise_interval - self.clock.seconds())
        self._advertise_call = self.clock.callLater(delay, self._advertise)

    def _advertise(self) -> None:
        self._advertise_call = None
        self.heartbeat_sent()
        self.mesh.advertise()

    def heartbeat_sent(self) -> None:
        """
        Note that every neighbour was just told the routes (a heartbeat).
        """
        self._last_advertised = self.clock.seconds()

    # -- queries -------------------------------------------------------------

    def route(self, destination: str) -> Route | None:
        """
        The route to C{destination}, or L{None}.
        """
        return self.table.route(destination)

    def next_hop(self, destination: str) -> tuple[str, int] | None:
        """
        The neighbour the route to C{destination} goes through and its
        length in hops, or L{None} without a route.
        """
        route = self.table.route(destination)
        return None if route is None else (route.via, route.hops)

    def next_hops(self) -> dict[str, tuple[str, int]]:
        """
        L{next_hop} of every destination a route leads to.
        """
        return {r.destination: (r.via, r.hops) for r in self.table.routes()}

    # -- sending -------------------------------------------------------------

    def send(self, to: str, message: RelayMessage) -> str:
        """
        Send a message of this node to a destination that is not a
        connected peer, through the next hop.

        @return: the message id.
        @raise PeerNotConnected: no route leads there.
        """
        decision = originate(self.table, self.seen, to, message.id)
        if not decision.targets:
            raise PeerNotConnected(f"peer {to} is not connected and no route leads to it")
        assert decision.header is not None
        line = encode_routed(message, decision.header)
        for target in decision.targets:
            self.mesh.send_line(target, line, message.msg_type)
        return message.id

    def send_with_fields(
        self, to: str, message: RelayMessage, origin_id: str, extra: dict[str, Any]
    ) -> bool:
        """
        Send a copy of a message of this node with extra top-level fields
        (a reliable message's C{"reliable": true}) towards C{to} through the
        next hop, under C{origin_id}.

        @return: whether a route led there.
        """
        decision = originate(self.table, self.seen, to, origin_id)
        if not decision.targets:
            return False
        assert decision.header is not None
        fields = message.to_dict()
        fields.update(extra)
        fields[ROUTE_FIELD] = decision.header.to_object()
        line = dumps(fields)
        for target in decision.targets:
            self.mesh.send_line(target, line, message.msg_type)
        return True

    def flood_line(self, message: RelayMessage) -> tuple[bytes | None, frozenset[str]]:
        """
        Start a broadcast of this node's C{message} through the neighbours.

        @return: the routed line, and the neighbours it is for (none: no
            line).
        """
        decision = originate(self.table, self.seen, None, message.id)
        if not decision.targets:
            return None, frozenset()
        assert decision.header is not None
        return encode_routed(message, decision.header), frozenset(decision.targets)

    # -- receiving -----------------------------------------------------------

    def routed(
        self, protocol: RelayProtocol, message: RelayMessage, fields: dict[str, Any]
    ) -> None:
        """
        Take a routed message from a neighbour (C{fields} is its whole JSON
        object): deliver it here the first time if it is for this node (or
        a broadcast), forward it as L{relaymesh.routing.table.decide} says, and log
        why one that can go no further is dropped. A malformed C{route}
        field ends the connection, as any unparseable line does.

        A reliable message for this node goes to the mesh's reliable
        delivery every time it comes (its copies differ in origin id), which
        delivers it once and acknowledges each copy through the routes; an
        C{ack} for this node of a message in the outbox is taken by it. A
        reliable message keeps its C{reliable} field as it is forwarded.
        """
        neighbour = protocol.peer_id
        assert neighbour is not None
        try:
            header = header_from_object(fields[ROUTE_FIELD])
        except EnvelopeError as e:
            self.log.warn(
                "closing connection to {peer_id}: bad route field: {error}",
                peer_id=neighbour,
                error=e,
            )
            protocol.close(f"bad route field: {e}")
            return
        fresh = (header.origin, header.origin_id) not in self.seen
        decision = decide(self.table, self.seen, header, neighbour)
        reliable_copy = fields.get(RELIABLE_FIELD) is True
        if header.to == self.mesh.identity and (reliable_copy or decision.deliver):
            # a reliable copy is handed over every time (its copies differ
            # in origin id): the reliable delivery delivers it once
            msg_id = message.id if reliable_copy else header.origin_id
            if self.mesh.receive_routed(header.origin, self._end_to_end(header, message, msg_id), fields):
                return
        if decision.deliver:
            self.mesh.deliver(header.origin, self._end_to_end(header, message, header.origin_id))
        if decision.targets:
            assert decision.header is not None
            copy = RelayMessage(
                message.id, message.msg_type, self.mesh.identity, message.timestamp, message.payload
            ).to_dict()
            if reliable_copy:
                copy[RELIABLE_FIELD] = True
            copy[ROUTE_FIELD] = decision.header.to_object()
            line = dumps(copy)
            for target in decision.targets:
                self.mesh.send_line(target, line, message.msg_type)
        elif fresh and header.to is not None and header.to != self.mesh.identity:
            self._dropped(header, message.msg_type, neighbour)

    @staticmethod
    def _end_to_end(header: RouteHeader, message: RelayMessage, msg_id: str) -> RelayMessage:
        """
        A routed message as its origin sent it, for the application.
        """
        return RelayMessage(msg_id, message.msg_type, header.origin, message.timestamp, message.payload)

    def _dropped(self, header: RouteHeader, msg_type: str, neighbour: str) -> None:
        route = self.table.route(header.to) if header.to is not None else None
        if header.hops >= self.table.max_hops or (
            route is not None and header.hops + route.hops > self.table.max_hops
        ):
            why = f"hop limit of {self.table.max_hops} reached"
        else:
            why = "no route onwards"
        self.log.warn(
            "dropping routed {msg_type} {origin_id} from {origin} to {to} "
            "(came from {neighbour} after {hops} hops): {why}",
            msg_type=msg_type,
            origin_id=header.origin_id,
            origin=header.origin,
            to=header.to,
            neighbour=neighbour,
            hops=header.hops,
            why=why,
        )

