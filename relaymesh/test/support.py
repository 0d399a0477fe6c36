"""
Helpers shared by the tests: in-memory keys, fixtures, and two nodes joined
by an in-memory connection.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport, StringTransportWithDisconnection
from twisted.test import iosim

from relaymesh.address import PeerAddress
from relaymesh.reliable.outbox import ReliableDelivery
from relaymesh.acceptor import RelayServerFactory
from relaymesh.dialer import RelayClientFactory
from relaymesh.handshake.proofs import compute_proof
from relaymesh.keystore import PAIR_CODE_FORM, ArmedKey
from relaymesh.mesh import Mesh
from relaymesh.connection import RelayProtocol
from relaymesh.routing.router import Router
from relaymesh.routing.table import MAX_HOPS
from relaymesh.reliable.store import DuplicateMessage, OutboxEntry, StoreClosed
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
        return json.load(f)


def load_transcript() -> list[dict]:
    """
    claudectl 0.49.2's recorded handshake: C{{"dir": ..., "line": ...}} per line.
    """
    with open(fixture_path("claudectl-0.49.2-handshake.ndjson")) as f:
        return [json.loads(line) for line in f if line.strip()]


class MemoryKeys:
    """
    An in-memory key store with the interface the factories use.
    """

    def __init__(self, keys: dict[str, bytes] | None = None, pending: bytes | None = None):
        self.keys = dict(keys or {})
        self.pending = pending
        self.meta_updates: list[tuple[str, dict]] = []
        #: Armed keys besides C{pending}, as C{(form, key)}; see L{arm}.
        self.extra: list[tuple[str, bytes]] = []
        self.pending_form = PAIR_CODE_FORM
        self.expires_at: float | None = None
        self.metas: dict[str, dict] = {}
        self.strong_code: str | None = None

    def key(self, peer_id: str) -> bytes | None:
        return self.keys.get(peer_id)

    def set_key(self, peer_id: str, key: bytes) -> None:
        self.keys[peer_id] = key

    def take_strong_code(self, now: float) -> str | None:
        code, self.strong_code = self.strong_code, None
        return code

    def meta(self, peer_id: str) -> dict:
        return dict(self.metas.get(peer_id, {}))

    def pending_key(self) -> bytes | None:
        return self.pending

    def claim_pending_key(self, peer_id: str) -> bytes | None:
        key, self.pending = self.pending, None
        if key is not None:
            self.keys[peer_id] = key
        return key

    # Armed keys, as in KeyStore: the pending key and an invite's extra keys

    def arm(self, keys: list[tuple[str, bytes]], expires_at: float | None = None) -> None:
        (self.pending_form, self.pending), *self.extra = keys
        self.expires_at = expires_at

    def armed_keys(self, now: float) -> list[ArmedKey]:
        if self.expires_at is not None and now >= self.expires_at:
            self.disarm()
        armed = [] if self.pending is None else [ArmedKey(self.pending_form, self.pending)]
        if self.pending is not None:
            armed += [ArmedKey(form, key, form) for form, key in self.extra]
        return armed

    def claim_armed_key(self, peer_id: str, armed: ArmedKey, now: float) -> bytes | None:
        if armed not in self.armed_keys(now):
            return None
        self.keys[peer_id] = armed.key
        self.disarm()
        self.update_meta(peer_id, paired_at=int(now * 1000), paired_via=armed.form)
        return armed.key

    def disarm(self) -> bool:
        armed = self.pending is not None
        self.pending, self.extra, self.expires_at = None, [], None
        self.pending_form = PAIR_CODE_FORM
        return armed

    def peers(self) -> list[str]:
        return sorted(self.keys)

    def update_meta(self, peer_id: str, *, sync: bool = True, **fields: Any) -> dict:
        self.meta_updates.append((peer_id, fields))
        self.metas.setdefault(peer_id, {}).update(fields)
        return self.meta(peer_id)


class MemoryStore:
    """
    An in-memory store with the interface of L{relaymesh.reliable.store.Store} that
    L{ReliableDelivery} uses; every call fires at once.

    @ivar outbox: msg_id -> L{OutboxEntry}, in put order.
    @ivar delivered: The C{(origin, msg_id)} pairs marked delivered.
    @ivar closed: Whether L{close} was called; calls then fail.
    """

    def __init__(self) -> None:
        self.outbox: dict[str, OutboxEntry] = {}
        self.delivered: set[tuple[str, str]] = set()
        self.closed = False

    def _refuse(self) -> Deferred | None:
        return fail(StoreClosed("store is closed")) if self.closed else None

    def put(self, entry: OutboxEntry) -> Deferred[None]:
        refused = self._refuse()
        if refused is not None:
            return refused
        if entry.msg_id in self.outbox:
            return fail(DuplicateMessage(f"message {entry.msg_id!r} is already in the outbox"))
        entry.check()
        self.outbox[entry.msg_id] = entry
        return succeed(None)

    def remove(self, msg_id: str) -> Deferred[bool]:
        return self._refuse() or succeed(self.outbox.pop(msg_id, None) is not None)

    def pending(self, peer_id: str | None = None) -> Deferred[list[OutboxEntry]]:
        return self._refuse() or succeed(
            [e for e in self.outbox.values() if peer_id is None or e.peer_id == peer_id]
        )

    def bump_attempts(self, msg_id: str) -> Deferred[int | None]:
        entry = self.outbox.get(msg_id)
        if entry is None:
            return self._refuse() or succeed(None)
        entry = self.outbox[msg_id] = dataclasses.replace(entry, attempts=entry.attempts + 1)
        return self._refuse() or succeed(entry.attempts)

    def mark_delivered(self, origin: str, msg_id: str, now: float) -> Deferred[bool]:
        refused = self._refuse()
        if refused is not None:
            return refused
        new = (origin, msg_id) not in self.delivered
        self.delivered.add((origin, msg_id))
        return succeed(new)

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)


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


def make_clock() -> Clock:
    """
    A clock set to L{EPOCH}.
    """
    clock = Clock()
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
    An inbound connection to C{node} from C{peer} that finished its
    handshake, with the transport's output cleared.
    """
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
        clock: Clock,
        keys: MemoryKeys | None = None,
        heartbeat_interval: float = 30.0,
        max_peers: int = 8,
        store: MemoryStore | None = None,
        routing: bool = False,
        max_hops: int = MAX_HOPS,
    ) -> None:
        """
        @param store: With a store, the node sends and acknowledges reliable
            messages (L{ReliableDelivery}, as C{self.reliable}).
        @param routing: Whether the node routes (L{Router}, as
            C{self.router}), with hop limit C{max_hops}.
        """
        self.identity = identity
        self.clock = clock
        self.keys = keys or MemoryKeys()
        self.mesh = Mesh(identity, clock, heartbeat_interval, max_peers)
        self.store = store
        self.reliable: ReliableDelivery | None = None
        if store is not None:
            self.reliable = ReliableDelivery(self.mesh, store)
            self.reliable.start()
            self.mesh.enable_reliable(self.reliable)
        self.router: Router | None = None
        if routing:
            self.router = Router(self.mesh, max_hops)
            self.mesh.enable_routing(self.router)
        self.server = RelayServerFactory(self.mesh, self.keys)
        self.received: list[tuple[str, RelayMessage]] = []
        self.events: list = []
        self.mesh.subscribe(lambda peer, msg: self.received.append((peer, msg)))
        self.mesh.watch_peers(self.events.append)

    def client(
        self, target: str | None, host: str = "127.0.0.1", port: int = 9847, legacy: bool = False
    ) -> RelayClientFactory:
        return RelayClientFactory(
            self.mesh, self.keys, PeerAddress(target, host, port, legacy=legacy), self.clock
        )


def pair_keys(a: Node, b: Node, key: bytes | None = None) -> bytes:
    """
    Give two nodes the same key for each other.
    """
    key = key or os.urandom(32)
    a.keys.keys[b.identity] = key
    b.keys.keys[a.identity] = key
    return key


def connect(
    acceptor: Node,
    connector: Node,
    client: RelayClientFactory | None = None,
    host: str = "10.0.0.2",
) -> tuple[RelayProtocol, RelayProtocol, iosim.IOPump]:
    """
    Join C{connector} to C{acceptor} in memory and run the handshake.

    @return: the acceptor's protocol, the connector's protocol, and the pump.
    """
    client = client or connector.client(acceptor.identity)
    fake = FakeConnector(client.target.host, client.target.port)
    client.startedConnecting(fake)
    server_proto = acceptor.server.buildProtocol(IPv4Address("TCP", host, 40000))
    client_proto = client.buildProtocol(fake.getDestination())
    server_transport = iosim.FakeTransport(
        server_proto, isServer=True, peerAddress=IPv4Address("TCP", host, 40000)
    )
    client_transport = iosim.FakeTransport(
        client_proto, isServer=False, peerAddress=fake.getDestination()
    )
    pump = iosim.connect(
        server_proto, server_transport, client_proto, client_transport, clock=acceptor.clock
    )
    return server_proto, client_proto, pump
