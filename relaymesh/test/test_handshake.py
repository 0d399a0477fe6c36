"""
Tests for L{relaymesh.handshake}, against claudectl 0.49.2's own transcript.
The rules of handshake v2 (the TLS upgrade, what may be proved in clear,
reflected nonces, the bare dial's key): L{relaymesh.test.test_handshake_v2}.
"""

import hashlib
import hmac

from twisted.trial.unittest import SynchronousTestCase

from relaymesh import pairing
from relaymesh.armed import PAIR_CODE_FORM
from relaymesh.connection import State
from relaymesh.handshake.acceptor import AcceptorHandshake, Step
from relaymesh.handshake.base import HandshakeFailed
from relaymesh.handshake.connector import ConnectorHandshake
from relaymesh.handshake.connector import Step as ConnectorStep
from relaymesh.handshake.proofs import (
    VERSION,
    acceptor_proof,
    compute_proof,
    connector_proof,
    new_nonce,
    same_proof,
)
from relaymesh.test.support import (
    FakeConnector,
    Node,
    client_protocol,
    connect,
    line,
    load_codes,
    load_transcript,
    make_clock,
    server_protocol,
    written,
)
from relaymesh.testing import MemoryKeys, network
from relaymesh.wire import RelayMessage, decode

TRANSCRIPT_KEY = bytes.fromhex(
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
)
ACCEPTOR = "laptop-a3f2"
CONNECTOR = "ci-runner-9d1e"

SERVER_FP = "sha256:" + "1" * 64
CLIENT_FP = "sha256:" + "2" * 64
BINDING = (SERVER_FP, CLIENT_FP)


def transcript():
    lines = load_transcript()
    return [entry["line"].encode() for entry in lines], [entry["dir"] for entry in lines]


def verify_proof(psk: bytes, nonce: str, proof: object) -> bool:
    """
    Check a connector's claudectl proof as the acceptor does.
    """
    return same_proof(compute_proof(psk, nonce), proof)


def message(msg_type, from_peer, payload):
    return RelayMessage("m1", msg_type, from_peer, 1, payload)


def handshake_message(from_peer, payload, msg_type="handshake"):
    return message(msg_type, from_peer, payload)


def upgrade(test, acceptor, connector, claimed="beta"):
    """
    Run the C{starttls} round in clear between two handshake objects, check
    that both agree to switch to TLS, and switch them.
    """
    challenge = message("challenge", "", acceptor.challenge_payload())
    verdict = acceptor.verify(handshake_message(claimed, connector.answer(challenge)))
    test.assertEqual((verdict.ack, verdict.upgrade, verdict.outcome), ({"status": "starttls"}, True, None))
    test.assertEqual(connector.check_ack(message("handshake_ack", acceptor.identity, verdict.ack)), (None, None))
    acceptor.upgraded()
    connector.upgraded()


class ProofTests(SynchronousTestCase):
    def test_claudectl_proof(self):
        """
        The proof of the recorded key for the recorded nonce is claudectl's.
        """
        vector = load_codes()["hmac_proof"]
        psk = bytes.fromhex(vector["psk"])
        self.assertEqual(compute_proof(psk, vector["nonce"]), vector["proof"])
        self.assertTrue(verify_proof(psk, vector["nonce"], vector["proof"]))

    def test_wrong_proofs(self):
        psk = bytes(32)
        nonce = new_nonce()
        good = compute_proof(psk, nonce)
        self.assertFalse(verify_proof(bytes([1] * 32), nonce, good))
        self.assertFalse(verify_proof(psk, nonce, good.upper()))
        self.assertFalse(verify_proof(psk, nonce, good[:-1]))
        self.assertFalse(verify_proof(psk, nonce, None))
        self.assertFalse(verify_proof(psk, nonce, "é" * 64))

    def test_nonce(self):
        """
        A nonce is 32 random bytes as 64 lowercase hex characters.
        """
        self.assertEqual(new_nonce(lambda n: b"\xab" * n), "ab" * 32)
        self.assertNotEqual(new_nonce(), new_nonce())

class AcceptorHandshakeTests(SynchronousTestCase):
    """
    The acceptor and a claudectl connector: claudectl's one-way proof in
    clear, from a peer whose key is marked legacy (or of an armed key).
    """

    def setUp(self):
        self.key = bytes(range(32))
        self.pending = bytes(range(1, 33))
        self.keys = MemoryKeys({"beta": self.key}, pending=self.pending)
        self.keys.metas["beta"] = {"legacy": True}
        self.handshake = AcceptorHandshake(self.keys, identity="alpha")

    def proof(self, key):
        return {"proof": compute_proof(key, self.handshake.nonce), "version": "x"}

    def test_stored_key(self):
        verdict = self.handshake.verify(handshake_message("beta", self.proof(self.key)))
        self.assertEqual((verdict.outcome.peer_id, verdict.ack), ("beta", {"status": "ok"}))
        self.assertIsNone(verdict.outcome.paired_via)
        self.assertEqual((verdict.outcome.mutual, verdict.outcome.encrypted), (False, False))
        self.assertEqual(self.keys.pending, self.pending)

    def test_no_impersonation(self):
        """
        A proof made with another peer's key does not authenticate: only the
        claimed peer's key is tried, and the pending key is not tried when
        that peer has a key.
        """
        for key in (self.pending, bytes(32)):
            self.handshake = AcceptorHandshake(self.keys, identity="alpha")
            with self.assertRaises(HandshakeFailed) as ctx:
                self.handshake.verify(handshake_message("beta", self.proof(key)))
            self.assertIn("wrong proof", str(ctx.exception))
        self.keys.keys["gamma"] = bytes(32)
        self.keys.metas["gamma"] = {"legacy": True}
        self.handshake = AcceptorHandshake(self.keys, identity="alpha")
        with self.assertRaises(HandshakeFailed) as ctx:
            self.handshake.verify(handshake_message("gamma", self.proof(self.key)))
        self.assertIn("wrong proof", str(ctx.exception))

    def test_pending_key_claimed(self):
        """
        An unknown peer that proves the pending key gets it as its own key,
        and the pending key is gone; proved in claudectl's form, the key is
        recorded as a legacy peer's.
        """
        outcome = self.handshake.verify(handshake_message("newcomer", self.proof(self.pending))).outcome
        self.assertEqual(outcome.peer_id, "newcomer")
        self.assertEqual(outcome.paired_via, PAIR_CODE_FORM)
        # the role writes nothing; recording the outcome claims the key
        self.assertEqual(self.keys.pending, self.pending)
        pairing.record(self.keys, outcome, 0)
        self.assertEqual(self.keys.keys["newcomer"], self.pending)
        self.assertIsNone(self.keys.pending)
        self.assertIs(self.keys.meta("newcomer")["legacy"], True)

    def test_unknown_peer(self):
        self.keys.pending = None
        with self.assertRaises(HandshakeFailed) as ctx:
            self.handshake.verify(handshake_message("stranger", self.proof(self.key)))
        self.assertIn("no key for peer stranger", str(ctx.exception))

    def test_invalid_ids(self):
        for claimed in ("", "_pending", "../etc", "a" * 129, "sp ace"):
            self.handshake = AcceptorHandshake(self.keys)
            with self.assertRaises(HandshakeFailed) as ctx:
                self.handshake.verify(handshake_message(claimed, self.proof(self.pending)))
            self.assertIn("invalid peer id", str(ctx.exception))
        self.assertEqual(self.keys.pending, self.pending)

    def test_not_a_handshake(self):
        with self.assertRaises(HandshakeFailed) as ctx:
            self.handshake.verify(handshake_message("beta", self.proof(self.key), "heartbeat"))
        self.assertIn("expected handshake, got heartbeat", str(ctx.exception))

    def test_missing_proof(self):
        for payload in ({}, {"proof": 5}, [], "proof"):
            self.handshake = AcceptorHandshake(self.keys)
            with self.assertRaises(HandshakeFailed) as ctx:
                self.handshake.verify(handshake_message("beta", payload))
            self.assertIn("has no proof", str(ctx.exception))

    def test_state_table(self):
        """
        The acceptor takes a handshake only while it waits for one: after it
        authenticated the peer, or after a failure, any other is refused.
        (The steps of the TLS upgrade: L{test_handshake_v2}.)
        """
        self.assertIs(self.handshake.step, Step.AWAITING_HANDSHAKE)
        self.handshake.verify(handshake_message("beta", self.proof(self.key)))
        self.assertIs(self.handshake.step, Step.AUTHENTICATED)
        with self.assertRaises(HandshakeFailed) as ctx:
            self.handshake.verify(handshake_message("beta", self.proof(self.key)))
        self.assertIn("when authenticated", str(ctx.exception))
        failed = AcceptorHandshake(self.keys)
        self.assertRaises(HandshakeFailed, failed.verify, handshake_message("beta", {}))
        self.assertIs(failed.step, Step.FAILED)
        with self.assertRaises(HandshakeFailed) as ctx:
            failed.verify(handshake_message("beta", {"proof": compute_proof(self.key, failed.nonce)}))
        self.assertIn("when failed", str(ctx.exception))


class ConnectorHandshakeTests(SynchronousTestCase):
    def challenge(self, payload):
        return RelayMessage("c", "challenge", "", 1, payload)

    def named(self, peer="alpha"):
        """
        A relaymesh acceptor's challenge inside TLS (no upgrade offered).
        """
        return self.challenge({"nonce": "ab" * 32, "peer": peer, "caps": ["mutual-auth/2"]})

    def ack(self, peer, status="ok"):
        return RelayMessage("a", "handshake_ack", peer, 1, {"status": status})

    def test_answer(self):
        """
        To a claudectl acceptor (no name in the challenge) a legacy peer's
        key is proved exactly as claudectl does; to a relaymesh acceptor in
        clear only the TLS upgrade is asked for; inside TLS the labelled
        proof names both peers and carries the connector's nonce.
        """
        handshake = ConnectorHandshake("beta", bytes(32), legacy=True)
        payload = handshake.answer(self.challenge({"nonce": "ab" * 32}))
        self.assertEqual(payload, {"proof": compute_proof(bytes(32), "ab" * 32), "version": VERSION})
        self.assertTrue(payload["version"].startswith("relaymesh-"))
        handshake = ConnectorHandshake("beta", bytes(32), legacy=True)
        payload = handshake.answer(
            self.challenge({"nonce": "ab" * 32, "peer": "alpha", "caps": ["mutual-auth/2", "starttls/1"]})
        )
        self.assertEqual(payload, {"starttls": True, "version": VERSION})
        handshake = ConnectorHandshake("beta", bytes(32))
        payload = handshake.answer(self.named(), BINDING)
        self.assertEqual(sorted(payload), ["caps", "nonce", "proof", "version"])
        self.assertEqual(
            payload["proof"], connector_proof(bytes(32), "ab" * 32, payload["nonce"], "beta", "alpha", BINDING)
        )

    def test_bad_challenges(self):
        for payload in ({}, {"nonce": 5}, {"nonce": "zz" * 32}, {"nonce": "ab"}, None):
            handshake = ConnectorHandshake("beta", bytes(32))
            with self.assertRaises(HandshakeFailed) as ctx:
                handshake.answer(self.challenge(payload))
            self.assertIn("no 64-hex-character nonce", str(ctx.exception))
            self.assertIs(handshake.step, ConnectorStep.FAILED)
        handshake = ConnectorHandshake("beta", bytes(32))
        with self.assertRaises(HandshakeFailed) as ctx:
            handshake.answer(RelayMessage("c", "heartbeat", "", 1, {"nonce": "ab" * 32}))
        self.assertIn("expected challenge", str(ctx.exception))

    def test_ack_legacy(self):
        """
        A legacy (claudectl) acceptor's bare ok is enough only for a
        connector told to expect a legacy peer.
        """
        for expected in (None, "alpha"):
            handshake = ConnectorHandshake("beta", bytes(32), expected, legacy=True)
            handshake.answer(self.challenge({"nonce": "ab" * 32}))
            outcome, reply = handshake.check_ack(self.ack("alpha"))
            self.assertEqual((outcome.peer_id, reply), ("alpha", None))
            self.assertFalse(handshake.mutual)
            self.assertEqual((outcome.mutual, outcome.encrypted), (False, False))

    def test_ack_without_proof_refused(self):
        """
        A relaymesh acceptor's ok must prove the key.
        """
        handshake = ConnectorHandshake("beta", bytes(32), "alpha")
        handshake.answer(self.named(), BINDING)
        with self.assertRaises(HandshakeFailed) as ctx:
            handshake.check_ack(self.ack("alpha"), BINDING)
        self.assertIn("alpha did not prove that it holds the key", str(ctx.exception))
        self.assertFalse(handshake.mutual)

    def test_ack_refusals(self):
        for handshake, ack, fragment in [
            (ConnectorHandshake("beta", bytes(32)), self.ack("alpha", "denied"), "denied"),
            (ConnectorHandshake("beta", bytes(32), "alpha"), self.ack("gamma"), "expected peer alpha"),
            (ConnectorHandshake("beta", bytes(32)), self.ack("../x"), "invalid peer id"),
            (ConnectorHandshake("beta", bytes(32)), self.ack("beta"), "own id"),
        ]:
            handshake.answer(self.named(), BINDING)
            with self.assertRaises(HandshakeFailed) as ctx:
                handshake.check_ack(ack, BINDING)
            self.assertIn(fragment, str(ctx.exception))

    def test_state_table(self):
        """
        The connector answers one challenge, then takes acks; anything out
        of turn, or anything after the handshake ended, is refused. (The
        steps of the TLS upgrade: L{test_handshake_v2}.)
        """
        handshake = ConnectorHandshake("beta", bytes(32), "alpha", legacy=True)
        self.assertIs(handshake.step, ConnectorStep.AWAITING_CHALLENGE)
        with self.assertRaises(HandshakeFailed) as ctx:
            handshake.check_ack(self.ack("alpha"))
        self.assertIn("handshake_ack when awaiting the challenge", str(ctx.exception))
        handshake.answer(self.challenge({"nonce": "ab" * 32}))
        self.assertIs(handshake.step, ConnectorStep.AWAITING_ACK)
        with self.assertRaises(HandshakeFailed) as ctx:
            handshake.answer(self.challenge({"nonce": "cd" * 32}))
        self.assertIn("challenge when awaiting the ack", str(ctx.exception))
        self.assertRaises(HandshakeFailed, handshake.check_ack, self.ack("alpha", "denied"))
        self.assertIs(handshake.step, ConnectorStep.FAILED)
        with self.assertRaises(HandshakeFailed) as ctx:
            handshake.check_ack(self.ack("alpha"))
        self.assertIn("when failed", str(ctx.exception))

    def test_pake_ack_only_when_pairing(self):
        """
        A C{pake} ack to a connector that proves a key is a denial, not the
        start of strong pairing.
        """
        handshake = ConnectorHandshake("beta", bytes(32), "alpha")
        handshake.answer(self.named(), BINDING)
        with self.assertRaises(HandshakeFailed) as ctx:
            handshake.check_ack(self.ack("alpha", "pake"), BINDING)
        self.assertIn("denied", str(ctx.exception))


class TranscriptTests(SynchronousTestCase):
    """
    Replays of the real exchange between a claudectl 0.49.2 acceptor
    (C{laptop-a3f2}) and connector (C{ci-runner-9d1e}). A claudectl peer's
    key is marked legacy.
    """

    def acceptor(self, lines):
        """
        Our acceptor, with claudectl's nonce and the connector's key marked
        legacy.
        """
        node = Node(ACCEPTOR, make_clock(), MemoryKeys({CONNECTOR: TRANSCRIPT_KEY}))
        node.keys.metas[CONNECTOR] = {"legacy": True}
        nonce = decode(lines[0]).payload["nonce"]
        node.server._randbytes = lambda n: bytes.fromhex(nonce)
        return node

    def test_our_acceptor_accepts_claudectl_connector(self):
        """
        Our acceptor, with claudectl's nonce, accepts the recorded connector's
        bytes and answers like claudectl did. Its challenge is claudectl's
        with this node's name and capabilities added, which claudectl does
        not read.
        """
        lines, directions = transcript()
        node = self.acceptor(lines)
        protocol, transport = server_protocol(node.server)
        [challenge] = written(transport)
        recorded_challenge = decode(lines[0])
        self.assertEqual(
            challenge.to_dict()["payload"],
            {**recorded_challenge.payload, "peer": ACCEPTOR, "caps": ["mutual-auth/2"]},
        )
        self.assertEqual(challenge.msg_type, recorded_challenge.msg_type)
        self.assertEqual(challenge.from_peer, "")
        self.assertEqual(directions[1], "connector->acceptor")
        protocol.dataReceived(lines[1] + b"\n")
        [ack] = written(transport)
        recorded = decode(lines[2])
        self.assertEqual(
            (ack.msg_type, ack.from_peer, ack.payload),
            (recorded.msg_type, recorded.from_peer, recorded.payload),
        )
        self.assertIs(protocol.state, State.CONNECTED)
        self.assertTrue(node.mesh.is_connected(CONNECTOR))
        self.assertIs(node.keys.meta(CONNECTOR)["legacy"], True)

    def test_our_connector_matches_claudectl_connector(self):
        """
        Our connector answers the recorded challenge with the recorded proof,
        takes the recorded ack, and delivers the acceptor's heartbeat.
        """
        lines, _ = transcript()
        clock = make_clock()
        node = Node(CONNECTOR, clock, MemoryKeys({ACCEPTOR: TRANSCRIPT_KEY}))
        protocol, transport = client_protocol(node.client(ACCEPTOR, legacy=True))
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(lines[0] + b"\n")
        [handshake] = written(transport)
        recorded = decode(lines[1])
        self.assertEqual(handshake.msg_type, "handshake")
        self.assertEqual(sorted(handshake.payload), ["proof", "version"])
        self.assertEqual(handshake.from_peer, CONNECTOR)
        self.assertEqual(handshake.payload["proof"], recorded.payload["proof"])
        protocol.dataReceived(lines[2] + b"\n" + lines[3] + b"\n")
        self.assertIs(protocol.state, State.CONNECTED)
        self.assertEqual(protocol.peer_id, ACCEPTOR)
        [(peer, heartbeat)] = node.received
        self.assertEqual((peer, heartbeat.msg_type), (ACCEPTOR, "heartbeat"))
        self.assertIs(node.keys.meta(ACCEPTOR)["legacy"], True)

    def test_claudectl_acceptor_refused_unless_legacy(self):
        """
        A claudectl acceptor does not name itself; a connector that expects
        a relaymesh peer proves nothing to it, closes the connection and
        says how to dial a claudectl peer.
        """
        lines, _ = transcript()
        node = Node(CONNECTOR, make_clock(), MemoryKeys({ACCEPTOR: TRANSCRIPT_KEY}))
        protocol, transport = client_protocol(node.client(ACCEPTOR))
        protocol.dataReceived(lines[0] + b"\n")
        self.assertEqual(transport.value(), b"")
        self.assertIs(protocol.state, State.CLOSED)
        self.assertIn(f"{ACCEPTOR} did not name itself", protocol.close_reason)
        self.assertIn(f"legacy:{ACCEPTOR}@HOST:PORT", protocol.close_reason)

    def test_acceptor_answers_claudectl_connector_plainly(self):
        """
        To a claudectl connector (no nonce of its own) our ack is exactly
        claudectl's: the status and nothing else.
        """
        lines, _ = transcript()
        node = self.acceptor(lines)
        protocol, transport = server_protocol(node.server)
        written(transport)
        protocol.dataReceived(lines[1] + b"\n")
        [ack] = written(transport)
        self.assertEqual(ack.payload, {"status": "ok"})

    def test_byte_by_byte(self):
        """
        The transcript delivered one byte at a time works the same.
        """
        lines, _ = transcript()
        clock = make_clock()
        node = Node(CONNECTOR, clock, MemoryKeys({ACCEPTOR: TRANSCRIPT_KEY}))
        protocol, transport = client_protocol(node.client(ACCEPTOR, legacy=True), FakeConnector())
        for each in (lines[0], lines[2], lines[3]):
            for i in range(len(each)):
                protocol.dataReceived(each[i : i + 1])
            protocol.dataReceived(b"\n")
        self.assertIs(protocol.state, State.CONNECTED)
        self.assertEqual(len(node.received), 1)


class MutualAuthenticationTests(SynchronousTestCase):
    """
    Two relaymesh nodes prove the key to each other, inside TLS.
    """

    def setUp(self):
        self.clock = make_clock()
        self.alpha = Node("alpha", self.clock, MemoryKeys({"beta": TRANSCRIPT_KEY}))
        self.beta = Node("beta", self.clock, MemoryKeys({"alpha": TRANSCRIPT_KEY}))

    def test_both_prove(self):
        """
        In clear only the upgrade is agreed; inside TLS, after a fresh
        challenge, the connector sends its nonce and capabilities, the
        acceptor answers with its own proof and capabilities, and both
        learn the other's.
        """
        writes = []  # what the application writes, at both ends, in order
        self.patch(network._Transport, "recorded", writes)
        server, client, pump = connect(self.alpha, self.beta)
        sent = [decode(raw) for raw in b"".join(writes).split(b"\n") if raw]
        clear = [("challenge", ["caps", "nonce", "peer"]), ("handshake", ["starttls", "version"]), ("handshake_ack", ["status"])]
        tls = [("challenge", ["caps", "nonce", "peer"]), ("handshake", ["caps", "nonce", "proof", "version"])]
        tls.append(("handshake_ack", ["caps", "proof", "status"]))
        self.assertEqual([(m.msg_type, sorted(m.payload)) for m in sent], clear + tls)
        self.assertEqual(sent[0].payload["caps"], ["mutual-auth/2", "starttls/1"])
        self.assertEqual(sent[3].payload["caps"], ["mutual-auth/2", "ping/1"])
        self.assertIs(client.state, State.CONNECTED)
        self.assertIs(server.state, State.CONNECTED)
        for outcome in (client.outcome, server.outcome):
            self.assertEqual((outcome.mutual, outcome.encrypted), (True, True))
            self.assertEqual(outcome.capabilities, {"mutual-auth/2", "ping/1"})
        self.assertTrue(client.encrypted and server.encrypted)

    def test_message_as_the_peer_connects(self):
        """
        A message the acceptor sends as the peer connects goes in the TLS
        record of its ack; longer than the handshake's limit, it is taken.
        """

        def welcome(event):
            if event.kind == "connected":
                self.alpha.mesh.send(event.peer_id, "task_status", {"pad": "x" * 12000})

        self.alpha.mesh.watch_peers(welcome)
        server, client, pump = connect(self.alpha, self.beta)
        self.assertIs(client.state, State.CONNECTED, client.close_reason)
        self.assertEqual([m.msg_type for _, m in self.beta.received], ["task_status"])

    def exchange(self, tamper):
        """
        Run beta's connector against alpha's acceptor by hand, through the
        TLS upgrade, letting C{tamper} change the ack before beta checks it.
        """
        acceptor = AcceptorHandshake(self.alpha.keys, identity="alpha", can_upgrade=True)
        connector = ConnectorHandshake("beta", TRANSCRIPT_KEY, "alpha")
        upgrade(self, acceptor, connector)
        challenge = RelayMessage("c", "challenge", "", 1, acceptor.challenge_payload())
        handshake = RelayMessage("h", "handshake", "beta", 1, connector.answer(challenge, BINDING))
        verdict = acceptor.verify(handshake, BINDING)
        ack = RelayMessage("a", "handshake_ack", "alpha", 1, tamper(dict(verdict.ack), handshake))
        return connector.check_ack(ack, BINDING)

    def test_wrong_acceptor_proof(self):
        with self.assertRaises(HandshakeFailed) as ctx:
            self.exchange(lambda ack, hs: {**ack, "proof": "0" * 64})
        self.assertIn("wrong proof", str(ctx.exception))

    def test_reflection_refused(self):
        """
        The connector's own proof sent back as the acceptor's is refused:
        the two directions use different labels.
        """
        with self.assertRaises(HandshakeFailed) as ctx:
            self.exchange(lambda ack, hs: {**ack, "proof": hs.payload["proof"]})
        self.assertIn("wrong proof", str(ctx.exception))

    def test_replay_refused(self):
        """
        An acceptor proof from another connection (other nonces) is refused.
        """
        outcome, reply = self.exchange(lambda ack, hs: ack)
        self.assertEqual((outcome.peer_id, reply), ("alpha", None))
        captured = {}

        def capture(ack, hs):
            captured["proof"] = ack["proof"]
            return ack

        self.exchange(capture)
        with self.assertRaises(HandshakeFailed) as ctx:
            self.exchange(lambda ack, hs: {**ack, "proof": captured["proof"]})
        self.assertIn("wrong proof", str(ctx.exception))

    def test_legacy_marked_in_meta(self):
        """
        A peer whose meta file says legacy is dialled with claudectl's bare
        handshake and accepted with one-way authentication.
        """
        self.beta.keys.update_meta("alpha", legacy=True)
        factory = self.beta.client("alpha")
        protocol, transport = client_protocol(factory)
        protocol.dataReceived(line(RelayMessage("c", "challenge", "", 1, {"nonce": "ab" * 32})))
        [handshake] = written(transport)
        self.assertEqual(sorted(handshake.payload), ["proof", "version"])
        protocol.dataReceived(line(RelayMessage("a", "handshake_ack", "alpha", 1, {"status": "ok"})))
        self.assertIs(protocol.state, State.CONNECTED)
        self.assertFalse(protocol.handshake.mutual)

    def test_malformed_extensions(self):
        """
        A nonce or capability list that is not what it should be is refused,
        in clear (from a legacy peer) as inside TLS.
        """
        self.alpha.keys.metas["beta"] = {"legacy": True}
        for extra, fragment in [
            ({"nonce": "xyz"}, "nonce is not 64 hex characters"),
            ({"caps": "all"}, "malformed capability list"),
            ({"caps": [1]}, "malformed capability list"),
            ({"caps": ["x"] * 33}, "malformed capability list"),
        ]:
            for binding in (None, BINDING):
                acceptor = AcceptorHandshake(self.alpha.keys, identity="alpha")
                proof = compute_proof(TRANSCRIPT_KEY, acceptor.nonce)
                with self.assertRaises(HandshakeFailed) as ctx:
                    acceptor.verify(handshake_message("beta", {"proof": proof, **extra}), binding)
                self.assertIn(fragment, str(ctx.exception))


class StrongPairingTests(SynchronousTestCase):
    """
    Pairing with a one-time code and SPAKE2, inside the handshake (inside
    the TLS the connection upgraded to).
    """

    def setUp(self):
        self.clock = make_clock()
        self.alpha = Node("alpha", self.clock, MemoryKeys())
        self.alpha.keys.strong_code = "7-ace-act"
        self.beta = Node("beta", self.clock, MemoryKeys())

    def run_pairing(self, code):
        acceptor = AcceptorHandshake(self.alpha.keys, identity="alpha", can_upgrade=True)
        connector = ConnectorHandshake("beta", None, strong_code=code)
        upgrade(self, acceptor, connector)
        challenge = RelayMessage("c", "challenge", "", 1, acceptor.challenge_payload())
        first = RelayMessage("h", "handshake", "beta", 1, connector.answer(challenge, BINDING))
        verdict = acceptor.verify(first, BINDING)
        self.assertIsNone(verdict.outcome)
        self.assertEqual(verdict.ack["status"], "pake")
        ack = RelayMessage("a", "handshake_ack", "alpha", 1, verdict.ack)
        peer, reply = connector.check_ack(ack, BINDING)
        self.assertIsNone(peer)
        verdict = acceptor.verify(RelayMessage("h2", "handshake", "beta", 1, reply), BINDING)
        pairing.record(self.alpha.keys, verdict.outcome, 0)
        ack = RelayMessage("a2", "handshake_ack", "alpha", 1, verdict.ack)
        outcome, reply = connector.check_ack(ack, BINDING)
        self.assertEqual(outcome.paired_via, "strong_code")
        return connector, (outcome.peer_id, reply)

    def test_pairs(self):
        """
        Both sides end with the same fresh key; the acceptor stores it with
        the pairing recorded, and the code is used up.
        """
        connector, done = self.run_pairing("7-ace-act")
        self.assertEqual(done, ("alpha", None))
        self.assertTrue(connector.mutual)
        self.assertEqual(self.alpha.keys.keys["beta"], connector.psk)
        self.assertEqual(len(connector.psk), 32)
        self.assertEqual(self.alpha.keys.meta("beta")["paired_via"], "strong_code")
        self.assertIs(self.alpha.keys.meta("beta")["legacy"], False)
        self.assertIsNone(self.alpha.keys.strong_code)

    def test_wrong_code_uses_it_up(self):
        """
        A wrong guess fails and disarms the code: the right code does not
        work afterwards either.
        """
        with self.assertRaises(HandshakeFailed) as ctx:
            self.run_pairing("8-ace-act")
        self.assertIn("does not match", str(ctx.exception))
        self.assertEqual(self.alpha.keys.keys, {})
        with self.assertRaises(HandshakeFailed) as ctx:
            self.run_pairing("7-ace-act")
        self.assertIn("no strong code is armed", str(ctx.exception))

    def test_over_the_protocol(self):
        """
        The same through two RelayProtocols joined in memory.
        """
        client_factory = self.beta.client(None)
        client_factory.strong_code = "7-ace-act"
        server, client, pump = connect(self.alpha, self.beta, client_factory)
        self.assertIs(client.state, State.CONNECTED)
        self.assertIs(server.state, State.CONNECTED)
        self.assertTrue(client.encrypted and server.encrypted)
        self.assertEqual(self.beta.keys.keys["alpha"], self.alpha.keys.keys["beta"])
        self.assertEqual(self.beta.keys.meta("alpha")["paired_via"], "strong_code")

    def test_already_paired(self):
        self.alpha.keys.keys["beta"] = TRANSCRIPT_KEY
        with self.assertRaises(HandshakeFailed) as ctx:
            self.run_pairing("7-ace-act")
        self.assertIn("already paired", str(ctx.exception))


class DocumentedExampleTests(SynchronousTestCase):
    """
    The byte-level examples of the handshake (docs/protocol.rst) are what
    the code computes and the documented formulas give, for the transcript's
    nonce, the connector nonce C{5c…5c}, and fingerprints C{11…} and C{22…}.
    """

    NONCE = "9f242fb8bfee69aeb49a319fdd21cc7d6398705d4aa6cfcb472cc44ac5625bee"
    CONNECTOR_NONCE = "5c" * 32
    BINDING = ("sha256:" + "11" * 32, "sha256:" + "22" * 32)

    CLAUDECTL = "3e1b4b957d3d544477c47f508af0373be828750164a4b0819859880ba6a3c348"
    CONNECTOR_TLS = "dda2afbf6f643ebd7f326bd1b4a2433dbdf2a57ada47a775f6b95a2f191617ec"
    ACCEPTOR_TLS = "df2615ab58a134443d1631fa2e259d1a7b6640d912647fbbe89be1828b2de534"

    def documented(self, label, *fields):
        """
        HMAC-SHA256(psk, label 0x00 field 0x00 field ...), as documented.
        """
        data = label + b"".join(b"\x00" + field.encode("ascii") for field in fields)
        return hmac.new(TRANSCRIPT_KEY, data, hashlib.sha256).hexdigest()

    def test_claudectl(self):
        self.assertEqual(compute_proof(TRANSCRIPT_KEY, self.NONCE), self.CLAUDECTL)
        self.assertEqual(hmac.new(TRANSCRIPT_KEY, self.NONCE.encode(), hashlib.sha256).hexdigest(), self.CLAUDECTL)
        self.assertEqual(decode(transcript()[0][1]).payload["proof"], self.CLAUDECTL)

    def test_tls(self):
        fields = (self.NONCE, self.CONNECTOR_NONCE, CONNECTOR, ACCEPTOR, *self.BINDING)
        self.assertEqual(
            connector_proof(TRANSCRIPT_KEY, self.NONCE, self.CONNECTOR_NONCE, CONNECTOR, ACCEPTOR, self.BINDING),
            self.CONNECTOR_TLS,
        )
        self.assertEqual(self.documented(b"relaymesh/2 connector proof", *fields), self.CONNECTOR_TLS)
        self.assertEqual(
            acceptor_proof(TRANSCRIPT_KEY, self.NONCE, self.CONNECTOR_NONCE, CONNECTOR, ACCEPTOR, self.BINDING),
            self.ACCEPTOR_TLS,
        )
        self.assertEqual(self.documented(b"relaymesh/2 acceptor proof", *fields), self.ACCEPTOR_TLS)
