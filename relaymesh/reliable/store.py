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

Open a store with L{open_store}; every method returns a L{Deferred}::

    store = yield open_store(os.path.join(data_dir, STORE_FILE), reactor)
    yield store.put(OutboxEntry(msg_id, peer_id, origin, "delegate_task",
                                line, created=now, deadline=now + 300))
    # from here on the message survives a crash
"""

from __future__ import annotations

import dataclasses
import math
import os
import sqlite3
from typing import Any, Callable, Mapping, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from relaymesh.peerid import is_valid_peer_id
from relaymesh.wire import MAX_LINE_BYTES

T = TypeVar("T")

#: The store's file name in the node's data directory.
STORE_FILE = "state.sqlite3"

#: The schema version this code writes and understands.
SCHEMA_VERSION = 1

#: How long a delivered message id is remembered, in seconds. It must exceed
#: the longest delivery deadline a sender uses, or a late retransmission
#: would be delivered a second time.
DELIVERED_RETENTION = 7 * 24 * 3600.0

#: Delivered ids recorded between two automatic prunings of old ones.
PRUNE_EVERY = 1000

#: Calls written in one transaction at most; a longer burst takes several.
MAX_BATCH = 512

#: Seconds the worker waits for another process's lock before failing.
BUSY_TIMEOUT = 5.0

#: Permission bits of a store file this module creates: it holds messages.
FILE_MODE = 0o600

#: The longest message id kept.
MAX_MSG_ID_LENGTH = 512

# Every commit is flushed to disk before a put's Deferred fires: with WAL,
# synchronous=FULL fsyncs the log on each commit. NORMAL would fsync only at
# checkpoints; a commit would still survive the process being killed (the
# operating system has the data), but a power failure or kernel crash could
# roll back the last commits, so a message the application was told is
# "accepted" would be silently lost.
_SYNCHRONOUS = "FULL"


class StoreError(Exception):
    """
    The store cannot do what was asked; the message is one line.
    """


class StoreClosed(StoreError):
    """
    The store is closed (or closing) and takes no more calls.
    """


class SchemaTooNew(StoreError):
    """
    The database was written by a newer relaymesh than this one.
    """


class DuplicateMessage(StoreError):
    """
    The outbox already holds a message with that id.
    """


@dataclasses.dataclass(frozen=True)
class OutboxEntry:
    """
    One reliable message waiting for its acknowledgement.

    @ivar msg_id: The message id the acknowledgement names; unique in the
        outbox.
    @ivar peer_id: The destination peer.
    @ivar origin: The node that first sent it (this node, unless forwarded).
    @ivar msg_type: The message type, for status displays.
    @ivar line: The encoded message, without its C{\\n}, as it is sent again.
    @ivar created: When it was accepted (clock seconds); the outbox order.
    @ivar deadline: When delivery is given up (clock seconds).
    @ivar attempts: How many times it has been sent so far.
    """

    msg_id: str
    peer_id: str
    origin: str
    msg_type: str
    line: bytes
    created: float
    deadline: float
    attempts: int = 0

    def check(self) -> None:
        """
        Check every field's type and range.

        @raise StoreError: naming the first field that is wrong.
        """
        _check_msg_id(self.msg_id)
        for name in ("peer_id", "origin"):
            if not is_valid_peer_id(getattr(self, name)):
                raise StoreError(f"outbox entry field {name!r} is not a valid peer id")
        if type(self.msg_type) is not str or not self.msg_type:
            raise StoreError("outbox entry field 'msg_type' must be a non-empty string")
        if type(self.line) is not bytes or not self.line:
            raise StoreError("outbox entry field 'line' must be non-empty bytes")
        if len(self.line) > MAX_LINE_BYTES:
            raise StoreError(f"outbox entry line of {len(self.line)} bytes is too long")
        for name in ("created", "deadline"):
            _check_time(name, getattr(self, name))
        if type(self.attempts) is not int or self.attempts < 0:
            raise StoreError("outbox entry field 'attempts' must be a non-negative integer")

    def _row(self) -> tuple:
        return (
            self.msg_id,
            self.peer_id,
            self.origin,
            self.msg_type,
            self.line,
            float(self.created),
            float(self.deadline),
            self.attempts,
        )


_ENTRY_COLUMNS = "msg_id, peer_id, origin, msg_type, line, created, deadline, attempts"


def _entry(row: tuple) -> OutboxEntry:
    msg_id, peer_id, origin, msg_type, line, created, deadline, attempts = row
    return OutboxEntry(msg_id, peer_id, origin, msg_type, bytes(line), created, deadline, attempts)


def _check_msg_id(msg_id: Any) -> None:
    if type(msg_id) is not str or not msg_id:
        raise StoreError("message id must be a non-empty string")
    if len(msg_id) > MAX_MSG_ID_LENGTH:
        raise StoreError(f"message id of {len(msg_id)} characters is too long")


def _check_time(name: str, value: Any) -> None:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise StoreError(f"{name!r} must be a finite number of seconds")


# -- the schema ---------------------------------------------------------------


def _schema_1(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE outbox ("
        " seq INTEGER PRIMARY KEY AUTOINCREMENT,"  # ties on 'created' keep put order
        " msg_id TEXT NOT NULL UNIQUE,"
        " peer_id TEXT NOT NULL,"
        " origin TEXT NOT NULL,"
        " msg_type TEXT NOT NULL,"
        " line BLOB NOT NULL,"
        " created REAL NOT NULL,"
        " deadline REAL NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0)"
    )
    conn.execute("CREATE INDEX outbox_by_peer ON outbox (peer_id, created, seq)")
    conn.execute("CREATE INDEX outbox_by_deadline ON outbox (deadline)")
    conn.execute(
        "CREATE TABLE delivered ("
        " origin TEXT NOT NULL,"
        " msg_id TEXT NOT NULL,"
        " delivered_at REAL NOT NULL,"
        " PRIMARY KEY (origin, msg_id)) WITHOUT ROWID"
    )
    conn.execute("CREATE INDEX delivered_by_time ON delivered (delivered_at)")


@dataclasses.dataclass(frozen=True)
class Schema:
    """
    A schema version and the steps that reach it.

    @ivar version: The version the steps end at.
    @ivar migrations: For each version from 1 to L{version}, a function that
        takes a connection (inside a transaction) from the version before to
        that one. A new version adds a step; existing steps never change.
    """

    version: int
    migrations: Mapping[int, Callable[[sqlite3.Connection], None]]

    def __post_init__(self) -> None:
        if sorted(self.migrations) != list(range(1, self.version + 1)):
            raise ValueError(f"schema {self.version} needs one migration per version from 1")


#: The schema this code uses.
SCHEMA = Schema(SCHEMA_VERSION, {1: _schema_1})


def _current_version(conn: sqlite3.Connection, path: str) -> int:
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "schema_version" not in tables:
        if tables - {"sqlite_sequence"}:
            raise StoreError(f"{path} is an SQLite database but not a relaymesh store")
        return 0
    rows = conn.execute("SELECT version FROM schema_version").fetchall()
    if len(rows) != 1 or type(rows[0][0]) is not int or rows[0][0] < 1:
        raise StoreError(f"{path} has a damaged schema_version table")
    return rows[0][0]


def _migrate(conn: sqlite3.Connection, path: str, schema: Schema) -> int:
    """
    Bring the database to C{schema.version} in one transaction.

    @return: the version it was at.
    @raise SchemaTooNew: if it is at a version newer than C{schema}.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = _current_version(conn, path)
        if found > schema.version:
            raise SchemaTooNew(
                f"{path} has schema version {found}, newer than version {schema.version} "
                "that this relaymesh understands; upgrade relaymesh"
            )
        for version in range(found + 1, schema.version + 1):
            schema.migrations[version](conn)
        if found == 0:
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (schema.version,))
        elif found < schema.version:
            conn.execute("UPDATE schema_version SET version = ?", (schema.version,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found


# -- the store ----------------------------------------------------------------

_NEW, _OPEN, _CLOSING, _CLOSED = "new", "open", "closing", "closed"


def open_store(
    path: str,
    reactor: Any,
    *,
    batch: bool = True,
    retention: float = DELIVERED_RETENTION,
    schema: Schema = SCHEMA,
) -> Deferred[Store]:
    """
    Open (creating or migrating it if needed) the store at C{path}.

    @param path: The database file; created with mode 0600 if missing.
    @param reactor: An L{IReactorThreads} and L{IReactorTime} provider.
    @param batch: Whether calls made in one reactor turn share one
        transaction; L{False} commits every call on its own.
    @param retention: Seconds a delivered id is remembered.
    @param schema: The schema to bring the file to; L{SCHEMA} but in tests.
    @return: a L{Deferred} that fires with the open L{Store}, or fails with a
        L{StoreError} (L{SchemaTooNew} for a file from a newer relaymesh).
    """
    return Store(path, reactor, batch=batch, retention=retention)._open(schema)


class Store:
    """
    The outbox and the delivered-id record, in one SQLite file.

    Build it with L{open_store}. Every method returns a L{Deferred} and
    takes effect in call order; a method called after L{close} fails with
    L{StoreClosed}.

    @ivar path: The database file.
    @ivar retention: Seconds a delivered id is remembered.
    @ivar transactions: Transactions committed so far.
    @ivar calls: Calls carried out so far.
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        reactor: Any,
        batch: bool = True,
        retention: float = DELIVERED_RETENTION,
        max_batch: int = MAX_BATCH,
    ) -> None:
        """
        A store not yet open; L{open_store} builds and opens one.

        @param max_batch: Calls written in one transaction at most.
        """
        self.path = path
        self.retention = retention
        self.transactions = 0
        self.calls = 0
        self._reactor = reactor
        self._batching = batch
        self._max_batch = max_batch
        self._pool = ThreadPool(1, 1, name="relaymesh-store")
        # Touched only by the worker thread, one call at a time.
        self._conn: sqlite3.Connection | None = None
        self._batch: list[tuple[Callable[[sqlite3.Connection], Any], Deferred]] = []
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
            found = _migrate(conn, path, schema)
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
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    def _settle(self, outcome: list[tuple[bool, Any]] | Failure, deferreds: list[Deferred]) -> None:
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
        self.calls += len(deferreds)
        for d, (ok, value) in zip(deferreds, outcome):
            if ok:
                d.callback(value)
            else:
                d.errback(_as_store_failure(Failure(value), self.path))

    # -- the outbox ----------------------------------------------------------

    def put(self, entry: OutboxEntry) -> Deferred[None]:
        """
        Add a message to the outbox.

        @return: a L{Deferred} that fires once the entry is on disk, or fails
            with L{DuplicateMessage} if its id is already in the outbox, or
            L{StoreError} for an invalid entry.
        """
        if not isinstance(entry, OutboxEntry):
            return fail(
                StoreError(f"an outbox entry is an OutboxEntry, not {type(entry).__name__}")
            )
        try:
            entry.check()
        except StoreError:
            return fail()
        row = entry._row()

        def op(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(f"INSERT INTO outbox ({_ENTRY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", row)
            except sqlite3.IntegrityError:
                raise DuplicateMessage(f"message {row[0]!r} is already in the outbox") from None

        return self._call(op)

    def remove(self, msg_id: str) -> Deferred[bool]:
        """
        Remove a message from the outbox (it was acknowledged, or given up).

        @return: a L{Deferred} firing with whether it was there.
        """
        try:
            _check_msg_id(msg_id)
        except StoreError:
            return fail()
        return self._call(
            lambda conn: conn.execute("DELETE FROM outbox WHERE msg_id = ?", (msg_id,)).rowcount > 0
        )

    def get(self, msg_id: str) -> Deferred[OutboxEntry | None]:
        """
        One outbox entry.

        @return: a L{Deferred} firing with the L{OutboxEntry}, or L{None}.
        """
        try:
            _check_msg_id(msg_id)
        except StoreError:
            return fail()

        def op(conn: sqlite3.Connection) -> OutboxEntry | None:
            row = conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM outbox WHERE msg_id = ?", (msg_id,)
            ).fetchone()
            return None if row is None else _entry(row)

        return self._call(op)

    def pending(self, peer_id: str | None = None) -> Deferred[list[OutboxEntry]]:
        """
        The messages waiting for an acknowledgement, oldest first.

        @param peer_id: Only those for this destination; all if L{None}.
        @return: a L{Deferred} firing with a list of L{OutboxEntry}.
        """
        if peer_id is None:
            query, args = f"SELECT {_ENTRY_COLUMNS} FROM outbox ORDER BY created, seq", ()
        elif is_valid_peer_id(peer_id):
            query = f"SELECT {_ENTRY_COLUMNS} FROM outbox WHERE peer_id = ? ORDER BY created, seq"
            args = (peer_id,)
        else:
            return fail(StoreError("peer_id is not a valid peer id"))
        return self._call(lambda conn: [_entry(row) for row in conn.execute(query, args)])

    def expired(self, now: float) -> Deferred[list[OutboxEntry]]:
        """
        The messages whose deadline is at or before C{now}, earliest first.

        They stay in the outbox until L{remove}d.

        @return: a L{Deferred} firing with a list of L{OutboxEntry}.
        """
        try:
            _check_time("now", now)
        except StoreError:
            return fail()
        query = (
            f"SELECT {_ENTRY_COLUMNS} FROM outbox"
            " WHERE deadline <= ? ORDER BY deadline, created, seq"
        )
        return self._call(lambda conn: [_entry(row) for row in conn.execute(query, (float(now),))])

    def bump_attempts(self, msg_id: str) -> Deferred[int | None]:
        """
        Count one more sending of a message.

        @return: a L{Deferred} firing with the new count, or L{None} if the
            message is not in the outbox.
        """
        try:
            _check_msg_id(msg_id)
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
            return conn.execute(
                "SELECT attempts FROM outbox WHERE msg_id = ?", (msg_id,)
            ).fetchone()[0]

        return self._call(op)

    def forget_peer(self, peer_id: str) -> Deferred[int]:
        """
        Drop every outbox message for a destination (a peer removed for good).

        @return: a L{Deferred} firing with how many were dropped.
        """
        if not is_valid_peer_id(peer_id):
            return fail(StoreError("peer_id is not a valid peer id"))
        return self._call(
            lambda conn: conn.execute("DELETE FROM outbox WHERE peer_id = ?", (peer_id,)).rowcount
        )

    def outbox_size(self) -> Deferred[int]:
        """
        How many messages wait in the outbox.
        """
        return self._call(lambda conn: conn.execute("SELECT count(*) FROM outbox").fetchone()[0])

    # -- delivered ids -------------------------------------------------------

    def mark_delivered(self, origin: str, msg_id: str, now: float) -> Deferred[bool]:
        """
        Record that a message was delivered, unless it already was.

        Deliver the message to the application only if this fires with
        L{True}; acknowledge it either way. Every L{PRUNE_EVERY} calls, ids
        older than L{retention} are pruned in the same transaction.

        @param origin: The node that first sent the message.
        @param msg_id: Its id at the origin.
        @param now: The current time (clock seconds).
        @return: a L{Deferred} firing with whether it is new, once the
            record is on disk.
        """
        try:
            _check_origin(origin)
            _check_msg_id(msg_id)
            _check_time("now", now)
        except StoreError:
            return fail()
        row = (origin, msg_id, float(now))
        d = self._call(
            lambda conn: conn.execute(
                "INSERT OR IGNORE INTO delivered (origin, msg_id, delivered_at) VALUES (?,?,?)", row
            ).rowcount
            == 1
        )
        self._marks_since_prune += 1
        if self._marks_since_prune >= PRUNE_EVERY:
            self.prune_delivered(now).addErrback(
                lambda f: self.log.failure("pruning {path} failed", f, path=self.path)
            )
        return d

    def was_delivered(self, origin: str, msg_id: str) -> Deferred[bool]:
        """
        Whether a message was recorded as delivered (and not yet pruned).
        """
        try:
            _check_origin(origin)
            _check_msg_id(msg_id)
        except StoreError:
            return fail()
        return self._call(
            lambda conn: conn.execute(
                "SELECT 1 FROM delivered WHERE origin = ? AND msg_id = ?", (origin, msg_id)
            ).fetchone()
            is not None
        )

    def prune_delivered(self, now: float) -> Deferred[int]:
        """
        Forget delivered ids recorded more than L{retention} seconds before
        C{now}.

        @return: a L{Deferred} firing with how many were forgotten.
        """
        try:
            _check_time("now", now)
        except StoreError:
            return fail()
        self._marks_since_prune = 0
        cutoff = float(now) - self.retention
        return self._call(
            lambda conn: conn.execute(
                "DELETE FROM delivered WHERE delivered_at < ?", (cutoff,)
            ).rowcount
        )

    def delivered_count(self) -> Deferred[int]:
        """
        How many delivered ids are remembered.
        """
        return self._call(lambda conn: conn.execute("SELECT count(*) FROM delivered").fetchone()[0])


def _check_origin(origin: Any) -> None:
    if not is_valid_peer_id(origin):
        raise StoreError("origin is not a valid peer id")


def _as_store_failure(f: Failure, path: str) -> Failure:
    """
    A database error as a one-line L{StoreError}; other failures unchanged.
    """
    if f.check(sqlite3.Error):
        text = str(f.value).splitlines()[0] if str(f.value) else type(f.value).__name__
        return Failure(StoreError(f"store {path}: {text}"))
    return f
