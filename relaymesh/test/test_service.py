"""
Tests for L{relaymesh.service}, L{relaymesh.tap} and the twistd plugin.
"""

import json
import os
import types

from twisted.application.service import IServiceMaker
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from relaymesh import tap
from relaymesh.address import PeerAddress
from relaymesh.bookkeeping import LastSeen
from relaymesh.config import SHUTDOWN_TIMEOUT, NodeConfig
from relaymesh.dialer import RelayClientFactory
from relaymesh.events import Direction, EventKind, PeerEvent
from relaymesh.keystore import KeyStore
from relaymesh.reliable.fields import ACK_CAPABILITY
from relaymesh.reliable.store import STORE_FILE, StoreError
from relaymesh.service import RelayService
from relaymesh.startup import StartupError
from relaymesh.test.support import EPOCH, Node, connect
from relaymesh.tls import TLSServerFactory


def memory_reactor():
    reactor = MemoryReactorClock()
    reactor.advance(EPOCH)
    return reactor


class RelayServiceTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = memory_reactor()
        self.keystore = KeyStore(self.mktemp())
        self.keystore.set_identity("alpha")
        self.service = RelayService(
            self.keystore,
            listen="tcp:9847:interface=127.0.0.1",
            peers=["beta@10.0.0.2:9847", "10.0.0.3"],
            reactor=self.reactor,
        )

    def test_identity_from_keystore(self):
        self.assertEqual(self.service.mesh.identity, "alpha")

    def test_start(self):
        """
        Starting listens on the endpoint, dials every peer with a 10 s connect
        timeout, and starts the heartbeats.
        """
        self.service.startService()
        [(port, factory, backlog, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface), (9847, "127.0.0.1"))
        self.assertIs(factory, self.service.server_factory)
        dialled = [(host, port, timeout) for host, port, f, timeout, _ in self.reactor.tcpClients]
        self.assertEqual(dialled, [("10.0.0.2", 9847, 10), ("10.0.0.3", 9847, 10)])
        self.assertTrue(all(isinstance(c[2], RelayClientFactory) for c in self.reactor.tcpClients))
        self.assertTrue(self.service.mesh._heartbeats._loop.running)
        self.assertIsNotNone(self.service.listener.port)

    def test_stop(self):
        """
        Stopping stops listening, stops redialling and stops heartbeats.
        """
        self.service.startService()
        self.service.stopService()
        factories = [c[2] for c in self.reactor.tcpClients]
        self.assertTrue(all(not f.continueTrying for f in factories))
        self.assertTrue(all(c._disconnected for c in self.reactor.connectors))
        self.assertFalse(self.service.mesh._heartbeats._loop.running)
        self.assertIsNone(self.service.listener.port)

    def test_no_listen(self):
        service = RelayService(self.keystore, listen=None, reactor=self.reactor)
        service.startService()
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertIsNone(service.listener)

    def test_add_and_remove_peer(self):
        self.service.startService()
        outbound = self.service.add_peer("gamma@10.0.0.4:9900")
        self.assertIs(self.service.add_peer(PeerAddress("gamma", "10.0.0.4", 9900)), outbound)
        self.assertEqual(self.reactor.tcpClients[-1][:2], ("10.0.0.4", 9900))
        self.assertTrue(self.service.remove_peer("gamma"))
        self.assertFalse(outbound.factory.continueTrying)
        self.assertNotIn(outbound, self.service.outbound())
        self.assertFalse(self.service.remove_peer("gamma"))

    def test_meta_recorded(self):
        """
        A peer's address (when dialled) and last-seen time go to its meta file.
        """
        beta = Node("beta", self.reactor)
        self.keystore.set_key("beta", b"k" * 32)
        beta.keys.keys["alpha"] = b"k" * 32
        factory = self.service.outbound()[0].factory
        alpha_side = Node("alpha", self.reactor)
        alpha_side.mesh = self.service.mesh
        server, client, pump = connect(beta, alpha_side, factory)
        meta = self.keystore.meta("beta")
        self.assertEqual(meta["addr"], "10.0.0.2:9847")
        self.assertEqual(meta["last_seen"], int(self.reactor.seconds() * 1000))

    def test_parked_factory_woken(self):
        """
        When a peer's winning connection ends, the parked dialler for that
        peer dials again.
        """
        self.service.startService()
        factory = self.service.outbound()[0].factory
        factory.parked = True
        factory.connector = self.reactor.connectors[0]
        self.service.mesh.registry.emit(
            __import__("relaymesh.mesh", fromlist=["PeerEvent"]).PeerEvent("disconnected", "beta")
        )
        self.assertFalse(factory.parked)
        self.assertEqual(len(self.reactor.getDelayedCalls()) >= 1, True)


class NodeConfigTests(SynchronousTestCase):
    """
    A node is built from one L{NodeConfig}; its keyword arguments make one.
    """

    def setUp(self):
        self.keystore = KeyStore(self.mktemp())
        self.keystore.set_identity("alpha")

    def test_keywords_make_a_config(self):
        service = RelayService(
            self.keystore, listen="tcp:9850", peers=["beta@10.0.0.2"], reactor=memory_reactor(),
            heartbeat_interval=10, routing=True,
        )
        self.assertEqual(
            service.config,
            NodeConfig(
                listen=("tcp:9850",),
                peers=(PeerAddress("beta", "10.0.0.2", 9847),),
                heartbeat_interval=10,
                routing=True,
            ),
        )
        self.assertEqual(service.mesh.heartbeat_interval, 10)

    def test_from_a_config(self):
        """
        A config given whole builds the same node; listening nowhere is an
        empty C{listen}.
        """
        config = NodeConfig.make(None, ["beta@10.0.0.2:9850"], max_peers=3)
        service = RelayService(self.keystore, reactor=memory_reactor(), config=config)
        self.assertIs(service.config, config)
        self.assertEqual(service.listeners, [])
        self.assertEqual(service.mesh.max_peers, 3)
        self.assertEqual([a.port for a in service.dialled()], [9850])

    def test_not_both(self):
        """
        A config and options together, or an option a config does not have,
        are refused.
        """
        self.assertRaises(
            TypeError, RelayService, self.keystore, config=NodeConfig(), max_peers=3
        )
        self.assertRaises(TypeError, RelayService, self.keystore, hearbeat_interval=3)

    def test_retry_delays(self):
        """
        The backoff's first and longest waits come from the config.
        """
        reactor = memory_reactor()
        service = RelayService(
            self.keystore, listen=None, peers=["beta@10.0.0.2"], reactor=reactor,
            retry_initial_delay=1, retry_max_delay=3,
        )
        [outbound] = service.outbound()
        self.assertEqual((outbound.factory.delay, outbound.factory.maxDelay), (1, 3))

    def test_twistd_options(self):
        """
        C{twistd relaymesh}'s options make the config its node is built from.
        """
        options = tap.Options()
        options.parseOptions(
            ["--data-dir", self.keystore.path, "--listen", "tcp:9851", "--no-outbox", "--api", "none"]
        )
        config = tap.node_config(options)
        self.assertEqual((config.listen, config.outbox, config.routing), (("tcp:9851",), False, True))


class LastSeenTests(SynchronousTestCase):
    """
    The peers' last-seen bookkeeping, apart from the node.
    """

    def setUp(self):
        self.reactor = memory_reactor()
        self.keystore = KeyStore(self.mktemp())
        self.keystore.set_identity("alpha")
        self.keystore.set_key("beta", bytes(32))
        self.mesh = Node("alpha", self.reactor).mesh
        self.book = LastSeen(self.mesh, self.keystore, self.reactor, 30)

    def event(self, kind, direction=None, address="10.0.0.2:9847"):
        self.book.peer_event(PeerEvent(kind, "beta", address, direction))

    def test_connect_and_disconnect(self):
        """
        A connect of a dialled peer records its address and the time; a
        disconnect a heartbeat interval later records the time again.
        """
        self.event(EventKind.CONNECTED, Direction.OUTBOUND)
        self.assertEqual(
            self.keystore.meta("beta"),
            {"addr": "10.0.0.2:9847", "last_seen": int(EPOCH * 1000)},
        )
        self.reactor.advance(30)
        self.event(EventKind.DISCONNECTED)
        self.assertEqual(self.keystore.meta("beta")["last_seen"], int((EPOCH + 30) * 1000))

    def test_at_most_once_an_interval(self):
        """
        A peer that comes and goes is written at most once an interval, but
        a new address is written at once.
        """
        self.event(EventKind.CONNECTED, Direction.OUTBOUND)
        self.reactor.advance(5)
        self.event(EventKind.DISCONNECTED)
        self.assertEqual(self.keystore.meta("beta")["last_seen"], int(EPOCH * 1000))
        self.event(EventKind.CONNECTED, Direction.OUTBOUND, "10.0.0.9:9847")
        self.assertEqual(self.keystore.meta("beta")["addr"], "10.0.0.9:9847")

    def test_inbound_and_other_events(self):
        """
        An inbound connect records no address; events without a peer, or of
        other kinds, record nothing.
        """
        self.event(EventKind.CONNECTED, Direction.INBOUND)
        self.assertNotIn("addr", self.keystore.meta("beta"))
        self.keystore.replace_meta("beta", {})
        self.reactor.advance(60)
        self.event(EventKind.RECONNECT_SCHEDULED)
        self.book.peer_event(PeerEvent(EventKind.CONNECTED, None, "10.0.0.3:9847"))
        self.assertEqual(self.keystore.meta("beta"), {})

    def test_key_store_refusal_logged(self):
        """
        A meta file that cannot be written is logged; the node goes on.
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        os.makedirs(self.keystore.meta_path("gamma"))
        self.book.peer_event(PeerEvent(EventKind.CONNECTED, "gamma", "10.0.0.3:9847"))
        [warning] = [e for e in logged if "could not record" in e["log_format"]]
        self.assertEqual(warning["peer_id"], "gamma")
        self.event(EventKind.CONNECTED, Direction.OUTBOUND)
        self.assertEqual(self.keystore.meta("beta")["addr"], "10.0.0.2:9847")


class OptionsTests(SynchronousTestCase):
    def setUp(self):
        self.data_dir = self.mktemp()

    def parse(self, *args):
        options = tap.Options()
        options.parseOptions(["--data-dir", self.data_dir, *args])
        return options

    def test_defaults(self):
        options = self.parse()
        self.assertEqual(options["listen"], ["tcp:9847"])
        self.assertEqual(options["heartbeat"], 30.0)
        self.assertEqual(options["max-peers"], 8)
        self.assertEqual(options["peers"], [])
        self.assertEqual(options["identity"], KeyStore(self.data_dir).identity())

    def test_data_dir_from_environment(self):
        self.patch(os, "environ", {**os.environ, "RELAYMESH_HOME": self.data_dir})
        options = tap.Options()
        options.parseOptions([])
        self.assertEqual(options["data-dir"], self.data_dir)

    def test_peers(self):
        options = self.parse("--peers", "beta@10.0.0.2:9847, 10.0.0.3", "-p", "[::1]:9900", "--peers", "10.0.0.3")
        self.assertEqual(
            options["peers"],
            [PeerAddress("beta", "10.0.0.2", 9847), PeerAddress(None, "10.0.0.3", 9847), PeerAddress(None, "::1", 9900)],
        )

    def test_errors(self):
        """
        Each invalid value is a one-line usage error naming the option.
        """
        for args, fragment in [
            (["--peers", "beta@host:99999"], "--peers"),
            (["--peers", "../x@host"], "--peers"),
            (["--listen", "bogus:1"], "--listen"),
            (["--heartbeat", "0"], "heartbeat"),
            (["--heartbeat", "soon"], "heartbeat"),
            (["--max-peers", "-1"], "max-peers"),
            (["--identity", "no/slashes"], "--identity"),
        ]:
            with self.assertRaises(usage.UsageError) as ctx:
                self.parse(*args)
            self.assertIn(fragment, str(ctx.exception))
            self.assertNotIn("\n", str(ctx.exception))

    def test_listen_none(self):
        self.assertEqual(self.parse("--listen", "none")["listen"], [])

    def test_several_listeners(self):
        options = self.parse("--listen", "tcp:9850", "-l", "tcp:9851:interface=127.0.0.1")
        self.assertEqual(options["listen"], ["tcp:9850", "tcp:9851:interface=127.0.0.1"])
        service = tap.makeService(options, reactor=memory_reactor())
        self.assertEqual(len(service.listeners), 2)

    def test_tls_needs_certificate(self):
        """
        --tls, a tls: listener or a tls: peer without tls-init is a one-line
        error that says what to run.
        """
        for args in (["--tls"], ["--listen", "tls:9850"], ["--peers", "tls:b@h:1"]):
            with self.assertRaises(usage.UsageError) as ctx:
                self.parse(*args)
            self.assertIn("relaymesh tls-init", str(ctx.exception))

    def test_tls(self):
        """
        --tls listens on tls:9847 and dials every peer over TLS except
        legacy ones.
        """
        from relaymesh.tls import create_certificate

        create_certificate(self.data_dir, "node")
        options = self.parse(
            "--tls", "--no-announce", "--no-outbox", "--api", "none", "--peers", "b@h:1,legacy:c@h:2,tls:d@h:3"
        )
        self.assertEqual(options["listen"], ["tls:9847"])
        self.assertEqual(
            [(str(p), p.tls) for p in options["peers"]],
            [("tls:b@h:1", True), ("legacy:c@h:2", False), ("tls:d@h:3", True)],
        )
        reactor = memory_reactor()
        service = tap.makeService(options, reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([c[:2] for c in reactor.sslClients], [("h", 1), ("h", 3)])
        self.assertEqual([c[:2] for c in reactor.tcpClients], [("h", 2)])
        [(port, factory, backlog, interface)] = reactor.tcpServers
        self.assertEqual(port, 9847)
        self.assertIsInstance(factory, TLSServerFactory)

    def test_make_service(self):
        options = self.parse("--identity", "node-1", "--heartbeat", "5", "--max-peers", "3", "--peers", "beta@h:1")
        service = tap.makeService(options, reactor=memory_reactor())
        self.assertIsInstance(service, RelayService)
        self.assertEqual(service.mesh.identity, "node-1")
        self.assertEqual(service.mesh.heartbeat_interval, 5.0)
        self.assertEqual(service.mesh.idle_timeout, 15.0)
        self.assertEqual(service.mesh.max_peers, 3)
        self.assertEqual([o.target for o in service.outbound()], [PeerAddress("beta", "h", 1)])


class PluginTests(SynchronousTestCase):
    def test_discovered(self):
        """
        twistd finds the relaymesh plugin, which points at relaymesh.tap.
        """
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("relaymesh", makers)
        self.assertIsInstance(makers["relaymesh"].options(), tap.Options)

    def test_distribution_files(self):
        """
        The installed distribution carries the plugin module and never a
        twisted/plugins/__init__.py, which would replace Twisted's own.
        """
        from importlib import metadata

        try:
            distribution = metadata.distribution("relaymesh")
        except metadata.PackageNotFoundError:
            raise SkipTest("relaymesh is not installed") from None
        direct_url = json.loads(distribution.read_text("direct_url.json") or "{}")
        if direct_url.get("dir_info", {}).get("editable"):
            raise SkipTest("an editable install lists no module files (test_discovered covers it)")
        files = {str(f) for f in distribution.files or ()}
        self.assertIn("twisted/plugins/relaymesh_plugin.py", files)
        self.assertNotIn("twisted/plugins/__init__.py", files)


class OutboxOptionTests(SynchronousTestCase):
    def setUp(self):
        self.data_dir = self.mktemp()

    def make(self, *args):
        options = tap.Options()
        options.parseOptions(["--data-dir", self.data_dir, "--no-announce", "--api", "none", *args])
        return tap.makeService(options, reactor=memory_reactor())

    def test_twistd_keeps_an_outbox(self):
        """
        C{twistd relaymesh} keeps an outbox unless told C{--no-outbox}; the
        node then starts its listeners only once the store is open.
        """
        with_outbox = self.make()
        self.assertTrue(with_outbox.config.outbox)
        self.assertFalse(self.make("--no-outbox").config.outbox)

    def test_twistd_routes(self):
        """
        C{twistd relaymesh} routes (and announces C{route/2}) unless told
        C{--no-routing}.
        """
        self.assertIsNotNone(self.make().mesh.router)
        self.assertIn("route/2", self.make().mesh.capabilities)
        self.assertIsNone(self.make("--no-routing").mesh.router)
        self.assertNotIn("route/2", self.make("--no-routing").mesh.capabilities)


class OutboxServiceTests(TestCase):
    """
    A node with an outbox on the real reactor (the store runs a thread).
    """

    timeout = 10

    def make(self, **kwargs):
        keystore = KeyStore(self.mktemp())
        keystore.set_identity("alpha")
        return RelayService(keystore, listen="tcp:0:interface=127.0.0.1", reactor=reactor, outbox=True, **kwargs)

    @defer.inlineCallbacks
    def test_store_opened_before_listening(self):
        """
        The listener starts once the store is open, and handshakes from then
        on announce C{ack/1}; stopping closes the store.
        """
        node = self.make()
        node.startService()
        self.assertIsNone(node.listener.port)
        self.assertNotIn(ACK_CAPABILITY, node.mesh.capabilities)
        yield node.whenStarted()
        self.assertIsNotNone(node.listener.port)
        self.assertIn(ACK_CAPABILITY, node.mesh.capabilities)
        self.assertTrue(os.path.exists(os.path.join(node.keystore.path, STORE_FILE)))
        store = node.store
        yield node.stopService()
        self.assertTrue(store.closed)
        self.assertIsNone(node.store)

    @defer.inlineCallbacks
    def test_stopped_while_opening(self):
        """
        A node stopped before its store is open never starts listening, and
        the store is closed once it opens.
        """
        node = self.make()
        node.startService()
        yield node.stopService()
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertIsNone(node.listener.port)
        self.assertFalse(node.running)
        self.assertIsNone(node.store)

    @defer.inlineCallbacks
    def test_store_cannot_open(self):
        """
        A data directory where the store cannot be made: the node does not
        start, says why, and whenStarted() fails.
        """
        node = self.make()
        os.makedirs(os.path.join(node.keystore.path, STORE_FILE))
        node.startService()
        with self.assertRaises(StartupError) as ctx:
            yield node.whenStarted()
        self.assertIsInstance(ctx.exception.__cause__, StoreError)
        self.assertIn(": cannot open the outbox: ", str(ctx.exception))
        self.assertIsNone(node.listener.port)


class GracefulStopTests(SynchronousTestCase):
    """
    Stopping a node with live connections, on a memory reactor whose clock
    the test moves.
    """

    def setUp(self):
        self.reactor = memory_reactor()
        keystore = KeyStore(self.mktemp())
        keystore.set_identity("alpha")
        self.service = RelayService(keystore, listen=None, reactor=self.reactor)
        self.service.startService()
        self.peer = Node("beta", self.reactor)
        key = os.urandom(32)
        keystore.set_key("beta", key)
        self.peer.keys.keys["alpha"] = key
        alpha = types.SimpleNamespace(
            identity="alpha", clock=self.reactor, server=self.service.server_factory, mesh=self.service.mesh
        )
        self.server, self.client, self.pump = connect(alpha, self.peer)
        self.assertTrue(self.service.mesh.is_connected("beta"))

    def test_closes_after_pending_data(self):
        """
        Stopping closes each connection after what was already written to
        it, and fires once it is closed.
        """
        self.service.mesh.send("beta", "task_status", {"task_id": "t1"})
        d = self.service.stopService()
        self.assertNoResult(d)
        self.pump.flush()
        self.successResultOf(d)
        self.assertEqual([m.msg_type for _, m in self.peer.received], ["task_status"])
        self.assertEqual(self.server.close_reason, "node shutting down")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_aborts_what_does_not_close(self):
        """
        A connection still open L{SHUTDOWN_TIMEOUT} seconds after the stop
        began is aborted, and the stop completes.
        """
        transport = self.server.transport
        transport.loseConnection = lambda: None  # a peer that never lets go
        aborted = []
        transport.abortConnection = lambda: (aborted.append(True), self.server.connectionLost(None))
        d = self.service.stopService()
        self.reactor.advance(SHUTDOWN_TIMEOUT - 0.1)
        self.assertNoResult(d)
        self.assertEqual(aborted, [])
        self.reactor.advance(0.1)
        self.assertEqual(aborted, [True])
        self.successResultOf(d)
        self.assertFalse(self.service.mesh.is_connected("beta"))


class StopDiallingTests(SynchronousTestCase):
    """
    Removing a peer whose connection is still in its handshake closes that
    connection at once, TLS upgrade or not.
    """

    def test_remove_peer_mid_handshake(self):
        from twisted.internet.protocol import Factory, Protocol

        from relaymesh.connection import State
        from relaymesh.testing import MemoryNetwork, memory_node
        from relaymesh.tls import NodeCertificate

        network = MemoryNetwork()
        alice = memory_node(network, "alice")
        alice.keystore.set_key("bob", os.urandom(32))
        alice.startService()
        self.addCleanup(alice.stopService)
        lost = []

        class Stalling(Protocol):
            """
            Names itself as bob, upgrades to TLS, then never challenges.
            """

            def connectionMade(self):
                self.transport.write(
                    b'{"id":"c","msg_type":"challenge","from_peer":"","timestamp":1,'
                    b'"payload":{"nonce":"' + b"ab" * 32 + b'","peer":"bob","caps":["starttls/1"]}}\n'
                )

            def dataReceived(self, data):
                if b"starttls" in data:
                    self.transport.write(
                        b'{"id":"a","msg_type":"handshake_ack","from_peer":"bob","timestamp":1,'
                        b'"payload":{"status":"starttls"}}\n'
                    )
                    self.transport.startTLS(NodeCertificate.generate("bob").server_options())

            def connectionLost(self, reason=None):
                lost.append(reason)

        port = network.listenTCP(0, Factory.forProtocol(Stalling)).port
        outbound = alice.add_peer(f"bob@127.0.0.1:{port}")
        network.flush()
        protocol = outbound.factory.current
        self.assertTrue(protocol.encrypted)
        self.assertEqual(protocol.state, State.AWAITING_CHALLENGE)
        alice.remove_peer("bob")
        network.flush()
        self.assertEqual(len(lost), 1)
        self.assertEqual(protocol.state, State.CLOSED)
        self.assertEqual(protocol.close_reason, "stopped dialling")


class InMemoryCertificateTests(SynchronousTestCase):
    def test_memory_node_writes_no_certificate(self):
        """
        A node on an in-memory key store gets a certificate in memory, and
        writes nothing into the current directory.
        """
        from relaymesh.testing import MemoryNetwork, memory_node

        here = os.path.abspath(self.mktemp())
        os.makedirs(here)
        previous = os.getcwd()
        os.chdir(here)
        self.addCleanup(os.chdir, previous)
        node = memory_node(MemoryNetwork(), "alice")
        self.assertTrue(node.certificate.fingerprint.startswith("sha256:"))
        self.assertEqual(os.listdir(here), [])
