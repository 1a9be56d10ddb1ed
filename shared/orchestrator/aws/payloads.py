"""Outputs too large for a state's payload live in S3 and travel as references (SPEC 12).

Step Functions allows 256 KB per state input or output. A task output whose JSON is above
`LIMIT` is written to the payload bucket (`payloads/<run>/<task>-<hash>.json`, expired by the
bucket's lifecycle rule) and replaced by `{"$payload": "s3://bucket/key"}`; whoever reads an
output (a Lambda building its scope, the document builder) resolves references first, so
templates and scripts never see them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

LIMIT = 200_000
REFERENCE_KEY = "$payload"


def _s3() -> Any:
    import boto3

    return boto3.client("s3")


def offload(value: Any, run_id: str, name: str, bucket: str | None, *, client: Any = None) -> Any:
    """`value`, or a reference to it in `bucket` when its JSON is too large to travel in the
    state (no bucket: the value as it is)."""
    text = json.dumps(value)
    if len(text.encode()) <= LIMIT or not bucket:
        return value
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    key = f"payloads/{run_id}/{name}-{digest}.json"
    (client or _s3()).put_object(Bucket=bucket, Key=key, Body=text.encode(), ContentType="application/json")
    return {REFERENCE_KEY: f"s3://{bucket}/{key}"}


def is_reference(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {REFERENCE_KEY} and isinstance(value[REFERENCE_KEY], str)


def resolve(value: Any, *, client: Any = None) -> Any:
    """`value` with every payload reference inside it replaced by what it points to."""
    if is_reference(value):
        bucket, _, key = value[REFERENCE_KEY].removeprefix("s3://").partition("/")
        body = (client or _s3()).get_object(Bucket=bucket, Key=key)["Body"].read()
        return json.loads(body)
    if isinstance(value, dict):
        if not _contains_reference(value):
            return value
        return {k: resolve(v, client=client) for k, v in value.items()}
    if isinstance(value, list):
        if not _contains_reference(value):
            return value
        return [resolve(item, client=client) for item in value]
    return value


def _contains_reference(value: Any) -> bool:
    return REFERENCE_KEY in json.dumps(value) if isinstance(value, dict | list) else False
