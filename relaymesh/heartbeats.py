"""
Heartbeats: the C{LoopingCall} that sends one to every connected peer each
interval with this node's session list (L{relaymesh.fleet}), an early one
when that list changes in a way peers should hear of soon, one to each
peer as it connects, and the extension fields some peers' heartbeats carry
(a routing neighbour's route advertisement).

Each interval, before the heartbeats, every peer that announced C{ping/1}
is sent a C{ping} (L{relaymesh.connection.RelayProtocol.ping}); the time
until its C{pong} is the peer's round-trip time, recorded in the
L{Registry} (L{Registry.round_trip}).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from relaymesh.fleet import Fleet
from relaymesh.outbound import WriteBatch
from relaymesh.registry import PeerRecord, Registry
from relaymesh.wire import MessageType, RelayMessage, dumps, encode

#: Seconds between heartbeats.
DEFAULT_HEARTBEAT_INTERVAL = 30.0  # claudectl 0.49: 30 s

#: Heartbeat intervals of silence after which a peer is dropped, and after
#: which a peer's session list expires.
DEAD_AFTER_INTERVALS = 3  # claudectl 0.49: 3

#: Seconds at least between two early heartbeats (sent when this node's
#: sessions start, end or change status).
EARLY_HEARTBEAT_GAP = 1.0

_HEARTBEAT = MessageType.HEARTBEAT.value


class HeartbeatFields(Protocol):
    """
    An extension whose heartbeats to some peers carry top-level fields.
    """

    def heartbeat_fields(self, peer_id: str) -> dict[str, Any] | None:
        """The fields for C{peer_id}'s heartbeats, or C{None} for none."""

    def heartbeat_sent(self) -> None:
        """Every peer was just sent a heartbeat (and its fields)."""


class Heartbeats:
    """
    One node's heartbeats and the session lists they carry.

    @ivar interval: Seconds between heartbeats.
    @ivar fleet: The L{Fleet} of session lists they carry and bring.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        interval: float,
        identity: str,
        message: Callable[[str, Any], RelayMessage],
        registry: Registry,
        writes: WriteBatch,
    ) -> None:
        """
        @param registry: The node's peers: each connected one gets the
            heartbeats, and its round-trip times are recorded there.
        """
        peers: Mapping[str, PeerRecord] = registry.records
        self.clock = clock
        self._registry = registry
        self.interval = interval
        self.fleet = Fleet(clock, identity, interval * DEAD_AFTER_INTERVALS, peers)
        self.fleet.significant = self._sessions_changed
        self._message = message
        self._peers = peers
        self._writes = writes
        self._early: Any = None
        self._early_at = float("-inf")
        self.extensions: list[HeartbeatFields] = []
        self._loop = LoopingCall(self.tick)
        self._loop.clock = clock

    def start(self) -> None:
        """
        Send a heartbeat every L{interval} seconds from now on.
        """
        if not self._loop.running:
            d = self._loop.start(self.interval, now=False)
            d.addErrback(lambda f: self.log.failure("heartbeat loop stopped", f))

    def stop(self) -> None:
        """
        Stop sending heartbeats.
        """
        if self._loop.running:
            self._loop.stop()
        if self._early is not None and self._early.active():
            self._early.cancel()
        self._early = None

    def _send(self, peers: Iterable[PeerRecord], only_extended: bool) -> None:
        """
        Send one heartbeat to each connected peer of C{peers}: the same line
        to all, except those an extension adds fields for.
        """
        heartbeat = self._message(_HEARTBEAT, self.fleet.payload(self.clock.seconds()))
        line: bytes | None = None
        for peer in peers:
            protocol = peer.protocol
            if protocol is None:
                continue
            extra: dict[str, Any] = {}
            for extension in self.extensions:
                fields = extension.heartbeat_fields(peer.peer_id)
                if fields:
                    extra.update(fields)
            try:
                if extra:
                    protocol.sendEncoded(dumps({**heartbeat.to_dict(), **extra}), _HEARTBEAT)
                elif not only_extended:
                    if line is None:
                        line = encode(heartbeat)
                    protocol.sendEncoded(line, _HEARTBEAT)
            except Exception:
                self.log.failure("heartbeat to {peer_id} failed", peer_id=peer.peer_id)

    def tick(self) -> None:
        """
        Ping every connected peer that announced C{ping/1}, send every
        connected peer a heartbeat, and expire the session lists that no
        heartbeat renewed for L{Fleet.expiry} seconds.

        The pings go first, so that no heartbeat is ahead of them on the
        wire.
        """
        self.ping()
        for extension in self.extensions:
            extension.heartbeat_sent()
        self._send(self._peers.values(), only_extended=False)
        self.fleet.expire()

    def ping(self) -> None:
        """
        Send a C{ping} to every connected peer that announced C{ping/1} and
        whose connection has nothing waiting to be written.
        """
        for peer in self._peers.values():
            protocol = peer.protocol
            if protocol is not None:
                protocol.ping(self._registry.round_trip)

    def send_extended(self) -> None:
        """
        Send a heartbeat now to every peer an extension adds fields for (a
        routing neighbour, when the routes changed).
        """
        with self._writes:
            self._send(self._peers.values(), only_extended=True)

    def _sessions_changed(self) -> None:
        """
        A session started, ended or changed status: send every peer a
        heartbeat soon (at most one early heartbeat per
        L{EARLY_HEARTBEAT_GAP} seconds) rather than at the next interval.
        """
        if self._loop.running and (self._early is None or not self._early.active()):
            wait = max(0.0, self._early_at + EARLY_HEARTBEAT_GAP - self.clock.seconds())
            self._early = self.clock.callLater(wait, self._send_early)

    def _send_early(self) -> None:
        self._early = None
        self._early_at = self.clock.seconds()
        with self._writes:
            self._send(self._peers.values(), only_extended=False)

    def greet(self, peer: PeerRecord) -> None:
        """
        Send a peer that just connected this node's session list at once,
        rather than one interval later.
        """
        if self.fleet.local() is not None and self._loop.running:
            self._send([peer], only_extended=False)
