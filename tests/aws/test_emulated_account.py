"""Issue 12: the emulated account keeps its tables between `--engine stepfunctions` runs, in
the state folder, as a deployed stack keeps its DynamoDB tables between executions."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import CliResult

pytestmark = pytest.mark.slow
Cli = Callable[..., CliResult]
Write = Callable[..., Path]

COUNTER = """
name: counter
state_management:
  persistence: true
tasks:
  - name: count
    type: python_task
    script: |
      runs = context.update_persistent_state("runs", lambda n: n + 1, default=0)
      total = context.update_shared_state("everyone", lambda n: n + 1, default=0)
      return {"runs": runs, "everyone": total}
  - name: slow_answer
    type: python_task
    cache_key: "answer"
    script: |
      return 42
"""


def _run(cli: Cli, path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> CliResult:
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(home))
    result = cli("run", path, "--json", "--engine", "stepfunctions")
    assert result.code == 0, result.stderr
    return result


def test_state_and_caches_carry_over_between_runs(
    write_pipeline: Write, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_pipeline(COUNTER)
    home = tmp_path / "home"
    # GIVEN a first run on the emulator
    first = _run(cli, path, home, monkeypatch).document()
    assert first["outputs"]["count"] == {"runs": 1, "everyone": 1}
    assert first["tasks"]["slow_answer"]["status"] == "succeeded"
    # WHEN it runs again with the same state folder
    second = _run(cli, path, home, monkeypatch).document()
    # THEN persistent and shared state, and the cache, are what the first run left
    assert second["outputs"]["count"] == {"runs": 2, "everyone": 2}
    assert second["tasks"]["slow_answer"]["status"] == "cached"
    # AND another state folder is another account, empty
    other = _run(cli, path, tmp_path / "other", monkeypatch).document()
    assert other["outputs"]["count"] == {"runs": 1, "everyone": 1}


def test_a_damaged_saved_account_is_a_clear_error_and_is_left_as_it_is(
    write_pipeline: Write, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_pipeline(COUNTER)
    home = tmp_path / "home"
    saved = home / "emulated-aws" / "tables.json"
    saved.parent.mkdir(parents=True)
    damages = (
        "{not json",
        json.dumps({"format": 99, "tables": {}}),
        json.dumps([1, 2]),
        json.dumps({"format": 1, "tables": {"StateTable": [1, {"key": "not typed"}]}}),
        json.dumps({"format": 1, "tables": {"CacheTable": "rows"}}),
    )
    for damage in damages:
        saved.write_text(damage, encoding="utf-8")
        monkeypatch.setenv("ORCHESTRATOR_HOME", str(home))
        result = cli("run", path, "--json", "--engine", "stepfunctions")
        assert result.code == 2, result.stderr
        assert str(saved) in result.stderr and "delete" in result.stderr
        assert "Traceback" not in result.stderr
        assert saved.read_text(encoding="utf-8") == damage
