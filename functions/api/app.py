"""Lambda entry point of the HTTP API: `POST /pipelines/{id}/runs`, `GET /runs`, `GET /runs/{run_id}`.

Every route acts for the caller API Gateway's IAM authorizer let in (`triggers.require_caller`):
a run belongs to the caller who started it, and only that caller reads or lists it.
"""

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


def _caller() -> str:
    return triggers.require_caller(app.current_event.request_context.authorizer)


@app.post("/pipelines/<pipeline_id>/runs")
def create_run(pipeline_id: str) -> Response[dict[str, Any]]:
    """Start a run; 202 when started now, 200 when the caller's Idempotency-Key names an earlier one."""
    caller = _caller()
    event = app.current_event
    request = triggers.parse_run_request(event.decoded_body)
    started = triggers.start_run(
        pipeline_id,
        request.inputs,
        idempotency_key=event.headers.get("idempotency-key"),
        owner=caller,
        no_cache=request.no_cache,
    )
    metrics.add_metric(name="RunsStarted", unit=MetricUnit.Count, value=int(started.created))
    return Response(
        status_code=202 if started.created else 200,
        content_type=content_types.APPLICATION_JSON,
        body=started.as_dict(),
        headers={"Location": f"/runs/{started.run_id}"},
    )


@app.get("/runs")
def list_runs() -> dict[str, Any]:
    """The caller's runs, newest first (`?limit=`, 1 to 100, default 20)."""
    caller = _caller()
    text = app.current_event.get_query_string_value("limit", "20") or "20"
    if not text.isdigit():
        raise triggers.InvalidRequestError(f"limit must be a whole number from 1 to {triggers.MAX_LISTED}")
    return triggers.list_runs(caller, limit=int(text))


@app.get("/runs/<run_id>")
def get_run(run_id: str) -> dict[str, Any]:
    """A run's status, task statuses and outputs: 404 unless the caller started it."""
    return triggers.describe_run(run_id, caller=_caller())


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
