"""Issue 13, inputs: whatever `-i`, `--inputs-file` or an API body gives, the run gets JSON
values (text keys, valid Unicode, finite numbers of at most 4,300 digits, at most 100 levels
deep) or a clear input error with exit 2; and no input error ever shows a sensitive value,
on the command line or in the API's 400 body (a real API Gateway HTTP API event)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO, CliResult
from orchestrator.errors import InputError
from orchestrator.runtime.inputs import resolve_inputs
from orchestrator.spec.loading import parse_pipeline

Cli = Callable[..., CliResult]

ECHO = """
name: echo
input_variables:
  pin: {type: integer, sensitive: true}
  region: {type: string, options: [eu-west-1, us-east-1], default: eu-west-1}
  token: {type: string, required: false}
security: {sensitive_variables: [token, region]}
tasks:
  - name: show
    type: python_task
    script: 'return {"given": {{ given | default(none) }}}'
"""


def _pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "echo.yaml"
    path.write_text(ECHO, encoding="utf-8")
    return path


def _no_traceback(result: CliResult) -> None:
    assert "Traceback" not in result.stdout + result.stderr


def test_mixed_type_keys_in_an_undeclared_input_become_text(cli: Cli, tmp_path: Path) -> None:
    # GIVEN an undeclared input whose mapping has an integer key and a text key
    result = cli(
        "run", _pipeline(tmp_path), "--json", "-i", "pin=1", "-i", "given={1: a, b: c, 2.5: d, null: e}"
    )
    # THEN the run goes on and the keys are what JSON makes of them, as on AWS
    assert result.code == 0, result.stderr
    assert result.document()["outputs"]["show"] == {"given": {"1": "a", "b": "c", "2.5": "d", "null": "e"}}


@pytest.mark.parametrize(
    ("content", "suffix", "expected"),
    [
        ('{"given": "\\ud83d\\ude00 😀"}', "json", {"given": "😀 😀"}),
        ('given: "\\ud83d\\ude00"\n', "yaml", {"given": "😀"}),
        ("given: 2024-01-01\n", "yaml", {"given": "2024-01-01"}),
        ('{"given": 1e5}', "json", {"given": 100000.0}),
        ("given: {1: a}\n", "yaml", {"given": {"1": "a"}}),
    ],
)
def test_an_inputs_file_gives_json_values(
    cli: Cli, tmp_path: Path, content: str, suffix: str, expected: dict[str, Any]
) -> None:
    inputs = tmp_path / f"inputs.{suffix}"
    inputs.write_text(content, encoding="utf-8")
    result = cli("run", _pipeline(tmp_path), "--json", "-i", "pin=1", "--inputs-file", inputs)
    assert result.code == 0, result.stderr
    assert result.document()["outputs"]["show"] == expected


BAD_INPUT_FILES = {
    "a 5,000-digit integer (JSON)": ('{"given": ' + "9" * 5000 + "}", "5,000 digits"),
    "a 5,000-digit integer (YAML)": ("given: " + "9" * 5000 + "\n", "5,000 digits"),
    "3,000-deep lists (JSON)": ('{"given": ' + "[" * 3000 + "]" * 3000 + "}", "nested deeper than 100"),
    "3,000-deep lists (YAML)": ("given: " + "[" * 3000 + "]" * 3000 + "\n", "nested deeper than 100"),
    "150-deep lists": ('{"given": ' + "[" * 150 + "]" * 150 + "}", "nested deeper than 100"),
    "a lone surrogate": ('{"given": "\\ud83d"}', "not valid Unicode"),
    "a NaN": ('{"given": NaN}', "finite number"),
    "keys the same as JSON": ("given: {1: a, '1': b}\n", "same once written as JSON"),
    "a binary value": ("given: !!binary aGVsbG8=\n", "!!binary"),
    "not a mapping": ("[1, 2]\n", "must be a mapping"),
    "alias bomb": (
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{chr(98 + n)}: &{chr(98 + n)} [{', '.join([f'*{chr(97 + n)}'] * 9)}]\n" for n in range(8)
        ),
        "billion laughs",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT_FILES))
def test_a_hostile_inputs_file_is_an_input_error(cli: Cli, tmp_path: Path, case: str) -> None:
    content, expected = BAD_INPUT_FILES[case]
    inputs = tmp_path / "inputs.json"
    inputs.write_text(content, encoding="utf-8")
    result = cli("run", _pipeline(tmp_path), "--json", "-i", "pin=1", "--inputs-file", inputs)
    _no_traceback(result)
    assert result.code == 2 and result.stdout == ""
    assert expected in result.stderr, result.stderr


@pytest.mark.parametrize("special", ["/dev/zero", "folder", "missing.json"])
def test_an_inputs_file_that_is_no_file_is_an_input_error(cli: Cli, tmp_path: Path, special: str) -> None:
    (tmp_path / "folder").mkdir()
    target = special if special.startswith("/") else tmp_path / special
    result = cli("run", _pipeline(tmp_path), "--json", "-i", "pin=1", "--inputs-file", target)
    _no_traceback(result)
    assert result.code == 2 and "--inputs-file" in result.stderr


@pytest.mark.parametrize(
    "argument",
    ["given=" + "9" * 5000, "given=" + "[" * 3000 + "]" * 3000, "given=!!binary aGVsbG8=", "given=.nan"],
)
def test_a_hostile_i_value_is_an_input_error(cli: Cli, tmp_path: Path, argument: str) -> None:
    result = cli("run", _pipeline(tmp_path), "--json", "-i", "pin=1", "-i", argument)
    _no_traceback(result)
    assert result.code == 2 and "input 'given'" in result.stderr, result.stderr


SECRET = "hunter2-Zx9"


@pytest.mark.parametrize(
    "arguments",
    [
        ["-i", f"pin={SECRET}"],  # not an integer
        ["-i", "pin=1", "-i", f"region={SECRET}"],  # not one of the options
        ["-i", f"pin=[{SECRET}]"],
        ["-i", f"={SECRET}"],  # no name
        ["-i", SECRET],  # no '='
    ],
)
def test_an_input_error_never_shows_a_sensitive_value(cli: Cli, tmp_path: Path, arguments: list[str]) -> None:
    result = cli("run", _pipeline(tmp_path), "--json", *arguments)
    assert result.code == 2
    assert SECRET not in result.stderr + result.stdout
    assert "input" in result.stderr


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    secret=st.text(min_size=3, max_size=30)
    .filter(lambda s: s.strip() == s and "\x00" not in s)
    .map(lambda s: s + "§")
)
def test_no_input_error_shows_a_sensitive_value_property(secret: str) -> None:
    """Property: for any sensitive value the inputs reject, the message does not hold it. (Each
    value ends in `§`, which no message's own words hold: a value like `integer` is in them.)"""
    pipeline = parse_pipeline(ECHO, Path("echo.yaml")).pipeline
    for given_inputs, text_keys in (
        ({"pin": secret}, frozenset({"pin"})),
        ({"pin": [secret]}, frozenset()),
        ({"pin": 1, "region": secret}, frozenset()),
        ({"pin": 1, "region": {secret: 1}}, frozenset()),
        ({"pin": 1, "token": [secret, {1: secret}, float("nan")]}, frozenset()),
    ):
        try:
            resolve_inputs(pipeline, given_inputs, text_keys=text_keys)
        except InputError as error:
            assert secret not in str(error)


def test_the_api_400_body_never_shows_a_sensitive_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HTTP API's run request (a real API Gateway HTTP API v2 event) validates inputs with
    the same `resolve_inputs`: its 400 body names the input, never the sensitive value."""
    pytest.importorskip("moto")
    from moto import mock_aws

    from orchestrator.aws.clients import aws_client

    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "echo.yaml").write_text(ECHO, encoding="utf-8")
    for name, value in {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "ORCHESTRATOR_PIPELINES_DIR": str(folder),
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_SERVICE_NAME": "orchestrator-test",
    }.items():
        monkeypatch.setenv(name, value)
    event = json.loads((REPO / "tests" / "events" / "apigw_http_post_run.json").read_text(encoding="utf-8"))
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/pipelines/echo/runs"
    event["pathParameters"] = {"id": "echo"}
    del event["headers"]["idempotency-key"]
    aws_client.cache_clear()
    with mock_aws():
        arn = aws_client("stepfunctions").create_state_machine(
            name="orchestrator-echo",
            definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}),
            roleArn="arn:aws:iam::123456789012:role/orchestrator-state-machine",
        )["stateMachineArn"]
        monkeypatch.setenv("ORCHESTRATOR_STATE_MACHINES", json.dumps({"echo": arn}))
        from aws.conftest import FakeLambdaContext, create_table, load_handler

        create_table("RunsTable", "orchestrator-runs")
        monkeypatch.setenv("ORCHESTRATOR_RUNS_TABLE", "orchestrator-runs")
        for inputs in ({"pin": SECRET}, {"pin": 1, "region": SECRET}, {"pin": [SECRET]}):
            event["body"] = json.dumps({"inputs": inputs})
            response = load_handler("api").lambda_handler(event, FakeLambdaContext())
            assert response["statusCode"] == 400, response
            assert SECRET not in response["body"]
            assert "input '" in json.loads(response["body"])["error"]
        # a body JSON allows but no run can take: a 400 that says why, never a 500
        for body, reason in (
            ('{"inputs": {"pin": ' + "[" * 3000 + "]" * 3000 + "}}", "nested deeper than 100"),
            ('{"inputs": {"pin": ' + "9" * 5000 + "}}", "5,000 digits"),
            ('{"inputs": {"pin": 1, "token": "\\ud83d"}}', "not valid Unicode"),
        ):
            event["body"] = body
            response = load_handler("api").lambda_handler(event, FakeLambdaContext())
            assert response["statusCode"] == 400, response
            assert reason in json.loads(response["body"])["error"]
    aws_client.cache_clear()
