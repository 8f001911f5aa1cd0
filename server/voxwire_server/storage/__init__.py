"""Byte stores behind the caches, and stream-state stores for resumable streams: each in-process
(default) or Redis, chosen by one URL."""

from __future__ import annotations

from urllib.parse import urlsplit

from voxwire_server.errors import ConfigError
from voxwire_server.storage.base import Store, StoreStats, StoreUnavailable
from voxwire_server.storage.codec import CodecError, pack, unpack
from voxwire_server.storage.memory import MemoryStore
from voxwire_server.storage.redis import RedisStore
from voxwire_server.storage.redis_state import RedisStateStore
from voxwire_server.storage.state import MemoryStateStore, SavedState, StateConflict, StateStore

__all__ = [
    "CodecError",
    "MemoryStateStore",
    "MemoryStore",
    "RedisStateStore",
    "RedisStore",
    "SavedState",
    "StateConflict",
    "StateStore",
    "Store",
    "StoreStats",
    "StoreUnavailable",
    "open_state_store",
    "open_store",
    "pack",
    "unpack",
]

_REDIS_SCHEMES = ("redis", "rediss", "unix")


def open_store(url: str, *, max_bytes: int, timeout_s: float) -> Store:
    """`memory` (max_bytes bounds it) or a redis://, rediss:// or unix:// URL (timeout_s per call)."""
    if url == "memory":
        if max_bytes < 0:
            raise ConfigError(f"the memory store size must be >= 0 bytes, got {max_bytes}")
        return MemoryStore(max_bytes)
    if _is_redis(url):
        return RedisStore(url, timeout_s=timeout_s)
    raise _bad_url(url)


def open_state_store(url: str, *, max_bytes: int, timeout_s: float) -> StateStore:
    """The stream-state store for the same kinds of URL as open_store."""
    if url == "memory":
        if max_bytes < 0:
            raise ConfigError(f"the memory store size must be >= 0 bytes, got {max_bytes}")
        return MemoryStateStore(max_bytes)
    if _is_redis(url):
        return RedisStateStore(url, timeout_s=timeout_s)
    raise _bad_url(url)


def _is_redis(url: str) -> bool:
    return (urlsplit(url).scheme if "://" in url else "") in _REDIS_SCHEMES


def _bad_url(url: str) -> ConfigError:
    scheme = urlsplit(url).scheme if "://" in url else ""
    # Never echo the URL: it may carry a password.
    shown = f"a {scheme}:// URL" if scheme else "an unrecognised value"
    return ConfigError(
        f"store URL must be 'memory', 'redis://HOST:PORT/DB', 'rediss://HOST:PORT/DB' or "
        f"'unix:///PATH/TO/SOCKET', got {shown}"
    )
