"""
Support for tests of joining: an inviting node with a real key store, and
joins to it made with L{join_directly} and carried in memory.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from relaymesh.codes import Invite
from relaymesh.events import EventKind
from relaymesh.invite import InviteForms, arm_invite, make_invite
from relaymesh.join import join_directly
from relaymesh.keystore import KeyStore
from relaymesh.test.support import EPOCH, FakeConnector, Node
from relaymesh.testing import MemoryNetwork

#: Every form of an invite: a name, how to read it from the printed invite
#: (L{InviteForms}), and the --peer a bare code needs.
FORMS = [
    ("strong link", lambda i: i.strong_link, None),
    ("strong code", lambda i: i.strong_code, "alpha@10.0.0.2:9847"),
    ("relaymesh link", lambda i: i.relaymesh_link, None),
    ("cctl:// link", lambda i: i.link, None),
    ("pair code", lambda i: i.pair_code, "alpha@10.0.0.2:9847"),
    ("relay code", lambda i: i.relay_code, None),
    ("word phrase", lambda i: i.words, None),
]

#: The forms that do not name the inviting node: it is known only once it
#: answers.
ANONYMOUS = ("relay code", "word phrase")


class InvitingNode:
    """
    A node C{alpha} whose key store is a real one in a temporary directory,
    accepting joins in memory on a fake clock.

    @ivar reactor: the clock and the (memory) reactor the joins use.
    @ivar store: alpha's key store.
    @ivar node: alpha's mesh and factories.
    """

    def __init__(self, case, identity: str = "alpha") -> None:
        """
        @param case: the test, for its temporary directories.
        @param identity: the node's peer id.
        """
        self.case = case
        self.identity = identity
        self.reactor = MemoryReactorClock()
        self.reactor.advance(EPOCH)
        self.store = KeyStore(case.mktemp())
        self.store.set_identity(identity)
        self.node = Node(identity, self.reactor, keys=self.store)
        self._sources = 0

    def invite(self, host: str = "10.0.0.2", port: int = 9847) -> InviteForms:
        """
        Make an invite in every form and arm it, as C{relaymesh invite} does.
        """
        invite = make_invite(self.identity, host, port, self.reactor.seconds())
        arm_invite(self.store, invite)
        return invite

    def joiner(self, identity: str) -> KeyStore:
        """
        A key store for a joining node.
        """
        store = KeyStore(self.case.mktemp())
        store.set_identity(identity)
        return store

    def join(self, store: KeyStore, invite: Invite, replace: bool = False) -> Deferred:
        """
        Join alpha from C{store}: L{join_directly}'s connection, carried in
        memory from a new address each time (so that alpha's lockout of
        failing addresses never decides a test).

        @return: the join's L{Deferred}; it has fired when this returns,
            unless the join was refused before connecting.
        """
        d = join_directly(store, invite, self.reactor, replace=replace)
        self.carry()
        return d

    def carry(self) -> None:
        """
        Carry the connection a join just asked the reactor for (if it asked
        for one) to alpha, in memory, and run it to its end.
        """
        if not self.reactor.tcpClients:
            return
        host, port, factory, _, _ = self.reactor.tcpClients.pop()
        self._sources += 1
        source = IPv4Address("TCP", f"10.0.1.{self._sources}", 40000)
        server = self.node.server.buildProtocol(source)
        client = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert server is not None and isinstance(client, Protocol)
        network = MemoryNetwork()  # the bytes, and the TLS upgrade
        network.join(server, client, source, IPv4Address("TCP", host, port))
        network.flush()
        factory.clientConnectionLost(FakeConnector(host, port), Failure(ConnectionDone()))

    def denials(self) -> list[str]:
        """
        The reasons alpha gave for the handshakes it denied, in order.
        """
        return [e.reason for e in self.node.events if e.kind == EventKind.DENIED]
