"""
Tests for L{relaymesh.cli.live} and L{relaymesh.control.client}: the live
commands against real nodes in this process, over loopback HTTP. Each
command runs in a thread, as a shell user runs it beside the node.
"""

from __future__ import annotations

import json
import os
import socket
from io import StringIO

from twisted.internet import defer, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaymesh.cli.live import describe_event, duration
from relaymesh.cli.main import main
from relaymesh.control.client import NodeClient, NodeNotRunning, TokenMissing, read_token, resolve_url
from relaymesh.keystore import KeyStore
from relaymesh.service import RelayService
from relaymesh.test.realtime import loopback_node, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class LiveCommandTests(TestCase):
    """
    Two nodes, alpha and beta (which dials alpha), each with its API on a
    free loopback port, driven with the C{relaymesh} command.
    """

    timeout = 30

    def setUp(self):
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "RELAYMESH_API"})
        self.alpha = self.make_node("alpha")
        alpha_port = self.alpha.listener.port.getHost().port
        self.beta = self.make_node("beta", peers=[f"alpha@127.0.0.1:{alpha_port}"], start=False)
        self.pair(self.alpha, self.beta)
        self.beta.startService()
        return wait_for(lambda: self.alpha.mesh.is_connected("beta") and self.beta.mesh.is_connected("alpha"), 10)

    def make_node(self, identity: str, peers=(), start: bool = True) -> RelayService:
        return loopback_node(self, identity, peers, start)

    @staticmethod
    def pair(a: RelayService, b: RelayService) -> None:
        key = os.urandom(32)
        a.keystore.set_key(b.mesh.identity, key)
        b.keystore.set_key(a.mesh.identity, key)

    def run_cli(self, node: RelayService | str, *argv: str) -> defer.Deferred:
        """
        Run C{relaymesh --data-dir DIR ARGV...} in a thread; fire with
        C{(status, stdout, stderr)}.
        """
        data_dir = node if isinstance(node, str) else node.keystore.path
        stdout, stderr = StringIO(), StringIO()

        def run():
            status = main(["--data-dir", data_dir, *argv], stdout=stdout, stderr=stderr)
            return status, stdout.getvalue(), stderr.getvalue()

        return threads.deferToThread(run)

    @defer.inlineCallbacks
    def test_watch_and_send(self):
        """
        The README's walk-through: watch on one node, send from the other,
        see the message arrive, one line per event.
        """
        watching = self.run_cli(self.alpha, "watch", "--count", "1")
        yield wait_for(lambda: bool(self.alpha.api.control.streams), 10)
        status, out, err = yield self.run_cli(self.beta, "send", "alpha", "task_status", '{"task_id": "t1", "status": "done"}')
        self.assertEqual((status, err), (0, ""))
        self.assertRegex(out, r"^Sent task_status msg_\d+_\d+_[0-9a-f]+ to alpha\.\n$")
        message_id = out.split()[2]
        status, out, err = yield watching
        self.assertEqual((status, err), (0, ""))
        self.assertRegex(
            out,
            r"^\d\d:\d\d:\d\d message from beta: task_status "
            r'\{"task_id":"t1","status":"done"\} \(' + message_id + r"\)\n$",
        )

    @defer.inlineCallbacks
    def test_watch_hostile_message(self):
        """
        A peer chooses its messages' ids and payloads: terminal escapes in
        them (erase the line and write a fake event, set the clipboard with
        OSC 52, turn the text around) are shown as escapes, one line per
        event; with --json the line is ASCII-only JSON.
        """
        hostile = "\x1b[2K\r12:00:00 gamma connected\x1b]52;c;ZXZpbA==\x07\u202e\x9b31m"
        for json_output in (False, True):
            message = {"id": hostile + str(json_output), "msg_type": "task_status", "from_peer": "beta",
                       "timestamp": 1, "payload": {"note": hostile}}  # fmt: skip
            line = json.dumps(message).encode()
            argv = ["--json"] * json_output + ["watch", "--count", "1"]
            watching = self.run_cli(self.alpha, *argv)
            yield wait_for(lambda: bool(self.alpha.api.control.streams), 10)
            self.assertTrue(self.beta.mesh.send_line("alpha", line, "task_status"))
            status, out, err = yield watching
            self.assertEqual((status, err), (0, ""))
            self.assertEqual(out.count("\n"), 1)
            self.assertTrue(out[:-1].isprintable(), repr(out))
            if json_output:
                self.assertTrue(out.isascii())
                self.assertEqual(json.loads(out)["message"], message)
            else:
                self.assertIn("\\x1b[2K\\r12:00:00 gamma connected\\x1b]52;c;ZXZpbA==\\x07\\u202e\\x9b31m", out)
            yield wait_for(lambda: not self.alpha.api.control.streams, 10)

    @defer.inlineCallbacks
    def test_watch_json_and_types(self):
        watching = self.run_cli(self.alpha, "--json", "watch", "--types", "disconnected", "--count", "1")
        yield wait_for(lambda: bool(self.alpha.api.control.streams), 10)
        self.beta.mesh.send("alpha", "task_status", {})  # filtered out
        self.alpha.mesh.disconnect("beta")
        status, out, err = yield watching
        self.assertEqual((status, err), (0, ""))
        event = json.loads(out)
        self.assertEqual((event["event"], event["peer_id"]), ("peer_disconnected", "beta"))

    @defer.inlineCallbacks
    def test_watch_sessions_only_when_named(self):
        """
        A node's own list changes at every refresh: watch shows session
        lists only with --types sessions.
        """
        watching = self.run_cli(self.alpha, "watch", "--count", "1")
        yield wait_for(lambda: bool(self.alpha.api.control.streams), 10)
        self.alpha.mesh.set_sessions([{"pid": 1, "status": "Idle"}])
        self.beta.mesh.send("alpha", "task_status", {})
        status, out, err = yield watching
        self.assertIn("message from beta: task_status", out)
        yield wait_for(lambda: not self.alpha.api.control.streams, 10)
        watching = self.run_cli(self.alpha, "watch", "--types", "sessions", "--count", "1")
        yield wait_for(lambda: bool(self.alpha.api.control.streams), 10)
        self.alpha.mesh.set_sessions([{"pid": 1, "status": "Processing"}])
        status, out, err = yield watching
        self.assertRegex(out, r"^\d\d:\d\d:\d\d this node's sessions: 1 \(1 Processing\)\n$")

    @defer.inlineCallbacks
    def test_sessions(self):
        """
        relaymesh sessions lists the sessions of the node and its peers, as
        a table or as the API's JSON.
        """
        self.beta.mesh.set_sessions([{"pid": 42, "project": "website", "status": "Idle", "cost_usd": 1.25}])
        yield wait_for(lambda: "beta" in self.alpha.mesh.sessions(), 10)
        status, out, err = yield self.run_cli(self.alpha, "sessions")
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[1].split()[:4], ["beta", "website", "42", "Idle"])
        self.assertEqual(lines[-2], "1 session on 1 machine: 1 Idle; $1.25 in all")
        self.assertEqual(lines[-1], "(This node's own sessions come from --sessions api.)")
        status, out, err = yield self.run_cli(self.alpha, "--json", "sessions")
        self.assertEqual(json.loads(out)["sessions"][0]["peer_id"], "beta")

    @defer.inlineCallbacks
    def test_watch_stream_ends(self):
        """
        When the node stops, watch says the stream closed, status 1.
        """
        watching = self.run_cli(self.alpha, "watch")
        yield wait_for(lambda: bool(self.alpha.api.control.streams), 10)
        self.alpha.api.control.close_streams()
        status, out, err = yield watching
        self.assertEqual(status, 1)
        self.assertIn("closed the event stream", err)

    @defer.inlineCallbacks
    def test_status(self):
        status, out, err = yield self.run_cli(self.alpha, "status")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("alpha (relaymesh ", out)
        self.assertIn("1 connected of 1 known", out)
        self.assertIn(self.alpha.api.control.api_address, out)
        status, out, err = yield self.run_cli(self.alpha, "status", "--json")
        self.assertEqual(json.loads(out)["identity"], "alpha")

    @defer.inlineCallbacks
    def test_peers_live(self):
        status, out, err = yield self.run_cli(self.alpha, "peers")
        self.assertEqual((status, err), (0, ""))
        header, row, pending = out.splitlines()
        self.assertEqual(
            header.split(),
            ["PEER", "ID", "STATE", "ADDRESS", "SOURCE", "LINK", "LAST", "SEEN", "RTT", "MSGS", "IN/OUT"]
            + ["PAIRED", "VIA", "LAST", "ERROR"],
        )
        self.assertEqual(row.split()[:2], ["beta", "connected"])
        # relaymesh peers upgrade their link (the column, found by its
        # header: SOURCE may name a remembered address too)
        self.assertEqual(row[header.index(" LINK ") + 1 :].split()[0], "tls")
        self.assertEqual(pending, "Pending pairing key: none")
        status, out, err = yield self.run_cli(self.alpha, "peers", "--json")
        body = json.loads(out)
        self.assertTrue(body["live"])
        self.assertEqual(body["peers"][0]["state"], "connected")
        self.assertEqual((body["peers"][0]["encrypted"], body["peers"][0]["link"]), (True, "tls"))

    @defer.inlineCallbacks
    def test_peers_offline(self):
        """
        Without a running node, peers lists the stored peers, as before.
        """
        data_dir = self.alpha.keystore.path
        yield self.alpha.stopService()
        with open(os.path.join(data_dir, "api-token")) as f:
            self.assertTrue(f.read().strip())  # a node ran here
        status, out, err = yield self.run_cli(data_dir, "peers", "--api", f"http://127.0.0.1:{free_port()}")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out.split()[:8], ["PEER", "ID", "ADDRESS", "SOURCE", "LAST", "SEEN", "PAIRED", "VIA"])
        self.assertIn("beta", out)

    @defer.inlineCallbacks
    def test_broadcast(self):
        received = []
        self.alpha.mesh.subscribe(lambda peer, m: received.append((peer, m.msg_type)), "knowledge_sync")
        status, out, err = yield self.run_cli(self.beta, "broadcast", "knowledge_sync", '{"k": 1}')
        self.assertEqual((status, err), (0, ""))
        self.assertRegex(out, r"^Sent knowledge_sync msg_\S+ to 1 peer: alpha\.\n$")
        yield wait_for(lambda: received == [("beta", "knowledge_sync")], 5)

    @defer.inlineCallbacks
    def test_send_errors(self):
        """
        Refused requests are user errors (status 2) with the node's reason.
        """
        for args, fragment in [
            (["send", "nobody", "task_status", "{}"], "unknown peer 'nobody'"),
            (["send", "alpha", "challenge", "{}"], "handshake"),
            (["send", "alpha", "task_status", "{nope"], "not valid JSON"),
            (["broadcast", "frobnicate", "{}"], "frobnicate"),
        ]:
            status, out, err = yield self.run_cli(self.beta, *args)
            self.assertEqual((args, status, out), (args, 2, ""))
            self.assertTrue(err.startswith("relaymesh: error: "), err)
            self.assertIn(fragment, err)
            self.assertEqual(err.count("\n"), 1)
        self.alpha.mesh.disconnect("beta")
        yield wait_for(lambda: not self.beta.mesh.is_connected("alpha"), 5)
        status, out, err = yield self.run_cli(self.beta, "send", "alpha", "task_status", "{}")
        self.assertEqual(status, 2)
        self.assertIn("not connected", err)

    @defer.inlineCallbacks
    def test_wrong_token(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not-the-token\n")
        status, out, err = yield self.run_cli(self.alpha, "status", "--api-token-file", path)
        self.assertEqual((status, out), (2, ""))
        self.assertIn(f"did not prove that it holds the API token in {path}", err)
        self.assertIn("the token was not sent", err)
        self.assertEqual(err.count("\n"), 1)

    @defer.inlineCallbacks
    def test_connect_and_disconnect(self):
        """
        connect makes the node dial a new peer at run time; disconnect
        closes it and stops the dialling.
        """
        gamma = self.make_node("gamma")
        self.pair(self.alpha, gamma)
        port = gamma.listener.port.getHost().port
        status, out, err = yield self.run_cli(self.alpha, "connect", f"gamma@127.0.0.1:{port}", "--wait", "10")
        self.assertEqual((status, out, err), (0, "Connected to gamma.\n", ""))
        self.assertTrue(gamma.mesh.is_connected("alpha"))
        status, out, err = yield self.run_cli(self.alpha, "disconnect", "gamma")
        remembered = (
            " Its address is remembered: the node redials it when it starts again "
            "(relaymesh disconnect gamma --forget-address forgets it).\n"
        )
        self.assertEqual((status, out, err), (0, "Disconnected gamma; stopped dialling gamma." + remembered, ""))
        self.assertEqual([o.target.peer_id for o in self.alpha.outbound()], [])
        yield wait_for(lambda: not gamma.mesh.is_connected("alpha"), 5)
        status, out, err = yield self.run_cli(self.alpha, "disconnect", "gamma")
        self.assertEqual(out, "gamma was neither connected nor dialled." + remembered)
        status, out, err = yield self.run_cli(self.alpha, "disconnect", "nobody")
        self.assertEqual(status, 2)
        self.assertIn("unknown peer", err)
        status, out, err = yield self.run_cli(self.alpha, "connect", "delta@127.0.0.1:1")
        self.assertEqual(status, 2)
        self.assertIn("pair first", err)

    @defer.inlineCallbacks
    def test_connect_plain(self):
        gamma = self.make_node("gamma")
        self.pair(self.alpha, gamma)
        port = gamma.listener.port.getHost().port
        status, out, err = yield self.run_cli(self.alpha, "connect", f"gamma@127.0.0.1:{port}")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("Dialling gamma@127.0.0.1:", out)
        yield wait_for(lambda: self.alpha.mesh.is_connected("gamma"), 10)


class NotRunningTests(SynchronousTestCase):
    """
    With no node to talk to, every live command says so on one line, with
    how to start one, and exits with status 1.
    """

    def setUp(self):
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "RELAYMESH_API"})
        self.data_dir = self.mktemp()
        os.makedirs(self.data_dir)

    def run_cli(self, *argv):
        stdout, stderr = StringIO(), StringIO()
        status = main(["--data-dir", self.data_dir, *argv], stdout=stdout, stderr=stderr)
        return status, stdout.getvalue(), stderr.getvalue()

    def test_no_token(self):
        for argv in [
            ["status"],
            ["send", "beta", "task_status", "{}"],
            ["broadcast", "task_status", "{}"],
            ["watch"],
            ["connect", "beta@127.0.0.1:9847"],
            ["disconnect", "beta"],
        ]:
            status, out, err = self.run_cli(*argv)
            self.assertEqual((argv, status, out), (argv, 1, ""))
            self.assertEqual(err.count("\n"), 1, err)
            self.assertIn(f"no node running on {self.data_dir} (no api-url file)", err)
            self.assertIn(f"start one with: twistd -n relaymesh --data-dir {self.data_dir}", err)

    def test_nothing_listening(self):
        with open(os.path.join(self.data_dir, "api-token"), "w") as f:
            f.write("token\n")
        url = f"http://127.0.0.1:{free_port()}"
        status, out, err = self.run_cli("status", "--api", url)
        self.assertEqual(status, 1)
        self.assertEqual(err, f"relaymesh: no node is running at {url}; start one with: twistd -n relaymesh --data-dir {self.data_dir}\n")

    def test_peers_falls_back(self):
        KeyStore(self.data_dir).set_key("beta", os.urandom(32))
        with open(os.path.join(self.data_dir, "api-token"), "w") as f:
            f.write("token\n")
        with open(os.path.join(self.data_dir, "api-url"), "w") as f:
            f.write(f"http://127.0.0.1:{free_port()}\n")
        status, out, err = self.run_cli("peers")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("beta", out)
        self.assertIn("Pending pairing key: none", out)

    def test_peers_hostile_address(self):
        """
        The stored list shows a peer's recorded address (from an invite it
        sent) without acting on escapes in it.
        """
        store = KeyStore(self.data_dir)
        store.set_key("beta", os.urandom(32))
        store.replace_meta("beta", {"addr": "\x1b]52;c;ZXZpbA==\x07h:1", "paired_via": "\x1b[31mlink"})
        status, out, err = self.run_cli("peers")
        self.assertEqual((status, err), (0, ""))
        self.assertTrue(all(line.isprintable() for line in out.splitlines()), repr(out))
        self.assertIn("\\x1b]52;c;ZXZpbA==\\x07h:1", out)
        self.assertIn("\\x1b[31mlink", out)

    def test_bad_url(self):
        with open(os.path.join(self.data_dir, "api-token"), "w") as f:
            f.write("token\n")
        status, out, err = self.run_cli("status", "--api", "ftp://x")
        self.assertEqual(status, 2)
        self.assertIn("not an http:// URL", err)


class ClientTests(SynchronousTestCase):
    def test_resolve_url(self):
        """
        --api, then $RELAYMESH_API, then the data directory's api-url (and
        no default: see test_cli_consistency).
        """
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        environ = {k: v for k, v in os.environ.items() if k != "RELAYMESH_API"}
        self.patch(os, "environ", environ)
        with open(os.path.join(data_dir, "api-url"), "w") as f:
            f.write("http://127.0.0.1:5000\n")
        self.assertEqual(resolve_url(data_dir), "http://127.0.0.1:5000")
        environ["RELAYMESH_API"] = "http://[::1]:6000/"
        self.assertEqual(resolve_url(data_dir), "http://[::1]:6000")
        self.assertEqual(resolve_url(data_dir, "http://h:7"), "http://h:7")

    def test_token(self):
        path = self.mktemp()
        self.assertRaises(TokenMissing, read_token, path)
        with open(path, "w") as f:
            f.write("  abc \n")
        self.assertEqual(read_token(path), "abc")

    def test_refused(self):
        client = NodeClient(f"http://127.0.0.1:{free_port()}", "t", timeout=2)
        self.assertRaises(NodeNotRunning, client.call, "GET", "/api/status")
        self.assertRaises(ValueError, NodeClient, "127.0.0.1:9849", "t")

    def test_describe(self):
        self.assertEqual(
            describe_event(
                {"event": "peer_reconnect_scheduled", "peer_id": "b", "address": "h:1", "delay": 5.0, "time": 0}
            )[9:],
            "reconnecting to b in 5 s",
        )
        self.assertEqual(describe_event({"event": "peer_denied", "address": "h:1", "direction": "inbound", "reason": "no"})[9:],
                         "handshake denied with h:1 (inbound): no")
        self.assertEqual(duration(3725), "1h 2m")
        self.assertEqual(duration(65), "1m 5s")
