"""
Processes: what the scanner needs to know of a session's process (its
command line, CPU time or percent, resident memory), from C{/proc} on Linux,
else from one C{ps} call per scan.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

#: Seconds one C{ps} call may take.
PS_TIMEOUT = 5.0

#: Command line bytes read at most per process.
MAX_CMDLINE_BYTES = 64 * 1024


@dataclass(frozen=True)
class ProcessFacts:
    """
    One running process.

    @ivar pid: Its id.
    @ivar argv: Its command line.
    @ivar rss_kb: Its resident memory in KiB.
    @ivar cpu_seconds: CPU time used so far (user and system), when known.
    @ivar age: Seconds since it started, when known.
    @ivar cpu_percent: A CPU percent reading, when the table gives one
        instead of CPU time (C{ps}).
    """

    pid: int
    argv: tuple[str, ...]
    rss_kb: int = 0
    cpu_seconds: float | None = None
    age: float | None = None
    cpu_percent: float | None = None

    @property
    def command(self) -> str:
        """
        The command line as one string.
        """
        return " ".join(self.argv)


class ProcessTable(Protocol):
    """
    Where the scanner learns about processes.
    """

    def lookup(self, pids: Iterable[int]) -> dict[int, ProcessFacts]:
        """
        The facts of those of C{pids} that are running.
        """


class ProcTable:
    """
    Processes from Linux's C{/proc}: no subprocess.

    @ivar root: The C{/proc} directory.
    """

    def __init__(self, root: str = "/proc") -> None:
        self.root = root
        self._ticks = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
        self._page_kb = (os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096) // 1024

    def _uptime(self) -> float | None:
        try:
            with open(os.path.join(self.root, "uptime"), "rb") as f:
                return float(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def lookup(self, pids: Iterable[int]) -> dict[int, ProcessFacts]:
        uptime = None
        found = {}
        for pid in pids:
            if uptime is None:
                uptime = self._uptime()
            facts = self._one(pid, uptime)
            if facts is not None:
                found[pid] = facts
        return found

    def _one(self, pid: int, uptime: float | None) -> ProcessFacts | None:
        base = os.path.join(self.root, str(pid))
        try:
            with open(os.path.join(base, "stat"), "rb") as f:
                stat_line = f.read(4096)
            with open(os.path.join(base, "cmdline"), "rb") as f:
                cmdline = f.read(MAX_CMDLINE_BYTES)
        except OSError:
            return None
        # the command name, in parentheses, may hold spaces and parentheses
        fields = stat_line[stat_line.rfind(b")") + 2 :].split()
        try:
            state = fields[0]
            utime, stime = int(fields[11]), int(fields[12])
            started = int(fields[19])
            rss_pages = int(fields[21])
        except (IndexError, ValueError):
            return None
        if state in (b"Z", b"X"):
            return None
        argv = tuple(a.decode("utf-8", "replace") for a in cmdline.split(b"\0") if a)
        age = uptime - started / self._ticks if uptime is not None else None
        return ProcessFacts(
            pid=pid,
            argv=argv,
            rss_kb=max(rss_pages, 0) * self._page_kb,
            cpu_seconds=(utime + stime) / self._ticks,
            age=age if age is None or age > 0 else None,
        )


def parse_ps(output: str) -> dict[int, ProcessFacts]:
    """
    Parse C{ps -o pid=,%cpu=,rss=,command=} output.
    """
    found = {}
    for line in output.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 3:
            continue
        try:
            pid = int(parts[0])
            cpu = float(parts[1].replace(",", "."))
            rss = int(parts[2])
        except ValueError:
            continue
        if cpu != cpu or cpu in (float("inf"), float("-inf")):
            cpu = 0.0
        argv = tuple(parts[3].split()) if len(parts) > 3 else ()
        found[pid] = ProcessFacts(pid=pid, argv=argv, rss_kb=max(rss, 0), cpu_percent=max(cpu, 0.0))
    return found


class PsTable:
    """
    Processes from one C{ps} call per lookup, where there is no C{/proc}.

    @ivar ps: The C{ps} command.
    @ivar timeout: Seconds the call may take.
    """

    def __init__(self, ps: str = "ps", timeout: float = PS_TIMEOUT) -> None:
        self.ps = ps
        self.timeout = timeout

    def lookup(self, pids: Iterable[int]) -> dict[int, ProcessFacts]:
        wanted = sorted({int(p) for p in pids if int(p) > 0})
        if not wanted:
            return {}
        command = [self.ps, "-o", "pid=,%cpu=,rss=,command=", "-p", ",".join(map(str, wanted))]
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return {}
        found = parse_ps(done.stdout.decode("utf-8", "replace"))
        asked = set(wanted)
        return {pid: facts for pid, facts in found.items() if pid in asked}


def default_process_table() -> ProcessTable:
    """
    L{ProcTable} where C{/proc} is, else L{PsTable}.
    """
    if os.path.isfile("/proc/self/stat"):
        return ProcTable()
    return PsTable()
