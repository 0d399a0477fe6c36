"""
Tests for L{relaymesh.connection.RelayProtocol}: framing, the handshake state
machine, and what ends a connection.
"""

import json

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import StringTransport, StringTransportWithDisconnection
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import alsoProvides

from relaymesh.acceptor import PREAUTH_BURST
from relaymesh.connection import HANDSHAKE_MAX_LINE, HANDSHAKE_TIMEOUT, State
from relaymesh.handshake.base import HandshakeFailed
from relaymesh.handshake.proofs import VERSION, compute_proof
from relaymesh.outbound import FLUSH_BYTES
from relaymesh.test.support import (
    Node,
    accepted,
    client_protocol,
    line,
    make_clock,
    pair_keys,
    server_protocol,
    written,
)
from relaymesh.testing import MemoryKeys, MemoryStore
from relaymesh.wire import MAX_LINE_BYTES, RelayMessage

KEY = bytes(range(32))


def watch_log(case):
    """
    Collect the events logged until the end of the test C{case}.
    """
    events = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def warnings(events):
    """
    The warnings about closed connections among logged C{events}, as text.
    """
    return [
        formatEvent(event)
        for event in events
        if event.get("log_level") is LogLevel.warn
        and (event.get("log_format") or "").startswith("closing connection")
    ]


class AcceptorTests(SynchronousTestCase):
    """
    The accepting side, fed bytes as a claudectl connector (its key marked
    legacy) would send them, on a transport that cannot start TLS.
    """

    def setUp(self):
        self.clock = make_clock()
        self.node = Node("alpha", self.clock, MemoryKeys({"beta": KEY}))
        self.node.keys.metas["beta"] = {"legacy": True}
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
        The acceptor speaks first: a challenge with an empty from_peer, a
        64-hex-character nonce, its name and capabilities (no TLS upgrade:
        the transport cannot start it).
        """
        self.assertEqual(self.challenge.msg_type, "challenge")
        self.assertEqual(self.challenge.from_peer, "")
        self.assertRegex(self.challenge.payload["nonce"], r"\A[0-9a-f]{64}\Z")
        self.assertEqual((self.challenge.payload["peer"], self.challenge.payload["caps"]), ("alpha", ["mutual-auth/2"]))
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
        self.assertEqual(len(self.node.server.handshaking()), 0)
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
        self.assertEqual(len(self.node.server.handshaking()), 0)

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
        A line that never ends is cut off once it passes the handshake's
        limit (8 KiB, over any handshake message); what was buffered is
        dropped.
        """
        chunk = b"x" * 1024
        for _ in range(HANDSHAKE_MAX_LINE // len(chunk)):
            self.protocol.dataReceived(chunk)
        self.assertIs(self.protocol.state, State.AWAITING_HANDSHAKE)
        self.protocol.dataReceived(chunk)
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertIn(f"longer than {HANDSHAKE_MAX_LINE} bytes", self.protocol.close_reason)
        self.assertEqual(self.protocol._buffer, b"")
        self.protocol.dataReceived(chunk)
        self.assertEqual(self.protocol._buffer, b"")

    def padded_handshake(self, size):
        """
        claudectl's handshake padded to a line of C{size} bytes (without its
        newline).
        """
        proof = compute_proof(KEY, self.challenge.payload["nonce"])
        bare = line(RelayMessage("h1", "handshake", "beta", 1, {"proof": proof, "pad": ""}))
        pad = "x" * (size - len(bare) + 1)
        padded = line(RelayMessage("h1", "handshake", "beta", 1, {"proof": proof, "pad": pad}))
        self.assertEqual(len(padded), size + 1)
        return padded

    def test_handshake_line_limit(self):
        """
        Before the handshake a line of 8192 bytes is read; one of 8193 is
        refused unread, and the connection closed.
        """
        self.protocol.dataReceived(self.padded_handshake(8192))
        self.assertIs(self.protocol.state, State.CONNECTED, self.protocol.close_reason)
        protocol, transport = server_protocol(self.node.server, host="10.0.0.3")
        [challenge] = written(transport)
        self.challenge = challenge
        protocol.dataReceived(self.padded_handshake(8193))
        self.assertIs(protocol.state, State.CLOSED)
        self.assertEqual(protocol.close_reason, "line longer than 8192 bytes")
        self.assertEqual(transport.value(), b"")

    def test_parse_budget(self):
        """
        What unauthenticated connections may have parsed is one budget for
        the listener (1 MiB, spent line by line): a connection accepted
        while some was left has its line dropped unread once there is not
        enough left for it.
        """
        self.assertEqual(PREAUTH_BURST, 1024 * 1024)
        garbage = b"x" * HANDSHAKE_MAX_LINE + b"\n"
        for i in range(PREAUTH_BURST // HANDSHAKE_MAX_LINE - 2):
            protocol, transport = server_protocol(self.node.server, host=f"10.1.{i // 200}.{i % 200 + 1}")
            protocol.dataReceived(garbage)
            self.assertIn("unparseable line", protocol.close_reason)
        last = [server_protocol(self.node.server, host=f"10.2.0.{i}") for i in (1, 2, 3)]
        for protocol, _ in last:
            protocol.dataReceived(garbage)
        self.assertEqual([p.close_reason.startswith("unparseable line") for p, _ in last], [True, True, False])
        protocol, transport = last[2]
        self.assertEqual(protocol.close_reason, "too much handshake traffic from unauthenticated connections")
        self.assertTrue(transport.disconnected)
        [event] = [e for e in self.node.events if e.kind == "denied" and e.reason == protocol.close_reason]
        self.assertEqual(event.direction, "inbound")
        self.assertIsNone(self.node.server.buildProtocol(IPv4Address("TCP", "10.3.0.1", 40000)))

    def test_first_reason_kept(self):
        """
        The first reason this side gives for closing is the one reported,
        whatever ends the connection after it: here a refused proof, then
        the handshake's deadline while the transport still closes.
        """
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.4", 40000))
        protocol = self.node.server.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        [challenge] = written(transport)
        proof = compute_proof(bytes(32), challenge.payload["nonce"])
        protocol.dataReceived(line(RelayMessage("h1", "handshake", "beta", 1, {"proof": proof})))
        self.assertTrue(transport.disconnecting)
        self.clock.advance(HANDSHAKE_TIMEOUT)
        protocol.close("closed again")
        protocol.connectionLost(Failure(error.ConnectionAborted()))
        [event] = [e for e in self.node.events if e.address == "10.0.0.4:40000"]
        self.assertEqual((event.kind, event.reason), ("denied", "wrong proof for the key of beta"))
        self.assertEqual(protocol.close_reason, event.reason)

    def lost(self, reason):
        """
        The reason reported for a connection lost with C{reason} before its
        handshake, this side having given none.
        """
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.5", 40000))
        protocol = self.node.server.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        protocol.connectionLost(reason)
        return self.node.events[-1].reason

    def test_reasons_of_a_lost_connection(self):
        """
        A connection that ends without a reason of this side's is reported
        with the transport's, without its final full stops, or as
        C{connection closed} when that says nothing.
        """
        self.assertEqual(self.lost(Failure(error.ConnectionDone())), "Connection was closed cleanly")
        self.assertEqual(self.lost(Failure(OSError("dropped by relay-X..."))), "dropped by relay-X")
        self.assertEqual(self.lost(Failure(OSError(""))), "connection closed")
        self.assertEqual(self.lost(None), "connection closed")

    def test_when_closed(self):
        """
        C{whenClosed} fires once the connection is closed, and at once for
        a closed one.
        """
        waiting = self.protocol.whenClosed()
        self.assertNoResult(waiting)
        self.protocol.close("done")
        self.assertIsNone(self.successResultOf(waiting))
        self.assertIsNone(self.successResultOf(self.protocol.whenClosed()))

    def test_no_warning_before_authentication(self):
        """
        A peer that proved nothing and breaks the protocol is reported as a
        failed handshake, not logged as a warning: a scanner cannot fill
        the log.
        """
        logged = watch_log(self)
        self.protocol.dataReceived(b"{not json\n")
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertEqual(warnings(logged), [])


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
        return accepted(self.node, peer, KEY)

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
        self.protocol.dataReceived(data + data)
        self.assertEqual(self.node.mesh.peer("beta").bytes_in, status.bytes_in + 2 * len(data))
        self.node.mesh.send("beta", "ack", {"ack_id": "m1"})
        self.assertEqual(self.node.mesh.peer("beta").msgs_out, 3)  # challenge, ack, ack

    def test_violation_logged(self):
        """
        A connected peer that breaks the protocol is logged as a warning
        that names it, its address and what it did.
        """
        logged = watch_log(self)
        self.protocol.dataReceived(self.message("handshake"))
        self.assertEqual(
            warnings(logged),
            ["closing connection to beta (10.0.0.2:40000): unexpected handshake after the handshake"],
        )

    def test_idle_deadline_to_the_second(self):
        """
        The idle deadline is 90 s after the last line to the fraction of a
        second: the check that finds a line came since waits only for what
        is left.
        """
        self.clock.advance(0.5)
        self.protocol.dataReceived(self.message())
        self.clock.advance(90 - 0.5)
        self.assertIs(self.protocol.state, State.CONNECTED)
        self.clock.advance(0.49)
        self.assertIs(self.protocol.state, State.CONNECTED)
        self.clock.advance(0.01)
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertEqual(self.protocol.close_reason, "no message for 90 s")


class LegacyFieldsTests(SynchronousTestCase):
    """
    A claudectl peer announced no capability whose fields this node reads:
    its messages' other top-level fields mean nothing.
    """

    def test_reliable_field_ignored(self):
        """
        A message from a claudectl peer that says it is reliable is
        delivered as a plain message: not recorded as delivered nor
        acknowledged, as it would be from a peer that announced reliable
        delivery.
        """
        store = MemoryStore()
        node = Node("alpha", make_clock(), MemoryKeys({"beta": KEY}), store=store)
        protocol, transport = accepted(node, "beta", KEY)
        message = json.loads(line(RelayMessage("r1", "task_status", "beta", 1, {"n": 1})))
        message["reliable"] = True
        protocol.dataReceived(json.dumps(message).encode() + b"\n")
        self.assertEqual([(p, m.id, m.payload) for p, m in node.received], [("beta", "r1", {"n": 1})])
        self.assertEqual(store.delivered, set())
        self.assertEqual(written(transport), [])
        self.assertIs(protocol.state, State.CONNECTED)


class ConnectorTests(SynchronousTestCase):
    """
    The connecting side, fed bytes as an acceptor would send them, on a
    transport that can start TLS (it notes the options, writes on in clear).
    """

    def setUp(self):
        self.clock = make_clock()
        self.node = Node("beta", self.clock, MemoryKeys({"alpha": KEY}))
        self.node.keys.metas["alpha"] = {"legacy": True}  # which a relaymesh acceptor ignores
        self.factory = self.node.client("alpha")
        self.protocol, self.transport = self.connect()

    def connect(self):
        protocol, transport = client_protocol(self.factory)
        transport.tls_started = []
        transport.startTLS = lambda options, normal=True: transport.tls_started.append(options)
        alsoProvides(transport, ITLSTransport)
        return protocol, transport

    def challenge(self, nonce="ab" * 32, peer="alpha"):  # with no peer, claudectl's
        named = {} if peer is None else {"peer": peer, "caps": ["mutual-auth/2", "starttls/1"]}
        return line(RelayMessage("c", "challenge", "", 1, {"nonce": nonce, **named}))

    def ack(self, status="ok", peer="alpha"):
        return line(RelayMessage("a", "handshake_ack", peer, 1, {"status": status}))

    def test_waits_for_challenge(self):
        self.assertEqual(self.transport.value(), b"")
        self.assertIs(self.protocol.state, State.AWAITING_CHALLENGE)

    def test_asks_for_tls(self):
        """
        To a relaymesh acceptor it proves nothing in clear: it asks for TLS.
        """
        self.protocol.dataReceived(self.challenge())
        [handshake] = written(self.transport)
        self.assertEqual((handshake.from_peer, handshake.payload), ("beta", {"starttls": True, "version": VERSION}))
        self.assertIs(self.protocol.state, State.AWAITING_ACK)
        self.protocol.dataReceived(self.ack("starttls"))
        self.assertEqual(self.transport.tls_started, [self.node.certificate.client_options()])
        self.assertIs(self.protocol.state, State.AWAITING_CHALLENGE)
        self.assertTrue(self.protocol.encrypted)

    def test_answers_legacy_challenge(self):
        self.protocol.dataReceived(self.challenge(peer=None))
        [handshake] = written(self.transport)
        self.assertEqual(handshake.from_peer, "beta")
        self.assertEqual(handshake.payload, {"proof": compute_proof(KEY, "ab" * 32), "version": VERSION})
        self.assertIs(self.protocol.state, State.AWAITING_ACK)

    def test_denied(self):
        self.protocol.dataReceived(self.challenge(peer=None) + self.ack("denied"))
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertTrue(self.protocol.proof_rejected)
        [event] = [e for e in self.node.events if e.kind == "denied"]
        self.assertEqual((event.direction, event.peer_id), ("outbound", "alpha"))

    def test_wrong_peer_answers(self):
        self.protocol.dataReceived(self.challenge(peer="mallory"))
        self.assertEqual(self.transport.value(), b"")
        self.assertIn("expected peer alpha but mallory answered", self.protocol.close_reason)
        protocol, transport = self.connect()
        protocol.dataReceived(self.challenge(peer=None) + self.ack(peer="mallory"))
        self.assertIs(protocol.state, State.CLOSED)
        self.assertIn("expected peer alpha but mallory answered", protocol.close_reason)

    def test_bad_challenge(self):
        self.protocol.dataReceived(self.challenge(nonce="short"))
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertEqual(self.transport.value(), b"")
        self.assertFalse(self.protocol.proof_rejected)

    def test_message_before_ack(self):
        self.protocol.dataReceived(self.challenge())
        self.assertIs(self.protocol.state, State.AWAITING_ACK)
        self.protocol.dataReceived(line(RelayMessage("x", "heartbeat", "alpha", 1, {})))
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertIn("expected handshake_ack, got heartbeat", self.protocol.close_reason)

    def test_handshake_timeout(self):
        self.protocol.dataReceived(self.challenge())
        self.assertIs(self.protocol.state, State.AWAITING_ACK)
        self.clock.advance(HANDSHAKE_TIMEOUT)
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertTrue(self.transport.disconnected)

    def test_long_message_with_the_ack(self):
        """
        A message over the handshake's line limit in the chunk of the ack
        (sent as the peer connected) is taken: it is a connected peer's.
        """
        self.protocol.dataReceived(self.challenge(peer=None))
        long = line(RelayMessage("m", "task_status", "alpha", 1, {"pad": "x" * (2 * HANDSHAKE_MAX_LINE)}))
        self.protocol.dataReceived(self.ack() + long)
        self.assertIs(self.protocol.state, State.CONNECTED, self.protocol.close_reason)
        self.assertEqual([m.id for _, m in self.node.received], ["m"])

    def test_lost_once(self):
        """
        A connection told twice that it is lost reports it once: a failed
        handshake is one denial, and a connected peer's link is one
        disconnection, not also a denial.
        """
        for _ in range(2):
            self.protocol.connectionLost(Failure(error.ConnectionDone()))
        protocol, transport = self.connect()
        protocol.dataReceived(self.challenge(peer=None) + self.ack())
        self.assertIs(protocol.state, State.CONNECTED)
        for _ in range(2):
            protocol.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(
            [e.kind for e in self.node.events],
            ["connecting", "denied", "connecting", "connected", "disconnected"],
        )

    def test_outcome_not_recorded(self):
        """
        A proof the factory cannot record (a join that may not replace a
        key already paired) ends the handshake: the connection is closed
        with the factory's reason, never connected.
        """

        def refuse(protocol, outcome):
            raise HandshakeFailed(f"{outcome.peer_id} is paired already")

        self.factory.handshakeVerified = refuse
        self.protocol.dataReceived(self.challenge(peer=None) + self.ack())
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertEqual(self.protocol.close_reason, "alpha is paired already")
        self.assertFalse(self.node.mesh.is_connected("alpha"))
        self.assertEqual([e.kind for e in self.node.events], ["connecting", "denied"])

    def test_bytes_in_clear_after_the_ack(self):
        """
        A line in clear behind the upgrade's ack is never read: the
        connection is dropped, TLS not started, and the reason says why.
        """
        self.protocol.dataReceived(self.challenge())
        written(self.transport)
        self.protocol.dataReceived(self.ack("starttls") + self.ack())
        self.assertEqual(self.transport.tls_started, [])
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertEqual(
            self.protocol.close_reason,
            "bytes in clear after the TLS upgrade was agreed (injected on the path?)",
        )
        self.assertEqual(self.transport.value(), b"")


class UpgradeTests(SynchronousTestCase):
    """
    The switch to TLS on a transport that can start it, on both sides.
    """

    def setUp(self):
        self.clock = make_clock()
        self.alpha = Node("alpha", self.clock, MemoryKeys({"beta": KEY}))
        self.beta = Node("beta", self.clock, MemoryKeys({"alpha": KEY}))

    def attach(self, protocol, start_tls):
        """
        Connect C{protocol} to a transport that can start TLS, by calling
        C{start_tls(transport, options)}.
        """
        transport = StringTransportWithDisconnection(peerAddress=IPv4Address("TCP", "10.0.0.2", 40000))
        transport.protocol = protocol
        transport.startTLS = lambda options, normal=True: start_tls(transport, options)
        alsoProvides(transport, ITLSTransport)
        protocol.makeConnection(transport)
        return transport

    def request(self):
        return line(RelayMessage("h", "handshake", "beta", 1, {"starttls": True, "version": VERSION}))

    def test_ack_in_clear_before_tls(self):
        """
        The acceptor's ack of the upgrade is on the wire in clear before TLS
        starts, even when the request is read inside a batch that is still
        open (an application that runs the in-memory network inside
        C{Mesh.batch}).
        """
        in_clear = []
        protocol = self.alpha.server.buildProtocol(IPv4Address("TCP", "10.0.0.2", 40000))
        transport = self.attach(protocol, lambda transport, options: in_clear.append(written(transport)))
        written(transport)
        with self.alpha.mesh.batch():
            protocol.dataReceived(self.request())
        [[ack]] = in_clear
        self.assertEqual((ack.msg_type, ack.payload), ("handshake_ack", {"status": "starttls"}))
        [challenge] = written(transport)
        self.assertEqual(challenge.msg_type, "challenge")
        self.assertTrue(protocol.encrypted)

    def refuse(self, transport, options):
        raise OSError("the TLS layer is gone")

    def test_acceptor_cannot_start_tls(self):
        """
        An acceptor that cannot start TLS once it agreed drops the
        connection: it never goes on in clear.
        """
        protocol = self.alpha.server.buildProtocol(IPv4Address("TCP", "10.0.0.2", 40000))
        transport = self.attach(protocol, self.refuse)
        written(transport)
        protocol.dataReceived(self.request())
        self.assertEqual([m.payload for m in written(transport)], [{"status": "starttls"}])
        self.assertIs(protocol.state, State.CLOSED)
        self.assertTrue(transport.disconnected)
        self.assertFalse(protocol.encrypted)
        self.assertEqual(protocol.close_reason, "cannot start TLS: the TLS layer is gone")
        [event] = self.alpha.events
        self.assertEqual((event.kind, event.reason), ("denied", protocol.close_reason))

    def test_connector_cannot_start_tls(self):
        """
        A connector that cannot start TLS once its request was acked drops
        the connection: it never proves its key in clear.
        """
        protocol = self.beta.client("alpha").buildProtocol(IPv4Address("TCP", "127.0.0.1", 9847))
        transport = self.attach(protocol, self.refuse)
        offer = {"nonce": "ab" * 32, "peer": "alpha", "caps": ["mutual-auth/2", "starttls/1"]}
        protocol.dataReceived(line(RelayMessage("c", "challenge", "", 1, offer)))
        [request] = written(transport)
        self.assertEqual(request.payload, {"starttls": True, "version": VERSION})
        protocol.dataReceived(line(RelayMessage("a", "handshake_ack", "alpha", 1, {"status": "starttls"})))
        self.assertIs(protocol.state, State.CLOSED)
        self.assertEqual(protocol.close_reason, "cannot start TLS: the TLS layer is gone")
        self.assertEqual(transport.value(), b"")
        self.assertFalse(protocol.encrypted)


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


class _Connected:
    """
    An acceptor connection to beta that has finished its handshake, on a
    string transport that records every C{write} call.
    """

    def setUp(self):
        self.clock = make_clock()
        self.node = Node("alpha", self.clock, MemoryKeys({"beta": KEY, "gamma": KEY}))
        self.protocol, self.transport = self.connected("beta")

    def connected(self, peer):
        protocol, transport = accepted(self.node, peer, KEY)
        transport.writes = []
        original = transport.write

        def write(data):
            transport.writes.append(data)
            original(data)

        transport.write = write
        return protocol, transport

    def stream(self, count, peer="beta", size=0):
        return b"".join(
            line(RelayMessage(f"m{i}", "task_status", peer, 1, {"n": i, "pad": "x" * size}))
            for i in range(count)
        )

    def delivered(self):
        return [m.payload["n"] for _, m in self.node.received]


class FramingTests(_Connected, SynchronousTestCase):
    """
    The line splitting that replaces L{LineOnlyReceiver}'s: however a stream
    is cut into chunks, the same messages come out in order, and the 1 MiB
    limit holds on complete lines and on the unfinished rest.
    """

    def test_many_lines_one_chunk(self):
        self.protocol.dataReceived(self.stream(500))
        self.assertEqual(self.delivered(), list(range(500)))
        self.assertEqual(self.protocol._buffer, b"")

    def test_cut_at_every_offset(self):
        """
        A stream of three messages cut in two at every offset, and sent one
        byte at a time, gives the three messages.
        """
        data = self.stream(3)
        for cut in range(len(data) + 1):
            self.setUp()
            self.protocol.dataReceived(data[:cut])
            self.protocol.dataReceived(data[cut:])
            self.assertEqual(self.delivered(), [0, 1, 2], f"cut at {cut}")
        self.setUp()
        for i in range(len(data)):
            self.protocol.dataReceived(data[i : i + 1])
        self.assertEqual(self.delivered(), [0, 1, 2])

    def test_long_line_in_small_chunks(self):
        data = self.stream(2, size=200_000)
        for i in range(0, len(data), 1000):
            self.protocol.dataReceived(data[i : i + 1000])
        self.assertEqual(self.delivered(), [0, 1])
        self.assertEqual(self.protocol._buffer, b"")

    def test_line_of_exactly_the_limit(self):
        """
        A complete line of exactly 1 MiB is taken, whether it arrives whole
        or in pieces.
        """
        message = RelayMessage("big", "task_status", "beta", 1, {"n": 0, "pad": ""})
        pad = MAX_LINE_BYTES - len(line(message)) + 1
        data = line(RelayMessage("big", "task_status", "beta", 1, {"n": 0, "pad": "x" * pad}))
        self.assertEqual(len(data), MAX_LINE_BYTES + 1)
        self.protocol.dataReceived(data[:700_000])
        self.protocol.dataReceived(data[700_000:])
        self.assertEqual(self.delivered(), [0])
        self.assertIs(self.protocol.state, State.CONNECTED)

    def test_complete_line_over_the_limit(self):
        """
        A line one byte over 1 MiB closes the connection, after the lines
        before it and before any after it, even when it arrives whole.
        """
        data = self.stream(2) + b"x" * (MAX_LINE_BYTES + 1) + b"\n" + self.stream(1)
        self.protocol.dataReceived(data)
        self.assertEqual(self.delivered(), [0, 1])
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertIn("longer than", self.protocol.close_reason)

    def test_line_over_the_limit_across_chunks(self):
        self.protocol.dataReceived(b"x" * 600_000)
        self.protocol.dataReceived(b"x" * (MAX_LINE_BYTES + 1 - 600_000) + b"\n")
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertIn("longer than", self.protocol.close_reason)

    def test_unfinished_rest_over_the_limit(self):
        """
        The unfinished line after the last complete one counts against the
        limit: exactly 1 MiB may wait, one byte more may not.
        """
        self.protocol.dataReceived(self.stream(1) + b"x" * MAX_LINE_BYTES)
        self.assertEqual(self.delivered(), [0])
        self.assertIs(self.protocol.state, State.CONNECTED)
        self.protocol.dataReceived(b"x")
        self.assertIs(self.protocol.state, State.CLOSED)
        self.assertEqual(self.protocol._buffer, b"")

    def test_nothing_after_a_bad_line(self):
        self.protocol.dataReceived(self.stream(2) + b"{bad\n" + self.stream(1))
        self.assertEqual(self.delivered(), [0, 1])
        self.assertIs(self.protocol.state, State.CLOSED)

    def test_arrival_noted_per_complete_line(self):
        """
        The idle clock restarts when a line is complete, not on a fragment.
        """
        data = self.stream(1)
        self.clock.advance(10)
        self.protocol.dataReceived(data[:5])
        self.assertEqual(self.protocol.last_received, self.clock.seconds() - 10)
        self.clock.advance(10)
        self.protocol.dataReceived(data[5:])
        self.assertEqual(self.protocol.last_received, self.clock.seconds())


class CoalescingTests(_Connected, SynchronousTestCase):
    """
    What a connection sends inside a batch goes to its transport in one
    C{write}, in order, never more than L{FLUSH_BYTES} waiting.
    """

    def test_outside_a_batch_at_once(self):
        self.node.mesh.send("beta", "ack", {"n": 1})
        self.node.mesh.send("beta", "ack", {"n": 2})
        self.assertEqual(len(self.transport.writes), 2)
        self.assertEqual([m.payload["n"] for m in written(self.transport)], [1, 2])

    def test_one_write_per_batch(self):
        mesh = self.node.mesh
        with mesh.batch():
            with mesh.batch():
                for i in range(50):
                    mesh.send("beta", "ack", {"n": i})
            self.assertEqual(self.transport.writes, [])
            self.assertEqual(self.protocol.traffic.msgs_out, 52)  # challenge, ack, 50
        self.assertEqual(len(self.transport.writes), 1)
        self.assertEqual([m.payload["n"] for m in written(self.transport)], list(range(50)))

    def test_flushed_when_full(self):
        """
        A batch writes a connection's lines once FLUSH_BYTES are waiting,
        and the rest at its end, all in order.
        """
        mesh = self.node.mesh
        pad = "x" * 1000
        with mesh.batch():
            for i in range(200):
                mesh.send("beta", "ack", {"n": i, "pad": pad})
            during = len(self.transport.writes)
        self.assertGreater(during, 0)
        self.assertTrue(all(len(w) < FLUSH_BYTES + 1100 for w in self.transport.writes))
        self.assertEqual([m.payload["n"] for m in written(self.transport)], list(range(200)))

    def test_replies_to_a_chunk_in_one_write(self):
        """
        Everything the messages of one chunk make the node send, to this
        peer and to others, is written once per connection.
        """
        other, other_transport = self.connected("gamma")
        mesh = self.node.mesh

        def answer(peer_id, message):
            mesh.send(peer_id, "ack", {"n": message.payload["n"]})
            mesh.send("gamma", "task_status", {"n": message.payload["n"]})

        mesh.subscribe(answer, "task_status")
        self.protocol.dataReceived(self.stream(20))
        self.assertEqual(len(self.transport.writes), 1)
        self.assertEqual(len(other_transport.writes), 1)
        self.assertEqual([m.payload["n"] for m in written(self.transport)], list(range(20)))
        self.assertEqual([m.payload["n"] for m in written(other_transport)], list(range(20)))

    def test_close_writes_what_waits(self):
        with self.node.mesh.batch():
            self.node.mesh.send("beta", "ack", {"n": 1})
            self.protocol.close("done")
        self.assertEqual([m.payload for m in written(self.transport)], [{"n": 1}])
        self.assertIs(self.protocol.state, State.CLOSED)

    def test_abort_discards_what_waits(self):
        with self.node.mesh.batch():
            self.node.mesh.send("beta", "ack", {"n": 1})
            self.protocol.abort("gone")
        self.assertEqual(self.transport.value(), b"")

    def test_flushed_when_the_batch_raises(self):
        with self.assertRaises(ZeroDivisionError):
            with self.node.mesh.batch():
                self.node.mesh.send("beta", "ack", {"n": 1})
                raise ZeroDivisionError()
        self.assertEqual([m.payload for m in written(self.transport)], [{"n": 1}])
        self.node.mesh.send("beta", "ack", {"n": 2})
        self.assertEqual([m.payload for m in written(self.transport)], [{"n": 2}])


class _TCPishTransport(StringTransport):
    """
    A string transport with the TCP option a real connection has.
    """

    nodelay = False

    def setTcpNoDelay(self, enabled):
        self.nodelay = enabled


class BackpressureTests(SynchronousTestCase):
    """
    The protocol is its transport's streaming producer, so that it knows
    when the send buffer is full.
    """

    def setUp(self):
        self.node = Node("alpha", make_clock(), MemoryKeys({"beta": KEY}))
        self.transport = _TCPishTransport(peerAddress=IPv4Address("TCP", "10.0.0.2", 4000))
        self.protocol = self.node.server.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)

    def test_registered(self):
        self.assertIs(self.transport.producer, self.protocol)
        self.assertTrue(self.transport.streaming)
        self.assertTrue(self.transport.nodelay)

    def test_pause_and_resume(self):
        self.assertTrue(self.protocol.writable)
        self.assertIsNone(self.successResultOf(self.protocol.whenWritable()))
        self.protocol.pauseProducing()
        self.assertFalse(self.protocol.writable)
        waiting = self.protocol.whenWritable()
        self.assertNoResult(waiting)
        self.protocol.resumeProducing()
        self.assertTrue(self.protocol.writable)
        self.assertIsNone(self.successResultOf(waiting))

    def test_close_wakes_waiters(self):
        self.protocol.pauseProducing()
        waiting = self.protocol.whenWritable()
        self.protocol.connectionLost(None)
        self.successResultOf(waiting)
        self.successResultOf(self.protocol.whenWritable())

    def test_close_steps_aside(self):
        """
        A transport with a producer registered would wait for it before
        closing: close() unregisters first.
        """
        self.protocol.close("bye")
        self.assertIsNone(self.transport.producer)
        self.assertTrue(self.transport.disconnecting)

    def test_resumed_while_closing(self):
        """
        A transport told to close by someone else while it had us paused
        resumes us when its buffer drains; we unregister so that it closes.
        """
        self.protocol.pauseProducing()
        self.transport.loseConnection()
        self.protocol.resumeProducing()
        self.assertIsNone(self.transport.producer)



class SendBacklogTests(SynchronousTestCase):
    """
    A peer that stops reading is dropped once too much waits for it.
    """

    def setUp(self):
        self.clock = make_clock()
        self.node = Node("alpha", self.clock, MemoryKeys({"beta": KEY}))
        self.protocol, self.transport = accepted(self.node, "beta", KEY)

    def test_backlog_limit(self):
        from relaymesh.outbound import MAX_SEND_BACKLOG

        blob = "x" * (1024 * 1024 - 200)
        self.protocol.pauseProducing()
        sent = 0
        while self.protocol.state is State.CONNECTED:
            self.node.mesh.send("beta", "task_status", {"blob": blob})
            sent += len(blob)
            self.assertLess(sent, MAX_SEND_BACKLOG + 4 * len(blob))
        self.assertTrue(self.transport.disconnected)
        self.assertIn("peer is not reading", self.protocol.close_reason)
        self.assertFalse(self.node.mesh.is_connected("beta"))

    def test_draining_resets(self):
        """
        A peer that reads slowly but does read is kept.
        """
        from relaymesh.outbound import MAX_SEND_BACKLOG

        blob = "x" * (1024 * 1024 - 200)
        for _ in range(3):
            self.protocol.pauseProducing()
            for _ in range(MAX_SEND_BACKLOG // len(blob) - 1):
                self.node.mesh.send("beta", "task_status", {"blob": blob})
            self.protocol.resumeProducing()
            self.transport.clear()
        self.assertIs(self.protocol.state, State.CONNECTED)
