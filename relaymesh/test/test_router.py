"""
Tests for L{relaymesh.routing.router}: multi-hop routing between in-memory nodes
that announce C{route/2}, on a L{task.Clock}.
"""

import json

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from relaymesh.errors import PeerNotConnected, UnknownPeer
from relaymesh.events import PeerState
from relaymesh.handshake.proofs import DEFAULT_CAPABILITIES
from relaymesh.reliable.outbox import (
    DEFAULT_RESEND_AFTER,
    DEFAULT_SCAN_INTERVAL,
    routed_origin_id,
)
from relaymesh.routing.router import ADVERTISE_MIN_INTERVAL, Router
from relaymesh.routing.seal import Sealer
from relaymesh.routing.table import MAX_HOPS, ROUTING_CAPABILITY, Route, RouteHeader, encode_routed
from relaymesh.test.support import Node, connect, make_clock, pair_keys
from relaymesh.testing import MemoryKeys, MemoryStore
from relaymesh.wire import MAX_LINE_BYTES, RelayMessage, decode_fields

ROUTED = PeerState.ROUTED

#: The key every pair of nodes shares in L{RouterTests}.
PSK = bytes(range(32))

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


class Host:
    """
    What a L{Router} needs of its node (L{ExtensionHost}), recording what
    the router does with it.

    @ivar lines: Every line sent, as C{(peer_id, line)}.
    @ivar delivered: Every message delivered, as C{(peer_id, message)}.
    @ivar changes: How many times the routes changed.
    @ivar advertisements: How many early advertisements went out.
    """

    def __init__(self, identity):
        self.identity = identity
        self.clock = Clock()
        self.lines = []
        self.delivered = []
        self.changes = 0
        self.advertisements = 0

    def routes_changed(self):
        self.changes += 1

    def advertise(self):
        self.advertisements += 1

    def send_line(self, peer_id, line, msg_type):
        self.lines.append((peer_id, line))
        return True

    def deliver(self, peer_id, message):
        self.delivered.append((peer_id, message))

    def receive_routed(self, origin, message, fields):
        return False


class Link:
    """
    A neighbour's connection, as the router sees it.
    """

    def __init__(self, peer_id):
        self.peer_id = peer_id
        self.close_reason = None

    def close(self, reason):
        self.close_reason = reason


def advertisement(routes):
    return {"v": 1, "routes": routes}


class RouterTests(SynchronousTestCase):
    """
    One L{Router} on a fake node, fed what its neighbours would send.

    alpha's neighbours are beta and carol; carol says delta is one hop
    beyond it. alpha is paired with delta and echo.
    """

    def setUp(self):
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.host = Host("alpha")
        self.keys = MemoryKeys({"delta": PSK, "echo": PSK}, identity="alpha")
        self.router = Router(self.host, max_hops=3, keys=self.keys)
        for name in ("beta", "carol"):
            self.router.neighbour_up(name)
        self.router.advertised("carol", advertisement({"delta": 1}))
        self.host.clock.advance(10)
        self.host.lines.clear()
        self.beta, self.carol = Link("beta"), Link("carol")

    def logged(self, words):
        return [e for e in self.log if words in e.get("log_format", "")]

    def heartbeat(self, fields):
        message = RelayMessage("hb", "heartbeat", "carol", 1, {})
        return self.router.take(self.carol, message, {**message.to_dict(), **fields})

    def routed(
        self, link, origin, to, hops, msg_id="m1", sealed="c2VhbGVk", from_peer=None, origin_id=None
    ):
        """
        Hand the router a routed message from C{link}; return whether it
        took it.
        """
        message = RelayMessage(msg_id, "delegate_task", from_peer or link.peer_id, 1, None)
        header = RouteHeader(origin, to, hops, origin_id or msg_id)
        line = encode_routed(message, header, sealed)
        message, fields = decode_fields(line)
        return self.router.take(link, message, fields)

    def test_queries(self):
        """
        The router says which way a destination is and whom it shares a
        key with.
        """
        self.assertEqual(self.router.route("delta"), Route("delta", "carol", 2))
        self.assertIsNone(self.router.route("zeta"))
        self.assertEqual(
            self.router.next_hops(),
            {"beta": ("beta", 1), "carol": ("carol", 1), "delta": ("carol", 2)},
        )
        self.assertTrue(self.router.paired("delta"))
        self.assertFalse(self.router.paired("carol"))

    def test_early_advertisements_once_a_second(self):
        """
        A change is advertised at once if nothing was for a second, else a
        second after the last; changes in between go with it, in one
        advertisement.
        """
        host = Host("alpha")
        router = Router(host)
        router.neighbour_up("beta")
        self.assertEqual((host.changes, host.advertisements), (1, 0))
        host.clock.advance(0)
        self.assertEqual(host.advertisements, 1)
        router.neighbour_up("carol")
        router.neighbour_up("delta")
        self.assertEqual(host.changes, 3)
        host.clock.advance(0.5)
        self.assertEqual(host.advertisements, 1)
        host.clock.advance(0.5)
        self.assertEqual(host.advertisements, 2)
        host.clock.advance(10)
        self.assertEqual(host.advertisements, 2)

    def test_stop(self):
        """
        A stopped router cancels the advertisement it had planned and plans
        none, nor tells the node of changes, until it starts again.
        """
        self.router.neighbour_up("echo")
        self.assertEqual(len(self.host.clock.getDelayedCalls()), 1)
        self.router.stop()
        self.assertEqual(self.host.clock.getDelayedCalls(), [])
        before = (self.host.changes, self.host.advertisements)
        self.router.neighbour_down("echo")
        self.host.clock.advance(10)
        self.assertEqual((self.host.changes, self.host.advertisements), before)
        self.router.start()
        self.router.neighbour_up("echo")
        self.host.clock.advance(0)
        self.assertEqual(
            (self.host.changes, self.host.advertisements), (before[0] + 1, before[1] + 1)
        )

    def test_neighbour_down_forgotten(self):
        """
        A neighbour that went down gets no advertisement, and what it sends
        is not taken as routed.
        """
        self.assertEqual(
            self.router.heartbeat_fields("beta"),
            {"routes": advertisement({"carol": 1, "delta": 2})},
        )
        self.router.neighbour_down("beta")
        self.assertIsNone(self.router.heartbeat_fields("beta"))
        self.assertFalse(self.routed(self.beta, "beta", "delta", 1))
        self.assertEqual(self.host.lines, [])

    def test_only_neighbours_routed(self):
        """
        Only a routing neighbour's routed message is taken; a peer that
        did not announce routing, or a connection not yet authenticated,
        gets its line treated as any other.
        """
        self.assertFalse(self.routed(Link("echo"), "echo", "delta", 1))
        self.assertFalse(self.routed(Link(None), "echo", "delta", 1, from_peer="echo"))
        self.assertEqual(self.host.lines, [])
        self.assertTrue(self.routed(self.beta, "beta", "delta", 1))
        [(to, line)] = self.host.lines
        self.assertEqual(to, "carol")

    def test_advertisements_only_in_heartbeats(self):
        """
        Routes are read from a neighbour's heartbeat only; a heartbeat
        without them changes nothing; neither is taken from the node.
        """
        message = RelayMessage("m", "delegate_task", "carol", 1, {})
        fields = {**message.to_dict(), "routes": advertisement({"delta": 1, "zeta": 1})}
        self.assertFalse(self.router.take(self.carol, message, fields))
        self.assertIsNone(self.router.route("zeta"))
        self.assertFalse(self.heartbeat({}))
        self.assertEqual(self.router.route("delta"), Route("delta", "carol", 2))
        self.assertFalse(self.heartbeat({"routes": advertisement({"delta": 1, "zeta": 1})}))
        self.assertEqual(self.router.route("zeta"), Route("zeta", "carol", 2))

    def test_malformed_advertisement_logged(self):
        """
        A malformed advertisement is ignored, with one log line saying why.
        """
        self.assertFalse(self.heartbeat({"routes": {"v": 2, "routes": {}}}))
        [event] = self.logged("ignoring a malformed route advertisement")
        self.assertEqual(
            (event["peer_id"], event["error"]), ("carol", "advertisement version must be 1")
        )
        self.assertEqual(self.router.route("delta"), Route("delta", "carol", 2))

    def test_refusals_logged_when_they_change(self):
        """
        Destinations refused beyond the limit are logged, with their
        number, whenever that number changes to another that is not zero.
        """
        def flood(count):
            self.router.advertised("beta", advertisement({f"f{i:04d}": 1 for i in range(count)}))
            return [e["excess"] for e in self.logged("refusing {excess} destinations")]

        self.assertEqual(flood(258), [2])
        self.assertEqual(flood(257), [2, 1])
        self.assertEqual(flood(257), [2, 1])
        self.assertEqual(flood(256), [2, 1])
        self.assertEqual(flood(257), [2, 1, 1])
        self.router.neighbour_down("beta")
        self.router.neighbour_up("beta")
        self.assertEqual(flood(257), [2, 1, 1, 1])

    def test_send_with_fields(self):
        """
        A copy for a destination a route leads to goes out sealed; one that
        cannot (no key shared, or too long once sealed) does not, with a
        log line, and nothing raises.
        """
        message = RelayMessage("m1", "delegate_task", "alpha", 1, {"n": 1})
        self.assertTrue(self.router.send_with_fields("delta", message, "m1/1", {"reliable": True}))
        [(to, line)] = self.host.lines
        self.assertEqual(to, "carol")
        self.assertEqual(decode_fields(line)[1]["route"]["origin_id"], "m1/1")
        self.keys.keys.pop("delta")
        self.assertFalse(self.router.send_with_fields("delta", message, "m1/2", {"reliable": True}))
        big = RelayMessage("m2", "delegate_task", "alpha", 1, {"n": "x" * 800_000})
        self.keys.keys["delta"] = PSK
        self.assertFalse(self.router.send_with_fields("delta", big, "m2", {}))
        self.assertEqual(len(self.host.lines), 1)
        events = self.logged("routed copy of {msg_id} to {to} not sent")
        self.assertEqual([e["msg_id"] for e in events], ["m1", "m2"])

    def test_broadcast_too_long_to_seal(self):
        """
        A broadcast too long once sealed goes to no routed destination, and
        says so once, not once per destination.
        """
        self.router.advertised("carol", advertisement({"delta": 1, "echo": 1}))
        message = RelayMessage("b1", "knowledge_sync", "alpha", 1, {"n": "x" * 800_000})
        self.assertEqual(self.router.broadcast_routed(message, frozenset({"beta", "carol"})), [])
        self.assertEqual(self.host.lines, [])
        self.assertEqual(len(self.logged("broadcast {msg_id} not sent through routes")), 1)
        small = RelayMessage("b2", "knowledge_sync", "alpha", 1, {"n": 1})
        self.assertEqual(
            self.router.broadcast_routed(small, frozenset({"beta", "carol"})), ["delta", "echo"]
        )

    def test_bad_envelope_logged(self):
        """
        A malformed routed message ends the neighbour's connection, with a
        log line saying why.
        """
        message = RelayMessage("m", "delegate_task", "beta", 1, None)
        fields = {**message.to_dict(), "route": {"origin": "beta"}}
        self.assertTrue(self.router.take(self.beta, message, fields))
        why = "route is missing the field 'to'"
        self.assertEqual(self.beta.close_reason, f"bad routed message: {why}")
        [event] = self.logged("closing connection to {peer_id}: bad routed message")
        self.assertEqual((event["peer_id"], event["error"]), ("beta", why))

    def test_too_long_to_forward(self):
        """
        A routed line at the length limit that would be too long with this
        node's id in it is dropped, with a log line, and nothing is sent.
        """
        message = RelayMessage("m1", "delegate_task", "b", 1, None)
        empty = len(encode_routed(message, RouteHeader("beta", "delta", 1, "m1"), ""))
        sealed = "x" * (MAX_LINE_BYTES - empty)
        self.assertTrue(self.routed(self.beta, "beta", "delta", 1, sealed=sealed, from_peer="b"))
        self.assertEqual(self.host.lines, [])
        [event] = self.logged("dropping routed {msg_type} {origin_id} from {origin}: {error}")
        self.assertIn("exceeds the 1048576-byte line limit", str(event["error"]))
        self.assertTrue(
            self.routed(self.beta, "beta", "delta", 1, msg_id="m2", sealed=sealed[4:], from_peer="b")
        )
        self.assertEqual(len(self.host.lines), 1)

    def test_drops_logged_once(self):
        """
        A routed message that can go no further is logged the first time,
        not again for its copies, and never for this node's own message
        coming back.
        """
        for _ in range(2):
            self.routed(self.beta, "beta", "zeta", 1)
        self.routed(self.beta, "alpha", "zeta", 1)
        self.routed(self.beta, "alpha", "delta", 1)
        events = self.logged("dropping routed {msg_type} {origin_id} from {origin} to {to}")
        self.assertEqual([(e["origin"], e["to"]) for e in events], [("beta", "zeta")])
        self.assertEqual(self.host.lines, [])

    def test_why_dropped(self):
        """
        A dropped message's log line says the hop limit was reached when
        the message used it up, or its route is longer than the hops it
        has left; else that no route leads on.
        """
        self.router.advertised("carol", advertisement({"delta": 1, "far": 2}))
        cases = [
            # no route, hops to spare
            (self.beta, "zeta", 1, "no route onwards"),
            # no route, and every hop used
            (self.beta, "zeta", 3, "hop limit of 3 reached"),
            # a route of 3 hops, with 2 left
            (self.beta, "far", 1, "hop limit of 3 reached"),
            # a route that fits, but leads back where it came from
            (self.carol, "delta", 1, "no route onwards"),
        ]
        for i, (link, to, hops, why) in enumerate(cases):
            self.routed(link, "echo", to, hops, msg_id=f"m{i}")
            event = self.logged("dropping routed")[-1]
            self.assertEqual((event["to"], event["hops"], event["why"]), (to, hops, why))
        self.assertEqual(len(self.logged("dropping routed")), 4)
        self.assertEqual(self.host.lines, [])

    def test_replays_within_the_window(self):
        """
        An origin's last 4,096 delivered ids are remembered: a relay that
        replays any of them gets nothing delivered; an id older than that
        is no longer known.
        """
        delta = Sealer("delta", MemoryKeys({"alpha": PSK}, identity="delta"))

        def arrive(n):
            message = RelayMessage(f"m{n}", "delegate_task", "delta", 1, {"n": n})
            sealed = delta.seal("alpha", message, message.id, {})
            self.routed(self.carol, "delta", "alpha", 2, msg_id=message.id, sealed=sealed)

        for n in range(4096):
            arrive(n)
        self.assertEqual(len(self.host.delivered), 4096)
        arrive(0)
        self.assertEqual(len(self.host.delivered), 4096)
        arrive(4096)
        arrive(1)
        self.assertEqual(len(self.host.delivered), 4097)
        arrive(0)
        self.assertEqual(len(self.host.delivered), 4098)
        self.assertEqual(self.host.delivered[-1][1].payload, {"n": 0})

    def test_delivered_under_origin_id(self):
        """
        A routed message is delivered as its origin's, under the origin id
        it is deduplicated by; a reliable one is handed to the reliable
        delivery under its own id (its copies differ in origin id).
        """
        delta = Sealer("delta", MemoryKeys({"alpha": PSK}, identity="delta"))
        for n, fields in enumerate([{}, {"reliable": True}]):
            message = RelayMessage(f"m{n}", "delegate_task", "delta", 1, {"n": n})
            sealed = delta.seal("alpha", message, f"o{n}", fields)
            self.routed(
                self.carol, "delta", "alpha", 2, msg_id=f"m{n}", sealed=sealed, origin_id=f"o{n}"
            )
        self.assertEqual(
            [(peer, m.id, m.from_peer, m.payload) for peer, m in self.host.delivered],
            [("delta", "o0", "delta", {"n": 0}), ("delta", "m1", "delta", {"n": 1})],
        )
