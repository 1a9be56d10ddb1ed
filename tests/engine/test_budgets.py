"""Issue 15, budgets: `budget: {max_tokens, max_cost_usd}` on a pipeline or a task stops LLM calls
once spent, through the CLI against the fake OpenAI server.

A pipeline budget stops the third call of a chain with `BudgetExceeded`, through the task's
policy, in a sandboxed child process too, and the same document comes from the emulated Step
Functions; a resumed run keeps what it spent; a for_loop of 30 iterations, 10 at a time, never
spends past its pipeline's budget nor makes more calls than it allows; a task budget inside a
loop covers the repair calls of each iteration separately; a fallback catches
`BudgetExceeded`; a cost budget needs priced models; a replayed run is refused the same call;
`validate` names every mistake's place.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import CliResult, agreed_tasks
from fakes.fixtures import fake_openai  # noqa: F401
from fakes.servers import FakeOpenAIServer, FakeResponse

Cli = Callable[..., CliResult]
Write = Callable[..., Path]

CHAIN = """
    name: chain
    budget: {max_tokens: 25}
    tasks:
      - {name: one, type: llm_task, prompt: "say hi", max_tokens: 10}
      - {name: two, type: llm_task, prompt: "say hi", max_tokens: 10, depends_on: [one]}
      - name: three
        type: llm_task
        prompt: "say hi"
        max_tokens: 10
        depends_on: [two]
        error_handling:
          retry_count: 2
          retry_delay: 0
          on_failure: continue_with_degraded_service
          fallback_value: over budget
"""
"""Each call reserves 20 tokens ("say hi": 2 + 8 for its message, 10 for the reply) and spends 4
(the fake server counts words): the third finds 8 spent, and 8 + 20 > 25."""
SANDBOXED = CHAIN.replace(
    "depends_on: [two]", "depends_on: [two]\n        resource_limits: {memory_limit: 1GB}"
)
"""The chain with its third task in a sandboxed child process, which the budgets reach too."""


@pytest.fixture
def llm(fake_openai: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> FakeOpenAIServer:  # noqa: F811
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    return fake_openai


def run(cli: Cli, path: Path, *arguments: str) -> dict[str, Any]:
    result = cli("run", path, "--json", *arguments)
    assert result.code in (0, 1), result.stderr
    return result.document()


def test_a_pipeline_budget_stops_the_third_call_of_a_chain(
    cli: Cli, write_pipeline: Write, llm: FakeOpenAIServer
) -> None:
    # GIVEN a budget that two calls of a chain of three leave too little of
    path = write_pipeline(CHAIN)
    # WHEN it runs
    document = run(cli, path)
    # THEN the third task fails with BudgetExceeded before its call, once (not retried), under
    # its policy, and its error says which budget, its limit and what was spent
    assert len(llm.requests) == 2
    assert document["status"] == "degraded"
    three = document["tasks"]["three"]
    assert (three["status"], three["attempts"], document["outputs"]["three"]) == ("failed", 1, "over budget")
    assert three["error"]["type"] == "BudgetExceeded"
    assert three["error"]["message"] == (
        "the budget of pipeline 'chain' (max_tokens 25) has 8 tokens spent or reserved and this call "
        "needs up to 20: no call was made"
    )
    assert three["attempt_log"][0]["llm_calls"] == []
    assert document["usage"]["tokens_in"] + document["usage"]["tokens_out"] == 8
    # AND the stored document says the same
    shown = cli("runs", "show", document["run_id"])
    assert shown.document()["tasks"]["three"]["error"] == three["error"]


@pytest.mark.slow
def test_a_sandboxed_task_is_refused_the_same_on_the_emulated_step_functions(
    run_on_both_engines: Callable[..., dict[str, CliResult]], write_pipeline: Write, llm: FakeOpenAIServer
) -> None:
    results = run_on_both_engines(write_pipeline(SANDBOXED))
    local, aws = (results[engine].document() for engine in ("local", "stepfunctions"))
    assert "resource_limits" in SANDBOXED and local["tasks"]["three"]["error"]["type"] == "BudgetExceeded"
    assert agreed_tasks(aws) == agreed_tasks(local)
    assert len(llm.requests) == 4


def test_a_for_loop_never_spends_past_its_pipeline_budget(cli: Cli, write_pipeline: Write) -> None:
    # GIVEN 30 iterations, 10 at a time, each a slow call reserving 16 tokens and spending 4,
    # under a pipeline budget of 100 tokens
    with FakeOpenAIServer(reply=lambda body: FakeResponse(text="fine thanks", delay=0.05)) as server:
        path = write_pipeline(
            """
            name: fan
            budget: {max_tokens: 100}
            tasks:
              - name: each
                type: for_loop
                iterate_over: "{{ range(30) | list }}"
                max_concurrency: 10
                tasks:
                  - name: ask
                    type: llm_task
                    prompt: "item {{ item }}"
                    max_tokens: 5
                    error_handling: {on_failure: continue_with_degraded_service}
            """
        )
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("OPENAI_BASE_URL", server.base_url)
            patch.setenv("OPENAI_API_KEY", "sk-test")
            document = run(cli, path)
        calls = len(server.requests)
    # THEN the calls made spent at most the budget, no more were made than it allows, and
    # every iteration it refused failed with BudgetExceeded without a call
    assert document["usage"]["llm_calls"] == calls
    assert document["usage"]["tokens_in"] + document["usage"]["tokens_out"] == 4 * calls <= 100
    assert calls >= 100 // 16  # the first ten reservations: as many as the budget holds
    iterations = [child["tasks"]["ask"] for child in document["tasks"]["each"]["children"]]
    assert len(iterations) == 30
    refused = [it for it in iterations if it["status"] == "failed"]
    assert all(it["error"]["type"] == "BudgetExceeded" for it in refused)
    assert len(refused) == 30 - calls


def test_a_task_budget_covers_each_iteration_s_repair_calls_separately(
    cli: Cli, write_pipeline: Write, llm: FakeOpenAIServer
) -> None:
    # GIVEN a task in a loop whose replies never match its schema, with a budget of its own
    llm.reply = lambda body: "nope"
    path = write_pipeline(
        """
        name: repair
        tasks:
          - name: each
            type: for_loop
            iterate_over: [a, b, c]
            tasks:
              - name: number
                type: llm_task
                prompt: "give {{ item }}"
                output_type: json
                output_schema: {type: integer}
                schema_retries: 6
                max_tokens: 5
                budget: {max_tokens: 400}
                error_handling: {on_failure: continue_with_degraded_service}
        """
    )
    document = run(cli, path)
    # THEN each iteration makes the same repair calls, fewer than its schema_retries would,
    # and stops with BudgetExceeded naming the task, having spent at most its budget
    by_item: dict[str, int] = {}
    for body in llm.bodies:
        first = next(m["content"] for m in body["messages"] if m["role"] == "user")
        by_item[first.split()[1]] = by_item.get(first.split()[1], 0) + 1
    assert set(by_item) == {"a", "b", "c"} and len(set(by_item.values())) == 1
    assert 1 <= by_item["a"] < 7
    for child in document["tasks"]["each"]["children"]:
        record = child["tasks"]["number"]
        assert record["error"]["type"] == "BudgetExceeded"
        assert "the budget of task 'number' (max_tokens 400)" in record["error"]["message"]
        assert record["usage"]["tokens_in"] + record["usage"]["tokens_out"] <= 400


def test_a_fallback_catches_budget_exceeded(cli: Cli, write_pipeline: Write, llm: FakeOpenAIServer) -> None:
    # GIVEN a task whose budget cannot take even the reply its call reserves by default
    path = write_pipeline(
        """
        name: fallback
        tasks:
          - name: ask
            type: llm_task
            prompt: "a long question"
            budget: {max_tokens: 500}
            error_handling:
              retry_count: 3
              fallback: {type: python_task, script: "return 'cheap answer'"}
        """
    )
    document = run(cli, path)
    # THEN no call is made, it is not retried, and its fallback answers; the message says
    # how to make the call fit
    ask = document["tasks"]["ask"]
    assert (document["status"], ask["status"], document["outputs"]["ask"], ask["attempts"]) == (
        "succeeded",
        "fallback",
        "cheap answer",
        1,
    )
    assert llm.requests == []
    error = ask["attempt_log"][0]["error"]
    assert error["type"] == "BudgetExceeded" and "set the task's max_tokens" in error["message"]


def test_a_cost_budget_counts_priced_calls_and_refuses_unpriced_ones(
    cli: Cli, write_pipeline: Write, llm: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "llm:\n  models:\n    m: {price: {input_per_million: 1000, output_per_million: 1000}}\n"
    )
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(config))
    path = write_pipeline(
        """
        name: costly
        budget: {max_cost_usd: 0.022}
        tasks:
          - {name: one, type: llm_task, model: m, prompt: "say hi", max_tokens: 10}
          - name: two
            type: llm_task
            model: m
            prompt: "say hi"
            max_tokens: 10
            depends_on: [one]
            error_handling: {on_failure: continue_with_degraded_service}
          - name: free
            type: llm_task
            model: free
            prompt: "say hi"
            error_handling: {on_failure: continue_with_degraded_service}
        """
    )
    document = run(cli, path)
    # each call reserves 20 tokens at 0.001 USD a token and costs 4: 0.004 + 0.02 > 0.022
    assert document["tasks"]["one"]["status"] == "succeeded"
    two = document["tasks"]["two"]
    assert two["error"]["type"] == "BudgetExceeded"
    assert "(max_cost_usd 0.022) has 0.004000 USD spent" in two["error"]["message"]
    free = document["tasks"]["free"]
    assert free["error"]["type"] == "BudgetUnpriced"
    assert "add llm.models.free.price to the config file" in free["error"]["message"]
    assert len(llm.requests) == 1


def test_a_replayed_run_is_refused_the_same_call(
    cli: Cli, write_pipeline: Write, llm: FakeOpenAIServer, tmp_path: Path
) -> None:
    # GIVEN a chain recorded without a budget
    record = tmp_path / "calls.jsonl"
    unbudgeted = write_pipeline(CHAIN.replace("budget: {max_tokens: 25}", "description: free"), "free")
    assert run(cli, unbudgeted, "--record", record)["status"] == "succeeded"
    assert len(llm.requests) == 3
    # WHEN the budgeted chain replays it
    document = run(cli, write_pipeline(CHAIN), "--replay", record)
    # THEN the replayed calls count as recorded and the third is refused, with no network
    assert len(llm.requests) == 3
    assert document["tasks"]["three"]["error"]["type"] == "BudgetExceeded"
    assert "has 8 tokens spent" in document["tasks"]["three"]["error"]["message"]


def test_validate_names_the_place_of_every_budget_mistake(cli: Cli, write_pipeline: Write) -> None:
    write_pipeline("name: child\ntasks:\n  - {name: x, type: python_task, script: return 1}\n", "child")
    path = write_pipeline(
        """
        name: bad
        budget: {}
        tasks:
          - name: a
            type: llm_task
            prompt: hi
            budget: {max_token: 5}
          - name: b
            type: for_loop
            iterate_over: [1]
            budget: {max_cost_usd: 0}
            tasks:
              - {name: c, type: python_task, script: "return 1"}
          - name: g
            type: pipeline_group
            budget: {max_tokens: 5}
            pipelines: [{pipeline: child.yaml}]
          - name: h
            type: parallel_group
            budget: {max_tokens: 5}
            tasks:
              - {name: g2, type: pipeline_group, pipelines: [{pipeline: child.yaml}]}
        """
    )
    result = cli("validate", path)
    assert result.code == 1
    lines = result.stderr.splitlines()
    expected = [
        ":3:9: a budget needs max_tokens, max_cost_usd or both",
        ":8:14: unknown key 'max_token' here; did you mean 'max_tokens'?",
        ":12:28: Input should be greater than 0",
        ":15:5: a pipeline_group cannot have a budget",
        ":19:5: a budget cannot cover the child pipelines of a pipeline_group inside this task",
    ]
    assert len(lines) == len(expected)
    for line, start in zip(lines, expected, strict=True):
        assert line.startswith(f"{path}{start}"), line


def test_a_resumed_run_keeps_what_it_spent(cli: Cli, write_pipeline: Write, llm: FakeOpenAIServer) -> None:
    # GIVEN a run that failed when its budget refused the third call
    aborting = CHAIN.replace("on_failure: continue_with_degraded_service", "on_failure: abort_pipeline")
    failed = run(cli, write_pipeline(aborting))
    assert failed["status"] == "failed" and failed["error"]["type"] == "BudgetExceeded"
    # WHEN it is resumed
    result = cli("resume", failed["run_id"], "--json")
    # THEN the budget still holds what the first two calls spent, and refuses the third again
    resumed = result.document()
    assert resumed["run_id"] == failed["run_id"] and resumed["status"] == "failed"
    assert "has 8 tokens spent" in resumed["tasks"]["three"]["error"]["message"]
    assert len(llm.requests) == 2


@pytest.mark.slow
def test_the_top_budget_covers_child_pipelines_and_a_group_s_its_tasks_on_both_engines(
    run_on_both_engines: Callable[..., dict[str, CliResult]], write_pipeline: Write, llm: FakeOpenAIServer
) -> None:
    # GIVEN a child pipeline of three calls under its parent's budget of 25 (the third does not
    # fit), and beside it a parallel group whose budget cannot take its task's one call
    kid = CHAIN.replace("name: chain", "name: kid").replace("max_tokens: 25}", "max_tokens: 1000}")
    write_pipeline(
        kid.replace("on_failure: continue_with_degraded_service", "on_failure: abort_pipeline"), "kid"
    )
    path = write_pipeline(
        """
        name: parent
        budget: {max_tokens: 25}
        tasks:
          - name: kids
            type: pipeline_group
            pipelines: [{pipeline: kid.yaml}]
            error_handling: {on_failure: continue_with_degraded_service}
          - name: side
            type: parallel_group
            budget: {max_tokens: 19}
            tasks:
              - name: lone
                type: llm_task
                prompt: "say hi"
                max_tokens: 10
                error_handling: {on_failure: continue_with_degraded_service}
        """,
        "parent",
    )
    results = run_on_both_engines(path)
    # THEN on both engines the child's third call is refused by the parent's budget, the
    # group's task by the group's, and the documents agree
    local, aws = (results[engine].document() for engine in ("local", "stepfunctions"))
    for document in (local, aws):
        assert document["tasks"]["kids"]["error"]["type"] == "ChildPipelineFailed"
        assert (
            "BudgetExceeded: the budget of pipeline 'parent' (max_tokens 25) has 8"
            in (document["tasks"]["kids"]["error"]["message"])
        )
        assert "the budget of task 'side' (max_tokens 19)" in document["tasks"]["lone"]["error"]["message"]
    assert agreed_tasks(aws) == agreed_tasks(local)
    assert len(llm.requests) == 4


def test_a_child_pipeline_that_includes_others_cannot_have_a_budget(cli: Cli, write_pipeline: Write) -> None:
    write_pipeline("name: leaf\ntasks:\n  - {name: x, type: python_task, script: return 1}\n", "leaf")
    middle = write_pipeline(
        "name: middle\nbudget: {max_tokens: 100}\ntasks:\n"
        "  - {name: g, type: pipeline_group, pipelines: [{pipeline: leaf.yaml}]}\n",
        "middle",
    )
    top = write_pipeline(
        "name: top\ntasks:\n  - {name: g, type: pipeline_group, pipelines: [{pipeline: middle.yaml}]}\n",
        "top",
    )
    assert cli("validate", middle).code == 0  # as the top pipeline, its budget covers everything
    result = cli("validate", top)
    assert result.code == 1
    assert result.stderr.startswith(f"{middle}:2:9: a child pipeline's budget cannot cover the pipelines it")
