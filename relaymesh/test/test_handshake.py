"""
Tests for L{relaymesh.handshake}, against claudectl 0.49.2's own transcript.
"""

from twisted.trial.unittest import SynchronousTestCase

from relaymesh.handshake import (
    AcceptorHandshake,
    ConnectorHandshake,
    HandshakeFailed,
    compute_proof,
    new_nonce,
    verify_proof,
)
from relaymesh.protocol import State
from relaymesh.test.support import (
    FakeConnector,
    MemoryKeys,
    Node,
    client_protocol,
    load_codes,
    load_transcript,
    make_clock,
    server_protocol,
    written,
)
from relaymesh.wire import RelayMessage, decode

TRANSCRIPT_KEY = bytes.fromhex(
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
)
ACCEPTOR = "laptop-a3f2"
CONNECTOR = "ci-runner-9d1e"


def transcript():
    lines = load_transcript()
    return [entry["line"].encode() for entry in lines], [entry["dir"] for entry in lines]


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


def handshake_message(from_peer, payload, msg_type="handshake"):
    return RelayMessage("m1", msg_type, from_peer, 1, payload)


class AcceptorHandshakeTests(SynchronousTestCase):
    def setUp(self):
        self.key = bytes(range(32))
        self.pending = bytes(range(1, 33))
        self.keys = MemoryKeys({"beta": self.key}, pending=self.pending)
        self.handshake = AcceptorHandshake(self.keys)

    def proof(self, key):
        return {"proof": compute_proof(key, self.handshake.nonce), "version": "x"}

    def test_stored_key(self):
        self.assertEqual(self.handshake.verify(handshake_message("beta", self.proof(self.key))), "beta")
        self.assertFalse(self.handshake.paired)
        self.assertEqual(self.keys.pending, self.pending)

    def test_no_impersonation(self):
        """
        A proof made with another peer's key does not authenticate: only the
        claimed peer's key is tried, and the pending key is not tried when
        that peer has a key.
        """
        for key in (self.pending, bytes(32)):
            with self.assertRaises(HandshakeFailed) as ctx:
                self.handshake.verify(handshake_message("beta", self.proof(key)))
            self.assertIn("wrong proof", str(ctx.exception))
        self.keys.keys["gamma"] = bytes(32)
        with self.assertRaises(HandshakeFailed):
            self.handshake.verify(handshake_message("gamma", self.proof(self.key)))

    def test_pending_key_claimed(self):
        """
        An unknown peer that proves the pending key gets it as its own key,
        and the pending key is gone.
        """
        self.assertEqual(
            self.handshake.verify(handshake_message("newcomer", self.proof(self.pending))),
            "newcomer",
        )
        self.assertTrue(self.handshake.paired)
        self.assertEqual(self.keys.keys["newcomer"], self.pending)
        self.assertIsNone(self.keys.pending)

    def test_unknown_peer(self):
        self.keys.pending = None
        with self.assertRaises(HandshakeFailed) as ctx:
            self.handshake.verify(handshake_message("stranger", self.proof(self.key)))
        self.assertIn("no key for peer stranger", str(ctx.exception))

    def test_invalid_ids(self):
        for claimed in ("", "_pending", "../etc", "a" * 129, "sp ace"):
            with self.assertRaises(HandshakeFailed):
                self.handshake.verify(handshake_message(claimed, self.proof(self.pending)))
        self.assertEqual(self.keys.pending, self.pending)

    def test_not_a_handshake(self):
        with self.assertRaises(HandshakeFailed):
            self.handshake.verify(handshake_message("beta", self.proof(self.key), "heartbeat"))

    def test_missing_proof(self):
        for payload in ({}, {"proof": 5}, [], "proof"):
            with self.assertRaises(HandshakeFailed):
                self.handshake.verify(handshake_message("beta", payload))


class ConnectorHandshakeTests(SynchronousTestCase):
    def challenge(self, payload):
        return RelayMessage("c", "challenge", "", 1, payload)

    def ack(self, peer, status="ok"):
        return RelayMessage("a", "handshake_ack", peer, 1, {"status": status})

    def test_answer(self):
        handshake = ConnectorHandshake("beta", bytes(32))
        payload = handshake.answer(self.challenge({"nonce": "ab" * 32}))
        self.assertEqual(payload["proof"], compute_proof(bytes(32), "ab" * 32))
        self.assertTrue(payload["version"].startswith("relaymesh-"))

    def test_bad_challenges(self):
        handshake = ConnectorHandshake("beta", bytes(32))
        for payload in ({}, {"nonce": 5}, {"nonce": "zz" * 32}, {"nonce": "ab"}, None):
            with self.assertRaises(HandshakeFailed):
                handshake.answer(self.challenge(payload))
        with self.assertRaises(HandshakeFailed):
            handshake.answer(RelayMessage("c", "heartbeat", "", 1, {"nonce": "ab" * 32}))

    def test_ack(self):
        self.assertEqual(ConnectorHandshake("beta", bytes(32)).check_ack(self.ack("alpha")), "alpha")
        self.assertEqual(
            ConnectorHandshake("beta", bytes(32), "alpha").check_ack(self.ack("alpha")), "alpha"
        )

    def test_ack_refusals(self):
        for handshake, ack, fragment in [
            (ConnectorHandshake("beta", bytes(32)), self.ack("alpha", "denied"), "denied"),
            (ConnectorHandshake("beta", bytes(32), "alpha"), self.ack("gamma"), "expected peer alpha"),
            (ConnectorHandshake("beta", bytes(32)), self.ack("../x"), "invalid peer id"),
            (ConnectorHandshake("beta", bytes(32)), self.ack("beta"), "own id"),
        ]:
            with self.assertRaises(HandshakeFailed) as ctx:
                handshake.check_ack(ack)
            self.assertIn(fragment, str(ctx.exception))


class TranscriptTests(SynchronousTestCase):
    """
    Replays of the real exchange between a claudectl 0.49.2 acceptor
    (C{laptop-a3f2}) and connector (C{ci-runner-9d1e}).
    """

    def test_our_acceptor_accepts_claudectl_connector(self):
        """
        Our acceptor, with claudectl's nonce, accepts the recorded connector's
        bytes and answers like claudectl did.
        """
        lines, directions = transcript()
        nonce = decode(lines[0]).payload["nonce"]
        clock = make_clock()
        node = Node(ACCEPTOR, clock, MemoryKeys({CONNECTOR: TRANSCRIPT_KEY}))
        node.server._randbytes = lambda n: bytes.fromhex(nonce)
        protocol, transport = server_protocol(node.server)
        [challenge] = written(transport)
        self.assertEqual(challenge.to_dict()["payload"], decode(lines[0]).payload)
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

    def test_our_connector_matches_claudectl_connector(self):
        """
        Our connector answers the recorded challenge with the recorded proof,
        takes the recorded ack, and delivers the acceptor's heartbeat.
        """
        lines, _ = transcript()
        clock = make_clock()
        node = Node(CONNECTOR, clock, MemoryKeys({ACCEPTOR: TRANSCRIPT_KEY}))
        protocol, transport = client_protocol(node.client(ACCEPTOR))
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(lines[0] + b"\n")
        [handshake] = written(transport)
        recorded = decode(lines[1])
        self.assertEqual(handshake.msg_type, "handshake")
        self.assertEqual(handshake.from_peer, CONNECTOR)
        self.assertEqual(handshake.payload["proof"], recorded.payload["proof"])
        protocol.dataReceived(lines[2] + b"\n" + lines[3] + b"\n")
        self.assertIs(protocol.state, State.CONNECTED)
        self.assertEqual(protocol.peer_id, ACCEPTOR)
        [(peer, heartbeat)] = node.received
        self.assertEqual((peer, heartbeat.msg_type), (ACCEPTOR, "heartbeat"))

    def test_byte_by_byte(self):
        """
        The transcript delivered one byte at a time works the same.
        """
        lines, _ = transcript()
        clock = make_clock()
        node = Node(CONNECTOR, clock, MemoryKeys({ACCEPTOR: TRANSCRIPT_KEY}))
        protocol, transport = client_protocol(node.client(ACCEPTOR), FakeConnector())
        for line in (lines[0], lines[2], lines[3]):
            for i in range(len(line)):
                protocol.dataReceived(line[i : i + 1])
            protocol.dataReceived(b"\n")
        self.assertIs(protocol.state, State.CONNECTED)
        self.assertEqual(len(node.received), 1)
