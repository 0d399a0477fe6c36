"""
Reliable delivery between nodes that announce the C{ack/1} capability.

A reliable message is an ordinary relay message with one extra top-level
field, C{"reliable": true} (claudectl ignores unknown fields, but it only
ever goes to peers that announced C{ack/1}). The sender puts it in its
durable outbox (L{relaymesh.reliable.store}) before it writes it, and keeps it there
until the receiver answers with an C{ack} whose payload is
C{{"ack_id": ID}}. It is sent again when the peer (re)authenticates, and
when it has waited L{DEFAULT_RESEND_AFTER} seconds without an ack; it is
given up at its deadline (L{DEFAULT_DELIVERY_TIMEOUT} after it was sent).

A node that routes (L{relaymesh.routing.router}) also sends reliable messages to
nodes it is paired with but reaches only through a route: the message
travels in the route envelope, sealed with its C{reliable} field, and the
ack comes back the same way. A message for a paired peer that is neither
connected nor routable waits in the outbox until it connects or a route to
it appears.

Everything a peer can make this node keep is bounded: a received reliable
message whose id is longer than L{MAX_ID_LENGTH} is refused (neither
recorded nor acknowledged), the store keeps at most
L{relaymesh.reliable.store.MAX_DELIVERED_PER_ORIGIN} delivered ids per
origin, and the outbox holds at most L{MAX_QUEUED_PER_PEER} messages per
destination (the next send fails with L{OutboxFull}).

The receiver records C{(origin, id)} of every reliable message in its
durable delivered-id record before it hands the message to the application,
hands it over only if the record is new, and acknowledges it either way: a
message sent again after a lost ack, a reconnection or a restart of either
side reaches the application once.

L{ReliableDelivery} holds this logic for one node; the L{relaymesh.mesh.Mesh}
calls it, and the application sees it through
L{relaymesh.mesh.Mesh.send_reliable} and the L{Delivery} that returns.
"""

from __future__ import annotations

import collections
from typing import Any, Literal

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaymesh.errors import DeliveryTimeout, MeshError, ReliableUnsupported, UnknownPeer
from relaymesh.interfaces import ExtensionHost, PairwiseKeys
from relaymesh.keyfiles import KeyStoreError
from relaymesh.printable import printable
from relaymesh.reliable.errors import OutboxFull
from relaymesh.reliable.fields import (
    ACK_CAPABILITY,
    ACK_ID_FIELD,
    MAX_ID_LENGTH,
    RELIABLE_FIELD,
    UNRELIABLE_TYPES,
)
from relaymesh.reliable.store import OutboxEntry, OutboxStore
from relaymesh.wire import MAX_LINE_BYTES, MessageType, RelayMessage, WireError, decode_fields, dumps

#: Seconds after which an unacknowledged message is given up.
DEFAULT_DELIVERY_TIMEOUT = 300.0

#: Seconds an unacknowledged message waits before it is sent again on the
#: same connection.
DEFAULT_RESEND_AFTER = 30.0

#: Seconds between two scans of the outbox for overdue and expired messages.
DEFAULT_SCAN_INTERVAL = 5.0

#: Settled messages (acknowledged or given up) whose ids the outbox
#: remembers, so that a second ack of one (the peer answered a copy sent
#: again) is taken, never handed to the application.
SETTLED_MEMORY = 4096

#: Messages at most waiting in the outbox for one destination; the next
#: send to it fails with L{OutboxFull} until some are acknowledged or given
#: up.
MAX_QUEUED_PER_PEER = 1000


def routed_origin_id(msg_id: str, sends: int) -> str:
    """
    The origin id of a reliable message's copy sent through a route after
    C{sends} earlier copies: its id the first time, C{ID/N} after.
    """
    return msg_id if not sends else f"{msg_id}/{sends}"


class Delivery:
    """
    The fate of one reliable message, as L{relaymesh.mesh.Mesh.send_reliable}
    returns it.

    Each of L{accepted} and L{delivered} returns a new C{Deferred}, so an
    application asks only for what it waits for, and one that asks for
    nothing leaves no unhandled failure behind.

    @ivar msg_id: The message id; an ack names it.
    @ivar peer_id: The destination.
    """

    __slots__ = ("msg_id", "peer_id", "_accepted", "_delivered", "_waiters")

    def __init__(self, msg_id: str, peer_id: str) -> None:
        self.msg_id = msg_id
        self.peer_id = peer_id
        # None while unknown; then True, or the Failure.
        self._accepted: Literal[True] | Failure | None = None
        self._delivered: Literal[True] | Failure | None = None
        self._waiters: list[tuple[bool, Deferred[str]]] = []

    def accepted(self) -> Deferred[str]:
        """
        A C{Deferred} that fires with L{msg_id} once the message is in the
        durable outbox (it survives a crash from then on), or fails with the
        L{relaymesh.reliable.store.StoreError} that kept it out.
        """
        return self._wait(False, self._accepted)

    def delivered(self) -> Deferred[str]:
        """
        A C{Deferred} that fires with L{msg_id} once the peer acknowledged
        the message, or fails with L{relaymesh.mesh.DeliveryTimeout} at its
        deadline (or with the error that kept it out of the outbox).

        It does not fire if the node stops first; the message stays in the
        outbox and is sent again after a restart.
        """
        return self._wait(True, self._delivered)

    def _wait(self, delivered: bool, outcome: Literal[True] | Failure | None) -> Deferred[str]:
        if outcome is True:
            return succeed(self.msg_id)
        if isinstance(outcome, Failure):
            return fail(outcome)
        d: Deferred[str] = Deferred()
        self._waiters.append((delivered, d))
        return d

    def _settle(self, delivered: bool, outcome: Literal[True] | Failure) -> None:
        if delivered:
            self._delivered = outcome
        else:
            self._accepted = outcome
        waiting, self._waiters = self._waiters, []
        for for_delivery, d in waiting:
            if for_delivery != delivered:
                self._waiters.append((for_delivery, d))
            elif outcome is True:
                d.callback(self.msg_id)
            else:
                d.errback(outcome)


class _Outgoing:
    """
    One message in the outbox, as the reactor thread sees it.

    @ivar entry: What the store holds.
    @ivar delivery: The application's L{Delivery}; C{None} for a message
        found in the outbox at start-up.
    @ivar last_sent: When it was last written (clock seconds), or C{None}.
    @ivar sends: How many times it has been written (counting those of
        earlier runs that the store recorded).
    """

    __slots__ = ("entry", "delivery", "last_sent", "sends")

    def __init__(self, entry: OutboxEntry, delivery: Delivery | None) -> None:
        self.entry = entry
        self.delivery = delivery
        self.last_sent: float | None = None
        self.sends = entry.attempts


class ReliableDelivery:
    """
    One node's reliable delivery: its outbox in memory and on disk, the
    acknowledgements, the resending and the receiver's duplicate check.

    The in-memory outbox mirrors the store's, so that sending again never
    waits on the disk; one C{LoopingCall} scans it every
    L{scan_interval} seconds (no timer per message).

    @ivar mesh: The node's L{ExtensionHost} (its mesh).
    @ivar store: The open L{relaymesh.reliable.store.Store} (or another
        L{relaymesh.reliable.store.OutboxStore}, such as a fake).
    @ivar delivery_timeout: Seconds from sending to giving up.
    @ivar resend_after: Seconds an unacknowledged message waits before it is
        sent again.
    @ivar scan_interval: Seconds between outbox scans.
    @ivar max_queued: Messages at most waiting for one destination.
    """

    log = Logger()

    #: The capability this delivery gives the node.
    capability = ACK_CAPABILITY

    def __init__(
        self,
        mesh: ExtensionHost,
        store: OutboxStore,
        delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT,
        resend_after: float = DEFAULT_RESEND_AFTER,
        scan_interval: float = DEFAULT_SCAN_INTERVAL,
        keys: PairwiseKeys | None = None,
        max_queued: int = MAX_QUEUED_PER_PEER,
    ) -> None:
        """
        @param keys: The keys this node shares with its peers (the key
            store): a peer with a key takes reliable messages even before it
            has connected in this run. With C{None}, only peers that have
            connected do.
        """
        self.mesh = mesh
        self.clock = mesh.clock
        self.store = store
        self.delivery_timeout = delivery_timeout
        self.resend_after = resend_after
        self.scan_interval = scan_interval
        self.max_queued = max_queued
        self._keys = keys
        # msg_id -> _Outgoing, oldest first (insertion order)
        self._outbox: dict[str, _Outgoing] = {}
        # destination -> messages accepted for it and not yet settled
        self._queued: collections.Counter[str] = collections.Counter()
        # msg_id -> destination of the last SETTLED_MEMORY settled messages
        self._settled_ids: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._scan = LoopingCall(self.scan)
        self._scan.clock = self.clock

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> Deferred[None]:
        """
        Load what the outbox holds from an earlier run and start scanning it.

        @return: a C{Deferred} that fires once the outbox is loaded.
        """

        def loaded(entries: list[OutboxEntry]) -> None:
            for entry in entries:
                if entry.msg_id not in self._outbox:
                    self._outbox[entry.msg_id] = _Outgoing(entry, None)
                    self._queued[entry.peer_id] += 1
            if entries:
                self.log.info(
                    "outbox holds {count} unacknowledged messages from an earlier run",
                    count=len(entries),
                )
            if not self._scan.running:
                d = self._scan.start(self.scan_interval, now=False)
                d.addErrback(lambda f: self.log.failure("outbox scan stopped", f))

        return self.store.pending().addCallback(loaded)

    def stop(self) -> None:
        """
        Stop scanning the outbox. What it holds stays on disk.
        """
        if self._scan.running:
            self._scan.stop()

    def pending(self) -> list[OutboxEntry]:
        """
        The messages waiting for an acknowledgement, oldest first.
        """
        return [outgoing.entry for outgoing in self._outbox.values()]

    # -- sending -------------------------------------------------------------

    def _paired(self, peer_id: str) -> bool:
        if self._keys is None or peer_id == self.mesh.identity:
            return False
        try:
            return self._keys.key(peer_id) is not None
        except (KeyStoreError, OSError, ValueError):  # unreadable or unsafe key file: no key
            return False

    def send(self, peer_id: str, msg_type: str, payload: Any) -> Delivery:
        """
        Send a message reliably; see L{relaymesh.mesh.Mesh.send_reliable}.

        A peer that connected since the node started must have announced
        C{ack/1}; one that has not connected yet must be paired (it may
        then never take the message: it waits until the deadline). The
        message waits in the outbox until the peer connects or a route to it
        appears.

        @raise UnknownPeer: the peer has neither connected since the node
            started nor a key in the key store.
        @raise ReliableUnsupported: its latest connection did not announce
            C{ack/1}, or C{msg_type} is never reliable.
        """
        if self.mesh.knows(peer_id):
            if not self.mesh.announced(peer_id, ACK_CAPABILITY):
                raise ReliableUnsupported(
                    f"peer {peer_id} did not announce {ACK_CAPABILITY}: it cannot acknowledge "
                    "reliable messages"
                )
        elif not self._paired(peer_id):
            raise UnknownPeer(
                f"unknown peer {peer_id!r}: it is not paired with this node (no key for it)"
            )
        if msg_type in UNRELIABLE_TYPES:
            raise ReliableUnsupported(f"a {msg_type} cannot be sent reliably")
        message = self.mesh.message(self.mesh.sendable(msg_type), payload)
        fields = message.to_dict()
        fields[RELIABLE_FIELD] = True
        line = dumps(fields)
        if len(line) > MAX_LINE_BYTES:
            raise WireError(
                f"message of {len(line)} bytes exceeds the {MAX_LINE_BYTES}-byte line limit"
            )
        now = self.clock.seconds()
        entry = OutboxEntry(
            message.id,
            peer_id,
            self.mesh.identity,
            message.msg_type,
            line,
            created=now,
            deadline=now + self.delivery_timeout,
        )
        delivery = Delivery(message.id, peer_id)
        if self._queued[peer_id] >= self.max_queued:
            self._refused(
                Failure(
                    OutboxFull(
                        f"the outbox holds {self._queued[peer_id]} messages for {peer_id}, "
                        f"at most {self.max_queued}: wait for them to be acknowledged"
                    )
                ),
                delivery,
            )
            return delivery
        self._queued[peer_id] += 1
        self.store.put(entry).addCallbacks(
            self._stored,
            self._refused,
            callbackArgs=(entry, delivery),
            errbackArgs=(delivery, peer_id),
        )
        return delivery

    def _stored(self, _: None, entry: OutboxEntry, delivery: Delivery) -> None:
        outgoing = self._outbox[entry.msg_id] = _Outgoing(entry, delivery)
        delivery._settle(False, True)
        self._write(outgoing, self.clock.seconds())

    def _settled(self, peer_id: str) -> None:
        """
        A message for C{peer_id} left the outbox (or never got in).
        """
        self._queued[peer_id] -= 1
        if self._queued[peer_id] <= 0:
            del self._queued[peer_id]

    def _remember(self, entry: OutboxEntry) -> None:
        """
        Remember a settled message's id for L{SETTLED_MEMORY} settlements,
        so that a late second ack of it is recognised.
        """
        settled = self._settled_ids
        settled[entry.msg_id] = entry.peer_id
        if len(settled) > SETTLED_MEMORY:
            settled.popitem(last=False)

    def _refused(self, failure: Failure, delivery: Delivery, queued: str | None = None) -> None:
        if queued is not None:
            self._settled(queued)
        self.log.warn(
            "reliable message {msg_id} to {peer_id} not accepted: {error}",
            msg_id=delivery.msg_id,
            peer_id=delivery.peer_id,
            error=failure.getErrorMessage(),
        )
        delivery._settle(False, failure)
        delivery._settle(True, failure)

    def _write(self, outgoing: _Outgoing, now: float) -> None:
        """
        Write a message to its destination if it is connected and takes
        reliable messages now, else through the next hop if a route leads
        there.

        Each copy sent through a route carries an origin id of its own
        (L{routed_origin_id}), so that the nodes on the way, which forward a
        routed message only once, forward it again; its id, which the ack
        names and the receiver deduplicates by, stays the same.
        """
        entry = outgoing.entry
        peer_id = entry.peer_id
        direct = self.mesh.announced(peer_id, ACK_CAPABILITY) and self.mesh.send_line(
            peer_id, entry.line, entry.msg_type
        )
        if not direct and not self._send_routed(outgoing):
            return
        outgoing.sends += 1
        if outgoing.last_sent is not None:
            self.store.bump_attempts(entry.msg_id).addErrback(self._log_store_failure)
        outgoing.last_sent = now

    def _send_routed(self, outgoing: _Outgoing) -> bool:
        """
        Send a message through the next hop towards its destination.

        @return: whether a route led there.
        """
        entry = outgoing.entry
        if not self.mesh.routable(entry.peer_id):
            return False
        message, _ = decode_fields(entry.line)
        return self.mesh.send_routed(
            entry.peer_id,
            message,
            routed_origin_id(entry.msg_id, outgoing.sends),
            {RELIABLE_FIELD: True},
        )

    def retry_unsent(self) -> None:
        """
        The routes changed: send the messages that have not gone out yet
        and whose destination may now be reachable.
        """
        now = self.clock.seconds()
        with self.mesh.batch():
            for outgoing in list(self._outbox.values()):
                if outgoing.last_sent is None:
                    self._write(outgoing, now)

    def peer_up(self, peer_id: str) -> None:
        """
        A peer that announced C{ack/1} authenticated: send it every message
        still waiting for it, oldest first.
        """
        now = self.clock.seconds()
        with self.mesh.batch():
            for outgoing in list(self._outbox.values()):
                if outgoing.entry.peer_id == peer_id:
                    self._write(outgoing, now)

    def scan(self) -> None:
        """
        Give up the messages past their deadline; send again those sent more
        than L{resend_after} seconds ago (or never) to a connected peer.
        """
        now = self.clock.seconds()
        resend_before = now - self.resend_after
        with self.mesh.batch():
            for outgoing in list(self._outbox.values()):
                if now >= outgoing.entry.deadline:
                    self._give_up(outgoing)
                elif outgoing.last_sent is None or outgoing.last_sent <= resend_before:
                    self._write(outgoing, now)

    def _give_up(self, outgoing: _Outgoing) -> None:
        entry = outgoing.entry
        del self._outbox[entry.msg_id]
        self._settled(entry.peer_id)
        self._remember(entry)
        self.store.remove(entry.msg_id).addErrback(self._log_store_failure)
        self.log.warn(
            "gave up on reliable message {msg_id} ({msg_type}) to {peer_id}: "
            "no acknowledgement within {timeout:g} s",
            msg_id=entry.msg_id,
            msg_type=entry.msg_type,
            peer_id=entry.peer_id,
            timeout=entry.deadline - entry.created,
        )
        if outgoing.delivery is not None:
            outgoing.delivery._settle(
                True,
                Failure(
                    DeliveryTimeout(
                        f"no acknowledgement of {entry.msg_id} from {entry.peer_id} "
                        f"within {entry.deadline - entry.created:g} s"
                    )
                ),
            )

    # -- receiving -----------------------------------------------------------

    def take(self, peer_id: str, message: RelayMessage, fields: dict[str, Any]) -> bool:
        """
        Look at a message from C{peer_id} (a peer, or the origin of a routed
        message) that may carry top-level fields: an C{ack} of a message in
        the outbox, and a reliable message, are taken.

        @return: whether the message was taken (it goes no further).
        """
        msg_type = message.msg_type
        if msg_type == MessageType.ACK.value:
            return self.acknowledged(peer_id, message.payload)
        if fields.get(RELIABLE_FIELD) is True and msg_type not in UNRELIABLE_TYPES:
            self.received(peer_id, message)
            return True
        return False

    def acknowledged(self, peer_id: str, payload: Any) -> bool:
        """
        Take an C{ack} from C{peer_id}.

        An ack of a message in the outbox settles it; a second ack of a
        message settled lately (the peer answered a copy sent again after a
        lost ack, a resend or a reconnection) is taken too, and dropped.

        @return: whether it named a reliable message of this node to that
            peer (it is then not an application's message).
        """
        if type(payload) is not dict:
            return False
        ack_id = payload.get(ACK_ID_FIELD)
        if type(ack_id) is not str:
            return False
        outgoing = self._outbox.get(ack_id)
        if outgoing is None or outgoing.entry.peer_id != peer_id:
            return self._settled_ids.get(ack_id) == peer_id
        del self._outbox[ack_id]
        self._settled(peer_id)
        self._remember(outgoing.entry)
        self.store.remove(ack_id).addErrback(self._log_store_failure)
        if outgoing.delivery is not None:
            outgoing.delivery._settle(True, True)
        return True

    def received(self, peer_id: str, message: RelayMessage) -> None:
        """
        Take a reliable message from C{peer_id} (its neighbour, or the
        origin of a routed message): record it, deliver it to the
        application if it is new, acknowledge it either way (directly, or
        through a route).

        Nothing is acknowledged if the record cannot be written; the sender
        then sends it again. A message whose id is longer than
        L{MAX_ID_LENGTH} is refused with a log line: neither recorded,
        delivered nor acknowledged.
        """
        if len(message.id) > MAX_ID_LENGTH:
            self.log.warn(
                "refusing reliable {msg_type} from {peer_id}: its id of {length} characters "
                "is longer than {limit} ({msg_id})",
                msg_type=message.msg_type,
                peer_id=peer_id,
                length=len(message.id),
                limit=MAX_ID_LENGTH,
                msg_id=printable(message.id, 40),
            )
            return
        self.store.mark_delivered(peer_id, message.id, self.clock.seconds()).addCallbacks(
            self._marked,
            self._not_marked,
            callbackArgs=(peer_id, message),
            errbackArgs=(peer_id, message),
        )

    def _marked(self, new: bool, peer_id: str, message: RelayMessage) -> None:
        if new:
            self.mesh.deliver(peer_id, message)
        try:
            self.mesh.send(peer_id, MessageType.ACK.value, {ACK_ID_FIELD: message.id})
        except MeshError as e:
            self.log.debug(
                "ack of {msg_id} to {peer_id} not sent: {error}",
                msg_id=message.id,
                peer_id=peer_id,
                error=e,
            )

    def _not_marked(self, failure: Failure, peer_id: str, message: RelayMessage) -> None:
        self.log.warn(
            "reliable message {msg_id} from {peer_id} not recorded, so not acknowledged: "
            "{error}",
            msg_id=printable(message.id),
            peer_id=peer_id,
            error=failure.getErrorMessage(),
        )

    def _log_store_failure(self, failure: Failure) -> None:
        self.log.warn("outbox update failed: {error}", error=failure.getErrorMessage())
