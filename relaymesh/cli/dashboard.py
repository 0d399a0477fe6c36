"""
C{relaymesh dashboard}: print the running node's dashboard URL, with the API
token in its fragment, and open it in a browser when there is a display.

The fragment (C{#token=...}) never leaves the browser: the page takes the
token from it once and removes it from the address (see
C{relaymesh/control/dashboard.html}, served by
L{relaymesh.control.resources.Dashboard}). The URL is printed only after the node
proved that it holds the token (L{relaymesh.control.proof}), so the token
is never handed to a page something else serves at that address.
"""

from __future__ import annotations

import argparse
import os
import sys
import webbrowser
from collections.abc import Callable
from urllib.parse import quote

from relaymesh.cli.base import Command, Context
from relaymesh.cli.live import live
from relaymesh.control.client import NodeClient

#: Opens a URL in a browser; returns whether it did (tests replace it).
open_browser: Callable[[str], bool] = webbrowser.open

#: The platform, as C{sys.platform} names it (tests replace it).
platform: str = sys.platform

#: The environment variables that tell a Linux (or BSD) desktop session.
DISPLAY_VARIABLES = ("DISPLAY", "WAYLAND_DISPLAY")


def has_display() -> bool:
    """
    Whether a browser can be shown: always on macOS and Windows, elsewhere
    when C{$DISPLAY} or C{$WAYLAND_DISPLAY} is set.
    """
    if platform == "darwin" or platform.startswith("win"):
        return True
    return any(os.environ.get(name) for name in DISPLAY_VARIABLES)


def dashboard_url(node: NodeClient, token: str) -> str:
    """
    The dashboard's URL at the node's API, with the token in the fragment.
    """
    return f"{node.url}/#token={quote(token, safe='')}"


def add_dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    """
    C{dashboard [--no-open]}.
    """
    parser.add_argument(
        "--no-open",
        action="store_true",
        help="only print the URL (by default it is also opened in a browser when there is a display)",
    )


@live
def run_dashboard(context: Context, args: argparse.Namespace, node: NodeClient) -> None:
    """
    Check that the node holds the token, print the dashboard's URL with the
    token in it, and open it when asked and possible.
    """
    node.call("GET", "/api/status")  # the node proves it holds the token first
    url = dashboard_url(node, node.token)
    if args.no_open:
        opened, note = False, ""
    elif not has_display():
        opened, note = False, "No display to open a browser on: open the URL above."
    else:
        opened = bool(open_browser(url))
        note = "Opened in the browser." if opened else "Could not open a browser: open the URL above."
    text = f"Dashboard: {url}\n(the URL carries the API token: do not share it)"
    context.emit({"url": url, "opened": opened}, text + (f"\n{note}" if note else ""))


#: The command, for the help's list.
COMMANDS = (
    Command(
        "dashboard",
        "print (and open) the running node's dashboard URL, with its token",
        add_dashboard_arguments,
        run_dashboard,
    ),
)
