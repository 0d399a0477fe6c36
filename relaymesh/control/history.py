"""
The recent events of C{/api/events}, kept so that a client that connects
(the dashboard, on load) sees what happened before it did.

L{EventHistory} follows the mesh from the start of the control plane and
keeps the last L{HISTORY_LIMIT} events of every type the stream sends, as
the stream sends them, with their time; routine ones (heartbeat messages
and session lists) keep their own last L{ROUTINE_LIMIT}, so that a busy
mesh's heartbeats never push the connections and messages out. Each event
is kept in at most L{MAX_EVENT_BYTES} (a longer message payload or session
list is shortened, and says so) and all of them in L{MAX_HISTORY_BYTES}.

C{GET /api/events?history=N} replays the last N of them (marked
C{"history": true}) before the live events (L{relaymesh.control.sse}).

It also tells which connections were joins (L{JoinNotes}).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web import http

from relaymesh.control.requests import ApiError, dumps
from relaymesh.control.sse import (
    MESSAGE_EVENT,
    SESSIONS_EVENT,
    event_object,
    message_object,
    sessions_object,
)
from relaymesh.events import Direction, EventKind, PeerEvent, PeerSessions
from relaymesh.interfaces import IRelayMesh
from relaymesh.wire import RelayMessage, WireError
from relaymesh.wire import dumps as wire_dumps

#: Events kept, routine ones not counted.
HISTORY_LIMIT = 200

#: Routine events (heartbeat messages, session lists) kept besides.
ROUTINE_LIMIT = 50

#: Bytes one kept event may take (its compact JSON).
MAX_EVENT_BYTES = 8 * 1024

#: Bytes all the kept events may take.
MAX_HISTORY_BYTES = 512 * 1024

#: Characters of a long message payload's JSON text kept as its preview.
PAYLOAD_PREVIEW = 1024

#: The message type that is routine.
HEARTBEAT = "heartbeat"


def parse_history(values: list[bytes]) -> int:
    """
    How many recent events a C{?history=N} query asks for.

    @param values: The values of every C{history} query argument.
    @return: 0 if none is asked for.
    @raise ApiError: 400 for anything but one whole number from 0 to the
        number kept at most.
    """
    most = HISTORY_LIMIT + ROUTINE_LIMIT
    if not values:
        return 0
    text = values[-1].decode("ascii", "replace").strip()
    if len(values) != 1 or not text.isdigit() or not text.isascii() or int(text) > most:
        raise ApiError(
            http.BAD_REQUEST, f"query 'history' must be a whole number from 0 to {most}"
        )
    return int(text)


def _routine(value: dict[str, Any]) -> bool:
    if value["event"] == SESSIONS_EVENT:
        return True
    if value["event"] != MESSAGE_EVENT:
        return False
    message: dict[str, object] = value["message"]
    return message.get("msg_type") == HEARTBEAT


def shorten(value: dict[str, Any], limit: int = MAX_EVENT_BYTES) -> tuple[dict[str, Any], bytes]:
    """
    An event as it is kept: itself if its JSON takes at most C{limit}
    bytes; else with a message's payload replaced by the start of its JSON
    text, or a session list cut to the rows that fit, and C{"truncated":
    true}.

    @return: the event kept and its JSON.
    """
    data = dumps(value)
    if len(data) <= limit:
        return value, data
    kept = dict(value, truncated=True)
    if value["event"] == MESSAGE_EVENT:
        message = dict(value["message"])
        text = json.dumps(message.get("payload"), ensure_ascii=False)
        message["payload"] = text[:PAYLOAD_PREVIEW]
        kept["message"] = message
        kept["payload_bytes"] = len(text.encode("utf-8"))
    elif value["event"] == SESSIONS_EVENT and isinstance(value.get("sessions"), list):
        rows = value["sessions"]
        kept["total"] = len(rows)
        count = len(rows)
        while count:
            count //= 2
            kept["sessions"] = rows[:count]
            if len(dumps(kept)) <= limit:
                break
    data = dumps(kept)
    if len(data) > limit:
        # Nothing else in it is long but a peer's claims: keep the bare event.
        kept = {"event": value["event"], "time": value.get("time"), "truncated": True}
        data = dumps(kept)
    return kept, data


#: Bytes an event object adds to its message's payload JSON: the field names,
#: the id, the peer ids and the times, generously.
_MESSAGE_OVERHEAD = 512


class _LazyMessage:
    """
    A received message kept in the history, made into its event object only
    when the history is read.
    """

    __slots__ = ("peer_id", "message", "time")

    def __init__(self, peer_id: str, message: RelayMessage, time: float) -> None:
        self.peer_id = peer_id
        self.message = message
        self.time = time

    def event(self) -> dict[str, Any]:
        return message_object(self.peer_id, self.message, self.time)


class JoinNotes:
    """
    Which connections were joins. C{relaymesh join} says so inside TLS
    (C{"join": true} in its handshake) and closes its connection once
    paired; the peer stays listed only as a paired peer. claudectl's join
    says nothing: an inbound connection in clear whose handshake paired the
    peer's key (with an invite's form, or the pending key) is taken for
    one. A relaymesh node that pairs with the pending key and stays
    connected is not a join.

    Its connected event says C{"join": true} with the form it paired with
    (C{"paired_via"}, C{None} if none), and so does the disconnected event
    of that same connection.

    @ivar mesh: The mesh whose connections to look at.
    """

    def __init__(self, mesh: IRelayMesh) -> None:
        self.mesh = mesh
        self._joined: dict[str, str | None] = {}

    def fields(self, event: PeerEvent) -> dict[str, Any]:
        """
        What to add to a peer event's object: C{{"join": True, "paired_via":
        FORM}} for a join's connected or disconnected event, else nothing.
        """
        peer_id = event.peer_id
        if peer_id is None:
            return {}
        if event.kind == EventKind.CONNECTED:
            joined, form = self._join(peer_id) if event.direction == Direction.INBOUND else (False, None)
            if joined:
                self._joined[peer_id] = form
            else:
                self._joined.pop(peer_id, None)
        elif event.kind != EventKind.DISCONNECTED:
            return {}
        if peer_id not in self._joined:
            return {}
        return {"join": True, "paired_via": self._joined[peer_id]}

    def _join(self, peer_id: str) -> tuple[bool, str | None]:
        """
        Whether the peer's live connection is a join, and the form its
        handshake paired with.
        """
        registry = getattr(self.mesh, "registry", None)
        connection = registry.connection(peer_id) if registry is not None else None
        outcome = getattr(connection, "outcome", None)
        form = getattr(outcome, "paired_via", None)
        form = form if isinstance(form, str) else None
        if getattr(getattr(connection, "handshake", None), "one_shot", False) is True:
            return True, form
        return form is not None and getattr(outcome, "encrypted", True) is False, form

    def event_object(self, event: PeerEvent, now: float) -> dict[str, Any]:
        """
        A peer event as the JSON object /api/events sends, with what
        L{fields} adds.
        """
        return {**event_object(event, now), **self.fields(event)}


class EventHistory:
    """
    The recent events, bounded in count and bytes (see the module).

    It follows the mesh as long as the mesh lives, as the control plane
    does.

    @ivar joins: The L{JoinNotes} its peer events go through; the live
        streams share it.
    """

    def __init__(
        self,
        mesh: IRelayMesh,
        clock: IReactorTime,
        limit: int = HISTORY_LIMIT,
        routine_limit: int = ROUTINE_LIMIT,
        max_bytes: int = MAX_HISTORY_BYTES,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self.mesh = mesh
        self.clock = clock
        self.max_bytes = max_bytes
        self.max_event_bytes = max_event_bytes
        self.joins = JoinNotes(mesh)
        self._events: deque[tuple[int, dict[str, Any] | _LazyMessage, int]] = deque(maxlen=limit)
        self._routine: deque[tuple[int, dict[str, Any] | _LazyMessage, int]] = deque(maxlen=routine_limit)
        self._seq = 0
        self.size = 0
        mesh.subscribe(self._message)
        mesh.watch_peers(self._peer)
        mesh.fleet.watch(self._sessions)

    def _message(self, peer_id: str, message: RelayMessage) -> None:
        # Every message passes here, so the event object is built only when
        # someone asks for the history: a message is kept as it came, sized
        # by its payload's JSON (the codec's fast path), and shortened at
        # once only when it is too long to keep whole.
        now = self.clock.seconds()
        try:
            size = len(wire_dumps(message.payload)) + _MESSAGE_OVERHEAD
        except WireError:
            size = self.max_event_bytes + 1
        if size > self.max_event_bytes:
            self.add(message_object(peer_id, message, now))
            return
        routine = message.msg_type == HEARTBEAT
        self._keep(_LazyMessage(peer_id, message, now), size, routine)

    def _peer(self, event: PeerEvent) -> None:
        self.add(self.joins.event_object(event, self.clock.seconds()))

    def _sessions(self, peer_id: str, held: PeerSessions | None) -> None:
        self.add(sessions_object(self.mesh, peer_id, held, self.clock.seconds()))

    def add(self, value: dict[str, Any]) -> None:
        """
        Keep one event (as /api/events sends it), dropping the oldest kept
        ones past the limits.
        """
        kept, data = shorten(value, self.max_event_bytes)
        self._keep(kept, len(data), _routine(value))

    def _keep(self, kept: dict[str, Any] | _LazyMessage, size: int, routine: bool) -> None:
        ring = self._routine if routine else self._events
        if len(ring) == ring.maxlen:
            self.size -= ring[0][2]
        self._seq += 1
        ring.append((self._seq, kept, size))
        self.size += size
        while self.size > self.max_bytes:
            rings = [r for r in (self._events, self._routine) if r]
            oldest = min(rings, key=lambda r: r[0][0])
            self.size -= oldest.popleft()[2]

    def __len__(self) -> int:
        return len(self._events) + len(self._routine)

    def recent(self, count: int, wanted: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """
        The last C{count} kept events of the C{wanted} types (C{None}: all),
        oldest first, each marked C{"history": true}.
        """
        types = None if wanted is None else frozenset(wanted)
        merged = sorted(list(self._events) + list(self._routine), key=lambda e: e[0])
        if count <= 0:
            return []
        events = (v.event() if isinstance(v, _LazyMessage) else v for _, v, _ in merged)
        chosen = [v for v in events if types is None or v["event"] in types]
        return [dict(v, history=True) for v in chosen[-count:]]
