"""
Tests for L{relaymesh.reliable.outbox}: reliable messages between nodes that
announce C{ack/1}, in memory, with a L{task.Clock} and an in-memory store.
"""

import json

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from relaymesh.handshake.proofs import DEFAULT_CAPABILITIES
from relaymesh.mesh import (
    DeliveryTimeout,
    ReliableUnsupported,
    UnknownPeer,
    UnsupportedMessageType,
)
from relaymesh.reliable.errors import OutboxFull
from relaymesh.reliable.fields import ACK_CAPABILITY
from relaymesh.reliable.outbox import (
    DEFAULT_DELIVERY_TIMEOUT,
    DEFAULT_RESEND_AFTER,
    DEFAULT_SCAN_INTERVAL,
    MAX_QUEUED_PER_PEER,
    Delivery,
    ReliableDelivery,
)
from relaymesh.reliable.store import StoreClosed, StoreError
from relaymesh.test.support import Node, ReliableTestCase, connect, make_clock, pair_keys, record
from relaymesh.testing import MemoryStore

TASK = {"task_id": "t1", "prompt": "hello", "cwd": "/tmp"}


def lines(transport) -> list[dict]:
    """
    The JSON objects written to an in-memory transport since the test
    started recording it (before TLS), without taking them.
    """
    data = b"".join(transport.recorded)
    return [json.loads(line) for line in data.split(b"\n") if line]


class CapabilityTests(ReliableTestCase):
    def test_announced(self):
        """
        A node with an outbox announces C{ack/1} besides the defaults.
        """
        self.assertEqual(self.alpha.mesh.capabilities, DEFAULT_CAPABILITIES + (ACK_CAPABILITY,))
        server, client, _ = self.link
        self.assertIn(ACK_CAPABILITY, server.handshake.peer_capabilities)
        self.assertIn(ACK_CAPABILITY, client.handshake.peer_capabilities)

    def test_not_announced_without_outbox(self):
        """
        Without an outbox a node announces only the defaults, and refuses
        reliable sends.
        """
        plain = Node("plain", self.clock)
        self.assertEqual(plain.mesh.capabilities, DEFAULT_CAPABILITIES)
        self.assertRaises(ReliableUnsupported, plain.mesh.send_reliable, "alpha", "delegate_task", TASK)

    def test_peer_without_ack(self):
        """
        A peer that did not announce C{ack/1} gets no reliable message: the
        send is refused before anything is written or stored.
        """
        gamma = Node("gamma", self.clock)
        pair_keys(self.alpha, gamma)
        link = connect(self.alpha, gamma, host="10.0.0.3")
        record(link)
        self.assertRaises(
            ReliableUnsupported, self.alpha.mesh.send_reliable, "gamma", "delegate_task", TASK
        )
        self.assertEqual(lines(link[0].transport), [])
        self.assertEqual(self.alpha.store.outbox, {})

    def test_refused_types_and_peers(self):
        self.assertRaises(UnknownPeer, self.alpha.mesh.send_reliable, "nobody", "delegate_task", TASK)
        for msg_type in ("heartbeat", "ack"):
            self.assertRaises(ReliableUnsupported, self.alpha.mesh.send_reliable, "beta", msg_type, {})
        self.assertRaises(
            UnsupportedMessageType, self.alpha.mesh.send_reliable, "beta", "handshake", {}
        )

    def test_plain_send_unchanged(self):
        """
        An ordinary send to an C{ack/1} peer carries no extra field.
        """
        self.alpha.mesh.send("beta", "task_status", {"task_id": "t1"})
        [sent] = lines(self.link[0].transport)
        self.assertEqual(list(sent), ["id", "msg_type", "from_peer", "timestamp", "payload"])


class DeliveryTests(ReliableTestCase):
    def test_delivered_once_and_acknowledged(self):
        """
        The message is stored, then written with C{"reliable": true}; the
        receiver delivers it and answers an C{ack} naming it, which empties
        the outbox and fires C{delivered()}; the ack is not an application
        message.
        """
        delivery = self.alpha.mesh.send_reliable("beta", "delegate_task", TASK)
        self.assertIsInstance(delivery, Delivery)
        self.assertEqual(self.successResultOf(delivery.accepted()), delivery.msg_id)
        self.assertEqual(list(self.alpha.store.outbox), [delivery.msg_id])
        [sent] = lines(self.link[0].transport)
        self.assertIs(sent["reliable"], True)
        self.assertEqual(sent["id"], delivery.msg_id)
        done = delivery.delivered()
        self.assertNoResult(done)

        self.flush()
        [got] = self.tasks(self.beta)
        self.assertEqual((got.id, got.payload), (delivery.msg_id, TASK))
        self.assertEqual(self.beta.store.delivered, {("alpha", delivery.msg_id)})
        self.assertEqual(self.successResultOf(done), delivery.msg_id)
        self.assertEqual(self.alpha.store.outbox, {})
        self.assertEqual([m for _, m in self.alpha.received if m.msg_type == "ack"], [])
        self.assertEqual(self.successResultOf(delivery.delivered()), delivery.msg_id)

    def test_duplicate_acknowledged_not_delivered(self):
        """
        A reliable message that comes again (its ack was lost) is
        acknowledged again but not delivered again.
        """
        delivery = self.alpha.mesh.send_reliable("beta", "delegate_task", TASK)
        raw = b"".join(self.link[0].transport.recorded)
        self.flush()
        self.link[1].dataReceived(raw)
        self.assertEqual(len(self.tasks(self.beta)), 1)
        acks = [m for m in lines(self.link[1].transport) if m["msg_type"] == "ack"]
        self.assertEqual(acks[0]["payload"], {"ack_id": delivery.msg_id})

    def test_unknown_ack_goes_to_the_application(self):
        """
        An C{ack} that names no message in the outbox is an application
        message, as before.
        """
        self.beta.mesh.send("alpha", "ack", {"ack_id": "msg_1_2_x"})
        self.flush()
        [(peer, ack)] = [(p, m) for p, m in self.alpha.received if m.msg_type == "ack"]
        self.assertEqual((peer, ack.payload), ("beta", {"ack_id": "msg_1_2_x"}))

    def test_ack_from_another_peer_ignored(self):
        """
        Only the destination can acknowledge a message.
        """
        gamma = Node("gamma", self.clock, store=MemoryStore())
        pair_keys(self.alpha, gamma)
        connect(self.alpha, gamma, host="10.0.0.3")
        delivery = self.alpha.mesh.send_reliable("beta", "delegate_task", TASK)
        gamma.mesh.send("alpha", "ack", {"ack_id": delivery.msg_id})
        self.assertNoResult(delivery.delivered())
        self.assertIn(delivery.msg_id, self.alpha.store.outbox)

    def test_sent_after_reconnection(self):
        """
        A message whose connection dropped before its ack is sent again when
        the peer reconnects, and delivered once.
        """
        delivery = self.alpha.mesh.send_reliable("beta", "delegate_task", TASK)
        self.reconnect()
        self.flush()
        self.assertEqual(len(self.tasks(self.beta)), 1)
        self.successResultOf(delivery.delivered())
        self.assertEqual(self.alpha.store.outbox, {})

    def test_lost_ack(self):
        """
        The message arrives but its ack is lost with the connection: after
        reconnecting it is sent again, acknowledged, and not delivered twice.
        """
        delivery = self.alpha.mesh.send_reliable("beta", "delegate_task", TASK)
        server, client, pump = self.link
        client.dataReceived(b"".join(server.transport.recorded))
        self.assertEqual(len(self.tasks(self.beta)), 1)
        self.reconnect()
        self.flush()
        self.assertEqual(len(self.tasks(self.beta)), 1)
        self.successResultOf(delivery.delivered())

    def test_queued_while_disconnected(self):
        """
        A message for an C{ack/1} peer that is not connected now waits in the
        outbox and goes out when it reconnects.
        """
        server, _, pump = self.link
        server.close("closed by the test")
        pump.flush()
        delivery = self.alpha.mesh.send_reliable("beta", "delegate_task", TASK)
        self.successResultOf(delivery.accepted())
        self.link = connect(self.alpha, self.beta)
        self.flush()
        self.assertEqual(len(self.tasks(self.beta)), 1)
        self.successResultOf(delivery.delivered())

    def test_order_kept_across_reconnection(self):
        """
        Messages sent again after a reconnection go out oldest first.
        """
        ids = [self.alpha.mesh.send_reliable("beta", "delegate_task", {"n": n}).msg_id for n in range(5)]
        self.reconnect()
        self.flush()
        self.assertEqual([m.id for m in self.tasks(self.beta)], ids)

    def test_resent_when_overdue(self):
        """
        A message whose ack has not come after the resend delay is sent again
        on the same connection by the outbox scan.
        """
        refusing: list[Deferred] = []

        def refuse_once(origin, msg_id, now):
            self.beta.store.mark_delivered = original
            d = Deferred()
            refusing.append(d)
            return d

        original = self.beta.store.mark_delivered
        self.beta.store.mark_delivered = refuse_once
        delivery = self.alpha.mesh.send_reliable("beta", "delegate_task", TASK)
        self.flush()
        refusing[0].errback(StoreError("disk full"))
        self.assertEqual(self.tasks(self.beta), [])
        self.clock.advance(DEFAULT_RESEND_AFTER - DEFAULT_SCAN_INTERVAL)
        self.flush()
        self.assertNoResult(delivery.delivered())
        self.clock.advance(DEFAULT_SCAN_INTERVAL)
        self.flush()
        self.assertEqual(len(self.tasks(self.beta)), 1)
        self.successResultOf(delivery.delivered())
        self.assertEqual(self.alpha.store.outbox, {})

    def test_timeout(self):
        """
        A message not acknowledged by its deadline is given up: removed from
        the outbox, C{delivered()} fails with L{DeliveryTimeout}.
        """
        self.beta.store.close()  # beta can record nothing, so acks nothing
        delivery = self.alpha.mesh.send_reliable("beta", "delegate_task", TASK)
        done = delivery.delivered()
        self.flush()
        self.clock.advance(DEFAULT_DELIVERY_TIMEOUT - 1)
        self.flush()
        self.assertNoResult(done)
        self.clock.advance(DEFAULT_SCAN_INTERVAL)
        self.failureResultOf(done, DeliveryTimeout)
        self.failureResultOf(delivery.delivered(), DeliveryTimeout)
        self.assertEqual(self.alpha.store.outbox, {})
        self.assertEqual(self.tasks(self.beta), [])
        self.flushLoggedErrors()

    def test_store_refuses(self):
        """
        A message the outbox cannot take is neither written nor delivered;
        both Deferreds fail with the store's error.
        """
        self.alpha.store.close()
        delivery = self.alpha.mesh.send_reliable("beta", "delegate_task", TASK)
        self.failureResultOf(delivery.accepted(), StoreClosed)
        self.failureResultOf(delivery.delivered(), StoreClosed)
        self.assertEqual(lines(self.link[0].transport), [])

    def test_outbox_full(self):
        """
        At most C{max_queued} messages wait for one destination: the next
        one is refused with L{OutboxFull}, naming the limit, and nothing is
        written; once one is acknowledged there is room again. Other
        destinations are not affected.
        """
        self.alpha.reliable.max_queued = 2
        gamma = Node("gamma", self.clock, store=MemoryStore())
        pair_keys(self.alpha, gamma)
        first = [self.alpha.mesh.send_reliable("beta", "delegate_task", TASK) for _ in range(2)]
        written = len(lines(self.link[0].transport))
        refused = self.alpha.mesh.send_reliable("beta", "delegate_task", TASK)
        e = self.failureResultOf(refused.accepted(), OutboxFull).value
        self.assertIn("at most 2", str(e))
        self.failureResultOf(refused.delivered(), OutboxFull)
        self.assertEqual(len(lines(self.link[0].transport)), written)
        self.assertEqual(len(self.alpha.store.outbox), 2)
        self.successResultOf(self.alpha.mesh.send_reliable("gamma", "delegate_task", TASK).accepted())
        self.flush()
        for delivery in first:
            self.successResultOf(delivery.delivered())
        self.successResultOf(self.alpha.mesh.send_reliable("beta", "delegate_task", TASK).accepted())
        self.assertEqual(MAX_QUEUED_PER_PEER, 1000)

    def test_long_id_refused(self):
        """
        A reliable message whose id is longer than 128 characters is
        neither recorded, delivered nor acknowledged, with a log line.
        """
        fields = self.beta.mesh.message("delegate_task", TASK).to_dict()
        fields["id"] = "m" * 129
        fields["reliable"] = True
        self.link[0].dataReceived(json.dumps(fields).encode() + b"\n")
        self.assertEqual(self.alpha.store.delivered, set())
        self.assertEqual(self.tasks(self.alpha), [])
        self.assertEqual(lines(self.link[0].transport), [])
        fields["id"] = "m" * 128
        self.link[0].dataReceived(json.dumps(fields).encode() + b"\n")
        self.assertEqual(len(self.tasks(self.alpha)), 1)

    def test_paired_peer_not_yet_connected(self):
        """
        A paired peer that has not connected since the node started takes
        reliable messages: they wait until it connects.
        """
        gamma = Node("gamma", self.clock, store=MemoryStore())
        pair_keys(self.alpha, gamma)
        delivery = self.alpha.mesh.send_reliable("gamma", "delegate_task", TASK)
        self.successResultOf(delivery.accepted())
        self.clock.advance(DEFAULT_RESEND_AFTER + DEFAULT_SCAN_INTERVAL)
        server, _, pump = connect(self.alpha, gamma, host="10.0.0.5")
        pump.flush()
        self.successResultOf(delivery.delivered())
        self.assertEqual(len(self.tasks(gamma)), 1)

    def test_outbox_survives_restart(self):
        """
        A node started on an outbox with entries from an earlier run sends
        them when their peer connects; the ack empties the outbox.
        """
        store = MemoryStore()
        first = Node("alpha", self.clock, store=store, certificate=self.alpha.certificate)
        pair_keys(first, self.beta)
        server, _, pump = connect(first, self.beta, host="10.0.0.4")
        server.close("closed by the test")
        pump.flush()
        msg_id = first.mesh.send_reliable("beta", "delegate_task", TASK).msg_id
        first.reliable.stop()

        again = Node("alpha", self.clock, store=store, certificate=self.alpha.certificate)
        pair_keys(again, self.beta)
        self.assertEqual([e.msg_id for e in again.reliable.pending()], [msg_id])
        _, _, pump = connect(again, self.beta, host="10.0.0.4")
        pump.flush()
        self.assertEqual([m.id for m in self.tasks(self.beta)], [msg_id])
        self.assertEqual(store.outbox, {})

    def test_reliable_message_from_unflagged_path(self):
        """
        A reliable message's C{heartbeat} flag is ignored: heartbeats are
        never recorded or acknowledged.
        """
        heartbeat = self.beta.mesh.message("heartbeat", {})
        fields = heartbeat.to_dict()
        fields["reliable"] = True
        self.link[0].dataReceived(json.dumps(fields).encode() + b"\n")
        self.assertEqual(self.alpha.store.delivered, set())
        self.assertEqual([m for m in lines(self.link[0].transport) if m["msg_type"] == "ack"], [])


class ScanTests(SynchronousTestCase):
    def test_one_timer(self):
        """
        The outbox is scanned by one looping call, whatever its size.
        """
        clock = make_clock()
        node = Node("alpha", clock, store=MemoryStore())
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertIsInstance(node.reliable, ReliableDelivery)
        node.reliable.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
