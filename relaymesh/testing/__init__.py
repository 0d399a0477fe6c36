"""
Test support for applications that embed relaymesh, and for relaymesh's
own tests: whole nodes on an in-memory network driven by a fake clock.

L{MemoryNetwork} is a reactor for tests. It keeps time like
C{twisted.internet.task.Clock} and carries TCP connections in memory, so
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

This module imports C{twisted.test.iosim}: it is for tests only, and
nothing else in relaymesh imports it.
"""

from relaymesh.testing.fakes import MemoryKeys, MemoryStore, memory_store_opener
from relaymesh.testing.network import (
    MemoryConnection,
    MemoryConnector,
    MemoryNetwork,
    MemoryNetworkError,
    MemoryPort,
)
from relaymesh.testing.nodes import (
    connect_nodes,
    cut_link,
    hop_distances,
    links_between,
    lose_node,
    memory_node,
)

__all__ = [
    "MemoryConnection",
    "MemoryConnector",
    "MemoryKeys",
    "MemoryNetwork",
    "MemoryNetworkError",
    "MemoryPort",
    "MemoryStore",
    "connect_nodes",
    "cut_link",
    "hop_distances",
    "links_between",
    "lose_node",
    "memory_node",
    "memory_store_opener",
]
