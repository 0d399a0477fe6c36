"""
The C{relaymesh} commands that make a running node dial a peer or stop::

    relaymesh connect [peer_id@]host:port [--wait SECONDS]
    relaymesh disconnect PEER|HOST:PORT [--forget-address]

They talk to the node as the other live commands do (L{relaymesh.cli.live}).
C{connect} reports success only when its own dial connected, not when the
peer is connected through another link; C{disconnect --forget-address}
works on the data directory alone when no node runs.
"""

from __future__ import annotations

import argparse
import time
from typing import Any
from urllib.parse import quote

from relaymesh.addresses import AddressBook
from relaymesh.cli.base import PROG, Command, CommandError, Context
from relaymesh.cli.live import (
    EXIT_NOT_RUNNING,
    client,
    live,
    not_proven,
    not_running,
    refused,
    shown,
    wants_live_peers,
)
from relaymesh.control.client import ApiRequestError, NodeClient, NodeNotProven, NodeNotRunning, TokenMissing
from relaymesh.printable import printable

#: Seconds between looks at the peer list while C{connect --wait} waits.
WAIT_STEP = 0.25


def add_connect_arguments(parser: argparse.ArgumentParser) -> None:
    """
    C{connect [peer_id@]host:port [--wait SECONDS]}.
    """
    parser.add_argument("addr", metavar="[PEER_ID@]HOST:PORT", help="the peer to dial")
    parser.add_argument(
        "--wait",
        metavar="SECONDS",
        type=float,
        default=0.0,
        help="wait up to this long for this address to connect (exit status 1 if it does not)",
    )


@live
def run_connect(context: Context, args: argparse.Namespace, node: NodeClient) -> int | None:
    """
    Make the node dial a peer (until it is disconnected or the node stops)
    and remember the address for its next start; a peer already connected
    through another link is not dialled.
    """
    answer = node.call("POST", "/api/peers", {"addr": args.addr})
    peer_id = answer.get("peer_id")
    addr = shown(answer.get("addr"))
    if answer.get("already_connected"):
        context.emit(
            answer,
            f"{printable(peer_id)} is already connected ({shown(answer.get('direction'))}, "
            f"{shown(answer.get('connected_address'))}): not dialling {addr}. To dial it there "
            f"after restarts, run: {PROG} peer set-address {printable(peer_id)} {addr}",
        )
        return EXIT_NOT_RUNNING if args.wait > 0 else None
    if args.wait > 0:
        return _wait_connected(context, args, node, answer)
    context.emit(answer, f"Dialling {addr}; see its state with: {PROG} peers")
    return None


def _dial_row(node: NodeClient, answer: dict[str, Any]) -> dict[str, Any] | None:
    """
    The peer row of what C{connect} dials: by its peer id, or the dialler
    of its address while the peer is not known, or the row of the peer
    that dialler reached.
    """
    peers: list[dict[str, Any]] = node.call("GET", "/api/peers")["peers"]
    peer_id = answer.get("peer_id")
    for row in peers:
        if peer_id is not None and row.get("peer_id") == peer_id:
            return row
        if peer_id is None and row.get("dial_address") == answer.get("addr") and row.get("peer_id") is None:
            return row
    if peer_id is None:  # the dialler learned its peer: find the row it dials
        for row in peers:
            dialled = row.get("dial_address")
            if isinstance(dialled, str) and dialled.endswith("@" + str(answer.get("addr"))):
                return row
    return None


def _wait_connected(
    context: Context, args: argparse.Namespace, node: NodeClient, answer: dict[str, Any]
) -> int | None:
    """
    Wait until THIS dial connected (not the peer through another link).
    """
    deadline = time.monotonic() + args.wait
    addr = shown(answer.get("addr"))
    while True:
        row = _dial_row(node, answer) or {}
        state = row.get("state", "dialling")
        who = printable(row.get("peer_id") or answer.get("peer_id") or addr)
        if state == "connected" and row.get("connected_by_dial"):
            where = "" if answer.get("peer_id") else f" at {addr}"
            context.emit({**answer, "state": state}, f"Connected to {who}{where}.")
            return None
        if time.monotonic() >= deadline:
            if state == "connected":
                text = (
                    f"{who} is connected through another link ({shown(row.get('direction'))}, "
                    f"{shown(row.get('address'))}), but {addr} did not connect within {args.wait:g} s"
                )
            else:
                text = f"{addr} is not connected after {args.wait:g} s ({shown(state)})"
            error = row.get("last_error")
            if isinstance(error, str) and error:
                text += f": {printable(error)}"
            context.emit(
                {**answer, "state": state},
                f"{text}; the node keeps dialling it (stop with: {PROG} disconnect {printable(answer.get('peer_id') or addr)}).",
            )
            return EXIT_NOT_RUNNING
        time.sleep(WAIT_STEP)


def add_disconnect_arguments(parser: argparse.ArgumentParser) -> None:
    """
    C{disconnect PEER|HOST:PORT [--forget-address]}.
    """
    parser.add_argument(
        "peer_id", metavar="PEER", help="the peer to disconnect, or an address dialled without a peer id"
    )
    parser.add_argument(
        "--forget-address",
        action="store_true",
        help="also forget the peer's remembered address, so that it is not redialled on the next start",
    )


def run_disconnect(context: Context, args: argparse.Namespace) -> int | None:
    """
    Close a peer's connection and stop dialling it (C{--forget-address}:
    and forget its address; without a running node, that alone is done).
    """
    if args.forget_address and not wants_live_peers(context, args):
        _forget_address_offline(context, args)
        return None
    try:
        _disconnect(context, args, client(context, args))
    except NodeNotProven as e:
        raise not_proven(context, args, e) from None
    except (NodeNotRunning, TokenMissing) as e:
        if args.forget_address:
            _forget_address_offline(context, args)
            return None
        return not_running(context, args, e)
    except ApiRequestError as e:
        raise refused(e, context, args) from None
    return None


def _forget_address_offline(context: Context, args: argparse.Namespace) -> None:
    try:
        forgot = AddressBook(context.data_dir).forget(args.peer_id)
    except OSError as e:
        raise CommandError(f"cannot forget the address of {printable(args.peer_id)}: {e}") from None
    peer = printable(args.peer_id)
    text = f"Forgot the address of {peer}." if forgot else f"No address is remembered for {peer}."
    context.emit({"peer_id": args.peer_id, "forgot_address": forgot, "live": False}, text)


def _disconnect(context: Context, args: argparse.Namespace, node: NodeClient) -> None:
    path = f"/api/peers/{quote(args.peer_id, safe='')}"
    if args.forget_address:
        path += "?forget=address"
    answer = node.call("DELETE", path)
    peer = printable(args.peer_id)
    done = []
    if answer.get("was_connected"):
        done.append(f"Disconnected {peer}")
    if answer.get("stopped_dialling"):
        done.append(f"stopped dialling {peer}" if done else f"Stopped dialling {peer}")
    if answer.get("forgot_address"):
        done.append("forgot its address" if done else f"Forgot the address of {peer}")
    text = "; ".join(done) + "." if done else f"{peer} was neither connected nor dialled."
    if answer.get("address_remembered"):
        text += (
            f" Its address is remembered: the node redials it when it starts again "
            f"({PROG} disconnect {peer} --forget-address forgets it)."
        )
    context.emit(answer, text)


#: The commands, in the order the help lists them.
COMMANDS = (
    Command("connect", "make a running node dial a peer", add_connect_arguments, run_connect),
    Command("disconnect", "disconnect a peer and stop dialling it", add_disconnect_arguments, run_disconnect),
)
