"""
The fleet as the control API shows it: C{GET /api/sessions} (this node's
sessions and every peer's, flat, with where each came from and how old it
is), C{PUT /api/sessions} only on a node whose sessions come from the API,
the C{sessions} event of C{/api/events}, and the C{relaymesh sessions}
table, with what a hostile peer may put in its session objects.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaymesh.cli.fleet import machine, session_table
from relaymesh.cli.live import describe_event
from relaymesh.control.sessions import session_rows
from relaymesh.events import PeerSessions
from relaymesh.test.apisupport import ApiHarness, wait_for
from relaymesh.test.support import line

OWN = {"pid": 11, "project": "relaymesh", "status": "Processing", "model": "claude-opus-4-6"}
THEIRS = {"pid": 22, "project": "website", "status": "Idle", "tokens_in": 1200, "cost_usd": 0.5}


class SessionRowsTests(SynchronousTestCase):
    def test_added_keys_win(self):
        """
        A peer's objects cannot claim another origin, age or freshness.
        """
        forged = {**THEIRS, "peer_id": "gamma", "worker_id": "gamma", "age": 0, "stale": False}
        [row] = session_rows([PeerSessions("beta", "beta-w", [forged], 75.0)], 60.0)
        self.assertEqual(
            (row["peer_id"], row["worker_id"], row["age"], row["stale"]), ("beta", "beta-w", 75.0, True)
        )
        self.assertEqual(row["project"], "website")

    def test_not_objects_left_out(self):
        held = PeerSessions("beta", None, [1, "two", None, [THEIRS], THEIRS], 0.0)
        self.assertEqual([r["pid"] for r in session_rows([held], 60.0)], [22])

    def test_worker_id_that_is_not_text(self):
        [row] = session_rows([PeerSessions("beta", {"x": 1}, [THEIRS], 0.0)], 60.0)
        self.assertEqual(row["worker_id"], "beta")

    def test_own(self):
        [row] = session_rows([PeerSessions("alpha", "alpha", [OWN], 0.0, local=True)], 60.0)
        self.assertEqual((row["peer_id"], row["worker_id"]), (None, "alpha"))


class FleetApiTests(TestCase):
    timeout = 20

    def setUp(self):
        self.h = ApiHarness(self)
        self.beta, (self.server, self.client, self.pump) = self.h.connect_beta()
        self.beta.mesh.start()
        self.addCleanup(self.beta.mesh.stop)

    def beta_publishes(self, sessions, worker_id=None):
        self.beta.mesh.set_sessions(sessions, worker_id)
        self.h.clock.advance(0)  # the early heartbeat
        self.pump.flush()

    @defer.inlineCallbacks
    def test_empty(self):
        code, body, _ = yield self.h.request("GET", "/api/sessions")
        self.assertEqual(
            (code, body),
            (200, {"sessions": [], "source": "api", "stale_after": 60.0, "expire_after": 90.0}),
        )

    @defer.inlineCallbacks
    def test_own_and_peers(self):
        self.h.node.mesh.set_sessions([OWN])
        self.beta_publishes([THEIRS])
        self.h.clock.advance(4)
        code, body, _ = yield self.h.request("GET", "/api/sessions")
        self.assertEqual(code, 200)
        own, theirs = body["sessions"]
        self.assertEqual(own, {**OWN, "worker_id": "alpha", "peer_id": None, "age": 4.0, "stale": False})
        self.assertEqual(theirs, {**THEIRS, "worker_id": "beta", "peer_id": "beta", "age": 4.0, "stale": False})

    @defer.inlineCallbacks
    def test_stale_then_gone(self):
        """
        A peer's sessions are stale two intervals after its last list, and
        gone after three.
        """
        self.beta_publishes([THEIRS])
        self.beta.mesh.stop()
        self.h.node.mesh.start()
        self.addCleanup(self.h.node.mesh.stop)
        self.h.clock.advance(60)
        code, body, _ = yield self.h.request("GET", "/api/sessions")
        self.assertEqual([r["stale"] for r in body["sessions"]], [True])
        self.h.clock.advance(30)
        code, body, _ = yield self.h.request("GET", "/api/sessions")
        self.assertEqual(body["sessions"], [])

    @defer.inlineCallbacks
    def test_put_only_with_api_source(self):
        """
        A node whose sessions come from a source refuses a PUT, saying
        which option to change, and keeps its list.
        """
        self.h.node.mesh.set_sessions([OWN])
        self.h.node.mesh.fleet.source = "claude-code"
        code, body, _ = yield self.h.request("PUT", "/api/sessions", {"sessions": [THEIRS]})
        self.assertEqual(code, 409)
        self.assertIn("--sessions claude-code", body["error"])
        self.assertIn("--sessions api", body["error"])
        self.assertEqual(self.h.node.mesh.fleet.local().sessions, [OWN])

    @defer.inlineCallbacks
    def test_status_counts(self):
        self.h.node.mesh.set_sessions([OWN, OWN])
        self.beta_publishes([THEIRS])
        code, body, _ = yield self.h.request("GET", "/api/status")
        self.assertEqual(body["sessions"], {"source": "api", "local": 2, "peers": 1})
        self.h.node.mesh.set_sessions(None)
        code, body, _ = yield self.h.request("GET", "/api/status")
        self.assertEqual(body["sessions"], {"source": "api", "local": None, "peers": 1})

    @defer.inlineCallbacks
    def test_event_stream(self):
        """
        The stream says when a list arrives, changes or expires, with its
        sessions as GET /api/sessions shows them.
        """
        response, reader = yield self.h.stream("/api/events?types=sessions")
        yield wait_for(lambda: b"relaymesh events" in reader.data)
        self.beta_publishes([THEIRS], "beta-w")
        self.h.node.mesh.set_sessions([OWN])
        yield wait_for(lambda: len(reader.events()) == 2)
        theirs, own = reader.events()
        self.assertEqual(theirs["event"], "sessions")
        self.assertEqual((theirs["peer_id"], theirs["worker_id"]), ("beta", "beta-w"))
        self.assertEqual(theirs["sessions"], [{**THEIRS, "worker_id": "beta-w", "peer_id": "beta", "age": 0.0, "stale": False}])
        self.assertEqual((own["peer_id"], own["worker_id"]), (None, "alpha"))
        self.beta.mesh.stop()
        self.h.node.mesh.start()
        self.addCleanup(self.h.node.mesh.stop)
        self.h.clock.advance(90)
        yield wait_for(lambda: len(reader.events()) == 3)
        self.assertEqual(reader.events()[2]["sessions"], None)
        self.assertEqual(reader.events()[2]["peer_id"], "beta")

    @defer.inlineCallbacks
    def test_hostile_session_objects(self):
        """
        A peer's heartbeat with session objects of every wrong shape: the
        node keeps serving, and shows the objects it can.
        """
        odd = [
            {"pid": "x", "project": {"a": 1}, "status": 7, "cost_usd": "lots", "age": -1},
            {"project": "\x1b[2Jpwned\x07", "status": "Idle\r\nX", "tokens_in": 1e300},
            "not an object",
        ]
        beat = self.beta.mesh.message("heartbeat", {"worker_id": ["w"], "sessions": odd})
        self.server.dataReceived(line(beat))
        code, body, _ = yield self.h.request("GET", "/api/sessions")
        self.assertEqual(code, 200)
        self.assertEqual(len(body["sessions"]), 2)
        self.assertEqual({r["peer_id"] for r in body["sessions"]}, {"beta"})
        table = session_table(body["sessions"])
        self.assertNotIn("\x1b", table)
        self.assertNotIn("\x07", table)
        self.assertNotIn("\r", table)


class SessionTableTests(SynchronousTestCase):
    def row(self, **fields):
        return {**THEIRS, "worker_id": "beta", "peer_id": "beta", "age": 3.0, "stale": False, **fields}

    def test_table(self):
        own = {**OWN, "worker_id": "alpha", "peer_id": None, "age": 1.0, "stale": False,
               "tokens_in": 84211, "tokens_out": 9120, "cost_usd": 1.4, "elapsed_secs": 320}  # fmt: skip
        text = session_table([self.row(), own])
        lines = text.splitlines()
        self.assertEqual(lines[0].split()[:4], ["MACHINE", "PROJECT", "PID", "STATUS"])
        self.assertIn("alpha *", lines[1])
        self.assertIn("84.2k/9.1k", lines[1])
        self.assertIn("$1.40", lines[1])
        self.assertIn("opus-4.6", lines[1])
        self.assertIn("5m 20s", lines[1])
        self.assertTrue(lines[2].startswith("beta "))
        self.assertEqual(lines[-1], "2 sessions on 2 machines: 1 Idle, 1 Processing; $1.90 in all")

    def test_stale(self):
        text = session_table([self.row(stale=True)])
        self.assertIn("Idle (stale)", text)

    def test_empty(self):
        self.assertEqual(session_table([]), "No Claude Code sessions on this node or its peers.")

    def test_machine_is_the_authenticated_peer(self):
        self.assertEqual(machine(self.row(worker_id="gamma")), "beta")
        self.assertEqual(machine({"peer_id": None, "worker_id": "alpha"}), "alpha *")

    def test_wrong_types(self):
        text = session_table([self.row(pid=True, cost_usd=float("nan"), tokens_in="9", elapsed_secs=None, age="x")])
        [_, row, _] = text.splitlines()
        self.assertEqual(row.split()[2], "?")
        self.assertIn("-/-", row)


class WatchTests(SynchronousTestCase):
    def test_describe(self):
        event = {"event": "sessions", "peer_id": "beta", "sessions": [THEIRS, {**THEIRS, "status": "Processing"}, 3], "time": None}
        self.assertEqual(describe_event(event), "--:--:-- beta's sessions: 3 (1 Idle, 1 Processing)")
        self.assertEqual(
            describe_event({"event": "sessions", "peer_id": None, "sessions": None, "time": None}),
            "--:--:-- this node's sessions are gone",
        )
        hostile = describe_event({"event": "sessions", "peer_id": "\x1b[2J", "sessions": [{"status": "\x07"}]})
        self.assertNotIn("\x1b", hostile)
        self.assertNotIn("\x07", hostile)
