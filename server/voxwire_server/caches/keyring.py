"""The secrets every cache of one store shares: the HMAC key of store keys and owner tags, and the
AES-256-GCM sealer of values.

A key secret that is given (--cache-key-secret) also holds against a reader of the store's values;
one generated when none is given is kept in the store for every process that shares it, so it does
not. Values are sealed (envelope.py) under the value key given (--cache-encryption-key), or, without
one, under a key derived from the key secret. A value that does not open is a miss, never an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from voxwire_server.caches.envelope import Sealer, SealError, UnknownKey, derive_key
from voxwire_server.storage import Store, StoreUnavailable, pack, unpack
from voxwire_server.storage.codec import CodecError

__all__ = ["SECRET_BYTES", "SECRET_KEY", "SECRET_REFRESH_S", "SECRET_RETRY_S", "Keyring", "Opened", "keyed"]

log = logging.getLogger(__name__)

# The generated key secret, kept in the store beside the entries (outside their key spaces).
SECRET_KEY = "meta:cache-key-secret"
SECRET_BYTES = 32
# How often a process reads the stored secret again: it keeps the entry in use (LFU eviction
# spares it) and puts it back if it was evicted.
SECRET_REFRESH_S = 60.0
# After a failed read, how long requests fail at once (or keep the secret they have) before one
# tries again: a store that is down costs one timeout a second, not one per waiting request.
SECRET_RETRY_S = 1.0
# Unknown key ids remembered so each is logged once (bounded: a writer to the store makes them up).
_MAX_UNKNOWN_KEY_IDS = 64


def keyed(secret: bytes, *parts: object) -> str:
    return hmac.new(secret, json.dumps(parts, ensure_ascii=False).encode(), hashlib.sha256).hexdigest()


class Opened:
    """A value read back: what it holds, and whether it was sealed under the current key."""

    __slots__ = ("current", "plaintext", "value")

    def __init__(self, value: Any, plaintext: bytes, current: bool) -> None:
        self.value = value
        self.plaintext = plaintext
        self.current = current


class Keyring:
    def __init__(
        self,
        store: Store,
        *,
        key_secret: bytes | None = None,
        value_key: bytes | None = None,
        retired_value_keys: Sequence[bytes] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """key_secret: the HMAC key of every store key; None generates one, kept in the store.
        value_key: the AES-256-GCM key of every value; None derives one from the key secret.
        retired_value_keys: open values sealed under them, never seal (key rotation)."""
        if key_secret is not None and len(key_secret) < 16:
            raise ValueError("the cache key secret must be at least 16 bytes")
        self._retired_value_keys = tuple(retired_value_keys)
        self._given_sealer = None if value_key is None else Sealer(value_key, self._retired_value_keys)
        if value_key is None:
            for old in self._retired_value_keys:
                Sealer(old)  # checks each key's length now rather than at the first lookup
        self._derived: tuple[bytes, Sealer] | None = None
        self._unknown_key_ids: set[bytes] = set()
        self._store = store
        self._given_secret = key_secret
        self._secret: bytes | None = None
        self._secret_read_at = 0.0
        self._secret_retry_at = 0.0
        self._reading = False
        self._secret_lock = asyncio.Lock()
        self._clock = clock

    @property
    def store(self) -> Store:
        return self._store

    async def key_secret(self) -> bytes:
        """The secret under which keys are made. Raises StoreUnavailable when it must be read from
        a store that cannot be reached (at most one read a second tries; the others fail at once)."""
        if self._given_secret is not None:
            return self._given_secret
        held = self._secret
        if held is not None and (self._clock() < self._secret_read_at + SECRET_REFRESH_S or self._reading):
            return held  # fresh, or being read again by another request: keep using it meanwhile
        async with self._secret_lock:
            now = self._clock()
            if self._secret is not None and now < self._secret_read_at + SECRET_REFRESH_S:
                return self._secret
            if now < self._secret_retry_at:  # a read failed moments ago: no queue of timeouts
                if self._secret is not None:
                    return self._secret
                raise StoreUnavailable("the cache store was unavailable moments ago")
            self._reading = True
            try:
                stored = await self._read_or_make_secret()
            except StoreUnavailable:
                self._secret_retry_at = self._clock() + SECRET_RETRY_S
                if self._secret is not None:
                    return self._secret
                raise
            finally:
                self._reading = False
            if self._secret is not None and stored != self._secret:
                log.warning(
                    "the cache key secret in the store changed (evicted and made again elsewhere?): "
                    "entries made before are no longer found, nor purged; give every replica the same "
                    "--cache-key-secret"
                )
            self._secret, self._secret_read_at = stored, self._clock()
            return stored

    async def _read_or_make_secret(self) -> bytes:
        stored = await self._store.get(SECRET_KEY)
        if stored is None:
            # First use of the store, or the secret was evicted: this process's secret (or a new one)
            # goes in, unless another process got there first.
            await self._store.add(SECRET_KEY, self._secret or secrets.token_bytes(SECRET_BYTES))
            stored = await self._store.get(SECRET_KEY)
        if stored is None or len(stored) < 16:
            stored = self._secret or secrets.token_bytes(SECRET_BYTES)  # a store too small to keep it
        return stored

    async def sealer(self) -> Sealer:
        """The value key in use: the one given, or one derived from the key secret in use."""
        if self._given_sealer is not None:
            return self._given_sealer
        secret = await self.key_secret()
        derived = self._derived
        if derived is None or derived[0] != secret:
            derived = self._derived = (secret, Sealer(derive_key(secret), self._retired_value_keys))
        return derived[1]

    async def keyed(self, *parts: object) -> str:
        """HMAC-SHA-256 (hex) of the parts under the key secret: what a store key or tag is named."""
        return keyed(await self.key_secret(), *parts)

    async def owner(self, tenant_id: str, user_id: str) -> str:
        """The owner tag of one user's entries (what PurgeUser removes), the same for every cache."""
        return await self.keyed("owner", tenant_id, user_id)

    async def read(self, kind: str, store_key: str) -> Opened | None:
        """The value under store_key, or None when absent or when it does not open (a miss, never an
        error; it is never logged what it holds). Raises StoreUnavailable."""
        sealer = await self.sealer()
        data = await self._store.get(store_key)
        return None if data is None else await self.open(kind, store_key, data, sealer)

    async def read_many(self, kind: str, store_keys: Sequence[str]) -> list[Opened | None]:
        """read() of several keys at once (one round trip to a shared store)."""
        sealer = await self.sealer()
        found = await self._store.get_many(list(store_keys))
        return [
            None if data is None else await self.open(kind, key, data, sealer)
            for key, data in zip(store_keys, found, strict=True)
        ]

    async def open(self, kind: str, store_key: str, data: bytes, sealer: Sealer) -> Opened | None:
        try:
            plaintext, current = sealer.open(data, store_key)
            value = unpack(plaintext)
        except UnknownKey as exc:
            # Kept: a replica that holds the key may still read it, and a put here overwrites it.
            # Said once per key id: until they age out, such entries are found on every lookup.
            level = logging.DEBUG if exc.key_id in self._unknown_key_ids else logging.WARNING
            if len(self._unknown_key_ids) < _MAX_UNKNOWN_KEY_IDS:
                self._unknown_key_ids.add(exc.key_id)
            log.log(
                level,
                "%s entries sealed under a key this server does not hold (key id %s) are misses",
                kind,
                exc.key_id.hex(),
            )
            return None
        except (SealError, CodecError) as exc:
            log.warning("dropping a %s entry that does not open (%s)", kind, type(exc).__name__)
            with contextlib.suppress(StoreUnavailable):
                await self._store.delete(store_key)
            return None
        return Opened(value, plaintext, current)

    async def write(self, store_key: str, value: Any, *, ttl_s: float | None, owner: str = "") -> None:
        """Seals and stores a value. Raises StoreUnavailable."""
        await self.write_packed(store_key, pack(value), ttl_s=ttl_s, owner=owner)

    async def write_many(self, items: Sequence[tuple[str, Any]], *, ttl_s: float | None) -> None:
        """Seals and stores several values without an owner, in one round trip. Raises StoreUnavailable."""
        sealer = await self.sealer()
        sealed = [(key, sealer.seal(pack(value), key)) for key, value in items]
        await self._store.set_many(sealed, ttl_s=ttl_s)

    async def write_packed(
        self, store_key: str, plaintext: bytes, *, ttl_s: float | None, owner: str
    ) -> None:
        sealer = await self.sealer()
        await self._store.set(store_key, sealer.seal(plaintext, store_key), ttl_s=ttl_s, owner=owner)
