"""SPEC section 11 and issue 2's CLI promises: progress, graph, a light and fast start."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import PIPELINES, REPO, CliResult
from fakes.fixtures import fake_openai  # noqa: F401
from fakes.servers import FakeOpenAIServer

Cli = Callable[..., CliResult]


def _orchestrator(*arguments: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *arguments],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )


def test_progress_is_drawn_on_a_terminal(tmp_path: Path) -> None:
    # GIVEN stderr is a terminal (read while the run goes on, so the terminal never fills up)
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", str(PIPELINES / "demo.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=secondary,
        cwd=tmp_path,
    )
    os.close(secondary)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the terminal closed: the process has exited
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(primary)
        returncode = process.wait(timeout=60)
    progress = b"".join(chunks).decode()
    # THEN every top-level task gets a line with its status and duration
    assert returncode == 0
    for task in ("prepare", "score_words", "summaries", "best_word", "countdown"):
        assert f"▶ {task} running" in progress
        assert f"✓ {task} succeeded in " in progress


def test_progress_is_quiet_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    process = _orchestrator("run", str(PIPELINES / "demo.yaml"), "--json")
    assert process.returncode == 0
    assert process.stderr == ""


def test_graph_mermaid_and_dot(cli: Cli, write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline(
        """
        name: g
        tasks:
          - name: fetch
            type: python_task
            script: return [1, 2]
          - name: each
            type: for_loop
            iterate_over: "{{ fetch }}"
            tasks:
              - name: double
                type: python_task
                script: return {{ item }} * 2
          - name: maybe
            type: llm_task
            condition: "{{ each }}"
            prompt: "{{ each }}"
        """
    )
    mermaid = cli("graph", path)
    assert mermaid.code == 0
    assert mermaid.stdout.startswith("flowchart TD\n")
    assert "fetch --> each" in mermaid.stdout
    assert "each --> maybe" in mermaid.stdout
    assert 'subgraph each["each (for_loop)"]' in mermaid.stdout
    dot = cli("graph", path, "--format", "dot")
    assert dot.stdout.startswith('digraph "pipeline" {')
    assert '"fetch" -> "each__double" [lhead="cluster_each"];' in dot.stdout
    assert 'shape="diamond"' in dot.stdout


# What no run of these pipelines needs: the AWS SDK and its mocks,
# JSON Schema validation (only `output_schema` needs it), Redis, the openai package (the LLM
# client speaks HTTP with httpx2), and for a run with no `llm_task` the HTTP stack (issue 15: a
# fast start).
_NEVER = ("boto3", "botocore", "moto", "aws_lambda_powertools", "jsonschema", "redis", "aiohttp", "openai")
_LLM_STACK = ("httpx", "httpx2", "httpcore", "httpcore2")
_ONE_LLM_TASK = """name: one_llm
tasks:
  - name: ask
    type: llm_task
    model: gpt-4o-mini
    prompt: "Say ok"
"""


def _imported_by_run(path: Path, environment: dict[str, str]) -> set[str]:
    """The top-level packages `python -m orchestrator run PATH` has imported when it exits
    (`exit_past_threads` is the last thing the command does: it may end the process at once)."""
    code = (
        "import runpy, sys\n"
        "from orchestrator.engine import leftovers\n"
        "exit_past_threads = leftovers.exit_past_threads\n"
        "def report(code):\n"
        "    print('IMPORTED', *sorted({m.split('.')[0] for m in sys.modules}), file=sys.stderr)\n"
        "    exit_past_threads(code)\n"
        "leftovers.exit_past_threads = report\n"
        f"sys.argv = ['orchestrator', 'run', {str(path)!r}, '--json']\n"
        "runpy.run_module('orchestrator', run_name='__main__', alter_sys=True)\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False, env=environment
    )
    assert process.returncode == 0, process.stderr
    assert json.loads(process.stdout)["status"] == "succeeded"
    line = next(line for line in process.stderr.splitlines() if line.startswith("IMPORTED "))
    return set(line.split()[1:])


def test_a_python_only_run_imports_no_heavy_library(tmp_path: Path) -> None:
    # WHEN a python-only pipeline runs through the CLI in a fresh interpreter
    environment = dict(os.environ, ORCHESTRATOR_HOME=str(tmp_path / "home"))
    modules = _imported_by_run(PIPELINES / "demo.yaml", environment)
    # THEN the check sees what the run imports, and nothing it does not need was imported
    assert {"orchestrator", "yaml"} <= modules
    assert sorted(modules & {*_NEVER, *_LLM_STACK}) == []


def test_an_llm_run_imports_its_http_client_and_nothing_heavier(
    tmp_path: Path,
    fake_openai: FakeOpenAIServer,  # noqa: F811
) -> None:
    # GIVEN a pipeline of one llm_task and a local OpenAI-compatible server
    path = tmp_path / "one_llm.yaml"
    path.write_text(_ONE_LLM_TASK, encoding="utf-8")
    environment = dict(
        os.environ, ORCHESTRATOR_HOME=str(tmp_path / "home"), OPENAI_BASE_URL=fake_openai.base_url
    )
    environment.pop("OPENAI_API_KEY", None)
    # WHEN it runs through the CLI in a fresh interpreter
    modules = _imported_by_run(path, environment)
    # THEN it sent its one request over httpx2, and imported none of the rest (not openai)
    assert fake_openai.request_count == 1
    assert "httpx2" in modules
    assert sorted(modules & set(_NEVER)) == []
