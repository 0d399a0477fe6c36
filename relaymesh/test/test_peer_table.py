"""
Tests for the ADDRESS and SOURCE columns of C{relaymesh peers}
(L{relaymesh.cli.peertable}): SOURCE says where the remembered address came
from, and names that address when ADDRESS shows another one.
"""

from __future__ import annotations

import os
from io import StringIO

from twisted.internet import defer, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaymesh.addresses import CONNECT, INBOUND, AddressBook
from relaymesh.cli.main import main
from relaymesh.cli.peertable import source_column
from relaymesh.keystore import KeyStore
from relaymesh.test.realtime import loopback_node, wait_for


class SourceColumnTests(SynchronousTestCase):
    def test_same_address(self):
        """
        The remembered address is the one shown: SOURCE is its source
        alone, whatever the C{tls:} prefix and peer id it carries.
        """
        for remembered, shown in [
            ("beta@127.0.0.1:19860", "127.0.0.1:19860"),
            ("tls:beta@127.0.0.1:19860", "127.0.0.1:19860"),
            ("tls:beta@127.0.0.1:19860", "tls:beta@127.0.0.1:19860"),
        ]:
            self.assertEqual(source_column(CONNECT, remembered, shown, "beta"), "connect")

    def test_other_address(self):
        """
        ADDRESS shows another address than the remembered one: SOURCE
        names the remembered one, without the peer id.
        """
        self.assertEqual(
            source_column(CONNECT, "beta@127.0.0.1:19860", "127.0.0.1:19997", "beta"),
            "connect: 127.0.0.1:19860",
        )
        self.assertEqual(
            source_column(INBOUND, "tls:beta@10.0.0.2:9847", "10.0.0.2:51234", "beta"),
            "inbound: tls:10.0.0.2:9847",
        )

    def test_nothing_remembered(self):
        """
        No source: C{-}; a source without an address (or a bad one): its
        description, and the bad text is shown only as printable.
        """
        self.assertEqual(source_column(None, None, "127.0.0.1:1", "beta"), "-")
        self.assertEqual(source_column(CONNECT), "connect")
        self.assertEqual(source_column(CONNECT, "beta@127.0.0.1:1", None, "beta"), "connect: 127.0.0.1:1")
        self.assertEqual(
            source_column(CONNECT, "not an address\x1b[2J", "127.0.0.1:1", "beta"),
            "connect: not an address\\x1b[2J",
        )

    def test_offline_table(self):
        """
        The stored list shows the remembered address, so its SOURCE is the
        source alone.
        """
        data_dir = self.mktemp()
        store = KeyStore(data_dir)
        store.set_identity("alpha")
        store.set_key("beta", os.urandom(32))
        store.update_meta("beta", addr="127.0.0.1:19997")
        AddressBook(data_dir).record("beta", "127.0.0.1:19860", CONNECT)
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "RELAYMESH_API"})
        stdout, stderr = StringIO(), StringIO()
        self.assertEqual(main(["--data-dir", data_dir, "peers"], stdout=stdout, stderr=stderr), 0)
        row = stdout.getvalue().splitlines()[1]
        self.assertEqual(row.split()[:3], ["beta", "127.0.0.1:19860", "connect"])


class LiveTableTests(TestCase):
    """
    Two loopback nodes: beta dials alpha, and alpha remembers the port beta
    announced (source inbound), which is not the port beta's connection
    comes from.
    """

    timeout = 30

    def setUp(self):
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "RELAYMESH_API"})
        self.alpha = loopback_node(self, "alpha", (), True)
        port = self.alpha.listener.port.getHost().port
        self.beta = loopback_node(self, "beta", [f"alpha@127.0.0.1:{port}"], False)
        key = os.urandom(32)
        self.alpha.keystore.set_key("beta", key)
        self.beta.keystore.set_key("alpha", key)
        self.beta.startService()
        return wait_for(lambda: self.alpha.mesh.is_connected("beta"), 10)

    def peers(self, node) -> defer.Deferred:
        stdout, stderr = StringIO(), StringIO()

        def run():
            status = main(["--data-dir", node.keystore.path, "peers"], stdout=stdout, stderr=stderr)
            return status, stdout.getvalue(), stderr.getvalue()

        return threads.deferToThread(run)

    @defer.inlineCallbacks
    def test_inbound_row(self):
        """
        alpha's row for beta shows the address beta's connection comes from,
        and SOURCE the other address alpha remembered for it.
        """
        beta_port = self.beta.listener.port.getHost().port
        yield wait_for(lambda: AddressBook(self.alpha.keystore.path).get("beta") is not None, 10)
        status, out, err = yield self.peers(self.alpha)
        self.assertEqual((status, err), (0, ""))
        [row] = [line for line in out.splitlines() if line.startswith("beta ")]
        state, address, source, remembered = row.split()[1:5]
        self.assertEqual(state, "connected")
        self.assertNotEqual(address, f"127.0.0.1:{beta_port}")
        self.assertEqual((source, remembered), ("inbound:", f"127.0.0.1:{beta_port}"))
