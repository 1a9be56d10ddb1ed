"""Shared fixtures: an isolated state folder, pipeline files in tmp_path, the CLI in process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import main

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Let the commands the tests start take Ctrl-C, however the tests were started: a process
    started in the background by a shell without job control (as some CI runners start their
    steps) ignores SIGINT, and its children inherit that, so `run` and `ui` would not stop."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# The user guide's 16 YAML blocks, verbatim, one file each (named as their pipelines/ version).
GUIDE_FIXTURES = sorted((REPO / "tests" / "fixtures" / "guide").glob("*.yaml"))
PIPELINES = REPO / "pipelines"


def every_state(definition: dict[str, Any]) -> dict[str, Any]:
    """Every state of a definition by name, those in Parallel branches and Map iterations too
    (independent tasks run in the branches of compiler-made Parallel states)."""
    found: dict[str, Any] = {}
    for name, state in definition["States"].items():
        found[name] = state
        for branch in state.get("Branches", []):
            found.update(every_state(branch))
        if "ItemProcessor" in state:
            found.update(every_state(state["ItemProcessor"]))
    return found


SPEC_RECORD = ("status", "attempts", "error")
"""A task record's keys of SPEC section 11 (the run document adds telemetry: docs/telemetry.md)."""


def spec_record(record: dict[str, Any]) -> dict[str, Any]:
    """A task record without its telemetry fields."""
    return {key: record[key] for key in SPEC_RECORD if key in record}


def spec_tasks(document: dict[str, Any]) -> dict[str, Any]:
    """A run document's task records without their telemetry fields."""
    return {name: spec_record(record) for name, record in document["tasks"].items()}


def _moment(value: str) -> float:
    assert isinstance(value, str) and value.endswith("Z") and len(value) == 24, value
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def check_times(record: dict[str, Any], *, finished: bool = True) -> tuple[float, float | None] | None:
    """Check a run document's (or task record's) telemetry times, recursively: each span ordered
    (started <= ended, duration = ended - started), attempts in order, a container
    covering what is inside it, nothing open once `finished`. Returns the span, if any."""
    if record.get("started_at") is None:
        assert record.get("ended_at") is None and record.get("duration") is None, record
        return None
    started = _moment(record["started_at"])
    ended = None if record["ended_at"] is None else _moment(record["ended_at"])
    assert ended is not None or not finished, record
    if ended is not None:
        assert started <= ended and abs(record["duration"] - (ended - started)) < 0.0015, record
    previous = None
    inner: list[dict[str, Any]] = list(record.get("attempt_log") or [])
    for number, attempt in enumerate(inner, start=1):
        assert attempt["attempt"] == number
        span = check_times(attempt, finished=finished)
        assert span is not None and span[0] >= started - 0.001
        if previous is not None and not attempt["fallback"]:
            # (not after the previous one's end: a child pipeline two groups run shares its records)
            assert previous <= span[0] + 0.001
        previous = span[0]
    records = [r for child in record.get("children") or [] for r in child["tasks"].values()]
    if "run_id" in record:
        records = list(record["tasks"].values())
    for nested in records:
        span = check_times(nested, finished=finished)
        if span is not None:
            assert span[0] >= started - 0.001
            if ended is not None and span[1] is not None:
                assert span[1] <= ended + 0.001
    return started, ended


CALL_CONTENT = ("tokens_in", "tokens_out", "cost_usd")


def agreed_record(record: dict[str, Any], *, content: bool = True) -> dict[str, Any]:
    """A task record as both engines must give it: its SPEC fields and its telemetry without
    times (whether it has a span; each attempt's status, error, printed lines and LLM calls,
    with their costs; its inputs; its children, recursively). Without `content`, what a task computed (inputs,
    printed lines, tokens) is left out: for pipelines that depend on chance or the clock.
    A task `cancelled` by the run's end is its SPEC fields alone: how far it had got is a
    matter of scheduling, on either engine."""
    if record.get("status") == "cancelled":
        return spec_record(record)
    found = {**spec_record(record), "spanned": record.get("started_at") is not None}
    kept = ("attempt", "fallback", "status", "error", *(("printed",) if content else ()))
    found["inputs"] = record.get("inputs") if content else None
    found["attempt_log"] = [
        {
            **{key: attempt[key] for key in kept},
            "llm_calls": [
                {key: call[key] for key in ("model", *(CALL_CONTENT if content else ()))}
                for call in attempt["llm_calls"]
            ],
        }
        for attempt in record.get("attempt_log") or []
    ]
    if "children" in record:
        children = record["children"]
        if record["status"] not in {"succeeded", "fallback"}:
            # which inner runs a failed container started after its first failure is a matter
            # of scheduling, on either engine: up to that one
            failed = [
                i for i, c in enumerate(children) if any(r["status"] == "failed" for r in c["tasks"].values())
            ]
            children = children[: failed[0] + 1] if failed else children
        found["children"] = [
            {
                "key": child["key"],
                "tasks": {n: agreed_record(r, content=content) for n, r in child["tasks"].items()},
            }
            for child in children
        ]
    return found


def agreed_tasks(document: dict[str, Any], *, content: bool = True) -> dict[str, Any]:
    """A run document's task records as both engines must give them (`agreed_record`), once
    its times are checked (`check_times`)."""
    check_times(document, finished=document["status"] != "running")
    return {name: agreed_record(record, content=content) for name, record in document["tasks"].items()}


def input_args(inputs: dict[str, Any]) -> list[str]:
    """`-i k=v` for each input: strings as they are, anything else as JSON (a YAML flow value)."""
    arguments: list[str] = []
    for key, value in inputs.items():
        text = value if isinstance(value, str) else json.dumps(value)
        arguments += ["-i", f"{key}={text}"]
    return arguments


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / ".orchestrator"
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(home))
    for variable in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "ORCHESTRATOR_CONFIG",
        "ORCHESTRATOR_SEARCH_URL",
    ):
        monkeypatch.delenv(variable, raising=False)
    return home


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def document(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.stdout)
        return loaded


def run_in_a_process(home: Path, path: Path, *arguments: str) -> tuple[int, dict[str, Any], str]:
    """`orchestrator run PATH --json ARGS` in a child process with its own state folder: its exit
    code, its run document (there must be one) and its stderr."""
    finished = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(path), "--json", *arguments],
        env={**os.environ, "ORCHESTRATOR_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert finished.stdout.strip(), f"no document (exit {finished.returncode}): {finished.stderr}"
    return finished.returncode, json.loads(finished.stdout), finished.stderr


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `orchestrator ARGS...` in this process."""

    def run(*arguments: str) -> CliResult:
        try:
            code = main([str(a) for a in arguments])
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def run_on_both_engines(
    cli: Callable[..., CliResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., dict[str, CliResult]]:
    """`orchestrator run FILE --json ARGS...` on the embedded engine and on the emulated Step
    Functions, each with a state folder of its own; each must exit 0. Results by engine."""

    def run(path: Path, *arguments: str) -> dict[str, CliResult]:
        results = {}
        for engine in ("local", "stepfunctions"):
            monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path / engine))
            result = cli("run", path, "--json", "--engine", engine, *arguments)
            assert result.code == 0, f"{engine}: {result.stderr}"
            results[engine] = result
        return results

    return run


@pytest.fixture
def write_pipeline(tmp_path: Path) -> Callable[..., Path]:
    """Write YAML text (dedented) to tmp_path/<name>.yaml and return its path."""

    def write(text: str, name: str = "pipeline") -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port for the session; yields its URL."""
    executable = shutil.which("redis-server")
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed: .ci/run must install it")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            executable,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        pytest.fail("redis-server did not start")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def dynamodb_tables(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The template's own DynamoDB tables in a moto account: `{"client": ..., logical id: name}`."""
    import boto3
    from moto import mock_aws

    from orchestrator.aws.emulator import table_definitions
    from orchestrator.aws.moto_fixes import atomic_dynamodb_writes

    credentials = {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in credentials.items():
        monkeypatch.setenv(key, value)
    with mock_aws(), atomic_dynamodb_writes():
        client = boto3.client("dynamodb")
        names = {}
        for logical_id, arguments in table_definitions(REPO / "template.yaml").items():
            client.create_table(**arguments)
            names[logical_id] = arguments["TableName"]
        yield {"client": client, **names}
