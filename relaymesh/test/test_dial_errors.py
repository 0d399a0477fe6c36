"""
Tests for errors that say why (L{relaymesh.linkerrors}, L{relaymesh.dialer}):
a refused, timed out or unresolvable dial, a plain dial to a C{tls:}
listener and a C{tls:} dial to a plain one, a denied handshake; each on its
first failure in the log (one line), in the peer's status and in the API's
peer rows, and quiet while the reason stays the same.
"""

from __future__ import annotations

import os
from typing import cast

from twisted.internet import defer, error, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaymesh.address import PeerAddress
from relaymesh.dialer import CONNECT_TIMEOUT, RelayClientFactory
from relaymesh.join import JOIN_TIMEOUT, JoinError, join_directly
from relaymesh.joinforms import parse_join_input
from relaymesh.keystore import KeyStore
from relaymesh.linkerrors import CHALLENGE_TIMEOUT, PLAIN_EXPECTED, TLS_EXPECTED
from relaymesh.test.apisupport import TOKEN, ApiHarness
from relaymesh.test.realtime import wait_for
from relaymesh.test.support import FakeConnector, Node, make_clock, pair_keys
from relaymesh.tls import TLSServerFactory

PORT = 9999


class Captured:
    """
    The log events of a dialler and of its node's registry.
    """

    def __init__(self, *owners) -> None:
        self.events: list[dict] = []
        for owner in owners:
            # the logger only calls its observer with each event
            owner.log = Logger(namespace="test", observer=cast(ILogObserver, self.events.append))

    def lines(self, level: LogLevel | None = None) -> list[str]:
        from twisted.logger import formatEvent

        return [
            formatEvent(e)
            for e in self.events
            if level is None or e["log_level"] is level
        ]

    def loud(self) -> list[str]:
        """
        What is logged at info level or above.
        """
        return [
            line
            for level in (LogLevel.info, LogLevel.warn, LogLevel.error)
            for line in self.lines(level)
        ]


class DialTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = make_clock()
        self.alpha = Node("alpha", self.clock)
        self.beta = Node("beta", self.clock)
        pair_keys(self.alpha, self.beta)

    def dial(self, node: Node, target: str | None, port: int = PORT, tls: bool = False):
        factory = RelayClientFactory(
            node.mesh,
            node.keys,
            PeerAddress(target, "127.0.0.1", port, tls=tls),
            self.clock,
            certificate=node.certificate,
        )
        self.captured = Captured(factory, node.mesh.registry)
        self.addCleanup(factory.stopTrying)
        if tls:
            self.clock.connectTCP(
                "127.0.0.1", port, TLSMemoryBIOFactory(node.certificate.client_options(), True, factory)
            )
        else:
            self.clock.connectTCP("127.0.0.1", port, factory)
        self.clock.flush()
        return factory


class ConnectFailureTests(DialTestCase):
    def test_refused(self):
        """
        Nothing listening: the first failure says so, in the log (one line),
        on the dialler and in the peer's status.
        """
        factory = self.dial(self.beta, "alpha")
        reason = "connection refused by 127.0.0.1:9999: nothing is listening there"
        self.assertEqual(factory.last_error, reason)
        status = self.beta.mesh.peer("alpha")
        self.assertEqual((status.last_error, status.last_error_at), (reason, self.clock.seconds()))
        self.assertEqual(
            self.captured.loud(),
            [
                "reconnecting to alpha at 127.0.0.1:9999 in 5 s",
                f"cannot connect to alpha at 127.0.0.1:9999: {reason}",
            ],
        )

    def test_quiet_while_the_same(self):
        """
        Later failures for the same reason are retried quietly (debug); a new
        reason is logged again.
        """
        factory = self.dial(self.beta, "alpha")
        self.clock.advance(5)  # the retry: refused again
        self.clock.advance(10)
        self.assertEqual(len(self.captured.loud()), 2)
        self.assertEqual(len(self.captured.lines(LogLevel.debug)), 3 + 2)  # connecting x3, retries
        factory.clientConnectionFailed(FakeConnector(), Failure(error.TimeoutError()))
        self.assertIn(
            f"cannot connect to alpha at 127.0.0.1:9999: no answer from 127.0.0.1:9999 within "
            f"{CONNECT_TIMEOUT} s (connection timed out)",
            self.captured.loud(),
        )

    def test_timed_out_and_unknown_host(self):
        factory = self.dial(self.beta, "alpha")
        factory.clientConnectionFailed(FakeConnector(), Failure(error.TimeoutError()))
        self.assertEqual(
            factory.last_error,
            f"no answer from 127.0.0.1:9999 within {CONNECT_TIMEOUT} s (connection timed out)",
        )
        factory.clientConnectionFailed(FakeConnector(), Failure(error.DNSLookupError("nowhere")))
        self.assertEqual(factory.last_error, "host 127.0.0.1 unknown (its name does not resolve)")
        self.assertEqual(self.beta.mesh.peer("alpha").last_error, factory.last_error)

    def test_bare_address(self):
        """
        A dial without a peer id keeps its last error on the dialler.
        """
        factory = self.dial(self.beta, None)
        self.assertEqual(factory.last_error, "connection refused by 127.0.0.1:9999: nothing is listening there")
        self.assertIn("cannot connect to 127.0.0.1:9999: connection refused", self.captured.loud()[-1])
        self.assertNotIn("unknown peer", self.captured.loud()[-1])

    def test_cleared_on_connect(self):
        factory = self.dial(self.beta, "alpha")
        self.clock.listenTCP(PORT, self.alpha.server)
        self.clock.advance(5)
        self.assertTrue(self.beta.mesh.is_connected("alpha"))
        self.assertIsNone(factory.last_error)
        self.assertIsNone(self.beta.mesh.peer("alpha").last_error)

    def test_no_key(self):
        """
        A peer without a key is not dialled, and says why.
        """
        gamma = Node("gamma", self.clock)
        self.dial(gamma, "alpha")
        self.assertEqual(
            gamma.mesh.peer("alpha").last_error,
            "no key for alpha: pair first (relaymesh invite / relaymesh join)",
        )


class HandshakeFailureTests(DialTestCase):
    def test_denied(self):
        """
        The peer does not know our key: the first failure says so, and
        becomes the last error.
        """
        self.beta.keys.keys["alpha"] = os.urandom(32)  # not alpha's key for beta
        self.clock.listenTCP(PORT, self.alpha.server)
        factory = self.dial(self.beta, "alpha")
        reason = factory.last_error
        self.assertTrue(reason.startswith("the peer denied the handshake"), reason)
        self.assertIn("does not accept this node's key", reason)
        self.assertIn("pair again", reason)
        self.assertEqual(self.beta.mesh.peer("alpha").last_error, reason)
        [denied] = [line for line in self.captured.loud() if line.startswith("handshake denied")]
        self.assertIn(reason, denied)
        self.clock.advance(5)
        self.assertEqual(
            len([line for line in self.captured.loud() if line.startswith("handshake denied")]), 1
        )


class TLSMismatchTests(DialTestCase):
    def test_plain_dial_to_tls_listener(self):
        """
        A plain dial to a C{tls:} listener hears nothing (the TLS server
        waits for a ClientHello): after a few seconds the dialler says to
        dial C{tls:}, rather than waiting 30 s for the handshake timeout.
        """
        captured_alpha = Captured(self.alpha.mesh.registry)
        self.clock.listenTCP(PORT, TLSServerFactory(self.alpha.certificate.server_options(), False, self.alpha.server))
        factory = self.dial(self.beta, "alpha")
        self.assertIsNone(factory.last_error)
        self.clock.advance(CHALLENGE_TIMEOUT)
        [line] = captured_alpha.loud()
        self.assertRegex(
            line,
            r"\Ahandshake denied with 127\.0\.0\.1:(\d+) \(inbound\): 127\.0\.0\.1:\1 closed the "
            r"connection without a word: it may have dialled this tls: listener in clear \(it "
            r"should dial tls:ID@HOST:PORT\)\Z",
        )
        self.assertEqual(
            factory.last_error,
            f"no challenge from 127.0.0.1:{PORT} within {CHALLENGE_TIMEOUT:g} s: it may be a TLS "
            f"listener; dial it as tls:alpha@127.0.0.1:{PORT}",
        )
        self.assertEqual(factory.current.mismatch, TLS_EXPECTED)
        self.assertEqual(self.beta.mesh.peer("alpha").last_error, factory.last_error)

    def test_tls_record_first(self):
        """
        A TLS record as the first bytes a plain connector reads: a TLS
        listener, said at once.
        """
        factory = self.dial(self.beta, "alpha")
        server = Factory.forProtocol(_SendsAlert)
        self.clock.listenTCP(PORT, server)
        self.clock.advance(5)
        self.assertEqual(
            factory.last_error,
            f"127.0.0.1:{PORT} answered with TLS: it is a TLS listener; dial it as tls:alpha@127.0.0.1:{PORT}",
        )

    def test_tls_handshake_at_a_plain_listener(self):
        """
        A plain listener whose first bytes are a TLS ClientHello (a C{tls:}
        dial) drops the connection and says why. (The dialler's side, a TLS
        handshake that fails on the plain challenge, is tested on real
        sockets below: the memory network's TLS does not fail the same way.)
        """
        captured_alpha = Captured(self.alpha.mesh.registry)
        self.clock.listenTCP(PORT, self.alpha.server)
        self.dial(self.beta, "alpha", tls=True)
        [line] = captured_alpha.loud()
        self.assertRegex(
            line,
            r"\Ahandshake denied with 127\.0\.0\.1:(\d+) \(inbound\): a TLS handshake from "
            r"127\.0\.0\.1:\1 to this plain listener: the peer dialled it with tls:, it should "
            r"dial ID@HOST:PORT without tls:\Z",
        )


class _SendsAlert(Protocol):
    """
    A server that speaks first with a TLS alert record.
    """

    def connectionMade(self):
        self.transport.write(b"\x15\x03\x03\x00\x02\x02\x28")


class ApiRowTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_last_error_in_api_rows(self):
        """
        The peer rows of the API carry C{last_error}, and when.
        """
        h = ApiHarness(self)
        h.keystore.set_key("beta", os.urandom(32))
        factory = RelayClientFactory(
            h.node.mesh, h.keystore, PeerAddress("beta", "127.0.0.1", PORT), h.clock
        )
        self.addCleanup(factory.stopTrying)
        h.clock.connectTCP("127.0.0.1", PORT, factory)
        h.clock.flush()
        code, body, _ = yield h.request("GET", "/api/peers/beta", token=TOKEN)
        self.assertEqual(code, 200)
        self.assertEqual(body["last_error"], "connection refused by 127.0.0.1:9999: nothing is listening there")
        self.assertEqual(body["last_error_at"], h.clock.seconds())


class RealSocketTests(TestCase):
    """
    The TLS mismatches on real loopback sockets, with the real TLS stack.
    """

    timeout = 20

    def setUp(self):
        self.clock = make_clock()
        self.alpha = Node("alpha", self.clock)
        self.beta = Node("beta", self.clock)
        pair_keys(self.alpha, self.beta)

    def listen(self, factory):
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def client(self, port: int, tls: bool) -> RelayClientFactory:
        factory = RelayClientFactory(
            self.beta.mesh,
            self.beta.keys,
            PeerAddress("alpha", "127.0.0.1", port, tls=tls),
            self.clock,
            certificate=self.beta.certificate,
        )
        factory.stopTrying()  # one attempt: no reconnection in a real reactor
        return factory

    @defer.inlineCallbacks
    def test_tls_dial_to_plain_listener(self):
        """
        A C{tls:} dial to a plain listener: the TLS handshake fails on the
        plain challenge, and the dialler says to dial without C{tls:}.
        """
        port = self.listen(self.alpha.server)
        factory = self.client(port, tls=True)
        connector = reactor.connectSSL("127.0.0.1", port, factory, self.beta.certificate.client_options(), timeout=5)
        self.addCleanup(connector.disconnect)
        yield wait_for(lambda: factory.last_error is not None, 10)
        self.assertTrue(factory.last_error.startswith(f"the TLS handshake with 127.0.0.1:{port} failed ("))
        self.assertTrue(
            factory.last_error.endswith(
                f"it may be a plain listener; dial it as alpha@127.0.0.1:{port} (without tls:)"
            ),
            factory.last_error,
        )
        self.assertEqual(factory.current.mismatch, PLAIN_EXPECTED)

    @defer.inlineCallbacks
    def test_tls_join_of_a_plain_node(self):
        """
        C{relaymesh join --tls} against a plain listener says to join
        without C{--tls}.
        """
        port = self.listen(self.alpha.server)
        store = KeyStore(self.mktemp())
        store.set_identity("beta")
        invite = parse_join_input("0001-0203-0405-0607", f"alpha@127.0.0.1:{port}")
        d = join_directly(store, invite, reactor, timeout=10, certificate=self.beta.certificate)
        with self.assertRaises(JoinError) as raised:
            yield d
        self.assertEqual(
            str(raised.exception),
            f"the TLS handshake with 127.0.0.1:{port} failed: it may be a plain listener; run "
            f"relaymesh join again without --tls",
        )

    @defer.inlineCallbacks
    def test_plain_dial_to_tls_listener(self):
        """
        A plain dial to a C{tls:} listener hears nothing; the dialler says to
        dial C{tls:} once the challenge is overdue.
        """
        port = self.listen(TLSServerFactory(self.alpha.certificate.server_options(), False, self.alpha.server))
        factory = self.client(port, tls=False)
        connector = reactor.connectTCP("127.0.0.1", port, factory, timeout=5)
        self.addCleanup(connector.disconnect)
        yield wait_for(lambda: factory.current is not None and factory.current.transport is not None, 10)
        self.clock.advance(CHALLENGE_TIMEOUT)  # the mesh's clock: the watch's timer
        yield wait_for(lambda: factory.last_error is not None, 10)
        self.assertEqual(
            factory.last_error,
            f"no challenge from 127.0.0.1:{port} within {CHALLENGE_TIMEOUT:g} s: it may be a TLS "
            f"listener; dial it as tls:alpha@127.0.0.1:{port}",
        )


class JoinTests(SynchronousTestCase):
    def test_plain_join_of_a_tls_node(self):
        """
        C{relaymesh join} without C{--tls} against a C{tls:} listener says
        to use C{--tls} within a few seconds, instead of waiting 30 s with no
        hint.
        """
        clock = make_clock()
        alpha = Node("alpha", clock)
        clock.listenTCP(PORT, TLSServerFactory(alpha.certificate.server_options(), False, alpha.server))
        store = KeyStore(self.mktemp())
        store.set_identity("beta")
        invite = parse_join_input("0001-0203-0405-0607", f"alpha@127.0.0.1:{PORT}")
        d = join_directly(store, invite, clock)
        clock.advance(CHALLENGE_TIMEOUT)
        message = str(self.failureResultOf(d, JoinError).value)
        self.assertEqual(
            message,
            f"no challenge from 127.0.0.1:{PORT}: it may be a TLS listener; run relaymesh join "
            f"again with --tls",
        )
        self.assertLess(CHALLENGE_TIMEOUT, JOIN_TIMEOUT)
