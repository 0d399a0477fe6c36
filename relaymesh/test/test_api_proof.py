"""
The command line sends the API token only to the node of its data directory
(L{relaymesh.control.proof}, L{relaymesh.control.client}).

The attacks replayed here, on real sockets on 127.0.0.1: something else
listens at the URL a stale C{api-url} names, or at the default URL, and
waits for the token; something relays the connection to the real node (and
fixes up the C{Host} header on the way). In each, the command fails with one
line, and the token never reaches the listener.
"""

from __future__ import annotations

import json
import os
from io import StringIO

from twisted.internet import defer, protocol, reactor, threads
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPushProducer, ITCPTransport, ITransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaymesh.cli.main import main
from relaymesh.control.client import NodeClient, NodeNotProven, NodeNotRunning
from relaymesh.control.proof import (
    LABEL,
    NONCE_BYTES,
    canonical_address,
    check_proof,
    make_proof,
    new_nonce,
    parse_nonce,
)
from relaymesh.join import local_node
from relaymesh.keystore import KeyStore
from relaymesh.service import RelayService
from relaymesh.test.apisupport import TOKEN, ApiHarness
from relaymesh.test.realtime import wait_for


class ProofTests(SynchronousTestCase):
    """
    The proof itself.
    """

    def test_bound_to_everything(self):
        """
        A proof holds for one token, one nonce and one address only.
        """
        nonce = new_nonce()
        self.assertEqual(len(nonce), NONCE_BYTES)
        proof = make_proof("token", nonce, "127.0.0.1:9849")
        self.assertTrue(check_proof("token", nonce, "127.0.0.1:9849", proof))
        self.assertFalse(check_proof("other", nonce, "127.0.0.1:9849", proof))
        self.assertFalse(check_proof("token", new_nonce(), "127.0.0.1:9849", proof))
        self.assertFalse(check_proof("token", nonce, "127.0.0.1:9850", proof))
        self.assertFalse(check_proof("token", nonce, "127.0.0.1:9849", None))
        self.assertFalse(check_proof("token", nonce, "127.0.0.1:9849", proof.upper()))
        self.assertTrue(LABEL.endswith(b"\x00"))

    def test_canonical_address(self):
        """
        Both sides spell an address the same way.
        """
        self.assertEqual(canonical_address("127.0.0.1", 9849), "127.0.0.1:9849")
        self.assertEqual(canonical_address("::ffff:127.0.0.1", 9849), "127.0.0.1:9849")
        self.assertEqual(canonical_address("0:0:0:0:0:0:0:1", 1), "[::1]:1")
        self.assertEqual(canonical_address("fe80::1%lo", 2), "[fe80::1]:2")
        self.assertEqual(canonical_address("LocalHost", 3), "localhost:3")

    def test_nonce(self):
        nonce = new_nonce()
        self.assertEqual(parse_nonce(nonce.hex()), nonce)
        for bad in ["", "00", "zz" * NONCE_BYTES, "0" * (2 * NONCE_BYTES + 2)]:
            self.assertIsNone(parse_nonce(bad))


class ProofResourceTests(TestCase):
    """
    C{GET /api/proof}: needs no token, and answers for the address the
    request came in at.
    """

    timeout = 20

    def setUp(self):
        self.h = ApiHarness(self)

    @defer.inlineCallbacks
    def test_proof(self):
        nonce = new_nonce()
        code, body, _ = yield self.h.request("GET", f"/api/proof?nonce={nonce.hex()}", token=None)
        self.assertEqual(code, 200)
        address = f"127.0.0.1:{self.h.port.getHost().port}"
        self.assertEqual(body, {"proof": make_proof(TOKEN, nonce, address), "address": address})

    @defer.inlineCallbacks
    def test_bad_nonce(self):
        for query in ["", "?nonce=", "?nonce=abc", f"?nonce={'zz' * NONCE_BYTES}", f"?nonce={'00' * NONCE_BYTES}&nonce=11"]:
            code, body, _ = yield self.h.request("GET", "/api/proof" + query, token=None)
            self.assertEqual((query, code), (query, 400))
            self.assertEqual(body["error"], f"query 'nonce' must be {2 * NONCE_BYTES} hex digits")

    @defer.inlineCallbacks
    def test_no_token_loaded(self):
        self.h.control.token = None
        code, body, _ = yield self.h.request("GET", f"/api/proof?nonce={'00' * NONCE_BYTES}", token=None)
        self.assertEqual(code, 503)


class _RecordingFactory(protocol.ServerFactory):
    """
    The factory of the protocols below: what they received, their
    connections, and what a test gives them to answer with.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.connections: list[protocol.Protocol] = []


class _Recording(protocol.Protocol):
    """
    Records every byte it receives in its factory, and keeps what came
    since its last answer in C{buffer}.
    """

    #: Used only connected, over TCP.
    transport: ITCPTransport

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.factory.received.append(data)
        self.buffer += data
        self.received()

    def received(self) -> None:
        raise NotImplementedError

    def answer(self, body: bytes, headers: bytes = b"") -> None:
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n%s\r\n%s" % (len(body), headers, body)
        )


class Listener(_Recording):
    """
    What listens where a node used to be: it records every byte, and answers
    each request with a canned HTTP answer, keeping the connection open for
    whatever comes next.
    """

    def received(self) -> None:
        while b"\r\n\r\n" in self.buffer:
            _, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.answer(self.factory.answer)


class ClosingProver(_Recording):
    """
    Knows the token: proves it for its own address, then closes the
    connection.
    """

    def received(self) -> None:
        if b"\r\n\r\n" not in self.buffer:
            return
        nonce = parse_nonce(self.buffer.split(b"nonce=", 1)[1].split(b" ", 1)[0].decode())
        assert nonce is not None
        local = self.transport.getHost()
        address = canonical_address(local.host, local.port)
        body = json.dumps({"proof": make_proof(self.factory.token, nonce, address), "address": address}).encode()
        self.answer(body, b"connection: close\r\n")
        self.transport.loseConnection()


class Relay(protocol.Protocol):
    """
    A TCP relay to the real node, which records what passes and rewrites
    the C{Host} header to the node's, so that the node answers.
    """

    #: Used only connected, over TCP.
    transport: ITCPTransport

    def connectionMade(self) -> None:
        IPushProducer(self.transport).pauseProducing()
        self.pending: list[bytes] = []
        self.upstream: ITransport | None = None
        relay = self

        class Upstream(protocol.Protocol):
            transport: ITCPTransport

            def connectionMade(self) -> None:
                relay.upstream = self.transport
                for data in relay.pending:
                    self.transport.write(data)
                IPushProducer(relay.transport).resumeProducing()

            def dataReceived(self, data: bytes) -> None:
                relay.transport.write(data)

            def connectionLost(self, reason=None) -> None:
                relay.transport.loseConnection()

        factory = self.factory
        protocol.ClientCreator(reactor, Upstream).connectTCP("127.0.0.1", factory.target_port)
        factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.factory.received.append(data)
        data = data.replace(self.factory.own_host, self.factory.target_host)
        if self.upstream is None:
            self.pending.append(data)
        else:
            self.upstream.write(data)

    def connectionLost(self, reason=None) -> None:
        if self.upstream is not None:
            self.upstream.loseConnection()


class StaleUrlTests(TestCase):
    """
    A node ran with the data directory (its token file is there) and
    stopped; something else now answers where it was.
    """

    timeout = 30

    def setUp(self):
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "RELAYMESH_API"})
        self.store = KeyStore(self.mktemp())
        self.store.set_identity("alpha")
        self.token = "secret-token-" + os.urandom(8).hex()
        with open(os.path.join(self.store.path, "api-token"), "w") as f:
            f.write(self.token + "\n")

    def listen(self, kind: type[protocol.Protocol], **attributes) -> str:
        factory = _RecordingFactory()
        factory.protocol = kind
        for name, value in attributes.items():
            setattr(factory, name, value)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.close, port, factory)
        self.listener = factory
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        return f"http://127.0.0.1:{address.port}"

    @defer.inlineCallbacks
    def close(self, port, factory):
        for connection in factory.connections:
            connection.transport.abortConnection()
        yield port.stopListening()

    def received(self) -> bytes:
        return b"".join(self.listener.received)

    def run_cli(self, *argv: str) -> defer.Deferred:
        stdout, stderr = StringIO(), StringIO()

        def run():
            status = main(["--data-dir", self.store.path, *argv], stdout=stdout, stderr=stderr)
            return status, stdout.getvalue(), stderr.getvalue()

        return threads.deferToThread(run)

    def write_url(self, url: str) -> None:
        with open(os.path.join(self.store.path, "api-url"), "w") as f:
            f.write(url + "\n")

    def assertTokenKept(self) -> None:
        data = self.received()
        self.assertIn(b"GET /api/proof?nonce=", data)
        self.assertNotIn(self.token.encode(), data)
        self.assertNotIn(b"authorization", data.lower())

    @defer.inlineCallbacks
    def test_stale_api_url(self):
        """
        The stale api-url names a port where something else answers, with a
        proof of its own invention: the token is not sent.
        """
        answer = json.dumps({"proof": "0" * 64, "address": "127.0.0.1:1"}).encode()
        self.write_url(self.listen(Listener, answer=answer))
        for argv in [("status",), ("send", "beta", "task_status", "{}"), ("watch",), ("disconnect", "beta")]:
            status, out, err = yield self.run_cli(*argv)
            self.assertEqual((argv, status, out), (argv, 2, ""))
            self.assertEqual(err.count("\n"), 1)
            self.assertIn("did not prove that it holds the API token", err)
            self.assertIn("the token was not sent", err)
        self.assertTokenKept()

    @defer.inlineCallbacks
    def test_default_url(self):
        """
        With no api-url, no URL is tried (not even the default API port):
        the command says that no node runs on the data directory (exit
        status 1); peers shows the stored list.
        """
        status, out, err = yield self.run_cli("status")
        self.assertEqual((status, out), (1, ""))
        self.assertIn(f"no node running on {self.store.path} (no api-url file)", err)
        self.store.set_key("beta", os.urandom(32))
        status, out, err = yield self.run_cli("peers")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("beta", out)

    @defer.inlineCallbacks
    def test_join_asks_no_impostor(self):
        """
        join's look for the running node goes through the same proof.
        """
        self.write_url(self.listen(Listener, answer=b'{"proof": "", "identity": "alpha"}'))
        node = yield threads.deferToThread(local_node, self.store.path, "alpha")
        self.assertIsNone(node)
        self.assertTokenKept()

    @defer.inlineCallbacks
    def test_relay_to_the_node(self):
        """
        The real node runs on another port; the listener at the stale URL
        relays each connection to it, Host header and all. The node's proof
        is for its own address, so the command still refuses, and says why.
        """
        node = RelayService(self.store, listen=None, api="tcp:0:interface=127.0.0.1", reactor=reactor)
        node.startService()
        self.addCleanup(node.stopService)
        yield wait_for(lambda: node.api.control.api_address is not None, 5)
        real = node.api.port.getHost().port
        url = self.listen(Relay, target_port=real, target_host=f"127.0.0.1:{real}".encode())
        self.listener.own_host = url[len("http://") :].encode()
        self.write_url(url)
        status, out, err = yield self.run_cli("status")
        self.assertEqual(status, 2)
        self.assertIn(f"its proof is for 127.0.0.1:{real}, not {url[7:]}", err)
        self.assertTokenKept()
        # Straight to the node, the same command works.
        self.write_url(f"http://127.0.0.1:{real}")
        status, out, err = yield self.run_cli("status")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("alpha (relaymesh ", out)

    @defer.inlineCallbacks
    def test_client_never_reconnects(self):
        """
        Once the proof is in, the request goes on that connection or not at
        all: when the prover closes the connection after its proof, the
        client does not dial again to send the token to whoever answers
        next.
        """
        url = self.listen(ClosingProver, token=self.token)
        client = NodeClient(url, self.token, timeout=5)
        error = yield self.assertFailure(threads.deferToThread(client.call, "GET", "/api/status"), NodeNotRunning)
        self.assertNotIsInstance(error, NodeNotProven)
        self.assertIn("closed the connection after its proof", str(error))
        self.assertEqual(len(self.listener.connections), 1)
        self.assertTokenKept()

    def test_not_proven_is_not_running(self):
        """
        Callers that only ask whether a node runs (join) take an unproven
        one as none.
        """
        self.assertTrue(issubclass(NodeNotProven, NodeNotRunning))
