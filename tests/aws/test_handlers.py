"""Issue 4 item 5 and issue 5 item 4: the Lambda handlers with real event shapes.

Task and dispatch functions get the `lambda:invoke` payloads of docs/aws.md (tests/events/sfn_*)
and run the bundled pipelines' tasks through the same runtime as the embedded engine. The
trigger functions get API Gateway HTTP API v2, S3 and EventBridge Scheduler events and start
executions of state machines in moto's Step Functions.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fakes.fixtures import fake_openai, fake_search  # noqa: F401
from fakes.servers import FakeOpenAIServer, FakeResponse, FakeSearchServer
from orchestrator.aws import task_function, triggers
from orchestrator.aws.deployed import find_task
from orchestrator.aws.dispatch import dispatch
from orchestrator.aws.events import DispatchEvent, TaskEvent, TaskFailure
from orchestrator.aws.task_function import run_task_event
from orchestrator.sealing.kms import KmsSealer
from orchestrator.sealing.local import LocalSealer
from orchestrator.settings import lambda_settings
from orchestrator.spec.models import ForLoop, PythonTask
from orchestrator.stores.factory import open_stores

Handler = Callable[[str, dict[str, Any]], Any]
Event = Callable[[str], dict[str, Any]]
Machines = Callable[..., dict[str, str]]


def executions(sfn: Any, arn: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = sfn.list_executions(stateMachineArn=arn)["executions"]
    return found


def execution_input(sfn: Any, execution_arn: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(sfn.describe_execution(executionArn=execution_arn)["input"])
    return loaded


def api_post(event: Event, pipeline_id: str, body: Any, key: str | None = None) -> dict[str, Any]:
    request = event("apigw_http_post_run")
    request["rawPath"] = request["requestContext"]["http"]["path"] = f"/pipelines/{pipeline_id}/runs"
    request["pathParameters"] = {"id": pipeline_id}
    request["body"] = body if isinstance(body, str) else json.dumps(body)
    if key is None:
        del request["headers"]["idempotency-key"]
    else:
        request["headers"]["idempotency-key"] = key
    return request


def api_get(event: Event, run_id: str) -> dict[str, Any]:
    request = event("apigw_http_get_run")
    request["rawPath"] = request["requestContext"]["http"]["path"] = f"/runs/{run_id}"
    request["pathParameters"] = {"run_id": run_id}
    return request


def body_of(response: dict[str, Any]) -> Any:
    return json.loads(response["body"])


# -- references --------------------------------------------------------------------------------


def test_find_task_walks_dotted_references_through_the_models() -> None:
    # GIVEN the bundled demo pipeline  WHEN references are looked up  THEN each names its task
    plan, task, name = find_task("demo", "tasks.1.tasks.0")
    assert (plan.pipeline_id, name, type(task)) == ("demo", "score", PythonTask)
    assert isinstance(find_task("demo", "tasks.1")[1], ForLoop)
    _, fallback, fallback_name = find_task("hierarchical_error_handling", "tasks.0.error_handling.fallback")
    assert fallback_name == "critical_task" and fallback.model == "gpt-3.5-turbo"  # type: ignore[attr-defined]


def test_lambda_state_folder_is_in_tmp_when_unset() -> None:
    on_lambda = lambda_settings({"AWS_LAMBDA_FUNCTION_NAME": "f"})
    assert on_lambda.home.name == ".orchestrator" and on_lambda.home.parent.name == "tmp"
    assert lambda_settings({"AWS_LAMBDA_FUNCTION_NAME": "f", "ORCHESTRATOR_HOME": "/x"}).home == Path("/x")


# -- task functions ----------------------------------------------------------------------------


def test_python_task_returns_its_output(handler: Handler, event: Event) -> None:
    # GIVEN the payload of the demo's first task  WHEN the python function runs it
    result = handler("python_task", event("sfn_python_task"))
    # THEN it returns the task record the state machine stores
    assert result == {
        "status": "succeeded",
        "output": {
            "topic": "Step Functions",
            "words": ["plan", "run", "retry", "cache", "deploy"],
            "long": True,
        },
    }


def test_python_task_in_a_loop_sees_its_item_and_index(handler: Handler, event: Event) -> None:
    # GIVEN a for_loop body task with `loop` from the Map iteration
    result = handler("python_task", event("sfn_python_task_loop"))
    # THEN the item variable of the loop is the payload's item
    assert result["output"] == {"word": "retry", "score": sum(map(ord, "retry")) % 97}


def test_a_task_ending_a_body_hands_back_the_outputs_it_is_given_to_collect(
    handler: Handler, event: Event
) -> None:
    # GIVEN the last task of a loop's body, given the other tasks' outputs to collect (one a
    # reference to S3: handed back as it is, not read)
    payload = event("sfn_python_task_loop")
    collect = {"first": {"n": 1}, "second": {"$payload": "s3://bucket/payloads/run/second.json"}}
    payload["collect"] = collect
    result = handler("python_task", payload)
    # THEN its record comes with them, untouched, beside its own output
    assert result["collected"] == collect
    assert result["output"] == {"word": "retry", "score": sum(map(ord, "retry")) % 97}


def test_python_task_reads_outputs_from_task_records(handler: Handler, event: Event) -> None:
    # GIVEN `tasks` records (as `$.tasks`) instead of an `outputs` map
    result = handler("python_task", event("sfn_python_task_records"))
    # THEN context.get_task_output reads them
    assert result == {"status": "succeeded", "output": "run"}


def test_failing_script_raises_an_exception_named_by_its_error_type(handler: Handler, event: Event) -> None:
    # GIVEN input_validation's first task with an input its script rejects
    payload = event("sfn_llm_task") | {"task": "tasks.0", "outputs": {}}
    payload["inputs"] = {"user_input": "<script>"}
    # WHEN the python function runs it THEN Lambda would report errorType "ValueError"
    with pytest.raises(TaskFailure) as raised:
        handler("python_task", payload)
    assert type(raised.value).__name__ == "ValueError"
    assert "invalid characters" in str(raised.value)


def test_undefined_template_name_raises_template_error(handler: Handler, event: Event) -> None:
    payload = event("sfn_python_task")
    payload["inputs"] = {"words": []}  # no `topic`: the script's {{ topic }} is undefined
    with pytest.raises(TaskFailure) as raised:
        handler("python_task", payload)
    assert type(raised.value).__name__ == "TemplateError"
    assert "topic" in str(raised.value)


def test_task_timeout_is_the_engines_error_type(handler: Handler, event: Event, pipelines_dir: Path) -> None:
    (pipelines_dir / "slow.yaml").write_text(
        textwrap.dedent(
            """
            name: slow
            tasks:
              - name: wait
                type: python_task
                timeout: 0.1
                script: |
                  import time
                  time.sleep(1)
            """
        )
    )
    payload = event("sfn_python_task") | {"pipeline": "slow", "inputs": {}}
    payload["run"]["pipeline"] = "slow"
    with pytest.raises(TaskFailure) as raised:
        handler("python_task", payload)
    assert type(raised.value).__name__ == "TaskTimeout"


def test_cached_task_returns_cached_until_no_cache(handler: Handler, event: Event) -> None:
    # GIVEN caching_strategy's task with a cache_key
    payload = event("sfn_python_task") | {"pipeline": "caching_strategy", "task": "tasks.0"}
    payload["inputs"] = {"input_data": "abc", "simulated_work_seconds": 0}
    payload["run"]["pipeline"] = "caching_strategy"
    first = handler("python_task", payload)
    # WHEN it runs again THEN the cache answers; with run.no_cache it runs again
    assert handler("python_task", payload) == {"status": "cached", "output": first["output"]}
    payload["run"]["no_cache"] = True
    assert handler("python_task", payload)["status"] == "succeeded"


def test_child_pipeline_tasks_read_pipeline_outputs(handler: Handler, event: Event) -> None:
    # GIVEN the consolidating task of pipeline_parallelism, passed the pipeline_group's output
    children = {
        "data_analysis_pipeline": {"describe_dataset": {"completeness": 1.0}},
        "model_training_pipeline": {"fit_line": {"slope": 2.0}},
        "validation_pipeline": {"check_rows": {"valid_share": 0.5}},
    }
    payload = event("sfn_dispatch_child_inputs")
    for key in ("action", "child"):
        del payload[key]
    payload |= {"task": "tasks.1", "outputs": {"launch_parallel_pipelines": children}}
    # WHEN it runs THEN context.get_pipeline_output finds each child's outputs
    output = handler("python_task", payload)["output"]
    assert output["combined_score"] == 0.75 and output["model"] == {"fit_line": {"slope": 2.0}}


def test_child_pipeline_task_runs_under_the_engines_child_run_id(event: Event) -> None:
    payload = event("sfn_python_task") | {"pipeline": "secure_credentials", "task": "tasks.1"}
    payload["inputs"] = {"input_data": "x"}
    # GIVEN a task of a child pipeline compiled into demo's state machine (run.pipeline is the parent)
    run_task_event(TaskEvent.model_validate(payload))
    # THEN its context sees the run id the engine gives a child run
    entries = open_stores(lambda_settings()).audit.query(pipeline="secure_credentials")
    assert entries[-1]["execution_id"] == "demo-20240524T194714-0a1b2c3d.secure_credentials"


def test_llm_task_calls_the_model(
    handler: Handler,
    event: Event,
    fake_openai: FakeOpenAIServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN an OpenAI-compatible endpoint  WHEN the llm function runs input_validation's llm task
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    fake_openai.enqueue("Processed safely.")
    result = handler("llm_task", event("sfn_llm_task"))
    # THEN its output is the reply, and the rendered prompt carried the previous task's output
    assert result == {"status": "succeeded", "output": "Processed safely."}
    assert "Quarterly report for team alpha-2" in json.dumps(fake_openai.bodies[-1])


@pytest.mark.parametrize(
    ("retries", "retry_after", "slept"),
    [
        (0, "12", [7.0]),  # the state machine waits 5 s before retry 1: the function waits 7 more
        (1, "12", [2.0]),  # ... and 10 s before retry 2
        (2, "12", []),  # ... and 20 s before retry 3: nothing left to wait
        (5, "12", []),  # the last of 1 + 5 attempts: no retry follows, it fails at once
        (0, "600", [25.0]),  # at most the invocation's 30 s left, less 5 s to fail in
    ],
)
def test_the_llm_function_waits_out_what_retry_after_asks_beyond_the_state_machine(
    handler: Handler,
    event: Event,
    fake_openai: FakeOpenAIServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    retries: int,
    retry_after: str,
    slept: list[float],
) -> None:
    # GIVEN hierarchical_error_handling's critical task (5 retries, 5 s doubling) as attempt
    # `retries + 1`, and a model that answers 429 with a Retry-After
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    fake_openai.enqueue(FakeResponse(status=429, headers={"Retry-After": retry_after}))
    sleeps: list[float] = []
    monkeypatch.setattr(task_function, "time", SimpleNamespace(sleep=sleeps.append))
    payload = event("sfn_llm_task") | {
        "pipeline": "hierarchical_error_handling",
        "task": "tasks.0",
        "inputs": {"critical_prompt": "status?", "simplified_prompt": "status"},
        "outputs": {},
        "retries": retries,
    }
    payload["run"] |= {"pipeline": "hierarchical_error_handling"}
    # WHEN the llm function runs the attempt
    with pytest.raises(TaskFailure) as raised:
        handler("llm_task", payload)
    # THEN it failed with LLMRateLimited after one request, having slept only what is needed
    assert type(raised.value).__name__ == "LLMRateLimited"
    assert fake_openai.request_count == 1
    assert sleeps == slept


def test_web_search_task_given_inline_by_a_dynamic_group(
    handler: Handler,
    event: Event,
    fake_search: FakeSearchServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_SEARCH_URL", fake_search.url)
    result = handler("web_search_task", event("sfn_web_search_task"))
    assert result["status"] == "succeeded"
    assert result["output"]["query"] == "serverless workflow engines" and result["output"]["results"]


# -- dispatch ----------------------------------------------------------------------------------


def test_dispatch_condition(handler: Handler, event: Event) -> None:
    payload = event("sfn_dispatch_condition")
    assert handler("dispatch", payload) == {"value": True}
    payload["tasks"]["prepare"]["output"]["long"] = False
    assert handler("dispatch", payload) == {"value": False}


def test_dispatch_items_renders_iterate_over(handler: Handler, event: Event) -> None:
    assert handler("dispatch", event("sfn_dispatch_items")) == ["plan", "run", "retry"]


def test_dispatch_items_that_are_not_a_list_fail(handler: Handler, event: Event) -> None:
    payload = event("sfn_dispatch_items")
    payload["tasks"]["prepare"]["output"]["words"] = 7
    with pytest.raises(TaskFailure) as raised:
        handler("dispatch", payload)
    assert type(raised.value).__name__ == "InvalidLoopItems"


def test_dispatch_while_advances_until_max_iterations(handler: Handler, event: Event) -> None:
    # GIVEN iterative_improvement's loop (max 5) whose body never meets the quality bar
    payload = event("sfn_dispatch_while")
    answer = handler("dispatch", payload)
    assert answer == {"index": 0, "state": {}, "continue": True}
    seen = []
    while answer["continue"]:
        # WHEN the state machine reports each iteration's last output
        payload["loop"] = answer
        payload["last"] = {"quality_met": False, "iteration": answer["index"] + 1}
        answer = handler("dispatch", payload)
        seen.append(answer["index"])
    # THEN it stops at max_iterations with the last state
    assert seen == [1, 2, 3, 4, 5]
    assert answer == {"index": 5, "state": {"quality_met": False, "iteration": 5}, "continue": False}


def test_dispatch_while_stops_when_the_condition_fails(handler: Handler, event: Event) -> None:
    payload = event("sfn_dispatch_while") | {"loop": {"index": 1, "state": {}}, "last": {"quality_met": True}}
    assert handler("dispatch", payload) == {"index": 2, "state": {"quality_met": True}, "continue": False}
    payload["last"] = None  # a body whose last task was skipped: the state resets, as on the engine
    assert handler("dispatch", payload) == {"index": 2, "state": {}, "continue": True}


def test_dispatch_expand_validates_and_names_the_specs(handler: Handler, event: Event) -> None:
    expanded = handler("dispatch", event("sfn_dispatch_expand"))
    assert [(item["index"], item["type"], item["name"]) for item in expanded] == [
        (0, "web_search_task", "search_sources"),
        (1, "llm_task", "summarize_findings"),
        (2, "python_task", "task_2"),
    ]
    assert expanded[2]["spec"]["name"] == "task_2"


def test_dispatch_expand_with_an_invalid_spec_fails(handler: Handler, event: Event) -> None:
    payload = event("sfn_dispatch_expand")
    payload["tasks"]["generate_workflow"]["output"]["task_list"].append({"name": "x", "type": "shell_task"})
    with pytest.raises(TaskFailure) as raised:
        handler("dispatch", payload)
    assert type(raised.value).__name__ == "InvalidTaskSpec"
    assert "generated task 3" in str(raised.value)


def test_dispatch_expand_names_each_generated_task_s_function(handler: Handler, event: Event) -> None:
    payload = event("sfn_dispatch_expand")
    payload["functions"] = {"python_task": "py-arn", "llm_task": "llm-arn", "web_search_task": "web-arn"}
    expanded = handler("dispatch", payload)
    assert [item["function"] for item in expanded] == ["web-arn", "llm-arn", "py-arn"]
    # a type the state machine gives no function for is refused before any task runs
    del payload["functions"]["python_task"]
    with pytest.raises(TaskFailure) as raised:
        handler("dispatch", payload)
    assert type(raised.value).__name__ == "InvalidTaskSpec"
    assert "generated task 2" in str(raised.value) and "not a python_task" in str(raised.value)


def test_dispatch_outputs_renders_the_outputs_section(handler: Handler, event: Event) -> None:
    assert handler("dispatch", event("sfn_dispatch_outputs")) == {
        "topic": "Step Functions",
        "best_word": "retry",
        "total_score": 200,
        "note": "more than three words: 4",
        "ticks": 3,
    }


def test_dispatch_render_fallback_value(handler: Handler, event: Event) -> None:
    payload = event("sfn_dispatch_render")
    answer = handler("dispatch", payload)
    assert answer == {"status": "skipped", "output": "The platform is healthy.", "error": payload["error"]}


def test_dispatch_child_inputs_resolves_against_the_child(handler: Handler, event: Event) -> None:
    assert handler("dispatch", event("sfn_dispatch_child_inputs")) == {"dataset": [12.0, 15.5, 9.0]}


# -- the HTTP API ------------------------------------------------------------------------------


def test_post_starts_an_execution(handler: Handler, event: Event, state_machines: Machines, sfn: Any) -> None:
    # GIVEN the demo deployed  WHEN a run is posted
    arns = state_machines("demo")
    response = handler("api", api_post(event, "demo", {"inputs": {"topic": "step functions"}}))
    # THEN one execution starts, named by the run id, with the contract's execution input
    assert response["statusCode"] == 202, response
    started = body_of(response)
    (execution,) = executions(sfn, arns["demo"])
    assert execution["name"] == started["run_id"] and started["run_id"].startswith("demo-")
    document = execution_input(sfn, execution["executionArn"])
    assert document["inputs"] == {
        "topic": "step functions",
        "words": ["plan", "run", "retry", "cache", "deploy"],
    }
    assert document["run"]["id"] == started["run_id"] and document["run"]["pipeline"] == "demo"
    assert document["run"]["user_id"] == "3f1c2b9e-7a44-4c1b-9a8e-0d2f6e5a4b3c" and document["tasks"] == {}


def test_post_with_invalid_inputs_is_a_400_naming_the_input(
    handler: Handler, event: Event, state_machines: Machines, sfn: Any
) -> None:
    arns = state_machines("demo", "input_validation")
    response = handler("api", api_post(event, "demo", {"inputs": {"words": "not a list"}}))
    assert response["statusCode"] == 400 and "input 'words' must be an array" in body_of(response)["error"]
    response = handler("api", api_post(event, "input_validation", {"inputs": {"bogus": 1}}))
    assert response["statusCode"] == 400 and "input 'bogus' is not declared" in body_of(response)["error"]
    assert executions(sfn, arns["demo"]) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"topic": "x"}', "'topic'"),
        ('{"inputs": []}', "'inputs'"),
    ],
)
def test_post_with_a_bad_body_is_a_400(
    handler: Handler, event: Event, state_machines: Machines, body: str, message: str
) -> None:
    state_machines("demo")
    response = handler("api", api_post(event, "demo", body))
    assert response["statusCode"] == 400 and message in body_of(response)["error"]


def test_post_to_an_unknown_pipeline_is_a_404(
    handler: Handler, event: Event, state_machines: Machines
) -> None:
    state_machines("demo")
    for pipeline_id in ("nope", "..%2Fetc", "caching_strategy"):  # the last exists but is not deployed
        response = handler("api", api_post(event, pipeline_id, {}))
        assert response["statusCode"] == 404, pipeline_id
        assert "error" in body_of(response)


def test_repeated_idempotency_key_returns_the_same_run(
    handler: Handler, event: Event, state_machines: Machines, sfn: Any
) -> None:
    arns = state_machines("demo")
    first = handler("api", api_post(event, "demo", {}, key="order-42"))
    again = handler("api", api_post(event, "demo", {}, key="order-42"))
    other = handler("api", api_post(event, "demo", {}, key="order-43"))
    assert (first["statusCode"], again["statusCode"]) == (202, 200)
    assert body_of(first)["run_id"] == body_of(again)["run_id"] != body_of(other)["run_id"]
    assert body_of(first)["started_at"] == body_of(again)["started_at"]
    assert len(executions(sfn, arns["demo"])) == 2


def test_get_run_returns_its_status(handler: Handler, event: Event, state_machines: Machines) -> None:
    state_machines("demo", "input_validation")
    run_id = body_of(handler("api", api_post(event, "demo", {})))["run_id"]
    response = handler("api", api_get(event, run_id))
    assert response["statusCode"] == 200
    assert body_of(response) | {"started_at": None} == {
        "run_id": run_id,
        "pipeline": "demo",
        "status": "running",
        "started_at": None,
        "stopped_at": None,
        "tasks": None,
        "outputs": None,
        "result": None,
        "error": None,
        "engine": "stepfunctions",
        "duration": None,
        "usage": {"llm_calls": 0, "tokens_in": 0, "tokens_out": 0, "cost_usd": None},
        "telemetry": {},
    }
    assert handler("api", api_get(event, "demo-20200101T000000-deadbeef"))["statusCode"] == 404


def test_the_run_view_has_the_telemetry_the_task_functions_wrote(
    handler: Handler,
    event: Event,
    state_machines: Machines,
    template_table: Callable[[str, str], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a run started through the API, and the stack's tables
    for kind in ("state", "cache", "audit", "telemetry"):
        template_table(f"{kind.title()}Table", f"orchestrator-{kind}")
        monkeypatch.setenv(f"ORCHESTRATOR_{kind.upper()}_TABLE", f"orchestrator-{kind}")
    state_machines("demo")
    run_id = body_of(handler("api", api_post(event, "demo", {})))["run_id"]
    # WHEN the task function runs an attempt of the loop's body task, iteration 2, in that run
    payload = event("sfn_python_task_loop")
    payload["run"]["id"] = run_id
    assert handler("python_task", payload)["status"] == "succeeded"
    # THEN the run view shows it under the loop, while the run goes on
    view = body_of(handler("api", api_get(event, run_id)))
    assert view["status"] == "running" and view["duration"] is None
    loop = view["telemetry"]["score_words"]
    assert [child["key"] for child in loop["children"]] == ["2"]
    (attempt,) = loop["children"][0]["tasks"]["score"]["attempt_log"]
    assert (attempt["attempt"], attempt["status"], attempt["error"]) == (1, "succeeded", None)
    assert loop["children"][0]["tasks"]["score"]["inputs"]["script"].startswith('word = "retry"')


def test_describe_run_reads_statuses_and_outputs_from_the_execution_output() -> None:
    # GIVEN a finished execution whose state has a degraded task and a parallel group
    output = {
        "tasks": {
            "a": {"status": "succeeded", "output": 1},
            "g": {
                "status": "succeeded",
                "output": {"b": 2},
                "children": {"b": {"status": "failed", "output": None}},
            },
        },
        "result": {"value": {"answer": 1}},
    }

    class FakeStepFunctions:
        def describe_execution(self, executionArn: str) -> dict[str, Any]:
            assert executionArn.endswith(":execution:orchestrator-demo:demo-1")
            return {
                "status": "SUCCEEDED",
                "input": json.dumps({"run": {"started_at": "2024-05-24T00:00:00+00:00"}}),
                "output": json.dumps(output),
                "startDate": datetime(2024, 5, 24, tzinfo=UTC),
                "stopDate": datetime(2024, 5, 24, 0, 1, tzinfo=UTC),
            }

    machines = {"demo": "arn:aws:states:us-east-1:123456789012:stateMachine:orchestrator-demo"}
    # WHEN it is described THEN the run reads like a run document
    view = triggers.describe_run("demo-1", sfn_client=FakeStepFunctions(), state_machines=machines)
    assert view["status"] == "degraded"
    assert view["tasks"] == {"a": "succeeded", "g": "succeeded", "b": "failed"}
    assert view["outputs"] == {"a": 1, "g": {"b": 2}, "b": None} and view["result"] == {"answer": 1}


# -- sensitive inputs --------------------------------------------------------------------------


def test_sensitive_inputs_are_sealed_in_the_execution_input_and_opened_by_the_task(
    handler: Handler, event: Event, state_machines: Machines, sfn: Any
) -> None:
    # GIVEN secure_credentials, whose api_key and database_password are sensitive
    arns = state_machines("secure_credentials")
    secrets = {"api_key": "sk-live-0123456789", "database_password": "hunter2-hunter2"}
    response = handler("api", api_post(event, "secure_credentials", {"inputs": secrets}))
    assert response["statusCode"] == 202
    (execution,) = executions(sfn, arns["secure_credentials"])
    raw = sfn.describe_execution(executionArn=execution["executionArn"])["input"]
    # THEN neither value is in the execution input: both are sealed
    assert all(value not in raw for value in secrets.values())
    document = json.loads(raw)
    assert document["inputs"]["api_key"]["by"] == "local" and document["inputs"]["input_data"]
    # WHEN the task function gets them from the state THEN it opens them and redacts its output
    payload = {"pipeline": "secure_credentials", "task": "tasks.0", "inputs": document["inputs"]}
    result = handler("python_task", payload | {"run": document["run"]})
    assert result["status"] == "succeeded" and result["output"]["status"] == "success"


def test_leaked_secret_in_an_output_or_error_is_redacted(tmp_path: Path) -> None:
    sealer = LocalSealer(tmp_path)
    sealed = {"sealed": sealer.seal("secure_credentials", "api_key", "sk-live-xyz"), "by": "local"}
    payload: dict[str, Any] = {
        "pipeline": "secure_credentials",
        "task": "tasks.0",
        "spec": {"type": "python_task", "script": "return {'echo': inputs['api_key']}"},
        "inputs": {"api_key": sealed, "database_password": "", "input_data": "x"},
        "run": {"id": "r", "pipeline": "secure_credentials", "started_at": "now"},
    }
    result = run_task_event(TaskEvent.model_validate(payload), sealer=sealer)
    assert result["output"] == {"echo": "***"}
    payload["spec"]["script"] = "raise ValueError('bad key ' + inputs['api_key'])"
    with pytest.raises(TaskFailure, match=r"bad key \*\*\*"):
        run_task_event(TaskEvent.model_validate(payload), sealer=sealer)


def test_a_generated_task_is_carried_with_its_own_error_policy(tmp_path: Path) -> None:
    """A generated task's policy exists only once it is generated: the function carries it
    whole (retries, on_failure, fallback_value), as the engine does, and answers the record."""
    counter = tmp_path / "attempts"
    script = (
        f"import pathlib\npath = pathlib.Path({str(counter)!r})\n"
        "n = int(path.read_text()) + 1 if path.exists() else 1\npath.write_text(str(n))\n"
        "if n < 3:\n    raise ValueError('not yet')\nreturn n"
    )
    payload: dict[str, Any] = {
        "pipeline": "secure_credentials",
        "task": "tasks.0",
        "name": "generated",
        "spec": {
            "type": "python_task",
            "script": script,
            "error_handling": {"retry_count": 2, "retry_delay": 0},
        },
        "inputs": {"api_key": "", "database_password": "", "input_data": "x"},
        "run": {"id": "r", "pipeline": "secure_credentials", "started_at": "now"},
    }
    # WHEN it fails twice with two retries THEN the third attempt's output is its record
    assert run_task_event(TaskEvent.model_validate(payload)) == {"status": "succeeded", "output": 3}
    # WHEN it fails under on_failure: skip THEN it is skipped with its fallback_value
    payload["spec"] = {
        "type": "python_task",
        "script": "raise ValueError('down')",
        "error_handling": {"on_failure": "skip", "fallback_value": {"ok": False}},
    }
    assert run_task_event(TaskEvent.model_validate(payload)) == {"status": "skipped", "output": {"ok": False}}
    # WHEN it fails under abort_pipeline THEN the function fails with its error (and so its group)
    payload["spec"]["error_handling"] = {"on_failure": "abort_pipeline"}
    with pytest.raises(TaskFailure, match="down") as raised:
        run_task_event(TaskEvent.model_validate(payload))
    assert type(raised.value).__name__ == "ValueError"


def test_kms_sealer_binds_values_to_pipeline_and_input(aws: None) -> None:
    from orchestrator.aws.clients import aws_client

    key_id = aws_client("kms").create_key(Description="orchestrator inputs")["KeyMetadata"]["KeyId"]
    sealer = KmsSealer(key_id)
    token = sealer.seal("secure_credentials", "api_key", {"nested": "sk-live"})
    assert "sk-live" not in token
    assert KmsSealer(None).unseal("secure_credentials", "api_key", token) == {"nested": "sk-live"}
    with pytest.raises(Exception, match="InvalidCiphertext"):
        KmsSealer(None).unseal("secure_credentials", "database_password", token)


def test_kms_sealed_run_is_opened_by_the_task(
    handler: Handler, event: Event, state_machines: Machines, sfn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.aws.clients import aws_client

    monkeypatch.setenv("ORCHESTRATOR_KMS_KEY_ID", aws_client("kms").create_key()["KeyMetadata"]["Arn"])
    arns = state_machines("secure_credentials")
    started = triggers.start_run("secure_credentials", {"api_key": "k-1", "database_password": "p-1"})
    document = execution_input(sfn, started.execution_arn)
    assert document["inputs"]["database_password"]["by"] == "kms"
    assert executions(sfn, arns["secure_credentials"])[0]["name"] == started.run_id
    payload = {"pipeline": "secure_credentials", "task": "tasks.0", "inputs": document["inputs"]}
    assert handler("python_task", payload | {"run": document["run"]})["status"] == "succeeded"


def test_child_inputs_carrying_a_parent_secret_are_sealed(event: Event, pipelines_dir: Path) -> None:
    (pipelines_dir / "parent.yaml").write_text(
        textwrap.dedent(
            """
            name: parent
            input_variables:
              token: {type: string, sensitive: true}
            tasks:
              - name: children
                type: pipeline_group
                pipelines:
                  - pipeline: child.yaml
                    inputs: {greeting: "hello {{ token }}", plain: "hi"}
            """
        )
    )
    (pipelines_dir / "child.yaml").write_text(
        "name: child\ninput_variables: {greeting: {type: string}, plain: {type: string}}\n"
        "tasks: [{name: t, type: python_task, script: 'return 1'}]\n"
    )
    payload = {
        "action": "child_inputs",
        "pipeline": "parent",
        "task": "tasks.0",
        "child": 0,
        "inputs": {"token": "s3cr3t"},
        "run": {"id": "r", "pipeline": "parent", "started_at": "now"},
    }
    inputs = dispatch(DispatchEvent.model_validate(payload))
    assert inputs["plain"] == "hi" and inputs["greeting"]["by"] == "local"
    assert "s3cr3t" not in json.dumps(inputs)


# -- S3 and schedules ---------------------------------------------------------------------------


UPLOADS_PIPELINE = """
name: uploads
input_variables:
  bucket: {type: string}
  key: {type: string}
  size: {type: integer}
  etag: {type: string}
triggers:
  s3: {prefix: "incoming/", suffix: ".csv"}
tasks:
  - name: read
    type: python_task
    script: return "{{ key }}"
"""


def test_s3_upload_starts_one_run_even_when_delivered_twice(
    handler: Handler, event: Event, state_machines: Machines, sfn: Any, pipelines_dir: Path
) -> None:
    # GIVEN a deployed pipeline with an S3 trigger on incoming/*.csv
    (pipelines_dir / "uploads.yaml").write_text(UPLOADS_PIPELINE)
    arns = state_machines("uploads")
    notification = event("s3_object_created")
    # WHEN the same notification arrives twice
    first = handler("upload_trigger", notification)
    second = handler("upload_trigger", notification)
    # THEN one execution runs, with the object's bucket, key (decoded), size and etag
    (execution,) = executions(sfn, arns["uploads"])
    assert first["runs"][0]["run_id"] == second["runs"][0]["run_id"] == execution["name"]
    assert (first["runs"][0]["created"], second["runs"][0]["created"]) == (True, False)
    assert execution_input(sfn, execution["executionArn"])["inputs"] == {
        "bucket": "orchestrator-uploads-123456789012",
        "key": "incoming/sales report 2024-05.csv",
        "size": 1024,
        "etag": "d41d8cd98f00b204e9800998ecf8427e",
    }
    # AND an object outside the prefix starts nothing
    notification["Records"][0]["s3"]["object"]["key"] = "archive/old.csv"
    assert handler("upload_trigger", notification) == {"runs": [], "rejected": []}


def test_schedule_starts_a_run_with_its_inputs(
    handler: Handler, event: Event, state_machines: Machines, sfn: Any
) -> None:
    arns = state_machines("demo")
    target_input = event("scheduler_target_input")
    started = handler("schedule_trigger", target_input)
    assert handler("schedule_trigger", target_input)["run_id"] == started["run_id"]  # a retried delivery
    (execution,) = executions(sfn, arns["demo"])
    document = execution_input(sfn, execution["executionArn"])
    assert document["inputs"] == {"topic": "nightly digest", "words": ["alpha", "beta"]}
    assert document["run"]["user_id"] == "schedule"


def test_schedule_for_an_unknown_pipeline_says_so(handler: Handler, state_machines: Machines) -> None:
    state_machines("demo")
    with pytest.raises(triggers.PipelineNotFoundError, match="no pipeline 'gone' is deployed"):
        handler("schedule_trigger", {"pipeline": "gone", "inputs": {}})
