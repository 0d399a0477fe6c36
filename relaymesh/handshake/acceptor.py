"""
The accepting side of the handshake, as a plain object with no I/O.

L{AcceptorHandshake} makes the challenge, then takes the connector's
C{handshake} messages and returns a L{Verdict}: the ack to send and, once
the connector proved a key, the L{Authenticated} outcome. It reads keys and
takes the one-time strong code; everything else the outcome leaves to
record is written by L{relaymesh.pairing.record}.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import time
from typing import TYPE_CHECKING, Any, Callable

from relaymesh.handshake.base import (
    Authenticated,
    HandshakeFailed,
    KeyLookup,
    pin_to_record,
    read_capabilities,
    read_nonce,
)
from relaymesh.handshake.pake import PakeAcceptor, PakeError
from relaymesh.handshake.proofs import (
    ACK_OK,
    ACK_PAKE,
    DEFAULT_CAPABILITIES,
    STRONG_FORM,
    Binding,
    acceptor_proof,
    connector_proof,
    new_nonce,
    same_proof,
)
from relaymesh.keystore import KeyStoreError
from relaymesh.peerid import is_valid_peer_id
from relaymesh.wire import MessageType, RelayMessage

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from relaymesh.keystore import ArmedKey


class Step(enum.Enum):
    """
    Where the acceptor's side of one handshake stands.
    """

    AWAITING_HANDSHAKE = "awaiting the connector's handshake"
    AWAITING_CONFIRMATION = "awaiting the confirmation of strong pairing"
    AUTHENTICATED = "authenticated"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class _Handshake:
    """
    A connector's C{handshake}, as every round reads it first.
    """

    claimed: str
    payload: dict[str, Any]
    connector_nonce: str | None


@dataclasses.dataclass(frozen=True)
class Verdict:
    """
    What the acceptor makes of a C{handshake}.

    @ivar ack: The payload of the C{handshake_ack} to send.
    @ivar outcome: The L{Authenticated} outcome, or L{None} when the exchange
        goes on (strong pairing's first round).
    """

    ack: dict[str, Any]
    outcome: Authenticated | None = None


class AcceptorHandshake:
    """
    The accepting side of one handshake.

    @ivar nonce: The nonce of this connection's challenge.
    @ivar claimed_peer: The peer id the connector claimed, once it did.
    @ivar peer_capabilities: What the connector announced.
    @ivar step: Where the handshake stands (L{Step}).
    """

    def __init__(
        self,
        keys: KeyLookup,
        randbytes: Callable[[int], bytes] = os.urandom,
        clock: IReactorTime | None = None,
        identity: str = "",
        capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES,
    ):
        """
        @param keys: where the keys are.
        @param randbytes: a function returning that many random bytes.
        @param clock: what tells the time for the armed keys' expiry; the
            system clock if L{None}.
        @param identity: this node's peer id, which the acceptor's proof names.
        @param capabilities: what this node announces.
        """
        self._keys = keys
        self._now = clock.seconds if clock is not None else time.time
        self.nonce = new_nonce(randbytes)
        self.identity = identity
        self.capabilities = capabilities
        self.claimed_peer: str | None = None
        self.peer_capabilities: frozenset[str] = frozenset()
        self.step = Step.AWAITING_HANDSHAKE
        self._pake: PakeAcceptor | None = None

    def challenge_payload(self) -> dict[str, Any]:
        """
        The payload of the C{challenge} to send first.
        """
        return {"nonce": self.nonce}

    def verify(self, message: RelayMessage, binding: Binding | None = None) -> Verdict:
        """
        Check a C{handshake} from the connector: the round L{step} expects
        (see L{_ROUNDS}).

        In the first round only the key stored for the claimed id is tried;
        only if there is none, every key armed for pairing (L{_pair}); or the
        connector starts strong pairing, which a second round confirms.

        @param binding: the TLS fingerprints (server, client), or L{None}
            over plain TCP.
        @raise HandshakeFailed: with the reason to log; the caller answers
            C{denied} and closes. The handshake is then L{Step.FAILED}.
        """
        take_round = self._ROUNDS.get(self.step)
        if take_round is None:
            raise HandshakeFailed(f"handshake message when {self.step.value}")
        try:
            if message.msg_type != MessageType.HANDSHAKE:
                raise HandshakeFailed(f"expected handshake, got {message.msg_type}")
            verdict = take_round(self, self._read(message, binding), binding)
        except HandshakeFailed:
            self.step = Step.FAILED
            raise
        self.step = Step.AWAITING_CONFIRMATION if verdict.outcome is None else Step.AUTHENTICATED
        return verdict

    def _read(self, message: RelayMessage, binding: Binding | None) -> _Handshake:
        """
        What every round checks first: the claimed id (the same in both
        rounds), the payload, the connector's nonce (required over TLS) and
        capabilities.
        """
        claimed = message.from_peer
        if not is_valid_peer_id(claimed):
            raise HandshakeFailed(f"invalid peer id {claimed[:40]!r}")
        if self.claimed_peer is not None and claimed != self.claimed_peer:
            raise HandshakeFailed(f"{claimed} continued the handshake of {self.claimed_peer}")
        self.claimed_peer = claimed
        payload = message.payload
        if not isinstance(payload, dict):
            raise HandshakeFailed(f"handshake from {claimed} has no proof")
        connector_nonce = read_nonce(payload)
        self.peer_capabilities = read_capabilities(payload)
        if binding is not None and connector_nonce is None:
            raise HandshakeFailed(f"handshake from {claimed} over TLS lacks its nonce")
        return _Handshake(claimed, payload, connector_nonce)

    def _proof_checker(
        self, handshake: _Handshake, binding: Binding | None
    ) -> Callable[[bytes], bool]:
        """
        A check of whether the handshake's proof proves a key.

        @raise HandshakeFailed: if it carries no proof.
        """
        proof = handshake.payload.get("proof")
        if not isinstance(proof, str):
            raise HandshakeFailed(f"handshake from {handshake.claimed} has no proof")

        def proves(key: bytes) -> bool:
            expected = connector_proof(
                key, self.nonce, handshake.connector_nonce, handshake.claimed, binding
            )
            return same_proof(expected, proof)

        return proves

    def _first_round(self, handshake: _Handshake, binding: Binding | None) -> Verdict:
        """
        The connector's first C{handshake}: a proof of the claimed peer's
        key or of an armed key, or the start of strong pairing.
        """
        if "pake" in handshake.payload:
            return self._pake_round(handshake)
        proves = self._proof_checker(handshake, binding)
        claimed = handshake.claimed
        stored = self._stored_key(claimed)
        if stored is not None:
            if not proves(stored):
                raise HandshakeFailed(f"wrong proof for the key of {claimed}")
            return self._authenticated(handshake, binding, stored)
        armed = self._pair(claimed, proves)
        return self._authenticated(handshake, binding, armed.key, armed.form, armed)

    def _confirmation(self, handshake: _Handshake, binding: Binding | None) -> Verdict:
        """
        Strong pairing's second C{handshake}: the connector's confirmation
        and its proof of the new key.
        """
        key = self._finish_pake(handshake.claimed, handshake.payload, self._proof_checker(handshake, binding))
        return self._authenticated(handshake, binding, key, STRONG_FORM)

    def _authenticated(
        self,
        handshake: _Handshake,
        binding: Binding | None,
        key: bytes,
        paired_via: str | None = None,
        armed: ArmedKey | None = None,
    ) -> Verdict:
        """
        The ok ack (with this side's proof, for a connector that sent its
        nonce) and the outcome.
        """
        claimed, connector_nonce = handshake.claimed, handshake.connector_nonce
        pin = pin_to_record(self._keys, claimed, binding[1]) if binding is not None else None
        ack: dict[str, Any] = {"status": ACK_OK}
        if connector_nonce is not None:
            ack["proof"] = acceptor_proof(key, self.nonce, connector_nonce, claimed, self.identity, binding)
            ack["caps"] = list(self.capabilities)
        outcome = Authenticated(
            claimed,
            key,
            self.peer_capabilities,
            mutual=connector_nonce is not None,
            paired_via=paired_via,
            armed=armed,
            pin=pin,
        )
        return Verdict(ack, outcome)

    def _stored_key(self, claimed: str) -> bytes | None:
        try:
            return self._keys.key(claimed)
        except (KeyStoreError, OSError) as e:
            raise HandshakeFailed(f"cannot use the key of {claimed}: {e}") from None

    def _pair(self, claimed: str, proves: Callable[[bytes], bool]) -> ArmedKey:
        """
        Try every armed key (the pending key first) for a peer without a key.

        Every armed key is checked, each in constant time, whichever proves
        right.

        @return: the armed key proved, for L{relaymesh.pairing.record} to
            claim as C{claimed}'s key.
        @raise HandshakeFailed: if no armed key matches.
        """
        try:
            armed = self._keys.armed_keys(self._now())
        except (KeyStoreError, OSError) as e:
            raise HandshakeFailed(f"cannot read the armed pairing keys: {e}") from None
        matches = [candidate for candidate in armed if proves(candidate.key)]
        if not matches:
            raise HandshakeFailed(f"no key for peer {claimed}")
        return matches[0]

    def _pake_round(self, handshake: _Handshake) -> Verdict:
        """
        The first round of strong pairing: answer the connector's SPAKE2
        message. The armed code is used up by this one try.
        """
        claimed, payload = handshake.claimed, handshake.payload
        if handshake.connector_nonce is None:
            raise HandshakeFailed(f"strong pairing from {claimed} lacks its nonce")
        if self._stored_key(claimed) is not None:
            raise HandshakeFailed(f"{claimed} is already paired; forget it before pairing again")
        try:
            code = self._keys.take_strong_code(self._now())
        except (KeyStoreError, OSError) as e:
            raise HandshakeFailed(f"cannot read the strong pairing code: {e}") from None
        if code is None:
            raise HandshakeFailed(f"{claimed} tried strong pairing, but no strong code is armed")
        self._pake = PakeAcceptor(code)
        try:
            answer = self._pake.respond(payload["pake"], self.nonce, claimed, self.identity)
        except PakeError as e:
            raise HandshakeFailed(f"strong pairing with {claimed}: {e}") from None
        return Verdict({"status": ACK_PAKE, **answer})

    def _finish_pake(
        self, claimed: str, payload: dict[str, Any], proves: Callable[[bytes], bool]
    ) -> bytes:
        """
        The second round: check the connector's confirmation and proof with
        the new key.

        @return: the new key.
        """
        assert self._pake is not None
        try:
            key = self._pake.confirm(payload.get("confirm"))
        except PakeError as e:
            raise HandshakeFailed(f"strong pairing with {claimed}: {e}") from None
        if not proves(key):
            raise HandshakeFailed(f"wrong proof after strong pairing with {claimed}")
        return key

    #: The state table: the round each step takes a C{handshake} in. A
    #: handshake message in any other step (authenticated, failed) is refused.
    _ROUNDS: dict[Step, Callable[[AcceptorHandshake, _Handshake, Binding | None], Verdict]] = {
        Step.AWAITING_HANDSHAKE: _first_round,
        Step.AWAITING_CONFIRMATION: _confirmation,
    }
