"""Every environment variable and the optional config file, read in one place.

| variable | meaning |
|---|---|
| `ORCHESTRATOR_HOME` | folder for local state (default `./.orchestrator`) |
| `ORCHESTRATOR_CONFIG` | config file (default `$ORCHESTRATOR_HOME/config.yaml`, then `./orchestrator.yaml`) |
| `ORCHESTRATOR_DEFAULT_MODEL` | model for `llm_task`s that name none (default `gpt-4o-mini`) |
| `OPENAI_API_KEY`, `OPENAI_BASE_URL` | the OpenAI-compatible endpoint used by `llm_task` |
| `ORCHESTRATOR_SEARCH_URL`, `ORCHESTRATOR_SEARCH_API_KEY` | the JSON search endpoint of `web_search_task` |
| `ORCHESTRATOR_MAX_THREADS` | worker threads of the embedded engine (default 256) |
| `ORCHESTRATOR_STATE_TABLE` (`_CACHE_`, `_AUDIT_`, `_RUNS_`, `_TELEMETRY_`) | DynamoDB tables (on AWS) |
| `ORCHESTRATOR_REDIS_URL` | Redis server for `storage_backend: redis` (default `redis://127.0.0.1:6379/0`) |
| `ORCHESTRATOR_RECORD`, `ORCHESTRATOR_REPLAY` | record LLM and search exchanges to, or replay from, a file |

On AWS (`AwsSettings`, read by the Lambda functions and the triggers):

| variable | meaning |
|---|---|
| `ORCHESTRATOR_PIPELINES_DIR` | folder of `<pipeline_id>.yaml` (default `pipelines` beside the package) |
| `ORCHESTRATOR_STATE_MACHINES` | JSON map pipeline id -> state machine ARN (used by the triggers) |
| `ORCHESTRATOR_KMS_KEY_ID` | KMS key that seals sensitive inputs in execution input |
| `ORCHESTRATOR_PAYLOAD_BUCKET` | S3 bucket for outputs too large for the execution state |
| `AWS_LAMBDA_FUNCTION_NAME` | set by Lambda: sealing needs KMS; the state folder is `/tmp/.orchestrator` |

Which config file is trusted with your keys: the one `ORCHESTRATOR_CONFIG` names and
`$ORCHESTRATOR_HOME/config.yaml` when `ORCHESTRATOR_HOME` is set are the user's own. One found
in the working folder (`./orchestrator.yaml`, or `./.orchestrator/config.yaml` when
`ORCHESTRATOR_HOME` is not set) is a project config: it came with the folder, so it may route
models and searches anywhere except that it cannot send a key taken from the environment
(`OPENAI_API_KEY`, `ORCHESTRATOR_SEARCH_API_KEY`, an `api_key_env` variable) to a host other
than this machine (loopback) or the provider's default; such a file is refused when loaded
(`_check_project_config`). The same holds for a key the file names by secret
(`api_key_secret`), which would come from your secrets.

A key may be named by secret, `api_key_secret: NAME` (on `llm`, `search` or a model route):
the key is then the secret NAME, read when the first request needs it (`runtime.provider_keys`)
from Secrets Manager (`orchestrator/NAME`) on AWS, else from the local secrets. A deploy config
(`infra/config.yaml`, `read_deploy_config`) names its keys only that way: the deployed code
has no environment of the user's and must hold no key.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from orchestrator.errors import ConfigError


@dataclass(frozen=True)
class ModelPrice:
    """What one model costs, in US dollars per million tokens sent (`input_per_million`) and
    received (`output_per_million`): config `llm.models.<name>.price`."""

    input_per_million: float
    output_per_million: float


@dataclass(frozen=True)
class ModelRoute:
    """Where one model's requests go: its own endpoint, key and upstream model name; and
    whether it takes a JSON Schema as `response_format` (config `structured_output: true`),
    which an `llm_task` with an `output_schema` then sends; and the rates its calls are held to
    on this machine or AWS account (`requests_per_minute`, `tokens_per_minute`:
    `runtime.rate_limit`)."""

    base_url: str | None = None
    api_key: str | None = None
    model: str | None = None
    structured_output: bool = False
    price: ModelPrice | None = None
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    api_key_secret: str | None = None  # the key is this secret (`runtime.provider_keys`)


@dataclass(frozen=True)
class Settings:
    """Resolved configuration for one process."""

    home: Path
    default_model: str = "gpt-4o-mini"
    openai_base_url: str | None = None
    openai_api_key: str | None = None
    openai_api_key_secret: str | None = None
    model_routes: dict[str, ModelRoute] = field(default_factory=dict)
    search_url: str | None = None
    search_api_key: str | None = None
    search_api_key_secret: str | None = None
    max_threads: int = 256
    redis_url: str = "redis://127.0.0.1:6379/0"
    # state, cache, audit, runs (and telemetry) -> DynamoDB table
    tables: dict[str, str] = field(default_factory=dict)

    @property
    def on_aws(self) -> bool:
        return {"state", "cache", "audit", "runs"} <= set(self.tables)

    llm_timeout: float = 60.0
    record_file: Path | None = None  # every LLM and search exchange is written here (`runtime.exchanges`)
    replay_file: Path | None = None  # ... or answered from here, with no network

    @property
    def prices(self) -> dict[str, ModelPrice]:
        """The price of each model the config prices, by the name tasks give it."""
        return {name: route.price for name, route in self.model_routes.items() if route.price is not None}

    def route_for(self, model: str) -> ModelRoute:
        """The endpoint, key and upstream name for `model`, falling back to the defaults. The
        key is the route's own (a key, else the secret naming it), else the default one (a key,
        else `llm.api_key_secret`): at most one of `api_key` and `api_key_secret` is set, and a
        secret is read by `runtime.provider_keys.llm_route`, never here."""
        route = self.model_routes.get(model, ModelRoute())
        if route.api_key or route.api_key_secret:
            key, secret = route.api_key, None if route.api_key else route.api_key_secret
        else:
            key = self.openai_api_key
            secret = None if key else self.openai_api_key_secret
        return ModelRoute(
            base_url=route.base_url or self.openai_base_url,
            api_key=key,
            model=route.model or model,
            structured_output=route.structured_output,
            price=route.price,
            requests_per_minute=route.requests_per_minute,
            tokens_per_minute=route.tokens_per_minute,
            api_key_secret=secret,
        )


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not a text file ({error.reason}); the config file is UTF-8 YAML: fix it or move it "
            "aside, or name another file with ORCHESTRATOR_CONFIG"
        ) from None
    except OSError as error:
        raise ConfigError(
            f"{path}: cannot read the config file ({error.strerror}); make it readable, or name another "
            "file with ORCHESTRATOR_CONFIG"
        ) from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the config file must be a mapping")
    _check_config_keys(loaded, path)
    return loaded


# The keys a config file may hold: a misspelt key is an error, not a setting silently ignored.
_ROUTE_KEYS = {
    "base_url": str,
    "api_key": str,
    "api_key_env": str,
    "api_key_secret": str,
    "model": str,
    "structured_output": bool,
    "price": dict,
    "requests_per_minute": object,
    "tokens_per_minute": object,
}
_RATE_KEYS = {"requests_per_minute": "requests", "tokens_per_minute": "tokens (sent and received)"}
_PRICE_KEYS = ("input_per_million", "output_per_million")
_CONFIG_KEYS: dict[str, dict[str, Any]] = {
    "llm": {"default_model": str, "base_url": str, "api_key": str, "api_key_secret": str, "models": dict},
    "search": {"url": str, "api_key": str, "api_key_env": str, "api_key_secret": str},
}
_KEY_SOURCES = ("api_key", "api_key_env", "api_key_secret")
# Secrets Manager's characters for a secret's name (`orchestrator/` is put before it).
_SECRET_NAME = re.compile(r"[A-Za-z0-9/_+=.@-]{1,256}")


def _check_config_keys(config: dict[str, Any], path: Path) -> None:
    """Raise `ConfigError` naming the first unknown key or value of the wrong type, with a hint."""
    _check_section(config, {name: dict for name in _CONFIG_KEYS}, "", path)
    for section, keys in _CONFIG_KEYS.items():
        _check_section(config.get(section) or {}, keys, f"{section}.", path)
    for name, route in ((config.get("llm") or {}).get("models") or {}).items():
        if isinstance(route, dict):
            _check_section(route, _ROUTE_KEYS, f"llm.models.{name}.", path)
            if route.get("price") is not None:
                _check_price(route["price"], f"llm.models.{name}.price", path)
            for key, unit in _RATE_KEYS.items():
                _check_rate(route.get(key), f"llm.models.{name}.{key}", unit, path)
    for place, entry in _key_places(config):
        _check_key_source(entry, place, path)


def _key_places(config: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each place of a config that may name a key, by its dotted name: `llm`, its model routes
    and `search` (those that are mappings; `_check_config_keys` refuses the others)."""
    llm = config.get("llm")
    if isinstance(llm, dict):
        yield "llm", llm
        models = llm.get("models")
        for name, route in models.items() if isinstance(models, dict) else ():
            if isinstance(route, dict):
                yield f"llm.models.{name}", route
    if isinstance(config.get("search"), dict):
        yield "search", config["search"]


def _check_key_source(section: dict[str, Any], place: str, path: Path) -> None:
    """A key named by secret is named by nothing else, and by a name Secrets Manager allows."""
    secret = section.get("api_key_secret")
    if secret is None:
        return
    others = [key for key in _KEY_SOURCES[:2] if section.get(key) is not None]
    if others:
        raise ConfigError(
            f"{path}: '{place}' gives its key both as api_key_secret and as {' and '.join(others)}; keep one"
        )
    if not _SECRET_NAME.fullmatch(secret):
        raise ConfigError(
            f"{path}: '{place}.api_key_secret' must name a secret: letters, digits and /_+=.@- only, "
            f"got {secret!r}"
        )


def _check_section(section: dict[str, Any], keys: dict[str, Any], prefix: str, path: Path) -> None:
    for key, value in section.items():
        if key not in keys:
            close = difflib.get_close_matches(str(key).lower(), list(keys), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(keys)}"
            raise ConfigError(f"{path}: unknown key '{prefix}{key}'; {hint}")
        if value is not None and not isinstance(value, keys[key]):
            kind = {dict: "a mapping", bool: "true or false"}.get(keys[key], "a string")
            raise ConfigError(f"{path}: '{prefix}{key}' must be {kind}, got {value!r}")


def _check_price(price: dict[str, Any], place: str, path: Path) -> None:
    """A price names both rates, each a number of US dollars per million tokens, not negative."""
    _check_section(price, {key: object for key in _PRICE_KEYS}, f"{place}.", path)
    example = "input_per_million: 0.15, output_per_million: 0.6"
    for key in _PRICE_KEYS:
        value = price.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
            raise ConfigError(
                f"{path}: '{place}.{key}' must be a number of US dollars per million tokens, 0 or more, "
                f"got {value!r} (for example {{{example}}})"
            )


def _check_rate(value: object, place: str, unit: str, path: Path) -> None:
    """A rate limit, when given, is a number of `unit` per minute above 0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        key = place.rsplit(".", 1)[1]
        raise ConfigError(
            f"{path}: '{place}' must be a number of {unit} per minute above 0, got {value!r} "
            f"(for example {key}: 500); remove it for no limit"
        )


def _model_routes(config: dict[str, Any], env: dict[str, str], path: Path) -> dict[str, ModelRoute]:
    routes: dict[str, ModelRoute] = {}
    models = (config.get("llm") or {}).get("models") or {}
    if not isinstance(models, dict):
        raise ConfigError(f"{path}: llm.models must map model names to routes")
    for name, entry in models.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: llm.models.{name} must be a mapping")
        key = entry.get("api_key")
        if key is None and entry.get("api_key_env"):
            key = env.get(str(entry["api_key_env"]))
        routes[str(name)] = ModelRoute(
            base_url=entry.get("base_url"),
            api_key=key,
            model=entry.get("model"),
            structured_output=bool(entry.get("structured_output")),
            price=_price(entry.get("price")),
            requests_per_minute=_rate(entry.get("requests_per_minute")),
            tokens_per_minute=_rate(entry.get("tokens_per_minute")),
            api_key_secret=entry.get("api_key_secret"),
        )
    return routes


def _rate(value: Any) -> float | None:
    return None if value is None else float(value)


def _price(price: dict[str, Any] | None) -> ModelPrice | None:
    if price is None:
        return None
    return ModelPrice(float(price["input_per_million"]), float(price["output_per_million"]))


def _config_file(env: Mapping[str, str], home: Path) -> tuple[Path | None, bool]:
    """The config file to read, if any, and whether it is the user's own (see the module's
    docstring): the one `ORCHESTRATOR_CONFIG` names, else the first of the state folder's
    `config.yaml` and `./orchestrator.yaml` that exists."""
    if env.get("ORCHESTRATOR_CONFIG"):
        named = Path(env["ORCHESTRATOR_CONFIG"])
        if not _is_file(named):
            raise ConfigError(f"{named}: ORCHESTRATOR_CONFIG names a file that does not exist")
        return named, True
    for candidate, own in (
        (home / "config.yaml", bool(env.get("ORCHESTRATOR_HOME"))),
        (Path("orchestrator.yaml"), False),
    ):
        if _is_file(candidate):
            return candidate, own
    return None, True


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError as error:
        raise ConfigError(
            f"{path}: cannot look for the config file there ({error.strerror}); make {path.parent} a folder "
            "you can read, or name the config file with ORCHESTRATOR_CONFIG"
        ) from None


def _secret_source(section: Mapping[str, Any]) -> str | None:
    secret = section.get("api_key_secret")
    return f"secret '{secret}'" if secret else None


def _env_key_sends(config: dict[str, Any], env: Mapping[str, str]) -> Iterator[tuple[str, str, str]]:
    """Each place the config file's own URLs would be sent a key from the environment or from
    the secrets, as (the setting naming the URL, the URL, the variable holding the key or
    "secret 'NAME'"). Mirrors the precedence of `load_settings` and `Settings.route_for`: the
    environment's URLs win over the file's."""
    llm = config.get("llm") or {}
    llm_url = None if env.get("OPENAI_BASE_URL") else llm.get("base_url")
    llm_variable = "OPENAI_API_KEY" if env.get("OPENAI_API_KEY") else None
    if llm_variable is None and not llm.get("api_key"):
        llm_variable = _secret_source(llm)
    if llm_url and llm_variable:
        yield "llm.base_url", llm_url, llm_variable
    for name, entry in (llm.get("models") or {}).items():
        if not isinstance(entry, dict):
            continue  # refused by `_model_routes`
        setting, url = (
            (f"llm.models.{name}.base_url", entry["base_url"])
            if entry.get("base_url")
            else ("llm.base_url", llm_url)
        )
        variable = llm_variable
        if entry.get("api_key"):
            variable = None
        elif entry.get("api_key_env") and env.get(str(entry["api_key_env"])):
            variable = str(entry["api_key_env"])
        elif entry.get("api_key_secret"):
            variable = _secret_source(entry)
        if url and variable:
            yield setting, url, variable
    search = config.get("search") or {}
    search_url = None if env.get("ORCHESTRATOR_SEARCH_URL") else search.get("url")
    search_variable = None
    if env.get("ORCHESTRATOR_SEARCH_API_KEY"):
        search_variable = "ORCHESTRATOR_SEARCH_API_KEY"
    elif not search.get("api_key") and search.get("api_key_env") and env.get(str(search["api_key_env"])):
        search_variable = str(search["api_key_env"])
    elif not search.get("api_key"):
        search_variable = _secret_source(search)
    if search_url and search_variable:
        yield "search.url", search_url, search_variable


def _on_this_machine(url: str) -> bool:
    host = urlsplit(url).hostname
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_project_config(config: dict[str, Any], path: Path, env: Mapping[str, str]) -> None:
    """Refuse a project config (found in the working folder) that would send a key from the
    environment or the secrets to a host of its choosing other than this machine."""
    for setting, url, source in _env_key_sends(config, env):
        if not _on_this_machine(url):
            host = urlsplit(url).hostname or url
            fix = "take out its api_key_secret" if source.startswith("secret ") else f"unset {source}"
            raise ConfigError(
                f"{path}: '{setting}' would send your {source} to {host}, and a config file found in "
                "the working folder may not choose where a key from your environment or secrets goes; "
                "put this setting in your own config ($ORCHESTRATOR_HOME/config.yaml with "
                f"ORCHESTRATOR_HOME set, or a file named by ORCHESTRATOR_CONFIG; ORCHESTRATOR_CONFIG={path} "
                f"trusts this one), or {fix}"
            )


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Build `Settings` from the environment (default `os.environ`) and the config file."""
    env = dict(os.environ) if env is None else env
    home = Path(env.get("ORCHESTRATOR_HOME") or ".orchestrator")
    config_path, own = _config_file(env, home)
    config: dict[str, Any] = {}
    if config_path is not None:
        config = _read_config_file(config_path)
        if not own:
            _check_project_config(config, config_path, env)
    llm = config.get("llm") or {}
    search = config.get("search") or {}
    search_key = env.get("ORCHESTRATOR_SEARCH_API_KEY") or search.get("api_key")
    if search_key is None and search.get("api_key_env"):
        search_key = env.get(str(search["api_key_env"]))
    openai_key = env.get("OPENAI_API_KEY") or llm.get("api_key")
    record, replay = env.get(RECORD_VARIABLE), env.get(REPLAY_VARIABLE)
    if record and replay:
        raise ConfigError(
            f"{RECORD_VARIABLE} and {REPLAY_VARIABLE} are both set: a run either records its "
            "exchanges or replays them; unset one"
        )
    return Settings(
        home=home,
        default_model=env.get("ORCHESTRATOR_DEFAULT_MODEL") or llm.get("default_model") or "gpt-4o-mini",
        openai_base_url=env.get("OPENAI_BASE_URL") or llm.get("base_url"),
        openai_api_key=openai_key,
        openai_api_key_secret=None if openai_key else llm.get("api_key_secret"),
        model_routes=_model_routes(config, env, config_path or Path("config")),
        search_url=env.get("ORCHESTRATOR_SEARCH_URL") or search.get("url"),
        search_api_key=search_key,
        search_api_key_secret=None if search_key else search.get("api_key_secret"),
        max_threads=int(env.get("ORCHESTRATOR_MAX_THREADS") or 256),
        redis_url=env.get("ORCHESTRATOR_REDIS_URL") or "redis://127.0.0.1:6379/0",
        tables={
            kind: env[f"ORCHESTRATOR_{kind.upper()}_TABLE"]
            for kind in ("state", "cache", "audit", "runs", "telemetry")
            if env.get(f"ORCHESTRATOR_{kind.upper()}_TABLE")
        },
        record_file=Path(record).absolute() if record else None,
        replay_file=Path(replay).absolute() if replay else None,
    )


@dataclass(frozen=True)
class DeployKeys:
    """The secrets a deploy config names as keys: of `llm` and its model routes (read by the
    llm_task function) and of `search` (read by the web_search_task function), sorted."""

    llm: tuple[str, ...] = ()
    search: tuple[str, ...] = ()


def read_deploy_config(path: Path) -> DeployKeys:
    """Check a deploy config (`infra/config.yaml`) as the deployed functions will read it, and
    refuse a key written in it (`api_key`: the key would ship in the code) or taken from an
    environment variable (`api_key_env`: the functions have none of the user's); the secrets
    it names instead (`api_key_secret`)."""
    config = _read_config_file(path)
    _model_routes(config, {}, path)
    llm: set[str] = set()
    search: set[str] = set()
    for place, section in _key_places(config):
        for literal, why in (
            ("api_key", "would put the key in the deployed code"),
            ("api_key_env", "names an environment variable, which the deployed functions do not have"),
        ):
            if section.get(literal) is not None:
                raise ConfigError(
                    f"{path}: '{place}.{literal}' {why}; keep the key in Secrets Manager as "
                    f"orchestrator/NAME and write '{place}.api_key_secret: NAME' instead "
                    '(docs/aws.md, "Model keys, routes and prices")'
                )
        if section.get("api_key_secret"):
            (search if place == "search" else llm).add(str(section["api_key_secret"]))
    return DeployKeys(llm=tuple(sorted(llm)), search=tuple(sorted(search)))


RECORD_VARIABLE = "ORCHESTRATOR_RECORD"
REPLAY_VARIABLE = "ORCHESTRATOR_REPLAY"


def exchange_environment(settings: Settings) -> dict[str, str]:
    """The variables that give another process (an emulated Lambda function, a sandboxed
    task's child) this process's record or replay file."""
    if settings.record_file is not None:
        return {RECORD_VARIABLE: str(settings.record_file)}
    if settings.replay_file is not None:
        return {REPLAY_VARIABLE: str(settings.replay_file)}
    return {}


@dataclass(frozen=True)
class AwsSettings:
    """What the Lambda glue and the triggers read from the environment."""

    pipelines_dir: Path
    state_machines: dict[str, str]
    kms_key_id: str | None
    on_lambda: bool
    payload_bucket: str | None = None


def default_pipelines_dir() -> Path:
    """`pipelines` beside the package (the layer's `/opt/python/pipelines`), else the repository's."""
    beside = Path(__file__).resolve().parent.parent / "pipelines"
    if beside.is_dir():
        return beside
    return beside.parent.parent / "pipelines"


def aws_settings(env: Mapping[str, str] | None = None) -> AwsSettings:
    """Read the AWS-side configuration (default `os.environ`)."""
    env = os.environ if env is None else env
    folder = env.get("ORCHESTRATOR_PIPELINES_DIR")
    machines_text = env.get("ORCHESTRATOR_STATE_MACHINES") or "{}"
    try:
        machines = json.loads(machines_text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"ORCHESTRATOR_STATE_MACHINES is not JSON: {error}") from None
    if not isinstance(machines, dict) or not all(isinstance(v, str) for v in machines.values()):
        raise ConfigError("ORCHESTRATOR_STATE_MACHINES must map pipeline ids to state machine ARNs")
    return AwsSettings(
        pipelines_dir=Path(folder) if folder else default_pipelines_dir(),
        state_machines={str(key): value for key, value in machines.items()},
        kms_key_id=env.get("ORCHESTRATOR_KMS_KEY_ID") or None,
        on_lambda=bool(env.get("AWS_LAMBDA_FUNCTION_NAME")),
        payload_bucket=env.get("ORCHESTRATOR_PAYLOAD_BUCKET") or None,
    )


def lambda_settings(env: Mapping[str, str] | None = None) -> Settings:
    """`load_settings`, with the state folder in /tmp on Lambda (the only writable place there)."""
    values = dict(os.environ if env is None else env)
    if values.get("AWS_LAMBDA_FUNCTION_NAME") and not values.get("ORCHESTRATOR_HOME"):
        values["ORCHESTRATOR_HOME"] = str(Path(tempfile.gettempdir()) / ".orchestrator")
    return load_settings(values)
