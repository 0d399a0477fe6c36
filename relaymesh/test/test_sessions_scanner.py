"""
Tests for L{relaymesh.sessions.claude}: the scanner on real files in
temporary Claude homes, with a fake process table or real processes.
"""

from __future__ import annotations

import json
import os
import time

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from relaymesh.sessions.claude import (
    FINISHED_LINGER,
    ClaudeCodeScanner,
    project_name,
    project_slug,
    session_name,
)
from relaymesh.sessions.procs import ProcessFacts, default_process_table
from relaymesh.test.claudehome import (
    STATUS_TRANSCRIPTS,
    ClaudeHome,
    FakeProcessTable,
    assistant_text,
    spawn_claude,
    spawn_other,
    tool_result,
    tool_use,
    user_text,
    waiting_for_task,
)

UUID = "0b5f7c1e-3d2a-4f4b-9c1d-2e6f8a9b0c1d"
OTHER = "11111111-2222-4333-8444-555555555555"

#: The keys every session carries.
KEYS = {
    "pid", "project", "status", "model", "elapsed_secs", "context_pct", "cost_usd",
    "burn_rate_per_hr", "tokens_in", "tokens_out", "cpu", "mem_mb", "subagents",
    "tool_usage", "estimate",
}
DETAIL_KEYS = {"files_modified", "last_error", "recent_errors"}


class ScannerCase(SynchronousTestCase):
    """
    A Claude home, a fake process table and a scanner.
    """

    def setUp(self) -> None:
        self.home = ClaudeHome(self.mktemp())
        self.table = FakeProcessTable()
        self.tasks = self.mktemp()
        self.now = time.time()
        self.scanner = self.make()

    def make(self, **kwargs) -> ClaudeCodeScanner:
        kwargs.setdefault("processes", self.table)
        kwargs.setdefault("tasks_root", self.tasks)
        return ClaudeCodeScanner(home=self.home.path, **kwargs)

    def scan(self, now: float | None = None) -> list[dict]:
        found = self.scanner.scan(self.now if now is None else now)
        json.dumps(found, allow_nan=False)
        return found

    def one(self, now: float | None = None) -> dict:
        found = self.scan(now)
        self.assertEqual(len(found), 1, found)
        return found[0]


class HomeTests(ScannerCase):
    def test_no_home(self) -> None:
        """
        A missing home, or one without sessions/, scans to [] every time.
        """
        for path in (self.mktemp(), os.path.join(self.mktemp(), "deep")):
            scanner = ClaudeCodeScanner(home=path, processes=self.table)
            self.assertEqual(scanner.scan(self.now), [])
            self.assertEqual(scanner.scan(self.now + 2), [])
        os.rmdir(os.path.join(self.home.path, "sessions"))
        self.assertEqual(self.scan(), [])

    def test_home_expanded(self) -> None:
        self.assertEqual(ClaudeCodeScanner(processes=self.table).home, os.path.expanduser("~/.claude"))

    def test_writes_nothing(self) -> None:
        """
        Scanning leaves every file under the home as it was, old dead ones
        included.
        """
        path = self.home.add_session(100, UUID, transcript_lines=[user_text("x")])
        self.home.touch(path, 1)
        self.home.touch(self.home.session_path(100), 1)
        before = sorted(os.walk(self.home.path))
        self.scan()
        self.assertEqual(sorted(os.walk(self.home.path)), before)


class StatusTests(ScannerCase):
    """
    Each status, from transcripts and processes.
    """

    def status(self, lines, cpu: float = 0.0, untouched: float = 0.0) -> str:
        """
        The status of a new session with C{lines}, its process at C{cpu} %,
        and its transcript untouched for C{untouched} seconds.
        """
        self.home = ClaudeHome(self.mktemp())
        self.scanner = self.make()
        path = self.home.add_session(100, UUID, transcript_lines=lines)
        self.table.run(100, cpu=cpu)
        self.home.touch(path, self.now - untouched)
        return self.one()["status"]

    def test_transcripts(self) -> None:
        for expected, (untouched, lines) in STATUS_TRANSCRIPTS.items():
            self.assertEqual(self.status(lines, untouched=untouched), expected, expected)

    def test_busy(self) -> None:
        self.assertEqual(self.status([user_text("x"), waiting_for_task()], cpu=12.0), "Processing")

    def test_tool_use(self) -> None:
        self.assertEqual(self.status([tool_use()]), "Needs Input")
        self.assertEqual(self.status([tool_use()], cpu=3.0), "Processing")
        self.assertEqual(self.status([tool_use(), tool_result()], cpu=3.0), "Processing")

    def test_unknown(self) -> None:
        self.home.add_session(100, UUID)
        self.table.run(100)
        found = self.one()
        self.assertEqual(found["status"], "Unknown")
        self.assertIsNone(found["model"])
        self.assertIsNone(found["cost_usd"])

    def test_idle_otherwise(self) -> None:
        self.assertEqual(self.status([assistant_text("hm", stop_reason=None)]), "Idle")

    def test_finished(self) -> None:
        self.home.add_session(100, UUID, transcript_lines=[user_text("x")])
        self.assertEqual(self.one()["status"], "Finished")

    def test_pid_reuse(self) -> None:
        """
        A live pid whose command line lacks claude is Finished.
        """
        self.home.add_session(100, UUID, transcript_lines=[user_text("x")])
        self.table.run(100, argv=("python3", "server.py"), cpu=50.0)
        found = self.one()
        self.assertEqual(found["status"], "Finished")
        self.assertEqual(found["cpu"], 0.0)

    def test_append_changes_status(self) -> None:
        """
        A line appended after a scan changes the status at the next one; a
        partial line waits for its end.
        """
        path = self.home.add_session(100, UUID, transcript_lines=[user_text("x")])
        self.table.run(100)
        self.assertEqual(self.one()["status"], "Processing")
        line = assistant_text("Done.")
        self.home.append(path, line[:30], newline=False)
        self.assertEqual(self.one(self.now + 2)["status"], "Processing")
        self.home.append(path, line[30:])
        self.assertEqual(self.one(self.now + 4)["status"], "Waiting")
        self.home.append(path, waiting_for_task())
        self.assertEqual(self.one(self.now + 6)["status"], "Needs Input")

    def test_shrunk_and_replaced(self) -> None:
        path = self.home.add_session(100, UUID, transcript_lines=[user_text("x"), assistant_text("a")])
        self.table.run(100)
        self.assertEqual(self.one()["tokens_in"], 5)
        with open(path, "w") as f:
            f.write(user_text("y") + "\n")
        found = self.one(self.now + 2)
        self.assertEqual(found["status"], "Processing")
        self.assertIsNone(found["tokens_in"])
        with open(path + ".tmp", "w") as f:
            f.write(user_text("z") + "\n" + assistant_text("b") + "\n" + assistant_text("c") + "\n")
        os.replace(path + ".tmp", path)
        found = self.one(self.now + 4)
        self.assertEqual((found["status"], found["tokens_in"]), ("Waiting", 10))


class LingerTests(ScannerCase):
    """
    Finished sessions are shown for FINISHED_LINGER after their last
    activity, then dropped.
    """

    def test_old_files(self) -> None:
        path = self.home.add_session(100, UUID, transcript_lines=[user_text("x")])
        self.home.touch(path, self.now - 100)
        self.home.touch(self.home.session_path(100), self.now - 300)
        self.assertEqual(self.one()["status"], "Finished")
        self.assertEqual(self.one(self.now + FINISHED_LINGER - 101)["status"], "Finished")
        self.assertEqual(self.scan(self.now + FINISHED_LINGER - 99), [])

    def test_last_seen_alive(self) -> None:
        """
        A session seen alive lingers from the last scan that saw it.
        """
        path = self.home.add_session(100, UUID, transcript_lines=[user_text("x")])
        for touched in (path, self.home.session_path(100)):
            self.home.touch(touched, self.now - 5000)
        self.table.run(100)
        self.assertEqual(self.one()["status"], "Processing")
        self.table.kill(100)
        self.assertEqual(self.one(self.now + 2)["status"], "Finished")
        self.assertEqual(self.one(self.now + FINISHED_LINGER - 1)["status"], "Finished")
        self.assertEqual(self.scan(self.now + FINISHED_LINGER), [])

    def test_forgets(self) -> None:
        """
        The scanner keeps nothing of sessions that are gone from its output
        or whose files are gone.
        """
        self.home.add_session(100, UUID, transcript_lines=[user_text("x")])
        self.table.run(100)
        self.scan()
        self.assertEqual(list(self.scanner._tracked), [100])
        os.remove(self.home.session_path(100))
        self.assertEqual(self.scan(self.now + 2), [])
        self.assertEqual((self.scanner._tracked, self.scanner._files, self.scanner._gone), ({}, {}, {}))


class LiveProcessTests(ScannerCase):
    """
    The default process table, against real processes.
    """

    def setUp(self) -> None:
        super().setUp()
        self.scanner = self.make(processes=default_process_table())

    def test_killed(self) -> None:
        """
        The dummy claude process is alive, named by --name, with memory;
        once killed its session is Finished.
        """
        process = spawn_claude(self, name="dummy")
        self.home.add_session(process.pid, UUID, started_at=self.now - 30, transcript_lines=[user_text("x")])
        deadline = time.monotonic() + 10
        while True:
            found = self.one()
            if found["mem_mb"] > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(found["project"], "dummy")
        self.assertIn(found["status"], ("Processing",))
        self.assertGreater(found["mem_mb"], 0)
        self.assertEqual(found["elapsed_secs"], 30)
        self.assertIsInstance(found["cpu"], float)
        process.kill()
        process.wait()
        found = self.one(self.now + 2)
        self.assertEqual(found["status"], "Finished")
        self.assertEqual(found["project"], "dummy")

    def test_reused_pid(self) -> None:
        process = spawn_other(self)
        self.home.add_session(process.pid, UUID, transcript_lines=[user_text("x")])
        self.assertEqual(self.one()["status"], "Finished")


class NameAndLocationTests(ScannerCase):
    """
    Project names and where transcripts are found.
    """

    def test_names(self) -> None:
        self.assertEqual(session_name(["claude", "--name", "api"]), "api")
        self.assertEqual(session_name(["claude", "-n", "api"]), "api")
        self.assertEqual(session_name(["claude", "--name=api"]), "api")
        self.assertEqual(session_name(["claude", "--resume", "fix-auth"]), "fix-auth")
        self.assertEqual(session_name(["claude", "-r", "fix-auth"]), "fix-auth")
        self.assertIsNone(session_name(["claude", "--resume", UUID]))
        self.assertIsNone(session_name(["claude", "--name"]))
        self.assertEqual(project_name("/home/u/backend/"), "backend")
        self.assertEqual(project_name("/"), "/")
        self.assertEqual(project_slug("/home/u/backend/"), "-home-u-backend")
        self.assertEqual(project_slug("/"), "-")

    def test_project(self) -> None:
        self.home.add_session(100, UUID, cwd="/srv/web")
        self.table.run(100, argv=("claude", "-n", "frontend"))
        self.home.add_session(101, OTHER, cwd="/srv/api/")
        self.table.run(101)
        self.assertEqual([s["project"] for s in self.scan()], ["frontend", "api"])

    def test_resumed(self) -> None:
        """
        Without its own transcript, a session resuming another reads that
        one's.
        """
        self.home.add_session(100, "own-id", cwd="/p")
        resumed = self.home.transcript_path("/p", UUID)
        os.makedirs(os.path.dirname(resumed))
        self.home.append(resumed, assistant_text("Done."))
        other = self.home.transcript_path("/p", OTHER)
        self.home.append(other, user_text("x"))
        self.home.touch(resumed, self.now - 100)
        self.table.run(100, argv=("claude", "--resume", UUID))
        self.assertEqual(self.one()["status"], "Waiting")
        self.table.run(100, argv=("claude",))
        self.assertEqual(self.one(self.now + 2)["status"], "Processing")

    def test_any_project(self) -> None:
        path = os.path.join(self.home.path, "projects", "-elsewhere", UUID + ".jsonl")
        os.makedirs(os.path.dirname(path))
        self.home.append(path, assistant_text("Done."))
        self.home.add_session(100, UUID, cwd="/p")
        self.table.run(100)
        self.assertEqual(self.one()["status"], "Waiting")

    def test_subagents(self) -> None:
        tasks = os.path.join(self.tasks, "-p", UUID, "tasks")
        os.makedirs(os.path.join(tasks, "nested"))
        for name in ("a.jsonl", "nested/b.jsonl", "notes.txt"):
            with open(os.path.join(tasks, name), "w"):
                pass
        self.home.add_session(100, UUID, cwd="/p")
        self.table.run(100)
        self.assertEqual(self.one()["subagents"], 2)


class CpuTests(ScannerCase):
    def test_mean_of_three(self) -> None:
        self.home.add_session(100, UUID, transcript_lines=[assistant_text("Done.")])
        readings = []
        for i, cpu in enumerate([30.0, 0.0, 0.0, 0.0]):
            self.table.run(100, cpu=cpu, rss_kb=2048)
            found = self.one(self.now + 2 * i)
            readings.append((found["cpu"], found["status"]))
        self.assertEqual(readings, [(30.0, "Processing"), (15.0, "Processing"), (10.0, "Processing"), (0.0, "Waiting")])
        self.assertEqual(found["mem_mb"], 2.0)

    def test_cpu_time(self) -> None:
        """
        From CPU time: the first reading is the lifetime average, then
        deltas over the time between scans.
        """
        self.home.add_session(100, UUID)
        for i, (seconds, expected) in enumerate([(10.0, 10.0), (11.0, 30.0), (11.0, 20.0), (11.0, 50.0 / 3)]):
            self.table.processes[100] = ProcessFacts(100, ("claude",), 0, cpu_seconds=seconds, age=100.0)
            self.assertAlmostEqual(self.one(self.now + 2 * i)["cpu"], round(expected, 2))
