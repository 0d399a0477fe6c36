"""
The Claude Code session scanner: this machine's Claude Code sessions, found
as claudectl 0.49.2 finds them, each as a JSON-able dict in the shape of
claudectl's session objects (C{to_json_value}, read by C{from_remote_json}).

It is plain Python: no reactor and no threads. The caller gives the time to
each L{ClaudeCodeScanner.scan}, calls it one call at a time (from any one
thread at a time), and gets a fresh list it may keep.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from relaymesh.sessions.models import PROFILE_SOURCE, profile
from relaymesh.sessions.procs import ProcessFacts, ProcessTable, default_process_table
from relaymesh.sessions.status import Observation, infer_status
from relaymesh.sessions.transcript import MAX_READ_PER_SCAN, TranscriptReader

#: Where Claude Code keeps its sessions and transcripts.
DEFAULT_CLAUDE_HOME = "~/.claude"

#: Seconds a gone session stays published as "Finished" after its last
#: activity.
FINISHED_LINGER = 600.0

#: Session files read at most per scan: the most recently modified.
MAX_SESSION_FILES = 10_000

#: Session files larger than this are skipped.
MAX_SESSION_FILE_BYTES = 64 * 1024

#: CPU readings averaged.
CPU_READINGS = 3  # claudectl 0.49: 3

#: Subagent task files counted at most, and directory entries looked at.
MAX_SUBAGENT_ENTRIES = 1000

#: Distinct problems logged at most (one line each).
MAX_LOGGED_PROBLEMS = 256

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass(frozen=True)
class SessionFile:
    """
    One C{sessions/*.json} file.

    @ivar path: Where it is.
    @ivar pid: The session's process.
    @ivar session_id: The session id: its transcript's name.
    @ivar cwd: The session's working directory.
    @ivar started_at: When it started, in epoch milliseconds.
    @ivar mtime: The file's modification time.
    """

    path: str
    pid: int
    session_id: str
    cwd: str
    started_at: float
    mtime: float


def parse_session(path: str, data: Any, mtime: float) -> SessionFile:
    """
    A session file's content, checked.

    @raise ValueError: It is not a session file.
    """
    if not isinstance(data, dict):
        raise ValueError("not an object")
    pid, session_id = data.get("pid"), data.get("sessionId")
    cwd, started_at = data.get("cwd"), data.get("startedAt")
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2**31:
        raise ValueError("bad pid")
    if not isinstance(session_id, str) or not _safe_name(session_id):
        raise ValueError("bad sessionId")
    if not isinstance(cwd, str) or "\0" in cwd or len(cwd) > 4096:
        raise ValueError("bad cwd")
    if (
        isinstance(started_at, bool)
        or not isinstance(started_at, (int, float))
        or not math.isfinite(started_at)
        or started_at < 0
    ):
        raise ValueError("bad startedAt")
    return SessionFile(path, pid, session_id, cwd, float(started_at), mtime)


def _safe_name(name: str) -> bool:
    """
    Whether C{name} can be one path component.
    """
    return 0 < len(name) <= 255 and name not in (".", "..") and "/" not in name and "\0" not in name


def project_slug(cwd: str) -> str:
    """
    Claude Code's project directory name for C{cwd}.
    """
    trimmed = cwd.rstrip("/")
    return trimmed.replace("/", "-") if trimmed else "-"


def _option(argv: Iterable[str], long: str, short: str) -> str | None:
    """
    The value of the last C{--long X}, C{--long=X} or C{-s X} in C{argv}.
    """
    found = None
    args = list(argv)
    for i, arg in enumerate(args):
        if arg in (long, short) and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith(long + "="):
            found = arg[len(long) + 1 :]
    return found


def session_name(argv: Iterable[str]) -> str | None:
    """
    The session's name from its command line: C{--name}/C{-n}, else
    C{--resume}/C{-r} when its value is not a session id.
    """
    argv = tuple(argv)
    name = _option(argv, "--name", "-n")
    if name:
        return name
    resumed = _option(argv, "--resume", "-r")
    if resumed and not _UUID.match(resumed):
        return resumed
    return None


def resume_id(argv: Iterable[str]) -> str | None:
    """
    The session id given to C{--resume}/C{-r}, if it is one.
    """
    resumed = _option(argv, "--resume", "-r")
    return resumed if resumed and _UUID.match(resumed) else None


def project_name(cwd: str) -> str:
    """
    The last component of C{cwd} (C{"/"} for the root).
    """
    trimmed = cwd.rstrip("/")
    if not trimmed:
        return "/" if cwd else "unknown"
    return trimmed.rsplit("/", 1)[-1]


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


class CpuMeter:
    """
    A process's CPU percent: the mean of its last L{CPU_READINGS} readings.
    A reading is the CPU time used between two scans over the time between
    them (the first: the process's lifetime average), or the percent the
    process table gives.
    """

    def __init__(self) -> None:
        self._readings: deque[float] = deque(maxlen=CPU_READINGS)
        self._last: tuple[float, float] | None = None

    def reading(self, facts: ProcessFacts, now: float) -> float:
        """
        Take a reading of C{facts} at C{now}; return the mean.
        """
        value = None
        if facts.cpu_percent is not None:
            value = facts.cpu_percent
        elif facts.cpu_seconds is not None:
            if self._last is None:
                if facts.age:
                    value = facts.cpu_seconds / facts.age * 100.0
            elif now > self._last[1]:
                value = (facts.cpu_seconds - self._last[0]) / (now - self._last[1]) * 100.0
            if self._last is None or now > self._last[1]:
                self._last = (facts.cpu_seconds, now)
        if value is not None:
            self._readings.append(max(_finite(value), 0.0))
        if not self._readings:
            return 0.0
        return sum(self._readings) / len(self._readings)


class _Tracked:
    """
    What the scanner remembers of one session between scans.
    """

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.reader: TranscriptReader | None = None
        self.cpu = CpuMeter()
        self.last_alive: float | None = None
        self.name: str | None = None
        self.prev_cost: float | None = None
        self.prev_now: float | None = None
        self.burn_rate = 0.0

    def burn(self, cost: float, now: float) -> float:
        """
        Dollars per hour, from the cost's growth since the last scan,
        halving while it does not grow (claudectl's rule).
        """
        if self.prev_cost is not None and self.prev_now is not None and now > self.prev_now:
            delta = cost - self.prev_cost
            if delta > 0.001:
                self.burn_rate = delta / (now - self.prev_now) * 3600.0
            else:
                self.burn_rate *= 0.5
                if self.burn_rate < 0.01:
                    self.burn_rate = 0.0
        if self.prev_now is None or now > self.prev_now:
            self.prev_cost, self.prev_now = cost, now
        return self.burn_rate


class _Finder:
    """
    Transcript lookups for one scan, with what they listed kept for the
    scan's other sessions.
    """

    def __init__(self, projects: str) -> None:
        self.projects = projects
        self._newest: dict[str, str | None] = {}
        self._index: dict[str, str] | None = None

    def locate(self, session: SessionFile, resumed: str | None) -> str | None:
        """
        C{session}'s transcript: C{<slug>/<id>.jsonl}, the resumed id's
        file, the newest C{<slug>/*.jsonl}, any C{*/<id>.jsonl}.
        """
        slug = project_slug(session.cwd)
        if not _safe_name(slug):
            slug = ""
        candidates = [session.session_id] + ([resumed] if resumed else [])
        if slug:
            for name in candidates:
                path = os.path.join(self.projects, slug, name + ".jsonl")
                if _is_file(path):
                    return path
            newest = self.newest(slug)
            if newest is not None:
                return newest
        return self.index().get(session.session_id)

    def newest(self, slug: str) -> str | None:
        if slug not in self._newest:
            best: tuple[float, str] | None = None
            for entry in _entries(os.path.join(self.projects, slug)):
                if entry.name.endswith(".jsonl"):
                    info = _stat(entry)
                    if info is not None and (best is None or info.st_mtime > best[0]):
                        best = (info.st_mtime, entry.path)
            self._newest[slug] = best[1] if best else None
        return self._newest[slug]

    def index(self) -> dict[str, str]:
        if self._index is None:
            self._index = {}
            for project in _entries(self.projects):
                for entry in _entries(project.path):
                    if entry.name.endswith(".jsonl"):
                        self._index.setdefault(entry.name[: -len(".jsonl")], entry.path)
        return self._index


def _entries(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as found:
            return sorted(found, key=lambda e: e.name)
    except OSError:
        return []


def _stat(entry: os.DirEntry[str]) -> os.stat_result | None:
    try:
        info = entry.stat()
    except OSError:
        return None
    return info if stat.S_ISREG(info.st_mode) else None


def _is_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _mtime(path: str | None) -> float:
    if path is None:
        return 0.0
    try:
        return os.stat(path).st_mtime
    except (OSError, ValueError):
        return 0.0


def count_subagents(directory: str) -> int:
    """
    The C{*.jsonl} files anywhere under C{directory}, counting at most
    L{MAX_SUBAGENT_ENTRIES} entries.
    """
    found = seen = 0
    pending = [directory]
    while pending and seen < MAX_SUBAGENT_ENTRIES:
        for entry in _entries(pending.pop()):
            seen += 1
            if seen > MAX_SUBAGENT_ENTRIES:
                break
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif entry.name.endswith(".jsonl") and entry.is_file():
                    found += 1
            except OSError:
                continue
    return found


def _read_small(path: str, limit: int) -> bytes:
    """
    The content of the regular file C{path}, if at most C{limit} bytes.

    @raise OSError: It cannot be read, is not a regular file, or is larger.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError("not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError("too big")
    return data


class ClaudeCodeScanner:
    """
    This machine's Claude Code sessions, as claudectl sees them.

    Each L{scan} reads the session files, looks the processes up once, reads
    what was appended to each transcript, and returns one dict per session,
    sorted by pid. It writes nothing under the home.

    @ivar home: The Claude home.
    @ivar details: Whether sessions carry the modified files' paths and the
        tool errors' text.
    @ivar processes: Where processes are looked up.
    @ivar tasks_root: Where subagent task files live.
    """

    log = Logger()

    def __init__(
        self,
        home: str = DEFAULT_CLAUDE_HOME,
        details: bool = False,
        processes: ProcessTable | None = None,
        tasks_root: str | None = None,
        max_read: int = MAX_READ_PER_SCAN,
    ) -> None:
        self.home = os.path.expanduser(home)
        self.details = details
        self.processes = processes if processes is not None else default_process_table()
        if tasks_root is None:
            uid = os.getuid() if hasattr(os, "getuid") else 0
            tasks_root = f"/tmp/claude-{uid}"
        self.tasks_root = tasks_root
        self.max_read = max_read
        self._files: dict[str, tuple[tuple[int, int, int, int], SessionFile | None]] = {}
        self._tracked: dict[int, _Tracked] = {}
        self._gone: dict[str, tuple[str, str | None]] = {}
        self._logged: set[tuple[str, str]] = set()

    def _problem(self, kind: str, path: str, reason: str) -> None:
        """
        Log one line the first time C{kind} happens to C{path}.
        """
        key = (kind, path)
        if key in self._logged or len(self._logged) >= MAX_LOGGED_PROBLEMS:
            return
        self._logged.add(key)
        self.log.warn("Claude Code sessions: {kind} {path}: {reason}", kind=kind, path=path, reason=reason)

    def scan(self, now: float) -> list[dict[str, Any]]:
        """
        The sessions at C{now} (epoch seconds).

        @return: One dict per session, sorted by pid; C{[]} without a
            C{sessions} directory. Never raises.
        """
        try:
            return self._scan(now)
        except Exception as e:  # a scanner bug must not stop the heartbeats
            self._problem("scan failed", self.home, type(e).__name__)
            return []

    def _session_files(self) -> dict[int, SessionFile]:
        """
        The readable session files, one per pid (the latest started).
        """
        directory = os.path.join(self.home, "sessions")
        listed = []
        for entry in _entries(directory):
            if entry.name.endswith(".json"):
                try:
                    listed.append((entry.stat(), entry.path))
                except OSError:
                    continue
        if len(listed) > MAX_SESSION_FILES:
            self._problem("session files skipped", directory, f"more than {MAX_SESSION_FILES}")
            listed = sorted(listed, key=lambda found: found[0].st_mtime, reverse=True)[:MAX_SESSION_FILES]
        files: dict[str, tuple[tuple[int, int, int, int], SessionFile | None]] = {}
        for info, path in listed:
            key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
            cached = self._files.get(path)
            if cached is not None and cached[0] == key:
                files[path] = cached
                continue
            files[path] = (key, self._parse_file(path, info))
        self._files = files
        by_pid: dict[int, SessionFile] = {}
        for _, session in files.values():
            if session is None:
                continue
            held = by_pid.get(session.pid)
            if held is None or (session.started_at, session.path) > (held.started_at, held.path):
                by_pid[session.pid] = session
        return by_pid

    def _parse_file(self, path: str, info: os.stat_result) -> SessionFile | None:
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_size > MAX_SESSION_FILE_BYTES:
            self._problem("session file skipped", path, "larger than 64 KiB")
            return None
        try:
            data = json.loads(_read_small(path, MAX_SESSION_FILE_BYTES))
            return parse_session(path, data, info.st_mtime)
        except (OSError, ValueError, RecursionError) as e:
            self._problem("session file skipped", path, type(e).__name__)
            return None

    def _scan(self, now: float) -> list[dict[str, Any]]:
        sessions = self._session_files()
        facts = self.processes.lookup(sorted(sessions)) if sessions else {}
        finder = _Finder(os.path.join(self.home, "projects"))
        tracked: dict[int, _Tracked] = {}
        gone: dict[str, tuple[str, str | None]] = {}
        found = []
        for pid, session in sorted(sessions.items()):
            memory = self._tracked.get(pid)
            if memory is None or memory.session_id != session.session_id:
                memory = _Tracked(session.session_id)
            process = facts.get(pid)
            alive = process is not None and "claude" in process.command
            if process is not None and alive:
                memory.last_alive = now
                memory.name = session_name(process.argv)
                path = finder.locate(session, resume_id(process.argv))
            else:
                # the transcript read while it was alive, else look once
                path = memory.reader.path if memory.reader else self._gone_transcript(session, finder)
                gone[session.path] = (session.session_id, path)
                last = max(memory.last_alive or 0.0, session.mtime)
                if now - last >= FINISHED_LINGER and now - _mtime(path) >= FINISHED_LINGER:
                    continue
            tracked[pid] = memory
            found.append(self._describe(now, session, memory, process if alive else None, path))
        self._tracked = tracked
        self._gone = gone
        return found

    def _gone_transcript(self, session: SessionFile, finder: _Finder) -> str | None:
        """
        A gone session's transcript, looked for once.
        """
        known = self._gone.get(session.path)
        if known is not None and known[0] == session.session_id:
            return known[1]
        return finder.locate(session, None)

    def _read(self, memory: _Tracked, path: str | None) -> bool:
        """
        Read what was appended to the transcript; return whether it could
        be read.
        """
        if path is None:
            return False
        if memory.reader is None or memory.reader.path != path:
            memory.reader = TranscriptReader(path, self.max_read)
        try:
            memory.reader.read()
        except (OSError, ValueError) as e:
            self._problem("transcript unreadable", path, type(e).__name__)
            return False
        return True

    def _describe(
        self,
        now: float,
        session: SessionFile,
        memory: _Tracked,
        process: ProcessFacts | None,
        path: str | None,
    ) -> dict[str, Any]:
        """
        One session as claudectl's C{to_json_value} writes it.
        """
        usable = self._read(memory, path)
        reader = memory.reader
        state = reader.state if reader is not None else None
        cpu = memory.cpu.reading(process, now) if process is not None else 0.0
        untouched = now - reader.mtime if reader is not None and reader.mtime is not None else 0.0
        status = infer_status(
            Observation(
                alive=process is not None,
                cpu=cpu,
                waiting_for_task=state.waiting_for_task if state else False,
                transcript=usable,
                last_role=state.last_role if state else None,
                stop_reason=state.last_stop_reason if state else "",
                tool_pending=bool(state.pending_tools) if state else False,
                untouched=untouched,
            )
        )
        metered = state is not None and state.usage_seen
        model = profile(state.model if state else None)
        burn = memory.burn(state.cost_usd if state else 0.0, now)
        described: dict[str, Any] = {
            "pid": session.pid,
            "project": memory.name or project_name(session.cwd),
            "status": status.value,
            "model": state.model if state else None,
            "elapsed_secs": int(max(0.0, now - session.started_at / 1000.0)),
            "context_pct": None,
            "cost_usd": None,
            "burn_rate_per_hr": None,
            "tokens_in": None,
            "tokens_out": None,
            "cpu": round(_finite(cpu), 2),
            "mem_mb": round(process.rss_kb / 1024.0, 2) if process is not None else 0.0,
            "subagents": count_subagents(
                os.path.join(self.tasks_root, project_slug(session.cwd), session.session_id, "tasks")
            )
            if _safe_name(project_slug(session.cwd))
            else 0,
            "tool_usage": {name: {"calls": n} for name, n in sorted(state.tool_usage.items())}
            if state
            else {},
            "estimate": {"verified": state.verified if state else True, "profile_source": PROFILE_SOURCE},
            "telemetry": {"state": _telemetry(path, usable, reader), "usage_metrics_available": metered},
        }
        if metered and state is not None:
            described.update(
                context_pct=round(_finite(state.context_tokens / model.context_window * 100.0), 2),
                cost_usd=round(_finite(state.cost_usd), 2),
                burn_rate_per_hr=round(_finite(burn), 2),
                tokens_in=state.tokens_in,
                tokens_out=state.tokens_out,
            )
        if self.details:
            described["files_modified"] = dict(state.files_modified) if state else {}
            described["last_error"] = state.last_error if state else None
            described["recent_errors"] = (
                [{"tool": tool, "message": text} for tool, text in state.recent_errors] if state else []
            )
        return described


def _telemetry(path: str | None, usable: bool, reader: TranscriptReader | None) -> str:
    """
    claudectl's label for what the transcript gave.
    """
    if path is None:
        return "No transcript"
    if not usable or reader is None:
        return "Unreadable transcript"
    if reader.state.messages or reader.state.waiting_for_task:
        return "Available"
    if reader.offset == 0:
        return "Pending"
    return "Unsupported transcript"
