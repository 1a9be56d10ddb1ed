"""Issue 15: a model's (or the search endpoint's) key named by secret, `api_key_secret: NAME`,
so one config works on the laptop and on AWS.

Locally the key is the local secret NAME (`ORCHESTRATOR_SECRET_<NAME>`, then `secrets.yaml` in
the state folder); on `--engine stepfunctions` it is the emulated Secrets Manager's
`orchestrator/NAME`, as on a deployed stack (tests/aws/test_deploy_config.py). Either way the
request carries it, the run document prices the call, and the key shows nowhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from conftest import CliResult
from fakes.fixtures import fake_openai, fake_search  # noqa: F401
from fakes.servers import FakeOpenAIServer, FakeSearchServer
from orchestrator.errors import ConfigError
from orchestrator.settings import load_settings

KEY = "sk-from-a-secret-0123456789"
PIPELINE = """\
name: asking
tasks:
  - name: ask
    type: llm_task
    model: gpt-4
    prompt: "say hi"
"""


def _config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict[str, object]) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(path))


def _routed(fake: FakeOpenAIServer, secret: str = "openai-prod") -> dict[str, object]:
    price = {"input_per_million": 2.5, "output_per_million": 10}
    return {
        "llm": {"models": {"gpt-4": {"base_url": fake.base_url, "api_key_secret": secret, "price": price}}}
    }


def _secrets_file(home: Path, secrets: dict[str, str]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "secrets.yaml").write_text(yaml.safe_dump(secrets), encoding="utf-8")
    (home / "secrets.yaml").chmod(0o600)


@pytest.mark.slow  # (a run on the emulated AWS)
def test_one_config_sends_the_secrets_key_on_both_engines(
    run_on_both_engines: Callable[..., dict[str, CliResult]],
    write_pipeline: Callable[..., Path],
    fake_openai: FakeOpenAIServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a config naming the model's key by secret, and the secret in the state folder's file
    _config(tmp_path, monkeypatch, _routed(fake_openai))
    for engine in ("local", "stepfunctions"):  # (each engine's run has a state folder of its own)
        _secrets_file(tmp_path / engine, {"openai-prod": KEY})
    fake_openai.reply = lambda body: "hello there friend"

    # WHEN the pipeline runs on the embedded engine and on the emulated Step Functions
    results = run_on_both_engines(write_pipeline(PIPELINE))

    # THEN both requests carried the key (on AWS read from Secrets Manager's orchestrator/openai-prod)
    assert [request.headers["authorization"] for request in fake_openai.requests] == [f"Bearer {KEY}"] * 2
    for engine, result in results.items():
        # ... both documents price the call (2 tokens in, 3 out), and neither shows the key
        usage = result.document()["usage"]
        assert usage["cost_usd"] == pytest.approx((2 * 2.5 + 3 * 10) / 1e6), engine
        assert KEY not in result.stdout + result.stderr, engine


def test_the_key_may_come_from_the_environment(
    cli: Callable[..., CliResult],
    write_pipeline: Callable[..., Path],
    fake_openai: FakeOpenAIServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    _isolated_home: Path,
) -> None:
    # GIVEN the secret in the environment, which wins over the secrets file
    _config(tmp_path, monkeypatch, _routed(fake_openai))
    _secrets_file(_isolated_home, {"openai-prod": "sk-an-older-key-in-the-file"})
    monkeypatch.setenv("ORCHESTRATOR_SECRET_OPENAI_PROD", KEY)

    # WHEN the pipeline runs  THEN the request carried it, and the document does not
    result = cli("run", write_pipeline(PIPELINE), "--json")
    assert result.code == 0, result.stderr
    assert fake_openai.requests[-1].headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in result.stdout + result.stderr


def test_a_secret_that_is_not_set_fails_the_task_saying_how_to_set_it(
    cli: Callable[..., CliResult],
    write_pipeline: Callable[..., Path],
    fake_openai: FakeOpenAIServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a config naming a secret this machine does not have
    _config(tmp_path, monkeypatch, _routed(fake_openai, secret="team/openai-key"))

    # WHEN the pipeline runs  THEN the task fails with a configuration error naming the fix
    result = cli("run", write_pipeline(PIPELINE), "--json")
    error = result.document()["tasks"]["ask"]["error"]
    assert result.code != 0 and error["type"] == "LLMConfigurationError"
    assert (
        "'team/openai-key'" in error["message"] and "ORCHESTRATOR_SECRET_TEAM_OPENAI_KEY" in error["message"]
    )
    assert fake_openai.request_count == 0


def test_the_search_key_may_be_named_by_secret(
    cli: Callable[..., CliResult],
    write_pipeline: Callable[..., Path],
    fake_search: FakeSearchServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _config(tmp_path, monkeypatch, {"search": {"url": fake_search.url, "api_key_secret": "search-key"}})
    monkeypatch.setenv("ORCHESTRATOR_SECRET_SEARCH_KEY", KEY)
    pipeline = "name: s\ntasks:\n  - {name: find, type: web_search_task, query: serverless}\n"
    result = cli("run", write_pipeline(pipeline), "--json")
    assert result.code == 0, result.stderr
    assert fake_search.requests[-1].headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"llm": {"models": {"m": {"api_key": "k", "api_key_secret": "s"}}}},
            "'llm.models.m' gives its key both as api_key_secret and as api_key",
        ),
        ({"search": {"api_key_env": "X", "api_key_secret": "s"}}, "'search' gives its key both"),
        ({"llm": {"api_key_secret": "no spaces please"}}, "'llm.api_key_secret' must name a secret"),
    ],
)
def test_a_key_is_named_one_way(tmp_path: Path, config: dict[str, object], message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_settings({"ORCHESTRATOR_CONFIG": str(path)})


@pytest.mark.parametrize(
    "config",
    [
        {"llm": {"base_url": "http://attacker.invalid/v1", "api_key_secret": "openai"}},
        {
            "llm": {
                "models": {"gpt-4": {"base_url": "http://attacker.invalid/v1", "api_key_secret": "openai"}}
            }
        },
        {
            "llm": {
                "base_url": "http://attacker.invalid/v1",
                "models": {"gpt-4": {"api_key_secret": "openai"}},
            }
        },
        {"search": {"url": "http://attacker.invalid/s", "api_key_secret": "openai"}},
    ],
)
def test_a_project_config_cannot_send_one_of_your_secrets_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict[str, object]
) -> None:
    # GIVEN a config in the working folder that names a secret of yours as the key of its host
    (tmp_path / "orchestrator.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    # WHEN the settings load  THEN it is refused, naming the secret and the fix
    with pytest.raises(ConfigError) as refused:
        load_settings({"ORCHESTRATOR_HOME": str(tmp_path / "home")})
    assert "secret 'openai'" in str(refused.value) and "attacker.invalid" in str(refused.value)
    assert "take out its api_key_secret" in str(refused.value)
    # ... and the same file is the user's own when named
    named = load_settings({"ORCHESTRATOR_CONFIG": str(tmp_path / "orchestrator.yaml")})
    assert json.dumps(named.route_for("gpt-4").api_key_secret or named.search_api_key_secret) == '"openai"'
