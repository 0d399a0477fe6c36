"""
C{relaymesh sessions}: every Claude Code session on this node and its
peers, as one table (C{GET /api/sessions})::

    relaymesh sessions [--watch] [--json]

Every field came from a machine of the mesh, and a peer's fields are its
claims: they are printed through L{relaymesh.printable.printable}, the
machine column shows the authenticated peer id, and a value of the wrong
type prints as C{?}.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from typing import Any

from relaymesh.cli.base import Command, Context, format_table, terminal_text
from relaymesh.cli.live import duration, live
from relaymesh.control.client import NodeClient
from relaymesh.printable import printable
from relaymesh.sessions.models import profile

#: Seconds between two refreshes of C{sessions --watch}.
WATCH_INTERVAL = 2.0

#: Clears a terminal and moves to its top left (C{--watch} on a terminal).
CLEAR = "\x1b[H\x1b[2J"

#: Columns of the table.
HEADER = ("MACHINE", "PROJECT", "PID", "STATUS", "MODEL", "TOKENS IN/OUT", "COST", "RUNNING", "UPDATED")


def _text(value: object, limit: int = 40) -> str:
    return printable(value, limit) if isinstance(value, str) and value else "?"


def _count(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}"


def _whole(value: object) -> str:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else "?"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return float(value)


def _model(value: object) -> str:
    if not isinstance(value, str) or not value:
        return "-"
    return printable(profile(value).short_name, 30)


def machine(row: dict[str, Any]) -> str:
    """
    The machine a session runs on: the authenticated peer it came from,
    or this node's worker id for its own (marked C{*}).
    """
    if row.get("peer_id") is None:
        return _text(row.get("worker_id")) + " *"
    return _text(row.get("peer_id"))


def session_table(rows: list[dict[str, Any]]) -> str:
    """
    The sessions as a table, by machine, project and pid, with a line of
    totals; stale sessions (their machine's last list is old) say so.
    """
    if not rows:
        return "No Claude Code sessions on this node or its peers."
    ordered = sorted(rows, key=lambda r: (machine(r), _text(r.get("project")), str(r.get("pid"))))
    table = [HEADER]
    statuses: collections.Counter[str] = collections.Counter()
    cost = 0.0
    for row in ordered:
        status = _text(row.get("status"), 20)
        statuses[status] += 1
        dollars = _number(row.get("cost_usd"))
        cost += dollars or 0.0
        elapsed = _number(row.get("elapsed_secs"))
        age = _number(row.get("age"))
        table.append(
            (
                machine(row),
                _text(row.get("project")),
                _whole(row.get("pid")),
                status + (" (stale)" if row.get("stale") is True else ""),
                _model(row.get("model")),
                f"{_count(row.get('tokens_in'))}/{_count(row.get('tokens_out'))}",
                "-" if dollars is None else f"${dollars:.2f}",
                "-" if elapsed is None else duration(max(0.0, elapsed)),
                "-" if age is None else f"{duration(max(0.0, age))} ago",
            )
        )
    machines = len({machine(r) for r in rows})
    summary = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    totals = (
        f"{len(rows)} session{'s' if len(rows) != 1 else ''} on {machines} "
        f"machine{'s' if machines != 1 else ''}: {summary}; ${cost:.2f} in all"
    )
    return format_table(table) + "\n" + totals


def add_sessions_arguments(parser: argparse.ArgumentParser) -> None:
    """
    C{sessions [--watch]}.
    """
    parser.add_argument(
        "--watch",
        action="store_true",
        help=f"refresh every {WATCH_INTERVAL:g} s until interrupted (one JSON object per "
        "refresh with --json)",
    )


def _sources_note(fleet: dict[str, Any]) -> str:
    source = fleet.get("source")
    if source == "claude-code" or not isinstance(source, str):
        return ""
    return f"\n(This node's own sessions come from --sessions {printable(source, 60)}.)"


@live
def run_sessions(context: Context, args: argparse.Namespace, node: NodeClient) -> int | None:
    """
    Print every session of the mesh once, or again every
    L{WATCH_INTERVAL} seconds with C{--watch}.
    """
    out = context.stdout
    clear = CLEAR if args.watch and out.isatty() and not context.json_output else ""
    try:
        while True:
            fleet = node.call("GET", "/api/sessions")
            rows = [r for r in fleet.get("sessions", []) if isinstance(r, dict)]
            text = session_table(rows) + _sources_note(fleet)
            if not args.watch:
                context.emit(fleet, text)
                return None
            if context.json_output:
                out.write(json.dumps(fleet, ensure_ascii=True) + "\n")
            else:
                out.write(clear + terminal_text(text) + "\n")
            out.flush()
            time.sleep(WATCH_INTERVAL)
    except KeyboardInterrupt:
        return None


#: The fleet commands.
COMMANDS = (
    Command(
        "sessions",
        "list every Claude Code session on this node and its peers",
        add_sessions_arguments,
        run_sessions,
    ),
)
