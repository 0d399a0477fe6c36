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

This module is pure: no Twisted (but the clock L{KeyFileCache} is given),
no I/O but the key lookup.

Sealing and opening run once per routed message at its two ends, so the
L{Sealer} keeps what does not change from one message to the next: per
direction and pre-shared key, the AEAD object and the fixed head of the
associated data; and, for a key store that keeps its keys in files
(L{KeyFileCache}), the keys themselves, read again whenever a file
changed.
"""

from __future__ import annotations

import binascii
import os
import re
import struct
from collections.abc import Callable
from typing import Any, Protocol, TypeGuard

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from twisted.internet.interfaces import IReactorTime

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

#: Seconds at most that L{KeyFileCache} trusts a key file's unchanged
#: metadata before it reads the file again anyway.
KEY_FILE_RECHECK = 1.0

_BOX_TEXT = re.compile(r"[A-Za-z0-9_-]+\Z")

#: The characters a canonical unpadded box text may end with, by its length
#: modulo 4: after 2 or 3 characters of a last group, the bits beyond the
#: last byte are zero (what L{box_text} writes); a length of 1 modulo 4 is
#: never a box.
_CANONICAL_LAST = {
    0: None,
    2: frozenset("AQgw"),
    3: frozenset("AEIMQUYcgkosw048"),
}

#: What makes a box text's last group whole, by its length modulo 4.
_PADDING = {0: b"", 2: b"==", 3: b"="}

#: URL-safe base64 to and from the standard alphabet, which binascii speaks.
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")

_U32 = struct.Struct(">I").pack
_U64 = struct.Struct(">Q").pack


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
    return _message_data(_ends(origin, destination), msg_id, origin_id, msg_type, timestamp)


def _ends(origin: str, destination: str) -> bytes:
    """
    The head of the associated data, the same for every message of one
    direction: L{LABEL}, the origin and the destination.

    @raise SealError: for a field that cannot be encoded.
    """
    try:
        return LABEL + _field(origin) + _field(destination)
    except UnicodeEncodeError as e:
        raise SealError(MALFORMED, f"cannot bind the message's fields: {e}") from None


def _message_data(ends: bytes, msg_id: str, origin_id: str, msg_type: str, timestamp: int) -> bytes:
    """
    The associated data of one message, after its direction's L{_ends}.

    @raise SealError: for a field that cannot be encoded.
    """
    try:
        i = msg_id.encode("utf-8")
        o = i if origin_id == msg_id else origin_id.encode("utf-8")
        t = msg_type.encode("utf-8")
        return b"".join((ends, _U32(len(i)), i, _U32(len(o)), o, _U32(len(t)), t, _U64(timestamp)))
    except (UnicodeEncodeError, struct.error) as e:
        raise SealError(MALFORMED, f"cannot bind the message's fields: {e}") from None


def seal(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """
    The box C{nonce || ciphertext || tag}.
    """
    return _seal_with(ChaCha20Poly1305(key), nonce, plaintext, ad)


def _seal_with(aead: ChaCha20Poly1305, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a nonce is {NONCE_BYTES} bytes")
    return nonce + aead.encrypt(nonce, plaintext, ad)


def unseal(key: bytes, box: bytes, ad: bytes) -> bytes:
    """
    The plaintext of a box.

    @raise SealError: (L{FORGED}) if the tag does not match: another key,
        other associated data, or a changed byte.
    """
    return _open_with(ChaCha20Poly1305(key), box, ad)


def _open_with(aead: ChaCha20Poly1305, box: bytes, ad: bytes) -> bytes:
    if len(box) < NONCE_BYTES + TAG_BYTES:
        raise SealError(MALFORMED, f"sealed box of {len(box)} bytes is too short")
    try:
        return aead.decrypt(box[:NONCE_BYTES], box[NONCE_BYTES:], ad)
    except InvalidTag:
        raise SealError(FORGED, "the seal does not verify") from None


def box_text(box: bytes) -> str:
    """
    A box as unpadded URL-safe base64.
    """
    return binascii.b2a_base64(box, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode("ascii")


def box_bytes(text: Any) -> bytes:
    """
    The box that L{box_text} wrote; only the canonical encoding is taken.

    @raise SealError: (L{MALFORMED}) for anything else.
    """
    # Per routed message at its destination: the alphabet by a regular
    # expression, the canonical form by the length and the last character
    # (the bits beyond the last byte are zero), rather than by encoding the
    # box again and comparing.
    if type(text) is not str or not _BOX_TEXT.match(text):
        raise SealError(MALFORMED, "the sealed field is not unpadded URL-safe base64")
    rest = len(text) % 4
    if rest == 1:
        raise SealError(MALFORMED, "the sealed field is not unpadded URL-safe base64")
    last = _CANONICAL_LAST[rest]
    if last is not None and text[-1] not in last:
        raise SealError(MALFORMED, "the sealed field is not in its canonical encoding")
    try:
        return binascii.a2b_base64(text.encode("ascii").translate(_FROM_URLSAFE) + _PADDING[rest])
    except (binascii.Error, ValueError):  # not after the checks above; kept as a guard
        raise SealError(MALFORMED, "the sealed field is not unpadded URL-safe base64") from None


class FileKeys(PairwiseKeys, Protocol):
    """
    A key store that keeps each key in a file, which C{key_path} names.
    """

    def key_path(self, peer_id: str) -> str:
        """The path of the file that holds the key shared with C{peer_id}."""


class KeyFileCache:
    """
    The keys of a key store that keeps each key in a file
    (L{relaymesh.keyfiles.KeyFiles}), read again only when a file changed:
    a routed message costs one C{stat} of its key file rather than an open,
    a read and a parse.

    A key file is read again when its inode, size, mode, owner, or change
    or modification time differ from when it was last read (the key store
    replaces a file by renaming a new one over it: a new inode), and in any
    case once it has been trusted for L{KEY_FILE_RECHECK} seconds, so that
    even a file rewritten in place within the file system's timestamp
    granularity is read again soon. A key the store cannot give (no file,
    an unsafe or damaged one) is not cached: it is asked for every time.
    """

    def __init__(self, keys: FileKeys, clock: IReactorTime, recheck: float = KEY_FILE_RECHECK) -> None:
        """
        @param keys: The key store: its C{key_path(peer_id)} names the file
            C{key(peer_id)} reads.
        """
        self._keys = keys
        self._clock = clock
        self._recheck = recheck
        self._paths: dict[str, str] = {}
        self._read: dict[str, tuple[tuple[int, ...], float, bytes]] = {}

    def key(self, peer_id: str) -> bytes | None:
        """
        The key shared with C{peer_id}, as the store's C{key} gives it.

        @raise relaymesh.keyfiles.KeyStoreError: as the store's C{key} does.
        @raise ValueError: for an invalid peer id.
        """
        path = self._paths.get(peer_id)
        if path is None:
            if len(self._paths) >= KEY_CACHE_SIZE:
                self._paths.clear()
                self._read.clear()
            path = self._paths[peer_id] = self._keys.key_path(peer_id)
        try:
            st = os.stat(path)
        except OSError:
            self._read.pop(peer_id, None)
            return self._keys.key(peer_id)
        stamp = (st.st_ino, st.st_dev, st.st_size, st.st_mode, st.st_uid, st.st_mtime_ns, st.st_ctime_ns)
        now = self._clock.seconds()
        known = self._read.get(peer_id)
        if known is not None and known[0] == stamp and now < known[1]:
            return known[2]
        key = self._keys.key(peer_id)
        if key is None:
            self._read.pop(peer_id, None)
        else:
            self._read[peer_id] = (stamp, now + self._recheck, key)
        return key


def file_backed(keys: object) -> TypeGuard[FileKeys]:
    """
    Whether a key store keeps each key in a file that L{KeyFileCache} can
    watch (it names it with C{key_path}).
    """
    return callable(getattr(keys, "key_path", None))


class _Direction:
    """
    What a L{Sealer} keeps for one direction and pre-shared key: the AEAD
    with the direction's key, and the head of its associated data.
    """

    __slots__ = ("aead", "ends")

    def __init__(self, key: bytes, sender: str, receiver: str) -> None:
        self.aead = ChaCha20Poly1305(key)
        self.ends = _ends(sender, receiver)


class Sealer:
    """
    One node's sealing and opening of routed messages, with the keys its
    key store holds; derived keys (with their AEAD objects) are cached per
    direction and pre-shared key, so a key changed in the store takes
    effect with the next message.

    @ivar identity: This node's peer id.
    """

    def __init__(
        self,
        identity: str,
        keys: PairwiseKeys | None,
        randbytes: Callable[[int], bytes] = os.urandom,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param keys: Where the pre-shared keys are; C{None} for a node that
            shares a key with nobody (it only relays).
        @param randbytes: Where nonces come from.
        @param clock: With a clock, the keys of a store that keeps them in
            files are read through a L{KeyFileCache}; without one, or for
            another store, each look-up asks the store.
        """
        self.identity = identity
        if keys is not None and clock is not None and file_backed(keys):
            keys = KeyFileCache(keys, clock)
        self._keys = keys
        self._randbytes = randbytes
        self._derived: dict[tuple[str, str, bytes], _Direction] = {}

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

    def _direction(self, peer_id: str, sender: str, receiver: str) -> _Direction:
        psk = self._psk(peer_id)
        if psk is None:
            raise SealError(UNPAIRED, f"no key is shared with {peer_id}")
        cache_key = (sender, receiver, psk)
        direction = self._derived.get(cache_key)
        if direction is None:
            if len(self._derived) >= KEY_CACHE_SIZE:
                self._derived.clear()
            direction = _Direction(direction_key(psk, sender, receiver), sender, receiver)
            self._derived[cache_key] = direction
        return direction

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
        direction = self._direction(destination, self.identity, destination)
        if fields:
            content = dict(fields)
            content[PAYLOAD_KEY] = message.payload
        else:
            content = {PAYLOAD_KEY: message.payload}
        ad = _message_data(
            direction.ends, message.id, origin_id, message.msg_type, message.timestamp
        )
        plaintext = dumps(content)
        return box_text(_seal_with(direction.aead, self._randbytes(NONCE_BYTES), plaintext, ad))

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
        direction = self._direction(origin, origin, self.identity)
        ad = _message_data(
            direction.ends, message.id, origin_id, message.msg_type, message.timestamp
        )
        plaintext = _open_with(direction.aead, box, ad)
        try:
            content = loads(plaintext)
        except WireError as e:
            raise SealError(MALFORMED, f"the sealed content is not JSON: {e}") from None
        if type(content) is not dict or PAYLOAD_KEY not in content:
            raise SealError(MALFORMED, "the sealed content is not an object with a payload")
        payload = content.pop(PAYLOAD_KEY)
        return payload, content
