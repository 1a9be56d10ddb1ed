"""In-process stores: state and cache that live as long as the process, behind the protocols."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Sequence
from typing import Any

from orchestrator.stores.base import StateWrite, Versioned, summary


class MemoryStateStore:
    """Versioned key/value state in a dict, safe across threads."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._items: dict[tuple[str, str], tuple[Any, int, float | None]] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def _current(self, namespace: str, key: str) -> tuple[Any, int]:
        entry = self._items.get((namespace, key))
        if entry is None:
            return None, 0
        value, version, expires = entry
        if expires is not None and expires <= self._clock():
            return None, version  # expired: reads as absent, but versions keep counting
        return value, version

    def read(self, namespace: str, key: str) -> Versioned:
        with self._lock:
            value, version = self._current(namespace, key)
            return Versioned(copy.deepcopy(value), version)

    def write(self, namespace: str, key: str, value: Any, *, ttl: float | None = None) -> int:
        with self._lock:
            _, version = self._current(namespace, key)
            return self._store(namespace, key, value, version + 1, ttl)

    def compare_and_set(
        self,
        namespace: str,
        key: str,
        value: Any,
        expected_version: int,
        *,
        ttl: float | None = None,
    ) -> int | None:
        with self._lock:
            _, version = self._current(namespace, key)
            if version != expected_version:
                return None
            return self._store(namespace, key, value, version + 1, ttl)

    def commit(self, writes: Sequence[StateWrite]) -> bool:
        with self._lock:
            current = [self._current(write.namespace, write.key)[1] for write in writes]
            for write, version in zip(writes, current, strict=True):
                if write.expected_version is not None and version != write.expected_version:
                    return False
            for write, version in zip(writes, current, strict=True):
                self._store(write.namespace, write.key, write.value, version + 1, write.ttl)
            return True

    def _store(self, namespace: str, key: str, value: Any, version: int, ttl: float | None) -> int:
        expires = None if ttl is None else self._clock() + ttl
        self._items[(namespace, key)] = (copy.deepcopy(value), version, expires)
        return version


class MemoryCacheStore:
    """A TTL cache in a dict."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._items: dict[str, tuple[Any, float | None]] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def get(self, key: str) -> tuple[bool, Any]:
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                return False, None
            value, expires = entry
            if expires is not None and expires <= self._clock():
                del self._items[key]
                return False, None
            return True, copy.deepcopy(value)

    def put(self, key: str, value: Any, ttl: float | None) -> None:
        with self._lock:
            expires = None if ttl is None else self._clock() + ttl
            self._items[key] = (copy.deepcopy(value), expires)


class MemoryAuditLog:
    """Audit entries in a list."""

    def __init__(self) -> None:
        self._entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def append(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._entries.append(copy.deepcopy(entry))

    def query(self, *, pipeline: str | None = None, run: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                copy.deepcopy(entry)
                for entry in self._entries
                if (pipeline is None or entry.get("pipeline_id") == pipeline)
                and (run is None or entry.get("execution_id") == run)
            ]


class MemoryRunStore:
    """Run documents in a dict."""

    def __init__(self) -> None:
        self._runs: dict[str, dict[str, Any]] = {}
        self._resume: dict[str, dict[str, Any]] = {}
        self._finished: dict[str, dict[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def save(self, document: dict[str, Any], resume: dict[str, Any] | None = None) -> None:
        with self._lock:
            self._runs[document["run_id"]] = copy.deepcopy(document)
            if resume is not None:
                self._resume[document["run_id"]] = copy.deepcopy(resume)

    def checkpoint(self, run_id: str, task: str, outcome: dict[str, Any]) -> None:
        with self._lock:
            self._finished.setdefault(run_id, {})[task] = copy.deepcopy(outcome)

    def resume_point(self, run_id: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]] | None:
        with self._lock:
            if run_id not in self._resume:
                return None
            return copy.deepcopy(self._resume[run_id]), copy.deepcopy(self._finished.get(run_id, {}))

    def load(self, run_id: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._runs.get(run_id)
            return copy.deepcopy(found) if found else None

    def list(
        self,
        *,
        pipeline: str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        with self._lock:
            runs = [
                summary(r)
                for r in reversed(self._runs.values())
                if pipeline in (None, r.get("pipeline")) and status in (None, r.get("status"))
            ]
            return runs[offset : offset + limit]


class MemoryTelemetryLog:
    """Telemetry entries in a dict, by run and entry id."""

    def __init__(self) -> None:
        self._runs: dict[str, dict[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def put(self, run_id: str, entry_id: str, entry: dict[str, Any]) -> None:
        with self._lock:
            self._runs.setdefault(run_id, {})[entry_id] = copy.deepcopy(entry)

    def query(self, run_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(list(self._runs.get(run_id, {}).values()))
