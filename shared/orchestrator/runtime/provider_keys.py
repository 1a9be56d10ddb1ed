"""Provider keys named by secret: `api_key_secret: NAME` on `llm`, a model route or `search`.

The key is read when the first request that needs it is sent, not when settings load (a run
that never calls the model needs no key, and a replayed run none at all): on AWS
(`Settings.on_aws`) from Secrets Manager, the secret `orchestrator/NAME`, through the same
store as a script's `context.get_secret` (`stores.secretsmanager`: Powertools, cached for five
minutes, so a rotated key is picked up; the store is kept, so the key is fetched once per
container, not per request); elsewhere from the local secrets of the state folder
(`ORCHESTRATOR_SECRET_<NAME>`, then `secrets.yaml`). So one config file works in both places.

Every key a request carries, whatever its source, is handed to the run's redactor (the one
`exchanges.acting_for` names for the task making the call): a provider that echoes the key in
an error cannot put it in the run document, the telemetry, the logs or a record file. A
missing secret is `LLMConfigurationError` (`SearchConfigurationError`), naming the secret and
how to create it, never a value.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

from orchestrator.errors import TaskError
from orchestrator.runtime.exchanges import caller_redactor
from orchestrator.settings import ModelRoute, Settings
from orchestrator.stores.base import Secrets
from orchestrator.stores.secrets_local import LocalSecrets
from orchestrator.stores.secretsmanager import SECRET_PREFIX, SecretsManagerSecrets

__all__ = ["llm_route", "search_key"]

# One Secrets Manager store (and its cache) per state folder: one for a Lambda container's life
# (its folder is /tmp/.orchestrator), one for each emulated account's.
_AWS_STORES: dict[Path, Secrets] = {}
_LOCK = threading.Lock()


def llm_route(settings: Settings, model: str) -> ModelRoute:
    """`Settings.route_for(model)` with its key read from its secret, if it names one."""
    route = settings.route_for(model)
    if route.api_key_secret is not None:
        key = _read(settings, route.api_key_secret, f"the key of model {model!r}", "LLMConfigurationError")
        route = dataclasses.replace(route, api_key=key, api_key_secret=None)
    if route.api_key:
        caller_redactor().add(route.api_key)
    return route


def search_key(settings: Settings) -> str | None:
    """The key of the search endpoint: `search_api_key`, else the secret it names, else None."""
    key = settings.search_api_key
    if key is None and settings.search_api_key_secret is not None:
        key = _read(settings, settings.search_api_key_secret, "the search key", "SearchConfigurationError")
    if key:
        caller_redactor().add(key)
    return key


def _read(settings: Settings, name: str, what: str, error_type: str) -> str:
    value = _store(settings).get(name)
    if value:
        return value
    if settings.on_aws:
        how = (
            f"create the secret {SECRET_PREFIX}{name} in Secrets Manager (aws secretsmanager create-secret "
            f"--name {SECRET_PREFIX}{name} --secret-string ...) in the stack's account and region; the "
            "function may read only the secrets its deploy config named when `orchestrator build` ran"
        )
    else:
        variable = "ORCHESTRATOR_SECRET_" + name.upper().replace("-", "_").replace("/", "_")
        how = (
            f"export {variable}=... or add '{name}' to the secrets file ({settings.home / 'secrets.yaml'}, "
            "mode 0600)"
        )
    raise TaskError(error_type, f"{what} is the secret '{name}' (api_key_secret), which is not set: {how}")


def _store(settings: Settings) -> Secrets:
    """Secrets Manager on AWS (kept, so its cache serves every request), else the local
    secrets, read afresh (an edited secrets file is used at the next request)."""
    if not settings.on_aws:
        return LocalSecrets(settings.home / "secrets.yaml")
    with _LOCK:
        store = _AWS_STORES.get(settings.home)
        if store is None:
            store = _AWS_STORES[settings.home] = SecretsManagerSecrets()
        return store
