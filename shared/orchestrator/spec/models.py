"""Pydantic models of every key of a pipeline file (SPEC sections 1-3)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TASK_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
InputType = Literal["string", "integer", "float", "number", "boolean", "array", "object"]
OnFailure = Literal["abort_pipeline", "skip", "continue_with_degraded_service"]
Backoff = Literal["exponential", "fixed"] | Annotated[float, Field(gt=0)]
Seconds = Annotated[float, Field(ge=0)]


class StrictModel(BaseModel):
    """Every model rejects unknown keys, so a misspelt key is an error, not a silent default;
    and a number key `.inf` or `.nan`, which no limit, delay or count can mean."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, defer_build=True, allow_inf_nan=False)


class InputVariable(StrictModel):
    type: InputType = "string"
    description: str | None = None
    default: Any = None
    options: list[Any] | None = None
    required: bool = True
    sensitive: bool = False


class PipelineErrorHandling(StrictModel):
    default_retry_count: Annotated[int, Field(ge=0)] = 0
    retry_delay: Seconds = 1.0
    retry_backoff: Backoff = "exponential"
    on_failure: OnFailure = "abort_pipeline"


def parse_memory(value: str | int) -> int:
    """`"512MB"`, `"2GB"`, `"1.5GiB"` or a number of megabytes -> bytes."""
    if isinstance(value, int):
        return value * 1024 * 1024
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*", value, re.IGNORECASE)
    if not match:
        raise ValueError(f"'{value}' is not a memory size: write it like '512MB' or '2GB'")
    number, unit = float(match.group(1)), (match.group(2) or "MB").upper().rstrip("B").rstrip("I")
    scale = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[unit]
    return int(number * scale)


class ResourceLimits(StrictModel):
    memory_limit: str | int | None = None
    cpu_limit: Annotated[float, Field(gt=0)] | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None

    @field_validator("memory_limit")
    @classmethod
    def _memory_is_a_size(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            parse_memory(value)
        return value

    def memory_bytes(self) -> int | None:
        return None if self.memory_limit is None else parse_memory(self.memory_limit)


class StateManagement(StrictModel):
    persistence: bool = False
    storage_backend: Literal["filesystem", "database", "redis", "dynamodb", "memory"] = "database"
    ttl: Annotated[float, Field(gt=0)] | None = None


class CacheConfig(StrictModel):
    enabled: bool = False
    ttl: Annotated[float, Field(gt=0)] | None = None
    strategy: Literal["content_hash", "input_hash", "custom"] = "content_hash"


class Security(StrictModel):
    encrypt_variables: bool = False
    sensitive_variables: list[str] = Field(default_factory=list)


class InputValidation(StrictModel):
    strict_mode: bool = False
    sanitization: bool = False


class Schedule(StrictModel):
    expression: Annotated[str, Field(pattern=r"^(rate|cron|at)\(.+\)$")]
    inputs: dict[str, Any] = Field(default_factory=dict)
    description: str | None = None


class S3Trigger(StrictModel):
    prefix: str = ""
    suffix: str = ""


class Triggers(StrictModel):
    schedule: list[Schedule] = Field(default_factory=list)
    s3: S3Trigger | None = None
    api: bool = True


class Budget(StrictModel):
    """The most tokens (in and out together) and US dollars the LLM calls a budget covers may
    spend (`runtime.budget`): at least one of them."""

    max_tokens: Annotated[int, Field(gt=0)] | None = None
    max_cost_usd: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _limits_something(self) -> Budget:
        if self.max_tokens is None and self.max_cost_usd is None:
            raise ValueError("a budget needs max_tokens, max_cost_usd or both, like {max_tokens: 20000}")
        return self


class TaskErrorHandling(StrictModel):
    retry_count: Annotated[int, Field(ge=0)] | None = None
    retry_delay: Seconds | None = None
    retry_backoff: Backoff | None = None
    on_failure: OnFailure | None = None
    fallback: Task | None = None
    fallback_value: Any = None


class TaskBase(StrictModel):
    name: Annotated[str, Field(pattern=TASK_NAME_PATTERN)] | None = None
    description: str | None = None
    depends_on: list[str] = Field(default_factory=list)
    condition: str | bool | None = None
    error_handling: TaskErrorHandling | None = None
    cache_key: str | None = None
    cache_ttl: Annotated[float, Field(gt=0)] | None = None
    cache_strategy: Literal["prompt_hash", "content_hash", "input_hash"] | None = None
    resource_limits: ResourceLimits | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None
    budget: Budget | None = None


class PythonTask(TaskBase):
    type: Literal["python_task"]
    script: str


class LLMTask(TaskBase):
    type: Literal["llm_task"]
    prompt: str
    model: str | None = None
    system: str | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Field(gt=0)] | None = None
    output_type: Literal["text", "number", "integer", "boolean", "json"] = "text"
    # a JSON Schema, or the path of a JSON/YAML file holding one (relative to the pipeline
    # file; `spec.output_schema` reads it in when the pipeline is loaded)
    output_schema: dict[str, Any] | str | None = None
    schema_retries: Annotated[int, Field(ge=0, le=10)] = 2

    @field_validator("output_schema", mode="before")
    @classmethod
    def _schema_or_file(cls, value: Any) -> Any:
        if value is None or isinstance(value, dict | str):
            return value
        raise ValueError(
            "output_schema is a JSON Schema (a mapping, like {type: object, properties: ...}) "
            f"or the path of a JSON or YAML file holding one, not a {type(value).__name__}"
        )


class WebSearchTask(TaskBase):
    type: Literal["web_search_task"]
    query: str
    max_results: Annotated[int, Field(gt=0, le=100)] = 5


def _holds_pipeline_group(tasks: list[Any]) -> bool:
    return any(
        isinstance(task, PipelineGroup) or _holds_pipeline_group(getattr(task, "tasks", None) or [])
        for task in tasks
        if isinstance(task, TaskBase)
    )


class _BudgetedContainer(TaskBase):
    """A container whose `budget` covers the tasks inside it, which a child pipeline cannot be
    under: its tasks are budgeted by its own file's `budget` and the top pipeline's."""

    @model_validator(mode="after")
    def _budget_covers_its_tasks(self) -> _BudgetedContainer:
        if self.budget is not None and _holds_pipeline_group(getattr(self, "tasks", [])):
            raise ValueError(
                "a budget cannot cover the child pipelines of a pipeline_group inside this task: "
                "put `budget:` in the child pipeline files, or on the pipeline"
            )
        return self


class ForLoop(_BudgetedContainer):
    type: Literal["for_loop"]
    iterate_over: str | list[Any]
    item_variable: Annotated[str, Field(pattern=TASK_NAME_PATTERN)] = "item"
    tasks: list[Task]
    max_concurrency: Annotated[int, Field(ge=1)] = 1


class WhileLoop(_BudgetedContainer):
    type: Literal["while_loop"]
    condition: str | bool  # the loop condition, checked before every iteration
    max_iterations: Annotated[int, Field(ge=1)]
    tasks: list[Task]


class ParallelGroup(_BudgetedContainer):
    type: Literal["parallel_group"]
    tasks: list[Task]
    max_concurrency: Annotated[int, Field(ge=1)] | None = None


class DynamicTaskGroup(TaskBase):
    type: Literal["dynamic_task_group"]
    tasks: str | list[dict[str, Any]]
    parallel: bool = False
    max_concurrency: Annotated[int, Field(ge=1)] | None = None


class ChildPipeline(StrictModel):
    pipeline: str
    inputs: dict[str, Any] = Field(default_factory=dict)


class PipelineGroup(TaskBase):
    type: Literal["pipeline_group"]
    mode: Literal["parallel", "sequential"] = "parallel"
    pipelines: list[ChildPipeline]

    @model_validator(mode="after")
    def _no_budget(self) -> PipelineGroup:
        if self.budget is not None:
            raise ValueError(
                "a pipeline_group cannot have a budget (its child pipelines run under their own): "
                "put `budget:` in the child pipeline files, or on the pipeline"
            )
        return self


Task = Annotated[
    PythonTask
    | LLMTask
    | WebSearchTask
    | ForLoop
    | WhileLoop
    | ParallelGroup
    | DynamicTaskGroup
    | PipelineGroup,
    Field(discriminator="type"),
]
TASK_TYPES: dict[str, type[TaskBase]] = {
    "python_task": PythonTask,
    "llm_task": LLMTask,
    "web_search_task": WebSearchTask,
    "for_loop": ForLoop,
    "while_loop": WhileLoop,
    "parallel_group": ParallelGroup,
    "dynamic_task_group": DynamicTaskGroup,
    "pipeline_group": PipelineGroup,
}
CONTAINER_TYPES = (ForLoop, WhileLoop, ParallelGroup)


class Pipeline(StrictModel):
    """A whole pipeline file."""

    name: str
    description: str | None = None
    version: str | int | float | None = None
    input_variables: dict[str, InputVariable] = Field(default_factory=dict)
    tasks: list[Task]
    error_handling: PipelineErrorHandling = Field(default_factory=PipelineErrorHandling)
    state_management: StateManagement = Field(default_factory=StateManagement)
    cache_config: CacheConfig = Field(default_factory=CacheConfig)
    resource_limits: ResourceLimits = Field(default_factory=ResourceLimits)
    security: Security = Field(default_factory=Security)
    input_validation: InputValidation = Field(default_factory=InputValidation)
    dependencies: list[str] = Field(default_factory=list)
    triggers: Triggers = Field(default_factory=Triggers)
    outputs: dict[str, Any] | None = None
    budget: Budget | None = None
    workflow_type: Literal["STANDARD", "EXPRESS"] = "STANDARD"

    def sensitive_inputs(self) -> set[str]:
        """Names of inputs that must never appear in plain text."""
        marked = {name for name, spec in self.input_variables.items() if spec.sensitive}
        return marked | set(self.security.sensitive_variables)


# Only the model every run validates is built now. The recursive task models it contains
# resolve their `Task` references when built themselves (`model_rebuild`), which only the
# diagnostics of an invalid file need (`spec.loading`): about 25 ms off every start.
Pipeline.model_rebuild()
