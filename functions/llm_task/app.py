"""Lambda entry point: one attempt of a `llm_task` of a compiled state machine (docs/aws.md)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from orchestrator.aws.events import TaskEvent
from orchestrator.aws.task_function import run_task_event

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="Orchestrator")


@logger.inject_lambda_context(correlation_id_path="run.id")
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Run the attempt; a failure raises an exception named by its error type (for Retry/Catch)."""
    metrics.add_metric(name="LlmTaskAttempts", unit=MetricUnit.Count, value=1)
    remaining = context.get_remaining_time_in_millis
    return run_task_event(TaskEvent.model_validate(event), time_left=lambda: remaining() / 1000)
