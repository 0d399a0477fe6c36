"""
Tests for L{relaymesh.sessions.procs}: C{/proc} and the C{ps} fallback.
"""

from __future__ import annotations

import os
import shutil

from twisted.trial.unittest import SynchronousTestCase

from relaymesh.sessions.procs import ProcTable, PsTable, default_process_table, parse_ps
from relaymesh.test.claudehome import spawn_claude

SAMPLE = """\
  4821  12.5 422227 /usr/local/bin/claude --name backend
   77   0,0   1024 claude -r fix-auth
  notapid 1.0 1 claude
  99
  100  nan  20 node /opt/claude/cli.js
"""


class PsParserTests(SynchronousTestCase):
    def test_sample(self) -> None:
        """
        Each well-formed line gives a process; others are skipped; a
        non-finite CPU reads as 0.
        """
        found = parse_ps(SAMPLE)
        self.assertEqual(sorted(found), [77, 100, 4821])
        first = found[4821]
        self.assertEqual(first.argv, ("/usr/local/bin/claude", "--name", "backend"))
        self.assertEqual((first.cpu_percent, first.rss_kb), (12.5, 422227))
        self.assertEqual(found[77].cpu_percent, 0.0)
        self.assertEqual(found[100].cpu_percent, 0.0)
        self.assertIn("claude", found[100].command)

    def test_empty(self) -> None:
        self.assertEqual(parse_ps(""), {})
        self.assertEqual(PsTable().lookup([]), {})

    def test_missing_ps(self) -> None:
        """
        A ps that cannot run finds nothing.
        """
        self.assertEqual(PsTable(ps=os.path.join(self.mktemp(), "ps")).lookup([os.getpid()]), {})


class LiveTests(SynchronousTestCase):
    """
    Both tables against the dummy claude process.
    """

    def test_ps(self) -> None:
        if shutil.which("ps") is None:
            raise self.skipTest("no ps here")
        process = spawn_claude(self, name="viaps")
        found = PsTable().lookup([process.pid, 2**31 - 2])
        self.assertEqual(list(found), [process.pid])
        self.assertIn("claude", found[process.pid].command)
        self.assertIn("viaps", found[process.pid].argv)
        self.assertIsNotNone(found[process.pid].cpu_percent)

    def test_proc(self) -> None:
        if not os.path.isfile("/proc/self/stat"):
            raise self.skipTest("no /proc here")
        self.assertIsInstance(default_process_table(), ProcTable)
        process = spawn_claude(self, name="viaproc")
        found = ProcTable().lookup([process.pid, 2**31 - 2])
        self.assertEqual(list(found), [process.pid])
        facts = found[process.pid]
        self.assertEqual(facts.argv[-3:], ("claude", "--name", "viaproc"))
        self.assertGreater(facts.rss_kb, 0)
        assert facts.cpu_seconds is not None
        self.assertGreaterEqual(facts.cpu_seconds, 0.0)
        self.assertIsNone(facts.cpu_percent)
        process.kill()
        process.wait()
        self.assertEqual(ProcTable().lookup([process.pid]), {})

    def test_proc_parse(self) -> None:
        """
        A command name with spaces and parentheses does not shift the
        fields; a malformed stat is skipped.
        """
        root = self.mktemp()
        os.makedirs(os.path.join(root, "42"))
        os.makedirs(os.path.join(root, "43"))
        with open(os.path.join(root, "uptime"), "w") as f:
            f.write("1000.0 5.0\n")
        fields = ["S"] + ["0"] * 10 + ["300", "200"] + ["0"] * 6 + ["50000", "0", "25"]
        with open(os.path.join(root, "42", "stat"), "w") as f:
            f.write("42 (my (odd) cmd) " + " ".join(fields) + "\n")
        with open(os.path.join(root, "42", "cmdline"), "wb") as f:
            f.write(b"claude\0--name\0a b\0")
        with open(os.path.join(root, "43", "stat"), "w") as f:
            f.write("43 (x) S 1\n")
        with open(os.path.join(root, "43", "cmdline"), "wb") as f:
            f.write(b"claude\0")
        table = ProcTable(root)
        found = table.lookup([42, 43, 44])
        self.assertEqual(list(found), [42])
        facts = found[42]
        self.assertEqual(facts.argv, ("claude", "--name", "a b"))
        self.assertEqual(facts.cpu_seconds, 500 / table._ticks)
        self.assertEqual(facts.rss_kb, 25 * table._page_kb)
        self.assertAlmostEqual(facts.age, 1000.0 - 50000 / table._ticks)
