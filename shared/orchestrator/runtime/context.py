"""The `context` object and `storage` mapping python scripts receive (SPEC section 8)."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import hmac
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from orchestrator.errors import TaskError
from orchestrator.runtime.attempt import current_attempt
from orchestrator.runtime.redact import Redactor
from orchestrator.runtime.scope import Scope
from orchestrator.stores.base import StateWrite, Stores

SHARED_NAMESPACE = "shared"
MINIMUM_TTL = 0.001
"""Seconds: the time to live of a write whose own ttl ran out before its attempt committed."""


class StateConflictError(Exception):
    """Another writer changed a key between this attempt's read and its write."""


def stored_key(key: str, redactor: Redactor) -> str:
    """The key a state, storage or cache entry is stored under: `key` itself, or, when it
    holds a secret or a sensitive input, its masked form and a digest of the whole key
    (HMAC-SHA256 under a fixed label), e.g. `token-***#3f9a...`. The same key gives the same
    stored key in every run, on every store and engine, and the store never holds the value;
    someone who can read the store and guesses the whole key can still confirm the guess."""
    if not redactor.holds(key):
        return key
    masked = redactor.value(key)
    digest = hmac.new(KEY_DIGEST_LABEL, key.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return f"{masked}#{digest}"


KEY_DIGEST_LABEL = b"orchestrator stored key v1"


@dataclass
class RunInfo:
    """What every task of one run shares."""

    run_id: str
    pipeline_id: str
    user_id: str
    stores: Stores
    redactor: Redactor
    persistence: bool = False
    state_ttl: float | None = None
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    child_outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def persistent_namespace(self) -> str:
        if self.persistence:
            return f"pipeline:{self.pipeline_id}"
        return f"run:{self.run_id}"


class Context:
    """What a python script calls as `context`; one per task attempt.

    State writes are the attempt's transaction: kept in the attempt (its own reads see
    them) and committed together when the script ends, whether it returns or raises
    (`commit`), each key the attempt read before writing as a compare-and-set against the
    version it read first. So an attempt that lost a race runs again from scratch without
    any of its writes applied, and two read-modify-writes of two keys count once each.
    Cache writes and audit entries are written at once; none after the attempt was stopped.
    Keys holding a secret or a sensitive input are stored digested (`stored_key`)."""

    def __init__(self, run: RunInfo, scope: Scope, task_name: str) -> None:
        self._run = run
        self._scope = scope
        self._task = task_name
        self._versions: dict[tuple[str, str], int] = {}  # version first read, by (namespace, key)
        self._pending: dict[tuple[str, str], tuple[Any, float | None]] = {}  # value, expiry
        self._attempt = current_attempt()

    # task outputs and loops -------------------------------------------------------------
    def get_task_output(self, name: str, default: Any = None) -> Any:
        found, value = self._scope.task_output(name)
        return value if found and value is not None else default

    def get_loop_variable(self, name: str, default: Any = None) -> Any:
        loop = self._scope.loop
        if loop is None:
            return default
        if loop.item_variable == name:
            return loop.item
        return loop.state.get(name, default)

    def get_loop_iteration(self) -> int:
        return self._scope.loop.index if self._scope.loop else 0

    def get_pipeline_output(self, file_or_id: str) -> Any:
        key = file_or_id.rsplit("/", 1)[-1].removesuffix(".yaml").removesuffix(".yml")
        return self._run.child_outputs.get(key)

    # state ------------------------------------------------------------------------------
    def _stored(self, key: str) -> str:
        return stored_key(key, self._run.redactor)

    def _get(self, namespace: str, key: str, default: Any) -> Any:
        slot = (namespace, self._stored(key))
        if slot in self._pending:  # this attempt's own write, not committed yet
            value, expires = self._pending[slot]
            value = None if expires is not None and expires <= time.monotonic() else copy.deepcopy(value)
        else:
            versioned = self._run.stores.state.read(*slot)
            self._versions.setdefault(slot, versioned.version)
            value = versioned.value
        return default if value is None else value

    def _set(self, namespace: str, key: str, value: Any, ttl: float | None) -> None:
        value = self._run.redactor.value(_json_value(value, f"state '{key}'"))
        expires = None if ttl is None else time.monotonic() + ttl
        self._pending[(namespace, self._stored(key))] = (value, expires)

    def _update(
        self,
        namespace: str,
        key: str,
        update: Callable[[Any], Any],
        default: Any,
        ttl: float | None,
    ) -> Any:
        new_value = update(self._get(namespace, key, default))
        self._set(namespace, key, new_value, ttl)
        return self._get(namespace, key, None)

    def commit(self) -> None:
        """Write this attempt's state, all of it or none: each key it read before writing is
        a compare-and-set against the version read; `StateConflictError` (the attempt runs
        again) when one of them changed meanwhile. A stopped attempt writes nothing."""
        if not self._pending:
            return
        now = time.monotonic()
        writes = [
            StateWrite(
                namespace,
                key,
                value,
                self._versions.get((namespace, key)),
                None if expires is None else max(expires - now, MINIMUM_TTL),
            )
            for (namespace, key), (value, expires) in self._pending.items()
        ]
        with self._writing():
            committed = self._run.stores.state.commit(writes)
        if not committed:
            raise StateConflictError(", ".join(write.key for write in writes))
        self._pending.clear()

    def _writing(self) -> contextlib.AbstractContextManager[None]:
        return self._attempt.writing() if self._attempt is not None else contextlib.nullcontext()

    def get_persistent_state(self, key: str, default: Any = None) -> Any:
        return self._get(self._run.persistent_namespace, key, default)

    def set_persistent_state(self, key: str, value: Any) -> None:
        self._set(self._run.persistent_namespace, key, value, self._run.state_ttl)

    def update_persistent_state(self, key: str, update: Callable[[Any], Any], default: Any = None) -> Any:
        return self._update(self._run.persistent_namespace, key, update, default, self._run.state_ttl)

    def get_shared_state(self, key: str, default: Any = None) -> Any:
        return self._get(SHARED_NAMESPACE, key, default)

    def set_shared_state(self, key: str, value: Any) -> None:
        self._set(SHARED_NAMESPACE, key, value, None)

    def update_shared_state(self, key: str, update: Callable[[Any], Any], default: Any = None) -> Any:
        return self._update(SHARED_NAMESPACE, key, update, default, None)

    get_global_state = get_shared_state
    set_global_state = set_shared_state

    # caches -----------------------------------------------------------------------------
    def _task_cache_key(self, key: str) -> str:
        return f"task:{self._run.pipeline_id}:{self._task}:{self._stored(key)}"

    def get_task_cache(self, key: str, default: Any = None) -> Any:
        found, value = self._run.stores.cache.get(self._task_cache_key(key))
        return value if found else default

    def set_task_cache(self, key: str, value: Any, ttl: float | None = None) -> None:
        value = self._run.redactor.value(_json_value(value, f"cache '{key}'"))
        with self._writing():
            self._run.stores.cache.put(self._task_cache_key(key), value, ttl)

    def get_cache(self, key: str, default: Any = None) -> Any:
        found, value = self._run.stores.cache.get(f"global:{self._stored(key)}")
        return value if found else default

    def set_cache(self, key: str, value: Any, ttl: float | None = None) -> None:
        value = self._run.redactor.value(_json_value(value, f"cache '{key}'"))
        with self._writing():
            self._run.stores.cache.put(f"global:{self._stored(key)}", value, ttl)

    # secrets, ids, audit ------------------------------------------------------------------
    def get_secret(self, name: str) -> str:
        value = self._run.stores.secrets.get(name)
        if value is None:
            variable = "ORCHESTRATOR_SECRET_" + name.upper().replace("-", "_").replace("/", "_")
            raise TaskError(
                "SecretNotFound",
                f"secret '{name}' is not set: export {variable}=... or add '{name}' to the "
                "secrets file (secrets.yaml in the state folder, mode 0600)",
            )
        self._run.redactor.add(value)
        return value

    def get_pipeline_id(self) -> str:
        return self._run.pipeline_id

    def get_execution_id(self) -> str:
        return self._run.run_id

    def get_user_id(self) -> str:
        return self._run.user_id

    def log_audit_event(self, event: dict[str, Any]) -> None:
        entry = {
            "pipeline_id": self._run.pipeline_id,
            "execution_id": self._run.run_id,
            "task": self._task,
            "user_id": self._run.user_id,
            "logged_at": datetime.now(UTC).isoformat(),
            # only what the script wrote is user content: ids and times are never masked
            **self._run.redactor.value(_json_value(dict(event), "audit event")),
        }
        with self._writing():
            self._run.stores.audit.append(entry)

    # storage ----------------------------------------------------------------------------
    def storage(self) -> Storage:
        return Storage(self)


class Storage(MutableMapping[str, Any]):
    """`storage[key]`: the pipeline's persistent state under the prefix `storage/`."""

    PREFIX = "storage/"

    def __init__(self, context: Context) -> None:
        self._context = context
        self._written: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        missing = object()
        value = self._context.get_persistent_state(self.PREFIX + key, missing)
        if value is missing:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self._context.get_persistent_state(self.PREFIX + key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        self._context.set_persistent_state(self.PREFIX + str(key), value)
        self._written[str(key)] = value

    def __delitem__(self, key: str) -> None:
        self._context.set_persistent_state(self.PREFIX + key, None)
        self._written.pop(key, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._written)

    def __len__(self) -> int:
        return len(self._written)


def _json_value(value: Any, what: str) -> Any:
    """Values kept by stores must be JSON: reject anything else with a clear task error."""
    import json

    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as error:
        raise TaskError("NotSerializable", f"{what} is not JSON-serialisable: {error}") from None
