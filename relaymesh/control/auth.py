"""
The API token: where it is kept, how it is made, and how a request proves
that it holds it.

The token is kept in a file (C{DATA_DIR/api-token}, mode 0600, made on first
start). A request carries it as C{Authorization: Bearer TOKEN}. Where
allowed (C{/api/events}, whose browser client cannot send headers), a
cookie whose name starts with L{TOKEN_COOKIE} may stand in for it: the node
sets that cookie (C{POST /api/cookie}, with the token) HttpOnly and
SameSite=Strict, and its value is L{cookie_value}, derived from the token,
so the cookie can open an event stream and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat

from twisted.web import http
from twisted.web.server import Request

from relaymesh.control.requests import ApiError
from relaymesh.keystore import KeyStoreError, write_atomically

#: The token file's name in the data directory.
TOKEN_FILE = "api-token"

#: The name of the cookie (or its prefix) that may stand in for the token
#: on /api/events.
TOKEN_COOKIE = b"relaymesh_token"

#: The only path the cookie is sent to.
COOKIE_PATH = b"/api/events"

#: What the cookie's value is derived with.
COOKIE_LABEL = b"relaymesh events cookie 1"


def cookie_value(token: str) -> bytes:
    """
    The value of the events cookie for a token: an HMAC of a fixed label, so
    that the cookie never holds the token itself.
    """
    digest = hmac.new(token.encode("utf-8"), COOKIE_LABEL, hashlib.sha256).hexdigest()
    return digest.encode("ascii")


def cookie_name(port: int | None) -> bytes:
    """
    The events cookie's name for an API on C{port}: browsers send a host's
    cookies to all its ports, so each port gets a name of its own.
    """
    return TOKEN_COOKIE if port is None else TOKEN_COOKIE + b"_" + str(port).encode("ascii")


def token_path(data_dir: str) -> str:
    """
    The default token file of a data directory.
    """
    return os.path.join(data_dir, TOKEN_FILE)


def load_token(path: str, create: bool = True) -> str:
    """
    Read the API token, making a new one (mode 0600) if there is none.

    @param path: The token file.
    @param create: Whether to make the file when there is none.
    @return: The token.
    @raise KeyStoreError: if the file is empty.
    @raise OSError: if it cannot be read or written.
    """
    try:
        with open(path, "rb") as f:
            text = f.read(4096).decode("ascii", "replace").strip()
    except FileNotFoundError:
        if not create:
            raise
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        token = secrets.token_urlsafe(32)
        write_atomically(path, token.encode("ascii") + b"\n")
        return token
    if not text:
        raise KeyStoreError(f"API token file {path} is empty; delete it to make a new token")
    return text


def token_is_private(path: str) -> bool:
    """
    Whether no user but the owner may read or write the token file (C{True}
    too when it cannot be looked at).
    """
    try:
        return not stat.S_IMODE(os.stat(path).st_mode) & 0o077
    except OSError:
        return True


def authorize(request: Request, token: str | None, allow_cookie: bool = False) -> None:
    """
    Check the request's bearer token (or, if allowed, its events cookie).

    @param token: The API token, or C{None} when none is loaded (nothing is
        authorized then).
    @param allow_cookie: Whether a cookie named L{TOKEN_COOKIE}... holding
        L{cookie_value} may stand in for the token when there is no bearer
        token.
    @raise ApiError: 401 if the token is missing or wrong.
    """
    header = request.getHeader(b"authorization") or b""
    scheme, _, credentials = header.partition(b" ")
    if token is not None:
        offered: list[bytes] = []
        expected = token.encode("utf-8")
        if scheme.lower() == b"bearer":
            offered.append(credentials.strip())
        elif allow_cookie:
            offered = [v for k, v in request.received_cookies.items() if k.startswith(TOKEN_COOKIE)]
            expected = cookie_value(token)
        if any(hmac.compare_digest(candidate, expected) for candidate in offered):
            return
    raise ApiError(
        http.UNAUTHORIZED,
        "missing or wrong API token: send 'Authorization: Bearer TOKEN' "
        "with the token from the node's api-token file",
    )
