"""
Recording what a successful handshake established: the one place where an
authentication outcome (L{relaymesh.handshake.base.Authenticated}) is
written to the key store.

A key paired in the handshake becomes the peer's key (an armed key is
claimed and every armed key disarmed; a pending key proved by a connector
is claimed; a key paired any other way (a strong pairing's new key, an
invite's key a join proved) is stored with C{paired_at} and C{paired_via}),
and a certificate seen for the first time is pinned. Whether the peer may
use claudectl's one-way form is recorded too: a key proved that way is a
legacy (claudectl) peer's, and one proved with relaymesh's proofs is no
longer proved that way.
"""

from __future__ import annotations

from typing import Any

from relaymesh.handshake.base import PENDING_FORM, Authenticated, HandshakeFailed, KeyLookup
from relaymesh.handshake.proofs import LEGACY_FIELD, PIN_FIELD, STRONG_FORM
from relaymesh.keystore import KeyStoreError


class PairingFailed(HandshakeFailed):
    """
    What the handshake established could not be recorded; the message says
    why. The handshake then fails.
    """


def record(
    keys: KeyLookup, outcome: Authenticated, now: float, accepted: bool = False, **meta: Any
) -> None:
    """
    Write what C{outcome} leaves to record.

    @param keys: The key store.
    @param outcome: A successful handshake's outcome.
    @param now: The time, in clock seconds, recorded as C{paired_at}.
    @param accepted: Whether this node accepted the handshake: a strong
        pairing it accepted used its invite's strong code, and the invite's
        used note then names the peer.
    @param meta: More fields to record about a peer paired by this
        handshake (a join records the address and whether it is legacy).
    @raise PairingFailed: if the key store refuses, or the armed key the
        peer proved was claimed by another handshake meanwhile.
    """
    peer_id = outcome.peer_id
    try:
        if outcome.armed is not None:
            if keys.claim_armed_key(peer_id, outcome.armed, now) is None:
                raise PairingFailed(f"the pairing key {peer_id} proved was claimed meanwhile")
        elif outcome.paired_via == PENDING_FORM:
            keys.claim_pending_key(peer_id)
        elif outcome.paired_via is not None:
            keys.set_key(peer_id, outcome.key)
            keys.update_meta(
                peer_id, paired_at=int(now * 1000), paired_via=outcome.paired_via, **meta
            )
            note = getattr(keys, "note_strong_pairing", None)
            if accepted and outcome.paired_via == STRONG_FORM and note is not None:
                note(peer_id, now)
        fields: dict[str, Any] = {}
        if outcome.pin is not None:
            fields[PIN_FIELD] = outcome.pin
        legacy = not outcome.mutual
        if keys.meta(peer_id).get(LEGACY_FIELD) is not legacy:
            fields[LEGACY_FIELD] = legacy
        if fields:
            keys.update_meta(peer_id, **fields)
    except (KeyStoreError, OSError, ValueError) as e:
        raise PairingFailed(f"could not store the key of {peer_id}: {e}") from None
