"""Issue 14: both engines record the same telemetry (docs/telemetry.md).

The same pipeline runs on the embedded engine and on the emulated Step Functions; `runs show`
on each prints the document `run --json` printed, and the two agree on everything but times
(`agreed_tasks`: attempts, their statuses, errors, printed lines and LLM calls, inputs, the
children of containers), whose order and consistency are checked on each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, CliResult, agreed_tasks
from fakes.fixtures import fake_openai  # noqa: F401
from fakes.servers import FakeOpenAIServer

pytestmark = pytest.mark.slow

PIPELINE = """
name: observed
tasks:
  - name: flaky
    type: python_task
    error_handling: {retry_count: 2, retry_delay: 0}
    script: |
      n = context.update_shared_state("n", lambda n: n + 1, 0)
      print("attempt", n)
      if n < 3:
          raise ConnectionError(f"not yet {n}")
      return n
  - name: rescued
    type: python_task
    error_handling:
      fallback: {type: python_task, script: 'print("falling back"); return "fb"'}
    script: |
      import sys
      print("giving up")
      sys.exit(2)
  - name: loop
    type: for_loop
    iterate_over: [1, 2]
    tasks:
      - name: ask
        type: llm_task
        model: gpt-4o-mini
        prompt: "double {{ item }}"
      - name: inner_loop
        type: while_loop
        condition: "{{ loop_index < 2 }}"
        max_iterations: 3
        tasks:
          - name: tick
            type: python_task
            script: return {{ loop_index }}
  - name: group
    type: parallel_group
    tasks:
      - name: left
        type: python_task
        script: |
          print("left")
          return "L"
      - name: right
        type: python_task
        script: return "R"
  - name: plan
    type: python_task
    script: |
      return [{"name": "gen_a", "type": "python_task", "script": "return 1"}]
  - name: generated
    type: dynamic_task_group
    tasks: "{{ plan }}"
  - name: skipped
    type: python_task
    condition: "{{ false }}"
    script: return 0
"""


def test_both_engines_record_the_same_attempts(
    cli: Callable[..., CliResult],
    write_pipeline: Callable[..., Path],
    fake_openai: FakeOpenAIServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    path = write_pipeline(PIPELINE)
    documents: dict[str, dict[str, Any]] = {}
    for engine in ("local", "stepfunctions"):
        # GIVEN the pipeline run on each engine, each with its own state folder
        monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path / engine))
        ran = cli("run", path, "--json", "--engine", engine)
        assert ran.code == 0, ran.stderr
        document = ran.document()
        # WHEN its document is shown THEN it is the one the run printed, with its engine
        shown = cli("runs", "show", document["run_id"])
        assert json.loads(shown.stdout) == document
        assert document["engine"] == engine
        documents[engine] = document
    # THEN both engines recorded the same attempts, children and inputs
    local, remote = documents["local"], documents["stepfunctions"]
    assert agreed_tasks(remote) == agreed_tasks(local)
    tasks = remote["tasks"]
    assert [a["status"] for a in tasks["flaky"]["attempt_log"]] == ["failed", "failed", "succeeded"]
    assert [a["printed"] for a in tasks["flaky"]["attempt_log"]] == [
        ["attempt 1"],
        ["attempt 2"],
        ["attempt 3"],
    ]
    rescued = tasks["rescued"]["attempt_log"]
    assert [(a["fallback"], a["status"]) for a in rescued] == [(False, "failed"), (True, "succeeded")]
    assert rescued[0]["error"]["type"] == "SystemExit" and rescued[1]["printed"] == ["falling back"]
    loop = tasks["loop"]
    assert [child["key"] for child in loop["children"]] == ["0", "1"]
    ask = loop["children"][1]["tasks"]["ask"]
    assert ask["inputs"]["prompt"] == "double 2"
    (call,) = ask["attempt_log"][0]["llm_calls"]
    assert (call["model"], call["tokens_in"], call["tokens_out"]) == ("gpt-4o-mini", 2, 2)
    inner = loop["children"][0]["tasks"]["inner_loop"]
    assert [child["key"] for child in inner["children"]] == ["0", "1"]
    assert tasks["left"]["attempt_log"][0]["printed"] == ["left"] and "children" not in tasks["group"]
    assert tasks["group"]["started_at"] is not None
    assert [child["key"] for child in tasks["generated"]["children"]] == ["gen_a"]
    assert tasks["skipped"]["attempt_log"] == [] and tasks["skipped"]["started_at"] is None


SLOW = """
name: watched
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
      pathlib.Path({started!r}).write_text("yes")
      deadline = time.monotonic() + 60
      while not pathlib.Path({go!r}).exists() and time.monotonic() < deadline:
          time.sleep(0.02)
      return 2
  - name: last
    type: python_task
    depends_on: [slow]
    script: return 3
"""
PATIENCE = 60.0


@pytest.mark.parametrize("engine", ["local", "stepfunctions"])
def test_a_run_going_on_is_seen_live_on_both_engines(
    engine: str, cli: Callable[..., CliResult], write_pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    # GIVEN a run in another process, waiting in its second task
    started, go = tmp_path / "started", tmp_path / "go"
    path = write_pipeline(SLOW.format(started=str(started), go=str(go)))
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", str(path), "--engine", engine],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ),
        cwd=REPO,
    )
    try:

        def seen() -> dict[str, Any] | None:
            listed = json.loads(cli("runs", "list", "--json").stdout or "[]")
            if not listed or not started.exists():
                return None
            document: dict[str, Any] = json.loads(cli("runs", "show", listed[0]["run_id"]).stdout)
            attempts = document["tasks"].get("slow", {}).get("attempt_log") or []
            return document if attempts and document["tasks"]["first"]["status"] == "succeeded" else None

        live = poll(seen, process)
        # THEN it is running: the task it finished, the one under way, the one not started
        assert (live["status"], live["engine"], live["ended_at"]) == ("running", engine, None)
        assert live["tasks"]["first"]["attempt_log"][0]["status"] == "succeeded"
        (attempt,) = live["tasks"]["slow"]["attempt_log"]
        assert (live["tasks"]["slow"]["status"], attempt["status"], attempt["ended_at"]) == (
            "running",
            "running",
            None,
        )
        assert live["tasks"]["last"]["status"] == "not_run" and live["tasks"]["last"]["attempt_log"] == []
    finally:
        # WHEN the task may end
        go.write_text("yes")
        assert process.wait(timeout=PATIENCE) == 0
    # THEN the run's document shows it finished, every attempt ended
    done = json.loads(cli("runs", "show", live["run_id"]).stdout)
    assert done["status"] == "succeeded" and done["ended_at"] is not None
    assert [record["attempt_log"][0]["status"] for record in done["tasks"].values()] == ["succeeded"] * 3
    assert done["tasks"]["slow"]["attempt_log"][0]["printed"] == ["waiting"]


def poll(condition: Callable[[], dict[str, Any] | None], process: subprocess.Popen[bytes]) -> dict[str, Any]:
    """The first value of `condition`, tried until PATIENCE runs out or the run ends."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline and process.poll() is None:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    pytest.fail("the run was never seen going on")
