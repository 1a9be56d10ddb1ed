"""Typed output means the same on `--engine local` and `--engine stepfunctions`: the docs'
example pipeline (docs/language.md, "Typed output") repairs its replies to the same value on
both, and a task whose schema lives in a file next to the pipeline fails with
`OutputValidationError` through the same policy on both."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, CliResult, agreed_tasks
from fakes.fixtures import fake_openai  # noqa: F401
from fakes.servers import FakeOpenAIServer

pytestmark = pytest.mark.slow

RunBoth = Callable[..., dict[str, CliResult]]
ADA = {"name": "Ada Lovelace", "age": 36, "emails": ["ada@example.com"]}


def docs_example() -> str:
    """The pipeline block of the docs' "Typed output" section."""
    text = (REPO / "docs" / "language.md").read_text(encoding="utf-8")
    section = text[text.index("#### Typed output") :]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)
    return next(block for block in blocks if "tasks:" in block)


def repairing_model(body: dict[str, Any]) -> str:
    """Prose first, then an age as a string, then the right value: by turn, so each engine's
    conversation gets the same replies however the two runs interleave."""
    replies = sum(1 for message in body["messages"] if message["role"] == "assistant")
    return ["I think it was Ada.", json.dumps({**ADA, "age": "36"}), json.dumps(ADA)][min(replies, 2)]


@pytest.fixture
def llm(fake_openai: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeOpenAIServer:  # noqa: F811
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    monkeypatch.delenv("ORCHESTRATOR_DEFAULT_MODEL", raising=False)
    config = tmp_path / "config.yaml"
    config.write_text("{}\n", encoding="utf-8")
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(config))
    return fake_openai


@pytest.mark.parametrize("structured", [False, True], ids=["schema in the prompt", "structured output"])
def test_the_docs_example_repairs_to_the_same_output_on_both_engines(
    run_on_both_engines: RunBoth, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, structured: bool
) -> None:
    # GIVEN the documented pipeline, and a model that needs two repairs; with structured
    # output, one that refuses any request without the schema as its response_format
    example = docs_example()
    schema = yaml.safe_load(example)["tasks"][0]["output_schema"]
    expected = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": False}}
    with FakeOpenAIServer(repairing_model, response_format=expected if structured else None) as llm:
        monkeypatch.setenv("OPENAI_BASE_URL", llm.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
        monkeypatch.delenv("ORCHESTRATOR_DEFAULT_MODEL", raising=False)
        config = tmp_path / "config.yaml"
        routes = {"gpt-4o-mini": {"structured_output": True}} if structured else {}
        config.write_text(yaml.safe_dump({"llm": {"models": routes}}), encoding="utf-8")
        monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(config))
        path = tmp_path / "contacts.yaml"
        path.write_text(example, encoding="utf-8")
        # WHEN it runs on each engine
        results = run_on_both_engines(path)
        # THEN both give the matching reply as the output, after three calls in one attempt
        for engine, result in results.items():
            document = result.document()
            assert document["status"] == "succeeded", engine
            assert document["outputs"]["contact"] == ADA, engine
            assert document["tasks"]["contact"]["attempts"] == 1, engine
            assert document["outputs"]["greeting"] == "Dear Ada Lovelace, we will write to ada@example.com."
        assert llm.request_count == 6
        assert all(("response_format" in body) == structured for body in llm.bodies)


def test_exhausted_repairs_fail_through_the_task_policy_on_both_engines(
    run_on_both_engines: RunBoth, llm: FakeOpenAIServer, tmp_path: Path
) -> None:
    # GIVEN a schema in a file beside the pipeline, and a model that never matches it
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "score.json").write_text(
        json.dumps({"type": "object", "properties": {"score": {"type": "number"}}, "required": ["score"]}),
        encoding="utf-8",
    )
    llm.reply = lambda body: '{"grade": "A"}'
    path = tmp_path / "scoring.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "scoring",
                "tasks": [
                    {
                        "name": "score",
                        "type": "llm_task",
                        "prompt": "Score this essay.",
                        "output_schema": "schemas/score.json",
                        "schema_retries": 1,
                        "error_handling": {
                            "on_failure": "continue_with_degraded_service",
                            "fallback_value": {"score": 0},
                        },
                    },
                    {"name": "report", "type": "python_task", "script": "return {{ score }}['score']"},
                ],
            }
        ),
        encoding="utf-8",
    )
    # WHEN it runs on each engine
    results = run_on_both_engines(path)
    # THEN both degrade the same way, with the same error, after two calls each
    documents = {engine: result.document() for engine, result in results.items()}
    for engine, document in documents.items():
        assert document["status"] == "degraded", engine
        assert document["outputs"] == {"score": {"score": 0}, "report": 0}, engine
        error = document["tasks"]["score"]["error"]
        assert error["type"] == "OutputValidationError", engine
        assert "'score' is a required property" in error["message"], engine
    assert agreed_tasks(documents["local"]) == agreed_tasks(documents["stepfunctions"])
    assert llm.request_count == 4
