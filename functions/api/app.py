"""Lambda entry point of the HTTP API: `POST /pipelines/{id}/runs`, `GET /runs/{run_id}`."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from orchestrator.aws import triggers

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="Orchestrator")
app = APIGatewayHttpResolver()


@app.post("/pipelines/<pipeline_id>/runs")
def create_run(pipeline_id: str) -> Response[dict[str, Any]]:
    """Start a run; 202 when started now, 200 when the Idempotency-Key names an earlier one."""
    event = app.current_event
    request = triggers.parse_run_request(event.decoded_body)
    started = triggers.start_run(
        pipeline_id,
        request.inputs,
        idempotency_key=event.headers.get("idempotency-key"),
        user_id=triggers.caller_id(event.request_context.authorizer),
        no_cache=request.no_cache,
    )
    metrics.add_metric(name="RunsStarted", unit=MetricUnit.Count, value=int(started.created))
    return Response(
        status_code=202 if started.created else 200,
        content_type=content_types.APPLICATION_JSON,
        body=started.as_dict(),
        headers={"Location": f"/runs/{started.run_id}"},
    )


@app.get("/runs/<run_id>")
def get_run(run_id: str) -> dict[str, Any]:
    """A run's status, task statuses and outputs."""
    return triggers.describe_run(run_id)


def request_error(error: triggers.RequestError) -> Response[dict[str, Any]]:
    """A mistake of the caller's: its HTTP status and a message saying what to fix."""
    return Response(
        status_code=error.status_code,
        content_type=content_types.APPLICATION_JSON,
        body={"error": str(error)},
    )


app.exception_handler(triggers.RequestError)(request_error)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Route an HTTP API (payload v2) request."""
    metrics.add_metric(name="ApiRequests", unit=MetricUnit.Count, value=1)
    return app.resolve(event, context)
