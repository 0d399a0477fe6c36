"""
Tests for L{relaymesh.testing}: whole nodes on the in-memory network.
"""

from __future__ import annotations

import dataclasses

from OpenSSL import SSL
from twisted.internet import error, ssl
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IPushProducer,
    ISSLTransport,
    ITCPTransport,
    ITLSTransport,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from relaymesh.dialer import RETRY_FACTOR, RETRY_INITIAL_DELAY
from relaymesh.events import EventKind
from relaymesh.reliable.store import OutboxEntry, StoreClosed, StoreError
from relaymesh.test.support import EPOCH
from relaymesh.testing import (
    MemoryNetwork,
    MemoryNetworkError,
    MemoryStore,
    connect_nodes,
    cut_link,
    links_between,
    lose_node,
    memory_node,
    memory_store_opener,
)
from relaymesh.tls import NodeCertificate, channel_binding, create_certificate

CONNECTED, DISCONNECTED = EventKind.CONNECTED, EventKind.DISCONNECTED

#: The message type the tests send.
TASK = "delegate_task"


class Recorder(Protocol):
    """
    Records what it receives and how it was closed.
    """

    #: Used only connected, to a TCP transport of the network.
    transport: ITCPTransport

    def __init__(self) -> None:
        self.received = b""
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.reason = reason


class Accepting(Factory):
    """
    A server factory that keeps the protocols it builds.
    """

    def __init__(self, accepted: list[Recorder]) -> None:
        self.accepted = accepted

    def buildProtocol(self, addr: IAddress | None) -> Recorder:
        protocol = Recorder()
        self.accepted.append(protocol)
        return protocol


class Dialler(ClientFactory):
    """
    A client factory that records what happened to its dials.
    """

    protocol: type[Protocol] = Recorder

    def __init__(self) -> None:
        self.failed: list = []
        self.lost: list = []

    def clientConnectionFailed(self, connector, reason) -> None:
        self.failed.append(reason)

    def clientConnectionLost(self, connector, reason) -> None:
        self.lost.append(reason)


class MemoryNetworkTests(SynchronousTestCase):
    """
    L{MemoryNetwork} as a reactor: time, listeners, dials and connections.
    """

    def setUp(self) -> None:
        self.network = MemoryNetwork()
        self.accepted: list[Recorder] = []
        self.server = Accepting(self.accepted)

    def test_calls_run_at_their_time(self) -> None:
        """
        L{MemoryNetwork.advance} runs each call at the time it was scheduled
        for, including calls scheduled by calls meanwhile.
        """
        seen = []

        def first() -> None:
            seen.append(("first", self.network.seconds()))
            self.network.callLater(0.5, lambda: seen.append(("second", self.network.seconds())))

        self.network.callLater(1, first)
        self.network.advance(10)
        self.assertEqual(seen, [("first", 1.0), ("second", 1.5)])
        self.assertEqual(self.network.seconds(), 10.0)

    def test_bytes_flow_both_ways(self) -> None:
        """
        A dial to a listening port connects at the next flush, and what
        each end writes arrives at the other.
        """
        port = self.network.listenTCP(0, self.server, interface="127.0.0.1")
        dialler = Dialler()
        self.network.connectTCP("127.0.0.1", port.getHost().port, dialler)
        self.assertEqual(self.accepted, [])
        self.network.flush()
        [server] = self.accepted
        [connection] = self.network.connections()
        client = connection.client.protocol
        client.transport.write(b"ping")
        server.transport.write(b"pong")
        self.network.flush()
        self.assertEqual((server.received, client.received), (b"ping", b"pong"))
        self.assertEqual(server.transport.getPeer().host, "127.0.0.1")

    def test_refused(self) -> None:
        """
        A dial to a port nothing listens on fails with
        L{error.ConnectionRefusedError}; so does one to a port that stopped
        listening.
        """
        port = self.network.listenTCP(4000, self.server)
        port.stopListening()
        dialler = Dialler()
        self.network.connectTCP("127.0.0.1", 4000, dialler)
        self.network.flush()
        [reason] = dialler.failed
        reason.trap(error.ConnectionRefusedError)

    def test_port_in_use(self) -> None:
        """
        Listening twice on one port fails as with a real reactor.
        """
        self.network.listenTCP(4000, self.server)
        self.assertRaises(error.CannotListenError, self.network.listenTCP, 4000, self.server)

    def test_no_tls(self) -> None:
        """
        The network carries plain TCP only, and says so.
        """
        self.assertRaises(
            MemoryNetworkError, self.network.connectSSL, "127.0.0.1", 4000, Dialler(), None
        )

    def test_close_and_cut(self) -> None:
        """
        A graceful close delivers what was written first; a cut drops what
        is in flight; the dialling factory is told the connection is lost.
        """
        port = self.network.listenTCP(0, self.server).getHost().port
        dialler = Dialler()
        self.network.connectTCP("127.0.0.1", port, dialler)
        self.network.connectTCP("127.0.0.1", port, dialler)
        self.network.flush()
        closing, cut = self.accepted
        clients = [connection.client.protocol for connection in self.network.connections()]
        closing.transport.write(b"bye")
        closing.transport.loseConnection()
        cut.transport.write(b"lost")
        self.network.connections()[1].cut()
        self.network.flush()
        assert closing.reason is not None and cut.reason is not None
        closing.reason.trap(error.ConnectionDone)
        cut.reason.trap(error.ConnectionLost)
        self.assertEqual([client.received for client in clients], [b"bye", b""])
        self.assertEqual(len(dialler.lost), 2)
        self.assertEqual(self.network.connections(), [])


class LineEnd(LineReceiver):
    """
    One end of a connection that speaks lines, and records them and how
    often and why it was closed.
    """

    #: Used only connected, to a transport of the network, which can start TLS.
    transport: ITLSTransport

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.lost: list[Failure] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.append(reason)


@implementer(IPushProducer)
class Producer:
    """
    A streaming producer that records whether it is paused.
    """

    paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


class StartTLSTests(SynchronousTestCase):
    """
    C{startTLS} on the transports of a L{MemoryNetwork} runs real TLS over
    the connection, as on a TCP transport.
    """

    def setUp(self) -> None:
        self.network = MemoryNetwork()
        self.alice = self.certificate("alice")
        self.bob = self.certificate("bob")
        self.dialler = Dialler()
        self.dialler.protocol = LineEnd
        port = self.network.listenTCP(0, Factory.forProtocol(LineEnd)).getHost().port
        self.network.connectTCP("127.0.0.1", port, self.dialler)
        self.network.flush()
        [self.connection] = self.network.connections()
        server, client = self.connection.protocols()
        assert isinstance(server, LineEnd) and isinstance(client, LineEnd)
        self.server, self.client = server, client
        self.crossed: list[bytes] = []
        for transport in (self.connection.server, self.connection.client):
            self.record(transport)

    def certificate(self, name: str) -> NodeCertificate:
        return NodeCertificate(*create_certificate(self.mktemp(), name))

    def record(self, transport) -> None:
        """
        Keep every chunk of bytes the network delivers to C{transport}.
        """
        deliver = transport.bufferReceived

        def recording(data: bytes) -> None:
            self.crossed.append(data)
            deliver(data)

        transport.bufferReceived = recording

    def upgrade(self) -> None:
        """
        Say a line each way in clear; the server answers, starts TLS and
        writes a line; the client starts TLS when it has the answer, and
        writes a line.
        """
        self.client.sendLine(b"hello")
        self.network.flush()
        self.server.sendLine(b"go ahead")
        self.server.transport.startTLS(self.alice.server_options())
        self.server.sendLine(b"server secret")
        self.network.flush()
        self.assertEqual((self.server.lines, self.client.lines), ([b"hello"], [b"go ahead"]))
        self.client.transport.startTLS(self.bob.client_options())
        self.client.sendLine(b"client secret")
        self.network.flush()

    def assertLostOnce(self, *reasons: type[Exception]) -> None:
        """
        Each end, and the dialling factory, were told the connection is
        lost exactly once, the server with the first reason and the client
        with the second; the network no longer carries it.
        """
        [server_reason], [client_reason] = self.server.lost, self.client.lost
        server_reason.trap(reasons[0])
        client_reason.trap(reasons[1])
        self.assertEqual(len(self.dialler.lost), 1)
        self.assertEqual(self.network.connections(), [])

    def test_lines_after_the_switch_are_encrypted(self) -> None:
        """
        What each end wrote before C{startTLS} crosses in clear; what it
        wrote after arrives, and never crosses the link in clear.
        """
        self.upgrade()
        self.assertEqual(self.server.lines, [b"hello", b"client secret"])
        self.assertEqual(self.client.lines, [b"go ahead", b"server secret"])
        self.assertEqual(self.crossed[:2], [b"hello\r\n", b"go ahead\r\n"])
        after = b"".join(self.crossed[2:])
        self.assertTrue(after.startswith(b"\x16\x03"), after[:8])
        self.assertNotIn(b"secret", after)

    def test_transport_after_the_switch(self) -> None:
        """
        The application keeps its transport, which now provides
        L{ISSLTransport}, and the channel binding on each end names its own
        certificate and its peer's; the connection still names the
        application protocols and addresses.
        """
        self.assertFalse(ISSLTransport.providedBy(self.client.transport))
        self.assertIsNone(channel_binding(self.client.transport))
        self.upgrade()
        self.assertIs(self.server.transport, self.connection.server)
        self.assertIs(self.client.transport, self.connection.client)
        self.assertTrue(ISSLTransport.providedBy(self.client.transport))
        self.assertEqual(channel_binding(self.server.transport), (self.alice.fingerprint, self.bob.fingerprint))
        self.assertEqual(channel_binding(self.client.transport), (self.bob.fingerprint, self.alice.fingerprint))
        self.assertEqual(self.connection.protocols(), (self.server, self.client))
        self.assertEqual(self.server.transport.getPeer(), self.client.transport.getHost())
        self.client.transport.setTcpNoDelay(True)

    def test_producer_follows_the_switch(self) -> None:
        """
        A producer registered before C{startTLS} stays registered through
        the TLS layer, which pauses it as the link does, until it is
        unregistered.
        """
        producer = Producer()
        IConsumer(self.client.transport).registerProducer(producer, True)
        self.upgrade()
        link_producer = self.connection.client.producer
        assert link_producer is not None
        link_producer.pauseProducing()
        self.assertTrue(producer.paused)
        IConsumer(self.client.transport).unregisterProducer()
        self.assertIsNone(self.connection.client.producer)

    def test_lose(self) -> None:
        """
        Closing an end after the switch closes both, once each, after
        what was written arrives.
        """
        self.upgrade()
        self.client.sendLine(b"last words")
        self.client.transport.loseConnection()
        self.client.transport.loseConnection()
        self.network.flush()
        self.assertEqual(self.server.lines[-1], b"last words")
        self.assertLostOnce(error.ConnectionDone, error.ConnectionDone)

    def test_abort(self) -> None:
        """
        Aborting an end after the switch closes both, once each. The TLS
        layer of the aborting end, as over TCP, reports the TLS stream cut
        short (L{error.ConnectionLost}) instead of the abort.
        """
        self.upgrade()
        self.server.transport.abortConnection()
        self.network.flush()
        self.assertLostOnce(error.ConnectionLost, error.ConnectionLost)

    def test_cut(self) -> None:
        """
        Cutting the connection after the switch closes both ends, once
        each, with L{error.ConnectionLost}.
        """
        self.upgrade()
        self.connection.cut()
        self.network.flush()
        self.assertLostOnce(error.ConnectionLost, error.ConnectionLost)

    def test_handshake_failure(self) -> None:
        """
        When the client does not trust the server's certificate, the
        handshake fails and both ends are closed, once each, with the TLS
        error: the client's own, and the alert it sent the server.
        """
        self.server.transport.startTLS(self.alice.server_options())
        distrust = ssl.CertificateOptions(verify=True, caCerts=[self.bob.certificate])
        self.client.transport.startTLS(distrust)
        self.client.sendLine(b"never")
        self.network.flush()
        self.assertEqual(self.server.lines, [])
        self.assertLostOnce(SSL.Error, SSL.Error)
        self.assertNotIn(b"never", b"".join(self.crossed))

    def test_twice(self) -> None:
        """
        TLS starts once per connection.
        """
        self.client.transport.startTLS(self.bob.client_options())
        self.assertRaises(RuntimeError, self.client.transport.startTLS, self.bob.client_options())


class NodesTests(SynchronousTestCase):
    """
    Whole L{relaymesh.service.RelayService} nodes on the in-memory network.
    """

    def setUp(self) -> None:
        self.network = MemoryNetwork()
        self.network.advance(EPOCH)
        self.alice = memory_node(self.network, "alice", outbox=True, routing=True)
        self.bob = memory_node(self.network, "bob", outbox=True, routing=True)
        self.received: list[tuple[str, str, object]] = []
        for node in (self.alice, self.bob):
            node.mesh.subscribe(self.recorder(node.mesh.identity), TASK)
        self.events: list = []
        self.bob.mesh.watch_peers(self.events.append)

    def recorder(self, name: str):
        return lambda peer, message: self.received.append((name, peer, message.payload))

    def start(self) -> None:
        for node in (self.alice, self.bob):
            node.startService()
            self.addCleanup(node.stopService)
        self.network.flush()

    def test_pair_and_exchange(self) -> None:
        """
        Two paired nodes connect in memory and exchange plain and reliable
        messages; the reliable one is acknowledged.
        """
        self.start()
        connect_nodes(self.network, self.alice, self.bob)
        self.assertEqual(sorted(c.peer_id for c in self.alice.mesh.connections()), ["bob"])
        self.assertEqual(sorted(c.peer_id for c in self.bob.mesh.connections()), ["alice"])
        self.bob.mesh.send("alice", TASK, {"n": 1})
        delivery = self.alice.mesh.send_reliable("bob", TASK, {"n": 2})
        self.network.flush()
        self.assertEqual(
            self.received, [("alice", "bob", {"n": 1}), ("bob", "alice", {"n": 2})]
        )
        self.assertEqual(self.successResultOf(delivery.delivered()), delivery.msg_id)

    def test_refused_dial_backs_off(self) -> None:
        """
        A node dialling a port nothing listens on is refused and dials
        again after the backoff of the factory, on the network's clock,
        until the peer listens.
        """
        self.alice = memory_node(self.network, "alice", listen="tcp:4000:interface=127.0.0.1")
        self.alice.keystore.set_key("bob", b"k" * 32)
        self.bob.keystore.set_key("alice", b"k" * 32)
        self.bob.add_peer("alice@127.0.0.1:4000")
        self.bob.startService()
        self.addCleanup(self.bob.stopService)
        self.network.advance(RETRY_INITIAL_DELAY * (1 + RETRY_FACTOR) - 1)
        delays = [e.delay for e in self.events if e.kind == "reconnect_scheduled"]
        self.assertEqual(delays, [RETRY_INITIAL_DELAY, RETRY_INITIAL_DELAY * RETRY_FACTOR])
        self.alice.startService()
        self.addCleanup(self.alice.stopService)
        self.network.advance(1)
        self.assertEqual(sorted(c.peer_id for c in self.bob.mesh.connections()), ["alice"])

    def test_cut_is_noticed(self) -> None:
        """
        Cutting a link disconnects both ends at once; the dialler connects
        again after its first backoff delay.
        """
        self.start()
        connect_nodes(self.network, self.alice, self.bob)
        self.assertEqual(cut_link(self.network, self.alice, self.bob), 1)
        self.assertEqual(sorted(c.peer_id for c in self.alice.mesh.connections()), [])
        self.assertEqual(sorted(c.peer_id for c in self.bob.mesh.connections()), [])
        self.assertEqual(
            [e.kind for e in self.events if e.kind in (CONNECTED, DISCONNECTED)],
            [CONNECTED, DISCONNECTED],
        )
        self.network.advance(RETRY_INITIAL_DELAY)
        self.assertEqual(sorted(c.peer_id for c in self.bob.mesh.connections()), ["alice"])
        self.assertEqual(len(links_between(self.network, self.alice, self.bob)), 1)

    def test_lose_node(self) -> None:
        """
        A lost node's peer sees the connection drop and is refused when it
        dials again.
        """
        self.start()
        connect_nodes(self.network, self.alice, self.bob)
        self.successResultOf(lose_node(self.network, self.alice))
        self.assertEqual(sorted(c.peer_id for c in self.bob.mesh.connections()), [])
        self.network.advance(RETRY_INITIAL_DELAY)
        self.assertEqual(sorted(c.peer_id for c in self.bob.mesh.connections()), [])
        self.assertEqual(self.network.connections(), [])

    def test_graceful_stop(self) -> None:
        """
        Stopping a node closes its connections at once on the network, and
        its peer notices.
        """
        self.start()
        connect_nodes(self.network, self.alice, self.bob)
        stopped = self.alice.stopService()
        self.network.flush()
        self.successResultOf(stopped)
        self.assertEqual(sorted(c.peer_id for c in self.bob.mesh.connections()), [])
        self.assertEqual(self.network.connections(), [])

    def test_forget_peer(self) -> None:
        """
        A node forgets a peer as one with its stores on disk does: the
        connection closes, and the peer's key, meta fields and outbox
        messages go.
        """
        self.start()
        connect_nodes(self.network, self.alice, self.bob)
        self.alice.keystore.update_meta("bob", paired_via="test")
        store = self.alice.store
        assert store is not None
        waiting = OutboxEntry("m1", "bob", "alice", TASK, b"{}", EPOCH, EPOCH + 60)
        self.successResultOf(store.put(waiting))
        self.assertTrue(self.alice.forget_peer("bob"))
        self.network.flush()
        self.assertEqual(self.alice.mesh.connections(), [])
        self.assertIsNone(self.alice.keystore.key("bob"))
        self.assertEqual(self.alice.keystore.meta("bob"), {})
        self.assertEqual(self.successResultOf(store.pending()), [])
        self.assertFalse(self.alice.forget_peer("bob"))


class MemoryStoreTests(SynchronousTestCase):
    """
    L{MemoryStore} and L{memory_store_opener}.
    """

    def entry(self) -> OutboxEntry:
        return OutboxEntry("m1", "bob", "alice", TASK, b"{}", EPOCH, EPOCH + 60)

    def test_reopen_keeps_outbox(self) -> None:
        """
        The opener reopens the store it was given, with its outbox, the way
        a node restarting finds its database again.
        """
        store = MemoryStore()
        opener = memory_store_opener(store)
        opened = self.successResultOf(opener("ignored", None))
        self.successResultOf(opened.put(self.entry()))
        self.successResultOf(opened.close())
        self.failureResultOf(opened.pending(), StoreClosed)
        again = self.successResultOf(opener("ignored", None))
        self.assertEqual([e.msg_id for e in self.successResultOf(again.pending())], ["m1"])

    def test_forget_peer(self) -> None:
        """
        C{forget_peer} drops one destination's entries and fires with how
        many; an invalid peer id fails with L{StoreError}, as in the store
        on disk, and a closed store refuses.
        """
        store = MemoryStore()
        self.successResultOf(store.put(self.entry()))
        self.successResultOf(store.put(dataclasses.replace(self.entry(), msg_id="m2")))
        self.successResultOf(store.put(dataclasses.replace(self.entry(), msg_id="m3", peer_id="carol")))
        self.assertEqual(self.successResultOf(store.forget_peer("bob")), 2)
        self.assertEqual([e.msg_id for e in self.successResultOf(store.pending())], ["m3"])
        self.assertEqual(self.successResultOf(store.forget_peer("bob")), 0)
        self.failureResultOf(store.forget_peer("not a peer"), StoreError)
        self.successResultOf(store.close())
        self.failureResultOf(store.forget_peer("carol"), StoreClosed)

    def test_fresh_store_each_time(self) -> None:
        """
        Without a store, each opening gives a new empty one.
        """
        opener = memory_store_opener()
        first = self.successResultOf(opener("a", None))
        self.assertIsNot(first, self.successResultOf(opener("a", None)))
