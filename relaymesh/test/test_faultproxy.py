"""
Tests for L{relaymesh.test.faultproxy}: each fault does what it is named,
on real sockets on 127.0.0.1 against a tiny echo server.

Every test is bounded in time and closes every port and socket it opened
(trial fails a test that leaves one behind).
"""

from __future__ import annotations

import time

from twisted.internet import defer, error, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from relaymesh.test.faultproxy import FaultProxy
from relaymesh.test.realtime import wait_for

#: Seconds any one wait in these tests may take.
WAIT = 5.0


def until(predicate, timeout: float = WAIT, what: str = "") -> defer.Deferred:
    """
    Fire once C{predicate()} is true; fail after C{timeout} seconds.
    """
    return wait_for(predicate, timeout, 0.005, what)


class Peer(Protocol):
    """
    One end of a test connection: records what it reads and how it ended.
    """

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.received = b""
        self.reason = None
        self.lost: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.echo:
            assert self.transport is not None
            self.transport.write(data)

    def connectionLost(self, reason=None) -> None:
        self.reason = reason
        self.lost.callback(None)

    @property
    def gone(self) -> bool:
        return self.reason is not None


class EchoServer(Factory):
    """
    Echoes what it reads; keeps every connection it accepted.
    """

    def __init__(self) -> None:
        self.peers: list[Peer] = []

    def buildProtocol(self, addr) -> Peer:
        peer = Peer(echo=True)
        self.peers.append(peer)
        return peer


class FaultProxyTests(TestCase):
    timeout = 30

    def setUp(self):
        self.echo = EchoServer()
        self.echo_port = reactor.listenTCP(0, self.echo, interface="127.0.0.1")
        self.addCleanup(self.echo_port.stopListening)
        self.clients: list[Peer] = []
        self.addCleanup(self._close_everything)

    def make_proxy(self, **kwargs) -> FaultProxy:
        proxy = FaultProxy(reactor, "127.0.0.1", self.echo_port.getHost().port, **kwargs)
        self.addCleanup(proxy.stop)
        return proxy

    @defer.inlineCallbacks
    def connect(self, proxy: FaultProxy):
        """
        A client connected to the proxy, once the proxy has reached the echo
        server for it.
        """
        before = len(self.echo.peers)
        client = yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.port, timeout=WAIT), Peer()
        )
        self.clients.append(client)
        yield until(
            lambda: len(self.echo.peers) > before or client.gone,
            what="the proxy to reach the target",
        )
        return client

    @defer.inlineCallbacks
    def _close_everything(self):
        peers = [p for p in self.clients + self.echo.peers if not p.gone]
        for peer in peers:
            peer.transport.abortConnection()
        yield until(lambda: all(p.gone for p in peers), what="every test socket to close")

    # -- forwarding ----------------------------------------------------------

    @defer.inlineCallbacks
    def test_forwards_both_ways(self):
        """
        Bytes go through to the target and back, and are counted.
        """
        proxy = self.make_proxy()
        client = yield self.connect(proxy)
        client.transport.write(b"hello")
        yield until(lambda: client.received == b"hello")
        self.assertEqual(self.echo.peers[0].received, b"hello")
        self.assertEqual(
            (
                proxy.received_from_client,
                proxy.bytes_to_target,
                proxy.received_from_target,
                proxy.bytes_to_client,
            ),
            (5, 5, 5, 5),
        )
        self.assertEqual(proxy.bytes_forwarded, 10)
        self.assertEqual((proxy.accepted, proxy.refused, proxy.links()), (1, 0, 1))

    @defer.inlineCallbacks
    def test_large_stream_intact(self):
        """
        A megabyte goes through and back in order.
        """
        proxy = self.make_proxy()
        client = yield self.connect(proxy)
        data = bytes(range(256)) * 4096
        client.transport.write(data)
        yield until(lambda: len(client.received) >= len(data))
        self.assertEqual(client.received, data)
        self.assertEqual(proxy.bytes_forwarded, 2 * len(data))

    @defer.inlineCallbacks
    def test_close_passes_through(self):
        """
        A close on either side reaches the other side as an orderly close.
        """
        proxy = self.make_proxy()
        first = yield self.connect(proxy)
        first.transport.loseConnection()
        yield until(lambda: self.echo.peers[0].gone)
        self.assertTrue(self.echo.peers[0].reason.check(error.ConnectionDone))
        second = yield self.connect(proxy)
        self.echo.peers[1].transport.loseConnection()
        yield until(lambda: second.gone)
        self.assertTrue(second.reason.check(error.ConnectionDone))
        yield until(lambda: proxy.links() == 0)

    @defer.inlineCallbacks
    def test_target_down(self):
        """
        When the target refuses, the proxy closes the client's connection.
        """
        with_nothing = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        port = with_nothing.getHost().port
        yield with_nothing.stopListening()
        proxy = FaultProxy(reactor, "127.0.0.1", port)
        self.addCleanup(proxy.stop)
        client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.port), Peer())
        self.clients.append(client)
        yield until(lambda: client.gone)
        yield until(lambda: proxy.links() == 0)

    # -- cut and reset -------------------------------------------------------

    @defer.inlineCallbacks
    def test_cut(self):
        """
        L{FaultProxy.cut} closes every connection on both sides with a FIN.
        """
        proxy = self.make_proxy()
        clients = []
        for _ in range(3):
            clients.append((yield self.connect(proxy)))
        proxy.cut()
        yield until(lambda: all(p.gone for p in clients + self.echo.peers))
        for peer in clients + self.echo.peers:
            self.assertTrue(peer.reason.check(error.ConnectionDone), peer.reason)
        yield until(lambda: proxy.links() == 0)
        again = yield self.connect(proxy)
        again.transport.write(b"still works")
        yield until(lambda: again.received == b"still works")

    @defer.inlineCallbacks
    def test_reset(self):
        """
        L{FaultProxy.reset} aborts every connection on both sides with an
        RST: both see a lost connection, not an orderly close.
        """
        proxy = self.make_proxy()
        client = yield self.connect(proxy)
        client.transport.write(b"ping")
        yield until(lambda: client.received == b"ping")
        proxy.reset()
        server = self.echo.peers[0]
        yield until(lambda: client.gone and server.gone)
        for peer in (client, server):
            self.assertTrue(peer.reason.check(error.ConnectionLost), peer.reason)
            self.assertFalse(peer.reason.check(error.ConnectionDone))

    # -- blackhole -----------------------------------------------------------

    @defer.inlineCallbacks
    def test_blackhole_holds_until_restore(self):
        """
        While blackholed, the proxy reads but forwards nothing either way,
        not even a close, and both sockets stay open; L{FaultProxy.restore}
        lets what was held through, in order.
        """
        proxy = self.make_proxy()
        client = yield self.connect(proxy)
        server = self.echo.peers[0]
        client.transport.write(b"before ")
        yield until(lambda: client.received == b"before ")
        proxy.blackhole()
        client.transport.write(b"during")
        server.transport.write(b"<from the server>")
        yield until(lambda: proxy.received_from_client == 13 and proxy.received_from_target == 24)
        self.assertEqual(proxy.bytes_to_target, 7)
        self.assertEqual(server.received, b"before ")
        self.assertEqual(client.received, b"before ")
        self.assertFalse(client.gone or server.gone)

        client.transport.loseConnection()
        yield until(lambda: proxy.received_from_client == 13 and client.gone)
        self.assertFalse(server.gone)
        proxy.restore()
        yield until(lambda: server.gone)
        self.assertEqual(server.received, b"before during")
        self.assertTrue(server.reason.check(error.ConnectionDone))
        # What the server sent could no longer reach the client: dropped.
        self.assertGreaterEqual(proxy.bytes_dropped, len(b"<from the server>"))

    @defer.inlineCallbacks
    def test_blackhole_drop(self):
        """
        C{blackhole(drop=True)} discards what arrives; after L{restore}, new
        bytes flow again.
        """
        proxy = self.make_proxy()
        client = yield self.connect(proxy)
        proxy.blackhole(drop=True)
        client.transport.write(b"lost")
        yield until(lambda: proxy.bytes_dropped == 4)
        self.assertEqual(proxy.bytes_to_target, 0)
        proxy.restore()
        client.transport.write(b"kept")
        yield until(lambda: client.received == b"kept")
        self.assertEqual(self.echo.peers[0].received, b"kept")

    @defer.inlineCallbacks
    def test_blackhole_applies_to_new_connections(self):
        """
        A connection made during a blackhole is accepted but carries nothing
        until the blackhole ends.
        """
        proxy = self.make_proxy()
        proxy.blackhole()
        client = yield self.connect(proxy)
        client.transport.write(b"hi")
        yield until(lambda: proxy.received_from_client == 2)
        self.assertEqual(self.echo.peers[0].received, b"")
        proxy.restore()
        yield until(lambda: client.received == b"hi")

    # -- delay ---------------------------------------------------------------

    @defer.inlineCallbacks
    def test_delay_on_injected_clock(self):
        """
        With a delay, bytes move when the injected clock says so, each way,
        and never overtake bytes read before them.
        """
        clock = task.Clock()
        proxy = self.make_proxy(clock=clock)
        client = yield self.connect(proxy)
        proxy.delay(5.0)
        client.transport.write(b"first ")
        yield until(lambda: proxy.received_from_client == 6)
        proxy.delay(0)
        client.transport.write(b"second")
        yield until(lambda: proxy.received_from_client == 12)
        self.assertEqual(proxy.bytes_to_target, 0)
        clock.advance(4.9)
        self.assertEqual(proxy.bytes_to_target, 0)
        clock.advance(0.1)
        self.assertEqual(proxy.bytes_to_target, 12)
        yield until(lambda: client.received == b"first second")
        self.assertEqual(self.echo.peers[0].received, b"first second")

    @defer.inlineCallbacks
    def test_delay_both_ways_in_real_time(self):
        """
        On the reactor's clock, a delay holds bytes that long each way.
        """
        proxy = self.make_proxy()
        client = yield self.connect(proxy)
        proxy.delay(0.15)
        started = time.monotonic()
        client.transport.write(b"x")
        yield until(lambda: client.received == b"x")
        self.assertGreaterEqual(time.monotonic() - started, 0.29)

    def test_negative_delay_refused(self):
        """
        A delay must be a non-negative number of seconds.
        """
        proxy = self.make_proxy()
        self.assertRaises(ValueError, proxy.delay, -1)
        self.assertRaises(ValueError, proxy.delay, float("nan"))

    @defer.inlineCallbacks
    def test_cut_discards_delayed_bytes(self):
        """
        Bytes still waiting out a delay when the link is cut never arrive.
        """
        clock = task.Clock()
        proxy = self.make_proxy(clock=clock)
        client = yield self.connect(proxy)
        proxy.delay(1.0)
        client.transport.write(b"late")
        yield until(lambda: proxy.received_from_client == 4)
        proxy.cut()
        yield until(lambda: client.gone and self.echo.peers[0].gone)
        clock.advance(2)
        self.assertEqual(self.echo.peers[0].received, b"")
        self.assertEqual(clock.getDelayedCalls(), [])

    # -- refuse and stop -----------------------------------------------------

    @defer.inlineCallbacks
    def test_refuse(self):
        """
        While refusing, new connections are closed at once without reaching
        the target; connections already made carry on.
        """
        proxy = self.make_proxy()
        existing = yield self.connect(proxy)
        proxy.refuse()
        refused = yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.port), Peer()
        )
        self.clients.append(refused)
        yield until(lambda: refused.gone)
        self.assertTrue(refused.reason.check(error.ConnectionDone))
        self.assertEqual((proxy.refused, proxy.accepted, len(self.echo.peers)), (1, 1, 1))
        existing.transport.write(b"ok")
        yield until(lambda: existing.received == b"ok")
        proxy.refuse(False)
        again = yield self.connect(proxy)
        again.transport.write(b"back")
        yield until(lambda: again.received == b"back")

    @defer.inlineCallbacks
    def test_stop(self):
        """
        L{FaultProxy.stop} closes every connection and the listening port;
        stopping again is harmless.
        """
        proxy = self.make_proxy()
        client = yield self.connect(proxy)
        yield proxy.stop()
        yield until(lambda: client.gone and self.echo.peers[0].gone)
        yield self.assertFailure(
            connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.port), Peer()),
            error.ConnectionRefusedError,
        )
        yield proxy.stop()
        self.assertEqual(proxy.links(), 0)
