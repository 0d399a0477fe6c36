"""
Tests for L{relaymesh.printable}: peer-supplied text cannot act on a
terminal or forge a log line.
"""

from twisted.trial.unittest import SynchronousTestCase

from relaymesh.printable import DEFAULT_LIMIT, printable


class PrintableTests(SynchronousTestCase):
    def test_plain_text_unchanged(self) -> None:
        """
        Ids, addresses and ordinary words print as they are.
        """
        for text in ("bob-1a2b3c4d", "127.0.0.1:9847", "relaymesh-0.9 (café)"):
            self.assertEqual(printable(text), text)

    def test_terminal_escapes(self) -> None:
        """
        ESC (erase line, colours), OSC 52 (clipboard write), BEL and C1
        controls are shown as escapes, never emitted.
        """
        attacks = [
            "\x1b[2K\x1b[1Gpeer alice connected",
            "\x1b]52;c;cm0gLXJmIH4=\x07",
            "\x9b2J",
            "a\x7fb",
        ]
        for attack in attacks:
            shown = printable(attack)
            self.assertFalse(any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in shown), shown)
        self.assertEqual(printable("\x1b[2K"), "\\x1b[2K")

    def test_no_new_lines(self) -> None:
        """
        A forged second log line stays on the first.
        """
        self.assertEqual(printable("bob\npeer mallory connected"), "bob\\npeer mallory connected")
        self.assertEqual(printable("a\u2028b\u2029c"), "a\\u2028b\\u2029c")

    def test_bidi_overrides(self) -> None:
        """
        Right-to-left overrides cannot reorder what is shown.
        """
        self.assertEqual(printable("evil\u202egnp.exe"), "evil\\u202egnp.exe")

    def test_backslash_escaped(self) -> None:
        """
        A literal backslash cannot pass for an escape.
        """
        self.assertEqual(printable("a\\x1b"), "a\\\\x1b")

    def test_cut(self) -> None:
        """
        Long text is cut at the limit and marked.
        """
        self.assertEqual(printable("x" * (DEFAULT_LIMIT + 5)), "x" * DEFAULT_LIMIT + "...")
        self.assertEqual(printable("abcdef", limit=3), "abc...")

    def test_not_text(self) -> None:
        """
        Anything else prints as its repr, escaped too.
        """
        self.assertEqual(printable(b"\x1b"), "b'\\\\x1b'")
        self.assertEqual(printable(None), "None")
