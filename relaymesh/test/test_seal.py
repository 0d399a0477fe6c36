"""
Tests for L{relaymesh.routing.seal}: the direction keys, the associated data,
sealing and opening, and the fixed vectors checked in beside the tests so
that the format cannot drift silently.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct

from twisted.trial.unittest import SynchronousTestCase

from relaymesh import wire
from relaymesh.keyfiles import CorruptKeyFile
from relaymesh.routing.seal import (
    FORGED,
    LABEL,
    MALFORMED,
    NONCE_BYTES,
    TAG_BYTES,
    UNPAIRED,
    Sealer,
    SealError,
    associated_data,
    box_bytes,
    box_text,
    direction_key,
    seal,
    unseal,
)
from relaymesh.routing.table import RouteHeader, check_envelope, encode_routed
from relaymesh.test.support import fixture_path
from relaymesh.testing import MemoryKeys
from relaymesh.wire import RelayMessage

PSK = bytes(range(32))


def hkdf_sha256(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    """
    RFC 5869 HKDF-SHA256 with no salt, written out with L{hmac}, as a check
    on the library's.
    """
    prk = hmac.new(b"\x00" * 32, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def load_vectors() -> list[dict]:
    with open(fixture_path("routed-seal-vectors.json"), encoding="utf-8") as f:
        vectors: list[dict] = json.load(f)["vectors"]
        return vectors


def sealer(identity: str, peers: dict[str, bytes], nonce: bytes | None = None) -> Sealer:
    keys = MemoryKeys(peers, identity=identity)
    if nonce is None:
        return Sealer(identity, keys)
    return Sealer(identity, keys, randbytes=lambda n: nonce)


class DirectionKeyTests(SynchronousTestCase):
    def test_hkdf(self):
        """
        A direction key is HKDF-SHA256 of the pre-shared key with no salt
        and the info C{"relaymesh/1 routed" 0x00 sender 0x00 receiver}.
        """
        self.assertEqual(LABEL, b"relaymesh/1 routed")
        self.assertEqual(
            direction_key(PSK, "alpha", "gamma"),
            hkdf_sha256(PSK, b"relaymesh/1 routed\x00alpha\x00gamma"),
        )

    def test_directions_differ(self):
        """
        The two directions of a pair, and other pairs, get different keys.
        """
        keys = {
            direction_key(PSK, "alpha", "gamma"),
            direction_key(PSK, "gamma", "alpha"),
            direction_key(PSK, "alpha", "beta"),
            direction_key(bytes(32), "alpha", "gamma"),
        }
        self.assertEqual(len(keys), 4)

    def test_bad_key(self):
        self.assertRaises(SealError, direction_key, b"short", "alpha", "gamma")


class AssociatedDataTests(SynchronousTestCase):
    def test_layout(self):
        """
        The label, then each string with its 4-byte big-endian length, then
        the timestamp in 8 bytes.
        """
        ad = associated_data("a", "bc", "m1", "m1/2", "ack", 258)
        self.assertEqual(
            ad,
            LABEL
            + b"\x00\x00\x00\x01a"
            + b"\x00\x00\x00\x02bc"
            + b"\x00\x00\x00\x02m1"
            + b"\x00\x00\x00\x04m1/2"
            + b"\x00\x00\x00\x03ack"
            + struct.pack(">Q", 258),
        )

    def test_unambiguous(self):
        """
        Fields that concatenate to the same text still bind differently.
        """
        self.assertNotEqual(
            associated_data("a", "b", "m1", "x", "ack", 1),
            associated_data("a", "b", "m", "1x", "ack", 1),
        )

    def test_unencodable(self):
        e = self.assertRaises(SealError, associated_data, "a", "b", "\ud800", "x", "ack", 1)
        self.assertEqual(e.reason, MALFORMED)
        self.assertRaises(SealError, associated_data, "a", "b", "m", "x", "ack", 2**64)


class SealTests(SynchronousTestCase):
    def setUp(self):
        self.alpha = sealer("alpha", {"gamma": PSK})
        self.gamma = sealer("gamma", {"alpha": PSK})
        self.message = RelayMessage("msg_1_0_ab", "delegate_task", "alpha", 1795718866757, {"t": 1})

    def test_round_trip(self):
        """
        What alpha seals for gamma, gamma opens: the payload and the other
        end-to-end fields.
        """
        sealed = self.alpha.seal("gamma", self.message, "msg_1_0_ab/1", {"reliable": True})
        self.assertEqual(
            self.gamma.open("alpha", self.message, "msg_1_0_ab/1", sealed),
            ({"t": 1}, {"reliable": True}),
        )

    def test_box_layout(self):
        """
        A box is the nonce, the ciphertext (as long as the plaintext) and
        the 16-byte tag; a fresh nonce each time.
        """
        first = box_bytes(self.alpha.seal("gamma", self.message, "m", {}))
        second = box_bytes(self.alpha.seal("gamma", self.message, "m", {}))
        plaintext = wire.dumps({"payload": {"t": 1}})
        self.assertEqual(len(first), NONCE_BYTES + len(plaintext) + TAG_BYTES)
        self.assertNotEqual(first[:NONCE_BYTES], second[:NONCE_BYTES])
        self.assertNotIn(b'"t"', first)

    def test_bound_fields(self):
        """
        Changing anything the associated data binds, or a byte of the box,
        makes the seal fail to verify.
        """
        sealed = self.alpha.seal("gamma", self.message, "m/1", {})
        m = self.message
        changed = [
            (RelayMessage("other", m.msg_type, m.from_peer, m.timestamp, None), "m/1"),
            (RelayMessage(m.id, "task_status", m.from_peer, m.timestamp, None), "m/1"),
            (RelayMessage(m.id, m.msg_type, m.from_peer, m.timestamp + 1, None), "m/1"),
            (m, "m/2"),
        ]
        for message, origin_id in changed:
            e = self.assertRaises(SealError, self.gamma.open, "alpha", message, origin_id, sealed)
            self.assertEqual(e.reason, FORGED)
        box = bytearray(box_bytes(sealed))
        box[-1] ^= 1
        e = self.assertRaises(SealError, self.gamma.open, "alpha", m, "m/1", box_text(bytes(box)))
        self.assertEqual(e.reason, FORGED)
        # the relaying neighbour and the payload outside the seal are not bound
        relayed = RelayMessage(m.id, m.msg_type, "beta", m.timestamp, None)
        self.assertEqual(self.gamma.open("alpha", relayed, "m/1", sealed)[0], {"t": 1})

    def test_wrong_direction_or_destination(self):
        """
        A box cannot be opened as coming from the other end, nor by a third
        node that shares a key with its origin.
        """
        sealed = self.alpha.seal("gamma", self.message, "m", {})
        # reflected back to its origin, as if gamma had sent it
        e = self.assertRaises(SealError, self.alpha.open, "gamma", self.message, "m", sealed)
        self.assertEqual(e.reason, FORGED)
        alpha_knows_gamma = sealer("alpha", {"gamma": PSK})
        gamma_as_alpha = sealer("gamma", {"alpha": PSK})
        back = gamma_as_alpha.seal("alpha", self.message, "m", {})
        # gamma's message to alpha does not open as alpha's to gamma
        e = self.assertRaises(SealError, self.gamma.open, "alpha", self.message, "m", back)
        self.assertEqual(e.reason, FORGED)
        self.assertEqual(alpha_knows_gamma.open("gamma", self.message, "m", back)[0], {"t": 1})
        delta = sealer("delta", {"alpha": PSK})
        e = self.assertRaises(SealError, delta.open, "alpha", self.message, "m", sealed)
        self.assertEqual(e.reason, FORGED)

    def test_unpaired(self):
        """
        Without a key for the other end nothing is sealed or opened.
        """
        lonely = sealer("alpha", {})
        self.assertFalse(lonely.paired("gamma"))
        self.assertTrue(self.alpha.paired("gamma"))
        e = self.assertRaises(SealError, lonely.seal, "gamma", self.message, "m", {})
        self.assertEqual(e.reason, UNPAIRED)
        sealed = self.alpha.seal("gamma", self.message, "m", {})
        e = self.assertRaises(SealError, sealer("gamma", {}).open, "alpha", self.message, "m", sealed)
        self.assertEqual(e.reason, UNPAIRED)
        self.assertFalse(Sealer("alpha", None).paired("gamma"))

    def test_changed_key_used_at_once(self):
        """
        A key changed in the key store is used from the next message on.
        """
        keys = MemoryKeys({"gamma": PSK}, identity="alpha")
        alpha = Sealer("alpha", keys)
        alpha.seal("gamma", self.message, "m", {})
        keys.set_key("gamma", bytes(32))
        sealed = alpha.seal("gamma", self.message, "m", {})
        self.assertEqual(sealer("gamma", {"alpha": bytes(32)}).open("alpha", self.message, "m", sealed)[0], {"t": 1})

    def test_malformed(self):
        """
        A sealed field that is not a canonical unpadded URL-safe base64 box
        of at least a nonce and a tag, or whose content is not an object
        with a payload, is malformed.
        """
        key = direction_key(PSK, "alpha", "gamma")
        ad = associated_data("alpha", "gamma", self.message.id, "m", self.message.msg_type, self.message.timestamp)
        nonce = bytes(NONCE_BYTES)
        for text in ["", "a", "!!!!", "AAAA=", "AAA+", 7, None, box_text(b"x" * 20)]:
            e = self.assertRaises(SealError, self.gamma.open, "alpha", self.message, "m", text)
            self.assertEqual(e.reason, MALFORMED, text)
        # "AB" decodes, but is not how its byte is written ("AA")
        self.assertRaises(SealError, box_bytes, "AB")
        for plaintext in [b"[1]", b'{"reliable":true}', b"not json", b"\xff"]:
            sealed = box_text(seal(key, nonce, plaintext, ad))
            e = self.assertRaises(SealError, self.gamma.open, "alpha", self.message, "m", sealed)
            self.assertEqual(e.reason, MALFORMED, plaintext)
        self.assertRaises(SealError, unseal, key, b"short", ad)


class EdgeTests(SynchronousTestCase):
    """
    The edges of the box format and of the sealer's rules.
    """

    def setUp(self):
        self.message = RelayMessage("msg_1_0_ab", "delegate_task", "alpha", 1795718866757, {"t": 1})
        self.gamma = sealer("gamma", {"alpha": PSK})

    def test_reason_names(self):
        """
        The reasons a routed message is refused, as the rejection counter
        and the metrics name them, are C{"unpaired"}, C{"forged"} and
        C{"malformed"}; each comes with a one-line message.
        """
        sealed = sealer("alpha", {"gamma": PSK}).seal("gamma", self.message, "m", {})
        tampered = bytearray(box_bytes(sealed))
        tampered[NONCE_BYTES] ^= 1
        cases = [
            (sealer("gamma", {}), sealed, "unpaired", "no key is shared with alpha"),
            (self.gamma, box_text(bytes(tampered)), "forged", "the seal does not verify"),
            (self.gamma, "a", "malformed", "the sealed field is not unpadded URL-safe base64"),
        ]
        for receiver, text, reason, words in cases:
            e = self.assertRaises(SealError, receiver.open, "alpha", self.message, "m", text)
            self.assertEqual((e.reason, str(e)), (reason, words))
        e = self.assertRaises(SealError, sealer("alpha", {}).seal, "gamma", self.message, "m", {})
        self.assertEqual((e.reason, str(e)), ("unpaired", "no key is shared with gamma"))

    def test_shortest_box(self):
        """
        A box of a nonce and a tag alone (28 bytes) is long enough to be
        checked, and fails as forged when its tag is wrong; 27 bytes are
        malformed.
        """
        e = self.assertRaises(
            SealError, self.gamma.open, "alpha", self.message, "m", box_text(bytes(28))
        )
        self.assertEqual(e.reason, FORGED)
        e = self.assertRaises(
            SealError, self.gamma.open, "alpha", self.message, "m", box_text(bytes(27))
        )
        self.assertEqual((e.reason, str(e)), (MALFORMED, "sealed box of 27 bytes is too short"))

    def test_box_text(self):
        """
        A box's text is its unpadded URL-safe base64, whatever character it
        ends with, and reads back to the same bytes, down to a box of one
        byte.
        """
        for box, text in [
            (b"\x00\x00\x17", "AAAX"),
            (b"\x00\x00\x17\x00", "AAAXAA"),
            (b"\xfb\xff", "-_8"),
            (b"\x00", "AA"),
            (b"\x00\x00\x00", "AAAA"),
            (b"\x00\x00\x00\x00\x00\x00", "AAAAAAAA"),
        ]:
            self.assertEqual(box_text(box), text)
            self.assertEqual(box_bytes(text), box)
        for text in ("A", "AAAAA"):
            e = self.assertRaises(SealError, box_bytes, text)
            self.assertEqual(e.reason, MALFORMED)

    def test_nonce_length(self):
        """
        A source of nonces that gives anything but 12 bytes is refused
        before anything is sealed.
        """
        for length in (8, 13):
            short = Sealer("alpha", MemoryKeys({"gamma": PSK}), randbytes=lambda n, length=length: bytes(length))
            e = self.assertRaises(ValueError, short.seal, "gamma", self.message, "m", {})
            self.assertEqual(str(e), "a nonce is 12 bytes")

    def test_derived_keys_bounded(self):
        """
        At most 4,096 derived keys are kept: the 4,097th direction starts
        the cache afresh, and every key is still right.
        """
        peers = {f"p{i:04d}": PSK for i in range(4097)}
        node = sealer("alpha", peers)
        for peer in peers:
            node.seal(peer, self.message, "m", {})
        self.assertEqual(len(node._derived), 1)
        node = sealer("alpha", peers)
        for peer in list(peers)[:4096]:
            node.seal(peer, self.message, "m", {})
        self.assertEqual(len(node._derived), 4096)
        sealed = node.seal("p4096", self.message, "m", {})
        self.assertEqual(len(node._derived), 1)
        opened = sealer("p4096", {"alpha": PSK}).open("alpha", self.message, "m", sealed)
        self.assertEqual(opened, ({"t": 1}, {}))


class VectorTests(SynchronousTestCase):
    """
    The checked-in vectors (C{fixtures/routed-seal-vectors.json}): the keys,
    the associated data, the box and the whole routed line are what this
    code makes of the same inputs, and each opens.
    """

    def test_vectors(self):
        vectors = load_vectors()
        self.assertEqual(len(vectors), 3)
        for v in vectors:
            psk = bytes.fromhex(v["psk"])
            origin, destination = v["origin"], v["destination"]
            self.assertEqual(direction_key(psk, origin, destination).hex(), v["key"], v["name"])
            self.assertEqual(direction_key(psk, destination, origin).hex(), v["reverse_key"])
            self.assertEqual(
                hkdf_sha256(psk, LABEL + b"\x00" + origin.encode() + b"\x00" + destination.encode()).hex(),
                v["key"],
            )
            ad = associated_data(
                origin, destination, v["id"], v["origin_id"], v["msg_type"], v["timestamp"]
            )
            self.assertEqual(ad.hex(), v["associated_data"], v["name"])
            content = dict(v["fields"])
            content["payload"] = v["payload"]
            self.assertEqual(wire.dumps(content), v["plaintext"].encode("utf-8"))
            nonce = bytes.fromhex(v["nonce"])
            box = seal(bytes.fromhex(v["key"]), nonce, v["plaintext"].encode("utf-8"), ad)
            self.assertEqual(box_text(box), v["sealed"], v["name"])

            message = RelayMessage(v["id"], v["msg_type"], origin, v["timestamp"], v["payload"])
            made = sealer(origin, {destination: psk}, nonce).seal(
                destination, message, v["origin_id"], v["fields"]
            )
            self.assertEqual(made, v["sealed"])

            relayed, fields = wire.decode_fields(v["line"].encode("ascii"))
            header, sealed = check_envelope(relayed, fields)
            self.assertEqual((header.origin, header.to, header.origin_id), (origin, destination, v["origin_id"]))
            self.assertEqual(sealed, v["sealed"])
            self.assertEqual(
                encode_routed(relayed, RouteHeader(origin, destination, header.hops, v["origin_id"]), sealed),
                v["line"].encode("ascii"),
            )
            opened = sealer(destination, {origin: psk}).open(origin, relayed, v["origin_id"], sealed)
            self.assertEqual(opened, (v["payload"], v["fields"]))


class BrokenKeyStoreTests(SynchronousTestCase):
    def test_unreadable_key_is_no_key(self):
        """
        A key the store cannot give (a damaged or unsafe key file) counts
        as no key: nothing raises out of the sealer.
        """
        class Broken:
            def key(self, peer_id):
                raise CorruptKeyFile("peers/gamma.key does not hold 64 hex characters")

        broken = Sealer("alpha", Broken())
        self.assertFalse(broken.paired("gamma"))
        message = RelayMessage("m", "delegate_task", "alpha", 1, {})
        e = self.assertRaises(SealError, broken.seal, "gamma", message, "m", {})
        self.assertEqual(e.reason, UNPAIRED)
        sealed = sealer("gamma", {"alpha": PSK}).seal("alpha", message, "m", {})
        e = self.assertRaises(SealError, broken.open, "gamma", message, "m", sealed)
        self.assertEqual(e.reason, UNPAIRED)
        sealed = sealer("gamma", {"alpha": b"short"})
        self.assertRaises(SealError, sealed.seal, "alpha", message, "m", {})
