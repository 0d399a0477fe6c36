"""
Helpers shared by the tests: fixtures, and two nodes joined
by an in-memory connection.
"""

from __future__ import annotations

import json
import os
import typing

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IConnector, IReactorTime
from twisted.internet.testing import StringTransport, StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from relaymesh.acceptor import RelayServerFactory
from relaymesh.address import PeerAddress
from relaymesh.connection import RelayProtocol
from relaymesh.dialer import RelayClientFactory
from relaymesh.handshake.base import KeyLookup
from relaymesh.handshake.proofs import LEGACY_FIELD, compute_proof
from relaymesh.mesh import Mesh
from relaymesh.reliable.outbox import ReliableDelivery
from relaymesh.routing.router import Router
from relaymesh.routing.table import MAX_HOPS
from relaymesh.testing import MemoryKeys, MemoryNetwork, MemoryStore
from relaymesh.tls import NodeCertificate
from relaymesh.wire import RelayMessage, decode, encode

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

#: A time in 2026, so that timestamps look real.
EPOCH = 1795718866.757


def fixture_path(name: str) -> str:
    """
    The path of a file in the fixtures folder.
    """
    return os.path.join(FIXTURES, name)


def load_codes() -> dict:
    """
    claudectl 0.49.2's codes and proofs.
    """
    with open(fixture_path("claudectl-0.49.2-codes.json")) as f:
        codes: dict = json.load(f)
    return codes


def load_transcript() -> list[dict]:
    """
    claudectl 0.49.2's recorded handshake: C{{"dir": ..., "line": ...}} per line.
    """
    with open(fixture_path("claudectl-0.49.2-handshake.ndjson")) as f:
        return [json.loads(line) for line in f if line.strip()]


@implementer(IConnector)
class FakeConnector:
    """
    Enough of an L{IConnector} for a client factory: counts connect calls.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 9847) -> None:
        self.host = host
        self.port = port
        self.connects = 0
        self.stopped = 0
        self.factory: RelayClientFactory | None = None

    def connect(self) -> None:
        self.connects += 1
        if self.factory is not None:
            self.factory.startedConnecting(self)

    def stopConnecting(self) -> None:
        self.stopped += 1

    def disconnect(self) -> None:
        pass

    def getDestination(self) -> IPv4Address:
        return IPv4Address("TCP", self.host, self.port)


def make_clock() -> MemoryNetwork:
    """
    A clock set to L{EPOCH}: an in-memory network's, so that L{connect}
    can carry connections (and their TLS) on it.
    """
    clock = MemoryNetwork()
    clock.advance(EPOCH)
    return clock


def server_protocol(
    factory: RelayServerFactory, host: str = "10.0.0.2", port: int = 40000
) -> tuple[RelayProtocol, StringTransportWithDisconnection]:
    """
    An inbound connection from C{host:port}, on a string transport.
    """
    address = IPv4Address("TCP", host, port)
    protocol = factory.buildProtocol(address)
    assert protocol is not None
    return protocol, _attach(protocol, address)


def _attach(protocol: RelayProtocol, address: IPv4Address) -> StringTransportWithDisconnection:
    transport = StringTransportWithDisconnection(peerAddress=address)
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return transport


def client_protocol(
    factory: RelayClientFactory, connector: FakeConnector | None = None
) -> tuple[RelayProtocol, StringTransportWithDisconnection]:
    """
    An outbound connection of C{factory}, on a string transport.
    """
    connector = connector or FakeConnector(factory.target.host, factory.target.port)
    factory.startedConnecting(connector)
    address = connector.getDestination()
    protocol = factory.buildProtocol(address)
    assert protocol is not None
    return protocol, _attach(protocol, address)


def authenticate(
    protocol: RelayProtocol, transport: StringTransport, peer: str, key: bytes
) -> list[RelayMessage]:
    """
    Answer the challenge an acceptor wrote with C{peer}'s handshake proving
    C{key}, as claudectl would.

    @return: what the acceptor wrote back (its ack).
    """
    [challenge] = written(transport)
    proof = compute_proof(key, challenge.payload["nonce"])
    protocol.dataReceived(line(RelayMessage("h", "handshake", peer, 1, {"proof": proof})))
    return written(transport)


def accepted(
    node: Node, peer: str, key: bytes, host: str = "10.0.0.2"
) -> tuple[RelayProtocol, StringTransportWithDisconnection]:
    """
    An inbound connection to C{node} from C{peer}, a claudectl peer (its key
    marked legacy), that finished its handshake, with the transport's
    output cleared.
    """
    assert isinstance(node.keys, MemoryKeys)
    node.keys.metas.setdefault(peer, {})[LEGACY_FIELD] = True
    protocol, transport = server_protocol(node.server, host=host)
    authenticate(protocol, transport, peer, key)
    return protocol, transport


def written(transport: StringTransport) -> list[RelayMessage]:
    """
    The messages written to a string transport since the last call.
    """
    data = transport.value()
    transport.clear()
    return [decode(line) for line in data.split(b"\n") if line]


def line(message: RelayMessage) -> bytes:
    """
    A message as it is on the wire, with its newline.
    """
    return encode(message) + b"\n"


class Node:
    """
    One node for in-memory tests: a mesh, its key store and its factories.
    """

    def __init__(
        self,
        identity: str,
        clock: IReactorTime,
        keys: KeyLookup | None = None,
        heartbeat_interval: float = 30.0,
        max_peers: int = 8,
        store: MemoryStore | None = None,
        routing: bool = False,
        max_hops: int = MAX_HOPS,
        certificate: NodeCertificate | None = None,
    ) -> None:
        """
        @param clock: Best a L{MemoryNetwork} (L{make_clock}), on which
            L{connect} carries the node's connections.
        @param keys: Its key store; a new L{MemoryKeys} by default.
        @param store: With a store, the node sends and acknowledges reliable
            messages (L{ReliableDelivery}, as C{self.reliable}).
        @param routing: Whether the node routes (L{Router}, as
            C{self.router}), with hop limit C{max_hops}.
        @param certificate: The node's certificate (a node that restarts
            keeps its own, or its peers refuse it); a new one by default.
        """
        self.identity = identity
        self.clock = clock
        self.keys = keys or MemoryKeys()
        self.mesh = Mesh(identity, clock, heartbeat_interval, max_peers)
        self.store = store
        self.reliable: ReliableDelivery | None = None
        if store is not None:
            self.reliable = ReliableDelivery(self.mesh, store, keys=self.keys)
            self.reliable.start()
            self.mesh.enable_reliable(self.reliable)
        self.router: Router | None = None
        if routing:
            self.router = Router(self.mesh, max_hops, keys=self.keys)
            self.mesh.enable_routing(self.router)
        self.certificate = certificate or NodeCertificate.generate(identity)
        self.server = RelayServerFactory(self.mesh, self.keys, certificate=self.certificate)
        self.received: list[tuple[str, RelayMessage]] = []
        self.events: list = []
        self.mesh.subscribe(lambda peer, msg: self.received.append((peer, msg)))
        self.mesh.watch_peers(self.events.append)

    def client(
        self, target: str | None, host: str = "127.0.0.1", port: int = 9847, legacy: bool = False
    ) -> RelayClientFactory:
        return RelayClientFactory(
            self.mesh,
            self.keys,
            PeerAddress(target, host, port, legacy=legacy),
            self.clock,
            certificate=self.certificate,
        )


def pair_keys(a: Node, b: Node, key: bytes | None = None) -> bytes:
    """
    Give two nodes the same key for each other.
    """
    key = key or os.urandom(32)
    assert isinstance(a.keys, MemoryKeys) and isinstance(b.keys, MemoryKeys)
    a.keys.keys[b.identity] = key
    b.keys.keys[a.identity] = key
    return key


class Accepting(typing.Protocol):
    """
    What L{connect} needs of the accepting end: a L{Node}, or the parts of
    a node that has no L{Node}.
    """

    @property
    def identity(self) -> str: ...

    @property
    def clock(self) -> IReactorTime: ...

    @property
    def server(self) -> RelayServerFactory: ...


def connect(
    acceptor: Accepting,
    connector: Node,
    client: RelayClientFactory | None = None,
    host: str = "10.0.0.2",
) -> tuple[RelayProtocol, RelayProtocol, MemoryNetwork]:
    """
    Join C{connector} to C{acceptor} in memory and run the handshake, TLS
    upgrade included: on the acceptor's clock if it is a L{MemoryNetwork}
    (L{make_clock}), else on a network of the link's own.

    @return: the acceptor's protocol, the connector's protocol, and the
        network, whose C{flush} delivers what is in flight.
    """
    network = acceptor.clock if isinstance(acceptor.clock, MemoryNetwork) else MemoryNetwork()
    client = client or connector.client(acceptor.identity)
    fake = FakeConnector(client.target.host, client.target.port)
    client.startedConnecting(fake)
    client_address = IPv4Address("TCP", host, 40000)
    server_proto = acceptor.server.buildProtocol(client_address)
    client_proto = client.buildProtocol(fake.getDestination())
    assert server_proto is not None
    network.join(server_proto, client_proto, client_address, fake.getDestination())
    network.flush()
    return server_proto, client_proto, network


def record(link) -> None:
    """
    Start recording what each end of a link writes.
    """
    for protocol in link[:2]:
        protocol.transport.recorded = []


class ReliableTestCase(SynchronousTestCase):
    """
    alpha accepts beta; both have an outbox unless a test says otherwise.
    """

    def setUp(self):
        self.clock = make_clock()
        self.alpha = Node("alpha", self.clock, store=MemoryStore())
        self.beta = Node("beta", self.clock, store=MemoryStore())
        pair_keys(self.alpha, self.beta)
        self.link = connect(self.alpha, self.beta)
        record(self.link)

    def flush(self):
        self.link[2].flush()

    def reconnect(self):
        """
        Close the link (what is in flight is lost) and join the nodes again.
        """
        server, client, network = self.link
        server.transport.link.cut()
        network.flush()
        self.link = connect(self.alpha, self.beta)
        record(self.link)

    def tasks(self, node):
        return [m for _, m in node.received if m.msg_type == "delegate_task"]
