"""Issue 13, bad pipeline files: whatever a pipeline file holds, `validate` and `run` end with
a located message (file, line and column, the fix) and their user-error exit code, never a
traceback or a hang: alias bombs, recursive aliases, deep nesting, huge integers, tags JSON has
no value for, and child pipeline paths that are devices, FIFOs, folders, huge or too long.
A merge key (`<<: *base`) followed by an override is accepted."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import CliResult
from orchestrator.spec.files import MAX_FILE_BYTES
from orchestrator.spec.yaml_source import MAX_NESTING, MAX_VALUES

Cli = Callable[..., CliResult]

LAUGHS = (
    "name: laughs\na: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{chr(98 + n)}: &{chr(98 + n)} [{', '.join([f'*{chr(97 + n)}'] * 9)}]\n" for n in range(8))
    + "tasks: []\n"
)

BAD_FILES = {
    "billion laughs": (LAUGHS, f"more than {MAX_VALUES:,} values"),
    "a recursive sequence alias": ("name: r\ntasks: &a [*a]\n", "recursive alias"),
    "a recursive mapping alias": ("name: r\nx: &a {k: *a}\ntasks: []\n", "recursive alias"),
    "a recursive merge key": ("name: r\nx: &a {<<: *a}\ntasks: []\n", "recursive alias"),
    "3,000 nested flow lists": ("name: x\ntasks: " + "[" * 3000 + "]" * 3000 + "\n", "nested deeper"),
    "3,000 nested block mappings": (
        "name: x\ntasks: []\nx:\n" + "".join(" " * (n + 1) + "k:\n" for n in range(3000)),
        "nested deeper",
    ),
    "150 nested lists": ("name: x\ntasks: " + "[" * 150 + "]" * 150 + "\n", "nested deeper"),
    "a 5,000-digit integer": ("name: x\nversion: " + "9" * 5000 + "\ntasks: []\n", "5,000 digits"),
    "a !!binary value": ("name: x\nversion: !!binary aGVsbG8=\ntasks: []\n", "!!binary"),
    "a lone surrogate escape": ('name: "\\ud83d"\ntasks: []\n', "lone surrogate"),
    "an infinite timeout": (
        "name: x\ntasks:\n  - {name: a, type: python_task, script: return 1, timeout: .inf}\n",
        "finite number",
    ),
}


def _no_traceback(result: CliResult) -> None:
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_hostile_pipeline_file_is_a_located_error(cli: Cli, tmp_path: Path, case: str) -> None:
    # GIVEN a pipeline file built to hang or crash a YAML reader
    text, expected = BAD_FILES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    # WHEN it is validated, and run
    validated = cli("validate", path)
    ran = cli("run", path, "--json")
    # THEN both name the file, a line and column, and say what is wrong; exit 1 and 2
    assert validated.code == 1 and ran.code == 2
    for result in (validated, ran):
        _no_traceback(result)
        assert f"{path}:" in result.stderr and expected in result.stderr, result.stderr
        assert ran.stdout == ""


def test_the_limits_are_the_documented_ones() -> None:
    assert (MAX_NESTING, MAX_VALUES) == (100, 1_000_000)


def test_a_merge_key_override_is_accepted(cli: Cli, tmp_path: Path) -> None:
    # GIVEN a task merged from an anchored one, overriding its name (and a duplicate elsewhere)
    path = tmp_path / "merge.yaml"
    path.write_text(
        "name: m\ntasks:\n"
        "  - &base {name: a, type: python_task, script: return 1}\n"
        "  - <<: *base\n    name: b\n    script: return 2\n",
        encoding="utf-8",
    )
    result = cli("run", path, "--json")
    assert result.code == 0, result.stderr
    assert result.document()["outputs"] == {"a": 1, "b": 2}
    # a key written twice by the mapping itself is still a duplicate
    path.write_text("name: m\nname: n\ntasks: []\n", encoding="utf-8")
    assert "duplicate key 'name'" in cli("validate", path).stderr


def test_dates_are_text(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "dates.yaml"
    path.write_text(
        "name: d\ninput_variables:\n  day: {type: string, default: 2024-01-01}\n"
        "tasks:\n  - {name: a, type: python_task, script: 'return \"{{ day }}\"'}\n",
        encoding="utf-8",
    )
    result = cli("run", path, "--json")
    assert result.code == 0, result.stderr
    assert result.document()["outputs"]["a"] == "2024-01-01"


def _child_group(tmp_path: Path, child: str) -> Path:
    path = tmp_path / "parent.yaml"
    path.write_text(
        f"name: parent\ntasks:\n  - name: g\n    type: pipeline_group\n    pipelines:\n"
        f"      - pipeline: '{child}'\n",
        encoding="utf-8",
    )
    return path


def _unreadable_children(tmp_path: Path) -> dict[str, tuple[str, str]]:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    (tmp_path / "folder.yaml").mkdir()
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as file:
        file.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\ntasks: []\n")
    return {
        "/dev/zero": ("/dev/zero", "a device, not a file"),
        "a FIFO": (str(fifo), "a named pipe (FIFO), not a file"),
        "a folder": (str(tmp_path / "folder.yaml"), "a directory, not a file"),
        "a huge file": (str(huge), "more than the"),
        "not UTF-8": (str(tmp_path / "latin1.yaml"), "not UTF-8 text"),
        "a 10,000-character path": ("a" * 10_000 + ".yaml", "the path is too long"),
        "a long path of short names": ("/".join(["d"] * 3000) + "/x.yaml", "no such file"),
    }


def test_a_child_pipeline_that_cannot_be_read_is_a_clear_error(cli: Cli, tmp_path: Path) -> None:
    # GIVEN child pipeline paths naming things no one can read as a pipeline
    for case, (child, expected) in _unreadable_children(tmp_path).items():
        path = _child_group(tmp_path, child)
        # WHEN the parent is validated and run
        validated = cli("validate", path)
        ran = cli("run", path, "--json")
        # THEN the reason, at once; never a read that does not end
        for result in (validated, ran):
            _no_traceback(result)
            if expected == "no such file":  # a missing child is a warning, then a run-time error
                continue
            assert expected in result.stderr, (case, result.stderr[:500])
            assert len(result.stderr) < 2_000, case  # a long path is shortened in the message
        if expected != "no such file":
            assert (validated.code, ran.code) == (1, 2), case


def test_a_huge_retry_count_with_exponential_backoff_fails_the_task(cli: Cli, tmp_path: Path) -> None:
    # GIVEN 1,100 retries whose exponential delay overflows a float after ~1,000
    path = tmp_path / "retries.yaml"
    path.write_text(
        "name: r\ntasks:\n  - name: a\n    type: python_task\n    script: raise ValueError('no')\n"
        "    error_handling: {retry_count: 1100, retry_delay: 0}\n"
        "  - name: b\n    type: python_task\n    script: raise ValueError('no')\n"
        "    error_handling: {retry_count: 3, retry_delay: 0, retry_backoff: 1.0e300,"
        " on_failure: skip}\n",
        encoding="utf-8",
    )
    from orchestrator.runtime.policy import ErrorPolicy

    policy = ErrorPolicy(1100, 1.0, 2.0, "abort_pipeline", None, None)
    assert policy.delay_before(1100) == 31_622_400.0 and policy.delay_before(3) == 4.0
    result = cli("run", path, "--json")
    _no_traceback(result)
    assert result.code == 1
    assert result.document()["tasks"]["a"]["attempts"] == 1101
