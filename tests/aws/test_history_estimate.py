"""Issue 12: `compile` estimates each loop's history events and warns, at the loop, when a run
may pass the 25,000-event quota of a Standard execution."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import CliResult
from orchestrator.aws.emulator import run_execution
from orchestrator.aws.history import QUOTA, body_events
from orchestrator.aws.stepfunctions_engine import execution_input
from orchestrator.plan import build_plan
from orchestrator.spec.loading import read_pipeline

Cli = Callable[..., CliResult]
Write = Callable[..., Path]
CORPUS = Path(__file__).parent / "corpus"


@pytest.mark.slow
def test_the_estimate_is_close_to_what_the_emulator_records() -> None:
    # GIVEN a pipeline with leaves, a condition, for_loops (rendered and literal items), a
    # while_loop that runs to max_iterations and a parallel_group
    plan = build_plan(read_pipeline(CORPUS / "history_measured.yaml"))
    estimate = body_events(plan.body)
    # WHEN it runs on the emulator
    run = {"id": "measured", "pipeline": plan.pipeline_id, "started_at": "2026-01-01T00:00:00+00:00"}
    execution = run_execution(plan, lambda: execution_input(plan, {}, run), "measured")
    assert execution["status"] == "SUCCEEDED"
    # THEN the estimate, known, is within 15 % of the events recorded
    recorded = len(execution["history"])
    assert estimate.known
    assert abs(estimate.events - recorded) <= 0.15 * recorded, (estimate, recorded)


LOOPS = """
name: loops
input_variables:
  rows: {type: array, default: []}
tasks:
  - name: each
    type: for_loop
    iterate_over: "{{ range(5000) | list }}"
    tasks:
      - name: work
        type: python_task
        script: return 1
  - name: poll
    type: while_loop
    condition: "{{ loop_index < 10 }}"
    max_iterations: 4000
    tasks:
      - name: tick
        type: python_task
        script: return {}
  - name: few
    type: for_loop
    iterate_over: [1, 2, 3]
    tasks:
      - name: small
        type: python_task
        script: return 1
  - name: over_input
    type: for_loop
    iterate_over: "{{ rows }}"
    tasks:
      - name: unknown
        type: python_task
        script: return 1
  - name: heavy
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


def test_compile_warns_at_each_loop_that_may_pass_the_quota(write_pipeline: Write, cli: Cli) -> None:
    path = write_pipeline(LOOPS)
    result = cli("compile", path)
    assert result.code == 0
    warnings = result.stderr.splitlines()
    # a while_loop of up to 4,000 iterations: located, with the estimate and how it is made,
    # the quota and what to do
    assert warnings[0].startswith(f"{path}:13:5: warning: while_loop 'poll' records about ")
    assert "(4,000 iterations at most x about" in warnings[0] and f"{QUOTA:,}" in warnings[0]
    assert "max_iterations" in warnings[0] and warnings[0].endswith("(tasks[1])")
    # a for_loop runs as a Distributed Map when its iterations could pass the quota (issue 12):
    # its 5,000 items are not warned about, one iteration that alone records too many is
    assert warnings[1].startswith(f"{path}:35:5: warning: for_loop 'heavy' runs as a Distributed Map")
    assert "one iteration records about" in warnings[1] and "child execution" in warnings[1]
    # three items, and items only an input can tell, are not warned about
    assert len(warnings) == 2
