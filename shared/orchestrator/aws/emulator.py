"""`--engine stepfunctions`: the compiled state machine on moto's Step Functions emulator.

Inside `mock_aws` this creates what `template.yaml` deploys (the DynamoDB tables, read from
the template itself so their schema cannot drift; the payload bucket; a KMS key; the secrets
this machine knows; one Lambda function per task type and the dispatch function), starts the
pipeline's exact state machine and waits for it. moto cannot run Lambda code without Docker,
so each invocation is handed, in process, to the project's own handler in `functions/`. Calls
run side by side wherever the state machine makes them (Parallel branches, Map iterations),
each in a container of its function, as Lambda runs them: a container is the handler module
loaded once more, with Powertools state of its own, and serves one call at a time
(`_Function`); requests to the emulated services are atomic, as AWS's are
(`_one_request_at_a_time`). A task sandboxed for its resource limits runs in a child process,
which the in-process mock does not reach: it is given the address of an HTTP endpoint that
hands its requests to the same mock (`_ServiceEndpoint`), started on the first such task.

What a user sees is what the tasks print and the run's outcome, as with the embedded engine,
not what AWS would keep for the operator: what the functions write to stdout (Powertools'
JSON logs, EMF metrics) would go to CloudWatch Logs and is dropped, and moto's own logging
(its evaluation errors print whole state definitions) is silenced while emulating.
"""

from __future__ import annotations

import importlib.util
import io
import itertools
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO, cast
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import yaml

from orchestrator.aws.asl import FUNCTION_PLACEHOLDERS, PAYLOAD_BUCKET, compile_pipeline
from orchestrator.aws.emulated_account import kept_in
from orchestrator.aws.moto_fixes import atomic_dynamodb_writes, aws_json_paths, result_writer_files
from orchestrator.errors import OrchestratorError
from orchestrator.plan import Plan
from orchestrator.runtime.sandbox import child_environment_hook
from orchestrator.settings import RECORD_VARIABLE, REPLAY_VARIABLE

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
    "TelemetryTable": "ORCHESTRATOR_TELEMETRY_TABLE",
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
    """What a handler may read of its context (a request id of its own for each call)."""

    def __init__(self, name: str) -> None:
        self.function_name = name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:123456789012:function:{name}"
        self.memory_limit_in_mb = 1024
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{name}"
        self.log_stream_name = "emulated"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


_LOADING = threading.Lock()
"""Held while a handler module loads (`_own_powertools` patches a shared module)."""


def _load_handler(path: Path, label: str | None = None, stdout: TextIO | None = None) -> ModuleType:
    """A container of the function whose handler is `path`, as Lambda starts one: the handler
    module executed as a new module object (never put in `sys.modules`), with Powertools objects
    of its own (`_own_powertools`, named `label`, by default the function's folder; their logs go
    to `stdout`, by default `sys.stdout`). Loading one handler twice gives two containers."""
    label = label or path.parent.name
    spec = importlib.util.spec_from_file_location(f"orchestrator_function_{path.parent.name}", path)
    if spec is None or spec.loader is None:
        raise OrchestratorError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    with _LOADING, _own_powertools(label, stdout) as (metrics_class, logger_class):
        spec.loader.exec_module(module)
    from aws_lambda_powertools import Logger, Metrics

    for name, value in vars(module).items():
        shared = (isinstance(value, Metrics) and not isinstance(value, metrics_class)) or (
            isinstance(value, Logger) and not isinstance(value, logger_class)
        )
        if shared:
            raise OrchestratorError(
                f"{path}: `{name}` is a Powertools {type(value).__name__} shared by every emulated "
                "container; import it as `from aws_lambda_powertools import Logger, Metrics`"
            )
    return module


@contextmanager
def _own_powertools(label: str, stdout: TextIO | None) -> Iterator[tuple[type[Any], type[Any]]]:
    """Within: `from aws_lambda_powertools import Metrics, Logger` gives classes of one container
    (`label`), so that handlers loaded in it share with each other, and with no other container,
    what Powertools keeps per process:

    - `Metrics` keeps its metric set, dimensions and metadata in class attributes, shared by every
      instance in the process; `log_metrics` prints and clears them when a call ends. Shared by
      two calls at once, one call would print the other's metrics (and the other warn that it
      has none), or fail with a dict changed while it was serialised.
    - `Logger` configures, once per process, the `logging` logger named after the service: one
      handler, whose formatter keeps the keys `inject_lambda_context` appends (the request id,
      the function, the correlation id). This container's logger is `<service>[<label>]`, its
      stream `stdout` (the emulation's, `_LambdaStdout`), whatever `sys.stdout` is when it loads.

    Not per container (process-wide in Powertools' modules): the cold-start flags (only the
    process's first call is cold), and the Tracer's configuration (the same for every function;
    tracing is disabled while emulating, so a call keeps no trace state).
    """
    import aws_lambda_powertools
    from aws_lambda_powertools import Logger, Metrics

    class ContainerMetrics(Metrics):
        _metrics: dict[str, Any] = {}  # noqa: RUF012 (Powertools' own class-level stores)
        _dimensions: dict[str, str] = {}  # noqa: RUF012
        _metadata: dict[str, Any] = {}  # noqa: RUF012
        _default_dimensions: dict[str, Any] = {}  # noqa: RUF012

    class ContainerLogger(Logger):
        def __init__(self, *arguments: Any, **keywords: Any) -> None:
            if stdout is not None and keywords.get("stream") is None:
                keywords["stream"] = stdout
            super().__init__(*arguments, **keywords)

        def _get_logger(self) -> logging.Logger:
            if self.child:
                return super()._get_logger()
            return logging.getLogger(f"{self.service}[{label}]")

    with (
        mock.patch.object(aws_lambda_powertools, "Metrics", ContainerMetrics),
        mock.patch.object(aws_lambda_powertools, "Logger", ContainerLogger),
    ):
        yield ContainerMetrics, ContainerLogger


class _Function:
    """The containers of one Lambda function. A call takes an idle container (the one that
    served last: the warmest) or, when every one is busy, starts another, as Lambda scales out;
    a container serves one call at a time. `first` is its first container (a handler module, or
    anything with a `lambda_handler`); more are started from its file, with `stdout` for
    their loggers; something with no file is the function's only container."""

    def __init__(self, name: str, first: ModuleType, stdout: TextIO | None = None) -> None:
        self.name = name
        self.containers: list[ModuleType] = [first]  # every one started, busy or idle
        self._idle = [first]
        self._numbers = itertools.count(2)
        file = getattr(first, "__file__", None)
        self._path = Path(file) if isinstance(file, str) else None
        self._stdout = stdout
        self._available = threading.Condition()

    @contextmanager
    def container(self) -> Iterator[ModuleType]:
        """An idle container, or a new one, for the duration of one call."""
        with self._available:
            while not self._idle and self._path is None:
                self._available.wait()
            module = self._idle.pop() if self._idle else None
            number = next(self._numbers) if module is None else 0
        if module is None:
            assert self._path is not None
            module = _load_handler(self._path, f"{self.name}#{number}", self._stdout)
            with self._available:
                self.containers.append(module)
        try:
            yield module
        finally:
            with self._available:
                self._idle.append(module)
                self._available.notify()


@dataclass
class _Invoker:
    """Stands in for moto's Docker-based Lambda runtime: calls our handlers in process, as
    many at once as the state machine makes (Parallel branches, Map iterations), each in a
    container of its function (`_Function`): `handlers` holds each function's first one."""

    handlers: dict[str, ModuleType]
    stdout: TextIO | None = None  # for the loggers of the containers started later

    in_flight: int = 0
    idle: threading.Condition = field(default_factory=threading.Condition)
    functions: dict[str, _Function] = field(default_factory=dict)

    def wait_idle(self, timeout: float) -> None:
        """Wait (up to `timeout` seconds) for invocations still running: when a Map iteration
        or a Parallel branch fails the execution, moto lets the others finish their calls
        after it has ended."""
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

    def _function(self, name: str) -> _Function:
        with self.idle:
            if name not in self.functions:
                self.functions[name] = _Function(name, self.handlers[name], self.stdout)
            return self.functions[name]

    def _invoke(self, function: Any, event: Any = None) -> tuple[str, bool, str]:
        name = function.function_name
        try:
            with self._function(name).container() as module:
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
    for variable in [name for name in os.environ if name.startswith("AWS_ENDPOINT_URL")]:
        # an endpoint of the user's (LocalStack...) would take requests meant for the emulation
        del os.environ[variable]
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
        with (
            _quiet("moto"),
            mock_aws(config={"stepfunctions": {"execute_state_machine": True}}),
            aws_json_paths(),
            result_writer_files(),
            atomic_dynamodb_writes(),
        ):
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
    """Inside: moto's Lambda invocations run the project's handlers in process, each function
    in as many containers as calls run at once (`_Invoker`); what they write to stdout is
    dropped (`_LambdaStdout`); requests to the emulated services are atomic, as on AWS
    (`_one_request_at_a_time`)."""
    from moto.awslambda.models import LambdaFunction

    stdout = sys.stdout
    lambda_stdout = cast(TextIO, _LambdaStdout(stdout, threading.get_ident()))
    # before the handlers load, so that what binds to sys.stdout then binds to it
    sys.stdout = lambda_stdout
    invoker = _Invoker({}, stdout=lambda_stdout)
    try:
        for kind, folder in FUNCTION_FOLDERS.items():
            name = f"orchestrator-{kind}"
            path = root / "functions" / folder / "app.py"
            invoker.handlers[name] = _load_handler(path, f"{name}#1", lambda_stdout)
        run_handlers = mock.patch.object(
            LambdaFunction, "_invoke_lambda", lambda self, event=None: invoker(self, event)
        )
        with _one_request_at_a_time(), _reachable_from_child_processes(), run_handlers:
            try:
                yield
            finally:
                # calls still running (moto ended the execution when a branch or an iteration
                # failed) finish here, their requests still atomic, writing to the dropped stdout
                invoker.wait_idle(STRAGGLER_WAIT)
    finally:
        sys.stdout = stdout


@contextmanager
def _one_request_at_a_time() -> Iterator[None]:
    """Within: each request to the emulated account's data services (DynamoDB, S3, KMS, Secrets
    Manager...) is handled whole before the next starts, as each is atomic on AWS: moto answers
    a conditional write by reading the item and then writing it, so two at once could both
    succeed, and a compare-and-set would lose an update. Lambda and Step Functions requests are
    not held (an invocation runs a handler that makes requests of its own). And boto3 clients
    are created one at a time: a botocore session is not safe to create clients from in several
    threads at once (boto/boto3#1592), and moto and the handlers create theirs from the default
    session."""
    import boto3.session
    from moto.core.botocore_stubber import BotocoreStubber

    handle = BotocoreStubber.process_request
    create_client = boto3.session.Session.client
    one_request = threading.RLock()
    one_client = threading.RLock()

    def process_request(self: BotocoreStubber, request: Any) -> Any:
        labels = (urlsplit(str(request.url)).hostname or "").split(".")
        if "lambda" in labels or "states" in labels:
            return handle(self, request)
        with one_request:
            return handle(self, request)

    def client(self: boto3.session.Session, *arguments: Any, **keywords: Any) -> Any:
        with one_client:
            return create_client(self, *arguments, **keywords)

    with (
        mock.patch.object(BotocoreStubber, "process_request", process_request),
        mock.patch.object(boto3.session.Session, "client", client),
    ):
        yield


_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request")
"""The region and the service of a SigV4 signature, in an `Authorization` header or `X-Amz-Credential`."""


class _EndpointRequest(BaseHTTPRequestHandler):
    """One request of a child process to the emulated account: sent on, whole, to moto's
    in-process mock as if a client in this process had made it (`BotocoreStubber.process_request`,
    patched by `_one_request_at_a_time`, so it takes the same lock), and its answer sent back.

    A client that is given an endpoint sends every service's requests there: the service and
    region come from the request's SigV4 credential scope, and the URL is rebuilt on the AWS
    host moto matches, `<service>.<region>.amazonaws.com` (the data services' signing name is
    their endpoint prefix; S3 requests to an IP address are path-style, as moto reads them)."""

    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects
    disable_nagle_algorithm = True  # else each answer's body waits ~40 ms for the headers' ACK

    def _forward(self) -> None:
        from botocore.awsrequest import AWSPreparedRequest
        from botocore.compat import HTTPHeaders
        from moto.core.models import botocore_stubber

        body = self._body()
        query = parse_qs(urlsplit(self.path).query).get("X-Amz-Credential", [""])[0]
        scope = _CREDENTIAL_SCOPE.search(self.headers.get("Authorization", "")) or _CREDENTIAL_SCOPE.search(
            f"Credential={query}"
        )
        if scope is None:
            self._answer(403, {}, b"the emulated account answers SigV4-signed requests only")
            return
        region, service = scope.groups()
        headers = HTTPHeaders()
        for key, value in self.headers.items():
            if key.lower() not in {"host", "transfer-encoding", "expect"}:
                headers[key] = value
        url = f"https://{service}.{region}.amazonaws.com{self.path}"
        request = AWSPreparedRequest(self.command, url, headers, body or None, stream_output=False)
        try:
            answer = botocore_stubber.process_request(request)
        except Exception as error:  # moto's own failure: the client sees a server error
            self._answer(500, {}, f"the emulated {service} failed: {error}".encode())
            return
        if answer is None:
            self._answer(404, {}, f"the emulated account has no {service} at {self.path}".encode())
            return
        status, answer_headers, answer_body = answer
        self._answer(int(status), dict(answer_headers), answer_body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _forward

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers, up to the blank line
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self, status: int, headers: dict[str, Any], body: str | bytes | None) -> None:
        data = body.encode("utf-8") if isinstance(body, str) else (body or b"")
        self.send_response(status)
        length = str(len(data))
        for key, value in headers.items():
            if key.lower() == "content-length" and self.command == "HEAD":
                length = str(value)  # the object's size, with no body
            elif key.lower() not in {"content-length", "transfer-encoding", "connection"}:
                self.send_header(key, str(value))
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *arguments: Any) -> None:
        """Quiet: the emulation's requests are not the user's output."""


class _EndpointServer(ThreadingHTTPServer):
    """A thread per connection; quiet about connections that break (a child killed at its
    timeout or memory limit, mid-request): the user sees the task's error, not a traceback."""

    daemon_threads = True  # a connection a child leaves open holds nothing up
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class _ServiceEndpoint:
    """An HTTP endpoint on 127.0.0.1 for the emulated account, for code in other processes
    (`_EndpointRequest`), started on the first `url()` and stopped by `stop()`."""

    POLL_SECONDS = 0.05  # how long `stop` may wait for the serving loop to notice

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server: _EndpointServer | None = None
        self._thread: threading.Thread | None = None

    def url(self) -> str:
        with self._lock:
            if self._server is None:
                server = _EndpointServer(("127.0.0.1", 0), _EndpointRequest)
                self._thread = threading.Thread(
                    target=server.serve_forever,
                    kwargs={"poll_interval": self.POLL_SECONDS},
                    name="emulated-aws-endpoint",
                    daemon=True,
                )
                self._thread.start()
                self._server = server
            host, port = self._server.server_address[:2]
            return f"http://{host!s}:{port}"

    def stop(self) -> None:
        with self._lock:
            server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None and thread is not None:
            server.shutdown()
            server.server_close()
            thread.join()


@contextmanager
def _reachable_from_child_processes() -> Iterator[None]:
    """Within: a task sandboxed for its resource limits (`runtime.sandbox`, a child process of
    the task function) reaches the emulated account as the function's own code does, as it
    reaches the real one on AWS: its environment names an endpoint for every service
    (`AWS_ENDPOINT_URL`, read by botocore 1.31 and later), with the emulation's credentials and
    region. The endpoint starts when the first child does: a run with no sandboxed task opens
    no socket."""
    endpoint = _ServiceEndpoint()

    def aim_at_the_emulation(environment: dict[str, str]) -> None:
        # (`emulated_aws` took out the user's endpoints: a service's own would win over this one)
        environment.pop("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", None)
        environment.update(
            {
                "AWS_ENDPOINT_URL": endpoint.url(),
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_SESSION_TOKEN": "testing",
                "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION,
            }
        )

    try:
        with child_environment_hook(aim_at_the_emulation):
            yield
    finally:
        endpoint.stop()


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
    # the executions' own histories: a Distributed Map's iterations (child executions, on AWS)
    # are recorded by event managers of their own, in no history `GetExecutionHistory` gives
    executions: set[int] = set()

    def publish(self: EventManager, *arguments: Any, **keywords: Any) -> None:
        original(self, *arguments, **keywords)
        if failures:
            return
        event = dict(self._history_event_list[-1])
        event["type"] = str(getattr(event["type"], "value", event["type"]))
        if event["type"] == "ExecutionStarted":
            executions.add(id(self))
        if id(self) not in executions:
            return
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
    """The secrets this machine has locally (the state folder's secrets file, and the
    environment's `ORCHESTRATOR_SECRET_<NAME>`, which wins as it does locally) become Secrets
    Manager secrets `orchestrator/<name>`: a script's `get_secret` and a key's `api_key_secret`
    find the same values as on the embedded engine."""
    from orchestrator.settings import load_settings
    from orchestrator.stores.secrets_local import LocalSecrets

    secrets = LocalSecrets(load_settings().home / "secrets.yaml").in_file()
    for variable, value in os.environ.items():
        if variable.startswith("ORCHESTRATOR_SECRET_"):
            name = variable.removeprefix("ORCHESTRATOR_SECRET_").lower()
            secrets.update(dict.fromkeys({name, name.replace("_", "-")}, value))
    for name, value in secrets.items():
        if re.fullmatch(r"[A-Za-z0-9/_+=.@-]+", name):  # (no other name can be a secret's on AWS)
            client.create_secret(Name=f"orchestrator/{name}", SecretString=value)


def substitute(definition: dict[str, Any], arns: dict[str, str]) -> str:
    """The definition with `${...FunctionArn}` placeholders replaced, as SAM would."""
    from orchestrator.aws.functions import with_variants  # a sized variant runs its base's handler

    text = json.dumps(definition)
    for placeholder, arn in with_variants(text, arns).items():
        text = text.replace(placeholder, arn)
    return text.replace(PAYLOAD_BUCKET, BUCKET)  # where a Distributed Map writes its results


def run_execution(
    plan: Plan,
    build_input: Callable[[], dict[str, Any]],
    run_id: str,
    *,
    poll: float = 0.01,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    account: Path | None = None,
    environment: Mapping[str, str] | None = None,
    while_running: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run a plan's state machine on the emulator; its status, output, history and telemetry
    entries (`runtime.telemetry`).

    `build_input` is called inside the emulated account (sealing sensitive inputs needs its KMS);
    `on_event` hears each history event as the execution records it (on the emulator's thread);
    `account` is the folder the emulated account's tables are kept in between runs;
    `environment` is added to the functions' (the command's record or replay file).
    `while_running` is called between two polls of the execution (in the emulated account).
    """
    import boto3

    with emulated_aws(account=account) as arns, _history_listener(on_event):
        # the functions find task definitions by pipeline id, beside the file being run
        os.environ["ORCHESTRATOR_PIPELINES_DIR"] = str(plan.path.resolve().parent)
        for variable in (RECORD_VARIABLE, REPLAY_VARIABLE):
            os.environ.pop(variable, None)
        os.environ.update(environment or {})
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
            if while_running is not None:
                while_running()
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
            from orchestrator.aws.asl import shortened_state_names
            from orchestrator.aws.execution import last_known_tasks, with_full_state_name

            # a failed execution has no output: the records its states output
            long_names = shortened_state_names(plan)
            output = {"tasks": last_known_tasks([with_full_state_name(e, long_names) for e in history])}
        from orchestrator.aws.payloads import Snapshot

        # the run's values kept in S3, for records read from its history (a failed group's children)
        payloads = Snapshot.read(BUCKET, f"payloads/{run_id}")
        return {
            "status": described["status"],
            "output": output,
            "history": history,
            "payloads": payloads,
            "telemetry": emulated_telemetry(run_id),
        }


def emulated_telemetry(run_id: str) -> list[dict[str, Any]]:
    """The telemetry entries of a run in the emulated account's table (inside `emulated_aws`)."""
    from orchestrator.settings import lambda_settings
    from orchestrator.stores.dynamodb import DynamoTelemetryLog

    table = lambda_settings().tables.get("telemetry")
    return DynamoTelemetryLog(table).query(run_id) if table else []
