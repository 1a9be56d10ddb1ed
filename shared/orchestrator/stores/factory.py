"""The one place that chooses store backends from configuration."""

from __future__ import annotations

from orchestrator.settings import Settings
from orchestrator.stores.base import Stores
from orchestrator.stores.memory import (
    MemoryAuditLog,
    MemoryCacheStore,
    MemoryRunStore,
    MemoryStateStore,
)
from orchestrator.stores.secrets_local import LocalSecrets


def open_stores(settings: Settings, backend: str = "memory") -> Stores:
    """Stores for `backend`; until durable backends land every name maps to process memory."""
    del backend
    return Stores(
        state=MemoryStateStore(),
        cache=MemoryCacheStore(),
        audit=MemoryAuditLog(),
        runs=MemoryRunStore(),
        secrets=LocalSecrets(settings.home / "secrets.yaml"),
    )
