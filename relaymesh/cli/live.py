"""
The live C{relaymesh} commands: they talk to a running node through its
control API (L{relaymesh.control.api}), with the token from its token file::

    relaymesh status
    relaymesh peers                         (live; the stored list without a node)
    relaymesh send PEER MSG_TYPE JSON [--reliable [--wait SECONDS]]
    relaymesh broadcast MSG_TYPE JSON
    relaymesh watch [--types T,...] [--heartbeats] [--count N]

(C{connect} and C{disconnect} are in L{relaymesh.cli.dialling}.)

C{--api URL} chooses the node (see L{relaymesh.control.client.resolve_url}); it
and C{--api-token-file} are global options, before or after the command. When
no node answers, a command prints one line saying so and how to start one,
and exits with status 1; a request the node refuses is a user error (status
2) like the offline commands' errors. The token is sent only to a node that
first proves it holds it (L{relaymesh.control.proof}); when what answers
cannot, that is a user error too, and the token was not sent.

Whatever came from peers (ids, addresses, message types and ids, payloads,
reasons) is printed through L{relaymesh.printable.printable}, and C{watch
--json} writes ASCII-only JSON, so a peer cannot drive the terminal.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from relaymesh.cli.base import Command, CommandError, Context, format_table, no_arguments, terminal_text
from relaymesh.cli.peertable import (
    address_column,
    pairing_columns,
    pending_state,
    pending_text,
    source_column,
)
from relaymesh.control.client import (
    API_ENV,
    TOKEN_FILE,
    ApiRequestError,
    NoControlApi,
    NodeClient,
    NodeNotProven,
    NodeNotRunning,
    TokenMissing,
    read_token,
    resolve_url,
)
from relaymesh.dispatch import SENDABLE_TYPES
from relaymesh.printable import printable

#: Exit status when no node is running.
EXIT_NOT_RUNNING = 1

#: The message types C{send} and C{broadcast} take, for their help.
MSG_TYPES_HELP = ", ".join(SENDABLE_TYPES)

#: Seconds C{send --reliable} waits for the peer's ack unless told, and at
#: most (the API's limit).
RELIABLE_WAIT = 5.0
MAX_SEND_WAIT = 30.0


def _token_file(context: Context, args: argparse.Namespace) -> str:
    return getattr(args, "api_token_file", None) or os.path.join(context.data_dir, TOKEN_FILE)


def client(context: Context, args: argparse.Namespace) -> NodeClient:
    """
    A client of the node the arguments choose.

    @raise TokenMissing: if there is no token file.
    @raise CommandError: if the URL is not usable.
    """
    url = resolve_url(context.data_dir, getattr(args, "api", None))
    token = read_token(_token_file(context, args))
    try:
        return NodeClient(url, token)
    except ValueError as e:
        raise CommandError(str(e)) from None


def _start_hint(context: Context, args: argparse.Namespace) -> str:
    """
    The command that starts a node on the data directory, as README shows it.
    """
    command = "twistd -n relaymesh"
    if getattr(args, "data_dir", None):
        command += f" --data-dir {shlex.quote(context.data_dir)}"
    return command


def not_running(context: Context, args: argparse.Namespace, error: Exception) -> int:
    """
    Say on one line that no node can be reached, and how to start one; or,
    for a node that runs without a control API (C{--api none}, recorded in
    its C{api-url}), that it runs and how to make it reachable.
    """
    if isinstance(error, NoControlApi):
        context.warn(str(error))
        return EXIT_NOT_RUNNING
    if isinstance(error, TokenMissing):
        what = f"no node is running for {context.data_dir} ({error})"
    else:
        what = str(error)
    context.warn(f"{what}; start one with: {_start_hint(context, args)}")
    return EXIT_NOT_RUNNING


def not_proven(context: Context, args: argparse.Namespace, error: NodeNotProven) -> CommandError:
    """
    The user error for a URL where what answers did not prove it holds the
    token (so the token was not sent).
    """
    return CommandError(
        f"{error.url} did not prove that it holds the API token in {_token_file(context, args)} "
        f"({error.reason}); the token was not sent. Is the node of {context.data_dir} running there?"
    )


def refused(error: ApiRequestError, context: Context, args: argparse.Namespace) -> CommandError:
    """
    The user error a refused request stands for.
    """
    if error.status == 401:
        return CommandError(
            f"the node refused the API token in {_token_file(context, args)}: "
            "is it the token of the node at that address?"
        )
    return CommandError(error.message)


def live(
    run: Callable[[Context, argparse.Namespace, NodeClient], int | None],
) -> Callable[[Context, argparse.Namespace], int | None]:
    """
    Make a command that talks to a node: give it a client, and turn "no
    node" and refused requests into the right messages and statuses.
    """

    @functools.wraps(run)
    def command(context: Context, args: argparse.Namespace) -> int | None:
        try:
            return run(context, args, client(context, args))
        except NodeNotProven as e:
            raise not_proven(context, args, e) from None
        except (NodeNotRunning, TokenMissing) as e:
            return not_running(context, args, e)
        except ApiRequestError as e:
            raise refused(e, context, args) from None

    return command


# -- formatting ----------------------------------------------------------------


def ago(seconds: float | None, now: float | None = None) -> str:
    """
    How long ago an epoch time was, for people: C{"12 s ago"}.
    """
    if seconds is None:
        return "never"
    delta = max(0.0, (time.time() if now is None else now) - seconds)
    if delta < 60:
        return f"{delta:.0f} s ago"
    if delta < 3600:
        return f"{delta // 60:.0f} min ago"
    if delta < 86400:
        return f"{delta // 3600:.0f} h ago"
    return f"{delta // 86400:.0f} d ago"


def duration(seconds: float) -> str:
    """
    A duration for people: C{"2h 5m"}, C{"3m 12s"}, C{"40s"}.
    """
    seconds = int(seconds)
    hours, minutes, secs = seconds // 3600, seconds % 3600 // 60, seconds % 60
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _compact(value: Any, limit: int = 200) -> str:
    """
    A JSON value on one line of at most C{limit} visible characters.
    """
    return printable(json.dumps(value, ensure_ascii=False, separators=(",", ":")), limit)


def shown(value: object, default: str = "?") -> str:
    """
    A field of an event as it may be printed: text through L{printable},
    anything else (a number, a missing field) as JSON.
    """
    if value is None:
        return default
    if isinstance(value, str):
        return printable(value)
    return _compact(value, 40)


def _stamp(moment: object) -> str:
    if isinstance(moment, bool) or not isinstance(moment, (int, float)):
        return "--:--:--"
    try:
        return datetime.fromtimestamp(moment).strftime("%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return "--:--:--"


def describe_event(event: dict[str, Any]) -> str:
    """
    One line for an event of /api/events; every field of it that a peer
    could have chosen goes through L{printable}.
    """
    kind = event.get("event")
    peer = shown(event.get("peer_id"), "(unknown peer)")
    address, direction, reason = (shown(event.get(k)) for k in ("address", "direction", "reason"))
    if kind == "message":
        message = event.get("message")
        message = message if isinstance(message, dict) else {}
        text = (
            f"message from {shown(event.get('from'))}: {shown(message.get('msg_type'))} "
            f"{_compact(message.get('payload'))} ({shown(message.get('id'))})"
        )
    elif kind == "peer_connected":
        text = f"{peer} connected ({direction}, {address})"
    elif kind == "peer_disconnected":
        text = f"{peer} disconnected: {reason}"
    elif kind == "peer_denied":
        text = f"handshake denied with {address} ({direction}): {reason}"
    elif kind == "peer_reconnect_scheduled":
        delay = event.get("delay")
        seconds = f"{delay:g}" if isinstance(delay, (int, float)) and not isinstance(delay, bool) else "?"
        target = event.get("peer_id") or event.get("address")
        text = f"reconnecting to {shown(target)} in {seconds} s"
    elif kind == "peer_connecting":
        who = event.get("peer_id")
        text = f"dialling {shown(who) + ' ' if who else ''}at {address}"
    elif kind == "sessions":
        text = _describe_sessions(event)
    else:
        text = _compact(event)
    return f"{_stamp(event.get('time'))} {text}"


def _describe_sessions(event: dict[str, Any]) -> str:
    """
    A C{sessions} event: whose list, how many sessions in each status.
    """
    whose = "this node's" if event.get("peer_id") is None else f"{shown(event.get('peer_id'))}'s"
    sessions = event.get("sessions")
    if not isinstance(sessions, list):
        return f"{whose} sessions are gone"
    statuses = collections.Counter(
        shown(s.get("status")) for s in sessions if isinstance(s, dict)
    )
    counts = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    return f"{whose} sessions: {len(sessions)}" + (f" ({counts})" if counts else "")


def _payload(text: str) -> Any:
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except ValueError as e:
        raise CommandError(f"JSON: the payload is not valid JSON ({e})") from None


# -- status --------------------------------------------------------------------


@live
def run_status(context: Context, args: argparse.Namespace, node: NodeClient) -> None:
    """
    Print the node's identity, addresses, uptime and counts.
    """
    s = node.call("GET", "/api/status")
    peers = s.get("peers", {})
    rows = [
        ("Node:", f"{shown(s.get('identity'))} (relaymesh {shown(s.get('version'))})"),
        ("Relay:", shown(s.get("listen"), "not listening")),
        ("API:", node.url),
        ("Up:", duration(s.get("uptime", 0))),
        (
            "Peers:",
            f"{peers.get('connected', 0)} connected of {peers.get('known', 0)} known, "
            f"{peers.get('dialled', 0)} dialled",
        ),
        ("Workers:", str(s.get("workers", 0))),
        ("Sessions:", _session_counts(s.get("sessions"))),
    ]
    context.emit(s, format_table(rows))


def _session_counts(counts: object) -> str:
    """
    The status's session counts for people: C{"2 here (claude-code), 3 from
    peers"}.
    """
    if not isinstance(counts, dict):
        return "?"
    local = counts.get("local")
    here = "none here" if local is None else f"{shown(local)} here"
    return f"{here} ({shown(counts.get('source'))}), {shown(counts.get('peers'), '0')} from peers"


# -- peers (live) --------------------------------------------------------------


def wants_live_peers(context: Context, args: argparse.Namespace) -> bool:
    """
    Whether C{peers} should ask a node: an API was named, or the data
    directory has a token (a node has run with it).
    """
    return bool(
        getattr(args, "api", None)
        or os.environ.get(API_ENV)
        or os.path.exists(_token_file(context, args))
    )


def live_peers(context: Context, args: argparse.Namespace) -> bool:
    """
    Print the live peer list if a node runs.

    @return: whether it did; C{False} means no node answered, and the caller
        shows the stored list.
    @raise CommandError: if the node refused the request.
    """
    if not wants_live_peers(context, args):
        return False
    try:
        peers = client(context, args).call("GET", "/api/peers")["peers"]
    except NodeNotProven as e:
        context.warn(f"{not_proven(context, args, e)} Showing the stored peers.")
        return False
    except (NodeNotRunning, TokenMissing):
        return False
    except ApiRequestError as e:
        raise refused(e, context, args) from None
    pending, until = pending_state(context)
    if peers:
        rows = [
            ("PEER ID", "STATE", "ADDRESS", "SOURCE", "LINK", "LAST SEEN", "RTT", "MSGS IN/OUT")
            + ("PAIRED", "VIA", "LAST ERROR")
        ]
        for p in peers:
            rtt = p.get("rtt_ms")
            rtt = f"{rtt:.1f} ms" if isinstance(rtt, (int, float)) and not isinstance(rtt, bool) else "-"
            paired_at, via = pairing_columns(context, p.get("peer_id"))
            address, remembered = p.get("address") or p.get("stored_address"), p.get("stored_address")
            rows.append(
                (
                    shown(p.get("peer_id"), "-"),
                    shown(p.get("state")),
                    address_column(address, p.get("peer_id")),
                    source_column(p.get("address_source"), remembered, address, p.get("peer_id")),
                    shown(p.get("link"), "-"),
                    ago(p.get("last_seen")),
                    rtt,
                    f"{p.get('msgs_in', 0)}/{p.get('msgs_out', 0)}",
                    paired_at,
                    via,
                    shown(p.get("last_error") or None, "-"),
                )
            )
        listing = format_table(rows)
    else:
        listing = "No peers."
    context.emit(
        {"peers": peers, "pending": pending, "pending_expires_at": until, "live": True},
        f"{listing}\nPending pairing key: {pending_text(pending, until)}",
    )
    return True


# -- send and broadcast ----------------------------------------------------------


def _wait_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_SEND_WAIT:
        raise argparse.ArgumentTypeError(f"{text[:20]!r}: give a number of seconds from 0 to {MAX_SEND_WAIT:g}")
    return value


def add_send_arguments(parser: argparse.ArgumentParser) -> None:
    """
    C{send PEER MSG_TYPE JSON [--reliable [--wait SECONDS]]}.
    """
    parser.add_argument("peer_id", metavar="PEER", help="the connected peer to send to")
    parser.add_argument("msg_type", metavar="MSG_TYPE", help=f"the message type: {MSG_TYPES_HELP}")
    parser.add_argument("payload", metavar="JSON", help="the payload as JSON ('-' reads it from standard input)")
    parser.add_argument(
        "--reliable",
        action="store_true",
        help="through the node's durable outbox, sent again until the peer (a relaymesh node) "
        "acknowledges it, across reconnects and restarts",
    )
    parser.add_argument(
        "--wait",
        metavar="SECONDS",
        type=_wait_seconds,
        help=f"with --reliable: how long to wait for the peer's ack (default {RELIABLE_WAIT:g}, "
        f"at most {MAX_SEND_WAIT:g}); the message stays queued if it does not come",
    )


@live
def run_send(context: Context, args: argparse.Namespace, node: NodeClient) -> None:
    """
    Send one message to one peer; with C{--reliable}, through the outbox,
    and say whether the peer acknowledged it or it is queued.
    """
    if args.wait is not None and not args.reliable:
        raise CommandError("--wait goes only with --reliable")
    body = {"to": args.peer_id, "msg_type": args.msg_type, "payload": _payload(args.payload)}
    if not args.reliable:
        answer = node.call("POST", "/api/send", body)
        context.emit(
            answer,
            f"Sent {printable(args.msg_type)} {shown(answer.get('id'))} to {shown(answer.get('to'))}.",
        )
        return
    wait = RELIABLE_WAIT if args.wait is None else args.wait
    answer = node.call("POST", "/api/send", {**body, "reliable": True, "wait": wait}, wait=wait)
    what, to = f"{printable(args.msg_type)} {shown(answer.get('id'))}", shown(answer.get("to"))
    if answer.get("delivered") is True:
        text = f"Delivered {what} to {to} (acknowledged)."
    else:
        late = f"not acknowledged within {wait:g} s; " if wait else ""
        text = (
            f"Queued {what} for {to}: {late}the node sends it again until {to} acknowledges it, "
            "across reconnects and restarts."
        )
    context.emit(answer, text)


def add_broadcast_arguments(parser: argparse.ArgumentParser) -> None:
    """
    C{broadcast MSG_TYPE JSON}.
    """
    parser.add_argument("msg_type", metavar="MSG_TYPE", help=f"the message type: {MSG_TYPES_HELP}")
    parser.add_argument("payload", metavar="JSON", help="the payload as JSON ('-' reads it from standard input)")


@live
def run_broadcast(context: Context, args: argparse.Namespace, node: NodeClient) -> None:
    """
    Send one message to every connected peer.
    """
    answer = node.call("POST", "/api/broadcast", {"msg_type": args.msg_type, "payload": _payload(args.payload)})
    peers = sorted(printable(p) for p in answer.get("ids", {}))
    if peers:
        text = (
            f"Sent {printable(args.msg_type)} {shown(answer.get('id'))} to {len(peers)} "
            f"peer{'s' if len(peers) != 1 else ''}: {', '.join(peers)}."
        )
    else:
        text = "No peer is connected: nothing was sent."
    context.emit(answer, text)


# -- watch -----------------------------------------------------------------------


def add_watch_arguments(parser: argparse.ArgumentParser) -> None:
    """
    C{watch [--types T,...] [--heartbeats] [--count N]}.
    """
    parser.add_argument(
        "--types",
        metavar="TYPES",
        help="only these events, comma-separated: message, connected, disconnected, "
        "denied, reconnect_scheduled, connecting, sessions (session lists, left out unless "
        "named)",
    )
    parser.add_argument("--heartbeats", action="store_true", help="show heartbeat messages too")
    parser.add_argument("--count", metavar="N", type=int, help="stop after N events")


@live
def run_watch(context: Context, args: argparse.Namespace, node: NodeClient) -> int | None:
    """
    Follow the node's events, one line each (a JSON object with --json).
    """
    types = [t for t in (args.types or "").split(",") if t.strip()] or None
    written = 0
    out = context.stdout
    try:
        for event in node.events(types):
            message = event.get("message")
            if not args.heartbeats and isinstance(message, dict) and message.get("msg_type") == "heartbeat":
                continue
            if event.get("event") == "sessions" and types is None:
                continue  # every refresh of this node's list: only when asked
            out.write((json.dumps(event) if context.json_output else terminal_text(describe_event(event))) + "\n")
            out.flush()
            written += 1
            if args.count is not None and written >= args.count:
                return None
    except KeyboardInterrupt:
        return None
    context.warn(f"the node at {node.url} closed the event stream")
    return EXIT_NOT_RUNNING


#: The commands that talk to a running node, in the order the help lists them
#: (C{peers}, which asks a node when one runs, is in L{relaymesh.cli.keys}).
COMMANDS = (
    Command("status", "show a running node's status", no_arguments, run_status),
    Command("send", "send a message to a peer through a running node", add_send_arguments, run_send),
    Command("broadcast", "send a message to every connected peer", add_broadcast_arguments, run_broadcast),
    Command("watch", "follow a running node's messages and peer events", add_watch_arguments, run_watch),
)
