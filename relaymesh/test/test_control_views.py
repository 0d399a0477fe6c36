"""
Tests for L{relaymesh.control.views}: the API's views of a node and its
actions on it, against a fake node that offers only L{INode} and a fake
mesh that offers only what the views use of L{IRelayMesh}.
"""

from __future__ import annotations

import dataclasses
import os

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from relaymesh.address import parse_peer_address
from relaymesh.control.requests import ApiError
from relaymesh.control.views import NodeViews
from relaymesh.errors import UnknownPeer
from relaymesh.events import Direction, PeerSessions, PeerState, PeerStatus
from relaymesh.interfaces import INode
from relaymesh.keystore import KeyStore
from relaymesh.test.apisupport import FakeNode
from relaymesh.test.support import EPOCH, make_clock


def connected(peer_id: str, address: str) -> PeerStatus:
    """
    The status of a peer connected inbound since L{EPOCH}.
    """
    return PeerStatus(
        peer_id=peer_id,
        state=PeerState.CONNECTED,
        address=address,
        direction=Direction.INBOUND,
        since=EPOCH,
        last_seen=EPOCH,
        msgs_in=3,
        msgs_out=2,
        bytes_in=300,
        bytes_out=200,
        reconnect_attempt=0,
        next_retry_at=None,
        via=peer_id,
        hops=1,
        encrypted=True,
        mutual=True,
    )


class NodeViewsTests(SynchronousTestCase):
    def setUp(self):
        self.clock = make_clock()
        self.keystore = KeyStore(self.mktemp())
        self.keystore.set_identity("alpha")
        self.node = FakeNode(self.keystore)
        self.mesh = self.node.mesh
        self.rtts = {"beta": 12.5}
        self.views = NodeViews(self.node, self.clock, self.rtts.get, self.clock.seconds())

    def test_fake_is_a_node(self):
        """
        The fake node provides all of L{INode}, so the views need no more.
        """
        self.assertTrue(verifyObject(INode, self.node))

    def test_status(self):
        """
        The status reads the listening address and the dialled count from
        the node, and counts the known and connected peers.
        """
        self.node.listening = "0.0.0.0:9847"
        self.mesh.statuses = [connected("beta", "10.0.0.2:40000")]
        self.node.add_peer("gamma@10.0.0.3:9847")
        self.mesh.session_lists = {"beta": PeerSessions("beta", "w", [], 1.0)}
        self.clock.advance(7.25)
        status = self.views.status("127.0.0.1:9849", 2)
        self.assertEqual(status["listen"], "0.0.0.0:9847")
        self.assertEqual(status["api"], "127.0.0.1:9849")
        self.assertEqual(status["uptime"], 7.25)
        self.assertEqual(status["started_at"], round(EPOCH, 3))
        self.assertEqual(status["peers"], {"known": 2, "connected": 1, "dialled": 1})
        self.assertEqual((status["workers"], status["event_streams"]), (1, 2))
        self.assertEqual(
            (status["identity"], status["heartbeat_interval"], status["max_peers"]),
            ("alpha", 30.0, 8),
        )

    def test_peer_view(self):
        """
        A peer the mesh knows is shown from its status, with its round-trip
        time, and whether it is paired and dialled.
        """
        self.keystore.set_key("beta", os.urandom(32))
        self.mesh.statuses = [connected("beta", "10.0.0.2:40000")]
        view = self.views.peer_view("beta")
        self.assertEqual(
            view,
            {
                "peer_id": "beta",
                "state": "connected",
                "address": "10.0.0.2:40000",
                "direction": "inbound",
                "connected_since": round(EPOCH, 3),
                "state_since": round(EPOCH, 3),
                "last_seen": round(EPOCH, 3),
                "rtt_ms": 12.5,
                "msgs_in": 3,
                "msgs_out": 2,
                "bytes_in": 300,
                "bytes_out": 200,
                "reconnect_attempt": 0,
                "next_retry_at": None,
                "paired": True,
                "dialled": False,
                "via": "beta",
                "hops": 1,
                "encrypted": True,
                "mutual": True,
                "link": "tls",
                "last_error": None,
                "last_error_at": None,
                "dial_address": None,
                "connected_by_dial": False,
                "stored_address": None,
                "address_source": None,
                "address_learned_at": None,
            },
        )

    def test_link(self):
        """
        A peer's link says what protects it: TLS between relaymesh nodes,
        plain and one-way for a claudectl peer, nothing when not connected.
        """
        from relaymesh.control.views import _link

        tls = connected("beta", "10.0.0.2:40000")
        self.assertEqual(_link(tls), "tls")
        self.assertEqual(_link(dataclasses.replace(tls, encrypted=False, mutual=False)), "plain, one-way")
        self.assertIsNone(_link(dataclasses.replace(tls, encrypted=None, mutual=None)))

    def test_learned_peer_id(self):
        """
        A bare address whose peer id the node learned is listed under that
        id: dialled, outbound, at the dialled address.
        """
        self.node.addresses = [
            dataclasses.replace(parse_peer_address("10.0.0.4:9900"), peer_id="delta")
        ]
        [view] = self.views.peer_list()
        self.assertEqual(
            (view["peer_id"], view["state"], view["direction"], view["address"], view["dialled"]),
            ("delta", "disconnected", "outbound", "10.0.0.4:9900", True),
        )
        self.assertIsNone(view["rtt_ms"])

    def test_unknown(self):
        self.assertRaises(UnknownPeer, self.views.peer_view, "nobody")
        self.assertRaises(UnknownPeer, self.views.disconnect, "nobody")

    def test_connect(self):
        """
        Dialling an address the node already dials says so; an address
        without a key is refused.
        """
        self.keystore.set_key("gamma", os.urandom(32))
        first = self.views.connect("gamma@10.0.0.3:9847")
        self.assertEqual(
            first,
            {"addr": "gamma@10.0.0.3:9847", "peer_id": "gamma", "already_dialled": False, "already_connected": False},
        )
        self.assertTrue(self.views.connect("gamma@10.0.0.3:9847")["already_dialled"])
        self.assertEqual(self.node.dialled(), [parse_peer_address("gamma@10.0.0.3:9847")])
        with self.assertRaises(ApiError) as ctx:
            self.views.connect("delta@10.0.0.4:9847")
        self.assertEqual(ctx.exception.status, 400)
        self.assertEqual(len(self.node.dialled()), 1)

    def test_disconnect(self):
        """
        Disconnecting reports whether the peer was connected and dialled,
        and asks the node to stop dialling it.
        """
        self.mesh.statuses = [connected("beta", "10.0.0.2:40000")]
        self.mesh.connected.add("beta")
        self.node.add_peer("beta@10.0.0.2:9847")
        self.assertEqual(
            self.views.disconnect("beta"),
            {"peer_id": "beta", "was_connected": True, "stopped_dialling": True},
        )
        self.assertEqual((self.node.dialled(), self.mesh.connected), ([], set()))

    def test_workers(self):
        self.mesh.session_lists = {
            "gamma": PeerSessions("gamma", None, [], 0.5),
            "beta": PeerSessions("beta", "w-1", [{"id": "s1"}], 1.23456),
        }
        self.assertEqual(
            self.views.workers(),
            [
                {"peer_id": "beta", "worker_id": "w-1", "sessions": [{"id": "s1"}], "age": 1.235},
                {"peer_id": "gamma", "worker_id": None, "sessions": [], "age": 0.5},
            ],
        )
