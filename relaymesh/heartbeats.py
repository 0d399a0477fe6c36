"""
Heartbeats: the L{LoopingCall} that sends one to every connected peer each
interval with this node's session list, the expiry of the peers' session
lists, and the extension fields some peers' heartbeats carry (a routing
neighbour's route advertisement).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from relaymesh.connection import WriteBatch
from relaymesh.events import PeerSessions
from relaymesh.registry import PeerRecord
from relaymesh.wire import MessageType, RelayMessage, dumps, encode

#: Seconds between heartbeats.
DEFAULT_HEARTBEAT_INTERVAL = 30.0  # claudectl 0.49: 30 s

#: Heartbeat intervals of silence after which a peer is dropped, and after
#: which a peer's session list expires.
DEAD_AFTER_INTERVALS = 3  # claudectl 0.49: 3

_HEARTBEAT = MessageType.HEARTBEAT.value


class HeartbeatFields(Protocol):
    """
    An extension whose heartbeats to some peers carry top-level fields.
    """

    def heartbeat_fields(self, peer_id: str) -> dict[str, Any] | None:
        """The fields for C{peer_id}'s heartbeats, or L{None} for none."""

    def heartbeat_sent(self) -> None:
        """Every peer was just sent a heartbeat (and its fields)."""


class Heartbeats:
    """
    One node's heartbeats and the session lists they carry.

    @ivar interval: Seconds between heartbeats.
    @ivar expiry: Seconds after which a peer's session list expires.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        interval: float,
        identity: str,
        message: Callable[[str, Any], RelayMessage],
        peers: Mapping[str, PeerRecord],
        writes: WriteBatch,
    ) -> None:
        self.clock = clock
        self.interval = interval
        self.expiry = interval * DEAD_AFTER_INTERVALS
        self._identity = identity
        self._message = message
        self._peers = peers
        self._writes = writes
        self._sessions: list[Any] | None = None
        self._worker_id: Any = None
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

    def _payload(self, now: float) -> dict[str, Any]:
        if self._sessions is None:
            return {}
        return {
            "worker_id": self._worker_id if self._worker_id is not None else self._identity,
            "timestamp": int(now * 1000),
            "sessions": self._sessions,
        }

    def _send(self, peers: Iterable[PeerRecord], only_extended: bool) -> None:
        """
        Send one heartbeat to each connected peer of C{peers}: the same line
        to all, except those an extension adds fields for.
        """
        heartbeat = self._message(_HEARTBEAT, self._payload(self.clock.seconds()))
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
        Send every connected peer a heartbeat, and expire the session lists
        that no heartbeat renewed for L{expiry} seconds.
        """
        for extension in self.extensions:
            extension.heartbeat_sent()
        self._send(self._peers.values(), only_extended=False)
        now = self.clock.seconds()
        for peer in self._peers.values():
            if peer.sessions is not None and now - peer.sessions_at >= self.expiry:
                peer.sessions = None
                peer.worker_id = None

    def send_extended(self) -> None:
        """
        Send a heartbeat now to every peer an extension adds fields for (a
        routing neighbour, when the routes changed).
        """
        with self._writes:
            self._send(self._peers.values(), only_extended=True)

    def set_sessions(self, sessions: Iterable[Any] | None, worker_id: Any = None) -> None:
        """
        Set the session list that this node's heartbeats carry.

        @raise relaymesh.wire.WireError: if the list is not JSON-serializable.
        """
        if sessions is None:
            self._sessions = self._worker_id = None
            return
        sessions = list(sessions)
        dumps({"worker_id": worker_id, "sessions": sessions})
        self._sessions = sessions
        self._worker_id = worker_id

    def received(self, peer: PeerRecord, payload: Any) -> None:
        """
        Take the session list a peer's heartbeat carried, if any.
        """
        if isinstance(payload, dict) and isinstance(payload.get("sessions"), list):
            peer.sessions = payload["sessions"]
            peer.worker_id = payload.get("worker_id")
            peer.sessions_at = self.clock.seconds()

    def sessions(self) -> dict[str, PeerSessions]:
        """
        Every peer's latest session list that has not yet expired.
        """
        now = self.clock.seconds()
        return {
            p.peer_id: PeerSessions(p.peer_id, p.worker_id, p.sessions, now - p.sessions_at)
            for p in self._peers.values()
            if p.sessions is not None and now - p.sessions_at < self.expiry
        }
