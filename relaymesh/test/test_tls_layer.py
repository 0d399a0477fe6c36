"""
Tests for L{relaymesh.tls.RelayTLSProtocol}, the TLS layer of relay
connections (its bulk writes and reads), for the TLS 1.3 floor, and for
where the layer is used: the in-band upgrade, C{tls:} listeners and dials.
"""

from __future__ import annotations

from collections.abc import Generator

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet import ssl as twisted_ssl
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaymesh import connection
from relaymesh.test.realtime import tls_pair, wait_for
from relaymesh.testing.network import MemoryNetwork
from relaymesh.testing.nodes import connect_nodes, memory_node
from relaymesh.tls import (
    RECORD_BYTES,
    NodeCertificate,
    RelayTLSProtocol,
    TLSServerFactory,
    use_relay_tls,
)

#: TLS record content type of application data (RFC 8446, 5.1).
APPLICATION_DATA = 0x17


def records(wire: bytes) -> list[int]:
    """
    The content types of the TLS records that C{wire} holds, in order.

    @raise AssertionError: if C{wire} does not end on a record boundary.
    """
    types = []
    offset = 0
    while offset < len(wire):
        assert len(wire) - offset >= 5, "a truncated record header"
        length = int.from_bytes(wire[offset + 3 : offset + 5], "big")
        types.append(wire[offset])
        offset += 5 + length
    assert offset == len(wire), "a truncated record"
    return types


class Recorder(Protocol):
    """
    Keeps what it receives, chunk by chunk, and how its connection ended;
    writes C{greeting} as it connects.
    """

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.chunks: list[bytes] = []
        self.reason: Failure | None = None

    def connectionMade(self) -> None:
        if self.greeting:
            assert self.transport is not None
            self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason

    def received(self) -> bytes:
        return b"".join(self.chunks)


class Given(Factory):
    """
    A factory that hands out one protocol built beforehand.
    """

    def __init__(self, protocol: Protocol | None) -> None:
        self.built = protocol

    def buildProtocol(self, addr):
        return self.built


class LayerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server_certificate = NodeCertificate.generate("server")
        self.client_certificate = NodeCertificate.generate("client")

    def connect(self, server_app: Protocol, client_app: Protocol, client_options=None):
        """
        Connect C{client_app} to C{server_app} over TLS in memory, each
        side's TLS layer a L{RelayTLSProtocol}, and run the handshake.

        @return: the client's and the server's TLS layer, and the pump.
        """
        clock = Clock()  # TLS layers flush their small writes on the clock
        server_factory = TLSServerFactory(
            self.server_certificate.server_options(), False, Given(server_app), clock
        )
        client_factory = TLSMemoryBIOFactory(
            client_options or self.client_certificate.client_options(), True, Given(client_app), clock
        )
        client_factory.protocol = RelayTLSProtocol
        client, server, pump = iosim.connectedServerAndClient(
            lambda: server_factory.buildProtocol(None),
            lambda: client_factory.buildProtocol(None),
            clock=clock,
        )
        pump.flush()
        self.clock = clock
        return client, server, pump

    def test_bulk_write_arrives_whole(self) -> None:
        """
        A write of many records, some of it made before the TLS handshake
        was done (held until it is), arrives whole and in order.
        """
        early = bytes(range(256)) * 41
        bulk = bytes(range(251)) * 1000  # not a whole number of records
        server_app, client_app = Recorder(), Recorder(greeting=early)
        client, server, pump = self.connect(server_app, client_app)
        client.write(bulk)
        self.clock.advance(0)
        pump.flush()
        self.assertEqual(server_app.received(), early + bulk)

    def test_one_write_per_burst(self) -> None:
        """
        What one write seals, a record per 16 KiB, goes to the transport
        below in one write.
        """
        server_app, client_app = Recorder(), Recorder()
        client, server, pump = self.connect(server_app, client_app)
        below = pump.clientIO
        below.stream = []
        burst = b"x" * (4 * RECORD_BYTES + 100)
        client.write(burst)
        self.assertEqual(len(below.stream), 1)
        self.assertEqual(records(below.stream[0]), [APPLICATION_DATA] * 5)
        pump.flush()
        self.assertEqual(server_app.received(), burst)

    def test_whole_writes(self) -> None:
        """
        The context allows whole writes: one C{SSL_write} seals a burst of
        several records, not just the first.
        """
        server_app, client_app = Recorder(), Recorder()
        client, server, pump = self.connect(server_app, client_app)
        burst = b"y" * (3 * RECORD_BYTES)
        self.assertEqual(client.getHandle().send(burst), len(burst))
        client._flushRecords(len(burst))
        pump.flush()
        self.assertEqual(server_app.received(), burst)

    def test_flush_writes(self) -> None:
        """
        A small write waits for the reactor's next turn, to be sealed with
        those that follow it (Twisted's joining of small writes), unless
        the writer says it joined its writes itself (C{flushWrites}).
        """
        server_app, client_app = Recorder(), Recorder()
        client, server, pump = self.connect(server_app, client_app)
        below = pump.clientIO
        below.stream = []
        client.write(b"one")
        client.write(b"two")
        self.assertEqual(below.stream, [])
        client.flushWrites()
        self.assertEqual(records(b"".join(below.stream)), [APPLICATION_DATA])
        client.write(b"three")
        self.clock.advance(0)
        pump.flush()
        self.assertEqual(server_app.received(), b"onetwothree")

    def test_records_delivered_together(self) -> None:
        """
        The records that arrive together are decrypted and handed to the
        protocol in one C{dataReceived}.
        """
        server_app, client_app = Recorder(), Recorder()
        client, server, pump = self.connect(server_app, client_app)
        burst = bytes(range(256)) * 300
        client.write(burst)
        server_app.chunks = []
        pump.flush()
        self.assertEqual(server_app.chunks, [burst])

    def test_close_notify(self) -> None:
        """
        A side that closes sends what it wrote, then its close_notify: the
        other side receives it all, and both see a clean close.
        """
        server_app, client_app = Recorder(), Recorder()
        client, server, pump = self.connect(server_app, client_app)
        client.write(b"last words")
        client.loseConnection()
        pump.flush()
        self.assertEqual(server_app.received(), b"last words")
        assert server_app.reason is not None and client_app.reason is not None
        server_app.reason.trap(ConnectionDone)
        client_app.reason.trap(ConnectionDone)

    def test_garbage_ends_the_connection(self) -> None:
        """
        A record that does not decrypt ends the connection, and the
        protocol is told why: the TLS error, kept without its traceback (so
        that a connection it ends is not left as cyclic garbage).
        """
        server_app, client_app = Recorder(), Recorder()
        client, server, pump = self.connect(server_app, client_app)
        server.dataReceived(bytes([APPLICATION_DATA, 3, 3, 0, 32]) + b"\x00" * 32)
        pump.flush()
        self.assertEqual(server_app.chunks, [])
        self.assertIsNotNone(server_app.reason)
        assert server_app.reason is not None
        server_app.reason.trap(SSL.Error)
        self.assertIsNone(server_app.reason.getTracebackObject())
        error = server_app.reason.value
        assert error is not None
        self.assertEqual(error.__traceback__, None)
        self.assertTrue(server.transport.disconnecting or server.transport.disconnected)

    def test_tls_1_3(self) -> None:
        """
        Connections speak TLS 1.3.
        """
        server_app, client_app = Recorder(), Recorder(greeting=b"hi")
        client, server, pump = self.connect(server_app, client_app)
        self.assertEqual(server_app.received(), b"hi")
        self.assertEqual(server.getHandle().get_protocol_version_name(), "TLSv1.3")
        self.assertEqual(client.getHandle().get_protocol_version_name(), "TLSv1.3")

    def test_tls_1_2_refused(self) -> None:
        """
        A client that offers TLS 1.2 at most gets no connection: nothing it
        writes reaches the protocol.
        """
        old = twisted_ssl.CertificateOptions(
            insecurelyLowerMinimumTo=twisted_ssl.TLSVersion.TLSv1_2,
            lowerMaximumSecurityTo=twisted_ssl.TLSVersion.TLSv1_2,
        )
        server_app, client_app = Recorder(), Recorder(greeting=b"hi")
        client, server, pump = self.connect(server_app, client_app, client_options=old)
        self.assertEqual(server_app.received(), b"")
        self.assertIsNotNone(client_app.reason)
        assert client_app.reason is not None
        client_app.reason.trap(SSL.Error)


class UsedTests(SynchronousTestCase):
    def test_listener(self) -> None:
        """
        A C{tls:} listener's connections have a L{RelayTLSProtocol} layer,
        and a connection its factory refuses none.
        """
        options = NodeCertificate.generate("n").server_options()
        layer = TLSServerFactory(options, False, Given(Protocol())).buildProtocol(None)
        self.assertIsInstance(layer, RelayTLSProtocol)
        self.assertIsNone(TLSServerFactory(options, False, Given(None)).buildProtocol(None))

    def test_replaces_twisted_layer(self) -> None:
        """
        L{use_relay_tls} makes the layer Twisted's C{startTLS} put under a
        transport (its C{protocol}) a L{RelayTLSProtocol}, and leaves
        anything else alone.
        """

        class Transport:
            protocol: Protocol

        transport = Transport()
        factory = TLSMemoryBIOFactory(NodeCertificate.generate("n").client_options(), True, Factory())
        transport.protocol = layer = BufferingTLSTransport(factory, Protocol(), False)
        self.assertIs(use_relay_tls(transport), layer)
        self.assertIs(type(layer), RelayTLSProtocol)
        self.assertIs(use_relay_tls(layer), layer)  # a tls: listener's connection
        other = Protocol()
        transport.protocol = other
        self.assertIsNone(use_relay_tls(transport))
        self.assertIs(transport.protocol, other)
        self.assertIsNone(use_relay_tls(object()))  # no protocol at all

    def test_in_band_upgrade(self) -> None:
        """
        Both ends of a link upgraded to TLS in band run over a
        L{RelayTLSProtocol}, and messages of many records cross it.
        """
        network = MemoryNetwork()
        alpha, beta = memory_node(network, "alpha"), memory_node(network, "beta")
        alpha.startService()
        beta.startService()
        self.addCleanup(beta.stopService)
        self.addCleanup(alpha.stopService)
        connect_nodes(network, alpha, beta)
        [inbound] = alpha.mesh.connections()
        [outbound] = beta.mesh.connections()
        for link in (inbound, outbound):
            self.assertTrue(link.encrypted)
            self.assertIs(type(link.transport.protocol), RelayTLSProtocol)
            self.assertIs(link._tls, link.transport.protocol)  # told to seal each burst
        # the channel binding, (server, client) on both ends, read once
        binding = (alpha.certificate.fingerprint, beta.certificate.fingerprint)
        self.assertEqual(inbound._binding(), binding)
        self.assertEqual(outbound._binding(), binding)

        def unread(transport):
            raise AssertionError("the binding was read from the TLS session again")

        self.patch(connection, "channel_binding", unread)
        self.assertEqual(inbound._binding(), binding)
        self.assertEqual(outbound._binding(), binding)
        received = []
        alpha.mesh.subscribe(lambda peer_id, message: received.append(message), "task_status")
        detail = "z" * (3 * RECORD_BYTES)
        for task in ("a", "b", "c"):
            beta.mesh.send("alpha", "task_status", {"task_id": task, "status": "running", "detail": detail})
        network.flush()
        self.assertEqual(
            [(m.payload["task_id"], m.payload["detail"]) for m in received],
            [("a", detail), ("b", detail), ("c", detail)],
        )


class RealSocketTests(TestCase):
    """
    Two nodes in this process on real sockets on 127.0.0.1: both TLS
    paths run over a L{RelayTLSProtocol} on the real reactor, and messages
    of several records cross them.
    """

    timeout = 20

    @defer.inlineCallbacks
    def exchange(self, listen: str, dial: str) -> Generator[defer.Deferred, object, None]:
        alpha, beta = tls_pair(self, listen, dial)
        beta.startService()
        yield wait_for(lambda: beta.mesh.is_connected("alpha") and alpha.mesh.is_connected("beta"), 10)
        [inbound] = alpha.mesh.connections()
        [outbound] = beta.mesh.connections()
        for link in (inbound, outbound):
            self.assertTrue(link.encrypted)
            self.assertIsInstance(link._tls, RelayTLSProtocol)
        got = []
        alpha.mesh.subscribe(lambda peer, m: got.append(m.payload["detail"]), "task_status")
        detail = "q" * (2 * RECORD_BYTES + 1)
        with beta.mesh.batch():
            for task in range(5):
                beta.mesh.send("alpha", "task_status", {"task_id": str(task), "status": "ok", "detail": detail})
        yield wait_for(lambda: len(got) == 5, 10)
        self.assertEqual(got, [detail] * 5)

    def test_tls_listener_and_dial(self) -> defer.Deferred:
        return self.exchange("tls:", "tls:")

    def test_in_band_upgrade(self) -> defer.Deferred:
        return self.exchange("tcp:", "")
