"""
One row of the outbox, and the checks on what the store is given.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeAlias

from relaymesh.peerid import is_valid_peer_id
from relaymesh.reliable.errors import StoreError
from relaymesh.reliable.fields import MAX_ID_LENGTH
from relaymesh.wire import MAX_LINE_BYTES

#: The longest message id kept.
MAX_MSG_ID_LENGTH = MAX_ID_LENGTH

#: The outbox columns an entry is stored in, in L{OutboxEntry.row} order.
ENTRY_COLUMNS = "msg_id, peer_id, origin, msg_type, line, created, deadline, attempts"

#: The values of L{ENTRY_COLUMNS}, as L{OutboxEntry.row} gives them.
EntryRow: TypeAlias = tuple[str, str, str, str, bytes, float, float, int]


@dataclasses.dataclass(frozen=True)
class OutboxEntry:
    """
    One reliable message waiting for its acknowledgement.

    @ivar msg_id: The message id the acknowledgement names; unique in the
        outbox.
    @ivar peer_id: The destination peer.
    @ivar origin: The node that first sent it (this node, unless forwarded).
    @ivar msg_type: The message type, for status displays.
    @ivar line: The encoded message, without its C{\\n}, as it is sent again.
    @ivar created: When it was accepted (clock seconds); the outbox order.
    @ivar deadline: When delivery is given up (clock seconds).
    @ivar attempts: How many times it has been sent so far.
    """

    msg_id: str
    peer_id: str
    origin: str
    msg_type: str
    line: bytes
    created: float
    deadline: float
    attempts: int = 0

    @classmethod
    def from_row(cls, row: EntryRow) -> OutboxEntry:
        """
        Make an entry from a row of L{ENTRY_COLUMNS}.

        @param row: the columns' values.
        @return: the entry, its line as C{bytes}.
        """
        msg_id, peer_id, origin, msg_type, line, created, deadline, attempts = row
        return cls(msg_id, peer_id, origin, msg_type, bytes(line), created, deadline, attempts)

    def check(self) -> None:
        """
        Check every field's type and range.

        @raise StoreError: naming the first field that is wrong.
        """
        check_msg_id(self.msg_id)
        for name in ("peer_id", "origin"):
            if not is_valid_peer_id(getattr(self, name)):
                raise StoreError(f"outbox entry field {name!r} is not a valid peer id")
        if type(self.msg_type) is not str or not self.msg_type:
            raise StoreError("outbox entry field 'msg_type' must be a non-empty string")
        if type(self.line) is not bytes or not self.line:
            raise StoreError("outbox entry field 'line' must be non-empty bytes")
        if len(self.line) > MAX_LINE_BYTES:
            raise StoreError(f"outbox entry line of {len(self.line)} bytes is too long")
        for name in ("created", "deadline"):
            check_time(name, getattr(self, name))
        if type(self.attempts) is not int or self.attempts < 0:
            raise StoreError("outbox entry field 'attempts' must be a non-negative integer")

    def row(self) -> EntryRow:
        """
        @return: the entry's values for L{ENTRY_COLUMNS}.
        """
        return (
            self.msg_id,
            self.peer_id,
            self.origin,
            self.msg_type,
            self.line,
            float(self.created),
            float(self.deadline),
            self.attempts,
        )


def check_msg_id(msg_id: Any) -> None:
    """
    Check a message id.

    @raise StoreError: if it is not a non-empty string of at most
        L{MAX_MSG_ID_LENGTH} characters.
    """
    if type(msg_id) is not str or not msg_id:
        raise StoreError("message id must be a non-empty string")
    if len(msg_id) > MAX_MSG_ID_LENGTH:
        raise StoreError(
            f"message id of {len(msg_id)} characters is too long (at most {MAX_MSG_ID_LENGTH})"
        )


def check_time(name: str, value: Any) -> None:
    """
    Check a time.

    @param name: what to call it in the error.
    @raise StoreError: if it is not a finite number of seconds.
    """
    if type(value) not in (int, float) or not math.isfinite(value):
        raise StoreError(f"{name!r} must be a finite number of seconds")


def check_origin(origin: Any) -> None:
    """
    Check the origin of a delivered message.

    @raise StoreError: if it is not a valid peer id.
    """
    if not is_valid_peer_id(origin):
        raise StoreError("origin is not a valid peer id")
