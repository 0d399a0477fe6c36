"""
C{/api/events}: the mesh's messages and peer events as Server-Sent Events.

Each event is one C{data:} line holding a JSON object whose C{event} is one
of L{EVENT_TYPES}; a comment line every L{KEEPALIVE_INTERVAL} seconds keeps
the connection (and the client's patience) alive. With C{?history=N} the
last N recent events (L{relaymesh.control.history}) come first, each with
C{"history": true}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web import http
from twisted.web.server import Request
from zope.interface import implementer

from relaymesh.control.requests import ApiError, dumps
from relaymesh.control.sessions import STALE_AFTER_INTERVALS, session_rows, worker_of
from relaymesh.events import PeerEvent, PeerSessions
from relaymesh.interfaces import IRelayMesh
from relaymesh.wire import RelayMessage

#: Seconds between keepalive comments on an event stream.
KEEPALIVE_INTERVAL = 15.0

#: Bytes an event stream may have waiting beyond the socket's own buffer
#: before the client is dropped as too slow (a relay message may be 1 MiB).
MAX_STREAM_BACKLOG = 4 * 1024 * 1024

#: The event type of a received message.
MESSAGE_EVENT = "message"

#: What a peer event's type starts with; its L{relaymesh.events.EventKind} follows.
PEER_EVENT_PREFIX = "peer_"

#: The event type of a session list that arrived, changed or expired.
SESSIONS_EVENT = "sessions"

#: The event types of /api/events.
EVENT_TYPES = (
    MESSAGE_EVENT,
    SESSIONS_EVENT,
    "peer_connecting",
    "peer_connected",
    "peer_disconnected",
    "peer_denied",
    "peer_reconnect_scheduled",
)


def parse_event_types(values: list[bytes]) -> frozenset[str] | None:
    """
    The event types a C{?types=a,b} filter asks for (C{None}: all).

    C{connected} is short for C{peer_connected}, and so on.

    @param values: The values of every C{types} query argument.
    @raise ApiError: 400 naming an unknown type.
    """
    names = [
        n.strip() for v in values for n in v.decode("utf-8", "replace").split(",") if n.strip()
    ]
    if not names:
        return None
    wanted = set()
    for name in names:
        full = name if name in EVENT_TYPES else PEER_EVENT_PREFIX + name
        if full not in EVENT_TYPES:
            raise ApiError(
                http.BAD_REQUEST,
                f"unknown event type {name[:40]!r} in types: want some of {', '.join(EVENT_TYPES)}",
            )
        wanted.add(full)
    return frozenset(wanted)


def event_object(event: PeerEvent, now: float) -> dict[str, Any]:
    """
    A peer event as the JSON object /api/events sends.
    """
    fields = event.to_dict()
    fields.pop("kind")
    return {"event": PEER_EVENT_PREFIX + event.kind, **fields, "time": round(now, 3)}


def message_object(peer_id: str, message: RelayMessage, now: float) -> dict[str, Any]:
    """
    A received message as the JSON object /api/events sends.
    """
    return {
        "event": MESSAGE_EVENT,
        "from": peer_id,
        "message": message.to_dict(),
        "time": round(now, 3),
    }


def sessions_object(
    mesh: IRelayMesh, peer_id: str, held: PeerSessions | None, now: float
) -> dict[str, Any]:
    """
    A session list that arrived, changed or expired (C{sessions} null) as
    the JSON object /api/events sends: C{peer_id} null for this node's own,
    its sessions as C{GET /api/sessions} shows them.
    """
    local = peer_id == mesh.identity
    rows = None
    if held is not None:
        rows = session_rows([held], mesh.heartbeat_interval * STALE_AFTER_INTERVALS)
    return {
        "event": SESSIONS_EVENT,
        "peer_id": None if local else peer_id,
        "worker_id": None if held is None else worker_of(held),
        "sessions": rows,
        "time": round(now, 3),
    }


@implementer(IPushProducer)
class EventStream:
    """
    One client of /api/events: every event as a C{data:} line, a comment
    every L{KEEPALIVE_INTERVAL} seconds, and a hang-up for a client that
    falls L{MAX_STREAM_BACKLOG} bytes behind.

    It registers as the request's streaming producer: the connection pauses
    it when the socket's buffer is full, and what is written while paused
    counts toward the backlog.

    @ivar finished: Fires when the stream ends, whoever ended it.
    @ivar dropped: Why the node hung up, if it did.
    @ivar paused: Whether the connection asked it to pause.
    @ivar backlog: Bytes written since it paused.
    """

    log = Logger()

    def __init__(
        self,
        request: Request,
        mesh: IRelayMesh,
        clock: IReactorTime,
        wanted: frozenset[str] | None = None,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        max_backlog: int = MAX_STREAM_BACKLOG,
        replay: list[dict[str, Any]] | None = None,
        peer_object: Callable[[PeerEvent, float], dict[str, Any]] = event_object,
    ) -> None:
        """
        @param request: The C{GET /api/events} request to answer.
        @param mesh: The mesh whose events to follow.
        @param clock: Times the events and the keepalives.
        @param wanted: The event types to send (C{None}: all).
        @param keepalive_interval: Seconds between keepalive comments.
        @param max_backlog: Bytes the client may fall behind before it is
            dropped.
        @param replay: Recent events to send first, before the live ones.
        @param peer_object: Makes a peer event's JSON object.
        """
        self.request = request
        self.mesh = mesh
        self.clock = clock
        self.wanted = wanted
        self.max_backlog = max_backlog
        self.paused = False
        self.backlog = 0
        self.dropped: str | None = None
        self._done = False
        self._cancels: list[Callable[[], None]] = []
        self._keepalive = LoopingCall(self._write, b": keepalive\n\n")
        self._keepalive.clock = clock
        self._interval = keepalive_interval
        self._replay = replay or []
        self._peer_object = peer_object
        self.finished = request.notifyFinish()
        self.finished.addBoth(self._ended)

    def start(self) -> None:
        """
        Send the headers and start following the mesh.
        """
        request = self.request
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        request.registerProducer(self, True)
        self._write(b"retry: 2000\n: relaymesh events\n\n")
        for value in self._replay:
            self.send(value)
        self._replay = []
        if self._wants(MESSAGE_EVENT):
            self._cancels.append(self.mesh.subscribe(self._message).cancel)
        if self.wanted is None or self.wanted - {MESSAGE_EVENT, SESSIONS_EVENT}:
            self._cancels.append(self.mesh.watch_peers(self._peer).cancel)
        if self._wants(SESSIONS_EVENT):
            self._cancels.append(self.mesh.fleet.watch(self._sessions).cancel)
        self._keepalive.start(self._interval, now=False)

    def _wants(self, event_type: str) -> bool:
        return self.wanted is None or event_type in self.wanted

    def _message(self, peer_id: str, message: RelayMessage) -> None:
        self.send(message_object(peer_id, message, self.clock.seconds()))

    def _sessions(self, peer_id: str, held: PeerSessions | None) -> None:
        self.send(sessions_object(self.mesh, peer_id, held, self.clock.seconds()))

    def _peer(self, event: PeerEvent) -> None:
        if self._wants(PEER_EVENT_PREFIX + event.kind):
            self.send(self._peer_object(event, self.clock.seconds()))

    def send(self, value: dict[str, Any]) -> None:
        """
        Send one event.
        """
        self._write(b"data: " + dumps(value) + b"\n\n")

    def _write(self, data: bytes) -> None:
        if self._done:
            return
        if self.paused:
            self.backlog += len(data)
            if self.backlog > self.max_backlog:
                self.drop(f"client more than {self.max_backlog} bytes behind")
                return
        self.request.write(data)

    # -- IPushProducer -------------------------------------------------------

    def pauseProducing(self) -> None:
        """
        The connection's buffer is full: count what is written from now on.
        """
        self.paused = True

    def resumeProducing(self) -> None:
        """
        The connection's buffer drained: the client has caught up.
        """
        self.paused = False
        self.backlog = 0

    def stopProducing(self) -> None:
        """
        The connection is going: stop following the mesh.
        """
        self._stop()

    # -- ending --------------------------------------------------------------

    def drop(self, reason: str) -> None:
        """
        Hang up at once, discarding what is buffered.
        """
        if self._done:
            return
        self.dropped = reason
        self.log.info("dropping an event stream client: {reason}", reason=reason)
        self._stop()
        transport = getattr(self.request, "transport", None) or getattr(
            getattr(self.request, "channel", None), "transport", None
        )
        if transport is not None and hasattr(transport, "abortConnection"):
            transport.abortConnection()
        else:
            self.request.loseConnection()

    def close(self) -> None:
        """
        End the stream cleanly.
        """
        if self._done:
            return
        self._stop()
        self.request.unregisterProducer()
        self.request.finish()

    def _stop(self) -> None:
        self._done = True
        for cancel in self._cancels:
            cancel()
        del self._cancels[:]
        if self._keepalive.running:
            self._keepalive.stop()

    def _ended(self, result: object) -> None:
        self._stop()
        return None
