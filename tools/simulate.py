"""
A mesh of many routing nodes in one process, on real TCP sockets on
127.0.0.1, and the figures of what it does.

Each node is a whole L{RelayService} with C{routing=True} (and an outbox on
the nodes that send or receive reliable messages), listening on a free
loopback port; each link of the topology is one authenticated TCP
connection, dialled by one of its two ends. L{simulate} builds a connected
random graph or a ring, lets the routing tables converge, and measures:

  - a broadcast: how many of the nodes within the hop limit of its source
    got it, and how many copies the applications saw twice;
  - routed messages, ordinary and reliable, between random pairs of nodes
    with no direct link: delivery ratio, duplicates and hop counts;
  - the time every routing table takes to agree with the shortest paths of
    the live graph (a breadth-first search, cut at the hop limit) after the
    mesh starts, after a node joins, and after a node leaves.

Run it by hand::

    python -m tools.simulate --nodes 200 --topology random --seed 1
    python -m tools.simulate --nodes 30 --topology ring --json

Each node listens once and each link is one connection, so 200 nodes of
degree 3 hold about 800 sockets: the simulation raises the soft limit of
open files to the hard limit when it needs more than the soft limit
(L{ensure_fd_limit}; the command line says so). Every node is stopped at
the end, within a bounded time.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
from typing import Any, Callable, Iterable

from twisted.internet import defer, task
from twisted.internet.defer import Deferred, inlineCallbacks

from relaymesh.keystore import KeyStore
from relaymesh.mesh import DEFAULT_MAX_PEERS, PeerNotConnected, UnknownPeer
from relaymesh.routing.table import INFINITY
from relaymesh.service import RelayService

#: The two topologies L{build_topology} makes.
RANDOM = "random"
RING = "ring"
TOPOLOGIES = (RANDOM, RING)

#: The fewest nodes a simulated mesh has: one joins late and one leaves,
#: and a routed pair needs a node between its ends.
MIN_NODES = 4

#: The mean degree of a random topology.
RANDOM_DEGREE = 3

#: The hop limit of the simulated nodes: the highest the protocol allows
#: (L{relaymesh.routing.table.INFINITY} - 1), so that a random mesh of a few
#: hundred nodes and a ring of 30 are within reach end to end. The default
#: of a node, 8, would cut the larger meshes into neighbourhoods.
SIMULATION_MAX_HOPS = INFINITY - 1

#: Seconds between heartbeats; a silent neighbour is dropped after three.
SIMULATION_HEARTBEAT = 0.5

#: Seconds before a dropped dialler dials again at first (5 s in
#: production), so that the figures measure routing, not the backoff.
SIMULATION_RETRY_DELAY = 0.2

#: Seconds at most between two attempts to dial a peer that is gone.
SIMULATION_RETRY_MAX_DELAY = 2.0

#: Seconds an unacknowledged reliable message waits before it is sent again
#: (30 s in production).
SIMULATION_RESEND_AFTER = 1.0

#: Seconds a stopping node waits for its connections to close before it
#: aborts them (5 s in production).
SIMULATION_SHUTDOWN_TIMEOUT = 1.0

#: Where every node listens: any free port on the loopback interface.
LOOPBACK_LISTEN = "tcp:0:interface=127.0.0.1"

#: Seconds at most to wait for the links, the routing tables or the
#: messages of one phase.
PHASE_TIMEOUT = 60.0

#: Seconds between two checks of a condition being waited for.
POLL_INTERVAL = 0.05

#: Seconds to keep counting after the last expected copy arrived, so that a
#: late duplicate is seen.
DUPLICATE_GRACE = 1.0

#: Routed pairs per message round (fewer if the graph has fewer).
DEFAULT_PAIRS = 50

#: The message type the simulated applications send and count.
SIMULATION_MESSAGE_TYPE = "delegate_task"

#: The payload field that names a simulated message.
TAG_FIELD = "sim"

#: File descriptors a node needs at most besides its links: its listener,
#: its store (database, journal, worker wake-up) and some slack.
FDS_PER_NODE = 6

#: File descriptors one link needs: a socket at each end.
FDS_PER_LINK = 2


class SimulationError(Exception):
    """
    The simulation cannot run as asked; one line says why.
    """


# -- topologies ----------------------------------------------------------------


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


def distances(adjacency: dict[str, set[str]], source: str) -> dict[str, int]:
    """
    The hops from C{source} to every node it reaches (breadth first).
    """
    found = {source: 0}
    queue = collections.deque([source])
    while queue:
        here = queue.popleft()
        for there in adjacency[here]:
            if there not in found:
                found[there] = found[here] + 1
                queue.append(there)
    return found


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
    tables: dict[str, dict[str, tuple[str, int]]],
    expected: dict[str, dict[str, int]],
    far: dict[str, dict[str, int]],
    ignore: frozenset[str] = frozenset(),
) -> bool:
    """
    Whether the routing tables agree with the shortest paths.

    @param tables: per node, destination -> (next hop, hops) as it is now.
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


# -- figures -------------------------------------------------------------------


@dataclasses.dataclass
class MessageFigures:
    """
    What one round of messages did.

    @ivar kind: C{broadcast}, C{routed} (ordinary) or C{reliable}.
    @ivar sent: Messages sent.
    @ivar expected: Copies the applications should have had: the nodes
        within the hop limit of a broadcast's source, one per routed message.
    @ivar delivered: Distinct copies the applications had.
    @ivar duplicates: Copies an application had more than once.
    @ivar delivery_ratio: C{delivered / expected}.
    @ivar hops_mean: The mean shortest distance the copies travelled (the
        route the source had when it sent, for a routed message; the
        distance from the source, for a broadcast).
    @ivar hops_max: The longest of those distances.
    @ivar seconds: Seconds from the first send to the last expected copy
        (or to the bound, if some never came).
    """

    kind: str
    sent: int
    expected: int
    delivered: int
    duplicates: int
    delivery_ratio: float
    hops_mean: float
    hops_max: int
    seconds: float

    @classmethod
    def of(
        cls,
        kind: str,
        sent: int,
        expected: int,
        delivered: int,
        duplicates: int,
        hops: list[int],
        took: float | None,
        timeout: float,
    ) -> MessageFigures:
        """
        The figures of a round, derived from what was counted.

        @param took: seconds the round took, or L{None} if it hit C{timeout}.
        """
        return cls(
            kind=kind,
            sent=sent,
            expected=expected,
            delivered=delivered,
            duplicates=duplicates,
            delivery_ratio=delivered / expected if expected else 1.0,
            hops_mean=statistics.fmean(hops) if hops else 0.0,
            hops_max=max(hops, default=0),
            seconds=timeout if took is None else took,
        )

    def text(self, name: str) -> str:
        """
        The figures as one line of text for a reader, headed C{name}.
        """
        return (
            f"{name}: {self.sent} sent, {self.delivered}/{self.expected} delivered "
            f"({100 * self.delivery_ratio:.1f} %), {self.duplicates} duplicates, "
            f"hops mean {self.hops_mean:.2f} max {self.hops_max}, in {self.seconds:.2f} s"
        )


@dataclasses.dataclass
class SimulationReport:
    """
    The figures of one simulated mesh.

    @ivar nodes: Nodes in the topology (one of them joins late).
    @ivar topology: L{RANDOM} or L{RING}.
    @ivar seed: The random seed.
    @ivar links: Links (TCP connections) in the whole topology.
    @ivar degree_mean: Mean links per node.
    @ivar diameter: The longest shortest path of the whole topology.
    @ivar max_hops: The nodes' hop limit.
    @ivar heartbeat: Seconds between heartbeats.
    @ivar fd_limit: The soft limit of open files during the run.
    @ivar fd_limit_raised: Whether the simulation raised it to run.
    @ivar startup_s: Seconds to start every node but the joiner.
    @ivar linked_s: Seconds from the first dial until every link was up.
    @ivar converged_s: Seconds from the first dial until every table agreed
        with the shortest paths.
    @ivar broadcast: The broadcast round.
    @ivar routed: The round of ordinary routed messages.
    @ivar reliable: The round of reliable routed messages.
    @ivar joined: The node that joined.
    @ivar join_converged_s: Seconds from its start until every table agreed.
    @ivar left: The node that left.
    @ivar leave_live_converged_s: Seconds from its stop until every table
        agreed on the routes to the nodes still there.
    @ivar leave_converged_s: Seconds from its stop until every table agreed
        (the routes to the node that left withdrawn too: they count up to
        the hop limit, see C{docs/reliability.rst}).
    @ivar reliable_after_leave: Reliable routed messages once it had left.
    @ivar stopped_s: Seconds to stop every node.
    """

    nodes: int
    topology: str
    seed: int
    links: int
    degree_mean: float
    diameter: int
    max_hops: int
    heartbeat: float
    fd_limit: int
    fd_limit_raised: bool
    startup_s: float = 0.0
    linked_s: float | None = None
    converged_s: float | None = None
    broadcast: MessageFigures | None = None
    routed: MessageFigures | None = None
    reliable: MessageFigures | None = None
    joined: str = ""
    join_converged_s: float | None = None
    left: str = ""
    leave_live_converged_s: float | None = None
    leave_converged_s: float | None = None
    reliable_after_leave: MessageFigures | None = None
    stopped_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """
        The figures as JSON-ready data.
        """
        return dataclasses.asdict(self)

    def text(self) -> str:
        """
        The figures as lines of text for a reader.
        """

        def seconds(value: float | None) -> str:
            return "did not converge" if value is None else f"{value:.2f} s"

        lines = [
            f"{self.topology} mesh of {self.nodes} nodes (seed {self.seed}): {self.links} links, "
            f"mean degree {self.degree_mean:.2f}, diameter {self.diameter}, "
            f"hop limit {self.max_hops}, heartbeat {self.heartbeat:g} s, "
            f"open-file limit {self.fd_limit}{' (raised)' if self.fd_limit_raised else ''}",
            f"started in {self.startup_s:.2f} s; links up in {seconds(self.linked_s)}; "
            f"tables converged in {seconds(self.converged_s)}",
            f"{self.joined} joined: converged in {seconds(self.join_converged_s)}",
        ]
        for figures in (self.broadcast, self.routed, self.reliable):
            if figures is not None:
                lines.append(figures.text(figures.kind))
        lines.append(
            f"{self.left} left: routes to the others converged in "
            f"{seconds(self.leave_live_converged_s)}, routes to it withdrawn everywhere "
            f"in {seconds(self.leave_converged_s)}"
        )
        if self.reliable_after_leave is not None:
            lines.append(self.reliable_after_leave.text("reliable after the leave"))
        lines.append(f"stopped in {self.stopped_s:.2f} s")
        return "\n".join(lines)


# -- file descriptors ----------------------------------------------------------


def needed_fds(topology: Topology) -> int:
    """
    About how many file descriptors the simulation of C{topology} opens.
    """
    return len(topology.names) * FDS_PER_NODE + len(topology.edges) * FDS_PER_LINK


def ensure_fd_limit(needed: int) -> tuple[int, bool]:
    """
    Raise the soft limit of open files to the hard limit if C{needed} is
    above it.

    @return: the soft limit now, and whether it was raised.
    @raise SimulationError: if even the hard limit is too low.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed <= soft:
        return soft, False
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise SimulationError(
            f"the simulation needs about {needed} open files; the hard limit is {hard}"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0], True


# -- waiting -------------------------------------------------------------------


def wait_until(
    reactor: Any, predicate: Callable[[], object], timeout: float, interval: float = POLL_INTERVAL
) -> Deferred[float | None]:
    """
    Fire with the seconds it took once C{predicate()} is true, or with
    L{None} after C{timeout} seconds.
    """
    return wait_until_each(reactor, [predicate], timeout, interval).addCallback(lambda t: t[0])


def wait_until_each(
    reactor: Any,
    predicates: list[Callable[[], object]],
    timeout: float,
    interval: float = POLL_INTERVAL,
) -> Deferred[list[float | None]]:
    """
    Poll several predicates together, and fire with the seconds each took to
    first become true (L{None} for one that did not within C{timeout}).

    Checking them at the same instants keeps their times comparable: one
    that implies another is never timed earlier than it.
    """
    started = reactor.seconds()
    times: list[float | None] = [None] * len(predicates)
    done: Deferred[list[float | None]] = Deferred()

    def check() -> None:
        now = reactor.seconds()
        for i, predicate in enumerate(predicates):
            if times[i] is None and predicate():
                times[i] = now - started
        if all(t is not None for t in times) or now - started > timeout:
            loop.stop()
            done.callback(times)

    loop = task.LoopingCall(check)
    loop.clock = reactor
    loop.start(interval)
    return done


# -- the mesh ------------------------------------------------------------------


class SimulatedMesh:
    """
    The nodes of a L{Topology} in one reactor, and what their applications
    received.

    @ivar topology: The graph.
    @ivar nodes: The running nodes, by name.
    @ivar ports: The port each node listens on, once started.
    @ivar received: Per C{(node, tag)}, how many times that node's
        application got the message with that tag.
    """

    def __init__(
        self,
        reactor: Any,
        topology: Topology,
        directory: str,
        heartbeat: float = SIMULATION_HEARTBEAT,
        max_hops: int = SIMULATION_MAX_HOPS,
        outbox: Iterable[str] = (),
    ) -> None:
        """
        @param directory: Where the nodes' data directories go.
        @param outbox: The nodes that get an outbox (reliable messages).
        """
        self.reactor = reactor
        self.topology = topology
        self.directory = directory
        self.heartbeat = heartbeat
        self.max_hops = max_hops
        self.outbox = frozenset(outbox)
        self.nodes: dict[str, RelayService] = {}
        self.ports: dict[str, int] = {}
        self.received: collections.Counter[tuple[str, str]] = collections.Counter()
        self.keystores = {name: self._keystore(name) for name in topology.names}
        for a, b in topology.edges:
            key = os.urandom(32)
            self.keystores[a].set_key(b, key)
            self.keystores[b].set_key(a, key)

    def _keystore(self, name: str) -> KeyStore:
        keystore = KeyStore(os.path.join(self.directory, name))
        keystore.set_identity(name)
        return keystore

    # -- nodes and links -----------------------------------------------------

    def start(self, names: Iterable[str]) -> Deferred[None]:
        """
        Start the named nodes, listening on free ports, without links.
        """
        started = []
        adjacency = self.topology.neighbours()
        for name in names:
            node = RelayService(
                self.keystores[name],
                listen=LOOPBACK_LISTEN,
                reactor=self.reactor,
                heartbeat_interval=self.heartbeat,
                # a node of a random graph may have more links than the
                # default limit of peers
                max_peers=max(DEFAULT_MAX_PEERS, len(adjacency[name])),
                outbox=name in self.outbox,
                resend_after=SIMULATION_RESEND_AFTER,
                routing=True,
                max_hops=self.max_hops,
            )
            node.shutdown_timeout = SIMULATION_SHUTDOWN_TIMEOUT
            node.mesh.subscribe(self._counter(name), SIMULATION_MESSAGE_TYPE)
            self.nodes[name] = node
            node.startService()
            started.append(node.whenStarted().addCallback(self._listening, name))
        return defer.gatherResults(started, consumeErrors=True).addCallback(lambda _: None)

    def _listening(self, _: None, name: str) -> None:
        listener = self.nodes[name].listener
        assert listener is not None and listener.port is not None
        self.ports[name] = listener.port.getHost().port

    def _counter(self, name: str) -> Callable[[str, Any], None]:
        received = self.received

        def count(peer_id: str, message: Any) -> None:
            payload = message.payload
            if isinstance(payload, dict) and TAG_FIELD in payload:
                received[name, str(payload[TAG_FIELD])] += 1

        return count

    def dial(self, name: str, targets: Iterable[str]) -> None:
        """
        Make node C{name} dial each of C{targets} (running nodes).
        """
        node = self.nodes[name]
        for target in targets:
            outbound = node.add_peer(f"{target}@127.0.0.1:{self.ports[target]}")
            outbound.factory.initialDelay = SIMULATION_RETRY_DELAY
            outbound.factory.maxDelay = SIMULATION_RETRY_MAX_DELAY
            # the dialler started with the default delay: take the short one
            # for its first retry too (an acceptor takes only a few handshakes
            # from one address at a time, and every node here is 127.0.0.1)
            outbound.factory.resetDelay()

    def link(self, names: Iterable[str]) -> None:
        """
        Join the running C{names} along the topology's edges between them:
        of each link, the later node in the topology's order dials.
        """
        alive = set(names)
        order = {name: i for i, name in enumerate(self.topology.names)}
        for a, b in self.topology.edges:
            if a in alive and b in alive:
                early, late = sorted((a, b), key=order.__getitem__)
                self.dial(late, [early])

    def stop_node(self, name: str) -> Deferred[None]:
        """
        Stop one node gracefully; the others keep dialling it.
        """
        return self.nodes.pop(name).stopService()

    def stop(self) -> Deferred[None]:
        """
        Stop every node; fires once all are stopped (each aborts its
        connections after L{SIMULATION_SHUTDOWN_TIMEOUT}).
        """
        nodes, self.nodes = self.nodes, {}
        stopping = [node.stopService() for node in nodes.values() if node.running]
        return defer.gatherResults(stopping, consumeErrors=True).addCallback(lambda _: None)

    # -- state ---------------------------------------------------------------

    def live(self) -> list[str]:
        """
        The running nodes, in the topology's order.
        """
        return [name for name in self.topology.names if name in self.nodes]

    def links_up(self) -> bool:
        """
        Whether every link between running nodes is connected.
        """
        for name, neighbours in self.topology.neighbours(self.live()).items():
            mesh = self.nodes[name].mesh
            if not all(mesh.is_connected(other) for other in neighbours):
                return False
        return True

    def tables(self) -> dict[str, dict[str, tuple[str, int]]]:
        """
        Every running node's routing table: destination -> (next hop, hops).
        """
        tables = {}
        for name, node in self.nodes.items():
            router = node.mesh.router
            assert router is not None
            tables[name] = {r.destination: (r.via, r.hops) for r in router.table.routes()}
        return tables

    def converged(self, ignore: Iterable[str] = ()) -> Callable[[], bool]:
        """
        A predicate: whether every running node's table agrees with the
        shortest paths of the live graph, cut at the hop limit.

        @param ignore: Destinations whose routes are not checked.
        """
        adjacency = self.topology.neighbours(self.live())
        far = all_distances(adjacency)
        expected = expected_routes(adjacency, self.max_hops)
        ignored = frozenset(ignore)
        return lambda: consistent(self.tables(), expected, far, ignored)

    def copies(self, tag: str, receivers: Iterable[str]) -> tuple[int, int]:
        """
        How many of C{receivers} got the message C{tag}, and how many extra
        copies the applications saw.
        """
        delivered = duplicates = 0
        for name in receivers:
            count = self.received[name, tag]
            if count:
                delivered += 1
                duplicates += count - 1
        return delivered, duplicates


# -- rounds of messages ----------------------------------------------------------


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


def outbox_nodes(topology: Topology, rng: random.Random, count: int) -> list[str]:
    """
    The nodes that get an outbox: enough random ones to make C{count}
    reliable pairs among them, at least half the graph's nodes up to 40.
    """
    size = min(len(topology.names), max(count, len(topology.names) // 2, 2), 40)
    return sorted(rng.sample(topology.names, size))


@inlineCallbacks
def broadcast_round(mesh: SimulatedMesh, source: str, tag: str, timeout: float):
    """
    Broadcast one message from C{source} and count who got it.

    @return: a Deferred firing with its L{MessageFigures}.
    """
    adjacency = mesh.topology.neighbours(mesh.live())
    found = distances(adjacency, source)
    receivers = {n: d for n, d in found.items() if 0 < d <= mesh.max_hops}
    mesh.nodes[source].mesh.broadcast(SIMULATION_MESSAGE_TYPE, {TAG_FIELD: tag})
    took = yield wait_until(
        mesh.reactor, lambda: mesh.copies(tag, receivers)[0] == len(receivers), timeout
    )
    yield task.deferLater(mesh.reactor, DUPLICATE_GRACE, lambda: None)
    delivered, duplicates = mesh.copies(tag, list(mesh.nodes))
    return MessageFigures.of(
        "broadcast", 1, len(receivers), delivered, duplicates, list(receivers.values()), took, timeout
    )


@inlineCallbacks
def routed_round(
    mesh: SimulatedMesh,
    pairs: list[tuple[str, str, int]],
    prefix: str,
    reliable: bool,
    timeout: float,
):
    """
    Send one message (reliable or not) along each pair and count what the
    destinations' applications got; a reliable round also waits for every
    acknowledgement.

    @return: a Deferred firing with its L{MessageFigures}.
    """
    tags, hops, deliveries = [], [], []
    for i, (source, destination, _) in enumerate(pairs):
        tag = f"{prefix}{i}"
        tags.append((destination, tag))
        sender = mesh.nodes[source].mesh
        route = sender.router.route(destination) if sender.router is not None else None
        hops.append(route.hops if route is not None else 0)
        payload = {TAG_FIELD: tag}
        try:
            if reliable:
                deliveries.append(
                    sender.send_reliable(destination, SIMULATION_MESSAGE_TYPE, payload)
                )
            else:
                sender.send(destination, SIMULATION_MESSAGE_TYPE, payload)
        except (UnknownPeer, PeerNotConnected):
            pass  # no route at the source (the tables did not converge): counted as lost

    def arrived() -> bool:
        return all(mesh.received[destination, tag] for destination, tag in tags)

    acknowledged: list[bool] = []
    if deliveries:
        acks = defer.DeferredList([d.delivered() for d in deliveries], consumeErrors=True)
        acks.addCallback(lambda _: acknowledged.append(True))

    took = yield wait_until(
        mesh.reactor, lambda: arrived() and (not deliveries or bool(acknowledged)), timeout
    )
    yield task.deferLater(mesh.reactor, DUPLICATE_GRACE, lambda: None)
    delivered = sum(1 for destination, tag in tags if mesh.received[destination, tag])
    duplicates = sum(max(0, mesh.received[destination, tag] - 1) for destination, tag in tags)
    kind = "reliable" if reliable else "routed"
    return MessageFigures.of(kind, len(pairs), len(pairs), delivered, duplicates, hops, took, timeout)


# -- the whole run -------------------------------------------------------------


@inlineCallbacks
def simulate(
    reactor: Any,
    count: int,
    kind: str,
    seed: int,
    directory: str,
    heartbeat: float = SIMULATION_HEARTBEAT,
    max_hops: int = SIMULATION_MAX_HOPS,
    pairs: int = DEFAULT_PAIRS,
    timeout: float = PHASE_TIMEOUT,
    progress: Callable[[str], object] = lambda line: None,
):
    """
    Build a mesh of C{count} nodes, run every scenario, stop every node.

    One node (not a cut vertex) is held back; the others start and link,
    timed until their tables converge. Then the held-back node joins, timed
    until the tables converge again, and a broadcast, ordinary routed
    messages and reliable routed messages go round the whole topology. Then
    another node leaves, timed until the tables converge again; last,
    reliable routed messages go round the changed mesh.

    @param directory: An empty directory for the nodes' data.
    @param pairs: Routed messages per round.
    @param timeout: Seconds at most per phase.
    @param progress: Called with a line of text as each phase ends.
    @return: a Deferred firing with the L{SimulationReport}.
    @raise SimulationError: if the simulation cannot run as asked.
    """
    rng = random.Random(seed)
    topology = build_topology(kind, count, rng)
    fd_limit, raised = ensure_fd_limit(needed_fds(topology))
    report = SimulationReport(
        nodes=count,
        topology=kind,
        seed=seed,
        links=len(topology.edges),
        degree_mean=topology.degree_mean(),
        diameter=max(max(d.values()) for d in all_distances(topology.neighbours()).values()),
        max_hops=max_hops,
        heartbeat=heartbeat,
        fd_limit=fd_limit,
        fd_limit_raised=raised,
    )
    joiner = removable(topology, topology.names, rng)
    first = [name for name in topology.names if name != joiner]
    mesh = SimulatedMesh(
        reactor, topology, directory, heartbeat, max_hops, outbox_nodes(topology, rng, pairs)
    )
    try:
        started = reactor.seconds()
        yield mesh.start(first)
        report.startup_s = reactor.seconds() - started
        progress(f"{len(first)} nodes started")

        dialled = reactor.seconds()
        mesh.link(first)
        report.linked_s = yield wait_until(reactor, mesh.links_up, timeout)
        converged = yield wait_until(reactor, mesh.converged(), timeout)
        if converged is not None:
            report.converged_s = reactor.seconds() - dialled
        progress(f"links up after {report.linked_s} s")
        progress(f"tables converged after {report.converged_s} s")

        report.joined = joiner
        yield mesh.start([joiner])
        joined = reactor.seconds()
        mesh.dial(joiner, sorted(topology.neighbours()[joiner]))
        converged = yield wait_until(reactor, mesh.converged(), timeout)
        report.join_converged_s = None if converged is None else reactor.seconds() - joined
        progress(f"{joiner} joined, converged after {report.join_converged_s} s")

        names = topology.names
        report.broadcast = yield broadcast_round(mesh, rng.choice(names), "b", timeout)
        report.routed = yield routed_round(
            mesh, routed_pairs(topology, names, max_hops, rng, pairs), "r", False, timeout
        )
        report.reliable = yield routed_round(
            mesh,
            routed_pairs(topology, names, max_hops, rng, pairs, among=mesh.outbox),
            "a",
            True,
            timeout,
        )
        progress("broadcast, routed and reliable rounds done")

        leaver = removable(topology, mesh.live(), rng, exclude=[joiner])
        report.left = leaver
        left = reactor.seconds()
        yield mesh.stop_node(leaver)
        stopped = reactor.seconds() - left
        live, whole = yield wait_until_each(
            reactor, [mesh.converged(ignore=[leaver]), mesh.converged()], timeout
        )
        report.leave_live_converged_s = None if live is None else stopped + live
        report.leave_converged_s = None if whole is None else stopped + whole
        progress(
            f"{leaver} left, routes to the others converged after "
            f"{report.leave_live_converged_s} s, all after {report.leave_converged_s} s"
        )

        report.reliable_after_leave = yield routed_round(
            mesh,
            routed_pairs(topology, mesh.live(), max_hops, rng, pairs, among=mesh.outbox),
            "l",
            True,
            timeout,
        )
    finally:
        stopping = reactor.seconds()
        yield mesh.stop()
        report.stopped_s = reactor.seconds() - stopping
    return report


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """
    The options of the command line; exits with a usage message if wrong.
    """
    parser = argparse.ArgumentParser(
        prog="python -m tools.simulate",
        description="Run many routing nodes in one process on loopback TCP and "
        "report delivery, duplicates, hop counts and convergence times.",
    )
    parser.add_argument("--nodes", type=int, default=50, help="nodes in the mesh (default 50)")
    parser.add_argument("--topology", choices=TOPOLOGIES, default=RANDOM)
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=SIMULATION_HEARTBEAT,
        help=f"seconds between heartbeats (default {SIMULATION_HEARTBEAT:g})",
    )
    parser.add_argument(
        "--max-hops",
        type=int,
        default=SIMULATION_MAX_HOPS,
        help=f"the nodes' hop limit, 1 to {INFINITY - 1} (default {SIMULATION_MAX_HOPS})",
    )
    parser.add_argument(
        "--pairs", type=int, default=DEFAULT_PAIRS, help="routed messages per round"
    )
    parser.add_argument(
        "--timeout", type=float, default=PHASE_TIMEOUT, help="seconds at most per phase"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    options = parser.parse_args(argv)
    if options.nodes < MIN_NODES:
        parser.error(f"--nodes must be at least {MIN_NODES}")
    if not 1 <= options.max_hops < INFINITY:
        parser.error(f"--max-hops must be from 1 to {INFINITY - 1}")
    if options.heartbeat <= 0 or options.timeout <= 0 or options.pairs < 0:
        parser.error("--heartbeat and --timeout must be positive, --pairs not negative")
    return options


def main(reactor: Any, argv: list[str]) -> Deferred[None]:
    """
    Run one simulation as the command line asks, in a temporary directory
    removed afterwards, and print its figures.
    """
    options = parse_arguments(argv)
    directory = tempfile.mkdtemp(prefix="relaymesh-simulation-")

    def show(report: SimulationReport) -> None:
        if report.fd_limit_raised:
            sys.stderr.write(f"raised the open-file limit to {report.fd_limit}\n")
        if options.json:
            sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
        else:
            sys.stdout.write(report.text() + "\n")

    d = simulate(
        reactor,
        options.nodes,
        options.topology,
        options.seed,
        directory,
        heartbeat=options.heartbeat,
        max_hops=options.max_hops,
        pairs=options.pairs,
        timeout=options.timeout,
        progress=lambda line: sys.stderr.write(line + "\n"),
    )
    d.addCallback(show)
    d.addBoth(lambda result: (shutil.rmtree(directory, ignore_errors=True), result)[1])
    return d


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
