"""
The outbound half of a relay connection: lines coalesced per burst of work
(L{WriteBatch}), and the backpressure of the transport's send buffer
(L{LineWriter}, a streaming producer).

Inside a L{WriteBatch} (every C{dataReceived} of a connection runs in one,
and L{relaymesh.mesh.Mesh.batch} opens one for an application) each
connection collects what it sends and hands it to its transport in one
C{write} when the batch ends, or sooner once L{FLUSH_BYTES} are waiting.
Outside a batch every line is written at once. A L{LineWriter} registers
itself as a streaming producer with its transport, so L{LineWriter.writable}
tells whether the transport's send buffer is full. Over TLS the connection's
layer (L{relaymesh.tls.RelayTLSProtocol}) seals a flushed burst at once, in
one C{SSL_write}; a line written outside a batch waits there for the
reactor's next turn, to be sealed with those that follow it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from relaymesh.counters import Traffic

#: Bytes written to a connection while its transport's send buffer is full
#: (the peer is not reading) after which the connection is dropped, so a
#: peer that stops reading cannot make the node buffer without bound.
MAX_SEND_BACKLOG = 16 * 1024 * 1024

#: Bytes of outbound lines a connection holds in a batch before it writes
#: them to its transport anyway, so that the batch never buffers without
#: bound; the transport's own buffer is what pauses a producer.
FLUSH_BYTES = 65536  # Twisted's FileDescriptor.bufferSize


class WriteBatch:
    """
    Coalesces what connections write during one burst of work.

    Inside C{with batch:} (blocks may nest), each L{LineWriter} sharing
    the batch collects the lines it sends, and writes them to its transport
    with one C{write} when the outermost block ends, or as soon as it holds
    L{FLUSH_BYTES}. One C{transport.write} per burst instead of per message
    saves most of the cost of sending a small message.

    @ivar depth: How many C{with} blocks are open.
    """

    __slots__ = ("depth", "_waiting")

    def __init__(self) -> None:
        self.depth = 0
        self._waiting: list[LineWriter] = []

    def __enter__(self) -> WriteBatch:
        self.depth += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.depth -= 1
        if not self.depth and self._waiting:
            self.flush()

    def hold(self, protocol: LineWriter) -> None:
        """
        Note that C{protocol} has lines waiting for the end of the batch.
        """
        self._waiting.append(protocol)

    def flush(self) -> None:
        """
        Write every connection's waiting lines now.
        """
        while self._waiting:
            waiting, self._waiting = self._waiting, []
            for protocol in waiting:
                protocol.flush()



class LineWriter:
    """
    Writes lines to a transport, coalesced in a L{WriteBatch}, and follows
    the transport's backpressure as its streaming producer.

    Mixed into L{relaymesh.connection.RelayProtocol}, which provides
    C{transport}, C{traffic}, C{close_reason} and C{abort}.

    @ivar writable: Whether the transport's send buffer has room; it turns
        false when the transport pauses this producer, and true again when
        the buffer has drained (L{whenWritable}).
    """

    transport: Any
    traffic: Traffic
    close_reason: str | None

    def abort(self, reason: str) -> None:
        raise NotImplementedError

    def _initOutbound(self, writes: WriteBatch) -> None:
        self._writes = writes
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._producing = False
        self.writable = True
        self._backlog = 0
        self._writable_waiters: list[Deferred[None]] = []
        self._outbound_closed = False
        #: The connection's TLS layer (a L{relaymesh.tls.RelayTLSProtocol}),
        #: told to seal each burst at once; C{None} in clear.
        self._tls: Any = None

    def _startProducing(self) -> None:
        """
        Register as the transport's streaming producer, if it takes one.
        """
        register = getattr(self.transport, "registerProducer", None)
        if register is not None:
            register(self, True)
            self._producing = True

    def _closeOutbound(self) -> None:
        """
        The connection is gone: drop what waits, and wake the waiters.
        """
        self._outbound_closed = True
        self._pending = []
        self._producing = False
        self._wakeWriters()

    def sendEncoded(self, line: bytes, msg_type: str) -> None:
        """
        Write one already encoded message line (without its C{\\n}) of type
        C{msg_type} (counted in L{traffic}).

        Outside a L{WriteBatch} the line goes to the transport at once;
        inside one it waits for the end of the batch (see L{flush}).
        """
        self.traffic.sent(msg_type, len(line) + 1)
        if not self.writable:
            self._backlog += len(line) + 1
            if self._backlog > MAX_SEND_BACKLOG:
                if self.close_reason is None:
                    self.abort(f"peer is not reading: over {MAX_SEND_BACKLOG} bytes waiting to be sent")
                return
        pending = self._pending
        if not self._writes.depth and not pending:
            self.transport.write(line + b"\n")
            return
        pending.append(line)
        self._pending_bytes += len(line) + 1
        if not self._writes.depth or self._pending_bytes >= FLUSH_BYTES:
            self.flush()
        elif len(pending) == 1:
            self._writes.hold(self)

    def flush(self) -> None:
        """
        Write the lines waiting for the end of a batch, in one C{write}.
        """
        pending = self._pending
        if pending:
            pending.append(b"")  # so that the join ends with a newline
            self._pending = []
            self._pending_bytes = 0
            self.transport.write(b"\n".join(pending))
            if self._tls is not None:
                # a burst is joined already: TLS need not wait for more
                self._tls.flushWrites()

    # -- backpressure (IPushProducer, as seen by the transport) ---------------

    def pauseProducing(self) -> None:
        """
        The transport's send buffer is full: L{writable} turns false.
        """
        self.writable = False

    def resumeProducing(self) -> None:
        """
        The transport's send buffer has drained: L{writable} turns true, and
        whoever waits in L{whenWritable} is told.
        """
        self.writable = True
        self._backlog = 0
        if self.transport.disconnecting:
            # A transport that was told to close while it had us paused
            # resumes us instead of closing; stepping aside lets it close.
            self._stopProducing()
        self._wakeWriters()

    def stopProducing(self) -> None:
        """
        The transport is going away; nothing to stop, as nothing is read
        on our behalf.
        """

    def whenWritable(self) -> Deferred[None]:
        """
        A C{Deferred} that fires (with C{None}) once the transport's send
        buffer has room: at once if it has, or when the connection closes.
        """
        if self.writable or self._outbound_closed:
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        d = Deferred()
        self._writable_waiters.append(d)
        return d

    def _wakeWriters(self) -> None:
        waiters, self._writable_waiters = self._writable_waiters, []
        for d in waiters:
            d.callback(None)

    def _stopProducing(self) -> None:
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()


