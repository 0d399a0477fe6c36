"""
Hostile input on real sockets: a flood of bogus connections and handshakes
from one address while a paired peer from another address connects, and an
endless line. Bounded in time; every socket is closed at the end.

Set C{RELAYMESH_FLOOD_REPORT=1} to print the figures that docs/security.rst
reports.
"""

from __future__ import annotations

import os
import resource
import sys

from twisted.internet import defer, protocol, reactor
from twisted.internet.interfaces import IAddress, IConnector, ITransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from relaymesh.address import PeerAddress
from relaymesh.dialer import RelayClientFactory
from relaymesh.keystore import KeyStore
from relaymesh.mesh import Mesh
from relaymesh.service import RelayService
from relaymesh.test.realtime import sleep, wait_for
from relaymesh.tls import NodeCertificate

REPORT = os.environ.get("RELAYMESH_FLOOD_REPORT") == "1"

#: Bogus connections in the flood, and at most this many open at once.
FLOOD_CONNECTIONS = 300
FLOOD_PARALLEL = 40


def rss_bytes() -> int:
    """
    This process's resident memory now (Linux), else its peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class Bogus(protocol.Protocol):
    """
    One hostile client: silent, garbage, or a handshake with a wrong proof.
    """

    #: Used only connected, over TCP.
    transport: ITransport

    def __init__(self, kind: str, done: defer.Deferred, stats: dict) -> None:
        self.kind = kind
        self.done = done
        self.stats = stats
        self.got = b""

    def connectionMade(self) -> None:
        self.stats["connected"] += 1
        if self.kind == "silent":
            # Hold a handshake slot for a while, then go without a word.
            self.timer = reactor.callLater(0.5, self.transport.loseConnection)
        if self.kind == "garbage":
            self.transport.write(b"\x00\xff not json at all\n")
        elif self.kind == "endless":
            self.transport.write(b"[" * 65536)

    def dataReceived(self, data: bytes) -> None:
        self.got += data
        if self.kind == "wrong-proof" and b"\n" in self.got and b"challenge" in self.got:
            self.transport.write(
                b'{"id":"x","msg_type":"handshake","from_peer":"mallory","timestamp":1,'
                b'"payload":{"proof":"' + b"0" * 64 + b'","version":"x"}}\n'
            )
            self.got = b""

    def connectionLost(self, reason=None) -> None:
        timer = getattr(self, "timer", None)
        if timer is not None and timer.active():
            timer.cancel()
        if not self.got and self.kind != "wrong-proof":
            self.stats["closed_silently"] += 1
        self.done.callback(None)


class BogusFactory(protocol.ClientFactory):
    """
    Dials one L{Bogus} client; fires its C{done} if the dial fails.
    """

    def __init__(self, kind: str, done: defer.Deferred, stats: dict) -> None:
        self.kind = kind
        self.done = done
        self.stats = stats

    def buildProtocol(self, addr: IAddress | None) -> Bogus:
        return Bogus(self.kind, self.done, self.stats)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self.done.callback(None)


class FloodTests(TestCase):
    timeout = 120

    def setUp(self):
        if not sys.platform.startswith("linux"):
            raise SkipTest("needs several loopback addresses (127.0.0.2)")

    @defer.inlineCallbacks
    def test_flood_from_one_address(self):
        """
        While one address floods the node with silent connections, garbage
        and wrong proofs, a paired peer from another address connects and
        its messages flow; the flooding address ends up refused at once.
        """
        keystore = KeyStore(self.mktemp())
        keystore.set_identity("alpha")
        key = os.urandom(32)
        keystore.set_key("beta", key)
        alpha = RelayService(keystore, listen="tcp:0:interface=127.0.0.1", reactor=reactor)
        alpha.startService()
        self.addCleanup(alpha.stopService)
        port = alpha.listener.port.getHost().port
        received = []
        alpha.mesh.subscribe(lambda peer, m: received.append(peer), "task_status")

        stats = {"connected": 0, "closed_silently": 0, "max_handshaking": 0}
        kinds = ["silent", "garbage", "wrong-proof"]
        finished = []
        open_connections = []

        def watch():
            stats["max_handshaking"] = max(
                stats["max_handshaking"], len(alpha.server_factory.handshaking())
            )

        from twisted.internet.task import LoopingCall

        watcher = LoopingCall(watch)
        watcher.start(0.01)
        self.addCleanup(lambda: watcher.running and watcher.stop())

        def launch(i: int) -> defer.Deferred:
            done: defer.Deferred = defer.Deferred()
            factory = BogusFactory(kinds[i % 3], done, stats)
            connector = reactor.connectTCP("127.0.0.1", port, factory, timeout=5)
            open_connections.append(connector)
            return done

        flood_started = reactor.seconds()

        @defer.inlineCallbacks
        def flood():
            pending: list[defer.Deferred] = []
            for i in range(FLOOD_CONNECTIONS):
                pending.append(launch(i))
                if len(pending) >= FLOOD_PARALLEL:
                    yield defer.DeferredList(pending[:FLOOD_PARALLEL // 2])
                    pending = pending[FLOOD_PARALLEL // 2 :]
            yield defer.DeferredList(pending)
            finished.append(reactor.seconds() - flood_started)

        flooding = flood()

        # The real peer, from 127.0.0.2, while the flood goes on.
        beta_keys = KeyStore(self.mktemp())
        beta_keys.set_identity("beta")
        beta_keys.set_key("alpha", key)
        beta_mesh = Mesh("beta", reactor)
        factory = RelayClientFactory(
            beta_mesh,
            beta_keys,
            PeerAddress("alpha", "127.0.0.1", port),
            reactor,
            certificate=NodeCertificate.generate("beta"),
        )
        connector = reactor.connectTCP("127.0.0.1", port, factory, timeout=5, bindAddress=("127.0.0.2", 0))
        self.addCleanup(factory.stopTrying)
        self.addCleanup(connector.disconnect)
        started = reactor.seconds()
        yield wait_for(lambda: beta_mesh.is_connected("alpha"), 60)
        connect_time = reactor.seconds() - started
        for n in range(100):
            beta_mesh.send("alpha", "task_status", {"n": n})
        yield wait_for(lambda: len(received) == 100, 10)
        yield flooding
        for c in open_connections:
            c.disconnect()

        self.assertTrue(alpha.server_factory.failures.refused("127.0.0.1"))
        self.assertFalse(alpha.server_factory.failures.refused("127.0.0.2"))
        self.assertLessEqual(stats["max_handshaking"], 16)
        self.assertEqual(received, ["beta"] * 100)
        if REPORT:
            print(
                f"\nflood: {FLOOD_CONNECTIONS} bogus connections ({FLOOD_PARALLEL} at a time) "
                f"in {finished[0]:.2f} s; {stats['closed_silently']} closed without a byte; "
                f"at most {stats['max_handshaking']} handshakes in progress; "
                f"paired peer from 127.0.0.2 connected after {connect_time * 1000:.0f} ms, "
                f"100/100 messages delivered"
            )

    @defer.inlineCallbacks
    def test_endless_line_memory(self):
        """
        A peer that sends 64 MiB without a newline is cut off after 1 MiB;
        resident memory grows by far less than what it sent.
        """
        keystore = KeyStore(self.mktemp())
        keystore.set_identity("alpha")
        alpha = RelayService(keystore, listen="tcp:0:interface=127.0.0.1", reactor=reactor)
        alpha.startService()
        self.addCleanup(alpha.stopService)
        port = alpha.listener.port.getHost().port
        before = rss_bytes()
        sent = {"bytes": 0}
        closed: defer.Deferred = defer.Deferred()

        class Endless(protocol.Protocol):
            chunk = b"x" * 65536

            def connectionMade(self):
                self.transport.registerProducer(self, True)
                self.resumeProducing()

            def resumeProducing(self):
                self.paused = False
                while not self.paused and sent["bytes"] < 64 * 1024 * 1024 and self.transport.connected:
                    self.transport.write(self.chunk)
                    sent["bytes"] += len(self.chunk)

            def pauseProducing(self):
                self.paused = True

            def stopProducing(self):
                self.paused = True

            def connectionLost(self, reason=None):
                closed.callback(None)

        yield protocol.ClientCreator(reactor, Endless).connectTCP("127.0.0.1", port)
        yield closed
        growth = rss_bytes() - before
        self.assertLess(growth, 32 * 1024 * 1024)
        if REPORT:
            print(
                f"\nendless line: connection closed after the peer had written "
                f"{sent['bytes'] / 1048576:.1f} MiB; resident memory grew by {growth / 1048576:.1f} MiB"
            )

    @defer.inlineCallbacks
    def test_peer_that_stops_reading(self):
        """
        An authenticated peer that stops reading is dropped once 16 MiB wait
        for it, instead of the node buffering without bound; others carry on.
        """
        import hashlib
        import hmac
        import json

        keystore = KeyStore(self.mktemp())
        keystore.set_identity("alpha")
        key = os.urandom(32)
        keystore.set_key("sloth", key)
        keystore.update_meta("sloth", legacy=True)  # a claudectl-style peer
        alpha = RelayService(keystore, listen="tcp:0:interface=127.0.0.1", reactor=reactor)
        events = []
        alpha.mesh.watch_peers(events.append)
        alpha.startService()
        self.addCleanup(alpha.stopService)
        port = alpha.listener.port.getHost().port

        class Sloth(protocol.Protocol):
            buffer = b""

            def dataReceived(self, data):
                self.buffer += data
                if b"\n" in self.buffer:
                    challenge = json.loads(self.buffer.split(b"\n")[0])
                    nonce = challenge["payload"]["nonce"]
                    proof = hmac.new(key, nonce.encode(), hashlib.sha256).hexdigest()
                    self.transport.write(
                        b'{"id":"h","msg_type":"handshake","from_peer":"sloth","timestamp":1,"payload":{"proof":"%s"}}\n'
                        % proof.encode()
                    )
                    self.transport.pauseProducing()  # and never read again
                    self.buffer = b""

        client = yield protocol.ClientCreator(reactor, Sloth).connectTCP("127.0.0.1", port)
        self.addCleanup(client.transport.loseConnection)
        yield wait_for(lambda: alpha.mesh.is_connected("sloth"), 10)
        before = rss_bytes()
        blob = "x" * (512 * 1024)
        sent = 0
        while alpha.mesh.is_connected("sloth") and sent < 256 * 1024 * 1024:
            alpha.mesh.send("sloth", "task_status", {"blob": blob})
            sent += len(blob)
            if sent % (8 * 1024 * 1024) == 0:
                yield sleep(0.01)
        growth = rss_bytes() - before
        self.assertFalse(alpha.mesh.is_connected("sloth"))
        [dropped] = [e for e in events if e.kind == "disconnected"]
        self.assertIn("peer is not reading", dropped.reason)
        self.assertLess(growth, 96 * 1024 * 1024)
        if REPORT:
            print(
                f"\nstopped reading: dropped after the node had queued {sent / 1048576:.0f} MiB "
                f"for it; resident memory grew by {growth / 1048576:.1f} MiB"
            )

