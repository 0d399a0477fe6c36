"""
L{RelayProtocol}: one relay connection, in either role.

The protocol splits bytes into lines, lines into messages (L{relaymesh.wire}),
and feeds them to a state machine::

    acceptor:  AWAITING_HANDSHAKE --handshake ok--> CONNECTED --> CLOSED
    connector: AWAITING_CHALLENGE --challenge--> AWAITING_ACK --ack ok--> CONNECTED --> CLOSED

Any line that is not a valid message, any message that does not fit the
state, a handshake that does not finish within L{HANDSHAKE_TIMEOUT} seconds,
and a connected peer silent for the mesh's idle timeout all end the
connection with a logged reason. Nothing a peer sends raises out of
C{dataReceived}. Once connected, messages go to the mesh
(L{relaymesh.mesh.Mesh}), which owns the registry and the application's
callbacks.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from relaymesh.handshake import (
    ACK_DENIED,
    ACK_OK,
    AcceptorHandshake,
    ConnectorHandshake,
    HandshakeFailed,
)
from relaymesh.wire import (
    HANDSHAKE_TYPES,
    MAX_LINE_BYTES,
    MessageType,
    RelayMessage,
    WireError,
    decode,
    encode,
)

if TYPE_CHECKING:
    from relaymesh.mesh import Mesh

#: Seconds a connection may take from TCP connect to a finished handshake.
HANDSHAKE_TIMEOUT = 30.0  # claudectl 0.49: 30 s read timeout on the acceptor

INBOUND = "inbound"
OUTBOUND = "outbound"


class State(enum.Enum):
    """
    Where one connection stands in the protocol.
    """

    AWAITING_CHALLENGE = "awaiting challenge"
    AWAITING_HANDSHAKE = "awaiting handshake"
    AWAITING_ACK = "awaiting ack"
    CONNECTED = "connected"
    CLOSED = "closed"


def format_address(address: Any) -> str:
    """
    C{host:port} for an IPv4 or IPv6 address object, C{str()} for others.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None or port is None:
        return str(address)
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


class RelayProtocol(LineOnlyReceiver):
    """
    One relay protocol connection: framing, handshake, then messages.

    The factory that builds it is told how the handshake ends through
    C{handshakeSucceeded(protocol)} and C{handshakeFailed(protocol, reason)}.

    @ivar mesh: The node's L{relaymesh.mesh.Mesh}.
    @ivar handshake: An L{AcceptorHandshake} or a L{ConnectorHandshake}; it
        decides the role.
    @ivar direction: L{INBOUND} for the acceptor, L{OUTBOUND} for the connector.
    @ivar state: The current L{State}.
    @ivar peer_id: The authenticated peer id, once L{State.CONNECTED}.
    @ivar address: The remote address as C{host:port}.
    @ivar connected_at: When the handshake finished (clock seconds).
    @ivar last_received: When the last line arrived (clock seconds).
    @ivar close_reason: Why this side closed the connection, if it did.
    @ivar proof_rejected: Whether the acceptor answered our proof with
        anything but an ok from the expected peer.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE_BYTES

    log = Logger()

    def __init__(self, mesh: Mesh, handshake: AcceptorHandshake | ConnectorHandshake):
        self.mesh = mesh
        self.clock = mesh.clock
        self.handshake = handshake
        if isinstance(handshake, AcceptorHandshake):
            self.direction = INBOUND
            self.state = State.AWAITING_HANDSHAKE
        else:
            self.direction = OUTBOUND
            self.state = State.AWAITING_CHALLENGE
        self.peer_id: str | None = None
        self.address = "?"
        self.connected_at: float | None = None
        self.last_received = 0.0
        self.close_reason: str | None = None
        self.proof_rejected = False
        self.msgs_in = self.msgs_out = self.bytes_in = self.bytes_out = 0
        self._timer: IDelayedCall | None = None
        self._dispatch = {
            State.AWAITING_CHALLENGE: self._challengeReceived,
            State.AWAITING_HANDSHAKE: self._handshakeReceived,
            State.AWAITING_ACK: self._ackReceived,
            State.CONNECTED: self._messageReceived,
        }

    # -- connection lifecycle ------------------------------------------------

    def connectionMade(self) -> None:
        self.address = format_address(self.transport.getPeer())
        self.last_received = self.clock.seconds()
        self._timer = self.clock.callLater(HANDSHAKE_TIMEOUT, self._handshakeTimedOut)
        if self.direction == INBOUND:
            self.sendMessage(
                self.mesh.message(
                    MessageType.CHALLENGE, self.handshake.challenge_payload(), from_peer=""
                )
            )

    def connectionLost(self, reason: Failure = None) -> None:
        previous, self.state = self.state, State.CLOSED
        self._cancelTimer()
        why = self.close_reason or _describe(reason)
        if previous is State.CONNECTED:
            self.mesh.connection_lost(self, why)
        elif previous is not State.CLOSED:
            self._handshakeEnded(why)

    def abort(self, reason: str) -> None:
        """
        Drop the connection at once, discarding unsent data.
        """
        if self.close_reason is None:
            self.close_reason = reason
        self.transport.abortConnection()

    def close(self, reason: str) -> None:
        """
        Close the connection after sending what is already written.
        """
        if self.close_reason is None:
            self.close_reason = reason
        self.transport.loseConnection()

    # -- inbound -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.close_reason is not None or self.state is State.CLOSED:
            return
        LineOnlyReceiver.dataReceived(self, data)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._buffer = b""
        self._violation(f"line longer than {self.MAX_LENGTH} bytes")

    def lineReceived(self, line: bytes) -> None:
        if self.close_reason is not None:
            return
        self.bytes_in += len(line) + 1
        self.last_received = self.clock.seconds()
        try:
            message = decode(line)
        except WireError as e:
            self._violation(f"unparseable line: {e}")
            return
        self.msgs_in += 1
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

    def _handshakeReceived(self, message: RelayMessage) -> None:
        try:
            peer_id = self.handshake.verify(message)
            refusal = self.mesh.admission_error(peer_id)
            if refusal is not None:
                raise HandshakeFailed(refusal)
        except HandshakeFailed as e:
            self._sendAck(ACK_DENIED)
            self.close(str(e))
            return
        self._sendAck(ACK_OK)
        self._authenticated(peer_id)

    def _challengeReceived(self, message: RelayMessage) -> None:
        try:
            payload = self.handshake.answer(message)
        except HandshakeFailed as e:
            self.close(str(e))
            return
        self.state = State.AWAITING_ACK
        self.sendMessage(self.mesh.message(MessageType.HANDSHAKE, payload))

    def _ackReceived(self, message: RelayMessage) -> None:
        try:
            peer_id = self.handshake.check_ack(message)
        except HandshakeFailed as e:
            self.proof_rejected = message.msg_type == MessageType.HANDSHAKE_ACK
            self.close(str(e))
            return
        self._authenticated(peer_id)

    def _messageReceived(self, message: RelayMessage) -> None:
        if message.msg_type in HANDSHAKE_TYPES:
            self._violation(f"unexpected {message.msg_type} after the handshake")
        elif message.from_peer != self.peer_id:
            self._violation(f"message claims to be from {message.from_peer[:40]!r}")
        else:
            self.mesh.message_received(self, message)

    # -- handshake outcome ---------------------------------------------------

    def _sendAck(self, status: str) -> None:
        self.sendMessage(self.mesh.message(MessageType.HANDSHAKE_ACK, {"status": status}))

    def _authenticated(self, peer_id: str) -> None:
        self._cancelTimer()
        self.peer_id = peer_id
        self.state = State.CONNECTED
        self.connected_at = self.clock.seconds()
        self.factory.handshakeSucceeded(self)
        if self.mesh.peer_authenticated(self):
            self._armIdleTimer()

    def _handshakeEnded(self, reason: str) -> None:
        self.factory.handshakeFailed(self, reason)

    def _handshakeTimedOut(self) -> None:
        self._timer = None
        self.abort(f"handshake not finished within {HANDSHAKE_TIMEOUT:g} s")

    # -- liveness ------------------------------------------------------------

    def _armIdleTimer(self) -> None:
        due = self.last_received + self.mesh.idle_timeout
        self._timer = self.clock.callLater(
            max(0.0, due - self.clock.seconds()), self._idleCheck
        )

    def _idleCheck(self) -> None:
        self._timer = None
        silent = self.clock.seconds() - self.last_received
        if silent >= self.mesh.idle_timeout:
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
        self.sendEncoded(encode(message))

    def sendEncoded(self, line: bytes) -> None:
        """
        Write one already encoded message line (without its C{\\n}).
        """
        self.transport.write(line + b"\n")
        self.msgs_out += 1
        self.bytes_out += len(line) + 1


def _describe(reason: Failure | None) -> str:
    if reason is None:
        return "connection closed"
    text = reason.getErrorMessage()
    return text.rstrip(".") or "connection closed"
