"""A user's mistake gets a message that names the place and the fix, never a traceback.

Each case here was hit by a new user: a misspelt input, a default of the wrong type, an
output folder that does not exist, a state folder that is a file or holds a broken
database, and `--engine stepfunctions` without the AWS packages.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import PIPELINES, CliResult

Cli = Callable[..., CliResult]
Write = Callable[..., Path]

TOPIC_PIPELINE = """
    name: topics
    {strict}
    input_variables:
      topic: {{type: string, default: lambda}}
      count: {{type: integer, default: 2}}
    tasks:
      - name: echo
        type: python_task
        script: return ["{{{{ topic }}}}"] * {{{{ count }}}}
"""


def _no_traceback(result: CliResult) -> None:
    assert "Traceback" not in result.stderr + result.stdout


def test_a_misspelt_input_is_a_warning_with_a_suggestion_and_the_run_goes_on(
    cli: Cli, write_pipeline: Write
) -> None:
    # GIVEN a pipeline with a `topic` input, and no strict_mode
    path = write_pipeline(TOPIC_PIPELINE.format(strict=""))

    # WHEN it runs with -i topik=...
    result = cli("run", path, "--json", "-i", "topik=serverless")

    # THEN the run goes on with the default, and stderr says which name was meant
    assert result.code == 0, result.stderr
    assert result.document()["outputs"]["echo"] == ["lambda", "lambda"]
    assert f"{path}: warning: input 'topik' is not declared" in result.stderr
    assert "did you mean 'topic'?" in result.stderr


def test_a_misspelt_input_is_an_error_under_strict_mode(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(TOPIC_PIPELINE.format(strict="input_validation: {strict_mode: true}"))

    result = cli("run", path, "--json", "-i", "cuont=3")

    assert result.code == 2
    assert result.stdout == ""
    assert "input 'cuont' is not declared; did you mean 'count'?" in result.stderr
    _no_traceback(result)


def test_an_undeclared_input_the_templates_read_gives_no_warning(cli: Cli, write_pipeline: Write) -> None:
    # GIVEN a pipeline whose script reads `input_data`, which it does not declare (as the guide does)
    path = write_pipeline(
        """
        name: reads_undeclared
        tasks:
          - name: echo
            type: python_task
            script: return "{{ input_data }}"
        """
    )

    result = cli("run", path, "--json", "-i", "input_data=abc")

    assert result.code == 0, result.stderr
    assert result.document()["outputs"]["echo"] == "abc"
    assert "warning" not in result.stderr


def test_strict_mode_says_an_undeclared_name_cannot_be_given(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: strict_reads_undeclared
        input_validation: {strict_mode: true}
        tasks:
          - name: echo
            type: python_task
            script: return "{{ input_data }}"
        """
    )

    result = cli("validate", path)

    assert result.code == 0
    assert "strict_mode rejects undeclared inputs: declare it under input_variables" in result.stderr


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        ('{type: integer, default: "three"}', "the default of input 'n' must be an integer, got 'three'"),
        ("{type: boolean, default: 1}", "the default of input 'n' must be a boolean, got 1"),
        ("{type: array, default: {a: 1}}", "the default of input 'n' must be an array"),
        ("{type: string, options: [a, b], default: c}", "the default of input 'n' is 'c', not one of: a, b"),
    ],
)
def test_a_default_of_the_wrong_type_fails_validate(
    cli: Cli, write_pipeline: Write, declaration: str, message: str
) -> None:
    path = write_pipeline(
        f"""
        name: defaults
        input_variables:
          n: {declaration}
        tasks:
          - name: t
            type: python_task
            script: return 1
        """
    )

    result = cli("validate", path)

    assert result.code == 1
    assert f"{path}:4:" in result.stderr
    assert message in result.stderr
    assert "(input_variables.n.default)" in result.stderr
    _no_traceback(result)


@pytest.mark.parametrize(
    "declaration", ["{type: float, default: 1}", "{type: number, default: 0.5}", "{type: string, default: 7}"]
)
def test_a_default_its_type_accepts_validates(cli: Cli, write_pipeline: Write, declaration: str) -> None:
    path = write_pipeline(
        f"""
        name: defaults
        input_variables:
          n: {declaration}
        tasks:
          - name: t
            type: python_task
            script: return {{{{ n }}}}
        """
    )

    assert cli("validate", path).code == 0


def test_compile_creates_the_output_folder(cli: Cli, tmp_path: Path) -> None:
    target = tmp_path / "out" / "asl" / "demo.asl.json"

    result = cli("compile", PIPELINES / "demo.yaml", "-o", target)

    assert result.code == 0, result.stderr
    assert json.loads(target.read_text(encoding="utf-8"))["StartAt"]


@pytest.mark.parametrize("where", ["a_file/demo.asl.json", "."])
def test_compile_into_a_place_it_cannot_write_says_why(cli: Cli, tmp_path: Path, where: str) -> None:
    (tmp_path / "a_file").write_text("not a folder", encoding="utf-8")

    result = cli("compile", PIPELINES / "demo.yaml", "-o", tmp_path / where)

    assert result.code == 1
    assert f"cannot write {tmp_path / where}:" in result.stderr
    assert ("a_file is a file, not a folder" in result.stderr) or ("Is a directory" in result.stderr)
    _no_traceback(result)


def test_a_state_folder_that_is_a_file_is_a_clear_error(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home_file"
    home.write_text("", encoding="utf-8")
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(home))

    for command in (("run", PIPELINES / "demo.yaml", "-i", "topic=x"), ("runs", "list")):
        result = cli(*command)
        assert result.code == 2, command
        assert f"the state folder {home} is a file, not a folder" in result.stderr
        assert "set ORCHESTRATOR_HOME to a folder" in result.stderr
        _no_traceback(result)
    assert home.read_text(encoding="utf-8") == ""  # nothing of the user's is touched


def test_a_state_database_that_is_not_one_is_a_clear_error(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "state.db").write_bytes(b"this is not SQLite" * 100)
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(home))

    result = cli("runs", "list")

    assert result.code == 2
    assert "cannot be read" in result.stderr
    assert "move it aside" in result.stderr
    _no_traceback(result)


def test_stepfunctions_without_the_aws_packages_names_the_extra(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an install without moto (the emulator), as `pip install orchestrator` gives
    from orchestrator.aws import extras

    real_find_spec = extras.find_spec
    monkeypatch.setattr(extras, "find_spec", lambda name: None if name == "moto" else real_find_spec(name))

    # WHEN a run asks for the Step Functions engine
    result = cli("run", PIPELINES / "demo.yaml", "-i", "topic=x", "--engine", "stepfunctions")

    # THEN it says which extra to install, and nothing ran
    assert result.code == 2
    assert "pip install 'orchestrator[aws]'" in result.stderr
    assert "(moto)" in result.stderr
    assert result.stdout == ""
    _no_traceback(result)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            "llm:\n  models:\n    gpt-4: {modle: llama3.2}\n",
            "unknown key 'llm.models.gpt-4.modle'; did you mean 'model'?",
        ),
        ("lm:\n  default_model: x\n", "unknown key 'lm'; did you mean 'llm'?"),
        ("search:\n  URL: http://x\n", "unknown key 'search.URL'; did you mean 'url'?"),
        ("llm:\n  base_url: 8080\n", "'llm.base_url' must be a string, got 8080"),
    ],
)
def test_a_misspelt_config_key_is_an_error_not_a_setting_ignored(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str, message: str
) -> None:
    path = tmp_path / "orchestrator.yaml"
    path.write_text(config, encoding="utf-8")
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(path))

    result = cli("run", PIPELINES / "demo.yaml", "-i", "topic=x")

    assert result.code == 2
    assert f"configuration error: {path}: {message}" in result.stderr
    _no_traceback(result)
