"""
Strong pairing: a short one-time code, stretched into a full 32-byte key
with SPAKE2 over the relay connection itself.

The code (C{7-guitar-revenge}: a number and two words) is a password for a
password-authenticated key exchange. Someone who watches the exchange learns
nothing that lets them test guesses offline; someone who talks to the node
gets one guess, after which the code is gone. Both sides confirm the derived
key before either uses it, and the key they keep is derived from the SPAKE2
secret and both peer ids.

Only relaymesh nodes pair this way; claudectl peers keep using 64-bit pair
codes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Mapping

from spake2 import SPAKE2_A, SPAKE2_B

from relaymesh.codes import wordlist

#: The two SPAKE2 roles' identities: fixed, so the transcript names the protocol.
CONNECTOR_IDENTITY = b"relaymesh-pair-connector-v1"
ACCEPTOR_IDENTITY = b"relaymesh-pair-acceptor-v1"

#: Words in a strong code, after its number.
CODE_WORDS = 2

#: The code's number runs from 1 to this.
CODE_NUMBER_MAX = 999

_CODE = re.compile(r"\A([1-9][0-9]{0,2})((?:-[a-z]+){" + str(CODE_WORDS) + r"})\Z")


class PakeError(Exception):
    """
    A pairing exchange that failed: a wrong code, or a broken message.
    """


class InvalidStrongCode(ValueError):
    """
    Text that is not a strong pairing code; the message says why.
    """


def generate_strong_code(randbelow: Callable[[int], int] = secrets.randbelow) -> str:
    """
    A fresh one-time code: C{<1..999>-<word>-<word>} from the relay word list.
    """
    words = wordlist()
    number = randbelow(CODE_NUMBER_MAX) + 1
    return "-".join([str(number)] + [words[randbelow(len(words))] for _ in range(CODE_WORDS)])


def normalize_strong_code(text: str) -> str:
    """
    The canonical form of a code as a person typed it (case and spaces
    ignored).

    @raise InvalidStrongCode: naming what is wrong.
    """
    code = re.sub(r"-+", "-", text.strip().lower().replace(" ", "-"))
    match = _CODE.match(code)
    if match is None:
        raise InvalidStrongCode(
            f"a strong code is a number from 1 to {CODE_NUMBER_MAX} and {CODE_WORDS} words, "
            f"like 7-guitar-revenge; got {text.strip()[:40]!r}"
        )
    known = set(wordlist())
    for word in match.group(2).split("-")[1:]:
        if word not in known:
            raise InvalidStrongCode(f"unknown word {word!r} in the strong code")
    return code


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").replace("=", "")


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str) or len(text) > 200:
        raise PakeError(f"missing or malformed {what}")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise PakeError(f"malformed {what}") from None


def _derive(secret: bytes, label: bytes, nonce: str, connector: str, acceptor: str) -> bytes:
    message = b"\x00".join([label, nonce.encode(), connector.encode(), acceptor.encode()])
    return hmac.new(secret, message, hashlib.sha256).digest()


def _confirmations(secret: bytes, nonce: str, connector: str, acceptor: str) -> tuple[bytes, bytes, bytes]:
    """
    The acceptor's and the connector's confirmation tags, and the new key.
    """
    return (
        _derive(secret, b"relaymesh pake acceptor confirm", nonce, connector, acceptor),
        _derive(secret, b"relaymesh pake connector confirm", nonce, connector, acceptor),
        _derive(secret, b"relaymesh pake psk", nonce, connector, acceptor),
    )


class _Spake2:
    """
    One side of a SPAKE2 exchange, typed: C{spake2} ships no type
    information, so what relaymesh uses of it goes through here.
    """

    def __init__(self, connector: bool, password: bytes) -> None:
        """
        @param connector: whether this is the connector's side (SPAKE2's A),
            else the acceptor's (B).
        @param password: the code.
        """
        side = SPAKE2_A if connector else SPAKE2_B
        self._spake = side(password, idA=CONNECTOR_IDENTITY, idB=ACCEPTOR_IDENTITY)

    def start(self) -> bytes:
        """
        This side's message.
        """
        message: bytes = self._spake.start()
        return message

    def finish(self, theirs: bytes) -> bytes:
        """
        The shared secret, from the other side's message.

        @raise Exception: whatever C{spake2} raises for a malformed message.
        """
        secret: bytes = self._spake.finish(theirs)
        return secret


class PakeConnector:
    """
    The joining side: knows the code, dials the inviting node.
    """

    def __init__(self, code: str) -> None:
        self._spake = _Spake2(True, normalize_strong_code(code).encode())
        self.message = _b64(self._spake.start())

    def finish(self, payload: Mapping[str, object], nonce: str, connector: str, acceptor: str) -> tuple[str, bytes]:
        """
        Check the acceptor's answer.

        @return: this side's confirmation tag (to send) and the new key.
        @raise PakeError: if the acceptor's tag does not match (a wrong
            code) or its message is malformed.
        """
        theirs = _unb64(payload.get("pake"), "pake message")
        try:
            secret = self._spake.finish(theirs)
        except Exception:
            raise PakeError("malformed pake message") from None
        acceptor_tag, connector_tag, key = _confirmations(secret, nonce, connector, acceptor)
        if not hmac.compare_digest(acceptor_tag, _unb64(payload.get("confirm"), "confirmation")):
            raise PakeError("the pairing code does not match the other node's")
        return _b64(connector_tag), key


class PakeAcceptor:
    """
    The inviting side: holds the armed code, answers one exchange.
    """

    def __init__(self, code: str) -> None:
        self._spake = _Spake2(False, code.encode())
        self._expected: bytes | None = None
        self.key: bytes | None = None

    def respond(self, their_message: object, nonce: str, connector: str, acceptor: str) -> dict[str, str]:
        """
        Answer the connector's SPAKE2 message.

        @return: the payload fields to send back (C{pake}, C{confirm}).
        @raise PakeError: if the message is malformed.
        """
        theirs = _unb64(their_message, "pake message")
        ours = self._spake.start()
        try:
            secret = self._spake.finish(theirs)
        except Exception:
            raise PakeError("malformed pake message") from None
        acceptor_tag, self._expected, self.key = _confirmations(secret, nonce, connector, acceptor)
        return {"pake": _b64(ours), "confirm": _b64(acceptor_tag)}

    def confirm(self, tag: object) -> bytes:
        """
        Check the connector's confirmation tag.

        @return: the new key.
        @raise PakeError: if the tag is wrong (the connector's code differs).
        """
        if self._expected is None or self.key is None:
            raise PakeError("no pake exchange in progress")
        if not hmac.compare_digest(self._expected, _unb64(tag, "confirmation")):
            raise PakeError("the pairing code does not match")
        return self.key
