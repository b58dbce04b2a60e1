"""The pre-computed recommendation store: one SQLite file, one row per user, read in O(1) per lookup.

Tables (schema version `SCHEMA_VERSION`, kept in `meta`):
- `meta(key, value)`: model, dataset, checkpoint sha256, data sha256, overrides, k, split, users, created time,
  project version, schema version (JSON values).
- `recommendations(user, items, scores)`: a user's top-K as JSON lists, best first; ids are the dataset's tokens.
- `histories(user, items)`: the history each row was computed from (JSON list of item tokens), so `refresh` can
  extend it with new interactions.
- `popular(rank, item, count)`: the catalogue's most interacted items, the answer for an unknown user.
- `refreshes(sha256, file, applied, users, skipped_items)`: every `.inter` file `refresh` applied, so the same
  interactions are never appended twice.

The file is never modified in place. A pre-computation writes a complete new file beside the target and renames
it into place (`os.replace`); a refresh copies the store, updates the copy and renames it into place the same way.
We chose copy-and-swap over an in-place transaction with a recovering journal mode because readers open the store
read-only (a server may run as another user, on a read-only mount): a rollback journal left by a killed writer is
"hot" and a read-only reader cannot roll it back, so every lookup fails; WAL recovery likewise needs write access to
the `-shm` file. With copy-and-swap a writer killed at any moment leaves the previous store intact and only a
temporary file, which the next writer removes. The cost, a copy of the store per refresh, is paid by the batch job,
not by readers; readers notice a replaced file (`RecommendationStore.replaced`) and reopen it.

Writers (precache, refresh) hold an exclusive `flock` on `.<store>.lock` beside the store for their whole run, so
two never interleave (a refresh's histories are read from the same file it replaces); the kernel releases the lock
when a writer dies, even by SIGKILL.
"""

import contextlib
import fcntl
import json
import operator
import os
import pathlib
import re
import secrets
import sqlite3
import stat
from typing import NamedTuple

SCHEMA_VERSION = 2
TABLES = ("meta", "recommendations", "histories", "popular", "refreshes")


class StoreError(ValueError):
    """A store file that is missing, not SQLite, of another schema version, or lacks a user's row."""


def positive_int(name, value, error=ValueError):
    """`value` as an int >= 1, or `error` naming the option (counts of items, users, batch rows)."""
    try:
        number = operator.index(value)
    except TypeError:
        raise error(f"{name} must be an integer >= 1, got {value!r}") from None
    if number < 1:
        raise error(f"{name} must be an integer >= 1, got {number}")
    return number


class Recommendations(NamedTuple):
    user: str
    items: list
    scores: list  # None for fallback answers
    fallback: bool  # True: the user is unknown to the store; `items` are the most popular items


def sqlite_uri(path, mode):
    """A SQLite URI for `path`: percent-encoded, so `?`, `#` and `%` in a file name stay part of the name."""
    return f"{pathlib.Path(path).absolute().as_uri()}?mode={mode}"


def _temporary_name(path):
    return path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"


def stale_temporaries(path):
    """Temporary files of writers of the store at `path` (`.<name>.<16 hex>.tmp` and its `-journal`)."""
    path = pathlib.Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{16}}\.tmp(-journal)?")
    if not path.parent.is_dir():
        return []
    return [entry for entry in path.parent.iterdir() if pattern.fullmatch(entry.name)]


@contextlib.contextmanager
def store_lock(path):
    """Hold the writers' lock of the store at `path`, or raise `StoreError` naming the process that holds it.

    Refuses rather than waits: a precache can run for hours, and a cron job is better told than stuck. While held,
    temporary files beside the store can only be left by dead writers, so they are removed here.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.parent / f".{path.name}.lock"
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "?"
            raise StoreError(
                f"{path} is being written by another precache or refresh (process {holder}, lock {lock_path}): "
                "run this one when it has finished"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        for entry in stale_temporaries(path):
            entry.unlink(missing_ok=True)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _create_tables(connection):
    connection.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE recommendations (user TEXT PRIMARY KEY, items TEXT NOT NULL, scores TEXT NOT NULL);
        CREATE TABLE histories (user TEXT PRIMARY KEY, items TEXT NOT NULL);
        CREATE TABLE popular (rank INTEGER PRIMARY KEY, item TEXT NOT NULL, count INTEGER NOT NULL);
        CREATE TABLE refreshes (sha256 TEXT PRIMARY KEY, file TEXT NOT NULL, applied TEXT NOT NULL,
                                users INTEGER NOT NULL, skipped_items INTEGER NOT NULL);
        """
    )


def _insert_rows(connection, rows):
    """`rows`: iterable of `(user, items, scores, history)`; replaces existing rows of the same users."""
    for user, items, scores, history in rows:
        connection.execute(
            "INSERT OR REPLACE INTO recommendations VALUES (?, ?, ?)", (user, json.dumps(items), json.dumps(scores))
        )
        connection.execute("INSERT OR REPLACE INTO histories VALUES (?, ?)", (user, json.dumps(history)))


def _set_meta(connection, meta):
    connection.executemany(
        "INSERT OR REPLACE INTO meta VALUES (?, ?)", [(key, json.dumps(value)) for key, value in meta.items()]
    )


def _open_for_writing(temporary):
    """A connection to a private temporary file: no journal file (on failure the file is deleted, not rolled
    back), no syncs until the single fsync before the rename."""
    connection = sqlite3.connect(temporary)
    connection.execute("PRAGMA journal_mode = MEMORY")
    connection.execute("PRAGMA synchronous = OFF")
    return connection


def _swap_in(temporary, path):
    """fsync `temporary`, rename it onto `path` and fsync the folder, so the rename survives a power cut."""
    with open(temporary, "rb") as f:
        os.fsync(f.fileno())
    os.replace(temporary, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


@contextlib.contextmanager
def _replacement(path):
    """A new temporary file beside `path` (umask-respecting mode, or the mode of the store it replaces), removed
    unless the body renames it. Callers hold `store_lock(path)`."""
    temporary = _temporary_name(path)
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies, unlike mkstemp
    try:
        if path.is_file():
            os.chmod(temporary, stat.S_IMODE(path.stat().st_mode))
        yield temporary
    except BaseException:
        temporary.unlink(missing_ok=True)
        pathlib.Path(f"{temporary}-journal").unlink(missing_ok=True)
        raise


def write_store(path, meta, rows, popular):
    """Write a complete store to `path` atomically: a temporary file in the same folder, then `os.replace`.

    `meta` a dict of JSON-ready values, `rows` an iterable of `(user, items, scores, history)` (consumed in
    one transaction), `popular` a list of `(item, count)`, most popular first. Returns the path. The caller holds
    `store_lock(path)` when other writers may run (precache does); a test or a one-off script need not.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _replacement(path) as temporary:
        connection = _open_for_writing(temporary)
        try:
            _create_tables(connection)
            with connection:
                _set_meta(connection, {**meta, "schema_version": SCHEMA_VERSION})
                connection.executemany(
                    "INSERT INTO popular VALUES (?, ?, ?)",
                    [(rank, item, int(count)) for rank, (item, count) in enumerate(popular)],
                )
                _insert_rows(connection, rows)
        finally:
            connection.close()
        _swap_in(temporary, path)
    return path


class StoreUpdate:
    """A writable copy of a store, inside one transaction: what `update_store` hands its caller."""

    def __init__(self, path, connection):
        self.path, self.connection = path, connection
        self.meta = {key: json.loads(value) for key, value in connection.execute("SELECT key, value FROM meta")}

    def history(self, user):
        row = self.connection.execute("SELECT items FROM histories WHERE user = ?", (str(user),)).fetchone()
        return [] if row is None else json.loads(row[0])

    def applied(self, sha256):
        """`(file, applied time)` of an earlier refresh with this digest, or None."""
        return self.connection.execute("SELECT file, applied FROM refreshes WHERE sha256 = ?", (sha256,)).fetchone()

    def record_refresh(self, sha256, file, applied, users, skipped_items):
        self.connection.execute(
            "INSERT INTO refreshes VALUES (?, ?, ?, ?, ?)", (sha256, str(file), applied, users, skipped_items)
        )

    def replace_rows(self, rows):
        """Replace (or add) the rows of some users; every other row stays as it was."""
        _insert_rows(self.connection, rows)

    def update_meta(self, **values):
        self.meta.update(values)
        _set_meta(self.connection, values)

    def count_users(self):
        return self.connection.execute("SELECT COUNT(*) FROM recommendations").fetchone()[0]


@contextlib.contextmanager
def update_store(path):
    """Yield a `StoreUpdate` of a copy of the store at `path`; on a normal exit the copy replaces the store.

    Holds `store_lock(path)` throughout, so the histories the caller reads are those of the file it replaces. The
    store is checked as a reader would (`RecommendationStore`) first.
    """
    path = pathlib.Path(path)
    with store_lock(path):
        RecommendationStore(path).close()
        with _replacement(path) as temporary:
            source = sqlite3.connect(sqlite_uri(path, "ro"), uri=True)
            connection = _open_for_writing(temporary)
            try:
                source.backup(connection)
                with connection:
                    yield StoreUpdate(path, connection)
            finally:
                source.close()
                connection.close()
            _swap_in(temporary, path)


def _identity(path):
    """What changes when the file at `path` is replaced or rewritten; None when there is no file."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino, status.st_mtime_ns, status.st_size


class RecommendationStore:
    """Read-only access to a store written by `write_store`. One connection: use it from one thread."""

    def __init__(self, path):
        self.path = pathlib.Path(path)
        self.identity = _identity(self.path)  # before connecting: a replacement in between only reopens once more
        if not self.path.is_file():
            raise StoreError(f"{self.path}: no such store file (create one with `precache`)")
        self.connection = None
        try:
            self.connection = sqlite3.connect(sqlite_uri(self.path, "ro"), uri=True)
            tables = {row[0] for row in self.connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "meta" in tables:
                self.meta = {key: json.loads(value) for key, value in self.connection.execute("SELECT * FROM meta")}
                if self.meta.get("schema_version") != SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path}: store schema version {self.meta.get('schema_version')!r}, this version "
                        f"reads {SCHEMA_VERSION}: pre-compute it again"
                    )
            if set(TABLES) - tables:
                raise StoreError(
                    f"{self.path}: not a recommendation store (tables {sorted(tables)}, expected {list(TABLES)})"
                )
            self.popular = [item for (item,) in self.connection.execute("SELECT item FROM popular ORDER BY rank")]
        except (sqlite3.Error, ValueError) as error:
            if self.connection is not None:
                self.connection.close()
            if isinstance(error, StoreError):
                raise
            raise StoreError(f"{self.path}: not a recommendation store ({error})") from None

    def replaced(self):
        """Whether the file at `path` is no longer the one this store opened (a new precache or refresh)."""
        return _identity(self.path) != self.identity

    def top_k(self, user, k=None):
        """The user's top `k` (default: all stored); an unknown user gets the most popular items, flagged."""
        k = positive_int("k", self.meta["k"] if k is None else k)
        row = self.connection.execute(
            "SELECT items, scores FROM recommendations WHERE user = ?", (str(user),)
        ).fetchone()
        if row is None:
            return Recommendations(str(user), self.popular[:k], None, True)
        try:
            items, scores = json.loads(row[0]), json.loads(row[1])
        except ValueError as error:
            raise StoreError(f"{self.path}: the row of user {str(user)!r} is not a JSON list ({error})") from None
        return Recommendations(str(user), items[:k], scores[:k], False)

    def history(self, user):
        """The item tokens the user's row was computed from ([] for an unknown user)."""
        row = self.connection.execute("SELECT items FROM histories WHERE user = ?", (str(user),)).fetchone()
        return [] if row is None else json.loads(row[0])

    def users(self):
        return [user for (user,) in self.connection.execute("SELECT user FROM recommendations ORDER BY user")]

    def close(self):
        self.connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_store(path):
    """A read-only `RecommendationStore`: `open_store("recs.sqlite").top_k("A1YJEY40YUW4SE", 10)`."""
    return RecommendationStore(path)
