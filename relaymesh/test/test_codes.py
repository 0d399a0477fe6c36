"""
Tests for L{relaymesh.codes}, checked against claudectl 0.49.2's own output,
and for how L{relaymesh.joinforms} tells apart what a user gives to join.
"""

import dataclasses
import json
import random
from io import StringIO

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from relaymesh import codes
from relaymesh.cli import live as cli_live
from relaymesh.cli.main import main
from relaymesh.codes import (
    FORM_LINK,
    FORM_RELAY_CODE,
    FORM_WORDS,
    InvalidCode,
    Invite,
    decode_invite,
    decode_invite_link,
    decode_port_byte,
    decode_relay_code,
    decode_word_phrase,
    derive_pair_key,
    derive_seed_key,
    detect_invite_form,
    encode_invite_link,
    encode_port_byte,
    encode_relay_code,
    encode_word_phrase,
    format_pair_code,
    generate_pair_code,
    parse_pair_code,
    wordlist,
)
from relaymesh.joinforms import (
    looks_like_pair_code,
    looks_like_strong_code,
    parse_join_input,
)
from relaymesh.keystore import KeyStore
from relaymesh.peerid import InvalidPeerId

FIXTURES = FilePath(__file__).sibling("fixtures")
VECTORS = json.loads(FIXTURES.child("claudectl-0.49.2-codes.json").getContent())

SEED = bytes.fromhex("00010203")
PREFIX = bytes.fromhex("0001020304050607")
#: What claudectl derives from SEED and PREFIX (from the vectors).
SEED_KEY = bytes.fromhex(
    "00010203d0211f624fed0cbca9d4f9400b0e491c43742af2c5b0abebf0c990d8"
)
PAIR_KEY = bytes.fromhex(
    "0001020304050607d09ec3847f1ddf44944104d2cbd17ef4e3db22c6785a0d45"
)
LINK = "cctl://laptop-a3f2@192.168.1.50:9847/k/0001020304050607"
RELAY_CODE = "YCU-ACM-UAA-AAQ-EAY"
WORD_PHRASE = "nut-may-act-dub-jag-ace-act-age-aid"


def splitAddress(addr: str) -> tuple[str, int]:
    """
    Split a vector's C{host:port}.
    """
    host, port = addr.rsplit(":", 1)
    return host, int(port)


class VectorTests(SynchronousTestCase):
    """
    Every pair code and invite from claudectl 0.49.2 encodes and decodes
    exactly as claudectl does.
    """

    def test_pairCodes(self):
        """
        A pair code's key is claudectl's C{parse_psk} result.
        """
        self.assertTrue(VECTORS["pair_codes"])
        for vector in VECTORS["pair_codes"]:
            self.assertEqual(parse_pair_code(vector["code"]).hex(), vector["psk"])

    def test_invitePairCodes(self):
        """
        The pair code shows the raw key's first 8 bytes, and its key is the
        canonical key claudectl stores as pending.
        """
        for vector in VECTORS["invites"]:
            raw = bytes.fromhex(vector["raw_psk"])
            self.assertEqual(format_pair_code(raw[:8]), vector["pair_code"])
            self.assertEqual(
                parse_pair_code(vector["pair_code"]).hex(), vector["canonical_psk"]
            )

    def test_encodeRelayCodes(self):
        """
        Relay codes are encoded from the address and the key's first 4 bytes.
        """
        for vector in VECTORS["invites"]:
            host, port = splitAddress(vector["addr"])
            seed = bytes.fromhex(vector["raw_psk"])[:4]
            self.assertEqual(encode_relay_code(host, port, seed), vector["relay_code"])
            self.assertEqual(
                encode_relay_code(host, port, seed, strict=True), vector["relay_code"]
            )

    def test_decodeRelayCodes(self):
        """
        Relay codes decode to claudectl's address and seed-derived key.
        """
        for vector in VECTORS["invites"]:
            invite = decode_relay_code(vector["relay_code"])
            expected = vector["relay_code_decodes_to"]
            self.assertEqual(invite.addr, expected["addr"])
            self.assertEqual(invite.key.hex(), expected["psk"])
            self.assertIsNone(invite.identity)
            self.assertEqual(invite.form, FORM_RELAY_CODE)

    def test_encodeWordPhrases(self):
        """
        Word phrases are encoded from the same 9 bytes as relay codes.
        """
        for vector in VECTORS["invites"]:
            host, port = splitAddress(vector["addr"])
            seed = bytes.fromhex(vector["raw_psk"])[:4]
            self.assertEqual(
                encode_word_phrase(host, port, seed), vector["word_phrase"]
            )

    def test_decodeWordPhrases(self):
        """
        Word phrases decode to claudectl's address and seed-derived key.
        """
        for vector in VECTORS["invites"]:
            invite = decode_word_phrase(vector["word_phrase"])
            expected = vector["word_phrase_decodes_to"]
            self.assertEqual(invite.addr, expected["addr"])
            self.assertEqual(invite.key.hex(), expected["psk"])
            self.assertIsNone(invite.identity)
            self.assertEqual(invite.form, FORM_WORDS)

    def test_encodeInviteLinks(self):
        """
        Invite links carry the identity, the address and the pair code.
        """
        for vector in VECTORS["invites"]:
            host, port = splitAddress(vector["addr"])
            prefix = bytes.fromhex(vector["raw_psk"])[:8]
            self.assertEqual(
                encode_invite_link("laptop-a3f2", host, port, prefix),
                vector["invite_link"],
            )

    def test_decodeInviteLinks(self):
        """
        Invite links decode to claudectl's identity, address and key.
        """
        for vector in VECTORS["invites"]:
            invite = decode_invite_link(vector["invite_link"])
            expected = vector["invite_link_decodes_to"]
            self.assertEqual(invite.addr, expected["addr"])
            self.assertEqual(invite.identity, expected["identity"])
            self.assertEqual(invite.key.hex(), expected["psk"])
            self.assertEqual(invite.key.hex(), vector["canonical_psk"])
            self.assertEqual(invite.form, FORM_LINK)

    def test_decodeInviteDetectsEveryForm(self):
        """
        L{decode_invite} tells every vector's form apart, including relay
        codes made only of letters, and decodes it.
        """
        for vector in VECTORS["invites"]:
            for field, form in [
                ("relay_code", FORM_RELAY_CODE),
                ("word_phrase", FORM_WORDS),
                ("invite_link", FORM_LINK),
            ]:
                self.assertEqual(detect_invite_form(vector[field]), form)
                invite = decode_invite(vector[field])
                self.assertEqual(invite.form, form)
                self.assertEqual(invite.key.hex(), vector[f"{field}_decodes_to"]["psk"])

    def test_seedKeyIsNotThePendingKey(self):
        """
        As the vectors record, the key of a relay code or word phrase is not
        the pair code's key claudectl stores as pending.
        """
        for vector in VECTORS["invites"]:
            self.assertFalse(vector["relay_code_key_matches_pending_key"])
            self.assertNotEqual(
                decode_relay_code(vector["relay_code"]).key.hex(),
                vector["canonical_psk"],
            )


class KeyDerivationTests(SynchronousTestCase):
    """
    Tests for L{derive_pair_key} and L{derive_seed_key}.
    """

    def test_pairKey(self):
        """
        The pair key is SHA-256 of the prefix, starting with the prefix.
        """
        self.assertEqual(derive_pair_key(PREFIX), PAIR_KEY)

    def test_seedKey(self):
        """
        The seed key is SHA-256 of the seed, starting with the seed.
        """
        self.assertEqual(derive_seed_key(SEED), SEED_KEY)

    def test_wrongLength(self):
        """
        Only 8-byte prefixes and 4-byte seeds are used.
        """
        self.assertRaises(InvalidCode, derive_pair_key, SEED)
        self.assertRaises(InvalidCode, derive_seed_key, PREFIX)
        self.assertRaises(InvalidCode, derive_seed_key, "0001")

    def test_wrongLengthSaysWhy(self):
        """
        Key material of the wrong length or type is refused with one line
        giving the length wanted and the length or type given.
        """
        for derive, value, message in [
            (derive_seed_key, PREFIX, "key material must be 4 bytes, not 8"),
            (derive_pair_key, SEED, "key material must be 8 bytes, not 4"),
            (derive_pair_key, PREFIX + b"\0", "key material must be 8 bytes, not 9"),
            (derive_seed_key, "0001", "key material must be bytes, not str"),
        ]:
            error = self.assertRaises(InvalidCode, derive, value)
            self.assertEqual(str(error), message)
        self.assertEqual(derive_pair_key(bytearray(PREFIX)), PAIR_KEY)
        self.assertEqual(derive_seed_key(memoryview(SEED)), SEED_KEY)


class PairCodeTests(SynchronousTestCase):
    """
    Tests for pair codes.
    """

    def test_generate(self):
        """
        A pair code is 8 random bytes in lowercase hex groups of four.
        """
        self.assertEqual(
            generate_pair_code(lambda n: PREFIX[:n]), "0001-0203-0405-0607"
        )
        self.assertEqual(
            generate_pair_code(lambda n: b"\xff\xee\xdd\xcc\xbb\xaa\x99\x88"[:n]),
            "ffee-ddcc-bbaa-9988",
        )

    def test_generateRandom(self):
        """
        By default the code is random.
        """
        generated = {generate_pair_code() for _ in range(5)}
        self.assertEqual(len(generated), 5)
        for code in generated:
            self.assertRegex(code, r"\A[0-9a-f]{4}(-[0-9a-f]{4}){3}\Z")
            self.assertEqual(parse_pair_code(code)[:8].hex(), code.replace("-", ""))

    def test_format(self):
        """
        L{format_pair_code} shows exactly 8 bytes.
        """
        self.assertEqual(format_pair_code(PREFIX), "0001-0203-0405-0607")
        self.assertRaises(InvalidCode, format_pair_code, PREFIX[:7])
        self.assertRaises(InvalidCode, format_pair_code, PREFIX + b"\0")

    def test_formatSaysWhy(self):
        """
        A prefix of the wrong length is refused with both lengths.
        """
        error = self.assertRaises(InvalidCode, format_pair_code, PREFIX[:7])
        self.assertEqual(str(error), "a pair code prefix must be 8 bytes, not 7")

    def test_parseIgnoresLettersPastF(self):
        """
        Letters past C{f}, in either case, are not hex digits: they neither
        count towards the 16 digits nor make the code unreadable.
        """
        for text in ["0001-0203-0405-0607-XYZ", "X0001-0203-0405-0607x", "G0001020304050607"]:
            self.assertEqual(parse_pair_code(text), PAIR_KEY, text)
        error = self.assertRaises(InvalidCode, parse_pair_code, "0001-0203-0405-060X")
        self.assertEqual(
            str(error), "a pair code has 16 hex digits, found 15: 'X' at position 19 is not a hex digit (0-9, a-f)"
        )

    def test_parseIgnoresOtherCharacters(self):
        """
        Only hex digits count, in either case.
        """
        for text in [
            "0001-0203-0405-0607",
            "0001020304050607",
            " 0001 0203 0405 0607\n",
            "0001-0203-0405-0607-",
            "0x0001:0203:0405:0607".replace("0x", ""),
        ]:
            self.assertEqual(parse_pair_code(text), PAIR_KEY)
        self.assertEqual(
            parse_pair_code("0123-4567-89AB-CDEF"),
            parse_pair_code("0123-4567-89ab-cdef"),
        )

    def test_parseRoundTrip(self):
        """
        Parsing a formatted prefix gives the prefix's key.
        """
        rng = random.Random(4)
        for _ in range(50):
            prefix = rng.randbytes(8)
            self.assertEqual(
                parse_pair_code(format_pair_code(prefix)), derive_pair_key(prefix)
            )

    def test_parseWrongCount(self):
        """
        Anything but 16 hex digits is refused, saying how many were found.
        """
        for text, found in [
            ("", 0),
            ("0001-0203-0405-060", 15),
            ("0001-0203-0405-0607-0", 17),
            ("bead", 4),
        ]:
            error = self.assertRaises(InvalidCode, parse_pair_code, text)
            self.assertEqual(
                str(error), f"a pair code has 16 hex digits, found {found}"
            )

    def test_parseWrongCountNamesTypo(self):
        """
        When the count is wrong, the first character that is neither a hex
        digit nor a dash or space is named, with its position from 1.
        """
        for text, found, typo in [
            ("ghij-klmn-opqr-stuv", 0, "'g' at position 1"),
            ("0123-4567-89ab-cdeg", 15, "'g' at position 19"),
            ("0123 4567 89ab\tcdx", 14, "'x' at position 18"),
            ("0123-4567-89ab-cd\x1b", 14, "'\\x1b' at position 18"),
        ]:
            error = self.assertRaises(InvalidCode, parse_pair_code, text)
            self.assertEqual(
                str(error),
                f"a pair code has 16 hex digits, found {found}: {typo} is not a hex digit (0-9, a-f)",
            )


class PortByteTests(SynchronousTestCase):
    """
    Tests for claudectl's invite port byte.
    """

    def test_encode(self):
        """
        9847 is 128; other ports are C{port - 9847}, clamped to 0..255.
        """
        for port, value in [
            (9847, 128),
            (9848, 1),
            (9900, 53),
            (9974, 127),
            (9975, 128),
            (9976, 129),
            (10102, 255),
            (10103, 255),
            (65535, 255),
            (9846, 0),
            (80, 0),
        ]:
            self.assertEqual(encode_port_byte(port), value, port)

    def test_decode(self):
        """
        128 is 9847; other bytes are C{9847 + byte}.
        """
        for value, port in [
            (128, 9847),
            (0, 9847),
            (1, 9848),
            (53, 9900),
            (255, 10102),
        ]:
            self.assertEqual(decode_port_byte(value), port)

    def test_claudectlLosesPorts(self):
        """
        By default ports are encoded as claudectl does, even those that come
        back as another port.
        """
        for port, decoded in [(9975, 9847), (80, 9847), (20000, 10102)]:
            invite = decode_relay_code(encode_relay_code("10.0.0.7", port, SEED))
            self.assertEqual(invite.port, decoded)
            invite = decode_word_phrase(encode_word_phrase("10.0.0.7", port, SEED))
            self.assertEqual(invite.port, decoded)

    def test_strictRefusesLostPorts(self):
        """
        With C{strict}, a port that would come back as another is refused.
        """
        for port in [9975, 80, 9846, 10103, 20000]:
            for encode in [encode_relay_code, encode_word_phrase]:
                error = self.assertRaises(
                    InvalidCode, encode, "10.0.0.7", port, SEED, strict=True
                )
                self.assertTrue(str(error).startswith(f"bad port {port}"))


class RelayCodeTests(SynchronousTestCase):
    """
    Tests for relay codes beyond the vectors.
    """

    def test_roundTrip(self):
        """
        Every carried address and seed survives encoding and decoding.
        """
        rng = random.Random(9)
        ports = [9847] + [p for p in range(9848, 10103) if p != 9975]
        for _ in range(200):
            host = ".".join(str(rng.randrange(256)) for _ in range(4))
            port = rng.choice(ports)
            seed = rng.randbytes(4)
            code = encode_relay_code(host, port, seed, strict=True)
            self.assertRegex(code, r"\A[A-Z2-7]{3}(-[A-Z2-7]{3}){4}\Z")
            self.assertEqual(
                decode_relay_code(code),
                Invite(host, port, derive_seed_key(seed), None, FORM_RELAY_CODE),
            )
            self.assertEqual(decode_invite(code).key, derive_seed_key(seed))

    def test_lenientInput(self):
        """
        Case, dashes, spaces and other punctuation do not matter.
        """
        for text in [
            "ycu-acm-uaa-aaq-eay",
            "YCUACMUAAAAQEAY",
            " YCU ACM UAA AAQ EAY\n",
            "YCU.ACM.UAA.AAQ.EAY",
        ]:
            self.assertEqual(decode_relay_code(text).key, SEED_KEY)
            self.assertEqual(decode_relay_code(text).addr, "192.168.1.50:9847")

    def test_badCharacter(self):
        """
        Digits outside base32 are refused by name.
        """
        for bad in "0189":
            text = "YCU-ACM-UAA-AAQ-EA" + bad
            error = self.assertRaises(InvalidCode, decode_relay_code, text)
            self.assertEqual(
                str(error),
                f"bad character {bad!r} in relay code (only A-Z and 2-7 are used)",
            )

    def test_wrongLength(self):
        """
        A code of other than 15 characters is refused with its length.
        """
        for text, length in [
            ("YCU-ACM-UAA-AAQ-EA", 14),
            ("YCU-ACM-UAA-AAQ-EAYA", 16),
            ("", 0),
            ("---", 0),
        ]:
            error = self.assertRaises(InvalidCode, decode_relay_code, text)
            self.assertEqual(
                str(error),
                f"wrong length for a relay code (got {length}, want 15 characters)",
            )

    def test_badLastCharacter(self):
        """
        The last character carries 2 bits and 3 zero bits: a last character
        with any of those bits set is no relay code.
        """
        error = self.assertRaises(InvalidCode, decode_relay_code, "YCU-ACM-UAA-AAQ-EAZ")
        self.assertIn("bad last character 'Z'", str(error))
        for last in "AIQY":
            decode_relay_code("YCU-ACM-UAA-AAQ-EA" + last)

    def test_ipv6(self):
        """
        An IPv6 address becomes 127.0.0.1 as in claudectl, or is refused
        with C{strict}.
        """
        for host in ["::1", "[2001:db8::7]"]:
            code = encode_relay_code(host, 9848, SEED)
            self.assertEqual(decode_relay_code(code).addr, "127.0.0.1:9848")
            self.assertRaises(
                InvalidCode, encode_relay_code, host, 9848, SEED, strict=True
            )

    def test_badValues(self):
        """
        Host names, bad ports and seeds that are not 4 bytes are refused.
        """
        for host, port, seed in [
            ("example.com", 9847, SEED),
            ("300.1.1.1", 9847, SEED),
            ("10.0.0.7", 0, SEED),
            ("10.0.0.7", 65536, SEED),
            ("10.0.0.7", True, SEED),
            ("10.0.0.7", "9847", SEED),
            ("10.0.0.7", 9847, SEED[:3]),
            ("10.0.0.7", 9847, PREFIX),
        ]:
            self.assertRaises(InvalidCode, encode_relay_code, host, port, seed)
            self.assertRaises(InvalidCode, encode_word_phrase, host, port, seed)

    def test_badValuesSayWhy(self):
        """
        A host that is not an IP address (only brackets around it are
        dropped), a seed that is not 4 bytes and a port out of range are
        refused with one line naming the value.
        """
        for host, port, seed, message in [
            ("10.0.0.7X", 9847, SEED, "carry an IP address, not '10.0.0.7X'"),
            ("X10.0.0.7", 9847, SEED, "carry an IP address, not 'X10.0.0.7'"),
            ("10.0.0.7", 9847, SEED[:3], "a key seed must be 4 bytes, not 3"),
            ("10.0.0.7", 9847, PREFIX, "a key seed must be 4 bytes, not 8"),
            ("10.0.0.7", 65536, SEED, "bad port 65536: a TCP port is 1 to 65535"),
            ("10.0.0.7", 0, SEED, "bad port 0: a TCP port is 1 to 65535"),
        ]:
            for encode in [encode_relay_code, encode_word_phrase]:
                error = self.assertRaises(InvalidCode, encode, host, port, seed)
                self.assertIn(message, str(error))
                self.assertNotIn("\n", str(error))
        self.assertEqual(
            decode_relay_code(encode_relay_code("[10.0.0.7]", 9848, SEED)).addr,
            "10.0.0.7:9848",
        )

    def test_highestPort(self):
        """
        65535 is a TCP port: it is encoded (as claudectl does, clamped to
        the highest port byte), though C{strict} refuses it as lost.
        """
        self.assertEqual(decode_relay_code(encode_relay_code("10.0.0.7", 65535, SEED)).port, 10102)
        self.assertEqual(decode_word_phrase(encode_word_phrase("10.0.0.7", 65535, SEED)).port, 10102)
        error = self.assertRaises(
            InvalidCode, encode_relay_code, "10.0.0.7", 65535, SEED, strict=True
        )
        self.assertEqual(
            str(error),
            "bad port 65535: relay codes and word phrases carry only 9847 to 10102, except 9975",
        )


class WordPhraseTests(SynchronousTestCase):
    """
    Tests for word phrases beyond the vectors.
    """

    def test_packagedWordList(self):
        """
        The package ships claudectl's 256 distinct words, in order.
        """
        expected = FIXTURES.child("claudectl-0.49.2-wordlist.txt").getContent()
        self.assertEqual(list(wordlist()), expected.decode("ascii").split())
        self.assertEqual(len(set(wordlist())), 256)
        self.assertEqual((wordlist()[0], wordlist()[255]), ("ace", "rum"))

    def test_damagedWordList(self):
        """
        A shipped word list that has not 256 distinct words is refused
        rather than used: with it, phrases would decode to other bytes.
        """
        words = list(wordlist())
        self.addCleanup(wordlist.cache_clear)
        for damaged in [words[:255], words + ["zzz"], words[:255] + [words[0]]]:
            path = FilePath(self.mktemp())
            path.setContent("\n".join(damaged).encode("ascii"))
            self.patch(codes, "WORDLIST_RESOURCE", path.path)
            wordlist.cache_clear()
            error = self.assertRaises(RuntimeError, wordlist)
            self.assertEqual(str(error), f"{path.path} must hold 256 distinct words")
        path.setContent("\n".join(words).encode("ascii"))
        wordlist.cache_clear()
        self.assertEqual(list(wordlist()), words)

    def test_roundTrip(self):
        """
        Every byte value is a word, and phrases decode to what was encoded.
        """
        rng = random.Random(7)
        for value in range(256):
            host = f"10.{value}.{255 - value}.1"
            seed = bytes([value, 255 - value, rng.randrange(256), rng.randrange(256)])
            port = 9848 + (value % 127)
            phrase = encode_word_phrase(host, port, seed)
            self.assertEqual(len(phrase.split("-")), 9)
            self.assertEqual(
                decode_word_phrase(phrase),
                Invite(host, port, derive_seed_key(seed), None, FORM_WORDS),
            )
            self.assertEqual(detect_invite_form(phrase), FORM_WORDS)

    def test_sameBytesAsRelayCode(self):
        """
        A phrase and a relay code of the same invite decode alike.
        """
        self.assertEqual(
            dataclasses.replace(decode_word_phrase(WORD_PHRASE), form=FORM_RELAY_CODE),
            decode_relay_code(RELAY_CODE),
        )

    def test_lenientInput(self):
        """
        Case and spaces around the words do not matter.
        """
        for text in [WORD_PHRASE.upper(), " Nut-May-act - dub-jag-ace-act-age-aid\n"]:
            self.assertEqual(decode_word_phrase(text), decode_word_phrase(WORD_PHRASE))

    def test_wrongLength(self):
        """
        A phrase of other than 9 words is refused with its length.
        """
        for text, count in [
            ("nut-may-act-dub-jag-ace-act-age", 8),
            (WORD_PHRASE + "-ace", 10),
            ("nut", 1),
        ]:
            error = self.assertRaises(InvalidCode, decode_word_phrase, text)
            self.assertEqual(
                str(error),
                f"wrong length for a word phrase (got {count}, want 9 words)",
            )

    def test_unknownWord(self):
        """
        A word not in the list is refused by name.
        """
        error = self.assertRaises(
            InvalidCode, decode_word_phrase, "nut-may-act-dub-jag-ace-act-age-xyz"
        )
        self.assertEqual(str(error), "unknown word 'xyz' in word phrase")
        error = self.assertRaises(
            InvalidCode, decode_word_phrase, "nut-may--dub-jag-ace-act-age-aid"
        )
        self.assertEqual(str(error), "unknown word '' in word phrase")


class InviteLinkTests(SynchronousTestCase):
    """
    Tests for invite links beyond the vectors.
    """

    def test_roundTrip(self):
        """
        Links to IPv4 and IPv6 addresses and host names decode to what was
        encoded.
        """
        rng = random.Random(3)
        for host, addr in [
            ("10.0.0.7", "10.0.0.7:{}"),
            ("::1", "[::1]:{}"),
            ("[2001:db8::7]", "[2001:db8::7]:{}"),
            ("relay.example.com", "relay.example.com:{}"),
            ("localhost", "localhost:{}"),
        ]:
            prefix = rng.randbytes(8)
            port = rng.randrange(1, 65536)
            link = encode_invite_link("node_1-x", host, port, prefix)
            self.assertEqual(
                link, f"cctl://node_1-x@{addr.format(port)}/k/{prefix.hex()}"
            )
            invite = decode_invite_link(link)
            self.assertEqual(
                invite,
                Invite(
                    host.strip("[]"),
                    port,
                    derive_pair_key(prefix),
                    "node_1-x",
                    FORM_LINK,
                ),
            )
            self.assertEqual(invite.addr, addr.format(port))
            self.assertEqual(decode_invite(link), invite)

    def test_uppercaseKeyCode(self):
        """
        The key code may be in uppercase, and space around the link is
        ignored.
        """
        invite = decode_invite_link("  " + LINK + "\n")
        self.assertEqual(invite.key, PAIR_KEY)
        self.assertEqual(
            decode_invite_link("cctl://n@h:1/k/FFEEDDCCBBAA9988").key,
            derive_pair_key(bytes.fromhex("ffeeddccbbaa9988")),
        )

    def assertMalformed(self, text: str, message: str) -> None:
        """
        Assert that C{text} is refused with a one-line message containing
        C{message}.
        """
        error = self.assertRaises(InvalidCode, decode_invite_link, text)
        self.assertIn(message, str(error))
        self.assertNotIn("\n", str(error))

    def test_scheme(self):
        """
        A link starts with C{cctl://}.
        """
        for text in [
            "http://x@h:1/k/0001020304050607",
            "CCTL://x@h:1/k/0001020304050607",
            "",
        ]:
            self.assertMalformed(text, "must start with cctl://")

    def test_missingParts(self):
        """
        The C{/k/} and the C{@} are required.
        """
        self.assertMalformed("cctl://laptop@10.0.0.7:9847", "missing '/k/'")
        self.assertMalformed("cctl://10.0.0.7:9847/k/0001020304050607", "missing '@'")

    def test_badPeerId(self):
        """
        The identity must be a valid peer id.
        """
        for identity in ["", "bad id", "_pending", "a.b", "x" * 129, "a/b"]:
            self.assertMalformed(
                f"cctl://{identity}@10.0.0.7:9847/k/0001020304050607",
                "bad peer id in invite link",
            )

    def test_badPort(self):
        """
        The port must be a TCP port number written in digits.
        """
        for port in [
            "0",
            "65536",
            "99999",
            "abc",
            "",
            "+80",
            " 80",
            "80 ",
            "123456",
            "9847/x",
        ]:
            self.assertMalformed(
                f"cctl://laptop@10.0.0.7:{port}/k/0001020304050607", "bad port"
            )
        self.assertMalformed(
            "cctl://laptop@10.0.0.7/k/0001020304050607", "missing port"
        )

    def test_badHost(self):
        """
        The host must be an IP address or a host name; IPv6 in brackets.
        """
        for host in ["", "300.1.1.1", "1.2.3", "bad_host", "a..b", "-x", "::1", "b@c"]:
            self.assertMalformed(
                f"cctl://laptop@{host}:9847/k/0001020304050607", "bad host"
            )
        self.assertMalformed(
            "cctl://laptop@[zz::1]:9847/k/0001020304050607", "bad host 'zz::1'"
        )
        self.assertMalformed(
            "cctl://laptop@[::1]9847/k/0001020304050607", "bad address"
        )

    def test_badKeyCode(self):
        """
        The key code must be exactly 16 hex digits.
        """
        for code in [
            "",
            "000102030405060",
            "00010203040506070",
            "0001-0203-0405-06",
            "000102030405060g",
            "0001020304050607/",
            "0001020304050607?x=1",
        ]:
            self.assertMalformed(
                f"cctl://laptop@10.0.0.7:9847/k/{code}",
                "bad key code in invite link: want 16 hex digits",
            )

    def test_encodeBadValues(self):
        """
        Encoding refuses a bad identity, host, port or prefix.
        """
        self.assertRaises(InvalidPeerId, encode_invite_link, "bad id", "h", 1, PREFIX)
        self.assertRaises(InvalidCode, encode_invite_link, "n", "bad host", 1, PREFIX)
        self.assertRaises(InvalidCode, encode_invite_link, "n", "h", 0, PREFIX)
        self.assertRaises(InvalidCode, encode_invite_link, "n", "h", 1, PREFIX[:4])

    def test_portLimits(self):
        """
        A link carries any TCP port, 1 to 65535; 0 and 65536 are refused
        both ways.
        """
        for port in [1, 65535]:
            link = encode_invite_link("n", "10.0.0.7", port, PREFIX)
            self.assertEqual(link, f"cctl://n@10.0.0.7:{port}/k/0001020304050607")
            self.assertEqual(decode_invite_link(link).port, port)
        for port in [0, 65536]:
            error = self.assertRaises(InvalidCode, encode_invite_link, "n", "10.0.0.7", port, PREFIX)
            self.assertEqual(str(error), f"bad port {port}: a TCP port is 1 to 65535")
            self.assertMalformed(
                f"cctl://n@10.0.0.7:{port}/k/0001020304050607", f"bad port {port} in invite link"
            )

    def test_ipv6Zone(self):
        """
        A link-local IPv6 address may name its zone (an interface) in
        letters, digits, C{.}, C{-} and C{_}; a zone with any other
        character (a terminal escape, a new line, a right-to-left override,
        a space) is refused both ways, with one line.
        """
        for host in ["fe80::1%eth0", "fe80::1%3", "fe80::1%br-lan.10_x"]:
            link = encode_invite_link("n", host, 1, PREFIX)
            self.assertEqual(link, f"cctl://n@[{host}]:1/k/0001020304050607")
            self.assertEqual(decode_invite_link(link).host, host)
        for zone in ["\x1b[31m\x07", "eth0\n", "\u202e", "eth 0", "eth/0", "\u00e9"]:
            host = "fe80::1%" + zone
            error = self.assertRaises(InvalidCode, encode_invite_link, "n", host, 1, PREFIX)
            self.assertEqual(str(error), f"bad host {host!r}")
            self.assertMalformed(
                f"cctl://n@[{host}]:1/k/0001020304050607", f"bad host {host!r} in invite link"
            )
            error = self.assertRaises(
                InvalidCode, encode_relay_code, host, 9847, SEED, strict=True
            )
            self.assertIn("relay codes and word phrases ", str(error))
            self.assertTrue(str(error).endswith(f" {host!r}"), str(error))
        self.assertMalformed(
            "cctl://n@[10.0.0.7]:1/k/0001020304050607", "bad host '10.0.0.7' in invite link"
        )

    def test_encodeSaysWhy(self):
        """
        Encoding a link with a host bracketed on one side only, or a prefix
        that is not 8 bytes, is refused naming the value.
        """
        for host in ["[::1", "::1]", "[10.0.0.7", "10.0.0.7]"]:
            error = self.assertRaises(InvalidCode, encode_invite_link, "n", host, 1, PREFIX)
            self.assertEqual(str(error), f"bad host {host!r}")
        error = self.assertRaises(InvalidCode, encode_invite_link, "n", "h", 1, PREFIX[:4])
        self.assertEqual(str(error), "a pair code prefix must be 8 bytes, not 4")

    def test_peerIdReasons(self):
        """
        A link naming a bad peer id (one an attacker could use to reach a
        file of the key store, or to flood a log) is refused, and the one
        line says why: empty, reserved, longer than 128 characters, or a
        character outside letters, digits, C{-} and C{_}. 128 characters
        are allowed.
        """
        for identity, reason in [
            ("", "peer id is empty"),
            ("_pending", "'_pending' is reserved and cannot be a peer id"),
            ("x" * 129, "peer id is 129 characters long, at most 128 allowed"),
            ("x" * 1000, "peer id is 1000 characters long, at most 128 allowed"),
            (
                "x" * 127 + ".",
                f"invalid peer id {'x' * 40!r}: only ASCII letters, digits, '-' and '_' are allowed",
            ),
            (
                "..",
                "invalid peer id '..': only ASCII letters, digits, '-' and '_' are allowed",
            ),
        ]:
            link = f"cctl://{identity}@10.0.0.7:9847/k/0001020304050607"
            error = self.assertRaises(InvalidCode, decode_invite_link, link)
            self.assertEqual(str(error), f"bad peer id in invite link: {reason}")
            error = self.assertRaises(InvalidPeerId, encode_invite_link, identity, "h", 1, PREFIX)
            self.assertEqual(str(error), reason)
        longest = "x" * 128
        link = encode_invite_link(longest, "10.0.0.7", 9847, PREFIX)
        self.assertEqual(decode_invite_link(link).identity, longest)
        error = self.assertRaises(InvalidPeerId, encode_invite_link, 7, "h", 1, PREFIX)
        self.assertEqual(str(error), "peer id must be a string, not int")


class DetectInviteFormTests(SynchronousTestCase):
    """
    Tests for L{detect_invite_form}.
    """

    def test_link(self):
        """
        Text starting with C{cctl://} is a link, whatever follows.
        """
        self.assertEqual(detect_invite_form(LINK), FORM_LINK)
        self.assertEqual(detect_invite_form(" cctl://junk"), FORM_LINK)

    def test_words(self):
        """
        Dash-separated segments of at most 5 ASCII letters are words, even
        when there are not 9 of them or they are not in the list.
        """
        for text in [
            WORD_PHRASE,
            WORD_PHRASE.upper(),
            "ace-act",
            "nut-may-act-dub-jag-ace-act-age-xyz",
            "brave-tiger-quiet-river-bold",
            "ace-act-age-aid-aim",
        ]:
            self.assertEqual(detect_invite_form(text), FORM_WORDS, text)

    def test_relayCode(self):
        """
        Anything else is a relay code.
        """
        for text in [
            "P4A-AAA-IBA-AAQ-EAY",
            "P4AAAAIBAAAQEAY",
            "abcdef-ghi",
            "word",
            "ab1-cd",
            "",
        ]:
            self.assertEqual(detect_invite_form(text), FORM_RELAY_CODE, text)

    def test_lettersOnlyRelayCode(self):
        """
        A relay code made only of letters would look like words to
        claudectl 0.49.2; 15 letters that are not all words make a relay
        code here.
        """
        self.assertEqual(detect_invite_form(RELAY_CODE), FORM_RELAY_CODE)
        self.assertEqual(detect_invite_form(RELAY_CODE.lower()), FORM_RELAY_CODE)
        self.assertEqual(decode_invite(RELAY_CODE), decode_relay_code(RELAY_CODE))

    def test_decodeInviteErrors(self):
        """
        L{decode_invite} reports the error of the form the text looks like.
        """
        error = self.assertRaises(InvalidCode, decode_invite, "ace-act")
        self.assertIn("want 9 words", str(error))
        error = self.assertRaises(InvalidCode, decode_invite, "P4A-AAA-IBA-AAQ")
        self.assertIn("want 15 characters", str(error))
        error = self.assertRaises(InvalidCode, decode_invite, "cctl://x")
        self.assertIn("missing '/k/'", str(error))

    def test_formNames(self):
        """
        The form a decoded invite names is stored as the peer's
        C{paired_via}: the names are fixed, for key stores written earlier.
        """
        self.assertEqual(
            [decode_invite(text).form for text in [LINK, WORD_PHRASE, RELAY_CODE]],
            ["link", "words", "relay_code"],
        )


class InviteTests(SynchronousTestCase):
    """
    Tests for L{Invite}.
    """

    def test_frozen(self):
        """
        An invite cannot be changed.
        """
        invite = decode_invite_link(LINK)
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, invite, "port", 1)

    def test_addr(self):
        """
        C{addr} is C{host:port}, IPv6 hosts in brackets.
        """
        self.assertEqual(
            Invite("10.0.0.7", 9847, PAIR_KEY, None, FORM_LINK).addr, "10.0.0.7:9847"
        )
        self.assertEqual(
            Invite("::1", 9847, PAIR_KEY, None, FORM_LINK).addr, "[::1]:9847"
        )

    def test_invalidCodeIsValueError(self):
        """
        L{InvalidCode} is a L{ValueError}.
        """
        self.assertTrue(issubclass(InvalidCode, ValueError))
        self.assertIs(codes.InvalidCode, InvalidCode)


class JoinInputTests(SynchronousTestCase):
    """
    How L{parse_join_input} tells a strong code, a pair code, a relay code
    and a word phrase apart, beyond what C{test_invite} checks.
    """

    PEER = "alpha@10.0.0.2:9847"

    def assertRefused(self, message: str, text: str, peer: str | None = None) -> None:
        """
        Assert that C{text} (with C{peer}) is refused with the one line
        C{message}.
        """
        error = self.assertRaises(InvalidCode, parse_join_input, text, peer)
        self.assertEqual(str(error), message)

    def test_strongCodeShape(self):
        """
        A strong code is a number and two words, each made only of letters;
        anything else is not taken for one.
        """
        for text in ["7-ace-act", " 12-Ace-ACT\n", "7-zzzzz-act"]:
            self.assertTrue(looks_like_strong_code(text), text)
        for text in ["7-a1-act", "7-ace-a1", "x-ace-act", "7-ace", "7-ace-act-age", "-ace-act", "7--act"]:
            self.assertFalse(looks_like_strong_code(text), text)

    def test_badStrongCode(self):
        """
        A strong code with a word not in the list is refused naming the
        word, with or without C{--peer}.
        """
        for peer in [None, self.PEER]:
            self.assertRefused("unknown word 'zzzzz' in the strong code", "7-ace-zzzzz", peer)

    def test_pairCodeWithoutNonBase32Digits(self):
        """
        16 hex digits make a pair code even when none of them is 0, 1, 8 or
        9 (the digits no relay code has); 15 or 17 such digits do not.
        """
        text = "abcd-ef23-4567-7654"
        self.assertTrue(looks_like_pair_code(text))
        self.assertRefused(
            "a pair code needs --peer ID@HOST:PORT (the inviting node's id and address)", text
        )
        invite = parse_join_input(text, self.PEER)
        self.assertEqual(invite.key, parse_pair_code(text))
        self.assertEqual((invite.identity, invite.addr), ("alpha", "10.0.0.2:9847"))
        for other in ["abcd-ef23-4567-765", "abcd-ef23-4567-7654-7", "abcd-ef23"]:
            self.assertFalse(looks_like_pair_code(other), other)

    def test_hexLettersAreNotPairCodes(self):
        """
        A relay code or word phrase spelt only with hex letters and digits
        2 to 7 decodes as what it is, not as a pair code.
        """
        invite = parse_join_input("ACE-BAD-CAB-222-33A")
        self.assertEqual(invite, decode_relay_code("ACE-BAD-CAB-222-33A"))
        self.assertEqual(invite.form, FORM_RELAY_CODE)
        phrase = "ace-bed-bee-cab-fed-ace-bed-bee-cab"
        invite = parse_join_input(phrase)
        self.assertEqual(invite, decode_word_phrase(phrase))
        self.assertEqual(invite.form, FORM_WORDS)

    def test_strayLetters(self):
        """
        Text with a letter past C{f} is not a pair code, even with 16 hex
        digits: with C{--peer} it is refused as no pair code; but four
        groups of four (a pair code's shape) are refused as a pair code with
        a typo, naming it.
        """
        for text in ["0001-0203-0405-0607X", "0001-0203-0405-0607 x"]:
            self.assertFalse(looks_like_pair_code(text), text)
            self.assertRefused(
                "--peer goes only with a pair code; links and codes carry the address",
                text,
                self.PEER,
            )
        self.assertFalse(looks_like_pair_code("0001-0203-0405-060X"))
        for peer in (self.PEER, None):
            self.assertRefused(
                "a pair code has 16 hex digits, found 15: 'X' at position 19 is not a hex digit (0-9, a-f)",
                "0001-0203-0405-060X",
                peer,
            )

    def test_separatorsOnly(self):
        """
        Dashes, spaces and tabs with no hex digit are no pair code; text
        with hex digits in both cases and every separator is one.
        """
        for text in ["-", "- \t-", "--"]:
            self.assertFalse(looks_like_pair_code(text), text)
            self.assertRefused(
                "--peer goes only with a pair code; links and codes carry the address",
                text,
                self.PEER,
            )
        every = "0123-4567 89ab\tcdef-ABCDEF"
        self.assertTrue(looks_like_pair_code(every))
        self.assertRefused("a pair code has 16 hex digits, found 22", every, self.PEER)


class PairedViaTests(SynchronousTestCase):
    """
    C{relaymesh peers} names how each peer paired.
    """

    def test_everyForm(self):
        """
        Every form a node records as a peer's C{paired_via} reads by name;
        the recorded names are those earlier versions wrote.
        """
        described = {
            "strong_code": "strong code",
            "strong_link": "relaymesh link (strong code)",
            "relaymesh_link": "relaymesh link",
            "link": "cctl:// link",
            "relay_code": "relay code",
            "words": "word phrase",
            "pair_code": "pair code",
            "invite": "invite link or pair code",
            "invite_legacy": "relay code or word phrase",
        }
        self.patch(cli_live, "live_peers", lambda context, args: False)
        path = self.mktemp()
        store = KeyStore(path)
        store.set_identity("laptop")
        names = {}
        for n, via in enumerate(described):
            names[f"peer{n}"] = via
            store.set_key(f"peer{n}", bytes(32))
            store.update_meta(f"peer{n}", paired_via=via)
        stdout, stderr = StringIO(), StringIO()
        self.assertEqual(main(["peers", "--data-dir", path], stdout=stdout, stderr=stderr), 0)
        self.assertEqual(stderr.getvalue(), "")
        rows = {}
        for line in stdout.getvalue().splitlines():
            if line.startswith("peer"):
                peer, rest = line.split(" ", 1)
                rows[peer] = rest.split("  ")[-1].strip()
        self.assertEqual(rows, {peer: described[via] for peer, via in names.items()})
