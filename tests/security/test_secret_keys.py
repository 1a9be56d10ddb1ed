"""Issue 13: secrets and sensitive inputs used as keys (state keys, `storage[...]` keys,
`set_cache` / `set_task_cache` keys, a rendered `cache_key`) are never stored in clear, on
SQLite, Redis or DynamoDB; the same key finds its entry again, in the same and later runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.runtime.context import RunInfo, stored_key
from orchestrator.runtime.leaf import Services, run_leaf
from orchestrator.runtime.redact import Redactor
from orchestrator.runtime.scope import Scope
from orchestrator.settings import load_settings
from orchestrator.spec.models import PythonTask
from orchestrator.stores.base import Stores
from orchestrator.stores.memory import MemoryAuditLog, MemoryRunStore

SECRET = "Zk9-secret-Qx7"
TOKEN = "tok-5501-sensitive"

KEYED = """\
name: keyed
state_management: {{persistence: true, storage_backend: {backend}}}
input_variables:
  token: {{type: string, sensitive: true}}
tasks:
  - name: write
    type: python_task
    cache_key: "result-{{{{ token }}}}"
    script: |
      secret = context.get_secret('api')
      token = inputs['token']
      context.set_shared_state(f'user-{{token}}', 1)
      context.set_persistent_state(f'p-{{secret}}', 2)
      storage[f's-{{secret}}'] = 3
      context.set_cache(f'c-{{token}}', 4)
      context.set_task_cache(f't-{{secret}}-{{token}}', 5)
      return 'written'
  - name: read
    type: python_task
    depends_on: [write]
    script: |
      secret = context.get_secret('api')
      token = inputs['token']
      return [context.get_shared_state(f'user-{{token}}'), context.get_persistent_state(f'p-{{secret}}'),
              storage.get(f's-{{secret}}'), context.get_cache(f'c-{{token}}'),
              context.get_task_cache(f't-{{secret}}-{{token}}')]
"""


def run_twice(tmp_path: Path, backend: str, env: dict[str, str]) -> list[dict[str, Any]]:
    path = tmp_path / "keyed.yaml"
    path.write_text(KEYED.format(backend=backend), encoding="utf-8")
    documents = []
    for _ in range(2):
        finished = subprocess.run(
            [sys.executable, "-m", "orchestrator", "run", str(path), "--json", "-i", f"token={TOKEN}"],
            env={**env, "ORCHESTRATOR_SECRET_API": SECRET, "ORCHESTRATOR_HOME": str(tmp_path / "home")},
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert finished.returncode == 0, finished.stderr
        documents.append(json.loads(finished.stdout))
    return documents


def assert_found_again(documents: list[dict[str, Any]]) -> None:
    first, second = documents
    assert first["tasks"]["write"]["status"] == "succeeded"
    assert first["outputs"]["read"] == [1, 2, 3, 4, None]  # the task cache is the writer's own
    assert second["tasks"]["write"]["status"] == "cached"  # the rendered cache_key, found again
    assert second["outputs"]["read"] == [1, 2, 3, 4, None]


def test_secret_keys_are_not_stored_in_clear_in_sqlite(tmp_path: Path) -> None:
    # GIVEN a pipeline that keys every kind of entry with a secret or a sensitive input
    # WHEN it runs twice
    documents = run_twice(tmp_path, "database", dict(os.environ))
    # THEN every entry was found again by its key
    assert_found_again(documents)
    # AND no file of the state folder holds either value, in any encoding
    stored = b"".join(p.read_bytes() for p in sorted((tmp_path / "home").rglob("*")) if p.is_file())
    for value in (SECRET, TOKEN):
        for encoded in (value.encode(), value.encode("utf-16-le"), json.dumps(value).encode()):
            assert encoded not in stored
    # AND a listing shows where the value was, masked, with its digest
    import sqlite3

    with sqlite3.connect(tmp_path / "home" / "state.db") as connection:
        keys = [row[0] for row in connection.execute("SELECT key FROM state")]
    assert any(key.startswith("user-***#") for key in keys), keys


def test_secret_keys_are_not_stored_in_clear_in_redis(tmp_path: Path, redis_server: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    # GIVEN the same pipeline on Redis WHEN it runs twice THEN every entry was found again
    env = {**os.environ, "ORCHESTRATOR_REDIS_URL": redis_server}
    assert_found_again(run_twice(tmp_path, "redis", env))
    # AND no Redis key or value holds either value
    everything = b""
    for key in client.scan_iter("*"):
        everything += key
        everything += client.dump(key) or b""
    assert everything
    for value in (SECRET, TOKEN):
        assert value.encode() not in everything


@pytest.fixture
def dynamo_stores(dynamodb_tables: dict[str, Any]) -> Iterator[tuple[Stores, Any]]:
    from orchestrator.stores.dynamodb import DynamoCacheStore, DynamoStateStore

    client, names = dynamodb_tables["client"], dynamodb_tables

    class Secrets:
        def get(self, name: str) -> str | None:
            return SECRET if name == "api" else None

    stores = Stores(
        DynamoStateStore(names["StateTable"], client),
        DynamoCacheStore(names["CacheTable"], client),
        MemoryAuditLog(),
        MemoryRunStore(),
        Secrets(),
    )
    yield stores, client


def test_secret_keys_are_not_stored_in_clear_in_dynamodb(dynamo_stores: tuple[Stores, Any]) -> None:
    stores, client = dynamo_stores
    redactor = Redactor()
    redactor.add(TOKEN)  # a sensitive input, as both engines register it
    run = RunInfo("run-1", "keyed", "me", stores, redactor, persistence=True)
    script = KEYED.format(backend="dynamodb").split("script: |\n", 1)[1].split("  - name: read", 1)[0]
    task = PythonTask(
        name="write", type="python_task", script="\n".join(line[6:] for line in script.splitlines())
    )
    # GIVEN the pipeline's writing script, run as a task Lambda runs it
    # WHEN it runs
    assert run_leaf(task, "write", Scope({}), run, Services(load_settings()), {"token": TOKEN}) == "written"
    # THEN no item of any table holds either value
    everything = ""
    for table in client.list_tables()["TableNames"]:
        everything += json.dumps(client.scan(TableName=table)["Items"])
    assert "user-***#" in everything
    for value in (SECRET, TOKEN):
        assert value not in everything


@settings(max_examples=300, deadline=None)
@given(
    st.text(min_size=4, max_size=40).filter(lambda s: s.strip() == s and "*" not in s),
    st.text(max_size=20),
    st.text(max_size=20),
)
def test_a_stored_key_never_holds_the_secret_and_is_stable(secret: str, before: str, after: str) -> None:
    """Property: whatever surrounds a secret in a key, the stored key does not contain it, the
    same key always gives the same stored key, and two different keys never share one."""
    redactor = Redactor()
    redactor.add(secret)
    key = before + secret + after
    stored = stored_key(key, redactor)
    assert secret not in stored
    assert stored == stored_key(key, redactor)
    assert stored != stored_key(key + "x", redactor)
    assert stored_key("plain", Redactor()) == "plain"
