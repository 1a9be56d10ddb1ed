"""How many bytes a value may take in the execution state before it moves to S3 (issue 12).

Step Functions fails a run whose state passes 256 KiB (`States.DataLimitExceeded`, which no
Catch handles). Values are what grows a state: task outputs, rendered fallback values, loop
items and collected loop results, a while_loop's state, child pipeline inputs, the `outputs`
section. So the state gets a budget of `STATE_BUDGET` bytes for them (the rest of the quota is
for the inputs, the run, errors, conditions and the records' own keys), shared equally by
every *record* that can be in one state at once (`state_records`): a value above its share,
its *inline limit*, goes to S3 and the state keeps a reference (`payloads.offload`).

The number of records is the plan's, counted the way the compiled machine keeps them
(`asl.py`): one per leaf task; a for_loop's iterations each hold their body's records and
their item, and all of them stay in the loop's result; a parallel_group's children are in its
record twice (`children` and `output`); a while_loop keeps its body's records and its state; a
dynamic_task_group's generated tasks each hold their spec and their output; a pipeline_group
holds its children's records (twice when they run in sequence) and their inputs; the
`outputs` section is one more. A loop over a literal list counts every iteration. Anything
whose count is only known at run time (a for_loop over a template, a dynamic_task_group's
tasks) counts one iteration here, and the dispatch function divides the limit by the count
when it knows it: its iterations run with `run.inline_limit` = the limit / count (`divided`),
so loops nested in loops divide again.

A value never moves for less than its reference takes (100-250 bytes with its record), so the
bound holds while the state's records number about 1,000 at most, loop iterations included
(on the emulator, a for_loop of 1,200 iterations returning 50 KB each peaks at 55% of the
quota): past that even references do not fit in one state. So a for_loop whose iterations
would record more than `history.INLINE_EVENTS` events (each record costs at least 2.5)
runs as a Distributed Map, whose results stay out of the state: it counts one iteration here,
as its iterations each hold their records in a child execution's state, and the loop's output
is one reference. Inputs and error messages are not offloaded: they take from the room the
budget leaves.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from orchestrator.plan import Body, Node, Plan
from orchestrator.spec.models import DynamicTaskGroup, ForLoop, ParallelGroup, PipelineGroup, WhileLoop

STATE_QUOTA = 256 * 1024
"""Step Functions' quota for one state's input or output (bytes of its JSON, UTF-8)."""
STATE_BUDGET = 160_000
"""Bytes of values one execution state may hold, of `STATE_QUOTA`."""

PlanOf = Callable[[Path], Plan]
_COUNTED: dict[int, tuple[Plan, int]] = {}


def state_records(plan: Plan, plan_of: PlanOf) -> int:
    """How many records (values) an execution of `plan` can hold in one state, counting one
    iteration of each loop whose count is only known at run time (`plan_of`: a child pipeline's
    plan by its path)."""
    cached = _COUNTED.get(id(plan))
    if cached is not None and cached[0] is plan:
        return cached[1]
    count = max(1, body_records(plan.body, plan.path, plan_of) + (plan.pipeline.outputs is not None))
    if len(_COUNTED) > 256:
        _COUNTED.clear()
    _COUNTED[id(plan)] = (plan, count)
    return count


def body_records(body: Body, path: Path, plan_of: PlanOf) -> int:
    return sum(_node_records(node, path, plan_of) for node in body.nodes.values())


def literal_count(task: ForLoop) -> int | None:
    """A for_loop's number of iterations, when its items are a literal list (the compiler
    puts them in the state as they are; no function sees them)."""
    return len(task.iterate_over) if isinstance(task.iterate_over, list) else None


def _node_records(node: Node, path: Path, plan_of: PlanOf) -> int:
    task = node.task
    inner = body_records(node.body, path, plan_of) if node.body is not None else 0
    if isinstance(task, ForLoop):
        per_iteration = inner + 1  # the body's records and the item
        count = literal_count(task)
        if count is None or _distributed(node):
            return per_iteration  # (a Distributed Map's iterations: one in each child's state)
        return per_iteration * max(1, count)
    if isinstance(task, WhileLoop):
        return inner + 1  # the body's records and the loop's state
    if isinstance(task, ParallelGroup):
        return 2 * inner
    if isinstance(task, DynamicTaskGroup):
        return 2  # per generated task: its spec and its output
    if isinstance(task, PipelineGroup):
        total = 0
        for child in task.pipelines:
            try:
                child_plan = plan_of((path.parent / child.pipeline).resolve())
            except Exception:  # compiling refused it already; count it as one record
                total += 1
                continue
            records = body_records(child_plan.body, child_plan.path, plan_of)
            total += 1 + (records if task.mode == "parallel" else 2 * records)  # + its inputs
        return total
    return 1


def _distributed(node: Node) -> bool:
    """Whether a for_loop over a literal list runs as a Distributed Map (`history.loop_mode`):
    its results are one reference in the state, each iteration's records in its own."""
    from orchestrator.aws.history import loop_mode  # (history reads the compiler, which reads this)

    return loop_mode(node) == "distributed"


def inline_limit(budget: int, records: int) -> int:
    """The bytes each record's value may take in the state."""
    return budget // max(1, records)


def divided(limit: int, count: int) -> int:
    """The inline limit inside each of `count` iterations of a loop whose records had `limit`."""
    return limit // max(1, count)


def largest_state(history: Iterable[Mapping[str, Any]]) -> int:
    """The bytes of the largest state an execution had (a state's input or output), from its
    history, measured as the emulator checks the quota: JSON with spaces after `:` and `,`
    (compact JSON, as AWS may count it, is a little smaller)."""
    largest = 0
    for event in history:
        for key, field in (("stateEnteredEventDetails", "input"), ("stateExitedEventDetails", "output")):
            text = (event.get(key) or {}).get(field)
            if isinstance(text, str):
                largest = max(largest, len(json.dumps(json.loads(text)).encode()))
    return largest
