"""
relaymesh: a peer-to-peer relay for Twisted, wire-compatible with the relay
protocol of claudectl 0.49.

The pieces an application uses:

  - L{RelayService}: a whole node, to add to a service hierarchy;
  - its C{mesh} (L{Mesh}, L{IRelayMesh}): send, broadcast, subscribe;
  - L{KeyStore}: the node's identity and its peers' keys;
  - L{NodeConfig}: what a node is built from;
  - the errors (L{relaymesh.errors}) and events (L{relaymesh.events});
  - L{relaymesh.testing}: an in-memory network and fakes for tests.
"""

from relaymesh._version import __version__
from relaymesh.address import PeerAddress, parse_peer_address
from relaymesh.config import NodeConfig
from relaymesh.errors import (
    DeliveryTimeout,
    MeshError,
    PeerNotConnected,
    ReliableUnsupported,
    UnknownPeer,
    UnsupportedMessageType,
)
from relaymesh.events import Direction, EventKind, PeerEvent, PeerSessions, PeerState, PeerStatus
from relaymesh.interfaces import IRelayMesh
from relaymesh.keystore import KeyStore
from relaymesh.mesh import Mesh
from relaymesh.reliable.outbox import Delivery
from relaymesh.service import RelayService
from relaymesh.wire import MessageType, RelayMessage, WireError

__all__ = [
    "__version__",
    "Delivery",
    "DeliveryTimeout",
    "Direction",
    "EventKind",
    "IRelayMesh",
    "KeyStore",
    "Mesh",
    "MeshError",
    "MessageType",
    "NodeConfig",
    "PeerAddress",
    "PeerEvent",
    "PeerNotConnected",
    "PeerSessions",
    "PeerState",
    "PeerStatus",
    "RelayMessage",
    "RelayService",
    "ReliableUnsupported",
    "UnknownPeer",
    "UnsupportedMessageType",
    "WireError",
    "parse_peer_address",
]
