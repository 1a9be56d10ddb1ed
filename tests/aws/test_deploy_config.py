"""Issue 15 on AWS: the deploy config (`infra/config.yaml`) gives the deployed functions their
model routes, prices and keys, the keys only as Secrets Manager secrets.

`orchestrator build` checks the file with the config file's own parser, refuses a key written
in it, ships it in the runtime layer, points every function's `ORCHESTRATOR_CONFIG` at it and
lets the llm_task and web_search_task functions read exactly the secrets it names. The deployed
handlers, on moto, then send the secret's key to the model's endpoint, and the HTTP API's run
view prices the call; the key shows nowhere.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import CliResult
from fakes.fixtures import fake_openai, fake_search  # noqa: F401
from fakes.servers import FakeOpenAIServer, FakeResponse, FakeSearchServer
from orchestrator.aws.build import DEPLOYED_CONFIG, LAYER_CONFIG
from orchestrator.aws.sam import load_template
from orchestrator.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-deployed-0123456789abcdef"
SEARCH_KEY = "search-deployed-9876543210"
ASKING = """\
name: Asking
tasks:
  - name: ask
    type: llm_task
    model: gpt-4
    prompt: "say hi"
"""
DEPLOY_CONFIG = """\
llm:
  api_key_secret: openai-default
  models:
    gpt-4:
      base_url: https://models.example/v1
      api_key_secret: openai-prod
      model: gpt-4o-2024-08-06
      price: {input_per_million: 2.5, output_per_million: 10}
search:
  url: https://search.example/search
  api_key_secret: search-key
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    (root / "infra").mkdir(parents=True)
    shutil.copy(REPO / "infra" / "template.base.yaml", root / "infra" / "template.base.yaml")
    (root / "pipelines").mkdir()
    (root / "pipelines" / "asking.yaml").write_text(ASKING, encoding="utf-8")
    return root


def _secret_resources(template: dict[str, Any], function: str, sid: str) -> list[str]:
    properties = template["Resources"][function]["Properties"]
    found = []
    for policy in properties.get("Policies") or []:
        for statement in policy.get("Statement", []) if isinstance(policy, dict) else []:
            if isinstance(statement, dict) and statement.get("Sid") == sid:
                assert statement["Action"] == "secretsmanager:GetSecretValue"
                found += [resource.value for resource in statement["Resource"]]
    return found


def _secret_arn(name: str) -> str:
    prefix = "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:"
    return f"{prefix}orchestrator/{name}-??????"


@pytest.mark.slow  # (five builds)
def test_build_ships_the_deploy_config_and_lets_only_the_key_readers_read_its_secrets(
    project: Path, cli: Callable[..., CliResult]
) -> None:
    # GIVEN a deploy config with model routes, a price and keys named by secret
    (project / "infra" / "config.yaml").write_text(DEPLOY_CONFIG, encoding="utf-8")

    # WHEN the app is built
    built = cli("build", "--root", project)

    # THEN the layer holds the config, which the functions' ORCHESTRATOR_CONFIG names
    assert built.code == 0, built.stderr
    shipped = project / LAYER_CONFIG
    assert shipped.read_text(encoding="utf-8").endswith(DEPLOY_CONFIG)
    template = load_template((project / "template.yaml").read_text(encoding="utf-8"))
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["ORCHESTRATOR_CONFIG"] == DEPLOYED_CONFIG == "/opt/python/" + LAYER_CONFIG.name
    assert template["Resources"]["RuntimeLayer"]["Properties"]["ContentUri"] == "shared/"
    # ... and is the config the functions read: routes, price and the secrets naming the keys
    settings = load_settings({"ORCHESTRATOR_CONFIG": str(shipped), "ORCHESTRATOR_HOME": str(project / "h")})
    route = settings.route_for("gpt-4")
    assert (route.base_url, route.api_key, route.api_key_secret) == (
        "https://models.example/v1",
        None,
        "openai-prod",
    )
    assert settings.route_for("other").api_key_secret == "openai-default"
    assert settings.prices["gpt-4"].output_per_million == 10
    assert settings.search_api_key_secret == "search-key"
    # ... and each function may read exactly the secrets of its own keys, no other function any
    assert _secret_resources(template, "LlmTaskFunction", "ReadProviderKeys") == [
        _secret_arn("openai-default"),
        _secret_arn("openai-prod"),
    ]
    assert _secret_resources(template, "WebSearchTaskFunction", "ReadProviderKeys") == [
        _secret_arn("search-key")
    ]
    readers = {
        name
        for name, resource in template["Resources"].items()
        if "secretsmanager" in json.dumps(resource.get("Properties", {}), default=str)
    }
    assert readers == {"LlmTaskFunction", "WebSearchTaskFunction"}
    assert cli("build", "--check", "--root", project).code == 0

    # WHEN the deploy config changes  THEN the check names the layer's copy and the template as stale
    (project / "infra" / "config.yaml").write_text(DEPLOY_CONFIG.replace("search-key", "search-2"), "utf-8")
    checked = cli("build", "--check", "--root", project)
    assert checked.code != 0
    assert f"stale: {LAYER_CONFIG.as_posix()}" in checked.stderr and "stale: template.yaml" in checked.stderr

    # WHEN it is removed and the app built again  THEN no copy, no variable and no permission remain
    (project / "infra" / "config.yaml").unlink()
    assert cli("build", "--root", project).code == 0
    assert not shipped.exists()
    template = load_template((project / "template.yaml").read_text(encoding="utf-8"))
    assert "ORCHESTRATOR_CONFIG" not in template["Globals"]["Function"]["Environment"]["Variables"]
    assert "secretsmanager" not in (project / "template.yaml").read_text(encoding="utf-8")
    assert cli("build", "--check", "--root", project).code == 0


@pytest.mark.parametrize(
    ("place", "entry"),
    [
        ("llm.api_key", {"llm": {"api_key": KEY}}),
        ("llm.models.gpt-4.api_key", {"llm": {"models": {"gpt-4": {"api_key": KEY}}}}),
        ("llm.models.gpt-4.api_key_env", {"llm": {"models": {"gpt-4": {"api_key_env": "OPENAI_API_KEY"}}}}),
        ("search.api_key", {"search": {"url": "https://s.example", "api_key": KEY}}),
        ("search.api_key_env", {"search": {"api_key_env": "SEARCH_KEY"}}),
    ],
)
def test_build_refuses_a_key_in_the_deploy_config(
    project: Path, cli: Callable[..., CliResult], place: str, entry: dict[str, Any]
) -> None:
    # GIVEN a deploy config that writes a key, or names an environment variable for one
    (project / "infra" / "config.yaml").write_text(yaml.safe_dump(entry), encoding="utf-8")

    # WHEN the app is built
    result = cli("build", "--root", project)

    # THEN nothing is written, and the message names the file, the key and the fix, never the key
    assert result.code != 0
    assert "infra/config.yaml" in result.stderr and f"'{place}'" in result.stderr
    assert "api_key_secret: NAME" in result.stderr and "orchestrator/NAME" in result.stderr
    assert KEY not in result.stderr + result.stdout and "Traceback" not in result.stderr
    assert not (project / "template.yaml").exists() and not (project / LAYER_CONFIG).exists()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("llm:\n  modles: {}\n", "llm.modles"),  # the local config's own checks
        ("llm:\n  models:\n    m: {api_key_secret: 'has space'}\n", "llm.models.m.api_key_secret"),
        (
            "llm:\n  models:\n    m: {price: {input_per_million: 1}}\n",
            "llm.models.m.price.output_per_million",
        ),
    ],
)
def test_build_checks_the_deploy_config_as_the_functions_will_read_it(
    project: Path, cli: Callable[..., CliResult], text: str, named: str
) -> None:
    (project / "infra" / "config.yaml").write_text(text, encoding="utf-8")
    result = cli("build", "--root", project)
    assert result.code != 0 and "infra/config.yaml" in result.stderr and named in result.stderr
    assert "Traceback" not in result.stderr


# -- the deployed functions, on moto ---------------------------------------------------------


@pytest.fixture
def deployed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    template_table: Callable[[str, str], None],
    state_machines: Callable[..., dict[str, str]],
    pipelines_dir: Path,
) -> Callable[[str], None]:
    """The stack's tables and its `asking` pipeline on moto; call with the deploy config's text
    to give it to every function as the template does (`ORCHESTRATOR_CONFIG`)."""
    for kind in ("state", "cache", "audit", "telemetry"):
        template_table(f"{kind.title()}Table", f"orchestrator-{kind}")
        monkeypatch.setenv(f"ORCHESTRATOR_{kind.upper()}_TABLE", f"orchestrator-{kind}")
    (pipelines_dir / "asking.yaml").write_text(ASKING, encoding="utf-8")
    state_machines("asking")

    def configure(text: str) -> None:
        path = tmp_path / "deploy_config.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(path))

    return configure


def _create_secret(name: str, value: str) -> None:
    from orchestrator.aws.clients import aws_client

    aws_client("secretsmanager").create_secret(Name=f"orchestrator/{name}", SecretString=value)


def _start_run(handler: Callable[[str, dict[str, Any]], Any], event: Callable[[str], dict[str, Any]]) -> str:
    request = event("apigw_http_post_run")
    request["rawPath"] = request["requestContext"]["http"]["path"] = "/pipelines/asking/runs"
    request["pathParameters"] = {"id": "asking"}
    request["body"] = "{}"
    del request["headers"]["idempotency-key"]
    run_id: str = json.loads(handler("api", request)["body"])["run_id"]
    return run_id


def _run_view(
    handler: Callable[[str, dict[str, Any]], Any], event: Callable[[str], dict[str, Any]], run_id: str
) -> Any:
    request = event("apigw_http_get_run")
    request["rawPath"] = request["requestContext"]["http"]["path"] = f"/runs/{run_id}"
    request["pathParameters"] = {"run_id": run_id}
    return json.loads(handler("api", request)["body"])


def _ask(event: Callable[[str], dict[str, Any]], run_id: str) -> dict[str, Any]:
    payload = event("sfn_llm_task") | {"pipeline": "asking", "task": "tasks.0", "inputs": {}, "outputs": {}}
    payload["run"] = {**payload["run"], "id": run_id, "pipeline": "asking"}
    return payload


@pytest.mark.slow  # (the first LLM call of a process imports the openai package)
def test_the_deployed_llm_function_sends_the_secrets_key_and_the_api_prices_the_call(
    deployed: Callable[[str], None],
    handler: Callable[[str, dict[str, Any]], Any],
    event: Callable[[str], dict[str, Any]],
    fake_openai: FakeOpenAIServer,  # noqa: F811
    capfd: pytest.CaptureFixture[str],
) -> None:
    # GIVEN a deploy config routing gpt-4, with a price, its key in Secrets Manager
    deployed(
        f"""
        llm:
          models:
            gpt-4:
              base_url: {fake_openai.base_url}
              api_key_secret: openai-prod
              model: gpt-4o-2024-08-06
              price: {{input_per_million: 2.5, output_per_million: 10}}
        """
    )
    _create_secret("openai-prod", KEY)
    run_id = _start_run(handler, event)
    fake_openai.enqueue("Hello there friend")

    # WHEN the llm function runs the task's attempt
    result = handler("llm_task", _ask(event, run_id))

    # THEN the request went to the route with the secret's key, for the upstream model
    assert result == {"status": "succeeded", "output": "Hello there friend"}
    (request,) = fake_openai.requests
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.json["model"] == "gpt-4o-2024-08-06"
    # ... and the HTTP API's run view prices it from the deploy config: 2 tokens in, 3 out
    view = _run_view(handler, event, run_id)
    (attempt,) = view["telemetry"]["ask"]["attempt_log"]
    (call,) = attempt["llm_calls"]
    assert (call["tokens_in"], call["tokens_out"]) == (2, 3)
    assert call["cost_usd"] == pytest.approx((2 * 2.5 + 3 * 10) / 1e6)
    assert view["telemetry"]["ask"]["usage"]["cost_usd"] == view["usage"]["cost_usd"] == call["cost_usd"]
    # ... and the key is in none of it, nor in anything the functions wrote
    assert KEY not in json.dumps(view) + json.dumps(result)
    captured = capfd.readouterr()
    assert KEY not in captured.out + captured.err


def test_a_key_the_provider_echoes_is_masked_in_the_error_the_telemetry_and_the_logs(
    deployed: Callable[[str], None],
    handler: Callable[[str, dict[str, Any]], Any],
    event: Callable[[str], dict[str, Any]],
    fake_openai: FakeOpenAIServer,  # noqa: F811
    capfd: pytest.CaptureFixture[str],
) -> None:
    # GIVEN a provider that answers with the key it was sent (as a careless proxy might)
    deployed(f"llm: {{base_url: '{fake_openai.base_url}', api_key_secret: openai-default}}\n")
    _create_secret("openai-default", KEY)
    run_id = _start_run(handler, event)
    fake_openai.enqueue(FakeResponse(status=401, message=f"Incorrect API key provided: {KEY}"))

    # WHEN the attempt fails
    with pytest.raises(Exception) as raised:
        handler("llm_task", _ask(event, run_id))

    # THEN the error that goes to the state machine, the run view and the logs mask it
    assert raised.type.__name__ == "LLMRequestError"
    assert KEY not in str(raised.value) and "Incorrect API key provided: ***" in str(raised.value)
    view = _run_view(handler, event, run_id)
    (attempt,) = view["telemetry"]["ask"]["attempt_log"]
    assert attempt["status"] == "failed" and KEY not in json.dumps(view)
    captured = capfd.readouterr()
    assert KEY not in captured.out + captured.err


def test_a_missing_key_secret_is_a_configuration_error_saying_how_to_create_it(
    deployed: Callable[[str], None],
    handler: Callable[[str, dict[str, Any]], Any],
    event: Callable[[str], dict[str, Any]],
    fake_openai: FakeOpenAIServer,  # noqa: F811
) -> None:
    # GIVEN a deploy config naming a secret that was never created
    deployed(f"llm: {{base_url: '{fake_openai.base_url}', api_key_secret: never-created}}\n")

    # WHEN the llm function runs  THEN it fails, not retried, naming the secret and the fix
    with pytest.raises(Exception) as raised:
        handler("llm_task", _ask(event, _start_run(handler, event)))
    assert raised.type.__name__ == "LLMConfigurationError"
    assert "orchestrator/never-created" in str(raised.value)
    assert "aws secretsmanager create-secret" in str(raised.value)
    assert fake_openai.request_count == 0


def test_the_deployed_search_function_sends_its_secrets_key(
    deployed: Callable[[str], None],
    handler: Callable[[str, dict[str, Any]], Any],
    event: Callable[[str], dict[str, Any]],
    fake_search: FakeSearchServer,  # noqa: F811
    pipelines_dir: Path,
) -> None:
    # GIVEN the search endpoint's key in Secrets Manager, named by the deploy config
    shutil.copy(REPO / "pipelines" / "dynamic_task_generation.yaml", pipelines_dir)
    deployed(f"search: {{url: '{fake_search.url}', api_key_secret: search-key}}\n")
    _create_secret("search-key", SEARCH_KEY)

    # WHEN the web search function runs an attempt
    result = handler("web_search_task", event("sfn_web_search_task"))

    # THEN the endpoint got the key, which the output does not show
    assert result["status"] == "succeeded"
    assert fake_search.requests[-1].headers["authorization"] == f"Bearer {SEARCH_KEY}"
    assert SEARCH_KEY not in json.dumps(result)
