"""decisions.md "Non-retryable errors", on both engines: the registry decides how many attempts.

Through the CLI (`orchestrator run FILE --json`, with and without `--engine stepfunctions`),
against the local fake search and LLM servers: a request the server refuses (HTTP 400) fails
with a type that is never retried, so `retry_count: 2` still makes exactly one attempt (one
request) on both engines; an answer that may differ next time is retried on both.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import CliResult
from fakes.fixtures import fake_openai, fake_search  # noqa: F401
from fakes.servers import FakeOpenAIServer, FakeResponse, FakeSearchServer
from orchestrator.error_types import ERROR_TYPES

pytestmark = pytest.mark.slow
Cli = Callable[..., CliResult]
Write = Callable[..., Path]
ENGINES = [[], ["--engine", "stepfunctions"]]
ENGINE_IDS = ["local", "stepfunctions"]

SEARCH = """
name: refused_search
tasks:
  - name: find
    type: web_search_task
    query: serverless
    error_handling: {retry_count: 2, retry_delay: 0, retry_backoff: fixed}
"""
LLM = """
name: refused_llm
tasks:
  - name: ask
    type: llm_task
    model: gpt-4o-mini
    prompt: Say hello
    error_handling: {retry_count: 2, retry_delay: 0, retry_backoff: fixed}
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
) -> tuple[FakeOpenAIServer, FakeSearchServer]:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("ORCHESTRATOR_SEARCH_URL", fake_search.url)
    return fake_openai, fake_search


@pytest.mark.parametrize("engine", ENGINES, ids=ENGINE_IDS)
def test_a_search_answered_400_is_tried_once(
    engine: list[str], cli: Cli, write_pipeline: Write, servers: tuple[FakeOpenAIServer, FakeSearchServer]
) -> None:
    _, search = servers
    search.results = lambda request: FakeResponse(status=400, message="query refused")
    path = write_pipeline(SEARCH)
    code, document = _run(cli, path, engine)
    assert code == 1 and document["status"] == "failed"
    record = document["tasks"]["find"]
    assert record["status"] == "failed"
    assert record["attempts"] == 1
    assert record["error"]["type"] == "SearchRequestError"
    assert "HTTP 400: query refused" in record["error"]["message"]
    assert search.request_count == 1
    assert ERROR_TYPES["SearchRequestError"].retryable is False


@pytest.mark.parametrize("engine", ENGINES, ids=ENGINE_IDS)
def test_an_llm_answered_400_is_tried_once(
    engine: list[str], cli: Cli, write_pipeline: Write, servers: tuple[FakeOpenAIServer, FakeSearchServer]
) -> None:
    llm, _ = servers
    llm.reply = lambda body: FakeResponse(status=400, message="prompt refused")
    path = write_pipeline(LLM)
    code, document = _run(cli, path, engine)
    assert code == 1 and document["status"] == "failed"
    record = document["tasks"]["ask"]
    assert record["status"] == "failed"
    assert record["attempts"] == 1
    assert record["error"]["type"] == "LLMRequestError"
    assert "HTTP 400: prompt refused" in record["error"]["message"]
    assert llm.request_count == 1


@pytest.mark.parametrize("engine", ENGINES, ids=ENGINE_IDS)
def test_a_search_answer_that_is_not_json_is_retried(
    engine: list[str], cli: Cli, write_pipeline: Write, servers: tuple[FakeOpenAIServer, FakeSearchServer]
) -> None:
    """The contrast: `SearchResponseError` may differ next time, so retry_count applies."""
    _, search = servers
    search.results = lambda request: FakeResponse(raw_body=b"<html>busy</html>")
    path = write_pipeline(SEARCH)
    code, document = _run(cli, path, engine)
    assert code == 1
    record = document["tasks"]["find"]
    assert record["attempts"] == 3
    assert record["error"]["type"] == "SearchResponseError"
    assert search.request_count == 3


@pytest.mark.parametrize("engine", ENGINES, ids=ENGINE_IDS)
def test_a_loop_failing_with_a_non_retryable_type_is_not_retried(
    engine: list[str], cli: Cli, write_pipeline: Write
) -> None:
    """A container fails with its task's error type; the registry decides for it too."""
    path = write_pipeline(
        """
        name: loop_template_error
        tasks:
          - name: each
            type: for_loop
            iterate_over: [{"a": 1}]
            error_handling: {retry_count: 2, retry_delay: 0, retry_backoff: fixed}
            tasks:
              - name: read
                type: python_task
                script: return "{{ item.b }}"
        """
    )
    code, document = _run(cli, path, engine)
    assert code == 1
    record = document["tasks"]["each"]
    assert record["error"]["type"] == "TemplateError"
    assert record["attempts"] == 1
