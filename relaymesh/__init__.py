"""
relaymesh: a peer-to-peer relay for Twisted, wire-compatible with the relay
protocol of claudectl 0.49.

The pieces an application uses:

  - L{RelayService}: a whole node, to add to a service hierarchy;
  - its C{mesh} (L{Mesh}, L{IRelayMesh}): send, broadcast, subscribe;
  - L{KeyStore}: the node's identity and its peers' keys.
"""

from relaymesh._version import __version__
from relaymesh.address import PeerAddress, parse_peer_address
from relaymesh.interfaces import IRelayMesh
from relaymesh.keystore import KeyStore
from relaymesh.mesh import Mesh, PeerEvent, PeerSessions, PeerStatus
from relaymesh.service import RelayService
from relaymesh.wire import MessageType, RelayMessage

__all__ = [
    "__version__",
    "IRelayMesh",
    "KeyStore",
    "Mesh",
    "MessageType",
    "PeerAddress",
    "PeerEvent",
    "PeerSessions",
    "PeerStatus",
    "RelayMessage",
    "RelayService",
    "parse_peer_address",
]
