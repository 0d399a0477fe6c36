"""
Tests for the peer rows of the API (L{relaymesh.control.views}) built from a
real L{relaymesh.registry.Registry}: a row says nothing stale about a peer
(a retry nobody will make, a retry time gone by, a round trip of a link
that is gone) and a failed dial does not erase when the peer was last seen.
"""

from __future__ import annotations

import os
import time

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaymesh.address import parse_peer_address
from relaymesh.control.views import NodeViews
from relaymesh.events import Direction
from relaymesh.keystore import KeyStore
from relaymesh.registry import Registry
from relaymesh.test.apisupport import FakeNode
from relaymesh.test.realtime import free_port, loopback_node, wait_for
from relaymesh.test.support import EPOCH, make_clock

PEER = "beta"
ADDRESS = "127.0.0.1:19860"


class PeerRowTests(SynchronousTestCase):
    """
    The row of a paired peer whose dials fail, read through the views from
    the snapshots of a real registry.
    """

    def setUp(self):
        self.clock = make_clock()
        self.keystore = KeyStore(self.mktemp())
        self.keystore.set_identity("alpha")
        self.keystore.set_key(PEER, os.urandom(32))
        self.node = FakeNode(self.keystore)
        self.registry = Registry("alpha", self.clock, max_peers=8, fresh_for=30.0)
        self.rtts = {PEER: 12.5}
        self.views = NodeViews(self.node, self.clock, self.rtts.get, self.clock.seconds())
        self.address = parse_peer_address(f"{PEER}@{ADDRESS}")
        self.node.add_peer(self.address)

    def row(self):
        self.node.mesh.statuses = self.registry.statuses({})
        return self.views.peer_view(PEER)

    def fail_twice(self):
        """
        Two dials of the peer fail; the third is scheduled 10 s away.
        """
        for attempt in (1, 2):
            self.registry.peer_connecting(PEER, ADDRESS)
            self.registry.failed(PEER, "connection refused")
            self.registry.reconnect_scheduled(PEER, ADDRESS, attempt, 10.0)

    def test_retry_shown_while_dialled(self):
        """
        While the peer is dialled, its row shows the attempt and when the
        next one comes.
        """
        self.fail_twice()
        row = self.row()
        self.assertEqual(row["reconnect_attempt"], 2)
        self.assertEqual(row["next_retry_at"], round(EPOCH + 10.0, 3))

    def test_no_retry_once_not_dialled(self):
        """
        Once nothing dials the peer (C{disconnect}), its row shows no
        attempt and no next retry.
        """
        self.fail_twice()
        self.node.remove_peer(PEER)
        row = self.row()
        self.assertEqual((row["dialled"], row["reconnect_attempt"], row["next_retry_at"]), (False, 0, None))

    def test_past_retry_not_shown(self):
        """
        A next retry whose time has passed is not shown (the dial it was
        is under way, or done).
        """
        self.fail_twice()
        self.clock.advance(11.0)
        self.assertIsNone(self.row()["next_retry_at"])

    def test_dial_clears_next_retry(self):
        """
        The dial a scheduled retry makes clears the peer's next retry in the
        registry: it is happening.
        """
        self.fail_twice()
        self.clock.advance(10.0)
        self.registry.peer_connecting(PEER, ADDRESS)
        [status] = self.registry.statuses({})
        self.assertIsNone(status.next_retry_at)
        self.assertEqual(status.reconnect_attempt, 2)

    def test_failed_dial_keeps_last_seen(self):
        """
        A peer last seen in an earlier run (its key store metadata says when)
        is still shown as seen then after a dial of it failed in this run.
        """
        seen = int((EPOCH - 60) * 1000)
        self.keystore.update_meta(PEER, last_seen=seen)
        self.assertEqual(self.row()["last_seen"], seen / 1000)
        self.fail_twice()
        row = self.row()
        self.assertEqual(row["state"], "disconnected")
        self.assertEqual(row["last_seen"], seen / 1000)

    def test_last_seen_of_this_run_wins(self):
        """
        A peer the registry saw in this run is shown as last seen then, not
        at the older time of its metadata.
        """
        self.keystore.update_meta(PEER, last_seen=int((EPOCH - 3600) * 1000))
        self.registry.peer_connecting(PEER, ADDRESS)
        record = self.registry.record(PEER)
        record.last_seen = EPOCH - 5
        self.assertEqual(self.row()["last_seen"], round(EPOCH - 5, 3))

    def test_unreadable_meta_last_seen(self):
        """
        A C{last_seen} in the metadata that is no number of milliseconds is
        not shown; the row still is.
        """
        self.keystore.update_meta(PEER, last_seen="yesterday")
        self.fail_twice()
        self.assertIsNone(self.row()["last_seen"])

    def test_no_rtt_while_disconnected(self):
        """
        A peer that is not connected has no round-trip time in its row,
        even though one was measured on its former link.
        """
        self.fail_twice()
        self.assertIsNone(self.row()["rtt_ms"])

    def test_rtt_while_connected(self):
        """
        A connected peer's row has its latest round-trip time.
        """
        record = self.registry.record(PEER)
        record.state = "connected"
        record.direction = Direction.OUTBOUND
        record.since = EPOCH
        self.assertEqual(self.row()["rtt_ms"], 12.5)


class LiveNodeRowTests(TestCase):
    """
    The same rows from running nodes on loopback: beta dials alpha.
    """

    timeout = 40

    def make_beta(self, alpha_address: str):
        beta = loopback_node(self, "beta", [f"alpha@{alpha_address}"], start=False)
        beta.keystore.set_key("alpha", self.key)
        return beta

    def row(self, node, peer_id: str = "alpha"):
        return node.api.control.views.peer_view(peer_id)

    def setUp(self):
        self.key = os.urandom(32)

    @defer.inlineCallbacks
    def test_disconnect_clears_retry(self):
        """
        After alpha goes away, beta's dials of it fail and are retried; once
        C{disconnect} stops them, alpha's row has no attempt, no retry time
        and no round trip, and still says when alpha was last seen.
        """
        alpha = loopback_node(self, "alpha")
        alpha.keystore.set_key("beta", self.key)
        beta = self.make_beta(f"127.0.0.1:{alpha.listener.port.getHost().port}")
        beta.startService()
        yield wait_for(lambda: beta.mesh.is_connected("alpha"), 10, what="beta connected to alpha")
        yield alpha.stopService()
        yield wait_for(
            lambda: self.row(beta)["last_error"] is not None and self.row(beta)["reconnect_attempt"] >= 1,
            30,
            what="a failed dial of alpha",
        )
        row = self.row(beta)
        self.assertIsNotNone(row["last_seen"])
        beta.api.control.views.disconnect("alpha")
        after = self.row(beta)
        self.assertEqual(
            (after["dialled"], after["reconnect_attempt"], after["next_retry_at"], after["rtt_ms"]),
            (False, 0, None, None),
        )
        self.assertEqual(after["last_seen"], row["last_seen"])

    @defer.inlineCallbacks
    def test_restart_failed_dial_keeps_last_seen(self):
        """
        A node that starts and fails to dial a peer it saw in an earlier run
        still shows when it last saw it.
        """
        beta = self.make_beta(f"127.0.0.1:{free_port()}")
        seen = int((time.time() - 60) * 1000)
        beta.keystore.update_meta("alpha", last_seen=seen)
        beta.startService()
        yield wait_for(lambda: self.row(beta)["last_error"] is not None, 10, what="a failed dial of alpha")
        self.assertEqual(self.row(beta)["last_seen"], seen / 1000)
