"""
A mesh of many routing nodes in one process, on the in-memory network of
L{relaymesh.testing}, and the figures of what it does.

Each node is a whole L{RelayService} with C{routing=True} (and an
in-memory outbox on the nodes that send or receive reliable messages),
listening on the in-memory network; each link of the topology is one
authenticated connection, dialled by one of its two ends. Every node is
paired with every other (a key for each pair in their key stores), linked
or not: routed messages are sealed end to end with the key their origin
and destination share, and a broadcast reaches the nodes its source is
paired with. Time is the
network's clock: the run is deterministic for a seed, takes seconds of CPU
for a few hundred nodes, and every time it reports is in simulated
seconds. L{simulate} builds a connected random graph or a ring, lets the
routing tables converge, and measures:

  - a broadcast: how many of the nodes within the hop limit of its source
    got it, and how many copies the applications saw twice;
  - routed messages, ordinary and reliable, between random pairs of nodes
    with no direct link: delivery ratio, duplicates and hop counts;
  - the simulated time every routing table takes to agree with the
    shortest paths of the live graph (a breadth-first search, cut at the
    hop limit) after the mesh starts, after a node joins, and after a node
    leaves.

Run it from a checkout::

    python tools/simulate.py --nodes 200 --topology random --seed 1
    python -m tools.simulate --nodes 30 --topology ring --json

It exits with status 1 if a check failed (L{SimulationReport.failures}).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

if __package__ in (None, ""):  # run as python tools/simulate.py: import from the checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.defer import Deferred, DeferredList, gatherResults

from relaymesh.mesh import DEFAULT_MAX_PEERS, PeerNotConnected, UnknownPeer
from relaymesh.routing.table import INFINITY
from relaymesh.service import RelayService
from relaymesh.testing import MemoryNetwork, connect_nodes, memory_node
from tools.topology import (
    MIN_NODES,
    RANDOM,
    TOPOLOGIES,
    SimulationError,
    Topology,
    all_distances,
    build_topology,
    consistent,
    distances,
    expected_routes,
    removable,
    routed_pairs,
)

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

#: Simulated seconds at most to wait for the routing tables or the
#: messages of one phase.
PHASE_TIMEOUT = 60.0

#: Simulated seconds between two checks of a condition being waited for.
POLL_INTERVAL = 0.05

#: Simulated seconds to keep counting after the last expected copy
#: arrived, so that a late duplicate is seen.
DUPLICATE_GRACE = 1.0

#: The clock's time when a simulation starts: a time in 2026, so that the
#: nodes' timestamps look real.
SIMULATION_START = 1795718866.757

#: Routed pairs per message round (fewer if the graph has fewer).
DEFAULT_PAIRS = 50

#: The message type the simulated applications send and count.
SIMULATION_MESSAGE_TYPE = "delegate_task"

#: The payload field that names a simulated message.
TAG_FIELD = "sim"


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
    @ivar seconds: Simulated seconds from the first send to the last
        expected copy (or to the bound, if some never came).
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
    The figures of one simulated mesh; times are simulated seconds, but
    for L{cpu_s}.

    @ivar nodes: Nodes in the topology (one of them joins late).
    @ivar topology: L{RANDOM} or L{RING}.
    @ivar seed: The random seed.
    @ivar links: Links (connections) in the whole topology.
    @ivar degree_mean: Mean links per node.
    @ivar diameter: The longest shortest path of the whole topology.
    @ivar max_hops: The nodes' hop limit.
    @ivar heartbeat: Seconds between heartbeats.
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
    @ivar stopped: Whether every node stopped (within the shutdown timeout).
    @ivar simulated_s: Simulated seconds of the whole run.
    @ivar cpu_s: CPU seconds the whole run took (the one figure that
        varies from run to run).
    """

    nodes: int
    topology: str
    seed: int
    links: int
    degree_mean: float
    diameter: int
    max_hops: int
    heartbeat: float
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
    stopped: bool = False
    simulated_s: float = 0.0
    cpu_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """
        The figures as JSON-ready data.
        """
        return dataclasses.asdict(self)

    def failures(self) -> list[str]:
        """
        The checks that failed, one line each: every table converged after
        the start, the join and the leave; the broadcast and the reliable
        messages reached every node they were meant for, exactly once; no
        ordinary routed message was duplicated; every node stopped.
        """
        failed = [
            f"the tables did not converge {when}"
            for when, took in (
                ("after the start", self.converged_s),
                (f"after {self.joined} joined", self.join_converged_s),
                (f"on the live nodes after {self.left} left", self.leave_live_converged_s),
                (f"after {self.left} left", self.leave_converged_s),
            )
            if took is None
        ]
        for name, figures in (
            ("broadcast", self.broadcast),
            ("reliable", self.reliable),
            ("reliable after the leave", self.reliable_after_leave),
        ):
            if figures is None:
                failed.append(f"no {name} round")
            elif figures.delivered != figures.expected or figures.duplicates:
                failed.append(figures.text(name))
        if self.routed is None or self.routed.duplicates:
            failed.append("ordinary routed messages were duplicated or not sent")
        if not self.stopped:
            failed.append("not every node stopped")
        return failed

    def text(self) -> str:
        """
        The figures as lines of text for a reader.
        """

        def seconds(value: float | None) -> str:
            return "did not converge" if value is None else f"{value:.2f} s"

        lines = [
            f"{self.topology} mesh of {self.nodes} nodes (seed {self.seed}): {self.links} links, "
            f"mean degree {self.degree_mean:.2f}, diameter {self.diameter}, "
            f"hop limit {self.max_hops}, heartbeat {self.heartbeat:g} s (simulated seconds)",
            f"links up in {seconds(self.linked_s)}; tables converged in {seconds(self.converged_s)}",
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
        lines.append(
            f"{'stopped' if self.stopped else 'NOT stopped'}; {self.simulated_s:.1f} simulated "
            f"seconds in {self.cpu_s:.1f} s of CPU"
        )
        return "\n".join(lines)


# -- waiting -------------------------------------------------------------------


def wait_until_each(
    network: MemoryNetwork,
    predicates: list[Callable[[], object]],
    timeout: float,
    interval: float = POLL_INTERVAL,
) -> list[float | None]:
    """
    Advance the network's clock by C{interval} until every predicate is
    true, or for C{timeout} seconds at most.

    Checking them at the same instants keeps their times comparable: one
    that implies another is never timed earlier than it.

    @return: the seconds each took to first become true (L{None} for one
        that did not within C{timeout}).
    """
    started = network.seconds()
    times: list[float | None] = [None] * len(predicates)
    network.flush()
    while True:
        # to the millisecond: the clock's floats count from 2026
        elapsed = round(network.seconds() - started, 3)
        for i, predicate in enumerate(predicates):
            if times[i] is None and predicate():
                times[i] = elapsed
        if all(t is not None for t in times) or elapsed >= timeout:
            return times
        network.advance(interval)


def wait_until(
    network: MemoryNetwork, predicate: Callable[[], object], timeout: float
) -> float | None:
    """
    L{wait_until_each} for one predicate.
    """
    return wait_until_each(network, [predicate], timeout)[0]


def settled(network: MemoryNetwork, d: Deferred[Any], timeout: float) -> bool:
    """
    Advance the clock until C{d} fires (C{timeout} seconds at most); whether
    it succeeded.
    """
    outcome: list[bool] = []
    d.addCallbacks(lambda _: outcome.append(True), lambda _: outcome.append(False))
    wait_until(network, lambda: outcome, timeout)
    return outcome == [True]


# -- the mesh ------------------------------------------------------------------


class Tables(Mapping[str, dict[str, tuple[str, int]]]):
    """
    Every running node's routing table as it is now, read from its
    L{relaymesh.mesh.Mesh.peers} when looked up: destination -> (next hop,
    hops) of every peer or routed node it can reach.
    """

    def __init__(self, nodes: dict[str, RelayService]) -> None:
        self._nodes = nodes

    def __getitem__(self, name: str) -> dict[str, tuple[str, int]]:
        return {
            status.peer_id: (status.via, status.hops)
            for status in self._nodes[name].mesh.peers()
            if status.via is not None and status.hops is not None
        }

    def __iter__(self) -> Iterator[str]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)


class SimulatedMesh:
    """
    The nodes of a L{Topology} on one in-memory network, and what their
    applications received.

    @ivar network: The L{MemoryNetwork}, also the nodes' clock.
    @ivar topology: The graph.
    @ivar nodes: The running nodes, by name.
    @ivar received: Per C{(node, tag)}, how many times that node's
        application got the message with that tag.
    """

    def __init__(
        self,
        network: MemoryNetwork,
        topology: Topology,
        heartbeat: float = SIMULATION_HEARTBEAT,
        max_hops: int = SIMULATION_MAX_HOPS,
        outbox: Iterable[str] = (),
    ) -> None:
        """
        @param outbox: The nodes that get an outbox (reliable messages).
        """
        self.network = network
        self.topology = topology
        self.heartbeat = heartbeat
        self.max_hops = max_hops
        self.outbox = frozenset(outbox)
        self.nodes: dict[str, RelayService] = {}
        self.received: collections.Counter[tuple[str, str]] = collections.Counter()

    # -- nodes and links -----------------------------------------------------

    def start(self, names: Iterable[str]) -> None:
        """
        Start the named nodes, listening, without links.
        """
        adjacency = self.topology.neighbours()
        for name in names:
            node = memory_node(
                self.network,
                name,
                outbox=name in self.outbox,
                heartbeat_interval=self.heartbeat,
                # a node of a random graph may have more links than the
                # default limit of peers
                max_peers=max(DEFAULT_MAX_PEERS, len(adjacency[name])),
                resend_after=SIMULATION_RESEND_AFTER,
                routing=True,
                max_hops=self.max_hops,
                retry_initial_delay=SIMULATION_RETRY_DELAY,
                retry_max_delay=SIMULATION_RETRY_MAX_DELAY,
                shutdown_timeout=SIMULATION_SHUTDOWN_TIMEOUT,
            )
            node.mesh.subscribe(self._counter(name), SIMULATION_MESSAGE_TYPE)
            for other in self.nodes.values():
                pair(node, other)
            self.nodes[name] = node
            node.startService()
        self.network.flush()

    def _counter(self, name: str) -> Callable[[str, Any], None]:
        received = self.received

        def count(peer_id: str, message: Any) -> None:
            payload = message.payload
            if isinstance(payload, dict) and TAG_FIELD in payload:
                received[name, str(payload[TAG_FIELD])] += 1

        return count

    def dial(self, name: str, targets: Iterable[str]) -> None:
        """
        Pair node C{name} with each of C{targets} (running nodes) and make it
        dial them.
        """
        node = self.nodes[name]
        for target in targets:
            connect_nodes(self.network, self.nodes[target], node)

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
        return gatherResults(stopping, consumeErrors=True)

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
        return lambda: consistent(Tables(self.nodes), expected, far, ignored)

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


def pair(a: RelayService, b: RelayService) -> None:
    """
    Give two nodes a key for each other, as pairing does, whether or not
    they will ever connect.
    """
    key = os.urandom(32)
    a.keystore.set_key(b.mesh.identity, key)
    b.keystore.set_key(a.mesh.identity, key)


# -- rounds of messages ----------------------------------------------------------


def outbox_nodes(topology: Topology, rng: random.Random, count: int) -> list[str]:
    """
    The nodes that get an outbox: enough random ones to make C{count}
    reliable pairs among them, at least half the graph's nodes up to 40.
    """
    size = min(len(topology.names), max(count, len(topology.names) // 2, 2), 40)
    return sorted(rng.sample(topology.names, size))


def broadcast_round(mesh: SimulatedMesh, source: str, tag: str, timeout: float) -> MessageFigures:
    """
    Broadcast one message from C{source} and count who got it.
    """
    found = distances(mesh.topology.neighbours(mesh.live()), source)
    receivers = {n: d for n, d in found.items() if 0 < d <= mesh.max_hops}
    mesh.nodes[source].mesh.broadcast(SIMULATION_MESSAGE_TYPE, {TAG_FIELD: tag})
    took = wait_until(
        mesh.network, lambda: mesh.copies(tag, receivers)[0] == len(receivers), timeout
    )
    mesh.network.advance(DUPLICATE_GRACE)
    delivered, duplicates = mesh.copies(tag, list(mesh.nodes))
    return MessageFigures.of(
        "broadcast", 1, len(receivers), delivered, duplicates, list(receivers.values()), took, timeout
    )


def routed_round(
    mesh: SimulatedMesh,
    pairs: list[tuple[str, str, int]],
    prefix: str,
    reliable: bool,
    timeout: float,
) -> MessageFigures:
    """
    Send one message (reliable or not) along each pair and count what the
    destinations' applications got; a reliable round also waits for every
    acknowledgement.
    """
    tags, hops, deliveries = [], [], []
    for i, (source, destination, _) in enumerate(pairs):
        tag = f"{prefix}{i}"
        tags.append((destination, tag))
        sender = mesh.nodes[source].mesh
        try:
            hops.append(sender.peer(destination).hops or 0)
        except UnknownPeer:
            hops.append(0)
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
        acks = DeferredList([d.delivered() for d in deliveries], consumeErrors=True)
        acks.addCallback(lambda _: acknowledged.append(True))

    took = wait_until(
        mesh.network, lambda: arrived() and (not deliveries or bool(acknowledged)), timeout
    )
    mesh.network.advance(DUPLICATE_GRACE)
    delivered = sum(1 for destination, tag in tags if mesh.received[destination, tag])
    duplicates = sum(max(0, mesh.received[destination, tag] - 1) for destination, tag in tags)
    kind = "reliable" if reliable else "routed"
    return MessageFigures.of(kind, len(pairs), len(pairs), delivered, duplicates, hops, took, timeout)


# -- the whole run -------------------------------------------------------------


def simulate(
    count: int,
    kind: str,
    seed: int,
    heartbeat: float = SIMULATION_HEARTBEAT,
    max_hops: int = SIMULATION_MAX_HOPS,
    pairs: int = DEFAULT_PAIRS,
    timeout: float = PHASE_TIMEOUT,
    progress: Callable[[str], object] = lambda line: None,
) -> SimulationReport:
    """
    Build a mesh of C{count} nodes on a new in-memory network, run every
    scenario, stop every node.

    One node (not a cut vertex) is held back; the others start and link,
    timed until their tables converge. Then the held-back node joins, timed
    until the tables converge again, and a broadcast, ordinary routed
    messages and reliable routed messages go round the whole topology. Then
    another node leaves, timed until the tables converge again; last,
    reliable routed messages go round the changed mesh.

    @param pairs: Routed messages per round.
    @param timeout: Simulated seconds at most per phase.
    @param progress: Called with a line of text as each phase ends.
    @raise SimulationError: if the simulation cannot run as asked.
    """
    cpu = time.process_time()
    rng = random.Random(seed)
    topology = build_topology(kind, count, rng)
    report = SimulationReport(
        nodes=count,
        topology=kind,
        seed=seed,
        links=len(topology.edges),
        degree_mean=topology.degree_mean(),
        diameter=max(max(d.values()) for d in all_distances(topology.neighbours()).values()),
        max_hops=max_hops,
        heartbeat=heartbeat,
    )
    joiner = removable(topology, topology.names, rng)
    first = [name for name in topology.names if name != joiner]
    network = MemoryNetwork()
    network.advance(SIMULATION_START)
    began = network.seconds()
    mesh = SimulatedMesh(network, topology, heartbeat, max_hops, outbox_nodes(topology, rng, pairs))
    try:
        mesh.start(first)
        progress(f"{len(first)} nodes started")

        mesh.link(first)
        linked, converged = wait_until_each(network, [mesh.links_up, mesh.converged()], timeout)
        report.linked_s = linked
        report.converged_s = converged
        progress(f"links up after {linked} s, tables converged after {converged} s")

        report.joined = joiner
        mesh.start([joiner])
        joined = network.seconds()
        mesh.dial(joiner, sorted(topology.neighbours()[joiner]))
        converged = wait_until(network, mesh.converged(), timeout)
        report.join_converged_s = None if converged is None else round(network.seconds() - joined, 3)
        progress(f"{joiner} joined, converged after {report.join_converged_s} s")

        names = topology.names
        report.broadcast = broadcast_round(mesh, rng.choice(names), "b", timeout)
        report.routed = routed_round(
            mesh, routed_pairs(topology, names, max_hops, rng, pairs), "r", False, timeout
        )
        report.reliable = routed_round(
            mesh,
            routed_pairs(topology, names, max_hops, rng, pairs, among=mesh.outbox),
            "a",
            True,
            timeout,
        )
        progress("broadcast, routed and reliable rounds done")

        leaver = removable(topology, mesh.live(), rng, exclude=[joiner])
        report.left = leaver
        left = network.seconds()
        settled(network, mesh.stop_node(leaver), timeout)
        stopped = round(network.seconds() - left, 3)
        live, whole = wait_until_each(
            network, [mesh.converged(ignore=[leaver]), mesh.converged()], timeout
        )
        report.leave_live_converged_s = None if live is None else stopped + live
        report.leave_converged_s = None if whole is None else stopped + whole
        progress(
            f"{leaver} left, routes to the others converged after "
            f"{report.leave_live_converged_s} s, all after {report.leave_converged_s} s"
        )

        report.reliable_after_leave = routed_round(
            mesh,
            routed_pairs(topology, mesh.live(), max_hops, rng, pairs, among=mesh.outbox),
            "l",
            True,
            timeout,
        )
    finally:
        report.stopped = settled(network, mesh.stop(), SIMULATION_SHUTDOWN_TIMEOUT)
        report.simulated_s = round(network.seconds() - began, 3)
        report.cpu_s = time.process_time() - cpu
    return report


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """
    The options of the command line; exits with a usage message if wrong.
    """
    parser = argparse.ArgumentParser(
        prog="python tools/simulate.py",
        description="Run many routing nodes in one process on an in-memory network and "
        "report delivery, duplicates, hop counts and convergence times (simulated seconds).",
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
        "--timeout",
        type=float,
        default=PHASE_TIMEOUT,
        help="simulated seconds at most per phase",
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


def main(argv: list[str]) -> int:
    """
    Run one simulation as the command line asks and print its figures, then
    the checks that failed, on standard error.

    @return: the exit status: 0 if every check passed, else 1.
    """
    options = parse_arguments(argv)
    try:
        report = simulate(
            options.nodes,
            options.topology,
            options.seed,
            heartbeat=options.heartbeat,
            max_hops=options.max_hops,
            pairs=options.pairs,
            timeout=options.timeout,
            progress=lambda line: sys.stderr.write(line + "\n"),
        )
    except SimulationError as e:
        sys.stderr.write(f"simulate: {e}\n")
        return 2
    if options.json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(report.text() + "\n")
    failed = report.failures()
    for line in failed:
        sys.stderr.write(f"FAILED: {line}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
