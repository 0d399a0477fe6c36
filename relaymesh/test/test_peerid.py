"""
Tests for L{relaymesh.peerid}: which names a node may give itself, as an
attacker would try them (peer ids become file names and go on the wire).
"""

from twisted.trial.unittest import SynchronousTestCase

from relaymesh.peerid import InvalidPeerId, is_valid_peer_id, validate_peer_id

#: Names to accept: every allowed character, and the lengths at the limits.
VALID = [
    "a",
    "Z",
    "0",
    "-",
    "_",
    "laptop-a3f2",
    "node_1-x",
    "pending",
    "_Pending",
    "__pending",
    "x" * 128,
    "0123456789-_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
]

#: Names to refuse, each with the one line that says why.
INVALID = [
    ("", "peer id is empty"),
    ("_pending", "'_pending' is reserved and cannot be a peer id"),
    ("x" * 129, "peer id is 129 characters long, at most 128 allowed"),
    ("x" * 100000, "peer id is 100000 characters long, at most 128 allowed"),
    (
        "x" * 127 + "/",
        f"invalid peer id {'x' * 40!r}: only ASCII letters, digits, '-' and '_' are allowed",
    ),
]

#: Names an attacker might try for a path, a second line or a look-alike;
#: each is refused as having a character outside the allowed ones.
HOSTILE = [
    "..",
    ".",
    "../keys",
    "a/b",
    "a\\b",
    "peer\n",
    "peer\r\nforged: line",
    "peer\x00",
    " peer",
    "peer ",
    "pe er",
    "a.b",
    "peer\u202e",
    "caf\u00e9",
    "\u0661\u0662",
    "\uff41",
    "_pending\n",
]


class PeerIdTests(SynchronousTestCase):
    """
    A peer id is 1 to 128 ASCII letters, digits, C{-} and C{_}, and not
    C{_pending}.
    """

    def test_valid(self):
        """
        Valid ids are accepted, and returned unchanged.
        """
        for value in VALID:
            self.assertTrue(is_valid_peer_id(value), value)
            self.assertIs(validate_peer_id(value), value)

    def test_invalidSaysWhy(self):
        """
        An invalid id is refused with one line saying why; at 128
        characters a bad character, not the length, is the reason.
        """
        for value, reason in INVALID:
            self.assertFalse(is_valid_peer_id(value), value[:20])
            error = self.assertRaises(InvalidPeerId, validate_peer_id, value)
            self.assertEqual(str(error), reason)

    def test_hostile(self):
        """
        Path separators, dots, white space, control characters, a new line
        at the end and letters or digits outside ASCII are refused, and the
        message shows the id escaped on one line.
        """
        for value in HOSTILE:
            self.assertFalse(is_valid_peer_id(value), repr(value))
            error = self.assertRaises(InvalidPeerId, validate_peer_id, value)
            self.assertEqual(
                str(error),
                f"invalid peer id {value!r}: only ASCII letters, digits, '-' and '_' are allowed",
            )
            self.assertNotIn("\n", str(error))

    def test_notAString(self):
        """
        Only a string can be a peer id: bytes, numbers and L{None} (as a
        JSON message or file might give) are refused naming their type.
        """
        for value, kind in [(b"peer", "bytes"), (7, "int"), (None, "NoneType"), (["peer"], "list")]:
            self.assertFalse(is_valid_peer_id(value))
            error = self.assertRaises(InvalidPeerId, validate_peer_id, value)
            self.assertEqual(str(error), f"peer id must be a string, not {kind}")

    def test_valueError(self):
        """
        L{InvalidPeerId} is a L{ValueError}, so callers that refuse bad
        values catch it.
        """
        self.assertTrue(issubclass(InvalidPeerId, ValueError))
