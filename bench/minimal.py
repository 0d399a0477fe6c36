"""
The minimal-Twisted baselines: the least a Twisted program can do for each
benchmark, and so the ceiling for relaymesh on this stack.

Every line is decoded with orjson, whatever codec relaymesh uses (C{--codec
json} picks the standard library's): the baseline is a receiver that fully
decodes every message with a fast C codec. Nothing is validated,
deduplicated or authenticated except where the role says so. Roles mirror
C{node.py}:

  - C{sink}: a C{LineOnlyReceiver} that decodes each line and counts it;
  - C{source}: builds each message as a dict, encodes it and writes it,
    pausing while the transport's buffer is full;
  - C{echo} / C{prober}: decode each line; answer or time C{delegate_task}
    (with C{--tls}, C{echo} also listens in clear, on C{plain_port}, for
    the load);
  - C{broadcast}: encode each message once and write it to every peer;
  - C{hold}: accept connections and decode their lines (memory);
  - C{hmac}: the relay handshake (challenge, HMAC-SHA256 proof, ack) with
    keys in memory, then nothing;
  - C{middle}: dial a sink, accept a source, decode each line from the
    source and write it to the sink.

C{--tls} (C{sink}, C{source}, C{hmac}, C{middle}, C{echo}, C{prober}): the
TLS baseline, the
same programs with TLS on every connection. Each side starts TLS on its TCP
connection as it connects (Twisted's C{startTLS}, as relaymesh does in
band) with a certificate of the kind a relaymesh node has and the same TLS
settings (L{relaymesh.tls.NodeCertificate}, used to make the certificate
and its context only); a TLS client starts sending once the TLS handshake
is done. Writes stay one per message: Twisted's TLS layer joins small
writes (up to 64,000 bytes, or until the reactor's next turn) before
encrypting them, as its TCP transport joins them before sending. The TLS
C{hmac} acceptor speaks relaymesh's handshake over TLS: it
names itself and offers the upgrade, upgrades, and checks the labelled
proof bound to both certificates (docs/protocol.rst).
"""

from __future__ import annotations

import argparse
import hmac
import os
import time

import benchlib
from benchlib import (
    ACCEPTOR_LABEL,
    CAP_MUTUAL_AUTH,
    CAP_STARTTLS,
    CONNECTOR_LABEL,
    DATA_TYPE,
    EPOCH_MS,
    KEY,
    PROBE_TYPE,
    Stopwatch,
    report,
)
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import ClientFactory, Factory
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import implementer

CODEC_NAME = None
loads = dumps = None

#: This process's certificate with C{--tls} (a L{relaymesh.tls.NodeCertificate}).
CERTIFICATE = None


class Lines(LineOnlyReceiver):
    """
    A line receiver with the relay protocol's framing.
    """

    delimiter = b"\n"
    MAX_LENGTH = 1024 * 1024


@implementer(IPushProducer)
class Writer(Lines):
    """
    A line receiver that knows whether its transport's buffer is full.
    """

    writable = True

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self.waiters: list[Deferred] = []
        self.factory.connected(self)

    def pauseProducing(self) -> None:
        self.writable = False

    def resumeProducing(self) -> None:
        self.writable = True
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            d.callback(None)

    def stopProducing(self) -> None:
        pass

    def whenWritable(self) -> Deferred:
        d = Deferred()
        if self.writable:
            d.callback(None)
        else:
            self.waiters.append(d)
        return d

    def connectionLost(self, reason=None) -> None:
        self.factory.lost(self)


@implementer(IHandshakeListener)
class TLSWriter(Writer):
    """
    A L{Writer} that starts TLS as it connects and is ready once the TLS
    handshake is done.
    """

    def connectionMade(self) -> None:
        self.transport.startTLS(CERTIFICATE.client_options())
        self.transport.registerProducer(self, True)
        self.waiters = []

    def handshakeCompleted(self) -> None:
        self.factory.connected(self)


def message(i: int, msg_type: str, payload, peer_id: str, tag: str) -> bytes:
    """
    One message, built and encoded the plain way.
    """
    return dumps(
        {
            "id": f"msg_{EPOCH_MS}_{i}_{tag}",
            "msg_type": msg_type,
            "from_peer": peer_id,
            "timestamp": int(time.time() * 1000),
            "payload": payload,
        }
    )


def stop_soon() -> None:
    if reactor.running:
        reactor.callLater(0, reactor.stop)


def listen(factory) -> int:
    return reactor.listenTCP(0, factory, backlog=4096, interface="127.0.0.1").getHost().port


# -- roles -------------------------------------------------------------------


def sink(options) -> None:
    watch = Stopwatch()
    expect = options.expect
    seen = [0]

    class Sink(Lines):
        def connectionMade(self) -> None:
            if CERTIFICATE is not None:
                self.transport.startTLS(CERTIFICATE.server_options())

        def lineReceived(self, line: bytes) -> None:
            loads(line)
            seen[0] += 1
            if seen[0] == 1:
                watch.start()
            elif seen[0] == expect:
                watch.stop()
                report("RESULT", codec=CODEC_NAME, **watch.fields(expect - 1))
                stop_soon()

    report("READY", port=listen(Factory.forProtocol(Sink)))


class _Client(ClientFactory):
    protocol = Writer

    def __init__(self, connected, lost) -> None:
        self.connected = connected
        self._lost = lost
        if CERTIFICATE is not None:
            self.protocol = TLSWriter

    def lost(self, protocol) -> None:
        self._lost()

    def clientConnectionFailed(self, connector, reason) -> None:
        self._lost()


def source(options) -> None:
    payload = benchlib.payload_for(options.size)
    tag = os.urandom(8).hex()
    watch = Stopwatch()
    counter = iter(range(options.count))

    def connected(protocol) -> None:
        write = protocol.transport.write

        def send() -> None:
            write(message(next(counter), DATA_TYPE, payload, benchlib.SOURCE_ID, tag) + b"\n")

        watch.start()
        benchlib.pump([protocol], send, options.count, options.batch, lambda: None)

    def lost() -> None:
        watch.stop()
        report("RESULT", **watch.fields(options.count))
        stop_soon()

    reactor.connectTCP("127.0.0.1", options.port, _Client(connected, lost))


def echo(options) -> None:
    class Echo(Lines):
        tls = False

        def connectionMade(self) -> None:
            if self.tls:
                self.transport.startTLS(CERTIFICATE.server_options())

        def lineReceived(self, line: bytes) -> None:
            obj = loads(line)
            if obj["msg_type"] == PROBE_TYPE:
                reply = message(0, "ack", {"ack_id": obj["id"]}, benchlib.SINK_ID, "echo")
                self.transport.write(reply + b"\n")

    class TLSEcho(Echo):
        tls = True

    if CERTIFICATE is None:
        report("READY", port=listen(Factory.forProtocol(Echo)))
    else:
        # the prober over TLS, the load in clear, as relaymesh's load comes
        # from a claudectl-style peer
        report("READY", port=listen(Factory.forProtocol(TLSEcho)), plain_port=listen(Factory.forProtocol(Echo)))


def prober(options) -> None:
    payload = benchlib.payload_for(options.size, PROBE_TYPE)
    rtts: list[float] = []
    total = options.count + options.warmup

    class Prober(Writer):
        def connectionMade(self) -> None:
            if CERTIFICATE is not None:
                # the first probes wait for the TLS handshake: warm-up
                self.transport.startTLS(CERTIFICATE.client_options())
            self.probe()

        def probe(self) -> None:
            self.sent_at = time.perf_counter()
            self.transport.write(
                message(len(rtts), PROBE_TYPE, payload, benchlib.SOURCE_ID, "probe") + b"\n"
            )

        def lineReceived(self, line: bytes) -> None:
            loads(line)
            rtts.append(time.perf_counter() - self.sent_at)
            if len(rtts) < total:
                reactor.callLater(options.gap, self.probe)
            else:
                benchlib.report_round_trips(rtts, options.warmup)
                stop_soon()

    factory = _Client(None, stop_soon)
    factory.protocol = Prober
    reactor.connectTCP("127.0.0.1", options.port, factory)


def broadcast(options) -> None:
    payload = benchlib.payload_for(options.size, peer_id=benchlib.SINK_ID)
    watch = Stopwatch()
    peers: list = []
    counter = iter(range(options.count))

    def finished() -> None:
        watch.stop()
        report("RESULT", **watch.fields(options.count))

    def send() -> None:
        line = message(next(counter), DATA_TYPE, payload, benchlib.SINK_ID, "bcast") + b"\n"
        for protocol in peers:
            protocol.transport.write(line)

    class Peers(Factory):
        protocol = Writer

        def connected(self, protocol) -> None:
            peers.append(protocol)
            if len(peers) == options.peers:
                watch.start()
                benchlib.pump(peers, send, options.count, options.batch, finished)

        def lost(self, protocol) -> None:
            pass

    report("READY", port=listen(Peers()))


def hold(options) -> None:
    class Hold(Lines):
        def lineReceived(self, line: bytes) -> None:
            loads(line)

    report("READY", port=listen(Factory.forProtocol(Hold)))


def hmac_acceptor(options) -> None:
    if CERTIFICATE is not None:
        from OpenSSL import crypto

    class Acceptor(Lines):
        def connectionMade(self) -> None:
            self.nonce = os.urandom(32).hex()
            self.upgraded = False
            payload = {"nonce": self.nonce}
            if CERTIFICATE is not None:
                payload.update(peer=benchlib.SINK_ID, caps=[CAP_MUTUAL_AUTH, CAP_STARTTLS])
            self.transport.write(message(0, "challenge", payload, "", "hs") + b"\n")

        def lineReceived(self, line: bytes) -> None:
            if self.nonce is None:
                return
            obj = loads(line)
            if CERTIFICATE is None:
                expected = benchlib.proof(KEY, self.nonce)
                ok = hmac.compare_digest(expected, obj["payload"]["proof"])
                self.nonce = None
                self.ack({"status": "ok" if ok else "denied"})
            elif not self.upgraded:
                self.upgrade(obj["payload"])
            else:
                self.verify(obj)

        def ack(self, payload: dict) -> None:
            self.transport.write(message(1, "handshake_ack", payload, benchlib.SINK_ID, "hs") + b"\n")

        def upgrade(self, payload: dict) -> None:
            if payload.get("starttls") is not True:
                self.nonce = None
                self.ack({"status": "denied"})
                return
            self.ack({"status": "starttls"})
            self.transport.startTLS(CERTIFICATE.server_options())
            self.upgraded = True
            self.nonce = os.urandom(32).hex()
            challenge = {"nonce": self.nonce, "peer": benchlib.SINK_ID, "caps": [CAP_MUTUAL_AUTH]}
            self.transport.write(message(0, "challenge", challenge, "", "hs") + b"\n")

        def verify(self, obj: dict) -> None:
            peer = crypto.dump_certificate(crypto.FILETYPE_ASN1, self.transport.getPeerCertificate())
            parts = (
                self.nonce,
                obj["payload"]["nonce"],
                obj["from_peer"],
                benchlib.SINK_ID,
                CERTIFICATE.fingerprint,
                benchlib.fingerprint(peer),
            )
            expected = benchlib.labelled_proof(KEY, CONNECTOR_LABEL, *parts)
            ok = hmac.compare_digest(expected, obj["payload"]["proof"])
            self.nonce = None
            answer = {"status": "ok" if ok else "denied"}
            if ok:
                answer.update(proof=benchlib.labelled_proof(KEY, ACCEPTOR_LABEL, *parts), caps=[CAP_MUTUAL_AUTH])
            self.ack(answer)

    report("READY", port=listen(Factory.forProtocol(Acceptor)))


def middle(options) -> None:
    class Forward(Lines):
        def connectionMade(self) -> None:
            if CERTIFICATE is not None:
                self.transport.startTLS(CERTIFICATE.server_options())

        def lineReceived(self, line: bytes) -> None:
            loads(line)
            self.factory.sink.transport.write(line + b"\n")

    def connected(protocol) -> None:
        factory = Factory.forProtocol(Forward)
        factory.sink = protocol
        report("READY", port=listen(factory))

    reactor.connectTCP("127.0.0.1", options.port, _Client(connected, stop_soon))


ROLES = {
    "sink": sink,
    "source": source,
    "echo": echo,
    "prober": prober,
    "broadcast": broadcast,
    "hold": hold,
    "hmac": hmac_acceptor,
    "middle": middle,
}


def main() -> None:
    global CODEC_NAME, loads, dumps, CERTIFICATE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--codec", choices=("orjson", "json"), default=benchlib.BASELINE_CODEC)
    parser.add_argument("--tls", action="store_true", help="TLS on every connection")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--peers", type=int, default=1)
    parser.add_argument("--gap", type=float, default=0.001)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=120.0)
    options = parser.parse_args()
    CODEC_NAME, loads, dumps = benchlib.codec(options.codec)
    if options.tls:
        from relaymesh.tls import NodeCertificate

        CERTIFICATE = NodeCertificate.generate(f"bench-minimal-{options.role}")
    benchlib.raise_fd_limit()
    benchlib.quiet_twisted_logs()

    def expired() -> None:
        report("RESULT", error=f"timed out after {options.timeout:g} s")
        stop_soon()

    reactor.callLater(options.timeout, expired)
    reactor.callWhenRunning(ROLES[options.role], options)
    reactor.run()


if __name__ == "__main__":
    main()
