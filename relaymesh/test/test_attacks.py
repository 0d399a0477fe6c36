"""
The handshake and the link attacked as an attacker on the path would: each
attack replayed on an in-memory network, each a regression test.

mallory holds an address alice dials, or sits between alice and bob as a
proxy that records, rewrites and injects bytes. alice and bob are relaymesh
nodes on the default transport (plain TCP, upgraded to TLS in band).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable

from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.test.iosim import FakeTransport
from twisted.trial.unittest import SynchronousTestCase

from relaymesh.connection import HANDSHAKE_MAX_LINE
from relaymesh.events import EventKind, PeerEvent
from relaymesh.handshake.acceptor import AcceptorHandshake
from relaymesh.handshake.base import HandshakeFailed
from relaymesh.handshake.connector import ConnectorHandshake
from relaymesh.handshake.proofs import compute_proof
from relaymesh.service import RelayService
from relaymesh.test.support import line
from relaymesh.testing import MemoryKeys, MemoryNetwork, memory_node
from relaymesh.wire import RelayMessage

SECRET = "the launch codes are 0000"


def message_line(msg_type: str, from_peer: str, payload: object) -> bytes:
    return line(RelayMessage("m1", msg_type, from_peer, 1, payload))


class _Pipe(Protocol):
    """
    One side of mallory's proxy: what arrives goes, recorded and perhaps
    rewritten, to the other side.
    """

    #: Used only connected, to a transport of the memory network.
    transport: FakeTransport

    def __init__(self, proxy: MitmProxy, direction: str) -> None:
        self.proxy = proxy
        self.direction = direction
        self.other: _Pipe | None = None
        self.waiting: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.proxy.recorded[self.direction].append(data)
        data = self.proxy.tamper(self.direction, data)
        if self.other is None:
            self.waiting.append(data)
        else:
            self.other.transport.write(data)

    def connectionLost(self, reason: object = None) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.loseConnection()


class MitmProxy(Factory):
    """
    mallory between alice and bob: accepts alice's connection on its own
    port and dials bob's, relaying bytes both ways. C{recorded} holds what
    went each way (C{"up"}: alice to bob, C{"down"}: bob to alice);
    C{tamper(direction, data)} may rewrite a chunk.
    """

    def __init__(self, network: MemoryNetwork, target_port: int) -> None:
        self.network = network
        self.target_port = target_port
        self.recorded: dict[str, list[bytes]] = {"up": [], "down": []}
        self.tamper: Callable[[str, bytes], bytes] = lambda direction, data: data
        self.port = network.listenTCP(0, self).port
        self.down: list[_Pipe] = []

    def buildProtocol(self, addr: object) -> _Pipe:
        up = _Pipe(self, "up")
        down = _Pipe(self, "down")
        self.down.append(down)
        proxy = self

        class Dial(ClientFactory):
            def buildProtocol(self, addr: object) -> _Pipe:
                return down

            def clientConnectionFailed(self, connector: object, reason: object) -> None:
                up.transport.loseConnection()

        original = down.connectionMade

        def made() -> None:
            original()
            up.other, down.other = down, up
            for chunk in up.waiting:
                down.transport.write(chunk)
            up.waiting = []

        down.connectionMade = made  # type: ignore[method-assign]
        proxy.network.connectTCP("127.0.0.1", self.target_port, Dial())
        return up

    def seen(self, direction: str) -> bytes:
        return b"".join(self.recorded[direction])

    def inject(self, direction: str, data: bytes) -> None:
        """
        Put bytes on the wire towards bob (C{"up"}) or alice (C{"down"}).
        """
        target = self.down[-1] if direction == "up" else self.down[-1].other
        assert target is not None
        target.transport.write(data)


class NetworkTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.network = MemoryNetwork()
        #: What each node (by name) received, and its peer events.
        self.received: dict[str, list[tuple[str, RelayMessage]]] = {}
        self.events: dict[str, list[PeerEvent]] = {}
        self.alice = self.node("alice")
        self.bob = self.node("bob")
        self.key = os.urandom(32)
        self.alice.keystore.set_key("bob", self.key)
        self.bob.keystore.set_key("alice", self.key)

    def node(self, name: str) -> RelayService:
        node = memory_node(self.network, name)
        received = self.received[name] = []
        node.mesh.subscribe(lambda peer, message: received.append((peer, message)))
        node.mesh.watch_peers(self.events.setdefault(name, []).append)
        node.startService()
        self.addCleanup(node.stopService)
        return node

    def port(self, node: RelayService) -> int:
        address = node.listening_address()
        assert address is not None
        return int(address.rsplit(":", 1)[1])

    def denials(self, node: RelayService) -> list[str]:
        return [str(e.reason) for e in self.events[node.mesh.identity] if e.kind == EventKind.DENIED]


class PrivateLinkTests(NetworkTestCase):
    """
    Between two relaymesh nodes on the default transport, whoever is on the
    path reads nothing after the handshake, changes nothing, and cannot make
    them fall back to clear text.
    """

    def dial_through_proxy(self) -> MitmProxy:
        proxy = MitmProxy(self.network, self.port(self.bob))
        self.alice.add_peer(f"bob@127.0.0.1:{proxy.port}")
        self.network.flush()
        return proxy

    def test_recording_proxy_sees_no_payload(self) -> None:
        """
        The link is upgraded to TLS before any proof: a recording proxy sees
        the upgrade, then neither proofs nor payloads.
        """
        proxy = self.dial_through_proxy()
        self.assertTrue(self.alice.mesh.is_connected("bob"))
        self.alice.mesh.send("bob", "delegate_task", {"prompt": SECRET})
        self.bob.mesh.send("alice", "task_status", {"status": SECRET})
        self.network.flush()
        self.assertEqual(self.received["bob"][-1][1].payload, {"prompt": SECRET})
        self.assertEqual(self.received["alice"][-1][1].payload, {"status": SECRET})
        for direction in ("up", "down"):
            seen = proxy.seen(direction)
            self.assertNotIn(SECRET.encode(), seen)
            self.assertNotIn(b'"proof"', seen)
            self.assertIn(b"starttls", seen)  # the upgrade itself is in clear
        self.assertTrue(self.alice.mesh.peer("bob").encrypted)

    def test_injected_line_never_delivered(self) -> None:
        """
        A message the proxy injects after the handshake is not delivered:
        to TLS it is a corrupt record, and the link is dropped.
        """
        proxy = self.dial_through_proxy()
        proxy.inject("up", message_line("delegate_task", "alice", {"prompt": "rm -rf ~"}))
        self.network.flush()
        self.assertEqual([m for _, m in self.received["bob"] if m.msg_type == "delegate_task"], [])
        self.assertFalse(self.bob.mesh.is_connected("alice"))

    def test_stripped_upgrade_refused(self) -> None:
        """
        A proxy that removes the upgrade from bob's challenge gets no proof
        in clear: alice refuses, and says why.
        """
        proxy = MitmProxy(self.network, self.port(self.bob))
        proxy.tamper = lambda direction, data: data.replace(b',"starttls/1"', b"")
        self.alice.add_peer(f"bob@127.0.0.1:{proxy.port}")
        self.network.flush()
        self.assertFalse(self.alice.mesh.is_connected("bob"))
        self.assertNotIn(b'"proof"', proxy.seen("up"))
        [reason, *_] = self.denials(self.alice)
        self.assertIn("offered no TLS upgrade", reason)

    def test_stripped_name_refused(self) -> None:
        """
        A proxy that makes bob's challenge look like claudectl's (no name,
        no capabilities) gets no claudectl-style proof: bob's key is not a
        legacy peer's.
        """
        proxy = MitmProxy(self.network, self.port(self.bob))
        proxy.tamper = lambda direction, data: re.sub(rb',"peer":"bob","caps":\[[^\]]*\]', b"", data)
        self.alice.add_peer(f"bob@127.0.0.1:{proxy.port}")
        self.network.flush()
        self.assertFalse(self.alice.mesh.is_connected("bob"))
        self.assertNotIn(b'"proof"', proxy.seen("up"))
        [reason, *_] = self.denials(self.alice)
        self.assertIn("did not name itself as a relaymesh node", reason)

    def test_clear_bytes_after_upgrade_refused(self) -> None:
        """
        Bytes in clear right behind the upgrade's ack were put there by
        someone else: alice drops the connection rather than read them.
        """
        proxy = MitmProxy(self.network, self.port(self.bob))
        injected = message_line("handshake_ack", "bob", {"status": "ok"})

        def tamper(direction: str, data: bytes) -> bytes:
            if direction == "down" and b'"status":"starttls"' in data:
                return data + injected
            return data

        proxy.tamper = tamper
        self.alice.add_peer(f"bob@127.0.0.1:{proxy.port}")
        self.network.flush()
        self.assertFalse(self.alice.mesh.is_connected("bob"))
        [reason, *_] = self.denials(self.alice)
        self.assertIn("bytes in clear after the TLS upgrade", reason)

    def test_claudectl_peer_marked_plain(self) -> None:
        """
        A claudectl-style peer still connects on the same port, in clear and
        one-way, and is shown as such.
        """
        self.bob.keystore.update_meta("alice", legacy=True)
        connection = LineClient.dial(self.network, self.port(self.bob))
        challenge = json.loads(connection.lines[0])
        proof = compute_proof(self.key, challenge["payload"]["nonce"])
        connection.send(message_line("handshake", "alice", {"proof": proof, "version": "0.49.2"}))
        self.network.flush()
        self.assertEqual(json.loads(connection.lines[1])["payload"], {"status": "ok"})
        status = self.bob.mesh.peer("alice")
        self.assertEqual((status.state, status.encrypted, status.mutual), ("connected", False, False))


class LineClient(Protocol):
    """
    A raw line speaker on the in-memory network: a claudectl peer, or
    mallory.
    """

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.buffer = b""
        self.on_line: Callable[[bytes], None] = lambda line: None

    #: Used only connected, to a transport of the memory network.
    transport: FakeTransport

    @classmethod
    def dial(cls, network: MemoryNetwork, port: int, source: str | None = None) -> LineClient:
        client = cls()
        factory = ClientFactory()
        factory.protocol = lambda: client
        bind = None if source is None else (source, 0)
        network.connectTCP("127.0.0.1", port, factory, bindAddress=bind)
        network.flush()
        return client

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.lines.append(line)
            self.on_line(line)

    def send(self, data: bytes) -> None:
        self.transport.write(data)


class MalloryListener(Factory):
    """
    mallory's own listener, at an address alice dials: it answers alice's
    connection with whatever challenge a test makes.
    """

    def __init__(self, network: MemoryNetwork, challenge: Callable[[], dict]) -> None:
        self.challenge = challenge
        self.connections: list[LineClient] = []
        self.port = network.listenTCP(0, self).port

    def buildProtocol(self, addr: object) -> LineClient:
        connection = LineClient()
        self.connections.append(connection)
        original = connection.connectionMade

        def made() -> None:
            original()
            connection.send(message_line("challenge", "", self.challenge()))

        connection.connectionMade = made  # type: ignore[method-assign]
        return connection


class ReflectionTests(NetworkTestCase):
    """
    mallory, with no key, holds an address alice dials as bob (or bare),
    and tries to have alice prove a key to her own listener.
    """

    def reflect(self, address: str, named: str | None) -> tuple[LineClient, MalloryListener]:
        """
        mallory opens alice's listener, reads her challenge, and sends its
        nonce back to alice's own outgoing connection as mallory's
        challenge (naming C{named}, or as claudectl would, naming nobody).
        """
        into_alice = LineClient.dial(self.network, self.port(self.alice))
        alice_challenge = json.loads(into_alice.lines[0])["payload"]

        def challenge() -> dict:
            payload = {"nonce": alice_challenge["nonce"]}
            if named is not None:
                payload.update(peer=named, caps=["mutual-auth/2", "starttls/1"])
            return payload

        mallory = MalloryListener(self.network, challenge)
        self.alice.add_peer(address.format(port=mallory.port))
        self.network.flush()
        return into_alice, mallory

    def assert_nothing_proved(self, mallory: MalloryListener) -> None:
        [connection] = mallory.connections
        self.assertFalse([line for line in connection.lines if b'"proof"' in line])
        self.assertFalse(self.alice.mesh.is_connected("bob"))
        self.assertEqual(self.received["alice"], [])

    def test_reflected_challenge_naming_bob(self) -> None:
        """
        alice never answers a challenge carrying a nonce she issued.
        """
        _, mallory = self.reflect("bob@127.0.0.1:{port}", named="bob")
        self.assert_nothing_proved(mallory)
        self.assertIn("nonce this node issued itself", self.denials(self.alice)[0])

    def test_reflected_challenge_as_claudectl(self) -> None:
        """
        Not even to a claudectl-style challenge, for a key marked legacy.
        """
        self.alice.keystore.update_meta("bob", legacy=True)
        _, mallory = self.reflect("legacy:bob@127.0.0.1:{port}", named=None)
        self.assert_nothing_proved(mallory)
        self.assertIn("nonce this node issued itself", self.denials(self.alice)[0])

    def test_bare_address_proves_nothing_to_an_unnamed_acceptor(self) -> None:
        """
        A bare address does not make alice prove every key she holds (as
        claudectl's connector does): to an acceptor that does not name
        itself she proves none.
        """
        self.alice.keystore.set_key("carol", os.urandom(32))
        mallory = MalloryListener(self.network, lambda: {"nonce": "ab" * 32})
        self.alice.add_peer(f"127.0.0.1:{mallory.port}")
        self.network.flush()
        self.assert_nothing_proved(mallory)
        self.assertIn("did not name itself as a relaymesh node", self.denials(self.alice)[0])

    def test_one_way_proof_refused_for_relaymesh_key(self) -> None:
        """
        claudectl's unlabelled proof of a key that is not marked legacy does
        not log in, even when it is right.
        """
        connection = LineClient.dial(self.network, self.port(self.alice))
        nonce = json.loads(connection.lines[0])["payload"]["nonce"]
        proof = compute_proof(self.key, nonce)
        connection.send(message_line("handshake", "bob", {"proof": proof, "version": "x"}))
        self.network.flush()
        self.assertEqual(json.loads(connection.lines[1])["payload"], {"status": "denied"})
        self.assertFalse(self.alice.mesh.is_connected("bob"))
        self.assertIn("relaymesh mark-legacy bob", self.denials(self.alice)[0])

    def test_proof_made_for_one_side_serves_no_other(self) -> None:
        """
        Even with the nonce it chose and the same TLS session, the proof
        alice makes as connector to "bob" is no proof that bob is
        connecting to alice: it names who made it for whom.
        """
        nonce = "cd" * 32
        binding = ("sha256:" + "1" * 64, "sha256:" + "2" * 64)
        keys = MemoryKeys({"bob": self.key}, identity="alice")
        acceptor = AcceptorHandshake(keys, randbytes=lambda n: bytes.fromhex(nonce), identity="alice")
        connector = ConnectorHandshake("alice", self.key, "bob")
        answer = connector.answer(
            RelayMessage("c", "challenge", "", 1, {"nonce": nonce, "peer": "bob", "caps": []}),
            binding,
        )
        forged = RelayMessage("h", "handshake", "bob", 1, answer)
        with self.assertRaises(HandshakeFailed) as caught:
            acceptor.verify(forged, binding)
        self.assertIn("wrong proof for the key of bob", str(caught.exception))


class PreAuthenticationTests(NetworkTestCase):
    """
    What a connection that proved nothing may make the node parse.
    """

    def test_long_line_before_authentication(self) -> None:
        """
        A line over the handshake's limit is not parsed: the connection is
        closed.
        """
        connection = LineClient.dial(self.network, self.port(self.alice))
        connection.send(b'{"pad":"' + b"x" * HANDSHAKE_MAX_LINE + b'"}\n')
        self.network.flush()
        self.assertTrue(connection.transport.disconnected)
        self.assertIn(f"line longer than {HANDSHAKE_MAX_LINE} bytes", self.denials(self.alice)[0])

    def test_nested_line_before_authentication(self) -> None:
        """
        Deep nesting within the limit is refused without recursion.
        """
        connection = LineClient.dial(self.network, self.port(self.alice))
        connection.send(b'{"payload":' + b"[" * 4000 + b"]" * 4000 + b"}\n")
        self.network.flush()
        self.assertTrue(connection.transport.disconnected)
        self.assertIn("nested deeper", self.denials(self.alice)[0])

    def test_flood_from_many_addresses_bounded(self) -> None:
        """
        Unauthenticated connections together get a parse budget; beyond it
        new connections are refused before a byte, and it fills again with
        time.
        """
        budget = self.alice.server_factory.parse_budget
        big = b'{"id":"' + b"x" * (HANDSHAKE_MAX_LINE - 100) + b'"}\n'
        refused = 0
        for i in range(400):  # from rotating addresses, so the lockout does not stop it
            source = f"127.1.{i // 250}.{i % 250 + 1}"
            connection = LineClient.dial(self.network, self.port(self.alice), source)
            if not connection.lines:
                refused += 1
                continue
            connection.send(big)
            self.network.flush()
        parsed = [r for r in self.denials(self.alice) if r.startswith("unparseable line")]
        self.assertLessEqual(len(parsed) * len(big), budget.burst)
        self.assertGreater(len(parsed), 0)
        self.assertGreater(refused, 250)
        self.network.advance(budget.burst / budget.rate)
        self.assertTrue(LineClient.dial(self.network, self.port(self.alice), "127.2.0.1").lines)
