"""Issue 13, "Scripts that misbehave": a script that tries to end the process, or raises what
is not an `Exception`, only fails its task. The failure goes through the task's policy
(retry, then `on_failure`) and the run ends with a document and a final status, on both
engines, whether the script runs on the loop's thread (no timeout) or a worker (a timeout).

Every case runs `orchestrator run --json` in a child process with a time limit, so that a
run which hangs or dies fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import run_in_a_process

EXITS = {
    "sys.exit(0)": ("import sys\nsys.exit(0)", "SystemExit"),
    "sys.exit(3)": ("import sys\nsys.exit(3)", "SystemExit"),
    "raise SystemExit": ("raise SystemExit('bye')", "SystemExit"),
    "KeyboardInterrupt": ("raise KeyboardInterrupt", "KeyboardInterrupt"),
    "GeneratorExit": ("raise GeneratorExit", "GeneratorExit"),
    "BaseException subclass": ("class Boom(BaseException):\n    pass\nraise Boom('x')", "Boom"),
    "os._exit(0)": ("import os\nos._exit(0)", "SystemExit"),
    "os._exit(7)": ("import os\nos._exit(7)", "SystemExit"),
    "os.abort()": ("import os\nos.abort()", "SystemExit"),
}
PLACES = {"loop thread": "", "worker thread": "timeout: 60"}
CASES = [
    *((technique, place, "local") for technique in EXITS for place in PLACES),
    # the AWS task function calls the same `run_script`: one technique of each kind there
    *(
        (technique, "worker thread", "stepfunctions")
        for technique in ("sys.exit(0)", "KeyboardInterrupt", "BaseException subclass", "os._exit(7)")
    ),
]


def stored_status(home: Path, run_id: str) -> str:
    """The run's status as `orchestrator runs` would show it later."""
    finished = subprocess.run(
        [sys.executable, "-m", "orchestrator", "runs", "show", run_id],
        env={**os.environ, "ORCHESTRATOR_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 0, finished.stderr
    status: str = json.loads(finished.stdout)["status"]
    return status


def pipeline(tmp_path: Path, script: str, place: str) -> Path:
    path = tmp_path / "exits.yaml"
    body = textwrap.indent(script, " " * 8)
    path.write_text(
        "name: exits\n"
        "tasks:\n"
        "  - name: bad\n"
        "    type: python_task\n"
        f"    {place}\n"
        "    error_handling:\n"
        "      retry_count: 1\n"
        "      retry_delay: 0\n"
        "      on_failure: continue_with_degraded_service\n"
        "      fallback_value: fell\n"
        "    script: |\n"
        f"{body}\n"
        "  - name: after\n"
        "    type: python_task\n"
        "    depends_on: [bad]\n"
        "    script: return 'ran'\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(("technique", "place", "engine"), CASES)
def test_a_script_that_tries_to_end_the_process_only_fails_its_task(
    tmp_path: Path, technique: str, place: str, engine: str
) -> None:
    # GIVEN a task whose script ends in that way, retried once, then degraded, and a task after it
    script, error_type = EXITS[technique]
    path = pipeline(tmp_path, script, PLACES[place])
    home = tmp_path / "home"
    # WHEN the pipeline runs
    code, document, stderr = run_in_a_process(home, path, "--engine", engine)
    # THEN the task failed twice (its policy applied), the run went on and ended degraded
    assert code == 0, stderr
    assert document["status"] == "degraded", document
    bad = document["tasks"]["bad"]
    assert bad["status"] == "failed"
    assert bad["attempts"] == 2
    assert bad["error"]["type"] == error_type
    assert "never the process" in bad["error"]["message"]
    assert document["outputs"] == {"bad": "fell", "after": "ran"}
    # AND the run is stored with that final status, never left running
    if engine == "local":
        assert stored_status(home, document["run_id"]) == "degraded"


def test_an_exit_under_abort_pipeline_fails_the_run(tmp_path: Path) -> None:
    # GIVEN a script that calls sys.exit(0) under the default policy (abort the pipeline)
    path = tmp_path / "abort.yaml"
    path.write_text(
        "name: abort\ntasks:\n  - name: bad\n    type: python_task\n    script: |\n"
        "      import sys\n      sys.exit(0)\n",
        encoding="utf-8",
    )
    # WHEN it runs
    code, document, _ = run_in_a_process(tmp_path / "home", path)
    # THEN the run failed with a document, and the command says so (exit 1, not 0)
    assert code == 1
    assert document["status"] == "failed"
    assert document["tasks"]["bad"]["error"]["type"] == "SystemExit"


def test_os_exit_in_a_thread_a_script_started_does_not_end_the_run(tmp_path: Path) -> None:
    # GIVEN a script whose own thread calls os._exit, and which then returns
    path = tmp_path / "thread.yaml"
    path.write_text(
        "name: thread_exit\ntasks:\n  - name: t\n    type: python_task\n    script: |\n"
        "      import os, threading\n"
        "      worker = threading.Thread(target=lambda: os._exit(5))\n"
        "      worker.start()\n      worker.join()\n      return 'survived'\n",
        encoding="utf-8",
    )
    # WHEN it runs
    code, document, stderr = run_in_a_process(tmp_path / "home", path)
    # THEN only that thread ended: the task returned and the run succeeded
    assert code == 0, stderr
    assert document["outputs"] == {"t": "survived"}


def test_os_exit_in_a_process_the_script_forked_still_ends_that_process() -> None:
    # GIVEN a script that forks (in a process of its own: no other thread), the child calling
    # os._exit(9)
    program = (
        "import os\nfrom orchestrator.runtime.python_task import run_script\n"
        "script = 'import os\\npid = os.fork()\\nif pid == 0:\\n    os._exit(9)\\n"
        "return os.waitpid(pid, 0)[1]'\n"
        "print(os.waitstatus_to_exitcode(run_script(script, 'fork', None, {}, None)))"
    )
    # WHEN it runs
    finished = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    # THEN the child ended with its own code, as in any program
    assert finished.stdout.strip() == "9", finished.stderr


def test_os_exit_outside_scripts_still_ends_the_process() -> None:
    # GIVEN the guards are installed (a script ran) WHEN a process not running a script calls
    # os._exit THEN it ends with that code
    finished = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os\nfrom orchestrator.runtime.python_task import run_script\n"
            "run_script('return 1', 't', None, {}, None)\nos._exit(4)",
        ],
        timeout=60,
    )
    assert finished.returncode == 4
