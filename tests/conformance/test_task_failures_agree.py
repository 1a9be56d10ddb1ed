"""Divergences 6 and 7: a script that cannot be rendered, and a fallback_value that cannot be
rendered, mean the same on both engines (decisions.md, "Language").

Through the CLI (`orchestrator run FILE --json --engine local|stepfunctions`), each engine with
its own ORCHESTRATOR_HOME and working folder, the comparable run documents (status, outputs,
tasks, result, error) and exit statuses must be equal, and say what the decisions say:

- 6: a python_task whose placeholders cannot be rendered fails with `TemplateError` (one
  attempt, whatever `retry_count` says) and its `error_handling` applies: fallback, skip,
  degraded, or abort, and the run document is always produced;
- 7: a `fallback_value` that cannot be rendered gives `null` with on_failure's status, the run
  goes on, and the task keeps its own error, whose message says why the value was not used.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conformance.test_both_engines import comparable
from conftest import CliResult, spec_record
from orchestrator.runtime.leaf import FALLBACK_VALUE_PROBLEM

pytestmark = pytest.mark.slow
Cli = Callable[..., CliResult]

SCRIPT_TEMPLATE_ERRORS = """
name: script_template_errors
error_handling: {retry_delay: 0}
tasks:
  - name: rows
    type: python_task
    script: |
      return [{"a": 1}, {"b": 2}]
  - name: odd_text
    type: python_task
    script: |
      return "caf\\udce9"
  - name: deep
    type: python_task
    script: |
      value = []
      for _ in range(300):
          value = [value]
      return value
  - name: missing_attribute
    type: python_task
    error_handling: {retry_count: 2, on_failure: skip, fallback_value: 7}
    script: |
      return {{ rows | map(attribute='missing') | list }}
  - name: bytes_literal
    type: python_task
    error_handling:
      retry_count: 2
      on_failure: continue_with_degraded_service
      fallback_value: "{{ rows[0] }}"
    script: |
      return b"{{ odd_text }}"
  - name: nested_too_deeply
    type: python_task
    error_handling:
      retry_count: 1
      fallback:
        type: python_task
        script: |
          return "from the fallback"
    script: |
      return {{ deep }}
  - name: lazy_value
    type: python_task
    error_handling: {on_failure: skip}
    script: |
      return {{ rows | map(attribute='a') }}
  - name: in_a_loop
    type: for_loop
    iterate_over: "{{ rows }}"
    tasks:
      - name: each
        type: python_task
        error_handling: {on_failure: skip, fallback_value: "{{ loop_index }}"}
        script: |
          return "{{ item.a }}"
  - name: report
    type: python_task
    script: |
      return [{{ missing_attribute }}, {{ bytes_literal }}, {{ nested_too_deeply }},
              {{ lazy_value }}, {{ in_a_loop }}]
"""

SCRIPT_TEMPLATE_ERROR_ABORTS = """
name: script_template_error_aborts
tasks:
  - name: rows
    type: python_task
    script: |
      return [{"a": 1}, {"b": 2}]
  - name: broken
    type: python_task
    error_handling: {retry_count: 3, retry_delay: 0}
    script: |
      names = {{ rows | map(attribute='missing') | list }}
      return names
  - name: after
    type: python_task
    depends_on: [broken]
    script: |
      return "never"
"""

FALLBACK_VALUES = """
name: fallback_values
tasks:
  - name: base
    type: python_task
    script: |
      return {"a": 1}
  - name: fan
    type: parallel_group
    tasks:
      - name: child
        type: python_task
        script: |
          return "from the child"
  - name: missing_key
    type: python_task
    error_handling: {on_failure: skip, fallback_value: "{{ base.x }}"}
    script: |
      raise ValueError("missing key")
  - name: missing_task
    type: python_task
    error_handling: {on_failure: skip, fallback_value: "{{ missing_task_output.x }}"}
    script: |
      raise ValueError("missing task")
  - name: undefined_name
    type: python_task
    error_handling: {on_failure: continue_with_degraded_service, fallback_value: "{{ nothing_here }}"}
    script: |
      raise ValueError("undefined name")
  - name: inside_a_mapping
    type: python_task
    error_handling:
      on_failure: skip
      fallback_value: {source: "{{ base.a }}", note: "{{ nothing_here | upper }}"}
    script: |
      raise ValueError("inside a mapping")
  - name: renders
    type: python_task
    error_handling:
      on_failure: continue_with_degraded_service
      fallback_value: {source: "{{ base.a }}", whole: "{{ base }}", child: "{{ child }}", partial: true}
    script: |
      raise ValueError("renders")
  - name: bare_task
    type: python_task
    error_handling: {on_failure: skip, fallback_value: "{{ base }}"}
    script: |
      raise ValueError("bare task")
  - name: looped
    type: for_loop
    iterate_over: [{a: 1}, {b: 2}]
    tasks:
      - name: each
        type: python_task
        error_handling: {on_failure: skip, fallback_value: "{{ item.a }}"}
        script: |
          raise ValueError("item {{ loop_index }}")
  - name: report
    type: python_task
    script: |
      return [{{ missing_key }}, {{ missing_task }}, {{ undefined_name }}, {{ inside_a_mapping }},
              {{ renders }}, {{ bare_task }}, {{ looped }}]
"""


def run_both(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str
) -> tuple[dict[str, Any], int]:
    """Run the pipeline on both engines; assert they agree; return the local document and code."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(text, encoding="utf-8")
    results: dict[str, CliResult] = {}
    for engine in ("local", "stepfunctions"):
        folder = tmp_path / engine
        folder.mkdir()
        monkeypatch.setenv("ORCHESTRATOR_HOME", str(folder / ".orchestrator"))
        monkeypatch.chdir(folder)
        results[engine] = cli("run", path, "--json", "--engine", engine)
        assert results[engine].stdout, results[engine].stderr  # a run document, always
    local, remote = results["local"], results["stepfunctions"]
    assert comparable(remote.document()) == comparable(local.document())
    assert remote.code == local.code
    return local.document(), local.code


def error_of(document: dict[str, Any], task: str) -> dict[str, Any]:
    error: dict[str, Any] = document["tasks"][task]["error"]
    return error


def test_a_script_that_cannot_be_rendered_fails_its_task_alike(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    document, code = run_both(cli, monkeypatch, tmp_path, SCRIPT_TEMPLATE_ERRORS)
    assert code == 0 and document["status"] == "degraded" and document["error"] is None
    tasks, outputs = document["tasks"], document["outputs"]
    # an undefined value inside the list, skipped: tried once although retry_count is 2
    assert tasks["missing_attribute"]["status"] == "skipped"
    assert tasks["missing_attribute"]["attempts"] == 1
    assert error_of(document, "missing_attribute")["type"] == "TemplateError"
    assert "'dict object' has no attribute 'missing'" in error_of(document, "missing_attribute")["message"]
    assert outputs["missing_attribute"] == 7
    # text a bytes literal cannot hold, degraded with its (rendered) fallback_value
    assert tasks["bytes_literal"]["status"] == "failed" and tasks["bytes_literal"]["attempts"] == 1
    assert "cannot be put in a bytes literal" in error_of(document, "bytes_literal")["message"]
    assert outputs["bytes_literal"] == {"a": 1}
    # a value nested too deeply for code: not retried, the fallback task runs
    assert spec_record(tasks["nested_too_deeply"]) == {"status": "fallback", "attempts": 1, "error": None}
    assert outputs["nested_too_deeply"] == "from the fallback"
    # a lazy value (a generator) has no literal
    assert error_of(document, "lazy_value")["type"] == "TemplateError"
    # in a loop body, per iteration
    assert outputs["in_a_loop"] == [{"each": "1"}, {"each": 1}]
    assert outputs["report"] == [7, {"a": 1}, "from the fallback", None, [{"each": "1"}, {"each": 1}]]


def test_a_script_that_cannot_be_rendered_aborts_the_run_alike_with_a_document(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    document, code = run_both(cli, monkeypatch, tmp_path, SCRIPT_TEMPLATE_ERROR_ABORTS)
    assert code == 1 and document["status"] == "failed"
    assert document["tasks"]["broken"]["status"] == "failed"
    assert document["tasks"]["broken"]["attempts"] == 1  # retry_count: 3, not retried
    assert error_of(document, "broken")["type"] == "TemplateError"
    assert document["tasks"]["after"]["status"] == "not_run"
    assert document["error"]["task"] == "broken" and document["error"]["type"] == "TemplateError"


def test_a_fallback_value_that_cannot_be_rendered_gives_null_alike(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    document, code = run_both(cli, monkeypatch, tmp_path, FALLBACK_VALUES)
    assert code == 0 and document["status"] == "degraded" and document["error"] is None
    tasks, outputs = document["tasks"], document["outputs"]
    expected = {
        "missing_key": ("skipped", "missing key", "'dict object' has no attribute 'x'"),
        "missing_task": ("skipped", "missing task", "'missing_task_output' is undefined"),
        "undefined_name": ("failed", "undefined name", "'nothing_here' is undefined"),
        "inside_a_mapping": ("skipped", "inside a mapping", "'nothing_here' is undefined"),
    }
    for name, (status, own, reason) in expected.items():
        assert tasks[name]["status"] == status, name
        assert outputs[name] is None, name
        error = error_of(document, name)
        assert error["type"] == "ValueError", name  # the task's own error, kept
        assert error["message"].startswith(f"{own} (script line 1) [{FALLBACK_VALUE_PROBLEM}"), error
        assert reason in error["message"], error
    # what renders is the output, and the message is the task's own
    assert outputs["renders"] == {"source": 1, "whole": {"a": 1}, "child": "from the child", "partial": True}
    assert error_of(document, "renders")["message"] == "renders (script line 1)"
    assert outputs["bare_task"] == {"a": 1}
    assert outputs["looped"] == [{"each": 1}, {"each": None}]
    assert tasks["looped"]["status"] == "succeeded"
    assert outputs["report"] == [
        None,
        None,
        None,
        None,
        {"source": 1, "whole": {"a": 1}, "child": "from the child", "partial": True},
        {"a": 1},
        [{"each": 1}, {"each": None}],
    ]
