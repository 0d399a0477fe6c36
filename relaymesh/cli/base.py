"""
What every C{relaymesh} command module shares: the L{Command} type, the
L{Context} a command runs with, user errors and exit statuses, and the
helpers that lay out results.

Errors meant for users (L{CommandError}, bad peer ids and codes, key store
and file system errors: L{USER_ERRORS}) end a command with one line on
standard error, C{relaymesh: error: ...}, and exit status L{EXIT_ERROR}.

Text from peers (ids, addresses, reasons, payloads) goes through
L{relaymesh.printable.printable} where a command lays it out; and whatever
a command prints for people passes L{terminal_text} on its way out, so that
no character a terminal acts on (an escape sequence, a clipboard write, a
carriage return that hides a line) reaches it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NoReturn, TextIO, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from relaymesh.codes import InvalidCode
from relaymesh.keystore import DATA_DIR_ENV, DEFAULT_DATA_DIR, KeyStore, KeyStoreError
from relaymesh.peerid import InvalidPeerId
from relaymesh.printable import printable

PROG = "relaymesh"
EXIT_OK = 0
EXIT_ERROR = 2  # the same as argparse's usage errors


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Add no arguments: for commands that take none but the global options.
    """


def add_global_options(parser: argparse.ArgumentParser, subcommand: bool) -> None:
    """
    Add the options every command takes: C{--data-dir}, C{--json}, and the
    options that choose the running node, C{--api} and C{--api-token-file}.

    They are added to the main parser and to each command's (and nested
    command's), so they may come before or after the command; a command's
    copy has no default, so it leaves the main parser's value alone unless
    given.
    """
    default = argparse.SUPPRESS if subcommand else None
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=default,
        help=f"key store directory (default: ${DATA_DIR_ENV} or {DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if subcommand else False,
        help="print the result as one JSON object",
    )
    parser.add_argument(
        "--api",
        metavar="URL",
        default=default,
        help="the node's API, e.g. http://127.0.0.1:9849 (default: $RELAYMESH_API, "
        "else the URL in DATA_DIR/api-url, which a node running with the data directory writes)",
    )
    parser.add_argument(
        "--api-token-file",
        metavar="FILE",
        default=default,
        help="the API token file (default: DATA_DIR/api-token)",
    )


class CommandError(Exception):
    """
    A command cannot do what was asked; the message is one line for users.
    """


#: The exceptions reported as C{relaymesh: error: ...} instead of a traceback.
USER_ERRORS = (CommandError, InvalidPeerId, InvalidCode, KeyStoreError, OSError)


def terminal_text(text: str) -> str:
    """
    Text for a terminal, line by line: every character a terminal could act
    on but the line breaks is written as L{printable} writes it; the rest,
    backslashes included, is left as it is, so text that already went
    through L{printable} comes out unchanged.
    """
    return "\n".join(_visible(line) for line in text.split("\n"))


def _visible(line: str) -> str:
    if line.isprintable():
        return line
    return "".join(c if c.isprintable() else printable(c) for c in line)


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

    def emit(self, data: Mapping[str, object], text: str) -> None:
        """
        Print a command's result.

        @param data: the result as a JSON object, printed on one line with
            C{--json}.
        @param text: the result for people, printed otherwise.
        """
        if self.json_output:
            self.stdout.write(json.dumps(data) + "\n")
        else:
            self.stdout.write(terminal_text(text.rstrip("\n")) + "\n")

    def warn(self, text: str) -> None:
        """
        Print one line for people on standard error, C{relaymesh: TEXT}.
        """
        self.stderr.write(f"{PROG}: {terminal_text(' '.join(text.split()))}\n")


class ArgumentParser(argparse.ArgumentParser):
    """
    An argument parser whose usage errors are one line,
    C{relaymesh CMD: error: ...}, and a pointer to C{relaymesh CMD --help},
    instead of the usage lines argparse prints first; the exit status
    stays 2. The subcommands' parsers are of the same kind (argparse makes
    them of their parent's class), and C{--help} is unchanged.
    """

    def error(self, message: str) -> NoReturn:
        """
        Print the error on one line, the pointer to C{--help}, and exit with
        status 2.
        """
        text = terminal_text(" ".join(message.split()))
        self.exit(2, f"{self.prog}: error: {text}\nRun '{self.prog} --help' for its options.\n")


@dataclass(frozen=True)
class Command:
    """
    A subcommand of C{relaymesh}.

    @ivar name: the subcommand's name.
    @ivar help: one line saying what it does.
    @ivar add_arguments: adds the subcommand's arguments to its parser.
    @ivar run: does the work; returns the exit status (C{None} for 0) and
        raises one of L{USER_ERRORS} to fail with a message.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Context, argparse.Namespace], int | None]


def format_table(rows: Sequence[tuple[str, ...]]) -> str:
    """
    Lay rows out in left-aligned columns two spaces apart.

    @param rows: the rows, each with as many cells as the first.
    @return: the lines, without a final newline.
    """
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in rows
    )


def format_last_seen(value: object) -> str | None:
    """
    Show a C{last_seen} value from a peer's metadata.

    @param value: epoch milliseconds.
    @return: ISO 8601 UTC time to the second, e.g. C{2025-11-26T18:00:00Z};
        C{None} if C{value} is not a usable time.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    try:
        moment = datetime.fromtimestamp(value / 1000, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


_T = TypeVar("_T")


def run_reactor(work: Callable[[Any], Deferred[_T]]) -> _T:
    """
    Run the global reactor until C{work(reactor)}'s C{Deferred} fires.

    @param work: starts the work and returns its C{Deferred}; it is given
        the global reactor, which provides every reactor interface.
    @return: its result.
    @raise Exception: its error.
    """
    from twisted.internet import task

    outcome: list[_T | Failure] = []

    def main(reactor: Any) -> Deferred[None]:
        return maybeDeferred(work, reactor).addBoth(outcome.append)

    try:
        task.react(main)
    except SystemExit:
        pass
    [result] = outcome
    if isinstance(result, Failure):
        result.raiseException()
    return result
