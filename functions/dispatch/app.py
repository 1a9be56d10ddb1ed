"""Lambda entry point: what a state machine cannot evaluate itself (conditions, items, ...)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from orchestrator.aws.dispatch import dispatch
from orchestrator.aws.events import DispatchEvent

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="Orchestrator")


@logger.inject_lambda_context(correlation_id_path="run.id")
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    """Answer one dispatch action (see `orchestrator.aws.dispatch.dispatch`)."""
    metrics.add_metric(name="DispatchCalls", unit=MetricUnit.Count, value=1)
    return dispatch(DispatchEvent.model_validate(event))
