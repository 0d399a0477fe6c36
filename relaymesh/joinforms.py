"""
The forms of an invite a joining node may be given, and reading them.

Besides claudectl's forms (L{relaymesh.codes}), relaymesh prints its own
link, C{relaymesh://ID@HOST:PORT/k/<16 hex digits>}: the C{cctl://} link
under relaymesh's own scheme. The C{/k/} names the kind of secret that
follows; C{/s/<code>} is kept for strong one-time codes, which a relaymesh
that cannot use them refuses by name.

L{parse_join_input} reads whichever form a user gives C{relaymesh join}.
This module does not depend on Twisted.
"""

from __future__ import annotations

import dataclasses

from relaymesh.address import InvalidAddress, parse_peer_address
from relaymesh.armed import PAIR_CODE_FORM
from relaymesh.codes import (
    FORM_LINK,
    FORM_RELAY_CODE,
    FORM_WORDS,
    LINK_SCHEME,
    PAIR_CODE_BYTES,
    RELAY_CODE_LENGTH,
    InvalidCode,
    Invite,
    decode_invite,
    decode_invite_link,
    decode_relay_code,
    decode_word_phrase,
    detect_invite_form,
    encode_invite_link,
    parse_pair_code,
    wordlist,
)
from relaymesh.handshake.pake import InvalidStrongCode, normalize_strong_code
from relaymesh.handshake.proofs import STRONG_FORM

#: relaymesh's own invite link scheme.
RELAYMESH_LINK_SCHEME = "relaymesh://"

#: The kinds of secret a relaymesh link carries, after the address.
LINK_KIND_KEY = "k"  # /k/<16 hex digits>: the 64-bit pair code prefix
LINK_KIND_STRONG = "s"  # /s/<code>: a strong one-time code for SPAKE2

#: The forms a joining node pairs with; recorded as its C{paired_via}.
FORM_RELAYMESH_LINK = "relaymesh_link"
FORM_STRONG_LINK = "strong_link"  # a relaymesh link with a strong code
FORM_STRONG_CODE = STRONG_FORM  # a bare strong code with --peer
FORM_PAIR_CODE = PAIR_CODE_FORM

#: The forms of the keys an invite arms; recorded as the joiner's
#: C{paired_via} on the inviting node, which cannot tell apart forms that
#: carry the same key.
ARMED_INVITE = "invite"  # the links and the bare pair code
ARMED_INVITE_LEGACY = "invite_legacy"  # the relay code and the word phrase

#: How each C{paired_via} value reads in C{relaymesh peers}.
FORM_DESCRIPTIONS = {
    FORM_STRONG_CODE: "strong code",
    FORM_STRONG_LINK: "relaymesh link (strong code)",
    FORM_RELAYMESH_LINK: "relaymesh link",
    FORM_LINK: "cctl:// link",
    FORM_RELAY_CODE: "relay code",
    FORM_WORDS: "word phrase",
    FORM_PAIR_CODE: "pair code",
    ARMED_INVITE: "invite link or pair code",
    ARMED_INVITE_LEGACY: "relay code or word phrase",
}

#: The forms only a relaymesh node prints: its peer must prove the key back.
RELAYMESH_FORMS = (FORM_RELAYMESH_LINK, FORM_STRONG_LINK, FORM_STRONG_CODE)

#: The forms whose key has only 32 bits of secret.
LEGACY_FORMS = (FORM_RELAY_CODE, FORM_WORDS)

_HEX = frozenset("0123456789abcdefABCDEF")
_PAIR_CODE_SEPARATORS = frozenset("- \t")
_NOT_BASE32_DIGITS = frozenset("0189")


# The relaymesh link


def encode_relaymesh_link(identity: str, host: str, port: int, prefix: bytes) -> str:
    """
    Make a relaymesh invite link carrying a 64-bit pair code prefix.

    @param identity: the inviting node's peer id.
    @param host: the address to dial (an IPv6 address is bracketed).
    @param port: the TCP port.
    @param prefix: the 8-byte pair code prefix.
    @return: C{relaymesh://ID@HOST:PORT/k/<16 lowercase hex digits>}.
    @raise relaymesh.peerid.InvalidPeerId: if C{identity} is not valid.
    @raise InvalidCode: for a bad host, port or prefix.
    """
    link = encode_invite_link(identity, host, port, prefix)
    return RELAYMESH_LINK_SCHEME + link[len(LINK_SCHEME) :]


def encode_strong_link(identity: str, host: str, port: int, code: str) -> str:
    """
    Make a relaymesh invite link carrying a strong one-time code.

    @return: C{relaymesh://ID@HOST:PORT/s/<code>}.
    """
    base = encode_relaymesh_link(identity, host, port, bytes(PAIR_CODE_BYTES))
    return base.rsplit("/" + LINK_KIND_KEY + "/", 1)[0] + f"/{LINK_KIND_STRONG}/{normalize_strong_code(code)}"


def looks_like_strong_code(text: str) -> bool:
    """
    Whether C{text} is meant as a strong code: a number and two words.
    """
    parts = text.strip().split("-")
    return len(parts) == 3 and parts[0].isdigit() and all(p.isalpha() for p in parts[1:])


def decode_relaymesh_link(text: str) -> Invite:
    """
    Decode a relaymesh invite link.

    @param text: C{relaymesh://ID@HOST:PORT/k/CODE}; the scheme in any case.
    @return: the invite, with the identity and the pair code's key, of form
        L{FORM_RELAYMESH_LINK}.
    @raise InvalidCode: for a missing or bad part, or a kind of secret this
        version cannot use.
    """
    text = text.strip()
    if text[: len(RELAYMESH_LINK_SCHEME)].lower() != RELAYMESH_LINK_SCHEME:
        raise InvalidCode(f"a relaymesh invite link must start with {RELAYMESH_LINK_SCHEME}")
    rest = text[len(RELAYMESH_LINK_SCHEME) :]
    _, slash, after = rest.partition("/")
    kind = after.partition("/")[0]
    if slash and kind == LINK_KIND_STRONG:
        address, _, code = rest.partition("/" + LINK_KIND_STRONG + "/")
        try:
            code = normalize_strong_code(code)
        except InvalidStrongCode as e:
            raise InvalidCode(str(e)) from None
        invite = decode_invite_link(LINK_SCHEME + address + "/k/" + "0" * 16)
        return dataclasses.replace(invite, key=None, form=FORM_STRONG_LINK, strong_code=code)
    if slash and kind != LINK_KIND_KEY:
        raise InvalidCode(f"unknown code kind {kind[:10]!r} in relaymesh invite link (want /k/)")
    invite = decode_invite_link(LINK_SCHEME + rest)
    return dataclasses.replace(invite, form=FORM_RELAYMESH_LINK)


# Reading what a user gives to join


def _hex_only(text: str) -> bool:
    """
    Whether C{text} has hex digits and nothing but dashes and spaces besides.
    """
    chars = set(text)
    return chars <= _HEX | _PAIR_CODE_SEPARATORS and not chars <= _PAIR_CODE_SEPARATORS


def looks_like_pair_code(text: str) -> bool:
    """
    Whether C{text} is meant as a pair code rather than a relay code or a
    word phrase.

    It is if it holds only hex digits, dashes and spaces, and either 16 hex
    digits or a digit that no relay code has (0, 1, 8 or 9).

    @param text: what the user gave.
    """
    text = text.strip()
    if not _hex_only(text):
        return False
    digits = sum(c in _HEX for c in text)
    return digits == 2 * PAIR_CODE_BYTES or not _NOT_BASE32_DIGITS.isdisjoint(text)


def parse_join_input(text: str, peer: str | None = None) -> Invite:
    """
    Decode what a user gives C{relaymesh join}, in whichever form it is.

    C{relaymesh://} starts a relaymesh link, C{cctl://} a claudectl link; a
    pair code (see L{looks_like_pair_code}, or four groups of four typed
    with a typo) needs C{peer}; words and letters typed with spaces read as
    if typed with hyphens; one token no form could be is refused with the
    forms C{join} takes (L{JOIN_FORMS}); anything else is told apart as
    claudectl does (L{relaymesh.codes.decode_invite}).

    @param text: a link, relay code, word phrase or pair code.
    @param peer: C{ID@HOST:PORT}, the inviting node, for a bare pair code.
    @return: the invite.
    @raise InvalidCode: with one line saying what is wrong.
    """
    text = text.strip()
    if not text:
        raise InvalidCode(
            "empty invite: give a relaymesh:// or cctl:// link, a relay code, "
            "a word phrase, or a pair code with --peer"
        )
    if looks_like_strong_code(text):
        try:
            code = normalize_strong_code(text)
        except InvalidStrongCode as e:
            raise InvalidCode(str(e)) from None
        if peer is None:
            raise InvalidCode("a strong code needs --peer ID@HOST:PORT (the inviting node's id and address)")
        invite = _pair_code_invite(None, peer)
        return dataclasses.replace(invite, form=FORM_STRONG_CODE, strong_code=code)
    if looks_like_pair_code(text) or _pair_code_shaped(text) or (peer is not None and _hex_only(text)):
        key = parse_pair_code(text)
        if peer is None:
            raise InvalidCode(
                "a pair code needs --peer ID@HOST:PORT (the inviting node's id and address)"
            )
        return _pair_code_invite(key, peer)
    if peer is not None:
        raise InvalidCode("--peer goes only with a pair code; links and codes carry the address")
    if text[: len(RELAYMESH_LINK_SCHEME)].lower() == RELAYMESH_LINK_SCHEME:
        return decode_relaymesh_link(text)
    hyphenated = _hyphenated(text)
    if hyphenated != text:
        text = hyphenated
        if detect_invite_form(text) != FORM_WORDS and sum(c.isalpha() for c in text) != RELAY_CODE_LENGTH:
            return decode_word_phrase(text)  # not a relay code's length: words, with a word's error
    if _not_an_invite(text):
        raise InvalidCode(f"{text[:40]!r} is not an invite: {JOIN_FORMS}")
    if detect_invite_form(text) == FORM_WORDS:
        try:
            return decode_word_phrase(text)
        except InvalidCode:
            if not _no_words(text):
                raise
        return decode_relay_code(text)  # a relay code with a character too few or many
    return decode_invite(text)


#: What C{relaymesh join} takes, for the error about anything else.
JOIN_FORMS = (
    "join takes a relaymesh:// or cctl:// link, a relay code (15 letters and digits, "
    "XXX-XXX-XXX-XXX-XXX), a word phrase (9 words, joined by hyphens or spaces), or a pair code "
    "(xxxx-xxxx-xxxx-xxxx) or strong code with --peer ID@HOST:PORT"
)


def _hyphenated(text: str) -> str:
    """
    C{text} with the spaces between its parts turned into hyphens, when it
    is made only of letters and spaces: a word phrase (or relay code) typed
    with spaces, as read out, reads as the one typed with hyphens.
    """
    parts = text.split()
    if len(parts) > 1 and all(p.isascii() and p.isalpha() for p in parts):
        return "-".join(parts)
    return text


def _pair_code_shaped(text: str) -> bool:
    """
    Whether C{text} is four groups of four letters or digits joined by
    hyphens, the shape of a pair code (relay codes have five groups of
    three), whatever typo is in it.
    """
    groups = text.split("-")
    return len(groups) == 4 and all(len(g) == 4 and g.isascii() and g.isalnum() for g in groups)


def _not_an_invite(text: str) -> bool:
    """
    Whether C{text} is one word or token that no form could be a mistyped
    version of: no separators, and not the 15 characters of a relay code
    typed without them.
    """
    if any(c == "-" or c.isspace() or c == "/" for c in text):
        return False
    return sum(c.isascii() and c.isalnum() for c in text) != RELAY_CODE_LENGTH


def _no_words(text: str) -> bool:
    """
    Whether no C{-}-separated part of C{text} is a word of the word list.
    """
    words = set(wordlist())
    return not any(part.strip().lower() in words for part in text.split("-"))


def _pair_code_invite(key: bytes | None, peer: str) -> Invite:
    try:
        address = parse_peer_address(peer)
    except InvalidAddress as e:
        raise InvalidCode(f"--peer: {e}") from None
    if address.peer_id is None:
        raise InvalidCode(f"--peer needs the node's id too: ID@{address.hostport}")
    return Invite(address.host, address.port, key, address.peer_id, FORM_PAIR_CODE)
