"""Issue 12: per-task resources hold on AWS.

`orchestrator build` emits a variant of a task function for each size the tasks ask for (their
`memory_limit`, `cpu_limit` and timeout), the compiled state machine calls each task on its
function, and the task function runs a limited task in the same sandbox as the embedded engine,
so a breach fails with the same `MemoryLimitExceeded` / `TaskTimeout` and goes through the same
retries, fallback and `on_failure` (`aws.functions`, `runtime.sandbox`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import CliResult, agreed_tasks, spec_record
from orchestrator.aws.build import build_app, render_app
from orchestrator.aws.events import TaskFailure
from orchestrator.aws.functions import (
    BASE_FUNCTIONS,
    MB_PER_VCPU,
    MEMORY_HEADROOM_MB,
    TIMEOUT_MARGIN_S,
    FunctionSize,
    base_function,
    function_placeholder,
    function_variants,
    generated_task_sizes,
    task_function,
    with_variants,
)
from orchestrator.aws.sam import GetAtt, Ref, TemplateError, build_template, load_template
from orchestrator.plan import build_plan
from orchestrator.spec.loading import parse_pipeline, read_pipeline

REPO = Path(__file__).resolve().parents[2]
Cli = Callable[..., CliResult]
Handler = Callable[[str, dict[str, Any]], Any]
Event = Callable[[str], dict[str, Any]]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux-only")

LIMITS = """\
name: Limits
tasks:
  - name: small
    type: python_task
    timeout: 30
    resource_limits: {memory_limit: "256MB"}
    script: return 1
  - name: large
    type: python_task
    resource_limits: {memory_limit: "1GB", cpu_limit: 1}
    script: return 2
  - name: plain
    type: python_task
    script: return 3
  - name: like_small
    type: python_task
    timeout: 30
    resource_limits: {memory_limit: "256MB"}
    error_handling:
      fallback:
        type: python_task
        resource_limits: {memory_limit: "128MB"}
        script: return "fallback"
    script: return 4
"""
NESTED = """\
name: Nested
resource_limits: {memory_limit: "512MB", timeout: 120}
tasks:
  - name: each
    type: for_loop
    iterate_over: [1, 2]
    item_variable: n
    tasks:
      - name: square
        type: python_task
        script: return {{ n }} * {{ n }}
  - name: ask
    type: llm_task
    prompt: "Say hi"
    resource_limits: {cpu_limit: 2}
"""
# what each task of LIMITS runs on, by its reference in the file
LIMITS_FUNCTIONS = {
    "tasks.0": "PythonTaskFunction512MB35s",  # 256 MB + 256 MB headroom; 30 s + 5 s margin
    "tasks.1": "PythonTaskFunction1769MB",  # 1 GB + headroom < one vCPU's 1,769 MB
    "tasks.2": "PythonTaskFunction",  # no limits: the hand-written function
    "tasks.3": "PythonTaskFunction512MB35s",  # the same size as `small`: the same function
    "tasks.3.error_handling.fallback": "PythonTaskFunction384MB",  # the fallback's own limit
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "infra").mkdir()
    shutil.copy(REPO / "infra" / "template.base.yaml", tmp_path / "infra" / "template.base.yaml")
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "limits.yaml").write_text(LIMITS, encoding="utf-8")
    (tmp_path / "pipelines" / "nested.yaml").write_text(NESTED, encoding="utf-8")
    return tmp_path


def load(root: Path, name: str = "template.yaml") -> dict[str, Any]:
    return load_template((root / name).read_text(encoding="utf-8"))


def invocations(value: Any) -> Iterator[tuple[str, str]]:
    """(task reference, FunctionName) of every lambda:invoke state of a definition, nested ones too."""
    if isinstance(value, dict):
        parameters = value.get("Parameters")
        if value.get("Type") == "Task" and isinstance(parameters, dict):
            task = parameters.get("Payload", {}).get("task")
            if isinstance(task, str) and "action" not in parameters["Payload"]:
                yield task, parameters["FunctionName"]
        for item in value.values():
            yield from invocations(item)
    elif isinstance(value, list):
        for item in value:
            yield from invocations(item)


# -- the template --------------------------------------------------------------------------------


def test_build_emits_a_variant_per_size_and_keeps_the_base_function_for_tasks_without_limits(
    project: Path,
) -> None:
    # GIVEN tasks of different memory limits and timeouts, one without any, and a fallback with its own
    build_app(project)
    template = load(project)
    base = load(project, "infra/template.base.yaml")["Resources"]
    functions = {
        name: resource["Properties"]
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }
    # THEN one variant per distinct size, beside the hand-written functions (and none for `plain`)
    variants = set(functions) - set(base)
    assert variants == {
        "PythonTaskFunction512MB35s",
        "PythonTaskFunction1769MB",
        "PythonTaskFunction384MB",
        "PythonTaskFunction768MB125s",  # nested.yaml: the pipeline's 512 MB and 120 s
        "LlmTaskFunction3538MB125s",  # nested.yaml: cpu_limit 2 -> 2 x 1,769 MB
    }
    # the hand-written functions keep their size: no other task pays for the largest one
    for name in BASE_FUNCTIONS.values():
        assert functions[name] == base[name]["Properties"]
    expected_sizes = {
        "PythonTaskFunction512MB35s": (256 + MEMORY_HEADROOM_MB, 30 + TIMEOUT_MARGIN_S),
        "PythonTaskFunction1769MB": (MB_PER_VCPU, base["PythonTaskFunction"]["Properties"]["Timeout"]),
        "PythonTaskFunction384MB": (
            128 + MEMORY_HEADROOM_MB,
            base["PythonTaskFunction"]["Properties"]["Timeout"],
        ),
        "PythonTaskFunction768MB125s": (512 + MEMORY_HEADROOM_MB, 120 + TIMEOUT_MARGIN_S),
        "LlmTaskFunction3538MB125s": (2 * MB_PER_VCPU, 120 + TIMEOUT_MARGIN_S),
    }
    for name, (memory, timeout) in expected_sizes.items():
        variant = functions[name]
        origin = base[base_function(name)]["Properties"]
        assert (variant["MemorySize"], variant["Timeout"]) == (memory, timeout), name
        # the same code, layer and environment (Globals), and the base function's own role
        assert variant["Role"] == GetAtt(f"{base_function(name)}Role.Arn")
        kept = {key: value for key, value in variant.items() if key not in {"MemorySize", "Timeout", "Role"}}
        copied = {
            key: value for key, value in origin.items() if key not in {"MemorySize", "Timeout", "Policies"}
        }
        assert kept.pop("Description").startswith(copied.pop("Description").rstrip("."))
        assert kept == copied


def test_each_state_machine_calls_and_may_invoke_exactly_its_tasks_functions(project: Path) -> None:
    build_app(project)
    template = load(project)
    definition = json.loads((project / "statemachine" / "limits.asl.json").read_text(encoding="utf-8"))
    # THEN the compiled ASL calls each task, and the fallback, on its own function
    assert dict(invocations(definition)) == {
        reference: "${" + function + "Arn}" for reference, function in LIMITS_FUNCTIONS.items()
    }
    # AND the state machine gets those functions substituted and may invoke them, and no other
    properties = template["Resources"]["LimitsStateMachine"]["Properties"]
    assert {f"{function}Arn" for function in LIMITS_FUNCTIONS.values()} <= set(
        properties["DefinitionSubstitutions"]
    )
    substitutions = properties["DefinitionSubstitutions"]
    assert substitutions["PythonTaskFunction1769MBArn"] == GetAtt("PythonTaskFunction1769MB.Arn")
    assert "LlmTaskFunction3538MB125sArn" not in substitutions  # nested.yaml's, not this machine's
    invoked = {
        policy["LambdaInvokePolicy"]["FunctionName"]
        for policy in properties["Policies"]
        if isinstance(policy, dict) and "LambdaInvokePolicy" in policy
    }
    assert invoked == {Ref(function) for function in LIMITS_FUNCTIONS.values()}
    nested = json.loads((project / "statemachine" / "nested.asl.json").read_text(encoding="utf-8"))
    assert dict(invocations(nested)) == {
        "tasks.0.tasks.0": "${PythonTaskFunction768MB125sArn}",  # in a loop body: the pipeline's limits
        "tasks.1": "${LlmTaskFunction3538MB125sArn}",
    }


def test_the_checked_in_template_sizes_the_resource_aware_pipelines_task() -> None:
    template = load(REPO)
    definition = json.loads(
        (REPO / "statemachine" / "resource_management.asl.json").read_text(encoding="utf-8")
    )
    # its task asks for 1 GB and one CPU, in a pipeline whose run may last 30 minutes
    assert dict(invocations(definition)) == {"tasks.0": "${PythonTaskFunction1769MB900sArn}"}
    properties = template["Resources"]["PythonTaskFunction1769MB900s"]["Properties"]
    assert (properties["MemorySize"], properties["Timeout"]) == (MB_PER_VCPU, 900)
    assert template["Resources"]["PythonTaskFunction"]["Properties"]["MemorySize"] == 512


def test_a_definition_calling_a_function_the_template_lacks_is_an_error(project: Path) -> None:
    plan = build_plan(read_pipeline(project / "pipelines" / "limits.yaml"))
    definition = {
        "StartAt": "x",
        "States": {"x": {"Type": "Task", "Parameters": {"FunctionName": "${NopeArn}"}}},
    }
    base = load(project, "infra/template.base.yaml")
    with pytest.raises(TemplateError, match=r"\$\{NopeArn\}"):
        build_template(base, [plan], {plan.pipeline_id: definition})


def test_variants_are_listed_once_each_in_a_stable_order(project: Path) -> None:
    assert render_app(project) == render_app(project)
    plans = [build_plan(read_pipeline(path)) for path in sorted((project / "pipelines").iterdir())]
    variants = function_variants(plans)
    assert list(variants) == sorted(variants)
    assert len(variants) == 5  # `small` and `like_small` share one


# -- naming and sizing rules ---------------------------------------------------------------------


def pipeline_of(text: str, tmp_path: Path) -> Any:
    return parse_pipeline(textwrap.dedent(text), tmp_path / "p.yaml").pipeline


@pytest.mark.parametrize(
    ("task", "function"),
    [
        ({}, "PythonTaskFunction"),
        ({"timeout": 10}, "PythonTaskFunction15s"),
        ({"resource_limits": {"timeout": 9.5}}, "PythonTaskFunction15s"),
        ({"resource_limits": {"memory_limit": "100MB"}}, "PythonTaskFunction356MB"),
        ({"resource_limits": {"memory_limit": 100}}, "PythonTaskFunction356MB"),  # a number: megabytes
        ({"resource_limits": {"cpu_limit": 0.5}}, "PythonTaskFunction885MB"),
        ({"resource_limits": {"cpu_limit": 4, "memory_limit": "8GB"}}, "PythonTaskFunction8448MB"),
        ({"resource_limits": {"memory_limit": "64GB"}, "timeout": 3600}, "PythonTaskFunction10240MB900s"),
        (
            {"type": "web_search_task", "query": "q", "resource_limits": {"memory_limit": "1GB"}},
            "WebSearchTaskFunction1280MB",
        ),
    ],
)
def test_a_tasks_function_is_named_by_the_size_it_needs(
    task: dict[str, Any], function: str, tmp_path: Path
) -> None:
    spec = {"name": "t", "type": "python_task", "script": "return 1", **task}
    if spec["type"] != "python_task":
        del spec["script"]
    pipeline = parse_pipeline(json.dumps({"name": "p", "tasks": [spec]}), tmp_path / "p.yaml").pipeline
    assert task_function(pipeline.tasks[0], pipeline) == function
    assert function_placeholder(pipeline.tasks[0], pipeline) == "${" + function + "Arn}"
    assert base_function(function) == function.split("Function")[0] + "Function"


def test_the_pipelines_limits_apply_to_tasks_that_set_none_and_theirs_win(tmp_path: Path) -> None:
    pipeline = pipeline_of(
        """
        name: p
        resource_limits: {memory_limit: "1GB", cpu_limit: 2}
        tasks:
          - {name: inherits, type: python_task, script: return 1}
          - {name: own, type: python_task, script: return 2, resource_limits: {cpu_limit: 0.25}}
        """,
        tmp_path,
    )
    inherits, own = pipeline.tasks
    assert task_function(inherits, pipeline) == f"PythonTaskFunction{2 * MB_PER_VCPU}MB"
    assert task_function(own, pipeline) == f"PythonTaskFunction{1024 + MEMORY_HEADROOM_MB}MB"


def test_function_placeholder_takes_a_plan_node(tmp_path: Path) -> None:
    (tmp_path / "limits.yaml").write_text(LIMITS, encoding="utf-8")
    plan = build_plan(read_pipeline(tmp_path / "limits.yaml"))
    placeholders = {name: function_placeholder(node, plan.pipeline) for name, node in plan.body.nodes.items()}
    assert placeholders["plain"] == "${PythonTaskFunctionArn}"
    assert placeholders["large"] == "${PythonTaskFunction1769MBArn}"


def test_generated_tasks_run_on_base_functions_sized_for_the_pipelines_limits(tmp_path: Path) -> None:
    (tmp_path / "dynamic.yaml").write_text(
        textwrap.dedent(
            """
            name: dynamic
            resource_limits: {memory_limit: "2GB"}
            tasks:
              - name: make
                type: dynamic_task_group
                tasks: [{name: one, type: python_task, script: return 1}]
            """
        ),
        encoding="utf-8",
    )
    # a generated task exists only at run time: it runs on its type's base function, sized for
    # the limits it gets from its pipeline (and held by the sandbox, as any limited task)
    sizes = generated_task_sizes([build_plan(read_pipeline(tmp_path / "dynamic.yaml"))])
    assert sizes == {base: FunctionSize(2048 + MEMORY_HEADROOM_MB, None) for base in BASE_FUNCTIONS.values()}


def test_an_account_with_base_functions_only_runs_variants_on_them() -> None:
    arns = {"${PythonTaskFunctionArn}": "arn:python", "${DispatchFunctionArn}": "arn:dispatch"}
    text = json.dumps(
        ["${PythonTaskFunction512MB35sArn}", "${PythonTaskFunctionArn}", "${DispatchFunctionArn}"]
    )
    assert with_variants(text, arns) == {**arns, "${PythonTaskFunction512MB35sArn}": "arn:python"}


# -- the task function ---------------------------------------------------------------------------


def write_pipeline_file(folder: Path, name: str, text: str) -> None:
    (folder / f"{name}.yaml").write_text(textwrap.dedent(text), encoding="utf-8")


@linux_only
def test_the_task_function_holds_a_memory_limit_as_the_engine_does(
    handler: Handler, event: Event, pipelines_dir: Path
) -> None:
    write_pipeline_file(
        pipelines_dir,
        "greedy",
        """
        name: greedy
        tasks:
          - name: hog
            type: python_task
            resource_limits: {memory_limit: "200MB"}
            script: |
              return len(bytearray(600 * 1024 * 1024))
          - name: modest
            type: python_task
            resource_limits: {memory_limit: "200MB"}
            script: |
              import os
              return [len(bytearray(10 * 1024 * 1024)), os.getpid()]
        """,
    )
    payload = event("sfn_python_task") | {"pipeline": "greedy", "inputs": {}}
    payload["run"]["pipeline"] = "greedy"
    # WHEN the python function runs a task that allocates past its limit (the real event shape)
    with pytest.raises(TaskFailure) as raised:
        handler("python_task", payload)
    # THEN Lambda reports the engine's error type, which Retry and Catch match
    assert type(raised.value).__name__ == "MemoryLimitExceeded"
    assert str(raised.value) == "task 'hog' exceeded its memory limit of 200 MB"
    # AND a task within its limit succeeds, in a child process of its own
    result = handler("python_task", payload | {"task": "tasks.1"})
    assert result["status"] == "succeeded"
    assert result["output"][0] == 10 * 1024 * 1024 and result["output"][1] != os.getpid()


# -- on both engines, through the CLI ------------------------------------------------------------


def run_both(cli: Cli, path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, CliResult]:
    """`orchestrator run FILE --json` on each engine, each with a state folder of its own."""
    results = {}
    for engine in ("local", "stepfunctions"):
        monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path / engine))
        results[engine] = cli("run", path, "--json", "--engine", engine)
    return results


def comparable(document: dict[str, Any]) -> dict[str, Any]:
    found = {key: document[key] for key in ("status", "outputs", "result", "error")}
    return {**found, "tasks": agreed_tasks(document)}


@linux_only
@pytest.mark.slow
def test_a_memory_breach_is_memory_limit_exceeded_with_retries_and_fallback_on_both_engines(
    cli: Cli, write_pipeline: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a task over its memory limit with one retry then skip, one rescued by a fallback task,
    # and a task that fits under the same limit
    path = write_pipeline(
        """
        name: greedy
        tasks:
          - name: hog
            type: python_task
            resource_limits: {memory_limit: "200MB"}
            error_handling: {retry_count: 1, retry_delay: 0, on_failure: skip, fallback_value: "too big"}
            script: |
              block = bytearray(600 * 1024 * 1024)
              return len(block)
          - name: rescued
            type: python_task
            resource_limits: {memory_limit: "200MB"}
            error_handling:
              fallback:
                type: python_task
                script: return "the fallback ran"
            script: |
              return len(bytearray(600 * 1024 * 1024))
          - name: modest
            type: python_task
            resource_limits: {memory_limit: "200MB"}
            script: return len(bytearray(10 * 1024 * 1024))
          - name: after
            type: python_task
            script: return [{{ hog }}, {{ rescued }}, {{ modest }}]
        """
    )
    # WHEN it runs on the embedded engine and on the compiled state machine
    results = run_both(cli, path, tmp_path, monkeypatch)
    local, remote = (results[engine].document() for engine in ("local", "stepfunctions"))
    # THEN both give the same run document: MemoryLimitExceeded, retried once, then skipped;
    # the fallback task's output; the modest task's
    assert comparable(remote) == comparable(local)
    assert spec_record(remote["tasks"]["hog"]) == {
        "status": "skipped",
        "attempts": 2,
        "error": {"type": "MemoryLimitExceeded", "message": "task 'hog' exceeded its memory limit of 200 MB"},
    }
    assert remote["tasks"]["rescued"]["status"] == "fallback"
    assert remote["outputs"]["after"] == ["too big", "the fallback ran", 10 * 1024 * 1024]
    assert results["local"].code == results["stepfunctions"].code == 0


@linux_only
@pytest.mark.slow
def test_a_sandboxed_task_past_its_timeout_is_task_timeout_on_both_engines(
    cli: Cli, write_pipeline: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_pipeline(
        """
        name: slowpoke
        tasks:
          - name: first
            type: python_task
            script: return 1
          - name: sleepy
            type: python_task
            depends_on: [first]
            timeout: 1
            resource_limits: {memory_limit: "512MB"}
            script: |
              import time
              time.sleep(30)
        """
    )
    results = run_both(cli, path, tmp_path, monkeypatch)
    local, remote = (results[engine].document() for engine in ("local", "stepfunctions"))
    assert comparable(remote) == comparable(local)
    assert remote["status"] == "failed"
    assert remote["error"] == {
        "task": "sleepy",
        "type": "TaskTimeout",
        "message": "task 'sleepy' exceeded its timeout of 1s",
    }
    assert results["local"].code == results["stepfunctions"].code == 1
