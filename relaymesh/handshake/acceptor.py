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
        self._pake: PakeAcceptor | None = None

    def challenge_payload(self) -> dict[str, Any]:
        """
        The payload of the C{challenge} to send first.
        """
        return {"nonce": self.nonce}

    def verify(self, message: RelayMessage, binding: Binding | None = None) -> Verdict:
        """
        Check a C{handshake} from the connector.

        Only the key stored for the claimed id is tried; only if there is
        none, every key armed for pairing (L{_pair}), or a strong code.

        @param binding: the TLS fingerprints (server, client), or L{None}
            over plain TCP.
        @raise HandshakeFailed: with the reason to log; the caller answers
            C{denied} and closes.
        """
        if message.msg_type != MessageType.HANDSHAKE:
            raise HandshakeFailed(f"expected handshake, got {message.msg_type}")
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
        if "pake" in payload and self._pake is None:
            return self._pake_round(claimed, payload, connector_nonce)
        proof = payload.get("proof")
        if not isinstance(proof, str):
            raise HandshakeFailed(f"handshake from {claimed} has no proof")

        def proves(key: bytes) -> bool:
            return same_proof(connector_proof(key, self.nonce, connector_nonce, claimed, binding), proof)

        armed: ArmedKey | None = None
        paired_via: str | None = None
        if self._pake is not None:
            key = self._finish_pake(claimed, payload, proves)
            paired_via = STRONG_FORM
        else:
            stored = self._stored_key(claimed)
            if stored is not None:
                if not proves(stored):
                    raise HandshakeFailed(f"wrong proof for the key of {claimed}")
                key = stored
            else:
                armed = self._pair(claimed, proves)
                key, paired_via = armed.key, armed.form
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

    def _pake_round(self, claimed: str, payload: dict[str, Any], connector_nonce: str | None) -> Verdict:
        """
        The first round of strong pairing: answer the connector's SPAKE2
        message. The armed code is used up by this one try.
        """
        if connector_nonce is None:
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
