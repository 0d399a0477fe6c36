"""
The acceptor: the server factory that admits inbound peers within
claudectl's limits, and the lockout of addresses that fail handshakes.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from relaymesh import pairing
from relaymesh.connection import HANDSHAKE_MAX_LINE, RelayProtocol
from relaymesh.events import Direction
from relaymesh.handshake.acceptor import AcceptorHandshake
from relaymesh.handshake.base import Authenticated, KeyLookup
from relaymesh.interfaces import IHandshakeObserver
from relaymesh.mesh import Mesh

if TYPE_CHECKING:
    from relaymesh.tls import NodeCertificate

#: Handshakes in progress at once; more connections are refused.
MAX_HANDSHAKES = 16  # claudectl 0.49: 16

#: Handshakes in progress from one address at once, so that one address
#: cannot take every handshake slot (claudectl has no such limit).
MAX_HANDSHAKES_PER_ADDRESS = 4

#: Failed handshakes from one address within L{LOCKOUT_WINDOW} seconds after
#: which that address is refused until the first of them is that old.
LOCKOUT_FAILURES = 5  # claudectl 0.49: 5
LOCKOUT_WINDOW = 60.0  # claudectl 0.49: 60 s

#: Bytes of lines from connections that have not authenticated that the
#: node parses per second, every such connection together, and the burst
#: it allows: a flood of connections from many addresses (which the
#: lockout does not stop) cannot keep the reactor busy parsing JSON.
PREAUTH_BYTES_PER_SECOND = 512 * 1024
PREAUTH_BURST = 1024 * 1024


class ParseBudget:
    """
    A token bucket of bytes that unauthenticated connections may have
    parsed: it fills at C{rate} bytes per second up to C{burst}.
    """

    def __init__(
        self,
        clock: IReactorTime,
        rate: float = PREAUTH_BYTES_PER_SECOND,
        burst: float = PREAUTH_BURST,
    ) -> None:
        self._clock = clock
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = clock.seconds()

    def _fill(self) -> float:
        now = self._clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        return self._tokens

    def exhausted(self) -> bool:
        """
        Whether less is left than a new connection's longest line.
        """
        return self._fill() < HANDSHAKE_MAX_LINE

    def spend(self, size: int) -> bool:
        """
        Take C{size} bytes from the budget; whether there were enough.
        """
        if self._fill() < size:
            return False
        self._tokens -= size
        return True


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


def _host(address: IAddress | None) -> str:
    return getattr(address, "host", None) or str(address)


@implementer(IHandshakeObserver)
class RelayServerFactory(Factory):
    """
    Accepts inbound peers, within claudectl's limits.

    A connection is refused (closed before the challenge, without a byte)
    when its address is locked out, when L{max_handshakes} handshakes are in
    progress (or L{MAX_HANDSHAKES_PER_ADDRESS} from its address), when the
    unauthenticated connections used up their L{ParseBudget}, or when the
    mesh has its maximum number of peers.

    With this node's C{certificate}, the challenge offers relaymesh
    connectors the in-band upgrade to TLS.
    """

    log = Logger()
    noisy = False

    def __init__(
        self,
        mesh: Mesh,
        keys: KeyLookup,
        max_handshakes: int = MAX_HANDSHAKES,
        randbytes: Callable[[int], bytes] = os.urandom,
        certificate: NodeCertificate | None = None,
    ) -> None:
        self.mesh = mesh
        self.certificate = certificate
        self.keys = keys
        self.max_handshakes = max_handshakes
        self.failures = FailureTracker(mesh.clock)
        self.parse_budget = ParseBudget(mesh.clock)
        self._randbytes = randbytes
        self._handshaking: dict[RelayProtocol, str] = {}
        self._handshaking_per_host: collections.Counter[str] = collections.Counter()

    def handshaking(self) -> list[RelayProtocol]:
        """
        The inbound connections that have not finished their handshake.
        """
        return list(self._handshaking)

    def refusal(self, host: str) -> str | None:
        """
        Why a new connection from C{host} is refused now, or C{None}.
        """
        if self.failures.refused(host):
            return f"too many failed handshakes from {host}"
        if self.parse_budget.exhausted():
            return "too much handshake traffic from unauthenticated connections"
        if len(self._handshaking) >= self.max_handshakes:
            return f"{self.max_handshakes} handshakes already in progress"
        if self._handshaking_per_host[host] >= MAX_HANDSHAKES_PER_ADDRESS:
            return f"{MAX_HANDSHAKES_PER_ADDRESS} handshakes already in progress from {host}"
        if self.mesh.connected_count() >= self.mesh.max_peers:
            return f"peer limit of {self.mesh.max_peers} reached"
        return None

    # Twisted's Factory wants protocols whose factory is a Factory of them;
    # a RelayProtocol's is typed by what it tells it (IHandshakeObserver).
    def buildProtocol(self, addr: IAddress | None) -> RelayProtocol | None:  # type: ignore[override]
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
                issued=self.mesh.issued_nonces,
            ),
            self.certificate,
        )
        protocol.factory = self
        protocol.parse_budget = self.parse_budget
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

    def handshakeVerified(self, protocol: RelayProtocol, outcome: Authenticated) -> None:
        """
        The peer proved its key: record what it paired or pinned before the
        ack says ok (L{relaymesh.pairing.record}).

        @raise relaymesh.pairing.PairingFailed: if that cannot be recorded.
        """
        pairing.record(self.keys, outcome, self.mesh.clock.seconds(), accepted=True)

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
        handshake = protocol.handshake
        claimed = handshake.claimed_peer if isinstance(handshake, AcceptorHandshake) else None
        self.mesh.registry.handshake_denied(claimed, protocol.address, Direction.INBOUND, reason)


