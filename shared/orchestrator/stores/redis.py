"""Redis state and cache: compare-and-set in one Lua script, expiry by Redis itself."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.stores.base import StateWrite, Versioned

_COMMIT = """
local versions = {}
for i = 1, #KEYS - 1 do
  local expected = tonumber(ARGV[3 * i - 2])
  if expected >= 0 then
    local current = tonumber(redis.call('HGET', KEYS[i], 'version')) or 0
    if current ~= expected then return -1 end
  end
end
for i = 1, #KEYS - 1 do
  local version = redis.call('INCR', KEYS[#KEYS])
  local current = tonumber(redis.call('HGET', KEYS[i], 'version')) or 0
  if version <= current then
    version = current + 1
    redis.call('SET', KEYS[#KEYS], version)
  end
  redis.call('HSET', KEYS[i], 'value', ARGV[3 * i - 1], 'version', version)
  local ttl = tonumber(ARGV[3 * i])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[i], ttl) else redis.call('PERSIST', KEYS[i]) end
  versions[i] = version
end
return versions
"""
"""Check every expected version (-1: none), then write every key. A new version comes from
one counter for all state (the last key), so a key that expired and was written again never
gets a version it had before; it is also above the key's current version (state written
before this counter existed)."""


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
        self._commit = client.register_script(_COMMIT)

    def _key(self, namespace: str, key: str) -> str:
        return f"{self._prefix}:state:{namespace}:{key}"

    def read(self, namespace: str, key: str) -> Versioned:
        value, version = self._client.hmget(self._key(namespace, key), "value", "version")
        if version is None:
            return Versioned(None, 0)
        return Versioned(None if value is None else json.loads(value), int(version))

    def _apply(self, writes: Sequence[StateWrite]) -> list[int] | None:
        keys = [self._key(write.namespace, write.key) for write in writes]
        arguments: list[Any] = []
        for write in writes:
            expected = -1 if write.expected_version is None else write.expected_version
            milliseconds = 0 if write.ttl is None else max(1, int(write.ttl * 1000))
            arguments += [expected, json.dumps(write.value), milliseconds]
        result = self._commit(keys=[*keys, f"{self._prefix}:state-versions"], args=arguments)
        return None if isinstance(result, int) else [int(version) for version in result]

    def _set(
        self, namespace: str, key: str, value: Any, expected: int | None, ttl: float | None
    ) -> int | None:
        versions = self._apply([StateWrite(namespace, key, value, expected, ttl)])
        return None if versions is None else versions[0]

    def commit(self, writes: Sequence[StateWrite]) -> bool:
        return self._apply(writes) is not None

    def write(self, namespace: str, key: str, value: Any, *, ttl: float | None = None) -> int:
        version = self._set(namespace, key, value, None, ttl)
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
