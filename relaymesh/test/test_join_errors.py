"""
What a join prints about the network stays one line of visible text: an
address as given, a reason from the other side or from the system, and
what the key store noted about a used invite all go through
L{relaymesh.printable.printable} on their way to a terminal.
"""

from __future__ import annotations

import dataclasses
import json
import os

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from relaymesh.codes import InvalidCode
from relaymesh.join import JoinError, join_directly
from relaymesh.joinforms import parse_join_input
from relaymesh.keystore import KeyStore
from relaymesh.test.support import EPOCH
from relaymesh.tickets import USED_NOTE_FILE

#: Characters a terminal acts on, or that turn text around: escape (and an
#: OSC that writes the clipboard), bell, a new line, a right-to-left
#: override.
HOSTILE = "\x1b]52;c;aGk=\x07\n\u202e"

#: The characters of L{HOSTILE} that must never be printed as they are.
ACTIVE = "\x1b\x07\n\u202e"


def assertVisible(case: SynchronousTestCase, text: str) -> None:
    """
    C{text} holds none of L{ACTIVE}.
    """
    case.assertFalse(any(c in text for c in ACTIVE), repr(text))


class JoinErrorTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(EPOCH)
        self.store = KeyStore(self.mktemp())
        self.store.set_identity("beta")

    def start(self, host: str = "10.0.0.2"):
        invite = parse_join_input("0001-0203-0405-0607", "alpha@10.0.0.2:9847")
        # (A host with control characters never gets past the parsing of a
        # form, below; the join escapes one all the same.)
        invite = dataclasses.replace(invite, host=host)
        d = join_directly(self.store, invite, self.reactor)
        factory = self.reactor.tcpClients[-1][2]
        return d, factory

    def test_address_refused(self):
        """
        An address given with control characters is refused as it is
        parsed, in one line of visible text.
        """
        error = self.assertRaises(
            InvalidCode, parse_join_input, "0001-0203-0405-0607", f"alpha@ho{HOSTILE}st:9847"
        )
        self.assertIn("invalid host", str(error))
        assertVisible(self, str(error))

    def test_address(self):
        """
        An address with control characters is shown escaped.
        """
        d, factory = self.start(host="ho" + HOSTILE.replace("\n", "") + "st")
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        message = str(self.failureResultOf(d, JoinError).value)
        self.assertTrue(message.startswith("cannot connect to ho\\x1b]52;c;aGk=\\x07\\u202est:9847"), message)
        assertVisible(self, message)

    def test_systemReason(self):
        d, factory = self.start()
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError("refused" + HOSTILE)))
        message = str(self.failureResultOf(d, JoinError).value)
        self.assertIn("refused\\x1b]52", message)
        assertVisible(self, message)

    def test_handshakeReason(self):
        """
        A reason the connection ended with is shown escaped and cut short.
        """
        d, factory = self.start()
        protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.0.2", 9847))
        protocol.makeConnection(StringTransport())
        factory.handshakeFailed(protocol, "said " + HOSTILE + "x" * 1000)
        factory.clientConnectionLost(None, Failure(ConnectionRefusedError()))
        message = str(self.failureResultOf(d, JoinError).value)
        self.assertIn("(said \\x1b]52;c;aGk=\\x07\\n\\u202exxx", message)
        self.assertLess(len(message), 600)
        assertVisible(self, message)


class UsedNoteTests(SynchronousTestCase):
    def test_tamperedPeerId(self):
        """
        Who used an invite is read from a file in the data directory; what
        it says is shown escaped.
        """
        store = KeyStore(self.mktemp())
        store.arm([("invite", bytes(32))], EPOCH + 600)
        [armed] = store.armed_keys(EPOCH)
        store.claim_armed_key("beta", armed, EPOCH)
        path = os.path.join(store.path, USED_NOTE_FILE)
        with open(path) as f:
            note = json.load(f)
        note["peer_id"] = "beta" + HOSTILE
        with open(path, "w") as f:
            json.dump(note, f)
        message = store.used_invite(EPOCH).describe()
        self.assertIn("beta\\x1b]52", message)
        assertVisible(self, message)
