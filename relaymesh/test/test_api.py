"""
Tests for the control API (L{relaymesh.control}): every endpoint and every error status, over real
HTTP on 127.0.0.1, against a node whose mesh runs on a memory clock; and the
event stream's keepalives, filters and slow-client limit on a fake request.
"""

from __future__ import annotations

import json
import os
import stat

from twisted.internet import defer, task
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyChannel

from relaymesh import tap
from relaymesh.control.auth import cookie_value, load_token, token_is_private
from relaymesh.control.requests import MAX_BODY, ApiError, ApiRequest, as_api_error
from relaymesh.control.service import ApiService
from relaymesh.control.sse import EventStream, message_object, parse_event_types
from relaymesh.errors import PeerNotConnected, UnknownPeer, UnsupportedMessageType
from relaymesh.events import Direction, EventKind, PeerEvent
from relaymesh.keystore import KeyStore
from relaymesh.reliable.outbox import ReliableDelivery
from relaymesh.routing.router import ADVERTISE_MIN_INTERVAL, Router
from relaymesh.service import RelayService
from relaymesh.startup import StartupError
from relaymesh.test.apisupport import TOKEN, ApiHarness, FakeMesh, wait_for
from relaymesh.test.support import EPOCH, Node, connect, pair_keys
from relaymesh.testing import MemoryStore
from relaymesh.wire import RelayMessage, WireError


class ReliableSendTests(TestCase):
    """
    POST /api/send with C{"reliable": true}, alpha and beta both with an
    in-memory outbox.
    """

    timeout = 20

    def setUp(self):
        self.h = ApiHarness(self)
        self.store = MemoryStore()
        mesh = self.h.node.mesh
        mesh.enable_reliable(ReliableDelivery(mesh, self.store))
        self.beta, (self.server, self.client, self.pump) = self.h.connect_beta(store=MemoryStore())

    def send(self, to="beta", **extra):
        body = {"to": to, "msg_type": "delegate_task", "payload": {"task_id": "t1"}, "reliable": True}
        body.update(extra)
        return self.h.request("POST", "/api/send", body)

    @defer.inlineCallbacks
    def test_answered_once_durable(self):
        code, body, _ = yield self.send()
        self.assertEqual(code, 200)
        self.assertEqual((body["to"], body["reliable"]), ("beta", True))
        self.assertEqual(list(self.store.outbox), [body["id"]])
        self.pump.flush()
        [message] = [m for _, m in self.beta.received if m.msg_type == "delegate_task"]
        self.assertEqual(message.id, body["id"])
        self.assertEqual(self.store.outbox, {})

    @defer.inlineCallbacks
    def test_peer_without_ack(self):
        self.h.connect_beta("gamma", host="10.0.0.3")
        code, body, _ = yield self.send("gamma")
        self.assertEqual(code, 400)
        self.assertIn("ack/1", body["error"])

    @defer.inlineCallbacks
    def test_outbox_refuses(self):
        self.store.close()
        code, body, _ = yield self.send()
        self.assertEqual(code, 503)
        self.assertIn("outbox", body["error"])

    @defer.inlineCallbacks
    def test_wait_delivered(self):
        """
        With C{"wait"}, the answer comes once the peer acknowledged the
        message: C{"delivered": true}. Without, it comes once the message
        is queued: C{"delivered": false}.
        """
        code, body, _ = yield self.send()
        self.assertEqual((code, body["delivered"]), (200, False))
        self.pump.flush()
        answer = self.send(wait=5)
        yield wait_for(lambda: bool(self.store.outbox), 10)
        self.pump.flush()
        code, body, _ = yield answer
        self.assertEqual((code, body["delivered"], body["reliable"]), (200, True, True))
        self.assertEqual(self.store.outbox, {})

    @defer.inlineCallbacks
    def test_wait_not_acknowledged(self):
        """
        Without an ack within C{"wait"} seconds (of the node's clock), the
        answer says C{"delivered": false}, and the message stays queued.
        Beta cannot record the message (its store is closed), so it never
        acknowledges it.
        """
        self.beta.store.close()
        answer = self.send(wait=5)
        yield wait_for(lambda: bool(self.store.outbox), 10)
        self.h.clock.advance(4.9)
        self.assertNoResult(answer)
        self.h.clock.advance(0.1)
        code, body, _ = yield answer
        self.assertEqual((code, body["delivered"]), (200, False))
        self.assertEqual(list(self.store.outbox), [body["id"]])

    @defer.inlineCallbacks
    def test_bad_wait(self):
        for extra, error in [
            ({"wait": 31}, "field 'wait' must be a number of seconds from 0 to 30"),
            ({"wait": -1}, "field 'wait' must be a number of seconds from 0 to 30"),
            ({"wait": True}, "field 'wait' must be a number of seconds from 0 to 30"),
            ({"wait": 1, "reliable": False}, "field 'wait' goes only with \"reliable\": true"),
        ]:
            code, body, _ = yield self.send(**extra)
            self.assertEqual((extra, code, body["error"]), (extra, 400, error))
        self.assertEqual(self.store.outbox, {})

    @defer.inlineCallbacks
    def test_not_a_boolean(self):
        code, body, _ = yield self.send(reliable="yes")
        self.assertEqual(code, 400)
        self.assertEqual(body["error"], "field 'reliable' must be true or false")


class StatusTests(TestCase):
    timeout = 20

    def setUp(self):
        self.h = ApiHarness(self)

    @defer.inlineCallbacks
    def test_status(self):
        """
        GET /api/status names the node, its version, addresses, uptime and counts.
        """
        from relaymesh._version import __version__

        self.h.connect_beta()
        self.h.clock.advance(12.5)
        code, body, _ = yield self.h.request("GET", "/api/status")
        self.assertEqual(code, 200)
        self.assertEqual((body["identity"], body["version"]), ("alpha", __version__))
        self.assertEqual(body["uptime"], 12.5)
        self.assertIsNone(body["listen"])
        self.assertEqual(body["peers"], {"known": 1, "connected": 1, "dialled": 0})
        for key in ("api", "started_at", "workers", "event_streams", "heartbeat_interval", "max_peers"):
            self.assertIn(key, body)

    @defer.inlineCallbacks
    def test_missing_token(self):
        """
        Without a token: 401, a JSON error and a WWW-Authenticate header.
        """
        code, body, response = yield self.h.request("GET", "/api/status", token=None)
        self.assertEqual(code, 401)
        self.assertIn("API token", body["error"])
        self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"), [b'Bearer realm="relaymesh"'])
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])

    @defer.inlineCallbacks
    def test_wrong_token(self):
        for path in ["/api/status", "/api/peers", "/api/workers", "/api/events", "/api/nothing-here"]:
            code, body, _ = yield self.h.request("GET", path, token="wrong")
            self.assertEqual((path, code), (path, 401))
            self.assertIn("error", body)
        code, body, _ = yield self.h.request("GET", "/api/status", token=None, headers={"authorization": ["Basic eDp5"]})
        self.assertEqual(code, 401)

    @defer.inlineCallbacks
    def test_cookie_not_enough(self):
        """
        The token cookie is taken by /api/events only.
        """
        cookie = {"cookie": [f"relaymesh_token_9849={TOKEN}"]}
        code, _, _ = yield self.h.request("GET", "/api/status", token=None, headers=cookie)
        self.assertEqual(code, 401)
        code, _, _ = yield self.h.request("POST", "/api/broadcast", {"msg_type": "ack"}, token=None, headers=cookie)
        self.assertEqual(code, 401)

    @defer.inlineCallbacks
    def test_not_found_and_method(self):
        code, body, _ = yield self.h.request("GET", "/api/nothing-here")
        self.assertEqual(code, 404)
        self.assertIn("/api/nothing-here", body["error"])
        for path in ["/nothing", "/api", "/api/"]:
            code, body, _ = yield self.h.request("GET", path)
            self.assertEqual((path, code), (path, 404))
            self.assertIn("error", body)
        code, body, response = yield self.h.request("DELETE", "/api/status")
        self.assertEqual(code, 405)
        self.assertIn("DELETE", body["error"])
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET"])
        code, body, _ = yield self.h.request("GET", "/api/status/extra")
        self.assertEqual(code, 404)


class PeersTests(TestCase):
    timeout = 20

    def setUp(self):
        self.h = ApiHarness(self)

    @defer.inlineCallbacks
    def test_list(self):
        """
        Connected peers show their state, address, direction, times and
        traffic; a paired peer never seen is listed as disconnected with the
        address and last-seen time from its metadata.
        """
        self.h.connect_beta()
        self.h.keystore.set_key("gamma", os.urandom(32))
        self.h.keystore.update_meta("gamma", addr="10.0.0.9:9847", last_seen=1795000000000)
        code, body, _ = yield self.h.request("GET", "/api/peers")
        self.assertEqual(code, 200)
        beta, gamma = body["peers"]
        self.assertEqual(
            (beta["peer_id"], beta["state"], beta["address"], beta["direction"]),
            ("beta", "connected", "10.0.0.2:40000", "inbound"),
        )
        self.assertEqual(beta["connected_since"], round(self.h.clock.seconds(), 3))
        self.assertGreater(beta["msgs_in"], 0)
        self.assertGreater(beta["bytes_out"], 0)
        self.assertIsNone(beta["rtt_ms"])
        self.assertTrue(beta["paired"])
        for key in ("last_seen", "msgs_out", "bytes_in", "reconnect_attempt", "next_retry_at", "dialled"):
            self.assertIn(key, beta)
        self.assertEqual(
            (gamma["peer_id"], gamma["state"], gamma["address"], gamma["last_seen"]),
            ("gamma", "disconnected", "10.0.0.9:9847", 1795000000.0),
        )

    @defer.inlineCallbacks
    def test_routes(self):
        """
        A node reachable only through a routing neighbour is listed as
        routed, with the neighbour it goes through and its hops; a
        connected peer is one hop away through itself.
        """
        self.h.node.mesh.enable_routing(Router(self.h.node.mesh))
        beta, (_, _, pump) = self.h.connect_beta(routing=True)
        gamma = Node("gamma", self.h.clock, routing=True)
        pair_keys(beta, gamma)
        _, _, pump_g = connect(beta, gamma, host="10.0.0.3")
        for _ in range(4):
            pump.flush()
            pump_g.flush()
            self.h.clock.advance(ADVERTISE_MIN_INTERVAL)
        code, body, _ = yield self.h.request("GET", "/api/peers")
        self.assertEqual(code, 200)
        views = {p["peer_id"]: (p["state"], p["via"], p["hops"]) for p in body["peers"]}
        self.assertEqual(views, {"beta": ("connected", "beta", 1), "gamma": ("routed", "beta", 2)})

    @defer.inlineCallbacks
    def test_one_peer(self):
        self.h.connect_beta()
        code, body, _ = yield self.h.request("GET", "/api/peers/beta")
        self.assertEqual((code, body["state"]), (200, "connected"))
        code, body, _ = yield self.h.request("GET", "/api/peers/nobody")
        self.assertEqual(code, 404)
        self.assertIn("nobody", body["error"])

    @defer.inlineCallbacks
    def test_connect(self):
        """
        POST /api/peers dials a peer at run time (202), once per address.
        """
        self.h.keystore.set_key("gamma", os.urandom(32))
        code, body, _ = yield self.h.request("POST", "/api/peers", {"addr": "gamma@127.0.0.1:9900"})
        self.assertEqual(code, 202)
        self.assertEqual(
            body,
            {"addr": "gamma@127.0.0.1:9900", "peer_id": "gamma", "already_dialled": False, "already_connected": False},
        )
        [outbound] = self.h.node.outbound()
        self.assertEqual((outbound.target.peer_id, outbound.target.port), ("gamma", 9900))
        code, body, _ = yield self.h.request("POST", "/api/peers", {"addr": "gamma@127.0.0.1:9900"})
        self.assertEqual((code, body["already_dialled"]), (202, True))
        self.assertEqual(len(self.h.node.outbound()), 1)
        code, body, _ = yield self.h.request("GET", "/api/peers/gamma")
        self.assertEqual((body["dialled"], body["address"], body["direction"]), (True, "127.0.0.1:9900", "outbound"))

    @defer.inlineCallbacks
    def test_connect_errors(self):
        """
        A bad address or a peer without a key is a 400 naming the field.
        """
        code, body, _ = yield self.h.request("POST", "/api/peers", {"addr": "gamma@host:99999"})
        self.assertEqual(code, 400)
        self.assertIn("port", body["error"])
        code, body, _ = yield self.h.request("POST", "/api/peers", {"addr": "delta@127.0.0.1:9900"})
        self.assertEqual(code, 400)
        self.assertIn("'addr'", body["error"])
        self.assertIn("pair first", body["error"])
        code, body, _ = yield self.h.request("POST", "/api/peers", {"address": "x"})
        self.assertEqual((code, body["error"]), (400, "unknown field 'address'"))
        self.assertEqual(self.h.node.outbound(), [])

    @defer.inlineCallbacks
    def test_disconnect(self):
        """
        DELETE /api/peers/PEER_ID closes the connection and stops dialling.
        """
        beta, (server, client, pump) = self.h.connect_beta()
        self.h.node.add_peer("beta@10.0.0.2:9847")
        code, body, _ = yield self.h.request("DELETE", "/api/peers/beta")
        self.assertEqual(code, 200)
        self.assertEqual(body, {"peer_id": "beta", "was_connected": True, "stopped_dialling": True})
        pump.flush()
        self.assertFalse(self.h.node.mesh.is_connected("beta"))
        self.assertEqual(self.h.node.outbound(), [])
        code, body, _ = yield self.h.request("DELETE", "/api/peers/nobody")
        self.assertEqual(code, 404)
        code, body, _ = yield self.h.request("DELETE", "/api/peers/bad%2Fid")
        self.assertEqual(code, 404)


class SendTests(TestCase):
    timeout = 20

    def setUp(self):
        self.h = ApiHarness(self)
        self.beta, (self.server, self.client, self.pump) = self.h.connect_beta()

    @defer.inlineCallbacks
    def test_send(self):
        code, body, _ = yield self.h.request(
            "POST", "/api/send", {"to": "beta", "msg_type": "task_status", "payload": {"task_id": "t1"}}
        )
        self.assertEqual(code, 200)
        self.assertEqual(body["to"], "beta")
        self.pump.flush()
        [(peer, message)] = [r for r in self.beta.received if r[1].msg_type == "task_status"]
        self.assertEqual((peer, message.id, message.payload), ("alpha", body["id"], {"task_id": "t1"}))

    @defer.inlineCallbacks
    def test_send_default_payload(self):
        code, body, _ = yield self.h.request("POST", "/api/send", {"to": "beta", "msg_type": "ack"})
        self.assertEqual(code, 200)
        self.pump.flush()
        self.assertEqual(self.beta.received[-1][1].payload, {})

    @defer.inlineCallbacks
    def test_unknown_peer(self):
        code, body, _ = yield self.h.request("POST", "/api/send", {"to": "nobody", "msg_type": "task_status", "payload": {}})
        self.assertEqual(code, 404)
        self.assertIn("nobody", body["error"])

    @defer.inlineCallbacks
    def test_not_connected(self):
        self.server.close("closed by the test")
        self.pump.flush()
        code, body, _ = yield self.h.request("POST", "/api/send", {"to": "beta", "msg_type": "task_status", "payload": {}})
        self.assertEqual(code, 409)
        self.assertIn("not connected", body["error"])

    @defer.inlineCallbacks
    def test_unsupported_type(self):
        for msg_type in ["challenge", "frobnicate"]:
            code, body, _ = yield self.h.request("POST", "/api/send", {"to": "beta", "msg_type": msg_type, "payload": {}})
            self.assertEqual(code, 400)
            self.assertIn(msg_type, body["error"])

    @defer.inlineCallbacks
    def test_broadcast(self):
        gamma, (_, _, pump_g) = self.h.connect_beta("gamma", host="10.0.0.3")
        code, body, _ = yield self.h.request("POST", "/api/broadcast", {"msg_type": "knowledge_sync", "payload": {"k": 1}})
        self.assertEqual(code, 200)
        self.assertEqual(sorted(body["ids"]), ["beta", "gamma"])
        self.assertEqual(set(body["ids"].values()), {body["id"]})
        self.pump.flush()
        pump_g.flush()
        for peer in (self.beta, gamma):
            self.assertEqual(peer.received[-1][1].id, body["id"])
        code, body, _ = yield self.h.request("POST", "/api/broadcast", {"msg_type": "handshake", "payload": {}})
        self.assertEqual(code, 400)

    @defer.inlineCallbacks
    def test_broadcast_nobody(self):
        self.server.close("closed by the test")
        self.pump.flush()
        code, body, _ = yield self.h.request("POST", "/api/broadcast", {"msg_type": "knowledge_sync", "payload": {}})
        self.assertEqual((code, body), (200, {"id": None, "ids": {}}))


class BodyTests(TestCase):
    """
    Malformed, oversized and mistyped request bodies.
    """

    timeout = 20

    def setUp(self):
        self.h = ApiHarness(self)

    @defer.inlineCallbacks
    def test_too_large(self):
        raw = b'{"msg_type": "ack", "payload": "' + b"x" * MAX_BODY + b'"}'
        code, body, _ = yield self.h.request("POST", "/api/broadcast", raw=raw)
        self.assertEqual(code, 413)
        self.assertIn("over", body["error"])

    def test_too_large_chunked(self):
        """
        A body without a Content-Length is cut off at the limit too.
        """
        request = ApiRequest(DummyChannel(), False)
        request.gotLength(None)
        request.handleContentChunk(b"x" * MAX_BODY)
        self.assertFalse(request.body_too_large)
        request.handleContentChunk(b"y")
        self.assertTrue(request.body_too_large)
        self.assertEqual(request.content.tell(), MAX_BODY)

    @defer.inlineCallbacks
    def test_malformed(self):
        for raw in [b"{", b"", b"[1, 2]", b'{"msg_type": NaN}', b"\xff"]:
            code, body, _ = yield self.h.request("POST", "/api/broadcast", raw=raw)
            self.assertEqual((raw, code), (raw, 400))
            self.assertIn("malformed JSON", body["error"])

    @defer.inlineCallbacks
    def test_fields(self):
        cases = [
            ("/api/send", {"to": "beta", "msg_type": "ack", "extra": 1}, "unknown field 'extra'"),
            ("/api/send", {"msg_type": "ack"}, "missing field 'to'"),
            ("/api/send", {"to": 7, "msg_type": "ack"}, "field 'to' must be a string"),
            ("/api/broadcast", {"msg_type": True}, "field 'msg_type' must be a string"),
            ("/api/peers", {"addr": ["x"]}, "field 'addr' must be a string"),
        ]
        for path, value, error in cases:
            code, body, _ = yield self.h.request("POST", path, value)
            self.assertEqual((path, code), (path, 400))
            self.assertIn(error, body["error"])
        code, body, _ = yield self.h.request("PUT", "/api/sessions", {"sessions": "all"})
        self.assertEqual(code, 400)
        self.assertIn("'sessions'", body["error"])


class SessionsTests(TestCase):
    timeout = 20

    def setUp(self):
        self.h = ApiHarness(self)
        self.beta, (self.server, self.client, self.pump) = self.h.connect_beta()

    @defer.inlineCallbacks
    def test_put_sessions(self):
        """
        PUT /api/sessions sets what this node's heartbeats carry.
        """
        sessions = [{"id": "s1", "cwd": "/src"}]
        code, body, _ = yield self.h.request("PUT", "/api/sessions", {"sessions": sessions, "worker_id": "w-1"})
        self.assertEqual((code, body), (200, {"sessions": 1, "worker_id": "w-1"}))
        self.h.node.mesh.start()
        self.addCleanup(self.h.node.mesh.stop)
        self.h.clock.advance(self.h.node.mesh.heartbeat_interval)
        self.pump.flush()
        [view] = self.beta.mesh.sessions().values()
        self.assertEqual((view.worker_id, view.sessions), ("w-1", sessions))
        code, body, _ = yield self.h.request("PUT", "/api/sessions", {"sessions": None})
        self.assertEqual((code, body), (200, {"sessions": None, "worker_id": None}))

    @defer.inlineCallbacks
    def test_workers(self):
        """
        GET /api/workers lists every peer's latest session list and its age.
        """
        code, body, _ = yield self.h.request("GET", "/api/workers")
        self.assertEqual((code, body), (200, {"workers": []}))
        self.beta.mesh.set_sessions([{"id": "s9"}], "beta-worker")
        self.beta.mesh.start()
        self.addCleanup(self.beta.mesh.stop)
        self.h.clock.advance(self.beta.mesh.heartbeat_interval)
        self.pump.flush()
        self.h.clock.advance(2)
        code, body, _ = yield self.h.request("GET", "/api/workers")
        self.assertEqual(
            body["workers"], [{"peer_id": "beta", "worker_id": "beta-worker", "sessions": [{"id": "s9"}], "age": 2.0}]
        )


class EventsTests(TestCase):
    """
    GET /api/events over real HTTP.
    """

    timeout = 20

    def setUp(self):
        self.h = ApiHarness(self)

    @defer.inlineCallbacks
    def test_stream(self):
        """
        Peer events and received messages arrive as C{data:} lines.
        """
        response, reader = yield self.h.stream()
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/event-stream; charset=utf-8"])
        yield wait_for(lambda: b"relaymesh events" in reader.data)
        self.assertEqual(len(self.h.control.streams), 1)
        beta, (server, client, pump) = self.h.connect_beta()
        beta.mesh.send("alpha", "task_status", {"task_id": "t1"})
        pump.flush()
        yield wait_for(lambda: any(e["event"] == "message" for e in reader.events()))
        events = reader.events()
        connected = [e for e in events if e["event"] == "peer_connected"]
        self.assertEqual(
            connected,
            [
                {
                    "event": "peer_connected",
                    "peer_id": "beta",
                    "address": "10.0.0.2:40000",
                    "direction": "inbound",
                    "time": round(self.h.clock.seconds(), 3),
                }
            ],
        )
        [message] = [e for e in events if e["event"] == "message"]
        self.assertEqual(message["from"], "beta")
        self.assertEqual(message["message"]["msg_type"], "task_status")
        self.assertEqual(message["message"]["payload"], {"task_id": "t1"})
        self.assertEqual(set(message["message"]), {"id", "msg_type", "from_peer", "timestamp", "payload"})
        server.close("closed by the test")
        pump.flush()
        yield wait_for(lambda: any(e["event"] == "peer_disconnected" for e in reader.events()))
        yield reader.close()
        yield wait_for(lambda: not self.h.control.streams)

    @defer.inlineCallbacks
    def test_types_filter(self):
        response, reader = yield self.h.stream("/api/events?types=connected,disconnected")
        yield wait_for(lambda: b"relaymesh events" in reader.data)
        beta, (server, client, pump) = self.h.connect_beta()
        beta.mesh.send("alpha", "task_status", {})
        pump.flush()
        server.close("closed by the test")
        pump.flush()
        yield wait_for(lambda: len(reader.events()) == 2)
        self.assertEqual([e["event"] for e in reader.events()], ["peer_connected", "peer_disconnected"])

    @defer.inlineCallbacks
    def test_unknown_type(self):
        code, body, _ = yield self.h.request("GET", "/api/events?types=message,bogus")
        self.assertEqual(code, 400)
        self.assertIn("'bogus'", body["error"])

    @defer.inlineCallbacks
    def test_cookie(self):
        """
        A browser's EventSource sends a cookie instead of the token: the
        node sets it (POST /api/cookie, with the token) HttpOnly,
        SameSite=Strict, for /api/events only, holding a value derived from
        the token; the token itself in a cookie opens nothing.
        """
        port = self.h.port.getHost().port
        code, body, response = yield self.h.request("POST", "/api/cookie")
        self.assertEqual(code, 200)
        self.assertEqual(body, {"cookie": f"relaymesh_token_{port}", "path": "/api/events"})
        [header] = response.headers.getRawHeaders(b"set-cookie")
        pair, *attributes = [part.strip() for part in header.split(b";")]
        name, _, value = pair.partition(b"=")
        self.assertEqual(name, f"relaymesh_token_{port}".encode())
        self.assertEqual(value, cookie_value(TOKEN))
        self.assertNotIn(TOKEN.encode(), header)
        self.assertEqual(
            sorted(a.lower() for a in attributes), [b"httponly", b"path=/api/events", b"samesite=strict"]
        )
        response, reader = yield self.h.stream(token=None, headers={"cookie": [b"a=b; " + pair]})
        self.assertEqual(response.code, 200)
        yield wait_for(lambda: b"relaymesh events" in reader.data)
        for cookie in [f"relaymesh_token_{port}={TOKEN}", f"relaymesh_token_{port}=nope"]:
            response, reader = yield self.h.stream(token=None, headers={"cookie": [cookie]})
            self.assertEqual((cookie, response.code), (cookie, 401))
        code, _, response = yield self.h.request("POST", "/api/cookie", token=None)
        self.assertEqual(code, 401)
        self.assertIsNone(response.headers.getRawHeaders(b"set-cookie"))
        code, body, response = yield self.h.request("DELETE", "/api/cookie", token=None)
        self.assertEqual((code, body["removed"]), (200, True))
        [header] = response.headers.getRawHeaders(b"set-cookie")
        self.assertTrue(header.startswith(f"relaymesh_token_{port}=;".encode()), header)
        self.assertIn(b"Max-Age=0", header)

    @defer.inlineCallbacks
    def test_closed_on_stop(self):
        """
        Closing the streams (the node stops) ends them cleanly.
        """
        response, reader = yield self.h.stream()
        yield wait_for(lambda: bool(self.h.control.streams))
        self.h.control.close_streams()
        yield reader.done
        self.assertEqual(self.h.control.streams, set())


class FakeRequest:
    """
    Just enough of a request for an L{EventStream}.
    """

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.headers: dict[bytes, bytes] = {}
        self.written: list[bytes] = []
        self.producer = None
        self.finished = False
        self._notify: list[defer.Deferred] = []

    def setHeader(self, name, value):
        self.headers[name] = value

    def registerProducer(self, producer, streaming):
        self.producer = (producer, streaming)

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        assert not self.finished
        self.written.append(data)

    def finish(self):
        self.finished = True
        for d in self._notify:
            d.callback(None)

    def notifyFinish(self):
        d = defer.Deferred()
        self._notify.append(d)
        return d

    def lose(self):
        for d in self._notify:
            d.errback(Exception("connection lost"))

    def events(self):
        return [json.loads(w[6:]) for w in self.written if w.startswith(b"data: ")]


class EventStreamTests(SynchronousTestCase):
    """
    L{EventStream} on a fake request, a fake mesh and a memory clock.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(EPOCH)
        self.mesh = FakeMesh()
        self.request = FakeRequest()

    def stream(self, wanted=None, max_backlog=1000):
        stream = EventStream(self.request, self.mesh, self.clock, wanted, 15.0, max_backlog)
        stream.start()
        return stream

    def message(self, size=10):
        return RelayMessage("msg_1_0", "task_status", "beta", 1, {"x": "y" * size})

    def test_producer(self):
        stream = self.stream()
        self.assertEqual(self.request.producer, (stream, True))
        self.assertEqual(self.request.headers[b"content-type"], b"text/event-stream; charset=utf-8")

    def test_keepalive(self):
        self.stream()
        del self.request.written[:]
        self.clock.advance(14.9)
        self.assertEqual(self.request.written, [])
        self.clock.advance(0.1)
        self.assertEqual(self.request.written, [b": keepalive\n\n"])

    def test_events(self):
        self.stream()
        self.mesh.emit(
            PeerEvent(
                EventKind.RECONNECT_SCHEDULED, "beta", "10.0.0.2:9847", Direction.OUTBOUND, delay=5.0
            )
        )
        self.mesh.emit(
            PeerEvent(EventKind.DENIED, None, "10.0.0.9:1", Direction.INBOUND, reason="bad proof")
        )
        self.mesh.deliver("beta", self.message())
        self.assertEqual(
            self.request.events(),
            [
                {
                    "event": "peer_reconnect_scheduled",
                    "peer_id": "beta",
                    "address": "10.0.0.2:9847",
                    "direction": "outbound",
                    "delay": 5.0,
                    "time": round(EPOCH, 3),
                },
                {
                    "event": "peer_denied",
                    "address": "10.0.0.9:1",
                    "direction": "inbound",
                    "reason": "bad proof",
                    "time": round(EPOCH, 3),
                },
                {"event": "message", "from": "beta", "message": self.message().to_dict(), "time": round(EPOCH, 3)},
            ],
        )

    def test_filter(self):
        """
        A stream that wants only peer events does not subscribe to messages,
        and sends only the kinds it wants.
        """
        self.stream(frozenset({"peer_denied"}))
        self.assertEqual(self.mesh.subscribers, [])
        self.assertEqual(len(self.mesh.watchers), 1)
        self.mesh.emit(PeerEvent(EventKind.CONNECTING, "beta", "10.0.0.2:9847", Direction.OUTBOUND))
        self.mesh.emit(
            PeerEvent(EventKind.DENIED, "beta", "10.0.0.2:9847", Direction.OUTBOUND, reason="no")
        )
        self.assertEqual([e["event"] for e in self.request.events()], ["peer_denied"])

    def test_slow_client(self):
        """
        A paused client that falls more than the backlog behind is dropped
        (its connection aborted), and the stream stops following the mesh.
        """
        stream = self.stream(max_backlog=1000)
        stream.pauseProducing()
        stream.send({"a": "x" * 500})
        self.assertFalse(self.request.transport.disconnecting)
        stream.resumeProducing()
        stream.pauseProducing()
        stream.send({"a": "x" * 500})
        stream.send({"a": "x" * 500})
        self.assertIsNotNone(stream.dropped)
        self.assertTrue(self.request.transport.disconnecting)
        count = len(self.request.written)
        stream.send(message_object("beta", self.message(), self.clock.seconds()))
        self.clock.advance(60)
        self.assertEqual(len(self.request.written), count)
        self.assertEqual((self.mesh.subscribers, self.mesh.watchers), ([], []))

    def test_client_gone(self):
        """
        When the client goes, the subscriptions and the keepalive end.
        """
        stream = self.stream()
        self.assertEqual((len(self.mesh.subscribers), len(self.mesh.watchers)), (1, 1))
        self.request.lose()
        self.assertEqual((self.mesh.subscribers, self.mesh.watchers), ([], []))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        stream.send({"late": True})
        self.assertEqual(self.request.events(), [])


class ErrorMappingTests(SynchronousTestCase):
    def test_mapping(self):
        """
        One table maps the mesh's exceptions to statuses.
        """
        for error, status in [
            (UnknownPeer("unknown peer 'x'"), 404),
            (PeerNotConnected("peer x is not connected"), 409),
            (UnsupportedMessageType("unknown message type 'y'"), 400),
            (WireError("message too long"), 400),
        ]:
            self.assertEqual(as_api_error(error).status, status)
            self.assertEqual(as_api_error(error).message, str(error))
        self.assertIsNone(as_api_error(RuntimeError("x")))
        self.assertEqual(as_api_error(ApiError(418, "teapot")).status, 418)

    def test_event_types(self):
        self.assertIsNone(parse_event_types([]))
        self.assertEqual(parse_event_types([b"message,connected", b"peer_denied"]), {"message", "peer_connected", "peer_denied"})
        with self.assertRaises(ApiError) as ctx:
            parse_event_types([b"message,nope"])
        self.assertEqual(ctx.exception.status, 400)


class DashboardTests(TestCase):
    timeout = 20

    def setUp(self):
        self.h = ApiHarness(self)

    @defer.inlineCallbacks
    def test_page(self):
        """
        GET / serves the dashboard without a token, under a policy that lets
        it load nothing from outside the node; it refers to nothing outside.
        """
        code, body, response = yield self.h.request("GET", "/", token=None)
        self.assertEqual(code, 200)
        self.assertTrue(body.startswith(b"<!DOCTYPE html>"))
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"])
        [policy] = response.headers.getRawHeaders(b"content-security-policy")
        self.assertIn(b"default-src 'none'", policy)
        self.assertIn(b"connect-src 'self'", policy)
        for needle in [b"http://", b"https://", b"//cdn", b"@import", b"src=\"http"]:
            self.assertNotIn(needle, body)
        for needle in [b"/api/events", b"/api/peers", b"/api/workers", b"EventSource", b"sessionStorage"]:
            self.assertIn(needle, body)

    @defer.inlineCallbacks
    def test_head_and_post(self):
        code, _, _ = yield self.h.request("HEAD", "/", token=None)
        self.assertEqual(code, 200)
        code, _, _ = yield self.h.request("POST", "/", token=None, raw=b"{}")
        self.assertEqual(code, 405)


class TokenTests(SynchronousTestCase):
    def test_created_private(self):
        path = os.path.join(self.mktemp(), "api-token")
        token = load_token(path)
        self.assertGreaterEqual(len(token), 40)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(load_token(path), token)

    def test_not_created(self):
        self.assertRaises(FileNotFoundError, load_token, self.mktemp(), create=False)

    def test_empty(self):
        path = self.mktemp()
        with open(path, "w"):
            pass
        from relaymesh.keystore import KeyStoreError

        self.assertRaises(KeyStoreError, load_token, path)

    def test_private(self):
        """
        A token file others may read is not private; one made here is.
        """
        path = os.path.join(self.mktemp(), "api-token")
        load_token(path)
        self.assertTrue(token_is_private(path))
        os.chmod(path, 0o644)
        self.assertFalse(token_is_private(path))


class ApiServiceTests(SynchronousTestCase):
    """
    The API as a child service of L{RelayService}, and the plugin options.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(EPOCH)
        self.keystore = KeyStore(self.mktemp())
        self.keystore.set_identity("alpha")

    def test_default_off(self):
        node = RelayService(self.keystore, listen=None, reactor=self.reactor)
        self.assertIsNone(node.api)

    def test_start_and_stop(self):
        """
        Starting makes the token file (mode 0600), listens, and records the
        API's URL in the data directory; stopping removes the URL.
        """
        node = RelayService(self.keystore, listen=None, api="tcp:9849:interface=127.0.0.1", reactor=self.reactor)
        self.assertIsInstance(node.api, ApiService)
        node.startService()
        [(port, factory, _, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface), (9849, "127.0.0.1"))
        token_file = os.path.join(self.keystore.path, "api-token")
        self.assertEqual(stat.S_IMODE(os.stat(token_file).st_mode), 0o600)
        self.assertEqual(node.api.control.token, load_token(token_file))
        url_file = os.path.join(self.keystore.path, "api-url")
        with open(url_file) as f:
            self.assertEqual(f.read().strip(), "http://127.0.0.1:9849")
        node.stopService()
        self.assertFalse(os.path.exists(url_file))

    def test_token_file_option(self):
        path = os.path.join(self.mktemp(), "token")
        node = RelayService(self.keystore, listen=None, api="tcp:0", api_token_file=path, reactor=self.reactor)
        node.startService()
        self.addCleanup(node.stopService)
        self.assertEqual(node.api.control.token, load_token(path))

    def test_port_taken(self):
        """
        A port that is taken fails the start, unless a fallback is given.
        """

        class Taken(MemoryReactorClock):
            def listenTCP(self, port, factory, backlog=50, interface=""):
                if port == 9849:
                    raise CannotListenError(interface, port, OSError("in use"))
                return MemoryReactorClock.listenTCP(self, port, factory, backlog, interface)

        reactor_ = Taken()
        node = RelayService(self.keystore, listen=None, api="tcp:9849", reactor=reactor_)
        node.startService()
        error = self.failureResultOf(node.whenStarted(), StartupError).value
        self.assertIsInstance(error.__cause__, CannotListenError)
        self.assertFalse(node.running)
        node = RelayService(
            self.keystore,
            listen=None,
            api="tcp:9849:interface=127.0.0.1",
            api_fallback="tcp:0:interface=127.0.0.1",
            reactor=reactor_,
        )
        node.startService()
        self.addCleanup(node.stopService)
        self.assertEqual([s[0] for s in reactor_.tcpServers], [0])
        self.flushLoggedErrors()

    def parse(self, *args):
        options = tap.Options()
        options.parseOptions(["--data-dir", self.keystore.path, *args])
        return options

    def test_options(self):
        options = self.parse()
        self.assertEqual(options["api"], "tcp:9849:interface=127.0.0.1")
        self.assertIsNone(options["api-token-file"])
        self.assertFalse(options["metrics-public"])
        node = tap.makeService(options, reactor=self.reactor)
        self.assertIsNotNone(node.api)
        self.assertIsNotNone(node.api.fallback)
        options = self.parse("--api", "tcp:7000", "--api-token-file", "/tmp/x-token", "--metrics-public")
        self.assertEqual((options["api"], options["api-token-file"], options["metrics-public"]), ("tcp:7000", "/tmp/x-token", True))
        node = tap.makeService(options, reactor=self.reactor)
        self.assertIsNone(node.api.fallback)
        self.assertTrue(node.api.control.metrics_public)
        self.assertEqual(node.api.token_file, "/tmp/x-token")
        self.assertIsNone(self.parse("--api", "none")["api"])
        self.assertIsNone(tap.makeService(self.parse("--api", "None"), reactor=self.reactor).api)

    def test_option_errors(self):
        for args, fragment in [
            (["--api", "bogus:1"], "--api"),
            (["--api-token-file", ""], "--api-token-file"),
            (["--api-token-file", self.mktemp() + "/"], "--api-token-file"),
        ]:
            if args[-1].endswith("/"):
                os.makedirs(args[-1])
            with self.assertRaises(usage.UsageError) as ctx:
                self.parse(*args)
            self.assertIn(fragment, str(ctx.exception))
            self.assertNotIn("\n", str(ctx.exception))
