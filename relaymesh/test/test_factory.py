"""
Tests for L{relaymesh.acceptor} and L{relaymesh.dialer}: the acceptor's limits and the connector's
backoff and key choice.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from relaymesh.acceptor import (
    LOCKOUT_FAILURES,
    LOCKOUT_WINDOW,
    MAX_HANDSHAKES,
    MAX_HANDSHAKES_PER_ADDRESS,
    FailureTracker,
)
from relaymesh.connection import State
from relaymesh.dialer import RelayClientFactory
from relaymesh.handshake.base import PENDING_FORM
from relaymesh.test.support import (
    FakeConnector,
    Node,
    authenticate,
    client_protocol,
    connect,
    line,
    make_clock,
    pair_keys,
    server_protocol,
)
from relaymesh.testing import MemoryKeys
from relaymesh.wire import RelayMessage

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
REFUSED = Failure(ConnectionRefusedError())
DONE = Failure(ConnectionDone())


def scheduled_delays(clock):
    return [round(call.getTime() - clock.seconds(), 6) for call in clock.getDelayedCalls()]


class FailureTrackerTests(SynchronousTestCase):
    def test_lockout_window(self):
        """
        Five failures lock an address out until the first of them is 60 s
        old; other addresses are not affected.
        """
        clock = make_clock()
        tracker = FailureTracker(clock)
        for _ in range(LOCKOUT_FAILURES - 1):
            tracker.record("10.0.0.9")
            clock.advance(1)
        self.assertFalse(tracker.refused("10.0.0.9"))
        tracker.record("10.0.0.9")
        self.assertTrue(tracker.refused("10.0.0.9"))
        self.assertFalse(tracker.refused("10.0.0.10"))
        clock.advance(LOCKOUT_WINDOW - 4 - 0.001)
        self.assertTrue(tracker.refused("10.0.0.9"))
        clock.advance(0.001)
        self.assertFalse(tracker.refused("10.0.0.9"))
        self.assertEqual(tracker.count("10.0.0.9"), 4)

    def test_memory_bounded(self):
        """
        Stale addresses are swept, so a scan from many addresses does not
        grow the table without bound.
        """
        clock = make_clock()
        tracker = FailureTracker(clock)
        for i in range(FailureTracker.SWEEP_AT):
            tracker.record(f"10.1.{i // 256}.{i % 256}")
        clock.advance(LOCKOUT_WINDOW)
        tracker.record("10.2.0.1")
        self.assertEqual(len(tracker._failures), 1)


class ServerLimitTests(SynchronousTestCase):
    def setUp(self):
        self.clock = make_clock()
        self.node = Node("alpha", self.clock, MemoryKeys({f"p{i}": KEY for i in range(20)}), max_peers=3)
        # claudectl peers: authenticate() proves their keys in claudectl's form
        self.node.keys.metas.update({f"p{i}": {"legacy": True} for i in range(20)})

    def build(self, host="10.0.0.2"):
        return self.node.server.buildProtocol(IPv4Address("TCP", host, 40000))

    def authenticate(self, protocol, transport, peer):
        return authenticate(protocol, transport, peer, KEY)

    def test_handshake_limit(self):
        """
        At most 16 handshakes in progress; the 17th connection is refused
        (closed before any byte) until one finishes.
        """
        self.assertEqual(MAX_HANDSHAKES, 16)
        started = [
            server_protocol(self.node.server, host=f"10.0.1.{i}", port=40000 + i)
            for i in range(MAX_HANDSHAKES)
        ]
        self.assertIsNone(self.build())
        started[0][1].loseConnection()
        self.assertIsNotNone(self.build())

    def test_handshake_limit_per_address(self):
        """
        One address gets at most 4 of the handshake slots, so a flood from it
        leaves room for everyone else.
        """
        for i in range(MAX_HANDSHAKES_PER_ADDRESS):
            server_protocol(self.node.server, host="10.0.0.66", port=41000 + i)
        self.assertIsNone(self.build("10.0.0.66"))
        self.assertIn("from 10.0.0.66", self.node.server.refusal("10.0.0.66"))
        self.assertIsNotNone(self.build("10.0.0.67"))

    def test_peer_limit(self):
        """
        With max_peers connected peers, new connections are refused at once.
        """
        for i in range(3):
            protocol, transport = server_protocol(self.node.server)
            self.authenticate(protocol, transport, f"p{i}")
        self.assertEqual(self.node.mesh.connected_count(), 3)
        self.assertIsNone(self.build())

    def test_peer_limit_at_handshake(self):
        """
        Handshakes started below the limit that would pass it are denied,
        but a reconnection of a connected peer is admitted.
        """
        pending = [server_protocol(self.node.server, host=f"10.0.2.{i}") for i in range(5)]
        for i, (protocol, transport) in enumerate(pending[:3]):
            self.authenticate(protocol, transport, f"p{i}")
        [ack] = self.authenticate(*pending[3], "p9")
        self.assertEqual(ack.payload, {"status": "denied"})
        self.assertIn("peer limit of 3", pending[3][0].close_reason)
        [ack] = self.authenticate(*pending[4], "p0")
        self.assertEqual(ack.payload, {"status": "ok"})

    def test_lockout(self):
        """
        Five failed handshakes from one address refuse it for 60 s; another
        address still gets in.
        """
        for _ in range(LOCKOUT_FAILURES):
            protocol, transport = server_protocol(self.node.server, host="10.0.0.66")
            protocol.dataReceived(b"nonsense\n")
        self.assertIsNone(self.build("10.0.0.66"))
        self.assertIsNotNone(self.build("10.0.0.67"))
        self.clock.advance(LOCKOUT_WINDOW)
        self.assertIsNotNone(self.build("10.0.0.66"))

    def test_refused_silently(self):
        """
        A refused connection gets no challenge: buildProtocol returns None,
        so Twisted closes the socket without writing.
        """
        for _ in range(LOCKOUT_FAILURES):
            server_protocol(self.node.server, host="10.0.0.66")[1].loseConnection()
        self.assertIn("too many failed handshakes", self.node.server.refusal("10.0.0.66"))


class BackoffTests(SynchronousTestCase):
    def setUp(self):
        self.clock = make_clock()
        self.node = Node("beta", self.clock, MemoryKeys({"alpha": KEY}))
        self.factory = self.node.client("alpha")
        self.connector = FakeConnector()
        self.connector.factory = self.factory
        self.connector.connect()

    def fail_and_wait(self):
        """
        Fail the current attempt; return the delay until the next one and
        advance to it.
        """
        self.factory.clientConnectionFailed(self.connector, REFUSED)
        [delay] = scheduled_delays(self.clock)
        self.clock.advance(delay)
        return delay

    def test_sequence(self):
        """
        Retries wait 5, 10, 20, 40, 60, 60, ... seconds.
        """
        delays = [self.fail_and_wait() for _ in range(8)]
        self.assertEqual(delays, [5, 10, 20, 40, 60, 60, 60, 60])
        self.assertEqual(self.connector.connects, 9)

    def test_events(self):
        """
        Each scheduled retry is reported with its delay and attempt number.
        """
        self.fail_and_wait()
        self.factory.clientConnectionFailed(self.connector, REFUSED)
        events = [e for e in self.node.events if e.kind == "reconnect_scheduled"]
        self.assertEqual([e.delay for e in events], [5, 10])
        status = self.node.mesh.peer("alpha")
        self.assertEqual(status.reconnect_attempt, 2)
        self.assertEqual(status.state, "disconnected")

    def test_denied_key_is_not_hammered(self):
        """
        A peer that accepts TCP and then denies the key does not reset the
        backoff, whether it is a relaymesh peer (inside TLS) or a claudectl
        peer.
        """
        alpha = Node("alpha", self.clock, MemoryKeys({"beta": OTHER_KEY}))
        delays = []
        for _ in range(3):
            server, client, pump = connect(alpha, self.node, self.factory)
            self.assertEqual((client.state, client.encrypted, client.proof_rejected), (State.CLOSED, True, True))
            self.factory.clientConnectionLost(self.connector, DONE)
            [delay] = scheduled_delays(self.clock)
            delays.append(delay)
            self.clock.advance(delay)
        self.node.keys.metas["alpha"] = {"legacy": True}
        for _ in range(2):
            protocol, transport = client_protocol(self.factory, self.connector)
            protocol.dataReceived(
                line(RelayMessage("c", "challenge", "", 1, {"nonce": "ab" * 32}))
                + line(RelayMessage("a", "handshake_ack", "alpha", 1, {"status": "denied"}))
            )
            self.assertTrue(protocol.proof_rejected)
            self.factory.clientConnectionLost(self.connector, DONE)
            [delay] = scheduled_delays(self.clock)
            delays.append(delay)
            self.clock.advance(delay)
        self.assertEqual(delays, [5, 10, 20, 40, 60])

    def test_reset_after_handshake(self):
        """
        The sequence starts over once a handshake succeeds, and a clean close
        afterwards is retried after 5 s.
        """
        self.fail_and_wait()
        self.fail_and_wait()
        alpha = Node("alpha", self.clock, MemoryKeys({"beta": KEY}))
        server, client, pump = connect(alpha, self.node, self.factory)
        self.assertIs(client.state, State.CONNECTED)
        server.close("done")
        pump.flush()
        self.assertIs(client.state, State.CLOSED)
        self.factory.clientConnectionLost(self.connector, DONE)
        self.assertEqual(scheduled_delays(self.clock), [5])

    def test_stop_trying(self):
        self.factory.stopTrying()
        self.factory.clientConnectionFailed(self.connector, REFUSED)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_jitter_bounded(self):
        """
        With jitter, each wait stays within 5..60 s and the spread does not
        compound from one attempt to the next.
        """
        for rng_value in (0.0, 1.0):
            factory = RelayClientFactory(
                self.node.mesh, self.node.keys, self.factory.target, self.clock, jitter=0.5, rng=lambda rng_value=rng_value: rng_value
            )
            connector = FakeConnector()
            connector.factory = factory
            delays = []
            for _ in range(7):
                factory.clientConnectionFailed(connector, REFUSED)
                calls = [c for c in self.clock.getDelayedCalls() if c.active()]
                delays.append(round(calls[-1].getTime() - self.clock.seconds(), 6))
                for call in calls:
                    call.cancel()
                factory._callID = None
            expected = [5, 5, 10, 20, 30, 30, 30] if rng_value == 0.0 else [7.5, 15, 30, 60, 60, 60, 60]
            self.assertEqual(delays, expected)


class KeyChoiceTests(SynchronousTestCase):
    def setUp(self):
        self.clock = make_clock()

    def handshake(self, factory):
        """
        The handshake of the factory's next connection.
        """
        factory.startedConnecting(FakeConnector())
        return factory.buildProtocol(FakeConnector().getDestination()).handshake

    def test_no_key(self):
        """
        Without a key for the peer, the dial is stopped before TCP connects,
        an error is logged, and it is retried later (the key may be added).
        """
        node = Node("beta", self.clock)
        factory = node.client("alpha")
        connector = FakeConnector()
        connector.factory = factory
        connector.connect()
        self.assertEqual(connector.stopped, 1)
        factory.clientConnectionFailed(connector, REFUSED)
        self.assertEqual(scheduled_delays(self.clock), [5])
        node.keys.keys["alpha"] = KEY
        self.clock.advance(5)
        self.assertEqual(connector.stopped, 1)
        self.assertEqual(factory.buildProtocol(connector.getDestination()).handshake.psk, KEY)

    def test_named_peer_uses_its_key_then_pending(self):
        node = Node("beta", self.clock, MemoryKeys({"alpha": KEY, "gamma": bytes(32)}, pending=b"p" * 32))
        handshake = self.handshake(node.client("alpha"))
        self.assertEqual((handshake.psk, handshake.expected_peer, handshake.paired_via), (KEY, "alpha", None))
        handshake = self.handshake(node.client("delta"))
        self.assertEqual((handshake.psk, handshake.expected_peer), (b"p" * 32, "delta"))
        self.assertEqual(handshake.paired_via, PENDING_FORM)

    def test_bare_address_proves_the_named_peers_key(self):
        """
        Without a peer id, no key is chosen before the acceptor names
        itself: then its peer's key is proved, in the one connection.
        """
        keys = MemoryKeys({"alpha": b"a" * 32, "gamma": b"g" * 32}, pending=b"p" * 32)
        node = Node("beta", self.clock, keys)
        factory = node.client(None)
        self.assertIsNone(self.handshake(factory).psk)
        acceptor = Node("gamma", self.clock, MemoryKeys({"beta": b"g" * 32}))
        server, client, pump = connect(acceptor, node, factory)
        self.assertIs(client.state, State.CONNECTED)
        self.assertEqual((client.outcome.key, client.outcome.paired_via), (b"g" * 32, None))
        self.assertEqual(factory.peer_id, "gamma")
        self.assertEqual((keys.pending, acceptor.server.failures.count("10.0.0.2")), (b"p" * 32, 0))

    def test_bare_address_without_a_key(self):
        """
        When the acceptor names a peer with no key here and there is no
        pending key, nothing is proved, and no other key is tried: the dial
        waits for the backoff.
        """
        node = Node("beta", self.clock, MemoryKeys({"alpha": b"a" * 32}))
        factory = node.client(None)
        acceptor = Node("gamma", self.clock, MemoryKeys({"beta": b"g" * 32}))
        server, client, pump = connect(acceptor, node, factory)
        self.assertIs(client.state, State.CLOSED)
        self.assertIn("no key for gamma", client.close_reason)
        self.assertFalse(client.proof_rejected)
        factory.clientConnectionLost(FakeConnector(), DONE)
        self.assertEqual(scheduled_delays(self.clock), [5])

    def test_pending_key_claimed_by_connector(self):
        """
        A pending key that works for a bare address is stored as the key of
        the peer that answered.
        """
        keys = MemoryKeys(pending=KEY)
        node = Node("beta", self.clock, keys)
        factory = node.client(None)
        acceptor = Node("alpha", self.clock, MemoryKeys({"beta": KEY}))
        server, client, pump = connect(acceptor, node, factory)
        self.assertIs(client.state, State.CONNECTED)
        self.assertEqual(keys.keys, {"alpha": KEY})
        self.assertIsNone(keys.pending)
        self.assertIs(keys.meta("alpha")["legacy"], False)

    def test_rejected_key_not_cycled(self):
        """
        A bare dial whose proof is refused tries no other stored key: it
        dials again after the backoff with the same key, so the acceptor
        never locks it out.
        """
        keys = MemoryKeys({f"k{i}": bytes([i]) * 32 for i in range(9)})
        keys.keys["alpha"] = b"a" * 32
        node = Node("beta", self.clock, keys)
        factory = node.client(None)
        connector = FakeConnector()
        connector.factory = factory
        connector.connect()
        acceptor = Node("alpha", self.clock, MemoryKeys({"beta": b"z" * 32}))
        delays = []
        for _ in range(6):
            server, client, pump = connect(acceptor, node, factory)
            self.assertEqual((client.proof_rejected, client.handshake.psk), (True, b"a" * 32))
            factory.clientConnectionLost(connector, DONE)
            [delay] = scheduled_delays(self.clock)
            delays.append(delay)
            self.clock.advance(delay)
        self.assertEqual(delays, [5, 10, 20, 40, 60, 60])
        self.assertFalse(acceptor.server.failures.refused("10.0.0.2"))

    def test_legacy(self):
        """
        A key is proved in claudectl's form to a peer marked legacy, or
        dialled as C{legacy:} if the key was never used; a key used with a
        relaymesh peer is not, whatever the address says; a bare dial never.
        """
        node = Node("beta", self.clock, MemoryKeys({"alpha": KEY}))
        for meta, address, legacy in [
            ({}, False, False),
            ({}, True, True),
            ({"legacy": True}, False, True),
            ({"legacy": False}, True, False),
        ]:
            node.keys.metas["alpha"] = meta
            self.assertIs(self.handshake(node.client("alpha", legacy=address)).legacy, legacy, (meta, address))
        self.assertIs(self.handshake(node.client(None, legacy=True)).legacy, False)


class ParkingTests(SynchronousTestCase):
    def test_parks_while_peer_connected_otherwise(self):
        """
        An outbound connection that lost to the peer's own connection does not
        redial while that connection lives, and dials again once it ends.
        """
        clock = make_clock()
        alpha, beta = Node("alpha", clock), Node("beta", clock)
        pair_keys(alpha, beta)
        # alpha < beta: the connection alpha initiated wins on both sides.
        a_server, b_client, pump1 = connect(alpha, beta)
        beta_factory = b_client.factory
        connector = FakeConnector()
        connector.factory = beta_factory
        b_server, a_client, pump2 = connect(beta, alpha, host="10.0.0.3")
        pump1.flush()
        pump2.flush()
        self.assertIs(b_client.state, State.CLOSED)
        self.assertIs(a_client.state, State.CONNECTED)
        self.assertIs(b_server.state, State.CONNECTED)
        beta_factory.clientConnectionLost(connector, DONE)
        self.assertTrue(beta_factory.parked)
        self.assertNotIn(5.0, scheduled_delays(clock))
        b_server.close("done")
        pump2.flush()
        self.assertFalse(beta.mesh.is_connected("alpha"))
        beta_factory.wake()
        self.assertFalse(beta_factory.parked)
        self.assertIn(5.0, scheduled_delays(clock))
