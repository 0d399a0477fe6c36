"""
The store's SQLite schema, and bringing a database file up to it.

Every version of the schema is reached by one step from the version before;
a new version adds a step and existing steps never change. The version is
kept in the C{schema_version} table.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Mapping

from relaymesh.reliable.errors import SchemaTooNew, StoreError

#: The schema version this code writes and understands.
SCHEMA_VERSION = 2


def _schema_1(conn: sqlite3.Connection) -> None:
    """
    Create version 1: the outbox and the delivered-id record.
    """
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


def _schema_2(conn: sqlite3.Connection) -> None:
    """
    Version 2: delivered ids numbered in the order they were recorded
    (C{seq}), so that the oldest of an origin can be dropped when it has
    too many.
    """
    conn.execute(
        "CREATE TABLE delivered_v2 ("
        " seq INTEGER PRIMARY KEY,"
        " origin TEXT NOT NULL,"
        " msg_id TEXT NOT NULL,"
        " delivered_at REAL NOT NULL,"
        " UNIQUE (origin, msg_id))"
    )
    conn.execute(
        "INSERT INTO delivered_v2 (origin, msg_id, delivered_at)"
        " SELECT origin, msg_id, delivered_at FROM delivered ORDER BY delivered_at"
    )
    conn.execute("DROP TABLE delivered")
    conn.execute("ALTER TABLE delivered_v2 RENAME TO delivered")
    conn.execute("CREATE INDEX delivered_by_origin ON delivered (origin, seq)")
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
SCHEMA = Schema(SCHEMA_VERSION, {1: _schema_1, 2: _schema_2})


def _current_version(conn: sqlite3.Connection, path: str) -> int:
    """
    The schema version the database is at; 0 for an empty one.

    @raise StoreError: for a database that is not a store, or whose
        C{schema_version} table is damaged.
    """
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "schema_version" not in tables:
        if tables - {"sqlite_sequence"}:
            raise StoreError(f"{path} is an SQLite database but not a relaymesh store")
        return 0
    rows = conn.execute("SELECT version FROM schema_version").fetchall()
    if len(rows) != 1 or type(rows[0][0]) is not int or rows[0][0] < 1:
        raise StoreError(f"{path} has a damaged schema_version table")
    return rows[0][0]


def migrate(conn: sqlite3.Connection, path: str, schema: Schema) -> int:
    """
    Bring the database to C{schema.version} in one transaction.

    @param conn: a connection outside any transaction.
    @param path: the database file, to name in errors.
    @param schema: the schema to bring it to.
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
