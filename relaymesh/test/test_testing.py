"""
Tests for L{relaymesh.testing}: whole nodes on the in-memory network.
"""

from __future__ import annotations

from twisted.internet import error
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase

from relaymesh.dialer import RETRY_FACTOR, RETRY_INITIAL_DELAY
from relaymesh.events import EventKind

CONNECTED, DISCONNECTED = EventKind.CONNECTED, EventKind.DISCONNECTED
from relaymesh.reliable.store import OutboxEntry, StoreClosed
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
from relaymesh.test.support import EPOCH

#: The message type the tests send.
TASK = "delegate_task"


class Recorder(Protocol):
    """
    Records what it receives and how it was closed.
    """

    def __init__(self) -> None:
        self.received = b""
        self.reason = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.reason = reason


class Dialler(ClientFactory):
    """
    A client factory that records what happened to its dials.
    """

    protocol = Recorder

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
        self.server = Factory.forProtocol(Recorder)
        self.server.buildProtocol = self.build

    def build(self, addr) -> Recorder:
        protocol = Recorder()
        self.accepted.append(protocol)
        return protocol

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
        closing.reason.trap(error.ConnectionDone)
        cut.reason.trap(error.ConnectionLost)
        self.assertEqual([client.received for client in clients], [b"bye", b""])
        self.assertEqual(len(dialler.lost), 2)
        self.assertEqual(self.network.connections(), [])


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

    def test_fresh_store_each_time(self) -> None:
        """
        Without a store, each opening gives a new empty one.
        """
        opener = memory_store_opener()
        first = self.successResultOf(opener("a", None))
        self.assertIsNot(first, self.successResultOf(opener("a", None)))
