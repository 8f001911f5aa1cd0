"""The byte store every cache shares, so a cache never knows which backend it runs on."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from voxwire_server.errors import Unavailable


class StoreUnavailable(Unavailable):
    """The backend cannot be reached; caches treat this as a miss and carry on. Its message says
    where the backend is: for the log, never for the client."""

    client_message = "the server's cache store is unavailable; retry shortly"


@dataclass(frozen=True, slots=True)
class StoreStats:
    entries: int
    bytes: int


class Store(Protocol):
    """Bytes by key, with optional expiry and an owner tag for purging one user's data.

    One instance is used from one event loop. Every method may raise StoreUnavailable.
    """

    name: str

    async def get(self, key: str) -> bytes | None:
        """The value, or None when absent or expired; counts as a use for LFU eviction."""
        ...

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        """get() of each key, in order, in one round trip to a shared store."""
        ...

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None, owner: str = "") -> None:
        """Store or replace a value; ttl_s=None never expires; owner="" tags no owner."""
        ...

    async def set_many(self, items: list[tuple[str, bytes]], *, ttl_s: float | None = None) -> None:
        """set() of each (key, value) with one TTL and no owner, in one round trip to a shared store."""
        ...

    async def add(self, key: str, value: bytes) -> bool:
        """Store a value that never expires and has no owner, only when the key holds no live value;
        returns whether it was stored (one writer wins among processes sharing the store)."""
        ...

    async def delete(self, key: str) -> bool:
        """True when a live entry was deleted."""
        ...

    async def purge_owner(self, owner: str) -> int:
        """Delete every live entry last set with this owner; returns how many."""
        ...

    async def stats(self, prefix: str = "") -> StoreStats:
        """Entries and value bytes of live keys starting with prefix (an admin call: may scan)."""
        ...

    async def aclose(self) -> None:
        """Release connections; later calls raise StoreUnavailable. Idempotent."""
        ...


def check_ttl_s(ttl_s: float | None) -> None:
    """A zero, negative or non-finite TTL is a caller bug, not an instant expiry."""
    if ttl_s is not None and not (math.isfinite(ttl_s) and ttl_s > 0):
        raise ValueError(f"ttl_s must be a positive finite number of seconds or None, got {ttl_s!r}")
