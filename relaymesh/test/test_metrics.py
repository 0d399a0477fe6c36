"""
Tests for L{relaymesh.control.metrics}: a registry per node, numbers read from the
mesh at scrape time, counters fed by its events, honest round-trip times,
and C{/metrics} over HTTP through C{prometheus_client}'s Twisted resource.
"""

from __future__ import annotations

import os

import prometheus_client
from prometheus_client import generate_latest
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaymesh.control.metrics import NodeMetrics, RoundTrips
from relaymesh.test.apisupport import TOKEN, ApiHarness
from relaymesh.test.support import Node, connect, line, make_clock, pair_keys


class MetricsTestCase(SynchronousTestCase):
    """
    alpha (with metrics) accepts beta, in memory.
    """

    def setUp(self):
        self.clock = make_clock()
        self.alpha = Node("alpha", self.clock)
        self.beta = Node("beta", self.clock)
        self.metrics = NodeMetrics(self.alpha.mesh, self.clock)
        self.addCleanup(self.metrics.stop)

    def sample(self, name: str, **labels) -> float | None:
        self.metrics.refresh()
        value: float | None = self.metrics.registry.get_sample_value(name, labels)
        return value

    def join(self):
        pair_keys(self.alpha, self.beta)
        self.link = connect(self.alpha, self.beta)
        return self.link


class RegistryTests(MetricsTestCase):
    def test_own_registry(self):
        """
        Each node has its own registry; the global one gets nothing.
        """
        other = NodeMetrics(self.beta.mesh, self.clock)
        self.addCleanup(other.stop)
        self.assertIsNot(self.metrics.registry, other.registry)
        self.assertEqual(self.sample("relaymesh_node_info", identity="alpha", version=prometheus_version()), 1)
        other.refresh()
        self.assertEqual(other.registry.get_sample_value("relaymesh_node_info", {"identity": "beta", "version": prometheus_version()}), 1)
        self.assertNotIn(b"relaymesh_", generate_latest(prometheus_client.REGISTRY))

    def test_uptime(self):
        self.clock.advance(42)
        self.assertEqual(self.sample("relaymesh_uptime_seconds"), 42)


def prometheus_version() -> str:
    from relaymesh._version import __version__

    return __version__


class ScrapeTimeTests(MetricsTestCase):
    def test_peers_and_traffic(self):
        """
        Connected peers, and messages and bytes per peer and direction, are
        the mesh's own counters as of the scrape.
        """
        self.assertEqual(self.sample("relaymesh_peers_connected"), 0)
        server, client, pump = self.join()
        self.beta.mesh.send("alpha", "task_status", {"n": 1})
        pump.flush()
        status = self.alpha.mesh.peer("beta")
        self.assertEqual(self.sample("relaymesh_peers_connected"), 1)
        self.assertEqual(self.sample("relaymesh_peer_up", peer="beta"), 1)
        self.assertEqual(self.sample("relaymesh_messages_total", peer="beta", direction="in"), status.msgs_in)
        self.assertEqual(self.sample("relaymesh_messages_total", peer="beta", direction="out"), status.msgs_out)
        self.assertEqual(self.sample("relaymesh_bytes_total", peer="beta", direction="in"), status.bytes_in)
        self.assertEqual(self.sample("relaymesh_bytes_total", peer="beta", direction="out"), status.bytes_out)
        server.close("closed by the test")
        pump.flush()
        self.assertEqual(self.sample("relaymesh_peers_connected"), 0)
        self.assertEqual(self.sample("relaymesh_peer_up", peer="beta"), 0)
        self.assertEqual(self.sample("relaymesh_messages_total", peer="beta", direction="in"), status.msgs_in)

    def test_sessions(self):
        """
        Sessions per machine and status, and their cost per machine: this
        node's under its identity, a peer's under its authenticated id; a
        status a peer made up counts as Unknown.
        """
        server, client, pump = self.join()
        self.alpha.mesh.set_sessions([{"status": "Idle", "cost_usd": 1.5}, {"status": "Idle"}])
        beat = self.beta.mesh.message("heartbeat", {"worker_id": "alpha", "sessions": [
            {"status": "Processing", "cost_usd": 0.25}, {"status": "x" * 200, "cost_usd": True},
            {"status": "Waiting", "cost_usd": "lots"}, "junk"]})  # fmt: skip
        server.dataReceived(line(beat))
        self.assertEqual(self.sample("relaymesh_sessions", machine="alpha", status="Idle"), 2)
        self.assertEqual(self.sample("relaymesh_sessions", machine="beta", status="Processing"), 1)
        self.assertEqual(self.sample("relaymesh_sessions", machine="beta", status="Unknown"), 1)
        self.assertEqual(self.sample("relaymesh_sessions", machine="beta", status="Waiting"), 1)
        self.assertEqual(self.sample("relaymesh_sessions_cost_usd", machine="alpha"), 1.5)
        self.assertEqual(self.sample("relaymesh_sessions_cost_usd", machine="beta"), 0.25)
        self.alpha.mesh.set_sessions(None)
        self.assertIsNone(self.sample("relaymesh_sessions", machine="alpha", status="Idle"))

    def test_snapshot_until_refresh(self):
        """
        An exposition reports the latest reading, taken by L{refresh}.
        """
        self.join()
        self.assertIsNone(self.metrics.registry.get_sample_value("relaymesh_peer_up", {"peer": "beta"}))
        self.metrics.refresh()
        self.assertEqual(self.metrics.registry.get_sample_value("relaymesh_peer_up", {"peer": "beta"}), 1)

    def test_by_type(self):
        server, client, pump = self.join()
        for n in range(2):
            self.beta.mesh.send("alpha", "task_status", {"n": n})
        self.beta.mesh.send("alpha", "delegate_task", {})
        pump.flush()
        self.assertEqual(self.sample("relaymesh_messages_received_by_type_total", peer="beta", msg_type="task_status"), 2)
        self.assertEqual(self.sample("relaymesh_messages_received_by_type_total", peer="beta", msg_type="delegate_task"), 1)

    def test_traffic_by_type(self):
        """
        Messages and bytes in and out per peer and type, across reconnects.
        """
        server, client, pump = self.join()
        self.beta.mesh.send("alpha", "task_status", {"n": 1})
        self.alpha.mesh.send("beta", "ack", {"ack_id": "x"})
        self.alpha.mesh.broadcast("knowledge_sync", {"u": 1})
        pump.flush()

        def sample(msg_type, direction, what="messages"):
            return self.sample(f"relaymesh_{what}_by_type_total", peer="beta", msg_type=msg_type, direction=direction)

        self.assertEqual(sample("task_status", "in"), 1)
        self.assertEqual(sample("task_status", "out"), 0)
        self.assertEqual(sample("ack", "out"), 1)
        self.assertEqual(sample("knowledge_sync", "out"), 1)
        # the request for the TLS upgrade, then the proof inside TLS
        self.assertEqual(sample("handshake", "in"), 2)
        self.assertEqual(sample("handshake_ack", "out"), 2)  # starttls, then ok
        status = self.alpha.mesh.peer("beta")
        self.assertEqual(sum(c["bytes_in"] for c in status.by_type.values()), status.bytes_in)
        self.assertEqual(sum(c["bytes_out"] for c in status.by_type.values()), status.bytes_out)
        self.assertGreater(sample("task_status", "in", "bytes"), 0)
        server.close("closed by the test")
        pump.flush()
        self.join()
        self.beta.mesh.send("alpha", "task_status", {"n": 2})
        self.link[2].flush()
        self.assertEqual(sample("task_status", "in"), 2)


class EventCounterTests(MetricsTestCase):
    def test_handshakes(self):
        self.join()
        self.assertEqual(self.sample("relaymesh_handshakes_total", result="ok", direction="inbound"), 1)
        intruder = Node("mallory", self.clock)
        intruder.keys.keys["alpha"] = os.urandom(32)
        connect(self.alpha, intruder, host="10.0.0.66")[2].flush()
        self.assertEqual(self.sample("relaymesh_handshakes_total", result="denied", direction="inbound"), 1)

    def test_reconnects(self):
        self.alpha.mesh.registry.reconnect_scheduled("gamma", "10.0.0.3:9847", 1, 5.0)
        self.alpha.mesh.registry.reconnect_scheduled("gamma", "10.0.0.3:9847", 2, 10.0)
        self.alpha.mesh.registry.reconnect_scheduled(None, "10.0.0.4:9847", 1, 5.0)
        self.assertEqual(self.sample("relaymesh_reconnect_attempts_total", peer="gamma"), 2)
        self.assertEqual(self.sample("relaymesh_reconnect_attempts_total", peer="10.0.0.4:9847"), 1)
        self.assertEqual(self.sample("relaymesh_peer_reconnect_attempt", peer="gamma"), 2)


class RoundTripTests(MetricsTestCase):
    def test_ping_timed(self):
        """
        A pong gives the time since the ping it answers was written; the
        histogram counts it.
        """
        server, client, pump = self.join()
        self.assertTrue(server.ping(self.alpha.mesh.registry.round_trip))
        held = client.transport.link
        held.pump = lambda: None  # the ping stays on the wire for a while
        self.clock.advance(0.25)
        del held.pump
        held.changed()
        pump.flush()
        self.assertAlmostEqual(self.metrics.round_trips.last["beta"], 0.25, places=3)
        self.assertEqual(self.metrics.round_trips.rtt_ms("beta"), 250.0)
        self.assertEqual(self.sample("relaymesh_rtt_seconds_count", peer="beta"), 1)
        self.assertEqual(self.sample("relaymesh_rtt_seconds_bucket", peer="beta", le="0.25"), 1)
        self.assertEqual(self.sample("relaymesh_rtt_seconds_bucket", peer="beta", le="0.1"), 0)

    def test_ack_not_timed(self):
        """
        An ack naming one of our messages is no round trip: the message may
        have waited anywhere before it went out.
        """
        server, client, pump = self.join()
        sent = self.alpha.mesh.send("beta", "delegate_task", {"task_id": "t"})
        pump.flush()
        self.clock.advance(0.25)
        self.beta.mesh.send("alpha", "ack", {"ack_id": sent})
        pump.flush()
        self.assertEqual(self.metrics.round_trips.last, {})
        self.assertIsNone(self.sample("relaymesh_rtt_seconds_count", peer="beta"))

    def test_untimed(self):
        """
        No round-trip time without an ack, nor from an ack of an id that is
        not ours, not an id, or too old to be a live exchange.
        """
        server, client, pump = self.join()
        self.assertIsNone(self.metrics.round_trips.rtt_ms("beta"))
        foreign = self.beta.mesh.message("task_status", {}).id
        old = self.alpha.mesh.message("task_status", {}).id
        for _ in range(4):  # past the age of a live exchange, with the link alive
            self.clock.advance(self.alpha.mesh.heartbeat_interval)
            self.alpha.mesh.send("beta", "task_status", {})
            self.beta.mesh.send("alpha", "task_status", {})
        for payload in [{"ack_id": foreign}, {"ack_id": "msg_1"}, {"ack_id": 7}, {}, [], {"ack_id": old}]:
            self.beta.mesh.send("alpha", "ack", payload)
        pump.flush()
        self.assertEqual(self.metrics.round_trips.last, {})
        self.assertIsNone(self.sample("relaymesh_rtt_seconds_count", peer="beta"))

    def test_stop(self):
        trips = RoundTrips(self.alpha.mesh, self.clock)
        trips.stop()
        server, client, pump = self.join()
        self.assertTrue(server.ping(self.alpha.mesh.registry.round_trip))
        pump.flush()
        self.assertEqual(trips.last, {})
        self.assertIn("beta", self.metrics.round_trips.last)


class MetricsResourceTests(TestCase):
    """
    C{GET /metrics} over HTTP.
    """

    timeout = 20

    @defer.inlineCallbacks
    def test_scrape(self):
        h = ApiHarness(self)
        h.connect_beta()
        code, body, response = yield h.request("GET", "/metrics")
        self.assertEqual(code, 200)
        [content_type] = response.headers.getRawHeaders(b"content-type")
        self.assertTrue(content_type.startswith(b"text/plain"), content_type)
        self.assertIn(b"relaymesh_peers_connected 1.0", body)
        self.assertIn(b'relaymesh_peer_up{peer="beta"} 1.0', body)
        self.assertIn(b'relaymesh_handshakes_total{direction="inbound",result="ok"} 1.0', body)
        self.assertIn(b"# TYPE relaymesh_rtt_seconds histogram", body)

    @defer.inlineCallbacks
    def test_token(self):
        h = ApiHarness(self)
        code, body, _ = yield h.request("GET", "/metrics", token=None)
        self.assertEqual(code, 401)
        self.assertIn("token", body["error"])
        code, body, _ = yield h.request("GET", "/metrics", token="wrong")
        self.assertEqual(code, 401)
        code, body, _ = yield h.request("POST", "/metrics", raw=b"{}")
        self.assertEqual(code, 405)

    @defer.inlineCallbacks
    def test_public(self):
        h = ApiHarness(self, metrics_public=True)
        code, body, _ = yield h.request("GET", "/metrics", token=None)
        self.assertEqual(code, 200)
        self.assertIn(b"relaymesh_node_info", body)
        code, _, _ = yield h.request("GET", "/api/status", token=None)
        self.assertEqual(code, 401)

    @defer.inlineCallbacks
    def test_rtt_in_peers(self):
        """
        /api/peers reports the round-trip time measured by a ping.
        """
        h = ApiHarness(self)
        beta, (server, client, pump) = h.connect_beta()
        self.assertTrue(server.ping(h.node.mesh.registry.round_trip))
        held = server.transport.link
        held.pump = lambda: None  # the ping stays on the wire for a while
        h.clock.advance(0.012)
        del held.pump
        held.changed()
        pump.flush()
        code, body, _ = yield h.request("GET", "/api/peers/beta", token=TOKEN)
        self.assertEqual(body["rtt_ms"], 12.0)
