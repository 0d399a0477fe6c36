"""
Peer-supplied text made safe to print: to a terminal, a log line or a
one-line error.

Peer ids are checked where they enter, but much else a peer or a network
sends (a routed origin, a version string, a discovery announcement, a
reason) may reach a terminal. L{printable} keeps such text to one line of
visible characters: control characters (C0, DEL, C1: the ones terminals act
on, such as ESC and the OSC that writes the clipboard), line and paragraph
separators and bidirectional overrides are shown as escapes, and long text
is cut.
"""

from __future__ import annotations

import unicodedata

#: Characters kept by default before the text is cut.
DEFAULT_LIMIT = 128

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(char: str) -> str:
    known = _ESCAPES.get(char)
    if known is not None:
        return known
    if char.isprintable() and unicodedata.category(char) != "Cf":
        return char
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: object, limit: int = DEFAULT_LIMIT) -> str:
    """
    C{text} as one line of visible characters: anything a terminal could
    act on is written as a backslash escape, and text longer than C{limit}
    characters is cut and marked with C{...}.

    Text that needs no escape comes back unchanged, so ids and addresses
    print as they are.
    """
    if not isinstance(text, str):
        text = repr(text)
    cut = len(text) > limit
    if cut:
        text = text[:limit]
    escaped = "".join(map(_escape, text)) if not _plain(text) else text
    return escaped + "..." if cut else escaped


def _plain(text: str) -> bool:
    return text.isascii() and text.isprintable() and "\\" not in text
