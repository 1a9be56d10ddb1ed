"""The README's worked example of LLM pipelines on a local OpenAI-compatible server holds.

The config block the README prints is used as it is, with only the server's address pointed
at the fake server of tests/fakes (which speaks the same chat API as Ollama, llama.cpp's
server and vLLM), and the README's own command runs a bundled LLM pipeline with it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from conftest import REPO, CliResult
from fakes.fixtures import fake_openai  # noqa: F401
from fakes.servers import FakeOpenAIServer

README = REPO / "README.md"
MARKER = "<!-- example: local-llm-config -->"


def _readme_example() -> tuple[str, list[str]]:
    """The config block after the marker, and the `orchestrator run` command that follows it."""
    text = README.read_text(encoding="utf-8")
    after = text[text.index(MARKER) :]
    config = re.search(r"```yaml\n(.*?)```", after, re.DOTALL)
    command = re.search(r"^orchestrator run .*$", after, re.MULTILINE)
    assert config and command, "the README's local LLM example lost its config or its command"
    return config.group(1), shlex.split(command.group(0))[1:]


def test_the_readme_local_server_example_runs_an_llm_pipeline_with_no_key(
    cli: Callable[..., CliResult],
    fake_openai: FakeOpenAIServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # GIVEN the README's orchestrator.yaml in the folder the user runs from, no API key set,
    # and the local server at the address the config names
    config_text, arguments = _readme_example()
    config = yaml.safe_load(config_text)
    local_model = config["llm"]["default_model"]
    config_text = config_text.replace(config["llm"]["base_url"], fake_openai.base_url)
    (tmp_path / "orchestrator.yaml").write_text(config_text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    fake_openai.reply = lambda body: f"{body['model']} read: {body['messages'][-1]['content'][:30]}"

    # WHEN the README's command runs from the repository's pipelines
    arguments = [str(REPO / argument) if argument.endswith(".yaml") else argument for argument in arguments]
    result = cli(*arguments, "--json")

    # THEN the LLM task went to the local server under the local model's name, and succeeded
    assert result.code == 0, result.stderr
    document = result.document()
    assert document["status"] == "succeeded", document["error"]
    assert fake_openai.request_count >= 1
    assert {body["model"] for body in fake_openai.bodies} == {local_model}
    assert any(str(output).startswith(f"{local_model} read:") for output in document["outputs"].values())


def test_the_readme_config_routes_every_model_the_bundled_pipelines_name() -> None:
    # GIVEN the README's config and every model named by a bundled pipeline
    config = yaml.safe_load(_readme_example()[0])
    named = set(re.findall(r'^\s*model:\s*"?([\w.-]+)"?', _all_pipelines(), re.MULTILINE))

    # THEN each is routed to the local model, so no bundled pipeline calls a hosted one
    assert named, "no llm_task names a model any more: update this test"
    assert named <= set(config["llm"]["models"]), named - set(config["llm"]["models"])


def _all_pipelines() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in sorted((REPO / "pipelines").glob("*.yaml")))
