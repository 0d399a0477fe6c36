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
from typing import Any, Callable, Iterable, Sequence

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relaymesh.acceptor import RelayServerFactory
from relaymesh.address import PeerAddress, format_address, parse_peer_address
from relaymesh.connection import State
from relaymesh.dialer import CONNECT_TIMEOUT, RelayClientFactory
from relaymesh.discovery import Announcer
from relaymesh.events import Direction, EventKind, PeerEvent
from relaymesh.heartbeats import DEFAULT_HEARTBEAT_INTERVAL
from relaymesh.interfaces import INode
from relaymesh.keystore import KeyStore, KeyStoreError
from relaymesh.listener import ListenerService
from relaymesh.mesh import DEFAULT_MAX_PEERS, Mesh
from relaymesh.reliable.outbox import (
    DEFAULT_DELIVERY_TIMEOUT,
    DEFAULT_RESEND_AFTER,
    DEFAULT_SCAN_INTERVAL,
    ReliableDelivery,
)
from relaymesh.reliable.store import STORE_FILE, Store, open_store
from relaymesh.routing.router import Router
from relaymesh.routing.table import MAX_HOPS
from relaymesh.tls import NodeCertificate, TLSError, TLSServerFactory

#: The prefix of a listen description served over TLS with the node's
#: certificate: C{tls:9847}, C{tls:9847:interface=127.0.0.1}.
TLS_LISTEN_PREFIX = "tls:"

#: Where a node listens unless told otherwise.
DEFAULT_LISTEN = "tcp:9847"  # claudectl 0.49: port 9847

#: Seconds a stopping node waits for its connections to close before it
#: aborts them.
SHUTDOWN_TIMEOUT = 5.0

#: Where C{twistd relaymesh} serves its control API unless told otherwise:
#: loopback only (L{RelayService} itself serves none unless asked).
DEFAULT_API = "tcp:9849:interface=127.0.0.1"

#: Where it serves it when that port is taken (another node on the host):
#: any free loopback port, which the node writes to DATA_DIR/api-url.
DEFAULT_API_FALLBACK = "tcp:0:interface=127.0.0.1"


class OutboundPeer(Service):
    """
    Keeps dialling one peer address with a L{RelayClientFactory}, over TLS
    when the address says C{tls:}.

    (A L{ReconnectingClientFactory} cannot use client endpoints, so the
    reactor's C{connectTCP} and C{connectSSL} dial directly.)
    """

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
        self.connector = None

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
        if self.connector is not None:
            self.connector.disconnect()
            self.connector = None


@implementer(INode)
class RelayService(MultiService):
    """
    A relay node: listener, outbound peers, mesh and heartbeats.

    @ivar mesh: The L{Mesh}; the application's interface to the peers.
    @ivar keystore: The L{KeyStore} with this node's identity and keys.
    @ivar server_factory: The L{RelayServerFactory} behind the listener.
    @ivar listener: The L{ListenerService}, or L{None} when not listening.
    @ivar api: The L{relaymesh.control.api.ApiService}, or L{None} without an API.
    @ivar announcer: The L{relaymesh.discovery.Announcer}, or L{None} when
        the node does not announce itself.
    @ivar store: The open L{relaymesh.reliable.store.Store} of a node with an outbox
        while it runs, else L{None}.
    @ivar shutdown_timeout: Seconds L{stopService} waits for connections to
        close before it aborts them.
    """

    shutdown_timeout = SHUTDOWN_TIMEOUT

    log = Logger()

    def __init__(
        self,
        keystore: KeyStore,
        listen: str | Sequence[str] | None = DEFAULT_LISTEN,
        peers: Iterable[PeerAddress | str] = (),
        identity: str | None = None,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        max_peers: int = DEFAULT_MAX_PEERS,
        reactor: Any = None,
        jitter: float = 0.0,
        api: str | None = None,
        api_token_file: str | None = None,
        metrics_public: bool = False,
        api_fallback: str | None = None,
        announce_to: tuple[str, int] | None = None,
        tls: NodeCertificate | None = None,
        outbox: bool | Callable[[str, Any], Deferred[Store]] = False,
        delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT,
        resend_after: float = DEFAULT_RESEND_AFTER,
        routing: bool = False,
        max_hops: int = MAX_HOPS,
    ) -> None:
        """
        @param keystore: Where the identity and the keys are.
        @param listen: Where to accept peers: a Twisted server endpoint
            string, C{tls:PORT[:interface=ADDR]} for TLS with this node's
            certificate, a list of them, or L{None} to accept no connections.
        @param peers: Addresses to keep dialling, as L{PeerAddress} or text
            (C{host:port}, C{peer_id@host:port}).
        @param identity: This node's peer id; the key store's by default.
        @param heartbeat_interval: Seconds between heartbeats; a peer silent
            for three intervals is dropped.
        @param max_peers: Connected peers at most; more inbound are refused.
        @param reactor: The reactor (L{IReactorTCP} and L{IReactorTime});
            the global one by default.
        @param jitter: Random spread of reconnection delays, 0 to 1.
        @param api: A Twisted server endpoint string for the control API,
            dashboard and metrics (L{relaymesh.control.api}), or L{None} (the
            default) for none.
        @param api_token_file: The API token file; C{DATA_DIR/api-token}
            if L{None}.
        @param metrics_public: Whether C{/metrics} is served without the
            API token.
        @param api_fallback: Where to serve the API if C{api} cannot be
            listened on (its port is taken), or L{None} to fail then.
        @param announce_to: Where to announce the node on the LAN by UDP
            (an IPv4 address and port, see L{relaymesh.discovery}), or
            L{None} (the default) not to; only a listening node announces.
        @param tls: This node's certificate, for C{tls:} listeners and
            C{tls:} peers (L{relaymesh.tls.NodeCertificate}).
        @param outbox: Whether the node sends and acknowledges reliable
            messages (L{relaymesh.reliable.outbox}), with its outbox and delivered
            ids in C{DATA_DIR/state.sqlite3}; the reactor must then run
            threads. Instead of C{True}, a function C{(path, reactor)}
            returning a L{Deferred} that fires with an open store opens a
            store of its own (an in-memory one in tests and simulations). C{twistd relaymesh} turns it on; an embedding
            application asks for it.
        @param delivery_timeout: Seconds after which an unacknowledged
            reliable message is given up.
        @param resend_after: Seconds after which an unacknowledged reliable
            message is sent again.
        @param routing: Whether the node routes messages between peers
            that announce C{route/1} (L{relaymesh.routing.router}). C{twistd
            relaymesh} turns it on.
        @param max_hops: The hop limit of routes and routed messages.
        """
        MultiService.__init__(self)
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        self.keystore = keystore
        self._jitter = jitter
        self.certificate = tls
        self.mesh = Mesh(
            identity or keystore.identity(),
            reactor,
            heartbeat_interval=heartbeat_interval,
            max_peers=max_peers,
        )
        if routing:
            self.mesh.enable_routing(Router(self.mesh, max_hops))
        self.server_factory = RelayServerFactory(self.mesh, keystore)
        if listen is None:
            listen = []
        elif isinstance(listen, str):
            listen = [listen]
        self.listeners = [self._listener(description) for description in listen]
        for listener in self.listeners:
            listener.setServiceParent(self)
        self.listener: ListenerService | None = self.listeners[0] if self.listeners else None
        self.announcer: Announcer | None = None
        if announce_to is not None and self.listener is not None:
            self.announcer = Announcer(
                self.mesh.identity, self._listening_port, reactor, target=announce_to
            )
            self.announcer.setServiceParent(self)
        self.api = None
        if api is not None:
            from relaymesh.control.api import ApiService

            self.api = ApiService(
                self,
                serverFromString(reactor, api),
                reactor,
                token_file=api_token_file,
                metrics_public=metrics_public,
                fallback=None if api_fallback is None else serverFromString(reactor, api_fallback),
            )
            self.api.setServiceParent(self)
        self._outbox = outbox
        self._delivery_timeout = delivery_timeout
        self._resend_after = resend_after
        self.store: Store | None = None
        # the store being opened, until the node starts or stops
        self._opening: Deferred[Store] | None = None
        self._start_waiters: list[Deferred[None]] = []
        self._start_failure: Failure | None = None
        self._outbound: dict[PeerAddress, OutboundPeer] = {}
        # peer id -> (when its meta was last written, the addr written)
        self._meta_written: dict[str, tuple[float, str | None]] = {}
        for address in peers:
            self.add_peer(address)
        self.mesh.watch_peers(self._peer_event)

    def _listener(self, description: str) -> ListenerService:
        """
        A listener for one endpoint description; C{tls:} ones wrap a TCP
        listener in TLS with this node's certificate, asking the connector
        for its certificate too (for the channel binding and pinning).
        """
        factory: Any = self.server_factory
        if description.startswith(TLS_LISTEN_PREFIX):
            if self.certificate is None:
                raise TLSError(f"{description} needs this node's certificate: run relaymesh tls-init")
            description = "tcp:" + description[len(TLS_LISTEN_PREFIX) :]
            factory = TLSServerFactory(self.certificate.server_options(), False, factory)
        return ListenerService(
            serverFromString(self._reactor, description), factory, self.mesh.identity
        )

    # -- outbound peers ------------------------------------------------------

    def add_peer(self, address: PeerAddress | str) -> OutboundPeer:
        """
        Start dialling a peer (now if the service runs, else when it starts).

        @raise relaymesh.address.InvalidAddress: for an address that does not
            parse.
        """
        if isinstance(address, str):
            address = parse_peer_address(address)
        existing = self._outbound.get(address)
        if existing is not None:
            return existing
        factory = RelayClientFactory(
            self.mesh, self.keystore, address, self._reactor, jitter=self._jitter
        )
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
                del self._outbound[address]
                outbound.disownServiceParent()
                found = True
        return self.mesh.disconnect(peer_id, "removed by request") or found

    def outbound(self) -> list[OutboundPeer]:
        """
        The outbound peers being dialled.
        """
        return list(self._outbound.values())

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
        L{None} (see L{INode}).
        """
        port = self.listener.port if self.listener is not None else None
        return None if port is None else format_address(port.getHost())

    # -- lifecycle -----------------------------------------------------------

    def startService(self) -> None:
        """
        Start the node: at once without an outbox; with one, open the store
        first and start the heartbeats, listeners and diallers once it is
        open and its outbox loaded, so that every handshake announces
        C{ack/1} (see L{whenStarted}).
        """
        self._start_failure = None
        if not self._outbox:
            self._start()
            return
        path = os.path.join(self.keystore.path, STORE_FILE)
        try:
            os.makedirs(self.keystore.path, exist_ok=True)
        except OSError as e:
            self._failed(Failure(e))
            return
        opener = open_store if self._outbox is True else self._outbox
        opening = self._opening = opener(path, self._reactor)
        opening.addCallback(self._store_opened).addErrback(self._failed)

    def _store_opened(self, store: Store) -> Deferred[None] | None:
        if self._opening is None:  # stopped meanwhile
            return store.close()
        self.store = store
        reliable = ReliableDelivery(
            self.mesh,
            store,
            delivery_timeout=self._delivery_timeout,
            resend_after=self._resend_after,
            scan_interval=min(DEFAULT_SCAN_INTERVAL, self._resend_after),
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
        MultiService.startService(self)
        waiters, self._start_waiters = self._start_waiters, []
        for d in waiters:
            d.callback(None)

    def _failed(self, failure: Failure) -> None:
        self._opening = None
        self._start_failure = failure
        self.log.failure(
            "cannot open the outbox in {path}; the node does not start",
            failure,
            path=self.keystore.path,
        )
        store, self.store = self.store, None
        if store is not None:
            store.close()
        waiters, self._start_waiters = self._start_waiters, []
        for d in waiters:
            d.errback(failure)

    def whenStarted(self) -> Deferred[None]:
        """
        A L{Deferred} that fires once the listeners and diallers run (at
        once if they do), or fails with the error that kept the outbox
        from opening.
        """
        if self.running:
            return succeed(None)
        if self._start_failure is not None:
            return fail(self._start_failure)
        d: Deferred[None] = Deferred()
        self._start_waiters.append(d)
        return d

    def stopService(self) -> Deferred:
        """
        Stop the node gracefully: stop listening, dialling, heartbeats and
        the outbox scan; close every connection after what is already
        written to it (L{RelayProtocol.close}), and abort those still open
        L{shutdown_timeout} seconds later; then close the store, which
        writes every outbox and delivered-id change already made.

        @return: a L{Deferred} that fires once all of that is done.
        """
        self._opening = None
        self.mesh.stop()
        if self.mesh.reliable is not None:
            self.mesh.reliable.stop()
        stopped = MultiService.stopService(self)
        connections = self.mesh.connections() + self.server_factory.handshaking()
        for protocol in connections:
            protocol.close("node shutting down")
        d = gatherResults([stopped, self._closed(connections)], consumeErrors=True)
        store, self.store = self.store, None
        if store is not None:
            d.addBoth(lambda result: store.close().addCallback(lambda _: result))
        return d.addCallback(lambda _: None)

    def _closed(self, connections: list[Any]) -> Deferred[None]:
        """
        Fire once every one of C{connections} is closed, aborting those
        still open after L{shutdown_timeout} seconds.
        """
        if not connections:
            return succeed(None)

        def abort() -> None:
            for protocol in connections:
                if protocol.state is not State.CLOSED:
                    protocol.abort(f"not closed within {self.shutdown_timeout:g} s of shutdown")

        timer = self._reactor.callLater(self.shutdown_timeout, abort)

        def done(_: object) -> None:
            if timer.active():
                timer.cancel()

        return gatherResults([p.whenClosed() for p in connections]).addCallback(done)

    def _listening_port(self) -> int | None:
        """
        The TCP port the listener has, for announcements; L{None} if none.
        """
        port = self.listener.port if self.listener is not None else None
        return None if port is None else port.getHost().port

    # -- bookkeeping ---------------------------------------------------------

    def _peer_event(self, event: PeerEvent) -> None:
        if event.peer_id is None or event.kind not in (EventKind.CONNECTED, EventKind.DISCONNECTED):
            return
        if event.kind == EventKind.DISCONNECTED:
            for outbound in self._outbound.values():
                if outbound.factory.peer_id == event.peer_id:
                    outbound.factory.wake()
        now = self._reactor.seconds()
        fields: dict[str, Any] = {"last_seen": int(now * 1000)}
        if event.kind == EventKind.CONNECTED and event.direction == Direction.OUTBOUND:
            fields["addr"] = event.address
        # last_seen is bookkeeping: written without fsync, and for a peer
        # that comes and goes, at most once a heartbeat interval (it cost a
        # node ~70% of its time under a flood of short connections).
        written_at, written_addr = self._meta_written.get(event.peer_id, (None, None))
        addr = fields.get("addr", written_addr)
        if (
            written_at is not None
            and now - written_at < self.mesh.heartbeat_interval
            and addr == written_addr
        ):
            return
        self._meta_written[event.peer_id] = (now, addr)
        try:
            self.keystore.update_meta(event.peer_id, sync=False, **fields)
        except (KeyStoreError, OSError, ValueError) as e:
            self.log.warn(
                "could not record {peer_id} in the key store: {error}",
                peer_id=event.peer_id,
                error=e,
            )
