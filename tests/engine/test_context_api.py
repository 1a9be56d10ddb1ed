"""SPEC section 8 through the CLI: the `context` object, `inputs` and `storage` that scripts get."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import CliResult, spec_record
from orchestrator.settings import load_settings
from orchestrator.stores.factory import open_stores

Cli = Callable[..., CliResult]
Write = Callable[..., Path]

SECRET = "hunter2-S3CR3T-value"
SENSITIVE = "sk-LIVE-sensitive-999"


def run_json(cli: Cli, path: Path, *arguments: str) -> tuple[int, dict[str, Any]]:
    result = cli("run", path, "--json", *arguments)
    assert result.stdout.strip(), result.stderr
    return result.code, result.document()


# -- task outputs and loops ------------------------------------------------------------------


def test_get_task_output_returns_outputs_and_defaults(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8: `get_task_output(name, default=None)` reads this run's outputs; the default is
    returned for a task without output (skipped) and for a name that is not a task."""
    # GIVEN a producer, a skipped task and a reader that asks for all of them
    path = write_pipeline(
        """
        name: outputs
        tasks:
          - name: producer
            type: python_task
            script: 'return {"value": 41}'
          - name: skipped
            type: python_task
            condition: "False"
            script: return "never"
          - name: reader
            type: python_task
            script: |
              unknown = "not_" + "a_task"
              return {
                  "value": context.get_task_output("producer")["value"] + 1,
                  "skipped": context.get_task_output("skipped", "dflt"),
                  "skipped_none": context.get_task_output("skipped"),
                  "unknown": context.get_task_output(unknown, [1]),
              }
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN the reader saw the output, and the defaults where there was none
    assert code == 0, document
    assert document["outputs"]["reader"] == {
        "value": 42,
        "skipped": "dflt",
        "skipped_none": None,
        "unknown": [1],
    }


def test_get_task_output_inside_a_loop_reads_the_iteration_first(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 3 and 8: inside a loop body, names refer to the current iteration's tasks first,
    then outward (`get_task_output` is 'this run (iteration first)')."""
    # GIVEN an outer task `value` and a loop whose body has its own task `value`
    path = write_pipeline(
        """
        name: shadowing
        tasks:
          - name: value
            type: python_task
            script: return "outer"
          - name: base
            type: python_task
            script: return 100
          - name: loop
            type: for_loop
            depends_on: [value]
            iterate_over: [1, 2, 3]
            tasks:
              - name: value
                type: python_task
                script: return {{ item }} * 10
              - name: reader
                type: python_task
                script: |
                  return [context.get_task_output("value"), context.get_task_output("base"), "{{ value }}"]
          - name: after
            type: python_task
            depends_on: [loop]
            script: return context.get_task_output("value")
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN each iteration's reader saw its own `value`, and outer names outside the body
    assert code == 0, document
    readers = [entry["reader"] for entry in document["outputs"]["loop"]]
    assert readers == [[10, 100, "10"], [20, 100, "20"], [30, 100, "30"]]
    assert document["outputs"]["after"] == "outer"


def test_loop_variable_and_iteration_in_a_for_loop(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8: `get_loop_variable(name, default)` and `get_loop_iteration()` (0-based) in a for_loop."""
    # GIVEN a for_loop with a custom item variable and a default-named one
    path = write_pipeline(
        """
        name: for_vars
        tasks:
          - name: named
            type: for_loop
            iterate_over: ["a", "b", "c"]
            item_variable: fruit
            tasks:
              - name: probe
                type: python_task
                script: |
                  return [context.get_loop_variable("fruit"), context.get_loop_iteration(),
                          context.get_loop_variable("absent", "dflt")]
          - name: plain
            type: for_loop
            iterate_over: [{"k": 1}, {"k": 2}]
            tasks:
              - name: probe
                type: python_task
                script: return [context.get_loop_variable("item"), context.get_loop_iteration()]
          - name: outside
            type: python_task
            script: return [context.get_loop_variable("item", "none"), context.get_loop_iteration()]
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN each iteration saw its own item and its 0-based index
    assert code == 0, document
    outputs = document["outputs"]
    assert [e["probe"] for e in outputs["named"]] == [["a", 0, "dflt"], ["b", 1, "dflt"], ["c", 2, "dflt"]]
    assert [e["probe"] for e in outputs["plain"]] == [[{"k": 1}, 0], [{"k": 2}, 1]]
    assert outputs["outside"] == ["none", 0]


def test_loop_variable_and_iteration_in_a_while_loop(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8: in a while_loop, `get_loop_variable(name, default)` reads `loop_state` (the last
    body task's output of the previous iteration) and `get_loop_iteration()` counts from 0."""
    # GIVEN a while_loop whose last body task counts through loop_state
    path = write_pipeline(
        """
        name: while_vars
        tasks:
          - name: loop
            type: while_loop
            condition: "not loop_state.done"
            max_iterations: 10
            tasks:
              - name: step
                type: python_task
                script: |
                  count = context.get_loop_variable("count", 0) + 1
                  return {"count": count, "seen": context.get_loop_iteration(), "done": count >= 3}
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN three iterations ran, each seeing the previous state and its own index
    assert code == 0, document
    assert document["outputs"]["loop"] == {
        "iterations": 3,
        "state": {"count": 3, "seen": 2, "done": True},
    }


# -- state -----------------------------------------------------------------------------------

COUNTER = """
name: {name}
state_management:
  persistence: {persistence}
tasks:
  - name: bump
    type: python_task
    script: |
      count = context.get_persistent_state("count", 0) + 1
      context.set_persistent_state("count", count)
      return count
  - name: again
    type: python_task
    depends_on: [bump]
    script: return context.get_persistent_state("count")
"""


def test_persistent_state_is_run_scoped_without_persistence(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8: persistent state is 'this pipeline, across runs when persistence is true (else this run)'."""
    # GIVEN a pipeline without persistence that counts in persistent state
    path = write_pipeline(COUNTER.format(name="counter", persistence="false"), name="counter")
    # WHEN it runs twice
    first = run_json(cli, path)[1]["outputs"]
    second = run_json(cli, path)[1]["outputs"]
    # THEN a later task of the same run sees the write, the next run starts afresh
    assert first == {"bump": 1, "again": 1}
    assert second == {"bump": 1, "again": 1}


def test_persistent_state_survives_runs_with_persistence(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8: with `state_management.persistence: true` the state is kept across runs."""
    # GIVEN the same counter with persistence on
    path = write_pipeline(COUNTER.format(name="counter", persistence="true"), name="counter")
    # WHEN it runs twice
    first = run_json(cli, path)[1]["outputs"]
    second = run_json(cli, path)[1]["outputs"]
    # THEN the second run continues from the first
    assert first == {"bump": 1, "again": 1}
    assert second == {"bump": 2, "again": 2}


def test_persistent_state_is_per_pipeline(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8: persistent state belongs to 'this pipeline': another pipeline does not see it."""
    # GIVEN two pipelines with persistence counting the same key
    first = write_pipeline(COUNTER.format(name="one", persistence="true"), name="one")
    second = write_pipeline(COUNTER.format(name="two", persistence="true"), name="two")
    # WHEN each runs once
    one = run_json(cli, first)[1]["outputs"]
    two = run_json(cli, second)[1]["outputs"]
    # THEN each counted from zero
    assert one["bump"] == 1
    assert two["bump"] == 1


def test_persistent_state_expires_after_the_state_ttl(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8: persistent state 'expires after `state_management.ttl`'."""
    # GIVEN a pipeline whose state lives 0.1 s
    path = write_pipeline(
        """
        name: short_lived
        state_management:
          persistence: true
          ttl: 0.1
        tasks:
          - name: write
            type: python_task
            script: |
              import time
              context.set_persistent_state("k", "v")
              fresh = context.get_persistent_state("k")
              time.sleep(0.15)
              return [fresh, context.get_persistent_state("k", "expired")]
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN the value was there at once and gone after the ttl
    assert code == 0, document
    assert document["outputs"]["write"] == ["v", "expired"]


def test_shared_and_global_state_are_one_namespace_across_pipelines(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8: shared state is 'every pipeline, across runs'; global state is the same store and namespace."""
    # GIVEN a writer pipeline using both APIs and a reader pipeline using the other one
    writer = write_pipeline(
        """
        name: writer
        tasks:
          - name: write
            type: python_task
            script: |
              context.set_shared_state("via_shared", {"n": 1})
              context.set_global_state("via_global", [2])
              return [context.get_global_state("via_shared"), context.get_shared_state("via_global")]
        """,
        name="writer",
    )
    reader = write_pipeline(
        """
        name: reader
        tasks:
          - name: read
            type: python_task
            script: |
              return [context.get_global_state("via_shared"), context.get_shared_state("via_global"),
                      context.get_shared_state("absent", "dflt")]
        """,
        name="reader",
    )
    # WHEN the writer runs and then the reader
    written = run_json(cli, writer)[1]["outputs"]["write"]
    read = run_json(cli, reader)[1]["outputs"]["read"]
    # THEN both names read the same values, in the same run and in another pipeline's run
    assert written == [{"n": 1}, [2]]
    assert read == [{"n": 1}, [2], "dflt"]


def test_update_shared_state_is_an_atomic_read_modify_write(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8: `update_shared_state(k, fn, default)` is an atomic read-modify-write."""
    # GIVEN 30 concurrent iterations that each add 1 through update_shared_state
    path = write_pipeline(
        """
        name: updates
        tasks:
          - name: first
            type: python_task
            script: |
              return context.update_shared_state("total", lambda value: value + 5, 10)
          - name: loop
            type: for_loop
            depends_on: [first]
            iterate_over: "{{ range(30) | list }}"
            max_concurrency: 10
            tasks:
              - name: add
                type: python_task
                script: |
                  import time
                  def bump(value):
                      time.sleep(0.002)
                      return value + 1
                  return context.update_shared_state("total", bump, 0)
          - name: total
            type: python_task
            depends_on: [loop]
            script: return context.get_shared_state("total")
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN the first update used the default, and no concurrent update was lost
    assert code == 0, document
    assert document["outputs"]["first"] == 15
    assert document["outputs"]["total"] == 45
    assert sorted(entry["add"] for entry in document["outputs"]["loop"]) == list(range(16, 46))


def test_no_lost_updates_for_the_guides_read_modify_write(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8 'No lost updates': a set after a get in the same attempt is a compare-and-set; a
    conflicting attempt is re-run automatically, not counted against retry_count."""
    # GIVEN 40 iterations, 10 at a time, each doing the guide's unguarded read-modify-write
    path = write_pipeline(
        """
        name: lost_updates
        tasks:
          - name: loop
            type: for_loop
            iterate_over: "{{ range(40) | list }}"
            max_concurrency: 10
            tasks:
              - name: increment
                type: python_task
                script: |
                  import time
                  m = context.get_shared_state('n', 0)
                  time.sleep(0.005)
                  context.set_shared_state('n', m + 1)
                  return m + 1
          - name: final
            type: python_task
            depends_on: [loop]
            script: return context.get_shared_state('n')
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN every increment counted exactly once
    assert code == 0, document
    assert document["outputs"]["final"] == 40
    assert sorted(entry["increment"] for entry in document["outputs"]["loop"]) == list(range(1, 41))
    assert spec_record(document["tasks"]["loop"]) == {"status": "succeeded", "attempts": 1, "error": None}


def test_no_lost_updates_across_concurrent_runs(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8: the guide's read-modify-write is safe under concurrent runs; SPEC 11: concurrent
    runs on one machine share the local state folder safely."""
    # GIVEN a pipeline doing 20 unguarded increments of shared state, 5 at a time
    path = write_pipeline(
        """
        name: concurrent_runs
        tasks:
          - name: loop
            type: for_loop
            iterate_over: "{{ range(20) | list }}"
            max_concurrency: 5
            tasks:
              - name: increment
                type: python_task
                script: |
                  import time
                  m = context.get_shared_state('n', 0)
                  time.sleep(0.003)
                  context.set_shared_state('n', m + 1)
        """,
        name="incrementer",
    )
    reader = write_pipeline(
        """
        name: reader
        tasks:
          - name: read
            type: python_task
            script: return context.get_shared_state('n')
        """,
        name="reader",
    )
    # WHEN two processes run it at the same time on this test's state folder (ORCHESTRATOR_HOME)
    command = [sys.executable, "-m", "orchestrator", "run", str(path), "--json"]
    processes = [
        subprocess.Popen(
            command, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    finished = [process.communicate(timeout=60) for process in processes]
    # THEN both succeeded and all 40 increments are counted
    assert [process.returncode for process in processes] == [0, 0], finished
    code, document = run_json(cli, reader)
    assert code == 0, document
    assert document["outputs"]["read"] == 40


def test_state_writes_are_kept_when_the_attempt_then_fails(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8 last paragraph: state writes take effect at once and are kept even if the attempt
    fails afterwards (the guide's circuit breaker records a failure and then raises)."""
    # GIVEN the guide's circuit breaker against a service that always fails, retried twice
    path = write_pipeline(
        """
        name: breaker
        tasks:
          - name: external_service_call
            type: python_task
            error_handling:
              retry_count: 2
              retry_delay: 0
              on_failure: continue_with_degraded_service
            script: |
              circuit_state = context.get_global_state('circuit_breaker', {
                  'failures': 0, 'last_failure': None, 'state': 'closed'})
              if circuit_state['state'] == 'open':
                  raise Exception("Circuit breaker is open")
              try:
                  raise Exception("External service error")
              except Exception as e:
                  circuit_state['failures'] += 1
                  circuit_state['last_failure'] = datetime.now().isoformat()
                  if circuit_state['failures'] >= 3:
                      circuit_state['state'] = 'open'
                  context.set_global_state('circuit_breaker', circuit_state)
                  raise e
          - name: inspect
            type: python_task
            depends_on: [external_service_call]
            script: return context.get_global_state('circuit_breaker')
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN all three failed attempts recorded their failure and the breaker opened
    assert code == 0, document
    assert document["status"] == "degraded"
    assert document["tasks"]["external_service_call"]["attempts"] == 3
    state = document["outputs"]["inspect"]
    assert state["failures"] == 3
    assert state["state"] == "open"
    assert state["last_failure"]


# -- caches ----------------------------------------------------------------------------------


def test_task_cache_is_per_task_across_runs(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8: `get_task_cache(k)` / `set_task_cache(k, v, ttl)` belong to this task of this
    pipeline, across runs; a ttl expires the entry."""
    # GIVEN a task that fills its cache on a miss, and another task reading the same key
    path = write_pipeline(
        """
        name: token
        tasks:
          - name: fetch
            type: python_task
            script: |
              import time
              token = context.get_task_cache("api_token")
              hit = token is not None
              if not hit:
                  token = "token-" + context.get_execution_id()
                  context.set_task_cache("api_token", token)
              context.set_task_cache("short", "soon gone", ttl=0.05)
              fresh = context.get_task_cache("short")
              time.sleep(0.12)
              return {"hit": hit, "token": token, "fresh": fresh, "expired": context.get_task_cache("short")}
          - name: other
            type: python_task
            depends_on: [fetch]
            script: return context.get_task_cache("api_token")
        """
    )
    # WHEN it runs twice
    code, first = run_json(cli, path)
    code2, second = run_json(cli, path)
    # THEN the second run hits the first run's entry, the other task never sees it,
    # and the short-lived entry expired
    assert (code, code2) == (0, 0)
    assert first["outputs"]["fetch"] == {
        "hit": False,
        "token": "token-" + first["run_id"],
        "fresh": "soon gone",
        "expired": None,
    }
    assert second["outputs"]["fetch"]["hit"] is True
    assert second["outputs"]["fetch"]["token"] == "token-" + first["run_id"]
    assert first["outputs"]["other"] is None
    assert second["outputs"]["other"] is None


def test_global_cache_is_shared_by_every_pipeline_with_ttl(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8: `get_cache(k)` / `set_cache(k, v, ttl)` are shared by every pipeline."""
    # GIVEN one pipeline that writes two entries (one short-lived) and another that reads them
    writer = write_pipeline(
        """
        name: cache_writer
        tasks:
          - name: put
            type: python_task
            script: |
              context.set_cache("result:42", {"answer": 42}, ttl=7200)
              context.set_cache("flash", "gone soon", ttl=0.05)
              return context.get_cache("flash")
        """,
        name="cache_writer",
    )
    reader = write_pipeline(
        """
        name: cache_reader
        tasks:
          - name: get
            type: python_task
            script: |
              import time
              time.sleep(0.12)
              return [context.get_cache("result:42"), context.get_cache("flash"),
                      context.get_cache("absent", "dflt")]
        """,
        name="cache_reader",
    )
    # WHEN the writer runs, then the reader
    written = run_json(cli, writer)[1]["outputs"]["put"]
    read = run_json(cli, reader)[1]["outputs"]["get"]
    # THEN the long-lived entry is seen by the other pipeline, the short one has expired
    assert written == "gone soon"
    assert read == [{"answer": 42}, None, "dflt"]


# -- secrets and redaction -------------------------------------------------------------------


def test_get_secret_reads_the_environment(
    cli: Cli, write_pipeline: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC 8: locally, `get_secret(name)` reads `ORCHESTRATOR_SECRET_<NAME>` (name upper-cased)."""
    # GIVEN a secret in the environment
    monkeypatch.setenv("ORCHESTRATOR_SECRET_DATABASE_PASSWORD", SECRET)
    path = write_pipeline(
        """
        name: secrets
        tasks:
          - name: use
            type: python_task
            script: |
              value = context.get_secret("database_password")
              return {"length": len(value), "matches": value == "hunter2-" + "S3CR3T-value"}
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN the script received the value
    assert code == 0, document
    assert document["outputs"]["use"] == {"length": len(SECRET), "matches": True}


def test_get_secret_falls_back_to_the_local_secrets_file(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8: off AWS, a secret not in the environment comes from the local secrets file
    (secrets.yaml in the state folder), and its value is redacted too."""
    # GIVEN a secrets file readable only by its owner
    home = Path(os.environ["ORCHESTRATOR_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    secrets = home / "secrets.yaml"
    secrets.write_text(f"file_secret: {SECRET}\n", encoding="utf-8")
    secrets.chmod(0o600)
    path = write_pipeline(
        """
        name: file_secret
        tasks:
          - name: use
            type: python_task
            script: |
              value = context.get_secret("file_secret")
              return [len(value), value]
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN the script got the value and the document shows it masked
    assert code == 0, document
    assert document["outputs"]["use"] == [len(SECRET), "***"]


def test_missing_secret_is_a_clear_task_error_that_is_not_retried(
    cli: Cli, write_pipeline: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC 8: a missing secret is a clear task error; decisions 'Non-retryable errors': not retried."""
    # GIVEN no such secret and a task that would retry twice
    monkeypatch.delenv("ORCHESTRATOR_SECRET_API_TOKEN", raising=False)
    path = write_pipeline(
        """
        name: no_secret
        tasks:
          - name: use
            type: python_task
            error_handling:
              retry_count: 2
              retry_delay: 0
            script: return context.get_secret("api_token")
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN it failed once, naming the variable to set
    assert code == 1
    assert document["status"] == "failed"
    assert document["error"]["task"] == "use"
    assert document["error"]["type"] == "SecretNotFound"
    assert "ORCHESTRATOR_SECRET_API_TOKEN" in document["error"]["message"]
    assert document["tasks"]["use"]["attempts"] == 1


REDACTED = """
name: leaky
input_variables:
  api_key: {type: string, sensitive: true}
  region: {type: string, default: eu-west-1}
tasks:
  - name: leak_return
    type: python_task
    script: |
      secret = context.get_secret("db_password")
      return {"secret": secret, "framed": f"pw=<{secret}>", "key": "{{ api_key }}",
              "inputs": inputs, "region": "{{ region }}"}
  - name: leak_audit
    type: python_task
    script: |
      context.log_audit_event({"action": "login", "password": context.get_secret("db_password"),
                               "key": inputs["api_key"]})
      return "audited"
  - name: leak_raise
    type: python_task
    depends_on: [leak_return, leak_audit]
    error_handling:
      on_failure: continue_with_degraded_service
      fallback_value: "{{ api_key }}"
    script: |
      raise ValueError("cannot connect with " + context.get_secret("db_password") + " / {{ api_key }}")
  - name: leak_abort
    type: python_task
    depends_on: [leak_raise]
    script: |
      raise RuntimeError("abort with " + context.get_secret("db_password"))
outputs:
  key: "{{ api_key }}"
"""


def test_secrets_and_sensitive_inputs_never_appear_in_cli_output_or_records(
    cli: Cli, write_pipeline: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC 2 and 8: a secret's value and sensitive inputs are redacted (`***`) wherever they
    would appear in outputs, errors, run records and audit entries."""
    # GIVEN a secret and a sensitive input that tasks return, raise and audit
    monkeypatch.setenv("ORCHESTRATOR_SECRET_DB_PASSWORD", SECRET)
    path = write_pipeline(REDACTED, name="leaky")
    # WHEN it runs, with and without --json
    result = cli("run", path, "--json", "-i", f"api_key={SENSITIVE}")
    plain = cli("run", path, "-i", f"api_key={SENSITIVE}")
    # THEN neither value appears anywhere in what the CLI printed
    for printed in (result.stdout, result.stderr, plain.stdout, plain.stderr):
        assert SECRET not in printed
        assert SENSITIVE not in printed
    document = result.document()
    assert result.code == 1
    outputs = document["outputs"]
    assert outputs["leak_return"] == {
        "secret": "***",
        "framed": "pw=<***>",
        "key": "***",
        "inputs": {"api_key": "***", "region": "eu-west-1"},
        "region": "eu-west-1",
    }
    assert outputs["leak_raise"] == "***"
    assert document["tasks"]["leak_raise"]["error"] == {
        "type": "ValueError",
        "message": "cannot connect with *** / *** (script line 1)",
    }
    assert document["error"]["type"] == "RuntimeError"
    assert "***" in document["error"]["message"]
    # AND the stored run record and the audit entries hold no plain value either
    stores = open_stores(load_settings())
    text = repr(stores.runs.load(document["run_id"])) + repr(stores.audit.query(pipeline="leaky"))
    assert SECRET not in text
    assert SENSITIVE not in text
    entries = stores.audit.query(run=document["run_id"])
    assert [(e["action"], e["password"], e["key"]) for e in entries] == [("login", "***", "***")]


def test_sensitive_variables_listed_under_security_are_redacted(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 2: inputs named in `security.sensitive_variables` are never printed either."""
    # GIVEN an input made sensitive through the security section
    path = write_pipeline(
        """
        name: listed
        security:
          sensitive_variables: [token]
        input_variables:
          token: {type: string}
        tasks:
          - name: echo
            type: python_task
            script: return "token={{ token }}"
        """
    )
    # WHEN it runs
    result = cli("run", path, "--json", "-i", f"token={SENSITIVE}")
    # THEN the value is masked
    assert SENSITIVE not in result.stdout + result.stderr
    assert result.document()["outputs"]["echo"] == "token=***"


def test_script_print_goes_to_stderr_redacted_and_stdout_stays_the_document(
    cli: Cli, write_pipeline: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC 11: `run --json` prints exactly one JSON document on stdout (progress goes to stderr);
    SPEC 2 and 8: what a script prints never shows a secret or a sensitive input."""
    # GIVEN a script that prints both values, once to stderr
    monkeypatch.setenv("ORCHESTRATOR_SECRET_DB_PASSWORD", SECRET)
    path = write_pipeline(
        """
        name: chatty
        input_variables:
          api_key: {type: string, sensitive: true}
        tasks:
          - name: talk
            type: python_task
            script: |
              import sys
              print("processing", context.get_secret("db_password"))
              print("key", inputs["api_key"], file=sys.stderr)
              return 1
        """
    )
    # WHEN it runs with --json
    result = cli("run", path, "--json", "-i", f"api_key={SENSITIVE}")
    # THEN stdout is still exactly the run document, and the printed lines are masked
    assert result.document()["outputs"] == {"talk": 1}
    assert "processing ***" in result.stderr
    assert "key ***" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert SENSITIVE not in result.stdout + result.stderr


def test_script_writing_to_sys_stdout_cannot_break_the_document(
    cli: Cli, write_pipeline: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC 11: `run --json` prints exactly one JSON document on stdout; SPEC 8: a secret is
    redacted wherever it would appear."""
    # GIVEN a script writing a secret straight to sys.stdout
    monkeypatch.setenv("ORCHESTRATOR_SECRET_DB_PASSWORD", SECRET)
    path = write_pipeline(
        """
        name: raw_writer
        tasks:
          - name: talk
            type: python_task
            script: |
              import sys
              sys.stdout.write("using " + context.get_secret("db_password") + "\\n")
              return 1
        """
    )
    # WHEN it runs with --json
    result = cli("run", path, "--json")
    # THEN stdout is only the document and the secret is nowhere
    assert SECRET not in result.stdout + result.stderr
    assert result.document()["outputs"] == {"talk": 1}


def test_secrets_logged_by_a_script_are_redacted(write_pipeline: Write, tmp_path: Path) -> None:
    """SPEC 2 and 8: sensitive inputs are never logged; a secret is redacted wherever it would
    appear in logs. (A real process: pytest's own log capture would hide the leak in process.)"""
    # GIVEN a script that logs both values with the logging module
    path = write_pipeline(
        """
        name: logs
        input_variables:
          api_key: {type: string, sensitive: true}
        tasks:
          - name: talk
            type: python_task
            script: |
              import logging
              logging.getLogger("pipeline").warning("using %s", context.get_secret("db_password"))
              logging.getLogger("pipeline").warning("key %s", inputs["api_key"])
              return "done"
        """
    )
    environment = {
        **os.environ,
        "ORCHESTRATOR_HOME": str(tmp_path / "home"),
        "ORCHESTRATOR_SECRET_DB_PASSWORD": SECRET,
    }
    # WHEN it runs as a real command
    finished = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(path), "--json", "-i", f"api_key={SENSITIVE}"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )
    # THEN neither value reached the terminal
    assert finished.returncode == 0, finished.stderr
    assert SECRET not in finished.stdout + finished.stderr
    assert SENSITIVE not in finished.stdout + finished.stderr


# -- ids, audit, storage, inputs ------------------------------------------------------------


def test_ids_match_the_run_document_and_the_user_flag(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8: `get_pipeline_id()` (the file stem), `get_execution_id()` (the run id) and
    `get_user_id()` (the trigger's identity: `--user`)."""
    # GIVEN a task returning every id
    path = write_pipeline(
        """
        name: Display Name
        tasks:
          - name: ids
            type: python_task
            script: |
              return {"pipeline": context.get_pipeline_id(), "execution": context.get_execution_id(),
                      "user": context.get_user_id(), "run": "{{ run.id }}", "stem": "{{ run.pipeline }}"}
        """,
        name="ids_pipeline",
    )
    # WHEN it runs as alice
    code, document = run_json(cli, path, "--user", "alice")
    # THEN the ids are the document's
    assert code == 0, document
    assert document["outputs"]["ids"] == {
        "pipeline": "ids_pipeline",
        "execution": document["run_id"],
        "user": "alice",
        "run": document["run_id"],
        "stem": "ids_pipeline",
    }


def test_user_defaults_to_the_os_user(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8: without `--user` the user is the OS user."""
    import getpass

    path = write_pipeline(
        """
        name: who
        tasks:
          - name: who
            type: python_task
            script: return context.get_user_id()
        """
    )
    code, document = run_json(cli, path)
    assert code == 0
    assert document["outputs"]["who"] == getpass.getuser()


def test_audit_events_are_appended_and_queryable_per_run(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8: `log_audit_event(dict)` appends to an audit log queryable per pipeline and run."""
    # GIVEN the guide's audit task
    path = write_pipeline(
        """
        name: audited
        tasks:
          - name: audit_log
            type: python_task
            script: |
              import hashlib
              context.log_audit_event({
                  "pipeline_id": context.get_pipeline_id(),
                  "execution_id": context.get_execution_id(),
                  "timestamp": datetime.now().isoformat(),
                  "user_id": context.get_user_id(),
                  "input_hash": hashlib.sha256(b"x").hexdigest(),
              })
              context.log_audit_event({"step": 2})
              return {"audit_logged": True}
        """,
        name="audited",
    )
    # WHEN it runs twice
    first = run_json(cli, path, "--user", "bob")[1]
    second = run_json(cli, path, "--user", "bob")[1]
    # THEN each run's entries are found by run, and both runs' by pipeline
    assert first["outputs"]["audit_log"] == {"audit_logged": True}
    audit = open_stores(load_settings()).audit
    entries = audit.query(run=first["run_id"])
    assert len(entries) == 2
    assert entries[0]["execution_id"] == first["run_id"]
    assert entries[0]["user_id"] == "bob"
    assert entries[1]["step"] == 2
    assert len(audit.query(pipeline="audited")) == 4
    assert len(audit.query(run=second["run_id"])) == 2


def test_storage_is_the_persistent_state_under_the_storage_prefix(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8: `storage` is a dict-like view of the pipeline's persistent state under `storage/`."""
    # GIVEN a task writing through storage[...] and a later task reading persistent state
    path = write_pipeline(
        """
        name: stored
        tasks:
          - name: write
            type: python_task
            script: |
              storage["item_1"] = {"score": 0.9}
              storage["item_2"] = [1, 2]
              return [storage["item_1"], storage.get("missing", "dflt"), "item_2" in storage]
          - name: read
            type: python_task
            depends_on: [write]
            script: |
              return [context.get_persistent_state("storage/item_1"),
                      context.get_persistent_state("storage/item_2"),
                      context.get_persistent_state("item_1", "not without prefix")]
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN the writes are the persistent state keys with the prefix
    assert code == 0, document
    assert document["outputs"]["write"] == [{"score": 0.9}, "dflt", True]
    assert document["outputs"]["read"] == [{"score": 0.9}, [1, 2], "not without prefix"]


def test_storage_persists_across_runs_with_persistence(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8: `storage` is the pipeline's persistent state, so with persistence it is kept across runs."""
    path = write_pipeline(
        """
        name: stored_runs
        state_management:
          persistence: true
        tasks:
          - name: visit
            type: python_task
            script: |
              seen = storage.get("visits", 0) + 1
              storage["visits"] = seen
              return seen
        """
    )
    assert [run_json(cli, path)[1]["outputs"]["visit"] for _ in range(3)] == [1, 2, 3]


def test_scripts_get_the_inputs_dict(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8: python scripts get `inputs` (dict): declared inputs with defaults, coerced, and
    undeclared inputs when strict_mode is off."""
    # GIVEN declared inputs (one defaulted) and an undeclared one
    path = write_pipeline(
        """
        name: given
        input_variables:
          count: {type: integer}
          label: {type: string, default: none}
        tasks:
          - name: echo
            type: python_task
            script: |
              return {"inputs": inputs, "same": inputs["count"] == {{ count }}}
        """
    )
    # WHEN it runs with -i
    code, document = run_json(cli, path, "-i", "count=3", "-i", "extra=[1, 2]")
    # THEN the script sees them all with their types
    assert code == 0, document
    assert document["outputs"]["echo"] == {
        "inputs": {"count": 3, "label": "none", "extra": [1, 2]},
        "same": True,
    }


def test_non_json_state_values_are_a_clear_task_error(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8: values kept by context are JSON-serialisable; anything else is a task error."""
    path = write_pipeline(
        """
        name: bad_state
        tasks:
          - name: bad
            type: python_task
            script: context.set_shared_state("k", object())
        """
    )
    code, document = run_json(cli, path)
    assert code == 1
    assert document["error"]["task"] == "bad"
    assert "JSON" in document["error"]["message"]
