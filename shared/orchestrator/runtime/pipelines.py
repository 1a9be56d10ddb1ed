"""What a pipeline means beyond its tasks, for both engines: its rendered `outputs`, and for
a pipeline_group, each child pipeline's plan and inputs and the error a failed child gives."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.errors import OrchestratorError, TaskError
from orchestrator.plan import Plan
from orchestrator.runtime.inputs import resolve_inputs
from orchestrator.runtime.leaf import canonical_hash, render
from orchestrator.runtime.scope import Scope
from orchestrator.spec.models import PipelineGroup
from orchestrator.template import jinja


def child_path(group: PipelineGroup, index: int, parent: Path) -> Path:
    """The file of child number `index`, relative to the parent pipeline's folder."""
    return (parent.parent / group.pipelines[index].pipeline).resolve()


def child_run(
    group: PipelineGroup,
    index: int,
    scope: Scope,
    parent: Path,
    load: Callable[[Path], Plan],
    *,
    including: tuple[Path, ...] = (),
) -> tuple[Plan, dict[str, Any]]:
    """Child number `index` of a pipeline_group: its plan (`load` reads it) and its inputs,
    rendered and resolved against its `input_variables`. `including` are the pipelines that
    include this one (a child among them is a `PipelineCycle`); a child that cannot be read,
    or inputs it refuses, are `ChildPipelineInvalid`."""
    child = group.pipelines[index]
    path = child_path(group, index, parent)
    if path in including:
        chain = " -> ".join(p.name for p in (*including, path))
        raise TaskError("PipelineCycle", f"pipelines include each other: {chain}")
    try:
        plan = load(path)
        inputs = resolve_inputs(plan.pipeline, render(child.inputs, scope))
    except OrchestratorError as error:
        raise TaskError("ChildPipelineInvalid", f"{child.pipeline}: {error}") from None
    return plan, inputs


def child_failed(group: PipelineGroup, index: int, error: dict[str, Any]) -> TaskError:
    """What a pipeline_group fails with when child number `index` failed with `error`
    (its run document's error)."""
    return TaskError(
        "ChildPipelineFailed",
        f"{group.pipelines[index].pipeline}: task '{error.get('task')}' failed: "
        f"{error.get('type')}: {error.get('message')}",
    )


def render_outputs(outputs: Any, scope: Scope) -> Any:
    """A pipeline's `outputs` section rendered; one that cannot be, or that gives a value JSON
    cannot hold (`{{ range(3) }}`), is a task error whose message starts with `outputs: ` (the
    run's error names no task)."""
    try:
        rendered = render(outputs, scope)
    except TaskError as error:
        raise TaskError(error.error_type, f"outputs: {error.message}") from None
    for key, value in rendered.items() if isinstance(rendered, dict) else [("", rendered)]:
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as error:
            raise TaskError(
                "OutputNotSerializable",
                f"outputs: '{key}' is not a JSON value ({type(error).__name__}: {error}); make it "
                "text, a number, a boolean, null, a list or a mapping (| list turns a range into one)",
            ) from None
    return rendered


def run_scope(inputs: dict[str, Any], run_id: str, pipeline_id: str, started_at: str) -> Scope:
    """A run's top scope: its inputs, `input_hash`, `run` and the template globals; task
    outputs go into the returned scope's `outputs`."""
    values: dict[str, Any] = dict(inputs)
    values["input_hash"] = canonical_hash(inputs)
    values["run"] = {"id": run_id, "pipeline": pipeline_id, "started_at": started_at}
    return Scope({}, Scope(values, Scope(jinja.GLOBALS))).child()


def pipeline_timeout(timeout: float) -> dict[str, Any]:
    """The error of a run stopped by its pipeline's `resource_limits.timeout` (no task's)."""
    return {
        "task": None,
        "type": "PipelineTimeout",
        "message": f"the run exceeded its timeout of {timeout:g}s",
    }
