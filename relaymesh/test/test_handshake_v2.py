"""
Tests for the rules of handshake v2 (L{relaymesh.handshake}): the in-band
TLS upgrade and the proofs bound to it, what may still be proved in clear
(claudectl's one-way proof, of a key marked legacy or armed), reflected
nonces, and the key a bare dial proves. Most drive the handshake objects
with no I/O, the TLS session stood for by the fingerprints it binds.
"""

import dataclasses
import itertools
import os

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import alsoProvides

from relaymesh import pairing
from relaymesh.connection import State
from relaymesh.handshake.acceptor import AcceptorHandshake, Step
from relaymesh.handshake.base import PENDING_FORM, Authenticated, HandshakeFailed, IssuedNonces, legacy_mark
from relaymesh.handshake.connector import ConnectorHandshake
from relaymesh.handshake.connector import Step as ConnectorStep
from relaymesh.handshake.pake import PakeConnector
from relaymesh.handshake.proofs import VERSION, acceptor_proof, compute_proof, connector_proof
from relaymesh.keystore import InviteUsed, KeyStoreError, UsedInvite
from relaymesh.pairing import PairingFailed
from relaymesh.test.support import (
    Node,
    client_protocol,
    line,
    load_transcript,
    make_clock,
    server_protocol,
    written,
)
from relaymesh.testing import MemoryKeys
from relaymesh.wire import RelayMessage, decode

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
PENDING = b"p" * 32

SERVER_FP = "sha256:" + "1" * 64
CLIENT_FP = "sha256:" + "2" * 64
MITM_FP = "sha256:" + "6" * 64
BINDING = (SERVER_FP, CLIENT_FP)


def message(msg_type, from_peer, payload):
    return RelayMessage("m1", msg_type, from_peer, 1, payload)


def challenge(payload):
    return message("challenge", "", payload)


def ack(peer, payload):
    return message("handshake_ack", peer, payload)


def named(peer="alpha", nonce="ab" * 32, starttls=True):
    """
    A relaymesh acceptor's challenge, with the TLS upgrade offered (in
    clear) or not (inside TLS, or stripped on the path).
    """
    caps = ["mutual-auth/2"] + (["starttls/1"] if starttls else [])
    return challenge({"nonce": nonce, "peer": peer, "caps": caps})


def tls_capable(protocol, host="10.0.0.2"):
    """
    Connect C{protocol} to a string transport that can start TLS (it notes
    the options in C{tls_started} and goes on writing in clear).
    """
    transport = StringTransportWithDisconnection(peerAddress=IPv4Address("TCP", host, 40000))
    transport.tls_started = []
    transport.startTLS = lambda options, normal=True: transport.tls_started.append(options)
    alsoProvides(transport, ITLSTransport)
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return transport


class _Pair:
    """
    An acceptor C{alpha} that can upgrade and a connector C{beta}, run
    through the rounds by hand.
    """

    def assertRefused(self, fragment, call):
        with self.assertRaises(HandshakeFailed) as ctx:
            call()
        self.assertIn(fragment, str(ctx.exception))

    def acceptor(self, keys, identity="alpha", issued=None):
        return AcceptorHandshake(keys, identity=identity, can_upgrade=True, issued=issued)

    def upgrade(self, acceptor, connector, claimed="beta"):
        """
        The C{starttls} round in clear, checked; both sides then upgraded.
        """
        request = connector.answer(challenge(acceptor.challenge_payload()))
        verdict = acceptor.verify(message("handshake", claimed, request))
        self.assertEqual((verdict.ack, verdict.upgrade, verdict.outcome), ({"status": "starttls"}, True, None))
        self.assertEqual(connector.check_ack(ack(acceptor.identity, verdict.ack)), (None, None))
        acceptor.upgraded()
        connector.upgraded()

    def prove(self, acceptor, connector, claimed="beta"):
        """
        The round inside TLS: the connector's proof and the acceptor's ack.

        @return: both outcomes, the acceptor's first.
        """
        answer = connector.answer(challenge(acceptor.challenge_payload()), BINDING)
        verdict = acceptor.verify(message("handshake", claimed, answer), BINDING)
        outcome, reply = connector.check_ack(ack(acceptor.identity, verdict.ack), BINDING)
        self.assertIsNone(reply)
        return verdict.outcome, outcome


class StartTLSTests(_Pair, SynchronousTestCase):
    """
    The C{starttls} round, and the handshake that starts over inside TLS.
    """

    def test_round(self):
        """
        In clear the connector asks only for TLS and proves nothing; the
        acceptor acks C{starttls}; inside TLS it challenges again, with a
        fresh nonce and no upgrade offered, and both prove the key.
        """
        acceptor = self.acceptor(MemoryKeys({"beta": KEY}))
        connector = ConnectorHandshake("beta", KEY, "alpha")
        first = acceptor.challenge_payload()
        self.assertEqual(first["caps"], ["mutual-auth/2", "starttls/1"])
        request = connector.answer(challenge(first))
        self.assertEqual(request, {"starttls": True, "version": VERSION})
        verdict = acceptor.verify(message("handshake", "beta", request))
        self.assertEqual(verdict.ack, {"status": "starttls"})
        self.assertEqual((verdict.upgrade, verdict.outcome), (True, None))
        self.assertEqual(connector.check_ack(ack("alpha", verdict.ack)), (None, None))
        acceptor.upgraded()
        connector.upgraded()
        second = acceptor.challenge_payload()
        self.assertNotEqual(second["nonce"], first["nonce"])
        self.assertEqual(second, {"nonce": acceptor.nonce, "peer": "alpha", "caps": ["mutual-auth/2", "ping/1"]})
        accepted, connected = self.prove(acceptor, connector)
        for outcome, peer in ((accepted, "beta"), (connected, "alpha")):
            self.assertEqual((outcome.peer_id, outcome.key), (peer, KEY))
            self.assertEqual((outcome.mutual, outcome.encrypted), (True, True))
        self.assertTrue(connector.encrypted and connector.mutual)

    def test_listener_without_tls(self):
        """An acceptor that cannot start TLS offers no upgrade, and refuses one."""
        acceptor = AcceptorHandshake(MemoryKeys({"beta": KEY}), identity="alpha")
        self.assertNotIn("starttls/1", acceptor.challenge_payload()["caps"])
        with self.assertRaises(HandshakeFailed) as ctx:
            acceptor.verify(message("handshake", "beta", {"starttls": True, "version": VERSION}))
        self.assertIn("beta asked for TLS, which this listener cannot start", str(ctx.exception))
        self.assertIs(acceptor.step, Step.FAILED)

    def test_nothing_in_clear_after_the_upgrade(self):
        """
        Once upgraded, neither side takes a handshake message from outside
        the TLS session, nor a request to upgrade again."""
        acceptor = self.acceptor(MemoryKeys({"beta": KEY}))
        connector = ConnectorHandshake("beta", KEY, "alpha")
        self.upgrade(acceptor, connector)
        proof = {"proof": compute_proof(KEY, acceptor.nonce), "nonce": "cd" * 32}
        with self.assertRaises(HandshakeFailed) as ctx:
            acceptor.verify(message("handshake", "beta", proof))
        self.assertIn("outside the TLS session it upgraded to", str(ctx.exception))
        with self.assertRaises(HandshakeFailed) as ctx:
            connector.answer(named(starttls=False))
        self.assertIn("challenge outside the TLS session", str(ctx.exception))
        again = self.acceptor(MemoryKeys({"beta": KEY}))
        self.upgrade(again, ConnectorHandshake("beta", KEY, "alpha"))
        with self.assertRaises(HandshakeFailed) as ctx:
            again.verify(message("handshake", "beta", {"starttls": True}), BINDING)
        self.assertIn("over TLS lacks its nonce", str(ctx.exception))

    def test_upgrade_not_acked(self):
        """An answer to the request for TLS other than C{starttls} ends the handshake."""
        for status in ("ok", "denied", None):
            connector = ConnectorHandshake("beta", KEY, "alpha")
            connector.answer(named())
            with self.assertRaises(HandshakeFailed) as ctx:
                connector.check_ack(ack("alpha", {"status": status}))
            self.assertIn(f"the peer did not start TLS (status {status!r})", str(ctx.exception))
            self.assertIs(connector.step, ConnectorStep.FAILED)

    def test_same_connector_inside(self):
        """The connector that proves inside TLS is the one that asked for it."""
        acceptor = self.acceptor(MemoryKeys({"beta": KEY, "gamma": KEY}))
        connector = ConnectorHandshake("gamma", KEY, "alpha")
        self.upgrade(acceptor, ConnectorHandshake("beta", KEY, "alpha"))
        with self.assertRaises(HandshakeFailed) as ctx:
            self.prove(acceptor, connector, claimed="gamma")
        self.assertIn("gamma continued the handshake of beta", str(ctx.exception))


class StateTableTests(_Pair, SynchronousTestCase):
    """
    The steps of both sides with the upgrade, and what each step refuses.
    """

    def test_acceptor(self):
        acceptor = self.acceptor(MemoryKeys({"beta": KEY}))
        connector = ConnectorHandshake("beta", KEY, "alpha")
        self.assertIs(acceptor.step, Step.AWAITING_HANDSHAKE)
        self.assertRefused("TLS upgrade when awaiting the connector's handshake", acceptor.upgraded)
        request = message("handshake", "beta", connector.answer(challenge(acceptor.challenge_payload())))
        acceptor.verify(request)
        self.assertIs(acceptor.step, Step.UPGRADING)
        self.assertRefused("handshake message when upgrading to TLS", lambda: acceptor.verify(request))
        acceptor.upgraded()
        self.assertIs(acceptor.step, Step.AWAITING_HANDSHAKE)
        connector.check_ack(ack("alpha", {"status": "starttls"}))
        connector.upgraded()
        self.prove(acceptor, connector)
        self.assertIs(acceptor.step, Step.AUTHENTICATED)
        self.assertRefused("TLS upgrade when authenticated", acceptor.upgraded)
        failed = self.acceptor(MemoryKeys({"beta": KEY}))
        self.upgrade(failed, ConnectorHandshake("beta", KEY, "alpha"))
        self.assertRaises(HandshakeFailed, failed.verify, message("handshake", "beta", {"nonce": "cd" * 32}), BINDING)
        self.assertIs(failed.step, Step.FAILED)
        self.assertRefused("TLS upgrade when failed", failed.upgraded)

    def test_connector(self):
        acceptor = self.acceptor(MemoryKeys({"beta": KEY}))
        connector = ConnectorHandshake("beta", KEY, "alpha")
        self.assertRefused("TLS upgrade when awaiting the challenge", connector.upgraded)
        request = connector.answer(challenge(acceptor.challenge_payload()))
        self.assertIs(connector.step, ConnectorStep.AWAITING_UPGRADE)
        self.assertRefused("challenge when awaiting the answer to the TLS upgrade", lambda: connector.answer(named()))
        verdict = acceptor.verify(message("handshake", "beta", request))
        self.assertEqual(connector.check_ack(ack("alpha", verdict.ack)), (None, None))
        self.assertIs(connector.step, ConnectorStep.UPGRADING)
        self.assertRefused("challenge when upgrading to TLS", lambda: connector.answer(named()))
        ok = ack("alpha", {"status": "ok"})
        self.assertRefused("handshake_ack when upgrading to TLS", lambda: connector.check_ack(ok))
        self.assertIs(connector.step, ConnectorStep.UPGRADING)
        acceptor.upgraded()
        connector.upgraded()
        self.assertIs(connector.step, ConnectorStep.AWAITING_CHALLENGE)
        answer = connector.answer(challenge(acceptor.challenge_payload()), BINDING)
        self.assertIs(connector.step, ConnectorStep.AWAITING_ACK)
        verdict = acceptor.verify(message("handshake", "beta", answer), BINDING)
        connector.check_ack(ack("alpha", verdict.ack), BINDING)
        self.assertIs(connector.step, ConnectorStep.AUTHENTICATED)
        with self.assertRaises(HandshakeFailed) as ctx:
            connector.check_ack(ack("alpha", verdict.ack), BINDING)
        self.assertIn("handshake_ack when authenticated", str(ctx.exception))


class ClearProofTests(_Pair, SynchronousTestCase):
    """
    What the acceptor takes in clear: claudectl's one-way proof, of a key
    marked legacy or armed for pairing; nothing of relaymesh's.
    """

    def setUp(self):
        self.keys = MemoryKeys({"beta": KEY})
        self.keys.metas["beta"] = {"legacy": True}
        self.acceptor = AcceptorHandshake(self.keys, identity="alpha", can_upgrade=True)

    def verify(self, payload, claimed="beta"):
        return self.acceptor.verify(message("handshake", claimed, payload))

    def test_labelled_proof_refused(self):
        """
        A labelled proof (with the connector's nonce) is refused in clear,
        even right, even for a legacy key: the upgrade was stripped.
        """
        nonce = "cd" * 32
        proof = connector_proof(KEY, self.acceptor.nonce, nonce, "beta", "alpha")
        with self.assertRaises(HandshakeFailed) as ctx:
            self.verify({"proof": proof, "nonce": nonce, "caps": ["mutual-auth/2"]})
        self.assertIn("beta tried to authenticate in clear without upgrading to TLS", str(ctx.exception))
        self.assertIs(self.acceptor.step, Step.FAILED)

    def test_pake_refused(self):
        self.keys.strong_code = "7-ace-act"
        with self.assertRaises(HandshakeFailed) as ctx:
            self.verify({"pake": "00" * 33, "nonce": "cd" * 32}, claimed="newcomer")
        self.assertIn("tried to authenticate in clear", str(ctx.exception))
        self.assertEqual(self.keys.strong_code, "7-ace-act")

    def test_unmarked_key_refused(self):
        """
        claudectl's proof of a key not marked legacy (never used, or used
        with relaymesh) is refused, right or wrong, and the reason says how
        to mark a claudectl peer.
        """
        for meta in ({}, {"legacy": False}, {"legacy": "true"}):
            self.keys.metas["beta"] = meta
            for key in (KEY, OTHER_KEY):
                self.acceptor = AcceptorHandshake(self.keys, identity="alpha")
                with self.assertRaises(HandshakeFailed) as ctx:
                    self.verify({"proof": compute_proof(key, self.acceptor.nonce)})
                self.assertIn("sent claudectl's one-way proof, but its key is not marked legacy", str(ctx.exception))
                self.assertIn("relaymesh mark-legacy beta", str(ctx.exception))

    def test_armed_key_pairs(self):
        """
        claudectl's proof of a key armed for pairing (not the first armed)
        pairs the peer; recorded, the key is claimed, every armed key
        disarmed, and the peer marked legacy.
        """
        self.keys.arm([("pair_code", PENDING), ("invite", OTHER_KEY)])
        outcome = self.verify({"proof": compute_proof(OTHER_KEY, self.acceptor.nonce)}, claimed="gamma").outcome
        self.assertEqual((outcome.peer_id, outcome.key, outcome.paired_via), ("gamma", OTHER_KEY, "invite"))
        self.assertFalse(outcome.mutual)
        pairing.record(self.keys, outcome, 0)
        self.assertEqual(self.keys.keys["gamma"], OTHER_KEY)
        self.assertIsNone(self.keys.pending)
        self.assertEqual(self.keys.meta("gamma")["paired_via"], "invite")
        self.assertIs(self.keys.meta("gamma")["legacy"], True)


class LegacyRecordTests(_Pair, SynchronousTestCase):
    def test_cleared_by_relaymesh_proofs(self):
        """
        A key marked legacy and then proved inside TLS is recorded as no
        longer legacy, once (for claudectl's form marking a key legacy:
        L{ClearProofTests.test_armed_key_pairs}).
        """
        keys = MemoryKeys({"beta": KEY})
        keys.metas["beta"] = {"legacy": True}
        for _ in range(2):
            acceptor = self.acceptor(keys)
            connector = ConnectorHandshake("beta", KEY, "alpha")
            self.upgrade(acceptor, connector)
            pairing.record(keys, self.prove(acceptor, connector)[0], 0)
            self.assertIs(keys.meta("beta")["legacy"], False)
        self.assertEqual(keys.meta_updates, [("beta", {"tls_fingerprint": CLIENT_FP, "legacy": False})])


class ConnectorRulesTests(_Pair, SynchronousTestCase):
    """
    What the connector refuses to answer, before it proves anything.
    """

    def refused(self, connector, challenge_message, fragment, binding=None):
        self.assertRefused(fragment, lambda: connector.answer(challenge_message, binding))
        self.assertIs(connector.step, ConnectorStep.FAILED)

    def test_stripped_upgrade(self):
        """
        A relaymesh acceptor (named) offering no upgrade in clear had it
        stripped on the path: nothing is proved, even of a legacy key.
        """
        for legacy in (False, True):
            self.refused(
                ConnectorHandshake("beta", KEY, "alpha", legacy=legacy),
                named(starttls=False),
                "alpha named itself but offered no TLS upgrade (stripped on the path?)",
            )

    def test_unnamed_acceptor(self):
        """
        An unnamed (claudectl) acceptor gets claudectl's proof only of a key
        marked legacy, else is told how to dial one; a bare dial has none.
        """
        unnamed = challenge({"nonce": "ab" * 32})
        self.refused(ConnectorHandshake("beta", KEY, "alpha"), unnamed, "dial it as legacy:alpha@HOST:PORT")
        self.refused(ConnectorHandshake("beta", KEY), unnamed, "the peer did not name itself as a relaymesh node")
        bare = ConnectorHandshake("beta", keys=MemoryKeys({"alpha": KEY}, pending=PENDING), legacy=True)
        self.refused(bare, unnamed, "legacy:ID@HOST:PORT")
        self.refused(ConnectorHandshake("beta", KEY, "alpha"), unnamed, "invalid peer id None", BINDING)
        answer = ConnectorHandshake("beta", KEY, "alpha", legacy=True).answer(unnamed)
        self.assertEqual(answer, {"proof": compute_proof(KEY, "ab" * 32), "version": VERSION})

    def test_issued_nonce(self):
        """
        A challenge with a nonce this node's acceptor issued is refused, in
        clear or TLS, named or not; once that handshake ends it is forgotten.
        """
        issued = IssuedNonces()
        acceptor = self.acceptor(MemoryKeys({"beta": KEY}), issued=issued)
        mine = acceptor.nonce
        self.assertIn(mine, issued)
        for reflected, binding in [
            (challenge({"nonce": mine}), None),
            (named("mallory", mine), None),
            (named("mallory", mine, starttls=False), BINDING),
        ]:
            connector = ConnectorHandshake("alpha", KEY, "mallory", legacy=True, issued=issued)
            self.refused(connector, reflected, "a nonce this node issued itself (a reflection attempt)", binding)
        acceptor.retire()
        self.assertNotIn(mine, issued)
        connector = ConnectorHandshake("alpha", KEY, "mallory", legacy=True, issued=issued)
        self.assertIn("proof", connector.answer(challenge({"nonce": mine})))

    def test_issued_across_the_upgrade(self):
        """
        The acceptor's nonce inside TLS is issued too; the one in clear is
        forgotten with the upgrade, and the last once authenticated.
        """
        issued = IssuedNonces()
        acceptor = self.acceptor(MemoryKeys({"beta": KEY}), issued=issued)
        connector = ConnectorHandshake("beta", KEY, "alpha")
        first = acceptor.nonce
        self.upgrade(acceptor, connector)
        self.assertNotIn(first, issued)
        self.assertIn(acceptor.nonce, issued)
        self.assertEqual(len(issued), 1)
        self.prove(acceptor, connector)
        self.assertEqual(len(issued), 0)

    def test_acceptor_named_otherwise(self):
        """
        An acceptor named as another peer than the one dialled, or as this
        node, is refused at the challenge."""
        self.refused(ConnectorHandshake("beta", KEY, "alpha"), named("gamma"), "expected peer alpha but gamma answered")
        self.refused(ConnectorHandshake("beta", KEY), named("beta"), "the peer answered with this node's own id beta")
        self.refused(ConnectorHandshake("beta", KEY), named("../x"), "invalid peer id '../x'")
        self.refused(ConnectorHandshake("beta", KEY, "alpha"), named("gamma", starttls=False), "gamma", BINDING)

    def answered(self):
        """A bare connector that proved its key to C{alpha} in TLS, and alpha's verdict."""
        acceptor = self.acceptor(MemoryKeys({"beta": KEY}))
        connector = ConnectorHandshake("beta", KEY)
        self.upgrade(acceptor, connector)
        answer = connector.answer(challenge(acceptor.challenge_payload()), BINDING)
        verdict = acceptor.verify(message("handshake", "beta", answer), BINDING)
        return acceptor, connector, answer, verdict

    def test_ack_from_another(self):
        """
        The ack must come from the peer the challenge named, even on a bare
        dial: alpha's ack relayed as gamma's, gamma's proof or pake, refused.
        """
        acceptor, connector, answer, verdict = self.answered()
        outcome, _ = connector.check_ack(ack("alpha", verdict.ack), BINDING)
        self.assertEqual(outcome.peer_id, "alpha")
        for forged in (False, True):
            acceptor, connector, answer, verdict = self.answered()
            payload = dict(verdict.ack)
            if forged:  # what gamma would prove, were it in the middle
                payload["proof"] = acceptor_proof(KEY, acceptor.nonce, answer["nonce"], "beta", "gamma", BINDING)
            with self.assertRaises(HandshakeFailed) as ctx:
                connector.check_ack(ack("gamma", payload), BINDING)
            self.assertIn("alpha named itself in the challenge but gamma answered", str(ctx.exception))
            self.assertFalse(connector.mutual)
        pake = ConnectorHandshake("beta", strong_code="7-ace-act")
        self.upgrade(self.acceptor(MemoryKeys()), pake)
        pake.answer(named(starttls=False), BINDING)
        with self.assertRaises(HandshakeFailed) as ctx:
            pake.check_ack(ack("gamma", {"status": "pake", "pake": "00" * 33}), BINDING)
        self.assertIn("alpha named itself in the challenge but gamma answered", str(ctx.exception))


class BareDialKeyTests(_Pair, SynchronousTestCase):
    """
    A bare dial (no peer id) proves the key of the peer the acceptor names,
    or else the pending key; it chooses only inside TLS.
    """

    def setUp(self):
        self.keys = MemoryKeys({"alpha": KEY, "gamma": OTHER_KEY}, pending=PENDING)

    def test_named_peers_key(self):
        for name, key in (("alpha", KEY), ("gamma", OTHER_KEY)):
            acceptor = self.acceptor(MemoryKeys({"beta": key}), identity=name)
            connector = ConnectorHandshake("beta", keys=self.keys)
            self.upgrade(acceptor, connector)
            self.assertIsNone(connector.psk)
            accepted, connected = self.prove(acceptor, connector)
            self.assertEqual((connected.peer_id, connected.key, connected.paired_via), (name, key, None))
            self.assertEqual((accepted.peer_id, accepted.key), ("beta", key))
        self.assertEqual(self.keys.pending, PENDING)

    def test_pending_key(self):
        """
        To an acceptor it has no key for, the pending key: recorded, that
        peer's key, on both sides."""
        delta_keys = MemoryKeys(pending=PENDING)
        acceptor = self.acceptor(delta_keys, identity="delta")
        connector = ConnectorHandshake("beta", keys=self.keys)
        self.upgrade(acceptor, connector)
        accepted, connected = self.prove(acceptor, connector)
        self.assertEqual((connected.peer_id, connected.key, connected.paired_via), ("delta", PENDING, PENDING_FORM))
        pairing.record(self.keys, connected, 0)
        pairing.record(delta_keys, accepted, 0)
        self.assertEqual((self.keys.keys["delta"], self.keys.pending), (PENDING, None))
        self.assertEqual((delta_keys.keys["beta"], delta_keys.pending), (PENDING, None))
        self.assertIs(self.keys.meta("delta")["legacy"], False)

    def test_no_key(self):
        self.keys.pending = None
        connector = ConnectorHandshake("beta", keys=self.keys)
        self.upgrade(self.acceptor(MemoryKeys(), identity="delta"), connector)
        with self.assertRaises(HandshakeFailed) as ctx:
            connector.answer(named("delta", starttls=False), BINDING)
        self.assertIn("no key for delta: pair first", str(ctx.exception))
        self.assertIsNone(connector.psk)
        self.assertIsNone(connector.paired_via)


class ReflectionTests(SynchronousTestCase):
    """
    A node whose connector is sent a challenge its own acceptor issued (the
    peer reflects it, to have the node prove a key to itself) refuses it.
    """

    def setUp(self):
        self.alpha = Node("alpha", make_clock(), MemoryKeys({"mallory": KEY}))
        self.alpha.keys.metas["mallory"] = {"legacy": True}
        self.inbound, transport = server_protocol(self.alpha.server)
        [mine] = written(transport)
        self.nonce = mine.payload["nonce"]

    def test_reflected(self):
        for payload in (
            {"nonce": self.nonce},
            {"nonce": self.nonce, "peer": "mallory", "caps": ["mutual-auth/2", "starttls/1"]},
        ):
            protocol, transport = client_protocol(self.alpha.client("mallory"))
            protocol.dataReceived(line(challenge(payload)))
            self.assertEqual(transport.value(), b"")
            self.assertIs(protocol.state, State.CLOSED)
            self.assertIn("a nonce this node issued itself", protocol.close_reason)

    def test_forgotten_when_closed(self):
        """
        Once the inbound connection closes its nonce is forgotten: a
        claudectl acceptor's challenge with it is answered."""
        self.inbound.transport.loseConnection()
        self.assertNotIn(self.nonce, self.alpha.mesh.issued_nonces)
        protocol, transport = client_protocol(self.alpha.client("mallory"))
        protocol.dataReceived(line(challenge({"nonce": self.nonce})))
        [answer] = written(transport)
        self.assertEqual(answer.payload["proof"], compute_proof(KEY, self.nonce))


class UpgradingAcceptorTests(SynchronousTestCase):
    """
    An acceptor whose transport can start TLS, with claudectl's nonce and
    its recorded connector's key marked legacy."""

    ACCEPTOR, CONNECTOR = "laptop-a3f2", "ci-runner-9d1e"

    def setUp(self):
        self.lines = [entry["line"].encode() for entry in load_transcript()]
        self.node = Node(self.ACCEPTOR, make_clock(), MemoryKeys({self.CONNECTOR: KEY}))  # the transcript's
        self.node.keys.metas[self.CONNECTOR] = {"legacy": True}
        first = bytes.fromhex(decode(self.lines[0]).payload["nonce"])
        nonces = itertools.chain([first], iter(lambda: os.urandom(32), None))
        self.node.server._randbytes = lambda n: next(nonces)
        self.protocol = self.node.server.buildProtocol(IPv4Address("TCP", "10.0.0.2", 40000))
        self.transport = tls_capable(self.protocol)
        [self.challenge] = written(self.transport)

    def test_claudectl_ignores_the_upgrade(self):
        """
        claudectl does not read the offer: its handshake is accepted in
        clear, answered with claudectl's ack, and TLS is not started.
        """
        self.assertEqual(self.challenge.payload["caps"], ["mutual-auth/2", "starttls/1"])
        self.assertEqual(self.challenge.payload["nonce"], decode(self.lines[0]).payload["nonce"])
        self.protocol.dataReceived(self.lines[1] + b"\n")
        [answer] = written(self.transport)
        recorded = decode(self.lines[2])
        self.assertEqual((answer.from_peer, answer.payload), (recorded.from_peer, recorded.payload))
        self.assertEqual(self.transport.tls_started, [])
        self.assertIs(self.protocol.state, State.CONNECTED)
        self.assertFalse(self.protocol.encrypted)

    def test_unmarked_claudectl_refused(self):
        self.node.keys.metas[self.CONNECTOR] = {}
        self.protocol.dataReceived(self.lines[1] + b"\n")
        [answer] = written(self.transport)
        self.assertEqual(answer.payload, {"status": "denied"})
        self.assertIn(f"relaymesh mark-legacy {self.CONNECTOR}", self.protocol.close_reason)
        self.assertFalse(self.node.mesh.is_connected(self.CONNECTOR))

    def request(self, after=b""):
        request = message("handshake", self.CONNECTOR, {"starttls": True, "version": VERSION})
        self.protocol.dataReceived(line(request) + after)

    def test_upgrades(self):
        """
        A relaymesh connector's request is acked in clear, then TLS starts
        with the listener's options, and a fresh challenge follows in it.
        """
        self.request()
        [starttls, fresh] = written(self.transport)
        self.assertEqual((starttls.msg_type, starttls.payload), ("handshake_ack", {"status": "starttls"}))
        self.assertEqual(self.transport.tls_started, [self.node.certificate.server_options()])
        self.assertEqual(fresh.msg_type, "challenge")
        self.assertNotEqual(fresh.payload["nonce"], self.challenge.payload["nonce"])
        self.assertEqual(fresh.payload["caps"], ["mutual-auth/2", "ping/1"])
        self.assertTrue(self.protocol.encrypted)
        self.assertIs(self.protocol.state, State.AWAITING_HANDSHAKE)

    def test_bytes_in_clear_after_the_request(self):
        """
        Bytes that follow the request in clear were put there by someone on
        the path: the connection is dropped and TLS never starts.
        """
        self.request(after=self.lines[1] + b"\n")
        self.assertEqual(self.transport.tls_started, [])
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertIn("bytes in clear after the TLS upgrade was agreed", self.protocol.close_reason)
        self.assertFalse(self.node.mesh.is_connected(self.CONNECTOR))


class UpgradingConnectorTests(SynchronousTestCase):
    """A connector on a transport that can start TLS, where it must not."""

    def connect(self, certificate=True):
        node = Node("beta", make_clock(), MemoryKeys({"alpha": KEY}))
        factory = node.client("alpha")
        factory.certificate = factory.certificate if certificate else None  # then no upgrade
        protocol, transport = client_protocol(factory)
        transport.startTLS = lambda options, normal=True: self.fail("TLS started")
        alsoProvides(transport, ITLSTransport)
        return protocol, transport

    def test_bytes_in_clear_after_the_ack(self):
        protocol, transport = self.connect()
        protocol.dataReceived(line(named()) + line(ack("alpha", {"status": "starttls"})) + line(named()))
        self.assertIs(protocol.state, State.CLOSED)
        self.assertIn("bytes in clear after the TLS upgrade was agreed", protocol.close_reason)

    def test_no_certificate(self):
        protocol, transport = self.connect(certificate=False)
        protocol.dataReceived(line(named()))
        self.assertEqual(transport.value(), b"")
        self.assertIn("this node has no certificate to upgrade with", protocol.close_reason)


class ChannelBindingTests(SynchronousTestCase):
    """
    Over TLS the proofs cover both certificates, and fingerprints are pinned
    (here as on a C{tls:} listener, TLS from the start).
    """

    def setUp(self):
        self.alpha_keys = MemoryKeys({"beta": KEY})
        self.beta_keys = MemoryKeys({"alpha": KEY})

    def run_handshake(self, acceptor_sees, connector_sees):
        acceptor = AcceptorHandshake(self.alpha_keys, identity="alpha")
        connector = ConnectorHandshake("beta", KEY, "alpha", keys=self.beta_keys)
        answer = connector.answer(challenge(acceptor.challenge_payload()), connector_sees)
        verdict = acceptor.verify(message("handshake", "beta", answer), acceptor_sees)
        pairing.record(self.alpha_keys, verdict.outcome, 0)
        outcome, reply = connector.check_ack(ack("alpha", verdict.ack), connector_sees)
        pairing.record(self.beta_keys, outcome, 0)
        self.assertEqual((outcome.encrypted, verdict.outcome.encrypted), (True, True))
        return outcome.peer_id, reply

    def test_bound_and_pinned(self):
        self.assertEqual(self.run_handshake(BINDING, BINDING), ("alpha", None))
        self.assertEqual(self.alpha_keys.meta("beta")["tls_fingerprint"], CLIENT_FP)
        self.assertEqual(self.beta_keys.meta("alpha")["tls_fingerprint"], SERVER_FP)

    def test_man_in_the_middle(self):
        """
        A relay that terminates TLS on both sides with its own certificate
        cannot pass the connector's proof on: each side saw other
        certificates.
        """
        with self.assertRaises(HandshakeFailed) as ctx:
            self.run_handshake((SERVER_FP, MITM_FP), (MITM_FP, CLIENT_FP))
        self.assertIn("wrong proof", str(ctx.exception))

    def test_plain_proof_refused_over_tls(self):
        """claudectl's unbound proof does not pass over TLS, even of a legacy key."""
        self.alpha_keys.metas["beta"] = {"legacy": True}
        for extra, fragment in (({}, "over TLS lacks its nonce"), ({"nonce": "cd" * 32}, "wrong proof")):
            acceptor = AcceptorHandshake(self.alpha_keys, identity="alpha")
            proof = compute_proof(KEY, acceptor.nonce)
            with self.assertRaises(HandshakeFailed) as ctx:
                acceptor.verify(message("handshake", "beta", {"proof": proof, **extra}), BINDING)
            self.assertIn(fragment, str(ctx.exception))

    def test_labelled_proofs_name_both_peers(self):
        """
        A proof for one acceptor, connector or TLS session proves nothing
        for another; neither direction's is the other's or claudectl's."""
        na, nc = "ab" * 32, "cd" * 32
        proof = connector_proof(KEY, na, nc, "beta", "alpha", BINDING)
        others = [
            connector_proof(KEY, na, nc, "beta", "gamma", BINDING),
            connector_proof(KEY, na, nc, "gamma", "alpha", BINDING),
            connector_proof(KEY, na, nc, "alpha", "beta", BINDING),
            connector_proof(KEY, na, nc, "beta", "alpha", (SERVER_FP, MITM_FP)),
            connector_proof(KEY, nc, na, "beta", "alpha", BINDING),
            acceptor_proof(KEY, na, nc, "beta", "alpha", BINDING),
            compute_proof(KEY, na),
        ]
        self.assertEqual(len(set(others + [proof])), len(others) + 1)

    def test_changed_certificate_refused(self):
        """
        Once pinned, another certificate is refused loudly, on both sides.
        """
        self.run_handshake(BINDING, BINDING)
        with self.assertRaises(HandshakeFailed) as ctx:
            self.run_handshake((SERVER_FP, MITM_FP), (SERVER_FP, MITM_FP))
        self.assertIn("TLS CERTIFICATE OF beta CHANGED", str(ctx.exception))
        self.assertIn("relaymesh tls-unpin beta", str(ctx.exception))
        with self.assertRaises(HandshakeFailed) as ctx:
            self.run_handshake((MITM_FP, CLIENT_FP), (MITM_FP, CLIENT_FP))
        self.assertIn("TLS CERTIFICATE OF alpha CHANGED", str(ctx.exception))


def failing(error):
    """
    A key store call that fails with C{error}, as a damaged store's does.
    """

    def call(*args, **kwargs):
        raise error

    return call


class StrongPairingAttackTests(_Pair, SynchronousTestCase):
    """
    Strong pairing (SPAKE2 inside TLS) as an attacker tries it: in the
    middle of TLS, as another peer in the second round, with a forged
    confirmation, without the connector's nonce, with a broken message.
    """

    def setUp(self):
        self.fresh()

    def fresh(self):
        self.keys = MemoryKeys()
        self.keys.strong_code = "7-ace-act"
        self.alpha = self.acceptor(self.keys)

    def start(self, acceptor_sees=BINDING, connector_sees=BINDING):
        """
        The upgrade and strong pairing's first round, between C{alpha} and a
        connector C{beta} that holds the code.

        @return: the connector, its request and its confirmation to send.
        """
        connector = ConnectorHandshake("beta", strong_code="7-ace-act")
        self.upgrade(self.alpha, connector)
        request = connector.answer(challenge(self.alpha.challenge_payload()), connector_sees)
        verdict = self.alpha.verify(message("handshake", "beta", request), acceptor_sees)
        self.assertEqual((verdict.ack["status"], verdict.outcome), ("pake", None))
        outcome, reply = connector.check_ack(ack("alpha", verdict.ack), connector_sees)
        self.assertIsNone(outcome)
        return connector, request, reply

    def confirm(self, reply, claimed="beta", binding=BINDING):
        return lambda: self.alpha.verify(message("handshake", claimed, reply), binding)

    def test_man_in_the_middle(self):
        """
        A relay that terminates TLS on both sides with its own certificate
        and passes every message on unchanged gets both SPAKE2 rounds and the
        confirmation through (they name no certificate), but the connector's
        proof of the new key covers the certificates the connector saw: the
        acceptor refuses it, and stores no key.
        """
        _, _, reply = self.start((SERVER_FP, MITM_FP), (MITM_FP, CLIENT_FP))
        self.assertRefused("wrong proof after strong pairing with beta", self.confirm(reply, binding=(SERVER_FP, MITM_FP)))
        self.assertIs(self.alpha.step, Step.FAILED)
        self.assertEqual(self.keys.keys, {})
        self.assertIsNone(self.keys.strong_code)

    def test_same_peer_both_rounds(self):
        """
        The confirmation must come from the peer that started the exchange:
        beta's, relayed as gamma's, pairs nobody.
        """
        _, _, reply = self.start()
        self.assertRefused("gamma continued the handshake of beta", self.confirm(reply, claimed="gamma"))
        self.assertEqual(self.keys.keys, {})

    def test_forged_confirmation(self):
        """
        A connector that does not hold the code cannot confirm: a made-up
        confirmation, or none, is refused, even with a proof made with the
        key it guessed.
        """
        for confirm, reason in [
            ("A" * 43, "strong pairing with beta: the pairing code does not match"),
            (None, "strong pairing with beta: missing or malformed confirmation"),
        ]:
            self.fresh()
            _, _, reply = self.start()
            self.assertRefused(reason, self.confirm({**reply, "confirm": confirm}))
            self.assertEqual(self.keys.keys, {})

    def test_request_without_nonce(self):
        """
        A strong pairing request without the connector's nonce (what a
        downgrade to claudectl's unbound form would send) is refused, in
        clear or inside TLS, before the armed code is taken.
        """
        connector = ConnectorHandshake("beta", strong_code="7-ace-act")
        self.upgrade(self.alpha, connector)
        request = connector.answer(challenge(self.alpha.challenge_payload()), BINDING)
        del request["nonce"]
        self.assertRefused("handshake from beta over TLS lacks its nonce", self.confirm(request))
        self.assertEqual(self.keys.strong_code, "7-ace-act")
        self.fresh()
        request = {"pake": PakeConnector("7-ace-act").message, "version": VERSION}
        self.assertRefused(
            "beta tried to authenticate in clear without upgrading to TLS", self.confirm(request, binding=None)
        )
        self.assertEqual(self.keys.strong_code, "7-ace-act")

    def test_broken_message_uses_up_the_code(self):
        """
        A request whose SPAKE2 message is not one is refused, and it was the
        one try: the code is gone.
        """
        self.upgrade(self.alpha, ConnectorHandshake("beta", strong_code="7-ace-act"))
        request = {"pake": "!!", "version": VERSION, "nonce": "cd" * 32}
        self.assertRefused("strong pairing with beta: malformed pake message", self.confirm(request))
        self.assertIsNone(self.keys.strong_code)

    def test_wire_and_steps(self):
        """
        The request and the confirmation carry the documented fields (the
        connector's nonce in both); between the rounds neither side takes
        another upgrade or challenge, and the connector takes the acceptor's
        answer only inside TLS.
        """
        connector, request, reply = self.start()
        self.assertEqual(
            request, {"pake": request["pake"], "version": VERSION, "nonce": request["nonce"], "caps": ["mutual-auth/2", "ping/1"]}
        )
        self.assertEqual(sorted(reply), ["caps", "confirm", "nonce", "proof", "version"])
        self.assertEqual((reply["nonce"], reply["version"]), (request["nonce"], VERSION))
        self.assertRefused("TLS upgrade when awaiting the confirmation of strong pairing", self.alpha.upgraded)
        self.assertRefused(
            "challenge when awaiting the ack of the strong pairing confirmation",
            lambda: connector.answer(named(starttls=False), BINDING),
        )
        self.fresh()
        connector = ConnectorHandshake("beta", strong_code="7-ace-act")
        self.upgrade(self.alpha, connector)
        request = connector.answer(challenge(self.alpha.challenge_payload()), BINDING)
        verdict = self.alpha.verify(message("handshake", "beta", request), BINDING)
        self.assertRefused("strong pairing answered outside TLS", lambda: connector.check_ack(ack("alpha", verdict.ack)))
        self.assertIs(connector.step, ConnectorStep.FAILED)


class KeyStoreErrorTests(_Pair, SynchronousTestCase):
    """
    A key store that cannot be read fails the handshake, saying what could
    not be read: it never passes for a peer without a key, a key never
    marked legacy, a certificate never pinned, or no code armed.
    """

    DAMAGED = KeyStoreError("the key store is damaged")

    def verify_in_tls(self, keys, connector, claimed="beta"):
        """
        C{connector}'s answer to an acceptor C{alpha} on C{keys}, inside TLS
        from the start (a C{tls:} listener).
        """
        acceptor = AcceptorHandshake(keys, identity="alpha")
        answer = connector.answer(challenge(acceptor.challenge_payload()), BINDING)
        return lambda: acceptor.verify(message("handshake", claimed, answer), BINDING)

    def test_acceptor(self):
        keys = MemoryKeys(pending=PENDING)
        keys.key = failing(self.DAMAGED)
        self.assertRefused(  # not a peer without a key: the armed key it proves pairs nothing
            "cannot use the key of beta: the key store is damaged",
            self.verify_in_tls(keys, ConnectorHandshake("beta", PENDING, "alpha")),
        )
        keys = MemoryKeys(pending=PENDING)
        keys.armed_keys = failing(OSError("disk error"))
        self.assertRefused(
            "cannot read the armed pairing keys: disk error",
            self.verify_in_tls(keys, ConnectorHandshake("beta", PENDING, "alpha")),
        )
        keys = MemoryKeys({"beta": KEY})
        keys.meta = failing(self.DAMAGED)
        self.assertRefused(
            "cannot read or pin the certificate of beta: the key store is damaged",
            self.verify_in_tls(keys, ConnectorHandshake("beta", KEY, "alpha")),
        )
        acceptor = AcceptorHandshake(keys, identity="alpha")
        proof = {"proof": compute_proof(KEY, acceptor.nonce)}
        self.assertRefused(
            "cannot read what is recorded about beta: the key store is damaged",
            lambda: acceptor.verify(message("handshake", "beta", proof)),
        )

    def test_strong_code(self):
        """
        A strong code whose invite was used is refused saying so; one that
        cannot be read is not taken for none armed.
        """
        used = UsedInvite("0123456789abcdef", "strong_code", None, None, None, True)
        for error, reason in [
            (InviteUsed(used), f"beta tried strong pairing: {used.describe()}"),
            (self.DAMAGED, "cannot read the strong pairing code: the key store is damaged"),
        ]:
            keys = MemoryKeys()
            keys.take_strong_code = failing(error)
            self.assertRefused(reason, self.verify_in_tls(keys, ConnectorHandshake("beta", strong_code="7-ace-act")))

    def test_connector(self):
        keys = MemoryKeys(pending=PENDING)
        keys.key = failing(self.DAMAGED)
        connector = ConnectorHandshake("beta", keys=keys)
        self.assertRefused(  # not an acceptor without a key: the pending key is not proved to it
            "cannot use the key of alpha: the key store is damaged",
            lambda: connector.answer(named(starttls=False), BINDING),
        )
        keys = MemoryKeys({"alpha": KEY})
        keys.meta = failing(OSError("disk error"))
        connector = ConnectorHandshake("beta", KEY, "alpha", keys=keys)
        acceptor = AcceptorHandshake(MemoryKeys({"beta": KEY}), identity="alpha")
        answer = connector.answer(challenge(acceptor.challenge_payload()), BINDING)
        verdict = acceptor.verify(message("handshake", "beta", answer), BINDING)
        self.assertRefused(
            "cannot read or pin the certificate of alpha: disk error",
            lambda: connector.check_ack(ack("alpha", verdict.ack), BINDING),
        )
        self.assertIs(connector.step, ConnectorStep.FAILED)

    def test_recording(self):
        """
        An outcome that cannot be recorded fails with L{PairingFailed}; so
        does an armed key that another handshake claimed meanwhile (two
        peers proving the same invite at once): the second pairs nothing.
        """
        keys = MemoryKeys()
        keys.set_key = failing(OSError("disk full"))
        outcome = Authenticated("beta", KEY, frozenset(), mutual=True, encrypted=True, paired_via="strong_code")
        with self.assertRaises(PairingFailed) as ctx:
            pairing.record(keys, outcome, 0)
        self.assertEqual(str(ctx.exception), "could not store the key of beta: disk full")
        keys = MemoryKeys(pending=PENDING)
        first = self.verify_in_tls(keys, ConnectorHandshake("beta", PENDING, "alpha"))().outcome
        second = self.verify_in_tls(keys, ConnectorHandshake("gamma", PENDING, "alpha"), "gamma")().outcome
        pairing.record(keys, first, 0)
        with self.assertRaises(PairingFailed) as ctx:
            pairing.record(keys, second, 0)
        self.assertEqual(str(ctx.exception), "the pairing key gamma proved was claimed meanwhile")
        self.assertEqual(keys.keys, {"beta": PENDING})
        self.assertNotIn("gamma", keys.metas)

    def test_no_key_says_why(self):
        """
        A peer without a key that proves none of the armed keys is told so,
        and who used the last invite if one was used; a store that keeps no
        such note, or cannot read it, adds nothing.
        """
        used = UsedInvite("0123456789abcdef", "invite", "gamma", None, None, False)
        for used_invite, reason in [
            (None, "no key for peer stranger"),
            (lambda now: None, "no key for peer stranger"),
            (lambda now: used, f"no key for peer stranger: {used.describe()}"),
            (failing(self.DAMAGED), "no key for peer stranger"),
        ]:
            keys = MemoryKeys(pending=PENDING)
            if used_invite is not None:
                keys.used_invite = used_invite
            acceptor = AcceptorHandshake(keys, identity="alpha")
            with self.assertRaises(HandshakeFailed) as ctx:
                acceptor.verify(message("handshake", "stranger", {"proof": compute_proof(KEY, acceptor.nonce)}))
            self.assertEqual(str(ctx.exception), reason)


class PayloadRulesTests(_Pair, SynchronousTestCase):
    """
    How both sides read what the other sends: capabilities, the legacy
    mark, ack payloads and peer ids, and what a connector is given to prove.
    """

    def test_capability_limits(self):
        """
        At most 32 capabilities of 1 to 64 characters each are read; one
        more, a longer one or an empty one makes the list malformed.
        """
        most = [f"{i:064d}" for i in range(31)] + ["c"]
        for caps, accepted in [(most, True), (most + ["d"], False), (["x" * 65], False), ([""], False)]:
            acceptor = AcceptorHandshake(MemoryKeys({"beta": KEY}), identity="alpha")
            connector = ConnectorHandshake("beta", KEY, "alpha", capabilities=tuple(caps))
            answer = connector.answer(challenge(acceptor.challenge_payload()), BINDING)
            # called within this iteration only
            verify = lambda: acceptor.verify(message("handshake", "beta", answer), BINDING)  # noqa: E731, B023
            if accepted:
                self.assertEqual(verify().outcome.capabilities, frozenset(caps))
            else:
                self.assertRefused("malformed capability list", verify)

    def test_legacy_mark(self):
        """
        Only a boolean says whether a key may be proved in claudectl's form;
        anything else in the field says nothing, like no field.
        """
        keys = MemoryKeys()
        for value, mark in [(True, True), (False, False), ("true", None), (1, None), (None, None)]:
            keys.metas["beta"] = {"legacy": value}
            self.assertIs(legacy_mark(keys, "beta"), mark)

    def test_ack_not_an_object(self):
        """
        An ack whose payload is not an object has no status: it neither
        agrees to the upgrade nor accepts the proof.
        """
        for payload in (["ok"], "ok", None):
            # each lambda is called at once, by assertRefused
            connector = ConnectorHandshake("beta", KEY, "alpha")
            connector.answer(named())
            self.assertRefused(
                "the peer did not start TLS (status None)",
                lambda: connector.check_ack(ack("alpha", payload)),  # noqa: B023
            )
            connector = ConnectorHandshake("beta", KEY, "alpha")
            connector.answer(named(starttls=False), BINDING)
            self.assertRefused(
                "the peer denied the handshake (status None)",
                lambda: connector.check_ack(ack("alpha", payload), BINDING),  # noqa: B023
            )

    def test_invalid_ids_named_short(self):
        """
        An invalid peer id in the challenge or in an ack (claudectl's, the
        proof's or strong pairing's) fails the handshake saying where, shown
        cut to 40 characters so that a peer cannot fill the log.
        """
        long = "/" + "a" * 100
        short = repr(long[:40])
        ok = {"status": "ok"}
        pake = {"status": "pake", "pake": "A" * 44, "confirm": "A" * 43}
        unnamed, inside = challenge({"nonce": "ab" * 32}), named(starttls=False)
        cases = [
            (ConnectorHandshake("beta", KEY), named(long), None, None, "the challenge", short),
            (ConnectorHandshake("beta", KEY), named(5), None, None, "the challenge", "5"),
            (ConnectorHandshake("beta", KEY, legacy=True), unnamed, None, ok, "the ack", short),
            (ConnectorHandshake("beta", KEY), inside, BINDING, ok, "the ack", short),
            (ConnectorHandshake("beta", strong_code="7-ace-act"), inside, BINDING, pake, "the ack", short),
        ]
        for connector, challenge_message, binding, ack_payload, where, shown in cases:
            # each call is made within its iteration
            if ack_payload is None:
                call = lambda: connector.answer(challenge_message, binding)  # noqa: E731, B023
            else:
                connector.answer(challenge_message, binding)
                call = lambda: connector.check_ack(ack(long, ack_payload), binding)  # noqa: E731, B023
            with self.assertRaises(HandshakeFailed) as ctx:
                call()
            self.assertEqual(str(ctx.exception), f"the peer named an invalid peer id {shown} in {where}")

    def test_what_to_prove(self):
        """
        A connector proves a key or pairs with a strong code, not both; with
        neither it needs the keys to choose from.
        """
        with self.assertRaises(ValueError) as ctx:
            ConnectorHandshake("beta", KEY, strong_code="7-ace-act")
        self.assertEqual(str(ctx.exception), "give a key or a strong code, not both")
        with self.assertRaises(ValueError) as ctx:
            ConnectorHandshake("beta")
        self.assertEqual(str(ctx.exception), "give a key, a strong code, or the keys to choose from")

    def test_decided(self):
        """
        A verdict and its outcome are values: once made they cannot be
        changed, by whatever sees them before they are recorded.
        """
        acceptor = AcceptorHandshake(MemoryKeys({"beta": KEY}), identity="alpha")
        answer = ConnectorHandshake("beta", KEY, "alpha").answer(challenge(acceptor.challenge_payload()), BINDING)
        verdict = acceptor.verify(message("handshake", "beta", answer), BINDING)
        with self.assertRaises(dataclasses.FrozenInstanceError):
            verdict.outcome = None
        with self.assertRaises(dataclasses.FrozenInstanceError):
            verdict.outcome.peer_id = "mallory"
        self.assertEqual(verdict.outcome.peer_id, "beta")
