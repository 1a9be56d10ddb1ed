"""The store protocols every backend implements (memory now; SQLite, Redis, DynamoDB beside it),
and the run summary `RunStore.list` returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class Versioned:
    """A value read from a `StateStore` with the version a later compare-and-set checks."""

    value: Any
    version: int  # 0 means "no such key"


@dataclass(frozen=True)
class StateWrite:
    """One write of a `StateStore.commit`: with an `expected_version` it is a compare-and-set
    against it (0: the key must not exist), without one it is unconditional."""

    namespace: str
    key: str
    value: Any
    expected_version: int | None
    ttl: float | None


class StateStore(Protocol):
    """Key/value state with versioned reads and compare-and-set writes.

    A version is never given twice to a key, even after the key expired or was removed, so a
    compare-and-set against a version read long ago cannot succeed against a newer value.
    """

    def read(self, namespace: str, key: str) -> Versioned: ...

    def write(self, namespace: str, key: str, value: Any, *, ttl: float | None = None) -> int:
        """Unconditional write; returns the new version."""
        ...

    def compare_and_set(
        self,
        namespace: str,
        key: str,
        value: Any,
        expected_version: int,
        *,
        ttl: float | None = None,
    ) -> int | None:
        """Write only if the stored version is still `expected_version`; new version or None."""
        ...

    def commit(self, writes: Sequence[StateWrite]) -> bool:
        """All of `writes` or none, atomically (one task attempt's writes, one key at most
        once): False, and nothing written, when a compare-and-set among them fails."""
        ...


class CacheStore(Protocol):
    """Values with a time to live; an expired entry is never returned."""

    def get(self, key: str) -> tuple[bool, Any]: ...

    def put(self, key: str, value: Any, ttl: float | None) -> None: ...


class AuditLog(Protocol):
    """Append-only audit entries, queryable per pipeline and run."""

    def append(self, entry: dict[str, Any]) -> None: ...

    def query(self, *, pipeline: str | None = None, run: str | None = None) -> list[dict[str, Any]]: ...


class RunStore(Protocol):
    """Run documents by run id, with what `resume` needs: a record and per-task checkpoints.

    A run is saved as `running` before it starts and saved again when it ends. A store that can
    tell whether the process running a run is alive (SQLite: a lock file held by that process)
    refuses a second `running` save of a run another live process holds, and `load`/`list`
    show a `running` run whose process died as `crashed`.
    """

    def save(self, document: dict[str, Any], resume: dict[str, Any] | None = None) -> None: ...

    def load(self, run_id: str) -> dict[str, Any] | None: ...

    def list(
        self,
        *,
        pipeline: str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Summaries of the runs (of `pipeline`, with `status`), newest first, from `offset`:
        `run_id`, `pipeline`, `status`, `started_at`, `ended_at`, `duration`, `engine`,
        `user` (see `summary`), without loading whole documents where the store can."""
        ...

    def checkpoint(self, run_id: str, task: str, outcome: dict[str, Any]) -> None: ...

    def resume_point(self, run_id: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]] | None: ...


SUMMARY_KEYS = ("run_id", "pipeline", "status", "started_at", "ended_at", "duration", "engine", "user")


def iso_time(seconds: float) -> str:
    """An epoch time as ISO-8601 UTC with milliseconds, as run documents write times."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def summary(document: dict[str, Any], started_at: str | None = None) -> dict[str, Any]:
    """A run's summary taken from its document (stores that keep no summary columns)."""
    found = {key: document.get(key) for key in SUMMARY_KEYS}
    return found if found["started_at"] or started_at is None else {**found, "started_at": started_at}


class TelemetryLog(Protocol):
    """Attempt entries of runs (`runtime.telemetry`), written while the runs go on.

    `put` writes an entry of a run by its id, replacing one with the same id (an attempt is
    put when it starts and again when it ends); `query` gives every entry of a run (its child
    pipelines' included), in no particular order.
    """

    def put(self, run_id: str, entry_id: str, entry: dict[str, Any]) -> None: ...

    def query(self, run_id: str) -> list[dict[str, Any]]: ...


class Secrets(Protocol):
    """Named secret values; None when the secret does not exist."""

    def get(self, name: str) -> str | None: ...


@dataclass
class Stores:
    """The stores one run uses, chosen by `stores.factory`."""

    state: StateStore
    cache: CacheStore
    audit: AuditLog
    runs: RunStore
    secrets: Secrets
    telemetry: TelemetryLog = field(default_factory=lambda: _memory_telemetry())


def _memory_telemetry() -> TelemetryLog:
    """Where stores built without a telemetry log keep it: in memory, for the process."""
    from orchestrator.stores.memory import MemoryTelemetryLog

    return MemoryTelemetryLog()
