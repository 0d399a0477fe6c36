"""
Tests for L{relaymesh.registry.Registry}'s count of connected peers, kept
as connections come, replace each other and go, so that admitting a
connection does not walk every peer a node knows.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relaymesh.counters import Traffic
from relaymesh.events import Direction
from relaymesh.handshake.base import Authenticated
from relaymesh.registry import Registry


class FakeConnection:
    """
    What the registry reads of an authenticated connection.
    """

    def __init__(self, peer_id: str, direction: Direction, connected_at: float) -> None:
        self.peer_id = peer_id
        self.outcome = Authenticated(peer_id=peer_id, key=b"k" * 32, capabilities=frozenset(), mutual=True)
        self.address = "10.0.0.2:40000"
        self.direction = direction
        self.connected_at = connected_at
        self.last_received = connected_at
        self.traffic = Traffic()
        self.closed: str | None = None

    def close(self, reason: str) -> None:
        self.closed = reason


#: One step: a connection of a peer is made and added, or the oldest open
#: one of a peer is removed.
STEPS = st.lists(
    st.tuples(st.sampled_from(["add", "remove"]), st.sampled_from(["a", "b", "c"]), st.booleans()),
    max_size=40,
)


class ConnectedCountTests(SynchronousTestCase):
    @settings(max_examples=100, deadline=None)
    @given(steps=STEPS)
    def test_count_is_the_live_connections(self, steps):
        """
        Whatever order connections are added, replaced (including the
        tie-break of a simultaneous connect, which keeps the older one) and
        removed in, the count is the number of peers with a live
        connection.
        """
        clock = Clock()
        registry = Registry("m", clock, max_peers=8, fresh_for=30.0)
        open_connections: dict[str, list[FakeConnection]] = {}
        for action, peer, outbound in steps:
            clock.advance(1)
            if action == "add":
                direction = Direction.OUTBOUND if outbound else Direction.INBOUND
                connection = FakeConnection(peer, direction, clock.seconds())
                open_connections.setdefault(peer, []).append(connection)
                registry.add(connection)
            elif open_connections.get(peer):
                registry.remove(open_connections[peer].pop(0), "gone")
            self.assertEqual(registry.connected_count(), sum(1 for _ in registry.live()))
        for connections in open_connections.values():
            for connection in connections:
                registry.remove(connection, "gone")
        self.assertEqual(registry.connected_count(), 0)
