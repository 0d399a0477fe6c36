"""
Multi-hop routing between nodes that announced it: pure logic, no I/O.

Three parts, each usable and testable alone:

  - L{RoutingTable}: a distance-vector table. Each node tells each
    routing-capable neighbour how many hops away every destination is
    (L{RoutingTable.advertisement_for}); from what its neighbours tell it
    (L{RoutingTable.receive_advertisement}) it keeps the shortest route to
    each destination. Routes learned through a neighbour are advertised back
    to it as unreachable (split horizon with poisoned reverse); a route longer
    than the hop limit is no route, which bounds counting to infinity; routes
    through a neighbour that drops are withdrawn at once, and the withdrawal
    travels on as an L{INFINITY} metric.
  - L{SeenMessages} and L{decide}: the per-node rules for a routed message:
    forward it along the route once, never back where it came from, never
    beyond the hop limit; take it here if it is for this node (its origin
    is authenticated, and copies dropped, by the router, see
    L{relaymesh.routing.seal}).
  - The routed envelope (L{RouteHeader}, L{encode_routed},
    L{header_from_object}) is L{relaymesh.routing.envelope}'s, and
    importable from here too.

Hops count links: a neighbour is 1 hop away, and a routed message's C{hops}
is the number of links it has crossed when it arrives.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from relaymesh.peerid import is_valid_peer_id, validate_peer_id
from relaymesh.routing.envelope import (
    MAX_ORIGIN_ID_LENGTH,
    MAX_WIRE_HOPS,
    ROUTE_FIELD,
    SEALED_FIELD,
    EnvelopeError,
    RouteHeader,
    RoutingError,
    check_envelope,
    encode_routed,
    envelope,
    header_from_object,
    route_fields,
    routed_line,
)

__all__ = [
    # the routed envelope, from relaymesh.routing.envelope
    "MAX_ORIGIN_ID_LENGTH", "MAX_WIRE_HOPS", "ROUTE_FIELD", "SEALED_FIELD", "EnvelopeError",
    "RouteHeader", "RoutingError", "check_envelope", "encode_routed", "envelope",
    "header_from_object", "route_fields", "routed_line",
    # the table and the forwarding rules
    "ADVERTISEMENT_VERSION", "DUPLICATE", "INFINITY", "MAX_HOPS", "MAX_ROUTES", "MINE", "NEW",
    "OWN", "ROUTING_CAPABILITY", "SEEN_CAPACITY", "SHORTER", "Decision", "Route",
    "RoutingTable", "SeenMessages", "decide", "judge", "originate", "parse_advertisement",
]

#: The capability a node announces when it routes and understands the
#: C{route} and C{sealed} fields and advertisements. (C{route/1}, whose
#: routed messages were not sealed, is no longer spoken.)
ROUTING_CAPABILITY = "route/2"

#: The default hop limit: no route, and no routed message, goes further.
MAX_HOPS = 8

#: The metric that means "unreachable" in an advertisement. It is fixed by
#: the protocol, not by a node's hop limit, so nodes with different limits
#: agree on what a withdrawal is; a node's hop limit must stay below it, as
#: the hops a routed message carries do (L{MAX_WIRE_HOPS}).
INFINITY = MAX_WIRE_HOPS + 1  # 16, as in RIP

#: The most destinations a node accepts from one neighbour's advertisement
#: (the nearest; the rest are refused), and the most entries an
#: advertisement of its own names (the nearest first).
MAX_ROUTES = 256

#: The version of the advertisement format.
ADVERTISEMENT_VERSION = 1

#: Routed messages remembered per node for deduplication.
SEEN_CAPACITY = 65536

#: What L{SeenMessages.check} says about a message.
NEW = "new"
SHORTER = "shorter"
DUPLICATE = "duplicate"

#: What L{judge} says besides: a routed message for this node, and one of
#: this node's own that came back.
MINE = "mine"
OWN = "own"


@dataclasses.dataclass(frozen=True, order=True)
class Route:
    """
    The way to one destination.

    @ivar destination: The node the route leads to.
    @ivar via: The neighbour to send through; the destination itself when it
        is a neighbour.
    @ivar hops: The number of links to the destination, 1 for a neighbour.
    """

    destination: str
    via: str
    hops: int

    @property
    def direct(self) -> bool:
        """
        Whether the destination is a neighbour.
        """
        return self.via == self.destination

    def to_dict(self) -> dict[str, Any]:
        """
        The route as a JSON object, for status displays.
        """
        return {"destination": self.destination, "via": self.via, "hops": self.hops}


class RoutingTable:
    """
    One node's distance-vector routing table.

    Call L{neighbour_up} and L{neighbour_down} as routing-capable peers
    connect and disconnect, L{receive_advertisement} with what each sends,
    and send each neighbour L{advertisement_for} it periodically (with the
    heartbeat) and whenever a call returned C{True} (the table changed).

    @ivar identity: This node's peer id.
    @ivar max_hops: The hop limit.
    @ivar max_routes: The most destinations taken from one neighbour, and
        the most entries of an advertisement (L{MAX_ROUTES}).
    @ivar excess: Per neighbour, how many reachable destinations its latest
        advertisement named beyond L{max_routes} (refused).
    """

    def __init__(
        self, identity: str, max_hops: int = MAX_HOPS, max_routes: int = MAX_ROUTES
    ) -> None:
        """
        @raise relaymesh.peerid.InvalidPeerId: for an invalid identity.
        @raise ValueError: for a hop limit outside 1 to C{INFINITY - 1}.
        """
        self.identity = validate_peer_id(identity)
        if type(max_hops) is not int or not 1 <= max_hops < INFINITY:
            raise ValueError(f"hop limit must be an integer from 1 to {INFINITY - 1}")
        if type(max_routes) is not int or max_routes < 1:
            raise ValueError("the route limit must be a positive integer")
        self.max_hops = max_hops
        self.max_routes = max_routes
        self.excess: dict[str, int] = {}
        # What each neighbour last said: destination -> its hops from there.
        self._vectors: dict[str, dict[str, int]] = {}
        self._routes: dict[str, Route] = {}
        # Per neighbour, destinations withdrawn but not yet advertised to it.
        self._untold: dict[str, set[str]] = {}

    # -- neighbours ----------------------------------------------------------

    def neighbour_up(self, neighbour: str) -> bool:
        """
        A routing-capable peer connected.

        @return: whether the routes changed.
        @raise RoutingError: for an invalid id or this node's own.
        """
        self._check_neighbour_id(neighbour)
        if neighbour in self._vectors:
            return False
        self._vectors[neighbour] = {}
        self._untold[neighbour] = set()
        return self._recompute()

    def neighbour_down(self, neighbour: str) -> bool:
        """
        A neighbour disconnected: withdraw every route through it.

        @return: whether the routes changed.
        """
        if neighbour not in self._vectors:
            return False
        del self._vectors[neighbour]
        del self._untold[neighbour]
        self.excess.pop(neighbour, None)
        return self._recompute()

    def neighbours(self) -> list[str]:
        """
        The routing-capable neighbours, sorted.
        """
        return sorted(self._vectors)

    def _check_neighbour_id(self, neighbour: Any) -> None:
        if not is_valid_peer_id(neighbour):
            raise RoutingError("neighbour is not a valid peer id")
        if neighbour == self.identity:
            raise RoutingError("a node is not its own neighbour")

    # -- advertisements ------------------------------------------------------

    def advertisement_for(self, neighbour: str) -> dict[str, Any]:
        """
        What to tell C{neighbour} about the routes of this node.

        Every destination this node reaches, with its hop count, except the
        neighbour itself; routes through C{neighbour} as L{INFINITY}
        (poisoned reverse); and routes withdrawn since the last advertisement
        to it as L{INFINITY}. Calling this counts those withdrawals as told.

        It names at most L{max_routes} destinations, so that every receiver
        takes all of it: the nearest reachable ones first (by hops, then
        id), then the L{INFINITY} entries while there is room. A destination
        left out is unreachable through this node for the receiver, as an
        advertisement replaces the one before, so the L{INFINITY} entries
        only say so sooner.

        @return: C{{"v": 1, "routes": {destination: hops}}}, JSON-ready.
        @raise RoutingError: if C{neighbour} is not a neighbour.
        """
        untold = self._untold.get(neighbour)
        if untold is None:
            raise RoutingError(f"{neighbour!r} is not a routing neighbour")
        reachable: list[tuple[int, str]] = []
        unreachable: list[str] = []
        for destination, route in self._routes.items():
            if destination == neighbour:
                continue
            if route.via == neighbour:
                unreachable.append(destination)
            else:
                reachable.append((route.hops, destination))
        # Never a destination with a route, nor the neighbour itself (which
        # has one while it is a neighbour): _recompute drops those.
        unreachable.extend(untold)
        untold.clear()
        limit = self.max_routes
        if len(reachable) > limit:
            reachable.sort()
            del reachable[limit:]
        routes = {destination: hops for hops, destination in reachable}
        room = limit - len(routes)
        if len(unreachable) > room:
            unreachable.sort()
            del unreachable[room:]
        routes.update((destination, INFINITY) for destination in unreachable)
        return {"v": ADVERTISEMENT_VERSION, "routes": dict(sorted(routes.items()))}

    def receive_advertisement(self, neighbour: str, advertisement: Any) -> bool:
        """
        Take in what C{neighbour} says about its routes.

        An advertisement replaces the neighbour's previous one: a destination
        it no longer names is no longer reachable through it. One from a
        peer that is not a neighbour (it never came up) is ignored. Of the
        destinations it names reachable, the nearest L{max_routes} are taken
        and the others refused (counted in L{excess}).

        @return: whether the routes changed.
        @raise RoutingError: if the advertisement is malformed.
        """
        vector = parse_advertisement(advertisement)
        if neighbour not in self._vectors:
            return False
        vector.pop(self.identity, None)
        vector.pop(neighbour, None)
        excess = len(vector) - self.max_routes
        if excess > 0:
            nearest = sorted(vector.items(), key=lambda item: (item[1], item[0]))
            vector = dict(nearest[: self.max_routes])
            self.excess[neighbour] = excess
        else:
            self.excess.pop(neighbour, None)
        if vector == self._vectors[neighbour]:
            return False
        self._vectors[neighbour] = vector
        return self._recompute()

    def _recompute(self) -> bool:
        """
        Choose the best route to every destination from the neighbours'
        vectors; note the withdrawals.

        @return: whether any route changed.
        """
        old = self._routes
        best: dict[str, tuple[int, int, str]] = {}
        limit = self.max_hops
        for neighbour, vector in self._vectors.items():
            best[neighbour] = (1, 0, neighbour)
            for destination, their_hops in vector.items():
                hops = their_hops + 1
                if hops > limit or destination in self._vectors:
                    continue
                current = old.get(destination)
                # Shortest first; among equals keep the current route (no
                # flapping), then the lowest neighbour id (deterministic).
                key = (
                    hops,
                    0 if current is not None and current.via == neighbour else 1,
                    neighbour,
                )
                if destination not in best or key < best[destination]:
                    best[destination] = key
        new = {d: Route(d, via, hops) for d, (hops, _, via) in best.items()}
        if new == old:
            return False
        self._routes = new
        withdrawn = old.keys() - new.keys()
        for untold in self._untold.values():
            untold.difference_update(new)
            untold.update(withdrawn)
        return True

    # -- queries -------------------------------------------------------------

    def next_hop(self, destination: str) -> str | None:
        """
        The neighbour to send a message for C{destination} to, or C{None}
        when no route is known.
        """
        route = self._routes.get(destination)
        return None if route is None else route.via

    def route(self, destination: str) -> Route | None:
        """
        The route to C{destination}, or C{None}.
        """
        return self._routes.get(destination)

    def routes(self) -> list[Route]:
        """
        Every route, sorted by destination.
        """
        return [self._routes[d] for d in sorted(self._routes)]

    # -- forwarding ----------------------------------------------------------

    def forward_targets(
        self, origin: str, from_neighbour: str | None, destination: str, hops: int
    ) -> list[str]:
        """
        The neighbours a routed message goes on to from this node.

        @param origin: The node that first sent it.
        @param from_neighbour: The neighbour it came from; C{None} when this
            node is the origin.
        @param destination: Its destination.
        @param hops: The links it has crossed to get here (0 at the origin).
        @return: no neighbour if it may not cross another link, or if it is
            for this node; else the next hop towards the destination, unless
            that leads back to C{from_neighbour} or the origin or is too long
            for the hops left.
        """
        if hops >= self.max_hops or destination == self.identity:
            return []
        route = self._routes.get(destination)
        if (
            route is None
            or route.via in (from_neighbour, origin)
            or hops + route.hops > self.max_hops
        ):
            return []
        return [route.via]


def parse_advertisement(advertisement: Any) -> dict[str, int]:
    """
    Validate an advertisement and return its reachable destinations.

    @return: destination -> hops, without the L{INFINITY} entries.
    @raise RoutingError: naming what is wrong.
    """
    if type(advertisement) is not dict:
        raise RoutingError(
            f"advertisement must be a JSON object, not {type(advertisement).__name__}"
        )
    for key in advertisement:
        if key not in ("v", "routes"):
            raise RoutingError(f"advertisement has an unknown field {str(key)[:40]!r}")
    version = advertisement.get("v")
    if type(version) is not int or version != ADVERTISEMENT_VERSION:
        raise RoutingError(f"advertisement version must be {ADVERTISEMENT_VERSION}")
    routes = advertisement.get("routes")
    if type(routes) is not dict:
        raise RoutingError("advertisement field 'routes' must be a JSON object")
    # No limit on the entries here: the receiver takes the nearest it
    # accepts (RoutingTable.max_routes); the line limit bounds the work.
    vector = {}
    for destination, hops in routes.items():
        if not is_valid_peer_id(destination):
            raise RoutingError(
                f"advertised destination {str(destination)[:40]!r} is not a valid peer id"
            )
        if type(hops) is not int or not 1 <= hops <= INFINITY:
            raise RoutingError(
                f"advertised hops for {destination} must be an integer from 1 to {INFINITY}"
            )
        if hops < INFINITY:
            vector[destination] = hops
    return vector


# -- deduplication and the forwarding decision --------------------------------


class SeenMessages:
    """
    The routed messages a node has passed on, by C{(origin, destination,
    origin_id)}: O(1) per check, at most C{capacity} remembered (the oldest
    go first).

    With each it keeps the fewest hops it arrived with, so that a copy that
    arrives later by a shorter path (links have different delays) is still
    forwarded, and reaches what the first copy's hop budget could not.

    A relay cannot tell a true message from a forged one, so this memory
    only keeps it from forwarding a message twice; what a destination
    delivers is deduplicated after its origin is authenticated (see
    L{relaymesh.routing.router}), so that forged messages cannot push true
    ones out of the memory it delivers by.
    """

    __slots__ = ("_hops", "capacity")

    def __init__(self, capacity: int = SEEN_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._hops: collections.OrderedDict[tuple[str, str, str], int] = collections.OrderedDict()

    def check(self, origin: str, to: str, origin_id: str, hops: int) -> str:
        """
        Record a message for C{to} that arrived after C{hops} links.

        @return: L{NEW} the first time; L{SHORTER} for a copy that came by
            fewer hops than any before; L{DUPLICATE} otherwise.
        """
        key = (origin, to, origin_id)
        known = self._hops.get(key)
        if known is None:
            self._hops[key] = hops
            if len(self._hops) > self.capacity:
                self._hops.popitem(last=False)
            return NEW
        if hops < known:
            self._hops[key] = hops
            return SHORTER
        return DUPLICATE

    def __contains__(self, key: tuple[str, str, str]) -> bool:
        return key in self._hops

    def __len__(self) -> int:
        return len(self._hops)


@dataclasses.dataclass(frozen=True)
class Decision:
    """
    What a node does with a routed message.

    @ivar deliver: Whether it is for this node (to be opened, and delivered
        if its origin is authenticated and it is new).
    @ivar targets: The neighbours to send it on to, sorted.
    @ivar header: The L{RouteHeader} to send it with (hops counted), or
        C{None} when there is nowhere to send it.
    """

    deliver: bool
    targets: list[str]
    header: RouteHeader | None


def originate(table: RoutingTable, to: str, origin_id: str) -> Decision:
    """
    Where a message this node starts for C{to} goes first.

    A copy that comes back is dropped by its origin (L{decide}), so it is
    not recorded in the relays' memory.

    @param origin_id: The message's id.
    """
    header = RouteHeader(table.identity, to, 0, origin_id)
    targets = table.forward_targets(table.identity, None, to, 0)
    return Decision(False, targets, header.forwarded() if targets else None)


def decide(
    table: RoutingTable, seen: SeenMessages, header: RouteHeader, from_neighbour: str
) -> Decision:
    """
    What to do with a routed message that came from C{from_neighbour}.

    Take it here if it is for this node (the caller authenticates it and
    drops copies); else forward it the first time, or again when it came
    by a shorter path, as L{RoutingTable.forward_targets} says. A message
    of this node's own that comes back is dropped.
    """
    verdict, targets = judge(
        table, seen, header.origin, header.to, header.hops, header.origin_id, from_neighbour
    )
    if verdict == MINE:
        return Decision(True, [], None)
    return Decision(False, list(targets), header.forwarded() if targets else None)


def judge(
    table: RoutingTable,
    seen: SeenMessages,
    origin: str,
    to: str,
    hops: int,
    origin_id: str,
    from_neighbour: str,
) -> tuple[str, list[str] | tuple[()]]:
    """
    L{decide}'s rules on a header's fields, making no objects: what the
    message is here, and the neighbours to send it on to (with one hop
    more).

    @return: L{MINE} (for this node) or L{OWN} (this node's own, come
        back), with no targets; else what L{SeenMessages.check} says
        (L{NEW}, L{SHORTER}, L{DUPLICATE}) and the targets.
    """
    if origin == table.identity:
        return OWN, ()
    if to == table.identity:
        return MINE, ()
    verdict = seen.check(origin, to, origin_id, hops)
    if verdict == DUPLICATE:
        return verdict, ()
    return verdict, table.forward_targets(origin, from_neighbour, to, hops)
