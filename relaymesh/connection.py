"""
L{RelayProtocol}: one relay connection, in either role.

The protocol splits bytes into lines (L{relaymesh.framing.LineFramer}), lines
into messages (L{relaymesh.wire}), and feeds them to a state machine::

    acceptor:  AWAITING_HANDSHAKE --handshake ok--> CONNECTED --> CLOSED
    connector: AWAITING_CHALLENGE --challenge--> AWAITING_ACK --ack ok--> CONNECTED --> CLOSED

Over plain TCP a relaymesh pair first upgrades the connection to TLS in
band (the C{starttls} exchange, then C{ITLSTransport.startTLS}), and the
handshake starts over inside it; see L{relaymesh.handshake}. Before the
handshake succeeds, lines are limited to L{HANDSHAKE_MAX_LINE} bytes.

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

Outbound lines are coalesced per burst of work and follow the transport's
backpressure: see L{relaymesh.outbound}. A connected peer that announced
C{ping/1} is pinged, and its pings answered, by the connection itself
(L{relaymesh.pings}): C{ping} and C{pong} never go to the owner.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, ISSLTransport, ITLSTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relaymesh.address import format_address
from relaymesh.bulk import BULK_TYPES, BULK_TYPES_FIELDS, BulkReceiver
from relaymesh.counters import Traffic
from relaymesh.events import Direction
from relaymesh.framing import LineFramer
from relaymesh.handshake.acceptor import AcceptorHandshake
from relaymesh.handshake.base import Authenticated, HandshakeFailed
from relaymesh.handshake.connector import ConnectorHandshake
from relaymesh.handshake.connector import Step as ConnectorStep
from relaymesh.handshake.proofs import ACK_DENIED, STARTTLS_FIELD, Binding
from relaymesh.interfaces import IHandshakeObserver, ILinkOwner
from relaymesh.linkerrors import MismatchWatch
from relaymesh.outbound import LineWriter, WriteBatch
from relaymesh.pings import Pinger
from relaymesh.tls import channel_binding, use_relay_tls
from relaymesh.wire import (
    HANDSHAKE_TYPES,
    LINK_TYPES,
    MAX_LINE_BYTES,
    MessageType,
    RelayMessage,
    WireError,
    decode,
    decode_fields,
    encode,
)

if TYPE_CHECKING:
    from twisted.internet.ssl import CertificateOptions

    from relaymesh.tls import NodeCertificate

#: Seconds a connection may take from TCP connect to a finished handshake.
HANDSHAKE_TIMEOUT = 30.0  # claudectl 0.49: 30 s read timeout on the acceptor

#: Bytes a line may have before the handshake succeeded: every handshake
#: message fits in well under this, and a peer that has proved nothing
#: cannot make the node parse more.
HANDSHAKE_MAX_LINE = 8192

class State(enum.Enum):
    """
    Where one connection stands in the protocol.
    """

    AWAITING_CHALLENGE = "awaiting challenge"
    AWAITING_HANDSHAKE = "awaiting handshake"
    AWAITING_ACK = "awaiting ack"
    CONNECTED = "connected"
    CLOSED = "closed"


_CONNECTED = State.CONNECTED


@implementer(IPushProducer)
class RelayProtocol(BulkReceiver, LineFramer, LineWriter, Pinger, MismatchWatch):
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
    @ivar writable: Whether the transport's send buffer has room (see
        L{relaymesh.outbound.LineWriter}).
    @ivar certificate: This node's certificate, for the TLS upgrade; without
        one the acceptor offers no upgrade and the connector cannot take it.
    @ivar encrypted: Whether the connection runs over TLS.
    """

    log = Logger()

    factory: IHandshakeObserver

    MAX_LENGTH = HANDSHAKE_MAX_LINE

    #: What lines before authentication may cost, shared by every inbound
    #: connection of a listener (L{relaymesh.acceptor.ParseBudget}), or
    #: C{None}.
    parse_budget: Any = None

    def __init__(
        self,
        owner: ILinkOwner,
        handshake: AcceptorHandshake | ConnectorHandshake,
        certificate: NodeCertificate | None = None,
    ):
        self.owner = owner
        self.certificate = certificate
        self.encrypted = False
        self._upgrade: CertificateOptions | None = None
        self._tls_binding: Binding | None = None
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
        self._fast_types: frozenset[str] | None = None  # see BulkReceiver
        self.traffic = Traffic()
        self.outcome: Authenticated | None = None
        self._timer: IDelayedCall | None = None
        self._ping = None  # see Pinger
        self._initOutbound(owner.writes)
        self._closed_waiters: list[Deferred[None]] = []
        self._dispatch = {
            State.AWAITING_CHALLENGE: self._challengeReceived,
            State.AWAITING_HANDSHAKE: self._handshakeReceived,
            State.AWAITING_ACK: self._ackReceived,
        }

    # -- connection lifecycle ------------------------------------------------

    def connectionMade(self) -> None:
        self.address = format_address(self.transport.getPeer())
        # Lines are coalesced here (WriteBatch), so Nagle's algorithm would
        # only hold a reply back until the peer's delayed ACK.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self._startProducing()
        self.last_received = self.clock.seconds()
        self._timer = self.clock.callLater(HANDSHAKE_TIMEOUT, self._handshakeTimedOut)
        self.encrypted = ISSLTransport.providedBy(self.transport)
        if self.encrypted:
            self._tls = use_relay_tls(self.transport)  # a tls: listener or dial
        if isinstance(self.handshake, AcceptorHandshake):
            self.handshake.can_upgrade = self._canUpgrade()
            self._sendChallenge()
        else:
            self._watchChallenge()  # a TLS listener would never answer a plain dial

    def _canUpgrade(self) -> bool:
        """
        Whether this connection can switch to TLS: it is plain TCP, and this
        node has a certificate to present.
        """
        return (
            self.certificate is not None
            and not self.encrypted
            and ITLSTransport.providedBy(self.transport)
        )

    def _sendChallenge(self) -> None:
        assert isinstance(self.handshake, AcceptorHandshake)
        self.sendMessage(
            self.owner.message(MessageType.CHALLENGE, self.handshake.challenge_payload(), from_peer="")
        )

    def dataReceived(self, data: bytes) -> None:
        if self._fast_types is not None:
            self._bulkReceived(data)
            return
        if not self._heard and self._firstBytes(data, self.direction is Direction.OUTBOUND):
            return
        LineFramer.dataReceived(self, data)
        if self._upgrade is not None and self.close_reason is None:
            self._startTLS()

    def _startTLS(self) -> None:
        """
        Switch to TLS, after the last line in clear (the C{starttls} request
        or its ack) was handled and written; the handshake starts over
        inside TLS.
        """
        options, self._upgrade = self._upgrade, None
        self.flush()
        try:
            self.transport.startTLS(options)
            self._tls = use_relay_tls(self.transport)
            self.handshake.upgraded()
        except Exception as e:  # a transport or TLS library refusing
            self.abort(f"cannot start TLS: {e}")
            return
        self.encrypted = True
        if isinstance(self.handshake, AcceptorHandshake):
            self._sendChallenge()
        else:
            self.state = State.AWAITING_CHALLENGE

    def connectionLost(self, reason: Failure | None = None) -> None:
        if isinstance(self.handshake, AcceptorHandshake):
            self.handshake.retire()
        previous, self.state = self.state, State.CLOSED
        self._cancelTimer()
        self._stopWatching()
        self._closeOutbound()
        closed, self._closed_waiters = self._closed_waiters, []
        for d in closed:
            d.callback(None)
        why = (
            self.close_reason
            or self._explainLoss(reason, self.direction is Direction.OUTBOUND)
            or _describe(reason)
        )
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
            or self._upgrade is not None
            or bool(self.transport.disconnecting)
        )

    def stoppedBefore(self, unread: bytes) -> None:
        """
        Nothing may follow the last line in clear before the switch to TLS:
        bytes there were put on the wire by someone else.
        """
        if self._upgrade is not None and unread:
            self._upgrade = None
            self.abort("bytes in clear after the TLS upgrade was agreed (injected on the path?)")

    def linesArriving(self) -> WriteBatch:
        """
        Note when lines arrived (once per chunk), and coalesce whatever they
        make this node send (L{WriteBatch}).
        """
        self.last_received = self.clock.seconds()
        return self._writes

    def lineLengthExceeded(self, line: bytes | bytearray) -> None:
        self._buffer = b""
        self._violation(f"line longer than {self.MAX_LENGTH} bytes")

    def lineReceived(self, line: bytes) -> None:
        # Never after this side closed: LineFramer asks stopped() first.
        if self.state is not _CONNECTED and self.parse_budget is not None:
            if not self.parse_budget.spend(len(line)):
                self.abort("too much handshake traffic from unauthenticated connections")
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
            # Nearly every line: checked inline; _messageRefused only says
            # why a message is refused.
            if message.from_peer == self.peer_id and message.msg_type not in HANDSHAKE_TYPES:
                if message.msg_type in LINK_TYPES:
                    self._linkMessage(message)
                elif fields is None:
                    self.owner.messages_received(self, (message,))
                else:
                    self.owner.fields_received(self, message, fields)
            else:
                self._messageRefused(message)
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
        The TLS certificate fingerprints as (server, client), or C{None}.

        Read from the TLS session once both certificates are known, then
        kept: TLS 1.3 (the only version relaymesh speaks) cannot change
        them on an open connection.
        """
        binding = self._tls_binding
        if binding is not None:
            return binding
        binding = channel_binding(self.transport)
        if binding is None:
            return None
        if self.direction is Direction.OUTBOUND:
            binding = binding[1], binding[0]
        if binding[0] and binding[1]:
            self._tls_binding = binding
        return binding

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
        if verdict.upgrade:
            assert self.certificate is not None
            self._upgrade = self.certificate.server_options()
        elif outcome is not None:
            self._authenticated(outcome)

    def _challengeReceived(self, message: RelayMessage) -> None:
        try:
            payload = self.handshake.answer(message, self._binding())
            if payload.get(STARTTLS_FIELD) is True and not self._canUpgrade():
                raise HandshakeFailed(
                    f"{self.address} offers TLS, but this node has no certificate to upgrade with"
                )
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
            if self.handshake.step is ConnectorStep.UPGRADING:
                assert self.certificate is not None
                self._upgrade = self.certificate.client_options()
            else:
                assert reply is not None
                self.sendMessage(self.owner.message(MessageType.HANDSHAKE, reply))
            return
        try:
            self.factory.handshakeVerified(self, outcome)
        except HandshakeFailed as e:
            self.close(str(e))
            return
        self._authenticated(outcome)

    def _messageRefused(self, message: RelayMessage) -> None:
        """
        Close for a connected peer's message that is not its to send: a
        handshake message, or one that claims another sender.
        """
        if message.msg_type in HANDSHAKE_TYPES:
            self._violation(f"unexpected {message.msg_type} after the handshake")
        else:
            self._violation(f"message claims to be from {message.from_peer[:40]!r}")

    # -- handshake outcome ---------------------------------------------------

    def _sendAck(self, payload: dict[str, Any]) -> None:
        self.sendMessage(self.owner.message(MessageType.HANDSHAKE_ACK, payload))

    def _authenticated(self, outcome: Authenticated) -> None:
        self._cancelTimer()
        self.outcome = outcome
        self.MAX_LENGTH = MAX_LINE_BYTES
        self.peer_id = outcome.peer_id
        self.state = State.CONNECTED
        self.connected_at = self.clock.seconds()
        self.factory.handshakeSucceeded(self)
        self.reads_fields = self.owner.reads_fields(outcome.capabilities)
        if self.owner.peer_authenticated(self):
            self._armIdleTimer()
            if self.state is _CONNECTED:
                self._startBulk(BULK_TYPES_FIELDS if self.reads_fields else BULK_TYPES)

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

    def whenClosed(self) -> Deferred[None]:
        """
        A C{Deferred} that fires (with C{None}) once the connection is
        closed: at once if it is.
        """
        d: Deferred[None] = Deferred()
        if self.state is State.CLOSED:
            d.callback(None)
        else:
            self._closed_waiters.append(d)
        return d



def _describe(reason: Failure | None) -> str:
    if reason is None:
        return "connection closed"
    text = reason.getErrorMessage()
    return text.rstrip(".") or "connection closed"
