"""Byte stores behind the caches: in-process (default) or Redis, chosen by one URL."""

from __future__ import annotations

from urllib.parse import urlsplit

from voxwire_server.errors import ConfigError
from voxwire_server.storage.base import Store, StoreStats, StoreUnavailable
from voxwire_server.storage.codec import CodecError, pack, unpack
from voxwire_server.storage.memory import MemoryStore
from voxwire_server.storage.redis import RedisStore

__all__ = [
    "CodecError",
    "MemoryStore",
    "RedisStore",
    "Store",
    "StoreStats",
    "StoreUnavailable",
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
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme in _REDIS_SCHEMES:
        return RedisStore(url, timeout_s=timeout_s)
    # Never echo the URL: it may carry a password.
    shown = f"a {scheme}:// URL" if scheme else "an unrecognised value"
    raise ConfigError(
        f"store URL must be 'memory', 'redis://HOST:PORT/DB', 'rediss://HOST:PORT/DB' or "
        f"'unix:///PATH/TO/SOCKET', got {shown}"
    )
