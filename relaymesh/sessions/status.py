"""
Status: claudectl's rules for what a Claude Code session is doing, as one
pure function of what the scanner saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Status(str, Enum):
    """
    A session's status, spelled as claudectl's receivers read it.
    """

    PROCESSING = "Processing"
    NEEDS_INPUT = "Needs Input"
    WAITING = "Waiting"
    IDLE = "Idle"
    FINISHED = "Finished"
    UNKNOWN = "Unknown"


#: CPU percent above which a session is processing, whatever else.
BUSY_CPU = 5.0  # claudectl 0.49: 5 %

#: CPU percent below which a session stopped for a tool may be blocked.
QUIET_CPU = 2.0  # claudectl 0.49: 2 %

#: Seconds a finished turn's transcript stays untouched before "Idle".
IDLE_AFTER = 600.0  # claudectl 0.49: 10 min

#: Seconds a tool use's transcript stays untouched before "Needs Input".
BLOCKED_AFTER = 5.0  # claudectl 0.49: 5 s


@dataclass(frozen=True)
class Observation:
    """
    What the status is inferred from.

    @ivar alive: Whether the session's process is running.
    @ivar cpu: The process's CPU percent (smoothed).
    @ivar waiting_for_task: A C{waiting_for_task} progress line came last.
    @ivar transcript: Whether a usable transcript was read.
    @ivar last_role: The last message's role, or C{None}.
    @ivar stop_reason: The last message's stop reason (C{""} for none).
    @ivar tool_pending: Whether a tool use has no result yet.
    @ivar untouched: Seconds since the transcript was last modified.
    """

    alive: bool
    cpu: float = 0.0
    waiting_for_task: bool = False
    transcript: bool = False
    last_role: str | None = None
    stop_reason: str = ""
    tool_pending: bool = False
    untouched: float = 0.0


def infer_status(seen: Observation) -> Status:
    """
    The status claudectl gives C{seen}: the first of its rules that holds,
    except that a gone process is always L{Status.FINISHED}.
    """
    if not seen.alive:
        return Status.FINISHED
    if seen.cpu > BUSY_CPU:
        return Status.PROCESSING
    if seen.waiting_for_task:
        return Status.NEEDS_INPUT
    if not seen.transcript and seen.last_role is None:
        return Status.UNKNOWN
    if seen.last_role == "assistant" and seen.stop_reason == "end_turn":
        return Status.IDLE if seen.untouched > IDLE_AFTER else Status.WAITING
    if seen.last_role == "assistant" and seen.stop_reason == "tool_use":
        if seen.cpu < QUIET_CPU and (seen.tool_pending or seen.untouched > BLOCKED_AFTER):
            return Status.NEEDS_INPUT
        return Status.PROCESSING
    if seen.last_role == "user":
        return Status.PROCESSING
    return Status.IDLE
