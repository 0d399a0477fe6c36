"""
Claude Code homes for tests: session files, transcripts of each status, a
dummy live process and a fake process table, written to a temporary
directory. The scanner's tests and the node's integration tests share them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from relaymesh.sessions.procs import ProcessFacts

#: A session id as Claude Code writes them.
SESSION_ID = "0b5f7c1e-3d2a-4f4b-9c1d-2e6f8a9b0c1d"

#: A model id of each family.
OPUS_MODEL = "claude-opus-4-6"
SONNET_MODEL = "claude-sonnet-4-6-20260401"


def dumps(entry: dict[str, Any]) -> str:
    """
    One transcript line.
    """
    return json.dumps(entry, separators=(",", ":"))


def waiting_for_task() -> str:
    """
    A progress line saying the session waits for a task.
    """
    return dumps({"type": "progress", "data": "waiting_for_task"})


def user_text(text: str) -> str:
    """
    A user prompt.
    """
    return dumps({"type": "user", "message": {"role": "user", "content": text}})


def usage(input: int = 5, cache_read: int = 0, cache_write: int = 0, output: int = 40) -> dict[str, int]:
    """
    A message's usage.
    """
    return {
        "input_tokens": input,
        "cache_read_input_tokens": cache_read,
        "cache_creation_input_tokens": cache_write,
        "output_tokens": output,
    }


def assistant_text(
    text: str, stop_reason: str | None = "end_turn", model: str = OPUS_MODEL, used: dict | None = None
) -> str:
    """
    An assistant reply.
    """
    message = {
        "role": "assistant",
        "model": model,
        "stop_reason": stop_reason,
        "usage": used if used is not None else usage(),
        "content": [{"type": "text", "text": text}],
    }
    return dumps({"type": "assistant", "message": message})


def tool_use(
    name: str = "Bash",
    tool_input: dict | None = None,
    tool_id: str = "toolu_01",
    stop_reason: str | None = "tool_use",
    model: str = SONNET_MODEL,
    used: dict | None = None,
) -> str:
    """
    An assistant message that calls a tool.
    """
    message = {
        "role": "assistant",
        "model": model,
        "stop_reason": stop_reason,
        "usage": used if used is not None else usage(12, 80000, 500, 90),
        "content": [
            {"type": "tool_use", "id": tool_id, "name": name, "input": tool_input or {"command": "cargo test"}}
        ],
    }
    return dumps({"type": "assistant", "message": message})


def tool_result(content: Any = "ok", is_error: bool = False, tool_id: str = "toolu_01") -> str:
    """
    A user message carrying a tool's result.
    """
    block = {"type": "tool_result", "tool_use_id": tool_id, "content": content, "is_error": is_error}
    return dumps({"type": "user", "message": {"role": "user", "content": [block]}})


#: Transcripts that give each status with a quiet process (CPU 0): how long
#: the transcript must stay untouched, and its lines.
STATUS_TRANSCRIPTS: dict[str, tuple[float, list[str]]] = {
    "Needs Input": (0.0, [user_text("go"), waiting_for_task()]),
    "Waiting": (0.0, [user_text("go"), assistant_text("Done.")]),
    "Idle": (601.0, [user_text("go"), assistant_text("Done.")]),
    "Processing": (0.0, [user_text("go")]),
}


def project_slug(cwd: str) -> str:
    """
    Claude Code's project directory name for C{cwd}.
    """
    trimmed = cwd.rstrip("/")
    return trimmed.replace("/", "-") if trimmed else "-"


class ClaudeHome:
    """
    A Claude home in a test's temporary directory.

    @ivar path: The home.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.join(path, "sessions"), exist_ok=True)
        os.makedirs(os.path.join(path, "projects"), exist_ok=True)

    def session_path(self, pid: int) -> str:
        """
        Where the session file of C{pid} is.
        """
        return os.path.join(self.path, "sessions", f"{pid}.json")

    def transcript_path(self, cwd: str, session_id: str) -> str:
        """
        Where the transcript of C{session_id} in C{cwd} is.
        """
        return os.path.join(self.path, "projects", project_slug(cwd), session_id + ".jsonl")

    def add_session(
        self,
        pid: int,
        session_id: str = SESSION_ID,
        cwd: str = "/home/u/backend",
        started_at: float = 0.0,
        transcript_lines: Iterable[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """
        Write a session file and, if C{transcript_lines} is given, its
        transcript; C{started_at} is in epoch seconds.

        @return: The transcript's path.
        """
        record = {"pid": pid, "sessionId": session_id, "cwd": cwd, "startedAt": int(started_at * 1000)}
        record.update(extra or {})
        self.write_session(pid, json.dumps(record))
        path = self.transcript_path(cwd, session_id)
        if transcript_lines is not None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in transcript_lines)
        return path

    def write_session(self, pid: int, content: str | bytes) -> str:
        """
        Write anything as the session file of C{pid}.
        """
        path = self.session_path(pid)
        with open(path, "wb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
        return path

    def append(self, path: str, *lines: str, newline: bool = True) -> None:
        """
        Append C{lines} to the transcript at C{path}.
        """
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(line + ("\n" if newline else "") for line in lines))

    def touch(self, path: str, mtime: float) -> None:
        """
        Set C{path}'s modification time.
        """
        os.utime(path, (mtime, mtime))


class FakeProcessTable:
    """
    A process table the test fills: pid -> L{ProcessFacts}.

    @ivar processes: The running processes.
    @ivar lookups: The pids of each lookup.
    """

    def __init__(self) -> None:
        self.processes: dict[int, ProcessFacts] = {}
        self.lookups: list[list[int]] = []

    def run(
        self, pid: int, argv: Iterable[str] = ("claude",), cpu: float = 0.0, rss_kb: int = 0
    ) -> ProcessFacts:
        """
        Start a process: C{cpu} is its CPU percent.
        """
        facts = ProcessFacts(pid=pid, argv=tuple(argv), rss_kb=rss_kb, cpu_percent=cpu)
        self.processes[pid] = facts
        return facts

    def kill(self, pid: int) -> None:
        """
        End a process.
        """
        self.processes.pop(pid, None)

    def lookup(self, pids: Iterable[int]) -> dict[int, ProcessFacts]:
        wanted = list(pids)
        self.lookups.append(wanted)
        return {pid: self.processes[pid] for pid in wanted if pid in self.processes}


def _spawn(test_case: SynchronousTestCase, argv: list[str]) -> subprocess.Popen:
    """
    Start a dummy process that sleeps for two minutes; the test's cleanup
    kills it by its handle.

    It is returned once it has said it runs: until the child has exec'd,
    its command line in C{/proc} (or C{ps}) is not yet C{argv}.
    """
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; print(flush=True); time.sleep(120)", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )

    def stop() -> None:
        if process.poll() is None:
            process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()

    test_case.addCleanup(stop)
    assert process.stdout is not None
    process.stdout.readline()  # it runs (an empty read if it died: the test says why)
    return process


def spawn_claude(test_case: SynchronousTestCase, name: str = "x") -> subprocess.Popen:
    """
    Start a dummy process whose command line holds C{claude} and
    C{--name name}; the test's cleanup kills it by its handle.
    """
    return _spawn(test_case, ["claude", "--name", name])


def spawn_other(test_case: SynchronousTestCase) -> subprocess.Popen:
    """
    Start a dummy process whose command line lacks C{claude} (a reused
    pid); the test's cleanup kills it by its handle.
    """
    return _spawn(test_case, [])
