"""
How a node proves to the command line that it holds the API token, before
the command line sends the token.

The command line opens a connection to the URL it has and asks, without the
token, C{GET /api/proof?nonce=HEX} with a fresh random nonce. The node
answers L{make_proof}: C{HMAC-SHA256(token, LABEL || nonce || address)},
where C{address} is the node's own end of that very connection
(C{host:port}). The command line checks it against the address it dialled
and only then sends the token, on the same connection.

So whatever listens where a node used to be (a stale C{api-url}, the default
port taken by someone else) cannot answer: it does not know the token. And
something that passes the bytes on to the real node gets a proof for the
real node's address, not for its own, which the command line refuses too.

Only the standard library is used here: the command line's client imports
it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os

#: The path of the proof, below the API's base URL.
PROOF_PATH = "/api/proof"

#: What every proof's message starts with, so that a proof is never valid
#: for anything else the token signs.
LABEL = b"relaymesh control API proof 1\x00"

#: Bytes in a nonce (sent as twice as many hex digits).
NONCE_BYTES = 32


def new_nonce() -> bytes:
    """
    A fresh random nonce.
    """
    return os.urandom(NONCE_BYTES)


def parse_nonce(text: str) -> bytes | None:
    """
    The nonce in its hex form, or C{None} if C{text} is not exactly
    C{2 * NONCE_BYTES} hex digits.
    """
    if len(text) != 2 * NONCE_BYTES:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def canonical_address(host: str, port: int) -> str:
    """
    One spelling of a connection's address for both sides: an IP address in
    its compressed form (an IPv4-mapped IPv6 address as IPv4, an IPv6
    address in brackets, no zone), a name in lower case, then C{:port}.
    """
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return f"{host.lower()}:{port}"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv6Address):
        return f"[{ip.compressed}]:{port}"
    return f"{ip.compressed}:{port}"


def make_proof(token: str, nonce: bytes, address: str) -> str:
    """
    The proof that the holder of C{token} answers C{nonce} at C{address}, in
    hex.

    @param token: The API token.
    @param nonce: The client's nonce, L{NONCE_BYTES} bytes.
    @param address: The node's end of the connection, from
        L{canonical_address}.
    """
    message = LABEL + nonce + address.encode("utf-8")
    return hmac.new(token.encode("utf-8"), message, hashlib.sha256).hexdigest()


def check_proof(token: str, nonce: bytes, address: str, offered: object) -> bool:
    """
    Whether C{offered} is L{make_proof}C{(token, nonce, address)} (compared
    in constant time).
    """
    if not isinstance(offered, str):
        return False
    expected = make_proof(token, nonce, address).encode("ascii")
    return hmac.compare_digest(offered.encode("utf-8", "replace"), expected)
