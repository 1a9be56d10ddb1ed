"""Every error type Orchestrator itself gives a failed task, and whether a retry can help.

This is the one place that decides retryability (docs/decisions.md, "Non-retryable errors"):
an error that cannot change on another attempt is not retried, whatever `retry_count` says;
everything else is retried per the task's `error_handling`. `TaskError` reads it on the
embedded engine, and the compiler derives the state machines' `{"ErrorEquals": [...],
"MaxAttempts": 0}` rule from it, so both engines make the same number of attempts.

An error type that is not here (the class name of an exception a script raised, such as
`ValueError`) is retryable. The three types marked "on AWS" are the class names of what the
Lambda glue raises when a payload and the deployed files disagree.

`python -m orchestrator.error_types` prints the table of docs/language.md ("Error types").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class ErrorType:
    """One error type: its name (what run documents and Catch rules see), retryable, meaning."""

    name: str
    retryable: bool
    meaning: str


def _registry(*types: ErrorType) -> Mapping[str, ErrorType]:
    by_name = {error_type.name: error_type for error_type in types}
    if len(by_name) != len(types):
        raise AssertionError("an error type is registered twice")
    return MappingProxyType(by_name)


ERROR_TYPES: Mapping[str, ErrorType] = _registry(
    # -- not retried: another attempt would fail the same way --------------------------------
    ErrorType(
        "TemplateError",
        False,
        "a template names something undefined, has bad syntax or is refused by the sandbox, "
        "or a condition cannot be evaluated",
    ),
    ErrorType("ScriptSyntaxError", False, "a `python_task` script does not parse"),
    ErrorType("OutputNotSerializable", False, "a task returned a value that is not JSON"),
    ErrorType("NotSerializable", False, "a script stored a state value that is not JSON"),
    ErrorType("SecretNotFound", False, "a script asked for a secret that is not set"),
    ErrorType(
        "InvalidTaskSpec",
        False,
        "a `dynamic_task_group` generated an invalid task spec (on AWS: one of a type it cannot run)",
    ),
    ErrorType("InvalidLoopItems", False, "a `for_loop`'s `iterate_over` gave neither a list nor a mapping"),
    ErrorType("LLMConfigurationError", False, "no LLM endpoint is configured for the task's model"),
    ErrorType(
        "LLMRequestError",
        False,
        "the LLM server refused the request (an HTTP error other than 408, 429 or 5xx)",
    ),
    ErrorType(
        "ReplayMiss",
        False,
        "`run --replay FILE`: the task's LLM call or web search is not in the record file "
        "(record it again with `run --record FILE`)",
    ),
    ErrorType(
        "BudgetExceeded",
        False,
        "a `budget` covering the task cannot take its next LLM call (what it may cost is reserved "
        "before the call); the call was not made",
    ),
    ErrorType(
        "BudgetUnpriced",
        False,
        "a `budget` with `max_cost_usd` covers a call to a model the config file gives no price",
    ),
    ErrorType(
        "SearchConfigurationError",
        False,
        "no search endpoint is configured, or it is not an http(s) URL",
    ),
    ErrorType(
        "SearchRequestError",
        False,
        "the search endpoint refused the request (an HTTP error other than 408, 429 or 5xx), "
        "or `max_results` is below 1",
    ),
    ErrorType(
        "ChildPipelineInvalid",
        False,
        "a `pipeline_group` child file is missing or invalid, or its inputs do not match it",
    ),
    ErrorType("PipelineCycle", False, "`pipeline_group` children include each other"),
    ErrorType("UnknownPipelineError", False, "on AWS: the payload names no deployed pipeline"),
    ErrorType("UnknownTaskError", False, "on AWS: the payload names no task of the deployed pipeline"),
    ErrorType(
        "DispatchError",
        False,
        "on AWS: a dispatch payload asks a task for something it cannot give",
    ),
    # -- retried per error_handling ----------------------------------------------------------
    ErrorType("TaskTimeout", True, "the attempt outlived the task's `timeout`"),
    ErrorType("MemoryLimitExceeded", True, "the attempt exceeded the task's `memory_limit`"),
    ErrorType("MemoryError", True, "the attempt ran out of memory"),
    ErrorType("SandboxError", True, "the child process running the attempt ended without a result"),
    ErrorType("StateConflict", True, "state kept conflicting with concurrent writers"),
    ErrorType(
        "LLMRateLimited",
        True,
        "the LLM endpoint answered 429 (too many requests), or the model's rate-limit slot was "
        "too far away; the next attempt waits at least its `Retry-After`",
    ),
    ErrorType(
        "LLMTransientError",
        True,
        "the LLM endpoint timed out, was unreachable or answered 408 or 5xx (the next attempt "
        "waits at least its `Retry-After`)",
    ),
    ErrorType("LLMResponseError", True, "the LLM reply is not a chat completion or has no text"),
    ErrorType("OutputParseError", True, "the LLM reply does not read as the task's `output_type`"),
    ErrorType(
        "OutputValidationError",
        True,
        "no LLM reply matched the task's `output_schema` in 1 + `schema_retries` tries",
    ),
    ErrorType(
        "SearchRateLimited",
        True,
        "the search endpoint answered 429 (too many requests); the next attempt waits at least its "
        "`Retry-After`",
    ),
    ErrorType(
        "SearchTransientError",
        True,
        "the search endpoint timed out, was unreachable or answered 408 or 5xx (the next attempt "
        "waits at least its `Retry-After`)",
    ),
    ErrorType(
        "SearchResponseError",
        True,
        "the search endpoint's answer is not JSON, or not a list of result objects",
    ),
    ErrorType("ChildPipelineFailed", True, "a child run of a `pipeline_group` failed"),
    ErrorType("TaskFailed", True, "the task failed without an error type of its own"),
)


def is_retryable(error_type: str) -> bool:
    """Whether an attempt that failed with `error_type` may be retried (unknown types may)."""
    known = ERROR_TYPES.get(error_type)
    return known is None or known.retryable


NON_RETRYABLE: tuple[str, ...] = tuple(
    sorted(name for name, kind in ERROR_TYPES.items() if not kind.retryable)
)
"""The types never retried, sorted: the compiler's `MaxAttempts: 0` rule lists exactly these."""


def markdown_table() -> str:
    """The table of docs/language.md: not-retried types first, each group by name."""
    lines = ["| error type | retried | meaning |", "|---|---|---|"]
    ordered = sorted(ERROR_TYPES.values(), key=lambda kind: (kind.retryable, kind.name))
    for kind in ordered:
        lines.append(f"| `{kind.name}` | {'yes' if kind.retryable else 'no'} | {kind.meaning} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
