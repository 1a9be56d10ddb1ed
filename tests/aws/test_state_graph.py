"""The compiled state graph ends, and the run document reads it back whatever its shape.

Every bundled pipeline and every pipeline of the compiler's corpus compiles to states whose
transitions all lead somewhere that exists, never to themselves or round a loop without a
Choice, under names of at most 80 characters, each used once. Containers nest (a loop or a
group as a child of a parallel_group), child pipelines may have ids that JSONPath cannot name
after a dot, names over 80 characters are shortened, and containers retry: the documents of
both engines agree on all of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import PIPELINES, CliResult, agreed_tasks, every_state
from orchestrator.aws.asl import (
    MAX_STATE_NAME,
    compile_pipeline,
    shortened_state_names,
    state_key,
)
from orchestrator.aws.build import compile_definition
from orchestrator.plan import build_plan
from orchestrator.spec.loading import read_pipeline

CORPUS = Path(__file__).parent / "corpus"
SOURCES = sorted(PIPELINES.glob("*.yaml")) + sorted(CORPUS.glob("*.yaml"))
RunBoth = Callable[..., dict[str, CliResult]]
Write = Callable[..., Path]


def _machines(definition: dict[str, Any], where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """The definition's own `States`, then each branch's and item processor's, with where they are."""
    yield where or "(top)", definition["States"]
    for name, state in definition["States"].items():
        for index, branch in enumerate(state.get("Branches", [])):
            yield from _machines(branch, f"{where}{name}[{index}] > ")
        if "ItemProcessor" in state:
            yield from _machines(state["ItemProcessor"], f"{where}{name} > ")


def _targets(state: dict[str, Any]) -> list[str]:
    found = [state["Next"]] if "Next" in state else []
    found += [choice["Next"] for choice in state.get("Choices", [])]
    found += [state["Default"]] if "Default" in state else []
    found += [catch["Next"] for catch in state.get("Catch", [])]
    return found


def _problems(definition: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for where, states in _machines(definition):
        for name, state in states.items():
            if name in seen or len(name) > MAX_STATE_NAME:
                problems.append(f"{where}{name}: used twice, or over {MAX_STATE_NAME} characters")
            seen.add(name)
            missing = [target for target in _targets(state) if target not in states]
            if missing:
                problems.append(f"{where}{name}: goes to {missing}, not states of its machine")
            if state.get("Next") == name:
                problems.append(f"{where}{name}: its Next is itself")
            ends = state.get("End") or state["Type"] in {"Choice", "Succeed", "Fail"} or "Next" in state
            if not ends:
                problems.append(f"{where}{name}: neither Next nor End")
        # a path of Nexts must reach an End; only a Choice may go back (a while loop's check)
        for start in states:
            walked = [start]
            while states[walked[-1]]["Type"] != "Choice" and "Next" in states[walked[-1]]:
                walked.append(states[walked[-1]]["Next"])
                if walked[-1] in walked[:-1]:
                    problems.append(f"{where}endless: {' -> '.join(walked)}")
                    break
                if walked[-1] not in states:
                    break
    return problems


@pytest.mark.parametrize("source", SOURCES, ids=lambda path: f"{path.parent.name}/{path.stem}")
def test_every_transition_leads_to_a_state_that_exists_and_ends(source: Path) -> None:
    # GIVEN a bundled or corpus pipeline
    # WHEN it compiles
    definition = compile_definition(source)
    # THEN its states form a graph every run can leave
    assert not _problems(definition), "\n".join(_problems(definition))


def test_containers_in_a_parallel_group_end_with_their_own_branch_state() -> None:
    # GIVEN a parallel_group whose children are a group, loops and groups of other kinds
    definition = compile_definition(CORPUS / "nested_containers.yaml")
    branches = every_state(definition)["outer"]["Branches"]
    # THEN each branch ends with the child's record, which the container's last states write
    # (its own state, or, when its own states run in the branch, those that end it)
    for branch, child in zip(branches, ["inner", "each", "repeat", "generated", "children"], strict=True):
        last = [state for state in branch["States"].values() if state.get("End")]
        assert last and all(state["OutputPath"] == f"$.tasks.{child}" for state in last)
        assert all(state["ResultPath"] == f"$.tasks.{child}" for state in last)


def test_a_child_pipeline_id_that_jsonpath_cannot_name_gets_a_plain_key() -> None:
    assert state_key("right_child") == "right_child"
    keys = {state_key(identifier) for identifier in ("21_child", "2nd-child.v1", "2nd_child_v1", "_child")}
    assert len(keys) == 4 and all(key.startswith("pipeline_") for key in keys)
    assert state_key("21_child").startswith("pipeline_21_child_")
    # every path to a child's inputs in the definition uses the plain key
    definition = compile_definition(CORPUS / "nested_containers.yaml")
    text = str(definition)
    assert "$.child_inputs.2nd" not in text and "$.children.2nd" not in text
    assert f"$.child_inputs.{state_key('2nd-child.v1')}.value" in text


LONG_NAMES = """
name: long names
tasks:
  - name: {top}
    type: python_task
    script: return 1
  - name: group
    type: parallel_group
    tasks:
      - name: {child}
        type: for_loop
        iterate_over: [1]
        tasks:
          - name: {inner}
            type: python_task
            script: return 2
"""


def test_shortened_state_names_are_kept_with_the_names_they_stand_for(write_pipeline: Write) -> None:
    # GIVEN task names whose states, prefixes and roles included, are over 80 characters
    top, child, inner = "t" * 90, "c" * 76, "i" * 10
    path = write_pipeline(LONG_NAMES.format(top=top, child=child, inner=inner))
    plan = build_plan(read_pipeline(path))
    # WHEN it compiles
    definition = compile_pipeline(plan)
    long_names = shortened_state_names(plan)
    # THEN every name over 80 characters was shortened, and is known by its full name
    names = {name for _, states in _machines(definition) for name in states}
    assert all(len(name) <= MAX_STATE_NAME for name in names)
    assert set(long_names) == {name for name in names if "~" in name}
    assert set(long_names.values()) >= {
        top,
        f"group/{child}.items",
        f"group/{child}",  # (its Map: the loop's attempt, its own states in the branch)
        f"group/{child}/{inner}",
    }


@pytest.mark.slow
def test_nested_containers_and_odd_child_ids_mean_the_same_on_both_engines(
    run_on_both_engines: RunBoth,
) -> None:
    # GIVEN containers inside a parallel_group, and a child pipeline named 2nd-child.v1
    # WHEN it runs on both engines
    results = run_on_both_engines(CORPUS / "nested_containers.yaml")
    local, remote = (results[engine].document() for engine in ("local", "stepfunctions"))
    # THEN the documents agree
    assert agreed_tasks(remote) == agreed_tasks(local)
    assert remote["outputs"] == local["outputs"]
    assert local["outputs"]["outer"]["children"]["2nd-child.v1"] == {
        "positive": 2,
        "each": [{"scaled": 2}, {"scaled": 4}],
        "inputs": 12,
    }


CONTAINER_RETRIES = """
name: container retries
input_variables:
  numbers: {type: array, default: [1, 2]}
tasks:
  - name: group
    type: parallel_group
    tasks:
      - name: nested
        type: parallel_group
        tasks:
          - name: broken
            type: python_task
            script: |
              raise ValueError("boom")
    error_handling: {retry_count: 2, retry_delay: 0, on_failure: continue_with_degraded_service}
  - name: over_input
    type: for_loop
    iterate_over: "{{ numbers }}"
    tasks:
      - name: failing
        type: python_task
        script: |
          raise ValueError("nope")
    error_handling: {retry_count: 1, retry_delay: 0, on_failure: skip}
  - name: repeat
    type: while_loop
    condition: "{{ loop_index < 2 }}"
    max_iterations: 3
    tasks:
      - name: tick
        type: python_task
        script: |
          raise ValueError("tick")
    error_handling: {retry_count: 1, retry_delay: 0, on_failure: continue_with_degraded_service}
  - name: chained
    type: parallel_group
    tasks:
      - name: one
        type: python_task
        script: return 1
      - name: two
        type: python_task
        script: |
          raise ValueError("two after {{ one }}")
        error_handling: {retry_count: 1, retry_delay: 0}
      - name: three
        type: python_task
        script: return {{ two }}
    error_handling: {on_failure: skip}
"""


@pytest.mark.slow
def test_retried_containers_and_failed_groups_children_mean_the_same_on_both_engines(
    write_pipeline: Write, run_on_both_engines: RunBoth
) -> None:
    # GIVEN containers retried by their retry_count, and a group failed by a child's abort
    path = write_pipeline(CONTAINER_RETRIES)
    # WHEN it runs on both engines
    results = run_on_both_engines(path)
    local, remote = (results[engine].document() for engine in ("local", "stepfunctions"))
    # THEN each container made 1 + retries attempts, and the failed groups list their children
    attempts = {name: record["attempts"] for name, record in local["tasks"].items()}
    assert attempts | {"group": 3, "over_input": 2, "repeat": 2, "nested": 1, "two": 2} == attempts
    statuses = {name: local["tasks"][name]["status"] for name in ("nested", "one", "two", "three")}
    assert statuses == {"nested": "failed", "one": "succeeded", "two": "failed", "three": "not_run"}
    assert local["status"] == "degraded"
    assert agreed_tasks(remote) == agreed_tasks(local)
    assert remote["outputs"] == local["outputs"]
    assert remote["status"] == local["status"]


PARENT_OF_CHILD = """
name: parent
input_variables:
  number: {type: integer, default: 2}
tasks:
  - name: children
    type: pipeline_group
    pipelines:
      - {pipeline: child.yaml, inputs: {value: "{{ number }}"}}
"""


@pytest.mark.slow
@pytest.mark.parametrize("number", ["2", "-1"])
def test_child_inputs_given_by_parameters_mean_the_same_on_both_engines(
    write_pipeline: Write, run_on_both_engines: RunBoth, number: str
) -> None:
    # GIVEN a child whose input is a copy of the parent's (no dispatch call builds it), read by
    # the child's condition, its loop and its tasks
    write_pipeline((CORPUS / "2nd-child.v1.yaml").read_text(), name="child")
    path = write_pipeline(PARENT_OF_CHILD)
    assert not any(name.endswith("/.inputs") for name in every_state(compile_definition(path)))
    # WHEN it runs on both engines, its condition true and false
    results = run_on_both_engines(path, "-i", f"number={number}")
    local, remote = (results[engine].document() for engine in ("local", "stepfunctions"))
    # THEN the documents agree
    assert agreed_tasks(remote) == agreed_tasks(local)
    assert remote["outputs"] == local["outputs"]
    assert local["outputs"]["children"]["child"]["inputs"] == int(number) + 10
