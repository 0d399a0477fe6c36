"""
The columns the C{peers} tables share, offline (L{relaymesh.cli.keys}) and
live (L{relaymesh.cli.live}): the address and where it was learned, when
and how the peer was paired, and whether a pairing key is armed.
"""

from __future__ import annotations

import time

from relaymesh.address import InvalidAddress, parse_peer_address
from relaymesh.addresses import SOURCE_DESCRIPTIONS
from relaymesh.cli.base import Context, format_last_seen
from relaymesh.invite import FORM_DESCRIPTIONS
from relaymesh.printable import printable


def pending_state(context: Context) -> tuple[bool, str | None]:
    """
    Whether a pairing key is armed now (an expired one is not, and is
    disarmed), and until when (ISO 8601 UTC), if that is noted.
    """
    store = context.store
    pending = bool(store.armed_keys(time.time()))
    expires_at = store.armed_until() if pending else None
    return pending, None if expires_at is None else format_last_seen(int(expires_at * 1000))


def pending_text(pending: bool, until: str | None) -> str:
    """
    C{armed}, C{armed until ...} or C{none}.
    """
    if not pending:
        return "none"
    return "armed" if until is None else f"armed until {until}"


def pairing_columns(context: Context, peer_id: object) -> tuple[str, str]:
    """
    The PAIRED and VIA columns of a peer: when and how it was paired, from
    its metadata in the key store (C{-} when not known).
    """
    if not isinstance(peer_id, str):
        return "-", "-"
    try:
        meta = context.store.meta(peer_id)
    except ValueError:
        return "-", "-"
    via = meta.get("paired_via")
    via = FORM_DESCRIPTIONS.get(via, printable(via)) if isinstance(via, str) else "-"
    return format_last_seen(meta.get("paired_at")) or "-", via


def source_column(
    source: object, remembered: object = None, shown: object = None, peer_id: object = None
) -> str:
    """
    Where a remembered address came from, for the SOURCE column: the
    source alone when the remembered address is the one the ADDRESS column
    shows, C{source: address} when that shows another one (a live
    connection's, or the address dialled), so the two columns never seem
    to agree when they do not.

    @param source: The remembered address's source (C{-} when none).
    @param remembered: The remembered address (C{[tls:]peer_id@host:port}).
    @param shown: What the ADDRESS column shows, before L{address_column}.
    @param peer_id: The peer's id.
    """
    if not isinstance(source, str):
        return "-"
    text = SOURCE_DESCRIPTIONS.get(source, printable(source))
    if not isinstance(remembered, str) or not remembered or _same_place(remembered, shown):
        return text
    return f"{text}: {address_column(remembered, peer_id)}"


def _same_place(remembered: str, shown: object) -> bool:
    """
    Whether a remembered address and the one shown name the same host and
    port (the shown one may lack the C{tls:} and the peer id).
    """
    if not isinstance(shown, str):
        return False
    try:
        return parse_peer_address(remembered).hostport == parse_peer_address(shown).hostport
    except InvalidAddress:
        return remembered == shown


def address_column(address: object, peer_id: object) -> str:
    """
    A peer's address for the ADDRESS column, without the peer id a
    remembered address carries (C{-} when none is known).
    """
    if not isinstance(address, str) or not address:
        return "-"
    if isinstance(peer_id, str):
        address = address.replace(f"{peer_id}@", "", 1)
    return printable(address)
