"""
The interfaces an embedding application may rely on.
"""

from zope.interface import Attribute, Interface


class IRelayMesh(Interface):
    """
    A node's view of its peers: send, broadcast, subscribe, inspect.

    Every callback runs in the reactor thread. A callback that raises is
    logged and does not affect the connection or other callbacks.
    """

    identity = Attribute("This node's peer id (str).")
    heartbeat_interval = Attribute("Seconds between heartbeats (float).")
    max_peers = Attribute("How many connected peers an acceptor admits (int).")

    def send(peer_id, msg_type, payload):
        """
        Send C{payload} as a C{msg_type} message to a connected peer.

        @return: the message id (str).
        @raise relaymesh.mesh.UnknownPeer: no peer has that id.
        @raise relaymesh.mesh.PeerNotConnected: the peer is not connected.
        @raise relaymesh.mesh.UnsupportedMessageType: not a type peers accept.
        @raise relaymesh.wire.WireError: the payload is not JSON or too long.
        """

    def send_reliable(peer_id, msg_type, payload):
        """
        Send C{payload} as a C{msg_type} message that reaches the peer's
        application exactly once, to a peer that announced C{ack/1}.

        @return: a L{relaymesh.reliable.outbox.Delivery}, whose C{accepted()} fires
            once the message is durable and C{delivered()} once the peer
            acknowledged it.
        @raise relaymesh.mesh.ReliableUnsupported: this node has no outbox,
            or the peer did not announce C{ack/1}.
        """

    def broadcast(msg_type, payload):
        """
        Send one message to every connected peer.

        @return: a dict of peer id to message id.
        """

    def subscribe(callback, msg_type=None):
        """
        Call C{callback(peer_id, message)} for each new incoming message of
        C{msg_type}, or of every type if it is L{None}.

        @return: an object whose C{cancel()} unsubscribes.
        """

    def watch_peers(callback):
        """
        Call C{callback(event)} with each L{relaymesh.mesh.PeerEvent}:
        connecting, connected, disconnected, denied, reconnect_scheduled.

        @return: an object whose C{cancel()} unsubscribes.
        """

    def set_sessions(sessions, worker_id=None):
        """
        Set the session list this node's heartbeats carry (L{None} for none).
        """

    def sessions():
        """
        Every peer's latest unexpired session list.

        @return: a dict of peer id to L{relaymesh.mesh.PeerSessions}.
        """

    def peers():
        """
        Snapshots of every known peer.

        @return: a list of L{relaymesh.mesh.PeerStatus}, sorted by peer id.
        """

    def peer(peer_id):
        """
        A snapshot of one peer.

        @rtype: L{relaymesh.mesh.PeerStatus}
        """

    def connected_count():
        """
        How many peers are connected now (int).
        """

    def is_connected(peer_id):
        """
        Whether the peer has a live authenticated connection.
        """

    def disconnect(peer_id, reason="disconnected by request"):
        """
        Close the peer's current connection (an outbound peer reconnects;
        use the service to stop dialling it).
        """


class INode(Interface):
    """
    A running node as its control plane (L{relaymesh.control}) sees it: the
    mesh, the key store, where it listens and whom it dials.
    """

    mesh = Attribute("The node's L{IRelayMesh}.")
    keystore = Attribute("The node's L{relaymesh.keystore.KeyStore}.")

    def listening_address():
        """
        Where the node accepts peers, as C{host:port}.

        @return: the address of its first listener (str), or L{None} when it
            does not listen (yet).
        """

    def dialled():
        """
        The peer addresses the node keeps dialling.

        @return: a list of L{relaymesh.address.PeerAddress}, each with the
            peer id learned from its first handshake where the address named
            none.
        """

    def add_peer(address):
        """
        Start dialling a L{relaymesh.address.PeerAddress} (or its text).

        @raise relaymesh.address.InvalidAddress: for text that does not parse.
        """

    def remove_peer(peer_id):
        """
        Stop dialling a peer and close its connection.

        @return: whether there was anything to stop or close.
        """
