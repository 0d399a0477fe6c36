"""
The remembered addresses through the C{relaymesh} command: C{peer
set-address}, C{disconnect --forget-address}, C{forget} on a running node,
the ADDRESS/SOURCE columns of C{peers}, the dial of a bare address, and
C{connect --wait} reporting only its own dial.
"""

from __future__ import annotations

import json
import os
import time
from io import StringIO

from twisted.internet import defer, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaymesh.addresses import CONNECT, INBOUND, JOIN, SET_ADDRESS, AddressBook
from relaymesh.cli.main import main
from relaymesh.keystore import KeyStore
from relaymesh.service import RelayService
from relaymesh.test.realtime import free_port, loopback_node, wait_for

KEY = bytes(range(32))


class OfflineTests(SynchronousTestCase):
    """
    The commands on a data directory with no node running.
    """

    def setUp(self):
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "RELAYMESH_API"})
        self.data_dir = self.mktemp()
        self.store = KeyStore(self.data_dir)
        self.store.set_identity("alpha")
        self.book = AddressBook(self.data_dir)

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        stdout, stderr = StringIO(), StringIO()
        status = main(["--data-dir", self.data_dir, *argv], stdout=stdout, stderr=stderr)
        return status, stdout.getvalue(), stderr.getvalue()

    def test_set_address(self):
        """
        C{peer set-address} remembers the address of a paired peer, without
        a node.
        """
        self.store.set_key("beta", KEY)
        status, out, err = self.run_cli("peer", "set-address", "beta", "tls:10.0.0.2:9900")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, "beta will be dialled at tls:beta@10.0.0.2:9900 on every start.\n")
        entry = self.book.get("beta")
        self.assertEqual((entry.address, entry.source), ("tls:beta@10.0.0.2:9900", SET_ADDRESS))
        stdout, stderr = StringIO(), StringIO()
        argv = ["peer", "set-address", "beta", "10.0.0.2", "--data-dir", self.data_dir, "--json"]
        self.assertEqual(main(argv, stdout=stdout, stderr=stderr), 0, stderr.getvalue())
        self.assertEqual(json.loads(stdout.getvalue())["address"], "beta@10.0.0.2:9847")

    def test_set_address_errors(self):
        """
        A peer without a key, a bad address or one naming another peer is a
        one-line error, and nothing is remembered.
        """
        for argv, message in [
            (("beta", "10.0.0.2"), "no key for beta: pair first"),
            (("gamma", "10.0.0.2:99999"), "invalid port"),
            (("gamma", "delta@10.0.0.2"), "names delta, not gamma"),
        ]:
            self.store.set_key("gamma", KEY)
            status, out, err = self.run_cli("peer", "set-address", *argv)
            self.assertEqual((status, out), (2, ""))
            self.assertIn(message, err)
            self.assertEqual(err.count("\n"), 1)
        self.assertEqual(self.book.entries(), {})

    def test_disconnect_forget_address(self):
        """
        Without a node, C{disconnect --forget-address} forgets the address.
        """
        self.store.set_key("beta", KEY)
        self.book.record("beta", "10.0.0.2", JOIN)
        status, out, err = self.run_cli("disconnect", "beta", "--forget-address")
        self.assertEqual((status, out, err), (0, "Forgot the address of beta.\n", ""))
        self.assertEqual(self.book.entries(), {})
        status, out, err = self.run_cli("disconnect", "beta", "--forget-address")
        self.assertEqual((status, out), (0, "No address is remembered for beta.\n"))

    def test_peers_columns(self):
        """
        The stored list shows each peer's remembered address (without its
        id) and where it was learned.
        """
        self.store.set_key("beta", KEY)
        self.store.set_key("gamma", KEY)
        self.store.update_meta("gamma", addr="10.0.0.3:9847")
        self.book.record("beta", "tls:10.0.0.2:9900", JOIN)
        status, out, err = self.run_cli("peers")
        lines = out.splitlines()
        self.assertEqual(lines[0].split()[:4], ["PEER", "ID", "ADDRESS", "SOURCE"])
        self.assertEqual(lines[1].split()[:3], ["beta", "tls:10.0.0.2:9900", "join"])
        self.assertEqual(lines[2].split()[:3], ["gamma", "10.0.0.3:9847", "-"])
        body = json.loads(self.run_cli("peers", "--json")[1])
        self.assertEqual(
            (body["peers"][0]["stored_address"], body["peers"][0]["address_source"]),
            ("tls:beta@10.0.0.2:9900", JOIN),
        )

    def test_forget_drops_address(self):
        self.store.set_key("beta", KEY)
        self.book.record("beta", "10.0.0.2", JOIN)
        self.assertEqual(self.run_cli("forget", "beta")[:2], (0, "Forgot beta.\n"))
        self.assertEqual(self.book.entries(), {})


class LiveTests(TestCase):
    """
    Against running nodes: alpha, and beta dialling it.
    """

    timeout = 30

    def setUp(self):
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "RELAYMESH_API"})
        self.alpha = self.make_node("alpha")
        self.alpha_port = self.alpha.listener.port.getHost().port
        self.beta = self.make_node("beta", peers=[f"alpha@127.0.0.1:{self.alpha_port}"], start=False)
        key = os.urandom(32)
        self.alpha.keystore.set_key("beta", key)
        self.beta.keystore.set_key("alpha", key)
        self.beta.startService()
        return wait_for(lambda: self.alpha.mesh.is_connected("beta") and self.beta.mesh.is_connected("alpha"), 10)

    def make_node(self, identity: str, peers=(), start: bool = True) -> RelayService:
        return loopback_node(self, identity, peers, start)

    def run_cli(self, node: RelayService, *argv: str) -> defer.Deferred:
        stdout, stderr = StringIO(), StringIO()

        def run():
            status = main(["--data-dir", node.keystore.path, *argv], stdout=stdout, stderr=stderr)
            return status, stdout.getvalue(), stderr.getvalue()

        return threads.deferToThread(run)

    @defer.inlineCallbacks
    def test_inbound_and_sources_in_peers(self):
        """
        alpha remembered the port beta announced (source inbound); beta the
        --peers address; the live table shows them with PAIRED, VIA and
        LAST ERROR columns.
        """
        beta_port = self.beta.listener.port.getHost().port
        entry = AddressBook(self.alpha.keystore.path).get("beta")
        self.assertEqual((entry.address, entry.source), (f"beta@127.0.0.1:{beta_port}", INBOUND))
        status, out, err = yield self.run_cli(self.beta, "peers")
        self.assertEqual((status, err), (0, ""))
        header, row, pending = out.splitlines()
        self.assertEqual(header.split()[-4:], ["PAIRED", "VIA", "LAST", "ERROR"])
        self.assertEqual(row.split()[:4], ["alpha", "connected", f"127.0.0.1:{self.alpha_port}", "--peers"])

    @defer.inlineCallbacks
    def test_expired_invite_not_armed(self):
        """
        The live list does not call an expired invite armed.
        """
        self.alpha.keystore.arm([("pair_code", os.urandom(32))], expires_at=time.time() + 600)
        status, out, err = yield self.run_cli(self.alpha, "peers")
        self.assertIn("Pending pairing key: armed until ", out)
        self.alpha.keystore.arm([("pair_code", os.urandom(32))], expires_at=time.time() - 60)
        status, out, err = yield self.run_cli(self.alpha, "peers")
        self.assertEqual(out.splitlines()[-1], "Pending pairing key: none")
        self.assertFalse(json.loads((yield self.run_cli(self.alpha, "peers", "--json"))[1])["pending"])

    @defer.inlineCallbacks
    def test_forget_reaches_node(self):
        """
        C{forget} on a running node's data directory: the peer leaves its
        list, its connection closes, its key and address are gone, and it
        is not redialled.
        """
        status, out, err = yield self.run_cli(self.beta, "forget", "alpha")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, "Forgot alpha; the running node forgot it too.\n")
        yield wait_for(
            lambda: not self.alpha.mesh.is_connected("beta") and not self.beta.mesh.is_connected("alpha"), 5
        )
        self.assertEqual(self.beta.dialled(), [])
        self.assertIsNone(self.beta.keystore.key("alpha"))
        self.assertIsNone(AddressBook(self.beta.keystore.path).get("alpha"))
        status, out, err = yield self.run_cli(self.beta, "peers", "--json")
        self.assertEqual([p for p in json.loads(out)["peers"] if p["state"] == "connected"], [])

    @defer.inlineCallbacks
    def test_disconnect_forget_address_live(self):
        status, out, err = yield self.run_cli(self.beta, "disconnect", "alpha", "--forget-address")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, "Disconnected alpha; stopped dialling alpha; forgot its address.\n")
        self.assertIsNone(AddressBook(self.beta.keystore.path).get("alpha"))
        self.assertIsNotNone(self.beta.keystore.key("alpha"))

    @defer.inlineCallbacks
    def test_bare_address(self):
        """
        C{connect HOST:PORT}: its dialler is listed by C{peers}, with the
        address, and stopped by C{disconnect HOST:PORT}.
        """
        nothing = free_port()
        status, out, err = yield self.run_cli(self.alpha, "connect", f"127.0.0.1:{nothing}")
        self.assertEqual((status, err), (0, ""))
        status, out, err = yield self.run_cli(self.alpha, "peers")
        [row] = [line for line in out.splitlines() if f"127.0.0.1:{nothing}" in line]
        self.assertEqual(row.split()[:3], ["-", "dialling", f"127.0.0.1:{nothing}"])
        status, out, err = yield self.run_cli(self.alpha, "disconnect", f"127.0.0.1:{nothing}")
        self.assertEqual((status, out, err), (0, f"Stopped dialling 127.0.0.1:{nothing}.\n", ""))
        self.assertEqual([a for a in self.alpha.dialled() if a.peer_id is None], [])

    @defer.inlineCallbacks
    def test_connect_wrong_address_while_connected(self):
        """
        C{connect ID@wrong --wait} for a peer connected through another link
        does not say Connected, and does not dial the wrong address.
        """
        nothing = free_port()
        status, out, err = yield self.run_cli(self.alpha, "connect", f"beta@127.0.0.1:{nothing}", "--wait", "1")
        self.assertEqual(status, 1)
        self.assertNotIn("Connected", out)
        self.assertIn("beta is already connected (inbound, 127.0.0.1:", out)
        self.assertIn(f"not dialling beta@127.0.0.1:{nothing}", out)
        self.assertEqual(self.alpha.dialled(), [])
        self.assertEqual(AddressBook(self.alpha.keystore.path).get("beta").source, INBOUND)

    @defer.inlineCallbacks
    def test_connect_wait_own_dial(self):
        """
        C{connect --wait} reports success once its own dial connected, and
        the address is remembered (source connect).
        """
        gamma = self.make_node("gamma")
        key = os.urandom(32)
        self.alpha.keystore.set_key("gamma", key)
        gamma.keystore.set_key("alpha", key)
        port = gamma.listener.port.getHost().port
        status, out, err = yield self.run_cli(self.alpha, "connect", f"127.0.0.1:{port}", "--wait", "10")
        self.assertEqual((status, out, err), (0, f"Connected to gamma at 127.0.0.1:{port}.\n", ""))
        entry = AddressBook(self.alpha.keystore.path).get("gamma")
        self.assertEqual((entry.address, entry.source), (f"gamma@127.0.0.1:{port}", CONNECT))
