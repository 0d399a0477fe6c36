"""
relaymesh nodes for the benchmarks, one role per process.

Each node is built from relaymesh's public pieces (L{Mesh},
L{RelayServerFactory}, L{RelayClientFactory}, or a whole L{RelayService}
with a L{KeyStore} in a temporary directory) on the real reactor, listening
on 127.0.0.1. Like a real node, each process has one TLS certificate (made
in memory at start, L{NodeCertificate.generate}), so links between bench
nodes upgrade to TLS in band, relaymesh's default. Roles:

  - C{sink}: accept peers, count the C{task_status} messages delivered to a
    subscriber, report the rate (and the codec relaymesh used) once
    C{--expect} have arrived;
  - C{source}: dial a sink and send C{--count} messages with C{Mesh.send}
    (in batches, pausing while the connection's send buffer is full);
  - C{echo}: accept peers, answer every C{delegate_task} with an C{ack};
  - C{prober}: dial an echo node and time C{--count} round trips;
  - C{broadcast}: accept C{--peers} peers, then C{Mesh.broadcast}
    C{--count} messages;
  - C{hold}: accept peers and do nothing else (memory, handshakes);
    C{--service} builds a whole L{RelayService} on a L{KeyStore}. It lifts
    the listener's budget for parsing lines before authentication
    (L{ParseBudget}, 512 KiB/s by default), which would otherwise cap the
    handshakes at about 2,000 per second: the figure is what the node's
    CPU allows;
  - C{middle}: dial a sink, accept a source, and route between them
    (C{--routing} on the sink and the source too: the source then sends to
    the sink, which is not its peer, through the middle).

Keys: every peer has the bench key; with C{--routing}, the source, the
middle and the sink keep each other's in key files, as paired nodes do.
The keys of C{raw.py}'s load generators, which authenticate as a claudectl
peer does (one-way, in clear), are treated as legacy keys (as C{relaymesh
mark-legacy} would mark them), since a relaymesh node accepts that proof
for no other key.

C{RELAYMESH_BENCH_PROFILE=DIR} in the environment (every role): run the
reactor under cProfile and write C{DIR/<role>.prof} when it stops (for
C{pstats}; the rates measured so are not the figures).

C{--plain} (every role): the claudectl-compatible path between relaymesh
nodes, plain TCP, to measure what TLS costs. An acceptor then answers with
claudectl's challenge, the nonce alone (see L{claudectl_challenge}: a
benchmark-only override of how the acceptor builds its challenge's
payload; a relaymesh node always names itself and offers the upgrade), and
every key is treated as legacy, so connectors prove their key in
claudectl's one-way form and the link stays in clear. Such a process has
no certificate.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import os
import shutil
import tempfile
import time

import benchlib
from benchlib import (
    CLAUDECTL_PEER_PREFIXES,
    DATA_TYPE,
    KEY,
    PROBE_TYPE,
    SINK_ID,
    SOURCE_ID,
    TLS_HAMMER_PREFIX,
    Stopwatch,
    report,
)
from twisted.internet import reactor

from relaymesh import wire
from relaymesh.acceptor import ParseBudget, RelayServerFactory
from relaymesh.address import PeerAddress
from relaymesh.dialer import RelayClientFactory
from relaymesh.handshake.proofs import LEGACY_FIELD
from relaymesh.keystore import KeyStore
from relaymesh.mesh import Mesh
from relaymesh.tls import NodeCertificate

#: Whether this process's links stay plain TCP, proved in claudectl's
#: one-way form (C{--plain}).
PLAIN = False


class BenchKeys(KeyStore):
    """
    A key store in a temporary directory that holds the bench key for
    every peer id, without a key file for each (thousands of bench peers).

    What it records about a peer (L{meta}) says the key is legacy for the
    claudectl-style load generators of C{raw.py}, and with C{--plain} for
    every peer, unless a handshake recorded otherwise.
    """

    def __init__(self, identity: str) -> None:
        KeyStore.__init__(self, os.path.join(temporary_directory(), "relay"))
        self.set_identity(identity)

    def key(self, peer_id):
        stored = KeyStore.key(self, peer_id)
        return KEY if stored is None else stored

    def meta(self, peer_id):
        meta = KeyStore.meta(self, peer_id)
        if LEGACY_FIELD not in meta and (PLAIN or peer_id.startswith(CLAUDECTL_PEER_PREFIXES)):
            meta[LEGACY_FIELD] = True
        return meta


_certificate: list[NodeCertificate] = []


def node_certificate(identity: str) -> NodeCertificate | None:
    """
    This process's certificate, made in memory the first time it is asked
    for (one per process, as a node has one); L{None} with C{--plain}.
    """
    if PLAIN:
        return None
    if not _certificate:
        _certificate.append(NodeCertificate.generate(identity))
    return _certificate[0]


def claudectl_challenge(handshake) -> dict:
    """
    The payload of claudectl's challenge: the nonce alone.

    Benchmark only (C{--plain}): it replaces the acceptor handshake's own
    C{challenge_payload}, which names this node and offers the TLS upgrade,
    so that a relaymesh connector takes the claudectl-compatible one-way
    path in clear, the path the bench compares TLS with.
    """
    return {"nonce": handshake.nonce}


def temporary_directory() -> str:
    """
    A directory that is removed when the process exits.
    """
    path = tempfile.mkdtemp(prefix="relaymesh-bench-")
    atexit.register(shutil.rmtree, path, True)
    return path


MIDDLE_ID = "bench-middle"


def make_mesh(identity: str, routing: bool = False) -> Mesh:
    """
    A mesh for a benchmark node: no heartbeats during a run, no peer limit;
    with C{routing}, a router too.
    """
    mesh = Mesh(identity, reactor, heartbeat_interval=3600.0, max_peers=1_000_000)
    if routing:
        try:
            from relaymesh.routing.router import Router

            keys = BenchKeys(identity)
            for peer_id in (SOURCE_ID, MIDDLE_ID, SINK_ID):
                if peer_id != identity:
                    # in a file, as a paired node keeps it (the router
                    # reads a key file again only when it changed)
                    keys.set_key(peer_id, KEY)
            mesh.enable_routing(Router(mesh, keys=keys))
        except (ImportError, AttributeError) as e:
            report("RESULT", error=f"routing is not available: {e}")
            stop_soon()
        mesh.start()
    return mesh


class Server(RelayServerFactory):
    """
    The acceptor factory, keeping the protocols it built.
    """

    def __init__(self, mesh: Mesh) -> None:
        RelayServerFactory.__init__(
            self, mesh, BenchKeys(mesh.identity), certificate=node_certificate(mesh.identity)
        )
        self.protocols: list = []

    def buildProtocol(self, addr):
        protocol = RelayServerFactory.buildProtocol(self, addr)
        if protocol is not None:
            if PLAIN:
                handshake = protocol.handshake
                handshake.challenge_payload = functools.partial(claudectl_challenge, handshake)
            self.protocols.append(protocol)
        return protocol


def listen(mesh: Mesh) -> tuple[Server, int]:
    """
    Accept peers on a free port of 127.0.0.1.
    """
    factory = Server(mesh)
    port = reactor.listenTCP(0, factory, backlog=4096, interface="127.0.0.1")
    return factory, port.getHost().port


class Dialer(RelayClientFactory):
    """
    Dials one benchmark node once: reports the authenticated protocol, and
    stops when the connection ends.
    """

    def __init__(self, mesh: Mesh, port: int, peer_id: str, connected, lost) -> None:
        RelayClientFactory.__init__(
            self,
            mesh,
            BenchKeys(mesh.identity),
            PeerAddress(peer_id, "127.0.0.1", port),
            reactor,
            certificate=node_certificate(mesh.identity),
        )
        self._connected = connected
        self._lost = lost

    def handshakeSucceeded(self, protocol) -> None:
        RelayClientFactory.handshakeSucceeded(self, protocol)
        # the mesh registers the connection right after this returns
        reactor.callLater(0, self._connected, protocol)

    def clientConnectionLost(self, connector, reason) -> None:
        self.stopTrying()
        self._lost()

    def clientConnectionFailed(self, connector, reason) -> None:
        self.stopTrying()
        self._lost()


def dial(mesh: Mesh, port: int, peer_id: str, connected, lost) -> Dialer:
    factory = Dialer(mesh, port, peer_id, connected, lost)
    reactor.connectTCP("127.0.0.1", port, factory)
    return factory


def stop_soon() -> None:
    if reactor.running:
        reactor.callLater(0, reactor.stop)


def deadline(seconds: float) -> None:
    """
    Give up (and say so) if the run takes longer than C{seconds}.
    """

    def expired() -> None:
        report("RESULT", error=f"timed out after {seconds:g} s")
        stop_soon()

    reactor.callLater(seconds, expired)


# -- roles -------------------------------------------------------------------


def sink(options) -> None:
    """
    Count what a subscriber is given. With C{--plain} the challenge is
    claudectl's, the nonce alone (L{claudectl_challenge}), and the source's
    key is legacy: the link stays in clear.
    """
    mesh = make_mesh(SINK_ID, options.routing)
    watch = Stopwatch()
    expect = options.expect
    seen = [0]

    def count(peer_id, message) -> None:
        seen[0] += 1
        if seen[0] == 1:
            watch.start()
        elif seen[0] == expect:
            watch.stop()
            report("RESULT", codec=wire.CODEC, **watch.fields(expect - 1))
            stop_soon()

    mesh.subscribe(count, DATA_TYPE)
    _, port = listen(mesh)
    report("READY", port=port)


def source(options) -> None:
    mesh = make_mesh(SOURCE_ID, options.routing)
    payload = benchlib.payload_for(options.size)
    watch = Stopwatch()
    send = mesh.send
    peer = MIDDLE_ID if options.routing else SINK_ID

    def connected(protocol, waited: float = 0.0) -> None:
        if options.routing and mesh.router.route(SINK_ID) is None:
            if waited > 10:
                report("RESULT", error="no route to the sink within 10 s")
                stop_soon()
            else:
                reactor.callLater(0.05, connected, protocol, waited + 0.05)
            return
        started.append(True)
        watch.start()
        benchlib.pump(
            [protocol],
            lambda: send(SINK_ID, DATA_TYPE, payload),
            options.count,
            options.batch,
            lambda: None,
            batched=mesh.batch,
        )

    def lost() -> None:
        watch.stop()
        if started:
            report("RESULT", **watch.fields(options.count))
        else:
            report("RESULT", error="the connection ended before the handshake finished")
        stop_soon()

    started: list = []
    dial(mesh, options.port, peer, connected, lost)


def echo(options) -> None:
    mesh = make_mesh(SINK_ID)

    def answer(peer_id, message) -> None:
        mesh.send(peer_id, "ack", {"ack_id": message.id})

    mesh.subscribe(answer, PROBE_TYPE)
    _, port = listen(mesh)
    report("READY", port=port)


def prober(options) -> None:
    mesh = make_mesh(SOURCE_ID)
    payload = benchlib.payload_for(options.size, PROBE_TYPE)
    rtts: list[float] = []
    sent_at = [0.0]
    total = options.count + options.warmup

    def probe() -> None:
        sent_at[0] = time.perf_counter()
        mesh.send(SINK_ID, PROBE_TYPE, payload)

    def acked(peer_id, message) -> None:
        rtts.append(time.perf_counter() - sent_at[0])
        if len(rtts) < total:
            reactor.callLater(options.gap, probe)
        else:
            benchlib.report_round_trips(rtts, options.warmup)
            stop_soon()

    mesh.subscribe(acked, "ack")
    dial(mesh, options.port, SINK_ID, lambda protocol: probe(), stop_soon)


def broadcast(options) -> None:
    mesh = make_mesh(SINK_ID)
    payload = benchlib.payload_for(options.size, peer_id=SINK_ID)
    factory, port = listen(mesh)
    watch = Stopwatch()

    def finished() -> None:
        watch.stop()
        report("RESULT", **watch.fields(options.count))

    def event(peer_event) -> None:
        if peer_event.kind == "connected" and mesh.connected_count() == options.peers:
            watch.start()
            protocols = [p for p in factory.protocols if p.peer_id is not None]
            benchlib.pump(
                protocols,
                lambda: mesh.broadcast(DATA_TYPE, payload),
                options.count,
                options.batch,
                finished,
                batched=mesh.batch,
            )

    mesh.watch_peers(event)
    report("READY", port=port)


def unlimited_budget() -> ParseBudget:
    """
    A parse budget no handshake rate on this machine uses up.
    """
    return ParseBudget(reactor, rate=1e15, burst=1e15)


def hold(options) -> None:
    if options.service:
        from relaymesh.service import RelayService

        keystore = KeyStore(os.path.join(temporary_directory(), "relay"))
        keystore.set_identity(SINK_ID)
        for i in range(options.keys):
            keystore.set_key(f"bench-hs-{i}", KEY)
            keystore.update_meta(f"bench-hs-{i}", **{LEGACY_FIELD: True})  # claudectl-style
            keystore.set_key(f"{TLS_HAMMER_PREFIX}{i}", KEY)
        node = RelayService(
            keystore,
            listen="tcp:0:interface=127.0.0.1",
            heartbeat_interval=3600.0,
            max_peers=1_000_000,
            reactor=reactor,
        )
        node.server_factory.parse_budget = unlimited_budget()
        node.startService()

        def listening(port) -> None:
            report("READY", port=port.getHost().port)

        node.listener.listening.addCallback(listening)
        return
    mesh = make_mesh(SINK_ID)
    factory, port = listen(mesh)
    factory.parse_budget = unlimited_budget()
    for i in range(options.keys):
        # read from their files, as in a real node
        factory.keys.set_key(f"bench-hs-{i}", KEY)
        factory.keys.set_key(f"{TLS_HAMMER_PREFIX}{i}", KEY)
    report("READY", port=port)


def middle(options) -> None:
    mesh = make_mesh(MIDDLE_ID, routing=True)

    def connected(protocol) -> None:
        _, port = listen(mesh)
        report("READY", port=port)

    dial(mesh, options.port, SINK_ID, connected, stop_soon)


ROLES = {
    "sink": sink,
    "source": source,
    "echo": echo,
    "prober": prober,
    "broadcast": broadcast,
    "hold": hold,
    "middle": middle,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--peers", type=int, default=1)
    parser.add_argument("--gap", type=float, default=0.001)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--keys", type=int, default=16)
    parser.add_argument("--service", action="store_true")
    parser.add_argument("--routing", action="store_true")
    parser.add_argument("--plain", action="store_true", help="links in clear, claudectl's handshake")
    parser.add_argument("--timeout", type=float, default=120.0)
    options = parser.parse_args()
    global PLAIN
    PLAIN = options.plain
    benchlib.raise_fd_limit()
    benchlib.quiet_twisted_logs()
    deadline(options.timeout)
    reactor.callWhenRunning(ROLES[options.role], options)
    profile_to = os.environ.get("RELAYMESH_BENCH_PROFILE")
    if profile_to:
        import cProfile

        profiler = cProfile.Profile()
        profiler.runcall(reactor.run)
        profiler.dump_stats(os.path.join(profile_to, f"{options.role}.prof"))
    else:
        reactor.run()


if __name__ == "__main__":
    main()
