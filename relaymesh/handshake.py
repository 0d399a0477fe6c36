"""
The pre-shared key handshake: an HMAC-SHA256 challenge-response.

The acceptor sends a C{challenge} with a fresh 32-byte nonce (64 lowercase hex
characters); the connector answers with a C{handshake} whose proof is
C{HMAC-SHA256(psk, ascii(nonce))} in lowercase hex; the acceptor checks the
proof against the key it holds for the peer id the connector claims (or, if
it has none, against the pending pairing key) and answers C{handshake_ack}
with C{{"status": "ok"}} or C{{"status": "denied"}}.

The two roles are plain objects with no I/O: L{AcceptorHandshake} and
L{ConnectorHandshake}. L{relaymesh.protocol.RelayProtocol} feeds them
messages and puts what they return on the wire.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import Callable, Protocol

from relaymesh._version import __version__
from relaymesh.peerid import is_valid_peer_id
from relaymesh.wire import MessageType, RelayMessage

#: Bytes of randomness in a challenge nonce.
NONCE_BYTES = 32  # claudectl 0.49: 32

#: Bytes in a pre-shared key.
PSK_BYTES = 32  # claudectl 0.49: 32

#: What this node says it is in the handshake's C{version} field.
VERSION = f"relaymesh-{__version__}"

_HEX64 = re.compile(r"[0-9a-fA-F]{64}\Z")

ACK_OK = "ok"
ACK_DENIED = "denied"


class HandshakeFailed(Exception):
    """
    The handshake did not succeed; the message is a one-line reason.
    """


def new_nonce(randbytes: Callable[[int], bytes] = os.urandom) -> str:
    """
    A fresh challenge nonce: 32 random bytes as 64 lowercase hex characters.
    """
    return randbytes(NONCE_BYTES).hex()


def compute_proof(psk: bytes, nonce: str) -> str:
    """
    The connector's proof for a nonce: lowercase hex of
    HMAC-SHA256(key=psk, message=the ASCII bytes of the nonce string).
    """
    return hmac.new(psk, nonce.encode("ascii"), hashlib.sha256).hexdigest()


def verify_proof(psk: bytes, nonce: str, proof: object) -> bool:
    """
    Whether C{proof} is the proof of C{psk} for C{nonce}, compared in
    constant time.
    """
    if not isinstance(proof, str):
        return False
    try:
        given = proof.encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(compute_proof(psk, nonce).encode("ascii"), given)


class KeyLookup(Protocol):
    """
    Where an acceptor finds keys: the key store, or a fake in tests.
    """

    def key(self, peer_id: str) -> bytes | None:
        """The key stored for C{peer_id}, or L{None}."""

    def pending_key(self) -> bytes | None:
        """The pending pairing key, or L{None}."""

    def claim_pending_key(self, peer_id: str) -> bytes | None:
        """Store the pending key as C{peer_id}'s key and forget it as pending."""


class AcceptorHandshake:
    """
    The accepting side of one handshake.

    @ivar nonce: The nonce of this connection's challenge.
    @ivar claimed_peer: The peer id the connector claimed, once it did.
    @ivar paired: Whether the connector proved the pending pairing key, which
        is now that peer's key.
    """

    def __init__(self, keys: KeyLookup, randbytes: Callable[[int], bytes] = os.urandom):
        self._keys = keys
        self.nonce = new_nonce(randbytes)
        self.claimed_peer: str | None = None
        self.paired = False

    def challenge_payload(self) -> dict:
        """
        The payload of the C{challenge} to send first.
        """
        return {"nonce": self.nonce}

    def verify(self, message: RelayMessage) -> str:
        """
        Check the connector's first message.

        Only the key stored for the claimed id is tried; only if there is
        none, the pending pairing key, which on success becomes that peer's
        key.

        @return: the authenticated peer id.
        @raise HandshakeFailed: with the reason to log; the caller answers
            C{denied} and closes.
        """
        if message.msg_type != MessageType.HANDSHAKE:
            raise HandshakeFailed(f"expected handshake, got {message.msg_type}")
        claimed = message.from_peer
        if not is_valid_peer_id(claimed):
            raise HandshakeFailed(f"invalid peer id {claimed[:40]!r}")
        self.claimed_peer = claimed
        payload = message.payload
        proof = payload.get("proof") if isinstance(payload, dict) else None
        if not isinstance(proof, str):
            raise HandshakeFailed(f"handshake from {claimed} has no proof")
        key = self._keys.key(claimed)
        if key is not None:
            if verify_proof(key, self.nonce, proof):
                return claimed
            raise HandshakeFailed(f"wrong proof for the key of {claimed}")
        pending = self._keys.pending_key()
        if pending is not None and verify_proof(pending, self.nonce, proof):
            self._keys.claim_pending_key(claimed)
            self.paired = True
            return claimed
        raise HandshakeFailed(f"no key for peer {claimed}")


class ConnectorHandshake:
    """
    The connecting side of one handshake.

    @ivar expected_peer: The peer id the acceptor must answer as, or L{None}
        to learn it from the ack.
    @ivar psk: The key this attempt proves.
    """

    def __init__(self, identity: str, psk: bytes, expected_peer: str | None = None):
        self.identity = identity
        self.psk = psk
        self.expected_peer = expected_peer

    def answer(self, message: RelayMessage) -> dict:
        """
        The payload of the C{handshake} that answers a C{challenge}.

        @raise HandshakeFailed: if the message is not a challenge with a
            64-hex-character nonce.
        """
        if message.msg_type != MessageType.CHALLENGE:
            raise HandshakeFailed(f"expected challenge, got {message.msg_type}")
        payload = message.payload
        nonce = payload.get("nonce") if isinstance(payload, dict) else None
        if not isinstance(nonce, str) or not _HEX64.match(nonce):
            raise HandshakeFailed("challenge has no 64-hex-character nonce")
        return {"proof": compute_proof(self.psk, nonce), "version": VERSION}

    def check_ack(self, message: RelayMessage) -> str:
        """
        Check the acceptor's C{handshake_ack}.

        @return: the acceptor's peer id.
        @raise HandshakeFailed: if it denied us, or answered as the wrong or an
            invalid peer id.
        """
        if message.msg_type != MessageType.HANDSHAKE_ACK:
            raise HandshakeFailed(f"expected handshake_ack, got {message.msg_type}")
        payload = message.payload
        status = payload.get("status") if isinstance(payload, dict) else None
        if status != ACK_OK:
            raise HandshakeFailed(f"the peer denied the handshake (status {status!r})")
        peer = message.from_peer
        if not is_valid_peer_id(peer):
            raise HandshakeFailed(f"the peer answered with an invalid peer id {peer[:40]!r}")
        if peer == self.identity:
            raise HandshakeFailed(f"the peer answered with this node's own id {peer}")
        if self.expected_peer is not None and peer != self.expected_peer:
            raise HandshakeFailed(
                f"expected peer {self.expected_peer} but {peer} answered"
            )
        return peer
