"""
The C{Host} check of the control API (L{relaymesh.control.hosts}): a page
that rebinds a name of its own to 127.0.0.1 reaches neither the dashboard,
nor a public C{/metrics}, nor anything else.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaymesh import tap
from relaymesh.control.hosts import HostPolicy, InvalidHost, parse_host
from relaymesh.keystore import KeyStore
from relaymesh.test.apisupport import ApiHarness


class ParseTests(SynchronousTestCase):
    def test_forms(self):
        for text, host, port in [
            ("localhost", "localhost", None),
            ("Example.COM:8080", "example.com", 8080),
            ("127.0.0.1:9849", "127.0.0.1", 9849),
            ("[::1]", "::1", None),
            ("[::1]:9849", "::1", 9849),
        ]:
            parsed = parse_host(text)
            self.assertEqual((text, parsed.host, parsed.port), (text, host, port))
        self.assertEqual(str(parse_host("[::1]:9849")), "[::1]:9849")

    def test_malformed(self):
        for text in ["", ":80", "a:0", "a:65536", "a:x", "[::1", "[nope]:1", "[::1]x", "a b", "a/b", "\x1b[2J", "bad\u00e9"]:
            with self.assertRaises(InvalidHost) as ctx:
                parse_host(text)
            message = str(ctx.exception)
            self.assertNotIn("\n", message)
            self.assertNotIn("\x1b", message)


class PolicyTests(SynchronousTestCase):
    """
    Which headers an API on 127.0.0.1:9849 (or on every interface) answers.
    """

    def refusal(self, header, policy=None, local="127.0.0.1", port=9849, secure=False):
        policy = policy or HostPolicy()
        return policy.refusal(header, local, port, secure)

    def test_loopback_and_own_address(self):
        for header in [b"localhost:9849", b"LOCALHOST:9849", b"127.0.0.1:9849", b"[::1]:9849"]:
            self.assertIsNone(self.refusal(header), header)
        self.assertIsNone(self.refusal(b"192.168.1.5:9849", local="192.168.1.5"))
        self.assertIsNone(self.refusal(b"127.0.0.1:9849", local="::ffff:127.0.0.1"))
        self.assertIsNone(self.refusal(b"[fe80::1]:9849", local="fe80::1%eth0"))
        self.assertIsNone(self.refusal(b"localhost", port=80))
        self.assertIsNone(self.refusal(b"localhost", port=443, secure=True))

    def test_refused(self):
        """
        A rebound name, another port, another address, or none at all.
        """
        for header, fragment in [
            (b"evil.example:9849", "Host 'evil.example:9849' is not this node's API"),
            (b"localhost.evil.example:9849", "is not this node's API"),
            (b"127.0.0.1:80", "with port 9849"),
            (b"localhost", "with port 9849"),
            (b"10.0.0.9:9849", "is not this node's API"),
            (None, "missing Host header"),
            (b"", "malformed Host header"),
            (b"a b", "malformed Host header"),
            (b"\xff\x1b]52;c;aGk=\x07", "malformed Host header"),
        ]:
            refusal = self.refusal(header)
            self.assertIsNotNone(refusal, header)
            self.assertIn(fragment, refusal)
            self.assertTrue(refusal.isprintable(), refusal)
        self.assertIsNotNone(self.refusal(b"localhost", port=443))

    def test_configured(self):
        """
        Names given with --api-host: a bare one on the API's port, one with
        a port on that port (a tunnel, a proxy).
        """
        policy = HostPolicy(["relay.lan", "Tunnel.local:5000"])
        self.assertIsNone(self.refusal(b"relay.lan:9849", policy))
        self.assertIsNone(self.refusal(b"tunnel.local:5000", policy))
        self.assertIsNotNone(self.refusal(b"relay.lan:5000", policy))
        self.assertIsNotNone(self.refusal(b"tunnel.local:9849", policy))
        self.assertRaises(InvalidHost, HostPolicy, ["bad host"])

    def test_not_ip(self):
        """
        A connection that is no IP connection (a Unix socket) is not
        reachable by name from a browser: any Host is answered.
        """
        self.assertIsNone(HostPolicy().refusal(b"evil.example", None, None, False))


class RebindingTests(TestCase):
    """
    The DNS rebinding attack over HTTP: requests with the attacker's name in
    C{Host} are refused with 421 and a one-line error, whatever the path
    and whether or not the token comes with them.
    """

    timeout = 20

    def setUp(self):
        self.h = ApiHarness(self, metrics_public=True, hosts=["relay.lan"])
        self.port = self.h.port.getHost().port

    @defer.inlineCallbacks
    def test_rebound_name(self):
        evil = {"host": [f"attacker.example:{self.port}"]}
        for method, path, token in [
            ("GET", "/", None),
            ("GET", "/metrics", None),
            ("GET", "/api/status", None),
            ("GET", "/api/status", "test-token-0123456789"),
            ("GET", "/api/proof?nonce=" + "00" * 32, None),
            ("POST", "/api/cookie", "test-token-0123456789"),
        ]:
            code, body, response = yield self.h.request(method, path, token=token, headers=evil)
            self.assertEqual((path, code), (path, 421))
            self.assertIn(f"Host 'attacker.example:{self.port}' is not this node's API", body["error"])
            self.assertIsNone(response.headers.getRawHeaders(b"set-cookie"))
            self.assertEqual(response.phrase, b"Misdirected Request")

    @defer.inlineCallbacks
    def test_own_names(self):
        for host in [f"127.0.0.1:{self.port}", f"localhost:{self.port}", f"relay.lan:{self.port}"]:
            code, _, _ = yield self.h.request("GET", "/", token=None, headers={"host": [host]})
            self.assertEqual((host, code), (host, 200))
            code, _, _ = yield self.h.request("GET", "/metrics", token=None, headers={"host": [host]})
            self.assertEqual((host, code), (host, 200))


class OptionTests(SynchronousTestCase):
    def parse(self, *args):
        options = tap.Options()
        options.parseOptions(["--data-dir", self.data_dir, *args])
        return options

    def setUp(self):
        self.data_dir = self.mktemp()
        KeyStore(self.data_dir).set_identity("alpha")

    def test_api_host(self):
        options = self.parse("--api-host", "relay.lan", "--api-host", "tunnel.local:5000")
        self.assertEqual(options["api-host"], ["relay.lan", "tunnel.local:5000"])
        self.assertEqual(tap.node_config(options).api_hosts, ("relay.lan", "tunnel.local:5000"))
        node = tap.makeService(options, reactor=MemoryReactorClock())
        self.assertIsNone(node.api.control.hosts.refusal(b"tunnel.local:5000", "127.0.0.1", 9849, False))
        self.assertEqual(self.parse()["api-host"], [])

    def test_bad_api_host(self):
        with self.assertRaises(usage.UsageError) as ctx:
            self.parse("--api-host", "no such host")
        self.assertIn("--api-host: no such host: not a host name or address", str(ctx.exception))
        self.assertNotIn("\n", str(ctx.exception))
