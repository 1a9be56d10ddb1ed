"""What the emulated AWS account keeps between `--engine stepfunctions` runs: its tables.

A deployed stack keeps its DynamoDB tables (persistent and shared state, caches, runs, the
audit log) from one execution to the next; each emulation starts a new, empty moto account.
So that stateful and cached pipelines behave on the emulator as they would on a stack, the
tables' items are saved in the state folder (`<ORCHESTRATOR_HOME>/emulated-aws/tables.json`)
when an emulation ends and put back when the next one starts. One emulation at a time uses a
folder (a lock), so two runs cannot lose each other's writes.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError

TABLES_FILE = "tables.json"
FORMAT = 1
_BATCH = 25  # DynamoDB's BatchWriteItem limit


@contextmanager
def kept_in(folder: Path | None, tables: dict[str, str], client: Any) -> Iterator[None]:
    """Inside: the emulated tables (logical id -> table name, reached with `client`) hold what
    they held when the last emulation using `folder` ended; they are saved there on the way
    out, whatever the run did. Without a folder, nothing is kept."""
    if folder is None:
        yield
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / "lock", "a+b")  # noqa: SIM115 (held for the whole emulation)
    except OSError as error:
        raise ConfigError(f"{folder}: cannot keep the emulated account there: {error}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _restore(folder / TABLES_FILE, tables, client)
        try:
            yield
        finally:
            _save(folder / TABLES_FILE, tables, client)


def _restore(path: Path, tables: dict[str, str], client: Any) -> None:
    if not path.exists():
        return
    fix = f"delete {path} to start from an empty emulated account"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        items = saved["tables"] if saved.get("format") == FORMAT else None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise ConfigError(f"{path}: not a saved emulated account ({error}); {fix}") from None
    if not isinstance(items, dict):
        raise ConfigError(f"{path}: not a saved emulated account (format {saved.get('format')!r}); {fix}")
    for logical_id, rows in items.items():
        if logical_id not in tables:
            continue  # a table this template no longer has
        try:
            for start in range(0, len(rows), _BATCH):
                requests = [{"PutRequest": {"Item": row}} for row in rows[start : start + _BATCH]]
                client.batch_write_item(RequestItems={tables[logical_id]: requests})
        except Exception as error:  # rows that are not DynamoDB items, whatever botocore says
            problem = f"{logical_id} holds rows that are not items ({error})"
            raise ConfigError(f"{path}: {problem}; {fix}") from None


def _save(path: Path, tables: dict[str, str], client: Any) -> None:
    items: dict[str, list[dict[str, Any]]] = {}
    for logical_id, name in tables.items():
        rows: list[dict[str, Any]] = []
        for page in client.get_paginator("scan").paginate(TableName=name):
            rows += page["Items"]
        items[logical_id] = rows
    text = json.dumps({"format": FORMAT, "tables": items})
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tables-", suffix=".json")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)  # never half a file, even when the disk fills up
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
