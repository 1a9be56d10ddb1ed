"""No payload surprises: the execution state stays under Step Functions' 256 KiB (issue 12).

Step Functions fails a run whose state passes 256 KiB (`States.DataLimitExceeded`, which no
Catch handles; the emulator enforces it too). Values each under the 200 KB a value may take
used to stay in the state and add up past it (divergence 26). Now every value goes to S3 above
its share of the state's budget (`aws/state_budget.py`), and whatever reads it (a task, a
condition, a loop, the run document) resolves it. Each pipeline here runs on both engines and
gives the same run document; the largest state its execution had is measured from the
emulator's history.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conformance.test_both_engines import comparable
from conftest import CliResult
from orchestrator.aws.conditions import decide
from orchestrator.aws.emulator import run_execution
from orchestrator.aws.payloads import is_reference, offload, offload_members, reference_size, size
from orchestrator.aws.state_budget import (
    STATE_BUDGET,
    STATE_QUOTA,
    inline_limit,
    largest_state,
    state_records,
)
from orchestrator.aws.stepfunctions_engine import execution_input
from orchestrator.plan import Plan, build_plan
from orchestrator.runtime.inputs import resolve_inputs
from orchestrator.spec.loading import read_pipeline

RunBoth = Callable[..., dict[str, CliResult]]
Write = Callable[..., Path]
KB = 1000


def _plan(path: Path) -> Plan:
    return build_plan(read_pipeline(path))


def _plan_of(path: Path) -> Plan:
    return _plan(path)


def _records(path: Path) -> int:
    return state_records(_plan(path), _plan_of)


def _same_documents(results: dict[str, CliResult]) -> dict[str, Any]:
    """Both engines' documents, which must be the same (times and run ids masked); the local one."""
    local, remote = results["local"].document(), results["stepfunctions"].document()
    mine, theirs = comparable(local), comparable(remote)
    for key in mine:
        if mine[key] != theirs[key]:
            left, right = json.dumps(mine[key])[:600], json.dumps(theirs[key])[:600]
            pytest.fail(f"the engines disagree on {key}:\n local {left}\n aws   {right}")
    return local


def _largest_state(path: Path, inputs: dict[str, Any] | None = None) -> int:
    """The largest state of an execution of `path` on the emulator, which must succeed."""
    plan = _plan(path)
    run = {"id": "state-size", "pipeline": plan.pipeline_id, "started_at": "2026-01-01T00:00:00+00:00"}
    given = resolve_inputs(plan.pipeline, inputs or {})
    execution = run_execution(plan, lambda: execution_input(plan, given, run), "state-size")
    assert execution["status"] == "SUCCEEDED"
    return largest_state(execution["history"])


# -- the inline limit --------------------------------------------------------------------------


def test_a_value_moves_to_s3_above_its_limit_and_never_for_a_bigger_reference() -> None:
    stored: dict[str, bytes] = {}

    class Bucket:
        def put_object(
            self, *, Bucket: str, Key: str, Body: bytes, ContentType: str, IfNoneMatch: str
        ) -> None:
            stored[Key] = Body

    value = "x" * 5000
    assert offload(value, "run", "task", "bucket", limit=6000, client=Bucket()) == value
    moved = offload(value, "run", "task", "bucket", limit=4000, client=Bucket())
    assert is_reference(moved) and size(moved) == reference_size("run", "task", "bucket")
    assert len(stored) == 1
    # below its reference's size a value stays, whatever the limit: a reference would not help
    small = "y" * (reference_size("run", "task", "bucket") - 2)
    assert offload(small, "run", "task", "bucket", limit=0, client=Bucket()) == small
    # no bucket (the embedded engine's functions): the value as it is
    assert offload(value, "run", "task", None, limit=0) == value
    # a mapping's largest members go first, until the rest fits
    inputs = {"big": "b" * 3000, "medium": "m" * 1500, "small": "s"}
    kept = offload_members(inputs, "run", "child", "bucket", limit=2500, client=Bucket())
    assert is_reference(kept["big"]) and kept["medium"] == inputs["medium"] and kept["small"] == "s"


def test_records_count_what_one_state_can_hold(write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: counted
        input_variables:
          rows: {type: array, default: [1, 2]}
        outputs: {total: "{{ leaf }}"}
        tasks:
          - name: leaf
            type: python_task
            script: return 1
          - name: literal_loop
            type: for_loop
            iterate_over: [1, 2, 3]
            tasks:
              - name: body
                type: python_task
                script: return 1
          - name: runtime_loop
            type: for_loop
            iterate_over: "{{ rows }}"
            tasks:
              - name: first
                type: python_task
                script: return 1
              - name: second
                type: python_task
                script: return 2
          - name: group
            type: parallel_group
            tasks:
              - name: one
                type: python_task
                script: return 1
              - name: two
                type: python_task
                script: return 2
          - name: again
            type: while_loop
            condition: "{{ loop_index < 2 }}"
            max_iterations: 3
            tasks:
              - name: step
                type: python_task
                script: return {}
          - name: generated
            type: dynamic_task_group
            tasks: "{{ [] }}"
        """
    )
    # leaf 1, literal loop 3 x (1 + item), runtime loop one iteration (2 + item), group 2 x 2,
    # while loop 1 + its state, dynamic group spec + output, the outputs section 1
    assert _records(path) == 1 + 3 * 2 + 3 + 4 + 2 + 2 + 1
    assert inline_limit(STATE_BUDGET, _records(path)) == STATE_BUDGET // 19


# -- both engines, the same documents -----------------------------------------------------------


@pytest.mark.slow
def test_three_outputs_of_150_kb(write_pipeline: Write, run_on_both_engines: RunBoth) -> None:
    path = write_pipeline(
        """
        name: three_outputs
        tasks:
          - name: first
            type: python_task
            script: return "ab" * 75000
          - name: second
            type: python_task
            script: return "cd" * 75000
          - name: third
            type: python_task
            script: return "ef" * 75000
          - name: lengths
            type: python_task
            script: |
              return [len(context.get_task_output(n)) for n in ("first", "second", "third")]
        """
    )
    local = _same_documents(run_on_both_engines(path))
    assert local["status"] == "succeeded" and local["outputs"]["lengths"] == [150_000] * 3
    assert local["outputs"]["third"] == "ef" * 75000
    assert _largest_state(path) < STATE_BUDGET


@pytest.mark.slow
def test_a_for_loop_of_10_items_returning_50_kb_each(
    write_pipeline: Write, run_on_both_engines: RunBoth
) -> None:
    path = write_pipeline(
        """
        name: loop_of_big_outputs
        input_variables:
          items: {type: array, default: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}
        outputs:
          sizes: "{{ each | map(attribute='make') | map('length') | list }}"
        tasks:
          - name: each
            type: for_loop
            iterate_over: "{{ items }}"
            max_concurrency: 4
            tasks:
              - name: make
                type: python_task
                script: return "{{ item }}" * 50000
          - name: literal
            type: for_loop
            iterate_over: [a, b, c, d, e, f, g, h, i, j]
            tasks:
              - name: make_more
                type: python_task
                script: |
                  return {"item": "{{ item }}", "text": "{{ item }}" * 50000}
        """
    )
    local = _same_documents(run_on_both_engines(path))
    assert local["status"] == "succeeded"
    assert local["result"] == {"sizes": [50_000] * 10}
    assert local["outputs"]["literal"][9]["make_more"]["item"] == "j"
    assert _largest_state(path) < STATE_BUDGET


@pytest.mark.slow
def test_many_tasks_returning_50_kb_each(write_pipeline: Write, run_on_both_engines: RunBoth) -> None:
    """30 outputs of 50 KB (1.5 MB, six times the quota) stay out of the execution state; the
    benchmark (`bench/state_size.py`) measures the 100 of issue 12, which take a minute here."""
    tasks = "".join(
        f"""
          - name: task_{i}
            type: python_task
            script: return "{i % 10}" * 50000
        """
        for i in range(30)
    )
    path = write_pipeline(
        f"""
        name: many_outputs
        tasks:{tasks}
          - name: total
            type: python_task
            script: |
              return sum(len(context.get_task_output(f"task_{{i}}")) for i in range(30))
        """
    )
    local = _same_documents(run_on_both_engines(path))
    assert local["status"] == "succeeded" and local["outputs"]["total"] == 1_500_000
    assert _largest_state(path) < STATE_BUDGET


@pytest.mark.slow
def test_nested_loops_divide_the_limit_again(write_pipeline: Write, run_on_both_engines: RunBoth) -> None:
    path = write_pipeline(
        """
        name: nested_loops
        tasks:
          - name: outer
            type: for_loop
            iterate_over: "{{ range(5) | list }}"
            item_variable: row
            tasks:
              - name: inner
                type: for_loop
                iterate_over: "{{ range(row * 10, row * 10 + 6) | list }}"
                item_variable: col
                tasks:
                  - name: cell
                    type: python_task
                    script: return str({{ col }}) * 20000
          - name: total
            type: python_task
            script: |
              return sum(len(cell["cell"]) for row in {{ outer }} for cell in row["inner"])
        """
    )
    local = _same_documents(run_on_both_engines(path))
    assert local["outputs"]["total"] == 6 * 20000 + 24 * 40000
    assert _largest_state(path) < STATE_BUDGET


@pytest.mark.slow
def test_a_condition_on_a_field_of_an_output_kept_in_s3(
    write_pipeline: Write, run_on_both_engines: RunBoth
) -> None:
    """A Choice rule cannot see inside a reference: the dispatch function decides instead."""
    path = write_pipeline(
        """
        name: condition_on_big_output
        tasks:
          - name: report
            type: python_task
            script: |
              return {"ok": True, "count": 3, "blob": "x" * 100000}
          - name: when_ok
            type: python_task
            condition: "{{ report.ok }}"
            script: return "ran"
          - name: when_not_ok
            type: python_task
            condition: "{{ report.ok == false }}"
            script: return "ran"
          - name: when_counted
            type: python_task
            condition: "{{ report.count > 2 and report['blob'] is defined }}"
            script: return {{ report.count }}
        """
    )
    local = _same_documents(run_on_both_engines(path))
    statuses = {name: local["tasks"][name]["status"] for name in ("when_ok", "when_not_ok", "when_counted")}
    assert statuses == {"when_ok": "succeeded", "when_not_ok": "skipped", "when_counted": "succeeded"}
    assert local["outputs"]["when_counted"] == 3


@pytest.mark.slow
def test_a_for_loop_over_an_output_kept_in_s3(write_pipeline: Write, run_on_both_engines: RunBoth) -> None:
    path = write_pipeline(
        """
        name: loop_over_big_output
        tasks:
          - name: rows
            type: python_task
            script: |
              return [{"id": i, "text": str(i) * 5000} for i in range(20)]
          - name: each
            type: for_loop
            iterate_over: "{{ rows }}"
            item_variable: row
            tasks:
              - name: measure
                type: python_task
                condition: "{{ row.id != 3 }}"
                script: |
                  return {"id": {{ row.id }}, "length": len({{ row.text }})}
          - name: over_pairs
            type: for_loop
            iterate_over: "{{ rows[0] }}"
            tasks:
              - name: key
                type: python_task
                script: return {{ item }}[0]
        """
    )
    local = _same_documents(run_on_both_engines(path))
    assert local["status"] == "succeeded"
    measured = [iteration["measure"] for iteration in local["outputs"]["each"]]
    assert measured[2] == {"id": 2, "length": 5000} and measured[3] is None
    assert local["outputs"]["over_pairs"] == [{"key": "id"}, {"key": "text"}]


@pytest.mark.slow
def test_loop_states_child_inputs_generated_tasks_and_failed_groups(
    write_pipeline: Write, run_on_both_engines: RunBoth
) -> None:
    """What else puts values into the state: a while_loop's state, a child pipeline's inputs,
    a dynamic group's generated tasks, the children of a group that failed (read back from the
    history)."""
    write_pipeline(
        """
        name: child
        input_variables:
          text: {type: string}
        tasks:
          - name: measure
            type: python_task
            script: return len({{ text }})
        """,
        name="state_size_child",
    )
    path = write_pipeline(
        """
        name: many_values
        tasks:
          - name: big
            type: python_task
            script: return "z" * 150000
          - name: grow
            type: while_loop
            condition: "{{ loop_index < 3 }}"
            max_iterations: 5
            tasks:
              - name: step
                type: python_task
                script: |
                  return {"n": {{ loop_index }}, "blob": "w" * 120000}
          - name: children
            type: pipeline_group
            pipelines:
              - pipeline: state_size_child.yaml
                inputs: {text: "{{ big }}"}
          - name: plan
            type: python_task
            script: |
              return [{"type": "python_task", "script": 'return "g" * 60000'} for _ in range(4)]
          - name: generated
            type: dynamic_task_group
            parallel: true
            tasks: "{{ plan }}"
          - name: group
            type: parallel_group
            error_handling: {on_failure: continue_with_degraded_service}
            tasks:
              - name: fine
                type: python_task
                script: return "f" * 90000
              - name: broken
                type: python_task
                depends_on: [fine]
                script: raise ValueError("boom")
          - name: summary
            type: python_task
            depends_on: [group]
            script: |
              generated = [len(g) for g in {{ generated }}]
              return {"state": {{ grow.state.n }}, "child": {{ children }}, "generated": generated}
        """
    )
    local = _same_documents(run_on_both_engines(path))
    assert local["status"] == "degraded"
    assert local["outputs"]["summary"] == {
        "state": 2,
        "child": {"state_size_child": {"measure": 150_000}},
        "generated": [60_000] * 4,
    }
    assert local["outputs"]["fine"] == "f" * 90000
    assert local["tasks"]["fine"]["status"] == "succeeded"


def test_a_choice_rule_leaves_the_equality_with_a_long_string_to_the_function() -> None:
    """A string that long may be in S3, where the rule would see its reference."""
    long, short = "x" * 80, "x" * 20
    for literal, may_be_in_s3 in ((long, True), (short, False)):
        decision = decide(f"a == '{literal}'", lambda name: "$.a" if name == "a" else None)
        assert decision is not None
        assert ("$.a['$payload']" in json.dumps(decision.undecided)) is may_be_in_s3


def test_the_state_quota_is_what_the_emulator_enforces() -> None:
    from moto.stepfunctions.parser.quotas import MAX_STATE_SIZE_UTF8_BYTES

    assert STATE_QUOTA == MAX_STATE_SIZE_UTF8_BYTES
    assert STATE_BUDGET < STATE_QUOTA
