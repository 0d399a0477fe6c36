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

import json
import os
import subprocess
import sys
import time

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

import relaymesh
from relaymesh import pairing
from relaymesh.handshake.acceptor import AcceptorHandshake
from relaymesh.handshake.proofs import compute_proof
from relaymesh.invite import make_invite
from relaymesh.join import JoinError
from relaymesh.joinforms import parse_join_input
from relaymesh.keystore import ArmedKey, InviteUsed, KeyStore, UsedInvite
from relaymesh.test.joinsupport import FORMS, InvitingNode
from relaymesh.test.support import EPOCH
from relaymesh.wire import RelayMessage

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
                    self.assertIn("this invite was already used: beta paired with its strong code at", reason, case)
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


class ReportedPairsTests(SynchronousTestCase):
    """
    The pairs of forms as they were reported: each second join is refused
    with one line saying the invite was used, by whom and when, and pairs
    nothing.
    """

    AT = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(EPOCH))

    def secondJoin(self, first: str, second: str, second_peer: str | None = None) -> str:
        """
        Join beta with the form C{first} of one invite, then gamma with the
        form C{second}; return alpha's refusal of gamma.
        """
        alpha = InvitingNode(self)
        printed = alpha.invite()
        peer = "alpha@10.0.0.2:9847"
        beta, gamma = alpha.joiner("beta"), alpha.joiner("gamma")
        first_text = getattr(printed, first)
        first_peer = peer if first in ("pair_code", "strong_code") else None
        self.successResultOf(alpha.join(beta, parse_join_input(first_text, first_peer)))
        d = alpha.join(gamma, parse_join_input(getattr(printed, second), second_peer))
        self.failureResultOf(d, JoinError)
        self.assertEqual(alpha.store.peers(), ["beta"])
        self.assertIsNone(gamma.key("alpha"))
        self.assertEqual(alpha.store.armed_keys(alpha.reactor.seconds()), [])
        self.assertFalse(alpha.store.strong_code_armed(alpha.reactor.seconds()))
        [reason] = alpha.denials()
        self.assertNotIn("\n", reason)
        return reason

    def test_strongLinkThenKeyLink(self):
        """
        After a join with the strong link, the C{/k/} link of the same
        invite pairs nobody, and the refusal names the peer the strong code
        paired.
        """
        reason = self.secondJoin("strong_link", "relaymesh_link")
        self.assertIn(f"this invite was already used: beta paired with its strong code at {self.AT}", reason)

    def test_strongCodeThenStrongLink(self):
        """
        After a join with the bare strong code, the strong link is refused,
        naming beta.
        """
        reason = self.secondJoin("strong_code", "strong_link")
        self.assertIn(f"this invite was already used: beta paired with its strong code at {self.AT}", reason)

    def test_strongPairingNamedOnlyWhenAccepted(self):
        """
        The used note of a strong code attempt names the peer it paired
        only on the node that accepted it, and only for an attempt of the
        last minute: an old attempt's note, or one that names a peer
        already, is left as it is.
        """
        store = KeyStore(self.mktemp())
        invite = make_invite("alpha", "10.0.0.2", 9847, EPOCH)
        store.arm(list(invite.keys), invite.expires_at, invite.strong_code)
        self.assertEqual(store.take_strong_code(EPOCH), invite.strong_code)
        self.assertFalse(store.note_strong_pairing("beta", EPOCH + 61))
        self.assertIsNone(store.used_invite(EPOCH + 61).peer_id)
        self.assertTrue(store.note_strong_pairing("beta", EPOCH + 5))
        self.assertEqual(store.used_invite(EPOCH + 5).peer_id, "beta")
        self.assertFalse(store.note_strong_pairing("gamma", EPOCH + 6))
        self.assertEqual(store.used_invite(EPOCH + 6).peer_id, "beta")

    def test_pairCodeThenStrongLink(self):
        """
        After a join with the pair code, the strong link pairs nobody, and
        the refusal names the peer that used the invite and when.
        """
        reason = self.secondJoin("pair_code", "strong_link")
        self.assertIn(f"this invite was already used: beta paired with its link or pair code at {self.AT}", reason)

    def test_keyLinkThenPairCode(self):
        """
        After a join with the C{/k/} link, the pair code (the same key) is
        refused as used, naming beta.
        """
        reason = self.secondJoin("relaymesh_link", "pair_code", "alpha@10.0.0.2:9847")
        self.assertIn(f"this invite was already used: beta paired with its link or pair code at {self.AT}", reason)

    def test_wordPhraseThenStrongCode(self):
        """
        After a join with claudectl's word phrase, the strong code is
        refused, naming beta.
        """
        reason = self.secondJoin("words", "strong_code", "alpha@10.0.0.2:9847")
        self.assertIn(f"this invite was already used: beta paired with its relay code or word phrase at {self.AT}", reason)


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

    def test_claudectlTakesPendingKeyStrongCodeDisarmed(self):
        """
        Once claudectl has taken the pending key, the invite's strong code
        is no longer armed, before anything tries it: the invite is used.
        """
        store = KeyStore(self.mktemp())
        invite = make_invite("alpha", "10.0.0.2", 9847, EPOCH)
        store.arm(list(invite.keys), invite.expires_at, invite.strong_code)
        self.assertTrue(store.strong_code_armed(EPOCH))
        os.unlink(os.path.join(store.path, "peers", "_pending.key"))  # claudectl's claim
        self.assertFalse(store.strong_code_armed(EPOCH))
        self.assertIsNone(store.take_strong_code(EPOCH))

    def test_strongCodeAloneStaysArmedAfterClaudectl(self):
        """
        A strong code armed on its own (C{pair --strong}) is no invite's:
        claudectl taking the pending key leaves it armed.
        """
        store = KeyStore(self.mktemp())
        store.set_pending_key(bytes(32))
        store.arm_strong_code("7-gem-oak", EPOCH + 600)
        os.unlink(os.path.join(store.path, "peers", "_pending.key"))
        self.assertTrue(store.strong_code_armed(EPOCH))


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
        for _round in range(2):
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


#: When the invites armed below are made, and when they expire.
ARMED_AT = 1000.0
EXPIRES_AT = 1600.0

#: Keys of the invites armed below: the pending key's, and the other form's.
PENDING_KEY = bytes(range(32))
LEGACY_KEY = bytes(range(200, 232))
NEW_KEY = bytes(range(100, 132))


def arm(
    store: KeyStore,
    strong_code: str | None = "7-ace-act",
    keys=(("invite", PENDING_KEY), ("invite_legacy", LEGACY_KEY)),
):
    """
    Arm an invite of two keys, and a strong code, as C{relaymesh invite}.

    @return: its armed keys.
    """
    store.arm(list(keys), EXPIRES_AT, strong_code)
    return store.armed_keys(ARMED_AT)


def files_of(path: str) -> list[str]:
    """
    The names in a data directory and its C{peers} directory, sorted.
    """
    names = sorted(os.listdir(path))
    if "peers" in names:
        names += ["peers/" + name for name in sorted(os.listdir(os.path.join(path, "peers")))]
    return names


def ticket_of(store: KeyStore) -> str:
    """
    The name of the one invite ticket in a data directory.
    """
    names: list[str] = [n for n in os.listdir(store.path) if n.startswith("invite-") and n.endswith(".ticket")]
    [name] = names
    return name


def take_ticket_elsewhere(store: KeyStore) -> None:
    """
    Do what another process does first when it claims the armed invite:
    take its ticket (rename C{invite-<id>.ticket} to C{invite-<id>.taken}).
    """
    name = ticket_of(store)
    os.rename(os.path.join(store.path, name), os.path.join(store.path, name[: -len(".ticket")] + ".taken"))


def interleave(test: SynchronousTestCase, obj, name: str, action, after: bool = False) -> None:
    """
    Run C{action} (what another process does meanwhile) once, just before
    (or just after) the next call of C{obj.name}.
    """
    real = getattr(obj, name)
    todo = [action]

    def wrapper(*args, **kwargs):
        if todo and not after:
            todo.pop()()
        result = real(*args, **kwargs)
        if todo and after:
            todo.pop()()
        return result

    test.patch(obj, name, wrapper)


IN_USE = "this invite was already used: another pairing took it a moment ago; make a new invite"


class ClaimUnderWayTests(SynchronousTestCase):
    """
    While another process is claiming the invite (it took the ticket and
    has not finished), nothing else of the invite is handed out, and what
    asks is told.
    """

    def setUp(self):
        self.store = KeyStore(self.mktemp())
        self.armed = arm(self.store)
        take_ticket_elsewhere(self.store)

    def test_nothingListed(self):
        """
        No key is listed, and nothing is removed: the claim under way
        disarms the invite when it is done.
        """
        before = files_of(self.store.path)
        self.assertEqual(self.store.armed_keys(ARMED_AT), [])
        self.assertEqual(files_of(self.store.path), before)

    def test_expired(self):
        """
        Once the invite has expired, listing disarms all of it.
        """
        self.assertEqual(self.store.armed_keys(EXPIRES_AT), [])
        self.assertEqual(files_of(self.store.path), ["peers"])

    def test_claimsRefused(self):
        """
        A key claim, a connector's claim of the pending key and a strong
        code attempt are each refused as a use under way; nothing is stored.
        """
        [pending, legacy] = self.armed
        for claim in [
            lambda: self.store.claim_armed_key("gamma", legacy, ARMED_AT),
            lambda: self.store.claim_armed_key("gamma", pending, ARMED_AT),
            lambda: self.store.claim_pending_key("gamma"),
            lambda: self.store.take_strong_code(ARMED_AT),
        ]:
            error = self.assertRaises(InviteUsed, claim)
            self.assertEqual(str(error), IN_USE)
            self.assertEqual(error.used.form, "in_use")
        self.assertEqual(self.store.peers(), [])
        # The code's file stays for the claim under way to remove, but no
        # attempt can use the code: it is not armed.
        self.assertTrue(os.path.exists(os.path.join(self.store.path, "strong-code")))
        self.assertFalse(self.store.strong_code_armed(ARMED_AT))

    def test_strongCodeTakenToo(self):
        """
        When the other process took the strong code as well, a strong code
        attempt is still told the invite is being used.
        """
        os.unlink(os.path.join(self.store.path, "strong-code"))
        error = self.assertRaises(InviteUsed, self.store.take_strong_code, ARMED_AT)
        self.assertEqual(str(error), IN_USE)

    def test_pairReplaces(self):
        """
        A key armed by C{relaymesh pair} meanwhile is not the invite's: it
        is listed.
        """
        self.store.set_pending_key(NEW_KEY)
        self.assertEqual(self.store.armed_keys(ARMED_AT), [ArmedKey("pair_code", NEW_KEY)])


class StrongCodeGoneTests(SynchronousTestCase):
    """
    A strong code attempt that finds no code armed.
    """

    def setUp(self):
        self.store = KeyStore(self.mktemp())

    def test_inviteWithoutStrongCode(self):
        """
        An invite without a strong code being claimed elsewhere is not the
        attempt's business: there is simply no code.
        """
        arm(self.store, strong_code=None)
        take_ticket_elsewhere(self.store)
        self.assertIsNone(self.store.take_strong_code(ARMED_AT))

    def test_deletedByHand(self):
        """
        An invite's strong code deleted by hand: there is no code, and the
        invite's keys are still armed.
        """
        armed = arm(self.store)
        os.unlink(os.path.join(self.store.path, "strong-code"))
        self.assertIsNone(self.store.take_strong_code(ARMED_AT))
        self.assertEqual(self.store.armed_keys(ARMED_AT), armed)

    def test_armNotFinished(self):
        """
        While C{arm} has not issued the invite's ticket yet (its last step),
        the code is not handed out.
        """
        arm(self.store)
        os.unlink(os.path.join(self.store.path, ticket_of(self.store)))
        self.assertIsNone(self.store.take_strong_code(ARMED_AT))
        self.assertEqual(self.store.peers(), [])


class NoteGoneTests(SynchronousTestCase):
    """
    The armed keys' note deleted by hand: the invite is over, and using what
    is left of it leaves nothing behind.
    """

    def setUp(self):
        self.store = KeyStore(self.mktemp())
        self.armed = arm(self.store)
        os.unlink(os.path.join(self.store.peers_path(), "_pending.meta"))

    def test_claim(self):
        """
        A key claim gets nothing, and its ticket is not left taken: a later
        claim is not told a use is under way.
        """
        [_, legacy] = self.armed
        self.assertIsNone(self.store.claim_armed_key("gamma", legacy, ARMED_AT))
        self.assertIsNone(self.store.claim_armed_key("gamma", legacy, ARMED_AT))
        self.assertEqual([n for n in os.listdir(self.store.path) if n.startswith("invite-")], [])
        self.assertEqual(self.store.peers(), [])

    def test_strongCode(self):
        """
        A strong code attempt gets nothing and uses the code up.
        """
        self.assertIsNone(self.store.take_strong_code(ARMED_AT))
        self.assertFalse(self.store.strong_code_armed(ARMED_AT))
        self.assertEqual([n for n in os.listdir(self.store.path) if n.startswith("invite-")], [])


class RaceTests(SynchronousTestCase):
    """
    Another process acting on the data directory in the middle of a claim.
    """

    def setUp(self):
        self.path = self.mktemp()
        self.first, self.second = KeyStore(self.path), KeyStore(self.path)

    def rearmStrongCode(self) -> None:
        """
        Arm a new strong code on its own from the other process.
        """
        self.second.arm_strong_code("9-new-one", None)

    def test_newInviteDuringClaim(self):
        """
        A new invite armed by another process just after a claim of the old
        one took its ticket is left whole: the claim gets nothing.
        """
        [_, legacy] = arm(self.first)
        new = [("invite", NEW_KEY), ("invite_legacy", bytes(32))]
        interleave(self, self.first.pairing.tickets, "take", lambda: arm(self.second, keys=new), after=True)
        self.assertIsNone(self.first.claim_armed_key("gamma", legacy, ARMED_AT))
        self.assertEqual([a.key for a in self.second.armed_keys(ARMED_AT)], [NEW_KEY, bytes(32)])
        self.assertEqual(self.second.peers(), [])

    def test_newInviteDuringStrongCode(self):
        """
        The same for a strong code attempt on the old invite: the new
        invite's keys and strong code stay armed.
        """
        arm(self.first)
        new = [("invite", NEW_KEY), ("invite_legacy", bytes(32))]
        interleave(
            self, self.first.pairing.tickets, "take", lambda: arm(self.second, "9-new-one", new), after=True
        )
        self.assertIsNone(self.first.take_strong_code(ARMED_AT))
        self.assertEqual([a.key for a in self.second.armed_keys(ARMED_AT)], [NEW_KEY, bytes(32)])
        self.assertEqual(self.second.take_strong_code(ARMED_AT), "9-new-one")

    def test_newStrongCodeDuringAttempt(self):
        """
        A strong code armed on its own by another process while an attempt
        takes the one it read is not that attempt's: it stays armed, and the
        attempt gets nothing.
        """
        self.first.arm_strong_code("7-gem-oak", EXPIRES_AT)
        interleave(self, self.first.pairing.strong_code, "read", self.rearmStrongCode, after=True)
        self.assertIsNone(self.first.take_strong_code(ARMED_AT))
        self.assertEqual(self.second.take_strong_code(ARMED_AT), "9-new-one")
        self.assertEqual(os.listdir(self.path), [])

    def test_newStrongCodeAtExpiry(self):
        """
        The same when the code read had expired.
        """
        self.first.arm_strong_code("7-gem-oak", ARMED_AT)
        interleave(self, self.first.pairing.strong_code, "read", self.rearmStrongCode, after=True)
        self.assertIsNone(self.first.take_strong_code(ARMED_AT))
        self.assertEqual(self.second.take_strong_code(ARMED_AT), "9-new-one")

    def test_pairDuringExpiry(self):
        """
        A pending key armed by C{relaymesh pair} in another process while
        an expired invite is being disarmed stays armed.
        """
        arm(self.first)
        interleave(self, self.first.pairing.tickets, "take", lambda: self.second.set_pending_key(NEW_KEY))
        self.assertEqual(self.first.armed_keys(EXPIRES_AT), [])
        self.assertEqual(self.second.armed_keys(EXPIRES_AT), [ArmedKey("pair_code", NEW_KEY)])

    def test_strongCodeAloneTwice(self):
        """
        Of two attempts at once with a strong code armed on its own, one
        gets it.
        """
        self.first.arm_strong_code("7-gem-oak", EXPIRES_AT)
        def otherAttempt():
            self.assertEqual(self.second.take_strong_code(ARMED_AT), "7-gem-oak")

        interleave(self, self.first.pairing.strong_code, "read", otherAttempt, after=True)
        self.assertIsNone(self.first.take_strong_code(ARMED_AT))
        self.assertEqual(os.listdir(self.path), [])

    def test_connectorRefusedWithoutTime(self):
        """
        A connector's claim of the pending key (made without the time) that
        loses the invite to another process is told who used it.
        """
        arm(self.first)
        [_, legacy] = self.second.armed_keys(ARMED_AT)
        def otherClaim():
            self.second.claim_armed_key("beta", legacy, ARMED_AT)

        interleave(self, self.first.pairing.tickets, "take", otherClaim)
        error = self.assertRaises(InviteUsed, self.first.claim_pending_key, "gamma")
        self.assertIn("beta paired with its relay code or word phrase", str(error))
        self.assertEqual(self.first.peers(), ["beta"])


class UsedNoteTests(SynchronousTestCase):
    """
    The note of who used the last invite.
    """

    def setUp(self):
        self.store = KeyStore(self.mktemp())
        self.notePath = os.path.join(self.store.path, "invite-used")

    def test_expires(self):
        """
        The use is told until the invite would have expired; then the note
        is removed, and a claim of another of its keys gets nothing.
        """
        [pending, legacy] = arm(self.store)
        self.store.claim_armed_key("beta", pending, ARMED_AT)
        self.assertEqual(self.store.used_invite(EXPIRES_AT - 1).expires_at, EXPIRES_AT)
        self.assertIsNone(self.store.claim_armed_key("gamma", legacy, EXPIRES_AT))
        self.assertIsNone(self.store.used_invite(EXPIRES_AT))
        self.assertNotIn("invite-used", os.listdir(self.store.path))

    def test_removedWhenRead(self):
        """
        A note read past the invite's expiry is removed.
        """
        [pending, _] = arm(self.store)
        self.store.claim_armed_key("beta", pending, ARMED_AT)
        self.assertIsNone(self.store.used_invite(EXPIRES_AT))
        self.assertEqual(files_of(self.store.path), ["peers", "peers/beta.key", "peers/beta.meta"])

    def test_otherInvite(self):
        """
        A key of an old invite claimed after a new invite was used is simply
        no longer armed: the new invite's use is not its.
        """
        [_, old] = arm(self.store)
        [new, _] = arm(self.store, keys=(("invite", NEW_KEY), ("invite_legacy", bytes(32))))
        self.store.claim_armed_key("beta", new, ARMED_AT)
        self.assertIsNone(self.store.claim_armed_key("gamma", old, ARMED_AT))

    def test_damaged(self):
        """
        A damaged note tells nothing; a peer id that is not text is left
        out.
        """
        valid = {
            "invite": "0123456789abcdef",
            "form": "invite",
            "peer_id": "beta",
            "at": 1.0,
            "expires_at": None,
        }
        os.makedirs(self.store.path)
        for note in [
            [valid],
            dict(valid, invite="../../x"),
            dict(valid, invite=12),
            dict(valid, invite="0123456789ABCDEF"),
            dict(valid, form=5),
            dict(valid, invite=None, form="invite"),
        ]:
            with open(self.notePath, "w") as f:
                json.dump(note, f)
            self.assertIsNone(self.store.used_invite(ARMED_AT), note)
        with open(self.notePath, "w") as f:
            json.dump(dict(valid, peer_id=5), f)
        self.assertEqual(
            self.store.used_invite(ARMED_AT),
            UsedInvite("0123456789abcdef", "invite", None, 1.0, None, False),
        )


class DescribeTests(SynchronousTestCase):
    """
    Tests for L{UsedInvite.describe}: one line saying how and when.
    """

    def test_forms(self):
        """
        Each form reads as what the user handed out.
        """
        at = 1764180000.0
        for form, how in [
            ("invite", "its link or pair code"),
            ("invite_legacy", "its relay code or word phrase"),
            ("pair_code", "its pair code"),
            ("strong_code", "its strong code"),
            ("other", "other"),
        ]:
            self.assertEqual(
                UsedInvite("0123456789abcdef", form, "beta", at, None, False).describe(),
                f"this invite was already used: beta paired with {how} "
                f"at 2025-11-26 18:00:00 UTC; make a new invite",
            )

    def test_nobody(self):
        """
        Without a peer: a strong code was tried, another form was used; and
        without a time, no time is said.
        """
        self.assertEqual(
            UsedInvite("0123456789abcdef", "strong_code", None, None, None, True).describe(),
            "this invite was already used: its strong code was tried; make a new invite",
        )
        self.assertEqual(
            UsedInvite("0123456789abcdef", "invite", None, 0.0, None, False).describe(),
            "this invite was already used: its link or pair code was used "
            "at 1970-01-01 00:00:00 UTC; make a new invite",
        )
