"""Issue 14: run telemetry in the run document (`run --json`, `runs show`) on the embedded engine.

Runs go through the CLI; what they recorded is read back with `orchestrator runs show`. Times
are only checked for being ordered and consistent (never for how long anything took, except
that a retry's wait is at least its delay).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, CliResult
from fakes.fixtures import fake_openai  # noqa: F401
from fakes.servers import FakeOpenAIServer
from orchestrator.runtime.telemetry import LINE_CHARS, PRINTED_BYTES, PRINTED_LINES

Cli = Callable[..., CliResult]
Write = Callable[..., Path]

SECRET = "S3cr3t-Pa55-w0rd"
SENSITIVE = "K3y-Value-98765"
PATIENCE = 60.0


def when(value: str | None) -> float:
    assert value is not None and value.endswith("Z") and len(value) == len("2026-11-26T02:52:08.123Z")
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def check_span(record: dict[str, Any]) -> None:
    """A finished span: started <= ended and duration = ended - started (to the millisecond)."""
    started, ended = when(record["started_at"]), when(record["ended_at"])
    assert started <= ended
    assert record["duration"] == pytest.approx(ended - started, abs=0.0015)


def check_record(record: dict[str, Any]) -> None:
    """Every span in a task record, its attempts and its children: ordered, and covering what
    is inside it."""
    if record["started_at"] is None:
        assert record["ended_at"] is None and record["duration"] is None and record["attempt_log"] == []
        return
    check_span(record)
    previous_end = None
    for number, attempt in enumerate(record["attempt_log"], start=1):
        assert attempt["attempt"] == number
        check_span(attempt)
        assert when(record["started_at"]) <= when(attempt["started_at"])
        assert when(attempt["ended_at"]) <= when(record["ended_at"])
        if previous_end is not None:
            assert previous_end <= when(attempt["started_at"])
        previous_end = when(attempt["ended_at"])
    for child in record.get("children", []):
        for inner in child["tasks"].values():
            check_record(inner)
            if inner["started_at"] is not None:
                assert when(record["started_at"]) <= when(inner["started_at"])
                assert when(inner["ended_at"]) <= when(record["ended_at"])


def shown(cli: Cli, run_id: str) -> dict[str, Any]:
    result = cli("runs", "show", run_id)
    assert result.code == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def run_and_show(cli: Cli, path: Path, *arguments: str) -> tuple[dict[str, Any], dict[str, Any]]:
    result = cli("run", path, "--json", *arguments)
    assert result.stdout.strip(), result.stderr
    document = result.document()
    return document, shown(cli, document["run_id"])


def test_runs_show_has_the_telemetry_of_every_task_attempt_and_iteration(
    cli: Cli, write_pipeline: Write
) -> None:
    # GIVEN a pipeline with a retried task, a for_loop, a parallel group and a task that exits
    path = write_pipeline(
        """
        name: telemetry
        tasks:
          - name: flaky
            type: python_task
            error_handling: {retry_count: 2, retry_delay: 0.2, retry_backoff: fixed}
            script: |
              n = context.get_persistent_state("n", 0) + 1
              context.set_persistent_state("n", n)
              print("attempt", n)
              if n < 3:
                  raise RuntimeError(f"not yet ({n})")
              return n
          - name: loop
            type: for_loop
            iterate_over: [10, 20, 30]
            tasks:
              - name: double
                type: python_task
                script: |
                  print("doubling {{ item }}")
                  return {{ item }} * 2
          - name: group
            type: parallel_group
            tasks:
              - name: left
                type: python_task
                script: return "L"
              - name: right
                type: python_task
                script: return "R"
          - name: quits
            type: python_task
            error_handling: {on_failure: continue_with_degraded_service}
            script: |
              print("bye")
              import sys
              sys.exit(3)
          - name: never
            type: python_task
            condition: "{{ false }}"
            script: return 1
        """
    )
    # WHEN it runs and its document is shown
    document, seen = run_and_show(cli, path)
    # THEN runs show prints what run --json printed, with the telemetry fields
    assert seen == document
    assert seen["engine"] == "local" and isinstance(seen["user"], str) and seen["user"]
    check_span(seen)
    tasks = seen["tasks"]
    for record in tasks.values():
        check_record(record)
        if record["started_at"] is not None:
            assert when(seen["started_at"]) <= when(record["started_at"])
            assert when(record["ended_at"]) <= when(seen["ended_at"])
    # the retries: three attempts, two failed with their errors, waits of at least the delay
    flaky = tasks["flaky"]
    assert [a["status"] for a in flaky["attempt_log"]] == ["failed", "failed", "succeeded"]
    assert [a["error"] for a in flaky["attempt_log"]] == [
        {"type": "RuntimeError", "message": "not yet (1) (script line 5)"},
        {"type": "RuntimeError", "message": "not yet (2) (script line 5)"},
        None,
    ]
    assert [a["printed"] for a in flaky["attempt_log"]] == [["attempt 1"], ["attempt 2"], ["attempt 3"]]
    log = flaky["attempt_log"]
    for before, after in itertools.pairwise(log):
        assert when(after["started_at"]) - when(before["ended_at"]) >= 0.19
    assert flaky["inputs"]["script"].startswith("n = context.get_persistent_state")
    # the loop: one child per iteration, in order, its span covering theirs
    loop = tasks["loop"]
    assert loop["attempt_log"] == []
    assert [child["key"] for child in loop["children"]] == ["0", "1", "2"]
    for child, item in zip(loop["children"], [10, 20, 30], strict=True):
        inner = child["tasks"]["double"]
        assert inner["status"] == "succeeded" and inner["attempts"] == 1 and inner["error"] is None
        assert inner["attempt_log"][0]["printed"] == [f"doubling {item}"]
    # the parallel group's children stay flat, each with its own attempts
    assert "children" not in tasks["group"]
    assert tasks["left"]["attempt_log"][0]["status"] == "succeeded"
    assert when(tasks["group"]["started_at"]) <= when(tasks["left"]["started_at"])
    # a script that exits: its attempt failed with SystemExit, what it printed kept
    (quit_attempt,) = tasks["quits"]["attempt_log"]
    assert quit_attempt["status"] == "failed" and quit_attempt["error"]["type"] == "SystemExit"
    assert quit_attempt["printed"] == ["bye"]
    # a skipped task made no attempt
    assert tasks["never"]["status"] == "skipped"
    assert (tasks["never"]["started_at"], tasks["never"]["attempt_log"]) == (None, [])


def test_dynamic_group_children_are_keyed_by_generated_name(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: generated
        tasks:
          - name: plan
            type: python_task
            script: |
              return [{"name": f"job_{i}", "type": "python_task", "script": f"return {i}"} for i in range(2)]
          - name: fan
            type: dynamic_task_group
            tasks: "{{ plan }}"
        """
    )
    document, _ = run_and_show(cli, path)
    assert document["status"] == "succeeded", document
    fan = document["tasks"]["fan"]
    assert [child["key"] for child in fan["children"]] == ["job_0", "job_1"]
    assert list(fan["children"][0]["tasks"]) == ["job_0"]
    check_record(fan)


def test_llm_calls_record_model_tokens_and_latency(
    cli: Cli,
    write_pipeline: Write,
    fake_openai: FakeOpenAIServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    path = write_pipeline(
        """
        name: asking
        tasks:
          - name: ask
            type: llm_task
            model: gpt-4o-mini
            system: be brief
            prompt: "say {{ 'hello' | upper }} twice"
        """
    )
    document, _ = run_and_show(cli, path)
    ask = document["tasks"]["ask"]
    assert ask["inputs"]["prompt"] == "say HELLO twice" and ask["inputs"]["model"] == "gpt-4o-mini"
    (call,) = ask["attempt_log"][0]["llm_calls"]
    # the fake server counts words: "be brief" + "say HELLO twice" in, the echo out
    assert call["model"] == "gpt-4o-mini" and call["tokens_in"] == 5 and call["tokens_out"] == 3
    assert isinstance(call["latency"], float) and call["latency"] >= 0


def test_printed_lines_are_capped_to_the_last_ones(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(
        f"""
        name: chatty
        tasks:
          - name: chatty
            type: python_task
            script: |
              for i in range({PRINTED_LINES * 3}):
                  print("line", i)
              print("é" * {PRINTED_BYTES * 2})
              print("last")
              return 1
        """
    )
    document, _ = run_and_show(cli, path)
    printed = document["tasks"]["chatty"]["attempt_log"][0]["printed"]
    assert len(printed) <= PRINTED_LINES and printed[-1] == "last"
    assert sum(len(line.encode()) + 1 for line in printed) <= PRINTED_BYTES
    assert printed[-2] == "é" * LINE_CHARS + " [...]"  # a long line is cut, not lost
    assert printed[0].startswith("line ")


LEAKY = """
name: leaky
security:
  sensitive_variables: [api_key]
input_variables:
  api_key: {type: string}
tasks:
  - name: prints
    type: python_task
    error_handling: {retry_count: 1, retry_delay: 0, on_failure: continue_with_degraded_service}
    script: |
      import subprocess, sys
      secret = context.get_secret("database_password")
      print("secret", secret, "key {{ api_key }}")
      subprocess.run([sys.executable, "-c", "print('child {{ api_key }}')"])
      raise ValueError("failed with " + secret + " {{ api_key }}")
  - name: sandboxed
    type: python_task
    resource_limits: {memory_limit: 1GB}
    error_handling: {on_failure: continue_with_degraded_service}
    script: |
      import subprocess, sys
      print("boxed {{ api_key }}", context.get_secret("database_password"))
      subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('grandchild {{ api_key }}\\\\n')"])
      raise ValueError("{{ api_key }}")
  - name: ask
    type: llm_task
    model: "m-{{ api_key }}"
    prompt: "tell {{ api_key }}"
    error_handling: {on_failure: continue_with_degraded_service}
"""


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["local", "stepfunctions"])
def test_secrets_and_sensitive_inputs_never_reach_telemetry(
    engine: str,
    write_pipeline: Write,
    tmp_path: Path,
    fake_openai: FakeOpenAIServer,  # noqa: F811
) -> None:
    # GIVEN a pipeline that prints, raises, renders and sends to an LLM a secret and a sensitive input
    path = write_pipeline(LEAKY)
    home = tmp_path / "home"
    env = dict(
        os.environ,
        ORCHESTRATOR_HOME=str(home),
        ORCHESTRATOR_SECRET_DATABASE_PASSWORD=SECRET,
        OPENAI_BASE_URL=fake_openai.base_url,
        OPENAI_API_KEY="sk-test",
    )
    # WHEN it runs as a user would, and its document is shown
    given = ["-i", f"api_key={SENSITIVE}"]
    run = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(path), "--json", "--engine", engine, *given],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=PATIENCE,
        check=False,
    )
    assert run.stdout.strip(), run.stderr
    run_id = json.loads(run.stdout)["run_id"]
    show = subprocess.run(
        [sys.executable, "-m", "orchestrator", "runs", "show", run_id],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=PATIENCE,
        check=False,
    )
    # THEN the attempts are there, with *** where the values were, and no byte of them anywhere
    document = json.loads(show.stdout)
    prints = document["tasks"]["prints"]
    assert len(prints["attempt_log"]) == 2
    for attempt in prints["attempt_log"]:
        assert attempt["printed"] == ["secret *** key ***"]
        assert attempt["error"] == {"type": "ValueError", "message": "failed with *** *** (script line 5)"}
    (boxed,) = document["tasks"]["sandboxed"]["attempt_log"]
    assert boxed["printed"] == ["boxed *** ***", "grandchild ***"]
    ask = document["tasks"]["ask"]
    assert (ask["inputs"]["prompt"], ask["inputs"]["model"]) == ("tell ***", "m-***")
    assert [call["model"] for call in ask["attempt_log"][0]["llm_calls"]] == ["m-***"]
    everything = run.stdout + show.stdout + run.stderr + show.stderr
    stored = b"".join(p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file())
    for value in (SECRET, SENSITIVE):
        assert value not in everything
        assert value.encode() not in stored


def test_a_run_going_on_shows_its_running_attempt_and_a_killed_one_none(
    write_pipeline: Write, tmp_path: Path, cli: Cli
) -> None:
    # GIVEN a run in another process, in the middle of its second task
    started = tmp_path / "started"
    path = write_pipeline(
        f"""
        name: slowly
        tasks:
          - name: first
            type: python_task
            script: return 1
          - name: slow
            type: python_task
            depends_on: [first]
            script: |
              import pathlib, time
              print("waiting")
              pathlib.Path({str(started)!r}).write_text("yes")
              time.sleep(120)
          - name: after
            type: python_task
            depends_on: [slow]
            script: return 3
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ),
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + PATIENCE
        while not started.exists():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        listed = json.loads(cli("runs", "list", "--json").stdout)
        run_id = listed[0]["run_id"]
        live = shown(cli, run_id)
        while not live["tasks"].get("slow", {}).get("attempt_log"):  # (entries come in batches)
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
            live = shown(cli, run_id)
        # THEN it shows as running: the finished task, the one under way, the one not started
        assert (live["status"], live["ended_at"], live["duration"]) == ("running", None, None)
        assert live["tasks"]["first"]["status"] == "succeeded"
        check_record(live["tasks"]["first"])
        slow = live["tasks"]["slow"]
        assert slow["status"] == "running" and slow["ended_at"] is None
        (attempt,) = slow["attempt_log"]
        assert attempt["status"] == "running" and attempt["ended_at"] is None and attempt["duration"] is None
        assert live["tasks"]["after"] == {
            "status": "not_run",
            "attempts": 0,
            "error": None,
            "started_at": None,
            "ended_at": None,
            "duration": None,
            "inputs": None,
            "attempt_log": [],
            "usage": {"llm_calls": 0, "tokens_in": 0, "tokens_out": 0, "cost_usd": None},
        }
    finally:
        # WHEN its process is killed
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=PATIENCE)
    # THEN the finished document has no attempt that looks alive: it ended with the run
    crashed = shown(cli, run_id)
    assert crashed["status"] == "crashed"
    check_span(crashed)
    for record in crashed["tasks"].values():
        check_record(record)
        assert all(a["status"] != "running" for a in record["attempt_log"])
    (cut,) = crashed["tasks"]["slow"]["attempt_log"]
    assert cut["status"] == "failed" and cut["error"]["type"] == "RunEnded"
    assert crashed["tasks"]["slow"]["status"] == "cancelled"
    assert when(cut["ended_at"]) <= when(crashed["ended_at"])
