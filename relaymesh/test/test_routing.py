"""
Tests for L{relaymesh.routing.table}: the distance-vector table and its
limits, the relays' deduplication, the forwarding decision and the routed
envelope.

Networks are simulated in memory: every node has a L{RoutingTable}, and
advertisements (passed through JSON, as on the wire) are exchanged until
nothing changes; the result is checked against breadth-first search.
"""

from __future__ import annotations

import collections
import dataclasses
import random

from twisted.trial.unittest import SynchronousTestCase

from relaymesh import wire
from relaymesh.routing.table import (
    DUPLICATE,
    INFINITY,
    MAX_HOPS,
    MAX_ROUTES,
    MAX_WIRE_HOPS,
    NEW,
    ROUTE_FIELD,
    ROUTING_CAPABILITY,
    SEALED_FIELD,
    SHORTER,
    Decision,
    EnvelopeError,
    Route,
    RouteHeader,
    RoutingError,
    RoutingTable,
    SeenMessages,
    check_envelope,
    decide,
    encode_routed,
    header_from_object,
    originate,
)
from relaymesh.testing import hop_distances
from relaymesh.wire import RelayMessage, WireError


def bfs(edges: set[frozenset[str]], source: str) -> dict[str, int]:
    """
    Hop counts from C{source} to every node it can reach.
    """
    adjacent = collections.defaultdict(set)
    for a, b in edges:
        adjacent[a].add(b)
        adjacent[b].add(a)
    return hop_distances(adjacent, source)


def decode_routed(line: bytes) -> tuple[RelayMessage, RouteHeader | None]:
    """
    Read a line as a node does (L{wire.decode_fields}, then the C{route}
    field with L{header_from_object}): the message and its header, if any.
    """
    message, fields = wire.decode_fields(line)
    route = fields.get(ROUTE_FIELD)
    return message, None if route is None else header_from_object(route)


class Network:
    """
    Routing tables joined by links in memory.
    """

    def __init__(self, edges, nodes=(), max_hops: int = MAX_HOPS) -> None:
        self.edges: set[frozenset[str]] = set()
        names = set(nodes) | {n for e in edges for n in e}
        self.tables = {n: RoutingTable(n, max_hops) for n in sorted(names)}
        self.max_hops = max_hops
        for a, b in edges:
            self.up(a, b)

    def up(self, a: str, b: str) -> None:
        self.edges.add(frozenset((a, b)))
        self.tables[a].neighbour_up(b)
        self.tables[b].neighbour_up(a)

    def down(self, a: str, b: str) -> None:
        self.edges.discard(frozenset((a, b)))
        self.tables[a].neighbour_down(b)
        self.tables[b].neighbour_down(a)

    def remove_node(self, node: str) -> None:
        for other in self.tables[node].neighbours():
            self.down(node, other)

    def send(self, a: str, b: str) -> bool:
        """
        Deliver C{a}'s advertisement to C{b}, through JSON.
        """
        advertisement = wire.loads(wire.dumps(self.tables[a].advertisement_for(b)))
        return self.tables[b].receive_advertisement(a, advertisement)

    def directed_links(self) -> list[tuple[str, str]]:
        return sorted((a, b) for a in self.tables for b in self.tables[a].neighbours())

    def converge(self, max_rounds: int = 50, check=None) -> int:
        """
        Exchange advertisements in synchronous rounds until none changes
        anything.

        @return: the number of rounds that changed something.
        """
        for rounds in range(max_rounds):
            pending = [
                (a, b, wire.loads(wire.dumps(self.tables[a].advertisement_for(b))))
                for a, b in self.directed_links()
            ]
            changed = False
            for a, b, advertisement in pending:
                changed = self.tables[b].receive_advertisement(a, advertisement) or changed
            if check is not None:
                check()
            if not changed:
                return rounds
        raise AssertionError(f"no convergence in {max_rounds} rounds")

    def converge_randomly(self, rng: random.Random, max_steps: int = 20000, check=None) -> int:
        """
        Deliver advertisements one link at a time in random order until a
        pass over every link changes nothing.
        """
        quiet = 0
        for step in range(max_steps):
            links = self.directed_links()
            if not links:
                return step
            a, b = rng.choice(links)
            if self.send(a, b):
                quiet = 0
            else:
                quiet += 1
            if check is not None:
                check()
            if quiet > 0 and quiet % len(links) == 0:
                if not any(self.send(x, y) for x, y in links):
                    return step
                quiet = 0
        raise AssertionError(f"no convergence in {max_steps} steps")

    def assert_shortest(self, test: SynchronousTestCase) -> None:
        """
        Every node has exactly the routes BFS finds within the hop limit,
        each with the shortest hop count, through a neighbour on a shortest
        path.
        """
        distances = {n: bfs(self.edges, n) for n in self.tables}
        for node, table in self.tables.items():
            expected = {d: h for d, h in distances[node].items() if 0 < h <= self.max_hops}
            found = {r.destination: r.hops for r in table.routes()}
            test.assertEqual(found, expected, f"routes of {node}")
            for route in table.routes():
                test.assertIn(frozenset((node, route.via)), self.edges)
                test.assertEqual(distances[route.via][route.destination], route.hops - 1)


def random_graph(
    rng: random.Random, count: int, extra: int, connected: bool = True
) -> list[tuple[str, str]]:
    """
    C{count} nodes: a random spanning tree (if C{connected}) plus C{extra}
    random links.
    """
    names = [f"n{i:02d}" for i in range(count)]
    edges = set()
    if connected:
        for i in range(1, count):
            edges.add(frozenset((names[i], names[rng.randrange(i)])))
    while len(edges) < (count - 1 if connected else 0) + extra:
        a, b = rng.sample(names, 2)
        edges.add(frozenset((a, b)))
    return [(a, b) for a, b in (sorted(e) for e in edges)]


def line(count: int) -> list[tuple[str, str]]:
    return [(f"n{i:02d}", f"n{i + 1:02d}") for i in range(count - 1)]


class ConvergenceTests(SynchronousTestCase):
    def test_line(self):
        """
        On a line every node learns every other, hops counting links.
        """
        net = Network(line(5))
        net.converge()
        net.assert_shortest(self)
        self.assertEqual(
            net.tables["n00"].routes(),
            [
                Route("n01", "n01", 1),
                Route("n02", "n01", 2),
                Route("n03", "n01", 3),
                Route("n04", "n01", 4),
            ],
        )
        self.assertTrue(net.tables["n00"].route("n01").direct)
        self.assertFalse(net.tables["n00"].route("n04").direct)
        self.assertEqual(net.tables["n00"].next_hop("n04"), "n01")
        self.assertIsNone(net.tables["n00"].next_hop("nowhere"))
        self.assertEqual(
            net.tables["n00"].route("n03").to_dict(),
            {"destination": "n03", "via": "n01", "hops": 3},
        )

    def test_ring(self):
        """
        On a ring every node reaches the others the short way round.
        """
        edges = line(7) + [("n00", "n06")]
        net = Network(edges)
        net.converge()
        net.assert_shortest(self)
        self.assertEqual(net.tables["n00"].route("n05"), Route("n05", "n06", 2))

    def test_random_graphs(self):
        """
        On random connected graphs, synchronous and randomly ordered
        exchanges both end with shortest routes everywhere.
        """
        for seed in range(12):
            rng = random.Random(seed)
            edges = random_graph(rng, rng.randrange(6, 20), rng.randrange(0, 12))
            net = Network(edges)
            rounds = net.converge()
            self.assertLessEqual(rounds, MAX_HOPS + 1)
            net.assert_shortest(self)
            net = Network(edges)
            net.converge_randomly(rng)
            net.assert_shortest(self)

    def test_disconnected_graphs(self):
        """
        Nodes in different components have no routes to each other.
        """
        for seed in range(5):
            rng = random.Random(100 + seed)
            net = Network(
                random_graph(rng, 15, 8, connected=False), nodes=[f"n{i:02d}" for i in range(15)]
            )
            net.converge()
            net.assert_shortest(self)

    def test_hop_limit(self):
        """
        Nothing further than the hop limit is routed to.
        """
        net = Network(line(12), max_hops=MAX_HOPS)
        net.converge()
        net.assert_shortest(self)
        self.assertEqual(net.tables["n00"].route("n08").hops, MAX_HOPS)
        self.assertIsNone(net.tables["n00"].route("n09"))
        short = Network(line(5), max_hops=2)
        short.converge()
        self.assertEqual([r.destination for r in short.tables["n00"].routes()], ["n01", "n02"])

    def test_hop_limit_bounds(self):
        """
        A hop limit must be from 1 to one less than L{INFINITY}.
        """
        self.assertEqual(MAX_HOPS, 8)
        for bad in (0, INFINITY, -1, 2.5, True):
            self.assertRaises(ValueError, RoutingTable, "alpha", bad)
        RoutingTable("alpha", INFINITY - 1)

    def test_hop_limit_boundaries(self):
        """
        A hop limit of 1 is accepted (a node then routes only to its
        neighbours), and so is 15; 0 and 16 are refused. At most one
        destination, or one route limit of 1, is as valid as any other.
        """
        for bad in (0, 16):
            e = self.assertRaises(ValueError, RoutingTable, "alpha", bad)
            self.assertEqual(str(e), "hop limit must be an integer from 1 to 15")
        self.assertEqual(RoutingTable("alpha", 15).max_hops, 15)
        net = Network(line(3), max_hops=1)
        net.converge()
        self.assertEqual(net.tables["n00"].routes(), [Route("n01", "n01", 1)])
        self.assertRaises(ValueError, RoutingTable, "alpha", MAX_HOPS, 0)
        table = RoutingTable("alpha", max_routes=1)
        table.neighbour_up("beta")
        table.receive_advertisement("beta", {"v": 1, "routes": {"gamma": 2, "delta": 1}})
        self.assertEqual(table.routes(), [Route("beta", "beta", 1), Route("delta", "beta", 2)])
        self.assertEqual(table.excess, {"beta": 1})

    def test_equal_routes_do_not_flap(self):
        """
        Between routes of equal length a node keeps the one it has.
        """
        net = Network([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
        net.converge()
        first = net.tables["a"].next_hop("d")
        self.assertEqual(first, "b")  # the lowest id, all else equal
        net.down("a", "b")
        net.converge()
        self.assertEqual(net.tables["a"].next_hop("d"), "c")
        net.up("a", "b")
        net.converge()
        self.assertEqual(net.tables["a"].next_hop("d"), "c")


class WithdrawalTests(SynchronousTestCase):
    def test_neighbour_down_withdraws_at_once(self):
        """
        When a neighbour drops, every route through it goes at once, and the
        next advertisement to each other neighbour names them with an
        infinite metric, once.
        """
        net = Network(line(5))
        net.converge()
        b = net.tables["n01"]
        self.assertTrue(b.neighbour_down("n02"))
        self.assertFalse(b.neighbour_down("n02"))
        self.assertEqual(b.routes(), [Route("n00", "n00", 1)])
        advertisement = b.advertisement_for("n00")
        self.assertEqual(
            advertisement, {"v": 1, "routes": {"n02": INFINITY, "n03": INFINITY, "n04": INFINITY}}
        )
        self.assertEqual(b.advertisement_for("n00"), {"v": 1, "routes": {}})

    def test_middle_node_drops(self):
        """
        When the middle of a line drops, each side forgets the other side
        and keeps its own.
        """
        net = Network(line(5))
        net.converge()
        net.remove_node("n02")
        net.converge()
        net.assert_shortest(self)
        self.assertEqual([r.destination for r in net.tables["n00"].routes()], ["n01"])
        self.assertEqual([r.destination for r in net.tables["n04"].routes()], ["n03"])
        self.assertEqual(net.tables["n02"].routes(), [])

    def test_withdrawal_travels_as_infinity(self):
        """
        A node that loses a route tells its neighbours with L{INFINITY},
        and they withdraw it too.
        """
        net = Network(line(4))
        net.converge()
        net.down("n02", "n03")
        adv = net.tables["n02"].advertisement_for("n01")
        self.assertEqual(adv["routes"]["n03"], INFINITY)
        self.assertTrue(net.tables["n01"].receive_advertisement("n02", adv))
        self.assertIsNone(net.tables["n01"].route("n03"))
        self.assertEqual(net.tables["n01"].advertisement_for("n00")["routes"]["n03"], INFINITY)

    def test_failover_on_a_ring(self):
        """
        When a link of a ring breaks, routes go the other way round.
        """
        net = Network(line(6) + [("n00", "n05")])
        net.converge()
        self.assertEqual(net.tables["n00"].route("n01"), Route("n01", "n01", 1))
        net.down("n00", "n01")
        net.converge()
        net.assert_shortest(self)
        self.assertEqual(net.tables["n00"].route("n01"), Route("n01", "n05", 5))

    def test_random_failures(self):
        """
        After random links and nodes fail, routes converge to the shortest
        ones that remain.
        """
        for seed in range(8):
            rng = random.Random(200 + seed)
            net = Network(random_graph(rng, 14, 10))
            net.converge_randomly(rng)
            for a, b in rng.sample(sorted(tuple(sorted(e)) for e in net.edges), 4):
                net.down(a, b)
            net.remove_node(rng.choice(sorted(net.tables)))
            net.converge_randomly(rng)
            net.assert_shortest(self)

    def test_count_to_infinity_is_bounded(self):
        """
        Where poisoned reverse cannot stop a routing loop (a triangle loses
        the node behind one of its corners), the corners pass the stale route
        round, one hop longer each time, but never beyond the hop limit; in
        the end the lost node is withdrawn everywhere.
        """
        longest = []
        for seed in range(30):
            rng = random.Random(300 + seed)
            net = Network([("a", "b"), ("b", "c"), ("a", "c"), ("c", "d")], max_hops=6)
            net.converge()
            net.down("c", "d")
            seen = [0]

            # called by converge_randomly, within this iteration
            def check():
                for table in net.tables.values():  # noqa: B023
                    route = table.route("d")
                    if route is not None:
                        self.assertLessEqual(route.hops, 6)
                        seen[0] = max(seen[0], route.hops)  # noqa: B023

            net.converge_randomly(rng, check=check)
            net.assert_shortest(self)
            for node in "abc":
                self.assertIsNone(net.tables[node].route("d"))
            longest.append(seen[0])
        # It does count: most orders drive a stale route up to the limit.
        self.assertEqual(max(longest), 6)

    def test_poisoned_reverse_stops_two_node_loops(self):
        """
        On a line, the node behind a lost one never takes the stale route
        back: it advertised it as unreachable to the node that lost it.
        """
        net = Network(line(3))
        net.converge()
        net.down("n01", "n02")
        self.assertFalse(net.send("n00", "n01"))
        self.assertIsNone(net.tables["n01"].route("n02"))


class AdvertisementTests(SynchronousTestCase):
    def setUp(self):
        self.net = Network(line(4))
        self.net.converge()
        self.b = self.net.tables["n01"]

    def test_poisoned_reverse(self):
        """
        Routes through a neighbour are advertised back to it as unreachable;
        the neighbour itself is left out.
        """
        self.assertEqual(
            self.b.advertisement_for("n02"), {"v": 1, "routes": {"n00": 1, "n03": INFINITY}}
        )
        self.assertEqual(self.b.advertisement_for("n00"), {"v": 1, "routes": {"n02": 1, "n03": 2}})

    def test_compact_json(self):
        """
        An advertisement is a small JSON object: destination to hops.
        """
        encoded = wire.dumps(self.b.advertisement_for("n00"))
        self.assertEqual(encoded, b'{"v":1,"routes":{"n02":1,"n03":2}}')

    def test_unknown_neighbour(self):
        """
        Asking for an advertisement for a non-neighbour is an error; one
        from a non-neighbour is ignored.
        """
        self.assertRaises(RoutingError, self.b.advertisement_for, "n03")
        self.assertFalse(self.b.receive_advertisement("n03", {"v": 1, "routes": {"zeta": 1}}))
        self.assertIsNone(self.b.route("zeta"))

    def test_self_and_sender_ignored(self):
        """
        What a neighbour says about this node or about itself changes nothing.
        """
        self.assertFalse(
            self.b.receive_advertisement("n00", {"v": 1, "routes": {"n01": 1, "n00": 3}})
        )
        self.assertEqual(self.b.route("n00"), Route("n00", "n00", 1))

    def test_unchanged_advertisement(self):
        """
        Receiving the same advertisement again reports no change.
        """
        adv = self.net.tables["n02"].advertisement_for("n01")
        self.assertFalse(self.b.receive_advertisement("n02", adv))

    def test_absent_destination_is_withdrawn(self):
        """
        An advertisement replaces the neighbour's last: a destination it no
        longer names is unreachable through it.
        """
        self.assertTrue(self.b.receive_advertisement("n02", {"v": 1, "routes": {}}))
        self.assertIsNone(self.b.route("n03"))

    def test_neighbour_ids(self):
        """
        Neighbours must be valid ids other than the node's own.
        """
        self.assertRaises(RoutingError, self.b.neighbour_up, "n01")
        self.assertRaises(RoutingError, self.b.neighbour_up, "bad id")
        self.assertFalse(self.b.neighbour_up("n00"))
        self.assertEqual(self.b.neighbours(), ["n00", "n02"])

    def test_neighbour_up_again_keeps_routes(self):
        """
        A neighbour reported up a second time (a second connection) keeps
        what it advertised: the routes learned through it stay, and nothing
        changed.
        """
        before = self.b.routes()
        self.assertEqual(self.b.route("n03"), Route("n03", "n02", 2))
        self.assertFalse(self.b.neighbour_up("n02"))
        self.assertEqual(self.b.routes(), before)

    def test_change_without_route_change(self):
        """
        An advertisement that differs from the neighbour's last one but
        changes no route (a longer way to a destination) reports no change,
        so it sets off no early advertisement.
        """
        before = self.b.routes()
        self.assertFalse(self.b.receive_advertisement("n00", {"v": 1, "routes": {"n03": 5}}))
        self.assertEqual(self.b.routes(), before)
        # ... and the longer way is taken when the short one goes
        self.assertTrue(self.b.receive_advertisement("n02", {"v": 1, "routes": {}}))
        self.assertEqual(self.b.route("n03"), Route("n03", "n00", 6))

    def test_relearned_before_told(self):
        """
        A destination withdrawn and learned again before the next
        advertisement is advertised with its hops, not as unreachable.
        """
        self.assertTrue(self.b.receive_advertisement("n02", {"v": 1, "routes": {}}))
        self.assertIsNone(self.b.route("n03"))
        self.assertTrue(self.b.receive_advertisement("n02", {"v": 1, "routes": {"n03": 1}}))
        self.assertEqual(self.b.advertisement_for("n00"), {"v": 1, "routes": {"n02": 1, "n03": 2}})

    def test_infinity_is_16(self):
        """
        On the wire, 16 hops means unreachable (as in RIP), whatever the
        nodes' hop limits: an advertisement may say 16 and no more, and a
        node says 16 of what it lost; 15 is a route, when the limit allows.
        """
        self.assertTrue(self.b.receive_advertisement("n02", {"v": 1, "routes": {"n03": 16}}))
        self.assertIsNone(self.b.route("n03"))
        self.assertEqual(self.b.advertisement_for("n00"), {"v": 1, "routes": {"n02": 1, "n03": 16}})
        e = self.assertRaises(
            RoutingError, self.b.receive_advertisement, "n02", {"v": 1, "routes": {"n03": 17}}
        )
        self.assertIn("from 1 to 16", str(e))
        far = RoutingTable("a", max_hops=15)
        far.neighbour_up("b")
        self.assertTrue(far.receive_advertisement("b", {"v": 1, "routes": {"x14": 14, "x15": 15}}))
        self.assertEqual(far.route("x14"), Route("x14", "b", 15))
        self.assertIsNone(far.route("x15"))

    def test_malformed_refused(self):
        """
        Every malformed advertisement is refused with a one-line reason, and
        changes nothing.
        """
        before = self.b.routes()
        cases = [
            ([], "JSON object"),
            ({"v": 2, "routes": {}}, "version"),
            ({"v": True, "routes": {}}, "version"),
            ({"routes": {}}, "version"),
            ({"v": 1}, "'routes'"),
            ({"v": 1, "routes": []}, "'routes'"),
            ({"v": 1, "routes": {}, "extra": 1}, "unknown field"),
            ({"v": 1, "routes": {"bad id": 1}}, "valid peer id"),
            ({"v": 1, "routes": {"_pending": 1}}, "valid peer id"),
            ({"v": 1, "routes": {"zeta": 0}}, "integer from 1"),
            ({"v": 1, "routes": {"zeta": INFINITY + 1}}, "integer from 1"),
            ({"v": 1, "routes": {"zeta": 1.0}}, "integer from 1"),
            ({"v": 1, "routes": {"zeta": True}}, "integer from 1"),
            ({"v": 1, "routes": {"zeta": "1"}}, "integer from 1"),
        ]
        for advertisement, words in cases:
            e = self.assertRaises(RoutingError, self.b.receive_advertisement, "n02", advertisement)
            self.assertIn(words, str(e))
            self.assertNotIn("\n", str(e))
        self.assertEqual(self.b.routes(), before)


class RouteLimitTests(SynchronousTestCase):
    """
    At most L{MAX_ROUTES} destinations are taken from one neighbour, and
    named in one advertisement.
    """

    def test_default(self):
        self.assertEqual(MAX_ROUTES, 256)
        self.assertEqual(RoutingTable("a").max_routes, MAX_ROUTES)
        self.assertRaises(ValueError, RoutingTable, "a", MAX_HOPS, 0)

    def test_excess_refused(self):
        """
        Of an advertisement naming more reachable destinations than the
        limit, the nearest are taken (ties by id) and the others refused
        and counted; a smaller one clears the count.
        """
        table = RoutingTable("a", max_routes=3)
        table.neighbour_up("b")
        advertisement = {"v": 1, "routes": {"far": 5, "z1": 1, "y1": 1, "x2": 2, "w2": 2, "gone": 16}}
        self.assertTrue(table.receive_advertisement("b", advertisement))
        self.assertEqual(
            [(r.destination, r.hops) for r in table.routes()],
            [("b", 1), ("w2", 3), ("y1", 2), ("z1", 2)],
        )
        self.assertEqual(table.excess, {"b": 2})
        table.receive_advertisement("b", {"v": 1, "routes": {"z1": 1}})
        self.assertEqual(table.excess, {})
        table.receive_advertisement("b", advertisement)
        table.neighbour_down("b")
        self.assertEqual(table.excess, {})

    def test_limit_boundary(self):
        """
        An advertisement naming exactly the limit of reachable destinations
        is taken whole; one more, and the farthest is refused. What the
        neighbour says of itself, or of this node, and its L{INFINITY}
        entries take no room.
        """
        table = RoutingTable("a", max_routes=3)
        table.neighbour_up("b")
        routes = {"b": 1, "a": 2, "x1": 1, "x2": 2, "x3": 3, "gone": 16}
        self.assertTrue(table.receive_advertisement("b", {"v": 1, "routes": routes}))
        self.assertEqual(
            [(r.destination, r.hops) for r in table.routes()],
            [("b", 1), ("x1", 2), ("x2", 3), ("x3", 4)],
        )
        self.assertEqual(table.excess, {})
        routes["x4"] = 4
        self.assertFalse(table.receive_advertisement("b", {"v": 1, "routes": routes}))
        self.assertEqual(
            [(r.destination, r.hops) for r in table.routes()],
            [("b", 1), ("x1", 2), ("x2", 3), ("x3", 4)],
        )
        self.assertEqual(table.excess, {"b": 1})
        self.assertEqual(RoutingTable("a").max_routes, 256)

    def test_unreachable_entries_by_id(self):
        """
        When only some unreachable entries fit, they are the first by id,
        whatever order the routes were learned in.
        """
        table = RoutingTable("a", max_routes=2)
        table.neighbour_up("b")
        table.neighbour_up("c")
        table.receive_advertisement("b", {"v": 1, "routes": {"z1": 1, "y1": 1}})
        self.assertEqual(table.excess, {})
        self.assertEqual(table.advertisement_for("b"), {"v": 1, "routes": {"c": 1, "y1": INFINITY}})

    def test_flood_of_destinations(self):
        """
        A neighbour naming 1,024 destinations gets the node to take 256;
        what the node advertises to its other neighbours stays within the
        limit, so they take all of it.
        """
        alice = RoutingTable("alice")
        alice.neighbour_up("carol")
        alice.neighbour_up("dave")
        invented = {f"fake{i:04d}": 1 + i % 3 for i in range(1024)}
        alice.receive_advertisement("carol", {"v": 1, "routes": invented})
        self.assertEqual(alice.excess, {"carol": 1024 - MAX_ROUTES})
        self.assertEqual(len(alice.routes()), MAX_ROUTES + 2)
        told = wire.loads(wire.dumps(alice.advertisement_for("dave")))
        self.assertEqual(len(told["routes"]), MAX_ROUTES)
        dave = RoutingTable("dave")
        dave.neighbour_up("alice")
        self.assertTrue(dave.receive_advertisement("alice", told))
        self.assertEqual(dave.excess, {})

    def test_own_advertisement_nearest_first(self):
        """
        With more routes than the limit, an advertisement names the nearest
        reachable destinations; unreachable entries (poisoned reverse,
        withdrawals) only fill the room left.
        """
        table = RoutingTable("a", max_routes=3)
        for neighbour in ("b", "c"):
            table.neighbour_up(neighbour)
        table.receive_advertisement("b", {"v": 1, "routes": {"b1": 1, "b3": 3}})
        table.receive_advertisement("c", {"v": 1, "routes": {"c2": 2}})
        # to b: the two reachable through c, then one poisoned entry
        self.assertEqual(
            table.advertisement_for("b"), {"v": 1, "routes": {"b1": INFINITY, "c": 1, "c2": 3}}
        )
        # to c: three reachable ones fill it; c2's poisoned entry is left out
        self.assertEqual(table.advertisement_for("c"), {"v": 1, "routes": {"b": 1, "b1": 2, "b3": 4}})
        # to a new neighbour: the nearest three of five
        table.neighbour_up("d")
        self.assertEqual(table.advertisement_for("d"), {"v": 1, "routes": {"b": 1, "b1": 2, "c": 1}})


class ForwardingTests(SynchronousTestCase):
    def setUp(self):
        #   a - b - c - d
        #       |
        #       e
        self.net = Network([("a", "b"), ("b", "c"), ("c", "d"), ("b", "e")])
        self.net.converge()
        self.b = self.net.tables["b"]

    def test_unicast_targets(self):
        """
        A unicast goes to the next hop, unless it is for this node, the
        route leads back where it came from, or it has no route.
        """
        self.assertEqual(self.b.forward_targets("a", "a", "d", 1), ["c"])
        self.assertEqual(self.b.forward_targets("a", "a", "b", 1), [])
        self.assertEqual(self.b.forward_targets("e", "c", "d", 1), [])
        self.assertEqual(self.b.forward_targets("d", "c", "a", 2), ["a"])
        self.assertEqual(self.b.forward_targets("a", "a", "nowhere", 1), [])
        self.assertEqual(self.b.forward_targets("c", "a", "c", 1), [])

    def test_hop_limit(self):
        """
        A message that has crossed the hop limit goes no further, nor one
        that cannot reach its destination within it.
        """
        self.assertEqual(self.b.forward_targets("a", "a", "c", MAX_HOPS), [])
        self.assertEqual(self.b.forward_targets("a", "a", "d", MAX_HOPS - 1), [])
        self.assertEqual(self.b.forward_targets("a", "a", "d", MAX_HOPS - 2), ["c"])
        self.assertEqual(self.b.forward_targets("a", "a", "c", MAX_HOPS - 1), ["c"])


class SeenMessagesTests(SynchronousTestCase):
    def test_verdicts(self):
        """
        The first copy is new, a copy by fewer hops is shorter, any other a
        duplicate; keys are origin, destination and id together (a
        broadcast's sealed copies share an id).
        """
        seen = SeenMessages()
        self.assertEqual(seen.check("a", "z", "m1", 3), NEW)
        self.assertEqual(seen.check("a", "z", "m1", 3), DUPLICATE)
        self.assertEqual(seen.check("a", "z", "m1", 4), DUPLICATE)
        self.assertEqual(seen.check("a", "z", "m1", 2), SHORTER)
        self.assertEqual(seen.check("a", "z", "m1", 2), DUPLICATE)
        self.assertEqual(seen.check("b", "z", "m1", 5), NEW)
        self.assertEqual(seen.check("a", "y", "m1", 5), NEW)
        self.assertIn(("a", "y", "m1"), seen)
        self.assertNotIn(("c", "y", "m1"), seen)

    def test_bounded(self):
        """
        Only the last C{capacity} messages are remembered.
        """
        seen = SeenMessages(capacity=100)
        for i in range(1000):
            self.assertEqual(seen.check("a", "z", str(i), 1), NEW)
        self.assertEqual(len(seen), 100)
        self.assertEqual(seen.check("a", "z", "999", 1), DUPLICATE)
        self.assertEqual(seen.check("a", "z", "0", 1), NEW)
        self.assertRaises(ValueError, SeenMessages, 0)

    def test_default_capacity(self):
        """
        A node remembers the last 65,536 routed messages it passed on; a
        memory of one message is allowed.
        """
        seen = SeenMessages()
        for i in range(65536):
            seen.check("a", "z", str(i), 1)
        self.assertEqual(len(seen), 65536)
        self.assertIn(("a", "z", "0"), seen)
        self.assertEqual(seen.check("a", "z", "65536", 1), NEW)
        self.assertNotIn(("a", "z", "0"), seen)
        self.assertIn(("a", "z", "1"), seen)
        one = SeenMessages(1)
        self.assertEqual(one.check("a", "z", "m1", 1), NEW)
        self.assertEqual(one.check("a", "z", "m1", 1), DUPLICATE)
        self.assertEqual(one.check("a", "z", "m2", 1), NEW)
        self.assertEqual(one.check("a", "z", "m1", 1), NEW)

    def test_verdict_names(self):
        """
        The verdicts are the strings C{"new"}, C{"shorter"} and
        C{"duplicate"}.
        """
        seen = SeenMessages()
        verdicts = [seen.check("a", "z", "m", hops) for hops in (3, 2, 2)]
        self.assertEqual(verdicts, ["new", "shorter", "duplicate"])


class Walk:
    """
    Routed messages moving through a converged L{Network}, one link
    crossing at a time.
    """

    def __init__(self, net: Network) -> None:
        self.net = net
        self.seen = {n: SeenMessages() for n in net.tables}
        self.delivered: collections.Counter = collections.Counter()
        self.crossings = 0

    def run(self, origin: str, to: str, rng: random.Random | None = None) -> None:
        """
        Send one message from C{origin}; deliver the copies in flight in
        FIFO order, or in random order with C{rng}.
        """
        first = originate(self.net.tables[origin], to, "m1")
        in_flight = [(origin, t, first.header) for t in first.targets]
        while in_flight:
            index = rng.randrange(len(in_flight)) if rng is not None else 0
            sender, receiver, header = in_flight.pop(index)
            assert header is not None
            self.crossings += 1
            assert frozenset((sender, receiver)) in self.net.edges
            # through the wire format, as between real nodes
            header = header_from_object(wire.loads(wire.dumps(header.to_object())))
            decision = decide(self.net.tables[receiver], self.seen[receiver], header, sender)
            if decision.deliver:
                self.delivered[receiver] += 1
            assert sender not in decision.targets
            in_flight += [(receiver, t, decision.header) for t in decision.targets]


class WalkTests(SynchronousTestCase):
    def test_shorter_copy_forwarded_again(self):
        """
        A copy that arrives by fewer hops than the first is forwarded again
        (it can go further); any other copy is dropped.
        """
        net = Network(line(4), max_hops=3)
        net.converge()
        table, seen = net.tables["n01"], SeenMessages()
        late = decide(table, seen, RouteHeader("zz", "n03", 2, "m1"), "n00")
        self.assertEqual((late.deliver, late.targets, late.header), (False, [], None))
        early = decide(table, seen, RouteHeader("zz", "n03", 1, "m1"), "n00")
        self.assertEqual((early.deliver, early.targets), (False, ["n02"]))
        self.assertEqual(early.header, RouteHeader("zz", "n03", 2, "m1"))
        again = decide(table, seen, RouteHeader("zz", "n03", 1, "m1"), "n00")
        self.assertEqual((again.deliver, again.targets), (False, []))

    def test_for_this_node_not_recorded(self):
        """
        A message for this node is taken every time (its origin is
        authenticated and copies dropped after it is opened), and not
        recorded, so forged copies cannot fill the memory.
        """
        net = Network(line(3))
        net.converge()
        table, seen = net.tables["n02"], SeenMessages()
        for _ in range(2):
            decision = decide(table, seen, RouteHeader("n00", "n02", 2, "m1"), "n01")
            self.assertEqual((decision.deliver, decision.targets), (True, []))
        self.assertEqual(len(seen), 0)

    def test_own_message_returning_is_dropped(self):
        """
        A node drops a copy of a message it originated.
        """
        net = Network([("a", "b"), ("b", "c"), ("a", "c")])
        net.converge()
        seen = SeenMessages()
        first = originate(net.tables["a"], "c", "m1")
        self.assertEqual(first.targets, ["c"])
        self.assertEqual(first.header, RouteHeader("a", "c", 1, "m1"))
        back = decide(net.tables["a"], seen, RouteHeader("a", "b", 2, "m1"), "c")
        self.assertEqual((back.deliver, back.targets), (False, []))

    def test_originate_uses_no_hop(self):
        """
        At its origin a message has crossed no link: it goes to a
        destination exactly the hop limit away, with one hop counted on the
        first link, and is never taken by the origin itself.
        """
        net = Network(line(5), max_hops=3)
        net.converge()
        table = net.tables["n00"]
        self.assertEqual(table.route("n03").hops, 3)
        first = originate(table, "n03", "m1")
        self.assertEqual(first, Decision(False, ["n01"], RouteHeader("n00", "n03", 1, "m1")))
        near = originate(table, "n01", "m2")
        self.assertEqual(near, Decision(False, ["n01"], RouteHeader("n00", "n01", 1, "m2")))
        self.assertEqual(originate(table, "n04", "m3"), Decision(False, [], None))

    def test_unicast_along_shortest_paths(self):
        """
        In random graphs a routed message from any node to any other reaches
        it exactly once, in as many crossings as the shortest path has.
        """
        for seed in range(6):
            rng = random.Random(600 + seed)
            net = Network(random_graph(rng, 12, 8))
            net.converge()
            for origin in net.tables:
                distances = bfs(net.edges, origin)
                for to in net.tables:
                    if to == origin:
                        continue
                    walk = Walk(net)
                    walk.run(origin, to)
                    self.assertEqual(dict(walk.delivered), {to: 1})
                    self.assertEqual(walk.crossings, distances[to])

    def test_unicast_without_route(self):
        """
        A message for an unknown destination goes nowhere.
        """
        net = Network(line(3))
        net.converge()
        decision = originate(net.tables["n00"], "zz", "m1")
        self.assertEqual((decision.targets, decision.header), ([], None))


class EnvelopeTests(SynchronousTestCase):
    def setUp(self):
        self.message = RelayMessage(
            "msg_1_0_ab", "delegate_task", "beta", 1764180000000, {"task_id": "t"}
        )
        self.header = RouteHeader("alpha", "delta", 2, "msg_0_7_cd")
        self.sealed = "c2VhbGVk"

    def test_round_trip(self):
        """
        A routed line decodes to the message (without its payload, which
        travels sealed), its header and its sealed field.
        """
        line = encode_routed(self.message, self.header, self.sealed)
        message, fields = wire.decode_fields(line)
        self.assertEqual(message, RelayMessage("msg_1_0_ab", "delegate_task", "beta", 1764180000000, None))
        self.assertEqual(check_envelope(message, fields), (self.header, self.sealed))
        self.assertEqual(decode_routed(line), (message, self.header))

    def test_layout(self):
        """
        The header and the sealed field are two more top-level fields after
        claudectl's five, whose payload is null.
        """
        line = encode_routed(self.message, self.header, self.sealed)
        self.assertEqual(
            line,
            b'{"id":"msg_1_0_ab","msg_type":"delegate_task","from_peer":"beta",'
            b'"timestamp":1764180000000,"payload":null,'
            b'"route":{"origin":"alpha","to":"delta","hops":2,"origin_id":"msg_0_7_cd"},'
            b'"sealed":"c2VhbGVk"}',
        )

    def test_plain_readers_accept_it(self):
        """
        A reader that knows nothing of routing (claudectl, L{wire.decode})
        reads a routed line as a message without a payload.
        """
        decoded = wire.decode(encode_routed(self.message, self.header, self.sealed))
        self.assertEqual((decoded.id, decoded.payload), (self.message.id, None))

    def test_unrouted_line(self):
        """
        A line without a C{route} field has no header.
        """
        self.assertEqual(decode_routed(wire.encode(self.message)), (self.message, None))

    def test_forwarded(self):
        """
        Forwarding adds a hop and keeps the rest.
        """
        self.assertEqual(self.header.forwarded(), RouteHeader("alpha", "delta", 3, "msg_0_7_cd"))

    def test_malformed_refused(self):
        """
        Every wrong C{route} field is refused with a one-line
        L{EnvelopeError}, which is a L{WireError}.
        """
        good = self.header.to_object()
        cases = [
            ([], "JSON object"),
            ({**good, "ttl": 3}, "unknown field"),
            ({k: v for k, v in good.items() if k != "origin"}, "missing the field 'origin'"),
            ({k: v for k, v in good.items() if k != "to"}, "missing the field 'to'"),
            ({k: v for k, v in good.items() if k != "hops"}, "missing the field 'hops'"),
            ({k: v for k, v in good.items() if k != "origin_id"}, "missing the field 'origin_id'"),
            ({**good, "origin": "a b"}, "'origin'"),
            ({**good, "origin": "_pending"}, "'origin'"),
            ({**good, "origin": 7}, "'origin'"),
            ({**good, "origin": "x" * 129}, "'origin'"),
            ({**good, "to": ""}, "'to'"),
            ({**good, "to": None}, "'to'"),
            ({**good, "to": ["delta"]}, "'to'"),
            ({**good, "to": "alpha"}, "origin itself"),
            ({**good, "hops": 0}, "from 1 to"),
            ({**good, "hops": -1}, "from 1 to"),
            ({**good, "hops": MAX_WIRE_HOPS + 1}, "from 1 to"),
            ({**good, "hops": 2.0}, "integer"),
            ({**good, "hops": True}, "integer"),
            ({**good, "hops": "2"}, "integer"),
            ({**good, "origin_id": ""}, "'origin_id'"),
            ({**good, "origin_id": 5}, "'origin_id'"),
            ({**good, "origin_id": "m" * 129}, "longer"),
        ]
        base = self.message.to_dict()
        for route, words in cases:
            line = wire.dumps({**base, "route": route})
            e = self.assertRaises(EnvelopeError, decode_routed, line)
            self.assertIsInstance(e, WireError)
            self.assertIn(words, str(e))
            self.assertNotIn("\n", str(e))
        self.assertEqual(header_from_object({**good, "hops": MAX_WIRE_HOPS}).hops, MAX_WIRE_HOPS)
        self.assertEqual(header_from_object({**good, "origin_id": "m" * 128}).origin_id, "m" * 128)
        # a null route field is no route (the message is the neighbour's own)
        self.assertIn("JSON object", str(self.assertRaises(EnvelopeError, header_from_object, None)))
        self.assertEqual(decode_routed(wire.dumps({**base, "route": None}))[1], None)

    def test_envelope_checks(self):
        """
        A routed message needs a non-empty string C{sealed} field, an id of
        at most 128 characters, and a type that is not the handshake's.
        """
        route = {"route": self.header.to_object()}
        cases = [
            (self.message, {**route}, "'sealed'"),
            (self.message, {**route, SEALED_FIELD: ""}, "'sealed'"),
            (self.message, {**route, SEALED_FIELD: 5}, "'sealed'"),
            (
                RelayMessage("m" * 129, "delegate_task", "beta", 1, None),
                {**route, SEALED_FIELD: "x"},
                "at most 128",
            ),
            (RelayMessage("m", "handshake", "beta", 1, None), {**route, SEALED_FIELD: "x"}, "handshake"),
        ]
        for message, fields, words in cases:
            e = self.assertRaises(EnvelopeError, check_envelope, message, fields)
            self.assertIn(words, str(e))

    def test_bad_message_refused(self):
        """
        The message itself is checked as strictly as any line, and no
        handshake message is routed (a connection refuses one that arrives
        after the handshake before the router sees it: test_protocol).
        """
        self.assertRaises(WireError, decode_routed, b'{"id":"x","route":{}}')
        self.assertRaises(WireError, decode_routed, b"not json")
        challenge = RelayMessage("c", "challenge", "", 1, {})
        self.assertRaises(EnvelopeError, encode_routed, challenge, self.header, self.sealed)

    def test_encode_checks_the_header(self):
        """
        A header that would be refused on the wire is not encoded.
        """
        for header in (RouteHeader("alpha", "delta", 0, "x"), RouteHeader("alpha", "alpha", 1, "x")):
            self.assertRaises(EnvelopeError, encode_routed, self.message, header, self.sealed)
        long_id = RelayMessage("m" * 129, "delegate_task", "beta", 1, None)
        self.assertRaises(EnvelopeError, encode_routed, long_id, self.header, self.sealed)

    def test_capability(self):
        """
        A node that routes announces the capability C{route/2}.
        """
        self.assertEqual(ROUTING_CAPABILITY, "route/2")

    def test_wire_hop_bounds(self):
        """
        A routed message on the wire has crossed 1 to 15 links.
        """
        good = self.header.to_object()
        self.assertEqual(header_from_object({**good, "hops": 1}).hops, 1)
        self.assertEqual(header_from_object({**good, "hops": 15}).hops, 15)
        for hops in (0, 16):
            e = self.assertRaises(EnvelopeError, header_from_object, {**good, "hops": hops})
            self.assertEqual(str(e), "route field 'hops' must be from 1 to 15")

    def test_id_length_boundary(self):
        """
        A routed message's id may be 128 characters long, not 129, both
        when it is encoded and when it arrives.
        """
        route = {ROUTE_FIELD: self.header.to_object(), SEALED_FIELD: "x"}
        for length in (128, 129):
            message = RelayMessage("m" * length, "delegate_task", "beta", 1, None)
            if length == 128:
                line = encode_routed(message, self.header, "x")
                self.assertEqual(wire.decode_fields(line)[0].id, "m" * 128)
                self.assertEqual(check_envelope(message, route), (self.header, "x"))
            else:
                self.assertRaises(EnvelopeError, encode_routed, message, self.header, "x")
                self.assertRaises(EnvelopeError, check_envelope, message, route)

    def test_line_limit_boundary(self):
        """
        A routed line of exactly 1 MiB is written, and read back; one byte
        more is refused.
        """
        empty = len(encode_routed(self.message, self.header, ""))
        sealed = "x" * (wire.MAX_LINE_BYTES - empty)
        line = encode_routed(self.message, self.header, sealed)
        self.assertEqual(len(line), 1024 * 1024)
        message, fields = wire.decode_fields(line)
        self.assertEqual(check_envelope(message, fields), (self.header, sealed))
        e = self.assertRaises(WireError, encode_routed, self.message, self.header, sealed + "x")
        self.assertIn("1048577 bytes", str(e))

    def test_values_cannot_change(self):
        """
        A route, a route header and a decision are values: once made (a
        header once checked) they cannot be changed; routes and headers can
        be kept in sets, and routes sort by destination.
        """
        route = Route("b", "x", 2)
        decision = Decision(False, [], None)
        for value, name in ((route, "hops"), (self.header, "hops"), (decision, "deliver")):
            self.assertRaises(dataclasses.FrozenInstanceError, setattr, value, name, 1)
        self.assertEqual(len({route, Route("b", "x", 2), self.header, self.header.forwarded()}), 3)
        self.assertEqual(
            sorted([route, Route("a", "y", 3), Route("b", "a", 1)]),
            [Route("a", "y", 3), Route("b", "a", 1), route],
        )

    def test_too_long(self):
        """
        A routed line over the 1 MiB limit is refused both ways.
        """
        self.assertRaises(
            WireError, encode_routed, self.message, self.header, "x" * wire.MAX_LINE_BYTES
        )
        self.assertRaises(WireError, decode_routed, b" " * (wire.MAX_LINE_BYTES + 1))
