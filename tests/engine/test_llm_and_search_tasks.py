"""SPEC sections 3, 7 and 11 through the CLI: `llm_task` and `web_search_task` against fake servers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import CliResult, spec_record
from fakes.fixtures import fake_openai, fake_search  # noqa: F401
from fakes.servers import FakeOpenAIServer, FakeResponse, FakeSearchServer

Cli = Callable[..., CliResult]
Write = Callable[..., Path]


def run_json(cli: Cli, path: Path, *arguments: str) -> tuple[int, dict[str, Any]]:
    result = cli("run", path, "--json", *arguments)
    assert result.stdout.strip(), result.stderr
    return result.code, result.document()


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, Any]], Path]:
    """Point ORCHESTRATOR_CONFIG at a config file in tmp_path (never the developer's own)."""

    def write(config: dict[str, Any]) -> Path:
        path = tmp_path / "orchestrator-config.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(path))
        return path

    write({})
    return write


@pytest.fixture
def llm_env(
    fake_openai: FakeOpenAIServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    config_file: Callable[[dict[str, Any]], Path],
) -> FakeOpenAIServer:
    """The real openai client pointed at the fake server, with the client's backoff made instant."""
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    monkeypatch.delenv("ORCHESTRATOR_DEFAULT_MODEL", raising=False)
    monkeypatch.setattr("orchestrator.runtime.llm.backoff_delay", lambda *args, **kwargs: 0.0)
    return fake_openai


# -- llm_task --------------------------------------------------------------------------------


def test_llm_request_carries_model_system_parameters_and_rendered_prompt(
    cli: Cli, write_pipeline: Write, llm_env: FakeOpenAIServer
) -> None:
    """SPEC 3 and 11: an llm_task sends its model, system, temperature, max_tokens and rendered
    prompt through the `openai` client to `OPENAI_BASE_URL` with `OPENAI_API_KEY`; its output
    is the response text."""
    # GIVEN a server that answers "Paris" and a task whose prompt reads an input and a task
    llm_env.enqueue("Paris")
    path = write_pipeline(
        """
        name: ask
        input_variables:
          country: {type: string, default: France}
        tasks:
          - name: topic
            type: python_task
            script: return "capital"
          - name: ask
            type: llm_task
            model: gpt-4o
            system: "Answer in one word about {{ country }}."
            prompt: "What is the {{ topic }} of {{ country }}?"
            temperature: 0.2
            max_tokens: 5
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN the output is the reply and the request carried every field, rendered
    assert code == 0, document
    assert document["outputs"]["ask"] == "Paris"
    assert llm_env.request_count == 1
    sent = llm_env.last_request
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-test-key"
    assert sent.json["model"] == "gpt-4o"
    assert sent.json["messages"] == [
        {"role": "system", "content": "Answer in one word about France."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    assert sent.json["temperature"] == 0.2
    assert sent.json["max_tokens"] == 5


def test_omitted_model_uses_the_configured_default(
    cli: Cli, write_pipeline: Write, llm_env: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC 3: `llm_task.model` may be omitted: the configured default model
    (`ORCHESTRATOR_DEFAULT_MODEL`) is used."""
    # GIVEN a default model in the environment and a task naming none
    monkeypatch.setenv("ORCHESTRATOR_DEFAULT_MODEL", "house-model-7b")
    path = write_pipeline(
        """
        name: default_model
        tasks:
          - name: ask
            type: llm_task
            prompt: hello
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN the request named the default model and sent no unset parameter
    assert code == 0, document
    assert document["outputs"]["ask"] == "hello"  # the fake echoes the prompt
    body = llm_env.last_request.json
    assert body["model"] == "house-model-7b"
    assert body["messages"] == [{"role": "user", "content": "hello"}]
    assert "temperature" not in body
    assert "max_tokens" not in body


@pytest.mark.parametrize(
    ("output_type", "reply", "expected"),
    [
        ("text", "  Some text\n", "  Some text\n"),
        ("number", "Score: 0.85", 0.85),
        ("integer", "There are 12 apples.", 12),
        ("boolean", "Yes.", True),
        ("boolean", "false", False),
        ("json", '```json\n{"items": [1, 2], "ok": true}\n```', {"items": [1, 2], "ok": True}),
    ],
)
def test_output_type_parses_the_reply(
    cli: Cli,
    write_pipeline: Write,
    llm_env: FakeOpenAIServer,
    output_type: str,
    reply: str,
    expected: object,
) -> None:
    """SPEC 3: the output is the response text parsed per `output_type`, usable typed downstream."""
    # GIVEN a scripted reply and a task that checks the type it received
    llm_env.enqueue(reply)
    path = write_pipeline(
        f"""
        name: typed
        tasks:
          - name: ask
            type: llm_task
            model: m
            prompt: give me a value
            output_type: {output_type}
          - name: check
            type: python_task
            script: return type(context.get_task_output("ask")).__name__
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN the output is the parsed value, of the parsed type
    assert code == 0, document
    assert document["outputs"]["ask"] == expected
    assert document["outputs"]["check"] == type(expected).__name__


UNPARSEABLE = """
name: unparseable
error_handling:
  retry_delay: 0
tasks:
  - name: score
    type: llm_task
    model: m
    prompt: "Rate it from 0 to 1"
    output_type: number
    error_handling:
      retry_count: 2
"""


def test_unparseable_reply_is_retried_per_retry_count_then_fails(
    cli: Cli, write_pipeline: Write, llm_env: FakeOpenAIServer
) -> None:
    """SPEC 7 / decisions 'Non-retryable errors': an unparseable LLM reply fails the attempt with
    OutputParseError and IS retried by the task's `retry_count`."""
    # GIVEN a model that never answers with a number
    llm_env.reply = lambda body: "I would rather not say"
    path = write_pipeline(UNPARSEABLE)
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN three attempts (three requests) were made and the task failed with OutputParseError
    assert code == 1
    assert document["error"]["task"] == "score"
    assert document["error"]["type"] == "OutputParseError"
    assert "expected number" in document["error"]["message"]
    assert document["tasks"]["score"]["attempts"] == 3
    assert llm_env.request_count == 3


def test_unparseable_reply_then_parseable_one_succeeds_on_retry(
    cli: Cli, write_pipeline: Write, llm_env: FakeOpenAIServer
) -> None:
    """SPEC 7: the retry after an OutputParseError asks again; a reply that parses succeeds."""
    llm_env.enqueue("no idea", "maybe 0.5 or 0.7", "0.9")
    path = write_pipeline(UNPARSEABLE)
    code, document = run_json(cli, path)
    assert code == 0, document
    assert document["outputs"]["score"] == 0.9
    assert spec_record(document["tasks"]["score"]) == {"status": "succeeded", "attempts": 3, "error": None}
    assert llm_env.request_count == 3


def test_rate_limit_is_retried_transparently(
    cli: Cli, write_pipeline: Write, llm_env: FakeOpenAIServer
) -> None:
    """SPEC 7 and 11: a transient API error (429, 5xx) is retried by the client itself, so the
    task succeeds on its first attempt."""
    # GIVEN a 429, a 503, then an answer
    llm_env.enqueue(FakeResponse(status=429), FakeResponse(status=503), "42")
    path = write_pipeline(
        """
        name: limited
        tasks:
          - name: ask
            type: llm_task
            model: m
            prompt: answer
            output_type: integer
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN it succeeded at the first task attempt after three requests
    assert code == 0, document
    assert document["outputs"]["ask"] == 42
    assert spec_record(document["tasks"]["ask"]) == {"status": "succeeded", "attempts": 1, "error": None}
    assert llm_env.request_count == 3


def test_client_error_fails_the_task_without_retrying(
    cli: Cli, write_pipeline: Write, llm_env: FakeOpenAIServer
) -> None:
    """SPEC 7: an error that cannot change (HTTP 400/401) fails the task; it is not retried."""
    llm_env.enqueue(FakeResponse(status=401, message="invalid api key"))
    path = write_pipeline(
        """
        name: denied
        error_handling:
          retry_delay: 0
        tasks:
          - name: ask
            type: llm_task
            model: m
            prompt: hi
            error_handling:
              retry_count: 2
        """
    )
    code, document = run_json(cli, path)
    assert code == 1
    assert document["error"]["type"] == "LLMRequestError"
    assert "invalid api key" in document["error"]["message"]
    assert document["tasks"]["ask"]["attempts"] == 1
    assert llm_env.request_count == 1


def test_model_routed_in_the_config_file_goes_to_its_own_server(
    cli: Cli,
    write_pipeline: Write,
    llm_env: FakeOpenAIServer,
    config_file: Callable[[dict[str, Any]], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SPEC 11: per-model overrides in a config file (`ORCHESTRATOR_CONFIG`) send a model to its
    own OpenAI-compatible endpoint."""
    with FakeOpenAIServer(reply=lambda body: "from claude") as second:
        # GIVEN a config routing claude-3 to a second server with its own key and upstream name
        monkeypatch.setenv("CLAUDE_KEY", "sk-claude")
        config_file(
            {
                "llm": {
                    "models": {
                        "claude-3": {
                            "base_url": second.base_url,
                            "api_key_env": "CLAUDE_KEY",
                            "model": "claude-3-upstream",
                        }
                    }
                }
            }
        )
        path = write_pipeline(
            """
            name: routed
            tasks:
              - name: routed
                type: llm_task
                model: claude-3
                prompt: hi claude
              - name: default
                type: llm_task
                model: gpt-4o-mini
                prompt: hi default
            """
        )
        # WHEN it runs
        code, document = run_json(cli, path)
        # THEN each task went to its own server
        assert code == 0, document
        assert document["outputs"] == {"routed": "from claude", "default": "hi default"}
        assert second.request_count == 1
        assert second.last_request.headers["authorization"] == "Bearer sk-claude"
        assert second.last_request.json["model"] == "claude-3-upstream"
    assert llm_env.request_count == 1
    assert llm_env.last_request.json["model"] == "gpt-4o-mini"
    assert llm_env.last_request.headers["authorization"] == "Bearer sk-test-key"


def test_no_llm_endpoint_is_a_clear_error_that_is_not_retried(
    cli: Cli, write_pipeline: Write, config_file: Callable[[dict[str, Any]], Path]
) -> None:
    """SPEC 11 / decisions 'Non-retryable errors': a missing LLM endpoint is a clear task error,
    not retried."""
    # GIVEN neither OPENAI_API_KEY nor OPENAI_BASE_URL (conftest removes them)
    path = write_pipeline(
        """
        name: nowhere
        error_handling:
          retry_delay: 0
        tasks:
          - name: ask
            type: llm_task
            model: m
            prompt: hi
            error_handling:
              retry_count: 2
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN it failed once, saying what to set
    assert code == 1
    assert document["error"]["type"] == "LLMConfigurationError"
    assert "OPENAI_API_KEY" in document["error"]["message"]
    assert document["tasks"]["ask"]["attempts"] == 1


# -- web_search_task -------------------------------------------------------------------------


def test_web_search_output_shape_and_max_results(
    cli: Cli,
    write_pipeline: Write,
    fake_search: FakeSearchServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    config_file: Callable[[dict[str, Any]], Path],
) -> None:
    """SPEC 3: a web_search_task outputs `{"query", "results": [{"title", "url", "snippet"}]}`,
    with at most `max_results` results, for its rendered query."""
    # GIVEN a search endpoint with three results and a templated query
    monkeypatch.setenv("ORCHESTRATOR_SEARCH_URL", fake_search.url)
    fake_search.results = [
        {"title": f"T{n}", "url": f"https://e.example/{n}", "snippet": f"S{n}", "rank": n} for n in range(3)
    ]
    path = write_pipeline(
        """
        name: search
        input_variables:
          topic: {type: string, default: python}
        tasks:
          - name: search
            type: web_search_task
            query: "{{ topic }} packaging"
            max_results: 2
          - name: titles
            type: python_task
            script: return [r["title"] for r in context.get_task_output("search")["results"]]
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN the output has exactly the SPEC keys and two results
    assert code == 0, document
    assert document["outputs"]["search"] == {
        "query": "python packaging",
        "results": [
            {"title": "T0", "url": "https://e.example/0", "snippet": "S0"},
            {"title": "T1", "url": "https://e.example/1", "snippet": "S1"},
        ],
    }
    assert document["outputs"]["titles"] == ["T0", "T1"]
    assert fake_search.last_request.query["q"] == ["python packaging"]
    assert fake_search.last_request.query["max_results"] == ["2"]


def test_web_search_default_max_results_is_five(
    cli: Cli,
    write_pipeline: Write,
    fake_search: FakeSearchServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    config_file: Callable[[dict[str, Any]], Path],
) -> None:
    """SPEC 3: `max_results` has a default; the task never returns more than it."""
    monkeypatch.setenv("ORCHESTRATOR_SEARCH_URL", fake_search.url)
    fake_search.results = [{"title": str(n), "url": "u", "snippet": "s"} for n in range(9)]
    path = write_pipeline(
        """
        name: search_default
        tasks:
          - name: search
            type: web_search_task
            query: anything
        """
    )
    code, document = run_json(cli, path)
    assert code == 0, document
    assert len(document["outputs"]["search"]["results"]) == 5


def test_no_search_endpoint_is_a_clear_error_that_is_not_retried(
    cli: Cli, write_pipeline: Write, config_file: Callable[[dict[str, Any]], Path]
) -> None:
    """SPEC 3 / decisions: without a configured endpoint the task fails clearly and is not retried."""
    path = write_pipeline(
        """
        name: search_nowhere
        error_handling:
          retry_delay: 0
        tasks:
          - name: search
            type: web_search_task
            query: anything
            error_handling:
              retry_count: 2
        """
    )
    code, document = run_json(cli, path)
    assert code == 1
    assert document["error"]["task"] == "search"
    assert document["error"]["type"] == "SearchConfigurationError"
    assert "ORCHESTRATOR_SEARCH_URL" in document["error"]["message"]
    assert document["tasks"]["search"]["attempts"] == 1


def test_the_guides_quality_loop_with_llm_tasks(
    cli: Cli, write_pipeline: Write, llm_env: FakeOpenAIServer
) -> None:
    """SPEC 3, 4 and 8: the guide's while_loop: an llm_task scores, a python_task checks, a
    conditional llm_task improves, and the last task's mapping becomes `loop_state`."""
    # GIVEN a model that scores 0.5 the first draft and 0.9 the improved one
    scores = iter(["0.5", "0.9"])

    def reply(body: Any) -> str:
        prompt = body["messages"][-1]["content"]
        return next(scores) if prompt.startswith("Rate") else "better content"

    llm_env.reply = reply
    path = write_pipeline(
        """
        name: quality
        input_variables:
          initial_content: {type: string}
          quality_threshold: {type: float, default: 0.8}
        tasks:
          - name: improve_content
            type: while_loop
            condition: "{{ not loop_state.quality_met }}"
            max_iterations: 5
            tasks:
              - name: analyze_quality
                type: llm_task
                model: gpt-4
                prompt: |
                  Rate the quality of this content on a scale of 0-1:
                  {{ loop_state.current_content | default(initial_content) }}
                output_type: number
              - name: check_threshold
                type: python_task
                script: |
                  quality_score = float(context.get_task_output('analyze_quality'))
                  quality_threshold = float("{{ quality_threshold }}")
                  return {
                      "quality_score": quality_score,
                      "quality_met": quality_score >= quality_threshold,
                      "needs_improvement": quality_score < quality_threshold
                  }
              - name: improve_if_needed
                type: llm_task
                model: gpt-4
                prompt: |
                  Improve (score {{ check_threshold.quality_score }}):
                  {{ loop_state.current_content | default(initial_content) }}
                condition: "{{ check_threshold.needs_improvement }}"
              - name: update_state
                type: python_task
                script: |
                  check_result = context.get_task_output('check_threshold')
                  improved_content = context.get_task_output('improve_if_needed')
                  current_content = context.get_loop_variable('current_content', "{{ initial_content }}")
                  return {
                      "current_content": improved_content if improved_content else current_content,
                      "quality_met": check_result['quality_met'],
                      "iteration": context.get_loop_iteration() + 1
                  }
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path, "-i", "initial_content=first draft")
    # THEN it improved once, then met the threshold and stopped
    assert code == 0, document
    assert document["outputs"]["improve_content"] == {
        "iterations": 2,
        "state": {"current_content": "better content", "quality_met": True, "iteration": 2},
    }
    prompts = [body["messages"][-1]["content"] for body in llm_env.bodies]
    assert len(prompts) == 3
    assert "first draft" in prompts[0]
    assert prompts[1].startswith("Improve (score 0.5):")
    assert "better content" in prompts[2]
