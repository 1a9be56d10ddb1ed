"""Lambda entry point: an S3 `ObjectCreated` notification starts a run of each matching pipeline."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import S3Event, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from orchestrator.aws import triggers

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="Orchestrator")


@logger.inject_lambda_context(correlation_id_path='Records[0].responseElements."x-amz-request-id"')
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_source(data_class=S3Event)
def lambda_handler(event: S3Event, context: LambdaContext) -> dict[str, Any]:
    """One run per matching pipeline and object; a repeated notification starts none."""
    uploads = [
        triggers.Upload.from_notification(
            record.s3.bucket.name,
            record.s3.get_object.key,
            record.s3.get_object.size,
            record.s3.get_object.etag,
        )
        for record in event.records
    ]
    result = triggers.start_upload_runs(uploads)
    metrics.add_metric(name="RunsStarted", unit=MetricUnit.Count, value=len(result["runs"]))
    if result["rejected"]:
        logger.warning("uploads rejected", extra={"rejected": result["rejected"]})
    return result
