"""Issue 5 / SPEC 8 on AWS: DynamoDB state is compare-and-set on a version; TTL is honoured."""

from __future__ import annotations

import time
from typing import Any

import pytest

from orchestrator.stores.dynamodb import DynamoCacheStore, DynamoRunStore, DynamoStateStore


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
