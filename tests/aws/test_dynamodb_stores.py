"""Issue 5 / SPEC 8 on AWS: DynamoDB state is compare-and-set on a version; TTL is honoured.
Issue 14: the telemetry logs, DynamoDB's and the local ones, keep the same entries."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.stores.base import TelemetryLog
from orchestrator.stores.dynamodb import (
    DynamoCacheStore,
    DynamoRunStore,
    DynamoStateStore,
    DynamoTelemetryLog,
)
from orchestrator.stores.memory import MemoryTelemetryLog
from orchestrator.stores.sqlite import Database, SqliteTelemetryLog


def test_compare_and_set_rejects_a_stale_version(dynamodb_tables: dict[str, Any]) -> None:
    # GIVEN two writers that read the same version
    store = DynamoStateStore(dynamodb_tables["StateTable"], dynamodb_tables["client"])
    assert store.compare_and_set("shared", "n", 1, 0) == 1
    first, second = store.read("shared", "n"), store.read("shared", "n")
    # WHEN both write back
    won = store.compare_and_set("shared", "n", first.value + 1, first.version)
    lost = store.compare_and_set("shared", "n", second.value + 1, second.version)
    # THEN exactly one lands, and a retry from a fresh read succeeds
    assert (won, lost) == (2, None)
    fresh = store.read("shared", "n")
    assert store.compare_and_set("shared", "n", fresh.value + 1, fresh.version) == 3
    assert store.read("shared", "n").value == 3
    assert store.compare_and_set("shared", "new", "x", 5) is None  # no such version
    assert store.compare_and_set("shared", "n", "y", 0) is None  # exists already


@pytest.mark.slow
def test_expired_state_and_cache_read_as_absent(dynamodb_tables: dict[str, Any]) -> None:
    state = DynamoStateStore(dynamodb_tables["StateTable"], dynamodb_tables["client"])
    cache = DynamoCacheStore(dynamodb_tables["CacheTable"], dynamodb_tables["client"])
    state.write("pipeline:p", "k", {"v": 1}, ttl=0.5)
    cache.put("c", [1, 2], ttl=0.5)
    assert state.read("pipeline:p", "k").value == {"v": 1}
    assert cache.get("c") == (True, [1, 2])
    time.sleep(1.6)  # expires_at is whole epoch seconds
    expired = state.read("pipeline:p", "k")
    assert expired.value is None and expired.version == 1
    assert cache.get("c") == (False, None)


def test_run_records_and_checkpoints(dynamodb_tables: dict[str, Any]) -> None:
    runs = DynamoRunStore(dynamodb_tables["RunsTable"], dynamodb_tables["client"])
    document = {"run_id": "r1", "pipeline": "demo", "status": "running", "outputs": {}}
    runs.save(document, resume={"pipeline_path": "demo.yaml"})
    runs.checkpoint("r1", "prepare", {"status": "succeeded", "output": 1})
    assert runs.load("r1") == document
    assert runs.resume_point("r1") == (
        {"pipeline_path": "demo.yaml"},
        {"prepare": {"status": "succeeded", "output": 1}},
    )
    assert [r["run_id"] for r in runs.list(pipeline="demo")] == ["r1"]


@pytest.mark.parametrize("backend", ["dynamodb", "sqlite", "memory"])
def test_telemetry_entries_are_replaced_by_id_and_queried_per_run(
    backend: str, dynamodb_tables: dict[str, Any], tmp_path: Path
) -> None:
    # GIVEN each telemetry log: the template's table, the state folder's database, memory
    log: TelemetryLog
    if backend == "dynamodb":
        log = DynamoTelemetryLog(dynamodb_tables["TelemetryTable"], dynamodb_tables["client"])
    elif backend == "sqlite":
        log = SqliteTelemetryLog(Database(tmp_path / "state.db"))
    else:
        log = MemoryTelemetryLog()
    # WHEN an attempt is put as it starts and again as it ends, among others' entries
    log.put("run-1", "a", {"id": "a", "status": "running"})
    log.put("run-2", "a", {"id": "a", "status": "running"})
    for number in range(30):
        log.put("run-1", f"e{number:02}", {"id": f"e{number:02}", "printed": ["x" * 1000]})
    log.put("run-1", "a", {"id": "a", "status": "succeeded"})
    # THEN a run's entries are its own, each once, as last put
    entries = {entry["id"]: entry for entry in log.query("run-1")}
    assert len(entries) == 31 and entries["a"]["status"] == "succeeded"
    assert log.query("run-2") == [{"id": "a", "status": "running"}]
    assert log.query("run-3") == []
