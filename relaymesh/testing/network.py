"""
L{MemoryNetwork}: a reactor for tests that keeps time like
C{twisted.internet.task.Clock} and carries TCP connections in memory over
C{twisted.test.iosim}'s transports, which can upgrade to real TLS in band
(C{twisted.internet.interfaces.ITLSTransport.startTLS}).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable
from typing import Any, Generic

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IConnector,
    IDelayedCall,
    IListeningPort,
    IOpenSSLContextFactory,
    IProducer,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import ClientFactory, P, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import alsoProvides, implementer

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
    A reactor whose time is a C{Clock} and whose TCP connections are in
    memory, between the listeners and the diallers of one host.

    A dial (L{connectTCP}) is answered at the next instant the network runs
    (L{flush}, L{advance}): it connects when a listener is on that port,
    and fails with C{error.ConnectionRefusedError} otherwise. Bytes written
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
        in order (C{Clock} sorts them all after every call, which takes
        most of the time of a network with thousands of timers).
        """

    def _run(
        self, callable: Callable[..., object], args: tuple[object, ...], kw: dict[str, object]
    ) -> None:
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
        self, port: int, factory: IProtocolFactory, backlog: int = 50, interface: str = ""
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
        factory: ClientFactory[P],
        timeout: float = 30,
        bindAddress: tuple[str, int] | None = None,
    ) -> MemoryConnector[P]:
        """
        Dial C{host:port}; the dial is answered at the next instant the
        network runs, so C{timeout} never expires. The connection comes from
        the host of C{bindAddress} if given, else from the network's host.
        """
        connector = MemoryConnector(self, host, port, factory)
        if bindAddress is not None:
            connector.source_host = bindAddress[0]
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

    def _dial(self, connector: MemoryConnector[P]) -> None:
        listening = self._listening.get(connector.port)
        if listening is None or listening.interface not in _ANY_INTERFACE + (connector.host,):
            connector.failed(
                error.ConnectionRefusedError(f"nothing listens on {connector.host}:{connector.port}")
            )
            return
        client_address = IPv4Address(
            "TCP", connector.source_host or self.host, next(self._next_client_port)
        )
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

    def join(
        self,
        server_protocol: IProtocol | None,
        client_protocol: IProtocol | None,
        client_address: IPv4Address,
        server_address: IPv4Address,
    ) -> MemoryConnection:
        """
        Connect two protocols built by hand (not by a listener and a dial),
        as the accepting and the dialling end of a new connection; C{None}
        for an end whose factory refused it (that end closes at once).
        """
        connection = MemoryConnection(
            self, server_protocol, client_protocol, client_address, server_address, None
        )
        self._connections[connection] = None
        connection.start()
        return connection

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

    def __init__(self, network: MemoryNetwork, factory: IProtocolFactory, address: IPv4Address) -> None:
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
class MemoryConnector(Generic[P]):
    """
    One dialler of a L{MemoryNetwork}, with the states and the factory
    calls of Twisted's TCP connector: C{startedConnecting} on each
    L{connect}, then C{clientConnectionFailed} or, once connected,
    C{clientConnectionLost}.

    @ivar state: C{"disconnected"}, C{"connecting"} or C{"connected"}.
    """

    def __init__(self, network: MemoryNetwork, host: str, port: int, factory: ClientFactory[P]) -> None:
        self._network = network
        self.host = host
        self.port = port
        self.factory = factory
        self.state = "disconnected"
        self._attempt: IDelayedCall | None = None
        self._connection: MemoryConnection | None = None
        self._factory_started = False
        #: The address the connection comes from, if not the network's.
        self.source_host: str | None = None

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
    something to pump, and upgrades to TLS on L{startTLS}.

    After L{startTLS}, as on a TCP transport of a real reactor
    (C{twisted.internet._newtls}), L{protocol} is a
    C{twisted.protocols.tls.TLSMemoryBIOProtocol} that wraps the
    application's protocol: what the network delivers goes through it, and
    what the application writes, closes or produces through this transport
    goes to it; the TLS layer itself writes to the link through a
    L{_BelowTLS}. The application keeps this transport as its own.

    @ivar application: The application's protocol, with or without TLS.
    @ivar aborted: Whether L{abortConnection} dropped it.
    @ivar TLS: Whether L{startTLS} was called; use C{ISSLTransport} to
        check for TLS instead.
    """

    aborted = False
    TLS = False

    #: Whether the registered producer streams (C{iosim.FakeTransport}
    #: starts it at 0).
    streamingProducer: bool

    #: When a list, every write of the application is also appended to it
    #: as it was written (before TLS): what a test reads of the traffic.
    recorded: list[bytes] | None = None

    #: When true, what the application writes is lost on the way, as a
    #: failing link would lose it (TLS, below, stays intact).
    lose_writes = False

    def __init__(self, connection: MemoryConnection, protocol: IProtocol, isServer: bool,
                 hostAddress: IPv4Address, peerAddress: IPv4Address) -> None:
        iosim.FakeTransport.__init__(self, protocol, isServer, hostAddress, peerAddress)
        self._connection = connection
        self.application = protocol

    def write(self, data: bytes) -> None:
        """
        Send C{data}: encrypted after L{startTLS}, in clear before.
        """
        if self.recorded is not None:
            self.recorded.append(data)
        if self.lose_writes:
            return
        if self.TLS:
            if not self.disconnected:
                self.protocol.write(data)
        else:
            self._send(data)

    def loseConnection(self) -> None:
        """
        Close once what was written is delivered; after L{startTLS}, the
        TLS layer first sends its close_notify and waits for the peer's.
        """
        if self.TLS:
            if not self.disconnecting and not self.disconnected:
                self.protocol.loseConnection()
        else:
            self._lose()

    def abortConnection(self) -> None:
        """
        Close at once, discarding what was written and not yet delivered
        (with TLS too: as on a real reactor, nothing is sent).
        """
        self.stream = []
        self.aborted = True
        self._lose()

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """
        Register C{producer}: with the TLS layer after L{startTLS}.
        """
        if self.TLS:
            self.protocol.registerProducer(producer, streaming)
        else:
            iosim.FakeTransport.registerProducer(self, producer, streaming)

    def unregisterProducer(self) -> None:
        """
        Unregister the producer: from the TLS layer after L{startTLS}.
        """
        if self.TLS:
            self.protocol.unregisterProducer()
        else:
            iosim.FakeTransport.unregisterProducer(self)

    def startTLS(self, contextFactory: IOpenSSLContextFactory, normal: bool = True) -> None:
        """
        Run TLS over this connection from now on, as
        C{twisted.internet._newtls.startTLS} does for TCP: what was written
        before goes out first, in clear; from now on the bytes written, and
        those received, go through a TLS layer between this transport and
        the application's protocol. The transport then provides
        C{ISSLTransport}, with C{getHandle} and C{getPeerCertificate}.

        @param contextFactory: The TLS options, for instance a
            C{twisted.internet.ssl.CertificateOptions}.
        @param normal: Whether the dialling end is the TLS client (else the
            accepting end is).
        @raise RuntimeError: if TLS has started already.
        """
        if self.TLS:
            raise RuntimeError("TLS has started on this connection already")
        producer, streaming = self.producer, self.streamingProducer
        if producer is not None:
            self.unregisterProducer()
        # The factory's clock times the layer's buffered writes: the
        # network, so that they go out when it runs (the default is the
        # global reactor, which a test does not run).
        client = not self.isServer if normal else self.isServer
        # No factory wraps the protocol (as in Twisted's own startTLS, which
        # passes None too): the layer is built around the protocol there is.
        factory = TLSMemoryBIOFactory(
            contextFactory, client, None, clock=self._connection.clock  # type: ignore[arg-type]
        )
        tls = factory.protocol(factory, self.protocol, False)
        self.protocol = tls
        self.getHandle = tls.getHandle
        self.getPeerCertificate = tls.getPeerCertificate
        alsoProvides(self, ISSLTransport)
        self.TLS = True
        tls.makeConnection(_BelowTLS(self))
        if producer is not None:
            self.registerProducer(producer, streaming)

    def getOutBuffer(self) -> bytes | None:
        """
        Take what was written to the link and not yet delivered.

        @return: the bytes, or C{None} if there are none.
        """
        data: bytes | None = iosim.FakeTransport.getOutBuffer(self)
        return data

    def bufferReceived(self, buf: bytes) -> None:
        """
        Hand bytes that came over the link to the protocol (the TLS layer's,
        after L{startTLS}).
        """
        iosim.FakeTransport.bufferReceived(self, buf)

    @property
    def link(self) -> MemoryConnection:
        """
        The connection this transport is an end of.
        """
        return self._connection

    def _send(self, data: bytes) -> None:
        if data and not self.disconnecting:
            iosim.FakeTransport.write(self, data)
            self._connection.changed()

    def _lose(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self._connection.changed()


class _BelowTLS:
    """
    The transport of the TLS layer of a L{_Transport}: the link itself,
    bypassing the TLS that L{_Transport} now applies to the application's
    writes (the role of C{twisted.internet._newtls._BypassTLS}).
    """

    def __init__(self, transport: _Transport) -> None:
        self._transport = transport

    def __getattr__(self, name: str) -> object:
        # getPeer, getHost, abortConnection, ... are the link's own
        return getattr(self._transport, name)

    def write(self, data: bytes) -> None:
        self._transport._send(data)

    def writeSequence(self, iovec: list[bytes]) -> None:
        self._transport._send(b"".join(iovec))

    def loseConnection(self) -> None:
        self._transport._lose()

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        iosim.FakeTransport.registerProducer(self._transport, producer, streaming)

    def unregisterProducer(self) -> None:
        iosim.FakeTransport.unregisterProducer(self._transport)


class MemoryConnection:
    """
    A TCP connection of a L{MemoryNetwork}: two C{iosim.FakeTransport}s
    between which the network pumps bytes, encrypted from the moment an
    end calls C{startTLS}.

    A protocol that the accepting factory did not build (it refused the
    connection) is replaced by one that closes at once, as the listening
    socket of a real reactor would.

    @ivar client: The dialling end's transport.
    @ivar server: The accepting end's transport.
    @ivar closed: Whether the connection is closed.
    """

    def __init__(self, network: MemoryNetwork, server_protocol: IProtocol | None,
                 client_protocol: IProtocol | None, client_address: IPv4Address,
                 server_address: IPv4Address, connector: MemoryConnector[Any] | None) -> None:
        self._network = network
        self._connector = connector
        self._refused = [server_protocol is None, client_protocol is None]
        self.server = _Transport(self, server_protocol or Protocol(), True, server_address, client_address)
        self.client = _Transport(self, client_protocol or Protocol(), False, client_address, server_address)
        self.closed = False

    @property
    def clock(self) -> MemoryNetwork:
        """
        The network the connection belongs to, whose time it keeps.
        """
        return self._network

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
        for closer in (self.client, self.server):
            if not self.closed and closer.disconnecting and not closer.stream:
                if closer.aborted:
                    self._close(closer, error.ConnectionAborted(), error.ConnectionLost())
                else:
                    self._close(closer, error.ConnectionDone(), error.ConnectionDone())

    def cut(self) -> None:
        """
        Break the connection as a failing link would: what is in flight is
        lost, and both ends see C{error.ConnectionLost}.
        """
        if not self.closed:
            self.client.stream, self.server.stream = [], []
            self._close(self.client, error.ConnectionLost(), error.ConnectionLost())

    def protocols(self) -> tuple[IProtocol, IProtocol]:
        """
        The accepting and the dialling end's protocols (the applications',
        not a TLS layer in between).
        """
        return self.server.application, self.client.application

    def _close(self, closer: _Transport, closer_reason: Exception, other_reason: Exception) -> None:
        self.closed = True
        self._network._closed(self)
        other = self.server if closer is self.client else self.client
        for transport in (closer, other):
            transport.disconnecting = transport.disconnected = True
        closer.protocol.connectionLost(Failure(closer_reason))
        other.protocol.connectionLost(Failure(other_reason))
        client_reason = closer_reason if closer is self.client else other_reason
        if self._connector is not None:
            self._connector.lost(Failure(client_reason))
