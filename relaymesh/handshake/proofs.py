"""
The handshake's cryptography and constants: nonces, claudectl's connector
proof, relaymesh's labelled proofs, and constant-time comparison.

claudectl's handshake: the acceptor sends a C{challenge} with a fresh 32-byte
nonce (64 lowercase hex characters); the connector answers with a
C{handshake} whose proof is C{HMAC-SHA256(psk, ascii(nonce))} in lowercase
hex. That proof names neither side, so it can be reflected: relaymesh proves
it only to a peer whose key is marked legacy (L{LEGACY_FIELD}).

Between relaymesh nodes both proofs are HMACs over NUL-separated fields
(both nonces, both peer ids, both TLS certificate fingerprints) under a
label per direction, so that one direction's proof never serves as the
other's, and a proof made for one connection, one pair of peers or one TLS
session proves nothing in another.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable

from relaymesh._version import __version__

#: Bytes of randomness in a challenge nonce.
NONCE_BYTES = 32  # claudectl 0.49: 32

#: What this node says it is in the handshake's C{version} field.
VERSION = f"relaymesh-{__version__}"

#: The capability of proving the key both ways with labelled proofs that
#: name both peers (version 2: the connector's proof names the acceptor).
CAP_MUTUAL_AUTH = "mutual-auth/2"

#: The capability, offered in a plain-TCP challenge, of upgrading the
#: connection to TLS before any proof (L{STARTTLS_FIELD}).
CAP_STARTTLS = "starttls/1"

#: The capability of answering a C{ping} at once with a C{pong}, which
#: measures the round trip (see L{relaymesh.connection}).
CAP_PING = "ping/1"

#: The capabilities a node announces unless told otherwise.
DEFAULT_CAPABILITIES = (CAP_MUTUAL_AUTH, CAP_PING)

#: The challenge field in which a relaymesh acceptor names itself; claudectl
#: connectors read only the nonce, so they ignore it.
ACCEPTOR_FIELD = "peer"

#: The handshake field with which a connector asks for the TLS upgrade.
STARTTLS_FIELD = "starttls"

#: At most this many capabilities, each at most this long, are read.
MAX_CAPABILITIES = 32
MAX_CAPABILITY_LENGTH = 64

#: Labels that keep each direction's proof from serving as the other's.
CONNECTOR_LABEL = b"relaymesh/2 connector proof"
ACCEPTOR_LABEL = b"relaymesh/2 acceptor proof"

#: The meta field where a peer's TLS certificate fingerprint is pinned.
PIN_FIELD = "tls_fingerprint"

#: The meta field that says whether a peer's key may be proved in
#: claudectl's one-way form: C{true} for a claudectl peer (paired from a
#: claudectl form, dialled as C{legacy:}, or marked by the user), C{false}
#: once the key was used with a relaymesh peer (then only the user's
#: explicit word marks it legacy again); absent for a key never used.
LEGACY_FIELD = "legacy"

HEX64 = re.compile(r"[0-9a-fA-F]{64}\Z")

ACK_OK = "ok"
ACK_DENIED = "denied"
ACK_PAKE = "pake"
ACK_STARTTLS = "starttls"

#: How a peer that paired with a strong code is recorded (C{paired_via}).
STRONG_FORM = "strong_code"

#: (server certificate fingerprint, client certificate fingerprint).
Binding = tuple[str, str]


def new_nonce(randbytes: Callable[[int], bytes] = os.urandom) -> str:
    """
    A fresh challenge nonce: 32 random bytes as 64 lowercase hex characters.
    """
    return randbytes(NONCE_BYTES).hex()


def compute_proof(psk: bytes, nonce: str) -> str:
    """
    claudectl's connector proof for a nonce: lowercase hex of
    HMAC-SHA256(key=psk, message=the ASCII bytes of the nonce string).
    """
    return hmac.new(psk, nonce.encode("ascii"), hashlib.sha256).hexdigest()


def _mac(psk: bytes, label: bytes, *parts: str) -> str:
    message = label + b"".join(b"\x00" + part.encode("utf-8") for part in parts)
    return hmac.new(psk, message, hashlib.sha256).hexdigest()


def connector_proof(
    psk: bytes,
    nonce: str,
    connector_nonce: str,
    connector: str,
    acceptor: str,
    binding: Binding | None = None,
) -> str:
    """
    The connector's proof between relaymesh nodes: over both nonces, both
    ids and (over TLS) both certificates, under the connector's own label.

    (claudectl's unlabelled proof is L{compute_proof}.)
    """
    return _mac(psk, CONNECTOR_LABEL, nonce, connector_nonce, connector, acceptor, *(binding or ()))


def acceptor_proof(
    psk: bytes,
    nonce: str,
    connector_nonce: str,
    connector: str,
    acceptor: str,
    binding: Binding | None = None,
) -> str:
    """
    The acceptor's proof for mutual authentication: over both nonces, both
    ids and (over TLS) both certificates, under the acceptor's own label.
    """
    return _mac(psk, ACCEPTOR_LABEL, nonce, connector_nonce, connector, acceptor, *(binding or ()))


def same_proof(expected: str, given: object) -> bool:
    """
    Compare a proof in constant time; anything but an ASCII string is wrong.
    """
    if not isinstance(given, str):
        return False
    try:
        data = given.encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(expected.encode("ascii"), data)
