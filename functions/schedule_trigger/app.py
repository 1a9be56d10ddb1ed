"""Lambda entry point: an EventBridge Scheduler schedule starts a run with its inputs."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from orchestrator.aws import triggers

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="Orchestrator")


@logger.inject_lambda_context(correlation_id_path="idempotency_key")
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """The target input is `{"pipeline": id, "inputs": {...}, "idempotency_key"?: ...}`."""
    metrics.add_metric(name="ScheduledRuns", unit=MetricUnit.Count, value=1)
    return triggers.start_scheduled_run(triggers.parse_scheduled_run(event)).as_dict()
