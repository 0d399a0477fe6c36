"""
Durable node state in SQLite: the outbox of reliable messages and the record
of message ids already delivered to the application.

The outbox holds every reliable message this node has accepted and not yet
seen acknowledged, so that it can be sent again after a reconnection, a
timeout or a restart. The delivered record holds C{(origin, msg_id)} of every
reliable message handed to the application, so that a message sent again is
acknowledged but not delivered twice, even across a restart.

All access goes through one dedicated worker thread that owns the
connection, so the reactor never waits on the disk, and calls take effect in
the order they were made. Calls made in one reactor turn are written in one
transaction (one C{fsync}): a burst of C{put}s costs about as much as one.

Open a store with L{open_store}; every method returns a C{Deferred}::

    store = yield open_store(os.path.join(data_dir, STORE_FILE), reactor)
    yield store.put(OutboxEntry(msg_id, peer_id, origin, "delegate_task",
                                line, created=now, deadline=now + 300))
    # from here on the message survives a crash
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from relaymesh.peerid import is_valid_peer_id
from relaymesh.reliable.entry import (
    ENTRY_COLUMNS,
    OutboxEntry,
    check_msg_id,
    check_origin,
    check_time,
)
from relaymesh.reliable.errors import DuplicateMessage, SchemaTooNew, StoreClosed, StoreError
from relaymesh.reliable.schema import SCHEMA, Schema, migrate

__all__ = [
    "STORE_FILE",
    "DuplicateMessage",
    "OutboxEntry",
    "OutboxStore",
    "SchemaTooNew",
    "Store",
    "StoreClosed",
    "StoreError",
    "open_store",
]

T = TypeVar("T")

#: The store's file name in the node's data directory.
STORE_FILE = "state.sqlite3"

#: How long a delivered message id is remembered, in seconds. It must exceed
#: the longest delivery deadline a sender uses, or a late retransmission
#: would be delivered a second time.
DELIVERED_RETENTION = 7 * 24 * 3600.0

#: Delivered ids recorded between two automatic prunings of old ones.
PRUNE_EVERY = 1000

#: Delivered ids kept at most per origin: recording one more drops that
#: origin's oldest, so that a peer sending reliable messages with ever new
#: ids cannot grow the record without bound (each id is at most
#: L{relaymesh.reliable.fields.MAX_ID_LENGTH} characters).
MAX_DELIVERED_PER_ORIGIN = 10_000

#: Calls written in one transaction at most; a longer burst takes several.
MAX_BATCH = 512

#: Seconds the worker waits for another process's lock before failing.
BUSY_TIMEOUT = 5.0

#: Permission bits of a store file this module creates: it holds messages.
FILE_MODE = 0o600

# Every commit is flushed to disk before a put's Deferred fires: with WAL,
# synchronous=FULL fsyncs the log on each commit. NORMAL would fsync only at
# checkpoints; a commit would still survive the process being killed (the
# operating system has the data), but a power failure or kernel crash could
# roll back the last commits, so a message the application was told is
# "accepted" would be silently lost.
_SYNCHRONOUS = "FULL"


_NEW, _OPEN, _CLOSING, _CLOSED = "new", "open", "closing", "closed"


class OutboxStore(Protocol):
    """
    What a node uses of its store (L{relaymesh.reliable.outbox.ReliableDelivery}
    and L{relaymesh.service.RelayService}): a L{Store}, or an in-memory
    L{relaymesh.testing.MemoryStore} in tests. Each method is as L{Store}'s.
    """

    def put(self, entry: OutboxEntry) -> Deferred[None]:
        """Add a message to the outbox."""

    def remove(self, msg_id: str) -> Deferred[bool]:
        """Remove a message from the outbox; fires with whether it was there."""

    def pending(self, peer_id: str | None = None) -> Deferred[list[OutboxEntry]]:
        """The messages waiting for an acknowledgement, oldest first."""

    def bump_attempts(self, msg_id: str) -> Deferred[int | None]:
        """Count one more sending of a message; fires with the new count."""

    def forget_peer(self, peer_id: str) -> Deferred[int]:
        """Drop every outbox message for a destination; fires with how many."""

    def mark_delivered(self, origin: str, msg_id: str, now: float) -> Deferred[bool]:
        """Record that a message was delivered; fires with whether it was new."""

    def close(self) -> Deferred[None]:
        """Close the store."""


def open_store(
    path: str,
    reactor: Any,
    *,
    batch: bool = True,
    retention: float = DELIVERED_RETENTION,
    schema: Schema = SCHEMA,
    max_delivered: int = MAX_DELIVERED_PER_ORIGIN,
) -> Deferred[Store]:
    """
    Open (creating or migrating it if needed) the store at C{path}.

    @param path: The database file; created with mode 0600 if missing.
    @param reactor: An C{IReactorThreads} and C{IReactorTime} provider.
    @param batch: Whether calls made in one reactor turn share one
        transaction; C{False} commits every call on its own.
    @param retention: Seconds a delivered id is remembered.
    @param schema: The schema to bring the file to; L{SCHEMA} but in tests.
    @param max_delivered: Delivered ids kept at most per origin.
    @return: a C{Deferred} that fires with the open L{Store}, or fails with a
        L{StoreError} (L{SchemaTooNew} for a file from a newer relaymesh).
    """
    return Store(
        path, reactor, batch=batch, retention=retention, max_delivered=max_delivered
    )._open(schema)


class Store:
    """
    The outbox and the delivered-id record, in one SQLite file.

    Build it with L{open_store}. Every method returns a C{Deferred} and
    takes effect in call order; a method called after L{close} fails with
    L{StoreClosed}.

    @ivar path: The database file.
    @ivar retention: Seconds a delivered id is remembered.
    @ivar max_delivered: Delivered ids kept at most per origin.
    @ivar transactions: Transactions committed so far.
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        reactor: Any,
        batch: bool = True,
        retention: float = DELIVERED_RETENTION,
        max_batch: int = MAX_BATCH,
        max_delivered: int = MAX_DELIVERED_PER_ORIGIN,
    ) -> None:
        """
        A store not yet open; L{open_store} builds and opens one.

        @param max_batch: Calls written in one transaction at most.
        @param max_delivered: Delivered ids kept at most per origin.
        """
        self.path = path
        self.retention = retention
        self.max_delivered = max_delivered
        # Touched only by the worker thread: delivered ids per origin, read
        # from the file when first needed (and again after a pruning or a
        # failed transaction).
        self._delivered_counts: dict[str, int] | None = None
        self.transactions = 0
        self._reactor = reactor
        self._batching = batch
        self._max_batch = max_batch
        self._pool = ThreadPool(1, 1, name="relaymesh-store")
        # Touched only by the worker thread, one call at a time.
        self._conn: sqlite3.Connection | None = None
        # Each call's op and its Deferred, of the op's result type.
        self._batch: list[tuple[Callable[[sqlite3.Connection], Any], Deferred[Any]]] = []
        self._flush_call: Any = None
        self._state = _NEW
        self._close_waiters: list[Deferred[None]] = []
        self._marks_since_prune = 0
        self._trigger: Any = None

    # -- lifecycle -----------------------------------------------------------

    def _open(self, schema: Schema) -> Deferred[Store]:
        self._pool.start()
        self._trigger = self._reactor.addSystemEventTrigger("before", "shutdown", self.close)
        d = deferToThreadPool(self._reactor, self._pool, self._connect, schema)

        def opened(found: int) -> Store:
            if self._state == _NEW:  # not closed meanwhile
                self._state = _OPEN
            if found == 0:
                self.log.info("created store {path} (schema {new})", path=self.path, new=schema.version)
            elif found != schema.version:
                self.log.info(
                    "store {path} migrated from schema {old} to {new}",
                    path=self.path,
                    old=found,
                    new=schema.version,
                )
            return self

        def failed(f: Failure) -> Failure:
            self._state = _CLOSED
            self._stop_pool()
            return _as_store_failure(f, self.path)

        return d.addCallbacks(opened, failed)

    def _connect(self, schema: Schema) -> int:
        """
        In the worker: open the file, set it up, migrate it.
        """
        path = self.path
        if path != ":memory:" and not os.path.exists(path):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
        # One worker thread serialises every use of the connection; it is
        # also the only thread that ever touches it.
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal" and path != ":memory:":
                raise StoreError(f"{path}: cannot use write-ahead logging (journal mode {mode})")
            conn.execute(f"PRAGMA synchronous={_SYNCHRONOUS}")
            found = migrate(conn, path, schema)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return found

    def close(self) -> Deferred[None]:
        """
        Finish the calls already made, close the file and stop the worker.

        Closing twice is harmless; the second call fires when the first does.
        """
        if self._state == _CLOSED:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._close_waiters.append(waiter)
        if self._state == _CLOSING:
            return waiter
        self._state = _CLOSING
        self._flush()
        d = deferToThreadPool(self._reactor, self._pool, self._disconnect)

        def closed(result: Any) -> None:
            self._state = _CLOSED
            self._stop_pool()
            if isinstance(result, Failure):
                result = _as_store_failure(result, self.path)
            waiters, self._close_waiters = self._close_waiters, []
            for w in waiters:
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(None)

        d.addBoth(closed)
        return waiter

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()

    def _stop_pool(self) -> None:
        if self._pool.joined:
            return
        if self._trigger is not None:
            self._reactor.removeSystemEventTrigger(self._trigger)
            self._trigger = None
        # The worker is idle: its last job has already returned.
        self._pool.stop()

    @property
    def closed(self) -> bool:
        """
        Whether the store takes no more calls.
        """
        return self._state != _OPEN

    # -- the queue of calls --------------------------------------------------

    def _call(self, op: Callable[[sqlite3.Connection], T]) -> Deferred[T]:
        """
        Run C{op(connection)} in the worker, after every earlier call.
        """
        if self._state != _OPEN:
            return fail(StoreClosed(f"store {self.path} is closed"))
        d: Deferred[T] = Deferred()
        self._batch.append((op, d))
        if not self._batching or len(self._batch) >= self._max_batch:
            self._flush()
        elif self._flush_call is None:
            self._flush_call = self._reactor.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        """
        Hand the calls made so far to the worker, as one transaction.
        """
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        ops = [op for op, _ in batch]
        done = deferToThreadPool(self._reactor, self._pool, self._transaction, ops)
        done.addBoth(self._settle, [d for _, d in batch])

    def _transaction(
        self, ops: list[Callable[[sqlite3.Connection], Any]]
    ) -> list[tuple[bool, Any]]:
        """
        In the worker: run C{ops} in one transaction and commit it.

        An op that raises L{StoreError} or breaks a constraint fails alone
        (SQLite undoes just that statement); any other database error undoes
        the whole transaction and fails every op in it.
        """
        conn = self._conn
        if conn is None:
            raise StoreClosed(f"store {self.path} is closed")
        results: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                try:
                    results.append((True, op(conn)))
                except (StoreError, sqlite3.IntegrityError) as e:
                    results.append((False, e))
            conn.execute("COMMIT")
        except BaseException:
            self._delivered_counts = None
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    def _settle(self, outcome: list[tuple[bool, Any]] | Failure, deferreds: list[Deferred[Any]]) -> None:
        """
        In the reactor: fire each call's Deferred with its result.
        """
        if isinstance(outcome, Failure):
            failure = _as_store_failure(outcome, self.path)
            self.log.warn(
                "store {path}: a transaction of {count} calls failed: {error}",
                path=self.path,
                count=len(deferreds),
                error=failure.getErrorMessage(),
            )
            for d in deferreds:
                d.errback(failure)
            return
        self.transactions += 1
        for d, (ok, value) in zip(deferreds, outcome):
            if ok:
                d.callback(value)
            else:
                d.errback(_as_store_failure(Failure(value), self.path))

    # -- the outbox ----------------------------------------------------------

    def put(self, entry: OutboxEntry) -> Deferred[None]:
        """
        Add a message to the outbox.

        @return: a C{Deferred} that fires once the entry is on disk, or fails
            with L{DuplicateMessage} if its id is already in the outbox, or
            L{StoreError} for an invalid entry.
        """
        given: object = entry  # an untyped caller may pass anything
        if not isinstance(given, OutboxEntry):
            return fail(
                StoreError(f"an outbox entry is an OutboxEntry, not {type(given).__name__}")
            )
        try:
            entry.check()
        except StoreError:
            return fail()
        row = entry.row()

        def op(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(f"INSERT INTO outbox ({ENTRY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", row)
            except sqlite3.IntegrityError:
                raise DuplicateMessage(f"message {row[0]!r} is already in the outbox") from None

        return self._call(op)

    def remove(self, msg_id: str) -> Deferred[bool]:
        """
        Remove a message from the outbox (it was acknowledged, or given up).

        @return: a C{Deferred} firing with whether it was there.
        """
        try:
            check_msg_id(msg_id)
        except StoreError:
            return fail()
        return self._call(
            lambda conn: conn.execute("DELETE FROM outbox WHERE msg_id = ?", (msg_id,)).rowcount > 0
        )

    def pending(self, peer_id: str | None = None) -> Deferred[list[OutboxEntry]]:
        """
        The messages waiting for an acknowledgement, oldest first.

        @param peer_id: Only those for this destination; all if C{None}.
        @return: a C{Deferred} firing with a list of L{OutboxEntry}.
        """
        args: tuple[str, ...]
        if peer_id is None:
            query, args = f"SELECT {ENTRY_COLUMNS} FROM outbox ORDER BY created, seq", ()
        elif is_valid_peer_id(peer_id):
            query = f"SELECT {ENTRY_COLUMNS} FROM outbox WHERE peer_id = ? ORDER BY created, seq"
            args = (peer_id,)
        else:
            return fail(StoreError("peer_id is not a valid peer id"))
        return self._call(
            lambda conn: [OutboxEntry.from_row(row) for row in conn.execute(query, args)]
        )

    def bump_attempts(self, msg_id: str) -> Deferred[int | None]:
        """
        Count one more sending of a message.

        @return: a C{Deferred} firing with the new count, or C{None} if the
            message is not in the outbox.
        """
        try:
            check_msg_id(msg_id)
        except StoreError:
            return fail()

        def op(conn: sqlite3.Connection) -> int | None:
            if (
                conn.execute(
                    "UPDATE outbox SET attempts = attempts + 1 WHERE msg_id = ?", (msg_id,)
                ).rowcount
                == 0
            ):
                return None
            attempts: int = conn.execute(
                "SELECT attempts FROM outbox WHERE msg_id = ?", (msg_id,)
            ).fetchone()[0]
            return attempts

        return self._call(op)

    def forget_peer(self, peer_id: str) -> Deferred[int]:
        """
        Drop every outbox message for a destination (a peer removed for good).

        @return: a C{Deferred} firing with how many were dropped.
        """
        if not is_valid_peer_id(peer_id):
            return fail(StoreError("peer_id is not a valid peer id"))
        return self._call(
            lambda conn: conn.execute("DELETE FROM outbox WHERE peer_id = ?", (peer_id,)).rowcount
        )

    # -- delivered ids -------------------------------------------------------

    def mark_delivered(self, origin: str, msg_id: str, now: float) -> Deferred[bool]:
        """
        Record that a message was delivered, unless it already was.

        Deliver the message to the application only if this fires with
        C{True}; acknowledge it either way. Every L{PRUNE_EVERY} calls, ids
        older than L{retention} are pruned in the same transaction. An
        origin keeps at most L{max_delivered} ids: a new one drops its
        oldest.

        @param origin: The node that first sent the message.
        @param msg_id: Its id at the origin.
        @param now: The current time (clock seconds).
        @return: a C{Deferred} firing with whether it is new, once the
            record is on disk.
        """
        try:
            check_origin(origin)
            check_msg_id(msg_id)
            check_time("now", now)
        except StoreError:
            return fail()
        row = (origin, msg_id, float(now))

        def op(conn: sqlite3.Connection) -> bool:
            if (
                conn.execute(
                    "INSERT OR IGNORE INTO delivered (origin, msg_id, delivered_at) VALUES (?,?,?)",
                    row,
                ).rowcount
                != 1
            ):
                return False
            self._count_delivered(conn, origin)
            return True

        d = self._call(op)
        self._marks_since_prune += 1
        if self._marks_since_prune >= PRUNE_EVERY:
            self.prune_delivered(now).addErrback(
                lambda f: self.log.failure("pruning {path} failed", f, path=self.path)
            )
        return d

    def prune_delivered(self, now: float) -> Deferred[int]:
        """
        Forget delivered ids recorded more than L{retention} seconds before
        C{now}.

        @return: a C{Deferred} firing with how many were forgotten.
        """
        try:
            check_time("now", now)
        except StoreError:
            return fail()
        self._marks_since_prune = 0
        cutoff = float(now) - self.retention

        def op(conn: sqlite3.Connection) -> int:
            pruned = conn.execute("DELETE FROM delivered WHERE delivered_at < ?", (cutoff,)).rowcount
            if pruned:
                self._delivered_counts = None
            return pruned

        return self._call(op)

    def _count_delivered(self, conn: sqlite3.Connection, origin: str) -> None:
        """
        In the worker: count one more delivered id of C{origin}, and drop
        its oldest beyond L{max_delivered}.
        """
        counts = self._delivered_counts
        if counts is None:
            counts = self._delivered_counts = dict(
                conn.execute("SELECT origin, COUNT(*) FROM delivered GROUP BY origin").fetchall()
            )
        else:
            counts[origin] = counts.get(origin, 0) + 1
        excess = counts[origin] - self.max_delivered
        if excess > 0:
            conn.execute(
                "DELETE FROM delivered WHERE seq IN"
                " (SELECT seq FROM delivered WHERE origin = ? ORDER BY seq LIMIT ?)",
                (origin, excess),
            )
            counts[origin] = self.max_delivered

    def delivered_count(self, origin: str | None = None) -> Deferred[int]:
        """
        How many delivered ids are kept, of C{origin} or of all origins.
        """
        args: tuple[str, ...]
        if origin is None:
            query, args = "SELECT COUNT(*) FROM delivered", ()
        elif is_valid_peer_id(origin):
            query, args = "SELECT COUNT(*) FROM delivered WHERE origin = ?", (origin,)
        else:
            return fail(StoreError("origin is not a valid peer id"))
        return self._call(lambda conn: conn.execute(query, args).fetchone()[0])


def _as_store_failure(f: Failure, path: str) -> Failure:
    """
    A database error as a one-line L{StoreError}; other failures unchanged.
    """
    if f.check(sqlite3.Error):
        text = str(f.value).splitlines()[0] if str(f.value) else type(f.value).__name__
        return Failure(StoreError(f"store {path}: {text}"))
    return f
