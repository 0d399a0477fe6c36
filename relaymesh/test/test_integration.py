"""
Integration tests on real sockets on 127.0.0.1: two nodes in this process,
and two C{twistd relaymesh} processes paired with the C{relaymesh} command.

Each test is bounded in time and stops what it started by its own handle.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import re
import signal
import subprocess
import time

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.trial.unittest import TestCase

from relaymesh.keystore import KeyStore
from relaymesh.service import RelayService
from relaymesh.test.realtime import ProcessesMixin, free_port, log_lines, tls_node, tls_pair, wait_for


class InProcessTests(TestCase):
    """
    Two L{RelayService}s in this process, joined over loopback TCP.
    """

    timeout = 20

    def make_node(self, identity: str, **kwargs) -> RelayService:
        keystore = KeyStore(self.mktemp())
        keystore.set_identity(identity)
        node = RelayService(keystore, reactor=reactor, **kwargs)
        node.startService()
        self.addCleanup(node.stopService)
        return node

    @defer.inlineCallbacks
    def test_two_nodes_exchange_messages(self):
        """
        A node dials another, both authenticate, messages and heartbeats flow
        both ways, and stopping the acceptor makes the connector reschedule.
        """
        alpha = self.make_node("alpha", listen="tcp:0:interface=127.0.0.1", heartbeat_interval=0.2)
        port = alpha.listener.port.getHost().port
        key = os.urandom(32)
        alpha.keystore.set_key("beta", key)
        beta_keys = KeyStore(self.mktemp())
        beta_keys.set_identity("beta")
        beta_keys.set_key("alpha", key)
        beta = RelayService(
            beta_keys, listen=None, peers=[f"alpha@127.0.0.1:{port}"], heartbeat_interval=0.2, reactor=reactor
        )
        events = []
        beta.mesh.watch_peers(events.append)
        beta.startService()
        self.addCleanup(beta.stopService)

        received = {"alpha": [], "beta": []}
        alpha.mesh.subscribe(lambda peer, m: received["alpha"].append((peer, m)))
        beta.mesh.subscribe(lambda peer, m: received["beta"].append((peer, m)))

        yield wait_for(lambda: beta.mesh.is_connected("alpha") and alpha.mesh.is_connected("beta"), 10)
        beta.mesh.send("alpha", "delegate_task", {"task_id": "t1", "prompt": "hello", "cwd": "/tmp"})
        alpha.mesh.send("beta", "task_status", {"task_id": "t1", "status": "running"})
        yield wait_for(
            lambda: any(m.msg_type == "delegate_task" for _, m in received["alpha"])
            and any(m.msg_type == "task_status" for _, m in received["beta"]),
            5,
        )
        yield wait_for(
            lambda: any(m.msg_type == "heartbeat" for _, m in received["beta"])
            and any(m.msg_type == "heartbeat" for _, m in received["alpha"]),
            5,
        )
        self.assertEqual(alpha.mesh.peer("beta").direction, "inbound")
        self.assertEqual(beta.mesh.peer("alpha").address, f"127.0.0.1:{port}")
        self.assertLess(abs(alpha.keystore.meta("beta")["last_seen"] / 1000 - reactor.seconds()), 5)

        yield alpha.stopService()
        yield wait_for(lambda: any(e.kind == "reconnect_scheduled" for e in events), 5)
        [scheduled] = [e for e in events if e.kind == "reconnect_scheduled"]
        self.assertEqual(scheduled.delay, 5.0)
        self.assertFalse(beta.mesh.is_connected("alpha"))


class TwistdTests(ProcessesMixin, TestCase):
    """
    Two C{twistd relaymesh} processes, paired with C{relaymesh pair} and
    C{relaymesh accept}, as the README describes.
    """

    timeout = 60

    def setUp(self):
        self.setUpProcesses()

    def relaymesh(self, home: str, *args: str) -> str:
        return self.cli(home, *args).stdout

    def node(self, name: str, home: str, *args: str) -> tuple[subprocess.Popen, str]:
        # tests never broadcast on the LAN, nor take the API's default port
        return self.twistd(name, home, "--no-announce", "--api", "none", *args)

    @defer.inlineCallbacks
    def test_pair_connect_and_reconnect(self):
        """
        Pair two nodes with the CLI, start them with twistd, see them connect
        and exchange heartbeats; restart the acceptor and see the connector
        come back after the first 5 s backoff step.
        """
        home_a = os.path.join(self.base, "a")
        home_b = os.path.join(self.base, "b")
        self.relaymesh(home_a, "identity")
        self.relaymesh(home_b, "identity")
        id_a = KeyStore(home_a).identity()
        code = re.search(r"[0-9a-f]{4}(?:-[0-9a-f]{4}){3}", self.relaymesh(home_a, "pair")).group(0)
        self.relaymesh(home_b, "accept", code, id_a)
        port = free_port()
        listen = f"tcp:{port}:interface=127.0.0.1"

        a, log_a = self.node("a", home_a, "--listen", listen, "--heartbeat", "1")
        yield self.wait_log(log_a, rf"listening on 127\.0\.0\.1:{port} as {id_a}", 15)
        b, log_b = self.node(
            "b", home_b, "--listen", "none", "--heartbeat", "1", "--peers", f"{id_a}@127.0.0.1:{port}"
        )
        id_b = KeyStore(home_b).identity()
        yield self.wait_log(log_b, rf"peer {id_a} connected from 127\.0\.0\.1:{port} \(outbound\)", 15)
        yield self.wait_log(log_a, rf"peer {id_b} connected from 127\.0\.0\.1:\d+ \(inbound\)", 5)
        # The pending key was claimed: a's key store now holds b's key.
        self.assertEqual(KeyStore(home_a).key(id_b), KeyStore(home_b).key(id_a))
        self.assertIsNone(KeyStore(home_a).pending_key())

        a.send_signal(signal.SIGTERM)
        # twistd shuts down cleanly, then re-raises the signal as its exit status.
        self.assertEqual((yield deferred_wait(a)), -signal.SIGTERM)
        self.assertIn("Server Shut Down.", log_lines(log_a)[-1])
        stopped = time.monotonic()
        mark = len(log_lines(log_b))
        yield self.wait_log(log_b, rf"reconnecting to {id_a} at 127\.0\.0\.1:{port} in 5 s", 5, after=mark - 2)
        a, log_a = self.node("a2", home_a, "--listen", listen, "--heartbeat", "1")
        yield self.wait_log(log_b, rf"peer {id_a} connected", 15, after=mark)
        elapsed = time.monotonic() - stopped
        self.assertGreaterEqual(elapsed, 4.5)  # the first retry waits 5 s
        self.assertLess(elapsed, 12)


def deferred_wait(process: subprocess.Popen, timeout: float = 15) -> defer.Deferred:
    """
    Fire with a process's exit status once it has exited.
    """
    d = wait_for(lambda: process.poll() is not None, timeout, 0.05)
    return d.addCallback(lambda _: process.returncode)


#: Numbers the messages of every L{_RawPeer}, so that their ids differ.
_MESSAGE_NUMBERS = itertools.count(1)


class _RawPeer(protocol.Protocol):
    """
    A peer written from the protocol description alone, byte by byte:
    claudectl's framing, field order and proof, with no relaymesh code.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.lines: list[dict] = []
        self.closed: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        *complete, self.buffer = self.buffer.split(b"\n")
        for line in complete:
            self.lines.append(json.loads(line))
            self.lineReceived(self.lines[-1])

    def lineReceived(self, message: dict) -> None:
        pass

    def send(self, msg_type: str, from_peer: str, payload: dict) -> None:
        now = int(time.time() * 1000)
        assert self.transport is not None
        self.transport.write(
            b'{"id":"msg_%d_%d","msg_type":"%s","from_peer":"%s","timestamp":%d,"payload":%s}\n'
            % (now, next(_MESSAGE_NUMBERS), msg_type.encode(), from_peer.encode(), now, json.dumps(payload, separators=(",", ":")).encode())
        )

    def connectionLost(self, reason=None) -> None:
        self.closed.callback(None)


def _proof(key: bytes, nonce: str) -> str:
    return hmac.new(key, nonce.encode("ascii"), hashlib.sha256).hexdigest()


class RawPeerTests(TestCase):
    """
    A relaymesh node against a peer that speaks the relay protocol exactly as
    claudectl 0.49 does, over real loopback TCP.
    """

    timeout = 20

    def node(self, identity: str, **kwargs) -> RelayService:
        keystore = KeyStore(self.mktemp())
        keystore.set_identity(identity)
        node = RelayService(keystore, reactor=reactor, heartbeat_interval=0.3, **kwargs)
        return node

    @defer.inlineCallbacks
    def test_raw_acceptor(self):
        """
        Our connector, told the peer is legacy, answers a claudectl-style
        challenge with exactly claudectl's handshake and the right proof,
        accepts its bare ack, exchanges heartbeats, and reschedules after the
        acceptor closes.
        """
        key = os.urandom(32)
        peers: list[_RawPeer] = []

        class Acceptor(_RawPeer):
            def connectionMade(self):
                peers.append(self)
                self.nonce = os.urandom(32).hex()
                self.send("challenge", "", {"nonce": self.nonce})

            def lineReceived(self, message):
                if message["msg_type"] == "handshake":
                    ok = message["payload"]["proof"] == _proof(key, self.nonce)
                    self.send("handshake_ack", "claude-box", {"status": "ok" if ok else "denied"})
                    self.send("heartbeat", "claude-box", {})

        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(Acceptor)
        )
        self.addCleanup(port.stopListening)
        node = self.node("laptop", listen=None, peers=[f"legacy:claude-box@127.0.0.1:{port.getHost().port}"])
        node.keystore.set_key("claude-box", key)
        events = []
        node.mesh.watch_peers(events.append)
        node.startService()
        self.addCleanup(node.stopService)
        yield wait_for(lambda: node.mesh.is_connected("claude-box"), 10)
        yield wait_for(lambda: any(m["msg_type"] == "heartbeat" for m in peers[0].lines), 5)
        handshake = peers[0].lines[0]
        self.assertEqual(list(handshake), ["id", "msg_type", "from_peer", "timestamp", "payload"])
        self.assertEqual(list(handshake["payload"]), ["proof", "version"])
        self.assertEqual(handshake["from_peer"], "laptop")
        peers[0].transport.loseConnection()
        yield wait_for(lambda: any(e.kind == "reconnect_scheduled" for e in events), 5)
        self.assertEqual([e.delay for e in events if e.kind == "reconnect_scheduled"], [5.0])

    @defer.inlineCallbacks
    def test_raw_connector(self):
        """
        A claudectl-style connector with a pending pair-code key gets in, and
        the key is stored under its id.
        """
        key = os.urandom(32)
        node = self.node("laptop", listen="tcp:0:interface=127.0.0.1")
        node.keystore.set_pending_key(key)
        node.startService()
        self.addCleanup(node.stopService)

        class Connector(_RawPeer):
            def lineReceived(self, message):
                if message["msg_type"] == "challenge":
                    self.send("handshake", "ci-runner", {"proof": _proof(key, message["payload"]["nonce"]), "version": "0.49.2"})
                elif message["msg_type"] == "handshake_ack":
                    self.send("task_status", "ci-runner", {"task_id": "t", "status": "done"})

        got = []
        node.mesh.subscribe(lambda peer, m: got.append((peer, m.payload)), "task_status")
        client = yield endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", node.listener.port.getHost().port).connect(
            protocol.Factory.forProtocol(Connector)
        )
        yield wait_for(lambda: got, 5)
        self.assertEqual(got, [("ci-runner", {"task_id": "t", "status": "done"})])
        ack = client.lines[1]
        self.assertEqual((ack["msg_type"], ack["from_peer"], ack["payload"]), ("handshake_ack", "laptop", {"status": "ok"}))
        self.assertEqual(node.keystore.key("ci-runner"), key)
        client.transport.loseConnection()
        yield client.closed


class TLSTests(TestCase):
    """
    Two nodes over TLS on loopback, with self-signed certificates.
    """

    timeout = 20

    def node(self, identity: str, **kwargs) -> RelayService:
        return tls_node(self, identity, **kwargs)

    @defer.inlineCallbacks
    def test_tls_mutual_and_pinned(self):
        """
        The nodes connect over TLS, both prove the key bound to both
        certificates, and each pins the other's fingerprint; a changed
        certificate is then refused.
        """
        alpha, beta = tls_pair(self)
        events = []
        beta.mesh.watch_peers(events.append)
        beta.startService()
        yield wait_for(lambda: beta.mesh.is_connected("alpha"), 10)
        client = beta.mesh._peers["alpha"].protocol
        self.assertTrue(client.handshake.mutual)
        self.assertEqual(beta.keystore.meta("alpha")["tls_fingerprint"], alpha.certificate.fingerprint)
        self.assertEqual(alpha.keystore.meta("beta")["tls_fingerprint"], beta.certificate.fingerprint)
        got = []
        alpha.mesh.subscribe(lambda peer, m: got.append(m.payload), "task_status")
        beta.mesh.send("alpha", "task_status", {"secret": "over tls"})
        yield wait_for(lambda: got, 5)

        # beta pinned another certificate for alpha: the next handshake fails.
        beta.keystore.update_meta("alpha", tls_fingerprint="sha256:" + "0" * 64)
        client.close("closed by the test")
        yield wait_for(lambda: any(e.kind == "denied" for e in events), 15)
        [denied] = [e for e in events if e.kind == "denied"]
        self.assertIn("TLS CERTIFICATE OF alpha CHANGED", denied.reason)
        self.assertFalse(beta.mesh.is_connected("alpha"))

    @defer.inlineCallbacks
    def test_join_with_strong_code_over_tls(self):
        """
        The README's path: a TLS node arms a strong code; another node joins
        over TLS with it; both hold the same new key and pin each other.
        """
        from relaymesh.invite import join_directly, parse_join_input
        from relaymesh.tls import NodeCertificate, create_certificate

        alpha = self.node("alpha", listen="tls:0:interface=127.0.0.1")
        alpha.startService()
        self.addCleanup(alpha.stopService)
        port = alpha.listener.port.getHost().port
        alpha.keystore.arm_strong_code("417-gem-oak", expires_at=reactor.seconds() + 600)
        data_dir = self.mktemp()
        beta = KeyStore(data_dir)
        beta.set_identity("beta")
        create_certificate(data_dir, "beta")
        certificate = NodeCertificate.from_data_dir(data_dir)
        invite = parse_join_input("417-gem-oak", f"alpha@127.0.0.1:{port}")
        result = yield join_directly(beta, invite, reactor, certificate=certificate)
        self.assertEqual(result.peer_id, "alpha")
        self.assertEqual(beta.key("alpha"), alpha.keystore.key("beta"))
        self.assertEqual(beta.meta("alpha")["tls_fingerprint"], alpha.certificate.fingerprint)
        self.assertEqual(alpha.keystore.meta("beta")["tls_fingerprint"], certificate.fingerprint)
        self.assertEqual(alpha.keystore.meta("beta")["paired_via"], "strong_code")
