"""
L{LastSeen}: the peer bookkeeping a node keeps in its key store, as an
observer of its peer events.

When a peer connects or disconnects, its meta file records C{last_seen}
(epoch milliseconds) and, for a peer this node dialled, the C{addr} it
answered at, so that C{relaymesh peers} can tell when each peer was last
there even with no node running.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from relaymesh.events import Direction, EventKind, PeerEvent
from relaymesh.interfaces import IRelayMesh
from relaymesh.keystore import KeyStore, KeyStoreError


class LastSeen:
    """
    Writes a peer's C{last_seen} (and dialled C{addr}) to its meta file on
    each connect and disconnect.

    It is bookkeeping: written without fsync, and for a peer that comes and
    goes, at most once per L{interval} unless the address changed (writing
    it on every event cost a node ~70% of its time under a flood of short
    connections).

    @ivar interval: Seconds between two writes for the same peer.
    """

    log = Logger()

    def __init__(
        self, mesh: IRelayMesh, keystore: KeyStore, clock: IReactorTime, interval: float
    ) -> None:
        self._keystore = keystore
        self._clock = clock
        self.interval = interval
        # peer id -> (when its meta was last written, the addr written)
        self._written: dict[str, tuple[float, str | None]] = {}
        self.subscription = mesh.watch_peers(self.peer_event)

    def peer_event(self, event: PeerEvent) -> None:
        """
        Record a connect or disconnect of a known peer.
        """
        peer_id = event.peer_id
        if peer_id is None or event.kind not in (EventKind.CONNECTED, EventKind.DISCONNECTED):
            return
        now = self._clock.seconds()
        fields: dict[str, Any] = {"last_seen": int(now * 1000)}
        if event.kind == EventKind.CONNECTED and event.direction == Direction.OUTBOUND:
            fields["addr"] = event.address
        written_at, written_addr = self._written.get(peer_id, (None, None))
        addr = fields.get("addr", written_addr)
        if written_at is not None and now - written_at < self.interval and addr == written_addr:
            return
        self._written[peer_id] = (now, addr)
        try:
            self._keystore.update_meta(peer_id, sync=False, **fields)
        except (KeyStoreError, OSError, ValueError) as e:
            self.log.warn(
                "could not record {peer_id} in the key store: {error}",
                peer_id=peer_id,
                error=e,
            )
