"""
Tests for L{relaymesh.handshake.pake}: strong one-time codes and SPAKE2 pairing.
"""

import base64
import hashlib
import hmac

from spake2 import SPAKE2_A, SPAKE2_B
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
        """
        The number is drawn below 999 and shifted to 1..999, each word from
        the whole list: the smallest draws give C{1-ace-ace}, the largest
        C{999} and the last word twice.
        """
        self.assertEqual(generate_strong_code(lambda n: 0), "1-ace-ace")
        last = wordlist()[-1]
        self.assertEqual(generate_strong_code(lambda n: n - 1), f"999-{last}-{last}")

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
            ("7-zzzzz-act", "unknown word 'zzzzz'"),
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

    def test_malformed_named(self):
        """
        A refusal names the field that is missing or malformed: the SPAKE2
        message, or the confirmation after a good message.
        """
        _, _, answer = exchange("7-ace-act", "7-ace-act")
        for refused, reason in [
            (lambda: PakeConnector("7-ace-act").finish({}, NONCE, "beta", "alpha"), "missing or malformed pake message"),
            (
                lambda: PakeConnector("7-ace-act").finish({"pake": answer["pake"]}, NONCE, "beta", "alpha"),
                "missing or malformed confirmation",
            ),
            (lambda: PakeAcceptor("7-ace-act").respond(None, NONCE, "beta", "alpha"), "missing or malformed pake message"),
            (lambda: PakeAcceptor("7-ace-act").respond("A" * 41, NONCE, "beta", "alpha"), "malformed pake message"),
        ]:
            with self.assertRaises(PakeError) as ctx:
                refused()
            self.assertEqual(str(ctx.exception), reason)

    def test_confirmation_lengths(self):
        """
        A confirmation is read as unpadded URL-safe base64 of any length up
        to 200 characters: one that decodes to anything but the right tag
        does not match, one that cannot be base64 (a length one past a
        multiple of four) is malformed, and a longer one is not read.
        """
        _, acceptor, _ = exchange("7-ace-act", "7-ace-act")
        for length in range(202):
            with self.assertRaises(PakeError) as ctx:
                acceptor.confirm("A" * length)
            if length > 200:
                reason = "missing or malformed confirmation"
            elif length % 4 == 1:
                reason = "malformed confirmation"
            else:
                reason = "the pairing code does not match"
            self.assertEqual(str(ctx.exception), reason, f"a confirmation of {length} characters")


def _b64(data):
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _documented(secret, label, nonce=NONCE, connector="beta", acceptor="alpha"):
    """
    C{HMAC-SHA256(K, label 0x00 Na 0x00 connector_id 0x00 acceptor_id)}.
    """
    data = b"\x00".join([label, nonce.encode(), connector.encode(), acceptor.encode()])
    return hmac.new(secret, data, hashlib.sha256).digest()


class DocumentedExchangeTests(SynchronousTestCase):
    """
    Each side pairs with a peer built from docs/protocol.rst alone (SPAKE2
    with the identities C{relaymesh-pair-connector-v1} and
    C{relaymesh-pair-acceptor-v1}, messages and tags in unpadded URL-safe
    base64, tags and key derived under the documented labels), so another
    implementation, or another version, that follows the document pairs.
    """

    IDENTITIES = {"idA": b"relaymesh-pair-connector-v1", "idB": b"relaymesh-pair-acceptor-v1"}

    def test_connector(self):
        connector = PakeConnector("7 ACE act")
        theirs = SPAKE2_B(b"7-ace-act", **self.IDENTITIES)
        answer = theirs.start()
        secret = theirs.finish(_unb64(connector.message))
        tag, key = connector.finish(
            {"pake": _b64(answer), "confirm": _b64(_documented(secret, b"relaymesh pake acceptor confirm"))},
            NONCE,
            "beta",
            "alpha",
        )
        self.assertEqual(tag, _b64(_documented(secret, b"relaymesh pake connector confirm")))
        self.assertEqual(key, _documented(secret, b"relaymesh pake psk"))

    def test_acceptor(self):
        theirs = SPAKE2_A(b"7-ace-act", **self.IDENTITIES)
        message = theirs.start()
        acceptor = PakeAcceptor("7-ace-act")
        answer = acceptor.respond(_b64(message), NONCE, "beta", "alpha")
        secret = theirs.finish(_unb64(answer["pake"]))
        tag = _documented(secret, b"relaymesh pake acceptor confirm")
        self.assertEqual(answer, {"pake": answer["pake"], "confirm": _b64(tag)})
        self.assertNotIn("=", answer["pake"] + answer["confirm"])
        key = acceptor.confirm(_b64(_documented(secret, b"relaymesh pake connector confirm")))
        self.assertEqual(key, _documented(secret, b"relaymesh pake psk"))
