"""
Tests for L{relaymesh.routing.router}: multi-hop routing between in-memory nodes
that announce C{route/2}, on a L{task.Clock}.
"""

import json

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from relaymesh.reliable.outbox import (
    DEFAULT_RESEND_AFTER,
    DEFAULT_SCAN_INTERVAL,
    routed_origin_id,
)
from relaymesh.handshake.proofs import DEFAULT_CAPABILITIES
from relaymesh.errors import PeerNotConnected, UnknownPeer
from relaymesh.events import PeerState

ROUTED = PeerState.ROUTED
from relaymesh.routing.router import ADVERTISE_MIN_INTERVAL
from relaymesh.routing.table import MAX_HOPS, ROUTING_CAPABILITY, RouteHeader, encode_routed
from relaymesh.test.support import MemoryStore, Node, connect, make_clock, pair_keys

#: The five fields of a claudectl message, in its order.
CLAUDECTL_FIELDS = ["id", "msg_type", "from_peer", "timestamp", "payload"]


class Mesh:
    """
    In-memory routing nodes and the links between them. Every node is
    paired with every other (routed messages are sealed end to end), linked
    or not.
    """

    def __init__(self, names, reliable=False):
        """
        @param reliable: Whether every node has an in-memory outbox.
        """
        self.clock = make_clock()
        self.nodes = {
            name: Node(name, self.clock, routing=True, store=MemoryStore() if reliable else None)
            for name in names
        }
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                pair_keys(self.nodes[a], self.nodes[b])
        self.links = {}

    def link(self, acceptor, connector, host=None):
        a, c = self.nodes[acceptor], self.nodes[connector]
        pair_keys(a, c)
        host = host or f"10.0.{len(self.links)}.2"
        self.links[acceptor, connector] = connect(a, c, host=host)
        self.settle()

    def drop(self, acceptor, connector):
        server, _, pump = self.links.pop((acceptor, connector))
        server.close("closed by the test")
        pump.flush()
        self.settle()

    def flush(self):
        for _ in range(3):
            for _, _, pump in self.links.values():
                pump.flush()

    def settle(self, rounds=6):
        """
        Let the early advertisements travel until the tables agree.
        """
        for _ in range(rounds):
            self.flush()
            self.clock.advance(ADVERTISE_MIN_INTERVAL)
        self.flush()

    def got(self, name, msg_type="delegate_task"):
        return [(p, m) for p, m in self.nodes[name].received if m.msg_type == msg_type]


class LineTests(SynchronousTestCase):
    """
    alpha — beta — gamma: beta accepts both.
    """

    def setUp(self):
        self.net = Mesh(["alpha", "beta", "gamma"])
        self.net.link("beta", "alpha")
        self.net.link("beta", "gamma", host="10.0.9.2")
        self.alpha = self.net.nodes["alpha"].mesh
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_announced(self):
        self.assertEqual(self.alpha.capabilities, DEFAULT_CAPABILITIES + (ROUTING_CAPABILITY,))
        self.assertEqual(Node("plain", self.net.clock).mesh.capabilities, DEFAULT_CAPABILITIES)

    def test_routes_learned(self):
        """
        alpha learns that gamma is two hops away through beta, and says so
        in its peer list.
        """
        status = self.alpha.peer("gamma")
        self.assertEqual((status.state, status.via, status.hops), (ROUTED, "beta", 2))
        beta = self.alpha.peer("beta")
        self.assertEqual((beta.state, beta.via, beta.hops), ("connected", "beta", 1))
        self.assertEqual([s.peer_id for s in self.alpha.peers()], ["beta", "gamma"])

    def test_send_through_beta(self):
        """
        A message for gamma goes to beta in a route envelope; gamma's
        application gets it once, from alpha, under alpha's id; beta's
        application does not get it.
        """
        msg_id = self.alpha.send("gamma", "delegate_task", {"task_id": "t1"})
        self.net.flush()
        [(peer, message)] = self.net.got("gamma")
        self.assertEqual(
            (peer, message.id, message.from_peer, message.payload),
            ("alpha", msg_id, "alpha", {"task_id": "t1"}),
        )
        self.assertEqual(self.net.got("beta"), [])

    def test_hop_limit(self):
        """
        A routed message that has used up the hop limit is not forwarded,
        and the node says why in one log line.
        """
        server, _, _ = self.net.links["beta", "alpha"]
        message = self.alpha.message("delegate_task", {})
        header = RouteHeader("alpha", "gamma", MAX_HOPS, message.id)
        sealed = self.net.nodes["alpha"].router.sealer.seal("gamma", message, message.id, {})
        server.dataReceived(encode_routed(message, header, sealed) + b"\n")
        self.net.flush()
        self.assertEqual(self.net.got("gamma"), [])
        [event] = [e for e in self.log if "dropping routed" in e.get("log_format", "")]
        self.assertEqual(event["why"], f"hop limit of {MAX_HOPS} reached")
        self.assertEqual(event["to"], "gamma")
        self.assertEqual(server.state.value, "connected")

    def test_route_withdrawn(self):
        """
        When beta drops, alpha loses its route to gamma at once, and gamma
        learns of it from beta's next advertisement.
        """
        self.net.drop("beta", "alpha")
        self.assertRaises(UnknownPeer, self.alpha.peer, "gamma")
        self.assertRaises(UnknownPeer, self.alpha.send, "gamma", "delegate_task", {})
        gamma = self.net.nodes["gamma"].mesh
        self.assertRaises(UnknownPeer, gamma.peer, "alpha")

    def test_bad_route_field_closes(self):
        """
        A malformed route field from a neighbour ends its connection, as any
        unparseable line does.
        """
        server, _, _ = self.net.links["beta", "alpha"]
        fields = self.alpha.message("delegate_task", {}).to_dict()
        fields["route"] = {"origin": "alpha"}
        server.dataReceived(json.dumps(fields).encode() + b"\n")
        self.assertIn("bad routed message: route is missing", server.close_reason)

    def test_unsealed_routed_message_closes(self):
        """
        A routed message without its C{sealed} field is malformed: it ends
        the neighbour's connection.
        """
        server, _, _ = self.net.links["beta", "alpha"]
        fields = self.alpha.message("delegate_task", {}).to_dict()
        fields["route"] = RouteHeader("alpha", "gamma", 1, fields["id"]).to_object()
        server.dataReceived(json.dumps(fields).encode() + b"\n")
        self.assertIn("'sealed'", server.close_reason)

    def test_unpaired_destination_refused(self):
        """
        A node routes its own messages only to destinations it shares a key
        with; it still relays for others.
        """
        del self.net.nodes["alpha"].keys.keys["gamma"]
        e = self.assertRaises(UnknownPeer, self.alpha.send, "gamma", "delegate_task", {})
        self.assertIn("not paired", str(e))
        gamma = self.net.nodes["gamma"].mesh
        del self.net.nodes["gamma"].keys.keys["beta"]
        del self.net.nodes["beta"].keys.keys["gamma"]
        gamma_alpha = gamma.send("alpha", "delegate_task", {"via": "beta"})
        self.net.flush()
        # alpha no longer shares a key with gamma: it refuses gamma's message
        self.assertEqual(self.net.got("alpha"), [])
        self.assertEqual(self.net.nodes["alpha"].router.rejected, {"unpaired": 1})
        self.assertTrue(gamma_alpha)

    def test_no_route(self):
        """
        A paired destination with no route is not connected.
        """
        self.net.nodes["alpha"].keys.keys["zeta"] = b"k" * 32
        self.assertRaises(UnknownPeer, self.alpha.send, "zeta", "delegate_task", {})
        self.assertRaises(
            PeerNotConnected, self.net.nodes["alpha"].router.send, "zeta", self.alpha.message("delegate_task", {})
        )


class ClaudectlPeerTests(SynchronousTestCase):
    """
    A claudectl-style peer (claudectl's handshake, no capabilities) of a
    routing node never sees a routing field or a routed message.
    """

    def test_no_route_fields(self):
        net = Mesh(["alpha", "beta"])
        net.link("beta", "alpha")
        raw = Node("claude", net.clock)
        pair_keys(net.nodes["beta"], raw)
        link = connect(net.nodes["beta"], raw, client=raw.client("beta", legacy=True))
        net.links["beta", "claude"] = link
        written = []
        client = link[1]
        original = client.dataReceived

        def recording(data):
            written.append(data)
            original(data)

        client.dataReceived = recording
        net.settle()
        beta = net.nodes["beta"].mesh
        beta.start()
        self.addCleanup(beta.stop)
        beta.broadcast("knowledge_sync", {"k": "from beta"})
        net.nodes["alpha"].mesh.broadcast("knowledge_sync", {"k": "from alpha"})
        net.clock.advance(beta.heartbeat_interval)
        net.flush()

        lines = [json.loads(line) for line in b"".join(written).split(b"\n") if line]
        self.assertEqual({tuple(line) for line in lines}, {tuple(CLAUDECTL_FIELDS)})
        kinds = [(line["msg_type"], line["payload"]) for line in lines]
        self.assertIn(("heartbeat", {}), kinds)
        self.assertIn(("knowledge_sync", {"k": "from beta"}), kinds)
        self.assertNotIn(("knowledge_sync", {"k": "from alpha"}), kinds)
        self.assertRaises(UnknownPeer, net.nodes["alpha"].mesh.send, "claude", "delegate_task", {})


class RingTests(SynchronousTestCase):
    """
    alpha — beta — gamma — delta — alpha.
    """

    def test_broadcast_exactly_once(self):
        """
        A broadcast reaches every other node of the ring exactly once,
        under one id: the neighbours plain, the far node sealed through a
        route; nothing comes back to its origin.
        """
        names = ["alpha", "beta", "gamma", "delta"]
        net = Mesh(names)
        for a, b in zip(names, names[1:] + names[:1]):
            net.link(a, b)
        sent = net.nodes["alpha"].mesh.broadcast("knowledge_sync", {"k": 1})
        self.assertEqual(sorted(sent), ["beta", "delta", "gamma"])
        self.assertEqual(len(set(sent.values())), 1)
        net.flush()
        for name in names:
            got = [(p, m.id) for p, m in net.got(name, "knowledge_sync")]
            expected = [] if name == "alpha" else [("alpha", sent["beta"])]
            self.assertEqual(got, expected, name)

    def test_shortest_way_round(self):
        """
        On the ring, gamma is two hops from alpha either way; a message
        takes one of them and arrives once.
        """
        names = ["alpha", "beta", "gamma", "delta"]
        net = Mesh(names)
        for a, b in zip(names, names[1:] + names[:1]):
            net.link(a, b)
        status = net.nodes["alpha"].mesh.peer("gamma")
        self.assertEqual((status.state, status.hops), (ROUTED, 2))
        net.nodes["alpha"].mesh.send("gamma", "delegate_task", {})
        net.flush()
        self.assertEqual(len(net.got("gamma")), 1)


class RoutedReliableTests(SynchronousTestCase):
    """
    Reliable messages across alpha — beta — gamma, every node with an
    in-memory outbox.
    """

    def setUp(self):
        self.net = Mesh(["alpha", "beta", "gamma"], reliable=True)
        self.net.link("beta", "alpha")
        self.net.link("beta", "gamma", host="10.0.9.2")
        self.alpha = self.net.nodes["alpha"]

    def test_delivered_through_a_route(self):
        """
        gamma's application gets the message once, from alpha, under its
        id; the ack comes back through beta, empties alpha's outbox and is
        no application message anywhere.
        """
        delivery = self.alpha.mesh.send_reliable("gamma", "delegate_task", {"task_id": "t1"})
        self.net.flush()
        [(peer, message)] = self.net.got("gamma")
        self.assertEqual((peer, message.id, message.from_peer), ("alpha", delivery.msg_id, "alpha"))
        self.assertEqual(self.net.nodes["gamma"].store.delivered, {("alpha", delivery.msg_id)})
        self.successResultOf(delivery.delivered())
        self.assertEqual(self.alpha.store.outbox, {})
        for name in ("alpha", "beta", "gamma"):
            self.assertEqual(self.net.got(name, "ack"), [], name)
        self.assertEqual(self.net.got("beta"), [])

    def test_lost_ack_resent_under_a_new_origin_id(self):
        """
        When the ack is lost, the overdue message is sent again with a new
        origin id, so beta forwards it again; gamma acknowledges it again
        without delivering it twice.
        """
        beta_side, gamma_side, _ = self.net.links["beta", "gamma"]
        beta_side.transport.recorded = []
        for side in (beta_side, gamma_side):
            side.transport.lose_writes = True
        delivery = self.alpha.mesh.send_reliable("gamma", "delegate_task", {})
        self.net.flush()
        gamma_side.dataReceived(b"".join(beta_side.transport.recorded))  # beta's copy reaches gamma
        self.net.flush()  # ... and gamma's ack is lost
        for side in (beta_side, gamma_side):
            side.transport.lose_writes = False
        self.assertEqual(len(self.net.got("gamma")), 1)
        self.assertNoResult(delivery.delivered())
        self.net.clock.advance(DEFAULT_RESEND_AFTER + DEFAULT_SCAN_INTERVAL)
        self.net.flush()
        self.successResultOf(delivery.delivered())
        self.assertEqual(len(self.net.got("gamma")), 1)

    def test_routed_origin_ids(self):
        self.assertEqual(routed_origin_id("msg_1_2_x", 0), "msg_1_2_x")
        self.assertEqual(routed_origin_id("msg_1_2_x", 3), "msg_1_2_x/3")

    def test_no_route_queued(self):
        """
        A paired destination neither connected nor routable is accepted:
        the message waits, and goes as soon as a route appears. One this
        node is not paired with is refused.
        """
        self.net.drop("beta", "gamma")
        delivery = self.alpha.mesh.send_reliable("gamma", "delegate_task", {})
        self.successResultOf(delivery.accepted())
        self.assertNoResult(delivery.delivered())
        self.net.link("beta", "gamma", host="10.0.9.3")
        self.successResultOf(delivery.delivered())
        self.assertEqual(len(self.net.got("gamma")), 1)
        e = self.assertRaises(
            UnknownPeer, self.alpha.mesh.send_reliable, "nobody", "delegate_task", {}
        )
        self.assertIn("not paired", str(e))

    def test_outbox_from_an_earlier_run_waits_for_a_route(self):
        """
        A message for a routed destination found in the outbox at start-up
        goes out as soon as a route to it appears.
        """
        store = MemoryStore()
        first = Node("alpha2", self.net.clock, store=store, routing=True)
        certificate = first.certificate  # the restarted node keeps it
        self.net.nodes["alpha2"] = first
        pair_keys(self.net.nodes["beta"], first)
        pair_keys(self.net.nodes["gamma"], first)
        # first learns gamma through beta, sends to it, and goes away before
        # the message leaves its buffer
        self.net.link("beta", "alpha2", host="10.0.8.2")
        self.net.links["beta", "alpha2"][1].transport.lose_writes = True
        first.mesh.send_reliable("gamma", "delegate_task", {})
        first.reliable.stop()
        self.net.drop("beta", "alpha2")
        self.assertEqual(len(store.outbox), 1)
        self.assertEqual(self.net.got("gamma"), [])

        again = Node("alpha2", self.net.clock, store=store, routing=True, certificate=certificate)
        self.net.nodes["alpha2"] = again
        pair_keys(self.net.nodes["beta"], again)
        pair_keys(self.net.nodes["gamma"], again)
        self.assertEqual(len(again.reliable.pending()), 1)
        self.net.link("beta", "alpha2", host="10.0.8.3")
        self.net.flush()
        self.assertEqual(len(self.net.got("gamma")), 1)
        self.assertEqual(store.outbox, {})


class AdvertisementTests(SynchronousTestCase):
    def test_early_advertisements_rate_limited(self):
        """
        A change of the table is advertised at once, and further changes
        within L{ADVERTISE_MIN_INTERVAL} wait for it to pass: one extra
        heartbeat each time, only to the routing neighbours.
        """
        net = Mesh(["alpha", "beta", "gamma", "delta"])
        net.link("beta", "alpha")
        net.clock.advance(ADVERTISE_MIN_INTERVAL)
        beta = net.nodes["beta"]
        to_alpha = net.links["beta", "alpha"][0].transport
        to_alpha.recorded = []

        def adverts():
            lines = [json.loads(line) for line in b"".join(to_alpha.recorded).split(b"\n") if line]
            return [line["routes"]["routes"] for line in lines if "routes" in line]

        for name, host in (("gamma", "10.0.7.2"), ("delta", "10.0.7.3")):
            pair_keys(beta, net.nodes[name])
            connect(beta, net.nodes[name], host=host)
        net.clock.advance(0)
        self.assertEqual(adverts(), [{"gamma": 1}])
        net.clock.advance(ADVERTISE_MIN_INTERVAL - 0.1)
        self.assertEqual(len(adverts()), 1)
        net.clock.advance(0.1)
        self.assertEqual(adverts(), [{"gamma": 1}, {"delta": 1, "gamma": 1}])
