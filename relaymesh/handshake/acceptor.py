"""
The accepting side of the handshake, as a plain object with no I/O.

L{AcceptorHandshake} makes the challenge, then takes the connector's
C{handshake} messages and returns a L{Verdict}: the ack to send and, once
the connector proved a key, the L{Authenticated} outcome. It reads keys and
takes the one-time strong code; everything else the outcome leaves to
record is written by L{relaymesh.pairing.record}.

Over plain TCP the challenge names this node and offers the TLS upgrade
(L{CAP_STARTTLS}). A relaymesh connector takes it: the acceptor answers
C{starttls}, the connection switches to TLS (L{AcceptorHandshake.upgraded})
and the handshake starts again inside it with a fresh challenge. Proofs are
checked only inside TLS, except claudectl's one-way proof, which is accepted
in clear for a peer whose key is marked legacy, or for a key armed for
pairing (which then becomes a legacy peer's key).
"""

from __future__ import annotations

import dataclasses
import enum
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from relaymesh.handshake.base import (
    Authenticated,
    HandshakeFailed,
    IssuedNonces,
    KeyLookup,
    legacy_mark,
    pin_to_record,
    read_capabilities,
    read_nonce,
)
from relaymesh.handshake.connector import JOIN_FIELD, LISTEN_FIELD, LISTEN_TLS_FIELD
from relaymesh.handshake.pake import PakeAcceptor, PakeError
from relaymesh.handshake.proofs import (
    ACCEPTOR_FIELD,
    ACK_OK,
    ACK_PAKE,
    ACK_STARTTLS,
    CAP_PING,
    CAP_STARTTLS,
    DEFAULT_CAPABILITIES,
    STARTTLS_FIELD,
    STRONG_FORM,
    Binding,
    acceptor_proof,
    compute_proof,
    connector_proof,
    new_nonce,
    same_proof,
)
from relaymesh.keystore import InviteUsed, KeyStoreError
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
    UPGRADING = "upgrading to TLS"
    AWAITING_CONFIRMATION = "awaiting the confirmation of strong pairing"
    AUTHENTICATED = "authenticated"
    FAILED = "failed"


class _Handshake(NamedTuple):
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
    @ivar outcome: The L{Authenticated} outcome, or C{None} when the exchange
        goes on (the TLS upgrade, strong pairing's first round).
    @ivar upgrade: Whether the connection is to switch to TLS once the ack
        is sent.
    """

    ack: dict[str, Any]
    outcome: Authenticated | None = None
    upgrade: bool = False


class AcceptorHandshake:
    """
    The accepting side of one handshake.

    @ivar nonce: The nonce of this connection's current challenge.
    @ivar can_upgrade: Whether the TLS upgrade is offered (this node has a
        certificate and the transport can start TLS).
    @ivar claimed_peer: The peer id the connector claimed, once it did.
    @ivar peer_capabilities: What the connector announced.
    @ivar step: Where the handshake stands (L{Step}).
    @ivar listen_port: The port the connector announced it accepts peers
        on, inside TLS (L{LISTEN_FIELD}); C{None} if it announced none or
        no valid one.
    @ivar listen_tls: Whether it announced that port speaks TLS.
    @ivar one_shot: Whether the connector said, inside TLS, that it is a
        one-shot C{relaymesh join}.
    """

    def __init__(
        self,
        keys: KeyLookup,
        randbytes: Callable[[int], bytes] = os.urandom,
        clock: IReactorTime | None = None,
        identity: str = "",
        capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES,
        issued: IssuedNonces | None = None,
        can_upgrade: bool = False,
    ):
        """
        @param keys: where the keys are.
        @param randbytes: a function returning that many random bytes.
        @param clock: what tells the time for the armed keys' expiry; the
            system clock if C{None}.
        @param identity: this node's peer id, which the challenge and both
            proofs name.
        @param capabilities: what this node announces.
        @param issued: where this node notes the nonces it issued, so that
            its connectors refuse them (see L{IssuedNonces}).
        @param can_upgrade: offer the TLS upgrade.
        """
        self._keys = keys
        self._now = clock.seconds if clock is not None else time.time
        self._randbytes = randbytes
        self._issued = issued if issued is not None else IssuedNonces()
        self.nonce = self._new_nonce()
        self.identity = identity
        self.capabilities = capabilities
        self.can_upgrade = can_upgrade
        self.claimed_peer: str | None = None
        self.peer_capabilities: frozenset[str] = frozenset()
        self.step = Step.AWAITING_HANDSHAKE
        self.listen_port: int | None = None
        self.listen_tls = False
        self.one_shot = False
        self._pake: PakeAcceptor | None = None
        self._encrypted = False

    def _new_nonce(self) -> str:
        nonce = new_nonce(self._randbytes)
        self._issued.issue(nonce)
        return nonce

    def challenge_payload(self) -> dict[str, Any]:
        """
        The payload of the C{challenge} to send: the nonce (all claudectl
        reads), this node's id, and its capabilities, with the TLS upgrade
        in clear if offered.
        """
        caps = list(self.capabilities)
        if not self._encrypted:
            # ping/1 is agreed inside TLS; a claudectl connector, which
            # reads the challenge in clear, sees what it always saw
            caps = [cap for cap in caps if cap != CAP_PING]
        if self.can_upgrade and not self._encrypted:
            caps.append(CAP_STARTTLS)
        return {"nonce": self.nonce, ACCEPTOR_FIELD: self.identity, "caps": caps}

    def upgraded(self) -> None:
        """
        The connection switched to TLS: start over with a fresh nonce; from
        now on every proof must be bound to the TLS session.
        """
        if self.step is not Step.UPGRADING:
            raise HandshakeFailed(f"TLS upgrade when {self.step.value}")
        self._issued.retire(self.nonce)
        self.nonce = self._new_nonce()
        self._encrypted = True
        self.step = Step.AWAITING_HANDSHAKE

    def retire(self) -> None:
        """
        The handshake is over (or the connection is): forget its nonce.
        """
        self._issued.retire(self.nonce)

    def verify(self, message: RelayMessage, binding: Binding | None = None) -> Verdict:
        """
        Check a C{handshake} from the connector: the round L{step} expects
        (see L{_ROUNDS}).

        In the first round only the key stored for the claimed id is tried;
        only if there is none, every key armed for pairing (L{_pair}); or the
        connector starts strong pairing, which a second round confirms.

        @param binding: the TLS fingerprints (server, client), or C{None}
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
        if verdict.upgrade:
            self.step = Step.UPGRADING
        elif verdict.outcome is None:
            self.step = Step.AWAITING_CONFIRMATION
        else:
            self.step = Step.AUTHENTICATED
            self.retire()
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
        if binding is None and self._encrypted:
            raise HandshakeFailed(f"handshake from {claimed} outside the TLS session it upgraded to")
        if binding is not None:
            self._read_listen(payload)
        return _Handshake(claimed, payload, connector_nonce)

    def _read_listen(self, payload: dict[str, Any]) -> None:
        """
        Note the port the connector announced (inside TLS only), and
        whether it is a one-shot join; a value that is not a port is
        ignored, not refused.
        """
        self.one_shot = payload.get(JOIN_FIELD) is True
        port = payload.get(LISTEN_FIELD)
        if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
            self.listen_port = port
            self.listen_tls = payload.get(LISTEN_TLS_FIELD) is True

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

        connector_nonce = handshake.connector_nonce
        if connector_nonce is None:

            def proves(key: bytes) -> bool:
                return same_proof(compute_proof(key, self.nonce), proof)

        else:

            def proves(key: bytes) -> bool:
                expected = connector_proof(
                    key, self.nonce, connector_nonce, handshake.claimed, self.identity, binding
                )
                return same_proof(expected, proof)

        return proves

    def _first_round(self, handshake: _Handshake, binding: Binding | None) -> Verdict:
        """
        The connector's first C{handshake} (or its first inside TLS): the
        request to upgrade, a proof of the claimed peer's key or of an armed
        key, or the start of strong pairing.
        """
        if binding is None:
            return self._plain_round(handshake)
        if "pake" in handshake.payload:
            return self._pake_round(handshake)
        return self._proof_round(handshake, binding)

    def _plain_round(self, handshake: _Handshake) -> Verdict:
        """
        A C{handshake} in clear: the request for the TLS upgrade, or
        claudectl's one-way proof. Nothing else is proved in clear, so
        nothing a relaymesh node proves can be read or reflected there.
        """
        claimed, payload = handshake.claimed, handshake.payload
        if payload.get(STARTTLS_FIELD) is True:
            if not self.can_upgrade:
                raise HandshakeFailed(f"{claimed} asked for TLS, which this listener cannot start")
            return Verdict({"status": ACK_STARTTLS}, upgrade=True)
        if "pake" in payload or handshake.connector_nonce is not None:
            raise HandshakeFailed(
                f"{claimed} tried to authenticate in clear without upgrading to TLS "
                f"(a relaymesh node's upgrade stripped on the path?)"
            )
        return self._proof_round(handshake, None)

    def _proof_round(self, handshake: _Handshake, binding: Binding | None) -> Verdict:
        """
        A proof of the claimed peer's key, or of a key armed for pairing:
        bound to the TLS session, or claudectl's one-way proof in clear,
        which only a key marked legacy (or armed) may give.
        """
        proves = self._proof_checker(handshake, binding)
        claimed = handshake.claimed
        stored = self._stored_key(claimed)
        if stored is not None:
            if binding is None and legacy_mark(self._keys, claimed) is not True:
                raise HandshakeFailed(
                    f"{claimed} sent claudectl's one-way proof, but its key is not marked legacy; "
                    f"if {claimed} is a claudectl peer, run: relaymesh mark-legacy {claimed}"
                )
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
            encrypted=binding is not None,
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
            raise HandshakeFailed(f"no key for peer {claimed}{self._used_invite()}")
        return matches[0]

    def _used_invite(self) -> str:
        """
        Why nothing matched when the last invite was used already: C{": "}
        and who used it; else nothing.
        """
        used_invite = getattr(self._keys, "used_invite", None)
        try:
            used = used_invite(self._now()) if used_invite is not None else None
        except (KeyStoreError, OSError, ValueError):
            return ""
        return "" if used is None else f": {used.describe()}"

    def _pake_round(self, handshake: _Handshake) -> Verdict:
        """
        The first round of strong pairing: answer the connector's SPAKE2
        message. The armed code is used up by this one try. (It comes only
        inside TLS, where L{_read} has refused a handshake without the
        connector's nonce.)
        """
        claimed, payload = handshake.claimed, handshake.payload
        if self._stored_key(claimed) is not None:
            raise HandshakeFailed(f"{claimed} is already paired; forget it before pairing again")
        try:
            code = self._keys.take_strong_code(self._now())
        except InviteUsed as e:
            raise HandshakeFailed(f"{claimed} tried strong pairing: {e}") from None
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
        Step.AWAITING_HANDSHAKE: _first_round,  # in clear, then inside TLS
        Step.AWAITING_CONFIRMATION: _confirmation,
    }
