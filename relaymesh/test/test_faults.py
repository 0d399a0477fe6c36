"""
Fault-injection tests on real sockets on 127.0.0.1: nodes with an outbox,
joined through a L{FaultProxy} that breaks their link, and nodes restarted
on the same data directory. Each scenario asserts that no reliable message
is lost or delivered twice, and measures how long recovery took (printed
when C{RELAYMESH_FAULT_REPORT=1}).

Every node, proxy and port a test opens is closed by its cleanups; every
wait is bounded.
"""

from __future__ import annotations

import collections
import os
import sys

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from relaymesh.keystore import KeyStore
from relaymesh.mesh import UnknownPeer
from relaymesh.service import RelayService
from relaymesh.test.faultproxy import FaultProxy
from relaymesh.test.realtime import free_port, wait_for

#: The environment variable that makes the tests print their figures.
REPORT_VARIABLE = "RELAYMESH_FAULT_REPORT"

#: Seconds before a dropped connector dials again, instead of 5: the
#: recovery figures then measure detection and resending, not the backoff.
TEST_RETRY_DELAY = 0.2

#: Seconds an unacknowledged reliable message waits before it is sent
#: again, instead of 30: a copy lost with a node on its route is sent again
#: within the test's bounds.
TEST_RESEND_AFTER = 1.0

#: Seconds between heartbeats in these tests.
TEST_HEARTBEAT = 0.2

#: Reliable messages each stream sends.
STREAM = 200


def report(name: str, **figures: float) -> None:
    """
    Print a scenario's figures when C{RELAYMESH_FAULT_REPORT=1}.
    """
    if os.environ.get(REPORT_VARIABLE) == "1":
        text = ", ".join(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}"
                         for key, value in figures.items())
        sys.stdout.write(f"\nfault {name}: {text}\n")


class FaultTestCase(TestCase):
    """
    Nodes with an outbox on loopback, and the helpers the scenarios share.
    """

    timeout = 30

    def setUp(self):
        self.keys: dict[str, KeyStore] = {}
        self.received: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def keystore(self, identity: str) -> KeyStore:
        """
        The data directory of C{identity}, the same one across restarts.
        """
        if identity not in self.keys:
            keystore = self.keys[identity] = KeyStore(self.mktemp())
            keystore.set_identity(identity)
        return self.keys[identity]

    def pair(self, a: str, b: str) -> None:
        key = os.urandom(32)
        self.keystore(a).set_key(b, key)
        self.keystore(b).set_key(a, key)

    @defer.inlineCallbacks
    def start(self, identity: str, listen: str | None = None, peers=(), **kwargs):
        """
        Start a node with an outbox; count what its application receives.
        """
        node = RelayService(
            self.keystore(identity),
            listen=listen,
            peers=peers,
            reactor=reactor,
            heartbeat_interval=kwargs.pop("heartbeat_interval", TEST_HEARTBEAT),
            resend_after=TEST_RESEND_AFTER,
            outbox=True,
            **kwargs,
        )
        for outbound in node.outbound():
            outbound.factory.initialDelay = TEST_RETRY_DELAY
        counter = self.received[identity]
        node.mesh.subscribe(lambda peer, m: counter.update([m.id]), "delegate_task")
        node.startService()
        self.addCleanup(self.stop, node)
        yield node.whenStarted()
        return node

    def stop(self, node: RelayService) -> defer.Deferred:
        return node.stopService() if node.running else defer.succeed(None)

    def proxy(self, port: int) -> FaultProxy:
        proxy = FaultProxy(reactor, "127.0.0.1", port)
        self.addCleanup(proxy.stop)
        return proxy

    def stop_after(
        self, receiver: RelayService, count: int, victim: RelayService, also=None
    ) -> defer.Deferred:
        """
        Stop C{victim} (after calling C{also()}, if given) as soon as
        C{receiver}'s application has had C{count} delegate_task messages.

        @return: a Deferred firing with the time the stop began, once the
            victim has stopped.
        """
        stopping: list[defer.Deferred] = []
        began: list[float] = []

        def check(peer, message):
            if len(self.received[receiver.mesh.identity]) == count and not stopping:
                began.append(reactor.seconds())
                if also is not None:
                    also()
                stopping.append(victim.stopService())

        receiver.mesh.subscribe(check, "delegate_task")
        d = wait_for(lambda: bool(stopping), 10)
        d.addCallback(lambda _: stopping[0])
        return d.addCallback(lambda _: began[0])

    def assert_exactly_once(self, identity: str, ids: list[str]) -> None:
        counts = self.received[identity]
        self.assertEqual(sorted(counts), sorted(ids), "messages lost or unexpected")
        self.assertEqual({n for n in counts.values()}, {1}, "messages delivered twice")


class LinkCutTests(FaultTestCase):
    @defer.inlineCallbacks
    def test_cut_mid_stream(self):
        """
        The link is cut (FIN both ways) when the receiver has 50 of 200
        reliable messages; the sender reconnects and sends the rest again;
        every message arrives exactly once and the outbox empties.
        """
        port = free_port()
        self.pair("alpha", "beta")
        alpha = yield self.start("alpha", listen=f"tcp:{port}:interface=127.0.0.1")
        proxy = self.proxy(port)
        beta = yield self.start("beta", peers=[f"alpha@127.0.0.1:{proxy.port}"])
        yield wait_for(lambda: beta.mesh.is_connected("alpha"), 10)

        cut_at: list[float] = []

        def cut_mid_stream(peer, message):
            if len(self.received["alpha"]) == STREAM // 4 and not cut_at:
                cut_at.append(reactor.seconds())
                proxy.cut()

        alpha.mesh.subscribe(cut_mid_stream, "delegate_task")
        deliveries = [
            beta.mesh.send_reliable("alpha", "delegate_task", {"n": n}) for n in range(STREAM)
        ]
        yield defer.gatherResults([d.delivered() for d in deliveries])
        recovered = reactor.seconds() - cut_at[0]
        self.assert_exactly_once("alpha", [d.msg_id for d in deliveries])
        self.assertEqual(beta.mesh.reliable.pending(), [])
        report("cut mid-stream", messages=STREAM, recovery_s=recovered)


class RestartTests(FaultTestCase):
    @defer.inlineCallbacks
    def test_receiver_restarted(self):
        """
        The link is reset and the receiver stopped when it has 50 of 200
        messages, so acknowledgements are lost; it starts again on the same
        data directory. The sender sends every unacknowledged message
        again, and the receiver's delivered-id record, read from disk, keeps
        what it had already delivered from being delivered again.
        """
        port = free_port()
        self.pair("alpha", "beta")
        listen = f"tcp:{port}:interface=127.0.0.1"
        alpha = yield self.start("alpha", listen=listen)
        proxy = self.proxy(port)
        beta = yield self.start("beta", peers=[f"alpha@127.0.0.1:{proxy.port}"])
        yield wait_for(lambda: beta.mesh.is_connected("alpha"), 10)

        crashed = self.stop_after(alpha, STREAM // 4, alpha, also=proxy.reset)
        deliveries = [
            beta.mesh.send_reliable("alpha", "delegate_task", {"n": n}) for n in range(STREAM)
        ]
        yield crashed
        stopped_at = reactor.seconds()
        delivered_before = len(self.received["alpha"])
        unacknowledged = len(beta.mesh.reliable.pending())
        self.assertGreater(unacknowledged, 0)
        yield self.start("alpha", listen=listen)
        yield defer.gatherResults([d.delivered() for d in deliveries])
        recovered = reactor.seconds() - stopped_at
        self.assert_exactly_once("alpha", [d.msg_id for d in deliveries])
        report(
            "receiver restart",
            messages=STREAM,
            delivered_before_restart=delivered_before,
            resent_after_restart=unacknowledged,
            recovery_s=recovered,
        )


class HalfOpenTests(FaultTestCase):
    @defer.inlineCallbacks
    def test_blackhole_detected_by_heartbeat_timeout(self):
        """
        The link goes silent with both sockets open (every byte dropped);
        both nodes notice within three heartbeat intervals and drop it, the
        sender reconnects once the link is back, and every message sent into
        the silence is delivered exactly once.
        """
        port = free_port()
        self.pair("alpha", "beta")
        alpha = yield self.start("alpha", listen=f"tcp:{port}:interface=127.0.0.1")
        proxy = self.proxy(port)
        beta = yield self.start("beta", peers=[f"alpha@127.0.0.1:{proxy.port}"])
        yield wait_for(lambda: beta.mesh.is_connected("alpha"), 10)

        proxy.blackhole(drop=True)
        started = reactor.seconds()
        deliveries = [
            beta.mesh.send_reliable("alpha", "delegate_task", {"n": n}) for n in range(STREAM)
        ]
        yield wait_for(
            lambda: not beta.mesh.is_connected("alpha") and not alpha.mesh.is_connected("beta"), 10
        )
        detected = reactor.seconds() - started
        self.assertLess(detected, 4 * TEST_HEARTBEAT * 3)
        proxy.restore()
        yield defer.gatherResults([d.delivered() for d in deliveries])
        recovered = reactor.seconds() - started
        self.assert_exactly_once("alpha", [d.msg_id for d in deliveries])
        report("half-open link", messages=STREAM, detection_s=detected, recovery_s=recovered)


class OutboxRestartTests(FaultTestCase):
    @defer.inlineCallbacks
    def test_sender_restarted_with_full_outbox(self):
        """
        The sender accepts 200 messages while its peer is down and stops at
        once; stopping writes the outbox to disk. Started again on the same
        data directory, it sends them all when the peer is back, and each
        is delivered exactly once.
        """
        port = free_port()
        self.pair("alpha", "beta")
        listen = f"tcp:{port}:interface=127.0.0.1"
        peers = [f"alpha@127.0.0.1:{port}"]
        alpha = yield self.start("alpha", listen=listen)
        beta = yield self.start("beta", peers=peers)
        yield wait_for(lambda: beta.mesh.is_connected("alpha"), 10)
        yield alpha.stopService()
        yield wait_for(lambda: not beta.mesh.is_connected("alpha"), 10)

        deliveries = [
            beta.mesh.send_reliable("alpha", "delegate_task", {"n": n}) for n in range(STREAM)
        ]
        accepted = defer.gatherResults([d.accepted() for d in deliveries])
        yield beta.stopService()
        ids = yield accepted
        self.assertEqual(len(ids), STREAM)

        beta = yield self.start("beta", peers=peers)
        self.assertEqual(len(beta.mesh.reliable.pending()), STREAM)
        restarted = reactor.seconds()
        yield self.start("alpha", listen=listen)
        yield wait_for(lambda: not beta.mesh.reliable.pending(), 10)
        recovered = reactor.seconds() - restarted
        yield wait_for(lambda: len(self.received["alpha"]) == STREAM, 5)
        self.assert_exactly_once("alpha", ids)
        report("sender restart with full outbox", messages=STREAM, recovery_s=recovered)


class LineTests(FaultTestCase):
    """
    Five routing nodes in a line, n1 — n2 — n3 — n4 — n5, each dialling the
    one before it.
    """

    NAMES = ["n1", "n2", "n3", "n4", "n5"]

    @defer.inlineCallbacks
    def start_line(self):
        nodes, ports = {}, {}
        for before, name in zip([None] + self.NAMES, self.NAMES):
            if before is not None:
                self.pair(before, name)
        self.pair("n1", "n5")  # the ends of the stream: routed messages are sealed end to end
        for before, name in zip([None] + self.NAMES, self.NAMES):
            ports[name] = free_port()
            peers = [] if before is None else [f"{before}@127.0.0.1:{ports[before]}"]
            nodes[name] = yield self.start(
                name, listen=f"tcp:{ports[name]}:interface=127.0.0.1", peers=peers, routing=True
            )
        return nodes, ports

    @defer.inlineCallbacks
    def test_middle_node_killed(self):
        """
        n1 streams 50 reliable messages to n5 across the line; n3 stops when
        n5 has 10 of them, so acks (and possibly messages) on their way
        through it are lost. The routes across n3 are withdrawn on both
        sides; a message across it is refused at its origin; reliable
        messages that can still be delivered (n1 to n2, n5 to n4) are,
        exactly once. When n3 comes back the routes return, n1 sends what
        was not acknowledged again, and n5 has every message of the stream
        exactly once.
        """
        nodes, ports = yield self.start_line()
        n1, n5 = nodes["n1"].mesh, nodes["n5"].mesh
        yield wait_for(lambda: n1.router.route("n5") is not None, 10)
        self.assertEqual(n1.peer("n5").hops, 4)

        stopped = self.stop_after(nodes["n5"], 10, nodes["n3"])
        across = [n1.send_reliable("n5", "delegate_task", {"n": n}) for n in range(STREAM // 4)]
        killed = yield stopped
        yield wait_for(
            lambda: n1.router.route("n5") is None
            and n1.router.route("n4") is None
            and n5.router.route("n1") is None
            and n5.router.route("n2") is None,
            10,
        )
        withdrawn = reactor.seconds() - killed
        self.assertRaises(UnknownPeer, n1.send, "n5", "delegate_task", {})
        self.assertRaises(UnknownPeer, n1.send_reliable, "n4", "delegate_task", {})  # not paired
        left = [n1.send_reliable("n2", "delegate_task", {"n": n}) for n in range(STREAM // 4)]
        right = [n5.send_reliable("n4", "delegate_task", {"n": n}) for n in range(STREAM // 4)]
        yield defer.gatherResults([d.delivered() for d in left + right])
        self.assert_exactly_once("n2", [d.msg_id for d in left])
        self.assert_exactly_once("n4", [d.msg_id for d in right])
        unacknowledged = len(n1.reliable.pending())

        revived = reactor.seconds()
        yield self.start(
            "n3",
            listen=f"tcp:{ports['n3']}:interface=127.0.0.1",
            peers=[f"n2@127.0.0.1:{ports['n2']}"],
            routing=True,
        )
        yield wait_for(lambda: n1.router.route("n5") is not None, 10)
        restored = reactor.seconds() - revived
        yield defer.gatherResults([d.delivered() for d in across])
        completed = reactor.seconds() - revived
        self.assert_exactly_once("n5", [d.msg_id for d in across])
        report(
            "5-node line, middle node killed",
            routes_withdrawn_s=withdrawn,
            routes_restored_s=restored,
            stream_completed_s=completed,
            across_unacknowledged_at_kill=unacknowledged,
            reliable_messages=len(across) + len(left) + len(right),
        )


def via(mesh, destination: str) -> str | None:
    """
    The next hop of C{mesh}'s route to C{destination}, or L{None}.
    """
    route = mesh.router.route(destination)
    return None if route is None else route.via


class RingTests(FaultTestCase):
    """
    Five routing nodes in a ring, n1 — n2 — n3 — n4 — n5 — n1, each dialling
    the one before it and n1 dialling n5.
    """

    NAMES = ["n1", "n2", "n3", "n4", "n5"]

    @defer.inlineCallbacks
    def start_ring(self):
        nodes, ports = {}, {name: free_port() for name in self.NAMES}
        links = list(zip(self.NAMES, self.NAMES[1:])) + [(self.NAMES[-1], self.NAMES[0])]
        for before, after in links:
            self.pair(before, after)
        self.pair("n2", "n4")  # the ends of the stream: routed messages are sealed end to end
        dials = {after: before for before, after in links}
        for name in self.NAMES:
            nodes[name] = yield self.start(
                name,
                listen=f"tcp:{ports[name]}:interface=127.0.0.1",
                peers=[f"{dials[name]}@127.0.0.1:{ports[dials[name]]}"],
                routing=True,
            )
        return nodes

    @defer.inlineCallbacks
    def test_middle_node_killed(self):
        """
        n2 streams 50 reliable messages to n4 through n3 (two hops; the other
        way round, through n1 and n5, is three). n3 stops when n4 has 10 of
        them, so messages and acks on their way through it are lost. n2's
        route to n4 turns to the other way round; what was not acknowledged
        is sent again that way, and 50 more messages sent once the route has
        turned go that way too: n4 has every message exactly once, and
        n2's outbox ends empty.
        """
        nodes = yield self.start_ring()
        n2, n4 = nodes["n2"].mesh, nodes["n4"].mesh
        yield wait_for(lambda: via(n2, "n4") == "n3", 10, what="n2's route to n4 through n3")
        self.assertEqual(n2.router.route("n4").hops, 2)

        stopped = self.stop_after(nodes["n4"], 10, nodes["n3"])
        before = [n2.send_reliable("n4", "delegate_task", {"n": n}) for n in range(STREAM // 4)]
        killed = yield stopped
        delivered_at_kill = len(self.received["n4"])
        unacknowledged = len(n2.reliable.pending())
        yield wait_for(
            lambda: via(n2, "n4") == "n1" and via(n4, "n2") == "n5",
            10,
            what="the routes between n2 and n4 the other way round",
        )
        rerouted = reactor.seconds() - killed
        self.assertEqual(n2.router.route("n4").hops, 3)
        self.assertEqual(n4.router.route("n2").hops, 3)
        after = [n2.send_reliable("n4", "delegate_task", {"n": n}) for n in range(STREAM // 4)]
        yield defer.gatherResults([d.delivered() for d in before + after])
        completed = reactor.seconds() - killed
        self.assert_exactly_once("n4", [d.msg_id for d in before + after])
        self.assertEqual(n2.reliable.pending(), [])
        report(
            "5-node ring, middle node killed",
            rerouted_s=rerouted,
            stream_completed_s=completed,
            delivered_at_kill=delivered_at_kill,
            unacknowledged_at_kill=unacknowledged,
            reliable_messages=len(before) + len(after),
        )
