"""
The recent events the dashboard shows on load: the history the control
plane keeps (L{relaymesh.control.history}) and C{GET /api/events?history=N},
which replays it before the live events; and which connections were joins.
"""

from __future__ import annotations

import json
import re
from importlib import resources

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaymesh.control.history import (
    HISTORY_LIMIT,
    MAX_EVENT_BYTES,
    PAYLOAD_PREVIEW,
    ROUTINE_LIMIT,
    EventHistory,
)
from relaymesh.control.requests import dumps
from relaymesh.events import Direction, EventKind, PeerEvent, PeerSessions
from relaymesh.joinforms import parse_join_input
from relaymesh.keystore import KeyStore
from relaymesh.service import RelayService
from relaymesh.test.apisupport import TOKEN, ApiHarness, FakeMesh, wait_for
from relaymesh.test.joinsupport import InvitingNode
from relaymesh.test.support import EPOCH, make_clock
from relaymesh.wire import RelayMessage


def connected(peer_id: str) -> PeerEvent:
    return PeerEvent(EventKind.CONNECTED, peer_id, "10.0.0.2:40000", Direction.INBOUND)


def message(msg_type: str, payload, n: int = 0) -> RelayMessage:
    return RelayMessage(f"m{n}", msg_type, "beta", 1000 + n, payload)


class EventHistoryTests(SynchronousTestCase):
    """
    What L{EventHistory} keeps of a mesh's events: the last ones, in order,
    bounded in count and bytes.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.mesh = FakeMesh()

    def test_ordered(self):
        """
        Peer events, messages and session lists are kept as the stream
        sends them, with their time, oldest first, each marked as history.
        """
        history = EventHistory(self.mesh, self.clock)
        self.mesh.emit(connected("beta"))
        self.clock.advance(1)
        self.mesh.deliver("beta", message("task_status", {"task_id": "t1"}))
        self.clock.advance(1)
        self.mesh.fleet.tell("beta", PeerSessions("beta", "w", [{"id": "s1"}], 0.0))
        self.clock.advance(1)
        self.mesh.emit(PeerEvent(EventKind.DISCONNECTED, "beta", "10.0.0.2:40000", reason="gone"))
        events = history.recent(10)
        self.assertEqual(
            [(e["event"], e["time"]) for e in events],
            [
                ("peer_connected", round(EPOCH, 3)),
                ("message", round(EPOCH + 1, 3)),
                ("sessions", round(EPOCH + 2, 3)),
                ("peer_disconnected", round(EPOCH + 3, 3)),
            ],
        )
        self.assertTrue(all(e["history"] is True for e in events))
        self.assertEqual(events[1]["message"]["payload"], {"task_id": "t1"})
        self.assertEqual(events[3]["reason"], "gone")
        self.assertEqual([e["event"] for e in history.recent(2)], ["sessions", "peer_disconnected"])
        self.assertEqual([e["event"] for e in history.recent(10, {"message"})], ["message"])
        self.assertEqual(history.recent(0), [])

    def test_boundedInCount(self):
        """
        Only the last L{HISTORY_LIMIT} events are kept.
        """
        history = EventHistory(self.mesh, self.clock)
        for n in range(HISTORY_LIMIT + 30):
            self.mesh.deliver("beta", message("task_status", {"n": n}, n))
        events = history.recent(HISTORY_LIMIT + ROUTINE_LIMIT)
        self.assertEqual(len(events), HISTORY_LIMIT)
        self.assertEqual([e["message"]["payload"]["n"] for e in events], list(range(30, HISTORY_LIMIT + 30)))

    def test_routineKeptApart(self):
        """
        Heartbeats and session lists keep their own last L{ROUTINE_LIMIT}:
        a busy mesh's heartbeats do not push the connections out.
        """
        history = EventHistory(self.mesh, self.clock)
        self.mesh.emit(connected("beta"))
        for n in range(ROUTINE_LIMIT * 3):
            self.mesh.deliver("beta", message("heartbeat", {}, n))
        self.mesh.emit(connected("gamma"))
        events = history.recent(HISTORY_LIMIT + ROUTINE_LIMIT)
        self.assertEqual(len(events), ROUTINE_LIMIT + 2)
        self.assertEqual(events[0]["peer_id"], "beta")
        self.assertEqual(events[-1]["peer_id"], "gamma")
        ids = [e["message"]["id"] for e in events[1:-1]]
        self.assertEqual(ids, [f"m{n}" for n in range(ROUTINE_LIMIT * 2, ROUTINE_LIMIT * 3)])

    def test_boundedInBytes(self):
        """
        The oldest events go once all of them take more than the byte
        budget; what is kept is the newest, in order.
        """
        history = EventHistory(self.mesh, self.clock, max_bytes=20_000)
        for n in range(100):
            self.mesh.deliver("beta", message("task_status", {"text": "x" * 1000}, n))
        events = history.recent(HISTORY_LIMIT)
        self.assertLessEqual(history.size, 20_000)
        # Messages are sized generously (their payload's JSON and a margin)
        # so that they need not be encoded as they arrive: the budget never
        # counts less than what the events take.
        taken = sum(len(dumps({k: v for k, v in e.items() if k != "history"})) for e in events)
        self.assertLessEqual(taken, history.size)
        self.assertLess(len(events), 100)
        self.assertGreater(len(events), 10)
        self.assertEqual(events[-1]["message"]["id"], "m99")
        ids = [int(e["message"]["id"][1:]) for e in events]
        self.assertEqual(ids, sorted(ids))

    def test_longPayloadShortened(self):
        """
        A message over L{MAX_EVENT_BYTES} is kept with the start of its
        payload's JSON text, its length and C{"truncated": true}.
        """
        history = EventHistory(self.mesh, self.clock)
        payload = {"text": "\u00e9" * 100_000}
        self.mesh.deliver("beta", message("task_status", payload))
        [event] = history.recent(1)
        self.assertLessEqual(len(dumps(event)), MAX_EVENT_BYTES + 20)
        self.assertIs(event["truncated"], True)
        text = json.dumps(payload, ensure_ascii=False)
        self.assertEqual(event["message"]["payload"], text[:PAYLOAD_PREVIEW])
        self.assertEqual(event["payload_bytes"], len(text.encode("utf-8")))
        self.assertEqual(event["message"]["msg_type"], "task_status")

    def test_longSessionListShortened(self):
        """
        A session list over L{MAX_EVENT_BYTES} keeps its first rows and
        says how many there were.
        """
        history = EventHistory(self.mesh, self.clock)
        rows = [{"id": f"s{n}", "project": "p" * 100} for n in range(500)]
        self.mesh.fleet.tell("beta", PeerSessions("beta", "w", rows, 0.0))
        [event] = history.recent(1)
        self.assertLessEqual(len(dumps(event)), MAX_EVENT_BYTES + 20)
        self.assertEqual((event["truncated"], event["total"]), (True, 500))
        self.assertGreater(len(event["sessions"]), 0)
        self.assertEqual(event["sessions"][0]["project"], "p" * 100)


class JoinEventsTests(SynchronousTestCase):
    """
    A connection that pairs in its handshake and closes (C{relaymesh
    join}) is marked as a join in its connected and disconnected events.
    """

    def test_joinMarked(self):
        alpha = InvitingNode(self)
        history = EventHistory(alpha.node.mesh, alpha.reactor)
        printed = alpha.invite()
        beta = alpha.joiner("beta")
        self.successResultOf(alpha.join(beta, parse_join_input(printed.relaymesh_link)))
        events = [e for e in history.recent(HISTORY_LIMIT) if e["event"].startswith("peer_")]
        self.assertEqual(
            [(e["event"], e.get("peer_id"), e.get("join"), e.get("paired_via")) for e in events],
            [
                ("peer_connected", "beta", True, "invite"),
                ("peer_disconnected", "beta", True, "invite"),
            ],
        )

    def test_strongJoinMarked(self):
        """
        A join with the strong link is marked with the strong form.
        """
        alpha = InvitingNode(self)
        history = EventHistory(alpha.node.mesh, alpha.reactor)
        printed = alpha.invite()
        self.successResultOf(alpha.join(alpha.joiner("beta"), parse_join_input(printed.strong_link)))
        [joined] = [e for e in history.recent(HISTORY_LIMIT) if e["event"] == "peer_connected"]
        self.assertIs(joined["join"], True)
        self.assertIsInstance(joined["paired_via"], str)


    def test_lastingPairingNotAJoin(self):
        """
        A relaymesh node that pairs with the pending key (C{relaymesh
        accept} on this side) and stays connected is not a join: its
        connection says nothing of the kind, and its events are plain.
        """
        network = make_clock()
        alpha_store, beta_store = KeyStore(self.mktemp()), KeyStore(self.mktemp())
        alpha_store.set_identity("alpha")
        beta_store.set_identity("beta")
        key = bytes(range(32))
        alpha_store.set_pending_key(key)
        beta_store.set_key("alpha", key)
        alpha = RelayService(alpha_store, listen="tcp:0", reactor=network)
        alpha.startService()
        history = EventHistory(alpha.mesh, network)
        port = alpha.listener.port.getHost().port
        beta = RelayService(beta_store, listen=None, peers=[f"alpha@127.0.0.1:{port}"], reactor=network)
        beta.startService()
        network.advance(1)
        self.assertTrue(alpha.mesh.is_connected("beta"))
        self.assertIsNotNone(alpha.mesh.registry.connection("beta").outcome.paired_via)
        [connected] = [e for e in history.recent(HISTORY_LIMIT) if e["event"] == "peer_connected"]
        self.assertNotIn("join", connected)
        beta.stopService()
        alpha.stopService()
        network.advance(10)


class HistoryApiTests(TestCase):
    """
    C{GET /api/events?history=N} over real HTTP.
    """

    timeout = 20

    def setUp(self):
        self.h = ApiHarness(self)

    def makeEvents(self):
        beta, (server, client, pump) = self.h.connect_beta()
        for n in range(3):
            beta.mesh.send("alpha", "task_status", {"n": n})
        pump.flush()
        server.close("closed by the test")
        pump.flush()

    @defer.inlineCallbacks
    def test_replayThenLive(self):
        """
        The recent events come first, oldest first and marked as history;
        live events follow, unmarked.
        """
        self.makeEvents()
        response, reader = yield self.h.stream("/api/events?history=250")
        self.assertEqual(response.code, 200)
        yield wait_for(lambda: len(reader.events()) == 5)
        events = reader.events()
        self.assertEqual(
            [e["event"] for e in events],
            ["peer_connected", "message", "message", "message", "peer_disconnected"],
        )
        self.assertEqual([e["message"]["payload"]["n"] for e in events[1:4]], [0, 1, 2])
        self.assertTrue(all(e["history"] is True for e in events))
        self.assertNotIn("join", events[0])  # paired beforehand, not a join
        self.h.connect_beta("gamma", host="10.0.0.3")
        yield wait_for(lambda: len(reader.events()) == 6)
        live = reader.events()[-1]
        self.assertEqual((live["event"], live["peer_id"]), ("peer_connected", "gamma"))
        self.assertNotIn("history", live)

    @defer.inlineCallbacks
    def test_limitAndTypes(self):
        """
        C{history=N} sends the last N; C{types} filters them as it filters
        the live events.
        """
        self.makeEvents()
        response, reader = yield self.h.stream("/api/events?history=2")
        yield wait_for(lambda: len(reader.events()) == 2)
        self.assertEqual([e["event"] for e in reader.events()], ["message", "peer_disconnected"])
        response, reader = yield self.h.stream("/api/events?history=10&types=connected,disconnected")
        yield wait_for(lambda: len(reader.events()) == 2)
        self.assertEqual([e["event"] for e in reader.events()], ["peer_connected", "peer_disconnected"])

    @defer.inlineCallbacks
    def test_noHistoryUnlessAsked(self):
        """
        A stream opened without C{history} sends only live events.
        """
        self.makeEvents()
        response, reader = yield self.h.stream()
        yield wait_for(lambda: b"relaymesh events" in reader.data)
        self.h.connect_beta("gamma", host="10.0.0.3")
        yield wait_for(lambda: len(reader.events()) == 1)
        self.assertEqual(reader.events()[0]["event"], "peer_connected")

    @defer.inlineCallbacks
    def test_authenticated(self):
        """
        Without the token, or with a wrong one, nothing of the history is
        sent: 401.
        """
        self.makeEvents()
        for token in [None, "wrong-token"]:
            code, body, _ = yield self.h.request("GET", "/api/events?history=10", token=token)
            self.assertEqual(code, 401)
            self.assertNotIn(b"task_status", json.dumps(body).encode())
        code, _, _ = yield self.h.request("GET", "/api/events?history=oops", token=TOKEN)
        self.assertEqual(code, 400)

    @defer.inlineCallbacks
    def test_badHistory(self):
        """
        Anything but one whole number from 0 to the number kept is refused
        with a one-line error, and no stream is opened.
        """
        most = HISTORY_LIMIT + ROUTINE_LIMIT
        for query in ["history=", "history=-1", "history=1.5", f"history={most + 1}", "history=1&history=2", "history=%EF%BC%91"]:
            code, body, _ = yield self.h.request("GET", "/api/events?" + query)
            self.assertEqual((query, code), (query, 400))
            self.assertEqual(body["error"], f"query 'history' must be a whole number from 0 to {most}")
        self.assertEqual(self.h.control.streams, set())


class PeerListTests(TestCase):
    """
    C{/api/peers}, which the dashboard's peer table shows and nothing else:
    paired, dialled and live peers only.
    """

    timeout = 20

    @defer.inlineCallbacks
    def test_forgottenPeerNotListed(self):
        """
        A peer that connected once, disconnected and whose key was
        forgotten is no longer listed; a paired one still is.
        """
        h = ApiHarness(self)
        for name, host in [("beta", "10.0.0.2"), ("gamma", "10.0.0.3")]:
            _, (server, client, pump) = h.connect_beta(name, host=host)
            server.close("closed by the test")
            pump.flush()
        code, body, _ = yield h.request("GET", "/api/peers")
        self.assertEqual([(p["peer_id"], p["state"]) for p in body["peers"]], [("beta", "disconnected"), ("gamma", "disconnected")])
        h.keystore.forget("beta")
        code, body, _ = yield h.request("GET", "/api/peers")
        self.assertEqual([p["peer_id"] for p in body["peers"]], ["gamma"])
        code, body, _ = yield h.request("GET", "/api/status")
        self.assertEqual(body["peers"]["known"], 1)


def page_script() -> str:
    text = resources.files("relaymesh.control").joinpath("dashboard.html").read_text("utf-8")
    scripts: list[str] = re.findall(r"<script>(.*?)</script>", text, re.S)
    [body] = scripts
    return body


class DashboardPageTests(SynchronousTestCase):
    """
    The page, read as a file (the browser test drives it live).
    """

    def setUp(self):
        self.script = page_script()

    def test_peersOnlyFromTheApi(self):
        """
        The peer table is what C{GET /api/peers} answers: nothing else
        assigns the list, and events only make it reload.
        """
        self.assertEqual(re.findall(r"\bpeers = [^;]*;", self.script), ["peers = [];", "peers = body.peers;"])
        self.assertIn('api("/api/peers").then(function (body) { peers = body.peers; renderPeers(); })', self.script)

    def test_history(self):
        """
        The stream is opened with the recent events first; a replayed event
        goes to the feed only (the lists loaded when the stream opened are
        newer), and the feed starts again whenever the stream opens.
        """
        self.assertIn('new EventSource("/api/events?history=" + HISTORY)', self.script)
        self.assertIn("var HISTORY = 200;", self.script)
        self.assertRegex(self.script, r"addToFeed\(e\);\s*(//[^\n]*\s*)*if \(e\.history === true\) return;")
        self.assertRegex(self.script, r"source\.onopen = function \(\) \{\s*setLive\(\"live\"\);\s*clearFeed\(\);")

    def test_removeButtons(self):
        """
        Disconnect and Forget call the API's DELETE (forget: C{?forget=all})
        with the peer's id encoded, after a confirmation, and show the
        node's error line.
        """
        self.assertIn('api("/api/peers/" + encodeURIComponent(key) + what.query, "DELETE")', self.script)
        self.assertIn('query: "?forget=all"', self.script)
        self.assertIn('$("peer-confirm-yes").addEventListener("click", runAction);', self.script)
        self.assertIn('"Could not " + action + " " + key + ": " + (err && err.message', self.script)
        self.assertIn("p.last_error", self.script)
