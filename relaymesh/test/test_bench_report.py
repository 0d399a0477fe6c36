"""
Tests for how the benchmark suite (C{bench/}) reports its figures: each
beside its baseline, with the ratio, the goal and the verdict; the CI gate;
the environment the workers get. The figures are given, not measured.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import sys

from twisted.trial import unittest

from relaymesh.test.checkout import find_checkout_with

#: The checkout's C{bench/}: beside the imported relaymesh, or above the
#: current directory (where an installed relaymesh is tested, as CI does).
_CHECKOUT = find_checkout_with(os.path.join("bench", "run.py"))
BENCH = os.path.join(_CHECKOUT, "bench") if _CHECKOUT is not None else ""


def load(name: str):
    """
    A module of C{bench/}, which is no package: imported with C{bench/} on
    C{sys.path} for the time of the import.
    """
    saved = list(sys.path)
    sys.path.insert(0, BENCH)
    try:
        return importlib.import_module(name)
    finally:
        sys.path[:] = saved


def figures(**entries) -> dict:
    """
    Results as C{run.py} records them, with an environment.
    """
    results = {
        "runs": 3,
        "environment": {
            "codec": "msgspec",
            "codec_version": "0.23.0",
            "baseline_codec": "orjson 3.13.0",
            "version": "0.1.0",
            "relaymesh_path": "/venv/lib/python3.11/site-packages/relaymesh",
            "relaymesh_origin": "installed",
            "python": "CPython 3.11.7",
            "twisted": "26.10.0",
            "openssl": "OpenSSL 4.0.3",
            "cores": 2,
        },
    }
    results.update(entries)
    return results


class ReportTests(unittest.TestCase):
    def setUp(self) -> None:
        if not os.path.isdir(BENCH):
            raise unittest.SkipTest("no checkout with bench/ beside this relaymesh or above this directory")
        self.tables = load("tables")

    def row(self, results: dict, label: str) -> dict:
        for row in self.tables.figures(results):
            if row["figure"].startswith(label):
                found: dict = row
                return found
        self.fail(f"no row {label!r} in {[r['figure'] for r in self.tables.figures(results)]}")

    def test_receive_goal(self) -> None:
        """
        The receive figure is relaymesh's default codec against the orjson
        receiver: the goal is a ratio, met at 0.7 with 200 B, not at 1.0
        with 4 KiB (1.1 needed).
        """
        results = figures(
            **{
                "throughput_200_relaymesh-rx": {"rate": 700.0, "codec": "msgspec"},
                "throughput_200_minimal-rx": {"rate": 1000.0},
                "throughput_4096_relaymesh-rx": {"rate": 100.0, "codec": "msgspec"},
                "throughput_4096_minimal-rx": {"rate": 100.0},
            }
        )
        small = self.row(results, "receive 200 B")
        self.assertEqual(small["figure"], "receive 200 B, claudectl-style peer, msgspec (default): msgs/s")
        self.assertEqual((small["ratio"], small["goal"], small["met"]), (0.7, ">= 0.70x", True))
        large = self.row(results, "receive 4 KiB")
        self.assertEqual((large["ratio"], large["goal"], large["met"]), (1.0, ">= 1.10x", False))
        self.assertEqual(
            self.tables.cells(large),
            ("receive 4 KiB, claudectl-style peer, msgspec (default): msgs/s", "100", "orjson receiver", "100", "1.00", ">= 1.10x", "NO"),
        )

    def test_absolute_goals(self) -> None:
        """
        Handshakes must reach 1,000/s; memory per peer stay within 6 KB and
        the p99 round trip under load within 1 ms, whatever the baseline.
        """
        results = figures(
            handshakes_relaymesh={"rate": 1200.0},
            **{"handshakes_minimal-tls": {"rate": 1500.0}},
            memory_relaymesh={"per_peer_1000": 6100.0},
            memory_minimal={"per_peer_1000": 1000.0},
            latency_relaymesh={"load_p99_ms": 0.9},
            **{"latency_minimal-tls": {"load_p99_ms": 0.5}},
        )
        handshakes = self.row(results, "handshakes/s incl. TLS, 16")
        self.assertEqual((handshakes["ratio"], handshakes["met"]), (0.8, True))
        self.assertIs(self.row(results, "memory per idle peer")["met"], False)
        self.assertIs(self.row(results, "round trip p99, load")["met"], True)

    def test_not_measured(self) -> None:
        """
        A figure that was not asked for has no row; one that was attempted
        and failed, or was skipped, shows as not measured, with the reason.
        """
        results = figures(
            routed_relaymesh={"error": "routing is not available"},
            **{
                "throughput_200_relaymesh-rx@msgspec": {"skipped": "relaymesh used orjson with RELAYMESH_CODEC=msgspec"},
                "throughput_200_minimal-rx": {"rate": 10.0},
            },
        )
        rows = self.tables.figures(results)
        labels = [r["figure"] for r in rows]
        self.assertNotIn("receive 200 B, claudectl-style peer, msgspec (default): msgs/s", labels)
        routed = self.row(results, "routed")
        self.assertEqual(self.tables.cells(routed)[1], "n/a")
        self.assertEqual(self.tables.cells(routed)[-1], "n/a")
        self.assertEqual(
            self.tables.notes(rows),
            [
                "receive 200 B, relaymesh forced to msgspec: msgs/s: not measured: relaymesh used orjson with RELAYMESH_CODEC=msgspec",
                "routed through one middle node, TLS, 200 B: msgs/s: not measured: routing is not available",
            ],
        )

    def test_forced_codecs_have_no_verdict(self) -> None:
        """
        The goals are the default install's: a forced codec's row shows its
        ratio to the orjson receiver, and no goal.
        """
        results = figures(
            **{
                "throughput_200_relaymesh-rx@json": {"rate": 300.0, "codec": "json"},
                "throughput_200_minimal-rx": {"rate": 1000.0},
            }
        )
        row = self.row(results, "receive 200 B, relaymesh forced to json")
        self.assertEqual((row["ratio"], row["goal"], row["met"]), (0.3, "", None))

    def test_reports(self) -> None:
        """
        The text, reStructuredText and JSON reports carry the header (where
        relaymesh was imported from, its codec, Python, Twisted, OpenSSL)
        and the rows with their verdicts.
        """
        results = figures(
            **{
                "throughput_200_relaymesh": {"rate": 600.0},
                "throughput_200_relaymesh-plain": {"rate": 1000.0},
            }
        )
        text = self.tables.text_report(results)
        self.assertIn("relaymesh: 0.1.0, imported from /venv/lib/python3.11/site-packages/relaymesh: installed", text)
        self.assertIn("relaymesh's codec: msgspec 0.23.0", text)
        self.assertIn("goals: 1 of 1 met", text)
        rst = self.tables.rst_report(results)
        self.assertIn(":OpenSSL: OpenSSL 4.0.3", rst)
        self.assertIn(":Twisted: 26.10.0", rst)
        self.assertIn(">= 0.60x", rst)
        data = json.loads(json.dumps(self.tables.json_report(results)))
        [row] = [r for r in data["table"] if r["figure"].startswith("200 B node to node, TLS")]
        self.assertEqual((row["ratio"], row["met"]), (0.6, True))


class GateTests(unittest.TestCase):
    def setUp(self) -> None:
        if not os.path.isdir(BENCH):
            raise unittest.SkipTest("no checkout with bench/ beside this relaymesh or above this directory")
        self.run_module = load("run")
        self.patch(sys, "stdout", open(os.devnull, "w"))
        self.addCleanup(sys.stdout.close)

    def gated(self, receiving: float) -> dict:
        rates = {
            "relaymesh-rx": receiving,
            "minimal-rx": 1000.0,
            "relaymesh": 600.0,
            "minimal-tls": 1000.0,
            "relaymesh-plain": 700.0,
            "minimal": 1000.0,
        }
        return {f"throughput_200_{v}": {"rate": r} for v, r in rates.items()}

    def test_passes(self) -> None:
        self.assertTrue(self.run_module.gate(self.gated(500.0)))

    def test_receiving_below_half(self) -> None:
        """
        The default install's receive rate below half the orjson receiver's
        fails the gate, even when node to node passes.
        """
        self.assertFalse(self.run_module.gate(self.gated(499.0)))

    def test_not_measured_fails(self) -> None:
        results = self.gated(900.0)
        del results["throughput_200_minimal-tls"]
        self.assertFalse(self.run_module.gate(results))


class EnvironmentTests(unittest.TestCase):
    def setUp(self) -> None:
        if not os.path.isdir(BENCH):
            raise unittest.SkipTest("no checkout with bench/ beside this relaymesh or above this directory")
        self.harness = load("harness")

    def test_default_codec(self) -> None:
        """
        Without a codec, a worker runs without C{RELAYMESH_CODEC}, even if
        C{run.py}'s environment has one: relaymesh picks its own.
        """
        self.patch(os, "environ", {**os.environ, "RELAYMESH_CODEC": "json"})
        self.assertNotIn("RELAYMESH_CODEC", self.harness.worker_environment())

    def test_forced_codec(self) -> None:
        self.assertEqual(self.harness.worker_environment("msgspec")["RELAYMESH_CODEC"], "msgspec")

    def test_codec_asked_of_a_worker(self) -> None:
        """
        The codec relaymesh picks is asked of a process that imports it as
        a worker does: forced to the standard library's, it says C{json}.
        """
        self.assertEqual(self.harness.relaymesh_codec("json"), "json")

    def test_orjson_missing(self) -> None:
        """
        Without orjson the baselines cannot run: the suite says so in one
        line, measures nothing and exits with status 2.
        """
        run = load("run")
        benchlib = run.benchlib
        real = benchlib.importlib.util.find_spec
        self.patch(benchlib.importlib.util, "find_spec", lambda name: None if name == "orjson" else real(name))
        self.patch(sys, "argv", ["run.py", "--quick"])
        errors = io.StringIO()
        self.patch(sys, "stderr", errors)
        self.patch(run, "run_suite", lambda *args: self.fail("measured without orjson"))
        self.assertEqual(run.main(), 2)
        self.assertEqual(errors.getvalue().count("\n"), 1)
        self.assertIn("orjson, which is not installed", errors.getvalue())

    def test_measured_in_rounds(self) -> None:
        """
        Figures compared with one another are measured in turns, one run
        of each per round, and each gets the median of its runs.
        """
        self.patch(self.harness, "wait_quiet", lambda **kwargs: 0.0)
        self.patch(sys, "stdout", io.StringIO())
        calls = []
        rates = {"a": iter([1.0, 5.0, 3.0]), "b": iter([10.0, 30.0, 20.0])}

        def once(name: str) -> dict:
            calls.append(name)
            return {"rate": next(rates[name])}

        medians = self.harness.measure_together([("key-a", "a", once, ("a",)), ("key-b", "b", once, ("b",))], 3)
        self.assertEqual(calls, ["a", "b", "a", "b", "a", "b"])
        self.assertEqual((medians["key-a"]["rate"], medians["key-b"]["rate"]), (3.0, 20.0))
        self.assertEqual(medians["key-a"]["runs"], 3)
