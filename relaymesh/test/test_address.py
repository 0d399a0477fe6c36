"""
Tests for L{relaymesh.address}: peer addresses as users write them.
"""

from twisted.trial.unittest import SynchronousTestCase

from relaymesh.address import InvalidAddress, PeerAddress, parse_peer_address


class ParsePeerAddressTests(SynchronousTestCase):
    def test_forms(self):
        for text, expected in [
            ("10.0.0.7:9900", PeerAddress(None, "10.0.0.7", 9900)),
            ("laptop-a3f2@10.0.0.7:9900", PeerAddress("laptop-a3f2", "10.0.0.7", 9900)),
            ("box.example.org", PeerAddress(None, "box.example.org", 9847)),
            ("a_b@[::1]:9848", PeerAddress("a_b", "::1", 9848)),
            ("[fe80::1]", PeerAddress(None, "fe80::1", 9847)),
            ("  peer@host:1  ", PeerAddress("peer", "host", 1)),
            ("tls:peer@host:9847", PeerAddress("peer", "host", 9847, tls=True)),
            ("legacy:peer@host", PeerAddress("peer", "host", 9847, legacy=True)),
            ("tls:9847", PeerAddress(None, "tls", 9847)),
        ]:
            self.assertEqual(parse_peer_address(text), expected, text)

    def test_round_trip(self):
        for text in ("h:1", "p@h:1", "p@[::1]:2", "tls:p@h:3", "legacy:p@h:4"):
            self.assertEqual(str(parse_peer_address(text)), text)
        self.assertEqual(PeerAddress(None, "::1", 5).hostport, "[::1]:5")

    def test_errors(self):
        """
        Each malformed address is refused with a one-line reason.
        """
        for text, fragment in [
            ("", "empty"),
            ("host:0", "invalid port"),
            ("host:65536", "invalid port"),
            ("host:http", "invalid port"),
            ("bad id@host", "invalid peer id"),
            ("_pending@host", "reserved"),
            ("@host", "empty"),
            ("::1", "brackets"),
            ("[::1", "unclosed"),
            ("[::1]9", "expected ':port'"),
            ("peer@", "invalid host"),
            ("a/b:1", "invalid host"),
            # a terminal escape or a new line in a host (an IPv6 zone takes
            # any character) never reaches the key store or a log line
            ("[fe80::1%\x1b[31m]:9847", "invalid host"),
            ("p@[fe80::1%a\nb]:9847", "invalid host"),
            ("host\x07:1", "invalid host"),
            ("tls:legacy:p@h", "cannot use TLS"),
            ("tls:tls:h", "given twice"),
            ("legacy:h:4", "needs its id"),
        ]:
            with self.assertRaises(InvalidAddress) as ctx:
                parse_peer_address(text)
            self.assertIn(fragment, str(ctx.exception), text)
            self.assertNotIn("\n", str(ctx.exception))
