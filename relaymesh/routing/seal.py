"""
End-to-end sealing of routed messages: what a relay can neither read nor
alter.

A routed message crosses nodes that are not its origin or its destination.
The two ends are paired, so they share a 32-byte pre-shared key (the key
store's C{key(peer_id)}), even if they never connect to each other. From it
each direction gets a key of its own::

    key(origin -> destination) = HKDF-SHA256(ikm = psk, salt = none,
        info = "relaymesh/1 routed" 0x00 origin 0x00 destination, length = 32)

so a message sealed from alpha to gamma can never be taken for one from
gamma to alpha. The payload, and the end-to-end fields that go with it
(a reliable message's C{"reliable": true}), are encrypted with
ChaCha20-Poly1305 under a random 96-bit nonce; the associated data binds
everything else the origin set and the destination reads: origin,
destination, message id, origin id, message type and timestamp. Only the
hop count and the sending neighbour, which relays change, are outside it.

The sealed box is C{nonce (12 bytes) || ciphertext || tag (16 bytes)},
carried as unpadded URL-safe base64. C{docs/protocol.rst} has the bytes.

This module is pure: no Twisted, no I/O but the key lookup.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import struct
from typing import Any, Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from relaymesh.interfaces import PairwiseKeys
from relaymesh.keyfiles import KeyStoreError
from relaymesh.wire import RelayMessage, WireError, dumps, loads

#: The label every routed key derivation and every associated data starts with.
LABEL = b"relaymesh/1 routed"

#: Bytes of a pre-shared key, and of a derived direction key.
KEY_BYTES = 32

#: Bytes of a nonce (ChaCha20-Poly1305's 96 bits).
NONCE_BYTES = 12

#: Bytes of the Poly1305 tag at the end of the ciphertext.
TAG_BYTES = 16

#: The end-to-end field of the sealed content that holds the payload.
PAYLOAD_KEY = "payload"

#: Why a sealed message was refused, as the rejection counter names it.
UNPAIRED = "unpaired"
FORGED = "forged"
MALFORMED = "malformed"

#: Derived keys kept at most (one per direction and peer).
KEY_CACHE_SIZE = 4096

_BOX_TEXT = re.compile(r"[A-Za-z0-9_-]+\Z")


class SealError(ValueError):
    """
    A routed message that cannot be sealed or opened; one line says why.

    @ivar reason: L{UNPAIRED}, L{FORGED} or L{MALFORMED}.
    """

    def __init__(self, reason: str, message: str) -> None:
        ValueError.__init__(self, message)
        self.reason = reason


def direction_key(psk: bytes, sender: str, receiver: str) -> bytes:
    """
    The key of the messages C{sender} seals for C{receiver}.

    @param psk: The 32-byte key the two share.
    @param sender: The origin's peer id (ASCII, checked where it entered).
    @param receiver: The destination's peer id.
    """
    if type(psk) is not bytes or len(psk) != KEY_BYTES:
        raise SealError(UNPAIRED, f"the key shared with {receiver} is not {KEY_BYTES} bytes")
    info = LABEL + b"\x00" + sender.encode("ascii") + b"\x00" + receiver.encode("ascii")
    return HKDF(algorithm=SHA256(), length=KEY_BYTES, salt=None, info=info).derive(psk)


def _field(value: str) -> bytes:
    data = value.encode("utf-8")
    return struct.pack(">I", len(data)) + data


def associated_data(
    origin: str, destination: str, msg_id: str, origin_id: str, msg_type: str, timestamp: int
) -> bytes:
    """
    The associated data of a sealed message: L{LABEL}, then each string
    field as a 4-byte big-endian length and its UTF-8 bytes, then the
    timestamp as an 8-byte big-endian unsigned integer.

    @raise SealError: for a field that cannot be encoded.
    """
    try:
        return b"".join(
            [
                LABEL,
                _field(origin),
                _field(destination),
                _field(msg_id),
                _field(origin_id),
                _field(msg_type),
                struct.pack(">Q", timestamp),
            ]
        )
    except (UnicodeEncodeError, struct.error) as e:
        raise SealError(MALFORMED, f"cannot bind the message's fields: {e}") from None


def seal(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """
    The box C{nonce || ciphertext || tag}.
    """
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a nonce is {NONCE_BYTES} bytes")
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)


def unseal(key: bytes, box: bytes, ad: bytes) -> bytes:
    """
    The plaintext of a box.

    @raise SealError: (L{FORGED}) if the tag does not match: another key,
        other associated data, or a changed byte.
    """
    if len(box) < NONCE_BYTES + TAG_BYTES:
        raise SealError(MALFORMED, f"sealed box of {len(box)} bytes is too short")
    try:
        return ChaCha20Poly1305(key).decrypt(box[:NONCE_BYTES], box[NONCE_BYTES:], ad)
    except InvalidTag:
        raise SealError(FORGED, "the seal does not verify") from None


def box_text(box: bytes) -> str:
    """
    A box as unpadded URL-safe base64.
    """
    return base64.urlsafe_b64encode(box).rstrip(b"=").decode("ascii")


def box_bytes(text: Any) -> bytes:
    """
    The box that L{box_text} wrote; only the canonical encoding is taken.

    @raise SealError: (L{MALFORMED}) for anything else.
    """
    if type(text) is not str or not _BOX_TEXT.match(text):
        raise SealError(MALFORMED, "the sealed field is not unpadded URL-safe base64")
    try:
        box = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise SealError(MALFORMED, "the sealed field is not unpadded URL-safe base64") from None
    if box_text(box) != text:
        raise SealError(MALFORMED, "the sealed field is not in its canonical encoding")
    return box


class Sealer:
    """
    One node's sealing and opening of routed messages, with the keys its
    key store holds; derived keys are cached per direction and pre-shared
    key, so a key changed in the store takes effect with the next message.

    @ivar identity: This node's peer id.
    """

    def __init__(
        self,
        identity: str,
        keys: PairwiseKeys | None,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """
        @param keys: Where the pre-shared keys are; L{None} for a node that
            shares a key with nobody (it only relays).
        @param randbytes: Where nonces come from.
        """
        self.identity = identity
        self._keys = keys
        self._randbytes = randbytes
        self._derived: dict[tuple[str, str, bytes], bytes] = {}

    def paired(self, peer_id: str) -> bool:
        """
        Whether this node shares a key with C{peer_id}.
        """
        return self._psk(peer_id) is not None

    def _psk(self, peer_id: str) -> bytes | None:
        if self._keys is None or peer_id == self.identity:
            return None
        try:
            return self._keys.key(peer_id)
        except (KeyStoreError, OSError, ValueError):  # unreadable or unsafe key file: no key
            return None

    def _key(self, peer_id: str, sender: str, receiver: str) -> bytes:
        psk = self._psk(peer_id)
        if psk is None:
            raise SealError(UNPAIRED, f"no key is shared with {peer_id}")
        cache_key = (sender, receiver, psk)
        key = self._derived.get(cache_key)
        if key is None:
            if len(self._derived) >= KEY_CACHE_SIZE:
                self._derived.clear()
            key = self._derived[cache_key] = direction_key(psk, sender, receiver)
        return key

    def seal(
        self, destination: str, message: RelayMessage, origin_id: str, fields: dict[str, Any]
    ) -> str:
        """
        Seal a message of this node for C{destination}.

        @param origin_id: The origin id its route header carries.
        @param fields: End-to-end fields besides the payload (C{reliable}).
        @return: the box, as the C{sealed} field's text.
        @raise SealError: if no key is shared with C{destination}.
        @raise WireError: if the content is not JSON.
        """
        key = self._key(destination, self.identity, destination)
        content = dict(fields)
        content[PAYLOAD_KEY] = message.payload
        ad = associated_data(
            self.identity, destination, message.id, origin_id, message.msg_type, message.timestamp
        )
        return box_text(seal(key, self._randbytes(NONCE_BYTES), dumps(content), ad))

    def open(
        self, origin: str, message: RelayMessage, origin_id: str, sealed: Any
    ) -> tuple[Any, dict[str, Any]]:
        """
        Open a message sealed by C{origin} for this node.

        @param message: The routed message as it arrived (its id, type and
            timestamp are bound to the seal).
        @param sealed: Its C{sealed} field.
        @return: the payload, and the other end-to-end fields.
        @raise SealError: naming why it cannot be taken as C{origin}'s.
        """
        box = box_bytes(sealed)
        key = self._key(origin, origin, self.identity)
        ad = associated_data(
            origin, self.identity, message.id, origin_id, message.msg_type, message.timestamp
        )
        plaintext = unseal(key, box, ad)
        try:
            content = loads(plaintext)
        except WireError as e:
            raise SealError(MALFORMED, f"the sealed content is not JSON: {e}") from None
        if type(content) is not dict or PAYLOAD_KEY not in content:
            raise SealError(MALFORMED, "the sealed content is not an object with a payload")
        payload = content.pop(PAYLOAD_KEY)
        return payload, content
