"""A task sandboxed for its resource limits reaches state, caches and secrets on both engines.

On `--engine stepfunctions` the sandbox's child process is outside moto's in-process mock: the
emulator gives it an endpoint that hands its requests to the same mock, under the same lock as
the emulation's own requests (`aws.emulator._ServiceEndpoint`), so a limited task behaves there
as on the embedded engine and on AWS.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import CliResult, agreed_tasks
from orchestrator.aws.emulator import BUCKET, TABLE_ENV, emulated_aws
from orchestrator.runtime import sandbox

pytestmark = pytest.mark.slow
Cli = Callable[..., CliResult]
Write = Callable[..., Path]

SECRET = "Sup3r-S3cret-Value"
ENDPOINT_THREAD = "emulated-aws-endpoint"

STATEFUL = """
name: limited memory
state_management: {persistence: true}
tasks:
  - name: remember
    type: python_task
    resource_limits: {memory_limit: 512MB}
    script: |
      runs = context.update_persistent_state("runs", lambda n: n + 1, 0)
      before = context.get_shared_state("last_run")
      context.set_shared_state("last_run", runs)
      token = context.get_secret("api_token")
      cached = context.get_cache("greeting")
      context.set_cache("greeting", f"hello from run {runs}")
      context.log_audit_event({"action": "remembered", "runs": runs})
      return {"runs": runs, "before": before, "cached": cached, "token": token, "length": len(token)}
  - name: read_back
    type: python_task
    depends_on: [remember]
    script: |
      return {"runs": context.get_persistent_state("runs"), "greeting": context.get_cache("greeting")}
"""


def comparable(document: dict[str, Any]) -> dict[str, Any]:
    found = {key: document[key] for key in ("status", "outputs", "result", "error")}
    return {**found, "tasks": agreed_tasks(document)}


def endpoint_running() -> bool:
    return any(thread.name == ENDPOINT_THREAD for thread in threading.enumerate())


def test_a_limited_task_keeps_state_reads_secrets_and_caches_alike_on_both_engines(
    write_pipeline: Write, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a task under a memory limit (so in the sandbox's child process) that updates
    # persistent and shared state, reads a secret and the cache and writes them, and a task
    # in process after it that reads what it wrote
    monkeypatch.setenv("ORCHESTRATOR_SECRET_API_TOKEN", SECRET)
    path = write_pipeline(STATEFUL)
    documents: dict[str, list[dict[str, Any]]] = {}
    for engine in ("local", "stepfunctions"):
        # WHEN it runs twice on each engine, each engine with a state folder of its own
        monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path / engine))
        for _ in range(2):
            result = cli("run", path, "--json", "--engine", engine)
            assert result.code == 0, f"{engine}: {result.stdout}{result.stderr}"
            assert SECRET not in result.stdout + result.stderr
            documents.setdefault(engine, []).append(result.document())
    # THEN both engines give the same run documents
    for local, remote in zip(documents["local"], documents["stepfunctions"], strict=True):
        assert comparable(remote) == comparable(local)
    first, second = documents["stepfunctions"]
    # the first run: nothing there before; the secret is read and redacted
    assert first["outputs"]["remember"] == {
        "runs": 1,
        "before": None,
        "cached": None,
        "token": "***",
        "length": len(SECRET),
    }
    # the task after it, in process, reads what the child process wrote
    assert first["outputs"]["read_back"] == {"runs": 1, "greeting": "hello from run 1"}
    # AND the second run on the same state folder reads the state and cache the first left
    assert second["outputs"]["remember"] == {
        "runs": 2,
        "before": 1,
        "cached": "hello from run 1",
        "token": "***",
        "length": len(SECRET),
    }
    assert second["outputs"]["read_back"] == {"runs": 2, "greeting": "hello from run 2"}
    # the emulated account kept the child's writes (state, cache, audit) in its tables
    saved = json.loads((tmp_path / "stepfunctions" / "emulated-aws" / "tables.json").read_text("utf-8"))
    audited = [row for row in saved["tables"]["AuditTable"] if "remembered" in json.dumps(row)]
    assert len(audited) == 2


CHILD_REQUESTS = """
import io, json, os, sys
import boto3

bucket, table = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3")
body = os.urandom(3 * 1024 * 1024)
s3.put_object(Bucket=bucket, Key="payloads/run/a b+c.json", Body=body)
s3.upload_fileobj(io.BytesIO(b"uploaded"), bucket, "payloads/run/small.json")
try:
    s3.get_object(Bucket=bucket, Key="payloads/run/missing.json")
    missing = None
except s3.exceptions.NoSuchKey:
    missing = "NoSuchKey"
boto3.client("dynamodb").put_item(
    TableName=table, Item={"namespace": {"S": "child"}, "key": {"S": "k"}, "value": {"N": "7"}}
)
print(json.dumps({
    "read": s3.get_object(Bucket=bucket, Key="payloads/run/a b+c.json")["Body"].read() == body,
    "size": s3.head_object(Bucket=bucket, Key="payloads/run/a b+c.json")["ContentLength"],
    "missing": missing,
    "secret": boto3.client("secretsmanager").get_secret_value(SecretId="orchestrator/probe_token")[
        "SecretString"
    ],
    "sealed": boto3.client("kms").encrypt(KeyId=os.environ["ORCHESTRATOR_KMS_KEY_ID"], Plaintext=b"x")[
        "CiphertextBlob"
    ].hex(),
}))
"""


def test_a_child_process_reaches_every_emulated_service_while_emulating_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3

    monkeypatch.setenv("ORCHESTRATOR_SECRET_PROBE_TOKEN", SECRET)
    # an endpoint of the user's own (LocalStack...) takes no request meant for the emulation
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:9")
    with emulated_aws():
        # the endpoint starts with the first sandboxed child, not with the emulation
        assert not endpoint_running()
        environment = sandbox._child_environment()
        assert endpoint_running()
        assert environment["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
        assert "AWS_ENDPOINT_URL_DYNAMODB" not in environment
        table = environment[TABLE_ENV["StateTable"]]
        # WHEN a child process uses S3, DynamoDB, Secrets Manager and KMS with that environment
        child = subprocess.run(
            [sys.executable, "-c", CHILD_REQUESTS, BUCKET, table],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert child.returncode == 0, child.stderr
        answers = json.loads(child.stdout)
        # THEN it was answered by the emulated account this process sees
        assert answers["read"] is True and answers["size"] == 3 * 1024 * 1024
        assert answers["missing"] == "NoSuchKey" and answers["secret"] == SECRET
        s3 = boto3.client("s3")
        assert s3.get_object(Bucket=BUCKET, Key="payloads/run/small.json")["Body"].read() == b"uploaded"
        found = boto3.client("dynamodb").get_item(
            TableName=table, Key={"namespace": {"S": "child"}, "key": {"S": "k"}}
        )
        assert found["Item"]["value"] == {"N": "7"}
        opened = boto3.client("kms").decrypt(CiphertextBlob=bytes.fromhex(answers["sealed"]))
        assert opened["Plaintext"] == b"x"
        # AND a request that is not signed for a service is refused, not guessed
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(environment["AWS_ENDPOINT_URL"] + "/", timeout=10)
        refused.value.close()
        assert refused.value.code == 403
    # once the emulation ends, the endpoint is gone and children get the environment as it is
    assert not endpoint_running()
    assert sandbox._child_environment()["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"


CHILD_INCREMENTS = """
import sys
import boto3

table, times = sys.argv[1], int(sys.argv[2])
client = boto3.client("dynamodb")
key = {"namespace": {"S": "race"}, "key": {"S": "hits"}}
done = 0
while done < times:
    value = int(client.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]["value"]["N"])
    try:
        client.put_item(
            TableName=table,
            Item={**key, "value": {"N": str(value + 1)}},
            ConditionExpression="#v = :seen",
            ExpressionAttributeNames={"#v": "value"},
            ExpressionAttributeValues={":seen": {"N": str(value)}},
        )
    except client.exceptions.ConditionalCheckFailedException:
        continue
    done += 1
"""


@pytest.fixture
def fast_thread_switches() -> Iterator[None]:
    """Threads switch every microsecond: a race that needs a switch at the wrong moment shows."""
    saved = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(saved)


def test_requests_from_child_processes_are_atomic_with_the_emulations_own(fast_thread_switches: None) -> None:
    """moto answers a conditional write by reading, then writing; the endpoint's requests take
    the emulation's lock, so compare-and-set writes from child processes and from this process
    at once never both succeed: no update is lost."""
    import boto3

    children, threads, times = 6, 2, 30
    with emulated_aws():
        table = sandbox._child_environment()[TABLE_ENV["StateTable"]]
        client = boto3.client("dynamodb")
        key = {"namespace": {"S": "race"}, "key": {"S": "hits"}}
        client.put_item(TableName=table, Item={**key, "value": {"N": "0"}})

        def add(count: int) -> None:
            done = 0
            while done < count:
                found = client.get_item(TableName=table, Key=key, ConsistentRead=True)
                value = int(found["Item"]["value"]["N"])
                try:
                    client.put_item(
                        TableName=table,
                        Item={**key, "value": {"N": str(value + 1)}},
                        ConditionExpression="#v = :seen",
                        ExpressionAttributeNames={"#v": "value"},
                        ExpressionAttributeValues={":seen": {"N": str(value)}},
                    )
                except client.exceptions.ConditionalCheckFailedException:
                    continue
                done += 1

        processes = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD_INCREMENTS, table, str(times)], env=sandbox._child_environment()
            )
            for _ in range(children)
        ]
        workers = [threading.Thread(target=add, args=(times,)) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert [process.wait(timeout=300) for process in processes] == [0] * children
        final = client.get_item(TableName=table, Key=key)["Item"]["value"]["N"]
    assert int(final) == (children + threads) * times
