"""
Tests for the last rough edges of the C{relaymesh} command: a node started
with C{--api none} is known to run; an explicit C{--api} that does not
answer is an error for C{invite} and C{pair --strong}; an invite of a
TLS-only node has no claudectl command; usage errors are one line and a
pointer to C{--help}.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from io import StringIO

from twisted.internet import defer, reactor, threads
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaymesh import tap
from relaymesh.cli import pairing as cli_pairing
from relaymesh.cli.main import main
from relaymesh.control.client import NoApiUrl, NoControlApi, NodeClient, node_without_api, resolve_url
from relaymesh.control.service import URL_FILE, NoApiRecord, no_api_record
from relaymesh.keystore import KeyStore
from relaymesh.service import RelayService
from relaymesh.test.realtime import ProcessesMixin, free_port, listening_port, wait_for
from relaymesh.test.support import EPOCH

PAIR_KEY = bytes(range(32))


def run(argv: list[str]) -> tuple[int, str, str]:
    stdout, stderr = StringIO(), StringIO()
    status = main(argv, stdout=stdout, stderr=stderr)
    return status, stdout.getvalue(), stderr.getvalue()


def memory_reactor() -> MemoryReactorClock:
    clock = MemoryReactorClock()
    clock.advance(EPOCH)
    return clock


def exited_pid() -> int:
    """
    The process id of a process that has exited (and been reaped).
    """
    process = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.DEVNULL)
    process.wait(30)
    return process.pid


def without_env_api(case) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "RELAYMESH_API"}
    case.patch(os, "environ", environ)
    return environ


class NoApiRecordTests(SynchronousTestCase):
    """
    A node started with C{--api none} writes C{none PID} to its data
    directory's api-url while it runs, and removes it on a clean stop.
    """

    def setUp(self):
        without_env_api(self)
        self.data_dir = self.mktemp()
        self.url_file = os.path.join(self.data_dir, URL_FILE)

    def make(self, *args: str) -> RelayService:
        options = tap.Options()
        options.parseOptions(["--data-dir", self.data_dir, "--no-outbox", "--listen", "none", *args])
        return tap.makeService(options, reactor=memory_reactor())

    def read(self) -> str:
        with open(self.url_file) as f:
            return f.read()

    def test_written_and_removed(self):
        node = self.make("--api", "none")
        self.assertFalse(os.path.exists(self.url_file))
        node.startService()
        self.assertEqual(self.read(), f"none {os.getpid()}\n")
        node.stopService()
        self.assertFalse(os.path.exists(self.url_file))

    def test_not_with_an_api(self):
        """
        A node with a control API writes its URL, never the record.
        """
        node = self.make("--api", "tcp:0:interface=127.0.0.1")
        self.assertEqual([s for s in node if isinstance(s, NoApiRecord)], [])

    def test_replaces_stale_url(self):
        """
        A stale URL from an earlier run with an API is replaced, so that
        the command line does not try it.
        """
        os.makedirs(self.data_dir)
        with open(self.url_file, "w") as f:
            f.write("http://127.0.0.1:1\n")
        node = self.make("--api", "none")
        node.startService()
        self.addCleanup(node.stopService)
        self.assertEqual(self.read(), f"none {os.getpid()}\n")

    def test_stop_leaves_another_nodes_file(self):
        """
        On stop the file is removed only if it still holds this record.
        """
        record = NoApiRecord(self.data_dir, pid=4321)
        os.makedirs(self.data_dir)
        record.startService()
        self.assertEqual(self.read(), "none 4321\n")
        with open(self.url_file, "w") as f:
            f.write("http://127.0.0.1:9849\n")
        record.stopService()
        self.assertEqual(self.read(), "http://127.0.0.1:9849\n")

    def test_unwritable(self):
        """
        A record that cannot be written is logged; the node runs on.
        """
        events: list[dict] = []
        record = NoApiRecord(os.path.join(self.mktemp(), "missing"), pid=4321)
        record.log = Logger(observer=events.append)
        record.startService()
        self.assertTrue(record.running)
        [event] = events
        self.assertIn("could not write", formatEvent(event))
        self.assertIn(os.path.join("missing", URL_FILE), formatEvent(event))
        record.stopService()
        self.assertFalse(record.running)


class NoApiNodeCommandTests(SynchronousTestCase):
    """
    What the commands say when the data directory's api-url holds the
    record of a node without a control API.
    """

    def setUp(self):
        self.environ = without_env_api(self)
        self.data_dir = self.mktemp()
        self.store = KeyStore(self.data_dir)
        self.store.set_identity("alpha")
        self.store.set_key("beta", PAIR_KEY)
        self.store.update_meta("beta", addr="127.0.0.1:9")

    def record(self, pid: int | str) -> None:
        with open(os.path.join(self.data_dir, URL_FILE), "w") as f:
            f.write(f"none {pid}\n")

    def test_live_commands(self):
        """
        While the recorded process lives, the live commands say that the
        node runs without a control API, in one line, exit status 1.
        """
        self.record(os.getpid())
        for argv in (["status"], ["send", "beta", "task_status", "{}"], ["watch"], ["connect", "beta@127.0.0.1:9"]):
            status, out, err = run(["--data-dir", self.data_dir, *argv])
            self.assertEqual((argv, status, out), (argv, 1, ""))
            self.assertEqual(
                err,
                f"relaymesh: the node on {self.data_dir} (pid {os.getpid()}) runs without a control API "
                "(--api none): restart it with --api to use live commands\n",
            )

    def test_token_file_kept(self):
        """
        The same with a token file left from an earlier run with an API.
        """
        with open(os.path.join(self.data_dir, "api-token"), "w") as f:
            f.write("token\n")
        self.record(os.getpid())
        status, out, err = run(["--data-dir", self.data_dir, "status"])
        self.assertEqual(status, 1)
        self.assertIn("runs without a control API (--api none)", err)

    def test_exited(self):
        """
        A recorded process that has exited: no node runs, as without the
        file, with the twistd command that starts one.
        """
        pid = exited_pid()
        self.record(pid)
        status, out, err = run(["--data-dir", self.data_dir, "status"])
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(
            err,
            f"relaymesh: no node running on {self.data_dir} (the node without a control API its "
            f"api-url file names, pid {pid}, has exited); start one with: "
            f"twistd -n relaymesh --data-dir {self.data_dir}\n",
        )

    def test_bad_record(self):
        """
        An api-url that holds C{none} without a usable process id is one
        line too, never a traceback.
        """
        for text in ("none", "none abc", "none -5", "none 1 2", "none \u0661\u0662"):
            with open(os.path.join(self.data_dir, URL_FILE), "w") as f:
                f.write(text + "\n")
            error = self.assertRaises(NoApiUrl, resolve_url, self.data_dir)
            self.assertNotIsInstance(error, NoControlApi)
            self.assertIn("its api-url file names neither a URL nor a node's process id", str(error))
            status, out, err = run(["--data-dir", self.data_dir, "status"])
            self.assertEqual((text, status, err.count("\n")), (text, 1, 1))

    def test_named_api_first(self):
        """
        --api and $RELAYMESH_API still come before the api-url file.
        """
        self.record(os.getpid())
        self.assertEqual(resolve_url(self.data_dir, "http://127.0.0.1:7/"), "http://127.0.0.1:7")
        self.assertIsNone(node_without_api(self.data_dir, "http://127.0.0.1:7"))
        self.environ["RELAYMESH_API"] = "http://127.0.0.1:8"
        self.assertEqual(resolve_url(self.data_dir), "http://127.0.0.1:8")
        del self.environ["RELAYMESH_API"]
        self.assertEqual(node_without_api(self.data_dir), os.getpid())

    def test_old_clients(self):
        """
        The record is no URL: a client that takes api-url for one (an older
        relaymesh) gets its one-line "not an http:// URL" error.
        """
        error = self.assertRaises(ValueError, NodeClient, no_api_record(os.getpid()), "token")
        self.assertIn("is not an http:// URL", str(error))
        self.assertNotIn("\n", str(error))

    def test_offline_peers(self):
        """
        C{peers} lists the stored peers, as without a node.
        """
        self.record(os.getpid())
        status, out, err = run(["--data-dir", self.data_dir, "peers", "--json"])
        self.assertEqual((status, err), (0, ""))
        self.assertEqual([p["peer_id"] for p in json.loads(out)["peers"]], ["beta"])
        self.assertNotIn("live", json.loads(out))

    def test_forget(self):
        """
        C{forget} forgets the peer in the key store and says that the
        running node could not be told.
        """
        self.record(os.getpid())
        status, out, err = run(["--data-dir", self.data_dir, "forget", "beta"])
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            out,
            f"Forgot beta in the key store; the node running on {self.data_dir} (pid {os.getpid()}) has no "
            "control API (--api none) and could not be told: restart it to drop the peer there too.\n",
        )
        self.assertEqual(self.store.peers(), [])
        self.store.set_key("beta", PAIR_KEY)
        status, out, err = run(["--data-dir", self.data_dir, "forget", "beta", "--json"])
        self.assertEqual(json.loads(out), {"forgotten": "beta", "node": False, "node_pid": os.getpid()})

    def test_forget_after_exit(self):
        """
        With the recorded process gone, C{forget} says nothing of a node.
        """
        self.record(exited_pid())
        status, out, err = run(["--data-dir", self.data_dir, "forget", "beta"])
        self.assertEqual((status, out, err), (0, "Forgot beta.\n", ""))


class NoApiProcessTests(ProcessesMixin, TestCase):
    """
    A real C{twistd relaymesh --api none} process: C{status} says that it
    runs without a control API until it stops.
    """

    timeout = 60

    def setUp(self):
        self.setUpProcesses()

    @defer.inlineCallbacks
    def test_status(self):
        home = self.home("a")
        port = free_port()
        process, log = self.twistd("a", home, "--listen", f"tcp:{port}:interface=127.0.0.1", "--api", "none")
        url_file = os.path.join(home, URL_FILE)
        yield wait_for(lambda: os.path.exists(url_file), 30, what="the api-url record")
        with open(url_file) as f:
            self.assertEqual(f.read(), f"none {process.pid}\n")
        result = yield threads.deferToThread(self.cli, home, "status", status=1)
        self.assertEqual(
            result.stderr,
            f"relaymesh: the node on {home} (pid {process.pid}) runs without a control API "
            "(--api none): restart it with --api to use live commands\n",
        )
        process.terminate()
        yield threads.deferToThread(process.wait, 30)
        self.assertFalse(os.path.exists(url_file))
        result = yield threads.deferToThread(self.cli, home, "status", status=1)
        self.assertIn(f"no node running on {home} (no api-url file)", result.stderr)


class ExplicitApiTests(SynchronousTestCase):
    """
    C{invite}, C{pair --strong} and C{join} with an C{--api} where nothing answers:
    one line, exit status 1, nothing armed; without C{--api} and without a
    node, the default port.
    """

    def setUp(self):
        without_env_api(self)
        self.patch(cli_pairing, "default_invite_host", lambda: "192.0.2.5")
        self.data_dir = self.mktemp()
        self.store = KeyStore(self.data_dir)
        self.store.set_identity("alpha")
        with open(os.path.join(self.data_dir, "api-token"), "w") as f:
            f.write("token\n")
        # bound but not listening: connections to it are refused, and no
        # one else can take the port during the test
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(self.socket.close)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def test_invite(self):
        for argv in (["invite", "--api", self.url], ["--api", self.url, "invite", "--port", "9850"]):
            status, out, err = run(["--data-dir", self.data_dir, *argv])
            self.assertEqual((argv, status, out), (argv, 1, ""))
            self.assertEqual(
                err,
                f"relaymesh: no node is running at {self.url}; start one with: "
                f"twistd -n relaymesh --data-dir {self.data_dir}\n",
            )
            self.assertEqual(self.store.armed_keys(0), [])
            self.assertIsNone(self.store.pending_key())

    def test_pair_strong(self):
        status, out, err = run(["--data-dir", self.data_dir, "pair", "--strong", "--api", self.url])
        self.assertEqual((status, out), (1, ""))
        self.assertIn(f"no node is running at {self.url}", err)
        self.assertEqual(self.store.armed_keys(0), [])

    def test_join(self):
        """
        C{join --api} where nothing answers stops before pairing: the
        inviting node is never dialled, and no key is stored.
        """
        invite = "cctl://laptop-a3f2@127.0.0.1:9/k/0001020304050607"  # never dialled
        status, out, err = run(["--data-dir", self.data_dir, "join", invite, "--api", self.url])
        self.assertEqual((status, out), (1, ""))
        self.assertIn(f"no node is running at {self.url}", err)
        self.assertEqual(self.store.peers(), [])

    def test_fallback_without_api(self):
        """
        Without --api and without a node, the invite names port 9847.
        """
        status, out, err = run(["--data-dir", self.data_dir, "invite", "--json"])
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(json.loads(out)["port"], 9847)


class NamedNodeTests(TestCase):
    """
    C{invite --api} naming a running node: another key store's node is an
    error; the node of the key store gives its port. And a TLS-only node's
    invite has no command for claudectl.
    """

    timeout = 30

    def setUp(self):
        without_env_api(self)
        self.patch(cli_pairing, "default_invite_host", lambda: "192.0.2.5")

    @defer.inlineCallbacks
    def start(self, identity: str, listen: str):
        store = KeyStore(self.mktemp())
        store.set_identity(identity)
        node = RelayService(store, listen=listen, api="tcp:0:interface=127.0.0.1", reactor=reactor)
        node.startService()
        self.addCleanup(lambda: node.stopService() if node.running else None)
        api, listener = node.api, node.listener
        assert api is not None and listener is not None
        yield wait_for(lambda: api.control.api_address is not None and listener.port is not None, 10)
        return node

    def cli(self, node: RelayService, *argv: str) -> defer.Deferred:
        return threads.deferToThread(run, ["--data-dir", node.keystore.path, *argv])

    @staticmethod
    def url(node: RelayService) -> str:
        return f"http://127.0.0.1:{listening_port(node.api)}"

    @defer.inlineCallbacks
    def test_other_node(self):
        alpha = yield self.start("alpha", "tcp:0:interface=127.0.0.1")
        beta = yield self.start("beta", "tcp:0:interface=127.0.0.1")
        # beta's API with beta's token, but alpha's key store
        token = os.path.join(beta.keystore.path, "api-token")
        status, out, err = yield self.cli(alpha, "invite", "--api", self.url(beta), "--api-token-file", token)
        self.assertEqual((status, out), (2, ""))
        self.assertEqual(
            err,
            f"relaymesh: error: --api {self.url(beta)}: that node is beta, not alpha, "
            f"the node of {alpha.keystore.path}\n",
        )
        self.assertEqual(alpha.keystore.armed_keys(0), [])
        status, out, err = yield self.cli(alpha, "invite", "--api", self.url(alpha), "--json")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(json.loads(out)["port"], alpha.listener.port.getHost().port)

    @defer.inlineCallbacks
    def test_tls_only(self):
        node = yield self.start("alpha", "tls:0:interface=127.0.0.1")
        status, out, err = yield self.cli(node, "invite")
        self.assertEqual((status, err), (0, ""))
        self.assertNotIn("claudectl relay join", out)
        self.assertTrue(
            out.endswith(
                " --tls\nclaudectl cannot join: this node listens with TLS only; "
                "add a plain --listen for claudectl peers\n"
            ),
            out,
        )
        status, out, err = yield self.cli(node, "invite", "--json")
        answer = json.loads(out)
        self.assertIsNone(answer["claudectl_join"])
        self.assertEqual(
            answer["claudectl_unusable"],
            "claudectl cannot join: this node listens with TLS only; add a plain --listen for claudectl peers",
        )

    @defer.inlineCallbacks
    def test_plain(self):
        node = yield self.start("alpha", "tcp:0:interface=127.0.0.1")
        status, out, err = yield self.cli(node, "invite", "--json")
        answer = json.loads(out)
        self.assertEqual(answer["claudectl_join"], f"claudectl relay join {answer['link']}")
        self.assertNotIn("claudectl_unusable", answer)
        status, out, err = yield self.cli(node, "invite")
        self.assertRegex(out, r"\nFrom claudectl, run:    claudectl relay join cctl://\S+\n$")


class UsageErrorTests(SynchronousTestCase):
    """
    Usage errors are one line, C{relaymesh CMD: error: ...}, and a pointer
    to C{relaymesh CMD --help}; exit status 2. C{--help} is unchanged.
    """

    def usage(self, *argv: str) -> str:
        status, out, err = run(list(argv))
        self.assertEqual((argv, status, out), (argv, 2, ""))
        self.assertNotIn("usage:", err)
        return err

    def test_top(self):
        self.assertEqual(
            self.usage(),
            "relaymesh: error: the following arguments are required: COMMAND\n"
            "Run 'relaymesh --help' for its options.\n",
        )
        err = self.usage("bogus")
        self.assertTrue(err.startswith("relaymesh: error: argument COMMAND: invalid choice: 'bogus'"), err)
        self.assertEqual(err.count("\n"), 2)
        self.assertEqual(
            self.usage("--nope", "status"),
            "relaymesh: error: unrecognized arguments: --nope\nRun 'relaymesh --help' for its options.\n",
        )

    def test_subcommands(self):
        self.assertEqual(
            self.usage("invite", "--expires", "x"),
            "relaymesh invite: error: argument --expires: 'x' is not a number of minutes\n"
            "Run 'relaymesh invite --help' for its options.\n",
        )
        self.assertEqual(
            self.usage("send", "beta"),
            "relaymesh send: error: the following arguments are required: MSG_TYPE, JSON\n"
            "Run 'relaymesh send --help' for its options.\n",
        )
        self.assertEqual(
            self.usage("peer", "set-address", "beta"),
            "relaymesh peer set-address: error: the following arguments are required: ADDRESS\n"
            "Run 'relaymesh peer set-address --help' for its options.\n",
        )

    def test_help_unchanged(self):
        for argv in (["--help"], ["invite", "--help"]):
            status, out, err = run(argv)
            self.assertEqual((status, err), (0, ""))
            self.assertTrue(out.startswith(f"usage: relaymesh {argv[0] + ' ' if len(argv) > 1 else ''}"), out)
            self.assertIn("--data-dir DIR", out)
