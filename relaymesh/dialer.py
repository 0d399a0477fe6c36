"""
The dialer: the reconnecting client factory that keeps dialling one peer
address with claudectl's backoff, and chooses the key to prove.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet import error
from twisted.internet.interfaces import IAddress, IConnector, IReactorTime
from twisted.internet.protocol import ReconnectingClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relaymesh import pairing
from relaymesh.address import PeerAddress
from relaymesh.connection import RelayProtocol
from relaymesh.events import Direction
from relaymesh.handshake.base import (
    PENDING_FORM,
    Authenticated,
    HandshakeFailed,
    KeyLookup,
    legacy_mark,
)
from relaymesh.handshake.connector import ConnectorHandshake
from relaymesh.interfaces import IHandshakeObserver
from relaymesh.keystore import KeyStoreError
from relaymesh.linkerrors import connect_failure
from relaymesh.mesh import Mesh

if TYPE_CHECKING:
    from relaymesh.tls import NodeCertificate

#: Reconnection backoff: 5, 10, 20, 40, 60, 60, ... seconds.
RETRY_INITIAL_DELAY = 5.0  # claudectl 0.49: 5 s
RETRY_MAX_DELAY = 60.0  # claudectl 0.49: 60 s
RETRY_FACTOR = 2.0  # claudectl 0.49: doubling

#: Seconds to wait for TCP to connect.
CONNECT_TIMEOUT = 10  # claudectl 0.49: 10 s


@implementer(IHandshakeObserver)
class RelayClientFactory(ReconnectingClientFactory):
    """
    Dials one peer address and keeps dialling it.

    Retries wait 5, 10, 20, 40, 60, 60, ... seconds (the arithmetic of
    Twisted 26.4 and later), and the sequence starts over only once a
    handshake succeeds: a peer that accepts TCP and then denies our key is
    not hammered.

    With a peer id in the address, the key stored for it (or else the pending
    key) is proved, and the acceptor must name itself as that id. Without
    one, the key of whichever peer the acceptor names itself as (or else the
    pending key) is proved; an acceptor that does not name itself (claudectl)
    gets no proof unless the address is C{legacy:} with the peer's id.

    When the peer is connected through another connection (it dialled us at
    the same time and that connection won), this factory waits, and dials
    again once that connection is gone (L{wake}).

    @ivar target: The address dialled.
    @ivar peer_id: The peer's id: from the address, or learned from the
        first successful handshake.
    @ivar jitter_fraction: Each wait is multiplied by a random factor in
        M{[1 - j, 1 + j]} and kept within 5..60 s; 0 (the default) for none.
    @ivar parked: Whether the factory waits for the peer's other connection
        to end.
    @ivar current: The protocol of the latest connection it made, if any.
    @ivar last_error: Why the latest attempt failed (TCP refused or timed
        out, host unknown, a TLS mismatch, a handshake denied or failed),
        one line; C{None} before any failure and once a handshake succeeds.
        With a peer id it is also the peer's L{PeerStatus.last_error}.
    @ivar last_error_at: When that failure happened (clock seconds).

    Each failure is logged once per change of reason: an attempt that
    fails like the one before, and the retry it schedules, are logged at
    debug level only.
    """

    log = Logger()
    noisy = False

    initialDelay = RETRY_INITIAL_DELAY
    delay = RETRY_INITIAL_DELAY  # the base class would start at its own 1 s
    # ReconnectingClientFactory leaves these unannotated, so they are taken
    # for the types of its defaults (an int, None, the global reactor); it
    # documents a number, an optional int and an IReactorTime.
    maxDelay: float = RETRY_MAX_DELAY  # type: ignore[assignment]
    maxRetries: int | None  # type: ignore[assignment]
    clock: IReactorTime  # type: ignore[assignment]
    factor = RETRY_FACTOR
    jitter = 0  # the base class's jitter compounds; see jitter_fraction

    def __init__(
        self,
        mesh: Mesh,
        keys: KeyLookup,
        target: PeerAddress,
        clock: IReactorTime,
        jitter: float = 0.0,
        rng: Callable[[], float] = random.random,
        strong_code: str | None = None,
        certificate: NodeCertificate | None = None,
    ) -> None:
        self.mesh = mesh
        self.certificate = certificate
        self.strong_code = strong_code
        self.keys = keys
        self.target = target
        self.peer_id = target.peer_id
        self.clock = clock
        self.jitter_fraction = jitter
        self._rng = rng
        self.parked = False
        self.current: RelayProtocol | None = None
        self._key: bytes | None = None
        self._paired_via: str | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._repeated = False

    if TYPE_CHECKING:
        # ReconnectingClientFactory's own, which Twisted leaves unannotated

        def resetDelay(self) -> None: ...

        def stopTrying(self) -> None: ...

    # -- choosing a key ------------------------------------------------------

    def _choose_key(self) -> bool:
        """
        The key to prove to the peer named in the address: its own, or the
        pending key (C{None} for a bare address or a strong code, when the
        handshake finds it). Whether there is something to prove.
        """
        self._key, self._paired_via = None, None
        if self.strong_code is not None or self.peer_id is None:
            return True
        try:
            self._key = self.keys.key(self.peer_id)
            if self._key is None:
                self._key = self.keys.pending_key()
                self._paired_via = PENDING_FORM
        except KeyStoreError as e:
            if not self._failed(f"cannot use the key of {self.peer_id}: {e}"):
                self.log.error("cannot use the key of {peer_id}: {error}", peer_id=self.peer_id, error=e)
            return False
        if self._key is None:
            if not self._failed(f"no key for {self.peer_id}: pair first (relaymesh invite / relaymesh join)"):
                self.log.error(
                    "no key to connect to {peer_id}: pair first (relaymesh invite / relaymesh join)",
                    peer_id=self.peer_id,
                )
            return False
        return True

    def startedConnecting(self, connector: IConnector) -> None:
        if not self._choose_key():
            connector.stopConnecting()
            return
        self.mesh.registry.peer_connecting(self.peer_id, self.target.hostport)

    # Twisted's Factory wants protocols whose factory is a Factory of them;
    # a RelayProtocol's is typed by what it tells it (IHandshakeObserver).
    def buildProtocol(self, addr: IAddress | None) -> RelayProtocol:  # type: ignore[override]
        protocol = RelayProtocol(
            self.mesh,
            ConnectorHandshake(
                self.mesh.identity,
                self._key,
                self.peer_id,
                legacy=self._key is not None and self._is_legacy(self.peer_id),
                keys=self.keys,
                strong_code=self.strong_code,
                capabilities=self.mesh.capabilities,
                paired_via=self._paired_via,
                issued=self.mesh.issued_nonces,
            ),
            self.certificate,
        )
        protocol.factory = self
        self.current = protocol
        return protocol

    def _is_legacy(self, peer_id: str | None) -> bool:
        """
        Whether the peer's key may be proved in claudectl's one-way form: it
        is marked legacy (C{"legacy": true} in its meta file), or the address
        says C{legacy:} and the key was never used with a relaymesh peer.
        A key that was is not downgraded by an address: only
        C{relaymesh mark-legacy} does that.
        """
        if peer_id is None:
            return False
        try:
            marked = legacy_mark(self.keys, peer_id)
        except HandshakeFailed:
            return False
        if self.target.legacy and marked is False:
            self.log.error(
                "{peer_id} is dialled as legacy:, but its key was used with a relaymesh peer, "
                "so it is not proved in claudectl's one-way form; if {peer_id} is now a "
                "claudectl peer, run: relaymesh mark-legacy {peer_id}",
                peer_id=peer_id,
            )
        return marked is True or (self.target.legacy and marked is None)

    # -- handshake outcome ---------------------------------------------------

    def handshakeVerified(self, protocol: RelayProtocol, outcome: Authenticated) -> None:
        """
        The peer proved its key: record the key paired (a pending key that
        worked, a strong pairing's new key) and a certificate seen for the
        first time (L{relaymesh.pairing.record}). A failure to record is
        logged; the connection goes on.
        """
        try:
            pairing.record(self.keys, outcome, self.clock.seconds())
        except HandshakeFailed as e:
            self.log.error("{error}", error=e)
        if outcome.paired_via is not None:
            self.strong_code = None

    def handshakeSucceeded(self, protocol: RelayProtocol) -> None:
        """
        Start the backoff over and learn the peer's id.
        """
        outcome = protocol.outcome
        assert outcome is not None
        if not outcome.mutual:
            self.log.warn(
                "{peer_id} is a legacy peer: it did not prove that it holds the key "
                "(one-way authentication, as claudectl does)",
                peer_id=protocol.peer_id,
            )
        self.resetDelay()
        self.peer_id = outcome.peer_id
        self.last_error = self.last_error_at = None
        self._repeated = False

    def handshakeFailed(self, protocol: RelayProtocol, reason: str) -> None:
        """
        Report the failure: logged (quietly if it failed as the attempt
        before did) and kept as the last error.
        """
        if protocol.proof_rejected and reason.startswith("the peer denied"):
            reason = (
                f"{reason}: {protocol.address} does not accept this node's key (it has no key "
                f"for {self.mesh.identity}, or another one); pair again (relaymesh invite / "
                f"relaymesh join)"
            )
        repeated = self._failed(reason)
        self.mesh.registry.handshake_denied(
            self.peer_id, protocol.address, Direction.OUTBOUND, reason, quiet=repeated
        )

    def _failed(self, reason: str) -> bool:
        """
        Keep C{reason} as the last error (the peer's too, when its id is
        known).

        @return: whether the attempt before failed for the same reason
            (this failure is then logged quietly).
        """
        repeated = self._repeated = reason == self.last_error
        self.last_error, self.last_error_at = reason, self.clock.seconds()
        if self.peer_id is not None:
            self.mesh.registry.failed(self.peer_id, reason)
        return repeated

    # -- scheduling ----------------------------------------------------------

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        """
        TCP did not connect: say why (once per change of reason), and retry.
        """
        if type(reason.value) is error.UserError:  # stopped here (no key): said already
            ReconnectingClientFactory.clientConnectionFailed(self, connector, reason)
            return
        why = connect_failure(reason, self.target.host, self.target.hostport, CONNECT_TIMEOUT)
        if not self._failed(why):
            where = self.target.hostport
            self.log.warn(
                "cannot connect to {target}: {reason}",
                target=where if self.peer_id is None else f"{self.peer_id} at {where}",
                peer=self.peer_id,
                address=where,
                reason=why,
            )
        ReconnectingClientFactory.clientConnectionFailed(self, connector, reason)

    def clientConnectionLost(self, connector: IConnector, reason: Failure) -> None:
        if not self.continueTrying:
            return
        self.connector = connector
        if self.peer_id is not None and self.mesh.is_connected(self.peer_id):
            self.parked = True
            return
        self.retry()

    def retry(self, connector: IConnector | None = None) -> None:
        """
        Dial again after the current backoff delay (jittered if asked),
        then grow the delay.
        """
        if not self.continueTrying:
            return
        planned = self.delay
        if self.jitter_fraction:
            spread = 1 + self.jitter_fraction * (2 * self._rng() - 1)
            self.delay = min(max(planned * spread, self.initialDelay), self.maxDelay)
        self._retry(connector, self.delay)
        self.delay = min(planned * self.factor, self.maxDelay)

    def _retry(self, connector: IConnector | None, wait: float) -> None:
        """
        Have C{ReconnectingClientFactory.retry} schedule the next dial in
        C{wait} seconds (the current L{delay}), and report it.
        """
        ReconnectingClientFactory.retry(self, connector)
        if self.continueTrying and (self.maxRetries is None or self.retries <= self.maxRetries):
            self.mesh.registry.reconnect_scheduled(
                self.peer_id, self.target.hostport, self.retries, wait, quiet=self._repeated
            )

    def wake(self) -> None:
        """
        The peer's other connection ended: dial again, after the backoff.
        """
        if self.parked and self.continueTrying and self.connector is not None:
            self.parked = False
            self.retry()
