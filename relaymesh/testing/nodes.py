"""
Whole nodes on a L{relaymesh.testing.network.MemoryNetwork}: making them,
pairing and connecting them, cutting their links, losing them; and the hop
distances a converged mesh's routing tables hold.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Mapping
from typing import Any, cast

from twisted.internet.defer import Deferred

from relaymesh.connection import RelayProtocol
from relaymesh.keystore import KeyStore
from relaymesh.service import OutboundPeer, RelayService
from relaymesh.testing.fakes import MemoryKeys, MemoryStore, memory_store_opener
from relaymesh.testing.network import LOOPBACK, MemoryConnection, MemoryNetwork, MemoryNetworkError


def memory_node(
    network: MemoryNetwork,
    identity: str,
    outbox: bool | MemoryStore = False,
    listen: str = f"tcp:0:interface={LOOPBACK}",
    **options: Any,
) -> RelayService:
    """
    A L{RelayService} on C{network}, with a L{MemoryKeys} key store and, if
    C{outbox}, a L{MemoryStore}; not started.

    @param identity: Its peer id.
    @param outbox: Whether it keeps an outbox: C{True} for a new, empty
        L{MemoryStore}, or the L{MemoryStore} to open (to keep an outbox
        across a node's restart, or look into it).
    @param listen: Where it listens (any free port by default).
    @param options: Further keyword arguments of L{RelayService}.
    """
    store = outbox if isinstance(outbox, MemoryStore) else None
    # MemoryKeys has what RelayService uses of a KeyStore, not its type.
    return RelayService(
        cast(KeyStore, MemoryKeys(identity=identity)),
        listen=listen,
        reactor=network,
        outbox=False if outbox is False else memory_store_opener(store),
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

    @return: L{RelayService.stopService}'s C{Deferred}.
    """
    for connection in network.connections():
        if node.mesh in _owners(connection):
            connection.cut()
    return node.stopService()


def hop_distances(adjacency: Mapping[str, Iterable[str]], source: str) -> dict[str, int]:
    """
    The hops from C{source} to every node of a graph it reaches, breadth
    first: what a converged routing table says.

    @param adjacency: Each node's neighbours.
    """
    found = {source: 0}
    queue = collections.deque([source])
    while queue:
        here = queue.popleft()
        for there in adjacency[here]:
            if there not in found:
                found[there] = found[here] + 1
                queue.append(there)
    return found
