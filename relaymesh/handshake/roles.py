"""
The pre-shared key handshake: an HMAC-SHA256 challenge-response, as
claudectl 0.49 does it, and relaymesh's extensions for peers that announce
them.

claudectl's handshake: the acceptor sends a C{challenge} with a fresh 32-byte
nonce (64 lowercase hex characters); the connector answers with a
C{handshake} whose proof is C{HMAC-SHA256(psk, ascii(nonce))} in lowercase
hex; the acceptor checks the proof against the key it holds for the peer id
the connector claims (or, if it has none, against every key armed for
pairing: the pending key, and an invite's other keys until they expire) and
answers C{handshake_ack} with C{{"status": "ok"}} or C{{"status": "denied"}}.
Only the connector proves the key.

relaymesh adds, in payload fields claudectl ignores:

  - mutual authentication: the connector sends a nonce of its own and its
    capabilities; an acceptor that understands answers with a proof of the
    key over both nonces and both ids, under a label of its own, and its
    capabilities. A connector that expects a relaymesh peer refuses an ack
    without a valid proof;
  - channel binding: over TLS both proofs also cover both certificates'
    fingerprints, so a man in the middle cannot relay them; the peer's
    fingerprint is pinned on first success;
  - strong pairing: a connector that holds a one-time code runs SPAKE2
    (L{relaymesh.handshake.pake}) inside the handshake to agree on a new key.

docs/protocol.rst shows every variant byte by byte. The two roles are plain
objects with no I/O: L{AcceptorHandshake} and L{ConnectorHandshake}.
L{relaymesh.connection.RelayProtocol} feeds them messages and puts what they
return on the wire.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import re
import time
from typing import TYPE_CHECKING, Any, Callable, Protocol

from relaymesh._version import __version__
from relaymesh.keystore import KeyStoreError
from relaymesh.handshake.pake import PakeAcceptor, PakeConnector, PakeError
from relaymesh.peerid import is_valid_peer_id
from relaymesh.wire import MessageType, RelayMessage

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from relaymesh.keystore import ArmedKey

#: Bytes of randomness in a challenge nonce.
NONCE_BYTES = 32  # claudectl 0.49: 32

#: Bytes in a pre-shared key.
PSK_BYTES = 32  # claudectl 0.49: 32

#: What this node says it is in the handshake's C{version} field.
VERSION = f"relaymesh-{__version__}"

#: The capability of answering the connector's nonce with a proof.
CAP_MUTUAL_AUTH = "mutual-auth/1"

#: The capabilities a node announces unless told otherwise.
DEFAULT_CAPABILITIES = (CAP_MUTUAL_AUTH,)

#: At most this many capabilities, each at most this long, are read.
MAX_CAPABILITIES = 32
MAX_CAPABILITY_LENGTH = 64

#: Labels that keep each direction's proof from serving as the other's.
CONNECTOR_LABEL = b"relaymesh/1 connector proof"
ACCEPTOR_LABEL = b"relaymesh/1 acceptor proof"

#: The meta field where a peer's TLS certificate fingerprint is pinned.
PIN_FIELD = "tls_fingerprint"

#: The meta field that marks a claudectl-style peer (one-way authentication).
LEGACY_FIELD = "legacy"

_HEX64 = re.compile(r"[0-9a-fA-F]{64}\Z")

ACK_OK = "ok"
ACK_DENIED = "denied"
ACK_PAKE = "pake"

#: How a peer that paired with a strong code is recorded (C{paired_via}).
STRONG_FORM = "strong_code"

#: (server certificate fingerprint, client certificate fingerprint).
Binding = tuple[str, str]


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
    claudectl's connector proof for a nonce: lowercase hex of
    HMAC-SHA256(key=psk, message=the ASCII bytes of the nonce string).
    """
    return hmac.new(psk, nonce.encode("ascii"), hashlib.sha256).hexdigest()


def _mac(psk: bytes, label: bytes, *parts: str) -> str:
    message = label + b"".join(b"\x00" + part.encode("utf-8") for part in parts)
    return hmac.new(psk, message, hashlib.sha256).hexdigest()


def connector_proof(
    psk: bytes,
    nonce: str,
    connector_nonce: str | None = None,
    connector: str = "",
    binding: Binding | None = None,
) -> str:
    """
    The connector's proof: claudectl's over plain TCP; over TLS, bound to
    both nonces, the connector's id and both certificates.
    """
    if binding is None:
        return compute_proof(psk, nonce)
    return _mac(psk, CONNECTOR_LABEL, nonce, connector_nonce or "", connector, *binding)


def acceptor_proof(
    psk: bytes,
    nonce: str,
    connector_nonce: str,
    connector: str,
    acceptor: str,
    binding: Binding | None = None,
) -> str:
    """
    The acceptor's proof for mutual authentication: over both nonces, both
    ids and (over TLS) both certificates, under the acceptor's own label.
    """
    return _mac(psk, ACCEPTOR_LABEL, nonce, connector_nonce, connector, acceptor, *(binding or ()))


def _same(expected: str, given: object) -> bool:
    """
    Compare a proof in constant time; anything but an ASCII string is wrong.
    """
    if not isinstance(given, str):
        return False
    try:
        data = given.encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(expected.encode("ascii"), data)


def verify_proof(psk: bytes, nonce: str, proof: object) -> bool:
    """
    Whether C{proof} is claudectl's proof of C{psk} for C{nonce}, compared in
    constant time.
    """
    return _same(compute_proof(psk, nonce), proof)


def _capabilities(payload: dict) -> frozenset[str]:
    caps = payload.get("caps", [])
    if (
        not isinstance(caps, list)
        or len(caps) > MAX_CAPABILITIES
        or not all(isinstance(c, str) and 0 < len(c) <= MAX_CAPABILITY_LENGTH for c in caps)
    ):
        raise HandshakeFailed("malformed capability list")
    return frozenset(caps)


def _nonce(payload: dict, field: str = "nonce") -> str | None:
    value = payload.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not _HEX64.match(value):
        raise HandshakeFailed(f"{field} is not 64 hex characters")
    return value


class KeyLookup(Protocol):
    """
    Where the handshakes find keys: the key store, or a fake in tests.
    """

    def key(self, peer_id: str) -> bytes | None:
        """The key stored for C{peer_id}, or L{None}."""

    def set_key(self, peer_id: str, key: bytes) -> None:
        """Store C{key} as C{peer_id}'s key."""

    def pending_key(self) -> bytes | None:
        """The pending pairing key, or L{None}."""

    def claim_pending_key(self, peer_id: str) -> bytes | None:
        """Store the pending key as C{peer_id}'s key and forget it as pending."""

    def armed_keys(self, now: float) -> list[ArmedKey]:
        """The keys armed for pairing, pending key first; expired ones removed."""

    def claim_armed_key(self, peer_id: str, armed: ArmedKey, now: float) -> bytes | None:
        """Store C{armed} as C{peer_id}'s key (recording C{paired_at} and
        C{paired_via}), disarm every armed key; L{None} if it was not armed."""

    def take_strong_code(self, now: float) -> str | None:
        """The armed strong pairing code, disarmed as it is taken (one try)."""

    def meta(self, peer_id: str) -> dict:
        """What is recorded about C{peer_id} besides its key."""

    def update_meta(self, peer_id: str, *, sync: bool = True, **fields: Any) -> dict:
        """Record fields about C{peer_id} (flushed to disk unless C{sync}
        is false)."""


def check_pin(keys: KeyLookup, peer_id: str, fingerprint: str) -> None:
    """
    Pin a peer's certificate fingerprint on first use; refuse a different one.

    @raise HandshakeFailed: if another fingerprint is pinned for the peer.
    """
    try:
        pinned = keys.meta(peer_id).get(PIN_FIELD)
        if pinned is None:
            keys.update_meta(peer_id, **{PIN_FIELD: fingerprint})
            return
    except (KeyStoreError, OSError, ValueError) as e:
        raise HandshakeFailed(f"cannot read or pin the certificate of {peer_id}: {e}") from None
    if pinned != fingerprint:
        raise HandshakeFailed(
            f"TLS CERTIFICATE OF {peer_id} CHANGED: pinned {pinned}, presented {fingerprint}; "
            f"if this is expected, run: relaymesh tls-unpin {peer_id}"
        )


@dataclasses.dataclass
class Verdict:
    """
    What the acceptor makes of a C{handshake}.

    @ivar peer_id: The authenticated peer, or L{None} when the exchange goes
        on (strong pairing's first round).
    @ivar ack: The payload of the C{handshake_ack} to send.
    """

    peer_id: str | None
    ack: dict


class AcceptorHandshake:
    """
    The accepting side of one handshake.

    @ivar nonce: The nonce of this connection's challenge.
    @ivar claimed_peer: The peer id the connector claimed, once it did.
    @ivar paired: Whether the connector proved an armed pairing key (or
        paired with a strong code), which is now that peer's key.
    @ivar paired_via: The form of the armed key it proved, once it did.
    @ivar peer_capabilities: What the connector announced.
    @ivar mutual: Whether this side proved the key back.
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
        self.paired = False
        self.paired_via: str | None = None
        self.peer_capabilities: frozenset[str] = frozenset()
        self.mutual = False
        self._pake: PakeAcceptor | None = None

    def challenge_payload(self) -> dict:
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
        connector_nonce = _nonce(payload)
        self.peer_capabilities = _capabilities(payload)
        if binding is not None and connector_nonce is None:
            raise HandshakeFailed(f"handshake from {claimed} over TLS lacks its nonce")
        if "pake" in payload and self._pake is None:
            return self._pake_round(claimed, payload, connector_nonce, binding)
        proof = payload.get("proof")
        if not isinstance(proof, str):
            raise HandshakeFailed(f"handshake from {claimed} has no proof")

        def proves(key: bytes) -> bool:
            return _same(connector_proof(key, self.nonce, connector_nonce, claimed, binding), proof)

        if self._pake is not None:
            key = self._finish_pake(claimed, payload, proves)
        else:
            key = self._stored_key(claimed)
            if key is not None:
                if not proves(key):
                    raise HandshakeFailed(f"wrong proof for the key of {claimed}")
            else:
                key = self._pair(claimed, proves)
        if binding is not None:
            check_pin(self._keys, claimed, binding[1])
        ack: dict[str, Any] = {"status": ACK_OK}
        if connector_nonce is not None:
            self.mutual = True
            ack["proof"] = acceptor_proof(key, self.nonce, connector_nonce, claimed, self.identity, binding)
            ack["caps"] = list(self.capabilities)
        return Verdict(claimed, ack)

    def _stored_key(self, claimed: str) -> bytes | None:
        try:
            return self._keys.key(claimed)
        except (KeyStoreError, OSError) as e:
            raise HandshakeFailed(f"cannot use the key of {claimed}: {e}") from None

    def _pair(self, claimed: str, proves: Callable[[bytes], bool]) -> bytes:
        """
        Try every armed key (the pending key first) for a peer without a key.

        Every armed key is checked, each in constant time, whichever proves
        right. The key proved becomes the peer's key and all are disarmed.

        @return: the key proved, now C{claimed}'s key.
        @raise HandshakeFailed: if no armed key matches, or it was claimed
            meanwhile.
        """
        now = self._now()
        try:
            armed = self._keys.armed_keys(now)
        except (KeyStoreError, OSError) as e:
            raise HandshakeFailed(f"cannot read the armed pairing keys: {e}") from None
        matches = [candidate for candidate in armed if proves(candidate.key)]
        if not matches:
            raise HandshakeFailed(f"no key for peer {claimed}")
        try:
            key = self._keys.claim_armed_key(claimed, matches[0], now)
        except (KeyStoreError, OSError) as e:
            raise HandshakeFailed(f"could not store the key of {claimed}: {e}") from None
        if key is None:
            raise HandshakeFailed(f"the pairing key {claimed} proved was claimed meanwhile")
        self.paired = True
        self.paired_via = matches[0].form
        return key


    def _pake_round(
        self, claimed: str, payload: dict, connector_nonce: str | None, binding: Binding | None
    ) -> Verdict:
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
        return Verdict(None, {"status": ACK_PAKE, **answer})

    def _finish_pake(self, claimed: str, payload: dict, proves: Callable[[bytes], bool]) -> bytes:
        """
        The second round: check the connector's confirmation and proof with
        the new key, and keep the key.
        """
        assert self._pake is not None
        try:
            key = self._pake.confirm(payload.get("confirm"))
        except PakeError as e:
            raise HandshakeFailed(f"strong pairing with {claimed}: {e}") from None
        if not proves(key):
            raise HandshakeFailed(f"wrong proof after strong pairing with {claimed}")
        try:
            self._keys.set_key(claimed, key)
            self._keys.update_meta(claimed, paired_at=int(self._now() * 1000), paired_via=STRONG_FORM)
        except (KeyStoreError, OSError) as e:
            raise HandshakeFailed(f"could not store the key of {claimed}: {e}") from None
        self.paired = True
        self.paired_via = STRONG_FORM
        return key


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
    @ivar mutual: Whether the acceptor proved the key.
    @ivar peer_capabilities: What the acceptor announced.
    @ivar new_key: The key agreed by strong pairing, to be stored once the
        acceptor's id is known; L{None} otherwise.
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
        """
        if (psk is None) == (strong_code is None):
            raise ValueError("give either a key or a strong code")
        self.identity = identity
        self.psk = psk
        self.expected_peer = expected_peer
        self.legacy = legacy
        self.accept_one_way = accept_one_way or legacy
        self.capabilities = capabilities
        self.mutual = False
        self.peer_capabilities: frozenset[str] = frozenset()
        self.new_key: bytes | None = None
        self._keys = keys
        self._nonce = new_nonce(randbytes)
        self._challenge: str | None = None
        self._pake = PakeConnector(strong_code) if strong_code is not None else None

    def answer(self, message: RelayMessage, binding: Binding | None = None) -> dict:
        """
        The payload of the C{handshake} that answers a C{challenge}.

        A legacy peer gets exactly what claudectl sends: the proof and the
        version.

        @raise HandshakeFailed: if the message is not a challenge with a
            64-hex-character nonce.
        """
        if message.msg_type != MessageType.CHALLENGE:
            raise HandshakeFailed(f"expected challenge, got {message.msg_type}")
        payload = message.payload
        nonce = payload.get("nonce") if isinstance(payload, dict) else None
        if not isinstance(nonce, str) or not _HEX64.match(nonce):
            raise HandshakeFailed("challenge has no 64-hex-character nonce")
        self._challenge = nonce
        if self._pake is not None:
            return self._extended({"pake": self._pake.message, "version": VERSION})
        return self._proof_payload(binding)

    def _extended(self, payload: dict) -> dict:
        payload["nonce"] = self._nonce
        payload["caps"] = list(self.capabilities)
        return payload

    def _proof_payload(self, binding: Binding | None) -> dict:
        assert self._challenge is not None and self.psk is not None
        proof = connector_proof(self.psk, self._challenge, self._nonce, self.identity, binding)
        payload = {"proof": proof, "version": VERSION}
        if self.legacy and binding is None:
            return payload
        return self._extended(payload)

    def check_ack(
        self, message: RelayMessage, binding: Binding | None = None
    ) -> tuple[str | None, dict | None]:
        """
        Check the acceptor's C{handshake_ack}.

        @return: the acceptor's peer id and L{None} when done; or L{None} and
            the payload of the next C{handshake} to send (strong pairing).
        @raise HandshakeFailed: if it denied us, answered as the wrong or an
            invalid peer id, or (unless legacy) did not prove the key.
        """
        if message.msg_type != MessageType.HANDSHAKE_ACK:
            raise HandshakeFailed(f"expected handshake_ack, got {message.msg_type}")
        payload = message.payload
        status = payload.get("status") if isinstance(payload, dict) else None
        if status == ACK_PAKE and self._pake is not None and self.psk is None:
            return None, self._finish_pake(message, payload, binding)
        if status != ACK_OK:
            raise HandshakeFailed(f"the peer denied the handshake (status {status!r})")
        peer = self._check_peer(message.from_peer)
        self.peer_capabilities = _capabilities(payload)
        proof = payload.get("proof")
        if proof is None and not self.accept_one_way:
            raise HandshakeFailed(
                f"{peer} did not prove that it holds the key; if it is a claudectl peer, "
                f"dial it as legacy:{peer}@HOST:PORT"
            )
        if proof is not None:
            assert self._challenge is not None and self.psk is not None
            expected = acceptor_proof(self.psk, self._challenge, self._nonce, self.identity, peer, binding)
            if not _same(expected, proof):
                raise HandshakeFailed(f"{peer} answered with a wrong proof of the key")
            self.mutual = True
        if binding is not None and self._keys is not None:
            check_pin(self._keys, peer, binding[0])
        return peer, None

    def _check_peer(self, peer: str) -> str:
        if not is_valid_peer_id(peer):
            raise HandshakeFailed(f"the peer answered with an invalid peer id {peer[:40]!r}")
        if peer == self.identity:
            raise HandshakeFailed(f"the peer answered with this node's own id {peer}")
        if self.expected_peer is not None and peer != self.expected_peer:
            raise HandshakeFailed(f"expected peer {self.expected_peer} but {peer} answered")
        return peer

    def _finish_pake(self, message: RelayMessage, payload: dict, binding: Binding | None) -> dict:
        assert self._pake is not None and self._challenge is not None
        peer = self._check_peer(message.from_peer)
        try:
            tag, key = self._pake.finish(payload, self._challenge, self.identity, peer)
        except PakeError as e:
            raise HandshakeFailed(f"strong pairing with {peer}: {e}") from None
        self.psk = self.new_key = key
        self.expected_peer = peer
        reply = self._proof_payload(binding)
        reply["confirm"] = tag
        return reply
