"""Statuses, task outcomes and the run document: defined once, used by every engine and the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.runtime.redact import Redactor


class TaskStatus(StrEnum):
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"
    CACHED = "cached"
    FALLBACK = "fallback"
    FAILED = "failed"
    CANCELLED = "cancelled"  # was running when the run was aborted
    NOT_RUN = "not_run"  # never started because the run ended first


class RunStatus(StrEnum):
    SUCCEEDED = "succeeded"
    DEGRADED = "degraded"
    FAILED = "failed"
    RUNNING = "running"  # recorded before the first task starts
    CRASHED = "crashed"  # stopped before it finished (Ctrl-C, or its process died): resumable


@dataclass(frozen=True)
class ErrorInfo:
    """What went wrong in a task: the error type a Catch rule would match, and its message."""

    type: str
    message: str

    def as_dict(self, task: str | None = None) -> dict[str, Any]:
        found: dict[str, Any] = {"type": self.type, "message": self.message}
        return {"task": task, **found} if task is not None else found


@dataclass
class TaskOutcome:
    """How one task ended."""

    status: TaskStatus
    output: Any = None
    attempts: int = 0
    error: ErrorInfo | None = None
    duration: float = 0.0

    def record(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "attempts": self.attempts,
            "error": self.error.as_dict() if self.error else None,
        }


def run_document(
    *,
    run_id: str,
    pipeline: str,
    status: RunStatus,
    outcomes: dict[str, TaskOutcome],
    result: Any,
    error: dict[str, Any] | None,
) -> dict[str, Any]:
    """The run document of SPEC section 11, exactly."""
    return {
        "run_id": run_id,
        "pipeline": pipeline,
        "status": status.value,
        "outputs": {name: outcome.output for name, outcome in outcomes.items()},
        "tasks": {name: outcome.record() for name, outcome in outcomes.items()},
        "result": result,
        "error": error,
    }


def redacted_error(error: dict[str, Any] | None, redactor: Redactor) -> dict[str, Any] | None:
    """An error as the run document shows it: its message is user content, its task and type are not."""
    if not error or not isinstance(error.get("message"), str):
        return error
    return {**error, "message": redactor.text(error["message"])}


def redacted_record(record: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    """A task's record (`TaskOutcome.record`, with its output) with only its user content redacted."""
    redacted = {**record, "error": redacted_error(record.get("error"), redactor)}
    if "output" in record:
        redacted["output"] = redactor.value(record["output"])
    return redacted


def redacted_document(document: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    """A run document with its user content redacted (task outputs, the result, error messages)
    and its structure untouched: keys, run id, pipeline and task names, statuses, attempts and any
    other field stay as they are, whatever the sensitive values (`runtime.redact`)."""
    redacted = dict(document)
    if isinstance(document.get("outputs"), dict):
        redacted["outputs"] = {name: redactor.value(output) for name, output in document["outputs"].items()}
    if "result" in document:
        redacted["result"] = redactor.value(document["result"])
    if isinstance(document.get("error"), dict):
        redacted["error"] = redacted_error(document["error"], redactor)
    if isinstance(document.get("tasks"), dict):
        redacted["tasks"] = {
            name: redacted_record(record, redactor) if isinstance(record, dict) else record
            for name, record in document["tasks"].items()
        }
    return redacted
