"""
The checkout the tests run from, for tests of its C{tools/} and C{bench/}: found next to
the imported relaymesh, or above the current directory (where an installed
relaymesh is tested, as CI does). Tests of a tool are skipped where there
is no checkout (relaymesh installed alone, tests started elsewhere).
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

import relaymesh


def find_checkout(tool: str) -> str | None:
    """
    The checkout that holds C{tools/<tool>.py} and relaymesh, or L{None}.
    """
    return find_checkout_with(os.path.join("tools", tool + ".py"))


def find_checkout_with(relative: str) -> str | None:
    """
    The checkout that holds the file C{relative} (a path inside it) and
    relaymesh, or L{None}.
    """
    imported_from = os.path.dirname(os.path.dirname(os.path.abspath(relaymesh.__file__)))
    here = os.path.abspath(os.getcwd())
    candidates = [imported_from, here]
    while os.path.dirname(here) != here:
        here = os.path.dirname(here)
        candidates.append(here)
    for candidate in candidates:
        if os.path.isfile(os.path.join(candidate, relative)) and os.path.isfile(
            os.path.join(candidate, "relaymesh", "__init__.py")
        ):
            return candidate
    return None


def load_tools(*names: str) -> tuple[ModuleType, ...] | None:
    """
    Import C{tools.<name>} for each name from the checkout that has the
    first, or L{None} without one.
    """
    checkout = find_checkout(names[0])
    if checkout is None:
        return None
    if checkout not in sys.path:
        sys.path.append(checkout)
    return tuple(importlib.import_module("tools." + name) for name in names)
