"""Where moto's Step Functions reads a definition differently from AWS, put right while emulating.

- **A definite path through an array index** (`$[0].status`, `$.a[1].b`): AWS gives the one value
  it names, as it does for any path made only of names and literal indices. moto wraps it in a
  list whenever the value's parent was reached by an index (its fix for filter queries, moto
  issue 7825), so a `ResultSelector` reading a Parallel's branch results field by field would
  see `["succeeded"]` where AWS sees `"succeeded"`. Paths with filters, wildcards or slices keep
  moto's reading.
- **A Distributed Map's `ResultWriter`** writes its results to S3 as AWS does (moto writes an
  empty manifest): `result_writer_files`.
- **A conditional write of DynamoDB is atomic** as on AWS: moto checks a condition and then
  writes with nothing between them held, so two threads (the emulated Lambdas, or a test's
  writers) could both pass the same compare-and-set: `atomic_dynamodb_writes`.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

DEFINITE_PATH = re.compile(r"\$(?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*")
"""A path naming one value: `$`, then `.name` and `[index]` steps only."""

_READERS = (
    "moto.stepfunctions.parser.asl.component.common.string.string_expression",
    "moto.stepfunctions.parser.asl.component.intrinsic.argument.argument",
    "moto.stepfunctions.parser.asl.eval.states",
)
"""The modules of moto that read values with `json_path.extract_json`."""


@contextmanager
def aws_json_paths() -> Iterator[None]:
    """Inside: moto reads definite paths through indices as AWS does (see the module's docstring)."""
    import importlib

    from jsonpath_ng.ext.parser import parse
    from moto.stepfunctions.parser.asl.utils import json_path

    original = json_path.extract_json

    def extract_json(path: str, data: Any) -> Any:
        if DEFINITE_PATH.fullmatch(path) and "[" in path:
            matches = parse(path).find(data)
            if len(matches) == 1:
                return matches[0].value
        return original(path, data)

    modules = [importlib.import_module(name) for name in _READERS]
    saved = [getattr(module, "extract_json") for module in modules]  # noqa: B009 (a module's global)
    for module in modules:
        setattr(module, "extract_json", extract_json)  # noqa: B010
    try:
        yield
    finally:
        for module, function in zip(modules, saved, strict=True):
            setattr(module, "extract_json", function)  # noqa: B010


@contextmanager
def result_writer_files() -> Iterator[None]:
    """Inside: a Distributed Map's `ResultWriter` writes what AWS writes. moto writes only the
    manifest, with no result files listed; AWS writes the child executions' results too, in
    files per status (`<prefix>/<map run>/SUCCEEDED_0.json`, a JSON array of entries with each
    execution's `Status` and its `Output` as JSON text), listed in the manifest with their
    sizes. Each map run gets a folder of its own (moto finds the map run by taking the last one
    started, which may be another Map's when two run at once). AWS promises no order in a result
    file: the emulator writes the last iteration first, so nothing may rely on one."""
    import datetime
    import json
    import uuid

    from moto.stepfunctions.parser.asl.component.state.exec.state_map.result_writer.resource_eval import (
        resource_eval_s3,
    )

    evaluator = resource_eval_s3.ResourceEvalS3

    def put_object(env: Any, resource_runtime_part: Any, state_credentials: Any) -> None:
        parameters = env.stack.pop()
        results = env.stack.pop()
        s3 = evaluator._get_s3_client(
            resource_runtime_part=resource_runtime_part, state_credentials=state_credentials
        )
        runs = env.map_run_record_pool_manager.get_all()
        map_run_arn = runs[-1].map_run_arn if runs else "arn:aws:states:::mapRun:emulated"
        prefix = str(parameters.get("Prefix") or "")
        folder = f"{prefix.rstrip('/')}/{uuid.uuid4()}" if prefix else str(uuid.uuid4())
        now = datetime.datetime.now(datetime.UTC).isoformat()
        files: dict[str, list[dict[str, Any]]] = {"FAILED": [], "PENDING": [], "SUCCEEDED": []}
        entries: dict[str, list[dict[str, Any]]] = {"FAILED": [], "SUCCEEDED": []}
        for index, output in reversed(list(enumerate(results or []))):
            status = "FAILED" if output is None else "SUCCEEDED"  # (moto keeps no failed output)
            entry: dict[str, Any] = {
                "ExecutionArn": f"{map_run_arn}:{index}",
                "InputDetails": {"Included": False},
                "Name": str(index),
                "RedriveCount": 0,
                "RedriveStatus": "NOT_REDRIVABLE",
                "StartDate": now,
                "Status": status,
                "StopDate": now,
            }
            if output is not None:
                entry |= {"Output": json.dumps(output), "OutputDetails": {"Included": True}}
            entries[status].append(entry)
        for status, found in entries.items():
            if found:
                body = json.dumps(found).encode()
                key = f"{folder}/{status}_0.json"
                s3.put_object(Bucket=parameters["Bucket"], Key=key, Body=body)
                files[status].append({"Key": key, "Size": len(body)})
        manifest = {"DestinationBucket": parameters["Bucket"], "MapRunArn": map_run_arn, "ResultFiles": files}
        key = f"{folder}/manifest.json"
        s3.put_object(Bucket=parameters["Bucket"], Key=key, Body=json.dumps(manifest).encode())
        env.stack.append(
            {"MapRunArn": map_run_arn, "ResultWriterDetails": {"Bucket": parameters["Bucket"], "Key": key}}
        )

    saved = evaluator.__dict__["_handle_put_object"]
    evaluator._handle_put_object = staticmethod(put_object)  # type: ignore[method-assign]
    try:
        yield
    finally:
        evaluator._handle_put_object = saved  # type: ignore[method-assign]


_DYNAMODB_WRITES = ("put_item", "update_item", "delete_item", "transact_write_items")
"""The methods of moto's DynamoDB backend that check a condition before they write."""


@contextmanager
def atomic_dynamodb_writes() -> Iterator[None]:
    """Inside: each conditional write of moto's DynamoDB (its check and its write) holds one
    lock, so compare-and-sets from many threads count exactly, as DynamoDB's do."""
    from moto.dynamodb.models import DynamoDBBackend

    lock = threading.RLock()
    saved = {name: getattr(DynamoDBBackend, name) for name in _DYNAMODB_WRITES}

    def holding(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def held(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return method(*args, **kwargs)

        return held

    for name, method in saved.items():
        setattr(DynamoDBBackend, name, holding(method))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(DynamoDBBackend, name, method)
