"""How many history events a run of the compiled state machine records, estimated at compile time,
and which for_loops therefore run as a Distributed Map.

A Standard execution records at most 25,000 events; past that it fails, whatever the
pipeline's error handling says. Loops are what get there: every iteration records the events
of its body again. So a for_loop whose iterations may record more than `INLINE_EVENTS` runs as
a Distributed Map (`loop_mode`): each iteration is a child execution with a history of its
own, and the parent records the Map run's few events whatever the count. That bound also keeps
an inline loop's records within what one execution state holds (`state_budget`: each record
costs at least 2.5 events, so at most 1,000 of them). When the count is known when compiling
(a literal `iterate_over`, one that renders without any input or output) the compiler decides;
otherwise the state machine does, from the count the dispatch function's `items` action (or,
for the pipeline's own array input, a Choice rule) finds at run time: at most
`inline_iterations` iterations run inline.

`history_warnings` warns, at a loop, when a run may still pass the quota: a while_loop whose
`max_iterations` may, or one iteration of a for_loop alone (a child execution's history).

The counts follow the states the compiler emits (see asl.py): a Lambda call records 5 events
(state entered, scheduled, started, succeeded, state exited), a Pass or Choice state 2, a Map
or Parallel state 4 (a body's parallel steps too), and each Map iteration 2 more (its start
and end), plus the Pass state that collects its outputs unless its body ends with one leaf
task (which collects them in its call). A Distributed Map records 6 in its execution (entered,
started, its Map run's start and end, succeeded, exited) and a call that collects its results.
Retries and failures add events; the estimate is for a run where every task succeeds at its
first attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from orchestrator.aws.asl import ends_with_leaf, final_leaf, first_iteration_runs
from orchestrator.aws.series_parallel import Parallel, Shape, decompose
from orchestrator.errors import Diagnostic, OrchestratorError
from orchestrator.plan import Body, Node, Plan
from orchestrator.spec.models import DynamicTaskGroup, ForLoop, ParallelGroup, PipelineGroup, WhileLoop
from orchestrator.template import jinja

QUOTA = 25_000
"""History events a Standard execution may record."""
INLINE_EVENTS = 2_500
"""The most events a for_loop's iterations may record in the execution they run in (an inline
Map); a loop whose iterations may record more runs as a Distributed Map. A tenth of the quota:
the rest is for the other tasks and retries, and an inline loop under it keeps its records
under the 1,000 one state holds."""
LAMBDA_CALL = 5
PASS_OR_CHOICE = 2
CONTAINER = 4
ITERATION = 2  # iteration started and succeeded
MAP_RUN = 6  # a Distributed Map in its execution: entered, started, map run started and ended, ...

LoopMode = Literal["inline", "distributed", "runtime"]
"""How a for_loop runs: as an inline Map, as a Distributed Map, or as either, chosen at run time
from its count (at most `inline_iterations` inline)."""


@dataclass(frozen=True)
class Estimate:
    """Events of one run of a task (`events`); `known` is False when a loop's count of
    iterations could not be known, and `events` then counts the most it records in this
    execution (`node_events`)."""

    events: int
    known: bool = True

    def __add__(self, other: Estimate) -> Estimate:
        return Estimate(self.events + other.events, self.known and other.known)


def iterations(task: ForLoop | WhileLoop) -> int | None:
    """How many times a loop's body runs at most, when the compiler can know it."""
    if isinstance(task, WhileLoop):
        return task.max_iterations
    items: Any = task.iterate_over
    if isinstance(items, str):
        try:
            items = jinja.render_value(items, jinja.GLOBALS)  # when it needs no input, no output
        except (OrchestratorError, TypeError, ValueError):
            return None
    return len(items) if isinstance(items, list | tuple | dict) else None


def reads_s3(task: ForLoop) -> bool:
    """A for_loop over `s3://bucket/key.json`: a Distributed Map reading the list from S3."""
    source = task.iterate_over
    return isinstance(source, str) and source.startswith("s3://") and not jinja.is_template(source)


def inline_iterations(node: Node) -> int:
    """The most iterations of a for_loop that run inline: their events stay within
    `INLINE_EVENTS` (0 when one iteration alone may record more)."""
    return INLINE_EVENTS // max(1, per_iteration(node).events)


def loop_mode(node: Node) -> LoopMode:
    """How a for_loop runs on AWS (see the module's docstring)."""
    task = node.task
    assert isinstance(task, ForLoop)
    if reads_s3(task):
        return "distributed"
    limit = inline_iterations(node)
    count = iterations(task)
    if count is not None:
        return "distributed" if count > limit else "inline"
    return "distributed" if limit == 0 else "runtime"


def body_events(body: Body) -> Estimate:
    total = Estimate(_steps_events(decompose({name: node.dependencies for name, node in body.nodes.items()})))
    for node in body.nodes.values():
        total = total + node_events(node)
    return total


def _steps_events(shape: Shape) -> int:
    """Events of a body's parallel steps themselves (their tasks' are counted apart)."""
    if isinstance(shape, str):
        return 0
    own = 0
    if isinstance(shape, Parallel):
        own = CONTAINER
    return own + sum(_steps_events(part) for part in shape.parts)


def per_iteration(node: Node) -> Estimate:
    """Events of one iteration of a loop's body, the loop's own states for it included."""
    body = node.body
    inner = body_events(body) if body is not None else Estimate(0)
    if isinstance(node.task, WhileLoop):
        # the check, and the advance call unless the body's last task takes the step itself
        folded = body is not None and ends_with_leaf(body)
        return inner + Estimate(PASS_OR_CHOICE + (0 if folded else LAMBDA_CALL))
    # the Pass collecting the iteration's outputs, unless its last leaf task does (`final_leaf`)
    ends_in_leaf = body is not None and final_leaf(body) is not None
    return inner + Estimate(ITERATION + (0 if ends_in_leaf else PASS_OR_CHOICE))


def child_events(node: Node) -> Estimate:
    """Events of one iteration of a for_loop run as a Distributed Map, in its child execution:
    the body, in a Parallel state that catches its failure, then a Pass with its output."""
    return per_iteration(node) + Estimate(CONTAINER + PASS_OR_CHOICE)


def node_events(node: Node) -> Estimate:
    """Events of one run of a task in the execution it runs in, its condition's state included.
    A for_loop whose count is known only at run time counts the most it may record there."""
    task = node.task
    guard = Estimate(PASS_OR_CHOICE if task.condition is not None else 0)
    if isinstance(task, ForLoop):
        items = LAMBDA_CALL if isinstance(task.iterate_over, str) else 0
        own = guard + Estimate(items + CONTAINER + PASS_OR_CHOICE)
        mode = loop_mode(node)
        distributed = Estimate(MAP_RUN + LAMBDA_CALL)  # the Map run, and the call collecting its results
        if mode == "distributed":
            return own + distributed
        each = per_iteration(node)
        if mode == "inline":
            return own + _times(each, iterations(task))
        most = max(inline_iterations(node) * each.events, distributed.events)
        return own + Estimate(PASS_OR_CHOICE + most, known=False)  # the route, then either way
    if isinstance(task, WhileLoop):
        # a Parallel around the start (in its Parameters when it is known when compiling, else
        # a call and the first check), then the iterations
        known = first_iteration_runs(task) is not None
        start = Estimate(CONTAINER + (0 if known else LAMBDA_CALL + PASS_OR_CHOICE))
        return guard + start + _times(per_iteration(node), task.max_iterations)
    if isinstance(task, ParallelGroup):
        inner = body_events(node.body) if node.body is not None else Estimate(0)
        return guard + Estimate(CONTAINER) + inner
    if isinstance(task, DynamicTaskGroup):
        # the expansion, then per generated task (unknown in number): its call
        each = Estimate(ITERATION + LAMBDA_CALL)
        return guard + Estimate(LAMBDA_CALL + CONTAINER) + Estimate(each.events, known=False)
    if isinstance(task, PipelineGroup):
        # children are compiled in; their own bodies are not in this plan: one call each, at least
        per_child = Estimate(LAMBDA_CALL + PASS_OR_CHOICE + LAMBDA_CALL)
        return guard + Estimate(CONTAINER) + _times(per_child, len(task.pipelines))
    return guard + Estimate(LAMBDA_CALL)


def _times(each: Estimate, count: int | None) -> Estimate:
    if count is None:
        return Estimate(each.events, known=False)
    return Estimate(each.events * count, each.known)


def history_warnings(plan: Plan) -> list[Diagnostic]:
    """A warning at every loop whose estimated events may pass the quota, and at the pipeline
    when its whole run may."""
    warnings: list[Diagnostic] = []
    _warn_loops(plan.body, plan, warnings)
    total = body_events(plan.body)
    if total.known and total.events > QUOTA and not warnings:
        message = (
            f"a run records about {total.events:,} history events; a Standard execution records "
            f"at most {QUOTA:,} and then fails: run fewer tasks per execution (split the pipeline)"
        )
        warnings.append(plan.source.source.diagnostic(("tasks",), message, severity="warning"))
    return warnings


def _warn_loops(body: Body, plan: Plan, warnings: list[Diagnostic]) -> None:
    for node in body.nodes.values():
        task = node.task
        message = None
        if isinstance(task, ForLoop) and loop_mode(node) != "inline":
            # its iterations may each run in a child execution: only one alone can pass the quota
            each = child_events(node).events
            if each > QUOTA:
                message = (
                    f"for_loop '{node.name}' runs as a Distributed Map, and one iteration records "
                    f"about {each:,} history events in its child execution; a Standard execution "
                    f"records at most {QUOTA:,} and then fails: loop in fewer states per iteration"
                )
        elif isinstance(task, WhileLoop):
            estimate = node_events(node)
            if estimate.events > QUOTA:
                message = (
                    f"{node.kind} '{node.name}' records about {estimate.events:,} history events "
                    f"({task.max_iterations:,} iterations at most x about {per_iteration(node).events} "
                    f"each); a Standard execution records at most {QUOTA:,} and then fails: lower "
                    "max_iterations, or loop in fewer states"
                )
        if message is not None:
            warnings.append(plan.source.source.diagnostic(tuple(node.location), message, severity="warning"))
        elif node.body is not None:
            _warn_loops(node.body, plan, warnings)
