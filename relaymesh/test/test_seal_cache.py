"""
Tests for what L{relaymesh.routing.seal} keeps from one routed message to the
next: the keys of a key store that keeps them in files (L{KeyFileCache}),
the per-direction head of the associated data, and the canonical box text
read without encoding the box again.
"""

from __future__ import annotations

import base64
import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relaymesh.keyfiles import InsecureKeyFile
from relaymesh.keystore import KeyStore
from relaymesh.routing.seal import (
    KEY_CACHE_SIZE,
    KEY_FILE_RECHECK,
    MALFORMED,
    UNPAIRED,
    KeyFileCache,
    Sealer,
    SealError,
    _ends,
    _message_data,
    associated_data,
    box_bytes,
    box_text,
    file_backed,
)
from relaymesh.testing import MemoryKeys
from relaymesh.wire import RelayMessage

PSK = bytes(range(32))
OTHER = bytes(32)


class CountingStore(KeyStore):
    """
    A key store that counts how often its keys are read.
    """

    def __init__(self, path: str) -> None:
        KeyStore.__init__(self, path)
        self.reads = 0

    def key(self, peer_id):
        self.reads += 1
        return KeyStore.key(self, peer_id)


class KeyFileCacheTests(SynchronousTestCase):
    def setUp(self):
        self.store = CountingStore(self.mktemp())
        self.store.set_key("gamma", PSK)
        self.clock = Clock()
        self.cache = KeyFileCache(self.store, self.clock)

    def test_read_once(self):
        """
        An unchanged key file is read once; later look-ups only look at its
        metadata.
        """
        for _ in range(5):
            self.assertEqual(self.cache.key("gamma"), PSK)
        self.assertEqual(self.store.reads, 1)

    def test_replaced_key_used_at_once(self):
        """
        A key the store replaced (a new file renamed over the old one) is
        the key of the next look-up.
        """
        self.assertEqual(self.cache.key("gamma"), PSK)
        self.store.set_key("gamma", OTHER)
        self.assertEqual(self.cache.key("gamma"), OTHER)
        self.assertEqual(self.cache.key("gamma"), OTHER)
        self.assertEqual(self.store.reads, 2)

    def test_forgotten_key_gone_at_once(self):
        """
        A peer the store forgot has no key from the next look-up on.
        """
        self.assertEqual(self.cache.key("gamma"), PSK)
        self.store.forget("gamma")
        self.assertIsNone(self.cache.key("gamma"))
        self.assertIsNone(self.cache.key("gamma"))

    def test_changed_mode_read_again(self):
        """
        A key file whose permissions changed is read again, so that a file
        opened to other users is refused as the store refuses it.
        """
        self.assertEqual(self.cache.key("gamma"), PSK)
        os.chmod(self.store.key_path("gamma"), 0o644)
        self.assertRaises(InsecureKeyFile, self.cache.key, "gamma")
        sealer = Sealer("alpha", self.store, clock=self.clock)
        self.assertFalse(sealer.paired("gamma"))

    def test_read_again_after_a_while(self):
        """
        A key file is trusted unchanged for L{KEY_FILE_RECHECK} seconds at
        most: after that it is read again even if its metadata are the same
        (a file rewritten in place within the file system's timestamp
        granularity).
        """
        self.assertEqual(self.cache.key("gamma"), PSK)
        self.clock.advance(KEY_FILE_RECHECK - 0.01)
        self.cache.key("gamma")
        self.assertEqual(self.store.reads, 1)
        self.clock.advance(0.01)
        self.assertEqual(self.cache.key("gamma"), PSK)
        self.assertEqual(self.store.reads, 2)

    def test_no_file_asks_the_store(self):
        """
        Without a key file the store is asked every time: one that gives a
        key without a file still gives it.
        """

        class Default(CountingStore):
            def key(self, peer_id):
                stored = CountingStore.key(self, peer_id)
                return OTHER if stored is None else stored

        store = Default(self.mktemp())
        cache = KeyFileCache(store, self.clock)
        self.assertEqual([cache.key("delta"), cache.key("delta")], [OTHER, OTHER])
        self.assertEqual(store.reads, 2)

    def test_bounded(self):
        """
        At most L{KEY_CACHE_SIZE} peers are remembered: one more starts the
        cache afresh, and every key is still right.
        """
        store = MemoryPaths(self.mktemp())
        cache = KeyFileCache(store, self.clock)
        for i in range(KEY_CACHE_SIZE + 1):
            cache.key(f"p{i}")
        self.assertEqual(len(cache._paths), 1)
        self.assertLessEqual(len(cache._read), 1)
        self.assertIsNone(cache.key("p0"))

    def test_invalid_peer_id(self):
        """
        An invalid peer id is refused as the store refuses it.
        """
        self.assertRaises(ValueError, self.cache.key, "../gamma")


class MemoryPaths(KeyStore):
    """
    A key store with no key at all, whose paths are all missing files.
    """


class SealerKeyFileTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.message = RelayMessage("msg_1_0_ab", "delegate_task", "alpha", 1795718866757, {"t": 1})

    def test_file_backed(self):
        """
        A sealer given a clock reads the keys of a key store through a
        L{KeyFileCache}; without a clock, or for a store without key files,
        it asks the store every time.
        """
        store = KeyStore(self.mktemp())
        self.assertTrue(file_backed(store))
        self.assertFalse(file_backed(MemoryKeys()))
        self.assertIsInstance(Sealer("alpha", store, clock=self.clock)._keys, KeyFileCache)
        self.assertIs(Sealer("alpha", store)._keys, store)
        memory = MemoryKeys({"gamma": PSK})
        self.assertIs(Sealer("alpha", memory, clock=self.clock)._keys, memory)

    def test_changed_key_used_at_once(self):
        """
        With key files too, a key changed in the store is used from the next
        message on, and a forgotten one is no key.
        """
        alpha_store = KeyStore(self.mktemp())
        alpha_store.set_key("gamma", PSK)
        gamma_store = KeyStore(self.mktemp())
        gamma_store.set_key("alpha", PSK)
        alpha = Sealer("alpha", alpha_store, clock=self.clock)
        gamma = Sealer("gamma", gamma_store, clock=self.clock)
        sealed = alpha.seal("gamma", self.message, "m", {})
        self.assertEqual(gamma.open("alpha", self.message, "m", sealed)[0], {"t": 1})
        alpha_store.set_key("gamma", OTHER)
        sealed = alpha.seal("gamma", self.message, "m", {})
        self.assertRaises(SealError, gamma.open, "alpha", self.message, "m", sealed)
        gamma_store.set_key("alpha", OTHER)
        self.assertEqual(gamma.open("alpha", self.message, "m", sealed)[0], {"t": 1})
        gamma_store.forget("alpha")
        e = self.assertRaises(SealError, gamma.open, "alpha", self.message, "m", sealed)
        self.assertEqual(e.reason, UNPAIRED)


class AssociatedDataHeadTests(SynchronousTestCase):
    def test_same_bytes(self):
        """
        The associated data made from a direction's cached head is the
        associated data.
        """
        cases = [
            ("alpha", "gamma", "msg_1_0_ab", "msg_1_0_ab", "delegate_task", 1795718866757),
            ("alpha", "gamma", "m", "m/2", "ack", 0),
            ("a", "b", "\u00e9t\u00e9", "x", "task_status", 2**64 - 1),
        ]
        for origin, destination, msg_id, origin_id, msg_type, timestamp in cases:
            self.assertEqual(
                _message_data(_ends(origin, destination), msg_id, origin_id, msg_type, timestamp),
                associated_data(origin, destination, msg_id, origin_id, msg_type, timestamp),
            )

    def test_unencodable(self):
        """
        A field that cannot be bound is malformed, in the head or after it.
        """
        head = _ends("a", "b")
        for args in [("\ud800", "x", "ack", 1), ("m", "\ud800", "ack", 1), ("m", "x", "ack", 2**64)]:
            e = self.assertRaises(SealError, _message_data, head, *args)
            self.assertEqual(e.reason, MALFORMED)
        e = self.assertRaises(SealError, _ends, "a", "\ud800")
        self.assertEqual(e.reason, MALFORMED)


def reference_box_bytes(text: str) -> bytes | None:
    """
    The canonical-text rule as it was first written: decode, encode the
    box again, and compare; L{None} if refused.
    """
    if not text or any(c not in ALPHABET for c in text):
        return None
    try:
        box = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return None
    return box if box_text(box) == text else None


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class BoxTextTests(SynchronousTestCase):
    @settings(max_examples=500, deadline=None)
    @given(st.text(alphabet=ALPHABET + "=+/ ", max_size=14))
    def test_same_rule(self, text):
        """
        L{box_bytes} takes exactly the texts that decode to a box that
        L{box_text} writes as the same text, and gives that box.
        """
        expected = reference_box_bytes(text)
        if expected is None:
            e = self.assertRaises(SealError, box_bytes, text)
            self.assertEqual(e.reason, MALFORMED)
        else:
            self.assertEqual(box_bytes(text), expected)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(min_size=1, max_size=40))
    def test_round_trip(self, box):
        """
        Every box reads back from its text.
        """
        self.assertEqual(box_bytes(box_text(box)), box)
