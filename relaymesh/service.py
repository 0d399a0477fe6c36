"""
L{RelayService}: a whole relay node as one Twisted service.

It owns the listener, one reconnecting dialler per outbound peer, the mesh
registry and its heartbeat loop. C{twistd relaymesh} builds one; an
application embeds one by adding it to its own service hierarchy::

    from relaymesh import KeyStore, RelayService

    node = RelayService(KeyStore("/var/lib/myapp/relay"), listen="tcp:9847",
                        peers=["laptop-a3f2@192.168.1.50:9847"])
    node.setServiceParent(application)
    node.mesh.subscribe(on_task, "delegate_task")
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.application.service import IServiceCollection, MultiService, Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IConnector, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relaymesh.acceptor import RelayServerFactory
from relaymesh.address import InvalidAddress, PeerAddress, format_address, parse_peer_address
from relaymesh.addresses import PEERS_OPTION, AddressBook, AddressKeeper, StoredAddress
from relaymesh.bookkeeping import LastSeen
from relaymesh.config import (
    DEFAULT_LISTEN,
    TLS_LISTEN_PREFIX,
    NodeConfig,
    StoreOpener,
)
from relaymesh.connection import State
from relaymesh.dialer import CONNECT_TIMEOUT, RelayClientFactory
from relaymesh.discovery import Announcer
from relaymesh.events import EventKind, PeerEvent
from relaymesh.interfaces import INode
from relaymesh.keystore import KeyStore
from relaymesh.listener import ListenerService
from relaymesh.mesh import Mesh
from relaymesh.reliable.outbox import DEFAULT_SCAN_INTERVAL, ReliableDelivery
from relaymesh.reliable.store import STORE_FILE, Store, open_store
from relaymesh.routing.router import Router
from relaymesh.sessions.source import session_source
from relaymesh.startup import as_startup_error
from relaymesh.tls import NodeCertificate, TLSError, TLSServerFactory


class OutboundPeer(Service):
    """
    Keeps dialling one peer address with a L{RelayClientFactory}, over TLS
    when the address says C{tls:}.

    (A C{ReconnectingClientFactory} cannot use client endpoints, so the
    reactor's C{connectTCP} and C{connectSSL} dial directly.)
    """

    if TYPE_CHECKING:
        # Service's own, which Twisted leaves unannotated

        def setServiceParent(self, parent: IServiceCollection) -> None: ...

        def disownServiceParent(self) -> Deferred[None] | None: ...

    def __init__(
        self,
        target: PeerAddress,
        factory: RelayClientFactory,
        reactor: Any,
        certificate: NodeCertificate | None = None,
    ) -> None:
        if target.tls and certificate is None:
            raise TLSError(f"{target} needs this node's certificate: run relaymesh tls-init")
        self.target = target
        self.factory = factory
        self._reactor = reactor
        self._certificate = certificate
        self.connector: IConnector | None = None

    def startService(self) -> None:
        Service.startService(self)
        self.factory.resetDelay()
        host, port = self.target.host, self.target.port
        if self.target.tls:
            assert self._certificate is not None
            self.connector = self._reactor.connectSSL(
                host, port, self.factory, self._certificate.client_options(), timeout=CONNECT_TIMEOUT
            )
        else:
            self.connector = self._reactor.connectTCP(host, port, self.factory, timeout=CONNECT_TIMEOUT)

    def stopService(self) -> None:
        Service.stopService(self)
        self.factory.stopTrying()
        current = self.factory.current
        if current is not None and current.state is not State.CLOSED:
            # A connection still in its handshake: over TLS, the transport
            # would wait for the protocol to stop producing before closing.
            current.close("stopped dialling")
        if self.connector is not None:
            self.connector.disconnect()
            self.connector = None


class AnnouncingClientFactory(RelayClientFactory):
    """
    A L{RelayClientFactory} whose handshakes announce, inside TLS, the port
    this node accepts peers on, so that the acceptor can remember where to
    dial it back (L{relaymesh.addresses.INBOUND}).

    @ivar announce: Returns the port and whether it speaks TLS from the
        start, or C{None} and C{False} when the node does not listen.
    """

    announce: Callable[[], tuple[int | None, bool]] = staticmethod(lambda: (None, False))

    def buildProtocol(self, addr: Any) -> Any:
        protocol = RelayClientFactory.buildProtocol(self, addr)
        handshake = protocol.handshake
        handshake.listen, handshake.listen_tls = self.announce()
        return protocol


def closed_within(connections: list[Any], reactor: IReactorTime, timeout: float) -> Deferred[None]:
    """
    Fire once every one of C{connections} is closed, aborting those still
    open after C{timeout} seconds.
    """
    if not connections:
        return succeed(None)

    def abort() -> None:
        for protocol in connections:
            if protocol.state is not State.CLOSED:
                protocol.abort(f"not closed within {timeout:g} s of shutdown")

    timer = reactor.callLater(timeout, abort)

    def done(_: object) -> None:
        if timer.active():
            timer.cancel()

    return gatherResults([p.whenClosed() for p in connections]).addCallback(done)


def _node_certificate(keystore: Any, identity: str) -> NodeCertificate:
    """
    The node's certificate for the TLS upgrade of its links: the one in its
    data directory, made there on the first start; any key store but a
    L{KeyStore} (one in memory) gets one that lives in memory.

    @raise TLSError: if the certificate cannot be read or made.
    """
    if not isinstance(keystore, KeyStore):
        # an in-memory store (its path, if any, is only a placeholder)
        return NodeCertificate.generate(identity)
    return NodeCertificate.for_data_dir(keystore.path, identity)


@implementer(INode)
class RelayService(MultiService):
    """
    A relay node: listener, outbound peers, mesh and heartbeats.

    @ivar mesh: The L{Mesh}; the application's interface to the peers.
    @ivar keystore: The L{KeyStore} with this node's identity and keys.
    @ivar server_factory: The L{RelayServerFactory} behind the listener.
    @ivar listener: The L{ListenerService}, or C{None} when not listening.
    @ivar api: The L{relaymesh.control.api.ApiService}, or C{None} without an API.
    @ivar announcer: The L{relaymesh.discovery.Announcer}, or C{None} when
        the node does not announce itself.
    @ivar store: The open L{relaymesh.reliable.store.Store} of a node with an outbox
        while it runs, else C{None}.
    @ivar shutdown_timeout: Seconds L{stopService} waits for connections to
        close before it aborts them.
    @ivar config: The L{NodeConfig} the node was built from.
    @ivar last_seen: The L{LastSeen} bookkeeping of the peers.
    @ivar session_source: The L{SessionSource} that refreshes the node's
        session list, or C{None} when nothing does (C{none}, C{api}).
    @ivar addresses: The L{AddressKeeper} of the data directory's addresses:
        the peers redialled on start.
    """

    log = Logger()

    def __init__(
        self,
        keystore: KeyStore,
        listen: str | Sequence[str] | None = DEFAULT_LISTEN,
        peers: Iterable[PeerAddress | str] = (),
        reactor: Any = None,
        config: NodeConfig | None = None,
        **options: Any,
    ) -> None:
        """
        @param keystore: Where the identity and the keys are.
        @param listen: Where to accept peers (see L{NodeConfig.listen}): one
            description, several, or C{None} to accept no connections.
        @param peers: Addresses to keep dialling, as L{PeerAddress} or text
            (C{host:port}, C{peer_id@host:port}).
        @param reactor: The reactor (C{IReactorTCP} and C{IReactorTime});
            the global one by default.
        @param config: The whole L{NodeConfig}, instead of C{listen},
            C{peers} and C{options}.
        @param options: The other fields of L{NodeConfig}: C{identity},
            C{heartbeat_interval}, C{max_peers}, C{jitter}, C{api},
            C{outbox}, C{routing}, C{tls}, ...
        @raise relaymesh.address.InvalidAddress: for a peer that does not
            parse.
        @raise TypeError: for an unknown option, or options besides a
            C{config}.
        """
        MultiService.__init__(self)
        if config is None:
            config = NodeConfig.make(listen, peers, **options)
        elif options or peers or listen != DEFAULT_LISTEN:
            raise TypeError("give either a NodeConfig or options, not both")
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        self.config = config
        self.keystore = keystore
        identity = config.identity or keystore.identity()
        self.certificate = config.tls or _node_certificate(keystore, identity)
        self.shutdown_timeout = config.shutdown_timeout
        self.mesh = Mesh(
            identity,
            reactor,
            heartbeat_interval=config.heartbeat_interval,
            max_peers=config.max_peers,
        )
        if config.routing:
            self.mesh.enable_routing(Router(self.mesh, config.max_hops, keys=keystore))
        self.server_factory = RelayServerFactory(self.mesh, keystore, certificate=self.certificate)
        self.listeners = [self._listener(description) for description in config.listen]
        for listener in self.listeners:
            listener.setServiceParent(self)
        self.listener: ListenerService | None = self.listeners[0] if self.listeners else None
        self.announcer: Announcer | None = None
        if config.announce_to is not None and self.listener is not None:
            self.announcer = Announcer(
                self.mesh.identity, self._listening_port, reactor, target=config.announce_to
            )
            self.announcer.setServiceParent(self)
        self.api = None
        if config.api is not None:
            from relaymesh.control.api import ApiService

            fallback = config.api_fallback
            self.api = ApiService(
                self,
                serverFromString(reactor, config.api),
                reactor,
                token_file=config.api_token_file,
                metrics_public=config.metrics_public,
                fallback=None if fallback is None else serverFromString(reactor, fallback),
                hosts=config.api_hosts,
                option=f"--api {config.api}",
            )
            self.api.setServiceParent(self)
        self.store: Store | None = None
        # the store being opened, until the node starts or stops
        self._opening: Deferred[Store] | None = None
        self._start_waiters: list[Deferred[None]] = []
        self._start_failure: Failure | None = None
        self._outbound: dict[PeerAddress, OutboundPeer] = {}
        book = AddressBook(keystore.path) if isinstance(keystore, KeyStore) else None
        self.addresses = AddressKeeper(book, keystore, self.mesh, self._diallers, self._stop_dialling)
        for address in config.peers:
            self.add_peer(address, PEERS_OPTION)
        self.mesh.watch_peers(self._wake_parked)
        self.mesh.watch_peers(self.addresses.learned)
        self.last_seen = LastSeen(self.mesh, keystore, reactor, config.heartbeat_interval)
        self.session_source = session_source(
            self.mesh, config.sessions, config.claude_home, config.session_details, reactor
        )
        if self.session_source is not None:
            # Service.setServiceParent, which Twisted leaves unannotated
            self.session_source.setServiceParent(self)  # type: ignore[no-untyped-call]

    def _listener(self, description: str) -> ListenerService:
        """
        A listener for one endpoint description; C{tls:} ones wrap a TCP
        listener in TLS with this node's certificate, asking the connector
        for its certificate too (for the channel binding and pinning).
        """
        factory: Any = self.server_factory
        option = f"--listen {description}"
        if description.startswith(TLS_LISTEN_PREFIX):
            if self.certificate is None:
                raise TLSError(f"{description} needs this node's certificate: run relaymesh tls-init")
            description = "tcp:" + description[len(TLS_LISTEN_PREFIX) :]
            factory = TLSServerFactory(self.certificate.server_options(), False, factory)
        return ListenerService(
            serverFromString(self._reactor, description), factory, self.mesh.identity, option
        )

    # -- outbound peers ------------------------------------------------------

    def add_peer(self, address: PeerAddress | str, source: str | None = None) -> OutboundPeer:
        """
        Start dialling a peer (now if the service runs, else when it starts).

        @param source: Where the address comes from (L{relaymesh.addresses}),
            to remember it for the next starts once this dial connects (at
            once for C{--peers}); C{None} to remember nothing.
        @raise relaymesh.address.InvalidAddress: for an address that does not
            parse.
        """
        if isinstance(address, str):
            address = parse_peer_address(address)
        self.addresses.dialling(address, source)
        existing = self._outbound.get(address)
        if existing is not None:
            return existing
        config = self.config
        factory = AnnouncingClientFactory(
            self.mesh,
            self.keystore,
            address,
            self._reactor,
            jitter=config.jitter,
            certificate=self.certificate,
        )
        factory.initialDelay = factory.delay = config.retry_initial_delay
        factory.maxDelay = config.retry_max_delay
        factory.announce = self._announced_port
        outbound = OutboundPeer(address, factory, self._reactor, self.certificate)
        self._outbound[address] = outbound
        outbound.setServiceParent(self)
        return outbound

    def remove_peer(self, peer_id: str) -> bool:
        """
        Stop dialling a peer and close its connection.

        @return: whether there was anything to stop or close.
        """
        found = False
        for address, outbound in list(self._outbound.items()):
            if outbound.factory.peer_id == peer_id:
                self._stop_dialling(address)
                found = True
        return self.mesh.disconnect(peer_id, "removed by request") or found

    def _stop_dialling(self, address: PeerAddress) -> None:
        outbound = self._outbound.pop(address)
        self.addresses.stopped(address)
        outbound.disownServiceParent()

    def remove_address(self, text: str) -> bool:
        """
        Stop dialling an address whose peer is not known yet (see L{INode}).
        """
        wanted = parse_peer_address(text)
        matching = [a for a, f in self._diallers().items() if a.hostport == wanted.hostport
                    and wanted.peer_id in (None, f.peer_id)]
        for address in matching:
            self._stop_dialling(address)
        return bool(matching)

    def remember_address(self, peer_id: str, address: PeerAddress, source: str) -> None:
        """Remember an address for a peer now (see L{INode})."""
        self.addresses.remember(peer_id, address, source)

    def forget_address(self, peer_id: str) -> bool:
        """Drop the address remembered for a peer (see L{INode})."""
        return self.addresses.forget(peer_id)

    def forget_peer(self, peer_id: str) -> bool:
        """
        Forget a peer entirely: its connection, dialler, key store files and
        address (L{KeyStore.forget}) and outbox messages (see L{INode}).
        """
        removed = self.remove_peer(peer_id)
        if self.store is not None:
            self.store.forget_peer(peer_id).addErrback(lambda f: self.log.failure("forget {p}", f, p=peer_id))
        return self.keystore.forget(peer_id) or removed

    def stored_addresses(self) -> dict[str, StoredAddress]:
        """The remembered addresses, by peer id (see L{INode})."""
        return self.addresses.entries()

    def outbound(self) -> list[OutboundPeer]:
        """
        The outbound peers being dialled.
        """
        return list(self._outbound.values())

    def dial_connected(self, address: PeerAddress) -> bool:
        """Whether the dialler of C{address} made the live connection (see L{INode})."""
        unnamed = dataclasses.replace(address, peer_id=None)
        for outbound in (self._outbound.get(address), self._outbound.get(unnamed)):
            current = None if outbound is None else outbound.factory.current
            if current is not None and current.peer_id == address.peer_id is not None:
                return self.mesh.registry.connection(address.peer_id) is current
        return False

    def dial_error(self, address: PeerAddress) -> tuple[str | None, float | None]:
        """Why the dialler of C{address} last failed, and when (see L{INode})."""
        outbound = self._outbound.get(address)
        factory = None if outbound is None else outbound.factory
        return (None, None) if factory is None else (factory.last_error, factory.last_error_at)

    def dialled(self) -> list[PeerAddress]:
        """
        The addresses being dialled, each with the peer id learned from its
        first handshake where the address named none (see L{INode}).
        """
        return [
            dataclasses.replace(o.target, peer_id=o.factory.peer_id)
            if o.target.peer_id is None and o.factory.peer_id is not None
            else o.target
            for o in self._outbound.values()
        ]

    def listening_address(self) -> str | None:
        """
        Where the first listener accepts peers, as C{host:port}, or
        C{None} (see L{INode}).
        """
        port = self.listener.port if self.listener is not None else None
        return None if port is None else format_address(port.getHost())

    def listening_tls(self) -> bool:
        """
        Whether the first listener is a C{tls:} one (see L{INode}).
        """
        return self.listener is not None and isinstance(self.listener.factory, TLSServerFactory)

    # -- lifecycle -----------------------------------------------------------

    def startService(self) -> None:
        """
        Start the node: at once without an outbox; with one, open the store
        first and start the heartbeats, listeners and diallers once it is
        open and its outbox loaded, so that every handshake announces
        C{ack/1} (see L{whenStarted}).

        A node that cannot start (a listener or the API cannot listen, the
        outbox cannot open) raises nothing: it logs one line that names the
        option and the cause, stops what had started, and fails
        L{whenStarted} with a L{relaymesh.startup.StartupError}.
        """
        self._start_failure = None
        outbox = self.config.outbox
        if not outbox:
            self._start()
            return
        path = os.path.join(self.keystore.path, STORE_FILE)
        opener: StoreOpener = open_store if outbox is True else outbox
        if outbox is True:
            try:
                os.makedirs(self.keystore.path, exist_ok=True)
            except OSError as e:
                self._failed(Failure(e))
                return
        opening = self._opening = opener(path, self._reactor)
        opening.addCallback(self._store_opened).addErrback(self._failed)

    def _store_opened(self, store: Store) -> Deferred[None] | None:
        if self._opening is None:  # stopped meanwhile
            return store.close()
        self.store = store
        reliable = ReliableDelivery(
            self.mesh,
            store,
            delivery_timeout=self.config.delivery_timeout,
            resend_after=self.config.resend_after,
            scan_interval=min(DEFAULT_SCAN_INTERVAL, self.config.resend_after),
            keys=self.keystore,
        )

        def loaded(_: None) -> None:
            if self.store is not store:  # stopped meanwhile
                return
            self._opening = None
            self.mesh.enable_reliable(reliable)
            self._start()

        return reliable.start().addCallback(loaded)

    def _start(self) -> None:
        self.mesh.start()
        self._dial_stored()
        Service.startService(self)
        for service in self:
            try:
                service.startService()
            except Exception:
                self._failed(Failure(), getattr(service, "option", type(service).__name__))
                return
        waiters, self._start_waiters = self._start_waiters, []
        for d in waiters:
            d.callback(None)

    def _failed(self, failure: Failure, option: str | None = None) -> None:
        """
        The node cannot start: log why in one line, stop what started (and
        close the store), then fail L{whenStarted}.

        @param option: what failed to start (the option of a listener), or
            C{None} for the outbox.
        """
        self._opening = None
        if option is not None:
            error = as_startup_error(option, failure)
        else:
            error = as_startup_error(
                f"--data-dir {self.keystore.path}", failure, "cannot open the outbox"
            )
        self.log.error("{error}; the node does not start", error=str(error))

        def stopped(_: object) -> None:
            self._start_failure = Failure(error)
            waiters, self._start_waiters = self._start_waiters, []
            for d in waiters:
                d.errback(self._start_failure)

        self.stopService().addBoth(stopped)

    def whenStarted(self) -> Deferred[None]:
        """
        A C{Deferred} that fires once the listeners and diallers run (at
        once if they do), or fails with the
        L{relaymesh.startup.StartupError} that kept the node from starting,
        once what had started is stopped again (no port it opened still
        listens).
        """
        if self.running:
            return succeed(None)
        if self._start_failure is not None:
            return fail(self._start_failure)
        d: Deferred[None] = Deferred()
        self._start_waiters.append(d)
        return d

    def stopService(self) -> Deferred[None]:
        """
        Stop the node gracefully: stop listening, dialling, heartbeats and
        the outbox scan; close every connection after what is already
        written to it (L{RelayProtocol.close}), and abort those still open
        L{shutdown_timeout} seconds later; then close the store, which
        writes every outbox and delivered-id change already made.

        @return: a C{Deferred} that fires once all of that is done.
        """
        self._opening = None
        self.mesh.stop()
        if self.mesh.reliable is not None:
            self.mesh.reliable.stop()
        stopped = MultiService.stopService(self)
        connections = self.mesh.connections() + self.server_factory.handshaking()
        for protocol in connections:
            protocol.close("node shutting down")
        d = gatherResults([stopped, closed_within(connections, self._reactor, self.shutdown_timeout)], consumeErrors=True)
        store, self.store = self.store, None
        if store is not None:
            d.addBoth(lambda result: store.close().addCallback(lambda _: result))
        return d.addCallback(lambda _: None)

    def _listening_port(self) -> int | None:
        """
        The TCP port the listener has, for announcements; C{None} if none.
        """
        port = self.listener.port if self.listener is not None else None
        host = None if port is None else port.getHost()
        # none for an endpoint without ports (a unix: listener)
        return host.port if isinstance(host, (IPv4Address, IPv6Address)) else None

    def _announced_port(self) -> tuple[int | None, bool]:
        """
        The port the handshakes announce, and whether it speaks TLS.
        """
        if self.listener is None:
            return None, False
        tls = self.config.listen[0].startswith(TLS_LISTEN_PREFIX)
        return self._listening_port(), tls

    # -- remembered addresses -----------------------------------------------

    def _dial_stored(self) -> None:
        """
        Dial every peer whose address is remembered and whose key is still
        held, unless it is dialled already (C{--peers} names it).
        """
        for entry in self.addresses.to_redial():
            try:
                self.add_peer(entry.peer_address())
            except (InvalidAddress, TLSError) as e:
                self.log.warn("not redialling {peer_id}: {error}", peer_id=entry.peer_id, error=e)

    def _diallers(self) -> dict[PeerAddress, RelayClientFactory]:
        return {address: o.factory for address, o in self._outbound.items()}

    # -- bookkeeping ---------------------------------------------------------

    def _wake_parked(self, event: PeerEvent) -> None:
        """
        A peer's connection ended: a dialler of that peer waiting for it to
        end (it lost a simultaneous connect) dials again.
        """
        if event.kind == EventKind.DISCONNECTED and event.peer_id is not None:
            for outbound in self._outbound.values():
                if outbound.factory.peer_id == event.peer_id:
                    outbound.factory.wake()
