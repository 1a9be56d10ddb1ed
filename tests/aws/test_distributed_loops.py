"""Issue 12, "No history surprises": a for_loop that can pass the 25,000-event history quota of a
Standard execution runs as a Distributed Map, each iteration a child execution with a history
of its own, its results written to S3 and collected as one reference. Decided when compiling
when the count is known there, else at run time from the count (`aws/history.py`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import CliResult, agreed_tasks, every_state
from orchestrator.aws import history, stepfunctions_engine
from orchestrator.aws.asl import MAP_RUN_RESULTS, PAYLOAD_BUCKET
from orchestrator.aws.build import compile_definition
from orchestrator.aws.history import QUOTA, loop_mode, node_events
from orchestrator.aws.sam import state_machine
from orchestrator.plan import build_plan
from orchestrator.spec.loading import read_pipeline

Cli = Callable[..., CliResult]
Write = Callable[..., Path]
BothEngines = Callable[..., dict[str, CliResult]]

FIVE_THOUSAND = """
name: five_thousand
tasks:
  - name: each
    type: for_loop
    iterate_over: ITEMS
    max_concurrency: 8
    error_handling:
      retry_count: 1
      on_failure: skip
    tasks:
      - name: work
        type: python_task
        script: return {{ item }} * 2
""".replace("ITEMS", str(list(range(5000))))


def test_a_loop_over_5000_literal_items_compiles_to_a_distributed_map_writing_to_s3(
    write_pipeline: Write, cli: Cli
) -> None:
    # GIVEN a for_loop over 5,000 literal items, whose iterations would record about 35,000
    # history events in one execution
    path = write_pipeline(FIVE_THOUSAND)
    states = every_state(compile_definition(path))
    # THEN it runs as a Distributed Map: each iteration a Standard child execution
    loop = states["each.run"]
    assert loop["Type"] == "Map"
    assert loop["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
    assert loop["ItemsPath"] == "$.items.each.value" and loop["MaxConcurrency"] == 8
    assert loop["ItemSelector"]["loop"]["item.$"] == "$$.Map.Item.Value"
    # whose results go to the payload bucket, not into the state
    assert loop["ResultWriter"] == {
        "Resource": "arn:aws:states:::s3:putObject",
        "Parameters": {"Bucket": PAYLOAD_BUCKET, "Prefix": MAP_RUN_RESULTS},
    }
    # where the dispatch function collects them into the loop's record
    collect = states["each.collect"]
    assert collect["Parameters"]["Payload"]["action"] == "collect"
    assert collect["Parameters"]["Payload"]["manifest.$"] == "$.map_run"
    assert loop["Next"] == "each.collect"
    # an iteration never fails its child execution: what its body raises is its output, and
    # the loop (the Parallel around the Map, with the loop's Retry and Catch) fails with it
    iteration = loop["ItemProcessor"]["States"]["each.run/.iteration"]
    assert iteration["Catch"][0]["ErrorEquals"] == ["States.ALL"]
    assert states["each"]["Type"] == "Parallel"
    assert {rule["ErrorEquals"][0] for rule in states["each"]["Retry"]} >= {"States.ALL"}
    assert states["each"]["Catch"][0]["Next"] == "each.failed"
    # the parent's history holds the Map run, whatever the count; compile does not warn
    node = build_plan(read_pipeline(path)).body.nodes["each"]
    assert loop_mode(node) == "distributed" and node_events(node).events < 50
    result = cli("compile", path)
    assert result.code == 0 and "warning" not in result.stderr
    # and its state machine may start child executions and use the payload bucket
    definition = compile_definition(path)
    properties = state_machine("five_thousand", "STANDARD", definition)["Properties"]
    assert "PayloadBucket" in properties["DefinitionSubstitutions"]
    (own,) = [
        policy for policy in properties["Policies"] if isinstance(policy, dict) and "Statement" in policy
    ]
    actions = {action for statement in own["Statement"] for action in statement["Action"]}
    assert {"states:StartExecution", "s3:PutObject", "s3:GetObject"} <= actions


RUN_TIME = """
name: run_time
input_variables:
  n: {type: integer, default: 3}
tasks:
  - name: prepare
    type: python_task
    script: return list(range({{ n }}))
  - name: each
    type: for_loop
    iterate_over: "{{ prepare }}"
    max_concurrency: 3
    tasks:
      - name: square
        type: python_task
        script: 'return {"square": {{ item }} * {{ item }}, "padding": "-" * 40}'
"""


@pytest.fixture
def executions(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """The emulated executions of the test's `--engine stepfunctions` runs (status, history...)."""
    seen: list[dict[str, Any]] = []
    original = stepfunctions_engine.run_execution

    def recorded(*arguments: Any, **keywords: Any) -> dict[str, Any]:
        execution = original(*arguments, **keywords)
        seen.append(execution)
        return execution

    monkeypatch.setattr(stepfunctions_engine, "run_execution", recorded)
    yield seen


def _map_runs(execution: dict[str, Any]) -> int:
    return sum(1 for event in execution["history"] if event["type"] == "MapRunStarted")


def _same_document(results: dict[str, CliResult]) -> dict[str, Any]:
    local, remote = (results[engine].document() for engine in ("local", "stepfunctions"))
    for key in ("status", "outputs", "error", "result"):
        assert remote[key] == local[key], key
    assert agreed_tasks(remote) == agreed_tasks(local)
    return local


def test_a_loop_counted_at_run_time_stays_inline_when_few_and_is_distributed_when_many(
    write_pipeline: Write,
    run_on_both_engines: BothEngines,
    executions: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_pipeline(RUN_TIME)
    node = build_plan(read_pipeline(path)).body.nodes["each"]
    assert loop_mode(node) == "runtime"
    # GIVEN a loop over a task's output, of 3 items: it runs inline (no Map run)
    document = _same_document(run_on_both_engines(path))
    assert [o["square"]["square"] for o in document["outputs"]["each"]] == [0, 1, 4]
    assert _map_runs(executions[-1]) == 0
    # WHEN at most 2 iterations may run inline (the bound lowered, so that the test stays fast)
    monkeypatch.setattr(history, "INLINE_EVENTS", 2 * history.per_iteration(node).events)
    # THEN 2 items still run inline, and 5 as a Distributed Map, with the same documents
    _same_document(run_on_both_engines(path, "-i", "n=2"))
    assert _map_runs(executions[-1]) == 0
    document = _same_document(run_on_both_engines(path, "-i", "n=5"))
    assert [o["square"]["square"] for o in document["outputs"]["each"]] == [0, 1, 4, 9, 16]
    execution = executions[-1]
    assert _map_runs(execution) == 1
    # the iterations are not in the execution's history, and the loop's record is a reference
    assert not any(event["type"].startswith("MapIteration") for event in execution["history"])
    collected = [
        json.loads(event["taskSucceededEventDetails"]["output"])["Payload"]
        for event in execution["history"]
        if event["type"] == "TaskSucceeded" and '"degraded"' in event["taskSucceededEventDetails"]["output"]
    ]
    assert [set(answer) for answer in collected] == [{"output", "degraded"}]
    assert set(collected[0]["output"]) == {"$payload"}


OVER_ARRAY_INPUT = """
name: over_array_input
input_variables:
  rows: {type: array, default: [1, 2]}
tasks:
  - name: each
    type: for_loop
    iterate_over: "{{ rows }}"
    tasks:
      - name: double
        type: python_task
        script: return {{ item }} * 2
"""


def test_a_loop_choosing_its_map_at_run_time_has_no_parallel_and_one_attempt_either_way(
    write_pipeline: Write,
    run_on_both_engines: BothEngines,
    executions: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a loop without error handling over the pipeline's array input, of unknown count
    path = write_pipeline(OVER_ARRAY_INPUT)
    node = build_plan(read_pipeline(path)).body.nodes["each"]
    assert loop_mode(node) == "runtime"
    # THEN its Choice between the inline and the Distributed Map runs in the body, named as the
    # task (entering it is the loop's attempt), with no one-branch Parallel around the Maps
    states = compile_definition(path)["States"]
    assert states["each"]["Type"] == "Choice"
    assert {states[name]["Type"] for name in ("each.run", "each.distributed")} == {"Map"}
    assert not any(state["Type"] == "Parallel" for state in states.values())
    # WHEN it runs inline, then as a Distributed Map (the bound lowered to 2 iterations)
    inline = _same_document(run_on_both_engines(path))
    assert _map_runs(executions[-1]) == 0
    monkeypatch.setattr(history, "INLINE_EVENTS", 2 * history.per_iteration(node).events)
    distributed = _same_document(run_on_both_engines(path, "-i", "rows=[1, 2, 3]"))
    assert _map_runs(executions[-1]) == 1
    # THEN both documents are the embedded engine's: one attempt, the outputs in item order
    assert inline["tasks"]["each"]["attempts"] == distributed["tasks"]["each"]["attempts"] == 1
    assert distributed["outputs"]["each"] == [{"double": 2}, {"double": 4}, {"double": 6}]


DISTRIBUTED = """
name: distributed
input_variables:
  rows: {type: array, default: [[1, 2], [3]]}
tasks:
  - name: literal
    type: for_loop
    iterate_over: [1, 2, 3, 4]
    max_concurrency: 2
    tasks:
      - name: first
        type: python_task
        script: return {{ item }} * 10
      - name: second
        type: python_task
        script: return {{ first }} + 1
      - name: shaky
        type: python_task
        error_handling:
          on_failure: continue_with_degraded_service
          fallback_value: -1
        script: |
          if {{ item }} == 3:
              raise KeyError("three")
          return {{ item }}
  - name: over_rows
    type: for_loop
    iterate_over: "{{ rows }}"
    item_variable: row
    tasks:
      - name: cells
        type: for_loop
        iterate_over: "{{ row }}"
        item_variable: cell
        tasks:
          - name: product
            type: python_task
            script: return {{ cell }} * {{ loop_index }}
  - name: nothing
    type: python_task
    script: return []
  - name: over_nothing
    type: for_loop
    iterate_over: "{{ nothing }}"
    tasks:
      - name: never
        type: python_task
        script: return 1
  - name: failing
    type: for_loop
    iterate_over: [1, 2, 3]
    error_handling:
      on_failure: continue_with_degraded_service
      fallback_value: none of them
    tasks:
      - name: picky
        type: python_task
        script: |
          if {{ item }} >= 2:
              raise ValueError(f"no {{ item }}")
          return {{ item }}
"""


def test_distributed_loops_give_the_embedded_engines_document(
    write_pipeline: Write,
    run_on_both_engines: BothEngines,
    executions: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN every for_loop distributed (the bound lowered to one event): literal items, the
    # pipeline's array input with a loop in the body, a body task degraded in one child
    # execution, no items, and a failing iteration under continue_with_degraded_service
    monkeypatch.setattr(history, "INLINE_EVENTS", 1)
    path = write_pipeline(DISTRIBUTED)
    plan = build_plan(read_pipeline(path))
    loops = [node for node in plan.body.nodes.values() if node.kind == "for_loop"]
    assert {loop_mode(node) for node in loops} == {"distributed"}
    # WHEN it runs on both engines
    document = _same_document(run_on_both_engines(path))
    # THEN the documents agree: outputs in item order, the degraded task seen, the loop failed
    # with its first failing iteration's error, its type and message
    assert [o["second"] for o in document["outputs"]["literal"]] == [11, 21, 31, 41]
    assert [o["shaky"] for o in document["outputs"]["literal"]] == [1, 2, -1, 4]
    assert document["outputs"]["over_rows"] == [
        {"cells": [{"product": 0}, {"product": 2}]},
        {"cells": [{"product": 0}]},
    ]
    assert document["status"] == "degraded"
    assert document["tasks"]["failing"]["status"] == "failed"
    assert document["tasks"]["failing"]["error"]["type"] == "ValueError"
    assert document["tasks"]["failing"]["error"]["message"].startswith("no 2")
    assert document["outputs"]["failing"] == "none of them"
    assert document["outputs"]["over_nothing"] == []  # (a Map run of no items)
    # (the inner loop ran in each child execution, as a Distributed Map of its own there)
    assert _map_runs(executions[-1]) == 4


def test_a_task_degraded_only_in_a_child_execution_degrades_the_run(
    write_pipeline: Write, run_on_both_engines: BothEngines, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a distributed loop whose body task fails under continue_with_degraded_service in
    # one iteration, and nothing else failing: only the child execution's history shows it
    monkeypatch.setattr(history, "INLINE_EVENTS", 1)
    path = write_pipeline(
        """
        name: degraded_child
        tasks:
          - name: each
            type: for_loop
            iterate_over: [1, 2]
            tasks:
              - name: shaky
                type: python_task
                error_handling:
                  on_failure: continue_with_degraded_service
                script: |
                  if {{ item }} == 2:
                      raise KeyError("two")
                  return {{ item }}
        """
    )
    # THEN the run is degraded on both engines
    assert _same_document(run_on_both_engines(path))["status"] == "degraded"


def test_a_distributed_loop_that_fails_fails_the_run_as_locally(
    write_pipeline: Write, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a distributed loop retried once, whose second iteration fails under abort_pipeline
    monkeypatch.setattr(history, "INLINE_EVENTS", 1)
    path = write_pipeline(
        """
        name: aborting
        tasks:
          - name: each
            type: for_loop
            iterate_over: [1, 2, 3]
            error_handling:
              retry_count: 1
              retry_delay: 0
            tasks:
              - name: picky
                type: python_task
                script: |
                  if {{ item }} == 2:
                      raise ValueError("not two")
                  return {{ item }}
        """
    )
    documents = {}
    for engine in ("local", "stepfunctions"):
        monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path / engine))
        result = cli("run", path, "--json", "--engine", engine)
        assert result.code == 1, result.stderr
        documents[engine] = result.document()
    # THEN both fail alike: the loop failed after 2 attempts with the iteration's error
    local, remote = documents["local"], documents["stepfunctions"]
    for key in ("status", "outputs", "error"):
        assert remote[key] == local[key], key
    assert agreed_tasks(remote) == agreed_tasks(local)
    assert local["tasks"]["each"]["attempts"] == 2
    assert local["error"]["type"] == "ValueError" and local["error"]["task"] == "each"


def test_one_iteration_past_the_quota_is_warned_about_at_the_loop(write_pipeline: Write, cli: Cli) -> None:
    # GIVEN a loop over an input whose every iteration runs a while_loop of 4,000 iterations
    path = write_pipeline(
        """
        name: heavy
        input_variables:
          rows: {type: array, default: []}
        tasks:
          - name: each
            type: for_loop
            iterate_over: "{{ rows }}"
            tasks:
              - name: spin
                type: while_loop
                condition: "{{ loop_index < 10 }}"
                max_iterations: 4000
                tasks:
                  - name: turn
                    type: python_task
                    script: return {}
        """
    )
    node = build_plan(read_pipeline(path)).body.nodes["each"]
    # THEN it is distributed whatever its count, and compile warns that one iteration alone
    # (one child execution) may pass the quota
    assert loop_mode(node) == "distributed"
    assert history.child_events(node).events > QUOTA
    warnings = cli("compile", path).stderr.splitlines()
    assert len(warnings) == 1 and "for_loop 'each' runs as a Distributed Map" in warnings[0]
