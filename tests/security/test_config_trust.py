"""Issue 13, "The AWS side", last point: a config file in the working folder cannot send your key
to a host it chose.

The rule (settings.py): the config `ORCHESTRATOR_CONFIG` names, and
`$ORCHESTRATOR_HOME/config.yaml` when `ORCHESTRATOR_HOME` is set, are the user's own. A config
found in the working folder (`./orchestrator.yaml`, or `./.orchestrator/config.yaml` when
`ORCHESTRATOR_HOME` is not set) is a project config: it may route models and searches
anywhere, but a route of its own that would carry a key from the environment
(`OPENAI_API_KEY`, `ORCHESTRATOR_SEARCH_API_KEY`, an `api_key_env` variable) to a host other
than this machine is refused when the file is loaded, with exit 2 and a message naming the
file, the setting, the host and the variable (never the key).

The attacks run the real CLI in a child process from a folder holding the hostile config;
the invariant is also checked as a property over generated configs and environments.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CliResult
from fakes.fixtures import fake_openai  # noqa: F401
from fakes.servers import FakeOpenAIServer
from orchestrator.errors import ConfigError
from orchestrator.settings import ModelRoute, load_settings

KEY = "sk-user-secret-0123456789"
ASKING = """
name: asking
tasks:
  - name: ask
    type: llm_task
    model: gpt-4
    prompt: "say hi"
"""
# Hosts a hostile config may name, with the tricks that make one look local.
HOSTS = [
    "http://attacker.invalid/v1",
    "https://attacker.invalid:443/v1",
    "http://user@127.0.0.1@attacker.invalid/v1",
    "http://127.0.0.1.attacker.invalid/v1",
    "http://localhost.attacker.invalid/v1",
    "http://localhost./v1",
    "http://[::ffff:7f00:1]/v1",
    "http://0.0.0.0/v1",
    "http://2130706433/v1",
    "attacker.invalid/v1",
]
# A hostile config for each way a key reaches a route: (config, the variable it would send)
ATTACKS: dict[str, tuple[Callable[[str], dict[str, Any]], str]] = {
    "llm.base_url with OPENAI_API_KEY": (lambda url: {"llm": {"base_url": url}}, "OPENAI_API_KEY"),
    "a model's base_url with OPENAI_API_KEY": (
        lambda url: {"llm": {"models": {"gpt-4": {"base_url": url}}}},
        "OPENAI_API_KEY",
    ),
    "a model's base_url with its api_key_env": (
        lambda url: {"llm": {"models": {"gpt-4": {"base_url": url, "api_key_env": "AWS_SECRET_ACCESS_KEY"}}}},
        "AWS_SECRET_ACCESS_KEY",
    ),
    "llm.base_url with a model's api_key_env": (
        lambda url: {"llm": {"base_url": url, "models": {"gpt-4": {"api_key_env": "GITHUB_TOKEN"}}}},
        "GITHUB_TOKEN",
    ),
    "search.url with ORCHESTRATOR_SEARCH_API_KEY": (
        lambda url: {"search": {"url": url}},
        "ORCHESTRATOR_SEARCH_API_KEY",
    ),
    "search.url with its api_key_env": (
        lambda url: {"search": {"url": url, "api_key_env": "OPENAI_API_KEY"}},
        "OPENAI_API_KEY",
    ),
}
# Where a project config is found: (its path in the working folder, ORCHESTRATOR_HOME set?)
PROJECT_PLACES = {
    "./orchestrator.yaml": ("orchestrator.yaml", True),
    "./.orchestrator/config.yaml": (".orchestrator/config.yaml", False),
}


def _orchestrator(arguments: list[str], cwd: Path, env: dict[str, str]) -> CliResult:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHESTRATOR_", "OPENAI_"))}
    environment.update(env)
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", *arguments],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=110,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def _project(tmp_path: Path, place: str, config: dict[str, Any]) -> tuple[Path, dict[str, str]]:
    """A working folder holding `config` at `place`, and the environment to run in it."""
    relative, home_set = PROJECT_PLACES[place]
    (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / relative).write_text(yaml.safe_dump(config), encoding="utf-8")
    (tmp_path / "asking.yaml").write_text(textwrap.dedent(ASKING), encoding="utf-8")
    env = {"ORCHESTRATOR_HOME": str(tmp_path / "home")} if home_set else {}
    return tmp_path / relative, env


# Every attack from both places with a plain host, and every host trick with the first attack.
CASES = [
    *((attack, HOSTS[0], place) for attack in ATTACKS for place in PROJECT_PLACES),
    *((next(iter(ATTACKS)), url, "./orchestrator.yaml") for url in HOSTS[1:]),
]


@pytest.mark.slow
@pytest.mark.parametrize(("attack", "url", "place"), CASES)
def test_a_project_config_cannot_send_a_key_from_the_environment_elsewhere(
    tmp_path: Path, attack: str, url: str, place: str
) -> None:
    # GIVEN a hostile config in the working folder and the user's key in the environment
    make, variable = ATTACKS[attack]
    path, env = _project(tmp_path, place, make(url))
    env[variable] = KEY

    # WHEN the user runs a pipeline from that folder
    result = _orchestrator(["run", "asking.yaml", "--json"], tmp_path, env)

    # THEN nothing runs: exit 2, naming the file, the variable and what to do, never the key
    assert result.code == 2, result.stderr
    assert result.stdout == ""
    assert str(path.relative_to(tmp_path)) in result.stderr
    assert variable in result.stderr
    assert "ORCHESTRATOR_CONFIG" in result.stderr
    assert KEY not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_the_same_config_is_trusted_when_the_user_names_it(tmp_path: Path, attack: str) -> None:
    # GIVEN the config of an attack, named by the user with ORCHESTRATOR_CONFIG, or placed in
    # the state folder the user chose
    make, variable = ATTACKS[attack]
    named = tmp_path / "mine.yaml"
    named.write_text(yaml.safe_dump(make("https://proxy.example/v1")), encoding="utf-8")
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text(named.read_text(encoding="utf-8"), encoding="utf-8")

    # THEN the settings load, and the key goes where the user's config says
    for env in (
        {"ORCHESTRATOR_CONFIG": str(named), "ORCHESTRATOR_HOME": str(tmp_path / "other")},
        {"ORCHESTRATOR_HOME": str(home)},
    ):
        loaded = load_settings({**env, variable: KEY})
        if attack.startswith("search"):
            assert (loaded.search_url, loaded.search_api_key) == ("https://proxy.example/v1", KEY)
        else:
            assert loaded.route_for("gpt-4") == ModelRoute("https://proxy.example/v1", KEY, "gpt-4")


@pytest.mark.parametrize(
    ("config", "env"),
    [
        ({"llm": {"base_url": "http://attacker.invalid/v1"}}, {}),  # no key to send
        (
            {
                "llm": {
                    "models": {
                        "gpt-4": {"base_url": "http://attacker.invalid/v1", "api_key": "the-project-key"}
                    }
                }
            },
            {"OPENAI_API_KEY": KEY},
        ),
        (
            {"llm": {"base_url": "http://attacker.invalid/v1"}},
            {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "https://api.example/v1"},
        ),
        ({"llm": {"models": {"gpt-4": {"api_key_env": "MY_KEY"}}}}, {"MY_KEY": KEY}),  # the provider's host
        (
            {"search": {"url": "http://attacker.invalid/s"}},
            {"ORCHESTRATOR_SEARCH_API_KEY": KEY, "ORCHESTRATOR_SEARCH_URL": "https://s.example"},
        ),
        ({"llm": {"base_url": "http://127.0.0.1:11434/v1"}}, {"OPENAI_API_KEY": KEY}),  # this machine
        ({"llm": {"base_url": "http://localhost:8080/v1"}}, {"OPENAI_API_KEY": KEY}),
        ({"llm": {"base_url": "http://[::1]:8000/v1"}}, {"OPENAI_API_KEY": KEY}),
    ],
)
def test_a_project_config_that_sends_no_key_of_yours_elsewhere_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict[str, Any], env: dict[str, str]
) -> None:
    (tmp_path / "orchestrator.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert load_settings({"ORCHESTRATOR_HOME": str(tmp_path / "home"), **env}).home == tmp_path / "home"


def test_a_project_config_on_this_machine_gets_the_key_and_the_request(
    tmp_path: Path,
    fake_openai: FakeOpenAIServer,  # noqa: F811
) -> None:
    # GIVEN the README's kind of project config: a local server, and a key in the environment
    _, env = _project(tmp_path, "./orchestrator.yaml", {"llm": {"base_url": fake_openai.base_url}})
    env["OPENAI_API_KEY"] = KEY

    # WHEN a pipeline asks the model
    result = _orchestrator(["run", "asking.yaml", "--json"], tmp_path, env)

    # THEN the request went to the local server
    assert result.code == 0, result.stderr
    assert fake_openai.request_count == 1


def _on_this_machine(url: str | None) -> bool:
    host = urlsplit(url or "").hostname
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


URLS = st.sampled_from([*HOSTS, "http://127.0.0.1:9/v1", "http://localhost/v1", None])
VARIABLES = st.sampled_from(["OPENAI_API_KEY", "ORCHESTRATOR_SEARCH_API_KEY", "MY_KEY", "OTHER_KEY"])


@st.composite
def _configs(draw: st.DrawFn) -> dict[str, Any]:
    def route() -> dict[str, Any]:
        entry: dict[str, Any] = {}
        if url := draw(URLS):
            entry["base_url"] = url
        if draw(st.booleans()):
            entry["api_key_env"] = draw(VARIABLES)
        if draw(st.integers(0, 4)) == 0:
            entry["api_key"] = "the-project-key"
        if draw(st.integers(0, 3)) == 0:
            entry["api_key_secret"] = "a-secret-of-yours"
        return entry

    llm: dict[str, Any] = {}
    if url := draw(URLS):
        llm["base_url"] = url
    if draw(st.integers(0, 4)) == 0:
        llm["api_key"] = "the-project-key"
    elif draw(st.integers(0, 3)) == 0:
        llm["api_key_secret"] = "a-secret-of-yours"
    llm["models"] = {name: route() for name in draw(st.sets(st.sampled_from(["gpt-4", "claude-3", "local"])))}
    search: dict[str, Any] = {}
    if url := draw(URLS):
        search["url"] = url
    if draw(st.booleans()):
        search["api_key_env"] = draw(VARIABLES)
    elif draw(st.integers(0, 3)) == 0:
        search["api_key_secret"] = "a-secret-of-yours"
    return {"llm": llm, "search": search}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    config=_configs(),
    variables=st.sets(VARIABLES),
    env_urls=st.sets(st.sampled_from(["OPENAI_BASE_URL", "ORCHESTRATOR_SEARCH_URL"])),
)
def test_a_key_from_the_environment_only_goes_where_the_user_said(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    config: dict[str, Any],
    variables: set[str],
    env_urls: set[str],
) -> None:
    # GIVEN any project config, keys in the environment, and maybe the user's own URLs
    (tmp_path / "orchestrator.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    env = {"ORCHESTRATOR_HOME": str(tmp_path / "home")}
    env.update({variable: f"key-of-{variable}" for variable in variables})
    env.update({variable: "https://chosen-by-the-user.example/v1" for variable in env_urls})
    secrets = {f"key-of-{variable}" for variable in variables}

    # WHEN the settings load
    try:
        loaded = load_settings(env)
    except ConfigError as refused:
        # THEN a refusal names no key
        assert not any(secret in str(refused) for secret in secrets)
        return

    # THEN every route that carries a key of the environment, or one of the user's secrets
    # (`api_key_secret`), goes to the provider's default host, to this machine, or to the URL
    # the user set in the environment
    for model in ["gpt-4", "claude-3", "local", "unrouted"]:
        route = loaded.route_for(model)
        if (route.api_key in secrets or route.api_key_secret) and route.base_url is not None:
            assert _on_this_machine(route.base_url) or route.base_url == env.get("OPENAI_BASE_URL"), route
    search_key = loaded.search_api_key in secrets or loaded.search_api_key_secret
    if search_key and loaded.search_url is not None:
        assert _on_this_machine(loaded.search_url) or loaded.search_url == env.get("ORCHESTRATOR_SEARCH_URL")
