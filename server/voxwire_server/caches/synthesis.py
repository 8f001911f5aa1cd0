"""The synthesis caches: whole replies (phrases) and template prefixes, each in two tiers.

- global: filled by Warmup, shared by every tenant, no TTL (LFU eviction only);
- personal: filled by requests, scoped to one tenant's user (owner tag for PurgeUser), with a
  short TTL. A request without a user id has no personal tier: it reads the global one only and
  stores nothing.

Every key in the store, and every owner tag, is an HMAC-SHA-256 under a server secret, so what the
key names show (in a key listing, a slow log, a replica's keyspace) tells neither whose an entry is
nor what it holds. A secret that is given (--cache-key-secret) also holds against a reader of the
store's values; one generated when none is given is kept in the store for every process that shares
it, so it does not.

Every value is sealed (envelope.py: AES-256-GCM, bound to its store key) under the value key given
(--cache-encryption-key), or, without one, under a key derived from the key secret (app.py gives the
in-process store a random key of its own). A value that does not open is a miss, never an error.

A reply's key covers everything that changes its bytes: the normalised text or SSML, voice,
speaking rate, encoding, sample rate and the voice model's version. A prefix's key covers the
template, voice, rate and model version (prefixes are kept as native-rate audio and encoded per
request). Lookups try personal, then global. A store that is down is a miss, never an error.
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
from dataclasses import dataclass
from typing import Any

from voxwire_server.caches.envelope import Sealer, SealError, UnknownKey, derive_key
from voxwire_server.domain import CachePolicy, Encoding, RequestContext
from voxwire_server.storage import Store, StoreStats, StoreUnavailable, pack, unpack
from voxwire_server.storage.codec import CodecError

log = logging.getLogger(__name__)

PHRASE = "tts.phrase"
PREFIX = "tts.prefix"
GLOBAL = "global"
PERSONAL = "personal"
# Bump when the layout of a stored value changes: old entries are then simply never found.
_FORMAT = 1
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


@dataclass(frozen=True, slots=True)
class CachedAudio:
    """A reply as it was streamed: encoded chunks (no WAV header) and their durations."""

    chunks: tuple[bytes, ...]
    durations_ms: tuple[int, ...]
    sample_rate_hz: int


@dataclass(frozen=True, slots=True)
class TierStats:
    tier: str
    entries: int
    hits: int
    misses: int
    bytes: int


def normalized(text: str) -> str:
    """Whitespace runs collapse: "Okay,  lights on." and "Okay, lights on." are one phrase."""
    return " ".join(text.split())


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


def phrase_key(
    kind: str,
    content: str,
    *,
    voice: str,
    speaking_rate: float,
    encoding: Encoding,
    sample_rate_hz: int,
    model: str,
) -> str:
    return _digest(_FORMAT, kind, normalized(content), voice, round(speaking_rate, 3), encoding.value,
                   sample_rate_hz, model)  # fmt: skip


def prefix_key(template: str, *, voice: str, speaking_rate: float, model: str) -> str:
    return _digest(_FORMAT, "template", normalized(template), voice, round(speaking_rate, 3), model)


def _keyed(secret: bytes, *parts: object) -> str:
    return hmac.new(secret, json.dumps(parts, ensure_ascii=False).encode(), hashlib.sha256).hexdigest()


class SynthesisCache:
    def __init__(
        self,
        store: Store,
        *,
        personal_ttl_s: float,
        on_lookup: Callable[[str, str], None] | None = None,
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
        self._personal_ttl_s = personal_ttl_s
        self._on_lookup = on_lookup
        self._hits: dict[str, int] = {}
        self._misses: dict[str, int] = {}
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

    async def _sealer(self) -> Sealer:
        """The value key in use: the one given, or one derived from the key secret in use."""
        if self._given_sealer is not None:
            return self._given_sealer
        secret = await self.key_secret()
        derived = self._derived
        if derived is None or derived[0] != secret:
            derived = self._derived = (secret, Sealer(derive_key(secret), self._retired_value_keys))
        return derived[1]

    async def _store_key(self, kind: str, tier: str, key: str, context: RequestContext | None) -> str:
        secret = await self.key_secret()
        if tier == GLOBAL:
            return f"{kind}:g:{_keyed(secret, 'global', key)}"
        if context is None or not context.user_id:
            raise ValueError("the personal tier needs a user id")
        return f"{kind}:u:{_keyed(secret, 'personal', context.tenant_id, context.user_id, key)}"

    async def owner(self, tenant_id: str, user_id: str) -> str:
        """The owner tag of one user's entries (what PurgeUser removes)."""
        return _keyed(await self.key_secret(), "owner", tenant_id, user_id)

    def _count(self, kind: str, tier: str, hit: bool) -> None:
        name = f"{kind}.{tier}"
        counts = self._hits if hit else self._misses
        counts[name] = counts.get(name, 0) + 1
        if self._on_lookup is not None:
            self._on_lookup(name, "hit" if hit else "miss")

    async def _get(self, kind: str, key: str, context: RequestContext) -> Any | None:
        if context.cache_policy is CachePolicy.BYPASS:
            return None
        # The user's own entries first: a prefix made again from a real reply (after a warmed-up
        # one failed the joint check) must win over the warmed-up one. Without a user id there is
        # no personal tier: anonymous requests must not share one.
        for tier in (PERSONAL, GLOBAL) if context.user_id else (GLOBAL,):
            try:
                store_key = await self._store_key(kind, tier, key, context)
                sealer = await self._sealer()
                data = await self._store.get(store_key)
            except StoreUnavailable as exc:
                log.warning("synthesis cache unavailable, treating as a miss: %s", exc)
                return None
            value = None if data is None else await self._open(kind, tier, store_key, data, sealer)
            self._count(kind, tier, hit=value is not None)
            if value is not None:
                return value
        return None

    async def _open(self, kind: str, tier: str, store_key: str, data: bytes, sealer: Sealer) -> Any | None:
        """The value, or None (a miss) when it does not open; never logs what it holds."""
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
        if not current and tier == GLOBAL:
            # Sealed under a retired key: global entries never expire, so they are sealed again
            # under the current one on a hit (personal ones expire with their TTL instead).
            with contextlib.suppress(StoreUnavailable):
                await self._store.set(store_key, sealer.seal(plaintext, store_key))
        return value

    async def _put(self, kind: str, key: str, context: RequestContext | None, value: Any) -> bool:
        """context None: the global tier (Warmup). Returns whether the value was stored."""
        if context is not None and (context.cache_policy is not CachePolicy.USE or not context.user_id):
            return False  # no user id: no personal tier to store in
        tier = GLOBAL if context is None else PERSONAL
        plaintext = pack(value)
        try:
            store_key = await self._store_key(kind, tier, key, context)
            sealer = await self._sealer()
            await self._store.set(
                store_key,
                sealer.seal(plaintext, store_key),
                ttl_s=None if context is None else self._personal_ttl_s,
                owner="" if context is None else await self.owner(context.tenant_id, context.user_id),
            )
        except StoreUnavailable as exc:
            log.warning("synthesis cache unavailable, not storing: %s", exc)
            return False
        return True

    async def get_phrase(self, key: str, context: RequestContext) -> CachedAudio | None:
        value = await self._get(PHRASE, key, context)
        if not isinstance(value, dict):
            return None
        return CachedAudio(
            chunks=tuple(bytes(c) for c in value["chunks"]),
            durations_ms=tuple(int(d) for d in value["durations_ms"]),
            sample_rate_hz=int(value["sample_rate_hz"]),
        )

    async def put_phrase(self, key: str, context: RequestContext | None, audio: CachedAudio) -> bool:
        value = {
            "chunks": list(audio.chunks),
            "durations_ms": list(audio.durations_ms),
            "sample_rate_hz": audio.sample_rate_hz,
        }
        return await self._put(PHRASE, key, context, value)

    async def get_prefix(self, key: str, context: RequestContext) -> dict[str, Any] | None:
        value = await self._get(PREFIX, key, context)
        return value if isinstance(value, dict) else None

    async def put_prefix(self, key: str, context: RequestContext | None, value: dict[str, Any]) -> bool:
        return await self._put(PREFIX, key, context, value)

    async def purge_user(self, tenant_id: str, user_id: str) -> int:
        return await self._store.purge_owner(await self.owner(tenant_id, user_id))

    async def stats(self) -> list[TierStats]:
        rows = []
        for kind in (PHRASE, PREFIX):
            for tier, scope in ((GLOBAL, "g"), (PERSONAL, "u")):
                name = f"{kind}.{tier}"
                try:
                    found = await self._store.stats(f"{kind}:{scope}:")
                except StoreUnavailable:
                    found = StoreStats(-1, -1)
                rows.append(
                    TierStats(
                        name, found.entries, self._hits.get(name, 0), self._misses.get(name, 0), found.bytes
                    )
                )
        return rows
