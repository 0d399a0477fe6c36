"""
The C{relaymesh} commands on the key store: C{identity}, C{pair}, C{accept},
C{peers} and C{forget}.

C{peers} asks a running node first (L{relaymesh.cli.live}); C{pair --strong}
arms a strong code (L{relaymesh.cli.pairing}); C{forget} also drops the
peer's messages waiting in the outbox.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Callable

from twisted.internet.defer import inlineCallbacks

from relaymesh.cli import live
from relaymesh.cli.base import (
    PROG,
    Command,
    CommandError,
    Context,
    format_last_seen,
    format_table,
    run_reactor,
)
from relaymesh.cli.pairing import run_strong_pair
from relaymesh.codes import generate_pair_code, parse_pair_code
from relaymesh.invite import FORM_DESCRIPTIONS
from relaymesh.peerid import validate_peer_id
from relaymesh.printable import printable


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


def run_peers(context: Context, args: argparse.Namespace) -> None:
    """
    List the peers: live from the running node, if one answers; otherwise
    the paired peers from the key store. Either way, say whether a pending
    key is armed.

    @param context: the command's context.
    @param args: the parsed arguments.
    """
    if live.live_peers(context, args):
        return
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
                printable(p["peer_id"]),
                printable(p["addr"] or "-"),
                p["last_seen"] or "never",
                p["paired_at"] or "-",
                FORM_DESCRIPTIONS.get(p["paired_via"], printable(p["paired_via"] or "-")),
            )
            for p in peers
        ]
        listing = format_table(rows)
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


@inlineCallbacks
def forget_outbox(data_dir: str, peer_id: str, reactor: Any):
    """
    Drop the messages waiting in the node's outbox for a forgotten peer.

    @param data_dir: the node's data directory, which holds the outbox.
    @param peer_id: the peer.
    @param reactor: an L{IReactorThreads} and L{IReactorTime}.
    @return: a L{Deferred} firing with how many messages were dropped.
    """
    from relaymesh.reliable.store import STORE_FILE, open_store

    store = yield open_store(os.path.join(data_dir, STORE_FILE), reactor)
    try:
        dropped = yield store.forget_peer(peer_id)
    finally:
        yield store.close()
    return dropped


def forget_outbox_hook(context: Context, peer_id: str) -> bool:
    """
    C{forget}'s hook for the outbox: drop the peer's waiting messages, if
    this data directory has an outbox.

    @param context: the command's context.
    @param peer_id: the forgotten peer.
    @return: whether any message was dropped.
    @raise CommandError: if the outbox cannot be used.
    """
    try:
        from relaymesh.reliable.store import STORE_FILE, StoreError
    except ImportError:
        return False
    if not os.path.exists(os.path.join(context.data_dir, STORE_FILE)):
        return False
    try:
        dropped = run_reactor(lambda reactor: forget_outbox(context.data_dir, peer_id, reactor))
    except StoreError as e:
        raise CommandError(f"cannot drop the outbox messages for {peer_id}: {e}") from None
    return dropped > 0


#: Called as C{hook(context, peer_id)} by C{forget}, after the key store's
#: files for the peer are gone, to remove what other parts keep for it (its
#: outbox, say); each returns whether it removed anything.
FORGET_HOOKS: list[Callable[[Context, str], bool]] = [forget_outbox_hook]


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


#: The key store commands, in the order the help lists them.
COMMANDS = (
    Command("identity", "print this node's peer id", _no_arguments, run_identity),
    Command("pair", "make a pair code and arm its key", add_pair_arguments, run_pair),
    Command(
        "accept",
        "store the key of a peer's pair code",
        add_accept_arguments,
        run_accept,
    ),
    Command(
        "peers",
        "list the peers (live from a running node, else the paired ones)",
        live.add_node_arguments,
        run_peers,
    ),
    Command("forget", "remove a peer's key", add_forget_arguments, run_forget),
)
