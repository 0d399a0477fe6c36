"""
The interfaces an embedding application may rely on.

This module imports nothing that imports it, even for type checking: a
connection (L{relaymesh.connection.RelayProtocol}), the fleet, the registry
and a reliable delivery are therefore typed C{Any} here, and their
documentation names them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from relaymesh.address import PeerAddress
    from relaymesh.addresses import StoredAddress
    from relaymesh.dispatch import MessageCallback, Subscription
    from relaymesh.events import PeerEvent, PeerSessions, PeerStatus
    from relaymesh.handshake.base import Authenticated
    from relaymesh.keystore import KeyStore
    from relaymesh.outbound import WriteBatch
    from relaymesh.wire import RelayMessage


class IRelayMesh(Interface):
    """
    A node's view of its peers: send, broadcast, subscribe, inspect.

    Every callback runs in the reactor thread. A callback that raises is
    logged and does not affect the connection or other callbacks.
    """

    identity: str = Attribute("This node's peer id (str).")
    heartbeat_interval: float = Attribute("Seconds between heartbeats (float).")
    max_peers: int = Attribute("How many connected peers an acceptor admits (int).")
    registry = Attribute(
        "The L{relaymesh.registry.Registry} of peers and connections, which"
        " also records their round trips."
    )

    def message(msg_type: str, payload: Any, from_peer: str | None = None) -> RelayMessage:
        """
        Make (without sending) a new message from this node, with a fresh id
        and the current time.

        @rtype: L{relaymesh.wire.RelayMessage}
        """

    def send(peer_id: str, msg_type: str, payload: Any) -> str:
        """
        Send C{payload} as a C{msg_type} message to a connected peer.

        @return: the message id (str).
        @raise relaymesh.mesh.UnknownPeer: no peer has that id.
        @raise relaymesh.mesh.PeerNotConnected: the peer is not connected.
        @raise relaymesh.mesh.UnsupportedMessageType: not a type peers accept.
        @raise relaymesh.wire.WireError: the payload is not JSON or too long.
        """

    def send_reliable(peer_id: str, msg_type: str, payload: Any) -> Any:
        """
        Send C{payload} as a C{msg_type} message that reaches the peer's
        application exactly once, to a peer that announced C{ack/1}.

        @return: a L{relaymesh.reliable.outbox.Delivery}, whose C{accepted()} fires
            once the message is durable and C{delivered()} once the peer
            acknowledged it.
        @raise relaymesh.mesh.ReliableUnsupported: this node has no outbox,
            or the peer did not announce C{ack/1}.
        """

    def broadcast(msg_type: str, payload: Any) -> dict[str, str]:
        """
        Send one message to every connected peer.

        @return: a dict of peer id to message id.
        """

    def subscribe(
        callback: MessageCallback, msg_type: str | None = None
    ) -> Subscription[MessageCallback]:
        """
        Call C{callback(peer_id, message)} for each new incoming message of
        C{msg_type}, or of every type if it is C{None}.

        @return: an object whose C{cancel()} unsubscribes.
        """

    def watch_peers(
        callback: Callable[[PeerEvent], None],
    ) -> Subscription[Callable[[PeerEvent], None]]:
        """
        Call C{callback(event)} with each L{relaymesh.mesh.PeerEvent}:
        connecting, connected, disconnected, denied, reconnect_scheduled.

        @return: an object whose C{cancel()} unsubscribes.
        """

    fleet = Attribute(
        "The L{relaymesh.fleet.Fleet}: this node's session list and its peers', "
        "with watchers of their changes."
    )

    def set_sessions(sessions: Iterable[Any] | None, worker_id: Any = None) -> None:
        """
        Set the session list this node's heartbeats carry (C{None} for none).
        """

    def sessions() -> dict[str, PeerSessions]:
        """
        Every peer's latest unexpired session list.

        @return: a dict of peer id to L{relaymesh.mesh.PeerSessions}.
        """

    def peers() -> list[PeerStatus]:
        """
        Snapshots of every known peer.

        @return: a list of L{relaymesh.mesh.PeerStatus}, sorted by peer id.
        """

    def peer(peer_id: str) -> PeerStatus:
        """
        A snapshot of one peer.

        @rtype: L{relaymesh.mesh.PeerStatus}
        """

    def connected_count() -> int:
        """
        How many peers are connected now (int).
        """

    def is_connected(peer_id: str) -> bool:
        """
        Whether the peer has a live authenticated connection.
        """

    def disconnect(peer_id: str, reason: str = "disconnected by request") -> bool:
        """
        Close the peer's current connection (an outbound peer reconnects;
        use the service to stop dialling it).
        """


class INode(Interface):
    """
    A running node as its control plane (L{relaymesh.control}) sees it: the
    mesh, the key store, where it listens and whom it dials.
    """

    mesh: IRelayMesh = Attribute("The node's L{IRelayMesh}.")
    keystore: KeyStore = Attribute("The node's L{relaymesh.keystore.KeyStore}.")

    def listening_address() -> str | None:
        """
        Where the node accepts peers, as C{host:port}.

        @return: the address of its first listener (str), or C{None} when it
            does not listen (yet).
        """

    def listening_tls() -> bool:
        """
        Whether the node's first listener is a C{tls:} one, so that peers
        join it over TLS (C{relaymesh join --tls}).

        @return: a bool; C{False} when it does not listen.
        """

    def dialled() -> list[PeerAddress]:
        """
        The peer addresses the node keeps dialling.

        @return: a list of L{relaymesh.address.PeerAddress}, each with the
            peer id learned from its first handshake where the address named
            none.
        """

    def add_peer(address: PeerAddress | str, source: str | None = None) -> object:
        """
        Start dialling a L{relaymesh.address.PeerAddress} (or its text), and
        remember it for the next start under C{source}
        (L{relaymesh.addresses.SOURCES}) unless that is C{None}.

        @raise relaymesh.address.InvalidAddress: for text that does not parse.
        """

    def remove_peer(peer_id: str) -> bool:
        """
        Stop dialling a peer and close its connection.

        @return: whether there was anything to stop or close.
        """

    def remove_address(text: str) -> bool:
        """
        Stop dialling an address whose peer is not known yet.

        @return: whether any dialler was stopped.
        @raise relaymesh.address.InvalidAddress: for text that does not parse.
        """

    def dial_connected(address: PeerAddress) -> bool:
        """
        Whether the dialler of a L{relaymesh.address.PeerAddress} made its
        peer's live connection.
        """

    def dial_error(address: PeerAddress) -> tuple[str | None, float | None]:
        """
        Why the dialler of a L{relaymesh.address.PeerAddress} last failed,
        and when (clock seconds): C{(reason, time)}, or C{(None, None)}.
        """

    def stored_addresses() -> dict[str, StoredAddress]:
        """
        The remembered addresses: peer id -> L{relaymesh.addresses.StoredAddress}.
        """

    def remember_address(peer_id: str, address: PeerAddress, source: str) -> None:
        """
        Remember a L{relaymesh.address.PeerAddress} for a peer now, with its
        source (L{relaymesh.addresses}), without dialling it.
        """

    def forget_address(peer_id: str) -> bool:
        """
        Drop the address remembered for a peer; whether there was one.
        """

    def forget_peer(peer_id: str) -> bool:
        """
        Forget a peer entirely (connection, dialling, key, address, outbox);
        whether anything was there.
        """


class ILinkOwner(Interface):
    """
    What a connection (L{relaymesh.connection.RelayProtocol}) needs from the
    node it belongs to: the registry of authenticated peers and the path of
    their messages. L{relaymesh.mesh.Mesh} provides it.
    """

    clock: IReactorTime = Attribute("The IReactorTime every timer of the connection uses.")
    idle_timeout: float = Attribute("Seconds of silence after which a connected peer is dropped.")
    writes: WriteBatch = Attribute("The WriteBatch the node's connections share.")

    def message(msg_type: str, payload: Any, from_peer: str | None = None) -> RelayMessage:
        """
        A new message from this node, with a fresh id and the current time.
        """

    def admission_error(peer_id: str) -> str | None:
        """
        Why an inbound peer that just proved its key must still be refused,
        or C{None} to admit it.
        """

    def reads_fields(capabilities: frozenset[str]) -> bool:
        """
        Whether messages from a peer that announced C{capabilities} may carry
        top-level fields this node reads.
        """

    def peer_authenticated(connection: Any) -> bool:
        """
        Register a connection whose handshake succeeded.

        @return: whether the connection was kept.
        """

    def messages_received(
        connection: Any, messages: Sequence[RelayMessage]
    ) -> None:
        """
        Take a sequence of plain messages from an authenticated connection,
        in order; stop when the connection closes.
        """

    def fields_received(
        connection: Any, message: RelayMessage, fields: dict[str, Any]
    ) -> None:
        """
        Take a message whose top-level fields this node reads (C{fields}:
        those besides the five of the protocol).
        """

    def connection_lost(connection: Any, reason: str) -> None:
        """
        Note that an authenticated connection closed.
        """


class IHandshakeObserver(Interface):
    """
    What a connection tells the factory that made it about its handshake.
    """

    def handshakeVerified(connection: Any, outcome: Authenticated) -> None:
        """
        The peer proved its key (L{relaymesh.handshake.base.Authenticated}):
        record what the outcome leaves to record, before the connection
        goes on.

        @raise relaymesh.handshake.base.HandshakeFailed: if it cannot be
            recorded; the handshake then fails.
        """

    def handshakeSucceeded(connection: Any) -> None:
        """
        The connection is authenticated.
        """

    def handshakeFailed(connection: Any, reason: str) -> None:
        """
        The connection closed before its handshake succeeded.
        """


class PairwiseKeys(Protocol):
    """
    Where routing and reliable delivery look up the key this node shares
    with a peer (the key store, or a fake in tests): a routed message is
    sealed with it end to end, and a peer with a key is a peer this node
    may queue reliable messages for.
    """

    def key(self, peer_id: str) -> bytes | None:
        """The 32-byte key shared with C{peer_id}, or C{None} if unpaired."""


class ExtensionHost(Protocol):
    """
    What the node's extensions (L{relaymesh.routing.router.Router},
    L{relaymesh.reliable.outbox.ReliableDelivery}) may use of the mesh that
    runs them. L{relaymesh.mesh.Mesh} provides it.
    """

    identity: str
    clock: IReactorTime

    def message(self, msg_type: str, payload: Any, from_peer: str | None = None) -> RelayMessage:
        """A new message from this node, with a fresh id and the time."""

    def sendable(self, msg_type: Any) -> str:
        """C{msg_type} as a string, if an application may send it."""

    def knows(self, peer_id: str) -> bool:
        """Whether the peer authenticated since the mesh started (so that
        its capabilities are known)."""

    def announced(self, peer_id: str, capability: str) -> bool:
        """Whether the peer's latest connection announced C{capability}."""

    def send(self, peer_id: str, msg_type: str, payload: Any) -> str:
        """Send a message to a peer, or through a route to a node."""

    def send_line(self, peer_id: str, line: bytes, msg_type: str) -> Any:
        """Write an encoded message to a connected peer: its connection
        (true; its C{writable} says whether its send buffer has room, and
        C{whenWritable()} when it has), or C{None} if it was not connected."""

    def routable(self, peer_id: str) -> bool:
        """Whether a route leads to C{peer_id}."""

    def send_routed(
        self, to: str, message: RelayMessage, origin_id: str, fields: dict[str, Any]
    ) -> bool:
        """Send C{message} with extra top-level C{fields} through a route
        under C{origin_id}; whether a route led there."""

    def deliver(self, peer_id: str, message: RelayMessage) -> None:
        """Hand a message to the application's subscribers."""

    def routes_changed(self) -> None:
        """The routing table changed."""

    def advertise(self) -> None:
        """Send every routing neighbour this node's routes now."""

    def batch(self) -> AbstractContextManager[object]:
        """A block whose writes are coalesced."""

    def receive_routed(self, origin: str, message: RelayMessage, fields: dict[str, Any]) -> bool:
        """A routed message for this node, as its origin sent it, with the
        top-level fields it carried: whether an extension took it (a
        reliable message, an ack of the outbox)."""
