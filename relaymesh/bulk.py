"""
L{BulkReceiver}: how a connection takes a connected peer's lines a chunk at
a time, the path nearly every byte a node receives takes.

The complete lines of a chunk are split at once (or, when they are long,
viewed in place) and decoded as a batch
(L{relaymesh.wire.decode_many}), in C as far as msgspec goes; each run of
plain messages goes to the owner in one call
(L{relaymesh.interfaces.ILinkOwner.messages_received}). A line that is not
a plain message of the expected types and sender (a refusal, an C{ack} to a
reliable sender, a routed message, a ping) goes through C{lineReceived},
which says what it is. Nothing is delivered after the connection stops.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from relaymesh.counters import Traffic
from relaymesh.framing import LineFramer
from relaymesh.wire import HANDSHAKE_TYPES, MESSAGE_TYPES, MessageType, decode_many

#: The types of the plain messages a connected claudectl peer sends that go
#: straight to the owner (L{ILinkOwner.messages_received}): every type but
#: the handshake's and the link's own.
BULK_TYPES = MESSAGE_TYPES - HANDSHAKE_TYPES

#: The same for a peer whose top-level fields this node reads: an C{ack}
#: may settle a reliable message, so it goes through
#: L{ILinkOwner.fields_received} (as does any line with extension fields).
BULK_TYPES_FIELDS = BULK_TYPES - {MessageType.ACK.value}


#: When a chunk's first or second line is longer than this, its lines are
#: read as views of the chunk rather than split out of it: copying a few
#: KiB per line cost more than finding each line.
LONG_LINE = 1024


def _views(data: bytes) -> tuple[list[bytes | memoryview], bytes]:
    """
    The complete lines of C{data} as views of it, without their newlines,
    and the bytes after the last newline.
    """
    view = memoryview(data)
    find = data.find
    lines: list[bytes | memoryview] = []
    append = lines.append
    start = 0
    end = find(b"\n")
    while end >= 0:
        append(view[start:end])
        start = end + 1
        end = find(b"\n", start)
    return lines, data[start:]


#: Bytes a streaming peer's connection reads at once (Twisted's TCP
#: transports read C{bufferSize} bytes, 64 KiB by default): a larger read
#: spreads the cost of the reactor's turn and of each chunk over more
#: messages (4 KiB messages: 0.9 of the CPU per message). The same figure
#: is the transport's send buffer before it pauses this connection's
#: writes, a bounded cost beside L{relaymesh.outbound.MAX_SEND_BACKLOG}.
READ_SIZE = 256 * 1024

#: Chunks at least this long count towards L{STREAMING_BYTES}.
STREAMING_CHUNK = 32 * 1024

#: A peer that sent this much in chunks of L{STREAMING_CHUNK} or more
#: streams: its connection's reads grow to L{READ_SIZE} then. A peer that
#: sends now and then, or a burst of heartbeats, keeps Twisted's reads: the
#: first 256 KiB read makes the allocator keep about 0.4 MB more heap for
#: the rest of the process's life, which a node with only such peers need
#: not pay.
STREAMING_BYTES = 1024 * 1024


class BulkReceiver:
    """
    The bulk path of L{relaymesh.connection.RelayProtocol}, which mixes it
    in before L{LineFramer} and provides C{owner}, C{peer_id}, C{traffic},
    C{MAX_LENGTH}, C{stopped}, C{linesArriving} and C{lineReceived}.

    @ivar _fast_types: The types of the plain messages that take the bulk
        path (L{BULK_TYPES} or L{BULK_TYPES_FIELDS}), set once the peer is
        connected; C{None} before.
    """

    _fast_types: frozenset[str] | None = None
    _small_reads = False
    _buffer: Any
    owner: Any
    peer_id: str | None
    traffic: Traffic
    MAX_LENGTH: int
    stopped: Callable[[], bool]
    linesArriving: Callable[[], AbstractContextManager[object]]
    lineReceived: Callable[[bytes], None]

    transport: Any

    def _startBulk(self, types: frozenset[str]) -> None:
        """
        The peer is connected: its plain messages of C{types} take the
        bulk path from now on, and, once it streams, the connection reads
        L{READ_SIZE} bytes at once where its transport lets it choose.
        """
        self._fast_types = types
        self._small_reads = isinstance(getattr(self.transport, "bufferSize", None), int)
        self._streamed = 0

    def _streaming(self, size: int) -> None:
        """
        A chunk of C{size} bytes, at least L{STREAMING_CHUNK}, came: once
        they add up to L{STREAMING_BYTES}, read more at once.
        """
        self._streamed += size
        if self._streamed >= STREAMING_BYTES:
            self._small_reads = False
            self.transport.bufferSize = max(self.transport.bufferSize, READ_SIZE)

    def _bulkReceived(self, data: bytes) -> None:
        """
        Take a chunk from a connected peer: its complete lines (the first
        joined to the partial line it ends) are split at once, or viewed in
        place when they are long, and handed on as a batch
        (L{_linesReceived}); the unfinished rest goes to L{LineFramer},
        which keeps it and holds it to the limit on a line's length.
        """
        if self.stopped():
            return
        if self._small_reads and len(data) >= STREAMING_CHUNK:
            self._streaming(len(data))
        if len(data) > self.MAX_LENGTH:  # a line in it may be too long
            LineFramer.dataReceived(self, data)  # type: ignore[arg-type]
            return
        end = data.find(b"\n")
        if end > LONG_LINE or data.find(b"\n", end + 1, end + LONG_LINE + 2) < 0 <= end:
            lines, rest = _views(data)
        else:
            split = data.split(b"\n")
            rest = split.pop()  # after the last newline: b"" if it ends the chunk
            # a new list only this method holds, so a list of bytes or views
            # (its first line may be replaced by bytes below)
            lines = split  # type: ignore[assignment]
        first = 0
        if lines and self._buffer:
            if len(self._buffer) + len(lines[0]) > self.MAX_LENGTH:
                LineFramer.dataReceived(self, bytes(lines[0]) + b"\n")  # type: ignore[arg-type]
                first = 1  # the framer refused it as too long
            else:
                lines[0] = bytes(self._buffer + lines[0])  # the line it ends
                self._buffer = b""
        if first < len(lines) and not self.stopped():
            with self.linesArriving():
                self._linesReceived(lines, first)
        if rest and not self.stopped():
            LineFramer.dataReceived(self, rest)  # type: ignore[arg-type]

    def _linesReceived(self, lines: list[bytes | memoryview], index: int) -> None:
        """
        Hand a connected peer's complete lines, from C{lines[index]} on:
        runs of plain messages to the owner in one call, any other line
        through C{lineReceived}, until the connection stops.
        """
        traffic = self.traffic
        by_type = traffic.by_type
        types = self._fast_types
        peer_id = self.peer_id
        assert types is not None and peer_id is not None
        count = len(lines)
        while index < count:
            messages, index, size = decode_many(lines, index, types, peer_id, by_type)
            if messages:
                traffic.msgs_in += len(messages)
                traffic.bytes_in += size
                self.owner.messages_received(self, messages)
                if self.stopped():
                    return
            if index < count:
                self.lineReceived(bytes(lines[index]))
                index += 1
                if self.stopped():
                    return
