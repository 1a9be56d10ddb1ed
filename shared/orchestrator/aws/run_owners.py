"""Who owns each run the HTTP API starts: one `owner` record per run in the runs table.

A run started through the API belongs to its caller (the identity API Gateway's authorizer
put in the request context, `triggers.caller_id`). The trigger writes the record before it
starts the execution, with a conditional put, so a run id is claimed once:

    {run_id, record: "owner", owner, pipeline_id, started_at (epoch s), digest?, expires_at}

The `by_owner` index (`owner`, `started_at`) lists a caller's runs, newest first. The record
is the index of a caller's runs and the memory of its idempotency keys; who may *read* a run
is decided by the execution input's `run.owner`, which only the triggers write.

**Idempotency keys are per caller.** A keyed run id hashes the caller with the key
(`triggers.keyed_run_id`), so another caller's key can never name this caller's run. `digest`
is an HMAC of the request (pipeline, inputs, `no_cache`) keyed by the caller and the
idempotency key: the same caller sending the same key with another request is a conflict,
and a reader of the table learns nothing about sensitive inputs without the key.

Runs started by S3 uploads and schedules belong to the stack: they have no record here and
no `run.owner`, so no API caller reads them (operators do, with `states:DescribeExecution`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.aws.clients import aws_client
from orchestrator.errors import ConfigError
from orchestrator.settings import load_settings

OWNER_RECORD = "owner"
OWNER_INDEX = "by_owner"
RETENTION_SECONDS = 90 * 24 * 3600  # Step Functions keeps a Standard execution's history 90 days


@dataclass(frozen=True)
class OwnedRun:
    """An API run and its owner; `digest` is set for a run started with an idempotency key."""

    run_id: str
    pipeline: str
    owner: str
    started_at: float
    digest: str | None = None


def request_digest(owner: str, idempotency_key: str, request: Mapping[str, Any]) -> str:
    """HMAC-SHA256 of the request's canonical JSON, keyed by the caller and its idempotency key."""
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
    key = f"{owner}\n{idempotency_key}".encode()
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


class RunOwners:
    """The `owner` records of the runs table (`ORCHESTRATOR_RUNS_TABLE`)."""

    def __init__(self, table: str | None = None, client: Any = None) -> None:
        found = table or load_settings().tables.get("runs")
        if not found:
            raise ConfigError(
                "the HTTP API needs ORCHESTRATOR_RUNS_TABLE (the runs table) to record run owners"
            )
        self._table = found
        self._client = client if client is not None else aws_client("dynamodb")

    def claim(self, run: OwnedRun) -> OwnedRun | None:
        """Write the run's record unless its id is taken; None when written, else the record
        that holds the id."""
        item: dict[str, Any] = {
            "run_id": {"S": run.run_id},
            "record": {"S": OWNER_RECORD},
            "owner": {"S": run.owner},
            "pipeline_id": {"S": run.pipeline},
            "started_at": {"N": repr(run.started_at)},
            "expires_at": {"N": str(int(run.started_at) + RETENTION_SECONDS)},
        }
        if run.digest is not None:
            item["digest"] = {"S": run.digest}
        try:
            self._client.put_item(
                TableName=self._table,
                Item=item,
                ConditionExpression="attribute_not_exists(run_id)",
            )
        except Exception as error:
            if (
                getattr(error, "response", {}).get("Error", {}).get("Code")
                != "ConditionalCheckFailedException"
            ):
                raise
            return self.get(run.run_id)
        return None

    def get(self, run_id: str) -> OwnedRun | None:
        """The record of a run, if the API started it."""
        item = self._client.get_item(
            TableName=self._table,
            Key={"run_id": {"S": run_id}, "record": {"S": OWNER_RECORD}},
            ConsistentRead=True,
        ).get("Item")
        return None if item is None else _owned_run(item)

    def runs_of(self, owner: str, limit: int) -> list[OwnedRun]:
        """The caller's runs, newest first, at most `limit`."""
        page = self._client.query(
            TableName=self._table,
            IndexName=OWNER_INDEX,
            KeyConditionExpression="#owner = :owner",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={":owner": {"S": owner}},
            ScanIndexForward=False,
            Limit=limit,
        )
        return [_owned_run(item) for item in page["Items"]]


def _owned_run(item: Mapping[str, Any]) -> OwnedRun:
    return OwnedRun(
        run_id=item["run_id"]["S"],
        pipeline=item["pipeline_id"]["S"],
        owner=item["owner"]["S"],
        started_at=float(item["started_at"]["N"]),
        digest=item["digest"]["S"] if "digest" in item else None,
    )
