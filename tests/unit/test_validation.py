"""SPEC sections 1, 3 and 5: every validation error names file, line, column and YAML path."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from conftest import GUIDE_FIXTURES, PIPELINES, CliResult
from orchestrator.errors import PipelineValidationError
from orchestrator.spec import yaml_source


def test_valid_pipeline_exits_zero(
    cli: Callable[..., CliResult], write_pipeline: Callable[..., Path]
) -> None:
    # GIVEN a correct pipeline
    path = write_pipeline(
        """
        name: ok
        tasks:
          - name: a
            type: python_task
            script: return 1
        """
    )
    # WHEN it is validated THEN it passes
    result = cli("validate", path)
    assert result.code == 0, result.stderr
    assert "ok (1 tasks)" in result.stdout


def test_unknown_top_level_key_suggests_the_right_one(
    cli: Callable[..., CliResult], write_pipeline: Callable[..., Path]
) -> None:
    path = write_pipeline(
        """
        name: x
        error_handlng:
          default_retry_count: 1
        tasks:
          - name: a
            type: python_task
            script: return 1
        """
    )
    result = cli("validate", path)
    assert result.code == 1
    assert (
        f"{path}:3:1: unknown key 'error_handlng' at the top level; did you mean 'error_handling'?"
        in result.stderr
    )


def test_unknown_nested_key_has_line_column_and_path(
    cli: Callable[..., CliResult], write_pipeline: Callable[..., Path]
) -> None:
    path = write_pipeline(
        """
        name: x
        tasks:
          - name: a
            type: python_task
            script: return 1
          - name: b
            type: llm_task
            prompt: hi
            error_handling:
              retry_cont: 3
        """
    )
    result = cli("validate", path)
    assert result.code == 1
    assert re.search(
        rf"{re.escape(str(path))}:11:7: unknown key 'retry_cont' here; did you mean 'retry_count'\? "
        r"\(tasks\[1\]\.error_handling\.retry_cont\)",
        result.stderr,
    ), result.stderr


def test_unknown_task_type(cli: Callable[..., CliResult], write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline(
        """
        name: x
        tasks:
          - name: a
            type: pyton_task
            script: return 1
        """
    )
    result = cli("validate", path)
    assert result.code == 1
    assert ":4:5: unknown task type 'pyton_task'; did you mean 'python_task'?" in result.stderr
    assert "(tasks[0])" in result.stderr


def test_bad_types_are_reported(cli: Callable[..., CliResult], write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline(
        """
        name: x
        tasks:
          - name: loop
            type: while_loop
            condition: "{{ true }}"
            max_iterations: many
            tasks:
              - name: a
                type: python_task
                script: return 1
        """
    )
    result = cli("validate", path)
    assert result.code == 1
    assert ":7:21:" in result.stderr and "tasks[0].max_iterations" in result.stderr
    assert "'many'" in result.stderr


def test_duplicate_names(cli: Callable[..., CliResult], write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline(
        """
        name: x
        tasks:
          - name: a
            type: python_task
            script: return 1
          - name: a
            type: python_task
            script: return 2
        """
    )
    result = cli("validate", path)
    assert result.code == 1
    assert ":7:11: duplicate task name 'a' in this scope (tasks[1].name)" in result.stderr


def test_dependency_cycle_names_the_tasks(
    cli: Callable[..., CliResult], write_pipeline: Callable[..., Path]
) -> None:
    path = write_pipeline(
        """
        name: x
        tasks:
          - name: first
            type: python_task
            script: return context.get_task_output("third")
          - name: second
            type: llm_task
            prompt: "{{ first }}"
          - name: third
            type: python_task
            depends_on: [second]
            script: return 3
        """
    )
    result = cli("validate", path)
    assert result.code == 1
    assert "dependency cycle: first -> third -> second -> first" in result.stderr


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ('depends_on: ["fetch_dta"]', "no task named 'fetch_dta'; did you mean 'fetch_data'?"),
        ("script: return context.get_task_output('fetch_dta')", "no task named 'fetch_dta'"),
    ],
)
def test_reference_to_missing_task(
    cli: Callable[..., CliResult], write_pipeline: Callable[..., Path], field: str, expected: str
) -> None:
    script = "" if field.startswith("script") else "    script: return 2\n"
    path = write_pipeline(
        "name: x\ntasks:\n  - name: fetch_data\n    type: python_task\n    script: return 1\n"
        f"  - name: use\n    type: python_task\n    {field}\n{script}"
    )
    result = cli("validate", path)
    assert result.code == 1
    assert expected in result.stderr
    assert ":8:" in result.stderr or ":7:" in result.stderr


def test_undeclared_template_name_is_only_a_warning(
    cli: Callable[..., CliResult], write_pipeline: Callable[..., Path]
) -> None:
    path = write_pipeline(
        """
        name: x
        tasks:
          - name: a
            type: llm_task
            prompt: "Summarise {{ document }}"
        """
    )
    result = cli("validate", path)
    assert result.code == 0
    assert "warning: 'document' is not a declared input or a task" in result.stderr


def test_yaml_syntax_error_has_a_line_and_no_traceback(
    cli: Callable[..., CliResult], write_pipeline: Callable[..., Path]
) -> None:
    path = write_pipeline("name: x\ntasks:\n  - name: a\n    type: [python_task\n    script: 1\n")
    result = cli("validate", path)
    assert result.code == 1
    assert re.search(rf"{re.escape(str(path))}:\d+:\d+: YAML syntax error", result.stderr)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("a: &x 1\nb: *y\n", "found undefined alias 'y'"),
        ("\tx: 1\n", "found character '\\t' that cannot start any token"),
        ("a: [1, 2\nb: 3\n", "expected ',' or ']', but got ':'"),
    ],
)
def test_yaml_syntax_errors_keep_the_detailed_message(text: str, detail: str) -> None:
    with pytest.raises(PipelineValidationError) as raised:
        yaml_source.load_yaml(text, "p.yaml")
    assert detail in raised.value.diagnostics[0].message


def _pipeline_texts() -> list[str]:
    texts = [path.read_text(encoding="utf-8") for path in sorted(PIPELINES.glob("*.yaml"))]
    return texts + [path.read_text(encoding="utf-8") for path in GUIDE_FIXTURES]


def test_the_fast_yaml_parser_gives_the_same_values_and_positions(monkeypatch: pytest.MonkeyPatch) -> None:
    """libyaml composes pipelines (it is fast); values and every position match the pure parser's."""
    assert yaml_source._FAST_LOADER is yaml.CSafeLoader
    fast = [yaml_source.load_yaml(text, "p.yaml") for text in _pipeline_texts()]
    monkeypatch.setattr(yaml_source, "_FAST_LOADER", yaml.SafeLoader)
    pure = [yaml_source.load_yaml(text, "p.yaml") for text in _pipeline_texts()]
    assert len(fast) > 20
    for (fast_data, fast_map), (pure_data, pure_map) in zip(fast, pure, strict=True):
        assert fast_data == pure_data
        assert fast_map.values == pure_map.values
        assert fast_map.keys == pure_map.keys


def test_python_syntax_error_in_script(
    cli: Callable[..., CliResult], write_pipeline: Callable[..., Path]
) -> None:
    path = write_pipeline(
        """
        name: x
        tasks:
          - name: a
            type: python_task
            script: |
              x = 1
              return x +
        """
    )
    result = cli("validate", path)
    assert result.code == 1
    assert "python syntax error in script line 2" in result.stderr


def test_missing_file_is_a_diagnostic(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    result = cli("validate", tmp_path / "nope.yaml")
    assert result.code == 1
    assert "nope.yaml:1:1: no such file" in result.stderr


def test_schema_is_json_schema_an_editor_can_use(cli: Callable[..., CliResult]) -> None:
    result = cli("schema")
    schema = json.loads(result.stdout)
    assert result.code == 0
    assert schema["$schema"].endswith("2020-12/schema")
    assert set(schema["required"]) == {"name", "tasks"}
    assert schema["additionalProperties"] is False
    task_types = json.dumps(schema["$defs"])
    for kind in ("python_task", "llm_task", "for_loop", "pipeline_group"):
        assert kind in task_types


@pytest.mark.parametrize("path", GUIDE_FIXTURES, ids=lambda path: path.stem)
def test_every_yaml_block_of_the_guide_validates(cli: Callable[..., CliResult], path: Path) -> None:
    result = cli("validate", path)
    assert result.code == 0, result.stderr
    assert all(": warning: " in line for line in result.stderr.splitlines()), result.stderr
