"""
L{RelayProtocol}: one relay connection, in either role.

The protocol splits bytes into lines (L{relaymesh.framing.LineFramer}), lines
into messages (L{relaymesh.wire}), and feeds them to a state machine::

    acceptor:  AWAITING_HANDSHAKE --handshake ok--> CONNECTED --> CLOSED
    connector: AWAITING_CHALLENGE --challenge--> AWAITING_ACK --ack ok--> CONNECTED --> CLOSED

Any line that is not a valid message, any message that does not fit the
state, a handshake that does not finish within L{HANDSHAKE_TIMEOUT} seconds,
and a connected peer silent for the mesh's idle timeout all end the
connection with a logged reason. Nothing a peer sends raises out of
C{dataReceived}. The handshake itself is the roles' business
(L{relaymesh.handshake}); the factory that made the connection hears how it
ends (L{relaymesh.interfaces.IHandshakeObserver}). Once connected, messages
go to the connection's owner (L{relaymesh.interfaces.ILinkOwner}, the
node's mesh), which owns the registry and the application's callbacks. The
connection counts its traffic in a L{relaymesh.counters.Traffic}.

Outbound lines are coalesced: inside a L{WriteBatch} (every C{dataReceived}
runs in one, and L{relaymesh.mesh.Mesh.batch} opens one for an application)
each connection collects what it sends and hands it to its transport in one
C{write} when the batch ends, or sooner once L{FLUSH_BYTES} are waiting.
Outside a batch every line is written at once. The protocol registers itself
as a streaming producer with its transport, so L{RelayProtocol.writable}
tells whether the transport's send buffer is full.
"""

from __future__ import annotations

import enum
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relaymesh.address import format_address
from relaymesh.counters import Traffic
from relaymesh.events import Direction
from relaymesh.framing import LineFramer
from relaymesh.handshake.acceptor import AcceptorHandshake
from relaymesh.handshake.base import Authenticated, HandshakeFailed
from relaymesh.handshake.connector import ConnectorHandshake
from relaymesh.handshake.proofs import ACK_DENIED, Binding
from relaymesh.interfaces import IHandshakeObserver, ILinkOwner
from relaymesh.tls import channel_binding
from relaymesh.wire import (
    HANDSHAKE_TYPES,
    MessageType,
    RelayMessage,
    WireError,
    decode,
    decode_fields,
    encode,
)

#: Seconds a connection may take from TCP connect to a finished handshake.
HANDSHAKE_TIMEOUT = 30.0  # claudectl 0.49: 30 s read timeout on the acceptor

#: Bytes written to a connection while its transport's send buffer is full
#: (the peer is not reading) after which the connection is dropped, so a
#: peer that stops reading cannot make the node buffer without bound.
MAX_SEND_BACKLOG = 16 * 1024 * 1024

#: Bytes of outbound lines a connection holds in a batch before it writes
#: them to its transport anyway, so that the batch never buffers without
#: bound; the transport's own buffer is what pauses a producer.
FLUSH_BYTES = 65536  # Twisted's FileDescriptor.bufferSize


class State(enum.Enum):
    """
    Where one connection stands in the protocol.
    """

    AWAITING_CHALLENGE = "awaiting challenge"
    AWAITING_HANDSHAKE = "awaiting handshake"
    AWAITING_ACK = "awaiting ack"
    CONNECTED = "connected"
    CLOSED = "closed"


class WriteBatch:
    """
    Coalesces what connections write during one burst of work.

    Inside C{with batch:} (blocks may nest), each L{RelayProtocol} sharing
    the batch collects the lines it sends, and writes them to its transport
    with one C{write} when the outermost block ends, or as soon as it holds
    L{FLUSH_BYTES}. One C{transport.write} per burst instead of per message
    saves most of the cost of sending a small message.

    @ivar depth: How many C{with} blocks are open.
    """

    __slots__ = ("depth", "_waiting")

    def __init__(self) -> None:
        self.depth = 0
        self._waiting: list[RelayProtocol] = []

    def __enter__(self) -> WriteBatch:
        self.depth += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.depth -= 1
        if not self.depth and self._waiting:
            self.flush()

    def hold(self, protocol: RelayProtocol) -> None:
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


_CONNECTED = State.CONNECTED


@implementer(IPushProducer)
class RelayProtocol(LineFramer):
    """
    One relay protocol connection: framing, handshake, then messages.

    The factory that builds it (an L{IHandshakeObserver}) is told how the
    handshake ends: C{handshakeVerified(protocol, outcome)} once the peer
    proved its key (to record the outcome), then C{handshakeSucceeded(protocol)},
    or C{handshakeFailed(protocol, reason)}.

    @ivar owner: The node's L{ILinkOwner} (its mesh): the registry of
        authenticated peers and the path of their messages.
    @ivar factory: The L{IHandshakeObserver} told how the handshake ends.
    @ivar handshake: An L{AcceptorHandshake} or a L{ConnectorHandshake}; it
        decides the role.
    @ivar direction: L{Direction.INBOUND} for the acceptor,
        L{Direction.OUTBOUND} for the connector.
    @ivar state: The current L{State}.
    @ivar peer_id: The authenticated peer id, once L{State.CONNECTED}.
    @ivar address: The remote address as C{host:port}.
    @ivar connected_at: When the handshake finished (clock seconds).
    @ivar last_received: When the last line arrived (clock seconds).
    @ivar close_reason: Why this side closed the connection, if it did.
    @ivar traffic: The L{Traffic} of this connection.
    @ivar outcome: The L{Authenticated} outcome of the handshake, once it
        succeeded.
    @ivar proof_rejected: Whether the acceptor answered our proof with
        anything but an ok from the expected peer.
    @ivar reads_fields: Whether the peer's messages may carry top-level
        fields this node reads (see L{relaymesh.mesh.Mesh.reads_fields});
        set when the handshake succeeds.
    @ivar writable: Whether the transport's send buffer has room; it turns
        false when the transport pauses this protocol as a producer, and true
        again when the buffer has drained (L{whenWritable}).
    """

    log = Logger()

    factory: IHandshakeObserver

    def __init__(self, owner: ILinkOwner, handshake: AcceptorHandshake | ConnectorHandshake):
        self.owner = owner
        self.clock = owner.clock
        self.handshake = handshake
        if isinstance(handshake, AcceptorHandshake):
            self.direction = Direction.INBOUND
            self.state = State.AWAITING_HANDSHAKE
        else:
            self.direction = Direction.OUTBOUND
            self.state = State.AWAITING_CHALLENGE
        self.peer_id: str | None = None
        self.address = "?"
        self.connected_at: float | None = None
        self.last_received = 0.0
        self.close_reason: str | None = None
        self.proof_rejected = False
        self.reads_fields = False
        self.traffic = Traffic()
        self.outcome: Authenticated | None = None
        self._timer: IDelayedCall | None = None
        self._writes: WriteBatch = owner.writes
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._producing = False
        self.writable = True
        self._backlog = 0
        self._writable_waiters: list[Deferred] = []
        self._closed_waiters: list[Deferred] = []
        self._dispatch = {
            State.AWAITING_CHALLENGE: self._challengeReceived,
            State.AWAITING_HANDSHAKE: self._handshakeReceived,
            State.AWAITING_ACK: self._ackReceived,
            State.CONNECTED: self._messageReceived,
        }

    # -- connection lifecycle ------------------------------------------------

    def connectionMade(self) -> None:
        self.address = format_address(self.transport.getPeer())
        # Lines are coalesced here (WriteBatch), so Nagle's algorithm would
        # only hold a reply back until the peer's delayed ACK.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        register = getattr(self.transport, "registerProducer", None)
        if register is not None:
            register(self, True)
            self._producing = True
        self.last_received = self.clock.seconds()
        self._timer = self.clock.callLater(HANDSHAKE_TIMEOUT, self._handshakeTimedOut)
        if self.direction is Direction.INBOUND:
            self.sendMessage(
                self.owner.message(
                    MessageType.CHALLENGE, self.handshake.challenge_payload(), from_peer=""
                )
            )

    def connectionLost(self, reason: Failure = None) -> None:
        previous, self.state = self.state, State.CLOSED
        self._cancelTimer()
        self._pending = []
        self._producing = False
        self._wakeWriters()
        closed, self._closed_waiters = self._closed_waiters, []
        for d in closed:
            d.callback(None)
        why = self.close_reason or _describe(reason)
        if previous is State.CONNECTED:
            self.owner.connection_lost(self, why)
        elif previous is not State.CLOSED:
            self._handshakeEnded(why)

    def abort(self, reason: str) -> None:
        """
        Drop the connection at once, discarding unsent data.
        """
        if self.close_reason is None:
            self.close_reason = reason
        self._pending = []
        self.transport.abortConnection()

    def close(self, reason: str) -> None:
        """
        Close the connection after sending what is already written.
        """
        if self.close_reason is None:
            self.close_reason = reason
        self.flush()
        self._stopProducing()
        self.transport.loseConnection()

    # -- inbound -------------------------------------------------------------

    def stopped(self) -> bool:
        """
        Whether no more lines are to be handled: this side closed, or the
        transport is going away.
        """
        return (
            self.close_reason is not None
            or self.state is State.CLOSED
            or bool(self.transport.disconnecting)
        )

    def linesArriving(self) -> WriteBatch:
        """
        Note when lines arrived (once per chunk), and coalesce whatever they
        make this node send (L{WriteBatch}).
        """
        self.last_received = self.clock.seconds()
        return self._writes

    def lineLengthExceeded(self, line: bytes) -> None:
        self._buffer = b""
        self._violation(f"line longer than {self.MAX_LENGTH} bytes")

    def lineReceived(self, line: bytes) -> None:
        if self.close_reason is not None:
            return
        size = len(line) + 1
        fields = None
        try:
            if self.reads_fields:
                # A peer whose messages may carry top-level fields this node
                # reads (see Mesh.reads_fields): the mesh gets the whole
                # object. claudectl peers keep the faster plain decode.
                message, fields = decode_fields(line)
            else:
                message = decode(line)
        except WireError as e:
            self._violation(f"unparseable line: {e}")
            return
        self.traffic.received(message.msg_type, size)
        if self.state is _CONNECTED:
            # Nearly every line: _messageReceived's checks, inlined; it runs
            # only to refuse the message and say why.
            if message.from_peer == self.peer_id and message.msg_type not in HANDSHAKE_TYPES:
                if fields is None:
                    self.owner.message_received(self, message)
                else:
                    self.owner.fields_received(self, message, fields)
            else:
                self._messageReceived(message)
        else:
            self._dispatch[self.state](message)

    def _violation(self, reason: str) -> None:
        if self.state is State.CONNECTED:
            self.log.warn(
                "closing connection to {peer_id} ({address}): {reason}",
                peer_id=self.peer_id,
                address=self.address,
                reason=reason,
            )
        self.close(reason)

    def _binding(self) -> Binding | None:
        """
        The TLS certificate fingerprints as (server, client), or L{None}.
        """
        binding = channel_binding(self.transport)
        if binding is None or self.direction is Direction.INBOUND:
            return binding
        return binding[1], binding[0]

    def _handshakeReceived(self, message: RelayMessage) -> None:
        try:
            verdict = self.handshake.verify(message, self._binding())
            outcome = verdict.outcome
            if outcome is not None:
                refusal = self.owner.admission_error(outcome.peer_id)
                if refusal is not None:
                    raise HandshakeFailed(refusal)
                self.factory.handshakeVerified(self, outcome)
        except HandshakeFailed as e:
            self._sendAck({"status": ACK_DENIED})
            self.close(str(e))
            return
        self._sendAck(verdict.ack)
        if outcome is not None:
            self._authenticated(outcome)

    def _challengeReceived(self, message: RelayMessage) -> None:
        try:
            payload = self.handshake.answer(message, self._binding())
        except HandshakeFailed as e:
            self.close(str(e))
            return
        self.state = State.AWAITING_ACK
        self.sendMessage(self.owner.message(MessageType.HANDSHAKE, payload))

    def _ackReceived(self, message: RelayMessage) -> None:
        try:
            outcome, reply = self.handshake.check_ack(message, self._binding())
        except HandshakeFailed as e:
            self.proof_rejected = message.msg_type == MessageType.HANDSHAKE_ACK
            self.close(str(e))
            return
        if outcome is None:
            assert reply is not None
            self.sendMessage(self.owner.message(MessageType.HANDSHAKE, reply))
            return
        try:
            self.factory.handshakeVerified(self, outcome)
        except HandshakeFailed as e:
            self.close(str(e))
            return
        self._authenticated(outcome)

    def _messageReceived(self, message: RelayMessage) -> None:
        if message.msg_type in HANDSHAKE_TYPES:
            self._violation(f"unexpected {message.msg_type} after the handshake")
        elif message.from_peer != self.peer_id:
            self._violation(f"message claims to be from {message.from_peer[:40]!r}")
        else:
            self.owner.message_received(self, message)

    # -- handshake outcome ---------------------------------------------------

    def _sendAck(self, payload: dict[str, Any]) -> None:
        self.sendMessage(self.owner.message(MessageType.HANDSHAKE_ACK, payload))

    def _authenticated(self, outcome: Authenticated) -> None:
        self._cancelTimer()
        self.outcome = outcome
        self.peer_id = outcome.peer_id
        self.state = State.CONNECTED
        self.connected_at = self.clock.seconds()
        self.factory.handshakeSucceeded(self)
        self.reads_fields = self.owner.reads_fields(outcome.capabilities)
        if self.owner.peer_authenticated(self):
            self._armIdleTimer()

    def _handshakeEnded(self, reason: str) -> None:
        self.factory.handshakeFailed(self, reason)

    def _handshakeTimedOut(self) -> None:
        self._timer = None
        self.abort(f"handshake not finished within {HANDSHAKE_TIMEOUT:g} s")

    # -- liveness ------------------------------------------------------------

    def _armIdleTimer(self) -> None:
        due = self.last_received + self.owner.idle_timeout
        self._timer = self.clock.callLater(
            max(0.0, due - self.clock.seconds()), self._idleCheck
        )

    def _idleCheck(self) -> None:
        self._timer = None
        silent = self.clock.seconds() - self.last_received
        if silent >= self.owner.idle_timeout:
            self.abort(f"no message for {silent:g} s")
        else:
            self._armIdleTimer()

    def _cancelTimer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    # -- outbound ------------------------------------------------------------

    def sendMessage(self, message: RelayMessage) -> None:
        """
        Write one message to this connection.

        @raise WireError: if the message cannot be encoded or is too long.
        """
        self.sendEncoded(encode(message), message.msg_type)

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

    # -- backpressure (IPushProducer, as seen by our transport) --------------

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

    def whenWritable(self) -> Deferred:
        """
        A L{Deferred} that fires (with L{None}) once the transport's send
        buffer has room: at once if it has, or when the connection closes.
        """
        if self.writable or self.state is State.CLOSED:
            d: Deferred = Deferred()
            d.callback(None)
            return d
        d = Deferred()
        self._writable_waiters.append(d)
        return d

    def whenClosed(self) -> Deferred:
        """
        A L{Deferred} that fires (with L{None}) once the connection is
        closed: at once if it is.
        """
        d: Deferred = Deferred()
        if self.state is State.CLOSED:
            d.callback(None)
        else:
            self._closed_waiters.append(d)
        return d

    def _wakeWriters(self) -> None:
        waiters, self._writable_waiters = self._writable_waiters, []
        for d in waiters:
            d.callback(None)

    def _stopProducing(self) -> None:
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()


def _describe(reason: Failure | None) -> str:
    if reason is None:
        return "connection closed"
    text = reason.getErrorMessage()
    return text.rstrip(".") or "connection closed"
