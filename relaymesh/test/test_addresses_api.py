"""
The remembered addresses through the control API: C{POST /api/peers}
remembers, C{DELETE /api/peers/ID?forget=address|all} forgets, a dial to a
bare address is listed and stoppable, and a peer already connected is not
dialled at another address.
"""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from relaymesh.addresses import INBOUND, JOIN, SET_ADDRESS, AddressBook
from relaymesh.test.apisupport import ApiHarness


class AddressesApiTests(TestCase):
    timeout = 20

    def setUp(self):
        self.h = ApiHarness(self)
        self.book = AddressBook(self.h.keystore.path)

    @defer.inlineCallbacks
    def test_post_dials(self):
        """
        C{POST /api/peers} dials the address; it is remembered only once
        that dial connects (nothing listens here), and the peer rows show
        the address dialled and the one remembered with its source.
        """
        self.h.keystore.set_key("gamma", os.urandom(32))
        self.book.record("gamma", "127.0.0.1:9800", JOIN)
        code, body, _ = yield self.h.request("POST", "/api/peers", {"addr": "gamma@127.0.0.1:9900"})
        self.assertEqual(code, 202)
        self.h.clock.advance(1)
        code, body, _ = yield self.h.request("GET", "/api/peers/gamma")
        self.assertEqual(
            (body["stored_address"], body["address_source"], body["dial_address"], body["connected_by_dial"]),
            ("gamma@127.0.0.1:9800", JOIN, "gamma@127.0.0.1:9900", False),
        )
        code, body, _ = yield self.h.request(
            "POST", "/api/peers", {"addr": "gamma@127.0.0.1:9901", "source": INBOUND}
        )
        self.assertEqual(code, 400)
        self.assertIn("'source'", body["error"])

    @defer.inlineCallbacks
    def test_set_address_replaces_diallers(self):
        """
        An address set with C{set-address} replaces the peer's diallers.
        """
        self.h.keystore.set_key("gamma", os.urandom(32))
        yield self.h.request("POST", "/api/peers", {"addr": "gamma@127.0.0.1:9900"})
        code, body, _ = yield self.h.request(
            "POST", "/api/peers", {"addr": "gamma@127.0.0.1:9901", "source": SET_ADDRESS}
        )
        self.assertEqual(code, 202)
        self.assertEqual([str(a) for a in self.h.node.dialled()], ["gamma@127.0.0.1:9901"])
        self.assertEqual(self.book.get("gamma").source, SET_ADDRESS)

    @defer.inlineCallbacks
    def test_already_connected(self):
        """
        A peer connected through another link is not dialled at the address
        given, nor is it remembered: the answer says where it is connected.
        """
        self.h.connect_beta()
        code, body, _ = yield self.h.request("POST", "/api/peers", {"addr": "beta@127.0.0.1:9999"})
        self.assertEqual(code, 200)
        self.assertEqual(
            (body["already_connected"], body["connected_address"], body["direction"]),
            (True, "10.0.0.2:40000", "inbound"),
        )
        self.assertEqual(self.h.node.outbound(), [])
        self.assertIsNone(self.book.get("beta"))
        self.assertFalse(body["remembered"])

    @defer.inlineCallbacks
    def test_set_address_while_connected(self):
        """
        An address set with C{set-address} for a peer connected through
        another link is remembered at once, and not dialled.
        """
        self.h.connect_beta()
        code, body, _ = yield self.h.request(
            "POST", "/api/peers", {"addr": "beta@127.0.0.1:9999", "source": "set-address"}
        )
        self.assertEqual((code, body["already_connected"], body["remembered"]), (200, True, True))
        self.assertEqual(self.h.node.outbound(), [])
        entry = self.book.get("beta")
        self.assertEqual((entry.address, entry.source), ("beta@127.0.0.1:9999", SET_ADDRESS))

    @defer.inlineCallbacks
    def test_forget_address(self):
        """
        C{?forget=address} disconnects, stops dialling and forgets the
        address; the key stays.
        """
        beta, (server, client, pump) = self.h.connect_beta()
        self.h.node.add_peer("beta@10.0.0.2:9847", SET_ADDRESS)
        self.assertIsNotNone(self.book.get("beta"))
        code, body, _ = yield self.h.request("DELETE", "/api/peers/beta?forget=address")
        self.assertEqual(code, 200)
        self.assertEqual(
            body, {"peer_id": "beta", "was_connected": True, "stopped_dialling": True, "forgot_address": True}
        )
        pump.flush()
        self.assertIsNone(self.book.get("beta"))
        self.assertEqual(self.h.node.outbound(), [])
        self.assertIsNotNone(self.h.keystore.key("beta"))

    @defer.inlineCallbacks
    def test_forget_all(self):
        """
        C{?forget=all} forgets the peer entirely: it leaves the list, its
        connection is closed, its key and address are gone.
        """
        beta, (server, client, pump) = self.h.connect_beta()
        self.h.node.add_peer("beta@10.0.0.2:9847", SET_ADDRESS)
        code, body, _ = yield self.h.request("DELETE", "/api/peers/beta?forget=all")
        self.assertEqual((code, body["forgotten"], body["was_connected"]), (200, True, True))
        pump.flush()
        self.assertFalse(self.h.node.mesh.is_connected("beta"))
        self.assertIsNone(self.h.keystore.key("beta"))
        self.assertIsNone(self.book.get("beta"))
        code, body, _ = yield self.h.request("GET", "/api/peers")
        self.assertNotIn("beta", [p["peer_id"] for p in body["peers"] if p["state"] != "disconnected"])

    @defer.inlineCallbacks
    def test_forget_errors(self):
        self.h.connect_beta()
        code, body, _ = yield self.h.request("DELETE", "/api/peers/beta?forget=everything")
        self.assertEqual(code, 400)
        self.assertIn("forget", body["error"])
        self.assertTrue(self.h.node.mesh.is_connected("beta"))
        code, body, _ = yield self.h.request("DELETE", "/api/peers/nobody?forget=all")
        self.assertEqual(code, 404)

    @defer.inlineCallbacks
    def test_bare_address(self):
        """
        A dial to an address without a peer id is listed (no peer id, state
        C{dialling}, its address) and is stopped by C{DELETE} of its address.
        """
        self.h.keystore.set_key("gamma", os.urandom(32))
        code, body, _ = yield self.h.request("POST", "/api/peers", {"addr": "127.0.0.1:9999"})
        self.assertEqual(code, 202)
        code, body, _ = yield self.h.request("GET", "/api/peers")
        [row] = [p for p in body["peers"] if p["peer_id"] is None]
        self.assertEqual(
            (row["state"], row["address"], row["dial_address"], row["dialled"]),
            ("dialling", "127.0.0.1:9999", "127.0.0.1:9999", True),
        )
        self.assertIsNone(row["last_error"])
        [outbound] = self.h.node.outbound()
        connector = MemoryReactorClock().connectTCP("127.0.0.1", 9999, outbound.factory)
        outbound.factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        code, body, _ = yield self.h.request("GET", "/api/peers")
        [row] = [p for p in body["peers"] if p["peer_id"] is None]
        self.assertIn("connection refused", row["last_error"])
        self.assertIsNotNone(row["last_error_at"])
        code, body, _ = yield self.h.request("DELETE", "/api/peers/127.0.0.1:9999")
        self.assertEqual((code, body["stopped_dialling"]), (200, True))
        self.assertEqual(self.h.node.outbound(), [])
        code, body, _ = yield self.h.request("DELETE", "/api/peers/127.0.0.1:9999")
        self.assertEqual(code, 404)
