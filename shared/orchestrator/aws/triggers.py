"""Front doors of the deployed app: start a run's execution, and read it back.

The HTTP API, the S3 upload trigger and the EventBridge Scheduler trigger all end in
`start_run`: it checks the pipeline is deployed, resolves the inputs against its
`input_variables` (an `InputError` is the caller's mistake, so a 400), seals the sensitive
ones and starts the pipeline's state machine with the execution input of `docs/aws.md`:

    {"inputs": {...}, "run": {"id", "pipeline", "started_at", ...}, "tasks": {}}

**Sensitive inputs never enter the execution input in plain text.** Each input named by the
pipeline's `sensitive_inputs()` is replaced by `{"sealed": <token>, "by": "kms"}`: envelope
encryption under `ORCHESTRATOR_KMS_KEY_ID`, bound to the pipeline and input name by the KMS
encryption context (see `orchestrator.sealing.kms`). The inputs keep their place, so the
state machine passes them on unchanged, and only a task or dispatch Lambda (with
`kms:Decrypt`) opens them; the outputs it returns are redacted. Empty values (`""`, null)
are left as they are. Off Lambda without a KMS key (the in-process engine, tests) the
state folder's Fernet key seals instead.

**Run ids.** A run id is the execution's name, `<pipeline id>-<time>-<random>`. With an
idempotency key (the API's `Idempotency-Key` header, an upload's bucket+key+etag, a
schedule's key) it is `<pipeline id>-<source><hash>`, the hash of source, pipeline, owner
and key: deterministic, so a repeated key meets `ExecutionAlreadyExists` and gets the run
that already exists. (Standard workflows only: Express workflows do not keep names unique.)
The id starts with the pipeline id so that `describe_run` finds the state machine with one
call.

**Runs belong to their caller** (`aws.run_owners`). A run the API starts records its caller
in the execution input (`run.owner`) and in the runs table; `describe_run` answers a run
only to its owner (anyone else gets the 404 of a run that does not exist, so ids cannot be
probed) and `list_runs` lists the caller's own. Keys are per caller: another caller's
`Idempotency-Key` names another run, and the same caller sending its key with another
request (pipeline, inputs or `no_cache`) gets a 409. Runs started by uploads and schedules
belong to the stack: no API caller reads them.

Every error a caller can cause is a `RequestError` with an HTTP status; anything else is
a fault of the deployment and stays loud. boto3 clients are injected or built lazily.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.aws.clients import aws_client
from orchestrator.aws.deployed import UnknownPipelineError, load_plan
from orchestrator.aws.payloads import resolve
from orchestrator.aws.run_owners import OwnedRun, RunOwners, request_digest
from orchestrator.aws.state_records import task_records
from orchestrator.aws.task_scope import visible_outputs
from orchestrator.errors import InputError, OrchestratorError
from orchestrator.sealing.inputs import default_sealer, seal_inputs
from orchestrator.settings import aws_settings
from orchestrator.stores.base import TelemetryLog

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.api_gateway_proxy_event import (
        RequestContextV2Authorizer,
    )

    from orchestrator.sealing.base import Sealer

MAX_EXECUTION_NAME = 80
MAX_EXECUTION_INPUT = 262_144  # Step Functions' limit on an execution's input, in bytes
_TOO_LARGE = "the inputs are too large for an execution (256 KB at most)"
MAX_IDEMPOTENCY_KEY = 256
_RUN_PREFIX_LENGTH = 40
_RUN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")
_STATUSES = {
    "RUNNING": "running",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "TIMED_OUT": "timed_out",
    "ABORTED": "aborted",
    "PENDING_REDRIVE": "pending_redrive",
}


# -- errors ------------------------------------------------------------------------------------


class RequestError(OrchestratorError):
    """A request the caller must fix; `status_code` is the HTTP status to answer with."""

    status_code = 400


class InvalidRequestError(RequestError):
    """Bad JSON, a body of the wrong shape, or inputs that do not match `input_variables`."""


class PipelineNotFoundError(RequestError):
    """No pipeline with this id is deployed."""

    status_code = 404


class RunNotFoundError(RequestError):
    """No run with this id, or none the caller owns."""

    status_code = 404


class NoCallerError(RequestError):
    """The request carries no caller identity (the API's IAM authorizer is not in front of it)."""

    status_code = 403


class IdempotencyConflictError(RequestError):
    """The caller's idempotency key already started a run of another request."""

    status_code = 409


# -- requests ----------------------------------------------------------------------------------


class RunRequest(BaseModel):
    """Body of `POST /pipelines/{id}/runs`: `{"inputs": {...}, "no_cache": false}` (both optional)."""

    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, Any] = Field(default_factory=dict)
    no_cache: bool = False


class ScheduledRun(BaseModel):
    """Input of an EventBridge Scheduler target: which pipeline, with which inputs.

    Schedules set `idempotency_key` from Scheduler context attributes, for example
    `"<aws.scheduler.schedule-arn>@<aws.scheduler.scheduled-time>"`, so a delivery that
    Scheduler retries starts no second run.
    """

    model_config = ConfigDict(extra="forbid")

    pipeline: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Upload:
    """One object of an S3 `ObjectCreated` notification."""

    bucket: str
    key: str
    size: int | None
    etag: str | None

    @classmethod
    def from_notification(cls, bucket: str, key: str, size: int | None, etag: str | None) -> Upload:
        """An upload from a notification record, whose key is URL-encoded (`a+b.csv` is `a b.csv`)."""
        return cls(bucket, unquote_plus(key), size, etag or None)


@dataclass(frozen=True)
class StartedRun:
    """A run whose execution was started now (`created`) or earlier with the same key."""

    run_id: str
    pipeline: str
    started_at: str
    execution_arn: str
    created: bool

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status_url": f"/runs/{self.run_id}"}


def _problems(error: ValidationError) -> str:
    return "; ".join(
        (f"'{'.'.join(str(p) for p in item['loc'])}': " if item["loc"] else "") + str(item["msg"])
        for item in error.errors()
    )


def parse_run_request(body: str | None) -> RunRequest:
    """The request body of a new run; an empty body is a run with the default inputs."""
    if body is None or not body.strip():
        return RunRequest()
    from orchestrator.runtime.inputs import json_document

    try:
        data = json_document(body)
    except json.JSONDecodeError as error:
        raise InvalidRequestError(f"the body is not valid JSON: {error}") from None
    except InputError as error:
        raise InvalidRequestError(f"the body: {error}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError('the body must be a JSON object like {"inputs": {"name": "value"}}')
    try:
        return RunRequest.model_validate(data)
    except ValidationError as error:
        raise InvalidRequestError(
            f'{_problems(error)} (the body is {{"inputs": {{...}}, "no_cache": false}})'
        ) from None


def parse_scheduled_run(event: Mapping[str, Any]) -> ScheduledRun:
    """The Scheduler target input; a malformed one is a `RequestError`."""
    try:
        return ScheduledRun.model_validate(dict(event))
    except ValidationError as error:
        raise InvalidRequestError(f"schedule input: {_problems(error)}") from None


def caller_id(authorizer: RequestContextV2Authorizer | None) -> str | None:
    """Who called the HTTP API: the JWT `sub`, the IAM principal's ARN (`userArn`; for an
    assumed role, `arn:aws:sts::<account>:assumed-role/<role>/<session>`), else its
    `callerId`, or a Lambda authorizer's `user_id`."""
    if authorizer is None:
        return None
    subject = authorizer.jwt_claim.get("sub")
    if subject:
        return str(subject)
    if authorizer.iam.user_arn or authorizer.iam.caller_id:
        return authorizer.iam.user_arn or authorizer.iam.caller_id
    found = authorizer.get_lambda.get("user_id")
    return str(found) if found else None


def require_caller(authorizer: RequestContextV2Authorizer | None) -> str:
    """`caller_id`, or a 403 when the request names nobody."""
    found = caller_id(authorizer)
    if not found:
        raise NoCallerError(
            "the request carries no caller identity: call the API with SigV4-signed (IAM) requests"
        )
    return found


# -- run ids -----------------------------------------------------------------------------------


def _run_prefix(pipeline_id: str) -> str:
    return pipeline_id[:_RUN_PREFIX_LENGTH]


def new_run_id(pipeline_id: str) -> str:
    """A fresh run id: the pipeline, a UTC timestamp and 8 random hex digits."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{_run_prefix(pipeline_id)}-{stamp}-{uuid.uuid4().hex[:8]}"


def keyed_run_id(pipeline_id: str, source: str, idempotency_key: str, owner: str | None = None) -> str:
    """The run id for an idempotency key: the same pipeline, source, owner and key give the
    same id (the owner of a stack's run is None)."""
    text = f"{source}\n{pipeline_id}\n{idempotency_key}" + ("" if owner is None else f"\n{owner}")
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"{_run_prefix(pipeline_id)}-{source[:8]}{digest[:32]}"


def execution_arn(state_machine_arn: str, run_id: str) -> str:
    """`arn:...:stateMachine:<name>` -> `arn:...:execution:<name>:<run id>`."""
    head, marker, name = state_machine_arn.rpartition(":stateMachine:")
    if not marker:
        raise OrchestratorError(f"'{state_machine_arn}' is not a state machine ARN")
    return f"{head}:execution:{name}:{run_id}"


def state_machine_arn(pipeline_id: str) -> str:
    """The ARN of a deployed pipeline's state machine, from `ORCHESTRATOR_STATE_MACHINES`."""
    found = aws_settings().state_machines.get(pipeline_id)
    if found is None:
        raise PipelineNotFoundError(f"no pipeline '{pipeline_id}' is deployed")
    return found


def _error_code(error: Exception) -> str | None:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code else None
    return None


# -- starting runs -----------------------------------------------------------------------------


def start_run(
    pipeline_id: str,
    inputs: Mapping[str, Any],
    *,
    idempotency_key: str | None = None,
    source: str = "api",
    owner: str | None = None,
    no_cache: bool = False,
    sfn_client: Any = None,
    state_machine_arn_for: Callable[[str], str] = state_machine_arn,
    sealer: Sealer | None = None,
    owners: RunOwners | None = None,
) -> StartedRun:
    """Validate the inputs and start the pipeline's state machine; see the module docstring.

    `owner` is the caller the run belongs to (its `user_id` too); None for the stack's runs
    (uploads, schedules), whose `user_id` is the source. Raises `PipelineNotFoundError` (404)
    for a pipeline that is not deployed, `InvalidRequestError` (400) for inputs that do not
    match its `input_variables` and `IdempotencyConflictError` (409) for an owner's key sent
    again with another request.
    """
    arn = state_machine_arn_for(pipeline_id)
    try:
        plan = load_plan(pipeline_id)
    except UnknownPipelineError as error:
        raise PipelineNotFoundError(str(error)) from None
    try:
        resolved = resolve_run_inputs(plan.pipeline, inputs)
    except InputError as error:
        raise InvalidRequestError(str(error)) from None
    if idempotency_key is not None:
        if not idempotency_key.strip() or len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
            raise InvalidRequestError(f"an idempotency key has 1 to {MAX_IDEMPOTENCY_KEY} characters")
        run_id = keyed_run_id(pipeline_id, source, idempotency_key, owner)
    else:
        run_id = new_run_id(pipeline_id)
    now = datetime.now(UTC)
    run: dict[str, Any] = {
        "id": run_id,
        "pipeline": pipeline_id,
        "started_at": now.isoformat(),
        "user_id": owner or source,
    }
    if owner is not None:
        run["owner"] = owner
    if no_cache:
        run["no_cache"] = True
    sealed = seal_inputs(pipeline_id, resolved, plan.pipeline.sensitive_inputs(), sealer or default_sealer())
    text = json.dumps({"inputs": sealed, "run": run, "tasks": {}})
    if len(text.encode()) > MAX_EXECUTION_INPUT:
        raise InvalidRequestError(_TOO_LARGE)
    if owner is not None:  # recorded before the execution exists: no run is ever without its owner
        request = {"pipeline": pipeline_id, "inputs": resolved, "no_cache": no_cache}
        digest = None if idempotency_key is None else request_digest(owner, idempotency_key, request)
        _claim(owners or RunOwners(), OwnedRun(run_id, pipeline_id, owner, now.timestamp(), digest))
    client = sfn_client if sfn_client is not None else aws_client("stepfunctions")
    try:
        response = client.start_execution(stateMachineArn=arn, name=run_id, input=text)
    except Exception as error:
        code = _error_code(error)
        if code == "ExecutionAlreadyExists":
            return _existing_run(client, arn, run_id, pipeline_id)
        if code == "InvalidExecutionInput":
            raise InvalidRequestError(_TOO_LARGE) from None
        raise
    return StartedRun(run_id, pipeline_id, run["started_at"], str(response["executionArn"]), created=True)


def _claim(owners: RunOwners, run: OwnedRun) -> None:
    """Record the run's owner; a key already used by this owner for another request is a 409."""
    held = owners.claim(run)
    if held is None:
        return
    if (
        held.owner != run.owner
        or held.digest is None
        or not hmac.compare_digest(held.digest, run.digest or "")
    ):
        raise IdempotencyConflictError(
            f"this Idempotency-Key already started run {held.run_id} with another request "
            "(pipeline, inputs or no_cache): send the same request to get that run, "
            "or use a new key for a new run"
        )


def resolve_run_inputs(pipeline: Any, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """`resolve_inputs` for a run started from outside (typed JSON values, never `-i` text)."""
    from orchestrator.runtime.inputs import resolve_inputs

    return resolve_inputs(pipeline, dict(inputs))


def _existing_run(client: Any, state_machine: str, run_id: str, pipeline_id: str) -> StartedRun:
    arn = execution_arn(state_machine, run_id)
    described = client.describe_execution(executionArn=arn)  # its owner is in the id's hash
    started_at = _started_at(described)
    return StartedRun(run_id, pipeline_id, started_at, arn, created=False)


def _started_at(described: Mapping[str, Any]) -> str:
    try:
        run = json.loads(described.get("input") or "{}").get("run") or {}
    except (json.JSONDecodeError, AttributeError):
        run = {}
    if isinstance(run, dict) and isinstance(run.get("started_at"), str):
        return str(run["started_at"])
    start = described.get("startDate")
    return start.isoformat() if isinstance(start, datetime) else str(start)


def start_upload_runs(
    uploads: Iterable[Upload],
    *,
    sfn_client: Any = None,
    state_machine_arn_for: Callable[[str], str] = state_machine_arn,
    sealer: Sealer | None = None,
) -> dict[str, Any]:
    """A run of every deployed pipeline whose `triggers.s3` matches each uploaded object.

    The run's inputs are `{bucket, key, size, etag}`; its id comes from bucket, key and etag,
    so a notification delivered twice starts one run. A pipeline whose inputs do not accept
    the upload is reported under `rejected` (retrying would not help).
    """
    runs: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    targets = _upload_pipelines()
    for upload in uploads:
        for pipeline_id, prefix, suffix in targets:
            if not (upload.key.startswith(prefix) and upload.key.endswith(suffix)):
                continue
            inputs = {"bucket": upload.bucket, "key": upload.key, "size": upload.size, "etag": upload.etag}
            try:
                started = start_run(
                    pipeline_id,
                    inputs,
                    idempotency_key=f"{upload.bucket}/{upload.key}#{upload.etag or ''}",
                    source="s3",
                    sfn_client=sfn_client,
                    state_machine_arn_for=state_machine_arn_for,
                    sealer=sealer,
                )
            except InvalidRequestError as error:
                rejected.append({"pipeline": pipeline_id, "key": upload.key, "error": str(error)})
                continue
            runs.append(started.as_dict())
    return {"runs": runs, "rejected": rejected}


def _upload_pipelines() -> list[tuple[str, str, str]]:
    """Deployed pipelines with an S3 trigger: (id, prefix, suffix)."""
    found: list[tuple[str, str, str]] = []
    for pipeline_id in sorted(aws_settings().state_machines):
        try:
            trigger = load_plan(pipeline_id).pipeline.triggers.s3
        except UnknownPipelineError:
            continue
        if trigger is not None:
            found.append((pipeline_id, trigger.prefix, trigger.suffix))
    return found


def start_scheduled_run(
    schedule: ScheduledRun,
    *,
    sfn_client: Any = None,
    state_machine_arn_for: Callable[[str], str] = state_machine_arn,
    sealer: Sealer | None = None,
) -> StartedRun:
    """A run with the schedule's inputs (one per `idempotency_key`, when the schedule sets it)."""
    return start_run(
        schedule.pipeline,
        schedule.inputs,
        idempotency_key=schedule.idempotency_key,
        source="schedule",
        sfn_client=sfn_client,
        state_machine_arn_for=state_machine_arn_for,
        sealer=sealer,
    )


# -- reading runs ------------------------------------------------------------------------------


def describe_run(
    run_id: str,
    *,
    caller: str | None = None,
    sfn_client: Any = None,
    state_machines: Mapping[str, str] | None = None,
    telemetry: TelemetryLog | None = None,
) -> dict[str, Any]:
    """A run's status, task statuses and outputs, read from its execution, and its telemetry
    (`runtime.telemetry`), read from the telemetry table (or `telemetry`).

    With a `caller` (the API always passes one), only a run that caller owns (`run.owner` in
    the execution input) is found: any other is `RunNotFoundError`, as a missing one is, so a
    caller cannot tell another's run from no run. Without one: the stack's view, every run.

    `status` is the execution's, lower case (`running`, `succeeded`, `failed`, `timed_out`,
    `aborted`), and `degraded` when it succeeded with a failed task. From the execution
    output (the final state) come `tasks` (each task's status), `outputs` (each task's
    output) and `result` (`$.result`, the rendered `outputs` section, when the state machine
    writes it there); a failed execution carries `error` and `cause`.
    """
    if not _RUN_ID.match(run_id):
        raise RunNotFoundError(f"no run '{run_id}'")
    machines = aws_settings().state_machines if state_machines is None else state_machines
    client = sfn_client if sfn_client is not None else aws_client("stepfunctions")
    for pipeline_id in _candidates(run_id, machines):
        try:
            described = client.describe_execution(executionArn=execution_arn(machines[pipeline_id], run_id))
        except Exception as error:
            if _error_code(error) in {"ExecutionDoesNotExist", "InvalidArn", "StateMachineDoesNotExist"}:
                continue
            raise
        if caller is not None and run_owner(described) != caller:
            continue
        view = _run_view(run_id, pipeline_id, described)
        return _with_telemetry(view, described, telemetry if telemetry is not None else _telemetry_log())
    raise RunNotFoundError(f"no run '{run_id}'")


def _telemetry_log() -> TelemetryLog | None:
    """The stack's telemetry table (None in a stack deployed before it had one)."""
    from orchestrator.settings import lambda_settings
    from orchestrator.stores.dynamodb import DynamoTelemetryLog

    table = lambda_settings().tables.get("telemetry")
    return DynamoTelemetryLog(table) if table else None


def _with_telemetry(
    view: dict[str, Any], described: Mapping[str, Any], log: TelemetryLog | None
) -> dict[str, Any]:
    """The run view with its telemetry: `duration`, `usage`, and under `telemetry` each task's
    span, inputs, attempts, children and usage, as the run document has them (docs/telemetry.md),
    costs from the prices of the deploy config."""
    from orchestrator.runtime.telemetry import parallel_children, pipeline_children, with_telemetry
    from orchestrator.settings import lambda_settings

    entries = log.query(view["run_id"]) if log is not None else []
    tasks = {name: {"status": status} for name, status in (view["tasks"] or {}).items()}
    stopped = described.get("stopDate")
    try:
        plan = load_plan(view["pipeline"])
        groups, children = parallel_children(plan.pipeline.tasks), pipeline_children(plan)
    except OrchestratorError:  # a pipeline no longer deployed: its spans from its entries alone
        groups, children = {}, {}
    document = with_telemetry(
        {
            "run_id": view["run_id"],
            "status": "running" if stopped is None else view["status"],
            "tasks": tasks,
        },
        entries,
        run_started=_timestamp(view["started_at"]),
        run_ended=stopped.timestamp() if isinstance(stopped, datetime) else None,
        pipeline_groups=children,
        groups=groups,
        prices=lambda_settings().prices,
    )
    fields = ("started_at", "ended_at", "duration", "inputs", "attempt_log", "children", "usage")
    telemetry = {
        name: {key: record[key] for key in fields if key in record}
        for name, record in document["tasks"].items()
    }
    return {
        **view,
        "engine": "stepfunctions",
        "duration": document["duration"],
        "usage": document["usage"],
        "telemetry": telemetry,
    }


def _timestamp(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def run_owner(described: Mapping[str, Any]) -> str | None:
    """The owner an execution's input names (`run.owner`); None for the stack's runs."""
    try:
        run = json.loads(described.get("input") or "{}").get("run") or {}
    except (json.JSONDecodeError, AttributeError):
        return None
    owner = run.get("owner") if isinstance(run, dict) else None
    return owner if isinstance(owner, str) and owner else None


MAX_LISTED = 100


def list_runs(
    caller: str,
    *,
    limit: int = 20,
    owners: RunOwners | None = None,
    sfn_client: Any = None,
    state_machines: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The caller's runs, newest first (at most `limit`, 1 to `MAX_LISTED`): each run's id,
    pipeline, status and times, as `describe_run` gives them."""
    if not 1 <= limit <= MAX_LISTED:
        raise InvalidRequestError(f"limit must be a whole number from 1 to {MAX_LISTED}")
    machines = aws_settings().state_machines if state_machines is None else state_machines
    client = sfn_client if sfn_client is not None else aws_client("stepfunctions")
    runs: list[dict[str, Any]] = []
    for owned in (owners or RunOwners()).runs_of(caller, limit):
        try:
            view = describe_run(owned.run_id, caller=caller, sfn_client=client, state_machines=machines)
        except RunNotFoundError:  # its execution never started, or its pipeline is gone
            continue
        runs.append({key: view[key] for key in ("run_id", "pipeline", "status", "started_at", "stopped_at")})
    return {"runs": runs}


def _candidates(run_id: str, machines: Mapping[str, str]) -> list[str]:
    """Pipelines whose run ids look like this one first (longest prefix), then the others."""
    matching = sorted((p for p in machines if run_id.startswith(_run_prefix(p) + "-")), key=len, reverse=True)
    return matching + [p for p in machines if p not in matching]


def _flatten_records(tasks: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    for name, record in tasks.items():
        if not isinstance(record, dict):
            continue
        records[name] = {key: value for key, value in record.items() if key != "children"}
        for child, child_record in (record.get("children") or {}).items():
            if isinstance(child_record, dict):
                records[child] = dict(child_record)
    return records


def _run_view(run_id: str, pipeline_id: str, described: Mapping[str, Any]) -> dict[str, Any]:
    status = _STATUSES.get(str(described.get("status")), str(described.get("status")).lower())
    view: dict[str, Any] = {
        "run_id": run_id,
        "pipeline": pipeline_id,
        "status": status,
        "started_at": _started_at(described),
        "stopped_at": described["stopDate"].isoformat() if described.get("stopDate") else None,
        "tasks": None,
        "outputs": None,
        "result": None,
        "error": None,
    }
    try:
        output = json.loads(described.get("output") or "null")
    except json.JSONDecodeError:
        output = None
    if isinstance(output, dict) and isinstance(output.get("tasks"), dict):
        tasks = task_records(output["tasks"])
        records = _flatten_records(tasks)
        view["tasks"] = {name: record.get("status") for name, record in records.items()}
        view["outputs"] = visible_outputs(tasks, {})
        view["result"] = resolve((output.get("result") or {}).get("value"))
        if status == "succeeded" and "failed" in view["tasks"].values():
            view["status"] = "degraded"
    elif output is not None:
        view["result"] = output
    if described.get("error") or described.get("cause"):
        view["error"] = {"type": described.get("error"), "message": described.get("cause")}
    return view
