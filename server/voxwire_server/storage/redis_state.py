"""Redis stream-state store: shared by replicas, so a stream survives the replica that served it.

Layout under key_prefix: `s:{<stream id>}` is a hash {q: sequence, v: payload, o: owner} with the
stream's TTL, advanced only by a compare-and-set script on q; `so:{<owner>}` is the set of stream ids
that owner saved, for purging one user's state. The braces are Redis Cluster hash tags: each
script touches one key, so every call stays within one slot. The owner set is updated beside the
script, not inside it (another slot); a purge re-checks each stream's owner before deleting.

Live state must not be evicted: give it a Redis with `maxmemory-policy noeviction` (or no
maxmemory); the store warns once when the server it reaches could evict.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import RedisError, ResponseError

from voxwire_server.storage.base import StoreUnavailable
from voxwire_server.storage.redis import open_client
from voxwire_server.storage.state import SavedState, StateConflict, check_save

__all__ = ["RedisStateStore"]

logger = logging.getLogger(__name__)

# KEYS[1] state hash; ARGV: sequence, previous, payload, owner, ttl ms. Returns -1 when stored, else
# the stored sequence (0: none).
_SAVE_LUA = """
local stored = tonumber(redis.call('HGET', KEYS[1], 'q') or '0')
if stored ~= tonumber(ARGV[2]) then return stored end
redis.call('HSET', KEYS[1], 'q', ARGV[1], 'v', ARGV[3], 'o', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return -1
"""

# KEYS[1] state hash; ARGV[1] owner: deleted only while that owner's.
_DELETE_OWNED_LUA = """
if redis.call('HGET', KEYS[1], 'o') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisStateStore:
    """Short timeouts, no retries: a stream whose state cannot be written goes on without resumability."""

    name = "redis"

    def __init__(self, url: str, *, timeout_s: float = 0.05, key_prefix: str = "voxwire:") -> None:
        self._client, self._where = open_client(url, timeout_s)
        self._prefix = key_prefix
        self._save_script = self._client.register_script(_SAVE_LUA)
        self._delete_owned_script = self._client.register_script(_DELETE_OWNED_LUA)
        self._policy_checked = False
        self._closed = False

    def _key(self, stream_id: str) -> str:
        return f"{self._prefix}s:{{{stream_id}}}"

    def _owner_key(self, owner: str) -> str:
        return f"{self._prefix}so:{{{owner}}}"

    async def load(self, stream_id: str) -> SavedState | None:
        await self._first_use()
        with self._errors():
            fields = await self._client.hmget(self._key(stream_id), ["q", "v", "o"])
        sequence, payload, owner = fields
        if sequence is None or payload is None:
            return None
        return SavedState(int(sequence), _bytes(payload), _text(owner or b""))

    async def save(
        self, stream_id: str, payload: bytes, *, sequence: int, previous: int, ttl_s: float, owner: str = ""
    ) -> None:
        check_save(sequence, previous, ttl_s)
        await self._first_use()
        ttl_ms = max(1, math.ceil(ttl_s * 1000))
        with self._errors():
            # One round trip: the owner's set (for purges) lives as long as its longest-lived stream.
            async with self._client.pipeline(transaction=False) as pipe:
                if owner:
                    pipe.sadd(self._owner_key(owner), stream_id)
                    pipe.pexpire(self._owner_key(owner), ttl_ms, gt=True)
                    pipe.pexpire(self._owner_key(owner), ttl_ms, nx=True)
                await self._save_script(
                    keys=[self._key(stream_id)],
                    args=[sequence, previous, payload, owner, ttl_ms],
                    client=pipe,
                )
                stored = (await pipe.execute())[-1]
        if int(stored) != -1:
            raise StateConflict(stream_id, int(stored), previous)

    async def delete(self, stream_id: str) -> bool:
        await self._first_use()
        with self._errors():
            deleted = await self._client.delete(self._key(stream_id))
        return bool(deleted)

    async def purge_owner(self, owner: str) -> int:
        await self._first_use()
        if not owner:
            return 0
        purged = 0
        with self._errors():
            for member in await self._client.smembers(self._owner_key(owner)):
                sid = member.decode() if isinstance(member, bytes) else str(member)
                purged += int(await self._delete_owned_script(keys=[self._key(sid)], args=[owner]))
            await self._client.delete(self._owner_key(owner))
        return purged

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._errors():
            await asyncio.shield(self._client.aclose())

    async def _first_use(self) -> None:
        """Warn once when the Redis could evict live state to make room."""
        if self._closed:
            raise StoreUnavailable(f"the Redis stream-state store for {self._where} is closed")
        if self._policy_checked:
            return
        self._policy_checked = True
        try:
            policy = await self._client.config_get("maxmemory-policy")
            limit = await self._client.config_get("maxmemory")
        except ResponseError:  # CONFIG forbidden (ACL, managed Redis): the operator knows best
            logger.info("cannot read the eviction settings of %s", self._where)
            return
        except BaseException as exc:
            self._policy_checked = False
            if isinstance(exc, RedisError | OSError):
                raise self._unavailable(exc) from exc
            raise
        name = _text(next(iter(policy.values()), ""))
        if name != "noeviction" and _text(next(iter(limit.values()), "0")) not in ("", "0"):
            logger.warning(
                "Redis at %s has maxmemory-policy %r with a memory limit: it may evict live stream state; "
                "give --state a Redis with maxmemory-policy noeviction",
                self._where,
                name,
            )

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(
            f"the Redis stream-state store at {self._where} is unavailable ({type(exc).__name__})"
        )


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
