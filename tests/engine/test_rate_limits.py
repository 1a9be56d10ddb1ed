"""Issue 15, shared rate limits, through the CLI against the fake OpenAI server: the docs'
example (docs/language.md "Rate limits": twelve concurrent llm_task iterations under
`requests_per_minute: 600`) reaches the server one call every 0.1 s at least, on the embedded
engine and on the emulated Step Functions (DynamoDB); two runs started at once in two
processes share the limit; `tokens_per_minute` spaces calls by the tokens the server reports;
a call whose slot is further than a minute, or than its task's timeout leaves, fails with
`LLMRateLimited` at once; a replayed run takes no slot; a wrong rate in the config file is an
error naming the file and key.

Spacing is checked as a lower bound between the server's arrival times, less `TOLERANCE` for
what happens between a call's start and its arrival (never an upper bound on time)."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, CliResult
from fakes.fixtures import fake_openai  # noqa: F401
from fakes.servers import FakeOpenAIServer, FakeResponse
from orchestrator.runtime.rate_limit import NAMESPACE
from orchestrator.settings import load_settings
from orchestrator.stores.factory import shared_state

Cli = Callable[..., CliResult]

TOLERANCE = 0.05
"""Seconds a call may take from its slot to the server's arrival log, more than the one before."""


def docs_example() -> tuple[dict[str, Any], str]:
    """The config and pipeline of docs/language.md, "Rate limits"."""
    text = (REPO / "docs" / "language.md").read_text(encoding="utf-8")
    section = text[text.index("#### Rate limits") :]
    section = section[: section.index("\n#### ")]
    config, pipeline = re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)
    return yaml.safe_load(config), pipeline


def configure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FakeOpenAIServer, models: Any) -> Path:
    """A config file sending every model to the fake server, with `models` as its routes."""
    path = tmp_path / "config.yaml"
    config = {"llm": {"base_url": server.base_url, "api_key": "sk-test", "models": models}}
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(path))
    return path


def arrivals(server: FakeOpenAIServer, skip: int = 0) -> list[float]:
    """When the server's requests arrived, in order, leaving out the first `skip`."""
    return sorted(request.at for request in server.requests[skip:])


WARM_UP = """
  - name: warm_up   # the process's first call imports and sets up the LLM client
    type: llm_task
    model: unlimited
    prompt: hello
"""


def warm_up(cli: Cli, write: Callable[..., Path]) -> None:
    """One call in this process first: what the client does once is no part of a slot."""
    assert cli("run", write(f"name: warm\ntasks:{WARM_UP}", "warm"), "--json").code == 0


def assert_spaced(times: list[float], interval: float, tolerance: float = TOLERANCE) -> None:
    """Any two calls are at least their distance in slots apart, less the tolerance."""
    for (first, earlier), (last, later) in itertools.combinations(enumerate(times), 2):
        assert later - earlier >= (last - first) * interval - tolerance, (first, last, times)


def printed(document: dict[str, Any], loop: str) -> list[str]:
    return [
        line
        for child in document["tasks"][loop]["children"]
        for record in child["tasks"].values()
        for attempt in record["attempt_log"]
        for line in attempt["printed"]
    ]


def docs_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FakeOpenAIServer, write: Callable[..., Path]
) -> Path:
    config, pipeline = docs_example()
    assert config["llm"]["models"]["gpt-4o-mini"]["requests_per_minute"] == 600
    configure(tmp_path, monkeypatch, server, config["llm"]["models"])
    return write(pipeline)


@pytest.mark.slow
def test_the_docs_example_reaches_the_server_a_tenth_of_a_second_apart(
    cli: Cli,
    write_pipeline: Callable[..., Path],
    fake_openai: FakeOpenAIServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = docs_run(tmp_path, monkeypatch, fake_openai, write_pipeline)
    warm_up(cli, write_pipeline)
    result = cli("run", path, "--json")
    assert result.code == 0, result.stderr
    document = result.document()
    assert document["usage"]["llm_calls"] == 12 and fake_openai.request_count == 1 + 12
    assert_spaced(arrivals(fake_openai, skip=1), 0.1)
    waits = [line for line in printed(document, "summaries") if "for a slot of model 'gpt-4o-mini'" in line]
    assert waits and all("requests_per_minute: 600" in line for line in waits)


@pytest.mark.slow
def test_on_step_functions_the_task_functions_share_the_limit_in_dynamodb(
    cli: Cli,
    write_pipeline: Callable[..., Path],
    fake_openai: FakeOpenAIServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Four emulated Lambda invocations at once, at one call every half second. The emulator
    runs them as threads of this process, on cores shared with the emulated AWS, so a call may
    reach the server later after its slot than on the engine: a wider tolerance, still far
    from the four calls at once that an unlimited run makes."""
    _, pipeline = docs_example()
    configure(tmp_path, monkeypatch, fake_openai, {"gpt-4o-mini": {"requests_per_minute": 120}})
    warm_up(cli, write_pipeline)
    path = write_pipeline(pipeline)
    result = cli("run", path, "--json", "--engine", "stepfunctions", "-i", "articles=[1, 2, 3, 4]")
    assert result.code == 0, result.stderr
    document = result.document()
    assert document["usage"]["llm_calls"] == 4 and fake_openai.request_count == 1 + 4
    assert_spaced(arrivals(fake_openai, skip=1), 0.5, tolerance=0.2)
    waits = [line for line in printed(document, "summaries") if "for a slot of model 'gpt-4o-mini'" in line]
    assert waits and all("requests_per_minute: 120" in line for line in waits)


@pytest.mark.slow
def test_two_runs_at_once_share_the_limit(
    write_pipeline: Callable[..., Path],
    fake_openai: FakeOpenAIServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs_run(tmp_path, monkeypatch, fake_openai, write_pipeline)
    _, pipeline = docs_example()
    tasks = pipeline.index("tasks:\n") + len("tasks:")  # each process warms its client up first
    path = write_pipeline(
        pipeline[:tasks]
        + WARM_UP
        + pipeline[tasks:].replace("    tasks:", "    depends_on: [warm_up]\n    tasks:", 1)
    )
    command = [
        sys.executable,
        "-m",
        "orchestrator",
        "run",
        str(path),
        "--json",
        "-i",
        "articles=[1, 2, 3, 4, 5, 6]",
    ]
    runs = [
        subprocess.Popen(command, env=dict(os.environ), stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [run.communicate(timeout=90)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    assert [json.loads(output)["status"] for output in outputs] == ["succeeded", "succeeded"]
    limited = [request.at for request in fake_openai.requests if request.json["model"] == "gpt-4o-mini"]
    assert len(limited) == 12
    assert_spaced(sorted(limited), 0.1)


def usage_reply(tokens_in: int, tokens_out: int) -> Callable[[Any], FakeResponse]:
    def reply(body: Any) -> FakeResponse:
        return FakeResponse(
            json_body={
                "id": "chatcmpl-rate",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out},
            }
        )

    return reply


@pytest.mark.slow
def test_calls_are_spaced_by_the_tokens_the_server_reports(
    cli: Cli,
    write_pipeline: Callable[..., Path],
    fake_openai: FakeOpenAIServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # each call reserves about 10 tokens (0.1 s at 100 tokens a second) but uses 25 (0.25 s)
    fake_openai.reply = usage_reply(20, 5)
    configure(tmp_path, monkeypatch, fake_openai, {"m": {"tokens_per_minute": 6000}})
    warm_up(cli, write_pipeline)
    path = write_pipeline(
        """
        name: tokens
        tasks:
          - name: asks
            type: for_loop
            iterate_over: "{{ [1, 2, 3, 4] }}"
            tasks:
              - name: ask
                type: llm_task
                model: m
                prompt: "n {{ item }}"
                max_tokens: 1
        """
    )
    result = cli("run", path, "--json")
    assert result.code == 0, result.stderr
    assert result.document()["usage"]["tokens_in"] == 80
    assert_spaced(arrivals(fake_openai, skip=1), 0.25)


def test_a_slot_too_far_away_fails_the_call_with_llm_rate_limited_and_a_replay_takes_none(
    cli: Cli,
    write_pipeline: Callable[..., Path],
    fake_openai: FakeOpenAIServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_pipeline(
        """
        name: twice
        tasks:
          - name: first
            type: llm_task
            model: m
            prompt: one
          - name: second
            type: llm_task
            model: m
            prompt: two
            depends_on: [first]
        """
    )
    record = tmp_path / "exchanges.json"
    configure(tmp_path, monkeypatch, fake_openai, {"m": {}})
    assert cli("run", path, "--json", "--record", record).code == 0
    # one call every two minutes: the second call's slot is more than a minute away
    configure(tmp_path, monkeypatch, fake_openai, {"m": {"requests_per_minute": 0.5}})
    replayed = cli("run", path, "--json", "--replay", record)
    assert replayed.code == 0, replayed.stderr
    assert replayed.document()["status"] == "succeeded" and fake_openai.request_count == 2
    assert shared_state(load_settings()).read(NAMESPACE, "m").version == 0  # no slot was taken
    live = cli("run", path, "--json")
    document = live.document()
    assert live.code != 0 and fake_openai.request_count == 3
    error = document["tasks"]["second"]["error"]
    assert error["type"] == "LLMRateLimited"
    assert (
        "requests_per_minute: 0.5" in error["message"]
        and "more than the 60s a call waits" in error["message"]
    )


def test_a_task_takes_no_slot_past_its_timeout(
    cli: Cli,
    write_pipeline: Callable[..., Path],
    fake_openai: FakeOpenAIServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(tmp_path, monkeypatch, fake_openai, {"m": {"requests_per_minute": 6}})  # every 10 s
    path = write_pipeline(
        """
        name: hurried
        tasks:
          - {name: first, type: llm_task, model: m, prompt: one}
          - {name: second, type: llm_task, model: m, prompt: two, timeout: 5, depends_on: [first]}
        """
    )
    result = cli("run", path, "--json")
    assert result.code != 0 and fake_openai.request_count == 1
    error = result.document()["tasks"]["second"]["error"]
    assert error["type"] == "LLMRateLimited" and "what the task's timeout (5s) leaves" in error["message"]


def test_a_wrong_rate_in_the_config_is_an_error_naming_file_and_key(
    cli: Cli,
    write_pipeline: Callable[..., Path],
    fake_openai: FakeOpenAIServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = configure(tmp_path, monkeypatch, fake_openai, {"m": {"requests_per_minute": -3}})
    path = write_pipeline("name: p\ntasks:\n  - {name: a, type: llm_task, model: m, prompt: hi}\n")
    result = cli("run", path)
    assert result.code != 0 and "Traceback" not in result.stderr
    assert str(config) in result.stderr
    assert (
        "'llm.models.m.requests_per_minute' must be a number of requests per minute above 0" in result.stderr
    )
    assert fake_openai.request_count == 0
