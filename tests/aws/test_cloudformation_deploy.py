"""Issue 5: template.yaml, after the SAM transform, deploys into moto's CloudFormation and runs.

moto has no CloudFormation support for the HTTP API (`AWS::ApiGatewayV2::*`) or bucket
policies: those resources are skipped by moto; everything a run needs (tables, bucket, KMS
key, roles, layer, functions, state machines) is created by the stack itself.
"""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from typing import Any
from unittest import mock

import pytest

from conftest import PIPELINES, REPO
from orchestrator.aws.emulator import FUNCTION_FOLDERS, _Invoker, _load_handler
from orchestrator.aws.execution import document_from_execution
from orchestrator.aws.moto_fixes import aws_json_paths
from orchestrator.aws.stepfunctions_engine import execution_input
from orchestrator.plan import build_plan
from orchestrator.runtime.inputs import resolve_inputs
from orchestrator.spec.loading import read_pipeline

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Tried to parse"),  # resources moto cannot create
]
samtranslator = pytest.importorskip("samtranslator", reason="aws-sam-translator is a development dependency")

LOGICAL_IDS = {
    "python_task": "PythonTaskFunction",
    "llm_task": "LlmTaskFunction",
    "web_search_task": "WebSearchTaskFunction",
    "dispatch": "DispatchFunction",
}


def _transformed(bucket: str) -> dict[str, Any]:
    """template.yaml through the SAM transform, with code in S3 and definitions inline."""
    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    template = yaml_parse((REPO / "template.yaml").read_text())
    for resource in template["Resources"].values():
        properties = resource.get("Properties", {})
        if "CodeUri" in properties:
            properties["CodeUri"] = f"s3://{bucket}/function.zip"
        if "ContentUri" in properties:
            properties["ContentUri"] = f"s3://{bucket}/layer.zip"
        if "DefinitionUri" in properties:
            definition = (REPO / properties.pop("DefinitionUri")).read_text()
            properties["Definition"] = json.loads(definition)

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    return dict(transform(template, {}, NoManagedPolicies()))


def test_the_deployed_stack_runs_a_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from moto import mock_aws
    from moto.awslambda.models import LambdaFunction

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "ORCHESTRATOR_PIPELINES_DIR": str(PIPELINES),
    }.items():
        monkeypatch.setenv(key, value)
    # (moto, with its reading of `$[0].status` put right as the emulator does: AWS's reading)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}), aws_json_paths():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="artifacts")
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as bundle:
            bundle.writestr("app.py", "def lambda_handler(event, context):\n    return event\n")
        for key in ("function.zip", "layer.zip"):
            s3.put_object(Bucket="artifacts", Key=key, Body=archive.getvalue())
        # GIVEN the stack deployed from template.yaml
        cloudformation = boto3.client("cloudformation")
        cloudformation.create_stack(
            StackName="orchestrator",
            TemplateBody=json.dumps(_transformed("artifacts")),
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
        )
        stack = cloudformation.describe_stacks(StackName="orchestrator")["Stacks"][0]
        assert stack["StackStatus"] == "CREATE_COMPLETE"
        physical = {
            r["LogicalResourceId"]: r["PhysicalResourceId"]
            for r in cloudformation.list_stack_resources(StackName="orchestrator")["StackResourceSummaries"]
        }
        for table in ("State", "Cache", "Audit", "Runs"):
            monkeypatch.setenv(f"ORCHESTRATOR_{table.upper()}_TABLE", physical[f"{table}Table"])
        monkeypatch.setenv("ORCHESTRATOR_KMS_KEY_ID", physical["InputsKey"])
        monkeypatch.setenv("ORCHESTRATOR_PAYLOAD_BUCKET", physical["PayloadBucket"])
        handlers = {
            physical[LOGICAL_IDS[kind]].rsplit(":", 1)[-1]: _load_handler(
                REPO / "functions" / folder / "app.py"
            )
            for kind, folder in FUNCTION_FOLDERS.items()
        }
        invoker = _Invoker(handlers)
        # WHEN the demo pipeline's state machine, as the stack created it, runs
        plan = build_plan(read_pipeline(PIPELINES / "demo.yaml"))
        # moto's CloudFormation creates state machines in its plain Step Functions backend, which
        # does not execute, and leaves DefinitionSubstitutions unapplied: the executing backend
        # gets the stack's own definition and role, with the stack's function ARNs substituted.
        from moto.stepfunctions.models import stepfunctions_backends

        created = stepfunctions_backends["123456789012"]["us-east-1"].describe_state_machine(
            physical["DemoStateMachine"]
        )
        definition = created.definition
        for logical_id in LOGICAL_IDS.values():  # moto does not apply DefinitionSubstitutions
            arn = boto3.client("lambda").get_function(FunctionName=physical[logical_id])["Configuration"]
            definition = definition.replace("${" + logical_id + "Arn}", arn["FunctionArn"])
        # (where a Distributed Map would read its items and write its results: issue 12)
        definition = definition.replace("${PayloadBucket}", physical["PayloadBucket"])
        assert "${" not in definition
        machine = boto3.client("stepfunctions").create_state_machine(
            name="demo-from-stack", definition=definition, roleArn=created.roleArn
        )["stateMachineArn"]
        run = {"id": "from-the-stack", "pipeline": "demo", "started_at": "2026-01-01T00:00:00+00:00"}
        sfn = boto3.client("stepfunctions")
        with mock.patch.object(
            LambdaFunction, "_invoke_lambda", lambda self, event=None: invoker(self, event)
        ):
            started = sfn.start_execution(
                stateMachineArn=machine,
                name="from-the-stack",
                input=json.dumps(execution_input(plan, resolve_inputs(plan.pipeline, {}), run)),
            )
            deadline = time.monotonic() + 120
            while (described := sfn.describe_execution(executionArn=started["executionArn"]))[
                "status"
            ] == "RUNNING":
                assert time.monotonic() < deadline
                time.sleep(0.02)
            history = sfn.get_execution_history(executionArn=started["executionArn"], maxResults=1000)[
                "events"
            ]
    # THEN it succeeds with the document the embedded engine gives
    assert described["status"] == "SUCCEEDED", json.dumps(history[-3:], default=str)[:2000]
    output = json.loads(described["output"])
    document = document_from_execution(plan, "from-the-stack", described["status"], output, history)
    assert document["status"] == "succeeded"
    assert output["result"]["value"]["best_word"] == "retry"
    assert document["tasks"]["countdown"] == {"status": "succeeded", "attempts": 1, "error": None}
    assert os.environ["ORCHESTRATOR_STATE_TABLE"].startswith("orchestrator-StateTable")
