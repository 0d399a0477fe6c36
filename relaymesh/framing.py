"""
L{LineFramer}: newline-delimited framing with claudectl's 1 MiB line limit,
as a C{LineOnlyReceiver} whose line loop does not copy.
"""

from __future__ import annotations

import contextlib
from typing import Any

from twisted.protocols.basic import LineOnlyReceiver

from relaymesh.wire import MAX_LINE_BYTES


class LineFramer(LineOnlyReceiver):
    """
    Splits bytes into lines at C{\\n}, each at most L{MAX_LENGTH} bytes.

    C{LineOnlyReceiver}'s loop joins the partial line to every chunk and
    splits the lot into a list; here each line is sliced once out of the
    chunk it ends in (found with C{bytes.find} from an offset), and only a
    line that spans chunks is assembled, in a C{bytearray} so that a long one
    is not copied again with every chunk. The limit holds as before: a
    complete line, or the unfinished rest, longer than L{MAX_LENGTH} goes to
    C{lineLengthExceeded}.

    Subclasses override C{lineReceived} and C{lineLengthExceeded} as with
    C{LineOnlyReceiver}, and may override three more hooks: L{stopped} (no
    line after one that makes it true is delivered), L{stoppedBefore} (told
    what was left unread then) and L{linesArriving} (a context wrapped
    around the delivery of a chunk's lines).
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE_BYTES

    #: A connected transport, with the C{disconnecting} flag Twisted's
    #: transports have and C{ITransport} does not declare.
    transport: Any
    #: The start of a line that did not end yet: a C{bytearray} once it
    #: spans chunks (C{LineOnlyReceiver} declares it by its default, bytes).
    _buffer: bytes | bytearray  # type: ignore[assignment]

    def stopped(self) -> bool:
        """
        Whether no more lines are to be delivered: by default, once the
        transport is disconnecting.
        """
        return bool(self.transport.disconnecting)

    def stoppedBefore(self, unread: bytes) -> None:
        """
        Delivery stopped (L{stopped} turned true) with C{unread} bytes of
        the chunk left after the last line delivered; they are dropped.
        """

    def linesArriving(self) -> contextlib.AbstractContextManager[object]:
        """
        A context in which the complete lines of one chunk are delivered.
        """
        return contextlib.nullcontext()

    def dataReceived(self, data: bytes) -> None:
        """
        Split bytes into lines and hand each to C{lineReceived}.
        """
        if self.stopped():
            return
        end = data.find(b"\n")
        if end < 0:
            self._keepPartial(data)
            return
        limit = self.MAX_LENGTH
        lineReceived = self.lineReceived
        stopped = self.stopped
        with self.linesArriving():
            start = 0
            partial = self._buffer
            if partial:
                self._buffer = b""
                if len(partial) + end > limit:
                    self.lineLengthExceeded(b"".join((partial, data[:end])))
                    return
                lineReceived(b"".join((partial, data[:end])))
                if stopped():
                    self.stoppedBefore(data[end + 1 :])
                    return
                limit = self.MAX_LENGTH  # a line may change it (a handshake's end)
                start = end + 1
                end = data.find(b"\n", start)
            find = data.find
            while end >= 0:
                if end - start > limit:
                    self.lineLengthExceeded(data[start:end])
                    return
                lineReceived(data[start:end])
                if stopped():
                    self.stoppedBefore(data[end + 1 :])
                    return
                limit = self.MAX_LENGTH
                start = end + 1
                end = find(b"\n", start)
            if start < len(data):
                self._keepPartial(data[start:])

    def lineReceived(self, line: bytes) -> None:
        """
        Take one line, without its delimiter; subclasses override it.
        """
        raise NotImplementedError

    def lineLengthExceeded(self, line: bytes | bytearray) -> None:
        """
        A line (or the unfinished rest) longer than L{MAX_LENGTH} came: as
        in C{LineOnlyReceiver}, the connection is dropped.
        """
        self.transport.loseConnection()

    def _keepPartial(self, data: bytes) -> None:
        """
        Keep the start of a line until its end arrives.
        """
        partial = self._buffer
        if not partial:
            self._buffer = partial = data
        else:
            if type(partial) is not bytearray:
                self._buffer = partial = bytearray(partial)
            partial += data
        if len(partial) > self.MAX_LENGTH:
            self.lineLengthExceeded(partial)
