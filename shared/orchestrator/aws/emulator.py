"""`--engine stepfunctions`: the compiled state machine on moto's Step Functions emulator.

Inside `mock_aws` this creates what `template.yaml` deploys (the DynamoDB tables, read from
the template itself so their schema cannot drift; the payload bucket; a KMS key; the secrets
this machine knows; one Lambda function per task type and the dispatch function), starts the
pipeline's exact state machine and waits for it. moto cannot run Lambda code without Docker,
so each invocation is handed, in process, to the project's own handler in `functions/`.

What a user sees is what the tasks print and the run's outcome, as with the embedded engine,
not what AWS would keep for the operator: what the functions write to stdout (Powertools'
JSON logs, EMF metrics) would go to CloudWatch Logs and is dropped, and moto's own logging
(its evaluation errors print whole state definitions) is silenced while emulating.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO
from unittest import mock

import yaml

from orchestrator.aws.asl import FUNCTION_PLACEHOLDERS, compile_pipeline
from orchestrator.aws.emulated_account import kept_in
from orchestrator.errors import OrchestratorError
from orchestrator.plan import Plan

REGION = "us-east-1"
ACCOUNT_ROLE = "arn:aws:iam::123456789012:role/orchestrator-emulated"
FUNCTION_FOLDERS = {
    "python_task": "python_task",
    "llm_task": "llm_task",
    "web_search_task": "web_search_task",
    "dispatch": "dispatch",
}
TABLE_ENV = {
    "StateTable": "ORCHESTRATOR_STATE_TABLE",
    "CacheTable": "ORCHESTRATOR_CACHE_TABLE",
    "AuditTable": "ORCHESTRATOR_AUDIT_TABLE",
    "RunsTable": "ORCHESTRATOR_RUNS_TABLE",
}
BUCKET = "orchestrator-emulated-payloads"


def repository_root() -> Path:
    """The folder holding `template.yaml` and `functions/` (the repo, or the layer's parent)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "functions").is_dir() and (parent / "template.yaml").is_file():
            return parent
    raise OrchestratorError("--engine stepfunctions needs the project's functions/ and template.yaml")


class _CfnLoader(yaml.SafeLoader):
    """Reads template.yaml, turning `!Ref`-style tags into plain values."""


def _any_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node, deep=True)}
    return {suffix: loader.construct_mapping(node, deep=True)}  # type: ignore[arg-type]


_CfnLoader.add_multi_constructor("!", _any_tag)


def table_definitions(template: Path) -> dict[str, dict[str, Any]]:
    """CreateTable arguments for every `AWS::DynamoDB::Table` in the template."""
    loaded = yaml.load(template.read_text(encoding="utf-8"), Loader=_CfnLoader)
    tables: dict[str, dict[str, Any]] = {}
    for logical_id, resource in loaded["Resources"].items():
        if resource.get("Type") != "AWS::DynamoDB::Table":
            continue
        properties = resource["Properties"]
        arguments: dict[str, Any] = {
            "TableName": f"orchestrator-{logical_id}",
            "AttributeDefinitions": properties["AttributeDefinitions"],
            "KeySchema": properties["KeySchema"],
            "BillingMode": properties.get("BillingMode", "PAY_PER_REQUEST"),
        }
        if properties.get("GlobalSecondaryIndexes"):
            arguments["GlobalSecondaryIndexes"] = properties["GlobalSecondaryIndexes"]
        tables[logical_id] = arguments
    return tables


class LambdaContext:
    """What a handler may read of its context."""

    def __init__(self, name: str) -> None:
        self.function_name = name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:123456789012:function:{name}"
        self.memory_limit_in_mb = 1024
        self.aws_request_id = "emulated"
        self.log_group_name = f"/aws/lambda/{name}"
        self.log_stream_name = "emulated"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


def _load_handler(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"orchestrator_function_{path.parent.name}", path)
    if spec is None or spec.loader is None:
        raise OrchestratorError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class _Invoker:
    """Stands in for moto's Docker-based Lambda runtime: calls our handlers in process."""

    handlers: dict[str, ModuleType]

    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    idle: threading.Condition = field(default_factory=threading.Condition)

    def wait_idle(self, timeout: float) -> None:
        """Wait (up to `timeout` seconds) for invocations still running: when a Map iteration
        fails the execution, moto lets the others finish their calls after it has ended."""
        with self.idle:
            self.idle.wait_for(lambda: self.in_flight == 0, timeout)

    def __call__(self, function: Any, event: Any = None) -> tuple[str, bool, str]:
        with self.idle:
            self.in_flight += 1
        try:
            return self._invoke(function, event)
        finally:
            with self.idle:
                self.in_flight -= 1
                self.idle.notify_all()

    def _invoke(self, function: Any, event: Any = None) -> tuple[str, bool, str]:
        name = function.function_name
        module = self.handlers[name]
        try:
            # One invocation at a time, as in one Lambda container: Powertools keeps metrics
            # in process-wide state that concurrent handlers in one process would share.
            with self.lock:
                result = module.lambda_handler(event, LambdaContext(name))
        except BaseException as error:  # the Lambda runtime reports it as a function error
            # (SystemExit or KeyboardInterrupt too: from the function's code, as this is not
            # the main thread; escaping, they would end moto's thread and the execution would
            # never finish. The same type and message as the embedded engine's sandbox gives.)
            payload = {
                "errorMessage": str(error) or type(error).__name__,
                "errorType": type(error).__name__,
                "stackTrace": [],
            }
            return json.dumps(payload), True, ""
        return json.dumps(result), False, ""


STRAGGLER_WAIT = 30.0
"""Seconds an ended emulation waits for Lambda calls that are still running."""


class _LambdaStdout:
    """stdout while emulating: what Lambda code writes there (Powertools' JSON logs, EMF
    metrics) would go to the function's CloudWatch log group, not to the user's terminal, so it
    is dropped; stdout stays the caller's alone. (A task's own prints are not among these: they
    become `[task]` lines on stderr, as on the embedded engine.)"""

    def __init__(self, real: TextIO, owner: int) -> None:
        self._real = real
        self._owner = owner

    def write(self, text: str) -> int:
        if threading.get_ident() == self._owner:
            return self._real.write(text)
        return len(text)

    def flush(self) -> None:
        self._real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@contextmanager
def emulated_aws(root: Path | None = None, account: Path | None = None) -> Iterator[dict[str, str]]:
    """Inside: moto with this project's resources; yields the placeholder -> function ARN map.
    With `account` (a folder), the tables hold what they held when the last emulation using it
    ended, and are kept there again (`emulated_account`)."""
    import boto3
    from moto import mock_aws

    root = root or repository_root()
    saved = dict(os.environ)
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "POWERTOOLS_SERVICE_NAME": "orchestrator",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_NAMESPACE": "Orchestrator",
            # logs only warnings (sam local's way). Metrics stay on, as on AWS: their EMF lines
            # go to stdout, which is dropped (`_LambdaStdout`). Disabled, Powertools would never
            # clear its metric set, and after 100 calls warn of empty metrics on every call.
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "ORCHESTRATOR_PAYLOAD_BUCKET": BUCKET,
        }
    )
    try:
        with _quiet("moto"), mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
            arns = _create_resources(root)
            tables = {logical_id: os.environ[variable] for logical_id, variable in TABLE_ENV.items()}
            dynamodb = boto3.client("dynamodb", region_name=REGION)
            with kept_in(account, tables, dynamodb), _lambda_handlers(root):
                yield arns
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def _lambda_handlers(root: Path) -> Iterator[None]:
    """Inside: moto's Lambda invocations run the project's handlers in process; what they
    write to stdout is dropped (`_LambdaStdout`)."""
    from moto.awslambda.models import LambdaFunction

    stdout = sys.stdout
    # before the handlers load, so their loggers and metrics bind to it
    sys.stdout = _LambdaStdout(stdout, threading.get_ident())
    invoker = _Invoker({})
    try:
        invoker.handlers.update(
            (f"orchestrator-{kind}", _load_handler(root / "functions" / folder / "app.py"))
            for kind, folder in FUNCTION_FOLDERS.items()
        )
        with mock.patch.object(
            LambdaFunction, "_invoke_lambda", lambda self, event=None: invoker(self, event)
        ):
            yield
    finally:
        # calls still running write to the dropped stdout, not the user's
        invoker.wait_idle(STRAGGLER_WAIT)
        sys.stdout = stdout


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Within: records of logger `name` and its children reach no handler (and not Python's
    last-resort one, which prints warnings and errors to stderr)."""
    logger = logging.getLogger(name)
    saved = logger.propagate
    sink = logging.NullHandler()
    logger.addHandler(sink)
    logger.propagate = False
    try:
        yield
    finally:
        logger.propagate = saved
        logger.removeHandler(sink)


@contextmanager
def _history_listener(listener: Callable[[dict[str, Any]], None] | None) -> Iterator[None]:
    """Within: `listener` hears each history event of the emulated executions as it is recorded.

    moto records an event under its history's lock, in id order; the event is given as
    `GetExecutionHistory` would give it (its `type` a plain string). An exception the listener
    raises does not reach the execution: listening stops and it is raised here at the end.
    """
    if listener is None:
        yield
        return
    from moto.stepfunctions.parser.asl.eval.event.event_manager import EventManager

    original = EventManager._publish_history_event
    failures: list[Exception] = []

    def publish(self: EventManager, *arguments: Any, **keywords: Any) -> None:
        original(self, *arguments, **keywords)
        if failures:
            return
        event = dict(self._history_event_list[-1])
        event["type"] = str(getattr(event["type"], "value", event["type"]))
        try:
            listener(event)
        except Exception as error:
            failures.append(error)

    with mock.patch.object(EventManager, "_publish_history_event", publish):
        yield
    if failures:
        raise failures[0]


def _create_resources(root: Path) -> dict[str, str]:
    import boto3

    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": ["lambda.amazonaws.com", "states.amazonaws.com"]},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    boto3.client("iam", region_name=REGION).create_role(
        RoleName=ACCOUNT_ROLE.rsplit("/", 1)[-1], AssumeRolePolicyDocument=json.dumps(trust)
    )
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    for logical_id, arguments in table_definitions(root / "template.yaml").items():
        dynamodb.create_table(**arguments)
        if logical_id in TABLE_ENV:
            os.environ[TABLE_ENV[logical_id]] = arguments["TableName"]
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    key = boto3.client("kms", region_name=REGION).create_key(Description="orchestrator sensitive inputs")
    os.environ["ORCHESTRATOR_KMS_KEY_ID"] = key["KeyMetadata"]["KeyId"]
    _copy_secrets(boto3.client("secretsmanager", region_name=REGION))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("app.py", "def lambda_handler(event, context):\n    return event\n")
    lambda_client = boto3.client("lambda", region_name=REGION)
    arns: dict[str, str] = {}
    for kind in FUNCTION_FOLDERS:
        created = lambda_client.create_function(
            FunctionName=f"orchestrator-{kind}",
            Runtime="python3.12",
            Role=ACCOUNT_ROLE,
            Handler="app.lambda_handler",
            Code={"ZipFile": archive.getvalue()},
            Timeout=900,
        )
        arns[FUNCTION_PLACEHOLDERS[kind]] = created["FunctionArn"]
    return arns


def _copy_secrets(client: Any) -> None:
    """The secrets this machine has locally become Secrets Manager secrets `orchestrator/<name>`."""
    for variable, value in os.environ.items():
        if variable.startswith("ORCHESTRATOR_SECRET_"):
            name = variable.removeprefix("ORCHESTRATOR_SECRET_").lower()
            for candidate in {name, name.replace("_", "-")}:
                client.create_secret(Name=f"orchestrator/{candidate}", SecretString=value)


def substitute(definition: dict[str, Any], arns: dict[str, str]) -> str:
    """The definition with `${...FunctionArn}` placeholders replaced, as SAM would."""
    text = json.dumps(definition)
    for placeholder, arn in arns.items():
        text = text.replace(placeholder, arn)
    return text


def run_execution(
    plan: Plan,
    build_input: Callable[[], dict[str, Any]],
    run_id: str,
    *,
    poll: float = 0.01,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    account: Path | None = None,
) -> dict[str, Any]:
    """Run a plan's state machine on the emulator; its status, output and history.

    `build_input` is called inside the emulated account (sealing sensitive inputs needs its KMS);
    `on_event` hears each history event as the execution records it (on the emulator's thread);
    `account` is the folder the emulated account's tables are kept in between runs.
    """
    import boto3

    with emulated_aws(account=account) as arns, _history_listener(on_event):
        # the functions find task definitions by pipeline id, beside the file being run
        os.environ["ORCHESTRATOR_PIPELINES_DIR"] = str(plan.path.resolve().parent)
        client = boto3.client("stepfunctions", region_name=REGION)
        machine = client.create_state_machine(
            name=plan.pipeline_id,
            definition=substitute(compile_pipeline(plan), arns),
            roleArn=ACCOUNT_ROLE,
            type="STANDARD",
        )
        started = client.start_execution(
            stateMachineArn=machine["stateMachineArn"], name=run_id, input=json.dumps(build_input())
        )
        while True:
            described = client.describe_execution(executionArn=started["executionArn"])
            if described["status"] != "RUNNING":
                break
            time.sleep(poll)
        history: list[dict[str, Any]] = []
        for page in client.get_paginator("get_execution_history").paginate(
            executionArn=started["executionArn"]
        ):
            history += page["events"]
        output = json.loads(described["output"]) if described.get("output") else None
        # outputs kept in S3 are read back before the emulated bucket goes away
        if output is not None:
            from orchestrator.aws.payloads import resolve

            output["tasks"] = resolve(output.get("tasks") or {})
            output["result"] = resolve(output.get("result"))
        else:
            from orchestrator.aws.execution import last_known_tasks

            output = {"tasks": last_known_tasks(history)}  # a failed execution has no output
        return {"status": described["status"], "output": output, "history": history}
