"""Issue 13: an attempt's state writes are one transaction, on every store, and a version is
never given twice to a key (so a compare-and-set after an expiry cannot hit a newer value).

The attack of the issue: scripts doing two read-modify-writes of different keys, from many
processes at once. Re-running an attempt after a conflict used to apply again the writes it
had committed before the conflict (37 for 20 writers on SQLite, 84 for 50 on Redis).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO
from orchestrator.stores.base import StateStore, StateWrite
from orchestrator.stores.memory import MemoryStateStore
from orchestrator.stores.sqlite import Database, SqliteStateStore

TWO_KEYS = """\
name: two_keys
state_management: {{storage_backend: {backend}}}
tasks:
  - name: writers
    type: for_loop
    iterate_over: "{{{{ range({per_process}) | list }}}}"
    max_concurrency: {per_process}
    tasks:
      - name: increment
        type: python_task
        script: |
          import time
          a = context.get_shared_state('a', 0)
          time.sleep(0.002)
          context.set_shared_state('a', a + 1)
          b = context.get_shared_state('b', 0)
          time.sleep(0.002)
          context.set_shared_state('b', b + 1)
          storage['c'] = storage.get('c', 0) + 1
          return context.update_shared_state('d', lambda n: n + 1, 0)
"""
READ = """\
name: read
state_management: {{storage_backend: {backend}}}
tasks:
  - name: read
    type: python_task
    script: return [context.get_shared_state(k) for k in 'abd']
"""


def run_many(
    tmp_path: Path, backend: str, processes: int, per_process: int, env: dict[str, str]
) -> list[int]:
    """`processes` runs of the two-key pipeline at once; then the counters a, b and d."""
    path = tmp_path / "two_keys.yaml"
    path.write_text(TWO_KEYS.format(backend=backend, per_process=per_process), encoding="utf-8")
    command = [sys.executable, "-m", "orchestrator", "run", str(path), "--json"]
    spawned = [
        subprocess.Popen(
            command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(processes)
    ]
    for process in spawned:
        _, stderr = process.communicate(timeout=110)
        assert process.returncode == 0, stderr
    reader = tmp_path / "read.yaml"
    reader.write_text(READ.format(backend=backend), encoding="utf-8")
    finished = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(reader), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 0, finished.stderr
    counts: list[int] = json.loads(finished.stdout)["outputs"]["read"]
    return counts


def test_two_read_modify_writes_from_sixty_writers_count_exactly_on_sqlite(tmp_path: Path) -> None:
    # GIVEN 20 processes, each with 3 concurrent iterations of two read-modify-writes
    env = {**os.environ, "ORCHESTRATOR_HOME": str(tmp_path / "home")}
    # WHEN they all run at once THEN every key counts each write exactly once
    assert run_many(tmp_path, "database", 20, 3, env) == [60, 60, 60]


def test_two_read_modify_writes_from_fifty_writers_count_exactly_on_redis(
    tmp_path: Path, redis_server: str
) -> None:
    import redis

    redis.Redis.from_url(redis_server).flushdb()
    # GIVEN 25 processes, each with 2 concurrent iterations, on one Redis
    env = {**os.environ, "ORCHESTRATOR_HOME": str(tmp_path / "home"), "ORCHESTRATOR_REDIS_URL": redis_server}
    # WHEN they all run at once THEN every key counts each write exactly once
    assert run_many(tmp_path, "redis", 25, 2, env) == [50, 50, 50]


# -- every store: commit is all or nothing, versions never repeat ---------------------------


@pytest.fixture
def dynamo_state(dynamodb_tables: dict[str, Any]) -> StateStore:
    from orchestrator.stores.dynamodb import DynamoStateStore

    return DynamoStateStore(dynamodb_tables["StateTable"], dynamodb_tables["client"])


@pytest.fixture(params=["memory", "sqlite", "redis", "dynamodb"])
def state_store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    kind: str = request.param
    if kind == "memory":
        return MemoryStateStore()
    if kind == "sqlite":
        return SqliteStateStore(Database(tmp_path / "state.db"))
    if kind == "redis":
        import redis

        from orchestrator.stores.redis import RedisStateStore

        client = redis.Redis.from_url(request.getfixturevalue("redis_server"))
        client.flushdb()
        return RedisStateStore(client)
    store: StateStore = request.getfixturevalue("dynamo_state")
    return store


def test_compare_and_sets_from_many_threads_count_exactly_on_every_store(state_store: StateStore) -> None:
    """Threads sharing one store (the embedded engine's, the emulated Lambdas' DynamoDB) lose
    no increment: a compare-and-set is atomic, also on moto (`atomic_dynamodb_writes`)."""
    import threading

    def add(times: int) -> None:
        for _ in range(times):
            while True:
                found = state_store.read("run:threads", "n")
                if state_store.compare_and_set("run:threads", "n", (found.value or 0) + 1, found.version):
                    break

    # GIVEN 8 threads each adding 1, 15 times, to one key by read then compare-and-set, taking
    # turns on the GIL as often as it lets them (so a check and its write are easily split)
    threads = [threading.Thread(target=add, args=(15,)) for _ in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    # THEN the key counts every one of them
    assert state_store.read("run:threads", "n").value == 120


def test_a_commit_with_one_stale_version_writes_nothing(state_store: StateStore) -> None:
    # GIVEN two keys read at their versions, and one of them changed by another writer since
    state_store.write("ns", "a", 1)
    state_store.write("ns", "b", 1)
    a, b = state_store.read("ns", "a"), state_store.read("ns", "b")
    state_store.write("ns", "b", 5)
    # WHEN an attempt commits new values for both, and a new key
    committed = state_store.commit(
        [
            StateWrite("ns", "a", a.value + 1, a.version, None),
            StateWrite("ns", "b", b.value + 1, b.version, None),
            StateWrite("ns", "c", "new", None, None),
        ]
    )
    # THEN nothing of it is written
    assert committed is False
    assert [state_store.read("ns", k).value for k in "abc"] == [1, 5, None]
    # AND the same commit from fresh reads writes all of it
    a, b = state_store.read("ns", "a"), state_store.read("ns", "b")
    assert state_store.commit(
        [
            StateWrite("ns", "a", a.value + 1, a.version, None),
            StateWrite("ns", "b", b.value + 1, b.version, None),
            StateWrite("ns", "c", "new", 0, None),
        ]
    )
    assert [state_store.read("ns", k).value for k in "abc"] == [2, 6, "new"]


def test_a_compare_and_set_after_an_expiry_never_hits_a_newer_value(state_store: StateStore) -> None:
    # GIVEN a key read at some version, which then expires
    for value in range(3):
        state_store.write("ns", "k", value, ttl=1)
    stale = state_store.read("ns", "k")
    deadline = time.monotonic() + 10
    while state_store.read("ns", "k").value is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    # WHEN other writers write it as often as it had been written, and more
    seen = {stale.version}
    for value in range(stale.version + 2):
        seen.add(state_store.write("ns", "k", f"newer {value}"))
    # THEN no version came back, and the stale compare-and-set fails
    assert len(seen) == stale.version + 3
    assert state_store.compare_and_set("ns", "k", "stale", stale.version) is None
    assert state_store.read("ns", "k").value == f"newer {stale.version + 1}"


Operation = tuple[str, int, bool]  # key, value, whether the write is conditional on a fresh read


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 9), st.booleans()), min_size=1, max_size=4),
        max_size=12,
    ),
    st.lists(st.sampled_from("abc"), max_size=12),
)
def test_commits_match_a_model_of_all_or_nothing(
    batches: list[list[Operation]], interleaved: list[str]
) -> None:
    """Property: against a plain model, each commit applies wholly or (on a stale version) not
    at all, on the in-memory and the SQLite store alike."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        stores: list[Callable[[], StateStore]] = [
            MemoryStateStore,
            lambda: SqliteStateStore(Database(Path(folder) / "s.db")),
        ]
        for make in stores:
            store = make()
            model: dict[str, Any] = {}
            for index, batch in enumerate(batches):
                reads = {key: store.read("ns", key) for key, _, _ in batch}
                if index < len(interleaved):  # another writer changes one key after the reads
                    key = interleaved[index]
                    store.write("ns", key, -1)
                    model[key] = -1
                writes = {key: (value, conditional) for key, value, conditional in batch}
                stale = any(
                    conditional and index < len(interleaved) and interleaved[index] == key
                    for key, (_, conditional) in writes.items()
                )
                committed = store.commit(
                    [
                        StateWrite("ns", key, value, reads[key].version if conditional else None, None)
                        for key, (value, conditional) in writes.items()
                    ]
                )
                assert committed is not stale
                if committed:
                    model.update({key: value for key, (value, _) in writes.items()})
                assert {key: store.read("ns", key).value for key in "abc"} == {k: model.get(k) for k in "abc"}
