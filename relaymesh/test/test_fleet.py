"""
The fleet's session lists (L{relaymesh.fleet}) and the heartbeats that
carry them: early heartbeats when a session starts, ends or changes status,
a heartbeat to each peer as it connects, watchers, expiry, and what a peer
may claim.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relaymesh.events import PeerSessions
from relaymesh.fleet import signature
from relaymesh.heartbeats import EARLY_HEARTBEAT_GAP
from relaymesh.test.support import Node, connect, line, make_clock, pair_keys
from relaymesh.wire import RelayMessage, WireError

SESSION = {"pid": 41, "project": "backend", "status": "Processing", "model": "claude-opus-4-6", "cpu": 12.0}


def heartbeats(node: Node) -> list[RelayMessage]:
    return [m for _, m in node.received if m.msg_type == "heartbeat"]


class SignatureTests(SynchronousTestCase):
    def test_counters_do_not_count(self):
        busier = {**SESSION, "cpu": 80.0, "tokens_in": 9000}
        self.assertEqual(signature([SESSION]), signature([busier]))

    def test_status_model_and_membership_count(self):
        for changed in ({**SESSION, "status": "Idle"}, {**SESSION, "model": "claude-haiku-4-5"}):
            self.assertNotEqual(signature([SESSION]), signature([changed]))
        self.assertNotEqual(signature([SESSION]), signature([SESSION, {**SESSION, "pid": 42}]))
        self.assertNotEqual(signature([]), signature(None))

    def test_odd_items(self):
        """A list from a program may hold anything JSON; it still has a signature."""
        self.assertEqual(signature([1, "x"]), (None, None))


class FleetTestCase(SynchronousTestCase):
    """
    Alpha accepts beta; both send heartbeats.
    """

    def setUp(self):
        self.clock = make_clock()
        self.clock.advance(1_795_000_000)
        self.alpha = Node("alpha", self.clock)
        self.beta = Node("beta", self.clock)
        pair_keys(self.alpha, self.beta)
        self.link = connect(self.alpha, self.beta)
        self.beta.mesh.start()
        self.addCleanup(self.beta.mesh.stop)

    def flush(self):
        self.link[2].flush()


class EarlyHeartbeatTests(FleetTestCase):
    def test_new_session_heard_at_once(self):
        self.beta.mesh.set_sessions([SESSION])
        self.clock.advance(0)
        self.flush()
        [beat] = heartbeats(self.alpha)
        self.assertEqual(beat.payload["sessions"], [SESSION])
        self.assertEqual(self.alpha.mesh.sessions()["beta"].sessions, [SESSION])

    def test_counters_wait_for_the_interval(self):
        self.beta.mesh.set_sessions([SESSION])
        self.clock.advance(0)
        self.flush()
        self.beta.mesh.set_sessions([{**SESSION, "cpu": 50.0}])
        self.clock.advance(29)
        self.flush()
        self.assertEqual(len(heartbeats(self.alpha)), 1)
        self.clock.advance(1)
        self.flush()
        self.assertEqual(heartbeats(self.alpha)[-1].payload["sessions"][0]["cpu"], 50.0)

    def test_early_heartbeats_are_spaced(self):
        """
        A list whose statuses flap sends at most one early heartbeat per
        gap, carrying the latest list.
        """
        for n in range(10):
            self.beta.mesh.set_sessions([{**SESSION, "status": "Idle" if n % 2 else "Waiting"}])
            self.clock.advance(0.1)
        self.flush()
        beats = heartbeats(self.alpha)
        self.assertLessEqual(len(beats), 1 + int(1.0 / EARLY_HEARTBEAT_GAP))
        self.clock.advance(EARLY_HEARTBEAT_GAP)
        self.flush()
        self.assertEqual(heartbeats(self.alpha)[-1].payload["sessions"][0]["status"], "Idle")

    def test_withdrawn_list_heard_at_once(self):
        self.beta.mesh.set_sessions([SESSION])
        self.clock.advance(0)
        self.beta.mesh.set_sessions(None)
        self.clock.advance(EARLY_HEARTBEAT_GAP)
        self.flush()
        self.assertEqual(heartbeats(self.alpha)[-1].payload, {})

    def test_not_before_start(self):
        """A mesh that does not send heartbeats sends no early ones either."""
        self.beta.mesh.stop()
        self.beta.mesh.set_sessions([SESSION])
        self.clock.advance(EARLY_HEARTBEAT_GAP)
        self.flush()
        self.assertEqual(heartbeats(self.alpha), [])

    def test_stop_cancels_pending(self):
        self.beta.mesh.set_sessions([SESSION])
        self.beta.mesh.stop()
        self.clock.advance(EARLY_HEARTBEAT_GAP)
        self.flush()
        self.assertEqual(heartbeats(self.alpha), [])
        self.assertEqual([c for c in self.clock.getDelayedCalls() if "_send_early" in repr(c)], [])

    def test_bad_list_changes_nothing(self):
        self.beta.mesh.set_sessions([SESSION])
        with self.assertRaises(WireError):
            self.beta.mesh.set_sessions([{"pid": object()}])
        self.assertEqual(self.beta.mesh.fleet.local().sessions, [SESSION])


class GreetingTests(SynchronousTestCase):
    def setUp(self):
        self.clock = make_clock()
        self.alpha = Node("alpha", self.clock)
        self.beta = Node("beta", self.clock)
        pair_keys(self.alpha, self.beta)

    def test_new_peer_hears_the_list(self):
        self.beta.mesh.set_sessions([SESSION])
        self.beta.mesh.start()
        self.addCleanup(self.beta.mesh.stop)
        self.clock.advance(5)
        connect(self.alpha, self.beta)
        self.assertEqual(self.alpha.mesh.sessions()["beta"].sessions, [SESSION])

    def test_no_list_no_greeting(self):
        """Without a list, a connection starts as claudectl's do: no heartbeat."""
        self.beta.mesh.start()
        self.addCleanup(self.beta.mesh.stop)
        connect(self.alpha, self.beta)
        self.assertEqual(heartbeats(self.alpha), [])


class WatcherTests(FleetTestCase):
    def setUp(self):
        FleetTestCase.setUp(self)
        self.seen: list[tuple[str, PeerSessions | None]] = []
        self.watch = self.alpha.mesh.fleet.watch(lambda *a: self.seen.append(a))

    def test_peer_list_arrives_and_expires(self):
        self.beta.mesh.set_sessions([SESSION])
        self.clock.advance(0)
        self.flush()
        [(peer_id, held)] = self.seen
        self.assertEqual((peer_id, held.sessions, held.local), ("beta", [SESSION], False))
        self.beta.mesh.stop()
        self.alpha.mesh.start()
        self.addCleanup(self.alpha.mesh.stop)
        self.clock.advance(90)
        self.assertEqual(self.seen[-1], ("beta", None))

    def test_own_list(self):
        self.alpha.mesh.set_sessions([SESSION])
        self.alpha.mesh.set_sessions([SESSION])
        [(peer_id, held)] = self.seen
        self.assertEqual((peer_id, held.local, held.worker_id), ("alpha", True, "alpha"))
        self.alpha.mesh.set_sessions(None)
        self.assertEqual(self.seen[-1], ("alpha", None))

    def test_cancel(self):
        self.watch.cancel()
        self.watch.cancel()
        self.alpha.mesh.set_sessions([SESSION])
        self.assertEqual(self.seen, [])

    def test_failing_watcher(self):
        def broken(*args):
            raise RuntimeError("boom")

        self.alpha.mesh.fleet.watch(broken)
        self.alpha.mesh.set_sessions([SESSION])
        self.assertEqual(len(self.seen), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ClaimTests(FleetTestCase):
    """
    What a peer's heartbeat says about itself is a claim: the list is held
    under the authenticated peer id, whatever worker id it names.
    """

    def inject(self, payload):
        message = self.beta.mesh.message("heartbeat", payload)
        self.link[0].dataReceived(line(message))

    def test_worker_id_of_another_machine(self):
        self.inject({"worker_id": "gamma", "sessions": [SESSION]})
        held = self.alpha.mesh.sessions()
        self.assertEqual(list(held), ["beta"])
        self.assertEqual((held["beta"].peer_id, held["beta"].worker_id), ("beta", "gamma"))

    def test_claiming_to_be_this_node(self):
        self.inject({"worker_id": "alpha", "sessions": [SESSION]})
        self.assertIsNone(self.alpha.mesh.fleet.local())
        self.assertFalse(self.alpha.mesh.sessions()["beta"].local)

    def test_payloads_without_a_list(self):
        for payload in ({}, {"sessions": "x"}, {"sessions": {"a": 1}}, [], "sessions", None):
            self.inject(payload)
        self.assertEqual(self.alpha.mesh.sessions(), {})
