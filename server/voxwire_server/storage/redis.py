"""Redis store: shared by server processes and kept across restarts; failing fast beats waiting.

Layout under key_prefix: `v:<key>` is a hash {v: value, o: owner} (the owner travels with the
value, so a purge never deletes a key that another owner set since), and `o:<owner>` is the set of
value keys that owner set, expiring no sooner than its longest-lived member. Lua scripts keep the
two consistent. Eviction is Redis's own (`maxmemory-policy allkeys-lfu`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from voxwire_server.errors import ConfigError
from voxwire_server.storage.base import StoreStats, StoreUnavailable, check_ttl_s

logger = logging.getLogger(__name__)

_SCAN_COUNT = 500

# KEYS[1] value key, KEYS[2] owner set (when ARGV[3] ~= ''); ARGV: value, ttl ms (0: none), owner,
# owner-set key prefix. HSET in place (not DEL + HSET) keeps the key's LFU counter, like SET does.
_SET_LUA = """
local key, ttl_ms, owner = KEYS[1], tonumber(ARGV[2]), ARGV[3]
if redis.call('TYPE', key).ok ~= 'hash' then redis.call('DEL', key) end
local old = redis.call('HGET', key, 'o')
if old and old ~= owner then redis.call('SREM', ARGV[4] .. old, key) end
redis.call('HSET', key, 'v', ARGV[1])
if owner ~= '' then redis.call('HSET', key, 'o', owner) else redis.call('HDEL', key, 'o') end
if ttl_ms > 0 then redis.call('PEXPIRE', key, ttl_ms) else redis.call('PERSIST', key) end
if owner ~= '' then
  local index = KEYS[2]
  local fresh = redis.call('EXISTS', index) == 0
  redis.call('SADD', index, key)
  if ttl_ms == 0 then
    redis.call('PERSIST', index)
  else
    local index_ttl_ms = redis.call('PTTL', index)  -- -1: kept forever for a member without expiry
    if fresh or (index_ttl_ms >= 0 and index_ttl_ms < ttl_ms) then redis.call('PEXPIRE', index, ttl_ms) end
  end
end
return 1
"""

# KEYS: value keys; ARGV: ttl ms (0: none), owner-set key prefix, then one value per key. Each set
# as _SET_LUA sets a value without an owner.
_SET_MANY_LUA = """
local ttl_ms, prefix = tonumber(ARGV[1]), ARGV[2]
for i, key in ipairs(KEYS) do
  if redis.call('TYPE', key).ok ~= 'hash' then redis.call('DEL', key) end
  local old = redis.call('HGET', key, 'o')
  if old then
    redis.call('SREM', prefix .. old, key)
    redis.call('HDEL', key, 'o')
  end
  redis.call('HSET', key, 'v', ARGV[i + 2])
  if ttl_ms > 0 then redis.call('PEXPIRE', key, ttl_ms) else redis.call('PERSIST', key) end
end
return #KEYS
"""

# KEYS: value keys. Each one's value, or false (nil) when absent.
_GET_MANY_LUA = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGET', key, 'v') end
return out
"""

# KEYS[1] value key; ARGV[1] owner-set key prefix.
_DELETE_LUA = """
local owner = redis.call('HGET', KEYS[1], 'o')
if owner then redis.call('SREM', ARGV[1] .. owner, KEYS[1]) end
return redis.call('DEL', KEYS[1])
"""

# KEYS[1] owner set; ARGV[1] owner. A member re-set by another owner (or by none) is kept.
_PURGE_LUA = """
local purged = 0
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('HGET', key, 'o') == ARGV[1] then
    redis.call('DEL', key)
    purged = purged + 1
  end
end
redis.call('DEL', KEYS[1])
return purged
"""

# KEYS: value keys; returns {live entries, value bytes}.
_STATS_LUA = """
local entries, size = 0, 0
for _, key in ipairs(KEYS) do
  if redis.call('HEXISTS', key, 'v') == 1 then
    entries = entries + 1
    size = size + redis.call('HSTRLEN', key, 'v')
  end
end
return {entries, size}
"""


def describe_url(url: str) -> str:
    """Where the store points, without credentials: safe for logs and client-facing messages."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{parts.hostname or 'localhost'}:{port or 6379}"


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def open_client(url: str, timeout_s: float) -> tuple[redis.asyncio.Redis, str]:
    """A client that fails fast (a timeout per call, no retries), and where it points (for logs)."""
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise ConfigError(f"the Redis timeout must be a positive number of seconds, got {timeout_s!r}")
    where = describe_url(url)
    try:
        client = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
        )
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL for {where}: {exc}") from None
    return client, where


class RedisStore:
    """Short timeouts and no retries: during an outage a call fails in ~timeout_s, not seconds."""

    name = "redis"

    def __init__(self, url: str, *, timeout_s: float = 0.05, key_prefix: str = "voxwire:") -> None:
        self._client, self._where = open_client(url, timeout_s)
        self._values_prefix = f"{key_prefix}v:"
        self._owners_prefix = f"{key_prefix}o:"
        self._set_script = self._client.register_script(_SET_LUA)
        self._delete_script = self._client.register_script(_DELETE_LUA)
        self._purge_script = self._client.register_script(_PURGE_LUA)
        self._stats_script = self._client.register_script(_STATS_LUA)
        self._get_many_script = self._client.register_script(_GET_MANY_LUA)
        self._set_many_script = self._client.register_script(_SET_MANY_LUA)
        self._policy_checked = False
        self._closed = False

    async def get(self, key: str) -> bytes | None:
        await self._first_use()
        with self._errors():
            value = await self._client.hget(self._values_prefix + key, "v")
        return value.encode() if isinstance(value, str) else value

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        await self._first_use()
        with self._errors():
            # One script call: a pipeline of HGETs cost ~50 us of client time per key in redis-py.
            values = await self._get_many_script(keys=[self._values_prefix + key for key in keys])
        return [v.encode() if isinstance(v, str) else (v or None) for v in values]

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None, owner: str = "") -> None:
        check_ttl_s(ttl_s)
        await self._first_use()
        ttl_ms = 0 if ttl_s is None else max(1, math.ceil(ttl_s * 1000))  # never shorter than asked
        keys = [self._values_prefix + key]
        if owner:
            keys.append(self._owners_prefix + owner)
        with self._errors():
            await self._set_script(keys=keys, args=[value, ttl_ms, owner, self._owners_prefix])

    async def set_many(self, items: list[tuple[str, bytes]], *, ttl_s: float | None = None) -> None:
        check_ttl_s(ttl_s)
        if not items:
            return
        await self._first_use()
        ttl_ms = 0 if ttl_s is None else max(1, math.ceil(ttl_s * 1000))
        keys = [self._values_prefix + key for key, _ in items]
        with self._errors():
            await self._set_many_script(keys=keys, args=[ttl_ms, self._owners_prefix, *(v for _, v in items)])

    async def add(self, key: str, value: bytes) -> bool:
        await self._first_use()
        with self._errors():
            added = await self._client.hsetnx(self._values_prefix + key, "v", value)
        return bool(added)

    async def delete(self, key: str) -> bool:
        await self._first_use()
        with self._errors():
            deleted = await self._delete_script(keys=[self._values_prefix + key], args=[self._owners_prefix])
        return bool(deleted)

    async def purge_owner(self, owner: str) -> int:
        await self._first_use()
        if not owner:
            return 0
        with self._errors():
            purged = await self._purge_script(keys=[self._owners_prefix + owner], args=[owner])
        return int(purged)

    async def stats(self, prefix: str = "") -> StoreStats:
        await self._first_use()
        match = _glob_escape(self._values_prefix + prefix) + "*"
        seen: set[bytes | str] = set()
        entries = value_bytes = 0
        cursor = 0
        with self._errors():
            while True:
                cursor, found = await self._client.scan(cursor, match=match, count=_SCAN_COUNT)
                fresh = [key for key in found if key not in seen]  # SCAN may repeat keys
                seen.update(fresh)
                if fresh:
                    batch_entries, batch_bytes = await self._stats_script(keys=fresh)
                    entries += int(batch_entries)
                    value_bytes += int(batch_bytes)
                if cursor == 0:
                    break
        return StoreStats(entries=entries, bytes=value_bytes)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._errors():
            # Shielded so a cancelled shutdown still releases the pool's sockets.
            await asyncio.shield(self._client.aclose())

    async def _first_use(self) -> None:
        """Warn once when Redis would not evict by LFU (caches rely on it to stay bounded)."""
        if self._closed:
            raise StoreUnavailable(f"the Redis store for {self._where} is closed")
        if self._policy_checked:
            return
        self._policy_checked = True  # concurrent first calls do not check twice
        try:
            config = await self._client.config_get("maxmemory-policy")
        except ResponseError:  # CONFIG forbidden (ACL, managed Redis): the operator knows best
            logger.info("cannot read maxmemory-policy of %s; assuming it evicts by LFU", self._where)
            return
        except BaseException as exc:
            self._policy_checked = False  # unreachable or cancelled: check on a later call
            if isinstance(exc, RedisError | OSError):
                raise self._unavailable(exc) from exc
            raise
        policy = next(iter(config.values()), None)
        if isinstance(policy, bytes):
            policy = policy.decode(errors="replace")
        if policy not in ("allkeys-lfu", "volatile-lfu"):
            logger.warning(
                "Redis at %s has maxmemory-policy %r, not an LFU policy: set "
                "maxmemory-policy allkeys-lfu so cache entries are evicted by use",
                self._where,
                policy,
            )

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """The one place Redis errors become StoreUnavailable."""
        try:
            yield
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        # The type only: Redis messages may echo keys or values.
        return StoreUnavailable(f"the Redis store at {self._where} is unavailable ({type(exc).__name__})")
