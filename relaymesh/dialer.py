"""
The dialer: the reconnecting client factory that keeps dialling one peer
address with claudectl's backoff, and chooses the key to prove.
"""

from __future__ import annotations

import random
from typing import Callable, NamedTuple

from twisted.internet.interfaces import IAddress, IConnector, IReactorTime
from twisted.internet.protocol import ReconnectingClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relaymesh import pairing
from relaymesh.acceptor import LOCKOUT_FAILURES, FailureTracker
from relaymesh.address import PeerAddress
from relaymesh.connection import RelayProtocol
from relaymesh.events import Direction
from relaymesh.handshake.base import PENDING_FORM, Authenticated, HandshakeFailed, KeyLookup
from relaymesh.handshake.connector import ConnectorHandshake
from relaymesh.handshake.proofs import LEGACY_FIELD
from relaymesh.interfaces import IHandshakeObserver
from relaymesh.keystore import KeyStoreError
from relaymesh.mesh import Mesh

#: Reconnection backoff: 5, 10, 20, 40, 60, 60, ... seconds.
RETRY_INITIAL_DELAY = 5.0  # claudectl 0.49: 5 s
RETRY_MAX_DELAY = 60.0  # claudectl 0.49: 60 s
RETRY_FACTOR = 2.0  # claudectl 0.49: doubling

#: Seconds to wait for TCP to connect.
CONNECT_TIMEOUT = 10  # claudectl 0.49: 10 s


class _Candidate(NamedTuple):
    """
    A key to try: the peer it belongs to (L{None} for the pending key), and
    the key (L{None} to pair with the factory's strong code instead).
    """

    peer_id: str | None
    key: bytes | None


@implementer(IHandshakeObserver)
class RelayClientFactory(ReconnectingClientFactory):
    """
    Dials one peer address and keeps dialling it.

    Retries wait 5, 10, 20, 40, 60, 60, ... seconds (the arithmetic of
    Twisted 26.4 and later), and the sequence starts over only once a
    handshake succeeds: a peer that accepts TCP and then denies our key is
    not hammered.

    With a peer id in the address, the key stored for it (or else the pending
    key) is proved, and the acceptor must answer as that id. Without one,
    every stored key and then the pending key is tried in turn, one
    connection each, paced so that fewer than the acceptor's lockout number
    of failures fall within its lockout window.

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
    """

    log = Logger()
    noisy = False

    initialDelay = RETRY_INITIAL_DELAY
    delay = RETRY_INITIAL_DELAY  # the base class would start at its own 1 s
    maxDelay = RETRY_MAX_DELAY
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
    ) -> None:
        self.mesh = mesh
        self.strong_code = strong_code
        self.keys = keys
        self.target = target
        self.peer_id = target.peer_id
        self.clock = clock
        self.jitter_fraction = jitter
        self._rng = rng
        self.parked = False
        self._candidates: list[_Candidate] = []
        self._index = 0
        self._rejections = FailureTracker(clock)
        self._current: _Candidate | None = None

    # -- choosing a key ------------------------------------------------------

    def _load_candidates(self) -> list[_Candidate]:
        if self.strong_code is not None:
            return [_Candidate(None, None)]
        keys = self.keys
        if self.peer_id is not None:
            owners: list[str | None] = [self.peer_id]
        else:
            owners = list(keys.peers())
        candidates = []
        for owner in owners:
            try:
                key = keys.key(owner)
            except KeyStoreError as e:
                self.log.error("cannot use the key of {peer_id}: {error}", peer_id=owner, error=e)
                continue
            if key is not None:
                candidates.append(_Candidate(owner, key))
        if self.peer_id is None or not candidates:
            try:
                pending = keys.pending_key()
            except KeyStoreError as e:
                self.log.error("cannot use the pending key: {error}", error=e)
                pending = None
            if pending is not None:
                candidates.append(_Candidate(None, pending))
        return candidates

    def startedConnecting(self, connector: IConnector) -> None:
        if self._index == 0 or self._index >= len(self._candidates):
            self._index = 0
            self._candidates = self._load_candidates()
        if not self._candidates:
            who = self.peer_id or self.target.hostport
            self.log.error(
                "no key to connect to {who}: pair first (relaymesh pair / relaymesh accept)",
                who=who,
            )
            connector.stopConnecting()
            return
        self._current = self._candidates[self._index]
        self.mesh.registry.peer_connecting(self.peer_id, self.target.hostport)

    def buildProtocol(self, addr: IAddress) -> RelayProtocol:
        candidate = self._current
        expected = candidate.peer_id if candidate.peer_id is not None else self.peer_id
        protocol = RelayProtocol(
            self.mesh,
            ConnectorHandshake(
                self.mesh.identity,
                candidate.key,
                expected,
                legacy=self._is_legacy(expected),
                keys=self.keys,
                strong_code=self.strong_code if candidate.key is None else None,
                capabilities=self.mesh.capabilities,
                paired_via=PENDING_FORM if candidate.peer_id is None and candidate.key else None,
            ),
        )
        protocol.factory = self
        return protocol

    def _is_legacy(self, peer_id: str | None) -> bool:
        """
        Whether the peer is a claudectl-style peer that does not prove the key
        back: marked C{legacy:} in the address or C{"legacy": true} in its
        meta file.
        """
        if self.target.legacy:
            return True
        if peer_id is None:
            return False
        try:
            return self.keys.meta(peer_id).get(LEGACY_FIELD) is True
        except (KeyStoreError, OSError, ValueError):
            return False

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
        self._index = 0
        self.peer_id = outcome.peer_id

    def handshakeFailed(self, protocol: RelayProtocol, reason: str) -> None:
        """
        Report the failure; if our proof was refused, move on to the next key.
        """
        self.mesh.registry.handshake_denied(self.peer_id, protocol.address, Direction.OUTBOUND, reason)
        if protocol.proof_rejected:
            self._rejections.record(self.target.host)
            self._index += 1

    # -- scheduling ----------------------------------------------------------

    def clientConnectionLost(self, connector: IConnector, reason: Failure) -> None:
        if not self.continueTrying:
            return
        self.connector = connector
        if self.peer_id is not None and self.mesh.is_connected(self.peer_id):
            self.parked = True
            return
        if 0 < self._index < len(self._candidates):
            self._next_key(connector)
        else:
            self._index = 0
            self.retry()

    def _next_key(self, connector: IConnector) -> None:
        # Stay below the acceptor's lockout: fewer than LOCKOUT_FAILURES
        # rejections of ours in any LOCKOUT_WINDOW.
        wait = self._rejections.wait(self.target.host, LOCKOUT_FAILURES - 1)
        self._schedule(connector, wait)

    def _schedule(self, connector: IConnector, wait: float) -> None:
        """
        Dial again after C{wait} seconds, leaving the backoff as it is.
        """
        planned, retries = self.delay, self.retries
        self.delay = wait
        self._retry(connector, wait)
        self.delay, self.retries = planned, retries

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
        Have L{ReconnectingClientFactory.retry} schedule the next dial in
        C{wait} seconds (the current L{delay}), and report it.
        """
        ReconnectingClientFactory.retry(self, connector)
        if self.continueTrying and (self.maxRetries is None or self.retries <= self.maxRetries):
            self.mesh.registry.reconnect_scheduled(self.peer_id, self.target.hostport, self.retries, wait)

    def wake(self) -> None:
        """
        The peer's other connection ended: dial again, after the backoff.
        """
        if self.parked and self.continueTrying and self.connector is not None:
            self.parked = False
            self.retry()
