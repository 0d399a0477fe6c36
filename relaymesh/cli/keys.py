"""
The C{relaymesh} commands on the key store: C{identity}, C{pair}, C{accept},
C{peers}, C{forget} and C{peer set-address}.

C{peers} asks a running node first (L{relaymesh.cli.live}); C{pair --strong}
arms a strong code (L{relaymesh.cli.pairing}); C{forget} also drops the
peer's remembered address and messages waiting in the outbox, and has a
running node forget it too; C{peer set-address} sets the address a node
redials the peer at (L{relaymesh.addresses}).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks

from relaymesh.address import InvalidAddress
from relaymesh.addresses import SET_ADDRESS, AddressBook, with_peer_id
from relaymesh.cli import live, peertable
from relaymesh.cli.base import (
    PROG,
    Command,
    CommandError,
    Context,
    add_global_options,
    format_last_seen,
    format_table,
    no_arguments,
    run_reactor,
)
from relaymesh.cli.pairing import run_strong_pair
from relaymesh.codes import generate_pair_code, parse_pair_code
from relaymesh.control.client import (
    ApiRequestError,
    NodeNotProven,
    NodeNotRunning,
    TokenMissing,
    node_without_api,
)
from relaymesh.invite import FORM_DESCRIPTIONS
from relaymesh.peerid import validate_peer_id
from relaymesh.printable import printable

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


def run_pair(context: Context, args: argparse.Namespace) -> int | None:
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
    return None


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
    stored = AddressBook(context.data_dir).entries()
    peers = []
    for peer_id in store.peers():
        meta = store.meta(peer_id)
        addr = meta.get("addr")
        via = meta.get("paired_via")
        remembered = stored.get(peer_id)
        peers.append(
            {
                "peer_id": peer_id,
                "addr": addr if isinstance(addr, str) else None,
                "stored_address": None if remembered is None else remembered.address,
                "address_source": None if remembered is None else remembered.source,
                "last_seen": format_last_seen(meta.get("last_seen")),
                "paired_at": format_last_seen(meta.get("paired_at")),
                "paired_via": via if isinstance(via, str) else None,
            }
        )
    pending, until = peertable.pending_state(context)
    if peers:
        rows = [("PEER ID", "ADDRESS", "SOURCE", "LAST SEEN", "PAIRED", "VIA")]
        rows += [
            (
                printable(p["peer_id"]),
                peertable.address_column(p["stored_address"] or p["addr"], p["peer_id"]),
                peertable.source_column(
                    p["address_source"], p["stored_address"], p["stored_address"] or p["addr"], p["peer_id"]
                ),
                p["last_seen"] or "never",
                p["paired_at"] or "-",
                FORM_DESCRIPTIONS.get(p["paired_via"] or "-", printable(p["paired_via"] or "-")),
            )
            for p in peers
        ]
        listing = format_table(rows)
    else:
        listing = "No paired peers."
    context.emit(
        {"peers": peers, "pending": pending, "pending_expires_at": until},
        f"{listing}\nPending pairing key: {peertable.pending_text(pending, until)}",
    )


# forget


def add_forget_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Add C{forget}'s argument: the peer's id.

    @param parser: C{forget}'s parser.
    """
    parser.add_argument("peer_id", metavar="PEER_ID", help="the peer to forget")


@inlineCallbacks
def forget_outbox(data_dir: str, peer_id: str, reactor: Any) -> Generator[Deferred[Any], Any, int]:
    """
    Drop the messages waiting in the node's outbox for a forgotten peer.

    @param data_dir: the node's data directory, which holds the outbox.
    @param peer_id: the peer.
    @param reactor: an C{IReactorThreads} and C{IReactorTime}.
    @return: a C{Deferred} firing with how many messages were dropped.
    """
    from relaymesh.reliable.store import STORE_FILE, open_store

    store = yield open_store(os.path.join(data_dir, STORE_FILE), reactor)
    try:
        dropped: int = yield store.forget_peer(peer_id)
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
    node = _forget_on_node(context, args, peer_id)
    removed = context.store.forget(peer_id)
    if node is not None:
        removed = node or removed  # the node dropped the outbox messages
    else:
        for hook in FORGET_HOOKS:
            removed = hook(context, peer_id) or removed
    if not removed:
        raise CommandError(f"no such peer: {peer_id}")
    unreachable = None if node is not None else node_without_api(context.data_dir, getattr(args, "api", None))
    if unreachable is not None:
        context.emit(
            {"forgotten": peer_id, "node": False, "node_pid": unreachable},
            f"Forgot {peer_id} in the key store; the node running on {context.data_dir} "
            f"(pid {unreachable}) has no control API (--api none) and could not be told: "
            "restart it to drop the peer there too.",
        )
    elif node is None:
        context.emit({"forgotten": peer_id}, f"Forgot {peer_id}.")
    else:
        context.emit({"forgotten": peer_id, "node": True}, f"Forgot {peer_id}; the running node forgot it too.")


def _forget_on_node(context: Context, args: argparse.Namespace, peer_id: str) -> bool | None:
    """
    Have the node running on this data directory forget the peer too
    (C{DELETE /api/peers/ID?forget=all}): it leaves its list, its
    connection is closed, its key, address and outbox messages go.

    @return: whether the node had anything of it; C{None} if no node runs.
    @raise CommandError: if the node refused.
    """
    if not live.wants_live_peers(context, args):
        return None
    try:
        answer = live.client(context, args).call("DELETE", f"/api/peers/{peer_id}?forget=all")
    except (NodeNotRunning, TokenMissing):
        return None
    except NodeNotProven as e:
        context.warn(f"{live.not_proven(context, args, e)} Forgetting {peer_id} in the key store only.")
        return None
    except ApiRequestError as e:
        if e.status == 404:
            return False
        raise live.refused(e, context, args) from None
    return bool(answer.get("forgotten") or answer.get("was_connected") or answer.get("stopped_dialling"))


# peer set-address


def add_peer_arguments(parser: argparse.ArgumentParser) -> None:
    """
    C{peer set-address PEER_ID ADDRESS}.
    """
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="peer_command", required=True)
    set_address = commands.add_parser(
        "set-address",
        help="set the address a node redials a paired peer at on every start",
        description="set the address a node redials a paired peer at on every start",
    )
    set_address.add_argument("peer_id", metavar="PEER_ID", help="the paired peer")
    set_address.add_argument(
        "address", metavar="ADDRESS", help="[tls:|legacy:][PEER_ID@]HOST[:PORT], as for --peers"
    )
    add_global_options(set_address, subcommand=True)  # after the nested command too


def run_peer(context: Context, args: argparse.Namespace) -> None:
    """
    C{peer set-address}: remember the address in the data directory (works
    without a node) and, if a node runs on it, have it dial there now
    (unless the peer is connected).

    @raise CommandError: for a bad address, or a peer with no key.
    """
    peer_id = validate_peer_id(args.peer_id)
    try:
        address = str(with_peer_id(args.address, peer_id))
    except InvalidAddress as e:
        raise CommandError(str(e)) from None
    if context.store.key(peer_id) is None:
        raise CommandError(f"no key for {peer_id}: pair first (relaymesh invite / relaymesh join)")
    AddressBook(context.data_dir).record(peer_id, address, SET_ADDRESS)
    text = f"{peer_id} will be dialled at {address} on every start."
    data: dict[str, Any] = {"peer_id": peer_id, "address": address, "source": SET_ADDRESS, "node": None}
    answer = None
    if live.wants_live_peers(context, args):
        try:
            answer = live.client(context, args).call(
                "POST", "/api/peers", {"addr": address, "source": SET_ADDRESS}
            )
        except (NodeNotRunning, TokenMissing, NodeNotProven):
            answer = None
        except ApiRequestError as e:
            raise live.refused(e, context, args) from None
    if answer is not None:
        data["node"] = answer
        if answer.get("already_connected"):
            text += " The running node is connected to it already, so it does not dial it now."
        else:
            text += " The running node dials it there now."
    context.emit(data, text)




#: The key store commands, in the order the help lists them.
COMMANDS = (
    Command("identity", "print this node's peer id", no_arguments, run_identity),
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
        no_arguments,
        run_peers,
    ),
    Command("forget", "remove a peer's key (and from a running node)", add_forget_arguments, run_forget),
    Command("peer", "set a paired peer's address: peer set-address ID ADDRESS", add_peer_arguments, run_peer),
)
