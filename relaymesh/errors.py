"""
The errors an application gets from the mesh (L{relaymesh.mesh.Mesh}).
"""


class MeshError(Exception):
    """
    A request the mesh cannot carry out; the message says why.
    """


class UnknownPeer(MeshError):
    """
    No peer with that id is known.
    """


class PeerNotConnected(MeshError):
    """
    The peer is known but not connected now.
    """


class UnsupportedMessageType(MeshError, ValueError):
    """
    An application tried to send a message type the peer does not accept.
    """


class ReliableUnsupported(UnsupportedMessageType):
    """
    A reliable message for a peer that did not announce C{ack/1}, for a node
    without an outbox, or of a type that is never sent reliably.
    """


class DeliveryTimeout(MeshError):
    """
    A reliable message was not acknowledged before its deadline.
    """
