"""
Dispatch: what each peer sent recently (for deduplication), and the
application's subscriptions, by message type.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from twisted.logger import Logger

from relaymesh.errors import UnsupportedMessageType
from relaymesh.wire import HANDSHAKE_TYPES, MESSAGE_TYPES, MessageType, RelayMessage

#: Message ids remembered per sender for deduplication.
DEDUP_WINDOW = 1000  # claudectl 0.49: 1000 (but shared by all peers)

T = TypeVar("T")

MessageCallback = Callable[[str, RelayMessage], None]

_HEARTBEAT = MessageType.HEARTBEAT.value


#: The message types an application may send, in the protocol's order.
SENDABLE_TYPES = tuple(t.value for t in MessageType if t.value not in HANDSHAKE_TYPES)


def sendable(msg_type: object) -> str:
    """
    C{msg_type} as a string, if an application may send it.

    @raise UnsupportedMessageType: if it is unknown or belongs to the
        handshake; the message lists L{SENDABLE_TYPES}.
    """
    msg_type = str(msg_type)
    if msg_type not in MESSAGE_TYPES:
        raise UnsupportedMessageType(
            f"unknown message type {msg_type[:64]!r}: send one of {', '.join(SENDABLE_TYPES)}"
        )
    if msg_type in HANDSHAKE_TYPES:
        raise UnsupportedMessageType(
            f"{msg_type} belongs to the handshake: send one of {', '.join(SENDABLE_TYPES)}"
        )
    return msg_type


class RecentIds:
    """
    The last C{size} message ids seen, with O(1) membership and insertion.

    Memory is bounded by C{size} ids: a full window of claudectl-style ids
    takes about 120 KB, which is why a peer gets one only once it sends
    something other than heartbeats (see L{relaymesh.mesh.Mesh.messages_received}).
    """

    __slots__ = ("_order", "_members", "_size")

    def __init__(self, size: int = DEDUP_WINDOW) -> None:
        self._order: collections.deque[str] = collections.deque()
        self._members: set[str] = set()
        self._size = size

    def seen(self, message_id: str) -> bool:
        """
        Record C{message_id}; return whether it was already among the recent ids.
        """
        members = self._members
        if message_id in members:
            return True
        members.add(message_id)
        order = self._order
        order.append(message_id)
        if len(order) > self._size:
            members.discard(order.popleft())
        return False

    def __len__(self) -> int:
        return len(self._order)


class Inbox(Protocol):
    """
    What L{Dispatcher.deliver_new} needs of a peer: its id, and its recent
    ids (a L{RecentIds} once it sent something other than heartbeats).
    """

    peer_id: str
    recent: RecentIds | None


class Subscription(Generic[T]):
    """
    A registered callback; L{cancel} removes it.
    """

    def __init__(
        self, registry: list[T], callback: T, changed: Callable[[], None] | None = None
    ) -> None:
        self._registry = registry
        self._changed = changed
        self.callback = callback
        registry.append(callback)
        if changed is not None:
            changed()

    def cancel(self) -> None:
        """
        Stop calling the callback. Cancelling twice does nothing.
        """
        try:
            self._registry.remove(self.callback)
        except ValueError:
            return
        if self._changed is not None:
            self._changed()


class Dispatcher:
    """
    The application's subscriptions, and the delivery of a message to them.
    """

    log = Logger()

    def __init__(self) -> None:
        self._subscribers: dict[str | None, list[MessageCallback]] = {}
        # msg_type -> the callbacks for it, specific ones first, as a tuple;
        # built on first use, dropped whenever a subscription changes
        self._callbacks: dict[str, tuple[MessageCallback, ...]] = {}

    def subscribe(
        self, callback: MessageCallback, msg_type: str | None = None
    ) -> Subscription[MessageCallback]:
        """
        Call C{callback(peer_id, message)} for every new message of
        C{msg_type} (of every type if C{None}).

        @raise UnsupportedMessageType: for a type that is not a relay type.
        """
        if msg_type is not None:
            msg_type = str(msg_type)
            if msg_type not in MESSAGE_TYPES:
                raise UnsupportedMessageType(f"unknown message type {msg_type!r}")
        return Subscription(
            self._subscribers.setdefault(msg_type, []), callback, self._callbacks.clear
        )

    def deliver(self, peer_id: str, message: RelayMessage) -> None:
        """
        Hand a message to the subscribers of its type; a subscriber that
        raises is logged, and the others still get the message.
        """
        callbacks = self._callbacks.get(message.msg_type)
        if callbacks is None:
            callbacks = self._lookup(message.msg_type)
        for callback in callbacks:
            try:
                callback(peer_id, message)
            except Exception:
                self._failed(callback, peer_id, message)

    def deliver_new(
        self,
        peer: Inbox,
        messages: Iterable[RelayMessage],
        heartbeat: Callable[[Any, Any], None],
        link: Any,
    ) -> None:
        """
        Hand each message from C{peer} to the subscribers of its type (as
        L{deliver} does), unless C{peer.recent} (a L{RecentIds}, made on
        first use) holds its id: a duplicate. A heartbeat is given to
        C{heartbeat(peer, payload)} first and never deduplicated: a copy
        only refreshes the same list, while their ids would cost every idle
        peer a full window. Stops as soon as C{link.close_reason} is set
        (a subscriber closed the connection).
        """
        # Every message a peer sends passes here: the loop is written out
        # so that a message costs the window's check and its subscribers.
        peer_id = peer.peer_id
        cache = self._callbacks
        seen = None if peer.recent is None else peer.recent.seen
        for message in messages:
            msg_type = message.msg_type
            if msg_type == _HEARTBEAT:
                heartbeat(peer, message.payload)
            else:
                if seen is None:
                    if peer.recent is None:
                        peer.recent = RecentIds()
                    seen = peer.recent.seen
                if seen(message.id):
                    continue
            callbacks = cache.get(msg_type)
            if callbacks is None:
                callbacks = self._lookup(msg_type)
            for callback in callbacks:
                try:
                    callback(peer_id, message)
                except Exception:
                    self._failed(callback, peer_id, message)
            if link.close_reason is not None:
                return

    def _lookup(self, msg_type: str) -> tuple[MessageCallback, ...]:
        """
        The callbacks for C{msg_type}, specific ones first, kept (even
        when there are none) until a subscription changes.
        """
        callbacks = self._callbacks[msg_type] = tuple(
            self._subscribers.get(msg_type, ())
        ) + tuple(self._subscribers.get(None, ()))
        return callbacks

    def _failed(self, callback: MessageCallback, peer_id: str, message: RelayMessage) -> None:
        self.log.failure(
            "subscriber {callback!r} failed on a {msg_type} from {peer_id}",
            callback=callback,
            msg_type=message.msg_type,
            peer_id=peer_id,
        )
