"""Redis state and cache: compare-and-set in one Lua script, expiry by Redis itself."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.stores.base import Versioned

_SET_IF_VERSION = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version')) or 0
local expected = tonumber(ARGV[1])
if expected >= 0 and current ~= expected then return -1 end
redis.call('HSET', KEYS[1], 'value', ARGV[2], 'version', current + 1)
local ttl = tonumber(ARGV[3])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) else redis.call('PERSIST', KEYS[1]) end
return current + 1
"""


def connect(url: str) -> Any:
    """A Redis client for `url`; a clear error when the `redis` package or server is missing."""
    try:
        import redis
    except ImportError:
        raise ConfigError(
            "storage_backend: redis needs the redis client: pip install 'orchestrator[redis]'"
        ) from None
    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as error:
        raise ConfigError(
            f"storage_backend: redis cannot reach {url} ({error}); start redis-server or set "
            "ORCHESTRATOR_REDIS_URL"
        ) from None
    return client


class RedisStateStore:
    """Versioned state as one hash per key: `value` (JSON) and `version`."""

    def __init__(self, client: Any, prefix: str = "orchestrator") -> None:
        self._client = client
        self._prefix = prefix
        self._set_if_version = client.register_script(_SET_IF_VERSION)

    def _key(self, namespace: str, key: str) -> str:
        return f"{self._prefix}:state:{namespace}:{key}"

    def read(self, namespace: str, key: str) -> Versioned:
        value, version = self._client.hmget(self._key(namespace, key), "value", "version")
        if version is None:
            return Versioned(None, 0)
        return Versioned(None if value is None else json.loads(value), int(version))

    def _set(self, namespace: str, key: str, value: Any, expected: int, ttl: float | None) -> int | None:
        milliseconds = 0 if ttl is None else max(1, int(ttl * 1000))
        result = self._set_if_version(
            keys=[self._key(namespace, key)], args=[expected, json.dumps(value), milliseconds]
        )
        return None if int(result) < 0 else int(result)

    def write(self, namespace: str, key: str, value: Any, *, ttl: float | None = None) -> int:
        version = self._set(namespace, key, value, -1, ttl)
        assert version is not None  # an unconditional write always lands
        return version

    def compare_and_set(
        self, namespace: str, key: str, value: Any, expected_version: int, *, ttl: float | None = None
    ) -> int | None:
        return self._set(namespace, key, value, expected_version, ttl)


class RedisCacheStore:
    """Cache entries as plain keys with a Redis expiry."""

    def __init__(self, client: Any, prefix: str = "orchestrator") -> None:
        self._client = client
        self._prefix = prefix

    def get(self, key: str) -> tuple[bool, Any]:
        value = self._client.get(f"{self._prefix}:cache:{key}")
        return (False, None) if value is None else (True, json.loads(value))

    def put(self, key: str, value: Any, ttl: float | None) -> None:
        milliseconds = None if ttl is None else max(1, int(ttl * 1000))
        self._client.set(f"{self._prefix}:cache:{key}", json.dumps(value), px=milliseconds)
