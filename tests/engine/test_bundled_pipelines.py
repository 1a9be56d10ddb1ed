"""The pipelines in pipelines/: one runnable pipeline per YAML block of the user guide.

Every file validates without errors or warnings and runs through the CLI in this process,
its LLM tasks answered by the fake OpenAI server and its web searches by the fake search
server (tests/fakes). Each test asserts what its guide pattern is about: which tasks ran or
were skipped, how many iterations a loop made, what state and caches hold across runs.
State, cache and audit live in the SQLite file of the test's own ORCHESTRATOR_HOME, so
several `cli(...)` calls in one test see the same stores, as consecutive runs on one machine.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import yaml

from conftest import GUIDE_FIXTURES, PIPELINES, CliResult, input_args, spec_tasks
from fakes.fixtures import fake_openai, fake_search  # noqa: F401
from fakes.servers import FakeOpenAIServer, FakeResponse, FakeSearchServer

Cli = Callable[..., CliResult]
Write = Callable[..., Path]

# file stem -> the guide block (its `name:`) the file implements
GUIDE_PIPELINES = {
    "conditional_processing": "Conditional Processing Pipeline",
    "batch_processing": "Batch Processing Pipeline",
    "iterative_improvement": "Iterative Improvement Pipeline",
    "dynamic_task_generation": "Dynamic Task Generation",
    "hierarchical_error_handling": "Robust Processing Pipeline",
    "circuit_breaker": "Circuit Breaker Example",
    "task_parallelism": "Parallel Processing Pipeline",
    "pipeline_parallelism": "Multi-Pipeline Orchestration",
    "stateful_processing": "Stateful Processing Pipeline",
    "shared_state": "Shared State Pipeline",
    "database_integration": "Database Integration Pipeline",
    "api_integration": "API Integration Pipeline",
    "caching_strategy": "Optimized Pipeline with Caching",
    "resource_management": "Resource-Aware Pipeline",
    "secure_credentials": "Secure Pipeline",
    "input_validation": "Input Validation Pipeline",
}
CHILD_PIPELINES = ("data_analysis_pipeline", "model_training_pipeline", "validation_pipeline")
ALL_FILES = sorted([*GUIDE_PIPELINES, *CHILD_PIPELINES, "demo"])


def pipeline(stem: str) -> Path:
    return PIPELINES / f"{stem}.yaml"


def run(cli: Cli, path: Path, *options: str, **inputs: Any) -> dict[str, Any]:
    """Run a pipeline with --json; the exit code must agree with the document's status."""
    result = cli("run", path, "--json", *options, *input_args(inputs))
    assert result.stdout.strip(), result.stderr
    document = result.document()
    assert result.code == (1 if document["status"] == "failed" else 0), result.stderr
    return document


def statuses(document: dict[str, Any]) -> dict[str, str]:
    return {name: record["status"] for name, record in document["tasks"].items()}


def user_prompt(body: Any) -> str:
    return str(body["messages"][-1]["content"])


@dataclass
class Fakes:
    llm: FakeOpenAIServer
    search: FakeSearchServer

    def prompts(self) -> list[str]:
        return [user_prompt(body) for body in self.llm.bodies]

    def models(self) -> list[str]:
        return [str(body["model"]) for body in self.llm.bodies]


@pytest.fixture
def workdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Run from tmp_path, so relative default paths (the demo database) land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def fakes(
    fake_openai: FakeOpenAIServer,  # noqa: F811
    fake_search: FakeSearchServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    workdir: Path,
) -> Fakes:
    """The engine pointed at the fake servers (only for pipelines with LLM or search tasks:
    python-only tests skip the servers, whose start and stop cost most of a short test)."""
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("ORCHESTRATOR_SEARCH_URL", fake_search.url)
    return Fakes(fake_openai, fake_search)


# -- the files ----------------------------------------------------------------------------


def test_every_guide_block_has_a_bundled_pipeline_of_the_same_name() -> None:
    guide_names = {
        path.stem: yaml.safe_load(path.read_text(encoding="utf-8"))["name"] for path in GUIDE_FIXTURES
    }
    assert guide_names == GUIDE_PIPELINES
    assert sorted(path.stem for path in PIPELINES.glob("*.yaml")) == ALL_FILES
    for stem, name in GUIDE_PIPELINES.items():
        document = yaml.safe_load(pipeline(stem).read_text(encoding="utf-8"))
        assert document["name"] == name, stem
        assert document["description"].startswith("Guide pattern: "), stem
        assert "\n" not in document["description"].strip(), stem
    for stem in CHILD_PIPELINES:
        document = yaml.safe_load(pipeline(stem).read_text(encoding="utf-8"))
        assert "pipeline_parallelism.yaml" in document["description"], stem


def test_every_bundled_pipeline_validates_without_errors_or_warnings(cli: Cli) -> None:
    result = cli("validate", *(pipeline(stem) for stem in ALL_FILES))
    assert result.code == 0, result.stderr
    assert result.stderr == ""  # no warnings at all
    assert result.stdout.count(": ok (") == len(ALL_FILES)


# Inputs that keep a run with otherwise default inputs fast and deterministic.
FAST_INPUTS: dict[str, dict[str, Any]] = {
    "circuit_breaker": {"failure_rate": 0},
    "caching_strategy": {"simulated_work_seconds": 0},
    "secure_credentials": {"api_key": "k-123", "database_password": "pw-456"},
}


def score_or_ok(body: Any) -> str:
    """The while loop asks for a score: one above the default threshold of 0.8; else "ok"."""
    return "0.9" if "Respond with just the number" in user_prompt(body) else "ok"


@pytest.fixture(scope="module")
def default_run_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Fakes]]:
    """One state folder and one pair of fake servers for every default-input run below: these
    runs share nothing that matters, and a fresh state database and servers per run would cost
    more than the runs themselves."""
    home = tmp_path_factory.mktemp("default_runs")
    with FakeOpenAIServer(reply=score_or_ok) as llm, FakeSearchServer() as search:
        yield home, Fakes(llm, search)


# api_integration needs an API to talk to: its tests below start one.
@pytest.mark.parametrize("stem", sorted(set(ALL_FILES) - {"api_integration"}))
def test_every_pipeline_succeeds_with_its_default_inputs(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, default_run_services: tuple[Path, Fakes], stem: str
) -> None:
    home, services = default_run_services
    monkeypatch.chdir(home)
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(home / ".orchestrator"))
    monkeypatch.setenv("OPENAI_BASE_URL", services.llm.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("ORCHESTRATOR_SEARCH_URL", services.search.url)
    document = run(cli, pipeline(stem), **FAST_INPUTS.get(stem, {}))
    assert document["status"] == "succeeded", document["error"]
    assert set(statuses(document).values()) <= {"succeeded", "skipped"}
    assert document["pipeline"] == stem


# -- control flow -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data_type", "ran"),
    [("text", "process_text"), ("image", "process_image"), ("audio", "process_audio")],
)
def test_conditional_processing_runs_only_the_branch_of_the_data_type(
    cli: Cli, fakes: Fakes, data_type: str, ran: str
) -> None:
    document = run(cli, pipeline("conditional_processing"), data_type=data_type, input_content="Hello there")
    assert document["status"] == "succeeded"
    branches = {"process_text", "process_image", "process_audio"}
    assert statuses(document) == {
        "analyze_input": "succeeded",
        ran: "succeeded",
        **{name: "skipped" for name in branches - {ran}},
    }
    assert document["outputs"]["analyze_input"]["processing_strategy"] == f"{data_type}_processing"
    for name in branches - {ran}:
        assert document["outputs"][name] is None
    if data_type == "text":
        assert fakes.models() == ["gpt-4"]
        assert document["outputs"]["process_text"] == "Analyze this text: Hello there"
    else:
        assert fakes.llm.request_count == 0
    if data_type == "image":
        assert document["outputs"]["process_image"] == {"dimensions": [1024, 768], "format": "RGB"}
    if data_type == "audio":
        assert document["outputs"]["process_audio"] == {"sample_rate": 44100, "duration": 180}


def test_conditional_processing_rejects_a_data_type_outside_its_options(cli: Cli, workdir: Path) -> None:
    result = cli("run", pipeline("conditional_processing"), "--json", "-i", "data_type=video")
    assert result.code == 2
    assert result.stdout == ""


def test_batch_processing_validates_processes_and_stores_every_item(cli: Cli, fakes: Fakes) -> None:
    items = [{"id": f"doc-{n}", "content": f"content number {n}"} for n in range(3)]
    document = run(cli, pipeline("batch_processing"), items=items)
    assert document["status"] == "succeeded"
    batch = document["outputs"]["process_batch"]
    assert [entry["validate_item"] for entry in batch] == [
        {"valid": True, "item_id": f"doc-{n}"} for n in range(3)
    ]
    assert [entry["store_result"] for entry in batch] == [
        {"stored": True, "item_id": f"doc-{n}"} for n in range(3)
    ]
    for n, entry in enumerate(batch):  # the fake echoes the prompt: each item got its own
        assert f"ID: doc-{n}\nContent: content number {n}" in entry["process_item"]
    assert fakes.models() == ["gpt-3.5-turbo"] * 3


def test_batch_processing_fails_on_an_item_without_id(cli: Cli, fakes: Fakes) -> None:
    items = [{"id": "ok-1", "content": "fine"}, {"content": "no id here"}]
    document = run(cli, pipeline("batch_processing"), items=items)
    assert document["status"] == "failed"
    assert document["error"]["task"] == "process_batch"
    assert document["error"]["type"] == "ValueError"
    assert "Item missing ID" in document["error"]["message"]
    assert statuses(document) == {"process_batch": "failed"}


def test_iterative_improvement_stops_when_the_score_passes_the_threshold(cli: Cli, fakes: Fakes) -> None:
    scores = iter(["0.5", "0.7", "0.9", "0.95", "0.99"])
    improvements = iter(f"Improved draft {n}" for n in range(1, 6))

    def reply(body: Any) -> str:
        return next(scores) if "Rate the quality" in user_prompt(body) else next(improvements)

    fakes.llm.reply = reply
    document = run(cli, pipeline("iterative_improvement"), initial_content="First draft")
    assert document["status"] == "succeeded"
    # two rounds below 0.8 improve the text, the third scores 0.9 and stops the loop
    assert document["outputs"]["improve_content"] == {
        "iterations": 3,
        "state": {"current_content": "Improved draft 2", "quality_met": True, "iteration": 3},
    }
    prompts = fakes.prompts()
    assert len(prompts) == 5  # 3 ratings + 2 improvements
    rated = [prompt for prompt in prompts if "Rate the quality" in prompt]
    assert "First draft" in rated[0]
    assert "Improved draft 1" in rated[1]
    assert "Improved draft 2" in rated[2]
    assert "quality score of 0.5" in prompts[1]


def test_iterative_improvement_stops_after_max_iterations(cli: Cli, fakes: Fakes) -> None:
    fakes.llm.reply = lambda body: "0.1" if "Rate the quality" in user_prompt(body) else "better"
    document = run(cli, pipeline("iterative_improvement"), quality_threshold=0.95)
    assert document["status"] == "succeeded"  # reaching max_iterations is not an error
    loop = document["outputs"]["improve_content"]
    assert loop["iterations"] == 5
    assert loop["state"]["quality_met"] is False
    assert loop["state"]["iteration"] == 5
    assert fakes.llm.request_count == 10


def test_iterative_improvement_good_first_draft_needs_one_round(cli: Cli, fakes: Fakes) -> None:
    fakes.llm.reply = lambda body: "0.85"
    document = run(cli, pipeline("iterative_improvement"), initial_content="Already fine")
    loop = document["outputs"]["improve_content"]
    assert loop == {
        "iterations": 1,
        "state": {"current_content": "Already fine", "quality_met": True, "iteration": 1},
    }
    assert fakes.llm.request_count == 1  # improve_if_needed was skipped


def test_dynamic_research_workflow_runs_the_generated_tasks_in_order(cli: Cli, fakes: Fakes) -> None:
    fakes.llm.reply = lambda body: "A short summary."
    document = run(
        cli, pipeline("dynamic_task_generation"), workflow_type="research", research_topic="vector databases"
    )
    assert document["status"] == "succeeded"
    task_list = document["outputs"]["generate_workflow"]["task_list"]
    assert [spec["type"] for spec in task_list] == ["web_search_task", "llm_task", "python_task"]
    search, summary, report = document["outputs"]["execute_dynamic_tasks"]
    assert search["query"] == "vector databases"
    assert len(search["results"]) == 2
    assert summary == "A short summary."
    assert report == {
        "topic": "vector databases",
        "sources": ["https://example.com/1", "https://example.com/2"],
        "summary": "A short summary.",
    }
    assert fakes.search.queries == ["vector databases"]
    assert fakes.prompts() == ["Summarize research findings about: vector databases"]
    assert fakes.models() == ["gpt-4o-mini"]  # generated LLM tasks name no model: the default


@pytest.mark.parametrize(("workflow_type", "count"), [("creative", 3), ("analysis", 2)])
def test_dynamic_workflows_generate_their_own_task_lists(
    cli: Cli, fakes: Fakes, workflow_type: str, count: int
) -> None:
    document = run(cli, pipeline("dynamic_task_generation"), workflow_type=workflow_type)
    assert document["status"] == "succeeded"
    outputs = document["outputs"]["execute_dynamic_tasks"]
    assert len(outputs) == count
    assert fakes.llm.request_count == count - 1
    assert fakes.search.request_count == 0
    if workflow_type == "creative":
        assert outputs[2] == {
            "ideas": "Generate creative ideas",
            "refined": "Refine and expand ideas",
            "length": len("Refine and expand ideas"),
        }
    else:
        assert outputs[1]["analysis_plan"] == outputs[0]
        assert outputs[0].startswith("Outline an analysis plan for: ")


# -- error handling -----------------------------------------------------------------------


def failing_model(model: str, status: int) -> Callable[[Any], str | FakeResponse]:
    """A reply that fails every request to `model` (a 4xx is not retried) and echoes the rest."""

    def reply(body: Any) -> str | FakeResponse:
        if body["model"] == model:
            return FakeResponse(status=status, message=f"model {model} is unavailable")
        return f"{body['model']}: {user_prompt(body)}"

    return reply


def test_robust_pipeline_uses_the_enhancement_when_everything_works(cli: Cli, fakes: Fakes) -> None:
    fakes.llm.reply = lambda body: f"{body['model']}: {user_prompt(body)}"
    document = run(cli, pipeline("hierarchical_error_handling"), critical_prompt="Status?")
    assert document["status"] == "succeeded"
    assert spec_tasks(document) == {
        name: {"status": "succeeded", "attempts": 1, "error": None}
        for name in ("critical_task", "optional_enhancement", "recovery_task")
    }
    assert document["outputs"]["critical_task"] == "gpt-4: Status?"
    assert document["outputs"]["optional_enhancement"] == "claude-3: Enhance: gpt-4: Status?"
    assert document["outputs"]["recovery_task"] == {
        "status": "success",
        "result": "claude-3: Enhance: gpt-4: Status?",
    }


def test_robust_pipeline_skips_a_failed_enhancement_with_its_fallback_value(cli: Cli, fakes: Fakes) -> None:
    fakes.llm.reply = failing_model("claude-3", 404)
    document = run(cli, pipeline("hierarchical_error_handling"), critical_prompt="Status?")
    assert document["status"] == "succeeded"  # skip is not a degradation
    enhancement = document["tasks"]["optional_enhancement"]
    assert enhancement["status"] == "skipped"
    assert enhancement["attempts"] == 1  # a 404 is not worth retrying: no 5 s waits
    assert enhancement["error"]["type"] == "LLMRequestError"
    assert document["outputs"]["optional_enhancement"] == "gpt-4: Status?"  # fallback_value
    assert document["outputs"]["recovery_task"] == {"status": "success", "result": "gpt-4: Status?"}


def test_robust_pipeline_falls_back_to_the_simpler_model(cli: Cli, fakes: Fakes) -> None:
    fakes.llm.reply = failing_model("gpt-4", 400)
    document = run(
        cli, pipeline("hierarchical_error_handling"), critical_prompt="Hard", simplified_prompt="Easy"
    )
    assert document["status"] == "succeeded"
    assert document["tasks"]["critical_task"]["status"] == "fallback"
    assert document["outputs"]["critical_task"] == "gpt-3.5-turbo: Easy"
    assert document["outputs"]["recovery_task"]["result"] == "claude-3: Enhance: gpt-3.5-turbo: Easy"
    assert fakes.models() == ["gpt-4", "gpt-3.5-turbo", "claude-3"]


def test_robust_pipeline_aborts_when_critical_task_and_fallback_fail(cli: Cli, fakes: Fakes) -> None:
    fakes.llm.reply = lambda body: FakeResponse(status=400, message="bad request")
    document = run(cli, pipeline("hierarchical_error_handling"))
    assert document["status"] == "failed"
    assert document["error"]["task"] == "critical_task"
    assert document["error"]["type"] == "LLMRequestError"
    assert statuses(document) == {
        "critical_task": "failed",
        "optional_enhancement": "not_run",
        "recovery_task": "not_run",
    }


CIRCUIT_PROBE = """
    name: circuit probe
    input_variables:
      minutes_ago: {type: integer, default: -1}
    tasks:
      - name: read
        type: python_task
        script: |
          state = context.get_shared_state('circuit_breaker')
          if {{ minutes_ago }} >= 0:
              state['last_failure'] = (datetime.now() - timedelta(minutes={{ minutes_ago }})).isoformat()
              context.set_shared_state('circuit_breaker', state)
          return state
    """


def test_circuit_breaker_opens_after_three_failures_and_half_opens_later(
    cli: Cli, workdir: Path, write_pipeline: Write
) -> None:
    breaker = pipeline("circuit_breaker")
    probe = write_pipeline(CIRCUIT_PROBE, name="probe")

    def circuit(**inputs: Any) -> dict[str, Any]:
        state: dict[str, Any] = run(cli, probe, **inputs)["outputs"]["read"]
        return state

    for failures, state in [(1, "closed"), (2, "closed"), (3, "open")]:
        document = run(cli, breaker, failure_rate=1)
        assert document["status"] == "failed"
        assert document["error"]["type"] == "Exception"
        assert document["error"]["message"].startswith("External service error")
        # the failure count was written before the task raised, and another pipeline sees it
        recorded = circuit()
        assert (recorded["failures"], recorded["state"]) == (failures, state)
        assert recorded["last_failure"] is not None

    # open: even a healthy service is not called for five minutes
    document = run(cli, breaker, failure_rate=0)
    assert document["status"] == "failed"
    assert document["error"]["message"].startswith("Circuit breaker is open")
    assert circuit()["failures"] == 3

    # six minutes later the circuit half-opens, the call succeeds and the breaker resets
    circuit(minutes_ago=6)
    document = run(cli, breaker, failure_rate=0)
    assert document["status"] == "succeeded"
    assert document["outputs"]["external_service_call"] == {"result": "success", "circuit_state": "closed"}
    assert circuit() == {"failures": 0, "last_failure": None, "state": "closed"}


# -- parallel execution -------------------------------------------------------------------


def test_task_parallelism_processes_four_chunks_concurrently(cli: Cli, fakes: Fakes) -> None:
    in_flight = {"now": 0, "most": 0}
    lock = threading.Lock()

    def reply(body: Any) -> str:
        with lock:
            in_flight["now"] += 1
            in_flight["most"] = max(in_flight["most"], in_flight["now"])
        time.sleep(0.2)
        with lock:
            in_flight["now"] -= 1
        return user_prompt(body).removeprefix("Process this data chunk: ").upper()

    fakes.llm.reply = reply
    data = "".join(chr(ord("a") + n) * 100 for n in range(4))  # four chunks of 100 characters
    document = run(cli, pipeline("task_parallelism"), input_data=data)
    assert document["status"] == "succeeded"
    assert document["outputs"]["data_preprocessing"] == {
        "chunks": ["a" * 100, "b" * 100, "c" * 100, "d" * 100],
        "total_chunks": 4,
    }
    children = [f"process_chunk_{n}" for n in range(1, 5)]
    assert statuses(document) == {
        "data_preprocessing": "succeeded",
        "parallel_processing": "succeeded",
        **{child: "succeeded" for child in children},
        "aggregate_results": "succeeded",
    }
    assert document["outputs"]["parallel_processing"] == {
        child: letter * 100 for child, letter in zip(children, "ABCD", strict=True)
    }
    assert document["outputs"]["aggregate_results"] == {
        "final_result": "\n\n".join(letter * 100 for letter in "ABCD"),
        "processed_chunks": 4,
    }
    assert in_flight["most"] >= 2  # the group's children overlapped


def test_task_parallelism_short_data_leaves_workers_empty_chunks(cli: Cli, fakes: Fakes) -> None:
    document = run(cli, pipeline("task_parallelism"), input_data="tiny")
    assert document["outputs"]["data_preprocessing"] == {"chunks": ["tiny", "", "", ""], "total_chunks": 1}
    assert document["outputs"]["aggregate_results"]["final_result"] == "Process this data chunk: tiny\n\n" + (
        "\n\n".join(["Process this data chunk:"] * 3)
    )


def test_pipeline_parallelism_consolidates_the_three_child_pipelines(cli: Cli, workdir: Path) -> None:
    document = run(
        cli,
        pipeline("pipeline_parallelism"),
        dataset_a=[2, 4, None, 6],
        training_set=[[0, 1], [1, 3], [2, 5]],
        validation_set=[[3, 7], [4, None], [5, "x"], [6, 13]],
    )
    assert document["status"] == "succeeded"
    assert statuses(document) == {
        "launch_parallel_pipelines": "succeeded",
        "consolidate_pipeline_results": "succeeded",
    }
    children = document["outputs"]["launch_parallel_pipelines"]
    assert set(children) == set(CHILD_PIPELINES)
    analysis = {"count": 3, "mean": 4.0, "stdev": 1.633, "min": 2.0, "max": 6.0, "completeness": 0.75}
    model = {"model": "linear", "slope": 2.0, "intercept": 1.0, "training_mse": 0.0, "samples": 3}
    validation = {"rows": 4, "valid_rows": 2, "invalid_rows": 2, "valid_share": 0.5}
    assert children == {
        "data_analysis_pipeline": {"describe_dataset": analysis},
        "model_training_pipeline": {"train_model": model},
        "validation_pipeline": {"check_rows": validation},
    }
    assert document["outputs"]["consolidate_pipeline_results"] == {
        "analysis": {"describe_dataset": analysis},
        "model": {"train_model": model},
        "validation": {"check_rows": validation},
        "combined_score": 0.625,
    }


def test_pipeline_parallelism_fails_when_a_child_pipeline_fails(cli: Cli, workdir: Path) -> None:
    document = run(cli, pipeline("pipeline_parallelism"), training_set=[[1, 2]])
    assert document["status"] == "failed"
    assert document["error"]["task"] == "launch_parallel_pipelines"
    assert document["error"]["type"] == "ChildPipelineFailed"
    assert "at least two [x, y] pairs" in document["error"]["message"]
    assert statuses(document)["consolidate_pipeline_results"] == "not_run"


# -- state --------------------------------------------------------------------------------


def test_stateful_processing_continues_from_the_previous_run(cli: Cli, fakes: Fakes) -> None:
    path = pipeline("stateful_processing")
    fakes.llm.reply = lambda body: "summary one" if fakes.llm.request_count == 1 else "summary two"
    first = run(cli, path, new_input="batch 1")
    assert first["status"] == "succeeded"
    assert first["outputs"]["load_previous_state"] == {
        "run_count": 0,
        "has_previous_result": False,
        "last_result": None,
    }
    assert first["outputs"]["save_state"] == {"state_saved": True, "total_runs": 1}
    assert "Process this input from scratch: batch 1" in fakes.prompts()[0]

    second = run(cli, path, new_input="batch 2")
    assert second["outputs"]["load_previous_state"] == {
        "run_count": 1,
        "has_previous_result": True,
        "last_result": "summary one",
    }
    prompt = fakes.prompts()[1]
    assert "Continue from previous result:\nsummary one" in prompt
    assert "New input to process: batch 2" in prompt
    assert "from scratch" not in prompt
    assert second["outputs"]["save_state"] == {"state_saved": True, "total_runs": 2}


def test_shared_state_counts_every_run_and_is_visible_to_other_pipelines(
    cli: Cli, workdir: Path, write_pipeline: Write
) -> None:
    for expected in (1, 2, 3):
        document = run(cli, pipeline("shared_state"))
        metrics = document["outputs"]["update_global_metrics"]
        assert metrics["total_processed"] == expected
        assert metrics["success_rate"] == 1.0
        assert metrics["last_updated"] is not None
    reader = write_pipeline(
        """
        name: metrics reader
        tasks:
          - name: read
            type: python_task
            script: return context.get_shared_state('global_metrics')['total_processed']
        """
    )
    assert run(cli, reader)["outputs"]["read"] == 3


# -- system integration -------------------------------------------------------------------


def make_database(path: Path, rows: list[tuple[str, str]]) -> None:
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("CREATE TABLE data_table (id INTEGER PRIMARY KEY, data TEXT, status TEXT)")
        connection.executemany("INSERT INTO data_table (data, status) VALUES (?, ?)", rows)
    connection.close()


def table(path: Path) -> list[tuple[int, str, str]]:
    connection = sqlite3.connect(path)
    rows = connection.execute("SELECT id, data, status FROM data_table ORDER BY id").fetchall()
    connection.close()
    return rows


def test_database_integration_processes_the_filtered_rows_once(cli: Cli, workdir: Path) -> None:
    database = workdir / "app.db"
    make_database(database, [("alpha", "new"), ("beta", "done"), ("gamma", "new")])
    path = pipeline("database_integration")

    document = run(cli, path, database_path=str(database), status_filter="new")
    assert document["status"] == "succeeded"
    output = document["outputs"]["database_operation"]
    assert output["processed_count"] == 2
    assert [(row["id"], row["data"]) for row in output["data"]] == [(1, "alpha"), (3, "gamma")]
    assert table(database) == [(1, "alpha", "processed"), (2, "beta", "done"), (3, "gamma", "processed")]

    again = run(cli, path, database_path=str(database), status_filter="new")
    assert again["outputs"]["database_operation"] == {"processed_count": 0, "data": []}


def test_database_integration_default_database_gets_demo_rows(cli: Cli, workdir: Path) -> None:
    document = run(cli, pipeline("database_integration"))  # cwd is workdir
    assert document["outputs"]["database_operation"]["processed_count"] == 2
    assert table(workdir / ".orchestrator" / "database_integration.db") == [
        (1, "demo row 1", "processed"),
        (2, "demo row 2", "processed"),
        (3, "demo row 3", "done"),
    ]


def test_database_integration_reports_a_database_error_as_data(cli: Cli, workdir: Path) -> None:
    database = workdir / "other.db"
    connection = sqlite3.connect(database)
    connection.execute("CREATE TABLE data_table (id INTEGER PRIMARY KEY)")  # no status column
    connection.close()
    document = run(cli, pipeline("database_integration"), database_path=str(database))
    assert document["status"] == "succeeded"  # the guide's script returns errors as output
    output = document["outputs"]["database_operation"]
    assert output["processed_count"] == 0
    assert "status" in output["error"]


@dataclass
class FakeApi:
    """A tiny OAuth-style API: POST /auth gives a token, GET /data needs it."""

    url: str
    expires_in: int = 3600
    auth_forms: list[dict[str, list[str]]] = field(default_factory=list)
    data_tokens: list[str] = field(default_factory=list)
    issued: int = 0


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    api = FakeApi(url="")

    class Handler(BaseHTTPRequestHandler):
        def answer(self, status: int, body: Any) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            if self.path != "/auth" or form.get("grant_type") != ["client_credentials"]:
                self.answer(400, {"error": "invalid_request"})
                return
            api.auth_forms.append(form)
            api.issued += 1
            self.answer(200, {"access_token": f"token-{api.issued}", "expires_in": api.expires_in})

        def do_GET(self) -> None:
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            if self.path != "/data" or not token.startswith("token-"):
                self.answer(401, {"error": "unauthorized"})
                return
            api.data_tokens.append(token)
            self.answer(200, {"items": [1, 2, 3], "token_used": token})

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_api_integration_authenticates_once_and_reuses_the_cached_token(
    cli: Cli, workdir: Path, fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_CLIENT_ID", "client-7")
    monkeypatch.setenv("API_CLIENT_SECRET", "s3cret")
    path = pipeline("api_integration")
    first = run(cli, path, api_base_url=fake_api.url)
    second = run(cli, path, api_base_url=fake_api.url + "/")
    for document in (first, second):
        assert document["status"] == "succeeded"
        assert document["outputs"]["authenticated_api_call"] == {"items": [1, 2, 3], "token_used": "token-1"}
    assert fake_api.auth_forms == [
        {"client_id": ["client-7"], "client_secret": ["s3cret"], "grant_type": ["client_credentials"]}
    ]
    assert fake_api.data_tokens == ["token-1", "token-1"]


def test_api_integration_refreshes_an_expired_token(cli: Cli, workdir: Path, fake_api: FakeApi) -> None:
    fake_api.expires_in = 30  # the pipeline keeps a 60 s margin: the token is stale at once
    path = pipeline("api_integration")
    run(cli, path, api_base_url=fake_api.url)
    document = run(cli, path, api_base_url=fake_api.url)
    assert document["outputs"]["authenticated_api_call"]["token_used"] == "token-2"
    assert len(fake_api.auth_forms) == 2


def test_api_integration_fails_on_an_http_error(cli: Cli, workdir: Path, fake_api: FakeApi) -> None:
    document = run(cli, pipeline("api_integration"), api_base_url=fake_api.url + "/missing")
    assert document["status"] == "failed"
    assert document["error"]["task"] == "authenticated_api_call"
    assert document["error"]["type"] == "HTTPError"
    assert "400" in document["error"]["message"]


# -- performance --------------------------------------------------------------------------


def test_caching_strategy_second_run_is_served_from_the_caches(cli: Cli, fakes: Fakes) -> None:
    path = pipeline("caching_strategy")
    first = run(cli, path, input_data="payload", simulated_work_seconds=0)
    assert statuses(first) == {"expensive_computation": "succeeded", "cached_llm_call": "succeeded"}
    computed = first["outputs"]["expensive_computation"]
    assert computed["computed_value"] == len("payload") * 42
    assert fakes.llm.request_count == 1
    assert fakes.models() == ["gpt-4"]

    second = run(cli, path, input_data="payload", simulated_work_seconds=0)
    assert statuses(second) == {"expensive_computation": "cached", "cached_llm_call": "cached"}
    assert second["outputs"] == first["outputs"]
    assert fakes.llm.request_count == 1  # prompt_hash hit: no second request

    # --no-cache runs both tasks; the script's own context.get_cache still has the result
    third = run(cli, path, "--no-cache", input_data="payload", simulated_work_seconds=0)
    assert statuses(third) == {"expensive_computation": "succeeded", "cached_llm_call": "succeeded"}
    assert third["outputs"]["expensive_computation"] == computed  # same timestamp: from get_cache
    assert fakes.llm.request_count == 2

    # other inputs: another input_hash, another prompt
    other = run(cli, path, input_data="another payload", simulated_work_seconds=0)
    assert statuses(other) == {"expensive_computation": "succeeded", "cached_llm_call": "succeeded"}
    assert other["outputs"]["expensive_computation"]["computed_value"] == len("another payload") * 42
    assert fakes.llm.request_count == 3


def test_resource_management_summarises_a_file_within_its_limits(cli: Cli, workdir: Path) -> None:
    data = workdir / "big.txt"
    data.write_text("one two three\nfour five\n\nsix\n", encoding="utf-8")
    document = run(cli, pipeline("resource_management"), input_file=str(data))
    assert document["status"] == "succeeded"
    output = document["outputs"]["memory_intensive_task"]
    assert output["result"] == {"rows": 4, "words": 6, "characters": 25, "longest_row": 13}
    assert isinstance(output["memory_used"], int | float)
    assert output["peak_memory"] > 0


def test_resource_management_missing_file_fails_the_run(cli: Cli, workdir: Path) -> None:
    document = run(cli, pipeline("resource_management"), input_file=str(workdir / "absent.txt"))
    assert document["status"] == "failed"
    assert document["error"]["type"] == "FileNotFoundError"


# -- security -----------------------------------------------------------------------------


def test_secure_pipeline_uses_env_key_and_secret_and_writes_an_audit_entry(
    cli: Cli, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.settings import load_settings
    from orchestrator.stores.factory import open_stores

    monkeypatch.setenv("SECURE_API_KEY", "env-api-key-1")
    monkeypatch.setenv("ORCHESTRATOR_SECRET_DATABASE_PASSWORD", "db-password-2")
    result = cli(
        "run", pipeline("secure_credentials"), "--json", "--user", "auditor", "-i", "input_data=rows"
    )
    assert result.code == 0, result.stderr
    document = result.document()
    assert statuses(document) == {"secure_operation": "succeeded", "audit_log": "succeeded"}
    output = document["outputs"]["secure_operation"]
    assert output["status"] == "success"
    assert re.fullmatch(r"[0-9a-f]{64}", output["result_hash"])
    assert document["outputs"]["audit_log"] == {"audit_logged": True}
    for secret in ("env-api-key-1", "db-password-2"):
        assert secret not in result.stdout + result.stderr

    entries = open_stores(load_settings()).audit.query(pipeline="secure_credentials")
    assert len(entries) == 1
    entry = entries[0]
    assert entry["execution_id"] == document["run_id"]
    assert entry["user_id"] == "auditor"
    assert entry["input_hash"] == hashlib.sha256(b"rows").hexdigest()


def test_secure_pipeline_signature_depends_on_the_credentials(cli: Cli, workdir: Path) -> None:
    path = pipeline("secure_credentials")
    one = run(cli, path, api_key="key-a", database_password="pw-a")
    same = run(cli, path, api_key="key-a", database_password="pw-a")
    other = run(cli, path, api_key="key-a", database_password="pw-b")
    hashes = [document["outputs"]["secure_operation"]["result_hash"] for document in (one, same, other)]
    assert hashes[0] == hashes[1] != hashes[2]


def test_secure_pipeline_fails_clearly_without_its_credentials(
    cli: Cli, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = pipeline("secure_credentials")
    monkeypatch.delenv("SECURE_API_KEY", raising=False)
    document = run(cli, path)
    assert document["status"] == "failed"
    assert document["error"]["type"] == "ValueError"
    assert "SECURE_API_KEY" in document["error"]["message"]

    monkeypatch.setenv("SECURE_API_KEY", "env-api-key-1")
    monkeypatch.delenv("ORCHESTRATOR_SECRET_DATABASE_PASSWORD", raising=False)
    document = run(cli, path)
    assert document["status"] == "failed"
    assert document["error"]["task"] == "secure_operation"
    assert document["error"]["type"] == "SecretNotFound"
    assert document["tasks"]["secure_operation"]["attempts"] == 1  # not worth retrying


def test_input_validation_passes_sanitised_input_to_the_llm(cli: Cli, fakes: Fakes) -> None:
    document = run(cli, pipeline("input_validation"), user_input="  Report for team-7.\x07 ")
    assert document["status"] == "succeeded"
    assert document["outputs"]["validate_inputs"] == {
        "sanitized_input": "Report for team-7.",
        "validation_passed": True,
    }
    assert "Process this sanitized input safely:\nReport for team-7." in fakes.prompts()[0]
    assert fakes.models() == ["gpt-4"]


def test_input_validation_rejects_unsafe_or_too_long_input(cli: Cli, workdir: Path) -> None:
    rejected = {
        '<script>alert("x")</script>': "Input contains invalid characters",
        '"; import os; os.system("id") #': "Input contains invalid characters",
        "a" * 1001: "Input exceeds maximum length",
    }
    for text, message in rejected.items():
        document = run(cli, pipeline("input_validation"), user_input=text)
        assert document["status"] == "failed"
        assert document["error"]["task"] == "validate_inputs"
        assert document["error"]["type"] == "ValueError"
        assert document["error"]["message"].startswith(message)
        assert document["tasks"]["secure_processing"]["status"] == "not_run"


def test_input_validation_strict_mode_rejects_undeclared_inputs(cli: Cli, workdir: Path) -> None:
    result = cli("run", pipeline("input_validation"), "--json", "-i", "surprise=1")
    assert result.code == 2
    assert "surprise" in result.stderr


def test_get_task_output_inside_a_string_literal_is_not_a_reference(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: generator
        tasks:
          - name: generate
            type: python_task
            script: |
              return {"task_list": [
                  {"name": "first", "type": "python_task", "script": "return 1"},
                  {"name": "second", "type": "python_task",
                   "script": "return context.get_task_output('first') + 1"},
              ]}
          - name: run_generated
            type: dynamic_task_group
            tasks: "{{ generate.task_list }}"
        """
    )
    result = cli("validate", path)
    assert result.code == 0, result.stderr  # actual: 1, "no task named 'first' (tasks[0].script)"
    document = run(cli, path)
    assert document["outputs"]["run_generated"] == [1, 2]
