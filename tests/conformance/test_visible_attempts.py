"""Issue 15, "Visible attempts", on both engines: one attempt is one call to the provider.

Through the CLI (`orchestrator run FILE --json`, with and without `--engine stepfunctions`),
against the local fake LLM and search servers: the run document's `attempts` is the number of
requests the server received, a 429 or 5xx is retried only as the task's `error_handling`
says, and the next attempt waits at least the server's `Retry-After` (read off the server's
own arrival times of the requests; on AWS, where the state machine's wait is fixed at 1 s here,
the task function waits the rest).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import CliResult, spec_record
from fakes.fixtures import fake_openai, fake_search  # noqa: F401
from fakes.servers import FakeOpenAIServer, FakeResponse, FakeSearchServer

pytestmark = pytest.mark.slow
Cli = Callable[..., CliResult]
Write = Callable[..., Path]
ENGINES = [[], ["--engine", "stepfunctions"]]
ENGINE_IDS = ["local", "stepfunctions"]
RETRY_AFTER = 2  # longer than the state machine's 1 s, so AWS must wait the rest itself


def _llm_pipeline(retry_count: int) -> str:
    return f"""
name: visible_attempts
tasks:
  - name: ask
    type: llm_task
    model: gpt-4o-mini
    prompt: Say hello
    error_handling: {{retry_count: {retry_count}, retry_delay: 0, retry_backoff: fixed}}
"""


def _run(cli: Cli, path: Path, engine: list[str]) -> tuple[int, dict[str, Any]]:
    result = cli("run", path, "--json", *engine)
    assert result.stdout, result.stderr
    return result.code, result.document()


@pytest.fixture
def servers(
    fake_openai: FakeOpenAIServer,  # noqa: F811
    fake_search: FakeSearchServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> tuple[FakeOpenAIServer, FakeSearchServer]:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("ORCHESTRATOR_SEARCH_URL", fake_search.url)
    monkeypatch.delenv("ORCHESTRATOR_DEFAULT_MODEL", raising=False)
    config = tmp_path / "config.yaml"
    config.write_text("{}\n", encoding="utf-8")
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(config))
    return fake_openai, fake_search


@pytest.mark.parametrize("engine", ENGINES, ids=ENGINE_IDS)
def test_retry_count_0_against_a_500_makes_exactly_one_request(
    engine: list[str], cli: Cli, write_pipeline: Write, servers: tuple[FakeOpenAIServer, FakeSearchServer]
) -> None:
    # GIVEN a model that always answers 500, and a task that may not retry
    llm, _ = servers
    llm.reply = lambda body: FakeResponse(status=500, message="overloaded")
    path = write_pipeline(_llm_pipeline(0))
    # WHEN it runs
    code, document = _run(cli, path, engine)
    # THEN one request was made, and the document says one attempt
    assert code == 1 and document["status"] == "failed"
    record = document["tasks"]["ask"]
    assert record["attempts"] == 1
    assert record["error"]["type"] == "LLMTransientError"
    assert "HTTP 500: overloaded" in record["error"]["message"]
    assert llm.request_count == 1


@pytest.mark.parametrize("engine", ENGINES, ids=ENGINE_IDS)
def test_429s_are_attempts_that_wait_out_retry_after(
    engine: list[str], cli: Cli, write_pipeline: Write, servers: tuple[FakeOpenAIServer, FakeSearchServer]
) -> None:
    # GIVEN a model that answers 429 twice, asking for RETRY_AFTER seconds, then replies; and a
    # task with two retries whose own delay is 0
    llm, _ = servers
    limited = FakeResponse(status=429, headers={"Retry-After": str(RETRY_AFTER)}, message="slow down")
    llm.enqueue(limited, limited, "hello")
    path = write_pipeline(_llm_pipeline(2))
    # WHEN it runs
    code, document = _run(cli, path, engine)
    # THEN three requests, three attempts, each retry at least Retry-After after the 429
    assert code == 0, document
    record = document["tasks"]["ask"]
    assert spec_record(record) == {"status": "succeeded", "attempts": 3, "error": None}
    # and the run's telemetry shows the two throttled attempts and the waits between them
    log = record["attempt_log"]
    assert [entry["error"]["type"] if entry["error"] else None for entry in log] == [
        "LLMRateLimited",
        "LLMRateLimited",
        None,
    ]
    assert [len(entry["llm_calls"]) for entry in log] == [1, 1, 1]
    for before, after in itertools.pairwise(log):
        gap = datetime.fromisoformat(after["started_at"]) - datetime.fromisoformat(before["ended_at"])
        assert gap.total_seconds() >= RETRY_AFTER - 0.01, (before, after)
    assert document["outputs"]["ask"] == "hello"
    assert llm.request_count == 3
    assert all(gap >= RETRY_AFTER for gap in llm.gaps), llm.gaps


@pytest.mark.parametrize("engine", ENGINES, ids=ENGINE_IDS)
def test_a_rate_limited_search_is_shown_as_such_when_retries_run_out(
    engine: list[str], cli: Cli, write_pipeline: Write, servers: tuple[FakeOpenAIServer, FakeSearchServer]
) -> None:
    # GIVEN a search endpoint that keeps answering 429, and one retry
    _, search = servers
    search.results = lambda request: FakeResponse(status=429, headers={"Retry-After": "1"}, message="quota")
    path = write_pipeline(
        """
        name: limited_search
        tasks:
          - name: find
            type: web_search_task
            query: serverless
            error_handling: {retry_count: 1, retry_delay: 0, retry_backoff: fixed}
        """
    )
    # WHEN it runs
    code, document = _run(cli, path, engine)
    # THEN two requests, two attempts, and the error says the endpoint throttled the run
    assert code == 1
    record = document["tasks"]["find"]
    assert record["attempts"] == 2
    assert record["error"]["type"] == "SearchRateLimited"
    assert "HTTP 429: quota (Retry-After: 1s)" in record["error"]["message"]
    assert search.request_count == 2
    assert all(gap >= 1 for gap in search.gaps), search.gaps


def test_a_sandboxed_attempt_hands_its_retry_after_to_the_policy(
    cli: Cli, write_pipeline: Write, servers: tuple[FakeOpenAIServer, FakeSearchServer]
) -> None:
    # GIVEN an llm_task run in the sandbox's child process (it has a memory limit), and a
    # model that answers 429 with a Retry-After once
    llm, _ = servers
    llm.enqueue(FakeResponse(status=429, headers={"Retry-After": "1"}), "hello")
    path = write_pipeline(
        _llm_pipeline(1).replace(
            "    prompt: Say hello\n", "    prompt: Say hello\n    resource_limits: {memory_limit: 1GB}\n"
        )
    )
    # WHEN it runs on the embedded engine
    code, document = _run(cli, path, [])
    # THEN the child's Retry-After reached the policy: the retry came at least 1 s later
    assert code == 0, document
    assert document["tasks"]["ask"]["attempts"] == 2
    assert llm.request_count == 2
    assert all(gap >= 1 for gap in llm.gaps), llm.gaps
