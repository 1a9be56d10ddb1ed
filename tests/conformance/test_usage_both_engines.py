"""Issue 15, "Usage and cost", on both engines: through the CLI (`orchestrator run FILE --json`
and `orchestrator runs show RUN_ID`, with `--engine local` and `--engine stepfunctions`), against
the fake OpenAI server answering with known token counts, with model prices in the config file
(the docs' example, docs/language.md "Usage and cost"): each LLM call, task and the run carry
the same tokens and cost on both engines, summed over a for_loop's iterations; a model without
a price counts tokens but no cost, and a reply that does not tell its tokens leaves the cost
unknown (`null`). The run's end writes its usage to the audit log (`orchestrator audit`)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, CliResult
from fakes.servers import FakeOpenAIServer, FakeResponse

pytestmark = pytest.mark.slow
Cli = Callable[..., CliResult]

PRICES = {
    "priced": {"price": {"input_per_million": 2.5, "output_per_million": 10}},
    "silent": {"price": {"input_per_million": 1, "output_per_million": 1}},
}
# tokens in and out of each upstream model's replies ("silent" replies tell none)
USAGE = {"priced": (1000, 200), "gpt-4o-mini": (120, 30), "llama3.2": (400, 60)}


def docs_example() -> tuple[dict[str, Any], str, dict[str, Any]]:
    """The config, pipeline and run document excerpt of docs/language.md, "Usage and cost"."""
    text = (REPO / "docs" / "language.md").read_text(encoding="utf-8")
    section = text[text.index("#### Usage and cost") :]
    section = section[: section.index("\n### ")]
    config, pipeline = re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)
    (shown,) = re.findall(r"```json\n(.*?)```", section, re.DOTALL)
    return yaml.safe_load(config), pipeline, json.loads(shown)


def reply(body: dict[str, Any]) -> FakeResponse:
    """A completion with the model's token counts (none for `silent`)."""
    completion: dict[str, Any] = {
        "id": "chatcmpl-usage",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    }
    if body["model"] in USAGE:
        tokens_in, tokens_out = USAGE[body["model"]]
        completion["usage"] = {
            "prompt_tokens": tokens_in,
            "completion_tokens": tokens_out,
            "total_tokens": tokens_in + tokens_out,
        }
    return FakeResponse(json_body=completion)


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(reply) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
        monkeypatch.delenv("ORCHESTRATOR_DEFAULT_MODEL", raising=False)
        yield server


def configure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, config: dict[str, Any], url: str) -> None:
    """`config` as the config file, every model route sent to the fake server."""
    for route in config["llm"]["models"].values():
        if "base_url" in route:
            route["base_url"] = url
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(path))


def run_and_show(cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, path: Path) -> dict[str, Any]:
    """Each engine's run document, checked to be what `runs show` prints for it, with its usage
    in the audit log."""
    documents = {}
    for engine in ("local", "stepfunctions"):
        monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path / engine))
        result = cli("run", path, "--json", "--engine", engine)
        assert result.code == 0, f"{engine}: {result.stderr}"
        document = result.document()
        shown = cli("runs", "show", document["run_id"])
        assert shown.code == 0, shown.stderr
        assert json.loads(shown.stdout)["usage"] == document["usage"], engine
        assert json.loads(shown.stdout)["tasks"] == document["tasks"], engine
        # the audit log has the run's usage, and each top-level task's that called a model
        audit = cli("audit", "--run", document["run_id"])
        (entry,) = [json.loads(line) for line in audit.stdout.splitlines()]
        assert entry["event"] == "llm_usage" and entry["execution_id"] == document["run_id"], engine
        assert (entry["pipeline_id"], entry["status"]) == (document["pipeline"], "succeeded"), engine
        assert entry["usage"] == document["usage"], engine
        assert entry["tasks"] == {name: record["usage"] for name, record in document["tasks"].items()}
        documents[engine] = document
    return documents


def calls(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [call for attempt in record["attempt_log"] for call in attempt["llm_calls"]]


def test_the_docs_example_sums_tokens_and_cost_over_a_loop_on_both_engines(
    cli: Cli, llm: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # GIVEN the documented config (one priced model, one without a price) and pipeline (a loop
    # of three calls to the priced model, then one call to the other)
    config, pipeline, shown = docs_example()
    configure(monkeypatch, tmp_path, config, llm.base_url)
    path = tmp_path / "reviews.yaml"
    path.write_text(pipeline, encoding="utf-8")
    # WHEN it runs on each engine
    documents = run_and_show(cli, monkeypatch, tmp_path, path)
    # THEN each priced call costs 120 * 0.15 / 1e6 + 30 * 0.6 / 1e6 = 0.000036 USD ...
    for engine, document in documents.items():
        loop = document["tasks"]["reviews"]
        assert len(loop["children"]) == 3, engine
        for child in loop["children"]:
            (call,) = calls(child["tasks"]["review"])
            assert (call["tokens_in"], call["tokens_out"]) == (120, 30), engine
            assert call["cost_usd"] == pytest.approx(0.000036), engine
            assert child["tasks"]["review"]["usage"]["cost_usd"] == pytest.approx(0.000036), engine
        # ... the model without a price counts its tokens at no cost ...
        (call,) = calls(document["tasks"]["digest"])
        assert (call["tokens_in"], call["cost_usd"]) == (400, None), engine
        # ... and the loop, the tasks and the run are as the docs show them
        assert document["usage"] == shown["usage"], engine
        for name, record in shown["tasks"].items():
            assert document["tasks"][name]["usage"] == record["usage"], engine
    assert llm.request_count == 8


def test_a_reply_without_usage_leaves_the_cost_unknown_on_both_engines(
    cli: Cli, llm: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    configure(monkeypatch, tmp_path, {"llm": {"models": PRICES}}, llm.base_url)
    # GIVEN a priced model whose reply does not tell its tokens, after one that does
    path = tmp_path / "silent.yaml"
    path.write_text(
        "name: silent\ntasks:\n"
        "  - {name: first, type: llm_task, model: priced, prompt: Hi}\n"
        "  - {name: quiet, type: llm_task, model: silent, prompt: Hi}\n",
        encoding="utf-8",
    )
    # WHEN it runs on each engine
    documents = run_and_show(cli, monkeypatch, tmp_path, path)
    # THEN its call and task have no tokens and no cost, and the run's cost is unknown too
    for engine, document in documents.items():
        (call,) = calls(document["tasks"]["quiet"])
        assert call["tokens_in"] is None and call["cost_usd"] is None, engine
        assert document["tasks"]["quiet"]["usage"] == {
            "llm_calls": 1,
            "tokens_in": 0,
            "tokens_out": 0,
            "cost_usd": None,
        }
        assert document["tasks"]["first"]["usage"]["cost_usd"] == pytest.approx(0.0045), engine
        assert document["usage"] == {
            "llm_calls": 2,
            "tokens_in": 1000,
            "tokens_out": 200,
            "cost_usd": None,
        }, engine
