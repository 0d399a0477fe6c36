"""
The attacks on routing that a paired neighbour could once make, replayed on
whole nodes of a L{MemoryNetwork}: forging a routed message's origin,
hijacking a route with a forged ack, flooding advertisements with invented
destinations, flooding the delivered-id record, and reading what it relays;
and the reliable send to a paired peer that has not connected yet.

carol is the attacker: a real, paired node whose connection to alice the
tests write raw lines to, as a modified carol would.
"""

from __future__ import annotations

import base64
import os

from prometheus_client import generate_latest
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from relaymesh.control.metrics import NodeMetrics
from relaymesh.errors import UnknownPeer
from relaymesh.reliable.fields import MAX_ID_LENGTH
from relaymesh.routing.router import ADVERTISE_MIN_INTERVAL
from relaymesh.routing.seal import associated_data, box_text, direction_key, seal
from relaymesh.routing.table import MAX_ROUTES, RouteHeader, encode_routed
from relaymesh.service import RelayService
from relaymesh.testing import (
    MemoryNetwork,
    MemoryStore,
    connect_nodes,
    memory_node,
)
from relaymesh.wire import RelayMessage, dumps, loads

SECRET = "the-launch-code-is-0000"

#: The clock's time when a test starts: a time in 2026.
START = 1795718866.757


class Attack(SynchronousTestCase):
    """
    Nodes with an outbox and routing on one in-memory network.
    """

    def setUp(self):
        self.network = MemoryNetwork()
        self.network.advance(START)
        self.nodes: dict[str, RelayService] = {}
        self.received: dict[str, list] = {}
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def node(self, name: str, store: MemoryStore | None = None) -> RelayService:
        node = memory_node(self.network, name, outbox=True if store is None else store, routing=True)
        node.startService()
        self.addCleanup(node.stopService)
        self.nodes[name] = node
        got = self.received[name] = []
        node.mesh.subscribe(lambda peer, message: got.append((peer, message)))
        return node

    def pair(self, a: str, b: str) -> bytes:
        """
        Pair two nodes without connecting them.
        """
        key = os.urandom(32)
        self.nodes[a].keystore.set_key(b, key)
        self.nodes[b].keystore.set_key(a, key)
        return key

    def link(self, acceptor: str, connector: str) -> None:
        """
        Connect two nodes with the key they share (a new one if none).
        """
        key = self.nodes[acceptor].keystore.key(connector)
        connect_nodes(self.network, self.nodes[acceptor], self.nodes[connector], key=key)
        self.settle()

    def settle(self) -> None:
        for _ in range(6):
            self.network.advance(ADVERTISE_MIN_INTERVAL)

    def raw(self, sender: str, receiver: str, obj: dict) -> None:
        """
        Write one line, as C{sender} on its connection to C{receiver}.
        """
        protocol = self.nodes[sender].mesh.registry.connection(receiver)
        assert protocol is not None
        protocol.sendEncoded(dumps(obj), obj["msg_type"])
        self.network.flush()

    def advertise(self, sender: str, receiver: str, routes: dict) -> None:
        """
        Send C{receiver} a heartbeat in which C{sender} advertises
        C{routes} (destination to hops), whatever it really reaches.
        """
        self.raw(
            sender,
            receiver,
            {
                "id": "hb1",
                "msg_type": "heartbeat",
                "from_peer": sender,
                "timestamp": 1,
                "payload": {},
                "routes": {"v": 1, "routes": routes},
            },
        )

    def tap(self, receiver: str, sender: str) -> list[bytes]:
        """
        Record every byte C{receiver} gets from C{sender} from now on.
        """
        protocol = self.nodes[receiver].mesh.registry.connection(sender)
        assert protocol is not None
        data: list[bytes] = []
        original = protocol.dataReceived

        def recording(chunk):
            data.append(chunk)
            original(chunk)

        self.patch(protocol, "dataReceived", recording)
        return data

    def apps(self, name: str, msg_type: str = "delegate_task") -> list:
        return [(p, m) for p, m in self.received[name] if m.msg_type == msg_type]

    def logged(self, words: str) -> list[dict]:
        return [e for e in self.log if words in e.get("log_format", "")]

    def forged(self, origin: str, to: str, msg_type: str, payload, msg_id: str, key: bytes) -> dict:
        """
        A routed message claiming C{origin}, sealed with C{key} (which is
        not the one C{origin} shares with C{to}), as carol would write it.
        """
        timestamp = int(self.network.seconds() * 1000)
        ad = associated_data(origin, to, msg_id, msg_id, msg_type, timestamp)
        content = dumps({"payload": payload})
        box = seal(direction_key(key, origin, to), os.urandom(12), content, ad)
        message = RelayMessage(msg_id, msg_type, "carol", timestamp, None)
        fields: dict = loads(encode_routed(message, RouteHeader(origin, to, 1, msg_id), box_text(box)))
        return fields


class OriginForgeryTests(Attack):
    """
    (a) carol, alice's paired neighbour, sends a routed message whose route
    says it comes from bob.
    """

    def setUp(self):
        super().setUp()
        for name in ("alice", "bob", "carol"):
            self.node(name)
        self.pair("alice", "bob")
        self.carol_key = self.pair("alice", "carol")
        self.link("alice", "carol")

    def test_forged_origin_dropped_logged_counted(self):
        metrics = NodeMetrics(self.nodes["alice"].mesh, self.network)
        self.addCleanup(metrics.stop)
        forged = self.forged("bob", "alice", "delegate_task", {"do": "rm"}, "msg_\x1b]52;evil", self.carol_key)
        self.raw("carol", "alice", forged)
        # a box of random bytes, and one from an origin alice is not paired with
        random_box = dict(forged, id="m2", sealed=box_text(os.urandom(60)))
        random_box["route"] = dict(forged["route"], origin_id="m2")
        self.raw("carol", "alice", random_box)
        self.raw(
            "carol",
            "alice",
            self.forged("mallory", "alice", "delegate_task", {}, "m3", self.carol_key),
        )
        self.assertEqual(self.apps("alice"), [])
        router = self.nodes["alice"].mesh.router
        self.assertEqual(router.rejected, {"forged": 2, "unpaired": 1})
        lines = self.logged("rejecting routed")
        self.assertEqual(len(lines), 3)
        self.assertEqual(lines[0]["origin"], "bob")
        self.assertEqual(lines[0]["neighbour"], "carol")
        self.assertEqual(lines[0]["origin_id"], "msg_\\x1b]52;evil")
        # nothing else changed: carol is still connected, alice still routes
        self.assertTrue(self.nodes["alice"].mesh.is_connected("carol"))
        metrics.refresh()
        text = generate_latest(metrics.registry).decode()
        self.assertIn('relaymesh_routed_rejected_total{reason="forged"} 2.0', text)
        self.assertIn('relaymesh_routed_rejected_total{reason="unpaired"} 1.0', text)

    def test_unsealed_route_1_message_ends_the_connection(self):
        """
        A routed message in the old, unsealed form is malformed.
        """
        message = RelayMessage("m1", "delegate_task", "carol", 1, {"do": "rm"}).to_dict()
        message["route"] = {"origin": "bob", "to": "alice", "hops": 1, "origin_id": "m1"}
        self.raw("carol", "alice", message)
        self.assertEqual(self.apps("alice"), [])
        self.assertFalse(self.nodes["alice"].mesh.is_connected("carol"))


class RouteHijackTests(Attack):
    """
    (b) bob is offline; carol advertises a route to bob, takes bob's
    reliable message and answers with an ack "from bob".
    """

    def test_hijack_reads_nothing_and_the_forged_ack_changes_nothing(self):
        for name in ("alice", "bob", "carol"):
            self.node(name)
        self.pair("alice", "bob")
        carol_key = self.pair("alice", "carol")
        self.link("alice", "carol")
        alice = self.nodes["alice"].mesh

        # bob has never connected: the message is accepted and waits
        delivery = alice.send_reliable("bob", "delegate_task", {"secret": SECRET})
        self.successResultOf(delivery.accepted())

        seen_by_carol = self.tap("carol", "alice")
        self.advertise("carol", "alice", {"bob": 1})
        self.assertEqual(alice.peer("bob").via, "carol")
        wire_bytes = b"".join(seen_by_carol)
        self.assertIn(b'"to":"bob"', wire_bytes)
        self.assertNotIn(SECRET.encode(), wire_bytes)

        forged_ack = self.forged(
            "bob", "alice", "ack", {"ack_id": delivery.msg_id}, "ack1", carol_key
        )
        self.raw("carol", "alice", forged_ack)
        self.assertNoResult(delivery.delivered())
        self.assertEqual([e.msg_id for e in self.nodes["alice"].mesh.reliable.pending()], [delivery.msg_id])
        self.assertEqual(alice.router.rejected, {"forged": 1})
        self.assertEqual(self.apps("alice", "ack"), [])

        # bob comes online and connects to alice: he gets it, once
        self.link("alice", "bob")
        self.network.advance(35)
        self.successResultOf(delivery.delivered())
        [(peer, message)] = self.apps("bob")
        self.assertEqual((peer, message.payload), ("alice", {"secret": SECRET}))


class AdvertisementFloodTests(Attack):
    """
    (c) carol advertises 1,024 invented destinations.
    """

    def test_flood_capped_and_routes_keep_working(self):
        # carol — alice — dave — erin
        for name in ("alice", "carol", "dave", "erin"):
            self.node(name)
        self.link("alice", "carol")
        self.link("alice", "dave")
        self.link("dave", "erin")
        self.pair("erin", "carol")
        invented = {f"fake{i:04d}": 1 + i % 3 for i in range(1024)}
        self.advertise("carol", "alice", invented)
        self.settle()
        alice, dave = self.nodes["alice"].mesh, self.nodes["dave"].mesh
        [refusal] = self.logged("refusing {excess} destinations")
        self.assertEqual((refusal["excess"], refusal["peer_id"]), (1024 - MAX_ROUTES, "carol"))
        self.assertEqual(len(alice.router.table.routes()), MAX_ROUTES + 3)
        # dave takes all of what alice says: nothing malformed, nothing refused
        self.assertEqual(self.logged("malformed route advertisement"), [])
        self.assertEqual(dave.router.table.excess, {})
        self.assertLessEqual(len(dave.router.table.routes()), MAX_ROUTES + 2)
        # and the real routes still work across the mesh
        self.assertEqual(self.nodes["erin"].mesh.peer("carol").hops, 3)
        self.nodes["erin"].mesh.send("carol", "delegate_task", {"hello": "carol"})
        self.network.flush()
        [(peer, _)] = self.apps("carol")
        self.assertEqual(peer, "erin")


class IdFloodTests(Attack):
    """
    (d) carol sends alice reliable messages with ever new long ids.
    """

    def reliable(self, msg_id: str) -> dict:
        return {
            "id": msg_id,
            "msg_type": "delegate_task",
            "from_peer": "carol",
            "timestamp": 1,
            "payload": {},
            "reliable": True,
        }

    def test_storage_bounded(self):
        store = MemoryStore(max_delivered=50)
        self.node("alice", store=store)
        self.node("carol")
        self.link("alice", "carol")
        acks = self.tap("carol", "alice")
        for i in range(300):
            self.raw("carol", "alice", self.reliable(f"{i:06d}" + "x" * 494))
        self.assertEqual(store.delivered, set())
        self.assertEqual(self.apps("alice"), [])
        self.assertEqual(len(self.logged("refusing reliable")), 300)
        self.assertNotIn(b'"ack"', b"".join(acks))
        for i in range(300):
            self.raw("carol", "alice", self.reliable(f"{i:06d}".ljust(MAX_ID_LENGTH, "y")))
        self.assertEqual(len(store.delivered), 50)
        self.assertEqual(len(self.apps("alice")), 300)
        self.assertEqual(b"".join(acks).count(b'"msg_type":"ack"'), 300)
        self.assertTrue(self.nodes["alice"].mesh.is_connected("carol"))


class Relayed(Attack):
    """
    alice — carol — bob: carol relays between alice and bob, who are
    paired; what carol gets from each is recorded.
    """

    def setUp(self):
        super().setUp()
        for name in ("alice", "bob", "carol"):
            self.node(name)
        self.pair("alice", "bob")
        self.link("carol", "alice")
        self.link("carol", "bob")
        self.from_alice = self.tap("carol", "alice")
        self.from_bob = self.tap("carol", "bob")


class RelayPrivacyTests(Relayed):
    """
    carol learns nothing of what alice and bob say; replaying what she
    relayed gets nothing delivered twice.
    """

    def test_relay_sees_no_plaintext(self):
        alice = self.nodes["alice"].mesh
        alice.send("bob", "delegate_task", {"secret": SECRET})
        delivery = alice.send_reliable("bob", "delegate_task", {"secret": SECRET + "-2"})
        alice.broadcast("knowledge_sync", {"news": "for-everyone"})
        self.network.flush()
        self.successResultOf(delivery.delivered())
        self.assertEqual(
            sorted(m.payload["secret"] for _, m in self.apps("bob")), [SECRET, SECRET + "-2"]
        )
        [(peer, broadcast)] = self.apps("bob", "knowledge_sync")
        self.assertEqual((peer, broadcast.payload), ("alice", {"news": "for-everyone"}))
        relayed = b"".join(self.from_alice + self.from_bob)
        self.assertIn(b'"sealed":', relayed)
        self.assertNotIn(SECRET.encode(), relayed)
        # the broadcast is carol's too: plain to her as alice's neighbour,
        # sealed for bob; it passed carol once in clear, not twice
        self.assertEqual(relayed.count(b"for-everyone"), 1)
        self.assertEqual(self.apps("carol"), [])
        self.assertEqual([p for p, _ in self.apps("carol", "knowledge_sync")], ["alice"])

    def test_replays_delivered_once(self):
        alice = self.nodes["alice"].mesh
        alice.send("bob", "delegate_task", {"n": 1})
        delivery = alice.send_reliable("bob", "delegate_task", {"n": 2})
        self.network.flush()
        self.successResultOf(delivery.delivered())
        self.assertEqual(len(self.apps("bob")), 2)
        lines = [line for line in b"".join(self.from_alice).split(b"\n") if b'"route"' in line]
        self.assertEqual(len(lines), 2)
        for line in lines:
            obj = loads(line)
            obj["from_peer"] = "carol"
            self.raw("carol", "bob", obj)
            self.raw("carol", "bob", obj)
            # with another origin id, to get past the dedup: the seal breaks
            obj["route"]["origin_id"] += "x"
            self.raw("carol", "bob", obj)
        self.assertEqual(len(self.apps("bob")), 2)
        self.assertEqual(self.nodes["bob"].mesh.router.rejected, {"forged": 2})


class PairedOfflinePeerTests(Attack):
    """
    (e) A reliable send to a paired peer that has not connected since the
    node started, with no route to it, is queued; an unpaired one is
    refused.
    """

    def test_queued_until_the_peer_connects(self):
        self.node("alice")
        self.node("bob")
        self.pair("alice", "bob")
        alice = self.nodes["alice"].mesh
        delivery = alice.send_reliable("bob", "delegate_task", {"n": 1})
        self.successResultOf(delivery.accepted())
        e = self.assertRaises(UnknownPeer, alice.send_reliable, "zed", "delegate_task", {})
        self.assertIn("not paired", str(e))
        self.network.advance(60)
        self.assertNoResult(delivery.delivered())
        self.link("bob", "alice")
        self.successResultOf(delivery.delivered())
        self.assertEqual(len(self.apps("bob")), 1)

    def test_queued_until_a_route_appears(self):
        for name in ("alice", "bob", "carol"):
            self.node(name)
        self.pair("alice", "bob")
        self.link("carol", "alice")
        delivery = self.nodes["alice"].mesh.send_reliable("bob", "delegate_task", {"n": 1})
        self.network.advance(10)
        self.assertNoResult(delivery.delivered())
        self.link("carol", "bob")
        self.successResultOf(delivery.delivered())
        [(peer, _)] = self.apps("bob")
        self.assertEqual(peer, "alice")


class RelayTamperingTests(Relayed):
    """
    carol relays between alice and bob, and changes what she relays, or
    sends it back the other way, to have it taken as something else.
    """

    def routed_lines(self, data: list[bytes]) -> list[dict]:
        return [loads(line) for line in b"".join(data).split(b"\n") if b'"route"' in line]

    def test_tampered_fields_refused(self):
        """
        Every field the seal binds that carol changes on the way (the id,
        the type, the timestamp, the origin id, the origin, the box itself,
        or the box of one message on the envelope of another) gets the copy
        refused as forged; the true message is delivered once.
        """
        alice = self.nodes["alice"].mesh
        alice.send("bob", "delegate_task", {"n": 1})
        alice.send("bob", "delegate_task", {"n": 2})
        self.network.flush()
        self.assertEqual(sorted(m.payload["n"] for _, m in self.apps("bob")), [1, 2])
        first, second = self.routed_lines(self.from_alice)
        box = bytearray(base64.urlsafe_b64decode(first["sealed"] + "=" * (-len(first["sealed"]) % 4)))
        box[-1] ^= 1
        tampered = [
            dict(first, id=first["id"] + "x"),
            dict(first, msg_type="task_status"),
            dict(first, timestamp=first["timestamp"] + 1),
            dict(first, route=dict(first["route"], origin_id=first["route"]["origin_id"] + "x")),
            dict(first, route=dict(first["route"], origin="carol")),
            dict(first, sealed=box_text(bytes(box))),
            dict(second, sealed=first["sealed"]),
        ]
        for obj in tampered:
            self.raw("carol", "bob", dict(obj, from_peer="carol"))
        self.assertEqual(len(self.apps("bob")) + len(self.apps("bob", "task_status")), 2)
        self.assertEqual(self.nodes["bob"].mesh.router.rejected, {"forged": len(tampered)})
        self.assertTrue(self.nodes["bob"].mesh.is_connected("carol"))

    def test_reflected_back_refused(self):
        """
        A message alice sealed for bob, sent back to alice as if bob had
        sealed it for her, does not open: each direction has its own key.
        """
        self.nodes["alice"].mesh.send("bob", "delegate_task", {"n": 1})
        self.network.flush()
        [line] = self.routed_lines(self.from_alice)
        route = dict(line["route"], origin="bob", to="alice")
        self.raw("carol", "alice", dict(line, from_peer="carol", route=route))
        self.assertEqual(self.apps("alice"), [])
        self.assertEqual(self.nodes["alice"].mesh.router.rejected, {"forged": 1})

    def test_replayed_ack_is_no_message(self):
        """
        An ack that came back through carol, replayed by her, is no
        message to alice's application, and changes nothing.
        """
        delivery = self.nodes["alice"].mesh.send_reliable("bob", "delegate_task", {"n": 1})
        self.network.flush()
        self.successResultOf(delivery.delivered())
        [ack] = [obj for obj in self.routed_lines(self.from_bob) if obj["msg_type"] == "ack"]
        for _ in range(2):
            self.raw("carol", "alice", dict(ack, from_peer="carol"))
        self.assertEqual(self.apps("alice", "ack"), [])
        self.assertEqual(self.nodes["alice"].mesh.router.rejected, {})

    def test_malformed_box_counted(self):
        """
        A routed message whose box is not one is refused as malformed, and
        counted so.
        """
        self.nodes["alice"].mesh.send("bob", "delegate_task", {"n": 1})
        self.network.flush()
        [line] = self.routed_lines(self.from_alice)
        self.raw("carol", "bob", dict(line, id="m2", from_peer="carol", sealed="A"))
        self.assertEqual(self.nodes["bob"].mesh.router.rejected, {"malformed": 1})
