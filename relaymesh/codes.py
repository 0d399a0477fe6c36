"""
Pair codes and claudectl's invite forms: encoding and decoding.

A I{pair code} shows an 8-byte prefix as C{xxxx-xxxx-xxxx-xxxx}; the key is
SHA-256 of the prefix with its first 8 bytes replaced by the prefix.

claudectl's C{relay invite} prints three more forms:

  - a I{relay code}: 9 bytes (IPv4 address, port byte, 4-byte key seed) in
    base32, C{XXX-XXX-XXX-XXX-XXX};
  - a I{word phrase}: the same 9 bytes as 9 words from a list of 256;
  - an I{invite link}: C{cctl://ID@HOST:PORT/k/<16 hex digits of a pair code>}.

The key of a relay code or word phrase is SHA-256 of the 4-byte seed with its
first 4 bytes replaced by the seed: only 32 bits of secret, and a different
key from the pair code's (claudectl 0.49.2 stores the pair code's key as
pending, so only its link pairs). Whoever prints one of these forms must
store the key that form decodes to.

Everything here is pure computation apart from reading the word list, which
ships in the package as C{wordlist.txt}.
"""

import base64
import functools
import hashlib
import importlib.resources
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from relaymesh.address import format_hostport, is_port_text
from relaymesh.peerid import validate_peer_id

PAIR_CODE_BYTES = 8  # claudectl: format_psk shows the first 8 bytes
PAIR_CODE_GROUP = 4  # claudectl: xxxx-xxxx-xxxx-xxxx

DEFAULT_PORT = 9847  # claudectl: DEFAULT_PORT
DEFAULT_PORT_BYTE = 128  # claudectl: the port byte's "default port" sentinel
MAX_PORT_BYTE = 255  # claudectl: port - 9847 is clamped to 0..255
FALLBACK_IPV4 = "127.0.0.1"  # claudectl: an IPv6 address is replaced by this

SEED_BYTES = 4  # claudectl: the first 4 bytes of the key
INVITE_BYTES = 9  # claudectl: 4 (IPv4) + 1 (port) + 4 (seed)
RELAY_CODE_LENGTH = 15  # claudectl: 9 bytes in base32, no padding
RELAY_CODE_GROUP = 3  # claudectl: XXX-XXX-XXX-XXX-XXX
WORD_COUNT = 256  # claudectl: one word per byte value

LINK_SCHEME = "cctl://"  # claudectl: cctl://
LINK_KEY_SEPARATOR = "/k/"  # claudectl: cctl://ID@HOST:PORT/k/CODE
MAX_WORD_LENGTH = 5  # claudectl join: segments of at most 5 letters are words

FORM_LINK = "link"
FORM_WORDS = "words"
FORM_RELAY_CODE = "relay_code"

WORDLIST_RESOURCE = "wordlist.txt"

_BASE32_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_ASCII_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?\Z"
)
_PAIR_HEX = re.compile(rf"[0-9A-Fa-f]{{{2 * PAIR_CODE_BYTES}}}\Z")
#: An IPv6 zone (an interface name or number) a link may carry.
_ZONE = re.compile(r"[A-Za-z0-9_.-]+\Z")


class InvalidCode(ValueError):
    """
    A code, phrase or link that cannot be decoded, or values that cannot be
    encoded; the message is one line saying what is wrong.
    """


@dataclass(frozen=True)
class Invite:
    """
    What an invite tells: where the inviting node listens and the key.

    @ivar host: the address to connect to.
    @ivar port: the TCP port to connect to.
    @ivar key: the 32-byte pre-shared key; C{None} for a strong code.
    @ivar identity: the inviting node's peer id, if the form carries it
        (only links do).
    @ivar form: the form decoded: L{FORM_LINK}, L{FORM_WORDS} or
        L{FORM_RELAY_CODE} (and relaymesh's own forms).
    @ivar strong_code: a one-time code to pair with by SPAKE2 instead of a
        key (relaymesh only), or C{None}.
    """

    host: str
    port: int
    key: bytes | None
    identity: str | None
    form: str
    strong_code: str | None = None

    @property
    def addr(self) -> str:
        """
        The address as C{host:port}, with brackets around an IPv6 host.
        """
        return format_hostport(self.host, self.port)


# Keys


def derive_pair_key(prefix: bytes) -> bytes:
    """
    Derive the key of a pair code or invite link from its 8-byte prefix.

    @param prefix: the 8 bytes the code shows.
    @return: SHA-256(prefix) with its first 8 bytes replaced by C{prefix}.
    @raise InvalidCode: if C{prefix} is not 8 bytes.
    """
    return _derive(prefix, PAIR_CODE_BYTES)


def derive_seed_key(seed: bytes) -> bytes:
    """
    Derive the key of a relay code or word phrase from its 4-byte seed.

    @param seed: the 4 bytes the code carries.
    @return: SHA-256(seed) with its first 4 bytes replaced by C{seed}.
    @raise InvalidCode: if C{seed} is not 4 bytes.
    """
    return _derive(seed, SEED_BYTES)


def _derive(secret: bytes, length: int) -> bytes:
    secret = _exact_bytes(secret, length, "key material")
    return secret + hashlib.sha256(secret).digest()[length:]


def _exact_bytes(value: bytes, length: int, what: str) -> bytes:
    """
    @return: C{value} as C{bytes} if it is C{length} bytes long.
    @raise InvalidCode: otherwise.
    """
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidCode(f"{what} must be bytes, not {type(value).__name__}")
    value = bytes(value)
    if len(value) != length:
        raise InvalidCode(f"{what} must be {length} bytes, not {len(value)}")
    return value


# Pair codes


def generate_pair_code(randbytes: Callable[[int], bytes] = os.urandom) -> str:
    """
    Make a new random pair code.

    @param randbytes: a function returning that many random bytes.
    @return: 8 random bytes as C{xxxx-xxxx-xxxx-xxxx}, lowercase hex.
    """
    return format_pair_code(randbytes(PAIR_CODE_BYTES))


def format_pair_code(prefix: bytes) -> str:
    """
    Show an 8-byte prefix as a pair code.

    @param prefix: the 8 bytes.
    @return: C{xxxx-xxxx-xxxx-xxxx} in lowercase hex.
    @raise InvalidCode: if C{prefix} is not 8 bytes.
    """
    digits = _exact_bytes(prefix, PAIR_CODE_BYTES, "a pair code prefix").hex()
    return "-".join(
        digits[i : i + PAIR_CODE_GROUP] for i in range(0, len(digits), PAIR_CODE_GROUP)
    )


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def pair_code_prefix(text: str) -> bytes:
    """
    Read the 8-byte prefix out of a pair code, as claudectl does.

    Every character that is not a hex digit is ignored.

    @param text: the pair code as typed.
    @return: the 8 bytes.
    @raise InvalidCode: unless exactly 16 hex digits are found; the message
        names the first character that is neither a hex digit nor a dash or
        space, and its position (from 1), as the likely typo.
    """
    digits = "".join(c for c in text if c in _HEX_DIGITS)
    if len(digits) != 2 * PAIR_CODE_BYTES:
        problem = f"a pair code has {2 * PAIR_CODE_BYTES} hex digits, found {len(digits)}"
        stray = next(
            ((i, c) for i, c in enumerate(text, 1) if c not in _HEX_DIGITS and c != "-" and not c.isspace()),
            None,
        )
        if stray is not None:
            position, character = stray
            problem += f": {character!r} at position {position} is not a hex digit (0-9, a-f)"
        raise InvalidCode(problem)
    return bytes.fromhex(digits)


def parse_pair_code(text: str) -> bytes:
    """
    Derive the key of a pair code.

    @param text: the pair code, e.g. C{0123-4567-89ab-cdef}; characters
        other than hex digits are ignored.
    @return: the 32-byte key.
    @raise InvalidCode: unless exactly 16 hex digits are found.
    """
    return derive_pair_key(pair_code_prefix(text))


# The 9 bytes of relay codes and word phrases


def encode_port_byte(port: int) -> int:
    """
    Encode a port as claudectl's invite port byte.

    @param port: the TCP port.
    @return: 128 for 9847, otherwise C{port - 9847} clamped to 0..255. Ports
        outside 9848..10102, and 9975, do not survive the trip: see
        L{decode_port_byte}.
    """
    if port == DEFAULT_PORT:
        return DEFAULT_PORT_BYTE
    return min(max(port - DEFAULT_PORT, 0), MAX_PORT_BYTE)


def decode_port_byte(value: int) -> int:
    """
    Decode claudectl's invite port byte.

    @param value: the byte, 0..255.
    @return: 9847 for 128, otherwise C{9847 + value} (so 0 is 9847 too).
    """
    if value == DEFAULT_PORT_BYTE:
        return DEFAULT_PORT
    return DEFAULT_PORT + value


def _invite_bytes(host: str, port: int, seed: bytes, strict: bool) -> bytes:
    """
    Pack the 9 bytes that relay codes and word phrases carry.

    @raise InvalidCode: if the values cannot be packed (or, when C{strict},
        would not decode to the same address).
    """
    _check_port(port)
    seed = _exact_bytes(seed, SEED_BYTES, "a key seed")
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise InvalidCode(
            f"relay codes and word phrases carry an IP address, not {host!r}"
        ) from None
    if address.version == 6:
        if strict:
            raise InvalidCode(
                f"relay codes and word phrases cannot carry the IPv6 address {host!r}"
            )
        address = ipaddress.IPv4Address(FALLBACK_IPV4)
    port_byte = encode_port_byte(port)
    if strict and decode_port_byte(port_byte) != port:
        raise InvalidCode(
            f"bad port {port}: relay codes and word phrases carry only "
            f"{DEFAULT_PORT} to {DEFAULT_PORT + MAX_PORT_BYTE}, "
            f"except {DEFAULT_PORT + DEFAULT_PORT_BYTE}"
        )
    return address.packed + bytes([port_byte]) + seed


def _invite_from_bytes(data: bytes, form: str) -> Invite:
    """
    Unpack the 9 bytes of a relay code or word phrase.
    """
    return Invite(
        host=str(ipaddress.IPv4Address(data[:4])),
        port=decode_port_byte(data[4]),
        key=derive_seed_key(data[5:INVITE_BYTES]),
        identity=None,
        form=form,
    )


# Relay codes


def encode_relay_code(host: str, port: int, seed: bytes, strict: bool = False) -> str:
    """
    Make a claudectl relay code.

    @param host: the IPv4 address to invite to; an IPv6 address becomes
        127.0.0.1, as in claudectl.
    @param port: the TCP port, encoded by L{encode_port_byte}.
    @param seed: the 4-byte key seed; the code's key is
        C{derive_seed_key(seed)}.
    @param strict: refuse an IPv6 address or a port the code cannot carry,
        instead of encoding another address as claudectl does.
    @return: 15 base32 characters in groups of three, e.g.
        C{YCU-ACM-UAA-AAQ-EAY}.
    @raise InvalidCode: if C{host} is not an IP address, C{port} is not a
        TCP port or C{seed} is not 4 bytes (or, when C{strict}, the code
        would decode to another address).
    """
    data = _invite_bytes(host, port, seed, strict)
    text = base64.b32encode(data).decode("ascii").rstrip("=")
    return "-".join(
        text[i : i + RELAY_CODE_GROUP] for i in range(0, len(text), RELAY_CODE_GROUP)
    )


def decode_relay_code(text: str) -> Invite:
    """
    Decode a claudectl relay code.

    Only letters and digits count, in either case: C{ycu acm uaa aaq eay}
    is the same code as C{YCU-ACM-UAA-AAQ-EAY}.

    @param text: the relay code.
    @return: the invite, with the key derived from the code's 4-byte seed.
    @raise InvalidCode: for a character outside base32, a length other than
        15 characters, or a code whose last character is not one base32
        encoding of 9 bytes ends with.
    """
    clean = "".join(c for c in text if c.isascii() and c.isalnum()).upper()
    for c in clean:
        if c not in _BASE32_ALPHABET:
            raise InvalidCode(
                f"bad character {c!r} in relay code (only A-Z and 2-7 are used)"
            )
    if len(clean) != RELAY_CODE_LENGTH:
        raise InvalidCode(
            f"wrong length for a relay code (got {len(clean)}, "
            f"want {RELAY_CODE_LENGTH} characters)"
        )
    data = base64.b32decode(clean + "=")
    if base64.b32encode(data).decode("ascii").rstrip("=") != clean:
        raise InvalidCode(
            f"bad last character {clean[-1]!r} in relay code "
            f"(no relay code ends with it)"
        )
    return _invite_from_bytes(data, FORM_RELAY_CODE)


# Word phrases


@functools.cache
def wordlist() -> tuple[str, ...]:
    """
    Return claudectl's 256 words, byte value N being word N.

    @return: the words, read once from the package's C{wordlist.txt}.
    @raise RuntimeError: if the shipped list is damaged.
    """
    resource = importlib.resources.files(__package__).joinpath(WORDLIST_RESOURCE)
    words = tuple(resource.read_text(encoding="ascii").split())
    if len(words) != WORD_COUNT or len(set(words)) != WORD_COUNT:
        raise RuntimeError(f"{WORDLIST_RESOURCE} must hold {WORD_COUNT} distinct words")
    return words


@functools.cache
def _word_values() -> dict[str, int]:
    return {word: value for value, word in enumerate(wordlist())}


def encode_word_phrase(host: str, port: int, seed: bytes, strict: bool = False) -> str:
    """
    Make a claudectl word phrase: the bytes of a relay code as words.

    @param host: the IPv4 address to invite to; an IPv6 address becomes
        127.0.0.1, as in claudectl.
    @param port: the TCP port, encoded by L{encode_port_byte}.
    @param seed: the 4-byte key seed; the phrase's key is
        C{derive_seed_key(seed)}.
    @param strict: refuse an IPv6 address or a port the phrase cannot carry.
    @return: 9 words joined by C{-}, e.g. C{nut-may-act-dub-jag-ace-act-age-aid}.
    @raise InvalidCode: as for L{encode_relay_code}.
    """
    words = wordlist()
    return "-".join(words[b] for b in _invite_bytes(host, port, seed, strict))


def decode_word_phrase(text: str) -> Invite:
    """
    Decode a claudectl word phrase.

    @param text: 9 words joined by C{-}, in any case.
    @return: the invite, with the key derived from its 4-byte seed.
    @raise InvalidCode: for a number of words other than 9 or a word not in
        the list.
    """
    segments = [segment.strip().lower() for segment in text.strip().split("-")]
    if len(segments) != INVITE_BYTES:
        raise InvalidCode(
            f"wrong length for a word phrase (got {len(segments)}, "
            f"want {INVITE_BYTES} words)"
        )
    values = _word_values()
    data = bytearray()
    for word in segments:
        if word not in values:
            raise InvalidCode(f"unknown word {word!r} in word phrase")
        data.append(values[word])
    return _invite_from_bytes(bytes(data), FORM_WORDS)


# Invite links


def encode_invite_link(identity: str, host: str, port: int, prefix: bytes) -> str:
    """
    Make a claudectl invite link.

    @param identity: the inviting node's peer id.
    @param host: the address to connect to (an IPv6 address is bracketed).
    @param port: the TCP port.
    @param prefix: the 8-byte pair code prefix; the link's key is
        C{derive_pair_key(prefix)}.
    @return: C{cctl://ID@HOST:PORT/k/<16 lowercase hex digits>}.
    @raise relaymesh.peerid.InvalidPeerId: if C{identity} is not valid.
    @raise InvalidCode: for a bad host, port or prefix.
    """
    identity = validate_peer_id(identity)
    _check_port(port)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    _check_host(host)
    prefix = _exact_bytes(prefix, PAIR_CODE_BYTES, "a pair code prefix")
    address = format_hostport(host, port)
    return f"{LINK_SCHEME}{identity}@{address}{LINK_KEY_SEPARATOR}{prefix.hex()}"


def decode_invite_link(text: str) -> Invite:
    """
    Decode a claudectl invite link.

    @param text: C{cctl://ID@HOST:PORT/k/CODE}, CODE being 16 hex digits.
    @return: the invite, with the identity and the pair code's key.
    @raise InvalidCode: for a missing part, a bad peer id, host, port or
        key code.
    """
    text = text.strip()
    if not text.startswith(LINK_SCHEME):
        raise InvalidCode(f"an invite link must start with {LINK_SCHEME}")
    rest = text[len(LINK_SCHEME) :]
    where, separator, code = rest.partition(LINK_KEY_SEPARATOR)
    if not separator:
        raise InvalidCode(f"missing {LINK_KEY_SEPARATOR!r} in invite link")
    identity, at, host_port = where.partition("@")
    if not at:
        raise InvalidCode("missing '@' in invite link")
    try:
        identity = validate_peer_id(identity)
    except ValueError as e:
        raise InvalidCode(f"bad peer id in invite link: {e}") from None
    host, port = _split_host_port(host_port)
    if _PAIR_HEX.match(code) is None:
        raise InvalidCode(
            f"bad key code in invite link: want {2 * PAIR_CODE_BYTES} hex digits"
        )
    return Invite(
        host=host,
        port=port,
        key=derive_pair_key(bytes.fromhex(code)),
        identity=identity,
        form=FORM_LINK,
    )


def _split_host_port(text: str) -> tuple[str, int]:
    """
    Split C{host:port} or C{[ipv6]:port}.

    @raise InvalidCode: for a missing or bad host or port.
    """
    if text.startswith("["):
        host, bracket, port_text = text[1:].partition("]")
        if not bracket or not port_text.startswith(":"):
            raise InvalidCode(f"bad address {text!r} in invite link")
        port_text = port_text[1:]
        if not _is_ip_address(host, version=6):
            raise InvalidCode(f"bad host {host!r} in invite link")
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise InvalidCode(f"missing port in invite link address {text!r}")
        try:
            if ":" in host:
                raise InvalidCode("an IPv6 address needs brackets")
            _check_host(host)
        except InvalidCode:
            raise InvalidCode(f"bad host {host!r} in invite link") from None
    if not is_port_text(port_text):
        raise InvalidCode(f"bad port {port_text[:20]!r} in invite link")
    port = int(port_text)
    try:
        _check_port(port)
    except InvalidCode:
        raise InvalidCode(f"bad port {port} in invite link") from None
    return host, port


def _is_ip_address(host: str, version: int | None = None) -> bool:
    """
    Whether C{host} is an IP address (of C{version}, if given); an IPv6
    zone is allowed only in letters, digits, C{.}, C{-} and C{_}, so that
    no character a terminal acts on rides along.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if version is not None and address.version != version:
        return False
    zone = address.scope_id if address.version == 6 else None
    return zone is None or _ZONE.match(zone) is not None


def _check_host(host: str) -> None:
    """
    @raise InvalidCode: unless C{host} is an IP address or a DNS name.
    """
    if _is_ip_address(host):
        return
    if _HOSTNAME.match(host) is None or host.replace(".", "").isdigit():
        raise InvalidCode(f"bad host {host!r}")


def _check_port(port: int) -> None:
    """
    @raise InvalidCode: unless C{port} is a TCP port number, 1..65535.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidCode(f"bad port {port!r}: a TCP port is 1 to 65535")


# Telling the forms apart


def detect_invite_form(text: str) -> str:
    """
    Tell which invite form C{text} is, as claudectl's C{relay join} does.

    C{cctl://} starts a link; text with a C{-} whose every C{-}-separated
    segment is at most 5 ASCII letters is a word phrase; anything else is
    a relay code. One fix over claudectl 0.49.2: a relay code made only of
    letters (like C{YCU-ACM-UAA-AAQ-EAY}) would pass for words there, so
    letters-only text of exactly 15 letters whose segments are not all words
    from the list is taken for a relay code.

    @param text: what the user gave.
    @return: L{FORM_LINK}, L{FORM_WORDS} or L{FORM_RELAY_CODE}.
    """
    text = text.strip()
    if text.startswith(LINK_SCHEME):
        return FORM_LINK
    segments = text.split("-")
    if "-" in text and all(
        len(segment) <= MAX_WORD_LENGTH and _ASCII_LETTERS.issuperset(segment)
        for segment in segments
    ):
        values = _word_values()
        all_words = all(segment.lower() in values for segment in segments)
        if not all_words and sum(map(len, segments)) == RELAY_CODE_LENGTH:
            return FORM_RELAY_CODE
        return FORM_WORDS
    return FORM_RELAY_CODE


def decode_invite(text: str) -> Invite:
    """
    Decode an invite in whichever form it is.

    @param text: a link, word phrase or relay code.
    @return: the invite.
    @raise InvalidCode: if it does not decode in the form it looks like.
    """
    decoders = {
        FORM_LINK: decode_invite_link,
        FORM_WORDS: decode_word_phrase,
        FORM_RELAY_CODE: decode_relay_code,
    }
    return decoders[detect_invite_form(text)](text)
