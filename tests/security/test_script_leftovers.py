"""Issue 13: what a script starts does not outlive the run: processes (its own children, ones
that detach themselves, those a sandboxed task leaves when it returns) and non-daemon
threads, which must not keep `orchestrator run` alive after it printed the document."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

LEFTOVERS = """\
name: leftovers
tasks:
  - name: spawn
    type: python_task
    script: |
      import subprocess, threading, time
      child = subprocess.Popen(['sleep', '300'])
      detached = subprocess.Popen(
          ['sh', '-c', 'setsid sleep 300 > /dev/null 2>&1 & echo $!'], stdout=subprocess.PIPE, text=True)
      grandchild = int(detached.stdout.readline())
      detached.wait()
      threading.Thread(target=time.sleep, args=(300,)).start()
      return [child.pid, grandchild]
  - name: sandboxed
    type: python_task
    resource_limits: {cpu_limit: 1}
    script: |
      import subprocess
      return [subprocess.Popen(['sleep', '300'], start_new_session=True).pid]
"""


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("engine", ["local", "stepfunctions"])
def test_processes_and_threads_a_script_leaves_end_with_the_command(tmp_path: Path, engine: str) -> None:
    # GIVEN scripts that leave a child, a detached grandchild, a sandboxed task's own child
    # and a non-daemon thread, all meant to live five minutes
    path = tmp_path / "leftovers.yaml"
    path.write_text(LEFTOVERS, encoding="utf-8")
    # WHEN the pipeline runs (a hang fails the test at the time limit)
    finished = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(path), "--json", "--engine", engine],
        env={**os.environ, "ORCHESTRATOR_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=90,
    )
    # THEN the command printed its document and exited
    assert finished.returncode == 0, finished.stderr
    document = json.loads(finished.stdout)
    assert document["status"] == "succeeded"
    pids = [*document["outputs"]["spawn"], *document["outputs"]["sandboxed"]]
    assert len(pids) == 3
    # AND none of the processes runs any more (the kernel may take a moment to reap them)
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in pids if alive(pid)] == []
