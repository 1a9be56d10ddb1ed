"""Issue 13, the AWS side: each function gets only what it needs, and user scripts cannot
rewrite the audit log or payloads.

The roles are read from what CloudFormation would get: the checked-in `template.yaml` put
through the SAM translator (the same transform `sam deploy` runs), so SAM's own additions
(the managed policies, the variants' shared role) are in the picture. Every function's
statements are asserted as a table of (action, resource), with their conditions. moto does
not enforce IAM, so nothing here relies on it for permissions; the moto tests check what the
code does within them (conditional, write-once writes; content checked on read).
"""

from __future__ import annotations

import re
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.aws import payloads
from orchestrator.aws.functions import base_function
from orchestrator.aws.sam import build_template, load_template, secret_names, to_long_form
from orchestrator.errors import OrchestratorError
from orchestrator.plan import build_plan
from orchestrator.spec.loading import read_pipeline
from orchestrator.stores.dynamodb import DynamoAuditLog

REPO = Path(__file__).resolve().parents[2]
MANAGED = {
    "AWSLambdaBasicExecutionRole": "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
    "AWSXrayWriteOnlyAccess": "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess",
}

STATE = {("dynamodb:GetItem", "StateTable"), ("dynamodb:PutItem", "StateTable")}
CACHE = {("dynamodb:GetItem", "CacheTable"), ("dynamodb:PutItem", "CacheTable")}
PAYLOADS = {("s3:GetObject", "bucket/payloads/*"), ("s3:PutObject", "bucket/payloads/*")}
TELEMETRY = {("dynamodb:PutItem", "TelemetryTable")}  # (issue 14: each attempt's two items)
START_RUNS = {
    ("states:StartExecution", "states:stateMachine:${AWS::StackName}-*"),
    ("states:DescribeExecution", "states:execution:${AWS::StackName}-*:*"),
    ("kms:GenerateDataKey", "InputsKey"),
}
EXPECTED = {
    "PythonTaskFunction": STATE
    | CACHE
    | PAYLOADS
    | TELEMETRY
    | {
        ("dynamodb:PutItem", "AuditTable"),
        ("s3:GetObject", "bucket/uploads/*"),
        ("kms:Decrypt", "InputsKey"),
        ("secretsmanager:GetSecretValue", "secretsmanager:secret:orchestrator/database_password-??????"),
    },
    "LlmTaskFunction": STATE
    | CACHE
    | PAYLOADS
    | TELEMETRY
    | {
        ("kms:Decrypt", "InputsKey"),
        # the model key infra/config.yaml names (`api_key_secret`), and no other secret
        ("secretsmanager:GetSecretValue", "secretsmanager:secret:orchestrator/openai-api-key-??????"),
    },
    "WebSearchTaskFunction": STATE | CACHE | PAYLOADS | TELEMETRY | {("kms:Decrypt", "InputsKey")},
    "DispatchFunction": STATE
    | PAYLOADS
    | {("kms:Decrypt", "InputsKey"), ("kms:GenerateDataKey", "InputsKey")},
    "ApiFunction": START_RUNS
    | {
        ("dynamodb:GetItem", "RunsTable"),
        ("dynamodb:PutItem", "RunsTable"),
        ("dynamodb:Query", "RunsTable/index/by_owner"),
        ("dynamodb:Query", "TelemetryTable"),
        ("s3:GetObject", "bucket/payloads/*"),
    },
    "UploadTriggerFunction": START_RUNS,
    "ScheduleTriggerFunction": START_RUNS,
}
AUDIT_CONDITION = {
    "ForAllValues:StringEquals": {
        "dynamodb:Attributes": ["execution_id", "entry_id", "pipeline_id", "entry"]
    },
    "StringEqualsIfExists": {"dynamodb:ReturnValues": "NONE"},
}
TELEMETRY_CONDITION = {
    "ForAllValues:StringEquals": {"dynamodb:Attributes": ["run_id", "entry_id", "entry"]},
    "StringEqualsIfExists": {"dynamodb:ReturnValues": "NONE"},
}
WRITE_ONCE = {"Null": {"s3:if-none-match": "false"}}


class _ManagedPolicies:
    """What `sam deploy` looks up in IAM: the ARNs of the AWS managed policies SAM attaches."""

    def load(self) -> dict[str, str]:
        return dict(MANAGED)


def translate(template: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The CloudFormation template SAM makes of ours (code locations as `sam package` makes them)."""
    from samtranslator.translator.transform import transform

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    document = to_long_form(template)
    for resource in document["Resources"].values():
        for key in ("CodeUri", "DefinitionUri", "ContentUri"):
            if key in resource.get("Properties", {}):
                resource["Properties"][key] = f"s3://artifacts/{key}"
    translated: dict[str, Any] = transform(document, {}, _ManagedPolicies())
    return translated


def name_of(resource: Any) -> str:
    """A statement's resource, short: `StateTable`, `bucket/payloads/*`, `states:execution:...`."""
    if isinstance(resource, dict) and "Fn::GetAtt" in resource:
        return str(resource["Fn::GetAtt"][0])
    if isinstance(resource, dict) and "Fn::Sub" in resource:
        text = resource["Fn::Sub"]
        text = text[0] if isinstance(text, list) else text
        text = text.replace("arn:${AWS::Partition}:s3:::orchestrator-${StackSuffix}/", "bucket/")
        text = re.sub(r"^\$\{(\w+)\.Arn\}", r"\1", text)
        return re.sub(
            r"^arn:\$\{AWS::Partition\}:(\w+):\$\{AWS::Region\}:\$\{AWS::AccountId\}:", r"\1:", text
        )
    return str(resource)


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        s for policy in role["Properties"].get("Policies", []) for s in policy["PolicyDocument"]["Statement"]
    ]


def grants(role: dict[str, Any]) -> dict[tuple[str, str], Any]:
    """(action, resource) -> the statement's condition (None without one), for every Allow."""
    table: dict[tuple[str, str], Any] = {}
    for statement in statements(role):
        assert statement["Effect"] == "Allow", statement
        for action in as_list(statement["Action"]):
            for resource in as_list(statement["Resource"]):
                table[(action, name_of(resource))] = statement.get("Condition")
    return table


@pytest.fixture(scope="module")
def roles() -> dict[str, dict[str, Any]]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        translated = translate(
            load_template((REPO / "template.yaml").read_text(encoding="utf-8")), monkeypatch
        )
    resources = translated["Resources"]
    return {
        name: resources[f"{name}Role"]
        for name, resource in resources.items()
        if resource["Type"] == "AWS::Lambda::Function" and f"{name}Role" in resources
    }


# -- the table ---------------------------------------------------------------------------------


def test_each_function_has_exactly_the_permissions_of_its_job(roles: dict[str, dict[str, Any]]) -> None:
    # GIVEN the template as CloudFormation gets it  WHEN each function's role is read
    # THEN it grants exactly its row of the table: no more, no less
    assert set(roles) == set(EXPECTED)
    for function, expected in EXPECTED.items():
        assert set(grants(roles[function])) == expected, function
        assert sorted(roles[function]["Properties"]["ManagedPolicyArns"]) == sorted(MANAGED.values()), (
            function
        )


def test_conditions_make_the_audit_log_append_only_and_payloads_write_once(
    roles: dict[str, dict[str, Any]],
) -> None:
    for function, role in roles.items():
        for (action, resource), condition in grants(role).items():
            if resource == "AuditTable":
                assert (action, condition) == ("dynamodb:PutItem", AUDIT_CONDITION), function
            elif (action, resource) == ("dynamodb:PutItem", "TelemetryTable"):
                assert condition == TELEMETRY_CONDITION, function
            elif action == "s3:PutObject":
                assert condition == WRITE_ONCE, function
            else:
                assert condition is None, (function, action, resource)


def test_no_function_may_delete_rewrite_scan_or_use_wildcards(roles: dict[str, dict[str, Any]]) -> None:
    # The classes of action that would let a script rewrite or read past its own run's data.
    forbidden = re.compile(
        r"^(dynamodb:(DeleteItem|UpdateItem|BatchWriteItem|Scan|PartiQL.*|\*)|s3:(DeleteObject.*|ListBucket.*"
        r"|PutObjectAcl|\*)|kms:\*|secretsmanager:\*|\*)$"
    )
    for function, role in roles.items():
        for action, resource in grants(role):
            assert not forbidden.match(action), (function, action)
            assert resource not in {"*", "bucket/*"} and not resource.endswith("secret:orchestrator/*"), (
                function
            )


def test_function_variants_run_under_their_base_functions_role(monkeypatch: pytest.MonkeyPatch) -> None:
    template = load_template((REPO / "template.yaml").read_text(encoding="utf-8"))
    variants = [name for name in template["Resources"] if base_function(name) != name]
    translated = translate(template, monkeypatch)["Resources"]
    assert variants
    for variant in variants:
        base = base_function(variant)
        assert translated[variant]["Properties"]["Role"] == {"Fn::GetAtt": [f"{base}Role", "Arn"]}
        assert f"{variant}Role" not in translated


# -- secrets: only those the pipelines name ----------------------------------------------------

SECRETS_PIPELINE = """\
name: secrets
tasks:
  - name: reads
    type: python_task
    script: |
      token = context.get_secret("webhook_token")
      other = context.get_secret('team/db-password')
      name = "computed"
      context.get_secret(name)
      return len(token + other)
  - name: plan
    type: python_task
    script: |
      return [{"name": "g", "type": "python_task", "script": 'return context.get_secret("generated_key")'}]
  - name: generated
    type: dynamic_task_group
    tasks: "{{ plan }}"
"""


def test_the_script_function_reads_only_the_secrets_the_pipelines_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a pipeline naming two secrets in a script (one computed name) and one in a generated spec
    path = tmp_path / "secrets.yaml"
    path.write_text(SECRETS_PIPELINE, encoding="utf-8")
    plain = tmp_path / "plain.yaml"
    plain.write_text(
        textwrap.dedent("""\
        name: plain
        tasks:
          - {name: a, type: python_task, script: return 1}
        """),
        encoding="utf-8",
    )
    base = load_template((REPO / "infra" / "template.base.yaml").read_text(encoding="utf-8"))
    plans = [build_plan(read_pipeline(path)), build_plan(read_pipeline(plain))]
    # WHEN the template is built
    names = secret_names(plans)
    roles = {
        name: translate(build_template(base, chosen), monkeypatch)["Resources"]["PythonTaskFunctionRole"]
        for name, chosen in (("both", plans), ("plain", plans[1:]))
    }
    # THEN exactly the literal names are granted, each as its own ARN (a computed name is not)
    assert names == ["generated_key", "team/db-password", "webhook_token"]
    secrets = {resource for action, resource in grants(roles["both"]) if action.startswith("secretsmanager:")}
    assert secrets == {f"secretsmanager:secret:orchestrator/{name}-??????" for name in names}
    # AND a stack whose pipelines name no secret reads none
    assert not any(action.startswith("secretsmanager:") for action, _ in grants(roles["plain"]))


# -- what the code does within those permissions -----------------------------------------------


@pytest.fixture
def bucket(aws: None) -> str:
    from orchestrator.aws.clients import aws_client

    aws_client("s3").create_bucket(Bucket="orchestrator-test")
    return "orchestrator-test"


def test_payloads_are_written_once_and_checked_when_read(bucket: str) -> None:
    from botocore.exceptions import ClientError

    from orchestrator.aws.clients import aws_client

    s3 = aws_client("s3")
    value = {"rows": list(range(2000))}
    # GIVEN a value offloaded twice (a retried attempt): one object, no error
    first = payloads.offload(value, "run-1", "task", bucket, limit=0)
    assert payloads.offload(value, "run-1", "task", bucket, limit=0) == first
    key = first["$payload"].removeprefix(f"s3://{bucket}/")
    # WHEN a script tries the only write its role allows (If-None-Match) over it, it is refused
    with pytest.raises(ClientError, match="PreconditionFailed"):
        s3.put_object(Bucket=bucket, Key=key, Body=b'{"rows": []}', IfNoneMatch="*")
    assert payloads.resolve(first) == value
    # AND an object changed by a principal that may overwrite, or planted under a key before
    # its value was written, is refused when read, never used
    s3.put_object(Bucket=bucket, Key=key, Body=b'{"rows": []}')
    with pytest.raises(OrchestratorError, match="altered"):
        payloads.resolve(first)
    # (the key of a value another run will write is predictable from its content and run id)
    predicted = f"payloads/run-2/task-{'0' * payloads.DIGEST_LENGTH}.json"
    s3.put_object(Bucket=bucket, Key=predicted, Body=b'"planted"', IfNoneMatch="*")
    with pytest.raises(OrchestratorError, match="altered"):
        payloads.load(bucket, predicted)


def test_audit_entries_get_unguessable_ids_and_are_never_overwritten(
    template_table: Callable[[str, str], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import ClientError

    from orchestrator.aws.clients import aws_client

    template_table("AuditTable", "audit")
    log = DynamoAuditLog("audit", aws_client("dynamodb"))
    log.append({"execution_id": "run-1", "pipeline_id": "p", "event": "first"})
    log.append({"execution_id": "run-1", "pipeline_id": "p", "event": "second"})
    items = aws_client("dynamodb").scan(TableName="audit")["Items"]
    ids = [item["entry_id"]["S"] for item in items]
    assert len(set(ids)) == 2 and all(re.fullmatch(r"\d{10}\.\d{6}#[0-9a-f]{32}", i) for i in ids)
    # WHEN a writer comes up with an existing entry's id (here: forced), the write fails
    fixed = uuid.UUID(ids[0].split("#")[1])
    monkeypatch.setattr("orchestrator.stores.dynamodb.time.time", lambda: float(ids[0].split("#")[0]))
    monkeypatch.setattr("orchestrator.stores.dynamodb.uuid.uuid4", lambda: fixed)
    with pytest.raises(ClientError, match="ConditionalCheckFailed"):
        log.append({"execution_id": "run-1", "pipeline_id": "p", "event": "forged"})
    assert [e["event"] for e in log.query(run="run-1")] == ["first", "second"]
