"""
Traffic counters: messages and bytes in and out, in total and per message
type, for one connection or summed over a peer's connections.
"""

from __future__ import annotations

from collections.abc import Iterable

#: The order of the four figures kept per message type.
BY_TYPE_FIELDS = ("msgs_in", "bytes_in", "msgs_out", "bytes_out")


class Traffic:
    """
    Messages and bytes in and out.

    @ivar msgs_in: Messages received.
    @ivar msgs_out: Messages sent.
    @ivar bytes_in: Bytes received (lines with their newline).
    @ivar bytes_out: Bytes sent (lines with their newline).
    @ivar by_type: For each message type, C{[msgs_in, bytes_in, msgs_out,
        bytes_out]}.
    """

    __slots__ = ("msgs_in", "msgs_out", "bytes_in", "bytes_out", "by_type")

    def __init__(self) -> None:
        self.msgs_in = self.msgs_out = self.bytes_in = self.bytes_out = 0
        self.by_type: dict[str, list[int]] = {}

    def received(self, msg_type: str, size: int) -> None:
        """
        Count one message of C{size} bytes received.
        """
        self.msgs_in += 1
        self.bytes_in += size
        counts = self.by_type.get(msg_type)
        if counts is None:
            counts = self.by_type[msg_type] = [0, 0, 0, 0]
        counts[0] += 1
        counts[1] += size

    def sent(self, msg_type: str, size: int) -> None:
        """
        Count one message of C{size} bytes sent.
        """
        self.msgs_out += 1
        self.bytes_out += size
        counts = self.by_type.get(msg_type)
        if counts is None:
            counts = self.by_type[msg_type] = [0, 0, 0, 0]
        counts[2] += 1
        counts[3] += size

    def add(self, other: Traffic) -> None:
        """
        Add C{other}'s figures to these.
        """
        self.msgs_in += other.msgs_in
        self.msgs_out += other.msgs_out
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        for msg_type, values in other.by_type.items():
            total = self.by_type.setdefault(msg_type, [0, 0, 0, 0])
            for i, value in enumerate(values):
                total[i] += value

    def by_type_dict(self) -> dict[str, dict[str, int]]:
        """
        The per-type figures as C{{msg_type: {"msgs_in", "bytes_in",
        "msgs_out", "bytes_out"}}}, sorted by type.
        """
        return {t: dict(zip(BY_TYPE_FIELDS, v)) for t, v in sorted(self.by_type.items())}


def total(parts: Iterable[Traffic]) -> Traffic:
    """
    The sum of several counters, as a new one.
    """
    result = Traffic()
    for part in parts:
        result.add(part)
    return result
