"""
Tests for the consistency of the C{relaymesh} command: the global options
before or after the command, the hint when no node can be reached, and that
nothing is asked of whatever answers on the default API port.
"""

from __future__ import annotations

import json
import os
import shutil
from io import StringIO

from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaymesh.cli import dashboard, live
from relaymesh.cli import pairing as cli_pairing
from relaymesh.cli.main import main
from relaymesh.control import resources
from relaymesh.control.client import NoApiUrl, resolve_url
from relaymesh.dispatch import sendable
from relaymesh.errors import UnsupportedMessageType
from relaymesh.join import JoinResult
from relaymesh.keystore import KeyStore
from relaymesh.service import RelayService
from relaymesh.test.realtime import wait_for


def run(argv: list[str]) -> tuple[int, str, str]:
    stdout, stderr = StringIO(), StringIO()
    status = main(argv, stdout=stdout, stderr=stderr)
    return status, stdout.getvalue(), stderr.getvalue()


class NodeCase(TestCase):
    """
    One node, alpha, with its API on a free loopback port.
    """

    timeout = 30

    def setUp(self):
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "RELAYMESH_API"})
        self.store = KeyStore(self.mktemp())
        self.store.set_identity("alpha")
        self.node = RelayService(
            self.store, listen="tcp:0:interface=127.0.0.1", api="tcp:0:interface=127.0.0.1", reactor=reactor
        )
        self.node.startService()
        self.addCleanup(lambda: self.node.stopService() if self.node.running else None)
        return wait_for(lambda: self.node.api.control.api_address is not None, 10)

    def url(self) -> str:
        return f"http://127.0.0.1:{self.node.api.port.getHost().port}"

    def elsewhere(self) -> tuple[str, str]:
        """
        Another data directory, without api-url, and a copy of the node's
        token file outside it: only the options can lead there.
        """
        other = self.mktemp()
        os.makedirs(other)
        token = os.path.join(self.mktemp() + "-token")
        shutil.copy(os.path.join(self.store.path, "api-token"), token)
        return other, token

    def cli(self, *argv: str) -> defer.Deferred:
        return threads.deferToThread(run, list(argv))


class GlobalOptionsTests(NodeCase):
    """
    The node reached with C{--api} and C{--api-token-file} given before or
    after the command.
    """

    @defer.inlineCallbacks
    def test_before_and_after(self):
        """
        C{--api}, C{--api-token-file}, C{--data-dir} and C{--json} work on
        either side of the command, in any mix.
        """
        other, token = self.elsewhere()
        url = self.url()
        for argv in [
            ["--data-dir", other, "--api", url, "--api-token-file", token, "--json", "status"],
            ["status", "--data-dir", other, "--api", url, "--api-token-file", token, "--json"],
            ["--api", url, "status", "--api-token-file", token, "--data-dir", other, "--json"],
            ["--json", "--api-token-file", token, "status", "--api", url, "--data-dir", other],
        ]:
            status, out, err = yield self.cli(*argv)
            self.assertEqual((argv, status, err), (argv, 0, ""))
            self.assertEqual(json.loads(out)["identity"], "alpha")

    @defer.inlineCallbacks
    def test_invite_finds_node_by_api(self):
        """
        C{invite --api URL} asks the node at URL for the port it accepts
        peers on, when the data directory has no api-url.
        """
        os.remove(os.path.join(self.store.path, "api-url"))
        port = self.node.listener.port.getHost().port
        for argv in [
            ["--data-dir", self.store.path, "--api", self.url(), "invite", "--host", "127.0.0.1", "--json"],
            ["--data-dir", self.store.path, "invite", "--host", "127.0.0.1", "--json", "--api", self.url()],
        ]:
            status, out, err = yield self.cli(*argv)
            self.assertEqual((status, err), (0, ""))
            self.assertEqual(json.loads(out)["port"], port)
        status, out, err = yield self.cli("--data-dir", self.store.path, "invite", "--host", "127.0.0.1", "--json")
        self.assertEqual(json.loads(out)["port"], 9847)

    @defer.inlineCallbacks
    def test_join_asks_node_by_api(self):
        """
        C{join --api URL} asks the node at URL to dial the peer just paired
        with (the pairing itself is done in memory here: the command runs
        in this process, whose reactor already runs).
        """

        def paired(store, invite, reactor, certificate=None, replace=False):
            store.set_key(invite.identity, os.urandom(32))
            return defer.succeed(JoinResult(invite.identity, invite.addr, invite.form))

        self.patch(cli_pairing, "join_directly", paired)
        self.patch(cli_pairing, "run_reactor", lambda work: work(None).result)
        os.remove(os.path.join(self.store.path, "api-url"))
        link = "relaymesh://beta@127.0.0.1:1/k/0001020304050607"
        status, out, err = yield self.cli("--data-dir", self.store.path, "join", link, "--json")
        self.assertEqual((status, err), (0, ""))
        self.assertFalse(json.loads(out)["node_dialling"])
        self.store.forget("beta")
        status, out, err = yield self.cli("--data-dir", self.store.path, "join", link, "--api", self.url(), "--json")
        self.assertEqual((status, err), (0, ""))
        self.assertTrue(json.loads(out)["node_dialling"])
        self.assertEqual([a.peer_id for a in self.node.dialled()], ["beta"])


class NoNodeTests(SynchronousTestCase):
    """
    Without an api-url file (and no --api nor $RELAYMESH_API), the live
    commands say that no node runs on the data directory, and how to start
    one, without asking anything of the default port.
    """

    def setUp(self):
        self.environ = {k: v for k, v in os.environ.items() if k != "RELAYMESH_API"}
        self.patch(os, "environ", self.environ)
        self.data_dir = self.mktemp()
        os.makedirs(self.data_dir)
        with open(os.path.join(self.data_dir, "api-token"), "w") as f:
            f.write("token\n")

    def test_resolve_url(self):
        """
        --api, then $RELAYMESH_API, then the data directory's api-url; with
        none, L{NoApiUrl}.
        """
        error = self.assertRaises(NoApiUrl, resolve_url, self.data_dir)
        self.assertEqual(str(error), f"no node running on {self.data_dir} (no api-url file)")
        self.assertEqual(resolve_url(self.data_dir, "http://h:7/"), "http://h:7")
        self.environ["RELAYMESH_API"] = "http://[::1]:6000/"
        self.assertEqual(resolve_url(self.data_dir), "http://[::1]:6000")

    def test_no_api_url(self):
        """
        One line: no node running on DATA_DIR (no api-url file), and the
        twistd command that starts one; exit status 1. (A node started with
        --api none says so in its api-url: see test_cli_edges.)
        """
        for argv in [["status"], ["send", "beta", "task_status", "{}"], ["watch"], ["broadcast", "task_status", "{}"]]:
            status, out, err = run(["--data-dir", self.data_dir, *argv])
            self.assertEqual((status, out), (1, ""))
            self.assertEqual(
                err,
                f"relaymesh: no node running on {self.data_dir} (no api-url file); start one with: "
                f"twistd -n relaymesh --data-dir {self.data_dir}\n",
            )

    def test_hint_without_data_dir(self):
        """
        With the default data directory, the hint names no --data-dir.
        """
        self.environ["RELAYMESH_HOME"] = self.data_dir
        status, out, err = run(["status"])
        self.assertEqual(status, 1)
        self.assertTrue(err.endswith("; start one with: twistd -n relaymesh\n"), err)


class ReliableSendTests(TestCase):
    """
    C{send --reliable} between two nodes with outboxes, beta dialling alpha.
    """

    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "RELAYMESH_API"})
        self.alpha = self.make_node("alpha")
        yield self.alpha.whenStarted()
        port = self.alpha.listener.port.getHost().port
        self.beta = self.make_node("beta", peers=[f"alpha@127.0.0.1:{port}"])
        yield self.beta.whenStarted()
        yield wait_for(lambda: self.beta.mesh.is_connected("alpha") and self.alpha.mesh.is_connected("beta"), 10)
        self.received = []
        self.alpha.mesh.subscribe(lambda peer_id, message: self.received.append(message), "task_status")

    def make_node(self, identity: str, peers=()) -> RelayService:
        store = KeyStore(self.mktemp())
        store.set_identity(identity)
        store.set_key("beta" if identity == "alpha" else "alpha", b"k" * 32)
        node = RelayService(
            store, listen="tcp:0:interface=127.0.0.1", api="tcp:0:interface=127.0.0.1",
            peers=peers, outbox=True, reactor=reactor,
        )  # fmt: skip
        node.startService()
        self.addCleanup(lambda: node.stopService() if node.running else None)
        return node

    def send(self, *argv: str) -> defer.Deferred:
        return threads.deferToThread(run, ["--data-dir", self.beta.keystore.path, "send", "alpha", *argv])

    @defer.inlineCallbacks
    def test_delivered(self):
        """
        It waits for alpha's ack and says the message was delivered.
        """
        status, out, err = yield self.send("task_status", '{"task_id": "t1"}', "--reliable")
        self.assertEqual((status, err), (0, ""))
        self.assertRegex(out, r"^Delivered task_status msg_\d+_\d+_[0-9a-f]+ to alpha \(acknowledged\)\.\n$")
        [message] = self.received
        self.assertEqual(message.id, out.split()[2])

    @defer.inlineCallbacks
    def test_queued(self):
        """
        With C{--wait 0} it does not wait: the message is queued, and its id
        is printed (and it arrives all the same).
        """
        status, out, err = yield self.send("task_status", "{}", "--reliable", "--wait", "0", "--json")
        self.assertEqual((status, err), (0, ""))
        answer = json.loads(out)
        self.assertEqual((answer["to"], answer["reliable"], answer["delivered"]), ("alpha", True, False))
        yield wait_for(lambda: bool(self.received), 10)
        self.assertEqual([m.id for m in self.received], [answer["id"]])
        status, out, err = yield self.send("task_status", "{}", "--reliable", "--wait", "0")
        self.assertRegex(
            out,
            r"^Queued task_status msg_\S+ for alpha: the node sends it again until alpha acknowledges "
            r"it, across reconnects and restarts\.\n$",
        )

    @defer.inlineCallbacks
    def test_wait_errors(self):
        """
        C{--wait} goes only with C{--reliable}, from 0 to the API's limit;
        nothing is sent otherwise.
        """
        status, out, err = yield self.send("task_status", "{}", "--wait", "3")
        self.assertEqual((status, out, err), (2, "", "relaymesh: error: --wait goes only with --reliable\n"))
        status, out, err = yield self.send("task_status", "{}", "--reliable", "--wait", "31")
        self.assertEqual((status, out), (2, ""))
        self.assertIn("'31': give a number of seconds from 0 to 30", err)
        self.assertEqual(live.MAX_SEND_WAIT, resources.MAX_SEND_WAIT)
        self.assertEqual(self.received, [])

    @defer.inlineCallbacks
    def test_unknown_type(self):
        """
        The node's refusal of an unknown type lists the types it sends.
        """
        for argv in [("hello", "{}"), ("hello", "{}", "--reliable")]:
            status, out, err = yield self.send(*argv)
            self.assertEqual((status, out), (2, ""))
            self.assertEqual(
                err, f"relaymesh: error: unknown message type 'hello': send one of {MessageTypeTests.TYPES}\n"
            )


class MessageTypeTests(SynchronousTestCase):
    """
    A message type that cannot be sent gets an error that lists the ones
    that can; C{send --help} and C{broadcast --help} list them too.
    """

    TYPES = (
        "heartbeat, ack, delegate_task, task_status, task_handoff, task_interrupt, "
        "knowledge_sync, knowledge_request, knowledge_snapshot"
    )

    def test_unknown(self):
        error = self.assertRaises(UnsupportedMessageType, sendable, "hello")
        self.assertEqual(str(error), f"unknown message type 'hello': send one of {self.TYPES}")
        error = self.assertRaises(UnsupportedMessageType, sendable, "handshake")
        self.assertEqual(str(error), f"handshake belongs to the handshake: send one of {self.TYPES}")
        self.assertEqual(sendable("task_status"), "task_status")

    def test_long_unknown(self):
        """
        A long unknown type is cut short in the error, which stays one line.
        """
        error = self.assertRaises(UnsupportedMessageType, sendable, "x" * 10000 + "\n")
        self.assertLess(len(str(error)), 300)
        self.assertNotIn("\n", str(error))

    def test_help(self):
        for command in ("send", "broadcast"):
            status, out, err = run([command, "--help"])
            self.assertEqual(status, 0)
            self.assertIn(self.TYPES, " ".join(out.split()))


def vector() -> dict:
    path = os.path.join(os.path.dirname(__file__), "fixtures", "claudectl-0.49.2-codes.json")
    with open(path) as f:
        invite: dict = json.load(f)["invites"][0]
        return invite


class ParseErrorTests(SynchronousTestCase):
    """
    What C{join}, C{accept} and C{invite} say about input they cannot use
    names the real problem, on one line, and nothing is tried.
    """

    def setUp(self):
        self.data_dir = self.mktemp()
        self.joined = []

        def join(store, invite, reactor, certificate=None, replace=False):
            self.joined.append(invite)
            return defer.succeed(JoinResult(invite.identity or "alpha", invite.addr, invite.form))

        self.patch(cli_pairing, "join_directly", join)
        self.patch(cli_pairing, "run_reactor", lambda work: work(None).result)
        self.patch(cli_pairing, "running_node", lambda context, args, identity: None)

    def fails(self, *argv: str) -> str:
        status, out, err = run(["--data-dir", self.data_dir, *argv])
        self.assertEqual((argv, status, out), (argv, 2, ""))
        self.assertEqual(err.count("\n"), 1, err)
        return err

    def test_words_with_spaces(self):
        """
        A word phrase typed with spaces, quoted or as separate arguments,
        is the word phrase; so is a relay code typed with spaces.
        """
        v = vector()
        words = v["word_phrase"].split("-")
        for argv in (words, [" ".join(words)], [" ".join(w.upper() for w in words)]):
            status, out, err = run(["--data-dir", self.data_dir, "join", *argv, "--json"])
            self.assertEqual((status, err), (0, ""))
            self.assertEqual(json.loads(out)["form"], "words")
        status, out, err = run(["--data-dir", self.data_dir, "join", *v["relay_code"].split("-"), "--json"])
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(json.loads(out)["form"], "relay_code")
        self.assertEqual({i.addr for i in self.joined}, {v["addr"]})
        self.assertEqual({i.key.hex() for i in self.joined}, {v["word_phrase_decodes_to"]["psk"]})

    def test_wrong_words_with_spaces(self):
        """
        Words that are not a phrase's get the word phrase's errors, not the
        relay code's length.
        """
        err = self.fails("join", "apple", "banana", "cherry")
        self.assertEqual(err, "relaymesh: error: wrong length for a word phrase (got 3, want 9 words)\n")
        err = self.fails("join", "apple banana cherry dates elder figs grape honey icing")
        self.assertEqual(err, "relaymesh: error: unknown word 'apple' in word phrase\n")
        self.assertEqual(self.joined, [])

    def test_not_an_invite(self):
        """
        One word no form could be: the error says what join takes.
        """
        for text in ("hello", "YCUACMUAAAAQEA"):
            err = self.fails("join", text)
            self.assertEqual(
                err,
                f"relaymesh: error: {text!r} is not an invite: join takes a relaymesh:// or cctl:// "
                "link, a relay code (15 letters and digits, XXX-XXX-XXX-XXX-XXX), a word phrase "
                "(9 words, joined by hyphens or spaces), or a pair code (xxxx-xxxx-xxxx-xxxx) or "
                "strong code with --peer ID@HOST:PORT\n",
            )
        self.assertIn("wrong length for a relay code (got 14", self.fails("join", "YCU-ACM-UAA-AAQ-EA"))
        self.assertEqual(self.joined, [])

    def test_pair_code_typo(self):
        """
        A pair code with a character that is not a hex digit: the error
        names it and its position, for join (with or without --peer) and
        accept.
        """
        code = vector()["pair_code"][:-1] + "g"
        expected = (
            "relaymesh: error: a pair code has 16 hex digits, found 15: "
            "'g' at position 19 is not a hex digit (0-9, a-f)\n"
        )
        self.assertEqual(self.fails("join", code), expected)
        self.assertEqual(self.fails("join", code, "--peer", "alpha@127.0.0.1:9847"), expected)
        self.assertEqual(self.fails("accept", code, "alpha"), expected)
        self.assertEqual(self.joined, [])

    def usage_error(self, *argv: str) -> str:
        status, out, err = run(["--data-dir", self.data_dir, *argv])
        self.assertEqual((argv, status, out), (argv, 2, ""))
        error, pointer = err.splitlines()
        self.assertRegex(pointer, r"^Run 'relaymesh [a-z -]+--help' for its options\.$")
        return error

    def test_expires(self):
        """
        C{invite --expires} says what it wants: more than 0 minutes, at most
        a week; or that it is not a number at all. No key is armed.
        """
        err = self.usage_error("invite", "--expires", "0")
        self.assertIn("argument --expires: '0': an invite must last more than 0 minutes and at most 10080 (7 days)", err)
        self.assertNotIn("not a number", err)
        err = self.usage_error("invite", "--expires", "10081")
        self.assertIn("'10081': an invite must last more than 0 minutes and at most 10080", err)
        self.assertIn("argument --expires: 'soon' is not a number of minutes", self.usage_error("invite", "--expires", "soon"))
        self.assertEqual(KeyStore(self.data_dir).pending_key(), None)


class DashboardCommandTests(NodeCase):
    """
    C{relaymesh dashboard} prints the dashboard's URL with the token in its
    fragment, and opens it when there is a display; the opener is a
    recorder here.
    """

    def setUp(self):
        self.opened = []
        self.answer = True
        self.patch(dashboard, "open_browser", lambda url: self.opened.append(url) or self.answer)
        self.patch(dashboard, "platform", "linux")
        d = NodeCase.setUp(self)
        os.environ.pop("DISPLAY", None)
        os.environ.pop("WAYLAND_DISPLAY", None)
        return d

    def expected_url(self) -> str:
        with open(os.path.join(self.store.path, "api-token")) as f:
            token = f.read().strip()
        return f"{self.url()}/#token={token}"

    @defer.inlineCallbacks
    def test_opens_with_display(self):
        os.environ["DISPLAY"] = ":0"
        status, out, err = yield self.cli("--data-dir", self.store.path, "dashboard")
        self.assertEqual((status, err), (0, ""))
        url = self.expected_url()
        self.assertEqual(
            out,
            f"Dashboard: {url}\n(the URL carries the API token: do not share it)\nOpened in the browser.\n",
        )
        self.assertEqual(self.opened, [url])

    @defer.inlineCallbacks
    def test_wayland_and_macos(self):
        os.environ["WAYLAND_DISPLAY"] = "wayland-0"
        status, out, err = yield self.cli("--data-dir", self.store.path, "dashboard", "--json")
        self.assertEqual(json.loads(out), {"url": self.expected_url(), "opened": True})
        del os.environ["WAYLAND_DISPLAY"]
        for platform in ("darwin", "win32"):
            self.patch(dashboard, "platform", platform)
            status, out, err = yield self.cli("--data-dir", self.store.path, "dashboard", "--json")
            self.assertEqual(json.loads(out), {"url": self.expected_url(), "opened": True})
        self.assertEqual(len(self.opened), 3)

    @defer.inlineCallbacks
    def test_no_display(self):
        status, out, err = yield self.cli("--data-dir", self.store.path, "dashboard")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out.splitlines()[-1], "No display to open a browser on: open the URL above.")
        self.assertEqual(self.opened, [])

    @defer.inlineCallbacks
    def test_no_open(self):
        os.environ["DISPLAY"] = ":0"
        status, out, err = yield self.cli("--data-dir", self.store.path, "dashboard", "--no-open", "--json")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(json.loads(out), {"url": self.expected_url(), "opened": False})
        self.assertEqual(self.opened, [])

    @defer.inlineCallbacks
    def test_browser_fails(self):
        os.environ["DISPLAY"] = ":0"
        self.answer = False
        status, out, err = yield self.cli("--data-dir", self.store.path, "dashboard")
        self.assertEqual(status, 0)
        self.assertEqual(out.splitlines()[-1], "Could not open a browser: open the URL above.")

    @defer.inlineCallbacks
    def test_token_not_proven(self):
        """
        When what answers does not prove it holds the token, no URL is
        printed and nothing is opened: the token goes nowhere.
        """
        os.environ["DISPLAY"] = ":0"
        other = self.mktemp()
        with open(other, "w") as f:
            f.write("another-token\n")
        status, out, err = yield self.cli("--data-dir", self.store.path, "dashboard", "--api-token-file", other)
        self.assertEqual((status, out), (2, ""))
        self.assertIn("did not prove that it holds the API token", err)
        self.assertNotIn("another-token", err)
        self.assertEqual(self.opened, [])

    @defer.inlineCallbacks
    def test_no_node(self):
        os.remove(os.path.join(self.store.path, "api-url"))
        status, out, err = yield self.cli("--data-dir", self.store.path, "dashboard")
        self.assertEqual((status, out), (1, ""))
        self.assertIn("(no api-url file)", err)
        self.assertEqual(self.opened, [])


class TLSJoinCommandTests(TestCase):
    """
    C{pair --strong} and C{invite} on a node whose listener is C{tls:}
    print a join command with C{--tls}; on a plain one, without.
    """

    timeout = 30

    def setUp(self):
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "RELAYMESH_API"})

    def start(self, listen: str) -> RelayService:
        store = KeyStore(self.mktemp())
        store.set_identity("alpha")
        node = RelayService(store, listen=listen, api="tcp:0:interface=127.0.0.1", reactor=reactor)
        node.startService()
        self.addCleanup(lambda: node.stopService() if node.running else None)
        return node

    def cli(self, node: RelayService, *argv: str) -> defer.Deferred:
        return threads.deferToThread(run, ["--data-dir", node.keystore.path, *argv, "--json"])

    @defer.inlineCallbacks
    def test_tls_listener(self):
        node = self.start("tls:0:interface=127.0.0.1")
        yield wait_for(lambda: node.api.control.api_address is not None and node.listener.port is not None, 10)
        port = node.listener.port.getHost().port
        status, out, err = yield self.cli(node, "status")
        self.assertEqual((status, err), (0, ""))
        self.assertIs(json.loads(out)["listen_tls"], True)
        status, out, err = yield self.cli(node, "pair", "--strong")
        self.assertEqual((status, err), (0, ""))
        answer = json.loads(out)
        self.assertTrue(answer["peer"].endswith(f":{port}"), answer)
        self.assertEqual(answer["join"], f"relaymesh join {answer['strong_code']} --peer {answer['peer']} --tls")
        status, out, err = yield self.cli(node, "invite", "--host", "127.0.0.1")
        self.assertEqual((status, err), (0, ""))
        answer = json.loads(out)
        self.assertEqual(answer["join"], f"relaymesh join {answer['strong_link']} --tls")
        status, out, err = yield threads.deferToThread(
            run, ["--data-dir", node.keystore.path, "invite", "--host", "127.0.0.1"]
        )
        self.assertRegex(out, r"On the other node, run: relaymesh join relaymesh://\S+ --tls\n")

    @defer.inlineCallbacks
    def test_plain_listener(self):
        node = self.start("tcp:0:interface=127.0.0.1")
        yield wait_for(lambda: node.api.control.api_address is not None and node.listener.port is not None, 10)
        status, out, err = yield self.cli(node, "status")
        self.assertIs(json.loads(out)["listen_tls"], False)
        status, out, err = yield self.cli(node, "pair", "--strong")
        answer = json.loads(out)
        self.assertEqual(answer["join"], f"relaymesh join {answer['strong_code']} --peer {answer['peer']}")
        status, out, err = yield self.cli(node, "invite", "--host", "127.0.0.1")
        answer = json.loads(out)
        self.assertEqual(answer["join"], f"relaymesh join {answer['strong_link']}")
