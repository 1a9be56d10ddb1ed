"""The user guide's YAML blocks, kept verbatim in tests/fixtures/guide/, run as they are written.

Every block validates (tests/unit/test_validation.py). The blocks that call no helper the
guide leaves undefined, and reach no outside service, also run here through the CLI, their
LLM tasks answered by the fake OpenAI server and their state kept in a real Redis server
where the block asks for one. The adapted, fully runnable versions are in pipelines/
(tests/engine/test_bundled_pipelines.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml

from conftest import GUIDE_FIXTURES, CliResult, input_args
from fakes.fixtures import fake_openai  # noqa: F401
from fakes.servers import FakeOpenAIServer

Cli = Callable[..., CliResult]

# The blocks that cannot run as written, and why: each stays validated.
VALIDATE_ONLY = {
    "api_integration": "calls https://api.example.com",
    "dynamic_task_generation": "its generated scripts call generate_report and format_creative_output,"
    " which the guide does not define (and 'analysis' generates nothing)",
    "input_validation": "reads user_input, which it does not declare, under strict_mode",
    "database_integration": "needs PostgreSQL and the psycopg2-binary and sqlalchemy packages",
    "pipeline_parallelism": "calls calculate_combined_score, which the guide does not define",
    "resource_management": "calls process_large_dataset, which the guide does not define",
    "secure_credentials": "calls secure_api_call, which the guide does not define",
    "task_parallelism": "calls chunk_data, which the guide does not define",
}

# A block that fails by design some of the time: the message its own script raises.
EXPECTED_FAILURE = {"circuit_breaker": "External service error"}  # random.random() < 0.3

# The inputs each runnable block needs (the guide's templates name some it never declares).
INPUTS: dict[str, dict[str, Any]] = {
    "batch_processing": {"items": [{"id": 1, "content": "alpha"}, {"id": 2, "content": "beta"}]},
    "caching_strategy": {"input_data": "numbers 1 2 3"},
    "circuit_breaker": {},
    "conditional_processing": {"data_type": "text", "input_content": "a short text"},
    "hierarchical_error_handling": {"critical_prompt": "summarise", "simplified_prompt": "shorter"},
    "iterative_improvement": {"initial_content": "a first draft"},
    "shared_state": {},
    "stateful_processing": {"new_input": "today's data"},
}


def _llm_reply(body: Any) -> str:
    """What a model would answer each block: a score where one is asked for, else prose."""
    prompt = str(body["messages"][-1]["content"])
    if "Respond with just the number" in prompt:
        return "0.9"
    return f"answer to: {prompt[:40]}"


def test_the_fixtures_are_the_sixteen_guide_blocks() -> None:
    names = {path.stem: yaml.safe_load(path.read_text(encoding="utf-8"))["name"] for path in GUIDE_FIXTURES}
    assert len(names) == 16
    assert set(names) == set(VALIDATE_ONLY) | set(INPUTS)
    assert not set(VALIDATE_ONLY) & set(INPUTS)


@pytest.mark.slow
@pytest.mark.parametrize("stem", sorted(INPUTS))
def test_a_runnable_guide_block_runs_as_written(
    stem: str,
    cli: Cli,
    fake_openai: FakeOpenAIServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    # GIVEN the block exactly as the guide prints it, a model, and Redis when the block asks for it
    path = next(path for path in GUIDE_FIXTURES if path.stem == stem)
    fake_openai.reply = _llm_reply
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    if (
        yaml.safe_load(path.read_text(encoding="utf-8")).get("state_management", {}).get("storage_backend")
        == "redis"
    ):
        monkeypatch.setenv("ORCHESTRATOR_REDIS_URL", request.getfixturevalue("redis_server"))

    # WHEN it runs with the inputs its templates name
    result = cli("run", path, "--json", *input_args(INPUTS[stem]))

    # THEN it finishes, and every task it ran has an outcome that is not a failure
    document = result.document()
    if document["status"] == "failed" and stem in EXPECTED_FAILURE:
        assert result.code == 1
        assert document["error"]["message"].startswith(EXPECTED_FAILURE[stem]), document["error"]
        return
    assert result.code == 0, result.stderr
    assert document["status"] == "succeeded", document["error"]
    assert document["tasks"], document
    for name, record in document["tasks"].items():
        assert record["status"] in {"succeeded", "skipped", "cached", "fallback"}, (name, record)
