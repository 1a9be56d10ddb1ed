"""Values too large for the execution state live in S3 and travel as references (SPEC 12, issue 12).

Step Functions allows 256 KiB per state input or output, and fails the run with
`States.DataLimitExceeded` (which no Catch handles) past it. Every value a function puts into
the state (a task's output, a rendered `fallback_value`, loop items, a while_loop's state, a
child pipeline's inputs, the `outputs` section) goes through `offload` with its *inline
limit*: the bytes that value may take in the state (`state_budget.inline_limit`, the state's
budget shared among every record that can be in one state at once). Above it, the value is
written to the payload bucket (`payloads/<run>/<name>-<hash>.json`, expired by the bucket's
lifecycle rule) and replaced by `{"$payload": "s3://bucket/key"}`; a value no bigger than its
reference always stays. Whoever reads a value (a function building its scope, the document
builder, the API's run view) resolves references first (`resolve`), so templates, scripts
and run documents never see them.

**Write-once.** A payload's key names its content (the hash in `<name>-<hash>.json`); it is
created with `If-None-Match: *` and the functions' IAM allows no other `PutObject` (and no
delete), so an object, once written, is never replaced, even by a user script holding the
function's credentials. Reading checks the content against the hash in its key, so an object
planted under a key before its value was written is refused, never used.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from orchestrator.errors import OrchestratorError

LIMIT = 200_000
"""The most any one value may take in the state (and what old payloads, without a budget, get)."""
REFERENCE_KEY = "$payload"
DIGEST_LENGTH = 16


def _s3() -> Any:
    import boto3

    return boto3.client("s3")


def size(value: Any) -> int:
    """The bytes `value` takes in the state: its JSON as Step Functions (and moto) measure it."""
    return len(json.dumps(value).encode())


def _key(run_id: str, name: str, digest: str) -> str:
    return f"payloads/{run_id}/{name}-{digest}.json"


def reference_size(run_id: str, name: str, bucket: str) -> int:
    """The bytes a reference to a value of `name` in this run takes in the state."""
    return size({REFERENCE_KEY: f"s3://{bucket}/{_key(run_id, name, '0' * DIGEST_LENGTH)}"})


def offload(
    value: Any, run_id: str, name: str, bucket: str | None, *, limit: int = LIMIT, client: Any = None
) -> Any:
    """`value`, or a reference to it in `bucket` when its JSON takes more than `limit` bytes
    (never more than `LIMIT`) and more than the reference would (no bucket: the value as it is)."""
    if not bucket:
        return value
    text = json.dumps(value)
    length = len(text.encode())
    if length <= min(limit, LIMIT) or length <= reference_size(run_id, name, bucket):
        return value
    return {REFERENCE_KEY: f"s3://{bucket}/{_put(text, run_id, name, bucket, client)}"}


def store(value: Any, run_id: str, name: str, bucket: str, *, client: Any = None) -> str:
    """Write `value`'s JSON to `bucket` (`payloads/<run>/<name>-<hash>.json`), whatever its size;
    its key."""
    return _put(json.dumps(value), run_id, name, bucket, client)


def _put(text: str, run_id: str, name: str, bucket: str, client: Any) -> str:
    digest = hashlib.sha256(text.encode()).hexdigest()[:DIGEST_LENGTH]
    key = _key(run_id, name, digest)
    try:
        (client or _s3()).put_object(
            Bucket=bucket, Key=key, Body=text.encode(), ContentType="application/json", IfNoneMatch="*"
        )
    except Exception as error:  # already there: the same content (`load` checks it)
        code = getattr(error, "response", {}).get("Error", {}).get("Code")
        if code not in {"PreconditionFailed", "ConditionalRequestConflict"}:
            raise
    return key


_DIGEST_NAME = re.compile(rf"^payloads/.+-([0-9a-f]{{{DIGEST_LENGTH}}})\.json$")


def load(bucket: str, key: str, *, client: Any = None) -> Any:
    """The JSON value of the object at `key` in `bucket`; one whose key names a digest must hold
    the content of that digest."""
    body = (client or _s3()).get_object(Bucket=bucket, Key=key)["Body"].read()
    named = _DIGEST_NAME.match(key)
    if named and hashlib.sha256(body).hexdigest()[:DIGEST_LENGTH] != named.group(1):
        raise OrchestratorError(f"s3://{bucket}/{key} does not hold the value written there: it was altered")
    return json.loads(body)


def offload_members(
    values: Mapping[str, Any],
    run_id: str,
    name: str,
    bucket: str | None,
    *,
    limit: int = LIMIT,
    client: Any = None,
) -> dict[str, Any]:
    """`values` (a mapping: a child pipeline's inputs) taking at most about `limit` bytes in the
    state: its largest members go to S3 (`offload`, each a reference) until the rest fits."""
    kept = dict(values)
    sizes = sorted(((size(value), key) for key, value in kept.items()), reverse=True)
    total = size(kept)
    for length, key in sizes:
        if total <= limit:
            break
        moved = offload(kept[key], run_id, f"{name}.{key}", bucket, limit=0, client=client)
        if moved is not kept[key]:
            total -= length - size(moved)
            kept[key] = moved
    return kept


def is_reference(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {REFERENCE_KEY} and isinstance(value[REFERENCE_KEY], str)


def resolve(value: Any, *, client: Any = None) -> Any:
    """`value` with every payload reference inside it replaced by what it points to, and any
    inside that (a distributed for_loop's output, one reference, holds its iterations' values
    as the iterations left them: references above their limit)."""
    if is_reference(value):
        bucket, _, key = value[REFERENCE_KEY].removeprefix("s3://").partition("/")
        return resolve(load(bucket, key, client=client), client=client)
    if isinstance(value, dict):
        if not _contains_reference(value):
            return value
        return {k: resolve(v, client=client) for k, v in value.items()}
    if isinstance(value, list):
        if not _contains_reference(value):
            return value
        return [resolve(item, client=client) for item in value]
    return value


class Snapshot:
    """Objects of the payload bucket read once, answering `get_object` as S3 does: references
    resolve with it (`resolve(value, client=snapshot)`) once the bucket is gone (an emulation)."""

    def __init__(self, bucket: str, objects: dict[str, bytes]) -> None:
        self.bucket = bucket
        self.objects = objects

    @classmethod
    def read(cls, bucket: str, prefix: str, *, client: Any = None) -> Snapshot:
        """Every object of `bucket` under `prefix` (a run's: `payloads/<run id>`)."""
        client = client or _s3()
        objects: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for found in page.get("Contents", []):
                objects[found["Key"]] = client.get_object(Bucket=bucket, Key=found["Key"])["Body"].read()
        return cls(bucket, objects)

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        """`{"Body": ...}` of the object at `Key` (S3's own argument names)."""
        import io

        if Bucket != self.bucket or Key not in self.objects:
            raise KeyError(f"s3://{Bucket}/{Key} is not in the snapshot")
        return {"Body": io.BytesIO(self.objects[Key])}


def _contains_reference(value: Any) -> bool:
    return REFERENCE_KEY in json.dumps(value) if isinstance(value, dict | list) else False
