"""
What both handshake roles share: the failure, where they read keys, the
checks of a peer's payload, and the outcome they return.

The roles (L{relaymesh.handshake.acceptor}, L{relaymesh.handshake.connector})
only read the key store; what a successful handshake must record (a key
claimed by pairing, a certificate pinned on first use) is described by the
L{Authenticated} outcome and written by L{relaymesh.pairing.record}.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Protocol

from relaymesh.handshake.proofs import (
    HEX64,
    LEGACY_FIELD,
    MAX_CAPABILITIES,
    MAX_CAPABILITY_LENGTH,
    PIN_FIELD,
)
from relaymesh.keystore import KeyStoreError

if TYPE_CHECKING:
    from relaymesh.keystore import ArmedKey

#: How an outcome says the connector proved the pending key (which then
#: becomes the peer's key).
PENDING_FORM = "pending_key"


class HandshakeFailed(Exception):
    """
    The handshake did not succeed; the message is a one-line reason.
    """


class KeyLookup(Protocol):
    """
    Where the handshakes find keys: the key store, or a fake in tests.

    The roles only read through it, and take the one-time strong code; the
    writes are L{relaymesh.pairing.record}'s.
    """

    def key(self, peer_id: str) -> bytes | None:
        """The key stored for C{peer_id}, or C{None}."""

    def set_key(self, peer_id: str, key: bytes) -> None:
        """Store C{key} as C{peer_id}'s key."""

    def pending_key(self) -> bytes | None:
        """The pending pairing key, or C{None}."""

    def claim_pending_key(self, peer_id: str) -> bytes | None:
        """Store the pending key as C{peer_id}'s key and forget it as pending."""

    def armed_keys(self, now: float) -> list[ArmedKey]:
        """The keys armed for pairing, pending key first; expired ones removed."""

    def claim_armed_key(self, peer_id: str, armed: ArmedKey, now: float) -> bytes | None:
        """Store C{armed} as C{peer_id}'s key (recording C{paired_at} and
        C{paired_via}), disarm every armed key; C{None} if it was not armed."""

    def take_strong_code(self, now: float) -> str | None:
        """The armed strong pairing code, disarmed as it is taken (one try)."""

    def meta(self, peer_id: str) -> dict[str, Any]:
        """What is recorded about C{peer_id} besides its key."""

    def update_meta(self, peer_id: str, /, *, sync: bool = True, **fields: Any) -> dict[str, Any]:
        """Record fields about C{peer_id} (flushed to disk unless C{sync}
        is false)."""


@dataclasses.dataclass(frozen=True)
class Authenticated:
    """
    A handshake that succeeded, and what it leaves to record.

    @ivar peer_id: The authenticated peer.
    @ivar key: The key both sides proved.
    @ivar capabilities: What the peer announced.
    @ivar mutual: Whether both sides proved the key with relaymesh's
        labelled proofs; false for claudectl's one-way form, which only a
        peer marked legacy may use.
    @ivar encrypted: Whether the connection runs over TLS (a C{tls:}
        listener, or the in-band upgrade), with both proofs bound to both
        certificates.
    @ivar paired_via: How the key was paired in this handshake: an armed
        key's form, L{relaymesh.handshake.proofs.STRONG_FORM}, or
        L{PENDING_FORM}; C{None} for a key that was already the peer's.
    @ivar armed: The armed key the connector proved, to be claimed as the
        peer's key (acceptor only).
    @ivar pin: A certificate fingerprint to pin for the peer, seen for the
        first time in this handshake; C{None} if pinned already or not TLS.
    """

    peer_id: str
    key: bytes
    capabilities: frozenset[str]
    mutual: bool
    encrypted: bool = False
    paired_via: str | None = None
    armed: ArmedKey | None = None
    pin: str | None = None


class IssuedNonces:
    """
    The challenge nonces this node's acceptors issued for handshakes still
    in progress.

    A connector checks every challenge against them: a challenge that
    carries a nonce this node issued is one of its own, reflected by the
    other end to have this node prove a key to itself.
    """

    def __init__(self) -> None:
        self._nonces: set[str] = set()

    def issue(self, nonce: str) -> None:
        """Note a nonce sent in a challenge."""
        self._nonces.add(nonce)

    def retire(self, nonce: str) -> None:
        """Forget a nonce whose handshake has ended."""
        self._nonces.discard(nonce)

    def __contains__(self, nonce: object) -> bool:
        return nonce in self._nonces

    def __len__(self) -> int:
        return len(self._nonces)


def read_capabilities(payload: dict[str, Any]) -> frozenset[str]:
    """
    The capability list of a handshake payload.

    @raise HandshakeFailed: if it is not a short list of short strings.
    """
    caps = payload.get("caps", [])
    if (
        not isinstance(caps, list)
        or len(caps) > MAX_CAPABILITIES
        or not all(isinstance(c, str) and 0 < len(c) <= MAX_CAPABILITY_LENGTH for c in caps)
    ):
        raise HandshakeFailed("malformed capability list")
    return frozenset(caps)


def read_nonce(payload: dict[str, Any], field: str = "nonce") -> str | None:
    """
    A nonce field of a handshake payload, or C{None} if absent.

    @raise HandshakeFailed: if it is present but not 64 hex characters.
    """
    value = payload.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not HEX64.match(value):
        raise HandshakeFailed(f"{field} is not 64 hex characters")
    return value


def legacy_mark(keys: KeyLookup, peer_id: str) -> bool | None:
    """
    What is recorded of whether C{peer_id}'s key may be proved in
    claudectl's one-way form: C{True} (a claudectl peer), C{False} (used
    with relaymesh's handshake), or C{None} (never said).

    @raise HandshakeFailed: if the peer's record cannot be read.
    """
    try:
        marked = keys.meta(peer_id).get(LEGACY_FIELD)
    except (KeyStoreError, OSError, ValueError) as e:
        raise HandshakeFailed(f"cannot read what is recorded about {peer_id}: {e}") from None
    return marked if isinstance(marked, bool) else None


def pin_to_record(keys: KeyLookup, peer_id: str, fingerprint: str) -> str | None:
    """
    Check a peer's certificate fingerprint against the one pinned for it.

    @return: the fingerprint, if none is pinned yet (to pin on success);
        C{None} if it is the one pinned.
    @raise HandshakeFailed: if another fingerprint is pinned for the peer.
    """
    try:
        pinned = keys.meta(peer_id).get(PIN_FIELD)
    except (KeyStoreError, OSError, ValueError) as e:
        raise HandshakeFailed(f"cannot read or pin the certificate of {peer_id}: {e}") from None
    if pinned is None:
        return fingerprint
    if pinned != fingerprint:
        raise HandshakeFailed(
            f"TLS CERTIFICATE OF {peer_id} CHANGED: pinned {pinned}, presented {fingerprint}; "
            f"if this is expected, run: relaymesh tls-unpin {peer_id}"
        )
    return None
