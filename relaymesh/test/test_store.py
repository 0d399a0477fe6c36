"""
Tests for L{relaymesh.reliable.store}: the outbox and the delivered-id record in
SQLite, reached through one worker thread.

These run on the real reactor (the worker hands results back through it);
each test closes what it opens, and the crash tests kill their child
process by its own handle.
"""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Generator

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

import relaymesh
from relaymesh.reliable import store as store_module
from relaymesh.reliable.entry import OutboxEntry
from relaymesh.reliable.errors import DuplicateMessage, SchemaTooNew, StoreClosed, StoreError
from relaymesh.reliable.schema import SCHEMA, SCHEMA_VERSION, Schema
from relaymesh.reliable.store import MAX_BATCH, open_store

DAY = 24 * 3600.0

#: Where a child process finds the relaymesh package.
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(relaymesh.__file__)))


def entry(
    msg_id: str, peer_id: str = "beta", created: float = 100.0, deadline: float = 400.0, **kw
) -> OutboxEntry:
    """
    An outbox entry from alpha, with a line that names its id.
    """
    line = kw.pop("line", b'{"id":"%s"}' % msg_id.encode())
    return OutboxEntry(
        msg_id,
        peer_id,
        kw.pop("origin", "alpha"),
        kw.pop("msg_type", "delegate_task"),
        line,
        created,
        deadline,
        **kw,
    )


class StoreTestCase(TestCase):
    """
    Opens stores in temporary files and closes them after each test.
    """

    timeout = 30

    def setUp(self):
        self.path = os.path.abspath(self.mktemp())
        os.makedirs(os.path.dirname(self.path), exist_ok=True)

    @defer.inlineCallbacks
    def open(self, path=None, **kwargs):
        store = yield open_store(path or self.path, reactor, **kwargs)
        self.addCleanup(store.close)
        return store

    def raw(self, path=None) -> sqlite3.Connection:
        """
        A plain connection to the file, to look at it from outside.
        """
        conn = sqlite3.connect(path or self.path, isolation_level=None)
        self.addCleanup(conn.close)
        return conn

    @defer.inlineCallbacks
    def recorded(self, store):
        """
        The C{(origin, msg_id)} pairs in the store file's delivered table,
        once every call made on C{store} so far has taken effect.
        """
        yield store.pending()  # calls take effect in call order
        conn = sqlite3.connect(store.path, isolation_level=None)
        try:
            return set(conn.execute("SELECT origin, msg_id FROM delivered"))
        finally:
            conn.close()


class OutboxTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_put_and_read_back(self):
        """
        An entry comes back from L{Store.pending}, for all destinations or
        its own, field for field, its line as bytes.
        """
        store = yield self.open()
        original = entry("m1", line=b'{"payload":"\xc3\xa9\x00"}', attempts=2)
        yield store.put(original)
        self.assertEqual((yield store.pending()), [original])
        self.assertEqual((yield store.pending(original.peer_id)), [original])

    @defer.inlineCallbacks
    def test_pending_is_in_creation_order(self):
        """
        L{Store.pending} lists entries by creation time, ties in put order,
        for one destination or all.
        """
        store = yield self.open()
        for msg_id, peer, created in [
            ("c", "beta", 3),
            ("a", "gamma", 1),
            ("b2", "beta", 2),
            ("b1", "beta", 2),
            ("d", "gamma", 4),
        ]:
            yield store.put(entry(msg_id, peer, created=created))
        self.assertEqual([e.msg_id for e in (yield store.pending())], ["a", "b2", "b1", "c", "d"])
        self.assertEqual([e.msg_id for e in (yield store.pending("beta"))], ["b2", "b1", "c"])
        self.assertEqual((yield store.pending("delta")), [])

    @defer.inlineCallbacks
    def test_remove(self):
        """
        L{Store.remove} says whether the message was there.
        """
        store = yield self.open()
        yield store.put(entry("m1"))
        self.assertTrue((yield store.remove("m1")))
        self.assertFalse((yield store.remove("m1")))
        self.assertEqual((yield store.pending()), [])

    @defer.inlineCallbacks
    def test_duplicate_id_refused(self):
        """
        A second put with an id already in the outbox fails alone; the other
        calls of its transaction go through.
        """
        store = yield self.open()
        yield store.put(entry("m1"))
        first = store.put(entry("m1", "gamma"))
        second = store.put(entry("m2"))
        e = yield self.assertFailure(first, DuplicateMessage)
        self.assertIn("'m1'", str(e))
        yield second
        self.assertEqual(
            [(e.msg_id, e.peer_id) for e in (yield store.pending())],
            [("m1", "beta"), ("m2", "beta")],
        )

    @defer.inlineCallbacks
    def test_invalid_entries_refused(self):
        """
        An entry with a wrong field is refused before it reaches the
        database, naming the field.
        """
        store = yield self.open()
        cases = {
            "peer_id": entry("m", "no/slashes"),
            "origin": entry("m", origin="_pending"),
            "line": entry("m", line=b""),
            "created": entry("m", created=math.nan),
            "deadline": entry("m", deadline="soon"),
            "attempts": entry("m", attempts=-1),
            "message id": entry(""),
            "msg_type": entry("m", msg_type=""),
        }
        for name, bad in cases.items():
            e = yield self.assertFailure(store.put(bad), StoreError)
            self.assertIn(name, str(e))
            self.assertNotIn("\n", str(e))
        yield self.assertFailure(store.pending("not valid"), StoreError)
        yield self.assertFailure(store.remove(42), StoreError)
        self.assertEqual((yield store.pending()), [])

    @defer.inlineCallbacks
    def test_bump_attempts(self):
        """
        L{Store.bump_attempts} counts sendings, and returns L{None} for an
        unknown message.
        """
        store = yield self.open()
        yield store.put(entry("m1"))
        self.assertEqual((yield store.bump_attempts("m1")), 1)
        self.assertEqual((yield store.bump_attempts("m1")), 2)
        self.assertEqual([e.attempts for e in (yield store.pending())], [2])
        self.assertIsNone((yield store.bump_attempts("nope")))

    @defer.inlineCallbacks
    def test_forget_peer(self):
        """
        L{Store.forget_peer} drops one destination's messages and counts them.
        """
        store = yield self.open()
        for i, peer in enumerate(["beta", "gamma", "beta"]):
            yield store.put(entry(f"m{i}", peer))
        self.assertEqual((yield store.forget_peer("beta")), 2)
        self.assertEqual((yield store.forget_peer("beta")), 0)
        self.assertEqual([e.msg_id for e in (yield store.pending())], ["m1"])


class DeliveredTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_mark_delivered_once(self):
        """
        Marking a message is new the first time only; the record is keyed by
        origin and id together.
        """
        store = yield self.open()
        self.assertEqual((yield self.recorded(store)), set())
        self.assertTrue((yield store.mark_delivered("alpha", "m1", 10.0)))
        self.assertFalse((yield store.mark_delivered("alpha", "m1", 11.0)))
        self.assertEqual((yield self.recorded(store)), {("alpha", "m1")})
        self.assertTrue((yield store.mark_delivered("gamma", "m1", 12.0)))
        self.assertEqual((yield self.recorded(store)), {("alpha", "m1"), ("gamma", "m1")})

    @defer.inlineCallbacks
    def test_same_turn_duplicates(self):
        """
        Two marks of one message in the same reactor turn: exactly one is new.
        """
        store = yield self.open()
        results = yield defer.gatherResults(
            [store.mark_delivered("alpha", "m1", 10.0) for _ in range(5)]
        )
        self.assertEqual(results, [True, False, False, False, False])

    @defer.inlineCallbacks
    def test_invalid_arguments(self):
        """
        An invalid origin, id or time is refused with a one-line error.
        """
        store = yield self.open()
        for args in [
            ("", "m", 1.0),
            ("alpha", "", 1.0),
            ("alpha", "m", math.nan),
            ("a b", "m", 1.0),
        ]:
            e = yield self.assertFailure(store.mark_delivered(*args), StoreError)
            self.assertNotIn("\n", str(e))
        yield self.assertFailure(store.mark_delivered("alpha", None, 1.0), StoreError)

    @defer.inlineCallbacks
    def test_prune(self):
        """
        L{Store.prune_delivered} forgets ids older than the retention window
        (7 days by default) and keeps the rest.
        """
        store = yield self.open()
        self.assertEqual(store.retention, 7 * DAY)
        yield store.mark_delivered("alpha", "old", 0.0)
        yield store.mark_delivered("alpha", "recent", 1 * DAY)
        self.assertEqual((yield store.prune_delivered(7 * DAY + 60)), 1)
        self.assertEqual((yield self.recorded(store)), {("alpha", "recent")})
        self.assertEqual((yield store.prune_delivered(7 * DAY + 60)), 0)

    @defer.inlineCallbacks
    def test_prune_window_is_configurable(self):
        """
        The retention window is a parameter of L{open_store}.
        """
        store = yield self.open(retention=60.0)
        yield store.mark_delivered("alpha", "m1", 0.0)
        self.assertEqual((yield store.prune_delivered(61.0)), 1)

    @defer.inlineCallbacks
    def test_pruned_automatically(self):
        """
        Every L{store_module.PRUNE_EVERY} marks, old ids are pruned, so the
        table stays bounded without anyone calling L{Store.prune_delivered}.
        """
        self.patch(store_module, "PRUNE_EVERY", 10)
        store = yield self.open()
        yield store.mark_delivered("alpha", "ancient", 0.0)
        for i in range(9):
            yield store.mark_delivered("alpha", f"m{i}", 8 * DAY)
        self.assertEqual(len((yield self.recorded(store))), 9)
        for i in range(100):
            yield store.mark_delivered("alpha", f"n{i}", 8 * DAY + i)
        self.assertEqual(len((yield self.recorded(store))), 109)
        for i in range(10):
            yield store.mark_delivered("alpha", f"p{i}", 20 * DAY)
        self.assertEqual(len((yield self.recorded(store))), 10)


class DeliveredBoundTests(StoreTestCase):
    """
    What one origin can make the delivered record keep is bounded: ids of
    at most 128 characters, at most L{Store.max_delivered} of them.
    """

    @defer.inlineCallbacks
    def test_long_id_refused(self):
        """
        An id over 128 characters is refused with a one-line error naming
        the limit, and nothing is recorded.
        """
        store = yield self.open()
        e = yield self.assertFailure(store.mark_delivered("alpha", "m" * 129, 1.0), StoreError)
        self.assertIn("at most 128", str(e))
        self.assertTrue((yield store.mark_delivered("alpha", "m" * 128, 1.0)))
        self.assertEqual((yield self.recorded(store)), {("alpha", "m" * 128)})

    @defer.inlineCallbacks
    def test_oldest_dropped(self):
        """
        Beyond C{max_delivered} ids of one origin, recording one more drops
        that origin's oldest; other origins keep theirs.
        """
        self.assertEqual(store_module.MAX_DELIVERED_PER_ORIGIN, 10_000)
        store = yield self.open(max_delivered=3)
        yield store.mark_delivered("gamma", "g0", 0.0)
        for i in range(5):
            self.assertTrue((yield store.mark_delivered("alpha", f"a{i}", 1.0)))
        self.assertEqual(
            (yield self.recorded(store)), {("gamma", "g0"), ("alpha", "a2"), ("alpha", "a3"), ("alpha", "a4")}
        )
        self.assertEqual((yield store.delivered_count("alpha")), 3)
        self.assertEqual((yield store.delivered_count()), 4)
        # a copy of a kept id is still known; an id already dropped is not
        self.assertFalse((yield store.mark_delivered("alpha", "a4", 2.0)))
        self.assertTrue((yield store.mark_delivered("alpha", "a0", 2.0)))
        self.assertEqual((yield store.delivered_count("alpha")), 3)

    @defer.inlineCallbacks
    def test_bound_kept_across_reopening_and_pruning(self):
        """
        The count per origin is read again from the file after a restart
        and after a pruning, so the bound holds across both.
        """
        store = yield self.open(max_delivered=4, retention=60.0)
        for i in range(4):
            yield store.mark_delivered("alpha", f"a{i}", float(i))
        yield store.close()
        store = yield self.open(max_delivered=4, retention=60.0)
        yield store.mark_delivered("alpha", "a4", 10.0)
        self.assertEqual((yield store.delivered_count("alpha")), 4)
        self.assertEqual((yield store.prune_delivered(62.5)), 2)  # a1 and a2
        for i in range(5, 9):
            yield store.mark_delivered("alpha", f"a{i}", 70.0)
        self.assertEqual(
            (yield self.recorded(store)), {("alpha", f"a{i}") for i in range(5, 9)}
        )

    @defer.inlineCallbacks
    def test_flood_of_long_fresh_ids(self):
        """
        A peer sending reliable messages with ever new 500-character ids
        leaves nothing behind; with ids at the limit it leaves at most
        C{max_delivered} rows, and the file stops growing.
        """
        store = yield self.open(max_delivered=200)
        refused = yield defer.DeferredList(
            [store.mark_delivered("carol", f"{i:06d}" + "x" * 494, 1.0) for i in range(300)],
            consumeErrors=True,
        )
        self.assertEqual({ok for ok, _ in refused}, {False})
        self.assertEqual((yield store.delivered_count()), 0)
        for burst in range(4):
            yield defer.gatherResults(
                [
                    store.mark_delivered("carol", f"{burst}-{i:06d}".ljust(128, "y"), 1.0)
                    for i in range(300)
                ]
            )
            self.assertEqual((yield store.delivered_count("carol")), 200)
            if burst == 1:
                size = os.path.getsize(self.path) + os.path.getsize(self.path + "-wal")
        yield store.close()
        conn = self.raw()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.assertLessEqual(os.path.getsize(self.path), size)


class MigrationTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_version_1_delivered_kept(self):
        """
        A store of schema 1 opens at schema 2 with its delivered ids and its
        outbox, numbered oldest first, and the bound applies from then on.
        """
        v1 = Schema(1, {1: SCHEMA.migrations[1]})
        store = yield self.open(schema=v1)
        yield store.put(entry("m1"))
        for i, at in enumerate([5.0, 1.0, 3.0]):
            yield store.mark_delivered("alpha", f"a{i}", at)
        yield store.close()
        store = yield self.open(max_delivered=2)
        self.assertEqual((yield store.pending()), [entry("m1")])
        self.assertEqual(
            self.raw().execute("SELECT msg_id FROM delivered ORDER BY seq").fetchall(),
            [("a1",), ("a2",), ("a0",)],
        )
        self.assertFalse((yield store.mark_delivered("alpha", "a0", 9.0)))
        self.assertTrue((yield store.mark_delivered("alpha", "a3", 9.0)))
        self.assertEqual(
            (yield self.recorded(store)), {("alpha", "a0"), ("alpha", "a3")}
        )


class DurabilityTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_survives_close_and_reopen(self):
        """
        The outbox, attempt counts and delivered ids are all there after the
        store is closed and opened again.
        """
        store = yield self.open()
        yield store.put(entry("m1", created=1))
        yield store.put(entry("m2", created=2))
        yield store.bump_attempts("m2")
        yield store.remove("m1")
        yield store.mark_delivered("gamma", "x1", 5.0)
        yield store.close()
        self.assertTrue(store.closed)

        again = yield self.open()
        self.assertEqual((yield again.pending()), [entry("m2", created=2, attempts=1)])
        self.assertEqual((yield self.recorded(again)), {("gamma", "x1")})
        self.assertFalse((yield again.mark_delivered("gamma", "x1", 6.0)))

    @defer.inlineCallbacks
    def test_close_finishes_earlier_calls(self):
        """
        Calls made before L{Store.close} in the same turn still complete;
        calls after it fail with L{StoreClosed}; closing twice is harmless.
        """
        store = yield self.open()
        put = store.put(entry("m1"))
        closed = store.close()
        closed_again = store.close()
        yield put
        yield closed
        yield closed_again
        yield store.close()
        e = yield self.assertFailure(store.put(entry("m2")), StoreClosed)
        self.assertIn("closed", str(e))
        again = yield self.open()
        self.assertEqual(len((yield again.pending())), 1)

    @defer.inlineCallbacks
    def test_wal_and_full_sync(self):
        """
        The file is in write-ahead-log mode and commits are flushed to disk
        (C{synchronous=FULL}); the file is private to its owner.
        """
        store = yield self.open()
        synchronous = yield store._call(
            lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0]
        )
        self.assertEqual(synchronous, 2)  # FULL
        self.assertEqual(self.raw().execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    @defer.inlineCallbacks
    def test_worker_thread(self):
        """
        The database is used from one worker thread, never the reactor's.
        """
        store = yield self.open()
        idents = yield defer.gatherResults(
            [store._call(lambda conn: threading.get_ident()) for _ in range(3)]
        )
        self.assertNotIn(threading.get_ident(), idents)
        self.assertEqual(len(set(idents)), 1)


class SchemaTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_version_recorded(self):
        """
        A new store records the schema version in C{schema_version}.
        """
        store = yield self.open()
        yield store.close()
        self.assertEqual(
            self.raw().execute("SELECT version FROM schema_version").fetchall(), [(SCHEMA_VERSION,)]
        )

    @defer.inlineCallbacks
    def test_newer_schema_refused(self):
        """
        A file from a newer relaymesh is refused with one clear line, and
        left as it is.
        """
        store = yield self.open()
        yield store.close()
        self.raw().execute("UPDATE schema_version SET version = 99")
        e = yield self.assertFailure(open_store(self.path, reactor), SchemaTooNew)
        self.assertEqual(
            str(e),
            f"{self.path} has schema version 99, newer than version {SCHEMA_VERSION} "
            "that this relaymesh understands; upgrade relaymesh",
        )
        self.assertEqual(
            self.raw().execute("SELECT version FROM schema_version").fetchall(), [(99,)]
        )

    @defer.inlineCallbacks
    def test_migration_hook(self):
        """
        Opening with a newer L{Schema} runs the new steps once, in a
        transaction, and records the version; the older code then refuses it.
        """
        calls = []

        def add_priority(conn):
            calls.append(1)
            conn.execute("ALTER TABLE outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")

        store = yield self.open()
        yield store.put(entry("m1"))
        yield store.close()
        newer = SCHEMA_VERSION + 1
        v_next = Schema(newer, {**SCHEMA.migrations, newer: add_priority})
        store = yield self.open(schema=v_next)
        self.assertEqual((yield store.pending()), [entry("m1")])
        yield store.close()
        store = yield self.open(schema=v_next)
        yield store.close()
        self.assertEqual(calls, [1])
        self.assertEqual(
            self.raw().execute("SELECT version FROM schema_version").fetchall(), [(newer,)]
        )
        yield self.assertFailure(open_store(self.path, reactor), SchemaTooNew)

    @defer.inlineCallbacks
    def test_failed_migration_rolls_back(self):
        """
        A migration step that fails leaves the file at its old version.
        """

        def broken(conn):
            conn.execute("ALTER TABLE outbox ADD COLUMN half INTEGER")
            raise sqlite3.OperationalError("step two went wrong")

        store = yield self.open()
        yield store.close()
        newer = SCHEMA_VERSION + 1
        e = yield self.assertFailure(
            open_store(
                self.path, reactor, schema=Schema(newer, {**SCHEMA.migrations, newer: broken})
            ),
            StoreError,
        )
        self.assertIn("step two went wrong", str(e))
        self.assertEqual(
            self.raw().execute("SELECT version FROM schema_version").fetchall(),
            [(SCHEMA_VERSION,)],
        )
        columns = [row[1] for row in self.raw().execute("PRAGMA table_info(outbox)")]
        self.assertNotIn("half", columns)

    def test_schema_needs_every_step(self):
        """
        A L{Schema} must have one migration per version from 1.
        """
        self.assertRaises(ValueError, Schema, 3, {1: None, 3: None})

    @defer.inlineCallbacks
    def test_not_a_database(self):
        """
        A file that is not SQLite is refused with a one-line L{StoreError}.
        """
        with open(self.path, "wb") as f:
            f.write(b"this is not a database, just some text" * 100)
        e = yield self.assertFailure(open_store(self.path, reactor), StoreError)
        self.assertIn(self.path, str(e))
        self.assertNotIn("\n", str(e))

    @defer.inlineCallbacks
    def test_foreign_database(self):
        """
        Another application's SQLite file is not taken over.
        """
        self.raw().execute("CREATE TABLE songs (title TEXT)")
        e = yield self.assertFailure(open_store(self.path, reactor), StoreError)
        self.assertIn("not a relaymesh store", str(e))


class OrderingAndBatchingTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_calls_take_effect_in_order(self):
        """
        Calls made without waiting for each other take effect in call order,
        reads included.
        """
        store = yield self.open()
        results = yield defer.gatherResults(
            [
                store.put(entry("a", created=1)),
                store.put(entry("b", created=2)),
                store.pending(),
                store.remove("a"),
                store.bump_attempts("b"),
                store.pending(),
                store.mark_delivered("alpha", "a", 3.0),
                store.mark_delivered("alpha", "a", 4.0),
            ]
        )
        self.assertEqual([e.msg_id for e in results[2]], ["a", "b"])
        self.assertTrue(results[3])
        self.assertEqual(results[4], 1)
        self.assertEqual(results[5], [entry("b", created=2, attempts=1)])
        self.assertEqual(results[6:], [True, False])

    @defer.inlineCallbacks
    def test_order_across_turns(self):
        """
        Calls made in later turns, while earlier ones are still in the
        worker, come after them.
        """
        store = yield self.open()
        seen = []
        first = store.put(entry("a"))
        first.addCallback(lambda _: seen.append("put a"))
        yield task.deferLater(reactor, 0, lambda: None)
        second = store.remove("a")
        second.addCallback(lambda removed: seen.append(("remove a", removed)))
        yield defer.gatherResults([first, second])
        self.assertEqual(seen, ["put a", ("remove a", True)])

    @defer.inlineCallbacks
    def test_one_transaction_per_turn(self):
        """
        A burst of puts made in one reactor turn is written in one
        transaction; an unbatched store commits each on its own.
        """
        store = yield self.open()
        before = store.transactions
        yield defer.gatherResults([store.put(entry(f"m{i}")) for i in range(200)])
        self.assertEqual(store.transactions - before, 1)

        single = yield self.open(path=self.path + "-single", batch=False)
        before = single.transactions
        yield defer.gatherResults([single.put(entry(f"m{i}")) for i in range(20)])
        self.assertEqual(single.transactions - before, 20)

    @defer.inlineCallbacks
    def test_batches_are_bounded(self):
        """
        A burst longer than L{MAX_BATCH} calls is split into transactions
        of at most that many.
        """
        store = yield self.open()
        before = store.transactions
        count = 2 * MAX_BATCH + 10
        yield defer.gatherResults([store.put(entry(f"m{i}", created=i)) for i in range(count)])
        self.assertEqual(store.transactions - before, 3)
        self.assertEqual(
            [e.msg_id for e in (yield store.pending())], [f"m{i}" for i in range(count)]
        )

    @defer.inlineCallbacks
    def test_database_error_fails_the_whole_transaction(self):
        """
        A database error other than a broken constraint undoes the whole
        transaction and fails every call in it, with a one-line
        L{StoreError}; the store keeps working.
        """
        store = yield self.open()

        def broken(conn):
            raise sqlite3.OperationalError("disk I/O error")

        put = store.put(entry("m1"))
        bad = store._call(broken)
        mark = store.mark_delivered("alpha", "m1", 1.0)
        for d in (put, bad, mark):
            e = yield self.assertFailure(d, StoreError)
            self.assertIn("disk I/O error", str(e))
        self.assertEqual((yield store.pending()), [])
        self.assertTrue((yield store.mark_delivered("alpha", "m1", 20.0)))


CHILD_OUTBOX = r"""
import sys
from twisted.internet import defer, task
from relaymesh.reliable.store import OutboxEntry, open_store

path, total, in_flight = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def main(reactor):
    state = {"next": 0, "busy": 0}
    def top_up(store):
        while state["next"] < total and state["busy"] < in_flight:
            n = state["next"]
            state["next"] += 1
            state["busy"] += 1
            msg_id = "m%07d" % n
            d = store.put(OutboxEntry(msg_id, "beta", "alpha", "delegate_task",
                                      b'{"id":"%s"}' % msg_id.encode(), float(n), 1e12))
            d.addCallback(accepted, msg_id, store)
    def accepted(_, msg_id, store):
        sys.stdout.write(msg_id + "\n")
        sys.stdout.flush()
        state["busy"] -= 1
        top_up(store)
    d = open_store(path, reactor)
    d.addCallback(top_up)
    return defer.Deferred()  # runs until killed

task.react(main)
"""

CHILD_DELIVERED = r"""
import sys
from twisted.internet import defer, task
from relaymesh.reliable.store import open_store

path, total, in_flight = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def main(reactor):
    state = {"next": 0, "busy": 0}
    def top_up(store):
        while state["next"] < total and state["busy"] < in_flight:
            n = state["next"]
            state["next"] += 1
            state["busy"] += 1
            msg_id = "m%07d" % n
            d = store.mark_delivered("alpha", msg_id, 1000.0)
            d.addCallback(marked, msg_id, store)
    def marked(new, msg_id, store):
        if new:  # what the application is handed
            sys.stdout.write(msg_id + "\n")
            sys.stdout.flush()
        state["busy"] -= 1
        top_up(store)
    d = open_store(path, reactor)
    d.addCallback(top_up)
    return defer.Deferred()  # runs until killed

task.react(main)
"""


class CrashTests(StoreTestCase):
    """
    A child process writes to a store and is killed with SIGKILL mid-stream.
    """

    #: Calls the child keeps in flight.
    IN_FLIGHT = 64

    #: Ids the child reports before it is killed.
    KILL_AFTER = 400

    #: Seconds a child may take to report them.
    CHILD_DEADLINE = 20.0

    @defer.inlineCallbacks
    def run_and_kill(
        self, script: str, kill_after: int
    ) -> Generator[defer.Deferred[object], object, list[str]]:
        """
        Run C{script} against the store, kill it with SIGKILL once it has
        printed C{kill_after} lines, and return every complete line it printed.
        """
        env = dict(
            os.environ, PYTHONPATH=PROJECT_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", script, self.path, "10000000", str(self.IN_FLIGHT)],
            stdout=subprocess.PIPE,
            env=env,
        )
        self.addCleanup(self._reap, proc)
        stdout = proc.stdout
        assert stdout is not None
        fd = stdout.fileno()
        os.set_blocking(fd, False)
        output = bytearray()
        deadline = reactor.seconds() + self.CHILD_DEADLINE

        def read() -> None:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    return
                if not chunk:
                    return
                output.extend(chunk)

        while output.count(b"\n") < kill_after:
            read()
            if proc.poll() is not None:
                self.fail(f"child exited early with status {proc.returncode}")
            if reactor.seconds() > deadline:
                lines = output.count(b"\n")
                self.fail(f"child printed {lines} lines in {self.CHILD_DEADLINE} s")
            yield task.deferLater(reactor, 0.005, lambda: None)
        proc.send_signal(signal.SIGKILL)
        yield self._wait_exit(proc)
        self.assertEqual(proc.returncode, -signal.SIGKILL)
        os.set_blocking(fd, True)
        output.extend(stdout.read())
        stdout.close()
        complete = bytes(output).split(b"\n")[:-1]
        return [line.decode() for line in complete]

    @defer.inlineCallbacks
    def _wait_exit(self, proc):
        deadline = reactor.seconds() + 10
        while proc.poll() is None:
            if reactor.seconds() > deadline:
                self.fail("killed child did not exit")
            yield task.deferLater(reactor, 0.005, lambda: None)

    def _reap(self, proc):
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None and not proc.stdout.closed:
            proc.stdout.close()

    @defer.inlineCallbacks
    def test_accepted_puts_survive_sigkill(self):
        """
        Every entry whose put the child saw accepted is in the outbox after
        the child is killed; what is there is exactly a prefix of what it
        put, each entry intact.
        """
        accepted = yield self.run_and_kill(CHILD_OUTBOX, self.KILL_AFTER)
        self.assertGreaterEqual(len(accepted), self.KILL_AFTER)
        store = yield self.open()
        stored = yield store.pending()
        stored_ids = [e.msg_id for e in stored]
        self.assertEqual(stored_ids, [f"m{n:07d}" for n in range(len(stored_ids))])
        self.assertEqual(set(accepted) - set(stored_ids), set())
        self.assertEqual(accepted, stored_ids[: len(accepted)])
        for e in stored:
            self.assertEqual(e.line, b'{"id":"%s"}' % e.msg_id.encode())

    @defer.inlineCallbacks
    def test_delivered_ids_survive_sigkill(self):
        """
        A receiver killed mid-stream and started again delivers no message
        twice: every id it delivered before is recorded, and the second run
        delivers only ids the first did not.
        """
        first = yield self.run_and_kill(CHILD_DELIVERED, self.KILL_AFTER)
        second = yield self.run_and_kill(CHILD_DELIVERED, self.KILL_AFTER)
        self.assertEqual(len(set(first)), len(first))
        self.assertEqual(set(first) & set(second), set())
        store = yield self.open()
        recorded = yield self.recorded(store)
        for msg_id in first + second:
            self.assertIn(("alpha", msg_id), recorded)
        # Recorded but never handed over: only what the kill caught between
        # a commit and the callbacks it fires, at most one batch per run.
        self.assertLessEqual(len(recorded) - len(first) - len(second), 2 * self.IN_FLIGHT)
