"""DynamoDB stores: state with compare-and-set on a version attribute, cache, audit, runs and
run telemetry.

Item shapes follow the tables in `infra/template.base.yaml`: every table has a TTL attribute
`expires_at` (epoch seconds). DynamoDB deletes expired items lazily, so reads also check it.
boto3 is imported lazily and a client can be injected (tests pass moto's).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.errors import TaskError
from orchestrator.stores.base import StateWrite, Versioned, iso_time, summary

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
else:
    DynamoDBClient = Any


def _client(client: DynamoDBClient | None) -> DynamoDBClient:
    if client is not None:
        return client
    import boto3

    return boto3.client("dynamodb")


def _expiry(ttl: float | None) -> dict[str, Any]:
    return {} if ttl is None else {"expires_at": {"N": str(int(time.time() + ttl) + 1)}}


def _live(item: dict[str, Any]) -> bool:
    expires = item.get("expires_at")
    return expires is None or float(expires["N"]) > time.time()


class DynamoStateStore:
    """State items `{namespace, key, value, version, expires_at}`; writes are conditional puts."""

    def __init__(self, table: str, client: DynamoDBClient | None = None) -> None:
        self._table = table
        self._client = _client(client)

    def read(self, namespace: str, key: str) -> Versioned:
        item = self._client.get_item(
            TableName=self._table,
            Key={"namespace": {"S": namespace}, "key": {"S": key}},
            ConsistentRead=True,
        ).get("Item")
        if item is None:
            return Versioned(None, 0)
        version = int(item["version"]["N"])
        if not _live(item):
            return Versioned(None, version)
        return Versioned(json.loads(item["value"]["S"]), version)

    def _put(
        self, namespace: str, key: str, value: Any, version: int, ttl: float | None, condition: dict[str, Any]
    ) -> bool:
        from botocore.exceptions import ClientError

        item = _state_item(namespace, key, value, version, ttl)
        try:
            self._client.put_item(TableName=self._table, Item=item, **condition)
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def write(self, namespace: str, key: str, value: Any, *, ttl: float | None = None) -> int:
        while True:
            current = self.read(namespace, key).version
            written = self.compare_and_set(namespace, key, value, current, ttl=ttl)
            if written is not None:
                return written

    def compare_and_set(
        self, namespace: str, key: str, value: Any, expected_version: int, *, ttl: float | None = None
    ) -> int | None:
        new_version = expected_version + 1
        condition = _version_condition(expected_version)
        return new_version if self._put(namespace, key, value, new_version, ttl, condition) else None

    def commit(self, writes: Sequence[StateWrite]) -> bool:
        """One `TransactWriteItems` of conditional puts (at most `TRANSACTION_LIMIT` keys); an
        unconditional write is conditioned on the version just read, and tried again if only
        such writes (or a concurrent transaction) made it fail."""
        from botocore.exceptions import ClientError

        if len(writes) == 1:  # one conditional put: atomic by itself, half a transaction's cost
            (write,) = writes
            if write.expected_version is None:
                self.write(write.namespace, write.key, write.value, ttl=write.ttl)
                return True
            version = self.compare_and_set(
                write.namespace, write.key, write.value, write.expected_version, ttl=write.ttl
            )
            return version is not None
        if len(writes) > TRANSACTION_LIMIT:
            raise TaskError(
                "StateConflict",
                f"one attempt wrote {len(writes)} state keys; DynamoDB commits at most "
                f"{TRANSACTION_LIMIT} together: write fewer keys (a mapping under one key)",
            )
        while True:
            expected = [
                self.read(w.namespace, w.key).version if w.expected_version is None else w.expected_version
                for w in writes
            ]
            items: list[Any] = [
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": _state_item(w.namespace, w.key, w.value, version + 1, w.ttl),
                        **_version_condition(version),
                    }
                }
                for w, version in zip(writes, expected, strict=True)
            ]
            try:
                self._client.transact_write_items(TransactItems=items)
            except ClientError as error:
                if error.response["Error"]["Code"] != "TransactionCanceledException":
                    raise
                for write in writes:
                    known = write.expected_version
                    if known is not None and self.read(write.namespace, write.key).version != known:
                        return False
                continue
            return True


TRANSACTION_LIMIT = 100
"""The most items one DynamoDB transaction may write."""


def _state_item(namespace: str, key: str, value: Any, version: int, ttl: float | None) -> dict[str, Any]:
    return {
        "namespace": {"S": namespace},
        "key": {"S": key},
        "value": {"S": json.dumps(value)},
        "version": {"N": str(version)},
        **_expiry(ttl),
    }


def _version_condition(expected_version: int) -> dict[str, Any]:
    """The condition of a put that expects `expected_version` (0: no item)."""
    if expected_version == 0:
        return {
            "ConditionExpression": "attribute_not_exists(#k)",
            "ExpressionAttributeNames": {"#k": "key"},
        }
    return {
        "ConditionExpression": "version = :expected",
        "ExpressionAttributeValues": {":expected": {"N": str(expected_version)}},
    }


class DynamoCacheStore:
    """Cache items `{key, value, expires_at}`."""

    def __init__(self, table: str, client: DynamoDBClient | None = None) -> None:
        self._table = table
        self._client = _client(client)

    def get(self, key: str) -> tuple[bool, Any]:
        item = self._client.get_item(TableName=self._table, Key={"key": {"S": key}}).get("Item")
        if item is None or not _live(item):
            return False, None
        return True, json.loads(item["value"]["S"])

    def put(self, key: str, value: Any, ttl: float | None) -> None:
        item = {"key": {"S": key}, "value": {"S": json.dumps(value)}, **_expiry(ttl)}
        self._client.put_item(TableName=self._table, Item=item)


class DynamoAuditLog:
    """Audit items `{execution_id, entry_id, pipeline_id, entry}`, queryable per run or pipeline.

    Append-only: the writers' IAM allows only `PutItem` of these four attributes, returning no
    old values (`infra/template.base.yaml`), and an entry's id is its time and a random UUID4
    (122 bits) that only its writer ever holds, so no writer can name an existing entry to
    overwrite it; the condition below keeps an honest writer from doing so by chance."""

    def __init__(self, table: str, client: DynamoDBClient | None = None) -> None:
        self._table = table
        self._client = _client(client)

    def append(self, entry: dict[str, Any]) -> None:
        entry_id = f"{time.time():017.6f}#{uuid.uuid4().hex}"
        self._client.put_item(
            TableName=self._table,
            Item={
                "execution_id": {"S": str(entry.get("execution_id", "-"))},
                "entry_id": {"S": entry_id},
                "pipeline_id": {"S": str(entry.get("pipeline_id", "-"))},
                "entry": {"S": json.dumps(entry)},
            },
            ConditionExpression="attribute_not_exists(entry_id)",
        )

    def query(self, *, pipeline: str | None = None, run: str | None = None) -> list[dict[str, Any]]:
        if run is not None:
            items = self._query(
                {
                    "KeyConditionExpression": "execution_id = :v",
                    "ExpressionAttributeValues": {":v": {"S": run}},
                }
            )
        elif pipeline is not None:
            items = self._query(
                {
                    "IndexName": "by_pipeline",
                    "KeyConditionExpression": "pipeline_id = :v",
                    "ExpressionAttributeValues": {":v": {"S": pipeline}},
                }
            )
        else:
            items = self._scan()
        entries = [json.loads(item["entry"]["S"]) for item in sorted(items, key=lambda i: i["entry_id"]["S"])]
        return [e for e in entries if pipeline is None or e.get("pipeline_id") == pipeline]

    def _query(self, arguments: dict[str, Any]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        paginator = self._client.get_paginator("query")
        for page in paginator.paginate(TableName=self._table, **arguments):
            items += page["Items"]
        return items

    def _scan(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for page in self._client.get_paginator("scan").paginate(TableName=self._table):
            items += page["Items"]
        return items


class DynamoTelemetryLog:
    """Telemetry items `{run_id, entry_id, entry}` (`runtime.telemetry`), queried per run.

    The task functions may only `PutItem` these three attributes, returning no old values; the
    API function may only `Query` (`infra/template.base.yaml`). An attempt is two puts: when it
    starts and, replacing it, when it ends."""

    def __init__(self, table: str, client: DynamoDBClient | None = None) -> None:
        self._table = table
        self._client = _client(client)

    def put(self, run_id: str, entry_id: str, entry: dict[str, Any]) -> None:
        self._client.put_item(
            TableName=self._table,
            Item={
                "run_id": {"S": run_id},
                "entry_id": {"S": entry_id},
                "entry": {"S": json.dumps(entry)},
            },
        )

    def query(self, run_id: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for page in self._client.get_paginator("query").paginate(
            TableName=self._table,
            KeyConditionExpression="run_id = :r",
            ExpressionAttributeValues={":r": {"S": run_id}},
        ):
            entries += [json.loads(item["entry"]["S"]) for item in page["Items"]]
        return entries


class DynamoRunStore:
    """Run items keyed `{run_id, record}`: `document`, `resume`, and `task#<name>` checkpoints."""

    def __init__(self, table: str, client: DynamoDBClient | None = None) -> None:
        self._table = table
        self._client = _client(client)

    def save(self, document: dict[str, Any], resume: dict[str, Any] | None = None) -> None:
        now = str(time.time())
        self._client.put_item(
            TableName=self._table,
            Item={
                "run_id": {"S": document["run_id"]},
                "record": {"S": "document"},
                "pipeline": {"S": document["pipeline"]},
                "started_at": {"N": now},
                "status": {"S": document["status"]},
                "document": {"S": json.dumps(document)},
            },
        )
        if resume is not None:
            self._client.put_item(
                TableName=self._table,
                Item={
                    "run_id": {"S": document["run_id"]},
                    "record": {"S": "resume"},
                    "document": {"S": json.dumps(resume)},
                },
            )

    def load(self, run_id: str) -> dict[str, Any] | None:
        item = self._client.get_item(
            TableName=self._table, Key={"run_id": {"S": run_id}, "record": {"S": "document"}}
        ).get("Item")
        return None if item is None else dict(json.loads(item["document"]["S"]))

    def list(
        self,
        *,
        pipeline: str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        if pipeline is not None and status is None:
            page = self._client.query(
                TableName=self._table,
                IndexName="by_pipeline",
                KeyConditionExpression="pipeline = :p",
                ExpressionAttributeValues={":p": {"S": pipeline}},
                ScanIndexForward=False,
                Limit=offset + limit,
            )
            items = page["Items"]
        else:
            items = [
                i for i in self._client.scan(TableName=self._table)["Items"] if i["record"]["S"] == "document"
            ]
            items.sort(key=lambda i: float(i["started_at"]["N"]), reverse=True)
        found = [
            summary(json.loads(i["document"]["S"]), iso_time(float(i["started_at"]["N"]))) for i in items
        ]
        found = [s for s in found if pipeline in (None, s["pipeline"]) and status in (None, s["status"])]
        return found[offset : offset + limit]

    def checkpoint(self, run_id: str, task: str, outcome: dict[str, Any]) -> None:
        self._client.put_item(
            TableName=self._table,
            Item={
                "run_id": {"S": run_id},
                "record": {"S": f"task#{task}"},
                "document": {"S": json.dumps(outcome)},
            },
        )

    def resume_point(self, run_id: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]] | None:
        items = self._client.query(
            TableName=self._table,
            KeyConditionExpression="run_id = :r",
            ExpressionAttributeValues={":r": {"S": run_id}},
        )["Items"]
        records = {i["record"]["S"]: json.loads(i["document"]["S"]) for i in items}
        if "resume" not in records:
            return None
        finished = {
            key.removeprefix("task#"): value for key, value in records.items() if key.startswith("task#")
        }
        return records["resume"], finished
