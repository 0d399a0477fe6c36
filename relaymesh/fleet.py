"""
The fleet: this node's session list, the one its heartbeats carry, and the
latest list each peer's heartbeats carried (L{relaymesh.heartbeats} sends
and receives them).

A session is whatever JSON object a node publishes about one of its Claude
Code sessions (L{relaymesh.sessions}, docs/sessions.rst); the fleet keeps
the lists as they came, and tells its watchers when one changes. A peer's
list expires some heartbeat intervals after the heartbeat that carried it
(three, as claudectl's receivers expire theirs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from relaymesh.events import PeerSessions
from relaymesh.registry import PeerRecord
from relaymesh.wire import dumps

#: What fills a node's session list unless told otherwise: programs that
#: call L{Fleet.set_local} (through C{PUT /api/sessions} or the mesh).
API_SOURCE = "api"

#: Called with (peer id, its list or C{None} when it expired or was
#: withdrawn); this node's own list comes with this node's id and
#: C{local} set.
SessionWatcher = Callable[[str, "PeerSessions | None"], None]

#: The session keys whose change is worth an early heartbeat: a session
#: that starts, ends, or changes status or model.
_SIGNIFICANT = ("pid", "project", "status", "model")


def signature(sessions: Iterable[Any] | None) -> Any:
    """
    What of a session list peers should hear about soon: which sessions
    there are, and each one's status and model; not its counters.
    """
    if sessions is None:
        return None
    return tuple(
        tuple(s.get(k) for k in _SIGNIFICANT) if isinstance(s, dict) else None for s in sessions
    )


class _Watch:
    def __init__(self, watchers: list[SessionWatcher], callback: SessionWatcher) -> None:
        self._watchers = watchers
        self._callback = callback

    def cancel(self) -> None:
        if self._callback in self._watchers:
            self._watchers.remove(self._callback)


class Fleet:
    """
    The session lists one node knows: its own and its peers'.

    @ivar source: What fills this node's list (C{"api"}, C{"claude-code"},
        C{"none"} or C{"file"}); only an C{"api"} fleet takes lists from
        C{PUT /api/sessions}.
    @ivar expiry: Seconds after which a peer's list expires.
    @ivar significant: Called when this node's list changes in a way peers
        should hear of soon (L{signature}); the heartbeats send one early.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        identity: str,
        expiry: float,
        peers: Mapping[str, PeerRecord],
    ) -> None:
        self.clock = clock
        self.identity = identity
        self.expiry = expiry
        self.source = API_SOURCE
        self._peers = peers
        self._local: list[Any] | None = None
        self._signature: Any = None
        self._worker_id: Any = None
        self._local_at = 0.0
        self._watchers: list[SessionWatcher] = []
        self.significant: Callable[[], None] = lambda: None

    # -- this node's list ----------------------------------------------------

    def set_local(
        self, sessions: Iterable[Any] | None, worker_id: Any = None, checked: bool = False
    ) -> None:
        """
        Set this node's session list.

        @param checked: Whether the list is known to be JSON-serializable
            (checked off the reactor thread, L{relaymesh.sessions.source}).

        @raise relaymesh.wire.WireError: if the list is not JSON-serializable;
            the list in use is then unchanged.
        """
        if sessions is not None:
            sessions = list(sessions)
            if not checked:
                dumps({"worker_id": worker_id, "sessions": sessions})
        changed, before = sessions != self._local, self._signature
        self._local, self._signature = sessions, signature(sessions)
        self._worker_id = None if sessions is None else worker_id
        self._local_at = self.clock.seconds()
        if changed:
            self._tell(self.identity, self.local())
        if self._signature != before:
            self.significant()

    def local(self) -> PeerSessions | None:
        """
        This node's own list, or C{None} when it publishes none.
        """
        if self._local is None:
            return None
        worker_id = self.identity if self._worker_id is None else self._worker_id
        age = self.clock.seconds() - self._local_at
        return PeerSessions(self.identity, worker_id, self._local, age, local=True)

    def payload(self, now: float) -> dict[str, Any]:
        """
        A heartbeat's payload: C{{}} without a list, as claudectl sends.
        """
        if self._local is None:
            return {}
        return {
            "worker_id": self._worker_id if self._worker_id is not None else self.identity,
            "timestamp": int(now * 1000),
            "sessions": self._local,
        }

    # -- the peers' lists ----------------------------------------------------

    def received(self, peer: PeerRecord, payload: Any) -> None:
        """
        Take the session list a peer's heartbeat carried, if any.
        """
        if isinstance(payload, dict) and isinstance(payload.get("sessions"), list):
            peer.sessions = payload["sessions"]
            peer.worker_id = payload.get("worker_id")
            peer.sessions_at = self.clock.seconds()
            if self._watchers:
                self._tell(peer.peer_id, PeerSessions(peer.peer_id, peer.worker_id, peer.sessions, 0.0))

    def expire(self) -> None:
        """
        Forget the peers' lists that no heartbeat renewed for L{expiry}
        seconds.
        """
        now = self.clock.seconds()
        for peer in self._peers.values():
            if peer.sessions is not None and now - peer.sessions_at >= self.expiry:
                peer.sessions = None
                peer.worker_id = None
                self._tell(peer.peer_id, None)

    def lists(self) -> list[PeerSessions]:
        """
        Every list this node knows: its own first (if it has one), then
        each peer's unexpired one, by peer id.
        """
        own = self.local()
        return ([] if own is None else [own]) + [held for _, held in sorted(self.sessions().items())]

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

    # -- watchers ------------------------------------------------------------

    def watch(self, callback: SessionWatcher) -> _Watch:
        """
        Call C{callback(peer_id, sessions)} whenever a list arrives, changes
        or expires (see L{SessionWatcher}).

        @return: an object whose C{cancel()} stops the calls.
        """
        self._watchers.append(callback)
        return _Watch(self._watchers, callback)

    def _tell(self, peer_id: str, sessions: PeerSessions | None) -> None:
        for watcher in list(self._watchers):
            try:
                watcher(peer_id, sessions)
            except Exception:
                self.log.failure("a session watcher failed")
