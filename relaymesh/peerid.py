"""
Peer ids: the names nodes give themselves on the relay.

A valid peer id is 1 to 128 characters, each an ASCII letter, a digit, C{-}
or C{_} (claudectl 0.49). Ids are validated before they are used in a file
path or put on the wire.
"""

import re
from typing import TypeGuard

MAX_PEER_ID_LENGTH = 128  # claudectl 0.49: 128

#: The key store's name for the pending pairing key; never a peer's id.
PENDING = "_pending"

_VALID = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_PEER_ID_LENGTH}}}\Z")


class InvalidPeerId(ValueError):
    """
    A string that is not a valid peer id.
    """


def is_valid_peer_id(value: object) -> TypeGuard[str]:
    """
    Whether C{value} is a string that is a valid peer id.

    The reserved name C{_pending} is not a valid peer id.
    """
    return (
        isinstance(value, str) and value != PENDING and _VALID.match(value) is not None
    )


def validate_peer_id(value: object) -> str:
    """
    Return C{value} if it is a valid peer id.

    @raise InvalidPeerId: with a one-line reason otherwise.
    """
    if is_valid_peer_id(value):
        return value
    if not isinstance(value, str):
        raise InvalidPeerId(f"peer id must be a string, not {type(value).__name__}")
    if value == PENDING:
        raise InvalidPeerId(f"{PENDING!r} is reserved and cannot be a peer id")
    if not value:
        raise InvalidPeerId("peer id is empty")
    if len(value) > MAX_PEER_ID_LENGTH:
        raise InvalidPeerId(
            f"peer id is {len(value)} characters long, at most {MAX_PEER_ID_LENGTH} allowed"
        )
    raise InvalidPeerId(
        f"invalid peer id {value[:40]!r}: only ASCII letters, digits, '-' and '_' are allowed"
    )
