"""
Tests for L{relaymesh.sessions.claude}: the scanner on real files in
temporary Claude homes, with a fake process table or real processes.
"""

from __future__ import annotations

import json
import os
import time
from typing import cast

from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import SynchronousTestCase

from relaymesh.sessions import claude
from relaymesh.sessions.claude import (
    FINISHED_LINGER,
    ClaudeCodeScanner,
    project_name,
    project_slug,
    session_name,
)
from relaymesh.sessions.procs import ProcessFacts, default_process_table
from relaymesh.sessions.transcript import TranscriptReader
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
        status: str = self.one()["status"]
        return status

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
        self.table.kill(100)
        status = self.one(self.now + 2)["status"]
        reader = self.scanner._tracked[100].reader
        assert reader is not None
        self.assertEqual((status, reader.path), ("Finished", resumed))
        self.scanner = self.make()
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


class BadFileTests(ScannerCase):
    """
    Files that cannot be used are skipped, never raised, and logged once.
    """

    def setUp(self) -> None:
        super().setUp()
        self.events: list[dict] = []
        # the logger only calls its observer with each event
        self.scanner.log = Logger(observer=cast(ILogObserver, self.events.append))
        self.home.add_session(100, UUID, transcript_lines=[user_text("x")])
        self.table.run(100)

    def test_session_files(self) -> None:
        """
        Session files that are not JSON, have wrong types, are too big or
        are not files are skipped; the good one is still read.
        """
        bad = [
            b"not json",
            b"\xff\xfe",
            b"[1]",
            json.dumps({"pid": "101", "sessionId": UUID, "cwd": "/", "startedAt": 0}).encode(),
            json.dumps({"pid": True, "sessionId": UUID, "cwd": "/", "startedAt": 0}).encode(),
            json.dumps({"pid": -4, "sessionId": UUID, "cwd": "/", "startedAt": 0}).encode(),
            json.dumps({"pid": 2**40, "sessionId": UUID, "cwd": "/", "startedAt": 0}).encode(),
            json.dumps({"pid": 101, "sessionId": "../../x", "cwd": "/", "startedAt": 0}).encode(),
            json.dumps({"pid": 101, "sessionId": UUID, "cwd": 3, "startedAt": 0}).encode(),
            json.dumps({"pid": 101, "sessionId": UUID, "cwd": "/", "startedAt": "now"}).encode(),
            b'{"pid": 101, "sessionId": "a", "cwd": "/", "startedAt": NaN}',
            json.dumps({"pid": 101, "sessionId": UUID, "cwd": "/", "startedAt": 0, "pad": "x" * 70000}).encode(),
            b"[" * 50000,
        ]
        for i, content in enumerate(bad):
            self.home.write_session(200 + i, content)
            self.table.run(101)
        os.mkdir(os.path.join(self.home.path, "sessions", "dir.json"))
        with open(os.path.join(self.home.path, "sessions", "notes.txt"), "w") as f:
            f.write("{}")
        for now in (self.now, self.now + 2):
            self.assertEqual([s["pid"] for s in self.scan(now)], [100])
        self.assertEqual(len(self.events), len(bad))

    def test_unreadable(self) -> None:
        """
        Unreadable session files, transcripts and directories are skipped.
        """
        if os.getuid() == 0:
            raise self.skipTest("root reads files whatever their mode")
        transcript = self.home.transcript_path("/home/u/backend", UUID)
        os.chmod(transcript, 0)
        self.addCleanup(os.chmod, transcript, 0o644)
        found = self.one()
        self.assertEqual((found["status"], found["telemetry"]["state"]), ("Unknown", "Unreadable transcript"))
        self.home.add_session(101, OTHER, transcript_lines=[user_text("x")])
        os.chmod(self.home.session_path(101), 0)
        self.addCleanup(os.chmod, self.home.session_path(101), 0o644)
        self.assertEqual([s["pid"] for s in self.scan()], [100])
        sessions = os.path.join(self.home.path, "sessions")
        os.chmod(sessions, 0)
        self.addCleanup(os.chmod, sessions, 0o755)
        self.assertEqual(self.scan(), [])

    def test_transcript_read_fails(self) -> None:
        """
        A transcript that cannot be read (as a file of mode 000 for a user
        other than root) leaves the session Unknown, logged once; once
        readable it is read.
        """

        def refuse(reader: TranscriptReader) -> None:
            raise PermissionError(13, "Permission denied")

        original = TranscriptReader.read
        self.patch(TranscriptReader, "read", refuse)
        for now in (self.now, self.now + 2):
            found = self.one(now)
            self.assertEqual((found["status"], found["telemetry"]["state"]), ("Unknown", "Unreadable transcript"))
        self.assertEqual(len(self.events), 1)
        self.patch(TranscriptReader, "read", original)
        self.assertEqual(self.one(self.now + 4)["status"], "Processing")

    def test_transcript_not_a_file(self) -> None:
        """
        A transcript that is a directory or a FIFO is skipped without
        blocking.
        """
        transcript = self.home.transcript_path("/home/u/backend", UUID)
        os.remove(transcript)
        os.mkfifo(transcript)
        self.assertEqual(self.one()["status"], "Unknown")

    def test_logged_once(self) -> None:
        """
        A problem is logged once, and no log line holds transcript text.
        """
        self.home.write_session(300, b"secret prompt text")
        for now in (self.now, self.now + 2, self.now + 4):
            self.scan(now)
        self.assertEqual(len(self.events), 1)
        self.assertNotIn("secret", repr(self.events))

    def test_scan_never_raises(self) -> None:
        """
        A failing process table does not escape scan().
        """

        class Broken:
            def lookup(self, pids):
                raise RuntimeError("boom")

        self.scanner.processes = Broken()
        self.assertEqual(self.scan(), [])
        self.assertEqual(len(self.events), 1)


class ManySessionsTests(ScannerCase):
    def test_too_many(self) -> None:
        """
        Past MAX_SESSION_FILES, only the most recently modified are read.
        """
        self.patch(claude, "MAX_SESSION_FILES", 3)
        for pid in range(100, 106):
            self.home.add_session(pid, f"s-{pid}")
            self.home.touch(self.home.session_path(pid), self.now - pid)
        self.assertEqual([s["pid"] for s in self.scan()], [100, 101, 102])

    def test_thousands(self) -> None:
        """
        3000 session files of dead pids, some with transcripts, old and
        new: the scan completes, shows only those within the linger, and
        the next scans too.
        """
        lines = [user_text("x"), assistant_text("Done.")]
        for i in range(3000):
            pid = 100000 + i
            cwd = f"/work/p{i % 40}"
            path = self.home.add_session(pid, f"s-{i}", cwd=cwd, transcript_lines=lines if i % 3 == 0 else None)
            if i % 2:
                self.home.touch(self.home.session_path(pid), self.now - 5000)
                if i % 3 == 0:
                    self.home.touch(path, self.now - 5000)
        started = time.monotonic()
        found = self.scan()
        first = time.monotonic() - started
        started = time.monotonic()
        again = self.scan(self.now + 2)
        second = time.monotonic() - started
        self.assertEqual(len(found), 1500)
        self.assertEqual(found, sorted(found, key=lambda s: s["pid"]))
        self.assertEqual({s["status"] for s in found}, {"Finished"})
        self.assertEqual(len(again), 1500)
        self.assertEqual(self.table.lookups[0], sorted(self.table.lookups[0]))
        print(f"\n3000 session files: first scan {first:.3f} s, second {second:.3f} s")


class PrivacyTests(ScannerCase):
    """
    No transcript text leaves the scanner but, with details, file paths
    and tool error text.
    """

    def setUp(self) -> None:
        super().setUp()
        lines = [
            user_text("PROMPT-SECRET-1"),
            tool_use("Write", {"file_path": "/p/PATH-OK.py", "content": "INPUT-SECRET-2"}, tool_id="t1"),
            tool_result("RESULT-SECRET-3", tool_id="t1"),
            tool_use("Bash", {"command": "INPUT-SECRET-4"}, tool_id="t2"),
            tool_result([{"type": "text", "text": "ERROR-OK"}], is_error=True, tool_id="t2"),
            assistant_text("REPLY-SECRET-5"),
            waiting_for_task(),
        ]
        self.home.add_session(100, UUID, cwd="/p", transcript_lines=lines)
        self.table.run(100)

    def test_default(self) -> None:
        text = json.dumps(self.scan())
        self.assertNotIn("SECRET", text)
        self.assertNotIn("PATH-OK", text)
        self.assertNotIn("ERROR-OK", text)
        found = self.one()
        self.assertFalse(DETAIL_KEYS & set(found))
        self.assertEqual(found["tool_usage"], {"Bash": {"calls": 1}, "Write": {"calls": 1}})

    def test_details(self) -> None:
        self.scanner = self.make(details=True)
        found = self.one()
        self.assertNotIn("SECRET", json.dumps(found))
        self.assertEqual(found["files_modified"], {"/p/PATH-OK.py": 1})
        self.assertEqual(found["recent_errors"], [{"tool": "Bash", "message": "ERROR-OK"}])
        self.assertEqual(found["last_error"], "ERROR-OK")
        self.assertTrue(KEYS | DETAIL_KEYS <= set(found))


class ReceiverShapeTests(ScannerCase):
    """
    What claudectl's from_remote_json reads, typed as it reads it
    (serde_json's as_u64, as_f64, as_str: an integer must be an int, not a
    float).
    """

    def check(self, found: dict) -> None:
        self.assertTrue(KEYS <= set(found), KEYS - set(found))
        self.assertIs(type(found["pid"]), int)
        self.assertIs(type(found["project"]), str)
        self.assertIn(found["status"], ("Needs Input", "Processing", "Waiting", "Idle", "Finished", "Unknown"))
        self.assertIs(type(found["elapsed_secs"]), int)
        self.assertGreaterEqual(found["elapsed_secs"], 0)
        for key in ("context_pct", "cost_usd", "burn_rate_per_hr"):
            self.assertIn(type(found[key]), (float, int, type(None)), key)
        for key in ("tokens_in", "tokens_out"):
            self.assertIn(type(found[key]), (int, type(None)), key)
        self.assertIn(type(found["model"]), (str, type(None)))
        self.assertIs(type(found["subagents"]), int)
        self.assertIs(type(found["cpu"]), float)
        self.assertIs(type(found["mem_mb"]), float)
        self.assertEqual(found["estimate"]["profile_source"], "built-in")
        self.assertIs(type(found["estimate"]["verified"]), bool)
        self.assertEqual(json.loads(json.dumps(found, allow_nan=False)), found)

    def test_metered(self) -> None:
        lines = [user_text("x"), tool_use(), tool_result(), assistant_text("Done.", model="claude-opus-4-6")]
        self.home.add_session(100, UUID, started_at=self.now - 320.7, transcript_lines=lines)
        self.table.run(100, cpu=1.0, rss_kb=422227)
        found = self.one()
        self.check(found)
        self.assertEqual(found["elapsed_secs"], 320)
        self.assertEqual(found["model"], "claude-opus-4-6")
        self.assertEqual(found["tokens_in"], 80512 + 5)
        self.assertEqual(found["tokens_out"], 130)
        self.assertEqual(found["context_pct"], 0.0)
        self.assertEqual(found["mem_mb"], 412.33)
        self.assertEqual(found["cost_usd"], round((12 * 3 + 80000 * 0.375 + 500 * 3.75 + 90 * 15 + 5 * 15 + 40 * 75) / 1e6, 2))
        self.assertEqual(found["estimate"], {"verified": True, "profile_source": "built-in"})

    def test_context_and_burn(self) -> None:
        """
        Context % of the latest model's window; the burn rate is the cost's
        growth per hour between scans.
        """
        big = {"input_tokens": 0, "cache_read_input_tokens": 100000, "output_tokens": 0}
        path = self.home.add_session(
            100, UUID, transcript_lines=[assistant_text("a", model="claude-sonnet-4-6", used=big)]
        )
        self.table.run(100)
        found = self.one()
        self.check(found)
        self.assertEqual(found["context_pct"], 50.0)
        self.assertEqual(found["burn_rate_per_hr"], 0.0)
        self.home.append(path, assistant_text("b", model="claude-sonnet-4-6", used={"input_tokens": 0, "output_tokens": 1000}))
        found = self.one(self.now + 2)
        self.assertEqual(found["burn_rate_per_hr"], round(0.015 / 2 * 3600, 2))
        self.assertEqual(self.one(self.now + 4)["burn_rate_per_hr"], round(0.015 / 2 * 3600 / 2, 2))

    def test_unmetered_and_unverified(self) -> None:
        self.home.add_session(100, UUID, transcript_lines=[user_text("x")])
        self.home.add_session(101, OTHER, transcript_lines=[assistant_text("x", model="gpt-5")])
        self.table.run(100)
        first, second = self.scan()
        self.check(first)
        self.check(second)
        self.assertEqual([first[k] for k in ("context_pct", "cost_usd", "burn_rate_per_hr", "tokens_in", "tokens_out")], [None] * 5)
        self.assertFalse(second["estimate"]["verified"])
        self.assertEqual(second["model"], "gpt-5")
