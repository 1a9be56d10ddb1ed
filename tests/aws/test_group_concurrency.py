"""Issue 12: `parallel_group.max_concurrency` holds on AWS. A Parallel state has no limit, so a
group with a max_concurrency below its number of children compiles to a Map over the children's
positions with that MaxConcurrency, and means what it means on the embedded engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import CliResult, agreed_tasks
from orchestrator.aws.build import compile_definition

RunBoth = Callable[..., dict[str, CliResult]]
Write = Callable[..., Path]
CORPUS = Path(__file__).parent / "corpus"


def _maps(states: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every Map state, at any depth, by name."""
    found: dict[str, dict[str, Any]] = {}
    for name, state in states.items():
        if state["Type"] == "Map":
            found[name] = state
            found |= _maps(state["ItemProcessor"]["States"])
        for branch in state.get("Branches", []):
            found |= _maps(branch["States"])
    return found


def test_a_limited_group_is_a_map_with_its_max_concurrency() -> None:
    maps = _maps(compile_definition(CORPUS / "limited_groups.yaml")["States"])
    # (the groups have no error handling of their own: the Map, their attempt, has their name)
    assert maps["group"]["MaxConcurrency"] == 2
    assert maps["each/inner_group"]["MaxConcurrency"] == 1
    # each iteration is routed to one child's states, and gets the whole state with the loop's
    router = maps["each/inner_group"]["ItemProcessor"]["States"]["each/inner_group/.route"]
    assert [choice["NumericEquals"] for choice in router["Choices"]] == [0, 1]
    assert maps["each/inner_group"]["ItemSelector"]["loop.$"] == "$.loop"


@pytest.mark.slow
def test_limited_groups_mean_the_same_on_both_engines(run_on_both_engines: RunBoth) -> None:
    results = run_on_both_engines(CORPUS / "limited_groups.yaml")
    local, remote = (results[engine].document() for engine in ("local", "stepfunctions"))
    assert agreed_tasks(remote) == agreed_tasks(local)
    assert remote["outputs"] == local["outputs"]
    assert local["outputs"]["group"] == {"a": 11, "b": None, "c": [{"double": 2}, {"double": 4}]}


@pytest.mark.slow
def test_a_failing_child_of_a_limited_group_stops_the_ones_after_it_alike(
    write_pipeline: Write, run_on_both_engines: RunBoth
) -> None:
    path = write_pipeline(
        """
        name: limited failing group
        tasks:
          - name: group
            type: parallel_group
            max_concurrency: 1
            error_handling: {on_failure: continue_with_degraded_service}
            tasks:
              - name: ok
                type: python_task
                script: return 1
              - name: broken
                type: python_task
                script: raise ValueError("boom")
              - name: never
                type: python_task
                script: return 3
          - name: after
            type: python_task
            script: return 4
        """
    )
    results = run_on_both_engines(path)
    local, remote = (results[engine].document() for engine in ("local", "stepfunctions"))
    assert remote["status"] == local["status"] == "degraded"
    assert agreed_tasks(remote) == agreed_tasks(local)
    assert [local["tasks"][name]["status"] for name in ("ok", "broken", "never")] == [
        "succeeded",
        "failed",
        "not_run",
    ]
