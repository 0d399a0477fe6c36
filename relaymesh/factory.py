"""
The two factories: the acceptor with its limits, and the reconnecting
connector with its backoff.
"""

from __future__ import annotations

import collections
import os
import random
from typing import Callable, NamedTuple

from twisted.internet.interfaces import IAddress, IConnector, IReactorTime
from twisted.internet.protocol import Factory, ReconnectingClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaymesh.address import PeerAddress
from relaymesh.handshake.roles import (
    LEGACY_FIELD,
    STRONG_FORM,
    AcceptorHandshake,
    ConnectorHandshake,
    KeyLookup,
)
from relaymesh.keystore import KeyStoreError
from relaymesh.mesh import Mesh
from relaymesh.connection import INBOUND, OUTBOUND, RelayProtocol

#: Handshakes in progress at once; more connections are refused.
MAX_HANDSHAKES = 16  # claudectl 0.49: 16

#: Handshakes in progress from one address at once, so that one address
#: cannot take every handshake slot (claudectl has no such limit).
MAX_HANDSHAKES_PER_ADDRESS = 4

#: Failed handshakes from one address within L{LOCKOUT_WINDOW} seconds after
#: which that address is refused until the first of them is that old.
LOCKOUT_FAILURES = 5  # claudectl 0.49: 5
LOCKOUT_WINDOW = 60.0  # claudectl 0.49: 60 s

#: Reconnection backoff: 5, 10, 20, 40, 60, 60, ... seconds.
RETRY_INITIAL_DELAY = 5.0  # claudectl 0.49: 5 s
RETRY_MAX_DELAY = 60.0  # claudectl 0.49: 60 s
RETRY_FACTOR = 2.0  # claudectl 0.49: doubling

#: Seconds to wait for TCP to connect.
CONNECT_TIMEOUT = 10  # claudectl 0.49: 10 s


class FailureTracker:
    """
    Failed handshakes per address, for the lockout.

    An address with L{LOCKOUT_FAILURES} failures in the last
    L{LOCKOUT_WINDOW} seconds is refused; that is, until the first of those
    failures is L{LOCKOUT_WINDOW} seconds old.
    """

    #: Addresses tracked before stale ones are swept.
    SWEEP_AT = 1024

    def __init__(
        self,
        clock: IReactorTime,
        limit: int = LOCKOUT_FAILURES,
        window: float = LOCKOUT_WINDOW,
    ) -> None:
        self._clock = clock
        self._limit = limit
        self._window = window
        self._failures: dict[str, collections.deque[float]] = {}

    def _recent(self, host: str, now: float) -> collections.deque[float] | None:
        times = self._failures.get(host)
        if times is not None:
            while times and now - times[0] >= self._window:
                times.popleft()
            if not times:
                del self._failures[host]
                return None
        return times

    def refused(self, host: str) -> bool:
        """
        Whether C{host} is locked out now.
        """
        times = self._recent(host, self._clock.seconds())
        return times is not None and len(times) >= self._limit

    def count(self, host: str) -> int:
        """
        How many failures from C{host} are recent enough to count.
        """
        times = self._recent(host, self._clock.seconds())
        return 0 if times is None else len(times)

    def wait(self, host: str, below: int) -> float:
        """
        Seconds until fewer than C{below} recent failures from C{host} count.
        """
        now = self._clock.seconds()
        times = self._recent(host, now)
        if times is None or len(times) < below:
            return 0.0
        return times[len(times) - below] + self._window - now

    def record(self, host: str) -> None:
        """
        Count one failed handshake from C{host}.
        """
        now = self._clock.seconds()
        if len(self._failures) >= self.SWEEP_AT:
            for tracked in list(self._failures):
                self._recent(tracked, now)  # drops the address if nothing is recent
        times = self._failures.setdefault(host, collections.deque(maxlen=self._limit))
        times.append(now)


def _host(address: IAddress) -> str:
    return getattr(address, "host", None) or str(address)


class RelayServerFactory(Factory):
    """
    Accepts inbound peers, within claudectl's limits.

    A connection is refused (closed before the challenge, without a byte)
    when its address is locked out, when L{max_handshakes} handshakes are in
    progress (or L{MAX_HANDSHAKES_PER_ADDRESS} from its address), or when
    the mesh has its maximum number of peers.
    """

    log = Logger()
    noisy = False

    def __init__(
        self,
        mesh: Mesh,
        keys: KeyLookup,
        max_handshakes: int = MAX_HANDSHAKES,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.mesh = mesh
        self.keys = keys
        self.max_handshakes = max_handshakes
        self.failures = FailureTracker(mesh.clock)
        self._randbytes = randbytes
        self._handshaking: dict[RelayProtocol, str] = {}
        self._handshaking_per_host: collections.Counter[str] = collections.Counter()

    def handshakes_in_progress(self) -> int:
        """
        How many inbound connections have not finished their handshake.
        """
        return len(self._handshaking)

    def handshaking(self) -> list[RelayProtocol]:
        """
        The inbound connections that have not finished their handshake.
        """
        return list(self._handshaking)

    def refusal(self, host: str) -> str | None:
        """
        Why a new connection from C{host} is refused now, or L{None}.
        """
        if self.failures.refused(host):
            return f"too many failed handshakes from {host}"
        if len(self._handshaking) >= self.max_handshakes:
            return f"{self.max_handshakes} handshakes already in progress"
        if self._handshaking_per_host[host] >= MAX_HANDSHAKES_PER_ADDRESS:
            return f"{MAX_HANDSHAKES_PER_ADDRESS} handshakes already in progress from {host}"
        if self.mesh.connected_count() >= self.mesh.max_peers:
            return f"peer limit of {self.mesh.max_peers} reached"
        return None

    def buildProtocol(self, addr: IAddress) -> RelayProtocol | None:
        host = _host(addr)
        reason = self.refusal(host)
        if reason is not None:
            self.log.debug("refused connection from {host}: {reason}", host=host, reason=reason)
            return None
        protocol = RelayProtocol(
            self.mesh,
            AcceptorHandshake(
                self.keys,
                self._randbytes,
                clock=self.mesh.clock,
                identity=self.mesh.identity,
                capabilities=self.mesh.capabilities,
            ),
        )
        protocol.factory = self
        self._handshaking[protocol] = host
        self._handshaking_per_host[host] += 1
        return protocol

    def _finished(self, protocol: RelayProtocol) -> str | None:
        host = self._handshaking.pop(protocol, None)
        if host is not None:
            self._handshaking_per_host[host] -= 1
            if not self._handshaking_per_host[host]:
                del self._handshaking_per_host[host]
        return host

    def handshakeSucceeded(self, protocol: RelayProtocol) -> None:
        """
        The peer proved its key.
        """
        self._finished(protocol)

    def handshakeFailed(self, protocol: RelayProtocol, reason: str) -> None:
        """
        The connection closed before the handshake succeeded; count it
        against the address.
        """
        host = self._finished(protocol)
        if host is None:
            return
        self.failures.record(host)
        self.mesh.handshake_denied(
            protocol.handshake.claimed_peer, protocol.address, INBOUND, reason
        )


class _Candidate(NamedTuple):
    """
    A key to try: the peer it belongs to (L{None} for the pending key), and
    the key (L{None} to pair with the factory's strong code instead).
    """

    peer_id: str | None
    key: bytes | None


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
        self.mesh.peer_connecting(self.peer_id, self.target.hostport)

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

    def handshakeSucceeded(self, protocol: RelayProtocol) -> None:
        """
        Start the backoff over, learn the peer's id, and keep a pending key
        that worked as that peer's key.
        """
        if not protocol.handshake.mutual:
            self.log.warn(
                "{peer_id} is a legacy peer: it did not prove that it holds the key "
                "(one-way authentication, as claudectl does)",
                peer_id=protocol.peer_id,
            )
        self.resetDelay()
        self._index = 0
        try:
            new_key = protocol.handshake.new_key
            if new_key is not None:
                self.strong_code = None
                self.keys.set_key(protocol.peer_id, new_key)
                self.keys.update_meta(
                    protocol.peer_id,
                    paired_at=int(self.clock.seconds() * 1000),
                    paired_via=STRONG_FORM,
                )
            elif self._current is not None and self._current.peer_id is None:
                self.keys.claim_pending_key(protocol.peer_id)
        except (KeyStoreError, OSError) as e:
            self.log.error(
                "could not store the key of {peer_id}: {error}",
                peer_id=protocol.peer_id,
                error=e,
            )
        self.peer_id = protocol.peer_id

    def handshakeFailed(self, protocol: RelayProtocol, reason: str) -> None:
        """
        Report the failure; if our proof was refused, move on to the next key.
        """
        self.mesh.handshake_denied(self.peer_id, protocol.address, OUTBOUND, reason)
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
        def reconnect() -> None:
            self._callID = None
            connector.connect()

        self._callID = self.clock.callLater(wait, reconnect)
        self.mesh.reconnect_scheduled(self.peer_id, self.target.hostport, self.retries, wait)

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
        scheduled = self.delay
        ReconnectingClientFactory.retry(self, connector)
        self.delay = min(planned * self.factor, self.maxDelay)
        if self._callID is not None:
            self.mesh.reconnect_scheduled(
                self.peer_id, self.target.hostport, self.retries, scheduled
            )

    def wake(self) -> None:
        """
        The peer's other connection ended: dial again, after the backoff.
        """
        if self.parked and self.continueTrying and self.connector is not None:
            self.parked = False
            self.retry()

    def resetBackoff(self) -> None:
        """
        Forget the backoff (after a network change): dial now if waiting.
        """
        if self._callID is not None and self._callID.active():
            self._callID.reset(0)
        self.delay = self.initialDelay
        self.retries = 0
