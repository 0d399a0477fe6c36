"""
Tests for L{relaymesh.handshake.pake}: strong one-time codes and SPAKE2 pairing.
"""

from twisted.trial.unittest import SynchronousTestCase

from relaymesh.codes import wordlist
from relaymesh.handshake.pake import (
    InvalidStrongCode,
    PakeAcceptor,
    PakeConnector,
    PakeError,
    generate_strong_code,
    normalize_strong_code,
)

NONCE = "ab" * 32


def exchange(connector_code, acceptor_code, nonce=NONCE):
    connector = PakeConnector(connector_code)
    acceptor = PakeAcceptor(normalize_strong_code(acceptor_code))
    answer = acceptor.respond(connector.message, nonce, "beta", "alpha")
    return connector, acceptor, answer


class CodeTests(SynchronousTestCase):
    def test_shape(self):
        """
        A code is a number from 1 to 999 and two words of the relay word list.
        """
        for _ in range(50):
            number, *words = generate_strong_code().split("-")
            self.assertTrue(1 <= int(number) <= 999)
            self.assertEqual(len(words), 2)
            self.assertTrue(set(words) <= set(wordlist()))

    def test_deterministic_source(self):
        self.assertEqual(generate_strong_code(lambda n: 0), "1-ace-ace")

    def test_normalize(self):
        self.assertEqual(normalize_strong_code("  7 ACE-act "), "7-ace-act")
        self.assertEqual(normalize_strong_code("7--ace--act"), "7-ace-act")

    def test_invalid(self):
        for text, fragment in [
            ("", "a strong code is"),
            ("ace-act", "a strong code is"),
            ("0-ace-act", "a strong code is"),
            ("1000-ace-act", "a strong code is"),
            ("7-ace", "a strong code is"),
            ("7-ace-zzzzz", "unknown word 'zzzzz'"),
            ("7-ace-act-age", "a strong code is"),
        ]:
            with self.assertRaises(InvalidStrongCode) as ctx:
                normalize_strong_code(text)
            self.assertIn(fragment, str(ctx.exception))


class ExchangeTests(SynchronousTestCase):
    def test_same_code_same_key(self):
        """
        With the same code both sides confirm and keep the same 32-byte key.
        """
        connector, acceptor, answer = exchange("7-ace-act", "7-ace-act")
        tag, key = connector.finish(answer, NONCE, "beta", "alpha")
        self.assertEqual(acceptor.confirm(tag), key)
        self.assertEqual(len(key), 32)

    def test_key_depends_on_exchange(self):
        """
        Two exchanges with the same code give different keys.
        """
        keys = set()
        for _ in range(2):
            connector, acceptor, answer = exchange("7-ace-act", "7-ace-act")
            keys.add(connector.finish(answer, NONCE, "beta", "alpha")[1])
        self.assertEqual(len(keys), 2)

    def test_wrong_code(self):
        """
        A wrong code is caught by the connector, before it sends anything
        derived from its guess.
        """
        connector, acceptor, answer = exchange("7-ace-act", "8-ace-act")
        with self.assertRaises(PakeError):
            connector.finish(answer, NONCE, "beta", "alpha")

    def test_wrong_confirmation(self):
        """
        The acceptor refuses a confirmation that does not match (a connector
        that does not hold the code cannot make one), and a connector that
        sees other peer ids than the acceptor refuses the answer.
        """
        connector, acceptor, answer = exchange("7-ace-act", "7-ace-act")
        with self.assertRaises(PakeError):
            connector.finish(answer, NONCE, "mallory", "alpha")
        with self.assertRaises(PakeError):
            acceptor.confirm("A" * 43)
        with self.assertRaises(PakeError):
            PakeAcceptor("7-ace-act").confirm("A" * 43)

    def test_malformed(self):
        acceptor = PakeAcceptor("7-ace-act")
        for message in (None, 5, "!!!", "A" * 300, "AAAA"):
            with self.assertRaises(PakeError):
                PakeAcceptor("7-ace-act").respond(message, NONCE, "beta", "alpha")
        connector = PakeConnector("7-ace-act")
        with self.assertRaises(PakeError):
            connector.finish({"pake": "AAAA", "confirm": "AAAA"}, NONCE, "beta", "alpha")
        with self.assertRaises(PakeError):
            connector.finish({}, NONCE, "beta", "alpha")
        self.assertIsNone(acceptor.key)
