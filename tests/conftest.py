"""Shared fixtures: an isolated state folder, pipeline files in tmp_path, the CLI in process."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import main

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO.parent / "shared" / "seed" / "advanced-patterns.md"
PIPELINES = REPO / "pipelines"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / ".orchestrator"
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(home))
    for variable in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "ORCHESTRATOR_CONFIG",
        "ORCHESTRATOR_SEARCH_URL",
    ):
        monkeypatch.delenv(variable, raising=False)
    return home


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def document(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.stdout)
        return loaded


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `orchestrator ARGS...` in this process."""

    def run(*arguments: str) -> CliResult:
        try:
            code = main([str(a) for a in arguments])
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def write_pipeline(tmp_path: Path) -> Callable[..., Path]:
    """Write YAML text (dedented) to tmp_path/<name>.yaml and return its path."""

    def write(text: str, name: str = "pipeline") -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write
