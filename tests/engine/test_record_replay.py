"""Issue 15, record and replay: `run --record FILE` writes every LLM and web-search exchange of a
run, `run --replay FILE` answers them from the file with no network, on both engines.

Through the CLI: a run recorded against the fake servers replays, with the servers stopped and
no endpoint configured, to the same run document on the embedded engine and on the emulated
Step Functions; a changed prompt is a `ReplayMiss` through the task's policy; a damaged file is
a clear error naming the file and line. Through `runtime.exchanges`: any recorded exchange
replays to the same answer (hypothesis), repeated requests are answered in order, and no
secret or sensitive input reaches the file.
"""

from __future__ import annotations

import json
import re
import stat
import string
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conftest import CliResult, spec_tasks
from fakes.servers import FakeOpenAIServer, FakeSearchServer
from orchestrator.errors import ConfigError, TaskError
from orchestrator.runtime.exchanges import (
    HEADER,
    ExchangeBook,
    RecordingLLMClient,
    RecordingSearchClient,
    acting_for,
    exchange_key,
    read_exchanges,
)
from orchestrator.runtime.llm import LLMReply, LLMRequest
from orchestrator.runtime.redact import Redactor
from orchestrator.runtime.search import SearchResult
from orchestrator.settings import load_settings

Cli = Callable[..., CliResult]
Write = Callable[..., Path]

SECRET = "s3cr3t-token-for-the-model"
PIPELINE = """
    name: replayed
    input_variables:
      token: {type: string, sensitive: true}
      topics: {type: array, default: [alpha, beta, gamma, delta, epsilon, zeta]}
    tasks:
      - name: find
        type: web_search_task
        query: "news about {{ topics[0] }}"
        max_results: 2
      - name: each
        type: for_loop
        iterate_over: "{{ topics }}"
        max_concurrency: 6
        tasks:
          - name: summary
            type: llm_task
            system: "You are terse."
            prompt: "Summarise {{ item }} for the holder of {{ token }}"
      - name: count
        type: llm_task
        prompt: "How many results? {{ find.results | length }}"
        output_type: integer
        resource_limits: {memory_limit: 1GB}
"""
"""Concurrent LLM calls, a search, a secret in a prompt, and a task in a sandboxed child process."""

_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2}|Z)?")
_RUN_ID = re.compile(r"\d{8}T\d{6}-[0-9a-f]{8}")


def comparable(document: dict[str, Any]) -> Any:
    """What must be equal between two runs: everything but clock readings, run ids and telemetry."""
    kept = {key: document[key] for key in ("status", "outputs", "result", "error")}
    kept["tasks"] = spec_tasks(document)
    return json.loads(_RUN_ID.sub("<run>", _TIMESTAMP.sub("<time>", json.dumps(kept))))


@pytest.fixture
def no_endpoints(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No LLM or search endpoint, no key, and an empty config: any network call would fail."""
    config = tmp_path / "empty-config.yaml"
    config.write_text("{}\n", encoding="utf-8")
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(config))
    for variable in (
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "ORCHESTRATOR_SEARCH_URL",
        "ORCHESTRATOR_DEFAULT_MODEL",
    ):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def servers(
    monkeypatch: pytest.MonkeyPatch, no_endpoints: None
) -> Iterator[tuple[FakeOpenAIServer, FakeSearchServer]]:
    """The fake LLM and search servers, configured; stopped when the test ends."""
    with FakeOpenAIServer() as llm, FakeSearchServer() as search:
        monkeypatch.setenv("OPENAI_BASE_URL", llm.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key-not-for-the-file")
        monkeypatch.setenv("ORCHESTRATOR_SEARCH_URL", search.url)
        yield llm, search


def run(cli: Cli, monkeypatch: pytest.MonkeyPatch, home: Path, path: Path, *arguments: str) -> CliResult:
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(home))
    return cli("run", path, "--json", *arguments)


# -- through the CLI -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_recorded_run_replays_to_the_same_document_on_both_engines_with_no_network(
    cli: Cli,
    write_pipeline: Write,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    servers: tuple[FakeOpenAIServer, FakeSearchServer],
) -> None:
    """Issue 15: record once against the servers, replay on each engine with none (and another
    secret value): the same run document; recording on AWS writes the very same file."""
    llm, search = servers
    path = write_pipeline(PIPELINE)
    record = tmp_path / "exchanges.jsonl"
    # GIVEN a run recorded on the embedded engine against the fake servers
    recorded = run(cli, monkeypatch, tmp_path / "h1", path, "-i", f"token={SECRET}", "--record", record)
    assert recorded.code == 0, recorded.stderr
    assert llm.request_count == 7 and search.request_count == 1
    # THEN the file is the user's only, holds every exchange once, and never the secret or key
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    text = record.read_text(encoding="utf-8")
    assert SECRET not in text and "sk-test-key" not in text and llm.base_url not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0] == HEADER
    assert sorted((line["kind"], line["task"]) for line in lines[1:]) == [
        ("llm", "count"),
        *[("llm", "summary")] * 6,
        ("search", "find"),
    ]
    # and recording the same run on the emulated AWS writes the same file, line for line
    aws_record = tmp_path / "aws-exchanges.jsonl"
    on_aws = run(
        cli, monkeypatch, tmp_path / "h2", path, "-i", f"token={SECRET}", "--record", aws_record,
        "--engine", "stepfunctions",
    )  # fmt: skip
    assert on_aws.code == 0, on_aws.stderr
    assert aws_record.read_text(encoding="utf-8") == text
    # WHEN the servers are gone, no endpoint is configured, and the secret has another value
    calls = llm.request_count, search.request_count
    monkeypatch.delenv("OPENAI_BASE_URL")
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("ORCHESTRATOR_SEARCH_URL")
    for engine in ("local", "stepfunctions"):
        replayed = run(
            cli, monkeypatch, tmp_path / f"replay-{engine}", path, "-i", "token=another-secret-in-ci",
            "--replay", record, "--engine", engine,
        )  # fmt: skip
        # THEN each engine's run document is the recorded run's
        assert replayed.code == 0, f"{engine}: {replayed.stderr}"
        assert comparable(replayed.document()) == comparable(recorded.document()), engine
    assert (llm.request_count, search.request_count) == calls
    assert record.read_text(encoding="utf-8") == text  # replaying never writes


def test_a_changed_prompt_is_a_replay_miss_handled_by_the_tasks_policy(
    cli: Cli, write_pipeline: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, servers: Any
) -> None:
    """A request that is not in the file fails with ReplayMiss, once (never retried, whatever
    retry_count says), then the task's on_failure applies; the message says what and how."""
    pipeline = """
        name: miss
        tasks:
          - name: ask
            type: llm_task
            prompt: "{prompt}"
            error_handling: {{retry_count: 3, on_failure: skip, fallback_value: none recorded}}
          - name: after
            type: python_task
            script: return {{{{ ask }}}}
    """
    record = tmp_path / "exchanges.jsonl"
    path = write_pipeline(pipeline.format(prompt="What is the capital of France?"))
    assert run(cli, monkeypatch, tmp_path / "h1", path, "--record", record).code == 0
    # WHEN the prompt changes and the run replays
    path = write_pipeline(pipeline.format(prompt="What is the capital of Italy?"))
    result = run(cli, monkeypatch, tmp_path / "h2", path, "--replay", record)
    # THEN the task failed with ReplayMiss after one attempt, and was skipped with its fallback
    document = result.document()
    assert result.code == 0, result.stderr
    task = document["tasks"]["ask"]
    assert (task["status"], task["attempts"], task["error"]["type"]) == ("skipped", 1, "ReplayMiss")
    message = task["error"]["message"]
    assert "task 'ask'" in message and "gpt-4o-mini" in message and "capital of Italy" in message
    assert f"--record {record}" in message
    assert document["outputs"]["after"] == "none recorded"


@pytest.mark.slow
def test_the_commands_option_wins_over_the_shells_variable_in_a_sandboxed_task_too(
    cli: Cli, write_pipeline: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, servers: Any
) -> None:
    """`--replay` with ORCHESTRATOR_RECORD set in the shell replays, in the engine and in a task's
    sandboxed child process alike, and writes nothing to the shell's file."""
    path = write_pipeline(
        """
        name: limited
        tasks:
          - name: ask
            type: llm_task
            prompt: "Name a colour"
            resource_limits: {memory_limit: 1GB}
        """
    )
    record = tmp_path / "exchanges.jsonl"
    assert run(cli, monkeypatch, tmp_path / "h1", path, "--record", record).code == 0
    assert [entry["task"] for entry in read_exchanges(record)] == ["ask"]  # written by the child
    shells = tmp_path / "shells.jsonl"
    monkeypatch.setenv("ORCHESTRATOR_RECORD", str(shells))
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9")  # nothing listens: no answer but the file's
    result = run(cli, monkeypatch, tmp_path / "h2", path, "--replay", record)
    assert result.code == 0, result.stderr
    assert result.document()["outputs"]["ask"] == "Name a colour"  # the fake server's echo, replayed
    assert not shells.exists()


HEADER_LINE = json.dumps(HEADER)
GOOD = {
    "kind": "llm",
    "task": "ask",
    "seq": 0,
    "request": {"model": "m", "prompt": "p"},
    "reply": "r",
    "key": "",
}


def _line(**changes: Any) -> str:
    entry = {**GOOD, **changes}
    if "key" not in changes:
        entry["key"] = exchange_key(entry["kind"], entry["request"])
    return json.dumps(entry)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such record file"),
        ("", "empty, not a record file"),
        ('{"some": "other json"}\n', "line 1: not a record file"),
        (f"{HEADER_LINE}\n{_line()}\n{{not json\n", "line 3: not JSON"),
        (f"{HEADER_LINE}\n[1, 2]\n", "line 2: an exchange must be a JSON object"),
        (f"{HEADER_LINE}\n{_line(key='0' * 64)}\n", "line 2: its 'key' is not the digest of its 'request'"),
        (f"{HEADER_LINE}\n{_line(reply=42)}\n", "line 2: the 'reply' of an LLM call must be text"),
        (f"{HEADER_LINE}\n\n{_line(kind='fax')}\n", "line 3: unknown kind 'fax'"),
        (f"{HEADER_LINE}\n{_line(kind='search', reply=[{'title': 1}])}\n", "line 2: the 'reply' of a search"),
        (
            f"{HEADER_LINE}\n{_line(error={'type': 'X'})}\n",
            "line 2: an exchange needs either 'reply' or 'error'",
        ),
        ("\udcff", "not a record file (not UTF-8 text)"),
    ],
)
def test_a_damaged_replay_file_is_refused_before_the_run_naming_file_line_and_fix(
    cli: Cli, write_pipeline: Write, tmp_path: Path, content: str | None, problem: str, no_endpoints: None
) -> None:
    path = write_pipeline("name: p\ntasks:\n  - {name: ask, type: llm_task, prompt: hi}\n")
    record = tmp_path / "exchanges.jsonl"
    if content is not None:
        record.write_bytes(content.encode("utf-8", errors="surrogateescape"))
    result = cli("run", path, "--replay", record)
    assert result.code == 2
    assert result.stderr.startswith(f"configuration error: {record}")
    assert problem in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    if content:
        assert "record it again with `orchestrator run --record" in result.stderr


@pytest.mark.parametrize("where", ["missing-folder/exchanges.jsonl", "."])
def test_a_record_file_that_cannot_be_written_is_refused_before_the_run(
    cli: Cli, write_pipeline: Write, tmp_path: Path, where: str
) -> None:
    path = write_pipeline("name: p\ntasks:\n  - {name: t, type: python_task, script: return 1}\n")
    result = cli("run", path, "--record", tmp_path / where)
    assert result.code == 2 and result.stdout == ""
    assert (
        result.stderr.startswith("configuration error: ") and "cannot write the record file" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_record_and_replay_together_are_refused(cli: Cli, write_pipeline: Write, tmp_path: Path) -> None:
    path = write_pipeline("name: p\ntasks:\n  - {name: t, type: python_task, script: return 1}\n")
    result = cli("run", path, "--record", tmp_path / "a", "--replay", tmp_path / "b")
    assert result.code == 2 and "not allowed with" in result.stderr
    with pytest.raises(ConfigError, match="both set"):
        load_settings({"ORCHESTRATOR_RECORD": "a", "ORCHESTRATOR_REPLAY": "b", "ORCHESTRATOR_CONFIG": ""})


# -- the exchange book ------------------------------------------------------------------------


class _Model:
    """An LLM client answering from a function of the prompt, counting its calls."""

    def __init__(self, answer: Callable[[LLMRequest], str]) -> None:
        self.answer = answer
        self.calls = 0

    def complete(self, request: LLMRequest) -> LLMReply:
        self.calls += 1
        return LLMReply(self.answer(request), 3, 2)


def _never() -> Any:
    raise AssertionError("a replay built the real client")


OTHER_SECRET = "another-secret-in-ci"
prompts = st.text(st.characters(codec="utf-8"), max_size=200)


@settings(max_examples=30, deadline=None)
@given(requests=st.lists(st.tuples(prompts, st.none() | st.text(max_size=30)), min_size=1, max_size=5))
def test_any_recorded_exchange_replays_to_the_same_answer(
    tmp_path_factory: pytest.TempPathFactory, requests: list[tuple[str, str | None]]
) -> None:
    path = tmp_path_factory.mktemp("book") / "exchanges.jsonl"
    model = _Model(lambda request: f"<{request.prompt}|{request.system}>" * 2)
    recorder = RecordingLLMClient(ExchangeBook(path, "record", fresh=True), lambda: model)
    asked = [LLMRequest(model="m", prompt=prompt, system=system) for prompt, system in requests]
    answers = [recorder.complete(request) for request in asked]
    replayer = RecordingLLMClient(ExchangeBook(path, "replay"), _never)
    assert [replayer.complete(request) for request in asked] == answers


@settings(max_examples=40, deadline=None)
@given(secret=st.text(string.ascii_letters + string.digits, min_size=8, max_size=40), prompt=prompts)
def test_no_secret_reaches_the_record_file_and_it_replays_with_another(
    tmp_path_factory: pytest.TempPathFactory, secret: str, prompt: str
) -> None:
    """A secret in the prompt (a sensitive input rendered into it) and echoed in the reply, or
    in an error message, is `***` in the file, and the recording replays whatever its value."""
    assume(secret not in prompt and OTHER_SECRET not in prompt)
    path = tmp_path_factory.mktemp("book") / "exchanges.jsonl"
    redactor = Redactor()
    redactor.add(secret)
    book = ExchangeBook(path, "record", fresh=True)
    echo = RecordingLLMClient(book, lambda: _Model(lambda request: f"you said {request.prompt}"))

    def refuse(query: str, max_results: int) -> list[SearchResult]:
        raise TaskError("SearchRequestError", f"refused {query}")

    search = RecordingSearchClient(book, lambda: type("Refusing", (), {"search": staticmethod(refuse)})())
    with acting_for("ask", redactor):
        echo.complete(LLMRequest(model="m", prompt=f"{prompt} key={secret}"))
        with pytest.raises(TaskError):
            search.search(f"about {secret}", 3)
    book.finish()
    assert secret not in path.read_text(encoding="utf-8")
    # WHEN the same request is made with another secret value, redacted the same way
    other = Redactor()
    other.add(OTHER_SECRET)
    replay = ExchangeBook(path, "replay")
    with acting_for("ask", other):
        answer = RecordingLLMClient(replay, _never).complete(
            LLMRequest(model="m", prompt=f"{prompt} key={OTHER_SECRET}")
        )
        with pytest.raises(TaskError, match="refused about \\*\\*\\*") as refused:
            RecordingSearchClient(replay, _never).search(f"about {OTHER_SECRET}", 3)
    assert answer.text == f"you said {prompt} key=***"
    assert refused.value.error_type == "SearchRequestError"


def test_equal_requests_are_answered_in_recorded_order_then_miss(tmp_path: Path) -> None:
    """A request made again (a retry, equal loop items) gets the next recorded answer; once
    they are used up it is a ReplayMiss, never an answer given twice."""
    path = tmp_path / "exchanges.jsonl"
    replies = iter(["first", "second"])
    recorder = RecordingLLMClient(
        ExchangeBook(path, "record", fresh=True), lambda: _Model(lambda _: next(replies))
    )
    request = LLMRequest(model="m", prompt="same", temperature=0.7)
    assert [recorder.complete(request).text, recorder.complete(request).text] == ["first", "second"]
    replayer = RecordingLLMClient(ExchangeBook(path, "replay"), _never)
    with acting_for("ask", Redactor()):
        assert [replayer.complete(request).text, replayer.complete(request).text] == ["first", "second"]
        with pytest.raises(TaskError) as miss:
            replayer.complete(request)
    assert miss.value.error_type == "ReplayMiss" and not miss.value.retryable
    assert "holds 2 answer(s) to it, all given" in miss.value.message
    # and a parameter that changes the answer is another exchange
    with pytest.raises(TaskError, match="ReplayMiss"):
        RecordingLLMClient(ExchangeBook(path, "replay"), _never).complete(
            LLMRequest(model="m", prompt="same", temperature=0.0)
        )


def test_concurrent_recorders_write_whole_lines_in_a_stable_order(tmp_path: Path) -> None:
    """Threads recording at once (a for_loop's iterations, emulated Lambda containers) append
    whole lines; the finished file is sorted, so it does not depend on who answered first."""
    files = []
    for order in (range(40), reversed(range(40))):
        path = tmp_path / f"exchanges-{len(files)}.jsonl"
        book = ExchangeBook(path, "record", fresh=True)
        client = RecordingLLMClient(book, lambda: _Model(lambda request: request.prompt.upper()))
        threads = [
            threading.Thread(target=client.complete, args=(LLMRequest(model="m", prompt=f"item {n}"),))
            for n in order
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        book.finish()
        assert len(read_exchanges(path)) == 40
        files.append(path.read_text(encoding="utf-8"))
    assert files[0] == files[1]


# -- the documented example ------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "record-replay.md"


def _block_after(text: str, marker: str, language: str) -> str:
    start = text.index(f"```{language}\n", text.index(marker)) + len(language) + 4
    return text[start : text.index("```", start)]


@pytest.mark.slow
def test_the_documented_example_replays_from_its_committed_file(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_endpoints: None
) -> None:
    """docs/record-replay.md: its pipeline replays, with no endpoint, from the file it shows,
    which is the committed fixture line for line."""
    text = DOC.read_text(encoding="utf-8")
    marker = "<!-- record-file: "
    shown = text[text.index(marker) + len(marker) :].split(" -->")[0]
    record = DOC.parents[1] / shown
    assert _block_after(text, marker, "text") == record.read_text(encoding="utf-8")
    path = tmp_path / "triage.yaml"
    path.write_text(_block_after(text, "## A complete example", "yaml"), encoding="utf-8")
    for engine in ("local", "stepfunctions"):
        result = run(cli, monkeypatch, tmp_path / engine, path, "--replay", record, "--engine", engine)
        assert result.code == 0, result.stderr
        assert result.document()["outputs"]["report"] == {
            "labels": ["bug", "question", "request"],
            "bugs": 1,
            "see_also": ["https://status.example.com/incidents/812", "https://help.example.com/photos"],
        }


def test_a_repair_loops_calls_replay_each_to_its_own_recorded_answer(tmp_path: Path) -> None:
    """An output_schema repair loop sends the same prompt with the replies so far: each of its
    calls is its own exchange, so a replayed loop repairs exactly as the recorded one did."""
    path = tmp_path / "exchanges.jsonl"
    replies = iter(["not json", '{"n": 1}'])
    recorder = RecordingLLMClient(
        ExchangeBook(path, "record", fresh=True), lambda: _Model(lambda _: next(replies))
    )
    schema = {"type": "object", "required": ["n"]}
    first = LLMRequest(model="m", prompt="count", response_schema=schema)
    repair = LLMRequest(
        model="m",
        prompt="count",
        response_schema=schema,
        turns=(("assistant", "not json"), ("user", "that was not JSON")),
    )
    assert [recorder.complete(first).text, recorder.complete(repair).text] == ["not json", '{"n": 1}']
    replayer = RecordingLLMClient(ExchangeBook(path, "replay"), _never)
    with acting_for("ask", Redactor()):
        assert replayer.complete(repair).text == '{"n": 1}'
        assert replayer.complete(first).text == "not json"
