"""
Tests for L{relaymesh.protocol.RelayProtocol}: framing, the handshake state
machine, and what ends a connection.
"""

from twisted.trial.unittest import SynchronousTestCase

from relaymesh.handshake import compute_proof
from relaymesh.protocol import HANDSHAKE_TIMEOUT, State
from relaymesh.test.support import (
    MemoryKeys,
    Node,
    client_protocol,
    line,
    make_clock,
    pair_keys,
    server_protocol,
    written,
)
from relaymesh.wire import MAX_LINE_BYTES, RelayMessage

KEY = bytes(range(32))


class AcceptorTests(SynchronousTestCase):
    """
    The accepting side, fed bytes as a connector would send them.
    """

    def setUp(self):
        self.clock = make_clock()
        self.node = Node("alpha", self.clock, MemoryKeys({"beta": KEY}))
        self.protocol, self.transport = server_protocol(self.node.server)
        [self.challenge] = written(self.transport)

    def handshake(self, peer="beta", key=KEY, msg_type="handshake"):
        proof = compute_proof(key, self.challenge.payload["nonce"])
        return line(RelayMessage("h1", msg_type, peer, 1, {"proof": proof, "version": "0.49.2"}))

    def assertDenied(self, reason_fragment):
        messages = written(self.transport)
        self.assertEqual([(m.msg_type, m.payload) for m in messages], [("handshake_ack", {"status": "denied"})])
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertIn(reason_fragment, self.protocol.close_reason)
        self.assertEqual(self.node.server.failures.count("10.0.0.2"), 1)
        [event] = [e for e in self.node.events if e.kind == "denied"]
        self.assertEqual(event.direction, "inbound")

    def test_challenge_first(self):
        """
        The acceptor speaks first: a challenge with an empty from_peer and a
        64-hex-character nonce.
        """
        self.assertEqual(self.challenge.msg_type, "challenge")
        self.assertEqual(self.challenge.from_peer, "")
        self.assertRegex(self.challenge.payload["nonce"], r"\A[0-9a-f]{64}\Z")
        self.assertIs(self.protocol.state, State.AWAITING_HANDSHAKE)

    def test_fresh_nonce_per_connection(self):
        other, transport = server_protocol(self.node.server)
        [challenge] = written(transport)
        self.assertNotEqual(challenge.payload["nonce"], self.challenge.payload["nonce"])

    def test_ok(self):
        self.protocol.dataReceived(self.handshake())
        [ack] = written(self.transport)
        self.assertEqual((ack.msg_type, ack.from_peer, ack.payload), ("handshake_ack", "alpha", {"status": "ok"}))
        self.assertIs(self.protocol.state, State.CONNECTED)
        self.assertEqual(self.protocol.peer_id, "beta")
        self.assertEqual(self.node.server.handshakes_in_progress(), 0)
        self.assertEqual([e.kind for e in self.node.events], ["connected"])

    def test_wrong_key(self):
        self.protocol.dataReceived(self.handshake(key=bytes(32)))
        self.assertDenied("wrong proof")

    def test_not_a_handshake_first(self):
        """
        A first line that parses but is not a handshake is denied.
        """
        self.protocol.dataReceived(self.handshake(msg_type="heartbeat"))
        self.assertDenied("expected handshake")

    def test_unparseable_first_line(self):
        """
        A first line that does not parse is closed without an ack, and counts
        as a failure.
        """
        self.protocol.dataReceived(b"{not json\n")
        self.assertEqual(self.transport.value(), b"")
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertEqual(self.node.server.failures.count("10.0.0.2"), 1)

    def test_close_before_handshake_counts(self):
        self.transport.loseConnection()
        self.assertEqual(self.node.server.failures.count("10.0.0.2"), 1)
        self.assertEqual(self.node.server.handshakes_in_progress(), 0)

    def test_lines_after_close_ignored(self):
        """
        Lines arriving in the same packet after the one that closed the
        connection are not processed.
        """
        self.protocol.dataReceived(b"garbage\n" + self.handshake())
        self.assertEqual(self.transport.value(), b"")
        self.assertFalse(self.node.mesh.is_connected("beta"))

    def test_handshake_timeout(self):
        """
        A handshake not finished within 30 s is aborted and counted.
        """
        self.assertEqual(HANDSHAKE_TIMEOUT, 30.0)
        self.clock.advance(HANDSHAKE_TIMEOUT - 0.1)
        self.assertIs(self.protocol.state, State.AWAITING_HANDSHAKE)
        self.clock.advance(0.1)
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertTrue(self.transport.disconnected)
        self.assertIn("handshake not finished", self.protocol.close_reason)
        self.assertEqual(self.node.server.failures.count("10.0.0.2"), 1)

    def test_timeout_cancelled_on_success(self):
        self.protocol.dataReceived(self.handshake())
        self.clock.advance(HANDSHAKE_TIMEOUT + 1)
        self.assertIs(self.protocol.state, State.CONNECTED)

    def test_endless_line(self):
        """
        A line that never ends is cut off once it passes 1 MiB, and what was
        buffered is dropped.
        """
        chunk = b"x" * 65536
        for _ in range(MAX_LINE_BYTES // len(chunk)):
            self.protocol.dataReceived(chunk)
        self.assertIs(self.protocol.state, State.AWAITING_HANDSHAKE)
        self.protocol.dataReceived(chunk)
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertIn("longer than", self.protocol.close_reason)
        self.assertEqual(self.protocol._buffer, b"")
        self.protocol.dataReceived(chunk)
        self.assertEqual(self.protocol._buffer, b"")


class ConnectedTests(SynchronousTestCase):
    """
    A connection after the handshake.
    """

    def setUp(self):
        self.clock = make_clock()
        self.node = Node("alpha", self.clock, MemoryKeys({"beta": KEY, "gamma": KEY}))
        self.protocol, self.transport = self.connected("beta")
        self.other, self.other_transport = self.connected("gamma")

    def connected(self, peer):
        protocol, transport = server_protocol(self.node.server)
        [challenge] = written(transport)
        proof = compute_proof(KEY, challenge.payload["nonce"])
        protocol.dataReceived(line(RelayMessage("h", "handshake", peer, 1, {"proof": proof})))
        written(transport)
        return protocol, transport

    def message(self, msg_type="task_status", peer="beta", id="m1"):
        return line(RelayMessage(id, msg_type, peer, 1, {"task_id": "t"}))

    def assertClosedAndOthersUnaffected(self, fragment):
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertIn(fragment, self.protocol.close_reason)
        self.assertFalse(self.node.mesh.is_connected("beta"))
        self.assertTrue(self.node.mesh.is_connected("gamma"))
        self.other.dataReceived(self.message(peer="gamma", id="g1"))
        self.assertEqual(self.node.received[-1][0], "gamma")

    def test_message_delivered(self):
        self.protocol.dataReceived(self.message())
        [(peer, message)] = self.node.received
        self.assertEqual((peer, message.msg_type, message.payload), ("beta", "task_status", {"task_id": "t"}))

    def test_many_lines_one_packet(self):
        self.protocol.dataReceived(b"".join(self.message(id=f"m{i}") for i in range(50)))
        self.assertEqual(len(self.node.received), 50)

    def test_bad_line(self):
        self.protocol.dataReceived(b'{"id":"m","msg_type":"bogus","from_peer":"beta","timestamp":1,"payload":{}}\n')
        self.assertClosedAndOthersUnaffected("unknown msg_type")

    def test_invalid_utf8(self):
        self.protocol.dataReceived(b'{"id":"\xff"}\n')
        self.assertClosedAndOthersUnaffected("UTF-8")

    def test_second_handshake(self):
        self.protocol.dataReceived(self.message("handshake"))
        self.assertClosedAndOthersUnaffected("unexpected handshake")

    def test_from_peer_mismatch(self):
        """
        A message whose from_peer is not the authenticated peer is refused.
        """
        self.protocol.dataReceived(self.message(peer="gamma"))
        self.assertClosedAndOthersUnaffected("claims to be from 'gamma'")
        self.assertEqual([p for p, _ in self.node.received], ["gamma"])

    def test_idle_timeout(self):
        """
        A peer silent for three heartbeat intervals (90 s) is dropped; every
        line it sends restarts the count.
        """
        self.clock.advance(60)
        self.protocol.dataReceived(self.message())
        self.clock.advance(29)
        self.assertIs(self.other.state, State.CONNECTED)
        self.clock.advance(1)
        self.assertIs(self.other.state, State.CLOSED)  # gamma: silent since t=0
        self.clock.advance(59)
        self.assertIs(self.protocol.state, State.CONNECTED)
        self.clock.advance(1)
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertTrue(self.transport.disconnected)
        self.assertIn("no message for 90 s", self.protocol.close_reason)
        self.assertEqual(
            [e.peer_id for e in self.node.events if e.kind == "disconnected"], ["gamma", "beta"]
        )

    def test_traffic_counted(self):
        data = self.message()
        self.protocol.dataReceived(data)
        status = self.node.mesh.peer("beta")
        self.assertEqual(status.msgs_in, 2)  # the handshake and the message
        self.assertGreater(status.bytes_in, len(data))
        self.node.mesh.send("beta", "ack", {"ack_id": "m1"})
        self.assertEqual(self.node.mesh.peer("beta").msgs_out, 3)  # challenge, ack, ack


class ConnectorTests(SynchronousTestCase):
    """
    The connecting side, fed bytes as an acceptor would send them.
    """

    def setUp(self):
        self.clock = make_clock()
        self.node = Node("beta", self.clock, MemoryKeys({"alpha": KEY}))
        self.factory = self.node.client("alpha")
        self.protocol, self.transport = client_protocol(self.factory)

    def challenge(self, nonce="ab" * 32):
        return line(RelayMessage("c", "challenge", "", 1, {"nonce": nonce}))

    def ack(self, status="ok", peer="alpha"):
        return line(RelayMessage("a", "handshake_ack", peer, 1, {"status": status}))

    def test_waits_for_challenge(self):
        self.assertEqual(self.transport.value(), b"")
        self.assertIs(self.protocol.state, State.AWAITING_CHALLENGE)

    def test_answers_challenge(self):
        self.protocol.dataReceived(self.challenge())
        [handshake] = written(self.transport)
        self.assertEqual(handshake.from_peer, "beta")
        self.assertEqual(handshake.payload["proof"], compute_proof(KEY, "ab" * 32))
        self.assertIs(self.protocol.state, State.AWAITING_ACK)

    def test_denied(self):
        self.protocol.dataReceived(self.challenge() + self.ack("denied"))
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertTrue(self.protocol.proof_rejected)
        [event] = [e for e in self.node.events if e.kind == "denied"]
        self.assertEqual((event.direction, event.peer_id), ("outbound", "alpha"))

    def test_wrong_peer_answers(self):
        self.protocol.dataReceived(self.challenge() + self.ack(peer="mallory"))
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertIn("expected peer alpha", self.protocol.close_reason)

    def test_bad_challenge(self):
        self.protocol.dataReceived(self.challenge(nonce="short"))
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertEqual(self.transport.value(), b"")
        self.assertFalse(self.protocol.proof_rejected)

    def test_message_before_ack(self):
        self.protocol.dataReceived(self.challenge())
        self.protocol.dataReceived(line(RelayMessage("x", "heartbeat", "alpha", 1, {})))
        self.assertIs(self.protocol.state, State.CLOSED)

    def test_handshake_timeout(self):
        self.protocol.dataReceived(self.challenge())
        self.clock.advance(HANDSHAKE_TIMEOUT)
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertTrue(self.transport.disconnected)


class TwoNodesTests(SynchronousTestCase):
    """
    Two nodes joined in memory.
    """

    def test_pairing_through_pending_key(self):
        """
        The acceptor's pending key, proved by a peer with the same key stored
        under the acceptor's id, becomes that peer's key on the acceptor.
        """
        from relaymesh.test.support import connect

        clock = make_clock()
        alpha = Node("alpha", clock, MemoryKeys(pending=KEY))
        beta = Node("beta", clock, MemoryKeys({"alpha": KEY}))
        server, client, pump = connect(alpha, beta)
        self.assertIs(server.state, State.CONNECTED)
        self.assertIs(client.state, State.CONNECTED)
        self.assertEqual(alpha.keys.keys, {"beta": KEY})
        self.assertIsNone(alpha.keys.pending)
        beta.mesh.send("alpha", "delegate_task", {"task_id": "1", "prompt": "hi"})
        alpha.mesh.send("beta", "task_status", {"task_id": "1", "status": "done"})
        pump.flush()
        self.assertEqual([m.msg_type for _, m in alpha.received], ["delegate_task"])
        self.assertEqual([m.msg_type for _, m in beta.received], ["task_status"])

    def test_heartbeats_keep_link_alive(self):
        """
        With heartbeats running on both sides, the link outlives many idle
        timeouts.
        """
        from relaymesh.test.support import connect

        clock = make_clock()
        alpha, beta = Node("alpha", clock), Node("beta", clock)
        pair_keys(alpha, beta)
        server, client, pump = connect(alpha, beta)
        alpha.mesh.start()
        beta.mesh.start()
        for _ in range(20):
            clock.advance(30)
            pump.flush()
        self.assertIs(server.state, State.CONNECTED)
        self.assertIs(client.state, State.CONNECTED)
        self.assertEqual(len([m for _, m in alpha.received if m.msg_type == "heartbeat"]), 20)
        alpha.mesh.stop()
        beta.mesh.stop()
