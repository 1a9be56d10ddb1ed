"""Reads of task outputs by computed name mean the same on both engines (divergences 1 and 2).

`context.get_task_output(f"process_chunk_{i}")` names no task in the file's text. The planner
decides once, for both engines, that such a task waits for every task before it in its body
(and a loop or group holding one, for every task before the loop or group), and the compiler
passes it every task's output, parallel_group children included, of which the function keeps
the tasks it waits for (docs/decisions.md, "Reads by computed name"). Each pipeline here runs
through the CLI on the embedded engine and on the emulated AWS, each with its own state folder,
and the run documents must be equal and hold the values the file order promises.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conformance.test_both_engines import comparable
from conftest import CliResult, every_state
from orchestrator.aws.asl import compile_pipeline
from orchestrator.plan import build_plan, dependency_closure
from orchestrator.spec.loading import read_pipeline

pytestmark = pytest.mark.slow

Cli = Callable[..., CliResult]

# The user guide's task-level parallelism pattern, with python workers instead of LLM calls:
# the aggregation names the group's children with an f-string, in the call itself (which
# Python 3.11 tokenizes as one string) and through a variable.
GUIDE_PATTERN = """
name: computed_group
tasks:
  - name: data_preprocessing
    type: python_task
    script: |
      return {"chunks": ["alpha", "beta", "gamma", "delta"]}
  - name: parallel_processing
    type: parallel_group
    depends_on: [data_preprocessing]
    max_concurrency: 4
    tasks:
      - name: process_chunk_1
        type: python_task
        script: |
          return "{{ data_preprocessing.chunks[0] }}".upper()
      - name: process_chunk_2
        type: python_task
        script: |
          return "{{ data_preprocessing.chunks[1] }}".upper()
      - name: process_chunk_3
        type: python_task
        script: |
          import time
          time.sleep(0.2)
          return "{{ data_preprocessing.chunks[2] }}".upper()
      - name: process_chunk_4
        type: python_task
        script: |
          return "{{ data_preprocessing.chunks[3] }}".upper()
      - name: first_three
        type: python_task
        script: |
          return [context.get_task_output(f"process_chunk_{i}") for i in range(1, 4)]
  - name: aggregate_results
    type: python_task
    depends_on: [parallel_processing]
    script: |
      results = [context.get_task_output(f"process_chunk_{i}") for i in range(1, 5)]
      return {"final_result": " ".join(results), "processed_chunks": len(results)}
  - name: aggregate_by_variable
    type: python_task
    depends_on: [parallel_processing]
    script: |
      results = []
      for i in range(1, 5):
          task_name = f"process_chunk_{i}"
          results.append(context.get_task_output(task_name))
      return results
"""

# No depends_on: the reader waits for every task before it, whatever the file order lets run
# first, and not for a task after it; one before it that waits for it has not run.
WITHOUT_DEPENDS_ON = """
name: computed_without_depends_on
tasks:
  - name: early
    type: python_task
    depends_on: [total]
    script: |
      return "early"
  - name: slow_a
    type: python_task
    script: |
      import time
      time.sleep(0.3)
      return 1
  - name: b
    type: python_task
    script: |
      return 2
  - name: total
    type: python_task
    script: |
      names = ["slow_" + "a", "%s" % "b", "early"]
      found = {name: context.get_task_output(name) for name in names}
      return {"found": found, "sum": (found["slow_a"] or 0) + (found["b"] or 0)}
  - name: after
    type: python_task
    script: |
      return "after"
"""

# In a loop body: the reader waits for its siblings before it in the same iteration, and the
# loop waits for every task before it, which the reader may read too.
IN_A_LOOP_BODY = """
name: computed_in_loop
tasks:
  - name: base
    type: python_task
    script: |
      import time
      time.sleep(0.3)
      return 100
  - name: rounds
    type: for_loop
    iterate_over: [1, 2, 3]
    max_concurrency: 3
    tasks:
      - name: double
        type: python_task
        script: |
          return {{ item }} * 2
      - name: square
        type: python_task
        script: |
          import time
          time.sleep(0.1)
          return {{ item }} ** 2
      - name: combine
        type: python_task
        script: |
          names = ["double", "square", "base"]
          return {name: context.get_task_output(name) for name in names}
"""

# A literal name is a dependency on that task alone, as before.
FIXED_NAME = """
name: fixed_name
tasks:
  - name: unrelated
    type: python_task
    script: |
      return "unrelated"
  - name: a
    type: python_task
    script: |
      return 41
  - name: b
    type: python_task
    script: |
      return context.get_task_output("a") + 1
"""

# A child pipeline's tasks see only their own run's tasks, by computed name too.
PARENT = """
name: parent
tasks:
  - name: secret_value
    type: python_task
    script: |
      return "parent's"
  - name: children
    type: pipeline_group
    pipelines:
      - pipeline: child.yaml
"""
CHILD = """
name: child
tasks:
  - name: own
    type: python_task
    script: |
      return "child's"
  - name: look
    type: python_task
    script: |
      return {name: context.get_task_output(name) for name in ["secret_" + "value", "o" + "wn"]}
"""


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def _both(cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, path: Path) -> dict[str, Any]:
    """Run `path` on both engines; their documents must agree; return the local one."""
    documents = {}
    for engine in ("local", "stepfunctions"):
        monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path / f"home-{engine}"))
        result = cli("run", path, "--json", "--engine", engine)
        assert result.code == 0, result.stderr
        documents[engine] = result.document()
    local, aws = documents["local"], documents["stepfunctions"]
    assert comparable(aws) == comparable(local)
    return local


def test_the_guides_parallel_pattern_reads_group_children_by_computed_name(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    document = _both(cli, monkeypatch, tmp_path, _write(tmp_path, "computed_group", GUIDE_PATTERN))
    outputs = document["outputs"]
    assert outputs["aggregate_results"] == {
        "final_result": "ALPHA BETA GAMMA DELTA",
        "processed_chunks": 4,
    }
    assert outputs["aggregate_by_variable"] == ["ALPHA", "BETA", "GAMMA", "DELTA"]
    # a child reading its siblings by computed name waits for the children before it
    assert outputs["first_three"] == ["ALPHA", "BETA", "GAMMA"]


def test_a_computed_read_without_depends_on_sees_every_task_before_it(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = _write(tmp_path, "computed_without_depends_on", WITHOUT_DEPENDS_ON)
    document = _both(cli, monkeypatch, tmp_path, path)
    assert document["outputs"]["total"] == {
        "found": {"slow_a": 1, "b": 2, "early": None},  # `early` waits for it: not run yet
        "sum": 3,
    }
    body = build_plan(read_pipeline(path)).body
    assert dependency_closure(body, "total") == {"slow_a", "b"}
    assert "total" in body.nodes["early"].dependencies
    assert not body.nodes["after"].dependencies


def test_a_computed_read_in_a_loop_body_sees_its_siblings_and_the_tasks_before_the_loop(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    document = _both(cli, monkeypatch, tmp_path, _write(tmp_path, "computed_in_loop", IN_A_LOOP_BODY))
    assert [iteration["combine"] for iteration in document["outputs"]["rounds"]] == [
        {"double": 2, "square": 1, "base": 100},
        {"double": 4, "square": 4, "base": 100},
        {"double": 6, "square": 9, "base": 100},
    ]


def test_a_fixed_name_read_is_unchanged(cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _write(tmp_path, "fixed_name", FIXED_NAME)
    document = _both(cli, monkeypatch, tmp_path, path)
    assert document["outputs"]["b"] == 42
    plan = build_plan(read_pipeline(path))
    assert plan.body.nodes["b"].dependencies == {"a"}
    assert not plan.body.nodes["b"].computed_reads
    # the state machine passes the one output it reads, not every task
    payload = every_state(compile_pipeline(plan))["b"]["Parameters"]["Payload"]
    assert payload["outputs"] == {"a.$": "$.tasks.a.output"}
    assert "tasks.$" not in payload


def test_a_child_pipeline_reads_by_computed_name_only_its_own_tasks(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _write(tmp_path, "child", CHILD)
    document = _both(cli, monkeypatch, tmp_path, _write(tmp_path, "parent", PARENT))
    assert document["outputs"]["children"]["child"]["look"] == {"secret_value": None, "own": "child's"}
