"""
Tests for L{relaymesh.mesh}: the registry and the application interface.
"""

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from relaymesh.connection import State
from relaymesh.dispatch import Dispatcher
from relaymesh.interfaces import IRelayMesh
from relaymesh.mesh import (
    DEDUP_WINDOW,
    PeerNotConnected,
    RecentIds,
    UnknownPeer,
    UnsupportedMessageType,
)
from relaymesh.test.support import Node, connect, line, make_clock, pair_keys
from relaymesh.wire import MAX_LINE_BYTES, RelayMessage, WireError


class RecentIdsTests(SynchronousTestCase):
    def test_window(self):
        """
        The last 1000 ids are remembered; older ones are forgotten.
        """
        recent = RecentIds()
        self.assertEqual(DEDUP_WINDOW, 1000)
        self.assertFalse(recent.seen("a"))
        self.assertTrue(recent.seen("a"))
        for i in range(DEDUP_WINDOW):
            recent.seen(str(i))
        self.assertEqual(len(recent), DEDUP_WINDOW)
        self.assertFalse(recent.seen("a"))
        self.assertTrue(recent.seen("999"))


class MeshTestCase(SynchronousTestCase):
    """
    Three nodes: alpha accepts beta and gamma.
    """

    def setUp(self):
        self.clock = make_clock()
        self.alpha = Node("alpha", self.clock)
        self.beta = Node("beta", self.clock)
        self.gamma = Node("gamma", self.clock)
        pair_keys(self.alpha, self.beta)
        pair_keys(self.alpha, self.gamma)
        self.ab = connect(self.alpha, self.beta)
        self.ag = connect(self.alpha, self.gamma, host="10.0.0.3")

    def flush(self):
        self.ab[2].flush()
        self.ag[2].flush()

    def drop(self, link):
        """
        Close a link from alpha's side and let both ends notice.
        """
        link[0].close("closed by the test")
        link[2].flush()

    def inject(self, link, message):
        """
        Deliver a raw message to alpha over a link, as the peer's bytes.
        """
        server_protocol = link[0]
        server_protocol.dataReceived(line(message))


class RegistryTests(MeshTestCase):
    def test_interface(self):
        self.assertTrue(verifyObject(IRelayMesh, self.alpha.mesh))

    def test_connected(self):
        self.assertEqual(sorted(c.peer_id for c in self.alpha.mesh.connections()), ["beta", "gamma"])
        status = self.alpha.mesh.peer("beta")
        self.assertEqual(
            (status.state, status.direction, status.address, status.since),
            ("connected", "inbound", "10.0.0.2:40000", self.ab[0].connected_at),
        )
        beta_view = self.beta.mesh.peer("alpha")
        self.assertEqual((beta_view.direction, beta_view.address), ("outbound", "127.0.0.1:9847"))

    def test_disconnected(self):
        self.drop(self.ab)
        status = self.alpha.mesh.peer("beta")
        self.assertEqual(status.state, "disconnected")
        self.assertEqual(sorted(c.peer_id for c in self.alpha.mesh.connections()), ["gamma"])
        self.assertGreater(status.msgs_in, 0)
        [event] = [e for e in self.alpha.events if e.kind == "disconnected"]
        self.assertEqual(event.peer_id, "beta")
        self.assertEqual(self.beta.mesh.peer("alpha").state, "disconnected")

    def test_replacement(self):
        """
        A new connection of the same peer in the same direction replaces the
        old one, which is closed.
        """
        old = self.ab[0]
        new_link = connect(self.alpha, self.beta)
        self.flush()
        self.assertIs(old.state, State.CLOSED)
        self.assertEqual(old.close_reason, "replaced by a newer connection")
        self.assertIs(new_link[0].state, State.CONNECTED)
        self.assertTrue(self.alpha.mesh.is_connected("beta"))
        disconnects = [e for e in self.alpha.events if e.kind == "disconnected"]
        self.assertEqual(disconnects, [])
        self.beta.mesh.send("alpha", "task_status", {"n": 1})
        new_link[2].flush()
        self.assertEqual(self.alpha.received[-1][1].payload, {"n": 1})

    def test_simultaneous_connect(self):
        """
        When both nodes dial each other at the same time, both keep the
        connection initiated by the lower id and close the other: here beta
        dialled alpha first, and alpha's dial to beta wins on both sides.
        """
        reverse = connect(self.beta, self.alpha, host="10.0.0.1")
        self.flush()
        reverse[2].flush()
        self.assertIs(reverse[0].state, State.CONNECTED)
        self.assertIs(reverse[1].state, State.CONNECTED)
        self.assertIs(self.ab[0].state, State.CLOSED)
        self.assertIs(self.ab[1].state, State.CLOSED)
        self.assertEqual(self.alpha.mesh.peer("beta").direction, "outbound")
        self.assertEqual(self.beta.mesh.peer("alpha").direction, "inbound")
        kinds = [e.kind for e in self.alpha.events if e.peer_id == "beta"]
        # Whether alpha hears the losing link close before the winning
        # link's ack (a disconnected event between) depends on the order in
        # which the two links deliver; either way beta ends connected once
        # per link.
        self.assertEqual([k for k in kinds if k == "connected"], ["connected", "connected"])
        self.assertEqual(kinds[-1], "connected")

    def test_simultaneous_connect_loser_closed(self):
        """
        The connection initiated by the higher id is the one refused, when it
        comes second.
        """
        gamma_alpha = connect(self.gamma, self.alpha, host="10.0.0.1")
        self.flush()
        gamma_alpha[2].flush()
        ga = connect(self.alpha, self.gamma, host="10.0.0.3")
        ga[2].flush()
        self.assertIs(ga[0].state, State.CLOSED)
        self.assertIn("duplicate connection", ga[0].close_reason)
        self.assertIs(gamma_alpha[0].state, State.CONNECTED)
        self.assertTrue(self.alpha.mesh.is_connected("gamma"))

    def test_stale_connection_replaced_by_reverse(self):
        """
        An old connection (older than a heartbeat interval) gives way to a new
        one in the other direction: the peer probably restarted.
        """
        self.clock.advance(31)
        reverse = connect(self.beta, self.alpha, host="10.0.0.1")
        self.flush()
        self.assertIs(reverse[0].state, State.CONNECTED)
        self.assertIs(self.ab[1].state, State.CLOSED)
        self.assertEqual(self.beta.mesh.peer("alpha").direction, "inbound")

    def test_own_id_refused(self):
        self.assertIn("own id", self.alpha.mesh.admission_error("alpha"))

    def test_dedup_per_sender(self):
        """
        The same id from two different peers is delivered twice (claudectl
        would drop the second); the same id from one peer once.
        """
        for link, peer in ((self.ab, "beta"), (self.ag, "gamma")):
            for _ in range(2):
                self.inject(link, RelayMessage("msg_1_0", "task_status", peer, 1, {}))
        self.assertEqual([p for p, _ in self.alpha.received], ["beta", "gamma"])

    def test_dedup_survives_reconnect(self):
        self.inject(self.ab, RelayMessage("msg_1_0", "task_status", "beta", 1, {}))
        link = connect(self.alpha, self.beta)
        self.inject(link, RelayMessage("msg_1_0", "task_status", "beta", 1, {}))
        self.assertEqual(len(self.alpha.received), 1)

    def test_subscribe_by_type(self):
        got = []
        subscription = self.alpha.mesh.subscribe(lambda p, m: got.append(m.msg_type), "task_status")
        self.inject(self.ab, RelayMessage("1", "task_status", "beta", 1, {}))
        self.inject(self.ab, RelayMessage("2", "delegate_task", "beta", 1, {}))
        subscription.cancel()
        subscription.cancel()
        self.inject(self.ab, RelayMessage("3", "task_status", "beta", 1, {}))
        self.assertEqual(got, ["task_status"])

    def test_subscribe_unknown_type(self):
        with self.assertRaises(UnsupportedMessageType):
            self.alpha.mesh.subscribe(lambda p, m: None, "nonsense")

    def test_raising_callback(self):
        """
        A subscriber that raises is logged; the connection and the other
        subscribers carry on.
        """
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

        def broken(peer, message):
            raise RuntimeError("application bug")

        self.alpha.mesh.subscribe(broken)
        self.inject(self.ab, RelayMessage("1", "task_status", "beta", 1, {}))
        self.inject(self.ab, RelayMessage("2", "task_status", "beta", 1, {}))
        self.assertEqual(len(self.alpha.received), 2)
        self.assertIs(self.ab[0].state, State.CONNECTED)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertTrue(any("subscriber" in e.get("log_format", "") for e in observer))

    def test_raising_peer_observer(self):
        def broken(event):
            raise RuntimeError("observer bug")

        self.alpha.mesh.watch_peers(broken)
        self.drop(self.ab)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.alpha.events[-1].kind, "disconnected")


class SendTests(MeshTestCase):
    def test_send(self):
        message_id = self.alpha.mesh.send("beta", "delegate_task", {"task_id": "t", "prompt": "p", "cwd": "/"})
        self.flush()
        [(peer, message)] = self.beta.received
        self.assertEqual((peer, message.id, message.from_peer), ("alpha", message_id, "alpha"))
        self.assertEqual(message.timestamp, int(self.clock.seconds() * 1000))

    def test_send_errors(self):
        mesh = self.alpha.mesh
        with self.assertRaises(UnknownPeer):
            mesh.send("nobody", "ack", {})
        self.drop(self.ab)
        with self.assertRaises(PeerNotConnected):
            mesh.send("beta", "ack", {})
        for msg_type in ("challenge", "handshake", "handshake_ack", "bogus"):
            with self.assertRaises(UnsupportedMessageType):
                mesh.send("gamma", msg_type, {})
        with self.assertRaises(WireError):
            mesh.send("gamma", "task_status", {"blob": "x" * MAX_LINE_BYTES})
        with self.assertRaises(WireError):
            mesh.send("gamma", "task_status", {"obj": object()})
        self.assertIs(self.ag[0].state, State.CONNECTED)

    def test_broadcast(self):
        """
        A broadcast is one message, the same id, to every connected peer.
        """
        sent = self.alpha.mesh.broadcast("knowledge_sync", {"unit": 1})
        self.flush()
        self.assertEqual(sorted(sent), ["beta", "gamma"])
        self.assertEqual(len(set(sent.values())), 1)
        self.assertEqual(self.beta.received[0][1].id, sent["beta"])
        self.assertEqual(self.gamma.received[0][1].id, sent["gamma"])


class HeartbeatTests(MeshTestCase):
    def test_heartbeat_every_interval(self):
        self.alpha.mesh.start()
        self.clock.advance(30)
        self.flush()
        for node in (self.beta, self.gamma):
            [(peer, message)] = node.received
            self.assertEqual((peer, message.msg_type, message.payload), ("alpha", "heartbeat", {}))
        self.alpha.mesh.stop()
        self.alpha.mesh.stop()

    def test_sessions(self):
        """
        Heartbeats carry the session list once one is set; the receiver keeps
        each peer's latest list until three intervals pass without one.
        """
        sessions = [{"id": "s1", "status": "working"}]
        self.beta.mesh.set_sessions(sessions, worker_id="w-7")
        self.beta.mesh.start()
        self.clock.advance(30)
        self.flush()
        [(peer, heartbeat)] = self.alpha.received
        self.assertEqual(heartbeat.payload["sessions"], sessions)
        self.assertEqual(heartbeat.payload["worker_id"], "w-7")
        self.assertEqual(heartbeat.payload["timestamp"], int(self.clock.seconds() * 1000))
        held = self.alpha.mesh.sessions()["beta"]
        self.assertEqual((held.worker_id, held.sessions, held.age), ("w-7", sessions, 0))
        self.beta.mesh.stop()
        self.alpha.mesh.start()
        self.clock.advance(89)
        self.assertIn("beta", self.alpha.mesh.sessions())
        self.clock.advance(1)
        self.assertEqual(self.alpha.mesh.sessions(), {})
        self.alpha.mesh.stop()

    def test_default_worker_id(self):
        self.beta.mesh.set_sessions([])
        self.beta.mesh.start()
        self.clock.advance(30)
        self.flush()
        self.assertEqual(self.alpha.received[0][1].payload["worker_id"], "beta")
        self.beta.mesh.set_sessions(None)
        self.clock.advance(30)
        self.flush()
        self.assertEqual(self.alpha.received[1][1].payload, {})
        self.beta.mesh.stop()

    def test_bad_sessions(self):
        with self.assertRaises(WireError):
            self.beta.mesh.set_sessions([object()])
        self.beta.mesh.start()
        self.clock.advance(30)
        self.flush()
        self.assertEqual(self.alpha.received[0][1].payload, {})
        self.beta.mesh.stop()


class HotPathTests(MeshTestCase):
    """
    What message_received does for every message: deduplication with
    bounded memory, and the subscribers looked up once per type.
    """

    def test_heartbeats_not_remembered(self):
        """
        Heartbeats are delivered even when their id repeats, and an idle
        peer that only sends heartbeats holds no duplicate window.
        """
        beat = RelayMessage("hb-1", "heartbeat", "beta", 1, {"sessions": [], "worker_id": "w"})
        self.inject(self.ab, beat)
        self.inject(self.ab, beat)
        self.assertEqual([m.id for _, m in self.alpha.received], ["hb-1", "hb-1"])
        self.assertIsNone(self.alpha.mesh._peers["beta"].recent)
        self.assertIn("beta", self.alpha.mesh.sessions())

    def test_window_made_on_first_message(self):
        self.inject(self.ab, RelayMessage("t-1", "task_status", "beta", 1, {}))
        self.inject(self.ab, RelayMessage("t-1", "task_status", "beta", 1, {}))
        self.assertEqual(len(self.alpha.received), 1)
        self.assertEqual(len(self.alpha.mesh._peers["beta"].recent), 1)

    def test_subscription_changes_apply_to_the_next_message(self):
        mesh = self.alpha.mesh
        late = []

        def first(peer_id, message):
            if message.id == "1":
                mesh.subscribe(lambda p, m: late.append(m.id), "task_status")

        subscription = mesh.subscribe(first, "task_status")
        self.inject(self.ab, RelayMessage("1", "task_status", "beta", 1, {}))
        self.inject(self.ab, RelayMessage("2", "task_status", "beta", 1, {}))
        self.assertEqual(late, ["2"])
        subscription.cancel()
        mesh.subscribe(lambda p, m: late.append("all:" + m.id))
        self.inject(self.ab, RelayMessage("3", "task_status", "beta", 1, {}))
        self.assertEqual(late, ["2", "3", "all:3"])

    def test_lookup_kept_for_a_type_without_subscribers(self):
        """
        The subscribers of a type nobody subscribed to (none) are looked up
        once too, not again for every message of that type.
        """
        dispatcher = Dispatcher()
        dispatcher.subscribe(lambda p, m: None, "task_status")
        lookups = []
        real = dispatcher._lookup
        self.patch(dispatcher, "_lookup", lambda msg_type: lookups.append(msg_type) or real(msg_type))
        beats = [RelayMessage(f"hb-{i}", "heartbeat", "beta", 1, {}) for i in range(5)]
        peer = self.alpha.mesh._peers["beta"]
        dispatcher.deliver_new(peer, beats, lambda peer, payload: None, self.ab[0])
        for beat in beats:
            dispatcher.deliver("beta", beat)
        self.assertEqual(lookups, ["heartbeat"])

    def test_subscription_changes_within_a_batch(self):
        """
        A subscription made by a subscriber applies to the next message of
        the same batch.
        """
        dispatcher = Dispatcher()
        late = []

        def first(peer_id, message):
            if message.id == "1":
                dispatcher.subscribe(lambda p, m: late.append(m.id), "task_status")

        dispatcher.subscribe(first, "task_status")
        batch = [RelayMessage(str(i), "task_status", "beta", 1, {}) for i in (1, 2, 3)]
        dispatcher.deliver_new(self.alpha.mesh._peers["beta"], batch, lambda peer, payload: None, self.ab[0])
        self.assertEqual(late, ["2", "3"])

    def test_batched_sends_arrive_in_order(self):
        mesh = self.alpha.mesh
        with mesh.batch():
            for i in range(30):
                mesh.send("beta", "task_status", {"n": i})
            mesh.broadcast("knowledge_sync", {"n": 30})
        self.flush()
        self.assertEqual([m.payload["n"] for _, m in self.beta.received], list(range(31)))
        self.assertEqual([m.payload["n"] for _, m in self.gamma.received], [30])

