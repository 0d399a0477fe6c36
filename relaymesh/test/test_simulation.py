"""
Tests for C{tools/simulate.py} and C{tools/topology.py} of a checkout: the
graph helpers on their own, and two whole meshes on the in-memory network
of L{relaymesh.testing} (a random one of 50 nodes and a ring of 30), whose
figures are printed when C{RELAYMESH_SIM_REPORT=1}. Skipped where there is
no checkout (relaymesh installed alone, tests started elsewhere).
"""

from __future__ import annotations

import io
import os
import random
import sys

from twisted.trial.unittest import SynchronousTestCase

from relaymesh.routing.router import ADVERTISE_MIN_INTERVAL
from relaymesh.test.checkout import load_tools

_tools = load_tools("simulate", "topology")

#: Why the tests are skipped, or L{None}.
SKIP = None if _tools is not None else "no checkout with tools/simulate.py: relaymesh is installed alone"

if _tools is not None:
    simulate_module, topology = _tools
    RANDOM = topology.RANDOM
    RANDOM_DEGREE = topology.RANDOM_DEGREE
    RING = topology.RING
    SimulationError = topology.SimulationError
    Topology = topology.Topology
    all_distances = topology.all_distances
    build_topology = topology.build_topology
    consistent = topology.consistent
    expected_routes = topology.expected_routes
    is_connected = topology.is_connected
    removable = topology.removable
    routed_pairs = topology.routed_pairs
    simulate = simulate_module.simulate

    #: Nodes of the ring: the largest whose diameter (15) is within the
    #: protocol's highest hop limit, so that a broadcast reaches every node.
    RING_NODES = 2 * simulate_module.SIMULATION_MAX_HOPS

    #: Simulated seconds within which the tables must agree again after a
    #: join or a leave: a withdrawal may count up to the hop limit, one
    #: early advertisement (at most one per interval) per step, plus the
    #: detection.
    CONVERGENCE_BOUND = simulate_module.SIMULATION_MAX_HOPS * ADVERTISE_MIN_INTERVAL + 5.0

#: The environment variable that makes the tests print their figures.
REPORT_VARIABLE = "RELAYMESH_SIM_REPORT"

#: Nodes of the random mesh.
RANDOM_NODES = 50

#: The fixed seed of both meshes.
SEED = 7

#: Routed messages per round.
PAIRS = 40

#: Simulated seconds at most per phase of a simulation.
PHASE_BOUND = 30.0


def report(result) -> None:
    """
    Print a simulation's figures when C{RELAYMESH_SIM_REPORT=1}.
    """
    if os.environ.get(REPORT_VARIABLE) == "1":
        sys.stdout.write("\n" + result.text() + "\n")


class TopologyTests(SynchronousTestCase):
    """
    The graphs and the shortest paths the tables are checked against.
    """

    skip = SKIP

    def test_random_is_connected(self):
        """
        A random topology is connected, with the mean degree asked for.
        """
        for seed in range(5):
            topology = build_topology(RANDOM, 60, random.Random(seed))
            self.assertTrue(is_connected(topology.neighbours()))
            self.assertEqual(topology.degree_mean(), RANDOM_DEGREE)
            self.assertEqual(len(set(topology.edges)), len(topology.edges))

    def test_ring(self):
        """
        A ring links each node to the next and the last to the first; its
        diameter is half its size.
        """
        topology = build_topology(RING, 10, random.Random(0))
        self.assertEqual(len(topology.edges), 10)
        self.assertEqual({len(n) for n in topology.neighbours().values()}, {2})
        far = all_distances(topology.neighbours())
        self.assertEqual(max(max(d.values()) for d in far.values()), 5)

    def test_unknown_or_too_small(self):
        self.assertRaises(SimulationError, build_topology, "star", 10, random.Random(0))
        self.assertRaises(SimulationError, build_topology, RING, 3, random.Random(0))

    def test_removable_keeps_connected(self):
        """
        The node chosen to leave is never one that holds the graph together.
        """
        line = Topology(("a", "b", "c"), (("a", "b"), ("b", "c")))
        for seed in range(10):
            self.assertIn(removable(line, line.names, random.Random(seed)), ("a", "c"))

    def test_expected_routes_cut_at_hop_limit(self):
        line = Topology(("a", "b", "c", "d"), (("a", "b"), ("b", "c"), ("c", "d")))
        expected = expected_routes(line.neighbours(), 2)
        self.assertEqual(expected["a"], {"b": 1, "c": 2})
        self.assertEqual(expected["b"], {"a": 1, "c": 1, "d": 2})

    def test_consistent(self):
        """
        Tables agree with the shortest paths when every destination within
        the limit is there, with its distance, through a neighbour on a
        shortest path; not when one is missing, too long or through the
        wrong neighbour, or when there is one too many.
        """
        square = Topology(
            ("a", "b", "c", "d"), (("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"))
        )
        adjacency = square.neighbours()
        far = all_distances(adjacency)
        expected = expected_routes(adjacency, 15)
        tables = {
            "a": {"b": ("b", 1), "c": ("c", 1), "d": ("c", 2)},
            "b": {"a": ("a", 1), "d": ("d", 1), "c": ("a", 2)},
            "c": {"a": ("a", 1), "d": ("d", 1), "b": ("d", 2)},
            "d": {"b": ("b", 1), "c": ("c", 1), "a": ("b", 2)},
        }
        self.assertTrue(consistent(tables, expected, far))
        for wrong in ({"b": ("b", 1), "c": ("c", 1)},
                      {"b": ("b", 1), "c": ("c", 1), "d": ("c", 3)},
                      {"b": ("b", 1), "c": ("b", 3), "d": ("c", 2)},
                      {"b": ("b", 1), "c": ("c", 1), "d": ("c", 2), "e": ("c", 3)}):
            self.assertFalse(consistent(dict(tables, a=wrong), expected, far), wrong)
        stale = dict(tables, a=dict(tables["a"], e=("c", 3)))
        self.assertTrue(consistent(stale, expected, far, frozenset({"e"})))

    def test_routed_pairs(self):
        """
        Routed pairs have no direct link and are within the hop limit.
        """
        topology = build_topology(RING, 12, random.Random(0))
        pairs = routed_pairs(topology, topology.names, 3, random.Random(0), 100)
        self.assertTrue(pairs)
        far = all_distances(topology.neighbours())
        for source, destination, hops in pairs:
            self.assertEqual(far[source][destination], hops)
            self.assertTrue(2 <= hops <= 3)


class MeshSimulationTests(SynchronousTestCase):
    """
    Whole meshes of routing nodes with outboxes on the in-memory network:
    every reliable routed message and every broadcast reaches every node
    within the hop limit exactly once, and the tables agree with the
    shortest paths again within L{CONVERGENCE_BOUND} simulated seconds
    after a node joins and after one leaves.
    """

    skip = SKIP

    def run_mesh(self, count: int, kind: str):
        result = simulate(count, kind, SEED, pairs=PAIRS, timeout=PHASE_BOUND)
        report(result)
        self.assertEqual(result.failures(), [])
        for figures in (result.broadcast, result.reliable, result.reliable_after_leave):
            self.assertEqual(figures.delivered, figures.expected, figures)
            self.assertEqual(figures.duplicates, 0, figures)
            self.assertGreater(figures.expected, 0)
        self.assertGreaterEqual(result.reliable.hops_max, 2, "no message crossed a node")
        self.assertEqual(result.routed.duplicates, 0)
        for what, took in (
            ("join", result.join_converged_s),
            ("leave, routes to the others", result.leave_live_converged_s),
            ("leave", result.leave_converged_s),
        ):
            self.assertIsNotNone(took, f"the tables never converged after the {what}")
            self.assertLess(took, CONVERGENCE_BOUND, what)
        self.assertLessEqual(result.leave_live_converged_s, result.leave_converged_s)
        return result

    def test_random_mesh(self):
        """
        A random mesh of 50 nodes, mean degree 3.
        """
        self.run_mesh(RANDOM_NODES, RANDOM)

    def test_ring(self):
        """
        A ring of 30 nodes (a line of 29 until the last one joins): the
        broadcast and the longest routes cross the whole hop limit.
        """
        result = self.run_mesh(RING_NODES, RING)
        self.assertEqual(result.broadcast.hops_max, simulate_module.SIMULATION_MAX_HOPS)

    def test_deterministic(self):
        """
        The same seed gives the same figures, but for the CPU time.
        """
        runs = [simulate(8, RANDOM, SEED, pairs=4).to_dict() for _ in range(2)]
        for run in runs:
            del run["cpu_s"]
        self.assertEqual(runs[0], runs[1])


class CommandLineTests(SynchronousTestCase):
    """
    The command line: its figures, and its exit status.
    """

    skip = SKIP

    def test_checks_pass(self):
        """
        A mesh that passes every check exits with 0 and prints its figures.
        """
        out, err = self.capture()
        self.assertEqual(simulate_module.main(["--nodes", "6", "--pairs", "3", "--json"]), 0)
        self.assertIn('"nodes": 6', out.getvalue())
        self.assertNotIn("FAILED", err.getvalue())

    def test_failure_exits_nonzero(self):
        """
        A failed check is named on standard error and the exit status is 1:
        here, phases bounded too short for the tables to converge.
        """
        out, err = self.capture()
        status = simulate_module.main(
            ["--nodes", "6", "--topology", "ring", "--pairs", "3", "--timeout", "0.01"]
        )
        self.assertEqual(status, 1)
        self.assertIn("FAILED: the tables did not converge", err.getvalue())

    def capture(self):
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        return out, err
