"""SQLite stores under the state folder: safe for many threads and processes at once.

One database file (`state.db`) in WAL mode with a long busy timeout; every write is a
single statement (an upsert or a conditional update with `RETURNING`) or, for a batch of
checkpoints, a `BEGIN IMMEDIATE` transaction of upserts, so no transaction is ever upgraded
from read to write and "database is locked" cannot surface under load. Each thread keeps its
own connection.

Which `running` runs are alive is not a column: the process running a run holds an exclusive
`flock` on `locks/<run id>.lock` in the state folder until it saves the run's final document,
and the kernel drops that lock when the process dies, however it dies. A `running` row whose
lock nobody holds is read as `crashed`.

A state folder that cannot be used as it is (a damaged database, a file or folder of the wrong
kind, modes that keep this user out, a full disk) gives a `StateFolderError` that names the
entry, what is wrong and the fix, whichever store meets it (`Database`, `folder_error`).
Nothing in the folder is moved, repaired or deleted to recover; only what others may do with
the folder and the database is taken away, as when they are made.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import os
import platform
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

from orchestrator.errors import OrchestratorError, StateFolderError
from orchestrator.stores.base import StateWrite, Versioned, iso_time

SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    namespace TEXT NOT NULL, key TEXT NOT NULL, value TEXT, version INTEGER NOT NULL,
    expires_at REAL, PRIMARY KEY (namespace, key));
CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at REAL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, pipeline_id TEXT, execution_id TEXT,
    logged_at REAL NOT NULL, entry TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_by_pipeline ON audit (pipeline_id, id);
CREATE INDEX IF NOT EXISTS audit_by_run ON audit (execution_id, id);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, status TEXT NOT NULL,
    started_at REAL NOT NULL, updated_at REAL NOT NULL, document TEXT NOT NULL, resume TEXT);
CREATE INDEX IF NOT EXISTS runs_by_pipeline ON runs (pipeline, started_at);
CREATE TABLE IF NOT EXISTS run_tasks (
    run_id TEXT NOT NULL, task TEXT NOT NULL, outcome TEXT NOT NULL, PRIMARY KEY (run_id, task));
CREATE TABLE IF NOT EXISTS telemetry (
    run_id TEXT NOT NULL, entry_id TEXT NOT NULL, entry TEXT NOT NULL, PRIMARY KEY (run_id, entry_id));
"""


class Database:
    """The state folder's SQLite file, with one connection per thread.

    Every error that says the folder or one of its files cannot be used as it is (see
    `folder_error`) is a `StateFolderError`, whichever store meets it and however it uses its
    connection: connections and their cursors are `_Connection` and `_Cursor`.
    """

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _keep_private(path.parent)
        except OSError as error:
            raise folder_error(error, path) from error
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        _when_unlocked(lambda: self.connection().executescript(SCHEMA))
        _when_unlocked(lambda: _add_run_summaries(self.connection()))
        try:
            _keep_private(path)
        except OSError as error:
            raise folder_error(error, path) from error

    def connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            try:
                connection = sqlite3.connect(
                    self.path, timeout=60, isolation_level=None, check_same_thread=False, factory=_Connection
                )
            except sqlite3.Error as error:
                raise folder_error(error, self.path) from error
            opened = connection
            opened.execute("PRAGMA busy_timeout = 60000")
            _when_unlocked(lambda: opened.execute("PRAGMA journal_mode = WAL"))
            opened.execute("PRAGMA synchronous = NORMAL")
            self._local.connection = connection
            with self._lock:
                self._all.append(connection)
        return connection

    def execute(self, sql: str, parameters: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        return self.connection().execute(sql, parameters)

    def loads(self, text: str, *, required: tuple[str, ...] | None = None) -> Any:
        """A value stored as JSON; a `StateFolderError` saying the database is damaged when it
        is not JSON, or (with `required`) not a mapping holding those keys."""
        try:
            value = json.loads(text)
        except (TypeError, ValueError) as error:
            raise _damaged(self.path, f"a stored value is not JSON: {error}") from None
        if required is not None and not (isinstance(value, dict) and all(key in value for key in required)):
            raise _damaged(
                self.path, f"a stored record is not a mapping with {', '.join(required) or 'keys'}"
            )
        return value

    def close(self) -> None:
        with self._lock:
            for connection in self._all:
                connection.close()
            self._all.clear()
        self._local = threading.local()


# SQLite's primary result codes that mean the folder or a file in it cannot be used as it is.
# The others (busy, locked, constraint, misuse) are the stores' own business and stay as they are.
_FOLDER_CODES = frozenset(
    {
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_NOLFS,
        sqlite3.SQLITE_NOTADB,
    }
)
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# Messages of SQLite's generic error (and of the sqlite3 module's, which has no code) that mean
# the file is not the database the stores made: a damaged header, schema or text, or a file of
# another program.
_DAMAGE_SIGNS = (
    "unsupported file format",
    "malformed",
    "no such table",
    "no such column",
    "Could not decode to UTF-8",
)
# What a stored record must hold for the stores to read it (else the database is damaged).
_RUN_KEYS = ("run_id", "pipeline", "status")
_ANOTHER_FOLDER = "or set ORCHESTRATOR_HOME to another folder"


def _reported(error: sqlite3.Error | UnicodeDecodeError, path: Path) -> Exception:
    """The error to raise for an error met on the database at `path`: text that is not UTF-8
    is damage SQLite cannot see (it keeps no checksums)."""
    if isinstance(error, UnicodeDecodeError):
        return _damaged(path, f"a stored text is not UTF-8: {error.reason}")
    if (getattr(error, "sqlite_errorcode", 0) & 0xFF) in _FOLDER_CODES:
        return folder_error(error, path)
    if any(sign in str(error) for sign in _DAMAGE_SIGNS):
        return _damaged(path, str(error))
    return error


class _Cursor(sqlite3.Cursor):
    """A cursor whose folder errors (see `_reported`) are `StateFolderError`s: a damaged page
    can be met while rows are read, not only when a statement starts."""

    def _path(self) -> Path:
        return Path(cast(_Connection, self.connection).database_path)

    def execute(self, sql: str, parameters: Any = (), /) -> _Cursor:
        try:
            super().execute(sql, parameters)
        except (sqlite3.Error, UnicodeDecodeError) as error:
            raise _reported(error, self._path()) from error
        return self

    def executemany(self, sql: str, parameters: Any, /) -> _Cursor:
        try:
            super().executemany(sql, parameters)
        except (sqlite3.Error, UnicodeDecodeError) as error:
            raise _reported(error, self._path()) from error
        return self

    def executescript(self, script: str, /) -> _Cursor:
        try:
            super().executescript(script)
        except (sqlite3.Error, UnicodeDecodeError) as error:
            raise _reported(error, self._path()) from error
        return self

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except (sqlite3.Error, UnicodeDecodeError) as error:
            raise _reported(error, self._path()) from error

    def fetchmany(self, size: int | None = 1) -> list[Any]:
        try:
            return super().fetchmany(size)
        except (sqlite3.Error, UnicodeDecodeError) as error:
            raise _reported(error, self._path()) from error

    def fetchall(self) -> list[Any]:
        try:
            return super().fetchall()
        except (sqlite3.Error, UnicodeDecodeError) as error:
            raise _reported(error, self._path()) from error

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except (sqlite3.Error, UnicodeDecodeError) as error:
            raise _reported(error, self._path()) from error


class _Connection(sqlite3.Connection):
    """A connection whose statements run on `_Cursor`s."""

    database_path: str

    def __init__(self, database: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        self.database_path = str(database)

    def execute(self, sql: str, parameters: Any = (), /) -> _Cursor:
        return self.cursor(_Cursor).execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> _Cursor:
        return self.cursor(_Cursor).executemany(sql, parameters)

    def executescript(self, script: str, /) -> _Cursor:
        return self.cursor(_Cursor).executescript(script)


def folder_error(error: sqlite3.Error | OSError, database: Path) -> StateFolderError:
    """A `StateFolderError` for a SQLite or OS error met on the state folder of `database`: a
    full disk, a damaged database, or else the first entry of the folder found to be the wrong
    kind or not writable, each with its fix. Nothing is changed to find out."""
    folder = database.parent
    detail = str(error)
    if isinstance(error, OSError) and error.strerror:
        detail = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    code = getattr(error, "sqlite_errorcode", 0) & 0xFF if isinstance(error, sqlite3.Error) else None
    if code == sqlite3.SQLITE_FULL or (isinstance(error, OSError) and error.errno in _FULL_ERRNOS):
        return StateFolderError(
            f"the disk holding the state folder {folder} is full ({detail}): free some space, "
            f"then run the command again, {_ANOTHER_FOLDER}"
        )
    if code in {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}:
        return _damaged(database, detail)
    found = _wrong_entry(folder, database)
    if found is not None:
        return StateFolderError(found)
    if code == sqlite3.SQLITE_IOERR:
        return StateFolderError(
            f"the state database {database} could not be read or written ({detail}): the disk may be "
            f"full or failing; free some space or check the disk, then run again, {_ANOTHER_FOLDER}"
        )
    return StateFolderError(
        f"the state folder {folder} cannot be used ({detail}): make it and the files in it ones "
        f"you can read and write, {_ANOTHER_FOLDER}"
    )


def _damaged(database: Path, detail: str) -> StateFolderError:
    return StateFolderError(
        f"the state database {database} cannot be read: it is damaged ({detail}); move it aside "
        f"(with {database.name}-wal and {database.name}-shm beside it, if there) and run again "
        f"to start afresh with an empty one, {_ANOTHER_FOLDER}"
    )


def _wrong_entry(folder: Path, database: Path) -> str | None:
    """What is wrong with the first entry of the state folder that is of the wrong kind or that
    this user cannot read and write, and its fix; None when each looks right."""
    try:
        if folder.exists() and not folder.is_dir():
            return (
                f"the state folder {folder} is a file, not a folder: set ORCHESTRATOR_HOME to a folder "
                "you can write (it is created when missing)"
            )
        if folder.is_dir() and not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
            return (
                f"you cannot read and write the state folder {folder} (mode {_mode(folder)}): "
                f"run 'chmod u+rwx {folder}', {_ANOTHER_FOLDER}"
            )
        files = [
            database,
            database.with_name(database.name + "-wal"),
            database.with_name(database.name + "-shm"),
        ]
        for entry in files:
            if entry.exists() and not entry.is_file():
                return f"{entry} is not a file: move it aside and run again, {_ANOTHER_FOLDER}"
        locked = [entry for entry in files if entry.exists() and not os.access(entry, os.R_OK | os.W_OK)]
        if locked:
            names = " ".join(str(entry) for entry in locked)
            modes = ", ".join(f"{entry.name}: mode {_mode(entry)}" for entry in locked)
            return f"you cannot read and write {names} ({modes}): run 'chmod u+rw {names}', {_ANOTHER_FOLDER}"
        locks = folder / "locks"
        if locks.exists() and not locks.is_dir():
            return f"{locks} is not a folder: move it aside and run again, {_ANOTHER_FOLDER}"
        if locks.is_dir() and not os.access(locks, os.R_OK | os.W_OK | os.X_OK):
            return (
                f"you cannot read and write {locks} (mode {_mode(locks)}): run 'chmod u+rwx {locks}', "
                f"{_ANOTHER_FOLDER}"
            )
    except OSError as error:  # the folder cannot even be looked into
        problem = f"the state folder {folder} cannot be looked into ({error.strerror})"
        return f"{problem}: make its path one you can open, {_ANOTHER_FOLDER}"
    return None


def _mode(path: Path) -> str:
    return f"{path.stat().st_mode & 0o777:o}"


def _roll_back(connection: sqlite3.Connection) -> None:
    """End a transaction a statement or its COMMIT failed in. SQLite has already rolled it back
    after some errors (a full disk may) and keeps it open after others (a COMMIT that could not
    write), so a ROLLBACK is sent only to an open one, and its own failure (the disk is gone)
    does not hide the error that is being raised."""
    if connection.in_transaction:
        with contextlib.suppress(sqlite3.Error, StateFolderError):
            connection.execute("ROLLBACK")


def _keep_private(path: Path) -> None:
    """Take away what others may do with `path`; what its owner may do is left as it is (a file
    the user made read-only stays so, and is reported as such when written)."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        path.chmod(mode & 0o700)


def _when_unlocked(action: Callable[[], Any]) -> Any:
    """Run a setup statement again while SQLite answers "database is locked" at once: the busy
    timeout does not cover a connection upgrading its own read lock, which is what switching a
    new file to WAL or creating its tables does when another process opens it at that moment."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return action()
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


# The summary of a run `RunStore.list` returns without reading documents, copied from the
# document's fields on each save. Added to the runs table of a database made before them.
_SUMMARY_COLUMNS = {"ended_at": "TEXT", "duration": "REAL", "engine": "TEXT", "user": "TEXT"}


def _add_run_summaries(connection: sqlite3.Connection) -> None:
    """Add the summary columns the runs table lacks. Another process may add one at the same
    moment (then it is there); a database this user cannot write is left as it is, and its runs
    are listed with empty summaries."""
    present = {row[1] for row in connection.execute("PRAGMA table_info(runs)").fetchall()}
    for column, kind in _SUMMARY_COLUMNS.items():
        if column in present:
            continue
        try:
            connection.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
        except StateFolderError:  # read-only: nothing is written, the reading commands still work
            return
        except sqlite3.OperationalError as error:
            if "duplicate column" not in str(error):
                raise


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class SqliteStateStore:
    """Versioned state rows; compare-and-set is one conditional statement."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def read(self, namespace: str, key: str) -> Versioned:
        row = self._db.execute(
            "SELECT value, version, expires_at FROM state WHERE namespace = ? AND key = ?", (namespace, key)
        ).fetchone()
        if row is None:
            return Versioned(None, 0)
        value, version, expires_at = row
        if value is None or (expires_at is not None and expires_at <= time.time()):
            return Versioned(None, version)
        return Versioned(self._db.loads(value), version)

    def write(self, namespace: str, key: str, value: Any, *, ttl: float | None = None) -> int:
        row = self._db.execute(
            "INSERT INTO state (namespace, key, value, version, expires_at) VALUES (?, ?, ?, 1, ?) "
            "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, "
            "version = state.version + 1, expires_at = excluded.expires_at RETURNING version",
            (namespace, key, _dump(value), _expiry(ttl)),
        ).fetchone()
        return int(row[0])

    def compare_and_set(
        self, namespace: str, key: str, value: Any, expected_version: int, *, ttl: float | None = None
    ) -> int | None:
        if expected_version == 0:
            row = self._db.execute(
                "INSERT INTO state (namespace, key, value, version, expires_at) VALUES (?, ?, ?, 1, ?) "
                "ON CONFLICT (namespace, key) DO NOTHING RETURNING version",
                (namespace, key, _dump(value), _expiry(ttl)),
            ).fetchone()
        else:
            row = self._db.execute(
                "UPDATE state SET value = ?, version = version + 1, expires_at = ? "
                "WHERE namespace = ? AND key = ? AND version = ? RETURNING version",
                (_dump(value), _expiry(ttl), namespace, key, expected_version),
            ).fetchone()
        return None if row is None else int(row[0])

    def commit(self, writes: Sequence[StateWrite]) -> bool:
        """One `BEGIN IMMEDIATE` transaction: every expected version checked, then every row
        written (the version of a row only grows: expired rows are kept, never deleted). A
        single write is one statement, atomic by itself."""
        if len(writes) == 1:
            (write,) = writes
            if write.expected_version is None:
                self.write(write.namespace, write.key, write.value, ttl=write.ttl)
                return True
            return (
                self.compare_and_set(
                    write.namespace, write.key, write.value, write.expected_version, ttl=write.ttl
                )
                is not None
            )
        connection = self._db.connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            for write in writes:
                if write.expected_version is None:
                    continue
                row = connection.execute(
                    "SELECT version FROM state WHERE namespace = ? AND key = ?", (write.namespace, write.key)
                ).fetchone()
                if (0 if row is None else int(row[0])) != write.expected_version:
                    connection.execute("ROLLBACK")
                    return False
            connection.executemany(
                "INSERT INTO state (namespace, key, value, version, expires_at) VALUES (?, ?, ?, 1, ?) "
                "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, "
                "version = state.version + 1, expires_at = excluded.expires_at",
                [(w.namespace, w.key, _dump(w.value), _expiry(w.ttl)) for w in writes],
            )
            connection.execute("COMMIT")
        except BaseException:
            _roll_back(connection)
            raise
        return True


class SqliteCacheStore:
    """Cache rows with an absolute expiry; an expired row is never returned."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def get(self, key: str) -> tuple[bool, Any]:
        row = self._db.execute("SELECT value, expires_at FROM cache WHERE key = ?", (key,)).fetchone()
        if row is None:
            return False, None
        value, expires_at = row
        if expires_at is not None and expires_at <= time.time():
            self._db.execute("DELETE FROM cache WHERE key = ? AND expires_at <= ?", (key, time.time()))
            return False, None
        return True, self._db.loads(value)

    def put(self, key: str, value: Any, ttl: float | None) -> None:
        self._db.execute(
            "INSERT INTO cache (key, value, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
            (key, _dump(value), _expiry(ttl)),
        )


class SqliteAuditLog:
    """Append-only audit rows."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def append(self, entry: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO audit (pipeline_id, execution_id, logged_at, entry) VALUES (?, ?, ?, ?)",
            (entry.get("pipeline_id"), entry.get("execution_id"), time.time(), _dump(entry)),
        )

    def query(self, *, pipeline: str | None = None, run: str | None = None) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT entry FROM audit WHERE (? IS NULL OR pipeline_id = ?) "
            "AND (? IS NULL OR execution_id = ?) ORDER BY id",
            (pipeline, pipeline, run, run),
        ).fetchall()
        return [self._db.loads(row[0]) for row in rows]


_CHECKPOINT = (
    "INSERT INTO run_tasks (run_id, task, outcome) VALUES (?, ?, ?) "
    "ON CONFLICT (run_id, task) DO UPDATE SET outcome = excluded.outcome"
)


class _CheckpointWriter:
    """Writes checkpoints on a daemon thread, each batch in one transaction.

    Whatever is queued while a batch is being written goes into the next one, so a task
    finishing does not wait for the disk, and many tasks finishing together cost one commit.
    A checkpoint is on disk a moment (a commit) after it was queued; `flush` waits for all.

    Telemetry entries are written the same way, with their own statement (`sql`), and a batch
    waits `linger` seconds for more (unless a `flush` asks for it): many commits would take
    room in the write-ahead log that a run's own record may need on a nearly full disk. With
    `latest`, rows are replaced by key (their first two columns) and queued as values: a batch
    writes each key's last one only, encoded on this thread (an attempt that started and ended
    within a batch is one row, encoded once).
    """

    def __init__(
        self, database: Database, sql: str = _CHECKPOINT, linger: float = 0.0, *, latest: bool = False
    ) -> None:
        self._db = database
        self._sql = sql
        self._linger = linger
        self._latest = latest
        self._hurry = threading.Event()
        self._queue: queue.SimpleQueue[tuple[str, str, Any]] = queue.SimpleQueue()
        self._pending = 0
        self._error: BaseException | None = None
        self._idle = threading.Condition()
        threading.Thread(target=self._write, daemon=True, name="orchestrator-checkpoints").start()

    def put(self, row: tuple[str, str, Any]) -> None:
        """Queue a row; a write that failed is raised by `flush`, never here: a task finishing
        is not where a full disk can be reported (the run document is)."""
        with self._idle:
            self._pending += 1
        self._queue.put(row)

    def flush(self) -> None:
        self._hurry.set()
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0)
            self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _write(self) -> None:
        while True:
            batch = [self._queue.get()]
            if self._linger:
                self._hurry.wait(self._linger)
                self._hurry.clear()
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows = batch
            if self._latest:
                last = {(row[0], row[1]): row[2] for row in batch}
                rows = [(run, key, _dump(value)) for (run, key), value in last.items()]
            try:
                connection = self._db.connection()
                connection.execute("BEGIN IMMEDIATE")
                try:
                    connection.executemany(self._sql, rows)
                    connection.execute("COMMIT")
                except BaseException:
                    _roll_back(connection)
                    raise
            except BaseException as error:  # handed to the next flush
                self._error = error
            with self._idle:
                self._pending -= len(batch)
                self._idle.notify_all()


_WRITERS: weakref.WeakSet[_CheckpointWriter] = weakref.WeakSet()


@atexit.register
def _flush_writers() -> None:
    """An interpreter that exits (an error, Ctrl-C) still writes the checkpoints it queued."""
    for writer in list(_WRITERS):
        with contextlib.suppress(Exception):  # the run's own error is the one the user sees
            writer.flush()


class RunInProgressError(OrchestratorError):
    """The run is being run by another live process (its owner is named)."""

    def __init__(self, run_id: str, owner: dict[str, Any]) -> None:
        self.run_id = run_id
        self.owner = owner
        where = f"process {owner.get('pid', '?')} on {owner.get('host', '?')}"
        super().__init__(
            f"run '{run_id}' is still running ({where}); wait for it to finish, or stop it and resume it then"
        )


_HELD: dict[str, int] = {}  # lock file -> the descriptor that holds it, in this process
_HELD_LOCK = threading.Lock()
_ACQUIRE_PATIENCE = 2.0  # seconds: how long a prober's brief shared lock may delay an owner


class _RunLocks:
    """One lock file per running run, under the state folder's `locks/`.

    The owner holds an exclusive `flock` from before its `running` row is saved until after its
    final row is saved; a reader that can take a shared lock knows no live process owns the
    run. `flock` (not `fcntl`/`lockf` record locks) because it belongs to the open file, so a
    second descriptor in the owner's own process sees it too, and it exists on macOS as on
    Linux. The file is removed when the run ends; it holds the owner's pid and host for
    messages only.
    """

    def __init__(self, database: Path) -> None:
        self._database = database
        self._folder = database.parent / "locks"

    def path(self, run_id: str) -> Path:
        return self._folder / f"{quote(run_id, safe='')}.lock"

    def acquire(self, run_id: str) -> None:
        """Hold the run's lock (kept if this process holds it already); RunInProgressError if a
        live process does, StateFolderError if the lock file cannot be made."""
        try:
            self._acquire(run_id)
        except OSError as error:
            raise folder_error(error, self._database) from error

    def _acquire(self, run_id: str) -> None:
        path = self.path(run_id)
        with _HELD_LOCK:
            if str(path) in _HELD:
                return
        self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        deadline = time.monotonic() + _ACQUIRE_PATIENCE
        while True:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                if time.monotonic() >= deadline:
                    raise RunInProgressError(run_id, self.owner(run_id)) from None
                time.sleep(0.01)
                continue
            if _same_file(descriptor, path):
                break
            os.close(descriptor)  # its previous owner removed it between our open and flock
        owner = {"pid": os.getpid(), "host": platform.node(), "since": time.time()}
        os.ftruncate(descriptor, 0)
        os.write(descriptor, json.dumps(owner).encode())
        with _HELD_LOCK:
            _HELD[str(path)] = descriptor

    def release(self, run_id: str) -> None:
        path = self.path(run_id)
        with _HELD_LOCK:
            descriptor = _HELD.pop(str(path), None)
            if descriptor is None:
                return
            with contextlib.suppress(OSError):  # a file left behind that nobody holds is no lock
                path.unlink()
            os.close(descriptor)

    def alive(self, run_id: str) -> bool:
        """Whether a live process holds the run's lock (this one included)."""
        path = self.path(run_id)
        with _HELD_LOCK:
            if str(path) in _HELD:
                return True
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError as error:
            raise folder_error(error, self._database) from error
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(descriptor)  # drops the shared lock, if taken
        return False

    def owner(self, run_id: str) -> dict[str, Any]:
        try:
            found = json.loads(self.path(run_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(descriptor)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _with_finished(document: dict[str, Any], finished: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A `running` document with the checkpoints of the tasks it finished added."""
    outputs = dict(document.get("outputs") or {})
    tasks = dict(document.get("tasks") or {})
    for task, record in finished.items():
        outputs.setdefault(task, record.get("output"))
        tasks.setdefault(
            task,
            {
                "status": record.get("status"),
                "attempts": record.get("attempts", 0),
                "error": record.get("error"),
            },
        )
    return {**document, "outputs": outputs, "tasks": tasks}


def _crashed(document: dict[str, Any]) -> dict[str, Any]:
    """A `running` document whose process is gone, as it is shown."""
    error = document.get("error") or {
        "task": None,
        "type": "ProcessDied",
        "message": "the process running it ended before the run finished; it can be resumed",
    }
    return {**document, "status": "crashed", "error": error}


class SqliteRunStore:
    """Run documents, what a resume needs, and each finished top-level task as a checkpoint.

    Checkpoints are written behind the run by a `_CheckpointWriter`; saving a run document and
    reading a resume point wait for the checkpoints queued before them. A process killed in the
    moment between a task finishing and its checkpoint's commit runs that task again on
    `resume` (at least once, like a Step Functions retry of a task whose result was lost).

    Saving a `running` document takes the run's lock (`_RunLocks`) for this process, or raises
    RunInProgressError; saving any other status releases it. `load` and `list` show a `running`
    run whose lock is free as `crashed`; the row itself is left as it is.
    """

    def __init__(self, database: Database) -> None:
        self._db = database
        self._writer: _CheckpointWriter | None = None
        self._writer_lock = threading.Lock()
        self._locks = _RunLocks(database.path)

    def save(self, document: dict[str, Any], resume: dict[str, Any] | None = None) -> None:
        running = document["status"] == "running"
        if running:
            self._locks.acquire(document["run_id"])
        written = False
        try:
            self._write(document, resume)
            written = True
        finally:
            if not (running and written):
                self._locks.release(document["run_id"])

    def _write(self, document: dict[str, Any], resume: dict[str, Any] | None) -> None:
        self._flush()
        now = time.time()
        self._db.execute(
            "INSERT INTO runs (run_id, pipeline, status, started_at, updated_at, document, resume, "
            "ended_at, duration, engine, user) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (run_id) DO UPDATE SET status = excluded.status, "
            "updated_at = excluded.updated_at, document = excluded.document, "
            "resume = COALESCE(excluded.resume, runs.resume), ended_at = excluded.ended_at, "
            "duration = excluded.duration, engine = excluded.engine, user = excluded.user",
            (
                document["run_id"],
                document["pipeline"],
                document["status"],
                _epoch(document.get("started_at")) or now,  # kept from the first save
                now,
                _dump(document),
                None if resume is None else _dump(resume),
                *(_summary_field(document, column) for column in _SUMMARY_COLUMNS),
            ),
        )

    def load(self, run_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT document FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else self._as_seen(self._db.loads(row[0], required=_RUN_KEYS))

    def list(
        self,
        *,
        pipeline: str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Run summaries (see `RunStore.list`), newest first, read from columns, never from
        documents. Newest is the order runs were first saved (the table's rowid, which an update
        keeps): a walk of the table from its end, with no index to keep up on every save. A
        `running` row whose process is gone is listed (and filtered) as `crashed`; those rows
        are few, so the `running` and `crashed` filters read them all and page them here."""
        live = status in {"running", "crashed"}
        rows = self._db.execute(
            f"SELECT {_SUMMARY_SELECT} FROM runs WHERE (? IS NULL OR pipeline = ?) "
            "AND (? IS NULL OR status = ?) ORDER BY rowid DESC LIMIT ? OFFSET ?",
            (
                pipeline,
                pipeline,
                status,
                "running" if live else status,
                -1 if live else limit,
                0 if live else offset,
            ),
        ).fetchall()
        summaries = [self._summary(row) for row in rows]
        if live:
            summaries = [summary for summary in summaries if summary["status"] == status]
            summaries = summaries[offset : offset + limit]
        return summaries

    def _summary(self, row: tuple[Any, ...]) -> dict[str, Any]:
        run_id, pipeline, status, started, updated, ended_at, duration, engine, user = row
        if status == "running" and not self._locks.alive(run_id):
            # the owner may have saved its final row, then let go, since the row was read
            now = self._db.execute(
                f"SELECT {_SUMMARY_SELECT} FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if now is None or now[2] == "running":
                status = "crashed"
            else:
                return self._summary(now)
        if status not in {"running", "crashed"}:
            # rows saved before the summaries were: the row's own times
            ended_at = ended_at or iso_time(updated)
            duration = round(updated - started, 3) if duration is None else duration
        return {
            "run_id": run_id,
            "pipeline": pipeline,
            "status": status,
            "started_at": iso_time(started),
            "ended_at": ended_at,
            "duration": duration,
            "engine": engine,
            "user": user,
        }

    def _as_seen(self, document: dict[str, Any]) -> dict[str, Any]:
        """The document as it is shown: a `running` one with the top-level tasks it has
        finished so far (what `resume` would keep), and `crashed` if no live process holds its
        lock."""
        if document.get("status") != "running":
            return document
        run_id = document["run_id"]
        alive = self._locks.alive(run_id)
        if not alive:
            # the owner may have saved its final document, then let go, since the row was read
            row = self._db.execute("SELECT document FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is not None:
                document = self._db.loads(row[0], required=_RUN_KEYS)
                if document.get("status") != "running":
                    return document
        self._flush()
        finished = self._db.execute(
            "SELECT task, outcome FROM run_tasks WHERE run_id = ? ORDER BY rowid", (run_id,)
        ).fetchall()
        outcomes = {task: self._db.loads(outcome, required=()) for task, outcome in finished}
        document = _with_finished(document, outcomes)
        return document if alive else _crashed(document)

    def checkpoint(self, run_id: str, task: str, outcome: dict[str, Any]) -> None:
        """Queue the outcome, serialised now (later changes to its values are not recorded)."""
        if self._writer is None:
            with self._writer_lock:
                if self._writer is None:
                    self._writer = _CheckpointWriter(self._db)
                    _WRITERS.add(self._writer)
        self._writer.put((run_id, task, _dump(outcome)))

    def _flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def resume_point(self, run_id: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]] | None:
        """What the run needs to go on (its resume record) and the tasks it already finished."""
        self._flush()
        row = self._db.execute("SELECT resume FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None or row[0] is None:
            return None
        finished = self._db.execute("SELECT task, outcome FROM run_tasks WHERE run_id = ?", (run_id,))
        record = self._db.loads(row[0], required=())
        return record, {task: self._db.loads(outcome, required=()) for task, outcome in finished}


TELEMETRY_LINGER = 0.25
"""Seconds a batch of telemetry entries waits for more before its commit (a live view lags
that much at most)."""
_SUMMARY_SELECT = "run_id, pipeline, status, started_at, updated_at, ended_at, duration, engine, user"


def _epoch(moment: Any) -> float | None:
    """An ISO-8601 time of a document (a run saved once, when it ended, as on the emulated
    Step Functions, started earlier than its row) as epoch seconds; None if it is not one."""
    if not isinstance(moment, str):
        return None
    try:
        return datetime.fromisoformat(moment).timestamp()
    except ValueError:
        return None


def _summary_field(document: dict[str, Any], column: str) -> Any:
    """A summary column's value from the document's field of that name; None when the
    document has none of the right type."""
    value = document.get(column)
    if column == "duration":
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None
    return value if isinstance(value, str) else None


_TELEMETRY = (
    "INSERT INTO telemetry (run_id, entry_id, entry) VALUES (?, ?, ?) "
    "ON CONFLICT (run_id, entry_id) DO UPDATE SET entry = excluded.entry"
)


class SqliteTelemetryLog:
    """Telemetry entries (`runtime.telemetry`), one row each, by run and entry id, written
    behind the run in batches (`_CheckpointWriter`): an attempt does not wait for the disk."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._writer: _CheckpointWriter | None = None
        self._writer_lock = threading.Lock()

    def put(self, run_id: str, entry_id: str, entry: dict[str, Any]) -> None:
        if self._writer is None:
            with self._writer_lock:
                if self._writer is None:
                    self._writer = _CheckpointWriter(self._db, _TELEMETRY, TELEMETRY_LINGER, latest=True)
                    _WRITERS.add(self._writer)
        self._writer.put((run_id, entry_id, entry))  # encoded behind the run: never changed once put

    def query(self, run_id: str) -> list[dict[str, Any]]:
        if self._writer is not None:
            self._writer.flush()
        rows = self._db.execute("SELECT entry FROM telemetry WHERE run_id = ?", (run_id,)).fetchall()
        return [self._db.loads(row[0], required=()) for row in rows]


def _expiry(ttl: float | None) -> float | None:
    return None if ttl is None else time.time() + ttl
