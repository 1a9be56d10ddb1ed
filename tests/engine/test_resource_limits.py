"""SPEC section 10 through the CLI: limited tasks run in a child process; the policy handles breaches."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import CliResult

Cli = Callable[..., CliResult]
Write = Callable[..., Path]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux-only")


@pytest.mark.slow
def test_memory_limit_breach_is_retried_then_handled_by_on_failure(cli: Cli, write_pipeline: Write) -> None:
    # GIVEN a task that allocates far more than its memory limit, with one retry and a skip
    path = write_pipeline(
        """
        name: greedy
        resource_limits: {memory_limit: "2GB"}
        tasks:
          - name: hog
            type: python_task
            resource_limits: {memory_limit: "200MB"}
            error_handling: {retry_count: 1, retry_delay: 0, on_failure: skip, fallback_value: "too big"}
            script: |
              block = bytearray(600 * 1024 * 1024)
              return len(block)
          - name: modest
            type: python_task
            script: |
              import os
              return [len(bytearray(10 * 1024 * 1024)), os.getpid()]
          - name: after
            type: python_task
            script: return [{{ hog }}, context.get_task_output("modest")[0]]
        """
    )
    # WHEN it runs
    document = cli("run", path, "--json").document()
    # THEN the breach is MemoryLimitExceeded, retried once, then skipped with the fallback value;
    # the pipeline-level limit sandboxes the other tasks too and they run fine
    assert document["status"] == "succeeded"
    assert document["tasks"]["hog"]["status"] == "skipped"
    assert document["tasks"]["hog"]["attempts"] == 2
    assert document["tasks"]["hog"]["error"]["type"] == "MemoryLimitExceeded"
    assert "200 MB" in document["tasks"]["hog"]["error"]["message"]
    assert document["outputs"]["after"] == ["too big", 10 * 1024 * 1024]


@pytest.mark.slow
def test_sandboxed_timeout_kills_the_task(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: slowpoke
        tasks:
          - name: sleepy
            type: python_task
            timeout: 1
            resource_limits: {memory_limit: "512MB"}
            script: |
              import time
              time.sleep(30)
        """
    )
    document = cli("run", path, "--json").document()
    assert document["status"] == "failed"
    assert document["error"]["type"] == "TaskTimeout"
    assert document["error"]["task"] == "sleepy"


def test_tasks_without_limits_stay_in_process(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: inproc
        tasks:
          - name: pid
            type: python_task
            script: |
              import os
              return os.getpid()
        """
    )
    import os

    assert cli("run", path, "--json").document()["outputs"]["pid"] == os.getpid()
