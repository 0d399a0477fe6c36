"""
The graphs of a simulated mesh (L{tools.simulate}), and the shortest paths
its routing tables are checked against.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Mapping

from relaymesh.testing import hop_distances as distances

#: The two topologies L{build_topology} makes.
RANDOM = "random"
RING = "ring"
TOPOLOGIES = (RANDOM, RING)

#: The fewest nodes a simulated mesh has: one joins late and one leaves,
#: and a routed pair needs a node between its ends.
MIN_NODES = 4

#: The mean degree of a random topology.
RANDOM_DEGREE = 3


class SimulationError(Exception):
    """
    The simulation cannot run as asked; one line says why.
    """


@dataclasses.dataclass(frozen=True)
class Topology:
    """
    An undirected graph of named nodes.

    @ivar names: The node names, in order.
    @ivar edges: The links, each a pair of names in the order of C{names}.
    """

    names: tuple[str, ...]
    edges: tuple[tuple[str, str], ...]

    def neighbours(self, live: Iterable[str] | None = None) -> dict[str, set[str]]:
        """
        The adjacency of the graph, restricted to the C{live} nodes if given.
        """
        alive = set(self.names if live is None else live)
        adjacency: dict[str, set[str]] = {name: set() for name in self.names if name in alive}
        for a, b in self.edges:
            if a in alive and b in alive:
                adjacency[a].add(b)
                adjacency[b].add(a)
        return adjacency

    def degree_mean(self) -> float:
        """
        The mean number of links per node.
        """
        return 2 * len(self.edges) / len(self.names)


def node_name(index: int) -> str:
    """
    The peer id of the C{index}-th simulated node.
    """
    return f"n{index:03d}"


def build_topology(kind: str, count: int, rng: random.Random) -> Topology:
    """
    A connected graph of C{count} nodes.

    @param kind: L{RANDOM}: a random spanning tree (each node linked to a
        random earlier one) plus random extra links up to a mean degree of
        L{RANDOM_DEGREE}; L{RING}: each node linked to the next, the last
        to the first.
    @raise SimulationError: for an unknown kind or too few nodes.
    """
    if count < MIN_NODES:
        raise SimulationError(f"a simulated mesh needs at least {MIN_NODES} nodes")
    names = tuple(node_name(i) for i in range(count))
    if kind == RING:
        edges = {tuple(sorted((names[i], names[(i + 1) % count]))) for i in range(count)}
    elif kind == RANDOM:
        order = list(names)
        rng.shuffle(order)
        edges = set()
        for i in range(1, count):
            edges.add(tuple(sorted((order[i], rng.choice(order[:i])))))
        wanted = min(round(count * RANDOM_DEGREE / 2), count * (count - 1) // 2)
        while len(edges) < wanted:
            a, b = rng.sample(names, 2)
            edges.add(tuple(sorted((a, b))))
    else:
        raise SimulationError(f"unknown topology {kind!r}: one of {', '.join(TOPOLOGIES)}")
    return Topology(names, tuple(sorted(edges)))  # type: ignore[arg-type]


def all_distances(adjacency: dict[str, set[str]]) -> dict[str, dict[str, int]]:
    """
    The hops between every pair of nodes that reach each other.
    """
    return {name: distances(adjacency, name) for name in adjacency}


def is_connected(adjacency: dict[str, set[str]]) -> bool:
    """
    Whether every node reaches every other.
    """
    if not adjacency:
        return True
    return len(distances(adjacency, next(iter(adjacency)))) == len(adjacency)


def removable(
    topology: Topology, live: Iterable[str], rng: random.Random, exclude: Iterable[str] = ()
) -> str:
    """
    A random live node, not one of C{exclude}, whose removal leaves the live
    graph connected.

    @raise SimulationError: if every such node is a cut vertex.
    """
    alive = sorted(live)
    candidates = [name for name in alive if name not in set(exclude)]
    for name in rng.sample(candidates, len(candidates)):
        rest = [n for n in alive if n != name]
        if is_connected(topology.neighbours(rest)):
            return name
    raise SimulationError("every node of the graph holds it together")


def expected_routes(
    adjacency: dict[str, set[str]], max_hops: int
) -> dict[str, dict[str, int]]:
    """
    The routing table every live node should converge to: each destination
    within the hop limit and its shortest distance.
    """
    return {
        name: {d: hops for d, hops in found.items() if 0 < hops <= max_hops}
        for name, found in all_distances(adjacency).items()
    }


def consistent(
    tables: Mapping[str, dict[str, tuple[str, int]]],
    expected: dict[str, dict[str, int]],
    far: dict[str, dict[str, int]],
    ignore: frozenset[str] = frozenset(),
) -> bool:
    """
    Whether the routing tables agree with the shortest paths.

    @param tables: per node, destination -> (next hop, hops) as it is now;
        looked up node by node, so that the first disagreement ends the
        check.
    @param expected: per node, destination -> shortest hops, within the
        hop limit (L{expected_routes}).
    @param far: per node, the shortest hops to every node it reaches
        (L{all_distances}), to check that each next hop is on a shortest
        path.
    @param ignore: Destinations whose routes are not checked (a node that
        left, whose stale routes are being counted to infinity).
    """
    for name, want in expected.items():
        table = tables[name]
        if ignore:
            table = {d: entry for d, entry in table.items() if d not in ignore}
        if len(table) != len(want):
            return False
        for destination, hops in want.items():
            entry = table.get(destination)
            if entry is None or entry[1] != hops:
                return False
            via = entry[0]
            if far.get(via, {}).get(destination) != hops - 1:
                return False
    return True


def routed_pairs(
    topology: Topology,
    live: Iterable[str],
    max_hops: int,
    rng: random.Random,
    count: int,
    among: Iterable[str] | None = None,
) -> list[tuple[str, str, int]]:
    """
    Up to C{count} random (source, destination, distance) with no direct
    link and within the hop limit.

    @param among: The nodes that may be sources and destinations (all live
        ones if L{None}).
    """
    live = list(live)
    adjacency = topology.neighbours(live)
    candidates = sorted(set(live if among is None else among) & set(live))
    pairs = []
    for source in candidates:
        found = distances(adjacency, source)
        for destination in candidates:
            if 2 <= found.get(destination, 0) <= max_hops:
                pairs.append((source, destination, found[destination]))
    rng.shuffle(pairs)
    return pairs[:count]
