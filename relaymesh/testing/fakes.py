"""
In-memory stand-ins for the node's stores: L{MemoryKeys} for the key store
and L{MemoryStore} for the reliable-delivery store.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from relaymesh.keystore import PAIR_CODE_FORM, ArmedKey
from relaymesh.peerid import is_valid_peer_id
from relaymesh.reliable.entry import check_msg_id, check_origin
from relaymesh.reliable.store import (
    MAX_DELIVERED_PER_ORIGIN,
    DuplicateMessage,
    OutboxEntry,
    StoreClosed,
    StoreError,
)
from relaymesh.testing.network import MemoryNetworkError


class MemoryKeys:
    """
    An in-memory key store with the interface the factories, the handshakes
    and L{RelayService} use of L{relaymesh.keystore.KeyStore}.

    @ivar keys: peer id -> shared key.
    @ivar pending: The armed pairing key, or C{None}.
    @ivar path: The directory L{RelayService} is told the store is in: the
        current one, which exists, so that a node with an in-memory outbox
        creates nothing on disk.
    @ivar meta_updates: Every L{update_meta} call, as C{(peer_id, fields)}.
    @ivar extra: Armed keys besides C{pending}, as C{(form, key)}; see L{arm}.
    @ivar metas: peer id -> its meta fields.
    @ivar strong_code: The armed strong pairing code, taken once.
    """

    path = os.curdir

    def __init__(
        self,
        keys: dict[str, bytes] | None = None,
        pending: bytes | None = None,
        identity: str | None = None,
    ) -> None:
        """
        @param identity: This node's peer id, for L{identity}.
        """
        self.keys = dict(keys or {})
        self.pending = pending
        self._identity = identity
        self.meta_updates: list[tuple[str, dict[str, object]]] = []
        self.extra: list[tuple[str, bytes]] = []
        self.pending_form = PAIR_CODE_FORM
        self.expires_at: float | None = None
        self.metas: dict[str, dict[str, object]] = {}
        self.strong_code: str | None = None

    def identity(self) -> str:
        """
        This node's peer id.

        @raise MemoryNetworkError: if the store was made without one.
        """
        if self._identity is None:
            raise MemoryNetworkError("this MemoryKeys was made without an identity")
        return self._identity

    def key(self, peer_id: str) -> bytes | None:
        return self.keys.get(peer_id)

    def set_key(self, peer_id: str, key: bytes) -> None:
        self.keys[peer_id] = key

    def take_strong_code(self, now: float) -> str | None:
        code, self.strong_code = self.strong_code, None
        return code

    def meta(self, peer_id: str) -> dict[str, object]:
        return dict(self.metas.get(peer_id, {}))

    def pending_key(self) -> bytes | None:
        return self.pending

    def claim_pending_key(self, peer_id: str) -> bytes | None:
        key, self.pending = self.pending, None
        if key is not None:
            self.keys[peer_id] = key
        return key

    def arm(self, keys: list[tuple[str, bytes]], expires_at: float | None = None) -> None:
        """
        Arm C{keys} (C{(form, key)}, the first the pending key) until
        C{expires_at}, as L{relaymesh.keystore.KeyStore.arm} does.
        """
        (self.pending_form, self.pending), *self.extra = keys
        self.expires_at = expires_at

    def armed_keys(self, now: float) -> list[ArmedKey]:
        if self.expires_at is not None and now >= self.expires_at:
            self.disarm()
        armed = [] if self.pending is None else [ArmedKey(self.pending_form, self.pending)]
        if self.pending is not None:
            armed += [ArmedKey(form, key, form) for form, key in self.extra]
        return armed

    def claim_armed_key(self, peer_id: str, armed: ArmedKey, now: float) -> bytes | None:
        if armed not in self.armed_keys(now):
            return None
        self.keys[peer_id] = armed.key
        self.disarm()
        self.update_meta(peer_id, paired_at=int(now * 1000), paired_via=armed.form)
        return armed.key

    def disarm(self) -> bool:
        armed = self.pending is not None
        self.pending, self.extra, self.expires_at = None, [], None
        self.pending_form = PAIR_CODE_FORM
        return armed

    def peers(self) -> list[str]:
        return sorted(self.keys)

    def forget(self, peer_id: str) -> bool:
        """
        Drop a peer's key and meta fields, as
        L{relaymesh.keystore.KeyStore.forget} removes its files.

        @return: whether there was anything to drop.
        """
        had_key = self.keys.pop(peer_id, None) is not None
        had_meta = self.metas.pop(peer_id, None) is not None
        return had_key or had_meta

    def update_meta(self, peer_id: str, /, *, sync: bool = True, **fields: object) -> dict[str, object]:
        self.meta_updates.append((peer_id, fields))
        self.metas.setdefault(peer_id, {}).update(fields)
        return self.meta(peer_id)


class MemoryStore:
    """
    An in-memory store with the interface of L{relaymesh.reliable.store.Store}
    that L{relaymesh.reliable.outbox.ReliableDelivery} and L{RelayService}
    use (L{relaymesh.reliable.store.OutboxStore}); every call fires at once.

    @ivar outbox: msg_id -> L{OutboxEntry}, in put order.
    @ivar delivered: The C{(origin, msg_id)} pairs marked delivered: at
        most L{max_delivered} per origin, the oldest dropped first, as the
        real store keeps them.
    @ivar closed: Whether L{close} was called; calls then fail with
        L{StoreClosed}.
    """

    def __init__(self, max_delivered: int = MAX_DELIVERED_PER_ORIGIN) -> None:
        self.outbox: dict[str, OutboxEntry] = {}
        self.delivered: set[tuple[str, str]] = set()
        self.max_delivered = max_delivered
        self._by_origin: dict[str, dict[str, None]] = {}
        self.closed = False

    def _refuse(self) -> Deferred[Any] | None:
        return fail(StoreClosed("store is closed")) if self.closed else None

    def put(self, entry: OutboxEntry) -> Deferred[None]:
        """
        Add an entry to the outbox.
        """
        refused = self._refuse()
        if refused is not None:
            return refused
        if entry.msg_id in self.outbox:
            return fail(DuplicateMessage(f"message {entry.msg_id!r} is already in the outbox"))
        entry.check()
        self.outbox[entry.msg_id] = entry
        return succeed(None)

    def remove(self, msg_id: str) -> Deferred[bool]:
        """
        Drop an entry; fires with whether it was there.
        """
        return self._refuse() or succeed(self.outbox.pop(msg_id, None) is not None)

    def pending(self, peer_id: str | None = None) -> Deferred[list[OutboxEntry]]:
        """
        The entries, for one peer or all.
        """
        return self._refuse() or succeed(
            [e for e in self.outbox.values() if peer_id is None or e.peer_id == peer_id]
        )

    def bump_attempts(self, msg_id: str) -> Deferred[int | None]:
        """
        Count one more attempt; fires with the count (C{None} if gone).
        """
        entry = self.outbox.get(msg_id)
        if entry is None:
            return self._refuse() or succeed(None)
        entry = self.outbox[msg_id] = dataclasses.replace(entry, attempts=entry.attempts + 1)
        return self._refuse() or succeed(entry.attempts)

    def forget_peer(self, peer_id: str) -> Deferred[int]:
        """
        Drop every entry for a destination; fires with how many there were.
        """
        refused = self._refuse()
        if refused is not None:
            return refused
        if not is_valid_peer_id(peer_id):
            return fail(StoreError("peer_id is not a valid peer id"))
        dropped = [msg_id for msg_id, entry in self.outbox.items() if entry.peer_id == peer_id]
        for msg_id in dropped:
            del self.outbox[msg_id]
        return succeed(len(dropped))

    def mark_delivered(self, origin: str, msg_id: str, now: float) -> Deferred[bool]:
        """
        Remember a delivered message; fires with whether it was new.
        """
        refused = self._refuse()
        if refused is not None:
            return refused
        try:
            check_origin(origin)
            check_msg_id(msg_id)
        except StoreError:
            return fail()
        if (origin, msg_id) in self.delivered:
            return succeed(False)
        self.delivered.add((origin, msg_id))
        ids = self._by_origin.setdefault(origin, {})
        ids[msg_id] = None
        if len(ids) > self.max_delivered:
            oldest = next(iter(ids))
            del ids[oldest]
            self.delivered.discard((origin, oldest))
        return succeed(True)

    def close(self) -> Deferred[None]:
        """
        Close the store; later calls fail.
        """
        self.closed = True
        return succeed(None)


def memory_store_opener(
    store: MemoryStore | None = None,
) -> Callable[[str, object], Deferred[MemoryStore]]:
    """
    A store opener for C{RelayService(outbox=...)}: each call opens
    C{store} again (its outbox kept across a restart of the node), or a new
    empty L{MemoryStore} if none is given; the path is ignored.
    """

    def open_store(path: str, reactor: object) -> Deferred[MemoryStore]:
        opened = MemoryStore() if store is None else store
        opened.closed = False
        return succeed(opened)

    return open_store
