"""
Test support for applications that embed relaymesh, and for relaymesh's
own tests: whole nodes on an in-memory network driven by a fake clock.

L{MemoryNetwork} is a reactor for tests. It keeps time like
L{twisted.internet.task.Clock} and carries TCP connections in memory, so
that many L{RelayService} instances listen, dial, pair and exchange
messages in one process without a socket, a thread or a wall-clock wait::

    from relaymesh.testing import MemoryNetwork, connect_nodes, memory_node

    network = MemoryNetwork()
    alice = memory_node(network, "alice")
    bob = memory_node(network, "bob")
    alice.startService()
    bob.startService()
    connect_nodes(network, alice, bob)      # bob dials alice
    bob.mesh.send("alice", "delegate_task", {"task": "build"})
    network.flush()                         # alice's subscribers have it
    network.advance(30)                     # heartbeats, timeouts, retries

L{MemoryKeys} is a key store and L{MemoryStore} a reliable-delivery store,
both in memory; L{memory_store_opener} plugs the latter into
C{RelayService(outbox=...)}.

This module imports L{twisted.test.iosim}: it is for tests only, and
nothing else in relaymesh imports it.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import os
from typing import Any, Callable

from twisted.internet import error
from twisted.internet.base import DelayedCall
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IConnector,
    IDelayedCall,
    IListeningPort,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from relaymesh.connection import RelayProtocol
from relaymesh.keystore import PAIR_CODE_FORM, ArmedKey
from relaymesh.reliable.store import DuplicateMessage, OutboxEntry, StoreClosed
from relaymesh.service import OutboundPeer, RelayService

#: The address every connection of a L{MemoryNetwork} comes from, and the
#: interface nodes made by L{memory_node} listen on.
LOOPBACK = "127.0.0.1"

#: The first port a listener on port 0 gets.
FIRST_LISTENING_PORT = 20000

#: The first port the dialling end of a connection gets.
FIRST_CLIENT_PORT = 50000

#: Pumps and calls at most in one L{MemoryNetwork.flush} at one instant: more
#: means that the protocols keep each other busy forever.
FLUSH_LIMIT = 1_000_000

#: Interfaces that accept connections to any address.
_ANY_INTERFACE = ("", "0.0.0.0")


class MemoryNetworkError(Exception):
    """
    The in-memory network cannot do what was asked.
    """


@implementer(IReactorTime, IReactorTCP)
class MemoryNetwork(Clock):
    """
    A reactor whose time is a L{Clock} and whose TCP connections are in
    memory, between the listeners and the diallers of one host.

    A dial (L{connectTCP}) is answered at the next instant the network runs
    (L{flush}, L{advance}): it connects when a listener is on that port,
    and fails with L{error.ConnectionRefusedError} otherwise. Bytes written
    to a connection are delivered, in order, when the network next pumps;
    it pumps after every timed call, so that the calls and the traffic of
    one instant interleave as with a real reactor, and no two connections
    are ever half-way through their handshakes because of batching.

    @ivar host: The address every connection comes from.
    """

    def __init__(self, host: str = LOOPBACK) -> None:
        Clock.__init__(self)
        self.host = host
        self._listening: dict[int, MemoryPort] = {}
        self._connections: dict[MemoryConnection, None] = {}
        self._dirty: dict[MemoryConnection, None] = {}
        self._next_port = itertools.count(FIRST_LISTENING_PORT)
        self._next_client_port = itertools.count(FIRST_CLIENT_PORT)

    # -- IReactorTime --------------------------------------------------------

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> IDelayedCall:
        """
        Schedule a call, after which the network pumps what it wrote.
        """
        call = DelayedCall(
            self.seconds() + delay,
            self._run,
            (callable, args, kw),
            {},
            self.calls.remove,
            self._moved,
            self.seconds,
        )
        bisect.insort_right(self.calls, call, key=DelayedCall.getTime)
        return call

    def _moved(self, call: DelayedCall) -> None:
        # reset() or delay() changed its time: put it back in order
        self.calls.remove(call)
        bisect.insort_right(self.calls, call, key=DelayedCall.getTime)

    def _sortCalls(self) -> None:
        """
        Nothing to sort: L{callLater} and L{_moved} keep the pending calls
        in order (L{Clock} sorts them all after every call, which takes
        most of the time of a network with thousands of timers).
        """

    def _run(self, callable: Callable[..., object], args: tuple, kw: dict) -> None:
        callable(*args, **kw)
        self._pump()

    def flush(self) -> None:
        """
        Deliver every byte written and run every call due, until nothing is
        left to do at this instant.

        @raise MemoryNetworkError: if that never ends.
        """
        self._pump()
        Clock.advance(self, 0)

    def advance(self, amount: float) -> None:
        """
        Move time forward by C{amount} seconds, one scheduled instant at a
        time: each call runs at the time it was scheduled for, and the
        network is flushed after each.
        """
        target = self.rightNow + amount
        self.flush()
        while self.calls and self.calls[0].getTime() <= target:
            Clock.advance(self, self.calls[0].getTime() - self.rightNow)
        Clock.advance(self, target - self.rightNow)

    def _pump(self) -> None:
        for _ in range(FLUSH_LIMIT):
            if not self._dirty:
                return
            connection = next(iter(self._dirty))
            del self._dirty[connection]
            connection.pump()
        raise MemoryNetworkError("the connections never went quiet")

    # -- IReactorTCP ---------------------------------------------------------

    def listenTCP(
        self, port: int, factory: Factory, backlog: int = 50, interface: str = ""
    ) -> MemoryPort:
        """
        Listen on C{port} (a free one from L{FIRST_LISTENING_PORT} if 0).

        @raise error.CannotListenError: if something listens there already.
        """
        if port == 0:
            port = next(p for p in self._next_port if p not in self._listening)
        elif port in self._listening:
            raise error.CannotListenError(interface, port, OSError("address already in use"))
        listening = MemoryPort(self, factory, IPv4Address("TCP", interface or "0.0.0.0", port))
        self._listening[port] = listening
        factory.doStart()
        return listening

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: ClientFactory,
        timeout: float = 30,
        bindAddress: tuple[str, int] | None = None,
    ) -> MemoryConnector:
        """
        Dial C{host:port}; the dial is answered at the next instant the
        network runs, so C{timeout} never expires.
        """
        connector = MemoryConnector(self, host, port, factory)
        connector.connect()
        return connector

    def connectSSL(self, host: str, port: int, *args: object, **kw: object) -> None:
        """
        Refuse: the in-memory network carries plain TCP only.

        @raise MemoryNetworkError: always.
        """
        raise MemoryNetworkError(
            f"cannot dial {host}:{port} over TLS: the in-memory network carries plain TCP only"
        )

    # -- the links -----------------------------------------------------------

    def connections(self) -> list[MemoryConnection]:
        """
        The open connections, oldest first.
        """
        return list(self._connections)

    def _dial(self, connector: MemoryConnector) -> None:
        listening = self._listening.get(connector.port)
        if listening is None or listening.interface not in _ANY_INTERFACE + (connector.host,):
            connector.failed(
                error.ConnectionRefusedError(f"nothing listens on {connector.host}:{connector.port}")
            )
            return
        client_address = IPv4Address("TCP", self.host, next(self._next_client_port))
        server_address = IPv4Address("TCP", connector.host, connector.port)
        connection = MemoryConnection(
            self,
            listening.factory.buildProtocol(client_address),
            connector.factory.buildProtocol(server_address),
            client_address,
            server_address,
            connector,
        )
        self._connections[connection] = None
        connector.connected(connection)
        connection.start()

    def _unlisten(self, port: MemoryPort) -> None:
        if self._listening.get(port.port) is port:
            del self._listening[port.port]

    def _changed(self, connection: MemoryConnection) -> None:
        self._dirty[connection] = None

    def _closed(self, connection: MemoryConnection) -> None:
        self._connections.pop(connection, None)
        self._dirty.pop(connection, None)


@implementer(IListeningPort)
class MemoryPort:
    """
    A listener of a L{MemoryNetwork}.

    @ivar factory: Builds the protocol of each accepted connection.
    @ivar port: The port number.
    @ivar interface: The interface it accepts on (C{""}: every one).
    """

    def __init__(self, network: MemoryNetwork, factory: Factory, address: IPv4Address) -> None:
        self._network = network
        self.factory = factory
        self._address = address
        self.port = address.port
        self.interface = "" if address.host == "0.0.0.0" else address.host
        self._listening = True

    def startListening(self) -> None:
        """
        Nothing to do: L{MemoryNetwork.listenTCP} listens at once.
        """

    def stopListening(self) -> Deferred[None]:
        """
        Stop accepting: dials to the port are refused from now on.
        """
        if self._listening:
            self._listening = False
            self._network._unlisten(self)
            self.factory.doStop()
        return succeed(None)

    def getHost(self) -> IPv4Address:
        return self._address


@implementer(IConnector)
class MemoryConnector:
    """
    One dialler of a L{MemoryNetwork}, with the states and the factory
    calls of Twisted's TCP connector: C{startedConnecting} on each
    L{connect}, then C{clientConnectionFailed} or, once connected,
    C{clientConnectionLost}.

    @ivar state: C{"disconnected"}, C{"connecting"} or C{"connected"}.
    """

    def __init__(self, network: MemoryNetwork, host: str, port: int, factory: ClientFactory) -> None:
        self._network = network
        self.host = host
        self.port = port
        self.factory = factory
        self.state = "disconnected"
        self._attempt: IDelayedCall | None = None
        self._connection: MemoryConnection | None = None
        self._factory_started = False

    def connect(self) -> None:
        """
        Dial; the listener answers at the next instant the network runs.
        """
        if self.state != "disconnected":
            raise RuntimeError(f"cannot connect while {self.state}")
        self.state = "connecting"
        if not self._factory_started:
            self._factory_started = True
            self.factory.doStart()
        self._attempt = self._network.callLater(0, self._arrive)
        self.factory.startedConnecting(self)

    def _arrive(self) -> None:
        self._attempt = None
        self._network._dial(self)

    def stopConnecting(self) -> None:
        """
        Give up the dial in progress (the factory is told it failed).
        """
        if self.state != "connecting":
            raise error.NotConnectingError("not connecting")
        assert self._attempt is not None
        self._attempt.cancel()
        self._attempt = None
        self.failed(error.UserError())

    def disconnect(self) -> None:
        """
        Give up the dial in progress, or close the connection.
        """
        if self.state == "connecting":
            self.stopConnecting()
        elif self.state == "connected":
            assert self._connection is not None
            self._connection.client.loseConnection()

    def getDestination(self) -> IPv4Address:
        return IPv4Address("TCP", self.host, self.port)

    def connected(self, connection: MemoryConnection) -> None:
        """
        The dial reached a listener.
        """
        self.state = "connected"
        self._connection = connection

    def failed(self, reason: Exception) -> None:
        """
        The dial did not connect.
        """
        self.state = "disconnected"
        self.factory.clientConnectionFailed(self, Failure(reason))
        self._factory_stopped()

    def lost(self, reason: Failure) -> None:
        """
        The connection closed.
        """
        self.state = "disconnected"
        self._connection = None
        self.factory.clientConnectionLost(self, reason)
        self._factory_stopped()

    def _factory_stopped(self) -> None:
        # as Twisted's connector: the factory stops unless it dialled again
        if self.state == "disconnected" and self._factory_started:
            self._factory_started = False
            self.factory.doStop()


class _Transport(iosim.FakeTransport):
    """
    One end of a L{MemoryConnection}: tells the network when it has
    something to pump.

    @ivar aborted: Whether L{abortConnection} dropped it.
    """

    aborted = False

    def __init__(self, connection: MemoryConnection, protocol: Protocol, isServer: bool,
                 hostAddress: IPv4Address, peerAddress: IPv4Address) -> None:
        iosim.FakeTransport.__init__(self, protocol, isServer, hostAddress, peerAddress)
        self._connection = connection

    def write(self, data: bytes) -> None:
        if data and not self.disconnecting:
            iosim.FakeTransport.write(self, data)
            self._connection.changed()

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self._connection.changed()

    def abortConnection(self) -> None:
        """
        Close at once, discarding what was written and not yet delivered.
        """
        self.stream = []
        self.aborted = True
        self.loseConnection()


class MemoryConnection:
    """
    A TCP connection of a L{MemoryNetwork}: two L{iosim.FakeTransport}s
    between which the network pumps bytes.

    A protocol that the accepting factory did not build (it refused the
    connection) is replaced by one that closes at once, as the listening
    socket of a real reactor would.

    @ivar client: The dialling end's transport.
    @ivar server: The accepting end's transport.
    @ivar closed: Whether the connection is closed.
    """

    def __init__(self, network: MemoryNetwork, server_protocol: Protocol | None,
                 client_protocol: Protocol | None, client_address: IPv4Address,
                 server_address: IPv4Address, connector: MemoryConnector) -> None:
        self._network = network
        self._connector = connector
        self._refused = [server_protocol is None, client_protocol is None]
        self.server = _Transport(self, server_protocol or Protocol(), True, server_address, client_address)
        self.client = _Transport(self, client_protocol or Protocol(), False, client_address, server_address)
        self.closed = False

    def start(self) -> None:
        """
        Connect both protocols; the accepting end first.
        """
        for transport, refused in zip((self.server, self.client), self._refused):
            transport.protocol.makeConnection(transport)
            if refused:
                transport.loseConnection()

    def changed(self) -> None:
        """
        Something was written or closed: pump at the next chance.
        """
        if not self.closed:
            self._network._changed(self)

    def pump(self) -> None:
        """
        Deliver what each end wrote, then close the connection if an end
        closed it and has nothing left to deliver.
        """
        for source, sink in ((self.client, self.server), (self.server, self.client)):
            data = source.getOutBuffer()
            if data and not self.closed:
                sink.bufferReceived(data)
        for closer, other in ((self.client, self.server), (self.server, self.client)):
            if not self.closed and closer.disconnecting and not closer.stream:
                if closer.aborted:
                    self._close(closer, error.ConnectionAborted(), error.ConnectionLost())
                else:
                    self._close(closer, error.ConnectionDone(), error.ConnectionDone())

    def cut(self) -> None:
        """
        Break the connection as a failing link would: what is in flight is
        lost, and both ends see L{error.ConnectionLost}.
        """
        if not self.closed:
            self.client.stream, self.server.stream = [], []
            self._close(self.client, error.ConnectionLost(), error.ConnectionLost())

    def protocols(self) -> tuple[Protocol, Protocol]:
        """
        The accepting and the dialling end's protocols.
        """
        return self.server.protocol, self.client.protocol

    def _close(self, closer: _Transport, closer_reason: Exception, other_reason: Exception) -> None:
        self.closed = True
        self._network._closed(self)
        other = self.server if closer is self.client else self.client
        for transport in (closer, other):
            transport.disconnecting = transport.disconnected = True
        closer.protocol.connectionLost(Failure(closer_reason))
        other.protocol.connectionLost(Failure(other_reason))
        client_reason = closer_reason if closer is self.client else other_reason
        self._connector.lost(Failure(client_reason))


# -- nodes ---------------------------------------------------------------------


def memory_node(
    network: MemoryNetwork,
    identity: str,
    outbox: bool = False,
    listen: str = f"tcp:0:interface={LOOPBACK}",
    **options: Any,
) -> RelayService:
    """
    A L{RelayService} on C{network}, with a L{MemoryKeys} key store and, if
    C{outbox}, a L{MemoryStore}; not started.

    @param identity: Its peer id.
    @param listen: Where it listens (any free port by default).
    @param options: Further keyword arguments of L{RelayService}.
    """
    return RelayService(
        MemoryKeys(identity=identity),
        listen=listen,
        reactor=network,
        outbox=memory_store_opener() if outbox else False,
        **options,
    )


def connect_nodes(
    network: MemoryNetwork,
    acceptor: RelayService,
    connector: RelayService,
    key: bytes | None = None,
) -> OutboundPeer:
    """
    Pair two running nodes (the same key stored for each other in their key
    stores) and make C{connector} dial C{acceptor}'s listener; the network
    is flushed, so they are connected on return unless one refuses.

    @param key: The shared key; a random one by default.
    @return: C{connector}'s dialler of C{acceptor}.
    @raise MemoryNetworkError: if C{acceptor} does not listen.
    """
    address = acceptor.listening_address()
    if address is None:
        raise MemoryNetworkError(f"{acceptor.mesh.identity} does not listen")
    key = key or os.urandom(32)
    acceptor.keystore.set_key(connector.mesh.identity, key)
    connector.keystore.set_key(acceptor.mesh.identity, key)
    outbound = connector.add_peer(f"{acceptor.mesh.identity}@{address}")
    network.flush()
    return outbound


def _owners(connection: MemoryConnection) -> set[object]:
    """
    The meshes that own the two ends of a connection.
    """
    return {p.owner for p in connection.protocols() if isinstance(p, RelayProtocol)}


def links_between(network: MemoryNetwork, a: RelayService, b: RelayService) -> list[MemoryConnection]:
    """
    The open connections between two nodes, in either direction.
    """
    meshes = {a.mesh, b.mesh}
    return [
        connection
        for connection in network.connections()
        if _owners(connection) == meshes
    ]


def cut_link(network: MemoryNetwork, a: RelayService, b: RelayService) -> int:
    """
    Cut every connection between two nodes, as a failing link would
    (L{MemoryConnection.cut}); their diallers keep dialling.

    @return: how many connections were cut.
    """
    links = links_between(network, a, b)
    for connection in links:
        connection.cut()
    return len(links)


def lose_node(network: MemoryNetwork, node: RelayService) -> Deferred[None]:
    """
    Take a node off the network as a crash would: cut every connection it
    has, without a goodbye, then stop it.

    @return: L{RelayService.stopService}'s L{Deferred}.
    """
    for connection in network.connections():
        if node.mesh in _owners(connection):
            connection.cut()
    return node.stopService()


# -- key store and outbox store ------------------------------------------------


class MemoryKeys:
    """
    An in-memory key store with the interface the factories, the handshakes
    and L{RelayService} use of L{relaymesh.keystore.KeyStore}.

    @ivar keys: peer id -> shared key.
    @ivar pending: The armed pairing key, or L{None}.
    @ivar path: The directory L{RelayService} is told the store is in: the
        current one, which exists, so that a node with an in-memory outbox
        creates nothing on disk.
    @ivar meta_updates: Every L{update_meta} call, as C{(peer_id, fields)}.
    @ivar extra: Armed keys besides C{pending}, as C{(form, key)}; see L{arm}.
    @ivar metas: peer id -> its meta fields.
    @ivar strong_code: The armed strong pairing code, taken once.
    """

    path = os.curdir

    def __init__(
        self,
        keys: dict[str, bytes] | None = None,
        pending: bytes | None = None,
        identity: str | None = None,
    ) -> None:
        """
        @param identity: This node's peer id, for L{identity}.
        """
        self.keys = dict(keys or {})
        self.pending = pending
        self._identity = identity
        self.meta_updates: list[tuple[str, dict]] = []
        self.extra: list[tuple[str, bytes]] = []
        self.pending_form = PAIR_CODE_FORM
        self.expires_at: float | None = None
        self.metas: dict[str, dict] = {}
        self.strong_code: str | None = None

    def identity(self) -> str:
        """
        This node's peer id.

        @raise MemoryNetworkError: if the store was made without one.
        """
        if self._identity is None:
            raise MemoryNetworkError("this MemoryKeys was made without an identity")
        return self._identity

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

    def arm(self, keys: list[tuple[str, bytes]], expires_at: float | None = None) -> None:
        """
        Arm C{keys} (C{(form, key)}, the first the pending key) until
        C{expires_at}, as L{relaymesh.keystore.KeyStore.arm} does.
        """
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
    An in-memory store with the interface of L{relaymesh.reliable.store.Store}
    that L{relaymesh.reliable.outbox.ReliableDelivery} and L{RelayService}
    use; every call fires at once.

    @ivar outbox: msg_id -> L{OutboxEntry}, in put order.
    @ivar delivered: The C{(origin, msg_id)} pairs marked delivered.
    @ivar closed: Whether L{close} was called; calls then fail with
        L{StoreClosed}.
    """

    def __init__(self) -> None:
        self.outbox: dict[str, OutboxEntry] = {}
        self.delivered: set[tuple[str, str]] = set()
        self.closed = False

    def _refuse(self) -> Deferred | None:
        return fail(StoreClosed("store is closed")) if self.closed else None

    def put(self, entry: OutboxEntry) -> Deferred[None]:
        """
        Add an entry to the outbox.
        """
        refused = self._refuse()
        if refused is not None:
            return refused
        if entry.msg_id in self.outbox:
            return fail(DuplicateMessage(f"message {entry.msg_id!r} is already in the outbox"))
        entry.check()
        self.outbox[entry.msg_id] = entry
        return succeed(None)

    def remove(self, msg_id: str) -> Deferred[bool]:
        """
        Drop an entry; fires with whether it was there.
        """
        return self._refuse() or succeed(self.outbox.pop(msg_id, None) is not None)

    def pending(self, peer_id: str | None = None) -> Deferred[list[OutboxEntry]]:
        """
        The entries, for one peer or all.
        """
        return self._refuse() or succeed(
            [e for e in self.outbox.values() if peer_id is None or e.peer_id == peer_id]
        )

    def bump_attempts(self, msg_id: str) -> Deferred[int | None]:
        """
        Count one more attempt; fires with the count (L{None} if gone).
        """
        entry = self.outbox.get(msg_id)
        if entry is None:
            return self._refuse() or succeed(None)
        entry = self.outbox[msg_id] = dataclasses.replace(entry, attempts=entry.attempts + 1)
        return self._refuse() or succeed(entry.attempts)

    def mark_delivered(self, origin: str, msg_id: str, now: float) -> Deferred[bool]:
        """
        Remember a delivered message; fires with whether it was new.
        """
        refused = self._refuse()
        if refused is not None:
            return refused
        new = (origin, msg_id) not in self.delivered
        self.delivered.add((origin, msg_id))
        return succeed(new)

    def close(self) -> Deferred[None]:
        """
        Close the store; later calls fail.
        """
        self.closed = True
        return succeed(None)


def memory_store_opener(
    store: MemoryStore | None = None,
) -> Callable[[str, Any], Deferred[MemoryStore]]:
    """
    A store opener for C{RelayService(outbox=...)}: each call opens
    C{store} again (its outbox kept across a restart of the node), or a new
    empty L{MemoryStore} if none is given; the path is ignored.
    """

    def open_store(path: str, reactor: Any) -> Deferred[MemoryStore]:
        opened = MemoryStore() if store is None else store
        opened.closed = False
        return succeed(opened)

    return open_store
