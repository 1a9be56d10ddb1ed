"""SPEC section 11 and issue 2's CLI promises: progress, graph, a light and fast start."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import PIPELINES, REPO, CliResult

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


def test_a_python_only_run_imports_no_heavy_library() -> None:
    # WHEN a python-only pipeline runs in a fresh interpreter
    code = (
        "import sys\n"
        "from orchestrator.cli import main\n"
        f"code = main(['run', {str(PIPELINES / 'demo.yaml')!r}, '--json'])\n"
        "names = ('boto3', 'botocore', 'openai', 'httpx')\n"
        "heavy = sorted(m for m in names if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    # THEN neither boto3 nor the openai client was imported
    assert process.returncode == 0, process.stderr
    assert "HEAVY []" in process.stderr
