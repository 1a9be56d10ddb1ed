"""SPEC sections 3, 5, 6, 7 and 11 through the CLI: statuses, order, policies and the run document."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import CliResult, spec_record, spec_tasks

Cli = Callable[..., CliResult]
Write = Callable[..., Path]


def run_json(cli: Cli, path: Path, *arguments: str) -> tuple[int, dict[str, object]]:
    result = cli("run", path, "--json", *arguments)
    assert result.stdout.strip(), result.stderr
    return result.code, result.document()


def test_document_has_exactly_the_spec_keys(cli: Cli, write_pipeline: Write) -> None:
    # GIVEN a two-task pipeline with an outputs section
    path = write_pipeline(
        """
        name: doc
        tasks:
          - name: first
            type: python_task
            script: 'return {"n": 2}'
          - name: second
            type: python_task
            script: return context.get_task_output("first")["n"] * 21
        outputs:
          answer: "{{ second }}"
        """,
        name="doc_pipeline",
    )
    # WHEN it runs with --json
    code, document = run_json(cli, path)
    # THEN stdout is exactly the run document of SPEC section 11
    assert code == 0
    assert set(document) == {"run_id", "pipeline", "status", "outputs", "tasks", "result", "error"} | {
        "engine",
        "user",
        "pipeline_file",
        "started_at",
        "ended_at",
        "duration",
        "usage",
    }  # (and the telemetry fields: docs/telemetry.md)
    assert document["pipeline"] == "doc_pipeline"
    assert document["status"] == "succeeded"
    assert document["outputs"] == {"first": {"n": 2}, "second": 42}
    assert spec_tasks(document) == {
        "first": {"status": "succeeded", "attempts": 1, "error": None},
        "second": {"status": "succeeded", "attempts": 1, "error": None},
    }
    assert document["result"] == {"answer": 42}
    assert document["error"] is None


def test_independent_tasks_run_concurrently(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: concurrent
        tasks:
          - name: left
            type: python_task
            script: |
              import time
              start = time.time(); time.sleep(0.3)
              return [start, time.time()]
          - name: right
            type: python_task
            script: |
              import time
              start = time.time(); time.sleep(0.3)
              return [start, time.time()]
          - name: after
            type: python_task
            script: |
              import time
              return [time.time(), context.get_task_output("left"), context.get_task_output("right")]
        """
    )
    code, document = run_json(cli, path)
    outputs = document["outputs"]
    assert isinstance(outputs, dict)
    left, right = outputs["left"], outputs["right"]
    assert code == 0
    # the two windows overlap: each started before the other ended
    assert left[0] < right[1] and right[0] < left[1]
    # the dependent task started only after both ended
    assert outputs["after"][0] >= max(left[1], right[1])


def test_for_loop_honours_max_concurrency(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: limited
        tasks:
          - name: loop
            type: for_loop
            iterate_over: [1, 2, 3, 4, 5, 6]
            max_concurrency: 2
            tasks:
              - name: work
                type: python_task
                script: |
                  import time
                  start = time.time(); time.sleep(0.1)
                  return [start, time.time(), {{ item }}]
        """
    )
    code, document = run_json(cli, path)
    assert code == 0
    windows = [entry["work"] for entry in document["outputs"]["loop"]]  # type: ignore[index]
    assert [w[2] for w in windows] == [1, 2, 3, 4, 5, 6]
    events = sorted([(w[0], 1) for w in windows] + [(w[1], -1) for w in windows])
    running, peak = 0, 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    assert peak == 2


def test_skipped_task_output_is_null_and_dependents_still_run(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: skip
        input_variables:
          enabled: {type: boolean, default: false}
        tasks:
          - name: maybe
            type: python_task
            condition: "{{ enabled }}"
            script: return "ran"
          - name: never_string
            type: python_task
            condition: "False"
            script: return "ran"
          - name: reader
            type: python_task
            script: |
              return {"maybe": {{ maybe }}, "default": "{{ maybe | default('none', true) }}"}
        """
    )
    code, document = run_json(cli, path)
    assert code == 0
    assert document["tasks"]["maybe"]["status"] == "skipped"  # type: ignore[index]
    assert document["tasks"]["never_string"]["status"] == "skipped"  # type: ignore[index]
    assert document["outputs"]["maybe"] is None  # type: ignore[index]
    assert document["outputs"]["reader"] == {"maybe": None, "default": "none"}  # type: ignore[index]
    code, document = run_json(cli, path, "-i", "enabled=true")
    assert document["outputs"]["maybe"] == "ran"  # type: ignore[index]


FLAKY = """
name: flaky
error_handling:
  retry_delay: 0.01
tasks:
  - name: flaky
    type: python_task
    error_handling:
      retry_count: {retries}
      retry_backoff: exponential
    script: |
      count = context.get_persistent_state("count", 0) + 1
      context.set_persistent_state("count", count)
      if count < 3:
          raise RuntimeError(f"attempt {{count}} failed")
      return count
"""


def test_retries_until_success_and_counts_attempts(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(FLAKY.format(retries=2))
    code, document = run_json(cli, path)
    assert code == 0
    assert document["outputs"] == {"flaky": 3}
    assert spec_tasks(document) == {"flaky": {"status": "succeeded", "attempts": 3, "error": None}}


def test_failure_after_last_retry_reports_task_type_message_attempts(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(FLAKY.format(retries=1))
    code, document = run_json(cli, path)
    assert code == 1
    assert document["status"] == "failed"
    assert document["error"] == {
        "task": "flaky",
        "type": "RuntimeError",
        "message": "attempt 2 failed (script line 4)",
    }
    assert document["tasks"]["flaky"]["attempts"] == 2  # type: ignore[index]


def test_fallback_then_skip_then_degraded(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: policies
        error_handling:
          on_failure: continue_with_degraded_service
        tasks:
          - name: primary
            type: python_task
            script: raise ValueError("primary down")
            error_handling:
              fallback:
                type: python_task
                script: return "from fallback"
          - name: optional
            type: python_task
            script: raise ValueError("optional down")
            error_handling:
              on_failure: skip
              fallback_value: "{{ primary }}"
          - name: degraded
            type: python_task
            script: raise ValueError("degraded down")
            error_handling:
              fallback_value: {"mode": "minimal"}
          - name: last
            type: python_task
            script: return [context.get_task_output("optional"), context.get_task_output("degraded")]
        """
    )
    code, document = run_json(cli, path)
    assert code == 0
    assert document["status"] == "degraded"
    tasks = document["tasks"]
    assert spec_record(tasks["primary"]) == {"status": "fallback", "attempts": 1, "error": None}  # type: ignore[index]
    assert tasks["optional"]["status"] == "skipped"  # type: ignore[index]
    assert tasks["degraded"]["status"] == "failed"  # type: ignore[index]
    assert tasks["degraded"]["error"] == {
        "type": "ValueError",
        "message": "degraded down (script line 1)",
    }  # type: ignore[index]
    assert document["outputs"]["last"] == ["from fallback", {"mode": "minimal"}]  # type: ignore[index]


def test_abort_cancels_running_siblings(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: abort
        tasks:
          - name: slow
            type: python_task
            script: |
              import time
              time.sleep(5)
              return "finished"
          - name: broken
            type: python_task
            script: raise KeyError("boom")
          - name: after_slow
            type: python_task
            depends_on: [slow]
            script: return 1
        """
    )
    import time

    started = time.monotonic()
    code, document = run_json(cli, path)
    assert time.monotonic() - started < 4
    assert code == 1
    assert document["error"]["task"] == "broken"  # type: ignore[index]
    assert document["error"]["type"] == "KeyError"  # type: ignore[index]
    assert document["tasks"]["slow"]["status"] == "cancelled"  # type: ignore[index]
    assert document["tasks"]["after_slow"]["status"] == "not_run"  # type: ignore[index]
    assert document["outputs"]["slow"] is None  # type: ignore[index]


def test_timeout_is_a_retryable_task_failure(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: timeouts
        tasks:
          - name: sleepy
            type: python_task
            timeout: 0.2
            error_handling:
              retry_count: 1
              retry_delay: 0
            script: |
              import time
              time.sleep(3)
        """
    )
    code, document = run_json(cli, path)
    assert code == 1
    assert document["error"]["type"] == "TaskTimeout"  # type: ignore[index]
    assert document["tasks"]["sleepy"]["attempts"] == 2  # type: ignore[index]


def test_pipeline_timeout_bounds_the_run(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: bounded
        resource_limits:
          timeout: 0.3
        tasks:
          - name: sleepy
            type: python_task
            script: |
              import time
              time.sleep(3)
        """
    )
    code, document = run_json(cli, path)
    assert code == 1
    assert document["error"]["type"] == "PipelineTimeout"  # type: ignore[index]


def test_non_json_output_is_a_task_error(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: bad_output
        tasks:
          - name: objecty
            type: python_task
            script: return object()
        """
    )
    code, document = run_json(cli, path)
    assert code == 1
    assert document["error"]["type"] == "OutputNotSerializable"  # type: ignore[index]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["-i", "count=many"], "input 'count' must be an integer"),
        (["-i", "count=3", "-i", "mode=fast"], "input 'mode' is 'fast', not one of: slow, careful"),
        ([], "input 'count' is required"),
        (["-i", "count=3", "-i", "extra=1"], "input 'extra' is not declared (strict_mode is on"),
    ],
)
def test_input_errors_exit_2_before_anything_runs(
    cli: Cli, write_pipeline: Write, tmp_path: Path, arguments: list[str], message: str
) -> None:
    marker = tmp_path / "ran"
    path = write_pipeline(
        f"""
        name: inputs
        input_validation:
          strict_mode: true
        input_variables:
          count: {{type: integer}}
          mode: {{type: string, options: [slow, careful], default: slow}}
        tasks:
          - name: touch
            type: python_task
            script: |
              open({str(marker)!r}, "w").close()
        """
    )
    result = cli("run", path, *arguments)
    assert result.code == 2
    assert message in result.stderr
    assert not marker.exists()


def test_inputs_are_coerced_to_declared_types(cli: Cli, write_pipeline: Write, tmp_path: Path) -> None:
    path = write_pipeline(
        """
        name: types
        input_variables:
          count: {type: integer}
          ratio: {type: float}
          flag: {type: boolean}
          code: {type: string}
          items: {type: array}
          options: {type: object}
        tasks:
          - name: echo
            type: python_task
            script: return inputs
        """
    )
    inputs_file = tmp_path / "inputs.json"
    inputs_file.write_text(json.dumps({"items": [1, "two"], "options": {"a": 1}, "count": 1}))
    code, document = run_json(
        cli,
        path,
        "--inputs-file",
        str(inputs_file),
        "-i",
        "count=7",
        "-i",
        "ratio=2",
        "-i",
        "flag=yes",
        "-i",
        "code=007",
    )
    assert code == 0
    assert document["outputs"]["echo"] == {  # type: ignore[index]
        "count": 7,
        "ratio": 2.0,
        "flag": True,
        "code": "007",
        "items": [1, "two"],
        "options": {"a": 1},
    }


def test_invalid_pipeline_exits_2_on_run(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline("name: x\ntasks:\n  - name: a\n    type: nope\n")
    result = cli("run", path)
    assert result.code == 2
    assert "unknown task type 'nope'" in result.stderr
