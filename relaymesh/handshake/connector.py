"""
The connecting side of the handshake, as a plain object with no I/O.

L{ConnectorHandshake} answers the acceptor's C{challenge}, then checks its
C{handshake_ack} and returns the L{Authenticated} outcome (or, in strong
pairing's first round, the next C{handshake} to send). It reads the key
store only to check a pinned certificate; what the outcome leaves to
record is written by L{relaymesh.pairing.record}.
"""

from __future__ import annotations

import enum
import os
from typing import Any, Callable

from relaymesh.handshake.base import (
    Authenticated,
    HandshakeFailed,
    KeyLookup,
    pin_to_record,
    read_capabilities,
)
from relaymesh.handshake.pake import PakeConnector, PakeError
from relaymesh.handshake.proofs import (
    ACK_OK,
    ACK_PAKE,
    DEFAULT_CAPABILITIES,
    HEX64,
    STRONG_FORM,
    VERSION,
    Binding,
    acceptor_proof,
    connector_proof,
    new_nonce,
    same_proof,
)
from relaymesh.peerid import is_valid_peer_id
from relaymesh.wire import MessageType, RelayMessage


class Step(enum.Enum):
    """
    Where the connector's side of one handshake stands: it answers one
    challenge, then takes one ack, or two with strong pairing (the first
    answers its SPAKE2 message, the second its confirmation).
    """

    AWAITING_CHALLENGE = "awaiting the challenge"
    AWAITING_ACK = "awaiting the ack"
    AWAITING_CONFIRMED_ACK = "awaiting the ack of the strong pairing confirmation"
    AUTHENTICATED = "authenticated"
    FAILED = "failed"


class ConnectorHandshake:
    """
    The connecting side of one handshake.

    @ivar expected_peer: The peer id the acceptor must answer as, or L{None}
        to learn it from the ack.
    @ivar psk: The key this attempt proves (after strong pairing, the new key).
    @ivar legacy: Whether the acceptor is a claudectl peer: it gets exactly
        claudectl's handshake, and need not prove the key back.
    @ivar accept_one_way: Whether an acceptor that does not prove the key
        back is accepted (always, when legacy); it is still asked to.
    @ivar paired_via: How the key in hand is being paired (an invite's form,
        L{relaymesh.handshake.base.PENDING_FORM} for the pending key, L{STRONG_FORM} once strong
        pairing agreed on a new key), or L{None} for a peer's own key.
    @ivar mutual: Whether the acceptor proved the key.
    @ivar peer_capabilities: What the acceptor announced.
    @ivar step: Where the handshake stands (L{Step}).
    """

    def __init__(
        self,
        identity: str,
        psk: bytes | None,
        expected_peer: str | None = None,
        legacy: bool = False,
        keys: KeyLookup | None = None,
        strong_code: str | None = None,
        randbytes: Callable[[int], bytes] = os.urandom,
        capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES,
        accept_one_way: bool = False,
        paired_via: str | None = None,
    ):
        """
        @param identity: this node's peer id.
        @param psk: the key to prove; L{None} with a C{strong_code}.
        @param expected_peer: the peer that must answer, if known.
        @param legacy: the acceptor is a claudectl peer.
        @param accept_one_way: accept an acceptor that does not prove the key
            back, though it is asked to (for a peer that may be claudectl).
        @param keys: where certificate fingerprints are pinned (TLS only).
        @param strong_code: a one-time code to pair with instead of a key.
        @param randbytes: a function returning that many random bytes.
        @param capabilities: what this node announces.
        @param paired_via: how C{psk} is being paired, if it is not yet the
            peer's key: L{relaymesh.handshake.base.PENDING_FORM} for the pending key, or an invite's
            form.
        """
        if (psk is None) == (strong_code is None):
            raise ValueError("give either a key or a strong code")
        self.identity = identity
        self.psk = psk
        self.expected_peer = expected_peer
        self.legacy = legacy
        self.accept_one_way = accept_one_way or legacy
        self.capabilities = capabilities
        self.paired_via = paired_via
        self.mutual = False
        self.peer_capabilities: frozenset[str] = frozenset()
        self.step = Step.AWAITING_CHALLENGE
        self._keys = keys
        self._nonce = new_nonce(randbytes)
        self._challenge: str | None = None
        self._pake = PakeConnector(strong_code) if strong_code is not None else None

    def answer(self, message: RelayMessage, binding: Binding | None = None) -> dict[str, Any]:
        """
        The payload of the C{handshake} that answers a C{challenge}.

        A legacy peer gets exactly what claudectl sends: the proof and the
        version.

        @raise HandshakeFailed: if the message is not a challenge with a
            64-hex-character nonce, or comes when no challenge is awaited.
        """
        self._expect((Step.AWAITING_CHALLENGE,), "challenge")
        try:
            payload = self._answer(message, binding)
        except HandshakeFailed:
            self.step = Step.FAILED
            raise
        self.step = Step.AWAITING_ACK
        return payload

    def _expect(self, steps: tuple[Step, ...], what: str) -> None:
        """
        Refuse a message that comes in a step that does not take it.
        """
        if self.step not in steps:
            raise HandshakeFailed(f"{what} when {self.step.value}")

    def _answer(self, message: RelayMessage, binding: Binding | None) -> dict[str, Any]:
        if message.msg_type != MessageType.CHALLENGE:
            raise HandshakeFailed(f"expected challenge, got {message.msg_type}")
        payload = message.payload
        nonce = payload.get("nonce") if isinstance(payload, dict) else None
        if not isinstance(nonce, str) or not HEX64.match(nonce):
            raise HandshakeFailed("challenge has no 64-hex-character nonce")
        self._challenge = nonce
        if self._pake is not None:
            return self._extended({"pake": self._pake.message, "version": VERSION})
        return self._proof_payload(binding)

    def _extended(self, payload: dict[str, Any]) -> dict[str, Any]:
        payload["nonce"] = self._nonce
        payload["caps"] = list(self.capabilities)
        return payload

    def _proof_payload(self, binding: Binding | None) -> dict[str, Any]:
        assert self._challenge is not None and self.psk is not None
        proof = connector_proof(self.psk, self._challenge, self._nonce, self.identity, binding)
        payload: dict[str, Any] = {"proof": proof, "version": VERSION}
        if self.legacy and binding is None:
            return payload
        return self._extended(payload)

    def check_ack(
        self, message: RelayMessage, binding: Binding | None = None
    ) -> tuple[Authenticated | None, dict[str, Any] | None]:
        """
        Check the acceptor's C{handshake_ack}.

        @return: the L{Authenticated} outcome and L{None} when done; or
            L{None} and the payload of the next C{handshake} to send (strong
            pairing).
        @raise HandshakeFailed: if it denied us, answered as the wrong or an
            invalid peer id, or (unless legacy) did not prove the key; or
            if no ack is awaited.
        """
        self._expect((Step.AWAITING_ACK, Step.AWAITING_CONFIRMED_ACK), "handshake_ack")
        try:
            outcome, reply = self._check_ack(message, binding)
        except HandshakeFailed:
            self.step = Step.FAILED
            raise
        self.step = Step.AUTHENTICATED if outcome is not None else Step.AWAITING_CONFIRMED_ACK
        return outcome, reply

    def _check_ack(
        self, message: RelayMessage, binding: Binding | None
    ) -> tuple[Authenticated | None, dict[str, Any] | None]:
        if message.msg_type != MessageType.HANDSHAKE_ACK:
            raise HandshakeFailed(f"expected handshake_ack, got {message.msg_type}")
        payload = message.payload
        status = payload.get("status") if isinstance(payload, dict) else None
        if status == ACK_PAKE and self.step is Step.AWAITING_ACK and self._pake is not None:
            return None, self._finish_pake(message, payload, binding)
        if status != ACK_OK:
            raise HandshakeFailed(f"the peer denied the handshake (status {status!r})")
        assert isinstance(payload, dict)
        peer = self._check_peer(message.from_peer)
        self.peer_capabilities = read_capabilities(payload)
        proof = payload.get("proof")
        if proof is None and not self.accept_one_way:
            raise HandshakeFailed(
                f"{peer} did not prove that it holds the key; if it is a claudectl peer, "
                f"dial it as legacy:{peer}@HOST:PORT"
            )
        assert self._challenge is not None and self.psk is not None
        if proof is not None:
            expected = acceptor_proof(self.psk, self._challenge, self._nonce, self.identity, peer, binding)
            if not same_proof(expected, proof):
                raise HandshakeFailed(f"{peer} answered with a wrong proof of the key")
            self.mutual = True
        pin = None
        if binding is not None and self._keys is not None:
            pin = pin_to_record(self._keys, peer, binding[0])
        outcome = Authenticated(
            peer,
            self.psk,
            self.peer_capabilities,
            mutual=self.mutual,
            paired_via=self.paired_via,
            pin=pin,
        )
        return outcome, None

    def _check_peer(self, peer: str) -> str:
        if not is_valid_peer_id(peer):
            raise HandshakeFailed(f"the peer answered with an invalid peer id {peer[:40]!r}")
        if peer == self.identity:
            raise HandshakeFailed(f"the peer answered with this node's own id {peer}")
        if self.expected_peer is not None and peer != self.expected_peer:
            raise HandshakeFailed(f"expected peer {self.expected_peer} but {peer} answered")
        return peer

    def _finish_pake(
        self, message: RelayMessage, payload: dict[str, Any], binding: Binding | None
    ) -> dict[str, Any]:
        assert self._pake is not None and self._challenge is not None
        peer = self._check_peer(message.from_peer)
        try:
            tag, key = self._pake.finish(payload, self._challenge, self.identity, peer)
        except PakeError as e:
            raise HandshakeFailed(f"strong pairing with {peer}: {e}") from None
        self.psk = key
        self.paired_via = STRONG_FORM
        self.expected_peer = peer
        reply = self._proof_payload(binding)
        reply["confirm"] = tag
        return reply



