"""
Helpers for tests of the control API (L{relaymesh.control}): a node with
its control plane served over real HTTP, a reader of event streams, and a
wait on a condition in real time; and a fake node and mesh with only
what the control plane may use of them (L{INode}, L{IRelayMesh}).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from io import BytesIO

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from zope.interface import implementer

from relaymesh.acceptor import RelayServerFactory
from relaymesh.address import PeerAddress, parse_peer_address
from relaymesh.addresses import AddressBook
from relaymesh.control.plane import ControlPlane
from relaymesh.control.site import make_site
from relaymesh.events import PeerEvent, PeerSessions, PeerStatus
from relaymesh.interfaces import INode
from relaymesh.keystore import KeyStore
from relaymesh.service import RelayService
from relaymesh.test import realtime
from relaymesh.test.support import EPOCH, Node, connect
from relaymesh.testing import MemoryKeys, MemoryNetwork

TOKEN = "test-token-0123456789"


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.01) -> defer.Deferred:
    """
    Fire once C{predicate()} is true (real time); fail after C{timeout} s.
    """
    return realtime.wait_for(predicate, timeout, interval)


class StreamReader(Protocol):
    """
    Collects a streamed response body and splits it into SSE events.
    """

    def __init__(self) -> None:
        self.data = b""
        self.done: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(None)

    def events(self) -> list[dict]:
        found = []
        for block in self.data.split(b"\n\n"):
            lines = [line[6:] for line in block.split(b"\n") if line.startswith(b"data: ")]
            if lines:
                found.append(json.loads(b"\n".join(lines)))
        return found

    def close(self) -> defer.Deferred:
        # a response's body is delivered by a producer, not a transport
        IPushProducer(self.transport).stopProducing()
        return self.done


class ApiHarness:
    """
    A node "alpha" (mesh on a memory clock, not started) with its control
    plane served over real HTTP on 127.0.0.1, and an in-memory peer "beta".
    """

    def __init__(self, case: TestCase, **control_args) -> None:
        self.case = case
        self.clock = MemoryNetwork()
        self.clock.advance(EPOCH)
        self.keystore = KeyStore(case.mktemp())
        self.keystore.set_identity("alpha")
        self.node = RelayService(self.keystore, listen=None, reactor=self.clock)
        self.control = ControlPlane(self.node, self.clock, token=TOKEN, **control_args)
        self.site = make_site(self.control)
        self.channels: list = []
        build = self.site.buildProtocol

        def tracking(addr):
            channel = build(addr)
            self.channels.append(channel)
            return channel

        case.patch(self.site, "buildProtocol", tracking)
        # Twisted annotates the factory as a bare ServerFactory, which no
        # Site (a ServerFactory of HTTP channels) matches
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")  # type: ignore[arg-type]
        address = self.port.getHost()
        assert isinstance(address, IPv4Address)
        self.url = f"http://127.0.0.1:{address.port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=self.pool)
        self.readers: list[StreamReader] = []
        case.addCleanup(self.close)

    @defer.inlineCallbacks
    def close(self):
        self.control.close_streams()
        for reader in self.readers:
            if not reader.done.called:
                reader.transport.stopProducing()
            yield reader.done
        yield self.pool.closeCachedConnections()
        transports = [getattr(c, "transport", None) for c in self.channels]
        transports = [t for t in transports if t is not None]
        for transport in transports:
            if transport.connected:
                transport.abortConnection()
        yield self.port.stopListening()
        yield wait_for(lambda: not any(t.connected for t in transports), 5)

    # -- the peer ------------------------------------------------------------

    def connect_beta(self, name: str = "beta", host: str = "10.0.0.2", **node_args):
        """
        Pair and connect an in-memory peer (L{Node} takes C{node_args});
        return it and the link.
        """
        peer = Node(name, self.clock, **node_args)
        key = os.urandom(32)
        self.keystore.set_key(name, key)
        assert isinstance(peer.keys, MemoryKeys)
        peer.keys.keys["alpha"] = key
        link = connect(_Alpha("alpha", self.clock, self.node.server_factory), peer, host=host)
        return peer, link

    # -- HTTP ----------------------------------------------------------------

    @defer.inlineCallbacks
    def request(self, method: str, path: str, body=None, token: str | None = TOKEN, raw: bytes | None = None, headers=None):
        """
        Make a request; fire with C{(status, JSON body, response)}.
        """
        h = Headers(headers or {})
        if token is not None:
            h.addRawHeader(b"authorization", f"Bearer {token}".encode())
        producer = None
        if raw is None and body is not None:
            raw = json.dumps(body).encode()
        if raw is not None:
            producer = FileBodyProducer(BytesIO(raw))
            h.addRawHeader(b"content-type", b"application/json")
        response = yield self.agent.request(method.encode(), (self.url + path).encode(), h, producer)
        data = yield readBody(response)
        try:
            value = json.loads(data)
        except ValueError:
            value = data
        return response.code, value, response

    @defer.inlineCallbacks
    def stream(self, path: str = "/api/events", token: str | None = TOKEN, headers=None):
        """
        Open an event stream; fire with C{(response, StreamReader)}.
        """
        h = Headers(headers or {})
        if token is not None:
            h.addRawHeader(b"authorization", f"Bearer {token}".encode())
        response = yield self.agent.request(b"GET", (self.url + path).encode(), h)
        reader = StreamReader()
        self.readers.append(reader)
        response.deliverBody(reader)
        return response, reader


@dataclass(frozen=True)
class _Alpha:
    """
    What L{connect} needs of alpha, which is a service and not a L{Node}.
    """

    identity: str
    clock: MemoryNetwork
    server: RelayServerFactory


class _Subscription:
    """
    One callback of a L{FakeMesh}; C{cancel()} removes it.
    """

    def __init__(self, callbacks: list, callback) -> None:
        self._callbacks = callbacks
        self._callback = callback
        callbacks.append(callback)

    def cancel(self) -> None:
        if self._callback in self._callbacks:
            self._callbacks.remove(self._callback)


class FakeFleet:
    """
    The part of a L{relaymesh.fleet.Fleet} the control plane uses: the test
    sets this node's own list and tells the watchers of changes.
    """

    expiry = 90.0

    def __init__(self, mesh: FakeMesh) -> None:
        self.source = "api"
        self.own: PeerSessions | None = None
        self.watchers: list = []
        self._mesh = mesh

    def local(self) -> PeerSessions | None:
        return self.own

    def sessions(self) -> dict[str, PeerSessions]:
        return self._mesh.sessions()

    def lists(self) -> list[PeerSessions]:
        own = [] if self.own is None else [self.own]
        return own + [held for _, held in sorted(self.sessions().items())]

    def watch(self, callback) -> _Subscription:
        return _Subscription(self.watchers, callback)

    def tell(self, peer_id: str, held: PeerSessions | None) -> None:
        for callback in list(self.watchers):
            callback(peer_id, held)


class FakeMesh:
    """
    The part of an L{IRelayMesh} the control plane's views and event streams
    use: the test sets its peers, session lists and connected peers, and
    hands messages and peer events to its subscribers.

    @ivar subscribers: The message callbacks.
    @ivar watchers: The peer event callbacks.
    """

    identity = "alpha"
    heartbeat_interval = 30.0
    max_peers = 8

    def __init__(self) -> None:
        self.statuses: list[PeerStatus] = []
        self.session_lists: dict[str, PeerSessions] = {}
        self.connected: set[str] = set()
        self.subscribers: list = []
        self.watchers: list = []
        self.fleet = FakeFleet(self)

    def subscribe(self, callback, msg_type=None) -> _Subscription:
        return _Subscription(self.subscribers, callback)

    def watch_peers(self, callback) -> _Subscription:
        return _Subscription(self.watchers, callback)

    def deliver(self, peer_id: str, message) -> None:
        for callback in list(self.subscribers):
            callback(peer_id, message)

    def emit(self, event: PeerEvent) -> None:
        for callback in list(self.watchers):
            callback(event)

    def peers(self) -> list[PeerStatus]:
        return sorted(self.statuses, key=lambda s: s.peer_id)

    def sessions(self) -> dict[str, PeerSessions]:
        return dict(self.session_lists)

    def is_connected(self, peer_id: str) -> bool:
        return peer_id in self.connected

    def disconnect(self, peer_id: str, reason: str = "disconnected by request") -> bool:
        was = peer_id in self.connected
        self.connected.discard(peer_id)
        return was


@implementer(INode)
class FakeNode:
    """
    An L{INode} over a L{FakeMesh} and a real key store, whose dialled
    addresses and listening address the test sets.

    @ivar addresses: What L{dialled} returns.
    @ivar listening: What L{listening_address} returns.
    @ivar book: The key store's L{AddressBook}.
    @ivar connected_by_dial: The dialled addresses L{dial_connected} is true of.
    """

    def __init__(self, keystore: KeyStore, mesh: FakeMesh | None = None) -> None:
        self.keystore = keystore
        self.mesh = mesh or FakeMesh()
        self.addresses: list[PeerAddress] = []
        self.listening: str | None = None
        self.book = AddressBook(keystore.path)
        self.connected_by_dial: set[PeerAddress] = set()
        self.dial_errors: dict[PeerAddress, tuple[str | None, float | None]] = {}

    def listening_address(self) -> str | None:
        return self.listening

    def listening_tls(self) -> bool:
        return False

    def dialled(self) -> list[PeerAddress]:
        return list(self.addresses)

    def add_peer(self, address: PeerAddress | str, source: str | None = None) -> None:
        if isinstance(address, str):
            address = parse_peer_address(address)
        if source is not None and address.peer_id is not None:
            self.book.record(address.peer_id, address, source)
        if address not in self.addresses:
            self.addresses.append(address)

    def remove_peer(self, peer_id: str) -> bool:
        kept = [a for a in self.addresses if a.peer_id != peer_id]
        found = len(kept) != len(self.addresses)
        self.addresses = kept
        return self.mesh.disconnect(peer_id) or found

    def remove_address(self, text: str) -> bool:
        wanted = parse_peer_address(text)
        kept = [a for a in self.addresses if a.peer_id is not None or a.hostport != wanted.hostport]
        found = len(kept) != len(self.addresses)
        self.addresses = kept
        return found

    def dial_connected(self, address: PeerAddress) -> bool:
        return address in self.connected_by_dial

    def dial_error(self, address: PeerAddress) -> tuple[str | None, float | None]:
        return self.dial_errors.get(address, (None, None))

    def stored_addresses(self) -> dict:
        return self.book.entries()

    def remember_address(self, peer_id: str, address: PeerAddress, source: str) -> None:
        self.book.record(peer_id, address, source)

    def forget_address(self, peer_id: str) -> bool:
        return self.book.forget(peer_id)

    def forget_peer(self, peer_id: str) -> bool:
        found = self.remove_peer(peer_id)
        return self.keystore.forget(peer_id) or found
