"""Issue 15, typed output: `llm_task.output_schema` through the CLI against a fake server.

A reply that is not JSON or that the schema rejects goes back to the model with the error
(`schema_retries` times), then the attempt fails with `OutputValidationError` and the task's
`error_handling` applies; a model marked `structured_output` gets the schema as the request's
`response_format`; `validate` names the file and line of every schema mistake.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import CliResult
from fakes.fixtures import fake_openai  # noqa: F401
from fakes.servers import FakeOpenAIServer

Cli = Callable[..., CliResult]
Write = Callable[..., Path]

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}

PIPELINE = """
    name: typed
    tasks:
      - name: person
        type: llm_task
        prompt: Describe Ada Lovelace.
        output_schema: {schema}
        schema_retries: {retries}
        error_handling: {policy}
"""


def typed_pipeline(
    write: Write, *, schema: Any = None, retries: int = 2, policy: dict[str, Any] | None = None
) -> Path:
    return write(
        PIPELINE.format(
            schema=json.dumps(PERSON if schema is None else schema),
            retries=retries,
            policy=json.dumps(policy or {}),
        )
    )


@pytest.fixture
def llm_env(
    fake_openai: FakeOpenAIServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> FakeOpenAIServer:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    monkeypatch.delenv("ORCHESTRATOR_DEFAULT_MODEL", raising=False)
    config = tmp_path / "config.yaml"
    config.write_text("{}\n", encoding="utf-8")
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(config))
    return fake_openai


def run_json(cli: Cli, path: Path) -> tuple[int, dict[str, Any]]:
    result = cli("run", path, "--json")
    assert result.stdout.strip(), result.stderr
    return result.code, result.document()


def conversation(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(message["role"], message["content"]) for message in body["messages"]]


# -- the repair loop -------------------------------------------------------------------------


def test_replies_that_do_not_parse_or_match_go_back_with_the_error_until_one_matches(
    cli: Cli, write_pipeline: Write, llm_env: FakeOpenAIServer
) -> None:
    # GIVEN a model that first writes prose, then JSON the schema rejects, then a match
    llm_env.enqueue(
        "Ada was a mathematician.", '{"name": "Ada", "age": "thirty-six"}', '{"name": "Ada", "age": 36}'
    )
    path = typed_pipeline(write_pipeline)
    # WHEN the pipeline runs
    code, document = run_json(cli, path)
    # THEN the third reply is the output, all in one attempt of three calls
    assert code == 0, document
    assert document["outputs"]["person"] == {"name": "Ada", "age": 36}
    assert document["tasks"]["person"]["attempts"] == 1
    bodies = llm_env.bodies
    assert len(bodies) == 3
    # the first asks with the schema in the prompt (this model has no structured output)
    first = conversation(bodies[0])
    assert (
        first[0][0] == "user"
        and "JSON Schema" in first[0][1]
        and '"additionalProperties": false' in first[0][1]
    )
    assert "response_format" not in bodies[0]
    # each later request carries the replies so far and what was wrong with each
    second = conversation(bodies[1])
    assert second[1] == ("assistant", "Ada was a mathematician.")
    assert second[2][0] == "user" and "not JSON" in second[2][1]
    third = conversation(bodies[2])
    assert third[:3] == second
    assert third[3] == ("assistant", '{"name": "Ada", "age": "thirty-six"}')
    assert "at $.age" in third[4][1] and "'thirty-six' is not of type 'integer'" in third[4][1]


def test_a_fenced_json_reply_that_matches_is_the_output_at_once(
    cli: Cli, write_pipeline: Write, llm_env: FakeOpenAIServer
) -> None:
    llm_env.enqueue('Here it is:\n```json\n{"name": "Ada", "age": 36}\n```')
    code, document = run_json(cli, typed_pipeline(write_pipeline))
    assert code == 0, document
    assert document["outputs"]["person"] == {"name": "Ada", "age": 36}
    assert llm_env.request_count == 1


def test_when_no_reply_matches_the_task_fails_with_output_validation_error_after_its_retries(
    cli: Cli, write_pipeline: Write, llm_env: FakeOpenAIServer
) -> None:
    # GIVEN a model that never gives the age, one repair per attempt and one task retry
    llm_env.reply = lambda body: '{"name": "Ada"}'
    path = typed_pipeline(write_pipeline, retries=1, policy={"retry_count": 1, "retry_delay": 0})
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN two attempts of two calls each were made, and the run failed with the last problem
    assert code == 1
    assert document["error"]["task"] == "person"
    assert document["error"]["type"] == "OutputValidationError"
    assert "'age' is a required property" in document["error"]["message"]
    assert document["tasks"]["person"]["attempts"] == 2
    assert llm_env.request_count == 4
    # a new attempt starts a new conversation
    assert [len(body["messages"]) for body in llm_env.bodies] == [1, 3, 1, 3]
    assert document["outputs"]["person"] is None


def test_on_failure_skip_gives_the_fallback_value_when_no_reply_matches(
    cli: Cli, write_pipeline: Write, llm_env: FakeOpenAIServer
) -> None:
    llm_env.reply = lambda body: "[1, 2, 3]"
    policy = {"on_failure": "skip", "fallback_value": {"name": "unknown", "age": 0}}
    code, document = run_json(cli, typed_pipeline(write_pipeline, retries=0, policy=policy))
    assert code == 0, document
    assert document["outputs"]["person"] == {"name": "unknown", "age": 0}
    assert document["tasks"]["person"]["error"]["type"] == "OutputValidationError"
    assert llm_env.request_count == 1


def test_a_model_with_structured_output_gets_the_schema_as_response_format(
    cli: Cli, write_pipeline: Write, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # GIVEN a server that refuses any request without the schema as response_format
    expected = {"type": "json_schema", "json_schema": {"name": "output", "schema": PERSON, "strict": False}}
    with FakeOpenAIServer(response_format=expected) as server:
        server.enqueue('{"name": "Ada"}', '{"name": "Ada", "age": 36}')
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
        monkeypatch.delenv("ORCHESTRATOR_DEFAULT_MODEL", raising=False)
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"llm": {"models": {"gpt-4o-mini": {"structured_output": True}}}}))
        monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(config))
        # WHEN the pipeline runs
        code, document = run_json(cli, typed_pipeline(write_pipeline))
        # THEN every request carried it (the repair too), and the prompt was left as written
        assert code == 0, document
        assert document["outputs"]["person"] == {"name": "Ada", "age": 36}
        assert server.request_count == 2
        assert conversation(server.bodies[0]) == [("user", "Describe Ada Lovelace.")]
        assert "'age' is a required property" in conversation(server.bodies[1])[2][1]


def test_a_schema_file_is_read_relative_to_the_pipeline_file(
    cli: Cli, write_pipeline: Write, llm_env: FakeOpenAIServer, tmp_path: Path
) -> None:
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "person.yaml").write_text(yaml.safe_dump(PERSON), encoding="utf-8")
    path = typed_pipeline(write_pipeline, schema="schemas/person.yaml")
    llm_env.enqueue('{"name": "Ada", "age": -1}', '{"name": "Ada", "age": 36}')
    code, document = run_json(cli, path)
    assert code == 0, document
    assert document["outputs"]["person"] == {"name": "Ada", "age": 36}
    assert "-1 is less than the minimum of 0" in conversation(llm_env.bodies[1])[2][1]


def test_prompt_hash_caching_keys_on_the_schema(
    cli: Cli, write_pipeline: Write, llm_env: FakeOpenAIServer
) -> None:
    # GIVEN a cached typed task that ran once
    text = PIPELINE.replace("schema_retries", "cache_strategy: prompt_hash\n        schema_retries")
    llm_env.reply = lambda body: '{"name": "Ada", "age": 36}'
    schema = json.dumps(PERSON)
    first = write_pipeline(text.format(schema=schema, retries=2, policy="{}"))
    assert run_json(cli, first)[0] == 0
    assert run_json(cli, first)[0] == 0
    assert llm_env.request_count == 1  # the second run read the cache
    # WHEN its schema changes
    changed = {**PERSON, "required": ["name"]}
    write_pipeline(text.format(schema=json.dumps(changed), retries=2, policy="{}"))
    # THEN it asks again
    assert run_json(cli, first)[0] == 0
    assert llm_env.request_count == 2


# -- validate --------------------------------------------------------------------------------


def validate_errors(cli: Cli, path: Path) -> list[str]:
    result = cli("validate", path)
    assert result.code != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    return [line for line in (result.stderr + result.stdout).splitlines() if ": " in line]


@pytest.mark.parametrize(
    ("schema", "line", "expected"),
    [
        ({"type": "objet"}, 7, "did you mean 'object'?"),
        ({"type": "object", "properties": {"age": {"minimum": "zero"}}}, 7, "'zero' is not of type 'number'"),
        ({"$schema": "http://example.com/mine", "type": "object"}, 7, "unknown JSON Schema dialect"),
        ([{"type": "object"}], 7, "output_schema is a JSON Schema (a mapping"),
    ],
    ids=["misspelt type", "bad keyword value", "unknown dialect", "not a mapping"],
)
def test_validate_names_the_line_of_an_invalid_inline_schema(
    cli: Cli, write_pipeline: Write, schema: Any, line: int, expected: str
) -> None:
    path = typed_pipeline(write_pipeline, schema=schema)
    (error,) = validate_errors(cli, path)
    assert error.startswith(f"{path}:{line}:"), error
    assert expected in error


def test_validate_names_the_missing_or_unreadable_schema_file_and_the_fix(
    cli: Cli, write_pipeline: Write, tmp_path: Path
) -> None:
    missing = typed_pipeline(write_pipeline, schema="schemas/person.json")
    (error,) = validate_errors(cli, missing)
    assert error.startswith(f"{missing}:7:") and "schemas/person.json, which does not exist" in error
    assert "relative to the pipeline file" in error
    # a file that is not YAML: its own line is named
    (tmp_path / "broken.json").write_text('{\n  "type": "object",\n  "properties": {\n}', encoding="utf-8")
    broken = typed_pipeline(write_pipeline, schema="broken.json")
    (error,) = validate_errors(cli, broken)
    assert error.startswith(f"{tmp_path / 'broken.json'}:") and "not JSON or YAML" in error
    # a valid file holding an invalid schema: the line in that file
    (tmp_path / "bad.yaml").write_text(
        "type: object\nproperties:\n  age:\n    type: intger\n", encoding="utf-8"
    )
    bad = typed_pipeline(write_pipeline, schema="bad.yaml")
    (error,) = validate_errors(cli, bad)
    assert error.startswith(f"{tmp_path / 'bad.yaml'}:4:") and "did you mean 'integer'?" in error
    # a folder
    (tmp_path / "folder").mkdir()
    (error,) = validate_errors(cli, typed_pipeline(write_pipeline, schema="folder"))
    assert "is a directory" in error


def test_validate_refuses_an_output_type_that_contradicts_the_schema(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: typed
        tasks:
          - name: person
            type: llm_task
            prompt: Describe Ada.
            output_type: number
            output_schema: {type: object}
          - name: fine
            type: llm_task
            prompt: Describe Ada.
            output_type: json
            output_schema: {type: object}
        """
    )
    (error,) = validate_errors(cli, path)
    assert error.startswith(f"{path}:7:") and "output_type: number contradicts output_schema" in error
    assert "remove output_type" in error


def test_validate_refuses_schema_retries_without_a_schema(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: typed
        tasks:
          - name: person
            type: llm_task
            prompt: Describe Ada.
            output_type: json
            schema_retries: 3
        """
    )
    (error,) = validate_errors(cli, path)
    assert (
        error.startswith(f"{path}:8:")
        and "schema_retries applies only to a task with an output_schema" in error
    )


def test_validate_checks_schemas_inside_containers_and_fallbacks(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: typed
        tasks:
          - name: loop
            type: for_loop
            iterate_over: [1, 2]
            tasks:
              - name: inner
                type: llm_task
                prompt: hi
                output_schema: {type: 3}
                error_handling:
                  fallback:
                    name: backup
                    type: llm_task
                    prompt: hi
                    output_schema: {required: yes}
        """
    )
    errors = validate_errors(cli, path)
    assert [error.split(":")[1] for error in errors] == ["11", "17"]


def test_a_sensitive_input_the_model_echoes_in_a_rejected_reply_is_masked_in_the_error(
    cli: Cli, write_pipeline: Write, llm_env: FakeOpenAIServer
) -> None:
    # GIVEN a sensitive input in the prompt, and a model that echoes it where the schema wants a number
    llm_env.reply = lambda body: json.dumps({"name": "s3cr3t-t0ken"})
    path = write_pipeline(
        """
        name: typed
        input_variables:
          token: {type: string, sensitive: true}
        tasks:
          - name: person
            type: llm_task
            prompt: "Who owns {{ token }}?"
            output_schema: {type: object, properties: {name: {type: integer}}}
            schema_retries: 1
        """
    )
    # WHEN it runs
    result = cli("run", path, "--json", "-i", "token=s3cr3t-t0ken")
    # THEN the error says what was wrong, never the secret
    document = result.document()
    assert document["error"]["type"] == "OutputValidationError"
    assert "at $.name: '***' is not of type 'integer'" in document["error"]["message"]
    assert "s3cr3t-t0ken" not in result.stdout + result.stderr


def test_structured_output_in_the_config_must_be_true_or_false(
    cli: Cli, write_pipeline: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("llm:\n  models:\n    gpt-4o: {structured_output: 'yes'}\n", encoding="utf-8")
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(config))
    result = cli("run", typed_pipeline(write_pipeline), "--json")
    assert result.code != 0
    assert "'llm.models.gpt-4o.structured_output' must be true or false, got 'yes'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_generated_task_gives_its_schema_inline(
    cli: Cli, write_pipeline: Write, llm_env: FakeOpenAIServer
) -> None:
    # GIVEN generated llm_tasks: one naming a schema file, one with an invalid schema
    llm_env.reply = lambda body: '{"name": "Ada", "age": 36}'
    path = write_pipeline(
        """
        name: generated
        tasks:
          - name: group
            type: dynamic_task_group
            tasks: |
              {{ [{"name": "by_file", "type": "llm_task", "prompt": "hi", "output_schema": "person.json"}] }}
            error_handling: {on_failure: skip}
          - name: other
            type: dynamic_task_group
            tasks: |
              {{ [{"name": "bad", "type": "llm_task", "prompt": "hi", "output_schema": {"type": "objet"} }] }}
            error_handling: {on_failure: skip}
          - name: fine
            type: dynamic_task_group
            tasks: |
              {{ [{"name": "t", "type": "llm_task", "prompt": "hi", "output_schema": {"type": "object"} }] }}
            error_handling: {on_failure: skip}
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN each invalid one is an InvalidTaskSpec saying why, and the inline one runs
    tasks = document["tasks"]
    assert tasks["group"]["error"]["type"] == "InvalidTaskSpec"
    assert "must be the schema itself, not a file name" in tasks["group"]["error"]["message"]
    assert tasks["other"]["error"]["type"] == "InvalidTaskSpec"
    assert "output_schema['type']" in tasks["other"]["error"]["message"]
    assert "did you mean 'object'?" in tasks["other"]["error"]["message"]
    assert tasks["fine"]["status"] == "succeeded"
    assert document["outputs"]["fine"] == [{"name": "Ada", "age": 36}]
    assert code == 0
    assert llm_env.request_count == 1
