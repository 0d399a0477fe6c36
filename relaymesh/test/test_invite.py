"""
Tests for L{relaymesh.invite}, L{relaymesh.joinforms} and L{relaymesh.join},
the armed keys they rely on (in L{relaymesh.armed} and
L{relaymesh.handshake}), and the C{invite} and
C{join} commands (L{relaymesh.cli.pairing}), with C{peers} and C{forget}.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys
from io import StringIO
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionRefusedError, UserError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from relaymesh import pairing
from relaymesh.cli import base as cli_base
from relaymesh.cli import keys as cli_keys
from relaymesh.cli import pairing as cli_pairing
from relaymesh.cli.main import main
from relaymesh.codes import (
    FORM_LINK,
    FORM_RELAY_CODE,
    FORM_WORDS,
    InvalidCode,
    Invite,
    decode_invite,
    derive_pair_key,
    derive_seed_key,
    encode_invite_link,
    encode_relay_code,
    encode_word_phrase,
    format_pair_code,
    parse_pair_code,
)
from relaymesh.connection import State
from relaymesh.handshake.acceptor import AcceptorHandshake
from relaymesh.handshake.base import Authenticated, HandshakeFailed
from relaymesh.handshake.proofs import compute_proof
from relaymesh.invite import DEFAULT_EXPIRY, arm_invite, default_invite_host, make_invite
from relaymesh.join import JOIN_TIMEOUT, JoinDenied, JoinError, JoinResult, join_directly
from relaymesh.joinforms import (
    ARMED_INVITE,
    ARMED_INVITE_LEGACY,
    FORM_PAIR_CODE,
    FORM_RELAYMESH_LINK,
    FORM_STRONG_LINK,
    decode_relaymesh_link,
    encode_relaymesh_link,
    encode_strong_link,
    looks_like_pair_code,
    parse_join_input,
)
from relaymesh.keystore import PAIR_CODE_FORM, ArmedKey, KeyStore
from relaymesh.test.support import EPOCH, Node, load_codes
from relaymesh.testing import MemoryKeys, MemoryNetwork
from relaymesh.wire import RelayMessage

VECTORS = load_codes()
PREFIX = bytes.fromhex("0001020304050607")
SEED = bytes.fromhex("a1b2c3d4")
KEY = bytes(range(32))
OTHER = bytes(range(1, 33))


def fixed_random(*chunks: bytes):
    """
    A C{randbytes} that hands out C{chunks} in order.
    """
    queue = list(chunks)

    def randbytes(n: int) -> bytes:
        chunk = queue.pop(0)
        assert len(chunk) == n, (chunk, n)
        return chunk

    return randbytes


def requireModules(*names: str) -> None:
    """
    Skip the test unless these modules can be imported.
    """
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise SkipTest(f"{name} is not installed")


def handshake(from_peer: str, key: bytes, nonce: str) -> RelayMessage:
    return RelayMessage(
        "m1", "handshake", from_peer, 1, {"proof": compute_proof(key, nonce), "version": "x"}
    )


class RelaymeshLinkTests(SynchronousTestCase):
    """
    Tests for the relaymesh invite link.
    """

    def test_format(self):
        """
        The link is the C{cctl://} link under relaymesh's scheme.
        """
        self.assertEqual(
            encode_relaymesh_link("laptop-a3f2", "192.168.1.50", 9847, PREFIX),
            "relaymesh://laptop-a3f2@192.168.1.50:9847/k/0001020304050607",
        )
        self.assertEqual(
            encode_relaymesh_link("n", "::1", 9900, PREFIX),
            "relaymesh://n@[::1]:9900/k/0001020304050607",
        )

    def test_roundTrip(self):
        """
        Links to IPv4, IPv6 and host names decode to what was encoded.
        """
        rng = random.Random(5)
        for host in ["10.0.0.7", "::1", "relay.example.com"]:
            prefix = rng.randbytes(8)
            port = rng.randrange(1, 65536)
            link = encode_relaymesh_link("node_1-x", host, port, prefix)
            self.assertEqual(
                decode_relaymesh_link(link),
                Invite(host, port, derive_pair_key(prefix), "node_1-x", FORM_RELAYMESH_LINK),
            )
            self.assertEqual(parse_join_input(link), decode_relaymesh_link(link))

    def test_schemeAnyCase(self):
        """
        The scheme may be in any case; space around the link is ignored.
        """
        invite = decode_relaymesh_link("  RelayMesh://n@h:1/k/0001020304050607\n")
        self.assertEqual((invite.identity, invite.host, invite.port), ("n", "h", 1))
        self.assertEqual(invite.key, derive_pair_key(PREFIX))

    def assertMalformed(self, text: str, message: str) -> None:
        error = self.assertRaises(InvalidCode, decode_relaymesh_link, text)
        self.assertIn(message, str(error))
        self.assertNotIn("\n", str(error))

    def test_strongCodeKind(self):
        """
        A C{/s/} link carries a strong one-time code and no key; a bad code
        in it is refused naming what is wrong.
        """
        link = encode_strong_link("n", "h", 1, "7-ACE-act")
        self.assertEqual(link, "relaymesh://n@h:1/s/7-ace-act")
        invite = decode_relaymesh_link(link)
        self.assertEqual(
            (invite.host, invite.port, invite.identity, invite.key, invite.strong_code, invite.form),
            ("h", 1, "n", None, "7-ace-act", FORM_STRONG_LINK),
        )
        self.assertEqual(parse_join_input(link), invite)
        self.assertMalformed("relaymesh://n@h:1/s/7-ace-zzzzz", "unknown word 'zzzzz'")

    def test_bareStrongCode(self):
        invite = parse_join_input("7-ace-act", "alpha@10.0.0.2:9847")
        self.assertEqual((invite.identity, invite.strong_code, invite.form), ("alpha", "7-ace-act", "strong_code"))
        with self.assertRaises(InvalidCode) as ctx:
            parse_join_input("7-ace-act")
        self.assertIn("needs --peer", str(ctx.exception))

    def test_unknownKind(self):
        """
        Another kind of secret is refused, naming it.
        """
        self.assertMalformed("relaymesh://n@h:1/x/0001020304050607", "unknown code kind 'x'")

    def test_badParts(self):
        """
        The parts are checked as in a C{cctl://} link.
        """
        self.assertMalformed("cctl://n@h:1/k/0001020304050607", "must start with relaymesh://")
        self.assertMalformed("relaymesh://n@h:1", "missing '/k/'")
        self.assertMalformed("relaymesh://h:1/k/0001020304050607", "missing '@'")
        self.assertMalformed("relaymesh://bad id@h:1/k/0001020304050607", "bad peer id")
        self.assertMalformed("relaymesh://n@h:0/k/0001020304050607", "bad port")
        self.assertMalformed("relaymesh://n@a..b:1/k/0001020304050607", "bad host")
        self.assertMalformed("relaymesh://n@h:1/k/00010203", "want 16 hex digits")


class ParseJoinInputTests(SynchronousTestCase):
    """
    Tests for L{parse_join_input}: every form, as C{relaymesh join} reads it.
    """

    def test_claudectlVectors(self):
        """
        Every invite form claudectl 0.49.2 printed decodes to the key its
        own decoder derives.
        """
        for vector in VECTORS["invites"]:
            for field, form in [
                ("relay_code", FORM_RELAY_CODE),
                ("word_phrase", FORM_WORDS),
                ("invite_link", FORM_LINK),
            ]:
                invite = parse_join_input(vector[field])
                expected = vector[f"{field}_decodes_to"]
                self.assertEqual(invite.form, form)
                self.assertEqual(invite.key.hex(), expected["psk"])
                self.assertEqual(invite.addr, expected["addr"])
            peer = f"laptop-a3f2@{vector['addr']}"
            invite = parse_join_input(vector["pair_code"], peer)
            self.assertEqual(invite.key.hex(), vector["canonical_psk"])
            self.assertEqual(invite.form, FORM_PAIR_CODE)

    def test_roundTripEveryForm(self):
        """
        Each form encoded from an address and secret decodes back to them.
        """
        rng = random.Random(11)
        for _ in range(50):
            host = ".".join(str(rng.randrange(1, 255)) for _ in range(4))
            port = rng.choice([9847] + list(range(9848, 9975)))
            prefix, seed = rng.randbytes(8), rng.randbytes(4)
            cases = [
                (encode_relaymesh_link("a", host, port, prefix), None, FORM_RELAYMESH_LINK, derive_pair_key(prefix), "a"),
                (encode_invite_link("a", host, port, prefix), None, FORM_LINK, derive_pair_key(prefix), "a"),
                (format_pair_code(prefix), f"a@{host}:{port}", FORM_PAIR_CODE, derive_pair_key(prefix), "a"),
                (encode_relay_code(host, port, seed), None, FORM_RELAY_CODE, derive_seed_key(seed), None),
                (encode_word_phrase(host, port, seed), None, FORM_WORDS, derive_seed_key(seed), None),
            ]
            for text, peer, form, key, identity in cases:
                self.assertEqual(
                    parse_join_input(text, peer), Invite(host, port, key, identity, form), text
                )

    def test_pairCodeSpellings(self):
        """
        A pair code may be written with or without dashes, in any case.
        """
        for text in ["0001-0203-0405-0607", "0001020304050607", "0001 0203 0405 0607", "ABCD-EF01-2345-6789"]:
            self.assertTrue(looks_like_pair_code(text), text)
            self.assertEqual(parse_join_input(text, "n@h:1").key, parse_pair_code(text))

    def test_notPairCodes(self):
        """
        Relay codes (even all hex letters and digits), word phrases and
        links are not taken for pair codes.
        """
        for text in [
            "YCU-ACM-UAA-AAQ-EAY",
            "ACE-BAD-CAB-222-333",
            "nut-may-act-dub-jag-ace-act-age-aid",
            "ace-add-bad-bed-cab-dab-fab-fed-bee",
            "cctl://n@h:1/k/0001020304050607",
            "",
        ]:
            self.assertFalse(looks_like_pair_code(text), text)

    def assertMalformed(self, message: str, text: str, peer: str | None = None) -> None:
        error = self.assertRaises(InvalidCode, parse_join_input, text, peer)
        self.assertIn(message, str(error))
        self.assertNotIn("\n", str(error))

    def test_malformed(self):
        """
        Every malformed input is refused with one line naming what is wrong.
        """
        self.assertMalformed("unknown word 'xyz'", "nut-may-act-dub-jag-ace-act-age-xyz")
        self.assertMalformed("wrong length for a word phrase (got 8", "nut-may-act-dub-jag-ace-act-age")
        self.assertMalformed("wrong length for a relay code (got 14", "YCU-ACM-UAA-AAQ-EA")
        self.assertMalformed("bad character '1' in relay code", "YCU-ACM-UAA-AAQ-EA1")
        self.assertMalformed("bad last character 'Z'", "YCU-ACM-UAA-AAQ-EAZ")
        self.assertMalformed("empty invite", "   ")
        self.assertMalformed("missing '/k/'", "cctl://laptop@10.0.0.7:9847")
        self.assertMalformed("bad key code", "relaymesh://n@h:1/k/0001")

    def test_pairCodeNeedsPeer(self):
        """
        A bare pair code needs C{--peer ID@HOST:PORT}; a short one is
        refused with its length.
        """
        self.assertMalformed("a pair code needs --peer ID@HOST:PORT", "0001-0203-0405-0607")
        self.assertMalformed("a pair code has 16 hex digits, found 15", "0001-0203-0405-060")
        self.assertMalformed("a pair code has 16 hex digits, found 15", "0001-0203-0405-060", "n@h:1")
        self.assertMalformed("a pair code has 16 hex digits, found 17", "0001-0203-0405-06078", "n@h:1")

    def test_badPeer(self):
        """
        C{--peer} must name the node and parse as an address; it goes only
        with a pair code.
        """
        self.assertMalformed("--peer needs the node's id too: ID@h:1", "0001-0203-0405-0607", "h:1")
        self.assertMalformed("--peer:", "0001-0203-0405-0607", "n@h:99999")
        self.assertMalformed("--peer goes only with a pair code", "YCU-ACM-UAA-AAQ-EAY", "n@h:1")
        self.assertMalformed(
            "--peer goes only with a pair code", "relaymesh://n@h:1/k/0001020304050607", "n@h:1"
        )

    def test_peerDefaultPort(self):
        """
        C{--peer} without a port means 9847.
        """
        self.assertEqual(parse_join_input("0001020304050607", "n@10.0.0.7").addr, "10.0.0.7:9847")


class MakeInviteTests(SynchronousTestCase):
    """
    Tests for L{make_invite}: every printed form pairs.
    """

    def make(self, host="192.168.1.50", port=9847, expires_in=DEFAULT_EXPIRY):
        return make_invite(
            "laptop-a3f2", host, port, EPOCH, expires_in, randbytes=fixed_random(PREFIX, SEED)
        )

    def test_forms(self):
        """
        The links and pair code carry the 8-byte prefix; the relay code and
        word phrase a separate 4-byte seed.
        """
        invite = self.make()
        self.assertEqual(invite.relaymesh_link, "relaymesh://laptop-a3f2@192.168.1.50:9847/k/0001020304050607")
        self.assertEqual(invite.link, "cctl://laptop-a3f2@192.168.1.50:9847/k/0001020304050607")
        self.assertEqual(invite.pair_code, "0001-0203-0405-0607")
        self.assertEqual(invite.relay_code, encode_relay_code("192.168.1.50", 9847, SEED))
        self.assertEqual(invite.words, encode_word_phrase("192.168.1.50", 9847, SEED))
        self.assertEqual(invite.peer, "laptop-a3f2@192.168.1.50:9847")
        self.assertEqual(invite.expires_at, EPOCH + 600)
        self.assertEqual(
            invite.keys,
            ((ARMED_INVITE, derive_pair_key(PREFIX)), (ARMED_INVITE_LEGACY, derive_seed_key(SEED))),
        )

    def test_everyFormDecodesToAnArmedKey(self):
        """
        Whatever form a peer uses, claudectl's decoder (and ours) derives a
        key the invite arms, and the address the invite names.
        """
        for host, port in [("192.168.1.50", 9847), ("10.0.0.7", 9900), ("127.0.0.1", 10102)]:
            invite = make_invite("laptop-a3f2", host, port, EPOCH)
            armed = {key for _, key in invite.keys}
            for text, peer in [
                (invite.relaymesh_link, None),
                (invite.link, None),
                (invite.pair_code, invite.peer),
                (invite.relay_code, None),
                (invite.words, None),
            ]:
                decoded = parse_join_input(text, peer)
                self.assertIn(decoded.key, armed, text)
                self.assertEqual(decoded.addr, f"{host}:{port}")
            self.assertEqual(decode_invite(invite.relay_code).key, decode_invite(invite.words).key)

    def test_seedIsNotPartOfPairCode(self):
        """
        The 32-bit forms do not give away half of the 64-bit code.
        """
        invite = make_invite("n", "10.0.0.7", 9847, EPOCH, randbytes=fixed_random(PREFIX, PREFIX[:4]))
        self.assertEqual(invite.keys[1][1], derive_seed_key(PREFIX[:4]))
        invite = make_invite("n", "10.0.0.7", 9847, EPOCH)
        self.assertNotEqual(decode_invite(invite.relay_code).key[:4], invite.keys[0][1][:4])

    def test_noLegacyForms(self):
        """
        A host name, an IPv6 address or a port a relay code cannot carry
        leaves the 32-bit forms out, says why, and arms only the link's key.
        """
        for host, port, reason in [
            ("relay.example.com", 9847, "carry an IP address"),
            ("::1", 9847, "cannot carry the IPv6 address"),
            ("10.0.0.7", 9975, "bad port 9975"),
            ("10.0.0.7", 443, "bad port 443"),
        ]:
            invite = self.make(host, port)
            self.assertIsNone(invite.relay_code)
            self.assertIsNone(invite.words)
            self.assertIn(reason, invite.no_legacy_reason)
            self.assertEqual([form for form, _ in invite.keys], [ARMED_INVITE])
        self.assertEqual(self.make("::1").relaymesh_link, "relaymesh://laptop-a3f2@[::1]:9847/k/0001020304050607")

    def test_badHost(self):
        """
        A host that is neither an IP address nor a host name is refused.
        """
        self.assertRaises(InvalidCode, self.make, "bad host")
        self.assertRaises(InvalidCode, self.make, "10.0.0.7", 0)


class DefaultHostTests(SynchronousTestCase):
    """
    Tests for L{default_invite_host}.
    """

    def test_firstNonLoopback(self):
        self.assertEqual(default_invite_host(lambda: ["127.0.0.1", "192.168.1.50", "10.0.0.7"]), "192.168.1.50")

    def test_linkLocalLast(self):
        self.assertEqual(default_invite_host(lambda: ["169.254.3.4", "10.0.0.7"]), "10.0.0.7")
        self.assertEqual(default_invite_host(lambda: ["169.254.3.4"]), "169.254.3.4")

    def test_none(self):
        """
        With only loopback (or junk), the user is told to use C{--host}.
        """
        error = self.assertRaises(
            InvalidCode, default_invite_host, lambda: ["127.0.0.1", "127.0.1.1", "0.0.0.0", "junk"]
        )
        self.assertIn("--host", str(error))

    def test_realMachine(self):
        """
        On this machine it either finds an address or says to use C{--host}.
        """
        try:
            host = default_invite_host()
        except InvalidCode:
            return
        self.assertFalse(host.startswith("127."))


class ArmedKeysTests(SynchronousTestCase):
    """
    Tests for the armed keys in L{KeyStore}.
    """

    def setUp(self):
        self.path = self.mktemp()
        self.store = KeyStore(self.path)

    def peersDir(self) -> list[str]:
        return sorted(os.listdir(os.path.join(self.path, "peers")))

    def test_arm(self):
        """
        The first key is the pending key; the others sit beside it in files
        no peer id can name; all expire together.
        """
        self.store.arm([("invite", KEY), ("invite_legacy", OTHER)], expires_at=EPOCH + 600)
        self.assertEqual(self.peersDir(), ["_pending.invite_legacy.key", "_pending.key", "_pending.meta"])
        self.assertEqual(self.store.pending_key(), KEY)
        self.assertEqual(
            self.store.armed_keys(EPOCH),
            [ArmedKey("invite", KEY), ArmedKey("invite_legacy", OTHER, "invite_legacy")],
        )
        self.assertEqual(self.store.armed_until(), EPOCH + 600)
        self.assertEqual(self.store.peers(), [])
        for name in self.peersDir():
            mode = os.stat(os.path.join(self.path, "peers", name)).st_mode & 0o777
            self.assertEqual(mode, 0o600, name)

    def test_noteHoldsNoKey(self):
        """
        The note names the forms and the expiry, never a key.
        """
        self.store.arm([("invite", KEY), ("invite_legacy", OTHER)], expires_at=EPOCH + 600)
        with open(os.path.join(self.path, "peers", "_pending.meta")) as f:
            text = f.read()
        self.assertNotIn(KEY.hex(), text)
        self.assertNotIn(OTHER.hex(), text)
        self.assertEqual(json.loads(text)["slots"], ["invite_legacy"])

    def test_expiry(self):
        """
        At the expiry every armed key is removed, the pending key included.
        """
        self.store.arm([("invite", KEY), ("invite_legacy", OTHER)], expires_at=EPOCH + 600)
        self.assertEqual(len(self.store.armed_keys(EPOCH + 599.999)), 2)
        self.assertEqual(self.store.armed_keys(EPOCH + 600), [])
        self.assertEqual(self.peersDir(), [])
        self.assertIsNone(self.store.pending_key())

    def test_noExpiry(self):
        """
        Keys armed without an expiry, and a pending key armed the way
        claudectl and C{relaymesh pair} do it, never expire.
        """
        self.store.arm([("invite", KEY)])
        self.assertEqual(self.store.armed_keys(EPOCH * 10), [ArmedKey("invite", KEY)])
        self.assertIsNone(self.store.armed_until())
        self.store.set_pending_key(OTHER)
        self.assertEqual(self.store.armed_keys(EPOCH * 10), [ArmedKey(PAIR_CODE_FORM, OTHER)])

    def test_replacedPendingKey(self):
        """
        When the pending key is replaced (by C{relaymesh pair} or by
        claudectl), the invite's extra keys go, and its expiry no longer
        applies to the new pending key.
        """
        self.store.arm([("invite", KEY), ("invite_legacy", OTHER)], expires_at=EPOCH + 600)
        self.store.set_pending_key(bytes(32))
        self.assertEqual(self.store.armed_keys(EPOCH + 1000), [ArmedKey(PAIR_CODE_FORM, bytes(32))])
        self.assertEqual(self.peersDir(), ["_pending.key"])

    def test_claimedPendingKey(self):
        """
        When the pending key is gone (claimed by a claudectl sharing the
        directory), the invite's extra keys go too.
        """
        self.store.arm([("invite", KEY), ("invite_legacy", OTHER)], expires_at=EPOCH + 600)
        self.store.claim_pending_key("someone")
        self.assertEqual(self.store.armed_keys(EPOCH), [])
        self.assertEqual(self.peersDir(), ["someone.key"])

    def test_claim(self):
        """
        Claiming any armed key stores it for the peer, records when and how
        it paired, and disarms every key.
        """
        for form, key, slot in [("invite", KEY, None), ("invite_legacy", OTHER, "invite_legacy")]:
            store = KeyStore(self.mktemp())
            store.arm([("invite", KEY), ("invite_legacy", OTHER)], expires_at=EPOCH + 600)
            self.assertEqual(store.claim_armed_key("beta", ArmedKey(form, key, slot), EPOCH + 1), key)
            self.assertEqual(store.key("beta"), key)
            self.assertEqual(store.meta("beta"), {"paired_at": int((EPOCH + 1) * 1000), "paired_via": form})
            self.assertEqual(store.armed_keys(EPOCH + 1), [])
            self.assertEqual(sorted(os.listdir(os.path.join(store.path, "peers"))), ["beta.key", "beta.meta"])

    def test_claimGone(self):
        """
        A key that is no longer armed cannot be claimed.
        """
        self.store.arm([("invite", KEY)])
        self.assertIsNone(self.store.claim_armed_key("beta", ArmedKey("invite", OTHER), EPOCH))
        self.assertEqual(self.store.pending_key(), KEY)
        self.store.disarm()
        self.assertIsNone(self.store.claim_armed_key("beta", ArmedKey("invite", KEY), EPOCH))
        self.assertIsNone(self.store.key("beta"))

    def test_armReplaces(self):
        """
        Arming again replaces every armed key.
        """
        self.store.arm([("invite", KEY), ("invite_legacy", OTHER)], expires_at=EPOCH + 600)
        self.store.arm([("invite", OTHER)], expires_at=EPOCH + 60)
        self.assertEqual(self.store.armed_keys(EPOCH), [ArmedKey("invite", OTHER)])
        self.assertEqual(self.peersDir(), ["_pending.key", "_pending.meta"])

    def test_disarm(self):
        self.assertFalse(self.store.disarm())
        self.store.arm([("invite", KEY), ("invite_legacy", OTHER)])
        self.assertTrue(self.store.disarm())
        self.assertEqual(self.peersDir(), [])

    def test_badArm(self):
        """
        Forms must be simple names, once each; keys 32 bytes.
        """
        for keys in [[], [("in.vite", KEY)], [("a", KEY), ("a", OTHER)], [("a", KEY[:5])], [("A", KEY)]]:
            self.assertRaises(ValueError, self.store.arm, keys)

    def test_damagedNote(self):
        """
        A damaged note leaves the pending key as a plain one and drops the
        extra keys it can no longer vouch for.
        """
        self.store.arm([("invite", KEY), ("invite_legacy", OTHER)], expires_at=EPOCH + 600)
        with open(os.path.join(self.path, "peers", "_pending.meta"), "w") as f:
            f.write("{not json")
        self.assertEqual(self.store.armed_keys(EPOCH), [ArmedKey(PAIR_CODE_FORM, KEY)])

    def test_insecureExtraKey(self):
        """
        An extra key file others can read is refused, as any key file.
        """
        from relaymesh.keystore import InsecureKeyFile

        self.store.arm([("invite", KEY), ("invite_legacy", OTHER)])
        os.chmod(os.path.join(self.path, "peers", "_pending.invite_legacy.key"), 0o644)
        self.assertRaises(InsecureKeyFile, self.store.armed_keys, EPOCH)

    def test_forgetRemovesEveryPeerFile(self):
        """
        C{forget} removes the peer's key, meta (with a pinned certificate)
        and any other C{peers/<id>.*} file, and nobody else's.
        """
        self.store.set_key("a", KEY)
        self.store.update_meta("a", fingerprint="sha256:00")
        self.store.set_key("a-b", KEY)
        self.store.arm([("invite", OTHER)])
        with open(os.path.join(self.path, "peers", "a.cert.pem"), "w") as f:
            f.write("pinned")
        self.assertTrue(self.store.forget("a"))
        self.assertEqual(self.peersDir(), ["_pending.key", "_pending.meta", "a-b.key"])
        self.assertFalse(self.store.forget("a"))


class AcceptorArmedKeyTests(SynchronousTestCase):
    """
    L{AcceptorHandshake} tries every armed key for a peer without a key.
    """

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.clock.advance(EPOCH)
        self.keys = MemoryKeys({"beta": KEY})
        self.keys.arm([("invite", OTHER), ("invite_legacy", bytes(32))], expires_at=EPOCH + 600)

    def verify(self, peer: str, key: bytes) -> Authenticated:
        acceptor = AcceptorHandshake(self.keys, clock=self.clock)
        outcome = acceptor.verify(handshake(peer, key, acceptor.nonce)).outcome
        assert outcome is not None
        pairing.record(self.keys, outcome, self.clock.seconds())
        return outcome

    def test_eachArmedKey(self):
        """
        Each armed key pairs; the peer gets it, all are disarmed, and its
        meta says when and how.
        """
        for key, form in [(OTHER, "invite"), (bytes(32), "invite_legacy")]:
            self.setUp()
            outcome = self.verify("newcomer", key)
            self.assertEqual(outcome.peer_id, "newcomer")
            self.assertEqual(outcome.paired_via, form)
            self.assertEqual(self.keys.keys["newcomer"], key)
            self.assertEqual(self.keys.armed_keys(EPOCH), [])
            self.assertEqual(
                self.keys.meta_updates,
                [
                    ("newcomer", {"paired_at": int(EPOCH * 1000), "paired_via": form}),
                    # proved in claudectl's one-way form: a legacy peer's key
                    ("newcomer", {"legacy": True}),
                ],
            )

    def test_onlyOnce(self):
        """
        After one peer paired, the other armed keys no longer work.
        """
        self.verify("first", OTHER)
        error = self.assertRaises(HandshakeFailed, self.verify, "second", bytes(32))
        self.assertIn("no key for peer second", str(error))

    def test_expired(self):
        """
        Once the expiry passes on the node's clock, no armed key works.
        """
        self.clock.advance(600)
        self.assertRaises(HandshakeFailed, self.verify, "newcomer", OTHER)
        self.assertNotIn("newcomer", self.keys.keys)
        self.assertIsNone(self.keys.pending)

    def test_knownPeerNeverTriesArmedKeys(self):
        """
        A peer with a key proves that key; armed keys do not stand in.
        """
        self.assertRaises(HandshakeFailed, self.verify, "beta", OTHER)
        self.assertEqual(len(self.keys.armed_keys(EPOCH)), 2)

    def test_keyStore(self):
        """
        With a real key store and its clock, the same holds.
        """
        store = KeyStore(self.mktemp())
        store.arm([("invite", OTHER), ("invite_legacy", bytes(32))], expires_at=EPOCH + 600)
        acceptor = AcceptorHandshake(store, clock=self.clock)
        outcome = acceptor.verify(handshake("gamma", bytes(32), acceptor.nonce)).outcome
        self.assertEqual(outcome.peer_id, "gamma")
        self.assertIsNone(store.key("gamma"))  # the role itself writes nothing
        pairing.record(store, outcome, self.clock.seconds())
        self.assertEqual(store.key("gamma"), bytes(32))
        self.assertEqual(store.meta("gamma")["paired_via"], "invite_legacy")
        self.assertIsNone(store.pending_key())

    def test_pairStillWorks(self):
        """
        A key armed by C{relaymesh pair} (no expiry) still pairs much later.
        """
        keys = MemoryKeys(pending=OTHER)
        self.clock.advance(86400 * 365)
        acceptor = AcceptorHandshake(keys, clock=self.clock)
        outcome = acceptor.verify(handshake("n", OTHER, acceptor.nonce)).outcome
        self.assertEqual(outcome.peer_id, "n")
        self.assertEqual(outcome.paired_via, PAIR_CODE_FORM)


class JoinTests(SynchronousTestCase):
    """
    L{join_directly} against an inviting node, joined in memory.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(EPOCH)
        self.storeA = KeyStore(self.mktemp())
        self.storeA.set_identity("alpha")
        self.alpha = Node("alpha", self.reactor, keys=self.storeA)
        self.storeB = KeyStore(self.mktemp())
        self.storeB.set_identity("beta")

    def invite(self, host="10.0.0.2", port=9847):
        invite = make_invite("alpha", host, port, self.reactor.seconds())
        arm_invite(self.storeA, invite)
        return invite

    def join(self, invite: Invite):
        """
        Start a join and connect it to alpha in memory.

        @return: the join's L{Deferred}, and the pump (or L{None}).
        """
        d = join_directly(self.storeB, invite, self.reactor)
        host, port, factory, timeout, _ = self.reactor.tcpClients[-1]
        self.assertEqual((host, port, timeout), (invite.host, invite.port, 10))
        self.factory = factory
        address = IPv4Address("TCP", "10.0.0.9", 40000)
        server = self.alpha.server.buildProtocol(address)
        client = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.client = client
        # the bytes (and the TLS upgrade) go over an in-memory link
        network = MemoryNetwork()
        network.join(server, client, address, IPv4Address("TCP", host, port))
        network.flush()
        factory.clientConnectionLost(None, Failure(ConnectionRefusedError()))
        return d

    def test_strongLink(self):
        """
        The strong link pairs by SPAKE2: both sides store the same new key,
        which is none of the invite's 64-bit or 32-bit keys, and the code
        and every other armed key are used up.
        """
        printed = self.invite()
        result = self.successResultOf(self.join(parse_join_input(printed.strong_link)))
        self.assertEqual(result, JoinResult("alpha", "10.0.0.2:9847", FORM_STRONG_LINK))
        key = self.storeB.key("alpha")
        self.assertEqual(key, self.storeA.key("beta"))
        self.assertNotIn(key, [k for _, k in printed.keys])
        self.assertEqual(self.storeA.meta("beta")["paired_via"], "strong_code")
        self.assertFalse(self.storeB.meta("alpha")["legacy"])
        self.assertFalse(self.storeA.strong_code_armed(self.reactor.seconds()))

    def test_strongCodeWrongGuess(self):
        """
        A wrong strong code fails, and uses the code up.
        """
        printed = self.invite()
        number, *words = printed.strong_code.split("-")
        wrong = "-".join([str(int(number) % 999 + 1)] + words)
        self.failureResultOf(self.join(parse_join_input(wrong, "alpha@10.0.0.2:9847")), JoinError)
        self.assertIsNone(self.storeB.key("alpha"))
        self.assertFalse(self.storeA.strong_code_armed(self.reactor.seconds()))

    def test_everyForm(self):
        """
        Each printed form pairs: both sides store the same key, and each
        records when and how.
        """
        for pick, peer, form, armed in [
            (lambda i: i.relaymesh_link, None, FORM_RELAYMESH_LINK, ARMED_INVITE),
            (lambda i: i.link, None, FORM_LINK, ARMED_INVITE),
            (lambda i: i.pair_code, "alpha@10.0.0.2:9847", FORM_PAIR_CODE, ARMED_INVITE),
            (lambda i: i.relay_code, None, FORM_RELAY_CODE, ARMED_INVITE_LEGACY),
            (lambda i: i.words, None, FORM_WORDS, ARMED_INVITE_LEGACY),
        ]:
            self.setUp()
            printed = self.invite()
            result = self.successResultOf(self.join(parse_join_input(pick(printed), peer)))
            self.assertEqual(result, JoinResult("alpha", "10.0.0.2:9847", form))
            self.assertEqual(result.peer, "alpha@10.0.0.2:9847")
            self.assertEqual(self.storeB.key("alpha"), self.storeA.key("beta"))
            self.assertEqual(
                self.storeB.meta("alpha"),
                {
                    "addr": "10.0.0.2:9847",
                    "paired_at": int(EPOCH * 1000),
                    "paired_via": form,
                    "legacy": False,  # a relaymesh node proved the key back
                    # over the TLS it upgraded to, with this certificate
                    "tls_fingerprint": self.alpha.certificate.fingerprint,
                },
            )
            self.assertEqual(self.storeA.meta("beta")["paired_via"], armed)
            self.assertEqual(self.storeA.armed_keys(EPOCH), [])
            self.assertIs(self.client.state, State.CLOSED)
            self.assertEqual(self.client.close_reason, "paired")

    def test_usedInvite(self):
        """
        Once one form paired, another form of the same invite is refused,
        and the joiner says why.
        """
        printed = self.invite()
        self.successResultOf(self.join(parse_join_input(printed.link)))
        self.storeB.forget("alpha")
        self.storeA.forget("beta")
        failure = self.failureResultOf(self.join(parse_join_input(printed.relaymesh_link)), JoinDenied)
        self.assertIn("refused the key: the invite may have expired", str(failure.value))
        self.assertIsNone(self.storeB.key("alpha"))

    def test_expired(self):
        """
        After its expiry the invite no longer works.
        """
        printed = self.invite()
        self.reactor.advance(DEFAULT_EXPIRY)
        failure = self.failureResultOf(self.join(parse_join_input(printed.link)), JoinDenied)
        self.assertIn("expired", str(failure.value))
        self.assertEqual(self.storeA.peers(), [])

    def test_claudectlRelayCodeDenied(self):
        """
        A node that arms only the pair code's key, as claudectl 0.49.2 does,
        refuses its relay code's key; the joiner says that claudectl relay
        codes cannot pair and that its invite link does. The link pairs.
        """
        vector = VECTORS["invites"][1]
        self.storeA.set_pending_key(bytes.fromhex(vector["canonical_psk"]))
        for field in ("relay_code", "word_phrase"):
            failure = self.failureResultOf(self.join(parse_join_input(vector[field])), JoinDenied)
            message = str(failure.value)
            self.assertIn("claudectl 0.49 relay codes and word phrases cannot pair", message)
            self.assertIn("join with its invite link (cctl://...) instead", message)
            self.assertNotIn("\n", message)
        self.reactor.advance(60)  # past the lockout window of the failures
        invite = parse_join_input(vector["invite_link"].replace("laptop-a3f2", "alpha"))
        self.assertEqual(self.successResultOf(self.join(invite)).peer_id, "alpha")

    def test_wrongPeer(self):
        """
        A link names the node that must answer.
        """
        printed = self.invite()
        invite = parse_join_input(printed.link.replace("alpha@", "gamma@"))
        failure = self.failureResultOf(self.join(invite), JoinError)
        self.assertIn("expected peer gamma but alpha answered", str(failure.value))
        self.assertIsNone(self.storeB.key("alpha"))

    def test_ownInvite(self):
        """
        A node cannot join its own invite.
        """
        invite = make_invite("beta", "10.0.0.2", 9847, EPOCH)
        failure = self.failureResultOf(join_directly(self.storeB, parse_join_input(invite.link), self.reactor), JoinError)
        self.assertIn("from this node itself", str(failure.value))

    def test_cannotConnect(self):
        """
        A refused connection is reported with the address.
        """
        invite = parse_join_input(self.invite().link)
        d = join_directly(self.storeB, invite, self.reactor)
        factory = self.reactor.tcpClients[-1][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        failure = self.failureResultOf(d, JoinError)
        self.assertIn("cannot connect to 10.0.0.2:9847: Connection was refused", str(failure.value))

    def test_timeout(self):
        """
        A join that gets no answer gives up after 30 s.
        """
        invite = parse_join_input(self.invite().link)
        d = join_directly(self.storeB, invite, self.reactor)
        factory = self.reactor.tcpClients[-1][2]
        self.reactor.advance(JOIN_TIMEOUT - 0.001)
        self.assertNoResult(d)
        self.reactor.advance(0.001)
        self.assertNoResult(d)  # it waits for the connection to close
        factory.clientConnectionFailed(None, Failure(UserError()))
        failure = self.failureResultOf(d, JoinError)
        self.assertEqual(str(failure.value), "no answer from 10.0.0.2:9847 within 30 s")

    def test_closedBeforeChallenge(self):
        """
        A node that closes at once (a lockout, its peer limit) is reported.
        """
        invite = parse_join_input(self.invite().link)
        d = join_directly(self.storeB, invite, self.reactor)
        factory = self.reactor.tcpClients[-1][2]
        client = factory.buildProtocol(IPv4Address("TCP", "10.0.0.2", 9847))
        from twisted.internet.testing import StringTransport

        client.makeConnection(StringTransport())
        client.connectionLost(Failure(ConnectionRefusedError()))
        factory.clientConnectionLost(None, Failure(ConnectionRefusedError()))
        failure = self.failureResultOf(d, JoinError)
        self.assertIn("closed the connection before the handshake", str(failure.value))


if TYPE_CHECKING:
    # what the mixin expects of the test case it is mixed into
    _CaseBase = SynchronousTestCase
else:
    _CaseBase = object


class CommandTestsMixin(_CaseBase):
    """
    Run C{relaymesh} in-process against a fresh data directory, with the
    clock and the reactor work replaced.
    """

    def setUp(self):
        self.dataDir = os.path.join(self.mktemp(), "data")
        self.store = KeyStore(self.dataDir)
        self.store.set_identity("laptop-a3f2")
        self.patch(cli_pairing, "clock", lambda: EPOCH)

    def runCommand(self, *argv: str) -> tuple[int, str, str]:
        stdout, stderr = StringIO(), StringIO()
        status = main([*argv, "--data-dir", self.dataDir], stdout=stdout, stderr=stderr)
        return status, stdout.getvalue(), stderr.getvalue()

    def assertSucceeds(self, *argv: str) -> str:
        status, out, err = self.runCommand(*argv)
        self.assertEqual((status, err), (0, ""))
        return out

    def assertFailsWith(self, message: str, *argv: str) -> str:
        status, out, err = self.runCommand(*argv)
        self.assertEqual((status, out), (2, ""), err)
        self.assertTrue(err.startswith("relaymesh: error: "), err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn(message, err)
        return err


class InviteCommandTests(CommandTestsMixin, SynchronousTestCase):
    """
    Tests for C{relaymesh invite}.
    """

    def invite(self, *args: str) -> dict:
        invite: dict = json.loads(self.assertSucceeds("invite", "--json", "--host", "192.168.1.50", *args))
        return invite

    def test_json(self):
        """
        Every form, the address, the expiry and the command to run.
        """
        result = self.invite()
        self.assertEqual(result["identity"], "laptop-a3f2")
        self.assertEqual((result["host"], result["port"], result["addr"]), ("192.168.1.50", 9847, "192.168.1.50:9847"))
        self.assertEqual(result["expires_in"], 600)
        self.assertEqual(result["expires_at"], cli_base.format_last_seen(int((EPOCH + 600) * 1000)))
        self.assertRegex(result["relaymesh_link"], r"\Arelaymesh://laptop-a3f2@192\.168\.1\.50:9847/k/[0-9a-f]{16}\Z")
        self.assertEqual(result["link"], "cctl://" + result["relaymesh_link"][len("relaymesh://"):])
        self.assertEqual(result["link"][-16:], result["pair_code"].replace("-", ""))
        self.assertEqual(result["peer"], "laptop-a3f2@192.168.1.50:9847")
        self.assertRegex(result["relay_code"], r"\A[A-Z2-7]{3}(-[A-Z2-7]{3}){4}\Z")
        self.assertEqual(len(result["words"].split("-")), 9)
        self.assertEqual(result["legacy_forms"], ["relay_code", "words"])
        self.assertRegex(result["strong_link"], r"\Arelaymesh://laptop-a3f2@192\.168\.1\.50:9847/s/\d+-[a-z]+-[a-z]+\Z")
        self.assertTrue(result["strong_link"].endswith("/s/" + result["strong_code"]))
        self.assertEqual(result["join"], "relaymesh join " + result["strong_link"])

    def test_armsEveryPrintedForm(self):
        """
        The key of every printed form is armed, until the expiry.
        """
        result = self.invite("--expires", "2")
        armed = {a.key for a in self.store.armed_keys(EPOCH)}
        for text, peer in [
            (result["relaymesh_link"], None),
            (result["link"], None),
            (result["pair_code"], result["peer"]),
            (result["relay_code"], None),
            (result["words"], None),
        ]:
            self.assertIn(parse_join_input(text, peer).key, armed)
        self.assertEqual(self.store.armed_until(), EPOCH + 120)
        self.assertEqual(self.store.armed_keys(EPOCH + 120), [])

    def test_text(self):
        """
        The text names the identity and every form, marks the 32-bit
        forms as legacy, and says what to run on the other node.
        """
        out = self.assertSucceeds("invite", "--host", "192.168.1.50", "--port", "9900")
        lines = out.splitlines()
        self.assertEqual(lines[0], "Identity:        laptop-a3f2")
        self.assertEqual(lines[1], "Address:         192.168.1.50:9900")
        self.assertEqual(lines[2], "Expires:         2026-11-26T18:57:46Z (in 10 minutes)")
        self.assertRegex(out, r"Strong link:     relaymesh://laptop-a3f2@192\.168\.1\.50:9900/s/\S+ \(one try; relaymesh only\)\n")
        self.assertRegex(out, r"relaymesh link:  relaymesh://laptop-a3f2@192\.168\.1\.50:9900/k/[0-9a-f]{16} \(64-bit\)\n")
        self.assertRegex(out, r"cctl:// link:    cctl://laptop-a3f2@192\.168\.1\.50:9900/k/[0-9a-f]{16}\n")
        self.assertRegex(out, r"Pair code:       [0-9a-f-]{19} \(with --peer laptop-a3f2@192\.168\.1\.50:9900\)\n")
        self.assertRegex(out, r"Relay code:      [A-Z2-7-]{19} \(32-bit legacy form\)\n")
        self.assertRegex(out, r"Word phrase:     [a-z-]+ \(32-bit legacy form\)\n")
        self.assertRegex(out, r"On the other node, run: relaymesh join relaymesh://\S+\n")
        self.assertRegex(out, r"From claudectl, run:    claudectl relay join cctl://\S+\n")

    def test_words(self):
        """
        C{--words} suggests the word phrase.
        """
        result = self.invite("--words")
        self.assertEqual(result["join"], "relaymesh join " + result["words"])

    def test_hostName(self):
        """
        With a host name there is no relay code or word phrase, and only the
        link's key is armed; C{--words} is then an error.
        """
        result = self.invite("--host", "relay.example.com")
        self.assertEqual((result["relay_code"], result["words"], result["legacy_forms"]), (None, None, []))
        self.assertEqual([a.form for a in self.store.armed_keys(EPOCH)], ["invite"])
        out = self.assertSucceeds("invite", "--host", "relay.example.com")
        self.assertIn("Relay code:      none: relay codes and word phrases carry an IP address", out)
        self.assertFailsWith("--words: no word phrase for this address", "invite", "--host", "relay.example.com", "--words")

    def test_badOptions(self):
        """
        A bad host, port or expiry is a one-line error, and nothing is armed.
        """
        self.assertFailsWith("bad host 'bad_host'", "invite", "--host", "bad_host")
        for args in (["--port", "0"], ["--port", "x"], ["--expires", "0"], ["--expires", "soon"]):
            status, out, err = self.runCommand("invite", "--host", "10.0.0.7", *args)
            self.assertEqual(status, 2)
            self.assertIn("relaymesh invite: error: argument", err)
        self.assertEqual(self.store.armed_keys(EPOCH), [])

    def test_defaultHost(self):
        """
        Without C{--host} the first non-loopback IPv4 address is used.
        """
        self.patch(cli_pairing, "default_invite_host", lambda: "10.9.8.7")
        self.assertEqual(json.loads(self.assertSucceeds("invite", "--json"))["host"], "10.9.8.7")

    def test_noAddress(self):
        """
        Without any usable address, the user is told to pass C{--host}.
        """

        def none():
            raise InvalidCode("found no non-loopback IPv4 address to invite to; give one with --host")

        self.patch(cli_pairing, "default_invite_host", none)
        self.assertFailsWith("give one with --host", "invite")

    def test_qr(self):
        """
        C{--qr} draws the strong link's QR code: light modules as blocks,
        two rows a line.
        """
        requireModules("qrcode")
        stdout, stderr = StringIO(), StringIO()
        main(["invite", "--qr", "--host", "10.0.0.7", "--data-dir", self.dataDir], stdout=stdout, stderr=stderr)
        out = stdout.getvalue()
        link = out.split("Strong link:     ")[1].split(" ")[0]
        matrix = cli_pairing.qr_matrix(link)
        drawn = out[: out.index("Identity:")]
        self.assertEqual(drawn, cli_pairing.render_qr(matrix))
        self.assertEqual(_undraw(drawn, len(matrix[0])), [[bool(m) for m in row] for row in matrix])

    def test_qrAscii(self):
        """
        Where the output cannot show block characters, C{##} draws a module.
        """
        matrix = [[True, False], [False, True]]
        self.assertEqual(cli_pairing.render_qr(matrix, "ascii"), "  ##\n##\n")
        self.assertEqual(cli_pairing.render_qr(matrix, "utf-8"), "\u2584\u2580\n")

    def test_qrJson(self):
        """
        With C{--json} the drawing is in the C{qr} field.
        """
        requireModules("qrcode")
        result = self.invite("--qr")
        self.assertEqual(result["qr"], cli_pairing.render_qr(cli_pairing.qr_matrix(result["strong_link"])))

    def test_qrPng(self):
        """
        C{--qr-png FILE} saves the code as a PNG file.
        """
        requireModules("qrcode", "png")
        path = self.mktemp() + ".png"
        result = self.invite("--qr-png", path)
        self.assertEqual(result["qr_png"], path)
        with open(path, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        out = self.assertSucceeds("invite", "--host", "10.0.0.7", "--qr-png", path)
        self.assertIn(f"QR code of the strong link saved to {path}.", out)

    def test_qrMissing(self):
        """
        Without the qrcode package, C{--qr} says how to install it, and
        nothing is armed.
        """
        saved = sys.modules.get("qrcode")
        sys.modules["qrcode"] = None
        self.addCleanup(
            lambda: sys.modules.pop("qrcode") if saved is None else sys.modules.__setitem__("qrcode", saved)
        )
        self.assertFailsWith(
            "--qr needs the qrcode package: pip install 'relaymesh[qr]'", "invite", "--qr", "--host", "10.0.0.7"
        )
        self.assertFailsWith("pip install 'relaymesh[qr]'", "invite", "--qr-png", "x.png", "--host", "10.0.0.7")
        self.assertEqual(self.store.armed_keys(EPOCH), [])


def _undraw(drawn: str, width: int) -> list[list[bool]]:
    """
    Read a drawn QR code back into modules (C{True} for dark).
    """
    upper = {"\u2588": False, "\u2580": False, "\u2584": True, " ": True}
    lower = {"\u2588": False, "\u2580": True, "\u2584": False, " ": True}
    rows = []
    for line in drawn.splitlines():
        line = line.ljust(width)
        rows.append([upper[c] for c in line])
        rows.append([lower[c] for c in line])
    return rows[: width]


class JoinCommandTests(CommandTestsMixin, SynchronousTestCase):
    """
    Tests for C{relaymesh join}, with the network part replaced.
    """

    def setUp(self):
        CommandTestsMixin.setUp(self)
        self.joined: list[Invite] = []
        self.patch(cli_pairing, "run_reactor", self.runNow)
        self.patch(cli_pairing, "join_directly", self.fakeJoin)
        self.patch(cli_pairing, "local_node", lambda data_dir, identity, *node_options: None)

    def runNow(self, work):
        """
        Run reactor work that finishes at once: its result, or its error.
        """
        outcome = []
        work(None).addBoth(outcome.append)
        [result] = outcome
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def fakeJoin(self, store, invite, reactor, certificate=None, replace=False):
        self.joined.append(invite)
        return succeed(JoinResult(invite.identity or "alpha", invite.addr, invite.form))

    def test_paired(self):
        """
        It prints C{Paired with ID (HOST:PORT)} and how to keep connected.
        """
        out = self.assertSucceeds("join", "cctl://alpha@10.0.0.2:9900/k/0001020304050607")
        self.assertEqual(
            out,
            "Paired with alpha (10.0.0.2:9900)\n"
            "A node started on this key store dials alpha@10.0.0.2:9900 (its address is remembered).\n",
        )
        self.assertEqual(self.joined, [parse_join_input("cctl://alpha@10.0.0.2:9900/k/0001020304050607")])

    def test_json(self):
        out = self.assertSucceeds("join", "--json", "YCU-ACM-UAA-AAQ-EAY")
        self.assertEqual(
            json.loads(out),
            {
                "peer_id": "alpha",
                "addr": "192.168.1.50:9847",
                "peer": "alpha@192.168.1.50:9847",
                "form": "relay_code",
                "paired_via": "relay code",
                "node_dialling": False,
                "replaced": False,
            },
        )

    def test_pairCodeWithPeer(self):
        out = self.assertSucceeds("join", "0001-0203-0405-0607", "--peer", "alpha@10.0.0.2")
        self.assertEqual(out.splitlines()[0], "Paired with alpha (10.0.0.2:9847)")
        self.assertEqual(self.joined[0].key, parse_pair_code("0001-0203-0405-0607"))

    def test_runningNodeDials(self):
        """
        When a node runs on this key store, it is asked to dial the peer.
        """
        asked = []
        self.patch(cli_pairing, "local_node", lambda data_dir, identity, *node_options: (data_dir, identity))
        self.patch(cli_pairing, "ask_node_to_dial", lambda node, result: asked.append((node, result)) or True)
        out = self.assertSucceeds("join", "relaymesh://alpha@10.0.0.2:9900/k/0001020304050607")
        self.assertEqual(out, "Paired with alpha (10.0.0.2:9900)\nThe running node is connecting to alpha.\n")
        self.assertEqual(asked, [((self.dataDir, "laptop-a3f2"), JoinResult("alpha", "10.0.0.2:9900", FORM_RELAYMESH_LINK))])

    def test_malformed(self):
        """
        Every malformed input is one error line, exit status 2, and nothing
        is tried.
        """
        for message, args in [
            ("unknown word 'xyz' in word phrase", ["nut-may-act-dub-jag-ace-act-age-xyz"]),
            ("wrong length for a word phrase (got 8, want 9 words)", ["nut-may-act-dub-jag-ace-act-age"]),
            ("wrong length for a relay code (got 14, want 15 characters)", ["YCU-ACM-UAA-AAQ-EA"]),
            ("bad character '1' in relay code", ["YCU-ACM-UAA-AAQ-EA1"]),
            ("bad key code in invite link", ["cctl://alpha@10.0.0.2:9847/k/0001"]),
            ("bad port 0 in invite link", ["relaymesh://alpha@10.0.0.2:0/k/0001020304050607"]),
            ("a pair code needs --peer ID@HOST:PORT", ["0001-0203-0405-0607"]),
            ("a pair code has 16 hex digits, found 15", ["0001-0203-0405-060", "--peer", "a@h"]),
            ("empty invite", [""]),
        ]:
            self.assertFailsWith(message, "join", *args)
        self.assertEqual(self.joined, [])

    def test_denied(self):
        """
        A refused key is one error line, exit status 2.
        """

        def denied(store, invite, reactor, certificate=None, replace=False):
            from twisted.internet.defer import fail

            return fail(JoinDenied("10.0.0.2:9847 refused the key of this relay code: ..."))

        self.patch(cli_pairing, "join_directly", denied)
        self.assertFailsWith("refused the key of this relay code", "join", "YCU-ACM-UAA-AAQ-EAY")


class PeersAndForgetTests(CommandTestsMixin, SynchronousTestCase):
    """
    C{peers} shows when and how each peer paired; C{forget} removes all
    that is kept for a peer.
    """

    def setUp(self):
        CommandTestsMixin.setUp(self)
        from relaymesh.cli import live as cli_live

        self.patch(cli_live, "live_peers", lambda context, args: False)

    def test_pairedColumns(self):
        self.store.set_key("beta", KEY)
        self.store.update_meta("beta", paired_at=1764180000000, paired_via="invite_legacy")
        self.store.set_key("gamma", KEY)
        self.store.update_meta("gamma", paired_at=1764180060000, paired_via="relaymesh_link", addr="10.0.0.2:9847")
        out = self.assertSucceeds("peers")
        self.assertEqual(
            out,
            "PEER ID  ADDRESS        SOURCE  LAST SEEN  PAIRED                VIA\n"
            "beta     -              -       never      2025-11-26T18:00:00Z  relay code or word phrase\n"
            "gamma    10.0.0.2:9847  -       never      2025-11-26T18:01:00Z  relaymesh link\n"
            "Pending pairing key: none\n",
        )
        peers = json.loads(self.assertSucceeds("peers", "--json"))["peers"]
        self.assertEqual(
            [(p["paired_at"], p["paired_via"]) for p in peers],
            [("2025-11-26T18:00:00Z", "invite_legacy"), ("2025-11-26T18:01:00Z", "relaymesh_link")],
        )

    def test_pendingExpiry(self):
        """
        An armed invite shows its expiry; an expired one shows as none.
        """
        import time

        now = time.time()
        self.store.arm([("invite", KEY)], expires_at=now + 600)
        out = self.assertSucceeds("peers")
        until = cli_base.format_last_seen(int((now + 600) * 1000))
        self.assertTrue(out.endswith(f"Pending pairing key: armed until {until}\n"), out)
        self.assertEqual(json.loads(self.assertSucceeds("peers", "--json"))["pending_expires_at"], until)
        self.store.arm([("invite", KEY)], expires_at=now - 1)
        self.assertTrue(self.assertSucceeds("peers").endswith("Pending pairing key: none\n"))

    def test_forgetEverything(self):
        """
        C{forget} removes the key, meta and other files of the peer, and
        runs the forget hooks (an outbox, say).
        """
        self.store.set_key("beta", KEY)
        self.store.update_meta("beta", fingerprint="sha256:" + "0" * 64)
        with open(os.path.join(self.dataDir, "peers", "beta.cert"), "w") as f:
            f.write("pinned")
        hooked = []
        self.patch(cli_keys, "FORGET_HOOKS", [lambda context, peer_id: hooked.append(peer_id) or False])
        self.assertEqual(self.assertSucceeds("forget", "beta"), "Forgot beta.\n")
        self.assertEqual(os.listdir(os.path.join(self.dataDir, "peers")), [])
        self.assertEqual(hooked, ["beta"])

    def test_forgetOnlyHooked(self):
        """
        A peer known only to a hook (say, with an outbox left) is forgotten.
        """
        self.patch(cli_keys, "FORGET_HOOKS", [lambda context, peer_id: True])
        self.assertEqual(self.assertSucceeds("forget", "beta"), "Forgot beta.\n")
        self.patch(cli_keys, "FORGET_HOOKS", [])
        self.assertFailsWith("no such peer: beta", "forget", "beta")


class ForgetOutboxTests(TestCase):
    """
    C{forget} drops the peer's messages waiting in the outbox.
    """

    timeout = 20

    @defer.inlineCallbacks
    def test_forgetOutbox(self):
        """
        Only the forgotten peer's messages are dropped.
        """
        try:
            from relaymesh.reliable.store import STORE_FILE, OutboxEntry, open_store
        except ImportError:
            raise SkipTest("no outbox in this relaymesh") from None
        from twisted.internet import reactor

        dataDir = self.mktemp()
        os.makedirs(dataDir)
        path = os.path.join(dataDir, STORE_FILE)
        store = yield open_store(path, reactor)
        for msg_id, peer in [("m1", "beta"), ("m2", "beta"), ("m3", "gamma")]:
            yield store.put(OutboxEntry(msg_id, peer, "alpha", "delegate_task", b"{}", 1.0, 2.0))
        yield store.close()
        dropped = yield cli_keys.forget_outbox(dataDir, "beta", reactor)
        self.assertEqual(dropped, 2)
        store = yield open_store(path, reactor)
        left = yield store.pending()
        yield store.close()
        self.assertEqual([entry.msg_id for entry in left], ["m3"])

    def test_hook(self):
        """
        The hook runs only where there is an outbox, and says whether it
        dropped anything.
        """
        context = cli_base.Context(self.mktemp(), False, StringIO(), StringIO())
        ran = []
        self.patch(cli_keys, "run_reactor", lambda work: ran.append(work) or 2)
        self.assertFalse(cli_keys.forget_outbox_hook(context, "beta"))
        self.assertEqual(ran, [])
        try:
            from relaymesh.reliable.store import STORE_FILE
        except ImportError:
            raise SkipTest("no outbox in this relaymesh") from None
        os.makedirs(context.data_dir)
        open(os.path.join(context.data_dir, STORE_FILE), "wb").close()
        self.assertTrue(cli_keys.forget_outbox_hook(context, "beta"))
        self.assertEqual(len(ran), 1)
        self.assertIn(cli_keys.forget_outbox_hook, cli_keys.FORGET_HOOKS)
