"""
C{relaymesh tls-init}, C{tls-unpin} and C{mark-legacy}: this node's TLS
certificate, the certificates pinned for peers, and which peers may use
claudectl's one-way handshake in clear.
"""

from __future__ import annotations

import argparse

from relaymesh.cli.base import PROG, Command, CommandError, Context
from relaymesh.handshake.proofs import LEGACY_FIELD, PIN_FIELD
from relaymesh.peerid import validate_peer_id
from relaymesh.tls import NodeCertificate, TLSError, create_certificate


def add_tls_init_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Add C{tls-init}'s options.
    """
    parser.add_argument(
        "--dns", metavar="NAME", action="append", default=[],
        help="another DNS name peers dial this node by (repeatable)",
    )
    parser.add_argument(
        "--ip", metavar="ADDRESS", action="append", default=[],
        help="another IP address peers dial this node at (repeatable)",
    )
    parser.add_argument(
        "--force", action="store_true",
        help="replace an existing certificate (peers that pinned the old one will refuse the new one)",
    )


def run_tls_init(context: Context, args: argparse.Namespace) -> None:
    """
    Create the node's self-signed certificate and key in the data directory.
    """
    identity = context.store.identity()
    try:
        cert_path, key_path = create_certificate(
            context.data_dir, identity, args.dns, args.ip, force=args.force
        )
    except TLSError as e:
        raise CommandError(str(e)) from None
    fingerprint = NodeCertificate(cert_path, key_path).fingerprint
    context.emit(
        {"certificate": cert_path, "key": key_path, "fingerprint": fingerprint},
        f"Certificate: {cert_path}\nKey: {key_path}\nFingerprint: {fingerprint}\n"
        f"The node upgrades its links to relaymesh peers to TLS with it; --tls (or tls:PORT "
        f"and tls:ID@HOST:PORT) runs TLS from the first byte instead.\n"
        f"Peers pin this fingerprint on first contact; compare it out of band if you can "
        f"({PROG} tls-init --json prints it).",
    )


def add_tls_unpin_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Add C{tls-unpin}'s argument: the peer.
    """
    parser.add_argument("peer_id", metavar="PEER_ID", help="the peer whose certificate changed")


def run_tls_unpin(context: Context, args: argparse.Namespace) -> None:
    """
    Forget the certificate fingerprint pinned for a peer, so that its next
    successful handshake pins the certificate it presents then.
    """
    peer_id = validate_peer_id(args.peer_id)
    meta = context.store.meta(peer_id)
    pinned = meta.pop(PIN_FIELD, None)
    if pinned is None:
        raise CommandError(f"no certificate is pinned for {peer_id}")
    context.store.replace_meta(peer_id, meta)
    context.emit(
        {"peer_id": peer_id, "unpinned": pinned},
        f"Unpinned {pinned} for {peer_id}; its next handshake pins the certificate it presents.",
    )


def add_mark_legacy_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Add C{mark-legacy}'s arguments: the peer, and C{--off}.
    """
    parser.add_argument("peer_id", metavar="PEER_ID", help="a paired peer that is a claudectl node")
    parser.add_argument(
        "--off", action="store_true",
        help="stop accepting claudectl's one-way handshake for this peer",
    )


def run_mark_legacy(context: Context, args: argparse.Namespace) -> None:
    """
    Mark a paired peer's key as a claudectl peer's (or, with C{--off}, as a
    relaymesh peer's): whether it may be proved in claudectl's one-way
    handshake, in clear. Applies from the peer's next connection.
    """
    peer_id = validate_peer_id(args.peer_id)
    if context.store.key(peer_id) is None:
        raise CommandError(f"no key for {peer_id}: pair with it first")
    legacy = not args.off
    context.store.update_meta(peer_id, **{LEGACY_FIELD: legacy})
    if legacy:
        text = (
            f"Marked {peer_id} legacy: its key may now be proved in claudectl's one-way handshake, "
            f"in clear (no encryption, and {peer_id} does not prove the key back). "
            f"Undo with: {PROG} mark-legacy --off {peer_id}"
        )
    else:
        text = f"{peer_id} must now use relaymesh's handshake, over TLS."
    context.emit({"peer_id": peer_id, LEGACY_FIELD: legacy}, text)


#: The TLS and trust commands, in the order the help lists them.
COMMANDS = (
    Command("tls-init", "make this node's TLS certificate", add_tls_init_arguments, run_tls_init),
    Command(
        "tls-unpin",
        "forget the TLS certificate pinned for a peer",
        add_tls_unpin_arguments,
        run_tls_unpin,
    ),
    Command(
        "mark-legacy",
        "let a paired claudectl peer use claudectl's one-way handshake, in clear",
        add_mark_legacy_arguments,
        run_mark_legacy,
    ),
)
