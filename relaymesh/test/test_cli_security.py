"""
Tests for C{relaymesh tls-init}, C{tls-unpin} and C{mark-legacy}.
"""

import io
import json

from twisted.trial.unittest import SynchronousTestCase

from relaymesh.cli.main import main
from relaymesh.keystore import KeyStore
from relaymesh.tls import NodeCertificate


class TLSCommandTests(SynchronousTestCase):
    def setUp(self):
        self.data_dir = self.mktemp()

    def run_cli(self, *args):
        out, err = io.StringIO(), io.StringIO()
        status = main(["--data-dir", self.data_dir, *args], out, err)
        return status, out.getvalue(), err.getvalue()

    def test_init(self):
        status, out, err = self.run_cli("--json", "tls-init", "--dns", "relay.example", "--ip", "192.0.2.1")
        self.assertEqual((status, err), (0, ""))
        result = json.loads(out)
        self.assertEqual(result["fingerprint"], NodeCertificate.from_data_dir(self.data_dir).fingerprint)
        status, out, err = self.run_cli("tls-init")
        self.assertEqual(status, 2)
        self.assertIn("already exists; use --force", err)
        self.assertEqual(self.run_cli("tls-init", "--force")[0], 0)

    def test_init_bad_ip(self):
        status, out, err = self.run_cli("tls-init", "--ip", "nope")
        self.assertEqual(status, 2)
        self.assertEqual(len(err.splitlines()), 1)

    def test_unpin(self):
        store = KeyStore(self.data_dir)
        store.update_meta("beta", addr="h:1", tls_fingerprint="sha256:" + "1" * 64)
        status, out, err = self.run_cli("tls-unpin", "beta")
        self.assertEqual(status, 0, err)
        self.assertEqual(store.meta("beta"), {"addr": "h:1"})
        status, out, err = self.run_cli("tls-unpin", "beta")
        self.assertEqual(status, 2)
        self.assertIn("no certificate is pinned for beta", err)
        self.assertEqual(self.run_cli("tls-unpin", "../x")[0], 2)

    def test_mark_legacy(self):
        """
        C{mark-legacy} lets a paired peer use claudectl's one-way handshake,
        and says what that gives up; C{--off} takes it back.
        """
        store = KeyStore(self.data_dir)
        store.set_key("beta", bytes(32))
        store.update_meta("beta", legacy=False)  # used with relaymesh before
        status, out, err = self.run_cli("mark-legacy", "beta")
        self.assertEqual((status, err), (0, ""))
        self.assertIs(store.meta("beta")["legacy"], True)
        self.assertIn("in clear", out)
        status, out, err = self.run_cli("--json", "mark-legacy", "--off", "beta")
        self.assertEqual((status, json.loads(out)), (0, {"peer_id": "beta", "legacy": False}))
        self.assertIs(store.meta("beta")["legacy"], False)

    def test_mark_legacy_refusals(self):
        """
        A peer without a key, or an invalid id, is refused with one line
        and nothing is written.
        """
        status, out, err = self.run_cli("mark-legacy", "gamma")
        self.assertEqual(status, 2)
        self.assertEqual(err.strip(), "relaymesh: error: no key for gamma: pair with it first")
        self.assertEqual(KeyStore(self.data_dir).meta("gamma"), {})
        status, out, err = self.run_cli("mark-legacy", "../x")
        self.assertEqual((status, len(err.splitlines())), (2, 1))


class StrongPairCommandTests(SynchronousTestCase):
    def test_pair_strong(self):
        """
        C{pair --strong} arms a one-time code and prints the join command.
        """
        from relaymesh.cli import pairing as cli_pairing
        from relaymesh.handshake.pake import normalize_strong_code

        data_dir = self.mktemp()
        self.patch(cli_pairing, "default_invite_host", lambda: "192.0.2.5")
        self.patch(cli_pairing, "clock", lambda: 1000.0)
        out, err = io.StringIO(), io.StringIO()
        status = main(["--data-dir", data_dir, "--json", "pair", "--strong", "--expires", "5"], out, err)
        self.assertEqual((status, err.getvalue()), (0, ""))
        result = json.loads(out.getvalue())
        code = result["strong_code"]
        self.assertEqual(normalize_strong_code(code), code)
        store = KeyStore(data_dir)
        self.assertEqual(result["peer"], f"{store.identity()}@192.0.2.5:9847")
        self.assertTrue(store.strong_code_armed(1299.0))
        self.assertFalse(store.strong_code_armed(1300.0))
        self.assertIsNone(store.pending_key())

    def test_bad_expiry(self):
        out, err = io.StringIO(), io.StringIO()
        status = main(["--data-dir", self.mktemp(), "pair", "--strong", "--expires", "0"], out, err)
        self.assertEqual(status, 2)
        self.assertIn("--expires", err.getvalue())
