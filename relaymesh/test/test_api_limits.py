"""
The control API's limits (L{relaymesh.control.site}): a cap on open
connections, a deadline for each request, and bodies refused before they
are read; on a fake clock and in-memory transports (and the cap once over
TLS on 127.0.0.1).

The attack they answer (half-sent requests holding connections, and so file
descriptors, until the node could not accept a peer any more) is replayed
on real sockets in L{relaymesh.test.test_api_flood}.
"""

from __future__ import annotations

import socket
import ssl

from twisted.internet import defer, reactor, threads
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaymesh.control.plane import ControlPlane
from relaymesh.control.requests import MAX_BODY, MAX_CONNECTIONS, REQUEST_DEADLINE
from relaymesh.control.service import ApiService
from relaymesh.control.site import CLOSE_GRACE, ApiChannel, ApiSite, OverCap, make_site, raw_answer
from relaymesh.keystore import KeyStore
from relaymesh.service import RelayService
from relaymesh.test.apisupport import TOKEN
from relaymesh.tls import create_certificate

#: The API's address in these tests.
API = IPv4Address("TCP", "127.0.0.1", 9849)

STATUS = b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:9849\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"


class Link:
    """
    One client connection to the site, in memory.
    """

    def __init__(self, site: ApiSite, port: int = 50000) -> None:
        self.transport = StringTransport(API, IPv4Address("TCP", "127.0.0.1", port))
        self.channel = site.buildProtocol(self.transport.getPeer())
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def answers(self) -> list[bytes]:
        """
        The status lines written so far.
        """
        lines = self.transport.value().split(b"\n")
        return [line.rstrip(b"\r") for line in lines if line.startswith(b"HTTP/1.1 ")]

    def close(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting)

    @property
    def aborted(self) -> bool:
        return bool(getattr(self.transport, "disconnected", False))


class LimitsTestCase(SynchronousTestCase):
    """
    A node (not started) on a memory clock, and its API's site.
    """

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.node = self.make_node()
        self.control = ControlPlane(self.node, self.clock, token=TOKEN)
        self.site = make_site(self.control)
        self.site.startFactory()
        self.addCleanup(self.site.stopFactory)

    def make_node(self) -> RelayService:
        keystore = KeyStore(self.mktemp())
        keystore.set_identity("alpha")
        return RelayService(keystore, listen=None, reactor=self.clock)


class DeadlineTests(LimitsTestCase):
    """
    A client has L{REQUEST_DEADLINE} seconds to send each whole request.
    """

    def test_half_sent_headers(self):
        """
        Headers that never end: 408 at the deadline, then the connection is
        closed, and cut if the client does not go.
        """
        link = Link(self.site)
        link.send(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:9849\r\n")
        self.clock.advance(REQUEST_DEADLINE - 0.1)
        self.assertEqual((link.answers(), link.closing), ([], False))
        self.clock.advance(0.1)
        self.assertEqual(link.answers(), [b"HTTP/1.1 408 Request Timeout"])
        self.assertIn(b'{"error":"no whole request within 10 s"}', link.transport.value())
        self.assertTrue(link.closing)
        self.assertFalse(link.aborted)
        link.send(b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")  # too late: ignored
        self.assertEqual(len(link.answers()), 1)
        self.clock.advance(CLOSE_GRACE)
        self.assertTrue(link.aborted)

    def test_drip(self):
        """
        A client that sends a byte now and then gains nothing: the deadline
        counts from the start of the request, not from the last byte.
        """
        link = Link(self.site)
        for i in range(int(REQUEST_DEADLINE)):
            link.send(b"GET /api/status HTTP/1.1\r\n"[i : i + 1])
            self.clock.advance(0.99)
        self.assertEqual(link.answers(), [])
        self.clock.advance(0.2)
        self.assertEqual(link.answers(), [b"HTTP/1.1 408 Request Timeout"])

    def test_slow_body(self):
        """
        Headers in time, the body not: 408 as well.
        """
        link = Link(self.site)
        link.send(
            b"POST /api/broadcast HTTP/1.1\r\nHost: 127.0.0.1:9849\r\ncontent-length: 40\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n" + b'{"msg_type": '
        )
        self.clock.advance(REQUEST_DEADLINE)
        self.assertEqual(link.answers(), [b"HTTP/1.1 408 Request Timeout"])

    def test_each_request(self):
        """
        Whole requests in time are answered; the deadline starts again after
        each answer, and also closes a connection left idle.
        """
        link = Link(self.site)
        self.clock.advance(REQUEST_DEADLINE - 1)
        link.send(STATUS)
        self.clock.advance(REQUEST_DEADLINE - 1)
        link.send(STATUS + STATUS)  # two at once, pipelined
        self.assertEqual(link.answers(), [b"HTTP/1.1 200 OK"] * 3)
        self.clock.advance(REQUEST_DEADLINE - 0.5)
        self.assertFalse(link.closing)
        self.clock.advance(0.5)
        self.assertEqual(link.answers()[-1], b"HTTP/1.1 408 Request Timeout")
        self.assertTrue(link.closing)

    def test_event_stream_stays(self):
        """
        The deadline is for receiving a request: an event stream, a long
        answer, is not cut.
        """
        link = Link(self.site)
        link.send(STATUS.replace(b"/api/status", b"/api/events"))
        self.clock.advance(REQUEST_DEADLINE * 10)
        self.assertEqual(link.answers(), [b"HTTP/1.1 200 OK"])
        self.assertFalse(link.closing)
        self.assertIn(b": keepalive", link.transport.value())
        self.control.close_streams()
        self.clock.advance(REQUEST_DEADLINE)
        self.assertTrue(link.closing)

    def test_closed_connection_disarms(self):
        """
        A connection that ends leaves no timer and no slot behind.
        """
        before = len(self.clock.getDelayedCalls())
        link = Link(self.site)
        link.send(b"GET / HTTP/1.1\r\n")
        self.assertEqual(len(self.clock.getDelayedCalls()), before + 1)
        self.assertEqual(self.site.channels, {link.channel})
        link.close()
        self.assertEqual(len(self.clock.getDelayedCalls()), before)
        self.assertEqual(self.site.channels, set())


class BodyLimitTests(LimitsTestCase):
    """
    A body over L{MAX_BODY} bytes is refused before it is read.
    """

    def test_announced(self):
        link = Link(self.site)
        link.send(
            b"POST /api/broadcast HTTP/1.1\r\nHost: 127.0.0.1:9849\r\n"
            b"content-length: %d\r\n\r\n" % (MAX_BODY + 1)
        )
        self.assertEqual(link.answers(), [b"HTTP/1.1 413 Request Entity Too Large"])
        self.assertIn(b"request body over 1048576 bytes", link.transport.value())
        self.assertTrue(link.closing)
        link.send(b"x" * 65536)  # not read
        self.assertEqual(len(link.transport.value().split(b"HTTP/1.1 ")), 2)
        self.clock.advance(CLOSE_GRACE)
        self.assertTrue(link.aborted)

    def test_chunked(self):
        """
        A chunked body is refused as soon as it passes the limit.
        """
        link = Link(self.site)
        link.send(
            b"POST /api/broadcast HTTP/1.1\r\nHost: 127.0.0.1:9849\r\ntransfer-encoding: chunked\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        for _ in range(MAX_BODY // 65536):
            link.send(chunk)
        self.assertEqual(link.answers(), [])
        link.send(chunk)
        self.assertEqual(link.answers(), [b"HTTP/1.1 413 Request Entity Too Large"])
        link.send(chunk + b"0\r\n\r\n")
        self.assertEqual(len(link.answers()), 1)

    def test_raw_answer(self):
        """
        The channel's own answers are whole HTTP answers with a JSON error,
        and say that the connection closes.
        """
        answer = raw_answer(408, "too slow")
        head, _, body = answer.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 408 Request Timeout\r\n"))
        self.assertIn(b"content-length: %d" % len(body), head)
        self.assertIn(b"connection: close", head)
        self.assertEqual(body, b'{"error":"too slow"}\n')


class ConnectionCapTests(LimitsTestCase):
    """
    At most L{MAX_CONNECTIONS} connections are open at once; more are
    closed as soon as they are accepted.
    """

    def test_cap(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        links = [Link(self.site, 40000 + i) for i in range(MAX_CONNECTIONS)]
        self.assertTrue(all(isinstance(link.channel, ApiChannel) for link in links))
        self.assertEqual(len(self.site.channels), MAX_CONNECTIONS)
        over = [Link(self.site), Link(self.site)]
        self.assertEqual([type(link.channel) for link in over], [OverCap, OverCap])
        self.assertEqual([link.aborted for link in over], [True, True])
        self.assertEqual(len(self.site.channels), MAX_CONNECTIONS)
        self.assertEqual(self.site.refused_connections, 2)
        full = [e for e in events if "closing new ones" in e.get("log_format", "")]
        self.assertEqual(len(full), 1)
        links[0].close()
        again = Link(self.site)
        self.assertIsInstance(again.channel, ApiChannel)
        again.send(STATUS)
        self.assertEqual(again.answers(), [b"HTTP/1.1 200 OK"])
        self.assertEqual(len([e for e in events if "taking connections again" in e.get("log_format", "")]), 1)

    def test_deadline_frees_slots(self):
        """
        Half-sent requests hold their slots only until the deadline.
        """
        links = [Link(self.site, 40000 + i) for i in range(MAX_CONNECTIONS)]
        for link in links:
            link.send(b"GET /api/status HTTP/1.1\r\n")
        self.assertTrue(Link(self.site).aborted)
        self.clock.advance(REQUEST_DEADLINE)
        self.clock.advance(CLOSE_GRACE)
        self.assertTrue(all(link.aborted for link in links))
        for link in links:
            link.close()
        self.assertEqual(self.site.channels, set())
        self.assertIsInstance(Link(self.site).channel, ApiChannel)

    def test_configured(self):
        control = ControlPlane(self.make_node(), self.clock, token=TOKEN, max_connections=2, request_deadline=3)
        site = make_site(control)
        links = [Link(site), Link(site)]
        self.assertTrue(Link(site).aborted)
        links[0].send(b"GET / HTTP/1.1\r\n")
        self.clock.advance(3)
        self.assertEqual(links[0].answers(), [b"HTTP/1.1 408 Request Timeout"])


class TLSCapTests(TestCase):
    """
    The cap over a TLS endpoint (C{--api ssl:...}): a connection over it is
    closed, and the one within it is served.
    """

    timeout = 20

    @defer.inlineCallbacks
    def test_over_cap(self):
        keystore = KeyStore(self.mktemp())
        keystore.set_identity("alpha")
        cert, key = create_certificate(keystore.path, "alpha")
        node = RelayService(keystore, listen=None, reactor=reactor)
        endpoint = serverFromString(reactor, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
        api = ApiService(node, endpoint, reactor, max_connections=1)
        api.startService()
        self.addCleanup(api.stopService)
        port = api.port.getHost().port
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

        def connect() -> ssl.SSLSocket:
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            wrapped: ssl.SSLSocket = context.wrap_socket(raw)
            return wrapped

        def two_clients() -> tuple[bytes, str]:
            with connect() as first:
                first.sendall(b"GET /api/proof?nonce=" + b"00" * 32 + b" HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port)
                answer = first.recv(65536)
                try:
                    with connect() as second:
                        second.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                        refused = "answered" if second.recv(65536) else "closed"
                except OSError:
                    refused = "closed"
            return answer, refused

        answer, refused = yield threads.deferToThread(two_clients)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK"), answer)
        self.assertEqual(refused, "closed")
        self.assertEqual(api.factory.refused_connections, 1)
        self.assertEqual(self.flushLoggedErrors(), [])
