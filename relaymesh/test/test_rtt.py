"""
Tests for honest round-trip times (L{relaymesh.pings}): a C{ping} each
heartbeat interval to every peer that announced C{ping/1}, answered by a
C{pong}, timed with the injected clock; never a claudectl peer, never a
queued message's wait, and never a message an application sees.
"""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import SynchronousTestCase

from relaymesh.control.metrics import NodeMetrics
from relaymesh.handshake.proofs import CAP_PING
from relaymesh.pings import PING_ID_FIELD
from relaymesh.test.support import (
    Node,
    ReliableTestCase,
    accepted,
    connect,
    line,
    make_clock,
    pair_keys,
    written,
)
from relaymesh.testing import MemoryStore
from relaymesh.wire import RelayMessage

INTERVAL = 30.0


def lines(transport) -> list[dict]:
    """
    The JSON objects an end of a memory link wrote (before TLS) since its
    recording started.
    """
    data = b"".join(transport.recorded)
    return [json.loads(raw) for raw in data.split(b"\n") if raw]


class Held:
    """
    Holds what a memory link carries until L{release}: time passes while
    the bytes are on the wire.
    """

    def __init__(self, link) -> None:
        self.connection = link[0].transport.link
        self.connection.pump = lambda: None  # an instance attribute hides the method

    def release(self) -> None:
        del self.connection.pump
        self.connection.changed()


class RoundTripTestCase(SynchronousTestCase):
    """
    alpha (with metrics) accepts beta, both relaymesh nodes, in memory.
    """

    def setUp(self):
        self.clock = make_clock()
        self.alpha = Node("alpha", self.clock, heartbeat_interval=INTERVAL)
        self.beta = Node("beta", self.clock, heartbeat_interval=INTERVAL)
        self.metrics = NodeMetrics(self.alpha.mesh, self.clock)
        self.addCleanup(self.metrics.stop)
        pair_keys(self.alpha, self.beta)
        self.link = connect(self.alpha, self.beta)
        for protocol in self.link[:2]:
            protocol.transport.recorded = []
        for node in (self.alpha, self.beta):
            node.mesh.start()
            self.addCleanup(node.mesh.stop)

    def sample(self, name: str, **labels) -> float | None:
        self.metrics.refresh()
        value: float | None = self.metrics.registry.get_sample_value(name, labels)
        return value

    def to_next_heartbeat(self) -> None:
        self.clock.advance(INTERVAL)


class PingPongTests(RoundTripTestCase):
    def test_announced(self):
        """
        Both relaymesh nodes announce C{ping/1} inside TLS, and each learns
        the other's.
        """
        server, client, _ = self.link
        self.assertIn(CAP_PING, self.alpha.mesh.capabilities)
        self.assertIn(CAP_PING, server.outcome.capabilities)
        self.assertIn(CAP_PING, client.outcome.capabilities)

    def test_rtt_is_the_clock_advance(self):
        """
        The round trip is the time from the ping to its pong: here the
        clock advance while the bytes were held on the link.
        """
        self.assertIsNone(self.metrics.round_trips.rtt_ms("beta"))
        held = Held(self.link)
        self.to_next_heartbeat()
        self.clock.advance(0.012)
        held.release()
        self.clock.flush()
        self.assertAlmostEqual(self.metrics.round_trips.last["beta"], 0.012, places=6)
        self.assertEqual(self.metrics.round_trips.rtt_ms("beta"), 12.0)
        self.assertAlmostEqual(self.alpha.mesh.registry.records["beta"].rtt, 0.012, places=6)
        self.assertEqual(self.sample("relaymesh_rtt_seconds_count", peer="beta"), 1)
        self.assertEqual(self.sample("relaymesh_rtt_seconds_bucket", peer="beta", le="0.025"), 1)
        self.assertEqual(self.sample("relaymesh_rtt_seconds_bucket", peer="beta", le="0.01"), 0)
        # beta measured alpha the same way
        self.assertAlmostEqual(self.beta.mesh.registry.records["alpha"].rtt, 0.012, places=6)

    def test_every_interval(self):
        """
        A new sample each heartbeat interval; on a link where nothing is
        held, the memory network answers within the same instant.
        """
        samples = []
        self.metrics.round_trips.observe(lambda peer, seconds: samples.append((peer, seconds)))
        for _ in range(3):
            self.to_next_heartbeat()
        self.assertEqual(samples, [("beta", 0.0)] * 3)
        self.assertEqual(self.sample("relaymesh_rtt_seconds_count", peer="beta"), 3)

    def test_wire(self):
        """
        The ping goes before the heartbeat; the pong names it; neither is
        more than the five fields.
        """
        self.to_next_heartbeat()
        server, client, _ = self.link
        sent = lines(server.transport)
        self.assertEqual([m["msg_type"] for m in sent][:2], ["ping", "heartbeat"])
        ping = sent[0]
        self.assertEqual((ping["from_peer"], ping["payload"]), ("alpha", {}))
        answers = [m for m in lines(client.transport) if m["msg_type"] == "pong"]
        self.assertIn({PING_ID_FIELD: ping["id"]}, [m["payload"] for m in answers])
        for message in sent + lines(client.transport):
            self.assertEqual(list(message), ["id", "msg_type", "from_peer", "timestamp", "payload"])

    def test_never_delivered(self):
        """
        Pings and pongs reach no subscriber, no delivered-messages counter,
        and no deduplication window (an idle peer keeps none).
        """
        for _ in range(2):
            self.to_next_heartbeat()
        for node in (self.alpha, self.beta):
            self.assertEqual({m.msg_type for _, m in node.received}, {"heartbeat"})
        self.assertEqual({t for _, t in self.metrics.delivered}, {"heartbeat"})
        self.assertIsNone(self.alpha.mesh.registry.records["beta"].recent)
        self.assertIn("ping", self.alpha.mesh.peer("beta").by_type)

    def test_late_or_foreign_pong(self):
        """
        A pong that names no ping of ours, or one already forgotten, is not
        timed and goes no further.
        """
        server, client, _ = self.link
        for payload in [{PING_ID_FIELD: "msg_1_2_3"}, {}, [], {PING_ID_FIELD: 7}]:
            client.sendMessage(self.beta.mesh.message("pong", payload))
        self.clock.flush()
        held = Held(self.link)
        self.to_next_heartbeat()
        self.assertTrue(server.ping(self.alpha.mesh.registry.round_trip))  # forgets the first
        held.release()
        self.clock.flush()
        self.assertEqual(self.metrics.round_trips.last, {"beta": 0.0})
        self.assertEqual(self.sample("relaymesh_rtt_seconds_count", peer="beta"), 1)
        self.assertEqual([m for _, m in self.alpha.received if m.msg_type == "pong"], [])

    def test_not_answered_when_the_buffer_is_full(self):
        """
        A node whose send buffer to the pinger is full does not answer: the
        pong would wait in its queue.
        """
        server, client, _ = self.link
        client.pauseProducing()
        self.to_next_heartbeat()
        self.assertEqual(self.metrics.round_trips.last, {})
        self.assertNotIn("pong", [m["msg_type"] for m in lines(client.transport)])


class QueuedTests(RoundTripTestCase):
    def test_no_ping_behind_a_full_buffer(self):
        """
        While the transport has paused the connection (its send buffer is
        full), no ping is sent: it would be timed with its wait.
        """
        server, client, _ = self.link
        server.pauseProducing()
        self.to_next_heartbeat()
        self.assertNotIn("ping", [m["msg_type"] for m in lines(server.transport)])
        self.assertFalse(server.ping(self.alpha.mesh.registry.round_trip))
        server.resumeProducing()
        self.assertEqual(self.metrics.round_trips.last, {})
        self.to_next_heartbeat()
        self.assertEqual(self.metrics.round_trips.last, {"beta": 0.0})

    def test_no_ping_inside_a_batch(self):
        """
        Inside a write batch a ping would wait for the batch's end behind
        the lines before it: none is sent.
        """
        server, client, _ = self.link
        with self.alpha.mesh.batch():
            self.alpha.mesh.send("beta", "task_status", {})
            self.assertFalse(server.ping(self.alpha.mesh.registry.round_trip))
        self.clock.flush()
        self.assertEqual(self.metrics.round_trips.last, {})

    def test_queued_reliable_message_not_timed(self):
        """
        A reliable message that waited in the outbox while its peer was away
        is acknowledged when the peer comes back; the ack gives no round
        trip (only pings do), and is no application message.
        """
        clock = make_clock()
        alpha = Node("alpha", clock, store=MemoryStore())
        beta = Node("beta", clock, store=MemoryStore())
        metrics = NodeMetrics(alpha.mesh, clock)
        self.addCleanup(metrics.stop)
        pair_keys(alpha, beta)
        link = connect(alpha, beta)
        link[0].transport.link.cut()
        clock.flush()
        delivery = alpha.mesh.send_reliable("beta", "delegate_task", {"task_id": "t"})
        done = []
        delivery.delivered().addCallback(done.append)
        clock.advance(1.416)
        connect(alpha, beta)
        self.assertEqual(done, [delivery.msg_id])
        self.assertEqual(metrics.round_trips.last, {})
        self.assertIsNone(metrics.round_trips.rtt_ms("beta"))
        self.assertEqual([m.msg_type for _, m in alpha.received], [])


class ClaudectlPeerTests(SynchronousTestCase):
    def test_never_pinged(self):
        """
        A claudectl peer (legacy, in clear) announces nothing: it gets
        exactly the heartbeats it got before, never a ping, and has no
        round-trip time; a ping it sent would be dropped unanswered.
        """
        clock = make_clock()
        alpha = Node("alpha", clock, heartbeat_interval=INTERVAL)
        metrics = NodeMetrics(alpha.mesh, clock)
        self.addCleanup(metrics.stop)
        key = os.urandom(32)
        alpha.keys.keys["claude-1"] = key
        protocol, transport = accepted(alpha, "claude-1", key)
        transport.clear()
        alpha.mesh.start()
        self.addCleanup(alpha.mesh.stop)
        clock.advance(INTERVAL)
        self.assertEqual([m.msg_type for m in written(transport)], ["heartbeat"])
        protocol.dataReceived(line(RelayMessage("p1", "ping", "claude-1", 1, {})))
        self.assertEqual(written(transport), [])
        self.assertFalse(protocol.ping(alpha.mesh.registry.round_trip))
        self.assertEqual(written(transport), [])
        self.assertIsNone(metrics.round_trips.rtt_ms("claude-1"))
        self.assertEqual([m.msg_type for _, m in alpha.received], [])


class AckLeakTests(ReliableTestCase):
    """
    Acks that the outbox takes never reach an application (alpha accepts
    beta, both with an outbox).
    """

    def test_duplicate_ack_not_delivered(self):
        """
        A message sent again before its ack came is acknowledged twice by
        the receiver (it delivers it once); the second ack, for a message
        already settled, is taken by the outbox, not handed to the
        application (C{watch} once printed it as a message).
        """
        held = Held(self.link)
        delivery = self.alpha.mesh.send_reliable("beta", "delegate_task", {"task_id": "t"})
        self.clock.advance(self.alpha.reliable.resend_after + self.alpha.reliable.scan_interval)
        server, client, _ = self.link
        self.assertEqual(self.alpha.reliable.pending()[0].msg_id, delivery.msg_id)
        held.release()
        self.clock.flush()
        self.assertEqual(self.alpha.reliable.pending(), [])
        self.assertEqual([m.msg_type for _, m in self.beta.received], ["delegate_task"])
        acks = [m for m in lines_of(client) if m["msg_type"] == "ack"]
        self.assertEqual(len(acks), 2)  # the duplicate ack was sent
        self.assertEqual([m.msg_type for _, m in self.alpha.received], [])

    def test_late_ack_of_a_given_up_message(self):
        """
        An ack that comes after the message was given up is taken too.
        """
        self.alpha.reliable.delivery_timeout = 10.0  # within the idle timeout
        held = Held(self.link)
        delivery = self.alpha.mesh.send_reliable("beta", "delegate_task", {"task_id": "t"})
        failures = []
        delivery.delivered().addErrback(failures.append)
        self.clock.advance(self.alpha.reliable.delivery_timeout + self.alpha.reliable.scan_interval)
        self.assertEqual(len(failures), 1)
        held.release()
        self.clock.flush()
        self.assertEqual([m.msg_type for _, m in self.beta.received], ["delegate_task"])
        self.assertEqual([m.msg_type for _, m in self.alpha.received], [])

    def test_application_ack_still_delivered(self):
        """
        An ack that names no reliable message of this node is an
        application's: it is delivered as before.
        """
        self.beta.mesh.send("alpha", "ack", {"ack_id": "msg_1_2_other"})
        self.clock.flush()
        self.assertEqual([m.payload for _, m in self.alpha.received], [{"ack_id": "msg_1_2_other"}])


def lines_of(protocol) -> list[dict]:
    """
    What one end of a memory link wrote since the test began recording it.
    """
    return lines(protocol.transport)
