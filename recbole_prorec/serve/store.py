"""The pre-computed recommendation store: one SQLite file, one row per user, read in O(1) per lookup.

Tables (schema version `SCHEMA_VERSION`, kept in `meta`):
- `meta(key, value)`: model, dataset, checkpoint sha256, k, split, created time, project version, schema version.
- `recommendations(user, items, scores)`: a user's top-K as JSON lists, best first; ids are the dataset's tokens.
- `histories(user, items)`: the history each row was computed from (JSON list of item tokens), so `refresh` can
  extend it with new interactions.
- `popular(rank, item, count)`: the catalogue's most interacted items, the answer for an unknown user.

A pre-computation writes a complete new file beside the target and renames it into place (`os.replace`), so a
reader never sees a half-written store and a crash leaves the previous store as it was.
"""

import json
import os
import pathlib
import sqlite3
import tempfile
from typing import NamedTuple

SCHEMA_VERSION = 1
TABLES = ("meta", "recommendations", "histories", "popular")


class StoreError(ValueError):
    """A store file that is missing, not SQLite, of another schema version, or lacks a user's row."""


class Recommendations(NamedTuple):
    user: str
    items: list
    scores: list  # None for fallback answers
    fallback: bool  # True: the user is unknown to the store; `items` are the most popular items


def _create_tables(connection):
    connection.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE recommendations (user TEXT PRIMARY KEY, items TEXT NOT NULL, scores TEXT NOT NULL);
        CREATE TABLE histories (user TEXT PRIMARY KEY, items TEXT NOT NULL);
        CREATE TABLE popular (rank INTEGER PRIMARY KEY, item TEXT NOT NULL, count INTEGER NOT NULL);
        """
    )


def _insert_rows(connection, rows):
    """`rows`: iterable of `(user, items, scores, history)`; replaces existing rows of the same users."""
    for user, items, scores, history in rows:
        connection.execute(
            "INSERT OR REPLACE INTO recommendations VALUES (?, ?, ?)", (user, json.dumps(items), json.dumps(scores))
        )
        connection.execute("INSERT OR REPLACE INTO histories VALUES (?, ?)", (user, json.dumps(history)))


def write_store(path, meta, rows, popular):
    """Write a complete store to `path` atomically: a temporary file in the same folder, then `os.replace`.

    `meta` a dict of JSON-ready values, `rows` an iterable of `(user, items, scores, history)` (consumed in
    batches of transactions), `popular` a list of `(item, count)`, most popular first. Returns the path.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        connection = sqlite3.connect(temporary)
        try:
            _create_tables(connection)
            with connection:
                full_meta = {**meta, "schema_version": SCHEMA_VERSION}
                connection.executemany(
                    "INSERT INTO meta VALUES (?, ?)", [(key, json.dumps(value)) for key, value in full_meta.items()]
                )
                connection.executemany(
                    "INSERT INTO popular VALUES (?, ?, ?)",
                    [(rank, item, int(count)) for rank, (item, count) in enumerate(popular)],
                )
                _insert_rows(connection, rows)
        finally:
            connection.close()
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise
    return path


class RecommendationStore:
    """Read access (and `refresh`'s in-place update) to a store written by `write_store`."""

    def __init__(self, path, writable=False):
        self.path = pathlib.Path(path)
        if not self.path.is_file():
            raise StoreError(f"{self.path}: no such store file (create one with `precache`)")
        mode = "rw" if writable else "ro"
        try:
            self.connection = sqlite3.connect(f"file:{self.path}?mode={mode}", uri=True, check_same_thread=False)
            tables = {row[0] for row in self.connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{self.path}: not a recommendation store ({error})") from None
        if set(TABLES) - tables:
            raise StoreError(
                f"{self.path}: not a recommendation store (tables {sorted(tables)}, expected {list(TABLES)})"
            )
        self.meta = {key: json.loads(value) for key, value in self.connection.execute("SELECT key, value FROM meta")}
        if self.meta.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: store schema version {self.meta.get('schema_version')!r}, this version "
                f"reads {SCHEMA_VERSION}: pre-compute it again"
            )
        self.popular = [item for (item,) in self.connection.execute("SELECT item FROM popular ORDER BY rank")]

    def top_k(self, user, k=None):
        """The user's top `k` (default: all stored); an unknown user gets the most popular items, flagged."""
        k = self.meta["k"] if k is None else k
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        row = self.connection.execute(
            "SELECT items, scores FROM recommendations WHERE user = ?", (str(user),)
        ).fetchone()
        if row is None:
            return Recommendations(str(user), self.popular[:k], None, True)
        return Recommendations(str(user), json.loads(row[0])[:k], json.loads(row[1])[:k], False)

    def history(self, user):
        """The item tokens the user's row was computed from ([] for an unknown user)."""
        row = self.connection.execute("SELECT items FROM histories WHERE user = ?", (str(user),)).fetchone()
        return [] if row is None else json.loads(row[0])

    def users(self):
        return [user for (user,) in self.connection.execute("SELECT user FROM recommendations ORDER BY user")]

    def replace_rows(self, rows):
        """Replace (or add) the rows of some users in one transaction; every other row stays as it was."""
        with self.connection:
            _insert_rows(self.connection, rows)

    def close(self):
        self.connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_store(path):
    """A read-only `RecommendationStore`: `open_store("recs.sqlite").top_k("A1YJEY40YUW4SE", 10)`."""
    return RecommendationStore(path)
