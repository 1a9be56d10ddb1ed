"""One registry of error types (`orchestrator.error_types`): raise sites, compiler, docs agree.

decisions.md, "Non-retryable errors": an error that cannot change on a retry is not retried.
Which types those are is decided once, in the registry; `TaskError` reads it on the embedded
engine, the compiler derives the state machines' `MaxAttempts: 0` rule from it, and the table
in docs/language.md is generated from it. The scans here keep every raise site honest.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, CliResult, every_state
from orchestrator.aws.asl import NON_RETRYABLE as COMPILED_NON_RETRYABLE
from orchestrator.aws.asl import compile_pipeline
from orchestrator.error_types import ERROR_TYPES, NON_RETRYABLE, is_retryable, markdown_table
from orchestrator.errors import CompileError, OrchestratorError, TaskError
from orchestrator.plan import build_plan
from orchestrator.spec.loading import read_pipeline

Cli = Callable[..., CliResult]
Write = Callable[..., Path]

PACKAGE = REPO / "shared" / "orchestrator"
SOURCES = sorted(PACKAGE.rglob("*.py"))
LANGUAGE_DOC = REPO / "docs" / "language.md"
TABLE_START = "<!-- error-types:"
TABLE_END = "<!-- /error-types -->"

EXPECTED_NON_RETRYABLE = sorted(name for name, kind in ERROR_TYPES.items() if not kind.retryable)


def _trees() -> Iterator[tuple[Path, ast.Module]]:
    for path in SOURCES:
        yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _called_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _task_error_calls() -> Iterator[tuple[str, ast.Call]]:
    for path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _called_name(node) == "TaskError":
                yield f"{path.relative_to(REPO)}:{node.lineno}", node


# -- (a) every raise site uses a registered type, and none chooses retryability ------------------


def test_every_task_error_literal_names_a_registered_type() -> None:
    literals = [
        (where, call.args[0].value)
        for where, call in _task_error_calls()
        if call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)
    ]
    assert len(literals) >= 30, "the scan no longer sees the raise sites"
    unknown = [f"{where}: {name}" for where, name in literals if name not in ERROR_TYPES]
    assert unknown == [], "register these in orchestrator/error_types.py"


def test_no_call_chooses_retryable_by_hand() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{node.lineno}"
        for path, tree in _trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and any(keyword.arg == "retryable" for keyword in node.keywords)
    ]
    assert offenders == []


def test_every_registered_type_is_produced_somewhere() -> None:
    """No stale entry: each name is a string or a class name somewhere in the package."""
    seen: set[str] = set()
    for path, tree in _trees():
        if path.name == "error_types.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                seen.add(node.value)
            elif isinstance(node, ast.ClassDef):
                seen.add(node.name)
    assert [name for name in ERROR_TYPES if name not in seen] == []


def test_task_error_takes_its_retryability_from_the_registry() -> None:
    for kind in ERROR_TYPES.values():
        assert TaskError(kind.name, "message").retryable is kind.retryable, kind.name
        assert kind.meaning and "\n" not in kind.meaning and "|" not in kind.meaning
    # an exception a script raised is not registered, and is retried
    assert TaskError("ValueError", "boom").retryable is True
    assert is_retryable("SomethingUnheardOf")


@pytest.mark.parametrize(
    ("name", "retryable"),
    [
        # refused requests cannot change: HTTP 400 on a retry is HTTP 400 again
        ("SearchRequestError", False),
        ("LLMRequestError", False),
        ("SearchConfigurationError", False),
        ("LLMConfigurationError", False),
        # answers that can differ next time are retried
        ("SearchTransientError", True),
        ("LLMTransientError", True),
        ("SearchRateLimited", True),
        ("LLMRateLimited", True),
        ("SearchResponseError", True),
        ("LLMResponseError", True),
        ("OutputParseError", True),
        ("TaskTimeout", True),
    ],
)
def test_the_decision_rule_on_the_http_error_types(name: str, retryable: bool) -> None:
    assert ERROR_TYPES[name].retryable is retryable


def test_non_retryable_is_the_sorted_registry() -> None:
    assert list(NON_RETRYABLE) == EXPECTED_NON_RETRYABLE
    assert COMPILED_NON_RETRYABLE == EXPECTED_NON_RETRYABLE


# -- (b) the compiled Retry rule lists exactly the registry's non-retryable types -----------------


def _states(definition: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for state in definition["States"].values():
        yield state
        for branch in state.get("Branches", []):
            yield from _states(branch)
        if "ItemProcessor" in state:
            yield from _states(state["ItemProcessor"])


def _no_retry_rules(definition: dict[str, Any]) -> list[list[str]]:
    return [
        rule["ErrorEquals"]
        for state in _states(definition)
        for rule in state.get("Retry", [])
        if rule.get("MaxAttempts") == 0
    ]


def test_the_compiled_retry_rule_lists_exactly_the_non_retryable_types(write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: retried
        tasks:
          - name: find
            type: web_search_task
            query: anything
            error_handling: {retry_count: 2, retry_delay: 0}
          - name: each
            type: for_loop
            iterate_over: [1, 2]
            error_handling: {retry_count: 1}
            tasks:
              - name: double
                type: python_task
                script: return {{ item }} * 2
        """
    )
    definition = compile_pipeline(build_plan(read_pipeline(path)))
    retry = every_state(definition)["find"]["Retry"]
    matchers = [rule["ErrorEquals"] for rule in retry]
    assert {"ErrorEquals": EXPECTED_NON_RETRYABLE, "MaxAttempts": 0} in retry
    # the rule comes before the catch-all that retries, or it would never match
    assert matchers.index(EXPECTED_NON_RETRYABLE) < matchers.index(["States.ALL"])
    assert _no_retry_rules(definition) == [EXPECTED_NON_RETRYABLE, EXPECTED_NON_RETRYABLE]
    assert {"SearchRequestError", "LLMRequestError"} <= set(EXPECTED_NON_RETRYABLE)


def test_the_checked_in_state_machines_use_the_registry() -> None:
    rules = [
        (path.name, matched)
        for path in sorted((REPO / "statemachine").glob("*.asl.json"))
        for matched in _no_retry_rules(json.loads(path.read_text(encoding="utf-8")))
    ]
    assert rules, "no checked-in state machine retries anything any more: pick another check"
    assert [name for name, matched in rules if matched != EXPECTED_NON_RETRYABLE] == []


# -- the table users read ----------------------------------------------------------------------


def test_the_language_doc_table_is_the_registry() -> None:
    text = LANGUAGE_DOC.read_text(encoding="utf-8")
    start = text.index(TABLE_START)
    block = text[text.index("\n", start) + 1 : text.index(TABLE_END)]
    assert block == markdown_table(), (
        "docs/language.md's error type table is out of date: paste the output of "
        "`.venv/bin/python -m orchestrator.error_types` between its markers"
    )
    rows = dict(re.findall(r"^\| `(\w+)` \| (yes|no) \|", block, flags=re.MULTILINE))
    assert sorted(name for name, retried in rows.items() if retried == "no") == EXPECTED_NON_RETRYABLE
    assert set(rows) == set(ERROR_TYPES)


# -- CompileError: part of the hierarchy, a located line on the CLI ------------------------------

BAD_FALLBACK = """
name: Bad fallback
tasks:
  - name: main
    type: python_task
    script: raise ValueError("no")
    error_handling:
      fallback:
        type: for_loop
        iterate_over: [1, 2]
        tasks:
          - name: inner
            type: python_task
            script: return 1
"""
LOCATED = (
    r"^{file}:(\d+):(\d+): cannot compile: task 'main': on AWS a fallback must be a python, llm or "
    r"web search task, not for_loop \(tasks\[0\]\.error_handling\.fallback\)\n$"
)


def _one_located_line(stderr: str, file: Path | str) -> tuple[int, int]:
    match = re.match(LOCATED.format(file=re.escape(str(file))), stderr)
    assert match, stderr
    assert "Traceback" not in stderr
    return int(match[1]), int(match[2])


def test_compile_error_is_an_orchestrator_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_FALLBACK, encoding="utf-8")
    with pytest.raises(CompileError) as caught:
        compile_pipeline(build_plan(read_pipeline(path)))
    assert isinstance(caught.value, OrchestratorError)
    assert caught.value.diagnostic is not None
    assert caught.value.diagnostic.file == str(path)
    assert caught.value.location == ("tasks", 0, "error_handling", "fallback")


def test_compile_prints_a_located_line(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_FALLBACK, encoding="utf-8")
    assert cli("validate", path).code == 0  # valid, yet it has no state machine form
    result = cli("compile", path)
    assert result.code == 1 and result.stdout == ""
    # the fallback mapping's first key: line 9, column 9 of the file
    assert _one_located_line(result.stderr, path) == (9, 9)


def test_a_child_pipeline_error_is_located_in_the_child(cli: Cli, write_pipeline: Write) -> None:
    child = write_pipeline(BAD_FALLBACK, name="child")
    parent = write_pipeline(
        """
        name: Parent
        tasks:
          - name: kids
            type: pipeline_group
            pipelines:
              - pipeline: child.yaml
        """,
        name="parent",
    )
    result = cli("compile", parent)
    assert result.code == 1
    _one_located_line(result.stderr, child.resolve())


def test_a_missing_child_pipeline_is_located_in_the_parent(cli: Cli, write_pipeline: Write) -> None:
    parent = write_pipeline(
        """
        name: Parent
        tasks:
          - name: kids
            type: pipeline_group
            pipelines:
              - pipeline: nowhere.yaml
        """,
        name="parent",
    )
    result = cli("compile", parent)
    assert result.code == 1
    assert re.fullmatch(
        rf"{re.escape(str(parent))}:7:19: cannot compile: task 'kids': child pipeline nowhere.yaml "
        r"is not valid: .*nowhere\.yaml:1:1: no such file; check the path "
        r"\(tasks\[0\]\.pipelines\[0\]\.pipeline\)\n",
        result.stderr,
    ), result.stderr


def test_a_child_pipeline_with_a_timeout_is_refused_on_aws_at_its_line(
    cli: Cli, write_pipeline: Write
) -> None:
    # GIVEN a child pipeline with a timeout: it runs inside its parent's execution on AWS,
    # where nothing could stop it at that timeout, as the embedded engine does
    write_pipeline(
        """
        name: Slow child
        resource_limits: {timeout: 5}
        tasks:
          - name: work
            type: python_task
            script: return 1
        """,
        name="slow_child",
    )
    parent = write_pipeline(
        """
        name: Parent
        tasks:
          - name: kids
            type: pipeline_group
            pipelines:
              - pipeline: slow_child.yaml
        """,
        name="parent",
    )
    result = cli("compile", parent)
    assert result.code == 1
    assert result.stderr.startswith(
        f"{parent}:7:19: cannot compile: task 'kids': child pipeline slow_child.yaml"
    )
    assert "has a timeout" in result.stderr and "put the timeout on its tasks" in result.stderr
    assert cli("run", parent, "--json").code == 0  # the embedded engine keeps it


@pytest.mark.parametrize("check", [False, True], ids=["build", "build --check"])
def test_build_prints_a_located_line(cli: Cli, tmp_path: Path, check: bool) -> None:
    root = tmp_path / "app"
    (root / "pipelines").mkdir(parents=True)
    (root / "infra").mkdir()
    shutil.copy(REPO / "infra" / "template.base.yaml", root / "infra" / "template.base.yaml")
    (root / "pipelines" / "bad.yaml").write_text(BAD_FALLBACK, encoding="utf-8")
    result = cli("build", "--root", root, *(["--check"] if check else []))
    assert result.code == 1
    _one_located_line(result.stderr, root / "pipelines" / "bad.yaml")
    assert not (root / "template.yaml").exists()


@pytest.mark.slow
def test_run_on_stepfunctions_prints_a_located_line(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_FALLBACK, encoding="utf-8")
    result = cli("run", path, "--json", "--engine", "stepfunctions")
    assert result.code == 2 and result.stdout == ""
    _one_located_line(result.stderr, path)
