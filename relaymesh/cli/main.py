"""
The C{relaymesh} command: offline work on the identity and key store.

Subcommands live in L{COMMANDS}, a table from name to L{Command}; other
modules add theirs with L{register_command}. Each L{Command} adds its
arguments to its own parser and runs with a L{Context}, which holds the key
store and prints results as text or, with C{--json}, as one JSON object.

Errors meant for users (L{CommandError}, bad peer ids and codes, key store
and file system errors) end the command with one line on standard error,
C{relaymesh: error: ...}, and exit status 2, like a usage error.
"""

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, TextIO

from relaymesh._version import __version__
from relaymesh.codes import InvalidCode, generate_pair_code, parse_pair_code
from relaymesh.keystore import (
    DATA_DIR_ENV,
    DEFAULT_DATA_DIR,
    KeyStore,
    KeyStoreError,
    default_data_dir,
)
from relaymesh.peerid import InvalidPeerId, validate_peer_id

PROG = "relaymesh"
EXIT_OK = 0
EXIT_ERROR = 2  # the same as argparse's usage errors


class CommandError(Exception):
    """
    A command cannot do what was asked; the message is one line for users.
    """


#: The exceptions reported as C{relaymesh: error: ...} instead of a traceback.
USER_ERRORS = (CommandError, InvalidPeerId, InvalidCode, KeyStoreError, OSError)


class Context:
    """
    What a running command works with: the key store and the output.

    @ivar data_dir: the key store's directory.
    @ivar json_output: whether to print results as JSON.
    @ivar stdout: where results go.
    @ivar stderr: where diagnostics go.
    """

    def __init__(
        self, data_dir: str, json_output: bool, stdout: TextIO, stderr: TextIO
    ):
        """
        @param data_dir: the key store's directory.
        @param json_output: whether to print results as JSON.
        @param stdout: where results go.
        @param stderr: where diagnostics go.
        """
        self.data_dir = data_dir
        self.json_output = json_output
        self.stdout = stdout
        self.stderr = stderr
        self._store: KeyStore | None = None

    @property
    def store(self) -> KeyStore:
        """
        The key store in L{data_dir}.
        """
        if self._store is None:
            self._store = KeyStore(self.data_dir)
        return self._store

    def emit(self, data: dict, text: str) -> None:
        """
        Print a command's result.

        @param data: the result as a JSON object, printed on one line with
            C{--json}.
        @param text: the result for people, printed otherwise.
        """
        if self.json_output:
            self.stdout.write(json.dumps(data) + "\n")
        else:
            self.stdout.write(text.rstrip("\n") + "\n")


@dataclass(frozen=True)
class Command:
    """
    A subcommand of C{relaymesh}.

    @ivar name: the subcommand's name.
    @ivar help: one line saying what it does.
    @ivar add_arguments: adds the subcommand's arguments to its parser.
    @ivar run: does the work; returns the exit status (L{None} for 0) and
        raises one of L{USER_ERRORS} to fail with a message.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Context, argparse.Namespace], "int | None"]


#: The subcommands, by name, in the order they are listed in the help.
COMMANDS: dict[str, Command] = {}


def register_command(command: Command) -> Command:
    """
    Add a subcommand to C{relaymesh}.

    @param command: the subcommand.
    @return: C{command}.
    @raise ValueError: if a subcommand of that name exists.
    """
    if command.name in COMMANDS:
        raise ValueError(f"a command named {command.name!r} exists")
    COMMANDS[command.name] = command
    return command


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Add no arguments: for subcommands that take none.
    """


# identity


def run_identity(context: Context, args: argparse.Namespace) -> None:
    """
    Print this node's peer id, creating it on first use.

    @param context: the command's context.
    @param args: the parsed arguments.
    """
    identity = context.store.identity()
    context.emit({"identity": identity}, identity)


# pair


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Add C{pair}'s options: C{--strong} for a one-time SPAKE2 code.

    @param parser: C{pair}'s parser.
    """
    parser.add_argument(
        "--strong",
        action="store_true",
        help="arm a one-time strong code (relaymesh peers only) instead of a 64-bit pair code",
    )
    parser.add_argument(
        "--expires",
        metavar="MINUTES",
        type=float,
        default=10.0,
        help="minutes until the strong code stops working (default 10)",
    )


def run_pair(context: Context, args: argparse.Namespace) -> None:
    """
    Arm a new pair code's key as the pending key and print the code; with
    C{--strong}, arm a one-time strong code instead.

    @param context: the command's context.
    @param args: the parsed arguments.
    """
    if args.strong:
        from relaymesh.cli.pairing import run_strong_pair

        return run_strong_pair(context, args)
    identity = context.store.identity()
    code = generate_pair_code()
    context.store.set_pending_key(parse_pair_code(code))
    context.emit(
        {"code": code, "identity": identity},
        f"Pair code: {code}\n"
        f"On the other node, run: {PROG} accept {code} {identity}",
    )


# accept


def add_accept_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Add C{accept}'s arguments: the pair code and the peer's id.

    @param parser: C{accept}'s parser.
    """
    parser.add_argument("code", metavar="CODE", help="the pair code the peer printed")
    parser.add_argument("peer_id", metavar="PEER_ID", help="the peer's id")


def run_accept(context: Context, args: argparse.Namespace) -> None:
    """
    Store the key of a pair code as the key of a peer.

    @param context: the command's context.
    @param args: the parsed arguments, with C{code} and C{peer_id}.
    """
    key = parse_pair_code(args.code)
    peer_id = validate_peer_id(args.peer_id)
    replaced = peer_id in context.store.peers()
    context.store.set_key(peer_id, key)
    text = f"Stored the key for {peer_id}."
    if replaced:
        text = f"Stored the key for {peer_id}, replacing its previous key."
    context.emit({"peer_id": peer_id, "replaced": replaced}, text)


# peers


def format_last_seen(value: object) -> str | None:
    """
    Show a C{last_seen} value from a peer's metadata.

    @param value: epoch milliseconds.
    @return: ISO 8601 UTC time to the second, e.g. C{2025-11-26T18:00:00Z};
        L{None} if C{value} is not a usable time.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    try:
        moment = datetime.fromtimestamp(value / 1000, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(rows: list[tuple[str, ...]]) -> str:
    """
    Lay rows out in left-aligned columns two spaces apart.
    """
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in rows
    )


def add_peers_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Add C{peers}' options, which choose the running node to ask.

    @param parser: C{peers}' parser.
    """
    from relaymesh.cli.live import add_node_arguments

    add_node_arguments(parser)


def run_peers(context: Context, args: argparse.Namespace) -> None:
    """
    List the peers: live from the running node, if one answers; otherwise
    the paired peers from the key store. Either way, say whether a pending
    key is armed.

    @param context: the command's context.
    @param args: the parsed arguments.
    """
    from relaymesh.cli.live import live_peers

    if live_peers(context, args):
        return
    from relaymesh.invite import FORM_DESCRIPTIONS

    store = context.store
    peers = []
    for peer_id in store.peers():
        meta = store.meta(peer_id)
        addr = meta.get("addr")
        via = meta.get("paired_via")
        peers.append(
            {
                "peer_id": peer_id,
                "addr": addr if isinstance(addr, str) else None,
                "last_seen": format_last_seen(meta.get("last_seen")),
                "paired_at": format_last_seen(meta.get("paired_at")),
                "paired_via": via if isinstance(via, str) else None,
            }
        )
    pending = bool(store.armed_keys(time.time()))
    expires_at = store.armed_until() if pending else None
    if peers:
        rows = [("PEER ID", "ADDRESS", "LAST SEEN", "PAIRED", "VIA")]
        rows += [
            (
                p["peer_id"],
                p["addr"] or "-",
                p["last_seen"] or "never",
                p["paired_at"] or "-",
                FORM_DESCRIPTIONS.get(p["paired_via"], p["paired_via"] or "-"),
            )
            for p in peers
        ]
        listing = _table(rows)
    else:
        listing = "No paired peers."
    state = "armed" if pending else "none"
    until = None if expires_at is None else format_last_seen(int(expires_at * 1000))
    if until is not None:
        state = f"armed until {until}"
    context.emit(
        {"peers": peers, "pending": pending, "pending_expires_at": until},
        f"{listing}\nPending pairing key: {state}",
    )


# forget


def add_forget_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Add C{forget}'s argument: the peer's id.

    @param parser: C{forget}'s parser.
    """
    parser.add_argument("peer_id", metavar="PEER_ID", help="the peer to forget")


#: Called as C{hook(context, peer_id)} by C{forget}, after the key store's
#: files for the peer are gone, to remove what other parts keep for it (its
#: outbox, say); each returns whether it removed anything.
FORGET_HOOKS: list[Callable[[Context, str], bool]] = []


def run_forget(context: Context, args: argparse.Namespace) -> None:
    """
    Remove a peer's key and metadata (its pinned certificate with it), its
    other files in the key store, and what L{FORGET_HOOKS} remove.

    @param context: the command's context.
    @param args: the parsed arguments, with C{peer_id}.
    @raise CommandError: if nothing is stored for that peer.
    """
    peer_id = validate_peer_id(args.peer_id)
    removed = context.store.forget(peer_id)
    for hook in FORGET_HOOKS:
        removed = hook(context, peer_id) or removed
    if not removed:
        raise CommandError(f"no such peer: {peer_id}")
    context.emit({"forgotten": peer_id}, f"Forgot {peer_id}.")


register_command(
    Command("identity", "print this node's peer id", _no_arguments, run_identity)
)
register_command(
    Command("pair", "make a pair code and arm its key", add_pair_arguments, run_pair)
)
register_command(
    Command(
        "accept",
        "store the key of a peer's pair code",
        add_accept_arguments,
        run_accept,
    )
)
register_command(
    Command(
        "peers",
        "list the peers (live from a running node, else the paired ones)",
        add_peers_arguments,
        run_peers,
    )
)
register_command(
    Command("forget", "remove a peer's key", add_forget_arguments, run_forget)
)


# The live commands, which talk to a running node, register themselves.
from relaymesh.cli import live as cli_live  # noqa: E402,F401

# So do the pairing and discovery commands: invite, join, discover.
from relaymesh.cli import pairing as cli_pairing  # noqa: E402,F401
from relaymesh.cli import security as cli_security  # noqa: E402,F401

# The parser


def _add_global_options(parser: argparse.ArgumentParser, subcommand: bool) -> None:
    """
    Add the options every command takes.

    They are added to the main parser and to each subcommand's, so they may
    come before or after the subcommand; a subcommand's copy has no default,
    so it leaves the main parser's value alone unless given.
    """
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=argparse.SUPPRESS if subcommand else None,
        help=f"key store directory (default: ${DATA_DIR_ENV} or {DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if subcommand else False,
        help="print the result as one JSON object",
    )


def build_parser() -> argparse.ArgumentParser:
    """
    Build the argument parser for every command in L{COMMANDS}.

    @return: the parser; the chosen L{Command} is in the C{command}
        attribute of the parsed namespace.
    """
    parser = argparse.ArgumentParser(
        prog=PROG, description="Manage the relaymesh identity and peer keys."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_global_options(parser, subcommand=False)
    subparsers = parser.add_subparsers(
        title="commands", metavar="COMMAND", dest="command_name", required=True
    )
    for command in COMMANDS.values():
        subparser = subparsers.add_parser(
            command.name, help=command.help, description=command.help
        )
        _add_global_options(subparser, subcommand=True)
        command.add_arguments(subparser)
        subparser.set_defaults(command=command)
    return parser


def _one_line(error: BaseException) -> str:
    """
    Describe an error on one line.
    """
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def _exit_status(code: object) -> int:
    """
    The exit status a C{SystemExit} code stands for.
    """
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    return 1


def main(
    argv: list[str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """
    Run the C{relaymesh} command.

    @param argv: the arguments after the program name; C{sys.argv[1:]} if
        L{None}.
    @param stdout: where results go; C{sys.stdout} if L{None}.
    @param stderr: where errors go; C{sys.stderr} if L{None}.
    @return: the exit status: 0 on success, 2 for a usage error or a
        failed command.
    """
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    parser = build_parser()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = parser.parse_args(argv)
    except SystemExit as e:
        return _exit_status(e.code)
    try:
        if args.data_dir == "":
            raise CommandError("--data-dir must not be empty")
        data_dir = default_data_dir() if args.data_dir is None else args.data_dir
        context = Context(data_dir, args.json, stdout, stderr)
        status = args.command.run(context, args)
    except USER_ERRORS as e:
        stderr.write(f"{PROG}: error: {_one_line(e)}\n")
        return EXIT_ERROR
    return EXIT_OK if status is None else status
