"""
Where a node's session list comes from (C{--sessions}), and the service
that refreshes it every L{REFRESH_INTERVAL} seconds.

  - C{claude-code}: this machine's Claude Code sessions, found in the
    Claude home (L{relaymesh.sessions.claude}); a machine without one
    publishes no list, as a node without a source does.
  - C{none}: no list; heartbeats are bare, as claudectl's.
  - C{api}: only what C{PUT /api/sessions} or L{relaymesh.mesh.Mesh.set_sessions}
    sets (an embedding application's choice).
  - a file: the JSON list another program keeps current there.

The scans run in the reactor's thread pool, one at a time: they read files,
and the reactor only takes their result.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaymesh.fleet import API_SOURCE
from relaymesh.interfaces import IRelayMesh
from relaymesh.sessions.claude import ClaudeCodeScanner
from relaymesh.wire import WireError, dumps

#: Seconds between two refreshes of the session list (claudectl's tick).
REFRESH_INTERVAL = 2.0

#: The source that finds Claude Code's sessions.
CLAUDE_CODE_SOURCE = "claude-code"

#: No source: heartbeats carry no session list.
NO_SOURCE = "none"

#: A JSON file another program keeps current.
FILE_SOURCE = "file"

#: Bytes a session file (C{--sessions FILE}) may have.
MAX_SESSION_FILE = 4 * 1024 * 1024

#: Reads this machine's sessions at a time (epoch seconds): the new list,
#: or C{None} to publish none; raises L{SessionSourceError} to keep the
#: list in use.
Scan = Callable[[float], "list[Any] | None"]

#: Runs a scan off the reactor thread: C{run(scan, now) -> Deferred}.
Runner = Callable[[Scan, float], "Deferred[list[Any] | None]"]


class SessionSourceError(Exception):
    """
    A source could not be read this time; the text says why, in one line.
    """


@dataclasses.dataclass(frozen=True)
class SessionOption:
    """
    A parsed C{--sessions} value.

    @ivar kind: C{"claude-code"}, C{"none"}, C{"api"} or C{"file"}.
    @ivar path: The file, for C{"file"}.
    """

    kind: str
    path: str | None = None

    def __str__(self) -> str:
        return self.path if self.kind == FILE_SOURCE and self.path else self.kind


def parse_sessions_option(text: str) -> SessionOption:
    """
    Read a C{--sessions} value: C{claude-code}, C{none}, C{api}, or the path
    of a JSON file (which need not exist yet).

    @raise ValueError: for an empty value or one that names a directory.
    """
    value = text.strip()
    if value.lower() in (CLAUDE_CODE_SOURCE, NO_SOURCE, API_SOURCE):
        return SessionOption(value.lower())
    if not value:
        raise ValueError(
            "--sessions: want claude-code, none, api, or the path of a JSON file"
        )
    path = os.path.abspath(os.path.expanduser(value))
    if os.path.isdir(path):
        raise ValueError(f"--sessions: {value} is a directory, not a JSON file")
    return SessionOption(FILE_SOURCE, path)


class SessionListFile:
    """
    A session list another program keeps current in a JSON file: an array
    of session objects, or an object whose C{sessions} is one.
    """

    def __init__(self, path: str, max_size: int = MAX_SESSION_FILE) -> None:
        self.path = path
        self.max_size = max_size

    def __str__(self) -> str:
        return self.path

    def scan(self, now: float) -> list[Any] | None:
        """
        The file's list, or C{None} while the file does not exist.

        @raise SessionSourceError: if it cannot be read or is not a list of
            objects.
        """
        try:
            with open(self.path, "rb") as f:
                data = f.read(self.max_size + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SessionSourceError(f"cannot read {self.path}: {e.strerror or e}") from None
        if len(data) > self.max_size:
            raise SessionSourceError(f"{self.path} is larger than {self.max_size} bytes")
        try:
            value = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise SessionSourceError(f"{self.path} is not JSON: {e}") from None
        if isinstance(value, dict):
            value = value.get("sessions")
        if not isinstance(value, list) or not all(isinstance(s, dict) for s in value):
            raise SessionSourceError(
                f"{self.path} holds no list of session objects "
                '(want [{...}, ...] or {"sessions": [...]})'
            )
        return value


class ClaudeHomeSessions:
    """
    This machine's Claude Code sessions, or none while the Claude home has
    no sessions folder (a machine without Claude Code).
    """

    def __str__(self) -> str:
        return f"Claude Code in {self.home}"

    def __init__(self, home: str, details: bool = False) -> None:
        """
        @param home: The Claude home (C{~} is expanded).
        @param details: Whether sessions carry file paths and tool errors.
        """
        self.home = os.path.expanduser(home)
        self._scanner = ClaudeCodeScanner(home=self.home, details=details)

    def scan(self, now: float) -> list[Any] | None:
        if not os.path.isdir(os.path.join(self.home, "sessions")):
            return None
        sessions: list[Any] = self._scanner.scan(now)
        return sessions


def in_thread_pool(reactor: Any) -> Runner:
    """
    A L{Runner} that scans in C{reactor}'s thread pool.
    """
    from twisted.internet.threads import deferToThreadPool

    def run(scan: Scan, now: float) -> Deferred[list[Any] | None]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), scan, now)

    return run


class SessionSource(Service):
    """
    Refreshes the node's session list from a scan every C{interval}
    seconds, the first time as it starts.

    A scan that fails keeps the list in use and logs its reason once (again
    only when the reason changes); one that takes longer than the interval
    delays the next, never overlaps it.

    @ivar kind: The source's kind, as L{SessionOption.kind}.
    @ivar problem: Why the latest scan failed, or C{None}.
    """

    log = Logger()

    def __init__(
        self,
        mesh: IRelayMesh,
        scan: Scan,
        kind: str,
        clock: IReactorTime,
        run: Runner,
        interval: float = REFRESH_INTERVAL,
        description: str | None = None,
    ) -> None:
        """
        @param scan: Reads the list (L{Scan}).
        @param kind: The source's kind, as L{SessionOption.kind}.
        @param run: Runs a scan off the reactor thread (L{in_thread_pool}).
        @param description: What the log calls the source (its kind if
            C{None}).
        """
        self.mesh = mesh
        self.kind = kind
        self.description = description or kind
        self.problem: str | None = None
        self._scan = scan
        self._clock = clock
        self._run = run
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = clock
        self._interval = interval

    def startService(self) -> None:
        Service.startService(self)
        self.log.info(
            "session list from {source}, every {interval:g} s",
            source=self.description,
            interval=self._interval,
        )
        self._loop.start(self._interval, now=True).addErrback(
            lambda f: self.log.failure("the session refresh stopped", f)
        )

    def stopService(self) -> None:
        Service.stopService(self)
        if self._loop.running:
            self._loop.stop()

    def refresh(self) -> Deferred[None]:
        """
        Scan once and publish what the scan found.
        """
        d = self._run(self._checked_scan, self._clock.seconds())
        return d.addCallbacks(self._publish, self._failed)

    def _checked_scan(self, now: float) -> list[Any] | None:
        """
        Scan, and check that the list can be sent, off the reactor thread.
        """
        sessions = self._scan(now)
        if sessions is not None:
            try:
                dumps({"sessions": sessions})
            except WireError as e:
                raise SessionSourceError(f"cannot publish the session list: {e}") from None
        return sessions

    def _publish(self, sessions: list[Any] | None) -> None:
        if not self.running:
            return
        self.mesh.fleet.set_local(sessions, checked=True)
        if self.problem is not None:
            self.log.info("sessions ({kind}): read again", kind=self.kind)
            self.problem = None

    def _failed(self, failure: Failure) -> None:
        if isinstance(failure.value, SessionSourceError):
            self._note(str(failure.value))
        else:
            self._note(f"the scan failed: {failure.getErrorMessage()}")
            self.log.failure("session scan failed", failure)

    def _note(self, problem: str) -> None:
        if problem != self.problem:
            self.log.warn(
                "sessions ({kind}): {problem}; keeping the list in use", kind=self.kind, problem=problem
            )
        self.problem = problem


def session_source(
    mesh: IRelayMesh, sessions: str, claude_home: str, details: bool, reactor: Any
) -> SessionSource | None:
    """
    The service that refreshes a node's session list for its C{--sessions}
    option, if any (C{None} for C{none} and C{api}); it also tells the
    mesh's fleet which source it is.

    @raise ValueError: for a C{sessions} option that does not parse.
    """
    option = parse_sessions_option(sessions)
    mesh.fleet.source = option.kind
    reader: ClaudeHomeSessions | SessionListFile
    if option.kind == CLAUDE_CODE_SOURCE:
        reader = ClaudeHomeSessions(claude_home, details)
    elif option.kind == FILE_SOURCE:
        assert option.path is not None
        reader = SessionListFile(option.path)
    else:
        return None
    if IReactorThreads.providedBy(reactor):
        run = in_thread_pool(reactor)
    else:  # a reactor without threads (a simulation): scan in its thread
        run = maybeDeferred
    return SessionSource(mesh, reader.scan, option.kind, reactor, run, description=str(reader))
