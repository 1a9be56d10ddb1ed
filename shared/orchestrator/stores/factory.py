"""The one place that chooses store backends from configuration.

`storage_backend` picks where state and cache live: `database`, `filesystem` (and, off AWS,
`dynamodb`) map to the SQLite file under the state folder, `redis` to the Redis server of
`ORCHESTRATOR_REDIS_URL`, `memory` to this process only. Run records and the audit log always
live in the state folder's SQLite file, so `orchestrator runs` and `orchestrator audit` see
every run whatever its pipeline chose.
"""

from __future__ import annotations

import atexit
import threading
from pathlib import Path

from orchestrator.settings import Settings
from orchestrator.stores.base import CacheStore, StateStore, Stores
from orchestrator.stores.memory import MemoryCacheStore, MemoryStateStore
from orchestrator.stores.secrets_local import LocalSecrets
from orchestrator.stores.sqlite import (
    Database,
    SqliteAuditLog,
    SqliteCacheStore,
    SqliteRunStore,
    SqliteStateStore,
    SqliteTelemetryLog,
)

_DATABASES: dict[Path, Database] = {}
_LOCK = threading.Lock()


def database(settings: Settings) -> Database:
    """The state folder's database, opened once per process."""
    path = (settings.home / "state.db").resolve()
    with _LOCK:
        found = _DATABASES.get(path)
        if found is None:
            found = _DATABASES[path] = Database(path)  # or StateFolderError, saying why
        return found


@atexit.register
def close_databases() -> None:
    with _LOCK:
        for opened in _DATABASES.values():
            opened.close()
        _DATABASES.clear()


def _state_and_cache(settings: Settings, backend: str) -> tuple[StateStore, CacheStore]:
    if backend == "memory":
        return MemoryStateStore(), MemoryCacheStore()
    if backend == "redis":
        from orchestrator.stores.redis import RedisCacheStore, RedisStateStore, connect

        client = connect(settings.redis_url)
        return RedisStateStore(client), RedisCacheStore(client)
    opened = database(settings)
    return SqliteStateStore(opened), SqliteCacheStore(opened)


def open_stores(settings: Settings, backend: str = "database") -> Stores:
    """Stores for a pipeline whose `state_management.storage_backend` is `backend`.

    On AWS (the DynamoDB tables are configured) every store is DynamoDB and secrets come
    from Secrets Manager, whatever the pipeline's local backend is.
    """
    if settings.on_aws:
        return _aws_stores(settings)
    state, cache = _state_and_cache(settings, backend)
    opened = database(settings)
    return Stores(
        state=state,
        cache=cache,
        audit=SqliteAuditLog(opened),
        runs=SqliteRunStore(opened),
        secrets=LocalSecrets(settings.home / "secrets.yaml"),
        telemetry=SqliteTelemetryLog(opened),
    )


def shared_state(settings: Settings) -> StateStore:
    """The state store every run of this machine (its state folder's SQLite file), or of the
    AWS account (the DynamoDB state table), shares whatever its pipeline's backend: where
    limits that hold across runs keep their counts (`runtime.rate_limit`)."""
    if settings.on_aws:
        from orchestrator.stores.dynamodb import DynamoStateStore

        return DynamoStateStore(settings.tables["state"])
    return SqliteStateStore(database(settings))


def _aws_stores(settings: Settings) -> Stores:
    from orchestrator.stores.dynamodb import (
        DynamoAuditLog,
        DynamoCacheStore,
        DynamoRunStore,
        DynamoStateStore,
        DynamoTelemetryLog,
    )
    from orchestrator.stores.secretsmanager import SecretsManagerSecrets

    tables = settings.tables
    stores = Stores(
        state=DynamoStateStore(tables["state"]),
        cache=DynamoCacheStore(tables["cache"]),
        audit=DynamoAuditLog(tables["audit"]),
        runs=DynamoRunStore(tables["runs"]),
        secrets=SecretsManagerSecrets(),
    )
    if "telemetry" in tables:  # (a stack deployed before issue 14 has none: kept in memory)
        stores.telemetry = DynamoTelemetryLog(tables["telemetry"])
    return stores
