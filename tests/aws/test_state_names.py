"""Whatever a user calls a task, its state cannot collide with another state of the machine.

Task states are named after their tasks (identifiers, so never holding a dot); the compiler's
own states are `task.role` or, for a loop's own states, `.role`. A while loop whose body tasks
are named after the loop's states (start, check, advance, done) used to overwrite them: a
moto error, or with `advance` an endless loop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import CliResult, every_state
from orchestrator.aws.asl import compile_pipeline
from orchestrator.plan import build_plan
from orchestrator.spec.loading import read_pipeline

ROLE_NAMES = ["start", "check", "advance", "done", "result", "route", "skip", "items", "expand", "collect"]

WHILE_WITH_ROLE_NAMES = """
name: role_names
tasks:
  - name: loop
    type: while_loop
    condition: "{{ loop_state.n | default(0) < 3 }}"
    max_iterations: 10
    tasks:
      - name: start
        type: python_task
        script: |
          return {"n": context.get_loop_iteration()}
      - name: check
        type: python_task
        script: return {{ start.n }} + 1
      - name: advance
        type: python_task
        script: return {{ check }} * 10
      - name: done
        type: python_task
        script: |
          return {"n": {{ check }}, "seen": {{ advance }}}
  - name: items
    type: for_loop
    iterate_over: [1, 2]
    tasks:
      - name: result
        type: python_task
        script: return {{ item }}
  - name: collect
    type: parallel_group
    tasks:
      - name: route
        type: python_task
        script: return "r"
      - name: skip
        type: python_task
        script: return "s"
"""


def test_tasks_named_like_the_compilers_states_keep_their_own(tmp_path: Path) -> None:
    # GIVEN tasks named after every role the compiler gives its own states
    path = tmp_path / "role_names.yaml"
    path.write_text(WHILE_WITH_ROLE_NAMES, encoding="utf-8")

    # WHEN it compiles
    states = every_state(compile_pipeline(build_plan(read_pipeline(path))))

    # THEN each task is a Lambda call under its own name, beside the loop's own states
    for name in ("loop/start", "loop/check", "loop/advance", "loop/done"):
        assert states[name]["Type"] == "Task", name
        assert states[name]["Parameters"]["FunctionName"] == "${PythonTaskFunctionArn}", name
    assert states["loop/.check"]["Type"] == "Choice"
    # (the body's last task, `done`, takes the loop's step itself and goes back to the check)
    assert states["loop/done"]["Next"] == "loop/.check"
    assert states["loop/done"]["ResultPath"] == "$.loops.loop"


@pytest.mark.slow
def test_tasks_named_like_the_compilers_states_run_the_same_on_both_engines(
    run_on_both_engines: Callable[..., dict[str, CliResult]], tmp_path: Path
) -> None:
    path = tmp_path / "role_names.yaml"
    path.write_text(WHILE_WITH_ROLE_NAMES, encoding="utf-8")
    results = run_on_both_engines(path)
    local, aws = results["local"].document(), results["stepfunctions"].document()
    assert local["status"] == aws["status"] == "succeeded"
    assert local["outputs"] == aws["outputs"]
    assert local["outputs"]["loop"] == {"iterations": 3, "state": {"n": 3, "seen": 30}}
    assert {name: task["status"] for name, task in local["tasks"].items()} == {
        name: task["status"] for name, task in aws["tasks"].items()
    }
