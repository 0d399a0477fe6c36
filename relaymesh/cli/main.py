"""
The C{relaymesh} command: the parser and L{main}.

The subcommands are in L{COMMANDS}, gathered from the command modules:
L{relaymesh.cli.keys}, L{relaymesh.cli.live}, L{relaymesh.cli.dashboard},
L{relaymesh.cli.fleet}, L{relaymesh.cli.pairing} and L{relaymesh.cli.security}. Each L{Command} adds its arguments to its own
parser and runs with a L{Context}, which holds the key store and prints
results as text or, with C{--json}, as one JSON object.

Errors meant for users (L{USER_ERRORS}) end the command with one line on
standard error, C{relaymesh: error: ...}, and exit status 2, like a usage
error.
"""

import argparse
import contextlib
import sys
from typing import TextIO

from relaymesh._version import __version__
from relaymesh.cli import dashboard, dialling, fleet, keys, live, pairing, security
from relaymesh.cli.base import (
    EXIT_ERROR,
    EXIT_OK,
    PROG,
    USER_ERRORS,
    ArgumentParser,
    Command,
    CommandError,
    Context,
    add_global_options,
    terminal_text,
)
from relaymesh.keystore import default_data_dir

#: The subcommands, in the order the help lists them.
COMMANDS: tuple[Command, ...] = (
    keys.COMMANDS
    + live.COMMANDS
    + dialling.COMMANDS
    + dashboard.COMMANDS
    + fleet.COMMANDS
    + pairing.COMMANDS
    + security.COMMANDS
)


def build_parser() -> argparse.ArgumentParser:
    """
    Build the argument parser for every command in L{COMMANDS}.

    @return: the parser; the chosen L{Command} is in the C{command}
        attribute of the parsed namespace.
    """
    parser = ArgumentParser(
        prog=PROG, description="Manage the relaymesh identity and peer keys."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    add_global_options(parser, subcommand=False)
    subparsers = parser.add_subparsers(
        title="commands", metavar="COMMAND", dest="command_name", required=True
    )
    for command in COMMANDS:
        subparser = subparsers.add_parser(
            command.name, help=command.help, description=command.help
        )
        add_global_options(subparser, subcommand=True)
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
        C{None}.
    @param stdout: where results go; C{sys.stdout} if C{None}.
    @param stderr: where errors go; C{sys.stderr} if C{None}.
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
        stderr.write(f"{PROG}: error: {terminal_text(_one_line(e))}\n")
        return EXIT_ERROR
    return EXIT_OK if status is None else status
