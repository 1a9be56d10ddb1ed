"""Plan -> Amazon States Language (JSONPath): one small function per construct, plain dicts out.

The execution state is `{"inputs", "run", "tasks", "errors", "items", "loops"}`; every task
writes `{"status", "output"}` to `$.tasks.<name>` (children of a parallel group under
`$.tasks.<group>.children.<child>`). Leaf tasks are `lambda:invoke` states that pass a small
reference to the task, the inputs, the run and only the outputs they read (see docs/aws.md).
A body keeps the plan's concurrency: its tasks run in the series-parallel shape of their
dependencies (`series_parallel`), independent ones in the branches of a Parallel state, whose
tasks' records then lie under the step's own key (`state_records`); the compiler knows where
every finished task's record lies (`Scope.records`) and passes Lambdas the records one by one.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator import error_types
from orchestrator.aws.conditions import Decision, decide
from orchestrator.aws.functions import BASE_FUNCTIONS, function_placeholder, placeholder
from orchestrator.aws.series_parallel import Parallel, Series, Shape, decompose, names
from orchestrator.aws.state_budget import STATE_BUDGET
from orchestrator.aws.state_records import PARALLEL_MARK
from orchestrator.errors import CompileError, InputError, OrchestratorError, PipelineValidationError
from orchestrator.plan import Body, Node, Plan, build_plan
from orchestrator.runtime.loops import while_iteration
from orchestrator.runtime.policy import effective_policy, task_timeout
from orchestrator.runtime.scope import Scope as RuntimeScope
from orchestrator.spec.input_types import coerce, json_input
from orchestrator.spec.loading import ChildSource, missing_file
from orchestrator.spec.models import (
    ChildPipeline,
    DynamicTaskGroup,
    ForLoop,
    LLMTask,
    ParallelGroup,
    Pipeline,
    PipelineGroup,
    PythonTask,
    TaskBase,
    WebSearchTask,
    WhileLoop,
)
from orchestrator.template import jinja

FUNCTION_PLACEHOLDERS = {kind: placeholder(logical_id) for kind, logical_id in BASE_FUNCTIONS.items()} | {
    "dispatch": placeholder("DispatchFunction")
}
LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"
NON_RETRYABLE = list(error_types.NON_RETRYABLE)  # the registry's, sorted: never retried
LAMBDA_SERVICE_ERRORS = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
]
LEAF_SELECTOR = {"status.$": "$.Payload.status", "output.$": "$.Payload.output"}
MAX_STATE_NAME = 80
# a key every JSONPath reader names after a dot (AWS; moto; statelint, which wants a letter first)
PLAIN_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
TIMEOUT_GRACE = 5


DEGRADED_ROLE = "degraded"
"""The role of the state a task that failed under `continue_with_degraded_service` goes to:
entering one, anywhere (a loop body, a child pipeline), degrades the run. (A generated task
answers its record itself: `execution.py` reads a `failed` one in the history.)"""


@dataclass(frozen=True)
class Scope:
    """Where names live while compiling one body."""

    pipeline: Pipeline
    pipeline_id: str
    path: Path
    prefix: str = ""
    inputs_path: str = "$.inputs"
    # a child pipeline's inputs built by Parameters (`_child_inputs_parameters`): given to its
    # Lambdas and iterations as they are, in place of the value at `inputs_path`
    inputs: dict[str, Any] | None = None
    loop_path: str | None = None
    # the loop around this one, as its body's Lambdas are given it (`loop_reference`): a
    # nested loop's iterations see the outer loops' variables too, as on the engine
    outer_loop: str | dict[str, Any] | None = None
    item_variable: str | None = None
    # a task that has finished (of this body or an outer one), or a finished group's child ->
    # its record's JSONPath; only these may be read
    locations: dict[str, str] = field(default_factory=dict)
    # the finished tasks' records as they lie in the state (a group's holds its children): what
    # a Lambda that may read any task is given, one by one (`records_parameter`)
    records: dict[str, str] = field(default_factory=dict)
    # a shortened state name -> the name it stands for (its prefix unshortened too); one
    # mapping for the whole definition, shared by every scope
    long_names: dict[str, str] = field(default_factory=dict)
    # the child pipelines read with the pipeline (`PipelineSource.children`), by resolved path
    children: dict[Path, ChildSource] = field(default_factory=dict)
    # the keys of the parallel steps' records so far; one set for the whole definition
    step_keys: set[str] = field(default_factory=set)
    # these states run in a Distributed Map's child execution, whose history the run's document
    # never reads: a task degraded there says so itself (`_fallback_value_state`)
    child_execution: bool = False

    def state_name(self, *parts: str) -> str:
        """The state of a task (`state_name(task)`), or one of the compiler's states around it
        (`state_name(task, role)`, `task.role`). Task names are identifiers, so they never hold
        a dot: no task's state can collide with another task's or the compiler's. A name over
        80 characters is shortened with a hash and kept in `long_names`."""
        name = self.prefix + ".".join(parts)
        if len(name) <= MAX_STATE_NAME:
            return name
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        shortened = name[: MAX_STATE_NAME - 9] + "~" + digest
        outer = self.prefix.removesuffix("/")
        full_prefix = self.long_names.get(outer, outer) + "/" if self.prefix else ""
        self.long_names[shortened] = full_prefix + ".".join(parts)
        return shortened

    def path_of(self, name: str) -> str | None:
        if name in self.locations:
            return self.locations[name] + ".output"
        if self.loop_path is not None:
            if name == self.item_variable:
                return self.loop_path + ".item"
            if name == "loop_state":
                return self.loop_path + ".state"
            if name == "loop_index":
                return self.loop_path + ".index"
        if name in self.pipeline.input_variables and name not in self.pipeline.sensitive_inputs():
            # a sensitive input is sealed in the execution input: only a Lambda can read it
            if self.inputs is not None:  # (a constant has no path: a Lambda reads it)
                return self.inputs.get(f"{name}.$")
            return f"{self.inputs_path}.{name}"
        return None


@dataclass
class Segment:
    """Compiled states for one task: where to enter, and the states whose `Next` is still open."""

    entry: str
    states: dict[str, Any]
    exits: list[str]


def compile_pipeline(plan: Plan) -> dict[str, Any]:
    """The state machine definition of a plan, as a plain dict."""
    return _compile(plan)[0]


def shortened_state_names(plan: Plan) -> dict[str, str]:
    """The state names of `plan`'s definition that were over 80 characters, shortened with a
    hash, each to the name it stands for (`group/child.role`): a history names states as the
    definition does, and the run document reads the task out of the full name."""
    return _compile(plan)[1]


def _compile(plan: Plan) -> tuple[dict[str, Any], dict[str, str]]:
    scope = Scope(plan.pipeline, plan.pipeline_id, plan.path, children=plan.source.children)
    finish: EndState | None = None
    if plan.pipeline.outputs is not None:
        # the run's `result`: the outputs section rendered once everything has finished

        def finish(after: Scope) -> dict[str, Any]:
            state = _invoke(
                "dispatch",
                {
                    "pipeline": plan.pipeline_id,
                    "action": "outputs",
                    "inputs.$": "$.inputs",
                    "run.$": "$.run",
                    "tasks": records_parameter(after),
                },
            )
            return state | {
                "ResultSelector": {"value.$": "$.Payload"},
                "ResultPath": "$.result",
                "Retry": [
                    {
                        "ErrorEquals": LAMBDA_SERVICE_ERRORS,
                        "IntervalSeconds": 1,
                        "MaxAttempts": 3,
                        "BackoffRate": 2.0,
                    }
                ],
            }

    try:
        states, start, _after = _compile_body(plan.body, scope, plan.pipeline_id, end_state=finish)
    except CompileError as error:
        _locate(error, plan)
        raise
    definition: dict[str, Any] = {
        "Comment": f"{plan.pipeline.name} ({plan.pipeline_id}), compiled by orchestrator",
        "StartAt": start,
        "States": states,
    }
    if plan.pipeline.resource_limits.timeout:
        definition["TimeoutSeconds"] = math.ceil(plan.pipeline.resource_limits.timeout)
    return definition, scope.long_names


def state_key(pipeline_id: str) -> str:
    """The key of a child pipeline in the execution state (`$.child_inputs.<key>`): its id, when
    JSONPath's dot notation can name it. An id is a file name, which may start with a digit or
    hold a dash or a dot; statelint refuses those in bracket notation too, so such an id becomes
    a plain key, readable and made unique by a hash of the id."""
    if PLAIN_KEY.fullmatch(pipeline_id):
        return pipeline_id
    digest = hashlib.sha256(pipeline_id.encode()).hexdigest()[:8]
    return "pipeline_" + re.sub(r"[^A-Za-z0-9_]", "_", pipeline_id) + "_" + digest


def _locate(error: CompileError, plan: Plan) -> None:
    """Give `error` its file, line and column in `plan` (the innermost plan: a child's wins)."""
    if error.diagnostic is None:
        error.diagnostic = plan.source.source.diagnostic(error.location, f"cannot compile: {error.message}")


# bodies -----------------------------------------------------------------------------------


def target(name: str) -> str:
    """Where a task writes its record: `$.tasks.<name>` of the state it runs in. A parallel
    step keeps its tasks' records under its own key once it ends (`_parallel_step`)."""
    return f"$.tasks.{name}"


EndState = Callable[[Scope], dict[str, Any]]
"""A body's last state, made once the body is compiled (it reads where its tasks' records lie)."""


def _compile_body(
    body: Body, scope: Scope, pipeline_id: str, *, end_state: EndState | None = None
) -> tuple[dict[str, Any], str, Scope]:
    """A body's states in its series-parallel shape (`series_parallel.decompose`): independent
    tasks run in the branches of a Parallel state. The last states exit End (or go to
    `end_state`). Returns the states, the first one, and the scope after the body, which knows
    where every task's record lies."""
    scope = replace(scope, locations=dict(scope.locations), records=dict(scope.records))
    shape = decompose({name: node.dependencies for name, node in body.nodes.items()})
    segment, scope = _compile_shape(shape, body, scope, pipeline_id)
    states = dict(segment.states)
    if end_state is not None:
        end_name = scope.state_name("", "result")
        states[end_name] = {**end_state(scope), "End": True}
        _link(segment, end_name)
    else:
        for exit_name in segment.exits:
            states[exit_name]["End"] = True
    return states, segment.entry, scope


def _compile_shape(shape: Shape, body: Body, scope: Scope, pipeline_id: str) -> tuple[Segment, Scope]:
    """A task, a series of parts linked one to the next, or a parallel step; and the scope after it."""
    if isinstance(shape, str):
        node = body.nodes[shape]
        segment = _compile_node(node, scope, pipeline_id)
        _place(scope, node, target(node.name))
        return segment, scope
    if isinstance(shape, Series):
        segments: list[Segment] = []
        for part in shape.parts:
            part_segment, scope = _compile_shape(part, body, scope, pipeline_id)
            segments.append(part_segment)
        for segment, following in itertools.pairwise(segments):
            _link(segment, following.entry)
        states: dict[str, Any] = {}
        for segment in segments:
            states.update(segment.states)
        return Segment(segments[0].entry, states, segments[-1].exits), scope
    return _parallel_step(shape, body, scope, pipeline_id)


def _parallel_step(shape: Parallel, body: Body, scope: Scope, pipeline_id: str) -> tuple[Segment, Scope]:
    """Parts that do not depend on each other, as the branches of one Parallel state.

    A branch ends with its tasks' records only: a one-task branch outputs its record
    (`OutputPath`). A longer one outputs its `$.tasks`, which then holds its own tasks' records
    only: the Parallel's Parameters give its branches the records of the tasks before it apart,
    at `PRIOR` (`_branch_state`). The Parallel keeps them all under one key of `$.tasks` (see
    `state_records`), so no record is copied once per branch and no state is needed to gather
    or merge them."""
    key = _step_key(scope, body)
    branches: list[dict[str, Any]] = []
    selector: dict[str, Any] = {PARALLEL_MARK: True}
    apart = any(not isinstance(part, str) for part in shape.parts)
    start = replace(_flat_scope(scope, PRIOR), inputs_path="$.inputs", inputs=None) if apart else scope
    for index, part in enumerate(shape.parts):
        branch_scope = replace(start, locations=dict(start.locations), records=dict(start.records))
        segment, branch_scope = _compile_shape(part, body, branch_scope, pipeline_id)
        states = dict(segment.states)
        output = target(part) if isinstance(part, str) else "$.tasks"
        for exit_name in segment.exits:
            states[exit_name] = {**states[exit_name], "OutputPath": output, "End": True}
        if isinstance(part, str):
            selector[f"{part}.$"] = f"$[{index}]"
        else:
            selector.update(
                {
                    f"{name}.$": f"$[{index}]" + branch_scope.records[name].removeprefix("$.tasks")
                    for name in names(part)
                }
            )
        branches.append({"StartAt": segment.entry, "States": states})
    name = scope.state_name("", key)
    state: dict[str, Any] = {"Type": "Parallel", "Branches": branches}
    if apart:
        state["Parameters"] = _branch_state(scope)
    state |= {"ResultSelector": selector, "ResultPath": target(key)}
    for member in names(shape):
        _place(scope, body.nodes[member], f"{target(key)}.{member}")
    return Segment(name, {name: state}, [name]), scope


PRIOR = "$.prior"
"""Where a parallel step's branches find the records of the tasks before it (`_branch_state`)."""


def _branch_state(scope: Scope) -> dict[str, Any]:
    """The state a parallel step's branches start with when one has more than one task: the
    inputs, the run, the loop they run in, the finished tasks' records one by one at `PRIOR`,
    and an empty `$.tasks` for their own (`_flat_scope(scope, PRIOR)` reads them)."""
    state: dict[str, Any] = {
        **inputs_parameter(scope),
        "run.$": "$.run",
        "prior": records_parameter(scope),
        "tasks": {},
        "errors": {},
        "items": {},
        "conditions": {},
    }
    if scope.loop_path is not None and scope.loop_path.startswith("$.loops."):
        state["loops.$"] = "$.loops"  # a while_loop's state (and any around it)
    else:
        state["loops"] = {}
        _give_loop(state, "loop", scope.loop_path)  # a for_loop iteration's `$.loop`
    if scope.outer_loop is not None:
        _give_loop(state, "outer", scope.outer_loop)
    return state


def _step_key(scope: Scope, body: Body) -> str:
    """A key of `$.tasks` for a parallel step: unique in the definition, and no task's name."""
    taken = scope.step_keys | set(body.nodes) | set(scope.records)
    number = len(scope.step_keys) + 1
    while f"parallel{number}" in taken:
        number += 1
    key = f"parallel{number}"
    scope.step_keys.add(key)
    return key


def _place(scope: Scope, node: Node, path: str) -> None:
    """Record that `node` has finished and its record lies at `path` (its group's children in it)."""
    scope.records[node.name] = path
    scope.locations[node.name] = path
    if isinstance(node.task, ParallelGroup):
        for child in node.task.tasks:
            if child.name:
                scope.locations[child.name] = f"{path}.children.{child.name}"


def records_parameter(scope: Scope, *, leave_out: str | None = None) -> dict[str, str]:
    """Parameters giving a Lambda every finished task's record, by name (what `"tasks.$": "$.tasks"`
    gave before tasks ran in parallel steps, which keep records under their own keys)."""
    return {f"{name}.$": path for name, path in scope.records.items() if name != leave_out}


def inputs_parameter(scope: Scope) -> dict[str, Any]:
    """Parameters giving a Lambda (or an iteration) the inputs of the pipeline it runs in."""
    if scope.inputs is not None:
        return {"inputs": scope.inputs}
    return {"inputs.$": scope.inputs_path}


def _flat_scope(scope: Scope, root: str = "$.tasks") -> Scope:
    """`scope` as seen from a state whose `$.tasks` (or `root`) is `records_parameter(scope)`
    (a loop iteration, a generated task, a parallel step's branch): every finished task's
    record at `<root>.<name>`."""
    records = {name: f"{root}.{name}" for name in scope.records}
    locations = dict(records)
    for name, path in scope.locations.items():
        if name not in records:  # a group's child: in its group's record
            group = next(g for g, record in scope.records.items() if path.startswith(record + ".children."))
            locations[name] = f"{root}.{group}.children.{name}"
    return replace(scope, locations=locations, records=records)


def _link(segment: Segment, target: str) -> None:
    for exit_name in segment.exits:
        segment.states[exit_name]["Next"] = target


def _reference(node: Node) -> str:
    return ".".join(str(part) for part in node.location)


def _compile_node(node: Node, scope: Scope, pipeline_id: str) -> Segment:
    task = node.task
    if not isinstance(task, PythonTask | LLMTask | WebSearchTask) and task_timeout(task) is not None:
        # Map and Parallel states have no timeout: the state machine could not stop it, while the
        # embedded engine does (never two meanings: refused here, located)
        field = "timeout" if task.timeout is not None else "resource_limits"
        raise CompileError(
            f"task '{node.name}': on AWS a {node.kind}'s own timeout cannot stop it (Map and Parallel "
            "states have none); put the timeout on the tasks inside it instead",
            (*node.location, field),
        )
    if isinstance(task, PythonTask | LLMTask | WebSearchTask):
        return _guarded(node, scope, _leaf(node, scope, pipeline_id))
    if isinstance(task, ForLoop):
        return _guarded(node, scope, _for_loop(node, task, scope, pipeline_id))
    if isinstance(task, WhileLoop):
        return _guarded(node, scope, _while_loop(node, task, scope, pipeline_id))
    if isinstance(task, ParallelGroup):
        return _guarded(node, scope, _parallel_group(node, task, scope, pipeline_id))
    if isinstance(task, DynamicTaskGroup):
        return _guarded(node, scope, _dynamic_group(node, task, scope, pipeline_id))
    if isinstance(task, PipelineGroup):
        return _guarded(node, scope, _pipeline_group(node, task, scope))
    raise CompileError(f"task '{node.name}': a {node.kind} has no state machine form", node.location)


# leaf tasks -------------------------------------------------------------------------------


def _payload(
    node: Node, scope: Scope, pipeline_id: str, *, reference: str | None = None, **extra: Any
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "pipeline": pipeline_id,
        "task": reference or _reference(node),
        **inputs_parameter(scope),
        "run.$": "$.run",
    }
    if node.computed_reads or "action" in extra:
        # dispatch calls, and scripts that compute the names they read (as the planner decided,
        # whatever Python compiles), may read any task: the function keeps what the task sees
        payload["tasks"] = records_parameter(scope, leave_out=node.name)
    else:
        outputs: dict[str, str] = {}
        records: dict[str, str] = {}
        for name in sorted(node.reads):
            if name not in scope.locations or name == node.name:
                continue
            group, child_of_group, _ = scope.locations[name].partition(".children.")
            if child_of_group:
                # a parallel group's child has no record when its group was skipped: the group's
                # record goes instead, and the function finds the child in it when it ran
                records[group.rsplit(".", 1)[1] + ".$"] = group
            else:
                outputs[f"{name}.$"] = scope.locations[name] + ".output"
        if outputs:
            payload["outputs"] = outputs
        if records:
            payload["tasks"] = records
    _give_loop(payload, "loop", loop_reference(scope))
    if extra.get("action", "leaf") in STATE_WRITING_CALLS:
        payload["state_budget"] = STATE_BUDGET  # the function keeps what it writes under its share
    payload.update(extra)
    return payload


STATE_WRITING_CALLS = frozenset({"leaf", "render", "items", "expand", "child_inputs", "while", "collect"})
"""The calls that put values into the state (a leaf task's or a fallback's output, and these
dispatch actions): each keeps a value above its share of the state's budget in S3, and resolves
the references it is given (`state_budget`, `payloads`). (The `outputs` action does too.)"""


def loop_reference(scope: Scope) -> str | dict[str, Any] | None:
    """The iteration a Lambda in this scope is given as `loop`: a for_loop's `$.loop` (which
    holds the loops around it: `_for_loop`), or a while_loop's index and state, with the loop
    around it as `outer`."""
    if scope.loop_path is None:
        return None
    if scope.loop_path == "$.loop" or scope.outer_loop is None:
        return scope.loop_path
    own = {"index.$": f"{scope.loop_path}.index", "state.$": f"{scope.loop_path}.state"}
    _give_loop(own, "outer", scope.outer_loop)
    return own


def _give_loop(parameters: dict[str, Any], key: str, reference: str | dict[str, Any] | None) -> None:
    """Put a loop reference into Parameters: a path (`key.$`) or an object built from paths."""
    if isinstance(reference, str):
        parameters[f"{key}.$"] = reference
    elif reference is not None:
        parameters[key] = reference


def _invoke(function: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "Type": "Task",
        "Resource": LAMBDA_INVOKE,
        "Parameters": {"FunctionName": FUNCTION_PLACEHOLDERS[function], "Payload": payload},
    }


RETRY_AFTER_TYPES = frozenset({"llm_task", "web_search_task"})
"""The task types whose failures may carry a provider's Retry-After: retried, their function is
told which attempt it runs (`retries`), to wait what the Retry rule does not (`task_function`)."""


def _leaf(node: Node, scope: Scope, pipeline_id: str) -> dict[str, Any]:
    payload = _payload(node, scope, pipeline_id)
    if node.kind in RETRY_AFTER_TYPES and effective_policy(node.task, scope.pipeline).retry_count > 0:
        payload["retries.$"] = "$$.State.RetryCount"
    state = _invoke(node.kind, payload)
    state["Parameters"]["FunctionName"] = function_placeholder(node, scope.pipeline)  # sized for it
    state["ResultSelector"] = dict(LEAF_SELECTOR)
    state["ResultPath"] = target(node.name)
    return state


# error handling and conditions ------------------------------------------------------------------


def _retry(node: Node, scope: Scope) -> list[dict[str, Any]]:
    policy = effective_policy(node.task, scope.pipeline)
    rules: list[dict[str, Any]] = [
        {"ErrorEquals": LAMBDA_SERVICE_ERRORS, "IntervalSeconds": 1, "MaxAttempts": 3, "BackoffRate": 2.0}
    ]
    if policy.retry_count > 0:
        interval, rate = policy.state_machine_retry()
        rules.append({"ErrorEquals": NON_RETRYABLE, "MaxAttempts": 0})
        rules.append(
            {
                "ErrorEquals": ["States.ALL"],
                "IntervalSeconds": interval,
                "MaxAttempts": policy.retry_count,
                "BackoffRate": rate,
            }
        )
    return rules


def _fallback_value_state(node: Node, scope: Scope, status: str, error_path: str) -> dict[str, Any]:
    """A state writing `{status, output: fallback_value, error}` without running the task.

    A literal, or one name the state always holds when the task fails (a task of this body, a
    loop variable, an input), is written by a Pass state. Anything else is rendered by the
    dispatch function (`render`), as the engine does it (`runtime.leaf.fallback_output`): a
    JSONPath that finds nothing would fail the whole execution, where the engine gives null
    and notes why in the task's error.

    In a Distributed Map's child execution, whose history the run document does not read, a
    degraded task's state is always the dispatch call, told to note that the run is degraded
    (`mark_degraded`: the loop's `collect` call then says so in the parent's history).
    """
    policy = effective_policy(node.task, scope.pipeline)
    value = policy.fallback_value
    parameters: dict[str, Any] = {"status": status, "error.$": error_path}
    marks = status == "failed" and scope.child_execution
    if _plain_parameter(value) and not marks:
        parameters["output"] = value
    elif not marks and (path := _always_present_path(value, scope)) is not None:
        parameters["output.$"] = path
    else:
        payload = _payload(node, scope, scope.pipeline_id, action="render", field="fallback_value")
        payload["error.$"] = error_path
        payload["status"] = status
        if marks:
            payload["mark_degraded"] = True
        state = _invoke("dispatch", payload)
        state["ResultSelector"] = {
            "status": status,
            "output.$": "$.Payload.output",
            "error.$": "$.Payload.error",
        }
        state["ResultPath"] = target(node.name)
        return state
    return {"Type": "Pass", "Parameters": parameters, "ResultPath": target(node.name)}


def _plain_parameter(value: Any) -> bool:
    """Whether a value is written as it is by a state's Parameters: no template inside it and
    no key that Step Functions would read as a path (`...$`), and no negative integer (moto's
    ASL parser reads `-1` in Parameters as the float -1.0; the dispatch function keeps it whole)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value >= 0
    if isinstance(value, str):
        return not jinja.is_template(value)
    if isinstance(value, dict):
        return all(not str(key).endswith(".$") and _plain_parameter(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_plain_parameter(item) for item in value)
    return True


def _always_present_path(value: Any, scope: Scope) -> str | None:
    """The JSONPath of a value that is exactly `{{ name }}`, when the state always holds it."""
    expression = jinja.single_expression(value) if isinstance(value, str) else None
    if expression is None or not expression.isidentifier() or expression.lower() in {"true", "false", "none"}:
        return None  # (Jinja reads those three as constants, whatever the inputs are named)
    location = scope.locations.get(expression)
    if location is not None and location not in {f"$.tasks.{expression}", f"{PRIOR}.{expression}"}:
        return None  # a parallel group's child: absent when its group was skipped
    return scope.path_of(expression)


def _guarded(node: Node, scope: Scope, made: dict[str, Any] | Held) -> Segment:
    """Wrap a task's main state with Retry, Catch (fallback / skip / degraded / abort) and its
    condition. A container's own states (`Held`) run in a one-branch Parallel that carries them,
    unless the task has no error handling of its own (`handled`): they then run in the body."""
    name = scope.state_name(node.name)
    if node.task.condition is False and not isinstance(node.task, WhileLoop):
        skip_name = scope.state_name(node.name, "skip")
        skip = {
            "Type": "Pass",
            "Result": {"status": "skipped", "output": None},
            "ResultPath": target(node.name),
        }
        return Segment(skip_name, {skip_name: skip}, [skip_name])
    if isinstance(made, Held) and _attempt_state(made) is not None and not handled(node.task, scope.pipeline):
        segment = _released(made, name, scope.long_names)
        if node.task.condition is not None and not isinstance(node.task, WhileLoop):
            entry, condition_states, skip_exit = _condition(node, scope, segment.entry, None)
            segment.states.update(condition_states)
            segment = Segment(entry, segment.states, segment.exits + ([skip_exit] if skip_exit else []))
        return segment
    state = _first_branch(made) if isinstance(made, Held) else made
    states: dict[str, Any] = {name: state}
    exits = [name]
    timeout = task_timeout(node.task)
    if timeout is not None and state["Type"] == "Task":
        # the function stops the task at its timeout (TaskTimeout, as locally); the state's
        # own limit is the backstop for a function that cannot answer at all
        state["TimeoutSeconds"] = max(1, math.ceil(timeout)) + TIMEOUT_GRACE
    state["Retry"] = _retry(node, scope)
    policy = effective_policy(node.task, scope.pipeline)
    error_path = f"$.errors.{node.name}"
    failure_target: str | None = None
    if policy.on_failure in {"skip", "continue_with_degraded_service"}:
        skips = policy.on_failure == "skip"
        # `.degraded`: entering it makes the run degraded, wherever the task is (execution.py)
        failure_target = scope.state_name(node.name, "failed" if skips else DEGRADED_ROLE)
        status = "skipped" if skips else "failed"
        states[failure_target] = _fallback_value_state(node, scope, status, error_path)
        exits.append(failure_target)
    elif policy.fallback is not None:
        failure_target = scope.state_name(node.name, "abort")
        states[failure_target] = {
            "Type": "Fail",
            "ErrorPath": f"{error_path}.Error",
            "CausePath": f"{error_path}.Cause",
        }
    if policy.fallback is not None:
        fallback_name = scope.state_name(node.name, "fallback")
        kind = str(getattr(policy.fallback, "type", "python_task"))
        if kind not in FUNCTION_PLACEHOLDERS:
            raise CompileError(
                f"task '{node.name}': on AWS a fallback must be a python, llm or web search task, not {kind}",
                (*node.location, "error_handling", "fallback"),
            )
        fallback = _invoke(
            kind,
            _payload(node, scope, scope.pipeline_id, reference=_reference(node) + ".error_handling.fallback"),
        )
        fallback["Parameters"]["FunctionName"] = function_placeholder(policy.fallback, scope.pipeline)
        fallback["ResultSelector"] = {"status": "fallback", "output.$": "$.Payload.output"}
        fallback["ResultPath"] = target(node.name)
        fallback["Retry"] = [dict(_retry(node, scope)[0])]
        if failure_target is not None:
            # keep the task's own error (what on_failure reports), not the fallback's
            fallback["Catch"] = [
                {
                    "ErrorEquals": ["States.ALL"],
                    "ResultPath": f"{error_path}__fallback",
                    "Next": failure_target,
                }
            ]
        states[fallback_name] = fallback
        exits.append(fallback_name)
        state["Catch"] = [{"ErrorEquals": ["States.ALL"], "ResultPath": error_path, "Next": fallback_name}]
    elif failure_target is not None:
        state["Catch"] = [{"ErrorEquals": ["States.ALL"], "ResultPath": error_path, "Next": failure_target}]
    entry = name
    if node.task.condition is not None and not isinstance(node.task, WhileLoop):
        entry, condition_states, skip_exit = _condition(node, scope, name, failure_target)
        states.update(condition_states)
        if skip_exit:
            exits.append(skip_exit)
    return Segment(entry, states, exits)


def _condition(
    node: Node, scope: Scope, run_target: str, failure_target: str | None
) -> tuple[str, dict[str, Any], str | None]:
    """States that decide a task's condition before it runs: a Choice rule where it means what
    Jinja means (`conditions.decide`), and the dispatch function's `condition` action wherever
    it may not. A condition that cannot be evaluated fails the task before any attempt, as on
    the engine: on to `failure_target` (on_failure's state; never the fallback), or the run fails."""
    condition = node.task.condition
    skip_name = scope.state_name(node.name, "skip")
    states: dict[str, Any] = {
        skip_name: {
            "Type": "Pass",
            "Result": {"status": "skipped", "output": None},
            "ResultPath": target(node.name),
        }
    }
    if isinstance(condition, bool):
        decision: Decision | None = Decision(condition, False)
    else:
        decision = decide(str(condition), scope.path_of)
    if decision is not None and isinstance(decision.rule, bool) and decision.undecided is False:
        return (run_target, {}, None) if decision.rule else (skip_name, states, skip_name)
    ask_name = scope.state_name(node.name, "condition")
    entry = ask_name
    if decision is not None and decision.undecided is not True:
        entry = scope.state_name(node.name, "if")
        choices = [] if decision.undecided is False else [{**decision.undecided, "Next": ask_name}]
        if isinstance(decision.rule, bool):
            default = run_target if decision.rule else skip_name
        else:
            choices.append({**decision.rule, "Next": run_target})
            default = skip_name
        states[entry] = {"Type": "Choice", "Choices": choices, "Default": default}
        if decision.undecided is False:
            return entry, states, skip_name
    answer_name = scope.state_name(node.name, "decided")
    ask = _invoke("dispatch", _payload(node, scope, scope.pipeline_id, action="condition"))
    ask["ResultSelector"] = {"value.$": "$.Payload.value"}
    ask["ResultPath"] = f"$.conditions.{node.name}"
    ask["Retry"] = [dict(_retry(node, scope)[0])]
    if failure_target is not None:
        ask["Catch"] = [
            {"ErrorEquals": ["States.ALL"], "ResultPath": f"$.errors.{node.name}", "Next": failure_target}
        ]
    ask["Next"] = answer_name
    states[ask_name] = ask
    states[answer_name] = {
        "Type": "Choice",
        "Choices": [
            {"Variable": f"$.conditions.{node.name}.value", "BooleanEquals": True, "Next": run_target}
        ],
        "Default": skip_name,
    }
    return entry, states, skip_name


# containers -------------------------------------------------------------------------------


def _iteration_selector(scope: Scope, loop: dict[str, Any]) -> dict[str, Any]:
    """Each iteration's state: the finished tasks' records, one by one (`_flat_scope` reads them)."""
    return {
        **inputs_parameter(scope),
        "run.$": "$.run",
        "tasks": records_parameter(scope),
        "errors": {},
        "items": {},
        "loops": {},
        "conditions": {},
        "loop": loop,
    }


def _items_source(node: Node, task: ForLoop, scope: Scope) -> tuple[str, dict[str, Any]]:
    """Where the loop's items come from, and any state that must put them there first."""
    source = task.iterate_over
    items_path = f"$.items.{node.name}"
    if isinstance(source, list):
        name = scope.state_name(node.name, "items")
        return name, {name: {"Type": "Pass", "Result": {"value": source}, "ResultPath": items_path}}
    # The pipeline's own array input is read where it lies, when nothing in the body divides
    # the iterations' share of the state again (leaf tasks only) and no loop is around it: each
    # iteration is told the count (`States.ArrayLength`), and its functions divide their share
    # by it (`task_scope.limit_of`), as `items` would have. Anything else may be a mapping,
    # whose [key, value] pairs ASL cannot make, or an output (or a child's input) kept in S3:
    # the dispatch function gives the items, by the runtime's `loop_items`, as the embedded
    # engine does; it also counts them, and gives the iterations a run whose inline limit is
    # divided by their number (`state_budget`).
    if _array_input_in_place(node, task, scope):
        return f"$.inputs.{jinja.single_expression(str(source))}", {}
    name = scope.state_name(node.name, "items")
    state = _invoke("dispatch", _payload(node, scope, scope.pipeline_id, action="items"))
    state["ResultSelector"] = {"value.$": "$.Payload.items", "run.$": "$.Payload.run"}
    state["ResultPath"] = items_path
    state["Retry"] = [dict(_retry(node, scope)[0])]
    return name, {name: state}


def _array_input_in_place(node: Node, task: ForLoop, scope: Scope) -> bool:
    """Whether a for_loop iterates over one of the pipeline's own (not sensitive) array inputs,
    outside any loop, with a body of leaf tasks only: the Map then reads it where it lies."""
    expression = jinja.single_expression(task.iterate_over) if isinstance(task.iterate_over, str) else None
    declared = scope.pipeline.input_variables
    if expression is None or not expression.isidentifier() or expression not in declared:
        return False
    top_level = scope.inputs_path == "$.inputs" and scope.loop_path is None
    leaves = node.body is not None and all(n.kind in LEAF_KINDS for n in node.body.nodes.values())
    in_place = scope.path_of(expression) == f"$.inputs.{expression}"  # not a task, not sensitive
    return top_level and leaves and in_place and declared[expression].type == "array"


def _for_loop(node: Node, task: ForLoop, scope: Scope, pipeline_id: str) -> dict[str, Any] | Held:
    assert node.body is not None
    inner = replace(
        _flat_scope(scope),
        prefix=scope.state_name(node.name) + "/",
        inputs_path="$.inputs",  # each iteration's state has the inputs there (_iteration_selector)
        inputs=None,
        loop_path="$.loop",
        item_variable=task.item_variable,
        outer_loop=None,
    )
    body_names = list(node.body.nodes)

    def collect(after: Scope) -> dict[str, Any]:
        return {"Type": "Pass", "Parameters": {f"{n}.$": after.records[n] + ".output" for n in body_names}}

    states, start, _after = _compile_body(node.body, inner, pipeline_id, end_state=collect)
    _collect_in_leaf(states, node.body, inner)
    state: dict[str, Any] = {
        "Type": "Map",
        "MaxConcurrency": task.max_concurrency,
        "ItemSelector": _iteration_selector(
            scope,
            {
                "item.$": "$$.Map.Item.Value",
                "index.$": "$$.Map.Item.Index",
                "item_variable": task.item_variable,
                "state": {},
            },
        ),
        "ItemProcessor": {"ProcessorConfig": {"Mode": "INLINE"}, "StartAt": start, "States": states},
        "ResultSelector": {"status": "succeeded", "output.$": "$"},
        "ResultPath": target(node.name),
    }
    _give_loop(state["ItemSelector"]["loop"], "outer", loop_reference(scope))  # the loops around it
    source = task.iterate_over
    if isinstance(source, str) and source.startswith("s3://") and not jinja.is_template(source):
        bucket, _, key = source.removeprefix("s3://").partition("/")
        state["ItemReader"] = {
            "Resource": "arn:aws:states:::s3:getObject",
            "Parameters": {"Bucket": bucket, "Key": key},  # a JSON array of items
        }
        state["ItemProcessor"]["ProcessorConfig"] = {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
        return state
    mode = _loop_mode(node)
    if mode != "inline":  # its iterations may pass the history quota: child executions (issue 12)
        return _distributed_loop(node, task, scope, inner, pipeline_id, state, mode == "runtime")
    items_path, before = _items_source(node, task, scope)
    if before:
        ((first_name, first_state),) = before.items()
        state["ItemsPath"] = f"$.items.{node.name}.value"
        if first_state["Type"] == "Task":  # the dispatch function's items: the iterations' run too
            state["ItemSelector"]["run.$"] = f"$.items.{node.name}.run"
        return _preceded(first_name, first_state, scope.state_name(node.name, "run"), state)
    state["ItemsPath"] = items_path
    state["ItemSelector"]["loop"]["count.$"] = f"States.ArrayLength({items_path})"
    return state


def _collect_in_leaf(states: dict[str, Any], body: Body, scope: Scope) -> None:
    """A body ending with a Pass that collects `{task: output}` (a loop's iteration, a child
    pipeline), whose last part is one leaf task that runs after all the others: that task's
    state writes that shape itself when it succeeds, and ends the body there. Its function is
    given the other outputs the Pass would collect (`collect`) and hands them back as they are
    with its record (`collected`: `task_function`), so no state is needed after it. Its other
    ways out (skipped, failed, fallback) still go through the Pass."""
    final = final_leaf(body)
    if final is None:
        return
    main = states.get(scope.state_name(final))
    collect = scope.state_name("", "result")
    if main is None or main.get("Type") != "Task" or main.get("Next") != collect:
        return
    gathered: dict[str, str] = states[collect]["Parameters"]
    if not all(key.endswith(".$") for key in gathered):
        return
    own = target(final) + ".output"
    others = {key: path for key, path in gathered.items() if path != own}
    if others:
        main["Parameters"]["Payload"]["collect"] = others
    main.pop("Next")
    main |= {
        "ResultSelector": {
            key: "$.Payload.output" if path == own else "$.Payload.collected." + key.removesuffix(".$")
            for key, path in gathered.items()
        },
        "ResultPath": "$",
        "End": True,
    }
    if not any(collect in _next_states(state) for state in states.values()):
        del states[collect]  # no other way out of the task (no condition, no on_failure) goes there
        scope.long_names.pop(collect, None)


def _next_states(state: dict[str, Any]) -> list[str]:
    """The states a state may go to next."""
    found = [state[key] for key in ("Next", "Default") if key in state]
    found += [choice["Next"] for choice in state.get("Choices", [])]
    return found + [catch["Next"] for catch in state.get("Catch", [])]


def _preceded(first_name: str, first_state: dict[str, Any], main_name: str, main: dict[str, Any]) -> Held:
    """A container that needs a state before it: both are its own states."""
    first_state = {**first_state, "Next": main_name}
    result_path = main.pop("ResultPath")
    main = {**main, "End": True, "ResultPath": HELD_RECORD, "OutputPath": HELD_RECORD}
    return Held({"StartAt": first_name, "States": {first_name: first_state, main_name: main}}, result_path)


HELD_RECORD = "$.result"
"""Where the last states of a container's own states write its record (and output it)."""


@dataclass(frozen=True)
class Held:
    """A container's own states (`branch`: `StartAt` and `States`), whose last states write its
    record (`{status, output}`, or the given fields) at `HELD_RECORD` and output it; the record
    belongs at `result_path`. In a one-branch Parallel (`_first_branch`) when the task's own
    Retry and Catch must cover them all, else straight in the body (`_released`)."""

    branch: dict[str, Any]
    result_path: str
    fields: tuple[str, ...] = ("status", "output")
    # False for a while_loop: its body runs in the state the branch is given, and its tasks'
    # records must not outlive the branch (they are no tasks of the body around it)
    releasable: bool = True
    # the state the branch is given, when it is not the state around it (Parameters)
    parameters: dict[str, Any] | None = None


def handled(task: TaskBase, pipeline: Pipeline) -> bool:
    """Whether a task has error handling of its own (a retry, a fallback, an `on_failure` other
    than aborting the run): a container's Retry and Catch then cover all its states, which run
    in a one-branch Parallel. (Without, each call in it retries Lambda's own errors itself.)"""
    policy = effective_policy(task, pipeline)
    return policy.retry_count > 0 or policy.fallback is not None or policy.on_failure != "abort_pipeline"


def _first_branch(held: Held) -> dict[str, Any]:
    """A one-branch Parallel whose branch ends with the task's record, kept at `result_path`."""
    state: dict[str, Any] = {"Type": "Parallel", "Branches": [held.branch]}
    if held.parameters is not None:
        state["Parameters"] = held.parameters
    return state | {
        "ResultSelector": {f"{key}.$": f"$[0].{key}" for key in held.fields},
        "ResultPath": held.result_path,
    }


def _attempt_state(held: Held) -> str | None:
    """The state of a container's own states whose run is the task's attempt, as the run
    document counts them (`execution.AttemptCounter`: a Lambda call, a Map or Parallel run, a
    Choice entered): the first one, after a Pass putting its items in place. A Choice only
    when it chooses between Maps (a for_loop's inline or Distributed Map, whichever runs is
    its attempt). None when there is no such state (a while_loop, whose body must stay in its
    branch)."""
    if not held.releasable:
        return None
    states = held.branch["States"]
    name = held.branch["StartAt"]
    while states[name]["Type"] == "Pass" and "Next" in states[name]:
        name = states[name]["Next"]
    state = states[name]
    if state["Type"] == "Choice":
        return name if all(states[chosen]["Type"] == "Map" for chosen in _next_states(state)) else None
    return name if state["Type"] in {"Task", "Map", "Parallel"} else None


def _released(held: Held, task_state: str, long_names: dict[str, str]) -> Segment:
    """A container's own states in the body: its attempt's state (`_attempt_state`) named as
    the task's main state is (the name it had is no longer in `long_names`), and the last ones
    writing its record where it belongs."""
    attempt = _attempt_state(held)
    assert attempt is not None
    long_names.pop(attempt, None)
    renamed = {attempt: task_state}
    states: dict[str, Any] = {}
    exits = []
    for name, state in copy.deepcopy(held.branch["States"]).items():
        for key in ("Next", "Default"):
            if key in state:
                state[key] = renamed.get(state[key], state[key])
        for choice in state.get("Choices", []):
            choice["Next"] = renamed.get(choice["Next"], choice["Next"])
        if state.get("End"):
            assert state.pop("OutputPath") == HELD_RECORD and state.pop("End")
            state["ResultPath"] = held.result_path
            exits.append(renamed.get(name, name))
        states[renamed.get(name, name)] = state
    start = held.branch["StartAt"]
    return Segment(renamed.get(start, start), states, exits)


# distributed for_loops (issue 12) ------------------------------------------------------------

PAYLOAD_BUCKET = "${PayloadBucket}"
"""The payload bucket's name in a definition: SAM substitutes it (`DefinitionSubstitutions`), as
the emulator does."""
MAP_RUN_RESULTS = "payloads/map-runs"
"""Where a Distributed Map's ResultWriter puts its results (`<prefix>/<map run>/manifest.json`
and the files it lists), under the prefix the bucket's lifecycle rule expires."""
DISTRIBUTED = {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}


def _loop_mode(node: Node) -> str:
    """`history.loop_mode`: how a for_loop runs (history reads this module's helpers)."""
    from orchestrator.aws.history import loop_mode

    return loop_mode(node)


def _distributed_loop(
    node: Node,
    task: ForLoop,
    scope: Scope,
    inner: Scope,
    pipeline_id: str,
    inline: dict[str, Any],
    at_run_time: bool,
) -> Held:
    """A for_loop whose iterations may record more history events than its execution should
    hold (`history.loop_mode`): a Distributed Map, each iteration a child execution with its
    own history; the loop's own states (`Held`) are in a one-branch Parallel when its Retry and
    Catch must cover them (`handled`).

    Its results stay out of the state: the Map writes them to the payload bucket
    (`ResultWriter`), and the dispatch function's `collect` action reads them and gives the
    loop's output, a list in item order, as a reference to S3. An iteration never fails its
    child execution: its body runs in a Parallel whose Catch outputs the error, and `collect`
    raises the first (by index) with its own type and message, so the loop's Retry and Catch
    see what an inline Map's would.

    `at_run_time`: the count is known only at run time, and the inline Map (`inline`, as
    `_for_loop` made it) is kept too, behind a Choice: at most `history.inline_iterations` run
    inline. Items from the dispatch function (`items`, told that bound) are written to S3 when
    they go to the Distributed Map, which reads them there (`ItemReader`); the pipeline's array
    input is read in place, by both Maps, and the Choice looks for the item past the bound.
    """
    from orchestrator.aws.history import inline_iterations

    assert node.body is not None
    name = node.name
    main_name = scope.state_name(name, "run")
    distributed_name = scope.state_name(name, "distributed") if at_run_time else main_name
    # the body's states, compiled again when both Maps are kept: state names are unique
    child = replace(inner, prefix=distributed_name + "/", child_execution=True)
    distributed: dict[str, Any] = {
        "Type": "Map",
        "MaxConcurrency": task.max_concurrency,
        "ItemSelector": copy.deepcopy(inline["ItemSelector"]),
        "ItemProcessor": {"ProcessorConfig": dict(DISTRIBUTED), **_child_iteration(node, child, pipeline_id)},
        "ResultWriter": {
            "Resource": "arn:aws:states:::s3:putObject",
            "Parameters": {"Bucket": PAYLOAD_BUCKET, "Prefix": MAP_RUN_RESULTS},
        },
        "ResultSelector": {"Bucket.$": "$.ResultWriterDetails.Bucket", "Key.$": "$.ResultWriterDetails.Key"},
        "ResultPath": "$.map_run",
    }
    collect_name = scope.state_name(name, "collect")
    collect = _invoke("dispatch", _payload(node, scope, pipeline_id, action="collect"))
    collect["Parameters"]["Payload"]["manifest.$"] = "$.map_run"
    collect |= {
        "ResultSelector": {"status": "succeeded", "output.$": "$.Payload.output"},
        "ResultPath": HELD_RECORD,
        "OutputPath": HELD_RECORD,
        "Retry": [dict(_retry(node, scope)[0])],  # Lambda's own errors: an iteration's is the loop's
        "End": True,
    }
    distributed["Next"] = collect_name
    inline = {**inline, "End": True, "ResultPath": HELD_RECORD, "OutputPath": HELD_RECORD}
    states: dict[str, Any] = {distributed_name: distributed, collect_name: collect}
    limit = inline_iterations(node) if at_run_time else -1  # (-1: not even no items run inline)
    items_path, before = _items_source(node, task, scope)
    route: dict[str, Any] | None = None
    entry = distributed_name
    if before:
        ((first_name, first_state),) = before.items()
        if first_state["Type"] == "Task":  # the dispatch function's items: it counts them
            found = f"$.items.{name}"
            first_state["Parameters"]["Payload"]["inline_up_to"] = limit
            first_state["ResultSelector"] |= {
                "distributed.$": "$.Payload.distributed",
                "source.$": "$.Payload.source",
            }
            distributed["ItemReader"] = {
                "Resource": "arn:aws:states:::s3:getObject",
                "ReaderConfig": {"InputType": "JSON"},
                "Parameters": {"Bucket.$": f"{found}.source.Bucket", "Key.$": f"{found}.source.Key"},
            }
            distributed["ItemSelector"]["run.$"] = f"{found}.run"
            inline["ItemsPath"] = f"{found}.value"
            inline["ItemSelector"]["run.$"] = f"{found}.run"
            route = {"Variable": f"{found}.distributed", "BooleanEquals": True}
        else:  # literal items: their count is known, and too many
            distributed["ItemsPath"] = f"$.items.{name}.value"
    else:  # the pipeline's own array input, read in place
        distributed["ItemsPath"] = items_path
        inline["ItemsPath"] = items_path
        inline["ItemSelector"]["loop"]["count.$"] = f"States.ArrayLength({items_path})"
        route = {"Variable": f"{items_path}[{limit}]", "IsPresent": True}
    if at_run_time and route is not None:
        entry = scope.state_name(name, "route")
        states[entry] = {
            "Type": "Choice",
            "Choices": [{**route, "Next": distributed_name}],
            "Default": main_name,
        }
        states[main_name] = inline
    if before:
        states = {first_name: {**first_state, "Next": entry}, **states}
        entry = first_name
    return Held({"StartAt": entry, "States": states}, target(name))


def _child_iteration(node: Node, child: Scope, pipeline_id: str) -> dict[str, Any]:
    """The states of one iteration of a distributed for_loop (its child execution): the body in
    a Parallel, then `{index, output}` (`output` is `{task: output}`, as an inline iteration's
    result), or `{index, error}` with what the Parallel caught. The child never fails, so every
    iteration's outcome is in the Map's results, however many failed."""
    assert node.body is not None
    body_names = list(node.body.nodes)

    def collect(after: Scope) -> dict[str, Any]:
        return {"Type": "Pass", "Parameters": {f"{n}.$": after.records[n] + ".output" for n in body_names}}

    states, start, _after = _compile_body(node.body, child, pipeline_id, end_state=collect)
    _collect_in_leaf(states, node.body, child)
    iteration = child.state_name("", "iteration")
    done = child.state_name("", "iteration_done")
    failed = child.state_name("", "iteration_failed")
    return {
        "StartAt": iteration,
        "States": {
            iteration: {
                "Type": "Parallel",
                "Branches": [{"StartAt": start, "States": states}],
                "ResultSelector": {"value.$": "$[0]"},
                "ResultPath": "$.iteration",
                "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.iteration_error", "Next": failed}],
                "Next": done,
            },
            done: {
                "Type": "Pass",
                "Parameters": {"index.$": "$.loop.index", "output.$": "$.iteration.value"},
                "End": True,
            },
            failed: {
                "Type": "Pass",
                "Parameters": {"index.$": "$.loop.index", "error.$": "$.iteration_error"},
                "End": True,
            },
        },
    }


def _while_loop(node: Node, task: WhileLoop, scope: Scope, pipeline_id: str) -> Held:
    """Body + Choice back-edge; a dispatch call between iterations advances the loop and its state.

    The loop runs in the one-branch Parallel that keeps its body's records to itself; the
    Parallel's Parameters give the branch its own state (`_while_state`), the loop's first
    state in it when that is known when compiling: no state is entered to start the loop."""
    assert node.body is not None and node.body.nodes
    loop_path = f"$.loops.{node.name}"
    runs = first_iteration_runs(task)
    known = None if runs is None else {"index": 0, "state": {}, "continue": runs}
    parameters = _while_state(scope, node.name, known)
    # the loop's own state in its branch, where the loop around it is at WHILE_OUTER
    branch = replace(
        _flat_scope(scope),
        inputs_path="$.inputs",
        inputs=None,
        loop_path=None,
        item_variable=None,
        outer_loop=None,
    )
    outer = WHILE_OUTER if loop_reference(scope) is not None else None
    inner = replace(branch, prefix=scope.state_name(node.name) + "/", loop_path=loop_path, outer_loop=outer)
    body_states, body_start, after = _compile_body(node.body, inner, pipeline_id)
    last = list(node.body.nodes)[-1]
    advance_selector = {
        "index.$": "$.Payload.index",
        "state.$": "$.Payload.state",
        "continue.$": "$.Payload.continue",
    }
    # the loop's own states are named like `.result`: with a dot, unlike any task of the body
    first = inner.state_name("", "start")
    check = inner.state_name("", "check")
    advance = inner.state_name("", "advance")
    done = inner.state_name("", "done")
    start_state: dict[str, Any] | None = None
    if runs is None:
        start_payload = _payload(node, branch, pipeline_id, action="while")
        start_payload["loop"] = {"index": 0, "state": {}}
        _give_loop(start_payload["loop"], "outer", outer)
        start_state = _invoke("dispatch", start_payload)
        start_state |= {"ResultSelector": advance_selector, "ResultPath": loop_path, "Next": check}
    # else known when compiling: in the branch's state already, and straight on to the first
    # iteration (or the end)
    advance_payload = _payload(node, branch, pipeline_id, action="while")
    _give_loop(advance_payload, "loop", loop_reference(inner))
    advance_payload["tasks"] = records_parameter(after)
    advance_payload["last.$"] = after.records[last] + ".output"
    advance_state = _invoke("dispatch", advance_payload)
    advance_state |= {"ResultSelector": advance_selector, "ResultPath": loop_path, "Next": check}
    for _state_name, state in body_states.items():
        if state.pop("End", False):
            state["Next"] = advance
    _advance_in_last_task(body_states, node, inner, after, check, advance_selector)
    states: dict[str, Any] = {
        check: {
            "Type": "Choice",
            "Choices": [{"Variable": f"{loop_path}.continue", "BooleanEquals": True, "Next": body_start}],
            "Default": done,
        },
        advance: advance_state,
        done: {
            "Type": "Pass",
            "Parameters": {
                "status": "succeeded",
                "output": {"iterations.$": f"{loop_path}.index", "state.$": f"{loop_path}.state"},
            },
            "ResultPath": HELD_RECORD,
            "OutputPath": HELD_RECORD,
            "End": True,
        },
        **body_states,
    }
    if not any(advance in _next_states(state) for state in states.values()):
        del states[advance]  # the body's last task takes every step itself
        inner.long_names.pop(advance, None)
    if start_state is not None:
        states = {first: start_state, **states}
    else:
        inner.long_names.pop(first, None)
        first = body_start if runs else done
    branch_states = {"StartAt": first, "States": states}
    return Held(branch_states, target(node.name), releasable=False, parameters=parameters)


WHILE_OUTER = "$.outer"
"""Where a while_loop's branch keeps the loop around it (`_while_state`), as its Lambdas see it."""


def _while_state(scope: Scope, name: str, first: dict[str, Any] | None) -> dict[str, Any]:
    """The state a while_loop's branch starts with: the inputs, the run and the finished tasks'
    records one by one (as an iteration's: `_iteration_selector`), the loop around it at
    `WHILE_OUTER`, and the loop's own first state when it is known (`first`)."""
    state = {
        **inputs_parameter(scope),
        "run.$": "$.run",
        "tasks": records_parameter(scope),
        "errors": {},
        "items": {},
        "loops": {} if first is None else {name: first},
        "conditions": {},
    }
    _give_loop(state, "outer", loop_reference(scope))
    return state


def _advance_in_last_task(
    states: dict[str, Any],
    node: Node,
    inner: Scope,
    after: Scope,
    check: str,
    selector: dict[str, str],
) -> None:
    """A while_loop body that ends with one leaf task (its last in the file, whose output is
    the loop's state): when that task succeeds, its function takes the loop's step too (the
    `while` action's, run in it: `task_function._advanced`) and the state machine goes straight
    to the check. The task's other ways out (skipped, failed, fallback) still go through the
    dispatch call."""
    assert node.body is not None
    last = list(node.body.nodes)[-1]
    main = states.get(inner.state_name(last))
    if not ends_with_leaf(node.body) or main is None or main["Type"] != "Task":
        return
    payload = main["Parameters"]["Payload"]
    payload["advance"] = {"task": _reference(node), "tasks": records_parameter(after, leave_out=last)}
    main["ResultSelector"] = {
        key: path.replace("$.Payload.", "$.Payload.advance.") for key, path in selector.items()
    }
    main["ResultPath"] = inner.loop_path
    main["Next"] = check


def final_leaf(body: Body) -> str | None:
    """The leaf task a body ends with, when one runs after all the others."""
    shape = decompose({name: body_node.dependencies for name, body_node in body.nodes.items()})
    final = shape.parts[-1] if isinstance(shape, Series) else shape
    return final if isinstance(final, str) and body.nodes[final].kind in LEAF_KINDS else None


def ends_with_leaf(body: Body) -> bool:
    """Whether a body's last task in the file is a leaf task that runs after all the others."""
    return final_leaf(body) == list(body.nodes)[-1]


LEAF_KINDS = frozenset({"python_task", "llm_task", "web_search_task"})
LOOP_VARIABLES = frozenset({"loop_state", "loop_index"})


def first_iteration_runs(task: WhileLoop) -> bool | None:
    """Whether a while_loop runs its first iteration, when that is known before the run: its
    condition reads only `loop_state` and `loop_index` (`{}` and 0 then) and draws nothing at
    random. The runtime's own step decides it (`runtime.loops.while_iteration`); None when the
    dispatch function must (the condition reads inputs or tasks, or cannot be evaluated)."""
    condition = task.condition
    if isinstance(condition, str):
        expression = jinja.condition_expression(condition)
        try:
            names = jinja.referenced_names(expression, expression=True)
        except OrchestratorError:
            return None
        if not names <= LOOP_VARIABLES or "random" in expression:
            return None
    try:
        return while_iteration(task, RuntimeScope({}), 0, {}) is not None
    except OrchestratorError:  # (a TaskError too)
        return None


def _parallel_group(node: Node, task: ParallelGroup, scope: Scope, pipeline_id: str) -> dict[str, Any] | Held:
    assert node.body is not None
    children = list(node.body.nodes)
    inner = replace(scope, prefix=scope.state_name(node.name) + "/")
    independent = all(not n.dependencies for n in node.body.nodes.values())
    if independent:
        branches = []
        for child in children:
            # a branch outputs its child's record: every way out of the child writes it
            segment = _compile_node(node.body.nodes[child], inner, pipeline_id)
            states = dict(segment.states)
            for exit_name in segment.exits:
                states[exit_name] = {**states[exit_name], "OutputPath": target(child), "End": True}
            branches.append({"StartAt": segment.entry, "States": states})
        if task.max_concurrency and task.max_concurrency < len(children):
            return _limited_group(node, task, scope, inner, branches, children)
        records = {child: f"$[{index}]" for index, child in enumerate(children)}
    else:

        def collect(after: Scope) -> dict[str, Any]:
            return {"Type": "Pass", "Parameters": {f"{c}.$": after.records[c] for c in children}}

        states, start, _after = _compile_body(node.body, inner, pipeline_id, end_state=collect)
        branches = [{"StartAt": start, "States": states}]
        records = {child: f"$[0].{child}" for child in children}
    return {
        "Type": "Parallel",
        "Branches": branches,
        "ResultSelector": _group_record(records),
        "ResultPath": target(node.name),
    }


def _group_record(records: dict[str, str]) -> dict[str, Any]:
    """A parallel_group's record, from where its children's records lie in a result."""
    return {
        "status": "succeeded",
        "children": {f"{child}.$": path for child, path in records.items()},
        "output": {f"{child}.$": f"{path}.output" for child, path in records.items()},
    }


def _limited_group(
    node: Node,
    task: ParallelGroup,
    scope: Scope,
    inner: Scope,
    branches: list[dict[str, Any]],
    children: list[str],
) -> Held:
    """A parallel_group with a `max_concurrency` below its number of children: a Parallel
    state has no limit, so the children run as the iterations of a Map over their positions
    (MaxConcurrency holds), each routed to its own states, with the whole state passed in.
    The Map's result is the Parallel's (the children's records, in order), made into the
    group's record by its ResultSelector; the positions are put in the state before it (both
    the group's own states, `Held`, as `_preceded` makes them)."""
    positions = inner.state_name("", "positions")
    route = inner.state_name("", "route")
    run = inner.state_name("", "run")
    states: dict[str, Any] = {
        route: {
            "Type": "Choice",
            "Choices": [
                {"Variable": "$.branch", "NumericEquals": index, "Next": branch["StartAt"]}
                for index, branch in enumerate(branches)
            ],
        }
    }
    for branch in branches:
        states.update(branch["States"])
    carried = ["run", "tasks", "errors", "items", "loops", "conditions"]
    if any(path.startswith(PRIOR + ".") for path in scope.records.values()):
        carried.append("prior")  # in a parallel step's branch: the records before it (`_branch_state`)
    item_selector: dict[str, Any] = {f"{key}.$": f"$.{key}" for key in carried}
    # the whole state, so that its paths hold in the iteration (a child's Parameters-built
    # inputs read the parent's, at `$.inputs`)
    item_selector["inputs.$"] = "$.inputs" if scope.inputs is not None else scope.inputs_path
    _give_loop(item_selector, "loop", loop_reference(scope))
    item_selector["branch.$"] = "$$.Map.Item.Value"
    main = {
        "Type": "Map",
        "ItemsPath": "$.positions",
        "MaxConcurrency": task.max_concurrency,
        "ItemSelector": item_selector,
        "ItemProcessor": {"ProcessorConfig": {"Mode": "INLINE"}, "StartAt": route, "States": states},
        "ResultSelector": _group_record({child: f"$[{index}]" for index, child in enumerate(children)}),
        "ResultPath": HELD_RECORD,
        "OutputPath": HELD_RECORD,
        "End": True,
    }
    positions_state = {"Type": "Pass", "Result": list(range(len(branches))), "ResultPath": "$.positions"}
    branch = {"StartAt": positions, "States": {positions: {**positions_state, "Next": run}, run: main}}
    return Held(branch, target(node.name), ("status", "children", "output"))


def _dynamic_group(node: Node, task: DynamicTaskGroup, scope: Scope, pipeline_id: str) -> Held:
    """A dispatch call expands the specs, each with the function of its type (the definition
    gives it the base functions: a generated task runs on its type's, `functions`); a Map runs
    each on its function, named by the spec (`FunctionName.$`), with no state to route it."""
    expand_name = scope.state_name(node.name, "expand")
    expand = _invoke("dispatch", _payload(node, scope, pipeline_id, action="expand"))
    expand["Parameters"]["Payload"]["functions"] = {
        kind: FUNCTION_PLACEHOLDERS[kind] for kind in BASE_FUNCTIONS
    }
    # the specs, and the run the generated tasks get (its inline limit divided by their number)
    expand["ResultSelector"] = {"value.$": "$.Payload.specs", "run.$": "$.Payload.run"}
    expand["ResultPath"] = f"$.items.{node.name}"
    expand["Retry"] = [dict(_retry(node, scope)[0])]
    inner = replace(scope, prefix=scope.state_name(node.name) + "/")
    generated = inner.state_name("", "generated")  # `.generated`: never a task's state
    payload = {
        "pipeline": pipeline_id,
        "task": _reference(node),
        "spec.$": "$.spec",
        "inputs.$": "$.inputs",
        "run.$": "$.run",
        "tasks.$": "$.tasks",
        "state_budget": STATE_BUDGET,
    }
    if scope.child_execution:  # a degraded generated task notes it (`_fallback_value_state`)
        payload["mark_degraded"] = True
    # the function carries the generated task's own error policy (known only once it is
    # generated) and answers its record; only Lambda's own errors are retried here. The
    # iteration's result is the output; a record answered `failed` (under
    # continue_with_degraded_service) makes the run degraded (`execution.py` reads it in
    # the history)
    state = {
        "Type": "Task",
        "Resource": LAMBDA_INVOKE,
        "Parameters": {"FunctionName.$": "$.function", "Payload": payload},
        "ResultSelector": {"status.$": "$.Payload.status", "output.$": "$.Payload.output"},
        "ResultPath": "$",
        "OutputPath": "$.output",
        "Retry": [dict(_retry(node, scope)[0])],
        "End": True,
    }
    selector = {
        **inputs_parameter(scope),
        "run.$": f"$.items.{node.name}.run",
        "tasks": records_parameter(scope),
        "spec.$": "$$.Map.Item.Value.spec",
        "function.$": "$$.Map.Item.Value.function",
    }
    main: dict[str, Any] = {
        "Type": "Map",
        "ItemsPath": f"$.items.{node.name}.value",
        "MaxConcurrency": (task.max_concurrency or 0) if task.parallel else 1,
        "ItemSelector": selector,
        "ItemProcessor": {
            "ProcessorConfig": {"Mode": "INLINE"},
            "StartAt": generated,
            "States": {generated: state},
        },
        "ResultSelector": {"status": "succeeded", "output.$": "$"},
        "ResultPath": target(node.name),
    }
    return _preceded(expand_name, expand, scope.state_name(node.name, "run"), main)


def _child_failures(
    states: dict[str, Any], node: Node, scope: Scope, child_scope: Scope, index: int
) -> dict[str, Any]:
    """Make a failing child pipeline fail its pipeline_group as on the engine, with
    `ChildPipelineFailed` naming the child's task (`runtime.pipelines.child_failed`).

    Every top-level state of the child that can end it in failure (a Task, Map or Parallel
    state without a Catch, or a Fail state) leaves its error at `$.child_error` and goes to a
    dispatch call that turns it into the group's error, then to a Fail state that raises it.
    Returns the states to add; changes `states` in place."""
    added: dict[str, Any] = {}
    prefix = child_scope.prefix.removesuffix("/")
    full_prefix = child_scope.long_names.get(prefix, prefix) + "/"
    for name, state in list(states.items()):
        # the child's top-level task the state belongs to (a container's own states, which run
        # in the body when it has no error handling, are `task.role` or `task/...`)
        if name.startswith(child_scope.prefix):
            within = name.removeprefix(child_scope.prefix)
        else:  # a shortened name: its full name has the full prefix
            within = child_scope.long_names.get(name, name).removeprefix(full_prefix)
        task = within.split("/", 1)[0].split(".", 1)[0] or None  # `.result`: the child's own
        if state["Type"] == "Fail":
            caught = str(state["ErrorPath"]).removesuffix(".Error")
        elif state["Type"] in {"Task", "Map", "Parallel"} and "Catch" not in state:
            caught = None
        else:
            continue
        formatter = child_scope.state_name(task or "", "child_failed")
        if formatter not in added:
            raised = child_scope.state_name(task or "", "child_failed_raise")
            payload = _payload(
                node, scope, scope.pipeline_id, action="child_failed", child=index, failed_task=task
            )
            payload["error.$"] = CHILD_ERROR
            call = _invoke("dispatch", payload)
            call |= {
                "ResultSelector": {"value.$": "$.Payload"},
                "ResultPath": CHILD_ERROR,
                "Retry": [dict(_retry(node, scope)[0])],
                "Next": raised,
            }
            added[formatter] = call
            added[raised] = {
                "Type": "Fail",
                "ErrorPath": f"{CHILD_ERROR}.value.Error",
                "CausePath": f"{CHILD_ERROR}.value.Cause",
            }
        if caught is not None:  # a Fail state: its error moves to where the call reads it
            states[name] = {"Type": "Pass", "InputPath": caught, "ResultPath": CHILD_ERROR, "Next": formatter}
        else:
            state["Catch"] = [{"ErrorEquals": ["States.ALL"], "ResultPath": CHILD_ERROR, "Next": formatter}]
    return added


def _child_inputs_parameters(child: ChildPipeline, plan: Plan, scope: Scope) -> dict[str, Any] | None:
    """A child pipeline's inputs as Parameters (`{name.$: path}`, `{name: value}`), when the
    state machine builds them exactly as `runtime.pipelines.child_run` does, with nothing to
    check, seal or move to S3: every input given is a constant of its declared type or exactly
    `{{ name }}` of a parent input (of the pipeline's own inputs, at `$.inputs`) of the same
    type that always has a value; the others take their defaults; neither pipeline has a
    sensitive input (nothing to seal, nothing to redact); the child sanitizes nothing, has no
    `options`, and no condition of it reads a constant one (which a Choice could not test: the
    dispatch function would have to). Each such input is a copy of a parent input, which the
    state holds already and whose size its budget leaves room for. Otherwise None: the
    dispatch function's `child_inputs` action builds them."""
    parent = scope.pipeline
    pipeline = plan.pipeline
    declared = pipeline.input_variables
    tested = _condition_names(plan.body)
    plain = scope.inputs is None and scope.inputs_path == "$.inputs"
    if not plain or parent.sensitive_inputs() or pipeline.sensitive_inputs():
        return None
    if pipeline.input_validation.sanitization or not set(child.inputs) <= set(declared):
        return None
    built: dict[str, Any] = {}
    for name, spec in declared.items():
        if spec.options:
            return None
        if name in child.inputs:
            value = child.inputs[name]
            expression = jinja.single_expression(value) if isinstance(value, str) else None
            if expression is not None:
                source = parent.input_variables.get(expression)
                path = scope.path_of(expression) if expression.isidentifier() else None
                if (
                    source is None
                    or expression.lower() in {"true", "false", "none"}
                    or path != f"$.inputs.{expression}"
                    or source.type != spec.type
                    or (not source.required and source.default is None)
                ):
                    return None
                built[f"{name}.$"] = path
                continue
            try:
                value = json_input(name, coerce(name, value, spec, from_text=False))
            except InputError:
                return None
        elif spec.default is not None:
            try:
                value = json_input(name, spec.default)
            except InputError:
                return None
        elif spec.required:
            return None
        else:
            value = None
        if tested is None or name in tested or not _plain_parameter(value):
            return None
        built[name] = value
    return built


def _condition_names(body: Body) -> frozenset[str] | None:
    """The names the conditions of a body's tasks read, nested bodies included (None when one
    cannot be parsed)."""
    found: set[str] = set()
    for node in body.nodes.values():
        condition = node.task.condition
        if isinstance(condition, str):
            try:
                found |= jinja.referenced_names(jinja.condition_expression(condition), expression=True)
            except OrchestratorError:
                return None
        if node.body is not None:
            inner = _condition_names(node.body)
            if inner is None:
                return None
            found |= inner
    return frozenset(found)


CHILD_ERROR = "$.child_error"
"""Where a child pipeline's failure is kept while it becomes its pipeline_group's error."""


def _outputs_map(body: Body, after: Scope) -> dict[str, str]:
    """Parameters collecting a run's outputs map: every top-level task and group child."""
    found: dict[str, str] = {}
    for name, node in body.nodes.items():
        found[f"{name}.$"] = after.records[name] + ".output"
        if isinstance(node.task, ParallelGroup):
            for child in node.task.tasks:
                if child.name:
                    found[f"{child.name}.$"] = f"{after.records[name]}.children.{child.name}.output"
    return found


def _pipeline_group(node: Node, task: PipelineGroup, scope: Scope) -> dict[str, Any]:
    """Child pipelines compiled into this definition: parallel branches, or one chain."""
    branches: list[dict[str, Any]] = []
    identifiers: list[str] = []
    chain: list[tuple[str, dict[str, Any], str]] = []
    for index, child in enumerate(task.pipelines):
        child_path = (scope.path.parent / child.pipeline).resolve()
        found = scope.children.get(child_path)
        try:
            if found is None:
                raise missing_file(child_path)
            if isinstance(found, PipelineValidationError):
                raise found
            child_plan = build_plan(found)
        except PipelineValidationError as error:
            problems = "; ".join(diagnostic.format() for diagnostic in error.diagnostics)
            raise CompileError(
                f"task '{node.name}': child pipeline {child.pipeline} is not valid: {problems}",
                (*node.location, "pipelines", index, "pipeline"),
            ) from None
        if child_plan.pipeline.resource_limits.timeout is not None:
            raise CompileError(
                f"task '{node.name}': child pipeline {child.pipeline} has a timeout, which AWS cannot "
                "keep (it runs inside its parent's execution); put the timeout on its tasks instead",
                (*node.location, "pipelines", index, "pipeline"),
            )
        identifiers.append(child_plan.pipeline_id)
        child_inputs_path = "$.child_inputs." + state_key(child_plan.pipeline_id)
        inputs_path = child_inputs_path + ".value"
        built = _child_inputs_parameters(child, child_plan, scope)
        child_scope = Scope(
            child_plan.pipeline,
            child_plan.pipeline_id,
            child_plan.path,
            prefix=scope.state_name(node.name, child_plan.pipeline_id) + "/",
            inputs_path=inputs_path,
            inputs=built,
            long_names=scope.long_names,
            children=scope.children,
            step_keys=scope.step_keys,
            child_execution=scope.child_execution,
        )
        child_body = child_plan.body

        def collect(after: Scope, child_body: Body = child_body) -> dict[str, Any]:
            return {"Type": "Pass", "Parameters": _outputs_map(child_body, after)}

        try:
            states, start, _after = _compile_body(
                child_plan.body, child_scope, child_plan.pipeline_id, end_state=collect
            )
        except CompileError as error:
            _locate(error, child_plan)
            raise
        _collect_in_leaf(states, child_plan.body, child_scope)
        states.update(_child_failures(states, node, scope, child_scope, index))
        if built is not None:  # no state for its inputs: its Lambdas are given them
            branches.append({"StartAt": start, "States": states})
            chain.append((start, states, child_plan.pipeline_id))
            continue
        inputs_name = child_scope.state_name("", "inputs")  # `.inputs`: never a task's state
        inputs_state = _invoke(
            "dispatch", _payload(node, scope, scope.pipeline_id, action="child_inputs", child=index)
        )
        inputs_state |= {
            "ResultSelector": {"value.$": "$.Payload"},
            "ResultPath": child_inputs_path,
            "Retry": [dict(_retry(node, scope)[0])],
            "Next": start,
        }
        states = {inputs_name: inputs_state, **states}
        branches.append({"StartAt": inputs_name, "States": states})
        chain.append((inputs_name, states, child_plan.pipeline_id))
    if task.mode == "parallel":
        output = {f"{identifier}.$": f"$[{i}]" for i, identifier in enumerate(identifiers)}
        return {
            "Type": "Parallel",
            "Branches": branches,
            "ResultSelector": {"status": "succeeded", "output": output},
            "ResultPath": target(node.name),
        }
    # sequential: one branch, each child's result kept under $.children before the next starts
    sequence: dict[str, Any] = {}
    for position, (_start, states, identifier) in enumerate(chain):
        for state in states.values():
            if state.pop("End", False):
                state["ResultPath"] = "$.children." + state_key(identifier)
                state["Next"] = (
                    chain[position + 1][0]
                    if position + 1 < len(chain)
                    else scope.state_name(node.name, "collect")
                )
        sequence.update(states)
    collect_name = scope.state_name(node.name, "collect")
    sequence[collect_name] = {
        "Type": "Pass",
        "Parameters": {
            f"{identifier}.$": "$.children." + state_key(identifier) for identifier in identifiers
        },
        "End": True,
    }
    return {
        "Type": "Parallel",
        "Branches": [{"StartAt": chain[0][0], "States": sequence}],
        "ResultSelector": {"status": "succeeded", "output.$": "$[0]"},
        "ResultPath": target(node.name),
    }
