"""Which Lambda function runs which task, and the function variants the pipelines need.

Each task type has a base function, written by hand in `infra/template.base.yaml`
(`PythonTaskFunction`, `LlmTaskFunction`, `WebSearchTaskFunction`). A leaf task whose
`memory_limit`, `cpu_limit` or timeout (its own `resource_limits` over the pipeline's, and its
`timeout`) ask for something runs on a *variant* of its type's base function: the same code,
layer, role and environment, with the `MemorySize` and `Timeout` the task needs. A task that asks
for nothing runs on the base function. The compiler names a task's function with
`function_placeholder`; `orchestrator build` adds every variant of `function_variants` to the
template (`aws.sam`).

The limits themselves hold inside the function, as on the embedded engine: a limited task runs in
the sandbox's child process (`runtime.sandbox`: address-space limit, CPU affinity, killed at its
timeout), so a breach is `MemoryLimitExceeded` or `TaskTimeout` on both engines. The function's
size is what lets it get there:

- **memory**: `memory_limit` + 256 MB (the handler's own process, about 100 MB, and the runtime
  around it; the child's address space is at most the limit, so it can never use more), and at
  least `cpu_limit` x 1,769 MB (Lambda gives one vCPU per 1,769 MB, so this is the CPU the task
  may use); clamped to Lambda's 128-10,240 MB. Lambda's own memory is the backstop, not the limit.
- **timeout**: the task's timeout (else the pipeline's, which bounds its whole run) + 5 s, so the
  function answers `TaskTimeout` itself before Lambda stops it; at most Lambda's 900 s.

A variant is named `<base><memory>MB<timeout>s`, each part present only when the task asks for
it: `PythonTaskFunction512MB`, `PythonTaskFunction35s`, `LlmTaskFunction3538MB125s`. Tasks
needing the same size share a variant, in every pipeline.

Examples
--------
>>> from orchestrator.spec.models import Pipeline
>>> pipeline = Pipeline.model_validate({"name": "p", "tasks": [
...     {"name": "small", "type": "python_task", "script": "return 1",
...      "resource_limits": {"memory_limit": "256MB"}, "timeout": 30},
...     {"name": "plain", "type": "python_task", "script": "return 2"}]})
>>> [function_placeholder(task, pipeline) for task in pipeline.tasks]
['${PythonTaskFunction512MB35sArn}', '${PythonTaskFunctionArn}']
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.plan import Node, Plan
from orchestrator.runtime.policy import memory_and_cpus, task_timeout
from orchestrator.spec.loading import PipelineSource
from orchestrator.spec.models import DynamicTaskGroup, Pipeline, TaskBase

BASE_FUNCTIONS = {
    "python_task": "PythonTaskFunction",
    "llm_task": "LlmTaskFunction",
    "web_search_task": "WebSearchTaskFunction",
}
"""The base function of each leaf task type, by SAM logical id."""

LAMBDA_MIN_MEMORY_MB = 128
LAMBDA_MAX_MEMORY_MB = 10240
LAMBDA_MAX_TIMEOUT_S = 900
MB_PER_VCPU = 1769  # Lambda allocates one full vCPU at 1,769 MB
MEMORY_HEADROOM_MB = 256  # the handler's process and the runtime, beside the task's child process
TIMEOUT_MARGIN_S = 5  # the function's own TaskTimeout answers before Lambda stops it

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9]+)Arn\}")


@dataclass(frozen=True, order=True)
class FunctionSize:
    """A function's `MemorySize` (MB) and `Timeout` (s); None where the base function's stands."""

    memory_mb: int | None = None
    timeout_s: int | None = None

    def widen(self, other: FunctionSize) -> FunctionSize:
        """The larger of each part (what runs both tasks)."""
        return FunctionSize(
            _larger(self.memory_mb, other.memory_mb), _larger(self.timeout_s, other.timeout_s)
        )

    @property
    def suffix(self) -> str:
        """`512MB35s`, `512MB`, `35s`, or "" (no size asked for: the base function)."""
        memory = "" if self.memory_mb is None else f"{self.memory_mb}MB"
        timeout = "" if self.timeout_s is None else f"{self.timeout_s}s"
        return memory + timeout


@dataclass(frozen=True)
class FunctionVariant:
    """A base function with another size: its own logical id, the base's everything else."""

    base: str
    size: FunctionSize

    @property
    def logical_id(self) -> str:
        return self.base + self.size.suffix


def _larger(first: int | None, second: int | None) -> int | None:
    if first is None:
        return second
    return first if second is None else max(first, second)


def _size(memory_bytes: int | None, cpus: float | None, seconds: float | None) -> FunctionSize:
    memory: int | None = None
    if memory_bytes is not None:
        memory = math.ceil(memory_bytes / 1024**2) + MEMORY_HEADROOM_MB
    if cpus is not None:
        memory = _larger(memory, math.ceil(cpus * MB_PER_VCPU))
    timeout = None if seconds is None else math.ceil(seconds) + TIMEOUT_MARGIN_S
    return FunctionSize(
        None if memory is None else min(max(memory, LAMBDA_MIN_MEMORY_MB), LAMBDA_MAX_MEMORY_MB),
        None if timeout is None else min(timeout, LAMBDA_MAX_TIMEOUT_S),
    )


def task_size(task: TaskBase, pipeline: Pipeline) -> FunctionSize:
    """The size of the function that runs `task` (see the module for the rules)."""
    memory, cpus = memory_and_cpus(task, pipeline)
    seconds = task_timeout(task)
    if seconds is None:
        seconds = pipeline.resource_limits.timeout
    return _size(memory, cpus, seconds)


def placeholder(logical_id: str) -> str:
    """The ASL placeholder of a function (`${PythonTaskFunctionArn}`), which SAM substitutes."""
    return "${" + logical_id + "Arn}"


def task_function(task: TaskBase, pipeline: Pipeline) -> str:
    """The logical id of the function that runs a leaf task of `pipeline` (or a fallback task)."""
    kind = str(getattr(task, "type", ""))
    if kind not in BASE_FUNCTIONS:
        raise ValueError(f"a {kind or type(task).__name__} runs on no task function")
    return FunctionVariant(BASE_FUNCTIONS[kind], task_size(task, pipeline)).logical_id


def function_placeholder(node_or_task: Node | TaskBase, pipeline: Pipeline) -> str:
    """The ASL `FunctionName` of a leaf task (or fallback task) of `pipeline`."""
    task = node_or_task.task if isinstance(node_or_task, Node) else node_or_task
    return placeholder(task_function(task, pipeline))


# -- over the deployed pipelines ---------------------------------------------------------------


def deployed_pipelines(plans: Sequence[Plan]) -> Iterator[Pipeline]:
    """Every deployed pipeline, and every child pipeline compiled into one of them."""
    for plan in plans:
        yield plan.pipeline
        for child in plan.source.children.values():
            if isinstance(child, PipelineSource):
                yield child.pipeline


def _every_task(tasks: Sequence[Any]) -> Iterator[TaskBase]:
    """Every task of a list, nested bodies and fallbacks included (a dynamic group's specs are
    not tasks yet)."""
    for task in tasks:
        if not isinstance(task, TaskBase):
            continue
        yield task
        nested = getattr(task, "tasks", None)
        if isinstance(nested, list) and not isinstance(task, DynamicTaskGroup):
            yield from _every_task(nested)
        if task.error_handling is not None and task.error_handling.fallback is not None:
            yield from _every_task([task.error_handling.fallback])


def function_variants(plans: Sequence[Plan]) -> dict[str, FunctionVariant]:
    """The variants the pipelines' tasks run on, by logical id, sorted."""
    variants: dict[str, FunctionVariant] = {}
    for pipeline in deployed_pipelines(plans):
        for task in _every_task(pipeline.tasks):
            base = BASE_FUNCTIONS.get(str(getattr(task, "type", "")))
            size = task_size(task, pipeline)
            if base is not None and size != FunctionSize():
                variant = FunctionVariant(base, size)
                variants[variant.logical_id] = variant
    return dict(sorted(variants.items()))


def generated_task_sizes(plans: Sequence[Plan]) -> dict[str, FunctionSize]:
    """What the base functions must hold for generated tasks, by logical id.

    A `dynamic_task_group`'s tasks exist only at run time, so they run on their type's base
    function; that function is sized for the limits they get from their pipeline's
    `resource_limits` (limits in a generated spec itself still hold in the sandbox, on an
    unsized function)."""
    sizes: dict[str, FunctionSize] = {}
    for pipeline in deployed_pipelines(plans):
        if not any(isinstance(task, DynamicTaskGroup) for task in _every_task(pipeline.tasks)):
            continue
        shared = pipeline.resource_limits
        size = _size(shared.memory_bytes(), shared.cpu_limit, shared.timeout)
        if size != FunctionSize():
            for base in BASE_FUNCTIONS.values():
                sizes[base] = sizes.get(base, FunctionSize()).widen(size)
    return sizes


def named_functions(definition_text: str) -> set[str]:
    """The logical ids of the functions a compiled definition's placeholders name."""
    return set(_PLACEHOLDER.findall(definition_text))


def base_function(logical_id: str) -> str:
    """The base function a function is a variant of (a base function is its own)."""
    for base in BASE_FUNCTIONS.values():
        rest = logical_id.removeprefix(base)
        if rest != logical_id and re.fullmatch(r"(\d+MB)?(\d+s)?", rest):
            return base
    return logical_id


def with_variants(definition_text: str, arns: Mapping[str, str]) -> dict[str, str]:
    """`arns` (placeholder -> ARN of a base function) with every variant placeholder of the
    definition mapped to its base function's ARN.

    For an account that has only the base functions (the emulator): a variant runs the same
    handler, and the handler holds the task's limits itself (`runtime.sandbox`), so the task
    fails or succeeds there as it would on its variant."""
    mapped = dict(arns)
    for logical_id in sorted(named_functions(definition_text)):
        base = placeholder(base_function(logical_id))
        if placeholder(logical_id) not in mapped and base in arns:
            mapped[placeholder(logical_id)] = arns[base]
    return mapped
