"""
How deeply a JSON text nests, found without parsing it, and a cheap test
of whether a parsed message plainly nests within the limit.

claudectl's JSON parser (serde_json) refuses anything nested deeper than
L{MAX_NESTING} levels, so L{relaymesh.wire} must too; the parsers it runs
take deeper texts (orjson stops at 1024 levels, msgspec and json at the
recursion limit). Nearly every message is plainly shallow (L{shallow},
L{flat}), so only the few others are scanned (L{may_be_too_deep},
L{nesting_depth}).
"""

from __future__ import annotations

import itertools
import re
from typing import Any

#: The deepest nesting of arrays and objects a line may have. claudectl's JSON
#: parser (serde_json) refuses anything deeper than 128 levels.
MAX_NESTING = 128  # serde_json default recursion limit

#: A JSON string, or an unterminated one running to the end of the line.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\[\s\S][^"\\]*)*(?:"|\\?\Z)')
#: Every byte but the four brackets, for C{bytes.translate} to delete.
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
#: How each bracket changes the nesting depth.
_DEPTH_STEP = {0x5B: 1, 0x7B: 1, 0x5D: -1, 0x7D: -1}  # [ { ] }


def nesting_depth(line: bytes) -> int:
    """
    The deepest nesting of arrays and objects in a JSON text, ignoring
    brackets inside strings.
    """
    # Done in C, not byte by byte in Python: strings (with their escapes, and
    # an unterminated one up to the end) are cut out, every byte but the
    # brackets is deleted, and the running sum of +1/-1 steps gives the depth.
    brackets = _JSON_STRING.sub(b"", line).translate(None, _NOT_BRACKETS)
    return max(0, max(itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0))


def too_deep(line: bytes) -> bool:
    """
    Whether a JSON text nests deeper than L{MAX_NESTING}.
    """
    return line.count(b"[") + line.count(b"{") > MAX_NESTING and nesting_depth(line) > MAX_NESTING


#: The shortest valid JSON text nested deeper than L{MAX_NESTING}: that many
#: opening brackets plus as many closing ones.
SHORTEST_TOO_DEEP = 2 * (MAX_NESTING + 1)


def may_be_too_deep(line: bytes) -> bool:
    """
    A cheap test that is true of every valid JSON text nested deeper than
    L{MAX_NESTING}, and false of nearly every message.
    """
    # Shaped by what lines look like: a line shorter than SHORTEST_TOO_DEEP
    # cannot be both valid and too deep (the parser refuses it, and
    # the parse error then still names the nesting), and a line has a handful
    # of brackets, which bytes.find (memchr) skips to much faster than
    # bytes.count walks the whole line.
    if len(line) < SHORTEST_TOO_DEEP:
        return False  # too short to be valid and that deep
    find = line.find
    seen = 0
    for opener in (b"{", b"["):
        at = find(opener)
        while at >= 0:
            seen += 1
            if seen > 16:
                return line.count(b"[") + line.count(b"{") > MAX_NESTING
            at = find(opener, at + 1)
    return False  # 16 brackets or fewer


def shallow(obj: dict[str, Any], payload: Any) -> bool:
    """
    Whether a parsed message is plainly within the nesting limit: its
    payload, and any field besides the five (a routing header, say), is a
    scalar, or an object or array of at most 32 scalars.
    """
    # Looking at a few parsed values costs the same for any line length;
    # scanning a 4 KiB line for brackets cost about 15% of receiving it.
    if len(obj) == 5:
        return flat(payload)
    if len(obj) > 16:
        return False
    for value in obj.values():
        if not flat(value):
            return False
    return True  # every field flat


def flat(value: Any) -> bool:
    """
    Whether a parsed value is a scalar, or an object or array of at most 32
    scalars.
    """
    kind = type(value)
    if kind is dict:
        values = value.values()
    elif kind is list:
        values = value
    else:
        return True  # a scalar
    if len(values) > 32:
        return False
    for item in values:
        kind = type(item)
        if kind is dict or kind is list:
            return False
    return True  # scalars only
