"""
Recording what a successful handshake established: the one place where an
authentication outcome (L{relaymesh.handshake.base.Authenticated}) is
written to the key store.

A key paired in the handshake becomes the peer's key (an armed key is
claimed and every armed key disarmed; a strong pairing's new key is stored
with C{paired_at} and C{paired_via}; a pending key proved by a connector is
claimed), and a certificate seen for the first time is pinned.
"""

from __future__ import annotations

from relaymesh.handshake.base import PENDING_FORM, Authenticated, HandshakeFailed, KeyLookup
from relaymesh.handshake.proofs import PIN_FIELD, STRONG_FORM
from relaymesh.keystore import KeyStoreError


class PairingFailed(HandshakeFailed):
    """
    What the handshake established could not be recorded; the message says
    why. The handshake then fails.
    """


def record(keys: KeyLookup, outcome: Authenticated, now: float) -> None:
    """
    Write what C{outcome} leaves to record.

    @param keys: The key store.
    @param outcome: A successful handshake's outcome.
    @param now: The time, in clock seconds, recorded as C{paired_at}.
    @raise PairingFailed: if the key store refuses, or the armed key the
        peer proved was claimed by another handshake meanwhile.
    """
    peer_id = outcome.peer_id
    try:
        if outcome.armed is not None:
            if keys.claim_armed_key(peer_id, outcome.armed, now) is None:
                raise PairingFailed(f"the pairing key {peer_id} proved was claimed meanwhile")
        elif outcome.paired_via == STRONG_FORM:
            keys.set_key(peer_id, outcome.key)
            keys.update_meta(peer_id, paired_at=int(now * 1000), paired_via=STRONG_FORM)
        elif outcome.paired_via == PENDING_FORM:
            keys.claim_pending_key(peer_id)
        if outcome.pin is not None:
            keys.update_meta(peer_id, **{PIN_FIELD: outcome.pin})
    except (KeyStoreError, OSError, ValueError) as e:
        raise PairingFailed(f"could not store the key of {peer_id}: {e}") from None
