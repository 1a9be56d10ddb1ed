"""Issue 5: the compiled state machine on the emulator: payload offload, history hygiene, faults."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import CliResult, agreed_tasks, spec_record
from orchestrator.aws.emulator import run_execution
from orchestrator.aws.stepfunctions_engine import execution_input
from orchestrator.plan import build_plan
from orchestrator.spec.loading import read_pipeline

pytestmark = pytest.mark.slow
Cli = Callable[..., CliResult]
Write = Callable[..., Path]

SECRET = "Sup3r-S3cret-Value"
SENSITIVE = "Very-Private-Input-42"


def _execute(path: Path, inputs: dict[str, Any], run_id: str) -> dict[str, Any]:
    plan = build_plan(read_pipeline(path))
    run = {"id": run_id, "pipeline": plan.pipeline_id, "started_at": "2026-01-01T00:00:00+00:00"}
    return run_execution(plan, lambda: execution_input(plan, inputs, run), run_id)


def test_a_megabyte_output_flows_through_s3(write_pipeline: Write, cli: Cli) -> None:
    """SPEC 12: outputs above the payload limit travel by reference, transparently."""
    path = write_pipeline(
        """
        name: big
        tasks:
          - name: produce
            type: python_task
            script: return "x" * 1_000_000
          - name: consume
            type: python_task
            script: return len(context.get_task_output("produce"))
        """
    )
    execution = _execute(path, {}, "big-run")
    assert execution["status"] == "SUCCEEDED"
    assert execution["output"]["tasks"]["consume"]["output"] == 1_000_000
    assert execution["output"]["tasks"]["produce"]["output"] == "x" * 1_000_000
    largest = max(len(json.dumps(event, default=str)) for event in execution["history"])
    assert largest < 256 * 1024
    document = cli("run", path, "--json", "--engine", "stepfunctions").document()
    assert document["outputs"]["consume"] == 1_000_000


def test_secrets_and_sensitive_inputs_never_enter_the_history(
    write_pipeline: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC 2: not in the execution input, not in any event of the history."""
    monkeypatch.setenv("ORCHESTRATOR_SECRET_API_TOKEN", SECRET)
    path = write_pipeline(
        """
        name: private
        input_variables:
          password: {type: string, sensitive: true}
        tasks:
          - name: use
            type: python_task
            script: |
              token = context.get_secret("api_token")
              return {"token": token, "password": "{{ password }}", "length": len(token)}
          - name: after
            type: python_task
            script: return context.get_task_output("use")
        """
    )
    execution = _execute(path, {"password": SENSITIVE}, "private-run")
    assert execution["status"] == "SUCCEEDED"
    assert execution["output"]["tasks"]["use"]["output"] == {"token": "***", "password": "***", "length": 18}
    history = json.dumps(execution["history"], default=str)
    assert SECRET not in history
    assert SENSITIVE not in history
    assert "TaskScheduled" in history


def test_failures_are_retried_as_error_handling_says(write_pipeline: Write, cli: Cli) -> None:
    """SPEC 7 on AWS: a failing Lambda is retried by the state machine, then handled by on_failure."""
    path = write_pipeline(
        """
        name: faults
        tasks:
          - name: flaky
            type: python_task
            error_handling: {retry_count: 2, retry_delay: 1}
            script: |
              n = context.update_shared_state("flaky", lambda n: n + 1, 0)
              if n < 3:
                  raise ConnectionError(f"attempt {n}")
              return n
          - name: broken
            type: python_task
            error_handling: {on_failure: continue_with_degraded_service, fallback_value: "degraded"}
            script: raise ValueError("always")
        """
    )
    local = cli("run", path, "--json").document()
    remote = cli("run", path, "--json", "--engine", "stepfunctions").document()
    assert agreed_tasks(remote) == agreed_tasks(local)
    assert spec_record(remote["tasks"]["flaky"]) == {"status": "succeeded", "attempts": 3, "error": None}
    assert remote["tasks"]["broken"]["error"] == {"type": "ValueError", "message": "always (script line 1)"}
    assert remote["status"] == "degraded" and remote["outputs"]["broken"] == "degraded"


def test_timeouts_fail_the_same_way_on_both_engines(write_pipeline: Write, cli: Cli) -> None:
    """SPEC 7 and 10: a task over its timeout fails with TaskTimeout, then on_failure applies."""
    path = write_pipeline(
        """
        name: slow
        tasks:
          - name: sleepy
            type: python_task
            timeout: 1
            error_handling: {on_failure: skip, fallback_value: late}
            script: |
              import time
              time.sleep(2.5)
              return "on time"
          - name: after
            type: python_task
            script: return "{{ sleepy }}"
        """
    )
    local = cli("run", path, "--json").document()
    remote = cli("run", path, "--json", "--engine", "stepfunctions").document()
    assert agreed_tasks(remote) == agreed_tasks(local)
    assert remote["tasks"]["sleepy"]["status"] == "skipped"
    assert remote["tasks"]["sleepy"]["error"]["type"] == "TaskTimeout"
    assert remote["outputs"] == local["outputs"] == {"sleepy": "late", "after": "late"}


def test_a_throttled_lambda_is_retried_and_is_not_an_attempt(
    write_pipeline: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC 7 on AWS: the Lambda service refusing a call (429) is retried by the state machine;
    the task ran once, so the document says one attempt, as on the embedded engine."""
    from moto.core.exceptions import JsonRESTError

    from orchestrator.aws import emulator
    from orchestrator.aws.execution import document_from_execution

    calls: list[str] = []
    original = emulator._Invoker.__call__

    def throttle_first(self: Any, function: Any, event: Any = None) -> tuple[str, bool, str]:
        calls.append(function.function_name)
        if len(calls) == 1:
            error = JsonRESTError("TooManyRequestsException", "Rate exceeded")
            error.code = 429
            raise error
        return original(self, function, event)

    monkeypatch.setattr(emulator._Invoker, "__call__", throttle_first)
    path = write_pipeline("name: t\ntasks:\n  - name: a\n    type: python_task\n    script: return 1\n")
    execution = _execute(path, {}, "throttled")
    plan = build_plan(read_pipeline(path))
    document = document_from_execution(
        plan, "throttled", execution["status"], execution["output"], execution["history"]
    )
    failures = [e for e in execution["history"] if e["type"] == "TaskFailed"]
    assert failures and failures[0]["taskFailedEventDetails"]["error"].startswith("Lambda.")
    assert len(calls) == 2
    assert document["tasks"]["a"] == {"status": "succeeded", "attempts": 1, "error": None}
