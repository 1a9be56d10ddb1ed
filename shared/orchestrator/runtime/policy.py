"""Effective error handling of a task: task settings over pipeline settings over defaults (SPEC 7)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from orchestrator.spec.models import Pipeline, TaskBase


@dataclass(frozen=True)
class ErrorPolicy:
    retry_count: int
    retry_delay: float
    backoff_rate: float
    on_failure: str
    fallback: TaskBase | None
    fallback_value: Any

    def delay_before(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1-based), at most `MAX_RETRY_DELAY`
        (past it, as after hundreds of exponential retries, the power overflows a float)."""
        if self.retry_delay == 0:
            return 0.0
        try:
            delay = self.retry_delay * self.backoff_rate ** (retry - 1)
        except OverflowError:
            return MAX_RETRY_DELAY
        return min(delay, MAX_RETRY_DELAY)

    def state_machine_retry(self) -> tuple[int, float]:
        """`IntervalSeconds` and `BackoffRate` of the state machine's Retry rule for this policy:
        Step Functions waits whole seconds, at least 1, and a rate of at least 1."""
        return max(1, math.ceil(self.retry_delay)), max(1.0, self.backoff_rate)

    def state_machine_delay(self, retry: int) -> float:
        """Seconds the state machine waits before retry number `retry` (1-based)."""
        interval, rate = self.state_machine_retry()
        try:
            return min(interval * rate ** (retry - 1), MAX_RETRY_DELAY)
        except OverflowError:
            return MAX_RETRY_DELAY


MAX_RETRY_DELAY = 31_622_400.0
"""The longest wait before a retry: a year and a day, Step Functions' largest `MaxDelaySeconds`."""

MAX_RETRY_AFTER = 600.0
"""The longest a provider's ``Retry-After`` holds up the next attempt: ten minutes. A server
that asks for more is tried again then, and the task's policy applies if it still refuses."""


def backoff_rate(backoff: str | float) -> float:
    if backoff == "exponential":
        return 2.0
    if backoff == "fixed":
        return 1.0
    return float(backoff)


def effective_policy(task: TaskBase, pipeline: Pipeline) -> ErrorPolicy:
    defaults = pipeline.error_handling
    own = task.error_handling
    if own is None:
        return ErrorPolicy(
            defaults.default_retry_count,
            defaults.retry_delay,
            backoff_rate(defaults.retry_backoff),
            defaults.on_failure,
            None,
            None,
        )
    return ErrorPolicy(
        own.retry_count if own.retry_count is not None else defaults.default_retry_count,
        own.retry_delay if own.retry_delay is not None else defaults.retry_delay,
        backoff_rate(own.retry_backoff if own.retry_backoff is not None else defaults.retry_backoff),
        own.on_failure or defaults.on_failure,
        own.fallback,
        own.fallback_value,
    )


def task_timeout(task: TaskBase) -> float | None:
    """Wall-clock limit of one attempt, from `timeout` or `resource_limits.timeout`."""
    if task.timeout is not None:
        return task.timeout
    if task.resource_limits is not None:
        return task.resource_limits.timeout
    return None


def memory_and_cpus(task: TaskBase, pipeline: Pipeline) -> tuple[int | None, float | None]:
    """A task's `memory_limit` (in bytes) and `cpu_limit`, each its own `resource_limits`' over the
    pipeline's: what the sandbox holds it to on either engine (`runtime.sandbox.limits_for`), and
    what its Lambda function is sized for on AWS (`aws.functions`)."""
    own = task.resource_limits
    shared = pipeline.resource_limits
    memory = own.memory_bytes() if own is not None and own.memory_limit is not None else shared.memory_bytes()
    cpus = own.cpu_limit if own is not None and own.cpu_limit is not None else shared.cpu_limit
    return memory, cpus
