"""Where leaf tasks run: alone on the event loop's thread, otherwise on worker threads.

A leaf with nothing else of its run in flight runs on the loop's thread (no thread hand-off
for a chain of tasks); as soon as anything could run beside it, leaves go to worker threads
so they overlap. A timeout (the task's or the run's) always needs a worker thread.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import REPO, CliResult

Cli = Callable[..., CliResult]
Write = Callable[..., Path]

THREAD = "return __import__('threading').current_thread().name"
WINDOW = "import time\nstart = time.time(); time.sleep(0.3)\nreturn [start, time.time()]"


def _indented(script: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in script.splitlines())


def test_a_chain_runs_on_the_loop_thread_and_overlapping_tasks_on_workers(
    cli: Cli, write_pipeline: Write
) -> None:
    path = write_pipeline(
        f"""
        name: threads
        tasks:
          - name: first
            type: python_task
            script: {THREAD}
          - name: left
            type: python_task
            depends_on: [first]
            script: {THREAD}
          - name: right
            type: python_task
            depends_on: [first]
            script: {THREAD}
          - name: bounded
            type: python_task
            depends_on: [left, right]
            timeout: 30
            script: {THREAD}
        """
    )
    result = cli("run", path, "--json")
    outputs = result.document()["outputs"]
    assert result.code == 0, result.stderr
    loop_thread = threading.current_thread().name  # `cli` runs the command in this thread
    assert outputs["first"] == loop_thread
    assert outputs["left"] == outputs["right"] == "orchestrator-task"
    assert outputs["bounded"] == "orchestrator-task"  # a timeout must be able to fire


def test_a_run_timeout_keeps_every_task_on_worker_threads(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(
        f"""
        name: bounded_run
        resource_limits:
          timeout: 30
        tasks:
          - name: only
            type: python_task
            script: {THREAD}
        """
    )
    result = cli("run", path, "--json")
    assert result.code == 0, result.stderr
    assert result.document()["outputs"]["only"] == "orchestrator-task"


CONTAINER_SHAPES = {
    "parallel_group": "",
    "while_loop": "    condition: 'true'\n    max_iterations: 1\n",
    "for_loop": "    iterate_over: [1]\n",
}


@pytest.mark.parametrize("container", list(CONTAINER_SHAPES))
def test_a_container_timeout_keeps_its_tasks_on_worker_threads_and_fires(
    cli: Cli, write_pipeline: Write, container: str
) -> None:
    """A loop's or group's own timeout must be able to stop a task running alone inside it:
    that task runs on a worker thread, never on the event loop's (which the deadline needs)."""
    path = write_pipeline(
        f"name: bounded_{container}\n"
        "tasks:\n"
        "  - name: box\n"
        f"    type: {container}\n"
        "    timeout: 1\n"
        f"{CONTAINER_SHAPES[container]}"
        "    error_handling: {on_failure: skip}\n"
        "    tasks:\n"
        "      - name: slow\n"
        "        type: python_task\n"
        "        script: |\n"
        "          import time\n"
        "          time.sleep(20)\n"
        "          return 1\n"
    )
    result = cli("run", path, "--json")
    assert result.code == 0, result.stderr
    box = result.document()["tasks"]["box"]
    assert box["status"] == "skipped"
    assert box["error"] == {"type": "TaskTimeout", "message": "task 'box' exceeded its timeout of 1s"}


def test_a_leaf_beside_a_loop_still_overlaps_the_loop_body(cli: Cli, write_pipeline: Write) -> None:
    # GIVEN a leaf and a loop started together: the loop's body leaf starts only after the leaf
    path = write_pipeline(
        f"""
        name: beside
        tasks:
          - name: leaf
            type: python_task
            script: |
{_indented(WINDOW, 14)}
          - name: loop
            type: for_loop
            iterate_over: [1]
            tasks:
              - name: body
                type: python_task
                script: |
{_indented(WINDOW, 18)}
        """
    )
    result = cli("run", path, "--json")
    outputs = result.document()["outputs"]
    assert result.code == 0, result.stderr
    leaf, body = outputs["leaf"], outputs["loop"][0]["body"]
    # THEN they ran at the same time: each started before the other ended
    assert leaf[0] < body[1] and body[0] < leaf[1]


def test_ctrl_c_interrupts_a_script_running_on_the_loop_thread(write_pipeline: Write, tmp_path: Path) -> None:
    started = tmp_path / "started"
    path = write_pipeline(
        f"""
        name: interrupted
        tasks:
          - name: long
            type: python_task
            script: |
              import pathlib, time
              pathlib.Path({str(started)!r}).write_text("yes")
              time.sleep(60)
              return "never"
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
        cwd=REPO,
    )
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists()
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert time.monotonic() - sent < 10
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    assert "Traceback" not in stderr
