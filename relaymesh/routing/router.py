"""
Multi-hop routing in a running node: L{relaymesh.routing.table}'s table, duplicate
memory and forwarding rules, wired to the mesh, for peers that announce the
C{route/2} capability, with every routed message sealed end to end
(L{relaymesh.routing.seal}).

  - A peer that announced C{route/2} is a routing neighbour while it is
    connected.
  - This node tells each neighbour its routes in a top-level C{routes} field
    of the heartbeats it sends that neighbour (claudectl peers keep getting
    the shared, unchanged heartbeat line), and sooner, in an extra heartbeat,
    when its table changes (at most once per L{ADVERTISE_MIN_INTERVAL}). It
    takes at most L{relaymesh.routing.table.MAX_ROUTES} destinations from
    one neighbour, and names at most as many itself.
  - A message for a node that is not connected but reachable, and with
    which this node shares a key, goes to the next hop in a routed envelope
    (the C{route} field), its payload sealed for the destination (the
    C{sealed} field). A broadcast goes plain to the connected peers and
    sealed to every other paired node a route leads to.
  - A routed message for another node is forwarded unread as
    L{relaymesh.routing.table.decide} says: never back, never twice, never
    beyond the hop limit.
  - A routed message for this node is delivered only if it opens with the
    key shared with its origin (else it is dropped, logged and counted in
    L{Router.rejected}), once per origin and id (to the application as
    coming from its origin, with its origin id).
  - A reliable message (L{relaymesh.reliable.outbox}) for a node reached through a
    route carries its C{reliable} field inside the seal; its destination
    hands it to the reliable delivery, which delivers it once and
    acknowledges every copy, and the ack comes back to the origin sealed in
    its turn.
"""

from __future__ import annotations

import collections
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from relaymesh.connection import RelayProtocol
from relaymesh.dispatch import RecentIds
from relaymesh.errors import PeerNotConnected, UnknownPeer
from relaymesh.interfaces import ExtensionHost, PairwiseKeys
from relaymesh.printable import printable
from relaymesh.reliable.fields import RELIABLE_FIELD
from relaymesh.routing.envelope import (
    MAX_ORIGIN_ID_LENGTH,
    ROUTE_FIELD,
    EnvelopeError,
    RoutingError,
    envelope,
    routed_line,
)
from relaymesh.routing.seal import UNPAIRED, Sealer, SealError
from relaymesh.routing.table import (
    MAX_HOPS,
    MINE,
    NEW,
    ROUTING_CAPABILITY,
    Route,
    RoutingTable,
    SeenMessages,
    judge,
)
from relaymesh.wire import HANDSHAKE_TYPES, MessageType, RelayMessage, WireError

#: The top-level heartbeat field that carries a route advertisement to a
#: routing neighbour.
ADVERTISEMENT_FIELD = "routes"

#: Seconds at least between two advertisements sent because the table
#: changed (the heartbeats carry one every interval besides).
ADVERTISE_MIN_INTERVAL = 1.0

#: Ids of authenticated routed messages remembered per origin, to deliver
#: each once (a copy that came two ways, or a replay).
DELIVERED_WINDOW = 4096

#: Seconds at most a relay stops reading from a neighbour for a next hop
#: whose send buffer stays full (L{Holds}).
HOLD_AT_MOST = 1.0


def _unpaired(to: str) -> UnknownPeer:
    return UnknownPeer(
        f"peer {to} is not paired with this node: a message through a route is "
        "sealed with the key its two ends share"
    )


class Holds:
    """
    A relay's backpressure: the neighbours it stops reading from while the
    next hop a message of theirs went to cannot take more (its send buffer
    is full), so that a relay buffers about what one chunk read from a
    neighbour makes it send, not whatever a fast neighbour sends a slow one.

    A neighbour is read from again when that next hop has room or its
    connection is gone, and after L{HOLD_AT_MOST} seconds in any case; it
    is then not held again for that next hop until the next hop has had
    room. Relays that hold each other around a loop of routes (each waiting
    for the next to read) are so stalled no longer than that, and then
    buffer as before (up to L{relaymesh.outbound.MAX_SEND_BACKLOG} per
    connection).
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._held: dict[RelayProtocol, IDelayedCall] = {}
        # neighbours whose hold ran out, until that hold's next hop had room
        self._expired: dict[RelayProtocol, IDelayedCall] = {}

    def __contains__(self, inbound: object) -> bool:
        return inbound in self._held

    def hold(self, inbound: RelayProtocol, outbound: Any) -> None:
        """
        Stop reading from C{inbound} until C{outbound} (a connection with
        C{whenWritable}) has room, or for L{HOLD_AT_MOST} seconds.
        """
        if inbound in self._held or inbound in self._expired or inbound.transport is None:
            return
        inbound.transport.pauseProducing()
        call = self._held[inbound] = self.clock.callLater(HOLD_AT_MOST, self._expire, inbound)
        outbound.whenWritable().addCallback(self._writable, inbound, call)

    def _writable(self, _: object, inbound: RelayProtocol, call: IDelayedCall) -> None:
        if self._expired.get(inbound) is call:
            del self._expired[inbound]
        self.release(inbound, call)

    def _expire(self, inbound: RelayProtocol) -> None:
        call = self._held.get(inbound)
        if call is not None:
            self.release(inbound, call)
            self._expired[inbound] = call

    def release(self, inbound: RelayProtocol, call: IDelayedCall | None = None) -> None:
        """
        Read from C{inbound} again, if it is held (by the hold that C{call}
        ends, when given: a later hold is not ended by an earlier one's
        next hop).
        """
        current = self._held.get(inbound)
        if current is None or (call is not None and call is not current):
            return
        del self._held[inbound]
        if current.active():
            current.cancel()
        if inbound.close_reason is None and inbound.transport is not None:
            inbound.transport.resumeProducing()

    def stop(self) -> None:
        """
        Forget every hold and its timer (the node is stopping).
        """
        for call in self._held.values():
            if call.active():
                call.cancel()
        self._held.clear()
        self._expired.clear()


class Router:
    """
    One node's routing: its L{RoutingTable}, its L{SeenMessages}, its
    L{Sealer}, and the rate-limited advertisements.

    @ivar mesh: The node's L{ExtensionHost} (its mesh).
    @ivar table: The L{RoutingTable}.
    @ivar seen: The routed messages passed on, by origin, destination and
        origin id.
    @ivar sealer: Seals this node's routed messages and opens those for it.
    @ivar advertise_interval: Seconds at least between two early
        advertisements.
    @ivar rejected: Routed messages for this node refused because their
        origin could not be authenticated, by reason
        (L{relaymesh.routing.seal.UNPAIRED}, C{FORGED}, C{MALFORMED}).
    @ivar holds: The neighbours not read from while a next hop's send
        buffer is full (L{Holds}).
    """

    log = Logger()

    #: The capability this router gives the node.
    capability = ROUTING_CAPABILITY

    def __init__(
        self,
        mesh: ExtensionHost,
        max_hops: int = MAX_HOPS,
        advertise_interval: float = ADVERTISE_MIN_INTERVAL,
        keys: PairwiseKeys | None = None,
    ) -> None:
        """
        @param keys: The keys this node shares with its peers (the key
            store), with which routed messages are sealed and opened; with
            C{None}, the node only relays.
        """
        self.mesh = mesh
        self.clock = mesh.clock
        self.table = RoutingTable(mesh.identity, max_hops)
        self.seen = SeenMessages()
        self.sealer = Sealer(mesh.identity, keys, clock=mesh.clock)
        self.advertise_interval = advertise_interval
        self.rejected: collections.Counter[str] = collections.Counter()
        self._delivered: dict[str, RecentIds] = {}
        self._last_advertised = float("-inf")
        self._advertise_call: IDelayedCall | None = None
        self._neighbours: set[str] = set()
        self.holds = Holds(self.clock)
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
        self.holds.stop()

    # -- neighbours and advertisements ---------------------------------------

    def neighbour_up(self, peer_id: str) -> None:
        """
        A peer that announced C{route/2} authenticated.
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
        one is logged and ignored; destinations beyond the limit are
        refused, with a log line when their number changes.
        """
        excess_before = self.table.excess.get(peer_id, 0)
        try:
            changed = self.table.receive_advertisement(peer_id, advertisement)
        except RoutingError as e:
            self.log.warn(
                "ignoring a malformed route advertisement from {peer_id}: {error}",
                peer_id=peer_id,
                error=printable(str(e)),
            )
            return
        excess = self.table.excess.get(peer_id, 0)
        if excess and excess != excess_before:
            self.log.warn(
                "refusing {excess} destinations advertised by {peer_id}: "
                "at most {limit} are taken from one neighbour (the nearest)",
                excess=excess,
                peer_id=peer_id,
                limit=self.table.max_routes,
            )
        if changed:
            self._changed()

    def heartbeat_fields(self, peer_id: str) -> dict[str, Any] | None:
        """
        The top-level fields of a heartbeat to C{peer_id}: this node's
        advertisement for it if it is a neighbour, else C{None}.
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
        The route to C{destination}, or C{None}.
        """
        return self.table.route(destination)

    def next_hop(self, destination: str) -> tuple[str, int] | None:
        """
        The neighbour the route to C{destination} goes through and its
        length in hops, or C{None} without a route.
        """
        route = self.table.route(destination)
        return None if route is None else (route.via, route.hops)

    def next_hops(self) -> dict[str, tuple[str, int]]:
        """
        L{next_hop} of every destination a route leads to.
        """
        return {r.destination: (r.via, r.hops) for r in self.table.routes()}

    def paired(self, peer_id: str) -> bool:
        """
        Whether this node shares a key with C{peer_id}, so that it can send
        it routed messages and take routed messages from it.
        """
        return self.sealer.paired(peer_id)

    # -- sending -------------------------------------------------------------

    def send(self, to: str, message: RelayMessage) -> str:
        """
        Send a message of this node to a destination that is not a
        connected peer, sealed, through the next hop.

        @return: the message id.
        @raise UnknownPeer: no key is shared with C{to}.
        @raise PeerNotConnected: no route leads there.
        @raise WireError: the sealed message would be too long.
        """
        try:
            went = self._send_sealed(to, message, message.id, {})
        except SealError as e:
            if e.reason == UNPAIRED:
                raise _unpaired(to) from None
            raise
        if not went:
            if not self.sealer.paired(to):
                raise _unpaired(to)
            raise PeerNotConnected(f"peer {to} is not connected and no route leads to it")
        return message.id

    def send_with_fields(
        self, to: str, message: RelayMessage, origin_id: str, extra: dict[str, Any]
    ) -> bool:
        """
        Send a copy of a message of this node with extra end-to-end fields
        (a reliable message's C{"reliable": true}, sealed with the payload)
        towards C{to} through the next hop, under C{origin_id}.

        @return: whether it went: a route led there, and a key is shared
            with C{to}.
        """
        try:
            return self._send_sealed(to, message, origin_id, extra)
        except (SealError, WireError) as e:
            self.log.warn(
                "routed copy of {msg_id} to {to} not sent: {error}",
                msg_id=printable(message.id),
                to=to,
                error=e,
            )
            return False

    def _send_sealed(
        self, to: str, message: RelayMessage, origin_id: str, extra: dict[str, Any]
    ) -> bool:
        """
        Seal C{message} for C{to} and send it to the next hop, as
        L{relaymesh.routing.table.originate} says.

        A message without a route is not sealed.

        @return: whether a route led there.
        @raise SealError: no key is shared with C{to} (L{UNPAIRED}).
        @raise EnvelopeError: the message cannot be routed (its id or type).
        @raise WireError: the line would be too long.
        """
        # Once per message this node sends through a route: the route looked
        # up once, the key once (by the sealer), and the line encoded from
        # parts known valid (the destination has a route, so it is a valid
        # id other than this node's) after cheap checks of the rest.
        identity = self.mesh.identity
        targets = self.table.forward_targets(identity, None, to, 0)
        if not targets:
            return False
        msg_id = message.id
        msg_type = message.msg_type
        if msg_type in HANDSHAKE_TYPES:
            raise EnvelopeError(f"a {msg_type} cannot be routed")
        if len(msg_id) > MAX_ORIGIN_ID_LENGTH:
            raise EnvelopeError(f"a routed message id is at most {MAX_ORIGIN_ID_LENGTH} characters")
        if type(origin_id) is not str or not 0 < len(origin_id) <= MAX_ORIGIN_ID_LENGTH:
            raise EnvelopeError(
                f"route field 'origin_id' must be a string of 1 to {MAX_ORIGIN_ID_LENGTH} characters"
            )
        sealed = self.sealer.seal(to, message, origin_id, extra)
        line = routed_line(
            msg_id, msg_type, identity, message.timestamp, (identity, to, 1, origin_id), sealed
        )
        for target in targets:
            self.mesh.send_line(target, line, msg_type)
        return True

    def broadcast_routed(self, message: RelayMessage, connected: frozenset[str]) -> list[str]:
        """
        The routed part of a broadcast of this node's C{message}: a sealed
        copy to every node a route leads to that is not in C{connected}
        (they get the plain message) and with which this node shares a key.
        A flood cannot be authenticated with pairwise keys, so a broadcast
        is one sealed message per paired destination; a node this one is
        not paired with gets no copy.

        @return: the destinations a copy went to, sorted.
        """
        sent = []
        for route in self.table.routes():
            to = route.destination
            if to in connected or not self.sealer.paired(to):
                continue
            try:
                went = self._send_sealed(to, message, message.id, {})
            except (SealError, WireError) as e:
                self.log.warn(
                    "broadcast {msg_id} not sent through routes: {error}",
                    msg_id=message.id,
                    error=e,
                )
                break
            if went:
                sent.append(to)
        return sent

    # -- receiving -----------------------------------------------------------

    def routed(
        self, protocol: RelayProtocol, message: RelayMessage, fields: dict[str, Any]
    ) -> None:
        """
        Take a routed message from a neighbour (C{fields} is its whole JSON
        object): open it if it is for this node (L{_arrived}), else forward
        it unread as L{relaymesh.routing.table.decide} says, and log why one
        that can go no further is dropped. A malformed C{route} or
        C{sealed} field ends the connection, as any unparseable line does.
        """
        # Once per routed message: the header checked once, into plain
        # values (relaymesh.routing.table.envelope), and the forwarded line
        # encoded from them, with no message or header object per hop.
        neighbour = protocol.peer_id
        assert neighbour is not None
        try:
            origin, to, hops, origin_id, sealed = envelope(message, fields)
        except EnvelopeError as e:
            self.log.warn(
                "closing connection to {peer_id}: bad routed message: {error}",
                peer_id=neighbour,
                error=printable(str(e)),
            )
            protocol.close(f"bad routed message: {e}")
            return
        verdict, targets = judge(self.table, self.seen, origin, to, hops, origin_id, neighbour)
        if verdict == MINE:
            self._arrived(origin, origin_id, message, sealed, neighbour)
        elif targets:
            try:
                line = routed_line(
                    message.id,
                    message.msg_type,
                    self.mesh.identity,
                    message.timestamp,
                    (origin, to, hops + 1, origin_id),
                    sealed,
                )
            except WireError as e:  # this node's id made the line too long
                self.log.warn(
                    "dropping routed {msg_type} {origin_id} from {origin}: {error}",
                    msg_type=message.msg_type,
                    origin_id=printable(origin_id),
                    origin=origin,
                    error=e,
                )
                return
            for target in targets:
                sent = self.mesh.send_line(target, line, message.msg_type)
                # (a host may answer only whether it sent)
                if sent and not getattr(sent, "writable", True):
                    self.holds.hold(protocol, sent)
        elif verdict == NEW:
            self._dropped(origin, to, hops, origin_id, message.msg_type, neighbour)

    def _arrived(
        self, origin: str, origin_id: str, message: RelayMessage, sealed: str, neighbour: str
    ) -> None:
        """
        A routed message for this node: open it with the key shared with
        its origin, or drop, log and count it; hand a reliable one to the
        reliable delivery every time (its copies differ in origin id, and
        each is acknowledged), and deliver any other once per origin and id.
        """
        try:
            payload, extra = self.sealer.open(origin, message, origin_id, sealed)
        except SealError as e:
            self.rejected[e.reason] += 1
            self.log.warn(
                "rejecting routed {msg_type} {origin_id} from {origin} "
                "(came from {neighbour}): {why}",
                msg_type=message.msg_type,
                origin_id=printable(origin_id),
                origin=printable(origin),
                neighbour=neighbour,
                why=printable(str(e)),
            )
            return
        reliable = extra.get(RELIABLE_FIELD) is True
        msg_id = message.id if reliable else origin_id
        end_to_end = RelayMessage(msg_id, message.msg_type, origin, message.timestamp, payload)
        if reliable and self.mesh.receive_routed(origin, end_to_end, extra):
            return
        recent = self._delivered.get(origin)
        if recent is None:
            recent = self._delivered[origin] = RecentIds(DELIVERED_WINDOW)
        if recent.seen(msg_id):
            return
        if not reliable and self.mesh.receive_routed(origin, end_to_end, extra):
            return
        self.mesh.deliver(origin, end_to_end)

    def _dropped(
        self, origin: str, to: str, hops: int, origin_id: str, msg_type: str, neighbour: str
    ) -> None:
        route = self.table.route(to)
        if hops >= self.table.max_hops or (
            route is not None and hops + route.hops > self.table.max_hops
        ):
            why = f"hop limit of {self.table.max_hops} reached"
        else:
            why = "no route onwards"
        self.log.warn(
            "dropping routed {msg_type} {origin_id} from {origin} to {to} "
            "(came from {neighbour} after {hops} hops): {why}",
            msg_type=msg_type,
            origin_id=printable(origin_id),
            origin=origin,
            to=to,
            neighbour=neighbour,
            hops=hops,
            why=why,
        )
