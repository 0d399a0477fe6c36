"""
The connecting side of the handshake, as a plain object with no I/O.

L{ConnectorHandshake} answers the acceptor's C{challenge}, then checks its
C{handshake_ack} and returns the L{Authenticated} outcome (or, in strong
pairing's first round, the next C{handshake} to send). It reads the key
store only to find the key of an acceptor that named itself and to check a
pinned certificate; what the outcome leaves to record is written by
L{relaymesh.pairing.record}.

A relaymesh acceptor names itself in its challenge and offers the TLS
upgrade; the connector proves nothing in clear to it: it asks for the
upgrade, and answers the fresh challenge that comes inside TLS with a proof
bound to both nonces, both ids and both certificates. To an acceptor that
does not name itself (claudectl) it gives claudectl's one-way proof, and
only when the key is marked legacy. A challenge that names a relaymesh
acceptor but offers no upgrade (stripped on the path) is refused, as is a
challenge that carries a nonce this node issued (reflected).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from typing import Any

from relaymesh.handshake.base import (
    PENDING_FORM,
    Authenticated,
    HandshakeFailed,
    IssuedNonces,
    KeyLookup,
    pin_to_record,
    read_capabilities,
)
from relaymesh.handshake.pake import PakeConnector, PakeError
from relaymesh.handshake.proofs import (
    ACCEPTOR_FIELD,
    ACK_OK,
    ACK_PAKE,
    ACK_STARTTLS,
    CAP_STARTTLS,
    DEFAULT_CAPABILITIES,
    HEX64,
    STARTTLS_FIELD,
    STRONG_FORM,
    VERSION,
    Binding,
    acceptor_proof,
    compute_proof,
    connector_proof,
    new_nonce,
    same_proof,
)
from relaymesh.keystore import KeyStoreError
from relaymesh.peerid import is_valid_peer_id
from relaymesh.wire import MessageType, RelayMessage

#: The field of a handshake inside TLS that announces the port the
#: connector accepts peers on (relaymesh only, optional).
LISTEN_FIELD = "listen"

#: Sent with L{LISTEN_FIELD} when that port speaks TLS from the start.
LISTEN_TLS_FIELD = "listen_tls"

#: The field of a handshake inside TLS that says the connection is a
#: one-shot C{relaymesh join}: it closes once paired (relaymesh only).
JOIN_FIELD = "join"


class Step(enum.Enum):
    """
    Where the connector's side of one handshake stands: it answers a
    challenge, asks for the TLS upgrade and answers the challenge that comes
    inside TLS, then takes one ack, or two with strong pairing (the first
    answers its SPAKE2 message, the second its confirmation).
    """

    AWAITING_CHALLENGE = "awaiting the challenge"
    AWAITING_UPGRADE = "awaiting the answer to the TLS upgrade"
    UPGRADING = "upgrading to TLS"
    AWAITING_ACK = "awaiting the ack"
    AWAITING_CONFIRMED_ACK = "awaiting the ack of the strong pairing confirmation"
    AUTHENTICATED = "authenticated"
    FAILED = "failed"


class ConnectorHandshake:
    """
    The connecting side of one handshake.

    @ivar expected_peer: The peer id the acceptor must answer as, or C{None}
        to learn it from the challenge.
    @ivar psk: The key this attempt proves (after strong pairing, the new
        key); C{None} until the acceptor named itself, when the key is to be
        found then.
    @ivar legacy: Whether the peer's key may be proved in claudectl's one-way
        form, to an acceptor that does not name itself.
    @ivar paired_via: How the key in hand is being paired (an invite's form,
        L{PENDING_FORM} for the pending key, L{STRONG_FORM} once strong
        pairing agreed on a new key), or C{None} for a peer's own key.
    @ivar mutual: Whether the acceptor proved the key.
    @ivar encrypted: Whether the proofs are bound to a TLS session.
    @ivar peer_capabilities: What the acceptor announced.
    @ivar step: Where the handshake stands (L{Step}).
    @ivar listen: The TCP port this node accepts peers on, announced inside
        TLS (C{"listen"}) so that the acceptor can dial back; C{None} to
        announce none (claudectl's handshake never carries it).
    @ivar listen_tls: Whether that port speaks TLS from the start
        (C{"listen_tls": true}, announced with it).
    @ivar one_shot: Whether this is a one-shot C{relaymesh join}, said
        inside TLS (C{"join": true}) so that the acceptor does not take it
        for a peer's lasting connection.
    """

    def __init__(
        self,
        identity: str,
        psk: bytes | None = None,
        expected_peer: str | None = None,
        legacy: bool = False,
        keys: KeyLookup | None = None,
        strong_code: str | None = None,
        randbytes: Callable[[int], bytes] = os.urandom,
        capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES,
        paired_via: str | None = None,
        issued: IssuedNonces | None = None,
    ):
        """
        @param identity: this node's peer id.
        @param psk: the key to prove; C{None} with a C{strong_code}, or to
            prove the key stored for the peer the acceptor names (else the
            pending key).
        @param expected_peer: the peer that must answer, if known.
        @param legacy: the peer may be a claudectl peer: prove C{psk} in
            claudectl's one-way form to an acceptor that does not name
            itself.
        @param keys: where keys are found (for an acceptor that names
            itself) and certificate fingerprints are pinned.
        @param strong_code: a one-time code to pair with instead of a key.
        @param randbytes: a function returning that many random bytes.
        @param capabilities: what this node announces.
        @param paired_via: how C{psk} is being paired, if it is not yet the
            peer's key: L{PENDING_FORM} for the pending key, or an invite's
            form.
        @param issued: the nonces this node's acceptors issued, which a
            challenge must not carry.
        """
        if psk is not None and strong_code is not None:
            raise ValueError("give a key or a strong code, not both")
        if psk is None and strong_code is None and keys is None:
            raise ValueError("give a key, a strong code, or the keys to choose from")
        self.identity = identity
        self.psk = psk
        self.expected_peer = expected_peer
        self.legacy = legacy
        self.capabilities = capabilities
        self.paired_via = paired_via
        self.mutual = False
        self.encrypted = False
        self.peer_capabilities: frozenset[str] = frozenset()
        self.step = Step.AWAITING_CHALLENGE
        self.listen: int | None = None
        self.listen_tls = False
        self.one_shot = False
        self._keys = keys
        self._issued = issued if issued is not None else IssuedNonces()
        self._nonce = new_nonce(randbytes)
        self._challenge: str | None = None
        self._acceptor: str | None = None
        self._pake = PakeConnector(strong_code) if strong_code is not None else None

    def answer(self, message: RelayMessage, binding: Binding | None = None) -> dict[str, Any]:
        """
        The payload of the C{handshake} that answers a C{challenge}: the
        request for the TLS upgrade (L{step} is then
        L{Step.AWAITING_UPGRADE}), a proof bound to the TLS session, or to a
        legacy peer exactly what claudectl sends (the proof and the version).

        @raise HandshakeFailed: if the message is not a challenge with a
            64-hex-character nonce, or comes when no challenge is awaited,
            or cannot be answered without proving a key where it could be
            read or reflected.
        """
        self._expect((Step.AWAITING_CHALLENGE,), "challenge")
        try:
            payload = self._answer(message, binding)
        except HandshakeFailed:
            self.step = Step.FAILED
            raise
        if payload.get(STARTTLS_FIELD) is True:
            self.step = Step.AWAITING_UPGRADE
        else:
            self.step = Step.AWAITING_ACK
        return payload

    def upgraded(self) -> None:
        """
        The connection switched to TLS: wait for the challenge inside it.
        """
        self._expect((Step.UPGRADING,), "TLS upgrade")
        self.encrypted = True
        self.step = Step.AWAITING_CHALLENGE

    def _expect(self, steps: tuple[Step, ...], what: str) -> None:
        """
        Refuse a message that comes in a step that does not take it.
        """
        if self.step not in steps:
            raise HandshakeFailed(f"{what} when {self.step.value}")

    def _answer(self, message: RelayMessage, binding: Binding | None) -> dict[str, Any]:
        if message.msg_type != MessageType.CHALLENGE:
            raise HandshakeFailed(f"expected challenge, got {message.msg_type}")
        payload = message.payload if isinstance(message.payload, dict) else {}
        nonce = payload.get("nonce")
        if not isinstance(nonce, str) or not HEX64.match(nonce):
            raise HandshakeFailed("challenge has no 64-hex-character nonce")
        if nonce in self._issued:
            raise HandshakeFailed(
                "the challenge carries a nonce this node issued itself (a reflection attempt)"
            )
        self._challenge = nonce
        named = payload.get(ACCEPTOR_FIELD)
        if binding is None and self.encrypted:
            raise HandshakeFailed("challenge outside the TLS session this connection upgraded to")
        if named is None and binding is None:
            return self._legacy_answer(nonce)
        acceptor = self._check_peer(named, "the challenge")
        self._acceptor = acceptor
        if binding is None:
            if CAP_STARTTLS not in read_capabilities(payload):
                raise HandshakeFailed(
                    f"{acceptor} named itself but offered no TLS upgrade (stripped on the path?); "
                    f"refusing to prove a key in clear"
                )
            return {STARTTLS_FIELD: True, "version": VERSION}
        if self._pake is not None:
            return self._extended({"pake": self._pake.message, "version": VERSION})
        if self.psk is None:
            self._choose_key(acceptor)
        return self._proof_payload(binding)

    def _legacy_answer(self, nonce: str) -> dict[str, Any]:
        """
        claudectl's handshake, to an acceptor that does not name itself:
        only for a key marked legacy.
        """
        if not self.legacy or self.psk is None:
            who = self.expected_peer or "the peer"
            raise HandshakeFailed(
                f"{who} did not name itself as a relaymesh node; if it is a claudectl peer, "
                f"dial it as legacy:{self.expected_peer or 'ID'}@HOST:PORT"
            )
        return {"proof": compute_proof(self.psk, nonce), "version": VERSION}

    def _choose_key(self, acceptor: str) -> None:
        """
        Prove the key stored for the acceptor that named itself; without
        one, the pending key (which then becomes its key).
        """
        assert self._keys is not None
        try:
            key = self._keys.key(acceptor)
            if key is None:
                key = self._keys.pending_key()
                self.paired_via = PENDING_FORM if key is not None else None
        except (KeyStoreError, OSError) as e:
            raise HandshakeFailed(f"cannot use the key of {acceptor}: {e}") from None
        if key is None:
            raise HandshakeFailed(f"no key for {acceptor}: pair first (relaymesh invite / relaymesh join)")
        self.psk = key

    def _extended(self, payload: dict[str, Any]) -> dict[str, Any]:
        payload["nonce"] = self._nonce
        payload["caps"] = list(self.capabilities)
        if self.listen is not None:
            payload[LISTEN_FIELD] = self.listen
            if self.listen_tls:
                payload[LISTEN_TLS_FIELD] = True
        if self.one_shot:
            payload[JOIN_FIELD] = True
        return payload

    def _proof_payload(self, binding: Binding) -> dict[str, Any]:
        assert self._challenge is not None and self.psk is not None and self._acceptor is not None
        proof = connector_proof(
            self.psk, self._challenge, self._nonce, self.identity, self._acceptor, binding
        )
        return self._extended({"proof": proof, "version": VERSION})

    def check_ack(
        self, message: RelayMessage, binding: Binding | None = None
    ) -> tuple[Authenticated | None, dict[str, Any] | None]:
        """
        Check the acceptor's C{handshake_ack}.

        @return: the L{Authenticated} outcome and C{None} when done; or
            C{None} and the payload of the next C{handshake} to send (strong
            pairing); or C{None} twice when the connection is to switch to
            TLS now (L{step} is then L{Step.UPGRADING}; call L{upgraded}
            once it has).
        @raise HandshakeFailed: if it denied us, answered as the wrong or an
            invalid peer id, or (unless legacy) did not prove the key; or
            if no ack is awaited.
        """
        self._expect(
            (Step.AWAITING_UPGRADE, Step.AWAITING_ACK, Step.AWAITING_CONFIRMED_ACK), "handshake_ack"
        )
        try:
            outcome, reply = self._check_ack(message, binding)
        except HandshakeFailed:
            self.step = Step.FAILED
            raise
        if outcome is not None:
            self.step = Step.AUTHENTICATED
        elif reply is None:
            self.step = Step.UPGRADING
        else:
            self.step = Step.AWAITING_CONFIRMED_ACK
        return outcome, reply

    def _check_ack(
        self, message: RelayMessage, binding: Binding | None
    ) -> tuple[Authenticated | None, dict[str, Any] | None]:
        if message.msg_type != MessageType.HANDSHAKE_ACK:
            raise HandshakeFailed(f"expected handshake_ack, got {message.msg_type}")
        payload = message.payload if isinstance(message.payload, dict) else {}
        status = payload.get("status")
        if self.step is Step.AWAITING_UPGRADE:
            if status != ACK_STARTTLS:
                raise HandshakeFailed(f"the peer did not start TLS (status {status!r})")
            return None, None
        if status == ACK_PAKE and self.step is Step.AWAITING_ACK and self._pake is not None:
            return None, self._finish_pake(message, payload, binding)
        if status != ACK_OK:
            raise HandshakeFailed(f"the peer denied the handshake (status {status!r})")
        assert self._challenge is not None and self.psk is not None
        if binding is None:
            return self._legacy_outcome(message.from_peer, self.psk), None
        peer = self._check_peer(message.from_peer, "the ack")
        if peer != self._acceptor:
            raise HandshakeFailed(f"{self._acceptor} named itself in the challenge but {peer} answered")
        self.peer_capabilities = read_capabilities(payload)
        proof = payload.get("proof")
        if proof is None:
            raise HandshakeFailed(f"{peer} did not prove that it holds the key")
        expected = acceptor_proof(self.psk, self._challenge, self._nonce, self.identity, peer, binding)
        if not same_proof(expected, proof):
            raise HandshakeFailed(f"{peer} answered with a wrong proof of the key")
        self.mutual = True
        pin = pin_to_record(self._keys, peer, binding[0]) if self._keys is not None else None
        outcome = Authenticated(
            peer,
            self.psk,
            self.peer_capabilities,
            mutual=True,
            encrypted=True,
            paired_via=self.paired_via,
            pin=pin,
        )
        return outcome, None

    def _legacy_outcome(self, from_peer: str, key: bytes) -> Authenticated:
        """
        claudectl's ack of claudectl's proof: the acceptor proves nothing.
        """
        peer = self._check_peer(from_peer, "the ack")
        return Authenticated(peer, key, frozenset(), mutual=False, paired_via=self.paired_via)

    def _check_peer(self, peer: object, where: str) -> str:
        if not isinstance(peer, str) or not is_valid_peer_id(peer):
            shown = peer[:40] if isinstance(peer, str) else peer
            raise HandshakeFailed(f"the peer named an invalid peer id {shown!r} in {where}")
        if peer == self.identity:
            raise HandshakeFailed(f"the peer answered with this node's own id {peer}")
        if self.expected_peer is not None and peer != self.expected_peer:
            raise HandshakeFailed(f"expected peer {self.expected_peer} but {peer} answered")
        return peer

    def _finish_pake(
        self, message: RelayMessage, payload: dict[str, Any], binding: Binding | None
    ) -> dict[str, Any]:
        assert self._pake is not None and self._challenge is not None
        if binding is None:
            raise HandshakeFailed("strong pairing answered outside TLS")
        peer = self._check_peer(message.from_peer, "the ack")
        if peer != self._acceptor:
            raise HandshakeFailed(f"{self._acceptor} named itself in the challenge but {peer} answered")
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
