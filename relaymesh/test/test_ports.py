"""
Ports are ASCII digits, wherever one is read from a user or the network.

C{str.isdigit} is true of C{"\\u00b2"}, which C{int} refuses (a traceback,
or a 500 from the control API), and of other scripts' digits, which C{int}
reads (C{"\\u0669\\u0668\\u0664\\u0667"} is 9847). These tests replay both
through every parser of a port: L{relaymesh.address}, the invite forms, the
discovery target, the C{relaymesh} and C{twistd relaymesh} options, the
running node's answer, and the control API.
"""

from __future__ import annotations

import json
import os
from io import StringIO

from twisted.internet import defer
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaymesh import join, tap
from relaymesh.address import InvalidAddress, is_port_text, parse_peer_address, parse_port
from relaymesh.cli import pairing as cli_pairing
from relaymesh.cli.main import main
from relaymesh.codes import InvalidCode, decode_invite_link
from relaymesh.discovery import parse_target
from relaymesh.joinforms import decode_relaymesh_link, parse_join_input
from relaymesh.keystore import KeyStore
from relaymesh.test.apisupport import ApiHarness
from relaymesh.test.support import EPOCH

#: Ports written with characters that are not ASCII digits, each of which
#: C{str.isdigit} calls digits: a superscript two (C{int} refuses it),
#: Arabic-Indic, fullwidth and mathematical bold digits (C{int} reads them
#: as 9847).
NOT_ASCII = ["\u00b2", "\u0669\u0668\u0664\u0667", "\uff19\uff18\uff14\uff17", "\U0001d7d7\U0001d7d6\U0001d7d2\U0001d7d5"]

#: Other text that is no port.
NOT_PORTS = ["", "0", "65536", "99999", "-1", "+9847", " 9847", "9847 ", "98 47", "0x10", "1" * 5000]


class ParsePortTests(SynchronousTestCase):
    """
    L{parse_port} is the one parser of a port.
    """

    def test_asciiDigitsOnly(self):
        """
        Only one to five ASCII digits, 1 to 65535, are a port.
        """
        for text in NOT_ASCII + NOT_PORTS:
            self.assertFalse(is_port_text(text) and 0 < int(text) < 65536, text[:20])
            error = self.assertRaises(InvalidAddress, parse_port, text)
            self.assertIn("invalid port", str(error))
            self.assertNotIn("\n", str(error))
        for text, port in [("1", 1), ("9847", 9847), ("65535", 65535), ("09847", 9847)]:
            self.assertEqual(parse_port(text), port)

    def test_peerAddress(self):
        """
        A peer address with such a port is refused as an invalid address,
        not with C{int}'s C{ValueError}, and never read as 9847.
        """
        for port in NOT_ASCII:
            for text in [f"a@h:{port}", f"h:{port}", f"[::1]:{port}", f"tls:{port}", f"tls:p@h:{port}"]:
                error = self.assertRaises(InvalidAddress, parse_peer_address, text)
                self.assertIn("invalid port", str(error))
                self.assertNotIn("\n", str(error))


class InviteFormTests(SynchronousTestCase):
    """
    The invite forms that carry a port read it as ASCII digits.
    """

    def test_links(self):
        for port in NOT_ASCII:
            for decode, link in [
                (decode_invite_link, f"cctl://alpha@10.0.0.2:{port}/k/0001020304050607"),
                (decode_relaymesh_link, f"relaymesh://alpha@10.0.0.2:{port}/k/0001020304050607"),
                (decode_relaymesh_link, f"relaymesh://alpha@10.0.0.2:{port}/s/417-gem-oak"),
            ]:
                error = self.assertRaises(InvalidCode, decode, link)
                self.assertIn("bad port", str(error))

    def test_pairCodePeer(self):
        """
        C{join CODE --peer ID@HOST:PORT} refuses such a port with a one-line
        reason naming C{--peer}.
        """
        for port in NOT_ASCII:
            for code in ["0001-0203-0405-0607", "417-gem-oak"]:
                error = self.assertRaises(InvalidCode, parse_join_input, code, f"alpha@10.0.0.2:{port}")
                self.assertTrue(str(error).startswith("--peer: invalid port"), str(error))


class DiscoveryTargetTests(SynchronousTestCase):
    def test_target(self):
        for port in NOT_ASCII + ["0", "1" * 5000]:
            error = self.assertRaises(ValueError, parse_target, f"127.0.0.1:{port}")
            self.assertIn("invalid port", str(error))
        self.assertEqual(parse_target("127.0.0.1:9848"), ("127.0.0.1", 9848))


class RunningNodePortTests(SynchronousTestCase):
    """
    The port C{invite} reads from the running node's status is checked too.
    """

    def test_listen(self):
        class Node:
            status: dict

        for listen, expected in [("0.0.0.0:9847", 9847), ("[::]:9900", 9900)] + [
            (f"0.0.0.0:{port}", None) for port in NOT_ASCII + ["0", "x", ""]
        ]:
            node = Node()
            node.status = {"listen": listen}
            # called at once, by local_node_port
            self.patch(join, "local_node", lambda data_dir, identity, *node_options: node)  # noqa: B023
            self.assertEqual(join.local_node_port("dir", "me"), expected, listen)


class CommandLineTests(SynchronousTestCase):
    """
    C{relaymesh invite --port}, C{discover --port} and C{join --peer} say
    what is wrong in one line.
    """

    def setUp(self):
        self.dataDir = self.mktemp()
        KeyStore(self.dataDir).set_identity("me")
        self.patch(cli_pairing, "clock", lambda: EPOCH)

    def command(self, *argv: str) -> tuple[int, str, str]:
        stdout, stderr = StringIO(), StringIO()
        status = main([*argv, "--data-dir", self.dataDir], stdout=stdout, stderr=stderr)
        return status, stdout.getvalue(), stderr.getvalue()

    def test_options(self):
        for port in NOT_ASCII:
            for argv in [
                ("invite", "--host", "10.0.0.2", "--port", port),
                ("discover", "--port", port),
            ]:
                status, out, err = self.command(*argv)
                self.assertEqual((status, out), (2, ""), err)
                self.assertIn("is not a port from 1 to 65535", err)
                self.assertFalse(os.path.exists(os.path.join(self.dataDir, "peers", "_pending.key")))

    def test_joinPeer(self):
        for port in NOT_ASCII:
            status, out, err = self.command("join", "0001-0203-0405-0607", "--peer", f"alpha@10.0.0.2:{port}")
            self.assertEqual((status, out), (2, ""))
            self.assertTrue(err.startswith("relaymesh: error: --peer: invalid port"), err)
            self.assertEqual(err.count("\n"), 1)


class TwistdOptionTests(SynchronousTestCase):
    """
    C{twistd relaymesh}'s options refuse such ports before anything starts.
    """

    def parse(self, *args: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(["--data-dir", self.mktemp(), *args])
        return options

    def test_refused(self):
        for port in NOT_ASCII:
            for option, value in [
                ("--listen", f"tcp:{port}"),
                ("--listen", f"tls:{port}"),
                ("--listen", f"tcp:port={port}"),
                ("--listen", f"tcp:9847:backlog={port}"),
                ("--api", f"tcp:{port}:interface=127.0.0.1"),
                ("--peers", f"alpha@127.0.0.1:{port}"),
                ("--announce-to", f"127.0.0.1:{port}"),
                ("--max-peers", port),
            ]:
                with self.assertRaises(usage.UsageError) as ctx:
                    self.parse(option, value)
                message = str(ctx.exception)
                self.assertTrue(message.startswith(option) or "max-peers" in message, message)
                self.assertNotIn("\n", message)

    def test_asciiStillWorks(self):
        options = self.parse("--listen", "tcp:9850", "--api", "tcp:9851:interface=127.0.0.1", "--max-peers", "3")
        self.assertEqual((options["listen"], options["api"], options["max-peers"]), (["tcp:9850"], "tcp:9851:interface=127.0.0.1", 3))


class ApiTests(TestCase):
    """
    Over the control API, such an address is a 400 naming the port, not a
    500, and nothing is dialled.
    """

    def setUp(self):
        self.h = ApiHarness(self)
        self.h.keystore.set_key("gamma", os.urandom(32))

    @defer.inlineCallbacks
    def test_connect(self):
        for port in NOT_ASCII:
            code, body, _ = yield self.h.request("POST", "/api/peers", {"addr": f"gamma@127.0.0.1:{port}"})
            self.assertEqual(code, 400, body)
            self.assertIn("invalid port", body["error"])
            self.assertNotIn("\n", body["error"])
        self.assertEqual(self.h.node.outbound(), [])
        code, body, _ = yield self.h.request("POST", "/api/peers", {"addr": "gamma@127.0.0.1:9900"})
        self.assertEqual((code, body["peer_id"]), (202, "gamma"))
        self.assertEqual(json.loads(json.dumps(body))["addr"], "gamma@127.0.0.1:9900")


class ApiUrlPortTests(SynchronousTestCase):
    """
    The command line's C{--api} URL (or a stale C{api-url} file) with a port
    that is not ASCII digits gets its one-line error, not a traceback.
    """

    def test_api_url_ports(self) -> None:
        from relaymesh.control.client import NodeClient

        for url in ("http://127.0.0.1:\u00b2", "http://127.0.0.1:\u0669\u0668\u0664\u0667", "http://[::1]:99999"):
            with self.assertRaises(ValueError) as caught:
                NodeClient(url, "token")
            self.assertIn("has an invalid port", str(caught.exception))
        for url in ("http://127.0.0.1:9849", "http://[::1]:9849/", "http://localhost"):
            self.assertEqual(NodeClient(url, "token").url, url.rstrip("/"))

    def test_status_command(self) -> None:
        data_dir = self.mktemp()
        KeyStore(data_dir).set_identity("alpha")
        with open(os.path.join(data_dir, "api-token"), "w") as f:
            f.write("token\n")
        out, err = StringIO(), StringIO()
        status = main(["--data-dir", data_dir, "status", "--api", "http://127.0.0.1:\u00b2"], out, err)
        self.assertEqual(status, 2)
        self.assertEqual(len(err.getvalue().splitlines()), 1, err.getvalue())
        self.assertIn("invalid port", err.getvalue())
