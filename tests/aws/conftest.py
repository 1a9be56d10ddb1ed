"""Fixtures for the Lambda handlers: a fake `LambdaContext`, moto 5 AWS, handler modules, events.

Nothing here is autouse: a test asks for AWS (`aws`, `sfn`, `state_machines`) by name, so
the compiler's tests in this folder run without moto.

Pytest imports every `conftest.py` outside a package as the module `conftest`, so loading
this file would hide the root `tests/conftest.py` from the many tests that write
`from conftest import CliResult`. The last lines of this file put the root one back.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
EVENTS = REPO / "tests" / "events"
FUNCTIONS = REPO / "functions"
REGION = "us-east-1"
ROLE_ARN = "arn:aws:iam::123456789012:role/orchestrator-state-machine"
TRIVIAL_DEFINITION = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}})


@dataclass
class FakeLambdaContext:
    """What Powertools reads from the context object Lambda passes to a handler."""

    function_name: str = "orchestrator-test"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:123456789012:function:orchestrator-test"
    aws_request_id: str = "52fdfc07-2182-454f-963f-5f0f9a621d72"
    log_group_name: str = "/aws/lambda/orchestrator-test"
    log_stream_name: str = "2024/05/24/[$LATEST]abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext()


@pytest.fixture
def event() -> Callable[[str], dict[str, Any]]:
    """Load a stored event from tests/events (a fresh copy each time)."""

    def load(name: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text(encoding="utf-8"))
        return loaded

    return load


_MODULES: dict[str, ModuleType] = {}


def load_handler(name: str) -> ModuleType:
    """functions/<name>/app.py as a module (each folder's `app` gets its own module name)."""
    if name not in _MODULES:
        spec = importlib.util.spec_from_file_location(f"function_{name}_app", FUNCTIONS / name / "app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[name] = module
    return _MODULES[name]


@pytest.fixture
def handler(
    lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str, dict[str, Any]], Any]:
    """Call `functions/<name>/app.py`'s `lambda_handler` with an event and the fake context."""
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "orchestrator-test")
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "WARNING")

    def call(name: str, event: dict[str, Any]) -> Any:
        return load_handler(name).lambda_handler(event, lambda_context)

    return call


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto 5 for every AWS call of the test, with fake credentials and fresh cached clients."""
    from moto import mock_aws

    from orchestrator.aws.clients import aws_client

    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("ORCHESTRATOR_KMS_KEY_ID", raising=False)
    aws_client.cache_clear()
    with mock_aws():
        yield
    aws_client.cache_clear()


@pytest.fixture
def sfn(aws: None) -> Any:
    """moto's Step Functions client (the same one the package builds for itself)."""
    from orchestrator.aws.clients import aws_client

    return aws_client("stepfunctions")


def create_table(logical_id: str, name: str) -> None:
    """Create a DynamoDB table of `infra/template.base.yaml` in moto, with the template's keys
    and indexes (so the code is tested against the schema that is deployed)."""
    from orchestrator.aws.clients import aws_client
    from orchestrator.aws.sam import load_template

    base = load_template((REPO / "infra" / "template.base.yaml").read_text(encoding="utf-8"))
    properties = base["Resources"][logical_id]["Properties"]
    indexes = [
        {key: index[key] for key in ("IndexName", "KeySchema", "Projection")}
        for index in properties.get("GlobalSecondaryIndexes", [])
    ]
    aws_client("dynamodb").create_table(
        TableName=name,
        AttributeDefinitions=properties["AttributeDefinitions"],
        KeySchema=properties["KeySchema"],
        BillingMode="PAY_PER_REQUEST",
        **({"GlobalSecondaryIndexes": indexes} if indexes else {}),
    )


@pytest.fixture
def template_table(aws: None) -> Callable[[str, str], None]:
    """`create_table(logical id, name)`: a table of the template in this test's moto account."""
    return create_table


@pytest.fixture
def state_machines(sfn: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, str]]:
    """Create a trivial state machine per pipeline id and publish them in ORCHESTRATOR_STATE_MACHINES,
    with the runs table the HTTP API records run owners in (ORCHESTRATOR_RUNS_TABLE)."""
    create_table("RunsTable", "orchestrator-runs")
    monkeypatch.setenv("ORCHESTRATOR_RUNS_TABLE", "orchestrator-runs")

    def create(*pipeline_ids: str) -> dict[str, str]:
        arns = {
            pipeline_id: sfn.create_state_machine(
                name=f"orchestrator-{pipeline_id}".replace("_", "-"),
                definition=TRIVIAL_DEFINITION,
                roleArn=ROLE_ARN,
            )["stateMachineArn"]
            for pipeline_id in pipeline_ids
        }
        monkeypatch.setenv("ORCHESTRATOR_STATE_MACHINES", json.dumps(arns))
        return arns

    return create


@pytest.fixture
def pipelines_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ORCHESTRATOR_PIPELINES_DIR for tests that deploy pipelines of their own."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    monkeypatch.setenv("ORCHESTRATOR_PIPELINES_DIR", str(folder))
    return folder


_THIS_MODULE = sys.modules[__name__]
_ROOT_CONFTEST = REPO / "tests" / "conftest.py"


def pytest_plugin_registered(plugin: object, manager: pytest.PytestPluginManager) -> None:
    """Once pytest has registered this file, make `import conftest` give tests/conftest.py again."""
    if plugin is not _THIS_MODULE:
        return
    for candidate in manager.get_plugins():
        if getattr(candidate, "__file__", None) == str(_ROOT_CONFTEST):
            sys.modules["conftest"] = candidate
            return
