"""
Where a node's session list comes from (L{relaymesh.sessions.source}): the
C{--sessions} option, a JSON file another program keeps, the Claude home,
the service that refreshes the list every 2 s off the reactor thread, and
the node and twistd options that wire them together.
"""

from __future__ import annotations

import json
import os
import threading
import time

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaymesh import tap
from relaymesh.keystore import KeyStore
from relaymesh.mesh import Mesh
from relaymesh.sessions.procs import ProcTable
from relaymesh.sessions.source import (
    MAX_SESSION_FILE,
    REFRESH_INTERVAL,
    ClaudeHomeSessions,
    SessionListFile,
    SessionOption,
    SessionSource,
    SessionSourceError,
    in_thread_pool,
    parse_sessions_option,
)
from relaymesh.sessions.status import QUIET_CPU
from relaymesh.test.claudehome import ClaudeHome, assistant_text, spawn_claude, user_text
from relaymesh.test.realtime import wait_for
from relaymesh.testing import MemoryNetwork, connect_nodes, memory_node

SESSION = {"pid": 7, "project": "p", "status": "Idle"}


def synchronous(scan, now):
    return defer.maybeDeferred(scan, now)


class OptionTests(SynchronousTestCase):
    def test_kinds(self):
        for text in ("claude-code", "none", "api", " API "):
            self.assertEqual(parse_sessions_option(text), SessionOption(text.strip().lower()))

    def test_file(self):
        option = parse_sessions_option("~/fleet.json")
        self.assertEqual(option, SessionOption("file", os.path.expanduser("~/fleet.json")))
        self.assertEqual(str(option), option.path)

    def test_refused(self):
        for text, reason in (("", "want claude-code, none, api"), (self.mktemp() + "/", "directory")):
            if text:
                os.makedirs(text)
            with self.assertRaises(ValueError) as caught:
                parse_sessions_option(text)
            self.assertIn(reason, str(caught.exception))
            self.assertEqual(len(str(caught.exception).splitlines()), 1)


class SessionListFileTests(SynchronousTestCase):
    def setUp(self):
        self.path = self.mktemp()
        self.source = SessionListFile(self.path)

    def write(self, data: bytes | str) -> None:
        with open(self.path, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)

    def test_missing(self):
        self.assertIsNone(self.source.scan(0))

    def test_forms(self):
        self.write(json.dumps([SESSION]))
        self.assertEqual(self.source.scan(0), [SESSION])
        self.write(json.dumps({"sessions": [SESSION], "other": 1}))
        self.assertEqual(self.source.scan(0), [SESSION])
        self.write("[]")
        self.assertEqual(self.source.scan(0), [])

    def test_refused(self):
        for data, reason in (
            (b"[{", "not JSON"),
            (b"\xff[]", "not JSON"),
            (b'{"sessions": 3}', "no list of session objects"),
            (b"[1, 2]", "no list of session objects"),
            (b'"x"', "no list of session objects"),
            (b"[" + b" " * MAX_SESSION_FILE + b"]", "larger than"),
        ):
            self.write(data)
            with self.assertRaises(SessionSourceError) as caught:
                self.source.scan(0)
            self.assertIn(reason, str(caught.exception))
            self.assertIn(self.path, str(caught.exception))

    def test_unreadable(self):
        os.makedirs(self.path)
        with self.assertRaises(SessionSourceError) as caught:
            self.source.scan(0)
        self.assertIn("cannot read", str(caught.exception))


def settle(pid: int, timeout: float = 10.0) -> None:
    """
    Wait (at most C{timeout} seconds) until a dummy process's first CPU
    reading, its lifetime average, says it is idle: the interpreter's
    start-up, counted in 10 ms ticks over a lifetime of a few, can read as
    busy on a loaded machine.
    """
    table = ProcTable()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        facts = table.lookup([pid]).get(pid)
        if facts is None or facts.cpu_seconds is None:  # nothing to wait for
            return
        if facts.age and facts.cpu_seconds / facts.age * 100.0 < QUIET_CPU:
            return
        time.sleep(0.05)


class ClaudeHomeSessionsTests(SynchronousTestCase):
    def test_no_claude_code(self):
        """
        A machine without Claude Code publishes no list at all: its
        heartbeats stay as they were.
        """
        home = self.mktemp()
        self.assertIsNone(ClaudeHomeSessions(home).scan(time.time()))
        os.makedirs(os.path.join(home, "projects"))
        self.assertIsNone(ClaudeHomeSessions(home).scan(time.time()))

    def test_sessions(self):
        home = ClaudeHome(self.mktemp())
        process = spawn_claude(self, name="demo")
        settle(process.pid)
        home.add_session(process.pid, started_at=time.time() - 30, transcript_lines=[user_text("hi"), assistant_text("ok")])
        [session] = ClaudeHomeSessions(home.path).scan(time.time())
        self.assertEqual((session["pid"], session["project"], session["status"]), (process.pid, "demo", "Waiting"))

    def test_home_user(self):
        self.assertEqual(ClaudeHomeSessions("~/x").home, os.path.expanduser("~/x"))
        self.assertEqual(str(ClaudeHomeSessions("/c")), "Claude Code in /c")


class SessionSourceTests(SynchronousTestCase):
    def setUp(self):
        self.clock = MemoryNetwork()
        self.clock.advance(1_800_000_000)
        self.mesh = Mesh("alpha", self.clock)
        self.results: list = []
        self.times: list[float] = []
        self.source = SessionSource(self.mesh, self.scan, "file", self.clock, synchronous)

    def scan(self, now):
        self.times.append(now)
        result = self.results.pop(0) if self.results else [SESSION]
        if isinstance(result, Exception):
            raise result
        return result

    def start(self):
        self.source.startService()
        self.addCleanup(lambda: self.source.running and self.source.stopService())

    def test_refresh_every_interval(self):
        self.start()
        self.assertEqual(self.mesh.fleet.local().sessions, [SESSION])
        self.clock.advance(REFRESH_INTERVAL)
        self.clock.advance(REFRESH_INTERVAL)
        self.assertEqual(self.times, [1_800_000_000 + n * REFRESH_INTERVAL for n in range(3)])

    def test_failure_keeps_the_list_and_says_so_once(self):
        self.results = [[SESSION], SessionSourceError("bad file"), SessionSourceError("bad file"), [], None]
        warnings: list = []
        self.patch(SessionSource, "log", Logger(observer=warnings.append))
        self.start()
        del warnings[:]  # the start
        self.clock.advance(REFRESH_INTERVAL)
        self.clock.advance(REFRESH_INTERVAL)
        self.assertEqual(self.mesh.fleet.local().sessions, [SESSION])
        self.assertEqual(self.source.problem, "bad file")
        self.assertEqual(len(warnings), 1)
        self.clock.advance(REFRESH_INTERVAL)
        self.assertEqual(self.mesh.fleet.local().sessions, [])
        self.assertIsNone(self.source.problem)
        self.clock.advance(REFRESH_INTERVAL)
        self.assertIsNone(self.mesh.fleet.local())

    def test_unexpected_error(self):
        self.results = [RuntimeError("boom")]
        self.start()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIn("boom", self.source.problem)
        self.clock.advance(REFRESH_INTERVAL)
        self.assertEqual(self.mesh.fleet.local().sessions, [SESSION])

    def test_not_json(self):
        """A list that cannot be sent keeps the one in use."""
        self.results = [[SESSION], [{"pid": object()}]]
        self.start()
        self.clock.advance(REFRESH_INTERVAL)
        self.assertEqual(self.mesh.fleet.local().sessions, [SESSION])
        self.assertIn("cannot publish", self.source.problem)

    def test_slow_scans_do_not_overlap(self):
        pending: list[Deferred] = []
        source = SessionSource(self.mesh, self.scan, "file", self.clock, lambda scan, now: pending.append(Deferred()) or pending[-1])
        source.startService()
        self.clock.advance(REFRESH_INTERVAL * 5)
        self.assertEqual(len(pending), 1)
        pending[0].callback([SESSION])
        self.assertEqual(self.mesh.fleet.local().sessions, [SESSION])
        source.stopService()

    def test_result_after_stop_ignored(self):
        pending: list[Deferred] = []
        source = SessionSource(self.mesh, self.scan, "file", self.clock, lambda scan, now: pending.append(Deferred()) or pending[-1])
        source.startService()
        source.stopService()
        pending[0].callback([SESSION])
        self.assertIsNone(self.mesh.fleet.local())


class ThreadTests(TestCase):
    """
    With the real reactor: scans run in its thread pool, and publishing
    thousands of sessions costs the reactor thread only a few milliseconds.
    """

    timeout = 60

    def test_scan_in_thread_pool(self):
        threads = []

        def scan(now):
            threads.append(threading.current_thread())
            return [SESSION]

        d = in_thread_pool(reactor)(scan, time.time())
        return d.addCallback(lambda result: self.assertEqual((result, threads[0] is threading.main_thread()), ([SESSION], False)))

    @defer.inlineCallbacks
    def test_thousands_of_sessions(self):
        """
        With 3000 sessions the scans run in the pool, and the reactor's
        share of a refresh is a small part of a scan's time, measured in the
        same run, the quickest of each (about 3 to 6 ms against 70 to 270 ms
        here; checking the list on the reactor thread took about 15).
        """
        home = ClaudeHome(self.mktemp())
        now = time.time()
        for n in range(3000):
            lines = [user_text("q"), assistant_text("a")] if n % 3 == 0 else None
            home.add_session(4_000_000 + n, session_id=f"s-{n}", cwd=f"/w/p{n % 50}", started_at=now - 60, transcript_lines=lines)
        mesh = Mesh("alpha", reactor)
        reader = ClaudeHomeSessions(home.path)
        scans: list[tuple[threading.Thread, float]] = []

        def scan(now):
            start = time.perf_counter()
            sessions = reader.scan(now)
            scans.append((threading.current_thread(), time.perf_counter() - start))
            return sessions

        source = SessionSource(mesh, scan, "claude-code", reactor, in_thread_pool(reactor))
        publish = source._publish
        spent: list[float] = []

        def timed(sessions):
            start = time.perf_counter()
            publish(sessions)
            spent.append(time.perf_counter() - start)

        source._publish = timed
        source.startService()
        self.addCleanup(source.stopService)
        yield wait_for(lambda: len(spent) >= 2, 40)
        self.assertEqual(len(mesh.fleet.local().sessions), 3000)
        self.assertNotIn(threading.main_thread(), [thread for thread, _ in scans])
        # The quickest of each, as a garbage collection of the 3000 lists'
        # objects can land in either and is no part of their cost.
        quickest_scan = min(seconds for _, seconds in scans)
        self.assertLess(
            min(spent),
            quickest_scan / 3,
            f"publishing took {min(spent) * 1000:.1f} ms, a scan {quickest_scan * 1000:.1f} ms",
        )


class NodeTests(SynchronousTestCase):
    """
    Whole nodes on a memory network, sessions from a Claude home.
    """

    def setUp(self):
        self.network = MemoryNetwork()
        self.network.advance(time.time())
        self.home = ClaudeHome(self.mktemp())
        self.process = spawn_claude(self, name="demo")
        self.home.add_session(self.process.pid, started_at=time.time() - 30,
                              transcript_lines=[user_text("the secret prompt"), assistant_text("the secret reply")])  # fmt: skip

    def nodes(self, **options):
        alpha = memory_node(self.network, "alpha", claude_home=self.home.path, **options)
        beta = memory_node(self.network, "beta", sessions="none")
        for node in (alpha, beta):
            node.startService()
            self.addCleanup(node.stopService)
        connect_nodes(self.network, alpha, beta)
        return alpha, beta

    def test_claude_code(self):
        alpha, beta = self.nodes(sessions="claude-code")
        [session] = beta.mesh.sessions()["alpha"].sessions
        self.assertEqual((session["project"], session["status"]), ("demo", "Waiting"))
        self.assertNotIn("secret", json.dumps(session))
        self.assertEqual(alpha.mesh.fleet.source, "claude-code")
        self.assertIsNotNone(alpha.session_source)

    def test_finished(self):
        alpha, beta = self.nodes(sessions="claude-code")
        self.process.kill()
        self.process.wait()
        self.network.advance(REFRESH_INTERVAL)
        self.network.advance(1)
        [session] = beta.mesh.sessions()["alpha"].sessions
        self.assertEqual(session["status"], "Finished")

    def test_none(self):
        alpha, beta = self.nodes(sessions="none")
        self.assertIsNone(alpha.session_source)
        self.assertEqual(alpha.mesh.fleet.source, "none")
        self.network.advance(30)
        self.assertNotIn("alpha", beta.mesh.sessions())

    def test_api_default(self):
        """An application that embeds the node sets its sessions itself."""
        alpha, beta = self.nodes()
        self.assertIsNone(alpha.session_source)
        self.assertEqual(alpha.mesh.fleet.source, "api")

    def test_file(self):
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump([SESSION], f)
        alpha, beta = self.nodes(sessions=path)
        self.assertEqual(beta.mesh.sessions()["alpha"].sessions, [SESSION])

    def test_bad_option(self):
        with self.assertRaises(ValueError):
            memory_node(self.network, "alpha", sessions="")


class OptionsTests(SynchronousTestCase):
    def parse(self, *args):
        options = tap.Options()
        data_dir = self.mktemp()
        KeyStore(data_dir).set_identity("alpha")
        options.parseOptions(["--data-dir", data_dir, "--api", "none", "--no-announce", *args])
        return tap.node_config(options)

    def test_defaults(self):
        config = self.parse()
        self.assertEqual((config.sessions, config.claude_home, config.session_details), ("claude-code", "~/.claude", False))

    def test_given(self):
        config = self.parse("--sessions", "none", "--claude-home", "/srv/claude", "--session-details")
        self.assertEqual((config.sessions, config.claude_home, config.session_details), ("none", "/srv/claude", True))

    def test_refused(self):
        directory = self.mktemp()
        os.makedirs(directory)
        for args, reason in ((["--sessions", directory], "is a directory"), (["--claude-home", " "], "--claude-home")):
            with self.assertRaises(usage.UsageError) as caught:
                self.parse(*args)
            self.assertIn(reason, str(caught.exception))

    def test_service(self):
        options = tap.Options()
        data_dir = self.mktemp()
        KeyStore(data_dir).set_identity("alpha")
        options.parseOptions(["--data-dir", data_dir, "--api", "none", "--no-announce", "--listen", "none", "--claude-home", self.mktemp()])
        node = tap.makeService(options, reactor=MemoryNetwork())
        self.assertEqual(node.session_source.kind, "claude-code")
        self.assertIn("Claude Code in", node.session_source.description)
