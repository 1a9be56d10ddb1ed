"""The SAM app: template.yaml and statemachine/ are fresh, lint clean, build, and say what the issue asks.

The structural tests read the checked-in `template.yaml` as data (short-form tags become
`Ref`/`GetAtt`/`Sub` objects) and check the promises of issue 4: least-privilege IAM, tables
with TTL, point-in-time recovery and encryption, a private encrypted bucket, an HTTP API with
authentication on, one state machine per pipeline. The builder itself is tested on a project
made in `tmp_path`, whose pipelines have schedules and resource limits the bundled ones lack.
`sam validate --lint` and `sam build` need aws-sam-cli, kept in its own virtual environment
(`make sam-tools` -> `.venv-sam`, or `SAM_CLI=/path/to/sam`); they skip without it, except
in CI, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.aws.build import build_app, compile_file, pipeline_files, stale_files
from orchestrator.aws.functions import (
    LAMBDA_MAX_MEMORY_MB,
    LAMBDA_MAX_TIMEOUT_S,
    MB_PER_VCPU,
    MEMORY_HEADROOM_MB,
    TIMEOUT_MARGIN_S,
    base_function,
    named_functions,
    task_size,
)
from orchestrator.aws.sam import (
    PAYLOAD_BUCKET_NAME,
    STATE_MACHINES_VARIABLE,
    SUBSTITUTED_FUNCTIONS,
    TRIGGER_FUNCTIONS,
    GetAtt,
    Intrinsic,
    Ref,
    Sub,
    TemplateError,
    dump_template,
    load_template,
    pascal_case,
    state_machine_id,
    state_machines_variable,
)
from orchestrator.aws.triggers import parse_scheduled_run
from orchestrator.spec.loading import parse_pipeline, read_pipeline

REPO = Path(__file__).resolve().parents[2]
NO_LAMBDA_PYTHON = 3  # the exit status of scripts/with-lambda-python when python3.12 is missing
FUNCTIONS = {
    "PythonTaskFunction": "python_task",
    "LlmTaskFunction": "llm_task",
    "WebSearchTaskFunction": "web_search_task",
    "DispatchFunction": "dispatch",
    "ApiFunction": "api",
    "UploadTriggerFunction": "upload_trigger",
    "ScheduleTriggerFunction": "schedule_trigger",
}
TABLES = ("StateTable", "CacheTable", "AuditTable", "RunsTable")


def load(root: Path) -> dict[str, Any]:
    return load_template((root / "template.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load(REPO)


def resources_of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: resource for name, resource in template["Resources"].items() if resource["Type"] == kind}


def function_properties(template: dict[str, Any], name: str) -> dict[str, Any]:
    """A function's properties with the template's `Globals.Function` applied, as SAM does
    (mappings merged, lists added, anything else overridden)."""
    merged: dict[str, Any] = merge_globals(
        template.get("Globals", {}).get("Function", {}), template["Resources"][name]["Properties"]
    )
    return merged


def merge_globals(global_value: Any, local_value: Any) -> Any:
    if isinstance(global_value, dict) and isinstance(local_value, dict):
        merged = dict(global_value)
        for key, value in local_value.items():
            merged[key] = merge_globals(global_value[key], value) if key in global_value else value
        return merged
    if isinstance(global_value, list) and isinstance(local_value, list):
        return global_value + local_value
    return local_value


def walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)
    elif isinstance(value, Intrinsic | Sub):
        yield from walk(value.value)


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# -- the checked-in files ----------------------------------------------------------------------


def test_template_and_state_machines_are_fresh() -> None:
    # GIVEN the checked-in template.yaml and statemachine/*.asl.json
    # WHEN they are compared with what the pipelines, infra/ and the compiler produce now
    stale = stale_files(REPO)
    # THEN nothing differs
    assert not stale, (
        f"generated files are stale: {', '.join(stale)}. "
        "Run `orchestrator build` and commit template.yaml and statemachine/."
    )


def test_compile_file_gives_the_checked_in_json() -> None:
    text = compile_file(REPO / "pipelines" / "demo.yaml")
    assert text == (REPO / "statemachine" / "demo.asl.json").read_text(encoding="utf-8")
    assert json.loads(text)["States"]


def test_template_round_trips_through_the_loader_and_dumper(template: dict[str, Any]) -> None:
    text = (REPO / "template.yaml").read_text(encoding="utf-8")
    body = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
    assert dump_template(template) == body
    assert "!Ref '" not in text and "&id" not in text and "*id" not in text


def cfn_lint(folder: Path) -> subprocess.CompletedProcess[str]:
    """`cfn-lint template.yaml` in `folder`, with the cfn-lint of this interpreter's environment."""
    script = Path(sys.executable).parent / "cfn-lint"
    command = (
        [str(script)]
        if script.is_file()
        else [sys.executable, "-c", "import sys; from cfnlint.runner import main; sys.exit(main())"]
    )
    return subprocess.run(
        [*command, "template.yaml"], cwd=folder, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
def test_cfn_lint_passes() -> None:
    result = cfn_lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr


# -- what the template promises ------------------------------------------------------------------


def test_no_iam_statement_allows_everything(template: dict[str, Any]) -> None:
    offending = []
    for node in walk(template["Resources"]):
        if not (isinstance(node, dict) and "Action" in node and "Effect" in node):
            continue
        if node["Effect"] != "Allow":
            continue
        actions = [action for action in as_list(node["Action"]) if isinstance(action, str)]
        resources = as_list(node.get("Resource", []))
        if "*" in actions or ("*" in resources and any(action.endswith(":*") for action in actions)):
            offending.append(node)
    assert not offending


def test_policies_are_policy_templates_statements_or_our_own(template: dict[str, Any]) -> None:
    # A bare AWS managed policy name (AmazonS3FullAccess, AdministratorAccess...) would hide
    # wildcards from the statement check above, so none is allowed.
    own = set(resources_of_type(template, "AWS::IAM::ManagedPolicy"))
    for name, resource in template["Resources"].items():
        for policy in as_list(resource.get("Properties", {}).get("Policies", [])):
            if isinstance(policy, Ref):
                assert policy.name in own, name
            else:
                assert isinstance(policy, dict), f"{name}: {policy!r}"


def test_every_table_has_ttl_point_in_time_recovery_and_encryption(template: dict[str, Any]) -> None:
    tables = resources_of_type(template, "AWS::DynamoDB::Table")
    assert set(TABLES) <= set(tables)
    for name, table in tables.items():
        properties = table["Properties"]
        assert properties["BillingMode"] == "PAY_PER_REQUEST", name
        assert properties["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}, name
        assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}, name
        assert properties["SSESpecification"]["SSEEnabled"] is True, name


def test_bucket_is_private_encrypted_and_expires_payloads(template: dict[str, Any]) -> None:
    (bucket,) = resources_of_type(template, "AWS::S3::Bucket").values()
    properties = bucket["Properties"]
    assert set(properties["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(properties["PublicAccessBlockConfiguration"]) == 4
    (rule,) = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
    expiring = [r for r in properties["LifecycleConfiguration"]["Rules"] if r.get("Prefix") == "payloads/"]
    assert expiring and expiring[0]["Status"] == "Enabled" and "ExpirationInDays" in expiring[0]


def test_http_api_requires_authentication_and_routes_to_the_api_function(template: dict[str, Any]) -> None:
    apis = resources_of_type(template, "AWS::Serverless::HttpApi")
    (api_id,) = apis
    auth = apis[api_id]["Properties"]["Auth"]
    assert auth["DefaultAuthorizer"] == "AWS_IAM" and auth["EnableIamAuthorizer"] is True
    events = function_properties(template, "ApiFunction")["Events"].values()
    routes = {(e["Properties"]["Method"], e["Properties"]["Path"]) for e in events if e["Type"] == "HttpApi"}
    assert routes == {("POST", "/pipelines/{id}/runs"), ("GET", "/runs"), ("GET", "/runs/{run_id}")}
    assert all(e["Properties"]["ApiId"] == Ref(api_id) for e in events)


def test_uploads_trigger_the_upload_function(template: dict[str, Any]) -> None:
    (bucket_id,) = resources_of_type(template, "AWS::S3::Bucket")
    (event,) = function_properties(template, "UploadTriggerFunction")["Events"].values()
    assert event["Type"] == "S3"
    assert event["Properties"]["Bucket"] == Ref(bucket_id)
    assert event["Properties"]["Events"] == "s3:ObjectCreated:*"
    assert event["Properties"]["Filter"]["S3Key"]["Rules"] == [{"Name": "prefix", "Value": "uploads/"}]


def test_functions_share_the_layer_and_are_traced(template: dict[str, Any]) -> None:
    layer = template["Resources"]["RuntimeLayer"]
    assert layer["Properties"]["ContentUri"] == "shared/"
    assert layer["Metadata"]["BuildMethod"] == "python3.12"
    functions = resources_of_type(template, "AWS::Serverless::Function")
    # the hand-written functions, and variants of the task functions sized for limited tasks
    assert set(FUNCTIONS) <= set(functions)
    assert {base_function(name) for name in functions} == set(FUNCTIONS)
    for name in functions:
        folder = FUNCTIONS[base_function(name)]
        properties = function_properties(template, name)
        assert properties["CodeUri"] == f"functions/{folder}/"
        assert properties["Handler"] == "app.lambda_handler"
        assert properties["Runtime"] == "python3.12"
        assert properties["Tracing"] == "Active"
        assert Ref("RuntimeLayer") in properties["Layers"]
        assert 128 <= properties["MemorySize"] <= LAMBDA_MAX_MEMORY_MB
        assert 1 <= properties["Timeout"] <= LAMBDA_MAX_TIMEOUT_S
        assert properties["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]


def test_one_state_machine_per_pipeline(template: dict[str, Any]) -> None:
    machines = resources_of_type(template, "AWS::Serverless::StateMachine")
    sources = [read_pipeline(path) for path in pipeline_files(REPO)]
    assert set(machines) == {state_machine_id(source.pipeline_id) for source in sources}
    log_groups = set(resources_of_type(template, "AWS::Logs::LogGroup"))
    for source in sources:
        properties = machines[state_machine_id(source.pipeline_id)]["Properties"]
        assert properties["Type"] == source.pipeline.workflow_type
        assert properties["DefinitionUri"] == f"statemachine/{source.pipeline_id}.asl.json"
        assert (REPO / properties["DefinitionUri"]).is_file()
        definition = (REPO / properties["DefinitionUri"]).read_text(encoding="utf-8")
        named = named_functions(definition)
        # every base function, and the variants the definition calls; the payload bucket where a
        # Distributed Map reads its items and writes its results (issue 12)
        substitutions = {
            f"{function}Arn": GetAtt(f"{function}.Arn") for function in {*SUBSTITUTED_FUNCTIONS, *named}
        }
        if "${PayloadBucket}" in definition:
            substitutions["PayloadBucket"] = PAYLOAD_BUCKET_NAME  # (named: a !Ref would be a cycle)
        assert properties["DefinitionSubstitutions"] == substitutions
        # a Distributed Map's child executions are started by the state machine itself
        own = [
            policy for policy in properties["Policies"] if isinstance(policy, dict) and "Statement" in policy
        ]
        assert bool(own) == ('"DISTRIBUTED"' in definition)
        assert properties["Tracing"] == {"Enabled": True}
        (destination,) = properties["Logging"]["Destinations"]
        assert destination["CloudWatchLogsLogGroup"]["LogGroupArn"].target.split(".")[0] in log_groups
        invoked = {
            policy["LambdaInvokePolicy"]["FunctionName"].name
            for policy in properties["Policies"]
            if isinstance(policy, dict) and "LambdaInvokePolicy" in policy
        }
        assert invoked == named
        assert f"{state_machine_id(source.pipeline_id)}Arn" in template["Outputs"]


def test_state_machines_name_the_payload_bucket_as_the_functions_do(template: dict[str, Any]) -> None:
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["ORCHESTRATOR_PAYLOAD_BUCKET"] == PAYLOAD_BUCKET_NAME


def test_trigger_functions_know_every_state_machine(template: dict[str, Any]) -> None:
    machines = resources_of_type(template, "AWS::Serverless::StateMachine")
    for function in TRIGGER_FUNCTIONS:
        variables = function_properties(template, function)["Environment"]["Variables"]
        variable = variables[STATE_MACHINES_VARIABLE]
        assert isinstance(variable, Sub) and isinstance(variable.value, str)
        mapping = json.loads(re.sub(r"\$\{(\w+)\}", r"\1", variable.value))
        assert {pipeline_id: state_machine_id(pipeline_id) for pipeline_id in mapping} == mapping
        assert set(mapping.values()) == set(machines)


def test_too_many_pipelines_for_one_lambda_environment_is_an_error() -> None:
    state_machines_variable([f"pipeline_{index}" for index in range(20)])
    with pytest.raises(TemplateError, match="4 KB"):
        state_machines_variable([f"a_rather_long_pipeline_name_{index}" for index in range(40)])


def test_sensitive_inputs_are_sealed_with_a_rotated_key(template: dict[str, Any]) -> None:
    (key_id,) = resources_of_type(template, "AWS::KMS::Key")
    assert template["Resources"][key_id]["Properties"]["EnableKeyRotation"] is True
    for function in FUNCTIONS:
        variables = function_properties(template, function)["Environment"]["Variables"]
        assert variables["ORCHESTRATOR_KMS_KEY_ID"] == Ref(key_id)


def test_outputs_name_the_api_and_the_bucket(template: dict[str, Any]) -> None:
    assert {"ApiUrl", "PayloadBucketName"} <= set(template["Outputs"])


def test_the_layer_carries_the_pipelines() -> None:
    link = REPO / "shared" / "pipelines"
    assert link.is_symlink() and link.resolve() == (REPO / "pipelines").resolve()
    lines = (REPO / "shared" / "requirements.txt").read_text(encoding="utf-8").splitlines()
    requirements = [line.split(">")[0].split("[")[0] for line in lines if line and not line.startswith("#")]
    # boto3 comes with the Lambda runtime; bundling it would only grow the layer
    assert "boto3" not in requirements
    assert {"pydantic", "pyyaml", "jinja2", "aws-lambda-powertools", "httpx2"} <= set(requirements)
    # the LLM client speaks HTTP with httpx2; the openai package is only the tests' reference
    assert "openai" not in requirements


# -- the builder, on a project of its own ------------------------------------------------------

NIGHTLY = """\
name: Nightly report
workflow_type: EXPRESS
resource_limits:
  memory_limit: "3GB"
  timeout: 600
triggers:
  schedule:
    - expression: "cron(0 3 * * ? *)"
      inputs: {topic: nightly}
      description: Every night at three
    - expression: "rate(1 hour)"
tasks:
  - name: fetch
    type: python_task
    script: |
      return "{{ topic }}"
  - name: ask
    type: llm_task
    prompt: "Summarise {{ fetch }}"
    timeout: 2000
    resource_limits:
      cpu_limit: 2
"""
SMALL = """\
name: Small
tasks:
  - name: only
    type: python_task
    resource_limits:
      memory_limit: "64MB"
    script: |
      return 1
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "infra").mkdir()
    shutil.copy(REPO / "infra" / "template.base.yaml", tmp_path / "infra" / "template.base.yaml")
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "nightly-report.yaml").write_text(NIGHTLY, encoding="utf-8")
    (tmp_path / "pipelines" / "small.yaml").write_text(SMALL, encoding="utf-8")
    return tmp_path


def test_build_writes_a_definition_per_pipeline_and_the_template(project: Path) -> None:
    written = build_app(project)
    assert sorted(path.relative_to(project).as_posix() for path in written) == [
        "statemachine/nightly-report.asl.json",
        "statemachine/small.asl.json",
        "template.yaml",
    ]
    assert stale_files(project) == []
    machines = resources_of_type(load(project), "AWS::Serverless::StateMachine")
    assert set(machines) == {"NightlyReportStateMachine", "SmallStateMachine"}
    assert machines["NightlyReportStateMachine"]["Properties"]["Type"] == "EXPRESS"
    assert machines["SmallStateMachine"]["Properties"]["Type"] == "STANDARD"
    assert machines["SmallStateMachine"]["Properties"]["Name"] == Sub("${AWS::StackName}-small")


def test_a_schedule_per_trigger_entry_invokes_the_schedule_trigger(project: Path) -> None:
    build_app(project)
    template = load(project)
    schedules = resources_of_type(template, "AWS::Scheduler::Schedule")
    assert set(schedules) == {"NightlyReportSchedule1", "NightlyReportSchedule2"}
    first = schedules["NightlyReportSchedule1"]["Properties"]
    assert first["ScheduleExpression"] == "cron(0 3 * * ? *)"
    assert first["Description"] == "Every night at three"
    assert first["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert first["Target"]["Arn"] == GetAtt("ScheduleTriggerFunction.Arn")
    assert first["Target"]["RoleArn"] == GetAtt("SchedulerRole.Arn")
    assert json.loads(first["Target"]["Input"]) == {
        "pipeline": "nightly-report",
        "inputs": {"topic": "nightly"},
        "idempotency_key": "<aws.scheduler.schedule-arn>@<aws.scheduler.scheduled-time>",
    }
    # what Scheduler delivers (its context attributes filled in) is what the trigger accepts
    delivered = (
        first["Target"]["Input"]
        .replace(
            "<aws.scheduler.schedule-arn>", "arn:aws:scheduler:us-east-1:123456789012:schedule/default/x"
        )
        .replace("<aws.scheduler.scheduled-time>", "2026-11-25T03:00:00Z")
    )
    accepted = parse_scheduled_run(json.loads(delivered))
    assert (
        accepted.idempotency_key
        == "arn:aws:scheduler:us-east-1:123456789012:schedule/default/x@2026-11-25T03:00:00Z"
    )
    second = json.loads(schedules["NightlyReportSchedule2"]["Properties"]["Target"]["Input"])
    assert second["inputs"] == {}
    # the role the scheduler assumes may invoke the schedule trigger and nothing else
    role = template["Resources"]["SchedulerRole"]["Properties"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "scheduler.amazonaws.com"
    }
    (policy,) = role["Policies"]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Action"] == "lambda:InvokeFunction"
    assert GetAtt("ScheduleTriggerFunction.Arn") in statement["Resource"]


def test_memory_and_timeout_follow_resource_limits(project: Path) -> None:
    base = load_template((project / "infra" / "template.base.yaml").read_text(encoding="utf-8"))
    build_app(project)
    template = load(project)

    def size(name: str) -> tuple[int, int]:
        properties = function_properties(template, name)
        return properties["MemorySize"], properties["Timeout"]

    # the base functions keep their hand-written sizes: no task without limits pays for another's
    for name in ("PythonTaskFunction", "LlmTaskFunction", "WebSearchTaskFunction"):
        written = base["Resources"][name]["Properties"]
        assert size(name) == (written["MemorySize"], written["Timeout"])
    # `fetch`: the pipeline's 3 GB (+ headroom) and 600 s (+ margin)
    assert size("PythonTaskFunction3328MB605s") == (3072 + MEMORY_HEADROOM_MB, 600 + TIMEOUT_MARGIN_S)
    # `ask`: cpu_limit 2 -> 2 x 1769 MB beats the pipeline's 3 GB; 2000 s is capped at Lambda's 900
    assert size("LlmTaskFunction3538MB900s") == (2 * MB_PER_VCPU, LAMBDA_MAX_TIMEOUT_S)
    # `only` (small.yaml): 64 MB asked, no timeout: the base function's stands
    assert size("PythonTaskFunction320MB") == (
        64 + MEMORY_HEADROOM_MB,
        base["Resources"]["PythonTaskFunction"]["Properties"]["Timeout"],
    )


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({}, (None, None)),
        ({"resource_limits": {"memory_limit": "1GB"}}, (1024 + MEMORY_HEADROOM_MB, None)),
        ({"resource_limits": {"memory_limit": "16MB"}}, (16 + MEMORY_HEADROOM_MB, None)),
        ({"resource_limits": {"memory_limit": "64GB"}}, (LAMBDA_MAX_MEMORY_MB, None)),
        ({"resource_limits": {"cpu_limit": 0.5, "memory_limit": "512MB"}}, (885, None)),
        ({"resource_limits": {"cpu_limit": 0.05}}, (128, None)),
        ({"resource_limits": {"cpu_limit": 8}}, (LAMBDA_MAX_MEMORY_MB, None)),
        ({"timeout": 10.2}, (None, 11 + TIMEOUT_MARGIN_S)),
        ({"resource_limits": {"timeout": 5000}}, (None, LAMBDA_MAX_TIMEOUT_S)),
    ],
)
def test_task_size(limits: dict[str, Any], expected: tuple[int | None, int | None], tmp_path: Path) -> None:
    task = {"name": "t", "type": "python_task", "script": "return 1", **limits}
    text = json.dumps({"name": "p", "tasks": [task]})
    pipeline = parse_pipeline(text, tmp_path / "p.yaml").pipeline
    size = task_size(pipeline.tasks[0], pipeline)
    assert (size.memory_mb, size.timeout_s) == expected


def test_stale_files_name_changed_missing_and_orphaned_files(project: Path) -> None:
    build_app(project)
    # GIVEN a changed pipeline and a definition whose pipeline is gone
    (project / "pipelines" / "small.yaml").write_text(SMALL.replace("Small", "Smaller"), encoding="utf-8")
    (project / "statemachine" / "gone.asl.json").write_text("{}\n", encoding="utf-8")
    (project / "statemachine" / "nightly-report.asl.json").unlink()
    # THEN all three are stale, and a build puts everything right
    stale = stale_files(project)
    assert stale == sorted(stale)
    assert {"statemachine/gone.asl.json", "statemachine/nightly-report.asl.json", "template.yaml"} <= set(
        stale
    )
    build_app(project)
    assert stale_files(project) == []
    assert not (project / "statemachine" / "gone.asl.json").exists()


def test_build_output_is_deterministic(project: Path) -> None:
    build_app(project)
    first = (project / "template.yaml").read_bytes()
    (project / "template.yaml").unlink()
    build_app(project)
    assert (project / "template.yaml").read_bytes() == first


def test_pipeline_ids_must_make_valid_names(project: Path) -> None:
    assert pascal_case("data_analysis-pipeline") == "DataAnalysisPipeline"
    shutil.copy(project / "pipelines" / "small.yaml", project / "pipelines" / "small pipeline.yaml")
    with pytest.raises(TemplateError, match="letters, digits"):
        build_app(project)


def test_clashing_logical_ids_are_an_error(project: Path) -> None:
    shutil.copy(project / "pipelines" / "small.yaml", project / "pipelines" / "Small.yaml")
    with pytest.raises(TemplateError, match="SmallStateMachine"):
        build_app(project)


@pytest.mark.slow
def test_cfn_lint_passes_on_a_template_with_schedules_and_a_deploy_config(project: Path) -> None:
    deploy_config = (
        "llm:\n  api_key_secret: a\n  models: {m: {api_key_secret: b}}\nsearch: {api_key_secret: c}\n"
    )
    (project / "infra" / "config.yaml").write_text(deploy_config, encoding="utf-8")
    build_app(project)
    result = cfn_lint(project)
    assert result.returncode == 0, result.stdout + result.stderr


# -- aws-sam-cli -------------------------------------------------------------------------------


def sam_cli() -> str:
    """The `sam` executable: $SAM_CLI, else .venv-sam/bin/sam; skip without it (fail in CI)."""
    candidate = os.environ.get("SAM_CLI") or str(REPO / ".venv-sam" / "bin" / "sam")
    found = shutil.which(candidate)
    if found:
        return found
    message = f"aws-sam-cli not found at {candidate}: run `make sam-tools` (or set SAM_CLI)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def sam_environment() -> dict[str, str]:
    """The environment for `sam`: no telemetry and a region."""
    environment = dict(os.environ, SAM_CLI_TELEMETRY="0")
    environment.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return environment


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sam_validate_lint_passes() -> None:
    result = subprocess.run(
        [sam_cli(), "validate", "--lint", "--template", "template.yaml"],
        cwd=REPO,
        env=sam_environment(),
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sam_build_succeeds_and_the_layer_carries_package_and_pipelines(tmp_path: Path) -> None:
    missing = [f"functions/{folder}/app.py" for folder in FUNCTIONS.values()]
    missing = [handler for handler in missing if not (REPO / handler).is_file()]
    assert not missing, f"template.yaml names handlers that do not exist: {', '.join(missing)}"
    build_dir = tmp_path / "build"
    # `make build` runs sam the same way: with python3.12, the layer's runtime, put on PATH
    build = [sam_cli(), "build", "--template", "template.yaml", "--build-dir", str(build_dir)]
    result = subprocess.run(
        [str(REPO / "scripts" / "with-lambda-python"), *build],
        cwd=REPO,
        env=sam_environment(),
        capture_output=True,
        text=True,
        timeout=880,
        check=False,
    )
    if result.returncode == NO_LAMBDA_PYTHON and not os.environ.get("CI"):
        pytest.skip(result.stderr)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    layer = build_dir / "RuntimeLayer" / "python"
    assert (layer / "orchestrator" / "__init__.py").is_file()
    assert (layer / "pipelines" / "demo.yaml").is_file()
    # the deploy config, where the functions' ORCHESTRATOR_CONFIG looks for it
    assert (layer / "deploy_config.yaml").read_bytes() == (
        REPO / "shared" / "deploy_config.yaml"
    ).read_bytes()
    assert (layer / "pydantic").is_dir() and (layer / "aws_lambda_powertools").is_dir()
    for name in FUNCTIONS:
        assert (build_dir / name / "app.py").is_file(), f"{name} was not built"
