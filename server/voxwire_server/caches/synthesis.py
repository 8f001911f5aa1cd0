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

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# The secret's constants are the keyring's; they stay importable from here.
from voxwire_server.caches.keyring import SECRET_BYTES as SECRET_BYTES
from voxwire_server.caches.keyring import SECRET_KEY as SECRET_KEY
from voxwire_server.caches.keyring import SECRET_REFRESH_S as SECRET_REFRESH_S
from voxwire_server.caches.keyring import SECRET_RETRY_S as SECRET_RETRY_S
from voxwire_server.caches.keyring import Keyring
from voxwire_server.domain import CachePolicy, Encoding, RequestContext
from voxwire_server.storage import Store, StoreStats, StoreUnavailable

log = logging.getLogger(__name__)

PHRASE = "tts.phrase"
PREFIX = "tts.prefix"
GLOBAL = "global"
PERSONAL = "personal"
# Bump when the layout of a stored value changes: old entries are then simply never found.
_FORMAT = 1


@dataclass(frozen=True, slots=True)
class CachedAudio:
    """A reply as it was streamed: encoded chunks (no WAV header) and their durations. With codec
    "opus" (a compressed PCM reply), one Ogg/Opus stream in place of the chunks, decoded and cut back
    into chunks of chunk_samples samples on a hit."""

    chunks: tuple[bytes, ...]
    durations_ms: tuple[int, ...]
    sample_rate_hz: int
    codec: str = ""
    chunk_samples: tuple[int, ...] = ()


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
        keyring: Keyring | None = None,
    ) -> None:
        """key_secret, value_key, retired_value_keys: see Keyring (used when no keyring is given;
        keyring: the one the recognition cache of the same store shares)."""
        self._keyring = keyring or Keyring(
            store,
            key_secret=key_secret,
            value_key=value_key,
            retired_value_keys=retired_value_keys,
            clock=clock,
        )
        self._store = store
        self._personal_ttl_s = personal_ttl_s
        self._on_lookup = on_lookup
        self._hits: dict[str, int] = {}
        self._misses: dict[str, int] = {}

    @property
    def store(self) -> Store:
        return self._store

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    async def key_secret(self) -> bytes:
        """The secret under which keys are made (see Keyring.key_secret)."""
        return await self._keyring.key_secret()

    async def _store_key(self, kind: str, tier: str, key: str, context: RequestContext | None) -> str:
        if tier == GLOBAL:
            return f"{kind}:g:{await self._keyring.keyed('global', key)}"
        if context is None or not context.user_id:
            raise ValueError("the personal tier needs a user id")
        return f"{kind}:u:{await self._keyring.keyed('personal', context.tenant_id, context.user_id, key)}"

    async def owner(self, tenant_id: str, user_id: str) -> str:
        """The owner tag of one user's entries (what PurgeUser removes)."""
        return await self._keyring.owner(tenant_id, user_id)

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
                opened = await self._keyring.read(kind, store_key)
            except StoreUnavailable as exc:
                log.warning("synthesis cache unavailable, treating as a miss: %s", exc)
                return None
            if opened is not None and not opened.current and tier == GLOBAL:
                # Sealed under a retired key: global entries never expire, so they are sealed again
                # under the current one on a hit (personal ones expire with their TTL instead).
                with contextlib.suppress(StoreUnavailable):
                    await self._keyring.write_packed(store_key, opened.plaintext, ttl_s=None, owner="")
            self._count(kind, tier, hit=opened is not None)
            if opened is not None:
                return opened.value
        return None

    async def _put(self, kind: str, key: str, context: RequestContext | None, value: Any) -> bool:
        """context None: the global tier (Warmup). Returns whether the value was stored."""
        if context is not None and (context.cache_policy is not CachePolicy.USE or not context.user_id):
            return False  # no user id: no personal tier to store in
        tier = GLOBAL if context is None else PERSONAL
        try:
            store_key = await self._store_key(kind, tier, key, context)
            await self._keyring.write(
                store_key,
                value,
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
            codec=str(value.get("codec", "")),
            chunk_samples=tuple(int(n) for n in value.get("chunk_samples", ())),
        )

    async def put_phrase(self, key: str, context: RequestContext | None, audio: CachedAudio) -> bool:
        value: dict[str, Any] = {
            "chunks": list(audio.chunks),
            "durations_ms": list(audio.durations_ms),
            "sample_rate_hz": audio.sample_rate_hz,
        }
        if audio.codec:
            value |= {"codec": audio.codec, "chunk_samples": list(audio.chunk_samples)}
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
