"""
An invite is used once, whichever of its forms is used.

The attack replayed here: C{relaymesh invite} armed one key per form (the
strong link and code, the C{/k/} and C{cctl://} links and the pair code,
the relay code and the word phrase), and after one peer joined with one
form, another peer could still join with another (the strong code and the
key forms were armed separately). Now the first join with any form uses up
every form of the invite, atomically, also across processes sharing the
data directory; a later join is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

import relaymesh
from relaymesh import pairing
from relaymesh.handshake.acceptor import AcceptorHandshake
from relaymesh.handshake.proofs import compute_proof
from relaymesh.invite import make_invite
from relaymesh.join import JoinError
from relaymesh.joinforms import parse_join_input
from relaymesh.keystore import ArmedKey, InviteUsed, KeyStore
from relaymesh.test.joinsupport import InvitingNode
from relaymesh.test.support import EPOCH
from relaymesh.wire import RelayMessage

#: Every form of an invite: a name, how to read it from the printed
#: invite, and the --peer a bare code needs.
FORMS = [
    ("strong link", lambda i: i.strong_link, None),
    ("strong code", lambda i: i.strong_code, "alpha@10.0.0.2:9847"),
    ("relaymesh link", lambda i: i.relaymesh_link, None),
    ("cctl:// link", lambda i: i.link, None),
    ("pair code", lambda i: i.pair_code, "alpha@10.0.0.2:9847"),
    ("relay code", lambda i: i.relay_code, None),
    ("word phrase", lambda i: i.words, None),
]

STRONG_FORMS = ("strong link", "strong code")


class EveryFormOnceTests(SynchronousTestCase):
    """
    Over whole joins: after one peer joined with any form, no other form of
    the invite pairs anyone else.
    """

    def test_secondFormRefused(self):
        """
        For every first form and every other second form: the second join
        fails, the second peer gets no key on either side, and the inviting
        node's refusal says the invite was used where it tried the strong
        code.
        """
        for first_name, first, first_peer in FORMS:
            for second_name, second, second_peer in FORMS:
                if second_name == first_name:
                    continue
                case = f"{first_name}, then {second_name}"
                alpha = InvitingNode(self)
                printed = alpha.invite()
                beta, gamma = alpha.joiner("beta"), alpha.joiner("gamma")
                self.successResultOf(alpha.join(beta, parse_join_input(first(printed), first_peer)))
                self.assertEqual(alpha.store.peers(), ["beta"], case)
                d = alpha.join(gamma, parse_join_input(second(printed), second_peer))
                self.failureResultOf(d, JoinError)
                self.assertEqual(alpha.store.peers(), ["beta"], case)
                self.assertIsNone(gamma.key("alpha"), case)
                [reason] = alpha.denials()
                if second_name in STRONG_FORMS and first_name in STRONG_FORMS:
                    self.assertIn("this invite was already used: its strong code was tried at", reason, case)
                elif second_name in STRONG_FORMS:
                    self.assertIn("this invite was already used: beta paired with", reason, case)
                else:
                    # a key form after the invite's use: no key matches, and
                    # the refusal says why
                    self.assertTrue(reason.startswith("no key for peer gamma: this invite was already used:"), case)
                self.assertEqual(alpha.store.armed_keys(alpha.reactor.seconds()), [], case)
                self.assertFalse(alpha.store.strong_code_armed(alpha.reactor.seconds()), case)

    def test_sameFormAgain(self):
        """
        The same form twice is refused too.
        """
        for name, pick, peer in FORMS:
            alpha = InvitingNode(self)
            printed = alpha.invite()
            self.successResultOf(alpha.join(alpha.joiner("beta"), parse_join_input(pick(printed), peer)))
            gamma = alpha.joiner("gamma")
            self.failureResultOf(alpha.join(gamma, parse_join_input(pick(printed), peer)), JoinError)
            self.assertEqual(alpha.store.peers(), ["beta"], name)

    def test_wrongStrongCodeUsesItUp(self):
        """
        A strong code attempt uses the invite up even when it fails: the
        inviting node cannot tell a typing error from someone guessing, and
        the weaker forms of an invite someone is guessing at should not stay
        armed. The joiner is told; the link then no longer pairs.
        """
        alpha = InvitingNode(self)
        printed = alpha.invite()
        number, *words = printed.strong_code.split("-")
        wrong = "-".join([str(int(number) % 999 + 1)] + words)
        beta = alpha.joiner("beta")
        self.failureResultOf(alpha.join(beta, parse_join_input(wrong, "alpha@10.0.0.2:9847")), JoinError)
        self.assertEqual(alpha.store.armed_keys(alpha.reactor.seconds()), [])
        used = alpha.store.used_invite(alpha.reactor.seconds())
        self.assertEqual((used.form, used.peer_id), ("strong_code", None))
        self.failureResultOf(alpha.join(beta, parse_join_input(printed.link)), JoinError)
        self.assertEqual(alpha.store.peers(), [])

    def test_newInviteWorks(self):
        """
        A new invite after a used one pairs, and forgets the old one's use.
        """
        alpha = InvitingNode(self)
        old = alpha.invite()
        self.successResultOf(alpha.join(alpha.joiner("beta"), parse_join_input(old.strong_link)))
        new = alpha.invite()
        self.assertIsNone(alpha.store.used_invite(alpha.reactor.seconds()))
        gamma = alpha.joiner("gamma")
        self.failureResultOf(alpha.join(gamma, parse_join_input(old.link)), JoinError)
        self.successResultOf(alpha.join(gamma, parse_join_input(new.link)))
        self.assertEqual(alpha.store.peers(), ["beta", "gamma"])


def proof_for(acceptor: AcceptorHandshake, peer: str, key: bytes) -> RelayMessage:
    """
    claudectl's one-way C{handshake} proving C{key} as C{peer}.
    """
    return RelayMessage("m1", "handshake", peer, 1, {"proof": compute_proof(key, acceptor.nonce), "version": "x"})


class InterleavedClaimTests(SynchronousTestCase):
    """
    Two claims of one invite at once, as two processes sharing the data
    directory make them: each has its own L{KeyStore} on the directory, and
    both read the armed keys before either claims.
    """

    def setUp(self):
        self.path = self.mktemp()
        self.first, self.second = KeyStore(self.path), KeyStore(self.path)
        self.invite = make_invite("alpha", "10.0.0.2", 9847, EPOCH)
        self.first.arm(list(self.invite.keys), self.invite.expires_at, self.invite.strong_code)

    def test_twoForms(self):
        """
        Of two claims with two forms, only the first stores a key; the other
        is told who used the invite.
        """
        [pending, legacy] = self.first.armed_keys(EPOCH)
        self.assertEqual(self.second.armed_keys(EPOCH), [pending, legacy])
        self.assertEqual(self.first.claim_armed_key("beta", pending, EPOCH + 1), pending.key)
        error = self.assertRaises(InviteUsed, self.second.claim_armed_key, "gamma", legacy, EPOCH + 2)
        self.assertTrue(
            str(error).startswith("this invite was already used: beta paired with its link or pair code at "),
            str(error),
        )
        self.assertTrue(str(error).endswith("; make a new invite"), str(error))
        self.assertEqual(self.first.peers(), ["beta"])
        self.assertEqual(sorted(os.listdir(os.path.join(self.path, "peers"))), ["beta.key", "beta.meta"])

    def test_handshakes(self):
        """
        Through the acceptor's role and L{pairing.record}, as a node runs
        them: both handshakes prove an armed key, the second is refused
        when it records, with the reason the node logs.
        """
        clock = MemoryReactorClock()
        clock.advance(EPOCH)
        [pending, legacy] = self.first.armed_keys(EPOCH)
        one, two = AcceptorHandshake(self.first, clock=clock), AcceptorHandshake(self.second, clock=clock)
        won = one.verify(proof_for(one, "beta", pending.key)).outcome
        lost = two.verify(proof_for(two, "gamma", legacy.key)).outcome
        pairing.record(self.first, won, EPOCH)
        error = self.assertRaises(pairing.PairingFailed, pairing.record, self.second, lost, EPOCH)
        self.assertIn("this invite was already used: beta paired with", str(error))
        self.assertIsNone(self.second.key("gamma"))

    def test_strongCodeThenKey(self):
        """
        Taking the strong code for an attempt uses the invite: a key claimed
        after is refused, and the strong code went with the invite.
        """
        [pending, _] = self.first.armed_keys(EPOCH)
        self.assertEqual(self.second.take_strong_code(EPOCH + 1), self.invite.strong_code)
        error = self.assertRaises(InviteUsed, self.first.claim_armed_key, "gamma", pending, EPOCH + 2)
        self.assertIn("its strong code was tried at", str(error))
        self.assertIsNone(self.first.key("gamma"))

    def test_keyThenStrongCode(self):
        [pending, _] = self.first.armed_keys(EPOCH)
        self.first.claim_armed_key("beta", pending, EPOCH + 1)
        self.assertFalse(self.second.strong_code_armed(EPOCH + 2))
        error = self.assertRaises(InviteUsed, self.second.take_strong_code, EPOCH + 2)
        self.assertIn("beta paired with", str(error))

    def test_connectorClaimsPending(self):
        """
        A node that dialled with the pending key and had it accepted claims
        it as the connector: that uses the invite up too.
        """
        [_, legacy] = self.first.armed_keys(EPOCH)
        self.assertEqual(self.first.claim_pending_key("beta"), self.invite.keys[0][1])
        self.assertFalse(self.first.strong_code_armed(EPOCH))
        self.assertEqual(self.first.armed_keys(EPOCH), [])
        self.assertRaises(InviteUsed, self.second.claim_armed_key, "gamma", legacy, EPOCH)

    def test_usedNoteExpires(self):
        """
        Who used the invite is told only until it would have expired.
        """
        [pending, legacy] = self.first.armed_keys(EPOCH)
        self.first.claim_armed_key("beta", pending, EPOCH)
        self.assertEqual(self.first.used_invite(EPOCH + 1).peer_id, "beta")
        expiry = self.invite.expires_at
        self.assertIsNone(self.first.used_invite(expiry))
        self.assertIsNone(self.second.claim_armed_key("gamma", legacy, expiry))
        self.assertIsNone(self.second.take_strong_code(expiry))

    def test_failedClaimGivesTicketBack(self):
        """
        A claim that fails before anything is stored (here, the peer's key
        cannot be written) leaves the invite usable.
        """
        armed = self.first.armed_keys(EPOCH)
        pending = armed[0]
        os.makedirs(os.path.join(self.path, "peers", "beta.key"))  # a directory: no key file can go there
        self.assertRaises(OSError, self.first.claim_armed_key, "beta", pending, EPOCH)
        self.assertRaises(ValueError, self.first.claim_armed_key, "not an id", pending, EPOCH)
        self.assertEqual(self.second.armed_keys(EPOCH), armed)
        self.assertTrue(self.second.strong_code_armed(EPOCH))
        self.assertIsNone(self.second.used_invite(EPOCH))
        self.assertEqual(self.second.claim_armed_key("gamma", pending, EPOCH), pending.key)


class AloneTests(SynchronousTestCase):
    """
    What is armed outside an invite keeps its own life.
    """

    def test_strongCodeAlone(self):
        """
        A strong code armed on its own (C{pair --strong}) after an invite is
        not the invite's: using the invite leaves it armed.
        """
        store = KeyStore(self.mktemp())
        invite = make_invite("alpha", "10.0.0.2", 9847, EPOCH)
        store.arm(list(invite.keys), invite.expires_at, invite.strong_code)
        store.arm_strong_code("7-gem-oak", EPOCH + 600)
        [pending, _] = store.armed_keys(EPOCH)
        store.claim_armed_key("beta", pending, EPOCH)
        self.assertEqual(store.take_strong_code(EPOCH), "7-gem-oak")

    def test_pairReplacesInvite(self):
        """
        C{relaymesh pair} after an invite replaces all of it, its strong
        code included; the new pending key pairs as before.
        """
        store = KeyStore(self.mktemp())
        invite = make_invite("alpha", "10.0.0.2", 9847, EPOCH)
        store.arm(list(invite.keys), invite.expires_at, invite.strong_code)
        store.set_pending_key(bytes(32))
        [armed] = store.armed_keys(EPOCH)
        self.assertEqual(armed, ArmedKey("pair_code", bytes(32)))
        self.assertFalse(store.strong_code_armed(EPOCH))
        self.assertEqual(store.claim_armed_key("beta", armed, EPOCH), bytes(32))


    def test_claudectlTakesPendingKey(self):
        """
        claudectl sharing the data directory knows only C{_pending.key}: when
        it takes that key, the invite is over, its strong code and other
        keys with it.
        """
        store = KeyStore(self.mktemp())
        invite = make_invite("alpha", "10.0.0.2", 9847, EPOCH)
        store.arm(list(invite.keys), invite.expires_at, invite.strong_code)
        [_, legacy] = store.armed_keys(EPOCH)
        os.unlink(os.path.join(store.path, "peers", "_pending.key"))  # claudectl's claim
        self.assertIsNone(store.take_strong_code(EPOCH))
        self.assertIsNone(store.claim_armed_key("gamma", legacy, EPOCH))
        self.assertEqual(store.armed_keys(EPOCH), [])
        self.assertEqual(store.peers(), [])
        self.assertFalse(store.strong_code_armed(EPOCH))


#: A claim made by one process: it arms nothing, reads the armed keys,
#: waits for the go file, then claims the key of its form, or takes the
#: strong code; it prints what came of it.
CLAIMANT = """
import os, sys, time
from relaymesh.keystore import InviteUsed, KeyStore
path, go, form, now = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
store = KeyStore(path)
armed = {a.form: a for a in store.armed_keys(now)}
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
try:
    if form == "strong":
        got = store.take_strong_code(now) is not None
    else:
        got = store.claim_armed_key("peer-" + form, armed[form], now) is not None
except InviteUsed:
    print("used")
else:
    print("claimed" if got else "none")
"""


class ProcessesTests(SynchronousTestCase):
    """
    Claims made at once by separate processes on one data directory: one
    gets the invite, whatever forms they use.
    """

    def test_oneWins(self):
        root = os.path.dirname(os.path.dirname(os.path.abspath(relaymesh.__file__)))
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        for round_ in range(2):
            path = self.mktemp()
            store = KeyStore(path)
            invite = make_invite("alpha", "10.0.0.2", 9847, EPOCH)
            store.arm(list(invite.keys), invite.expires_at, invite.strong_code)
            go = os.path.join(path, "go")
            forms = ["invite", "invite_legacy", "strong", "invite", "invite_legacy", "strong"]
            claimants = [
                subprocess.Popen(
                    [sys.executable, "-c", CLAIMANT, path, go, form, str(EPOCH + 1)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=env,
                    text=True,
                )
                for form in forms
            ]
            try:
                for claimant in claimants:
                    self.assertEqual(claimant.stdout.readline(), "ready\n")
                with open(go, "w"):
                    pass
                outcomes = []
                for claimant in claimants:
                    out, err = claimant.communicate(timeout=30)
                    self.assertEqual((claimant.returncode, err), (0, ""))
                    outcomes.append(out.strip())
            finally:
                for claimant in claimants:
                    if claimant.poll() is None:
                        claimant.kill()
                        claimant.wait()
            self.assertEqual(outcomes.count("claimed"), 1, outcomes)
            self.assertEqual(set(outcomes) - {"claimed"}, {"used"}, outcomes)
            self.assertLessEqual(len(store.peers()), 1)
            self.assertEqual(store.armed_keys(EPOCH + 1), [])
            self.assertFalse(store.strong_code_armed(EPOCH + 1))
