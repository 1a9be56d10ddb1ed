"""How many history events a run of the compiled state machine records, estimated at compile time.

A Standard execution records at most 25,000 events; past that it fails, whatever the
pipeline's error handling says. Loops are what get there: every iteration records the events
of its body again. From what the compiler can know (a literal `iterate_over`, one that
renders without any input or output, a while_loop's `max_iterations`), `history_warnings`
estimates each loop's events and warns, at the loop, when it may pass the quota.

The counts follow the states the compiler emits (see asl.py): a Lambda call records 5 events
(state entered, scheduled, started, succeeded, state exited), a Pass or Choice state 2, a Map
or Parallel state 4 (a body's parallel steps too, with a Pass gathering each branch of more
than one task), and each Map iteration 2 more (its start and end), plus the Pass state that
collects its outputs unless its body is one leaf task. Retries and failures add events; the
estimate is for a run where every task succeeds at its first attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.aws.asl import LEAF_KINDS, ends_with_leaf, first_iteration_runs
from orchestrator.aws.series_parallel import Parallel, Shape, decompose
from orchestrator.errors import Diagnostic, OrchestratorError
from orchestrator.plan import Body, Node, Plan
from orchestrator.spec.models import DynamicTaskGroup, ForLoop, ParallelGroup, PipelineGroup, WhileLoop
from orchestrator.template import jinja

QUOTA = 25_000
"""History events a Standard execution may record."""
LAMBDA_CALL = 5
PASS_OR_CHOICE = 2
CONTAINER = 4
ITERATION = 2  # iteration started and succeeded


@dataclass(frozen=True)
class Estimate:
    """Events of one run of a task (`events`); `known` is False when a loop's count of
    iterations could not be known, and `events` then counts one iteration of it."""

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
        own = CONTAINER + sum(PASS_OR_CHOICE for part in shape.parts if not isinstance(part, str))
    return own + sum(_steps_events(part) for part in shape.parts)


def per_iteration(node: Node) -> Estimate:
    """Events of one iteration of a loop's body, the loop's own states for it included."""
    body = node.body
    inner = body_events(body) if body is not None else Estimate(0)
    if isinstance(node.task, WhileLoop):
        # the check, and the advance call unless the body's last task takes the step itself
        folded = body is not None and ends_with_leaf(body)
        return inner + Estimate(PASS_OR_CHOICE + (0 if folded else LAMBDA_CALL))
    one_leaf = (
        body is not None and len(body.nodes) == 1 and next(iter(body.nodes.values())).kind in LEAF_KINDS
    )
    return inner + Estimate(ITERATION + (0 if one_leaf else PASS_OR_CHOICE))


def node_events(node: Node) -> Estimate:
    """Events of one run of a task, its condition's state included."""
    task = node.task
    guard = Estimate(PASS_OR_CHOICE if task.condition is not None else 0)
    if isinstance(task, ForLoop):
        items = LAMBDA_CALL if isinstance(task.iterate_over, str) else 0
        return (
            guard
            + Estimate(items + CONTAINER + PASS_OR_CHOICE)
            + _times(per_iteration(node), iterations(task))
        )
    if isinstance(task, WhileLoop):
        # a Parallel around the start (a Pass when it is known when compiling, else a call and
        # the first check), then the iterations
        known = first_iteration_runs(task) is not None
        start = Estimate(CONTAINER + (PASS_OR_CHOICE if known else LAMBDA_CALL + PASS_OR_CHOICE))
        return guard + start + _times(per_iteration(node), task.max_iterations)
    if isinstance(task, ParallelGroup):
        inner = body_events(node.body) if node.body is not None else Estimate(0)
        return guard + Estimate(CONTAINER) + inner
    if isinstance(task, DynamicTaskGroup):
        # the expansion, then per generated task (unknown in number): route, call
        each = Estimate(ITERATION + PASS_OR_CHOICE + LAMBDA_CALL)
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
        count = iterations(task) if isinstance(task, ForLoop | WhileLoop) else None
        estimate = node_events(node)
        if count is not None and estimate.events > QUOTA:
            each = per_iteration(node).events
            if isinstance(task, ForLoop):
                counted, fix = "items", "process the items in batches (each batch a child pipeline)"
            else:
                counted, fix = "iterations at most", "lower max_iterations, or loop in fewer states"
            message = (
                f"{node.kind} '{node.name}' records about {estimate.events:,} history events "
                f"({count:,} {counted} x about {each} each); a Standard execution records at most "
                f"{QUOTA:,} and then fails: {fix}"
            )
            warnings.append(plan.source.source.diagnostic(tuple(node.location), message, severity="warning"))
        elif node.body is not None:
            _warn_loops(node.body, plan, warnings)
