"""Issue 12: the compiled state machine keeps the plan's concurrency.

Tasks that do not depend on each other run in the branches of Parallel states, at every level,
so the longest chain of leaf-task Lambda calls in the definition is the plan's critical path:
for every bundled pipeline, and for any series-parallel graph of tasks (hypothesis draws them).
For other graphs the longest chain still has as many calls as the critical path
(`series_parallel`'s docstring says what waits then)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Set
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PIPELINES, CliResult, every_state
from orchestrator.aws.asl import FUNCTION_PLACEHOLDERS, compile_pipeline
from orchestrator.aws.series_parallel import Parallel, Series, critical_path, decompose, longest_chain, names
from orchestrator.plan import Body, build_plan
from orchestrator.spec.loading import read_pipeline
from orchestrator.spec.models import ForLoop, ParallelGroup, PipelineGroup, WhileLoop

LEAF_FUNCTIONS = {FUNCTION_PLACEHOLDERS[kind] for kind in ("python_task", "llm_task", "web_search_task")}


def _is_leaf_call(name: str, state: dict[str, Any]) -> bool:
    """A task's own attempt (not its fallback, which only runs after it failed); a generated
    task's function is named by its spec (`FunctionName.$`)."""
    if state.get("Type") != "Task":
        return False
    parameters = state.get("Parameters", {})
    if "FunctionName.$" in parameters:
        return True
    function = str(parameters.get("FunctionName", ""))
    leaf = function in LEAF_FUNCTIONS or any(function.startswith(f[:-4]) for f in LEAF_FUNCTIONS)
    return leaf and not name.endswith(".fallback")


def calls_deep(machine: Mapping[str, Any]) -> int:
    """The longest chain of leaf-task Lambda calls through a state graph (a Map counts one
    iteration, a loop's back edge is not followed)."""
    states: dict[str, Any] = machine["States"]
    memo: dict[str, int] = {}

    def deep(name: str, visiting: frozenset[str]) -> int:
        if name in visiting:
            return 0
        if name in memo:
            return memo[name]
        state = states[name]
        own = 1 if _is_leaf_call(name, state) else 0
        if state["Type"] == "Parallel":
            own = max(calls_deep(branch) for branch in state["Branches"])
        elif state["Type"] == "Map":
            own = calls_deep(state["ItemProcessor"])
        following = [choice["Next"] for choice in state.get("Choices", [])]
        following += [state[key] for key in ("Next", "Default") if key in state]
        following += [catch["Next"] for catch in state.get("Catch", [])]
        result = own + max((deep(n, visiting | {name}) for n in following), default=0)
        memo[name] = result
        return result

    return deep(machine["StartAt"], frozenset())


def plan_depth(body: Body, folder: Path) -> int:
    """The plan's critical path in leaf calls: a container weighs the critical path of (one
    iteration of) its body; a sequential pipeline_group the sum of its children's."""
    weight: dict[str, int] = {}
    for name, node in body.nodes.items():
        task = node.task
        if isinstance(task, ForLoop | WhileLoop | ParallelGroup) and node.body is not None:
            weight[name] = plan_depth(node.body, folder)
        elif isinstance(task, PipelineGroup):
            depths = [
                plan_depth(build_plan(read_pipeline(folder / child.pipeline)).body, folder)
                for child in task.pipelines
            ]
            weight[name] = max(depths) if task.mode == "parallel" else sum(depths)
        else:
            weight[name] = 1
    return critical_path({name: node.dependencies for name, node in body.nodes.items()}, weight)


BUNDLED = [path for path in sorted(PIPELINES.glob("*.yaml"))]


@pytest.mark.parametrize("path", BUNDLED, ids=[path.stem for path in BUNDLED])
def test_a_bundled_pipeline_is_as_many_calls_deep_as_its_critical_path(path: Path) -> None:
    plan = build_plan(read_pipeline(path))
    assert calls_deep(compile_pipeline(plan)) == plan_depth(plan.body, path.parent)


def test_demo_runs_its_independent_tasks_side_by_side() -> None:
    # GIVEN the demo: `countdown` depends on nothing, `long_list_note` only on `prepare`
    plan = build_plan(read_pipeline(PIPELINES / "demo.yaml"))
    definition = compile_pipeline(plan)
    # THEN the machine starts with a parallel step whose branches hold them
    first = definition["States"][definition["StartAt"]]
    assert first["Type"] == "Parallel"
    assert calls_deep(definition) == 3


@st.composite
def series_parallel_graphs(draw: st.DrawFn, size: int = 4) -> dict[str, set[str]]:
    """A random series-parallel graph of named tasks, as each task's dependencies."""
    counter = iter(range(10_000))

    def build(depth: int) -> tuple[dict[str, set[str]], set[str], set[str]]:
        """(dependencies, sources, sinks) of a drawn part."""
        kind = draw(st.sampled_from(["task", "series", "parallel"])) if depth < 3 else "task"
        if kind == "task":
            name = f"t{next(counter)}"
            return {name: set()}, {name}, {name}
        parts = [build(depth + 1) for _ in range(draw(st.integers(2, size)))]
        graph: dict[str, set[str]] = {}
        if kind == "parallel":
            for part, _, _ in parts:
                graph |= part
            return graph, set().union(*(p[1] for p in parts)), set().union(*(p[2] for p in parts))
        for index, (part, sources, _sinks) in enumerate(parts):
            for name, needs in part.items():
                graph[name] = set(needs) | (parts[index - 1][2] if index and name in sources else set())
        return graph, parts[0][1], parts[-1][2]

    graph, _, _ = build(0)
    shuffled = draw(st.permutations(sorted(graph)))
    return {name: graph[name] for name in shuffled}


def _check_shape(graph: Mapping[str, Set[str]]) -> None:
    shape = decompose(graph)
    assert sorted(names(shape)) == sorted(graph)
    assert _respects(shape, graph, set())
    assert longest_chain(shape) == critical_path(graph)


def _respects(shape: Any, graph: Mapping[str, Set[str]], done: set[str]) -> bool:
    """Every task starts after all it depends on (what a part may rely on having finished)."""
    if isinstance(shape, str):
        ok = graph[shape] <= done
        done.add(shape)
        return ok
    if isinstance(shape, Series):
        return all(_respects(part, graph, done) for part in shape.parts)
    assert isinstance(shape, Parallel)
    before = set(done)
    results = []
    for part in shape.parts:
        seen = set(before)
        results.append(_respects(part, graph, seen))
        done |= seen
    return all(results)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(series_parallel_graphs())
def test_a_series_parallel_graph_keeps_exactly_its_critical_path(graph: dict[str, set[str]]) -> None:
    _check_shape(graph)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(2, 14).flatmap(
        lambda n: st.lists(st.sets(st.integers(0, n - 1), max_size=3), min_size=n, max_size=n)
    )
)
def test_any_graph_keeps_its_order_and_as_many_tasks_on_its_longest_chain(edges: list[set[int]]) -> None:
    graph = {f"t{i}": {f"t{j}" for j in needs if j < i} for i, needs in enumerate(edges)}
    _check_shape(graph)


def test_deep_nesting_runs_the_rest_in_levels() -> None:
    # GIVEN a chain where every task has a task hanging off it (parallel parts nest 30 deep)
    graph: dict[str, set[str]] = {}
    for index in range(30):
        graph[f"c{index}"] = {f"c{index - 1}"} if index else set()
        graph[f"p{index}"] = {f"c{index}"}
    # THEN nesting stops at the bound and the critical path is still kept
    _check_shape(graph)


PYTHON_TASK = """  - name: {name}
    type: python_task
{needs}    script: return 1
"""


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(series_parallel_graphs(size=3))
def test_a_compiled_series_parallel_pipeline_is_its_critical_path_deep(
    tmp_path: Path, graph: dict[str, set[str]]
) -> None:
    # GIVEN a pipeline whose python tasks depend on each other as the drawn graph says
    text = "name: drawn\ntasks:\n" + "".join(
        PYTHON_TASK.format(
            name=name, needs=f"    depends_on: [{', '.join(sorted(needs))}]\n" if needs else ""
        )
        for name, needs in graph.items()
    )
    path = tmp_path / "drawn.yaml"
    path.write_text(text, encoding="utf-8")
    # WHEN it compiles THEN no chain of Lambda calls is longer than the critical path
    definition = compile_pipeline(build_plan(read_pipeline(path)))
    assert calls_deep(definition) == critical_path(graph)
    # and every task has its state
    assert set(graph) <= set(every_state(definition))


@pytest.mark.slow
def test_independent_tasks_of_a_pipeline_overlap_on_the_emulator(
    cli: Any, write_pipeline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN three independent tasks that note when they start and end, and one after them
    path = write_pipeline(
        """
        name: overlap
        tasks:
          - name: a
            type: python_task
            script: |
              import time
              start = time.time(); time.sleep(0.5)
              return [start, time.time()]
          - name: b
            type: python_task
            script: |
              import time
              start = time.time(); time.sleep(0.5)
              return [start, time.time()]
          - name: c
            type: python_task
            script: |
              import time
              start = time.time(); time.sleep(0.5)
              return [start, time.time()]
          - name: total
            type: python_task
            depends_on: [a, b, c]
            script: return context.get_task_output("a")[0]
        """
    )
    # WHEN it runs on the emulated AWS
    result: CliResult = cli("run", path, "--engine", "stepfunctions", "--json")
    document = json.loads(result.stdout)
    assert document["status"] == "succeeded"
    spans = [document["outputs"][name] for name in "abc"]
    # THEN the three ran at the same time: each started before the others ended
    assert max(start for start, _ in spans) < min(end for _, end in spans)
    assert document["outputs"]["total"] == spans[0][0]
