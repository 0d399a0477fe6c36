"""
Tests for L{relaymesh.addresses}: the remembered peer addresses, how a
node learns them (its diallers, the port an inbound relaymesh peer
announces in its handshake) and redials them on start.
"""

from __future__ import annotations

import json
import os
import stat

from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from relaymesh.address import InvalidAddress, parse_peer_address
from relaymesh.addresses import (
    ADDRESSES_FILE,
    CONNECT,
    INBOUND,
    JOIN,
    PEERS_OPTION,
    SET_ADDRESS,
    AddressBook,
)
from relaymesh.events import Direction, EventKind, PeerEvent
from relaymesh.handshake.acceptor import AcceptorHandshake
from relaymesh.handshake.connector import ConnectorHandshake
from relaymesh.handshake.proofs import CAP_STARTTLS
from relaymesh.keystore import KeyStore
from relaymesh.registry import log_event
from relaymesh.service import RelayService
from relaymesh.test.support import EPOCH, make_clock
from relaymesh.testing.network import FIRST_LISTENING_PORT
from relaymesh.wire import MessageType, RelayMessage

KEY = bytes(range(32))


def _message(msg_type, from_peer, payload):
    return RelayMessage("m1", msg_type, from_peer, 1, payload)


class AddressBookTests(SynchronousTestCase):
    """
    L{AddressBook}: the file, its entries and their precedence.
    """

    def setUp(self):
        self.dir = self.mktemp()
        self.now = 1000.0
        self.book = AddressBook(self.dir, now=lambda: self.now)

    def test_empty(self):
        self.assertEqual(self.book.entries(), {})
        self.assertIsNone(self.book.get("beta"))
        self.assertFalse(self.book.forget("beta"))

    def test_record(self):
        """
        An address is stored with its peer id, source and time, in a 0600
        file in the data directory, and read back by a new book.
        """
        self.assertTrue(self.book.record("beta", "tls:10.0.0.2:9900", JOIN))
        entry = AddressBook(self.dir).get("beta")
        self.assertEqual(
            (entry.peer_id, entry.address, entry.source, entry.learned_at),
            ("beta", "tls:beta@10.0.0.2:9900", JOIN, 1000.0),
        )
        self.assertEqual(entry.peer_address(), parse_peer_address("tls:beta@10.0.0.2:9900"))
        path = os.path.join(self.dir, ADDRESSES_FILE)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            self.assertEqual(json.load(f)["peers"]["beta"]["source"], "join")

    def test_unchanged_not_rewritten(self):
        self.book.record("beta", "10.0.0.2:9900", CONNECT)
        self.now = 2000.0
        self.assertFalse(self.book.record("beta", "beta@10.0.0.2:9900", CONNECT))
        self.assertEqual(self.book.get("beta").learned_at, 1000.0)

    def test_inbound_never_replaces_explicit(self):
        """
        An address from an inbound connection does not replace one a user
        gave (join, connect, --peers, set-address); those replace each
        other and an inbound one, and an inbound one replaces an inbound one.
        """
        for explicit in (JOIN, CONNECT, PEERS_OPTION, SET_ADDRESS):
            self.book.record("beta", "10.0.0.2:9900", explicit)
            self.assertFalse(self.book.record("beta", "10.0.0.9:9901", INBOUND))
            self.assertEqual(self.book.get("beta").address, "beta@10.0.0.2:9900")
        self.book.forget("beta")
        self.assertTrue(self.book.record("beta", "10.0.0.9:9901", INBOUND))
        self.assertTrue(self.book.record("beta", "10.0.0.8:9901", INBOUND))
        self.assertEqual(self.book.get("beta").address, "beta@10.0.0.8:9901")
        self.assertTrue(self.book.record("beta", "10.0.0.2:9900", SET_ADDRESS))
        self.assertEqual(self.book.get("beta").source, SET_ADDRESS)

    def test_refused(self):
        """
        A bad peer id, source or address, or an address naming another
        peer, is refused and nothing is written.
        """
        self.assertRaises(ValueError, self.book.record, "bad id", "10.0.0.2", JOIN)
        self.assertRaises(ValueError, self.book.record, "beta", "10.0.0.2", "gossip")
        self.assertRaises(InvalidAddress, self.book.record, "beta", "10.0.0.2:99999", JOIN)
        self.assertRaises(InvalidAddress, self.book.record, "beta", "gamma@10.0.0.2", JOIN)
        self.assertFalse(os.path.exists(self.book.path))

    def test_forget(self):
        self.book.record("beta", "10.0.0.2", JOIN)
        self.book.record("gamma", "10.0.0.3", JOIN)
        self.assertTrue(self.book.forget("beta"))
        self.assertEqual(list(self.book.entries()), ["gamma"])
        self.assertTrue(self.book.forget("gamma"))
        self.assertFalse(os.path.exists(self.book.path))

    def test_corrupt(self):
        """
        A corrupt file is logged on one line and read as empty; the next
        record replaces it.
        """
        os.makedirs(self.dir)
        for content in (b"{not json", b"[1, 2]", b'{"peers": 3}', b"\xff\xfe"):
            with open(self.book.path, "wb") as f:
                f.write(content)
            logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
            self.assertEqual(self.book.entries(), {})
            self.assertEqual(len(logged), 1)
            self.assertIn("is corrupt", logged[0]["log_format"])
        self.assertTrue(self.book.record("beta", "10.0.0.2", JOIN))
        self.assertEqual(list(AddressBook(self.dir).entries()), ["beta"])

    def test_bad_entries_skipped(self):
        """
        Entries that are not valid are skipped, the others read.
        """
        os.makedirs(self.dir)
        peers = {
            "beta": {"address": "beta@10.0.0.2:9900", "source": "join", "learned_at": 5},
            "gamma": {"address": "delta@10.0.0.3", "source": "join"},  # another peer
            "delta": {"address": "delta@10.0.0.4", "source": "rumour"},
            "bad id": {"address": "10.0.0.5", "source": "join"},
            "eps": {"address": "eps@host:0", "source": "join"},
            "zeta": "zeta@10.0.0.6",
        }
        with open(self.book.path, "w") as f:
            json.dump({"version": 1, "peers": peers}, f)
        self.assertEqual(list(self.book.entries()), ["beta"])

    def test_keystore_forget(self):
        """
        Forgetting a peer in the key store forgets its address too.
        """
        store = KeyStore(self.dir)
        store.set_key("beta", KEY)
        self.book.record("beta", "10.0.0.2", JOIN)
        self.assertTrue(store.forget("beta"))
        self.assertEqual(self.book.entries(), {})
        self.book.record("gamma", "10.0.0.3", JOIN)
        self.assertTrue(store.forget("gamma"))  # only an address was kept


def memory_reactor():
    reactor = MemoryReactorClock()
    reactor.advance(EPOCH)
    return reactor


class RedialTests(SynchronousTestCase):
    """
    A node redials the remembered addresses of the peers it holds a key of.
    """

    def setUp(self):
        self.reactor = memory_reactor()
        self.keystore = KeyStore(self.mktemp())
        self.keystore.set_identity("alpha")
        self.book = AddressBook(self.keystore.path)

    def node(self, **kw):
        node = RelayService(self.keystore, listen=None, reactor=self.reactor, **kw)
        self.addCleanup(node.stopService)
        return node

    def dialled(self):
        return sorted((host, port) for host, port, *_ in self.reactor.tcpClients)

    def test_redial_on_start(self):
        """
        Every peer with a key and a remembered address is dialled on start,
        without C{--peers}; one whose key is gone is not.
        """
        self.keystore.set_key("beta", KEY)
        self.keystore.set_key("gamma", KEY)
        self.book.record("beta", "10.0.0.2:9900", JOIN)
        self.book.record("gamma", "10.0.0.3:9901", INBOUND)
        self.book.record("delta", "10.0.0.4:9902", CONNECT)  # no key held
        node = self.node()
        self.assertEqual(self.dialled(), [])
        node.startService()
        self.assertEqual(self.dialled(), [("10.0.0.2", 9900), ("10.0.0.3", 9901)])
        self.assertEqual(
            sorted(str(a) for a in node.dialled()), ["beta@10.0.0.2:9900", "gamma@10.0.0.3:9901"]
        )

    def test_peers_option_wins(self):
        """
        A peer named by C{--peers} is dialled there only; that address is
        remembered (source C{peers-option}) only once its dial connects
        (L{AnnounceTests}), so a mistyped one never replaces a good one.
        """
        self.keystore.set_key("beta", KEY)
        self.book.record("beta", "10.0.0.2:9900", JOIN)
        node = self.node(peers=["beta@10.0.0.7:9847"])
        node.startService()
        self.assertEqual(self.dialled(), [("10.0.0.7", 9847)])
        entry = self.book.get("beta")
        self.assertEqual((entry.address, entry.source), ("beta@10.0.0.2:9900", JOIN))

    def test_add_peer_remembers(self):
        """
        L{RelayService.add_peer} remembers an address from C{set-address} at
        once; one from C{connect} or C{--peers} only once its dial connects
        (see L{AnnounceTests}); without a source (the redial itself), none.
        """
        self.keystore.set_key("beta", KEY)
        node = self.node()
        node.startService()
        node.add_peer("beta@10.0.0.2:9900")
        node.add_peer("beta@10.0.0.2:9901", CONNECT)
        node.add_peer("beta@10.0.0.2:9903", PEERS_OPTION)
        self.assertIsNone(self.book.get("beta"))
        node.add_peer("beta@10.0.0.2:9902", SET_ADDRESS)
        self.assertEqual(self.book.get("beta").address, "beta@10.0.0.2:9902")

    def test_forget_address(self):
        self.keystore.set_key("beta", KEY)
        self.book.record("beta", "10.0.0.2:9900", JOIN)
        node = self.node()
        self.assertTrue(node.forget_address("beta"))
        self.assertFalse(node.forget_address("beta"))
        node.startService()
        self.assertEqual(self.dialled(), [])

    def test_forget_peer(self):
        """
        L{RelayService.forget_peer} stops dialling the peer and removes its
        key and address.
        """
        self.keystore.set_key("beta", KEY)
        self.book.record("beta", "10.0.0.2:9900", JOIN)
        node = self.node()
        node.startService()
        self.assertEqual(len(node.dialled()), 1)
        self.assertTrue(node.forget_peer("beta"))
        self.assertEqual(node.dialled(), [])
        self.assertIsNone(self.keystore.key("beta"))
        self.assertEqual(self.book.entries(), {})
        self.assertFalse(node.forget_peer("beta"))

    def test_remove_address(self):
        """
        A dialler of a bare address is stopped by its address.
        """
        self.keystore.set_key("beta", KEY)
        node = self.node(peers=["127.0.0.1:9999"])
        node.startService()
        self.assertTrue(node.remove_address("127.0.0.1:9999"))
        self.assertEqual(node.dialled(), [])
        self.assertFalse(node.remove_address("127.0.0.1:9999"))

    def test_corrupt_file_starts(self):
        """
        A corrupt addresses file does not keep the node from starting.
        """
        os.makedirs(self.keystore.path, exist_ok=True)
        with open(self.book.path, "w") as f:
            f.write("{")
        node = self.node()
        node.startService()
        self.assertTrue(node.running)
        self.assertEqual(self.dialled(), [])


class AnnounceTests(SynchronousTestCase):
    """
    A relaymesh connector announces its listening port inside TLS; the
    acceptor remembers where to dial it back.
    """

    def paired_stores(self) -> tuple[KeyStore, KeyStore]:
        """
        Key stores of alpha and beta, each holding the other's key.
        """
        alpha_store, beta_store = KeyStore(self.mktemp()), KeyStore(self.mktemp())
        alpha_store.set_identity("alpha")
        beta_store.set_identity("beta")
        alpha_store.set_key("beta", KEY)
        beta_store.set_key("alpha", KEY)
        return alpha_store, beta_store

    def test_connector_field(self):
        """
        The proof inside TLS carries C{listen} (and C{listen_tls}); the
        answer to a claudectl acceptor does not.
        """
        connector = ConnectorHandshake("beta", KEY, "alpha", legacy=True)
        connector.listen, connector.listen_tls = 9901, True
        nonce = "ab" * 32
        legacy = connector.answer(_message(MessageType.CHALLENGE, "", {"nonce": nonce}))
        self.assertNotIn("listen", legacy)
        connector = ConnectorHandshake("beta", KEY, "alpha")
        connector.listen, connector.listen_tls = 9901, True
        challenge = {"nonce": nonce, "peer": "alpha", "caps": [CAP_STARTTLS]}
        connector.answer(_message(MessageType.CHALLENGE, "alpha", challenge))
        # the acceptor answers starttls, the link upgrades, a fresh challenge comes
        connector.check_ack(_message(MessageType.HANDSHAKE_ACK, "alpha", {"status": "starttls"}))
        connector.upgraded()
        challenge = {"nonce": "cd" * 32, "peer": "alpha", "caps": []}
        inside = connector.answer(
            _message(MessageType.CHALLENGE, "alpha", challenge), ("s" * 64, "c" * 64)
        )
        self.assertEqual((inside["listen"], inside["listen_tls"]), (9901, True))

    def test_acceptor_reads_inside_tls_only(self):
        """
        The acceptor notes a valid port from inside TLS; in clear, or a
        value that is not a port, it notes nothing (and refuses nothing).
        """
        for payload, binding, expected in [
            ({"listen": 9901}, ("s" * 64, "c" * 64), (9901, False)),
            ({"listen": 9901, "listen_tls": True}, ("s" * 64, "c" * 64), (9901, True)),
            ({"listen": 9901}, None, (None, False)),
            ({"listen": 0}, ("s" * 64, "c" * 64), (None, False)),
            ({"listen": True}, ("s" * 64, "c" * 64), (None, False)),
            ({"listen": "9901"}, ("s" * 64, "c" * 64), (None, False)),
        ]:
            acceptor = AcceptorHandshake(KeyStore(self.mktemp()), identity="alpha")
            message = _message(
                MessageType.HANDSHAKE, "beta", {"proof": "00", "nonce": "ab" * 32, **payload}
            )
            acceptor._read(message, binding)
            self.assertEqual((acceptor.listen_port, acceptor.listen_tls), expected)

    def test_inbound_remembered(self):
        """
        Two nodes on an in-memory network: the one dialled remembers the
        dialler's announced listening port (source C{inbound}), and after a
        restart redials it there.
        """
        network = make_clock()
        alpha_store, beta_store = self.paired_stores()
        alpha = RelayService(alpha_store, listen="tcp:0", reactor=network)
        alpha.startService()
        alpha_port = alpha.listener.port.getHost().port
        beta = RelayService(beta_store, listen="tcp:0", peers=[f"alpha@127.0.0.1:{alpha_port}"], reactor=network)
        beta.startService()
        network.advance(1)
        self.assertTrue(alpha.mesh.is_connected("beta"))
        beta_port = beta.listener.port.getHost().port
        self.assertNotEqual(beta_port, alpha_port)
        entry = AddressBook(alpha_store.path).get("beta")
        self.assertEqual((entry.address, entry.source), (f"beta@127.0.0.1:{beta_port}", INBOUND))
        self.assertEqual(AddressBook(beta_store.path).get("alpha").source, PEERS_OPTION)
        alpha.stopService()
        network.advance(1)
        restarted = RelayService(alpha_store, listen="tcp:0", reactor=network)
        restarted.startService()
        self.assertEqual([str(a) for a in restarted.dialled()], [f"beta@127.0.0.1:{beta_port}"])
        network.advance(1)
        self.assertTrue(restarted.mesh.is_connected("beta"))
        self.assertTrue(restarted.dial_connected(restarted.dialled()[0]))
        restarted.stopService()
        beta.stopService()
        network.advance(10)

    def test_connect_remembered_once_connected(self):
        """
        A C{connect} address is remembered once its dial connects: a wrong
        one never replaces the address the peer was joined at.
        """
        network = make_clock()
        alpha_store, beta_store = self.paired_stores()
        book = AddressBook(beta_store.path)
        book.record("alpha", f"127.0.0.1:{FIRST_LISTENING_PORT}", JOIN)
        alpha = RelayService(alpha_store, listen=f"tcp:{FIRST_LISTENING_PORT}", reactor=network)
        alpha.startService()
        beta = RelayService(beta_store, listen=None, reactor=network)
        beta.startService()
        network.advance(1)
        self.assertTrue(beta.mesh.is_connected("alpha"))  # redialled at the joined address
        beta.remove_peer("alpha")
        network.advance(1)
        wrong = parse_peer_address(f"alpha@127.0.0.1:{FIRST_LISTENING_PORT + 1}")  # nothing there
        beta.add_peer(wrong, CONNECT)
        network.advance(1)
        self.assertEqual(book.get("alpha").source, JOIN)
        self.assertEqual(beta.dialled(), [wrong])
        beta.add_peer(f"alpha@127.0.0.1:{FIRST_LISTENING_PORT}", CONNECT)
        self.assertEqual(book.get("alpha").source, JOIN)
        network.advance(1)
        self.assertTrue(beta.mesh.is_connected("alpha"))
        self.assertEqual(book.get("alpha").address, f"alpha@127.0.0.1:{FIRST_LISTENING_PORT}")
        self.assertEqual(book.get("alpha").source, CONNECT)
        # the wrong address, which never connected, is no longer dialled
        self.assertEqual([str(a) for a in beta.dialled()], [f"alpha@127.0.0.1:{FIRST_LISTENING_PORT}"])
        beta.stopService()
        alpha.stopService()
        network.advance(10)

    def test_bare_address_learned(self):
        """
        A dial to an address without a peer id is remembered under the id
        its handshake learned, with the dialler's source.
        """
        network = make_clock()
        alpha_store, beta_store = self.paired_stores()
        alpha = RelayService(alpha_store, listen=f"tcp:{FIRST_LISTENING_PORT}", reactor=network)
        alpha.startService()
        beta = RelayService(beta_store, listen=None, reactor=network)
        beta.startService()
        beta.add_peer(f"127.0.0.1:{FIRST_LISTENING_PORT}", CONNECT)
        self.assertIsNone(AddressBook(beta_store.path).get("alpha"))
        network.advance(1)
        entry = AddressBook(beta_store.path).get("alpha")
        self.assertEqual((entry.address, entry.source), (f"alpha@127.0.0.1:{FIRST_LISTENING_PORT}", CONNECT))
        # beta does not listen, so it announced nothing for alpha to remember
        self.assertIsNone(AddressBook(alpha_store.path).get("beta"))
        beta.stopService()
        alpha.stopService()
        network.advance(10)


class LogTests(SynchronousTestCase):
    def test_reconnect_names_address(self):
        """
        The reconnect log line of a dial whose peer is not known yet names
        the address, never "(unknown peer)".
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        from twisted.logger import Logger, formatEvent

        log_event(
            Logger(),
            PeerEvent(EventKind.RECONNECT_SCHEDULED, None, "127.0.0.1:9999", Direction.OUTBOUND, delay=60),
        )
        text = formatEvent(logged[0])
        self.assertNotIn("unknown peer", text)
        self.assertIn("127.0.0.1:9999", text)
