"""A sensitive input means the same on both engines (issue 11, divergence 8).

On AWS a sensitive input is sealed (KMS) in the execution input, so the state machine itself
cannot read it: a condition on it, or a for_loop over it, is decided by a Lambda that opens
it, never by a Choice comparing the sealed envelope (which silently never matched). A
for_loop may not iterate a sensitive input: its items are the loop's state on AWS.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import CliResult, agreed_tasks
from orchestrator.aws.asl import compile_pipeline
from orchestrator.plan import build_plan
from orchestrator.spec.loading import read_pipeline

PIPELINE = """
name: sensitive_conditions
input_variables:
  mode: {type: string, sensitive: true}
  codes: {type: array, default: [a1, b2]}
  level: {type: integer, default: 2}
tasks:
  - name: fast_path
    type: python_task
    condition: "mode == 'turbo'"
    script: return "fast"
  - name: slow_path
    type: python_task
    condition: "{{ mode != 'turbo' }}"
    script: return "slow"
  - name: per_code
    type: for_loop
    condition: "mode == 'turbo' and level > 1"
    iterate_over: "{{ codes }}"
    tasks:
      - name: length
        type: python_task
        script: return len("{{ item }}")
  - name: plain
    type: python_task
    condition: "level > 1"
    script: return "plain"
"""


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "sensitive_conditions.yaml"
    path.write_text(PIPELINE, encoding="utf-8")
    return path


def test_the_state_machine_never_reads_a_sensitive_input(pipeline: Path) -> None:
    # WHEN the pipeline compiles
    text = str(compile_pipeline(build_plan(read_pipeline(pipeline))))

    # THEN no state reads the sealed input; plain inputs are still read in place (but a for_loop's
    # items, even an array input's, which the dispatch function counts: issue 12)
    assert "$.inputs.mode" not in text
    assert "$.inputs.level" in text


def test_a_for_loop_over_a_sensitive_input_is_refused_where_it_is_written(
    cli: Callable[..., CliResult], write_pipeline: Callable[..., Path]
) -> None:
    path = write_pipeline(
        """
        name: loop_over_secret
        security: {sensitive_variables: [tokens]}
        input_variables:
          tokens: {type: array}
        tasks:
          - name: outer
            type: parallel_group
            tasks:
              - name: each
                type: for_loop
                iterate_over: "{{ tokens }}"
                tasks:
                  - name: use
                    type: python_task
                    script: return 1
        """
    )

    result = cli("validate", path)

    assert result.code == 1
    assert f"{path}:12:23:" in result.stderr
    assert "for_loop 'each' iterates the sensitive input 'tokens'" in result.stderr
    assert "(tasks[0].tasks[0].iterate_over)" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["turbo", "careful"])
def test_conditions_on_a_sensitive_input_agree_on_both_engines(
    run_on_both_engines: Callable[..., dict[str, CliResult]], pipeline: Path, mode: str
) -> None:
    results = run_on_both_engines(pipeline, "-i", f"mode={mode}")

    local, aws = results["local"].document(), results["stepfunctions"].document()
    ran = {name for name, task in local["tasks"].items() if task["status"] == "succeeded"}
    if mode == "turbo":
        assert ran == {"fast_path", "per_code", "plain"}
        assert local["outputs"]["per_code"] == [{"length": 2}, {"length": 2}]
    else:
        assert ran == {"slow_path", "plain"}
    for key in ("status", "outputs", "error"):
        assert aws[key] == local[key], key
    assert agreed_tasks(aws) == agreed_tasks(local)
