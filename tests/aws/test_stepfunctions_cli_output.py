"""`orchestrator run --engine stepfunctions` as a user at a terminal sees it: what the embedded engine shows.

Each test runs the CLI in a subprocess with stderr on a pseudo-terminal (so the progress lines
are drawn, as for a person) and stdout on a pipe, once per engine, and compares: the progress
lines (durations masked), the task's own `[task]` lines, the summary or the run document. No
CloudWatch metric JSON, Powertools log JSON or emulator internals may show.
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import agreed_tasks

pytestmark = pytest.mark.slow

# generous: the whole test has pytest's 120 s; a loaded 2-core CI runs one emulated run in ~10 s
RUN_TIMEOUT = 100
_RUN_ID = re.compile(r"\d{8}T\d{6}-[0-9a-f]{8}")
_DURATION = re.compile(r" in \d+\.\d\ds")
_PROGRESS = re.compile(r"^  [▶✓↺↯–✗⊘·] \w+ \w+")
NOISE = ("_aws", "CloudWatchMetrics", '"level"', "Traceback", "moto")


@dataclass
class Terminal:
    """What one CLI process wrote: its exit code, stdout, and stderr as the terminal showed it."""

    code: int
    stdout: str
    stderr: str

    def document(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.stdout)
        return loaded

    def progress(self) -> list[str]:
        """The progress lines, durations masked."""
        return [_DURATION.sub(" in <t>", line) for line in self.stderr.splitlines() if _PROGRESS.match(line)]

    def shown(self) -> str:
        """Everything on the screen, run ids and durations masked."""
        return _DURATION.sub(" in <t>", _RUN_ID.sub("<run>", self.stderr + self.stdout))


def run_cli(*arguments: str | Path, cwd: Path) -> Terminal:
    """`orchestrator ARGS...` in a subprocess whose stderr is a terminal and stdout a pipe."""
    cwd.mkdir(parents=True, exist_ok=True)
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", *(str(a) for a in arguments)],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=follower,
        )
    finally:
        os.close(follower)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: every writer closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        stdout, _ = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"orchestrator {' '.join(map(str, arguments))} did not finish in {RUN_TIMEOUT}s")
    finally:
        reader.join(timeout=10)
        os.close(leader)
    screen = b"".join(chunks).decode("utf-8", errors="replace").replace("\r\n", "\n")
    return Terminal(process.returncode, stdout.decode("utf-8", errors="replace"), screen)


def both_engines(path: Path, tmp_path: Path, *options: str) -> tuple[Terminal, Terminal]:
    """The same run on the embedded engine, then on the emulated Step Functions."""
    local = run_cli("run", path, *options, cwd=tmp_path / "local")
    remote = run_cli("run", path, *options, "--engine", "stepfunctions", cwd=tmp_path / "aws")
    return local, remote


def assert_quiet(result: Terminal) -> None:
    """Nothing but the run's own output: no metric or log JSON, no tracebacks, no emulator."""
    screen = (result.stdout + result.stderr).lower()
    for word in NOISE:
        assert word.lower() not in screen, (word, result.stderr)


def write(tmp_path: Path, text: str, name: str = "pipeline") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def comparable(document: dict[str, Any]) -> dict[str, Any]:
    found = {key: document[key] for key in ("status", "outputs", "result", "error")}
    return {**found, "tasks": agreed_tasks(document)}


RICH = """
    name: rich
    input_variables:
      enabled: {type: boolean, default: false}
    tasks:
      - name: first
        type: python_task
        script: |
          print("hello from first")
          return 1
      - name: optional
        type: python_task
        depends_on: [first]
        condition: "{{ enabled }}"
        script: return 2
      - name: degraded
        type: python_task
        depends_on: [optional]
        error_handling: {on_failure: continue_with_degraded_service, fallback_value: 0}
        script: raise RuntimeError("not today")
      - name: fanout
        type: for_loop
        depends_on: [degraded]
        iterate_over: [1, 2]
        tasks:
          - name: each
            type: python_task
            script: |
              print("item", {{ item }})
              return {{ item }} * 10
      - name: last
        type: python_task
        depends_on: [fanout]
        script: return context.get_task_output("first") + 1
    """


def test_a_terminal_shows_the_same_progress_and_summary_on_both_engines(tmp_path: Path) -> None:
    """Progress per top-level task, the tasks' own lines and the summary, as the embedded engine
    draws them; no CloudWatch metric JSON between them."""
    path = write(tmp_path, RICH)
    local, remote = both_engines(path, tmp_path)
    assert local.progress() == [
        "  ▶ first running",
        "  ✓ first succeeded in <t>",
        "  ▶ optional running",
        "  – optional skipped in <t>",
        "  ▶ degraded running",
        "  ✗ degraded failed in <t>",
        "  ▶ fanout running",
        "  ✓ fanout succeeded in <t>",
        "  ▶ last running",
        "  ✓ last succeeded in <t>",
    ]
    assert remote.progress() == local.progress()
    assert remote.shown() == local.shown()
    assert "[first] hello from first\n" in remote.stderr and "[each] item 2\n" in remote.stderr
    assert remote.code == local.code == 0
    assert_quiet(remote)


def test_with_json_stdout_is_the_run_document_alone(tmp_path: Path) -> None:
    """`--json`: stdout is one JSON document, stderr only what the tasks printed."""
    path = write(tmp_path, RICH)
    local, remote = both_engines(path, tmp_path, "--json")
    assert comparable(remote.document()) == comparable(local.document())
    assert remote.stdout.count("\n") == 1
    assert remote.stderr == local.stderr == "[first] hello from first\n[each] item 1\n[each] item 2\n"
    assert_quiet(remote)


def test_an_ended_emulation_waits_for_lambda_calls_still_running() -> None:
    """When an iteration aborts, moto ends the execution while another iteration's Lambda call
    still runs; the emulation waits for it before giving stdout back, so what the call writes
    when it ends (its EMF metrics) goes where Lambda output goes, not to the user's stdout."""
    from orchestrator.aws.emulator import _Invoker

    started, finished = threading.Event(), threading.Event()

    def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
        started.set()
        finished.wait(0.5)
        finished.set()
        return {}

    invoker = _Invoker({"slow": SimpleNamespace(lambda_handler=lambda_handler)})  # type: ignore[dict-item]
    call = threading.Thread(target=invoker, args=(SimpleNamespace(function_name="slow"), {}))
    call.start()
    assert started.wait(5)
    invoker.wait_idle(10)
    assert finished.is_set() and invoker.in_flight == 0
    call.join()


def python_task(
    name: str, lines: list[str], *, after: str | None = None, timeout: float | None = None
) -> str:
    """The YAML of a top-level python_task named `name` whose script is `lines`."""
    block = "".join(f"      {line}\n" for line in lines)
    needs = f"    depends_on: [{after}]\n" if after else ""
    limit = f"    timeout: {timeout:g}\n" if timeout is not None else ""
    return f"  - name: {name}\n    type: python_task\n{needs}{limit}    script: |\n{block}"


# a task's script, its timeout, and the error type and message both engines must give
FAILING: dict[str, tuple[list[str], float | None, str, str]] = {
    "raises": (['raise ValueError("boom")'], None, "ValueError", "boom (script line 1)"),
    "syntax_error_at_run_time": (
        ['exec("def broken(:\\n    pass")'],
        None,
        "SyntaxError",
        "(script line 1)",
    ),
    "times_out": (
        ["import time", "time.sleep(5)"],
        1,
        "TaskTimeout",
        "task 'explode' exceeded its timeout of 1s",
    ),
}


@pytest.mark.parametrize("case", list(FAILING))
def test_a_failing_task_shows_its_own_error_as_on_the_embedded_engine(case: str, tmp_path: Path) -> None:
    """The run document's error, the summary and the progress lines name the task's error,
    exactly as the embedded engine does; never emulator internals or a traceback."""
    lines, timeout, error_type, message = FAILING[case]
    path = tmp_path / "failing.yaml"
    path.write_text(
        "name: failing\ntasks:\n"
        + python_task("first", ["return 1"])
        + python_task("explode", lines, after="first", timeout=timeout)
        + python_task("after", ["return 2"], after="explode"),
        encoding="utf-8",
    )
    local, remote = both_engines(path, tmp_path, "--json")
    document = remote.document()
    assert document["error"] == local.document()["error"]
    assert document["error"]["task"] == "explode" and document["error"]["type"] == error_type
    assert message in document["error"]["message"]
    assert comparable(document) == comparable(local.document())
    assert remote.code == local.code == 1
    assert_quiet(remote)
    # on a terminal, without --json
    local, remote = both_engines(path, tmp_path)
    assert (
        remote.progress()
        == local.progress()
        == [
            "  ▶ first running",
            "  ✓ first succeeded in <t>",
            "  ▶ explode running",
            "  ✗ explode failed in <t>",
        ]
    )
    assert remote.shown() == local.shown()
    assert f"error in task 'explode': {error_type}: " in remote.stdout and message in remote.stdout
    assert_quiet(remote)


def test_a_task_that_exits_fails_instead_of_hanging_the_emulator(tmp_path: Path) -> None:
    """`sys.exit` in a script fails the task with `SystemExit`, as the embedded engine reports it
    from a task's child process (a memory limit puts it there), instead of ending the emulator's
    thread, which would leave the run waiting forever."""
    path = tmp_path / "exits.yaml"
    path.write_text(
        "name: exits\nresource_limits: {memory_limit: 512MB}\ntasks:\n"
        + python_task("explode", ["import sys", "sys.exit(3)"]),
        encoding="utf-8",
    )
    local, remote = both_engines(path, tmp_path, "--json")
    error = remote.document()["error"]
    assert (error["task"], error["type"]) == ("explode", "SystemExit")
    assert "sys.exit(3)" in error["message"]
    assert comparable(remote.document()) == comparable(local.document())
    assert remote.code == local.code == 1
    assert_quiet(remote)


def test_a_script_that_does_not_compile_is_refused_alike(tmp_path: Path) -> None:
    """A syntax error in the script itself is found before anything runs, by both engines."""
    path = write(
        tmp_path,
        """
        name: broken
        tasks:
          - name: bad
            type: python_task
            script: |
              def (:
                  return 1
        """,
    )
    local, remote = both_engines(path, tmp_path)
    assert remote.code == local.code == 2
    assert remote.stderr == local.stderr
    assert "python syntax error in script line 1" in remote.stderr
    assert remote.stdout == ""
    assert_quiet(remote)
