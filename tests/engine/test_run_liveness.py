"""Runs never look alive when they are not: Ctrl-C, a killed process, a run still going elsewhere.

Every run here is a real `orchestrator` process; what it left behind is read through the CLI.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, CliResult

Cli = Callable[..., CliResult]
Write = Callable[..., Path]

PATIENCE = 60.0  # seconds any condition may take to appear on a loaded CI machine


@pytest.fixture(autouse=True)
def _ctrl_c_reaches_the_runs() -> Iterator[None]:
    """A shell without job control starts background jobs (`make test &`, some CI runners) with
    Ctrl-C ignored, and a child process inherits that: undo it for the runs spawned here, so
    SIGINT reaches them as it does from a terminal."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _pipeline(write_pipeline: Write, tmp_path: Path, name: str = "sleepy") -> Path:
    """`counted` appends a line per execution; `slow` says it started, then waits for `go`."""
    return write_pipeline(
        f"""
        name: {name}
        tasks:
          - name: counted
            type: python_task
            script: |
              import pathlib
              with open({str(tmp_path / "counted")!r}, "a") as file:
                  file.write("ran\\n")
              return len(pathlib.Path({str(tmp_path / "counted")!r}).read_text().splitlines())
          - name: slow
            type: python_task
            depends_on: [counted]
            script: |
              import pathlib, time
              pathlib.Path({str(tmp_path / "started")!r}).write_text("yes")
              deadline = time.monotonic() + 120
              while not pathlib.Path({str(tmp_path / "go")!r}).exists() and time.monotonic() < deadline:
                  time.sleep(0.02)
              return "slow done"
        """,
        name=name,
    )


def _spawn(*arguments: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),  # ORCHESTRATOR_HOME of this test
        cwd=REPO,
    )


def _orchestrator(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *arguments],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        cwd=REPO,
        timeout=PATIENCE,
        check=False,
    )


def _poll(condition: Callable[[], Any], what: str) -> Any:
    """The first truthy value of `condition`, tried until PATIENCE runs out."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _only_run(cli: Cli) -> dict[str, Any] | None:
    listed = cli("runs", "list", "--json")
    if listed.code != 0 or not listed.stdout.strip():
        return None
    runs: list[dict[str, Any]] = json.loads(listed.stdout)
    return runs[0] if len(runs) == 1 else None


def _shown(cli: Cli, run_id: str) -> dict[str, Any]:
    shown = cli("runs", "show", run_id)
    assert shown.code == 0, shown.stderr
    document: dict[str, Any] = json.loads(shown.stdout)
    return document


def _started_slow_task(cli: Cli, tmp_path: Path) -> str:
    """The id of the one run, once its first task is checkpointed and its slow task started."""

    def ready() -> str | None:
        run = _only_run(cli)
        if run is None or not (tmp_path / "started").exists():
            return None
        run_id = str(run["run_id"])
        return run_id if "counted" in _shown(cli, run_id)["tasks"] else None

    run_id: str = _poll(ready, "the slow task to start after `counted` was checkpointed")
    return run_id


@pytest.mark.slow
def test_a_killed_run_shows_crashed_and_resume_finishes_it(
    cli: Cli, write_pipeline: Write, tmp_path: Path
) -> None:
    # GIVEN a run in another process, waiting in its second task
    path = _pipeline(write_pipeline, tmp_path)
    process = _spawn("run", str(path))
    try:
        run_id = _started_slow_task(cli, tmp_path)
        # THEN, while its process lives, it is running, with the task it finished so far
        running = _shown(cli, run_id)
        assert running["status"] == "running"
        assert running["tasks"]["counted"]["status"] == "succeeded"
        assert running["error"] is None
    finally:
        # WHEN its process is killed with SIGKILL
        process.kill()
        process.communicate(timeout=PATIENCE)
    # THEN runs list, runs list --json and runs show say crashed
    _poll(lambda: (_only_run(cli) or {}).get("status") == "crashed", "the run to show as crashed")
    listed = cli("runs", "list")
    assert run_id in listed.stdout and "crashed" in listed.stdout and "running" not in listed.stdout
    crashed = _shown(cli, run_id)
    assert crashed["status"] == "crashed"
    assert crashed["outputs"] == {"counted": 1}
    assert crashed["error"]["type"] == "ProcessDied"
    assert set(crashed) == {"run_id", "pipeline", "status", "outputs", "tasks", "result", "error"} | {
        "engine",
        "user",
        "pipeline_file",
        "started_at",
        "ended_at",
        "duration",
        "usage",
    }  # (the telemetry fields: docs/telemetry.md)
    # AND resume finishes it without running the finished task again
    (tmp_path / "go").write_text("yes")
    resumed = _orchestrator("resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    document = json.loads(resumed.stdout)
    assert document["run_id"] == run_id and document["status"] == "succeeded"
    assert document["outputs"] == {"counted": 1, "slow": "slow done"}
    assert (tmp_path / "counted").read_text().splitlines() == ["ran"]
    assert _shown(cli, run_id) == document


@pytest.mark.slow
def test_a_run_going_on_in_another_process_is_running_and_cannot_be_resumed_twice(
    cli: Cli, write_pipeline: Write, tmp_path: Path
) -> None:
    # GIVEN a run in another process, waiting in its second task
    path = _pipeline(write_pipeline, tmp_path)
    process = _spawn("run", str(path), "--json")
    try:
        run_id = _started_slow_task(cli, tmp_path)
        # THEN it shows as running, in the list (text and JSON) and on its own
        assert (_only_run(cli) or {}).get("status") == "running"
        assert f"{run_id}  " in cli("runs", "list").stdout
        assert "running" in cli("runs", "list").stdout
        assert _shown(cli, run_id)["status"] == "running"
        # AND resuming it meanwhile is refused, naming the process that runs it
        refused = _orchestrator("resume", run_id)
        assert refused.returncode == 1
        assert f"run '{run_id}' is still running (process {process.pid} " in refused.stderr
        assert "Traceback" not in refused.stderr
        # WHEN it is let finish
        (tmp_path / "go").write_text("yes")
        stdout, stderr = process.communicate(timeout=PATIENCE)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=PATIENCE)
    # THEN it finished once, and shows as it ended
    assert process.returncode == 0, stderr
    document = json.loads(stdout)
    assert document["status"] == "succeeded"
    assert _shown(cli, run_id) == document
    assert (tmp_path / "counted").read_text().splitlines() == ["ran"]


PARALLEL = """
name: parallel_sleepy
tasks:
  - name: first
    type: python_task
    script: return 1
  - name: left
    type: python_task
    depends_on: [first]
    script: |
      import pathlib, time
      pathlib.Path({started!r}).write_text("yes")
      time.sleep(120)
  - name: right
    type: python_task
    depends_on: [first]
    script: |
      import time
      time.sleep(120)
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["loop thread", "worker threads"])
def test_ctrl_c_stops_the_run_resumably_and_says_how_to_resume(
    cli: Cli, write_pipeline: Write, tmp_path: Path, where: str
) -> None:
    # GIVEN a run waiting in a script: alone (on the loop's thread) or beside another (workers)
    if where == "loop thread":
        path = _pipeline(write_pipeline, tmp_path)
    else:
        path = write_pipeline(PARALLEL.format(started=str(tmp_path / "started")), name="parallel_sleepy")
    process = _spawn("run", str(path))
    try:
        _poll(lambda: (tmp_path / "started").exists(), "the slow task to start")
        run_id = str(_poll(lambda: (_only_run(cli) or {}).get("run_id"), "the run record"))
        # WHEN Ctrl-C arrives
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=PATIENCE)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=PATIENCE)
    # THEN it exits 130 saying which run stopped and the exact command that resumes it
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"interrupted: run {run_id} stopped" in stderr
    assert f"orchestrator resume {run_id}" in stderr
    # AND the run is recorded as crashed, not running: what finished kept, what ran cancelled
    stopped = _shown(cli, run_id)
    assert stopped["status"] == "crashed"
    assert stopped["error"]["type"] == "Interrupted"
    first = "counted" if where == "loop thread" else "first"
    assert stopped["tasks"][first]["status"] == "succeeded"
    interrupted = ["slow"] if where == "loop thread" else ["left", "right"]
    assert all(stopped["tasks"][name]["status"] == "cancelled" for name in interrupted)
    assert (_only_run(cli) or {}).get("status") == "crashed"
    if where == "loop thread":
        # AND resume finishes it, keeping the task that had finished
        (tmp_path / "go").write_text("yes")
        resumed = _orchestrator("resume", run_id, "--json")
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["outputs"] == {"counted": 1, "slow": "slow done"}
        assert (tmp_path / "counted").read_text().splitlines() == ["ran"]


@pytest.mark.slow
def test_ctrl_c_during_resume_says_how_to_resume_again(
    cli: Cli, write_pipeline: Write, tmp_path: Path
) -> None:
    # GIVEN a run killed while its slow task ran
    path = _pipeline(write_pipeline, tmp_path)
    process = _spawn("run", str(path))
    try:
        run_id = _started_slow_task(cli, tmp_path)
    finally:
        process.kill()
        process.communicate(timeout=PATIENCE)
    (tmp_path / "started").unlink()
    # WHEN it is resumed, and Ctrl-C arrives while the slow task runs again
    resuming = _spawn("resume", run_id)
    try:
        _poll(lambda: (tmp_path / "started").exists(), "the resumed slow task to start")
        assert _shown(cli, run_id)["status"] == "running"
        resuming.send_signal(signal.SIGINT)
        _, stderr = resuming.communicate(timeout=PATIENCE)
    finally:
        if resuming.poll() is None:
            resuming.kill()
            resuming.communicate(timeout=PATIENCE)
    # THEN it exits 130 with the same advice, and the run is crashed again, still resumable
    assert resuming.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"orchestrator resume {run_id}" in stderr
    assert _shown(cli, run_id)["status"] == "crashed"
    (tmp_path / "go").write_text("yes")
    resumed = _orchestrator("resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "counted").read_text().splitlines() == ["ran"]


def test_a_running_record_from_before_liveness_shows_crashed(cli: Cli, write_pipeline: Write) -> None:
    # GIVEN a state folder with a finished run, and a `running` row written by an older version
    # (no lock file was ever made for it) whose process is long gone
    path = write_pipeline(
        """
        name: quick
        tasks:
          - name: only
            type: python_task
            script: return 1
        """
    )
    finished = cli("run", path, "--json").document()
    old = {"run_id": "old-run", "pipeline": "quick", "status": "running", "outputs": {}, "tasks": {}}
    database = Path(os.environ["ORCHESTRATOR_HOME"]) / "state.db"
    with sqlite3.connect(database) as connection:
        connection.execute(
            "INSERT INTO runs (run_id, pipeline, status, started_at, updated_at, document, resume) "
            "VALUES ('old-run', 'quick', 'running', 1, 1, ?, NULL)",
            (json.dumps(old),),
        )
    connection.close()
    # THEN it loads, and shows as crashed; the finished run is as it was
    shown = _shown(cli, "old-run")
    assert shown["status"] == "crashed" and shown["error"]["type"] == "ProcessDied"
    listed = {run["run_id"]: run["status"] for run in json.loads(cli("runs", "list", "--json").stdout)}
    assert listed == {"old-run": "crashed", finished["run_id"]: "succeeded"}
